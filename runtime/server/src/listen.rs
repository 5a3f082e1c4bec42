//! The accept loop, ours rather than `axum::serve` because that one offers no deadline
//! for reading a request and no bound on open connections (issue 15, probe defect 6):
//! 100 half-sent headers held 100 connections open for ever.
//!
//! Every connection is HTTP/1.1 with a header read deadline (hyper closes a connection
//! whose request head has not arrived in time, idle keep-alive ones included). At most
//! `max_connections` are served at once; the ones past that are answered `503` with
//! `Retry-After` and closed, so a flood is told what happened instead of queueing in the
//! kernel. The body's own deadline is the request's business ([`crate::ApiJson`]).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::{header, HeaderValue};
use axum::response::IntoResponse;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tower::Service;

use crate::errors::ApiError;
use dfastllm_core::metrics::Metrics;

/// What one connection may hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    /// The most a client may take to send a request's head.
    pub header_read_timeout: Duration,
}

/// Serves `app` on `listener` until `stop` resolves; then stops accepting, asks every
/// open connection to close after its current request, and returns once they have.
pub async fn accept_loop(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    metrics: Arc<Metrics>,
    stop: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let (closing, _) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut stop => break,
            // Reap finished connections so the set stays the size of what is open.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (tcp, remote) = match accepted {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: the listener itself is fine, so
                // back off briefly instead of spinning on the same error.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Without TCP_NODELAY a streamed chunk written right after another waits for the
        // client's delayed ACK (Nagle): 40 ms added to every request measured on loopback.
        let _ = tcp.set_nodelay(true);
        let permit = permits.clone().try_acquire_owned().ok();
        let connection = Connection {
            app: app.clone(),
            remote,
            limits,
            metrics: metrics.clone(),
            closing: closing.subscribe(),
        };
        connections.spawn(connection.serve(TokioIo::new(tcp), permit));
    }
    drop(listener);
    let _ = closing.send(true);
    while connections.join_next().await.is_some() {}
}

struct Connection {
    app: Router,
    remote: SocketAddr,
    limits: Limits,
    metrics: Arc<Metrics>,
    closing: watch::Receiver<bool>,
}

impl Connection {
    async fn serve(
        mut self,
        io: TokioIo<tokio::net::TcpStream>,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
    ) {
        let admitted = permit.is_some();
        let _open = admitted.then(|| OpenConnection::new(self.metrics.clone()));
        let (app, remote, max) = (self.app.clone(), self.remote, self.limits.max_connections);
        let metrics = self.metrics.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            let mut app = app.clone();
            let metrics = metrics.clone();
            async move {
                if !admitted {
                    metrics.reject("too_many_connections");
                    return Ok::<_, Infallible>(over_the_limit(max));
                }
                req.extensions_mut().insert(ConnectInfo(remote));
                app.call(req).await
            }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_read_timeout)
            // A connection over the limit answers one request and closes.
            .keep_alive(admitted);
        let conn = builder.serve_connection(io, service);
        tokio::pin!(conn);
        tokio::select! {
            result = conn.as_mut() => log_end(result),
            () = async {
                // The guard wait_for returns must not live across the await below.
                let _ = self.closing.wait_for(|closing| *closing).await;
            } => {
                conn.as_mut().graceful_shutdown();
                log_end(conn.await);
            }
        }
        drop(permit);
    }
}

fn log_end(result: Result<(), hyper::Error>) {
    if let Err(e) = result {
        // Header deadlines, resets and half-sent requests end here: the client's doing.
        tracing::debug!(error = %e, "connection ended");
    }
}

/// The answer on a connection past `--max-connections`.
fn over_the_limit(max: usize) -> axum::response::Response {
    let mut response = ApiError::Unavailable(format!(
        "this server has {max} connections open (--max-connections); retry shortly"
    ))
    .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Counts an admitted connection in `dfastllm_http_connections` while it is open.
struct OpenConnection(Arc<Metrics>);

impl OpenConnection {
    fn new(metrics: Arc<Metrics>) -> Self {
        metrics.http_connections.inc();
        Self(metrics)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.http_connections.dec();
    }
}
