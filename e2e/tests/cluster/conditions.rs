//! Missing dependencies (the model's PVC, the Prometheus Operator's CRDs) become status
//! conditions with a reason, not reconcile errors, and clear once the dependency
//! appears.

use dfastllm_e2e::{
    apply, bound_volume, condition, diffusion_model, eventually, json, kubectl, kubectl_result,
    namespace, repo, Operator, Value,
};
use kube::ResourceExt;

use crate::helpers::{wait_condition, WAIT};

#[tokio::test]
#[ignore = "needs a control plane: make e2e"]
async fn missing_pvc_is_reported_and_recovers_when_it_appears() {
    let ns = namespace("e2e-pvc");
    let _op = Operator::start(&ns, "pvc", &[]);
    apply(
        &ns,
        &diffusion_model("late", "pvc://late-claim/llada", json!({})),
    );
    let dm = wait_condition(&ns, "late", "ModelStorageReady", "False").await;
    assert_eq!(
        condition(&dm, "ModelStorageReady").map(|c| c.1).as_deref(),
        Some("PVCNotFound")
    );
    assert_eq!(
        condition(&dm, "Ready"),
        Some(("False".into(), "ModelStorageNotReady".into()))
    );
    let shown = kubectl(&[
        "get",
        "dm",
        "late",
        "-n",
        &ns,
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"ModelStorageReady\")].message}",
    ]);
    assert!(
        shown.contains("late-claim"),
        "the message names the claim: {shown}"
    );

    bound_volume(&ns, "late-claim", "10Gi", true);
    wait_condition(&ns, "late", "ModelStorageReady", "True").await;
    wait_condition(&ns, "late", "Ready", "True").await;
}

#[tokio::test]
#[ignore = "needs a control plane: make e2e"]
async fn servicemonitor_is_created_once_its_crd_is_installed() {
    let ns = namespace("e2e-monitoring");
    let _op = Operator::start(&ns, "monitoring", &[]);
    apply(
        &ns,
        &diffusion_model(
            "mon",
            "host:///models/mon",
            json!({"monitoring": {"serviceMonitor": true, "interval": "15s"}}),
        ),
    );
    let dm = wait_condition(&ns, "mon", "MonitoringReady", "False").await;
    assert_eq!(
        condition(&dm, "MonitoringReady").map(|c| c.1).as_deref(),
        Some("ServiceMonitorCRDNotFound")
    );
    // Monitoring is optional: the model is served without it.
    wait_condition(&ns, "mon", "Ready", "True").await;

    let crds = std::path::PathBuf::from(
        std::env::var("DFASTLLM_E2E_PROMETHEUS_CRDS")
            .expect("DFASTLLM_E2E_PROMETHEUS_CRDS is set by with-cluster.sh"),
    );
    for crd in ["servicemonitors", "prometheusrules"] {
        kubectl(&[
            "apply",
            "--server-side",
            "-f",
            &crds
                .join(format!("monitoring.coreos.com_{crd}.yaml"))
                .to_string_lossy(),
        ]);
        kubectl(&[
            "wait",
            "--for=condition=Established",
            &format!("crd/{crd}.monitoring.coreos.com"),
            "--timeout=60s",
        ]);
    }
    let dm = wait_condition(&ns, "mon", "MonitoringReady", "True").await;
    let sm = eventually("the ServiceMonitor", WAIT, || {
        let ns = ns.clone();
        async move {
            let out = kubectl_result(
                &["get", "servicemonitor", "mon", "-n", &ns, "-o", "json"],
                None,
            )?;
            serde_json::from_str::<Value>(&out).map_err(|e| e.to_string())
        }
    })
    .await;
    assert_eq!(
        sm["metadata"]["ownerReferences"][0]["uid"].as_str(),
        dm.uid().as_deref(),
        "{sm}"
    );
    assert_eq!(sm["spec"]["endpoints"][0]["interval"], "15s", "{sm}");
    assert_eq!(sm["spec"]["endpoints"][0]["path"], "/metrics", "{sm}");

    // With the CRDs present, the monitoring kustomization (ServiceMonitor and
    // PrometheusRule for the operator) is accepted by the API server as well.
    let out = kubectl(&[
        "apply",
        "--dry-run=server",
        "-k",
        &repo().join("config/prometheus").to_string_lossy(),
    ]);
    assert!(
        out.contains("servicemonitor.monitoring.coreos.com"),
        "{out}"
    );
    assert!(
        out.contains("prometheusrule.monitoring.coreos.com"),
        "{out}"
    );
}
