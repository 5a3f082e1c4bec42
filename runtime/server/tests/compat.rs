//! What vLLM users type on day one and what a cluster's monitoring expects: the
//! `/models` route, `--max-model-len`, the streaming timeout tier, `/metrics` behind its
//! own key, `/health` detail behind the API keys, request and response sizes.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_route_metrics_key_health_detail_and_sizes() {
    let stack = start(EngineMode::Running, |c| {
        c.api_keys = vec!["k".into()];
        c.metrics_api_key = Some("scrape".into());
        c.max_model_len = Some(24);
    })
    .await;
    let client = reqwest::Client::new();
    let get = |path: &str, key: Option<&str>| {
        let mut r = client.get(format!("{}{path}", stack.base));
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        async move {
            let r = r.send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let (status, models) = get("/models", Some("k")).await;
    assert_eq!(status, 200);
    assert_eq!(models, get("/v1/models", Some("k")).await.1);
    assert_eq!(get("/models", None).await.0, 401);

    // Liveness answers anyone; the detail only a key holder.
    let (status, bare) = get("/health", None).await;
    assert_eq!((status, bare.clone()), (200, json!({"status": "ok"})));
    let (_, detail) = get("/health", Some("k")).await;
    assert_eq!(detail["circuit_breaker"], "closed", "{detail}");
    assert_eq!(detail["model"], "demo");

    // --max-model-len caps prompt + answer below the model's own context.
    let long = "x".repeat(30);
    let (status, body) = client
        .post(format!("{}/v1/completions", stack.base))
        .bearer_auth("k")
        .json(&json!({"prompt": long, "max_tokens": 4}))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map(|s| (s, ()))
        .unwrap();
    assert_eq!((status, body), (400, ()));
    let answered = client
        .post(format!("{}/v1/completions", stack.base))
        .bearer_auth("k")
        .json(&json!({"prompt": "hi", "max_tokens": 4}))
        .send()
        .await
        .unwrap();
    assert_eq!(answered.status(), 200);

    // /metrics wants its own key, not an API key.
    assert_eq!(get("/metrics", None).await.0, 401);
    assert_eq!(get("/metrics", Some("k")).await.0, 401);
    let text = client
        .get(format!("{}/metrics", stack.base))
        .bearer_auth("scrape")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metric(&text, "dfastllm_request_size_bytes_count") >= 2.0,
        "{text}"
    );
    assert!(
        metric(&text, "dfastllm_response_size_bytes_count") >= 1.0,
        "{text}"
    );
    assert!(
        metric(&text, "dfastllm_response_size_bytes_sum") > 100.0,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_longer_max_model_len_than_the_model_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dfastllm_core::demo::DemoSpec {
        max_context: 64,
        ..dfastllm_core::demo::DemoSpec::tiny(dfastllm_core::models::Architecture::Llada)
    };
    dfastllm_core::demo::write_demo_model(&spec, dir.path()).unwrap();
    let mut cfg = config(dir.path());
    cfg.max_model_len = Some(65);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut launched = dfastllm_server::launch(cfg, listener, std::future::pending()).unwrap();
    let e = launched.ready().await.unwrap_err().to_string();
    assert!(e.contains("--max-model-len 65") && e.contains("64"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_and_whole_answers_have_their_own_deadlines() {
    let stack = start(EngineMode::Stalled, |c| {
        c.request_timeout_seconds = 120;
        c.request_timeout_streaming_seconds = 1;
    })
    .await;
    let r = reqwest::Client::new()
        .post(format!("{}/v1/completions", stack.base))
        .json(&json!({"prompt": "y", "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = tokio::time::timeout(Duration::from_secs(60), r.text())
        .await
        .expect("the streaming deadline ends the stream")
        .unwrap();
    let error: Value = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .find_map(|d| serde_json::from_str::<Value>(d).ok())
        .unwrap();
    assert_eq!(error["error"]["type"], "timeout_error", "{text}");
    assert!(error["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("1 s")));
    // The stalled engine still holds the whole-answer request well inside its tier.
    let whole = spawn_completion(&stack, json!({"prompt": "x"}));
    wait_queued(&stack, 1).await;
    assert!(!whole.is_finished());
    whole.abort();
}
