//! `RuntimeConfig`: what `dfastllm serve` runs with, merged with the precedence of
//! design §3: CLI flag > `DFASTLLM_*` env > `--config` TOML file (the operator's
//! ConfigMap, `/etc/dfastllm/runtime.toml`) > defaults.
//!
//! One struct family ([`ConfigLayer`]) is both the flag/env layer (clap `Args`) and the
//! file layer (serde), so a knob is declared once. The layers are merged field by field
//! (a flag replaces one value, never a whole section) against one defaults table,
//! [`defaults`], which `--help` and `dfastllm serve --print-config` render from and
//! `tests/fixtures/runtime-defaults.toml` pins for the operator. Every merged value
//! remembers where it came from ([`Origin`]), so errors name the real source.
//!
//! The TOML layout is the contract with the operator, which renders it without linking
//! this crate; `tests/fixtures/runtime.toml` pins it for both sides.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use clap::builder::BoolishValueParser;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use crate::tools::ToolParserChoice;
use dfastllm_core::decoding::{Mor, Remasking};
use dfastllm_core::device::DeviceChoice;
pub use dfastllm_core::engine::FaultPlan;
pub use dfastllm_core::models::KvCacheMode;
use dfastllm_core::models::{Architecture, DTypeChoice};
pub use dfastllm_core::tokenizer::SpecialsInContent;

/// Reads an optional value through its `FromStr`, so the file accepts what the flag does.
fn de_parsed<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: fmt::Display,
{
    let text: Option<String> = Option::deserialize(d)?;
    text.map(|t| t.parse().map_err(serde::de::Error::custom))
        .transpose()
}

fn ser_display<S: Serializer, T: fmt::Display>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.collect_str(v),
        None => s.serialize_none(),
    }
}

/// `model.architecture`: `auto` (whatever config.json says) or the one it must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchitectureChoice {
    Auto,
    Is(Architecture),
}

impl FromStr for ArchitectureChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            other => other.parse().map(Self::Is),
        }
    }
}

impl fmt::Display for ArchitectureChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Is(a) => write!(f, "{a}"),
        }
    }
}

/// APD's commit rule as the flag and the file name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApdMode {
    Off,
    Threshold,
    Factor,
    /// APD's verifier: needs `decoding.apd.verifier_model`.
    Verifier,
}

/// One layer of configuration: the flags and env (clap) or runtime.toml (serde).
/// `None` where the layer says nothing. Arg ids are the TOML paths, so a value's flag,
/// file key and default are found by one name.
#[derive(Debug, Clone, Default, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigLayer {
    #[command(flatten)]
    #[serde(default)]
    pub model: ModelLayer,
    #[command(flatten)]
    #[serde(default)]
    pub server: ServerLayer,
    #[command(flatten)]
    #[serde(default)]
    pub decoding: DecodingLayer,
}

#[derive(Debug, Clone, Default, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelLayer {
    /// Model directory in Hugging Face layout (config.json, *.safetensors, tokenizer.json).
    #[arg(id = "model.path", long = "model", env = "DFASTLLM_MODEL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Name clients use in `model` [default: the model directory's name].
    #[arg(
        id = "model.served_name",
        long = "served-name",
        visible_alias = "served-model-name",
        env = "DFASTLLM_SERVED_NAME"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub served_name: Option<String>,
    /// Extra accepted model names, comma-separated.
    #[arg(
        id = "model.aliases",
        long = "aliases",
        env = "DFASTLLM_ALIASES",
        value_delimiter = ','
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aliases: Option<Vec<String>>,
    /// The longest prompt plus answer served, in tokens [default: the model's context].
    /// Larger than the model's own context is an error at start.
    #[arg(
        id = "model.max_model_len",
        long = "max-model-len",
        env = "DFASTLLM_MAX_MODEL_LEN"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_model_len: Option<usize>,
    /// auto (CUDA when built with it and a GPU answers, else CPU), cpu, cuda, cuda:N.
    #[arg(id = "model.device", long = "device", env = "DFASTLLM_DEVICE")]
    #[serde(
        default,
        deserialize_with = "de_parsed",
        serialize_with = "ser_display",
        skip_serializing_if = "Option::is_none"
    )]
    pub device: Option<DeviceChoice>,
    /// auto (on GPU: config.json's dtype/torch_dtype, else the weights' stored format; f32 on CPU), f32, f16, bf16.
    #[arg(id = "model.dtype", long = "dtype", env = "DFASTLLM_DTYPE")]
    #[serde(
        default,
        deserialize_with = "de_parsed",
        serialize_with = "ser_display",
        skip_serializing_if = "Option::is_none"
    )]
    pub dtype: Option<DTypeChoice>,
    /// The architecture the checkpoint must be: auto (whatever config.json says), llada,
    /// dream, llama, qwen2, phi, gpt2.
    #[arg(
        id = "model.architecture",
        long = "architecture",
        env = "DFASTLLM_ARCHITECTURE"
    )]
    #[serde(
        default,
        deserialize_with = "de_parsed",
        serialize_with = "ser_display",
        skip_serializing_if = "Option::is_none"
    )]
    pub architecture: Option<ArchitectureChoice>,
    /// auto: generation_config.json's temperature, top_p, top_k, repetition_penalty
    /// (and Dream's steps and alg) become request defaults (below the deployment's
    /// own); ignore (or vllm): they do not.
    #[arg(
        id = "model.generation_config",
        long = "generation-config",
        env = "DFASTLLM_GENERATION_CONFIG"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation_config: Option<GenerationConfigMode>,
}

/// Whether the checkpoint's generation_config.json sampling fields are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
#[value(rename_all = "lowercase")]
pub enum GenerationConfigMode {
    #[default]
    Auto,
    /// vLLM spells this `vllm` (its own defaults only).
    #[serde(alias = "vllm")]
    #[value(alias = "vllm")]
    Ignore,
}

dfastllm_core::named_enum!(GenerationConfigMode, "generation_config", false);

#[derive(Debug, Clone, Default, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerLayer {
    #[arg(id = "server.host", long = "host", env = "DFASTLLM_HOST")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Port; 0 picks a free one.
    #[arg(id = "server.port", long = "port", env = "DFASTLLM_PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Sequences per forward pass.
    #[arg(
        id = "server.max_concurrent_requests",
        long = "max-concurrent-requests",
        visible_alias = "max-num-seqs",
        env = "DFASTLLM_MAX_CONCURRENT_REQUESTS"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrent_requests: Option<usize>,
    /// Waiting sequences before 429.
    #[arg(
        id = "server.max_queue",
        long = "max-queue",
        env = "DFASTLLM_MAX_QUEUE"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_queue: Option<usize>,
    /// Deadline of a non-streamed request, in seconds (504 when it passes).
    #[arg(
        id = "server.request_timeout_seconds",
        long = "request-timeout-seconds",
        visible_alias = "request-timeout",
        env = "DFASTLLM_REQUEST_TIMEOUT_SECONDS"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_timeout_seconds: Option<u64>,
    /// Deadline of a streamed request, in seconds (504 in-band when it passes).
    #[arg(
        id = "server.request_timeout_streaming_seconds",
        long = "request-timeout-streaming-seconds",
        visible_alias = "request-timeout-streaming",
        env = "DFASTLLM_REQUEST_TIMEOUT_STREAMING_SECONDS"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_timeout_streaming_seconds: Option<u64>,
    /// How long SIGTERM waits for in-flight requests.
    #[arg(
        id = "server.shutdown_grace_seconds",
        long = "shutdown-grace-seconds",
        env = "DFASTLLM_SHUTDOWN_GRACE_SECONDS"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shutdown_grace_seconds: Option<u64>,
    /// Seconds a client may take to send a request's head, and again its body
    /// (the connection closes, or the request gets 408).
    #[arg(
        id = "server.read_timeout_seconds",
        long = "read-timeout-seconds",
        env = "DFASTLLM_READ_TIMEOUT_SECONDS"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_timeout_seconds: Option<u64>,
    /// Open HTTP connections served at once; more are answered 503 and closed.
    #[arg(
        id = "server.max_connections",
        long = "max-connections",
        env = "DFASTLLM_MAX_CONNECTIONS"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// How long a completed `Idempotency-Key` request is remembered, in seconds; 0 turns
    /// idempotency keys off.
    #[arg(
        id = "server.idempotency_ttl_seconds",
        long = "idempotency-ttl-seconds",
        env = "DFASTLLM_IDEMPOTENCY_TTL_SECONDS"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_ttl_seconds: Option<u64>,
    /// Bytes of remembered responses kept for idempotency keys (the oldest go first).
    #[arg(
        id = "server.idempotency_max_bytes",
        long = "idempotency-max-bytes",
        env = "DFASTLLM_IDEMPOTENCY_MAX_BYTES"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_max_bytes: Option<usize>,
    /// Special-token text typed in prompts and messages: parse (control tokens, as
    /// transformers and vLLM do) or text (only the chat template writes specials).
    #[arg(
        id = "server.special_tokens_in_content",
        long = "special-tokens-in-content",
        env = "DFASTLLM_SPECIAL_TOKENS_IN_CONTENT"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub special_tokens_in_content: Option<SpecialsInContent>,
    /// How answers spell tool calls (vLLM's names): auto (from the chat template),
    /// hermes (`<tool_call>` JSON: Qwen, Hermes), llama3_json, or none.
    #[arg(
        id = "server.tool_call_parser",
        long = "tool-call-parser",
        env = "DFASTLLM_TOOL_CALL_PARSER"
    )]
    #[serde(
        default,
        deserialize_with = "de_parsed",
        serialize_with = "ser_display",
        skip_serializing_if = "Option::is_none"
    )]
    pub tool_call_parser: Option<ToolParserChoice>,
    /// Failed forward passes in a row that open the circuit breaker (requests get 503
    /// at once for the recovery window); 0 turns it off.
    #[arg(
        id = "server.breaker_failure_threshold",
        long = "breaker-failure-threshold",
        env = "DFASTLLM_BREAKER_FAILURE_THRESHOLD"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breaker_failure_threshold: Option<u32>,
    /// Seconds an open circuit breaker refuses requests before one probe is let through.
    #[arg(
        id = "server.breaker_recovery_seconds",
        long = "breaker-recovery-seconds",
        env = "DFASTLLM_BREAKER_RECOVERY_SECONDS"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breaker_recovery_seconds: Option<u64>,
    /// Fraction of the GPU's memory this process may use, KV caches included (vLLM's
    /// name): what loading leaves of it bounds the running sequences' caches.
    #[arg(
        id = "server.gpu_memory_utilization",
        long = "gpu-memory-utilization",
        env = "DFASTLLM_GPU_MEMORY_UTILIZATION"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_memory_utilization: Option<f64>,
    /// GPU memory ratio above which admissions are logged and counted.
    #[arg(
        id = "server.gpu_memory_warn",
        long = "gpu-memory-warn",
        env = "DFASTLLM_GPU_MEMORY_WARN"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_memory_warn: Option<f64>,
    /// GPU memory ratio above which requests are refused with 503.
    #[arg(
        id = "server.gpu_memory_critical",
        long = "gpu-memory-critical",
        env = "DFASTLLM_GPU_MEMORY_CRITICAL"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_memory_critical: Option<f64>,
    /// TEST ONLY: make chosen forward passes fail (`oom@3,error@5-9`), or fix the GPU
    /// memory reading (`gpu_memory=USED/TOTAL`). Hidden from --help and never read from
    /// runtime.toml.
    #[arg(
        id = "server.inject_faults",
        long = "inject-faults",
        env = "DFASTLLM_INJECT_FAULTS",
        hide = true
    )]
    #[serde(skip)]
    pub inject_faults: Option<FaultPlan>,
    /// Request body limit in bytes.
    #[arg(
        id = "server.max_body_bytes",
        long = "max-body-bytes",
        env = "DFASTLLM_MAX_BODY_BYTES"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<usize>,
    /// Accepted API keys, comma-separated (off when none is given). Flags and env only:
    /// the file names a key file instead, so keys never sit in a ConfigMap.
    #[arg(
        id = "server.api_keys",
        long = "api-keys",
        visible_alias = "api-key",
        env = "DFASTLLM_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    #[serde(skip)]
    pub api_keys: Option<Vec<String>>,
    /// Bearer key `/metrics` requires (off: metrics are open, as Prometheus scrapes
    /// expect). Flags and env only, like the API keys.
    #[arg(
        id = "server.metrics_api_key",
        long = "metrics-api-key",
        env = "DFASTLLM_METRICS_API_KEY",
        hide_env_values = true
    )]
    #[serde(skip)]
    pub metrics_api_key: Option<String>,
    /// File of API keys, one per line.
    #[arg(
        id = "server.api_keys_file",
        long = "api-keys-file",
        env = "DFASTLLM_API_KEYS_FILE"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_keys_file: Option<PathBuf>,
    /// Requests per minute per API key (or client address); 0 = unlimited.
    #[arg(
        id = "server.rate_limit_requests_per_minute",
        long = "rate-limit-rpm",
        env = "DFASTLLM_RATE_LIMIT_RPM"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit_requests_per_minute: Option<u32>,
    /// Wait this long for more requests before starting a new batch.
    #[arg(
        id = "server.batch_wait_ms",
        long = "batch-wait-ms",
        env = "DFASTLLM_BATCH_WAIT_MS"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_wait_ms: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecodingLayer {
    /// Default max_tokens (the diffusion answer region, `gen_length` in runtime.toml).
    #[arg(
        id = "decoding.gen_length",
        long = "max-tokens",
        env = "DFASTLLM_MAX_TOKENS"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gen_length: Option<usize>,
    /// Default steps for an answer of max-tokens tokens [default: one per token].
    #[arg(id = "decoding.steps", long = "steps", env = "DFASTLLM_STEPS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<usize>,
    /// Default block length [default: 32 when it divides the answer, else the answer].
    #[arg(
        id = "decoding.block_length",
        long = "block-length",
        env = "DFASTLLM_BLOCK_LENGTH"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block_length: Option<usize>,
    /// low_confidence, random, entropy or margin.
    #[arg(
        id = "decoding.remasking",
        long = "remasking",
        env = "DFASTLLM_REMASKING"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remasking: Option<Remasking>,
    /// 0 is greedy (argmax); above 0 samples.
    #[arg(
        id = "decoding.temperature",
        long = "temperature",
        env = "DFASTLLM_TEMPERATURE"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// none, prefix or dual (Fast-dLLM's KV cache).
    #[arg(id = "decoding.kv_cache", long = "kv-cache", env = "DFASTLLM_KV_CACHE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kv_cache: Option<KvCacheMode>,
    #[command(flatten)]
    #[serde(default)]
    pub apd: ApdLayer,
    #[command(flatten)]
    #[serde(default)]
    pub mor: MorLayer,
}

/// Adaptive parallel decoding, as the operator renders it from `spec.decoding.apd`.
#[derive(Debug, Clone, Default, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApdLayer {
    /// runtime.toml only: the flag's `--apd off` is how flags turn APD off.
    #[arg(skip)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Adaptive parallel decoding: off, threshold, factor or verifier (needs
    /// --apd-verifier-model).
    #[arg(id = "decoding.apd.mode", long = "apd", env = "DFASTLLM_APD")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<ApdMode>,
    /// Commit every position at least this confident (--apd threshold).
    #[arg(
        id = "decoding.apd.threshold",
        long = "apd-threshold",
        env = "DFASTLLM_APD_THRESHOLD"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// Fast-dLLM's factor f (--apd factor).
    #[arg(
        id = "decoding.apd.factor",
        long = "apd-factor",
        env = "DFASTLLM_APD_FACTOR"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub factor: Option<f64>,
    /// At most this many positions per step under APD.
    #[arg(
        id = "decoding.apd.max_parallel",
        long = "apd-max-parallel",
        env = "DFASTLLM_APD_MAX_PARALLEL"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_parallel: Option<usize>,
    /// An autoregressive checkpoint with the diffusion model's tokenizer, loaded beside
    /// it: requests may then ask for `apd.mode: verifier` (and --apd verifier makes it
    /// the deployment's rule).
    #[arg(
        id = "decoding.apd.verifier_model",
        long = "apd-verifier-model",
        env = "DFASTLLM_APD_VERIFIER_MODEL"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verifier_model: Option<PathBuf>,
    /// The verifier's mixture weight R of the diffusion model (p_dLLM^R * p_AR^(1-R)).
    #[arg(id = "decoding.apd.mix", long = "apd-mix", env = "DFASTLLM_APD_MIX")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mix: Option<f64>,
    /// Positions the diffusion model drafts per verifier step.
    #[arg(
        id = "decoding.apd.max_lookahead",
        long = "apd-max-lookahead",
        env = "DFASTLLM_APD_MAX_LOOKAHEAD"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_lookahead: Option<usize>,
}

/// Mixture of recursions, as the operator renders it from `spec.decoding.mor`.
#[derive(Debug, Clone, Default, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MorLayer {
    /// Mixture of recursions: refine filled blocks' low-confidence tokens (`--mor` is
    /// `--mor true`; `--mor false` turns off a file's MoR).
    #[arg(
        id = "decoding.mor.enabled",
        long = "mor",
        env = "DFASTLLM_MOR",
        num_args = 0..=1,
        default_missing_value = "true",
        value_parser = BoolishValueParser::new()
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[arg(
        id = "decoding.mor.min_recursions",
        long = "mor-min-recursions",
        env = "DFASTLLM_MOR_MIN_RECURSIONS"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_recursions: Option<usize>,
    #[arg(
        id = "decoding.mor.max_recursions",
        long = "mor-max-recursions",
        env = "DFASTLLM_MOR_MAX_RECURSIONS"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_recursions: Option<usize>,
    /// Re-mask tokens committed below this confidence.
    #[arg(
        id = "decoding.mor.confidence_threshold",
        long = "mor-threshold",
        env = "DFASTLLM_MOR_THRESHOLD"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confidence_threshold: Option<f64>,
}

pub const DEFAULT_MODEL_PATH: &str = "/mnt/models";
pub const DEFAULT_APD_THRESHOLD: f64 = 0.9;
pub const DEFAULT_APD_FACTOR: f64 = 1.0;
pub const DEFAULT_MAX_PARALLEL: usize = 16;
pub const DEFAULT_APD_MIX: f64 = 0.7;
pub const DEFAULT_APD_MAX_LOOKAHEAD: usize = 8;

/// The defaults table: the one place a knob's default is written. Knobs whose default
/// depends on other values (served name, steps, block length) are absent and say so in
/// their help.
pub fn defaults() -> ConfigLayer {
    ConfigLayer {
        model: ModelLayer {
            path: Some(PathBuf::from(DEFAULT_MODEL_PATH)),
            served_name: None,
            aliases: None,
            max_model_len: None,
            device: Some(DeviceChoice::Auto),
            dtype: Some(DTypeChoice::Auto),
            architecture: Some(ArchitectureChoice::Auto),
            generation_config: Some(GenerationConfigMode::Auto),
        },
        server: ServerLayer {
            host: Some("0.0.0.0".into()),
            port: Some(8000),
            max_concurrent_requests: Some(16),
            max_queue: Some(256),
            request_timeout_seconds: Some(60),
            request_timeout_streaming_seconds: Some(300),
            shutdown_grace_seconds: Some(30),
            read_timeout_seconds: Some(10),
            max_connections: Some(1024),
            idempotency_ttl_seconds: Some(600),
            idempotency_max_bytes: Some(32 << 20),
            special_tokens_in_content: Some(SpecialsInContent::Parse),
            tool_call_parser: Some(ToolParserChoice::Auto),
            breaker_failure_threshold: Some(5),
            breaker_recovery_seconds: Some(30),
            gpu_memory_utilization: Some(0.90),
            gpu_memory_warn: Some(0.85),
            gpu_memory_critical: Some(0.95),
            inject_faults: None,
            max_body_bytes: Some(1 << 20),
            api_keys: None,
            metrics_api_key: None,
            api_keys_file: None,
            rate_limit_requests_per_minute: Some(0),
            batch_wait_ms: Some(0),
        },
        decoding: DecodingLayer {
            gen_length: Some(64),
            steps: None,
            block_length: None,
            remasking: Some(Remasking::LowConfidence),
            temperature: Some(0.0),
            kv_cache: Some(KvCacheMode::None),
            apd: ApdLayer {
                enabled: Some(false),
                mode: Some(ApdMode::Threshold),
                threshold: Some(DEFAULT_APD_THRESHOLD),
                factor: Some(DEFAULT_APD_FACTOR),
                max_parallel: Some(DEFAULT_MAX_PARALLEL),
                verifier_model: None,
                mix: Some(DEFAULT_APD_MIX),
                max_lookahead: Some(DEFAULT_APD_MAX_LOOKAHEAD),
            },
            mor: MorLayer {
                enabled: Some(false),
                min_recursions: Some(0),
                max_recursions: Some(2),
                confidence_threshold: Some(0.7),
            },
        },
    }
}

/// MoR's recursion counts and threshold from the defaults table, for a request or
/// deployment that turns MoR on without giving them.
pub fn default_mor() -> Mor {
    let m = defaults().decoding.mor;
    Mor {
        min_recursions: m.min_recursions.unwrap_or_default(),
        max_recursions: m.max_recursions.unwrap_or_default(),
        confidence_threshold: m.confidence_threshold.unwrap_or_default() as f32,
    }
}

mod layered;
mod resolve;

pub use layered::*;
pub use resolve::*;

#[cfg(test)]
mod tests;
