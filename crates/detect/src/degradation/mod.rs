//! Degradation detection from workload progress: a member of a gang that runs slower than its
//! peers ([`GangStragglerDetector`]), a device that runs slower than its own past
//! ([`BaselineShiftDetector`]) and a workload that stopped making progress ([`HangDetector`]).
//!
//! Everything here is pure: no I/O, no clock. Callers pass each progress report with its time
//! ([`devheal_core::Time`]) and poll with `now`. The quantity reported per step must be the
//! member's *own* compute time (for example CUDA-event timing of forward/backward before the
//! collective): the wall-clock step time of a synchronous gang is the same on every member,
//! because the slowest rank sets the pace.
//!
//! [`trace`] generates labelled synthetic progress traces and [`eval`] scores the detectors on
//! them (`devheal degradation-eval`); `docs/degradation.md` has the parameters and the measured
//! accuracy.

pub mod baseline;
pub mod eval;
pub mod hang;
pub mod straggler;
mod subjects;
pub mod trace;
pub mod window;

use std::fmt::Write as _;

use devheal_core::{Duration, Time};
use serde::{Deserialize, Serialize};

pub use baseline::{BaselineConfig, BaselineShiftDetector};
pub use eval::{BucketScore, CleanScore, EvalConfig, EvalReport, HangScore, evaluate};
pub use hang::{HangConfig, HangDetector};
pub use straggler::{GangStragglerDetector, StragglerConfig};
pub use trace::{
    CheckpointPause, InjectedHang, InjectedSlowdown, StepReport, Trace, TraceConfig, TraceLabels,
};
pub use window::{MAX_WINDOW_SAMPLES, StepWindow, WindowAggregator};

/// What a finding says is wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DegradationKind {
    /// Slower than the rest of its gang.
    Straggler,
    /// Slower than its own recent past.
    BaselineShift,
    /// No progress for longer than the hang timeout.
    Hang,
}

impl DegradationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DegradationKind::Straggler => "straggler",
            DegradationKind::BaselineShift => "baseline_shift",
            DegradationKind::Hang => "hang",
        }
    }
}

/// One detection: which subject (gang member, device or node id), how much slower, since when.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub struct DegradationFinding {
    /// The member, device or node the finding is about, as the caller named it.
    pub subject: String,
    pub kind: DegradationKind,
    /// Relative slow-down: 0.17 means 17 % slower than the reference. 1.0 for a hang.
    pub magnitude: f64,
    /// When the slow-down (or the silence) began, as far as the detector can tell.
    pub since: Time,
    /// When the detector concluded.
    pub detected_at: Time,
    /// How many windows the evidence spans (0 for a hang).
    pub windows: u32,
    /// A sentence for people: "17 % slower than the gang median for 10 min (…)".
    pub evidence: String,
}

/// Errors from the degradation detectors and the trace generator.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DegradationError {
    #[error("invalid {what}: {reason}")]
    InvalidConfig { what: &'static str, reason: String },
    #[error("step report for {subject:?} has a non-positive duration ({nanos} ns)")]
    NonPositiveStep { subject: String, nanos: i64 },
    #[error(
        "step report for {subject:?} at {at_ns} ns is older than the window already closed at {closed_ns} ns"
    )]
    OutOfOrder { subject: String, at_ns: i64, closed_ns: i64 },
}

/// Checks a configuration value; used by every config's `validate`.
pub(crate) fn require(ok: bool, what: &'static str, reason: &str) -> Result<(), DegradationError> {
    if ok { Ok(()) } else { Err(DegradationError::InvalidConfig { what, reason: reason.to_string() }) }
}

/// The median of `values`, reordering them; `None` when empty or when a value is NaN.
pub(crate) fn median_in_place(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() || values.iter().any(|v| v.is_nan()) {
        return None;
    }
    // A selection, not a sort: the value at n/2 is the same, and for an even count the one
    // below it is the largest of the lower part.
    let n = values.len();
    let (lower, &mut upper, _) = values.select_nth_unstable_by(n / 2, f64::total_cmp);
    if n % 2 == 1 {
        return Some(upper);
    }
    let below = lower.iter().copied().max_by(f64::total_cmp)?;
    Some((below + upper) / 2.0)
}

/// A robust window location: sorts `values`, drops the lowest and highest quarter (at least one
/// value each side once there are three) and averages the rest. More efficient than the median
/// on a handful of samples, and still blind to a single-step spike. `None` when empty or NaN.
pub(crate) fn interquartile_mean_in_place(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() || values.iter().any(|v| v.is_nan()) {
        return None;
    }
    values.sort_unstable_by(f64::total_cmp);
    let n = values.len();
    let drop = if n >= 3 { (n / 4).max(1) } else { 0 };
    let kept = &values[drop..n - drop];
    Some(kept.iter().sum::<f64>() / kept.len() as f64)
}

/// The index of the window that contains `at` (windows are aligned to multiples of `window`).
pub(crate) fn window_index(at: Time, window: Duration) -> i64 {
    at.as_nanos().div_euclid(window.as_nanos().max(1))
}

/// "45 s", "10 min", "2 h 5 min".
pub fn human_duration(d: Duration) -> String {
    let secs = d.as_nanos().max(0) / 1_000_000_000;
    let mut out = String::new();
    if secs < 60 {
        let _ = write!(out, "{secs} s");
    } else if secs < 3600 {
        let (m, s) = (secs / 60, secs % 60);
        if s == 0 {
            let _ = write!(out, "{m} min");
        } else {
            let _ = write!(out, "{m} min {s} s");
        }
    } else {
        let (h, m) = (secs / 3600, (secs % 3600) / 60);
        if m == 0 {
            let _ = write!(out, "{h} h");
        } else {
            let _ = write!(out, "{h} h {m} min");
        }
    }
    out
}

/// "17 %" from 0.17 (whole percent, or one decimal below 10 %).
pub(crate) fn percent(fraction: f64) -> String {
    let p = fraction * 100.0;
    if p.abs() < 10.0 { format!("{p:.1} %") } else { format!("{p:.0} %") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_handles_odd_even_empty_and_nan() {
        assert_eq!(median_in_place(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median_in_place(&mut [4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median_in_place(&mut []), None);
        assert_eq!(median_in_place(&mut [1.0, f64::NAN]), None);
    }

    #[test]
    fn interquartile_mean_ignores_one_spike() {
        assert_eq!(interquartile_mean_in_place(&mut [1.0, 40.0, 1.2, 0.8, 1.1, 0.9]), Some(1.05));
        assert_eq!(interquartile_mean_in_place(&mut [1.0, 9.0, 2.0]), Some(2.0));
        assert_eq!(interquartile_mean_in_place(&mut [1.0, 3.0]), Some(2.0));
        assert_eq!(interquartile_mean_in_place(&mut []), None);
    }

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(human_duration(Duration::from_secs(45)), "45 s");
        assert_eq!(human_duration(Duration::from_mins(10)), "10 min");
        assert_eq!(human_duration(Duration::from_secs(90)), "1 min 30 s");
        assert_eq!(human_duration(Duration::from_mins(125)), "2 h 5 min");
        assert_eq!(percent(0.17), "17 %");
        assert_eq!(percent(0.052), "5.2 %");
    }

    #[test]
    fn windows_align_to_multiples() {
        let w = Duration::from_mins(1);
        assert_eq!(window_index(Time::from_secs(59), w), 0);
        assert_eq!(window_index(Time::from_secs(60), w), 1);
        assert_eq!(window_index(Time::from_secs(-1), w), -1);
    }

    #[test]
    fn finding_serialises_snake_case() {
        let finding = DegradationFinding {
            subject: "node-a/gpu3".into(),
            kind: DegradationKind::BaselineShift,
            magnitude: 0.17,
            since: Time::from_secs(60),
            detected_at: Time::from_secs(240),
            windows: 3,
            evidence: "17 % slower".into(),
        };
        let json = serde_json::to_value(&finding).unwrap();
        assert_eq!(json["kind"], "baseline_shift");
        assert_eq!(json["detected_at"], 240_000_000_000i64);
        let back: DegradationFinding = serde_json::from_value(json).unwrap();
        assert_eq!(back, finding);
    }
}
