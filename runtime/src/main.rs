//! The `dfastllm` command line: `generate`, `demo-model`, `bench`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use dfastllm::decoding::{DecodeError, DiffusionParams, Remasking};
use dfastllm::demo::{write_demo_model, DemoDType, DemoSpec};
use dfastllm::device::{self, DeviceChoice};
use dfastllm::generation::{GenerationError, Generator, Prompt};
use dfastllm::models::{self, Architecture, Batch, DTypeChoice};
use dfastllm::tokenizer::ChatMessage;

#[derive(Parser, Debug)]
#[command(
    name = "dfastllm",
    version,
    about = "Serve and run diffusion language models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Generate one answer from a prompt and print it.
    Generate(GenerateArgs),
    /// Write a tiny checkpoint with RANDOM weights in a real upstream layout.
    DemoModel(DemoModelArgs),
    /// Measure the runtime.
    #[command(subcommand)]
    Bench(BenchCommand),
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
    /// Print one JSON object instead of the text.
    #[arg(long, env = "DFASTLLM_JSON")]
    json: bool,
}

#[derive(Args, Debug)]
struct DemoModelArgs {
    /// llada or dream.
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

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Time full forward passes of a model on fixed input (for side-by-side comparisons).
    Forward(BenchForwardArgs),
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
    format!("--{}", param.replace('_', "-"))
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
        seed: args.seed,
        ..defaults
    };
    let output = match generator.generate(&prompt, params) {
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
        let logits = loaded.model.forward(&batch, None)?;
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
    let result = match cli.command {
        Command::Generate(args) => run_generate(args),
        Command::DemoModel(args) => run_demo_model(args),
        Command::Bench(BenchCommand::Forward(args)) => run_bench_forward(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
