//! The four ways a cluster can respond to device faults that `devheal sim` compares.

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// No extra tooling: pods stay on dead devices, containers restart in place, a gang hangs
    /// until the NCCL watchdog, and a person steps in after `operator.response_min`.
    KubernetesDefault,
    /// node-problem-detector plus a remediator (NVSentinel-like): node-level detection on a
    /// polling period, then cordon, drain and reboot of the whole node.
    NodeHealthController,
    /// Job podFailurePolicy / JobSet failure policy: the gang is recreated when a pod fails;
    /// the scheduler honours the device plugin's Unhealthy marks; no other device awareness.
    JobFailurePolicy,
    /// devheal's engine, unchanged, fed by the real detect code, on top of JobSet mechanics.
    Devheal,
}

impl Strategy {
    pub const ALL: [Strategy; 4] = [
        Strategy::KubernetesDefault,
        Strategy::NodeHealthController,
        Strategy::JobFailurePolicy,
        Strategy::Devheal,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Strategy::KubernetesDefault => "kubernetes-default",
            Strategy::NodeHealthController => "node-health-controller",
            Strategy::JobFailurePolicy => "job-failure-policy",
            Strategy::Devheal => "devheal",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Strategy::KubernetesDefault => {
                "no extra tooling: in-place container restarts, NCCL watchdog, a person steps in"
            }
            Strategy::NodeHealthController => {
                "node-level detection on a polling period, cordon + drain + reboot of the node"
            }
            Strategy::JobFailurePolicy => "JobSet/podFailurePolicy recreates the gang when a pod fails",
            Strategy::Devheal => "devheal engine on the real detect path, over JobSet mechanics",
        }
    }

    /// Whether pods are recreated (and so rescheduled away from devices the scheduler knows are
    /// bad) when a gang restarts, rather than their containers restarting in place.
    pub fn recreates_pods(self) -> bool {
        matches!(self, Strategy::JobFailurePolicy | Strategy::Devheal)
    }
}
