//! Training gangs: compute and checkpoint cycles, a fault stopping the gang, what notices it,
//! restarts (with members moved to spares), people stepping in, planned maintenance.

use devheal_core::Time;

use super::{Event, Gang, GangState, World, hours};
use crate::scenario::{Manifestation, secs};
use crate::strategy::{Policy, Signal};

impl<P: Policy> World<'_, P> {
    pub(crate) fn gang_is_active(&self, gang: u16) -> bool {
        matches!(
            self.gangs[gang as usize].state,
            GangState::Computing | GangState::Checkpointing { .. } | GangState::Restarting { .. }
        )
    }

    pub(super) fn start_computing(&mut self, gang: u16) {
        let g = &mut self.gangs[gang as usize];
        g.state = GangState::Computing;
        g.last_settle = self.now;
        g.run_token += 1;
        let token = g.run_token;
        let remaining = (g.interval - g.cycle_work).max(0.0) * g.pace;
        let at = self.now + secs(remaining);
        self.queue.push(at, Event::ComputeDone { gang, token });
    }

    /// Bring a computing gang's work up to `now` at its current pace.
    pub(super) fn settle(g: &mut Gang, now: Time) {
        if g.state == GangState::Computing {
            let dt = now.since(g.last_settle).as_secs_f64();
            let work = dt / g.pace;
            g.cycle_work += work;
            g.lost.straggler_slowdown += (dt - work) / 3600.0 * g.gpus;
        }
        g.last_settle = now;
    }

    pub(super) fn gang_slow(&mut self, gang: u16, node: u32, slowdown: Option<f64>) {
        let now = self.now;
        let g = &mut self.gangs[gang as usize];
        Self::settle(g, now);
        match slowdown {
            Some(f) => {
                g.slow.insert(node, f);
            }
            None => {
                g.slow.remove(&node);
            }
        }
        g.pace = g.slow.values().copied().fold(1.0, f64::max);
        if g.state == GangState::Computing {
            self.start_computing(gang);
        }
    }

    /// Account the time spent in the current non-running state.
    pub(super) fn close_state(g: &mut Gang, now: Time) {
        match g.state {
            GangState::Computing => {}
            GangState::Checkpointing { started } => {
                g.lost.checkpoint_overhead += hours(now.since(started).0) * g.gpus;
            }
            GangState::Hung { since } => g.lost.hang_before_detection += hours(now.since(since).0) * g.gpus,
            GangState::Restarting { since, planned } => {
                let h = hours(now.since(since).0) * g.gpus;
                if planned {
                    g.lost.planned_maintenance += h;
                } else {
                    g.lost.restart += h;
                }
            }
            GangState::WaitingCapacity { since } => {
                g.lost.capacity_held_out += hours(now.since(since).0) * g.gpus
            }
        }
    }

    /// A fault reaches a gang member (or the member's node).
    pub(super) fn gang_fault(&mut self, gang: u16, member: u32, manifestation: Manifestation, class: u16) {
        let now = self.now;
        let g = &mut self.gangs[gang as usize];
        match g.state {
            GangState::Computing | GangState::Checkpointing { .. } => {
                Self::settle(g, now);
                g.lost.rework_since_checkpoint += g.cycle_work / 3600.0 * g.gpus;
                g.cycle_work = 0.0;
                Self::close_state(g, now);
                g.interruptions += 1;
                self.counts.training_interruptions += 1;
            }
            GangState::Restarting { .. } => Self::close_state(g, now),
            GangState::Hung { .. } | GangState::WaitingCapacity { .. } => {
                // Already down: the damage is recorded on the hardware; the member may have to move.
                if manifestation == Manifestation::NodeDown || manifestation == Manifestation::Evicted {
                    g.pending_moves.insert(member);
                }
                return;
            }
        }
        g.state = GangState::Hung { since: now };
        // A silent stall (a hang, a dead node): what the hang detector is for.
        g.hang_episode =
            matches!(manifestation, Manifestation::Hang | Manifestation::NodeDown).then_some((now, false));
        g.epoch += 1;
        g.run_token += 1;
        if !g.streak_active {
            g.streak_active = true;
            g.streak += 1;
            let streak = g.streak;
            let at = now + self.operator_delay();
            self.queue.push(at, Event::GangOperator { gang, streak });
        }
        self.schedule_gang_notices(gang, member, manifestation, class);
    }

    /// What notices the gang's failure, and when, under this strategy.
    pub(super) fn schedule_gang_notices(
        &mut self,
        gang: u16,
        member: u32,
        manifestation: Manifestation,
        class: u16,
    ) {
        let now = self.now;
        let k = &self.scenario.kubernetes;
        let g = &self.gangs[gang as usize];
        let epoch = g.epoch;
        let watchdog = now + g.watchdog;
        let recreate = self.recreates_pods();
        match manifestation {
            Manifestation::Crash => {
                if recreate {
                    self.queue
                        .push(now + secs(k.pod_failure_report_s), Event::GangRestartTrigger { gang, epoch });
                } else {
                    self.queue.push(watchdog, Event::GangRestartTrigger { gang, epoch });
                }
            }
            Manifestation::Hang => {
                self.queue.push(watchdog, Event::GangRestartTrigger { gang, epoch });
            }
            Manifestation::NodeDown => {
                let gone = now + self.k8s_pod_eviction_delay();
                self.queue.push(gone, Event::MemberPodGone { gang, member, epoch });
                if recreate {
                    self.queue.push(gone, Event::GangRestartTrigger { gang, epoch });
                } else {
                    self.queue.push(watchdog.max(gone), Event::GangRestartTrigger { gang, epoch });
                }
            }
            Manifestation::Evicted => {
                self.gangs[gang as usize].pending_moves.insert(member);
                let gone = now + secs(k.termination_grace_s);
                if recreate {
                    self.queue.push(gone, Event::GangRestartTrigger { gang, epoch });
                } else {
                    self.queue.push(watchdog, Event::GangRestartTrigger { gang, epoch });
                }
            }
        }
        self.signal(Signal::GangFailed { gang, member, manifestation, class });
    }

    /// Whether a node can take a (new) training pod: the scheduler's view.
    pub(super) fn schedulable_for_training(&self, node: u32) -> bool {
        let n = &self.nodes[node as usize];
        if !n.up || n.in_repair.is_some() || n.cordoned {
            return false;
        }
        (0..self.gpn as u8).all(|d| {
            let dv = &self.devices[self.dev(node, d)];
            !dv.plugin_unhealthy && dv.quarantined.is_none() && !dv.resetting
        })
    }

    /// Whether a member's pod survives a restart where it is.
    pub(super) fn member_stays(&self, node: u32) -> bool {
        let n = &self.nodes[node as usize];
        if !n.up || n.in_repair.is_some() {
            return false;
        }
        if self.recreates_pods() { self.schedulable_for_training(node) } else { true }
    }

    pub(super) fn find_spare(&mut self) -> Option<u32> {
        let training = self.scenario.training_nodes();
        for i in 0..training {
            let n = (self.spare_cursor + i) % training;
            if self.nodes[n as usize].gang_member.is_none() && self.schedulable_for_training(n) {
                self.spare_cursor = (n + 1) % training;
                return Some(n);
            }
        }
        None
    }

    /// Restart the gang now (JobSet recreate, in-place restart, engine or operator request).
    pub(crate) fn begin_restart(&mut self, gang: u16, planned: bool) {
        let now = self.now;
        self.score_hang_end(gang);
        {
            let g = &mut self.gangs[gang as usize];
            if matches!(g.state, GangState::Computing | GangState::Checkpointing { .. }) {
                // A restart of a running gang (an action, not a fault) loses uncommitted work.
                Self::settle(g, now);
                if planned {
                    g.committed_work += g.cycle_work;
                } else {
                    g.lost.rework_since_checkpoint += g.cycle_work / 3600.0 * g.gpus;
                }
                g.cycle_work = 0.0;
            }
            Self::close_state(g, now);
        }
        // Place every member that cannot stay.
        let members = self.gangs[gang as usize].members.clone();
        let in_place = std::mem::take(&mut self.gangs[gang as usize].next_restart_in_place);
        let mut moves: Vec<u32> = Vec::new();
        for (m, &node) in members.iter().enumerate() {
            if self.gangs[gang as usize].pending_moves.contains(&(m as u32)) || !self.member_stays(node) {
                moves.push(m as u32);
            }
        }
        // Every member restarts in place only when none has to move: the gang waits for its
        // slowest member, and a re-created one pays scheduling and pod start.
        let in_place = in_place && moves.is_empty();
        for m in moves {
            match self.find_spare() {
                Some(spare) => self.move_member(gang, m, spare),
                None => {
                    let g = &mut self.gangs[gang as usize];
                    g.pending_moves.insert(m);
                    g.state = GangState::WaitingCapacity { since: now };
                    g.epoch += 1;
                    g.waiting = true;
                    return;
                }
            }
        }
        let g = &mut self.gangs[gang as usize];
        g.pending_moves.clear();
        g.waiting = false;
        g.state = GangState::Restarting { since: now, planned };
        g.epoch += 1;
        g.attempt += 1;
        g.restarts += 1;
        self.counts.gang_restarts += 1;
        let epoch = g.epoch;
        let at = now + if in_place { g.in_place_cost } else { g.restart_cost };
        if in_place {
            self.counts.in_place_restarts += 1;
        }
        self.queue.push(at, Event::RestartDone { gang, epoch });
    }

    pub(super) fn move_member(&mut self, gang: u16, member: u32, to: u32) {
        let from = self.gangs[gang as usize].members[member as usize];
        if self.nodes[from as usize].gang_member == Some((gang, member)) {
            self.nodes[from as usize].gang_member = None;
        }
        self.nodes[to as usize].gang_member = Some((gang, member));
        let g = &mut self.gangs[gang as usize];
        g.members[member as usize] = to;
        g.pod_generation[member as usize] += 1;
        g.pending_moves.remove(&member);
        let old_slow = g.slow.remove(&from).is_some();
        let new_slow = self.nodes[to as usize].slowdown;
        if new_slow > 1.0 {
            g.slow.insert(to, new_slow);
        }
        if old_slow || new_slow > 1.0 {
            g.pace = g.slow.values().copied().fold(1.0, f64::max);
        }
        self.signal(Signal::MemberMoved { gang, member });
    }

    pub(super) fn restart_done(&mut self, gang: u16) {
        let now = self.now;
        Self::close_state(&mut self.gangs[gang as usize], now);
        let broken = self.broken.iter().find_map(|&node| {
            let (g, m) = self.nodes[node as usize].gang_member?;
            if g != gang {
                return None;
            }
            let n = &self.nodes[node as usize];
            if !n.up || n.in_repair.is_some() {
                return Some((m, 0u16, Manifestation::NodeDown));
            }
            self.node_problem(node, None).map(|(c, man)| (m, c, man))
        });
        match broken {
            Some((member, class, manifestation)) => {
                // The restarted job trips over hardware that is still broken.
                let g = &mut self.gangs[gang as usize];
                g.state = GangState::Hung { since: now };
                g.epoch += 1;
                let man = if manifestation == Manifestation::Evicted {
                    Manifestation::Crash
                } else {
                    manifestation
                };
                self.schedule_gang_notices(gang, member, man, class);
            }
            None => {
                self.start_computing(gang);
                self.signal(Signal::GangRunning { gang });
            }
        }
    }

    pub(super) fn gang_operator(&mut self, gang: u16) {
        self.counts.operator_interventions += 1;
        let broken: Vec<u32> = self.broken.iter().copied().collect();
        for node in broken {
            let Some((g, m)) = self.nodes[node as usize].gang_member else { continue };
            if g != gang {
                continue;
            }
            self.gangs[gang as usize].pending_moves.insert(m);
            if self.nodes[node as usize].in_repair.is_none() {
                self.ticket_now(node);
            }
        }
        if !matches!(self.gangs[gang as usize].state, GangState::Computing | GangState::Checkpointing { .. })
        {
            self.begin_restart(gang, false);
        }
        let g = &mut self.gangs[gang as usize];
        if g.streak_active {
            let streak = g.streak;
            let at = self.now + self.operator_delay();
            self.queue.push(at, Event::GangOperator { gang, streak });
        }
    }

    pub(super) fn planned_maintenance(&mut self, gang: u16) {
        let g = &self.gangs[gang as usize];
        if matches!(g.state, GangState::Computing | GangState::Checkpointing { .. }) {
            self.begin_restart(gang, true);
        }
    }

    /// A gang member's pod is evicted: JobSet-style strategies restart the gang at once; with
    /// in-place restarts the others wait for the watchdog.
    pub(crate) fn evict_gang_member(&mut self, gang: u16, member: u32) {
        self.gangs[gang as usize].pending_moves.insert(member);
        let now = self.now;
        match self.gangs[gang as usize].state {
            GangState::Computing | GangState::Checkpointing { .. } | GangState::Restarting { .. } => {
                self.gang_fault(gang, member, Manifestation::Evicted, 0);
            }
            GangState::Hung { .. } => {
                if self.recreates_pods() {
                    let epoch = self.gangs[gang as usize].epoch;
                    let at = now + secs(self.scenario.kubernetes.termination_grace_s);
                    self.queue.push(at, Event::GangRestartTrigger { gang, epoch });
                }
            }
            GangState::WaitingCapacity { .. } => {}
        }
    }

    /// The workload is failed (not restarted): it waits for a person.
    pub(crate) fn fail_gang(&mut self, gang: u16) {
        let now = self.now;
        let g = &mut self.gangs[gang as usize];
        if matches!(g.state, GangState::Hung { .. }) {
            g.epoch += 1;
            return;
        }
        if matches!(g.state, GangState::Computing | GangState::Checkpointing { .. }) {
            Self::settle(g, now);
            g.lost.rework_since_checkpoint += g.cycle_work / 3600.0 * g.gpus;
            g.cycle_work = 0.0;
        }
        Self::close_state(g, now);
        g.state = GangState::Hung { since: now };
        g.epoch += 1;
        g.run_token += 1;
        g.waiting = false;
        if !g.streak_active {
            g.streak_active = true;
            g.streak += 1;
            let streak = g.streak;
            let at = now + self.operator_delay();
            self.queue.push(at, Event::GangOperator { gang, streak });
        }
    }
}
