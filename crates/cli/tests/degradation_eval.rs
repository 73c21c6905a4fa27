//! `devheal degradation-eval` end to end: JSON shape and figures on a small run, the table, and
//! clear errors for bad arguments.

use std::process::{Command, Output};

fn devheal(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_devheal")).args(args).output().expect("devheal runs")
}

const SMALL: &[&str] = &["degradation-eval", "--gangs", "1", "--days", "1", "--members", "16", "--seed", "5"];

#[test]
fn json_reports_every_bucket_the_clean_rate_and_hangs() {
    let out = devheal(&[SMALL, &["--format", "json"]].concat());
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON output");
    let buckets = report["buckets"].as_array().expect("buckets");
    assert_eq!(buckets.len(), 8, "4 magnitudes × 2 detectors");
    for bucket in buckets {
        assert_eq!(bucket["injected"], 8, "{bucket}");
        let detector = bucket["detector"].as_str().unwrap();
        assert!(detector == "straggler" || detector == "baseline_shift", "{detector}");
        if bucket["magnitude"].as_f64().unwrap() >= 0.2 {
            assert!(bucket["recalled"].as_u64().unwrap() >= 7, "{bucket}");
        }
    }
    assert_eq!(report["clean"]["device_days"], 16.0);
    assert_eq!(report["clean"]["per_1000_device_days"], 0.0);
    assert_eq!(report["hang"]["injected"], 8);
    assert_eq!(report["hang"]["detected"], 8);
    assert!(report["hang"]["delay_max_s"].as_f64().unwrap() < 120.0);
}

#[test]
fn the_table_names_its_columns_and_summary_lines() {
    let out = devheal(SMALL);
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("recall@5m"), "{text}");
    assert!(text.contains("clean traces: 16 device-days"), "{text}");
    assert!(text.contains("hangs: 8 of 8 detected"), "{text}");
}

#[test]
fn bad_arguments_are_clear_errors() {
    let out = devheal(&["degradation-eval", "--days", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--days must be between 1 and 365"));
    let out = devheal(&["degradation-eval", "--members", "2", "--gangs", "1", "--days", "1"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("trace members"), "{stderr}");
}
