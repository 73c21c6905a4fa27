//! The strategy's commands carried out on the cluster. The world keeps the counts and tells
//! false quarantines from true ones: only it knows whether hardware is really broken.

use super::{Event, GangState, ReplicaState, World};
use crate::scenario::secs;
use crate::strategy::{Command, Policy};

impl<P: Policy> World<'_, P> {
    /// Carry out one command, counting the restarts it causes of a gang that ran on healthy
    /// hardware (false restarts).
    pub(super) fn apply(&mut self, command: Command<P::Timer>) {
        let may_stop = matches!(
            command,
            Command::RestartGang { .. }
                | Command::RestartGangWithout { .. }
                | Command::ReplaceMembers { .. }
                | Command::EvictGangMember { .. }
                | Command::EvictDevicePods { .. }
                | Command::Drain { .. }
                | Command::DrainAndRepair { .. }
                | Command::Repair { .. }
                | Command::FailGang { .. }
        );
        if !may_stop {
            return self.apply_one(command);
        }
        let healthy = self.gangs_on_healthy_hardware();
        self.apply_one(command);
        for (g, was_healthy) in healthy.into_iter().enumerate() {
            if was_healthy
                && !matches!(self.gangs[g].state, GangState::Computing | GangState::Checkpointing { .. })
            {
                self.counts.false_restarts += 1;
            }
        }
    }

    /// Which gangs run on healthy hardware now: running, and no member broken or slow.
    ///
    /// Looked up from the few broken nodes (`broken`, with each node's `gang_member`) and the
    /// gang's slow members (`slow`) rather than by walking every member: a fleet gang has 2,560
    /// members and this runs before every command that may stop a gang (137,673 drains in the
    /// 100k-GPU year under node-health-controller). Debug builds check it against the walk.
    fn gangs_on_healthy_hardware(&self) -> Vec<bool> {
        let mut healthy: Vec<bool> = self
            .gangs
            .iter()
            .map(|gang| {
                matches!(gang.state, GangState::Computing | GangState::Checkpointing { .. })
                    && gang.slow.keys().all(|&n| self.nodes[n as usize].slowdown <= 1.0)
            })
            .collect();
        for &n in &self.broken {
            if let Some((g, m)) = self.nodes[n as usize].gang_member
                && self.gangs[g as usize].members[m as usize] == n
            {
                healthy[g as usize] = false;
            }
        }
        #[cfg(debug_assertions)]
        for (g, gang) in self.gangs.iter().enumerate() {
            let walked = matches!(gang.state, GangState::Computing | GangState::Checkpointing { .. })
                && gang
                    .members
                    .iter()
                    .all(|&n| !self.broken.contains(&n) && self.nodes[n as usize].slowdown <= 1.0);
            debug_assert_eq!(healthy[g], walked, "gang {g}: broken/slow members out of step with the index");
        }
        healthy
    }

    /// Whether a node's hardware is healthy (nothing to repair).
    fn node_healthy(&self, node: u32) -> bool {
        let n = &self.nodes[node as usize];
        n.up && self.node_problem(node, None).is_none()
    }

    fn apply_one(&mut self, command: Command<P::Timer>) {
        let now = self.now;
        match command {
            Command::After { delay, timer } => self.queue.push(now + delay, Event::Strategy(timer)),
            Command::Finding { detector, gang, member } => self.score_finding(detector, gang, member),
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
                    self.counts.false_restarts += u64::from(healthy);
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
            Command::RestartGang { gang, in_place } => {
                if !matches!(
                    self.gangs[gang as usize].state,
                    GangState::Restarting { .. } | GangState::WaitingCapacity { .. }
                ) {
                    self.gangs[gang as usize].next_restart_in_place = in_place;
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
                let truly_slow = members.iter().any(|&m| {
                    let node = self.gangs[gang as usize].members[m as usize];
                    self.nodes[node as usize].slowdown > 1.0
                });
                self.counts.false_replacements += u64::from(!truly_slow) * members.len() as u64;
                self.counts.straggler_replacements += members.len() as u64;
                self.gangs[gang as usize].pending_moves.extend(members);
                self.begin_restart(gang, false);
            }
            Command::QuarantineDevice { node, device } => {
                let i = self.dev(node, device);
                if self.devices[i].quarantined.is_none() {
                    self.counts.device_quarantines += 1;
                    if !self.scenario.cluster.dra && !self.node_tainted(node) {
                        self.counts.node_taints += 1;
                    }
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
            Command::ResetDevice { node, device } => {
                let i = self.dev(node, device);
                if !self.devices[i].resetting && self.devices[i].fault.is_none() {
                    self.counts.false_repairs += 1;
                }
                self.reset_device(node, device)
            }
            Command::Repair { node, kind } => {
                if self.nodes[node as usize].in_repair.is_none() && self.node_healthy(node) {
                    self.counts.false_repairs += 1;
                }
                self.start_repair(node, kind, true)
            }
            Command::Drain { node } => {
                if self.node_healthy(node) {
                    self.counts.false_repairs += 1;
                }
                self.drain_node(node, true)
            }
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
                    if self.nodes[node as usize].in_repair.is_none() && self.nodes[node as usize].up {
                        self.counts.false_repairs += 1;
                    }
                }
                self.nodes[node as usize].cordoned = true;
                self.drain_node(node, true);
                self.start_repair(node, kind, true);
            }
        }
    }
}
