//! a. `deploy/` on a real API server: it applies as `kubectl kustomize` renders it, the CRDs'
//! structural schemas and CEL rules and the ValidatingAdmissionPolicy's CEL compile and enforce
//! what the manifests say, the largest values the agent can publish are accepted, and the agent's
//! credentials (a service-account token bound to its pod, so the node-name claim is real) may
//! write only its own node's objects and cannot evict, delete pods or patch nodes.

use std::time::Duration;

use devheal_k8s::crd::{
    DeviceHealthState, DeviceStatus, HealthReasonStatus, HealthSummary, NodeDeviceHealth,
    NodeDeviceHealthSpec, NodeDeviceHealthStatus, ProgressFinding, ProgressWindow, WorkloadProgress,
};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, EvictParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::harness::*;

fn ndh_api(client: &kube::Client) -> Api<NodeDeviceHealth> {
    Api::all(client.clone())
}

fn code<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> u16 {
    match result {
        Ok(_) => 200,
        Err(kube::Error::Api(status)) => status.code,
        Err(e) => panic!("not an API answer: {e}"),
    }
}

fn message<T>(result: Result<T, kube::Error>) -> String {
    match result {
        Ok(_) => String::from("accepted"),
        Err(kube::Error::Api(e)) => format!("{} {}: {}", e.code, e.reason, e.message),
        Err(e) => e.to_string(),
    }
}

/// Everything `kubectl kustomize deploy/base` renders exists on the server, the overlays apply
/// too (server-side dry run), the CRDs are Established, and the admission policy's CEL
/// type-checks without warnings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real control plane: scripts/e2e.sh"]
async fn deploy_applies_as_rendered_and_its_cel_compiles() {
    let scope = Scope::new("deploy").await;
    let root = repo_root();
    for overlay in
        ["deploy/crds", "deploy/base", "deploy/overlays/dry-run", "deploy/overlays/privileged-agent"]
    {
        let rendered = kubectl(scope.env, &["kustomize", &root.join(overlay).to_string_lossy()], None);
        let out = kubectl_output(
            scope.env,
            &[
                "apply",
                "--server-side",
                "--force-conflicts",
                "--dry-run=server",
                "--field-manager",
                "devheal-e2e",
                "-f",
                "-",
            ],
            Some(rendered.as_bytes()),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{overlay} is refused: {stderr}");
        // The server warns about what it will not enforce (an unknown `format`, a CEL cost).
        assert!(!stderr.contains("Warning"), "{overlay}: the server warns: {stderr}");
        // Each rendered object is on the server (base was applied for real by the harness).
        if overlay == "deploy/base" {
            let docs: Vec<Value> = rendered.split("\n---\n").filter_map(serde_saphyr_value).collect();
            assert!(docs.len() >= 15, "rendered {} objects", docs.len());
            for d in &docs {
                let kind = d["kind"].as_str().unwrap_or_default();
                let name = d["metadata"]["name"].as_str().unwrap_or_default();
                let mut args = vec!["get", kind, name, "-o", "name"];
                if let Some(ns) = d["metadata"]["namespace"].as_str() {
                    args.extend(["-n", ns]);
                }
                kubectl(scope.env, &args, None);
            }
        }
    }
    // The examples apply too (server-side dry run): they are not rendered by kustomize.
    for example in std::fs::read_dir(root.join("deploy/examples")).expect("deploy/examples") {
        let path = example.expect("an example").path();
        let out =
            kubectl_output(scope.env, &["apply", "--dry-run=server", "-f", &path.to_string_lossy()], None);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !stderr.contains("Warning"),
            "{} is refused: {stderr}",
            path.display()
        );
    }
    let policy = eventually("the admission policy's type checking", Duration::from_secs(30), || {
        let env = scope.env;
        async move {
            let out = kubectl_output(
                env,
                &["get", "validatingadmissionpolicy", "devheal-agent-own-node", "-o", "json"],
                None,
            );
            let v: Value = serde_json::from_slice(&out.stdout).ok()?;
            (!v["status"]["typeChecking"].is_null()).then_some(v)
        }
    })
    .await;
    let warnings = &policy["status"]["typeChecking"]["expressionWarnings"];
    assert!(warnings.is_null() || warnings.as_array().is_some_and(Vec::is_empty), "CEL warnings: {warnings}");
}

fn serde_saphyr_value(doc: &str) -> Option<Value> {
    let v: Value = serde_saphyr::from_str(doc).ok()?;
    v.is_object().then_some(v)
}

/// The CRDs' CEL rules and schema bounds, enforced by the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real control plane: scripts/e2e.sh"]
async fn the_crds_rules_are_enforced() {
    let scope = Scope::new("crdrules").await;
    let api = ndh_api(&scope.client);
    let node = scope.node_name("x");
    let _ = api.delete(&node, &DeleteParams::default()).await;
    // metadata.name must equal spec.nodeName.
    let wrong = NodeDeviceHealth::new(
        &node,
        NodeDeviceHealthSpec { node_name: "another-node".into(), ..Default::default() },
    );
    let answer = api.create(&PostParams::default(), &wrong).await;
    let text = message(answer);
    assert!(text.contains("422") && text.contains("named after its node"), "{text}");
    // spec.nodeName is immutable.
    let right =
        NodeDeviceHealth::new(&node, NodeDeviceHealthSpec { node_name: node.clone(), ..Default::default() });
    api.create(&PostParams::default(), &right).await.expect("a well-named object is accepted");
    let answer = api
        .patch(&node, &PatchParams::default(), &Patch::Merge(&json!({"spec": {"nodeName": "moved"}})))
        .await;
    let text = message(answer);
    assert!(text.contains("422") && text.contains("immutable"), "{text}");
    // A window length outside 1..=3600 seconds is refused by the schema.
    let mut status = NodeDeviceHealthStatus::default();
    status.workloads.push(WorkloadProgress {
        namespace: "ml".into(),
        name: "w".into(),
        window_seconds: 0,
        ..WorkloadProgress::default()
    });
    let answer = api
        .patch_status(
            &node,
            &PatchParams::apply("devheal-e2e").force(),
            &Patch::Apply(&status_body(&node, &status)),
        )
        .await;
    assert_eq!(code(answer), 422, "windowSeconds 0 must be refused");
    // FailurePolicy: a repair only with RequestRepair.
    let policy = json!({
        "apiVersion": "devheal.io/v1alpha1", "kind": "FailurePolicy",
        "metadata": {"name": "bad-repair", "namespace": scope.ns},
        "spec": {"rules": [{"name": "r", "action": "EvictPod", "repair": "reset_device"}]},
    });
    let out = kubectl_output(scope.env, &["create", "-f", "-"], Some(policy.to_string().as_bytes()));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("RequestRepair"), "{err}");
    let _ = api.delete(&node, &DeleteParams::default()).await;
}

fn status_body(node: &str, status: &NodeDeviceHealthStatus) -> Value {
    json!({"apiVersion": "devheal.io/v1alpha1", "kind": "NodeDeviceHealth",
           "metadata": {"name": node}, "status": status})
}

/// The largest values the agent's types can carry, written as the agent writes them
/// (server-side apply of the status subresource), are accepted and read back unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real control plane: scripts/e2e.sh"]
async fn the_largest_values_the_agent_publishes_are_accepted() {
    let scope = Scope::new("largest").await;
    let api = ndh_api(&scope.client);
    let node = scope.node_name("x");
    let _ = api.delete(&node, &DeleteParams::default()).await;
    let object =
        NodeDeviceHealth::new(&node, NodeDeviceHealthSpec { node_name: node.clone(), ..Default::default() });
    api.create(&PostParams::default(), &object).await.expect("create");
    let status = largest_status();
    let answer = api
        .patch_status(
            &node,
            &PatchParams::apply("devheal-agent").force(),
            &Patch::Apply(&status_body(&node, &status)),
        )
        .await;
    let written = answer.unwrap_or_else(|e| panic!("the server refused the agent's largest values: {e}"));
    let back = written.status.expect("a status");
    // Counters beyond int64 are written saturated (crd::int64): what comes back is i64::MAX.
    let saturated = Some(i64::MAX as u64);
    assert_eq!(back.workloads[0].step, saturated, "the step, saturated");
    assert_eq!(Some(back.workloads[0].steps), saturated);
    assert_eq!(Some(back.devices[0].reasons[0].count), saturated);
    assert_eq!(back.devices[0].reasons[31].code, Some(u32::MAX - 31));
    assert_eq!(back.devices[0].reasons.len(), status.devices[0].reasons.len());
    assert_eq!(back.devices[0].pods.len(), status.devices[0].pods.len());
    assert_eq!(back.devices[0].aliases, status.devices[0].aliases, "every alias kept");
    assert_eq!(back.devices[0].parent, status.devices[0].parent);
    let _ = api.delete(&node, &DeleteParams::default()).await;
}

/// Every number at the largest value its Rust type allows, every list at the length its schema
/// allows, every text at its longest, times at the end of what the agent's clock can say.
fn largest_status() -> NodeDeviceHealthStatus {
    let far = devheal_k8s::crd::k8s_time(devheal_core::Time::from_nanos(i64::MAX));
    let long = |n: usize| "x".repeat(n);
    let reason = |code: u32| HealthReasonStatus {
        source: devheal_k8s::crd::ReasonSource::KernelLog,
        code: Some(code),
        message: long(1024),
        first_seen: far.clone(),
        last_seen: far.clone(),
        count: u64::MAX,
    };
    let device = DeviceStatus {
        // A DRA id: driver (63) / pool (253) / device (63), and as many aliases as the schema
        // allows, each as long.
        id: long(384),
        resource: long(253),
        model: Some(long(128)),
        pci_address: Some("ffffffff:ff:1f.7".into()),
        parent: Some(long(384)),
        aliases: (0..16).map(|i| format!("{}{i:02}", long(382))).collect(),
        health: DeviceHealthState::Unhealthy,
        since: Some(far.clone()),
        reasons: (0..32).map(|i| reason(u32::MAX - i)).collect(),
        pods: (0..64)
            .map(|i| devheal_k8s::crd::BoundPod {
                namespace: long(63),
                name: format!("{}{i:02}", long(251)),
                uid: Some(long(36)),
                container: Some(long(63)),
            })
            .collect(),
        ..DeviceStatus::default()
    };
    let finding = ProgressFinding {
        since: far.clone(),
        detected_at: far.clone(),
        magnitude: f64::MAX,
        message: long(1024),
    };
    NodeDeviceHealthStatus {
        boot_id: Some(long(36)),
        last_heartbeat: Some(far.clone()),
        summary: Some(HealthSummary {
            devices: u32::MAX,
            healthy: u32::MAX,
            degraded: u32::MAX,
            unhealthy: u32::MAX,
            unknown: u32::MAX,
        }),
        devices: vec![device],
        sources: Vec::new(),
        workloads: vec![WorkloadProgress {
            namespace: long(63),
            name: long(253),
            uid: Some(long(36)),
            last_progress: Some(far.clone()),
            step: Some(u64::MAX),
            steps: u64::MAX,
            window_seconds: 3600,
            windows: (0..10)
                .map(|_| ProgressWindow { start: far.clone(), samples: u32::MAX, step_seconds: f64::MAX })
                .collect(),
            paused_until: Some(far.clone()),
            hang: Some(finding.clone()),
            baseline_shift: Some(finding),
            error: Some(long(1024)),
            ..WorkloadProgress::default()
        }],
        network: (0..64)
            .map(|i| devheal_k8s::crd::NicLinkStatus {
                pci_address: format!("ffffffff:ff:{i:02x}.7"),
                names: (0..8).map(|n| format!("{}{n}", long(63))).collect(),
                link: devheal_k8s::crd::NicLinkState::Down,
                flaps: u64::MAX,
                fault: Some(long(1024)),
                fault_since: Some(far.clone()),
            })
            .collect(),
        // The agent's answers to reset requests: 64 at most (reset.rs' bound), the message cut
        // at 2,000 characters, ids as long as the controller's requests may be.
        resets: (0..devheal_agent::reset::MAX_RESETS)
            .map(|i| devheal_k8s::crd::DeviceResetStatus {
                device: long(512),
                id: format!("{i:03}{}", long(509)),
                phase: devheal_k8s::crd::DeviceResetPhase::Failed,
                message: long(2000),
                at: far.clone(),
            })
            .collect(),
    }
}

/// The agent's token bound to its DaemonSet pod on node A may write node A's NodeDeviceHealth
/// and Node status; node B's are refused (403, the admission policy); a token of the same
/// account that is not bound to a pod carries no node name and is refused too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real control plane: scripts/e2e.sh"]
async fn an_agent_token_writes_only_its_own_nodes_objects() {
    let scope = Scope::new("ownnode").await;
    let node_a = scope.add_node("a", 1).await;
    let node_b = scope.add_node("b", 1).await;
    let kubelet_a = scope.kubelet(&node_a, 1).await;
    let _kubelet_b = scope.kubelet(&node_b, 1).await;
    let _ = &kubelet_a;
    let agent_a = token_client(&scope.agent_credentials(&node_a).await).await;
    let api = ndh_api(&agent_a);
    let pp = PatchParams::apply("devheal-agent").force();
    for node in [&node_a, &node_b] {
        let _ = ndh_api(&scope.client).delete(node, &DeleteParams::default()).await;
    }
    let own = json!({"apiVersion": "devheal.io/v1alpha1", "kind": "NodeDeviceHealth",
                     "metadata": {"name": node_a}, "spec": {"nodeName": node_a}});
    api.patch(&node_a, &pp, &Patch::Apply(&own)).await.expect("the agent writes its own node's object");
    let status = NodeDeviceHealthStatus { boot_id: Some("b".into()), ..NodeDeviceHealthStatus::default() };
    api.patch_status(&node_a, &pp, &Patch::Apply(&status_body(&node_a, &status)))
        .await
        .expect("and its status");
    let other = json!({"apiVersion": "devheal.io/v1alpha1", "kind": "NodeDeviceHealth",
                       "metadata": {"name": node_b}, "spec": {"nodeName": node_b}});
    let answer = api.patch(&node_b, &pp, &Patch::Apply(&other)).await;
    let text = message(answer);
    assert!(text.starts_with("403") && text.contains(&format!("on node {node_a} may only write")), "{text}");
    // Node B's NodeDeviceHealth made by someone else: the agent of A may not change its status.
    ndh_api(&scope.client)
        .patch(&node_b, &pp, &Patch::Apply(&other))
        .await
        .expect("admin creates B's object");
    let answer = api.patch_status(&node_b, &pp, &Patch::Apply(&status_body(&node_b, &status))).await;
    assert_eq!(code(answer), 403, "node A's agent must not write node B's NodeDeviceHealth status");
    // Node status: its own yes, another's no.
    let nodes: Api<Node> = Api::all(agent_a.clone());
    let condition = |node: &str| {
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node},
               "status": {"conditions": [{"type": "devheal.io/DevicesHealthy", "status": "True",
                                          "reason": "AllHealthy", "message": "e2e"}]}})
    };
    nodes
        .patch_status(&node_a, &pp, &Patch::Apply(&condition(&node_a)))
        .await
        .expect("the agent sets its own node's condition");
    let answer = nodes.patch_status(&node_b, &pp, &Patch::Apply(&condition(&node_b))).await;
    assert_eq!(code(answer), 403, "node A's agent must not set node B's condition");
    // A token of the agent's account bound to no pod: no node name, refused.
    let token = service_account_token(&scope.client, "devheal-agent", None).await;
    let unbound = token_client(&token_kubeconfig(scope.env, scope.dir.path(), "unbound", &token)).await;
    let answer =
        ndh_api(&unbound).patch_status(&node_a, &pp, &Patch::Apply(&status_body(&node_a, &status))).await;
    let text = message(answer);
    assert!(text.starts_with("403") && text.contains("carries no node name"), "{text}");
    for node in [&node_a, &node_b] {
        let _ = ndh_api(&scope.client).delete(node, &DeleteParams::default()).await;
    }
}

/// With the agent's credentials an eviction, a pod delete and a node patch are each refused 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real control plane: scripts/e2e.sh"]
async fn the_agent_cannot_evict_delete_pods_or_patch_nodes() {
    let scope = Scope::new("agentrbac").await;
    let node = scope.add_node("a", 1).await;
    let _kubelet = scope.kubelet(&node, 1).await;
    let agent = token_client(&scope.agent_credentials(&node).await).await;
    let pod = pod_object(&scope, "victim", &node, 0, json!({}));
    scope.pods().create(&PostParams::default(), &pod).await.expect("create a pod");
    let pods: Api<Pod> = Api::namespaced(agent.clone(), &scope.ns);
    assert_eq!(code(pods.evict("victim", &EvictParams::default()).await), 403, "eviction");
    assert_eq!(code(pods.delete("victim", &DeleteParams::default()).await), 403, "pod delete");
    let nodes: Api<Node> = Api::all(agent.clone());
    let cordon = json!({"spec": {"unschedulable": true}});
    assert_eq!(
        code(nodes.patch(&node, &PatchParams::default(), &Patch::Merge(&cordon)).await),
        403,
        "node patch"
    );
    // What it may do: read its pods.
    pods.get("victim").await.expect("the agent reads pods");
}
