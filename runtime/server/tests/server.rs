//! The HTTP server in-process over real loopback HTTP, with a real engine on a demo
//! checkpoint: every error status, the response shapes, streaming, batching and
//! cancellation. The binary-level behaviour (SIGTERM) is in `serve_process.rs`.

mod common;

use std::time::Duration;

use common::*;
use futures::{FutureExt, StreamExt};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_chat_generate_and_models() {
    let stack = start(EngineMode::Running, |_| {}).await;
    let (status, body) = stack
        .post("/v1/completions", json!({"model": "demo", "prompt": "Hello", "max_tokens": 8, "temperature": 0, "n": 2, "seed": 1}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["choices"].as_array().unwrap().len(), 2);
    assert_eq!(
        body["usage"]["prompt_tokens"], 5,
        "exact: one byte token per character"
    );
    let completion = body["usage"]["completion_tokens"].as_u64().unwrap();
    assert!(completion <= 16);
    assert_eq!(
        body["usage"]["total_tokens"].as_u64().unwrap(),
        5 + completion
    );
    assert!(body["dfastllm"]["forward_passes"].as_u64().unwrap() >= 2);
    // Greedy decoding is deterministic: both choices agree.
    assert_eq!(body["choices"][0]["text"], body["choices"][1]["text"]);

    let (status, body) = stack
        .post(
            "/v1/completions",
            json!({"model": "gpt-3.5-turbo", "prompt": ["a", "bb"], "max_tokens": 4}),
        )
        .await;
    assert_eq!(status, 200, "aliases are accepted: {body}");
    assert_eq!(body["choices"].as_array().unwrap().len(), 2);
    assert_eq!(body["usage"]["prompt_tokens"], 3);

    let (status, body) = stack
        .post("/v1/chat/completions", json!({"model": "demo", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], "max_tokens": 8}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert!(["stop", "length"].contains(&body["choices"][0]["finish_reason"].as_str().unwrap()));

    let (status, body) = stack
        .post("/generate", json!({"prompt": "Hi", "max_tokens": 8}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["text"].is_string() && body["usage"]["prompt_tokens"] == 2);

    let models: Value = reqwest::get(format!("{}/v1/models", stack.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["demo", "gpt-3.5-turbo"]);

    let health: Value = reqwest::get(format!("{}/health", stack.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["ready"], true);
    assert_eq!(health["device"], "cpu");
    assert_eq!(health["gpu"], Value::Null);
    assert_eq!(health["queue"]["capacity"], 16);
    let ready = reqwest::get(format!("{}/readyz", stack.base))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_strings_cut_the_text() {
    let stack = start(EngineMode::Running, |_| {}).await;
    let (_, free) = stack
        .post(
            "/v1/completions",
            json!({"prompt": "abc", "max_tokens": 16}),
        )
        .await;
    let text = free["choices"][0]["text"].as_str().unwrap().to_string();
    // Stop at the second character of whatever the model writes (random weights).
    let chars: Vec<char> = text.chars().collect();
    if chars.len() >= 2 {
        let stop: String = chars[1..2].iter().collect();
        let (status, body) = stack
            .post(
                "/v1/completions",
                json!({"prompt": "abc", "max_tokens": 16, "stop": [stop.clone()]}),
            )
            .await;
        assert_eq!(status, 200);
        let cut = body["choices"][0]["text"].as_str().unwrap();
        assert!(!cut.contains(&stop), "{cut:?} still contains {stop:?}");
        assert_eq!(body["choices"][0]["finish_reason"], "stop");
        assert!(text.starts_with(cut));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_sends_chunks_then_done() {
    let stack = start(EngineMode::Running, |_| {}).await;
    let body = json!({"prompt": "Hello", "max_tokens": 64, "stream": true, "stream_options": {"include_usage": true}});
    let r = reqwest::Client::new()
        .post(format!("{}/v1/completions", stack.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let text = r.text().await.unwrap();
    let events: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let finish: Vec<&Value> = chunks
        .iter()
        .filter(|c| c["choices"][0]["finish_reason"].is_string())
        .collect();
    assert_eq!(finish.len(), 1);
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["prompt_tokens"], 5);
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    // The same request without streaming gives the same text (greedy).
    let (_, whole) = stack
        .post(
            "/v1/completions",
            json!({"prompt": "Hello", "max_tokens": 64}),
        )
        .await;
    assert_eq!(streamed, whole["choices"][0]["text"].as_str().unwrap());

    let body =
        json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8, "stream": true});
    let r = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", stack.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    let first: Value =
        serde_json::from_str(text.lines().find_map(|l| l.strip_prefix("data: ")).unwrap()).unwrap();
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    assert!(text.trim_end().ends_with("data: [DONE]"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_400_with_the_param() {
    let stack = start(EngineMode::Running, |_| {}).await;
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{}/v1/completions", stack.base))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    assert_error(
        status,
        &r.json().await.unwrap(),
        400,
        "invalid_request_error",
    );
    for (body, param) in [
        (json!({"prompt": ""}), "prompt"),
        (json!({}), "prompt"),
        (json!({"prompt": "x", "temperature": 2.5}), "temperature"),
        (json!({"prompt": "x", "top_p": 0}), "top_p"),
        (json!({"prompt": "x", "max_tokens": 0}), "max_tokens"),
        (json!({"prompt": "x", "max_tokens": 500}), "max_tokens"),
        (json!({"prompt": "x", "n": 9}), "n"),
        (
            json!({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}),
            "stop",
        ),
        (
            json!({"prompt": "x", "max_tokens": 16, "block_length": 5}),
            "block_length",
        ),
        (json!({"prompt": "x".repeat(300)}), "prompt"),
    ] {
        let (status, response) = stack.post("/v1/completions", body.clone()).await;
        assert_error(status, &response, 400, "invalid_request_error");
        assert_eq!(response["error"]["param"], param, "{body} -> {response}");
    }
    let (status, response) = stack
        .post("/v1/chat/completions", json!({"messages": []}))
        .await;
    assert_error(status, &response, 400, "invalid_request_error");

    let (status, response) = stack
        .post("/v1/completions", json!({"model": "gpt-9", "prompt": "x"}))
        .await;
    assert_error(status, &response, 404, "not_found_error");
    let message = response["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("demo") && message.contains("gpt-3.5-turbo"),
        "{message}"
    );

    let big = "x".repeat(70 * 1024);
    let (status, response) = stack.post("/v1/completions", json!({"prompt": big})).await;
    assert_error(status, &response, 413, "invalid_request_error");

    let metrics = stack.metrics().await;
    assert!(metrics.contains(
        "dfastllm_requests_total{endpoint=\"/v1/completions\",model=\"demo\",status=\"400\"}"
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_and_rate_limits() {
    let stack = start(EngineMode::Running, |c| {
        c.api_keys = vec!["secret".into()];
        c.rate_limit_requests_per_minute = 2;
    })
    .await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/completions", stack.base);
    let body = json!({"prompt": "x", "max_tokens": 4});
    let with_key = |key: &'static str| {
        client
            .post(&url)
            .bearer_auth(key)
            .json(&body)
            .send()
            .map(Result::unwrap)
    };
    let r = client.post(&url).json(&body).send().await.unwrap();
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let status = r.status().as_u16();
    assert_error(
        status,
        &r.json().await.unwrap(),
        401,
        "authentication_error",
    );
    let r = with_key("wrong").await;
    assert_eq!(r.status(), 401);
    for _ in 0..2 {
        let r = with_key("secret").await;
        assert_eq!(r.status(), 200);
    }
    let r = with_key("secret").await;
    assert!(r.headers().contains_key("retry-after"));
    let status = r.status().as_u16();
    assert_error(status, &r.json().await.unwrap(), 429, "rate_limit_error");
    // The same key spelled differently is the same client: no fresh bucket.
    for spelling in [
        "bearer secret",
        "BEARER secret",
        "Bearer  secret",
        "Bearer secret\t",
    ] {
        let r = client
            .post(&url)
            .header("authorization", spelling)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 429, "{spelling:?}");
    }
    // Probes and scrapers need no key.
    for path in ["/health", "/readyz", "/metrics"] {
        assert_eq!(
            reqwest::get(format!("{}{path}", stack.base))
                .await
                .unwrap()
                .status(),
            200,
            "{path}"
        );
    }
    assert!(stack
        .metrics()
        .await
        .contains("dfastllm_requests_rejected_total{reason=\"rate_limited\"} 5"));
}

/// Regressions of the black-box probe (issue 15): failed keys are rate limited per
/// address; unknown paths add no metric series; every rejection is counted; 404 and
/// 405 are OpenAI errors that name no model; request ids cannot forge log fields; a
/// long model name is not echoed whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_are_bounded_counted_and_answered_in_api_terms() {
    let stack = start(EngineMode::Running, |c| c.api_keys = vec!["secret".into()]).await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/completions", stack.base);
    let mut statuses = Vec::new();
    for i in 0..=dfastllm_server::auth::AUTH_FAILURES_PER_MINUTE {
        let r = client
            .post(&url)
            .bearer_auth(format!("guess-{i}"))
            .json(&json!({"prompt": "x"}))
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    assert!(statuses[..30].iter().all(|&s| s == 401), "{statuses:?}");
    assert_eq!(statuses[30], 429, "guessing keys is limited");
    // The right key from the same address still works.
    let r = client
        .post(&url)
        .bearer_auth("secret")
        .json(&json!({"prompt": "x", "max_tokens": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for i in 0..50 {
        let r = client
            .get(format!("{}/v1/probe-{i}-{}", stack.base, "x".repeat(200)))
            .bearer_auth("secret")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["type"], "not_found_error");
        assert!(body["error"]["code"].is_null(), "{body}");
    }
    let r = client
        .get(format!("{}/v1/nope", stack.base))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        429,
        "unknown routes pass the key check too (and this address is out of guesses)"
    );
    let r = client.get(&url).bearer_auth("secret").send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["type"],
        "invalid_request_error"
    );
    let long = "m".repeat(10_000);
    let r = client
        .post(&url)
        .bearer_auth("secret")
        .header("x-request-id", "a\" level=\"error")
        .json(&json!({"prompt": "x", "model": long}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.headers()["x-request-id"].len(),
        32,
        "a fresh id replaces it"
    );
    let body: Value = r.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().len() < 1_000);
    let (status, _) = stack.post("/v1/completions", json!({"prompt": ""})).await;
    assert_eq!(status, 429, "no key, from an address out of guesses");
    let r = client
        .post(&url)
        .bearer_auth("secret")
        .json(&json!({"prompt": "x", "temperature": 9}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let metrics = stack.metrics().await;
    let series = metrics
        .lines()
        .filter(|l| l.starts_with("dfastllm_requests_total{"))
        .count();
    assert!(series <= 10, "routes x statuses, not paths:\n{metrics}");
    assert!(!metrics.contains("probe-"), "no raw paths in labels");
    assert!(metrics.contains("endpoint=\"other\""));
    for (reason, count) in [
        ("unauthorized", 30),
        ("rate_limited", 3),
        ("route_not_found", 50),
        ("method_not_allowed", 1),
        ("model_not_found", 1),
        ("invalid", 1),
    ] {
        let line = format!("dfastllm_requests_rejected_total{{reason=\"{reason}\"}} {count}");
        assert!(metrics.contains(&line), "{line}\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_echoed() {
    let stack = start(EngineMode::Running, |_| {}).await;
    let r = reqwest::Client::new()
        .get(format!("{}/health", stack.base))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "abc-123");
    let r = reqwest::get(format!("{}/health", stack.base))
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"].len(), 32, "a generated id");
    let r = reqwest::get(format!("{}/nope", stack.base)).await.unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_is_429_and_a_stuck_request_is_504() {
    let stack = start(EngineMode::Stalled, |c| {
        c.max_queue = 1;
        c.request_timeout_seconds = 1;
    })
    .await;
    let stuck = spawn_completion(&stack, json!({"prompt": "x"}));
    wait_queued(&stack, 1).await;
    let (status, body) = stack.post("/v1/completions", json!({"prompt": "y"})).await;
    assert_error(status, &body, 429, "rate_limit_error");
    assert_eq!(body["error"]["code"], "queue_full");
    // A stream is refused before it starts: a 429 with Retry-After, not a 200 carrying
    // an in-band error.
    let r = reqwest::Client::new()
        .post(format!("{}/v1/completions", stack.base))
        .json(&json!({"prompt": "y", "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "queue_full"
    );
    // A request larger than the whole queue could never run: a 400 naming n.
    let (status, body) = stack
        .post("/v1/completions", json!({"prompt": ["a", "b"], "n": 2}))
        .await;
    assert_error(status, &body, 400, "invalid_request_error");
    assert_eq!(body["error"]["param"], "n");
    let (status, body) = stuck.await.unwrap();
    assert_error(status, &body, 504, "timeout_error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_and_draining_are_503() {
    let mut stack = start(EngineMode::Stalled, |c| c.request_timeout_seconds = 2).await;
    let in_flight = spawn_completion(&stack, json!({"prompt": "x"}));
    wait_queued(&stack, 1).await;
    let _ = stack.shutdown.take().unwrap().send(());
    let readyz = eventually(
        Duration::from_secs(10),
        async || {
            reqwest::get(format!("{}/readyz", stack.base))
                .await
                .unwrap()
                .status()
                .as_u16()
        },
        |s| *s == 503,
    )
    .await;
    assert_eq!(readyz, 503);
    let (status, body) = stack.post("/v1/completions", json!({"prompt": "y"})).await;
    assert_error(status, &body, 503, "service_unavailable_error");
    // The in-flight request is not cut off by the shutdown: it ends on its own (here by
    // its timeout, the engine being stalled), and only then does the server stop.
    assert_eq!(in_flight.await.unwrap().0, 504);
    stack.server.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_forward_passes() {
    let mut stack = start(EngineMode::Manual, |_| {}).await;
    let requests: Vec<_> = (0..4)
        .map(|i| {
            spawn_completion(
                &stack,
                json!({"prompt": format!("prompt {i}"), "max_tokens": 16}),
            )
        })
        .collect();
    // All four wait in the queue before the scheduler starts: its first iteration
    // admits them together.
    wait_queued(&stack, 4).await;
    stack.start_scheduler();
    for r in requests {
        assert_eq!(r.await.unwrap().0, 200);
    }
    let metrics = stack.metrics().await;
    let batched = metric(&metrics, "dfastllm_batch_size_count")
        - metric(&metrics, "dfastllm_batch_size_bucket{le=\"3.0\"}");
    assert!(
        batched >= 1.0,
        "at least the first pass ran all four:\n{metrics}"
    );
    assert!(
        metric(&metrics, "dfastllm_forward_passes_total") <= 16.0,
        "4 x 16 steps in at most 16 passes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_frees_its_slot() {
    let stack = start(EngineMode::Running, |_| {}).await;
    // 240 tokens: far more forward passes than the disconnect takes to notice. A chat
    // stream opens with the assistant's role chunk, before any decoding.
    let body = json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 200, "block_length": 8, "stream": true});
    let r = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", stack.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    let mut chunks = r.bytes_stream();
    let first = chunks.next().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).starts_with("data: "));
    drop(chunks);
    let metrics = eventually(
        Duration::from_secs(20),
        async || stack.metrics().await,
        |m| {
            metric(m, "dfastllm_requests_cancelled_total") == 1.0
                && metric(m, "dfastllm_requests_running") == 0.0
        },
    )
    .await;
    assert!(
        metric(&metrics, "dfastllm_forward_passes_total") < 200.0,
        "decoding stopped early:\n{metrics}"
    );
}

#[tokio::test]
async fn chat_can_continue_the_final_assistant_message() {
    let stack = start(EngineMode::Running, |_| {}).await;
    let conversation = json!([
        {"role": "user", "content": "Count to three."},
        {"role": "assistant", "content": "One, two,"}
    ]);
    let (status, with_header) = stack
        .post(
            "/v1/chat/completions",
            json!({"messages": conversation, "max_tokens": 8}),
        )
        .await;
    assert_eq!(status, 200, "{with_header}");
    let (status, continued) = stack
        .post(
            "/v1/chat/completions",
            json!({"messages": conversation, "max_tokens": 8, "continue_final_message": true, "add_generation_prompt": false}),
        )
        .await;
    assert_eq!(status, 200, "{continued}");
    // The continued prompt stops inside the assistant's turn: no end-of-turn, no new
    // header, so it is shorter than the prompt that opens a new turn.
    let tokens = |v: &Value| v["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(
        tokens(&continued) < tokens(&with_header),
        "{continued} vs {with_header}"
    );
    for body in [
        json!({"messages": conversation, "continue_final_message": true, "add_generation_prompt": true}),
        json!({"messages": [{"role": "user", "content": "hi"}], "continue_final_message": true}),
    ] {
        let (status, response) = stack.post("/v1/chat/completions", body).await;
        assert_error(status, &response, 400, "invalid_request_error");
        assert_eq!(
            response["error"]["param"], "continue_final_message",
            "{response}"
        );
    }
}
