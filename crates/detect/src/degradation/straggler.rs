//! Gang straggler detection: each member's median step time per window against the gang's
//! median, with a robust spread (median absolute deviation, floored), persisting over most of
//! several windows.
//!
//! Per window (aligned to multiples of `window`), for each member with at least `min_samples`
//! reports, take its median step time `m_i`. The gang median `g` is the median of the `m_i`; the
//! spread is `max(1.4826 · MAD(m_i), spread_floor · g)`. A member is slow in that window when
//! `m_i / g − 1 ≥ relative_threshold` **and** `m_i − g ≥ mad_k · spread`. When
//! `slow_windows` of the last `of_windows` windows were slow it becomes one
//! [`DegradationFinding`]; the member stays reported (no repeat findings) until `of_windows`
//! windows in a row were not slow.
//!
//! Gang-wide effects (checkpoint pauses, the diurnal swing, a slower data set) move `g` with
//! every member and so cancel out.

use std::sync::Arc;

use devheal_core::{Duration, Time};

use super::subjects::Subjects;
use super::{
    DegradationError, DegradationFinding, DegradationKind, StepWindow, human_duration,
    interquartile_mean_in_place, median_in_place, percent, require, window_index,
};

/// Parameters of [`GangStragglerDetector`]. Defaults were chosen from `devheal degradation-eval`
/// (see `docs/degradation.md`).
#[derive(Clone, Debug, PartialEq)]
pub struct StragglerConfig {
    /// Length of one window.
    pub window: Duration,
    /// Minimum relative excess over the gang median for a slow window (0.06 = 6 %).
    pub relative_threshold: f64,
    /// Minimum excess in robust spreads (1.4826 · MAD) for a slow window.
    pub mad_k: f64,
    /// Floor of the spread as a fraction of the gang median, so a very tight gang does not
    /// flag 1 % noise.
    pub spread_floor: f64,
    /// Slow windows among the last `of_windows` before a finding (3 of 4: one noisy window
    /// does not reset the count).
    pub slow_windows: u32,
    /// The span, in windows, that `slow_windows` is counted over; a member stays reported until
    /// this many windows in a row are not slow.
    pub of_windows: u32,
    /// Reports a member needs in a window to take part in it.
    pub min_samples: usize,
    /// Members with enough reports a window needs before anyone is compared with the gang.
    pub min_members: usize,
}

impl Default for StragglerConfig {
    fn default() -> Self {
        StragglerConfig {
            window: Duration::from_mins(1),
            relative_threshold: 0.06,
            mad_k: 3.0,
            spread_floor: 0.01,
            slow_windows: 3,
            of_windows: 4,
            min_samples: 3,
            min_members: 4,
        }
    }
}

impl StragglerConfig {
    pub fn validate(&self) -> Result<(), DegradationError> {
        require(self.window.as_nanos() > 0, "straggler window", "must be positive")?;
        require(
            self.relative_threshold.is_finite() && self.relative_threshold > 0.0,
            "straggler relative_threshold",
            "must be a positive fraction",
        )?;
        require(self.mad_k.is_finite() && self.mad_k >= 0.0, "straggler mad_k", "must be ≥ 0")?;
        require(
            self.spread_floor.is_finite() && self.spread_floor >= 0.0,
            "straggler spread_floor",
            "must be ≥ 0",
        )?;
        require(self.slow_windows >= 1, "straggler slow_windows", "must be ≥ 1")?;
        require(
            self.of_windows >= self.slow_windows && self.of_windows <= 32,
            "straggler of_windows",
            "must be between slow_windows and 32",
        )?;
        require(self.min_samples >= 1, "straggler min_samples", "must be ≥ 1")?;
        require(self.min_members >= 3, "straggler min_members", "must be ≥ 3 for a median to mean anything")
    }
}

#[derive(Debug, Default)]
struct MemberState {
    /// This window's step times (the step-by-step path only).
    samples: Vec<f64>,
    /// One bit per recent window, newest lowest: 1 = slow.
    history: u32,
    /// Start of the first slow window of the current episode.
    episode_since: Time,
    episode_windows: u32,
    /// Sum of relative excess over the episode's slow windows (for the magnitude).
    episode_excess_sum: f64,
    reported: bool,
}

/// Detects members of one gang that are persistently slower than the gang's median.
#[derive(Debug)]
pub struct GangStragglerDetector {
    config: StragglerConfig,
    /// By member name (shared with the caller when it passes `Arc<str>` names to
    /// [`Self::observe_window`]).
    members: Subjects<MemberState>,
    /// The window currently collecting reports (the step-by-step path).
    open_window: Option<i64>,
    /// The last window judged (the window-by-window path).
    last_judged: Option<i64>,
}

impl GangStragglerDetector {
    pub fn new(config: StragglerConfig) -> Result<Self, DegradationError> {
        config.validate()?;
        Ok(GangStragglerDetector {
            config,
            members: Subjects::default(),
            open_window: None,
            last_judged: None,
        })
    }

    pub fn config(&self) -> &StragglerConfig {
        &self.config
    }

    /// Records that `member` took `step` for a step that ended at `at`. Reports must arrive in
    /// time order across the gang (within the open window any order is fine). A report in a
    /// later window closes the open one and returns its findings.
    pub fn observe(
        &mut self,
        member: &str,
        at: Time,
        step: Duration,
    ) -> Result<Vec<DegradationFinding>, DegradationError> {
        if step.as_nanos() <= 0 {
            return Err(DegradationError::NonPositiveStep {
                subject: member.to_string(),
                nanos: step.as_nanos(),
            });
        }
        let window = window_index(at, self.config.window);
        let mut findings = Vec::new();
        match self.open_window {
            Some(open) if window < open => {
                return Err(DegradationError::OutOfOrder {
                    subject: member.to_string(),
                    at_ns: at.as_nanos(),
                    closed_ns: open.saturating_mul(self.config.window.as_nanos()),
                });
            }
            Some(open) if window > open => {
                findings = self.close_window(open);
                self.open_window = Some(window);
            }
            Some(_) => {}
            None => self.open_window = Some(window),
        }
        let slot = self.slot(member);
        self.members[slot].samples.push(step.as_secs_f64());
        Ok(findings)
    }

    /// Judges one window from summaries made elsewhere (by [`super::WindowAggregator`] on each
    /// member's node): `members` holds each reporting member's summary of window `window`.
    /// Windows must be judged in increasing order; a member missing from `members` has no
    /// evidence this window, as with too few samples. Do not mix with [`Self::observe`] on one
    /// detector.
    pub fn observe_window<S: AsRef<str> + Clone + Into<Arc<str>>>(
        &mut self,
        window: i64,
        members: &[(S, StepWindow)],
    ) -> Result<Vec<DegradationFinding>, DegradationError> {
        if let Some(last) = self.last_judged
            && window <= last
        {
            let subject = members.first().map(|(m, _)| m.as_ref().to_string()).unwrap_or_default();
            return Err(DegradationError::OutOfOrder {
                subject,
                at_ns: window.saturating_mul(self.config.window.as_nanos()),
                closed_ns: last.saturating_add(1).saturating_mul(self.config.window.as_nanos()),
            });
        }
        self.last_judged = Some(window);
        // Only the members reporting this window, by slot (a gang can have thousands of members
        // followed and a few dozen reporting): the last usable summary of a member counts.
        let mut reports: Vec<(usize, usize, f64)> = Vec::with_capacity(members.len());
        for (i, (member, summary)) in members.iter().enumerate() {
            if summary.index != window {
                continue;
            }
            let slot = match self.members.slot(member.as_ref()) {
                Some(slot) => slot,
                None => self.members.add(member.clone().into(), MemberState::default()),
            };
            if summary.samples as usize >= self.config.min_samples && summary.location_secs.is_finite() {
                reports.push((slot, i, summary.location_secs));
            }
        }
        // By slot, and a member's summaries in their order: the last one is kept.
        reports.sort_unstable_by_key(|&(slot, i, _)| (slot, i));
        let mut locations: Vec<(usize, f64)> = Vec::with_capacity(reports.len());
        for (slot, _, location) in reports {
            if locations.last().is_some_and(|&(last, _)| last == slot) {
                locations.pop();
            }
            locations.push((slot, location));
        }
        Ok(self.judge(window, &locations))
    }

    /// The last window [`Self::observe_window`] judged.
    pub fn last_judged(&self) -> Option<i64> {
        self.last_judged
    }

    /// Whether `member` has a standing finding (found, and not yet `of_windows` normal windows
    /// in a row since).
    pub fn is_reported(&self, member: &str) -> bool {
        self.members.slot(member).is_some_and(|slot| self.members[slot].reported)
    }

    /// Stops tracking `member` (it left the gang).
    pub fn forget(&mut self, member: &str) {
        self.members.remove(member);
    }

    /// Members tracked.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    fn slot(&mut self, member: &str) -> usize {
        match self.members.slot(member) {
            Some(slot) => slot,
            None => self.members.add(Arc::from(member), MemberState::default()),
        }
    }

    /// Closes the open window (call at the end of a trace, or when reports stop).
    pub fn flush(&mut self) -> Vec<DegradationFinding> {
        match self.open_window.take() {
            Some(open) => self.close_window(open),
            None => Vec::new(),
        }
    }

    fn close_window(&mut self, window: i64) -> Vec<DegradationFinding> {
        let min_samples = self.config.min_samples;
        let mut medians: Vec<(usize, f64)> = Vec::with_capacity(self.members.len());
        for (slot, member) in self.members.states_mut().enumerate() {
            let m = if member.samples.len() >= min_samples {
                interquartile_mean_in_place(&mut member.samples)
            } else {
                None
            };
            member.samples.clear();
            if let Some(m) = m {
                medians.push((slot, m));
            }
        }
        self.judge(window, &medians)
    }

    /// The judgement of one window, given the location of each member with evidence this
    /// window, as (slot, location) in increasing slot order (a member not listed has no evidence).
    fn judge(&mut self, window: i64, medians: &[(usize, f64)]) -> Vec<DegradationFinding> {
        let cfg = &self.config;
        let window_ns = cfg.window.as_nanos();
        let window_start = Time::from_nanos(window.saturating_mul(window_ns));
        let window_end = Time::from_nanos(window.saturating_add(1).saturating_mul(window_ns));
        let mut present: Vec<f64> = medians.iter().map(|&(_, m)| m).collect();
        let mut findings = Vec::new();
        if present.len() < cfg.min_members {
            return findings;
        }
        let Some(gang_median) = median_in_place(&mut present) else { return findings };
        if gang_median <= 0.0 {
            return findings;
        }
        for v in present.iter_mut() {
            *v = (*v - gang_median).abs();
        }
        let mad = median_in_place(&mut present).unwrap_or(0.0);
        let spread = (1.4826 * mad).max(cfg.spread_floor * gang_median);
        let mask = if cfg.of_windows >= 32 { u32::MAX } else { (1u32 << cfg.of_windows) - 1 };
        // A member with too few reports this window (a checkpoint pause, a restart) is not
        // listed: no evidence either way, so its history is left as it was.
        for &(slot, m) in medians {
            let (name, member) = self.members.named_mut(slot);
            let excess = m / gang_median - 1.0;
            let slow = excess >= cfg.relative_threshold && (m - gang_median) >= cfg.mad_k * spread;
            let before = member.history & mask;
            member.history = ((member.history << 1) | u32::from(slow)) & mask;
            if !slow {
                if member.history == 0 {
                    member.reported = false;
                    member.episode_windows = 0;
                    member.episode_excess_sum = 0.0;
                }
                continue;
            }
            if before == 0 && !member.reported {
                member.episode_since = window_start;
                member.episode_windows = 0;
                member.episode_excess_sum = 0.0;
            }
            member.episode_windows = member.episode_windows.saturating_add(1);
            member.episode_excess_sum += excess;
            if member.history.count_ones() >= cfg.slow_windows && !member.reported {
                member.reported = true;
                let magnitude = member.episode_excess_sum / f64::from(member.episode_windows);
                let spreads = if spread > 0.0 { (m - gang_median) / spread } else { f64::INFINITY };
                findings.push(DegradationFinding {
                    subject: name.to_string(),
                    kind: DegradationKind::Straggler,
                    magnitude,
                    since: member.episode_since,
                    detected_at: window_end,
                    windows: member.episode_windows,
                    evidence: format!(
                        "{} slower than the gang median for {} ({} slow windows of {}; last window {:.3} s \
                         against the gang's {:.3} s, {:.1} robust spreads, {} members)",
                        percent(magnitude),
                        human_duration(window_end.since(member.episode_since)),
                        member.episode_windows,
                        human_duration(cfg.window),
                        m,
                        gang_median,
                        spreads,
                        medians.len(),
                    ),
                });
            }
        }
        findings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(
        det: &mut GangStragglerDetector,
        minutes: i64,
        slow_member: Option<(usize, f64, i64)>,
    ) -> Vec<DegradationFinding> {
        let mut out = Vec::new();
        for minute in 0..minutes {
            for step in 0..6 {
                let at = Time::from_secs(minute * 60 + step * 10);
                for member in 0..8usize {
                    // Deterministic ±0.5 % wobble so the gang is not perfectly flat.
                    let wobble = 1.0 + 0.005 * (((member + step as usize) % 3) as f64 - 1.0);
                    let mut secs = 1.0 * wobble;
                    if let Some((slow, factor, from_minute)) = slow_member
                        && slow == member
                        && minute >= from_minute
                    {
                        secs *= factor;
                    }
                    let step_time = Duration::from_nanos((secs * 1e9) as i64);
                    out.extend(det.observe(&format!("m{member}"), at, step_time).unwrap());
                }
            }
        }
        out.extend(det.flush());
        out
    }

    #[test]
    fn a_persistently_slow_member_is_found_once_with_its_magnitude() {
        let mut det = GangStragglerDetector::new(StragglerConfig::default()).unwrap();
        let findings = feed(&mut det, 20, Some((5, 1.17, 4)));
        assert_eq!(findings.len(), 1, "{findings:?}");
        let f = &findings[0];
        assert_eq!(f.subject, "m5");
        assert_eq!(f.kind, DegradationKind::Straggler);
        assert!((f.magnitude - 0.17).abs() < 0.01, "{}", f.magnitude);
        assert_eq!(f.since, Time::from_secs(4 * 60));
        assert_eq!(f.detected_at, Time::from_secs(7 * 60));
        assert!(f.evidence.starts_with("17 % slower than the gang median for 3 min"), "{}", f.evidence);
    }

    #[test]
    fn a_uniform_gang_and_a_small_offset_give_nothing() {
        let mut det = GangStragglerDetector::new(StragglerConfig::default()).unwrap();
        assert!(feed(&mut det, 30, None).is_empty());
        let mut det = GangStragglerDetector::new(StragglerConfig::default()).unwrap();
        assert!(feed(&mut det, 30, Some((2, 1.03, 0))).is_empty());
    }

    /// The window-by-window path (summaries made on each member's node) finds what the
    /// step-by-step path finds, and forgets members that left.
    #[test]
    fn window_summaries_give_the_same_finding_as_steps() {
        use super::super::WindowAggregator;
        let cfg = StragglerConfig::default();
        let mut by_steps = GangStragglerDetector::new(cfg.clone()).unwrap();
        let expected = feed(&mut by_steps, 20, Some((5, 1.17, 4)));
        let mut by_windows = GangStragglerDetector::new(cfg.clone()).unwrap();
        let mut aggs: Vec<WindowAggregator> = (0..8).map(|_| WindowAggregator::new(cfg.window)).collect();
        let mut found = Vec::new();
        for minute in 0..21 {
            let mut closed = Vec::new();
            for (member, agg) in aggs.iter_mut().enumerate() {
                if minute == 20 {
                    closed.extend(agg.close().map(|w| (format!("m{member}"), w)));
                    continue;
                }
                for step in 0..6 {
                    let at = Time::from_secs(minute * 60 + step * 10);
                    let wobble = 1.0 + 0.005 * (((member + step as usize) % 3) as f64 - 1.0);
                    let secs = if member == 5 && minute >= 4 { 1.17 * wobble } else { wobble };
                    let w = agg.push("m", at, Duration::from_nanos((secs * 1e9) as i64)).unwrap();
                    closed.extend(w.map(|w| (format!("m{member}"), w)));
                }
            }
            if let Some((_, w)) = closed.first() {
                found.extend(by_windows.observe_window(w.index, &closed).unwrap());
            }
        }
        assert_eq!(found, expected);
        assert!(by_windows.is_reported("m5") && !by_windows.is_reported("m4"));
        let err = by_windows.observe_window::<&str>(3, &[]).unwrap_err();
        assert!(matches!(err, DegradationError::OutOfOrder { .. }), "{err}");
        by_windows.forget("m5");
        by_windows.forget("m0");
        assert_eq!(by_windows.len(), 6);
        assert!(!by_windows.is_reported("m5"));
        assert!(!by_windows.is_reported("m7") && by_windows.members.slot("m7").is_some());
    }

    #[test]
    fn bad_reports_and_configs_are_errors_naming_the_problem() {
        let mut det = GangStragglerDetector::new(StragglerConfig::default()).unwrap();
        let err = det.observe("m0", Time::from_secs(1), Duration::ZERO).unwrap_err();
        assert!(err.to_string().contains("\"m0\""), "{err}");
        det.observe("m0", Time::from_secs(200), Duration::from_secs(1)).unwrap();
        let err = det.observe("m1", Time::from_secs(10), Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, DegradationError::OutOfOrder { .. }), "{err}");
        let bad = StragglerConfig { relative_threshold: f64::NAN, ..StragglerConfig::default() };
        let err = GangStragglerDetector::new(bad).unwrap_err();
        assert!(err.to_string().contains("relative_threshold"), "{err}");
    }
}
