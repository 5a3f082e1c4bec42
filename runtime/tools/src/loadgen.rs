//! `dfastllm bench serve`: a load generator for any OpenAI-compatible server. For each
//! concurrency level it sends streaming requests (closed loop, or Poisson arrivals at
//! `--request-rate` capped at the level), times every chunk, and reports throughput,
//! TTFT, TPOT, ITL and end-to-end latency percentiles, errors by status, goodput against
//! SLOs and, from a dfastllm server's /metrics, batch sizes and forward passes per token.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::Semaphore;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}")]
    Invalid(String),
    #[error("{url}: {message}")]
    Server { url: String, message: String },
}

/// Which endpoint the requests go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    Completions,
    Chat,
}

impl std::str::FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "completions" | "/v1/completions" => Ok(Self::Completions),
            "chat" | "/v1/chat/completions" => Ok(Self::Chat),
            other => Err(format!(
                "unknown endpoint {other:?} (expected completions or chat)"
            )),
        }
    }
}

impl Endpoint {
    pub fn path(self) -> &'static str {
        match self {
            Self::Completions => "/v1/completions",
            Self::Chat => "/v1/chat/completions",
        }
    }
}

/// One request's input: a prompt (or chat messages) and its answer length.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    pub text: String,
    pub max_tokens: usize,
}

/// Reads `--dataset`: JSONL lines with `prompt` (or `messages`, whose contents are
/// joined) and an optional `max_tokens`.
pub fn read_dataset(path: &std::path::Path, default_max: usize) -> Result<Vec<Prompt>, LoadError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| LoadError::Invalid(format!("--dataset {}: {e}", path.display())))?;
    let mut prompts = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let bad = |m: &str| {
            LoadError::Invalid(format!("--dataset {} line {}: {m}", path.display(), i + 1))
        };
        let v: Value = serde_json::from_str(line).map_err(|e| bad(&e.to_string()))?;
        let text = match (v.get("prompt"), v.get("messages")) {
            (Some(Value::String(p)), _) => p.clone(),
            (_, Some(Value::Array(msgs))) => msgs
                .iter()
                .filter_map(|m| m.get("content").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("\n"),
            _ => return Err(bad("needs a \"prompt\" string or a \"messages\" list")),
        };
        let max_tokens = v
            .get("max_tokens")
            .and_then(Value::as_u64)
            .map_or(default_max, |m| m as usize);
        prompts.push(Prompt { text, max_tokens });
    }
    if prompts.is_empty() {
        return Err(LoadError::Invalid(format!(
            "--dataset {}: no prompts",
            path.display()
        )));
    }
    Ok(prompts)
}

/// A synthetic prompt of about `tokens` tokens: single letters separated by spaces,
/// one token each in common BPE vocabularies (two in byte-level ones). Servers report
/// the real count in `usage`, which is what the report uses.
pub fn synthetic_prompt(tokens: usize, rng: &mut ChaCha8Rng) -> String {
    (0..tokens)
        .map(|_| char::from(b'a' + rng.random_range(0..26u8)).to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

/// `count` synthetic prompts of about `tokens` tokens each, reproducible from `seed`.
pub fn synthetic_prompts(count: usize, tokens: usize, max_tokens: usize, seed: u64) -> Vec<Prompt> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..count)
        .map(|_| Prompt {
            text: synthetic_prompt(tokens, &mut rng),
            max_tokens,
        })
        .collect()
}

#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub url: String,
    pub api_key: Option<String>,
    pub model: String,
    pub endpoint: Endpoint,
    pub concurrency: Vec<usize>,
    /// Requests per level; with `duration`, keep sending until it has passed instead.
    pub requests: usize,
    pub duration: Option<Duration>,
    /// Poisson arrivals per second; `None` sends as fast as the level allows.
    pub request_rate: Option<f64>,
    pub prompts: Vec<Prompt>,
    pub slo_ttft_ms: Option<f64>,
    pub slo_tpot_ms: Option<f64>,
    /// Sends `ignore_eos` (autoregressive servers) so answers have `max_tokens` tokens.
    pub ignore_eos: bool,
    pub seed: u64,
    pub timeout: Duration,
}

/// What one request measured.
#[derive(Debug, Clone, Default)]
struct Sample {
    /// `None` on success, else the error class: an HTTP status or `connect`, `stream`.
    error: Option<String>,
    ttft_ms: f64,
    e2e_ms: f64,
    itl_ms: Vec<f64>,
    output_tokens: usize,
    prompt_tokens: usize,
}

impl Sample {
    fn tpot_ms(&self) -> Option<f64> {
        (self.output_tokens > 1)
            .then(|| (self.e2e_ms - self.ttft_ms) / (self.output_tokens - 1) as f64)
    }
}

/// Mean and percentiles of one latency, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Stats {
    pub count: usize,
    pub mean: f64,
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Stats {
    /// Nearest-rank percentiles (a percentile is always an observed value).
    pub fn of(values: &[f64]) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let rank = |p: f64| v[((p / 100.0 * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Self {
            count: v.len(),
            mean: v.iter().sum::<f64>() / v.len() as f64,
            min: v[0],
            p50: rank(50.0),
            p90: rank(90.0),
            p95: rank(95.0),
            p99: rank(99.0),
            max: v[v.len() - 1],
        }
    }
}

/// Server-side numbers from /metrics deltas over a level.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ServerStats {
    pub mean_batch_size: Option<f64>,
    pub forward_passes: Option<f64>,
    pub generation_tokens: Option<f64>,
    pub forward_passes_per_token: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LevelReport {
    pub concurrency: usize,
    pub requests: usize,
    pub successes: usize,
    pub failures: usize,
    /// Failures by class: HTTP status code, `connect` or `stream`.
    pub errors: BTreeMap<String, usize>,
    pub duration_s: f64,
    pub request_throughput: f64,
    pub output_token_throughput: f64,
    pub total_prompt_tokens: usize,
    pub total_output_tokens: usize,
    pub ttft_ms: Stats,
    pub tpot_ms: Stats,
    pub itl_ms: Stats,
    pub e2e_ms: Stats,
    /// Successful requests per second that met every given SLO (all successes when none
    /// is given).
    pub goodput: f64,
    pub slo_met: usize,
    pub server: ServerStats,
    /// Every successful request's TTFT (for the distribution plot).
    pub ttft_samples_ms: Vec<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub url: String,
    pub model: String,
    pub endpoint: Endpoint,
    pub request_rate: Option<f64>,
    pub slo_ttft_ms: Option<f64>,
    pub slo_tpot_ms: Option<f64>,
    pub levels: Vec<LevelReport>,
}

/// The first model a server lists, for when `--model` is left out.
pub async fn first_model(
    client: &reqwest::Client,
    url: &str,
    api_key: Option<&str>,
) -> Result<String, LoadError> {
    let models_url = format!("{url}/v1/models");
    let err = |message: String| LoadError::Server {
        url: models_url.clone(),
        message,
    };
    let mut req = client.get(&models_url);
    if let Some(key) = api_key {
        req = req.bearer_auth(key);
    }
    let resp = req.send().await.map_err(|e| err(e.to_string()))?;
    let status = resp.status();
    let body: Value = resp.json().await.map_err(|e| err(e.to_string()))?;
    if !status.is_success() {
        return Err(err(format!("HTTP {status}: {body}")));
    }
    body.pointer("/data/0/id")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| err("no model listed; pass --model".into()))
}

/// Counters of a dfastllm /metrics page; `None` when not reachable or not dfastllm.
async fn scrape(client: &reqwest::Client, url: &str) -> Option<BTreeMap<String, f64>> {
    let text = client
        .get(format!("{url}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let wanted = [
        "dfastllm_batch_size_sum",
        "dfastllm_batch_size_count",
        "dfastllm_forward_passes_total",
        "dfastllm_generation_tokens_total",
    ];
    let found: BTreeMap<String, f64> = text
        .lines()
        .filter_map(|l| {
            let (name, value) = l.split_once(' ')?;
            wanted
                .contains(&name)
                .then(|| Some((name.to_string(), value.trim().parse().ok()?)))?
        })
        .collect();
    (!found.is_empty()).then_some(found)
}

fn server_stats(
    before: Option<BTreeMap<String, f64>>,
    after: Option<BTreeMap<String, f64>>,
) -> ServerStats {
    let (Some(b), Some(a)) = (before, after) else {
        return ServerStats::default();
    };
    let delta = |k: &str| Some(a.get(k)? - b.get(k).copied().unwrap_or(0.0));
    let batches = delta("dfastllm_batch_size_count");
    let mean_batch_size = match (delta("dfastllm_batch_size_sum"), batches) {
        (Some(s), Some(c)) if c > 0.0 => Some(s / c),
        _ => None,
    };
    let forward_passes = delta("dfastllm_forward_passes_total");
    let generation_tokens = delta("dfastllm_generation_tokens_total");
    let forward_passes_per_token = match (forward_passes, generation_tokens) {
        (Some(p), Some(t)) if t > 0.0 => Some(p / t),
        _ => None,
    };
    ServerStats {
        mean_batch_size,
        forward_passes,
        generation_tokens,
        forward_passes_per_token,
    }
}

fn request_body(cfg: &LoadConfig, prompt: &Prompt) -> Value {
    let mut body = match cfg.endpoint {
        Endpoint::Completions => json!({"prompt": prompt.text}),
        Endpoint::Chat => json!({"messages": [{"role": "user", "content": prompt.text}]}),
    };
    body["model"] = json!(cfg.model);
    body["max_tokens"] = json!(prompt.max_tokens);
    body["temperature"] = json!(0);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    if cfg.ignore_eos {
        body["ignore_eos"] = json!(true);
    }
    body
}

/// Text a streamed chunk delivers (completions `text`, chat `delta.content`).
fn chunk_text(chunk: &Value) -> Option<&str> {
    let choice = chunk.get("choices")?.get(0)?;
    choice
        .get("text")
        .or_else(|| choice.get("delta")?.get("content"))
        .and_then(Value::as_str)
}

async fn one_request(client: &reqwest::Client, cfg: &LoadConfig, prompt: &Prompt) -> Sample {
    let start = Instant::now();
    let ms = |t: Instant| t.duration_since(start).as_secs_f64() * 1000.0;
    let mut sample = Sample::default();
    let mut req = client
        .post(format!("{}{}", cfg.url, cfg.endpoint.path()))
        .json(&request_body(cfg, prompt))
        .timeout(cfg.timeout);
    if let Some(key) = &cfg.api_key {
        req = req.bearer_auth(key);
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            sample.error = Some(if e.is_timeout() { "timeout" } else { "connect" }.into());
            return sample;
        }
    };
    if !resp.status().is_success() {
        sample.error = Some(resp.status().as_u16().to_string());
        return sample;
    }
    let mut stream = resp.bytes_stream();
    let mut buffer: Vec<u8> = Vec::new();
    let mut last_text: Option<Instant> = None;
    let mut streamed_chunks = 0usize;
    loop {
        let bytes = match stream.next().await {
            None => break,
            Some(Ok(b)) => b,
            Some(Err(e)) => {
                sample.error = Some(if e.is_timeout() { "timeout" } else { "stream" }.into());
                return sample;
            }
        };
        buffer.extend_from_slice(&bytes);
        // SSE events end with a blank line; each of ours is one `data:` line.
        while let Some(end) = buffer.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = buffer.drain(..end + 2).collect();
            let now = Instant::now();
            for line in String::from_utf8_lossy(&event).lines() {
                let Some(data) = line.strip_prefix("data:").map(str::trim) else {
                    continue;
                };
                if data == "[DONE]" {
                    continue;
                }
                let Ok(chunk) = serde_json::from_str::<Value>(data) else {
                    continue;
                };
                if chunk.get("error").is_some() {
                    sample.error = Some("stream".into());
                    return sample;
                }
                if let Some(usage) = chunk.get("usage").filter(|u| !u.is_null()) {
                    let count =
                        |k: &str| usage.get(k).and_then(Value::as_u64).unwrap_or(0) as usize;
                    sample.output_tokens = count("completion_tokens");
                    sample.prompt_tokens = count("prompt_tokens");
                }
                if chunk_text(&chunk).is_some_and(|t| !t.is_empty()) {
                    streamed_chunks += 1;
                    match last_text {
                        None => sample.ttft_ms = ms(now),
                        Some(prev) => sample
                            .itl_ms
                            .push(now.duration_since(prev).as_secs_f64() * 1000.0),
                    }
                    last_text = Some(now);
                }
            }
        }
    }
    sample.e2e_ms = ms(Instant::now());
    if last_text.is_none() {
        // An empty answer: its first (and only) byte of output is the end.
        sample.ttft_ms = sample.e2e_ms;
    }
    if sample.output_tokens == 0 {
        sample.output_tokens = streamed_chunks;
    }
    sample
}

/// Runs one concurrency level. `tick` is called once per finished request.
async fn run_level(
    client: &reqwest::Client,
    cfg: &Arc<LoadConfig>,
    concurrency: usize,
    tick: &(dyn Fn() + Sync),
) -> LevelReport {
    let before = scrape(client, &cfg.url).await;
    let slots = Arc::new(Semaphore::new(concurrency));
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ concurrency as u64);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Sample>();
    let start = Instant::now();
    let mut sent = 0usize;
    let mut samples = Vec::new();
    loop {
        let more = match cfg.duration {
            Some(d) => start.elapsed() < d,
            None => sent < cfg.requests,
        };
        if !more {
            break;
        }
        if let Some(rate) = cfg.request_rate {
            // Poisson arrivals: exponential gaps with mean 1/rate.
            let u: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
            tokio::time::sleep(Duration::from_secs_f64(-u.ln() / rate)).await;
        }
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let prompt = cfg.prompts[sent % cfg.prompts.len()].clone();
        let (client, cfg, tx) = (client.clone(), cfg.clone(), tx.clone());
        tokio::spawn(async move {
            let sample = one_request(&client, &cfg, &prompt).await;
            drop(permit);
            let _ = tx.send(sample);
        });
        sent += 1;
        // Collect finished ones as we go so the progress bar moves.
        while let Ok(s) = rx.try_recv() {
            tick();
            samples.push(s);
        }
    }
    drop(tx);
    while let Some(s) = rx.recv().await {
        tick();
        samples.push(s);
    }
    let duration_s = start.elapsed().as_secs_f64();
    let after = scrape(client, &cfg.url).await;
    summarize(
        cfg,
        concurrency,
        samples,
        duration_s,
        server_stats(before, after),
    )
}

fn summarize(
    cfg: &LoadConfig,
    concurrency: usize,
    samples: Vec<Sample>,
    duration_s: f64,
    server: ServerStats,
) -> LevelReport {
    let mut errors = BTreeMap::new();
    for e in samples.iter().filter_map(|s| s.error.as_ref()) {
        *errors.entry(e.clone()).or_insert(0) += 1;
    }
    let ok: Vec<&Sample> = samples.iter().filter(|s| s.error.is_none()).collect();
    let ttft: Vec<f64> = ok.iter().map(|s| s.ttft_ms).collect();
    let tpot: Vec<f64> = ok.iter().filter_map(|s| s.tpot_ms()).collect();
    let itl: Vec<f64> = ok.iter().flat_map(|s| s.itl_ms.iter().copied()).collect();
    let e2e: Vec<f64> = ok.iter().map(|s| s.e2e_ms).collect();
    let output: usize = ok.iter().map(|s| s.output_tokens).sum();
    let meets = |s: &&&Sample| {
        cfg.slo_ttft_ms.is_none_or(|slo| s.ttft_ms <= slo)
            && cfg
                .slo_tpot_ms
                .is_none_or(|slo| s.tpot_ms().is_none_or(|t| t <= slo))
    };
    let slo_met = ok.iter().filter(meets).count();
    let per_s = |n: f64| {
        if duration_s > 0.0 {
            n / duration_s
        } else {
            0.0
        }
    };
    LevelReport {
        concurrency,
        requests: samples.len(),
        successes: ok.len(),
        failures: samples.len() - ok.len(),
        errors,
        duration_s,
        request_throughput: per_s(ok.len() as f64),
        output_token_throughput: per_s(output as f64),
        total_prompt_tokens: ok.iter().map(|s| s.prompt_tokens).sum(),
        total_output_tokens: output,
        ttft_ms: Stats::of(&ttft),
        tpot_ms: Stats::of(&tpot),
        itl_ms: Stats::of(&itl),
        e2e_ms: Stats::of(&e2e),
        goodput: per_s(slo_met as f64),
        slo_met,
        server,
        ttft_samples_ms: ttft,
    }
}

/// Runs every level in order. `on_level` is told before each level starts (its
/// concurrency and how many requests it expects, 0 when time-bound); `tick` after each
/// request.
pub async fn run(
    cfg: LoadConfig,
    on_level: &(dyn Fn(usize, usize) + Sync),
    tick: &(dyn Fn() + Sync),
) -> Result<Report, LoadError> {
    if cfg.concurrency.is_empty() || cfg.concurrency.contains(&0) {
        return Err(LoadError::Invalid(
            "--concurrency: every level must be at least 1".into(),
        ));
    }
    if cfg.duration.is_none() && cfg.requests == 0 {
        return Err(LoadError::Invalid("--requests must be at least 1".into()));
    }
    if cfg
        .request_rate
        .is_some_and(|r| !(r > 0.0 && r.is_finite()))
    {
        return Err(LoadError::Invalid("--request-rate must be above 0".into()));
    }
    if cfg.prompts.is_empty() {
        return Err(LoadError::Invalid("no prompts to send".into()));
    }
    let client = reqwest::Client::new();
    let cfg = Arc::new(cfg);
    let mut levels = Vec::with_capacity(cfg.concurrency.len());
    for &c in &cfg.concurrency {
        on_level(
            c,
            if cfg.duration.is_some() {
                0
            } else {
                cfg.requests
            },
        );
        levels.push(run_level(&client, &cfg, c, tick).await);
    }
    Ok(Report {
        url: cfg.url.clone(),
        model: cfg.model.clone(),
        endpoint: cfg.endpoint,
        request_rate: cfg.request_rate,
        slo_ttft_ms: cfg.slo_ttft_ms,
        slo_tpot_ms: cfg.slo_tpot_ms,
        levels,
    })
}

/// The end-of-run table.
pub fn table(report: &Report) -> String {
    let mut out = format!(
        "{:>5} {:>5} {:>5} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>7}\n",
        "conc",
        "ok",
        "err",
        "req/s",
        "out tok/s",
        "TTFT p50",
        "TTFT p99",
        "TPOT p50",
        "ITL p50",
        "E2E p99",
        "goodput",
        "batch"
    );
    for l in &report.levels {
        out.push_str(&format!(
            "{:>5} {:>5} {:>5} {:>8.2} {:>9.1} {:>9.1} {:>9.1} {:>9.2} {:>9.2} {:>9.1} {:>8.2} {:>7}\n",
            l.concurrency,
            l.successes,
            l.failures,
            l.request_throughput,
            l.output_token_throughput,
            l.ttft_ms.p50,
            l.ttft_ms.p99,
            l.tpot_ms.p50,
            l.itl_ms.p50,
            l.e2e_ms.p99,
            l.goodput,
            l.server
                .mean_batch_size
                .map_or("-".to_string(), |b| format!("{b:.2}")),
        ));
    }
    out.push_str("latencies in ms; batch = mean sequences per forward pass (from /metrics)\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles_are_observed_and_ordered() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = Stats::of(&v);
        assert_eq!(
            (s.p50, s.p90, s.p95, s.p99, s.max),
            (50.0, 90.0, 95.0, 99.0, 100.0)
        );
        assert_eq!(s.mean, 50.5);
        let one = Stats::of(&[7.0]);
        assert_eq!((one.p50, one.p99, one.min), (7.0, 7.0, 7.0));
        assert_eq!(Stats::of(&[]).count, 0);
    }

    #[test]
    fn server_stats_come_from_metric_deltas() {
        let m = |sum: f64, count: f64, passes: f64, tokens: f64| {
            Some(BTreeMap::from([
                ("dfastllm_batch_size_sum".to_string(), sum),
                ("dfastllm_batch_size_count".to_string(), count),
                ("dfastllm_forward_passes_total".to_string(), passes),
                ("dfastllm_generation_tokens_total".to_string(), tokens),
            ]))
        };
        let s = server_stats(m(10.0, 5.0, 5.0, 10.0), m(40.0, 15.0, 15.0, 50.0));
        assert_eq!(s.mean_batch_size, Some(3.0));
        assert_eq!(s.forward_passes_per_token, Some(0.25));
        assert_eq!(
            server_stats(None, m(1.0, 1.0, 1.0, 1.0)),
            ServerStats::default()
        );
    }

    #[test]
    fn synthetic_prompts_have_the_asked_word_count() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        assert_eq!(synthetic_prompt(5, &mut rng).split(' ').count(), 5);
    }
}
