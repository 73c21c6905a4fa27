//! c. A lone inference pod under a PodDisruptionBudget: its GPU fails; the eviction is refused
//! (a real 429 from the Eviction API) while the budget allows no disruption and the controller
//! backs off and tries again; once the budget allows one, the eviction goes through.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real control plane: scripts/e2e.sh"]
async fn an_eviction_waits_for_the_disruption_budget() {
    let scope = Scope::new("pdb").await;
    let node = scope.add_node("n1", 2).await;
    let kubelet = scope.kubelet(&node, 2).await;
    let agent = scope.agent(&node, &kubelet, None).await;
    let controller = scope.controller("c1", &[]).await;
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(scope.client.clone(), &scope.ns);
    let pdb: PodDisruptionBudget = serde_json::from_value(json!({
        "metadata": {"name": "infer", "namespace": scope.ns},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "infer"}}},
    }))
    .unwrap();
    pdbs.create(&PostParams::default(), &pdb).await.expect("create the PDB");
    let device =
        scope.start_pod(&kubelet, &pod_object(&scope, "infer-0", &node, 1, json!({"app": "infer"}))).await;
    // The disruption controller has counted the pod: no disruption allowed.
    eventually("the PDB's status counts the pod (0 disruptions allowed)", Duration::from_secs(30), || {
        let pdbs = pdbs.clone();
        async move {
            let s = pdbs.get("infer").await.ok()?.status?;
            (s.current_healthy == Some(1) && s.disruptions_allowed == Some(0)).then_some(())
        }
    })
    .await;
    scope.await_published(&node, &device, "infer-0").await;

    agent.inject("fail", &device);
    let pods = scope.pods();
    // Marked, and the eviction answered 429 at least twice (a first try and a retry).
    eventually("the pod is marked and the eviction refused", Duration::from_secs(30), || {
        let pods = pods.clone();
        let retried = controller.actions("evict_pod", "retry");
        async move {
            let p: Pod = pods.get_opt("infer-0").await.ok()??;
            (condition(&p, "devheal.io/DeviceFailure").as_deref() == Some("True") && retried >= 2.0)
                .then_some(())
        }
    })
    .await;
    let p = pods.get("infer-0").await.expect("the pod is still there");
    assert!(
        p.metadata.deletion_timestamp.is_none(),
        "the budget allows no disruption, yet the pod is being deleted"
    );
    assert_eq!(condition(&p, "DisruptionTarget"), None, "no eviction happened");
    assert_eq!(controller.actions("evict_pod", "done"), 0.0);

    // The budget now allows one disruption: the next retry evicts.
    pdbs.patch("infer", &PatchParams::default(), &Patch::Merge(&json!({"spec": {"minAvailable": 0}})))
        .await
        .expect("relax the PDB");
    eventually("the pod is evicted once the budget allows it", Duration::from_secs(60), || {
        let pods = pods.clone();
        async move {
            match pods.get_opt("infer-0").await.ok()? {
                None => Some(()),
                Some(p) => (condition(&p, "DisruptionTarget").as_deref() == Some("True")).then_some(()),
            }
        }
    })
    .await;
    eventually("the controller counts the eviction done", Duration::from_secs(10), || {
        let done = controller.actions("evict_pod", "done");
        async move { (done == 1.0).then_some(()) }
    })
    .await;
}
