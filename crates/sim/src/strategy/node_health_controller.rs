//! `node-health-controller`: node-problem-detector plus a remediator. A node-level check runs on
//! every node every `poll_interval_s` (each node on its own phase); when it finds any kernel
//! Xid/AER/MCE line or NVML signal since its last look, the remediator cordons the node, drains
//! it and reboots it. It knows no catalogue: application Xids and link flaps are treated as
//! hardware.

use std::collections::BTreeSet;

use super::{Command, Commands, Mechanics, Policy, Repair, Signal, Strategy, View, next_poll};
use crate::scenario::{NvmlSignal, Scenario, secs};

pub(crate) struct NodeHealthController<'a> {
    scenario: &'a Scenario,
    /// Nodes with a check already due that will see the signal.
    pending: BTreeSet<u32>,
}

impl<'a> NodeHealthController<'a> {
    pub(crate) fn new(scenario: &'a Scenario) -> Self {
        NodeHealthController { scenario, pending: BTreeSet::new() }
    }
}

impl Policy for NodeHealthController<'_> {
    /// A node's check.
    type Timer = u32;

    fn strategy(&self) -> Strategy {
        Strategy::NodeHealthController
    }

    fn mechanics(&self) -> Mechanics {
        Mechanics { recreates_pods: false, in_job_restart: false, agent_resets: false }
    }

    fn signal(&mut self, signal: Signal, view: &dyn View, out: &mut Commands<u32>) {
        let (node, visible) = match signal {
            Signal::Fault { class, node, lines, .. } => {
                (node, lines != 0 || self.scenario.faults[class as usize].nvml != NvmlSignal::None)
            }
            // Any kernel line: a harmless one (noise) or a fault's late one.
            Signal::KernelLines { node, lines, .. } => (node, lines != 0),
            _ => return,
        };
        if !visible || !self.pending.insert(node) {
            return;
        }
        let period = secs(self.scenario.strategies.node_health_controller.poll_interval_s);
        let now = view.now();
        out.push(Command::After { delay: next_poll(node, period, now).since(now), timer: node });
    }

    /// The check finds the signal: cordon, drain, reboot.
    fn timer(&mut self, node: u32, view: &dyn View, out: &mut Commands<u32>) {
        self.pending.remove(&node);
        if view.node(node).in_repair {
            return;
        }
        out.push(Command::DrainAndRepair { node, kind: Repair::Reboot });
    }
}
