//! `dfastllm bench forward|generate|serve`: the timing loops live in
//! `dfastllm_tools::bench` and the load generator in `dfastllm_tools::loadgen`.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use dfastllm_core::models::DTypeChoice;
use dfastllm_core::{device, models};
use dfastllm_tools::bench::{self, ForwardBench, GenerateBench};
use dfastllm_tools::loadgen::{self, LoadConfig};

use super::{plain_http, progress_bar, ModelArgs};

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Time full forward passes of a model on fixed input (for side-by-side comparisons).
    Forward(BenchForwardArgs),
    /// Autoregressive generation throughput: a batch of prompts decoded together through
    /// the engine's path (prefill, then one token per sequence per pass, KV cache).
    Generate(BenchGenerateArgs),
    /// Load-test a running OpenAI-compatible server across concurrency levels.
    Serve(Box<BenchServeArgs>),
    /// Logits on --device/--dtype against the CPU in f32 on the same fixed input (the
    /// CPU path is the one the parity fixtures tie to transformers); exits 1 past
    /// --tolerance.
    Parity(BenchParityArgs),
}

#[derive(Args, Debug)]
pub struct BenchParityArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long, env = "DFASTLLM_BENCH_SEQ_LEN", default_value_t = 64)]
    seq_len: usize,
    /// The largest absolute logit difference accepted.
    #[arg(long, env = "DFASTLLM_BENCH_TOLERANCE", default_value_t = 1e-4)]
    tolerance: f32,
    /// Accept instead a difference up to this fraction of the largest reference logit
    /// (for bf16/f16, whose error grows with the logits' scale).
    #[arg(long, env = "DFASTLLM_BENCH_RELATIVE_TOLERANCE")]
    relative_tolerance: Option<f32>,
}

#[derive(Args, Debug)]
pub struct BenchServeArgs {
    /// Base URL of the server (without /v1).
    #[arg(
        long,
        env = "DFASTLLM_BENCH_URL",
        default_value = "http://127.0.0.1:8000"
    )]
    url: String,
    /// Bearer key for servers started with --api-keys.
    #[arg(long, env = "DFASTLLM_API_KEY")]
    api_key: Option<String>,
    /// Model name to send [default: the first one /v1/models lists].
    #[arg(long, env = "DFASTLLM_BENCH_MODEL")]
    model: Option<String>,
    /// completions or chat.
    #[arg(long, env = "DFASTLLM_BENCH_ENDPOINT", default_value = "completions")]
    endpoint: loadgen::Endpoint,
    /// Comma-separated concurrency levels, run in order.
    #[arg(
        long,
        env = "DFASTLLM_BENCH_CONCURRENCY",
        value_delimiter = ',',
        default_value = "1,2,4,8,16"
    )]
    concurrency: Vec<usize>,
    /// Requests per level.
    #[arg(
        long,
        env = "DFASTLLM_BENCH_REQUESTS",
        default_value_t = 32,
        conflicts_with = "duration"
    )]
    requests: usize,
    /// Seconds per level instead of a request count.
    #[arg(long, env = "DFASTLLM_BENCH_DURATION")]
    duration: Option<f64>,
    /// Poisson arrivals at this many requests/s (capped by the level's concurrency)
    /// [default: closed loop, a new request as soon as one finishes].
    #[arg(long, env = "DFASTLLM_BENCH_REQUEST_RATE")]
    request_rate: Option<f64>,
    /// Synthetic prompt length in words (about one token each in BPE vocabularies).
    #[arg(long, env = "DFASTLLM_BENCH_PROMPT_TOKENS", default_value_t = 32)]
    prompt_tokens: usize,
    /// max_tokens of each request.
    #[arg(long, env = "DFASTLLM_BENCH_OUTPUT_TOKENS", default_value_t = 32)]
    output_tokens: usize,
    /// JSONL prompts ({"prompt"} or {"messages"}, optional "max_tokens") instead of synthetic ones.
    #[arg(long, env = "DFASTLLM_BENCH_DATASET")]
    dataset: Option<PathBuf>,
    /// Send ignore_eos so answers run to max_tokens (autoregressive servers only).
    #[arg(long, env = "DFASTLLM_BENCH_IGNORE_EOS")]
    ignore_eos: bool,
    /// SLO on time to first token, ms (for goodput).
    #[arg(long, env = "DFASTLLM_BENCH_SLO_TTFT")]
    slo_ttft: Option<f64>,
    /// SLO on time per output token, ms (for goodput).
    #[arg(long, env = "DFASTLLM_BENCH_SLO_TPOT")]
    slo_tpot: Option<f64>,
    /// Write the full report as JSON here.
    #[arg(long, env = "DFASTLLM_BENCH_OUT")]
    out: Option<PathBuf>,
    /// Write throughput.png, latency.png and ttft.png here.
    #[arg(long, env = "DFASTLLM_BENCH_PLOT_DIR")]
    plot_dir: Option<PathBuf>,
    #[arg(long, env = "DFASTLLM_BENCH_SEED", default_value_t = 0)]
    seed: u64,
    /// Per-request timeout.
    #[arg(long, env = "DFASTLLM_BENCH_TIMEOUT_SECONDS", default_value_t = 600)]
    timeout_seconds: u64,
}

#[derive(Args, Debug)]
pub struct BenchGenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Sequences decoded together.
    #[arg(long, env = "DFASTLLM_BENCH_BATCH", default_value_t = 1)]
    batch: usize,
    /// Prompt tokens per sequence.
    #[arg(long, env = "DFASTLLM_BENCH_PROMPT_LEN", default_value_t = 32)]
    prompt_len: usize,
    /// Tokens generated per sequence (EOS ignored, so every run generates this many).
    #[arg(long, env = "DFASTLLM_BENCH_MAX_TOKENS", default_value_t = 32)]
    max_tokens: usize,
    /// Timed runs after one warm-up; the median is reported.
    #[arg(long, env = "DFASTLLM_BENCH_REPEAT", default_value_t = 3)]
    repeat: usize,
}

#[derive(Args, Debug)]
pub struct BenchForwardArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long, env = "DFASTLLM_BENCH_BATCH", default_value_t = 1)]
    batch: usize,
    #[arg(long, env = "DFASTLLM_BENCH_SEQ_LEN", default_value_t = 64)]
    seq_len: usize,
    #[arg(long, env = "DFASTLLM_BENCH_ITERS", default_value_t = 20)]
    iters: usize,
}

pub fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Forward(args) => forward(args),
        BenchCommand::Generate(args) => generate(args),
        BenchCommand::Serve(args) => serve(*args),
        BenchCommand::Parity(args) => parity(args),
    }
}

fn parity(args: BenchParityArgs) -> anyhow::Result<()> {
    if args.seq_len == 0 {
        bail!("--seq-len must be at least 1");
    }
    let usable = |t: f32| t.is_finite() && t >= 0.0;
    if !usable(args.tolerance) || args.relative_tolerance.is_some_and(|r| !usable(r)) {
        bail!("--tolerance and --relative-tolerance must be numbers of at least 0");
    }
    let device = device::select(args.model.device)?;
    let on_device = models::load(&args.model.dir, &device, args.model.dtype)?;
    let cpu = device::select(device::DeviceChoice::Cpu)?;
    let reference = models::load(&args.model.dir, &cpu, DTypeChoice::F32)?;
    let report = bench::device_parity(&on_device, &device, &reference, args.seq_len)?;
    println!("{report}");
    let diff = report["max_abs_diff"].as_f64().unwrap_or(f64::INFINITY);
    let scale = report["max_abs_logit"].as_f64().unwrap_or(0.0);
    let (limit, flag) = match args.relative_tolerance {
        Some(r) => (f64::from(r) * scale, "--relative-tolerance"),
        None => (f64::from(args.tolerance), "--tolerance"),
    };
    if report["finite"] != true || diff > limit {
        bail!("logits differ by {diff} (more than {limit} allowed by {flag}) or are not finite");
    }
    Ok(())
}

fn generate(args: BenchGenerateArgs) -> anyhow::Result<()> {
    if args.batch == 0 || args.prompt_len == 0 || args.max_tokens == 0 || args.repeat == 0 {
        bail!("--batch, --prompt-len, --max-tokens and --repeat must be at least 1");
    }
    let device = device::select(args.model.device)?;
    let loaded = models::load(&args.model.dir, &device, args.model.dtype)?;
    let sizes = GenerateBench {
        batch: args.batch,
        prompt_len: args.prompt_len,
        max_tokens: args.max_tokens,
        repeat: args.repeat,
    };
    let report = bench::generate(&loaded, &device, sizes).map_err(|e| match e {
        bench::BenchError::NotAutoregressive(_) => anyhow::anyhow!("--model: {e}"),
        other => other.into(),
    })?;
    println!("{report}");
    Ok(())
}

fn forward(args: BenchForwardArgs) -> anyhow::Result<()> {
    if args.batch == 0 || args.seq_len == 0 || args.iters == 0 {
        bail!("--batch, --seq-len and --iters must be at least 1");
    }
    let device = device::select(args.model.device)?;
    let loaded = models::load(&args.model.dir, &device, args.model.dtype)?;
    let sizes = ForwardBench {
        batch: args.batch,
        seq_len: args.seq_len,
        iters: args.iters,
    };
    println!("{}", bench::forward(&loaded, &device, sizes)?);
    Ok(())
}

fn serve(args: BenchServeArgs) -> anyhow::Result<()> {
    let url = plain_http("--url", &args.url)?;
    let prompts = match &args.dataset {
        Some(path) => loadgen::read_dataset(path, args.output_tokens)?,
        None => loadgen::synthetic_prompts(64, args.prompt_tokens, args.output_tokens, args.seed),
    };
    let report = super::tokio_runtime()?.block_on(async {
        let model = match &args.model {
            Some(m) => m.clone(),
            None => {
                loadgen::first_model(&reqwest::Client::new(), &url, args.api_key.as_deref()).await?
            }
        };
        let cfg = LoadConfig {
            url: url.clone(),
            api_key: args.api_key.clone(),
            model,
            endpoint: args.endpoint,
            concurrency: args.concurrency.clone(),
            requests: args.requests,
            duration: args.duration.map(Duration::from_secs_f64),
            request_rate: args.request_rate,
            prompts,
            slo_ttft_ms: args.slo_ttft,
            slo_tpot_ms: args.slo_tpot,
            ignore_eos: args.ignore_eos,
            seed: args.seed,
            timeout: Duration::from_secs(args.timeout_seconds),
        };
        let bar = Mutex::new(None::<indicatif::ProgressBar>);
        let finish = |b: &mut Option<indicatif::ProgressBar>| {
            if let Some(old) = b.take() {
                old.finish();
            }
        };
        let on_level = |c: usize, n: usize| {
            if let Ok(mut b) = bar.lock() {
                finish(&mut b);
                *b = Some(progress_bar(n, format!("concurrency {c:>3}")));
            }
        };
        let tick = || {
            if let Ok(b) = bar.lock() {
                if let Some(b) = b.as_ref() {
                    b.inc(1);
                }
            }
        };
        let report = loadgen::run(cfg, &on_level, &tick).await;
        if let Ok(mut b) = bar.lock() {
            finish(&mut b);
        }
        anyhow::Ok(report?)
    })?;
    print!("{}", loadgen::table(&report));
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("--out {}", out.display()))?;
        eprintln!("wrote {}", out.display());
    }
    if let Some(dir) = &args.plot_dir {
        for path in dfastllm_tools::plot::write_plots(&report, dir)? {
            eprintln!("wrote {}", path.display());
        }
    }
    Ok(())
}
