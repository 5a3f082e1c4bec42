//! `dfastllm bench serve` against a real `dfastllm serve` on loopback, and
//! `dfastllm batch` interrupted and resumed: the binaries as processes.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{eventually, spawn_server, wait_ready};
use dfastllm_core::demo::{write_demo_model, DemoSpec};
use dfastllm_core::models::Architecture;
use serde_json::Value;

fn demo(dir: &Path, arch: Architecture, layers: usize, hidden: usize) {
    let spec = DemoSpec {
        layers,
        hidden,
        heads: 4,
        max_context: 512,
        ..DemoSpec::tiny(arch)
    };
    write_demo_model(&spec, dir).unwrap();
}

fn dfastllm(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dfastllm"))
        .args(args)
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .output()
        .unwrap()
}

fn assert_ordered(stats: &Value, what: &str) {
    let keys = ["min", "p50", "p90", "p95", "p99", "max"];
    let values: Vec<f64> = keys
        .iter()
        .map(|k| {
            stats[k]
                .as_f64()
                .unwrap_or_else(|| panic!("{what}.{k} missing: {stats}"))
        })
        .collect();
    assert!(
        values.windows(2).all(|w| w[0] <= w[1]),
        "{what} percentiles out of order: {stats}"
    );
    assert!(stats["mean"].as_f64().unwrap() >= values[0]);
    assert!(stats["mean"].as_f64().unwrap() <= values[5]);
}

#[test]
fn bench_serve_reports_every_level_consistently_and_draws_plots() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("llama");
    demo(&model, Architecture::Llama, 2, 64);
    let server = spawn_server(&model, &["--api-keys", "k1", "--max-tokens", "8"]);
    wait_ready(&server);
    let out = dir.path().join("report.json");
    let plots = dir.path().join("plots");
    let run = dfastllm(&[
        "bench",
        "serve",
        "--url",
        &server.base,
        "--api-key",
        "k1",
        "--concurrency",
        "1,3",
        "--requests",
        "6",
        "--output-tokens",
        "8",
        "--prompt-tokens",
        "12",
        "--ignore-eos",
        "--slo-ttft",
        "60000",
        "--out",
        out.to_str().unwrap(),
        "--plot-dir",
        plots.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    let table = String::from_utf8_lossy(&run.stdout);
    assert!(table.contains("TTFT p50"), "{table}");

    let report: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(report["model"], "llama", "the model came from /v1/models");
    let levels = report["levels"].as_array().unwrap();
    assert_eq!(levels.len(), 2);
    for (level, concurrency) in levels.iter().zip([1, 3]) {
        assert_eq!(level["concurrency"], concurrency);
        assert_eq!(level["requests"], 6);
        assert_eq!(level["successes"], 6, "{level}");
        assert_eq!(level["failures"], 0);
        assert_eq!(
            level["total_output_tokens"],
            6 * 8,
            "ignore_eos: 8 tokens each"
        );
        assert!(level["total_prompt_tokens"].as_u64().unwrap() >= 6 * 12);
        for key in ["ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"] {
            assert_ordered(&level[key], key);
        }
        assert_eq!(level["ttft_ms"]["count"], 6);
        // Random weights emit partial UTF-8 characters, which stream with the next
        // token: at most 7 gaps per 8-token answer, and some.
        let gaps = level["itl_ms"]["count"].as_u64().unwrap();
        assert!((1..=6 * 7).contains(&gaps), "{gaps} inter-token gaps");
        let rps = level["request_throughput"].as_f64().unwrap();
        assert!(rps > 0.0);
        assert!(level["goodput"].as_f64().unwrap() <= rps + 1e-9);
        assert_eq!(level["slo_met"], 6);
        let server = &level["server"];
        assert!(
            server["mean_batch_size"].as_f64().unwrap() >= 1.0,
            "{server}"
        );
        assert_eq!(server["generation_tokens"], 48.0);
        assert!(server["forward_passes_per_token"].as_f64().unwrap() > 0.0);
        assert_eq!(level["ttft_samples_ms"].as_array().unwrap().len(), 6);
    }
    for name in ["throughput.png", "latency.png", "ttft.png"] {
        let png = std::fs::read(plots.join(name)).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{name} is a PNG");
        assert!(
            png.len() > 10_000,
            "{name} has content: {} bytes",
            png.len()
        );
    }

    // A wrong key: every request fails, and the failures are counted by status.
    let bad = dfastllm(&[
        "bench",
        "serve",
        "--url",
        &server.base,
        "--api-key",
        "nope",
        "--model",
        "llama",
        "--concurrency",
        "2",
        "--requests",
        "4",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        bad.status.success(),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let level = &report["levels"][0];
    assert_eq!(
        (level["successes"].as_u64(), level["failures"].as_u64()),
        (Some(0), Some(4))
    );
    assert_eq!(level["errors"]["401"], 4);
    assert_eq!(level["ttft_ms"]["count"], 0);
}

fn output_ids(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| v["custom_id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn batch_resumes_after_a_kill_without_losing_or_repeating_lines() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("llama");
    // Wide enough that 200 requests take seconds, so the kill lands mid-run.
    demo(&model, Architecture::Llama, 4, 256);
    let input = dir.path().join("in.jsonl");
    let output = dir.path().join("out.jsonl");
    let mut lines: Vec<String> = (0..200)
        .map(|i| {
            serde_json::json!({
                "custom_id": format!("req-{i}"), "method": "POST", "url": "/v1/completions",
                "body": {"model": "gpt-4o-mini", "prompt": format!("item {i}"), "max_tokens": 24, "ignore_eos": true},
            })
            .to_string()
        })
        .collect();
    // Per-line failures are recorded, not fatal: a 400 and an unsupported url.
    lines.push(r#"{"custom_id": "bad-temp", "url": "/v1/completions", "body": {"prompt": "x", "temperature": 9}}"#.into());
    lines.push(
        r#"{"custom_id": "bad-url", "url": "/v1/embeddings", "body": {"input": "x"}}"#.into(),
    );
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let args = [
        "batch",
        "--model",
        model.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--concurrency",
        "2",
        "--device",
        "cpu",
    ];
    let mut first = Command::new(env!("CARGO_BIN_EXE_dfastllm"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    eventually(
        Duration::from_secs(120),
        || output_ids(&output).len(),
        |n| *n >= 5,
    );
    first.kill().unwrap();
    first.wait().unwrap();
    let written = output_ids(&output);
    assert!(
        written.len() < lines.len(),
        "the kill landed before the end"
    );
    // Simulate a kill in the middle of a write: a torn last line.
    let mut torn = std::fs::read(&output).unwrap();
    torn.extend_from_slice(b"{\"id\": \"batch_req_x\", \"custom_id\": \"req-19");
    std::fs::write(&output, torn).unwrap();

    let second = dfastllm(&[&args[..], &["--sla", "24h"]].concat());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(second.status.success(), "{stderr}");
    assert!(stderr.contains("SLA: fits"), "{stderr}");
    let summary: Value = serde_json::from_slice(&second.stdout).unwrap();
    assert_eq!(summary["total"], 202);
    assert_eq!(summary["skipped"], written.len());

    let ids = output_ids(&output);
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(ids.len(), 202, "every input line answered once");
    assert_eq!(unique.len(), 202, "no line repeated");
    let text = std::fs::read_to_string(&output).unwrap();
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).expect("no torn line left");
        match v["custom_id"].as_str().unwrap() {
            "bad-temp" => {
                assert_eq!(v["response"]["status_code"], 400);
                assert_eq!(v["error"]["code"], "invalid_request_error");
            }
            "bad-url" => {
                assert!(v["response"].is_null());
                assert!(v["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("/v1/embeddings"));
            }
            _ => {
                assert_eq!(v["response"]["status_code"], 200, "{v}");
                assert!(v["error"].is_null());
                assert_eq!(v["response"]["body"]["usage"]["completion_tokens"], 24);
            }
        }
    }

    // A third run finds nothing to do.
    let third = dfastllm(&args);
    let summary: Value = serde_json::from_slice(&third.stdout).unwrap();
    assert_eq!(
        (summary["skipped"].as_u64(), summary["completed"].as_u64()),
        (Some(202), Some(0))
    );
}

#[test]
fn bad_flags_are_one_line_errors_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "{\"custom_id\": \"a\"}\n{\"custom_id\": \"a\"}\n").unwrap();
    let out = dir.path().join("out.jsonl");
    let batch = vec![
        "batch",
        "--url",
        "http://127.0.0.1:9",
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ];
    for (args, needle) in [
        (
            vec!["bench", "serve", "--url", "https://example.invalid"],
            "--url",
        ),
        (
            vec!["bench", "serve", "--concurrency", "0", "--model", "m"],
            "--concurrency",
        ),
        (batch.clone(), "repeats custom_id"),
        ([&batch[..], &["--sla", "soon"]].concat(), "--sla"),
    ] {
        let run = dfastllm(&args);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(!run.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    assert!(!out.exists(), "nothing was written");
}
