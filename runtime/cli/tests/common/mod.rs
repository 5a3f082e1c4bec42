//! Helpers shared by the integration tests.

// Each test crate compiles this module and uses only some of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A `dfastllm serve` process on a free loopback port, killed when dropped.
pub struct Server {
    pub child: Child,
    pub base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn spawn_server(model: &std::path::Path, extra: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dfastllm"))
        .args([
            "serve",
            "--model",
            model.to_str().unwrap(),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        let line = lines.next().expect("the server logs its address").unwrap();
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if v["message"] == "listening" {
            break v["addr"].as_str().unwrap().to_string();
        }
    };
    // Keep draining the log so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Server {
        child,
        base: format!("http://{addr}"),
    }
}

/// Polls `probe` until `check` holds, failing with the last value after `limit`.
pub fn eventually<T: std::fmt::Debug>(
    limit: Duration,
    mut probe: impl FnMut() -> T,
    check: impl Fn(&T) -> bool,
) -> T {
    let until = Instant::now() + limit;
    loop {
        let seen = probe();
        if check(&seen) {
            return seen;
        }
        assert!(
            Instant::now() < until,
            "condition not met within {limit:?}; last saw {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The HTTP status of a GET (0 when nothing answers).
pub fn get_status(url: &str) -> u16 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        reqwest::get(url)
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    })
}

/// Waits for `/readyz` to answer 200.
pub fn wait_ready(server: &Server) {
    let url = format!("{}/readyz", server.base);
    eventually(Duration::from_secs(60), || get_status(&url), |s| *s == 200);
}
