//! dfastllm-operator: reconciles `DiffusionModel` resources into Deployments,
//! ConfigMaps, Services, PVCs and ServiceMonitors. `crd` holds the resource type,
//! `resources` the pure builders of every child, `status` the conditions, and
//! `reconcile` the controller that applies them; `fixtures` (tests only) the resources
//! and scripted API-server conversations the tests share.

pub mod crd;
#[cfg(test)]
mod fixtures;
pub mod gpu;
pub mod leader;
pub mod metrics;
pub mod reconcile;
pub mod resources;
pub mod status;

/// The CRD as YAML, exactly as committed under `crds/`.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    use kube::CustomResourceExt;
    serde_yaml::to_string(&crd::DiffusionModel::crd())
}
