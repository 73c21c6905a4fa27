//! f. Staged device-plugin upgrades (docs/upgrades.md): an `OnDelete` DaemonSet (the "device
//! plugin") on nodes with fake-device agents; the real kube-controller-manager's DaemonSet
//! controller makes its pods and ControllerRevisions, the test plays the kubelet (the fake
//! kubelet runs each pod), and `devheal controller`'s rollout gate works through an
//! `UpgradePlan`:
//! - a version whose second stage turns devices Unhealthy pauses before the third stage, with
//!   the reason in the status, an Event and a metric;
//! - a good version completes, also across a controller restart in the middle;
//! - a bad version with `rollbackOnFailure` restores the previous revision on the upgraded nodes
//!   only.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use devheal_k8s::upgrade_plan::{UpgradePhase, UpgradePlan, UpgradePlanStatus};
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::harness::*;

const PLUGIN: &str = "fake-plugin";

fn daemon_set(scope: &Scope) -> DaemonSet {
    serde_json::from_value(json!({
        "metadata": {"name": PLUGIN, "namespace": scope.ns},
        "spec": {
            "selector": {"matchLabels": {"app": PLUGIN}},
            "updateStrategy": {"type": "OnDelete"},
            "template": {
                // The NVIDIA device plugin chart's name label, which the agents' default
                // selectors know, and the version label they report (v1, then v2).
                "metadata": {"labels": {"app": PLUGIN, "app.kubernetes.io/name": "nvidia-device-plugin",
                                        "app.kubernetes.io/version": "v1"}},
                "spec": {
                    "nodeSelector": {TEST_LABEL: scope.name},
                    "terminationGracePeriodSeconds": 1,
                    // A node DaemonSet of the device stack tolerates NoSchedule taints, devheal's
                    // quarantine among them: a rollback must reach a node whose device failed.
                    "tolerations": [{"operator": "Exists", "effect": "NoSchedule"}],
                    "containers": [{"name": "plugin", "image": "registry.k8s.io/pause:3.10",
                                    "env": [{"name": "PLUGIN_VERSION", "value": "v1"}]}],
                },
            },
        },
    }))
    .expect("a DaemonSet")
}

/// The DaemonSet's live pods: node → (pod uid, revision hash, ready).
async fn plugin_pods(scope: &Scope) -> BTreeMap<String, (String, String, bool)> {
    let lp = ListParams::default().labels(&format!("app={PLUGIN}"));
    let Ok(list) = scope.pods().list(&lp).await else { return BTreeMap::new() };
    list.items
        .into_iter()
        .filter(|p: &Pod| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| {
            let node = p.spec.as_ref()?.node_name.clone()?;
            let hash = p.metadata.labels.as_ref()?.get("controller-revision-hash")?.clone();
            let ready = condition(&p, "Ready").as_deref() == Some("True");
            Some((node, (p.metadata.uid.clone()?, hash, ready)))
        })
        .collect()
}

/// Creates the DaemonSet on `nodes`, waits for its pods to run, then changes its template to
/// `v2` (nothing is replaced: OnDelete). Returns (old hash, new hash, the old pods' uids).
async fn plugin_with_new_template(
    scope: &Scope,
    nodes: &[String],
) -> (String, String, BTreeMap<String, String>) {
    let sets: Api<DaemonSet> = Api::namespaced(scope.client.clone(), &scope.ns);
    sets.create(&PostParams::default(), &daemon_set(scope)).await.expect("create the DaemonSet");
    let old = eventually("the DaemonSet's pod runs Ready on every node", Duration::from_secs(90), || async {
        let pods = plugin_pods(scope).await;
        (pods.len() == nodes.len() && pods.values().all(|p| p.2)).then_some(pods)
    })
    .await;
    let old_hash = old.values().next().map(|p| p.1.clone()).expect("a hash");
    let patch = json!({"spec": {"template": {
        "metadata": {"labels": {"app.kubernetes.io/version": "v2"}},
        "spec": {"containers": [{"name": "plugin", "env": [{"name": "PLUGIN_VERSION", "value": "v2"}]}]}}}});
    sets.patch(PLUGIN, &PatchParams::default(), &Patch::Strategic(&patch)).await.expect("the new template");
    let revisions: Api<ControllerRevision> = Api::namespaced(scope.client.clone(), &scope.ns);
    let new_hash = eventually("a second ControllerRevision", Duration::from_secs(30), || async {
        let list = revisions.list(&ListParams::default().labels(&format!("app={PLUGIN}"))).await.ok()?;
        let newest = list.items.iter().max_by_key(|r| r.revision)?;
        let hash = newest.metadata.labels.as_ref()?.get("controller-revision-hash")?.clone();
        (list.items.len() == 2 && hash != old_hash).then_some(hash)
    })
    .await;
    let uids = old.into_iter().map(|(node, p)| (node, p.0)).collect();
    (old_hash, new_hash, uids)
}

/// The device plugin version each node's agent reports (its `device_plugin_pod` source).
async fn reported_versions(scope: &Scope, nodes: &[String]) -> BTreeMap<String, Option<String>> {
    let mut out = BTreeMap::new();
    for node in nodes {
        let object = node_device_health(&scope.client, node).await;
        let version = object.as_ref().and_then(|o| {
            o["status"]["sources"].as_array()?.iter().find(|s| s["name"] == "device_plugin_pod")?["version"]
                .as_str()
                .map(str::to_string)
        });
        out.insert(node.clone(), version);
    }
    out
}

fn plans(scope: &Scope) -> Api<UpgradePlan> {
    Api::namespaced(scope.client.clone(), &scope.ns)
}

async fn create_plan(scope: &Scope, spec: serde_json::Value) {
    let plan: UpgradePlan = serde_json::from_value(json!({
        "apiVersion": "devheal.io/v1alpha1", "kind": "UpgradePlan",
        "metadata": {"name": "plugin-v2", "namespace": scope.ns}, "spec": spec,
    }))
    .expect("a plan");
    plans(scope).create(&PostParams::default(), &plan).await.expect("create the plan");
}

async fn status(scope: &Scope) -> UpgradePlanStatus {
    plans(scope).get("plugin-v2").await.ok().and_then(|p| p.status).unwrap_or_default()
}

/// Until the plan reaches `phase`, makes the devices of the nodes the plan upgraded in
/// `bad_stage` Unhealthy (the fake agent's `fail`), as a version that breaks them would.
async fn run_until(
    scope: &Scope,
    agents: &[Agent],
    phase: UpgradePhase,
    bad_stage: Option<u32>,
    new_hash: &str,
) -> UpgradePlanStatus {
    let mut failed = BTreeSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    loop {
        let st = status(scope).await;
        if st.phase == phase {
            return st;
        }
        assert!(std::time::Instant::now() < deadline, "the plan did not reach {phase:?}: {st:#?}");
        if let Some(bad) = bad_stage {
            let pods = plugin_pods(scope).await;
            for t in st.nodes.iter().filter(|t| t.stage == bad) {
                if pods.get(&t.name).is_some_and(|p| p.1 == new_hash && p.2) && failed.insert(t.name.clone())
                {
                    let agent = agents.iter().find(|a| a.node == t.name).expect("the node's agent");
                    agent.inject("fail", "fake-gpu-0");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn nodes(scope: &Scope, n: usize) -> (Vec<FakeKubelet>, Vec<Agent>, Vec<String>) {
    let suffixes: Vec<String> = (1..=n).map(|i| format!("n{i}")).collect();
    let refs: Vec<&str> = suffixes.iter().map(String::as_str).collect();
    let (kubelets, agents) = scope.nodes_with_agents(&refs, 2).await;
    let names = agents.iter().map(|a| a.node.clone()).collect();
    (kubelets, agents, names)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real control plane: scripts/e2e.sh"]
async fn a_version_that_breaks_devices_in_stage_two_pauses_before_stage_three() {
    let scope = Scope::new("upgrade-pause").await;
    let (_kubelets, agents, names) = nodes(&scope, 5).await;
    let (old_hash, new_hash, _) = plugin_with_new_template(&scope, &names).await;
    let controller = scope.controller("c1", &["--upgrade-every", "1s"]).await;
    create_plan(
        &scope,
        json!({"daemonSet": PLUGIN, "nodeSelector": {TEST_LABEL: scope.name},
               "stages": [{"nodes": 1}, {"nodes": 2}, {"nodes": 2}], "soakSeconds": 6, "maxUnavailable": 2,
               "health": {"resource": FAKE_GPU}}),
    )
    .await;
    let st = run_until(&scope, &agents, UpgradePhase::Paused, Some(2), &new_hash).await;
    assert_eq!(st.reason.as_deref(), Some("DevicesUnhealthy"), "{st:#?}");
    assert_eq!(st.stage, 2, "paused in stage two");
    let stage_two: Vec<&str> = st.nodes.iter().filter(|t| t.stage == 2).map(|t| t.name.as_str()).collect();
    let message = st.message.clone().unwrap_or_default();
    assert!(stage_two.iter().any(|n| message.contains(n)), "the message names a stage-two node: {message}");
    assert_eq!(st.from_revision.as_ref().map(|r| r.hash.as_str()), Some(old_hash.as_str()));
    // It stays paused: the third stage's nodes keep the old revision.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let pods = plugin_pods(&scope).await;
    let upgraded = pods.values().filter(|p| p.1 == new_hash).count();
    assert_eq!(upgraded, 3, "the canary and stage two only: {pods:?}");
    assert_eq!(status(&scope).await.phase, UpgradePhase::Paused);
    // Each node's agent reports the version its plugin pod runs: the one the engine's version
    // canary counts it under and `kubectl devheal status` lists.
    eventually("each agent reports its plugin pod's version", Duration::from_secs(30), || async {
        let reported = reported_versions(&scope, &names).await;
        names
            .iter()
            .all(|n| {
                let want = if pods[n].1 == new_hash { "v2" } else { "v1" };
                reported[n].as_deref() == Some(want)
            })
            .then_some(())
    })
    .await;
    let paused = events(&scope.client, &scope.ns, "UpgradePaused").await;
    assert_eq!(paused.len(), 1, "one UpgradePaused Event: {paused:?}");
    assert!(paused[0]["note"].as_str().unwrap_or("").starts_with("DevicesUnhealthy: "), "{paused:?}");
    let key = format!("{}/plugin-v2", scope.ns);
    assert_eq!(
        metric_sum(
            &controller.metrics(),
            "devheal_upgrade_pauses_total",
            &[("plan", &key), ("reason", "DevicesUnhealthy")]
        ),
        1.0
    );
    assert_eq!(metric_sum(&controller.metrics(), "devheal_upgrade_stage", &[("plan", &key)]), 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real control plane: scripts/e2e.sh"]
async fn a_good_version_completes_across_a_controller_restart() {
    let scope = Scope::new("upgrade-good").await;
    let (_kubelets, agents, names) = nodes(&scope, 4).await;
    let (_, new_hash, old_uids) = plugin_with_new_template(&scope, &names).await;
    // The API server refuses a stage with both a count and a share (the CRD's rule).
    let bad = UpgradePlan::new(
        "bad",
        serde_json::from_value(json!({"daemonSet": PLUGIN,
        "stages": [{"nodes": 1, "percent": 10}]}))
        .expect("spec"),
    );
    let refused = plans(&scope).create(&PostParams::default(), &bad).await.expect_err("refused");
    assert!(refused.to_string().contains("exactly one of nodes or percent"), "{refused}");

    let first = scope.controller("c1", &["--upgrade-every", "1s"]).await;
    create_plan(
        &scope,
        json!({"daemonSet": PLUGIN, "stages": [{"nodes": 1}, {"percent": 50}], "soakSeconds": 4,
               "maxUnavailable": 1, "health": {"resource": FAKE_GPU}}),
    )
    .await;
    // The canary is upgraded; the controller stops while it soaks, and another takes over.
    let st = run_until(&scope, &agents, UpgradePhase::Progressing, None, &new_hash).await;
    eventually("the canary runs the new revision", Duration::from_secs(60), || async {
        let st = status(&scope).await;
        (st.upgraded_nodes == 1 && st.reason.as_deref() == Some("Soaking")).then_some(())
    })
    .await;
    assert_eq!(st.stage, 1);
    first.stop();
    let _second = scope.controller("c2", &["--upgrade-every", "1s"]).await;
    let st = run_until(&scope, &agents, UpgradePhase::Completed, None, &new_hash).await;
    let pods = plugin_pods(&scope).await;
    assert!(pods.values().all(|p| p.1 == new_hash && p.2), "every node on the new revision: {pods:?}");
    for (node, uid) in &old_uids {
        assert_ne!(&pods[node].0, uid, "{node}'s pod was replaced");
    }
    eventually("every agent reports the new plugin version", Duration::from_secs(30), || async {
        reported_versions(&scope, &names).await.values().all(|v| v.as_deref() == Some("v2")).then_some(())
    })
    .await;
    let taken: Vec<&str> = st.nodes.iter().map(|t| t.name.as_str()).collect();
    let unique: BTreeSet<&str> = taken.iter().copied().collect();
    assert_eq!((taken.len(), unique.len()), (4, 4), "each node taken up once across the restart: {taken:?}");
    assert_eq!(st.nodes.iter().map(|t| t.stage).collect::<Vec<_>>(), [1, 2, 2, 3], "canary, 50 %, the rest");
    assert_eq!(events(&scope.client, &scope.ns, "UpgradeCompleted").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real control plane: scripts/e2e.sh"]
async fn a_rollback_restores_the_previous_revision_on_the_upgraded_nodes_only() {
    let scope = Scope::new("upgrade-rollback").await;
    let (_kubelets, agents, names) = nodes(&scope, 3).await;
    let (old_hash, new_hash, old_uids) = plugin_with_new_template(&scope, &names).await;
    let _controller = scope.controller("c1", &["--upgrade-every", "1s"]).await;
    create_plan(
        &scope,
        json!({"daemonSet": PLUGIN, "stages": [{"nodes": 1}, {"nodes": 1}, {"nodes": 1}], "soakSeconds": 5,
               "rollbackOnFailure": true, "health": {"resource": FAKE_GPU}}),
    )
    .await;
    let st = run_until(&scope, &agents, UpgradePhase::RolledBack, Some(2), &new_hash).await;
    assert!(st.message.as_deref().unwrap_or("").contains("Unhealthy"), "{st:#?}");
    let sets: Api<DaemonSet> = Api::namespaced(scope.client.clone(), &scope.ns);
    let ds = sets.get(PLUGIN).await.expect("the DaemonSet");
    let env =
        serde_json::to_value(&ds.spec.expect("spec").template.spec.expect("pod spec").containers[0].env)
            .unwrap_or_default();
    assert_eq!(env[0]["value"], "v1", "the template is the previous revision's again");
    let pods = plugin_pods(&scope).await;
    assert!(pods.values().all(|p| p.1 == old_hash && p.2), "every node on the old revision: {pods:?}");
    let upgraded: BTreeSet<&str> = st.nodes.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(upgraded.len(), 2, "the canary and stage two were upgraded: {st:#?}");
    for (node, uid) in &old_uids {
        if upgraded.contains(node.as_str()) {
            assert_ne!(&pods[node].0, uid, "{node} was upgraded and rolled back: a new pod");
        } else {
            assert_eq!(&pods[node].0, uid, "{node} was never upgraded: its pod was never touched");
        }
    }
    assert_eq!(events(&scope.client, &scope.ns, "UpgradeRollingBack").await.len(), 1);
    assert_eq!(events(&scope.client, &scope.ns, "UpgradeRolledBack").await.len(), 1);
}
