//! `dfastllm inspect DIR`: what the runtime makes of a checkpoint, before serving it.

use std::path::PathBuf;

use clap::Args;
use dfastllm_core::inspect::inspect;

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// The checkpoint directory (config.json, tokenizer files, safetensors; weights are
    /// never loaded, only their headers read).
    #[arg(env = "DFASTLLM_INSPECT_DIR")]
    dir: PathBuf,
    /// Print one JSON object instead of the text report.
    #[arg(long, env = "DFASTLLM_JSON")]
    json: bool,
}

/// Exits non-zero when the runtime would refuse the checkpoint, so scripts can gate on it.
pub fn run(args: InspectArgs) -> anyhow::Result<()> {
    let report = inspect(&args.dir);
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{}", report.render());
    }
    if !report.refused.is_empty() {
        anyhow::bail!(
            "{} would not be served: {}",
            args.dir.display(),
            report.refused[0]
        );
    }
    Ok(())
}
