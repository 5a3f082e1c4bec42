//! The model PVC, when `spec.storage` asks the operator to create it.
//!
//! Deliberately NOT owned by the DiffusionModel: deleting the resource must never
//! garbage-collect downloaded weights. The claim carries the labels, so
//! `kubectl delete pvc -l app.kubernetes.io/instance=NAME` removes it by hand.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimSpec, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;

use super::labels;
use crate::crd::{DiffusionModel, StorageSpec};

pub fn pvc(dm: &DiffusionModel, claim: &str, storage: &StorageSpec) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(claim.to_string()),
            namespace: dm.namespace(),
            labels: Some(labels(dm)),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(
                storage
                    .access_modes
                    .iter()
                    .map(|m| m.as_str().to_string())
                    .collect(),
            ),
            storage_class_name: storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(storage.size.clone()),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::AccessMode;
    use crate::fixtures;

    #[test]
    fn claim_is_sized_and_not_owned() {
        let storage = StorageSpec {
            size: "40Gi".into(),
            storage_class_name: Some("gp3".into()),
            access_modes: vec![AccessMode::ReadWriteOnce],
        };
        let claim = pvc(&fixtures::llada(), "model-store", &storage);
        assert!(
            claim.metadata.owner_references.is_none(),
            "weights outlive the DiffusionModel"
        );
        let spec = claim.spec.unwrap();
        assert_eq!(
            spec.resources.unwrap().requests.unwrap()["storage"],
            Quantity("40Gi".into())
        );
        assert_eq!(spec.storage_class_name.as_deref(), Some("gp3"));
        assert_eq!(spec.access_modes.unwrap(), ["ReadWriteOnce"]);
    }
}
