//! `RuntimeConfig`: what `dfastllm serve` runs with, merged with the precedence of
//! design §3: CLI flag > `DFASTLLM_*` env (both through clap) > `--config` TOML file
//! (the operator's ConfigMap, `/etc/dfastllm/runtime.toml`) > defaults.
//!
//! The TOML layout is the contract with the operator, which renders it without linking
//! this crate; `tests/fixtures/runtime.toml` pins it for both sides.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::decoding::{Mor, Parallel, Remasking};

/// `runtime.toml` as written by the operator. Unknown keys are errors, so a typo never
/// silently falls back to a default.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub model: ModelSection,
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub decoding: DecodingSection,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    pub path: Option<PathBuf>,
    pub served_name: Option<String>,
    pub aliases: Option<Vec<String>>,
    pub device: Option<String>,
    pub dtype: Option<String>,
    /// `auto` or the architecture the checkpoint must be (checked against config.json).
    pub architecture: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub max_concurrent_requests: Option<usize>,
    pub max_queue: Option<usize>,
    pub request_timeout_seconds: Option<u64>,
    pub shutdown_grace_seconds: Option<u64>,
    pub max_body_bytes: Option<usize>,
    pub api_keys_file: Option<PathBuf>,
    pub rate_limit_requests_per_minute: Option<u32>,
    pub batch_wait_ms: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DecodingSection {
    /// Default `max_tokens` (the diffusion gen length).
    pub gen_length: Option<usize>,
    /// Default steps for an answer of `gen_length` tokens; scaled for other lengths.
    pub steps: Option<usize>,
    pub block_length: Option<usize>,
    pub remasking: Option<Remasking>,
    pub temperature: Option<f32>,
    /// Fast-dLLM KV caching: none, prefix or dual.
    pub kv_cache: Option<KvCacheMode>,
    pub apd: Option<ApdSection>,
    pub mor: Option<MorSection>,
}

pub use crate::decoding::KvCacheMode;

/// Adaptive parallel decoding, as the operator renders it from `spec.decoding.apd`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApdSection {
    pub enabled: Option<bool>,
    /// `threshold` (default) or `factor`.
    pub mode: Option<String>,
    pub threshold: Option<f64>,
    pub factor: Option<f64>,
    pub max_parallel: Option<usize>,
}

impl ApdSection {
    /// The commit rule this section selects (`Schedule` when disabled).
    pub fn parallel(&self) -> Result<Parallel, ConfigError> {
        if !self.enabled.unwrap_or(false) {
            return Ok(Parallel::Schedule);
        }
        let max_parallel = self.max_parallel.unwrap_or(DEFAULT_MAX_PARALLEL);
        match self.mode.as_deref().unwrap_or("threshold") {
            "threshold" => Ok(Parallel::Threshold {
                threshold: self.threshold.unwrap_or(DEFAULT_APD_THRESHOLD) as f32,
                max_parallel,
            }),
            "factor" => Ok(Parallel::Factor {
                factor: self.factor.unwrap_or(DEFAULT_APD_FACTOR) as f32,
                max_parallel,
            }),
            other => Err(ConfigError::Invalid {
                field: "decoding.apd.mode",
                message: format!("unknown mode {other:?} (expected threshold or factor)"),
            }),
        }
    }
}

pub const DEFAULT_APD_THRESHOLD: f64 = 0.9;
pub const DEFAULT_APD_FACTOR: f64 = 1.0;
pub const DEFAULT_MAX_PARALLEL: usize = 16;

/// Mixture of recursions, as the operator renders it from `spec.decoding.mor`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MorSection {
    pub enabled: Option<bool>,
    pub min_recursions: Option<usize>,
    pub max_recursions: Option<usize>,
    pub confidence_threshold: Option<f64>,
}

impl MorSection {
    pub fn mor(&self) -> Option<Mor> {
        self.enabled.unwrap_or(false).then(|| Mor {
            min_recursions: self.min_recursions.unwrap_or(0),
            max_recursions: self.max_recursions.unwrap_or(2),
            confidence_threshold: self.confidence_threshold.unwrap_or(0.7) as f32,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

impl FileConfig {
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

    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim().replace('\n', " "))
    }
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
        Self {
            gen_length: 64,
            steps: None,
            block_length: None,
            remasking: Remasking::LowConfidence,
            temperature: 0.0,
            parallel: Parallel::Schedule,
            mor: None,
            kv_cache: KvCacheMode::None,
        }
    }
}

/// Everything `serve` needs, after merging.
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeConfig {
    pub model_path: PathBuf,
    /// `None` is `auto`: whatever config.json says.
    pub architecture: Option<crate::models::Architecture>,
    pub served_name: String,
    pub aliases: Vec<String>,
    pub device: String,
    pub dtype: String,
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

/// The flag/env layer: `None` where neither was given.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    pub model_path: Option<PathBuf>,
    pub architecture: Option<String>,
    pub served_name: Option<String>,
    pub aliases: Option<Vec<String>>,
    pub device: Option<String>,
    pub dtype: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub max_concurrent_requests: Option<usize>,
    pub max_queue: Option<usize>,
    pub request_timeout_seconds: Option<u64>,
    pub shutdown_grace_seconds: Option<u64>,
    pub max_body_bytes: Option<usize>,
    pub api_keys: Option<Vec<String>>,
    pub api_keys_file: Option<PathBuf>,
    pub rate_limit_requests_per_minute: Option<u32>,
    pub batch_wait_ms: Option<u64>,
    pub gen_length: Option<usize>,
    pub steps: Option<usize>,
    pub block_length: Option<usize>,
    pub remasking: Option<Remasking>,
    pub temperature: Option<f32>,
    pub parallel: Option<Parallel>,
    pub mor: Option<Mor>,
    pub kv_cache: Option<KvCacheMode>,
}

pub const DEFAULT_MODEL_PATH: &str = "/mnt/models";

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

impl RuntimeConfig {
    pub fn merge(o: Overrides, file: FileConfig) -> Result<Self, ConfigError> {
        let invalid = |field: &'static str, message: &str| {
            Err(ConfigError::Invalid {
                field,
                message: message.to_string(),
            })
        };
        let model_path = o
            .model_path
            .or(file.model.path)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_MODEL_PATH));
        let served_name = o.served_name.or(file.model.served_name).unwrap_or_else(|| {
            model_path
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_else(|| "default".to_string())
        });
        let mut api_keys = o
            .api_keys
            .map(|k| split_keys(k.iter().map(String::as_str)))
            .unwrap_or_default();
        if let Some(path) = o.api_keys_file.or(file.server.api_keys_file.clone()) {
            api_keys.extend(read_api_keys(&path)?);
        }
        let s = file.server;
        let d = file.decoding;
        let parallel = match o.parallel {
            Some(p) => p,
            None => d.apd.clone().unwrap_or_default().parallel()?,
        };
        let mor = o.mor.or_else(|| d.mor.as_ref().and_then(MorSection::mor));
        let architecture = match o.architecture.or(file.model.architecture).as_deref() {
            None | Some("auto") => None,
            Some(name) => Some(name.parse().map_err(|message| ConfigError::Invalid {
                field: "model.architecture",
                message,
            })?),
        };
        let cfg = Self {
            architecture,
            served_name,
            aliases: o.aliases.or(file.model.aliases).unwrap_or_default(),
            device: o
                .device
                .or(file.model.device)
                .unwrap_or_else(|| "auto".into()),
            dtype: o
                .dtype
                .or(file.model.dtype)
                .unwrap_or_else(|| "auto".into()),
            host: o.host.or(s.host).unwrap_or_else(|| "0.0.0.0".into()),
            port: o.port.or(s.port).unwrap_or(8000),
            max_concurrent_requests: o
                .max_concurrent_requests
                .or(s.max_concurrent_requests)
                .unwrap_or(16),
            max_queue: o.max_queue.or(s.max_queue).unwrap_or(256),
            request_timeout_seconds: o
                .request_timeout_seconds
                .or(s.request_timeout_seconds)
                .unwrap_or(300),
            shutdown_grace_seconds: o
                .shutdown_grace_seconds
                .or(s.shutdown_grace_seconds)
                .unwrap_or(30),
            max_body_bytes: o.max_body_bytes.or(s.max_body_bytes).unwrap_or(1 << 20),
            api_keys,
            rate_limit_requests_per_minute: o
                .rate_limit_requests_per_minute
                .or(s.rate_limit_requests_per_minute)
                .unwrap_or(0),
            batch_wait_ms: o.batch_wait_ms.or(s.batch_wait_ms).unwrap_or(0),
            decoding: DecodingDefaults {
                gen_length: o.gen_length.or(d.gen_length).unwrap_or(64),
                steps: o.steps.or(d.steps),
                block_length: o.block_length.or(d.block_length),
                remasking: o.remasking.or(d.remasking).unwrap_or_default(),
                temperature: o.temperature.or(d.temperature).unwrap_or(0.0),
                parallel,
                mor,
                kv_cache: o.kv_cache.or(d.kv_cache).unwrap_or_default(),
            },
            model_path,
        };
        if cfg.max_concurrent_requests == 0 {
            return invalid("max_concurrent_requests", "must be at least 1");
        }
        if cfg.max_queue == 0 {
            return invalid("max_queue", "must be at least 1");
        }
        if cfg.request_timeout_seconds == 0 {
            return invalid("request_timeout_seconds", "must be at least 1");
        }
        if cfg.decoding.gen_length == 0 {
            return invalid("gen_length", "must be at least 1");
        }
        if !(0.0..=2.0).contains(&cfg.decoding.temperature) {
            return invalid("temperature", "must be between 0 and 2");
        }
        // The fast-decoding knobs are checked by the sampler; check the deployment's
        // defaults now rather than failing every request later.
        let probe = crate::decoding::DiffusionParams {
            remasking: cfg.decoding.remasking,
            parallel: cfg.decoding.parallel,
            mor: cfg.decoding.mor,
            ..crate::decoding::DiffusionParams::with_defaults(1)
        };
        if let Err(crate::decoding::DecodeError::InvalidParam { param, message }) =
            probe.validate(1, usize::MAX)
        {
            return Err(ConfigError::Invalid {
                field: param,
                message,
            });
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_operator_contract_fixture_parses() {
        let text = include_str!("../tests/fixtures/runtime.toml");
        let file = FileConfig::parse(text).unwrap();
        let cfg = RuntimeConfig::merge(Overrides::default(), file).unwrap();
        assert_eq!(cfg.served_name, "llada-8b");
        assert_eq!(cfg.architecture, None, "the fixture says auto");
        assert_eq!(cfg.aliases, vec!["gpt-3.5-turbo".to_string()]);
        assert_eq!(cfg.max_concurrent_requests, 32);
        assert_eq!(cfg.decoding.gen_length, 256);
        assert_eq!(cfg.decoding.block_length, Some(32));
        assert_eq!(cfg.decoding.remasking, Remasking::LowConfidence);
        assert_eq!(cfg.device, "cuda:0");
        assert_eq!(cfg.rate_limit_requests_per_minute, 600);
        assert_eq!(
            cfg.decoding.parallel,
            Parallel::Threshold {
                threshold: 0.9,
                max_parallel: 16
            }
        );
        assert_eq!(cfg.decoding.kv_cache, KvCacheMode::Dual);
        assert_eq!(cfg.decoding.mor, None, "mor.enabled = false");
    }

    #[test]
    fn flags_beat_the_file_which_beats_defaults() {
        let file = FileConfig::parse(
            "[server]\nport = 9000\nmax_queue = 5\n[decoding]\ngen_length = 32\n",
        )
        .unwrap();
        let o = Overrides {
            port: Some(7000),
            ..Overrides::default()
        };
        let cfg = RuntimeConfig::merge(o, file).unwrap();
        assert_eq!(cfg.port, 7000, "flag wins");
        assert_eq!(cfg.max_queue, 5, "file wins over default");
        assert_eq!(cfg.max_concurrent_requests, 16, "default");
        assert_eq!(cfg.decoding.gen_length, 32);
        assert_eq!(cfg.model_path, PathBuf::from("/mnt/models"));
        assert_eq!(
            cfg.served_name, "models",
            "served name defaults to the model directory's name"
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let err = FileConfig::parse("[server]\nprot = 1\n").unwrap_err();
        assert!(err.contains("prot"), "{err}");
        let err = FileConfig::parse("[decoding]\nremasking = \"best\"\n").unwrap_err();
        assert!(err.contains("best") || err.contains("remasking"), "{err}");
        let o = Overrides {
            max_queue: Some(0),
            ..Overrides::default()
        };
        let err = RuntimeConfig::merge(o, FileConfig::default())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("max_queue"), "{err}");
    }

    #[test]
    fn api_keys_come_from_flags_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, "# team keys\nk2\nk3, k4\n\n").unwrap();
        let o = Overrides {
            api_keys: Some(vec!["k1".into()]),
            api_keys_file: Some(path),
            ..Overrides::default()
        };
        let cfg = RuntimeConfig::merge(o, FileConfig::default()).unwrap();
        assert_eq!(cfg.api_keys, vec!["k1", "k2", "k3", "k4"]);
        let missing = Overrides {
            api_keys_file: Some(dir.path().join("nope")),
            ..Overrides::default()
        };
        assert!(RuntimeConfig::merge(missing, FileConfig::default())
            .unwrap_err()
            .to_string()
            .contains("nope"));
    }
}
