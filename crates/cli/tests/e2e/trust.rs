//! Trust on the real API server:
//! - a node's agent, with its own credentials (a token bound to its DaemonSet pod), can write its
//!   own NodeDeviceHealth, but what it says there about a pod on another node is ignored by the
//!   controller, counted and reported in an Event;
//! - the agent takes a pod's progress report only from that pod's own IP, as its watch of the
//!   node's pods in the API server says, or, for a host-network pod, with the pod's own
//!   projected token, checked with a TokenReview.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};

use crate::setup::http_body;
use serde_json::json;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real control plane: scripts/e2e.sh"]
async fn a_node_cannot_speak_for_another_nodes_pod() {
    let scope = Scope::new("foreign").await;
    let a = scope.add_node("a", 1).await;
    let b = scope.add_node("b", 1).await;
    let _kubelet = scope.kubelet(&a, 1).await;
    let controller = scope.controller("c1", &[]).await;
    // The victim: a pod on node b (no devices of its own in its status).
    let created = scope.create_running(&pod_object(&scope, "victim", &b, 0, json!({}))).await;

    // Node a's agent credentials write a's NodeDeviceHealth, binding the victim to a's device
    // and reporting that device Unhealthy.
    let client = token_client(&scope.agent_credentials(&a).await).await;
    let gvk = GroupVersionKind::gvk("devheal.io", "v1alpha1", "NodeDeviceHealth");
    let api: Api<DynamicObject> =
        Api::all_with(client, &ApiResource::from_gvk_with_plural(&gvk, "nodedevicehealths"));
    let uid = created.metadata.uid.clone().unwrap_or_default();
    let object = json!({"apiVersion": "devheal.io/v1alpha1", "kind": "NodeDeviceHealth",
        "metadata": {"name": a}, "spec": {"nodeName": a},
        "status": {"devices": [{"id": "fake-gpu-0", "resource": FAKE_GPU, "health": "Unhealthy",
            "reasons": [{"source": "kernel_log", "code": 79, "message": "GPU has fallen off the bus",
                         "firstSeen": "2026-12-04T00:00:00Z", "lastSeen": "2026-12-04T00:00:00Z", "count": 1}],
            "pods": [{"namespace": scope.ns, "name": "victim", "uid": uid}]}]}});
    let ssa = PatchParams::apply("devheal-agent").force();
    api.patch(&a, &ssa, &Patch::Apply(&object)).await.expect("a's agent writes a's NodeDeviceHealth");
    api.patch_status(&a, &ssa, &Patch::Apply(&object)).await.expect("and its status");

    // The controller sees the claim, ignores it, counts it and reports it.
    eventually("the controller counts the foreign claim", Duration::from_secs(30), || {
        let n = metric_sum(
            &controller.metrics(),
            "devheal_controller_foreign_claims_total",
            &[("what", "device")],
        );
        async move { (n >= 1.0).then_some(()) }
    })
    .await;
    let victim_key = format!("{}/victim", scope.ns);
    eventually("a DevhealForeignClaim Event names the pod and both nodes", Duration::from_secs(30), || {
        let (client, victim_key, a, b) = (scope.client.clone(), victim_key.clone(), a.clone(), b.clone());
        async move {
            events(&client, "default", "DevhealReport").await.into_iter().find(|e| {
                let note = e["note"].as_str().unwrap_or("");
                note.contains("DevhealForeignClaim")
                    && note.contains(&victim_key)
                    && note.contains(&format!("NodeDeviceHealth {a} "))
                    && note.contains(&format!("(on node {b})"))
            })
        }
    })
    .await;
    // Nothing is done to the victim.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let now: Pod = scope.pods().get("victim").await.expect("the victim");
    assert!(now.metadata.deletion_timestamp.is_none(), "the victim was deleted");
    assert_eq!(condition(&now, "devheal.io/DeviceFailure"), None, "the victim was marked");
    for action in ["mark_pod", "evict_pod", "restart_gang"] {
        assert_eq!(controller.actions(action, "done"), 0.0, "{action} on the word of another node");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real control plane: scripts/e2e.sh"]
async fn only_a_pod_itself_may_report_its_progress() {
    let scope = Scope::new("progress-auth").await;
    let node = scope.add_node("n1", 2).await;
    let kubelet = scope.kubelet(&node, 2).await;
    let agent = scope.agent(&node, &kubelet, None).await;
    // Two pods on GPUs; the fake kubelet gives each the IP 127.0.0.1, where the test posts from.
    for name in ["trainer", "neighbour"] {
        let device = scope.start_pod(&kubelet, &pod_object(&scope, name, &node, 1, json!({}))).await;
        scope.await_published(&node, &device, name).await;
    }
    // The neighbour's real address is elsewhere: reports naming it from here are forged.
    scope
        .pods()
        .patch_status(
            "neighbour",
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": {"podIP": "10.0.0.9"}})),
        )
        .await
        .expect("move the neighbour");
    let post = |pod: &str| {
        let body = format!(r#"{{"namespace":"{}","pod":"{pod}","steps":[{{"seconds":1.0}}]}}"#, scope.ns);
        http_body(agent.progress, "POST", "/v1/progress", &body)
    };
    let forged = eventually("a report naming the neighbour is refused", Duration::from_secs(20), || {
        let answer = post("neighbour");
        async move { answer.filter(|(code, _)| *code == 403) }
    })
    .await;
    assert!(forged.1.contains("forbidden"), "{forged:?}");
    let (code, _) = post("never-existed").expect("an answer");
    assert_eq!(code, 403, "an unknown pod is refused alike");
    let (code, answer) = post("trainer").expect("an answer");
    assert_eq!(code, 202, "the pod's own report, from its own IP: {answer}");
}

/// A host-network pod shares its node's IP, so its address proves nothing: it reports with a
/// projected service-account token for the audience `devheal` bound to it, which the agent
/// checks with a TokenReview on the real API server. Its own token is taken; another pod's
/// token, a token for the API server's audience, a token that is no pod's, and no token are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real control plane: scripts/e2e.sh"]
async fn a_host_network_pod_reports_with_its_own_projected_token() {
    let scope = Scope::new("progress-token").await;
    let node = scope.add_node("n1", 2).await;
    let kubelet = scope.kubelet(&node, 2).await;
    let agent = scope.agent(&node, &kubelet, None).await;
    let mut hostnet = pod_object(&scope, "hostnet", &node, 1, json!({}));
    if let Some(spec) = hostnet.spec.as_mut() {
        spec.host_network = Some(true);
    }
    let device = scope.start_pod(&kubelet, &hostnet).await;
    scope.await_published(&node, &device, "hostnet").await;
    let device = scope.start_pod(&kubelet, &pod_object(&scope, "neighbour", &node, 1, json!({}))).await;
    scope.await_published(&node, &device, "neighbour").await;

    let pods = scope.pods();
    let token_for = |pod: &'static str, audience: Option<&'static str>| {
        let (client, ns, pods) = (scope.client.clone(), scope.ns.clone(), pods.clone());
        async move {
            let object: Pod = pods.get(pod).await.expect("the pod");
            crate::setup::token_request(
                &client,
                &ns,
                "default",
                Some(&object),
                audience.map(|a| vec![a.to_string()]),
            )
            .await
            .expect("a token for the pod")
        }
    };
    let own = token_for("hostnet", Some("devheal")).await;
    let neighbours = token_for("neighbour", Some("devheal")).await;
    let apiserver_audience = token_for("hostnet", None).await;
    let body = format!(r#"{{"namespace":"{}","pod":"hostnet","steps":[{{"seconds":1.0}}]}}"#, scope.ns);
    let post = |token: Option<&str>| {
        let header = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> =
            header.as_deref().map(|h| vec![("Authorization", h)]).unwrap_or_default();
        crate::setup::http_request(agent.progress, "POST", "/v1/progress", &headers, &body)
            .expect("an answer")
    };
    // The pod watch has seen the pod (host network) once an untokened report is refused.
    let (code, answer) = post(None);
    assert_eq!(code, 403, "no token, the node's address: {answer}");
    let (code, answer) = post(Some(&own));
    assert_eq!(code, 202, "its own token, reviewed by the API server: {answer}");
    let (code, answer) = post(Some(&neighbours));
    assert_eq!(code, 403, "another pod's token: {answer}");
    let (code, answer) = post(Some(&apiserver_audience));
    assert_eq!(code, 401, "a token for another audience: {answer}");
    assert!(answer.contains("audience"), "{answer}");
    let (code, answer) = post(Some("not-a-token"));
    assert_eq!(code, 401, "{answer}");
    let refused = metric_sum(&agent.metrics(), "devheal_agent_progress_reports_total", &[("code", "401")]);
    assert_eq!(refused, 2.0, "refusals are counted");
}
