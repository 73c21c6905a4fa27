//! The `kubectl devheal` plugin against the real API server: a node with an Unhealthy device in
//! its NodeDeviceHealth, devheal's cordon taint and a quarantine taint, a repair label and
//! condition, devheal Events about the node and a pod, a FailurePolicy with budgets in its
//! status, a Lease and the controller's state ConfigMap, a driver version in the node's report
//! and an UpgradePlan paused at that node, all written as devheal would. The
//! real `kubectl-devheal` binary (with the admin kubeconfig in `KUBECONFIG`) must show them in
//! `status`, `history NODE` and `explain POD`, name what is missing in its errors, and run as
//! `kubectl devheal` through kubectl's own plugin lookup. A DRA device quarantined by the real
//! actuator (a DeviceTaintRule) shows among the quarantines. Run as a user bound only to the
//! read-only roles of deploy/base/rbac-viewer.yaml, the plugin says the same, with nothing
//! forbidden.

use std::path::Path;
use std::process::{Command, Output};

use devheal_core::{Action, ActionOutcome, Actuator, DeviceKey, FailureClass, PlannedAction};
use devheal_k8s::actuator::{
    ActuatorConfig, KubeActuator, device_taint_rule_name, discover_device_taint_rules,
};
use devheal_k8s::crd::{FailurePolicy, NodeDeviceHealth, NodeDeviceHealthSpec};
use devheal_k8s::upgrade_plan::UpgradePlan;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::harness::*;
use crate::setup::SYSTEM_NS;

const PLUGIN: &str = env!("CARGO_BIN_EXE_kubectl-devheal");
const DEVICE: &str = "GPU-e2e-0";

fn plugin(kubeconfig: &Path, args: &[&str]) -> Output {
    Command::new(PLUGIN).env("KUBECONFIG", kubeconfig).args(args).output().expect("run kubectl-devheal")
}

/// Its standard output; panics with everything it printed unless it succeeded.
fn ok(out: Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{what} failed: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("--- {what}\n{stdout}");
    stdout
}

/// A kubeconfig for a service account bound only to the viewer roles (deploy/base/rbac-viewer.yaml):
/// the ClusterRole through a ClusterRoleBinding, the Role in devheal's namespace through a
/// RoleBinding, as docs/kubectl-plugin.md tells an administrator to bind them.
async fn viewer_kubeconfig(scope: &Scope) -> std::path::PathBuf {
    let account = format!("viewer-{}", scope.name);
    let objects = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": account, "namespace": scope.ns}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": format!("devheal-viewer-{}", scope.name)},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "devheal-viewer"},
         "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": scope.ns}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": format!("devheal-viewer-{}", scope.name), "namespace": SYSTEM_NS},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "devheal-viewer"},
         "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": scope.ns}]}]});
    kubectl(scope.env, &["apply", "-f", "-"], Some(objects.to_string().as_bytes()));
    let token = crate::setup::token_request(&scope.client, &scope.ns, &account, None, None)
        .await
        .expect("a viewer token");
    token_kubeconfig(scope.env, scope.dir.path(), "viewer", &token)
}

fn line_with<'a>(text: &'a str, needle: &str) -> &'a str {
    text.lines().find(|l| l.contains(needle)).unwrap_or_else(|| panic!("no line with {needle:?} in:\n{text}"))
}

fn ago(secs: i64) -> Timestamp {
    Timestamp::now() - SignedDuration::from_secs(secs)
}

fn nanos(t: Timestamp) -> i64 {
    i64::try_from(t.as_nanosecond()).expect("a time in range")
}

/// An Event as the controller writes it (`events.k8s.io/v1`).
fn devheal_event(reason: &str, regarding: Value, note: &str, namespace: &str) -> Event {
    serde_json::from_value(json!({
        "metadata": {"generateName": "e2e-plugin-", "namespace": namespace},
        "eventTime": Timestamp::now().to_string(),
        "reason": reason, "type": "Warning", "note": note, "action": "Cordon",
        "reportingController": "devheal.io/controller", "reportingInstance": "e2e-plugin",
        "regarding": regarding,
    }))
    .expect("an event")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real control plane: scripts/e2e.sh"]
async fn the_kubectl_plugin_shows_status_history_and_explain() {
    let scope = Scope::new("plugin").await;
    let kubeconfig = scope.env.kubeconfig.clone();
    let client = scope.client.clone();
    let node = scope.add_node("n1", 2).await;
    let quiet = scope.add_node("n2", 1).await;

    // The pod on the failed device, a gang member.
    let pod = pod_object(&scope, "llama-0", &node, 1, json!({"jobset.sigs.k8s.io/jobset-name": "llama"}));
    scope.create_running(&pod).await;

    // NodeDeviceHealth: one device Unhealthy (Xid 79 seen 3 times), one Healthy.
    let ndh: Api<NodeDeviceHealth> = Api::all(client.clone());
    let _ = ndh.delete(&node, &DeleteParams::default()).await;
    ndh.create(
        &PostParams::default(),
        &NodeDeviceHealth::new(&node, NodeDeviceHealthSpec { node_name: node.clone(), ..Default::default() }),
    )
    .await
    .expect("create the NodeDeviceHealth");
    // To the second, as the API server keeps a `Time`.
    let second = |t: Timestamp| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let (first, last) = (second(ago(120)), second(ago(60)));
    let status = json!({"apiVersion": "devheal.io/v1alpha1", "kind": "NodeDeviceHealth", "metadata": {"name": node},
        "status": {"lastHeartbeat": Timestamp::now().to_string(), "devices": [
            {"id": DEVICE, "resource": FAKE_GPU, "health": "Unhealthy", "since": first,
             "reasons": [{"source": "kernel_log", "code": 79, "message": "GPU has fallen off the bus",
                          "firstSeen": first, "lastSeen": last, "count": 3}],
             "pods": [{"namespace": scope.ns, "name": "llama-0"}]},
            {"id": "GPU-e2e-1", "resource": FAKE_GPU, "health": "Healthy"}],
        "sources": [{"name": "kernel_log", "available": true},
                    {"name": "nvml", "available": true, "version": "575.57.08"}]}});
    ndh.patch_status(&node, &PatchParams::apply("devheal-e2e").force(), &Patch::Apply(&status))
        .await
        .expect("publish the status");

    // The node as devheal leaves it: cordoned, the device quarantined, a reset requested.
    let nodes: Api<Node> = Api::all(client.clone());
    let marks = json!({"metadata": {"labels": {"devheal.io/repair": "reset_device"}},
        "spec": {"unschedulable": true, "taints": [
            {"key": "devheal.io/unhealthy", "value": "cordoned", "effect": "NoSchedule"},
            {"key": "devheal.io/device-quarantine-e2e0", "value": DEVICE, "effect": "NoSchedule"}]}});
    nodes.patch(&node, &PatchParams::default(), &Patch::Merge(&marks)).await.expect("mark the node");
    let now = Timestamp::now().to_string();
    let condition = json!({"status": {"conditions": [{"type": "devheal.io/RepairRequested", "status": "True",
        "reason": "ResetDevice", "message": format!("device {DEVICE}: Xid 79"),
        "lastTransitionTime": now, "lastHeartbeatTime": now}]}});
    nodes
        .patch_status(&node, &PatchParams::default(), &Patch::Strategic(&condition))
        .await
        .expect("the condition");

    // devheal's Events: about the node (namespace default) and about the pod.
    let node_uid = nodes.get(&node).await.expect("the node").metadata.uid;
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let regarding = json!({"apiVersion": "v1", "kind": "Node", "name": node, "uid": node_uid});
    let note = format!("node {node} cordoned: device {DEVICE} failed");
    events
        .create(&PostParams::default(), &devheal_event("DevhealNodeCordoned", regarding, &note, "default"))
        .await
        .expect("the node's Event");
    let pod_events: Api<Event> = Api::namespaced(client.clone(), &scope.ns);
    let regarding = json!({"apiVersion": "v1", "kind": "Pod", "namespace": scope.ns, "name": "llama-0"});
    pod_events
        .create(
            &PostParams::default(),
            &devheal_event("DevhealPodMarked", regarding, "marked devheal.io/DeviceFailure", &scope.ns),
        )
        .await
        .expect("the pod's Event");

    // A FailurePolicy with the budgets in its status, as the leader writes it.
    let policies: Api<FailurePolicy> = Api::namespaced(client.clone(), &scope.ns);
    // As JSON: the typed object would send `repair: null`, which the schema refuses.
    let policy = json!({
        "apiVersion": "devheal.io/v1alpha1", "kind": "FailurePolicy",
        "metadata": {"name": "training", "namespace": scope.ns},
        "spec": {"selector": {"matchLabels": {TEST_LABEL: scope.name}},
                 "rules": [{"name": "dead-gpu", "onClasses": ["device_failure"], "action": "RestartGang"}]}});
    kubectl(scope.env, &["create", "-f", "-"], Some(policy.to_string().as_bytes()));
    let policy_status = json!({"status": {"matchedPods": 1, "actionsTaken": {"QuarantineDevice": 1},
        "lastAction": {"action": "QuarantineDevice", "target": format!("{node}/{FAKE_GPU}/{DEVICE}"),
                       "reason": "Xid 79", "at": Timestamp::now().to_string()},
        "budget": {"breakerOpen": false, "quarantinedNodes": 1, "quarantineNodeLimit": 5,
                   "evictionsLastMinute": 0, "heldVersions": []}}});
    policies
        .patch_status("training", &PatchParams::default(), &Patch::Merge(&policy_status))
        .await
        .expect("the policy's status");

    // A driver upgrade paused at its canary (this node), its status as the rollout gate writes it.
    let plan = json!({
        "apiVersion": "devheal.io/v1alpha1", "kind": "UpgradePlan",
        "metadata": {"name": "nvidia-driver-575", "namespace": scope.ns},
        "spec": {"daemonSet": "nvidia-driver", "component": "Driver", "stages": [{"nodes": 1}, {"percent": 50}]}});
    kubectl(scope.env, &["create", "-f", "-"], Some(plan.to_string().as_bytes()));
    let plans: Api<UpgradePlan> = Api::namespaced(client.clone(), &scope.ns);
    let plan_status = json!({"status": {"phase": "Paused", "reason": "HealthCheckFailed",
        "message": "1 device turned Unhealthy or Unknown on upgraded nodes (at most 0)",
        "toRevision": {"hash": "7c9d", "name": "nvidia-driver-7c9d", "revision": 2,
                       "images": "driver=nvcr.io/nvidia/driver:575.57.08"},
        "stage": 1, "upgradedNodes": 1, "poolNodes": 2,
        "nodes": [{"name": node, "stage": 1, "started": Timestamp::now().to_string(), "unhealthyBefore": 0}]}});
    plans
        .patch_status("nvidia-driver-575", &PatchParams::default(), &Patch::Merge(&plan_status))
        .await
        .expect("the plan's status");

    // The Lease a leader holds, and the controller's saved state.
    let leases: Api<Lease> = Api::namespaced(client.clone(), SYSTEM_NS);
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "devheal-controller", "namespace": SYSTEM_NS},
        "spec": {"holderIdentity": "devheal-controller-e2e-leader", "leaseDurationSeconds": 3600,
                 "renewTime": Timestamp::now().to_string()}}))
    .expect("a lease");
    let _ = leases.delete("devheal-controller", &DeleteParams::default()).await;
    leases.create(&PostParams::default(), &lease).await.expect("create the Lease");
    let state = json!({
        "devices": [{"device": {"node": node, "resource": FAKE_GPU, "id": DEVICE}, "incidents": [nanos(ago(110))]}],
        "cordons": [{"node": node, "bootId": format!("boot-{node}")}],
        "repairs": [{"node": node, "requests": [
            {"device": {"node": node, "resource": FAKE_GPU, "id": DEVICE}, "kind": "reset_device"}]}],
        "breaker": {"failures": [{"at": nanos(ago(100)), "node": node}], "lastFailure": nanos(ago(100))}});
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), SYSTEM_NS);
    let map = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "devheal-controller-state"},
                     "data": {"state.json": state.to_string()}});
    maps.patch("devheal-controller-state", &PatchParams::apply("devheal-e2e").force(), &Patch::Apply(&map))
        .await
        .expect("the state ConfigMap");

    // A DRA device quarantined as the controller does it: a DeviceTaintRule by the real actuator.
    let mut served = ActuatorConfig::new("e2e-plugin");
    served.device_taint_rules = discover_device_taint_rules(&client).await.expect("discovery");
    let actuator = KubeActuator::new(client.clone(), served);
    let dra = DeviceKey::new(&node, "gpu.nvidia.com", format!("gpu.nvidia.com/{node}/gpu-1"));
    let quarantine = |on: bool| PlannedAction {
        idempotency_key: format!("e2e-plugin-{on}"),
        action: if on {
            Action::QuarantineDevice { device: dra.clone(), reason: "Xid 48 (double-bit ECC)".into() }
        } else {
            Action::ReleaseDevice { device: dra.clone(), reason: "test over".into() }
        },
        class: FailureClass::DeviceFailure,
        policy: None,
    };
    assert_eq!(actuator.execute(&quarantine(true)).await, ActionOutcome::Done);
    let rule = device_taint_rule_name(&dra);

    // status: the device, the node's marks, the budgets, the breakers, the leader.
    let text = ok(plugin(&kubeconfig, &["status"]), "kubectl-devheal status");
    assert!(text.starts_with("Leader: devheal-controller-e2e-leader (renewed "), "{text}");
    let device = line_with(&text, DEVICE);
    for expected in [node.as_str(), "Unhealthy", "kernel_log 79: GPU has fallen off the bus (x3)", "llama-0"]
    {
        assert!(device.contains(expected), "{expected:?} missing from {device:?}");
    }
    let attention = text.split("Nodes needing attention").nth(1).expect("the nodes section");
    let row = line_with(attention, &node);
    for expected in ["True", "1/2", "cordoned", "reset_device"] {
        assert!(row.contains(expected), "{expected:?} missing from {row:?}");
    }
    assert!(!attention.split("\n\n").next().unwrap_or_default().contains(&quiet), "{quiet} is fine:\n{text}");
    assert!(line_with(&text, "taint devheal.io/device-quarantine-e2e0").contains(DEVICE), "{text}");
    assert!(line_with(&text, "ResetDevice").contains("reset_device GPU-e2e-0"), "{text}");
    assert!(text.contains("  quarantined nodes      1 of at most 5\n"), "{text}");
    assert!(text.contains("  node breaker           closed\n"), "{text}");
    assert!(text.contains("  node failures counted  1 (last "), "{text}");
    let policies_section = text.split("Policies (").nth(1).expect("the policies section");
    assert!(
        line_with(policies_section, &format!("{}/training", scope.ns)).contains("QuarantineDevice=1"),
        "{text}"
    );
    let by_rule = line_with(&text, &format!("DeviceTaintRule {rule}"));
    for expected in [node.as_str(), &format!("gpu.nvidia.com/{node}/gpu-1"), "Xid 48 (double-bit ECC)"] {
        assert!(by_rule.contains(expected), "{expected:?} missing from {by_rule:?}");
    }
    // The driver version the node's NVML reports, with its device not healthy, and the upgrade
    // with the health of its canary.
    let versions = text.split("Versions (").nth(1).expect("the versions section");
    let version = line_with(versions, "575.57.08");
    for expected in ["driver", node.as_str()] {
        assert!(version.contains(expected), "{expected:?} missing from {version:?}");
    }
    let upgrades = text.split("Upgrades (").nth(1).expect("the upgrades section");
    let plan_name = format!("{}/nvidia-driver-575", scope.ns);
    let plan_row = line_with(upgrades, &plan_name);
    for expected in ["nvidia-driver (Driver)", "Paused", "1/2", "HealthCheckFailed", "575.57.08"] {
        assert!(plan_row.contains(expected), "{expected:?} missing from {plan_row:?}");
    }
    let stages = upgrades.split("NOT HEALTHY NOW").nth(1).expect("the upgrade's stage table");
    let cells: Vec<&str> = line_with(stages, &plan_name).split_whitespace().collect();
    assert_eq!(cells, [plan_name.as_str(), "1", node.as_str(), "1/2", "0"], "{text}");
    let status_text = text.clone();
    let json_out = ok(plugin(&kubeconfig, &["status", "-o", "json"]), "kubectl-devheal status -o json");
    let report: Value = serde_json::from_str(&json_out).expect("status -o json is JSON");
    let devices = report["devices"].as_array().expect("devices");
    assert!(devices.iter().any(|d| d["device"] == DEVICE && d["since"] == first.as_str()), "{json_out}");
    assert_eq!(report["leader"]["holder"], "devheal-controller-e2e-leader");

    // history: every trace, oldest first.
    let text = ok(plugin(&kubeconfig, &["history", &node]), "kubectl-devheal history");
    assert!(
        text.starts_with(&format!("Node {node}: 2 devices, 1 not healthy; cordoned (cordoned)")),
        "{text}"
    );
    // The last match: Events about the same node name from an earlier run stay in `default`.
    let position = |needle: &str| text.rfind(needle).unwrap_or_else(|| panic!("{needle:?} missing:\n{text}"));
    let seen = position("first seen: kernel_log 79: GPU has fallen off the bus (x3)");
    let incident = position("incident counted");
    let breaker = position("node failure counted by the node breaker");
    let cordoned = position("DevhealNodeCordoned (Warning)");
    let marked = position("DevhealPodMarked (Warning)");
    let label = position("label devheal.io/repair=reset_device");
    assert!(seen < incident && incident < breaker && breaker < cordoned, "in time order:\n{text}");
    assert!(cordoned < label && marked < label, "standing marks last:\n{text}");
    position("condition devheal.io/RepairRequested=True (ResetDevice)");
    position("repair requested: reset_device");

    // explain: the engine's verdict on the live pod with its node's health and the policy.
    let text = ok(plugin(&kubeconfig, &["explain", "llama-0", "-n", &scope.ns]), "kubectl-devheal explain");
    for expected in [
        format!("Pod:        {}/llama-0 (Running) on node {node}\n", scope.ns),
        "Class:      device_failure".to_string(),
        "Policy:     training, rule dead-gpu\n".to_string(),
        format!("Gang:       {}/jobset/llama\n", scope.ns),
        "Action:     restart_gang\n".to_string(),
    ] {
        assert!(text.contains(&expected), "{expected:?} missing:\n{text}");
    }
    assert!(line_with(&text, DEVICE).contains("Unhealthy"), "{text}");

    // What is missing is named.
    let text = ok(plugin(&kubeconfig, &["history", &quiet]), "kubectl-devheal history (no agent)");
    assert!(
        text.contains(&format!("no NodeDeviceHealth for node {quiet}: is the agent running there?")),
        "{text}"
    );
    let out = plugin(&kubeconfig, &["history", "no-such-node-e2e"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("no node no-such-node-e2e"), "{err}");
    let out = plugin(&kubeconfig, &["explain", "nope", "-n", &scope.ns]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains(&format!("no pod nope in namespace {}", scope.ns)),
        "{err}"
    );

    // As a user bound only to the viewer roles: the same status, nothing forbidden or missing.
    let viewer = viewer_kubeconfig(&scope).await;
    let as_viewer = plugin(&viewer, &["status"]);
    let err = String::from_utf8_lossy(&as_viewer.stderr).into_owned();
    let viewed = ok(as_viewer, "kubectl-devheal status (viewer)");
    assert!(!viewed.contains("forbidden") && !err.contains("forbidden"), "{viewed}{err}");
    // The same report, but for the ages printed ("12s ago"), which may tick between the runs.
    let ageless = |t: &str| {
        t.lines().map(|l| l.split(" ago").next().unwrap_or_default().to_string()).collect::<Vec<_>>()
    };
    assert_eq!(
        ageless(&viewed).len(),
        ageless(&status_text).len(),
        "viewer:\n{viewed}\nadmin:\n{status_text}"
    );
    for line in
        ["Leader: devheal-controller-e2e-leader", "DeviceTaintRule", "  node breaker           closed"]
    {
        assert!(viewed.contains(line), "{line:?} missing for the viewer:\n{viewed}");
    }
    assert!(line_with(&viewed, DEVICE).contains("Unhealthy"), "{viewed}");
    for args in [vec!["history", node.as_str()], vec!["explain", "llama-0", "-n", &scope.ns]] {
        let out = plugin(&viewer, &args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        let text = ok(out, &format!("kubectl-devheal {} (viewer)", args[0]));
        assert!(!text.contains("forbidden") && !err.contains("forbidden"), "{text}{err}");
    }
    // The viewer cannot write: a cordon through its credentials is refused.
    let viewer_client = token_client(&viewer).await;
    let refused = Api::<Node>::all(viewer_client)
        .patch(&node, &PatchParams::default(), &Patch::Merge(&json!({"spec": {"unschedulable": false}})))
        .await;
    assert!(matches!(refused, Err(kube::Error::Api(ref e)) if e.code == 403), "{refused:?}");

    // Through kubectl's own plugin lookup: `kubectl devheal status` with the binary on PATH.
    let dir = Path::new(PLUGIN).parent().expect("the binary's directory");
    let path = format!("{}:{}", dir.display(), std::env::var("PATH").unwrap_or_default());
    let out = Command::new("kubectl")
        .env("PATH", path)
        .env("KUBECONFIG", &kubeconfig)
        .args(["devheal", "status"])
        .output()
        .expect("run kubectl");
    let text = ok(out, "kubectl devheal status");
    assert!(line_with(&text, DEVICE).contains("Unhealthy"), "{text}");

    assert_eq!(actuator.execute(&quarantine(false)).await, ActionOutcome::Done);
    // The state and the Lease are the controller's: leave none of ours for the next test.
    let _ = maps.delete("devheal-controller-state", &DeleteParams::default()).await;
    let _ = leases.delete("devheal-controller", &DeleteParams::default()).await;
    let _ = ndh.delete(&node, &DeleteParams::default()).await;
}
