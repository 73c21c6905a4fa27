//! The strategy's commands carried out on the cluster. The world keeps the counts and tells
//! false quarantines from true ones: only it knows whether hardware is really broken.

use super::{Event, GangState, ReplicaState, World};
use crate::scenario::secs;
use crate::strategy::{Command, Policy};

impl<P: Policy> World<'_, P> {
    pub(super) fn apply(&mut self, command: Command<P::Timer>) {
        let now = self.now;
        match command {
            Command::After { delay, timer } => self.queue.push(now + delay, Event::Strategy(timer)),
            Command::EvictGangMember { gang, member } => {
                self.counts.pod_evictions += 1;
                self.evict_gang_member(gang, member);
            }
            Command::EvictReplica { service, replica } => {
                self.counts.pod_evictions += 1;
                let node = self.services[service as usize].replicas[replica as usize].node;
                let healthy = node.is_some_and(|n| self.node_problem(n, Some((service, replica))).is_none());
                let state = self.services[service as usize].replicas[replica as usize].state;
                if matches!(state, ReplicaState::Up | ReplicaState::Starting { .. }) {
                    self.replica_set_state(
                        service,
                        replica,
                        ReplicaState::Down { since: now, collateral: healthy },
                    );
                }
                let epoch = self.services[service as usize].replicas[replica as usize].epoch;
                let at = now + secs(self.scenario.kubernetes.termination_grace_s);
                self.queue.push(at, Event::ReplicaReschedule { service, replica, epoch });
            }
            Command::RestartGang { gang } => {
                if !matches!(
                    self.gangs[gang as usize].state,
                    GangState::Restarting { .. } | GangState::WaitingCapacity { .. }
                ) {
                    self.begin_restart(gang, false);
                }
            }
            Command::RestartGangWithout { gang, members } => {
                if !matches!(
                    self.gangs[gang as usize].state,
                    GangState::Restarting { .. } | GangState::WaitingCapacity { .. }
                ) {
                    self.gangs[gang as usize].pending_moves.extend(members);
                    self.begin_restart(gang, false);
                }
            }
            Command::FailGang { gang } => self.fail_gang(gang),
            Command::ReplaceMembers { gang, members } => {
                self.counts.straggler_replacements += members.len() as u64;
                self.gangs[gang as usize].pending_moves.extend(members);
                self.begin_restart(gang, false);
            }
            Command::QuarantineDevice { node, device } => {
                let i = self.dev(node, device);
                if self.devices[i].quarantined.is_none() {
                    self.counts.device_quarantines += 1;
                    if self.devices[i].fault.is_none() && self.nodes[node as usize].host_fault.is_none() {
                        self.counts.false_quarantines += 1;
                    }
                    self.quarantine_device(i);
                }
            }
            Command::ReleaseDevice { node, device } => {
                let i = self.dev(node, device);
                self.release_device(i);
            }
            Command::Cordon { node } => {
                if !self.nodes[node as usize].cordoned && self.node_problem(node, None).is_none() {
                    self.counts.false_quarantines += 1;
                }
                self.nodes[node as usize].cordoned = true;
            }
            Command::Uncordon { node } => self.nodes[node as usize].cordoned = false,
            Command::ResetDevice { node, device } => self.reset_device(node, device),
            Command::Repair { node, kind } => self.start_repair(node, kind, true),
            Command::Drain { node } => self.drain_node(node, true),
            Command::EvictDevicePods { node, device } => {
                if let Some((gang, member)) = self.nodes[node as usize].gang_member {
                    // A gang member's pod takes every GPU of its node.
                    self.counts.pod_evictions += 1;
                    self.evict_gang_member(gang, member);
                }
                let i = self.dev(node, device);
                if let Some((service, replica)) = self.devices[i].occupant {
                    self.apply(Command::EvictReplica { service, replica });
                }
            }
            Command::Ticket { node } => self.open_ticket(node, self.operator_delay()),
            Command::DrainAndRepair { node, kind } => {
                if self.node_problem(node, None).is_none() {
                    self.counts.false_quarantines += 1;
                }
                self.nodes[node as usize].cordoned = true;
                self.drain_node(node, true);
                self.start_repair(node, kind, true);
            }
        }
    }
}
