//! Status as a pure function of what the reconciler observed: phase, replica counts
//! and the conditions `kubectl wait --for=condition=Ready` reads. A condition's
//! `lastTransitionTime` moves only when its status flips, so an unchanged cluster
//! yields an identical status and no write (GitOps tools see no churn).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::crd::{DiffusionModelStatus, Phase};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageState {
    /// The PVC exists (or the operator just applied it).
    Ready,
    /// A `host://` model: nothing to check.
    HostPath,
    Missing {
        claim: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MonitoringState {
    Created,
    Disabled,
    CrdMissing,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub generation: Option<i64>,
    pub storage: StorageState,
    pub monitoring: MonitoringState,
    pub desired_replicas: i32,
    pub replicas: i32,
    pub ready_replicas: i32,
    pub updated_replicas: i32,
    pub endpoint: String,
    /// A spec problem only the operator can see.
    pub invalid: Option<String>,
}

fn condition(type_: &str, ok: bool, reason: &str, message: String) -> Condition {
    Condition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        observed_generation: None,
        last_transition_time: Time(jiff::Timestamp::UNIX_EPOCH),
    }
}

pub fn compute(
    old: Option<&DiffusionModelStatus>,
    o: &Observed,
    now: jiff::Timestamp,
) -> DiffusionModelStatus {
    let replicas_msg = format!("{}/{} replicas ready", o.ready_replicas, o.desired_replicas);
    let storage_ready = !matches!(o.storage, StorageState::Missing { .. });
    let all_ready = o.desired_replicas > 0 && o.ready_replicas >= o.desired_replicas;
    let storage = match &o.storage {
        StorageState::Ready => condition(
            "ModelStorageReady",
            true,
            "PVCFound",
            "the model volume claim exists".into(),
        ),
        StorageState::HostPath => condition(
            "ModelStorageReady",
            true,
            "HostPath",
            "the model is read from a host path".into(),
        ),
        StorageState::Missing { claim } => condition(
            "ModelStorageReady",
            false,
            "PVCNotFound",
            format!(
                "PersistentVolumeClaim {claim:?} does not exist; create it or set spec.storage"
            ),
        ),
    };
    let monitoring = match o.monitoring {
        MonitoringState::Created => condition("MonitoringReady", true, "ServiceMonitorCreated", "a ServiceMonitor scrapes /metrics".into()),
        MonitoringState::Disabled => condition("MonitoringReady", false, "Disabled", "monitoring.serviceMonitor is false".into()),
        MonitoringState::CrdMissing => condition(
            "MonitoringReady",
            false,
            "ServiceMonitorCRDNotFound",
            "monitoring.coreos.com/v1 ServiceMonitor is not served by this cluster: install the Prometheus operator (on OpenShift, enable user-workload monitoring) or set monitoring.serviceMonitor: false".into(),
        ),
    };
    let (phase, ready) = if let Some(problem) = &o.invalid {
        (
            Phase::Failed,
            condition("Ready", false, "InvalidSpec", problem.clone()),
        )
    } else if !storage_ready {
        (
            Phase::Pending,
            condition(
                "Ready",
                false,
                "ModelStorageNotReady",
                "waiting for the model volume claim".into(),
            ),
        )
    } else if o.desired_replicas == 0 {
        (
            Phase::Pending,
            condition("Ready", false, "ScaledToZero", "spec.replicas is 0".into()),
        )
    } else if all_ready {
        (
            Phase::Ready,
            condition("Ready", true, "AllReplicasReady", replicas_msg.clone()),
        )
    } else if o.ready_replicas > 0 {
        (
            Phase::Degraded,
            condition("Ready", false, "ReplicasNotReady", replicas_msg.clone()),
        )
    } else {
        (
            Phase::Loading,
            condition("Ready", false, "ReplicasNotReady", replicas_msg.clone()),
        )
    };
    let rolling = storage_ready
        && o.invalid.is_none()
        && (o.updated_replicas < o.desired_replicas || !all_ready)
        && o.desired_replicas > 0;
    let progressing = if rolling {
        condition(
            "Progressing",
            true,
            "RollingOut",
            format!(
                "{}/{} replicas updated, {replicas_msg}",
                o.updated_replicas, o.desired_replicas
            ),
        )
    } else {
        condition(
            "Progressing",
            false,
            "Complete",
            "no rollout in progress".into(),
        )
    };
    let degraded = if o.invalid.is_some() {
        condition(
            "Degraded",
            true,
            "InvalidSpec",
            o.invalid.clone().unwrap_or_default(),
        )
    } else if o.ready_replicas > 0 && !all_ready {
        condition("Degraded", true, "ReplicasUnavailable", replicas_msg)
    } else {
        condition(
            "Degraded",
            false,
            "AsExpected",
            "serving as specified or starting".into(),
        )
    };
    let conditions = [ready, progressing, degraded, storage, monitoring]
        .into_iter()
        .map(|mut c| {
            c.observed_generation = o.generation;
            let previous = old.and_then(|s| s.conditions.iter().find(|p| p.type_ == c.type_));
            c.last_transition_time = match previous {
                Some(p) if p.status == c.status => p.last_transition_time.clone(),
                _ => Time(now),
            };
            c
        })
        .collect();
    DiffusionModelStatus {
        phase: Some(phase),
        replicas: Some(o.replicas),
        ready_replicas: Some(o.ready_replicas),
        endpoint: Some(o.endpoint.clone()),
        observed_generation: o.generation,
        conditions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed() -> Observed {
        Observed {
            generation: Some(3),
            storage: StorageState::Ready,
            monitoring: MonitoringState::Created,
            desired_replicas: 2,
            replicas: 2,
            ready_replicas: 2,
            updated_replicas: 2,
            endpoint: "http://m.ml.svc:8000/v1".into(),
            invalid: None,
        }
    }

    fn cond<'a>(s: &'a DiffusionModelStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    fn t(secs: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(secs).unwrap()
    }

    #[test]
    fn all_replicas_ready_is_ready() {
        let s = compute(None, &observed(), t(100));
        assert_eq!(s.phase, Some(Phase::Ready));
        assert_eq!(cond(&s, "Ready").status, "True");
        assert_eq!(cond(&s, "Progressing").status, "False");
        assert_eq!(cond(&s, "Degraded").status, "False");
        assert_eq!(cond(&s, "Ready").observed_generation, Some(3));
        assert_eq!(s.conditions.len(), 5);
    }

    #[test]
    fn missing_pvc_is_pending_with_a_reason() {
        let o = Observed {
            storage: StorageState::Missing {
                claim: "store".into(),
            },
            ready_replicas: 0,
            ..observed()
        };
        let s = compute(None, &o, t(100));
        assert_eq!(s.phase, Some(Phase::Pending));
        assert_eq!(cond(&s, "ModelStorageReady").reason, "PVCNotFound");
        assert_eq!(cond(&s, "Ready").reason, "ModelStorageNotReady");
    }

    #[test]
    fn partial_readiness_is_degraded_and_none_is_loading() {
        let s = compute(
            None,
            &Observed {
                ready_replicas: 1,
                ..observed()
            },
            t(1),
        );
        assert_eq!(s.phase, Some(Phase::Degraded));
        assert_eq!(cond(&s, "Degraded").status, "True");
        let s = compute(
            None,
            &Observed {
                ready_replicas: 0,
                ..observed()
            },
            t(1),
        );
        assert_eq!(s.phase, Some(Phase::Loading));
        assert_eq!(cond(&s, "Progressing").status, "True");
    }

    #[test]
    fn missing_servicemonitor_crd_is_reported() {
        let s = compute(
            None,
            &Observed {
                monitoring: MonitoringState::CrdMissing,
                ..observed()
            },
            t(1),
        );
        assert_eq!(
            cond(&s, "MonitoringReady").reason,
            "ServiceMonitorCRDNotFound"
        );
        assert_eq!(
            s.phase,
            Some(Phase::Ready),
            "monitoring does not gate readiness"
        );
    }

    #[test]
    fn unchanged_observations_give_an_identical_status() {
        let first = compute(None, &observed(), t(100));
        let again = compute(Some(&first), &observed(), t(200));
        assert_eq!(first, again, "no transition, no new timestamps");
        let flipped = compute(
            Some(&first),
            &Observed {
                ready_replicas: 0,
                ..observed()
            },
            t(300),
        );
        assert_eq!(cond(&flipped, "Ready").last_transition_time, Time(t(300)));
        assert_eq!(
            cond(&flipped, "ModelStorageReady").last_transition_time,
            Time(t(100))
        );
    }
}
