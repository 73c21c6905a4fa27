//! The FailurePolicy status write against a scripted API server, only for what the real server
//! cannot be made to do on demand (a 500) and for proof that a dry run writes the status too,
//! counting what it would have done under `dryRunActions`. The
//! write itself, and a deleted policy's 404, are tested on the real control plane:
//! crates/cli/tests/e2e/actuator.rs.

mod mock_api;

use std::collections::BTreeMap;

use devheal_k8s::StatusWriteError;
use devheal_k8s::actuator::{ActuatorConfig, KubeActuator};
use devheal_k8s::crd::{BudgetStatus, FailurePolicyStatus, LastAction, k8s_time};
use mock_api::*;
use serde_json::json;

const STATUS_PATH: &str =
    "/apis/devheal.io/v1alpha1/namespaces/ml/failurepolicies/training/status?fieldManager=devheal-controller";

fn actuator(client: kube::Client, dry_run: bool) -> KubeActuator {
    let mut config = ActuatorConfig::new("devheal-controller-7d9f-abc");
    config.dry_run = dry_run;
    KubeActuator::new(client, config).with_clock(TestClock::at(T0).clock())
}

fn policy_status() -> FailurePolicyStatus {
    FailurePolicyStatus {
        observed_generation: Some(3),
        matched_pods: 64,
        actions_taken: BTreeMap::from([("MarkPod".to_string(), 1), ("RestartGang".to_string(), 1)]),
        dry_run_actions: BTreeMap::new(),
        last_action: Some(LastAction {
            action: "RestartGang".into(),
            target: "ml/jobset/llama".into(),
            reason: "DeviceFailure: Xid 79".into(),
            at: k8s_time(T0),
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
    }
}

fn status_body() -> serde_json::Value {
    json!({"status": {
        "observedGeneration": 3,
        "matchedPods": 64,
        "actionsTaken": {"MarkPod": 1, "RestartGang": 1},
        "lastAction": {"action": "RestartGang", "target": "ml/jobset/llama",
                       "reason": "DeviceFailure: Xid 79", "at": T0_SECONDS},
        "budget": {"breakerOpen": false, "quarantinedNodes": 1, "quarantineNodeLimit": 2,
                   "evictionsLastMinute": 0, "heldVersions": [], "progressBreakerOpen": false},
    }})
}

#[tokio::test]
async fn a_deleted_policy_is_gone_and_other_refusals_fail() {
    let script = vec![
        expect("PATCH", STATUS_PATH, Some(status_body()), status(404, "NotFound", "not found")),
        expect("PATCH", STATUS_PATH, Some(status_body()), status(500, "InternalError", "etcd timeout")),
    ];
    let out = run(script, |c| async move {
        let a = actuator(c, false);
        let first = a.write_policy_status("ml", "training", &policy_status()).await;
        let second = a.write_policy_status("ml", "training", &policy_status()).await;
        (first, second)
    })
    .await;
    assert_eq!(out.0, Err(StatusWriteError::Gone("ml/training".into())));
    assert!(
        matches!(&out.1, Err(StatusWriteError::Failed { policy, message })
            if policy == "ml/training" && message.contains("etcd timeout")),
        "{:?}",
        out.1
    );
}

#[tokio::test]
async fn a_dry_run_writes_the_status_with_its_would_be_actions() {
    let mut dry_status = policy_status();
    dry_status.actions_taken.clear();
    dry_status.dry_run_actions = BTreeMap::from([("RestartGang".to_string(), 2)]);
    if let Some(last) = dry_status.last_action.as_mut() {
        last.dry_run = true;
    }
    let mut body = status_body();
    body["status"]["actionsTaken"] = json!({});
    body["status"]["dryRunActions"] = json!({"RestartGang": 2});
    body["status"]["lastAction"]["dryRun"] = json!(true);
    let script = vec![expect("PATCH", STATUS_PATH, Some(body), ok(json!({"kind": "FailurePolicy"})))];
    let out =
        run(
            script,
            |c| async move { actuator(c, true).write_policy_status("ml", "training", &dry_status).await },
        )
        .await;
    assert_eq!(out, Ok(()));
}
