//! b. A device failure under a gang run by the real Job controller: an Indexed Job with
//! `backoffLimit: 0` and the `podFailurePolicy` docs/policy.md §5 recommends; a fault on one
//! fake device → devheal marks the member and restarts the gang → the Job's real status.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;

use crate::harness::*;

const MEMBERS: usize = 4;

/// An Indexed Job of `members` pods, one fake GPU each, with the podFailurePolicy of
/// docs/policy.md §5 and `limits` (`backoffLimit` or `backoffLimitPerIndex`).
pub fn job_with_limits(scope: &Scope, name: &str, members: usize, limits: serde_json::Value) -> Job {
    let mut job: serde_json::Value = json!({
        "metadata": {"name": name, "namespace": scope.ns},
        "spec": {
            "completions": members, "parallelism": members, "completionMode": "Indexed",
            "podFailurePolicy": {"rules": [
                {"action": "Ignore", "onPodConditions": [{"type": "devheal.io/DeviceFailure"}]},
                {"action": "Ignore", "onPodConditions": [{"type": "devheal.io/GangRestart"}]},
                {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [126, 127]}},
            ]},
            "template": {
                "metadata": {"labels": {TEST_LABEL: scope.name}},
                "spec": {
                    "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": 5,
                    "containers": [{"name": "trainer", "image": "registry.k8s.io/pause:3.10",
                                    "resources": {"limits": {FAKE_GPU: "1"}}}],
                },
            },
        },
    });
    if let (Some(spec), Some(limits)) = (job["spec"].as_object_mut(), limits.as_object()) {
        spec.extend(limits.clone());
    }
    serde_json::from_value(job).expect("a Job")
}

pub async fn running_members(pods: &Api<Pod>, job: &str) -> Vec<Pod> {
    let lp = ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job}"));
    pods.list(&lp)
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_none()
                && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        })
        .collect()
}

/// Waits up to `timeout` until `n` members of Job `job` run, none of them in `not_in` (an
/// earlier set's uids).
pub async fn await_running(
    pods: &Api<Pod>,
    job: &str,
    n: usize,
    not_in: &BTreeSet<String>,
    what: &str,
    timeout: Duration,
) -> Vec<Pod> {
    eventually(what, timeout, || async move {
        let m = running_members(pods, job).await;
        let fresh = m.iter().all(|p| p.metadata.uid.as_ref().is_some_and(|u| !not_in.contains(u)));
        (m.len() == n && fresh).then_some(m)
    })
    .await
}

/// One GPU of an Indexed Job's member fails; what the Job's real status says afterwards, and
/// how long the Job controller took to re-create the gang.
async fn gang_failure(scope: &Scope, limits: serde_json::Value) -> (Duration, Job) {
    let (kubelets, agents) = scope.nodes_with_agents(&["n1", "n2", "n3"], 2).await;
    let controller = scope.controller("c1", &[]).await;
    let jobs: Api<Job> = Api::namespaced(scope.client.clone(), &scope.ns);
    jobs.create(&PostParams::default(), &job_with_limits(scope, "train", MEMBERS, limits))
        .await
        .expect("create the Job");
    let pods = scope.pods();
    let first = await_running(
        &pods,
        "train",
        MEMBERS,
        &BTreeSet::new(),
        "the Job's 4 members run",
        Duration::from_secs(60),
    )
    .await;
    let first_uids: BTreeSet<String> = first.iter().filter_map(|p| p.metadata.uid.clone()).collect();
    // Member 0, its node and its device.
    let victim = first
        .iter()
        .find(|p| {
            p.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("batch.kubernetes.io/job-completion-index"))
                .map(String::as_str)
                == Some("0")
        })
        .expect("member 0")
        .clone();
    let victim_name = victim.metadata.name.clone().unwrap();
    let victim_node = victim.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap();
    let k = kubelets.iter().position(|k| k.node == victim_node).unwrap();
    let device = kubelets[k].devices_of(&scope.ns, &victim_name)[0].clone();
    // Every member is published with its device before the fault.
    scope.await_bound_published(&kubelets).await;

    let (stop_count, writes) = count_pod_writes(&pods).await;
    let failed_at = Instant::now();
    kubelets[k].state.lock().unwrap().unhealthy.insert(device.clone());
    agents[k].inject("fail", &device);
    // The gang restarts: four new members, none of the old uids, none on the failed device.
    let second = await_running(
        &pods,
        "train",
        MEMBERS,
        &first_uids,
        "the gang is re-created",
        Duration::from_secs(90),
    )
    .await;
    let took = failed_at.elapsed();
    let _ = stop_count.send(());
    eprintln!("re-created: {} writes to the namespace's pods", writes.await.unwrap_or(0));
    for p in &second {
        let name = p.metadata.name.clone().unwrap();
        let node = p.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap();
        let on = kubelets.iter().find(|k| k.node == node).unwrap().devices_of(&scope.ns, &name);
        assert!(
            !(node == victim_node && on.contains(&device)),
            "{name} was placed on the failed device {device}"
        );
    }
    assert_eq!(
        controller.actions("restart_gang", "done"),
        1.0,
        "one gang restart:\n{}",
        controller.metrics()
    );
    (took, jobs.get("train").await.expect("the Job"))
}

fn true_conditions(job: &Job) -> Vec<String> {
    let status = job.status.clone().unwrap_or_default();
    status
        .conditions
        .unwrap_or_default()
        .iter()
        .filter(|c| c.status == "True")
        .map(|c| c.type_.clone())
        .collect()
}

/// `backoffLimit: 0`. devheal marks the member on the failed GPU `devheal.io/DeviceFailure`,
/// quarantines the GPU and restarts the gang once: every member is marked
/// `devheal.io/GangRestart` and deleted. The Job controller applies the podFailurePolicy (both
/// conditions → `Ignore`): no failure is counted, the Job does not fail, and all members are
/// re-created, none on the failed GPU — but only after the Job controller's pod-failure backoff,
/// which counts every pod that ended Failed, ignored or not: 10 s × 2^(n−1) for n members
/// (80 s for this gang of 4, capped at 10 minutes from 7 members on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real control plane: scripts/e2e.sh"]
async fn a_device_failure_restarts_an_indexed_job_without_counting_a_failure() {
    let scope = Scope::new("job").await;
    let (took, job) = gang_failure(&scope, json!({"backoffLimit": 0})).await;
    let conditions = true_conditions(&job);
    let status = job.status.clone().unwrap_or_default();
    assert!(
        !conditions.iter().any(|c| c == "Failed" || c == "FailureTarget"),
        "the Job failed: {conditions:?}"
    );
    assert_eq!(status.failed.unwrap_or(0), 0, "a device failure and a gang restart must not count: {job:?}");
    assert!(
        took >= Duration::from_secs(70),
        "re-created after {took:?}: the Job controller's backoff (80 s) is gone?"
    );
    eprintln!("backoffLimit 0: device fault -> gang re-created by the Job controller: {took:?}");
}

/// `backoffLimitPerIndex: 0`: the same, and the Job controller's backoff is per index (each
/// index failed once: 10 s), so the gang is back in about 10 s; no index is counted failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real control plane: scripts/e2e.sh"]
async fn with_a_backoff_limit_per_index_the_gang_is_back_in_seconds() {
    let scope = Scope::new("jobperindex").await;
    let (took, job) = gang_failure(&scope, json!({"backoffLimitPerIndex": 0, "maxFailedIndexes": 0})).await;
    let conditions = true_conditions(&job);
    let status = job.status.clone().unwrap_or_default();
    assert!(
        !conditions.iter().any(|c| c == "Failed" || c == "FailureTarget"),
        "the Job failed: {conditions:?}"
    );
    assert_eq!(status.failed_indexes.as_deref().unwrap_or(""), "", "no index counted failed: {job:?}");
    assert!(took < Duration::from_secs(40), "re-created after {took:?}");
    eprintln!("backoffLimitPerIndex 0: device fault -> gang re-created by the Job controller: {took:?}");
}
