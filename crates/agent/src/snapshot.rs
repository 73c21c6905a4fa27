//! The `NodeDeviceHealth` object the agent publishes: its inventory, the health state machine's
//! verdicts, the kubelet's device ↔ pod map and the state of its sources, in one object.
//!
//! Every device is published once, whatever names it goes by ([`crate::identity`]): the pods
//! on any of its names (every replica of a GPU) are its pods, a device exposed through DRA is
//! published under its DRA id (with its UUID among its `aliases`), and a device that is a slice
//! of another (a MIG device of a GPU) names its `parent` and takes on the parent's faults: an
//! Unhealthy or Degraded parent makes the slice at least as bad, with the parent's reasons.

use std::collections::{BTreeMap, BTreeSet};

use devheal_core::Time;
use devheal_core::identity::split_replica;
use devheal_k8s::crd::{
    BoundPod, DeviceHealthState, DeviceStatus, DeviceVendor, HealthReasonStatus, HealthSummary,
    NodeDeviceHealth, NodeDeviceHealthSpec, NodeDeviceHealthStatus, SourceStatus, k8s_time,
};
use devheal_kubelet::podresources::DeviceBinding;

use crate::health::{DeviceHealthTracker, DeviceVerdict};
use crate::identity::{NodeIdentity, vendor_of};

/// A device the node has, from NVML, a device plugin or a DRA driver.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InventoryDevice {
    /// The key its health is tracked under ([`crate::identity::Resolved::key`]).
    pub id: String,
    pub resource: String,
    pub vendor: DeviceVendor,
    pub model: Option<String>,
    pub pci_address: Option<String>,
    /// The key of the device this one is a slice of.
    pub parent: Option<String>,
    /// `driver/pool/device` when the device is exposed through DRA: it is published under that
    /// id, with the driver as its resource.
    pub dra: Option<String>,
    /// Other names it goes by, without replica numbers.
    pub aliases: BTreeSet<String>,
}

impl InventoryDevice {
    /// The id it is published under.
    pub fn published_id(&self) -> &str {
        self.dra.as_deref().unwrap_or(&self.id)
    }

    /// The resource it is published under: its DRA driver, or the resource the kubelet (or
    /// NVML) names it under.
    pub fn published_resource(&self) -> &str {
        match &self.dra {
            Some(d) => d.split_once('/').map_or(self.resource.as_str(), |(driver, _)| driver),
            None => &self.resource,
        }
    }
}

/// Every device of the node, each once: the `physical` devices (NVML's GPUs, fake devices),
/// then every device the kubelet names, folded by identity: `plugin` devices (offered or held:
/// `(resource, id)`), DRA devices held by pods (`bindings`) and the GPUs and concrete MIG
/// devices the node's ResourceSlices announce. A DRA device nothing identifies as one of the
/// node's GPUs (another driver's device) is not listed: no source watches it. Sorted by
/// published resource and id.
pub fn fold_inventory<'a>(
    identity: &NodeIdentity,
    physical: impl IntoIterator<Item = &'a InventoryDevice>,
    plugin: impl IntoIterator<Item = (&'a str, &'a str)>,
    bindings: &'a [DeviceBinding],
) -> Vec<InventoryDevice> {
    let mut units: BTreeMap<String, InventoryDevice> = BTreeMap::new();
    for d in physical {
        units.entry(d.id.clone()).or_insert_with(|| d.clone());
    }
    // Resources the kubelet names a device under win over NVML's default.
    let mut named: BTreeSet<String> = BTreeSet::new();
    let names =
        plugin.into_iter().chain(bindings.iter().map(|b| (b.resource.as_str(), b.device_id.as_str())));
    for (resource, id) in names {
        let r = identity.resolve(resource, id);
        if r.dra.is_some() && !r.identified {
            continue;
        }
        let published_resource = r.dra.as_ref().map_or(resource, |d| d.driver.as_str());
        let unit = units.entry(r.key.clone()).or_insert_with(|| InventoryDevice {
            id: r.key.clone(),
            resource: published_resource.to_string(),
            vendor: vendor_of(published_resource),
            pci_address: if r.parent.is_none() { identity.pci_of(&r.key) } else { None },
            ..InventoryDevice::default()
        });
        match &r.dra {
            Some(d) => unit.dra = Some(d.id()),
            None => {
                if named.insert(r.key.clone()) {
                    unit.resource = resource.to_string();
                }
                let base = split_replica(id).0;
                if base != r.key {
                    unit.aliases.insert(base.to_string());
                }
            }
        }
        if r.parent.is_some() {
            unit.parent = r.parent.clone();
        }
    }
    for s in identity.slices() {
        let r = identity.resolve(&s.device.driver, &format!("{}/{}", s.device.pool, s.device.device));
        if !r.identified {
            continue;
        }
        let parent_here = r.parent.as_ref().is_some_and(|p| units.contains_key(p));
        match units.get_mut(&r.key) {
            Some(unit) => unit.dra = Some(s.device.id()),
            // A concrete MIG device of a GPU here (announced with its UUID).
            None if s.uuid.is_some() && parent_here => {
                units.insert(
                    r.key.clone(),
                    InventoryDevice {
                        id: r.key.clone(),
                        resource: s.device.driver.clone(),
                        vendor: vendor_of(&s.device.driver),
                        parent: r.parent.clone(),
                        dra: Some(s.device.id()),
                        ..InventoryDevice::default()
                    },
                );
            }
            None => {}
        }
    }
    let mut devices: Vec<InventoryDevice> = units.into_values().collect();
    devices.sort_by(|a, b| {
        (a.published_resource(), a.published_id()).cmp(&(b.published_resource(), b.published_id()))
    });
    devices
}

/// Everything one publication is made of.
pub struct SnapshotInput<'a> {
    pub node: &'a str,
    pub boot_id: Option<&'a str>,
    pub now: Time,
    pub devices: &'a [InventoryDevice],
    pub tracker: &'a DeviceHealthTracker,
    pub bindings: &'a [DeviceBinding],
    /// Resolves the bindings' names to the devices' keys.
    pub identity: &'a NodeIdentity,
    pub sources: Vec<SourceStatus>,
}

fn severity(h: DeviceHealthState) -> u8 {
    match h {
        DeviceHealthState::Healthy => 0,
        DeviceHealthState::Unknown => 1,
        DeviceHealthState::Degraded => 2,
        DeviceHealthState::Unhealthy => 3,
    }
}

/// A slice's verdict with its parent's faults: an Unhealthy or Degraded parent makes the slice
/// at least as bad (from when the parent became so), with the parent's reasons after its own,
/// each saying it is the parent's.
fn with_parent(
    own: Option<DeviceVerdict>,
    parent: Option<DeviceVerdict>,
    parent_id: &str,
) -> Option<DeviceVerdict> {
    let Some(parent) = parent.filter(|p| severity(p.health) >= 2) else { return own };
    let mut reasons: Vec<devheal_core::HealthReason> = parent
        .reasons
        .into_iter()
        .map(|mut r| {
            r.message = format!("on its parent {parent_id}: {}", r.message);
            r
        })
        .collect();
    match own {
        Some(mut own) if severity(own.health) >= severity(parent.health) => {
            own.reasons.append(&mut reasons);
            Some(own)
        }
        Some(mut own) => {
            own.reasons.retain(|r| r.source != devheal_core::HealthSource::Operator);
            own.reasons.append(&mut reasons);
            Some(DeviceVerdict { health: parent.health, since: parent.since, reasons: own.reasons })
        }
        None => Some(DeviceVerdict { health: parent.health, since: parent.since, reasons }),
    }
}

/// Build the whole object (`apiVersion`, `kind`, `metadata`, `spec`, `status`).
pub fn node_device_health(input: SnapshotInput<'_>) -> NodeDeviceHealth {
    let mut pods_by_device: BTreeMap<String, Vec<BoundPod>> = BTreeMap::new();
    for b in input.bindings {
        let key = input.identity.resolve(&b.resource, &b.device_id).key;
        let pods = pods_by_device.entry(key).or_default();
        let pod = BoundPod {
            namespace: b.namespace.clone(),
            name: b.pod.clone(),
            uid: None,
            container: Some(b.container.clone()),
        };
        // Several replicas of one GPU in one container are one binding.
        if !pods.contains(&pod) {
            pods.push(pod);
        }
    }
    let published: BTreeMap<&str, &str> =
        input.devices.iter().map(|d| (d.id.as_str(), d.published_id())).collect();
    let mut summary = HealthSummary::default();
    let mut devices = Vec::with_capacity(input.devices.len());
    for d in input.devices {
        let own = input.tracker.verdict(&d.id);
        let parent_id = d.parent.as_deref().map(|p| published.get(p).copied().unwrap_or(p));
        let verdict = match (&d.parent, parent_id) {
            (Some(p), Some(pid)) => with_parent(own, input.tracker.verdict(p), pid),
            _ => own,
        };
        let health = verdict.as_ref().map_or(DeviceHealthState::Unknown, |v| v.health);
        summary.devices += 1;
        match health {
            DeviceHealthState::Healthy => summary.healthy += 1,
            DeviceHealthState::Degraded => summary.degraded += 1,
            DeviceHealthState::Unhealthy => summary.unhealthy += 1,
            DeviceHealthState::Unknown => summary.unknown += 1,
        }
        let mut aliases = d.aliases.clone();
        if d.dra.is_some() {
            aliases.insert(d.id.clone());
        }
        aliases.remove(d.published_id());
        devices.push(DeviceStatus {
            id: d.published_id().to_string(),
            resource: d.published_resource().to_string(),
            vendor: d.vendor,
            model: d.model.clone(),
            pci_address: d.pci_address.clone(),
            health,
            since: verdict.as_ref().map(|v| k8s_time(v.since)),
            reasons: verdict
                .map(|v| {
                    v.reasons
                        .into_iter()
                        .map(|r| HealthReasonStatus {
                            source: r.source,
                            code: r.code,
                            message: r.message,
                            first_seen: k8s_time(r.first_seen),
                            last_seen: k8s_time(r.last_seen),
                            count: r.count.max(1),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            pods: pods_by_device.remove(&d.id).unwrap_or_default(),
            parent: parent_id.map(str::to_string),
            aliases: aliases.into_iter().collect(),
        });
    }
    let mut object = NodeDeviceHealth::new(
        input.node,
        NodeDeviceHealthSpec { node_name: input.node.to_string(), ..Default::default() },
    );
    object.status = Some(NodeDeviceHealthStatus {
        boot_id: input.boot_id.map(str::to_string),
        last_heartbeat: Some(k8s_time(input.now)),
        summary: Some(summary),
        devices,
        sources: input.sources,
        workloads: Vec::new(),
        network: Vec::new(),
        resets: Vec::new(),
    });
    object
}

/// The CRD's bounds (the API server refuses an object beyond them): at most 256 devices, 32
/// reasons (worst first, so the worst are kept) and 64 pods per device, 64 sources, 1,024
/// characters per message, 128 per model.
pub fn within_schema(status: &mut NodeDeviceHealthStatus) {
    status.devices.truncate(256);
    for d in &mut status.devices {
        d.reasons.truncate(32);
        d.pods.truncate(64);
        d.aliases.truncate(16);
        for r in &mut d.reasons {
            truncate_chars(&mut r.message, 1024);
        }
        if let Some(model) = d.model.as_mut() {
            truncate_chars(model, 128);
        }
    }
    status.sources.truncate(64);
    for s in &mut status.sources {
        if let Some(message) = s.message.as_mut() {
            truncate_chars(message, 1024);
        }
    }
    status.network.truncate(64);
    for n in &mut status.network {
        n.names.truncate(8);
        if let Some(fault) = n.fault.as_mut() {
            truncate_chars(fault, 1024);
        }
    }
    status.workloads.truncate(256);
    for w in &mut status.workloads {
        truncate_chars(&mut w.namespace, 63);
        truncate_chars(&mut w.name, 253);
        w.windows.truncate(10);
        for finding in [w.hang.as_mut(), w.baseline_shift.as_mut()].into_iter().flatten() {
            truncate_chars(&mut finding.message, 1024);
        }
        if let Some(error) = w.error.as_mut() {
            truncate_chars(error, 1024);
        }
    }
}

/// Cut `text` to at most `max` characters, ending in "..." when cut.
fn truncate_chars(text: &mut String, max: usize) {
    if text.chars().count() <= max {
        return;
    }
    let keep: String = text.chars().take(max.saturating_sub(3)).collect();
    *text = keep + "...";
}

/// What [`within_schema`] could not bound (a value no clamp fixes: an id longer than the
/// schema allows, a PCI address of another shape): checked against the CRD's own schema, the
/// smallest part that breaks it (the device, reason or workload it is in) is removed, and
/// returned for the log. The rest is published: one bad value never freezes a node's report.
pub fn keep_within_schema(status: &mut NodeDeviceHealthStatus) -> Vec<devheal_k8s::schema::Violation> {
    static SCHEMA: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
    let schema = SCHEMA.get_or_init(devheal_k8s::schema::node_device_health_status_schema);
    let Ok(mut value) = serde_json::to_value(&*status) else { return Vec::new() };
    let removed = devheal_k8s::schema::drop_violations(schema, &mut value, "status");
    if removed.is_empty() {
        return removed;
    }
    match serde_json::from_value(value) {
        Ok(fixed) => *status = fixed,
        Err(e) => {
            tracing::warn!(error = %e, "the report could not be rebuilt after dropping what breaks its schema")
        }
    }
    removed
}

/// The physical devices of `inventory` that have a PCI address, as `(normalised address, key)`.
pub fn physical_devices(inventory: &[InventoryDevice]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = inventory
        .iter()
        .filter(|d| d.parent.is_none())
        .filter_map(|d| {
            let pci = d.pci_address.as_deref().and_then(devheal_detect::pci::normalize_pci_address)?;
            Some((pci, d.id.clone()))
        })
        .collect();
    out.sort();
    out.dedup_by(|a, b| a.0 == b.0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::{Evidence, TrackerConfig};
    use devheal_core::{Health, HealthSource};

    #[test]
    fn an_unhealthy_device_lists_its_reason_and_pods() {
        let now = Time::from_secs(1_795_000_000);
        let mut tracker = DeviceHealthTracker::new(TrackerConfig::default(), Some("boot".into()));
        tracker.add_device("GPU-a", now);
        tracker.add_device("GPU-b", now);
        tracker.observe(
            "GPU-b",
            Evidence {
                source: HealthSource::KernelLog,
                code: Some(79),
                health: Health::Unhealthy,
                message: "GPU has fallen off the bus".into(),
            },
            now,
        );
        let devices: Vec<InventoryDevice> = ["GPU-a", "GPU-b"]
            .iter()
            .map(|id| InventoryDevice {
                id: id.to_string(),
                resource: "nvidia.com/gpu".into(),
                vendor: DeviceVendor::Nvidia,
                model: Some("NVIDIA H200".into()),
                ..InventoryDevice::default()
            })
            .collect();
        let bindings = vec![DeviceBinding {
            namespace: "ml".into(),
            pod: "trainer-3".into(),
            container: "trainer".into(),
            resource: "nvidia.com/gpu".into(),
            device_id: "GPU-b".into(),
        }];
        let object = node_device_health(SnapshotInput {
            node: "gpu-node-7",
            boot_id: Some("boot"),
            now,
            devices: &devices,
            tracker: &tracker,
            bindings: &bindings,
            identity: &NodeIdentity::default(),
            sources: vec![],
        });
        let json = serde_json::to_value(&object).expect("serialises");
        assert_eq!(json["apiVersion"], "devheal.io/v1alpha1");
        assert_eq!(json["kind"], "NodeDeviceHealth");
        assert_eq!(json["metadata"]["name"], "gpu-node-7");
        assert_eq!(json["spec"]["nodeName"], "gpu-node-7");
        let status = &json["status"];
        assert_eq!(status["summary"]["unhealthy"], 1);
        assert_eq!(status["devices"][0]["health"], "Healthy");
        assert_eq!(status["devices"][1]["health"], "Unhealthy");
        assert_eq!(status["devices"][1]["reasons"][0]["code"], 79);
        assert_eq!(status["devices"][1]["reasons"][0]["source"], "kernel_log");
        assert_eq!(status["devices"][1]["pods"][0]["name"], "trainer-3");
        // And the engine's reader (explain --node-health) accepts what the agent writes.
        let reread = devheal_k8s::parse_node_health(&json.to_string(), "agent output").expect("readable");
        assert_eq!(reread.len(), 1);
    }
}
