//! Device-plugin health as the kubelet has it, read without taking anything from the plugins.
//!
//! A device plugin streams its devices' health to whoever opens `ListAndWatch`. Some plugins
//! (NVIDIA's among them) feed every open stream from one shared channel, so a second reader
//! takes updates the kubelet then never sees: an agent with its own stream could make
//! Kubernetes' handling of a failed device worse. The agent therefore opens no stream. It reads
//! what the kubelet made of the plugins' reports, from two places that consume nothing:
//!
//! - PodResources `GetAllocatableResources`: the kubelet lists only the devices it counts healthy
//!   (its device manager filters `allDevices` by `healthyDevices`);
//! - the Node's `status.capacity` and `status.allocatable` per resource: capacity counts healthy
//!   and unhealthy devices, allocatable the healthy ones, so their difference is how many of
//!   the resource's devices the plugin reported Unhealthy.
//!
//! [`KubeletDevices`] is pure: it remembers every device it saw allocatable (per resource, at
//! most [`MAX_KNOWN`]) and judges each from the latest list and counts. A device that left the
//! list is Unhealthy when the counts say that many are unhealthy and none was removed, gone
//! when the counts say devices were removed and none is unhealthy, and otherwise unknown (the
//! Node status can lag PodResources by a status update; without the Node, nothing can be
//! told apart). Other sources (the kernel log, NVML) are not affected by what this one cannot
//! tell.

use std::collections::{BTreeMap, BTreeSet};

use devheal_core::{Health, HealthSource, Time};
use devheal_kubelet::podresources::AllocatableDevice;

use crate::health::{DeviceHealthTracker, Evidence};

/// The most devices remembered across all resources.
pub const MAX_KNOWN: usize = 4096;

/// What the Node's status counts for one extended resource.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResourceCounts {
    pub capacity: u64,
    pub allocatable: u64,
}

/// Per extended resource (`nvidia.com/gpu`), from the Node's status.
pub type NodeCounts = BTreeMap<String, ResourceCounts>;

/// The kubelet's view of one device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KubeletView {
    /// Listed allocatable: its plugin reports it Healthy.
    Healthy,
    /// Not allocatable, and the Node counts it unhealthy: its plugin reported it Unhealthy.
    Unhealthy { capacity: u64, allocatable: u64 },
    /// Not allocatable, and the counts do not say why (the message does).
    Unknown(String),
    /// No longer counted by the kubelet at all: forgotten.
    Gone,
}

/// One device's view, with its resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceView {
    pub id: String,
    pub resource: String,
    pub view: KubeletView,
}

impl DeviceView {
    /// What the view tells the tracker about the device plugin's side: evidence when the
    /// kubelet says something (offered: Healthy; counted unhealthy: Unhealthy), else nothing.
    pub fn evidence(&self) -> Option<Evidence> {
        let (health, message) = match &self.view {
            KubeletView::Healthy => {
                (Health::Healthy, "the kubelet offers it: its device plugin reports it Healthy".to_string())
            }
            KubeletView::Unhealthy { capacity, allocatable } => (
                Health::Unhealthy,
                format!(
                    "its device plugin reports it Unhealthy: the kubelet no longer offers it ({}: capacity {capacity}, allocatable {allocatable})",
                    self.resource
                ),
            ),
            KubeletView::Unknown(_) | KubeletView::Gone => return None,
        };
        Some(Evidence { source: HealthSource::DevicePlugin, code: None, health, message })
    }

    /// Give the view to `tracker`: the plugin source watches the device and reports its
    /// evidence, or is blind to it.
    pub fn apply(&self, tracker: &mut DeviceHealthTracker, now: Time) {
        match self.evidence() {
            Some(evidence) => {
                tracker.set_watch(&self.id, HealthSource::DevicePlugin, true, now);
                tracker.observe(&self.id, evidence, now);
            }
            None => tracker.set_watch(&self.id, HealthSource::DevicePlugin, false, now),
        }
    }
}

/// Devices the kubelet has listed, and what it says of them now.
#[derive(Clone, Debug, Default)]
pub struct KubeletDevices {
    /// Every device seen allocatable, held by a pod, or found by another source (NVML, fake
    /// devices), by resource.
    known: BTreeMap<String, BTreeSet<String>>,
    /// Resources the kubelet has shown to be device-plugin resources (in its allocatable list
    /// or the Node's counts); others (DRA drivers' devices in PodResources) are not judged.
    plugin_resources: BTreeSet<String>,
    /// The latest allocatable list, by resource (`None` before the first).
    allocatable: Option<BTreeMap<String, BTreeSet<String>>>,
    /// The latest Node counts (`None`: not known, e.g. without an API server).
    counts: Option<NodeCounts>,
}

impl KubeletDevices {
    /// The kubelet's latest allocatable list.
    pub fn set_allocatable(&mut self, devices: &[AllocatableDevice]) {
        let mut now: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for d in devices {
            now.entry(d.resource.clone()).or_default().insert(d.device_id.clone());
        }
        for (resource, ids) in &now {
            self.plugin_resources.insert(resource.clone());
            for id in ids {
                self.note(resource, id);
            }
        }
        self.allocatable = Some(now);
    }

    /// A device of `resource` known from elsewhere: held by a pod (PodResources lists a pod's
    /// devices whatever their health, so a device that was Unhealthy before the agent started
    /// is known), or found by NVML. Judged only if `resource` is a device-plugin resource.
    pub fn note(&mut self, resource: &str, id: &str) {
        let known = self.known.get(resource).is_some_and(|ids| ids.contains(id));
        if !known && self.known_len() < MAX_KNOWN {
            self.known.entry(resource.to_string()).or_default().insert(id.to_string());
        }
    }

    /// The Node's latest counts (`None`: unknown).
    pub fn set_counts(&mut self, counts: Option<NodeCounts>) {
        if let Some(counts) = &counts {
            self.plugin_resources.extend(counts.keys().cloned());
        }
        self.counts = counts;
    }

    /// Whether the kubelet has listed its allocatable devices at least once.
    pub fn listed(&self) -> bool {
        self.allocatable.is_some()
    }

    /// Forget `id` of `resource` unless the kubelet lists it: a name found elsewhere (NVML's
    /// UUID of a GPU) that the kubelet knows under other names (its time-slicing replicas) is
    /// not a device of its own, and would otherwise upset the counts.
    pub fn forget_unlisted(&mut self, resource: &str, id: &str) {
        let listed =
            self.allocatable.as_ref().and_then(|a| a.get(resource)).is_some_and(|ids| ids.contains(id));
        if listed {
            return;
        }
        if let Some(ids) = self.known.get_mut(resource) {
            ids.remove(id);
            if ids.is_empty() {
                self.known.remove(resource);
            }
        }
    }

    /// Every device the kubelet last listed allocatable, as (resource, id).
    pub fn allocatable(&self) -> impl Iterator<Item = (&str, &str)> {
        self.allocatable
            .iter()
            .flatten()
            .flat_map(|(r, ids)| ids.iter().map(move |id| (r.as_str(), id.as_str())))
    }

    /// The resource the kubelet last offered `id` under, if it offered it.
    pub fn offered_as(&self, id: &str) -> Option<&str> {
        self.allocatable.as_ref()?.iter().find(|(_, ids)| ids.contains(id)).map(|(r, _)| r.as_str())
    }

    /// Whether the Node's counts are known.
    pub fn counts_known(&self) -> bool {
        self.counts.is_some()
    }

    /// Every device of a device-plugin resource remembered, as (resource, id).
    pub fn devices(&self) -> impl Iterator<Item = (&str, &str)> {
        self.known
            .iter()
            .filter(|(r, _)| self.plugin_resources.contains(*r))
            .flat_map(|(r, ids)| ids.iter().map(move |id| (r.as_str(), id.as_str())))
    }

    fn known_len(&self) -> usize {
        self.known.values().map(BTreeSet::len).sum()
    }

    /// Every known device and what the kubelet says of it now; devices found [`KubeletView::Gone`]
    /// are forgotten after this call reports them.
    pub fn views(&mut self) -> Vec<DeviceView> {
        let Some(allocatable) = &self.allocatable else { return Vec::new() };
        let empty = BTreeSet::new();
        let mut out = Vec::new();
        for (resource, known) in &self.known {
            if !self.plugin_resources.contains(resource) {
                continue;
            }
            let listed = allocatable.get(resource).unwrap_or(&empty);
            let missing: Vec<&String> = known.iter().filter(|id| !listed.contains(*id)).collect();
            let verdict = if missing.is_empty() {
                None
            } else {
                Some(self.judge(resource, known.len(), missing.len()))
            };
            for id in known {
                let view = if listed.contains(id) {
                    KubeletView::Healthy
                } else {
                    verdict.clone().unwrap_or(KubeletView::Healthy)
                };
                out.push(DeviceView { id: id.clone(), resource: resource.clone(), view });
            }
        }
        for gone in out.iter().filter(|d| d.view == KubeletView::Gone) {
            if let Some(ids) = self.known.get_mut(&gone.resource) {
                ids.remove(&gone.id);
            }
        }
        self.known.retain(|_, ids| !ids.is_empty());
        out
    }

    /// Why `missing` of the `known` devices of `resource` are not allocatable.
    fn judge(&self, resource: &str, known: usize, missing: usize) -> KubeletView {
        let Some(counts) = &self.counts else {
            return KubeletView::Unknown(format!(
                "the kubelet no longer lists it allocatable; without the Node's counts of {resource} it cannot be told whether its plugin reported it Unhealthy or removed it"
            ));
        };
        let Some(c) = counts.get(resource) else {
            return KubeletView::Unknown(format!(
                "the Node no longer counts {resource}: its device plugin is not registered with the kubelet"
            ));
        };
        let unhealthy = c.capacity.saturating_sub(c.allocatable);
        let removed = (known as u64).saturating_sub(c.capacity);
        let missing = missing as u64;
        if removed == 0 && missing <= unhealthy {
            KubeletView::Unhealthy { capacity: c.capacity, allocatable: c.allocatable }
        } else if unhealthy == 0 && missing <= removed {
            KubeletView::Gone
        } else {
            KubeletView::Unknown(format!(
                "not allocatable, and the Node's counts of {resource} (capacity {}, allocatable {}) do not yet say why",
                c.capacity, c.allocatable
            ))
        }
    }
}

/// The views of one device over all the names the kubelet knows it by (every time-slicing
/// replica of a GPU), keyed by `key_of` (the identity's key): Unhealthy when any name is counted
/// unhealthy, Healthy when any is offered, else unknown, else gone. Each returned view carries
/// the key as its id.
pub fn per_device(views: Vec<DeviceView>, key_of: impl Fn(&DeviceView) -> String) -> Vec<DeviceView> {
    let mut by_key: BTreeMap<String, Vec<DeviceView>> = BTreeMap::new();
    for v in views {
        by_key.entry(key_of(&v)).or_default().push(v);
    }
    by_key
        .into_iter()
        .filter_map(|(key, views)| {
            let rank = |v: &DeviceView| match v.view {
                KubeletView::Unhealthy { .. } => 0,
                KubeletView::Healthy => 1,
                KubeletView::Unknown(_) => 2,
                KubeletView::Gone => 3,
            };
            let pick = views.into_iter().min_by_key(rank)?;
            Some(DeviceView { id: key, ..pick })
        })
        .collect()
}

/// The counts of every extended resource (a name with a `/`) in a Node's status.
pub fn node_counts(node: &k8s_openapi::api::core::v1::Node) -> NodeCounts {
    let Some(status) = node.status.as_ref() else { return NodeCounts::new() };
    let whole = |q: &k8s_openapi::apimachinery::pkg::api::resource::Quantity| q.0.trim().parse::<u64>().ok();
    let mut counts = NodeCounts::new();
    for (name, q) in status.capacity.iter().flatten() {
        if let (true, Some(capacity)) = (name.contains('/'), whole(q)) {
            counts.entry(name.clone()).or_default().capacity = capacity;
        }
    }
    for (name, q) in status.allocatable.iter().flatten() {
        if let Some(c) = counts.get_mut(name)
            && let Some(allocatable) = whole(q)
        {
            c.allocatable = allocatable;
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    const GPU: &str = "nvidia.com/gpu";

    fn listed(ids: &[&str]) -> Vec<AllocatableDevice> {
        ids.iter().map(|id| AllocatableDevice { resource: GPU.into(), device_id: id.to_string() }).collect()
    }

    fn counts(capacity: u64, allocatable: u64) -> Option<NodeCounts> {
        Some(NodeCounts::from([(GPU.to_string(), ResourceCounts { capacity, allocatable })]))
    }

    fn view_of(views: &[DeviceView], id: &str) -> KubeletView {
        views.iter().find(|v| v.id == id).map(|v| v.view.clone()).expect("a view")
    }

    #[test]
    fn a_device_the_kubelet_stops_offering_is_unhealthy_removed_or_unknown_as_the_counts_say() {
        let mut k = KubeletDevices::default();
        assert!(k.views().is_empty(), "nothing before the first list");
        k.set_allocatable(&listed(&["a", "b", "c"]));
        k.set_counts(counts(3, 3));
        assert!(k.views().iter().all(|v| v.view == KubeletView::Healthy));
        // b's plugin reports it Unhealthy: the kubelet stops offering it, and the Node still
        // counts 3 with 2 allocatable.
        k.set_allocatable(&listed(&["a", "c"]));
        let views = k.views();
        assert!(matches!(view_of(&views, "b"), KubeletView::Unknown(_)), "counts not updated yet: {views:?}");
        k.set_counts(counts(3, 2));
        assert_eq!(view_of(&k.views(), "b"), KubeletView::Unhealthy { capacity: 3, allocatable: 2 });
        assert_eq!(view_of(&k.views(), "a"), KubeletView::Healthy);
        // Back: healthy again.
        k.set_allocatable(&listed(&["a", "b", "c"]));
        k.set_counts(counts(3, 3));
        assert_eq!(view_of(&k.views(), "b"), KubeletView::Healthy);
        // c removed from the node: capacity 2, all allocatable: gone, then forgotten.
        k.set_allocatable(&listed(&["a", "b"]));
        k.set_counts(counts(2, 2));
        assert_eq!(view_of(&k.views(), "c"), KubeletView::Gone);
        assert!(k.views().iter().all(|v| v.id != "c"), "forgotten");
        // The plugin unregistered: the resource left the Node.
        k.set_allocatable(&[]);
        k.set_counts(Some(NodeCounts::new()));
        let views = k.views();
        assert!(
            views.iter().all(|v| matches!(&v.view, KubeletView::Unknown(m) if m.contains("not registered"))),
            "{views:?}"
        );
        // Without the Node's counts, nothing can be told apart.
        k.set_counts(None);
        assert!(k.views().iter().all(|v| matches!(v.view, KubeletView::Unknown(_))));
    }

    #[test]
    fn a_device_held_by_a_pod_or_found_by_nvml_is_judged_though_never_offered() {
        let mut k = KubeletDevices::default();
        // Before the agent started, the plugin reported b Unhealthy; a pod still holds it.
        k.note(GPU, "b");
        k.note("gpu.example.com", "pool/dev-0"); // a DRA device: not the kubelet's device manager's
        k.set_allocatable(&listed(&["a"]));
        k.set_counts(counts(2, 1));
        let views = k.views();
        assert_eq!(view_of(&views, "b"), KubeletView::Unhealthy { capacity: 2, allocatable: 1 });
        assert!(views.iter().all(|v| v.resource == GPU), "{views:?}");
        assert_eq!(k.devices().count(), 2);
        // Ids of another naming (a plugin with index ids beside NVML's UUIDs) are never
        // called Unhealthy on a count that cannot say which.
        let mut k = KubeletDevices::default();
        for uuid in ["GPU-a", "GPU-b"] {
            k.note(GPU, uuid);
        }
        k.set_allocatable(&listed(&["0"]));
        k.set_counts(counts(2, 1));
        let views = k.views();
        assert!(
            views
                .iter()
                .filter(|v| v.id.starts_with("GPU-"))
                .all(|v| matches!(v.view, KubeletView::Unknown(_))),
            "{views:?}"
        );
    }

    #[test]
    fn at_most_max_known_devices_are_remembered() {
        let mut k = KubeletDevices::default();
        let ids: Vec<String> = (0..MAX_KNOWN + 100).map(|i| format!("d{i}")).collect();
        let all: Vec<AllocatableDevice> =
            ids.iter().map(|id| AllocatableDevice { resource: GPU.into(), device_id: id.clone() }).collect();
        k.set_allocatable(&all);
        assert_eq!(k.views().len(), MAX_KNOWN);
    }

    #[test]
    fn node_counts_take_extended_resources_only() {
        let node: k8s_openapi::api::core::v1::Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n"},
            "status": {
                "capacity": {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "8", "example.com/odd": "1k"},
                "allocatable": {"cpu": "7", "nvidia.com/gpu": "7"}
            }
        }))
        .expect("a node");
        assert_eq!(
            node_counts(&node),
            NodeCounts::from([(GPU.to_string(), ResourceCounts { capacity: 8, allocatable: 7 })])
        );
    }
}
