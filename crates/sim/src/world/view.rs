//! What a strategy may read of the world ([`View`]).

use devheal_core::Time;

use super::{GangState, World};
use crate::scenario::NvmlSignal;
use crate::strategy::{GangPhase, GangView, NodeView, Policy, ReplicaView, View};

impl<P: Policy> View for World<'_, P> {
    fn now(&self) -> Time {
        self.now
    }

    fn node(&self, node: u32) -> NodeView {
        let n = &self.nodes[node as usize];
        NodeView {
            up: n.up,
            in_repair: n.in_repair.is_some(),
            cordoned: n.cordoned,
            boot: n.boot,
            slowdown: n.slowdown,
            gang_member: n.gang_member,
        }
    }

    fn gangs(&self) -> usize {
        self.gangs.len()
    }

    fn gang(&self, gang: u16) -> GangView<'_> {
        let g = &self.gangs[gang as usize];
        GangView {
            name: &g.name,
            namespace: &g.namespace,
            members: &g.members,
            pod_generation: &g.pod_generation,
            attempt: g.attempt,
            phase: match g.state {
                GangState::Computing => GangPhase::Computing,
                GangState::Checkpointing { .. } => GangPhase::Checkpointing,
                GangState::Hung { .. } => GangPhase::Hung,
                GangState::Restarting { .. } => GangPhase::Restarting,
                GangState::WaitingCapacity { .. } => GangPhase::WaitingCapacity,
            },
            pace: g.pace,
        }
    }

    fn gang_work_s(&self, gang: u16) -> Option<f64> {
        let g = &self.gangs[gang as usize];
        let running_work = match g.state {
            GangState::Computing => g.cycle_work + self.now.since(g.last_settle).as_secs_f64() / g.pace,
            GangState::Checkpointing { .. } => g.cycle_work,
            _ => return None,
        };
        Some(g.committed_work + running_work)
    }

    fn services(&self) -> usize {
        self.services.len()
    }

    fn replicas(&self, service: u16) -> usize {
        self.services[service as usize].replicas.len()
    }

    fn replica(&self, service: u16, replica: u32) -> ReplicaView<'_> {
        let s = &self.services[service as usize];
        let r = &s.replicas[replica as usize];
        ReplicaView {
            service: &s.name,
            namespace: &s.namespace,
            gpus: s.gpus_per_replica,
            node: r.node,
            first_device: r.first_device,
            generation: r.generation,
        }
    }

    fn device_faulty(&self, node: u32, device: u8) -> bool {
        self.devices[self.dev(node, device)].fault.is_some()
    }

    fn device_needs_recovery(&self, node: u32, device: u8) -> bool {
        self.devices[self.dev(node, device)].fault.is_some_and(|f| {
            let class = &self.scenario.faults[f.class as usize];
            class.device_plugin_detects || class.nvml == NvmlSignal::Unhealthy
        })
    }
}
