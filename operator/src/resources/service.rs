//! The Service in front of the runtime pods: port 8000, named `http`.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::{owned_meta, selector, HTTP_PORT};
use crate::crd::DiffusionModel;

pub fn service(dm: &DiffusionModel) -> Service {
    Service {
        metadata: owned_meta(dm, dm.name_any()),
        spec: Some(ServiceSpec {
            selector: Some(selector(dm)),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: HTTP_PORT,
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The in-cluster OpenAI base URL reported in `status.endpoint`.
pub fn endpoint(dm: &DiffusionModel) -> String {
    format!(
        "http://{}.{}.svc:{HTTP_PORT}/v1",
        dm.name_any(),
        dm.namespace().unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    #[test]
    fn service_selects_the_pods_on_port_8000() {
        let dm = fixtures::llada();
        let svc = service(&dm);
        let spec = svc.spec.unwrap();
        assert_eq!(spec.ports.as_ref().unwrap()[0].port, 8000);
        assert_eq!(spec.ports.unwrap()[0].name.as_deref(), Some("http"));
        assert_eq!(
            spec.selector.unwrap()["app.kubernetes.io/instance"],
            "llada-8b"
        );
        assert_eq!(endpoint(&dm), "http://llada-8b.ml.svc:8000/v1");
    }
}
