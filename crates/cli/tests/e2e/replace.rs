//! The `ReplaceAtCheckpoint` contract on a real API server (docs/policy.md, "Replacing a slow
//! member"): a gang member whose GPU is slow is marked by the controller; the agent tells the
//! member so in the answer to its progress report; the member exits with code 75, as after
//! writing its checkpoint; the controller keeps its slow GPU off the replacement and does not
//! restart the rest of the gang.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::harness::*;
use crate::setup::http_body;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real control plane: scripts/e2e.sh"]
async fn a_slow_member_told_to_leave_at_its_checkpoint_is_replaced_alone() {
    let scope = Scope::new("replace").await;
    let node = scope.add_node("n1", 2).await;
    let kubelet = scope.kubelet(&node, 2).await;
    let agent = scope.agent(&node, &kubelet, None).await;
    let controller = scope
        .controller("c1", &["--set", "safety.degradedReplaceAfter=1s", "--set", "safety.probation=1h"])
        .await;
    let gang = json!({"jobset.sigs.k8s.io/jobset-name": "llama"});
    let slow = scope.start_pod(&kubelet, &pod_object(&scope, "llama-0", &node, 1, gang.clone())).await;
    let other = scope.start_pod(&kubelet, &pod_object(&scope, "llama-1", &node, 1, gang)).await;
    scope.await_published(&node, &slow, "llama-0").await;
    scope.await_published(&node, &other, "llama-1").await;

    // A GPU that keeps raising single-bit ECC interrupts (Xid 92): Degraded, its pod a slow member.
    agent.inject("degrade", &slow);
    let pods = scope.pods();
    eventually("llama-0 marked ReplaceAtCheckpoint", Duration::from_secs(60), || {
        let pods = pods.clone();
        async move {
            let p: Pod = pods.get_opt("llama-0").await.ok()??;
            (condition(&p, "devheal.io/ReplaceAtCheckpoint").as_deref() == Some("True")).then_some(())
        }
    })
    .await;

    // The member learns it from the answer to its progress report (from its own IP).
    let body = format!(r#"{{"namespace":"{}","pod":"llama-0","steps":[{{"seconds":1.0}}]}}"#, scope.ns);
    let told = eventually("the agent's answer tells llama-0 to leave", Duration::from_secs(30), || {
        let answer = http_body(agent.progress, "POST", "/v1/progress", &body);
        async move {
            let (code, text) = answer?;
            let value: serde_json::Value = serde_json::from_str(&text).ok()?;
            (code == 202 && value.get("replaceAtCheckpoint").is_some()).then_some(value)
        }
    })
    .await;
    assert_eq!(told["replaceAtCheckpoint"]["exitCode"], 75, "{told}");

    // It writes its checkpoint and exits 75 (the kubelet reports it Failed with that code).
    let p = pods.get("llama-0").await.expect("llama-0");
    pods.patch_status("llama-0", &PatchParams::default(), &Patch::Merge(&terminated(&p, 75)))
        .await
        .expect("llama-0 exits 75");

    // Its slow GPU is kept off the replacement; the rest of the gang is not restarted.
    let nodes: Api<Node> = Api::all(scope.client.clone());
    eventually("the slow GPU's quarantine taint", Duration::from_secs(30), || {
        let (nodes, node, slow) = (nodes.clone(), node.clone(), slow.clone());
        async move {
            let n = nodes.get(&node).await.ok()?;
            let taints = n.spec?.taints.unwrap_or_default();
            taints
                .iter()
                .any(|t| {
                    t.key.starts_with("devheal.io/device-quarantine")
                        && t.value.as_deref() == Some(slow.as_str())
                })
                .then_some(())
        }
    })
    .await;
    controller.await_actions("quarantine_device", "done", 1.0).await;
    assert_eq!(controller.actions("restart_gang", "done"), 0.0, "the gang is not restarted");
    let survivor = pods.get("llama-1").await.expect("llama-1 is still there");
    assert!(survivor.metadata.deletion_timestamp.is_none(), "llama-1 is not deleted");
    assert_eq!(condition(&survivor, "devheal.io/GangRestart"), None, "{survivor:?}");
    let reported = eventually("the MemberReplacedAtCheckpoint report", Duration::from_secs(20), || {
        let client = scope.client.clone();
        async move {
            events(&client, "default", "DevhealReport")
                .await
                .into_iter()
                .find(|e| e["note"].as_str().is_some_and(|n| n.contains("left at its checkpoint")))
        }
    })
    .await;
    assert!(reported["note"].as_str().unwrap_or("").contains("llama-0"), "{reported}");
}
