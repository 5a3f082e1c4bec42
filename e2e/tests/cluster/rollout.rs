//! A spec change reaches the pods: the operator rewrites runtime.toml and the config
//! hash on the pod template rolls every pod.

use std::collections::BTreeSet;

use dfastllm_e2e::{
    apply, client, diffusion_model, eventually, json, kubectl, namespace, Operator,
};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::Api;
use kube::ResourceExt;

use crate::helpers::{instance, only_child, wait_condition, WAIT};

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
