//! A Prometheus operator ServiceMonitor (`monitoring.coreos.com/v1`) scraping the
//! runtime's `/metrics`. Built as a dynamic object: the operator does not depend on
//! the Prometheus operator's types, and creates it only when discovery finds the CRD.

use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::ResourceExt;
use serde_json::json;

use super::{owned_meta, selector};
use crate::crd::DiffusionModel;

pub fn api_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("monitoring.coreos.com", "v1", "ServiceMonitor"),
        "servicemonitors",
    )
}

pub fn service_monitor(dm: &DiffusionModel) -> DynamicObject {
    let mut obj = DynamicObject::new(&dm.name_any(), &api_resource());
    obj.metadata = owned_meta(dm, dm.name_any());
    obj.data = json!({
        "spec": {
            "selector": {"matchLabels": selector(dm)},
            "endpoints": [{"port": "http", "path": "/metrics", "interval": dm.spec.monitoring.interval}],
        }
    });
    obj
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    #[test]
    fn scrapes_the_http_port() {
        let sm = service_monitor(&fixtures::llada());
        let v = serde_json::to_value(&sm).unwrap();
        assert_eq!(v["apiVersion"], "monitoring.coreos.com/v1");
        assert_eq!(v["kind"], "ServiceMonitor");
        assert_eq!(v["spec"]["endpoints"][0]["port"], "http");
        assert_eq!(v["spec"]["endpoints"][0]["interval"], "30s");
        assert_eq!(
            v["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"],
            "llada-8b"
        );
        assert_eq!(
            v["metadata"]["ownerReferences"][0]["kind"],
            "DiffusionModel"
        );
    }
}
