//! `dfastllm batch`: the client and the in-process server live in `dfastllm_tools`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::Args;
use dfastllm_core::device::DeviceChoice;
use dfastllm_core::models::DTypeChoice;
use dfastllm_server::LaunchError;
use dfastllm_tools::batch::{self, BatchConfig};
use dfastllm_tools::in_process::{InProcess, InProcessError};

use super::{plain_http, progress_bar};

#[derive(Args, Debug)]
pub struct BatchArgs {
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
    device: DeviceChoice,
    /// With --model: auto, f32, f16, bf16.
    #[arg(long, env = "DFASTLLM_DTYPE", default_value = "auto")]
    dtype: DTypeChoice,
}

pub fn run(args: BatchArgs) -> anyhow::Result<()> {
    let window = args
        .sla
        .as_deref()
        .map(batch::parse_window)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--sla: {e}"))?;
    let jobs = batch::read_input(&args.input)?;
    let summary = super::tokio_runtime()?.block_on(async {
        let (url, server, model) = match (&args.model, &args.url) {
            (Some(dir), _) => {
                let p = InProcess::start(dir, args.device, args.dtype, args.concurrency)
                    .await
                    .map_err(|e| match e {
                        // Already names --model.
                        InProcessError::Launch(LaunchError::Model(_)) => anyhow::Error::from(e),
                        other => anyhow::anyhow!("--model: {other}"),
                    })?;
                let (url, name) = (p.url.clone(), p.served_name.clone());
                (url, Some(p), Some(name))
            }
            (None, Some(url)) => (plain_http("--url", url)?, None, None),
            (None, None) => bail!("one of --model or --url is required"),
        };
        let cfg = BatchConfig {
            url,
            model,
            api_key: args.api_key.clone(),
            concurrency: args.concurrency,
            timeout: Duration::from_secs(args.timeout_seconds),
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
        if let Some(server) = server {
            server.stop().await?;
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
