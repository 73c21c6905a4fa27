//! The health check of a rollout: the upgraded nodes against what they had before and against
//! the nodes not yet upgraded, in the same window. Pure.
//!
//! It fails, with the first of these reasons, when:
//! - `NewPodNotReady`: a node's new pod is not Ready `readyTimeoutSeconds` after the node was
//!   taken up;
//! - `DevicesNotAdvertised`: an upgraded node advertises fewer of the plan's resource (Node
//!   allocatable) than before (the plugin did not register, or lost devices);
//! - `DevicesUnhealthy`: more devices on upgraded nodes turned Unhealthy or Unknown after their
//!   node's upgrade than `maxUnhealthyDevices`;
//! - `DeviceFaultsRose`: device faults seen in the window per upgraded node exceed those per
//!   node not yet upgraded by more than `maxExtraFaultsPerNode`;
//! - `DevicePodFailuresRose`: the same for pod failures devheal attributed to devices.

use devheal_core::{Duration, Time};
use devheal_k8s::pod::time_from_k8s;
use devheal_k8s::upgrade_plan::UpgradeNodeStatus;

use super::validate::ValidPlan;
use super::view::View;

/// Why a rollout is not healthy.
#[derive(Clone, Debug, PartialEq)]
pub struct HealthFailure {
    /// A stable CamelCase word (see the module documentation).
    pub reason: &'static str,
    pub message: String,
}

/// Per-node rates of the upgraded group and the rest, for a count the view keeps per node.
fn rates(
    view: &View,
    to_hash: &str,
    since: Time,
    times: impl Fn(&super::view::NodeView) -> &[Time],
) -> (f64, usize, f64, usize) {
    let (mut up, mut up_n, mut rest, mut rest_n) = (0usize, 0usize, 0usize, 0usize);
    for node in view.nodes.values() {
        let count = times(node).iter().filter(|t| **t >= since).count();
        let upgraded = node.plugin.as_ref().is_some_and(|p| p.hash == to_hash && p.ready);
        if upgraded {
            up += count;
            up_n += 1;
        } else {
            rest += count;
            rest_n += 1;
        }
    }
    let per = |c: usize, n: usize| if n == 0 { 0.0 } else { c as f64 / n as f64 };
    (per(up, up_n), up_n, per(rest, rest_n), rest_n)
}

/// Check the rollout of `to_hash` over the nodes `taken` (with what they had before) since
/// `window_start`.
pub fn check(
    plan: &ValidPlan,
    view: &View,
    to_hash: &str,
    taken: &[UpgradeNodeStatus],
    window_start: Time,
    now: Time,
) -> Result<(), HealthFailure> {
    let timeout = Duration::from_secs(i64::from(plan.ready_timeout_seconds));
    let mut late = Vec::new();
    let mut fewer = Vec::new();
    let mut turned = 0u32;
    let mut turned_on = Vec::new();
    for t in taken {
        let Some(node) = view.nodes.get(&t.name) else { continue };
        let upgraded = node.plugin.as_ref().is_some_and(|p| p.hash == to_hash && p.ready);
        if !upgraded {
            if now.since(time_from_k8s(&t.started)) > timeout {
                late.push(t.name.as_str());
            }
            continue;
        }
        if let (Some(before), Some(now)) = (t.allocatable_before, node.allocatable) {
            if now < before {
                fewer.push(format!("{} advertises {now}, {before} before", t.name));
            }
        } else if t.allocatable_before.is_some_and(|b| b > 0) && node.allocatable.is_none() {
            fewer.push(format!("{} advertises none, {} before", t.name, t.allocatable_before.unwrap_or(0)));
        }
        let more = node.unhealthy_devices.saturating_sub(t.unhealthy_before);
        if more > 0 {
            turned += more;
            turned_on.push(format!("{} ({more})", t.name));
        }
    }
    if !late.is_empty() {
        return Err(HealthFailure {
            reason: "NewPodNotReady",
            message: format!(
                "the new pod is not Ready {} s after its node was taken up on: {}",
                plan.ready_timeout_seconds,
                late.join(", ")
            ),
        });
    }
    if !fewer.is_empty() {
        let resource = plan.resource.as_deref().unwrap_or("the resource");
        return Err(HealthFailure {
            reason: "DevicesNotAdvertised",
            message: format!("upgraded nodes advertise fewer {resource}: {}", fewer.join("; ")),
        });
    }
    if turned > plan.max_unhealthy_devices {
        return Err(HealthFailure {
            reason: "DevicesUnhealthy",
            message: format!(
                "{turned} devices turned Unhealthy or Unknown on upgraded nodes after their upgrade (at most {} \
                 allowed): {}",
                plan.max_unhealthy_devices,
                turned_on.join(", ")
            ),
        });
    }
    let (up, up_n, rest, rest_n) = rates(view, to_hash, window_start, |n| &n.fault_times);
    if up_n > 0 && up - rest > plan.max_extra_faults_per_node {
        return Err(HealthFailure {
            reason: "DeviceFaultsRose",
            message: format!(
                "{up:.2} device faults per upgraded node ({up_n} nodes) against {rest:.2} per node not yet upgraded \
                 ({rest_n} nodes) since the stage began (at most {} more allowed)",
                plan.max_extra_faults_per_node
            ),
        });
    }
    let (up, up_n, rest, rest_n) = rates(view, to_hash, window_start, |n| &n.pod_failure_times);
    if up_n > 0 && up - rest > plan.max_extra_pod_failures_per_node {
        return Err(HealthFailure {
            reason: "DevicePodFailuresRose",
            message: format!(
                "{up:.2} device-attributed pod failures per upgraded node ({up_n} nodes) against {rest:.2} per node \
                 not yet upgraded ({rest_n} nodes) since the stage began (at most {} more allowed)",
                plan.max_extra_pod_failures_per_node
            ),
        });
    }
    Ok(())
}
