//! Pods, containers, nodes and gangs: the lean view of Kubernetes objects the engine needs.
//! Conversion from k8s-openapi objects lives in `devheal-k8s`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::device::{DeviceKey, Health};
use crate::time::Time;

/// The exit code of the `ReplaceAtCheckpoint` contract (`docs/policy.md`, "Replacing a slow
/// member"): a gang member told to leave writes its checkpoint and exits with this code
/// (`EX_TEMPFAIL` of sysexits.h: a temporary failure, to be retried), and devheal replaces only
/// that member. Any other exit of a marked member is a failure like any other.
pub const REPLACE_EXIT_CODE: i32 = 75;

/// The exit code of the restart-in-place contract (`docs/policy.md`, "Restarting a gang in
/// place"): a healthy gang member told to restart in place exits with this code (from its
/// training container, or from a watcher container), and a container restart rule of its pod
/// (KEP-5307 `Restart`, KEP-5532 `RestartAllContainers`) makes the kubelet restart it on the
/// same node and devices. An exit with this code is never judged a failure.
pub const RESTART_IN_PLACE_EXIT_CODE: i32 = 76;

/// How the kubelet restarts a pod whose container exits with [`RESTART_IN_PLACE_EXIT_CODE`],
/// as its spec's container restart rules say.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InPlaceRestart {
    /// `action: Restart` (KEP-5307): only the container that exited is restarted.
    Container,
    /// `action: RestartAllContainers` (KEP-5532): every container of the pod, init containers
    /// again first, in the same sandbox with the same devices.
    AllContainers,
}

impl InPlaceRestart {
    pub fn as_str(self) -> &'static str {
        match self {
            InPlaceRestart::Container => "Restart",
            InPlaceRestart::AllContainers => "RestartAllContainers",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PodPhase {
    #[default]
    Pending,
    Running,
    Succeeded,
    Failed,
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodCondition {
    pub type_: String,
    pub status: String,
    pub reason: Option<String>,
    pub message: Option<String>,
    pub last_transition: Option<Time>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerState {
    #[default]
    Unknown,
    Waiting {
        reason: Option<String>,
        message: Option<String>,
    },
    Running {
        started_at: Option<Time>,
    },
    Terminated {
        exit_code: i32,
        signal: Option<i32>,
        reason: Option<String>,
        message: Option<String>,
        finished_at: Option<Time>,
    },
}

/// Per-device health the kubelet reports in `allocatedResourcesStatus` (KEP-4680).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceHealth {
    pub resource: String,
    pub device_id: String,
    pub health: Health,
    pub message: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerInfo {
    pub name: String,
    pub state: ContainerState,
    pub last_state: ContainerState,
    pub restart_count: u32,
    pub allocated_resources_status: Vec<ResourceHealth>,
}

/// A gang: the set of pods that must run (and restart) together.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GangId {
    pub namespace: String,
    /// What defined the gang: `jobset`, `job`, `pytorchjob`, `lws`, `volcano`, `podgroup`, or a label key.
    pub kind: String,
    pub name: String,
}

impl std::fmt::Display for GangId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.namespace, self.kind, self.name)
    }
}

/// A pod as the engine needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodInfo {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub node: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// `(kind, name)` of the controlling owner, if any.
    pub owner: Option<(String, String)>,
    pub restart_policy: Option<String>,
    pub phase: PodPhase,
    pub reason: Option<String>,
    pub message: Option<String>,
    pub conditions: Vec<PodCondition>,
    pub containers: Vec<ContainerInfo>,
    pub init_containers: Vec<ContainerInfo>,
    /// Devices bound to the pod (from PodResources, allocatedResourcesStatus or NodeDeviceHealth).
    pub devices: Vec<DeviceKey>,
    pub start_time: Option<Time>,
    pub deletion_requested: bool,
    /// The pod's spec restarts it in place when a container exits with
    /// [`RESTART_IN_PLACE_EXIT_CODE`] (its container restart rules), and how.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_place: Option<InPlaceRestart>,
}

/// A node as the engine needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub ready: Option<bool>,
    pub unschedulable: bool,
    pub boot_id: Option<String>,
    pub driver_version: Option<String>,
    pub device_plugin_version: Option<String>,
    pub rack: Option<String>,
    /// The node carries devheal's cordon (its taint), as the cluster shows it.
    #[serde(default)]
    pub devheal_cordoned: bool,
    /// The repair devheal requested on the node (its label), as the cluster shows it.
    #[serde(default)]
    pub repair_requested: Option<crate::action::RepairKind>,
}

/// Whose fault a pod failure is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
pub enum FailureClass {
    DeviceFailure,
    DeviceDegraded,
    Application,
    Oom,
    Infrastructure,
    Disruption,
    #[default]
    None,
}

impl FailureClass {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::DeviceFailure => "device_failure",
            FailureClass::DeviceDegraded => "device_degraded",
            FailureClass::Application => "application",
            FailureClass::Oom => "oom",
            FailureClass::Infrastructure => "infrastructure",
            FailureClass::Disruption => "disruption",
            FailureClass::None => "none",
        }
    }
}
