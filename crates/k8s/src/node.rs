//! Conversion of a k8s-openapi `Node` into the engine's [`NodeInfo`].

use devheal_core::{NodeInfo, RepairKind};
use k8s_openapi::api::core::v1::Node;

/// Labels that carry a node's rack, most specific first.
const RACK_LABELS: [&str; 3] =
    ["devheal.io/rack", "topology.kubernetes.io/rack", "topology.kubernetes.io/zone"];
/// GPU feature discovery publishes the driver version in these labels.
const DRIVER_LABELS: [&str; 2] = ["nvidia.com/cuda.driver-version.full", "devheal.io/driver-version"];
const PLUGIN_LABELS: [&str; 2] =
    ["devheal.io/device-plugin-version", "nvidia.com/gpu.deploy.device-plugin-version"];

fn first_label(node: &Node, keys: &[&str]) -> Option<String> {
    let labels = node.metadata.labels.as_ref()?;
    keys.iter().find_map(|k| labels.get(*k).cloned())
}

pub fn node_from_k8s(node: &Node) -> NodeInfo {
    let status = node.status.as_ref();
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status == "True");
    let driver = first_label(node, &DRIVER_LABELS).or_else(|| {
        // GFD's split labels: major.minor.rev.
        let labels = node.metadata.labels.as_ref()?;
        let major = labels.get("nvidia.com/cuda.driver.major")?;
        let minor = labels.get("nvidia.com/cuda.driver.minor")?;
        let rev = labels.get("nvidia.com/cuda.driver.rev").map(String::as_str).unwrap_or("");
        Some(if rev.is_empty() { format!("{major}.{minor}") } else { format!("{major}.{minor}.{rev}") })
    });
    NodeInfo {
        name: node.metadata.name.clone().unwrap_or_default(),
        labels: node.metadata.labels.clone().unwrap_or_default(),
        ready,
        unschedulable: node.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false),
        boot_id: status.and_then(|s| s.node_info.as_ref()).map(|i| i.boot_id.clone()),
        driver_version: driver,
        device_plugin_version: first_label(node, &PLUGIN_LABELS),
        rack: first_label(node, &RACK_LABELS),
        devheal_cordoned: node
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .is_some_and(|ts| ts.iter().any(|t| t.key == crate::actuator::UNHEALTHY_TAINT)),
        repair_requested: node
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(crate::actuator::REPAIR_LABEL))
            .and_then(|v| repair_kind(v)),
    }
}

/// The repair a `devheal.io/repair` label names (`None`: not one devheal writes).
fn repair_kind(value: &str) -> Option<RepairKind> {
    [RepairKind::ResetDevice, RepairKind::RebootNode, RepairKind::InspectHardware]
        .into_iter()
        .find(|k| k.as_str() == value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_boot_id_readiness_and_versions() {
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "gpu-1", "labels": {
                "nvidia.com/cuda.driver.major": "570", "nvidia.com/cuda.driver.minor": "86",
                "nvidia.com/cuda.driver.rev": "15", "topology.kubernetes.io/zone": "z1"}},
            "spec": {"unschedulable": true},
            "status": {
                "conditions": [{"type": "Ready", "status": "False"}],
                "nodeInfo": {"bootID": "b-1", "architecture": "amd64", "containerRuntimeVersion": "",
                    "kernelVersion": "", "kubeProxyVersion": "", "kubeletVersion": "", "machineID": "",
                    "operatingSystem": "linux", "osImage": "", "systemUUID": ""}
            }
        }))
        .expect("valid node");
        let info = node_from_k8s(&node);
        assert_eq!(info.name, "gpu-1");
        assert_eq!(info.ready, Some(false));
        assert!(info.unschedulable);
        assert_eq!(info.boot_id.as_deref(), Some("b-1"));
        assert_eq!(info.driver_version.as_deref(), Some("570.86.15"));
        assert_eq!(info.rack.as_deref(), Some("z1"));
    }
}
