//! The install manifests (kustomize, the Helm chart, the KServe ServingRuntime) are
//! accepted by a real API server in a server-side dry run.

use dfastllm_e2e::{kubectl, kubectl_result, namespace, repo, setup};

#[tokio::test]
#[ignore = "needs a control plane: make e2e"]
async fn install_manifests_pass_server_side_dry_run() {
    setup();
    let root = repo();
    let out = kubectl(&[
        "apply",
        "--dry-run=server",
        "-k",
        &root.join("config/default").to_string_lossy(),
    ]);
    for line in [
        "customresourcedefinition.apiextensions.k8s.io/diffusionmodels.dfastllm.io",
        "clusterrole.rbac.authorization.k8s.io/dfastllm-operator",
        "deployment.apps/dfastllm-operator",
    ] {
        assert!(out.contains(line), "no `{line}` in:\n{out}");
    }

    let helm = std::process::Command::new("helm")
        .args([
            "template",
            "dfastllm",
            &root.join("charts/dfastllm-operator").to_string_lossy(),
            "--namespace",
            "dfastllm-system",
            "--include-crds",
        ])
        .output()
        .expect("running helm");
    assert!(
        helm.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&helm.stderr)
    );
    let rendered = String::from_utf8_lossy(&helm.stdout).into_owned();
    let out = kubectl_result(&["apply", "--dry-run=server", "-f", "-"], Some(&rendered))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(out.contains("deployment.apps/dfastllm"), "{out}");
    assert!(
        out.contains("customresourcedefinition.apiextensions.k8s.io/diffusionmodels.dfastllm.io"),
        "{out}"
    );

    // KServe: the ServingRuntime, once its CRD is installed.
    let ns = namespace("e2e-kserve");
    kubectl(&[
        "apply",
        "-f",
        &root
            .join("e2e/manifests/kserve-servingruntime-crd.yaml")
            .to_string_lossy(),
    ]);
    kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/servingruntimes.serving.kserve.io",
        "--timeout=60s",
    ]);
    let out = kubectl(&[
        "apply",
        "-n",
        &ns,
        "--dry-run=server",
        "-k",
        &root.join("config/kserve").to_string_lossy(),
    ]);
    assert!(
        out.contains("servingruntime.serving.kserve.io/dfastllm"),
        "{out}"
    );
}
