//! `dfastllm demo-model`: a tiny checkpoint with random weights in a real layout.

use std::path::PathBuf;

use clap::Args;
use dfastllm_core::demo::{write_demo_model, DemoDType, DemoSpec};
use dfastllm_core::models::Architecture;

#[derive(Args, Debug)]
pub struct DemoModelArgs {
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

pub fn run(args: DemoModelArgs) -> anyhow::Result<()> {
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
