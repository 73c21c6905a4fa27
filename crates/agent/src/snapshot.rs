//! The `NodeDeviceHealth` object the agent publishes: its inventory, the health state machine's
//! verdicts, the kubelet's device ↔ pod map and the state of its sources, in one object.

use std::collections::BTreeMap;

use devheal_core::Time;
use devheal_k8s::crd::{
    BoundPod, DeviceHealthState, DeviceStatus, DeviceVendor, HealthReasonStatus, HealthSummary,
    NodeDeviceHealth, NodeDeviceHealthSpec, NodeDeviceHealthStatus, SourceStatus, k8s_time,
};
use devheal_kubelet::podresources::DeviceBinding;

use crate::health::DeviceHealthTracker;

/// A device the node has, from NVML or a device plugin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InventoryDevice {
    pub id: String,
    pub resource: String,
    pub vendor: DeviceVendor,
    pub model: Option<String>,
    pub pci_address: Option<String>,
}

/// Everything one publication is made of.
pub struct SnapshotInput<'a> {
    pub node: &'a str,
    pub boot_id: Option<&'a str>,
    pub now: Time,
    pub devices: &'a [InventoryDevice],
    pub tracker: &'a DeviceHealthTracker,
    pub bindings: &'a [DeviceBinding],
    pub sources: Vec<SourceStatus>,
}

/// Build the whole object (`apiVersion`, `kind`, `metadata`, `spec`, `status`).
pub fn node_device_health(input: SnapshotInput<'_>) -> NodeDeviceHealth {
    let mut pods_by_device: BTreeMap<(&str, &str), Vec<BoundPod>> = BTreeMap::new();
    for b in input.bindings {
        pods_by_device.entry((b.resource.as_str(), b.device_id.as_str())).or_default().push(BoundPod {
            namespace: b.namespace.clone(),
            name: b.pod.clone(),
            uid: None,
            container: Some(b.container.clone()),
        });
    }
    let mut summary = HealthSummary::default();
    let mut devices = Vec::with_capacity(input.devices.len());
    for d in input.devices {
        let verdict = input.tracker.verdict(&d.id);
        let health = verdict.as_ref().map_or(DeviceHealthState::Unknown, |v| v.health);
        summary.devices += 1;
        match health {
            DeviceHealthState::Healthy => summary.healthy += 1,
            DeviceHealthState::Degraded => summary.degraded += 1,
            DeviceHealthState::Unhealthy => summary.unhealthy += 1,
            DeviceHealthState::Unknown => summary.unknown += 1,
        }
        devices.push(DeviceStatus {
            id: d.id.clone(),
            resource: d.resource.clone(),
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
            pods: pods_by_device.remove(&(d.resource.as_str(), d.id.as_str())).unwrap_or_default(),
        });
    }
    let mut object =
        NodeDeviceHealth::new(input.node, NodeDeviceHealthSpec { node_name: input.node.to_string() });
    object.status = Some(NodeDeviceHealthStatus {
        boot_id: input.boot_id.map(str::to_string),
        last_heartbeat: Some(k8s_time(input.now)),
        summary: Some(summary),
        devices,
        sources: input.sources,
        workloads: Vec::new(),
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
                pci_address: None,
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
