//! Accuracy of the degradation detectors on a small evaluation (the full one is
//! `devheal degradation-eval`): the targets for slow-downs of 10 % or more, no false
//! findings on clean traces, hangs found within 2 minutes of the last progress.

use devheal_core::Duration;
use devheal_detect::degradation::{DegradationKind, EvalConfig, TraceConfig, evaluate};

fn small_config(seed: u64) -> EvalConfig {
    EvalConfig {
        seed,
        gangs: 3,
        trace: TraceConfig { members: 32, length: Duration::from_hours(24), ..TraceConfig::default() },
        magnitudes: vec![0.10, 0.20, 0.50],
        slowdowns_per_day: 16,
        hangs_per_day: 8,
        ..EvalConfig::default()
    }
}

#[test]
fn slowdowns_of_ten_percent_or_more_meet_the_targets() {
    let report = evaluate(&small_config(7), 2).unwrap();
    assert_eq!(report.buckets.len(), 6);
    for bucket in &report.buckets {
        assert_eq!(bucket.injected, 48, "{bucket:?}");
        assert!(bucket.recall >= 0.90, "recall within 5 min below 0.90: {bucket:?}");
        let precision = bucket.precision.unwrap_or(0.0);
        assert!(precision >= 0.95, "precision below 0.95: {bucket:?}");
    }
    // 96 device-days of clean traces: one false finding would already be 10 per 1,000.
    let clean = &report.clean;
    assert_eq!(clean.device_days, 96.0);
    assert_eq!(
        clean.straggler_findings + clean.baseline_shift_findings + clean.hang_findings,
        0,
        "{clean:?}"
    );
    let hang = &report.hang;
    assert_eq!(hang.injected, 24);
    assert_eq!(hang.detected, hang.injected, "{hang:?}");
    assert!(hang.delay_max_s.unwrap_or(f64::INFINITY) < 120.0, "{hang:?}");
}

#[test]
fn unannounced_checkpoints_longer_than_the_timeout_read_as_hangs() {
    // The traces' checkpoint pauses (20–60 s) plus the slow warm-up step after them can exceed
    // the 90 s timeout; only the announcement keeps the hang detector quiet through them.
    let mut config = small_config(3);
    config.gangs = 1;
    config.magnitudes = vec![];
    config.announce_checkpoints = false;
    let report = evaluate(&config, 1).unwrap();
    assert!(report.clean.hang_findings > 0, "{:?}", report.clean);
    config.announce_checkpoints = true;
    let report = evaluate(&config, 1).unwrap();
    assert_eq!(report.clean.hang_findings, 0, "{:?}", report.clean);
}

#[test]
fn the_evaluation_is_deterministic_whatever_the_thread_count() {
    let mut config = small_config(11);
    config.gangs = 2;
    config.trace.length = Duration::from_hours(6);
    config.trace.members = 8;
    let one = evaluate(&config, 1).unwrap();
    let three = evaluate(&config, 3).unwrap();
    assert_eq!(one, three);
    assert!(one.buckets.iter().any(|b| b.detector == DegradationKind::Straggler && b.injected > 0));
}
