//! The test stack shared by the server's integration tests: a real engine on a demo
//! checkpoint behind the real HTTP server on loopback.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use dfastllm_core::demo::{write_demo_model, DemoSpec};
use dfastllm_core::device;
use dfastllm_core::engine::{engine, EngineConfig, Scheduler};
use dfastllm_core::generation::Generator;
use dfastllm_core::metrics::Metrics;
use dfastllm_core::models::{Architecture, DTypeChoice, LoadedModel};
use dfastllm_server::config::{ConfigLayer, FlagOrigins, RuntimeConfig};
use dfastllm_server::{launch, serve, AppState, ModelInfo};
use serde_json::Value;

#[derive(Clone, Copy, PartialEq)]
pub enum EngineMode {
    /// The scheduler runs from the start.
    Running,
    /// The model is ready but nothing ever schedules: requests wait in the queue.
    Stalled,
    /// The test starts the scheduler itself (`Stack::start_scheduler`).
    Manual,
}

pub struct Stack {
    pub base: String,
    pub state: AppState,
    pub shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    pub server: tokio::task::JoinHandle<Result<usize, String>>,
    pub parked: Option<(Scheduler, LoadedModel)>,
    pub _dir: tempfile::TempDir,
}

pub fn config(dir: &std::path::Path) -> RuntimeConfig {
    // The defaults table, with what these tests rely on set explicitly.
    let mut cfg =
        RuntimeConfig::from_layers(&ConfigLayer::default(), &FlagOrigins::default(), None).unwrap();
    cfg.model_path = dir.to_path_buf();
    cfg.served_name = "demo".into();
    cfg.aliases = vec!["gpt-3.5-turbo".into()];
    cfg.device = device::DeviceChoice::Cpu;
    cfg.dtype = DTypeChoice::F32;
    cfg.host = "127.0.0.1".into();
    cfg.port = 0;
    cfg.max_concurrent_requests = 8;
    cfg.max_queue = 16;
    cfg.request_timeout_seconds = 60;
    cfg.max_body_bytes = 64 * 1024;
    cfg.decoding.gen_length = 16;
    cfg
}

pub async fn start(mode: EngineMode, tweak: impl FnOnce(&mut RuntimeConfig)) -> Stack {
    let dir = tempfile::tempdir().unwrap();
    let spec = DemoSpec {
        max_context: 256,
        ..DemoSpec::tiny(Architecture::Llada)
    };
    write_demo_model(&spec, dir.path()).unwrap();
    let mut cfg = config(dir.path());
    tweak(&mut cfg);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        let _ = rx.await;
    };
    if mode == EngineMode::Running {
        // The binary's own wiring: load, warm up, mark ready, schedule.
        let mut launched = launch(cfg, listener, shutdown).unwrap();
        launched.ready().await.unwrap();
        let state = launched.state.clone();
        let server =
            tokio::spawn(
                async move { launched.wait().await.map(|()| 0).map_err(|e| e.to_string()) },
            );
        return Stack {
            base,
            state,
            shutdown: Some(tx),
            server,
            parked: None,
            _dir: dir,
        };
    }
    let metrics = Arc::new(Metrics::new());
    let (handle, scheduler) = engine(
        EngineConfig {
            max_concurrent_requests: cfg.max_concurrent_requests,
            max_queue: cfg.max_queue,
            batch_wait: Duration::from_millis(cfg.batch_wait_ms),
            breaker: cfg.breaker(),
        },
        metrics.clone(),
    );
    let state = AppState::new(cfg, handle, metrics);
    let generator = Generator::load(
        dir.path(),
        &device::select(device::DeviceChoice::Cpu).unwrap(),
        DTypeChoice::F32,
    )
    .unwrap();
    let Generator { model, tokenizer } = generator;
    state.set_ready(ModelInfo {
        tokenizer,
        special: model.special.clone(),
        max_context: model.network.max_context(),
        architecture: model.architecture,
        device: candle_core::Device::Cpu,
        sampling_defaults: model.sampling_defaults.clone(),
    });
    // Stalled keeps the receiver alive and never runs it; Manual waits for the test's
    // `Stack::start_scheduler`.
    let parked = Some((scheduler, model));
    let server_state = state.clone();
    let server = tokio::spawn(async move {
        serve(listener, server_state, shutdown)
            .await
            .map_err(|e| e.to_string())
    });
    Stack {
        base,
        state,
        shutdown: Some(tx),
        server,
        parked,
        _dir: dir,
    }
}

impl Stack {
    pub fn start_scheduler(&mut self) {
        let (scheduler, model) = self.parked.take().expect("a parked scheduler");
        std::thread::spawn(move || scheduler.run(&model));
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = reqwest::Client::new()
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.base))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

/// Value of an unlabelled metric line `name value`.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Polls `check` until it holds; panics with the last observation after `limit`.
pub async fn eventually<T: std::fmt::Debug>(
    limit: Duration,
    mut probe: impl AsyncFnMut() -> T,
    check: impl Fn(&T) -> bool,
) -> T {
    let until = Instant::now() + limit;
    loop {
        let seen = probe().await;
        if check(&seen) {
            return seen;
        }
        assert!(
            Instant::now() < until,
            "condition not met within {limit:?}; last saw {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends a completion request in the background; resolves to its status and body.
pub fn spawn_completion(stack: &Stack, body: Value) -> tokio::task::JoinHandle<(u16, Value)> {
    let url = format!("{}/v1/completions", stack.base);
    tokio::spawn(async move {
        let r = reqwest::Client::new()
            .post(url)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    })
}

/// Waits until `n` sequences sit in the engine's admission queue.
pub async fn wait_queued(stack: &Stack, n: usize) {
    eventually(
        Duration::from_secs(10),
        async || stack.state.engine.waiting(),
        |w| *w == n,
    )
    .await;
}

pub fn assert_error(status: u16, body: &Value, expected: u16, kind: &str) {
    assert_eq!(status, expected, "{body}");
    assert_eq!(body["error"]["type"], kind, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
}
