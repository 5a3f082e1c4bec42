//! Prometheus metrics (design §4 names, prefix `dfastllm_`), shared by the engine, which
//! sees forward passes and batches, and the server, which sees requests.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, linear_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub endpoint: String,
    pub model: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
    cuda: String,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Histogram,
    pub time_to_first_token: Histogram,
    pub time_per_output_token: Histogram,
    pub prompt_tokens: Counter,
    pub generation_tokens: Counter,
    pub requests_running: Gauge,
    pub requests_waiting: Gauge,
    pub requests_rejected: Family<ReasonLabels, Counter>,
    pub requests_cancelled: Counter,
    pub forward_passes: Counter,
    pub tokens_per_forward_pass: Histogram,
    pub batch_size: Histogram,
    pub gpu_memory_used_bytes: Gauge,
    pub gpu_memory_total_bytes: Gauge,
    pub http_connections: Gauge,
    /// 1 for the breaker's current state (`closed`, `open`, `half_open`), 0 for others.
    pub circuit_breaker_state: Family<StateLabels, Gauge>,
    pub forward_pass_failures: Family<ReasonLabels, Counter>,
    pub oom_batch_halvings: Counter,
    pub request_size_bytes: Histogram,
    pub response_size_bytes: Histogram,
    pub idempotent_replays: Counter,
    pub idempotency_cache_bytes: Gauge,
    pub idempotency_waiting: Gauge,
    pub tool_calls: Counter,
    pub response_format_invalid: Counter,
    /// Reserved over budgeted KV-cache bytes (`--gpu-memory-utilization`).
    pub kv_cache_usage_ratio: Gauge<f64, AtomicU64>,
    pub kv_cache_budget_bytes: Gauge,
    pub gpu_utilization_ratio: Gauge<f64, AtomicU64>,
    pub gpu_temperature_celsius: Gauge<f64, AtomicU64>,
    pub gpu_power_watts: Gauge<f64, AtomicU64>,
    /// Admissions that found GPU memory above the guard's `warn` or `critical` level.
    pub gpu_memory_pressure: Family<LevelLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LevelLabels {
    pub level: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("dfastllm");
        let latency = || Histogram::new(exponential_buckets(0.001, 2.0, 18));
        let m = Self {
            requests: Family::default(),
            request_duration: latency(),
            time_to_first_token: latency(),
            time_per_output_token: Histogram::new(exponential_buckets(0.0001, 2.0, 18)),
            prompt_tokens: Counter::default(),
            generation_tokens: Counter::default(),
            requests_running: Gauge::default(),
            requests_waiting: Gauge::default(),
            requests_rejected: Family::default(),
            requests_cancelled: Counter::default(),
            forward_passes: Counter::default(),
            tokens_per_forward_pass: Histogram::new(linear_buckets(1.0, 1.0, 32)),
            batch_size: Histogram::new(linear_buckets(1.0, 1.0, 32)),
            gpu_memory_used_bytes: Gauge::default(),
            gpu_memory_total_bytes: Gauge::default(),
            http_connections: Gauge::default(),
            circuit_breaker_state: Family::default(),
            forward_pass_failures: Family::default(),
            oom_batch_halvings: Counter::default(),
            // 64 B to 16 MiB: a one-word prompt to a body at any sane limit.
            request_size_bytes: Histogram::new(exponential_buckets(64.0, 4.0, 10)),
            response_size_bytes: Histogram::new(exponential_buckets(64.0, 4.0, 10)),
            idempotent_replays: Counter::default(),
            idempotency_cache_bytes: Gauge::default(),
            idempotency_waiting: Gauge::default(),
            tool_calls: Counter::default(),
            response_format_invalid: Counter::default(),
            kv_cache_usage_ratio: Gauge::default(),
            kv_cache_budget_bytes: Gauge::default(),
            gpu_utilization_ratio: Gauge::default(),
            gpu_temperature_celsius: Gauge::default(),
            gpu_power_watts: Gauge::default(),
            gpu_memory_pressure: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "requests",
            "Requests by endpoint, model and HTTP status",
            m.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "End-to-end request latency",
            m.request_duration.clone(),
        );
        registry.register(
            "time_to_first_token_seconds",
            "Time until the first answer token is settled",
            m.time_to_first_token.clone(),
        );
        registry.register(
            "time_per_output_token_seconds",
            "Decode time per answer token after the first",
            m.time_per_output_token.clone(),
        );
        registry.register(
            "prompt_tokens",
            "Prompt tokens processed",
            m.prompt_tokens.clone(),
        );
        registry.register(
            "generation_tokens",
            "Answer tokens generated",
            m.generation_tokens.clone(),
        );
        registry.register(
            "requests_running",
            "Sequences in the running batch",
            m.requests_running.clone(),
        );
        registry.register(
            "requests_waiting",
            "Sequences waiting in the admission queue",
            m.requests_waiting.clone(),
        );
        registry.register(
            "requests_rejected",
            "Requests refused, by reason",
            m.requests_rejected.clone(),
        );
        registry.register(
            "requests_cancelled",
            "Sequences dropped because the client went away",
            m.requests_cancelled.clone(),
        );
        registry.register(
            "forward_passes",
            "Model forward passes (one per batch iteration)",
            m.forward_passes.clone(),
        );
        registry.register(
            "tokens_per_forward_pass",
            "Tokens a sequence commits per forward pass",
            m.tokens_per_forward_pass.clone(),
        );
        registry.register(
            "batch_size",
            "Sequences sharing one forward pass",
            m.batch_size.clone(),
        );
        registry.register(
            "gpu_memory_used_bytes",
            "GPU memory in use on the serving device (0 on CPU)",
            m.gpu_memory_used_bytes.clone(),
        );
        registry.register(
            "gpu_memory_total_bytes",
            "GPU memory of the serving device (0 on CPU)",
            m.gpu_memory_total_bytes.clone(),
        );
        registry.register(
            "http_connections",
            "HTTP connections open and admitted (up to --max-connections)",
            m.http_connections.clone(),
        );
        registry.register(
            "circuit_breaker_state",
            "The model's circuit breaker: 1 for its current state",
            m.circuit_breaker_state.clone(),
        );
        registry.register(
            "forward_pass_failures",
            "Forward passes that failed, by reason (oom, error)",
            m.forward_pass_failures.clone(),
        );
        registry.register(
            "oom_batch_halvings",
            "Times an out-of-memory pass was retried with the batch halved",
            m.oom_batch_halvings.clone(),
        );
        registry.register(
            "request_size_bytes",
            "Inference request body sizes",
            m.request_size_bytes.clone(),
        );
        registry.register(
            "response_size_bytes",
            "Inference response body sizes (streams: every event's bytes)",
            m.response_size_bytes.clone(),
        );
        registry.register(
            "tool_calls",
            "Tool calls read from answers into OpenAI tool_calls",
            m.tool_calls.clone(),
        );
        registry.register(
            "response_format_invalid",
            "Answers to response_format json_object whose text is not a JSON object",
            m.response_format_invalid.clone(),
        );
        registry.register(
            "idempotent_replays",
            "Requests answered with the remembered response of their Idempotency-Key",
            m.idempotent_replays.clone(),
        );
        registry.register(
            "idempotency_cache_bytes",
            "Bytes of responses remembered for Idempotency-Key repeats",
            m.idempotency_cache_bytes.clone(),
        );
        registry.register(
            "idempotency_waiting",
            "Repeats waiting for the first request with their Idempotency-Key to finish",
            m.idempotency_waiting.clone(),
        );
        registry.register(
            "kv_cache_usage_ratio",
            "KV-cache bytes the running sequences reserve over the --gpu-memory-utilization budget (0 without one)",
            m.kv_cache_usage_ratio.clone(),
        );
        registry.register(
            "kv_cache_budget_bytes",
            "The KV-cache budget left by --gpu-memory-utilization after loading (0: no budget)",
            m.kv_cache_budget_bytes.clone(),
        );
        registry.register(
            "gpu_utilization_ratio",
            "GPU busy time over NVML's last sample period, 0 to 1 (read at scrape)",
            m.gpu_utilization_ratio.clone(),
        );
        registry.register(
            "gpu_temperature_celsius",
            "GPU die temperature from NVML (read at scrape)",
            m.gpu_temperature_celsius.clone(),
        );
        registry.register(
            "gpu_power_watts",
            "GPU power draw from NVML (read at scrape)",
            m.gpu_power_watts.clone(),
        );
        registry.register(
            "gpu_memory_pressure",
            "Admissions that found GPU memory above the guard's warn or critical level",
            m.gpu_memory_pressure.clone(),
        );
        registry.register(
            "build",
            "Build information",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_string(),
                cuda: cfg!(feature = "cuda").to_string(),
            }),
        );
        Self { registry, ..m }
    }

    pub fn reject(&self, reason: &str) {
        self.requests_rejected
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_the_design_names() {
        let m = Metrics::new();
        m.requests
            .get_or_create(&RequestLabels {
                endpoint: "/v1/completions".into(),
                model: "m".into(),
                status: "200".into(),
            })
            .inc();
        m.reject("queue_full");
        m.batch_size.observe(3.0);
        let text = m.encode();
        for name in [
            "dfastllm_requests_total{endpoint=\"/v1/completions\",model=\"m\",status=\"200\"} 1",
            "dfastllm_request_duration_seconds_bucket",
            "dfastllm_time_to_first_token_seconds",
            "dfastllm_time_per_output_token_seconds",
            "dfastllm_prompt_tokens_total",
            "dfastllm_generation_tokens_total",
            "dfastllm_requests_running",
            "dfastllm_requests_waiting",
            "dfastllm_requests_rejected_total{reason=\"queue_full\"} 1",
            "dfastllm_forward_passes_total",
            "dfastllm_tokens_per_forward_pass",
            "dfastllm_batch_size_bucket{le=\"3.0\"} 1",
            "dfastllm_gpu_memory_used_bytes",
            "dfastllm_gpu_memory_total_bytes",
            "dfastllm_build_info{",
            "dfastllm_http_connections",
            "dfastllm_oom_batch_halvings_total",
            "dfastllm_request_size_bytes_bucket",
            "dfastllm_response_size_bytes_bucket",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}
