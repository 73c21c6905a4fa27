//! End-to-end tests of `devheal sim` through the built binary.

use std::path::PathBuf;
use std::process::Command;

fn devheal() -> Command {
    Command::new(env!("CARGO_BIN_EXE_devheal"))
}

fn small_scenario() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../sim/tests/data/small-cluster.yaml")
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("devheal-sim-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn list_shows_the_bundled_default() {
    let out = devheal().args(["sim", "--list"]).output().expect("runs");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("llama3-16k"), "{text}");
    assert!(text.contains("fleet-100k-365d"), "{text}");
}

/// The main command with no arguments: the bundled llama3-16k scenario, every strategy.
#[test]
fn no_arguments_runs_the_default_scenario_and_prints_the_table() {
    let out = devheal().arg("sim").output().expect("runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("scenario llama3-16k (seed 1)"), "{text}");
    for name in [
        "kubernetes-default",
        "node-health-controller",
        "job-failure-policy",
        "nvsentinel-jobset",
        "progress-watchdog",
        "devheal",
    ] {
        assert!(text.lines().any(|l| l.starts_with(name)), "missing {name}:\n{text}");
    }
    assert!(out.stderr.is_empty(), "no progress on a non-terminal stderr");
}

#[test]
fn json_has_the_documented_fields() {
    let out = devheal()
        .args(["sim", "--format", "json", "--seed", "5", "--scenario"])
        .arg(small_scenario())
        .output()
        .expect("runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    assert_eq!(v["scenario"], "small-cluster");
    assert_eq!(v["seed"], 5);
    let strategies = v["strategies"].as_array().expect("strategies list");
    assert_eq!(strategies.len(), 6);
    for s in strategies {
        assert!(s["name"].is_string());
        let ettr = s["ettr"].as_f64().expect("ettr");
        assert!((0.0..=1.0).contains(&ettr));
        assert!(s["gpu_hours_lost"]["total"].is_number());
        assert!(s["gpu_hours_lost"]["by_cause"]["hang_before_detection"].is_number());
        assert!(s["inference_availability"].is_number());
        assert!(s["counts"]["gang_restarts"].is_number());
    }
}

/// `--seeds N`: N seeds from `--seed`, every strategy summarised with its interval and devheal's
/// paired differences; the table and the JSON say the same; the result is the same run twice.
#[test]
fn seeds_reports_means_intervals_and_paired_differences() {
    let run = |format: &str| {
        let out = devheal()
            .args(["sim", "--seeds", "3", "--seed", "4", "--format", format, "--scenario"])
            .arg(small_scenario())
            .output()
            .expect("runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(out.stderr.is_empty(), "no progress on a non-terminal stderr");
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let json = run("json");
    assert_eq!(json, run("json"), "deterministic whatever the threads do");
    let v: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    assert_eq!(v["seeds"], serde_json::json!([4, 5, 6]));
    let strategies = v["strategies"].as_array().expect("strategies");
    assert_eq!(strategies.len(), 6);
    for s in strategies {
        let e = &s["ettr"];
        let (mean, low, high) =
            (e["mean"].as_f64().unwrap(), e["low"].as_f64().unwrap(), e["high"].as_f64().unwrap());
        assert!(low <= mean && mean <= high, "{s}");
        assert_eq!(s["ettr_by_seed"].as_array().map(Vec::len), Some(3));
    }
    let differences = v["differences"].as_array().expect("differences");
    assert_eq!(differences.len(), 5, "devheal minus each of the five others");
    assert!(differences.iter().all(|d| d["baseline"] != "devheal"));
    let table = run("table");
    assert!(table.starts_with("scenario small-cluster (seeds 4–6, 3 traces)"), "{table}");
    assert!(table.contains("devheal minus each other strategy, paired by seed"), "{table}");
    assert!(table.contains("Best other strategy by mean ETTR"), "{table}");
}

#[test]
fn out_dir_report_json_is_byte_identical_for_the_same_seed() {
    let (a, b) = (temp_dir("a"), temp_dir("b"));
    for dir in [&a, &b] {
        let out = devheal()
            .args(["sim", "--seed", "11", "--scenario"])
            .arg(small_scenario())
            .arg("--out")
            .arg(dir)
            .output()
            .expect("runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        // Piped stderr: no progress, only the files written, one per line.
        let stderr = String::from_utf8_lossy(&out.stderr);
        let expected = format!(
            "devheal sim: wrote {}\ndevheal sim: wrote {}\n",
            dir.join("report.json").display(),
            dir.join("report.html").display()
        );
        assert_eq!(stderr, expected);
    }
    let ja = std::fs::read(a.join("report.json")).expect("report.json written");
    let jb = std::fs::read(b.join("report.json")).expect("report.json written");
    assert_eq!(ja, jb);
    let html = std::fs::read_to_string(a.join("report.html")).expect("report.html written");
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert_eq!(html.matches("<svg").count(), 2, "two inline charts");
    assert!(!html.contains("<script"), "self-contained, no scripts");
    let _ = std::fs::remove_dir_all(&a);
    let _ = std::fs::remove_dir_all(&b);
}

#[test]
fn an_invalid_scenario_names_the_field_and_where() {
    let dir = temp_dir("invalid");
    std::fs::create_dir_all(&dir).expect("temp dir");
    let text = std::fs::read_to_string(small_scenario()).expect("fixture");
    // A type error: the YAML error carries the line.
    let bad_type = dir.join("bad-type.yaml");
    std::fs::write(&bad_type, text.replacen("duration_days: 10", "duration_days: ten", 1)).expect("write");
    let out = devheal().args(["sim", "--scenario"]).arg(&bad_type).output().expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad-type.yaml"), "{err}");
    assert!(err.contains("duration_days") || err.contains("line 9"), "{err}");
    // A value out of range: the error names the field path.
    let bad_value = dir.join("bad-value.yaml");
    std::fs::write(&bad_value, text.replacen("needed_replicas: 3,", "needed_replicas: 9,", 1))
        .expect("write");
    let out = devheal().args(["sim", "--scenario"]).arg(&bad_value).output().expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("inference[0].needed_replicas"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // Neither a bundled name nor a file.
    let out = devheal().args(["sim", "--scenario", "no-such-scenario"]).output().expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-scenario"));
    let _ = std::fs::remove_dir_all(&dir);
}
