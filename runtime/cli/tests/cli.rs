//! The `dfastllm` binary as a user runs it: demo-model, generate, and its errors.

use std::path::Path;
use std::process::{Command, Output};

fn dfastllm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dfastllm"))
        .args(args)
        .env_remove("DFASTLLM_MODEL")
        .output()
        .expect("the dfastllm binary runs")
}

fn demo(dir: &Path, arch: &str, extra: &[&str]) {
    let out = dir.to_str().unwrap();
    let mut args = vec!["demo-model", "--arch", arch, "--out", out];
    args.extend_from_slice(extra);
    let o = dfastllm(&args);
    assert!(
        o.status.success(),
        "demo-model failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn stderr_line(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    let lines: Vec<&str> = err.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {err:?}");
    lines[0].to_string()
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().to_string(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn demo_model_is_deterministic_and_in_upstream_layout() {
    let tmp = tempfile::tempdir().unwrap();
    for arch in ["llada", "dream"] {
        let (a, b, c) = (
            tmp.path().join(format!("{arch}-a")),
            tmp.path().join(format!("{arch}-b")),
            tmp.path().join(format!("{arch}-c")),
        );
        demo(&a, arch, &["--seed", "5"]);
        demo(&b, arch, &["--seed", "5"]);
        demo(&c, arch, &["--seed", "6"]);
        let (fa, fb, fc) = (files(&a), files(&b), files(&c));
        let names: Vec<&str> = fa.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "config.json",
                "generation_config.json",
                "model.safetensors",
                "tokenizer.json",
                "tokenizer_config.json"
            ]
        );
        assert_eq!(fa, fb, "{arch}: same seed, same bytes");
        let weights = |f: &[(String, Vec<u8>)]| {
            f.iter()
                .find(|(n, _)| n == "model.safetensors")
                .unwrap()
                .1
                .clone()
        };
        assert_ne!(
            weights(&fa),
            weights(&fc),
            "{arch}: another seed, other weights"
        );

        let config: serde_json::Value = serde_json::from_slice(&fa[0].1).unwrap();
        let st = safetensors::SafeTensors::deserialize(&fa[2].1).unwrap();
        let names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
        if arch == "llada" {
            assert_eq!(config["model_type"], "llada");
            assert_eq!(config["mask_token_id"], 261);
            assert!(names.contains(&"model.transformer.blocks.1.ff_proj.weight".to_string()));
            assert!(names.contains(&"model.transformer.ff_out.weight".to_string()));
        } else {
            assert_eq!(config["model_type"], "Dream");
            assert_eq!(config["num_key_value_heads"], 2);
            assert!(names.contains(&"model.layers.0.self_attn.k_proj.bias".to_string()));
            assert!(names.contains(&"lm_head.weight".to_string()));
        }
    }
}

#[test]
fn generate_json_for_both_architectures() {
    let tmp = tempfile::tempdir().unwrap();
    for arch in ["llada", "dream"] {
        let dir = tmp.path().join(arch);
        demo(&dir, arch, &[]);
        let o = dfastllm(&[
            "generate",
            "--model",
            dir.to_str().unwrap(),
            "--prompt",
            "Hello",
            "--max-tokens",
            "16",
            "--block-length",
            "8",
            "--steps",
            "8",
            "--json",
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(String::from_utf8_lossy(&o.stderr).contains("random demo weights"));
        let v: serde_json::Value =
            serde_json::from_slice(&o.stdout).expect("stdout is one JSON object");
        assert_eq!(
            v["prompt_token_ids"],
            serde_json::json!([72, 101, 108, 108, 111])
        );
        assert!(v["text"].is_string());
        let answer = v["token_ids"].as_array().unwrap();
        assert!(answer.len() <= 16);
        let passes = v["forward_passes"].as_u64().unwrap();
        assert!(
            (1..=8).contains(&passes),
            "at most one pass per step: {passes}"
        );
        assert_eq!(v["steps"], v["forward_passes"]);
        assert!(["stop", "length"].contains(&v["finish_reason"].as_str().unwrap()));
        if v["finish_reason"] == "length" {
            assert_eq!(answer.len(), 16);
            assert_eq!(passes, 8);
        }
        assert!(v["elapsed_ms"].as_f64().unwrap() >= 0.0);
    }
}

#[test]
fn generate_with_chat_template_and_token_ids() {
    let tmp = tempfile::tempdir().unwrap();
    demo(tmp.path(), "llada", &[]);
    let model = tmp.path().to_str().unwrap();
    let o = dfastllm(&[
        "generate",
        "--model",
        model,
        "--prompt",
        "Hi",
        "--chat",
        "--max-tokens",
        "8",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let ids = v["prompt_token_ids"].as_array().unwrap();
    assert_eq!(
        ids[0], 256,
        "the LLaDA template starts with <|startoftext|>"
    );
    // BOS, <|start_header_id|>user<|end_header_id|>\n\n, Hi, <|eot_id|>, then the assistant header.
    assert_eq!(ids.len(), 1 + (1 + 4 + 1 + 2) + 2 + 1 + (1 + 9 + 1 + 2));

    let o = dfastllm(&[
        "--threads",
        "1",
        "generate",
        "--model",
        model,
        "--prompt-ids",
        "1,2,3",
        "--max-tokens",
        "4",
        "--json",
        "--seed",
        "1",
        "--temperature",
        "0.7",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["prompt_token_ids"], serde_json::json!([1, 2, 3]));
}

#[test]
fn errors_are_one_line_and_fail() {
    let tmp = tempfile::tempdir().unwrap();
    demo(tmp.path(), "dream", &[]);
    let model = tmp.path().to_str().unwrap();

    let o = dfastllm(&["generate", "--model", "/no/such/model", "--prompt", "x"]);
    assert!(!o.status.success());
    assert!(stderr_line(&o).contains("/no/such/model"));

    let o = dfastllm(&[
        "generate", "--model", model, "--prompt", "x", "--steps", "abc",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr_line(&o).contains("--steps"));

    let o = dfastllm(&[
        "generate",
        "--model",
        model,
        "--prompt",
        "x",
        "--remasking",
        "best",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr_line(&o).contains("low_confidence"));

    let o = dfastllm(&["generate", "--model", model, "--prompt", ""]);
    assert!(!o.status.success());
    let line = stderr_line(&o);
    assert!(
        line.contains("--prompt") && line.contains("empty"),
        "{line}"
    );

    let o = dfastllm(&[
        "generate",
        "--model",
        model,
        "--prompt",
        "x",
        "--max-tokens",
        "16",
        "--block-length",
        "5",
    ]);
    assert!(!o.status.success());
    assert!(stderr_line(&o).starts_with("error: --block-length"));

    let o = dfastllm(&["generate", "--model", model, "--prompt-ids", "1,99999"]);
    assert!(!o.status.success());
    assert!(stderr_line(&o).contains("99999"));

    let o = dfastllm(&["generate", "--model", model]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr_line(&o).contains("--prompt"));

    let o = dfastllm(&[
        "--threads",
        "0",
        "generate",
        "--model",
        model,
        "--prompt",
        "x",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr_line(&o).contains("--threads"));

    let o = dfastllm(&["demo-model", "--arch", "gpt5", "--out", "/tmp/x"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr_line(&o).contains("gpt5"));
}

#[test]
fn corrupt_weights_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    demo(tmp.path(), "llada", &[]);
    let weights = tmp.path().join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let o = dfastllm(&[
        "generate",
        "--model",
        tmp.path().to_str().unwrap(),
        "--prompt",
        "x",
    ]);
    assert!(!o.status.success());
    let line = stderr_line(&o);
    assert!(line.contains("model.safetensors"), "{line}");
}

fn bundled(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
        .to_string_lossy()
        .into_owned()
}

/// `dfastllm eval --json` on the bundled model's first `limit` held-out prompts; its rows.
fn eval_rows(limit: &str, extra: &[&str]) -> Vec<serde_json::Value> {
    let model = bundled("models/dfastllm-tiny-llada");
    let data = bundled("models/eval/tasks-heldout.jsonl");
    let mut args = vec![
        "--threads",
        "2",
        "eval",
        "--model",
        &model,
        "--data",
        &data,
        "--limit",
        limit,
        "--json",
    ];
    args.extend_from_slice(extra);
    let o = dfastllm(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["rows"].as_array().unwrap().clone()
}

#[test]
fn eval_on_the_bundled_model_shows_what_fast_decoding_buys() {
    let rows = eval_rows(
        "24",
        &[
            "--strategies",
            "baseline,threshold,factor+mor",
            "--kv-cache",
            "none,dual",
        ],
    );
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "baseline/none",
            "threshold/none",
            "factor+mor/none",
            "baseline/dual",
            "threshold/dual",
            "factor+mor/dual"
        ]
    );
    for r in &rows {
        for field in [
            "accuracy",
            "mean_forward_passes",
            "tokens_per_forward",
            "tokens_per_second",
        ] {
            assert!(
                r[field].as_f64().is_some_and(f64::is_finite),
                "{field} in {r}"
            );
        }
        assert_eq!(r["examples"], 24);
        assert_eq!(r["answers"].as_array().unwrap().len(), 24);
    }
    let passes = |i: usize| rows[i]["mean_forward_passes"].as_f64().unwrap();
    let correct = |i: usize| rows[i]["correct"].as_i64().unwrap();
    assert_eq!(passes(0), 32.0, "the baseline decodes one token per pass");
    assert!(
        passes(4) * 4.0 <= passes(0),
        "threshold + dual: {} passes",
        passes(4)
    );
    // The trained model solves the easy tasks; fast decoding keeps its answers.
    assert!(correct(0) >= 8, "baseline solved only {} of 24", correct(0));
    assert!(
        (correct(4) - correct(0)).abs() <= 1,
        "{} vs {}",
        correct(4),
        correct(0)
    );
}

#[test]
fn eval_errors_name_the_flag() {
    let model = bundled("models/dfastllm-tiny-llada");
    let data = bundled("models/eval/tasks-heldout.jsonl");
    let o = dfastllm(&[
        "eval",
        "--model",
        &model,
        "--data",
        &data,
        "--strategies",
        "fastest",
    ]);
    assert!(!o.status.success());
    assert!(
        stderr_line(&o).contains("--strategies"),
        "{}",
        stderr_line(&o)
    );
    let o = dfastllm(&[
        "eval",
        "--model",
        &model,
        "--data",
        &data,
        "--strategies",
        "verifier",
    ]);
    assert!(
        stderr_line(&o).contains("--apd-verifier"),
        "{}",
        stderr_line(&o)
    );
    let o = dfastllm(&["eval", "--model", &model, "--data", "/nonexistent.jsonl"]);
    assert!(stderr_line(&o).contains("--data"), "{}", stderr_line(&o));
    let o = dfastllm(&[
        "generate",
        "--model",
        &model,
        "--prompt",
        "sort 321=",
        "--max-tokens",
        "8",
        "--apd",
        "threshold",
        "--apd-threshold",
        "1.5",
    ]);
    assert!(
        stderr_line(&o).contains("--apd-threshold"),
        "{}",
        stderr_line(&o)
    );
}

#[test]
fn eval_runs_the_apd_verifier_with_the_bundled_autoregressive_model() {
    let ar = bundled("models/dfastllm-tiny-ar");
    let rows = eval_rows(
        "16",
        &[
            "--strategies",
            "baseline,verifier",
            "--kv-cache",
            "none,dual",
            "--apd-verifier",
            &ar,
        ],
    );
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["baseline/none", "verifier/none", "baseline/dual"],
        "one verifier row"
    );
    let passes = |i: usize| rows[i]["mean_forward_passes"].as_f64().unwrap();
    // At least one token per diffusion pass, up to the lookahead of 8.
    assert!(
        passes(1) >= 4.0 && passes(1) * 2.0 <= passes(0),
        "{} vs {}",
        passes(1),
        passes(0)
    );
    assert_eq!(rows[1]["answers"].as_array().unwrap().len(), 16);
}

#[test]
fn generate_runs_the_apd_verifier_and_names_what_it_needs() {
    let (model, ar) = (
        bundled("models/dfastllm-tiny-llada"),
        bundled("models/dfastllm-tiny-ar"),
    );
    let base = [
        "generate",
        "--model",
        &model,
        "--prompt",
        "sort 9081726=",
        "--max-tokens",
        "32",
    ];
    let o = dfastllm(
        &[
            &base[..],
            &[
                "--block-length",
                "8",
                "--apd",
                "verifier",
                "--apd-verifier-model",
                &ar,
                "--json",
            ],
        ]
        .concat(),
    );
    assert!(o.status.success(), "{}", stderr_line(&o));
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(out["text"], "0126789");
    assert!(out["forward_passes"].as_u64().unwrap() < 8, "{out}");
    let missing = dfastllm(&[&base[..], &["--apd", "verifier"]].concat());
    assert!(!missing.status.success());
    assert!(
        stderr_line(&missing).contains("--apd-verifier-model"),
        "{}",
        stderr_line(&missing)
    );
    let diffusion = dfastllm(&[&base[..], &["--apd-verifier-model", &model]].concat());
    assert!(!diffusion.status.success());
    assert!(
        stderr_line(&diffusion).starts_with("error: --apd-verifier-model"),
        "{}",
        stderr_line(&diffusion)
    );
}

#[test]
fn generate_refuses_what_the_api_refuses() {
    let tmp = tempfile::tempdir().unwrap();
    demo(tmp.path(), "llada", &[]);
    let model = tmp.path().to_str().unwrap();
    let o = dfastllm(&[
        "generate",
        "--model",
        model,
        "--prompt",
        "x",
        "--temperature",
        "3",
    ]);
    assert!(!o.status.success());
    assert!(
        stderr_line(&o).starts_with("error: --temperature: must be between 0 and 2"),
        "{}",
        stderr_line(&o)
    );
    // The kind decides which knobs apply, in one place for the CLI and the API.
    let o = dfastllm(&[
        "generate", "--model", model, "--prompt", "x", "--top-k", "3",
    ]);
    assert!(!o.status.success());
    assert_eq!(
        stderr_line(&o),
        "error: --top-k: top_k is not supported by diffusion models"
    );
}

#[test]
fn serve_print_config_shows_each_values_origin_and_reads_back() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("runtime.toml");
    std::fs::write(
        &file,
        "[server]\nmax_queue = 5\n[decoding.mor]\nenabled = true\nmax_recursions = 4\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_dfastllm"))
        .args([
            "serve",
            "--config",
            file,
            "--port",
            "7000",
            "--mor-min-recursions",
            "1",
        ])
        .args(["--print-config"])
        .env("DFASTLLM_BATCH_WAIT_MS", "3")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("port = 7000  # --port\n"), "{text}");
    assert!(
        text.contains("batch_wait_ms = 3  # DFASTLLM_BATCH_WAIT_MS\n"),
        "{text}"
    );
    assert!(
        text.contains(&format!("max_queue = 5  # {file}\n")),
        "{text}"
    );
    assert!(
        text.contains("max_recursions = 4  #"),
        "the file's count survives a MoR flag: {text}"
    );
    assert!(
        text.contains("min_recursions = 1  # --mor-min-recursions\n"),
        "{text}"
    );
    assert!(text.contains("host = \"0.0.0.0\"  # default\n"), "{text}");
    // The help shows the same defaults table.
    let help = dfastllm(&["serve", "--help"]);
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("[default: 256]"),
        "--max-queue's default: {help}"
    );
}

#[test]
fn demo_model_like_a_real_checkpoint_then_generate() {
    let phi = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/real/phi-2");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().to_str().unwrap();
    let o = dfastllm(&[
        "demo-model",
        "--like",
        phi.to_str().unwrap(),
        "--out",
        out,
        "--layers",
        "1",
        "--hidden",
        "32",
        "--heads",
        "2",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = dfastllm(&[
        "generate",
        "--model",
        out,
        "--prompt",
        "Hello, world!",
        "--max-tokens",
        "2",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v["prompt_token_ids"],
        serde_json::json!([15496, 11, 995, 0])
    );
    // --like takes the vocabulary from the checkpoint: --vocab is refused with it.
    let o = dfastllm(&["demo-model", "--like", out, "--out", out, "--vocab", "400"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--vocab"));
}

#[test]
fn inspect_reports_and_exits_non_zero_only_when_something_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    demo(tmp.path(), "qwen2", &[]);
    let dir = tmp.path().to_str().unwrap();
    let o = dfastllm(&["inspect", dir]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("architecture: qwen2 (autoregressive)"),
        "{text}"
    );
    assert!(text.contains("refused: nothing"), "{text}");
    let o = dfastllm(&["inspect", dir, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["chat_template"], "tokenizer_config.json (default)");
    std::fs::remove_file(tmp.path().join("tokenizer.json")).unwrap();
    let o = dfastllm(&["inspect", dir]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("refused: "));
    assert!(String::from_utf8_lossy(&o.stderr).contains("tokenizer.json"));
}

/// `generate` reads generation_config.json as `serve` does: its fields are defaults
/// below the flags, and `--generation-config ignore` turns them off.
#[test]
fn generate_applies_generation_config_defaults_below_its_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |dir: &Path, extra: &[&str]| {
        let mut args = vec!["generate", "--model", dir.to_str().unwrap(), "--json"];
        args.extend_from_slice(extra);
        let o = dfastllm(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    // Autoregressive: a repetition penalty breaks the demo model's greedy loop.
    let ar = tmp.path().join("ar");
    demo(&ar, "llama", &[]);
    std::fs::write(
        ar.join("generation_config.json"),
        r#"{"bos_token_id": 256, "eos_token_id": 257, "repetition_penalty": 1.5}"#,
    )
    .unwrap();
    let ids = |extra: &[&str]| {
        let mut args = vec!["--prompt", "hello hello", "--max-tokens", "24"];
        args.extend_from_slice(extra);
        run(&ar, &args)["token_ids"].clone()
    };
    let ignored = ids(&["--generation-config", "ignore"]);
    let ignored_ids: Vec<u64> = ignored
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let repeats = ignored_ids
        .windows(3)
        .enumerate()
        .any(|(i, w)| ignored_ids[i + 3..].windows(3).any(|later| later == w));
    assert!(
        repeats,
        "without the penalty the answer loops: {ignored_ids:?}"
    );
    assert_ne!(ids(&[]), ignored, "auto applies the checkpoint's penalty");
    assert_eq!(ids(&["--repetition-penalty", "1"]), ignored, "a flag wins");

    // Diffusion: Dream's `steps` (the most steps of an answer) and `alg`.
    let dream = tmp.path().join("dream");
    demo(&dream, "dream", &[]);
    std::fs::write(
        dream.join("generation_config.json"),
        r#"{"steps": 4, "alg": "entropy", "temperature": 0.0}"#,
    )
    .unwrap();
    let len = [
        "--prompt",
        "Hi",
        "--max-tokens",
        "16",
        "--block-length",
        "16",
    ];
    let steps = |extra: &[&str]| {
        let mut args = len.to_vec();
        args.extend_from_slice(extra);
        run(&dream, &args)["steps"].as_u64().unwrap()
    };
    let auto = steps(&[]);
    assert!(auto <= 4, "at most generation_config's 4 steps, got {auto}");
    assert!(steps(&["--generation-config", "ignore"]) > 4);
    assert_eq!(steps(&["--steps", "8"]), 8, "a flag wins");
}
