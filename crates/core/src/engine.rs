//! The decision engine: `(state, input, now) -> actions`.
//!
//! The engine keeps an index of devices (by key, by node and PCI address), pods (by uid, device
//! and node), nodes and gangs, so that every input touches only what it concerns: no input scans
//! all pods. Iteration that reaches the output is over sorted collections, so the same inputs
//! always give the same actions.
//!
//! What it guarantees (checked by the property tests in `tests/engine_properties.rs`):
//! - one gang restart per incident, however many members fail or are reported afterwards; the
//!   restart is planned the moment a member's device fails, not when the others time out;
//! - `Unknown` health and stale input (an earlier boot, evidence older than the device's last
//!   recovery) never cause an action;
//! - budgets (nodes quarantined at once, evictions per minute, gang restarts per gang per hour)
//!   are never exceeded, and a breaker holds all remediation when failures are correlated across
//!   many nodes; a driver or device plugin version that concentrates failures is reported and
//!   its nodes are held rather than cycled;
//! - every destructive action carries an idempotency key and is never planned twice.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::action::{Action, PlannedAction, PodRef, RepairKind};
use crate::attribution::{DeviceEvidence, IncidentEvidence, Verdict, attribute};
use crate::device::{Device, DeviceKey, Health, HealthReason};
use crate::gang::{gang_of, restart_attempt};
use crate::incident::{Attribution, KernelIncident};
use crate::pod::{FailureClass, GangId, NodeInfo, PodInfo, PodPhase};
use crate::policy::{FailurePolicy, PolicyRule, RuleAction, SafetySettings};
use crate::time::{Duration, Time};

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
}

/// Why remediation of a node is held.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Hold {
    Breaker,
    Version(String),
}

#[derive(Clone, Debug)]
struct DeviceState {
    /// PCI address, lower-case, from the inventory.
    pci: Option<String>,
    /// Uids of the pods bound to the device.
    pods: Vec<String>,
    health: Health,
    since: Time,
    reasons: Vec<HealthReason>,
    incidents: Vec<IncidentEvidence>,
    open_incident: Option<String>,
    quarantined: bool,
    probation_until: Option<Time>,
    /// Evidence from before this time is stale (last reset, recovery or reboot).
    recovered_at: Time,
    incident_times: VecDeque<Time>,
    /// When each recent Degraded episode began (its `since`).
    degraded_episodes: VecDeque<Time>,
}

impl DeviceState {
    fn new(now: Time) -> Self {
        DeviceState {
            pci: None,
            pods: Vec::new(),
            health: Health::Healthy,
            since: now,
            reasons: Vec::new(),
            incidents: Vec::new(),
            open_incident: None,
            quarantined: false,
            probation_until: None,
            recovered_at: Time(i64::MIN),
            incident_times: VecDeque::new(),
            degraded_episodes: VecDeque::new(),
        }
    }
}

#[derive(Clone, Debug, Default)]
struct NodeState {
    info: Option<NodeInfo>,
    cordoned: bool,
    open_incident: Option<String>,
    probation_until: Option<Time>,
}

/// What is kept of a pod between inputs: not what only its own failure needs (containers,
/// conditions, messages, annotations, labels no policy selects on). Attribution from device
/// evidence and policy selection work on it.
#[derive(Clone, Debug)]
struct LeanPod {
    namespace: String,
    name: String,
    node: Option<String>,
    labels: BTreeMap<String, String>,
    owner: Option<(String, String)>,
    phase: PodPhase,
    devices: Vec<DeviceKey>,
    start_time: Option<Time>,
}

impl LeanPod {
    fn to_pod_info(&self, uid: &str) -> PodInfo {
        PodInfo {
            uid: uid.to_string(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            node: self.node.clone(),
            labels: self.labels.clone(),
            owner: self.owner.clone(),
            phase: self.phase,
            devices: self.devices.clone(),
            start_time: self.start_time,
            ..PodInfo::default()
        }
    }

    fn pod_ref(&self, uid: &str) -> PodRef {
        PodRef { namespace: self.namespace.clone(), name: self.name.clone(), uid: uid.to_string() }
    }
}

/// An eviction held back by the eviction budget, sent by a later Tick.
#[derive(Clone, Debug)]
struct PendingEviction {
    identity: String,
    reason: String,
    class: FailureClass,
    /// The policy whose rule asked for it.
    policy: Option<String>,
}

#[derive(Clone, Debug)]
struct PodState {
    info: LeanPod,
    restarts: u32,
    attempt: Option<u64>,
    gang: Option<GangId>,
    /// Failure identities already decided (one decision per failure).
    decided: BTreeSet<String>,
}

#[derive(Clone, Debug)]
struct OpenRestart {
    incident: String,
    at: Time,
    doomed: BTreeSet<String>,
    attempt: Option<u64>,
}

#[derive(Clone, Debug, Default)]
struct GangState {
    members: BTreeSet<String>,
    restarts: VecDeque<Time>,
    open_restart: Option<OpenRestart>,
    last_progress: Option<Time>,
}

#[derive(Clone, Debug, Default)]
struct Breaker {
    events: VecDeque<(Time, String)>,
    /// Failures per node in the window, and the version tags its first one counted in
    /// `per_version` (decremented exactly, even if the node was upgraded or deleted since).
    per_node: HashMap<String, (u32, Vec<String>)>,
    per_version: HashMap<String, u32>,
    open_since: Option<Time>,
    last_event: Option<Time>,
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
    /// Quarantined devices that dropped out of their node's inventory (Xid 79, "fallen off the
    /// bus"), with when: they hold no budget while gone and come back quarantined.
    vanished: BTreeMap<DeviceKey, (Time, DeviceState)>,
    /// Cordoned nodes that rebooted and wait for probation to end (Ticks look only at these).
    node_probation: BTreeSet<String>,
    version_nodes: HashMap<String, u32>,
    held_versions: BTreeSet<String>,
    breaker: Breaker,
    last_prune: Time,
    last_tick: Time,
}

/// How long an open gang restart waits for the gang to make progress before it is closed anyway.
const RESTART_SETTLE: Duration = Duration::from_mins(20);
/// Idempotency keys are remembered this long.
const ISSUED_MEMORY: Duration = Duration::from_hours(24 * 8);
/// Incidents kept per device as attribution evidence.
const INCIDENTS_PER_DEVICE: usize = 4;

fn camel(class: FailureClass) -> &'static str {
    match class {
        FailureClass::DeviceFailure => "DeviceFailure",
        FailureClass::DeviceDegraded => "DeviceDegraded",
        FailureClass::Application => "ApplicationFailure",
        FailureClass::Oom => "OutOfMemory",
        FailureClass::Infrastructure => "InfrastructureFailure",
        FailureClass::Disruption => "Disruption",
        FailureClass::None => "Unclassified",
    }
}

fn pod_ref(p: &PodInfo) -> PodRef {
    PodRef { namespace: p.namespace.clone(), name: p.name.clone(), uid: p.uid.clone() }
}

fn version_tags(info: &NodeInfo) -> Vec<String> {
    let mut tags = Vec::new();
    if let Some(v) = &info.driver_version {
        tags.push(format!("driver {v}"));
    }
    if let Some(v) = &info.device_plugin_version {
        tags.push(format!("device plugin {v}"));
    }
    tags
}

/// Forget a pod's own failure identities (`pod/<uid>/<restarts>/<class>`) from restarts before
/// `restarts`: they cannot recur, and a pod crash-looping for weeks would otherwise keep one per
/// restart.
fn prune_decided(decided: &mut BTreeSet<String>, uid: &str, restarts: u32) {
    if decided.is_empty() {
        return;
    }
    let prefix = format!("pod/{uid}/");
    decided.retain(|id| {
        id.strip_prefix(prefix.as_str())
            .and_then(|rest| rest.split_once('/'))
            .and_then(|(r, _)| r.parse::<u32>().ok())
            .is_none_or(|r| r >= restarts)
    });
}

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
            vanished: BTreeMap::new(),
            node_probation: BTreeSet::new(),
            version_nodes: HashMap::new(),
            held_versions: BTreeSet::new(),
            breaker: Breaker::default(),
            last_prune: Time::ZERO,
            last_tick: Time::ZERO,
        };
        engine.refresh_gang_keys();
        engine
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
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

    /// The devices of a node (a range of the ordered device map).
    fn node_devices(&self, node: &str) -> impl Iterator<Item = (&DeviceKey, &DeviceState)> {
        self.devices.range(DeviceKey::new(node, "", "")..).take_while(move |(k, _)| k.node == node)
    }

    fn node_device_keys(&self, node: &str) -> Vec<DeviceKey> {
        self.node_devices(node).map(|(k, _)| k.clone()).collect()
    }

    /// One quarantine (device or cordon) on `node` ended: release its share of the budget.
    fn unquarantine_node(&mut self, node: &str) {
        if let Some(c) = self.quarantined_nodes.get_mut(node) {
            *c = c.saturating_sub(1);
            if *c == 0 {
                self.quarantined_nodes.remove(node);
            }
        }
    }

    /// What is kept of a pod between inputs.
    fn lean(&self, pod: &PodInfo) -> LeanPod {
        LeanPod {
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            node: pod.node.clone(),
            labels: pod
                .labels
                .iter()
                .filter(|(k, _)| self.selector_keys.contains(*k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            owner: pod.owner.clone(),
            phase: pod.phase,
            devices: pod.devices.clone(),
            start_time: pod.start_time,
        }
    }

    /// Feed one input observed at `now`; returns the actions to carry out, each with an
    /// idempotency key.
    pub fn handle(&mut self, input: Input, now: Time) -> Vec<PlannedAction> {
        let mut out = Vec::new();
        match input {
            Input::Devices { node, devices } => self.on_devices(node, devices, now),
            Input::DeviceHealth { device, health, reasons } => {
                self.on_device_health(device, health, reasons, now, &mut out)
            }
            Input::KernelIncident(incident) => self.on_incident(incident, now, &mut out),
            Input::PodUpsert(pod) => self.on_pod(pod, now, &mut out),
            Input::PodDeleted { uid } => self.on_pod_deleted(&uid),
            Input::NodeUpsert(info) => self.on_node(info, now),
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

    // ---------------------------------------------------------------- queries

    /// Attribute a pod with what the engine knows about its devices now.
    pub fn verdict(&self, pod: &PodInfo, now: Time) -> Verdict {
        let (evidence, quiet) = self.evidence_for(pod, now);
        let mut verdict = attribute(pod, &evidence);
        // A Healthy device with nothing to say changes only the worst health (see evidence_for).
        if quiet && verdict.worst_device_health.is_none() {
            verdict.worst_device_health = Some(Health::Healthy);
        }
        verdict
    }

    /// What the policy says about a pod (no state changes, no budgets).
    pub fn decide(&self, pod: &PodInfo, now: Time) -> PolicyDecision {
        let verdict = self.verdict(pod, now);
        let policy = self.policy_for(pod);
        let rule = if verdict.is_failure() { policy.first_match(pod, &verdict) } else { None };
        PolicyDecision {
            policy: policy.name.clone(),
            rule: rule.map(|r| r.name.clone()),
            action: rule.map_or(RuleAction::Ignore, |r| r.action),
            gang: gang_of(pod, &self.gang_label_keys),
            verdict,
        }
    }

    /// The gang a pod belongs to, if the engine knows the pod and it is in one.
    pub fn pod_gang(&self, uid: &str) -> Option<&GangId> {
        self.pods.get(uid).and_then(|p| p.gang.as_ref())
    }

    /// `namespace/name` of a pod the engine knows.
    pub fn pod_name(&self, uid: &str) -> Option<String> {
        self.pods.get(uid).map(|p| format!("{}/{}", p.info.namespace, p.info.name))
    }

    /// The devices a pod is bound to (empty for an unknown pod).
    pub fn pod_devices(&self, uid: &str) -> &[DeviceKey] {
        self.pods.get(uid).map(|p| p.info.devices.as_slice()).unwrap_or(&[])
    }

    /// How many pods the engine counts in a gang.
    pub fn gang_size(&self, gang: &GangId) -> usize {
        self.gangs.get(gang).map_or(0, |gs| gs.members.len())
    }

    pub fn device_health(&self, key: &DeviceKey) -> Option<Health> {
        self.devices.get(key).map(|d| d.health)
    }

    /// The incident of the gang's planned restart, while the gang has not yet restarted.
    pub fn open_gang_incident(&self, gang: &GangId) -> Option<&str> {
        self.gangs.get(gang)?.open_restart.as_ref().map(|o| o.incident.as_str())
    }

    pub fn is_quarantined(&self, key: &DeviceKey) -> bool {
        self.devices.get(key).is_some_and(|d| d.quarantined)
    }

    pub fn safety_state(&self, now: Time) -> SafetyState {
        let window_start = now - Duration::from_mins(1);
        SafetyState {
            breaker_open: self.breaker.open_since.is_some(),
            quarantined_nodes: self.quarantined_nodes.len(),
            quarantine_node_limit: self.quarantine_node_limit(),
            evictions_last_minute: self.evictions.iter().filter(|t| **t > window_start).count(),
            held_versions: self.held_versions.iter().cloned().collect(),
            quarantined_devices: self.devices.values().filter(|d| d.quarantined).count(),
            held_by_breaker: self.held_by_breaker,
        }
    }

    fn policy_for(&self, pod: &PodInfo) -> &FailurePolicy {
        self.config.policies.iter().find(|p| p.selects(pod)).unwrap_or(&self.default_policy)
    }

    /// Evidence from the pod's devices that can move a verdict: devices that are not Healthy or
    /// carry reasons or recent incidents, in the pod's order. A Healthy device with nothing to say
    /// would only make the worst health Healthy; the flag says whether the pod had one. Pods are
    /// re-sent often (every member of a restarted gang), and most of their devices are quiet:
    /// this keeps a re-sent pod from cloning eight device keys to find nothing.
    fn evidence_for(&self, pod: &PodInfo, now: Time) -> (Vec<DeviceEvidence>, bool) {
        let horizon = now - self.config.safety.incident_window;
        let mut quiet = false;
        let mut evidence = Vec::new();
        let mut consider = |k: &DeviceKey, d: &DeviceState| {
            let live = |i: &&IncidentEvidence| i.last_seen >= horizon && i.last_seen >= d.recovered_at;
            if d.health == Health::Healthy && d.reasons.is_empty() && !d.incidents.iter().any(|i| live(&i)) {
                quiet = true;
                return;
            }
            evidence.push(DeviceEvidence {
                key: k.clone(),
                health: d.health,
                reasons: d.reasons.clone(),
                incidents: d.incidents.iter().filter(live).cloned().collect(),
            });
        };
        // The usual pod holds devices of one node in key order: one walk of that range instead
        // of a tree descent per device.
        let sorted_one_node = pod.devices.windows(2).all(|w| w[0] < w[1] && w[0].node == w[1].node);
        match pod.devices.first() {
            Some(first) if sorted_one_node && pod.devices.len() > 1 => {
                let mut wanted = pod.devices.iter().peekable();
                for (k, d) in self.devices.range(first..) {
                    while wanted.next_if(|w| *w < k).is_some() {}
                    match wanted.peek() {
                        None => break,
                        Some(w) if *w == k => {
                            consider(k, d);
                            wanted.next();
                        }
                        Some(_) => {}
                    }
                    if k.node != first.node {
                        break;
                    }
                }
            }
            _ => {
                for k in &pod.devices {
                    if let Some(d) = self.devices.get(k) {
                        consider(k, d);
                    }
                }
            }
        }
        (evidence, quiet)
    }

    fn quarantine_node_limit(&self) -> usize {
        let s = &self.config.safety;
        let fleet = self.nodes.len().max(1) as f64;
        let by_percent = ((s.max_quarantined_nodes_percent / 100.0) * fleet).floor().max(1.0) as usize;
        by_percent.min(s.max_quarantined_nodes as usize)
    }

    fn node_held(&self, node: &str) -> Option<Hold> {
        if self.breaker.open_since.is_some() {
            return Some(Hold::Breaker);
        }
        if self.held_versions.is_empty() {
            return None;
        }
        let info = self.nodes.get(node)?.info.as_ref()?;
        version_tags(info).into_iter().find(|t| self.held_versions.contains(t)).map(Hold::Version)
    }

    /// Say that remediation is held: the breaker's holds are counted (its opening was
    /// reported once); a version hold is reported once per node and version.
    fn report_hold(&mut self, out: &mut Vec<PlannedAction>, hold: Hold, node: &str, what: String, now: Time) {
        match hold {
            Hold::Breaker => self.held_by_breaker += 1,
            Hold::Version(tag) => {
                let msg = format!("{what}; held: failures concentrate on {tag}");
                self.report(out, format!("held/{node}/{tag}"), "RemediationHeld", msg, now);
            }
        }
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

    // ---------------------------------------------------------------- inputs

    fn on_devices(&mut self, node: String, devices: Vec<Device>, now: Time) {
        self.nodes.entry(node.clone()).or_default();
        let listed: BTreeSet<&DeviceKey> = devices.iter().map(|d| &d.key).collect();
        let gone: Vec<DeviceKey> =
            self.node_devices(&node).filter(|(k, _)| !listed.contains(k)).map(|(k, _)| k.clone()).collect();
        for k in gone {
            self.probation.remove(&k);
            self.pending_devices.remove(&k);
            let Some(mut st) = self.devices.remove(&k) else { continue };
            if st.quarantined {
                // A device that is gone keeps no pod off its node: release its budget share as
                // the release path does, and remember it so that it comes back quarantined.
                self.unquarantine_node(&k.node);
                st.pods.clear();
                st.probation_until = None;
                self.vanished.insert(k, (now, st));
            }
        }
        for d in devices {
            if !self.devices.contains_key(&d.key)
                && let Some((_, mut st)) = self.vanished.remove(&d.key)
            {
                // Back after falling off the bus: still quarantined (the quarantine was never
                // lifted) until it is Healthy through probation. It counts against the budget
                // again, even when the budget is full, since the quarantine is already in place.
                if st.health != Health::Unhealthy {
                    st.health = Health::Unknown;
                    st.since = now;
                }
                *self.quarantined_nodes.entry(d.key.node.clone()).or_default() += 1;
                if st.health == Health::Unhealthy {
                    self.unwell.insert(d.key.clone());
                }
                self.devices.insert(d.key.clone(), st);
            }
            let st = self.devices.entry(d.key).or_insert_with(|| DeviceState::new(now));
            st.pci = d.pci_address.map(|p| p.to_ascii_lowercase());
        }
    }

    fn on_device_health(
        &mut self,
        key: DeviceKey,
        health: Health,
        reasons: Vec<HealthReason>,
        now: Time,
        out: &mut Vec<PlannedAction>,
    ) {
        if !self.nodes.contains_key(&key.node) {
            self.nodes.insert(key.node.clone(), NodeState::default());
        }
        let st = self.devices.entry(key.clone()).or_insert_with(|| DeviceState::new(now));
        // Stale: every reason predates the device's last recovery.
        if !reasons.is_empty() && reasons.iter().all(|r| r.last_seen < st.recovered_at) {
            return;
        }
        let previous = st.health;
        if health == Health::Unknown {
            // The detector lost sight: record it, change nothing else (no remediation, no release).
            st.health = Health::Unknown;
            st.since = now;
            return;
        }
        st.reasons = reasons;
        if health != previous {
            st.since = now;
        }
        st.health = health;
        if matches!(health, Health::Unhealthy | Health::Degraded) {
            self.unwell.insert(key.clone());
        }
        match health {
            Health::Unhealthy => {
                if st.open_incident.is_none() {
                    let code = st.reasons.iter().find_map(|r| r.code);
                    let incident = match code {
                        Some(c) => format!("health/{key}/{c}/{}", now.as_nanos()),
                        None => format!("health/{key}/{}", now.as_nanos()),
                    };
                    let summary = st.reasons.first().map(|r| r.message.clone()).unwrap_or_default();
                    let reason = format!(
                        "device reported Unhealthy{}",
                        if summary.is_empty() { String::new() } else { format!(": {summary}") }
                    );
                    self.device_failed(&key, incident, RepairKind::ResetDevice, reason, now, out);
                }
            }
            // Only a transition into Healthy is a recovery: a source that republishes its full
            // state (NodeDeviceHealth heartbeats) must not push probation out forever. A
            // quarantined device not yet in probation starts it on any Healthy report.
            Health::Healthy => {
                if previous != Health::Healthy || (st.quarantined && st.probation_until.is_none()) {
                    self.device_recovered(&key, now);
                }
            }
            Health::Degraded => self.device_degraded(&key, now, out),
            Health::Unknown => {}
        }
    }

    fn on_incident(&mut self, inc: KernelIncident, now: Time, out: &mut Vec<PlannedAction>) {
        // Stale: from another boot of the node.
        let node_boot =
            self.nodes.get(&inc.node).and_then(|n| n.info.as_ref()).and_then(|i| i.boot_id.clone());
        if let (Some(current), Some(seen)) = (&node_boot, &inc.boot_id)
            && current != seen
        {
            return;
        }
        if self.seen_incidents.contains_key(&inc.id) {
            return;
        }
        let key = inc.pci_address.as_ref().and_then(|pci| {
            let pci = pci.to_ascii_lowercase();
            self.node_devices(&inc.node)
                .find(|(_, d)| d.pci.as_deref() == Some(pci.as_str()))
                .map(|(k, _)| k.clone())
        });
        let Some(key) = key else {
            if inc.pci_address.is_none() {
                self.seen_incidents.insert(inc.id.clone(), now);
                self.node_incident(inc, now, out);
            }
            // A PCI address the inventory does not know: nothing to act on.
            return;
        };
        let Some(st) = self.devices.get_mut(&key) else { return };
        if inc.last_seen < st.recovered_at {
            return;
        }
        self.seen_incidents.insert(inc.id.clone(), now);
        st.incidents.push(IncidentEvidence {
            id: inc.id.clone(),
            code: inc.code,
            attribution: inc.attribution,
            health: inc.health,
            summary: inc.summary.clone(),
            last_seen: inc.last_seen,
        });
        if st.incidents.len() > INCIDENTS_PER_DEVICE {
            st.incidents.remove(0);
        }
        let device_fault =
            matches!(inc.attribution, Attribution::Device | Attribution::Interconnect | Attribution::Host);
        if !device_fault {
            return;
        }
        match inc.health {
            Health::Unhealthy => {
                if st.open_incident.is_some() {
                    return;
                }
                if st.health != Health::Unhealthy {
                    st.since = now;
                }
                st.health = Health::Unhealthy;
                self.unwell.insert(key.clone());
                let reason = format!("{}: {}", inc.kind, inc.summary);
                self.device_failed(&key, inc.id, inc.action, reason, now, out);
            }
            Health::Degraded if st.health == Health::Healthy => {
                st.health = Health::Degraded;
                st.since = now;
                self.unwell.insert(key.clone());
                self.device_degraded(&key, now, out);
            }
            _ => {}
        }
    }

    fn on_pod(&mut self, pod: PodInfo, now: Time, out: &mut Vec<PlannedAction>) {
        let uid = pod.uid.clone();
        // An update of a known pod on the same node and devices changes no index (gang labels
        // do not change during a pod's life): update it in place.
        let unchanged =
            self.pods.get(&uid).is_some_and(|p| p.info.node == pod.node && p.info.devices == pod.devices);
        let (gang, decided) = if unchanged {
            let Some(p) = self.pods.get_mut(&uid) else { return };
            p.info.phase = pod.phase;
            p.info.start_time = pod.start_time;
            p.restarts = pod.containers.iter().map(|c| c.restart_count).sum();
            p.attempt = restart_attempt(&pod);
            prune_decided(&mut p.decided, &uid, p.restarts);
            (p.gang.clone(), None)
        } else {
            let gang = gang_of(&pod, &self.gang_label_keys);
            let decided = match self.pods.remove(&uid) {
                Some(old) => {
                    self.unindex(&uid, &old);
                    old.decided
                }
                None => BTreeSet::new(),
            };
            (gang, Some(decided))
        };
        for d in pod.devices.iter().filter(|_| !unchanged) {
            if !self.devices.contains_key(d) {
                if !self.nodes.contains_key(&d.node) {
                    self.nodes.insert(d.node.clone(), NodeState::default());
                }
                self.devices.insert(d.clone(), DeviceState::new(now));
            }
            if let Some(st) = self.devices.get_mut(d)
                && !st.pods.contains(&uid)
            {
                st.pods.push(uid.clone());
            }
        }
        let mut absorbed = false;
        if let Some(g) = &gang {
            if !self.gangs.contains_key(g) {
                self.gangs.insert(g.clone(), GangState::default());
            }
            let Some(gs) = self.gangs.get_mut(g) else { return };
            if !gs.members.contains(&uid) {
                gs.members.insert(uid.clone());
            }
            if let Some(open) = &mut gs.open_restart
                && open.doomed.contains(&uid)
            {
                let new_incarnation = pod.start_time.is_some_and(|t| t > open.at)
                    || restart_attempt(&pod).zip(open.attempt).is_some_and(|(a, b)| a > b);
                if new_incarnation {
                    open.doomed.remove(&uid);
                    if open.doomed.is_empty() {
                        gs.open_restart = None;
                        self.restarting.remove(g);
                    }
                } else {
                    // A member of a gang whose restart is already planned: its failure is part
                    // of that incident.
                    absorbed = true;
                }
            }
        }
        // The kubelet's allocatedResourcesStatus is a health source too (KEP-4680): a device it
        // reports Unhealthy is handled like any other device failure.
        let reported_unhealthy: Vec<(DeviceKey, String)> = pod
            .containers
            .iter()
            .flat_map(|c| c.allocated_resources_status.iter())
            .filter(|r| r.health == Health::Unhealthy)
            .map(|r| {
                let key = DeviceKey::new(
                    pod.node.clone().unwrap_or_default(),
                    r.resource.clone(),
                    r.device_id.clone(),
                );
                let message =
                    r.message.clone().unwrap_or_else(|| "Unhealthy in allocatedResourcesStatus".to_string());
                (key, message)
            })
            .collect();
        if let Some(mut decided) = decided {
            let restarts = pod.containers.iter().map(|c| c.restart_count).sum();
            prune_decided(&mut decided, &uid, restarts);
            let state =
                PodState { info: self.lean(&pod), restarts, attempt: restart_attempt(&pod), gang, decided };
            self.pods.insert(uid.clone(), state);
        }
        if absorbed {
            return;
        }
        for (key, message) in reported_unhealthy {
            if self.devices.get(&key).is_some_and(|d| d.health == Health::Unhealthy) {
                continue;
            }
            let reason = HealthReason {
                source: crate::device::HealthSource::PodStatus,
                code: None,
                message,
                first_seen: now,
                last_seen: now,
                count: 1,
            };
            self.on_device_health(key, Health::Unhealthy, vec![reason], now, out);
        }
        let verdict = self.verdict(&pod, now);
        if verdict.is_failure() && (verdict.failing || verdict.class == FailureClass::DeviceDegraded) {
            self.decide_pod(&uid, Some(&pod), verdict, None, now, out);
        }
    }

    fn unindex(&mut self, uid: &str, old: &PodState) {
        for d in &old.info.devices {
            if let Some(st) = self.devices.get_mut(d) {
                st.pods.retain(|p| p != uid);
            }
        }
        if let Some(g) = &old.gang
            && let Some(gs) = self.gangs.get_mut(g)
        {
            gs.members.remove(uid);
        }
    }

    fn on_pod_deleted(&mut self, uid: &str) {
        let Some(old) = self.pods.remove(uid) else { return };
        self.unindex(uid, &old);
        self.pending_evictions.remove(uid);
        if let Some(g) = &old.gang
            && let Some(gs) = self.gangs.get_mut(g)
        {
            if let Some(open) = &mut gs.open_restart {
                open.doomed.remove(uid);
                if open.doomed.is_empty() {
                    gs.open_restart = None;
                    self.restarting.remove(g);
                }
            }
            if gs.members.is_empty() && gs.open_restart.is_none() {
                // Keep the restart history for the budget: only drop gangs with no recent restarts.
                if gs.restarts.is_empty() {
                    self.gangs.remove(g);
                }
                self.progressing.remove(g);
            }
        }
    }

    fn on_node(&mut self, info: NodeInfo, now: Time) {
        let node_name = info.name.clone();
        let ns = self.nodes.entry(info.name.clone()).or_default();
        let old = ns.info.take();
        let rebooted = matches!((&old, &info.boot_id), (Some(o), Some(new)) if o.boot_id.as_ref().is_some_and(|b| b != new));
        let old_tags = old.as_ref().map(version_tags).unwrap_or_default();
        let new_tags = version_tags(&info);
        ns.info = Some(info);
        if rebooted {
            ns.open_incident = None;
            if ns.cordoned {
                ns.probation_until = Some(now + self.config.safety.probation);
                self.node_probation.insert(node_name.clone());
            }
            for k in self.node_device_keys(&node_name) {
                if let Some(d) = self.devices.get_mut(&k) {
                    d.recovered_at = now;
                    d.incidents.clear();
                }
            }
        }
        if old_tags != new_tags {
            for t in old_tags {
                if let Some(c) = self.version_nodes.get_mut(&t) {
                    *c = c.saturating_sub(1);
                }
            }
            for t in new_tags {
                *self.version_nodes.entry(t).or_default() += 1;
            }
        }
    }

    fn on_node_deleted(&mut self, name: &str) {
        let Some(ns) = self.nodes.remove(name) else { return };
        if let Some(info) = &ns.info {
            for t in version_tags(info) {
                if let Some(c) = self.version_nodes.get_mut(&t) {
                    *c = c.saturating_sub(1);
                }
            }
        }
        for k in self.node_device_keys(name) {
            self.devices.remove(&k);
            self.probation.remove(&k);
            self.pending_devices.remove(&k);
        }
        self.quarantined_nodes.remove(name);
        self.vanished.retain(|k, _| k.node != name);
    }

    fn on_progress(&mut self, uid: &str, now: Time) {
        let Some(gang) = self.pods.get(uid).and_then(|p| p.gang.clone()) else { return };
        let Some(gs) = self.gangs.get_mut(&gang) else { return };
        if let Some(open) = &gs.open_restart
            && now > open.at
            && !open.doomed.contains(uid)
        {
            // The restarted gang makes progress again: the incident is over.
            gs.open_restart = None;
            self.restarting.remove(&gang);
        }
        if gs.open_restart.is_none() {
            gs.last_progress = Some(now);
            self.progressing.insert(gang);
        }
    }

    fn on_hung(&mut self, uid: &str, since: Time, evidence: &str, now: Time, out: &mut Vec<PlannedAction>) {
        let Some(p) = self.pods.get(uid) else { return };
        let Some(g) = p.gang.clone() else {
            let key = format!("hang/{uid}/{}", since.as_nanos());
            let msg = format!("{}/{} makes no progress: {evidence}", p.info.namespace, p.info.name);
            self.report(out, key, "WorkloadHung", msg, now);
            return;
        };
        if self.gangs.get(&g).is_none_or(|gs| gs.open_restart.is_some()) {
            return;
        }
        self.restart_hung_gang(&g, since, evidence, now, out);
    }

    /// A gang whose last progress was at `since` is hung (the engine's own silence check, or a
    /// hang confirmed from the agents): it stops being watched and is restarted, one incident
    /// per silence.
    fn restart_hung_gang(
        &mut self,
        g: &GangId,
        since: Time,
        reason: &str,
        now: Time,
        out: &mut Vec<PlannedAction>,
    ) {
        self.progressing.remove(g);
        let class = self.gang_device_class(g);
        let incident = format!("hang/{g}/{}", since.as_nanos());
        if let Some(gs) = self.gangs.get_mut(g) {
            gs.last_progress = None;
        }
        self.restart_gang(g, &incident, reason, class, now, out);
    }

    fn on_tick(&mut self, now: Time, out: &mut Vec<PlannedAction>) {
        let s = self.config.safety.clone();
        // Degraded devices whose slow-down has now lasted long enough for a replacement.
        let (last, after) = (self.last_tick, s.degraded_replace_after);
        self.last_tick = now;
        let matured: Vec<DeviceKey> = self
            .unwell
            .iter()
            .filter(|k| {
                self.devices.get(*k).is_some_and(|d| {
                    d.health == Health::Degraded && d.since + after > last && d.since + after <= now
                })
            })
            .cloned()
            .collect();
        for k in matured {
            self.device_degraded(&k, now, out);
        }
        // Breaker and version holds age out.
        self.prune_breaker(now);
        if let Some(since) = self.breaker.open_since
            && self.breaker.last_event.is_none_or(|t| now.since(t) >= s.breaker_cooldown)
        {
            self.breaker.open_since = None;
            let key = format!("breaker-closed/{}", since.as_nanos());
            self.report(
                out,
                key,
                "BreakerClosed",
                format!(
                    "no correlated failures for {:.0}s; remediation resumes",
                    s.breaker_cooldown.as_secs_f64()
                ),
                now,
            );
        }
        let released: Vec<String> = self
            .held_versions
            .iter()
            .filter(|t| self.breaker.per_version.get(*t).copied().unwrap_or(0) == 0)
            .cloned()
            .collect();
        for t in released {
            self.held_versions.remove(&t);
            let key = format!("version-released/{t}/{}", now.as_nanos());
            self.report(
                out,
                key,
                "VersionHoldReleased",
                format!("no recent failures on {t}; its nodes are remediated again"),
                now,
            );
        }
        // Probation ends.
        let due: Vec<DeviceKey> = self
            .probation
            .iter()
            .filter(|k| self.devices.get(*k).is_some_and(|d| d.probation_until.is_some_and(|t| t <= now)))
            .cloned()
            .collect();
        for k in due {
            self.probation.remove(&k);
            let Some(d) = self.devices.get_mut(&k) else { continue };
            d.probation_until = None;
            if d.health != Health::Healthy || !d.quarantined {
                continue;
            }
            d.quarantined = false;
            let since = d.since;
            self.unquarantine_node(&k.node);
            let key = format!("release/{k}/{}", since.as_nanos());
            let action =
                Action::ReleaseDevice { device: k.clone(), reason: "healthy through probation".into() };
            self.emit(out, key, action, FailureClass::None, now);
        }
        let nodes_due: Vec<String> = self
            .node_probation
            .iter()
            .filter(|name| {
                self.nodes
                    .get(*name)
                    .is_none_or(|n| !n.cordoned || n.probation_until.is_some_and(|t| t <= now))
            })
            .cloned()
            .collect();
        for name in nodes_due {
            self.node_probation.remove(&name);
            let Some(ns) = self.nodes.get_mut(&name) else { continue };
            if !ns.cordoned {
                continue;
            }
            ns.cordoned = false;
            ns.probation_until = None;
            self.unquarantine_node(&name);
            let key = format!("uncordon/{name}/{}", now.as_nanos());
            let action =
                Action::UncordonNode { node: name.clone(), reason: "rebooted and through probation".into() };
            self.emit(out, key, action, FailureClass::None, now);
        }
        // Held remediation, level-triggered: retry what is still bad.
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
        // Gangs: settle open restarts, notice hangs.
        let settled: Vec<GangId> = self
            .restarting
            .iter()
            .filter(|g| {
                self.gangs
                    .get(*g)
                    .and_then(|gs| gs.open_restart.as_ref())
                    .is_none_or(|o| now.since(o.at) >= RESTART_SETTLE)
            })
            .cloned()
            .collect();
        for g in settled {
            self.restarting.remove(&g);
            if let Some(gs) = self.gangs.get_mut(&g) {
                gs.open_restart = None;
            }
        }
        if s.hang_timeout > Duration::ZERO {
            let hung: Vec<(GangId, Time)> = self
                .progressing
                .iter()
                .filter_map(|g| {
                    let gs = self.gangs.get(g)?;
                    let last = gs.last_progress?;
                    (gs.open_restart.is_none() && !gs.members.is_empty() && now.since(last) >= s.hang_timeout)
                        .then(|| (g.clone(), last))
                })
                .collect();
            for (g, last) in hung {
                let reason = format!("no progress for {:.0}s", now.since(last).as_secs_f64());
                self.restart_hung_gang(&g, last, &reason, now, out);
            }
        }
        if now.since(self.last_prune) >= Duration::from_hours(1) {
            self.last_prune = now;
            let horizon = now - ISSUED_MEMORY;
            self.issued.retain(|_, t| *t >= horizon);
            self.seen_incidents.retain(|_, t| *t >= horizon);
            self.vanished.retain(|_, (t, _)| *t >= horizon);
            let hour = now - Duration::from_hours(1);
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
        }
    }

    /// The class a hang is blamed on: the worst device health among the gang's members.
    fn gang_device_class(&self, g: &GangId) -> FailureClass {
        if !self.gangs.contains_key(g) {
            return FailureClass::Application;
        }
        let mut class = FailureClass::Application;
        for k in &self.unwell {
            let Some(d) = self.devices.get(k) else { continue };
            if !matches!(d.health, Health::Unhealthy | Health::Degraded) {
                continue;
            }
            let held =
                d.pods.iter().any(|uid| self.pods.get(uid).is_some_and(|p| p.gang.as_ref() == Some(g)));
            match d.health {
                Health::Unhealthy if held => return FailureClass::DeviceFailure,
                Health::Degraded if held => class = FailureClass::DeviceDegraded,
                _ => {}
            }
        }
        class
    }

    // ---------------------------------------------------------------- decisions

    fn device_failed(
        &mut self,
        key: &DeviceKey,
        incident: String,
        repair: RepairKind,
        reason: String,
        now: Time,
        out: &mut Vec<PlannedAction>,
    ) {
        let s = &self.config.safety;
        let lemon_horizon = now - s.lemon_window;
        let Some(st) = self.devices.get_mut(key) else { return };
        st.open_incident = Some(incident.clone());
        st.probation_until = None;
        self.probation.remove(key);
        st.incident_times.push_back(now);
        while st.incident_times.front().is_some_and(|t| *t < lemon_horizon) {
            st.incident_times.pop_front();
        }
        self.record_failure(&key.node, now, out);
        // Keep new pods off the device first, then recover the workload, then repair.
        let repair = if self.is_lemon(key) { RepairKind::InspectHardware } else { repair };
        self.remediate_device(key, &incident, repair, &reason, now, out);
        let bound: Vec<String> = self.devices.get(key).map(|d| d.pods.clone()).unwrap_or_default();
        for uid in bound {
            let Some(p) = self.pods.get(&uid) else { continue };
            if matches!(p.info.phase, PodPhase::Succeeded | PodPhase::Failed) {
                continue;
            }
            if !self.config.safety.evict_pods_on_unhealthy_devices && p.gang.is_none() {
                continue;
            }
            let verdict = self.verdict(&p.info.to_pod_info(&uid), now);
            if verdict.class == FailureClass::DeviceFailure {
                self.decide_pod(&uid, None, verdict, Some(incident.clone()), now, out);
            }
        }
    }

    fn is_lemon(&self, key: &DeviceKey) -> bool {
        self.devices
            .get(key)
            .is_some_and(|d| d.incident_times.len() >= self.config.safety.lemon_incidents.max(1) as usize)
    }

    fn device_degraded(&mut self, key: &DeviceKey, now: Time, out: &mut Vec<PlannedAction>) {
        // Count the episode (once, by its start) and quarantine a device that keeps degrading.
        let s = &self.config.safety;
        let (limit, horizon) = (s.degraded_episodes_to_quarantine as usize, now - s.lemon_window);
        let mut repeat = None;
        if let Some(d) = self.devices.get_mut(key) {
            if d.degraded_episodes.back() != Some(&d.since) {
                d.degraded_episodes.push_back(d.since);
            }
            while d.degraded_episodes.front().is_some_and(|t| *t < horizon) {
                d.degraded_episodes.pop_front();
            }
            if limit > 0 && d.degraded_episodes.len() >= limit && !d.quarantined {
                repeat = Some((d.degraded_episodes.len(), d.since));
            }
        }
        if let Some((episodes, since)) = repeat {
            let days = self.config.safety.lemon_window.as_secs_f64() / 86_400.0;
            let reason = format!("Degraded {episodes} times within {days:.0} days");
            let incident = format!("degraded-repeat/{key}/{}", since.as_nanos());
            self.remediate_device(key, &incident, RepairKind::InspectHardware, &reason, now, out);
        }
        let bound: Vec<String> = self.devices.get(key).map(|d| d.pods.clone()).unwrap_or_default();
        for uid in bound {
            let Some(p) = self.pods.get(&uid) else { continue };
            if p.info.phase != PodPhase::Running {
                continue;
            }
            let verdict = self.verdict(&p.info.to_pod_info(&uid), now);
            if verdict.class == FailureClass::DeviceDegraded {
                // One decision per pod and episode, however many of its devices are Degraded
                // (decide_pod names the episode by its earliest Degraded device).
                self.decide_pod(&uid, None, verdict, None, now, out);
            }
        }
    }

    fn device_recovered(&mut self, key: &DeviceKey, now: Time) {
        let probation = self.config.safety.probation;
        let Some(st) = self.devices.get_mut(key) else { return };
        st.open_incident = None;
        st.recovered_at = now;
        st.incidents.clear();
        self.pending_devices.remove(key);
        if st.quarantined {
            st.probation_until = Some(now + probation);
            self.probation.insert(key.clone());
        }
    }

    fn node_incident(&mut self, inc: KernelIncident, now: Time, out: &mut Vec<PlannedAction>) {
        let device_fault =
            matches!(inc.attribution, Attribution::Device | Attribution::Interconnect | Attribution::Host);
        if !device_fault || inc.health != Health::Unhealthy {
            return;
        }
        let Some(ns) = self.nodes.get_mut(&inc.node) else { return };
        if ns.open_incident.is_some() {
            return;
        }
        ns.open_incident = Some(inc.id.clone());
        let node = inc.node.clone();
        self.record_failure(&node, now, out);
        let reason = format!("{}: {}", inc.kind, inc.summary);
        if let Some(hold) = self.node_held(&node) {
            self.report_hold(out, hold, &node, format!("node {node}: {reason}"), now);
            return;
        }
        self.cordon(&node, &inc.id, &reason, now, out);
        if self.config.safety.request_repairs && inc.action > RepairKind::RestartApp {
            let key = format!("repair/{node}/{}", inc.id);
            let action = Action::RequestRepair {
                node: node.clone(),
                device: None,
                kind: inc.action,
                reason: reason.clone(),
            };
            self.emit(out, key, action, FailureClass::DeviceFailure, now);
        }
        let mut pods: Vec<String> =
            self.node_devices(&node).flat_map(|(_, d)| d.pods.iter().cloned()).collect();
        pods.sort();
        pods.dedup();
        for uid in pods {
            let Some(p) = self.pods.get(&uid) else { continue };
            if matches!(p.info.phase, PodPhase::Succeeded | PodPhase::Failed) || p.info.devices.is_empty() {
                continue;
            }
            let mut verdict = self.verdict(&p.info.to_pod_info(&uid), now);
            verdict.class = FailureClass::DeviceFailure;
            verdict.confidence = verdict.confidence.max(0.8);
            verdict.failing = true;
            verdict.evidence.insert(0, format!("node {node} incident {}: {}", inc.id, reason));
            self.decide_pod(&uid, None, verdict, Some(inc.id.clone()), now, out);
        }
    }

    fn cordon(&mut self, node: &str, incident: &str, reason: &str, now: Time, out: &mut Vec<PlannedAction>) {
        let already = self.nodes.get(node).is_some_and(|n| n.cordoned);
        if already {
            return;
        }
        if !self.quarantined_nodes.contains_key(node)
            && self.quarantined_nodes.len() >= self.quarantine_node_limit()
        {
            let key = format!("budget/cordon/{node}/{incident}");
            let msg = format!(
                "not cordoning {node}: {} nodes already quarantined (limit {})",
                self.quarantined_nodes.len(),
                self.quarantine_node_limit()
            );
            self.report(out, key, "QuarantineBudgetExhausted", msg, now);
            return;
        }
        let key = format!("cordon/{node}/{incident}");
        let action = Action::CordonNode { node: node.to_string(), reason: reason.to_string() };
        if self.emit(out, key, action, FailureClass::DeviceFailure, now) {
            *self.quarantined_nodes.entry(node.to_string()).or_default() += 1;
            if let Some(ns) = self.nodes.get_mut(node) {
                ns.cordoned = true;
            }
        }
    }

    /// Quarantine a device and request its repair, within the budget and unless held.
    fn remediate_device(
        &mut self,
        key: &DeviceKey,
        incident: &str,
        repair: RepairKind,
        reason: &str,
        now: Time,
        out: &mut Vec<PlannedAction>,
    ) {
        if let Some(hold) = self.node_held(&key.node) {
            self.pending_devices.insert(key.clone(), (incident.to_string(), repair, reason.to_string()));
            self.report_hold(out, hold, &key.node, format!("device {key}: {reason}"), now);
            return;
        }
        let s = self.config.safety.clone();
        let quarantined = self.devices.get(key).is_some_and(|d| d.quarantined);
        if s.quarantine_unhealthy_devices && !quarantined {
            let node_counted = self.quarantined_nodes.contains_key(&key.node);
            if !node_counted && self.quarantined_nodes.len() >= self.quarantine_node_limit() {
                self.pending_devices.insert(key.clone(), (incident.to_string(), repair, reason.to_string()));
                let msg = format!(
                    "not quarantining {key}: {} nodes already quarantined (limit {})",
                    self.quarantined_nodes.len(),
                    self.quarantine_node_limit()
                );
                self.report(
                    out,
                    format!("budget/quarantine/{key}/{incident}"),
                    "QuarantineBudgetExhausted",
                    msg,
                    now,
                );
                return;
            }
            let action = Action::QuarantineDevice { device: key.clone(), reason: reason.to_string() };
            if self.emit(
                out,
                format!("quarantine/{key}/{incident}"),
                action,
                FailureClass::DeviceFailure,
                now,
            ) {
                *self.quarantined_nodes.entry(key.node.clone()).or_default() += 1;
                if let Some(d) = self.devices.get_mut(key) {
                    d.quarantined = true;
                }
            }
        }
        if s.request_repairs && repair > RepairKind::RestartApp {
            let action = Action::RequestRepair {
                node: key.node.clone(),
                device: Some(key.clone()),
                kind: repair,
                reason: if repair == RepairKind::InspectHardware {
                    format!(
                        "{reason} (repeat offender: {} incidents within {:.0}h)",
                        self.devices.get(key).map_or(0, |d| d.incident_times.len()),
                        s.lemon_window.as_secs_f64() / 3600.0
                    )
                } else {
                    reason.to_string()
                },
            };
            self.emit(out, format!("repair/{key}/{incident}"), action, FailureClass::DeviceFailure, now);
        }
    }

    /// Apply the policy to a pod's failure.
    /// `full` is the pod as just reported (for rules on exit codes and conditions); without
    /// it the stored lean pod is used.
    fn decide_pod(
        &mut self,
        uid: &str,
        full: Option<&PodInfo>,
        verdict: Verdict,
        incident: Option<String>,
        now: Time,
        out: &mut Vec<PlannedAction>,
    ) {
        let Some(p) = self.pods.get(uid) else { return };
        let stored;
        let info = match full {
            Some(f) => f,
            None => {
                stored = p.info.to_pod_info(uid);
                &stored
            }
        };
        let policy = self.policy_for(info);
        let Some(rule) = policy.first_match(info, &verdict) else { return };
        if rule.action == RuleAction::Ignore {
            return;
        }
        let policy_id = policy.id();
        // The failure's identity: the device incident behind it, or the pod's own failure.
        let device_incident = verdict
            .suspect_devices
            .iter()
            .find_map(|k| self.devices.get(k).and_then(|d| d.open_incident.clone()));
        let restarts = p.restarts;
        // A slow-down is one episode of its device, however the pod comes to be decided (the
        // device turning Degraded, a Tick once it lasted, an update of the pod itself).
        let degraded_episode = (verdict.class == FailureClass::DeviceDegraded)
            .then(|| {
                verdict
                    .suspect_devices
                    .iter()
                    .filter_map(|k| self.devices.get(k))
                    .filter(|d| d.health == Health::Degraded)
                    .map(|d| d.since)
                    .min()
            })
            .flatten()
            .map(|since| format!("degraded/{uid}/{}", since.as_nanos()));
        let identity = incident
            .or(device_incident.clone())
            .or(degraded_episode)
            .unwrap_or_else(|| format!("pod/{uid}/{restarts}/{}", verdict.class.as_str()));
        if p.decided.contains(&identity) {
            return;
        }
        if rule.action == RuleAction::ReplaceAtCheckpoint {
            // Not before the slow-down has lasted `degraded_replace_after` (a Tick looks again).
            let after = self.config.safety.degraded_replace_after;
            let lasted = verdict
                .suspect_devices
                .iter()
                .filter_map(|k| self.devices.get(k))
                .any(|d| d.health == Health::Degraded && now.since(d.since) >= after);
            if !lasted {
                return;
            }
        }
        let rule = rule.clone();
        let gang = p.gang.clone();
        let terminal = matches!(info.phase, PodPhase::Succeeded | PodPhase::Failed);
        let pref = pod_ref(info);
        let node = info.node.clone();
        let owner = info.owner.clone();
        let namespace = info.namespace.clone();
        let Some(p) = self.pods.get_mut(uid) else { return };
        p.decided.insert(identity.clone());
        // Failures not already counted through a device incident feed the breaker.
        if device_incident.is_none()
            && matches!(verdict.class, FailureClass::DeviceFailure | FailureClass::Infrastructure)
            && let Some(n) = &node
        {
            self.record_failure(n, now, out);
        }
        let class = verdict.class;
        let summary = verdict.evidence.first().cloned().unwrap_or_default();
        let reason = format!("{}: {summary}", camel(class));
        // What follows carries out the rule: attributed to its policy (the breaker's report
        // above is the engine's own).
        self.acting_for = Some(policy_id);
        self.mark(&pref, &rule, class, &identity, &summary, now, out);
        match rule.action {
            RuleAction::Ignore | RuleAction::MarkPod => {}
            RuleAction::EvictPod => {
                if !terminal {
                    self.evict(uid, &identity, &reason, class, now, out);
                }
            }
            RuleAction::ReplaceAtCheckpoint => {
                if let (Some(g), false) = (&gang, terminal) {
                    let devices = verdict.suspect_devices.clone();
                    self.replace_at_checkpoint(uid, g, devices, &identity, &reason, class, now, out);
                }
            }
            RuleAction::RestartGang => match &gang {
                Some(g) => self.restart_gang(g, &identity, &reason, class, now, out),
                None if !terminal => self.evict(uid, &identity, &reason, class, now, out),
                None => {}
            },
            RuleAction::QuarantineDevice => {
                for k in &verdict.suspect_devices {
                    self.remediate_device(k, &identity, RepairKind::None, &reason, now, out);
                }
            }
            RuleAction::CordonNode => {
                if let Some(n) = &node {
                    if let Some(hold) = self.node_held(n) {
                        self.report_hold(out, hold, n, reason.clone(), now);
                    } else {
                        self.cordon(n, &identity, &reason, now, out);
                    }
                }
            }
            RuleAction::RequestRepair => {
                let kind = rule.repair.unwrap_or(RepairKind::ResetDevice);
                if let Some(n) = &node {
                    if let Some(hold) = self.node_held(n) {
                        self.report_hold(out, hold, n, reason.clone(), now);
                    } else {
                        let device = verdict.suspect_devices.first().cloned();
                        let action =
                            Action::RequestRepair { node: n.clone(), device, kind, reason: reason.clone() };
                        self.emit(out, format!("repair/{n}/{identity}"), action, class, now);
                    }
                }
            }
            RuleAction::FailWorkload => {
                let g = gang.unwrap_or_else(|| {
                    let (kind, name) = owner.unwrap_or_else(|| ("Pod".to_string(), pref.name.clone()));
                    GangId { namespace, kind: kind.to_ascii_lowercase(), name }
                });
                let action = Action::FailWorkload { gang: g.clone(), reason };
                self.emit(out, format!("fail-workload/{g}/{identity}"), action, class, now);
            }
        }
        self.acting_for = None;
    }

    #[allow(clippy::too_many_arguments)]
    fn mark(
        &mut self,
        pod: &PodRef,
        rule: &PolicyRule,
        class: FailureClass,
        identity: &str,
        summary: &str,
        now: Time,
        out: &mut Vec<PlannedAction>,
    ) {
        let condition_type = rule.condition_type_for(class);
        let key = format!("mark/{}/{condition_type}/{identity}", pod.uid);
        let action = Action::MarkPod {
            pod: pod.clone(),
            condition_type,
            reason: camel(class).to_string(),
            message: summary.to_string(),
        };
        self.emit(out, key, action, class, now);
    }

    /// The pod's reference, unless remediation of its node is held (then the hold is reported
    /// as "not <doing> ns/name" and there is nothing to do).
    fn pod_unless_held(
        &mut self,
        uid: &str,
        doing: &str,
        now: Time,
        out: &mut Vec<PlannedAction>,
    ) -> Option<PodRef> {
        let p = self.pods.get(uid)?;
        let pref = p.info.pod_ref(uid);
        let node = p.info.node.clone().unwrap_or_default();
        if let Some(hold) = self.node_held(&node) {
            let what = format!("not {doing} {}/{}", pref.namespace, pref.name);
            self.report_hold(out, hold, &node, what, now);
            return None;
        }
        Some(pref)
    }

    /// Take one restart from the gang's hourly budget, or say how many it already had.
    fn take_gang_restart(&mut self, g: &GangId, now: Time) -> Result<(), usize> {
        let max = self.config.safety.max_gang_restarts_per_hour as usize;
        let hour = now - Duration::from_hours(1);
        let Some(gs) = self.gangs.get_mut(g) else { return Err(0) };
        while gs.restarts.front().is_some_and(|t| *t <= hour) {
            gs.restarts.pop_front();
        }
        if gs.restarts.len() >= max {
            return Err(gs.restarts.len());
        }
        gs.restarts.push_back(now);
        Ok(())
    }

    fn evict(
        &mut self,
        uid: &str,
        identity: &str,
        reason: &str,
        class: FailureClass,
        now: Time,
        out: &mut Vec<PlannedAction>,
    ) {
        let Some(pref) = self.pod_unless_held(uid, "evicting", now, out) else { return };
        let minute = now - Duration::from_mins(1);
        while self.evictions.front().is_some_and(|t| *t <= minute) {
            self.evictions.pop_front();
        }
        let key = format!("evict/{uid}/{identity}");
        if self.issued.contains_key(&key) {
            return;
        }
        if self.evictions.len() >= self.config.safety.max_evictions_per_minute as usize {
            let pending = PendingEviction {
                identity: identity.to_string(),
                reason: reason.to_string(),
                class,
                policy: self.acting_for.clone(),
            };
            self.pending_evictions.insert(uid.to_string(), pending);
            let msg = format!(
                "eviction of {}/{} deferred: {} evictions in the last minute (limit {})",
                pref.namespace,
                pref.name,
                self.evictions.len(),
                self.config.safety.max_evictions_per_minute
            );
            self.report(out, format!("budget/evict/{uid}/{identity}"), "EvictionBudgetExhausted", msg, now);
            return;
        }
        let action = Action::EvictPod { pod: pref, reason: reason.to_string() };
        if self.emit(out, key, action, class, now) {
            self.evictions.push_back(now);
        }
    }

    /// Plan the replacement of a slow gang member at the gang's next checkpoint: one at a time
    /// per gang and incident, held like any remediation, and within the gang restart budget
    /// (the replacement is a restart from that checkpoint).
    #[allow(clippy::too_many_arguments)]
    fn replace_at_checkpoint(
        &mut self,
        uid: &str,
        g: &GangId,
        devices: Vec<DeviceKey>,
        identity: &str,
        reason: &str,
        class: FailureClass,
        now: Time,
        out: &mut Vec<PlannedAction>,
    ) {
        let Some(pref) = self.pod_unless_held(uid, "replacing at the next checkpoint", now, out) else {
            return;
        };
        let key = format!("replace/{uid}/{identity}");
        if self.issued.contains_key(&key) {
            return;
        }
        // The gang restarting anyway: the member is replaced if its device is quarantined or it
        // fails again; a second restart is not worth it.
        if self.gangs.get(g).is_none_or(|gs| gs.open_restart.is_some()) {
            return;
        }
        if let Err(restarts) = self.take_gang_restart(g, now) {
            let max = self.config.safety.max_gang_restarts_per_hour;
            let msg = format!(
                "not replacing {}/{} in gang {g}: {restarts} restarts in the last hour (limit {max}); {reason}",
                pref.namespace, pref.name
            );
            self.report(
                out,
                format!("budget/replace/{uid}/{identity}"),
                "GangRestartBudgetExhausted",
                msg,
                now,
            );
            return;
        }
        let action =
            Action::ReplaceAtCheckpoint { pod: pref, gang: g.clone(), devices, reason: reason.to_string() };
        self.emit(out, key, action, class, now);
    }

    fn restart_gang(
        &mut self,
        g: &GangId,
        incident: &str,
        reason: &str,
        class: FailureClass,
        now: Time,
        out: &mut Vec<PlannedAction>,
    ) {
        let max = self.config.safety.max_gang_restarts_per_hour as usize;
        let held = {
            let Some(gs) = self.gangs.get(g) else { return };
            if gs.open_restart.is_some() {
                // One restart per incident: this failure joins the restart already planned.
                return;
            }
            // Held when any member's node is held (breaker, version canary); with neither in
            // force, no node is held and the members need not be looked at.
            if self.breaker.open_since.is_none() && self.held_versions.is_empty() {
                None
            } else {
                gs.members
                    .iter()
                    .filter_map(|uid| self.pods.get(uid).and_then(|p| p.info.node.as_deref()))
                    .find_map(|n| self.node_held(n).map(|h| (n.to_string(), h)))
            }
        };
        if let Some((node, hold)) = held {
            self.report_hold(out, hold, &node, format!("not restarting gang {g}: {reason}"), now);
            return;
        }
        let key = format!("restart-gang/{g}/{incident}");
        if self.issued.contains_key(&key) {
            return;
        }
        if let Err(restarts) = self.take_gang_restart(g, now) {
            let msg = format!(
                "not restarting gang {g}: {restarts} restarts in the last hour (limit {max}); {reason}"
            );
            self.report(out, format!("budget/gang/{g}/{incident}"), "GangRestartBudgetExhausted", msg, now);
            return;
        }
        let Some(gs) = self.gangs.get_mut(g) else { return };
        let attempt = gs.members.iter().filter_map(|uid| self.pods.get(uid).and_then(|p| p.attempt)).max();
        gs.open_restart = Some(OpenRestart {
            incident: incident.to_string(),
            at: now,
            doomed: gs.members.clone(),
            attempt,
        });
        gs.last_progress = None;
        self.progressing.remove(g);
        self.restarting.insert(g.clone());
        let action = Action::RestartGang {
            gang: g.clone(),
            incident: incident.to_string(),
            reason: reason.to_string(),
        };
        self.emit(out, key, action, class, now);
    }

    // ---------------------------------------------------------------- breaker

    fn prune_breaker(&mut self, now: Time) {
        let horizon = now - self.config.safety.breaker_window;
        while let Some((t, _)) = self.breaker.events.front() {
            if *t >= horizon {
                break;
            }
            let Some((_, node)) = self.breaker.events.pop_front() else { break };
            let gone = match self.breaker.per_node.get_mut(&node) {
                Some((c, _)) => {
                    *c = c.saturating_sub(1);
                    *c == 0
                }
                None => false,
            };
            if gone && let Some((_, tags)) = self.breaker.per_node.remove(&node) {
                for t in tags {
                    if let Some(c) = self.breaker.per_version.get_mut(&t) {
                        *c = c.saturating_sub(1);
                        if *c == 0 {
                            self.breaker.per_version.remove(&t);
                        }
                    }
                }
            }
        }
    }

    /// Count a failure on a node; open the breaker or hold a version when failures correlate.
    fn record_failure(&mut self, node: &str, now: Time, out: &mut Vec<PlannedAction>) {
        self.prune_breaker(now);
        let s = self.config.safety.clone();
        self.breaker.last_event = Some(now);
        self.breaker.events.push_back((now, node.to_string()));
        let tags = self.nodes.get(node).and_then(|n| n.info.as_ref()).map(version_tags).unwrap_or_default();
        let entry = self.breaker.per_node.entry(node.to_string()).or_default();
        entry.0 += 1;
        let first_on_node = entry.0 == 1;
        if first_on_node {
            entry.1 = tags.clone();
            for t in &tags {
                *self.breaker.per_version.entry(t.clone()).or_default() += 1;
            }
        }
        let failed_nodes = self.breaker.per_node.len();
        let fleet = self.nodes.len().max(1);
        if self.breaker.open_since.is_none() {
            let by_percent = ((s.breaker_node_percent / 100.0) * fleet as f64).ceil() as usize;
            let threshold = by_percent.max(s.breaker_min_nodes as usize).max(1);
            if failed_nodes >= threshold {
                self.breaker.open_since = Some(now);
                let mut racks: BTreeMap<&str, usize> = BTreeMap::new();
                for n in self.breaker.per_node.keys() {
                    if let Some(r) =
                        self.nodes.get(n).and_then(|ns| ns.info.as_ref()).and_then(|i| i.rack.as_deref())
                    {
                        *racks.entry(r).or_default() += 1;
                    }
                }
                let top_rack = racks
                    .iter()
                    .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
                    .map(|(r, c)| format!("; most in rack {r} ({c} nodes)"))
                    .unwrap_or_default();
                let msg = format!(
                    "{failed_nodes} nodes failed within {:.0}s (threshold {threshold} of {fleet}){top_rack}: correlated failure (power, network, rollout), not bad devices; remediation held",
                    s.breaker_window.as_secs_f64()
                );
                self.report(out, format!("breaker-open/{}", now.as_nanos()), "BreakerOpen", msg, now);
            }
        }
        if first_on_node {
            for t in tags {
                if self.held_versions.contains(&t) {
                    continue;
                }
                let failed_v = self.breaker.per_version.get(&t).copied().unwrap_or(0) as f64;
                let total_v = self.version_nodes.get(&t).copied().unwrap_or(0).max(1) as f64;
                let other_total = fleet as f64 - total_v;
                if other_total <= 0.0 || failed_v < s.canary_min_nodes as f64 {
                    continue;
                }
                let rate_v = failed_v / total_v;
                let rate_other = (failed_nodes as f64 - failed_v).max(0.0) / other_total;
                if rate_v >= s.canary_ratio * rate_other && rate_v > rate_other {
                    self.held_versions.insert(t.clone());
                    let msg = format!(
                        "{failed_v:.0} of {total_v:.0} nodes running {t} failed within {:.0}s ({:.1}% vs {:.1}% elsewhere): an infrastructure problem of {t}; its nodes are held, not cycled",
                        s.breaker_window.as_secs_f64(),
                        rate_v * 100.0,
                        rate_other * 100.0
                    );
                    self.report(
                        out,
                        format!("version/{t}/{}", now.as_nanos()),
                        "VersionCorrelatedFailures",
                        msg,
                        now,
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod::{ContainerInfo, ContainerState};

    const GPU: &str = "nvidia.com/gpu";

    fn t(s: i64) -> Time {
        Time::from_secs(s)
    }

    fn key(node: &str, i: usize) -> DeviceKey {
        DeviceKey::new(node, GPU, format!("GPU-{node}-{i}"))
    }

    fn gang_pod(i: usize, node: &str) -> PodInfo {
        PodInfo {
            uid: format!("uid-{i}"),
            namespace: "ml".into(),
            name: format!("llama-{i}"),
            node: Some(node.into()),
            labels: [("jobset.sigs.k8s.io/jobset-name".to_string(), "llama".to_string())].into(),
            phase: PodPhase::Running,
            containers: vec![ContainerInfo {
                name: "pytorch".into(),
                state: ContainerState::Running { started_at: Some(t(0)) },
                ..ContainerInfo::default()
            }],
            devices: vec![key(node, 0)],
            start_time: Some(t(0)),
            ..PodInfo::default()
        }
    }

    fn engine_with(nodes: usize) -> Engine {
        let mut e = Engine::new(EngineConfig::default());
        for n in 0..nodes {
            let node = format!("node-{n}");
            e.handle(
                Input::NodeUpsert(NodeInfo {
                    name: node.clone(),
                    boot_id: Some("b1".into()),
                    ..NodeInfo::default()
                }),
                t(0),
            );
            let devices = (0..8)
                .map(|i| Device {
                    key: key(&node, i),
                    pci_address: Some(format!("0000:{:02x}:00.0", i + 1)),
                    vendor: crate::device::Vendor::Nvidia,
                    model: None,
                })
                .collect();
            e.handle(Input::Devices { node, devices }, t(0));
        }
        e
    }

    fn failed(mut p: PodInfo, code: i32) -> PodInfo {
        p.phase = PodPhase::Failed;
        p.containers[0].state = ContainerState::Terminated {
            exit_code: code,
            signal: None,
            reason: Some("Error".into()),
            message: None,
            finished_at: None,
        };
        p
    }

    fn count(actions: &[PlannedAction], f: impl Fn(&Action) -> bool) -> usize {
        actions.iter().filter(|a| f(&a.action)).count()
    }

    fn unhealthy(e: &mut Engine, k: DeviceKey, now: Time) -> Vec<PlannedAction> {
        e.handle(
            Input::DeviceHealth {
                device: k,
                health: Health::Unhealthy,
                reasons: vec![HealthReason {
                    source: crate::device::HealthSource::KernelLog,
                    code: Some(79),
                    message: "GPU has fallen off the bus".into(),
                    first_seen: now,
                    last_seen: now,
                    count: 1,
                }],
            },
            now,
        )
    }

    fn inventory(node: &str, skip: Option<usize>) -> Input {
        let devices = (0..8)
            .filter(|i| Some(*i) != skip)
            .map(|i| Device {
                key: key(node, i),
                pci_address: Some(format!("0000:{:02x}:00.0", i + 1)),
                vendor: crate::device::Vendor::Nvidia,
                model: None,
            })
            .collect();
        Input::Devices { node: node.into(), devices }
    }

    fn healthy(e: &mut Engine, k: DeviceKey, now: Time) -> Vec<PlannedAction> {
        e.handle(Input::DeviceHealth { device: k, health: Health::Healthy, reasons: vec![] }, now)
    }

    fn degraded(e: &mut Engine, k: DeviceKey, now: Time) -> Vec<PlannedAction> {
        let reason = HealthReason {
            source: crate::device::HealthSource::Progress,
            code: None,
            message: "straggler: 12 % slower than the gang median for 5 min".into(),
            first_seen: now,
            last_seen: now,
            count: 1,
        };
        e.handle(Input::DeviceHealth { device: k, health: Health::Degraded, reasons: vec![reason] }, now)
    }

    /// A slow member whose eight devices all turn Degraded: nothing until the slow-down has
    /// lasted `degraded_replace_after`, then one mark and one replacement at the next checkpoint
    /// (not eight), and none again for the same episode.
    #[test]
    fn a_lasting_slow_member_is_replaced_at_the_next_checkpoint_once() {
        let mut e = engine_with(2);
        for (i, node) in ["node-0", "node-1"].into_iter().enumerate() {
            let mut p = gang_pod(i, node);
            p.devices = (0..8).map(|d| key(node, d)).collect();
            e.handle(Input::PodUpsert(p), t(1));
        }
        let mut early = Vec::new();
        for d in 0..8 {
            early.extend(degraded(&mut e, key("node-0", d), t(100)));
        }
        early.extend(e.handle(Input::Tick, t(100 + 19 * 60)));
        assert!(early.is_empty(), "a 19-minute slow-down is left alone: {early:?}");
        let acts = e.handle(Input::Tick, t(100 + 20 * 60));
        let replaced: Vec<&PlannedAction> =
            acts.iter().filter(|a| matches!(a.action, Action::ReplaceAtCheckpoint { .. })).collect();
        assert_eq!(replaced.len(), 1, "{acts:?}");
        let Action::ReplaceAtCheckpoint { pod, devices, .. } = &replaced[0].action else { unreachable!() };
        assert_eq!(pod.uid, "uid-0");
        assert_eq!(devices.len(), 8, "the finding names every Degraded device of the member");
        assert_eq!(count(&acts, |a| matches!(a, Action::MarkPod { .. })), 1);
        let mut later = e.handle(Input::Tick, t(100 + 40 * 60));
        later.extend(degraded(&mut e, key("node-0", 0), t(100 + 41 * 60)));
        // The mark updates the pod; that update is the same episode, not a new decision.
        let mut p = gang_pod(0, "node-0");
        p.devices = (0..8).map(|d| key("node-0", d)).collect();
        later.extend(e.handle(Input::PodUpsert(p), t(100 + 42 * 60)));
        assert!(later.is_empty(), "one replacement per episode: {later:?}");
        assert!(!e.is_quarantined(&key("node-0", 0)));
    }

    /// The third Degraded episode of one device within the lemon window quarantines it and asks
    /// for an inspection; the first two only count.
    #[test]
    fn a_device_degraded_three_times_is_quarantined() {
        let mut e = engine_with(1);
        let k = key("node-0", 3);
        for episode in 0..3 {
            let start = t(episode * 3600);
            let acts = degraded(&mut e, k.clone(), start);
            let quarantined = count(&acts, |a| matches!(a, Action::QuarantineDevice { .. }));
            if episode < 2 {
                assert_eq!(quarantined, 0, "episode {episode}: {acts:?}");
                assert!(healthy(&mut e, k.clone(), start + Duration::from_mins(10)).is_empty());
            } else {
                assert_eq!(quarantined, 1, "{acts:?}");
                assert!(acts.iter().any(|a| matches!(
                    &a.action,
                    Action::RequestRepair { kind: RepairKind::InspectHardware, .. }
                )));
            }
        }
        assert!(e.is_quarantined(&k));
    }

    #[test]
    fn a_device_that_falls_off_the_bus_frees_its_budget_and_returns_quarantined() {
        // 20 nodes: at most 2 quarantined at once.
        let mut e = engine_with(20);
        unhealthy(&mut e, key("node-0", 0), t(2));
        assert_eq!(e.safety_state(t(2)).quarantined_nodes, 1);
        // Xid 79: the device drops out of the node's inventory.
        e.handle(inventory("node-0", Some(0)), t(3));
        assert_eq!(e.safety_state(t(3)).quarantined_nodes, 0, "a vanished device holds no budget");
        let a = unhealthy(&mut e, key("node-1", 0), t(4));
        let b = unhealthy(&mut e, key("node-2", 0), t(5));
        assert_eq!(count(&a, |a| matches!(a, Action::QuarantineDevice { .. })), 1, "{a:#?}");
        assert_eq!(count(&b, |a| matches!(a, Action::QuarantineDevice { .. })), 1, "{b:#?}");
        // It comes back after a reset: still quarantined, counted again, and released only
        // after probation.
        e.handle(inventory("node-0", None), t(50));
        assert!(e.is_quarantined(&key("node-0", 0)));
        assert_eq!(e.safety_state(t(50)).quarantined_nodes, 3);
        assert!(healthy(&mut e, key("node-0", 0), t(60)).is_empty());
        assert!(e.handle(Input::Tick, t(300)).is_empty(), "still in probation");
        let acts = e.handle(Input::Tick, t(60 + 600));
        assert_eq!(count(&acts, |a| matches!(a, Action::ReleaseDevice { .. })), 1, "{acts:#?}");
        assert!(!e.is_quarantined(&key("node-0", 0)));
        assert_eq!(e.safety_state(t(660)).quarantined_nodes, 2);
    }

    #[test]
    fn a_vanished_device_that_never_returns_is_forgotten() {
        let mut e = engine_with(20);
        unhealthy(&mut e, key("node-0", 0), t(2));
        e.handle(inventory("node-0", Some(0)), t(3));
        assert_eq!(e.vanished.len(), 1);
        e.handle(Input::Tick, t(3) + ISSUED_MEMORY + Duration::from_hours(2));
        assert!(e.vanished.is_empty());
    }

    #[test]
    fn healthy_heartbeats_do_not_postpone_release() {
        let mut e = engine_with(4);
        unhealthy(&mut e, key("node-0", 0), t(2));
        healthy(&mut e, key("node-0", 0), t(100));
        // NodeDeviceHealth republishes the full state every minute.
        for s in (160..700).step_by(60) {
            assert!(healthy(&mut e, key("node-0", 0), t(s)).is_empty());
        }
        let acts = e.handle(Input::Tick, t(100 + 600));
        assert_eq!(count(&acts, |a| matches!(a, Action::ReleaseDevice { .. })), 1, "{acts:#?}");
        assert!(!e.is_quarantined(&key("node-0", 0)));
    }

    /// 100 nodes: node-0..9 run driver 570.1 (the canary), the rest 550.9.
    fn engine_with_canary_fleet() -> Engine {
        let mut e = engine_with(100);
        for n in 0..100 {
            let v = if n < 10 { "570.1" } else { "550.9" };
            e.handle(
                Input::NodeUpsert(NodeInfo {
                    name: format!("node-{n}"),
                    boot_id: Some("b1".into()),
                    driver_version: Some(v.into()),
                    ..NodeInfo::default()
                }),
                t(1),
            );
        }
        e
    }

    #[test]
    fn version_hold_is_released_after_its_nodes_are_upgraded_or_deleted() {
        let mut e = engine_with_canary_fleet();
        for n in 0..4 {
            unhealthy(&mut e, key(&format!("node-{n}"), 0), t(10 + n as i64));
        }
        assert_eq!(e.safety_state(t(20)).held_versions, vec!["driver 570.1".to_string()]);
        // Inside the window, the failed nodes are upgraded or deleted.
        for n in 0..3 {
            e.handle(
                Input::NodeUpsert(NodeInfo {
                    name: format!("node-{n}"),
                    boot_id: Some("b1".into()),
                    driver_version: Some("580.0".into()),
                    ..NodeInfo::default()
                }),
                t(30),
            );
        }
        e.handle(Input::NodeDeleted { name: "node-3".into() }, t(31));
        let acts = e.handle(Input::Tick, t(13 + 5 * 60 + 1));
        assert_eq!(
            count(&acts, |a| matches!(a, Action::Report { reason, .. } if reason == "VersionHoldReleased")),
            1,
            "{acts:#?}"
        );
        assert!(e.safety_state(t(400)).held_versions.is_empty());
        assert!(e.breaker.per_version.is_empty(), "{:?}", e.breaker.per_version);
    }

    #[test]
    fn a_crash_looping_pod_keeps_no_identity_per_restart() {
        let policy = FailurePolicy {
            name: "mark-app".into(),
            rules: vec![PolicyRule {
                name: "mark".into(),
                on_classes: vec![FailureClass::Application],
                action: RuleAction::MarkPod,
                ..PolicyRule::default()
            }],
            ..FailurePolicy::builtin_default()
        };
        let mut e = Engine::new(EngineConfig { policies: vec![policy], ..EngineConfig::default() });
        let mut p = gang_pod(0, "node-0");
        p.labels.clear();
        e.handle(Input::PodUpsert(p.clone()), t(1));
        let mut marks = 0;
        for r in 1..=50 {
            let mut crashed = failed(p.clone(), 1);
            crashed.phase = PodPhase::Running;
            crashed.containers[0].restart_count = r;
            let acts = e.handle(Input::PodUpsert(crashed), t(i64::from(r) * 300));
            marks += count(&acts, |a| matches!(a, Action::MarkPod { .. }));
        }
        assert_eq!(marks, 50, "every restart is still decided once");
        let decided = &e.pods["uid-0"].decided;
        assert!(decided.len() <= 1, "{decided:?}");
    }

    #[test]
    fn dead_device_restarts_gang_once_and_quarantines() {
        let mut e = engine_with(100);
        for i in 0..4 {
            e.handle(Input::PodUpsert(gang_pod(i, &format!("node-{i}"))), t(1));
        }
        let acts = unhealthy(&mut e, key("node-2", 0), t(10));
        assert_eq!(count(&acts, |a| matches!(a, Action::RestartGang { .. })), 1, "{acts:#?}");
        assert_eq!(count(&acts, |a| matches!(a, Action::QuarantineDevice { .. })), 1);
        assert_eq!(
            count(&acts, |a| matches!(a, Action::RequestRepair { kind: RepairKind::ResetDevice, .. })),
            1
        );
        // The other members now fail (NCCL errors): absorbed into the same incident.
        let mut later = Vec::new();
        for i in 0..4 {
            later.extend(e.handle(Input::PodUpsert(failed(gang_pod(i, &format!("node-{i}")), 1)), t(20)));
        }
        assert_eq!(count(&later, |a| matches!(a, Action::RestartGang { .. })), 0, "{later:#?}");
    }

    #[test]
    fn rule_actions_are_attributed_to_their_policy_and_safety_actions_to_none() {
        let mut e = engine_with(10);
        let training = FailurePolicy {
            name: "training".into(),
            namespace: Some("ml".into()),
            ..FailurePolicy::builtin_default()
        };
        e.handle(Input::Policies(vec![training]), t(0));
        for i in 0..2 {
            e.handle(Input::PodUpsert(gang_pod(i, &format!("node-{i}"))), t(1));
        }
        let mut lone = gang_pod(9, "node-9");
        lone.namespace = "web".into();
        lone.labels.clear();
        e.handle(Input::PodUpsert(lone), t(1));
        let acts = unhealthy(&mut e, key("node-1", 0), t(10));
        let policy_of = |f: &dyn Fn(&Action) -> bool| -> Vec<Option<String>> {
            acts.iter().filter(|a| f(&a.action)).map(|a| a.policy.clone()).collect()
        };
        let ml = || Some("ml/training".to_string());
        assert_eq!(policy_of(&|a| matches!(a, Action::RestartGang { .. })), [ml()], "{acts:#?}");
        assert_eq!(policy_of(&|a| matches!(a, Action::MarkPod { .. })), [ml()]);
        assert_eq!(policy_of(&|a| matches!(a, Action::QuarantineDevice { .. })), [None]);
        // The pod in another namespace falls to the built-in default.
        let acts = unhealthy(&mut e, key("node-9", 0), t(20));
        let evicted: Vec<_> =
            acts.iter().filter(|a| matches!(a.action, Action::EvictPod { .. })).map(|a| &a.policy).collect();
        assert_eq!(evicted, [&Some("devheal-default".to_string())], "{acts:#?}");
        // The field is left out of the serialised form when there is none.
        let quarantine = acts.iter().find(|a| a.policy.is_none()).map(serde_json::to_value);
        assert!(quarantine.is_some_and(|v| v.is_ok_and(|v| v.get("policy").is_none())));
    }

    #[test]
    fn application_failure_takes_no_device_action() {
        let mut e = engine_with(10);
        e.handle(Input::PodUpsert(gang_pod(0, "node-0")), t(1));
        let acts = e.handle(Input::PodUpsert(failed(gang_pod(0, "node-0"), 139)), t(5));
        assert!(acts.is_empty(), "{acts:#?}");
    }

    #[test]
    fn unknown_health_does_nothing() {
        let mut e = engine_with(10);
        e.handle(Input::PodUpsert(gang_pod(0, "node-0")), t(1));
        let acts = e.handle(
            Input::DeviceHealth { device: key("node-0", 0), health: Health::Unknown, reasons: vec![] },
            t(2),
        );
        assert!(acts.is_empty());
        let acts = e.handle(Input::PodUpsert(failed(gang_pod(0, "node-0"), 1)), t(3));
        assert!(acts.is_empty(), "{acts:#?}");
    }

    #[test]
    fn kernel_incident_by_pci_address_and_stale_boot() {
        let mut e = engine_with(10);
        e.handle(Input::PodUpsert(gang_pod(0, "node-0")), t(1));
        let mut inc = KernelIncident {
            id: "node-0/b0/0000:01:00.0/79/1".into(),
            node: "node-0".into(),
            boot_id: Some("b0".into()),
            pci_address: Some("0000:01:00.0".into()),
            kind: "nvidia_xid".into(),
            code: Some(79),
            attribution: Attribution::Device,
            health: Health::Unhealthy,
            action: RepairKind::RebootNode,
            first_seen: t(2),
            last_seen: t(2),
            count: 1,
            summary: "GPU has fallen off the bus".into(),
        };
        assert!(e.handle(Input::KernelIncident(inc.clone()), t(2)).is_empty(), "earlier boot is stale");
        inc.boot_id = Some("b1".into());
        inc.id = "node-0/b1/0000:01:00.0/79/1".into();
        let acts = e.handle(Input::KernelIncident(inc.clone()), t(3));
        assert_eq!(count(&acts, |a| matches!(a, Action::RestartGang { .. })), 1, "{acts:#?}");
        assert_eq!(
            count(&acts, |a| matches!(a, Action::RequestRepair { kind: RepairKind::RebootNode, .. })),
            1
        );
        assert!(e.handle(Input::KernelIncident(inc), t(4)).is_empty(), "replayed incident");
    }

    #[test]
    fn application_xid_incident_takes_no_device_action() {
        let mut e = engine_with(10);
        e.handle(Input::PodUpsert(gang_pod(0, "node-0")), t(1));
        let inc = KernelIncident {
            id: "x13".into(),
            node: "node-0".into(),
            boot_id: Some("b1".into()),
            pci_address: Some("0000:01:00.0".into()),
            kind: "nvidia_xid".into(),
            code: Some(13),
            attribution: Attribution::Application,
            health: Health::Healthy,
            action: RepairKind::RestartApp,
            first_seen: t(2),
            last_seen: t(2),
            count: 1,
            summary: "Graphics Engine Exception".into(),
        };
        assert!(e.handle(Input::KernelIncident(inc), t(2)).is_empty());
        let acts = e.handle(Input::PodUpsert(failed(gang_pod(0, "node-0"), 134)), t(3));
        assert!(acts.is_empty(), "{acts:#?}");
        assert_eq!(e.verdict(&failed(gang_pod(0, "node-0"), 134), t(3)).class, FailureClass::Application);
    }

    #[test]
    fn hang_restarts_gang_after_timeout() {
        let mut e = engine_with(4);
        for i in 0..4 {
            e.handle(Input::PodUpsert(gang_pod(i, &format!("node-{i}"))), t(1));
        }
        for i in 0..4 {
            e.handle(
                Input::Progress { pod_uid: format!("uid-{i}"), step: 1, step_time: Duration::from_secs(1) },
                t(10),
            );
        }
        assert!(e.handle(Input::Tick, t(200)).is_empty());
        let acts = e.handle(Input::Tick, t(10 + 300));
        assert_eq!(count(&acts, |a| matches!(a, Action::RestartGang { .. })), 1, "{acts:#?}");
        assert!(e.handle(Input::Tick, t(700)).is_empty(), "no second restart without new progress");
    }

    #[test]
    fn lone_pod_on_dead_device_is_marked_and_evicted() {
        let mut e = engine_with(4);
        let mut p = gang_pod(0, "node-0");
        p.labels.clear();
        e.handle(Input::PodUpsert(p), t(1));
        let acts = unhealthy(&mut e, key("node-0", 0), t(2));
        assert_eq!(count(&acts, |a| matches!(a, Action::MarkPod { .. })), 1, "{acts:#?}");
        assert_eq!(count(&acts, |a| matches!(a, Action::EvictPod { .. })), 1);
    }

    #[test]
    fn probation_then_release() {
        let mut e = engine_with(4);
        unhealthy(&mut e, key("node-0", 0), t(2));
        assert!(e.is_quarantined(&key("node-0", 0)));
        e.handle(
            Input::DeviceHealth { device: key("node-0", 0), health: Health::Healthy, reasons: vec![] },
            t(100),
        );
        assert!(e.handle(Input::Tick, t(200)).is_empty());
        let acts = e.handle(Input::Tick, t(100 + 600));
        assert_eq!(count(&acts, |a| matches!(a, Action::ReleaseDevice { .. })), 1, "{acts:#?}");
        assert!(!e.is_quarantined(&key("node-0", 0)));
    }

    #[test]
    fn repeat_offender_escalates_to_inspection() {
        let mut e = engine_with(4);
        let mut last = Vec::new();
        for round in 0..3 {
            let base = round * 1000;
            last = unhealthy(&mut e, key("node-0", 0), t(base + 1));
            e.handle(
                Input::DeviceHealth { device: key("node-0", 0), health: Health::Healthy, reasons: vec![] },
                t(base + 2),
            );
        }
        assert_eq!(
            count(&last, |a| matches!(a, Action::RequestRepair { kind: RepairKind::InspectHardware, .. })),
            1,
            "{last:#?}"
        );
    }

    #[test]
    fn host_incident_cordons_and_a_reboot_uncordons_after_probation() {
        let mut e = engine_with(20);
        e.handle(Input::PodUpsert(gang_pod(0, "node-0")), t(1));
        let inc = KernelIncident {
            id: "mce-1".into(),
            node: "node-0".into(),
            boot_id: Some("b1".into()),
            pci_address: None,
            kind: "machine_check".into(),
            code: None,
            attribution: Attribution::Host,
            health: Health::Unhealthy,
            action: RepairKind::RebootNode,
            first_seen: t(2),
            last_seen: t(2),
            count: 1,
            summary: "Machine check: uncorrected memory error".into(),
        };
        let acts = e.handle(Input::KernelIncident(inc), t(2));
        assert_eq!(count(&acts, |a| matches!(a, Action::CordonNode { .. })), 1, "{acts:#?}");
        assert_eq!(
            count(&acts, |a| matches!(a, Action::RequestRepair { kind: RepairKind::RebootNode, .. })),
            1
        );
        assert_eq!(count(&acts, |a| matches!(a, Action::RestartGang { .. })), 1);
        let rebooted = NodeInfo { name: "node-0".into(), boot_id: Some("b2".into()), ..NodeInfo::default() };
        assert!(e.handle(Input::NodeUpsert(rebooted), t(100)).is_empty());
        assert!(e.handle(Input::Tick, t(200)).is_empty(), "still in probation");
        let acts = e.handle(Input::Tick, t(100 + 600));
        assert_eq!(count(&acts, |a| matches!(a, Action::UncordonNode { .. })), 1, "{acts:#?}");
        assert!(e.handle(Input::Tick, t(2000)).is_empty(), "uncordoned once");
    }

    #[test]
    fn breaker_opens_on_correlated_failures_and_holds() {
        let mut e = engine_with(100);
        let mut all = Vec::new();
        for n in 0..20 {
            all.extend(unhealthy(&mut e, key(&format!("node-{n}"), 0), t(10 + n as i64)));
        }
        assert_eq!(count(&all, |a| matches!(a, Action::Report { reason, .. } if reason == "BreakerOpen")), 1);
        let quarantines = count(&all, |a| matches!(a, Action::QuarantineDevice { .. }));
        assert_eq!(quarantines, 9, "the 10th failure trips the breaker");
        assert!(e.safety_state(t(40)).breaker_open);
        let acts = e.handle(Input::Tick, t(40 + 15 * 60));
        assert_eq!(
            count(&acts, |a| matches!(a, Action::Report { reason, .. } if reason == "BreakerClosed")),
            1
        );
        // Still-bad devices are remediated once the breaker closes (level-triggered).
        assert!(count(&acts, |a| matches!(a, Action::QuarantineDevice { .. })) >= 1, "{acts:#?}");
    }

    #[test]
    fn version_canary_holds_its_nodes() {
        let mut e = engine_with_canary_fleet();
        let mut all = Vec::new();
        for n in 0..4 {
            all.extend(unhealthy(&mut e, key(&format!("node-{n}"), 0), t(10 + n as i64)));
        }
        assert_eq!(
            count(
                &all,
                |a| matches!(a, Action::Report { reason, .. } if reason == "VersionCorrelatedFailures")
            ),
            1,
            "{all:#?}"
        );
        assert_eq!(
            count(&all, |a| matches!(a, Action::QuarantineDevice { .. })),
            2,
            "third failure holds the version"
        );
        assert_eq!(e.safety_state(t(20)).held_versions, vec!["driver 570.1".to_string()]);
    }
}
