//! `reconcile` and `error_policy` against a scripted API server: each test plays one
//! [`Scenario`] from [`crate::fixtures`], which checks every request in order.

use std::sync::Arc;
use std::time::Duration;

use kube::runtime::controller::Action;
use serde_json::Value;

use super::*;
use crate::fixtures::{self, Scenario};
use crate::status::{self, MonitoringState, Observed, StorageState};

#[test]
fn backoff_doubles_from_5_seconds_to_5_minutes() {
    let delays: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
    assert_eq!(delays, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
    assert_eq!(backoff(u32::MAX).as_secs(), 300);
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap()
}

#[tokio::test]
async fn missing_pvc_and_servicemonitor_crd_become_conditions_not_errors() {
    let (ctx, server) = Context::test();
    let verifier = server.run(Scenario::MissingClaimWithoutPrometheus);
    let action = reconcile(Arc::new(fixtures::llada_on_model_store(None)), ctx)
        .await
        .expect("no error loop for a missing PVC");
    let status = verifier
        .await
        .unwrap()
        .status
        .expect("the status was written");
    assert_eq!(
        action,
        Action::requeue(Duration::from_secs(15)),
        "polls for the PVC to appear"
    );
    assert_eq!(status["phase"], "Pending");
    assert_eq!(
        condition(&status, "ModelStorageReady")["reason"],
        "PVCNotFound"
    );
    assert_eq!(
        condition(&status, "MonitoringReady")["reason"],
        "ServiceMonitorCRDNotFound"
    );
    assert_eq!(condition(&status, "Ready")["status"], "False");
    assert_eq!(status["endpoint"], "http://llada.ml.svc:8000/v1");
}

#[tokio::test]
async fn an_unchanged_status_is_not_rewritten() {
    let observed = Observed {
        generation: Some(1),
        storage: StorageState::Missing {
            claim: "model-store".into(),
        },
        monitoring: MonitoringState::CrdMissing,
        desired_replicas: 1,
        replicas: 1,
        ready_replicas: 0,
        updated_replicas: 1,
        endpoint: "http://llada.ml.svc:8000/v1".into(),
        invalid: None,
    };
    let current = status::compute(
        None,
        &observed,
        jiff::Timestamp::from_second(1_700_000_000).unwrap(),
    );
    let (ctx, server) = Context::test();
    let verifier = server.run(Scenario::MissingClaimWithoutPrometheusStatusCurrent);
    let dm = Arc::new(fixtures::llada_on_model_store(Some(
        serde_json::to_value(&current).unwrap(),
    )));
    // With no status PATCH scripted, a write would wait forever for its answer.
    let action = tokio::time::timeout(Duration::from_secs(10), reconcile(dm, ctx))
        .await
        .expect("reconcile finished without writing the status")
        .unwrap();
    verifier.await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(15)));
}

#[test]
fn every_error_has_its_own_metric_label() {
    let kube = Error::Kube {
        action: "reading PVC model-store".into(),
        source: kube::Error::LinesCodecMaxLineLengthExceeded,
    };
    let no_namespace = Error::NoNamespace("llada".into());
    assert_eq!(kube.metric_label(), "kube");
    assert_eq!(no_namespace.metric_label(), "no_namespace");
}

fn errors_counted(metrics: &Metrics, label: &str) -> u64 {
    metrics
        .reconcile_errors
        .get_or_create(&ErrorLabels {
            error: label.into(),
        })
        .get()
}

#[tokio::test]
async fn error_policy_counts_failures_by_their_metric_label() {
    let metrics = Arc::new(Metrics::default());

    // An API server failure: one `kube` failure, reported as an event, retried in 5 s.
    let (ctx, server) = Context::test_with(metrics.clone());
    let verifier = server.run(Scenario::ClaimReadFails);
    let dm = Arc::new(fixtures::llada_on_model_store(None));
    let error = reconcile(dm.clone(), ctx.clone())
        .await
        .expect_err("a 500 from the API server fails the reconcile");
    assert_eq!(error.metric_label(), "kube");
    assert_eq!(
        error_policy(dm, &error, ctx),
        Action::requeue(Duration::from_secs(5))
    );
    let transcript = verifier.await.unwrap();
    let note = transcript.events[0]["note"].as_str().unwrap();
    assert!(note.contains("reading PVC model-store"), "{note}");

    // Two namespace-less resources: two `no_namespace` failures, no request before them.
    let (ctx, server) = Context::test_with(metrics.clone());
    let verifier = server.run(Scenario::ReconcileFailedEvents(2));
    for name in ["orphan-a", "orphan-b"] {
        let dm = Arc::new(fixtures::without_namespace(name));
        let error = reconcile(dm.clone(), ctx.clone())
            .await
            .expect_err("a resource without a namespace cannot be reconciled");
        assert_eq!(error.metric_label(), "no_namespace");
        error_policy(dm, &error, ctx.clone());
    }
    assert_eq!(verifier.await.unwrap().events.len(), 2);

    assert_eq!(errors_counted(&metrics, "kube"), 1);
    assert_eq!(errors_counted(&metrics, "no_namespace"), 2);
    assert_eq!(metrics.reconciles.get(), 3);
    let exposition = metrics.encode();
    for line in [
        "dfastllm_operator_reconcile_errors_total{error=\"kube\"} 1",
        "dfastllm_operator_reconcile_errors_total{error=\"no_namespace\"} 2",
    ] {
        assert!(
            exposition.contains(line),
            "{line} missing from\n{exposition}"
        );
    }
}
