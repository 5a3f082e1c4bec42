//! The shipped samples (config/samples) reconcile, and each lands on a node with the
//! GPU its profile asks for; the model PVC, the children and `kubectl get dm` as a
//! user sees them.

use dfastllm_e2e::{bound_volume, client, kubectl, namespace, repo, Operator};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Node, PersistentVolumeClaim, Pod, Service};
use kube::api::Api;
use kube::ResourceExt;

use crate::helpers::{dm_api, instance, only_child};

#[tokio::test]
#[ignore = "needs a control plane: make e2e"]
async fn samples_reconcile_onto_nodes_with_the_requested_gpu() {
    let ns = namespace("e2e-samples");
    bound_volume(&ns, "model-store", "100Gi", true);
    // dream-a100 asks the operator to create its claim; the volume waits for it.
    bound_volume(&ns, "dream-7b-weights", "40Gi", false);
    kubectl(&[
        "apply",
        "-n",
        &ns,
        "-k",
        &repo().join("config/samples").to_string_lossy(),
    ]);
    let _op = Operator::start(&ns, "samples", &[]);

    kubectl(&[
        "wait",
        "-n",
        &ns,
        "--for=condition=Ready",
        "diffusionmodel/llada-8b",
        "diffusionmodel/dream-7b",
        "diffusionmodel/tinyllama",
        "--timeout=180s",
    ]);

    let c = client().await;
    let nodes: Api<Node> = Api::all(c.clone());
    let pods: Api<Pod> = Api::namespaced(c.clone(), &ns);
    let dms = dm_api(&ns).await;
    for (name, product) in [
        ("llada-8b", Some("NVIDIA-L40S")),
        ("dream-7b", Some("NVIDIA-A100-SXM4-80GB")),
        ("tinyllama", None),
    ] {
        let dm = dms.get(name).await.expect("the sample exists");
        let deployment: Deployment = only_child(&ns, &dm).await;
        let _: Service = only_child(&ns, &dm).await;
        let cm: ConfigMap = only_child(&ns, &dm).await;
        assert_eq!(deployment.name_any(), name);
        assert!(
            cm.data.unwrap_or_default().contains_key("runtime.toml"),
            "{name}: the ConfigMap has no runtime.toml"
        );
        let list = pods.list(&instance(name)).await.expect("listing pods");
        assert!(!list.items.is_empty(), "{name} has no pods");
        for pod in list.items {
            let node_name = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_else(|| panic!("{name}: pod {} is not scheduled", pod.name_any()));
            let node = nodes.get(&node_name).await.expect("the pod's node exists");
            let labels = node.labels();
            let node_product = labels.get("nvidia.com/gpu.product").map(String::as_str);
            match product {
                Some(p) => assert_eq!(
                    node_product,
                    Some(p),
                    "{name}: pod {} landed on {node_name}",
                    pod.name_any()
                ),
                None => assert_eq!(
                    node_name, "cpu-0",
                    "{name} (gpu.count 0) must run on the CPU node"
                ),
            }
        }
    }

    // The claim the operator created for dream-7b: bound, and not owned (it outlives
    // the DiffusionModel, the weights are expensive to copy again).
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(c.clone(), &ns);
    let pvc = pvcs
        .get("dream-7b-weights")
        .await
        .expect("the operator created dream-7b-weights");
    assert!(
        pvc.owner_references().is_empty(),
        "the model PVC must not be garbage-collected with its DiffusionModel"
    );
    assert_eq!(
        pvc.status.and_then(|s| s.phase).as_deref(),
        Some("Bound"),
        "dream-7b-weights is bound (its pod was scheduled)"
    );

    let table = kubectl(&["get", "dm", "-n", &ns]);
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "PHASE", "READY", "REPLICAS", "GPU", "ENDPOINT", "AGE"],
        "{table}"
    );
    let llada = table
        .lines()
        .find(|l| l.starts_with("llada-8b "))
        .unwrap_or_else(|| panic!("no llada-8b row in:\n{table}"));
    for cell in ["Ready", "NVIDIA-L40S", "http://llada-8b."] {
        assert!(llada.contains(cell), "no `{cell}` in the row: {llada}");
    }
}
