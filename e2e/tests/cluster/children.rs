//! The operator owns its children: a deleted or hand-edited child is put back, and
//! deleting the DiffusionModel garbage-collects every one of them.

use dfastllm_e2e::{
    apply, client, diffusion_model, eventually, json, kubectl, namespace, Operator,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use kube::api::Api;
use kube::ResourceExt;

use crate::helpers::{instance, only_child, wait_condition, WAIT};

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
