//! The runtime Deployment: `dfastllm serve` with the model volume, the tuning
//! ConfigMap, GPU scheduling, probes, and a security context that OpenShift's
//! restricted SCC admits.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvVar, EnvVarSource, HTTPGetAction, HostPathVolumeSource, NodeAffinity, NodeSelector,
    NodeSelectorRequirement, NodeSelectorTerm, PersistentVolumeClaimVolumeSource,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile,
    SecretKeySelector, SecurityContext, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::{
    configmap, labels, owned_meta, selector, OperatorConfig, CONFIG_DIR, CONFIG_HASH_ANNOTATION,
    HTTP_PORT, MODEL_DIR, VERIFIER_DIR,
};
use crate::crd::{DiffusionModel, ModelSource};

pub const GPU_RESOURCE: &str = "nvidia.com/gpu";
pub const GPU_PRODUCT_LABEL: &str = "nvidia.com/gpu.product";
/// Model loading can take many minutes for 8B weights on network storage: the startup
/// probe allows 30 minutes before liveness takes over.
const STARTUP_PERIOD_SECONDS: i32 = 10;
const STARTUP_FAILURES: i32 = 180;

pub fn image(dm: &DiffusionModel, cfg: &OperatorConfig) -> String {
    match &dm.spec.image {
        Some(image) if !image.is_empty() => image.clone(),
        _ if dm.spec.gpu.count > 0 => cfg.runtime_image.clone(),
        _ => cfg.runtime_cpu_image.clone(),
    }
}

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(5),
        ..Probe::default()
    }
}

fn resources(dm: &DiffusionModel) -> ResourceRequirements {
    let mut r = dm.spec.resources.clone().unwrap_or_default();
    if dm.spec.gpu.count > 0 {
        let gpus = Quantity(dm.spec.gpu.count.to_string());
        r.limits
            .get_or_insert_with(BTreeMap::new)
            .insert(GPU_RESOURCE.into(), gpus.clone());
        r.requests
            .get_or_insert_with(BTreeMap::new)
            .insert(GPU_RESOURCE.into(), gpus);
    }
    r
}

fn tolerations(dm: &DiffusionModel) -> Option<Vec<Toleration>> {
    let mut t = dm.spec.tolerations.clone().unwrap_or_default();
    let gpu = Toleration {
        key: Some(GPU_RESOURCE.into()),
        operator: Some("Exists".into()),
        effect: Some("NoSchedule".into()),
        ..Toleration::default()
    };
    if dm.spec.gpu.count > 0 && !t.contains(&gpu) {
        t.push(gpu);
    }
    (!t.is_empty()).then_some(t)
}

fn affinity(dm: &DiffusionModel) -> Option<Affinity> {
    let product = dm
        .spec
        .gpu
        .product
        .as_ref()
        .filter(|_| dm.spec.gpu.count > 0)?;
    Some(Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_expressions: Some(vec![NodeSelectorRequirement {
                        key: GPU_PRODUCT_LABEL.into(),
                        operator: "In".into(),
                        values: Some(vec![product.clone()]),
                    }]),
                    ..NodeSelectorTerm::default()
                }],
            }),
            ..NodeAffinity::default()
        }),
        ..Affinity::default()
    })
}

/// A weights volume (`name`) and its read-only mount at `path`; `host://` is for
/// development clusters only.
fn model_volume(source: &ModelSource, name: &str, path: &str) -> (Volume, VolumeMount) {
    let (volume, sub_path) = match source {
        ModelSource::Pvc { claim, subpath } => (
            Volume {
                name: name.into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim.clone(),
                    read_only: Some(true),
                }),
                ..Volume::default()
            },
            subpath.clone(),
        ),
        ModelSource::Host { path: host } => (
            Volume {
                name: name.into(),
                host_path: Some(HostPathVolumeSource {
                    path: host.clone(),
                    type_: Some("Directory".into()),
                }),
                ..Volume::default()
            },
            None,
        ),
    };
    let mount = VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(true),
        sub_path,
        ..VolumeMount::default()
    };
    (volume, mount)
}

/// The Deployment for `dm`, its weights from `source` (and APD's verifier's from
/// `verifier`); `config_hash` is the hash of its rendered runtime.toml.
pub fn deployment(
    dm: &DiffusionModel,
    cfg: &OperatorConfig,
    source: &ModelSource,
    verifier: Option<&ModelSource>,
    config_hash: &str,
) -> Deployment {
    let verifier = verifier.map(|v| model_volume(v, "verifier", VERIFIER_DIR));
    let (model_volume, model_mount) = model_volume(source, "model", MODEL_DIR);
    let env = dm.spec.server.api_key_secret_ref.as_ref().map(|r| {
        vec![EnvVar {
            name: "DFASTLLM_API_KEYS".into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: r.name.clone(),
                    key: r.key.clone(),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        }]
    });
    let container = Container {
        name: "runtime".into(),
        image: Some(image(dm, cfg)),
        args: Some(vec![
            "serve".into(),
            "--config".into(),
            format!("{CONFIG_DIR}/{}", configmap::FILE_NAME),
        ]),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: HTTP_PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        env,
        resources: Some(resources(dm)),
        volume_mounts: Some(
            [
                model_mount,
                VolumeMount {
                    name: "config".into(),
                    mount_path: CONFIG_DIR.into(),
                    read_only: Some(true),
                    ..VolumeMount::default()
                },
                VolumeMount {
                    name: "tmp".into(),
                    mount_path: "/tmp".into(),
                    ..VolumeMount::default()
                },
            ]
            .into_iter()
            .chain(verifier.as_ref().map(|(_, m)| m.clone()))
            .collect(),
        ),
        liveness_probe: Some(http_probe("/health", 10, 3)),
        readiness_probe: Some(http_probe("/readyz", 5, 3)),
        startup_probe: Some(http_probe(
            "/readyz",
            STARTUP_PERIOD_SECONDS,
            STARTUP_FAILURES,
        )),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };
    let mut pod_labels = labels(dm);
    pod_labels.extend(selector(dm));
    Deployment {
        metadata: owned_meta(dm, dm.name_any()),
        spec: Some(DeploymentSpec {
            replicas: Some(dm.spec.replicas),
            selector: LabelSelector {
                match_labels: Some(selector(dm)),
                ..LabelSelector::default()
            },
            // GPUs are scarce: replace pods one at a time without a surge pod that would
            // wait for a free GPU forever.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(if dm.spec.gpu.count > 0 { 0 } else { 1 })),
                    max_unavailable: Some(IntOrString::Int(1)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(BTreeMap::from([(
                        CONFIG_HASH_ANNOTATION.to_string(),
                        config_hash.to_string(),
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    volumes: Some(
                        [
                            model_volume,
                            Volume {
                                name: "config".into(),
                                config_map: Some(ConfigMapVolumeSource {
                                    name: configmap::name(dm),
                                    ..ConfigMapVolumeSource::default()
                                }),
                                ..Volume::default()
                            },
                            Volume {
                                name: "tmp".into(),
                                empty_dir: Some(EmptyDirVolumeSource::default()),
                                ..Volume::default()
                            },
                        ]
                        .into_iter()
                        .chain(verifier.map(|(v, _)| v))
                        .collect(),
                    ),
                    node_selector: dm.spec.node_selector.clone(),
                    tolerations: tolerations(dm),
                    affinity: affinity(dm),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..SeccompProfile::default()
                        }),
                        ..PodSecurityContext::default()
                    }),
                    // The runtime drains for up to 30 s on SIGTERM (runtime.toml).
                    termination_grace_period_seconds: Some(45),
                    automount_service_account_token: Some(false),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    fn build(dm: &DiffusionModel) -> (PodSpec, Container) {
        let source = dm.spec.model.source().unwrap();
        let verifier = dm.spec.decoding.apd.verifier.as_ref();
        let verifier = verifier.map(|v| v.source().unwrap());
        let d = deployment(
            dm,
            &OperatorConfig::default(),
            &source,
            verifier.as_ref(),
            "abc",
        );
        let pod = d.spec.unwrap().template.spec.unwrap();
        let c = pod.containers[0].clone();
        (pod, c)
    }

    #[test]
    fn gpu_deployment_requests_gpus_and_targets_the_product() {
        let dm = fixtures::llada();
        let (pod, c) = build(&dm);
        let res = c.resources.unwrap();
        assert_eq!(res.limits.unwrap()[GPU_RESOURCE], Quantity("1".into()));
        assert_eq!(res.requests.unwrap()[GPU_RESOURCE], Quantity("1".into()));
        let term = &pod
            .affinity
            .unwrap()
            .node_affinity
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .unwrap()
            .node_selector_terms[0];
        let req = &term.match_expressions.as_ref().unwrap()[0];
        assert_eq!(
            (req.key.as_str(), req.values.as_ref().unwrap()[0].as_str()),
            (GPU_PRODUCT_LABEL, "NVIDIA-L40S")
        );
        let tol = pod.tolerations.unwrap();
        assert_eq!(tol.len(), 1);
        assert_eq!(tol[0].key.as_deref(), Some(GPU_RESOURCE));
        assert_eq!(c.image.unwrap(), OperatorConfig::default().runtime_image);
    }

    #[test]
    fn cpu_deployment_has_no_gpu_and_uses_the_cpu_image() {
        let mut dm = fixtures::llada();
        dm.spec.gpu.count = 0;
        let (pod, c) = build(&dm);
        assert!(c.resources.unwrap().limits.is_none());
        assert!(pod.tolerations.is_none() && pod.affinity.is_none());
        assert_eq!(
            c.image.unwrap(),
            OperatorConfig::default().runtime_cpu_image
        );
        dm.spec.image = Some("registry.example/custom:1".into());
        assert_eq!(
            build(&dm).1.image.unwrap(),
            "registry.example/custom:1",
            "user image wins"
        );
    }

    #[test]
    fn model_is_mounted_read_only_with_the_subpath() {
        let (pod, c) = build(&fixtures::llada());
        let mount = &c.volume_mounts.unwrap()[0];
        assert_eq!(mount.mount_path, "/mnt/models");
        assert_eq!(mount.sub_path.as_deref(), Some("llada-8b-instruct"));
        assert_eq!(mount.read_only, Some(true));
        let vol = &pod.volumes.unwrap()[0];
        assert_eq!(
            vol.persistent_volume_claim.as_ref().unwrap().claim_name,
            "model-store"
        );
        assert_eq!(
            c.args.unwrap(),
            ["serve", "--config", "/etc/dfastllm/runtime.toml"]
        );
    }

    #[test]
    fn pods_meet_the_restricted_profile() {
        let (pod, c) = build(&fixtures::llada());
        let sc = c.security_context.unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.capabilities.unwrap().drop.unwrap(), ["ALL"]);
        assert_eq!(
            pod.security_context.unwrap().seccomp_profile.unwrap().type_,
            "RuntimeDefault"
        );
        assert!(pod
            .volumes
            .unwrap()
            .iter()
            .any(|v| v.name == "tmp" && v.empty_dir.is_some()));
        assert_eq!(
            c.liveness_probe.unwrap().http_get.unwrap().path.as_deref(),
            Some("/health")
        );
        assert_eq!(
            c.readiness_probe.unwrap().http_get.unwrap().path.as_deref(),
            Some("/readyz")
        );
        let startup = c.startup_probe.unwrap();
        assert!(startup.period_seconds.unwrap() * startup.failure_threshold.unwrap() >= 1800);
    }

    #[test]
    fn api_keys_come_from_the_secret_and_the_hash_is_on_the_template() {
        let mut dm = fixtures::llada();
        dm.spec.server.api_key_secret_ref = Some(crate::crd::SecretKeyRef {
            name: "keys".into(),
            key: "api-keys".into(),
        });
        let source = dm.spec.model.source().unwrap();
        let d = deployment(&dm, &OperatorConfig::default(), &source, None, "feedbeef");
        let template = d.spec.unwrap().template;
        assert_eq!(
            template.metadata.unwrap().annotations.unwrap()[CONFIG_HASH_ANNOTATION],
            "feedbeef"
        );
        let env = template.spec.unwrap().containers[0].env.clone().unwrap();
        let secret = env[0]
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!(
            (
                env[0].name.as_str(),
                secret.name.as_str(),
                secret.key.as_str()
            ),
            ("DFASTLLM_API_KEYS", "keys", "api-keys")
        );
    }

    #[test]
    fn the_verifier_is_mounted_read_only_beside_the_model() {
        let mut dm = fixtures::llada();
        dm.spec.decoding.apd.verifier = Some(crate::crd::VerifierSpec {
            uri: "pvc://store/tiny-ar".into(),
            mix: "0.7".into(),
            max_lookahead: 8,
        });
        let (pod, c) = build(&dm);
        let mounts = c.volume_mounts.unwrap();
        let mount = mounts.iter().find(|m| m.name == "verifier").unwrap();
        assert_eq!(
            (
                mount.mount_path.as_str(),
                mount.sub_path.as_deref(),
                mount.read_only
            ),
            (VERIFIER_DIR, Some("tiny-ar"), Some(true))
        );
        let volumes = pod.volumes.unwrap();
        let volume = volumes.iter().find(|v| v.name == "verifier").unwrap();
        let claim = volume.persistent_volume_claim.as_ref().unwrap();
        assert_eq!(
            (claim.claim_name.as_str(), claim.read_only),
            ("store", Some(true))
        );
        let (plain, _) = build(&fixtures::llada());
        assert!(plain.volumes.unwrap().iter().all(|v| v.name != "verifier"));
    }

    #[test]
    fn host_paths_mount_directly() {
        let mut dm = fixtures::llada();
        dm.spec.model.uri = "host:///data/llada".into();
        let (pod, c) = build(&dm);
        assert_eq!(
            pod.volumes.unwrap()[0].host_path.as_ref().unwrap().path,
            "/data/llada"
        );
        assert!(c.volume_mounts.unwrap()[0].sub_path.is_none());
    }
}
