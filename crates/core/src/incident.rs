//! Kernel (and NVML) incidents: a correlated, de-duplicated device fault as the detectors
//! report it to the engine.

use serde::{Deserialize, Serialize};

use crate::action::RepairKind;
use crate::device::Health;
use crate::time::Time;

/// Whose fault a kernel-level event is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Attribution {
    Application,
    Device,
    Interconnect,
    Host,
    /// The network the node's workloads use (a NIC or fabric link): never grounds to quarantine
    /// a GPU; the engine treats it as the workload's network, not a device.
    Network,
    Unknown,
}

impl Attribution {
    pub fn as_str(self) -> &'static str {
        match self {
            Attribution::Application => "application",
            Attribution::Device => "device",
            Attribution::Interconnect => "interconnect",
            Attribution::Host => "host",
            Attribution::Network => "network",
            Attribution::Unknown => "unknown",
        }
    }
}

/// One incident: one or more kernel log records that correlation folded together.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelIncident {
    /// Stable id (for example `node/boot/pci/code/first-seq`).
    pub id: String,
    pub node: String,
    /// Boot id of the node when the incident was seen; incidents from an earlier boot are stale.
    pub boot_id: Option<String>,
    /// PCI address `dddd:bb:dd.f` of the device, if the record names one.
    pub pci_address: Option<String>,
    /// Kind as printed by `classify-log` (`nvidia_xid`, `pcie_aer`, ...).
    pub kind: String,
    /// Xid/SXid number, if any.
    pub code: Option<u32>,
    pub attribution: Attribution,
    /// The health the device should have because of this incident.
    pub health: Health,
    pub action: RepairKind,
    pub first_seen: Time,
    pub last_seen: Time,
    pub count: u64,
    pub summary: String,
}

/// A node's network at fault, as its agent judges it from the link state of its own NICs
/// (`docs/agent.md`): a link that went down and stayed down, or one that flapped too often.
/// A brief flap is not a fault and never reaches the engine. A network fault is never grounds
/// to quarantine a device or to ask for a node repair: the node's GPUs are fine, it is cordoned
/// so that a gang hung on the dead link is restarted away from it, and uncordoned when its
/// agent no longer reports the fault (the link up and stable).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkFault {
    /// The NIC ports at fault (`interface (PCI address)`), sorted.
    pub links: Vec<String>,
    /// When the fault began (the earliest among the links): one episode per value.
    pub since: Time,
    /// One human sentence: what the links did.
    pub reason: String,
}
