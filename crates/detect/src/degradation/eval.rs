//! Scores the degradation detectors on labelled traces from [`super::trace`]: per slow-down
//! magnitude, precision, recall within a deadline and detection delay; false findings per 1,000
//! device-days on clean traces; hang detection delay. Behind `devheal degradation-eval`.
//!
//! Trace sets, each `gangs` traces of `length`: one clean set (realistic noise, no injections),
//! one set per magnitude (slow-downs on single members) and one hang set. A finding is *true*
//! when it names a member with an injected slow-down and is raised between the injection's
//! start and its end plus `grace`; every other finding is false. An injection is *recalled* when
//! a true finding of that detector arrives within `recall_within` of its start.

use devheal_core::{Duration, Time};
use serde::Serialize;

use super::trace::{SplitMix64, Trace, TraceConfig, TraceLabels};
use super::{
    BaselineConfig, BaselineShiftDetector, DegradationError, DegradationFinding, DegradationKind,
    GangStragglerDetector, HangConfig, HangDetector, StragglerConfig, require,
};

/// What to evaluate.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalConfig {
    pub seed: u64,
    /// Traces per set.
    pub gangs: usize,
    /// The shape of every trace (members, length, noise); injections are set per trace set.
    pub trace: TraceConfig,
    pub magnitudes: Vec<f64>,
    pub slowdowns_per_day: u32,
    pub hangs_per_day: u32,
    pub straggler: StragglerConfig,
    pub baseline: BaselineConfig,
    pub hang: HangConfig,
    pub recall_within: Duration,
    /// Findings this long after an injection ended still count as true.
    pub grace: Duration,
    /// How often the hang detector is polled.
    pub hang_poll: Duration,
    /// Whether the simulated workload announces each checkpoint pause to the hang detector
    /// (at its start, with its end).
    pub announce_checkpoints: bool,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            seed: 1,
            gangs: 8,
            trace: TraceConfig { length: Duration::from_hours(48), ..TraceConfig::default() },
            magnitudes: vec![0.05, 0.10, 0.20, 0.50],
            slowdowns_per_day: 8,
            hangs_per_day: 8,
            straggler: StragglerConfig::default(),
            baseline: BaselineConfig::default(),
            hang: HangConfig::default(),
            recall_within: Duration::from_mins(5),
            grace: Duration::from_mins(3),
            hang_poll: Duration::from_secs(5),
            announce_checkpoints: true,
        }
    }
}

/// One detector on one magnitude.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BucketScore {
    pub detector: DegradationKind,
    pub magnitude: f64,
    pub injected: usize,
    pub recalled: usize,
    pub recall: f64,
    pub findings: usize,
    pub true_findings: usize,
    /// `None` when the detector raised nothing.
    pub precision: Option<f64>,
    /// Delay from injection start to the first true finding, over all detected injections.
    pub delay_p50_s: Option<f64>,
    pub delay_p95_s: Option<f64>,
}

/// False findings on clean traces.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CleanScore {
    pub device_days: f64,
    pub straggler_findings: usize,
    pub baseline_shift_findings: usize,
    pub hang_findings: usize,
    pub per_1000_device_days: f64,
}

/// Hang detection on the hang traces.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HangScore {
    pub injected: usize,
    pub detected: usize,
    /// From the gang's last progress to the first hang finding.
    pub delay_p50_s: Option<f64>,
    pub delay_p99_s: Option<f64>,
    pub delay_max_s: Option<f64>,
    /// Straggler or baseline-shift findings on the hang traces (all false).
    pub other_findings: usize,
}

/// The whole evaluation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EvalReport {
    pub seed: u64,
    pub gangs: usize,
    pub members: usize,
    pub trace_hours: f64,
    pub buckets: Vec<BucketScore>,
    pub clean: CleanScore,
    pub hang: HangScore,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum TraceSet {
    Clean,
    Slowdown(f64),
    Hang,
}

struct TraceOutcome {
    set: TraceSet,
    labels: TraceLabels,
    findings: Vec<DegradationFinding>,
}

/// Runs every trace through the detectors on `threads` threads and scores them. Deterministic
/// for a given configuration, whatever the thread count.
pub fn evaluate(config: &EvalConfig, threads: usize) -> Result<EvalReport, DegradationError> {
    require(config.gangs >= 1, "eval gangs", "must be ≥ 1")?;
    require(config.hang_poll.as_nanos() > 0, "eval hang_poll", "must be positive")?;
    config.trace.validate()?;
    config.straggler.validate()?;
    config.baseline.validate()?;
    config.hang.validate()?;
    let days = config.trace.length.as_secs_f64() / 86_400.0;
    let per_trace = |per_day: u32| ((f64::from(per_day) * days).round() as u32).max(1);
    let mut jobs: Vec<(TraceSet, TraceConfig, u64)> = Vec::new();
    let mut seeds = SplitMix64::new(config.seed);
    let mut sets = vec![TraceSet::Clean];
    sets.extend(config.magnitudes.iter().map(|&m| TraceSet::Slowdown(m)));
    sets.push(TraceSet::Hang);
    for set in sets {
        for _ in 0..config.gangs {
            let mut trace = config.trace.clone();
            trace.slowdown_magnitude = None;
            trace.slowdowns = 0;
            trace.hangs = 0;
            match set {
                TraceSet::Clean => {}
                TraceSet::Slowdown(m) => {
                    trace.slowdown_magnitude = Some(m);
                    trace.slowdowns = per_trace(config.slowdowns_per_day);
                }
                TraceSet::Hang => trace.hangs = per_trace(config.hangs_per_day),
            }
            jobs.push((set, trace, seeds.next_u64()));
        }
    }
    let threads = threads.clamp(1, jobs.len());
    let mut outcomes: Vec<Option<Result<TraceOutcome, DegradationError>>> = Vec::new();
    outcomes.resize_with(jobs.len(), || None);
    std::thread::scope(|scope| {
        let chunks = outcomes.chunks_mut(jobs.len().div_ceil(threads));
        let mut first = 0;
        for chunk in chunks {
            let start = first;
            first += chunk.len();
            let jobs = &jobs;
            scope.spawn(move || {
                for (offset, slot) in chunk.iter_mut().enumerate() {
                    let (set, trace, seed) = &jobs[start + offset];
                    *slot = Some(run_trace(config, *set, trace.clone(), *seed));
                }
            });
        }
    });
    let mut done = Vec::with_capacity(outcomes.len());
    for outcome in outcomes.into_iter().flatten() {
        done.push(outcome?);
    }
    Ok(score(config, &done))
}

fn run_trace(
    config: &EvalConfig,
    set: TraceSet,
    trace_config: TraceConfig,
    seed: u64,
) -> Result<TraceOutcome, DegradationError> {
    let names: Vec<String> = (0..trace_config.members).map(|m| format!("member-{m}")).collect();
    let end = Time::ZERO + trace_config.length;
    let mut trace = Trace::new(trace_config, seed)?;
    let mut straggler = GangStragglerDetector::new(config.straggler.clone())?;
    let mut baseline = BaselineShiftDetector::new(config.baseline.clone())?;
    let mut hang = HangDetector::new(config.hang.clone())?;
    let mut findings = Vec::new();
    let mut next_poll = Time::ZERO + config.hang_poll;
    let mut announced = 0;
    while let Some(report) = trace.next() {
        // The iterator records a checkpoint pause before it yields the first report after it;
        // announcing it now, before polling through the pause, is the same as the workload
        // announcing it when the save began.
        let pauses = &trace.labels().checkpoints;
        if config.announce_checkpoints {
            for pause in &pauses[announced..] {
                for name in &names {
                    hang.announce_pause(name, pause.end);
                }
            }
        }
        announced = pauses.len();
        while next_poll < report.at {
            findings.extend(hang.check(next_poll));
            next_poll = next_poll + config.hang_poll;
        }
        let name = &names[report.member];
        findings.extend(straggler.observe(name, report.at, report.step)?);
        findings.extend(baseline.observe(name, report.at, report.step)?);
        hang.progress(name, report.at);
    }
    while next_poll <= end {
        findings.extend(hang.check(next_poll));
        next_poll = next_poll + config.hang_poll;
    }
    findings.extend(straggler.flush());
    findings.extend(baseline.flush());
    Ok(TraceOutcome { set, labels: trace.labels().clone(), findings })
}

fn member_of(subject: &str) -> Option<usize> {
    subject.strip_prefix("member-")?.parse().ok()
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn score(config: &EvalConfig, outcomes: &[TraceOutcome]) -> EvalReport {
    let mut buckets = Vec::new();
    for &magnitude in &config.magnitudes {
        for detector in [DegradationKind::Straggler, DegradationKind::BaselineShift] {
            let mut injected = 0;
            let mut recalled = 0;
            let mut findings = 0;
            let mut true_findings = 0;
            let mut delays = Vec::new();
            for outcome in outcomes.iter().filter(|o| o.set == TraceSet::Slowdown(magnitude)) {
                let of_kind: Vec<&DegradationFinding> =
                    outcome.findings.iter().filter(|f| f.kind == detector).collect();
                findings += of_kind.len();
                let matches = |f: &DegradationFinding, s: &super::InjectedSlowdown| {
                    member_of(&f.subject) == Some(s.member)
                        && f.detected_at >= s.start
                        && f.detected_at <= s.end + config.grace
                };
                true_findings +=
                    of_kind.iter().filter(|f| outcome.labels.slowdowns.iter().any(|s| matches(f, s))).count();
                for slowdown in &outcome.labels.slowdowns {
                    injected += 1;
                    let first = of_kind.iter().filter(|f| matches(f, slowdown)).map(|f| f.detected_at).min();
                    if let Some(at) = first {
                        let delay = at.since(slowdown.start);
                        if delay <= config.recall_within {
                            recalled += 1;
                        }
                        delays.push(delay.as_secs_f64());
                    }
                }
            }
            delays.sort_by(f64::total_cmp);
            buckets.push(BucketScore {
                detector,
                magnitude,
                injected,
                recalled,
                recall: if injected == 0 { 0.0 } else { recalled as f64 / injected as f64 },
                findings,
                true_findings,
                precision: (findings > 0).then(|| true_findings as f64 / findings as f64),
                delay_p50_s: percentile(&delays, 50.0),
                delay_p95_s: percentile(&delays, 95.0),
            });
        }
    }

    let clean: Vec<&TraceOutcome> = outcomes.iter().filter(|o| o.set == TraceSet::Clean).collect();
    let count = |kind: DegradationKind| {
        clean.iter().map(|o| o.findings.iter().filter(|f| f.kind == kind).count()).sum::<usize>()
    };
    let device_days =
        clean.len() as f64 * config.trace.members as f64 * config.trace.length.as_secs_f64() / 86_400.0;
    let (straggler_findings, baseline_shift_findings, hang_findings) = (
        count(DegradationKind::Straggler),
        count(DegradationKind::BaselineShift),
        count(DegradationKind::Hang),
    );
    let total = straggler_findings + baseline_shift_findings + hang_findings;
    let clean_score = CleanScore {
        device_days,
        straggler_findings,
        baseline_shift_findings,
        hang_findings,
        per_1000_device_days: if device_days > 0.0 { total as f64 * 1000.0 / device_days } else { 0.0 },
    };

    let mut hang_delays = Vec::new();
    let mut hang_injected = 0;
    let mut other_findings = 0;
    for outcome in outcomes.iter().filter(|o| o.set == TraceSet::Hang) {
        other_findings += outcome.findings.iter().filter(|f| f.kind != DegradationKind::Hang).count();
        for hang in &outcome.labels.hangs {
            let (Some(last), Some(resumed)) = (hang.last_progress, hang.resumed_at) else { continue };
            hang_injected += 1;
            let first = outcome
                .findings
                .iter()
                .filter(|f| {
                    f.kind == DegradationKind::Hang && f.detected_at > last && f.detected_at <= resumed
                })
                .map(|f| f.detected_at)
                .min();
            if let Some(at) = first {
                hang_delays.push(at.since(last).as_secs_f64());
            }
        }
    }
    hang_delays.sort_by(f64::total_cmp);
    let hang = HangScore {
        injected: hang_injected,
        detected: hang_delays.len(),
        delay_p50_s: percentile(&hang_delays, 50.0),
        delay_p99_s: percentile(&hang_delays, 99.0),
        delay_max_s: hang_delays.last().copied(),
        other_findings,
    };

    EvalReport {
        seed: config.seed,
        gangs: config.gangs,
        members: config.trace.members,
        trace_hours: config.trace.length.as_secs_f64() / 3600.0,
        buckets,
        clean: clean_score,
        hang,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&v, 50.0), Some(2.0));
        assert_eq!(percentile(&v, 95.0), Some(4.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn zero_gangs_is_an_error() {
        let err = evaluate(&EvalConfig { gangs: 0, ..EvalConfig::default() }, 1).unwrap_err();
        assert!(err.to_string().contains("eval gangs"), "{err}");
    }
}
