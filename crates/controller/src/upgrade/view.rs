//! What the rollout gate sees of the cluster for one plan, as plain data: the DaemonSet's
//! revisions, its pod on each node of the pool (with the revision it runs), each node's
//! advertised device count and device health, and the device pods on it. Built from the
//! Kubernetes objects by [`View::build`] (pure, so the decision is tested without a cluster).

use std::collections::BTreeMap;

use devheal_core::Time;
use devheal_k8s::crd::{DeviceHealthState, NodeDeviceHealth};
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet};
use k8s_openapi::api::core::v1::{Node, Pod};

/// The label the DaemonSet controller puts on its pods and revisions.
pub const REVISION_HASH_LABEL: &str = "controller-revision-hash";
/// The annotation on a node the gate cordoned to drain it (value: `namespace/plan`).
pub const CORDON_ANNOTATION: &str = "devheal.io/upgrade-cordon";

/// One ControllerRevision of the DaemonSet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revision {
    pub name: String,
    pub hash: String,
    pub number: i64,
    /// `container=image`, comma-separated.
    pub images: String,
}

/// The DaemonSet's pod on one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginPod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub hash: String,
    pub ready: bool,
    pub deleting: bool,
}

/// A pod on a node of the pool that uses devices (not the DaemonSet's own).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevicePod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub running: bool,
    /// It belongs to a training gang (JobSet, LeaderWorkerSet, Volcano, ... : `gang_of`).
    pub gang: bool,
}

/// One node of the pool.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeView {
    pub name: String,
    /// Allocatable count of the plan's resource (None: not advertised or not asked).
    pub allocatable: Option<i64>,
    pub unschedulable: bool,
    /// The gate cordoned it (its annotation).
    pub cordoned_by_gate: bool,
    /// Devices NodeDeviceHealth reports Unhealthy or Unknown.
    pub unhealthy_devices: u32,
    /// When each device reason was last seen (the faults counted in a window).
    pub fault_times: Vec<Time>,
    /// When devheal attributed a pod failure on this node to its devices (a `devheal.io/` pod
    /// condition set True).
    pub pod_failure_times: Vec<Time>,
    pub plugin: Option<PluginPod>,
    pub device_pods: Vec<DevicePod>,
}

/// The cluster as the gate sees it for one plan.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct View {
    /// The DaemonSet exists.
    pub found: bool,
    /// `spec.updateStrategy.type` (`RollingUpdate` when unset, as the API server defaults it).
    pub update_strategy: String,
    /// The DaemonSet's revisions, oldest first; the last is the current template.
    pub revisions: Vec<Revision>,
    /// The nodes the plan's selector picks, by name (the pool: those of them the DaemonSet
    /// runs a pod on, or whose pod the gate replaces).
    pub nodes: BTreeMap<String, NodeView>,
}

impl View {
    /// The revision the DaemonSet's template is now.
    pub fn current(&self) -> Option<&Revision> {
        self.revisions.last()
    }

    pub fn revision(&self, hash: &str) -> Option<&Revision> {
        self.revisions.iter().find(|r| r.hash == hash)
    }

    /// Build the view: `pods` are every pod on the cluster's nodes the caller listed (the
    /// DaemonSet's are told apart by their controlling owner), `nodes` the pool's nodes.
    pub fn build(
        daemon_set: Option<&DaemonSet>,
        revisions: &[ControllerRevision],
        pods: &[Pod],
        nodes: &[Node],
        health: &[NodeDeviceHealth],
        resource: Option<&str>,
    ) -> View {
        let Some(ds) = daemon_set else { return View::default() };
        let ds_uid = ds.metadata.uid.clone().unwrap_or_default();
        let owned_by_ds =
            |refs: &Option<Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>>| {
                refs.iter().flatten().any(|o| o.controller == Some(true) && o.uid == ds_uid)
            };
        let mut revs: Vec<Revision> = revisions
            .iter()
            .filter(|r| owned_by_ds(&r.metadata.owner_references))
            .filter_map(|r| {
                let name = r.metadata.name.clone()?;
                let hash = r
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(REVISION_HASH_LABEL).cloned())
                    .or_else(|| name.rsplit('-').next().map(str::to_string))?;
                Some(Revision { name, hash, number: r.revision, images: revision_images(r) })
            })
            .collect();
        revs.sort_by(|a, b| a.number.cmp(&b.number).then_with(|| a.name.cmp(&b.name)));
        let update_strategy = ds
            .spec
            .as_ref()
            .and_then(|s| s.update_strategy.as_ref())
            .and_then(|u| u.type_.clone())
            .unwrap_or_else(|| "RollingUpdate".into());
        let mut view = View { found: true, update_strategy, revisions: revs, nodes: BTreeMap::new() };
        for node in nodes {
            let Some(name) = node.metadata.name.clone() else { continue };
            let allocatable = resource.and_then(|r| {
                let q = node.status.as_ref()?.allocatable.as_ref()?.get(r)?;
                q.0.parse::<i64>().ok()
            });
            let cordoned_by_gate =
                node.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(CORDON_ANNOTATION));
            let unschedulable = node.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false);
            view.nodes.insert(
                name.clone(),
                NodeView { name, allocatable, unschedulable, cordoned_by_gate, ..NodeView::default() },
            );
        }
        for h in health {
            let Some(node) = view.nodes.get_mut(&h.spec.node_name) else { continue };
            let Some(status) = &h.status else { continue };
            for d in &status.devices {
                if matches!(d.health, DeviceHealthState::Unhealthy | DeviceHealthState::Unknown) {
                    node.unhealthy_devices += 1;
                }
                node.fault_times
                    .extend(d.reasons.iter().map(|r| devheal_k8s::pod::time_from_k8s(&r.last_seen)));
            }
        }
        for pod in pods {
            let Some(node_name) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else { continue };
            let Some(node) = view.nodes.get_mut(&node_name) else { continue };
            let meta = &pod.metadata;
            let (Some(ns), Some(name), Some(uid)) =
                (meta.namespace.clone(), meta.name.clone(), meta.uid.clone())
            else {
                continue;
            };
            let status = pod.status.as_ref();
            let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
            if owned_by_ds(&meta.owner_references) {
                if phase == "Failed" || phase == "Succeeded" {
                    continue;
                }
                let ready = phase == "Running"
                    && status
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                let candidate = PluginPod {
                    namespace: ns,
                    name,
                    uid,
                    hash: meta
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(REVISION_HASH_LABEL).cloned())
                        .unwrap_or_default(),
                    ready,
                    deleting: meta.deletion_timestamp.is_some(),
                };
                // A node's live pod wins over one being deleted.
                if node.plugin.as_ref().is_none_or(|p| p.deleting && !candidate.deleting) {
                    node.plugin = Some(candidate);
                }
                continue;
            }
            for c in status.and_then(|s| s.conditions.as_ref()).into_iter().flatten() {
                if c.type_.starts_with("devheal.io/")
                    && c.status == "True"
                    && let Some(t) = &c.last_transition_time
                {
                    node.pod_failure_times.push(devheal_k8s::pod::time_from_k8s(t));
                }
            }
            if phase != "Running" && phase != "Pending" {
                continue;
            }
            if !uses_devices(pod, resource) {
                continue;
            }
            // Only what `gang_of` reads (the whole conversion was most of a pass's cost).
            let labels_only = devheal_core::PodInfo {
                namespace: ns.clone(),
                labels: meta.labels.clone().unwrap_or_default(),
                annotations: meta.annotations.clone().unwrap_or_default(),
                ..devheal_core::PodInfo::default()
            };
            let gang = devheal_core::gang_of(&labels_only, &[]).is_some();
            node.device_pods.push(DevicePod {
                namespace: ns,
                name,
                uid,
                running: phase == "Running" && meta.deletion_timestamp.is_none(),
                gang,
            });
        }
        view
    }
}

/// Whether a pod asks for devices: the plan's resource, else any extended resource with a `/`
/// that is not `hugepages-`, else a DRA claim.
fn uses_devices(pod: &Pod, resource: Option<&str>) -> bool {
    let Some(spec) = pod.spec.as_ref() else { return false };
    if spec.resource_claims.as_ref().is_some_and(|c| !c.is_empty()) {
        return true;
    }
    spec.containers.iter().chain(spec.init_containers.iter().flatten()).any(|c| {
        let r = c.resources.as_ref();
        r.and_then(|r| r.limits.as_ref())
            .into_iter()
            .chain(r.and_then(|r| r.requests.as_ref()))
            .flat_map(|m| m.keys())
            .any(|k| match resource {
                Some(res) => k == res,
                None => k.contains('/'),
            })
    })
}

/// `container=image` for each container of a DaemonSet revision's template.
fn revision_images(r: &ControllerRevision) -> String {
    let Some(data) = r.data.as_ref() else { return String::new() };
    let containers = data.0["spec"]["template"]["spec"]["containers"].as_array().cloned().unwrap_or_default();
    containers
        .iter()
        .filter_map(|c| Some(format!("{}={}", c["name"].as_str()?, c["image"].as_str().unwrap_or(""))))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ds() -> DaemonSet {
        serde_json::from_value(json!({
            "metadata": {"name": "plugin", "namespace": "gpu", "uid": "ds-1"},
            "spec": {"selector": {"matchLabels": {"app": "plugin"}}, "updateStrategy": {"type": "OnDelete"},
                     "template": {"metadata": {"labels": {"app": "plugin"}}, "spec": {"containers": []}}}
        }))
        .unwrap()
    }

    fn owned(kind: &str) -> serde_json::Value {
        json!([{"apiVersion": "apps/v1", "kind": kind, "name": "plugin", "uid": "ds-1", "controller": true}])
    }

    #[test]
    fn the_view_tells_plugin_pods_device_pods_and_revisions_apart() {
        let revisions: Vec<ControllerRevision> = vec![
            serde_json::from_value(json!({"metadata": {"name": "plugin-bbb", "labels": {REVISION_HASH_LABEL: "bbb"},
                "ownerReferences": owned("DaemonSet")}, "revision": 2,
                "data": {"spec": {"template": {"spec": {"containers": [{"name": "p", "image": "plugin:2"}]}}}}}))
            .unwrap(),
            serde_json::from_value(json!({"metadata": {"name": "plugin-aaa", "labels": {REVISION_HASH_LABEL: "aaa"},
                "ownerReferences": owned("DaemonSet")}, "revision": 1}))
            .unwrap(),
        ];
        let node = |name: &str| -> Node {
            serde_json::from_value(json!({"metadata": {"name": name},
                "status": {"allocatable": {"nvidia.com/gpu": "8"}}}))
            .unwrap()
        };
        let pods: Vec<Pod> = vec![
            serde_json::from_value(json!({"metadata": {"name": "plugin-x", "namespace": "gpu", "uid": "p1",
                "labels": {REVISION_HASH_LABEL: "aaa"}, "ownerReferences": owned("DaemonSet")},
                "spec": {"nodeName": "n1", "containers": []},
                "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}))
            .unwrap(),
            serde_json::from_value(json!({"metadata": {"name": "trainer-0", "namespace": "ml", "uid": "t0",
                "labels": {"jobset.sigs.k8s.io/jobset-name": "llm"}},
                "spec": {"nodeName": "n1", "containers": [{"name": "t",
                    "resources": {"limits": {"nvidia.com/gpu": "8"}}}]},
                "status": {"phase": "Running", "conditions": [
                    {"type": "devheal.io/DeviceFailure", "status": "True", "lastTransitionTime": "2026-12-01T00:00:00Z"}]}}))
            .unwrap(),
        ];
        let view = View::build(
            Some(&ds()),
            &revisions,
            &pods,
            &[node("n1"), node("n2")],
            &[],
            Some("nvidia.com/gpu"),
        );
        assert_eq!(view.update_strategy, "OnDelete");
        assert_eq!(view.current().map(|r| r.hash.as_str()), Some("bbb"), "the highest revision is current");
        assert_eq!(view.revision("bbb").map(|r| r.images.as_str()), Some("p=plugin:2"));
        assert!(view.nodes["n2"].plugin.is_none(), "n2 runs no pod of the DaemonSet");
        let n1 = &view.nodes["n1"];
        assert_eq!(n1.allocatable, Some(8));
        assert_eq!(n1.plugin.as_ref().map(|p| (p.hash.as_str(), p.ready)), Some(("aaa", true)));
        assert_eq!(n1.device_pods.len(), 1);
        assert!(n1.device_pods[0].gang, "a JobSet member is a gang member");
        assert_eq!(n1.pod_failure_times.len(), 1);
    }
}
