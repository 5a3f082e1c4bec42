//! The `DiffusionModel` custom resource (`dfastllm.io/v1alpha1`, short name `dm`).
//!
//! The schema carries every rule the API server can check on its own (bounds, enums,
//! patterns, CEL rules across fields), so a bad spec is rejected at `kubectl apply`
//! with a message naming the field, never discovered later by the operator.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "dfastllm.io";

// kube's derive takes one `printcolumn(...)` per column, which clippy mistakes for
// duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "dfastllm.io",
    version = "v1alpha1",
    kind = "DiffusionModel",
    plural = "diffusionmodels",
    namespaced,
    shortname = "dm",
    category = "dfastllm",
    status = "DiffusionModelStatus",
    derive = "PartialEq",
    doc = "A diffusion (or small autoregressive) language model served by dfastllm with an OpenAI-compatible API.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "GPU", type_ = "string", json_path = ".spec.gpu.product"),
    printcolumn(name = "Endpoint", type_ = "string", json_path = ".status.endpoint"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct DiffusionModelSpec {
    pub model: ModelSpec,
    /// When set, the operator creates the PVC named in `model.uri` with this size. It is
    /// never deleted with the DiffusionModel (the weights outlive the deployment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageSpec>,
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 64))]
    pub replicas: i32,
    /// Runtime image; default: the operator's CUDA image when gpu.count > 0, else its CPU image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default)]
    pub gpu: GpuSpec,
    #[serde(default)]
    pub decoding: DecodingSpec,
    #[serde(default)]
    pub server: ServerSpec,
    /// Extra cpu/memory requests and limits for the runtime container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Added to the nvidia.com/gpu NoSchedule toleration the operator adds for GPU pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    #[serde(default)]
    pub monitoring: MonitoringSpec,
    #[serde(default)]
    pub route: RouteSpec,
}

/// What `model.uri` and `decoding.apd.verifier.uri` accept.
const MODEL_URI: &str = r"^(pvc://[a-z0-9]([-a-z0-9.]*[a-z0-9])?(/.*)?|host:///.*)$";

fn default_replicas() -> i32 {
    1
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelSpec {
    /// `pvc://<claim>[/<subpath>]`, or `host:///<path>` for development clusters.
    #[schemars(regex(pattern = MODEL_URI))]
    pub uri: String,
    /// Name clients send as `model`; default: metadata.name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub served_name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    #[serde(default)]
    pub architecture: ModelArchitecture,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ModelArchitecture {
    /// Read from the checkpoint's config.json.
    #[default]
    Auto,
    Llada,
    Dream,
    Mdlm,
    Llama,
    Qwen2,
    Phi,
    Gpt2,
}

impl ModelArchitecture {
    /// The name in the CRD and in runtime.toml's `[model] architecture`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Llada => "llada",
            Self::Dream => "dream",
            Self::Mdlm => "mdlm",
            Self::Llama => "llama",
            Self::Qwen2 => "qwen2",
            Self::Phi => "phi",
            Self::Gpt2 => "gpt2",
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|K|M|G|T|P)?$"))]
    pub size: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    #[serde(default = "default_access_modes")]
    pub access_modes: Vec<AccessMode>,
}

fn default_access_modes() -> Vec<AccessMode> {
    vec![AccessMode::ReadWriteOnce]
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum AccessMode {
    ReadWriteOnce,
    ReadOnlyMany,
    ReadWriteMany,
    ReadWriteOncePod,
}

impl AccessMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ReadWriteOnce => "ReadWriteOnce",
            Self::ReadOnlyMany => "ReadOnlyMany",
            Self::ReadWriteMany => "ReadWriteMany",
            Self::ReadWriteOncePod => "ReadWriteOncePod",
        }
    }
}

/// A probability as a decimal string ("0.9"): strings survive GitOps diffs unchanged.
const UNIT_INTERVAL: &str = r"^(0(\.[0-9]+)?|1(\.0+)?)$";

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.memoryUtilization) || (double(self.memoryUtilization) > 0.0 && double(self.memoryUtilization) < 0.95)").message("gpu.memoryUtilization must be above 0 and below 0.95 (the runtime refuses requests above 95% GPU memory)"))]
pub struct GpuSpec {
    /// GPUs per replica; 0 runs on CPU.
    #[serde(default = "default_gpu_count")]
    #[schemars(range(min = 0, max = 8))]
    pub count: i32,
    /// `nvidia.com/gpu.product` node label, e.g. NVIDIA-L40S; also picks the GPU profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product: Option<String>,
    /// Share of GPU memory the runtime may fill, KV caches included (vLLM's
    /// `--gpu-memory-utilization`), a decimal string above 0 and below 0.95 (where the
    /// runtime refuses requests); default 0.9.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = UNIT_INTERVAL))]
    pub memory_utilization: Option<String>,
}

fn default_gpu_count() -> i32 {
    1
}

impl Default for GpuSpec {
    fn default() -> Self {
        Self {
            count: default_gpu_count(),
            product: None,
            memory_utilization: None,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.genLength % self.blockLength == 0").message("decoding.blockLength must divide decoding.genLength"))]
#[x_kube(validation = Rule::new("!has(self.steps) || self.steps % (self.genLength / self.blockLength) == 0").message("decoding.steps must be a multiple of the number of blocks (genLength / blockLength)"))]
#[x_kube(validation = Rule::new("!has(self.steps) || self.steps <= self.genLength").message("decoding.steps must not exceed decoding.genLength"))]
#[x_kube(validation = Rule::new("self.apd.mode != 'verifier' || !self.apd.enabled || (self.kvCache == 'none' && !self.mor.enabled)").message("decoding.apd.mode verifier needs decoding.kvCache none and decoding.mor.enabled false (the verifier re-reads the sequence and commits a prefix)"))]
pub struct DecodingSpec {
    /// Denoising steps for an answer of genLength tokens; default: one per token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 8192))]
    pub steps: Option<i32>,
    /// Default max_tokens.
    #[serde(default = "default_gen_length")]
    #[schemars(range(min = 1, max = 8192))]
    pub gen_length: i32,
    #[serde(default = "default_block_length")]
    #[schemars(range(min = 1, max = 8192))]
    pub block_length: i32,
    #[serde(default)]
    pub remasking: Remasking,
    #[serde(default)]
    pub apd: ApdSpec,
    #[serde(default)]
    pub mor: MorSpec,
    #[serde(default)]
    pub kv_cache: KvCache,
}

fn default_gen_length() -> i32 {
    256
}

fn default_block_length() -> i32 {
    32
}

impl Default for DecodingSpec {
    fn default() -> Self {
        Self {
            steps: None,
            gen_length: default_gen_length(),
            block_length: default_block_length(),
            remasking: Remasking::default(),
            apd: ApdSpec::default(),
            mor: MorSpec::default(),
            kv_cache: KvCache::default(),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Remasking {
    #[default]
    LowConfidence,
    Random,
    Entropy,
    Margin,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum KvCache {
    None,
    Prefix,
    #[default]
    Dual,
}

/// APD's commit rule (docs/decoding.md).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ApdMode {
    /// Commit every position at least `threshold` confident (Fast-dLLM).
    #[default]
    Threshold,
    /// Commit the n-th most confident while its confidence is at least 1 - factor/(n+1).
    Factor,
    /// APD's verifier: a small autoregressive model (`verifier.uri`) checks the
    /// diffusion model's left-to-right draft.
    Verifier,
}

impl ApdMode {
    pub fn name(self) -> &'static str {
        match self {
            Self::Threshold => "threshold",
            Self::Factor => "factor",
            Self::Verifier => "verifier",
        }
    }
}

/// Adaptive parallel decoding: commit several confident positions per step.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.mode != 'verifier' || has(self.verifier)").message("decoding.apd.mode verifier needs decoding.apd.verifier.uri"))]
pub struct ApdSpec {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub mode: ApdMode,
    /// Fast-dLLM's factor f (mode factor), a decimal string > 0.
    #[serde(default = "default_apd_factor")]
    #[schemars(regex(pattern = r"^(0\.[0-9]*[1-9][0-9]*|[1-9][0-9]*(\.[0-9]+)?)$"))]
    pub factor: String,
    #[serde(default = "default_apd_threshold")]
    #[schemars(regex(pattern = UNIT_INTERVAL))]
    pub threshold: String,
    #[serde(default = "default_max_parallel")]
    #[schemars(range(min = 1, max = 1024))]
    pub max_parallel: i32,
    /// The autoregressive model (same tokenizer) loaded beside the diffusion one: with
    /// it, requests may ask for `apd.mode: verifier`, and mode verifier makes it the
    /// deployment's rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verifier: Option<VerifierSpec>,
}

/// APD's verifier model.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerifierSpec {
    /// `pvc://<claim>[/<subpath>]` or `host:///<path>`, as `model.uri`.
    #[schemars(regex(pattern = MODEL_URI))]
    pub uri: String,
    /// Mixture weight R of the diffusion model (p_dLLM^R * p_AR^(1-R)), a decimal string.
    #[serde(default = "default_apd_mix")]
    #[schemars(regex(pattern = UNIT_INTERVAL))]
    pub mix: String,
    /// Positions the diffusion model drafts per verifier step.
    #[serde(default = "default_max_lookahead")]
    #[schemars(range(min = 1, max = 1024))]
    pub max_lookahead: i32,
}

fn default_apd_mix() -> String {
    "0.7".into()
}

fn default_max_lookahead() -> i32 {
    8
}

fn yes() -> bool {
    true
}

fn default_apd_threshold() -> String {
    "0.9".into()
}

fn default_apd_factor() -> String {
    "1.0".into()
}

fn default_max_parallel() -> i32 {
    16
}

impl Default for ApdSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            mode: ApdMode::Threshold,
            factor: default_apd_factor(),
            threshold: default_apd_threshold(),
            max_parallel: default_max_parallel(),
            verifier: None,
        }
    }
}

/// Mixture of recursions: re-mask and refine low-confidence tokens of a filled block.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minRecursions <= self.maxRecursions").message("mor.minRecursions must not exceed mor.maxRecursions"))]
pub struct MorSpec {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default = "default_min_recursions")]
    #[schemars(range(min = 0, max = 16))]
    pub min_recursions: i32,
    #[serde(default = "default_max_recursions")]
    #[schemars(range(min = 0, max = 16))]
    pub max_recursions: i32,
    #[serde(default = "default_mor_threshold")]
    #[schemars(regex(pattern = UNIT_INTERVAL))]
    pub confidence_threshold: String,
}

// MoR's defaults are the runtime's measured ones (runtime-defaults.toml): a resource
// that does not set them decodes as `dfastllm serve` does (operator/tests/contracts.rs).
fn default_min_recursions() -> i32 {
    0
}

fn default_max_recursions() -> i32 {
    2
}

fn default_mor_threshold() -> String {
    "0.7".into()
}

impl Default for MorSpec {
    fn default() -> Self {
        Self {
            enabled: false,
            min_recursions: default_min_recursions(),
            max_recursions: default_max_recursions(),
            confidence_threshold: default_mor_threshold(),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServerSpec {
    /// Sequences per forward pass; default from the GPU profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1024))]
    pub max_concurrent_requests: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_queue: Option<i32>,
    /// Deadline of a non-streaming request (504 past it); the runtime's 60 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub request_timeout_seconds: Option<i32>,
    /// Deadline of a streaming request; the runtime's 300 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub request_timeout_streaming_seconds: Option<i32>,
    /// Secret key holding the accepted API keys (comma or newline separated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_secret_ref: Option<SecretKeyRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitSpec>,
    /// The runtime's circuit breaker around the model; the runtime's defaults (5
    /// failed passes in a row, 30 s) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreakerSpec>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CircuitBreakerSpec {
    /// Failed forward passes in a row that open the breaker (requests get 503 at once);
    /// 0 turns it off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub failure_threshold: Option<i32>,
    /// Seconds an open breaker refuses requests before one probe is let through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub recovery_seconds: Option<i32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct SecretKeyRef {
    #[schemars(length(min = 1))]
    pub name: String,
    #[schemars(length(min = 1))]
    pub key: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitSpec {
    #[schemars(range(min = 0, max = 1000000))]
    pub requests_per_minute: i32,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MonitoringSpec {
    #[serde(default = "yes")]
    pub service_monitor: bool,
    #[serde(default = "default_interval")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h)$"))]
    pub interval: String,
}

fn default_interval() -> String {
    "30s".into()
}

impl Default for MonitoringSpec {
    fn default() -> Self {
        Self {
            service_monitor: true,
            interval: default_interval(),
        }
    }
}

/// OpenShift only: expose the Service through a Route (edge TLS).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteSpec {
    #[serde(default)]
    pub enabled: bool,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    Pending,
    Loading,
    Ready,
    Degraded,
    Failed,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DiffusionModelStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// OpenAI base URL inside the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// Where the weights come from, parsed from `model.uri`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    Pvc {
        claim: String,
        subpath: Option<String>,
    },
    Host {
        path: String,
    },
}

impl ModelSpec {
    pub fn source(&self) -> Result<ModelSource, String> {
        ModelSource::parse("model.uri", &self.uri)
    }
}

impl VerifierSpec {
    pub fn source(&self) -> Result<ModelSource, String> {
        ModelSource::parse("decoding.apd.verifier.uri", &self.uri)
    }
}

impl ModelSource {
    /// `uri`, the value of `field`, as a volume to mount.
    pub fn parse(field: &str, uri: &str) -> Result<ModelSource, String> {
        if let Some(rest) = uri.strip_prefix("pvc://") {
            let (claim, subpath) = match rest.split_once('/') {
                Some((c, p)) => (c, Some(p.trim_matches('/')).filter(|p| !p.is_empty())),
                None => (rest, None),
            };
            if claim.is_empty() {
                return Err(format!("{field} {uri:?} names no claim"));
            }
            if subpath.is_some_and(|p| p.split('/').any(|s| s == "..")) {
                return Err(format!("{field} {uri:?} must not contain '..'"));
            }
            Ok(ModelSource::Pvc {
                claim: claim.to_string(),
                subpath: subpath.map(str::to_string),
            })
        } else if let Some(path) = uri.strip_prefix("host://") {
            if !path.starts_with('/') {
                return Err(format!(
                    "{field} {uri:?}: host:// needs an absolute path (host:///path)"
                ));
            }
            Ok(ModelSource::Host {
                path: path.to_string(),
            })
        } else {
            Err(format!("{field} {uri:?} must start with pvc:// or host://"))
        }
    }
}

impl DiffusionModel {
    /// `model.servedName`, else the resource's name.
    pub fn served_name(&self) -> String {
        self.spec
            .model
            .served_name
            .clone()
            .unwrap_or_else(|| self.metadata.name.clone().unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    fn model(uri: &str) -> ModelSpec {
        ModelSpec {
            uri: uri.into(),
            served_name: None,
            aliases: vec![],
            architecture: ModelArchitecture::Auto,
        }
    }

    #[test]
    fn uris_parse_into_sources() {
        assert_eq!(
            model("pvc://store/llada/8b").source(),
            Ok(ModelSource::Pvc {
                claim: "store".into(),
                subpath: Some("llada/8b".into())
            })
        );
        assert_eq!(
            model("pvc://store").source(),
            Ok(ModelSource::Pvc {
                claim: "store".into(),
                subpath: None
            })
        );
        assert_eq!(
            model("host:///models/x").source(),
            Ok(ModelSource::Host {
                path: "/models/x".into()
            })
        );
        assert!(model("s3://bucket").source().is_err());
        assert!(model("pvc://store/../etc").source().is_err());
    }

    #[test]
    fn defaults_fill_a_minimal_spec() {
        let spec: DiffusionModelSpec =
            serde_json::from_value(serde_json::json!({"model": {"uri": "pvc://m"}})).unwrap();
        assert_eq!(spec.replicas, 1);
        assert_eq!(spec.gpu.count, 1);
        assert_eq!(spec.decoding.gen_length, 256);
        assert_eq!(spec.decoding.block_length, 32);
        assert_eq!(spec.decoding.kv_cache, KvCache::Dual);
        assert!(spec.monitoring.service_monitor);
    }

    #[test]
    fn the_schema_carries_bounds_enums_and_cel_rules() {
        let crd = serde_json::to_string(&DiffusionModel::crd()).unwrap();
        for needle in [
            "self.genLength % self.blockLength == 0",
            "self.minRecursions <= self.maxRecursions",
            "\"low_confidence\"",
            "\"dual\"",
            "\"shortNames\":[\"dm\"]",
            "\"categories\":[\"dfastllm\"]",
            "\"maximum\":8",
            "pvc://",
            "\"status\":{}",
        ] {
            assert!(crd.contains(needle), "CRD lacks {needle}");
        }
    }
}
