//! An OpenShift Route (`route.openshift.io/v1`) with edge TLS, created only when
//! `spec.route.enabled` and discovery finds the Route API.

use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::ResourceExt;
use serde_json::json;

use super::owned_meta;
use crate::crd::DiffusionModel;

pub fn api_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("route.openshift.io", "v1", "Route"),
        "routes",
    )
}

pub fn route(dm: &DiffusionModel) -> DynamicObject {
    let mut obj = DynamicObject::new(&dm.name_any(), &api_resource());
    obj.metadata = owned_meta(dm, dm.name_any());
    obj.data = json!({
        "spec": {
            "to": {"kind": "Service", "name": dm.name_any()},
            "port": {"targetPort": "http"},
            "tls": {"termination": "edge", "insecureEdgeTerminationPolicy": "Redirect"},
        }
    });
    obj
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    #[test]
    fn routes_to_the_service_with_edge_tls() {
        let v = serde_json::to_value(route(&fixtures::llada())).unwrap();
        assert_eq!(v["apiVersion"], "route.openshift.io/v1");
        assert_eq!(v["spec"]["to"]["name"], "llada-8b");
        assert_eq!(v["spec"]["tls"]["termination"], "edge");
    }
}
