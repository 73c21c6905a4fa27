//! Conversion of a k8s-openapi `Pod` into the engine's [`PodInfo`].

use devheal_core::pod::ResourceHealth;
use devheal_core::{
    ContainerInfo, ContainerState, DeviceKey, Health, InPlaceRestart, PodCondition, PodInfo, PodPhase, Time,
    canonical_key,
};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time as K8sTime;

/// A Pod that cannot be turned into a [`PodInfo`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConversionError {
    #[error("{object}: missing {field}")]
    MissingField { object: String, field: &'static str },
}

/// Nanoseconds since the epoch, saturating at the ends of `i64`.
pub fn time_from_k8s(t: &K8sTime) -> Time {
    let ns = t.0.as_nanosecond();
    Time(ns.clamp(i64::MIN as i128, i64::MAX as i128) as i64)
}

pub fn health_from_str(s: Option<&str>) -> Health {
    match s {
        Some("Healthy") => Health::Healthy,
        Some("Unhealthy") => Health::Unhealthy,
        Some("Degraded") => Health::Degraded,
        _ => Health::Unknown,
    }
}

fn phase_from_str(s: Option<&str>) -> PodPhase {
    match s {
        Some("Running") => PodPhase::Running,
        Some("Succeeded") => PodPhase::Succeeded,
        Some("Failed") => PodPhase::Failed,
        Some("Unknown") => PodPhase::Unknown,
        _ => PodPhase::Pending,
    }
}

fn state_from_k8s(s: Option<&core::ContainerState>) -> ContainerState {
    let Some(s) = s else { return ContainerState::Unknown };
    if let Some(t) = &s.terminated {
        return ContainerState::Terminated {
            exit_code: t.exit_code,
            signal: t.signal,
            reason: t.reason.clone(),
            message: t.message.clone(),
            finished_at: t.finished_at.as_ref().map(time_from_k8s),
        };
    }
    if let Some(r) = &s.running {
        return ContainerState::Running { started_at: r.started_at.as_ref().map(time_from_k8s) };
    }
    if let Some(w) = &s.waiting {
        return ContainerState::Waiting { reason: w.reason.clone(), message: w.message.clone() };
    }
    ContainerState::Unknown
}

fn container_from_k8s(c: &core::ContainerStatus) -> ContainerInfo {
    let allocated_resources_status = c
        .allocated_resources_status
        .iter()
        .flatten()
        .flat_map(|rs| {
            rs.resources.iter().flatten().map(move |r| ResourceHealth {
                resource: rs.name.clone(),
                device_id: r.resource_id.clone(),
                health: health_from_str(r.health.as_deref()),
                message: r.message.clone(),
            })
        })
        .collect();
    ContainerInfo {
        name: c.name.clone(),
        state: state_from_k8s(c.state.as_ref()),
        last_state: state_from_k8s(c.last_state.as_ref()),
        restart_count: c.restart_count.max(0) as u32,
        allocated_resources_status,
    }
}

/// How the pod's spec restarts it in place when a container exits with
/// [`devheal_core::pod::RESTART_IN_PLACE_EXIT_CODE`]: the first of a container's
/// `restartPolicyRules` (KEP-5307) whose exit codes take that code decides, and
/// `RestartAllContainers` (KEP-5532) on any container wins over `Restart`. `None` when no
/// container's rules restart on it (a rule that does nothing for it, or no rules).
pub fn in_place_restart(spec: &core::PodSpec) -> Option<InPlaceRestart> {
    let code = devheal_core::pod::RESTART_IN_PLACE_EXIT_CODE;
    let containers = spec.containers.iter().chain(spec.init_containers.iter().flatten());
    let mut found = None;
    for c in containers {
        let first = c.restart_policy_rules.iter().flatten().find(|r| {
            r.exit_codes.as_ref().is_some_and(|e| {
                let listed = e.values.iter().flatten().any(|v| *v == code);
                match e.operator.as_str() {
                    "In" => listed,
                    "NotIn" => !listed,
                    _ => false,
                }
            })
        });
        match first.map(|r| r.action.as_str()) {
            Some("RestartAllContainers") => return Some(InPlaceRestart::AllContainers),
            Some("Restart") => found = Some(InPlaceRestart::Container),
            _ => {}
        }
    }
    found
}

/// Convert a Pod. Devices are taken from `allocatedResourcesStatus` (resource name and
/// resource ID on the pod's node, as [`canonical_key`]s: a DRA claim's `claim:<claim>` entry
/// is the device `driver/pool/device`, a replica its GPU); other sources (PodResources,
/// NodeDeviceHealth) add more.
pub fn pod_from_k8s(pod: &core::Pod) -> Result<PodInfo, ConversionError> {
    let meta = &pod.metadata;
    let name = meta.name.clone().ok_or_else(|| ConversionError::MissingField {
        object: format!("Pod in namespace {}", meta.namespace.as_deref().unwrap_or("default")),
        field: "metadata.name",
    })?;
    let namespace = meta.namespace.clone().unwrap_or_else(|| "default".to_string());
    let uid = meta.uid.clone().unwrap_or_else(|| format!("{namespace}/{name}"));
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let node = spec.and_then(|s| s.node_name.clone());
    let containers: Vec<ContainerInfo> = status
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .map(container_from_k8s)
        .collect();
    let init_containers: Vec<ContainerInfo> = status
        .and_then(|s| s.init_container_statuses.as_ref())
        .into_iter()
        .flatten()
        .map(container_from_k8s)
        .collect();
    let mut devices: Vec<DeviceKey> = containers
        .iter()
        .flat_map(|c| c.allocated_resources_status.iter())
        .map(|r| {
            // One device, one key: a DRA claim's device is the agent's `driver/pool/device`, a
            // time-slicing replica its GPU (devheal_core::identity).
            canonical_key(&DeviceKey::new(
                node.clone().unwrap_or_default(),
                r.resource.clone(),
                r.device_id.clone(),
            ))
        })
        .collect();
    devices.sort();
    devices.dedup();
    let owner = meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .or_else(|| meta.owner_references.iter().flatten().next())
        .map(|o| (o.kind.clone(), o.name.clone()));
    Ok(PodInfo {
        uid,
        namespace,
        name,
        node,
        labels: meta.labels.clone().unwrap_or_default(),
        annotations: meta.annotations.clone().unwrap_or_default(),
        owner,
        restart_policy: spec.and_then(|s| s.restart_policy.clone()),
        phase: phase_from_str(status.and_then(|s| s.phase.as_deref())),
        reason: status.and_then(|s| s.reason.clone()),
        message: status.and_then(|s| s.message.clone()),
        conditions: status
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .map(|c| PodCondition {
                type_: c.type_.clone(),
                status: c.status.clone(),
                reason: c.reason.clone(),
                message: c.message.clone(),
                last_transition: c.last_transition_time.as_ref().map(time_from_k8s),
            })
            .collect(),
        containers,
        init_containers,
        devices,
        start_time: status.and_then(|s| s.start_time.as_ref()).map(time_from_k8s),
        deletion_requested: meta.deletion_timestamp.is_some(),
        in_place: spec.and_then(in_place_restart),
    })
}

/// The latest timestamp the pod's status mentions: the moment `explain` judges it at.
pub fn latest_time(pod: &PodInfo) -> Option<Time> {
    let states =
        pod.containers.iter().chain(pod.init_containers.iter()).flat_map(|c| [&c.state, &c.last_state]);
    let from_states = states.filter_map(|s| match s {
        ContainerState::Terminated { finished_at, .. } => *finished_at,
        ContainerState::Running { started_at } => *started_at,
        _ => None,
    });
    let from_conditions = pod.conditions.iter().filter_map(|c| c.last_transition);
    from_states.chain(from_conditions).chain(pod.start_time).max()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_json(v: serde_json::Value) -> core::Pod {
        serde_json::from_value(v).expect("valid pod")
    }

    /// The shapes of the 1.34 blog's example (KEP-5307) and of KEP-5532: the first matching rule
    /// of a container decides, `RestartAllContainers` anywhere wins, `NotIn` counts, and a
    /// rule for other codes or a pod without rules restarts nothing in place.
    #[test]
    fn reads_the_container_restart_rules_for_the_in_place_exit_code() {
        let with = |containers: serde_json::Value, init: serde_json::Value| {
            let pod = pod_json(serde_json::json!({
                "metadata": {"name": "p", "namespace": "ml"},
                "spec": {"restartPolicy": "Never", "containers": containers, "initContainers": init},
            }));
            pod_from_k8s(&pod).expect("converts").in_place
        };
        let rule = |action: &str, op: &str, values: serde_json::Value| serde_json::json!({"action": action, "exitCodes": {"operator": op, "values": values}});
        let trainer = |rules: Vec<serde_json::Value>| serde_json::json!({"name": "trainer", "restartPolicy": "Never", "restartPolicyRules": rules});
        let none = serde_json::json!([]);
        assert_eq!(with(serde_json::json!([{"name": "trainer"}]), none.clone()), None);
        assert_eq!(
            with(
                serde_json::json!([trainer(vec![rule("Restart", "In", serde_json::json!([42]))])]),
                none.clone()
            ),
            None
        );
        assert_eq!(
            with(
                serde_json::json!([trainer(vec![rule("Restart", "In", serde_json::json!([76]))])]),
                none.clone()
            ),
            Some(InPlaceRestart::Container)
        );
        assert_eq!(
            with(
                serde_json::json!([trainer(vec![rule("Restart", "NotIn", serde_json::json!([0]))])]),
                none.clone()
            ),
            Some(InPlaceRestart::Container)
        );
        // The first matching rule decides: an earlier rule that matches 76 with another action.
        let shadowed = trainer(vec![
            rule("Restart", "NotIn", serde_json::json!([76])),
            rule("RestartAllContainers", "In", serde_json::json!([1, 76])),
        ]);
        assert_eq!(with(serde_json::json!([shadowed]), none.clone()), Some(InPlaceRestart::AllContainers));
        // A watcher sidecar (an init container that keeps running) asks for the whole pod.
        let watcher = serde_json::json!([{"name": "devheal-watcher", "restartPolicy": "Always",
            "restartPolicyRules": [rule("RestartAllContainers", "In", serde_json::json!([76]))]}]);
        assert_eq!(
            with(serde_json::json!([trainer(vec![rule("Restart", "In", serde_json::json!([76]))])]), watcher),
            Some(InPlaceRestart::AllContainers)
        );
    }

    #[test]
    fn converts_status_parts() {
        let pod = pod_json(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ml", "uid": "u1",
                         "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "j", "uid": "x", "controller": true}]},
            "spec": {"nodeName": "n1", "restartPolicy": "Never", "containers": [{"name": "c"}]},
            "status": {"phase": "Failed", "containerStatuses": [{
                "name": "c", "image": "i", "imageID": "", "ready": false, "restartCount": 2,
                "state": {"terminated": {"exitCode": 139, "reason": "Error", "finishedAt": "2026-01-01T00:00:10Z"}},
                "allocatedResourcesStatus": [{"name": "nvidia.com/gpu", "resources": [{"resourceID": "GPU-1", "health": "Unhealthy"}]}]
            }]}
        }));
        let info = pod_from_k8s(&pod).expect("converts");
        assert_eq!(info.phase, PodPhase::Failed);
        assert_eq!(info.owner, Some(("Job".into(), "j".into())));
        assert_eq!(info.devices, vec![DeviceKey::new("n1", "nvidia.com/gpu", "GPU-1")]);
        assert_eq!(info.containers[0].restart_count, 2);
        assert!(matches!(info.containers[0].state, ContainerState::Terminated { exit_code: 139, .. }));
        assert_eq!(info.containers[0].allocated_resources_status[0].health, Health::Unhealthy);
        assert_eq!(latest_time(&info), Some(Time::from_secs(1_767_225_610)));
    }

    #[test]
    fn a_pod_without_a_name_is_an_error() {
        let pod = pod_json(serde_json::json!({"metadata": {"namespace": "ml"}}));
        let err = pod_from_k8s(&pod).unwrap_err();
        assert_eq!(err.to_string(), "Pod in namespace ml: missing metadata.name");
    }
}
