//! The OpenAI-compatible HTTP server. It only validates, converts and streams; the
//! engine (one scheduler thread) owns the model. Inference routes sit behind one
//! middleware that checks drain state, API keys and rate limits; `/health`, `/readyz`
//! and `/metrics` stay open for probes and scrapers. [`launch`] wires a whole serving
//! process (engine thread, loading, readiness, HTTP) for the binary and the tests.

pub mod auth;
pub mod config;
pub mod errors;
mod handlers;
mod idempotency;
pub mod launch;
mod listen;
pub mod openai;
pub mod response_format;
pub mod text;
pub mod tools;

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
use axum::Router;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
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
    /// `--metrics-api-key`: `/metrics`'s own key (off when not given).
    metrics_key: ApiKeys,
    limiter: RateLimiter,
    /// Remembered answers for `Idempotency-Key` repeats (off when the TTL is 0).
    idempotency: Option<Arc<idempotency::Idempotency>>,
    /// Failed API-key attempts per client address.
    auth_failures: RateLimiter,
    draining: AtomicBool,
    /// Set when the shutdown grace period ran out: what is still running is answered
    /// 503 at once (in-band on a stream) rather than cut off without a word.
    cut: watch::Sender<bool>,
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
            metrics_key: ApiKeys::new(config.metrics_api_key.iter().cloned().collect()),
            limiter: RateLimiter::new(config.rate_limit_requests_per_minute),
            idempotency: idempotency::Idempotency::new(
                config.idempotency_ttl_seconds,
                config.idempotency_max_bytes,
                metrics.clone(),
            ),
            auth_failures: RateLimiter::new(auth::AUTH_FAILURES_PER_MINUTE),
            config,
            engine,
            metrics,
            model: OnceLock::new(),
            draining: AtomicBool::new(false),
            cut: watch::Sender::new(false),
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
            Some(name) => {
                // Echo a bounded prefix: a 100 KB name is not sent back whole.
                let shown: String = name.chars().take(MAX_ECHOED_CHARS).collect();
                let cut = if shown.len() < name.len() { "..." } else { "" };
                Err(ApiError::ModelNotFound(format!(
                    "the model {shown:?}{cut} does not exist; this server serves: {}",
                    self.served_names().join(", ")
                )))
            }
        }
    }

    /// Whether `authorization` carries one of the API keys (always, when keys are off):
    /// `/health` shows its detail only then.
    pub(crate) fn key_holder(&self, authorization: Option<&str>) -> bool {
        self.keys.check(authorization).is_ok()
    }

    /// `/metrics`' check: `--metrics-api-key` when given, else open.
    pub(crate) fn check_metrics_key(&self, authorization: Option<&str>) -> Result<(), ApiError> {
        self.metrics_key.check(authorization).map(|_| ())
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

impl AppState {
    /// Resolves once the shutdown grace period has run out (at once if it has).
    pub(crate) fn grace_over(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut cut = self.cut.subscribe();
        async move {
            let _ = cut.wait_for(|over| *over).await;
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
        let bytes = read_body(req, state).await?;
        state.metrics.request_size_bytes.observe(bytes.len() as f64);
        serde_json::from_slice(&bytes)
            .map(ApiJson)
            .map_err(|e| ApiError::InvalidRequest {
                message: format!("invalid JSON body: {}", api_terms(&e.to_string())),
                param: None,
            })
    }
}

/// A request's whole body, within `--max-body-bytes` (413) and `--read-timeout-seconds`
/// (408).
pub(crate) async fn read_body(req: Request, state: &AppState) -> Result<Bytes, ApiError> {
    let limit = state.config.max_body_bytes;
    // A declared length over the limit is refused before waiting for a byte of it:
    // `Content-Length: 10^12` with no body would otherwise hold the request open.
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::BodyTooLarge(limit));
    }
    let deadline = Duration::from_secs(state.config.read_timeout_seconds);
    let read = tokio::time::timeout(deadline, Bytes::from_request(req, state)).await;
    read.map_err(|_| ApiError::BodyTimeout(state.config.read_timeout_seconds))?
        .map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::BodyTooLarge(limit)
            } else {
                ApiError::InvalidRequest {
                    message: format!("could not read the request body: {rejection}"),
                    param: None,
                }
            }
        })
}

/// A serde message in the API's terms: what the client sent wrong, not which Rust type
/// failed to parse (`expected struct CompletionRequest`, `untagged enum OneOrMany`).
fn api_terms(message: &str) -> String {
    let mut out = message.to_string();
    while let Some(at) = out.find("expected struct ") {
        let name_end = out[at + 16..]
            .find(|c: char| !c.is_alphanumeric())
            .map_or(out.len(), |i| at + 16 + i);
        out.replace_range(at..name_end, "expected a JSON object");
    }
    for (rust, api) in [
        (
            "data did not match any variant of untagged enum OneOrMany",
            "expected a string or an array of strings",
        ),
        (
            "data did not match any variant of untagged enum Content",
            "expected a string or an array of content parts",
        ),
    ] {
        out = out.replace(rust, api);
    }
    out
}

/// Drain state, API key and rate limit, in that order, for inference routes.
async fn admission(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
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
        match state.keys.check(authorization.as_deref()) {
            // Keys identify clients when they are on (by which key, not its spelling);
            // addresses otherwise.
            Ok(Some(key)) => {
                req.extensions_mut()
                    .insert(idempotency::ClientKey(Some(key)));
                state.limiter.check(&format!("key {key}"))
            }
            Ok(None) => state.limiter.check(&format!("address {client}")),
            // Guessing keys is rate limited per address, whatever the limit for clients.
            Err(e) => state.auth_failures.check(&client).and(Err(e)),
        }
    };
    match verdict {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// The most characters of a client's value an error message repeats.
const MAX_ECHOED_CHARS: usize = 256;

/// The `endpoint` label of a request: its route template when it matched an inference
/// route, `other` when it matched none, `None` (not counted) for probes and metrics.
/// Never the raw path, which a client could make unique per request.
fn endpoint_label(matched: Option<&str>) -> Option<String> {
    match matched {
        Some(route) if route.starts_with("/v1/") || route == "/generate" || route == "/models" => {
            Some(route.into())
        }
        Some(_) => None,
        None => Some("other".into()),
    }
}

/// A client's `x-request-id` when it is safe to log and echo (letters, digits and
/// `-_.:`, at most 128), else a fresh one: a text log line cannot be forged with quotes
/// or control characters.
fn request_id(header: Option<&str>) -> String {
    header
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 128
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string())
}

/// The trace id of a W3C `traceparent` header (`00-<32 hex>-<16 hex>-<2 hex>`), when it is
/// one: logged beside the request id so a request is found from the caller's trace.
/// Anything else is ignored (never logged: it is the client's text).
fn trace_id(header: Option<&str>) -> Option<&str> {
    let parts: Vec<&str> = header?.trim().split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    match parts.as_slice() {
        [version, trace, parent, flags, ..]
            if hex(version, 2)
                && *version != "ff"
                && hex(trace, 32)
                && trace.bytes().any(|b| b != b'0')
                && hex(parent, 16)
                && hex(flags, 2) =>
        {
            Some(trace)
        }
        _ => None,
    }
}

/// Request id (honoured from `x-request-id` or generated, always echoed), one JSON log
/// line per request, and the request counters.
async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let request_id = request_id(
        req.headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
    );
    let trace_id = trace_id(
        req.headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok()),
    )
    .map(str::to_string);
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let endpoint = endpoint_label(
        req.extensions()
            .get::<axum::extract::MatchedPath>()
            .map(|m| m.as_str()),
    );
    let start = Instant::now();
    let span = tracing::info_span!("request", request_id = %request_id, trace_id = trace_id.as_deref().unwrap_or_default());
    let mut response = next.run(req).instrument(span).await;
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", v);
    }
    let status = response.status().as_u16();
    let elapsed = start.elapsed();
    if let Some(reason) = response.extensions().get::<errors::Rejected>() {
        state.metrics.reject(reason.0);
    }
    if let Some(endpoint) = endpoint {
        // Whole bodies know their size; a stream counts its own events (handlers/sse.rs).
        if let Some(bytes) = axum::body::HttpBody::size_hint(response.body()).exact() {
            state.metrics.response_size_bytes.observe(bytes as f64);
        }
        state
            .metrics
            .requests
            .get_or_create(&RequestLabels {
                endpoint,
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
        tracing::info!(request_id = %request_id, trace_id = trace_id.as_deref(), method, path, status, elapsed_ms = elapsed.as_secs_f64() * 1e3, "request");
    } else {
        tracing::debug!(request_id = %request_id, method, path, status, "request");
    }
    response
}

async fn not_found(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    let path: String = uri.path().chars().take(MAX_ECHOED_CHARS).collect();
    ApiError::RouteNotFound(format!(
        "no route {method} {path}; see /v1/completions, /v1/chat/completions, /v1/models, /generate"
    ))
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    let path: String = uri.path().chars().take(MAX_ECHOED_CHARS).collect();
    ApiError::MethodNotAllowed(format!("{method} is not allowed on {path}"))
}

pub fn router(state: AppState) -> Router {
    let inference = Router::new()
        .route("/v1/completions", post(handlers::completions))
        .route("/v1/chat/completions", post(handlers::chat_completions))
        .route("/v1/models", get(handlers::models))
        // vLLM serves the list here too; clients written against it call it.
        .route("/models", get(handlers::models))
        .route("/generate", post(handlers::generate))
        // Unknown routes pass the key check and rate limit too: probing them without a
        // key is a 401, and floods of them are limited like any other request.
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Inside admission: a refused request never claims a key, and the key that
        // admitted it scopes its idempotency key.
        .layer(from_fn_with_state(state.clone(), idempotency::idempotency))
        .layer(from_fn_with_state(state.clone(), admission));
    Router::new()
        .merge(inference)
        .route("/health", get(handlers::health))
        .route("/readyz", get(handlers::readyz))
        .route("/metrics", get(handlers::metrics))
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .layer(from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Serves until `shutdown` resolves, then drains: new inference requests get 503 while
/// in-flight ones finish, for at most `shutdown_grace_seconds`. What is still running
/// then is answered 503 (in-band on a stream) and counted: the returned number.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<usize> {
    let grace = Duration::from_secs(state.config.shutdown_grace_seconds);
    let (cut_tx, cut_rx) = tokio::sync::oneshot::channel::<usize>();
    let drain_state = state.clone();
    let drained = async move {
        shutdown.await;
        tracing::info!(
            grace_seconds = grace.as_secs(),
            "shutdown requested: draining"
        );
        let mut cut = 0;
        if tokio::time::timeout(grace, drain_state.drain())
            .await
            .is_err()
        {
            cut = drain_state.inflight.load(Ordering::SeqCst);
            tracing::warn!(
                requests_cut = cut,
                "grace period over with requests still in flight: answering them 503"
            );
            drain_state.cut.send_replace(true);
            // The 503s are written at once; a client that stopped reading is not waited
            // for beyond this.
            let _ = tokio::time::timeout(CUT_FLUSH, drain_state.drain()).await;
        }
        let _ = cut_tx.send(cut);
    };
    let limits = listen::Limits {
        max_connections: state.config.max_connections,
        header_read_timeout: Duration::from_secs(state.config.read_timeout_seconds),
    };
    let metrics = state.metrics.clone();
    let app = router(state);
    let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
    let server = listen::accept_loop(listener, app, limits, metrics, async move {
        drained.await;
        let _ = stopped_tx.send(());
    });
    // After the drain, idle keep-alive connections close at once; a stream whose client
    // never reads is given one more second, not waited on for ever.
    tokio::select! {
        () = server => {}
        () = async {
            let _ = stopped_rx.await;
            tokio::time::sleep(CUT_FLUSH).await;
        } => {}
    }
    Ok(cut_rx.await.unwrap_or(0))
}

/// How long the answers to cut requests are given to reach their clients.
const CUT_FLUSH: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_errors_say_what_was_sent_wrong_not_which_rust_type_failed() {
        let e = serde_json::from_str::<openai::CompletionRequest>("[1]").unwrap_err();
        let m = api_terms(&e.to_string());
        assert!(
            m.contains("expected a JSON object") && !m.contains("struct"),
            "{m}"
        );
        let e = serde_json::from_str::<openai::CompletionRequest>(r#"{"prompt": 5}"#).unwrap_err();
        let m = api_terms(&e.to_string());
        assert!(
            !m.contains("enum") && m.contains("a string or an array"),
            "{m}"
        );
    }

    #[test]
    fn labels_are_route_templates_and_request_ids_are_safe() {
        assert_eq!(
            endpoint_label(Some("/v1/completions")).as_deref(),
            Some("/v1/completions")
        );
        assert_eq!(endpoint_label(None).as_deref(), Some("other"));
        assert_eq!(endpoint_label(Some("/health")), None);
        assert_eq!(request_id(Some("abc-1.2:3_x")), "abc-1.2:3_x");
        assert_eq!(request_id(Some("a\" level=\"x")).len(), 32);
        assert_eq!(request_id(Some("a\nb")).len(), 32);
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(trace_id(Some(tp)), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473\"-00f067aa0ba902b7-01",
            "garbage",
        ] {
            assert_eq!(trace_id(Some(bad)), None, "{bad}");
        }
    }
}
