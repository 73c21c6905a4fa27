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

/// `--sweep`: one table per parameter on stdout, the same in JSON, a tornado chart in
/// report.html; several --sweep flags give one bar each; bad parameters and values are named.
#[test]
fn sweep_reports_each_value_and_draws_a_tornado() {
    let dir = temp_dir("sweep");
    let args = |extra: &[&str]| {
        let mut c = devheal();
        c.args(["sim", "--seed", "2", "--scenario"]).arg(small_scenario()).args([
            "--sweep",
            "training.checkpoint_interval_min=5,30,90",
            "--sweep",
            "operator.response_min=10,60",
        ]);
        c.args(extra);
        c.output().expect("runs")
    };
    let out = args(&[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("sweep training.checkpoint_interval_min"), "{table}");
    assert!(table.contains("sweep operator.response_min"), "{table}");
    assert!(table.contains("devheal − best other"), "{table}");
    assert!(table.contains("devheal's ETTR over each sweep, widest range first"), "{table}");
    let out = args(&["--format", "json", "--out", dir.to_str().expect("utf-8 path")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    let sweeps = v["sweeps"].as_array().expect("sweeps");
    assert_eq!(sweeps.len(), 2);
    assert_eq!(sweeps[0]["param"], "training.checkpoint_interval_min");
    assert_eq!(sweeps[0]["baseline_value"], 30.0);
    let points = sweeps[0]["points"].as_array().expect("points");
    assert_eq!(points.len(), 3);
    for p in points {
        assert_eq!(p["ettr"].as_array().map(Vec::len), Some(6), "every strategy");
        assert!(p["devheal_lead"].is_number());
    }
    assert_eq!(v["baseline"]["strategies"].as_array().map(Vec::len), Some(6));
    assert!(v["baseline"]["checkpoint_advice"][0]["daly_optimal_interval_s"].is_number());
    let html = std::fs::read_to_string(dir.join("report.html")).expect("report.html written");
    assert!(html.contains("<h2>Sensitivity</h2>"));
    assert_eq!(html.matches("aria-label=\"tornado chart\"").count(), 2, "ETTR and lead");
    let tornado = html.split("aria-label=\"tornado chart\"").nth(1).expect("chart");
    let tornado = tornado.split("</svg>").next().expect("chart end");
    assert_eq!(tornado.matches("<rect").count(), 2, "one bar per --sweep");
    assert_eq!(std::fs::read(dir.join("report.json")).expect("report.json"), out.stdout);
    // Errors name the parameter or the value, exit 2, no panic.
    for (arg, words) in [
        ("no.such=1", "unknown parameter `no.such`"),
        ("operator.response_min=5,abc", "`abc` is not a number"),
        ("training.checkpoint_interval_min=0", "training.checkpoint_interval_min=0"),
        ("operator.response_min", "PARAM=v1,v2"),
    ] {
        let out = devheal()
            .args(["sim", "--scenario"])
            .arg(small_scenario())
            .args(["--sweep", arg])
            .output()
            .expect("runs");
        assert_eq!(out.status.code(), Some(2), "{arg}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(words) && !err.contains("panicked"), "{arg}: {err}");
        assert!(out.stdout.is_empty(), "{arg}: nothing runs");
    }
    let out = devheal()
        .args(["sim", "--seeds", "2", "--sweep", "operator.response_min=5"])
        .arg("--scenario")
        .arg(small_scenario())
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--trace`: a file (CSV or JSON lines) or the bundled trace replaces the generated one; the
/// table says what was read; unknown causes are listed (or replayed with --trace-unknown); a bad
/// record names the file, line and field.
#[test]
fn trace_replays_a_file_or_the_bundled_trace() {
    let dir = temp_dir("trace");
    std::fs::create_dir_all(&dir).expect("temp dir");
    let csv = dir.join("faults.csv");
    std::fs::write(&csv, "start,end,node,cause\n3600,4000,1,Xid 79\n7200,,2,HBM3\n9000,,3,Unknown Error\n")
        .expect("write");
    let run = |extra: &[&str]| {
        devheal()
            .args(["sim", "--scenario"])
            .arg(small_scenario())
            .arg("--trace")
            .arg(&csv)
            .args(extra)
            .output()
            .expect("runs")
    };
    let out = run(&[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("3 records on 3 nodes, 2 replayed as faults; 1 with an unknown cause (not replayed)"),
        "{table}"
    );
    assert!(table.contains("unknown causes: Unknown Error ×1."), "{table}");
    assert!(table.contains("2 faults in the shared trace"), "{table}");
    let json = |extra: &[&str]| {
        let out = run(&[&["--format", "json"], extra].concat());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let a = json(&[]);
    assert_eq!(a, json(&[]), "deterministic");
    let v: serde_json::Value = serde_json::from_str(&a).expect("JSON");
    assert_eq!(v["replay"]["records"], 3);
    assert_eq!(v["replay"]["unknown_causes"], serde_json::json!([["Unknown Error", 1]]));
    let v: serde_json::Value =
        serde_json::from_str(&json(&["--trace-unknown", "nccl_timeout_unknown"])).expect("JSON");
    assert_eq!(v["replay"]["replayed"], 3);
    assert_eq!(v["replay"]["unknown_replayed_as"], "nccl_timeout_unknown");
    // The bundled trace on the default scenario, combined with a sweep.
    let out = devheal()
        .args(["sim", "--trace", "infinitehbd-54d", "--sweep", "operator.response_min=15,60"])
        .output()
        .expect("runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("trace bundled:infinitehbd-54d.csv (CSV): 151 records"), "{table}");
    assert!(table.contains("sweep operator.response_min"), "{table}");
    let list = devheal().args(["sim", "--list"]).output().expect("runs");
    assert!(String::from_utf8_lossy(&list.stdout).contains("infinitehbd-54d"));
    // Bad records and bad arguments.
    let bad = dir.join("bad.jsonl");
    std::fs::write(&bad, "{\"start\": 1, \"node\": 1, \"cause\": \"HBM\"}\n{\"start\": \"soon\", \"node\": 1, \"cause\": \"HBM\"}\n")
        .expect("write");
    let out = devheal()
        .args(["sim", "--scenario"])
        .arg(small_scenario())
        .arg("--trace")
        .arg(&bad)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.jsonl, line 2, field `start`") && !err.contains("panicked"), "{err}");
    let out = devheal().args(["sim", "--trace", "no-such-trace"]).output().expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-trace"));
    let out = devheal().args(["sim", "--trace-unknown", "gpu_hbm"]).output().expect("runs");
    assert_eq!(out.status.code(), Some(2), "--trace-unknown needs --trace");
    let out = run(&["--trace-unknown", "no_class"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no_class"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--rollout FILE`: the four runs as JSON, the same twice; a scenario with a bad field is
/// refused with the field's name.
#[test]
fn rollout_compares_fleet_wide_and_staged_and_names_bad_fields() {
    let bundled = devheal_sim::rollout::BUNDLED_ROLLOUTS[0].1;
    let small = bundled
        .replace("gangs: 8", "gangs: 2")
        .replace("gang_nodes: 256", "gang_nodes: 16")
        .replace("spare_nodes: 64", "spare_nodes: 4")
        .replace("maxUnavailable: 211", "maxUnavailable: 4")
        .replace("horizon_h: 36", "horizon_h: 8");
    let dir = temp_dir("rollout");
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("small-rollout.yaml");
    std::fs::write(&file, &small).expect("write");
    let run =
        || devheal().args(["sim", "--rollout"]).arg(&file).args(["--format", "json"]).output().expect("runs");
    let out = run();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["nodes"], 36);
    let runs = v["runs"].as_array().expect("runs");
    let names: Vec<(&str, bool)> =
        runs.iter().map(|r| (r["strategy"].as_str().unwrap_or(""), r["bad_version"] == true)).collect();
    assert_eq!(
        names,
        [
            ("fleet-wide", true),
            ("staged (devheal gate)", true),
            ("fleet-wide", false),
            ("staged (devheal gate)", false)
        ]
    );
    assert_eq!(runs[3]["final_version"], "new", "{v}");
    assert_eq!(run().stdout, out.stdout, "deterministic");

    std::fs::write(&file, small.replace("broken_gpu_share: 0.25", "broken_gpu_share: 2")).expect("write");
    let out = run();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad_version.broken_gpu_share") && err.contains("small-rollout.yaml"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
