//! The decision engine: `(state, input, now) -> actions`.
//!
//! The engine keeps an index of devices (by key, by node and PCI address), pods (by uid, device
//! and node), nodes and gangs, so that every input touches only what it concerns: no input scans
//! all pods. Iteration that reaches the output is over sorted collections, so the same inputs
//! always give the same actions.
//!
//! What it guarantees (checked by the property tests in `tests/engine_properties.rs` and
//! `tests/restart_budgets.rs`):
//! - one gang restart per incident, however many members fail or are reported afterwards; the
//!   restart is planned the moment a member's device fails, not when the others time out; its
//!   healthy members whose pods allow it restart in place, and only when they have not restarted
//!   within `in_place_restart_deadline` is the gang re-created, once more for that incident;
//! - `Unknown` health and stale input (an earlier boot, evidence older than the device's last
//!   recovery) never cause an action;
//! - budgets (nodes quarantined at once, evictions per minute, gang restarts and member
//!   replacements per gang, per namespace and in the whole cluster per hour) are never exceeded,
//!   and a breaker holds all remediation when failures are correlated across many nodes; a
//!   driver or device plugin version that concentrates failures is reported and its nodes are
//!   held rather than cycled;
//! - restarts and replacements caused by progress reports alone (hangs, stragglers, baseline
//!   shifts, which a workload can forge) are never more than `progress_breaker_restarts` within
//!   `progress_breaker_window`: the progress breaker then holds them, and only them, until
//!   `breaker_cooldown` passes without one; a failed device still restarts its gang;
//! - every destructive action carries an idempotency key and is never planned twice;
//! - what a restart of the process must not lose (the restart budgets' hour, repeat offenders,
//!   cordons) can be taken out and restored into a new engine, which then refuses what the first
//!   would have refused (`durable`);
//! - a network fault never quarantines a device, marks one unhealthy or requests a repair; the
//!   cordon it places is lifted when the node's agent no longer reports it.
//!
//! This file holds the public types, the engine's state and the dispatch of each input; the
//! rest is split by what it looks after:
//! - `devices`: inventory, health reports, kernel incidents, a device failing or degrading (a
//!   lone NVLink error, Xid 74, whether a kernel incident or an agent's health report whose only
//!   reason it is, is held: the device fails on a second one within 24 h, on a
//!   fatal NVSwitch SXid on its node, or when a job on it is interrupted within 10 minutes, its
//!   pod failing or its gang going silent);
//! - `nodes`: boots and versions, reboots, incidents of a whole node;
//! - `network`: a node's network fault (dead or flapping NIC links): the node cordoned, gangs
//!   with a hung or failed member there restarted away from it, the cordon lifted when the
//!   links are up and stable again; never a device quarantine or a repair request;
//! - `pods`: the lean pod index, pod updates and deletions, evictions;
//! - `decide`: the policy applied to one pod's failure;
//! - `gangs`: progress, hangs, gang restarts, replacement at a checkpoint;
//! - `in_place`: which members of a restarted gang restart in place, and the fallback to
//!   re-creating the gang when they do not;
//! - `deferred`: restarts held or refused, retried when the hold ends;
//! - `budgets`: the hourly restart budgets (gang, namespace, cluster) both kinds of restart pass;
//! - `progress_breaker`: the hold on restarts caused by progress reports alone;
//! - `quarantine`: device quarantine and cordons within the node budget, probation's end;
//! - `breaker`: the breaker and version holds;
//! - `queries`: read-only questions (verdicts, decisions, the safety state);
//! - `repairs`: repair requests and their withdrawal once answered;
//! - `durable`: the state a new process restores (budgets' hour, repeat offenders, cordons,
//!   breakers, repair requests).

/// The end of the idempotency key of the `RestartGang` that re-creates a gang whose members did
/// not restart in place (`in_place`): the same incident as the restart before it.
pub const IN_PLACE_FALLBACK_SUFFIX: &str = "/in-place-timeout";

mod breaker;
mod budgets;
mod decide;
mod deferred;
mod devices;
mod durable;
mod gangs;
mod in_place;
mod network;
mod nodes;
mod pods;
mod progress_breaker;
mod quarantine;
mod queries;
mod repairs;
#[cfg(test)]
mod test_support;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::action::{Action, PlannedAction, RepairKind};
use crate::attribution::Verdict;
use crate::device::{Device, DeviceKey, Health, HealthReason};
use crate::incident::{KernelIncident, NetworkFault};
use crate::pod::{FailureClass, GangId, NodeInfo, PodInfo};
use crate::policy::{FailurePolicy, RuleAction, SafetySettings};
use crate::time::{Duration, Time};

use breaker::Breaker;
use budgets::RestartWindows;
use devices::DeviceState;
pub use durable::{
    BreakerFailure, BreakerState, DeviceHistory, DurableState, GangRestarts, MAX_DURABLE_DEVICES, NodeCordon,
    NodeRepairs, ProgressBreakerState, ProgressRestart, RepairRequest,
};
use gangs::GangState;
use nodes::NodeState;
use pods::{PendingEviction, PodState};
use progress_breaker::ProgressBreaker;

/// Cluster-wide safety settings and the policies in force.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct EngineConfig {
    /// Operator policies; the first (in order) that selects a pod applies to it.
    pub policies: Vec<FailurePolicy>,
    /// Applies to pods no operator policy selects. `None`: the built-in default.
    pub default_policy: Option<FailurePolicy>,
    pub safety: SafetySettings,
}

/// Everything the engine can be told.
#[derive(Clone, Debug)]
pub enum Input {
    /// The devices a node has (its inventory, from NodeDeviceHealth or the simulator's model),
    /// so that kernel incidents naming a PCI address can be mapped to a device.
    Devices {
        node: String,
        devices: Vec<Device>,
    },
    /// A device's health as a source (agent, NodeDeviceHealth, simulator) now reports it.
    DeviceHealth {
        device: DeviceKey,
        health: Health,
        reasons: Vec<HealthReason>,
    },
    /// A correlated kernel/NVML incident on a node.
    KernelIncident(KernelIncident),
    /// The network fault a node's agent reports now (`None`: none, or no longer). Level-triggered:
    /// the same fault (same `since`) sent again changes nothing.
    NodeNetwork {
        node: String,
        fault: Option<NetworkFault>,
    },
    PodUpsert(PodInfo),
    PodDeleted {
        uid: String,
    },
    NodeUpsert(NodeInfo),
    NodeDeleted {
        name: String,
    },
    /// Training progress from a pod: the step reached and the step's duration.
    Progress {
        pod_uid: String,
        step: u64,
        step_time: Duration,
    },
    /// A pod's workload stopped making progress at `since` (the agent's hang detector, confirmed
    /// across the pod's gang by the controller). The pod's gang is restarted at once, within
    /// the budgets; a pod outside any gang is reported.
    Hung {
        pod_uid: String,
        since: Time,
        evidence: String,
    },
    /// The node's agent tried the reset the engine requested for `device` (request `request`,
    /// the `RequestRepair`'s idempotency key) and it failed: the device is still there but did
    /// not come back, or the driver refused. The engine asks for the next repair, a reboot of
    /// the node. Sent once per request by the controller.
    DeviceResetFailed {
        device: DeviceKey,
        request: String,
        message: String,
    },
    /// Time passes (budgets refill, probation ends, hangs are noticed).
    Tick,
    /// Replace the operator policies (the safety settings stay).
    Policies(Vec<FailurePolicy>),
}

/// What the policy says about one pod, without carrying anything out (for `explain`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PolicyDecision {
    pub verdict: Verdict,
    pub policy: String,
    pub rule: Option<String>,
    pub action: RuleAction,
    pub gang: Option<GangId>,
}

/// Safety state, for reports and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SafetyState {
    pub breaker_open: bool,
    pub quarantined_nodes: usize,
    pub quarantine_node_limit: usize,
    pub evictions_last_minute: usize,
    pub held_versions: Vec<String>,
    pub quarantined_devices: usize,
    /// Remediation steps the breaker held since the engine started.
    pub held_by_breaker: u64,
    /// Gang restarts and member replacements planned in the last hour, in the whole cluster.
    pub gang_restarts_last_hour: usize,
    /// Whether the progress breaker holds restarts caused by progress reports alone.
    pub progress_breaker_open: bool,
    /// Gang restarts and replacements the progress breaker held since the engine started.
    pub held_by_progress_breaker: u64,
}

/// The engine and all the state it keeps.
#[derive(Clone, Debug)]
pub struct Engine {
    config: EngineConfig,
    default_policy: FailurePolicy,
    gang_label_keys: Vec<String>,
    /// Ordered by (node, resource, id): a node's devices are one range.
    devices: BTreeMap<DeviceKey, DeviceState>,
    /// Label keys some policy selects on (kept on stored pods).
    selector_keys: BTreeSet<String>,
    /// Remediation held by the breaker (not reported one by one).
    held_by_breaker: u64,
    nodes: BTreeMap<String, NodeState>,
    pods: HashMap<String, PodState>,
    gangs: BTreeMap<GangId, GangState>,
    /// Gangs that reported progress since their last restart (watched for hangs).
    progressing: BTreeSet<GangId>,
    /// Gangs with an open restart (watched for settling).
    restarting: BTreeSet<GangId>,
    seen_incidents: HashMap<String, Time>,
    issued: HashMap<String, Time>,
    quarantined_nodes: BTreeMap<String, u32>,
    evictions: VecDeque<Time>,
    pending_devices: BTreeMap<DeviceKey, (String, RepairKind, String)>,
    /// Deferred evictions, by pod uid.
    pending_evictions: BTreeMap<String, PendingEviction>,
    /// The policy whose rule is being applied (set while `decide_pod` carries out a rule, and
    /// while a deferred eviction is retried): what `emit` attributes actions to.
    acting_for: Option<String>,
    probation: BTreeSet<DeviceKey>,
    /// Every device made Unhealthy or Degraded since the last prune (a superset of those that
    /// are now): a hang is blamed by looking at these, not at every device of a 2,560-pod gang.
    unwell: BTreeSet<DeviceKey>,
    /// Devices holding a lone NVLink error (`devices::HeldNvlink`): an interrupted job on one
    /// of them confirms it.
    held_nvlink: BTreeSet<DeviceKey>,
    /// Quarantined devices that dropped out of their node's inventory (Xid 79, "fallen off the
    /// bus"), with when: they hold no budget while gone and come back quarantined.
    vanished: BTreeMap<DeviceKey, (Time, DeviceState)>,
    /// The PCI address of each device that left its node while a repair was requested for it
    /// (a GPU taken out for a swap), kept while the request stands: a new device at that address
    /// answers it ([`Engine::device_replaced`]). At most one entry per standing request.
    departed: BTreeMap<DeviceKey, String>,
    /// Gang members planned to be replaced at their gang's next checkpoint, by pod uid, with
    /// the slow devices to keep the replacement off ([`Engine::replaced_at_checkpoint`]). One
    /// entry per marked pod, removed when the pod leaves or exits.
    replacing: BTreeMap<String, Vec<DeviceKey>>,
    /// Repeat-offender history restored from an earlier engine ([`Engine::restore`]) for
    /// devices not seen yet: (incidents, Degraded episodes), taken when the device appears.
    restored_history: BTreeMap<DeviceKey, (VecDeque<Time>, VecDeque<Time>)>,
    /// Bumped when a restart is counted or a node is cordoned or uncordoned: a change of the
    /// durable state that should be saved at once ([`Engine::durable_changes`]).
    durable_changes: u64,
    /// Cordoned nodes that rebooted and wait for probation to end (Ticks look only at these).
    node_probation: BTreeSet<String>,
    /// Nodes whose agent reports a network fault now (few: a hang looks only at these).
    network_faulted: BTreeSet<String>,
    version_nodes: HashMap<String, u32>,
    held_versions: BTreeSet<String>,
    breaker: Breaker,
    /// Standing repair requests, by node.
    repairs: BTreeMap<String, repairs::Repairs>,
    /// Gang restarts and replacements in the last hour, per namespace and in the cluster.
    restart_windows: RestartWindows,
    progress_breaker: ProgressBreaker,
    /// Gang restarts refused or held, retried each Tick.
    deferred_restarts: BTreeMap<GangId, deferred::DeferredRestart>,
    last_prune: Time,
    last_tick: Time,
}

/// Idempotency keys are remembered this long.
const ISSUED_MEMORY: Duration = Duration::from_hours(24 * 8);

/// The engine with the built-in default policy and safety settings.
impl Default for Engine {
    fn default() -> Self {
        Engine::new(EngineConfig::default())
    }
}

impl Engine {
    pub fn new(config: EngineConfig) -> Self {
        let default_policy = config.default_policy.clone().unwrap_or_else(FailurePolicy::builtin_default);
        let mut engine = Engine {
            config,
            default_policy,
            gang_label_keys: Vec::new(),
            devices: BTreeMap::new(),
            selector_keys: BTreeSet::new(),
            held_by_breaker: 0,
            nodes: BTreeMap::new(),
            pods: HashMap::new(),
            gangs: BTreeMap::new(),
            progressing: BTreeSet::new(),
            restarting: BTreeSet::new(),
            seen_incidents: HashMap::new(),
            issued: HashMap::new(),
            quarantined_nodes: BTreeMap::new(),
            evictions: VecDeque::new(),
            pending_devices: BTreeMap::new(),
            pending_evictions: BTreeMap::new(),
            acting_for: None,
            probation: BTreeSet::new(),
            unwell: BTreeSet::new(),
            held_nvlink: BTreeSet::new(),
            vanished: BTreeMap::new(),
            departed: BTreeMap::new(),
            replacing: BTreeMap::new(),
            restored_history: BTreeMap::new(),
            durable_changes: 0,
            node_probation: BTreeSet::new(),
            network_faulted: BTreeSet::new(),
            version_nodes: HashMap::new(),
            held_versions: BTreeSet::new(),
            breaker: Breaker::default(),
            repairs: BTreeMap::new(),
            restart_windows: RestartWindows::default(),
            progress_breaker: ProgressBreaker::default(),
            deferred_restarts: BTreeMap::new(),
            last_prune: Time::ZERO,
            last_tick: Time::ZERO,
        };
        engine.refresh_gang_keys();
        engine
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Replace the safety settings of a running engine (a reloaded settings file). Everything
    /// the engine counted stays: the budgets' windows, the breakers, quarantines and probation
    /// clocks are judged with the new limits from the next input on; an action already planned
    /// is not taken back.
    pub fn set_safety(&mut self, safety: SafetySettings) {
        self.config.safety = safety;
    }

    fn refresh_gang_keys(&mut self) {
        let mut keys: Vec<String> =
            self.config.policies.iter().filter_map(|p| p.gang_label.clone()).collect();
        keys.extend(self.default_policy.gang_label.clone());
        keys.dedup();
        self.gang_label_keys = keys;
        self.selector_keys = self
            .config
            .policies
            .iter()
            .chain(std::iter::once(&self.default_policy))
            .flat_map(|p| p.selector.match_labels.keys().cloned())
            .collect();
    }

    /// Feed one input observed at `now`; returns the actions to carry out, each with an
    /// idempotency key.
    pub fn handle(&mut self, input: Input, now: Time) -> Vec<PlannedAction> {
        let mut out = Vec::new();
        match input {
            Input::Devices { node, devices } => self.on_devices(node, devices, now, &mut out),
            Input::DeviceHealth { device, health, reasons } => {
                self.on_device_health(device, health, reasons, now, &mut out)
            }
            Input::KernelIncident(incident) => self.on_incident(incident, now, &mut out),
            Input::NodeNetwork { node, fault } => self.on_node_network(&node, fault, now, &mut out),
            Input::DeviceResetFailed { device, request, message } => {
                self.on_reset_failed(&device, &request, &message, now, &mut out)
            }
            Input::PodUpsert(pod) => self.on_pod(pod, now, &mut out),
            Input::PodDeleted { uid } => self.on_pod_deleted(&uid),
            Input::NodeUpsert(info) => self.on_node(info, now, &mut out),
            Input::NodeDeleted { name } => self.on_node_deleted(&name),
            Input::Progress { pod_uid, step: _, step_time: _ } => self.on_progress(&pod_uid, now),
            Input::Hung { pod_uid, since, evidence } => {
                self.on_hung(&pod_uid, since, &evidence, now, &mut out)
            }
            Input::Tick => self.on_tick(now, &mut out),
            Input::Policies(policies) => {
                self.config.policies = policies;
                self.refresh_gang_keys();
            }
        }
        out
    }

    // ---------------------------------------------------------------- emission

    fn emit(
        &mut self,
        out: &mut Vec<PlannedAction>,
        key: String,
        action: Action,
        class: FailureClass,
        now: Time,
    ) -> bool {
        if self.issued.contains_key(&key) {
            return false;
        }
        self.issued.insert(key.clone(), now);
        if let Action::RequestRepair { node, device, kind, .. } = &action {
            self.record_repair(node, device.clone(), *kind, now);
        }
        out.push(PlannedAction { idempotency_key: key, action, class, policy: self.acting_for.clone() });
        true
    }

    fn report(
        &mut self,
        out: &mut Vec<PlannedAction>,
        key: String,
        reason: &str,
        message: String,
        now: Time,
    ) {
        let action = Action::Report { reason: reason.to_string(), message };
        self.emit(out, key, action, FailureClass::None, now);
    }

    // ---------------------------------------------------------------- time

    /// Time passes: budgets refill, holds and probations end, held remediation is retried,
    /// restarts settle and hangs are noticed. Each step looks only at what it watches. The
    /// progress breaker's cooldown is judged first, before this Tick wants any restart.
    fn on_tick(&mut self, now: Time, out: &mut Vec<PlannedAction>) {
        self.tick_progress_breaker(now, out);
        self.mature_degraded(now, out);
        self.tick_breaker(now, out);
        self.end_probations(now, out);
        self.retry_held(now, out);
        self.retry_network_cordons(now, out);
        self.retry_deferred_restarts(now, out);
        self.tick_gangs(now, out);
        self.prune(now);
    }

    /// Held remediation, level-triggered: retry what is still bad once the breaker is closed.
    fn retry_held(&mut self, now: Time, out: &mut Vec<PlannedAction>) {
        if self.breaker.open_since.is_none() {
            let pending: Vec<(DeviceKey, (String, RepairKind, String))> =
                std::mem::take(&mut self.pending_devices).into_iter().collect();
            for (k, (incident, repair, reason)) in pending {
                if self.devices.get(&k).is_some_and(|d| d.health == Health::Unhealthy) {
                    self.remediate_device(&k, &incident, repair, &reason, now, out);
                }
            }
            let evictions: Vec<(String, PendingEviction)> =
                std::mem::take(&mut self.pending_evictions).into_iter().collect();
            for (uid, PendingEviction { identity, reason, class, policy }) in evictions {
                self.acting_for = policy;
                self.evict(&uid, &identity, &reason, class, now, out);
                self.acting_for = None;
            }
        }
    }

    /// Once an hour: forget old idempotency keys, incidents, vanished devices, restarts outside
    /// the budget's hour, gangs with nothing left and lone NVLink errors past their hold.
    fn prune(&mut self, now: Time) {
        if now.since(self.last_prune) >= Duration::from_hours(1) {
            self.last_prune = now;
            let horizon = now - ISSUED_MEMORY;
            self.issued.retain(|_, t| *t >= horizon);
            self.seen_incidents.retain(|_, t| *t >= horizon);
            self.vanished.retain(|_, (t, _)| *t >= horizon);
            let repairs = &self.repairs;
            self.departed.retain(|k, _| {
                repairs.get(&k.node).is_some_and(|r| r.requests.contains_key(&Some(k.clone())))
            });
            let hour = now - Duration::from_hours(1);
            self.restart_windows.prune(hour);
            let empty: Vec<GangId> = self
                .gangs
                .iter_mut()
                .filter_map(|(g, gs)| {
                    while gs.restarts.front().is_some_and(|t| *t < hour) {
                        gs.restarts.pop_front();
                    }
                    (gs.members.is_empty() && gs.restarts.is_empty() && gs.open_restart.is_none())
                        .then(|| g.clone())
                })
                .collect();
            for g in empty {
                self.gangs.remove(&g);
            }
            let devices = &self.devices;
            self.unwell.retain(|k| {
                devices.get(k).is_some_and(|d| matches!(d.health, Health::Unhealthy | Health::Degraded))
            });
            // A lone NVLink error nothing confirmed within its hold was noise.
            let held_horizon = now - devices::NVLINK_HOLD;
            let devices = &mut self.devices;
            self.held_nvlink.retain(|k| {
                let Some(d) = devices.get_mut(k) else { return false };
                if d.held_nvlink.as_ref().is_some_and(|h| h.at >= held_horizon) {
                    return true;
                }
                d.held_nvlink = None;
                false
            });
        }
    }
}
