//! Baseline shift detection: one device (or node, or single-replica workload) against its own
//! past, for work that has no gang to compare with.
//!
//! Per subject and window, the median step time `m` is compared with a running baseline `b`
//! (an exponentially weighted mean of earlier window medians, with half-life
//! `baseline_half_life`). A one-sided CUSUM accumulates `x = m / b − 1` beyond an allowance:
//! `S ← max(0, S + min(x, excess_cap) − allowance)`; a finding is raised when `S ≥ threshold`. The baseline learns
//! only from windows that look normal (`x < allowance`) and not while a finding stands, so a
//! slow-down is not absorbed into "normal". The finding stands until `recovery_windows` normal
//! windows in a row, then the CUSUM restarts.
//!
//! The diurnal 1–2 % throughput swing moves at most about 0.3 % per hour; an hour-scale
//! half-life tracks it with a lag far below the allowance.

use std::sync::Arc;

use devheal_core::{Duration, Time};

use super::subjects::Subjects;
use super::{
    DegradationError, DegradationFinding, DegradationKind, StepWindow, human_duration,
    interquartile_mean_in_place, percent, require, window_index,
};

/// Parameters of [`BaselineShiftDetector`]. Defaults from `devheal degradation-eval`.
#[derive(Clone, Debug, PartialEq)]
pub struct BaselineConfig {
    pub window: Duration,
    /// Half-life of the exponentially weighted baseline.
    pub baseline_half_life: Duration,
    /// Windows used only to learn the baseline (their plain mean) before any comparison.
    pub warmup_windows: u32,
    /// Relative slow-down per window that the CUSUM ignores (0.04 = 4 %).
    pub allowance: f64,
    /// Largest relative excess one window may add (before the allowance), so one freak window
    /// (a checkpoint's warm-up step and a slow batch in a short window) cannot alarm alone.
    pub excess_cap: f64,
    /// CUSUM level that raises a finding (sum of relative excess beyond the allowance).
    pub threshold: f64,
    /// Normal windows in a row that end a standing finding.
    pub recovery_windows: u32,
    /// Reports a window needs to count.
    pub min_samples: usize,
}

impl Default for BaselineConfig {
    fn default() -> Self {
        BaselineConfig {
            window: Duration::from_mins(1),
            baseline_half_life: Duration::from_hours(1),
            warmup_windows: 10,
            allowance: 0.04,
            excess_cap: 0.10,
            threshold: 0.10,
            recovery_windows: 3,
            min_samples: 3,
        }
    }
}

impl BaselineConfig {
    pub fn validate(&self) -> Result<(), DegradationError> {
        require(self.window.as_nanos() > 0, "baseline window", "must be positive")?;
        require(self.baseline_half_life.as_nanos() > 0, "baseline baseline_half_life", "must be positive")?;
        require(self.allowance.is_finite() && self.allowance >= 0.0, "baseline allowance", "must be ≥ 0")?;
        require(
            self.excess_cap.is_finite() && self.excess_cap > self.allowance,
            "baseline excess_cap",
            "must be greater than the allowance",
        )?;
        require(self.threshold.is_finite() && self.threshold > 0.0, "baseline threshold", "must be > 0")?;
        require(self.recovery_windows >= 1, "baseline recovery_windows", "must be ≥ 1")?;
        require(self.min_samples >= 1, "baseline min_samples", "must be ≥ 1")
    }

    /// Weight of a new window in the exponentially weighted baseline.
    fn alpha(&self) -> f64 {
        let ratio = self.window.as_secs_f64() / self.baseline_half_life.as_secs_f64();
        1.0 - 0.5f64.powf(ratio)
    }
}

#[derive(Debug)]
struct SubjectState {
    window: i64,
    samples: Vec<f64>,
    baseline: Option<f64>,
    windows_seen: u32,
    cusum: f64,
    run_since: Time,
    run_windows: u32,
    run_excess_sum: f64,
    standing: bool,
    calm_windows: u32,
}

/// Detects subjects whose step time rose above their own running baseline.
#[derive(Debug)]
pub struct BaselineShiftDetector {
    config: BaselineConfig,
    alpha: f64,
    subjects: Subjects<SubjectState>,
}

impl BaselineShiftDetector {
    pub fn new(config: BaselineConfig) -> Result<Self, DegradationError> {
        config.validate()?;
        let alpha = config.alpha();
        Ok(BaselineShiftDetector { config, alpha, subjects: Subjects::default() })
    }

    pub fn config(&self) -> &BaselineConfig {
        &self.config
    }

    /// Records one step of `subject` that ended at `at`. Each subject's reports must be in time
    /// order; a report in a later window closes that subject's previous window.
    pub fn observe(
        &mut self,
        subject: &str,
        at: Time,
        step: Duration,
    ) -> Result<Option<DegradationFinding>, DegradationError> {
        if step.as_nanos() <= 0 {
            return Err(DegradationError::NonPositiveStep {
                subject: subject.to_string(),
                nanos: step.as_nanos(),
            });
        }
        let window = window_index(at, self.config.window);
        let slot = match self.subjects.slot(subject) {
            Some(slot) => slot,
            None => self.add(subject, window),
        };
        let open = self.subjects[slot].window;
        if window < open {
            return Err(DegradationError::OutOfOrder {
                subject: subject.to_string(),
                at_ns: at.as_nanos(),
                closed_ns: open.saturating_mul(self.config.window.as_nanos()),
            });
        }
        let finding = if window > open { self.close_window(slot) } else { None };
        let state = &mut self.subjects[slot];
        state.window = window;
        state.samples.push(step.as_secs_f64());
        Ok(finding)
    }

    /// Judges one window of `subject` summarised elsewhere (by [`super::WindowAggregator`] on
    /// the subject's node). Each subject's windows must come in increasing order. Do not mix
    /// with [`Self::observe`] for one subject.
    pub fn observe_window(
        &mut self,
        subject: &str,
        window: &StepWindow,
    ) -> Result<Option<DegradationFinding>, DegradationError> {
        let slot = match self.subjects.slot(subject) {
            Some(slot) => {
                let open = self.subjects[slot].window;
                if window.index <= open {
                    return Err(DegradationError::OutOfOrder {
                        subject: subject.to_string(),
                        at_ns: window.index.saturating_mul(self.config.window.as_nanos()),
                        closed_ns: open.saturating_add(1).saturating_mul(self.config.window.as_nanos()),
                    });
                }
                slot
            }
            None => self.add(subject, window.index),
        };
        self.subjects[slot].window = window.index;
        let location = (window.samples as usize >= self.config.min_samples
            && window.location_secs.is_finite())
        .then_some(window.location_secs);
        Ok(self.judge(slot, location))
    }

    /// Whether `subject` has a standing finding.
    pub fn is_standing(&self, subject: &str) -> bool {
        self.subjects.slot(subject).is_some_and(|slot| self.subjects[slot].standing)
    }

    /// Stops tracking `subject`.
    pub fn forget(&mut self, subject: &str) {
        self.subjects.remove(subject);
    }

    fn add(&mut self, subject: &str, window: i64) -> usize {
        let state = SubjectState {
            window,
            samples: Vec::new(),
            baseline: None,
            windows_seen: 0,
            cusum: 0.0,
            run_since: Time::ZERO,
            run_windows: 0,
            run_excess_sum: 0.0,
            standing: false,
            calm_windows: 0,
        };
        self.subjects.add(Arc::from(subject), state)
    }

    /// Closes every subject's open window (end of a trace).
    pub fn flush(&mut self) -> Vec<DegradationFinding> {
        (0..self.subjects.len()).filter_map(|slot| self.close_window(slot)).collect()
    }

    fn close_window(&mut self, slot: usize) -> Option<DegradationFinding> {
        let min_samples = self.config.min_samples;
        let state = &mut self.subjects[slot];
        let median = if state.samples.len() >= min_samples {
            interquartile_mean_in_place(&mut state.samples)
        } else {
            None
        };
        state.samples.clear();
        self.judge(slot, median)
    }

    /// The judgement of the subject's current window, given its location (`None`: no evidence).
    fn judge(&mut self, slot: usize, median: Option<f64>) -> Option<DegradationFinding> {
        let cfg = &self.config;
        let (name, state) = self.subjects.named_mut(slot);
        let window_ns = cfg.window.as_nanos();
        let window_start = Time::from_nanos(state.window.saturating_mul(window_ns));
        let window_end = Time::from_nanos(state.window.saturating_add(1).saturating_mul(window_ns));
        let m = median?;
        let Some(baseline) = state.baseline else {
            state.baseline = Some(m);
            state.windows_seen = 1;
            return None;
        };
        state.windows_seen = state.windows_seen.saturating_add(1);
        if state.windows_seen <= cfg.warmup_windows {
            // Warm-up: the plain mean of the windows so far, so one noisy first window does not
            // set the baseline for an hour.
            let n = f64::from(state.windows_seen);
            state.baseline = Some(baseline + (m - baseline) / n);
            return None;
        }
        let x = m / baseline - 1.0;
        if state.standing {
            if x < cfg.allowance {
                state.calm_windows += 1;
                if state.calm_windows >= cfg.recovery_windows {
                    state.standing = false;
                    state.cusum = 0.0;
                    state.run_windows = 0;
                }
            } else {
                state.calm_windows = 0;
            }
            return None;
        }
        if x < cfg.allowance {
            state.baseline = Some(baseline + self.alpha * (m - baseline));
        }
        let previous = state.cusum;
        state.cusum = (state.cusum + x.min(cfg.excess_cap) - cfg.allowance).max(0.0);
        if state.cusum <= 0.0 {
            state.run_windows = 0;
            state.run_excess_sum = 0.0;
            return None;
        }
        if previous <= 0.0 {
            state.run_since = window_start;
            state.run_windows = 0;
            state.run_excess_sum = 0.0;
        }
        state.run_windows += 1;
        state.run_excess_sum += x;
        if state.cusum < cfg.threshold {
            return None;
        }
        state.standing = true;
        state.calm_windows = 0;
        let magnitude = state.run_excess_sum / f64::from(state.run_windows);
        Some(DegradationFinding {
            subject: name.to_string(),
            kind: DegradationKind::BaselineShift,
            magnitude,
            since: state.run_since,
            detected_at: window_end,
            windows: state.run_windows,
            evidence: format!(
                "{} slower than its own baseline for {} ({} windows of {}; last window {:.3} s against \
                 a baseline of {:.3} s, CUSUM {:.2} ≥ {:.2})",
                percent(magnitude),
                human_duration(window_end.since(state.run_since)),
                state.run_windows,
                human_duration(cfg.window),
                m,
                baseline,
                state.cusum,
                cfg.threshold,
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One subject, six 10-second steps a minute, `factor(minute)` times one second each.
    fn run(minutes: i64, factor: impl Fn(i64) -> f64) -> Vec<DegradationFinding> {
        let mut det = BaselineShiftDetector::new(BaselineConfig::default()).unwrap();
        let mut out = Vec::new();
        for minute in 0..minutes {
            for step in 0..6 {
                let at = Time::from_secs(minute * 60 + step * 10);
                let secs = factor(minute) * (1.0 + 0.004 * ((step % 3) as f64 - 1.0));
                out.extend(det.observe("gpu0", at, Duration::from_nanos((secs * 1e9) as i64)).unwrap());
            }
        }
        out.extend(det.flush());
        out
    }

    /// Windows summarised on the subject's node give what the step-by-step path gives.
    #[test]
    fn window_summaries_give_the_same_finding_as_steps() {
        let factor = |minute: i64| if minute >= 60 { 1.2 } else { 1.0 };
        let expected = run(240, factor);
        let mut det = BaselineShiftDetector::new(BaselineConfig::default()).unwrap();
        let mut agg = super::super::WindowAggregator::new(Duration::from_mins(1));
        let mut found = Vec::new();
        for minute in 0..240 {
            for step in 0..6 {
                let at = Time::from_secs(minute * 60 + step * 10);
                let secs = factor(minute) * (1.0 + 0.004 * ((step % 3) as f64 - 1.0));
                if let Some(w) = agg.push("gpu0", at, Duration::from_nanos((secs * 1e9) as i64)).unwrap() {
                    found.extend(det.observe_window("gpu0", &w).unwrap());
                }
            }
        }
        if let Some(w) = agg.close() {
            found.extend(det.observe_window("gpu0", &w).unwrap());
        }
        assert_eq!(found, expected);
        assert!(det.is_standing("gpu0"));
        let stale = StepWindow { index: 3, samples: 6, location_secs: 1.0 };
        assert!(matches!(det.observe_window("gpu0", &stale), Err(DegradationError::OutOfOrder { .. })));
        det.forget("gpu0");
        assert!(!det.is_standing("gpu0"));
    }

    #[test]
    fn a_step_up_is_found_once_and_not_learned_as_normal() {
        let findings = run(240, |minute| if minute >= 60 { 1.2 } else { 1.0 });
        assert_eq!(findings.len(), 1, "{findings:?}");
        let f = &findings[0];
        assert_eq!(f.kind, DegradationKind::BaselineShift);
        assert!((f.magnitude - 0.2).abs() < 0.01, "{}", f.magnitude);
        assert_eq!(f.since, Time::from_secs(60 * 60));
        assert!(f.detected_at <= Time::from_secs(63 * 60), "{:?}", f.detected_at);
        assert!(f.evidence.contains("slower than its own baseline"), "{}", f.evidence);
    }

    #[test]
    fn a_slow_diurnal_swing_is_not_a_shift() {
        // ±1 % over a 24-hour sine, two days.
        let day = 24.0 * 60.0;
        let findings =
            run(2 * 24 * 60, |minute| 1.0 + 0.01 * (std::f64::consts::TAU * minute as f64 / day).sin());
        assert!(findings.is_empty(), "{findings:?}");
    }

    #[test]
    fn recovery_then_a_second_episode_gives_a_second_finding() {
        let findings =
            run(
                300,
                |minute| if (60..90).contains(&minute) || (200..230).contains(&minute) { 1.3 } else { 1.0 },
            );
        assert_eq!(findings.len(), 2, "{findings:?}");
        assert_eq!(findings[1].since, Time::from_secs(200 * 60));
    }
}
