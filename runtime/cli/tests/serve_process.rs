//! `dfastllm serve` as a process: startup errors, readiness, and SIGTERM draining
//! in-flight requests before a clean exit.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{eventually, get_status, spawn_server as spawn};

use dfastllm_core::demo::{write_demo_model, DemoSpec};
use dfastllm_core::models::Architecture;
use serde_json::{json, Value};

fn metric(base: &str, name: &str) -> f64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let text = rt.block_on(async {
        reqwest::get(format!("{base}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(-1.0)
}

fn post(url: String, body: Value) -> (u16, Value) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
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

#[test]
fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    write_demo_model(
        &DemoSpec {
            max_context: 512,
            ..DemoSpec::tiny(Architecture::Llada)
        },
        dir.path(),
    )
    .unwrap();
    let mut server = spawn(dir.path(), &["--shutdown-grace-seconds", "60"]);
    let base = server.base.clone();
    eventually(
        Duration::from_secs(60),
        || get_status(&format!("{base}/readyz")),
        |s| *s == 200,
    );

    let url = format!("{base}/v1/completions");
    let in_flight = std::thread::spawn(move || {
        post(
            url,
            json!({"prompt": "x", "max_tokens": 400, "block_length": 8}),
        )
    });
    eventually(
        Duration::from_secs(20),
        || metric(&base, "dfastllm_requests_running"),
        |r| *r == 1.0,
    );

    let pid = server.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    eventually(
        Duration::from_secs(20),
        || get_status(&format!("{base}/readyz")),
        |s| *s == 503,
    );
    let (status, body) = post(format!("{base}/v1/completions"), json!({"prompt": "y"}));
    assert_eq!(
        status, 503,
        "new requests are refused while draining: {body}"
    );

    let (status, body) = in_flight.join().unwrap();
    assert_eq!(status, 200, "the in-flight request completes: {body}");
    assert!(body["dfastllm"]["forward_passes"].as_u64().unwrap() >= 1);
    let exit = eventually(
        Duration::from_secs(30),
        || server.child.try_wait().unwrap(),
        Option::is_some,
    );
    assert_eq!(exit.and_then(|s| s.code()), Some(0));
}

#[test]
fn a_wrong_model_directory_fails_fast_with_one_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_dfastllm"))
        .args(["serve", "--model", "/no/such/dir", "--port", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("--model") && err.contains("/no/such/dir"),
        "{err}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_dfastllm"))
        .args(["serve", "--config", "/no/such/runtime.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/runtime.toml"));
}
