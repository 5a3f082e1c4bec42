//! The controller: watches DiffusionModels and the children they own, and converges
//! each resource to the objects the pure builders in [`crate::resources`] describe.
//!
//! Every child is written with server-side apply under one field manager, so a child
//! edited by hand is put back at the next reconcile, and applying twice is a no-op.
//! Conditions the operator discovers (a missing PVC, no ServiceMonitor CRD) become
//! status, not errors: the resource is requeued to notice when they change.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Service};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde_json::json;

use crate::crd::{DiffusionModel, DiffusionModelStatus, ModelSource};
use crate::metrics::{ErrorLabels, Metrics};
use crate::resources::{
    configmap, deployment, pvc, route, service, servicemonitor, OperatorConfig,
};
use crate::status::{self, MonitoringState, Observed, StorageState};

pub const FIELD_MANAGER: &str = "dfastllm-operator";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{action}: {source}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },
    #[error("DiffusionModel {0} has no namespace")]
    NoNamespace(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The `error` label of `dfastllm_operator_reconcile_errors_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube { .. } => "kube",
            Self::NoNamespace(_) => "no_namespace",
        }
    }
}

fn kube_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let action = action.into();
    move |source| Error::Kube { action, source }
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub config: OperatorConfig,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    /// Consecutive failures per resource (`namespace/name`), for exponential backoff.
    failures: Mutex<HashMap<String, u32>>,
}

/// Delay before retrying after the `n`-th consecutive failure: 5 s doubling to 5 min.
pub fn backoff(failures: u32) -> Duration {
    let seconds = 5u64.saturating_mul(1u64 << failures.saturating_sub(1).min(10));
    Duration::from_secs(seconds.min(300))
}

fn key(dm: &DiffusionModel) -> String {
    format!("{}/{}", dm.namespace().unwrap_or_default(), dm.name_any())
}

impl Context {
    pub fn new(client: Client, config: OperatorConfig, metrics: Arc<Metrics>) -> Self {
        let recorder = Recorder::new(client.clone(), Reporter::from(FIELD_MANAGER));
        Self {
            client,
            config,
            metrics,
            recorder,
            failures: Mutex::new(HashMap::new()),
        }
    }
}

/// Server-side apply under our field manager, taking ownership of every field we set.
async fn apply<K>(api: &Api<K>, obj: &K) -> Result<K>
where
    K: Resource + Clone + Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    let kind = std::any::type_name::<K>()
        .rsplit("::")
        .next()
        .unwrap_or("object");
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .map_err(kube_err(format!("applying {kind} {name}")))
}

async fn api_served(client: &Client, api_version: &str, plural: &str) -> bool {
    match client.list_api_group_resources(api_version).await {
        Ok(list) => list.resources.iter().any(|r| r.name == plural),
        Err(_) => false,
    }
}

async fn publish(ctx: &Context, dm: &DiffusionModel, type_: EventType, reason: &str, note: String) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &dm.object_ref(&())).await {
        tracing::warn!(error = %e, "could not publish an event");
    }
}

pub async fn reconcile(dm: Arc<DiffusionModel>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    ctx.metrics.reconciles.inc();
    let result = reconcile_inner(&dm, &ctx).await;
    if result.is_ok() {
        ctx.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key(&dm));
    }
    ctx.metrics
        .reconcile_duration
        .observe(started.elapsed().as_secs_f64());
    result
}

async fn reconcile_inner(dm: &DiffusionModel, ctx: &Context) -> Result<Action> {
    let ns = dm
        .namespace()
        .ok_or_else(|| Error::NoNamespace(dm.name_any()))?;
    let dms: Api<DiffusionModel> = Api::namespaced(ctx.client.clone(), &ns);
    let sources = dm.spec.model.source().and_then(|model| {
        let verifier = dm.spec.decoding.apd.verifier.as_ref();
        Ok((model, verifier.map(|v| v.source()).transpose()?))
    });
    let (source, verifier) = match sources {
        Ok(sources) => sources,
        Err(problem) => {
            // Nothing can be applied for a model we cannot locate; a spec edit retries.
            write_status(&dms, dm, &invalid_spec(dm, problem)).await?;
            return Ok(Action::await_change());
        }
    };

    // Each step applies one child and returns its part of what the status reports. The
    // claim and the config the pods mount come before the Deployment that mounts them.
    let storage = apply_storage(ctx, &ns, dm, &source).await?;
    let config_hash = apply_config_map(ctx, &ns, dm).await?;
    let endpoint = apply_service(ctx, &ns, dm).await?;
    let rollout = apply_deployment(ctx, &ns, dm, &source, verifier.as_ref(), &config_hash).await?;
    let monitoring = apply_service_monitor(ctx, &ns, dm).await?;
    apply_route(ctx, &ns, dm).await?;

    let observed = Observed {
        generation: dm.metadata.generation,
        storage,
        monitoring,
        desired_replicas: dm.spec.replicas,
        replicas: rollout.replicas,
        ready_replicas: rollout.ready_replicas,
        updated_replicas: rollout.updated_replicas,
        endpoint,
        invalid: None,
    };
    write_status(&dms, dm, &observed).await?;
    Ok(Action::requeue(requeue_after(&observed)))
}

/// What a resource whose spec cannot be served shows: nothing applied, the problem named.
fn invalid_spec(dm: &DiffusionModel, problem: String) -> Observed {
    Observed {
        generation: dm.metadata.generation,
        storage: StorageState::Ready,
        monitoring: MonitoringState::Disabled,
        desired_replicas: dm.spec.replicas,
        replicas: 0,
        ready_replicas: 0,
        updated_replicas: 0,
        endpoint: service::endpoint(dm),
        invalid: Some(problem),
    }
}

/// Things no watch reports (a PVC appearing, a CRD being installed) are polled.
fn requeue_after(observed: &Observed) -> Duration {
    let waiting_on_cluster = matches!(observed.storage, StorageState::Missing { .. })
        || observed.monitoring == MonitoringState::CrdMissing;
    if waiting_on_cluster {
        Duration::from_secs(15)
    } else {
        Duration::from_secs(300)
    }
}

/// Storage: creates the claim when `spec.storage` asks for one, otherwise checks that
/// the named claim exists (a missing claim is a condition, not an error).
async fn apply_storage(
    ctx: &Context,
    ns: &str,
    dm: &DiffusionModel,
    source: &ModelSource,
) -> Result<StorageState> {
    let (claim, storage) = match source {
        ModelSource::Host { .. } => return Ok(StorageState::HostPath),
        ModelSource::Pvc { claim, .. } => (claim, &dm.spec.storage),
    };
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
    if let Some(storage) = storage {
        apply(&api, &pvc::pvc(dm, claim, storage)).await?;
        return Ok(StorageState::Ready);
    }
    let found = api
        .get_opt(claim)
        .await
        .map_err(kube_err(format!("reading PVC {claim}")))?;
    Ok(match found {
        Some(_) => StorageState::Ready,
        None => StorageState::Missing {
            claim: claim.clone(),
        },
    })
}

/// The ConfigMap holding `runtime.toml`; returns the hash the Deployment's pod template
/// carries, so a changed file rolls the pods.
async fn apply_config_map(ctx: &Context, ns: &str, dm: &DiffusionModel) -> Result<String> {
    let hash = configmap::config_hash(&configmap::runtime_toml(dm));
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    apply(&api, &configmap::config_map(dm)).await?;
    Ok(hash)
}

/// The Service; returns the OpenAI base URL it serves, for the status.
async fn apply_service(ctx: &Context, ns: &str, dm: &DiffusionModel) -> Result<String> {
    let api: Api<Service> = Api::namespaced(ctx.client.clone(), ns);
    apply(&api, &service::service(dm)).await?;
    Ok(service::endpoint(dm))
}

/// The Deployment's replica counts, as the API server reported them after the apply.
#[derive(Debug, Default)]
struct Rollout {
    replicas: i32,
    ready_replicas: i32,
    updated_replicas: i32,
}

/// The Deployment. Reads the current one first: its config hash tells a first
/// creation and a config change (each an event) from a no-op apply.
async fn apply_deployment(
    ctx: &Context,
    ns: &str,
    dm: &DiffusionModel,
    source: &ModelSource,
    verifier: Option<&ModelSource>,
    config_hash: &str,
) -> Result<Rollout> {
    let name = dm.name_any();
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    let existing = api
        .get_opt(&name)
        .await
        .map_err(kube_err(format!("reading Deployment {name}")))?;
    let previous_hash = existing
        .as_ref()
        .and_then(|d| d.spec.as_ref())
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get(crate::resources::CONFIG_HASH_ANNOTATION).cloned());
    let applied = apply(
        &api,
        &deployment::deployment(dm, &ctx.config, source, verifier, config_hash),
    )
    .await?;
    match previous_hash {
        None => {
            publish(
                ctx,
                dm,
                EventType::Normal,
                "Created",
                format!("created Deployment {name}"),
            )
            .await
        }
        Some(h) if h != config_hash => {
            publish(
                ctx,
                dm,
                EventType::Normal,
                "ConfigChanged",
                format!("runtime.toml changed ({h} -> {config_hash}): rolling the pods"),
            )
            .await
        }
        _ => {}
    }
    Ok(applied
        .status
        .map(|st| Rollout {
            replicas: st.replicas.unwrap_or(0),
            ready_replicas: st.ready_replicas.unwrap_or(0),
            updated_replicas: st.updated_replicas.unwrap_or(0),
        })
        .unwrap_or_default())
}

/// The ServiceMonitor, when asked for and the Prometheus operator's CRD is served.
async fn apply_service_monitor(
    ctx: &Context,
    ns: &str,
    dm: &DiffusionModel,
) -> Result<MonitoringState> {
    if !dm.spec.monitoring.service_monitor {
        return Ok(MonitoringState::Disabled);
    }
    let client = &ctx.client;
    if !api_served(client, "monitoring.coreos.com/v1", "servicemonitors").await {
        return Ok(MonitoringState::CrdMissing);
    }
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &servicemonitor::api_resource());
    apply(&api, &servicemonitor::service_monitor(dm)).await?;
    Ok(MonitoringState::Created)
}

/// The OpenShift Route, when asked for and served; elsewhere the Service is the endpoint.
async fn apply_route(ctx: &Context, ns: &str, dm: &DiffusionModel) -> Result<()> {
    let client = &ctx.client;
    if dm.spec.route.enabled && api_served(client, "route.openshift.io/v1", "routes").await {
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), ns, &route::api_resource());
        apply(&api, &route::route(dm)).await?;
    }
    Ok(())
}

/// Writes the status only when it changed.
async fn write_status(
    api: &Api<DiffusionModel>,
    dm: &DiffusionModel,
    observed: &Observed,
) -> Result<()> {
    let new: DiffusionModelStatus =
        status::compute(dm.status.as_ref(), observed, jiff::Timestamp::now());
    if dm.status.as_ref() == Some(&new) {
        return Ok(());
    }
    let name = dm.name_any();
    api.patch_status(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": new })),
    )
    .await
    .map_err(kube_err(format!("writing the status of {name}")))?;
    Ok(())
}

/// Counts the failure by kind, reports it as an event, and retries with exponential
/// backoff per resource (reset by the next success).
pub fn error_policy(dm: Arc<DiffusionModel>, error: &Error, ctx: Arc<Context>) -> Action {
    let streak = {
        let mut failures = ctx.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = failures.entry(key(&dm)).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    tracing::warn!(name = %dm.name_any(), namespace = ?dm.namespace(), error = %error, "reconcile failed");
    ctx.metrics
        .reconcile_errors
        .get_or_create(&ErrorLabels {
            error: error.metric_label().into(),
        })
        .inc();
    let (ctx, dm, note) = (ctx.clone(), dm.clone(), error.to_string());
    tokio::spawn(
        async move { publish(&ctx, &dm, EventType::Warning, "ReconcileFailed", note).await },
    );
    Action::requeue(backoff(streak))
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let (dms, deployments, config_maps, services) = match &namespace {
        Some(ns) => (
            Api::<DiffusionModel>::namespaced(client.clone(), ns),
            Api::<Deployment>::namespaced(client.clone(), ns),
            Api::<ConfigMap>::namespaced(client.clone(), ns),
            Api::<Service>::namespaced(client.clone(), ns),
        ),
        None => (
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client.clone()),
        ),
    };
    let owned =
        || watcher::Config::default().labels("app.kubernetes.io/managed-by=dfastllm-operator");
    Controller::new(dms, watcher::Config::default())
        .owns(deployments, owned())
        .owns(config_maps, owned())
        .owns(services, owned())
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((obj, _)) => {
                    tracing::debug!(name = %obj.name, namespace = ?obj.namespace, "reconciled")
                }
                Err(e) => tracing::debug!(error = %e, "reconcile loop"),
            }
        })
        .await;
}

#[cfg(test)]
mod tests;
