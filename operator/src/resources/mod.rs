//! Pure builders of the child objects of a DiffusionModel: each is a function of the
//! resource and the operator's configuration, tested without any API server. The
//! reconciler only applies what these return.

pub mod configmap;
pub mod deployment;
pub mod pvc;
pub mod route;
pub mod service;
pub mod servicemonitor;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

use crate::crd::DiffusionModel;

/// Port of the runtime's HTTP server, and the Service's.
pub const HTTP_PORT: i32 = 8000;
/// Where the ConfigMap is mounted; the runtime reads `runtime.toml` from it.
pub const CONFIG_DIR: &str = "/etc/dfastllm";
pub const MODEL_DIR: &str = "/mnt/models";
/// Where APD's verifier model is mounted (`decoding.apd.verifier.uri`).
pub const VERIFIER_DIR: &str = "/mnt/verifier";
pub const CONFIG_HASH_ANNOTATION: &str = "dfastllm.io/config-hash";

/// What the operator was started with that shapes every child.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorConfig {
    /// Runtime image for GPU deployments (a CUDA build links libcuda and needs a GPU node).
    pub runtime_image: String,
    /// Runtime image for `gpu.count: 0`.
    pub runtime_cpu_image: String,
}

impl Default for OperatorConfig {
    fn default() -> Self {
        Self {
            runtime_image: DEFAULT_RUNTIME_IMAGE.into(),
            runtime_cpu_image: DEFAULT_RUNTIME_CPU_IMAGE.into(),
        }
    }
}

pub const DEFAULT_RUNTIME_IMAGE: &str = "ghcr.io/dfastllm/dfastllm-runtime:v0.1.0-cuda13.0";
pub const DEFAULT_RUNTIME_CPU_IMAGE: &str = "ghcr.io/dfastllm/dfastllm-runtime:v0.1.0-cpu";

/// `app.kubernetes.io/*` labels shared by every child.
pub fn labels(dm: &DiffusionModel) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "dfastllm".to_string()),
        ("app.kubernetes.io/instance".to_string(), dm.name_any()),
        (
            "app.kubernetes.io/component".to_string(),
            "inference".to_string(),
        ),
        (
            "app.kubernetes.io/managed-by".to_string(),
            "dfastllm-operator".to_string(),
        ),
    ])
}

/// The labels a Service and a Deployment select pods by (never changes for a resource).
pub fn selector(dm: &DiffusionModel) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "dfastllm".to_string()),
        ("app.kubernetes.io/instance".to_string(), dm.name_any()),
    ])
}

fn owner(dm: &DiffusionModel) -> Option<Vec<OwnerReference>> {
    dm.controller_owner_ref(&()).map(|o| vec![o])
}

/// Metadata of an owned child: garbage-collected with the DiffusionModel.
pub fn owned_meta(dm: &DiffusionModel, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: dm.namespace(),
        labels: Some(labels(dm)),
        owner_references: owner(dm),
        ..ObjectMeta::default()
    }
}
