//! One module per subcommand, plus the flags and helpers several share.

pub mod batch;
pub mod bench;
pub mod demo_model;
pub mod eval;
pub mod generate;
pub mod inspect;
pub mod serve;

use std::path::PathBuf;

use clap::Args;
use dfastllm_core::device::DeviceChoice;
use dfastllm_core::models::DTypeChoice;

#[derive(Args, Debug)]
pub struct ModelArgs {
    /// Model directory in Hugging Face layout (config.json, *.safetensors, tokenizer.json).
    #[arg(long = "model", env = "DFASTLLM_MODEL")]
    pub dir: PathBuf,
    /// auto (CUDA when built with it and a GPU answers, else CPU), cpu, cuda, cuda:N.
    #[arg(long, env = "DFASTLLM_DEVICE", default_value = "auto")]
    pub device: DeviceChoice,
    /// auto (on GPU: config.json's dtype/torch_dtype, else the weights' stored format; f32 on CPU), f32, f16, bf16.
    #[arg(long, env = "DFASTLLM_DTYPE", default_value = "auto")]
    pub dtype: DTypeChoice,
}

/// Names the CLI flag behind an API parameter in validation errors.
pub fn flag_of(param: &str) -> String {
    let flag = match param {
        "mor.confidence_threshold" => "mor-threshold".to_string(),
        other => other.replace(['_', '.'], "-"),
    };
    format!("--{flag}")
}

/// A base URL the built-in client can reach: http only (the build carries no TLS stack;
/// in-cluster Services and port-forwards are plain HTTP), without a trailing slash.
pub fn plain_http(flag: &str, url: &str) -> anyhow::Result<String> {
    let url = url.trim_end_matches('/');
    if !url.starts_with("http://") {
        anyhow::bail!(
            "{flag}: {url:?} must start with http:// (https is not supported; use the in-cluster Service or kubectl port-forward)"
        );
    }
    Ok(url.to_string())
}

/// A progress bar on stderr (drawn only when stderr is a terminal).
pub fn progress_bar(len: usize, prefix: String) -> indicatif::ProgressBar {
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

/// A tokio runtime for the subcommands that talk HTTP.
pub fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
