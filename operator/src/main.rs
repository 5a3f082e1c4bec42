//! `dfastllm-operator`: `run` the controller, or print the `crd`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use clap::{Parser, Subcommand};
use dfastllm_operator::leader::LeaderElection;
use dfastllm_operator::metrics::Metrics;
use dfastllm_operator::reconcile::{self, Context};
use dfastllm_operator::resources::{
    OperatorConfig, DEFAULT_RUNTIME_CPU_IMAGE, DEFAULT_RUNTIME_IMAGE,
};

#[derive(Parser, Debug)]
#[command(
    name = "dfastllm-operator",
    version,
    about = "Kubernetes operator for dfastllm DiffusionModels"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Reconcile DiffusionModels until SIGTERM.
    Run(RunArgs),
    /// Print the DiffusionModel CRD as YAML (what crds/ holds).
    Crd,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Watch one namespace only [default: all namespaces].
    #[arg(long, env = "DFASTLLM_OPERATOR_NAMESPACE")]
    namespace: Option<String>,
    /// Runtime image for GPU deployments.
    #[arg(long, env = "DFASTLLM_RUNTIME_IMAGE", default_value = DEFAULT_RUNTIME_IMAGE)]
    runtime_image: String,
    /// Runtime image for CPU deployments (gpu.count: 0).
    #[arg(long, env = "DFASTLLM_RUNTIME_CPU_IMAGE", default_value = DEFAULT_RUNTIME_CPU_IMAGE)]
    runtime_cpu_image: String,
    /// Metrics (/metrics) and probes (/healthz, /readyz).
    #[arg(
        long,
        env = "DFASTLLM_METRICS_BIND_ADDRESS",
        default_value = "0.0.0.0:8080"
    )]
    metrics_bind_address: SocketAddr,
    /// Hold a Lease before reconciling, so several replicas are safe.
    #[arg(long, env = "DFASTLLM_LEADER_ELECTION")]
    leader_election: bool,
    #[arg(long, env = "DFASTLLM_LEASE_NAME", default_value = "dfastllm-operator")]
    lease_name: String,
    /// Namespace of the Lease [default: the pod's namespace].
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// This replica's identity in the Lease [default: the kernel's host name (in a pod,
    /// the pod's name) and the process id, unique per process].
    #[arg(long, env = "DFASTLLM_OPERATOR_IDENTITY")]
    identity: Option<String>,
}

/// The Lease identity of a process that was given none: the host name (the pod's name
/// in a pod) and the process id, so two replicas on one host never share one. The host
/// name comes from the kernel, not `HOSTNAME`, which shells set but do not export.
fn default_identity(hostname: Option<&str>, pid: u32) -> String {
    let host = hostname
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .unwrap_or("dfastllm-operator");
    format!("{host}-{pid}")
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        () = term => {},
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DFASTLLM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .json()
        .flatten_event(true)
        .init();
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));

    let listener = tokio::net::TcpListener::bind(args.metrics_bind_address)
        .await
        .with_context(|| format!("--metrics-bind-address {}", args.metrics_bind_address))?;
    let (m, r) = (metrics.clone(), ready.clone());
    let probes = Router::new()
        .route("/metrics", get(move || async move { m.encode() }))
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || async move {
                if r.load(Ordering::SeqCst) {
                    (StatusCode::OK, "ready")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "waiting for leadership")
                }
            }),
        );
    tokio::spawn(async move { axum::serve(listener, probes).await });

    let identity = args.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").ok();
        default_identity(host.as_deref(), std::process::id())
    });
    let election = args.leader_election.then(|| {
        Arc::new(LeaderElection::new(
            client.clone(),
            &args.lease_namespace,
            &args.lease_name,
            &identity,
            Duration::from_secs(15),
        ))
    });
    if let Some(e) = &election {
        tracing::info!(lease = %args.lease_name, %identity, "waiting for leadership");
        tokio::select! {
            () = e.acquire() => {},
            () = shutdown_signal() => return Ok(()),
        }
        tracing::info!("leading");
    }
    ready.store(true, Ordering::SeqCst);
    let config = OperatorConfig {
        runtime_image: args.runtime_image,
        runtime_cpu_image: args.runtime_cpu_image,
    };
    let ctx = Arc::new(Context::new(client, config, metrics));
    let held = election.clone();
    let lost = async move {
        match &held {
            Some(e) => e.hold().await,
            None => std::future::pending().await,
        }
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<&'static str>();
    tokio::spawn(async move {
        let why = tokio::select! {
            () = shutdown_signal() => "shutdown requested",
            () = lost => "leadership lost",
        };
        let _ = stop_tx.send(why);
    });
    let (why_tx, why_rx) = tokio::sync::oneshot::channel::<&'static str>();
    let stop = async move {
        let why = stop_rx.await.unwrap_or("shutdown requested");
        tracing::info!(reason = why, "stopping the controller");
        let _ = why_tx.send(why);
    };
    reconcile::run(ctx, args.namespace, stop).await;
    if why_rx.await == Ok("leadership lost") {
        anyhow::bail!("lost the leader lease; exiting so that a fresh start rejoins the election");
    }
    if let Some(e) = &election {
        match e.release().await {
            Ok(()) => tracing::info!("released the leader lease"),
            Err(err) => tracing::warn!(error = %err, "could not release the leader lease"),
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            print!("{e}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
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
        Command::Crd => dfastllm_operator::crd_yaml()
            .map(|yaml| print!("{yaml}"))
            .map_err(anyhow::Error::from),
        Command::Run(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(run(args))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::default_identity;

    #[test]
    fn the_default_identity_is_unique_per_process() {
        assert_eq!(default_identity(Some("op-7f9c\n"), 42), "op-7f9c-42");
        assert_ne!(
            default_identity(Some("laptop"), 1),
            default_identity(Some("laptop"), 2),
            "two replicas on one host"
        );
        assert_eq!(default_identity(None, 3), "dfastllm-operator-3");
        assert_eq!(default_identity(Some("  "), 3), "dfastllm-operator-3");
    }
}
