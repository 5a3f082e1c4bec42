//! `reconcile` against a scripted API server (kube's `tower_test` pattern): every
//! request the operator makes is checked in order and answered by the script, so these
//! tests pin the exact conversation, including the requests that must NOT happen.

use std::sync::Arc;
use std::time::Duration;

use dfastllm_operator::crd::{DiffusionModel, DiffusionModelSpec};
use dfastllm_operator::metrics::Metrics;
use dfastllm_operator::reconcile::{reconcile, Context};
use dfastllm_operator::resources::OperatorConfig;
use dfastllm_operator::status::{self, MonitoringState, Observed, StorageState};
use http::{Method, Request, Response};
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::Client;
use serde_json::{json, Value};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

fn dm(status: Option<Value>) -> DiffusionModel {
    let spec: DiffusionModelSpec = serde_json::from_value(json!({
        "model": {"uri": "pvc://model-store/llada"},
        "gpu": {"count": 1, "product": "NVIDIA-L40S"},
    }))
    .unwrap();
    let mut dm = DiffusionModel::new("llada", spec);
    dm.metadata.namespace = Some("ml".into());
    dm.metadata.uid = Some("uid-1".into());
    dm.metadata.generation = Some(1);
    dm.status = status.map(|s| serde_json::from_value(s).unwrap());
    dm
}

fn not_found() -> Response<Body> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"});
    Response::builder()
        .status(404)
        .body(Body::from(serde_json::to_vec(&body).unwrap()))
        .unwrap()
}

fn ok(body: &Value) -> Response<Body> {
    Response::builder()
        .status(200)
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

/// Takes the next request, checks method and path, returns its JSON body.
async fn expect(
    handle: &mut Handle,
    method: Method,
    path: &str,
) -> (Value, tower_test::mock::SendResponse<Response<Body>>) {
    let (request, send) = tokio::time::timeout(Duration::from_secs(10), handle.next_request())
        .await
        .unwrap_or_else(|_| panic!("no request arrived; expected {method} {path}"))
        .expect("the client is alive");
    assert_eq!((request.method(), request.uri().path()), (&method, path));
    let bytes = request.into_body().collect_bytes().await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    (body, send)
}

/// The conversation for a resource whose PVC is missing, in a cluster without the
/// Prometheus operator. Returns the status the operator wrote (if it wrote one).
async fn script(mut handle: Handle, write_status: bool) -> Option<Value> {
    let (_, send) = expect(
        &mut handle,
        Method::GET,
        "/api/v1/namespaces/ml/persistentvolumeclaims/model-store",
    )
    .await;
    send.send_response(not_found());
    let (cm, send) = expect(
        &mut handle,
        Method::PATCH,
        "/api/v1/namespaces/ml/configmaps/llada-config",
    )
    .await;
    assert!(cm["data"]["runtime.toml"]
        .as_str()
        .unwrap()
        .contains("max_concurrent_requests = 32"));
    send.send_response(ok(&cm));
    let (svc, send) = expect(
        &mut handle,
        Method::PATCH,
        "/api/v1/namespaces/ml/services/llada",
    )
    .await;
    send.send_response(ok(&svc));
    let (_, send) = expect(
        &mut handle,
        Method::GET,
        "/apis/apps/v1/namespaces/ml/deployments/llada",
    )
    .await;
    send.send_response(not_found());
    let (mut deploy, send) = expect(
        &mut handle,
        Method::PATCH,
        "/apis/apps/v1/namespaces/ml/deployments/llada",
    )
    .await;
    assert_eq!(
        deploy["metadata"]["ownerReferences"][0]["kind"],
        "DiffusionModel"
    );
    deploy["status"] = json!({"replicas": 1, "readyReplicas": 0, "updatedReplicas": 1});
    send.send_response(ok(&deploy));
    let (event, send) = expect(
        &mut handle,
        Method::POST,
        "/apis/events.k8s.io/v1/namespaces/ml/events",
    )
    .await;
    assert_eq!(event["reason"], "Created");
    send.send_response(ok(&event));
    let (_, send) = expect(&mut handle, Method::GET, "/apis/monitoring.coreos.com/v1").await;
    send.send_response(not_found());
    if !write_status {
        return None;
    }
    let (patch, send) = expect(
        &mut handle,
        Method::PATCH,
        "/apis/dfastllm.io/v1alpha1/namespaces/ml/diffusionmodels/llada/status",
    )
    .await;
    send.send_response(ok(
        &serde_json::to_value(dm(Some(patch["status"].clone()))).unwrap()
    ));
    Some(patch["status"].clone())
}

fn context() -> (Arc<Context>, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    (
        Arc::new(Context::new(
            client,
            OperatorConfig::default(),
            Arc::new(Metrics::default()),
        )),
        handle,
    )
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
    let (ctx, handle) = context();
    let verifier = tokio::spawn(script(handle, true));
    let action = reconcile(Arc::new(dm(None)), ctx)
        .await
        .expect("no error loop for a missing PVC");
    let status = verifier.await.unwrap().expect("the status was written");
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
    let (ctx, handle) = context();
    let verifier = tokio::spawn(script(handle, false));
    let dm = Arc::new(dm(Some(serde_json::to_value(&current).unwrap())));
    // With no status PATCH scripted, a write would wait forever for its answer.
    let action = tokio::time::timeout(Duration::from_secs(10), reconcile(dm, ctx))
        .await
        .expect("reconcile finished without writing the status")
        .unwrap();
    verifier.await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(15)));
}
