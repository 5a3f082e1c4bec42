//! `Idempotency-Key`: a repeat is answered with the first response and never generates
//! again, a repeat of a running request waits for it, a different body is a 422, keys
//! are scoped per API key, and failures are not remembered.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

struct Answer {
    status: u16,
    replayed: bool,
    body: String,
}

async fn send(stack: &Stack, api_key: &str, idem: &str, body: &Value) -> Answer {
    let r = reqwest::Client::new()
        .post(format!("{}/v1/completions", stack.base))
        .bearer_auth(api_key)
        .header("Idempotency-Key", idem)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let replayed = r
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|v| v == "true");
    Answer {
        status,
        replayed,
        body: r.text().await.unwrap(),
    }
}

fn passes(text: &str) -> f64 {
    metric(text, "dfastllm_forward_passes_total")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeats_replay_the_first_answer_without_generating_again() {
    let stack = start(EngineMode::Running, |c| {
        c.api_keys = vec!["k1".into(), "k2".into()];
    })
    .await;
    // Sampling at temperature 1 without a seed: a second generation would differ.
    let body = json!({"prompt": "hello", "max_tokens": 8, "temperature": 1.0});
    let first = send(&stack, "k1", "order-1", &body).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert!(!first.replayed);
    let before = passes(&stack.metrics().await);
    let again = send(&stack, "k1", "order-1", &body).await;
    assert_eq!((again.status, again.replayed), (200, true));
    assert_eq!(again.body, first.body, "the first response, byte for byte");
    let after = stack.metrics().await;
    assert_eq!(passes(&after), before, "no forward pass for a replay");
    assert_eq!(metric(&after, "dfastllm_idempotent_replays_total"), 1.0);
    assert!(metric(&after, "dfastllm_idempotency_cache_bytes") > 0.0);

    // The same key with another body: 422 naming the header.
    let other = send(
        &stack,
        "k1",
        "order-1",
        &json!({"prompt": "bye", "max_tokens": 8}),
    )
    .await;
    assert_eq!(other.status, 422);
    let error: Value = serde_json::from_str(&other.body).unwrap();
    assert_eq!(error["error"]["param"], "Idempotency-Key");
    assert_eq!(error["error"]["code"], "idempotency_key_reused");

    // Another API key's "order-1" is its own: it generates.
    let theirs = send(&stack, "k2", "order-1", &body).await;
    assert_eq!((theirs.status, theirs.replayed), (200, false));
    assert!(passes(&stack.metrics().await) > before);

    // A failure is not remembered: the repeat is evaluated again (and fails again).
    let bad = json!({"prompt": "x", "max_tokens": 8, "temperature": -1});
    let failed = send(&stack, "k1", "order-2", &bad).await;
    let failed_again = send(&stack, "k1", "order-2", &bad).await;
    assert_eq!((failed.status, failed_again.status), (400, 400));
    assert!(!failed_again.replayed);

    // A bad key is a 400 naming the header.
    let long = "k".repeat(300);
    let refused = send(&stack, "k1", &long, &body).await;
    assert_eq!(refused.status, 400);
    assert!(refused.body.contains("Idempotency-Key"), "{}", refused.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_replayed_whole() {
    let stack = start(EngineMode::Running, |_| {}).await;
    let body = json!({"prompt": "hello", "max_tokens": 8, "stream": true, "temperature": 1.0});
    let first = send(&stack, "", "stream-1", &body).await;
    assert_eq!(first.status, 200);
    assert!(
        first.body.trim_end().ends_with("data: [DONE]"),
        "{}",
        first.body
    );
    let again = send(&stack, "", "stream-1", &body).await;
    assert_eq!((again.status, again.replayed), (200, true));
    assert_eq!(again.body, first.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_while_the_first_runs_waits_for_its_answer() {
    let mut stack = start(EngineMode::Manual, |_| {}).await;
    let body = json!({"prompt": "hello", "max_tokens": 8, "temperature": 1.0});
    let post = |stack: &Stack| {
        let (url, body) = (format!("{}/v1/completions", stack.base), body.clone());
        tokio::spawn(async move {
            let r = reqwest::Client::new()
                .post(url)
                .header("Idempotency-Key", "same")
                .json(&body)
                .send()
                .await
                .unwrap();
            let replayed = r.headers().get("idempotent-replayed").is_some();
            (r.status().as_u16(), replayed, r.text().await.unwrap())
        })
    };
    let first = post(&stack);
    eventually(
        Duration::from_secs(10),
        async || metric(&stack.metrics().await, "dfastllm_requests_waiting"),
        |&v| v == 1.0,
    )
    .await;
    let second = post(&stack);
    eventually(
        Duration::from_secs(10),
        async || metric(&stack.metrics().await, "dfastllm_idempotency_waiting"),
        |&v| v == 1.0,
    )
    .await;
    // A different body under the running key is refused at once.
    let other = send(&stack, "", "same", &json!({"prompt": "bye"})).await;
    assert_eq!(other.status, 422);
    // Only the first is queued: the repeat waits beside the queue, not in it.
    assert_eq!(
        metric(&stack.metrics().await, "dfastllm_requests_waiting"),
        1.0
    );
    stack.start_scheduler();
    let (a, b) = (first.await.unwrap(), second.await.unwrap());
    assert_eq!((a.0, a.1), (200, false));
    assert_eq!((b.0, b.1), (200, true));
    assert_eq!(a.2, b.2);
    let text = stack.metrics().await;
    assert_eq!(metric(&text, "dfastllm_idempotency_waiting"), 0.0);
    assert_eq!(metric(&text, "dfastllm_requests_waiting"), 0.0);
}
