//! `dfastllm eval`: the strategy grammar and the run live in `dfastllm_tools::eval`.

use std::path::PathBuf;

use anyhow::bail;
use clap::Args;
use dfastllm_core::decoding::{DecodeError, KvCacheMode, Mor};
use dfastllm_core::device;
use dfastllm_core::generation::{GenerationError, Generator};
use dfastllm_core::models;
use dfastllm_tools::eval::{self, StrategyKnobs};

use super::{flag_of, ModelArgs};

#[derive(Args, Debug)]
pub struct EvalArgs {
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
    /// Answer region in tokens (serve's `--max-tokens`; `--gen-length` is the old name).
    #[arg(
        long = "max-tokens",
        alias = "gen-length",
        env = "DFASTLLM_EVAL_MAX_TOKENS",
        default_value_t = 32
    )]
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

pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let knobs = StrategyKnobs {
        gen_length: args.gen_length,
        block_length: args.block_length,
        stop_at_eos: args.stop_at_eos,
        apd_threshold: args.apd_threshold,
        apd_factor: args.apd_factor,
        apd_max_parallel: args.apd_max_parallel,
        mor: Mor {
            min_recursions: args.mor_min_recursions,
            max_recursions: args.mor_max_recursions,
            confidence_threshold: args.mor_threshold,
        },
        apd_mix: args.apd_mix,
        apd_max_lookahead: args.apd_max_lookahead,
        has_verifier: args.apd_verifier.is_some(),
    };
    let configs = eval::strategy_configs(&args.strategies, &args.kv_cache, &knobs)
        .map_err(|e| anyhow::anyhow!("--strategies: {e}"))?;
    if configs.is_empty() {
        bail!("--strategies and --kv-cache select no configuration");
    }
    let device = device::select(args.model.device)?;
    let generator = Generator::load(&args.model.dir, &device, args.model.dtype)?;
    let mut examples =
        eval::read_examples(&args.data).map_err(|e| anyhow::anyhow!("--data: {e}"))?;
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
    let rows = match eval::run(
        &generator,
        &examples,
        &configs,
        args.batch,
        verifier.as_ref(),
    ) {
        Err(eval::EvalError::Generation(GenerationError::Decode(DecodeError::InvalidParam {
            param,
            message,
        }))) => bail!("{}: {message}", flag_of(param)),
        other => other?,
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "model": args.model.dir,
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
        print!("{}", eval::table(&rows));
    }
    Ok(())
}
