//! The `NodeDeviceHealth` object (devheal.io/v1alpha1, cluster-scoped, one per node): per-device
//! health with its reasons and the pods bound to each device. This module reads its JSON/YAML
//! shape and turns it into the engine's inputs; the CRD and its controller come later.

use devheal_core::{Device, DeviceKey, Health, HealthReason, HealthSource, Time, Vendor, canonical_key};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time as K8sTime;
use serde::{Deserialize, Serialize};

use crate::pod::time_from_k8s;

pub const API_VERSION: &str = "devheal.io/v1alpha1";
pub const KIND: &str = "NodeDeviceHealth";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeDeviceHealth {
    pub api_version: String,
    pub kind: String,
    pub metadata: NodeDeviceHealthMeta,
    #[serde(default)]
    pub status: NodeDeviceHealthStatus,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeDeviceHealthMeta {
    /// The node's name.
    pub name: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeDeviceHealthStatus {
    #[serde(default)]
    pub devices: Vec<DeviceStatus>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceStatus {
    pub id: String,
    pub resource: String,
    #[serde(default)]
    pub vendor: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub pci_address: Option<String>,
    pub health: String,
    #[serde(default)]
    pub reasons: Vec<ReasonStatus>,
    #[serde(default)]
    pub since: Option<K8sTime>,
    #[serde(default)]
    pub pods: Vec<PodBinding>,
    /// The id of the device this one is a slice of (a MIG device's GPU).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Other ids the device goes by.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReasonStatus {
    pub source: String,
    #[serde(default)]
    pub code: Option<u32>,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub first_seen: Option<K8sTime>,
    #[serde(default)]
    pub last_seen: Option<K8sTime>,
    #[serde(default)]
    pub count: Option<u64>,
}

/// A pod bound to a device: `"namespace/name"` or `{namespace, name, uid}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PodBinding {
    Name(String),
    Ref {
        namespace: String,
        name: String,
        #[serde(default)]
        uid: Option<String>,
    },
}

impl PodBinding {
    /// Does this binding name the pod?
    pub fn names(&self, namespace: &str, name: &str, uid: &str) -> bool {
        match self {
            PodBinding::Name(s) => s
                .split_once('/')
                .map_or(s == name && namespace == "default", |(ns, n)| ns == namespace && n == name),
            PodBinding::Ref { namespace: ns, name: n, uid: u } => {
                u.as_deref().is_some_and(|u| u == uid) || (ns == namespace && n == name)
            }
        }
    }
}

/// A NodeDeviceHealth object that is not valid.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NodeHealthError {
    #[error("expected apiVersion {API_VERSION} and kind {KIND}, found {api_version} {kind}")]
    WrongKind { api_version: String, kind: String },
    #[error("NodeDeviceHealth has an empty metadata.name (it must name the node)")]
    NoNode,
    #[error(
        "NodeDeviceHealth {node}: device {device}: unknown health {health:?} (expected Healthy, Degraded, Unhealthy or Unknown)"
    )]
    Health { node: String, device: String, health: String },
    #[error(
        "NodeDeviceHealth {node}: device {device}: unknown reason source {source_name:?} (expected kernel_log, nvml, device_plugin, pod_status, progress, operator or amd_smi)"
    )]
    Source { node: String, device: String, source_name: String },
}

fn parse_health(s: &str) -> Option<Health> {
    Some(match s {
        "Healthy" => Health::Healthy,
        "Degraded" => Health::Degraded,
        "Unhealthy" => Health::Unhealthy,
        "Unknown" => Health::Unknown,
        _ => return None,
    })
}

fn parse_source(s: &str) -> Option<HealthSource> {
    Some(match s {
        "kernel_log" | "KernelLog" => HealthSource::KernelLog,
        "nvml" | "Nvml" | "NVML" => HealthSource::Nvml,
        "device_plugin" | "DevicePlugin" => HealthSource::DevicePlugin,
        "pod_status" | "PodStatus" => HealthSource::PodStatus,
        "progress" | "Progress" => HealthSource::Progress,
        "operator" | "Operator" => HealthSource::Operator,
        "amd_smi" | "AmdSmi" => HealthSource::AmdSmi,
        "hlml" | "Hlml" => HealthSource::Hlml,
        "functional_check" | "FunctionalCheck" => HealthSource::FunctionalCheck,
        _ => return None,
    })
}

fn parse_vendor(s: Option<&str>) -> Vendor {
    match s.map(str::to_ascii_lowercase).as_deref() {
        Some("nvidia") => Vendor::Nvidia,
        Some("amd") => Vendor::Amd,
        Some("intel") => Vendor::Intel,
        _ => Vendor::Other,
    }
}

/// One device's state from a NodeDeviceHealth, as engine inputs.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceReport {
    pub device: Device,
    pub health: Health,
    pub since: Option<Time>,
    pub reasons: Vec<HealthReason>,
    pub pods: Vec<PodBinding>,
    /// The key of the device this one is a slice of, on the same node.
    pub parent: Option<DeviceKey>,
    /// Other ids the device goes by (a pod's status may name it by one of them).
    pub aliases: Vec<String>,
}

impl NodeDeviceHealth {
    /// Check the object and convert every device.
    pub fn reports(&self) -> Result<Vec<DeviceReport>, NodeHealthError> {
        if self.api_version != API_VERSION || self.kind != KIND {
            return Err(NodeHealthError::WrongKind {
                api_version: self.api_version.clone(),
                kind: self.kind.clone(),
            });
        }
        let node = self.metadata.name.clone();
        if node.is_empty() {
            return Err(NodeHealthError::NoNode);
        }
        self.status
            .devices
            .iter()
            .map(|d| {
                let health = parse_health(&d.health).ok_or_else(|| NodeHealthError::Health {
                    node: node.clone(),
                    device: d.id.clone(),
                    health: d.health.clone(),
                })?;
                let since = d.since.as_ref().map(time_from_k8s);
                let reasons = d
                    .reasons
                    .iter()
                    .map(|r| {
                        let source = parse_source(&r.source).ok_or_else(|| NodeHealthError::Source {
                            node: node.clone(),
                            device: d.id.clone(),
                            source_name: r.source.clone(),
                        })?;
                        let first = r.first_seen.as_ref().map(time_from_k8s).or(since).unwrap_or(Time::ZERO);
                        Ok(HealthReason {
                            source,
                            code: r.code,
                            message: r.message.clone(),
                            first_seen: first,
                            last_seen: r.last_seen.as_ref().map(time_from_k8s).unwrap_or(first),
                            count: r.count.unwrap_or(1),
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                // The device under its one key (devheal_core::identity), whichever shape the
                // report wrote it in (an older agent wrote a DRA device as `pool/device`).
                let key = canonical_key(&DeviceKey::new(node.clone(), d.resource.clone(), d.id.clone()));
                let parent = d.parent.as_ref().map(|p| {
                    let resource = self
                        .status
                        .devices
                        .iter()
                        .find(|x| x.id == *p)
                        .map_or(d.resource.as_str(), |x| x.resource.as_str());
                    canonical_key(&DeviceKey::new(node.clone(), resource, p.clone()))
                });
                Ok(DeviceReport {
                    device: Device {
                        key,
                        pci_address: d.pci_address.as_ref().map(|p| p.to_ascii_lowercase()),
                        vendor: parse_vendor(d.vendor.as_deref()),
                        model: d.model.clone(),
                    },
                    health,
                    since,
                    reasons,
                    pods: d.pods.clone(),
                    parent,
                    aliases: d.aliases.clone(),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(health: &str, source: &str) -> NodeDeviceHealth {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "devheal.io/v1alpha1", "kind": "NodeDeviceHealth",
            "metadata": {"name": "gpu-node-3"},
            "status": {"devices": [{
                "id": "GPU-1", "resource": "nvidia.com/gpu", "vendor": "NVIDIA", "pciAddress": "0000:1B:00.0",
                "health": health, "since": "2026-11-28T10:00:00Z",
                "reasons": [{"source": source, "code": 79, "message": "GPU has fallen off the bus",
                             "firstSeen": "2026-11-28T10:00:00Z", "lastSeen": "2026-11-28T10:00:05Z", "count": 3}],
                "pods": ["ml/llama-0", {"namespace": "ml", "name": "llama-1", "uid": "u-1"}]
            }]}
        }))
        .expect("valid shape")
    }

    #[test]
    fn converts_devices_reasons_and_pods() {
        let reports = object("Unhealthy", "kernel_log").reports().expect("valid");
        let r = &reports[0];
        assert_eq!(r.device.key, DeviceKey::new("gpu-node-3", "nvidia.com/gpu", "GPU-1"));
        assert_eq!(r.device.pci_address.as_deref(), Some("0000:1b:00.0"));
        assert_eq!(r.device.vendor, Vendor::Nvidia);
        assert_eq!(r.health, Health::Unhealthy);
        assert_eq!(r.reasons[0].code, Some(79));
        assert_eq!(r.reasons[0].count, 3);
        assert!(r.reasons[0].last_seen > r.reasons[0].first_seen);
        assert!(r.pods[0].names("ml", "llama-0", "x"));
        assert!(r.pods[1].names("other", "other", "u-1"));
        assert!(!r.pods[0].names("ml", "llama-1", "x"));
    }

    #[test]
    fn bad_values_are_named() {
        let err = object("Broken", "nvml").reports().unwrap_err().to_string();
        assert!(err.contains("GPU-1") && err.contains("Broken"), "{err}");
        let err = object("Healthy", "gossip").reports().unwrap_err().to_string();
        assert!(err.contains("gossip"), "{err}");
        let mut o = object("Healthy", "nvml");
        o.kind = "Node".into();
        assert!(o.reports().unwrap_err().to_string().contains("found devheal.io/v1alpha1 Node"));
    }
}
