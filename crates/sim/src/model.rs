//! The modelled cluster and the event loop: nodes and devices, training gangs, inference
//! replicas, Kubernetes mechanics (node grace and toleration, eviction, pod start, Job/JobSet
//! restarts, in-place container restarts), repairs, people, and the per-strategy reactions.
//!
//! One `World` runs one strategy over one shared [`FaultTrace`]. Everything that varies between
//! strategies is in `match self.strategy` blocks here or in the devheal driver, which only feeds
//! the real engine and carries out what it returns.

use std::collections::{BTreeMap, BTreeSet};

use devheal_core::{Duration, Input, Time};

use crate::devheal_driver::Controller;
use crate::queue::EventQueue;
use crate::report::{
    Counts, InferenceReport, LostGpuHours, LostGpuHoursReport, StrategyReport, TrainingReport,
};
use crate::scenario::{FaultScope, Manifestation, NvmlSignal, Persistence, Scenario, secs};
use crate::strategy::Strategy;
use crate::trace::{FaultTarget, FaultTrace, TraceKind};

const NS_PER_HOUR: f64 = 3.6e12;

/// A repair, in increasing order of cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Repair {
    Reset,
    Reboot,
    Replace,
}

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

#[derive(Clone, Copy, Debug)]
pub(crate) struct ActiveFault {
    pub class: u16,
    pub persistence: Persistence,
}

#[derive(Clone, Debug)]
pub(crate) struct NodeState {
    /// The kubelet runs (false when the node died or is being repaired).
    pub up: bool,
    pub in_repair: Option<Repair>,
    pub repair_token: u32,
    pub cordoned: bool,
    pub lemon: bool,
    pub boot: u32,
    pub host_fault: Option<ActiveFault>,
    pub gang_member: Option<(u16, u32)>,
    /// Straggler slowdown while an episode lasts (1.0 when none).
    pub slowdown: f64,
    pub straggler_token: u32,
    /// devheal: the detector reported this node's member slow (its devices Degraded).
    pub straggler_reported: bool,
    /// When the node was taken out of service by a strategy's action, and how many of its
    /// devices were healthy then (for collateral accounting).
    pub held_out_since: Option<(Time, u32)>,
    /// A repair ticket is already open for the node.
    pub ticket_open: bool,
    /// The node-health-controller already has a poll scheduled for the node.
    pub nhc_pending: bool,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct DeviceState {
    pub fault: Option<ActiveFault>,
    pub plugin_unhealthy: bool,
    pub quarantined: Option<Time>,
    /// While quarantined and not faulty: since when (collateral is the healthy part only).
    pub collateral_since: Option<Time>,
    pub resetting: bool,
    pub reset_token: u32,
    pub occupant: Option<(u16, u32)>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum GangState {
    Computing,
    Checkpointing { started: Time },
    Hung { since: Time },
    Restarting { since: Time, planned: bool },
    WaitingCapacity { since: Time },
}

#[derive(Clone, Debug)]
pub(crate) struct Gang {
    pub name: String,
    pub namespace: String,
    pub gpus: f64,
    pub members: Vec<u32>,
    /// Pod generation of each member (its uid changes when the pod is recreated elsewhere).
    pub pod_generation: Vec<u32>,
    pub state: GangState,
    pub epoch: u32,
    pub run_token: u32,
    pub attempt: u64,
    /// Work (in failure-free seconds) since the last checkpoint, and when it was last settled.
    pub cycle_work: f64,
    pub last_settle: Time,
    pub committed_work: f64,
    pub interval: f64,
    pub blocking: Duration,
    pub restart_cost: Duration,
    pub watchdog: Duration,
    pub step_time_s: f64,
    /// Active slowdowns of member nodes, and the pace they set.
    pub slow: BTreeMap<u32, f64>,
    pub pace: f64,
    pub streak: u32,
    pub streak_active: bool,
    pub pending_moves: BTreeSet<u32>,
    /// devheal: members to move elsewhere at the next checkpoint (slow ones).
    pub replace_at_checkpoint: BTreeSet<u32>,
    pub interruptions: u64,
    pub restarts: u64,
    pub lost: LostGpuHours,
    pub ettr_by_day: Vec<f64>,
    pub waiting: bool,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum ReplicaState {
    Up,
    /// Not serving; `collateral` when the cause was an action on healthy hardware.
    Down {
        since: Time,
        collateral: bool,
    },
    Starting {
        since: Time,
    },
    Waiting {
        since: Time,
    },
}

#[derive(Clone, Debug)]
pub(crate) struct Replica {
    pub node: Option<u32>,
    pub first_device: u8,
    pub state: ReplicaState,
    pub epoch: u32,
    pub generation: u32,
}

#[derive(Clone, Debug)]
pub(crate) struct Service {
    pub name: String,
    pub namespace: String,
    pub gpus_per_replica: u32,
    pub needed: u32,
    pub start: Duration,
    pub replicas: Vec<Replica>,
    pub up: u32,
    pub last_change: Time,
    pub available_ns: i64,
    pub replica_down_ns: f64,
}

#[derive(Debug)]
pub(crate) enum Event {
    /// A gang restart is triggered (JobSet recreate, or in-place restart after the watchdog).
    GangRestartTrigger {
        gang: u16,
        epoch: u32,
    },
    /// A gang member's pod is gone (taint eviction, drain) and must be recreated elsewhere.
    MemberPodGone {
        gang: u16,
        member: u32,
        epoch: u32,
    },
    ComputeDone {
        gang: u16,
        token: u32,
    },
    CheckpointDone {
        gang: u16,
        token: u32,
    },
    RestartDone {
        gang: u16,
        epoch: u32,
    },
    GangOperator {
        gang: u16,
        streak: u32,
    },
    ReplicaRestartInPlace {
        service: u16,
        replica: u32,
        epoch: u32,
    },
    ReplicaReschedule {
        service: u16,
        replica: u32,
        epoch: u32,
    },
    ReplicaStarted {
        service: u16,
        replica: u32,
        epoch: u32,
    },
    ReplicaOperator {
        service: u16,
        replica: u32,
        epoch: u32,
    },
    NodeTicket {
        node: u32,
    },
    NhcPoll {
        node: u32,
    },
    RepairDone {
        node: u32,
        token: u32,
    },
    DeviceResetDone {
        node: u32,
        device: u8,
        token: u32,
    },
    StragglerEnd {
        node: u32,
        token: u32,
    },
    /// devheal's straggler detector finds the slow-down (or sees it end).
    StragglerFound {
        node: u32,
        token: u32,
    },
    StragglerGone {
        node: u32,
    },
    DaySample,
    Deliver(Box<Input>),
    EngineTick,
    Progress {
        gang: u16,
    },
}

/// One strategy's run over the shared trace.
pub struct World<'a> {
    pub(crate) scenario: &'a Scenario,
    pub(crate) strategy: Strategy,
    pub(crate) queue: EventQueue<Event>,
    pub(crate) now: Time,
    pub(crate) end: Time,
    pub(crate) gpn: u32,
    pub(crate) nodes: Vec<NodeState>,
    pub(crate) devices: Vec<DeviceState>,
    pub(crate) gangs: Vec<Gang>,
    pub(crate) services: Vec<Service>,
    pub(crate) counts: Counts,
    /// Lost GPU-hours not tied to one gang (inference, collateral).
    pub(crate) fleet_lost: LostGpuHours,
    pub(crate) spare_cursor: u32,
    pub(crate) controller: Option<Controller>,
    pub(crate) trace_events: u64,
    /// Nodes that are down, under repair, or carry an active fault: what a restart can trip on.
    pub(crate) broken: BTreeSet<u32>,
}

fn hours(ns: i64) -> f64 {
    ns as f64 / NS_PER_HOUR
}

impl<'a> World<'a> {
    pub fn new(scenario: &'a Scenario, strategy: Strategy, trace: &FaultTrace) -> World<'a> {
        let gpn = scenario.cluster.gpus_per_node;
        let training_nodes = scenario.training_nodes();
        let total = scenario.total_nodes();
        let nodes: Vec<NodeState> = (0..total)
            .map(|n| NodeState {
                up: true,
                in_repair: None,
                repair_token: 0,
                cordoned: false,
                lemon: trace.lemons.get(n as usize).copied().unwrap_or(false),
                boot: 0,
                host_fault: None,
                gang_member: None,
                slowdown: 1.0,
                straggler_token: 0,
                straggler_reported: false,
                held_out_since: None,
                ticket_open: false,
                nhc_pending: false,
            })
            .collect();
        let devices = vec![DeviceState::default(); (total * gpn) as usize];
        let mut world = World {
            scenario,
            strategy,
            queue: EventQueue::new(),
            now: Time::ZERO,
            end: Time::ZERO + scenario.duration(),
            gpn,
            nodes,
            devices,
            gangs: Vec::new(),
            services: Vec::new(),
            counts: Counts::default(),
            fleet_lost: LostGpuHours::default(),
            spare_cursor: 0,
            controller: None,
            trace_events: 0,
            broken: BTreeSet::new(),
        };
        let mut next_node = 0u32;
        for (gi, spec) in scenario.training.iter().enumerate() {
            let members: Vec<u32> = (next_node..next_node + spec.nodes).collect();
            for (m, &n) in members.iter().enumerate() {
                world.nodes[n as usize].gang_member = Some((gi as u16, m as u32));
            }
            next_node += spec.nodes;
            world.gangs.push(Gang {
                name: spec.name.clone(),
                namespace: spec.namespace.clone(),
                gpus: f64::from(spec.nodes) * f64::from(gpn),
                pod_generation: vec![0; members.len()],
                members,
                state: GangState::Computing,
                epoch: 0,
                run_token: 0,
                attempt: 0,
                cycle_work: 0.0,
                last_settle: Time::ZERO,
                committed_work: 0.0,
                interval: spec.checkpoint_interval_min * 60.0,
                blocking: secs(spec.checkpoint_blocking_s),
                restart_cost: spec.restart.total(),
                watchdog: secs(spec.nccl_watchdog_s),
                step_time_s: spec.step_time_s,
                slow: BTreeMap::new(),
                pace: 1.0,
                streak: 0,
                streak_active: false,
                pending_moves: BTreeSet::new(),
                replace_at_checkpoint: BTreeSet::new(),
                interruptions: 0,
                restarts: 0,
                lost: LostGpuHours::default(),
                ettr_by_day: Vec::new(),
                waiting: false,
            });
        }
        // Inference replicas packed onto the inference pool in order.
        let mut slot = u64::from(training_nodes) * u64::from(gpn);
        for spec in &scenario.inference {
            let mut replicas = Vec::new();
            for r in 0..spec.replicas {
                // Align each replica to a block of its size on one node.
                let g = u64::from(spec.gpus_per_replica);
                slot = slot.div_ceil(g) * g;
                let node = (slot / u64::from(gpn)) as u32;
                let first = (slot % u64::from(gpn)) as u8;
                for d in 0..spec.gpus_per_replica {
                    world.devices[(slot + u64::from(d)) as usize].occupant =
                        Some((world.services.len() as u16, r));
                }
                slot += g;
                replicas.push(Replica {
                    node: Some(node),
                    first_device: first,
                    state: ReplicaState::Up,
                    epoch: 0,
                    generation: 0,
                });
            }
            world.services.push(Service {
                name: spec.name.clone(),
                namespace: spec.namespace.clone(),
                gpus_per_replica: spec.gpus_per_replica,
                needed: spec.needed_replicas,
                start: secs(spec.start_s),
                up: spec.replicas,
                replicas,
                last_change: Time::ZERO,
                available_ns: 0,
                replica_down_ns: 0.0,
            });
        }
        for g in 0..world.gangs.len() {
            world.start_computing(g as u16);
        }
        world.queue.push(Time::ZERO + Duration::from_hours(24), Event::DaySample);
        if strategy == Strategy::Devheal {
            world.controller = Some(Controller::new(scenario));
            world.devheal_start();
        }
        world
    }

    pub(crate) fn dev(&self, node: u32, device: u8) -> usize {
        (node * self.gpn + u32::from(device)) as usize
    }

    /// Run to the end of the scenario, replaying `trace`.
    pub fn run(self, trace: &FaultTrace) -> StrategyReport {
        self.run_observed(trace, &mut |_| {})
    }

    /// [`World::run`], telling `on_day` how many whole simulated days are done (1, 2, … up to
    /// the scenario's length rounded up) each time that number grows.
    pub fn run_observed(mut self, trace: &FaultTrace, on_day: &mut dyn FnMut(u32)) -> StrategyReport {
        let mut next_trace = 0usize;
        let mut day = 0u32;
        loop {
            let trace_at = trace.events.get(next_trace).map(|e| e.at);
            let queue_at = self.queue.peek_time();
            let take_trace = match (trace_at, queue_at) {
                (Some(t), Some(q)) => t <= q,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            let at = if take_trace { trace_at } else { queue_at };
            let Some(at) = at else { break };
            if at >= self.end {
                break;
            }
            self.now = at;
            let today = (at.as_secs_f64() / 86_400.0) as u32;
            if today > day {
                day = today;
                on_day(day);
            }
            if take_trace {
                let ev = trace.events[next_trace];
                next_trace += 1;
                self.trace_events += 1;
                self.on_trace(ev.kind);
            } else if let Some((_, ev)) = self.queue.pop() {
                self.on_event(ev);
            }
        }
        let days = (self.end.as_secs_f64() / 86_400.0).ceil() as u32;
        if days > day {
            on_day(days);
        }
        self.now = self.end;
        self.finish()
    }

    // ---------------------------------------------------------------- trace

    fn on_trace(&mut self, kind: TraceKind) {
        match kind {
            TraceKind::Fault { class, target, lemon_excess, pid } => {
                self.on_fault(class, target, lemon_excess, pid);
            }
            TraceKind::Straggler { node, duration, slowdown } => {
                let n = &mut self.nodes[node as usize];
                if !n.up {
                    return;
                }
                n.straggler_token += 1;
                n.slowdown = slowdown;
                let token = n.straggler_token;
                self.queue.push(self.now + duration, Event::StragglerEnd { node, token });
                let d = &self.scenario.strategies.devheal;
                if self.strategy == Strategy::Devheal
                    && d.detect_stragglers
                    && slowdown >= d.straggler_min_slowdown
                {
                    let at = self.now + secs(d.straggler_detect_s);
                    self.queue.push(at, Event::StragglerFound { node, token });
                }
                if let Some((g, _)) = n.gang_member {
                    self.gang_slow(g, node, Some(slowdown));
                }
            }
            TraceKind::PlannedMaintenance { gang } => self.planned_maintenance(gang),
        }
    }

    fn on_fault(&mut self, class_idx: u16, target: FaultTarget, lemon_excess: bool, pid: u32) {
        let class = &self.scenario.faults[class_idx as usize];
        let (node, device) = match target {
            FaultTarget::Device { node, device } => (node, Some(device)),
            FaultTarget::Node { node } => (node, None),
            FaultTarget::GangMember { gang, member } => {
                let node = self.gangs[gang as usize].members[member as usize];
                (node, Some((pid % self.gpn) as u8))
            }
            FaultTarget::Replica { service, replica } => {
                let r = &self.services[service as usize].replicas[replica as usize];
                match (r.node, r.state) {
                    (Some(node), ReplicaState::Up | ReplicaState::Starting { .. }) => {
                        (node, Some(r.first_device))
                    }
                    _ => return, // a replica that is not running has no software to fail
                }
            }
        };
        let n = &self.nodes[node as usize];
        // Hardware under repair or already dead absorbs the fault; a cured lemon no longer
        // produces its excess faults.
        if n.in_repair.is_some() || !n.up || (lemon_excess && !n.lemon) {
            return;
        }
        if class.scope == FaultScope::Workload {
            let busy = match target {
                FaultTarget::GangMember { gang, .. } => self.gang_is_active(gang),
                _ => true,
            };
            if !busy {
                return;
            }
        }
        let persistence = class.persistence;
        let manifestation = class.manifestation;
        let active = ActiveFault { class: class_idx, persistence };
        // Record persistent damage.
        if persistence != Persistence::Transient {
            match device {
                Some(d) if class.scope == FaultScope::Device => {
                    let i = self.dev(node, d);
                    // A quarantined device that breaks stops counting as collateral.
                    if let Some(since) = self.devices[i].collateral_since.take() {
                        self.fleet_lost.collateral_quarantine += hours(self.now.since(since).0);
                    }
                    self.devices[i].fault = Some(active);
                    if class.device_plugin_detects {
                        self.devices[i].plugin_unhealthy = true;
                    }
                }
                _ => self.nodes[node as usize].host_fault = Some(active),
            }
        }
        if manifestation == Manifestation::NodeDown {
            self.nodes[node as usize].up = false;
        }
        self.refresh_broken(node);
        // Signals the strategies can see.
        if self.strategy == Strategy::Devheal {
            self.devheal_fault_signals(class_idx, node, device, pid);
        }
        let nhc_visible = !class.kernel_lines.is_empty() || class.nvml != NvmlSignal::None;
        if self.strategy == Strategy::NodeHealthController && nhc_visible {
            self.nhc_schedule(node);
        }
        // A person opens a repair ticket for hardware that Kubernetes shows as broken.
        let visible_to_people = class.device_plugin_detects || manifestation == Manifestation::NodeDown;
        if visible_to_people && persistence != Persistence::Transient {
            self.open_ticket(node, self.operator_delay());
        }
        if manifestation == Manifestation::Evicted {
            // The provider drains the node and takes it for maintenance.
            self.drain_node(node, false);
            let kind = Repair::needed_for(persistence).unwrap_or(Repair::Reboot);
            self.start_repair(node, kind, false);
            return;
        }
        // Who is hit.
        let fabric_only = class.scope == FaultScope::Node && manifestation == Manifestation::Hang;
        if let Some((g, member)) = self.nodes[node as usize].gang_member {
            self.gang_fault(g, member, manifestation, class_idx);
        }
        if fabric_only {
            return;
        }
        match (class.scope, device) {
            (FaultScope::Device | FaultScope::Workload, Some(d)) => {
                let i = self.dev(node, d);
                if let Some((s, r)) = self.devices[i].occupant {
                    self.replica_fault(s, r, manifestation, persistence);
                }
            }
            _ => {
                for d in 0..self.gpn as u8 {
                    let i = self.dev(node, d);
                    if let Some((s, r)) = self.devices[i].occupant
                        && d == self.services[s as usize].replicas[r as usize].first_device
                    {
                        self.replica_fault(s, r, manifestation, persistence);
                    }
                }
            }
        }
    }

    pub(crate) fn operator_delay(&self) -> Duration {
        secs(self.scenario.operator.response_min * 60.0)
    }

    fn k8s_pod_eviction_delay(&self) -> Duration {
        let k = &self.scenario.kubernetes;
        secs(k.node_monitor_grace_s + k.not_ready_toleration_s)
    }

    // ---------------------------------------------------------------- events

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::GangRestartTrigger { gang, epoch } => {
                if self.gangs[gang as usize].epoch == epoch {
                    self.begin_restart(gang, false);
                }
            }
            Event::MemberPodGone { gang, member, epoch } => {
                if self.gangs[gang as usize].epoch == epoch {
                    self.gangs[gang as usize].pending_moves.insert(member);
                }
            }
            Event::ComputeDone { gang, token } => {
                let g = &mut self.gangs[gang as usize];
                if g.run_token == token && g.state == GangState::Computing {
                    Self::settle(g, self.now);
                    g.state = GangState::Checkpointing { started: self.now };
                    g.run_token += 1;
                    let token = g.run_token;
                    let at = self.now + g.blocking;
                    self.queue.push(at, Event::CheckpointDone { gang, token });
                }
            }
            Event::CheckpointDone { gang, token } => {
                let g = &mut self.gangs[gang as usize];
                if g.run_token == token
                    && let GangState::Checkpointing { started } = g.state
                {
                    g.lost.checkpoint_overhead += hours(self.now.since(started).0) * g.gpus;
                    g.committed_work += g.cycle_work;
                    g.cycle_work = 0.0;
                    g.streak_active = false;
                    self.start_computing(gang);
                    if !self.gangs[gang as usize].replace_at_checkpoint.is_empty() {
                        self.devheal_replace_at_checkpoint(gang);
                    }
                }
            }
            Event::RestartDone { gang, epoch } => {
                if self.gangs[gang as usize].epoch == epoch {
                    self.restart_done(gang);
                }
            }
            Event::GangOperator { gang, streak } => {
                let g = &mut self.gangs[gang as usize];
                if g.streak == streak && g.streak_active {
                    if matches!(g.state, GangState::Computing | GangState::Checkpointing { .. }) {
                        // It recovered on its own before anyone looked.
                        g.streak_active = false;
                    } else {
                        self.gang_operator(gang);
                    }
                }
            }
            Event::ReplicaRestartInPlace { service, replica, epoch } => {
                if self.services[service as usize].replicas[replica as usize].epoch == epoch {
                    self.replica_start(service, replica, false);
                }
            }
            Event::ReplicaReschedule { service, replica, epoch } => {
                if self.services[service as usize].replicas[replica as usize].epoch == epoch {
                    self.replica_reschedule(service, replica);
                }
            }
            Event::ReplicaStarted { service, replica, epoch } => {
                if self.services[service as usize].replicas[replica as usize].epoch == epoch {
                    self.replica_started(service, replica);
                }
            }
            Event::ReplicaOperator { service, replica, epoch } => {
                let r = &self.services[service as usize].replicas[replica as usize];
                if r.epoch == epoch && matches!(r.state, ReplicaState::Down { .. }) {
                    self.counts.operator_interventions += 1;
                    if let Some(node) = r.node
                        && self.node_problem(node, Some((service, replica))).is_some()
                    {
                        self.ticket_now(node);
                    }
                    let r = &self.services[service as usize].replicas[replica as usize];
                    if matches!(r.state, ReplicaState::Down { .. }) {
                        self.replica_reschedule(service, replica);
                    }
                }
            }
            Event::NodeTicket { node } => {
                self.nodes[node as usize].ticket_open = false;
                self.ticket_now(node);
            }
            Event::NhcPoll { node } => self.nhc_poll(node),
            Event::RepairDone { node, token } => {
                if self.nodes[node as usize].repair_token == token {
                    self.repair_done(node);
                }
            }
            Event::DeviceResetDone { node, device, token } => {
                let i = self.dev(node, device);
                if self.devices[i].reset_token == token && self.devices[i].resetting {
                    self.devices[i].resetting = false;
                    if self.devices[i].fault.is_some_and(|f| Repair::Reset.fixes(f.persistence)) {
                        self.device_fault_cleared(i);
                    }
                    self.refresh_broken(node);
                    if self.strategy == Strategy::Devheal {
                        self.devheal_device_repaired(node, device);
                    }
                    self.retry_waiting();
                }
            }
            Event::StragglerEnd { node, token } => {
                let n = &mut self.nodes[node as usize];
                if n.straggler_token == token {
                    n.slowdown = 1.0;
                    let reported = n.straggler_reported;
                    if let Some((g, _)) = n.gang_member {
                        self.gang_slow(g, node, None);
                    }
                    if reported {
                        let at = self.now + secs(self.scenario.strategies.devheal.straggler_detect_s);
                        self.queue.push(at, Event::StragglerGone { node });
                    }
                }
            }
            Event::StragglerFound { node, token } => {
                let n = &self.nodes[node as usize];
                if n.straggler_token == token && n.slowdown > 1.0 && n.gang_member.is_some() {
                    self.devheal_straggler_found(node);
                }
            }
            Event::StragglerGone { node } => {
                if self.nodes[node as usize].slowdown <= 1.0 {
                    self.devheal_straggler_gone(node);
                }
            }
            Event::DaySample => {
                for g in &mut self.gangs {
                    let elapsed = self.now.as_secs_f64();
                    g.ettr_by_day.push(if elapsed > 0.0 { g.committed_work / elapsed } else { 0.0 });
                }
                self.queue.push(self.now + Duration::from_hours(24), Event::DaySample);
            }
            Event::Deliver(input) => self.devheal_deliver(*input),
            Event::EngineTick => self.devheal_tick(),
            Event::Progress { gang } => self.devheal_progress(gang),
        }
    }

    // ---------------------------------------------------------------- training gangs

    pub(crate) fn gang_is_active(&self, gang: u16) -> bool {
        matches!(
            self.gangs[gang as usize].state,
            GangState::Computing | GangState::Checkpointing { .. } | GangState::Restarting { .. }
        )
    }

    fn start_computing(&mut self, gang: u16) {
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
    fn settle(g: &mut Gang, now: Time) {
        if g.state == GangState::Computing {
            let dt = now.since(g.last_settle).as_secs_f64();
            let work = dt / g.pace;
            g.cycle_work += work;
            g.lost.straggler_slowdown += (dt - work) / 3600.0 * g.gpus;
        }
        g.last_settle = now;
    }

    fn gang_slow(&mut self, gang: u16, node: u32, slowdown: Option<f64>) {
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
    fn close_state(g: &mut Gang, now: Time) {
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
    fn gang_fault(&mut self, gang: u16, member: u32, manifestation: Manifestation, class: u16) {
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
    fn schedule_gang_notices(&mut self, gang: u16, member: u32, manifestation: Manifestation, class: u16) {
        let now = self.now;
        let k = &self.scenario.kubernetes;
        let g = &self.gangs[gang as usize];
        let epoch = g.epoch;
        let watchdog = now + g.watchdog;
        let recreate = self.strategy.recreates_pods();
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
        if self.strategy == Strategy::Devheal {
            self.devheal_gang_failure(gang, member, manifestation, class);
        }
    }

    /// Whether a node can take a (new) training pod under this strategy's view.
    fn schedulable_for_training(&self, node: u32) -> bool {
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
    fn member_stays(&self, node: u32) -> bool {
        let n = &self.nodes[node as usize];
        if !n.up || n.in_repair.is_some() {
            return false;
        }
        if self.strategy.recreates_pods() { self.schedulable_for_training(node) } else { true }
    }

    fn find_spare(&mut self) -> Option<u32> {
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
        let mut moves: Vec<u32> = Vec::new();
        for (m, &node) in members.iter().enumerate() {
            if self.gangs[gang as usize].pending_moves.contains(&(m as u32)) || !self.member_stays(node) {
                moves.push(m as u32);
            }
        }
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
        let at = now + g.restart_cost;
        self.queue.push(at, Event::RestartDone { gang, epoch });
    }

    fn move_member(&mut self, gang: u16, member: u32, to: u32) {
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
        if self.strategy == Strategy::Devheal {
            self.devheal_member_moved(gang, member, from);
        }
    }

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

    fn restart_done(&mut self, gang: u16) {
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
                if self.strategy == Strategy::Devheal {
                    self.devheal_gang_running(gang);
                }
            }
        }
    }

    fn gang_operator(&mut self, gang: u16) {
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

    fn planned_maintenance(&mut self, gang: u16) {
        let g = &self.gangs[gang as usize];
        if matches!(g.state, GangState::Computing | GangState::Checkpointing { .. }) {
            self.begin_restart(gang, true);
        }
    }

    // ---------------------------------------------------------------- inference replicas

    fn service_change(&mut self, service: u16, delta: i32) {
        let now = self.now;
        let s = &mut self.services[service as usize];
        let dt = now.since(s.last_change).0;
        if s.up >= s.needed {
            s.available_ns += dt;
        }
        s.replica_down_ns += (s.replicas.len() as u32 - s.up) as f64 * dt as f64;
        s.last_change = now;
        s.up = (s.up as i32 + delta).max(0) as u32;
    }

    /// Close a replica's current down state into the lost-hours buckets.
    fn replica_close(&mut self, service: u16, replica: u32) {
        let now = self.now;
        let gpus = f64::from(self.services[service as usize].gpus_per_replica);
        let state = self.services[service as usize].replicas[replica as usize].state;
        match state {
            ReplicaState::Up => {}
            ReplicaState::Down { since, collateral } => {
                let h = hours(now.since(since).0) * gpus;
                if collateral {
                    self.fleet_lost.collateral_quarantine += h;
                } else {
                    self.fleet_lost.hang_before_detection += h;
                }
            }
            ReplicaState::Starting { since } => self.fleet_lost.restart += hours(now.since(since).0) * gpus,
            ReplicaState::Waiting { since } => {
                self.fleet_lost.capacity_held_out += hours(now.since(since).0) * gpus
            }
        }
    }

    fn replica_set_state(&mut self, service: u16, replica: u32, state: ReplicaState) {
        self.replica_close(service, replica);
        let was_up = self.services[service as usize].replicas[replica as usize].state == ReplicaState::Up;
        let is_up = state == ReplicaState::Up;
        if was_up != is_up {
            self.service_change(service, if is_up { 1 } else { -1 });
        }
        let r = &mut self.services[service as usize].replicas[replica as usize];
        r.state = state;
        r.epoch += 1;
    }

    fn replica_fault(
        &mut self,
        service: u16,
        replica: u32,
        manifestation: Manifestation,
        persistence: Persistence,
    ) {
        let now = self.now;
        let state = self.services[service as usize].replicas[replica as usize].state;
        if !matches!(state, ReplicaState::Up | ReplicaState::Starting { .. }) {
            return;
        }
        self.counts.replica_failures += 1;
        self.replica_set_state(service, replica, ReplicaState::Down { since: now, collateral: false });
        let epoch = self.services[service as usize].replicas[replica as usize].epoch;
        let k = &self.scenario.kubernetes;
        match manifestation {
            Manifestation::Crash | Manifestation::Hang => {
                // The container restarts in place (crash: at once; hang: once liveness fails).
                let delay = if manifestation == Manifestation::Crash {
                    k.pod_failure_report_s
                } else {
                    k.liveness_detect_s
                };
                let _ = persistence;
                self.queue.push(now + secs(delay), Event::ReplicaRestartInPlace { service, replica, epoch });
            }
            Manifestation::NodeDown => {
                let at = now + self.k8s_pod_eviction_delay();
                self.queue.push(at, Event::ReplicaReschedule { service, replica, epoch });
            }
            Manifestation::Evicted => {
                self.queue.push(
                    now + secs(k.termination_grace_s),
                    Event::ReplicaReschedule { service, replica, epoch },
                );
            }
        }
        self.queue.push(now + self.operator_delay(), Event::ReplicaOperator { service, replica, epoch });
        if self.strategy == Strategy::Devheal {
            self.devheal_replica_failure(service, replica, manifestation);
        }
    }

    /// Start (or restart) the replica where it is.
    fn replica_start(&mut self, service: u16, replica: u32, fresh: bool) {
        let now = self.now;
        let start = self.services[service as usize].start;
        let collateral = matches!(
            self.services[service as usize].replicas[replica as usize].state,
            ReplicaState::Down { collateral: true, .. }
        );
        let _ = (fresh, collateral);
        self.replica_set_state(service, replica, ReplicaState::Starting { since: now });
        let epoch = self.services[service as usize].replicas[replica as usize].epoch;
        self.queue.push(now + start, Event::ReplicaStarted { service, replica, epoch });
    }

    fn replica_started(&mut self, service: u16, replica: u32) {
        let node = self.services[service as usize].replicas[replica as usize].node;
        let Some(node) = node else { return };
        let n = &self.nodes[node as usize];
        if !n.up || n.in_repair.is_some() {
            self.replica_reschedule(service, replica);
            return;
        }
        if let Some((_, manifestation)) = self.node_problem(node, Some((service, replica))) {
            // Still on broken hardware: it fails again (and stays down until someone moves it).
            let now = self.now;
            self.replica_set_state(service, replica, ReplicaState::Down { since: now, collateral: false });
            let epoch = self.services[service as usize].replicas[replica as usize].epoch;
            if manifestation == Manifestation::NodeDown {
                self.queue.push(
                    now + self.k8s_pod_eviction_delay(),
                    Event::ReplicaReschedule { service, replica, epoch },
                );
            }
            self.queue.push(now + self.operator_delay(), Event::ReplicaOperator { service, replica, epoch });
            if self.strategy == Strategy::Devheal {
                self.devheal_replica_failure(service, replica, manifestation);
            }
            return;
        }
        self.replica_set_state(service, replica, ReplicaState::Up);
    }

    fn free_replica_devices(&mut self, service: u16, replica: u32) {
        let (node, first) = {
            let r = &self.services[service as usize].replicas[replica as usize];
            (r.node, r.first_device)
        };
        if let Some(node) = node {
            for d in first..first + self.services[service as usize].gpus_per_replica as u8 {
                let i = self.dev(node, d);
                if self.devices[i].occupant == Some((service, replica)) {
                    self.devices[i].occupant = None;
                }
            }
        }
        self.services[service as usize].replicas[replica as usize].node = None;
    }

    fn find_replica_slot(&self, gpus: u32) -> Option<(u32, u8)> {
        let start = self.scenario.training_nodes();
        let end = self.scenario.total_nodes();
        for node in start..end {
            let n = &self.nodes[node as usize];
            if !n.up || n.in_repair.is_some() || n.cordoned {
                continue;
            }
            let mut first = 0u32;
            while first + gpus <= self.gpn {
                let ok = (first..first + gpus).all(|d| {
                    let dv = &self.devices[self.dev(node, d as u8)];
                    dv.occupant.is_none() && !dv.plugin_unhealthy && dv.quarantined.is_none() && !dv.resetting
                });
                if ok {
                    return Some((node, first as u8));
                }
                first += gpus;
            }
        }
        None
    }

    /// Delete the replica's pod and let its ReplicaSet create one on a free, schedulable slot.
    pub(crate) fn replica_reschedule(&mut self, service: u16, replica: u32) {
        let now = self.now;
        self.free_replica_devices(service, replica);
        let gpus = self.services[service as usize].gpus_per_replica;
        let old_gen = self.services[service as usize].replicas[replica as usize].generation;
        match self.find_replica_slot(gpus) {
            Some((node, first)) => {
                for d in first..first + gpus as u8 {
                    let i = self.dev(node, d);
                    self.devices[i].occupant = Some((service, replica));
                }
                let r = &mut self.services[service as usize].replicas[replica as usize];
                r.node = Some(node);
                r.first_device = first;
                r.generation += 1;
                self.replica_start(service, replica, true);
            }
            None => {
                self.services[service as usize].replicas[replica as usize].generation += 1;
                self.replica_set_state(service, replica, ReplicaState::Waiting { since: now });
            }
        }
        if self.strategy == Strategy::Devheal {
            self.devheal_replica_moved(service, replica, old_gen);
        }
    }

    /// Give waiting workloads a chance at capacity that just came back.
    fn retry_waiting(&mut self) {
        for g in 0..self.gangs.len() {
            if self.gangs[g].waiting {
                self.begin_restart(g as u16, false);
            }
        }
        for s in 0..self.services.len() {
            for r in 0..self.services[s].replicas.len() {
                if matches!(self.services[s].replicas[r].state, ReplicaState::Waiting { .. }) {
                    self.replica_reschedule(s as u16, r as u32);
                    if matches!(self.services[s].replicas[r].state, ReplicaState::Waiting { .. }) {
                        return;
                    }
                }
            }
        }
    }

    /// Mark a replica down because its pod is being deleted by an action.
    pub(crate) fn replica_set_state_pub(&mut self, service: u16, replica: u32, collateral: bool) {
        let now = self.now;
        self.replica_set_state(service, replica, ReplicaState::Down { since: now, collateral });
    }

    // ---------------------------------------------------------------- nodes, repairs, people

    fn healthy_devices(&self, node: u32) -> u32 {
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
                if self.strategy.recreates_pods() {
                    let epoch = self.gangs[gang as usize].epoch;
                    let at = now + secs(self.scenario.kubernetes.termination_grace_s);
                    self.queue.push(at, Event::GangRestartTrigger { gang, epoch });
                }
            }
            GangState::WaitingCapacity { .. } => {}
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

    fn repair_done(&mut self, node: u32) {
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
        // A node-health-controller latches its condition while the fault persists; a person's
        // cordon is lifted once the hardware is fixed.
        if !still_broken || self.strategy != Strategy::NodeHealthController {
            n.cordoned = still_broken && n.cordoned;
        }
        if !still_broken && let Some((since, healthy)) = n.held_out_since.take() {
            self.fleet_lost.collateral_quarantine += hours(now.since(since).0) * f64::from(healthy);
        }
        if still_broken {
            self.open_ticket(node, self.operator_delay());
        }
        if self.strategy == Strategy::Devheal {
            self.devheal_node_repaired(node);
        }
        self.retry_waiting();
    }

    fn open_ticket(&mut self, node: u32, delay: Duration) {
        let n = &mut self.nodes[node as usize];
        if n.ticket_open {
            return;
        }
        n.ticket_open = true;
        self.queue.push(self.now + delay, Event::NodeTicket { node });
    }

    /// A person handles a node: cordon it and send it for the repair its fault needs.
    fn ticket_now(&mut self, node: u32) {
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

    /// Reset one device (the engine asked): whatever runs on it dies; the device is back after
    /// the reset time, fixed if a reset fixes its fault.
    pub(crate) fn reset_device(&mut self, node: u32, device: u8) {
        let now = self.now;
        let i = self.dev(node, device);
        if self.devices[i].resetting {
            return;
        }
        self.counts.repairs_reset += 1;
        self.devices[i].resetting = true;
        self.devices[i].reset_token += 1;
        let token = self.devices[i].reset_token;
        if let Some((g, m)) = self.nodes[node as usize].gang_member
            && self.gang_is_active(g)
        {
            self.gang_fault(g, m, Manifestation::Crash, 0);
        }
        if let Some((s, r)) = self.devices[i].occupant {
            let state = self.services[s as usize].replicas[r as usize].state;
            if matches!(state, ReplicaState::Up | ReplicaState::Starting { .. }) {
                self.replica_set_state(s, r, ReplicaState::Down { since: now, collateral: false });
                let epoch = self.services[s as usize].replicas[r as usize].epoch;
                self.queue.push(now, Event::ReplicaReschedule { service: s, replica: r, epoch });
            }
        }
        let at = now + secs(self.scenario.repair.reset_device_min * 60.0);
        self.queue.push(at, Event::DeviceResetDone { node, device, token });
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

    fn nhc_schedule(&mut self, node: u32) {
        if self.nodes[node as usize].nhc_pending {
            return;
        }
        self.nodes[node as usize].nhc_pending = true;
        let poll = secs(self.scenario.strategies.node_health_controller.poll_interval_s).0.max(1);
        // Each node's checks run on their own phase within the period.
        let phase = (i64::from(node) * 7_919_000_000) % poll;
        let now = self.now.0;
        let next = ((now - phase).div_euclid(poll) + 1) * poll + phase;
        self.queue.push(Time(next), Event::NhcPoll { node });
    }

    /// The node-health-controller's check finds the signal: cordon, drain, reboot.
    fn nhc_poll(&mut self, node: u32) {
        self.nodes[node as usize].nhc_pending = false;
        if self.nodes[node as usize].in_repair.is_some() {
            return;
        }
        if self.node_problem(node, None).is_none() {
            self.counts.false_quarantines += 1;
        }
        self.nodes[node as usize].cordoned = true;
        self.drain_node(node, true);
        self.start_repair(node, Repair::Reboot, true);
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
    fn device_fault_cleared(&mut self, i: usize) {
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

    // ---------------------------------------------------------------- results

    fn finish(mut self) -> StrategyReport {
        let now = self.now;
        for gi in 0..self.gangs.len() {
            let g = &mut self.gangs[gi];
            Self::settle(g, now);
            match g.state {
                GangState::Computing => g.committed_work += g.cycle_work,
                GangState::Checkpointing { .. } => g.committed_work += g.cycle_work,
                _ => g.lost.rework_since_checkpoint += g.cycle_work / 3600.0 * g.gpus,
            }
            g.cycle_work = 0.0;
            Self::close_state(g, now);
        }
        for s in 0..self.services.len() {
            self.service_change(s as u16, 0);
            for r in 0..self.services[s].replicas.len() {
                self.replica_close(s as u16, r as u32);
            }
        }
        for node in 0..self.nodes.len() {
            if let Some((since, healthy)) = self.nodes[node].held_out_since.take() {
                self.fleet_lost.collateral_quarantine += hours(now.since(since).0) * f64::from(healthy);
            }
        }
        for i in 0..self.devices.len() {
            self.quarantine_collateral_close(i);
        }
        let wall_s = self.end.as_secs_f64();
        let mut lost = self.fleet_lost.clone();
        let mut training = Vec::new();
        let (mut weighted, mut gpus_total) = (0.0, 0.0);
        for g in &self.gangs {
            add_lost(&mut lost, &g.lost);
            let ettr = if wall_s > 0.0 { g.committed_work / wall_s } else { 0.0 };
            weighted += ettr * g.gpus;
            gpus_total += g.gpus;
            let down_gpu_hours = g.lost.hang_before_detection
                + g.lost.restart
                + g.lost.capacity_held_out
                + g.lost.planned_maintenance;
            training.push(TrainingReport {
                name: g.name.clone(),
                gpus: g.gpus as u64,
                ettr,
                ettr_by_day: g.ettr_by_day.clone(),
                interruptions: g.interruptions,
                restarts: g.restarts,
                running_hours: wall_s / 3600.0 - down_gpu_hours / g.gpus,
                gpu_hours_lost: g.lost.clone(),
                productive_gpu_hours: g.committed_work / 3600.0 * g.gpus,
            });
        }
        let mut inference = Vec::new();
        let (mut avail_sum, mut down_sum) = (0.0, 0.0);
        let end_ns = self.end.0.max(1) as f64;
        for s in &self.services {
            let availability = s.available_ns as f64 / end_ns;
            let down_h = s.replica_down_ns / NS_PER_HOUR;
            avail_sum += availability;
            down_sum += down_h;
            inference.push(InferenceReport {
                name: s.name.clone(),
                replicas: s.replicas.len() as u32,
                needed_replicas: s.needed,
                availability,
                replica_hours_unavailable: down_h,
            });
        }
        let inference_availability =
            if self.services.is_empty() { 1.0 } else { avail_sum / self.services.len() as f64 };
        let mut counts = self.counts.clone();
        if let Some(c) = &self.controller {
            counts.engine_actions = c.actions;
            counts.engine_actions_unmapped = c.unmapped;
            counts.engine_inputs = c.inputs;
            counts.engine_ticks = c.ticks;
        }
        StrategyReport {
            name: self.strategy.name().to_string(),
            description: self.strategy.description().to_string(),
            ettr: if gpus_total > 0.0 { weighted / gpus_total } else { 1.0 },
            gpu_hours_lost: LostGpuHoursReport { total: lost.total(), by_cause: lost },
            inference_availability,
            replica_hours_unavailable: down_sum,
            training,
            inference,
            counts,
            events: self.queue.popped() + self.trace_events,
        }
    }
}

fn add_lost(into: &mut LostGpuHours, from: &LostGpuHours) {
    into.hang_before_detection += from.hang_before_detection;
    into.rework_since_checkpoint += from.rework_since_checkpoint;
    into.restart += from.restart;
    into.capacity_held_out += from.capacity_held_out;
    into.collateral_quarantine += from.collateral_quarantine;
    into.checkpoint_overhead += from.checkpoint_overhead;
    into.straggler_slowdown += from.straggler_slowdown;
    into.planned_maintenance += from.planned_maintenance;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Scenario {
        Scenario::from_yaml(include_str!("../tests/data/small-cluster.yaml"), "small-cluster.yaml")
            .expect("fixture parses")
    }

    /// Collateral from a device quarantine counts only the hours the device was healthy: not
    /// while it was really broken, and from the moment a repair fixed it.
    #[test]
    fn quarantine_collateral_counts_only_healthy_time() {
        let scenario = small();
        let trace = FaultTrace { events: Vec::new(), lemons: vec![false; scenario.total_nodes() as usize] };
        let mut w = World::new(&scenario, Strategy::JobFailurePolicy, &trace);
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
        w.on_fault(1, FaultTarget::Device { node: 4, device: 5 }, false, 1);
        assert!(w.devices[breaks_later].fault.is_some(), "class 1 (gpu_hbm) persists until a reset");
        w.now = at(6);
        w.release_device(broken); // healthy 3 h → 6 h: 3 GPU-h
        w.release_device(healthy); // healthy 1 h → 6 h: 5 GPU-h
        w.now = at(10);
        w.release_device(breaks_later); // healthy 1 h → 4 h: 3 GPU-h
        let got = w.fleet_lost.collateral_quarantine;
        assert!((got - 11.0).abs() < 1e-9, "collateral {got} GPU-h, expected 11");
    }
}
