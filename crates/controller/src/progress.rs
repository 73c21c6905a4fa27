//! Workload progress across a gang: the agents summarise each pod's steps per window and watch
//! each pod for silence (NodeDeviceHealth `status.workloads`); only the controller sees every
//! member of a gang, so it compares them here.
//!
//! - **Stragglers.** Each gang gets a [`GangStragglerDetector`] fed with its members' window
//!   summaries. Window `w` is judged once every member that reports windows has sent `w`, or
//!   `close_grace` after `w` ended (a member whose agent is late or gone is left out of that
//!   window, as with too few samples). A finding marks the member's devices Degraded with a
//!   `progress` reason ("straggler: 17 % slower than the gang median for 3 min …"), through the
//!   index, which merges it with the agent's own report of the device; the engine's
//!   `device_degraded` rules then decide (by default, replace the member at the next checkpoint
//!   once the slow-down has lasted `degraded_replace_after`). The reason is withdrawn when the
//!   detector clears the member or the pod goes away.
//! - **Baseline shifts.** The agent compares each pod with its own past. That is a device
//!   signal only where there is no gang to compare with (a pod outside any gang, or a gang with
//!   fewer reporting members than the straggler detector needs): a gang-wide slow-down (a slower
//!   data phase, network congestion) shifts every member's baseline and is nobody's device.
//! - **Hangs.** A gang is hung when every member that reports progress has a hang finding from
//!   its agent (each agent times the silence of its own pods, so the controller's view is not
//!   delayed by publishing), and those members are a quorum: at least `hang_quorum` (half) of
//!   the gang's pods as the engine counts them, and never fewer than two where the gang has two
//!   or more. One member going quiet while others progress is its reporter, not a hang; one
//!   report about one member (which anyone who can reach an agent could once send) cannot make
//!   a gang hung. A member whose agent reports an error reading its progress is blind, not hung,
//!   and is left out. A member's hang counts only once an earlier report showed it progressing
//!   (its first report cannot be a hang). The engine gets [`Input::Hung`] once per silence and
//!   restarts the gang.
//!
//! The monitor is pure: the controller passes the engine (for gangs and devices) and the time.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use devheal_core::{DeviceKey, Duration, Engine, GangId, HealthReason, HealthSource, Input, Time};
use devheal_detect::degradation::{
    DegradationError, DegradationFinding, DegradationKind, GangStragglerDetector, StepWindow, StragglerConfig,
};
use devheal_k8s::crd::{ProgressFinding, WorkloadProgress};
use devheal_k8s::pod::time_from_k8s;

/// Parameters of the [`ProgressMonitor`].
#[derive(Clone, Debug, PartialEq)]
pub struct ProgressSettings {
    /// The gang comparison. Its `window` is replaced by the agents' published window length.
    pub straggler: StragglerConfig,
    /// A window is judged this long after it ended even if some member has not sent it (the
    /// agents publish a closed window within seconds, or at worst with their 60 s heartbeat).
    pub close_grace: Duration,
    /// The share of a gang's pods that must report progress, and all be silent, for the gang to
    /// be hung (0 < q ≤ 1; at least two members where the gang has two).
    pub hang_quorum: f64,
}

impl Default for ProgressSettings {
    fn default() -> Self {
        ProgressSettings {
            straggler: StragglerConfig::default(),
            close_grace: Duration::from_secs(90),
            hang_quorum: 0.5,
        }
    }
}

impl ProgressSettings {
    pub fn validate(&self) -> Result<(), DegradationError> {
        self.straggler.validate()?;
        if self.close_grace.as_nanos() <= 0 {
            return Err(DegradationError::InvalidConfig {
                what: "progress close_grace",
                reason: "must be positive".into(),
            });
        }
        if !(self.hang_quorum > 0.0 && self.hang_quorum <= 1.0) {
            return Err(DegradationError::InvalidConfig {
                what: "progress hang_quorum",
                reason: format!("must be more than 0 and at most 1, not {}", self.hang_quorum),
            });
        }
        Ok(())
    }
}

/// What the monitor concluded from one update or tick.
#[derive(Debug, Default)]
pub struct ProgressEffects {
    /// For the engine: `Progress` (a member's last step advanced) and `Hung`.
    pub inputs: Vec<Input>,
    /// Progress reasons to set (`Some`) or withdraw (`None`) on devices, through
    /// [`crate::index::ClusterIndex::set_progress_reason`].
    pub device_reasons: Vec<(DeviceKey, Option<HealthReason>)>,
    /// New findings, for logs and metrics.
    pub findings: Vec<DegradationFinding>,
}

impl ProgressEffects {
    pub fn is_empty(&self) -> bool {
        self.inputs.is_empty() && self.device_reasons.is_empty() && self.findings.is_empty()
    }
}

/// A pod's uid, shared by every set that holds the pod (100,000 pods report progress in a large
/// fleet; see docs/benchmarks.md §6 for the memory).
type Uid = Arc<str>;

/// One pod that reports progress, as its agent last published it.
#[derive(Debug)]
struct Member {
    node: Arc<str>,
    gang: Option<Arc<GangId>>,
    last_progress: Option<Time>,
    /// Boxed: rare, and every followed pod would otherwise carry their size.
    hang: Option<Box<(Time, String)>>,
    baseline: Option<Box<ProgressFinding>>,
    blind: bool,
    /// The hang already sent to the engine (by its `since`).
    hang_sent: Option<Time>,
}

/// The progress reason a member's devices carry, and why.
#[derive(Debug)]
struct Marked {
    devices: Vec<DeviceKey>,
    straggler: bool,
}

#[derive(Debug)]
struct GangWatch {
    id: Arc<GangId>,
    /// Judges the windows; its configuration holds the window length, and it knows the last
    /// window judged and which members have a standing finding.
    detector: GangStragglerDetector,
    /// Window summaries not yet judged, by window index then member uid.
    pending: BTreeMap<i64, BTreeMap<Uid, StepWindow>>,
    /// Members the monitor follows (their agents publish their progress).
    members: BTreeSet<Uid>,
    /// Members that send windows.
    reporters: BTreeSet<Uid>,
    hang_sent: Option<Time>,
}

impl GangWatch {
    /// `uid` is no longer a member (gone, or moved to another gang).
    fn leave(&mut self, uid: &str) {
        self.members.remove(uid);
        self.reporters.remove(uid);
        self.detector.forget(uid);
        for w in self.pending.values_mut() {
            w.remove(uid);
        }
    }
}

/// See the module documentation.
#[derive(Debug)]
pub struct ProgressMonitor {
    settings: ProgressSettings,
    members: HashMap<Uid, Member>,
    by_node: HashMap<Arc<str>, BTreeSet<Uid>>,
    gangs: HashMap<GangId, GangWatch>,
    marked: HashMap<Uid, Marked>,
}

impl Default for ProgressMonitor {
    /// The default settings (valid: a test checks it).
    fn default() -> Self {
        ProgressMonitor {
            settings: ProgressSettings::default(),
            members: HashMap::new(),
            by_node: HashMap::new(),
            gangs: HashMap::new(),
            marked: HashMap::new(),
        }
    }
}

impl ProgressMonitor {
    pub fn new(settings: ProgressSettings) -> Result<Self, DegradationError> {
        settings.validate()?;
        Ok(ProgressMonitor { settings, ..ProgressMonitor::default() })
    }

    /// Pods followed.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Whether a pod has a standing straggler finding (for tests and `explain`).
    pub fn is_straggler(&self, uid: &str) -> bool {
        self.marked.get(uid).is_some_and(|m| m.straggler)
    }

    /// A node's agent published its workloads (an empty list: the node's object went away).
    pub fn observe_node(
        &mut self,
        node: &str,
        workloads: &[WorkloadProgress],
        engine: &Engine,
        now: Time,
    ) -> ProgressEffects {
        let mut fx = ProgressEffects::default();
        if workloads.is_empty() && !self.by_node.contains_key(node) {
            // A node without reporting pods, as before: its heartbeats cost nothing here.
            return fx;
        }
        let (node, before) = match self.by_node.remove_entry(node) {
            Some((k, set)) => (k, set),
            None => (Arc::from(node), BTreeSet::new()),
        };
        let seen: BTreeSet<Uid> = workloads
            .iter()
            .filter_map(|w| w.uid.as_deref())
            .map(|u| self.members.get_key_value(u).map(|(k, _)| k.clone()).unwrap_or_else(|| Arc::from(u)))
            .collect();
        for gone in before.difference(&seen) {
            self.forget_into(gone, &mut fx);
        }
        let mut touched: BTreeSet<Arc<GangId>> = BTreeSet::new();
        for w in workloads {
            let Some(uid) = w.uid.as_deref().and_then(|u| seen.get(u)).cloned() else { continue };
            let gang = engine.pod_gang(&uid);
            let member = self.members.entry(uid.clone()).or_insert_with(|| Member {
                node: node.clone(),
                gang: None,
                last_progress: None,
                hang: None,
                baseline: None,
                blind: false,
                hang_sent: None,
            });
            member.node = node.clone();
            if member.gang.as_deref() != gang {
                if let Some(old) = member.gang.take()
                    && let Some(gw) = self.gangs.get_mut(&*old)
                {
                    gw.leave(&uid);
                }
                member.gang = gang.map(|g| match self.gangs.get(g) {
                    Some(gw) => gw.id.clone(),
                    None => Arc::new(g.clone()),
                });
                self.unmark(&uid, &mut fx);
            }
            let Some(member) = self.members.get_mut(&uid) else { continue };
            // A hang counts only after an earlier report showed progress.
            let had_progress = member.last_progress.is_some();
            let last = w.last_progress.as_ref().map(time_from_k8s);
            if let Some(t) = last
                && member.last_progress.is_none_or(|old| t > old)
            {
                member.last_progress = Some(t);
                let step_time = w
                    .windows
                    .last()
                    .map(|x| Duration::from_nanos((x.step_seconds * 1e9) as i64))
                    .unwrap_or(Duration::ZERO);
                fx.inputs.push(Input::Progress {
                    pod_uid: uid.to_string(),
                    step: w.step.unwrap_or(w.steps),
                    step_time,
                });
            }
            member.hang = w
                .hang
                .as_ref()
                .filter(|_| had_progress)
                .map(|h| Box::new((time_from_k8s(&h.since), h.message.clone())));
            if member.hang.is_none() {
                member.hang_sent = None;
            }
            member.baseline = w.baseline_shift.clone().map(Box::new);
            member.blind = w.error.is_some();
            if let Some(g) = member.gang.clone() {
                if !self.gangs.contains_key(&*g) {
                    let window = Duration::from_secs(i64::from(w.window_seconds.max(1)));
                    let cfg = StragglerConfig { window, ..self.settings.straggler.clone() };
                    // Validated with the settings; only the window length (≥ 1 s) changed.
                    let Ok(detector) = GangStragglerDetector::new(cfg) else { continue };
                    let watch = GangWatch {
                        id: g.clone(),
                        detector,
                        pending: BTreeMap::new(),
                        members: BTreeSet::new(),
                        reporters: BTreeSet::new(),
                        hang_sent: None,
                    };
                    self.gangs.insert((*g).clone(), watch);
                }
                let Some(gw) = self.gangs.get_mut(&*g) else { continue };
                gw.members.insert(uid.clone());
                let secs = i64::from(w.window_seconds);
                let window = gw.detector.config().window;
                if secs > 0 && Duration::from_secs(secs) == window {
                    for x in &w.windows {
                        let start = time_from_k8s(&x.start);
                        let index = start.as_nanos().div_euclid(window.as_nanos());
                        if gw.detector.last_judged().is_some_and(|j| index <= j) {
                            continue;
                        }
                        let summary = StepWindow { index, samples: x.samples, location_secs: x.step_seconds };
                        gw.pending.entry(index).or_default().insert(uid.clone(), summary);
                        gw.reporters.insert(uid.clone());
                    }
                }
                touched.insert(g);
            } else {
                self.standalone(&uid, engine, &mut fx);
            }
        }
        if !seen.is_empty() {
            self.by_node.insert(node, seen);
        }
        for g in touched {
            self.judge_gang(&g, engine, now, &mut fx);
            self.check_hang(&g, engine, &mut fx);
        }
        fx
    }

    /// The pod is gone (deleted, or replaced under the same name).
    pub fn forget_pod(&mut self, uid: &str) -> ProgressEffects {
        let mut fx = ProgressEffects::default();
        if let Some(m) = self.members.get(uid)
            && let Some(set) = self.by_node.get_mut(&m.node)
        {
            set.remove(uid);
        }
        self.forget_into(uid, &mut fx);
        fx
    }

    /// Time passes: windows whose grace ran out are judged.
    pub fn tick(&mut self, engine: &Engine, now: Time) -> ProgressEffects {
        let mut fx = ProgressEffects::default();
        let grace = self.settings.close_grace;
        let due: Vec<GangId> = self
            .gangs
            .iter()
            .filter(|(_, gw)| {
                let window = gw.detector.config().window;
                gw.pending.keys().next().is_some_and(|&w| window_end(w, window) + grace <= now)
            })
            .map(|(g, _)| g.clone())
            .collect();
        for g in due {
            self.judge_gang(&g, engine, now, &mut fx);
        }
        // Gangs nobody reports for any more.
        self.gangs.retain(|_, gw| !gw.members.is_empty());
        fx
    }

    fn forget_into(&mut self, uid: &str, fx: &mut ProgressEffects) {
        let Some(m) = self.members.remove(uid) else { return };
        if let Some(g) = &m.gang
            && let Some(gw) = self.gangs.get_mut(g)
        {
            gw.leave(uid);
        }
        self.unmark(uid, fx);
    }

    /// Judges the gang's pending windows that are complete (every reporter sent them) or past
    /// their grace, oldest first; stops at the first that is neither.
    fn judge_gang(&mut self, g: &GangId, engine: &Engine, now: Time, fx: &mut ProgressEffects) {
        let grace = self.settings.close_grace;
        let min_members = self.settings.straggler.min_members;
        let Some(gw) = self.gangs.get_mut(g) else { return };
        let window = gw.detector.config().window;
        let mut found = Vec::new();
        while let Some((&w, members)) = gw.pending.first_key_value() {
            let complete = gw.reporters.iter().all(|r| members.contains_key(r));
            if !complete && window_end(w, window) + grace > now {
                break;
            }
            let Some((_, members)) = gw.pending.pop_first() else { break };
            let summaries: Vec<(Uid, StepWindow)> = members.into_iter().collect();
            // Windows are judged in order, so this cannot be out of order.
            found.extend(gw.detector.observe_window(w, &summaries).unwrap_or_default());
        }
        // Marked as stragglers, and no longer reported by the detector.
        let marked = &self.marked;
        let cleared: Vec<Uid> = gw
            .members
            .iter()
            .filter(|m| marked.get(*m).is_some_and(|x| x.straggler) && !gw.detector.is_reported(m))
            .cloned()
            .collect();
        let found: Vec<(DegradationFinding, Uid)> = found
            .into_iter()
            .filter_map(|f| {
                let uid = gw.members.get(f.subject.as_str())?.clone();
                Some((f, uid))
            })
            .collect();
        let comparable = gw.reporters.len() >= min_members;
        let members: Vec<Uid> = gw.members.iter().cloned().collect();
        for m in cleared {
            self.unmark(&m, fx);
        }
        for (mut f, uid) in found {
            let label = engine.pod_name(&uid).unwrap_or_else(|| uid.to_string());
            let reason = HealthReason {
                source: HealthSource::Progress,
                code: None,
                message: format!("straggler {label}: {}", f.evidence),
                first_seen: f.since,
                last_seen: f.detected_at,
                count: 1,
            };
            self.mark(&uid, engine, reason, true, fx);
            f.subject = label;
            fx.findings.push(f);
        }
        // Where the gang can be compared, the members' own baselines say nothing about devices.
        for m in members {
            if comparable {
                if self.marked.get(&m).is_some_and(|x| !x.straggler) {
                    self.unmark(&m, fx);
                }
            } else {
                self.standalone(&m, engine, fx);
            }
        }
    }

    /// A member with no gang to compare with: its agent's baseline-shift finding marks its
    /// devices, and its hang is its own.
    fn standalone(&mut self, uid: &Uid, engine: &Engine, fx: &mut ProgressEffects) {
        let Some(m) = self.members.get_mut(uid) else { return };
        if m.gang.is_none()
            && let Some((since, message)) = m.hang.as_deref().cloned()
            && !m.blind
            && m.hang_sent != Some(since)
        {
            m.hang_sent = Some(since);
            fx.inputs.push(Input::Hung { pod_uid: uid.to_string(), since, evidence: message });
        }
        match m.baseline.as_deref().cloned() {
            Some(b) => {
                if self.marked.contains_key(uid) {
                    return;
                }
                let label = engine.pod_name(uid).unwrap_or_else(|| uid.to_string());
                let reason = HealthReason {
                    source: HealthSource::Progress,
                    code: None,
                    message: format!("baseline shift {label}: {}", b.message),
                    first_seen: time_from_k8s(&b.since),
                    last_seen: time_from_k8s(&b.detected_at),
                    count: 1,
                };
                fx.findings.push(DegradationFinding {
                    subject: label,
                    kind: DegradationKind::BaselineShift,
                    magnitude: b.magnitude,
                    since: reason.first_seen,
                    detected_at: reason.last_seen,
                    windows: 0,
                    evidence: b.message,
                });
                self.mark(uid, engine, reason, false, fx);
            }
            None => {
                if self.marked.get(uid).is_some_and(|x| !x.straggler) {
                    self.unmark(uid, fx);
                }
            }
        }
    }

    /// Every member of the gang that reports progress (and whose agent can read it) has a hang
    /// finding: the gang is hung, once per silence.
    fn check_hang(&mut self, g: &GangId, engine: &Engine, fx: &mut ProgressEffects) {
        let Some(gw) = self.gangs.get_mut(g) else { return };
        let members = &self.members;
        let mut n = 0usize;
        let mut last: Option<Time> = None;
        let mut first: Option<(&Uid, &Member)> = None;
        for (uid, m) in gw.members.iter().filter_map(|uid| members.get(uid).map(|m| (uid, m))) {
            if m.last_progress.is_none() || m.blind {
                continue;
            }
            if m.hang.is_none() {
                return;
            }
            n += 1;
            last = last.max(m.last_progress);
            if first.is_none_or(|(u, _)| uid < u) {
                first = Some((uid, m));
            }
        }
        let (Some(since), Some((uid, m))) = (last, first) else { return };
        let size = engine.gang_size(g).max(gw.members.len());
        let quorum = ((size as f64 * self.settings.hang_quorum).ceil() as usize).max(size.min(2));
        if n < quorum {
            return;
        }
        if gw.hang_sent == Some(since) {
            return;
        }
        gw.hang_sent = Some(since);
        let agent_says = m.hang.as_deref().map(|(_, msg)| msg.as_str()).unwrap_or_default();
        let label = engine.pod_name(uid).unwrap_or_else(|| uid.to_string());
        let evidence = format!(
            "no progress from any of gang {g}'s {n} reporting members (of {size}) since their last step ({label}: {agent_says})"
        );
        fx.inputs.push(Input::Hung { pod_uid: uid.to_string(), since, evidence });
    }

    fn mark(
        &mut self,
        uid: &Uid,
        engine: &Engine,
        reason: HealthReason,
        straggler: bool,
        fx: &mut ProgressEffects,
    ) {
        let devices = engine.pod_devices(uid).to_vec();
        for d in &devices {
            fx.device_reasons.push((d.clone(), Some(reason.clone())));
        }
        self.marked.insert(uid.clone(), Marked { devices, straggler });
    }

    fn unmark(&mut self, uid: &str, fx: &mut ProgressEffects) {
        if let Some(m) = self.marked.remove(uid) {
            for d in m.devices {
                fx.device_reasons.push((d, None));
            }
        }
    }
}

fn window_end(index: i64, window: Duration) -> Time {
    Time::from_nanos(index.saturating_add(1).saturating_mul(window.as_nanos()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_settings_are_valid_and_a_bad_grace_is_named() {
        assert!(ProgressSettings::default().validate().is_ok());
        let bad = ProgressSettings { close_grace: Duration::ZERO, ..ProgressSettings::default() };
        let err = ProgressMonitor::new(bad).unwrap_err();
        assert!(err.to_string().contains("close_grace"), "{err}");
    }
}
