//! `Idempotency-Key` on POST: a client that retries after a dropped connection gets the
//! answer it already paid for instead of a second generation. A repeat with the same key
//! and the same request (method, path, body bytes) within the TTL is answered with the
//! first response, replayed byte for byte (a stream is replayed whole); a repeat while
//! the first is still running waits for it. The same key with a different request is a
//! 422 naming the header. Keys are scoped per API key (one scope when keys are off), and
//! only successful answers are remembered: an error (429, 503, 504...) or a first client
//! that leaves mid-answer forgets the key, so the retry runs afresh. Memory is bounded
//! by `--idempotency-max-bytes`; the oldest answers go first.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::errors::ApiError;
use crate::{read_body, AppState};
use dfastllm_core::metrics::Metrics;

pub const HEADER: &str = "idempotency-key";
/// Set on every replayed response, as Stripe's API does.
pub const REPLAYED: &str = "idempotent-replayed";
/// Stripe's bound, which clients generating UUIDs or hashes stay well within.
const MAX_KEY_LEN: usize = 255;
/// What a remembered entry costs beyond its key and body (map slot, headers).
const ENTRY_OVERHEAD: usize = 128;

/// Which API key a request authenticated with (`None` when keys are off): set by the
/// admission middleware, read here to scope idempotency keys.
#[derive(Debug, Clone, Copy)]
pub struct ClientKey(pub Option<usize>);

type Fingerprint = [u8; 32];

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Slot {
    api_key: Option<usize>,
    key: String,
}

/// A remembered successful response.
#[derive(Debug)]
pub struct Recorded {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

type Done = watch::Receiver<Option<Arc<Recorded>>>;

enum Entry {
    Running {
        id: u64,
        fingerprint: Fingerprint,
        done: Done,
    },
    Done {
        fingerprint: Fingerprint,
        recorded: Arc<Recorded>,
        at: Instant,
        /// Finish order: the lowest is forgotten first when memory runs short.
        order: u64,
        cost: usize,
    },
}

#[derive(Default)]
struct Table {
    entries: HashMap<Slot, Entry>,
    /// Cost of the remembered (done) entries.
    bytes: usize,
}

impl Table {
    fn remove(&mut self, slot: &Slot) {
        if let Some(Entry::Done { cost, .. }) = self.entries.remove(slot) {
            self.bytes -= cost;
        }
    }
}

/// What a request with a key does.
enum Claim {
    /// First with this key: run it, and record the answer through the ticket.
    Owner(Ticket),
    Replay(Arc<Recorded>),
    /// The first with this key is running: wait for its answer.
    Wait(Done),
    Conflict,
}

pub struct Idempotency {
    ttl: Duration,
    max_bytes: usize,
    table: Mutex<Table>,
    next_id: AtomicU64,
    metrics: Arc<Metrics>,
}

impl Idempotency {
    /// `None` when `ttl_seconds` is 0: keys are then ignored, as before they existed.
    pub fn new(ttl_seconds: u64, max_bytes: usize, metrics: Arc<Metrics>) -> Option<Arc<Self>> {
        (ttl_seconds > 0).then(|| {
            Arc::new(Self {
                ttl: Duration::from_secs(ttl_seconds),
                max_bytes,
                table: Mutex::new(Table::default()),
                next_id: AtomicU64::new(0),
                metrics,
            })
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // The table stays consistent between statements: a panic elsewhere leaves it usable.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn claim(self: &Arc<Self>, slot: Slot, fingerprint: Fingerprint, now: Instant) -> Claim {
        let mut table = self.lock();
        let expired = matches!(
            table.entries.get(&slot),
            Some(Entry::Done { at, .. }) if now.saturating_duration_since(*at) >= self.ttl
        );
        if expired {
            table.remove(&slot);
            self.metrics.idempotency_cache_bytes.set(table.bytes as i64);
        }
        let seen = match table.entries.get(&slot) {
            Some(Entry::Done {
                fingerprint: f,
                recorded,
                ..
            }) => Some((*f, Claim::Replay(recorded.clone()))),
            Some(Entry::Running {
                fingerprint: f,
                done,
                ..
            }) => Some((*f, Claim::Wait(done.clone()))),
            None => None,
        };
        if let Some((f, claim)) = seen {
            return if f == fingerprint {
                claim
            } else {
                Claim::Conflict
            };
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(None);
        table.entries.insert(
            slot.clone(),
            Entry::Running {
                id,
                fingerprint,
                done: rx,
            },
        );
        Claim::Owner(Ticket {
            store: self.clone(),
            slot,
            id,
            fingerprint,
            done: tx,
            finished: false,
        })
    }
}

/// The running request's claim on its key: `finish` remembers the answer; dropped
/// unfinished (an error, a client gone) it forgets the key, and waiters try again.
pub struct Ticket {
    store: Arc<Idempotency>,
    slot: Slot,
    id: u64,
    fingerprint: Fingerprint,
    done: watch::Sender<Option<Arc<Recorded>>>,
    finished: bool,
}

impl Ticket {
    fn finish(mut self, recorded: Recorded) {
        let store = self.store.clone();
        let recorded = Arc::new(recorded);
        let headers: usize = recorded
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len())
            .sum();
        let cost = recorded.body.len() + self.slot.key.len() + headers + ENTRY_OVERHEAD;
        {
            let mut table = store.lock();
            let ours = matches!(
                table.entries.get(&self.slot),
                Some(Entry::Running { id, .. }) if *id == self.id
            );
            if ours {
                table.entries.remove(&self.slot);
                if cost <= store.max_bytes {
                    make_room(&mut table, cost, store.max_bytes, store.ttl);
                    table.bytes += cost;
                    table.entries.insert(
                        self.slot.clone(),
                        Entry::Done {
                            fingerprint: self.fingerprint,
                            recorded: recorded.clone(),
                            at: Instant::now(),
                            order: store.next_id.fetch_add(1, Ordering::Relaxed),
                            cost,
                        },
                    );
                }
                store
                    .metrics
                    .idempotency_cache_bytes
                    .set(table.bytes as i64);
            }
        }
        // Waiters get the answer even when it was too large to remember.
        self.done.send_replace(Some(recorded));
        self.finished = true;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let mut table = self.store.lock();
        if matches!(
            table.entries.get(&self.slot),
            Some(Entry::Running { id, .. }) if *id == self.id
        ) {
            table.entries.remove(&self.slot);
        }
        // Dropping the sender wakes the waiters, who then claim the key themselves.
    }
}

/// Forgets expired answers, then the oldest, until `cost` more fits in `max_bytes`.
fn make_room(table: &mut Table, cost: usize, max_bytes: usize, ttl: Duration) {
    if table.bytes + cost <= max_bytes {
        return;
    }
    let now = Instant::now();
    let mut done: Vec<(u64, Instant, Slot)> = table
        .entries
        .iter()
        .filter_map(|(slot, e)| match e {
            Entry::Done { at, order, .. } => Some((*order, *at, slot.clone())),
            Entry::Running { .. } => None,
        })
        .collect();
    done.sort_by_key(|(order, ..)| *order);
    for (_, at, slot) in done {
        let expired = now.saturating_duration_since(at) >= ttl;
        if !expired && table.bytes + cost <= max_bytes {
            break;
        }
        table.remove(&slot);
    }
}

/// The header's key, or a 400 naming it.
fn parse_key(value: &HeaderValue) -> Result<String, ApiError> {
    let bad = || {
        ApiError::invalid(
            "Idempotency-Key",
            format!(
                "the Idempotency-Key header must be 1 to {MAX_KEY_LEN} printable ASCII characters"
            ),
        )
    };
    let text = value.to_str().map_err(|_| bad())?.trim();
    let printable = text.bytes().all(|b| (0x20..0x7f).contains(&b));
    if text.is_empty() || text.len() > MAX_KEY_LEN || !printable {
        return Err(bad());
    }
    Ok(text.to_string())
}

fn fingerprint(method: &Method, uri: &Uri, body: &[u8]) -> Fingerprint {
    let mut h = Sha256::new();
    h.update(method.as_str());
    h.update([0]);
    h.update(uri.path_and_query().map_or("", |p| p.as_str()));
    h.update([0]);
    h.update(body);
    h.finalize().into()
}

/// Counts a repeat waiting for its first, until it stops (answered or gone).
struct Waiting<'a>(&'a Metrics);

impl<'a> Waiting<'a> {
    fn new(metrics: &'a Metrics) -> Self {
        metrics.idempotency_waiting.inc();
        Self(metrics)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.idempotency_waiting.dec();
    }
}

fn replay(state: &AppState, recorded: &Recorded) -> Response {
    state.metrics.idempotent_replays.inc();
    let mut response = Response::new(Body::from(recorded.body.clone()));
    *response.status_mut() = recorded.status;
    *response.headers_mut() = recorded.headers.clone();
    response
        .headers_mut()
        .insert(REPLAYED, HeaderValue::from_static("true"));
    response
}

/// Passes `response` through to its client while recording it for the ticket: a whole
/// body or a stream alike, finished when its last byte went out.
fn record(response: Response, ticket: Ticket) -> Response {
    if !response.status().is_success() {
        return response;
    }
    let (parts, body) = response.into_parts();
    let mut headers = parts.headers.clone();
    headers.remove(axum::http::header::CONTENT_LENGTH);
    let limit = ticket.store.max_bytes;
    struct Tee {
        inner: axum::body::BodyDataStream,
        ticket: Ticket,
        status: StatusCode,
        headers: HeaderMap,
        buf: Vec<u8>,
        /// Past the memory bound: passed through, not remembered.
        over: bool,
    }
    let tee = Tee {
        inner: body.into_data_stream(),
        ticket,
        status: parts.status,
        headers,
        buf: Vec::new(),
        over: false,
    };
    let stream = futures::stream::unfold(Some(tee), move |tee| async move {
        let mut tee = tee?;
        match tee.inner.next().await {
            Some(Ok(chunk)) => {
                if !tee.over && tee.buf.len() + chunk.len() <= limit {
                    tee.buf.extend_from_slice(&chunk);
                } else {
                    tee.over = true;
                    tee.buf = Vec::new();
                }
                Some((Ok(chunk), Some(tee)))
            }
            // The ticket drops with `tee`: the key is forgotten.
            Some(Err(e)) => Some((Err(e), None)),
            None => {
                if !tee.over {
                    tee.ticket.finish(Recorded {
                        status: tee.status,
                        headers: tee.headers,
                        body: Bytes::from(tee.buf),
                    });
                }
                None
            }
        }
    });
    Response::from_parts(parts, Body::from_stream(stream))
}

/// The middleware on inference routes (inside admission, which names the API key).
pub(crate) async fn idempotency(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let Some(store) = state.idempotency.clone() else {
        return next.run(req).await;
    };
    if req.method() != Method::POST {
        return next.run(req).await;
    }
    let Some(raw) = req.headers().get(HEADER) else {
        return next.run(req).await;
    };
    let key = match parse_key(raw) {
        Ok(key) => key,
        Err(e) => return e.into_response(),
    };
    let api_key = req.extensions().get::<ClientKey>().and_then(|c| c.0);
    let (parts, body) = req.into_parts();
    let bytes = match read_body(Request::from_parts(parts.clone(), body), &state).await {
        Ok(bytes) => bytes,
        Err(e) => return e.into_response(),
    };
    let print = fingerprint(&parts.method, &parts.uri, &bytes);
    let slot = Slot { api_key, key };
    loop {
        match store.claim(slot.clone(), print, Instant::now()) {
            Claim::Replay(recorded) => return replay(&state, &recorded),
            Claim::Conflict => return ApiError::IdempotencyConflict.into_response(),
            Claim::Wait(mut done) => {
                let answer = {
                    let _waiting = Waiting::new(&state.metrics);
                    done.wait_for(Option::is_some)
                        .await
                        .ok()
                        .and_then(|a| a.clone())
                };
                if let Some(recorded) = answer {
                    return replay(&state, &recorded);
                }
                // The first attempt failed or its client left: claim the key again.
            }
            Claim::Owner(ticket) => {
                let response = next
                    .run(Request::from_parts(parts, Body::from(bytes)))
                    .await;
                return record(response, ticket);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(max_bytes: usize) -> Arc<Idempotency> {
        Idempotency::new(600, max_bytes, Arc::new(Metrics::new())).unwrap()
    }

    fn slot(key: &str) -> Slot {
        Slot {
            api_key: Some(0),
            key: key.into(),
        }
    }

    fn answer(body: &'static str) -> Recorded {
        Recorded {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::from_static(body.as_bytes()),
        }
    }

    fn owner(claim: Claim) -> Ticket {
        match claim {
            Claim::Owner(t) => t,
            _ => panic!("expected to own the key"),
        }
    }

    #[test]
    fn the_same_key_replays_a_different_body_conflicts_and_scopes_are_apart() {
        let s = store(1 << 20);
        let now = Instant::now();
        let t = owner(s.claim(slot("a"), [1; 32], now));
        assert!(matches!(s.claim(slot("a"), [1; 32], now), Claim::Wait(_)));
        assert!(matches!(s.claim(slot("a"), [2; 32], now), Claim::Conflict));
        t.finish(answer("first"));
        match s.claim(slot("a"), [1; 32], now) {
            Claim::Replay(r) => assert_eq!(r.body, "first"),
            _ => panic!("expected a replay"),
        }
        assert!(matches!(s.claim(slot("a"), [2; 32], now), Claim::Conflict));
        // Another API key's "a" is another key.
        let other = Slot {
            api_key: Some(1),
            key: "a".into(),
        };
        assert!(matches!(s.claim(other, [2; 32], now), Claim::Owner(_)));
        // Past the TTL the key is new again.
        let later = now + Duration::from_secs(601);
        assert!(matches!(
            s.claim(slot("a"), [2; 32], later),
            Claim::Owner(_)
        ));
    }

    #[test]
    fn a_dropped_ticket_forgets_the_key_and_wakes_waiters() {
        let s = store(1 << 20);
        let now = Instant::now();
        let t = owner(s.claim(slot("a"), [1; 32], now));
        let Claim::Wait(done) = s.claim(slot("a"), [1; 32], now) else {
            panic!("expected to wait");
        };
        drop(t);
        assert!(
            done.has_changed().is_err(),
            "the waiter sees the sender gone"
        );
        assert!(matches!(s.claim(slot("a"), [1; 32], now), Claim::Owner(_)));
    }

    #[test]
    fn memory_is_bounded_oldest_first() {
        let cost = 5 + 1 + ENTRY_OVERHEAD;
        let s = store(2 * cost);
        let now = Instant::now();
        for key in ["a", "b", "c"] {
            owner(s.claim(slot(key), [1; 32], now)).finish(answer("12345"));
        }
        assert_eq!(s.lock().bytes, 2 * cost);
        assert!(matches!(s.claim(slot("a"), [1; 32], now), Claim::Owner(_)));
        assert!(matches!(s.claim(slot("c"), [1; 32], now), Claim::Replay(_)));
        // An answer larger than the whole budget is passed on, not remembered.
        let big = store(10);
        owner(big.claim(slot("x"), [1; 32], now)).finish(answer("12345"));
        assert_eq!(big.lock().bytes, 0);
        assert!(matches!(
            big.claim(slot("x"), [1; 32], now),
            Claim::Owner(_)
        ));
    }

    #[test]
    fn keys_are_bounded_printable_text() {
        assert_eq!(
            parse_key(&HeaderValue::from_static(" k-1 ")).unwrap(),
            "k-1"
        );
        for bad in ["", "   "] {
            assert!(parse_key(&HeaderValue::from_static(bad)).is_err());
        }
        let long = HeaderValue::from_str(&"k".repeat(256)).unwrap();
        let e = parse_key(&long).unwrap_err();
        assert_eq!(e.body()["error"]["param"], "Idempotency-Key");
        let latin = HeaderValue::from_bytes(b"caf\xe9").unwrap();
        assert!(parse_key(&latin).is_err());
    }
}
