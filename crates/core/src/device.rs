//! Devices and their health: what a device is, how healthy it is, and why.

use serde::{Deserialize, Serialize};

use crate::time::Time;

/// The identity of one device: the node it is on, the extended resource (or DRA driver/pool)
/// name it is exposed as, and the id the device plugin or DRA driver gives it
/// (for NVIDIA, the GPU UUID).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DeviceKey {
    pub node: String,
    pub resource: String,
    pub id: String,
}

impl DeviceKey {
    pub fn new(node: impl Into<String>, resource: impl Into<String>, id: impl Into<String>) -> Self {
        DeviceKey { node: node.into(), resource: resource.into(), id: id.into() }
    }
}

impl std::fmt::Display for DeviceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.node, self.resource, self.id)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
pub enum Vendor {
    Nvidia,
    Amd,
    Intel,
    #[default]
    Other,
}

/// A device as the engine knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    pub key: DeviceKey,
    /// PCI address normalised to `dddd:bb:dd.f`, when known.
    pub pci_address: Option<String>,
    pub vendor: Vendor,
    pub model: Option<String>,
}

/// How usable a device is.
///
/// `Unknown` means the detector lost sight of the device (a source went blind); it never
/// triggers remediation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
pub enum Health {
    #[default]
    Healthy,
    Degraded,
    Unhealthy,
    Unknown,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Healthy => "Healthy",
            Health::Degraded => "Degraded",
            Health::Unhealthy => "Unhealthy",
            Health::Unknown => "Unknown",
        }
    }
}

/// Where a piece of health evidence came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
pub enum HealthSource {
    KernelLog,
    Nvml,
    DevicePlugin,
    PodStatus,
    Progress,
    Operator,
    /// AMD's management library (amdsmi, `libamd_smi.so`): ECC/RAS counts.
    AmdSmi,
    /// Intel Gaudi's management library (hlml, `libhlml.so`): uncorrected ECC counts and
    /// critical-error events.
    Hlml,
    /// The agent's functional check of the device (`devheal gpu-check`: memory patterns and a
    /// kernel with a known answer), run before a device returns from a reset or a probation.
    FunctionalCheck,
}

/// One reason behind a device's health, de-duplicated by (source, code).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthReason {
    pub source: HealthSource,
    /// Xid/SXid number or another source-specific code.
    pub code: Option<u32>,
    pub message: String,
    pub first_seen: Time,
    pub last_seen: Time,
    pub count: u64,
}

/// The health of one device with the evidence behind it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceHealth {
    pub health: Health,
    pub since: Time,
    pub reasons: Vec<HealthReason>,
}
