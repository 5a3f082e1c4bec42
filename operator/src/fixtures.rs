//! Test fixtures shared by the builders' tests and the reconcile tests: DiffusionModels
//! as the API server hands them over, and scripted API-server conversations (kube's
//! `tower_test` pattern, as in kube-rs/controller-rs). A [`Scenario`] names one
//! conversation; [`ApiServerVerifier::run`] checks every request the operator makes, in
//! order, and answers it, so a test also pins the requests that must NOT happen: an
//! unscripted request finds no answer and the reconcile under test never finishes.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response};
use kube::client::Body;
use kube::Client;
use serde_json::{json, Value};

use crate::crd::{DiffusionModel, DiffusionModelSpec};
use crate::metrics::Metrics;
use crate::reconcile::Context;
use crate::resources::OperatorConfig;

/// A DiffusionModel as the API server would hand it over (uid set, defaults applied).
pub fn dm(name: &str, spec: Value) -> DiffusionModel {
    let spec: DiffusionModelSpec = serde_json::from_value(spec).expect("a valid spec");
    let mut dm = DiffusionModel::new(name, spec);
    dm.metadata.namespace = Some("ml".into());
    dm.metadata.uid = Some("0000-1111".into());
    dm.metadata.generation = Some(1);
    dm
}

pub fn llada() -> DiffusionModel {
    dm(
        "llada-8b",
        json!({
            "model": {"uri": "pvc://model-store/llada-8b-instruct", "aliases": ["gpt-3.5-turbo"]},
            "gpu": {"count": 1, "product": "NVIDIA-L40S"},
            "decoding": {"steps": 256, "genLength": 256, "blockLength": 32},
            "server": {"rateLimit": {"requestsPerMinute": 600}, "circuitBreaker": {"failureThreshold": 5, "recoverySeconds": 20}},
        }),
    )
}

/// `ml/llada`, reading its model from the claim `model-store` that the scenarios
/// below say does not exist, carrying `status` as JSON, the way the API server hands
/// it over (None: never reconciled).
pub fn llada_on_model_store(status: Option<Value>) -> DiffusionModel {
    let mut dm = dm(
        "llada",
        json!({
            "model": {"uri": "pvc://model-store/llada"},
            "gpu": {"count": 1, "product": "NVIDIA-L40S"},
        }),
    );
    dm.status = status.map(|s| serde_json::from_value(s).expect("a valid status"));
    dm
}

/// A resource the API server would never hand over: it has no namespace.
pub fn without_namespace(name: &str) -> DiffusionModel {
    let mut dm = llada_on_model_store(None);
    dm.metadata.name = Some(name.into());
    dm.metadata.namespace = None;
    dm
}

/// One scripted conversation between the operator and the API server.
pub enum Scenario {
    /// Reconciling [`llada_on_model_store`] in a cluster where the claim does not exist
    /// and the Prometheus operator is not installed, ending with the status write.
    MissingClaimWithoutPrometheus,
    /// The same cluster, for a resource whose status already says all that: the
    /// conversation ends before any status write.
    MissingClaimWithoutPrometheusStatusCurrent,
    /// The API server fails the first request (reading the claim) with a 500; the
    /// operator's `error_policy` then reports it as a `ReconcileFailed` event.
    ClaimReadFails,
    /// Only `ReconcileFailed` events, one per failure that happened before any request
    /// (a namespace-less resource), each about a different resource.
    ReconcileFailedEvents(usize),
}

/// What the operator sent that a test asserts on.
#[derive(Debug, Default)]
pub struct Transcript {
    /// The status it wrote, if it wrote one.
    pub status: Option<Value>,
    /// The events it published, in order.
    pub events: Vec<Value>,
}

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;
type Responder = tower_test::mock::SendResponse<Response<Body>>;

/// The API server's end of a [`Context::test`] client.
pub struct ApiServerVerifier(Handle);

impl Context {
    /// A context whose client talks to an [`ApiServerVerifier`].
    pub fn test() -> (Arc<Self>, ApiServerVerifier) {
        Self::test_with(Arc::new(Metrics::default()))
    }

    /// Like [`Context::test`], counting into `metrics` (shared between contexts).
    pub fn test_with(metrics: Arc<Metrics>) -> (Arc<Self>, ApiServerVerifier) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "default");
        let ctx = Context::new(client, OperatorConfig::default(), metrics);
        (Arc::new(ctx), ApiServerVerifier(handle))
    }
}

impl ApiServerVerifier {
    /// Plays `scenario` in the background; the handle yields what the operator sent.
    pub fn run(self, scenario: Scenario) -> tokio::task::JoinHandle<Transcript> {
        tokio::spawn(async move {
            let mut transcript = Transcript::default();
            let mut server = self;
            match scenario {
                Scenario::MissingClaimWithoutPrometheus => {
                    server
                        .missing_claim_without_prometheus(&mut transcript)
                        .await;
                    server.status_write(&mut transcript).await;
                }
                Scenario::MissingClaimWithoutPrometheusStatusCurrent => {
                    server
                        .missing_claim_without_prometheus(&mut transcript)
                        .await;
                }
                Scenario::ClaimReadFails => {
                    let (_, send) = server
                        .expect(
                            Method::GET,
                            "/api/v1/namespaces/ml/persistentvolumeclaims/model-store",
                        )
                        .await;
                    send.send_response(internal_error());
                    server.failure_event("ml", &mut transcript).await;
                }
                Scenario::ReconcileFailedEvents(n) => {
                    for _ in 0..n {
                        // A resource without a namespace is reported in "default".
                        server.failure_event("default", &mut transcript).await;
                    }
                }
            }
            transcript
        })
    }

    /// Takes the next request, checks method and path, returns its JSON body.
    async fn expect(&mut self, method: Method, path: &str) -> (Value, Responder) {
        let (request, send) = tokio::time::timeout(Duration::from_secs(10), self.0.next_request())
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

    /// Every request up to (not including) the status write.
    async fn missing_claim_without_prometheus(&mut self, transcript: &mut Transcript) {
        let (_, send) = self
            .expect(
                Method::GET,
                "/api/v1/namespaces/ml/persistentvolumeclaims/model-store",
            )
            .await;
        send.send_response(not_found());
        let (cm, send) = self
            .expect(
                Method::PATCH,
                "/api/v1/namespaces/ml/configmaps/llada-config",
            )
            .await;
        assert!(cm["data"]["runtime.toml"]
            .as_str()
            .unwrap()
            .contains("max_concurrent_requests = 32"));
        send.send_response(ok(&cm));
        let (svc, send) = self
            .expect(Method::PATCH, "/api/v1/namespaces/ml/services/llada")
            .await;
        send.send_response(ok(&svc));
        let (_, send) = self
            .expect(Method::GET, "/apis/apps/v1/namespaces/ml/deployments/llada")
            .await;
        send.send_response(not_found());
        let (mut deploy, send) = self
            .expect(
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
        let (event, send) = self
            .expect(Method::POST, "/apis/events.k8s.io/v1/namespaces/ml/events")
            .await;
        assert_eq!(event["reason"], "Created");
        send.send_response(ok(&event));
        transcript.events.push(event);
        let (_, send) = self
            .expect(Method::GET, "/apis/monitoring.coreos.com/v1")
            .await;
        send.send_response(not_found());
    }

    async fn status_write(&mut self, transcript: &mut Transcript) {
        let (patch, send) = self
            .expect(
                Method::PATCH,
                "/apis/dfastllm.io/v1alpha1/namespaces/ml/diffusionmodels/llada/status",
            )
            .await;
        send.send_response(ok(&serde_json::to_value(llada_on_model_store(Some(
            patch["status"].clone(),
        )))
        .unwrap()));
        transcript.status = Some(patch["status"].clone());
    }

    async fn failure_event(&mut self, namespace: &str, transcript: &mut Transcript) {
        let path = format!("/apis/events.k8s.io/v1/namespaces/{namespace}/events");
        let (event, send) = self.expect(Method::POST, &path).await;
        assert_eq!(event["reason"], "ReconcileFailed");
        assert_eq!(event["type"], "Warning");
        send.send_response(ok(&event));
        transcript.events.push(event);
    }
}

fn not_found() -> Response<Body> {
    status_response(404, "NotFound", "not found")
}

fn internal_error() -> Response<Body> {
    status_response(500, "InternalError", "etcd is unavailable")
}

fn status_response(code: u16, reason: &str, message: &str) -> Response<Body> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code, "message": message});
    Response::builder()
        .status(code)
        .body(Body::from(serde_json::to_vec(&body).unwrap()))
        .unwrap()
}

fn ok(body: &Value) -> Response<Body> {
    Response::builder()
        .status(200)
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}
