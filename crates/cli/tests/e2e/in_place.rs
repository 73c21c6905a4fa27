//! Gang restart in place on a real API server and Job controller (docs/policy.md, "Restarting a
//! gang in place"): an Indexed Job whose pods carry a container restart rule for exit 76
//! (KEP-5307/KEP-5532, served by this API server), one member's GPU fails. devheal re-creates
//! only that member; the three healthy members learn from the agent's answer to their progress
//! poll that they are to restart in place, exit 76, and (the test playing the kubelet, as it does
//! for every pod here) are restarted in the same pod on the same node and devices.
//!
//! What it costs is measured and printed beside the re-creation path
//! (`gang_job::a_device_failure_restarts_an_indexed_job_without_counting_a_failure`, the same Job
//! without the rule): the time from the fault until every member runs again, and the writes to
//! the namespace's pods (creations, updates, deletions by every component, as a watch sees them).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::gang_job::{job_with_limits, running_members};
use crate::harness::*;
use crate::setup::http_body;

const MEMBERS: usize = 4;

/// The Job of `gang_job`, its trainer container restarted in place (`action`) on exit 76.
fn in_place_job(scope: &Scope, name: &str, action: &str) -> Job {
    let mut job = serde_json::to_value(job_with_limits(scope, name, MEMBERS, json!({"backoffLimit": 0})))
        .expect("a Job as JSON");
    job["spec"]["template"]["spec"]["containers"][0]["restartPolicy"] = json!("Never");
    job["spec"]["template"]["spec"]["containers"][0]["restartPolicyRules"] =
        json!([{"action": action, "exitCodes": {"operator": "In", "values": [76]}}]);
    serde_json::from_value(job).expect("a Job")
}

fn index_of(p: &Pod) -> Option<String> {
    p.metadata.labels.as_ref()?.get("batch.kubernetes.io/job-completion-index").cloned()
}

fn restarts(p: &Pod) -> i32 {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map_or(0, |cs| cs.iter().map(|c| c.restart_count).sum())
}

/// What a kubelet reports when a container of `pod` exits 76 and its restart rule restarts it
/// in place: first the container terminated (with `RestartAllContainers`, the pod condition
/// `AllContainersRestarting`), then running again with its restart count one up and the exit as
/// its last state.
async fn kubelet_restarts_in_place(pods: &Api<Pod>, pod: &Pod, action: &str) {
    let name = pod.metadata.name.clone().unwrap();
    let statuses = pod.status.as_ref().and_then(|s| s.container_statuses.clone()).unwrap_or_default();
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let all = action == "RestartAllContainers";
    let exited: Vec<Value> = statuses
        .iter()
        .map(|c| {
            json!({"name": c.name, "image": c.image, "imageID": "", "ready": false,
                   "restartCount": c.restart_count,
                   "state": {"terminated": {"exitCode": 76, "reason": "Error", "startedAt": now, "finishedAt": now}}})
        })
        .collect();
    let mut first = json!({"status": {"containerStatuses": exited}});
    if all {
        first["status"]["conditions"] = json!([{"type": "AllContainersRestarting", "status": "True",
            "reason": "ContainerExited", "lastTransitionTime": now,
            "message": "Container trainer exited with code 76, triggering pod restart"}]);
    }
    pods.patch_status(&name, &PatchParams::default(), &Patch::Strategic(&first)).await.expect("exit 76");
    let later = k8s_openapi::jiff::Timestamp::now().to_string();
    let running: Vec<Value> = statuses
        .iter()
        .map(|c| {
            json!({"name": c.name, "image": c.image, "imageID": "", "ready": true, "started": true,
                   "restartCount": c.restart_count + 1,
                   "state": {"running": {"startedAt": later}},
                   "lastState": {"terminated": {"exitCode": 76, "reason": "Error", "startedAt": now, "finishedAt": now}}})
        })
        .collect();
    let mut second = json!({"status": {"phase": "Running", "containerStatuses": running}});
    if all {
        second["status"]["conditions"] = json!([{"type": "AllContainersRestarting", "status": "False",
            "reason": "ContainerExited", "lastTransitionTime": later}]);
    }
    pods.patch_status(&name, &PatchParams::default(), &Patch::Strategic(&second))
        .await
        .expect("running again");
}

/// A member's workload: polls the agent of its node (`POST /v1/progress` without steps, from
/// the pod's IP) every 500 ms; told to restart in place, it exits 76 (the kubelet restarts it)
/// and returns what it was told.
async fn member_workload(
    agent: std::net::SocketAddr,
    pods: Api<Pod>,
    ns: String,
    name: String,
    action: String,
) -> Value {
    let body = format!(r#"{{"namespace":"{ns}","pod":"{name}"}}"#);
    loop {
        let b = body.clone();
        let answer = tokio::task::spawn_blocking(move || http_body(agent, "POST", "/v1/progress", &b))
            .await
            .ok()
            .flatten();
        if let Some((202, text)) = answer
            && let Ok(v) = serde_json::from_str::<Value>(&text)
            && let Some(told) = v.get("restartInPlace")
        {
            let pod = pods.get(&name).await.expect("the member");
            kubelet_restarts_in_place(&pods, &pod, &action).await;
            return told.clone();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real control plane: scripts/e2e.sh"]
async fn a_device_failure_restarts_the_healthy_members_in_place_and_recreates_only_its_own() {
    let scope = Scope::new("inplace").await;
    let action = "RestartAllContainers";
    let (kubelets, agents) = scope.nodes_with_agents(&["n1", "n2", "n3"], 2).await;
    let controller = scope.controller("c1", &[]).await;
    let jobs: Api<Job> = Api::namespaced(scope.client.clone(), &scope.ns);
    jobs.create(&PostParams::default(), &in_place_job(&scope, "train", action))
        .await
        .expect("create the Job");
    let pods = scope.pods();
    let first = eventually("the Job's 4 members run", Duration::from_secs(60), || {
        let pods = pods.clone();
        async move {
            let m = running_members(&pods, "train").await;
            (m.len() == MEMBERS).then_some(m)
        }
    })
    .await;
    // The API server keeps the rule (the gates are on at this release), so the pods carry it.
    let rules = first[0].spec.as_ref().and_then(|s| s.containers[0].restart_policy_rules.clone());
    assert!(
        rules.is_some_and(|r| !r.is_empty()),
        "the API server dropped restartPolicyRules: {:?}",
        first[0].spec
    );
    let victim = first.iter().find(|p| index_of(p).as_deref() == Some("0")).expect("member 0").clone();
    let victim_name = victim.metadata.name.clone().unwrap();
    let victim_uid = victim.metadata.uid.clone().unwrap();
    let victim_node = victim.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap();
    let k = kubelets.iter().position(|k| k.node == victim_node).unwrap();
    let device = kubelets[k].devices_of(&scope.ns, &victim_name)[0].clone();
    scope.await_bound_published(&kubelets).await;
    // Each healthy member's workload polls its node's agent.
    let mut workloads = Vec::new();
    let healthy: BTreeSet<String> = first
        .iter()
        .filter(|p| p.metadata.uid.as_deref() != Some(victim_uid.as_str()))
        .filter_map(|p| p.metadata.uid.clone())
        .collect();
    for p in first.iter().filter(|p| p.metadata.uid.as_deref() != Some(victim_uid.as_str())) {
        let node = p.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap();
        let agent = agents.iter().find(|a| a.node == node).expect("its agent").progress;
        let name = p.metadata.name.clone().unwrap();
        workloads.push(tokio::spawn(member_workload(
            agent,
            pods.clone(),
            scope.ns.clone(),
            name,
            action.into(),
        )));
    }
    let (stop_count, writes) = count_pod_writes(&pods).await;

    let failed_at = Instant::now();
    kubelets[k].state.lock().unwrap().unhealthy.insert(device.clone());
    agents[k].inject("fail", &device);
    // Every member runs again: the three healthy ones in the same pods, restarted once; member
    // 0 re-created (a new pod), off the failed GPU.
    let again = eventually("all members run again", Duration::from_secs(90), || {
        let (pods, healthy, victim_uid) = (pods.clone(), healthy.clone(), victim_uid.clone());
        async move {
            let m = running_members(&pods, "train").await;
            let kept = m
                .iter()
                .filter(|p| p.metadata.uid.as_ref().is_some_and(|u| healthy.contains(u)) && restarts(p) >= 1)
                .count();
            let fresh = m
                .iter()
                .filter(|p| {
                    index_of(p).as_deref() == Some("0")
                        && p.metadata.uid.as_deref() != Some(victim_uid.as_str())
                })
                .count();
            (m.len() == MEMBERS && kept == MEMBERS - 1 && fresh == 1).then_some(m)
        }
    })
    .await;
    let took = failed_at.elapsed();
    let _ = stop_count.send(());
    let writes = writes.await.unwrap_or(0);
    for w in workloads {
        let told = w.await.expect("a workload");
        assert_eq!(told["exitCode"], 76, "{told}");
        assert!(told["incident"].as_str().is_some_and(|i| !i.is_empty()), "{told}");
    }
    let replacement = again.iter().find(|p| index_of(p).as_deref() == Some("0")).unwrap();
    let name = replacement.metadata.name.clone().unwrap();
    let node = replacement.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap();
    let on = kubelets.iter().find(|k| k.node == node).unwrap().devices_of(&scope.ns, &name);
    assert!(
        !(node == victim_node && on.contains(&device)),
        "{name} was placed on the failed device {device}"
    );
    // Once restarted, a member is not told again (it would restart forever).
    let member = again.iter().find(|p| p.metadata.uid.as_ref().is_some_and(|u| healthy.contains(u))).unwrap();
    let member_name = member.metadata.name.clone().unwrap();
    let member_node = member.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap();
    let agent = agents.iter().find(|a| a.node == member_node).unwrap().progress;
    let body = format!(r#"{{"namespace":"{}","pod":"{member_name}"}}"#, scope.ns);
    let after =
        tokio::task::spawn_blocking(move || http_body(agent, "POST", "/v1/progress", &body)).await.unwrap();
    let (code, text) = after.expect("the agent answers");
    assert_eq!(code, 202, "{text}");
    assert!(!text.contains("restartInPlace"), "told again after restarting: {text}");
    // One gang restart, its Event naming the split; the Job counts no failure.
    assert_eq!(controller.actions("restart_gang", "done"), 1.0, "{}", controller.metrics());
    let event = eventually("the DevhealGangRestart Event", Duration::from_secs(20), || {
        let (client, ns) = (scope.client.clone(), scope.ns.clone());
        async move { events(&client, &ns, "DevhealGangRestart").await.into_iter().next() }
    })
    .await;
    let note = event["note"].as_str().unwrap_or("").to_string();
    assert!(note.contains("3 of 4 pods restart in place (exit 76), deleted 1"), "{note}");
    let job = jobs.get("train").await.expect("the Job");
    assert_eq!(job.status.and_then(|s| s.failed).unwrap_or(0), 0, "no failure counted");
    eprintln!(
        "in place ({action}), backoffLimit 0: device fault -> all {MEMBERS} members running again in {took:?}; \
         {writes} writes to the namespace's pods; devheal: {note}"
    );
}
