//! Logging, set up once for every subcommand: lines on stderr, filtered by `DEVHEAL_LOG` or
//! `RUST_LOG`, written as text or, with `--log-format json`, as one JSON object per line, so
//! that stdout (the agent's JSON lines, the sim table) carries only a subcommand's output.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{dead_kubeconfig, devheal};

fn json_lines(stderr: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(stderr)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("a stderr line is not JSON ({e}): {l}")))
        .collect()
}

/// The controller that cannot reach its API server fails fast; with `--log-format json` its
/// failure is a JSON line too, with the level, a timestamp and the error as a field.
#[test]
fn json_logs_are_one_object_per_stderr_line_failure_included() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dead_kubeconfig(dir.path());
    let args = ["controller", "--kubeconfig", &kubeconfig, "--dry-run", "--metrics-addr", "127.0.0.1:0"];
    let json_args: Vec<&str> = ["--log-format", "json"].into_iter().chain(args).collect();
    let out = devheal(&json_args, None);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty(), "logs never go to stdout");
    let lines = json_lines(&out.stderr);
    let failed = lines.last().expect("the failure is logged");
    assert_eq!(failed["level"], "ERROR", "{failed}");
    assert!(failed["timestamp"].is_string(), "{failed}");
    assert_eq!(failed["fields"]["message"], "devheal failed", "{failed}");
    let error = failed["fields"]["error"].as_str().unwrap_or("");
    assert!(error.contains("DeviceTaintRules") && error.contains("no answer from the API server"), "{error}");

    // Text stays the default, and the flag is global: it may follow the subcommand too.
    let text = devheal(&args, None);
    let err = String::from_utf8_lossy(&text.stderr);
    assert!(err.lines().last().is_some_and(|l| l.starts_with("devheal: error: ")), "{err}");
    let after: Vec<&str> = args.iter().copied().chain(["--log-format", "json"]).collect();
    let out = devheal(&after, None);
    assert_eq!(json_lines(&out.stderr).last().map(|l| l["level"].clone()), Some("ERROR".into()));
}

/// The agent's own lines (where it serves metrics, why it stops) are JSON with
/// `--log-format json`, the filter comes from `DEVHEAL_LOG`, and stdout keeps only the agent's
/// writes.
#[test]
fn the_agent_logs_json_lines_filtered_by_devheal_log_over_rust_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plugins = dir.path().join("device-plugins");
    std::fs::create_dir(&plugins).expect("mkdir");
    let kmsg = dir.path().join("kmsg");
    std::fs::write(&kmsg, b"").expect("empty saved kernel log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_devheal"))
        .args(["--log-format", "json", "agent", "--no-kube", "--no-nvml", "--node", "log-node"])
        .args(["--fake-devices", "1", "--metrics-addr", "127.0.0.1:0", "--progress-addr", "127.0.0.1:0"])
        .arg("--kmsg")
        .arg(&kmsg)
        .arg("--device-plugin-dir")
        .arg(&plugins)
        .arg("--pod-resources-socket")
        .arg(dir.path().join("none.sock"))
        // DEVHEAL_LOG wins over RUST_LOG (which would hide the line this test waits for).
        .env("DEVHEAL_LOG", "warn,devheal::agent=info")
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the devheal binary runs");
    let stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    loop {
        let line = rx.recv_timeout(Duration::from_secs(30)).expect("the agent announces its metrics address");
        let value: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("a stderr line is not JSON ({e}): {line}"));
        let announced = value["fields"]["message"].as_str().is_some_and(|m| m.contains("metrics on http://"));
        lines.push(value);
        if announced {
            break;
        }
    }
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill runs");
    assert!(status.success());
    assert!(child.wait().expect("the agent exits").success());
    lines.extend(rx.iter().map(|l| {
        serde_json::from_str::<serde_json::Value>(&l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))
    }));
    let _ = reader.join();
    let announce =
        lines.iter().find(|l| l["fields"]["message"].as_str().is_some_and(|m| m.contains("metrics on")));
    let announce = announce.expect("announced");
    assert_eq!(
        (announce["level"].as_str(), announce["target"].as_str()),
        (Some("INFO"), Some("devheal::agent"))
    );
    assert!(lines.iter().any(|l| l["fields"]["message"] == "devheal agent: SIGTERM, stopping"), "{lines:#?}");
    // `warn` for everything else: no other info line passes.
    assert!(lines.iter().all(|l| l["level"] != "INFO" || l["target"] == "devheal::agent"), "{lines:#?}");
}
