//! A node's network fault: NIC links that went down and stayed down, or flapped too often, as
//! the node's agent judges them from its own NICs (a brief flap never arrives here).
//!
//! The rule (`docs/policy.md`, "Network faults"):
//! - The node is cordoned, with a devheal reason, so that a gang restarted for the fault is
//!   scheduled elsewhere. The cordon counts against the quarantine budget and is held by the
//!   breaker like any other; the fault is counted by the breaker (a switch that takes down the
//!   links of many nodes at once is a correlated failure, not many bad nodes).
//! - A training gang with a member on the node that is hung or failed is restarted, once per
//!   fault episode, as a fault (class `infrastructure`), not as a progress-only restart: the
//!   fault is the agent's evidence, not the workload's. The restart budgets apply.
//! - Nothing else: the node's devices stay as they are (no quarantine, no Unhealthy), no repair
//!   is requested, running pods that are not failing are left alone.
//! - When the agent no longer reports the fault (the links are up and stable), a cordon placed
//!   for the network alone is lifted. A cordon for anything else (a host incident) stays until
//!   its own exit (reboot and probation).

use crate::action::{Action, PlannedAction};
use crate::incident::NetworkFault;
use crate::pod::{FailureClass, GangId, PodPhase};
use crate::time::Time;

use super::Engine;
use super::budgets::Cause;

impl Engine {
    pub(super) fn on_node_network(
        &mut self,
        node: &str,
        fault: Option<NetworkFault>,
        now: Time,
        out: &mut Vec<PlannedAction>,
    ) {
        if fault.is_none() && !self.nodes.contains_key(node) {
            return;
        }
        // A node not seen yet (its NodeDeviceHealth came before its Node): the fault is kept,
        // as the controller sends it only when it changes.
        let ns = self.nodes.entry(node.to_string()).or_default();
        match fault {
            Some(fault) => {
                let new_episode = ns.network.as_ref().is_none_or(|old| old.since != fault.since);
                ns.network = Some(fault.clone());
                self.network_faulted.insert(node.to_string());
                if new_episode {
                    self.network_fault(node, &fault, now, out);
                }
            }
            None => {
                // A cordon restored from an earlier engine ([`super::durable`]) has no fault
                // with it: the first report without one lifts it too.
                let ended = ns.network.take();
                if ended.is_none() && !ns.network_cordon {
                    return;
                }
                self.network_faulted.remove(node);
                self.network_cleared(node, ended.as_ref(), now, out);
            }
        }
    }

    /// Level-triggered, each Tick: a node still at fault that is not cordoned (the breaker or a
    /// version hold held it, or the budget was full when the fault began) is cordoned once
    /// nothing holds it. Looks only at the nodes at fault now (few).
    pub(super) fn retry_network_cordons(&mut self, now: Time, out: &mut Vec<PlannedAction>) {
        let waiting: Vec<(String, NetworkFault)> = self
            .network_faulted
            .iter()
            .filter_map(|n| {
                let ns = self.nodes.get(n)?;
                (!ns.cordoned).then(|| ns.network.clone().map(|f| (n.clone(), f))).flatten()
            })
            .collect();
        for (node, fault) in waiting {
            if self.node_held(&node).is_some() {
                continue;
            }
            let incident = Self::network_incident(&node, &fault);
            self.cordon(&node, &incident, &format!("network fault: {}", fault.reason), now, out);
            if let Some(ns) = self.nodes.get_mut(&node) {
                ns.network_cordon = ns.cordoned;
            }
        }
    }

    /// The episode's identity: one cordon and one restart per gang for it.
    fn network_incident(node: &str, fault: &NetworkFault) -> String {
        format!("network/{node}/{}", fault.since.as_nanos())
    }

    fn network_fault(&mut self, node: &str, fault: &NetworkFault, now: Time, out: &mut Vec<PlannedAction>) {
        let incident = Self::network_incident(node, fault);
        let reason = format!("network fault: {}", fault.reason);
        self.record_failure(node, now, out);
        if let Some(hold) = self.node_held(node) {
            self.report_hold(out, hold, node, format!("node {node}: {reason}"), now);
            return;
        }
        let was_cordoned = self.nodes.get(node).is_some_and(|n| n.cordoned);
        self.cordon(node, &incident, &reason, now, out);
        if !was_cordoned && let Some(ns) = self.nodes.get_mut(node) {
            ns.network_cordon = ns.cordoned;
        }
        // Gangs with a member here that has already failed: restarted now (a hang is noticed
        // later, by the engine or the controller, and blamed on the fault then).
        let mut failed: Vec<(String, GangId)> = self
            .node_devices(node)
            .flat_map(|(_, d)| d.pods.iter())
            .filter_map(|uid| {
                let p = self.pods.get(uid)?;
                (p.info.phase == PodPhase::Failed)
                    .then(|| (uid.clone(), p.gang.clone()))
                    .and_then(|(uid, g)| g.map(|g| (uid, g)))
            })
            .collect();
        failed.sort();
        failed.dedup_by(|a, b| a.1 == b.1);
        for (uid, g) in failed {
            let why = format!("member {uid} failed on node {node}: {reason}");
            self.restart_gang(&g, &incident, &why, FailureClass::Infrastructure, Cause::Fault, now, out);
        }
    }

    /// The fault `ended` (none known: a cordon restored from an earlier engine) is over.
    fn network_cleared(
        &mut self,
        node: &str,
        ended: Option<&NetworkFault>,
        now: Time,
        out: &mut Vec<PlannedAction>,
    ) {
        let Some(ns) = self.nodes.get_mut(node) else { return };
        if !(ns.cordoned && ns.network_cordon) {
            return;
        }
        ns.cordoned = false;
        ns.network_cordon = false;
        ns.probation_until = None;
        ns.released_at = Some(now);
        self.node_probation.remove(node);
        self.durable_changes += 1;
        self.unquarantine_node(node);
        // One uncordon per episode: two episodes may end at one instant, and the key must not
        // make the second uncordon a replay of the first.
        let key = match ended {
            Some(fault) => format!("uncordon/{}", Self::network_incident(node, fault)),
            None => format!("uncordon/{node}/network-restored/{}", now.as_nanos()),
        };
        let action = Action::UncordonNode {
            node: node.to_string(),
            reason: "network fault cleared: its links are up and stable".into(),
        };
        self.emit(out, key, action, FailureClass::None, now);
    }

    /// The network fault of a node `g` has a member on, if any, as (node, incident, reason).
    pub(super) fn gang_network_fault(&self, g: &GangId) -> Option<(String, String, String)> {
        if self.network_faulted.is_empty() {
            return None;
        }
        let gs = self.gangs.get(g)?;
        gs.members.iter().find_map(|uid| {
            let node = self.pods.get(uid)?.info.node.as_deref()?;
            if !self.network_faulted.contains(node) {
                return None;
            }
            let fault = self.nodes.get(node)?.network.as_ref()?;
            let reason = format!("network fault on node {node}: {}", fault.reason);
            Some((node.to_string(), Self::network_incident(node, fault), reason))
        })
    }

    /// A failing member of `g` on a node with a network fault: the gang is restarted for the
    /// fault (once per episode), and the node is cordoned if it is not yet (the budget or a
    /// hold may have refused it when the fault began). True when the failure was the network's.
    pub(super) fn member_failed_on_faulted_network(
        &mut self,
        uid: &str,
        g: &GangId,
        now: Time,
        out: &mut Vec<PlannedAction>,
    ) -> bool {
        let Some(node) = self.pods.get(uid).and_then(|p| p.info.node.clone()) else { return false };
        if !self.network_faulted.contains(&node) {
            return false;
        }
        let Some(fault) = self.nodes.get(&node).and_then(|n| n.network.clone()) else { return false };
        let incident = Self::network_incident(&node, &fault);
        let reason = format!("member {uid} failed on node {node}: network fault: {}", fault.reason);
        let was_cordoned = self.nodes.get(&node).is_some_and(|n| n.cordoned);
        if self.node_held(&node).is_none() && !was_cordoned {
            self.cordon(&node, &incident, &format!("network fault: {}", fault.reason), now, out);
            if let Some(ns) = self.nodes.get_mut(&node) {
                ns.network_cordon = ns.cordoned;
            }
        }
        self.restart_gang(g, &incident, &reason, FailureClass::Infrastructure, Cause::Fault, now, out);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::test_support::*;

    fn link_down(node: &str, since: i64) -> Input {
        Input::NodeNetwork {
            node: node.into(),
            fault: Some(NetworkFault {
                links: vec!["ens1np0 (0000:08:00.0)".into()],
                since: t(since),
                reason: "link down on ens1np0 (0000:08:00.0) for 30s".into(),
            }),
        }
    }

    fn cleared(node: &str) -> Input {
        Input::NodeNetwork { node: node.into(), fault: None }
    }

    fn no_device_action(acts: &[PlannedAction]) -> bool {
        !acts.iter().any(|a| {
            matches!(
                a.action,
                Action::QuarantineDevice { .. } | Action::RequestRepair { .. } | Action::EvictPod { .. }
            )
        })
    }

    #[test]
    fn a_network_fault_cordons_the_node_and_quarantines_nothing() {
        let mut e = engine_with(20);
        e.handle(Input::PodUpsert(gang_pod(0, "node-0")), t(1));
        e.handle(Input::PodUpsert(gang_pod(1, "node-1")), t(1));
        let acts = e.handle(link_down("node-0", 2), t(32));
        assert_eq!(count(&acts, |a| matches!(a, Action::CordonNode { node, .. } if node == "node-0")), 1);
        assert!(no_device_action(&acts), "{acts:#?}");
        assert_eq!(count(&acts, |a| matches!(a, Action::RestartGang { .. })), 0, "nobody failed yet");
        for i in 0..8 {
            assert_eq!(e.device_health(&key("node-0", i)), Some(Health::Healthy));
            assert!(!e.is_quarantined(&key("node-0", i)));
        }
        // The same fault reported again is the same episode.
        assert!(e.handle(link_down("node-0", 2), t(92)).is_empty());
    }

    #[test]
    fn a_gang_hung_after_a_link_down_is_restarted_off_the_node_as_a_fault() {
        let mut e = engine_with(20);
        e.handle(Input::PodUpsert(gang_pod(0, "node-0")), t(1));
        e.handle(Input::PodUpsert(gang_pod(1, "node-1")), t(1));
        let acts = e.handle(link_down("node-0", 2), t(32));
        assert_eq!(count(&acts, |a| matches!(a, Action::CordonNode { .. })), 1);
        let acts = hung(&mut e, "uid-1", t(2), t(300));
        let restarts: Vec<&PlannedAction> =
            acts.iter().filter(|a| matches!(a.action, Action::RestartGang { .. })).collect();
        assert_eq!(restarts.len(), 1, "{acts:#?}");
        assert_eq!(restarts[0].class, FailureClass::Infrastructure, "blamed on the network");
        assert!(no_device_action(&acts), "{acts:#?}");
        assert!(!e.safety_state(t(300)).progress_breaker_open);
    }

    #[test]
    fn a_member_that_fails_on_the_faulted_node_restarts_its_gang_once() {
        let mut e = engine_with(20);
        e.handle(Input::PodUpsert(gang_pod(0, "node-0")), t(1));
        e.handle(Input::PodUpsert(gang_pod(1, "node-1")), t(1));
        e.handle(link_down("node-0", 2), t(32));
        let acts = e.handle(Input::PodUpsert(failed(gang_pod(0, "node-0"), 1)), t(40));
        assert_eq!(count(&acts, |a| matches!(a, Action::RestartGang { .. })), 1, "{acts:#?}");
        assert!(no_device_action(&acts), "{acts:#?}");
        let acts = e.handle(Input::PodUpsert(failed(gang_pod(1, "node-1"), 1)), t(41));
        assert_eq!(count(&acts, |a| matches!(a, Action::RestartGang { .. })), 0, "one restart per episode");
    }

    #[test]
    fn a_member_failed_before_the_fault_was_confirmed_is_restarted_when_it_is() {
        let mut e = engine_with(20);
        e.handle(Input::PodUpsert(gang_pod(0, "node-0")), t(1));
        // NCCL gave up before the agent confirmed the link down: an application failure alone.
        let acts = e.handle(Input::PodUpsert(failed(gang_pod(0, "node-0"), 1)), t(10));
        assert_eq!(count(&acts, |a| matches!(a, Action::RestartGang { .. })), 0, "{acts:#?}");
        let acts = e.handle(link_down("node-0", 2), t(32));
        assert_eq!(count(&acts, |a| matches!(a, Action::CordonNode { .. })), 1, "{acts:#?}");
        assert_eq!(count(&acts, |a| matches!(a, Action::RestartGang { .. })), 1, "{acts:#?}");
    }

    #[test]
    fn the_cordon_is_lifted_when_the_links_are_up_and_stable_once() {
        let mut e = engine_with(20);
        e.handle(link_down("node-0", 2), t(32));
        let acts = e.handle(cleared("node-0"), t(900));
        assert_eq!(count(&acts, |a| matches!(a, Action::UncordonNode { node, .. } if node == "node-0")), 1);
        assert!(e.handle(cleared("node-0"), t(960)).is_empty(), "once");
        // A new episode cordons again.
        let acts = e.handle(link_down("node-0", 1000), t(1030));
        assert_eq!(count(&acts, |a| matches!(a, Action::CordonNode { .. })), 1, "{acts:#?}");
    }

    #[test]
    fn two_episodes_ending_at_one_instant_are_two_uncordons() {
        let mut e = engine_with(20);
        e.handle(link_down("node-0", 1), t(1));
        let first = e.handle(cleared("node-0"), t(2));
        let again = e.handle(link_down("node-0", 2), t(2));
        let second = e.handle(cleared("node-0"), t(2));
        let uncordons = |acts: &[PlannedAction]| count(acts, |a| matches!(a, Action::UncordonNode { .. }));
        assert_eq!(count(&again, |a| matches!(a, Action::CordonNode { .. })), 1);
        assert_eq!((uncordons(&first), uncordons(&second)), (1, 1), "{second:#?}");
    }

    #[test]
    fn a_host_cordon_is_not_lifted_by_the_network_clearing() {
        let mut e = engine_with(20);
        e.handle(link_down("node-0", 2), t(3));
        e.handle(host_fault("node-0"), t(4));
        assert!(e.handle(cleared("node-0"), t(900)).is_empty(), "the host fault's cordon stays");
        // Cordoned for a host fault first: the network fault adds nothing, and lifts nothing.
        let mut e = engine_with(20);
        e.handle(host_fault("node-1"), t(4));
        let acts = e.handle(link_down("node-1", 5), t(35));
        assert_eq!(count(&acts, |a| matches!(a, Action::CordonNode { .. })), 0, "{acts:#?}");
        assert!(e.handle(cleared("node-1"), t(900)).is_empty());
    }

    #[test]
    fn a_network_cordon_respects_the_quarantine_budget_and_waits_for_room() {
        let mut e = engine_with(4);
        let mut cordoned = 0;
        let mut refused = 0;
        for n in 0..4 {
            let acts = e.handle(link_down(&format!("node-{n}"), 2), t(32));
            cordoned += count(&acts, |a| matches!(a, Action::CordonNode { .. }));
            refused += reports(&acts, "QuarantineBudgetExhausted").len();
        }
        let limit = e.safety_state(t(32)).quarantine_node_limit;
        assert_eq!(cordoned, limit);
        assert_eq!(refused, 4 - limit);
        assert!(e.handle(Input::Tick, t(40)).is_empty(), "no room yet, and no repeated report");
        // node-0's link comes back: its cordon goes, and a waiting node gets the room.
        let acts = e.handle(cleared("node-0"), t(900));
        assert_eq!(count(&acts, |a| matches!(a, Action::UncordonNode { .. })), 1, "{acts:#?}");
        let acts = e.handle(Input::Tick, t(905));
        assert_eq!(count(&acts, |a| matches!(a, Action::CordonNode { .. })), 1, "{acts:#?}");
    }

    #[test]
    fn a_fault_reported_before_the_node_is_known_is_kept() {
        let mut e = Engine::default();
        assert!(
            e.handle(link_down("node-9", 2), t(32))
                .iter()
                .all(|a| !matches!(a.action, Action::QuarantineDevice { .. } | Action::RequestRepair { .. }))
        );
        e.handle(node_info("node-9", "b1"), t(33));
        let acts = e.handle(cleared("node-9"), t(900));
        assert_eq!(count(&acts, |a| matches!(a, Action::UncordonNode { .. })), 1, "{acts:#?}");
    }

    #[test]
    fn a_network_cordon_survives_a_reboot_while_the_fault_lasts_and_clears_with_it() {
        let mut e = engine_with(20);
        e.handle(link_down("node-0", 2), t(32));
        e.handle(node_info("node-0", "b2"), t(100));
        assert!(e.handle(Input::Tick, t(100 + 700)).is_empty(), "the link is still down");
        let acts = e.handle(cleared("node-0"), t(900));
        assert_eq!(count(&acts, |a| matches!(a, Action::UncordonNode { .. })), 1, "{acts:#?}");
    }

    #[test]
    fn a_restored_engine_lifts_a_network_cordon_when_the_fault_clears() {
        let mut e = engine_with(20);
        e.handle(link_down("node-0", 2), t(32));
        let saved = e.durable(t(40));
        let mut fresh = engine_with(20);
        fresh.restore(saved, t(50));
        let acts = fresh.handle(cleared("node-0"), t(60));
        assert_eq!(count(&acts, |a| matches!(a, Action::UncordonNode { .. })), 1, "{acts:#?}");
    }
}
