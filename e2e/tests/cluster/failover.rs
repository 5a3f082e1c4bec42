//! The operator as a process that dies: a killed operator's successor converges
//! without duplicate children, and with leader election one replica of two reconciles
//! and hands over on shutdown.

use std::collections::BTreeSet;

use dfastllm_e2e::{apply, client, diffusion_model, eventually, json, namespace, Operator};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::{Api, ListParams};
use kube::ResourceExt;

use crate::helpers::{dm_api, wait_condition, WAIT};

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

/// Issue 16, reproduction 8: with `--leader-election` and no `--identity` outside a pod,
/// both replicas led (both defaulted to one identity).
#[tokio::test]
#[ignore = "needs a control plane: make e2e"]
async fn replicas_without_an_identity_still_elect_one_leader() {
    let ns = namespace("e2e-noidentity");
    let election = [
        "--leader-election",
        "--lease-name",
        "e2e-noidentity",
        "--lease-namespace",
        "dfastllm-system",
    ];
    let a = Operator::start(&ns, "", &election);
    let b = Operator::start(&ns, "", &election);
    eventually("exactly one ready replica", WAIT, || async {
        match (a.readyz().await, b.readyz().await) {
            (Some(200), Some(503)) | (Some(503), Some(200)) => Ok(()),
            other => Err(format!("readyz (a, b) = {other:?}")),
        }
    })
    .await;
    let leases: Api<Lease> = Api::namespaced(client().await, "dfastllm-system");
    let lease = leases.get("e2e-noidentity").await.expect("the lease");
    let holder = lease
        .spec
        .and_then(|s| s.holder_identity)
        .unwrap_or_default();
    let pid = holder.rsplit('-').next().unwrap_or_default();
    assert!(
        pid.parse::<u32>().is_ok() && holder != "dfastllm-operator",
        "the default identity is host name and process id: {holder:?}"
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
