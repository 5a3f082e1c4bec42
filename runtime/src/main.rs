//! The `dfastllm` command line: `serve`, `generate`, `demo-model`, `bench`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use dfastllm::config::{FileConfig, Overrides, RuntimeConfig};
use dfastllm::decoding::{
    autoregressive, ArParams, ArSequence, DecodeError, DiffusionParams, KvCacheMode, Mor, Parallel,
    Remasking,
};
use dfastllm::demo::{write_demo_model, DemoDType, DemoSpec};
use dfastllm::device::{self, DeviceChoice};
use dfastllm::engine::{engine, EngineConfig, Scheduler};
use dfastllm::generation::{GenerationError, Generator, Prompt};
use dfastllm::metrics::Metrics;
use dfastllm::models::causal::CausalCache;
use dfastllm::models::{self, Architecture, Batch, DTypeChoice, Network};
use dfastllm::server::{serve, AppState, ModelInfo};
use dfastllm::tokenizer::ChatMessage;

#[derive(Parser, Debug)]
#[command(
    name = "dfastllm",
    version,
    about = "Serve and run diffusion language models"
)]
struct Cli {
    /// CPU threads for tensor kernels [default: every core]. Tiny models run faster on
    /// fewer threads, where dispatch costs more than the arithmetic.
    #[arg(long, global = true, env = "DFASTLLM_THREADS")]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the OpenAI-compatible API (/v1/completions, /v1/chat/completions, ...).
    Serve(Box<ServeArgs>),
    /// Generate one answer from a prompt and print it.
    Generate(GenerateArgs),
    /// Exact-match accuracy and cost of decoding strategies on a JSONL eval set.
    Eval(EvalArgs),
    /// Write a tiny checkpoint with RANDOM weights in a real upstream layout.
    DemoModel(DemoModelArgs),
    /// Measure the runtime.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Run an OpenAI Batch API file (resumable) against a model or a server.
    Batch(BatchArgs),
}

#[derive(Args, Debug)]
struct ModelArgs {
    /// Model directory in Hugging Face layout (config.json, *.safetensors, tokenizer.json).
    #[arg(long, env = "DFASTLLM_MODEL")]
    model: PathBuf,
    /// auto (CUDA when built with it and a GPU answers, else CPU), cpu, cuda, cuda:N.
    #[arg(long, env = "DFASTLLM_DEVICE", default_value = "auto")]
    device: DeviceChoice,
    /// auto (config.json's torch_dtype on GPU, f32 on CPU), f32, f16, bf16.
    #[arg(long, env = "DFASTLLM_DTYPE", default_value = "auto")]
    dtype: DTypeChoice,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["prompt", "prompt_ids"])))]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt text.
    #[arg(long, env = "DFASTLLM_PROMPT")]
    prompt: Option<String>,
    /// Prompt as comma-separated token ids, bypassing the tokenizer.
    #[arg(long, env = "DFASTLLM_PROMPT_IDS", value_delimiter = ',')]
    prompt_ids: Option<Vec<u32>>,
    /// Wrap the prompt as a user message in the model's chat template.
    #[arg(long, env = "DFASTLLM_CHAT")]
    chat: bool,
    /// Answer length in tokens (the diffusion gen length).
    #[arg(long, env = "DFASTLLM_MAX_TOKENS", default_value_t = 64)]
    max_tokens: usize,
    /// Denoising steps over the whole answer [default: max-tokens, one token per step].
    #[arg(long, env = "DFASTLLM_STEPS")]
    steps: Option<usize>,
    /// Block length [default: 32 when it divides max-tokens, else max-tokens].
    #[arg(long, env = "DFASTLLM_BLOCK_LENGTH")]
    block_length: Option<usize>,
    /// low_confidence, random, entropy or margin.
    #[arg(long, env = "DFASTLLM_REMASKING", default_value = "low_confidence")]
    remasking: Remasking,
    /// 0 is greedy (argmax); above 0 samples.
    #[arg(long, env = "DFASTLLM_TEMPERATURE", default_value_t = 0.0)]
    temperature: f32,
    /// Seed for sampling and random remasking.
    #[arg(long, env = "DFASTLLM_SEED")]
    seed: Option<u64>,
    /// Nucleus sampling threshold, in (0, 1].
    #[arg(long, env = "DFASTLLM_TOP_P", default_value_t = 1.0)]
    top_p: f32,
    /// Autoregressive models: sample among the k most likely tokens (0 is off).
    #[arg(long, env = "DFASTLLM_TOP_K", default_value_t = 0)]
    top_k: usize,
    #[command(flatten)]
    fast: FastArgs,
    /// Print one JSON object instead of the text.
    #[arg(long, env = "DFASTLLM_JSON")]
    json: bool,
}

#[derive(Args, Debug)]
struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// JSONL file of {"prompt", "answer"[, "kind"]} lines.
    #[arg(long, env = "DFASTLLM_EVAL_DATA")]
    data: PathBuf,
    /// Comma-separated: baseline (one token per step), threshold, factor, verifier
    /// (needs --apd-verifier; runs without KV cache), mor (baseline + MoR),
    /// threshold+mor, factor+mor.
    #[arg(
        long,
        env = "DFASTLLM_EVAL_STRATEGIES",
        value_delimiter = ',',
        default_value = "baseline,threshold,factor"
    )]
    strategies: Vec<String>,
    /// Comma-separated KV cache modes; every strategy runs under each.
    #[arg(
        long,
        env = "DFASTLLM_EVAL_KV_CACHE",
        value_delimiter = ',',
        default_value = "none,dual"
    )]
    kv_cache: Vec<KvCacheMode>,
    /// Answer region in tokens.
    #[arg(long, env = "DFASTLLM_EVAL_GEN_LENGTH", default_value_t = 32)]
    gen_length: usize,
    #[arg(long, env = "DFASTLLM_EVAL_BLOCK_LENGTH", default_value_t = 8)]
    block_length: usize,
    /// Sequences decoded together.
    #[arg(long, env = "DFASTLLM_EVAL_BATCH", default_value_t = 1)]
    batch: usize,
    /// Stop each answer once its EOS is settled (the server's behaviour). Off by
    /// default: the reference protocol decodes the whole answer region.
    #[arg(long, env = "DFASTLLM_EVAL_STOP_AT_EOS")]
    stop_at_eos: bool,
    /// Only the first N examples.
    #[arg(long, env = "DFASTLLM_EVAL_LIMIT")]
    limit: Option<usize>,
    #[arg(long, env = "DFASTLLM_APD_THRESHOLD", default_value_t = 0.9)]
    apd_threshold: f32,
    #[arg(long, env = "DFASTLLM_APD_FACTOR", default_value_t = 1.0)]
    apd_factor: f32,
    #[arg(long, env = "DFASTLLM_APD_MAX_PARALLEL", default_value_t = 16)]
    apd_max_parallel: usize,
    #[arg(long, env = "DFASTLLM_MOR_MIN_RECURSIONS", default_value_t = 0)]
    mor_min_recursions: usize,
    #[arg(long, env = "DFASTLLM_MOR_MAX_RECURSIONS", default_value_t = 2)]
    mor_max_recursions: usize,
    #[arg(long, env = "DFASTLLM_MOR_THRESHOLD", default_value_t = 0.7)]
    mor_threshold: f32,
    /// Autoregressive Llama checkpoint with the same tokenizer, for the `verifier`
    /// strategy (e.g. models/dfastllm-tiny-ar).
    #[arg(long, env = "DFASTLLM_APD_VERIFIER")]
    apd_verifier: Option<PathBuf>,
    /// The verifier's mixture weight R of the diffusion model (p_dLLM^R * p_AR^(1-R)).
    #[arg(long, env = "DFASTLLM_APD_MIX", default_value_t = 0.7)]
    apd_mix: f32,
    /// Positions the diffusion model drafts per step for the verifier.
    #[arg(long, env = "DFASTLLM_APD_MAX_LOOKAHEAD", default_value_t = 8)]
    apd_max_lookahead: usize,
    /// Print JSON instead of the table.
    #[arg(long, env = "DFASTLLM_JSON")]
    json: bool,
}

/// APD's commit rule, as a flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ApdMode {
    Off,
    Threshold,
    Factor,
}

/// The fast-decoding knobs (docs/decoding.md), shared by `serve` and `generate`.
#[derive(Args, Debug, Clone, Default)]
struct FastArgs {
    /// Adaptive parallel decoding: off, threshold or factor [default: the config file's
    /// decoding.apd, else off].
    #[arg(long, env = "DFASTLLM_APD")]
    apd: Option<ApdMode>,
    /// Commit every position at least this confident (--apd threshold) [default: 0.9].
    #[arg(long, env = "DFASTLLM_APD_THRESHOLD")]
    apd_threshold: Option<f32>,
    /// Fast-dLLM's factor f (--apd factor) [default: 1.0].
    #[arg(long, env = "DFASTLLM_APD_FACTOR")]
    apd_factor: Option<f32>,
    /// At most this many positions per step under APD [default: 16].
    #[arg(long, env = "DFASTLLM_APD_MAX_PARALLEL")]
    apd_max_parallel: Option<usize>,
    /// none, prefix or dual (Fast-dLLM's KV cache) [default: the config file's, else none].
    #[arg(long, env = "DFASTLLM_KV_CACHE")]
    kv_cache: Option<KvCacheMode>,
    /// Mixture of recursions: refine filled blocks' low-confidence tokens.
    #[arg(long, env = "DFASTLLM_MOR")]
    mor: bool,
    #[arg(long, env = "DFASTLLM_MOR_MIN_RECURSIONS", default_value_t = 0)]
    mor_min_recursions: usize,
    #[arg(long, env = "DFASTLLM_MOR_MAX_RECURSIONS", default_value_t = 2)]
    mor_max_recursions: usize,
    /// Re-mask tokens committed below this confidence [default: 0.7].
    #[arg(long, env = "DFASTLLM_MOR_THRESHOLD", default_value_t = 0.7)]
    mor_threshold: f32,
}

impl FastArgs {
    /// The commit rule the flags select; `None` when --apd was not given.
    fn parallel(&self) -> Option<Parallel> {
        let max_parallel = self.apd_max_parallel.unwrap_or(16);
        self.apd.map(|mode| match mode {
            ApdMode::Off => Parallel::Schedule,
            ApdMode::Threshold => Parallel::Threshold {
                threshold: self.apd_threshold.unwrap_or(0.9),
                max_parallel,
            },
            ApdMode::Factor => Parallel::Factor {
                factor: self.apd_factor.unwrap_or(1.0),
                max_parallel,
            },
        })
    }

    fn mor(&self) -> Option<Mor> {
        self.mor.then_some(Mor {
            min_recursions: self.mor_min_recursions,
            max_recursions: self.mor_max_recursions,
            confidence_threshold: self.mor_threshold,
        })
    }
}

#[derive(Args, Debug)]
struct DemoModelArgs {
    /// llada, dream (diffusion) or llama, qwen2, phi, gpt2 (autoregressive).
    #[arg(long, env = "DFASTLLM_DEMO_ARCH")]
    arch: Architecture,
    /// Output directory (created if missing).
    #[arg(long, env = "DFASTLLM_DEMO_OUT")]
    out: PathBuf,
    #[arg(long, env = "DFASTLLM_DEMO_LAYERS", default_value_t = 2)]
    layers: usize,
    #[arg(long, env = "DFASTLLM_DEMO_HIDDEN", default_value_t = 64)]
    hidden: usize,
    #[arg(long, env = "DFASTLLM_DEMO_HEADS", default_value_t = 4)]
    heads: usize,
    /// Key/value heads [default: heads for llada, heads/2 for dream].
    #[arg(long, env = "DFASTLLM_DEMO_KV_HEADS")]
    kv_heads: Option<usize>,
    /// MLP width [default: 2 x hidden].
    #[arg(long, env = "DFASTLLM_DEMO_INTERMEDIATE")]
    intermediate: Option<usize>,
    /// Vocabulary size: 256 byte tokens, the special tokens, then unused rows.
    #[arg(long, env = "DFASTLLM_DEMO_VOCAB", default_value_t = 320)]
    vocab: usize,
    #[arg(long, env = "DFASTLLM_DEMO_SEED", default_value_t = 0)]
    seed: u64,
    /// f32, f16 or bf16.
    #[arg(long, env = "DFASTLLM_DEMO_DTYPE", default_value = "f32")]
    dtype: DemoDType,
    /// Split the weights over this many safetensors files (with an index).
    #[arg(long, env = "DFASTLLM_DEMO_SHARDS", default_value_t = 1)]
    shards: usize,
    #[arg(long, env = "DFASTLLM_DEMO_MAX_CONTEXT", default_value_t = 1024)]
    max_context: usize,
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// runtime.toml (the operator's ConfigMap); flags and DFASTLLM_* env override it.
    #[arg(long, env = "DFASTLLM_CONFIG")]
    config: Option<PathBuf>,
    /// Model directory [default: /mnt/models].
    #[arg(long, env = "DFASTLLM_MODEL")]
    model: Option<PathBuf>,
    /// Name clients use in `model` [default: the model directory's name].
    #[arg(long, env = "DFASTLLM_SERVED_NAME")]
    served_name: Option<String>,
    /// Extra accepted model names, comma-separated.
    #[arg(long, env = "DFASTLLM_ALIASES", value_delimiter = ',')]
    aliases: Option<Vec<String>>,
    /// auto, cpu, cuda, cuda:N [default: auto].
    #[arg(long, env = "DFASTLLM_DEVICE")]
    device: Option<String>,
    /// auto, f32, f16, bf16 [default: auto].
    #[arg(long, env = "DFASTLLM_DTYPE")]
    dtype: Option<String>,
    /// The architecture the checkpoint must be: auto (whatever config.json says), llada,
    /// dream, llama, qwen2, phi, gpt2 [default: auto].
    #[arg(long, env = "DFASTLLM_ARCHITECTURE")]
    architecture: Option<String>,
    /// [default: 0.0.0.0]
    #[arg(long, env = "DFASTLLM_HOST")]
    host: Option<String>,
    /// [default: 8000; 0 picks a free port]
    #[arg(long, env = "DFASTLLM_PORT")]
    port: Option<u16>,
    /// Sequences per forward pass [default: 16].
    #[arg(long, env = "DFASTLLM_MAX_CONCURRENT_REQUESTS")]
    max_concurrent_requests: Option<usize>,
    /// Waiting sequences before 429 [default: 256].
    #[arg(long, env = "DFASTLLM_MAX_QUEUE")]
    max_queue: Option<usize>,
    /// [default: 300]
    #[arg(long, env = "DFASTLLM_REQUEST_TIMEOUT_SECONDS")]
    request_timeout_seconds: Option<u64>,
    /// How long SIGTERM waits for in-flight requests [default: 30].
    #[arg(long, env = "DFASTLLM_SHUTDOWN_GRACE_SECONDS")]
    shutdown_grace_seconds: Option<u64>,
    /// Request body limit [default: 1048576].
    #[arg(long, env = "DFASTLLM_MAX_BODY_BYTES")]
    max_body_bytes: Option<usize>,
    /// Accepted API keys, comma-separated (off when none is given).
    #[arg(
        long,
        env = "DFASTLLM_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    api_keys: Option<Vec<String>>,
    /// File of API keys, one per line.
    #[arg(long, env = "DFASTLLM_API_KEYS_FILE")]
    api_keys_file: Option<PathBuf>,
    /// Requests per minute per API key (or client address); 0 = unlimited [default: 0].
    #[arg(long, env = "DFASTLLM_RATE_LIMIT_RPM")]
    rate_limit_rpm: Option<u32>,
    /// Wait this long for more requests before starting a new batch [default: 0].
    #[arg(long, env = "DFASTLLM_BATCH_WAIT_MS")]
    batch_wait_ms: Option<u64>,
    /// Default max_tokens (diffusion gen length) [default: 64].
    #[arg(long, env = "DFASTLLM_MAX_TOKENS")]
    max_tokens: Option<usize>,
    /// Default steps for an answer of max-tokens tokens [default: one per token].
    #[arg(long, env = "DFASTLLM_STEPS")]
    steps: Option<usize>,
    /// Default block length [default: 32 when it divides the answer].
    #[arg(long, env = "DFASTLLM_BLOCK_LENGTH")]
    block_length: Option<usize>,
    /// Default remasking [default: low_confidence].
    #[arg(long, env = "DFASTLLM_REMASKING")]
    remasking: Option<Remasking>,
    /// Default temperature [default: 0].
    #[arg(long, env = "DFASTLLM_TEMPERATURE")]
    temperature: Option<f32>,
    #[command(flatten)]
    fast: FastArgs,
    /// json (one object per line) or text.
    #[arg(long, env = "DFASTLLM_LOG_FORMAT", default_value = "json")]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

impl ServeArgs {
    fn overrides(&self) -> Overrides {
        Overrides {
            model_path: self.model.clone(),
            architecture: self.architecture.clone(),
            served_name: self.served_name.clone(),
            aliases: self.aliases.clone(),
            device: self.device.clone(),
            dtype: self.dtype.clone(),
            host: self.host.clone(),
            port: self.port,
            max_concurrent_requests: self.max_concurrent_requests,
            max_queue: self.max_queue,
            request_timeout_seconds: self.request_timeout_seconds,
            shutdown_grace_seconds: self.shutdown_grace_seconds,
            max_body_bytes: self.max_body_bytes,
            api_keys: self.api_keys.clone(),
            api_keys_file: self.api_keys_file.clone(),
            rate_limit_requests_per_minute: self.rate_limit_rpm,
            batch_wait_ms: self.batch_wait_ms,
            gen_length: self.max_tokens,
            steps: self.steps,
            block_length: self.block_length,
            remasking: self.remasking,
            temperature: self.temperature,
            parallel: self.fast.parallel(),
            mor: self.fast.mor(),
            kv_cache: self.fast.kv_cache,
        }
    }
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Time full forward passes of a model on fixed input (for side-by-side comparisons).
    Forward(BenchForwardArgs),
    /// Autoregressive generation throughput: a batch of prompts decoded together through
    /// the engine's path (prefill, then one token per sequence per pass, KV cache).
    Generate(BenchGenerateArgs),
    /// Load-test a running OpenAI-compatible server across concurrency levels.
    Serve(Box<BenchServeArgs>),
}

#[derive(Args, Debug)]
struct BenchServeArgs {
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
    endpoint: dfastllm::loadgen::Endpoint,
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
struct BatchArgs {
    /// OpenAI Batch input: JSONL of {"custom_id", "method", "url", "body"}.
    #[arg(long, env = "DFASTLLM_BATCH_INPUT")]
    input: PathBuf,
    /// Results, appended; a rerun skips custom_ids already here.
    #[arg(long, env = "DFASTLLM_BATCH_OUTPUT")]
    output: PathBuf,
    /// Run the model in this process (a loopback server on this checkpoint)...
    #[arg(
        long,
        env = "DFASTLLM_MODEL",
        conflicts_with = "url",
        required_unless_present = "url"
    )]
    model: Option<PathBuf>,
    /// ...or send the requests to this server (base URL, without /v1).
    #[arg(long, env = "DFASTLLM_BATCH_URL")]
    url: Option<String>,
    /// Bearer key for --url servers started with --api-keys.
    #[arg(long, env = "DFASTLLM_API_KEY")]
    api_key: Option<String>,
    /// Requests in flight at once.
    #[arg(long, env = "DFASTLLM_BATCH_CONCURRENCY", default_value_t = 8)]
    concurrency: usize,
    /// Completion window, e.g. 24h: reports whether the whole input fits it at the
    /// throughput this run measured, and the margin.
    #[arg(long, env = "DFASTLLM_BATCH_SLA")]
    sla: Option<String>,
    /// Per-request timeout.
    #[arg(long, env = "DFASTLLM_BATCH_TIMEOUT_SECONDS", default_value_t = 600)]
    timeout_seconds: u64,
    /// With --model: auto, cpu, cuda, cuda:N.
    #[arg(long, env = "DFASTLLM_DEVICE", default_value = "auto")]
    device: String,
    /// With --model: auto, f32, f16, bf16.
    #[arg(long, env = "DFASTLLM_DTYPE", default_value = "auto")]
    dtype: String,
}

#[derive(Args, Debug)]
struct BenchGenerateArgs {
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
struct BenchForwardArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long, env = "DFASTLLM_BENCH_BATCH", default_value_t = 1)]
    batch: usize,
    #[arg(long, env = "DFASTLLM_BENCH_SEQ_LEN", default_value_t = 64)]
    seq_len: usize,
    #[arg(long, env = "DFASTLLM_BENCH_ITERS", default_value_t = 20)]
    iters: usize,
}

/// Names the CLI flag behind an API parameter in validation errors.
fn flag_of(param: &str) -> String {
    let flag = match param {
        "mor.confidence_threshold" => "mor-threshold".to_string(),
        other => other.replace(['_', '.'], "-"),
    };
    format!("--{flag}")
}

fn eval_configs(args: &EvalArgs) -> anyhow::Result<Vec<dfastllm::eval::Config>> {
    let base = DiffusionParams {
        block_length: args.block_length,
        stop_at_eos: args.stop_at_eos,
        seed: Some(0),
        ..DiffusionParams::with_defaults(args.gen_length)
    };
    let mor = Mor {
        min_recursions: args.mor_min_recursions,
        max_recursions: args.mor_max_recursions,
        confidence_threshold: args.mor_threshold,
    };
    let mut configs = Vec::new();
    for &kv_cache in &args.kv_cache {
        for name in &args.strategies {
            let (rule, with_mor) = match name.split_once('+') {
                Some((rule, "mor")) => (rule, true),
                Some(_) => bail!("--strategies: {name:?} (a combination is RULE+mor)"),
                None if name == "mor" => ("baseline", true),
                None => (name.as_str(), false),
            };
            let parallel = match rule {
                "baseline" => Parallel::Schedule,
                "threshold" => Parallel::Threshold {
                    threshold: args.apd_threshold,
                    max_parallel: args.apd_max_parallel,
                },
                "factor" => Parallel::Factor {
                    factor: args.apd_factor,
                    max_parallel: args.apd_max_parallel,
                },
                "verifier" => {
                    if args.apd_verifier.is_none() {
                        bail!("--strategies: verifier needs --apd-verifier DIR (an autoregressive model with the same tokenizer)");
                    }
                    if kv_cache != KvCacheMode::None {
                        // The verifier path has no KV cache: one row, not one per mode.
                        continue;
                    }
                    Parallel::Verifier {
                        mix: args.apd_mix,
                        max_lookahead: args.apd_max_lookahead,
                    }
                }
                other => bail!(
                    "--strategies: unknown {other:?} (expected baseline, threshold, factor, verifier, mor, or RULE+mor)"
                ),
            };
            configs.push(dfastllm::eval::Config {
                name: format!("{name}/{kv_cache}"),
                params: DiffusionParams {
                    parallel,
                    mor: with_mor.then_some(mor),
                    kv_cache,
                    ..base.clone()
                },
            });
        }
    }
    if configs.is_empty() {
        bail!("--strategies and --kv-cache select no configuration");
    }
    Ok(configs)
}

fn run_eval(args: EvalArgs) -> anyhow::Result<()> {
    let configs = eval_configs(&args)?;
    let device = device::select(args.model.device)?;
    let generator = Generator::load(&args.model.model, &device, args.model.dtype)?;
    let mut examples =
        dfastllm::eval::read_examples(&args.data).map_err(|e| anyhow::anyhow!("--data: {e}"))?;
    if let Some(n) = args.limit {
        examples.truncate(n);
    }
    let verifier = match &args.apd_verifier {
        Some(dir) => Some(
            models::load_causal(dir, &device, generator.model.dtype)
                .map_err(|e| anyhow::anyhow!("--apd-verifier: {e}"))?,
        ),
        None => None,
    };
    let rows = match dfastllm::eval::run(
        &generator,
        &examples,
        &configs,
        args.batch,
        verifier.as_ref(),
    ) {
        Err(dfastllm::eval::EvalError::Generation(GenerationError::Decode(
            DecodeError::InvalidParam { param, message },
        ))) => bail!("{}: {message}", flag_of(param)),
        other => other?,
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "model": args.model.model,
                "data": args.data,
                "gen_length": args.gen_length,
                "block_length": args.block_length,
                "batch": args.batch,
                "stop_at_eos": args.stop_at_eos,
                "rows": rows,
            }))?
        );
    } else {
        println!(
            "{} examples from {}, answer region {} tokens in blocks of {}, batch {}, stop at EOS: {}",
            examples.len(),
            args.data.display(),
            args.gen_length,
            args.block_length,
            args.batch,
            args.stop_at_eos
        );
        print!("{}", dfastllm::eval::table(&rows));
    }
    Ok(())
}

fn run_generate(args: GenerateArgs) -> anyhow::Result<()> {
    let device = device::select(args.model.device)?;
    let generator = Generator::load(&args.model.model, &device, args.model.dtype)?;
    let prompt = match (args.prompt, args.prompt_ids) {
        (Some(text), _) if args.chat => Prompt::Chat(vec![ChatMessage::new("user", &text)]),
        (Some(text), _) => Prompt::Text(text),
        (None, Some(ids)) => Prompt::TokenIds(ids),
        (None, None) => bail!("one of --prompt or --prompt-ids is required"),
    };
    let defaults = DiffusionParams::with_defaults(args.max_tokens);
    let params = DiffusionParams {
        steps: args.steps.unwrap_or(defaults.steps),
        block_length: args.block_length.unwrap_or(defaults.block_length),
        remasking: args.remasking,
        temperature: args.temperature,
        top_p: args.top_p,
        seed: args.seed,
        parallel: args.fast.parallel().unwrap_or_default(),
        mor: args.fast.mor(),
        kv_cache: args.fast.kv_cache.unwrap_or_default(),
        ..defaults
    };
    let ar = ArParams {
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: args.top_k,
        seed: args.seed,
        ..ArParams::greedy(args.max_tokens)
    };
    if args.top_k > 0 && generator.model.architecture.is_diffusion() {
        bail!("--top-k: only autoregressive models sample with top-k");
    }
    let output = match generator.generate(&prompt, params, ar) {
        Err(GenerationError::Decode(DecodeError::InvalidParam { param, message })) => {
            bail!("{}: {message}", flag_of(param))
        }
        other => other?,
    };
    if generator.model.is_demo {
        eprintln!(
            "note: {} holds random demo weights (dfastllm demo-model): its text is noise",
            args.model.model.display()
        );
    }
    if args.json {
        println!("{}", serde_json::to_string(&output)?);
    } else {
        println!("{}", output.text);
    }
    Ok(())
}

fn run_demo_model(args: DemoModelArgs) -> anyhow::Result<()> {
    let spec = DemoSpec {
        arch: args.arch,
        layers: args.layers,
        hidden: args.hidden,
        heads: args.heads,
        kv_heads: args.kv_heads,
        intermediate: args.intermediate,
        vocab: args.vocab,
        seed: args.seed,
        dtype: args.dtype,
        shards: args.shards,
        max_context: args.max_context,
    };
    write_demo_model(&spec, &args.out)?;
    eprintln!(
        "wrote a {} checkpoint with RANDOM weights to {} (for tests and demos only)",
        spec.arch,
        args.out.display()
    );
    Ok(())
}

/// A base URL the built-in client can reach: http only (the build carries no TLS stack;
/// in-cluster Services and port-forwards are plain HTTP), without a trailing slash.
fn plain_http(flag: &str, url: &str) -> anyhow::Result<String> {
    let url = url.trim_end_matches('/');
    if !url.starts_with("http://") {
        bail!(
            "{flag}: {url:?} must start with http:// (https is not supported; use the in-cluster Service or kubectl port-forward)"
        );
    }
    Ok(url.to_string())
}

/// A progress bar on stderr (drawn only when stderr is a terminal).
fn progress_bar(len: usize, prefix: String) -> indicatif::ProgressBar {
    let bar = if len == 0 {
        indicatif::ProgressBar::new_spinner()
    } else {
        indicatif::ProgressBar::new(len as u64)
    };
    let template = if len == 0 {
        "{prefix} {spinner} {pos} done, {elapsed}"
    } else {
        "{prefix} [{bar:30}] {pos}/{len} {per_sec} ETA {eta}"
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(prefix);
    bar
}

fn run_bench_serve(args: BenchServeArgs) -> anyhow::Result<()> {
    use dfastllm::loadgen::{self, LoadConfig};
    let url = plain_http("--url", &args.url)?;
    let prompts = match &args.dataset {
        Some(path) => loadgen::read_dataset(path, args.output_tokens)?,
        None => {
            let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(args.seed);
            (0..64)
                .map(|_| loadgen::Prompt {
                    text: loadgen::synthetic_prompt(args.prompt_tokens, &mut rng),
                    max_tokens: args.output_tokens,
                })
                .collect()
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(async {
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
            duration: args.duration.map(std::time::Duration::from_secs_f64),
            request_rate: args.request_rate,
            prompts,
            slo_ttft_ms: args.slo_ttft,
            slo_tpot_ms: args.slo_tpot,
            ignore_eos: args.ignore_eos,
            seed: args.seed,
            timeout: std::time::Duration::from_secs(args.timeout_seconds),
        };
        let bar = std::sync::Mutex::new(None::<indicatif::ProgressBar>);
        let on_level = |c: usize, n: usize| {
            if let Ok(mut b) = bar.lock() {
                if let Some(old) = b.take() {
                    old.finish();
                }
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
            if let Some(old) = b.take() {
                old.finish();
            }
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
        for path in dfastllm::plot::write_plots(&report, dir)? {
            eprintln!("wrote {}", path.display());
        }
    }
    Ok(())
}

/// A loopback server on `model_dir`, for `dfastllm batch --model`.
struct InProcess {
    url: String,
    /// Sending (or dropping) it shuts the server down.
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<()>,
    served_name: String,
}

async fn serve_in_process(
    model_dir: &std::path::Path,
    device: &str,
    dtype: &str,
    concurrency: usize,
) -> anyhow::Result<InProcess> {
    let overrides = Overrides {
        model_path: Some(model_dir.to_path_buf()),
        host: Some("127.0.0.1".into()),
        port: Some(0),
        device: Some(device.into()),
        dtype: Some(dtype.into()),
        max_concurrent_requests: Some(concurrency.max(1)),
        max_queue: Some(concurrency.max(1) * 4),
        ..Overrides::default()
    };
    let cfg = RuntimeConfig::merge(overrides, FileConfig::default())?;
    let device: DeviceChoice = cfg
        .device
        .parse()
        .map_err(|e| anyhow::anyhow!("--device: {e}"))?;
    let dtype: DTypeChoice = cfg
        .dtype
        .parse()
        .map_err(|e| anyhow::anyhow!("--dtype: {e}"))?;
    if !cfg.model_path.join("config.json").is_file() {
        bail!("--model: {} has no config.json", cfg.model_path.display());
    }
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let metrics = Arc::new(Metrics::new());
    let (handle, scheduler) = engine(
        EngineConfig {
            max_concurrent_requests: cfg.max_concurrent_requests,
            max_queue: cfg.max_queue,
            batch_wait: std::time::Duration::from_millis(cfg.batch_wait_ms),
        },
        metrics.clone(),
    );
    let served_name = cfg.served_name.clone();
    let state = AppState::new(cfg.clone(), handle, metrics);
    let (loaded_tx, loaded_rx) = tokio::sync::oneshot::channel::<Result<(), String>>();
    let engine_state = state.clone();
    std::thread::Builder::new()
        .name("dfastllm-engine".into())
        .spawn(move || {
            // Readiness is reported by the first state change: ready, or failed.
            let result =
                load_and_schedule_then(&cfg, device, dtype, &engine_state, scheduler, loaded_tx);
            if let Err(e) = result {
                tracing::error!(error = %format!("{e:#}"), "engine stopped");
            }
        })?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let _ = serve(listener, state, async {
            let _ = stop_rx.await;
        })
        .await;
    });
    match loaded_rx.await {
        Ok(Ok(())) => Ok(InProcess {
            url: format!("http://{addr}"),
            stop: stop_tx,
            server,
            served_name,
        }),
        Ok(Err(message)) => bail!("--model: {message}"),
        Err(_) => bail!("--model: the engine stopped while loading"),
    }
}

fn run_batch(args: BatchArgs) -> anyhow::Result<()> {
    use dfastllm::batch::{self, BatchConfig};
    let window = args
        .sla
        .as_deref()
        .map(batch::parse_window)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--sla: {e}"))?;
    let jobs = batch::read_input(&args.input)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let summary = runtime.block_on(async {
        let (url, stop, model) = match (&args.model, &args.url) {
            (Some(dir), _) => {
                let p = serve_in_process(dir, &args.device, &args.dtype, args.concurrency).await?;
                (p.url, Some((p.stop, p.server)), Some(p.served_name))
            }
            (None, Some(url)) => (plain_http("--url", url)?, None, None),
            (None, None) => bail!("one of --model or --url is required"),
        };
        let cfg = BatchConfig {
            url,
            model,
            api_key: args.api_key.clone(),
            concurrency: args.concurrency,
            timeout: std::time::Duration::from_secs(args.timeout_seconds),
        };
        let bar = std::sync::OnceLock::new();
        let progress = |done: usize, todo: usize| {
            let bar = bar.get_or_init(|| progress_bar(todo, "batch".into()));
            bar.set_position(done as u64);
        };
        let summary = batch::run(cfg, jobs, &args.output, &progress).await;
        if let Some(bar) = bar.get() {
            bar.finish();
        }
        if let Some((stop, server)) = stop {
            let _ = stop.send(());
            let _ = server.await;
        }
        anyhow::Ok(summary?)
    })?;
    eprintln!(
        "{} lines: {} done before, {} completed, {} failed, in {:.1}s ({:.2} req/s, {} output tokens)",
        summary.total,
        summary.skipped,
        summary.completed,
        summary.failed,
        summary.elapsed_s,
        summary.request_throughput,
        summary.output_tokens
    );
    if let Some(window) = window {
        eprintln!(
            "{}",
            batch::sla_verdict(summary.total, summary.request_throughput, window)
        );
    }
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}

/// The prompt of row `row` in benchmarks: byte-range ids, different per row.
fn bench_prompt(row: usize, len: usize) -> Vec<u32> {
    (0..len)
        .map(|i| ((i * 7 + row * 13 + 3) % 250) as u32)
        .collect()
}

fn run_bench_generate(args: BenchGenerateArgs) -> anyhow::Result<()> {
    if args.batch == 0 || args.prompt_len == 0 || args.max_tokens == 0 || args.repeat == 0 {
        bail!("--batch, --prompt-len, --max-tokens and --repeat must be at least 1");
    }
    let device = device::select(args.model.device)?;
    let loaded = models::load(&args.model.model, &device, args.model.dtype)?;
    let Some(model) = loaded.model.causal() else {
        bail!(
            "--model: {} is a diffusion model; `dfastllm bench generate` measures autoregressive decoding (use `dfastllm eval` for diffusion)",
            loaded.architecture
        );
    };
    let prompts: Vec<Vec<u32>> = (0..args.batch)
        .map(|r| bench_prompt(r, args.prompt_len))
        .collect();
    // (first pass: prefill and the first token, whole run) in seconds.
    let run = |max_tokens: usize| -> anyhow::Result<(f64, f64)> {
        let params = ArParams {
            ignore_eos: true,
            ..ArParams::greedy(max_tokens)
        };
        let mut seqs = prompts
            .iter()
            .map(|p| ArSequence::new(p, params.clone(), &loaded.special, model.max_context()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut cache = CausalCache::new();
        let start = Instant::now();
        let mut first = None;
        while seqs.iter().any(|s| !s.is_finished()) {
            let mut refs: Vec<&mut ArSequence> = seqs.iter_mut().collect();
            autoregressive::step_batch(model, &mut cache, &mut refs)?;
            first.get_or_insert_with(|| start.elapsed().as_secs_f64());
        }
        Ok((first.unwrap_or(0.0), start.elapsed().as_secs_f64()))
    };
    run(2.min(args.max_tokens)).context("warm-up run")?;
    let mut runs = (0..args.repeat)
        .map(|_| run(args.max_tokens))
        .collect::<anyhow::Result<Vec<_>>>()?;
    runs.sort_by(|a, b| a.1.total_cmp(&b.1));
    let (first, total) = runs[runs.len() / 2];
    let tokens = (args.batch * args.max_tokens) as f64;
    let decode_tokens = (args.batch * (args.max_tokens - 1)) as f64;
    let report = serde_json::json!({
        "impl": "dfastllm",
        "arch": loaded.architecture.name(),
        "device": device::describe(&device),
        "dtype": format!("{:?}", loaded.dtype).to_lowercase(),
        "batch": args.batch,
        "prompt_len": args.prompt_len,
        "max_tokens": args.max_tokens,
        "repeat": args.repeat,
        "first_token_ms": first * 1000.0,
        "total_s": total,
        "tokens_per_s": tokens / total,
        "decode_tokens_per_s": if total > first { decode_tokens / (total - first) } else { 0.0 },
    });
    println!("{report}");
    Ok(())
}

fn run_bench_forward(args: BenchForwardArgs) -> anyhow::Result<()> {
    if args.batch == 0 || args.seq_len == 0 || args.iters == 0 {
        bail!("--batch, --seq-len and --iters must be at least 1");
    }
    let device = device::select(args.model.device)?;
    let loaded = models::load(&args.model.model, &device, args.model.dtype)?;
    let row: Vec<u32> = (0..args.seq_len as u32)
        .map(|i| (i * 7 + 3) % 256)
        .collect();
    let rows: Vec<&[u32]> = (0..args.batch).map(|_| row.as_slice()).collect();
    let batch = Batch::left_padded(&rows, loaded.special.pad_id, &device, loaded.dtype)?;
    let run = || -> anyhow::Result<f64> {
        let start = Instant::now();
        let logits = match &loaded.model {
            Network::Diffusion(m) => m.forward(&batch, None)?,
            Network::Causal(m) => m.forward_full(&rows)?,
        };
        // Reading one value back waits for an asynchronous device to finish.
        logits
            .flatten_all()?
            .get(0)?
            .to_dtype(candle_core::DType::F32)?
            .to_scalar::<f32>()?;
        Ok(start.elapsed().as_secs_f64() * 1000.0)
    };
    for _ in 0..2 {
        run().context("warm-up forward pass")?;
    }
    let mut times = (0..args.iters)
        .map(|_| run())
        .collect::<anyhow::Result<Vec<f64>>>()?;
    times.sort_by(f64::total_cmp);
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    let report = serde_json::json!({
        "impl": "dfastllm",
        "arch": loaded.architecture.name(),
        "device": device::describe(&device),
        "batch": args.batch,
        "seq_len": args.seq_len,
        "iters": args.iters,
        "ms_mean": mean,
        "ms_min": times[0],
        "ms_p50": times[times.len() / 2],
    });
    println!("{report}");
    Ok(())
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DFASTLLM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
        LogFormat::Text => builder.init(),
    }
}

/// [`load_and_schedule`] that also reports the end of loading on `loaded`.
fn load_and_schedule_then(
    cfg: &RuntimeConfig,
    device: DeviceChoice,
    dtype: DTypeChoice,
    state: &AppState,
    scheduler: Scheduler,
    loaded: tokio::sync::oneshot::Sender<Result<(), String>>,
) -> anyhow::Result<()> {
    let mut loaded = Some(loaded);
    let result = load_and_schedule_with(cfg, device, dtype, state, scheduler, &mut || {
        if let Some(tx) = loaded.take() {
            let _ = tx.send(Ok(()));
        }
    });
    if let (Err(e), Some(tx)) = (&result, loaded.take()) {
        let _ = tx.send(Err(format!("{e:#}")));
    }
    result
}

/// Loads the model, runs one warm-up generation, marks the server ready, then runs
/// the scheduler on this thread for the life of the process.
fn load_and_schedule(
    cfg: &RuntimeConfig,
    device: DeviceChoice,
    dtype: DTypeChoice,
    state: &AppState,
    scheduler: Scheduler,
) -> anyhow::Result<()> {
    load_and_schedule_with(cfg, device, dtype, state, scheduler, &mut || {})
}

fn load_and_schedule_with(
    cfg: &RuntimeConfig,
    device: DeviceChoice,
    dtype: DTypeChoice,
    state: &AppState,
    scheduler: Scheduler,
    on_ready: &mut dyn FnMut(),
) -> anyhow::Result<()> {
    let started = Instant::now();
    let device = device::select(device)?;
    let generator = Generator::load(&cfg.model_path, &device, dtype)?;
    if let Some(expected) = cfg.architecture {
        let found = generator.model.architecture;
        if found != expected {
            bail!(
                "model.architecture: the deployment expects {expected} but {}/config.json is {found}",
                cfg.model_path.display()
            );
        }
    }
    let warmup = Prompt::Text("warm up".into());
    let params = DiffusionParams::with_defaults(8);
    generator
        .generate(&warmup, params, ArParams::greedy(8))
        .context("warm-up generation")?;
    let Generator { model, tokenizer } = generator;
    tracing::info!(
        model = %cfg.model_path.display(),
        architecture = model.architecture.name(),
        device = device::describe(&device),
        dtype = ?model.dtype,
        demo_weights = model.is_demo,
        load_seconds = started.elapsed().as_secs_f64(),
        "model loaded and warmed up"
    );
    state.set_ready(ModelInfo {
        tokenizer,
        special: model.special.clone(),
        max_context: model.model.max_context(),
        architecture: model.architecture,
        device: device.clone(),
    });
    on_ready();
    scheduler.run(&model);
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

fn run_serve(args: ServeArgs) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let cfg = RuntimeConfig::merge(args.overrides(), file)?;
    let device: DeviceChoice = cfg
        .device
        .parse()
        .map_err(|e| anyhow::anyhow!("--device: {e}"))?;
    let dtype: DTypeChoice = cfg
        .dtype
        .parse()
        .map_err(|e| anyhow::anyhow!("--dtype: {e}"))?;
    // Fail before binding the port when the model directory is plainly wrong.
    if !cfg.model_path.join("config.json").is_file() {
        bail!(
            "--model: {} has no config.json (expected a Hugging Face checkpoint directory)",
            cfg.model_path.display()
        );
    }
    init_logging(args.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind((cfg.host.as_str(), cfg.port))
            .await
            .with_context(|| format!("binding {}:{}", cfg.host, cfg.port))?;
        let addr = listener.local_addr()?;
        tracing::info!(addr = %addr, served_name = %cfg.served_name, "listening");
        let metrics = Arc::new(Metrics::new());
        let (handle, scheduler) = engine(
            EngineConfig {
                max_concurrent_requests: cfg.max_concurrent_requests,
                max_queue: cfg.max_queue,
                batch_wait: std::time::Duration::from_millis(cfg.batch_wait_ms),
            },
            metrics.clone(),
        );
        let state = AppState::new(cfg.clone(), handle, metrics);
        let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<String>();
        let engine_state = state.clone();
        std::thread::Builder::new()
            .name("dfastllm-engine".into())
            .spawn(move || {
                if let Err(e) = load_and_schedule(&cfg, device, dtype, &engine_state, scheduler) {
                    let _ = failed_tx.send(format!("{e:#}"));
                }
            })?;
        tokio::select! {
            result = serve(listener, state, shutdown_signal()) => {
                result?;
                tracing::info!("drained, exiting");
                Ok(())
            }
            Ok(message) = failed_rx => {
                tracing::error!(error = %message, "model failed to load");
                bail!("{message}")
            }
        }
    })
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            print!("{e}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // One line: clap's first paragraph names the flag and the problem.
            let rendered = e.render().to_string();
            let first: Vec<&str> = rendered
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            eprintln!("{}", first.join(" "));
            return ExitCode::from(2);
        }
    };
    if let Some(threads) = cli.threads {
        if threads == 0 {
            eprintln!("error: --threads must be at least 1");
            return ExitCode::from(2);
        }
        // Read by candle's CPU kernels and by rayon's pool, which starts lazily: set
        // before any tensor work or thread exists.
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
    let result = match cli.command {
        Command::Serve(args) => run_serve(*args),
        Command::Generate(args) => run_generate(args),
        Command::Eval(args) => run_eval(args),
        Command::DemoModel(args) => run_demo_model(args),
        Command::Bench(BenchCommand::Forward(args)) => run_bench_forward(args),
        Command::Bench(BenchCommand::Generate(args)) => run_bench_generate(args),
        Command::Bench(BenchCommand::Serve(args)) => run_bench_serve(*args),
        Command::Batch(args) => run_batch(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
