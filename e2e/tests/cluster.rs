//! The operator against a real API server, controller manager, scheduler and kwok
//! nodes (see e2e/scripts/with-cluster.sh). Each test has its own namespace and its
//! own operator process watching only that namespace, so the tests run in parallel.

use std::collections::BTreeSet;
use std::time::Duration;

use dfastllm_e2e::{
    apply, bound_volume, client, condition, conditions_summary, diffusion_model, eventually, json,
    kubectl, kubectl_result, namespace, repo, setup, Operator, Value,
};
use dfastllm_operator::crd::DiffusionModel;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node, PersistentVolumeClaim, Pod, Service};
use kube::api::{Api, ListParams};
use kube::{Resource, ResourceExt};

const WAIT: Duration = Duration::from_secs(120);

fn instance(name: &str) -> ListParams {
    ListParams::default().labels(&format!("app.kubernetes.io/instance={name}"))
}

async fn dm_api(ns: &str) -> Api<DiffusionModel> {
    Api::namespaced(client().await, ns)
}

/// Waits for `condition=status` on a DiffusionModel; returns the model.
async fn wait_condition(ns: &str, name: &str, type_: &str, status: &str) -> DiffusionModel {
    let api = dm_api(ns).await;
    eventually(&format!("{ns}/{name} {type_}={status}"), WAIT, || {
        let api = api.clone();
        async move {
            let dm = api.get(name).await.map_err(|e| e.to_string())?;
            match condition(&dm, type_) {
                Some((s, _)) if s == status => Ok(dm),
                _ => Err(conditions_summary(&dm)),
            }
        }
    })
    .await
}

/// The one child of kind K labelled with the DiffusionModel's name; checks that it is
/// controlled by that DiffusionModel.
async fn only_child<K>(ns: &str, dm: &DiffusionModel) -> K
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client().await, ns);
    let name = dm.name_any();
    let uid = dm.uid().expect("a stored object has a uid");
    let kind = K::kind(&K::DynamicType::default()).to_string();
    eventually(&format!("the {kind} of {ns}/{name}"), WAIT, || {
        let (api, uid, name) = (api.clone(), uid.clone(), name.clone());
        async move {
            let list = api
                .list(&instance(&name))
                .await
                .map_err(|e| e.to_string())?;
            let [child] = list.items.as_slice() else {
                return Err(format!("{} objects", list.items.len()));
            };
            let owners = child.owner_references();
            match owners {
                [o] if o.uid == uid && o.kind == "DiffusionModel" && o.controller == Some(true) => {
                    Ok(child.clone())
                }
                _ => Err(format!("owner references {owners:?}")),
            }
        }
    })
    .await
}

#[tokio::test]
#[ignore = "needs a control plane: make e2e"]
async fn api_server_rejects_invalid_specs_naming_the_field() {
    let ns = namespace("e2e-invalid");
    let cases: [(&str, Value, &str); 8] = [
        ("gpu-count", json!({"gpu": {"count": 99}}), "spec.gpu.count"),
        (
            "remasking",
            json!({"decoding": {"remasking": "fastest"}}),
            "spec.decoding.remasking: Unsupported value: \"fastest\"",
        ),
        (
            "uri",
            json!({"model": {"uri": "s3://bucket/llada"}}),
            "spec.model.uri",
        ),
        (
            "block",
            json!({"decoding": {"genLength": 64, "blockLength": 24, "steps": null}}),
            "decoding.blockLength must divide decoding.genLength",
        ),
        ("replicas", json!({"replicas": -1}), "spec.replicas"),
        (
            "utilization",
            json!({"gpu": {"memoryUtilization": "1.5"}}),
            "spec.gpu.memoryUtilization",
        ),
        (
            "recursions",
            json!({"decoding": {"mor": {"enabled": true, "minRecursions": 3, "maxRecursions": 1}}}),
            "mor.minRecursions must not exceed mor.maxRecursions",
        ),
        (
            "no-uri",
            json!({"model": {"uri": null}}),
            "spec.model.uri: Required value",
        ),
    ];
    for (name, patch, expected) in cases {
        let obj = diffusion_model(&format!("bad-{name}"), "pvc://store/m", patch);
        let err = kubectl_result(&["apply", "-n", &ns, "-f", "-"], Some(&obj.to_string()))
            .expect_err(&format!("the API server accepted bad-{name}"));
        assert!(
            err.contains(expected),
            "bad-{name}: expected the error to name `{expected}`, got: {err}"
        );
    }
    assert!(
        dm_api(&ns)
            .await
            .list(&ListParams::default())
            .await
            .expect("listing DiffusionModels")
            .items
            .is_empty(),
        "a rejected DiffusionModel was stored"
    );
    // The control: the same object without the mistakes is accepted.
    apply(&ns, &diffusion_model("good", "pvc://store/m", json!({})));
}

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

fn pod_hash(pod: &Pod) -> Option<String> {
    pod.metadata
        .annotations
        .as_ref()?
        .get("dfastllm.io/config-hash")
        .cloned()
}

#[tokio::test]
#[ignore = "needs a control plane: make e2e"]
async fn decoding_change_rewrites_the_config_and_rolls_the_pods() {
    let ns = namespace("e2e-rollout");
    let _op = Operator::start(&ns, "rollout", &[]);
    apply(
        &ns,
        &diffusion_model("roll", "host:///models/roll", json!({"replicas": 2})),
    );
    let dm = wait_condition(&ns, "roll", "Ready", "True").await;
    let c = client().await;
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(c.clone(), &ns);
    let old_toml = only_child::<ConfigMap>(&ns, &dm)
        .await
        .data
        .and_then(|d| d.get("runtime.toml").cloned())
        .expect("runtime.toml");
    assert!(old_toml.contains("steps = 32"), "{old_toml}");
    let old_pods: BTreeSet<String> = pods
        .list(&instance("roll"))
        .await
        .expect("pods")
        .items
        .iter()
        .map(|p| p.name_any())
        .collect();
    let old_hash = pods
        .list(&instance("roll"))
        .await
        .expect("pods")
        .items
        .first()
        .and_then(pod_hash)
        .expect("pods carry the config hash");

    kubectl(&[
        "patch",
        "dm",
        "roll",
        "-n",
        &ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"decoding":{"steps":64}}}"#,
    ]);
    eventually("runtime.toml to say steps = 64", WAIT, || {
        let cms = cms.clone();
        async move {
            let cm = cms.get("roll-config").await.map_err(|e| e.to_string())?;
            let toml = cm
                .data
                .and_then(|d| d.get("runtime.toml").cloned())
                .unwrap_or_default();
            if toml.contains("steps = 64") {
                Ok(())
            } else {
                Err(toml)
            }
        }
    })
    .await;
    let new_hash = eventually("every pod to be new, Running and Ready", WAIT, || {
        let (pods, old_pods, old_hash) = (pods.clone(), old_pods.clone(), old_hash.clone());
        async move {
            let list = pods
                .list(&instance("roll"))
                .await
                .map_err(|e| e.to_string())?;
            let seen: Vec<String> = list
                .items
                .iter()
                .map(|p| {
                    let ready = p
                        .status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|cs| {
                            cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                        });
                    format!("{} hash={:?} ready={ready}", p.name_any(), pod_hash(p))
                })
                .collect();
            let fresh = list.items.len() == 2
                && list.items.iter().all(|p| {
                    !old_pods.contains(&p.name_any())
                        && pod_hash(p).is_some_and(|h| h != old_hash)
                        && p.metadata.deletion_timestamp.is_none()
                        && p.status
                            .as_ref()
                            .and_then(|s| s.conditions.as_ref())
                            .is_some_and(|cs| {
                                cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                            })
                });
            if fresh {
                Ok(list.items.first().and_then(pod_hash).unwrap_or_default())
            } else {
                Err(seen.join(", "))
            }
        }
    })
    .await;
    assert_ne!(new_hash, old_hash);
    let dm = wait_condition(&ns, "roll", "Ready", "True").await;
    assert_eq!(
        dm.status.and_then(|s| s.observed_generation),
        dm.metadata.generation,
        "status reports the new generation"
    );
}

#[tokio::test]
#[ignore = "needs a control plane: make e2e"]
async fn edited_children_are_restored_and_deleted_with_their_model() {
    let ns = namespace("e2e-gc");
    let _op = Operator::start(&ns, "gc", &[]);
    apply(&ns, &diffusion_model("gc", "host:///models/gc", json!({})));
    let dm = wait_condition(&ns, "gc", "Ready", "True").await;
    let c = client().await;
    let services: Api<Service> = Api::namespaced(c.clone(), &ns);
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(c.clone(), &ns);

    let svc_uid = only_child::<Service>(&ns, &dm).await.uid();
    kubectl(&["delete", "service", "gc", "-n", &ns]);
    eventually("the deleted Service to come back", WAIT, || {
        let (services, svc_uid) = (services.clone(), svc_uid.clone());
        async move {
            match services.get_opt("gc").await.map_err(|e| e.to_string())? {
                Some(s) if s.uid() != svc_uid => Ok(()),
                Some(_) => Err("the old Service".into()),
                None => Err("no Service".into()),
            }
        }
    })
    .await;

    let toml = only_child::<ConfigMap>(&ns, &dm)
        .await
        .data
        .and_then(|d| d.get("runtime.toml").cloned())
        .expect("runtime.toml");
    kubectl(&[
        "patch",
        "configmap",
        "gc-config",
        "-n",
        &ns,
        "--type=merge",
        "-p",
        r##"{"data":{"runtime.toml":"# edited by hand\n"}}"##,
    ]);
    eventually("the hand-edited ConfigMap to be restored", WAIT, || {
        let (cms, toml) = (cms.clone(), toml.clone());
        async move {
            let now = cms
                .get("gc-config")
                .await
                .map_err(|e| e.to_string())?
                .data
                .and_then(|d| d.get("runtime.toml").cloned())
                .unwrap_or_default();
            if now == toml {
                Ok(())
            } else {
                Err(now)
            }
        }
    })
    .await;

    kubectl(&["scale", "deployment", "gc", "-n", &ns, "--replicas=3"]);
    eventually(
        "the hand-scaled Deployment to return to 1 replica",
        WAIT,
        || {
            let deployments = deployments.clone();
            async move {
                let d = deployments.get("gc").await.map_err(|e| e.to_string())?;
                match d.spec.and_then(|s| s.replicas) {
                    Some(1) => Ok(()),
                    other => Err(format!("spec.replicas {other:?}")),
                }
            }
        },
    )
    .await;

    kubectl(&["delete", "dm", "gc", "-n", &ns, "--wait=true"]);
    eventually("garbage collection of every child", WAIT, || {
        let c = c.clone();
        let ns = ns.clone();
        async move {
            let mut left = Vec::new();
            let lp = instance("gc");
            let err = |e: kube::Error| e.to_string();
            for d in Api::<Deployment>::namespaced(c.clone(), &ns)
                .list(&lp)
                .await
                .map_err(err)?
            {
                left.push(format!("Deployment/{}", d.name_any()));
            }
            for s in Api::<Service>::namespaced(c.clone(), &ns)
                .list(&lp)
                .await
                .map_err(err)?
            {
                left.push(format!("Service/{}", s.name_any()));
            }
            for m in Api::<ConfigMap>::namespaced(c.clone(), &ns)
                .list(&lp)
                .await
                .map_err(err)?
            {
                left.push(format!("ConfigMap/{}", m.name_any()));
            }
            for p in Api::<Pod>::namespaced(c.clone(), &ns)
                .list(&lp)
                .await
                .map_err(err)?
            {
                left.push(format!("Pod/{}", p.name_any()));
            }
            if left.is_empty() {
                Ok(())
            } else {
                Err(left.join(", "))
            }
        }
    })
    .await;
}

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

#[tokio::test]
#[ignore = "needs a control plane: make e2e"]
async fn killed_operator_restarts_and_converges_without_duplicates() {
    let ns = namespace("e2e-crash");
    let names: Vec<String> = (0..6).map(|i| format!("crash-{i}")).collect();
    for n in &names {
        apply(
            &ns,
            &diffusion_model(n, &format!("host:///models/{n}"), json!({})),
        );
    }
    let c = client().await;
    let deployments: Api<Deployment> = Api::namespaced(c.clone(), &ns);
    let managed = ListParams::default().labels("app.kubernetes.io/managed-by=dfastllm-operator");
    let mut first = Operator::start(&ns, "crash-1", &[]);
    let created_before_kill = eventually("the first operator to start reconciling", WAIT, || {
        let (deployments, managed) = (deployments.clone(), managed.clone());
        async move {
            let n = deployments
                .list(&managed)
                .await
                .map_err(|e| e.to_string())?
                .items
                .len();
            if n > 0 {
                Ok(n)
            } else {
                Err("no Deployment yet".into())
            }
        }
    })
    .await;
    first.kill();
    eprintln!("killed the operator after {created_before_kill} of 6 Deployments");

    let _second = Operator::start(&ns, "crash-2", &[]);
    for n in &names {
        wait_condition(&ns, n, "Ready", "True").await;
    }
    let dms = dm_api(&ns).await;
    let uids: BTreeSet<String> = dms
        .list(&ListParams::default())
        .await
        .expect("DiffusionModels")
        .items
        .iter()
        .filter_map(|d| d.uid())
        .collect();
    let expect_one_each = |kind: &str, owners: Vec<Vec<String>>| {
        assert_eq!(owners.len(), 6, "{kind}: {owners:?}");
        let distinct: BTreeSet<String> = owners
            .iter()
            .map(|o| {
                assert_eq!(o.len(), 1, "{kind} with owners {o:?}");
                o[0].clone()
            })
            .collect();
        assert_eq!(distinct, uids, "{kind}: one per DiffusionModel");
    };
    let owner_uids = |refs: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference]| {
        refs.iter().map(|r| r.uid.clone()).collect::<Vec<_>>()
    };
    let list = deployments.list(&managed).await.expect("deployments");
    expect_one_each(
        "Deployment",
        list.items
            .iter()
            .map(|d| owner_uids(d.owner_references()))
            .collect(),
    );
    let list = Api::<Service>::namespaced(c.clone(), &ns)
        .list(&managed)
        .await
        .expect("services");
    expect_one_each(
        "Service",
        list.items
            .iter()
            .map(|d| owner_uids(d.owner_references()))
            .collect(),
    );
    let list = Api::<ConfigMap>::namespaced(c.clone(), &ns)
        .list(&managed)
        .await
        .expect("configmaps");
    expect_one_each(
        "ConfigMap",
        list.items
            .iter()
            .map(|d| owner_uids(d.owner_references()))
            .collect(),
    );
    // A second apply of an unchanged template must not start a second rollout.
    let rs = Api::<ReplicaSet>::namespaced(c.clone(), &ns)
        .list(&ListParams::default())
        .await
        .expect("replicasets");
    assert_eq!(
        rs.items.len(),
        6,
        "{:?}",
        rs.items.iter().map(|r| r.name_any()).collect::<Vec<_>>()
    );
}

#[tokio::test]
#[ignore = "needs a control plane: make e2e"]
async fn two_replicas_elect_one_leader_and_hand_over_on_shutdown() {
    let ns = namespace("e2e-leader");
    let election = [
        "--leader-election",
        "--lease-name",
        "e2e-leader",
        "--lease-namespace",
        "dfastllm-system",
    ];
    let a = Operator::start(&ns, "replica-a", &election);
    let b = Operator::start(&ns, "replica-b", &election);
    let (a_ready, b_ready) = eventually("exactly one ready replica", WAIT, || async {
        match (a.readyz().await, b.readyz().await) {
            (Some(200), Some(503)) => Ok((true, false)),
            (Some(503), Some(200)) => Ok((false, true)),
            other => Err(format!("readyz (a, b) = {other:?}")),
        }
    })
    .await;
    assert_ne!(a_ready, b_ready);
    let (mut leader, standby) = if a_ready { (a, b) } else { (b, a) };
    let leases: Api<Lease> = Api::namespaced(client().await, "dfastllm-system");
    let holder = |l: Lease| l.spec.and_then(|s| s.holder_identity).unwrap_or_default();
    assert_eq!(
        holder(leases.get("e2e-leader").await.expect("the lease")),
        leader.identity
    );
    apply(
        &ns,
        &diffusion_model("first", "host:///models/first", json!({})),
    );
    wait_condition(&ns, "first", "Ready", "True").await;
    assert_eq!(
        standby.readyz().await,
        Some(503),
        "the standby stays passive"
    );

    leader.terminate().await;
    eventually("the standby to take over", WAIT, || {
        let leases = leases.clone();
        let standby = &standby;
        async move {
            let l = leases.get("e2e-leader").await.map_err(|e| e.to_string())?;
            let h = holder(l);
            match standby.readyz().await {
                Some(200) if h == standby.identity => Ok(()),
                r => Err(format!("holder {h:?}, standby readyz {r:?}")),
            }
        }
    })
    .await;
    apply(
        &ns,
        &diffusion_model("second", "host:///models/second", json!({})),
    );
    wait_condition(&ns, "second", "Ready", "True").await;
}

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
