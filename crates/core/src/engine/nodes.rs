//! Nodes: their boot and versions as reported, reboots (which make earlier evidence stale and
//! start a cordoned node's probation), deletion, and incidents of a whole node (machine checks,
//! host faults without a PCI address), which cordon it.

use crate::action::{Action, PlannedAction, RepairKind};
use crate::device::Health;
use crate::incident::{Attribution, KernelIncident};
use crate::pod::{FailureClass, NodeInfo, PodPhase};
use crate::time::Time;

use super::Engine;
use super::breaker::version_tags;

#[derive(Clone, Debug, Default)]
pub(super) struct NodeState {
    pub(super) info: Option<NodeInfo>,
    pub(super) cordoned: bool,
    /// The boot a restored cordon was made in, until the node is first seen ([`super::durable`]).
    pub(super) cordon_boot: Option<String>,
    pub(super) open_incident: Option<String>,
    pub(super) probation_until: Option<Time>,
    /// When this engine last lifted a cordon or withdrew a repair request here (such marks
    /// are not adopted back from the node for a while: [`super::repairs::ADOPT_QUIET`]).
    pub(super) released_at: Option<Time>,
    /// The network fault the node's agent reports now ([`super::network`]).
    pub(super) network: Option<crate::incident::NetworkFault>,
    /// The node's cordon was placed for its network alone: it is lifted when the network
    /// fault clears (a cordon for anything else waits for a reboot and probation).
    pub(super) network_cordon: bool,
}

impl Engine {
    pub(super) fn on_node(&mut self, info: NodeInfo, now: Time, out: &mut Vec<PlannedAction>) {
        let node_name = info.name.clone();
        let ns = self.nodes.entry(info.name.clone()).or_default();
        let old = ns.info.take();
        let restored_boot = ns.cordon_boot.take();
        let rebooted = match (&old, &info.boot_id) {
            (Some(o), Some(new)) => o.boot_id.as_ref().is_some_and(|b| b != new),
            // First sight after a restore: a boot other than the cordon's is a reboot.
            (None, Some(new)) => restored_boot.is_some_and(|b| b != *new),
            _ => false,
        };
        let old_tags = old.as_ref().map(version_tags).unwrap_or_default();
        let new_tags = version_tags(&info);
        let boot = info.boot_id.clone();
        ns.info = Some(info);
        if rebooted {
            ns.open_incident = None;
            if ns.cordoned {
                ns.probation_until = Some(now + self.config.safety.probation);
                self.node_probation.insert(node_name.clone());
            }
            for k in self.node_device_keys(&node_name) {
                if let Some(d) = self.devices.get_mut(&k) {
                    d.recovered_at = now;
                    d.incidents.clear();
                }
            }
        }
        if old_tags != new_tags {
            for t in old_tags {
                if let Some(c) = self.version_nodes.get_mut(&t) {
                    *c = c.saturating_sub(1);
                }
            }
            for t in new_tags {
                *self.version_nodes.entry(t).or_default() += 1;
            }
        }
        if let Some(boot) = boot {
            self.repairs_on_reboot(&node_name, &boot, now, out);
        }
        self.adopt_node_marks(&node_name, now, out);
    }

    pub(super) fn on_node_deleted(&mut self, name: &str) {
        let Some(ns) = self.nodes.remove(name) else { return };
        if let Some(info) = &ns.info {
            for t in version_tags(info) {
                if let Some(c) = self.version_nodes.get_mut(&t) {
                    *c = c.saturating_sub(1);
                }
            }
        }
        for k in self.node_device_keys(name) {
            self.devices.remove(&k);
            self.probation.remove(&k);
            self.pending_devices.remove(&k);
        }
        self.quarantined_nodes.remove(name);
        self.network_faulted.remove(name);
        self.repairs.remove(name);
        self.vanished.retain(|k, _| k.node != name);
        self.departed.retain(|k, _| k.node != name);
    }

    pub(super) fn node_incident(&mut self, inc: KernelIncident, now: Time, out: &mut Vec<PlannedAction>) {
        let device_fault =
            matches!(inc.attribution, Attribution::Device | Attribution::Interconnect | Attribution::Host);
        if !device_fault || inc.health != Health::Unhealthy {
            return;
        }
        let Some(ns) = self.nodes.get_mut(&inc.node) else { return };
        if ns.open_incident.is_some() {
            return;
        }
        ns.open_incident = Some(inc.id.clone());
        let node = inc.node.clone();
        self.record_failure(&node, now, out);
        let reason = format!("{}: {}", inc.kind, inc.summary);
        if let Some(hold) = self.node_held(&node) {
            self.report_hold(out, hold, &node, format!("node {node}: {reason}"), now);
            return;
        }
        // Cordoned for this incident now, whatever the network does (a cordon for the network
        // alone is lifted when the network recovers; this one waits for a reboot).
        if let Some(ns) = self.nodes.get_mut(&node) {
            ns.network_cordon = false;
        }
        self.cordon(&node, &inc.id, &reason, now, out);
        if self.config.safety.request_repairs && inc.action > RepairKind::RestartApp {
            let key = format!("repair/{node}/{}", inc.id);
            let action = Action::RequestRepair {
                node: node.clone(),
                device: None,
                kind: inc.action,
                reason: reason.clone(),
            };
            self.emit(out, key, action, FailureClass::DeviceFailure, now);
        }
        let mut pods: Vec<String> =
            self.node_devices(&node).flat_map(|(_, d)| d.pods.iter().cloned()).collect();
        pods.sort();
        pods.dedup();
        for uid in pods {
            let Some(p) = self.pods.get(&uid) else { continue };
            if matches!(p.info.phase, PodPhase::Succeeded | PodPhase::Failed) || p.info.devices.is_empty() {
                continue;
            }
            let mut verdict = self.verdict(&p.info.to_pod_info(&uid), now);
            verdict.class = FailureClass::DeviceFailure;
            verdict.confidence = verdict.confidence.max(0.8);
            verdict.failing = true;
            verdict.evidence.insert(0, format!("node {node} incident {}: {}", inc.id, reason));
            self.decide_pod(&uid, None, verdict, Some(inc.id.clone()), now, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::test_support::*;

    #[test]
    fn host_incident_cordons_and_a_reboot_uncordons_after_probation() {
        let mut e = engine_with(20);
        e.handle(Input::PodUpsert(gang_pod(0, "node-0")), t(1));
        let acts = e.handle(host_fault("node-0"), t(2));
        assert_eq!(count(&acts, |a| matches!(a, Action::CordonNode { .. })), 1, "{acts:#?}");
        assert_eq!(
            count(&acts, |a| matches!(a, Action::RequestRepair { kind: RepairKind::RebootNode, .. })),
            1
        );
        assert_eq!(count(&acts, |a| matches!(a, Action::RestartGang { .. })), 1);
        let acts = e.handle(node_info("node-0", "b2"), t(100));
        assert_eq!(acts.len(), 1, "{acts:#?}");
        assert!(
            matches!(&acts[0].action, Action::WithdrawRepair { node, .. } if node == "node-0"),
            "{acts:#?}"
        );
        assert!(e.handle(Input::Tick, t(200)).is_empty(), "still in probation");
        let acts = e.handle(Input::Tick, t(100 + 600));
        assert_eq!(count(&acts, |a| matches!(a, Action::UncordonNode { .. })), 1, "{acts:#?}");
        assert!(e.handle(Input::Tick, t(2000)).is_empty(), "uncordoned once");
    }
}
