//! `<name>-config`: the runtime's `runtime.toml`, rendered from `spec.decoding` and
//! `spec.server` with the GPU profile's defaults. Its layout is the contract with the
//! runtime, pinned by `runtime/tests/fixtures/runtime.toml`, which the test below
//! renders and the runtime's tests parse.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{owned_meta, HTTP_PORT, MODEL_DIR, VERIFIER_DIR};
use crate::crd::{DiffusionModel, KvCache, Remasking};
use crate::gpu;

pub const FILE_NAME: &str = "runtime.toml";
const SHUTDOWN_GRACE_SECONDS: i32 = 30;

pub fn name(dm: &DiffusionModel) -> String {
    format!("{}-config", dm.name_any())
}

#[derive(Serialize)]
struct RuntimeToml {
    model: ModelSection,
    server: ServerSection,
    decoding: DecodingSection,
}

#[derive(Serialize)]
struct ModelSection {
    path: String,
    served_name: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    aliases: Vec<String>,
    device: String,
    dtype: String,
    architecture: &'static str,
}

#[derive(Serialize)]
struct ServerSection {
    port: i32,
    max_concurrent_requests: i32,
    max_queue: i32,
    request_timeout_seconds: i32,
    request_timeout_streaming_seconds: i32,
    shutdown_grace_seconds: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    rate_limit_requests_per_minute: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    breaker_failure_threshold: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    breaker_recovery_seconds: Option<i32>,
    /// `gpu.memoryUtilization`: the share of GPU memory the runtime may fill.
    #[serde(skip_serializing_if = "Option::is_none")]
    gpu_memory_utilization: Option<f64>,
}

#[derive(Serialize)]
struct DecodingSection {
    gen_length: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    steps: Option<i32>,
    block_length: i32,
    remasking: &'static str,
    kv_cache: &'static str,
    apd: Apd,
    mor: Mor,
}

#[derive(Serialize)]
struct Apd {
    enabled: bool,
    mode: &'static str,
    threshold: f64,
    factor: f64,
    max_parallel: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    verifier_model: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mix: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_lookahead: Option<i32>,
}

#[derive(Serialize)]
struct Mor {
    enabled: bool,
    min_recursions: i32,
    max_recursions: i32,
    confidence_threshold: f64,
}

fn probability(s: &str, fallback: f64) -> f64 {
    s.parse().unwrap_or(fallback)
}

/// The `runtime.toml` for `dm`.
pub fn runtime_toml(dm: &DiffusionModel) -> String {
    let spec = &dm.spec;
    let profile = gpu::profile(spec.gpu.product.as_deref());
    let cpu = spec.gpu.count == 0;
    let d = &spec.decoding;
    let breaker = spec.server.circuit_breaker.as_ref();
    let file = RuntimeToml {
        model: ModelSection {
            path: MODEL_DIR.into(),
            served_name: dm.served_name(),
            aliases: spec.model.aliases.clone(),
            device: if cpu { "cpu" } else { "cuda:0" }.into(),
            dtype: if cpu { "auto" } else { profile.dtype }.into(),
            architecture: spec.model.architecture.name(),
        },
        server: ServerSection {
            port: HTTP_PORT,
            max_concurrent_requests: spec
                .server
                .max_concurrent_requests
                .unwrap_or(profile.max_concurrent_requests),
            max_queue: spec.server.max_queue.unwrap_or(256),
            request_timeout_seconds: spec.server.request_timeout_seconds.unwrap_or(60),
            request_timeout_streaming_seconds: spec
                .server
                .request_timeout_streaming_seconds
                .unwrap_or(300),
            shutdown_grace_seconds: SHUTDOWN_GRACE_SECONDS,
            rate_limit_requests_per_minute: spec
                .server
                .rate_limit
                .as_ref()
                .map(|r| r.requests_per_minute),
            breaker_failure_threshold: breaker.and_then(|b| b.failure_threshold),
            breaker_recovery_seconds: breaker.and_then(|b| b.recovery_seconds),
            gpu_memory_utilization: spec
                .gpu
                .memory_utilization
                .as_deref()
                .map(|u| probability(u, 0.9)),
        },
        decoding: DecodingSection {
            gen_length: d.gen_length,
            steps: d.steps,
            block_length: d.block_length,
            remasking: match d.remasking {
                Remasking::LowConfidence => "low_confidence",
                Remasking::Random => "random",
                Remasking::Entropy => "entropy",
                Remasking::Margin => "margin",
            },
            kv_cache: match d.kv_cache {
                KvCache::None => "none",
                KvCache::Prefix => "prefix",
                KvCache::Dual => "dual",
            },
            apd: Apd {
                enabled: d.apd.enabled,
                mode: d.apd.mode.name(),
                threshold: probability(&d.apd.threshold, 0.9),
                factor: d.apd.factor.parse().unwrap_or(1.0),
                max_parallel: d.apd.max_parallel,
                verifier_model: d.apd.verifier.as_ref().map(|_| VERIFIER_DIR),
                mix: d.apd.verifier.as_ref().map(|v| probability(&v.mix, 0.7)),
                max_lookahead: d.apd.verifier.as_ref().map(|v| v.max_lookahead),
            },
            mor: Mor {
                enabled: d.mor.enabled,
                min_recursions: d.mor.min_recursions,
                max_recursions: d.mor.max_recursions,
                confidence_threshold: probability(&d.mor.confidence_threshold, 0.7),
            },
        },
    };
    let body = toml::to_string(&file).expect("the runtime.toml structs always serialise");
    format!(
        "# Rendered by dfastllm-operator from DiffusionModel {}/{}: edit the resource, not this file.\n{body}",
        dm.namespace().unwrap_or_default(),
        dm.name_any()
    )
}

/// Short content hash put on the pod template, so a tuning change rolls the pods.
pub fn config_hash(runtime_toml: &str) -> String {
    let digest = Sha256::digest(runtime_toml.as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

pub fn config_map(dm: &DiffusionModel) -> ConfigMap {
    ConfigMap {
        metadata: owned_meta(dm, name(dm)),
        data: Some(BTreeMap::from([(FILE_NAME.to_string(), runtime_toml(dm))])),
        ..ConfigMap::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    /// The contract: what this renders for the fixture resource is byte for byte the
    /// file the runtime's tests parse. Regenerate with
    /// `DFASTLLM_BLESS=1 cargo test -p dfastllm-operator runtime_toml_contract`.
    #[test]
    fn runtime_toml_contract() {
        let rendered = runtime_toml(&fixtures::llada());
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../runtime/tests/fixtures/runtime.toml"
        );
        if std::env::var_os("DFASTLLM_BLESS").is_some() {
            std::fs::write(path, &rendered).unwrap();
        }
        let pinned = std::fs::read_to_string(path).unwrap();
        assert_eq!(
            rendered, pinned,
            "runtime.toml drifted from the runtime's fixture"
        );
    }

    #[test]
    fn gpu_profile_defaults_yield_to_user_values() {
        let toml = runtime_toml(&fixtures::llada());
        assert!(
            toml.contains("max_concurrent_requests = 32"),
            "L40S profile:\n{toml}"
        );
        let mut dm = fixtures::llada();
        dm.spec.server.max_concurrent_requests = Some(5);
        dm.spec.gpu.product = Some("Tesla-T4".into());
        let toml = runtime_toml(&dm);
        assert!(toml.contains("max_concurrent_requests = 5"));
        assert!(toml.contains("dtype = \"f16\""), "T4 has no bf16");
        dm.spec.gpu.count = 0;
        assert!(runtime_toml(&dm).contains("device = \"cpu\""));
    }

    #[test]
    fn gpu_memory_utilization_reaches_the_runtime() {
        assert!(!runtime_toml(&fixtures::llada()).contains("gpu_memory_utilization"));
        let mut dm = fixtures::llada();
        dm.spec.gpu.memory_utilization = Some("0.8".into());
        assert!(runtime_toml(&dm).contains("gpu_memory_utilization = 0.8"));
    }

    #[test]
    fn the_verifier_is_rendered_only_when_set() {
        assert!(!runtime_toml(&fixtures::llada()).contains("verifier"));
        let mut dm = fixtures::llada();
        dm.spec.decoding.apd.mode = crate::crd::ApdMode::Verifier;
        dm.spec.decoding.kv_cache = KvCache::None;
        dm.spec.decoding.apd.verifier = Some(crate::crd::VerifierSpec {
            uri: "pvc://store/tiny-ar".into(),
            mix: "0.6".into(),
            max_lookahead: 4,
        });
        let toml = runtime_toml(&dm);
        for line in [
            "mode = \"verifier\"",
            "verifier_model = \"/mnt/verifier\"",
            "mix = 0.6",
            "max_lookahead = 4",
            "kv_cache = \"none\"",
        ] {
            assert!(toml.contains(line), "{line} in:\n{toml}");
        }
    }

    #[test]
    fn tuning_changes_change_the_hash() {
        let a = config_hash(&runtime_toml(&fixtures::llada()));
        let mut dm = fixtures::llada();
        dm.spec.decoding.apd.threshold = "0.8".into();
        let b = config_hash(&runtime_toml(&dm));
        assert_ne!(a, b);
        assert_eq!(a.len(), 16);
        assert_eq!(a, config_hash(&runtime_toml(&fixtures::llada())), "stable");
    }

    #[test]
    fn config_map_is_owned_and_labelled() {
        let cm = config_map(&fixtures::llada());
        assert_eq!(cm.metadata.name.as_deref(), Some("llada-8b-config"));
        let owner = &cm.metadata.owner_references.unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("DiffusionModel", Some(true))
        );
        assert_eq!(
            cm.metadata.labels.unwrap()["app.kubernetes.io/managed-by"],
            "dfastllm-operator"
        );
    }
}
