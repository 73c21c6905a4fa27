//! The Kubernetes actuator and the Lease elector, each action sent to the real API server with
//! the controller's own service-account credentials (so `deploy/base`'s RBAC is in force), and
//! each result read back from the server: what was changed, what was left alone, which Event was
//! written, and what each real answer (404, 409, 429, a stale uid) becomes.
//!
//! These replace the scripted-server tests of the same behaviour; what stays scripted
//! (`crates/k8s/tests/*_mock.rs`) is what the real server cannot do on demand: a 5xx, no answer,
//! a patch whose `test` fails because the object changed between a read and a write, an Event
//! that cannot be written.

use std::time::Duration;

use devheal_core::action::PodRef;
use devheal_core::{
    Action, ActionOutcome, Actuator, DeviceKey, FailureClass, GangId, PlannedAction, RepairKind,
};
use devheal_k8s::StatusWriteError;
use devheal_k8s::actuator::{
    ActuatorConfig, DeviceTaintRuleSupport, KubeActuator, device_taint_rule_name,
    discover_device_taint_rules, node_quarantine_taint_key,
};
use devheal_k8s::crd::{BudgetStatus, FailurePolicyStatus, LastAction, k8s_time};
use devheal_k8s::lease::LeaseElector;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Client;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
    PostParams,
};
use serde_json::{Value, json};

use crate::harness::*;
use crate::setup::SYSTEM_NS;

/// The controller's client (its service account's token).
async fn controller_client(scope: &Scope) -> Client {
    token_client(&scope.controller_credentials().await).await
}

fn config() -> ActuatorConfig {
    let mut c = ActuatorConfig::new("e2e-actuator");
    c.backoff_base = Duration::from_secs(1);
    c.backoff_cap = Duration::from_secs(3);
    c
}

/// An action as the engine hands it out: its key names the action and its target (the actuator
/// remembers gang restarts by key, so two restarts need two keys, as two incidents have).
fn planned(action: Action) -> PlannedAction {
    PlannedAction {
        idempotency_key: format!("e2e/{}", action.summary()),
        action,
        class: FailureClass::DeviceFailure,
        policy: None,
    }
}

/// A pod of this test bound to `node` (no kubelet: a deleted pod stays terminating until the
/// test removes it), with `labels`, in `phase` ("Pending" leaves the status as created).
async fn pod(scope: &Scope, name: &str, node: &str, labels: Value, phase: &str) -> Pod {
    let object = pod_object(scope, name, node, 0, labels);
    let status = match phase {
        "Running" => return scope.create_running(&object).await,
        "Pending" => {
            return scope.pods().create(&PostParams::default(), &object).await.expect("create a pod");
        }
        other => json!({"status": {"phase": other}}),
    };
    scope.pods().create(&PostParams::default(), &object).await.expect("create a pod");
    scope
        .pods()
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("set the pod's status")
}

fn pod_ref(p: &Pod) -> PodRef {
    PodRef {
        namespace: p.metadata.namespace.clone().unwrap_or_default(),
        name: p.metadata.name.clone().unwrap_or_default(),
        uid: p.metadata.uid.clone().unwrap_or_default(),
    }
}

async fn get(scope: &Scope, name: &str) -> Option<Pod> {
    scope.pods().get_opt(name).await.expect("read a pod")
}

fn deleting(p: &Option<Pod>) -> bool {
    p.as_ref().is_none_or(|p| p.metadata.deletion_timestamp.is_some())
}

/// The condition `type_` of a pod: (status, reason, message).
fn pod_condition(p: &Pod, type_: &str) -> Option<(String, String, String)> {
    let c = p.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.reason.clone().unwrap_or_default(), c.message.clone().unwrap_or_default()))
}

/// A watch of pod `name` (listed before this returns) that ends `true` once an update shows the
/// `foregroundDeletion` finalizer, `false` if the watch ends first.
async fn watch_for_foreground_deletion(scope: &Scope, name: &str) -> tokio::task::JoinHandle<bool> {
    use futures::StreamExt;
    use kube::runtime::watcher::{self, Event};
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = watcher::watcher(scope.pods(), config).boxed();
    let foreground = |p: &Pod| p.metadata.finalizers.iter().flatten().any(|f| f == "foregroundDeletion");
    // Listed first, so no update after this returns is missed.
    while let Some(event) = stream.next().await {
        if matches!(event, Ok(Event::InitDone)) {
            break;
        }
    }
    tokio::spawn(async move {
        while let Some(event) = stream.next().await {
            if let Ok(Event::Apply(p) | Event::InitApply(p)) = event
                && foreground(&p)
            {
                return true;
            }
        }
        false
    })
}

/// Remove this test's pods at once (they are bound to a node no kubelet runs).
async fn force_delete_pods(scope: &Scope) {
    let dp = DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::default() };
    let _ = scope.pods().delete_collection(&dp, &ListParams::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real control plane: scripts/e2e.sh"]
async fn pod_marks_and_evictions_on_the_real_server() {
    let scope = Scope::new("act-pods").await;
    let node = scope.add_node("n1", 0).await;
    let a = KubeActuator::new(controller_client(&scope).await, config());
    let p0 = pod(&scope, "p0", &node, json!({}), "Running").await;

    // MarkPod: one condition merged into the pod's status; the kubelet's conditions stay.
    let mark = |p: PodRef| Action::MarkPod {
        pod: p,
        condition_type: "devheal.io/DeviceFailure".into(),
        reason: "XidFallenOffBus".into(),
        message: "Xid 79 on GPU-1".into(),
    };
    assert_eq!(a.execute(&planned(mark(pod_ref(&p0)))).await, ActionOutcome::Done);
    let now = get(&scope, "p0").await.expect("p0");
    assert_eq!(
        pod_condition(&now, "devheal.io/DeviceFailure"),
        Some(("True".into(), "XidFallenOffBus".into(), "Xid 79 on GPU-1".into()))
    );
    assert_eq!(condition(&now, "Ready").as_deref(), Some("True"), "the kubelet's conditions must stay");
    let marked = events(&scope.client, &scope.ns, "DevhealPodMarked").await;
    assert_eq!(marked.len(), 1, "{marked:?}");
    assert_eq!(marked[0]["regarding"]["name"], "p0");
    assert_eq!(marked[0]["regarding"]["uid"], json!(p0.metadata.uid));
    assert_eq!(marked[0]["type"], "Warning");
    assert_eq!(marked[0]["reportingController"], "devheal.io/controller");

    // ReplaceAtCheckpoint is a second condition beside the first.
    let replace = Action::ReplaceAtCheckpoint {
        pod: pod_ref(&p0),
        gang: GangId { namespace: scope.ns.clone(), kind: "jobset".into(), name: "llama".into() },
        devices: vec![DeviceKey::new(&node, "nvidia.com/gpu", "GPU-1")],
        reason: "DeviceDegraded: straggler".into(),
    };
    assert_eq!(a.execute(&planned(replace)).await, ActionOutcome::Done);
    let now = get(&scope, "p0").await.expect("p0");
    assert_eq!(pod_condition(&now, "devheal.io/ReplaceAtCheckpoint").map(|c| c.1), Some("SlowMember".into()));
    assert!(pod_condition(&now, "devheal.io/DeviceFailure").is_some(), "the first mark must stay");

    // A pod re-created under the same name (another uid), or one that is gone: nothing to mark.
    let mut stale = pod_ref(&p0);
    stale.uid = "00000000-0000-0000-0000-000000000000".into();
    assert_eq!(a.execute(&planned(mark(stale.clone()))).await, ActionOutcome::Gone);
    let mut missing = pod_ref(&p0);
    missing.name = "never-created".into();
    assert_eq!(a.execute(&planned(mark(missing.clone()))).await, ActionOutcome::Gone);

    // EvictPod: the Eviction API with the uid precondition.
    let evict = |p: PodRef| Action::EvictPod { pod: p, reason: "GPU-1 fell off the bus".into() };
    let p1 = pod(&scope, "p1", &node, json!({}), "Running").await;
    let mut stale1 = pod_ref(&p1);
    stale1.uid = stale.uid.clone();
    assert_eq!(a.execute(&planned(evict(stale1))).await, ActionOutcome::Gone, "another pod by that name");
    assert!(!deleting(&get(&scope, "p1").await), "a stale uid must not evict the pod that has the name now");
    assert_eq!(a.execute(&planned(evict(missing))).await, ActionOutcome::Gone);
    assert_eq!(a.execute(&planned(evict(pod_ref(&p1)))).await, ActionOutcome::Done);
    let now = get(&scope, "p1").await;
    assert!(deleting(&now), "evicted");
    assert_eq!(now.and_then(|p| condition(&p, "DisruptionTarget")).as_deref(), Some("True"));
    assert_eq!(events(&scope.client, &scope.ns, "DevhealEvicted").await.len(), 1);

    // A PodDisruptionBudget that allows no disruption: 429, retried with a growing, capped delay.
    let p2 = pod(&scope, "p2", &node, json!({"app": "solo"}), "Running").await;
    let pdbs: Api<DynamicObject> = Api::namespaced_with(
        scope.client.clone(),
        &scope.ns,
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("policy", "v1", "PodDisruptionBudget"),
            "poddisruptionbudgets",
        ),
    );
    let pdb = |min: i32| -> DynamicObject {
        serde_json::from_value(json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": {"name": "solo", "namespace": scope.ns},
            "spec": {"minAvailable": min, "selector": {"matchLabels": {"app": "solo"}}}}))
        .expect("a PDB")
    };
    pdbs.create(&PostParams::default(), &pdb(1)).await.expect("create the PDB");
    eventually("the disruption controller counts the PDB's pods", Duration::from_secs(30), || {
        let pdbs = pdbs.clone();
        async move {
            let v = serde_json::to_value(pdbs.get("solo").await.ok()?).ok()?;
            (v["status"]["currentHealthy"] == 1 && v["status"]["disruptionsAllowed"] == 0).then_some(())
        }
    })
    .await;
    let mut delays = Vec::new();
    for _ in 0..4 {
        match a.execute(&planned(evict(pod_ref(&p2)))).await {
            ActionOutcome::Retry { after_ms, reason } => {
                assert!(reason.contains("HTTP 429"), "{reason}");
                delays.push(after_ms);
            }
            other => panic!("an eviction the budget forbids gave {other:?}"),
        }
    }
    // Jittered (on by default): each delay within [d/2, d] of 1 s doubling to the 3 s cap.
    for (got, full) in delays.iter().zip([1000u64, 2000, 3000, 3000]) {
        assert!((full / 2..=full).contains(got), "delays {delays:?}");
    }
    assert!(!deleting(&get(&scope, "p2").await));
    assert_eq!(
        events(&scope.client, &scope.ns, "DevhealEvictionBlocked").await.len(),
        1,
        "one Event per blocked target"
    );
    // Once the budget allows it, the eviction goes through.
    pdbs.patch("solo", &PatchParams::default(), &Patch::Merge(&json!({"spec": {"minAvailable": 0}})))
        .await
        .expect("relax the PDB");
    eventually("the eviction goes through once the budget allows it", Duration::from_secs(30), || {
        let (a, p) = (&a, planned(evict(pod_ref(&p2))));
        async move { (a.execute(&p).await == ActionOutcome::Done).then_some(()) }
    })
    .await;
    assert!(deleting(&get(&scope, "p2").await));
    force_delete_pods(&scope).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real control plane: scripts/e2e.sh"]
async fn gang_restarts_and_failed_workloads_on_the_real_server() {
    let scope = Scope::new("act-gangs").await;
    let node = scope.add_node("n1", 0).await;
    let a = KubeActuator::new(controller_client(&scope).await, config());
    let jobset =
        json!({"jobset.sigs.k8s.io/jobset-name": "llama", "batch.kubernetes.io/job-name": "llama-workers-0"});
    pod(&scope, "w-0", &node, jobset.clone(), "Running").await;
    pod(&scope, "w-1", &node, jobset.clone(), "Pending").await;
    pod(&scope, "w-2", &node, jobset.clone(), "Succeeded").await;
    pod(&scope, "w-3", &node, jobset.clone(), "Running").await;
    scope.pods().delete("w-3", &DeleteParams::default()).await.expect("delete w-3");
    pod(&scope, "other-0", &node, json!({"jobset.sigs.k8s.io/jobset-name": "other"}), "Running").await;
    let gang =
        |kind: &str, name: &str| GangId { namespace: scope.ns.clone(), kind: kind.into(), name: name.into() };

    // RestartGang: every live member (Running, Pending) marked, then deleted; a finished member,
    // one already terminating, and another gang's pod are left alone.
    let restart = planned(Action::RestartGang {
        gang: gang("jobset", "llama"),
        incident: "inc-42".into(),
        reason: "GPU-1 fell off the bus".into(),
        in_place: vec![],
    });
    assert_eq!(a.execute(&restart).await, ActionOutcome::Done);
    for name in ["w-0", "w-1"] {
        let p = get(&scope, name).await.expect("a member");
        assert!(p.metadata.deletion_timestamp.is_some(), "{name} must be deleted");
        let (status, reason, message) =
            pod_condition(&p, "devheal.io/GangRestart").expect("the GangRestart mark");
        assert_eq!((status.as_str(), reason.as_str()), ("True", "DevhealGangRestart"));
        assert!(message.contains("incident inc-42"), "{message}");
    }
    let w2 = get(&scope, "w-2").await.expect("w-2");
    assert!(
        w2.metadata.deletion_timestamp.is_none() && pod_condition(&w2, "devheal.io/GangRestart").is_none()
    );
    assert!(pod_condition(&get(&scope, "w-3").await.expect("w-3"), "devheal.io/GangRestart").is_none());
    assert!(!deleting(&get(&scope, "other-0").await), "another gang's pod");
    let restarted = events(&scope.client, &scope.ns, "DevhealGangRestart").await;
    assert_eq!(restarted.len(), 1);
    assert!(restarted[0]["note"].as_str().unwrap_or("").contains("deleted 2 of 2 pods"), "{}", restarted[0]);
    // A replay (a retry, a restarted controller's duplicate) spares members created since.
    pod(&scope, "w-0b", &node, jobset.clone(), "Pending").await;
    assert_eq!(a.execute(&restart).await, ActionOutcome::Done);
    assert!(!deleting(&get(&scope, "w-0b").await), "a replay must not delete the re-created member");

    // A LeaderWorkerSet group: the leader is deleted in the foreground (its workers go with it).
    let lws = |worker: &str| {
        json!({"leaderworkerset.sigs.k8s.io/name": "vllm", "leaderworkerset.sigs.k8s.io/group-index": "3",
               "leaderworkerset.sigs.k8s.io/worker-index": worker})
    };
    pod(&scope, "vllm-3", &node, lws("0"), "Running").await;
    pod(&scope, "vllm-3-1", &node, lws("1"), "Running").await;
    let lws_restart = Action::RestartGang {
        gang: gang("lws", "vllm/3"),
        incident: "inc-7".into(),
        reason: "r".into(),
        in_place: vec![],
    };
    // The garbage collector lifts `foregroundDeletion` as soon as it sees no dependents, so the
    // finalizer is looked for in every update a watch of the leader shows, not in one read.
    let foreground = watch_for_foreground_deletion(&scope, "vllm-3").await;
    assert_eq!(a.execute(&planned(lws_restart)).await, ActionOutcome::Done);
    let leader = get(&scope, "vllm-3").await.expect("the leader (terminating)");
    assert!(leader.metadata.deletion_timestamp.is_some());
    let foreground = tokio::time::timeout(Duration::from_secs(10), foreground).await;
    assert!(matches!(foreground, Ok(Ok(true))), "a foreground deletion");
    assert!(!deleting(&get(&scope, "vllm-3-1").await), "workers go with their leader, not one by one");

    // A PodGroup whose pods are all finished: nothing to restart.
    let mut done = pod_object(&scope, "mpi-0", &node, 0, json!({}));
    done.metadata.annotations =
        Some([("scheduling.k8s.io/group-name".to_string(), "pg1".to_string())].into());
    scope.pods().create(&PostParams::default(), &done).await.expect("create mpi-0");
    scope
        .pods()
        .patch_status(
            "mpi-0",
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": {"phase": "Failed"}})),
        )
        .await
        .expect("mpi-0 failed");
    let pg = Action::RestartGang {
        gang: gang("podgroup", "pg1"),
        incident: "i".into(),
        reason: "r".into(),
        in_place: vec![],
    };
    assert_eq!(a.execute(&planned(pg)).await, ActionOutcome::Gone);

    // FailWorkload of an Indexed Job: each pod marked WorkloadFailed, then deleted.
    let indexed =
        json!({"batch.kubernetes.io/job-name": "idx", "batch.kubernetes.io/job-completion-index": "0"});
    pod(&scope, "idx-0", &node, indexed, "Running").await;
    let fail = Action::FailWorkload { gang: gang("job", "idx"), reason: "lemon node, 5 restarts".into() };
    assert_eq!(a.execute(&planned(fail)).await, ActionOutcome::Done);
    let p = get(&scope, "idx-0").await.expect("idx-0 (terminating)");
    assert!(p.metadata.deletion_timestamp.is_some());
    assert_eq!(pod_condition(&p, "devheal.io/WorkloadFailed").map(|c| c.0), Some("True".into()));
    // FailWorkload of a Volcano job only marks (Volcano's own policy fails the job).
    pod(&scope, "mpi-w-0", &node, json!({"volcano.sh/job-name": "mpi"}), "Running").await;
    let fail = Action::FailWorkload { gang: gang("volcano", "mpi"), reason: "r".into() };
    assert_eq!(a.execute(&planned(fail)).await, ActionOutcome::Done);
    let p = get(&scope, "mpi-w-0").await.expect("mpi-w-0");
    assert!(p.metadata.deletion_timestamp.is_none());
    assert_eq!(pod_condition(&p, "devheal.io/WorkloadFailed").map(|c| c.0), Some("True".into()));
    assert_eq!(events(&scope.client, &scope.ns, "DevhealWorkloadFailed").await.len(), 2);
    force_delete_pods(&scope).await;
}

fn taint_keys(n: &Node) -> Vec<(String, Option<String>)> {
    n.spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|t| (t.key, t.value))
        .collect()
}

fn unschedulable(n: &Node) -> bool {
    n.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real control plane: scripts/e2e.sh"]
async fn device_and_node_actions_on_the_real_server() {
    let scope = Scope::new("act-nodes").await;
    let name = scope.add_node("n1", 0).await;
    let client = controller_client(&scope).await;
    let nodes: Api<Node> = Api::all(scope.client.clone());
    let node = || async { nodes.get(&name).await.expect("read the node") };
    let plain = KubeActuator::new(client.clone(), config());

    // A node without taints: the cordon's JSON patch tests for their absence, then adds ours.
    let cordon = planned(Action::CordonNode { node: name.clone(), reason: "3 GPUs unhealthy".into() });
    let uncordon = planned(Action::UncordonNode { node: name.clone(), reason: "repaired".into() });
    assert!(taint_keys(&node().await).is_empty());
    assert_eq!(plain.execute(&cordon).await, ActionOutcome::Done);
    let n = node().await;
    assert!(unschedulable(&n));
    assert_eq!(taint_keys(&n), vec![("devheal.io/unhealthy".to_string(), Some("cordoned".to_string()))]);
    assert_eq!(plain.execute(&uncordon).await, ActionOutcome::Done);
    let n = node().await;
    assert!(!unschedulable(&n) && taint_keys(&n).is_empty());

    let other = json!({"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"});
    nodes
        .patch(&name, &PatchParams::default(), &Patch::Merge(&json!({"spec": {"taints": [other]}})))
        .await
        .expect("another tool's taint");

    // Discovery: the release serves DeviceTaintRule at resource.k8s.io/v1.
    let support = discover_device_taint_rules(&client).await.expect("discovery");
    assert_eq!(support, DeviceTaintRuleSupport::Served { version: "v1".into() });
    let mut served = config();
    served.device_taint_rules = support;
    let a = KubeActuator::new(client.clone(), served.clone());

    // A device-plugin device: a per-device node taint, next to the other tool's, once.
    let gpu = DeviceKey::new(&name, "nvidia.com/gpu", "GPU-fef8089b-4820-abfc-e83e-94318197576e");
    let key = node_quarantine_taint_key(&gpu);
    let quarantine =
        |d: &DeviceKey| planned(Action::QuarantineDevice { device: d.clone(), reason: "Xid 79".into() });
    let release = |d: &DeviceKey| {
        planned(Action::ReleaseDevice { device: d.clone(), reason: "probation passed".into() })
    };
    assert_eq!(a.execute(&quarantine(&gpu)).await, ActionOutcome::Done);
    assert_eq!(a.execute(&quarantine(&gpu)).await, ActionOutcome::Done);
    let ours = (key.clone(), Some(gpu.id.clone()));
    let present = ("nvidia.com/gpu".to_string(), Some("present".to_string()));
    assert_eq!(taint_keys(&node().await), vec![present.clone(), ours]);
    // Release removes only ours, whatever else was added meanwhile.
    let mut taints = node().await.spec.and_then(|s| s.taints).unwrap_or_default();
    taints.push(serde_json::from_value(json!({"key": "x", "effect": "PreferNoSchedule"})).expect("a taint"));
    nodes
        .patch(&name, &PatchParams::default(), &Patch::Merge(&json!({"spec": {"taints": taints}})))
        .await
        .expect("a third taint");
    assert_eq!(a.execute(&release(&gpu)).await, ActionOutcome::Done);
    assert_eq!(taint_keys(&node().await), vec![present.clone(), ("x".to_string(), None)]);

    // A DRA device: one DeviceTaintRule, created once, deleted once.
    let dra = DeviceKey::new(&name, "gpu.nvidia.com", format!("gpu.nvidia.com/{name}/gpu-3"));
    let rules: Api<DynamicObject> = Api::all_with(
        scope.client.clone(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("resource.k8s.io", "v1", "DeviceTaintRule"),
            "devicetaintrules",
        ),
    );
    let rule = device_taint_rule_name(&dra);
    assert_eq!(a.execute(&quarantine(&dra)).await, ActionOutcome::Done);
    assert_eq!(a.execute(&quarantine(&dra)).await, ActionOutcome::Done, "already there (409)");
    let v = serde_json::to_value(rules.get(&rule).await.expect("the rule")).expect("json");
    assert_eq!(
        v["spec"]["deviceSelector"],
        json!({"driver": "gpu.nvidia.com", "pool": name, "device": "gpu-3"})
    );
    assert_eq!(v["spec"]["taint"]["key"], "devheal.io/device-quarantine");
    assert_eq!(v["metadata"]["annotations"]["devheal.io/device"], dra.to_string());
    assert_eq!(v["metadata"]["labels"]["app.kubernetes.io/managed-by"], "devheal");
    assert_eq!(a.execute(&release(&dra)).await, ActionOutcome::Done);
    assert!(rules.get_opt(&rule).await.expect("read").is_none());
    assert_eq!(a.execute(&release(&dra)).await, ActionOutcome::Done, "already gone (404)");
    let quarantined = events(&scope.client, "default", "DevhealDeviceQuarantined").await;
    let on_rule =
        |e: &&Value| e["regarding"]["name"] == rule.as_str() && e["regarding"]["uid"] == v["metadata"]["uid"];
    assert_eq!(quarantined.iter().filter(on_rule).count(), 1, "one Event on this rule");
    // The same DRA device in the shapes it is reported in besides the agent's: PodResources'
    // `pool/device` under the driver, and a pod status' claim (KEP-4680) naming it by the NVIDIA
    // driver's CDI id (pool: the node's name). Each is a rule for that device, never a node taint.
    let taints_before = taint_keys(&node().await);
    for (resource, id) in [
        ("gpu.nvidia.com".to_string(), format!("{name}/gpu-4")),
        (
            "claim:train-gpus/gpu".to_string(),
            "k8s.gpu.nvidia.com/claim=dab5ab50-d59a-42a6-af16-cfd4628c0f7a-gpu-5".to_string(),
        ),
    ] {
        let shaped = DeviceKey::new(&name, resource, id);
        let rule = device_taint_rule_name(&devheal_core::canonical_key(&shaped));
        let canonical = devheal_core::canonical_key(&shaped);
        assert_eq!(a.execute(&quarantine(&canonical)).await, ActionOutcome::Done, "{shaped}");
        let v = serde_json::to_value(rules.get(&rule).await.expect("the rule")).expect("json");
        let device = canonical.id.rsplit('/').next().unwrap_or_default().to_string();
        assert_eq!(
            v["spec"]["deviceSelector"],
            json!({"driver": "gpu.nvidia.com", "pool": name, "device": device})
        );
        // The engine hands the actuator canonical keys; the raw shape is a DRA device as well.
        let raw_rule = device_taint_rule_name(&shaped);
        assert_eq!(a.execute(&quarantine(&shaped)).await, ActionOutcome::Done, "{shaped}");
        let raw = serde_json::to_value(rules.get(&raw_rule).await.expect("the rule")).expect("json");
        assert_eq!(raw["spec"]["deviceSelector"], v["spec"]["deviceSelector"], "{shaped}");
        for r in [&rule, &raw_rule] {
            let _ = rules.delete(r, &Default::default()).await;
        }
    }
    assert_eq!(taint_keys(&node().await), taints_before, "no node taint for a DRA device");

    // CordonNode / UncordonNode beside another tool's taints: devheal's cordon is marked as
    // devheal's, and only it is undone.
    let mine = ("devheal.io/unhealthy".to_string(), Some("cordoned".to_string()));
    assert_eq!(a.execute(&cordon).await, ActionOutcome::Done);
    assert_eq!(a.execute(&cordon).await, ActionOutcome::Done);
    let n = node().await;
    assert!(unschedulable(&n));
    assert_eq!(taint_keys(&n).into_iter().filter(|t| *t == mine).count(), 1);
    assert_eq!(a.execute(&uncordon).await, ActionOutcome::Done);
    let n = node().await;
    assert!(!unschedulable(&n));
    assert_eq!(taint_keys(&n), vec![present.clone(), ("x".to_string(), None)]);
    assert_eq!(a.execute(&uncordon).await, ActionOutcome::Done, "nothing of ours to undo");
    // Someone else's cordon stays when devheal's is lifted.
    nodes
        .patch(&name, &PatchParams::default(), &Patch::Merge(&json!({"spec": {"unschedulable": true}})))
        .await
        .expect("an operator cordons the node");
    assert_eq!(a.execute(&cordon).await, ActionOutcome::Done);
    let before = ("devheal.io/unhealthy".to_string(), Some("already-cordoned".to_string()));
    assert!(taint_keys(&node().await).contains(&before));
    assert_eq!(a.execute(&uncordon).await, ActionOutcome::Done);
    let n = node().await;
    assert!(unschedulable(&n), "the operator's cordon must stay");
    assert!(!taint_keys(&n).iter().any(|(k, _)| k == "devheal.io/unhealthy"));
    let missing = planned(Action::UncordonNode { node: "e2e-no-such-node".into(), reason: "r".into() });
    assert_eq!(a.execute(&missing).await, ActionOutcome::Gone);

    // RequestRepair: a node condition beside the kubelet's, and a label.
    let repair = Action::RequestRepair {
        node: name.clone(),
        device: Some(gpu.clone()),
        kind: RepairKind::ResetDevice,
        reason: "Xid 79".into(),
    };
    assert_eq!(a.execute(&planned(repair)).await, ActionOutcome::Done);
    let n = node().await;
    let conditions = n.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
    let repair = conditions.iter().find(|c| c.type_ == "devheal.io/RepairRequested").expect("the condition");
    assert_eq!((repair.status.as_str(), repair.reason.as_deref()), ("True", Some("ResetDevice")));
    assert!(conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"), "the kubelet's Ready stays");
    assert_eq!(
        n.metadata.labels.unwrap_or_default().get("devheal.io/repair").map(String::as_str),
        Some("reset_device")
    );
    // WithdrawRepair: the condition turns False, the label goes, the kubelet's stay; a second
    // withdrawal finds nothing to do.
    let withdraw = planned(Action::WithdrawRepair { node: name.clone(), reason: "new boot".into() });
    assert_eq!(a.execute(&withdraw).await, ActionOutcome::Done);
    let n = node().await;
    let conditions = n.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
    let repair = conditions.iter().find(|c| c.type_ == "devheal.io/RepairRequested").expect("the condition");
    assert_eq!((repair.status.as_str(), repair.reason.as_deref()), ("False", Some("RepairDone")));
    assert!(conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"), "the kubelet's Ready stays");
    let uid = n.metadata.uid.clone().unwrap_or_default();
    assert!(!n.metadata.labels.unwrap_or_default().contains_key("devheal.io/repair"));
    assert_eq!(a.execute(&withdraw).await, ActionOutcome::Done);
    let withdrawn = events(&scope.client, "default", "DevhealRepairWithdrawn").await;
    // This node object's (by uid): Events about an earlier node of the same name stay an hour.
    assert_eq!(
        withdrawn
            .iter()
            .filter(|e| e["regarding"]["name"] == name.as_str() && e["regarding"]["uid"] == uid.as_str())
            .count(),
        1,
        "{withdrawn:?}"
    );

    // Report: only an Event.
    let nonce = format!("e2e {} {}", scope.name, k8s_openapi::jiff::Timestamp::now());
    // The same report three times in a minute is one Event with `series.count` 3 (the real API
    // server accepts the series patch); another note is another Event.
    let report = Action::Report { reason: "BreakerOpen".into(), message: nonce.clone() };
    for _ in 0..3 {
        assert_eq!(a.execute(&planned(report.clone())).await, ActionOutcome::Done);
    }
    let other = Action::Report { reason: "BreakerOpen".into(), message: format!("{nonce} (2)") };
    assert_eq!(a.execute(&planned(other)).await, ActionOutcome::Done);
    let reports = events(&scope.client, "default", "DevhealReport").await;
    let ours: Vec<&Value> = reports.iter().filter(|e| e["note"] == format!("BreakerOpen: {nonce}")).collect();
    assert_eq!(ours.len(), 1, "{reports:?}");
    assert_eq!(ours[0]["series"]["count"], 3, "{:?}", ours[0]);
    assert!(ours[0]["series"]["lastObservedTime"].is_string(), "{:?}", ours[0]);
    let second: Vec<&Value> =
        reports.iter().filter(|e| e["note"] == format!("BreakerOpen: {nonce} (2)")).collect();
    assert_eq!(second.len(), 1, "{reports:?}");
    assert!(second[0]["series"].is_null(), "a singleton Event has no series: {:?}", second[0]);

    // A dry run changes nothing on the server: its only writes are one Normal `DevhealDryRun`
    // Event per would-be action, on the node, however often the action is decided.
    let before = serde_json::to_value(node().await.spec).expect("json");
    let mut dry = served;
    dry.dry_run = true;
    let d = KubeActuator::new(client, dry);
    let mut sentences = Vec::new();
    for _ in 0..2 {
        for action in [quarantine(&gpu), quarantine(&dra), cordon.clone()] {
            match d.execute(&action).await {
                ActionOutcome::WouldDo { description } => sentences.push(description),
                other => panic!("a dry run answered {other:?}"),
            }
        }
    }
    assert_eq!(serde_json::to_value(node().await.spec).expect("json"), before, "a dry run wrote to the node");
    assert!(rules.get_opt(&rule).await.expect("read").is_none(), "a dry run created a rule");
    let said = events(&scope.client, "default", "DevhealDryRun").await;
    let on_node: Vec<&Value> = said
        .iter()
        .filter(|e| e["regarding"]["kind"] == "Node" && e["regarding"]["name"] == name.as_str())
        .collect();
    assert_eq!(on_node.len(), 3, "one Event per would-be action: {on_node:?}");
    for e in &on_node {
        assert_eq!(e["type"], "Normal", "{e}");
        let note = e["note"].as_str().unwrap_or("");
        assert!(sentences.iter().any(|s| note == format!("dry run: {s}")), "{note} in {sentences:?}");
    }
    assert!(on_node.iter().any(|e| e["action"] == "Cordon"), "{on_node:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real control plane: scripts/e2e.sh"]
async fn policy_status_and_the_lease_on_the_real_server() {
    let scope = Scope::new("act-lease").await;
    let client = controller_client(&scope).await;

    // The FailurePolicy status: one merge patch of the status subresource.
    let policy = json!({"apiVersion": "devheal.io/v1alpha1", "kind": "FailurePolicy",
        "metadata": {"name": "training", "namespace": scope.ns},
        "spec": {"selector": {"matchLabels": {"team": "llm"}},
                 "rules": [{"name": "dead-gpu-restarts-gang", "onClasses": ["device_failure"], "action": "RestartGang"}]}});
    kubectl(scope.env, &["apply", "-f", "-"], Some(policy.to_string().as_bytes()));
    let status = FailurePolicyStatus {
        observed_generation: Some(1),
        matched_pods: 64,
        actions_taken: [("RestartGang".to_string(), 1)].into(),
        dry_run_actions: Default::default(),
        last_action: Some(LastAction {
            action: "RestartGang".into(),
            target: format!("{}/jobset/llama", scope.ns),
            reason: "DeviceFailure: Xid 79".into(),
            at: k8s_time(devheal_core::Time::from_secs(1_790_000_000)),
            dry_run: false,
        }),
        budget: Some(BudgetStatus {
            breaker_open: false,
            quarantined_nodes: 1,
            quarantine_node_limit: 2,
            evictions_last_minute: 0,
            held_versions: vec![],
            progress_breaker_open: false,
        }),
    };
    let a = KubeActuator::new(client.clone(), config());
    assert_eq!(a.write_policy_status(&scope.ns, "training", &status).await, Ok(()));
    let policies: Api<DynamicObject> = Api::namespaced_with(
        scope.client.clone(),
        &scope.ns,
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("devheal.io", "v1alpha1", "FailurePolicy"),
            "failurepolicies",
        ),
    );
    let v = serde_json::to_value(policies.get("training").await.expect("the policy")).expect("json");
    assert_eq!(v["status"]["matchedPods"], 64);
    assert_eq!(v["status"]["actionsTaken"]["RestartGang"], 1);
    assert_eq!(v["status"]["budget"]["quarantineNodeLimit"], 2);
    assert_eq!(v["spec"]["rules"][0]["name"], "dead-gpu-restarts-gang", "the spec is untouched");
    assert!(matches!(
        a.write_policy_status(&scope.ns, "no-such-policy", &status).await,
        Err(StatusWriteError::Gone(_))
    ));

    // The Lease, with the controller's credentials, 2-second terms on the real clocks.
    let term = Duration::from_secs(2);
    let elector = |id: &str| LeaseElector::new(client.clone(), SYSTEM_NS, "devheal-controller", id, term);
    let (ea, eb, ec) = (elector("replica-a"), elector("replica-b"), elector("replica-c"));
    let leases: Api<Lease> = Api::namespaced(scope.client.clone(), SYSTEM_NS);
    let holder = || async {
        leases.get("devheal-controller").await.ok().and_then(|l| l.spec?.holder_identity).unwrap_or_default()
    };
    assert!(ea.try_acquire_or_renew().await.expect("create"), "an absent Lease is created");
    assert!(!eb.try_acquire_or_renew().await.expect("read"), "held by a");
    assert!(ea.try_acquire_or_renew().await.expect("renew"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(ea.try_acquire_or_renew().await.expect("renew"));
    assert!(!eb.try_acquire_or_renew().await.expect("read"), "renewed: not expired on b's clock");
    // a stops renewing: b and c both try to take over once it has stayed unrenewed for a term.
    tokio::time::sleep(term + Duration::from_millis(500)).await;
    let (b, c) = tokio::join!(eb.try_acquire_or_renew(), ec.try_acquire_or_renew());
    let (b, c) = (b.expect("b"), c.expect("c"));
    assert!(b ^ c, "exactly one of two simultaneous takeovers wins (b {b}, c {c})");
    let winner = if b { "replica-b" } else { "replica-c" };
    assert_eq!(holder().await, winner);
    assert!(!ea.try_acquire_or_renew().await.expect("read"), "a lost the Lease");
    let lease = leases.get("devheal-controller").await.expect("the Lease");
    assert_eq!(lease.spec.as_ref().and_then(|s| s.lease_transitions), Some(1));
    // Releasing a Lease one does not hold changes nothing; the holder's release frees it.
    ea.release().await;
    assert_eq!(holder().await, winner);
    if b {
        eb.release().await
    } else {
        ec.release().await
    };
    assert_eq!(holder().await, "");
    assert!(
        ea.try_acquire_or_renew().await.expect("take a released Lease"),
        "a released Lease is free at once"
    );

    // Two replicas creating an absent Lease at the same time: one create wins, the other loses
    // on AlreadyExists and stays a standby.
    leases.delete("devheal-controller", &DeleteParams::default()).await.expect("delete the Lease");
    let (ed, ee) = (elector("replica-d"), elector("replica-e"));
    let (d, e) = tokio::join!(ed.try_acquire_or_renew(), ee.try_acquire_or_renew());
    let (d, e) = (d.expect("d"), e.expect("e"));
    assert!(d ^ e, "exactly one of two simultaneous creates wins (d {d}, e {e})");
    assert_eq!(holder().await, if d { "replica-d" } else { "replica-e" });
}
