//! Rolling a device-stack version out: fleet-wide versus staged behind a health gate
//! (`devheal sim --rollout`, docs/simulator.md "Rollouts").
//!
//! A fleet of training gangs and spare nodes upgrades one DaemonSet of its device stack (a
//! driver container, or a device plugin) to a new version, good or bad. A bad version breaks a
//! share of the GPUs on each node that runs it, some minutes after its pod is Ready; rolling the
//! node back (its pod on the old version Ready again) mends them. Two ways to roll out:
//!
//! - **fleet-wide**: the DaemonSet's `RollingUpdate` replaces pods `max_unavailable` at a time,
//!   each as soon as the one before is Ready, and looks at nothing else; a person notices the
//!   first broken GPU after `operator.response_min` and puts the old template back, which rolls
//!   back the same way;
//! - **staged**: the DaemonSet is `OnDelete` and a [`RolloutGate`] decides each pass which pods to
//!   delete and whether to put the old template back. `devheal sim` plugs in devheal's real
//!   rollout gate (the controller's `upgrade::decide`, on an `UpgradePlan` the scenario writes);
//!   this crate knows it only through the trait.
//!
//! Gangs: a gang is interrupted when a GPU on one of its nodes breaks, or (a disruptive
//! upgrade, such as a driver's) when one of its nodes' pods is replaced. It loses the work since
//! its last checkpoint, moves members off broken nodes onto healthy spares, waits while any of
//! its nodes is broken or upgrading and no spare can take its place, then restarts
//! (`training.restart_s`). Every gang GPU-hour not spent computing after the rollout starts is
//! lost; the report also counts the GPUs that ran the new version and broke, and when the fleet
//! is on one version again.
//!
//! Time advances in steps of `step_s`; deterministic: a node's draws come from its own stream
//! (`stream(seed, "rollout:<node>:<n>")` for its n-th upgrade), so both ways of rolling out see
//! the same breakages on the same nodes.

use serde::{Deserialize, Serialize};

use devheal_core::{Duration, Time};

use crate::rng::Xoshiro256StarStar;

/// Bundled rollout scenarios: (name, YAML).
pub const BUNDLED_ROLLOUTS: [(&str, &str); 1] =
    [("bad-driver-rollout", include_str!("../rollouts/bad-driver-rollout.yaml"))];

/// A rollout scenario (the YAML file).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RolloutScenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Replacing a node's pod stops the node's GPU workloads (a driver reload).
    pub disruptive: bool,
    pub horizon_h: f64,
    /// When the new template is written.
    pub start_h: f64,
    pub step_s: f64,
    pub cluster: RolloutCluster,
    pub training: RolloutTraining,
    /// A replaced pod is Ready this long after its old pod is deleted.
    pub pod_start_s: f64,
    pub bad_version: BadVersion,
    pub fleet_wide: FleetWide,
    pub operator: Operator,
    pub staged: Staged,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RolloutCluster {
    pub gangs: u32,
    pub gang_nodes: u32,
    pub spare_nodes: u32,
    pub gpus_per_node: u32,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RolloutTraining {
    pub checkpoint_interval_min: f64,
    pub restart_s: f64,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BadVersion {
    /// Share of the GPUs of a node running the bad version that break.
    pub broken_gpu_share: f64,
    /// Mean minutes from the pod Ready to a GPU breaking (exponential).
    pub break_delay_min: f64,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FleetWide {
    /// `RollingUpdate`'s `maxUnavailable`, as a share of the nodes (at least one).
    pub max_unavailable_percent: f64,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Operator {
    /// From the first broken GPU on a node of the new version to the old template put back.
    pub response_min: f64,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Staged {
    /// How often the gate passes.
    pub pass_every_s: f64,
    /// The `UpgradePlan`'s `spec` (the DaemonSet's name is filled in).
    pub plan: serde_json::Value,
}

/// A scenario that cannot be run, naming the field.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RolloutError {
    #[error("rollout scenario {source_name}: {message}")]
    Yaml { source_name: String, message: String },
    #[error("rollout scenario {source_name}: {field}: {problem}")]
    Invalid { source_name: String, field: &'static str, problem: String },
    #[error("`{0}` is neither a bundled rollout scenario (bad-driver-rollout) nor a file")]
    Unknown(String),
}

impl RolloutScenario {
    pub fn bundled(name: &str) -> Result<RolloutScenario, RolloutError> {
        let (_, text) = BUNDLED_ROLLOUTS
            .iter()
            .find(|(n, _)| *n == name)
            .ok_or_else(|| RolloutError::Unknown(name.into()))?;
        RolloutScenario::from_yaml(text, name)
    }

    pub fn from_yaml(text: &str, source_name: &str) -> Result<RolloutScenario, RolloutError> {
        let s: RolloutScenario = serde_saphyr::from_str(text)
            .map_err(|e| RolloutError::Yaml { source_name: source_name.into(), message: e.to_string() })?;
        s.validate(source_name)?;
        Ok(s)
    }

    fn validate(&self, source_name: &str) -> Result<(), RolloutError> {
        let bad = |field: &'static str, problem: String| {
            Err(RolloutError::Invalid { source_name: source_name.into(), field, problem })
        };
        let positive = [
            ("horizon_h", self.horizon_h),
            ("step_s", self.step_s),
            ("training.checkpoint_interval_min", self.training.checkpoint_interval_min),
            ("training.restart_s", self.training.restart_s),
            ("pod_start_s", self.pod_start_s),
            ("bad_version.break_delay_min", self.bad_version.break_delay_min),
            ("fleet_wide.max_unavailable_percent", self.fleet_wide.max_unavailable_percent),
            ("operator.response_min", self.operator.response_min),
            ("staged.pass_every_s", self.staged.pass_every_s),
        ];
        for (field, v) in positive {
            if !(v.is_finite() && v > 0.0) {
                return bad(field, format!("{v} must be a positive number"));
            }
        }
        if !(self.start_h.is_finite() && self.start_h >= 0.0 && self.start_h < self.horizon_h) {
            return bad("start_h", format!("{} must be at least 0 and before horizon_h", self.start_h));
        }
        if self.step_s < 1.0 || self.horizon_h * 3600.0 / self.step_s > 1e7 {
            return bad(
                "step_s",
                format!("{} s gives too many steps (at least 1 s, at most 10^7 steps)", self.step_s),
            );
        }
        if !(0.0..=1.0).contains(&self.bad_version.broken_gpu_share) {
            return bad("bad_version.broken_gpu_share", "must be within 0 and 1".into());
        }
        if self.fleet_wide.max_unavailable_percent > 100.0 {
            return bad("fleet_wide.max_unavailable_percent", "at most 100".into());
        }
        let c = &self.cluster;
        let nodes = u64::from(c.gangs) * u64::from(c.gang_nodes) + u64::from(c.spare_nodes);
        if nodes == 0 || nodes > 100_000 {
            return bad("cluster", format!("{nodes} nodes (1 to 100,000)"));
        }
        if c.gpus_per_node == 0 || c.gpus_per_node > 64 {
            return bad("cluster.gpus_per_node", format!("{} (1 to 64)", c.gpus_per_node));
        }
        if !self.staged.plan.is_object() {
            return bad("staged.plan", "must be a map (an UpgradePlan's spec)".into());
        }
        Ok(())
    }

    pub fn nodes(&self) -> usize {
        (self.cluster.gangs * self.cluster.gang_nodes + self.cluster.spare_nodes) as usize
    }
}

/// What a node runs, as its DaemonSet pod's version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Version {
    Old,
    New,
}

/// A node as the gate sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GateNode {
    pub name: String,
    /// The version its pod runs (or will run, while the pod is replaced).
    pub version: Version,
    pub ready: bool,
    /// Pods it had (names are `<node>-<generation>`).
    pub generation: u32,
    /// GPUs its NodeDeviceHealth reports Unhealthy.
    pub unhealthy_gpus: u32,
    /// It runs a member of a training gang.
    pub gang_member: bool,
}

/// The fleet as the gate sees it at a pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GateFleet {
    /// The DaemonSet's template: the new version until someone puts the old one back.
    pub template: Version,
    /// How often the template changed since the rollout began (the old one put back: 1).
    pub template_changes: u32,
    pub gpus_per_node: u32,
    pub nodes: Vec<GateNode>,
}

/// What the gate asks of the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GateStep {
    /// Delete the node's pod: the DaemonSet controller makes one from the template.
    ReplacePod { node: usize },
    /// Put the old version's template back.
    RestoreOldTemplate,
}

/// A staged rollout's decision maker.
pub trait RolloutGate {
    fn pass(&mut self, fleet: &GateFleet, now: Time) -> Vec<GateStep>;
    /// Where the gate stands, for the report (e.g. `RolledBack: DevicesUnhealthy`).
    fn state(&self) -> String;
}

/// How the rollout is carried out.
pub enum Rollout<'a> {
    FleetWide,
    Staged(&'a mut dyn RolloutGate),
}

/// One run's figures.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RolloutRun {
    pub strategy: String,
    pub bad_version: bool,
    /// Nodes whose pod ran the new version at some point.
    pub nodes_on_new: u32,
    /// GPUs the bad version broke (each time it broke them).
    pub gpus_broken: u32,
    pub gang_interruptions: u32,
    /// Gang GPU-hours not computing from the rollout's start to the horizon.
    pub gpu_hours_lost: f64,
    /// Of which the work since the last checkpoint, thrown away at interruptions.
    pub gpu_hours_rework: f64,
    /// Hours from the start until every node runs one version again and no pod is replaced
    /// (`None`: not by the horizon).
    pub settled_after_h: Option<f64>,
    /// The version every node runs at the end (`None`: a mix).
    pub final_version: Option<Version>,
    /// The gate's last state (staged), or what the person did (fleet-wide).
    pub outcome: String,
}

/// Each node's state.
#[derive(Clone, Debug)]
struct Node {
    version: Version,
    /// Its pod is being replaced: the version the new pod runs and when it is Ready.
    pending: Option<(Version, Time)>,
    generation: u32,
    broken: u32,
    /// When each GPU the bad version will break breaks.
    breaks: Vec<Time>,
    upgrades: u32,
    gang: Option<usize>,
}

impl Node {
    fn available(&self) -> bool {
        self.broken == 0 && self.pending.is_none()
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum GangState {
    Running { last_checkpoint: Time },
    Restarting { until: Time },
    Waiting,
}

struct Gang {
    nodes: Vec<usize>,
    state: GangState,
}

/// Run one rollout of a bad or good version.
pub fn run(scenario: &RolloutScenario, seed: u64, bad: bool, rollout: Rollout<'_>) -> RolloutRun {
    Sim::new(scenario, seed, bad).run(rollout)
}

struct Sim<'a> {
    s: &'a RolloutScenario,
    seed: u64,
    bad: bool,
    nodes: Vec<Node>,
    gangs: Vec<Gang>,
    template: Version,
    template_changes: u32,
    first_break: Option<Time>,
    restored_by_person: bool,
    interruptions: u32,
    gpus_broken: u32,
    lost_ns: f64,
    rework_ns: f64,
}

fn secs(s: f64) -> Duration {
    Duration::from_nanos((s * 1e9).round() as i64)
}

impl<'a> Sim<'a> {
    fn new(s: &'a RolloutScenario, seed: u64, bad: bool) -> Sim<'a> {
        let c = &s.cluster;
        let mut nodes = Vec::with_capacity(s.nodes());
        let mut gangs = Vec::new();
        for g in 0..c.gangs as usize {
            let members: Vec<usize> =
                (0..c.gang_nodes as usize).map(|i| g * c.gang_nodes as usize + i).collect();
            gangs.push(Gang { nodes: members, state: GangState::Running { last_checkpoint: Time::ZERO } });
        }
        for i in 0..s.nodes() {
            let gang = (i < (c.gangs * c.gang_nodes) as usize).then(|| i / c.gang_nodes as usize);
            nodes.push(Node {
                version: Version::Old,
                pending: None,
                generation: 0,
                broken: 0,
                breaks: Vec::new(),
                upgrades: 0,
                gang,
            });
        }
        Sim {
            s,
            seed,
            bad,
            nodes,
            gangs,
            template: Version::New,
            template_changes: 0,
            first_break: None,
            restored_by_person: false,
            interruptions: 0,
            gpus_broken: 0,
            lost_ns: 0.0,
            rework_ns: 0.0,
        }
    }

    fn gang_gpus(&self) -> f64 {
        f64::from(self.s.cluster.gang_nodes * self.s.cluster.gpus_per_node)
    }

    fn run(mut self, mut rollout: Rollout<'_>) -> RolloutRun {
        let s = self.s;
        let start = Time::ZERO + secs(s.start_h * 3600.0);
        let end = Time::ZERO + secs(s.horizon_h * 3600.0);
        let step = secs(s.step_s);
        let pass_every = secs(s.staged.pass_every_s);
        let max_unavailable = ((s.fleet_wide.max_unavailable_percent / 100.0 * self.nodes.len() as f64)
            .floor() as usize)
            .max(1);
        // Gangs have run since 0: their checkpoints are on the interval's grid.
        let tau = secs(s.training.checkpoint_interval_min * 60.0);
        let mut now = start;
        for g in &mut self.gangs {
            let since = Duration::from_nanos(start.as_nanos() % tau.as_nanos().max(1));
            g.state = GangState::Running { last_checkpoint: start - since };
        }
        let mut next_pass = start;
        let mut settled_at = None;
        while now < end {
            // Pods becoming Ready, GPUs breaking.
            for i in 0..self.nodes.len() {
                self.advance_node(i, now);
            }
            // Who changes pods.
            match &mut rollout {
                Rollout::FleetWide => {
                    if self.bad
                        && !self.restored_by_person
                        && self.first_break.is_some_and(|t| now >= t + secs(s.operator.response_min * 60.0))
                    {
                        self.template = Version::Old;
                        self.template_changes += 1;
                        self.restored_by_person = true;
                    }
                    let mut unavailable = self.nodes.iter().filter(|n| n.pending.is_some()).count();
                    for i in 0..self.nodes.len() {
                        if unavailable >= max_unavailable {
                            break;
                        }
                        if self.nodes[i].pending.is_none() && self.nodes[i].version != self.template {
                            self.replace(i, now);
                            unavailable += 1;
                        }
                    }
                }
                Rollout::Staged(gate) => {
                    if now >= next_pass {
                        next_pass = now + pass_every;
                        let fleet = self.gate_fleet();
                        for step in gate.pass(&fleet, now) {
                            match step {
                                GateStep::ReplacePod { node } if node < self.nodes.len() => {
                                    if self.nodes[node].pending.is_none() {
                                        self.replace(node, now);
                                    }
                                }
                                GateStep::ReplacePod { .. } => {}
                                GateStep::RestoreOldTemplate => {
                                    if self.template != Version::Old {
                                        self.template = Version::Old;
                                        self.template_changes += 1;
                                    }
                                }
                            }
                        }
                    }
                }
            }
            self.gangs_step(now, step);
            let one_version =
                self.nodes.iter().all(|n| n.pending.is_none() && n.version == self.nodes[0].version)
                    && self.nodes.iter().all(|n| n.broken == 0);
            let done = one_version && (self.nodes[0].version == self.template || self.template_changes > 0);
            if done {
                settled_at.get_or_insert(now);
            } else {
                settled_at = None;
            }
            now = now + step;
        }
        let hours = |ns: f64| ns / 3.6e12;
        let final_version = self
            .nodes
            .iter()
            .all(|n| n.pending.is_none() && n.version == self.nodes[0].version)
            .then(|| self.nodes[0].version);
        let outcome = match &rollout {
            Rollout::FleetWide if self.restored_by_person => {
                format!(
                    "a person put the old template back {} min after the first broken GPU",
                    s.operator.response_min
                )
            }
            Rollout::FleetWide => "the DaemonSet rolled on".to_string(),
            Rollout::Staged(gate) => gate.state(),
        };
        RolloutRun {
            strategy: match rollout {
                Rollout::FleetWide => "fleet-wide".into(),
                Rollout::Staged(_) => "staged (devheal gate)".into(),
            },
            bad_version: self.bad,
            nodes_on_new: self.nodes.iter().filter(|n| n.upgrades > 0).count() as u32,
            gpus_broken: self.gpus_broken,
            gang_interruptions: self.interruptions,
            gpu_hours_lost: hours(self.lost_ns),
            gpu_hours_rework: hours(self.rework_ns),
            settled_after_h: settled_at.map(|t: Time| t.since(start).as_secs_f64() / 3600.0),
            final_version,
            outcome,
        }
    }

    fn gate_fleet(&self) -> GateFleet {
        GateFleet {
            template: self.template,
            template_changes: self.template_changes,
            gpus_per_node: self.s.cluster.gpus_per_node,
            nodes: self
                .nodes
                .iter()
                .enumerate()
                .map(|(i, n)| GateNode {
                    name: format!("node-{i:05}"),
                    version: n.pending.map_or(n.version, |(v, _)| v),
                    ready: n.pending.is_none(),
                    generation: n.generation,
                    unhealthy_gpus: n.broken,
                    gang_member: n.gang.is_some(),
                })
                .collect(),
        }
    }

    /// Delete node `i`'s pod: its replacement runs the template's version.
    fn replace(&mut self, i: usize, now: Time) {
        let ready_at = now + secs(self.s.pod_start_s);
        let n = &mut self.nodes[i];
        n.pending = Some((self.template, ready_at));
        n.generation += 1;
        if self.s.disruptive
            && let Some(g) = n.gang
        {
            self.interrupt(g, now);
        }
    }

    fn advance_node(&mut self, i: usize, now: Time) {
        let bad = self.bad;
        let (share, delay) = (self.s.bad_version.broken_gpu_share, self.s.bad_version.break_delay_min * 60.0);
        let gpus = self.s.cluster.gpus_per_node;
        let seed = self.seed;
        let n = &mut self.nodes[i];
        if let Some((version, ready_at)) = n.pending
            && now >= ready_at
        {
            n.pending = None;
            n.version = version;
            n.breaks.clear();
            n.broken = 0;
            if version == Version::New {
                n.upgrades += 1;
                if bad {
                    let mut rng = Xoshiro256StarStar::stream(seed, &format!("rollout:{i}:{}", n.upgrades));
                    for _ in 0..gpus {
                        // Both draws every time, so one GPU's outcome never shifts another's.
                        let breaks = rng.bernoulli(share);
                        let after = rng.exponential(delay);
                        if breaks {
                            n.breaks.push(ready_at + secs(after));
                        }
                    }
                }
            }
        }
        let due = n.breaks.iter().filter(|t| **t <= now).count() as u32;
        if due > 0 {
            n.breaks.retain(|t| *t > now);
            n.broken += due;
            self.gpus_broken += due;
            self.first_break.get_or_insert(now);
            if let Some(g) = n.gang {
                self.interrupt(g, now);
            }
        }
    }

    /// Gang `g` stops: the work since its checkpoint is lost.
    fn interrupt(&mut self, g: usize, now: Time) {
        let gpus = self.gang_gpus();
        let gang = &mut self.gangs[g];
        match gang.state {
            GangState::Running { last_checkpoint } => {
                let rework = now.since(last_checkpoint).as_nanos() as f64 * gpus;
                self.rework_ns += rework;
                self.lost_ns += rework;
                self.interruptions += 1;
            }
            GangState::Restarting { .. } => self.interruptions += 1,
            GangState::Waiting => return,
        }
        gang.state = GangState::Waiting;
    }

    fn gangs_step(&mut self, now: Time, step: Duration) {
        let gpus = self.gang_gpus();
        let tau = secs(self.s.training.checkpoint_interval_min * 60.0);
        let restart = secs(self.s.training.restart_s);
        for g in 0..self.gangs.len() {
            match self.gangs[g].state {
                GangState::Running { last_checkpoint } => {
                    if now >= last_checkpoint + tau {
                        self.gangs[g].state = GangState::Running { last_checkpoint: last_checkpoint + tau };
                    }
                    continue;
                }
                GangState::Restarting { until } => {
                    if self.gangs[g].nodes.iter().any(|&i| !self.nodes[i].available()) {
                        self.interrupt(g, now);
                    } else if now >= until {
                        self.gangs[g].state = GangState::Running { last_checkpoint: now };
                        continue;
                    }
                }
                GangState::Waiting => {}
            }
            if self.gangs[g].state == GangState::Waiting {
                // Members on broken nodes move to healthy spares (the scheduler avoids devices
                // the plugin marks Unhealthy); an upgrading node is waited for.
                for k in 0..self.gangs[g].nodes.len() {
                    let i = self.gangs[g].nodes[k];
                    if self.nodes[i].broken == 0 {
                        continue;
                    }
                    // No healthy spare now: none for the members after this one either.
                    let Some(spare) = (0..self.nodes.len())
                        .find(|&j| self.nodes[j].gang.is_none() && self.nodes[j].available())
                    else {
                        break;
                    };
                    self.nodes[i].gang = None;
                    self.nodes[spare].gang = Some(g);
                    self.gangs[g].nodes[k] = spare;
                }
                if self.gangs[g].nodes.iter().all(|&i| self.nodes[i].available()) {
                    self.gangs[g].state = GangState::Restarting { until: now + restart };
                }
            }
            self.lost_ns += step.as_nanos() as f64 * gpus;
        }
    }
}

/// The four runs `devheal sim --rollout` reports: each way of rolling out, with a bad and a
/// good version. `gate` makes a fresh staged gate per run.
pub fn compare(
    scenario: &RolloutScenario,
    seed: u64,
    gate: &mut dyn FnMut() -> Box<dyn RolloutGate>,
) -> RolloutReport {
    let mut runs = Vec::new();
    for bad in [true, false] {
        runs.push(run(scenario, seed, bad, Rollout::FleetWide));
        let mut g = gate();
        runs.push(run(scenario, seed, bad, Rollout::Staged(g.as_mut())));
    }
    RolloutReport { scenario: scenario.name.clone(), seed, nodes: scenario.nodes() as u32, runs }
}

/// `devheal sim --rollout`'s report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RolloutReport {
    pub scenario: String,
    pub seed: u64,
    pub nodes: u32,
    pub runs: Vec<RolloutRun>,
}

impl RolloutReport {
    pub fn to_table(&self) -> String {
        let mut rows = vec![[
            "strategy".to_string(),
            "version".into(),
            "nodes on new".into(),
            "GPUs broken".into(),
            "gang interruptions".into(),
            "GPU-h lost".into(),
            "of which rework".into(),
            "settled after".into(),
            "outcome".into(),
        ]];
        for r in &self.runs {
            rows.push([
                r.strategy.clone(),
                if r.bad_version { "bad".into() } else { "good".into() },
                format!("{}/{}", r.nodes_on_new, self.nodes),
                r.gpus_broken.to_string(),
                r.gang_interruptions.to_string(),
                format!("{:.0}", r.gpu_hours_lost),
                format!("{:.0}", r.gpu_hours_rework),
                match (r.settled_after_h, r.final_version) {
                    (Some(h), Some(v)) => {
                        format!("{h:.1} h on {}", if v == Version::New { "new" } else { "old" })
                    }
                    _ => "not settled".into(),
                },
                r.outcome.clone(),
            ]);
        }
        let widths: Vec<usize> =
            (0..9).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
        let mut out =
            format!("devheal sim --rollout: {} (seed {}), {} nodes\n", self.scenario, self.seed, self.nodes);
        for row in &rows {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
                .collect();
            out.push_str(cells.join("  ").trim_end());
            out.push('\n');
        }
        let lost = |bad: bool, staged: bool| {
            self.runs
                .iter()
                .find(|r| r.bad_version == bad && r.strategy.starts_with("staged") == staged)
                .map_or(0.0, |r| r.gpu_hours_lost)
        };
        out.push_str(&format!(
            "bad version: staged loses {:.0} GPU-h where fleet-wide loses {:.0}; good version: staging costs {:.0} GPU-h more and takes longer to finish\n",
            lost(true, true),
            lost(true, false),
            lost(false, true) - lost(false, false)
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gate that upgrades `canary` nodes, soaks 30 minutes, then rolls back if any upgraded
    /// node has an unhealthy GPU, else upgrades the rest: enough to test the model without the
    /// controller.
    struct CanaryGate {
        canary: usize,
        rolled_back: bool,
        ready_since: Option<Time>,
    }

    fn canary_gate() -> CanaryGate {
        CanaryGate { canary: 1, rolled_back: false, ready_since: None }
    }

    impl RolloutGate for CanaryGate {
        fn pass(&mut self, fleet: &GateFleet, now: Time) -> Vec<GateStep> {
            let upgraded: Vec<usize> = fleet
                .nodes
                .iter()
                .enumerate()
                .filter(|(_, n)| n.version == Version::New)
                .map(|(i, _)| i)
                .collect();
            if self.rolled_back || upgraded.iter().any(|&i| fleet.nodes[i].unhealthy_gpus > 0) {
                let mut steps = Vec::new();
                if fleet.template == Version::New {
                    steps.push(GateStep::RestoreOldTemplate);
                }
                self.rolled_back = true;
                steps.extend(
                    upgraded
                        .iter()
                        .filter(|&&i| fleet.nodes[i].ready)
                        .map(|&i| GateStep::ReplacePod { node: i }),
                );
                return steps;
            }
            if upgraded.len() < self.canary {
                return vec![GateStep::ReplacePod { node: upgraded.len() }];
            }
            if !upgraded.iter().all(|&i| fleet.nodes[i].ready) {
                return Vec::new();
            }
            let since = *self.ready_since.get_or_insert(now);
            if now.since(since) >= Duration::from_mins(30) {
                return (0..fleet.nodes.len())
                    .filter(|i| !upgraded.contains(i))
                    .take(8)
                    .map(|i| GateStep::ReplacePod { node: i })
                    .collect();
            }
            Vec::new()
        }

        fn state(&self) -> String {
            if self.rolled_back { "RolledBack".into() } else { "Progressing".into() }
        }
    }

    fn small() -> RolloutScenario {
        let mut s = RolloutScenario::bundled("bad-driver-rollout").expect("bundled");
        s.cluster = RolloutCluster { gangs: 4, gang_nodes: 16, spare_nodes: 8, gpus_per_node: 8 };
        s.horizon_h = 12.0;
        s
    }

    #[test]
    fn the_bundled_scenario_is_valid_and_bad_fields_are_named() {
        let s = RolloutScenario::bundled("bad-driver-rollout").expect("valid");
        assert_eq!(s.nodes(), 2_112);
        let text = include_str!("../rollouts/bad-driver-rollout.yaml").replace("step_s: 10", "step_s: 0");
        let e = RolloutScenario::from_yaml(&text, "x.yaml").unwrap_err();
        assert_eq!(e.to_string(), "rollout scenario x.yaml: step_s: 0 must be a positive number");
        let e = RolloutScenario::from_yaml("name: x\nbogus: 1\n", "y.yaml").unwrap_err();
        assert!(matches!(e, RolloutError::Yaml { .. }), "{e}");
        assert!(matches!(RolloutScenario::bundled("nope"), Err(RolloutError::Unknown(_))));
    }

    #[test]
    fn a_bad_version_fleet_wide_breaks_gpus_everywhere_and_a_person_rolls_it_back() {
        let s = small();
        let r = run(&s, 1, true, Rollout::FleetWide);
        // RollingUpdate looks at nothing: it goes on until the person's rollback 30 minutes
        // after the first GPU broke (7 nodes at a time, 5 minutes each).
        assert!(r.nodes_on_new as usize > s.nodes() / 2, "{r:?}");
        assert!(r.gpus_broken > 60, "about a quarter of the GPUs of those nodes: {r:?}");
        assert_eq!(r.final_version, Some(Version::Old), "{r:?}");
        assert!(r.outcome.contains("old template back"), "{r:?}");
        assert!(r.gang_interruptions >= 4, "every gang stopped: {r:?}");
    }

    #[test]
    fn a_gate_that_stops_at_the_canary_loses_a_fraction_of_what_fleet_wide_loses() {
        let s = small();
        let fleet = run(&s, 1, true, Rollout::FleetWide);
        let mut gate = canary_gate();
        let staged = run(&s, 1, true, Rollout::Staged(&mut gate));
        // Seed 1's canary drew no broken GPU: the next eight nodes went, then eight more before
        // the breakage showed; still a quarter of what RollingUpdate reached.
        assert!(staged.nodes_on_new * 3 < fleet.nodes_on_new, "staged {staged:?} fleet {fleet:?}");
        assert_eq!(staged.final_version, Some(Version::Old), "{staged:?}");
        assert!(staged.gpu_hours_lost * 2.0 < fleet.gpu_hours_lost, "staged {staged:?} fleet {fleet:?}");
        // A good version: both finish on the new one; fleet-wide sooner.
        let good_fleet = run(&s, 1, false, Rollout::FleetWide);
        let mut gate = canary_gate();
        let good_staged = run(&s, 1, false, Rollout::Staged(&mut gate));
        assert_eq!(
            (good_fleet.final_version, good_staged.final_version),
            (Some(Version::New), Some(Version::New))
        );
        assert_eq!(good_fleet.gpus_broken + good_staged.gpus_broken, 0);
        assert!(good_fleet.settled_after_h < good_staged.settled_after_h, "{good_fleet:?} {good_staged:?}");
    }

    #[test]
    fn runs_are_deterministic_and_the_seed_matters() {
        let s = small();
        assert_eq!(run(&s, 3, true, Rollout::FleetWide), run(&s, 3, true, Rollout::FleetWide));
        assert_ne!(run(&s, 3, true, Rollout::FleetWide), run(&s, 4, true, Rollout::FleetWide));
    }

    /// Accounting: with no rollout effect (a good version of a non-disruptive component), no
    /// gang GPU-hour is lost.
    #[test]
    fn a_good_plugin_version_costs_nothing() {
        let mut s = small();
        s.disruptive = false;
        let r = run(&s, 1, false, Rollout::FleetWide);
        assert_eq!((r.gang_interruptions, r.gpu_hours_lost), (0, 0.0), "{r:?}");
    }
}
