//! The GPU memory guard and the KV-cache budget.
//!
//! - **Guard**: at admission, GPU memory above `warn` is logged and counted, above
//!   `critical` the request is refused (503, `reason=memory`) rather than risking an
//!   out-of-memory pass for everyone already running.
//! - **Budget** (vLLM's `--gpu-memory-utilization`): after loading, the GPU's memory
//!   times the utilisation, less what is in use (weights, the runtime), is what the
//!   running sequences' caches may take. A sequence reserves its whole length's keys and
//!   values when admitted; one that does not fit waits in the queue until others finish.
//!
//! Both need a probe ([`crate::gpu`]); without one (no driver) they are off.

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::gpu::{GpuProbe, GpuReading};
use crate::metrics::{LevelLabels, Metrics};

/// Readings are reused this long: admission under load must not call NVML per request.
const READING_TTL: Duration = Duration::from_millis(250);
/// The warn level is logged at most this often (it is counted every time).
const WARN_LOG_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryGuardConfig {
    /// Memory ratio (0-1] above which admissions are logged and counted.
    pub warn: f64,
    /// Memory ratio (0-1] above which admissions are refused.
    pub critical: f64,
    /// Fraction of the GPU's memory the process may use, caches included.
    pub utilization: f64,
}

impl Default for MemoryGuardConfig {
    fn default() -> Self {
        Self {
            warn: 0.85,
            critical: 0.95,
            utilization: 0.90,
        }
    }
}

/// What a sequence of the model reserves: `bytes_per_token` times its whole length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvBudget {
    pub bytes: u64,
    pub bytes_per_token: u64,
}

/// Refused for memory: the used ratio when it was read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryCritical {
    pub ratio: f64,
}

#[derive(Debug, Default)]
struct Cached {
    at: Option<Instant>,
    reading: Option<GpuReading>,
    warned_at: Option<Instant>,
}

#[derive(Debug)]
struct Installed {
    probe: Box<dyn GpuProbe>,
    config: MemoryGuardConfig,
    budget: Option<KvBudget>,
}

/// Shared by the engine's handle (admission) and scheduler (the budget). Off until
/// [`Self::install`] (the device is known only after loading).
#[derive(Debug, Default)]
pub struct MemoryGuard {
    installed: OnceLock<Installed>,
    cached: Mutex<Cached>,
}

impl MemoryGuard {
    /// Starts the guard with `probe` and sets the cache budget from what loading left:
    /// `bytes_per_token` of cache per token of a sequence. Returns the budget (0 bytes
    /// when loading already used the utilisation: admission then runs one sequence at a
    /// time rather than none). A second call changes nothing.
    pub fn install(
        &self,
        probe: Box<dyn GpuProbe>,
        config: MemoryGuardConfig,
        bytes_per_token: u64,
        metrics: &Metrics,
    ) -> Option<KvBudget> {
        let budget = probe.read().map(|r| KvBudget {
            bytes: ((r.total_bytes as f64 * config.utilization) as u64)
                .saturating_sub(r.used_bytes),
            bytes_per_token: bytes_per_token.max(1),
        });
        let installed = self.installed.get_or_init(|| Installed {
            probe,
            config,
            budget,
        });
        if let Some(b) = installed.budget {
            metrics.kv_cache_budget_bytes.set(b.bytes as i64);
        }
        installed.budget
    }

    pub fn budget(&self) -> Option<KvBudget> {
        self.installed.get().and_then(|i| i.budget)
    }

    /// The probe's reading, at most [`READING_TTL`] old; `None` without a probe.
    pub fn reading(&self) -> Option<GpuReading> {
        let probe = &self.installed.get()?.probe;
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = cached.at.is_some_and(|at| at.elapsed() < READING_TTL);
        if !fresh {
            cached.reading = probe.read();
            cached.at = Some(Instant::now());
        }
        cached.reading
    }

    /// Admission's check: `Err` above `critical`; above `warn`, counted (and logged
    /// every [`WARN_LOG_EVERY`]) but admitted.
    pub fn admit(&self, metrics: &Metrics) -> Result<(), MemoryCritical> {
        let (Some(installed), Some(reading)) = (self.installed.get(), self.reading()) else {
            return Ok(());
        };
        let config = installed.config;
        let ratio = reading.memory_ratio();
        let count = |level: &str| {
            metrics
                .gpu_memory_pressure
                .get_or_create(&LevelLabels {
                    level: level.into(),
                })
                .inc();
        };
        if ratio >= config.critical {
            count("critical");
            return Err(MemoryCritical { ratio });
        }
        if ratio >= config.warn {
            count("warn");
            let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
            if cached
                .warned_at
                .is_none_or(|t| t.elapsed() >= WARN_LOG_EVERY)
            {
                cached.warned_at = Some(Instant::now());
                tracing::warn!(
                    used_bytes = reading.used_bytes,
                    total_bytes = reading.total_bytes,
                    ratio,
                    warn = config.warn,
                    critical = config.critical,
                    "GPU memory is high; requests are refused above the critical level"
                );
            }
        }
        Ok(())
    }

    /// Sets the GPU gauges from a fresh reading (at scrape time).
    pub fn publish(&self, metrics: &Metrics) {
        let Some(r) = self.reading() else {
            return;
        };
        metrics.gpu_memory_used_bytes.set(r.used_bytes as i64);
        metrics.gpu_memory_total_bytes.set(r.total_bytes as i64);
        if let Some(u) = r.utilization_ratio {
            metrics.gpu_utilization_ratio.set(u);
        }
        if let Some(t) = r.temperature_celsius {
            metrics.gpu_temperature_celsius.set(t);
        }
        if let Some(p) = r.power_watts {
            metrics.gpu_power_watts.set(p);
        }
    }
}

impl KvBudget {
    /// Bytes a sequence of `tokens` (prompt plus answer) reserves.
    pub fn bytes_for(&self, tokens: usize) -> u64 {
        self.bytes_per_token.saturating_mul(tokens as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::FixedProbe;

    fn guard(used: u64, total: u64) -> (MemoryGuard, Metrics) {
        let g = MemoryGuard::default();
        let m = Metrics::new();
        g.install(
            Box::new(FixedProbe::parse(&format!("{used}/{total}")).unwrap()),
            MemoryGuardConfig::default(),
            10,
            &m,
        );
        (g, m)
    }

    #[test]
    fn critical_memory_refuses_and_warn_counts() {
        let (g, m) = guard(96, 100);
        assert_eq!(g.admit(&m).unwrap_err().ratio, 0.96);
        let (g, m) = guard(90, 100);
        assert!(g.admit(&m).is_ok());
        let text = m.encode();
        assert!(
            text.contains("dfastllm_gpu_memory_pressure_total{level=\"warn\"} 1"),
            "{text}"
        );
        let (g, m) = guard(10, 100);
        assert!(g.admit(&m).is_ok());
        assert!(!m.encode().contains("level=\"warn\""));
        let off = MemoryGuard::default();
        assert!(off.admit(&m).is_ok(), "no probe, no guard");
        assert!(off.budget().is_none());
    }

    #[test]
    fn the_budget_is_what_the_utilisation_leaves_after_loading() {
        let (g, m) = guard(1_000, 10_000);
        let b = g.budget().unwrap();
        assert_eq!(b.bytes, 9_000 - 1_000);
        assert_eq!(b.bytes_for(30), 300);
        assert!(m.encode().contains("dfastllm_kv_cache_budget_bytes 8000"));
        let (full, _) = guard(9_500, 10_000);
        assert_eq!(
            full.budget().unwrap().bytes,
            0,
            "over the utilisation already"
        );
    }
}
