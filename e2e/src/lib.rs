//! Harness for the end-to-end tests: a real control plane started by
//! `e2e/scripts/with-cluster.sh`, `kubectl` as a user runs it, and the real operator
//! binary as a child process.
//!
//! Every wait is [`eventually`]: a condition polled until a deadline, which on timeout
//! panics with what it last saw. Nothing sleeps a fixed time to wait for state.

use std::future::Future;
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use serde_json::{json, Value};

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ has a parent")
        .to_path_buf()
}

/// The run directory of `with-cluster.sh` (certificates, kubeconfigs, logs).
pub fn run_dir() -> PathBuf {
    std::env::var_os("DFASTLLM_E2E_DIR")
        .map(PathBuf::from)
        .expect("DFASTLLM_E2E_DIR is unset: run the e2e tests through e2e/scripts/with-cluster.sh (make e2e)")
}

/// Polls `probe` every 250 ms until it returns `Ok`, for at most `timeout`. `Err`
/// carries what the probe saw, which the panic reports when the deadline passes.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match probe().await {
            Ok(v) => return v,
            Err(seen) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last saw: {seen}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// Runs kubectl (the one built with the cluster, first on PATH) with `stdin` as input.
pub fn kubectl_result(args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    let mut cmd = Command::new("kubectl");
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run kubectl: {e}"))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(|e| format!("writing kubectl's stdin: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for kubectl: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "kubectl {} failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        ))
    }
}

/// kubectl that must succeed; returns stdout.
pub fn kubectl(args: &[&str]) -> String {
    kubectl_result(args, None).unwrap_or_else(|e| panic!("{e}"))
}

/// `kubectl apply -f -` of one object (JSON is YAML) in `ns`.
pub fn apply(ns: &str, obj: &Value) -> String {
    kubectl_result(&["apply", "-n", ns, "-f", "-"], Some(&obj.to_string()))
        .unwrap_or_else(|e| panic!("{e}"))
}

/// What every test needs once per process: the CRD established, the operator's
/// namespace, ServiceAccount and RBAC from config/, and a kubeconfig that
/// authenticates as that ServiceAccount (so the tests also prove the RBAC suffices).
pub struct Setup {
    pub operator_kubeconfig: PathBuf,
}

pub fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let root = repo();
        let crd = root.join("crds/diffusionmodels.dfastllm.io.yaml");
        kubectl(&[
            "apply",
            "--server-side",
            "--field-manager=e2e",
            "-f",
            &crd.to_string_lossy(),
        ]);
        kubectl(&[
            "wait",
            "--for=condition=Established",
            "crd/diffusionmodels.dfastllm.io",
            "--timeout=60s",
        ]);
        kubectl(&[
            "apply",
            "-f",
            &root.join("config/manager/namespace.yaml").to_string_lossy(),
        ]);
        kubectl(&["apply", "-k", &root.join("config/rbac").to_string_lossy()]);
        let token = kubectl(&[
            "create",
            "token",
            "dfastllm-operator",
            "-n",
            "dfastllm-system",
            "--duration=4h",
        ]);
        let dir = run_dir();
        let server = std::env::var("DFASTLLM_E2E_SERVER").expect("DFASTLLM_E2E_SERVER is set");
        let kubeconfig = dir.join("operator.kubeconfig");
        let body = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n  - name: e2e\n    cluster:\n      server: {server}\n      certificate-authority: {ca}\nusers:\n  - name: operator\n    user:\n      token: {token}\ncontexts:\n  - name: e2e\n    context: {{cluster: e2e, user: operator}}\ncurrent-context: e2e\n",
            ca = dir.join("pki/ca.crt").display(),
            token = token.trim(),
        );
        std::fs::write(&kubeconfig, body).expect("writing operator.kubeconfig");
        Setup {
            operator_kubeconfig: kubeconfig,
        }
    })
}

/// A kube client with the admin kubeconfig (KUBECONFIG).
pub async fn client() -> kube::Client {
    kube::Client::try_default()
        .await
        .expect("a kube client from KUBECONFIG")
}

/// Creates (or reuses) namespace `name`.
pub fn namespace(name: &str) -> String {
    setup();
    let _ = kubectl_result(&["create", "namespace", name], None);
    name.to_string()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// The real `dfastllm-operator run`, authenticated as its ServiceAccount. Killed when
/// dropped; when the test is failing, the tail of its log is printed.
pub struct Operator {
    child: Option<Child>,
    pub metrics: SocketAddr,
    pub identity: String,
    log: PathBuf,
}

impl Operator {
    /// Starts an operator watching namespace `ns`; `extra` are more `run` flags. An
    /// empty `identity` passes no `--identity` (and no `HOSTNAME`): the default's test.
    pub fn start(ns: &str, identity: &str, extra: &[&str]) -> Self {
        let setup = setup();
        let bin = std::env::var_os("DFASTLLM_E2E_OPERATOR_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo().join("target/debug/dfastllm-operator"));
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port())
            .parse()
            .expect("a socket address");
        let name = if identity.is_empty() {
            "default-identity"
        } else {
            identity
        };
        let log = run_dir().join(format!("logs/operator-{ns}-{name}-{}.log", free_port()));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("creating the operator's log");
        let identity_flag: &[&str] = if identity.is_empty() {
            &[]
        } else {
            &["--identity", identity]
        };
        let child = Command::new(&bin)
            .args([
                "run",
                "--namespace",
                ns,
                "--metrics-bind-address",
                &metrics.to_string(),
            ])
            .args(identity_flag)
            .args([
                "--runtime-image",
                "registry.invalid/dfastllm-runtime:e2e-cuda",
                "--runtime-cpu-image",
                "registry.invalid/dfastllm-runtime:e2e-cpu",
            ])
            .args(extra)
            .env("KUBECONFIG", &setup.operator_kubeconfig)
            .env_remove("HOSTNAME")
            .env_remove("DFASTLLM_OPERATOR_IDENTITY")
            .env("DFASTLLM_LOG", "info,kube=warn")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log handle"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        Self {
            child: Some(child),
            metrics,
            identity: identity.to_string(),
            log,
        }
    }

    /// SIGKILL: no chance to finish a reconcile or release a lease.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits for the process to exit (bounded).
    pub async fn terminate(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let exited = eventually(
            "the operator to exit after SIGTERM",
            Duration::from_secs(30),
            || {
                let r = c.try_wait();
                async move {
                    match r {
                        Ok(Some(status)) => Ok(status),
                        Ok(None) => Err("still running".to_string()),
                        Err(e) => Err(e.to_string()),
                    }
                }
            },
        )
        .await;
        assert!(
            exited.success(),
            "the operator exited with {exited} on SIGTERM"
        );
    }

    /// HTTP status of the operator's /readyz (None while it does not answer).
    pub async fn readyz(&self) -> Option<u16> {
        reqwest::get(format!("http://{}/readyz", self.metrics))
            .await
            .ok()
            .map(|r| r.status().as_u16())
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "---- operator {} log ({}) ----\n{}",
                self.identity,
                self.log.display(),
                self.log_tail(30)
            );
        }
    }
}

/// A PersistentVolume pre-bound to claim `ns/claim`; with `create_claim`, the claim
/// too (as a user would bring their own model PVC).
pub fn bound_volume(ns: &str, claim: &str, size: &str, create_claim: bool) {
    let pv = format!("{ns}-{claim}");
    kubectl_result(
        &["apply", "-f", "-"],
        Some(
            &json!({
                "apiVersion": "v1", "kind": "PersistentVolume",
                "metadata": {"name": pv},
                "spec": {
                    "capacity": {"storage": size},
                    "accessModes": ["ReadWriteOnce", "ReadOnlyMany"],
                    "storageClassName": "",
                    "persistentVolumeReclaimPolicy": "Retain",
                    "hostPath": {"path": format!("/tmp/dfastllm-e2e/{pv}")},
                    "claimRef": {"namespace": ns, "name": claim},
                }
            })
            .to_string(),
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    if create_claim {
        apply(
            ns,
            &json!({
                "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"name": claim},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "storageClassName": "",
                    "volumeName": pv,
                    "resources": {"requests": {"storage": size}},
                }
            }),
        );
    }
}

/// A small DiffusionModel on the CPU (the fleet's 16 GPUs are too few for every test
/// at once; the samples test covers GPU placement), with `patch` merged into its spec.
pub fn diffusion_model(name: &str, uri: &str, spec_patch: Value) -> Value {
    let mut spec = json!({
        "model": {"uri": uri, "servedName": name, "architecture": "llada"},
        "replicas": 1,
        "gpu": {"count": 0},
        "decoding": {"genLength": 64, "blockLength": 16, "steps": 32},
        "monitoring": {"serviceMonitor": false},
    });
    merge(&mut spec, spec_patch);
    json!({
        "apiVersion": "dfastllm.io/v1alpha1",
        "kind": "DiffusionModel",
        "metadata": {"name": name},
        "spec": spec,
    })
}

/// JSON merge patch (RFC 7386) of `patch` into `target`.
pub fn merge(target: &mut Value, patch: Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(&k);
                } else {
                    merge(t.entry(k).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p,
    }
}

/// The named condition of a DiffusionModel's status as (status, reason), if any.
pub fn condition(
    dm: &dfastllm_operator::crd::DiffusionModel,
    type_: &str,
) -> Option<(String, String)> {
    dm.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

/// A short summary of a DiffusionModel's conditions, for timeout messages.
pub fn conditions_summary(dm: &dfastllm_operator::crd::DiffusionModel) -> String {
    dm.status
        .as_ref()
        .map(|s| {
            s.conditions
                .iter()
                .map(|c| format!("{}={} ({}: {})", c.type_, c.status, c.reason, c.message))
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_else(|| "no status".into())
}
