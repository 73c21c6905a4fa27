//! The Kubernetes actuator against a scripted API server, only for what the real API server
//! cannot be made to do on demand: a 5xx or no answer at all (mid-restart too), a 429 on the
//! same pod again right after a success, a 422 the real schemas would not produce, a node whose
//! taints change between the actuator's read and its patch, an Event that cannot be written,
//! a cluster that serves DeviceTaintRule only at an older version or not at all, and proof that
//! a dry run sends nothing but one Event per would-be action. For each: the exact requests (method, path with query,
//! JSON body) and what each answer becomes.
//!
//! Every action's ordinary behaviour (what it changes, what it leaves alone, its Event, the real
//! 404/409/429 answers) is tested on the real control plane: crates/cli/tests/e2e/actuator.rs.

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
    // Exact delays here; the jitter has its own test (and the end-to-end tests run with it).
    c.backoff_jitter = false;
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

/// An API server that takes a request and never answers: the action is retried after the
/// actuator's call timeout, not stuck (and with it the controller's loop).
#[tokio::test]
async fn a_request_that_gets_no_answer_is_retried_after_the_call_timeout() {
    let mut c = config();
    c.call_timeout = Duration::from_millis(200);
    let started = std::time::Instant::now();
    let out = run(vec![eviction(Answer::Hang)], |client| async move {
        actuator(client, c).execute(&planned(evict())).await
    })
    .await;
    match out {
        ActionOutcome::Retry { reason, .. } => {
            assert!(reason.contains("no answer within 200 ms"), "{reason}")
        }
        other => panic!("a hung request gave {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
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
async fn restart_gang_retry_spares_pods_created_since_the_first_attempt() {
    let restart = Action::RestartGang {
        gang: gang("jobset", "llama"),
        incident: "inc-43".into(),
        reason: "r".into(),
        in_place: vec![],
    };
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

// ---- QuarantineDevice / ReleaseDevice ----------------------------------------------------------

fn dra_device() -> DeviceKey {
    DeviceKey::new("gpu-node-1", "claim:train-gpus", "gpu.nvidia.com/gpu-node-1/gpu-3")
}

fn served() -> ActuatorConfig {
    let mut c = config();
    c.device_taint_rules = DeviceTaintRuleSupport::Served { version: "v1beta2".into() };
    c
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

// ---- CordonNode / UncordonNode -------------------------------------------------------------------

fn cordon() -> PlannedAction {
    planned(Action::CordonNode { node: "gpu-node-1".into(), reason: "3 GPUs unhealthy".into() })
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

// ---- RequestRepair and Report -----------------------------------------------------------------

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

/// The same Event within six minutes of the last is counted in the first Event's `series`
/// (a merge patch of the Event the server named), as Kubernetes' recorders do; another note is
/// another Event; after six minutes quiet, or once the server dropped the Event (404), a new one.
#[tokio::test]
async fn repeated_events_become_one_series() {
    let report = |m: &str| Action::Report { reason: "BreakerOpen".into(), message: m.into() };
    let body = |m: &str| {
        let mut e =
            event("default", None, "DevhealReport", "Report", &format!("BreakerOpen: {m}"), "Warning");
        e["eventTime"] = json!(T0_MICROS);
        e
    };
    let named =
        |name: &str| created(json!({"kind": "Event", "metadata": {"name": name, "namespace": "default"}}));
    let series = |count: i32, at: &str| json!({"series": {"count": count, "lastObservedTime": at}});
    let ev = |name: &str| format!("{EVENTS_DEFAULT}/{name}");
    let (t60, t120) = ("2026-09-21T14:14:20.000000Z", "2026-09-21T14:15:20.000000Z");
    let t_late = "2026-09-21T14:21:21.000000Z";
    let mut late = body("a");
    late["eventTime"] = json!(t_late);
    let script = vec![
        expect("POST", EVENTS_DEFAULT, Some(body("a")), named("devheal-a1")),
        expect("POST", EVENTS_DEFAULT, Some(body("b")), named("devheal-b1")),
        expect("PATCH", ev("devheal-a1"), Some(series(2, t60)), ok(json!({"kind": "Event"}))),
        expect(
            "PATCH",
            ev("devheal-a1"),
            Some(series(3, t120)),
            status(404, "NotFound", "events \"devheal-a1\" not found"),
        ),
        {
            let mut again = body("a");
            again["eventTime"] = json!(t120);
            expect("POST", EVENTS_DEFAULT, Some(again), named("devheal-a2"))
        },
        expect("POST", EVENTS_DEFAULT, Some(late), named("devheal-a3")),
    ];
    let clock = TestClock::at(T0);
    let tick = clock.clone();
    run(script, |c| async move {
        let a = KubeActuator::new(c, config()).with_clock(clock.clock());
        let p = |m: &str| planned(report(m));
        assert_eq!(a.execute(&p("a")).await, ActionOutcome::Done);
        assert_eq!(a.execute(&p("b")).await, ActionOutcome::Done, "another note: another Event");
        tick.advance_secs(60);
        assert_eq!(a.execute(&p("a")).await, ActionOutcome::Done, "counted as the second of a's series");
        tick.advance_secs(60);
        assert_eq!(a.execute(&p("a")).await, ActionOutcome::Done, "the series' Event is gone: a new Event");
        tick.advance_secs(361);
        assert_eq!(a.execute(&p("a")).await, ActionOutcome::Done, "six minutes quiet: a new Event");
    })
    .await;
}

// ---- dry run and discovery -------------------------------------------------------------------

/// A dry run changes nothing: for each would-be action its only write is one Normal Event,
/// reason `DevhealDryRun`, on the object the real Event would be about (a gang's owner found by
/// listing its pods), its note the would-do sentence; the same actions decided again write no
/// second Event (the script ends after the first round: any request then fails the test).
/// One action in a dry run: (action, the GET a gang's Event needs, Event namespace path,
/// namespace, regarding, Event action, the would-do sentence).
type DryRunCase = (Action, Option<Exchange>, &'static str, &'static str, Option<Value>, &'static str, String);

#[tokio::test]
async fn a_dry_run_writes_one_event_per_action_and_says_what_it_would_do() {
    let node_n = json!({"apiVersion": "v1", "kind": "Node", "name": "n"});
    let device = dra_device();
    let rule = devheal_k8s::actuator::device_taint_rule_name(&device);
    let job_list = "/api/v1/namespaces/ml/pods?labelSelector=batch.kubernetes.io%2Fjob-name%3Didx";
    // (action, the GET a gang's Event needs, Event namespace path, namespace, regarding,
    //  Event action, the would-do sentence)
    let cases: Vec<DryRunCase> = vec![
        (mark(), None, EVENTS_ML, "ml", Some(pod_regarding()), "MarkPod",
         "would set condition devheal.io/DeviceFailure=True (reason XidFallenOffBus) on pod ml/llama-w-0 (uid uid-0)".into()),
        (evict(), None, EVENTS_ML, "ml", Some(pod_regarding()), "Evict",
         "would evict pod ml/llama-w-0 (uid uid-0): GPU-1 fell off the bus".into()),
        (Action::RestartGang { gang: gang("jobset", "llama"), incident: "inc-1".into(), reason: "r".into(), in_place: vec![] },
         Some(expect("GET", JOBSET_LIST, None, ok(jobset_pods()))), EVENTS_ML, "ml", Some(job_regarding()),
         "RestartGang", "would restart gang ml/jobset/llama by deleting its live pods (incident inc-1): r".into()),
        (Action::FailWorkload { gang: gang("job", "idx"), reason: "r".into() },
         Some(expect("GET", job_list, None, ok(json!({"kind": "PodList", "items": []})))), EVENTS_ML, "ml", None,
         "FailWorkload", "would fail workload ml/job/idx, marking its pods devheal.io/WorkloadFailed: r".into()),
        (Action::QuarantineDevice { device: device.clone(), reason: "r".into() }, None, EVENTS_DEFAULT, "default",
         Some(node_regarding(None)), "Quarantine",
         format!("would quarantine device {device} with DeviceTaintRule {rule} (NoSchedule): r")),
        (Action::ReleaseDevice { device: device.clone(), reason: "r".into() }, None, EVENTS_DEFAULT, "default",
         Some(node_regarding(None)), "Release", format!("would release device {device}: r")),
        (Action::CordonNode { node: "n".into(), reason: "r".into() }, None, EVENTS_DEFAULT, "default",
         Some(node_n.clone()), "Cordon", "would cordon node n with taint devheal.io/unhealthy:NoSchedule: r".into()),
        (Action::UncordonNode { node: "n".into(), reason: "r".into() }, None, EVENTS_DEFAULT, "default",
         Some(node_n.clone()), "Uncordon", "would uncordon node n: r".into()),
        (Action::RequestRepair { node: "n".into(), device: None, kind: RepairKind::RebootNode, reason: "r".into() },
         None, EVENTS_DEFAULT, "default", Some(node_n.clone()), "RequestRepair",
         "would request repair reboot_node on node n (devheal.io/RepairRequested, devheal.io/repair=reboot_node): r".into()),
        (Action::WithdrawRepair { node: "n".into(), reason: "r".into() }, None, EVENTS_DEFAULT, "default",
         Some(node_n.clone()), "WithdrawRepair",
         "would withdraw the repair request on node n (devheal.io/RepairRequested=False, label devheal.io/repair removed): r".into()),
        (Action::Report { reason: "r".into(), message: "m".into() }, None, EVENTS_DEFAULT, "default", None, "Report",
         "would report r: m".into()),
    ];
    let mut script = Vec::new();
    let mut actions = Vec::new();
    let mut sentences = Vec::new();
    for (action, read, path, namespace, regarding, event_action, sentence) in cases {
        script.extend(read);
        let note = format!("dry run: {sentence}");
        script.push(event_posted(
            path,
            event(namespace, regarding, "DevhealDryRun", event_action, &note, "Normal"),
        ));
        actions.push(action);
        sentences.push(sentence);
    }
    let outs = run(script, |c| async move {
        let mut cfg = served();
        cfg.dry_run = true;
        let a = actuator(c, cfg);
        let mut outs = Vec::new();
        for round in 0..2 {
            for action in &actions {
                let out = a.execute(&planned(action.clone())).await;
                if round == 0 {
                    outs.push(out);
                } else {
                    assert!(matches!(out, ActionOutcome::WouldDo { .. }), "{out:?}");
                }
            }
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
    assert_eq!(texts, sentences);
}

/// A dry-run Event that could not be written is written when the action is decided again,
/// and only until it was.
#[tokio::test]
async fn a_dry_run_event_that_failed_is_written_next_time() {
    let note = "dry run: would evict pod ml/llama-w-0 (uid uid-0): GPU-1 fell off the bus";
    let body = || event("ml", Some(pod_regarding()), "DevhealDryRun", "Evict", note, "Normal");
    let script = vec![
        expect("POST", EVENTS_ML, Some(body()), status(500, "InternalError", "etcd down")),
        event_posted(EVENTS_ML, body()),
    ];
    let outs = run(script, |c| async move {
        let mut cfg = config();
        cfg.dry_run = true;
        let a = actuator(c, cfg);
        let mut outs = Vec::new();
        for _ in 0..3 {
            outs.push(a.execute(&planned(evict())).await.label());
        }
        outs
    })
    .await;
    assert_eq!(outs, ["would_do"; 3]);
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
    // The script expects an eviction that is never asked for.
    run(vec![eviction(success()), evicted_event()], |c| async move {
        let _idle = actuator(c, config());
    })
    .await;
}
