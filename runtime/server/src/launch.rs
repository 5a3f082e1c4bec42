//! `launch`: the one wiring of a serving process, used by `dfastllm serve`, by
//! `dfastllm batch --model` (a loopback server) and by the tests.
//!
//! The listener serves at once (`/health` answers, `/readyz` is 503) while a thread of
//! its own loads the model, runs one warm-up generation, marks the server ready and then
//! becomes the engine's scheduler for the life of the process.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use candle_core::Device;
use dfastllm_core::decoding::{
    run_to_end, CommitRule, DiffusionParams, SamplingParams, Sequence, Stepper, WithVerifier,
};
use dfastllm_core::device::{self, DeviceChoice};
use dfastllm_core::engine::{engine, EngineConfig, FaultInjector, Scheduler};
use dfastllm_core::generation::{Generator, Prompt};
use dfastllm_core::gpu::{GpuProbe, NvmlProbe};
use dfastllm_core::metrics::Metrics;
use dfastllm_core::models::causal::CausalModel;
use dfastllm_core::models::ModelKind;

use crate::config::{GenerationConfigMode, RuntimeConfig};
use crate::{serve, AppState, ModelInfo};

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The model directory is plainly wrong: found before anything starts.
    #[error("--model: {0}")]
    Model(String),
    /// Loading, the architecture check or the warm-up failed.
    #[error("{0}")]
    Load(String),
    #[error("the engine thread stopped while loading")]
    EngineStopped,
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The shutdown grace period ran out: this many requests were answered 503 instead
    /// of finishing (the exit status says work was lost).
    #[error("--shutdown-grace-seconds ran out: {0} request(s) were cut and answered 503")]
    Cut(usize),
}

/// A server that is serving (and loading, until [`Launched::ready`] says otherwise).
pub struct Launched {
    pub addr: SocketAddr,
    pub state: AppState,
    loaded: Option<oneshot::Receiver<Result<(), String>>>,
    server: JoinHandle<std::io::Result<usize>>,
}

/// Fails when the model directory is plainly wrong, before a port is bound or a
/// thread started.
pub fn check_model_dir(config: &RuntimeConfig) -> Result<(), LaunchError> {
    if config.model_path.join("config.json").is_file() {
        return Ok(());
    }
    Err(LaunchError::Model(format!(
        "{} has no config.json (expected a Hugging Face checkpoint directory)",
        config.model_path.display()
    )))
}

/// Starts serving `config` on `listener` until `shutdown` resolves (then drains).
pub fn launch(
    config: RuntimeConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Launched, LaunchError> {
    check_model_dir(&config)?;
    let addr = listener.local_addr()?;
    let metrics = Arc::new(Metrics::new());
    let (handle, scheduler) = engine(
        EngineConfig {
            max_concurrent_requests: config.max_concurrent_requests,
            max_queue: config.max_queue,
            batch_wait: Duration::from_millis(config.batch_wait_ms),
            breaker: config.breaker(),
        },
        metrics.clone(),
    );
    let state = AppState::new(config.clone(), handle, metrics);
    let (loaded_tx, loaded_rx) = oneshot::channel();
    let engine_state = state.clone();
    std::thread::Builder::new()
        .name("dfastllm-engine".into())
        .spawn(move || load_and_schedule(&config, &engine_state, scheduler, loaded_tx))?;
    let server = tokio::spawn(serve(listener, state.clone(), shutdown));
    Ok(Launched {
        addr,
        state,
        loaded: Some(loaded_rx),
        server,
    })
}

impl Launched {
    /// Resolves once the model is loaded and warmed up (`/readyz` 200), or fails with
    /// the reason it could not load.
    pub async fn ready(&mut self) -> Result<(), LaunchError> {
        match self.loaded.take() {
            None => Ok(()),
            Some(rx) => match rx.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(message)) => Err(LaunchError::Load(message)),
                Err(_) => Err(LaunchError::EngineStopped),
            },
        }
    }

    /// Serves until the shutdown future resolved and the drain finished; fails at once
    /// when the model cannot load.
    pub async fn wait(mut self) -> Result<(), LaunchError> {
        let loaded = self.loaded.take();
        let failed = async move {
            match loaded {
                Some(rx) => match rx.await {
                    Ok(Err(message)) => LaunchError::Load(message),
                    // Loaded (or the thread ended after loading): wait for the server.
                    Ok(Ok(())) | Err(_) => std::future::pending().await,
                },
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            result = &mut self.server => match result {
                Ok(Ok(0)) => Ok(()),
                Ok(Ok(cut)) => Err(LaunchError::Cut(cut)),
                Ok(Err(e)) => Err(e.into()),
                Err(join) => Err(LaunchError::Load(format!("the server task failed: {join}"))),
            },
            e = failed => Err(e),
        }
    }
}

/// Loads the model, runs one warm-up generation, marks the server ready, then runs
/// the scheduler on this thread until every engine handle is dropped.
fn load_and_schedule(
    cfg: &RuntimeConfig,
    state: &AppState,
    scheduler: Scheduler,
    loaded: oneshot::Sender<Result<(), String>>,
) {
    let started = Instant::now();
    let result = (|| -> Result<_, String> {
        let device = device::select(cfg.device).map_err(|e| e.to_string())?;
        let generator =
            Generator::load(&cfg.model_path, &device, cfg.dtype).map_err(|e| e.to_string())?;
        if let Some(expected) = cfg.architecture {
            let found = generator.model.architecture;
            if found != expected {
                return Err(format!(
                    "model.architecture: the deployment expects {expected} but {}/config.json is {found}",
                    cfg.model_path.display()
                ));
            }
        }
        let own = generator.model.network.max_context();
        if let Some(len) = cfg.max_model_len.filter(|&len| len > own) {
            return Err(format!(
                "--max-model-len {len} is longer than the model's context of {own} tokens ({}/config.json)",
                cfg.model_path.display()
            ));
        }
        let warmup = Prompt::Text("warm up".into());
        generator
            .generate(&warmup, &SamplingParams::with_defaults(8))
            .map_err(|e| format!("warm-up generation: {e}"))?;
        let verifier = match &cfg.verifier_model {
            Some(dir) => Some(
                load_verifier(dir, &generator, &device)
                    .map_err(|e| format!("--apd-verifier-model {}: {e}", dir.display()))?,
            ),
            None => None,
        };
        Ok((generator, device, verifier))
    })();
    let (generator, device, verifier) = match result {
        Ok(ok) => ok,
        Err(message) => {
            tracing::error!(error = %message, "model failed to load");
            let _ = loaded.send(Err(message));
            return;
        }
    };
    let Generator { model, tokenizer } = generator;
    let sampling_defaults = match cfg.generation_config {
        GenerationConfigMode::Auto => model.sampling_defaults.clone(),
        GenerationConfigMode::Ignore => Default::default(),
    };
    tracing::info!(
        model = %cfg.model_path.display(),
        architecture = model.architecture.name(),
        device = device::describe(&device),
        dtype = ?model.dtype,
        dtype_reason = %model.dtype_reason,
        generation_config_defaults = ?sampling_defaults,
        demo_weights = model.is_demo,
        apd_verifier = ?cfg.verifier_model,
        load_seconds = started.elapsed().as_secs_f64(),
        "model loaded and warmed up"
    );
    match gpu_probe(cfg, &device) {
        Ok(probe) => {
            let per_token = model.network.kv_bytes_per_token() as u64;
            let budget =
                state
                    .engine
                    .memory()
                    .install(probe, cfg.memory_guard, per_token, &state.metrics);
            tracing::info!(
                warn = cfg.memory_guard.warn,
                critical = cfg.memory_guard.critical,
                gpu_memory_utilization = cfg.memory_guard.utilization,
                kv_cache_budget_bytes = budget.map(|b| b.bytes),
                kv_bytes_per_token = per_token,
                "GPU memory guard on"
            );
        }
        Err(reason) => tracing::info!(%reason, "GPU memory guard off"),
    }
    state.set_ready(ModelInfo {
        tokenizer,
        special: model.special.clone(),
        // A verifier with a shorter context would fail mid-answer: it bounds prompts too.
        max_context: cfg
            .max_model_len
            .unwrap_or(usize::MAX)
            .min(model.network.max_context())
            .min(verifier.as_ref().map_or(usize::MAX, |v| v.max_context())),
        architecture: model.architecture,
        device: device.clone(),
        sampling_defaults,
    });
    let _ = loaded.send(Ok(()));
    match &verifier {
        Some(verifier) => run(
            cfg,
            scheduler,
            &WithVerifier {
                model: &model,
                verifier,
            },
        ),
        None => run(cfg, scheduler, &model),
    }
}

/// The memory guard's probe: the test plan's fixed reading, else NVML for the CUDA
/// device (its ordinal is NVML's index inside a pod, which sees only its own GPUs).
fn gpu_probe(cfg: &RuntimeConfig, device: &Device) -> Result<Box<dyn GpuProbe>, String> {
    if let Some(fixed) = cfg.inject_faults.gpu_memory() {
        return Ok(Box::new(fixed));
    }
    if device.is_cpu() {
        return Err("the model runs on the CPU".into());
    }
    let index = match cfg.device {
        DeviceChoice::Cuda(n) => n as u32,
        _ => 0,
    };
    Ok(Box::new(NvmlProbe::open(index)?))
}

/// Runs the scheduler over `stepper`, behind the fault injector when a test asks.
fn run<M: Stepper + ?Sized>(cfg: &RuntimeConfig, scheduler: Scheduler, stepper: &M) {
    if cfg.inject_faults.is_empty() {
        scheduler.run(stepper);
    } else {
        tracing::warn!(plan = ?cfg.inject_faults, "TEST ONLY: --inject-faults fails forward passes or fixes the GPU reading");
        scheduler.run(&FaultInjector::new(stepper, cfg.inject_faults.clone()));
    }
}

/// Loads APD's verifier beside the diffusion model in `generator` (checked by
/// [`Generator::load_verifier`]) and warms it up with one verified answer.
fn load_verifier(
    dir: &Path,
    generator: &Generator,
    device: &Device,
) -> Result<CausalModel, String> {
    let verifier = generator
        .load_verifier(dir, device)
        .map_err(|e| e.to_string())?;
    let prompt = generator
        .prompt_ids(&Prompt::Text("warm up".into()))
        .map_err(|e| e.to_string())?;
    let params = SamplingParams::from_diffusion(DiffusionParams {
        commit: CommitRule::Verifier {
            mix: 0.5,
            max_lookahead: 4,
        },
        ..DiffusionParams::with_defaults(8)
    });
    let mut seq = Sequence::new(
        ModelKind::Diffusion,
        &prompt,
        &params,
        &generator.model.special,
        generator.model.network.max_context(),
    )
    .map_err(|e| e.to_string())?;
    let stepper = WithVerifier {
        model: &generator.model,
        verifier: &verifier,
    };
    run_to_end(&stepper, &mut seq).map_err(|e| format!("warm-up generation: {e}"))?;
    Ok(verifier)
}
