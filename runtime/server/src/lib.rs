//! The OpenAI-compatible HTTP server. It only validates, converts and streams; the
//! engine (one scheduler thread) owns the model. Inference routes sit behind one
//! middleware that checks drain state, API keys and rate limits; `/health`, `/readyz`
//! and `/metrics` stay open for probes and scrapers. [`launch`] wires a whole serving
//! process (engine thread, loading, readiness, HTTP) for the binary and the tests.

pub mod auth;
pub mod config;
pub mod errors;
mod handlers;
pub mod launch;
pub mod openai;
pub mod text;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::Router;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tracing::Instrument;

use crate::config::RuntimeConfig;
use auth::{ApiKeys, RateLimiter};
use dfastllm_core::engine::EngineHandle;
use dfastllm_core::metrics::{Metrics, RequestLabels};
use dfastllm_core::models::generation_config::SamplingDefaults;
use dfastllm_core::models::{Architecture, SpecialTokens};
use dfastllm_core::tokenizer::TextTokenizer;
use errors::ApiError;
pub use launch::{launch, LaunchError, Launched};

/// What the HTTP layer needs to know about the loaded model.
pub struct ModelInfo {
    pub tokenizer: TextTokenizer,
    pub special: SpecialTokens,
    pub max_context: usize,
    pub architecture: Architecture,
    pub device: candle_core::Device,
    /// generation_config.json's sampling defaults, when `model.generation_config` is
    /// auto; below the request's and the deployment's own values.
    pub sampling_defaults: SamplingDefaults,
}

pub struct Inner {
    pub config: RuntimeConfig,
    pub engine: EngineHandle,
    pub metrics: Arc<Metrics>,
    model: OnceLock<Arc<ModelInfo>>,
    keys: ApiKeys,
    limiter: RateLimiter,
    draining: AtomicBool,
    inflight: AtomicUsize,
    idle: Notify,
    started: Instant,
}

/// Shared server state; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

impl std::ops::Deref for AppState {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    pub fn new(config: RuntimeConfig, engine: EngineHandle, metrics: Arc<Metrics>) -> Self {
        Self(Arc::new(Inner {
            keys: ApiKeys::new(config.api_keys.clone()),
            limiter: RateLimiter::new(config.rate_limit_requests_per_minute),
            config,
            engine,
            metrics,
            model: OnceLock::new(),
            draining: AtomicBool::new(false),
            inflight: AtomicUsize::new(0),
            idle: Notify::new(),
            started: Instant::now(),
        }))
    }

    /// Marks the model loaded and warmed up: `/readyz` turns 200.
    pub fn set_ready(&self, info: ModelInfo) {
        let _ = self.model.set(Arc::new(info));
    }

    pub fn is_ready(&self) -> bool {
        self.model.get().is_some()
    }

    fn ready_model(&self) -> Result<Arc<ModelInfo>, ApiError> {
        self.model.get().cloned().ok_or_else(|| {
            ApiError::Unavailable(
                "the model is still loading; retry when /readyz answers 200".into(),
            )
        })
    }

    /// Every name a request's `model` field may use.
    pub fn served_names(&self) -> Vec<String> {
        std::iter::once(self.config.served_name.clone())
            .chain(self.config.aliases.iter().cloned())
            .collect()
    }

    fn check_model(&self, requested: Option<&str>) -> Result<(), ApiError> {
        match requested {
            None => Ok(()),
            Some(name) if self.served_names().iter().any(|n| n == name) => Ok(()),
            Some(name) => Err(ApiError::ModelNotFound(format!(
                "the model {name:?} does not exist; this server serves: {}",
                self.served_names().join(", ")
            ))),
        }
    }

    /// Counts an in-flight inference request until the guard drops (a streaming
    /// response moves it into its stream), so draining waits for it.
    fn track(&self) -> InflightGuard {
        self.inflight.fetch_add(1, Ordering::SeqCst);
        InflightGuard(self.clone())
    }

    /// Stops admitting inference requests (they get 503) and resolves once none is in
    /// flight.
    pub async fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        loop {
            let idle = self.idle.notified();
            if self.inflight.load(Ordering::SeqCst) == 0 {
                return;
            }
            idle.await;
        }
    }
}

struct InflightGuard(AppState);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        if self.0.inflight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// JSON body extractor whose failures are OpenAI errors (400, or 413 over the limit).
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::BodyTooLarge(state.config.max_body_bytes)
            } else {
                ApiError::InvalidRequest {
                    message: format!("could not read the request body: {rejection}"),
                    param: None,
                }
            }
        })?;
        serde_json::from_slice(&bytes)
            .map(ApiJson)
            .map_err(|e| ApiError::InvalidRequest {
                message: format!("invalid JSON body: {e}"),
                param: None,
            })
    }
}

/// Drain state, API key and rate limit, in that order, for inference routes.
async fn admission(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let client = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_default();
    let authorization = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let verdict = if state.draining.load(Ordering::SeqCst) {
        Err(ApiError::Unavailable("the server is shutting down".into()))
    } else {
        state.keys.check(authorization.as_deref()).and_then(|()| {
            // Keys identify clients when they are on; addresses otherwise.
            let who = match (&authorization, state.keys.enabled()) {
                (Some(a), true) => a.clone(),
                _ => client,
            };
            state.limiter.check(&who)
        })
    };
    match verdict {
        Ok(()) => next.run(req).await,
        Err(e) => {
            state.metrics.reject(e.reject_reason());
            e.into_response()
        }
    }
}

fn is_inference(path: &str) -> bool {
    path.starts_with("/v1/") || path == "/generate"
}

/// Request id (honoured from `x-request-id` or generated, always echoed), one JSON log
/// line per request, and the request counters.
async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let start = Instant::now();
    let span = tracing::info_span!("request", request_id = %request_id);
    let mut response = next.run(req).instrument(span).await;
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", v);
    }
    let status = response.status().as_u16();
    let elapsed = start.elapsed();
    if is_inference(&path) {
        state
            .metrics
            .requests
            .get_or_create(&RequestLabels {
                endpoint: path.clone(),
                model: state.config.served_name.clone(),
                status: status.to_string(),
            })
            .inc();
        if status < 400 {
            state
                .metrics
                .request_duration
                .observe(elapsed.as_secs_f64());
        }
        tracing::info!(request_id = %request_id, method, path, status, elapsed_ms = elapsed.as_secs_f64() * 1e3, "request");
    } else {
        tracing::debug!(request_id = %request_id, method, path, status, "request");
    }
    response
}

async fn not_found() -> ApiError {
    ApiError::ModelNotFound(
        "no such route; see /v1/completions, /v1/chat/completions, /v1/models, /generate".into(),
    )
}

pub fn router(state: AppState) -> Router {
    let inference = Router::new()
        .route("/v1/completions", post(handlers::completions))
        .route("/v1/chat/completions", post(handlers::chat_completions))
        .route("/v1/models", get(handlers::models))
        .route("/generate", post(handlers::generate))
        .layer(from_fn_with_state(state.clone(), admission));
    Router::new()
        .merge(inference)
        .route("/health", get(handlers::health))
        .route("/readyz", get(handlers::readyz))
        .route("/metrics", get(handlers::metrics))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .layer(from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Serves until `shutdown` resolves, then drains: new inference requests get 503 while
/// in-flight ones finish, for at most `shutdown_grace_seconds`.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let grace = Duration::from_secs(state.config.shutdown_grace_seconds);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let drain_state = state.clone();
    let drained = async move {
        shutdown.await;
        tracing::info!(
            grace_seconds = grace.as_secs(),
            "shutdown requested: draining"
        );
        if tokio::time::timeout(grace, drain_state.drain())
            .await
            .is_err()
        {
            tracing::warn!("grace period over with requests still in flight");
        }
        let _ = stop_tx.send(());
    };
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    // Without TCP_NODELAY a streamed chunk written right after another waits for the
    // client's delayed ACK (Nagle): 40 ms added to every request measured on loopback.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let server = axum::serve(listener, app).with_graceful_shutdown(drained);
    // After the drain, idle keep-alive connections close at once; give open streams one
    // more second rather than waiting on a client that never reads.
    tokio::select! {
        result = server => result,
        () = async {
            let _ = stop_rx.await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        } => Ok(()),
    }
}
