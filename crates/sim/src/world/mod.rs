//! The modelled cluster and the event loop: nodes and devices, training gangs, inference
//! replicas, Kubernetes mechanics (node grace and toleration, eviction, pod start, Job/JobSet
//! restarts, in-place container restarts), repairs and people.
//!
//! One `World` runs one strategy over one shared [`FaultTrace`]. The world knows the strategy
//! only through [`Policy`]: it hands it [`Signal`]s and a read-only [`View`], and applies the
//! [`Command`]s it returns (`commands.rs`). Nothing here branches on which strategy runs.
//!
//! - `mod.rs`: the state, the event loop and the strategy plumbing;
//! - `trace.rs`: faults and straggler episodes from the trace landing on the cluster;
//! - `gang.rs`: training gangs (compute, checkpoint, fail, restart, people stepping in);
//! - `replica.rs`: inference replicas;
//! - `node.rs`: nodes and devices, drains, repairs, tickets, quarantines;
//! - `commands.rs`: the strategy's commands carried out;
//! - `finish.rs`: the report.

use std::collections::{BTreeMap, BTreeSet};

use devheal_core::{Duration, Time};

use crate::queue::EventQueue;
use crate::report::{Counts, LostGpuHours, StrategyReport};
use crate::scenario::{Persistence, Scenario, secs};
use crate::strategy::{Commands, Mechanics, Policy, Repair, Signal, Strategy, View};
use crate::trace::FaultTrace;

mod commands;
mod detectors;
mod finish;
mod gang;
mod node;
mod replica;
mod trace;
mod view;

const NS_PER_HOUR: f64 = 3.6e12;

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
    /// When the node was taken out of service by a strategy's action, and how many of its
    /// devices were healthy then (for collateral accounting).
    pub held_out_since: Option<(Time, u32)>,
    /// A repair ticket is already open for the node.
    pub ticket_open: bool,
    /// The node's latest straggler episode while it ran a gang member, as the detectors are
    /// scored on it.
    pub episode: Option<detectors::EpisodeMark>,
    /// How many of its devices an inference replica occupies (kept by `set_occupant`), so a
    /// search for a free slot skips full nodes without looking at their devices.
    pub occupied: u8,
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
    /// The cost of a restart in which every member restarts in place (its pods' container
    /// restart rules): `restart_cost` without scheduling and pod start.
    pub in_place_cost: Duration,
    /// The restart about to begin was asked for in place (`Command::RestartGang`).
    pub next_restart_in_place: bool,
    pub watchdog: Duration,
    /// Active slowdowns of member nodes, and the pace they set.
    pub slow: BTreeMap<u32, f64>,
    pub pace: f64,
    pub streak: u32,
    pub streak_active: bool,
    pub pending_moves: BTreeSet<u32>,
    pub interruptions: u64,
    pub restarts: u64,
    pub lost: LostGpuHours,
    pub ettr_by_day: Vec<f64>,
    pub waiting: bool,
    /// The gang's current silent hang (since, found by the hang detector), for scoring it.
    pub hang_episode: Option<(Time, bool)>,
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
pub(crate) enum Event<T> {
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
    RepairDone {
        node: u32,
        token: u32,
    },
    DeviceResetDone {
        node: u32,
        device: u8,
        token: u32,
    },
    /// Look again whether a device waiting for its reset is idle.
    DeviceResetWait {
        node: u32,
        device: u8,
    },
    StragglerEnd {
        node: u32,
        token: u32,
    },
    /// Kernel lines that reach the log readers late.
    LateLines {
        source: crate::strategy::LineSource,
        node: u32,
        device: Option<u8>,
        pid: u32,
        lines: u8,
    },
    DaySample,
    /// A timer the strategy set ([`Command::After`]).
    Strategy(T),
}

/// One strategy's run over the shared trace.
pub(crate) struct World<'a, P: Policy> {
    pub(crate) scenario: &'a Scenario,
    /// The strategy; `None` only while one of its calls runs (it reads the world through
    /// [`View`] then, and its commands are applied once it has returned).
    policy: Option<P>,
    strategy: Strategy,
    mechanics: Mechanics,
    pub(crate) queue: EventQueue<Event<P::Timer>>,
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
    pub(crate) trace_events: u64,
    /// Faults that interrupted a running gang, by fault class.
    pub(crate) interruptions_by_class: Vec<u64>,
    /// Nodes that are down, under repair, or carry an active fault: what a restart can trip on.
    pub(crate) broken: BTreeSet<u32>,
    /// Resets waiting for their device to be idle, by device index: since when (kept beside
    /// the devices, not in them: few devices ever have one, and every placement reads them).
    pub(crate) reset_waiting: BTreeMap<usize, Time>,
    /// When each device's resets of the last 24 h started (devheal's agent's limit).
    pub(crate) agent_resets: BTreeMap<usize, std::collections::VecDeque<Time>>,
    /// devheal's detectors, scored (by [`crate::strategy::Detector`]).
    pub(crate) detectors: [detectors::Tally; 3],
}

fn hours(ns: i64) -> f64 {
    ns as f64 / NS_PER_HOUR
}

impl<'a, P: Policy> World<'a, P> {
    pub(crate) fn new(scenario: &'a Scenario, policy: P, trace: &FaultTrace) -> World<'a, P> {
        let gpn = scenario.cluster.gpus_per_node;
        let mechanics = policy.mechanics();
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
                held_out_since: None,
                ticket_open: false,
                episode: None,
                occupied: 0,
            })
            .collect();
        let devices = vec![DeviceState::default(); (total * gpn) as usize];
        let mut world = World {
            scenario,
            strategy: policy.strategy(),
            mechanics,
            policy: Some(policy),
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
            trace_events: 0,
            interruptions_by_class: vec![0; scenario.faults.len()],
            broken: BTreeSet::new(),
            reset_waiting: BTreeMap::new(),
            agent_resets: BTreeMap::new(),
            detectors: Default::default(),
        };
        let mut next_node = 0u32;
        for (gi, spec) in scenario.training.iter().enumerate() {
            let members: Vec<u32> = (next_node..next_node + spec.nodes).collect();
            for (m, &n) in members.iter().enumerate() {
                world.nodes[n as usize].gang_member = Some((gi as u16, m as u32));
            }
            next_node += spec.nodes;
            // Ranks respawned inside their pods (in-job restart, or pods restarted in place by
            // the kubelet): no scheduling, no pod start. At least 1 ms, as `validate` asks of a
            // whole restart: a restart onto broken hardware is retried, and must not retry at
            // the same instant.
            let in_place_cost = {
                let r = &spec.restart;
                let cost = secs(r.framework_init_s + r.nccl_init_s + r.checkpoint_load_s);
                Duration(cost.0.max(secs(crate::scenario::MIN_INTERVAL_S).0))
            };
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
                restart_cost: if mechanics.in_job_restart { in_place_cost } else { spec.restart.total() },
                in_place_cost,
                next_restart_in_place: false,
                watchdog: secs(spec.nccl_watchdog_s),
                slow: BTreeMap::new(),
                pace: 1.0,
                streak: 0,
                streak_active: false,
                pending_moves: BTreeSet::new(),
                interruptions: 0,
                restarts: 0,
                lost: LostGpuHours::default(),
                ettr_by_day: Vec::new(),
                waiting: false,
                hang_episode: None,
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
                    world
                        .set_occupant((slot + u64::from(d)) as usize, Some((world.services.len() as u16, r)));
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
        world.with_policy(|p, view, out| p.start(view, out));
        world
    }

    pub(crate) fn dev(&self, node: u32, device: u8) -> usize {
        (node * self.gpn + u32::from(device)) as usize
    }

    /// Run to the end of the scenario, replaying `trace`, telling `on_day` how many whole
    /// simulated days are done (1, 2, … up to the scenario's length rounded up) each time that
    /// number grows.
    pub(crate) fn run_observed(mut self, trace: &FaultTrace, on_day: &mut dyn FnMut(u32)) -> StrategyReport {
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

    pub(crate) fn operator_delay(&self) -> Duration {
        secs(self.scenario.operator.response_min * 60.0)
    }

    fn k8s_pod_eviction_delay(&self) -> Duration {
        let k = &self.scenario.kubernetes;
        secs(k.node_monitor_grace_s + k.not_ready_toleration_s)
    }

    // ---------------------------------------------------------------- events

    fn on_event(&mut self, ev: Event<P::Timer>) {
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
                    self.signal(Signal::CheckpointDone { gang });
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
            Event::NodeTicket { node } => self.ticket_due(node),
            Event::RepairDone { node, token } => {
                if self.nodes[node as usize].repair_token == token {
                    self.repair_done(node);
                }
            }
            Event::DeviceResetWait { node, device } => self.reset_wait(node, device),
            Event::DeviceResetDone { node, device, token } => {
                let i = self.dev(node, device);
                if self.devices[i].reset_token == token && self.devices[i].resetting {
                    self.devices[i].resetting = false;
                    if self.devices[i].fault.is_some_and(|f| Repair::Reset.fixes(f.persistence)) {
                        self.device_fault_cleared(i);
                    }
                    self.refresh_broken(node);
                    self.signal(Signal::DeviceRepaired { node, device });
                    self.retry_waiting();
                }
            }
            Event::StragglerEnd { node, token } => {
                let n = &mut self.nodes[node as usize];
                if n.straggler_token == token {
                    n.slowdown = 1.0;
                    if let Some((g, _)) = n.gang_member {
                        self.gang_slow(g, node, None);
                    }
                    self.signal(Signal::StragglerEnded { node });
                }
            }
            Event::LateLines { source, node, device, pid, lines } => {
                self.signal(Signal::KernelLines { source, node, device, pid, lines });
            }
            Event::DaySample => {
                for g in &mut self.gangs {
                    let elapsed = self.now.as_secs_f64();
                    g.ettr_by_day.push(if elapsed > 0.0 { g.committed_work / elapsed } else { 0.0 });
                }
                self.queue.push(self.now + Duration::from_hours(24), Event::DaySample);
            }
            Event::Strategy(timer) => self.with_policy(|p, view, out| p.timer(timer, view, out)),
        }
    }

    // ---------------------------------------------------------------- the strategy

    /// Call the strategy with a read-only view of the world, then apply what it returns.
    fn with_policy(&mut self, call: impl FnOnce(&mut P, &dyn View, &mut Commands<P::Timer>)) {
        // Only `None` inside a call, which cannot reach here (the strategy cannot call back).
        let Some(mut policy) = self.policy.take() else { return };
        let mut out = Vec::new();
        call(&mut policy, &*self, &mut out);
        self.policy = Some(policy);
        for command in out {
            self.apply(command);
        }
    }

    /// Tell the strategy what happened.
    pub(crate) fn signal(&mut self, signal: Signal) {
        self.with_policy(|p, view, out| p.signal(signal, view, out));
    }

    /// Whether a gang restart recreates its pods (JobSet) rather than restarting containers in
    /// place.
    pub(crate) fn recreates_pods(&self) -> bool {
        self.mechanics.recreates_pods
    }
}
