//! Nodes and devices: what is broken, drains, repairs and the tickets people open for them,
//! device resets, quarantines and the healthy hours they hold out.

use devheal_core::Duration;

use super::{Event, GangState, ReplicaState, World, hours};
use crate::scenario::{Manifestation, Persistence, secs};
use crate::strategy::{AGENT_RESETS_PER_DAY, Policy, Repair, Signal};

/// How often the agent looks again whether a device waiting for its reset is idle, and how long
/// it waits before refusing (`--device-reset-busy-wait`, 300 s).
const RESET_POLL: Duration = Duration::from_secs(5);
const RESET_BUSY_WAIT: Duration = Duration::from_secs(300);

impl Repair {
    /// The repair a fault of this persistence needs, if any.
    pub(crate) fn needed_for(p: Persistence) -> Option<Repair> {
        match p {
            Persistence::Transient => None,
            Persistence::UntilReset => Some(Repair::Reset),
            Persistence::UntilReboot => Some(Repair::Reboot),
            Persistence::UntilReplace => Some(Repair::Replace),
        }
    }

    pub(crate) fn fixes(self, p: Persistence) -> bool {
        Repair::needed_for(p).is_none_or(|need| need <= self)
    }
}

impl<P: Policy> World<'_, P> {
    /// The first active problem on a node, as (class, manifestation), ignoring faults on devices
    /// that `replica` does not use.
    pub(crate) fn node_problem(
        &self,
        node: u32,
        replica: Option<(u16, u32)>,
    ) -> Option<(u16, Manifestation)> {
        let n = &self.nodes[node as usize];
        if let Some(f) = n.host_fault {
            return Some((f.class, self.scenario.faults[f.class as usize].manifestation));
        }
        let (first, count) = match replica {
            Some((s, r)) => {
                let svc = &self.services[s as usize];
                (svc.replicas[r as usize].first_device, svc.gpus_per_replica as u8)
            }
            None => (0, self.gpn as u8),
        };
        (first..first + count).find_map(|d| {
            self.devices[self.dev(node, d)]
                .fault
                .map(|f| (f.class, self.scenario.faults[f.class as usize].manifestation))
        })
    }

    /// Keep `broken` in step with a node's state.
    pub(crate) fn refresh_broken(&mut self, node: u32) {
        let n = &self.nodes[node as usize];
        if !n.up || n.in_repair.is_some() || self.node_problem(node, None).is_some() {
            self.broken.insert(node);
        } else {
            self.broken.remove(&node);
        }
    }

    pub(super) fn healthy_devices(&self, node: u32) -> u32 {
        if self.nodes[node as usize].host_fault.is_some() {
            return 0;
        }
        (0..self.gpn as u8).filter(|&d| self.devices[self.dev(node, d)].fault.is_none()).count() as u32
    }

    /// Evict every pod on the node (a drain). `by_strategy` marks collateral for replicas on
    /// healthy devices.
    pub(crate) fn drain_node(&mut self, node: u32, by_strategy: bool) {
        let now = self.now;
        if by_strategy {
            self.counts.node_drains += 1;
        }
        if let Some((g, m)) = self.nodes[node as usize].gang_member {
            self.evict_gang_member(g, m);
        }
        for d in 0..self.gpn as u8 {
            let i = self.dev(node, d);
            if let Some((s, r)) = self.devices[i].occupant {
                if self.services[s as usize].replicas[r as usize].first_device != d {
                    continue;
                }
                if by_strategy {
                    self.counts.pod_evictions += 1;
                }
                let healthy = self.node_problem(node, Some((s, r))).is_none();
                let state = self.services[s as usize].replicas[r as usize].state;
                if matches!(state, ReplicaState::Up | ReplicaState::Starting { .. }) {
                    self.replica_set_state(
                        s,
                        r,
                        ReplicaState::Down { since: now, collateral: by_strategy && healthy },
                    );
                }
                let epoch = self.services[s as usize].replicas[r as usize].epoch;
                let at = now + secs(self.scenario.kubernetes.termination_grace_s);
                self.queue.push(at, Event::ReplicaReschedule { service: s, replica: r, epoch });
            }
        }
    }

    /// Take a node (or, for a reset, a device) out for repair.
    pub(crate) fn start_repair(&mut self, node: u32, kind: Repair, by_strategy: bool) {
        let now = self.now;
        if self.nodes[node as usize].in_repair.is_some_and(|k| k >= kind) {
            return;
        }
        match kind {
            Repair::Reset => self.counts.repairs_reset += 1,
            Repair::Reboot => self.counts.repairs_reboot += 1,
            Repair::Replace => self.counts.repairs_replace += 1,
        }
        // Pods still on the node go (a repair tool drains first).
        self.drain_node(node, false);
        let healthy = self.healthy_devices(node);
        let n = &mut self.nodes[node as usize];
        if by_strategy && n.held_out_since.is_none() {
            n.held_out_since = Some((now, healthy));
        }
        n.in_repair = Some(kind);
        n.up = false;
        n.repair_token += 1;
        let token = n.repair_token;
        self.broken.insert(node);
        let r = &self.scenario.repair;
        let duration = match kind {
            Repair::Reset => secs(r.reset_device_min * 60.0),
            Repair::Reboot => secs(r.reboot_node_min * 60.0),
            Repair::Replace => secs(r.replace_hardware_h * 3600.0),
        };
        self.queue.push(now + duration, Event::RepairDone { node, token });
    }

    pub(super) fn repair_done(&mut self, node: u32) {
        let now = self.now;
        let Some(kind) = self.nodes[node as usize].in_repair else { return };
        for d in 0..self.gpn as u8 {
            let i = self.dev(node, d);
            if self.devices[i].fault.is_some_and(|f| kind.fixes(f.persistence)) {
                self.device_fault_cleared(i);
            }
        }
        let n = &mut self.nodes[node as usize];
        if n.host_fault.is_some_and(|f| kind.fixes(f.persistence)) {
            n.host_fault = None;
        }
        if kind == Repair::Replace {
            n.lemon = false;
        }
        n.in_repair = None;
        n.boot += 1;
        n.up = n
            .host_fault
            .is_none_or(|f| self.scenario.faults[f.class as usize].manifestation != Manifestation::NodeDown);
        self.refresh_broken(node);
        let still_broken = self.node_problem(node, None).is_some();
        let n = &mut self.nodes[node as usize];
        // A cordon stays while the fault persists and is lifted once the hardware is fixed.
        n.cordoned = still_broken && n.cordoned;
        if !still_broken && let Some((since, healthy)) = n.held_out_since.take() {
            self.fleet_lost.collateral_quarantine += hours(now.since(since).0) * f64::from(healthy);
        }
        if still_broken {
            self.open_ticket(node, self.operator_delay());
        }
        self.signal(Signal::NodeRepaired { node });
        self.retry_waiting();
    }

    pub(super) fn open_ticket(&mut self, node: u32, delay: Duration) {
        let n = &mut self.nodes[node as usize];
        if n.ticket_open {
            return;
        }
        n.ticket_open = true;
        self.queue.push(self.now + delay, Event::NodeTicket { node });
    }

    /// A person takes a node from the ticket queue (a strategy handed it over, or a repair did
    /// not fix it) and sends it for the repair its fault needs. A node with nothing to repair (a
    /// false alarm, or a fault gone by then) passes the person's checks and is uncordoned: it
    /// would otherwise stay out of service for the rest of the run.
    pub(super) fn ticket_due(&mut self, node: u32) {
        self.nodes[node as usize].ticket_open = false;
        self.ticket_now(node);
        let n = &self.nodes[node as usize];
        if n.cordoned && n.up && n.in_repair.is_none() && self.node_problem(node, None).is_none() {
            self.counts.operator_interventions += 1;
            self.nodes[node as usize].cordoned = false;
            self.retry_waiting();
        }
    }

    /// A person handles a node: cordon it and send it for the repair its fault needs.
    pub(super) fn ticket_now(&mut self, node: u32) {
        if self.nodes[node as usize].in_repair.is_some() {
            return;
        }
        let mut need: Option<Repair> = None;
        if let Some(f) = self.nodes[node as usize].host_fault {
            need = need.max(Repair::needed_for(f.persistence));
        }
        if !self.nodes[node as usize].up {
            need = need.max(Some(Repair::Reboot));
        }
        for d in 0..self.gpn as u8 {
            if let Some(f) = self.devices[self.dev(node, d)].fault {
                need = need.max(Repair::needed_for(f.persistence));
            }
        }
        if let Some(kind) = need {
            self.counts.operator_interventions += 1;
            self.nodes[node as usize].cordoned = true;
            let kind = if kind == Repair::Reset { Repair::Reboot } else { kind };
            self.start_repair(node, kind, true);
        }
    }

    /// Reset one device (a strategy asked), by the reset path: only once no process holds the
    /// device (`nvidia-smi --gpu-reset` needs it idle; the agent looks again every 5 s for up to
    /// 5 minutes, then refuses), and under devheal's agent at most 3 resets of a device in 24 h
    /// (beyond, it refuses). The device is back after the reset time, fixed if a reset fixes its
    /// fault; a reset that leaves it faulty has failed (devheal's agent reports it, and the
    /// engine asks for a reboot of the node).
    pub(crate) fn reset_device(&mut self, node: u32, device: u8) {
        let i = self.dev(node, device);
        if self.devices[i].resetting || self.reset_waiting.contains_key(&i) {
            return;
        }
        if self.mechanics.agent_resets {
            let day_ago = self.now - Duration::from_hours(24);
            let resets = self.agent_resets.entry(i).or_default();
            while resets.front().is_some_and(|&t| t <= day_ago) {
                resets.pop_front();
            }
            if resets.len() >= AGENT_RESETS_PER_DAY {
                self.counts.resets_refused += 1;
                return;
            }
        }
        self.reset_waiting.insert(i, self.now);
        self.reset_wait(node, device);
    }

    /// Whether a process holds the device: a gang member's pod on its node whose gang is not
    /// waiting for capacity, or a serving replica up or starting on it.
    fn device_held(&self, node: u32, device: u8) -> bool {
        let member = self.nodes[node as usize]
            .gang_member
            .is_some_and(|(g, _)| !matches!(self.gangs[g as usize].state, GangState::WaitingCapacity { .. }));
        let replica = self.devices[self.dev(node, device)].occupant.is_some_and(|(s, r)| {
            matches!(
                self.services[s as usize].replicas[r as usize].state,
                ReplicaState::Up | ReplicaState::Starting { .. }
            )
        });
        member || replica
    }

    /// A reset waiting for its device: start it if the device is idle, look again in 5 s, or
    /// refuse after 5 minutes of waiting.
    pub(super) fn reset_wait(&mut self, node: u32, device: u8) {
        let i = self.dev(node, device);
        let Some(&since) = self.reset_waiting.get(&i) else { return };
        if !self.device_held(node, device) {
            self.reset_waiting.remove(&i);
            self.start_reset(node, device);
        } else if self.now.since(since) >= RESET_BUSY_WAIT {
            self.reset_waiting.remove(&i);
            self.counts.resets_refused += 1;
        } else {
            self.queue.push(self.now + RESET_POLL, Event::DeviceResetWait { node, device });
        }
    }

    /// The reset itself, on an idle device.
    fn start_reset(&mut self, node: u32, device: u8) {
        let now = self.now;
        let i = self.dev(node, device);
        if self.mechanics.agent_resets {
            self.agent_resets.entry(i).or_default().push_back(now);
        }
        self.counts.repairs_reset += 1;
        self.devices[i].resetting = true;
        self.devices[i].reset_token += 1;
        let token = self.devices[i].reset_token;
        let at = now + secs(self.scenario.repair.reset_device_min * 60.0);
        self.queue.push(at, Event::DeviceResetDone { node, device, token });
    }

    /// Without DRA, a node with a quarantined device is tainted: no new pod lands on it.
    pub(crate) fn node_tainted(&self, node: u32) -> bool {
        (0..self.gpn as u8).any(|d| self.devices[self.dev(node, d)].quarantined.is_some())
    }

    /// Quarantine device `i` (the engine asked). Only the time it is healthy while quarantined
    /// is collateral.
    pub(crate) fn quarantine_device(&mut self, i: usize) {
        let dv = &mut self.devices[i];
        dv.quarantined = Some(self.now);
        if dv.fault.is_none() {
            dv.collateral_since = Some(self.now);
        }
    }

    pub(crate) fn release_device(&mut self, i: usize) {
        self.quarantine_collateral_close(i);
        self.devices[i].quarantined = None;
    }

    /// A repair fixed device `i`: from now on a quarantine of it holds out a healthy GPU.
    pub(super) fn device_fault_cleared(&mut self, i: usize) {
        let dv = &mut self.devices[i];
        dv.fault = None;
        dv.plugin_unhealthy = false;
        if dv.quarantined.is_some() && dv.collateral_since.is_none() {
            dv.collateral_since = Some(self.now);
        }
    }

    /// Count the healthy time of device `i`'s quarantine so far as collateral, and stop counting
    /// (the quarantine ends, or the device faults).
    pub(crate) fn quarantine_collateral_close(&mut self, i: usize) {
        if let Some(since) = self.devices[i].collateral_since.take() {
            self.fleet_lost.collateral_quarantine += hours(self.now.since(since).0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::ActiveFault;
    use super::*;
    use crate::scenario::Scenario;
    use crate::strategy::Command;
    use crate::strategy::job_failure_policy::JobFailurePolicy;
    use crate::trace::{FaultTarget, FaultTrace};
    use devheal_core::Time;

    pub(super) fn small() -> Scenario {
        Scenario::from_yaml(include_str!("../../tests/data/small-cluster.yaml"), "small-cluster.yaml")
            .expect("fixture parses")
    }

    /// A trace without faults, lemons or noise: only what a test does happens.
    fn quiet(scenario: &Scenario) -> FaultTrace {
        FaultTrace {
            events: Vec::new(),
            lemons: vec![false; scenario.total_nodes() as usize],
            noise: Default::default(),
            seed: 0,
        }
    }

    /// Collateral from a device quarantine counts only the hours the device was healthy: not
    /// while it was really broken, and from the moment a repair fixed it.
    #[test]
    pub(super) fn quarantine_collateral_counts_only_healthy_time() {
        let scenario = small();
        let trace = quiet(&scenario);
        let mut w = World::new(&scenario, JobFailurePolicy, &trace);
        let at = |h: i64| Time::ZERO + Duration::from_hours(h);
        let (broken, healthy, breaks_later) = (w.dev(2, 1), w.dev(3, 0), w.dev(4, 5));
        let fault = ActiveFault { class: 1, persistence: Persistence::UntilReset };
        w.devices[broken].fault = Some(fault);
        w.now = at(1);
        w.quarantine_device(broken);
        w.quarantine_device(healthy);
        w.quarantine_device(breaks_later);
        // 1 h → 3 h: the broken one is broken (no collateral); then a reset fixes it.
        w.now = at(3);
        w.device_fault_cleared(broken);
        // The third breaks at 4 h (the fault path closes its collateral) and stays broken.
        w.now = at(4);
        w.on_fault(
            1,
            FaultTarget::Device { node: 4, device: 5 },
            false,
            1,
            crate::noise::LineDelivery::default(),
        );
        assert!(w.devices[breaks_later].fault.is_some(), "class 1 (gpu_hbm) persists until a reset");
        w.now = at(6);
        w.release_device(broken); // healthy 3 h → 6 h: 3 GPU-h
        w.release_device(healthy); // healthy 1 h → 6 h: 5 GPU-h
        w.now = at(10);
        w.release_device(breaks_later); // healthy 1 h → 4 h: 3 GPU-h
        let got = w.fleet_lost.collateral_quarantine;
        assert!((got - 11.0).abs() < 1e-9, "collateral {got} GPU-h, expected 11");
    }

    /// Run the world's own events up to `until`.
    fn run_to(w: &mut World<'_, JobFailurePolicy>, until: Time) {
        while w.queue.peek_time().is_some_and(|t| t <= until) {
            let Some((at, ev)) = w.queue.pop() else { break };
            w.now = at;
            w.on_event(ev);
        }
        w.now = until;
    }

    /// The reset path: a reset waits while a process holds the device and starts once none
    /// does; one still held after the agent's 5-minute wait is refused; under devheal's agent
    /// a device gets at most 3 resets in 24 h, the fourth is refused and the next day's runs.
    #[test]
    fn a_reset_waits_for_an_idle_device_and_the_agent_resets_a_device_at_most_3_times_a_day() {
        let scenario = small();
        let trace = quiet(&scenario);
        let mut w = World::new(&scenario, JobFailurePolicy, &trace);
        let at = |s: i64| Time::ZERO + Duration::from_secs(s);
        // An inference node's device 0: the first embedder replica's (packed after the chat
        // replicas, which take whole nodes).
        let (node, device) = (0..scenario.total_nodes())
            .flat_map(|n| (0..8u8).map(move |d| (n, d)))
            .find(|&(n, d)| w.devices[w.dev(n, d)].occupant.is_some_and(|(s, _)| s == 1))
            .expect("an embedder replica");
        let i = w.dev(node, device);
        let (s, r) = w.devices[i].occupant.expect("occupied");
        w.now = at(100);
        w.reset_device(node, device);
        assert!(!w.devices[i].resetting && w.reset_waiting.contains_key(&i), "held: it waits");
        run_to(&mut w, at(160));
        assert!(!w.devices[i].resetting, "still held a minute later");
        // The device quarantined, the replica moves away: the next look finds it idle.
        w.quarantine_device(i);
        w.replica_reschedule(s, r);
        assert_ne!(w.devices[i].occupant, Some((s, r)));
        run_to(&mut w, at(170));
        assert!(w.devices[i].resetting, "idle: the reset runs");
        assert_eq!((w.counts.repairs_reset, w.counts.resets_refused), (1, 0));
        run_to(&mut w, at(3600));
        assert!(!w.devices[i].resetting, "done after the reset time");
        // A device held for the whole wait is refused.
        let j = (0..8u8)
            .map(|d| w.dev(node, d))
            .find(|&j| j != i && w.devices[j].occupant.is_some())
            .expect("another replica on the node");
        let held = (j - w.dev(node, 0)) as u8;
        w.reset_device(node, held);
        run_to(&mut w, at(3600 + 301));
        assert!(!w.devices[j].resetting && !w.reset_waiting.contains_key(&j));
        assert_eq!((w.counts.repairs_reset, w.counts.resets_refused), (1, 1));
        // devheal's agent: 3 resets of a device in 24 h, then refused until a day has passed.
        w.mechanics.agent_resets = true;
        for k in 0..4 {
            w.reset_device(node, device);
            run_to(&mut w, at(4000 + 600 * (k + 1)));
        }
        assert_eq!((w.counts.repairs_reset, w.counts.resets_refused), (4, 2), "the 4th is refused");
        run_to(&mut w, at(4000 + 600 + 86_400));
        w.reset_device(node, device);
        assert!(w.devices[i].resetting, "a day after the first of the three, it runs again");
    }

    /// Without DRA a quarantined GPU taints its node: a replica looking for a slot skips the
    /// node's free GPUs; with DRA only the quarantined GPU is kept from it.
    #[test]
    fn without_dra_a_quarantined_gpu_takes_its_node_out_of_scheduling() {
        for dra in [false, true] {
            let mut scenario = small();
            scenario.cluster.dra = dra;
            let trace = quiet(&scenario);
            let mut w = World::new(&scenario, JobFailurePolicy, &trace);
            // The first slot a one-GPU replica would get, and another GPU of that node.
            let (node, first) = w.find_replica_slot(1).expect("free capacity");
            let other = (0..8u8).find(|&d| d != first).expect("eight GPUs");
            w.apply(Command::QuarantineDevice { node, device: other });
            assert_eq!(w.counts.node_taints, u64::from(!dra));
            let slot = w.find_replica_slot(1);
            if dra {
                assert_eq!(slot, Some((node, first)), "only the quarantined GPU is kept off");
            } else {
                assert!(slot.is_none_or(|(n, _)| n != node), "the node is tainted: {slot:?}");
            }
        }
    }
}
