//! Device resets on a real API server: the controller asks the node's agent for a reset in its
//! NodeDeviceHealth (`spec.resetRequests`, under the controller's RBAC), the agent carries it
//! out on its fake device and answers in `status.resets`; a reset that worked ends in the
//! device's release and the withdrawal of every mark (condition, label, request), one that
//! failed in a request to reboot the node.

use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use serde_json::{Value, json};

use crate::harness::*;

fn reset_answer(object: &Value, device: &str) -> Option<Value> {
    object["status"]["resets"].as_array()?.iter().rev().find(|r| r["device"] == device).cloned()
}

fn requested(object: &Value, device: &str) -> bool {
    object["spec"]["resetRequests"].as_array().is_some_and(|rs| rs.iter().any(|r| r["device"] == device))
}

async fn repair_label(nodes: &Api<Node>, node: &str) -> Option<String> {
    let n = nodes.get(node).await.ok()?;
    n.metadata.labels.unwrap_or_default().get("devheal.io/repair").cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real control plane: scripts/e2e.sh"]
async fn the_agent_carries_out_the_reset_the_controller_requests_and_the_request_is_cleared() {
    let scope = Scope::new("reset").await;
    let node = scope.add_node("n1", 2).await;
    let kubelet = scope.kubelet(&node, 2).await;
    let agent =
        scope.agent_with(&node, &kubelet, None, &["--device-reset", "on", "--probation-secs", "2"]).await;
    let controller = scope.controller("c1", &["--probation", "2s"]).await;
    let nodes: Api<Node> = Api::all(scope.client.clone());
    let device = scope.start_pod(&kubelet, &pod_object(&scope, "trainer", &node, 1, json!({}))).await;
    scope.await_published(&node, &device, "trainer").await;

    // An uncorrectable ECC error (Xid 48): the repair is a device reset. The request reaches the
    // agent through its NodeDeviceHealth; the agent resets the device and says so.
    agent.inject("ecc", &device);
    let answered = eventually("the agent's reset answered Succeeded", Duration::from_secs(60), || {
        let (client, node, device) = (scope.client.clone(), node.clone(), device.clone());
        async move {
            let object = node_device_health(&client, &node).await?;
            let answer = reset_answer(&object, &device)?;
            (answer["phase"] == "Succeeded" && requested(&object, &device)).then_some(answer)
        }
    })
    .await;
    assert!(answered["id"].as_str().unwrap_or("").starts_with("repair/"), "{answered}");
    controller.await_actions("request_repair", "done", 1.0).await;

    // Healthy after the agent's probation, released after the controller's: the repair
    // request is withdrawn everywhere (label, condition, spec.resetRequests).
    eventually("the repair request withdrawn and the reset request cleared", Duration::from_secs(60), || {
        let (client, nodes, node, device) =
            (scope.client.clone(), nodes.clone(), node.clone(), device.clone());
        async move {
            let object = node_device_health(&client, &node).await?;
            let cleared = !requested(&object, &device) && repair_label(&nodes, &node).await.is_none();
            cleared.then_some(())
        }
    })
    .await;
    controller.await_actions("withdraw_repair", "done", 1.0).await;
    let n = nodes.get(&node).await.expect("the node");
    let condition = n
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "devheal.io/RepairRequested")
        .expect("devheal's repair condition");
    assert_eq!((condition.status.as_str(), condition.reason.as_deref()), ("False", Some("RepairDone")));
    let steps = events(&scope.client, "default", "DeviceResetSucceeded").await;
    assert!(steps.iter().any(|e| e["regarding"]["name"] == node), "the agent's Event on its node");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real control plane: scripts/e2e.sh"]
async fn a_reset_that_fails_ends_in_a_request_to_reboot_the_node() {
    let scope = Scope::new("resetfail").await;
    let node = scope.add_node("n1", 2).await;
    let kubelet = scope.kubelet(&node, 2).await;
    let agent = scope.agent_with(&node, &kubelet, None, &["--device-reset", "on"]).await;
    let controller = scope.controller("c1", &[]).await;
    let nodes: Api<Node> = Api::all(scope.client.clone());
    let device = scope.start_pod(&kubelet, &pod_object(&scope, "trainer", &node, 1, json!({}))).await;
    scope.await_published(&node, &device, "trainer").await;

    agent.inject("wedge", &device);
    agent.inject("ecc", &device);
    eventually("the reset answered Failed", Duration::from_secs(60), || {
        let (client, node, device) = (scope.client.clone(), node.clone(), device.clone());
        async move {
            let object = node_device_health(&client, &node).await?;
            (reset_answer(&object, &device)?["phase"] == "Failed").then_some(())
        }
    })
    .await;
    eventually("the node labelled for a reboot", Duration::from_secs(60), || {
        let (nodes, node) = (nodes.clone(), node.clone());
        async move { (repair_label(&nodes, &node).await.as_deref() == Some("reboot_node")).then_some(()) }
    })
    .await;
    controller.await_actions("request_repair", "done", 2.0).await;
    assert_eq!(
        published_health(&scope.client, &node, &device).await.as_deref(),
        Some("Unhealthy"),
        "a device that did not come back stays Unhealthy"
    );
}
