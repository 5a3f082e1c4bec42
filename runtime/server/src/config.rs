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

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use clap::builder::BoolishValueParser;
use clap::parser::ValueSource;
use clap::ArgMatches;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use dfastllm_core::decoding::{DecodeError, DiffusionParams, Mor, Parallel, Remasking};
use dfastllm_core::device::DeviceChoice;
pub use dfastllm_core::models::KvCacheMode;
use dfastllm_core::models::{Architecture, DTypeChoice};

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
    /// auto (CUDA when built with it and a GPU answers, else CPU), cpu, cuda, cuda:N.
    #[arg(id = "model.device", long = "device", env = "DFASTLLM_DEVICE")]
    #[serde(
        default,
        deserialize_with = "de_parsed",
        serialize_with = "ser_display",
        skip_serializing_if = "Option::is_none"
    )]
    pub device: Option<DeviceChoice>,
    /// auto (config.json's torch_dtype on GPU, f32 on CPU), f32, f16, bf16.
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
}

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
    #[arg(
        id = "server.request_timeout_seconds",
        long = "request-timeout-seconds",
        env = "DFASTLLM_REQUEST_TIMEOUT_SECONDS"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_timeout_seconds: Option<u64>,
    /// How long SIGTERM waits for in-flight requests.
    #[arg(
        id = "server.shutdown_grace_seconds",
        long = "shutdown-grace-seconds",
        env = "DFASTLLM_SHUTDOWN_GRACE_SECONDS"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shutdown_grace_seconds: Option<u64>,
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
        env = "DFASTLLM_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    #[serde(skip)]
    pub api_keys: Option<Vec<String>>,
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
    /// Adaptive parallel decoding: off, threshold or factor.
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

/// The defaults table: the one place a knob's default is written. Knobs whose default
/// depends on other values (served name, steps, block length) are absent and say so in
/// their help.
pub fn defaults() -> ConfigLayer {
    ConfigLayer {
        model: ModelLayer {
            path: Some(PathBuf::from(DEFAULT_MODEL_PATH)),
            served_name: None,
            aliases: None,
            device: Some(DeviceChoice::Auto),
            dtype: Some(DTypeChoice::Auto),
            architecture: Some(ArchitectureChoice::Auto),
        },
        server: ServerLayer {
            host: Some("0.0.0.0".into()),
            port: Some(8000),
            max_concurrent_requests: Some(16),
            max_queue: Some(256),
            request_timeout_seconds: Some(300),
            shutdown_grace_seconds: Some(30),
            max_body_bytes: Some(1 << 20),
            api_keys: None,
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

/// Where a merged value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Default,
    /// runtime.toml at this path.
    File(PathBuf),
    /// A command-line flag (`--port`).
    Flag(String),
    /// An environment variable (`DFASTLLM_PORT`).
    Env(String),
}

/// A value's name as its source spells it, for error messages.
fn source_name(key: &str, origin: &Origin) -> String {
    match origin {
        Origin::Default => format!("{key} (default)"),
        Origin::File(path) => format!("{}: {key}", path.display()),
        Origin::Flag(flag) => flag.clone(),
        Origin::Env(var) => var.clone(),
    }
}

/// Each flag-layer key's flag and env variable, read from the clap definition.
fn flag_table() -> BTreeMap<String, (String, Option<String>)> {
    use clap::Args as _;
    let cmd = ConfigLayer::augment_args(clap::Command::new("serve"));
    cmd.get_arguments()
        .map(|a| {
            let flag = a
                .get_long()
                .map_or_else(|| a.get_id().to_string(), |l| format!("--{l}"));
            let env = a.get_env().map(|e| e.to_string_lossy().to_string());
            (a.get_id().to_string(), (flag, env))
        })
        .collect()
}

/// Whether each flag-layer value came from the command line or the environment.
/// Without matches (a layer built in code) every value counts as its flag.
#[derive(Debug, Clone, Default)]
pub struct FlagOrigins {
    from_env: Vec<String>,
}

impl FlagOrigins {
    pub fn from_matches(matches: &ArgMatches) -> Self {
        let from_env = flag_table()
            .into_keys()
            .filter(|id| {
                matches!(
                    matches.try_get_raw(id).map(|_| matches.value_source(id)),
                    Ok(Some(ValueSource::EnvVariable))
                )
            })
            .collect();
        Self { from_env }
    }
}

/// Appends each flag's default, from [`defaults`], to its help (`--help` and the table
/// cannot disagree).
pub fn annotate_defaults(cmd: clap::Command) -> clap::Command {
    let table = flatten(&defaults());
    cmd.mut_args(|a| match table.get(a.get_id().as_str()) {
        Some(value) => {
            let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
            let shown = value
                .as_str()
                .map_or_else(|| value.to_string(), str::to_string);
            a.help(format!("{help} [default: {shown}]"))
        }
        None => a,
    })
}

/// The leaves of a layer as `dotted.key -> value`.
fn flatten(layer: &ConfigLayer) -> BTreeMap<String, toml::Value> {
    fn walk(prefix: &str, table: &toml::Table, out: &mut BTreeMap<String, toml::Value>) {
        for (k, v) in table {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match v {
                toml::Value::Table(t) => walk(&key, t, out),
                other => {
                    out.insert(key, other.clone());
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    // A layer holds only plain values, which always serialise.
    if let Ok(table) = toml::Table::try_from(layer) {
        walk("", &table, &mut out);
    }
    out
}

/// The flag/env, file and default layers merged field by field, each value with its
/// origin.
#[derive(Debug, Clone)]
pub struct Layered {
    pub merged: ConfigLayer,
    pub origins: BTreeMap<String, Origin>,
    /// Flags and env only (never in the file, never printed).
    api_keys: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    /// `source` is the value's name as its origin spells it (`--device`,
    /// `DFASTLLM_PORT`, `runtime.toml: model.device`).
    #[error("{source_name}: {message}")]
    Invalid {
        source_name: String,
        message: String,
    },
}

impl ConfigLayer {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Self::parse(&text).map_err(|message| ConfigError::File {
            path: path.to_path_buf(),
            message,
        })
    }

    /// runtime.toml. Unknown keys are errors, so a typo never silently falls back to a
    /// default.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim().replace('\n', " "))
    }
}

/// Merges `flags` (with their origins) over `file` (read from `file_path`) over
/// [`defaults`].
pub fn merge(
    flags: &ConfigLayer,
    flag_origins: &FlagOrigins,
    file: Option<(&ConfigLayer, &Path)>,
) -> Layered {
    let table = flag_table();
    let mut values = flatten(&defaults());
    let mut origins: BTreeMap<String, Origin> = values
        .keys()
        .map(|k| (k.clone(), Origin::Default))
        .collect();
    if let Some((file, path)) = file {
        for (k, v) in flatten(file) {
            origins.insert(k.clone(), Origin::File(path.to_path_buf()));
            values.insert(k, v);
        }
    }
    for (k, v) in flatten(flags) {
        let (flag, env) = table.get(&k).cloned().unwrap_or_else(|| (k.clone(), None));
        let origin = match env {
            Some(var) if flag_origins.from_env.contains(&k) => Origin::Env(var),
            _ => Origin::Flag(flag),
        };
        origins.insert(k.clone(), origin);
        values.insert(k, v);
    }
    let mut root = toml::Table::new();
    for (k, v) in values {
        let mut node = &mut root;
        let mut parts: Vec<&str> = k.split('.').collect();
        let leaf = parts.pop().unwrap_or_default().to_string();
        for p in parts {
            node = match node
                .entry(p.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            {
                toml::Value::Table(t) => t,
                _ => unreachable!("a key is either a table or a value"),
            };
        }
        node.insert(leaf, v);
    }
    // Every value came from a typed layer, so the merged table reads back.
    let merged: ConfigLayer = toml::Value::Table(root)
        .try_into()
        .expect("values serialised from typed layers deserialise");
    Layered {
        merged,
        origins,
        api_keys: flags.server.api_keys.clone().unwrap_or_default(),
    }
}

impl Layered {
    pub fn origin(&self, key: &str) -> Origin {
        self.origins.get(key).cloned().unwrap_or(Origin::Default)
    }

    fn invalid(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            source_name: source_name(key, &self.origin(key)),
            message: message.into(),
        }
    }

    /// Whether `key` was set by a flag or env variable.
    fn set_by_flag(&self, key: &str) -> bool {
        matches!(self.origin(key), Origin::Flag(_) | Origin::Env(_))
    }

    /// The merged configuration as runtime.toml, each value followed by its origin
    /// (`dfastllm serve --print-config`).
    pub fn render(&self) -> String {
        let mut tables: BTreeMap<&str, Vec<(&str, String)>> = BTreeMap::new();
        let values = flatten(&self.merged);
        for (key, value) in &values {
            let (table, leaf) = key.rsplit_once('.').unwrap_or(("", key));
            let from = match self.origin(key) {
                Origin::Default => "default".to_string(),
                Origin::File(p) => p.display().to_string(),
                Origin::Flag(f) => f,
                Origin::Env(v) => v,
            };
            tables
                .entry(table)
                .or_default()
                .push((leaf, format!("{value}  # {from}")));
        }
        let mut out = String::from(
            "# dfastllm serve: the merged configuration (flag > env > runtime.toml > default)\n",
        );
        for (table, rows) in tables {
            out.push_str(&format!("\n[{table}]\n"));
            for (leaf, line) in rows {
                out.push_str(&format!("{leaf} = {line}\n"));
            }
        }
        if !self.api_keys.is_empty() {
            out.push_str(&format!(
                "# server.api_keys: {} given by flag or env (values hidden)\n",
                self.api_keys.len()
            ));
        }
        out
    }
}

/// Reads keys from a file: one per line or comma-separated; blank lines and `#` comments
/// are skipped (the operator mounts a Secret key here).
pub fn read_api_keys(path: &Path) -> Result<Vec<String>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    Ok(split_keys(
        text.lines().filter(|l| !l.trim_start().starts_with('#')),
    ))
}

fn split_keys<'a>(parts: impl Iterator<Item = &'a str>) -> Vec<String> {
    parts
        .flat_map(|l| l.split(','))
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(str::to_string)
        .collect()
}

/// Decoding defaults applied to requests that leave a knob out.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodingDefaults {
    pub gen_length: usize,
    pub steps: Option<usize>,
    pub block_length: Option<usize>,
    pub remasking: Remasking,
    pub temperature: f32,
    pub parallel: Parallel,
    pub mor: Option<Mor>,
    pub kv_cache: KvCacheMode,
}

impl Default for DecodingDefaults {
    fn default() -> Self {
        // The table's defaults always resolve.
        DecodingDefaults::resolve(&merge(
            &ConfigLayer::default(),
            &FlagOrigins::default(),
            None,
        ))
        .expect("the defaults table is valid")
    }
}

impl DecodingDefaults {
    /// The decoding section of a merged configuration, checked as the sampler would
    /// check it, so a bad deployment default fails at start rather than every request.
    pub fn resolve(l: &Layered) -> Result<Self, ConfigError> {
        let d = &l.merged.decoding;
        let fallback = defaults().decoding;
        let (apd, mor) = (&d.apd, &d.mor);
        // The APD rule: a flag's mode decides; else the file's `enabled` (with its mode).
        let mode = if l.set_by_flag("decoding.apd.mode") {
            apd.mode.unwrap_or(ApdMode::Off)
        } else if apd.enabled == Some(true) {
            apd.mode.unwrap_or(ApdMode::Threshold)
        } else {
            ApdMode::Off
        };
        let max_parallel = apd.max_parallel.unwrap_or(DEFAULT_MAX_PARALLEL);
        let parallel = match mode {
            ApdMode::Off => Parallel::Schedule,
            ApdMode::Threshold => Parallel::Threshold {
                threshold: apd.threshold.unwrap_or(DEFAULT_APD_THRESHOLD) as f32,
                max_parallel,
            },
            ApdMode::Factor => Parallel::Factor {
                factor: apd.factor.unwrap_or(DEFAULT_APD_FACTOR) as f32,
                max_parallel,
            },
        };
        // A flag for a rule that ends up unused would be silently ignored: refuse it.
        let unused_apd = [
            (
                "decoding.apd.threshold",
                mode != ApdMode::Threshold,
                "--apd threshold",
            ),
            (
                "decoding.apd.factor",
                mode != ApdMode::Factor,
                "--apd factor",
            ),
            (
                "decoding.apd.max_parallel",
                mode == ApdMode::Off,
                "--apd threshold or --apd factor",
            ),
        ];
        for (key, unused, needs) in unused_apd {
            if unused && l.set_by_flag(key) {
                return Err(l.invalid(
                    key,
                    format!("has no effect unless APD runs that rule ({needs})"),
                ));
            }
        }
        let mor_on = mor.enabled == Some(true);
        let mor_keys = [
            "decoding.mor.min_recursions",
            "decoding.mor.max_recursions",
            "decoding.mor.confidence_threshold",
        ];
        if !mor_on {
            if let Some(key) = mor_keys.iter().find(|k| l.set_by_flag(k)) {
                return Err(l.invalid(key, "has no effect while MoR is off (add --mor)"));
            }
        }
        let base = default_mor();
        let mor = mor_on.then(|| Mor {
            min_recursions: mor.min_recursions.unwrap_or(base.min_recursions),
            max_recursions: mor.max_recursions.unwrap_or(base.max_recursions),
            confidence_threshold: mor
                .confidence_threshold
                .map_or(base.confidence_threshold, |t| t as f32),
        });
        let out = Self {
            gen_length: d.gen_length.or(fallback.gen_length).unwrap_or(1),
            steps: d.steps,
            block_length: d.block_length,
            remasking: d.remasking.unwrap_or_default(),
            temperature: d.temperature.unwrap_or_default() as f32,
            parallel,
            mor,
            kv_cache: d.kv_cache.unwrap_or_default(),
        };
        if out.gen_length == 0 {
            return Err(l.invalid("decoding.gen_length", "must be at least 1"));
        }
        if !(0.0..=2.0).contains(&d.temperature.unwrap_or_default()) {
            return Err(l.invalid("decoding.temperature", "must be between 0 and 2"));
        }
        let probe = DiffusionParams {
            remasking: out.remasking,
            parallel: out.parallel,
            mor: out.mor,
            ..DiffusionParams::with_defaults(1)
        };
        if let Err(DecodeError::InvalidParam { param, message }) = probe.validate(1, usize::MAX) {
            return Err(l.invalid(&format!("decoding.{param}"), message));
        }
        Ok(out)
    }
}

/// Everything `serve` needs, after merging.
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeConfig {
    pub model_path: PathBuf,
    /// `None` is `auto`: whatever config.json says.
    pub architecture: Option<Architecture>,
    pub served_name: String,
    pub aliases: Vec<String>,
    pub device: DeviceChoice,
    pub dtype: DTypeChoice,
    pub host: String,
    pub port: u16,
    pub max_concurrent_requests: usize,
    pub max_queue: usize,
    pub request_timeout_seconds: u64,
    pub shutdown_grace_seconds: u64,
    pub max_body_bytes: usize,
    pub api_keys: Vec<String>,
    pub rate_limit_requests_per_minute: u32,
    pub batch_wait_ms: u64,
    pub decoding: DecodingDefaults,
}

impl RuntimeConfig {
    /// The merged layers, checked. Errors name the value's own source.
    pub fn resolve(l: &Layered) -> Result<Self, ConfigError> {
        let (m, s) = (&l.merged.model, &l.merged.server);
        let model_path = m
            .path
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_MODEL_PATH));
        let served_name = m.served_name.clone().unwrap_or_else(|| {
            model_path
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_else(|| "default".to_string())
        });
        let mut api_keys = split_keys(l.api_keys.iter().map(String::as_str));
        if let Some(path) = &s.api_keys_file {
            api_keys.extend(read_api_keys(path)?);
        }
        let at_least_one = |key: &str, v: u64| {
            if v == 0 {
                Err(l.invalid(key, "must be at least 1"))
            } else {
                Ok(())
            }
        };
        let cfg = Self {
            architecture: match m.architecture {
                None | Some(ArchitectureChoice::Auto) => None,
                Some(ArchitectureChoice::Is(a)) => Some(a),
            },
            served_name,
            aliases: m.aliases.clone().unwrap_or_default(),
            device: m.device.unwrap_or(DeviceChoice::Auto),
            dtype: m.dtype.unwrap_or(DTypeChoice::Auto),
            host: s.host.clone().unwrap_or_default(),
            port: s.port.unwrap_or_default(),
            max_concurrent_requests: s.max_concurrent_requests.unwrap_or_default(),
            max_queue: s.max_queue.unwrap_or_default(),
            request_timeout_seconds: s.request_timeout_seconds.unwrap_or_default(),
            shutdown_grace_seconds: s.shutdown_grace_seconds.unwrap_or_default(),
            max_body_bytes: s.max_body_bytes.unwrap_or_default(),
            api_keys,
            rate_limit_requests_per_minute: s.rate_limit_requests_per_minute.unwrap_or_default(),
            batch_wait_ms: s.batch_wait_ms.unwrap_or_default(),
            decoding: DecodingDefaults::resolve(l)?,
            model_path,
        };
        at_least_one(
            "server.max_concurrent_requests",
            cfg.max_concurrent_requests as u64,
        )?;
        at_least_one("server.max_queue", cfg.max_queue as u64)?;
        at_least_one(
            "server.request_timeout_seconds",
            cfg.request_timeout_seconds,
        )?;
        Ok(cfg)
    }

    /// Flags over an optional file over defaults, in one call (tests, `batch --model`).
    pub fn from_layers(
        flags: &ConfigLayer,
        origins: &FlagOrigins,
        file: Option<(&ConfigLayer, &Path)>,
    ) -> Result<Self, ConfigError> {
        Self::resolve(&merge(flags, origins, file))
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
