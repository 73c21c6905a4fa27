//! The real watch path (`KubeCluster` over kube-runtime watchers) against a mock API server
//! (tower-test): the pods watch lists a gang with a failed GPU, watches, gets a 410 Gone
//! ("too old resource version"), relists (one pod vanished during the gap), and the controller
//! sends the gang restart exactly once.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use devheal_controller::{
    AlwaysLeader, Cluster, Controller, ControllerSettings, KubeCluster, LoopHealth, Metrics, ObjectKind,
    PolicyStatusWriter, SystemClock, WatchSettings,
};
use devheal_core::{ActionOutcome, Actuator, PlannedAction};
use devheal_k8s::StatusWriteError;
use devheal_k8s::crd::FailurePolicyStatus;
use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};

/// Records what it is handed; everything is done.
#[derive(Clone, Default)]
struct Recording(Arc<Mutex<Vec<PlannedAction>>>);

impl Actuator for Recording {
    async fn execute(&self, planned: &PlannedAction) -> ActionOutcome {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(planned.clone());
        ActionOutcome::Done
    }
}

/// The mock API serves no FailurePolicy, so no status is ever due; one that were would be
/// taken as written.
impl PolicyStatusWriter for Recording {
    async fn write_policy_status(
        &self,
        _namespace: &str,
        _name: &str,
        _status: &FailurePolicyStatus,
    ) -> Result<(), StatusWriteError> {
        Ok(())
    }
}

fn pod(i: usize, rv: &str, unhealthy: bool) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("llama-workers-{i}"), "namespace": "ml", "uid": format!("uid-{i}"),
                     "resourceVersion": rv,
                     "labels": {"jobset.sigs.k8s.io/jobset-name": "llama", "jobset.sigs.k8s.io/restart-attempt": "0"}},
        "spec": {"nodeName": "node-0", "containers": [{"name": "trainer"}]},
        "status": {"phase": "Running", "startTime": "2026-11-28T10:00:00Z", "containerStatuses": [{
            "name": "trainer", "image": "t", "imageID": "", "ready": true, "restartCount": 0,
            "state": {"running": {"startedAt": "2026-11-28T10:00:00Z"}},
            "allocatedResourcesStatus": [{"name": "nvidia.com/gpu", "resources": [
                {"resourceID": format!("GPU-{i}"), "health": if unhealthy { "Unhealthy" } else { "Healthy" }}]}]
        }]}
    })
}

fn list(kind: &str, api_version: &str, rv: &str, items: Vec<Value>) -> Vec<u8> {
    serde_json::to_vec(&json!({"apiVersion": api_version, "kind": kind, "metadata": {"resourceVersion": rv}, "items": items}))
        .unwrap_or_default()
}

fn respond(body: Vec<u8>) -> Response<Body> {
    Response::builder()
        .status(200)
        .body(Body::from(body))
        .unwrap_or_else(|_| Response::new(Body::from(Vec::new())))
}

#[tokio::test]
async fn a_410_gone_relists_and_repeats_no_action() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let (relisted_tx, relisted_rx) = tokio::sync::oneshot::channel::<()>();

    let log = seen.clone();
    let server = tokio::spawn(async move {
        let mut pod_lists = 0;
        let mut pod_watches = 0;
        // Watches that never answer (the test ends first); kept so they stay open.
        let mut parked = Vec::new();
        let mut relisted_tx = Some(relisted_tx);
        while let Some((request, send)) = handle.next_request().await {
            let path = request.uri().path().to_string();
            let query = request.uri().query().unwrap_or("").to_string();
            let watching = query.contains("watch=true");
            log.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(format!("{} {path}?{query}", request.method()));
            match (path.as_str(), watching) {
                ("/api/v1/pods", false) => {
                    pod_lists += 1;
                    let items = if pod_lists == 1 {
                        (0..8).map(|i| pod(i, "10", i == 3)).collect()
                    } else {
                        // During the gap pod 7 was deleted; the others did not change.
                        (0..7).map(|i| pod(i, "20", i == 3)).collect()
                    };
                    let rv = if pod_lists == 1 { "100" } else { "200" };
                    send.send_response(respond(list("PodList", "v1", rv, items)));
                }
                ("/api/v1/pods", true) => {
                    pod_watches += 1;
                    if pod_watches == 1 {
                        assert!(query.contains("resourceVersion=100"), "{query}");
                        // A resourceVersion-only update, then the apiserver expires the watch.
                        let modified = json!({"type": "MODIFIED", "object": pod(5, "101", false)});
                        let gone = json!({"type": "ERROR", "object": {
                            "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
                            "message": "too old resource version: 100 (150)", "reason": "Expired", "code": 410}});
                        let body = format!("{modified}\n{gone}\n").into_bytes();
                        send.send_response(respond(body));
                    } else {
                        assert!(query.contains("resourceVersion=200"), "{query}");
                        if let Some(tx) = relisted_tx.take() {
                            let _ = tx.send(());
                        }
                        parked.push(send);
                    }
                }
                ("/api/v1/nodes", false) => {
                    let node = json!({"apiVersion": "v1", "kind": "Node",
                        "metadata": {"name": "node-0", "resourceVersion": "5"},
                        "status": {"conditions": [{"type": "Ready", "status": "True"}]}});
                    send.send_response(respond(list("NodeList", "v1", "5", vec![node])));
                }
                ("/apis/devheal.io/v1alpha1/nodedevicehealths", false) => send.send_response(respond(list(
                    "NodeDeviceHealthList",
                    "devheal.io/v1alpha1",
                    "7",
                    vec![],
                ))),
                ("/apis/devheal.io/v1alpha1/failurepolicies", false) => {
                    send.send_response(respond(list("FailurePolicyList", "devheal.io/v1alpha1", "9", vec![])))
                }
                (_, true) => parked.push(send),
                _ => panic!("unexpected request {path}?{query}"),
            }
        }
    });

    let recording = Recording::default();
    let metrics = Arc::new(Metrics::new());
    let controller = Controller::new(
        ControllerSettings::default(),
        recording.clone(),
        AlwaysLeader,
        SystemClock,
        metrics.clone(),
        Arc::new(LoopHealth::new(Duration::from_secs(60))),
    );
    let cluster = KubeCluster::new(client, WatchSettings::default());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(controller.run(cluster.events(), async move {
        let _ = stop_rx.await;
    }));
    // The second pods watch starts only after the relist's InitDone was handled.
    tokio::time::timeout(Duration::from_secs(20), relisted_rx)
        .await
        .expect("the watcher relisted within 20 s")
        .expect("relist signalled");
    let _ = stop_tx.send(());
    let controller = run.await.expect("joins").expect("runs until stopped");
    server.abort();

    let actions = recording.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let restarts: Vec<&PlannedAction> =
        actions.iter().filter(|p| p.action.label() == "restart_gang").collect();
    assert_eq!(restarts.len(), 1, "{actions:#?}");
    let mut keys: Vec<&str> = actions.iter().map(|p| p.idempotency_key.as_str()).collect();
    keys.sort();
    let before = keys.len();
    keys.dedup();
    assert_eq!(keys.len(), before, "an action was sent twice: {actions:#?}");

    assert_eq!(metrics.watch_errors(ObjectKind::Pod), 1);
    assert_eq!(metrics.relists(ObjectKind::Pod), 1);
    // 8 pods listed, nothing for the resourceVersion-only update, nothing for the 6 unchanged
    // pods of the relist, one deletion for the pod that vanished in the gap.
    assert_eq!(metrics.input_count(ObjectKind::Pod), 8 + 1);
    assert_eq!(controller.index().len(ObjectKind::Pod), 7);
    assert!(controller.index().ready());
    let requests = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert_eq!(
        requests.iter().filter(|r| r.starts_with("GET /api/v1/pods?") && !r.contains("watch=true")).count(),
        2
    );
}
