//! Workload progress on this node: each pod's steps, gathered into aligned windows, with a hang
//! and a baseline-shift verdict per pod, ready for `NodeDeviceHealth.status.workloads`.
//!
//! [`ProgressBook`] is pure: no I/O and no clock (every call takes `now`). Steps reach it two
//! ways: a pod posts them to the agent (`POST /v1/progress`, [`ProgressBook::report`]), or the
//! agent scrapes a cumulative metric the pod names in its annotations
//! ([`ProgressBook::scrape`]). The book only summarises: windows come from
//! [`WindowAggregator`], hangs from [`HangDetector`], shifts from a pod's own past from
//! [`BaselineShiftDetector`]; comparing a gang's members across nodes is the controller's job.
//!
//! Blind is not hung: a pod whose scrape fails carries the error and is kept out of the hang
//! detector until reads work again; its silence is then counted from the first good read.

use std::collections::{BTreeMap, VecDeque};

use devheal_core::{Duration, Time};
use devheal_detect::degradation::{
    BaselineConfig, BaselineShiftDetector, DegradationError, DegradationFinding, HangConfig, HangDetector,
    StepWindow, WindowAggregator,
};
use devheal_k8s::crd::{ProgressFinding, ProgressReporter, ProgressWindow, WorkloadProgress, k8s_time};

/// A cumulative progress reading from a pod's metrics (values summed over label sets).
pub use devheal_detect::promtext::StepReading;

/// The CRD's bound on `status.workloads`.
pub const MAX_WORKLOADS: usize = 256;
/// The CRD's bound on one workload's `windows`.
pub const MAX_WINDOWS: usize = 10;
/// A step may end at most this far after the agent's `now` (same host clock; a little slack).
const FUTURE_SLACK: Duration = Duration::from_secs(5);

/// Settings of [`ProgressBook`].
#[derive(Clone, Debug, PartialEq)]
pub struct ProgressConfig {
    /// Window length: whole seconds, 1 s to 1 h. Windows start at multiples of it since the Unix
    /// epoch, so a gang's members on different nodes line up.
    pub window: Duration,
    /// Silence longer than this (after an announced pause: past its end) is a hang.
    pub hang_timeout: Duration,
    /// The longest pause a report may announce; a longer one is cut to this (30 min by default),
    /// so that a report cannot hide a real hang for a day.
    pub max_pause: Duration,
    /// How often annotated pods are scraped (the book does not scrape; the loop does).
    pub scrape_every: Duration,
    /// The baseline-shift detector; its `window` is replaced by [`Self::window`].
    pub baseline: BaselineConfig,
    /// Most pods followed at once (the CRD allows 256 workloads).
    pub max_pods: usize,
    /// Closed windows published per pod (the CRD allows 10).
    pub windows_kept: usize,
}

impl Default for ProgressConfig {
    fn default() -> Self {
        ProgressConfig {
            window: Duration::from_secs(60),
            hang_timeout: Duration::from_secs(90),
            max_pause: Duration::from_secs(30 * 60),
            scrape_every: Duration::from_secs(10),
            baseline: BaselineConfig::default(),
            max_pods: MAX_WORKLOADS,
            windows_kept: 5,
        }
    }
}

impl ProgressConfig {
    pub fn validate(&self) -> Result<(), ProgressError> {
        let invalid = |what: &'static str, reason: String| Err(ProgressError::InvalidConfig { what, reason });
        let window = self.window.as_nanos();
        if !(1_000_000_000..=3_600_000_000_000).contains(&window) || window % 1_000_000_000 != 0 {
            return invalid(
                "progress window",
                format!("must be whole seconds from 1 s to 1 h, not {} s", self.window.as_secs_f64()),
            );
        }
        if self.hang_timeout.as_nanos() <= 0 {
            return invalid("hang timeout", "must be positive".into());
        }
        if self.scrape_every.as_nanos() <= 0 {
            return invalid("scrape interval", "must be positive".into());
        }
        if self.max_pause.as_nanos() <= 0 {
            return invalid("max pause", "must be positive".into());
        }
        if self.max_pods == 0 || self.max_pods > MAX_WORKLOADS {
            return invalid("max pods", format!("must be 1 to {MAX_WORKLOADS}, not {}", self.max_pods));
        }
        if self.windows_kept == 0 || self.windows_kept > MAX_WINDOWS {
            return invalid("windows kept", format!("must be 1 to {MAX_WINDOWS}, not {}", self.windows_kept));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ProgressError {
    #[error("invalid {what}: {reason}")]
    InvalidConfig { what: &'static str, reason: String },
    #[error(transparent)]
    Detector(#[from] DegradationError),
    #[error("already following {0} pods, the most this agent follows")]
    Full(usize),
}

/// A pod, by namespace and name (PodResources names pods so; uids come from the pod watch).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

impl PodRef {
    pub fn new(namespace: &str, name: &str) -> Self {
        PodRef { namespace: namespace.to_string(), name: name.to_string() }
    }

    /// `namespace/name`: the subject in the detectors.
    fn subject(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

impl std::fmt::Display for PodRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One step a pod reported.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepReport {
    /// The pod's own compute time for the step, in seconds (positive, finite).
    pub seconds: f64,
    /// The workload's step number, if it gives one.
    pub step: Option<u64>,
    /// When the step ended (default: when the report arrived).
    pub end: Option<Time>,
}

/// What became of a report.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReportOutcome {
    pub accepted: usize,
    /// Steps not taken: their index in the report and why.
    pub rejected: Vec<(usize, String)>,
}

#[derive(Debug)]
struct PodProgress {
    uid: Option<String>,
    reporter: ProgressReporter,
    aggregator: WindowAggregator,
    windows: VecDeque<StepWindow>,
    last_progress: Option<Time>,
    step: Option<u64>,
    steps: u64,
    paused_until: Option<Time>,
    hang: Option<DegradationFinding>,
    baseline_shift: Option<DegradationFinding>,
    error: Option<String>,
    /// The previous cumulative reading of a scraped pod.
    last_reading: Option<StepReading>,
    /// Whether the hang detector follows the pod (not before it showed progress, not while blind).
    in_hang_detector: bool,
}

/// Every followed pod's progress, and the detectors that judge it.
#[derive(Debug)]
pub struct ProgressBook {
    config: ProgressConfig,
    pods: BTreeMap<PodRef, PodProgress>,
    hang: HangDetector,
    baseline: BaselineShiftDetector,
}

impl ProgressBook {
    pub fn new(config: ProgressConfig) -> Result<Self, ProgressError> {
        config.validate()?;
        let hang = HangDetector::new(HangConfig { timeout: config.hang_timeout })?;
        let baseline =
            BaselineShiftDetector::new(BaselineConfig { window: config.window, ..config.baseline.clone() })?;
        Ok(ProgressBook { config, pods: BTreeMap::new(), hang, baseline })
    }

    pub fn config(&self) -> &ProgressConfig {
        &self.config
    }

    /// How many pods are followed.
    pub fn len(&self) -> usize {
        self.pods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }

    pub fn contains(&self, pod: &PodRef) -> bool {
        self.pods.contains_key(pod)
    }

    /// The reporter a pod was last heard through.
    pub fn reporter(&self, pod: &PodRef) -> Option<ProgressReporter> {
        self.pods.get(pod).map(|p| p.reporter)
    }

    fn entry<'a>(
        pods: &'a mut BTreeMap<PodRef, PodProgress>,
        config: &ProgressConfig,
        pod: &PodRef,
        reporter: ProgressReporter,
    ) -> Result<&'a mut PodProgress, ProgressError> {
        use std::collections::btree_map::Entry;
        let followed = pods.len();
        let state = match pods.entry(pod.clone()) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                if followed >= config.max_pods {
                    return Err(ProgressError::Full(followed));
                }
                e.insert(PodProgress {
                    uid: None,
                    reporter,
                    aggregator: WindowAggregator::new(config.window),
                    windows: VecDeque::new(),
                    last_progress: None,
                    step: None,
                    steps: 0,
                    paused_until: None,
                    hang: None,
                    baseline_shift: None,
                    error: None,
                    last_reading: None,
                    in_hang_detector: false,
                })
            }
        };
        state.reporter = reporter;
        Ok(state)
    }

    /// Steps a pod posted (`POST /v1/progress`), and an announced pause of `pause_until`.
    /// Steps are taken in the order they ended; one that ended in a window already closed, or in
    /// the future, or with a step time that is not a positive finite number, is rejected and the
    /// rest are kept.
    pub fn report(
        &mut self,
        pod: &PodRef,
        steps: &[StepReport],
        pause_until: Option<Time>,
        now: Time,
    ) -> Result<ReportOutcome, ProgressError> {
        let subject = pod.subject();
        let windows_kept = self.config.windows_kept;
        let state = Self::entry(&mut self.pods, &self.config, pod, ProgressReporter::Endpoint)?;
        let mut order: Vec<usize> = (0..steps.len()).collect();
        order.sort_by_key(|&i| steps[i].end.unwrap_or(now));
        let mut outcome = ReportOutcome::default();
        let mut closed = Vec::new();
        let mut latest: Option<(Time, Option<u64>)> = None;
        for i in order {
            let s = steps[i];
            let end = s.end.unwrap_or(now);
            if !(s.seconds.is_finite() && s.seconds > 0.0) {
                outcome.rejected.push((i, format!("seconds must be a positive number, not {}", s.seconds)));
                continue;
            }
            if end > now + FUTURE_SLACK {
                outcome.rejected.push((
                    i,
                    format!("endTime is {:.1} s after the agent's clock", end.since(now).as_secs_f64()),
                ));
                continue;
            }
            let nanos = (s.seconds * 1e9).min(i64::MAX as f64) as i64;
            match state.aggregator.push(&subject, end, Duration::from_nanos(nanos.max(1))) {
                Ok(done) => closed.extend(done),
                Err(e) => {
                    outcome.rejected.push((i, e.to_string()));
                    continue;
                }
            }
            outcome.accepted += 1;
            if latest.is_none_or(|(t, _)| end >= t) {
                latest = Some((end, s.step.or(latest.and_then(|(_, n)| n))));
            }
        }
        outcome.rejected.sort_by_key(|(i, _)| *i);
        state.steps = state.steps.saturating_add(outcome.accepted as u64);
        if let Some((end, step)) = latest {
            if step.is_some() {
                state.step = step;
            }
            Self::progressed(&mut self.hang, &subject, state, end);
        }
        // An announced pause is cut to `max_pause` from now.
        if let Some(until) = pause_until.map(|u| u.min(now + self.config.max_pause))
            && until > now
        {
            state.paused_until = Some(state.paused_until.map_or(until, |old| old.max(until)));
            if state.in_hang_detector {
                self.hang.announce_pause(&subject, until);
            }
        }
        for w in closed {
            Self::window_closed(&mut self.baseline, &subject, state, w, windows_kept);
        }
        Ok(outcome)
    }

    /// A scrape of a pod's cumulative progress metric (`Err`: why it could not be read).
    /// Durations give one step-time sample per scrape that saw steps (the mean over them);
    /// counts give progress only. A reading below the previous one is a restarted process: no
    /// sample, the next reading is measured from it.
    pub fn scrape(
        &mut self,
        pod: &PodRef,
        uid: Option<&str>,
        reading: Result<StepReading, String>,
        now: Time,
    ) -> Result<(), ProgressError> {
        let subject = pod.subject();
        let windows_kept = self.config.windows_kept;
        let state = Self::entry(&mut self.pods, &self.config, pod, ProgressReporter::Scrape)?;
        if let Some(uid) = uid {
            state.uid = Some(uid.to_string());
        }
        let reading = match reading {
            Ok(r) => r,
            Err(message) => {
                // Blind, not hung: out of the hang detector until a read works again.
                state.error = Some(message);
                state.hang = None;
                if state.in_hang_detector {
                    self.hang.forget(&subject);
                    state.in_hang_detector = false;
                }
                return Ok(());
            }
        };
        state.error = None;
        let previous = state.last_reading.replace(reading);
        let (delta_count, delta_sum) = match (previous, reading) {
            (
                Some(StepReading::Durations { count: c0, sum_seconds: s0 }),
                StepReading::Durations { count, sum_seconds },
            ) if count >= c0 && sum_seconds >= s0 => (count - c0, Some(sum_seconds - s0)),
            (Some(StepReading::Steps { count: c0 }), StepReading::Steps { count }) if count >= c0 => {
                (count - c0, None)
            }
            // The first reading, a reset counter or another kind of metric: a new base.
            _ => (0.0, None),
        };
        let mut closed = None;
        if delta_count > 0.0 && delta_count.is_finite() {
            if let Some(sum) = delta_sum {
                let seconds = sum / delta_count;
                if seconds.is_finite() && seconds > 0.0 {
                    let nanos = (seconds * 1e9).min(i64::MAX as f64) as i64;
                    match state.aggregator.push(&subject, now, Duration::from_nanos(nanos.max(1))) {
                        Ok(done) => closed = done,
                        // Only a clock that went back can cause this; the sample is lost.
                        Err(e) => state.error = Some(e.to_string()),
                    }
                }
            }
            state.steps = state.steps.saturating_add(delta_count.round() as u64);
            Self::progressed(&mut self.hang, &subject, state, now);
        } else if !state.in_hang_detector {
            // Silence is counted from the first good read of a pod that has made progress
            // (before the agent came, or before the reads failed).
            let count = match reading {
                StepReading::Durations { count, .. } | StepReading::Steps { count } => count,
            };
            if count > 0.0 {
                self.hang.progress(&subject, now);
                state.in_hang_detector = true;
            }
        }
        if let Some(w) = closed {
            Self::window_closed(&mut self.baseline, &subject, state, w, windows_kept);
        }
        Ok(())
    }

    /// A pod's posted or scraped progress. A pod's first report of progress only starts its
    /// record: its silence is judged (the hang detector follows it) from its second on, so one
    /// report about a pod, then nothing, is never a hang.
    fn progressed(hang: &mut HangDetector, subject: &str, state: &mut PodProgress, at: Time) {
        if state.last_progress.is_none() && !state.in_hang_detector {
            state.last_progress = Some(at);
            return;
        }
        hang.progress(subject, at);
        if !state.in_hang_detector
            && let Some(until) = state.paused_until.filter(|until| *until > at)
        {
            // A pause announced before the first progress: the detector did not know the pod.
            hang.announce_pause(subject, until);
        }
        state.in_hang_detector = true;
        state.hang = None;
        if state.last_progress.is_none_or(|t| at > t) {
            state.last_progress = Some(at);
        }
        if state.paused_until.is_some_and(|until| until <= at) {
            state.paused_until = None;
        }
    }

    fn window_closed(
        baseline: &mut BaselineShiftDetector,
        subject: &str,
        state: &mut PodProgress,
        window: StepWindow,
        kept: usize,
    ) {
        state.windows.push_back(window);
        while state.windows.len() > kept {
            state.windows.pop_front();
        }
        match baseline.observe_window(subject, &window) {
            Ok(Some(finding)) => state.baseline_shift = Some(finding),
            Ok(None) => {
                if !baseline.is_standing(subject) {
                    state.baseline_shift = None;
                }
            }
            // The aggregator hands windows in increasing order, so the detector cannot refuse
            // one; if it did, the pod's windows would still be published.
            Err(e) => tracing::debug!(%subject, error = %e, "baseline detector refused a window"),
        }
    }

    /// Close the windows that ended by `now`, judge them, and look for hangs. `true` when this
    /// tick closed a window or found a hang; a window that a report already closed (its pod's
    /// next step fell in a later window) is not counted here, so what to publish is decided by
    /// comparing [`Self::workloads`] with what was published, as the agent's loop does.
    pub fn tick(&mut self, now: Time) -> bool {
        let windows_kept = self.config.windows_kept;
        let mut changed = false;
        for (pod, state) in &mut self.pods {
            if let Some(w) = state.aggregator.close_if_ended(now) {
                Self::window_closed(&mut self.baseline, &pod.subject(), state, w, windows_kept);
                changed = true;
            }
            if state.paused_until.is_some_and(|until| until <= now) {
                state.paused_until = None;
            }
        }
        let findings = self.hang.check(now);
        if findings.is_empty() {
            return changed;
        }
        let mut by_subject: BTreeMap<String, &mut PodProgress> =
            self.pods.iter_mut().map(|(pod, state)| (pod.subject(), state)).collect();
        for finding in findings {
            let Some(state) = by_subject.get_mut(&finding.subject) else { continue };
            if state.error.is_none() {
                state.hang = Some(finding);
                changed = true;
            }
        }
        changed
    }

    /// Record the uid of a pod already followed.
    pub fn set_uid(&mut self, pod: &PodRef, uid: &str) {
        if let Some(state) = self.pods.get_mut(pod) {
            state.uid = Some(uid.to_string());
        }
    }

    /// Keep only the pods for which `keep` holds (the others left the node or their devices).
    pub fn retain(&mut self, mut keep: impl FnMut(&PodRef) -> bool) {
        let gone: Vec<PodRef> = self.pods.keys().filter(|p| !keep(p)).cloned().collect();
        for pod in gone {
            self.forget(&pod);
        }
    }

    /// Stop following `pod`.
    pub fn forget(&mut self, pod: &PodRef) {
        if self.pods.remove(pod).is_some() {
            let subject = pod.subject();
            self.hang.forget(&subject);
            self.baseline.forget(&subject);
        }
    }

    /// What `status.workloads` says: every followed pod, by namespace and name, at most 256.
    pub fn workloads(&self) -> Vec<WorkloadProgress> {
        let window = self.config.window;
        let window_seconds = u32::try_from(window.as_nanos() / 1_000_000_000).unwrap_or(u32::MAX);
        self.pods
            .iter()
            .take(MAX_WORKLOADS)
            .map(|(pod, s)| WorkloadProgress {
                namespace: pod.namespace.clone(),
                name: pod.name.clone(),
                uid: s.uid.clone(),
                reporter: s.reporter,
                last_progress: s.last_progress.map(k8s_time),
                step: s.step,
                steps: s.steps,
                window_seconds,
                windows: s
                    .windows
                    .iter()
                    .map(|w| ProgressWindow {
                        start: k8s_time(w.start(window)),
                        samples: w.samples,
                        step_seconds: w.location_secs,
                    })
                    .collect(),
                paused_until: s.paused_until.map(k8s_time),
                hang: s.hang.as_ref().map(finding),
                baseline_shift: s.baseline_shift.as_ref().map(finding),
                error: s.error.clone(),
            })
            .collect()
    }
}

fn finding(f: &DegradationFinding) -> ProgressFinding {
    ProgressFinding {
        since: k8s_time(f.since),
        detected_at: k8s_time(f.detected_at),
        magnitude: f.magnitude,
        message: f.evidence.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book() -> ProgressBook {
        ProgressBook::new(ProgressConfig::default()).expect("default config is valid")
    }

    fn pod() -> PodRef {
        PodRef::new("ml", "trainer-3")
    }

    fn step(seconds: f64, end_s: f64) -> StepReport {
        StepReport { seconds, step: None, end: Some(Time::from_nanos((end_s * 1e9) as i64)) }
    }

    fn t(secs: i64) -> Time {
        Time::from_secs(secs)
    }

    /// One report of a 1 s step ending each second in `[from, to)`, `now` = the last end.
    fn steps_each_second(book: &mut ProgressBook, from: i64, to: i64) {
        for s in from..to {
            let outcome = book.report(&pod(), &[step(1.0, s as f64)], None, t(s)).expect("room");
            assert_eq!(outcome.accepted, 1, "{outcome:?}");
            book.tick(t(s));
        }
    }

    #[test]
    fn a_pod_that_stops_is_hung_90_s_after_its_last_step_and_within_2_minutes() {
        let mut book = book();
        steps_each_second(&mut book, 600, 700);
        let last = t(699);
        let mut hung_at = None;
        for s in 700..=(699 + 120) {
            book.tick(t(s));
            if book.workloads()[0].hang.is_some() {
                hung_at = Some(t(s));
                break;
            }
        }
        let hung_at = hung_at.expect("reported hung within 2 minutes of the last step");
        assert_eq!(hung_at.since(last), Duration::from_secs(91), "timeout 90 s, checked each second");
        let w = &book.workloads()[0];
        let hang = w.hang.as_ref().expect("hang");
        assert_eq!(hang.since, k8s_time(last));
        assert_eq!(hang.magnitude, 1.0);
        assert!(hang.message.contains("no progress"), "{}", hang.message);
        assert_eq!(w.last_progress, Some(k8s_time(last)));
        assert_eq!(w.steps, 100);
        // The next step clears it.
        book.report(&pod(), &[step(1.0, 800.0)], None, t(800)).expect("room");
        assert!(book.workloads()[0].hang.is_none());
    }

    #[test]
    fn an_announced_pause_defers_the_hang_and_resuming_clears_it() {
        let mut book = book();
        steps_each_second(&mut book, 0, 30);
        // A checkpoint save of 5 minutes, announced with no steps.
        let outcome = book.report(&pod(), &[], Some(t(29 + 300)), t(29)).expect("room");
        assert_eq!(outcome, ReportOutcome::default());
        assert_eq!(book.workloads()[0].paused_until, Some(k8s_time(t(329))));
        for s in 30..329 + 90 {
            book.tick(t(s));
            assert!(book.workloads()[0].hang.is_none(), "hung at {s} s during an announced pause");
        }
        // Resumed before the timeout after the pause: never hung, the pause is over.
        book.report(&pod(), &[step(1.0, 400.0)], None, t(400)).expect("room");
        book.tick(t(401));
        let w = &book.workloads()[0];
        assert!(w.hang.is_none() && w.paused_until.is_none(), "{w:?}");
        // Silent past the pause and the timeout: hung.
        book.report(&pod(), &[], Some(t(500)), t(401)).expect("room");
        book.tick(t(590));
        assert!(book.workloads()[0].hang.is_none());
        book.tick(t(591));
        assert!(book.workloads()[0].hang.is_some());
    }

    /// One report about a pod (anyone can post one), then nothing, is never a hang: the pod's
    /// silence is judged from its second report on.
    #[test]
    fn a_first_report_then_silence_is_not_a_hang() {
        let mut book = book();
        book.report(&pod(), &[step(1.0, 10.0)], None, t(10)).expect("room");
        book.tick(t(10_000));
        assert!(book.workloads()[0].hang.is_none(), "one report is not a rhythm to miss");
        book.report(&pod(), &[step(1.0, 10_010.0)], None, t(10_010)).expect("room");
        book.tick(t(10_010 + 90));
        assert!(book.workloads()[0].hang.is_none());
        book.tick(t(10_010 + 91));
        assert!(book.workloads()[0].hang.is_some(), "from the second report on, silence counts");
    }

    /// A pause longer than `max_pause` is cut to it: a report cannot hide a hang for a day.
    #[test]
    fn an_announced_pause_is_capped() {
        let mut book = book();
        book.report(&pod(), &[step(1.0, 10.0)], None, t(10)).expect("room");
        book.report(&pod(), &[step(1.0, 20.0)], Some(t(20 + 86_400)), t(20)).expect("room");
        let cap = 30 * 60;
        book.tick(t(20 + cap + 90));
        assert!(book.workloads()[0].hang.is_none(), "paused for the 30 min cap, then 90 s of grace");
        book.tick(t(20 + cap + 91));
        assert!(book.workloads()[0].hang.is_some(), "the rest of the announced day does not count");
    }

    #[test]
    fn a_pause_announced_before_the_first_step_still_counts() {
        let mut book = book();
        book.report(&pod(), &[], Some(t(300)), t(0)).expect("room");
        book.report(&pod(), &[step(1.0, 10.0)], None, t(10)).expect("room");
        book.report(&pod(), &[step(1.0, 20.0)], None, t(20)).expect("room");
        book.tick(t(300 + 90));
        assert!(book.workloads()[0].hang.is_none(), "paused until 300 s, then 90 s of grace");
        book.tick(t(300 + 91));
        assert!(book.workloads()[0].hang.is_some());
    }

    #[test]
    fn windows_are_published_with_samples_and_step_seconds() {
        let mut book = book();
        // Window [600, 660): 1 s steps and one spike the interquartile mean ignores.
        let mut steps: Vec<StepReport> = (0..20).map(|i| step(1.0, 600.0 + 2.0 * f64::from(i))).collect();
        steps[7].seconds = 30.0;
        steps[3].step = Some(1200);
        let outcome = book.report(&pod(), &steps, None, t(640)).expect("room");
        assert_eq!((outcome.accepted, outcome.rejected.len()), (20, 0));
        assert!(!book.tick(t(659)), "the window is still open");
        assert!(book.workloads()[0].windows.is_empty());
        assert!(book.tick(t(660)), "a closed window is a change");
        let w = &book.workloads()[0];
        assert_eq!(w.window_seconds, 60);
        assert_eq!(w.reporter, ProgressReporter::Endpoint);
        assert_eq!(w.windows.len(), 1);
        assert_eq!(w.windows[0].start, k8s_time(t(600)));
        assert_eq!(w.windows[0].samples, 20);
        assert!((w.windows[0].step_seconds - 1.0).abs() < 1e-9, "{:?}", w.windows[0]);
        assert_eq!(w.step, Some(1200), "the latest step that gave a number");
        // Only the latest 5 closed windows are kept, oldest first.
        for minute in 11..20 {
            book.report(&pod(), &[step(2.0, minute as f64 * 60.0)], None, t(minute * 60)).expect("room");
        }
        book.tick(t(20 * 60));
        let starts: Vec<_> = book.workloads()[0].windows.iter().map(|w| w.start.clone()).collect();
        assert_eq!(starts, (15..20).map(|m| k8s_time(t(m * 60))).collect::<Vec<_>>());
    }

    #[test]
    fn late_future_and_invalid_steps_are_rejected_and_the_rest_kept() {
        let mut book = book();
        book.report(&pod(), &[step(1.0, 130.0)], None, t(130)).expect("room");
        let steps =
            [step(1.0, 131.0), step(1.0, 10.0), step(-1.0, 132.0), step(1.0, 200.0), step(f64::NAN, 133.0)];
        let outcome = book.report(&pod(), &steps, None, t(140)).expect("room");
        assert_eq!(outcome.accepted, 1);
        let rejected: Vec<usize> = outcome.rejected.iter().map(|(i, _)| *i).collect();
        assert_eq!(rejected, [1, 2, 3, 4]);
        assert!(outcome.rejected[0].1.contains("older than the window"), "{:?}", outcome.rejected);
        assert!(outcome.rejected[1].1.contains("positive"), "{:?}", outcome.rejected);
        assert!(outcome.rejected[2].1.contains("after the agent's clock"), "{:?}", outcome.rejected);
        assert_eq!(book.workloads()[0].steps, 2);
    }

    #[test]
    fn scraped_durations_become_samples_and_a_counter_reset_rebases() {
        let mut book = book();
        let d = |count: f64, sum: f64| Ok(StepReading::Durations { count, sum_seconds: sum });
        // Every 10 s: 10 more steps of 0.5 s each.
        for (i, s) in (600..=660).step_by(10).enumerate() {
            let n = 100.0 + 10.0 * i as f64;
            book.scrape(&pod(), Some("uid-1"), d(n, n * 0.5), t(s)).expect("room");
            book.tick(t(s));
        }
        let w = &book.workloads()[0];
        assert_eq!((w.reporter, w.uid.as_deref(), w.steps), (ProgressReporter::Scrape, Some("uid-1"), 60));
        assert_eq!(w.windows.len(), 1, "{w:?}");
        assert_eq!(w.windows[0].samples, 5, "one sample per scrape that saw steps (610..650)");
        assert!((w.windows[0].step_seconds - 0.5).abs() < 1e-9);
        // The process restarted: the counter went down. No sample, no progress; then deltas
        // from the new base.
        book.scrape(&pod(), None, d(5.0, 100.0), t(670)).expect("room");
        assert_eq!(book.workloads()[0].steps, 60);
        assert_eq!(book.workloads()[0].last_progress, Some(k8s_time(t(660))));
        book.scrape(&pod(), None, d(15.0, 105.0), t(680)).expect("room");
        assert_eq!(book.workloads()[0].steps, 70);
        assert_eq!(book.workloads()[0].last_progress, Some(k8s_time(t(680))));
        // No new steps is no progress.
        book.scrape(&pod(), None, d(15.0, 105.0), t(690)).expect("room");
        assert_eq!(book.workloads()[0].last_progress, Some(k8s_time(t(680))));
        book.tick(t(720));
        let w = &book.workloads()[0];
        assert_eq!(w.windows.len(), 2);
        assert_eq!((w.windows[1].samples, w.windows[1].step_seconds), (2, 0.5), "670 had none");
    }

    #[test]
    fn scrape_errors_are_blindness_never_a_hang() {
        let mut book = book();
        let steps = |count: f64| Ok(StepReading::Steps { count });
        book.scrape(&pod(), None, steps(10.0), t(0)).expect("room");
        book.scrape(&pod(), None, steps(20.0), t(10)).expect("room");
        // The pod's metrics endpoint stops answering for ten minutes.
        for s in (20..620).step_by(10) {
            book.scrape(&pod(), None, Err("connection refused".into()), t(s)).expect("room");
            book.tick(t(s));
            let w = &book.workloads()[0];
            assert!(w.hang.is_none(), "blind pod reported hung at {s} s");
            assert_eq!(w.error.as_deref(), Some("connection refused"));
        }
        // Reads work again but show no progress: silence counts from the first good read.
        book.scrape(&pod(), None, steps(20.0), t(620)).expect("room");
        assert!(book.workloads()[0].error.is_none());
        book.tick(t(710));
        assert!(book.workloads()[0].hang.is_none());
        assert!(book.tick(t(711)), "a hang appearing is a change");
        let hang = book.workloads()[0].hang.clone().expect("hung 90 s after the good read");
        assert_eq!(hang.since, k8s_time(t(620)));
        // A counter-only metric: progress, no windows.
        book.scrape(&pod(), None, steps(25.0), t(720)).expect("room");
        book.tick(t(800));
        let w = &book.workloads()[0];
        assert!(w.hang.is_none() && w.windows.is_empty(), "{w:?}");
        assert_eq!(w.steps, 15);
    }

    #[test]
    fn a_pod_that_never_progressed_is_not_hung() {
        let mut book = book();
        book.scrape(&pod(), None, Ok(StepReading::Steps { count: 0.0 }), t(0)).expect("room");
        book.tick(t(1000));
        assert!(book.workloads()[0].hang.is_none());
    }

    #[test]
    fn a_slower_pod_shows_a_baseline_shift_that_clears_when_it_recovers() {
        let mut book = book();
        let mut minute = 0;
        let mut run = |book: &mut ProgressBook, minutes: i64, seconds: f64| {
            for _ in 0..minutes {
                let steps: Vec<StepReport> =
                    (0..10).map(|i| step(seconds, (minute * 60 + 5 * i) as f64)).collect();
                book.report(&pod(), &steps, None, t(minute * 60 + 50)).expect("room");
                minute += 1;
                book.tick(t(minute * 60));
            }
        };
        run(&mut book, 20, 1.0);
        assert!(book.workloads()[0].baseline_shift.is_none());
        run(&mut book, 3, 1.3);
        let shift = book.workloads()[0].baseline_shift.clone().expect("30 % slower for 3 windows");
        assert!(shift.magnitude > 0.2, "{shift:?}");
        run(&mut book, 5, 1.0);
        assert!(book.workloads()[0].baseline_shift.is_none(), "cleared after recovery");
    }

    #[test]
    fn forgotten_pods_leave_and_the_book_is_bounded() {
        let config = ProgressConfig { max_pods: 2, ..ProgressConfig::default() };
        let mut book = ProgressBook::new(config).expect("valid");
        for name in ["b", "a"] {
            book.report(&PodRef::new("ml", name), &[step(1.0, 1.0)], None, t(1)).expect("room");
        }
        let err = book.report(&PodRef::new("ml", "c"), &[step(1.0, 1.0)], None, t(1)).unwrap_err();
        assert_eq!(err, ProgressError::Full(2));
        let names: Vec<String> = book.workloads().into_iter().map(|w| w.name).collect();
        assert_eq!(names, ["a", "b"], "sorted by namespace and name");
        book.retain(|p| p.name != "a");
        assert_eq!(book.len(), 1);
        book.forget(&PodRef::new("ml", "b"));
        assert!(book.is_empty());
        book.tick(t(1000));
        assert!(book.workloads().is_empty(), "forgotten pods are not reported hung");
    }

    #[test]
    fn bad_configs_are_refused_naming_the_setting() {
        let bad = |c: ProgressConfig| ProgressBook::new(c).unwrap_err().to_string();
        let d = ProgressConfig::default;
        assert!(
            bad(ProgressConfig { window: Duration::from_millis(1500), ..d() }).contains("progress window")
        );
        assert!(bad(ProgressConfig { window: Duration::from_hours(2), ..d() }).contains("progress window"));
        assert!(bad(ProgressConfig { hang_timeout: Duration::ZERO, ..d() }).contains("hang timeout"));
        assert!(bad(ProgressConfig { scrape_every: Duration::ZERO, ..d() }).contains("scrape interval"));
        assert!(bad(ProgressConfig { max_pods: 300, ..d() }).contains("max pods"));
        assert!(bad(ProgressConfig { windows_kept: 11, ..d() }).contains("windows kept"));
        let baseline = BaselineConfig { threshold: 0.0, ..BaselineConfig::default() };
        assert!(bad(ProgressConfig { baseline, ..d() }).contains("threshold"));
    }
}
