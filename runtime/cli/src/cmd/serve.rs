//! `dfastllm serve`: merge the configuration layers, then [`dfastllm_server::launch`].

use std::path::PathBuf;

use anyhow::Context;
use clap::{ArgMatches, Args};
use dfastllm_server::config::{merge, ConfigLayer, FlagOrigins, RuntimeConfig};

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// runtime.toml (the operator's ConfigMap); flags and DFASTLLM_* env override it,
    /// value by value.
    #[arg(long, env = "DFASTLLM_CONFIG")]
    config: Option<PathBuf>,
    /// Print the merged configuration as runtime.toml, each value with where it came
    /// from (flag, env, file or default), and exit.
    #[arg(long, env = "DFASTLLM_PRINT_CONFIG")]
    print_config: bool,
    #[command(flatten)]
    layer: ConfigLayer,
    /// json (one object per line) or text.
    #[arg(long, env = "DFASTLLM_LOG_FORMAT", default_value = "json")]
    log_format: LogFormat,
    /// Accepted for vLLM's command lines: tool calls are read whenever a request sends
    /// tools and the model has a tool-call format (--tool-call-parser).
    #[arg(long, env = "DFASTLLM_ENABLE_AUTO_TOOL_CHOICE")]
    enable_auto_tool_choice: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Json,
    Text,
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

pub fn run(args: ServeArgs, matches: &ArgMatches) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(path) => Some((ConfigLayer::load(path)?, path.clone())),
        None => None,
    };
    let layered = merge(
        &args.layer,
        &FlagOrigins::from_matches(matches),
        file.as_ref().map(|(layer, path)| (layer, path.as_path())),
    );
    if args.print_config {
        print!("{}", layered.render());
        return Ok(());
    }
    let cfg = RuntimeConfig::resolve(&layered)?;
    dfastllm_server::launch::check_model_dir(&cfg)?;
    init_logging(args.log_format);
    if args.enable_auto_tool_choice {
        tracing::info!("--enable-auto-tool-choice is accepted for vLLM's command lines; tool calls are read whenever a request sends tools and the model has a tool-call format (--tool-call-parser)");
    }
    super::tokio_runtime()?.block_on(async move {
        let listener = tokio::net::TcpListener::bind((cfg.host.as_str(), cfg.port))
            .await
            .with_context(|| format!("binding {}:{}", cfg.host, cfg.port))?;
        let served_name = cfg.served_name.clone();
        let launched = dfastllm_server::launch(cfg, listener, shutdown_signal())?;
        tracing::info!(addr = %launched.addr, served_name = %served_name, "listening");
        launched.wait().await?;
        tracing::info!("drained, exiting");
        Ok(())
    })
}
