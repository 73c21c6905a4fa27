//! The reports built from fixture objects, as `kubectl get -o json` would show them: what each
//! command finds, its text and its JSON.

use devheal_core::DurableState;
use devheal_k8s::crd::{FailurePolicy, NodeDeviceHealth};
use devheal_k8s::upgrade_plan::UpgradePlan;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

use super::history::{self, HistoryInputs};
use super::live_explain::{self, ExplainInputs};
use super::status::{self, StatusInputs};

const NOW: &str = "2026-12-04T12:00:00Z";

fn now() -> Timestamp {
    NOW.parse().expect("a timestamp")
}

fn from<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("a valid fixture object")
}

fn ns(t: &str) -> i64 {
    let t: Timestamp = t.parse().expect("a timestamp");
    i64::try_from(t.as_nanosecond()).expect("in range")
}

/// gpu-1: cordoned by devheal, GPU-2 quarantined by a node taint, a reset requested; gpu-2: fine.
fn nodes() -> Vec<Node> {
    vec![
        from(json!({
            "metadata": {"name": "gpu-1", "labels": {"devheal.io/repair": "reset_device"}},
            "spec": {"unschedulable": true, "taints": [
                {"key": "devheal.io/unhealthy", "value": "cordoned", "effect": "NoSchedule",
                 "timeAdded": "2026-12-04T11:50:00Z"},
                {"key": "devheal.io/device-quarantine-5f2a", "value": "GPU-2", "effect": "NoSchedule",
                 "timeAdded": "2026-12-04T11:49:00Z"}]},
            "status": {"conditions": [
                {"type": "Ready", "status": "True"},
                {"type": "devheal.io/RepairRequested", "status": "True", "reason": "ResetDevice",
                 "message": "device GPU-2: Xid 79", "lastTransitionTime": "2026-12-04T11:49:30Z"}]}
        })),
        from(
            json!({"metadata": {"name": "gpu-2"}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
        ),
    ]
}

fn health() -> Vec<NodeDeviceHealth> {
    vec![
        from(json!({
            "apiVersion": "devheal.io/v1alpha1", "kind": "NodeDeviceHealth",
            "metadata": {"name": "gpu-1"}, "spec": {"nodeName": "gpu-1"},
            "status": {
                "lastHeartbeat": "2026-12-04T11:59:50Z",
                "devices": [
                    {"id": "GPU-1", "resource": "nvidia.com/gpu", "health": "Healthy"},
                    {"id": "GPU-2", "resource": "nvidia.com/gpu", "health": "Unhealthy",
                     "since": "2026-12-04T11:48:00Z",
                     "reasons": [{"source": "kernel_log", "code": 79, "message": "GPU has fallen off the bus",
                                  "firstSeen": "2026-12-04T11:48:00Z", "lastSeen": "2026-12-04T11:55:00Z", "count": 3}],
                     "pods": [{"namespace": "ml", "name": "llama-0"}]}],
                "sources": [{"name": "nvml", "available": false, "message": "driver not loaded"},
                            {"name": "kernel_log", "available": true},
                            {"name": "driver", "available": true, "version": "575.57.08"}]
            }
        })),
        from(json!({
            "apiVersion": "devheal.io/v1alpha1", "kind": "NodeDeviceHealth",
            "metadata": {"name": "gpu-2"}, "spec": {"nodeName": "gpu-2"},
            "status": {"lastHeartbeat": "2026-12-04T11:59:55Z",
                       "devices": [{"id": "GPU-9", "resource": "nvidia.com/gpu", "health": "Healthy"}],
                       "sources": [{"name": "nvml", "available": true, "version": "570.124.06"},
                                   {"name": "device_plugin_pod", "available": true, "version": "v0.17.0",
                                    "message": "device stack pods on this node: gpu-operator/nvdp-x (…)"}],
                       "network": [
                           {"pciAddress": "0000:08:00.0", "names": ["ens1np0", "mlx5_0"], "link": "Down", "flaps": 0,
                            "fault": "link down on ens1np0 (0000:08:00.0)", "faultSince": "2026-12-04T11:57:00Z"},
                           {"pciAddress": "0000:09:00.0", "names": ["ens2np0"], "link": "Up", "flaps": 0},
                           {"pciAddress": "0000:0a:00.0", "link": "Up", "flaps": 2}]}
        })),
    ]
}

fn policy() -> FailurePolicy {
    from(json!({
        "apiVersion": "devheal.io/v1alpha1", "kind": "FailurePolicy",
        "metadata": {"name": "training", "namespace": "ml"},
        "spec": {"rules": [{"name": "dead-gpu", "onClasses": ["device_failure"], "action": "RestartGang"}]},
        "status": {"matchedPods": 2, "actionsTaken": {"QuarantineDevice": 1, "RestartGang": 1},
                   "lastAction": {"action": "RestartGang", "target": "ml/llama-0",
                                  "reason": "device GPU-2 failed", "at": "2026-12-04T11:50:00Z"},
                   "budget": {"breakerOpen": false, "quarantinedNodes": 1, "quarantineNodeLimit": 5,
                              "evictionsLastMinute": 0, "heldVersions": []}}
    }))
}

/// A driver upgrade paused at its canary, gpu-1, whose GPU-2 turned Unhealthy after it.
fn upgrade_plan() -> UpgradePlan {
    from(json!({
        "apiVersion": "devheal.io/v1alpha1", "kind": "UpgradePlan",
        "metadata": {"name": "nvidia-driver-575", "namespace": "gpu-operator"},
        "spec": {"daemonSet": "nvidia-driver", "component": "Driver",
                 "stages": [{"nodes": 1}, {"percent": 50}], "soakSeconds": 600},
        "status": {"phase": "Paused", "reason": "HealthCheckFailed",
                   "message": "1 device turned Unhealthy or Unknown on upgraded nodes (at most 0)",
                   "fromRevision": {"hash": "5b8c", "name": "nvidia-driver-5b8c", "revision": 3,
                                    "images": "driver=nvcr.io/nvidia/driver:570.124.06"},
                   "toRevision": {"hash": "7c9d", "name": "nvidia-driver-7c9d", "revision": 4,
                                  "images": "driver=nvcr.io/nvidia/driver:575.57.08"},
                   "stage": 1, "upgradedNodes": 1, "poolNodes": 2,
                   "nodes": [{"name": "gpu-1", "stage": 1, "started": "2026-12-04T11:40:00Z",
                              "unhealthyBefore": 0}]}
    }))
}

fn state() -> DurableState {
    from(json!({
        "restarts": [],
        "devices": [{"device": {"node": "gpu-1", "resource": "nvidia.com/gpu", "id": "GPU-2"},
                     "incidents": [ns("2026-12-04T11:48:01Z")]}],
        "cordons": [{"node": "gpu-1", "bootId": "boot-1"}],
        "repairs": [{"node": "gpu-1", "requests": [
            {"device": {"node": "gpu-1", "resource": "nvidia.com/gpu", "id": "GPU-2"}, "kind": "reset_device"}]}],
        "breaker": {"failures": [{"at": ns("2026-12-04T11:49:00Z"), "node": "gpu-1"}],
                    "lastFailure": ns("2026-12-04T11:49:00Z"), "heldVersions": ["driver 575.57.08"]}
    }))
}

fn lease(renewed: &str) -> Lease {
    from(json!({
        "metadata": {"name": "devheal-controller", "namespace": "devheal-system"},
        "spec": {"holderIdentity": "devheal-controller-7d9f", "leaseDurationSeconds": 15,
                 "renewTime": renewed}
    }))
}

/// A DRA quarantine on gpu-3 (a node with no Node object any more).
fn device_taint_rule() -> Value {
    json!({
        "apiVersion": "resource.k8s.io/v1alpha3", "kind": "DeviceTaintRule",
        "metadata": {"name": "devheal-gpu-3-dev-0-1a2b", "creationTimestamp": "2026-12-04T10:00:00Z",
                     "labels": {"app.kubernetes.io/managed-by": "devheal"},
                     "annotations": {"devheal.io/device": "gpu-3/gpu.example.com/gpu.example.com/pool-a/dev-0",
                                     "devheal.io/reason": "Xid 48"}},
        "spec": {"deviceSelector": {"driver": "gpu.example.com", "pool": "pool-a", "device": "dev-0"},
                 "taint": {"key": "devheal.io/device-quarantine", "effect": "NoSchedule"}}
    })
}

fn status_inputs() -> StatusInputs {
    StatusInputs {
        nodes: nodes(),
        health: health(),
        device_taint_rules: vec![device_taint_rule()],
        policies: vec![policy()],
        upgrade_plans: vec![upgrade_plan()],
        state: Some(state()),
        state_source: "devheal-system/devheal-controller-state".to_string(),
        lease: Some(lease("2026-12-04T11:59:57Z")),
        notes: Vec::new(),
    }
}

#[test]
fn status_finds_what_is_wrong_and_what_devheal_did() {
    let r = status::build(&status_inputs(), now());
    assert_eq!(r.leader.holder.as_deref(), Some("devheal-controller-7d9f"));
    assert!(!r.leader.expired);
    // Only the Unhealthy device, with its reason and pod.
    assert_eq!(r.devices.len(), 1);
    let d = &r.devices[0];
    assert_eq!((d.node.as_str(), d.device.as_str(), d.health.as_str()), ("gpu-1", "GPU-2", "Unhealthy"));
    assert_eq!(d.reasons, ["kernel_log 79: GPU has fallen off the bus (x3)"]);
    assert_eq!(d.pods, ["ml/llama-0"]);
    // gpu-1 (marks, a source down) and gpu-3 (a DRA quarantine); gpu-2 is fine.
    let names: Vec<&str> = r.nodes.iter().map(|n| n.node.as_str()).collect();
    assert_eq!(names, ["gpu-1", "gpu-3"]);
    let n = &r.nodes[0];
    assert_eq!((n.devices, n.not_healthy, n.quarantines), (2, 1, 1));
    assert_eq!(n.cordon.as_deref(), Some("cordoned"));
    assert_eq!(n.repair.as_deref(), Some("reset_device"));
    assert_eq!(n.sources_down, ["nvml: driver not loaded"]);
    // Both kinds of quarantine, each with its device.
    let q: Vec<(&str, &str)> = r.quarantines.iter().map(|q| (q.node.as_str(), q.device.as_str())).collect();
    assert_eq!(q, [("gpu-1", "GPU-2"), ("gpu-3", "gpu.example.com/pool-a/dev-0")]);
    assert_eq!(r.quarantines[1].by, "DeviceTaintRule devheal-gpu-3-dev-0-1a2b");
    assert_eq!(r.quarantines[1].reason.as_deref(), Some("Xid 48"));
    assert_eq!(r.cordons.len(), 1);
    assert!(r.cordons[0].unschedulable);
    assert_eq!(r.repairs.len(), 1);
    assert_eq!(r.repairs[0].condition.as_deref(), Some("True ResetDevice"));
    assert_eq!(r.repairs[0].requests, ["reset_device GPU-2"]);
    let b = r.budgets.as_ref().expect("budgets from the policy's status");
    assert_eq!((b.budget.quarantined_nodes, b.budget.quarantine_node_limit), (1, 5));
    let br = r.breakers.as_ref().expect("breakers from the state");
    assert_eq!((br.node_breaker_open, br.node_failures), (false, 1));
    assert_eq!(r.policies[0].policy, "ml/training");
    assert!(r.notes.is_empty(), "{:?}", r.notes);
}

#[test]
fn status_text_is_aligned_tables() {
    let text = status::render(&status::build(&status_inputs(), now()));
    assert!(text.starts_with("Leader: devheal-controller-7d9f (renewed 3s ago)\n"), "{text}");
    let expected_devices = "Devices not healthy (1):\n\
        NODE   DEVICE  RESOURCE        HEALTH     SINCE  PODS        REASONS\n\
        gpu-1  GPU-2   nvidia.com/gpu  Unhealthy  12m    ml/llama-0  kernel_log 79: GPU has fallen off the bus (x3)\n";
    assert!(text.contains(expected_devices), "{text}");
    let expected_quarantines = "Quarantines (2):\n\
        NODE   DEVICE                        BY                                        SINCE  REASON\n\
        gpu-1  GPU-2                         taint devheal.io/device-quarantine-5f2a   11m    -\n\
        gpu-3  gpu.example.com/pool-a/dev-0  DeviceTaintRule devheal-gpu-3-dev-0-1a2b  2h     Xid 48\n";
    assert!(text.contains(expected_quarantines), "{text}");
    assert!(text.contains("gpu-1  cordoned  yes            10m    -\n"), "{text}");
    assert!(text.contains("  quarantined nodes      1 of at most 5\n"), "{text}");
    assert!(text.contains("  node failures counted  1 (last 2026-12-04T11:49:00Z)\n"), "{text}");
    assert!(
        text.contains(
            "ml/training  2        QuarantineDevice=1,RestartGang=1  RestartGang ml/llama-0 (10m ago)"
        ),
        "{text}"
    );
    assert!(!text.lines().any(|l| l.ends_with(' ')), "no line ends in spaces:\n{text}");
}

/// `status.network`: a link at fault and one that flapped are listed, with their node; a link
/// up that never flapped is not.
#[test]
fn status_shows_nic_links_down_at_fault_or_flapping() {
    let r = status::build(&status_inputs(), now());
    let links: Vec<(&str, &str, &str, u64)> =
        r.network.iter().map(|l| (l.node.as_str(), l.nic.as_str(), l.link.as_str(), l.flaps)).collect();
    assert_eq!(links, [("gpu-2", "ens1np0,mlx5_0", "Down", 0), ("gpu-2", "0000:0a:00.0", "Up", 2)]);
    assert_eq!(r.network[0].fault_since_age.as_deref(), Some("3m"));
    let text = status::render(&r);
    let expected = "Network links (2):\n\
        NODE   NIC             PCI           LINK  FLAPS  FAULT SINCE  FAULT\n\
        gpu-2  ens1np0,mlx5_0  0000:08:00.0  Down  0      3m           link down on ens1np0 (0000:08:00.0)\n\
        gpu-2  0000:0a:00.0    0000:0a:00.0  Up    2      -            -\n";
    assert!(text.contains(expected), "{text}");
    let empty = status::render(&status::build(&StatusInputs::default(), now()));
    assert!(empty.contains("Network links: none\n"), "{empty}");
}

#[test]
fn status_json_carries_full_times_and_camel_case_fields() {
    let r = status::build(&status_inputs(), now());
    let v = serde_json::to_value(&r).expect("serialises");
    assert_eq!(v["at"], NOW);
    assert_eq!(v["devices"][0]["since"], "2026-12-04T11:48:00Z");
    assert_eq!(v["nodes"][0]["notHealthy"], 1);
    assert_eq!(v["budgets"]["quarantineNodeLimit"], 5);
    assert_eq!(v["budgets"]["from"], "FailurePolicy ml/training");
    assert_eq!(v["breakers"]["nodeBreakerOpen"], false);
    assert_eq!(v["leader"]["renewed"], "2026-12-04T11:59:57Z");
    assert!(v["devices"][0].get("sinceAge").is_none(), "ages are for the text only");
}

/// Each driver version with its nodes and their devices' health, and the upgrade with the
/// health of its canary's nodes now against before.
#[test]
fn status_shows_each_versions_nodes_and_health_and_each_upgrade_stage() {
    let r = status::build(&status_inputs(), now());
    let versions: Vec<(&str, &str, usize, usize, usize)> = r
        .versions
        .iter()
        .map(|v| (v.component.as_str(), v.version.as_str(), v.nodes, v.devices, v.not_healthy))
        .collect();
    // NVML's version is the driver's: one component; the version with devices not Healthy first.
    // The device plugin's version is the one its pod on the node runs.
    assert_eq!(
        versions,
        [
            ("device plugin", "v0.17.0", 1, 1, 0),
            ("driver", "575.57.08", 1, 2, 1),
            ("driver", "570.124.06", 1, 1, 0)
        ]
    );
    assert_eq!(r.versions[1].nodes_not_healthy, ["gpu-1"]);
    assert!(r.versions[2].nodes_not_healthy.is_empty());
    // The controller's state holds the new driver (its canary tripped): the row says so.
    assert!(!r.versions[0].held && r.versions[1].held && !r.versions[2].held);

    assert_eq!(r.upgrades.len(), 1);
    let u = &r.upgrades[0];
    assert_eq!(u.plan, "gpu-operator/nvidia-driver-575");
    assert_eq!((u.component.as_str(), u.phase.as_str()), ("Driver", "Paused"));
    assert_eq!((u.stage, u.stages, u.upgraded_nodes, u.pool_nodes), (1, 2, 1, 2));
    assert_eq!(u.to.as_deref(), Some("7c9d (driver=nvcr.io/nvidia/driver:575.57.08)"));
    assert_eq!(u.stage_nodes.len(), 1);
    let s = &u.stage_nodes[0];
    assert_eq!(
        (s.stage, s.nodes.as_slice(), s.devices, s.not_healthy, s.not_healthy_before),
        (1, &["gpu-1".to_string()][..], 2, 1, 0)
    );

    let text = status::render(&r);
    let expected_versions = "Versions (3):\n\
        COMPONENT      VERSION     NODES  NOT HEALTHY  ON NODES  CANARY\n\
        device plugin  v0.17.0     1      0/1          -         -\n\
        driver         575.57.08   1      1/2          gpu-1     HELD: remediation on its nodes held\n\
        driver         570.124.06  1      0/1          -         -\n";
    assert!(text.contains(expected_versions), "{text}");
    let plan_line =
        text.lines().find(|l| l.starts_with("gpu-operator/nvidia-driver-575  nvidia-driver")).expect(&text);
    for part in ["(Driver)", "Paused", "1/2", "HealthCheckFailed: 1 device turned Unhealthy", "575.57.08"] {
        assert!(plan_line.contains(part), "{part} in {plan_line}");
    }
    assert!(
        text.contains("PLAN                            STAGE  NODES  NOT HEALTHY NOW  BEFORE\n"),
        "{text}"
    );
    assert!(text.contains("gpu-operator/nvidia-driver-575  1      gpu-1  1/2              0\n"), "{text}");
    assert!(!text.lines().any(|l| l.ends_with(' ')), "no line ends in spaces:\n{text}");

    let v = serde_json::to_value(&r).expect("serialises");
    assert_eq!(v["upgrades"][0]["stageNodes"][0]["notHealthy"], 1);
    assert_eq!(v["versions"][1]["notHealthy"], 1);
}

/// A plan not looked at yet (no status) and a cluster without the UpgradePlan CRD are no error.
#[test]
fn an_upgrade_plan_without_status_is_pending() {
    let mut plan = upgrade_plan();
    plan.status = None;
    let inputs = StatusInputs { upgrade_plans: vec![plan], ..StatusInputs::default() };
    let r = status::build(&inputs, now());
    assert_eq!(r.upgrades[0].phase, "Pending");
    assert!(r.upgrades[0].stage_nodes.is_empty());
    assert!(status::render(&r).contains("Upgrades (1):"));
    let empty = status::render(&status::build(&StatusInputs::default(), now()));
    assert!(empty.contains("Upgrades: none\n") && empty.contains("Versions: none\n"), "{empty}");
}

#[test]
fn an_empty_cluster_says_so_and_what_is_missing() {
    let inputs = StatusInputs { notes: vec!["no NodeDeviceHealth at all".into()], ..StatusInputs::default() };
    let r = status::build(&inputs, now());
    let text = status::render(&r);
    assert!(text.contains("Leader: none (nobody holds the Lease: no controller acts)"), "{text}");
    assert!(text.contains("Devices not healthy: none\n"), "{text}");
    assert!(text.contains("Budgets: not reported yet"), "{text}");
    assert!(text.contains("  - no NodeDeviceHealth at all\n"), "{text}");
    assert!(text.contains("no controller Lease found"), "{text}");
}

#[test]
fn a_lease_not_renewed_in_time_is_expired() {
    let inputs = StatusInputs { lease: Some(lease("2026-12-04T11:58:00Z")), ..StatusInputs::default() };
    let r = status::build(&inputs, now());
    assert!(r.leader.expired);
    assert!(status::render(&r).starts_with("Leader: devheal-controller-7d9f (EXPIRED: last renewed 2m ago)"));
}

fn event(reason: &str, kind: &str, name: &str, at: &str, count: Option<i32>) -> Event {
    let mut e = json!({
        "metadata": {"name": format!("{name}-x"), "namespace": "default"},
        "eventTime": at, "reason": reason, "type": "Warning", "note": format!("{reason} note"),
        "reportingController": "devheal.io/controller", "reportingInstance": "c",
        "regarding": {"kind": kind, "name": name}, "action": "Act"
    });
    if let Some(c) = count {
        e["series"] = json!({"count": c, "lastObservedTime": "2026-12-04T11:58:00Z"});
    }
    from(e)
}

#[test]
fn history_is_in_time_order_with_standing_marks_last() {
    let inputs = HistoryInputs {
        node: "gpu-1".into(),
        node_object: nodes().into_iter().next(),
        health: health().into_iter().next(),
        events: vec![
            event("DevhealNodeCordoned", "Node", "gpu-1", "2026-12-04T11:50:00Z", None),
            event("DevhealRepairRequested", "Node", "gpu-1", "2026-12-04T11:49:30Z", Some(4)),
        ],
        state: Some(state()),
        notes: Vec::new(),
    };
    let r = history::build(&inputs);
    assert_eq!(
        r.summary,
        "2 devices, 1 not healthy; cordoned (cordoned); quarantined device; repair requested (reset_device)"
    );
    let times: Vec<Option<&str>> = r.entries.iter().map(|e| e.time.as_deref()).collect();
    let mut sorted = times.clone();
    sorted.sort_by_key(|t| (t.is_none(), *t));
    assert_eq!(times, sorted, "oldest first, no time last");
    let whats: Vec<String> =
        r.entries.iter().map(|e| format!("{} {} {}", e.source, e.subject, e.what)).collect();
    let first = &whats[0];
    assert!(first.starts_with("health GPU-2 Unhealthy"), "{whats:#?}");
    for expected in [
        "health GPU-2 first seen: kernel_log 79: GPU has fallen off the bus (x3)",
        "health GPU-2 last seen: kernel_log 79 (3 times in all)",
        "state GPU-2 incident counted (repeat-offender history)",
        "node GPU-2 taint devheal.io/device-quarantine-5f2a (device quarantined)",
        "state gpu-1 node failure counted by the node breaker",
        "node gpu-1 taint devheal.io/unhealthy=cordoned (cordon)",
        "event Node gpu-1 DevhealNodeCordoned (Warning): DevhealNodeCordoned note",
        // A series is placed at its last sighting, with its count.
        "event Node gpu-1 DevhealRepairRequested (Warning): DevhealRepairRequested note (x4)",
        "node gpu-1 label devheal.io/repair=reset_device (repair requested)",
        "state gpu-1 cordoned by devheal in boot boot-1",
        "state GPU-2 repair requested: reset_device",
        "health agent source nvml down: driver not loaded",
    ] {
        assert!(whats.iter().any(|w| w == expected), "missing {expected:?} in {whats:#?}");
    }
    let series = r.entries.iter().find(|e| e.what.contains("(x4)")).expect("the series");
    assert_eq!(series.time.as_deref(), Some("2026-12-04T11:58:00Z"));
    let text = history::render(&r);
    assert!(text.starts_with("Node gpu-1: 2 devices, 1 not healthy"), "{text}");
    assert!(
        text.contains(
            "\nTIME                  SOURCE  SUBJECT     WHAT\n2026-12-04T11:48:00Z  health  GPU-2       "
        ),
        "{text}"
    );
    assert!(
        text.contains("(now)                 node    gpu-1       label devheal.io/repair=reset_device"),
        "{text}"
    );
}

#[test]
fn history_of_a_node_without_agent_says_so() {
    let inputs = HistoryInputs {
        node: "gpu-9".into(),
        notes: vec!["no NodeDeviceHealth for node gpu-9: is the agent running there?".into()],
        ..HistoryInputs::default()
    };
    let r = history::build(&inputs);
    let text = history::render(&r);
    assert!(text.starts_with("Node gpu-9: no NodeDeviceHealth\n\nNothing recorded.\n"), "{text}");
    assert!(text.contains("is the agent running there?"), "{text}");
    let v = serde_json::to_value(&r).expect("serialises");
    assert_eq!(v["entries"], json!([]));
}

fn gang_pod() -> Pod {
    from(json!({
        "metadata": {"name": "llama-0", "namespace": "ml", "uid": "u0",
                     "labels": {"jobset.sigs.k8s.io/jobset-name": "llama"}},
        "spec": {"nodeName": "gpu-1", "containers": [{"name": "pytorch"}]},
        "status": {"phase": "Running", "startTime": "2026-12-04T09:00:00Z",
                   "conditions": [{"type": "devheal.io/DeviceFailure", "status": "True",
                                   "lastTransitionTime": "2026-12-04T11:50:00Z", "message": "GPU-2 failed"},
                                  {"type": "Ready", "status": "True"}],
                   "containerStatuses": [{"name": "pytorch", "image": "i", "imageID": "", "ready": true,
                                          "restartCount": 0, "state": {"running": {"startedAt": "2026-12-04T09:00:05Z"}}}]}
    }))
}

#[test]
fn explain_runs_the_engine_over_the_live_objects() {
    let inputs = ExplainInputs {
        pod: gang_pod(),
        health: health().into_iter().next(),
        policies: vec![policy()],
        notes: Vec::new(),
    };
    let e = live_explain::build(&inputs, now()).expect("explained");
    assert_eq!(e.pod, "ml/llama-0");
    assert_eq!(e.node.as_deref(), Some("gpu-1"));
    assert_eq!(e.explanation.class, "device_failure");
    assert_eq!(e.explanation.policy, "training");
    assert_eq!(e.explanation.rule.as_deref(), Some("dead-gpu"));
    assert_eq!(e.explanation.action, "restart_gang");
    assert_eq!(e.devices.len(), 1, "only the pod's device");
    assert_eq!(e.devices[0].device, "GPU-2");
    assert_eq!(e.conditions, ["devheal.io/DeviceFailure=True since 2026-12-04T11:50:00Z: GPU-2 failed"]);
    assert!(
        e.last_action.as_deref().is_some_and(|a| a.starts_with("RestartGang by FailurePolicy ml/training"))
    );
    let text = live_explain::render(&e);
    for line in [
        "Pod:        ml/llama-0 (Running) on node gpu-1\n",
        "Class:      device_failure (confidence ",
        "Policy:     training, rule dead-gpu\n",
        "Gang:       ml/jobset/llama\n",
        "Action:     restart_gang\n",
        "Devheal would:\n  - ",
        "  DEVICE  RESOURCE        HEALTH     SINCE                 REASONS\n  GPU-2   nvidia.com/gpu  Unhealthy  2026-12-04T11:48:00Z  kernel_log 79",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    let v = serde_json::to_value(&e).expect("serialises");
    assert_eq!(v["explanation"]["action"], "restart_gang");
}

#[test]
fn explain_without_node_health_still_decides_and_says_why_devices_are_unknown() {
    let inputs = ExplainInputs {
        pod: gang_pod(),
        health: None,
        policies: Vec::new(),
        notes: vec!["no NodeDeviceHealth for node gpu-1: is the agent running there?".into()],
    };
    let e = live_explain::build(&inputs, now()).expect("explained");
    assert_eq!(e.explanation.action, "none", "a running pod with no device evidence needs nothing");
    let text = live_explain::render(&e);
    assert!(text.contains("Devices:    none known\n"), "{text}");
    assert!(text.contains("is the agent running there?"), "{text}");
}
