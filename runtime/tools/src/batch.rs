//! `dfastllm batch`: offline jobs in the OpenAI Batch API's line format. Each input line
//! is `{"custom_id", "method": "POST", "url": "/v1/chat/completions" | "/v1/completions",
//! "body": {...}}`; each output line is `{"id", "custom_id", "response": {"status_code",
//! "request_id", "body"}, "error"}`, one per input line, in completion order.
//!
//! Resumable: output lines are appended and flushed one at a time, so an interrupted run
//! keeps everything it wrote, and a rerun skips every `custom_id` already in the output
//! (a torn last line, from a kill mid-write, is cut off first). A failing line (bad JSON,
//! an unsupported url, a 4xx/5xx answer) gets an error line; it never stops the job.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::Semaphore;

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// One request of the input, or the reason its line cannot be one.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub custom_id: String,
    pub request: Result<(String, Value), String>,
}

const ENDPOINTS: [&str; 2] = ["/v1/completions", "/v1/chat/completions"];

/// Parses the input file. A line that is not a valid request still becomes a job (whose
/// result is an error line); a repeated `custom_id` is refused up front, because the
/// output could not say which of the two a result belongs to.
pub fn read_input(path: &Path) -> Result<Vec<Job>, BatchError> {
    let text = std::fs::read_to_string(path).map_err(|e| BatchError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut jobs = Vec::new();
    let mut seen = std::collections::HashMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let number = i + 1;
        let parsed: Result<Value, String> =
            serde_json::from_str(line).map_err(|e| format!("line {number} is not JSON: {e}"));
        let custom_id = parsed
            .as_ref()
            .ok()
            .and_then(|v| v.get("custom_id"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| format!("line-{number}"));
        if let Some(first) = seen.insert(custom_id.clone(), number) {
            return Err(BatchError::Invalid(format!(
                "{}: line {number} repeats custom_id {custom_id:?} of line {first}",
                path.display()
            )));
        }
        let request = parsed.and_then(|v| {
            let url = v
                .get("url")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("line {number} has no \"url\""))?;
            if !ENDPOINTS.contains(&url) {
                return Err(format!(
                    "line {number}: url {url:?} is not supported (use {})",
                    ENDPOINTS.join(" or ")
                ));
            }
            if let Some(m) = v.get("method").and_then(Value::as_str) {
                if !m.eq_ignore_ascii_case("POST") {
                    return Err(format!("line {number}: method {m:?} is not POST"));
                }
            }
            match v.get("body") {
                Some(body @ Value::Object(_)) => Ok((url.to_string(), body.clone())),
                _ => Err(format!("line {number} has no \"body\" object")),
            }
        });
        jobs.push(Job { custom_id, request });
    }
    Ok(jobs)
}

/// `custom_id`s already answered in `output`, after cutting off a torn last line.
pub fn done_ids(output: &Path) -> Result<HashSet<String>, BatchError> {
    let file_err = |e: std::io::Error| BatchError::File {
        path: output.to_path_buf(),
        message: e.to_string(),
    };
    if !output.exists() {
        return Ok(HashSet::new());
    }
    let text = std::fs::read(output).map_err(file_err)?;
    let complete = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if complete < text.len() {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(output)
            .map_err(file_err)?;
        file.set_len(complete as u64).map_err(file_err)?;
    }
    let mut done = HashSet::new();
    for line in String::from_utf8_lossy(&text[..complete]).lines() {
        if let Some(id) = serde_json::from_str::<Value>(line)
            .ok()
            .and_then(|v| v.get("custom_id")?.as_str().map(str::to_string))
        {
            done.insert(id);
        }
    }
    Ok(done)
}

/// The output line of one finished job.
fn output_line(custom_id: &str, result: Result<(u16, Value), String>) -> Value {
    let id = format!("batch_req_{}", uuid::Uuid::new_v4().simple());
    match result {
        Ok((status, body)) => {
            let error = if (200..300).contains(&status) {
                Value::Null
            } else {
                let code = body
                    .pointer("/error/code")
                    .filter(|c| !c.is_null())
                    .or_else(|| body.pointer("/error/type"))
                    .cloned()
                    .unwrap_or(json!(status));
                json!({
                    "code": code,
                    "message": body.pointer("/error/message").cloned().unwrap_or(json!(format!("HTTP {status}"))),
                })
            };
            json!({
                "id": id, "custom_id": custom_id,
                "response": {"status_code": status, "request_id": id, "body": body},
                "error": error,
            })
        }
        Err(message) => json!({
            "id": id, "custom_id": custom_id, "response": null,
            "error": {"code": "invalid_request", "message": message},
        }),
    }
}

#[derive(Debug, Clone)]
pub struct BatchConfig {
    /// Base URL of an OpenAI-compatible server.
    pub url: String,
    /// Replaces every body's `model` (in-process runs serve exactly one model, whatever
    /// name the file was written for).
    pub model: Option<String>,
    pub api_key: Option<String>,
    pub concurrency: usize,
    pub timeout: Duration,
}

/// What a run did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Summary {
    pub total: usize,
    pub skipped: usize,
    pub completed: usize,
    pub failed: usize,
    pub elapsed_s: f64,
    pub output_tokens: u64,
    /// Requests finished per second in this run.
    pub request_throughput: f64,
}

async fn send(
    client: &reqwest::Client,
    cfg: &BatchConfig,
    url: &str,
    mut body: Value,
) -> Result<(u16, Value), String> {
    // Streaming makes no sense for an output file: always ask for the whole answer.
    body["stream"] = json!(false);
    if let Some(model) = &cfg.model {
        body["model"] = json!(model);
    }
    let mut req = client
        .post(format!("{}{url}", cfg.url))
        .json(&body)
        .timeout(cfg.timeout);
    if let Some(key) = &cfg.api_key {
        req = req.bearer_auth(key);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = resp.status().as_u16();
    let text = resp
        .text()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?;
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok((status, body))
}

/// Runs every job not yet in `output`, appending a line per job. `progress` is called
/// with (finished in this run, to do in this run) after each line.
pub async fn run(
    cfg: BatchConfig,
    jobs: Vec<Job>,
    output: &Path,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<Summary, BatchError> {
    if cfg.concurrency == 0 {
        return Err(BatchError::Invalid(
            "--concurrency must be at least 1".into(),
        ));
    }
    let done = done_ids(output)?;
    let total = jobs.len();
    let todo: Vec<Job> = jobs
        .into_iter()
        .filter(|j| !done.contains(&j.custom_id))
        .collect();
    let mut summary = Summary {
        total,
        skipped: total - todo.len(),
        ..Summary::default()
    };
    let file_err = |e: std::io::Error| BatchError::File {
        path: output.to_path_buf(),
        message: e.to_string(),
    };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(output)
        .map_err(file_err)?;
    let client = reqwest::Client::new();
    let cfg = Arc::new(cfg);
    let slots = Arc::new(Semaphore::new(cfg.concurrency));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let start = Instant::now();
    let count = todo.len();
    for job in todo {
        let (client, cfg, slots, tx) = (client.clone(), cfg.clone(), slots.clone(), tx.clone());
        tokio::spawn(async move {
            let Ok(_permit) = slots.acquire_owned().await else {
                return;
            };
            let result = match job.request {
                Ok((url, body)) => send(&client, &cfg, &url, body).await,
                Err(message) => Err(message),
            };
            let _ = tx.send((job.custom_id, result));
        });
    }
    drop(tx);
    while let Some((custom_id, result)) = rx.recv().await {
        match &result {
            Ok((status, body)) if (200..300).contains(status) => {
                summary.completed += 1;
                summary.output_tokens += body
                    .pointer("/usage/completion_tokens")
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
            }
            _ => summary.failed += 1,
        }
        let mut line = output_line(&custom_id, result).to_string();
        line.push('\n');
        // One write per line, flushed before the next: a kill loses at most the line
        // being written, which the next run cuts off and redoes.
        file.write_all(line.as_bytes()).map_err(file_err)?;
        file.flush().map_err(file_err)?;
        progress(summary.completed + summary.failed, count);
    }
    file.sync_data().map_err(file_err)?;
    summary.elapsed_s = start.elapsed().as_secs_f64();
    if summary.elapsed_s > 0.0 {
        summary.request_throughput =
            (summary.completed + summary.failed) as f64 / summary.elapsed_s;
    }
    Ok(summary)
}

/// Parses `--sla`: a number with `s`, `m`, `h` or `d` (`24h`, `90m`, `1.5d`).
pub fn parse_window(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (number, unit) = t.split_at(t.len().saturating_sub(1));
    let scale = match unit {
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        _ => {
            return Err(format!(
                "{text:?}: expected a number and s, m, h or d, like 24h"
            ))
        }
    };
    match number.parse::<f64>() {
        Ok(n) if n > 0.0 && n.is_finite() => Ok(Duration::from_secs_f64(n * scale)),
        _ => Err(format!(
            "{text:?}: expected a positive number before the unit"
        )),
    }
}

fn human(seconds: f64) -> String {
    let s = seconds.round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// Whether `total` requests fit `window` at `throughput` requests/s, with the margin.
pub fn sla_verdict(total: usize, throughput: f64, window: Duration) -> String {
    if throughput <= 0.0 {
        return "SLA: no request ran in this run, so there is no throughput to extrapolate from"
            .into();
    }
    let needed = total as f64 / throughput;
    let budget = window.as_secs_f64();
    let margin = budget - needed;
    if margin >= 0.0 {
        format!(
            "SLA: fits. {total} requests at {throughput:.2} req/s take {}; the {} window leaves {} ({:.1}%) to spare",
            human(needed),
            human(budget),
            human(margin),
            margin / budget * 100.0
        )
    } else {
        format!(
            "SLA: does NOT fit. {total} requests at {throughput:.2} req/s take {}, {} over the {} window; {:.2} req/s are needed",
            human(needed),
            human(-margin),
            human(budget),
            total as f64 / budget
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_lines_become_jobs_or_error_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        std::fs::write(
            &path,
            concat!(
                r#"{"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": {"prompt": "x"}}"#, "\n",
                "not json\n",
                "\n",
                r#"{"custom_id": "c", "url": "/v1/embeddings", "body": {}}"#, "\n",
            ),
        )
        .unwrap();
        let jobs = read_input(&path).unwrap();
        assert_eq!(jobs.len(), 3);
        assert_eq!(jobs[0].request.as_ref().unwrap().0, "/v1/completions");
        assert_eq!(jobs[1].custom_id, "line-2");
        assert!(jobs[1].request.is_err());
        assert!(jobs[2]
            .request
            .as_ref()
            .unwrap_err()
            .contains("/v1/embeddings"));

        std::fs::write(&path, "{\"custom_id\": \"a\"}\n{\"custom_id\": \"a\"}\n").unwrap();
        let err = read_input(&path).unwrap_err().to_string();
        assert!(
            err.contains("line 2 repeats custom_id \"a\" of line 1"),
            "{err}"
        );
    }

    #[test]
    fn a_torn_last_line_is_cut_and_not_counted() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.jsonl");
        std::fs::write(
            &out,
            "{\"custom_id\": \"a\"}\n{\"custom_id\": \"b\"}\n{\"custom_id\": \"c",
        )
        .unwrap();
        let done = done_ids(&out).unwrap();
        assert_eq!(done, HashSet::from(["a".to_string(), "b".to_string()]));
        assert!(std::fs::read_to_string(&out).unwrap().ends_with("\"b\"}\n"));
    }

    #[test]
    fn sla_windows_and_verdicts() {
        assert_eq!(parse_window("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_window("90m").unwrap(), Duration::from_secs(5400));
        assert!(parse_window("24").is_err());
        assert!(parse_window("-1h").is_err());
        let fits = sla_verdict(1_000_000, 20.0, Duration::from_secs(86_400));
        assert!(fits.contains("fits") && fits.contains("13h53m"), "{fits}");
        let late = sla_verdict(1_000_000, 10.0, Duration::from_secs(86_400));
        assert!(
            late.contains("NOT fit") && late.contains("11.57 req/s"),
            "{late}"
        );
    }
}
