//! `dfastllm demo-model`: a tiny checkpoint with random weights in a real layout, or
//! (`--like DIR`) shaped like a real checkpoint beside copies of its metadata.

use std::path::PathBuf;

use clap::Args;
use dfastllm_core::demo::{write_demo_model, write_like, DemoDType, DemoSpec, Shrink};
use dfastllm_core::models::Architecture;

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("shape").required(true).args(["arch", "like"])))]
pub struct DemoModelArgs {
    /// llada, dream (diffusion) or llama, qwen2, phi, gpt2 (autoregressive).
    #[arg(long, env = "DFASTLLM_DEMO_ARCH")]
    arch: Option<Architecture>,
    /// A real checkpoint directory (its config.json and tokenizer files; no weights
    /// needed): the same tensor names and shapes, its metadata files copied, sizes
    /// shrunk by --layers/--hidden/--heads/--kv-heads/--intermediate where given.
    #[arg(long, env = "DFASTLLM_DEMO_LIKE", conflicts_with_all = ["arch", "vocab", "max_context"])]
    like: Option<PathBuf>,
    /// Output directory (created if missing).
    #[arg(long, env = "DFASTLLM_DEMO_OUT")]
    out: PathBuf,
    /// Layers [default: 2; with --like, the real count].
    #[arg(long, env = "DFASTLLM_DEMO_LAYERS")]
    layers: Option<usize>,
    /// Hidden width [default: 64; with --like, the real one].
    #[arg(long, env = "DFASTLLM_DEMO_HIDDEN")]
    hidden: Option<usize>,
    /// Attention heads [default: 4; with --like, the real count].
    #[arg(long, env = "DFASTLLM_DEMO_HEADS")]
    heads: Option<usize>,
    /// Key/value heads [default: heads for llada, heads/2 for dream; with --like, the
    /// real ratio].
    #[arg(long, env = "DFASTLLM_DEMO_KV_HEADS")]
    kv_heads: Option<usize>,
    /// MLP width [default: 2 x hidden; with --like, the real ratio to hidden].
    #[arg(long, env = "DFASTLLM_DEMO_INTERMEDIATE")]
    intermediate: Option<usize>,
    /// Vocabulary size: 256 byte tokens, the special tokens, then unused rows.
    #[arg(long, env = "DFASTLLM_DEMO_VOCAB", default_value_t = 320)]
    vocab: usize,
    #[arg(long, env = "DFASTLLM_DEMO_SEED", default_value_t = 0)]
    seed: u64,
    /// f32, f16 or bf16 [default: f32; with --like, what config.json declares, else f32].
    #[arg(long, env = "DFASTLLM_DEMO_DTYPE")]
    dtype: Option<DemoDType>,
    /// Split the weights over this many safetensors files (with an index).
    #[arg(long, env = "DFASTLLM_DEMO_SHARDS", default_value_t = 1)]
    shards: usize,
    #[arg(long, env = "DFASTLLM_DEMO_MAX_CONTEXT", default_value_t = 1024)]
    max_context: usize,
}

pub fn run(args: DemoModelArgs) -> anyhow::Result<()> {
    let spec = match (&args.like, args.arch) {
        (Some(source), _) => {
            let shrink = Shrink {
                layers: args.layers,
                hidden: args.hidden,
                heads: args.heads,
                kv_heads: args.kv_heads,
                intermediate: args.intermediate,
            };
            write_like(
                source,
                &shrink,
                args.seed,
                args.dtype,
                args.shards,
                &args.out,
            )?
        }
        (None, Some(arch)) => {
            let spec = DemoSpec {
                arch,
                layers: args.layers.unwrap_or(2),
                hidden: args.hidden.unwrap_or(64),
                heads: args.heads.unwrap_or(4),
                kv_heads: args.kv_heads,
                intermediate: args.intermediate,
                vocab: args.vocab,
                seed: args.seed,
                dtype: args.dtype.unwrap_or(DemoDType::F32),
                shards: args.shards,
                max_context: args.max_context,
            };
            write_demo_model(&spec, &args.out)?;
            spec
        }
        (None, None) => anyhow::bail!("one of --arch or --like is required"),
    };
    eprintln!(
        "wrote a {} checkpoint with RANDOM weights to {} (for tests and demos only)",
        spec.arch,
        args.out.display()
    );
    Ok(())
}
