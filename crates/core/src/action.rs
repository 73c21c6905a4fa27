//! What the engine asks its drivers to do.

use serde::{Deserialize, Serialize};

use crate::device::DeviceKey;
use crate::pod::{FailureClass, GangId};

/// A repair a node or device needs, in increasing order of cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
pub enum RepairKind {
    #[default]
    None,
    RestartApp,
    ResetDevice,
    RebootNode,
    InspectHardware,
}

impl RepairKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RepairKind::None => "none",
            RepairKind::RestartApp => "restart_app",
            RepairKind::ResetDevice => "reset_device",
            RepairKind::RebootNode => "reboot_node",
            RepairKind::InspectHardware => "inspect_hardware",
        }
    }
}

/// A pod reference that survives re-creation: namespace, name and uid.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// An action for a driver (controller actuator, simulator) to carry out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Action {
    /// Set a `devheal.io/...` condition on the pod, for a Job's podFailurePolicy to match.
    MarkPod {
        pod: PodRef,
        condition_type: String,
        reason: String,
        message: String,
    },
    /// Evict the pod through the Eviction API (PDB-aware).
    EvictPod {
        pod: PodRef,
        reason: String,
    },
    /// Restart every member of a gang at once: those in `in_place` by telling them to exit with
    /// [`crate::pod::RESTART_IN_PLACE_EXIT_CODE`] (their pods restart them on the same node and
    /// devices), every other live member by re-creating its pod.
    RestartGang {
        gang: GangId,
        incident: String,
        reason: String,
        /// Healthy members whose pods restart in place; empty: every member is re-created.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        in_place: Vec<PodRef>,
    },
    /// Keep new pods off one device.
    QuarantineDevice {
        device: DeviceKey,
        reason: String,
    },
    /// Lift a quarantine after probation.
    ReleaseDevice {
        device: DeviceKey,
        reason: String,
    },
    CordonNode {
        node: String,
        reason: String,
    },
    UncordonNode {
        node: String,
        reason: String,
    },
    RequestRepair {
        node: String,
        device: Option<DeviceKey>,
        kind: RepairKind,
        reason: String,
    },
    /// The node's repair requests were answered (it came back in a new boot, or the device
    /// works again): clear the request's condition and label.
    WithdrawRepair {
        node: String,
        reason: String,
    },
    /// At the gang's next checkpoint, restart it from that checkpoint with this member placed
    /// off `devices` (a slow member of a synchronous gang). Until then nothing changes.
    ReplaceAtCheckpoint {
        pod: PodRef,
        gang: GangId,
        devices: Vec<DeviceKey>,
        reason: String,
    },
    /// Fail the workload (the gang's owner) rather than restart it again.
    FailWorkload {
        gang: GangId,
        reason: String,
    },
    /// A report to operators (breaker opened, canary signal), nothing changes in the cluster.
    Report {
        reason: String,
        message: String,
    },
}

/// An action with the identity that makes it idempotent and the class that caused it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedAction {
    /// Replays with the same key must not act twice.
    pub idempotency_key: String,
    pub action: Action,
    pub class: FailureClass,
    /// The policy whose rule produced the action: `namespace/name` of a FailurePolicy object,
    /// or the name of a policy without a namespace (the built-in `devheal-default`). `None`
    /// for the engine's own safety actions (device quarantine from health, hang restarts,
    /// breaker and budget reports, probation releases).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
}

/// What became of an action a driver (the controller's actuator, a fake cluster) tried to carry
/// out. The controller counts these by type and outcome and retries only `Retry`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ActionOutcome {
    /// Done, or already true (a replay of an idempotent action lands here).
    Done,
    /// Decided but not carried out (dry run): what would have been sent.
    WouldDo { description: String },
    /// Refused for now (a PodDisruptionBudget's 429, conflicts that did not settle, a 5xx);
    /// try again after this many milliseconds.
    Retry { after_ms: u64, reason: String },
    /// Nothing left to act on (the pod or node is gone).
    Gone,
    /// Failed for good (forbidden, invalid): reported, not retried.
    Failed { reason: String },
}

impl ActionOutcome {
    /// A short label for metrics: `done`, `would_do`, `retry`, `gone`, `failed`.
    pub fn label(&self) -> &'static str {
        match self {
            ActionOutcome::Done => "done",
            ActionOutcome::WouldDo { .. } => "would_do",
            ActionOutcome::Retry { .. } => "retry",
            ActionOutcome::Gone => "gone",
            ActionOutcome::Failed { .. } => "failed",
        }
    }
}

impl Action {
    /// A short sentence: "evict ml/trainer-3", "quarantine device node/gpu/GPU-1", ….
    pub fn summary(&self) -> String {
        match self {
            Action::MarkPod { pod, condition_type, reason, .. } => {
                format!("mark {}/{} {condition_type}={reason}", pod.namespace, pod.name)
            }
            Action::EvictPod { pod, .. } => format!("evict {}/{}", pod.namespace, pod.name),
            Action::RestartGang { gang, incident, in_place, .. } if in_place.is_empty() => {
                format!("restart gang {gang} (incident {incident})")
            }
            Action::RestartGang { gang, incident, in_place, .. } => {
                format!("restart gang {gang} (incident {incident}), {} member(s) in place", in_place.len())
            }
            Action::QuarantineDevice { device, .. } => format!("quarantine device {device}"),
            Action::ReleaseDevice { device, .. } => format!("release device {device}"),
            Action::CordonNode { node, .. } => format!("cordon {node}"),
            Action::UncordonNode { node, .. } => format!("uncordon {node}"),
            Action::RequestRepair { node, device, kind, .. } => match device {
                Some(d) => format!("request {} of {d}", kind.as_str()),
                None => format!("request {} of {node}", kind.as_str()),
            },
            Action::WithdrawRepair { node, .. } => format!("withdraw the repair request of {node}"),
            Action::FailWorkload { gang, .. } => format!("fail workload {gang}"),
            Action::ReplaceAtCheckpoint { pod, gang, .. } => {
                format!("replace {}/{} in gang {gang} at its next checkpoint", pod.namespace, pod.name)
            }
            Action::Report { reason, message } => format!("report {reason}: {message}"),
        }
    }

    /// Why the engine planned it.
    pub fn reason(&self) -> &str {
        match self {
            Action::MarkPod { reason, .. }
            | Action::EvictPod { reason, .. }
            | Action::RestartGang { reason, .. }
            | Action::QuarantineDevice { reason, .. }
            | Action::ReleaseDevice { reason, .. }
            | Action::CordonNode { reason, .. }
            | Action::UncordonNode { reason, .. }
            | Action::RequestRepair { reason, .. }
            | Action::WithdrawRepair { reason, .. }
            | Action::ReplaceAtCheckpoint { reason, .. }
            | Action::FailWorkload { reason, .. }
            | Action::Report { reason, .. } => reason,
        }
    }

    /// A short label for metrics and logs: `mark_pod`, `evict_pod`, `restart_gang`, ….
    pub fn label(&self) -> &'static str {
        match self {
            Action::MarkPod { .. } => "mark_pod",
            Action::EvictPod { .. } => "evict_pod",
            Action::RestartGang { .. } => "restart_gang",
            Action::QuarantineDevice { .. } => "quarantine_device",
            Action::ReleaseDevice { .. } => "release_device",
            Action::CordonNode { .. } => "cordon_node",
            Action::UncordonNode { .. } => "uncordon_node",
            Action::RequestRepair { .. } => "request_repair",
            Action::WithdrawRepair { .. } => "withdraw_repair",
            Action::ReplaceAtCheckpoint { .. } => "replace_at_checkpoint",
            Action::FailWorkload { .. } => "fail_workload",
            Action::Report { .. } => "report",
        }
    }
}

/// Carries out the engine's planned actions: the controller's Kubernetes actuator, an in-memory
/// fake cluster in tests. Implementations must be idempotent per `idempotency_key` where the
/// cluster lets them be (a replayed eviction of a pod that is gone is `Gone`, not an error).
pub trait Actuator: Send + Sync {
    fn execute(&self, planned: &PlannedAction) -> impl std::future::Future<Output = ActionOutcome> + Send;
}
