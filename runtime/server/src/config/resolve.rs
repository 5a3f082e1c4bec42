//! From the merged layers to what the server runs with: typed values, checked against
//! each other, with errors that name the value's real source.

use std::path::{Path, PathBuf};

use dfastllm_core::decoding::{CommitRule, DecodeError, DiffusionParams, Mor, Remasking};
use dfastllm_core::device::DeviceChoice;
use dfastllm_core::engine::MemoryGuardConfig;
use dfastllm_core::models::{Architecture, DTypeChoice};

use super::layered::{merge, ConfigError, FlagOrigins, Layered};
use super::*;

/// Decoding defaults applied to requests that leave a knob out.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodingDefaults {
    pub gen_length: usize,
    pub steps: Option<usize>,
    pub block_length: Option<usize>,
    pub remasking: Remasking,
    /// Whether the deployment set the remasking rule itself (over generation_config's
    /// `alg`).
    pub remasking_set: bool,
    pub temperature: f32,
    /// Whether the deployment (flag, env, runtime.toml) set the temperature itself: the
    /// checkpoint's generation_config.json then does not replace it.
    pub temperature_set: bool,
    pub commit: CommitRule,
    pub mor: Option<Mor>,
    pub kv_cache: KvCacheMode,
    /// The verifier's rule when a verifier model is loaded (requests may then ask for
    /// `apd.mode: verifier`); `None` without one.
    pub verifier: Option<CommitRule>,
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
        let verifier = apd.verifier_model.as_ref().map(|_| CommitRule::Verifier {
            mix: apd.mix.unwrap_or(DEFAULT_APD_MIX) as f32,
            max_lookahead: apd.max_lookahead.unwrap_or(DEFAULT_APD_MAX_LOOKAHEAD),
        });
        let commit = match mode {
            ApdMode::Verifier => verifier.ok_or_else(|| {
                l.invalid(
                    "decoding.apd.mode",
                    "verifier needs the verifier model (--apd-verifier-model DIR)",
                )
            })?,
            ApdMode::Off => CommitRule::Schedule,
            ApdMode::Threshold => CommitRule::Threshold {
                threshold: apd.threshold.unwrap_or(DEFAULT_APD_THRESHOLD) as f32,
                max_parallel,
            },
            ApdMode::Factor => CommitRule::Factor {
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
                matches!(mode, ApdMode::Off | ApdMode::Verifier),
                "--apd threshold or --apd factor",
            ),
            (
                "decoding.apd.mix",
                verifier.is_none(),
                "--apd-verifier-model",
            ),
            (
                "decoding.apd.max_lookahead",
                verifier.is_none(),
                "--apd-verifier-model",
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
            remasking_set: l.set_by_deployment("decoding.remasking"),
            temperature: d.temperature.unwrap_or_default() as f32,
            temperature_set: l.set_by_deployment("decoding.temperature"),
            commit,
            mor,
            kv_cache: d.kv_cache.unwrap_or_default(),
            verifier,
        };
        if matches!(out.commit, CommitRule::Verifier { .. }) {
            // The verifier re-reads the whole sequence each step and commits a prefix:
            // neither the approximate caches nor MoR's re-masking apply to it.
            if out.kv_cache != KvCacheMode::None {
                return Err(l.invalid("decoding.kv_cache", "must be none with --apd verifier"));
            }
            if out.mor.is_some() {
                return Err(l.invalid("decoding.mor.enabled", "must be off with --apd verifier"));
            }
        }
        if out.gen_length == 0 {
            return Err(l.invalid("decoding.gen_length", "must be at least 1"));
        }
        if !(0.0..=2.0).contains(&d.temperature.unwrap_or_default()) {
            return Err(l.invalid("decoding.temperature", "must be between 0 and 2"));
        }
        if let Some(rule) = out.verifier {
            let probe = DiffusionParams {
                commit: rule,
                ..DiffusionParams::with_defaults(1)
            };
            if let Err(DecodeError::InvalidParam { param, message }) = probe.validate(1, usize::MAX)
            {
                return Err(l.invalid(&format!("decoding.{param}"), message));
            }
        }
        let probe = DiffusionParams {
            remasking: out.remasking,
            commit: out.commit,
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
    /// `--max-model-len`: caps the model's context for prompts plus answers.
    pub max_model_len: Option<usize>,
    pub device: DeviceChoice,
    pub dtype: DTypeChoice,
    pub generation_config: GenerationConfigMode,
    pub host: String,
    pub port: u16,
    pub max_concurrent_requests: usize,
    pub max_queue: usize,
    /// Non-streamed requests' deadline.
    pub request_timeout_seconds: u64,
    pub request_timeout_streaming_seconds: u64,
    pub shutdown_grace_seconds: u64,
    pub read_timeout_seconds: u64,
    pub max_connections: usize,
    /// 0: idempotency keys are off.
    pub idempotency_ttl_seconds: u64,
    pub idempotency_max_bytes: usize,
    pub special_tokens_in_content: SpecialsInContent,
    pub tool_call_parser: ToolParserChoice,
    pub breaker_failure_threshold: u32,
    pub breaker_recovery_seconds: u64,
    /// The GPU memory guard's levels and the cache budget's utilisation.
    pub memory_guard: MemoryGuardConfig,
    /// Test only (`--inject-faults`); empty in service.
    pub inject_faults: FaultPlan,
    pub max_body_bytes: usize,
    pub api_keys: Vec<String>,
    /// `/metrics`'s own bearer key, when metrics are not public.
    pub metrics_api_key: Option<String>,
    pub rate_limit_requests_per_minute: u32,
    pub batch_wait_ms: u64,
    pub decoding: DecodingDefaults,
    /// APD's verifier checkpoint, loaded beside the model.
    pub verifier_model: Option<PathBuf>,
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
            max_model_len: m.max_model_len,
            device: m.device.unwrap_or(DeviceChoice::Auto),
            dtype: m.dtype.unwrap_or(DTypeChoice::Auto),
            generation_config: m.generation_config.unwrap_or_default(),
            host: s.host.clone().unwrap_or_default(),
            port: s.port.unwrap_or_default(),
            max_concurrent_requests: s.max_concurrent_requests.unwrap_or_default(),
            max_queue: s.max_queue.unwrap_or_default(),
            request_timeout_seconds: s.request_timeout_seconds.unwrap_or_default(),
            request_timeout_streaming_seconds: s
                .request_timeout_streaming_seconds
                .unwrap_or_default(),
            shutdown_grace_seconds: s.shutdown_grace_seconds.unwrap_or_default(),
            read_timeout_seconds: s.read_timeout_seconds.unwrap_or_default(),
            max_connections: s.max_connections.unwrap_or_default(),
            idempotency_ttl_seconds: s.idempotency_ttl_seconds.unwrap_or_default(),
            idempotency_max_bytes: s.idempotency_max_bytes.unwrap_or_default(),
            special_tokens_in_content: s.special_tokens_in_content.unwrap_or_default(),
            tool_call_parser: s.tool_call_parser.unwrap_or_default(),
            breaker_failure_threshold: s.breaker_failure_threshold.unwrap_or_default(),
            breaker_recovery_seconds: s.breaker_recovery_seconds.unwrap_or_default(),
            memory_guard: MemoryGuardConfig {
                warn: s.gpu_memory_warn.unwrap_or_default(),
                critical: s.gpu_memory_critical.unwrap_or_default(),
                utilization: s.gpu_memory_utilization.unwrap_or_default(),
            },
            inject_faults: l.inject_faults.clone().unwrap_or_default(),
            max_body_bytes: s.max_body_bytes.unwrap_or_default(),
            api_keys,
            metrics_api_key: l.metrics_api_key.clone().filter(|k| !k.trim().is_empty()),
            rate_limit_requests_per_minute: s.rate_limit_requests_per_minute.unwrap_or_default(),
            batch_wait_ms: s.batch_wait_ms.unwrap_or_default(),
            decoding: DecodingDefaults::resolve(l)?,
            verifier_model: l.merged.decoding.apd.verifier_model.clone(),
            model_path,
        };
        at_least_one(
            "server.max_concurrent_requests",
            cfg.max_concurrent_requests as u64,
        )?;
        at_least_one("server.max_queue", cfg.max_queue as u64)?;
        at_least_one("server.read_timeout_seconds", cfg.read_timeout_seconds)?;
        at_least_one("server.max_connections", cfg.max_connections as u64)?;
        at_least_one(
            "server.request_timeout_seconds",
            cfg.request_timeout_seconds,
        )?;
        at_least_one(
            "server.request_timeout_streaming_seconds",
            cfg.request_timeout_streaming_seconds,
        )?;
        if let Some(len) = cfg.max_model_len {
            at_least_one("model.max_model_len", len as u64)?;
        }
        let g = cfg.memory_guard;
        for (key, v) in [
            ("server.gpu_memory_utilization", g.utilization),
            ("server.gpu_memory_warn", g.warn),
            ("server.gpu_memory_critical", g.critical),
        ] {
            if !(v > 0.0 && v <= 1.0) {
                return Err(l.invalid(key, format!("must be in (0, 1], got {v}")));
            }
        }
        if g.utilization >= g.critical {
            return Err(l.invalid(
                "server.gpu_memory_utilization",
                format!(
                    "must be below server.gpu_memory_critical ({}): caches filling the GPU to the level where requests are refused would refuse them all (raise --gpu-memory-critical too)",
                    g.critical
                ),
            ));
        }
        if g.warn > g.critical {
            return Err(l.invalid(
                "server.gpu_memory_warn",
                format!(
                    "must not exceed server.gpu_memory_critical ({})",
                    g.critical
                ),
            ));
        }
        Ok(cfg)
    }

    /// The circuit breaker's settings, for the engine.
    pub fn breaker(&self) -> dfastllm_core::engine::BreakerConfig {
        dfastllm_core::engine::BreakerConfig {
            failure_threshold: self.breaker_failure_threshold,
            recovery: std::time::Duration::from_secs(self.breaker_recovery_seconds),
        }
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
