//! What the tests share on top of the harness (`dfastllm_e2e`): the wait for a
//! DiffusionModel's condition and the lookup of its one child of a kind, which also
//! checks that the DiffusionModel controls it.

use std::time::Duration;

use dfastllm_e2e::{client, condition, conditions_summary, eventually};
use dfastllm_operator::crd::DiffusionModel;
use kube::api::{Api, ListParams};
use kube::{Resource, ResourceExt};

/// The deadline of every wait on the cluster in these tests.
pub const WAIT: Duration = Duration::from_secs(120);

/// Selects the children (and pods) of the DiffusionModel `name`.
pub fn instance(name: &str) -> ListParams {
    ListParams::default().labels(&format!("app.kubernetes.io/instance={name}"))
}

pub async fn dm_api(ns: &str) -> Api<DiffusionModel> {
    Api::namespaced(client().await, ns)
}

/// Waits for `condition=status` on a DiffusionModel; returns the model.
pub async fn wait_condition(ns: &str, name: &str, type_: &str, status: &str) -> DiffusionModel {
    let api = dm_api(ns).await;
    eventually(&format!("{ns}/{name} {type_}={status}"), WAIT, || {
        let api = api.clone();
        async move {
            let dm = api.get(name).await.map_err(|e| e.to_string())?;
            match condition(&dm, type_) {
                Some((s, _)) if s == status => Ok(dm),
                _ => Err(conditions_summary(&dm)),
            }
        }
    })
    .await
}

/// The one child of kind K labelled with the DiffusionModel's name; checks that it is
/// controlled by that DiffusionModel.
pub async fn only_child<K>(ns: &str, dm: &DiffusionModel) -> K
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client().await, ns);
    let name = dm.name_any();
    let uid = dm.uid().expect("a stored object has a uid");
    let kind = K::kind(&K::DynamicType::default()).to_string();
    eventually(&format!("the {kind} of {ns}/{name}"), WAIT, || {
        let (api, uid, name) = (api.clone(), uid.clone(), name.clone());
        async move {
            let list = api
                .list(&instance(&name))
                .await
                .map_err(|e| e.to_string())?;
            let [child] = list.items.as_slice() else {
                return Err(format!("{} objects", list.items.len()));
            };
            let owners = child.owner_references();
            match owners {
                [o] if o.uid == uid && o.kind == "DiffusionModel" && o.controller == Some(true) => {
                    Ok(child.clone())
                }
                _ => Err(format!("owner references {owners:?}")),
            }
        }
    })
    .await
}
