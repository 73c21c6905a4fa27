//! d. Two controller replicas on one Lease, and a controller that restarts mid-incident.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;

use crate::gang_job::{await_running, job_with_limits, running_members};
use crate::harness::*;

/// The Lease's duration and renewal period in `devheal controller`.
const LEASE_DURATION: Duration = Duration::from_secs(15);
const RENEW_EVERY: Duration = Duration::from_secs(2);

async fn job_pods(pods: &Api<Pod>, job: &str) -> Vec<Pod> {
    let lp = ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job}"));
    pods.list(&lp).await.map(|l| l.items).unwrap_or_default()
}

/// The leader is stopped (SIGSTOP) as soon as its gang restart shows in the API server; the
/// standby takes the Lease over within its duration; no pod is acted on twice; the stopped
/// leader, once continued, knows its leadership lapsed and acts on nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real control plane: scripts/e2e.sh"]
async fn a_stopped_leader_is_replaced_and_does_not_act_after_it_continues() {
    let scope = Scope::new("leader").await;
    let (kubelets, agents) = scope.nodes_with_agents(&["n1", "n2", "n3"], 4).await;
    let c1 = scope.controller("c1", &[]).await;
    eventually("c1 leads", Duration::from_secs(30), || {
        let l = c1.is_leader();
        async move { l.then_some(()) }
    })
    .await;
    let c2 = scope.controller("c2", &[]).await;
    assert!(!c2.is_leader(), "two leaders");

    let jobs: Api<Job> = Api::namespaced(scope.client.clone(), &scope.ns);
    let per_index = json!({"backoffLimitPerIndex": 0, "maxFailedIndexes": 0});
    jobs.create(&PostParams::default(), &job_with_limits(&scope, "gang", 8, per_index))
        .await
        .expect("create the Job");
    let pods = scope.pods();
    let first = await_running(
        &pods,
        "gang",
        8,
        &BTreeSet::new(),
        "the gang's 8 members run",
        Duration::from_secs(60),
    )
    .await;
    let first_uids: BTreeSet<String> = first.iter().filter_map(|p| p.metadata.uid.clone()).collect();
    let victim = first[0].clone();
    let victim_name = victim.metadata.name.clone().unwrap();
    let victim_node = victim.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap();
    let k = kubelets.iter().position(|k| k.node == victim_node).unwrap();
    let device = kubelets[k].devices_of(&scope.ns, &victim_name)[0].clone();
    scope.await_published(&victim_node, &device, &victim_name).await;

    kubelets[k].state.lock().unwrap().unhealthy.insert(device.clone());
    agents[k].inject("fail", &device);
    // Stop the leader as soon as the restart shows: a member being deleted or gone.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = job_pods(&pods, "gang").await;
        let touched = first_uids.iter().any(|uid| {
            now.iter()
                .find(|p| p.metadata.uid.as_ref() == Some(uid))
                .is_none_or(|p| p.metadata.deletion_timestamp.is_some())
        });
        if touched {
            break;
        }
        assert!(Instant::now() < deadline, "the leader did not start the gang restart within 30 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    c1.signal("STOP");
    let stopped = Instant::now();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let done_at_stop = scope.log_of("controller-c1").matches(" done: ").count();
    eventually("c2 takes the Lease over", LEASE_DURATION + RENEW_EVERY * 4, || {
        let l = c2.is_leader();
        async move { l.then_some(()) }
    })
    .await;
    let takeover = stopped.elapsed();
    // A standby times the Lease from when it saw the last renewal (up to one renewal period
    // after the leader's last one) and tries every period: at most 15 s + 2 × 2 s, and the
    // test's own polling.
    assert!(takeover <= LEASE_DURATION + RENEW_EVERY * 2 + Duration::from_secs(1), "took {takeover:?}");

    // The gang runs again (the Job controller re-creates what was deleted); then the old
    // leader continues.
    let second =
        await_running(&pods, "gang", 8, &BTreeSet::new(), "the gang runs again", Duration::from_secs(60))
            .await;
    let second_uids: BTreeSet<String> = second.iter().filter_map(|p| p.metadata.uid.clone()).collect();
    c1.signal("CONT");
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(!c1.is_leader(), "the continued replica still believes it leads");
    let now: BTreeSet<String> =
        running_members(&pods, "gang").await.iter().filter_map(|p| p.metadata.uid.clone()).collect();
    assert_eq!(now, second_uids, "a member of the running gang was acted on after the takeover");
    let restarts = c1.actions("restart_gang", "done") + c2.actions("restart_gang", "done");
    assert!(restarts <= 1.0, "the gang was restarted {restarts} times");
    // Its log: no action carried out after it continued (the log cannot grow while it is
    // stopped, so what it said up to the stop is the baseline).
    let done_after = scope.log_of("controller-c1").matches(" done: ").count();
    assert_eq!(done_after, done_at_stop, "the old leader carried out an action after it continued");
    eprintln!("leader stopped mid-restart: standby took over in {takeover:?}");
}

/// The controller is restarted mid-incident: the new process sends no second eviction, finds
/// the quarantine taint the old one wrote and lifts it when the device recovers; a device that
/// recovered while no controller ran is released too (nothing is left tainted forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real control plane: scripts/e2e.sh"]
async fn a_restarted_controller_acts_once_and_finds_what_it_wrote() {
    let scope = Scope::new("restart").await;
    let node = scope.add_node("n1", 4).await;
    let kubelet = scope.kubelet(&node, 4).await;
    let agent = scope.agent_with(&node, &kubelet, None, &["--probation-secs", "2"]).await;
    let c1 = scope.controller("c1", &["--probation", "2s"]).await;
    let device = scope.start_pod(&kubelet, &pod_object(&scope, "solo", &node, 1, json!({}))).await;
    scope.await_published(&node, &device, "solo").await;
    let nodes: Api<Node> = Api::all(scope.client.clone());
    let quarantine_taints = |nodes: Api<Node>, node: String| async move {
        let n = nodes.get(&node).await.ok()?;
        let taints = n.spec?.taints.unwrap_or_default();
        Some(
            taints
                .into_iter()
                .filter(|t| t.key.starts_with("devheal.io/device-quarantine"))
                .map(|t| t.value.unwrap_or_default())
                .collect::<Vec<_>>(),
        )
    };

    kubelet.state.lock().unwrap().unhealthy.insert(device.clone());
    agent.inject("fail", &device);
    eventually("c1 evicts the pod and taints the device", Duration::from_secs(30), || {
        let (nodes, node, pods) = (nodes.clone(), node.clone(), scope.pods());
        let device = device.clone();
        async move {
            let taints = quarantine_taints(nodes, node).await?;
            let evicted = match pods.get_opt("solo").await.ok()? {
                None => true,
                Some(p) => condition(&p, "DisruptionTarget").as_deref() == Some("True"),
            };
            (evicted && taints.contains(&device)).then_some(())
        }
    })
    .await;
    c1.await_actions("evict_pod", "done", 1.0).await;
    assert_eq!(c1.actions("evict_pod", "done"), 1.0);
    c1.stop();

    // A new process: no second eviction; the taint is still there, once.
    let c2 = scope.controller("c2", &["--probation", "2s"]).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(c2.actions("evict_pod", "done"), 0.0, "the restarted controller evicted again");
    let taints = quarantine_taints(nodes.clone(), node.clone()).await.unwrap();
    assert_eq!(taints, vec![device.clone()], "one quarantine taint, for the failed device");
    // The device recovers: after probation the new process lifts the old one's taint.
    kubelet.state.lock().unwrap().unhealthy.remove(&device);
    agent.inject("recover", &device);
    eventually("c2 releases the quarantine c1 wrote", Duration::from_secs(60), || {
        let (nodes, node) = (nodes.clone(), node.clone());
        async move { quarantine_taints(nodes, node).await?.is_empty().then_some(()) }
    })
    .await;

    // A second device fails and is quarantined; it recovers while no controller runs.
    let other = if device == "fake-gpu-3" { "fake-gpu-2".to_string() } else { "fake-gpu-3".to_string() };
    agent.inject("fail", &other);
    eventually("c2 quarantines the second device", Duration::from_secs(30), || {
        let (nodes, node, other) = (nodes.clone(), node.clone(), other.clone());
        async move { quarantine_taints(nodes, node).await?.contains(&other).then_some(()) }
    })
    .await;
    c2.stop();
    agent.inject("recover", &other);
    eventually("the agent publishes the second device Healthy again", Duration::from_secs(30), || {
        let client = scope.client.clone();
        let (node, other) = (node.clone(), other.clone());
        async move { (published_health(&client, &node, &other).await? == "Healthy").then_some(()) }
    })
    .await;
    let _c3 = scope.controller("c3", &["--probation", "2s"]).await;
    eventually(
        "the new controller lifts the taint of the device that recovered meanwhile",
        Duration::from_secs(60),
        || {
            let (nodes, node) = (nodes.clone(), node.clone());
            async move { quarantine_taints(nodes, node).await?.is_empty().then_some(()) }
        },
    )
    .await;
}

/// The restart budgets outlive the controller process: the leader writes the engine's durable
/// state (its gang restarts of the last hour) into the ConfigMap beside the Lease with its own
/// credentials, and a new process reads it back at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real control plane: scripts/e2e.sh"]
async fn a_restarted_controller_reads_back_its_restart_budget() {
    let scope = Scope::new("budget").await;
    let node = scope.add_node("n1", 2).await;
    let kubelet = scope.kubelet(&node, 2).await;
    let agent = scope.agent(&node, &kubelet, None).await;
    let c1 = scope.controller("c1", &[]).await;
    let gang = json!({"jobset.sigs.k8s.io/jobset-name": "train"});
    let mut devices = Vec::new();
    for name in ["train-0", "train-1"] {
        let device = scope.start_pod(&kubelet, &pod_object(&scope, name, &node, 1, gang.clone())).await;
        scope.await_published(&node, &device, name).await;
        devices.push(device);
    }
    kubelet.state.lock().unwrap().unhealthy.insert(devices[0].clone());
    agent.inject("fail", &devices[0]);
    c1.await_actions("restart_gang", "done", 1.0).await;

    let maps: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(scope.client.clone(), "devheal-system");
    let gang_id = scope.ns.clone();
    let saved =
        eventually("the leader saves its restart budget beside the Lease", Duration::from_secs(30), || {
            let (maps, ns) = (maps.clone(), gang_id.clone());
            async move {
                let map = maps.get_opt("devheal-controller-state").await.ok()??;
                let text = map.data?.get("state.json")?.clone();
                let state: serde_json::Value = serde_json::from_str(&text).ok()?;
                state["restarts"]
                    .as_array()?
                    .iter()
                    .any(|r| r["gang"]["namespace"] == ns.as_str() && r["gang"]["name"] == "train")
                    .then_some(state)
            }
        })
        .await;
    assert!(saved["restarts"].as_array().is_some_and(|r| !r.is_empty()), "{saved}");
    c1.stop();

    let c2 = scope.controller("c2", &[]).await;
    eventually("the new process restores it at start", Duration::from_secs(30), || {
        let text = c2.metrics();
        let restored = metric_sum(&text, "devheal_controller_state_store_total", &[("outcome", "restored")]);
        let last_hour = metric_sum(&text, "devheal_controller_gang_restarts_last_hour", &[]);
        async move { (restored == 1.0 && last_hour >= 1.0).then_some(()) }
    })
    .await;
}
