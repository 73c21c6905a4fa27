//! `devheal explain` end to end: the binary on real pod fixtures (crates/k8s/tests/data/pods,
//! sources beside each), with NodeDeviceHealth and FailurePolicy files written by the tests.

use std::path::{Path, PathBuf};
use std::process::Output;

mod common;
use common::devheal;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../k8s/tests/data/pods").join(name)
}

fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn temp_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("devheal-explain-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write temp file");
    path
}

#[test]
fn json_has_the_promised_fields() {
    let out = devheal(&["explain", fixture("uae-gpu-lost.yaml").to_str().unwrap(), "--format", "json"], None);
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1);
    let e = &lines[0];
    assert_eq!(e["pod"], "default/rojin-2q6ld");
    assert_eq!(e["class"], "device_failure");
    assert!(e["confidence"].as_f64().is_some_and(|c| c > 0.8));
    assert!(
        e["evidence"]
            .as_array()
            .is_some_and(|a| a.iter().any(|s| s.as_str().unwrap_or("").contains("GPU is lost")))
    );
    // A failed pod outside any gang: marked for its Job's podFailurePolicy, nothing to evict.
    assert_eq!(e["action"], "mark_pod");
}

#[test]
fn reads_a_list_from_stdin_in_order() {
    let mut items = Vec::new();
    for name in ["preempted.json", "nodelost.json", "running-node-down.json"] {
        let text = std::fs::read_to_string(fixture(name)).expect("fixture");
        items.push(serde_json::from_str::<serde_json::Value>(&text).expect("json"));
    }
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string();
    let lines = json_lines(&devheal(&["explain", "-", "--format", "json"], Some(list.as_bytes())));
    let classes: Vec<&str> = lines.iter().map(|l| l["class"].as_str().unwrap_or("")).collect();
    assert_eq!(classes, ["disruption", "infrastructure", "none"]);
    assert!(lines.iter().all(|l| l["action"] == "none"));
}

#[test]
fn node_health_turns_a_running_gang_member_into_a_gang_restart() {
    let pod = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"llama-0","namespace":"ml","uid":"u0",
      "labels":{"jobset.sigs.k8s.io/jobset-name":"llama"}},
      "spec":{"nodeName":"gpu-node-3","containers":[{"name":"pytorch"}]},
      "status":{"phase":"Running","startTime":"2026-11-28T09:00:00Z","containerStatuses":[{"name":"pytorch","image":"i","imageID":"",
      "ready":true,"restartCount":0,"state":{"running":{"startedAt":"2026-11-28T09:00:05Z"}}}]}}"#;
    let health = temp_file(
        "ndh.yaml",
        "apiVersion: devheal.io/v1alpha1\nkind: NodeDeviceHealth\nmetadata:\n  name: gpu-node-3\nstatus:\n  devices:\n  - id: GPU-7\n    resource: nvidia.com/gpu\n    pciAddress: 0000:1b:00.0\n    health: Unhealthy\n    since: \"2026-11-28T10:00:00Z\"\n    reasons:\n    - source: kernel_log\n      code: 79\n      message: GPU has fallen off the bus\n    pods: [ml/llama-0]\n",
    );
    let out = devheal(
        &["explain", "-", "--node-health", health.to_str().unwrap(), "--format", "json"],
        Some(pod.as_bytes()),
    );
    let e = &json_lines(&out)[0];
    assert_eq!(e["class"], "device_failure");
    assert_eq!(e["action"], "restart_gang");
    assert_eq!(e["gang"], "ml/jobset/llama");
    let types: Vec<&str> =
        e["actions"].as_array().unwrap().iter().map(|a| a["action"]["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["quarantine_device", "request_repair", "mark_pod", "restart_gang"]);
    // The same pod with the device Unknown: nothing to do.
    let unknown = std::fs::read_to_string(&health).unwrap().replace("health: Unhealthy", "health: Unknown");
    let health = temp_file("ndh-unknown.yaml", &unknown);
    let out = devheal(
        &["explain", "-", "--node-health", health.to_str().unwrap(), "--format", "json"],
        Some(pod.as_bytes()),
    );
    let e = &json_lines(&out)[0];
    assert_eq!((e["class"].as_str(), e["action"].as_str()), (Some("none"), Some("none")));
}

#[test]
fn a_policy_file_changes_the_decision() {
    let policy = temp_file(
        "policy.yaml",
        "apiVersion: devheal.io/v1alpha1\nkind: FailurePolicy\nmetadata:\n  name: strict\n  namespace: default\nspec:\n  rules:\n  - name: bad-binary-fails-fast\n    onExitCodes: {operator: In, values: [127]}\n    action: FailWorkload\n",
    );
    let path = fixture("crashloop-exit-127.yaml");
    let without = json_lines(&devheal(&["explain", path.to_str().unwrap(), "--format", "json"], None));
    assert_eq!(without[0]["action"], "none");
    // The container is waiting, its last run exited 127: exit-code rules look at the current
    // state as podFailurePolicy does, so a terminated pod is needed to match.
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "    state:\n      waiting:\n        reason: CrashLoopBackOff\n    lastState:",
        "    state:",
    );
    let terminated = temp_file("terminated.yaml", &text);
    let with = json_lines(&devheal(
        &["explain", terminated.to_str().unwrap(), "--policy", policy.to_str().unwrap(), "--format", "json"],
        None,
    ));
    assert_eq!(with[0]["policy"], "strict");
    assert_eq!(with[0]["rule"], "bad-binary-fails-fast");
    assert_eq!(with[0]["action"], "fail_workload");
}

#[test]
fn table_output_lists_each_pod_with_evidence() {
    let out = devheal(&["explain", fixture("oom-crashloop.yaml").to_str().unwrap()], None);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("POD"), "{text}");
    assert!(text.contains("gpu-operator/gpu-operator-7d4b8c9f6-abcde"), "{text}");
    assert!(text.contains("oom"), "{text}");
    assert!(text.contains("OOMKilled"), "{text}");
}

#[test]
fn malformed_input_is_an_error_naming_what_and_where() {
    let out = devheal(&["explain", "-"], Some(b"kind: Pod\nmetadata:\n  name: [broken\n"));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("<stdin>: not valid YAML") && err.contains("line"), "{err}");
    let out = devheal(&["explain", "/nonexistent/pods.json"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent/pods.json"));
    let bad_health = temp_file(
        "bad-ndh.json",
        r#"{"apiVersion":"devheal.io/v1alpha1","kind":"NodeDeviceHealth","metadata":{"name":"n"},"status":{"devices":[{"id":"g","resource":"r","health":"Sick"}]}}"#,
    );
    let out = devheal(
        &[
            "explain",
            fixture("evicted-memory.yaml").to_str().unwrap(),
            "--node-health",
            bad_health.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad-ndh.json") && err.contains("\"Sick\""), "{err}");
}
