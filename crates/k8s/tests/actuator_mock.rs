//! The Kubernetes actuator against a scripted API server: for each action, the exact requests
//! it sends (method, path with query, JSON body) and what it makes of each answer.

mod mock_api;

use std::time::Duration;

use devheal_core::action::PodRef;
use devheal_core::{
    Action, ActionOutcome, Actuator, DeviceKey, FailureClass, GangId, PlannedAction, RepairKind,
};
use devheal_k8s::actuator::{
    ActuatorConfig, DeviceTaintRuleSupport, KubeActuator, discover_device_taint_rules,
};
use mock_api::*;
use serde_json::{Value, json};

fn config() -> ActuatorConfig {
    let mut c = ActuatorConfig::new("devheal-controller-7d9f-abc");
    c.backoff_base = Duration::from_secs(1);
    c.backoff_cap = Duration::from_secs(3);
    c
}

fn actuator(client: kube::Client, config: ActuatorConfig) -> KubeActuator {
    KubeActuator::new(client, config).with_clock(TestClock::at(T0).clock())
}

fn planned(action: Action) -> PlannedAction {
    PlannedAction {
        idempotency_key: format!("key-{}", action.label()),
        action,
        class: FailureClass::DeviceFailure,
        policy: None,
    }
}

fn pod() -> PodRef {
    PodRef { namespace: "ml".into(), name: "llama-w-0".into(), uid: "uid-0".into() }
}

fn pod_regarding() -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "namespace": "ml", "name": "llama-w-0", "uid": "uid-0"})
}

fn node_regarding(uid: Option<&str>) -> Value {
    let mut r = json!({"apiVersion": "v1", "kind": "Node", "name": "gpu-node-1"});
    if let Some(uid) = uid {
        r["uid"] = json!(uid);
    }
    r
}

const EVENTS_ML: &str = "/apis/events.k8s.io/v1/namespaces/ml/events";
const EVENTS_DEFAULT: &str = "/apis/events.k8s.io/v1/namespaces/default/events";
const POD_PATH: &str = "/api/v1/namespaces/ml/pods/llama-w-0";
const NODE_PATH: &str = "/api/v1/nodes/gpu-node-1";
const NODE_PATCH: &str = "/api/v1/nodes/gpu-node-1?fieldManager=devheal-controller";

/// The Event the actuator must write.
fn event(
    namespace: &str,
    regarding: Option<Value>,
    reason: &str,
    action: &str,
    note: &str,
    kind: &str,
) -> Value {
    let prefix = regarding.as_ref().and_then(|r| r["name"].as_str()).unwrap_or("devheal").to_string();
    let mut e = json!({
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"generateName": format!("{prefix}-"), "namespace": namespace},
        "eventTime": T0_MICROS,
        "reportingController": "devheal.io/controller",
        "reportingInstance": "devheal-controller-7d9f-abc",
        "action": action,
        "reason": reason,
        "note": note,
        "type": kind,
    });
    if let Some(r) = regarding {
        e["regarding"] = r;
    }
    e
}

fn event_posted(namespace_path: &str, body: Value) -> Exchange {
    expect("POST", namespace_path, Some(body), created(json!({"kind": "Event"})))
}

// ---- MarkPod -----------------------------------------------------------------------------

fn mark() -> Action {
    Action::MarkPod {
        pod: pod(),
        condition_type: "devheal.io/DeviceFailure".into(),
        reason: "XidFallenOffBus".into(),
        message: "Xid 79 on GPU-1".into(),
    }
}

fn mark_patch() -> Exchange {
    expect(
        "PATCH",
        format!("{POD_PATH}/status?fieldManager=devheal-controller"),
        Some(json!({
            "metadata": {"uid": "uid-0"},
            "status": {"conditions": [{
                "type": "devheal.io/DeviceFailure", "status": "True", "reason": "XidFallenOffBus",
                "message": "Xid 79 on GPU-1", "lastTransitionTime": T0_SECONDS,
            }]},
        })),
        ok(json!({"kind": "Pod", "metadata": {"name": "llama-w-0", "uid": "uid-0"}})),
    )
}

#[tokio::test]
async fn mark_pod_merges_one_condition_into_pod_status() {
    let script = vec![
        mark_patch(),
        event_posted(
            EVENTS_ML,
            event(
                "ml",
                Some(pod_regarding()),
                "DevhealPodMarked",
                "MarkPod",
                "condition devheal.io/DeviceFailure=True (XidFallenOffBus): Xid 79 on GPU-1",
                "Warning",
            ),
        ),
    ];
    let out = run(script, |c| async move { actuator(c, config()).execute(&planned(mark())).await }).await;
    assert_eq!(out, ActionOutcome::Done);
}

/// A slow member gets the `devheal.io/ReplaceAtCheckpoint` condition (the launcher that sees
/// checkpoints acts on it) and the same Event as a mark.
#[tokio::test]
async fn replace_at_checkpoint_marks_the_slow_member() {
    let message = "replace this member of gang ml/jobset/llama at its next checkpoint (slow devices: \
                   gpu-node-1/nvidia.com/gpu/GPU-1): DeviceDegraded: straggler";
    let script = vec![
        expect(
            "PATCH",
            format!("{POD_PATH}/status?fieldManager=devheal-controller"),
            Some(json!({
                "metadata": {"uid": "uid-0"},
                "status": {"conditions": [{
                    "type": "devheal.io/ReplaceAtCheckpoint", "status": "True", "reason": "SlowMember",
                    "message": message, "lastTransitionTime": T0_SECONDS,
                }]},
            })),
            ok(json!({"kind": "Pod", "metadata": {"name": "llama-w-0", "uid": "uid-0"}})),
        ),
        event_posted(
            EVENTS_ML,
            event(
                "ml",
                Some(pod_regarding()),
                "DevhealPodMarked",
                "MarkPod",
                &format!("condition devheal.io/ReplaceAtCheckpoint=True (SlowMember): {message}"),
                "Warning",
            ),
        ),
    ];
    let action = Action::ReplaceAtCheckpoint {
        pod: pod(),
        gang: GangId { namespace: "ml".into(), kind: "jobset".into(), name: "llama".into() },
        devices: vec![DeviceKey::new("gpu-node-1", "nvidia.com/gpu", "GPU-1")],
        reason: "DeviceDegraded: straggler".into(),
    };
    let out = run(script, |c| async move { actuator(c, config()).execute(&planned(action)).await }).await;
    assert_eq!(out, ActionOutcome::Done);
}

#[tokio::test]
async fn mark_pod_of_a_recreated_pod_is_gone() {
    let mut patch = mark_patch();
    patch.answer = invalid_field(
        "Pod \"llama-w-0\" is invalid: metadata.uid: Invalid value: \"uid-0\": field is immutable",
        "metadata.uid",
    );
    let out =
        run(vec![patch], |c| async move { actuator(c, config()).execute(&planned(mark())).await }).await;
    assert_eq!(out, ActionOutcome::Gone);
}

#[tokio::test]
async fn mark_pod_invalid_condition_fails_with_the_api_message() {
    let mut patch = mark_patch();
    patch.answer = invalid_field(
        "Pod \"llama-w-0\" is invalid: status.conditions[0].type: Invalid value",
        "status.conditions[0].type",
    );
    let script = vec![
        patch,
        event_posted(
            EVENTS_ML,
            event(
                "ml",
                Some(pod_regarding()),
                "DevhealActionFailed",
                "MarkPod",
                "mark_pod failed: marking the pod: HTTP 422 Invalid: Pod \"llama-w-0\" is invalid: status.conditions[0].type: Invalid value",
                "Warning",
            ),
        ),
    ];
    let out = run(script, |c| async move { actuator(c, config()).execute(&planned(mark())).await }).await;
    assert_eq!(
        out,
        ActionOutcome::Failed {
            reason: "marking the pod: HTTP 422 Invalid: Pod \"llama-w-0\" is invalid: status.conditions[0].type: Invalid value".into()
        }
    );
}

// ---- EvictPod ----------------------------------------------------------------------------

fn evict() -> Action {
    Action::EvictPod { pod: pod(), reason: "GPU-1 fell off the bus".into() }
}

fn eviction(answer: Answer) -> Exchange {
    expect(
        "POST",
        format!("{POD_PATH}/eviction"),
        Some(json!({
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": "llama-w-0", "namespace": "ml"},
            "deleteOptions": {"preconditions": {"uid": "uid-0"}},
        })),
        answer,
    )
}

fn evicted_event() -> Exchange {
    event_posted(
        EVENTS_ML,
        event(
            "ml",
            Some(pod_regarding()),
            "DevhealEvicted",
            "Evict",
            "evicted: GPU-1 fell off the bus",
            "Warning",
        ),
    )
}

const PDB_MESSAGE: &str = "Cannot evict pod as it would violate the pod's disruption budget.";

#[tokio::test]
async fn evict_posts_an_eviction_with_the_uid_precondition() {
    let script = vec![eviction(success()), evicted_event()];
    let out = run(script, |c| async move { actuator(c, config()).execute(&planned(evict())).await }).await;
    assert_eq!(out, ActionOutcome::Done);
}

#[tokio::test]
async fn evict_blocked_by_a_pdb_retries_with_growing_capped_backoff() {
    let blocked = || eviction(status(429, "TooManyRequests", PDB_MESSAGE));
    let script = vec![
        blocked(),
        event_posted(
            EVENTS_ML,
            event(
                "ml",
                Some(pod_regarding()),
                "DevhealEvictionBlocked",
                "Evict",
                &format!("eviction refused, will retry: HTTP 429 TooManyRequests: {PDB_MESSAGE}"),
                "Warning",
            ),
        ),
        blocked(),
        blocked(),
        blocked(),
        eviction(success()),
        evicted_event(),
        // After success the backoff starts again from the base.
        blocked(),
        event_posted(
            EVENTS_ML,
            event(
                "ml",
                Some(pod_regarding()),
                "DevhealEvictionBlocked",
                "Evict",
                &format!("eviction refused, will retry: HTTP 429 TooManyRequests: {PDB_MESSAGE}"),
                "Warning",
            ),
        ),
    ];
    let outs = run(script, |c| async move {
        let a = actuator(c, config());
        let mut outs = Vec::new();
        for _ in 0..6 {
            outs.push(a.execute(&planned(evict())).await);
        }
        outs
    })
    .await;
    let reason = format!("eviction of pod ml/llama-w-0 refused: HTTP 429 TooManyRequests: {PDB_MESSAGE}");
    let retry = |after_ms| ActionOutcome::Retry { after_ms, reason: reason.clone() };
    assert_eq!(
        outs,
        vec![retry(1000), retry(2000), retry(3000), retry(3000), ActionOutcome::Done, retry(1000)]
    );
}

#[tokio::test]
async fn evict_answers_map_to_outcomes() {
    let failed_note = "evict_pod failed: evicting the pod: HTTP 403 Forbidden: pods \"llama-w-0\" is forbidden: \
                       User \"system:serviceaccount:devheal:controller\" cannot create resource \"pods/eviction\"";
    let script = vec![
        eviction(status(404, "NotFound", "pods \"llama-w-0\" not found")),
        eviction(status(
            409,
            "Conflict",
            "Operation cannot be fulfilled on Pod \"llama-w-0\": the UID in the precondition (uid-0) does not match the UID in record (uid-9)",
        )),
        eviction(status(500, "InternalError", "This pod has more than one PodDisruptionBudget")),
        eviction(Answer::Transport),
        eviction(status(
            403,
            "Forbidden",
            "pods \"llama-w-0\" is forbidden: User \"system:serviceaccount:devheal:controller\" cannot create resource \"pods/eviction\"",
        )),
        event_posted(
            EVENTS_ML,
            event("ml", Some(pod_regarding()), "DevhealActionFailed", "Evict", failed_note, "Warning"),
        ),
    ];
    let outs = run(script, |c| async move {
        let a = actuator(c, config());
        let mut outs = Vec::new();
        for _ in 0..5 {
            outs.push(a.execute(&planned(evict())).await);
        }
        outs
    })
    .await;
    assert_eq!(outs[0], ActionOutcome::Gone);
    assert_eq!(outs[1], ActionOutcome::Gone);
    assert_eq!(
        outs[2],
        ActionOutcome::Retry {
            after_ms: 1000,
            reason:
                "evicting the pod: HTTP 500 InternalError: This pod has more than one PodDisruptionBudget"
                    .into()
        }
    );
    match &outs[3] {
        ActionOutcome::Retry { after_ms: 2000, reason } => {
            assert!(reason.starts_with("evicting the pod: no answer from the API server"), "{reason}")
        }
        other => panic!("transport failure gave {other:?}"),
    }
    assert_eq!(
        outs[4],
        ActionOutcome::Failed { reason: failed_note.trim_start_matches("evict_pod failed: ").to_string() }
    );
}

#[tokio::test]
async fn an_event_that_cannot_be_written_does_not_fail_the_action() {
    let mut ev = evicted_event();
    ev.answer = status(500, "InternalError", "etcdserver: request timed out");
    let out = run(vec![eviction(success()), ev], |c| async move {
        actuator(c, config()).execute(&planned(evict())).await
    })
    .await;
    assert_eq!(out, ActionOutcome::Done);
}

// ---- RestartGang and FailWorkload -----------------------------------------------------------

fn member(name: &str, uid: &str, labels: Value, phase: &str, deleting: bool) -> Value {
    let mut p = json!({
        "metadata": {
            "name": name, "namespace": "ml", "uid": uid, "labels": labels,
            "creationTimestamp": "2026-09-21T10:00:00Z",
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "llama-workers-0",
                                 "uid": "job-uid", "controller": true}],
        },
        "status": {"phase": phase},
    });
    if deleting {
        p["metadata"]["deletionTimestamp"] = json!("2026-09-21T14:00:00Z");
    }
    p
}

fn jobset_labels() -> Value {
    json!({"jobset.sigs.k8s.io/jobset-name": "llama", "batch.kubernetes.io/job-name": "llama-workers-0"})
}

fn jobset_pods() -> Value {
    json!({"kind": "PodList", "items": [
        member("llama-w-0", "uid-0", jobset_labels(), "Running", false),
        member("llama-w-1", "uid-1", jobset_labels(), "Pending", false),
        member("llama-w-2", "uid-2", jobset_labels(), "Succeeded", false),
        member("llama-w-3", "uid-3", jobset_labels(), "Running", true),
        // Listed by a loose selector but another gang by the engine's rules: left alone.
        member("other-0", "uid-x", json!({"jobset.sigs.k8s.io/jobset-name": "other"}), "Running", false),
    ]})
}

fn delete_pod(name: &str, uid: &str, foreground: bool, answer: Answer) -> Exchange {
    let mut body = json!({"apiVersion": "v1", "kind": "DeleteOptions", "preconditions": {"uid": uid}});
    if foreground {
        body["propagationPolicy"] = json!("Foreground");
    }
    expect("DELETE", format!("/api/v1/namespaces/ml/pods/{name}"), Some(body), answer)
}

fn gang(kind: &str, name: &str) -> GangId {
    GangId { namespace: "ml".into(), kind: kind.into(), name: name.into() }
}

fn job_regarding() -> Value {
    json!({"apiVersion": "batch/v1", "kind": "Job", "namespace": "ml", "name": "llama-workers-0", "uid": "job-uid"})
}

const JOBSET_LIST: &str = "/api/v1/namespaces/ml/pods?labelSelector=jobset.sigs.k8s.io%2Fjobset-name%3Dllama";

#[tokio::test]
async fn restart_gang_deletes_every_live_member_once() {
    let restart = Action::RestartGang {
        gang: gang("jobset", "llama"),
        incident: "inc-42".into(),
        reason: "GPU-1 fell off the bus".into(),
    };
    let mark = "devheal restarts gang ml/jobset/llama (incident inc-42): GPU-1 fell off the bus";
    let script = vec![
        expect("GET", JOBSET_LIST, None, ok(jobset_pods())),
        gang_restart_mark("llama-w-0", "uid-0", mark, T0_SECONDS, ok(json!({"kind": "Pod"}))),
        delete_pod("llama-w-0", "uid-0", false, ok(json!({"kind": "Pod"}))),
        // Already gone when it is marked: no delete.
        gang_restart_mark(
            "llama-w-1",
            "uid-1",
            mark,
            T0_SECONDS,
            status(404, "NotFound", "pods \"llama-w-1\" not found"),
        ),
        event_posted(
            EVENTS_ML,
            event(
                "ml",
                Some(job_regarding()),
                "DevhealGangRestart",
                "RestartGang",
                "restarting gang ml/jobset/llama (incident inc-42): deleted 2 of 2 pods: GPU-1 fell off the bus",
                "Warning",
            ),
        ),
        // The replay below sends nothing.
    ];
    let outs = run(script, |c| async move {
        let a = actuator(c, config());
        let p = planned(restart);
        (a.execute(&p).await, a.execute(&p).await)
    })
    .await;
    assert_eq!(outs, (ActionOutcome::Done, ActionOutcome::Done));
}

#[tokio::test]
async fn restart_gang_retry_spares_pods_created_since_the_first_attempt() {
    let restart =
        Action::RestartGang { gang: gang("jobset", "llama"), incident: "inc-43".into(), reason: "r".into() };
    let mut recreated = member("llama-w-0", "uid-new", jobset_labels(), "Pending", false);
    recreated["metadata"]["creationTimestamp"] = json!("2026-09-21T14:13:25Z");
    let second_list = json!({"kind": "PodList", "items": [
        recreated,
        member("llama-w-1", "uid-1", jobset_labels(), "Running", false),
    ]});
    let mark = "devheal restarts gang ml/jobset/llama (incident inc-43): r";
    let script = vec![
        expect("GET", JOBSET_LIST, None, ok(jobset_pods())),
        gang_restart_mark("llama-w-0", "uid-0", mark, T0_SECONDS, ok(json!({"kind": "Pod"}))),
        delete_pod("llama-w-0", "uid-0", false, ok(json!({"kind": "Pod"}))),
        gang_restart_mark("llama-w-1", "uid-1", mark, T0_SECONDS, ok(json!({"kind": "Pod"}))),
        delete_pod("llama-w-1", "uid-1", false, status(503, "ServiceUnavailable", "etcd leader changed")),
        expect("GET", JOBSET_LIST, None, ok(second_list)),
        gang_restart_mark("llama-w-1", "uid-1", mark, "2026-09-21T14:13:30Z", ok(json!({"kind": "Pod"}))),
        delete_pod("llama-w-1", "uid-1", false, ok(json!({"kind": "Pod"}))),
        event_posted(EVENTS_ML, {
            let mut e = event(
                "ml",
                Some(job_regarding()),
                "DevhealGangRestart",
                "RestartGang",
                "restarting gang ml/jobset/llama (incident inc-43): deleted 1 of 1 pods: r",
                "Warning",
            );
            e["eventTime"] = json!("2026-09-21T14:13:30.000000Z");
            e
        }),
    ];
    let clock = TestClock::at(T0);
    let outs = run(script, |c| {
        let clock = clock.clone();
        async move {
            let a = KubeActuator::new(c, config()).with_clock(clock.clock());
            let p = planned(restart);
            let first = a.execute(&p).await;
            clock.advance_secs(10);
            (first, a.execute(&p).await)
        }
    })
    .await;
    assert_eq!(
        outs,
        (
            ActionOutcome::Retry {
                after_ms: 1000,
                reason: "deleting pod ml/llama-w-1: HTTP 503 ServiceUnavailable: etcd leader changed".into()
            },
            ActionOutcome::Done
        )
    );
}

#[tokio::test]
async fn restart_gang_of_a_leader_worker_set_deletes_the_leader_in_the_foreground() {
    let lws = |worker: &str| {
        json!({"leaderworkerset.sigs.k8s.io/name": "vllm", "leaderworkerset.sigs.k8s.io/group-index": "3",
               "leaderworkerset.sigs.k8s.io/worker-index": worker})
    };
    let mut leader = member("vllm-3", "uid-l", lws("0"), "Running", false);
    leader["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "StatefulSet",
        "name": "vllm", "uid": "sts-uid", "controller": true}]);
    let list = json!({"items": [leader, member("vllm-3-1", "uid-w", lws("1"), "Running", false)]});
    let restart =
        Action::RestartGang { gang: gang("lws", "vllm/3"), incident: "inc-7".into(), reason: "r".into() };
    let script = vec![
        expect(
            "GET",
            "/api/v1/namespaces/ml/pods?labelSelector=leaderworkerset.sigs.k8s.io%2Fname%3Dvllm%2C\
             leaderworkerset.sigs.k8s.io%2Fgroup-index%3D3",
            None,
            ok(list),
        ),
        gang_restart_mark(
            "vllm-3",
            "uid-l",
            "devheal restarts gang ml/lws/vllm/3 (incident inc-7): r",
            T0_SECONDS,
            ok(json!({"kind": "Pod"})),
        ),
        delete_pod("vllm-3", "uid-l", true, ok(json!({"kind": "Pod"}))),
        event_posted(
            EVENTS_ML,
            event(
                "ml",
                Some(
                    json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "namespace": "ml", "name": "vllm",
                            "uid": "sts-uid"}),
                ),
                "DevhealGangRestart",
                "RestartGang",
                "restarting gang ml/lws/vllm/3 (incident inc-7): deleted 1 of 2 pods: r",
                "Warning",
            ),
        ),
    ];
    let out = run(script, |c| async move { actuator(c, config()).execute(&planned(restart)).await }).await;
    assert_eq!(out, ActionOutcome::Done);
}

#[tokio::test]
async fn restart_gang_with_no_live_pods_is_gone_and_podgroups_are_listed_whole() {
    let annotated = json!({"items": [{
        "metadata": {"name": "mpi-0", "namespace": "ml", "uid": "u", "annotations": {"scheduling.k8s.io/group-name": "pg1"}},
        "status": {"phase": "Failed"},
    }]});
    let restart =
        Action::RestartGang { gang: gang("podgroup", "pg1"), incident: "i".into(), reason: "r".into() };
    let script = vec![expect("GET", "/api/v1/namespaces/ml/pods", None, ok(annotated))];
    let out = run(script, |c| async move { actuator(c, config()).execute(&planned(restart)).await }).await;
    assert_eq!(out, ActionOutcome::Gone);
}

/// The list of a workload's pods in `ml` by an (encoded) label selector, answered with `pod`.
fn list_pods(selector: &str, pod: Value) -> Exchange {
    expect(
        "GET",
        format!("/api/v1/namespaces/ml/pods?labelSelector={selector}"),
        None,
        ok(json!({"items": [pod]})),
    )
}

/// The `devheal.io/WorkloadFailed` condition merged into a pod's status, with its uid precondition.
/// The pod-status patch that sets one devheal condition on a pod (UID-guarded).
fn condition_mark(
    name: &str,
    uid: &str,
    condition: (&str, &str),
    message: &str,
    at: &str,
    answer: Answer,
) -> Exchange {
    let (type_, reason) = condition;
    expect(
        "PATCH",
        format!("/api/v1/namespaces/ml/pods/{name}/status?fieldManager=devheal-controller"),
        Some(json!({
            "metadata": {"uid": uid},
            "status": {"conditions": [{
                "type": type_, "status": "True", "reason": reason,
                "message": message, "lastTransitionTime": at,
            }]},
        })),
        answer,
    )
}

fn gang_restart_mark(name: &str, uid: &str, message: &str, at: &str, answer: Answer) -> Exchange {
    condition_mark(name, uid, ("devheal.io/GangRestart", "DevhealGangRestart"), message, at, answer)
}

fn workload_failed_mark(name: &str, uid: &str, message: &str) -> Exchange {
    let condition = ("devheal.io/WorkloadFailed", "DevhealFailedWorkload");
    condition_mark(name, uid, condition, message, T0_SECONDS, ok(json!({"kind": "Pod"})))
}

#[tokio::test]
async fn fail_workload_marks_then_deletes_each_job_pod() {
    let labels =
        json!({"batch.kubernetes.io/job-name": "idx", "batch.kubernetes.io/job-completion-index": "0"});
    let mut p = member("idx-0-abc", "uid-i", labels, "Running", false);
    p["metadata"]["annotations"] = json!({"batch.kubernetes.io/job-completion-index": "0"});
    let fail = Action::FailWorkload { gang: gang("job", "idx"), reason: "lemon node, 5 restarts".into() };
    let message = "devheal failed workload ml/job/idx: lemon node, 5 restarts";
    let script = vec![
        list_pods("batch.kubernetes.io%2Fjob-name%3Didx", p),
        workload_failed_mark("idx-0-abc", "uid-i", message),
        delete_pod("idx-0-abc", "uid-i", false, ok(json!({"kind": "Pod"}))),
        event_posted(
            EVENTS_ML,
            event(
                "ml",
                Some(job_regarding()),
                "DevhealWorkloadFailed",
                "FailWorkload",
                "failing workload ml/job/idx: 1 pods marked and deleted; a podFailurePolicy FailJob rule on this \
                 condition fails the Job (devheal.io/WorkloadFailed): lemon node, 5 restarts",
                "Warning",
            ),
        ),
    ];
    let out = run(script, |c| async move { actuator(c, config()).execute(&planned(fail)).await }).await;
    assert_eq!(out, ActionOutcome::Done);
}

// ---- QuarantineDevice / ReleaseDevice ----------------------------------------------------------

fn dra_device() -> DeviceKey {
    DeviceKey::new("gpu-node-1", "claim:train-gpus", "gpu.nvidia.com/gpu-node-1/gpu-3")
}

fn served() -> ActuatorConfig {
    let mut c = config();
    c.device_taint_rules = DeviceTaintRuleSupport::Served { version: "v1beta2".into() };
    c
}

#[tokio::test]
async fn quarantine_creates_a_device_taint_rule_and_release_deletes_it() {
    let device = dra_device();
    let rule = devheal_k8s::actuator::device_taint_rule_name(&device);
    assert!(rule.starts_with("devheal-gpu-node-1-gpu-nvidia-com-gpu-node-1-gpu-3-"), "{rule}");
    let rule_ref = |uid: Option<&str>| {
        let mut r = json!({"apiVersion": "resource.k8s.io/v1beta2", "kind": "DeviceTaintRule", "name": rule});
        if let Some(uid) = uid {
            r["uid"] = json!(uid);
        }
        r
    };
    let create = |answer| {
        expect(
            "POST",
            "/apis/resource.k8s.io/v1beta2/devicetaintrules?fieldManager=devheal-controller",
            Some(json!({
                "apiVersion": "resource.k8s.io/v1beta2",
                "kind": "DeviceTaintRule",
                "metadata": {
                    "name": rule,
                    "labels": {"app.kubernetes.io/managed-by": "devheal"},
                    "annotations": {
                        "devheal.io/device": "gpu-node-1/claim:train-gpus/gpu.nvidia.com/gpu-node-1/gpu-3",
                        "devheal.io/reason": "uncorrectable ECC",
                    },
                },
                "spec": {
                    "deviceSelector": {"driver": "gpu.nvidia.com", "pool": "gpu-node-1", "device": "gpu-3"},
                    "taint": {"key": "devheal.io/device-quarantine", "effect": "NoSchedule"},
                },
            })),
            answer,
        )
    };
    let delete = |answer| {
        expect("DELETE", format!("/apis/resource.k8s.io/v1beta2/devicetaintrules/{rule}"), None, answer)
    };
    let device_name = "gpu-node-1/claim:train-gpus/gpu.nvidia.com/gpu-node-1/gpu-3";
    let script = vec![
        create(created(json!({"kind": "DeviceTaintRule", "metadata": {"name": rule, "uid": "dtr-uid"}}))),
        event_posted(
            EVENTS_DEFAULT,
            event(
                "default",
                Some(rule_ref(Some("dtr-uid"))),
                "DevhealDeviceQuarantined",
                "Quarantine",
                &format!(
                    "device {device_name} quarantined by DeviceTaintRule {rule} (NoSchedule): uncorrectable ECC"
                ),
                "Warning",
            ),
        ),
        create(status(409, "AlreadyExists", "devicetaintrules.resource.k8s.io \"x\" already exists")),
        delete(ok(json!({"kind": "Status", "status": "Success"}))),
        event_posted(
            EVENTS_DEFAULT,
            event(
                "default",
                Some(rule_ref(None)),
                "DevhealDeviceReleased",
                "Release",
                &format!("device {device_name} released, DeviceTaintRule {rule} deleted: probation passed"),
                "Normal",
            ),
        ),
        delete(status(404, "NotFound", "not found")),
    ];
    let outs = run(script, |c| async move {
        let a = actuator(c, served());
        let q =
            planned(Action::QuarantineDevice { device: dra_device(), reason: "uncorrectable ECC".into() });
        let r = planned(Action::ReleaseDevice { device: dra_device(), reason: "probation passed".into() });
        vec![a.execute(&q).await, a.execute(&q).await, a.execute(&r).await, a.execute(&r).await]
    })
    .await;
    assert_eq!(outs, vec![ActionOutcome::Done; 4]);
}

fn other_taint() -> Value {
    json!({"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"})
}

fn node(taints: Option<Value>, unschedulable: Option<bool>) -> Value {
    let mut n = json!({"kind": "Node", "metadata": {"name": "gpu-node-1", "uid": "node-uid"}, "spec": {}});
    if let Some(t) = taints {
        n["spec"]["taints"] = t;
    }
    if let Some(u) = unschedulable {
        n["spec"]["unschedulable"] = json!(u);
    }
    n
}

#[tokio::test]
async fn without_dra_a_device_is_quarantined_by_a_node_taint() {
    // A device-plugin device: no DeviceTaintRule can name it, even where DRA is served.
    let device = DeviceKey::new("gpu-node-1", "nvidia.com/gpu", "GPU-fef8089b-4820-abfc-e83e-94318197576e");
    let key = devheal_k8s::actuator::node_quarantine_taint_key(&device);
    assert!(
        key.starts_with("devheal.io/device-quarantine-")
            && key.len() == "devheal.io/device-quarantine-".len() + 8
    );
    let ours =
        json!({"key": key, "value": "GPU-fef8089b-4820-abfc-e83e-94318197576e", "effect": "NoSchedule"});
    let script = vec![
        expect("GET", NODE_PATH, None, ok(node(Some(json!([other_taint()])), None))),
        expect(
            "PATCH",
            NODE_PATCH,
            Some(json!([
                {"op": "test", "path": "/spec/taints", "value": [other_taint()]},
                {"op": "add", "path": "/spec/taints", "value": [other_taint(), ours]},
            ])),
            ok(node(Some(json!([other_taint(), ours])), None)),
        ),
        event_posted(
            EVENTS_DEFAULT,
            event(
                "default",
                Some(node_regarding(Some("node-uid"))),
                "DevhealDeviceQuarantined",
                "Quarantine",
                &format!("device {device} quarantined by node taint {key}:NoSchedule: Xid 79"),
                "Warning",
            ),
        ),
        // Release: only our taint goes; the node had gained another taint meanwhile.
        expect(
            "GET",
            NODE_PATH,
            None,
            ok(node(Some(json!([other_taint(), ours, {"key": "x", "effect": "NoExecute"}])), None)),
        ),
        expect(
            "PATCH",
            NODE_PATCH,
            Some(json!([
                {"op": "test", "path": "/spec/taints", "value": [other_taint(), ours, {"key": "x", "effect": "NoExecute"}]},
                {"op": "add", "path": "/spec/taints", "value": [other_taint(), {"key": "x", "effect": "NoExecute"}]},
            ])),
            ok(node(None, None)),
        ),
        event_posted(
            EVENTS_DEFAULT,
            event(
                "default",
                Some(node_regarding(Some("node-uid"))),
                "DevhealDeviceReleased",
                "Release",
                &format!("device {device} released, node taint {key} removed: probation passed"),
                "Normal",
            ),
        ),
    ];
    let d = device.clone();
    let outs = run(script, |c| async move {
        let a = actuator(c, served());
        let q = planned(Action::QuarantineDevice { device: d.clone(), reason: "Xid 79".into() });
        let r = planned(Action::ReleaseDevice { device: d, reason: "probation passed".into() });
        (a.execute(&q).await, a.execute(&r).await)
    })
    .await;
    assert_eq!(outs, (ActionOutcome::Done, ActionOutcome::Done));
}

// ---- CordonNode / UncordonNode -------------------------------------------------------------------

fn cordon() -> PlannedAction {
    planned(Action::CordonNode { node: "gpu-node-1".into(), reason: "3 GPUs unhealthy".into() })
}

fn uncordon() -> PlannedAction {
    planned(Action::UncordonNode { node: "gpu-node-1".into(), reason: "repaired".into() })
}

fn unhealthy(value: &str) -> Value {
    json!({"key": "devheal.io/unhealthy", "value": value, "effect": "NoSchedule"})
}

fn cordon_patch(before: Value, answer: Answer) -> Exchange {
    let mut after = before.as_array().cloned().unwrap_or_default();
    after.push(unhealthy("cordoned"));
    expect(
        "PATCH",
        NODE_PATCH,
        Some(json!([
            {"op": "test", "path": "/spec/taints", "value": before},
            {"op": "add", "path": "/spec/taints", "value": after},
            {"op": "test", "path": "/spec/unschedulable", "value": null},
            {"op": "add", "path": "/spec/unschedulable", "value": true},
        ])),
        answer,
    )
}

fn cordoned_event() -> Exchange {
    event_posted(
        EVENTS_DEFAULT,
        event(
            "default",
            Some(node_regarding(Some("node-uid"))),
            "DevhealNodeCordoned",
            "Cordon",
            "cordoned, taint devheal.io/unhealthy:NoSchedule: 3 GPUs unhealthy",
            "Warning",
        ),
    )
}

/// What the API server answers when a JSON patch's `test` fails (`NewGenericServerResponse`
/// with 422: reason Invalid, a generic message, no causes).
const FAILED_TEST: &str = "the server rejected our request due to an error in our request";

#[tokio::test]
async fn cordon_tests_the_taints_it_read_and_retries_when_they_changed() {
    let second = json!([other_taint(), {"key": "node.kubernetes.io/unreachable", "effect": "NoSchedule"}]);
    let script = vec![
        expect("GET", NODE_PATH, None, ok(node(Some(json!([other_taint()])), None))),
        cordon_patch(json!([other_taint()]), status(422, "Invalid", FAILED_TEST)),
        expect("GET", NODE_PATH, None, ok(node(Some(second.clone()), None))),
        cordon_patch(second, ok(node(None, Some(true)))),
        cordoned_event(),
    ];
    let out = run(script, |c| async move { actuator(c, config()).execute(&cordon()).await }).await;
    assert_eq!(out, ActionOutcome::Done);
}

#[tokio::test]
async fn cordon_of_a_node_without_taints_tests_for_their_absence() {
    let script = vec![
        expect("GET", NODE_PATH, None, ok(node(None, None))),
        cordon_patch(Value::Null, ok(node(None, Some(true)))),
        cordoned_event(),
    ];
    // With no taints, `after` is just ours.
    let out = run(script, |c| async move { actuator(c, config()).execute(&cordon()).await }).await;
    assert_eq!(out, ActionOutcome::Done);
}

#[tokio::test]
async fn cordon_gives_up_for_now_when_the_taints_keep_changing() {
    let mut script = Vec::new();
    for _ in 0..3 {
        script.push(expect("GET", NODE_PATH, None, ok(node(Some(json!([other_taint()])), None))));
        script.push(cordon_patch(
            json!([other_taint()]),
            status(409, "Conflict", "the object has been modified"),
        ));
    }
    let out = run(script, |c| async move { actuator(c, config()).execute(&cordon()).await }).await;
    assert_eq!(
        out,
        ActionOutcome::Retry {
            after_ms: 1000,
            reason: "node gpu-node-1 changed under each of 3 taint patches; last: HTTP 409 Conflict: the object has \
                     been modified"
                .into()
        }
    );
}

#[tokio::test]
async fn cordon_refused_as_invalid_fails_without_retrying() {
    let message =
        "Node \"gpu-node-1\" is invalid: spec.taints[1].key: Invalid value: \"devheal.io/unhealthy\"";
    let script = vec![
        expect("GET", NODE_PATH, None, ok(node(None, None))),
        cordon_patch(Value::Null, invalid_field(message, "spec.taints[1].key")),
        event_posted(
            EVENTS_DEFAULT,
            event(
                "default",
                Some(node_regarding(None)),
                "DevhealActionFailed",
                "Cordon",
                &format!("cordon_node failed: patching node gpu-node-1: HTTP 422 Invalid: {message}"),
                "Warning",
            ),
        ),
    ];
    let out = run(script, |c| async move { actuator(c, config()).execute(&cordon()).await }).await;
    assert_eq!(
        out,
        ActionOutcome::Failed { reason: format!("patching node gpu-node-1: HTTP 422 Invalid: {message}") }
    );
}

#[tokio::test]
async fn cordon_of_an_already_cordoned_node_records_that_the_cordon_was_not_ours() {
    let script = vec![
        expect("GET", NODE_PATH, None, ok(node(None, Some(true)))),
        expect(
            "PATCH",
            NODE_PATCH,
            Some(json!([
                {"op": "test", "path": "/spec/taints", "value": null},
                {"op": "add", "path": "/spec/taints", "value": [unhealthy("already-cordoned")]},
            ])),
            ok(node(None, Some(true))),
        ),
        cordoned_event(),
        // A replay changes nothing and says nothing.
        expect("GET", NODE_PATH, None, ok(node(Some(json!([unhealthy("already-cordoned")])), Some(true)))),
        // Uncordon lifts only our taint: the cordon was someone else's.
        expect("GET", NODE_PATH, None, ok(node(Some(json!([unhealthy("already-cordoned")])), Some(true)))),
        expect(
            "PATCH",
            NODE_PATCH,
            Some(json!([
                {"op": "test", "path": "/spec/taints", "value": [unhealthy("already-cordoned")]},
                {"op": "add", "path": "/spec/taints", "value": []},
            ])),
            ok(node(None, Some(true))),
        ),
        event_posted(
            EVENTS_DEFAULT,
            event(
                "default",
                Some(node_regarding(Some("node-uid"))),
                "DevhealNodeUncordoned",
                "Uncordon",
                "uncordoned, taint devheal.io/unhealthy removed: repaired",
                "Normal",
            ),
        ),
    ];
    let outs = run(script, |c| async move {
        let a = actuator(c, config());
        vec![a.execute(&cordon()).await, a.execute(&cordon()).await, a.execute(&uncordon()).await]
    })
    .await;
    assert_eq!(outs, vec![ActionOutcome::Done; 3]);
}

#[tokio::test]
async fn uncordon_clears_our_cordon_and_leaves_others_alone() {
    let script = vec![
        expect(
            "GET",
            NODE_PATH,
            None,
            ok(node(Some(json!([other_taint(), unhealthy("cordoned")])), Some(true))),
        ),
        expect(
            "PATCH",
            NODE_PATCH,
            Some(json!([
                {"op": "test", "path": "/spec/taints", "value": [other_taint(), unhealthy("cordoned")]},
                {"op": "add", "path": "/spec/taints", "value": [other_taint()]},
                {"op": "test", "path": "/spec/unschedulable", "value": true},
                {"op": "add", "path": "/spec/unschedulable", "value": false},
            ])),
            ok(node(Some(json!([other_taint()])), None)),
        ),
        event_posted(
            EVENTS_DEFAULT,
            event(
                "default",
                Some(node_regarding(Some("node-uid"))),
                "DevhealNodeUncordoned",
                "Uncordon",
                "uncordoned, taint devheal.io/unhealthy removed: repaired",
                "Normal",
            ),
        ),
        // Not cordoned by devheal (no taint of ours): nothing is sent.
        expect("GET", NODE_PATH, None, ok(node(Some(json!([other_taint()])), Some(true)))),
        expect("GET", NODE_PATH, None, status(404, "NotFound", "nodes \"gpu-node-1\" not found")),
    ];
    let outs = run(script, |c| async move {
        let a = actuator(c, config());
        vec![a.execute(&uncordon()).await, a.execute(&uncordon()).await, a.execute(&uncordon()).await]
    })
    .await;
    assert_eq!(outs, vec![ActionOutcome::Done, ActionOutcome::Done, ActionOutcome::Gone]);
}

// ---- RequestRepair and Report -----------------------------------------------------------------

#[tokio::test]
async fn request_repair_sets_a_node_condition_and_a_label() {
    let repair = Action::RequestRepair {
        node: "gpu-node-1".into(),
        device: Some(DeviceKey::new("gpu-node-1", "nvidia.com/gpu", "GPU-1")),
        kind: RepairKind::ResetDevice,
        reason: "Xid 79".into(),
    };
    let script = vec![
        expect(
            "PATCH",
            "/api/v1/nodes/gpu-node-1/status?fieldManager=devheal-controller",
            Some(json!({"status": {"conditions": [{
                "type": "devheal.io/RepairRequested", "status": "True", "reason": "ResetDevice",
                "message": "reset_device requested for device GPU-1: Xid 79",
                "lastHeartbeatTime": T0_SECONDS, "lastTransitionTime": T0_SECONDS,
            }]}})),
            ok(node(None, None)),
        ),
        expect(
            "PATCH",
            NODE_PATCH,
            Some(json!({"metadata": {"labels": {"devheal.io/repair": "reset_device"}}})),
            ok(node(None, None)),
        ),
        event_posted(
            EVENTS_DEFAULT,
            event(
                "default",
                Some(node_regarding(Some("node-uid"))),
                "DevhealRepairRequested",
                "RequestRepair",
                "devheal.io/RepairRequested=ResetDevice, label devheal.io/repair=reset_device: reset_device requested \
                 for device GPU-1: Xid 79",
                "Warning",
            ),
        ),
    ];
    let out = run(script, |c| async move { actuator(c, config()).execute(&planned(repair)).await }).await;
    assert_eq!(out, ActionOutcome::Done);
}

#[tokio::test]
async fn a_report_is_only_an_event_and_retries_when_it_cannot_be_written() {
    let report =
        Action::Report { reason: "BreakerOpen".into(), message: "12 nodes failed in 5 minutes".into() };
    let body = event(
        "default",
        None,
        "DevhealReport",
        "Report",
        "BreakerOpen: 12 nodes failed in 5 minutes",
        "Warning",
    );
    let script = vec![
        expect("POST", EVENTS_DEFAULT, Some(body.clone()), created(json!({"kind": "Event"}))),
        expect("POST", EVENTS_DEFAULT, Some(body), status(500, "InternalError", "etcd down")),
    ];
    let outs = run(script, |c| async move {
        let a = actuator(c, config());
        let p = planned(report);
        (a.execute(&p).await, a.execute(&p).await)
    })
    .await;
    assert_eq!(
        outs,
        (
            ActionOutcome::Done,
            ActionOutcome::Retry {
                after_ms: 1000,
                reason: "writing the report Event: HTTP 500 InternalError: etcd down".into()
            }
        )
    );
}

// ---- dry run and discovery -------------------------------------------------------------------

#[tokio::test]
async fn a_dry_run_sends_nothing_and_says_what_it_would_do() {
    let actions = vec![
        mark(),
        evict(),
        Action::RestartGang { gang: gang("jobset", "llama"), incident: "inc-1".into(), reason: "r".into() },
        Action::FailWorkload { gang: gang("job", "idx"), reason: "r".into() },
        Action::QuarantineDevice { device: dra_device(), reason: "r".into() },
        Action::ReleaseDevice { device: dra_device(), reason: "r".into() },
        Action::CordonNode { node: "n".into(), reason: "r".into() },
        Action::UncordonNode { node: "n".into(), reason: "r".into() },
        Action::RequestRepair {
            node: "n".into(),
            device: None,
            kind: RepairKind::RebootNode,
            reason: "r".into(),
        },
        Action::Report { reason: "r".into(), message: "m".into() },
    ];
    let outs = run(Vec::new(), |c| async move {
        let mut cfg = served();
        cfg.dry_run = true;
        let a = actuator(c, cfg);
        let mut outs = Vec::new();
        for action in actions {
            outs.push(a.execute(&planned(action)).await);
        }
        outs
    })
    .await;
    let texts: Vec<String> = outs
        .into_iter()
        .map(|o| match o {
            ActionOutcome::WouldDo { description } => description,
            other => panic!("dry run gave {other:?}"),
        })
        .collect();
    assert_eq!(texts[1], "would evict pod ml/llama-w-0 (uid uid-0): GPU-1 fell off the bus");
    assert_eq!(
        texts[0],
        "would set condition devheal.io/DeviceFailure=True (reason XidFallenOffBus) on pod ml/llama-w-0 (uid uid-0)"
    );
    assert!(texts[4].starts_with("would quarantine device gpu-node-1/claim:train-gpus/gpu.nvidia.com/gpu-node-1/gpu-3 with DeviceTaintRule devheal-gpu-node-1-"), "{}", texts[4]);
    assert_eq!(texts[6], "would cordon node n with taint devheal.io/unhealthy:NoSchedule: r");
    assert_eq!(
        texts[8],
        "would request repair reboot_node on node n (devheal.io/RepairRequested, devheal.io/repair=reboot_node): r"
    );
    assert_eq!(texts.len(), 10);
}

#[tokio::test]
async fn discovery_finds_the_newest_version_that_serves_device_taint_rules() {
    let script = vec![
        expect(
            "GET",
            "/apis/resource.k8s.io",
            None,
            ok(json!({"kind": "APIGroup", "name": "resource.k8s.io",
                      "versions": [{"groupVersion": "resource.k8s.io/v1", "version": "v1"},
                                   {"groupVersion": "resource.k8s.io/v1beta2", "version": "v1beta2"}]})),
        ),
        expect(
            "GET",
            "/apis/resource.k8s.io/v1",
            None,
            ok(
                json!({"kind": "APIResourceList", "resources": [{"name": "resourceclaims"}, {"name": "resourceslices"}]}),
            ),
        ),
        expect(
            "GET",
            "/apis/resource.k8s.io/v1beta2",
            None,
            ok(
                json!({"kind": "APIResourceList", "resources": [{"name": "devicetaintrules"}, {"name": "devicetaintrules/status"}]}),
            ),
        ),
        expect(
            "GET",
            "/apis/resource.k8s.io",
            None,
            status(404, "NotFound", "the server could not find the requested resource"),
        ),
    ];
    let (first, second) = run(script, |c| async move {
        (discover_device_taint_rules(&c).await.ok(), discover_device_taint_rules(&c).await.ok())
    })
    .await;
    assert_eq!(first, Some(DeviceTaintRuleSupport::Served { version: "v1beta2".into() }));
    assert_eq!(second, Some(DeviceTaintRuleSupport::NotServed));
}

// ---- the scripted API server itself ------------------------------------------------------------

#[tokio::test]
#[should_panic(
    expected = "unexpected request after the script: POST /api/v1/namespaces/ml/pods/llama-w-0/eviction"
)]
async fn the_mock_fails_a_test_that_sends_an_unexpected_request() {
    run(Vec::new(), |c| async move { actuator(c, config()).execute(&planned(evict())).await }).await;
}

#[tokio::test]
#[should_panic(
    expected = "request 1 of 2 (POST /api/v1/namespaces/ml/pods/llama-w-0/eviction) was never sent"
)]
async fn the_mock_fails_a_test_that_misses_an_expected_request() {
    let mut dry = config();
    dry.dry_run = true;
    // The script expects a real eviction; a dry run sends nothing.
    run(vec![eviction(success()), evicted_event()], |c| async move {
        actuator(c, dry).execute(&planned(evict())).await
    })
    .await;
}

#[tokio::test]
async fn fail_workload_of_a_volcano_job_only_marks_its_pods() {
    let mut p = member("mpi-worker-0", "uid-v", json!({"volcano.sh/job-name": "mpi"}), "Running", false);
    p["metadata"]["ownerReferences"] = json!([{"apiVersion": "batch.volcano.sh/v1alpha1", "kind": "Job",
        "name": "mpi", "uid": "vcjob-uid", "controller": true}]);
    let fail = Action::FailWorkload { gang: gang("volcano", "mpi"), reason: "r".into() };
    let script = vec![
        list_pods("volcano.sh%2Fjob-name%3Dmpi", p),
        workload_failed_mark("mpi-worker-0", "uid-v", "devheal failed workload ml/volcano/mpi: r"),
        event_posted(
            EVENTS_ML,
            event(
                "ml",
                Some(json!({"apiVersion": "batch.volcano.sh/v1alpha1", "kind": "Job", "namespace": "ml",
                            "name": "mpi", "uid": "vcjob-uid"})),
                "DevhealWorkloadFailed",
                "FailWorkload",
                "failing workload ml/volcano/mpi: 1 pods marked; the owner must be failed by its own policy or an \
                 operator (devheal.io/WorkloadFailed): r",
                "Warning",
            ),
        ),
    ];
    let out = run(script, |c| async move { actuator(c, config()).execute(&planned(fail)).await }).await;
    assert_eq!(out, ActionOutcome::Done);
}
