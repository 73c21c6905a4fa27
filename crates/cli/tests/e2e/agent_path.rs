//! f. The agent's whole path on a real API server: a device fault (the fake device endpoint, or
//! a real kernel line written to `/dev/kmsg`) → the agent's NodeDeviceHealth → the controller's
//! action, all in the API server.

use std::io::Write;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::Api;
use serde_json::json;

use crate::harness::*;

/// A lone pod on a failed fake GPU: the agent publishes the device Unhealthy with the pod, the
/// controller marks the pod `devheal.io/DeviceFailure`, evicts it through the Eviction API (the
/// API server adds `DisruptionTarget`) and keeps new pods off the device with a node taint (no
/// DRA ResourceSlice names it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real control plane: scripts/e2e.sh"]
async fn a_fake_device_failure_reaches_the_controllers_actions() {
    let scope = Scope::new("fakefail").await;
    let node = scope.add_node("n1", 4).await;
    let kubelet = scope.kubelet(&node, 4).await;
    let agent = scope.agent(&node, &kubelet, None).await;
    let controller = scope.controller("c1", &[]).await;

    let device = scope.start_pod(&kubelet, &pod_object(&scope, "solo", &node, 1, json!({}))).await;
    scope.await_published(&node, &device, "solo").await;
    // The kubelet's registration of the fake device plugin reached our Registration service.
    assert!(kubelet.registrations.lock().unwrap().iter().any(|r| r == FAKE_GPU));

    let failed_at = Instant::now();
    agent.inject("fail", &device);
    eventually("the device is published Unhealthy", Duration::from_secs(20), || {
        let client = scope.client.clone();
        let (node, device) = (node.clone(), device.clone());
        async move { (published_health(&client, &node, &device).await? == "Unhealthy").then_some(()) }
    })
    .await;
    let pods = scope.pods();
    let marked = eventually("the pod is marked and evicted", Duration::from_secs(30), || {
        let pods = pods.clone();
        async move {
            let p: Pod = pods.get_opt("solo").await.ok()??;
            let marked = condition(&p, "devheal.io/DeviceFailure").as_deref() == Some("True");
            let evicted = condition(&p, "DisruptionTarget").as_deref() == Some("True");
            (marked && evicted).then_some(p)
        }
    })
    .await;
    let took = failed_at.elapsed();
    let reason = marked
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "DisruptionTarget"))
        .and_then(|c| c.reason.clone());
    assert_eq!(reason.as_deref(), Some("EvictionByEvictionAPI"), "evicted through the Eviction API");
    // Quarantine: a node taint for this one device.
    let nodes: Api<Node> = Api::all(scope.client.clone());
    eventually("the device's quarantine taint on the node", Duration::from_secs(20), || {
        let nodes = nodes.clone();
        let (node, device) = (node.clone(), device.clone());
        async move {
            let n = nodes.get(&node).await.ok()?;
            let taints = n.spec?.taints.unwrap_or_default();
            taints
                .iter()
                .any(|t| {
                    t.key.starts_with("devheal.io/") && t.value.as_deref().unwrap_or("").contains(&device)
                        || t.key.contains(&device)
                })
                .then_some(())
        }
    })
    .await;
    controller.await_actions("evict_pod", "done", 1.0).await;
    eprintln!("fake fault -> pod marked and evicted in the API server: {took:?}");

    // What the agent wrote about its own node: the DevicesHealthy condition False (beside the
    // kubelet's Ready), and a Warning Event on the Node naming the device and its pod.
    let n = nodes.get(&node).await.expect("the node");
    let conditions = n.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
    let healthy =
        conditions.iter().find(|c| c.type_ == "devheal.io/DevicesHealthy").expect("the agent's condition");
    assert_eq!((healthy.status.as_str(), healthy.reason.as_deref()), ("False", Some("DevicesUnhealthy")));
    assert!(healthy.message.as_deref().unwrap_or("").contains(&device), "{healthy:?}");
    assert!(conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"), "the kubelet's Ready stays");
    let found = eventually("the agent's DeviceUnhealthy Event on the node", Duration::from_secs(20), || {
        // By uid too: a node of the same name from an earlier run may have left Events.
        let (client, node, uid) = (scope.client.clone(), node.clone(), json!(n.metadata.uid));
        async move {
            events(&client, "default", "DeviceUnhealthy").await.into_iter().find(|e| {
                e["regarding"]["kind"] == "Node"
                    && e["regarding"]["name"] == node
                    && e["regarding"]["uid"] == uid
            })
        }
    })
    .await;
    assert_eq!(found["type"], "Warning");
    assert!(found["note"].as_str().unwrap_or("").contains("solo"), "{found}");
}

/// A real Xid 79 line written to `/dev/kmsg` for a fake device's PCI address (the domain is
/// derived from the node's name, so the name is new each run and older records in the ring
/// buffer never match) → the agent reads it from the kernel → Unhealthy → the controller acts.
/// Needs root; under `CI=true` a missing `/dev/kmsg` is a failure, elsewhere it says it skips.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real control plane: scripts/e2e.sh"]
async fn a_kernel_xid_in_dev_kmsg_reaches_the_controllers_actions() {
    let mut writer = match std::fs::OpenOptions::new().write(true).open("/dev/kmsg") {
        Ok(w) => w,
        Err(err) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true but /dev/kmsg is not writable: {err}"
            );
            eprintln!("SKIPPED: cannot open /dev/kmsg for writing ({err}); needs root on Linux");
            return;
        }
    };
    let _policy = devheal_detect::kmsg::UnlimitedKmsgWrites::enable().ok();
    let scope = Scope::new("kmsg").await;
    let run = format!(
        "{:x}",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()
    );
    let node = scope.add_node(&format!("k{run}"), 2).await;
    let kubelet = scope.kubelet(&node, 2).await;
    let _agent = scope.agent(&node, &kubelet, Some(std::path::Path::new("/dev/kmsg"))).await;
    let controller = scope.controller("c1", &[]).await;
    let device = scope.start_pod(&kubelet, &pod_object(&scope, "reader", &node, 1, json!({}))).await;
    // The device's PCI address, as the agent published it.
    let pci =
        eventually("the agent publishes the device Healthy with its pod", Duration::from_secs(30), || {
            let client = scope.client.clone();
            let (node, device) = (node.clone(), device.clone());
            async move {
                let o = node_device_health(&client, &node).await?;
                let d =
                    o["status"]["devices"].as_array()?.iter().find(|d| d["id"] == device.as_str())?.clone();
                let has_pod = d["pods"].as_array()?.iter().any(|p| p["name"] == "reader");
                (has_pod && d["health"] == "Healthy").then(|| d["pciAddress"].as_str().map(str::to_string))?
            }
        })
        .await;
    let short = pci.rsplit_once('.').map_or(pci.as_str(), |(head, _)| head);
    let line = format!(
        "<4>NVRM: Xid (PCI:{short}): 79, pid=4242, name=devheal-e2e-{run}, GPU has fallen off the bus (devheal e2e test record, not a real GPU)\n"
    );
    let written = Instant::now();
    writer.write_all(line.as_bytes()).expect("write the record to /dev/kmsg");
    eventually("the device is published Unhealthy from the kernel line", Duration::from_secs(20), || {
        let client = scope.client.clone();
        let (node, device) = (node.clone(), device.clone());
        async move {
            let o = node_device_health(&client, &node).await?;
            let d = o["status"]["devices"].as_array()?.iter().find(|d| d["id"] == device.as_str())?.clone();
            let from_kernel = d["reasons"].as_array()?.iter().any(|r| r["code"] == 79);
            (d["health"] == "Unhealthy" && from_kernel).then_some(())
        }
    })
    .await;
    let pods = scope.pods();
    eventually("the controller marks the pod", Duration::from_secs(30), || {
        let pods = pods.clone();
        async move {
            let p: Pod = pods.get_opt("reader").await.ok()??;
            (condition(&p, "devheal.io/DeviceFailure").as_deref() == Some("True")).then_some(())
        }
    })
    .await;
    controller.await_actions("mark_pod", "done", 1.0).await;
    eprintln!("/dev/kmsg Xid -> pod marked in the API server: {:?}", written.elapsed());
}

/// The agent's watch of its node's pods on the real API server, with the agent's own
/// credentials: a pod on its node that names a progress metric becomes a scrape target at the
/// pod's IP; a pod without the annotations, or on another node, does not; removing the
/// annotation removes the target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real control plane: scripts/e2e.sh"]
async fn the_agents_pod_watch_finds_progress_targets_on_its_node() {
    use kube::api::{Patch, PatchParams};

    let scope = Scope::new("scrape").await;
    let node = scope.add_node("n1", 0).await;
    let elsewhere = scope.add_node("n2", 0).await;
    let kubelet = scope.kubelet(&node, 0).await;
    let client = token_client(&scope.agent_credentials(&node).await).await;
    let annotations =
        json!({"devheal.io/progress-metric": "train_step_seconds", "devheal.io/progress-port": "8000"});
    for (name, on, annotated) in
        [("trainer-0", &node, true), ("plain-0", &node, false), ("trainer-b", &elsewhere, true)]
    {
        let mut pod = pod_object(&scope, name, on, 0, json!({}));
        if annotated {
            pod.metadata.annotations = serde_json::from_value(annotations.clone()).expect("annotations");
        }
        scope.create_running(&pod).await;
    }
    let (tx, mut targets) = tokio::sync::watch::channel(Vec::new());
    let watcher = tokio::spawn(devheal_agent::scrape::watch_pods(client, node.clone(), tx));
    let listed = tokio::time::timeout(Duration::from_secs(30), targets.wait_for(|t| !t.is_empty()))
        .await
        .expect("the annotated pod becomes a target")
        .expect("the watch runs")
        .clone();
    assert_eq!(listed.len(), 1, "only the annotated pod on this node: {listed:?}");
    assert_eq!(
        (listed[0].pod.namespace.as_str(), listed[0].pod.name.as_str()),
        (scope.ns.as_str(), "trainer-0")
    );
    assert_eq!(listed[0].metric, "train_step_seconds");
    assert_eq!(listed[0].url.as_ref().map(|u| u.to_string()).as_deref(), Ok("http://127.0.0.1:8000/metrics"));
    let remove = json!({"metadata": {"annotations": {"devheal.io/progress-metric": null}}});
    scope
        .pods()
        .patch("trainer-0", &PatchParams::default(), &Patch::Merge(&remove))
        .await
        .expect("drop the annotation");
    tokio::time::timeout(Duration::from_secs(30), targets.wait_for(|t| t.is_empty()))
        .await
        .expect("the watch event removes the target")
        .expect("the watch runs");
    watcher.abort();
    drop(kubelet);
}

/// A restarted agent keeps a device its last report had Unhealthy even though nothing it can
/// read says so any more (here: the fake devices start healthy again, as a GPU whose Xid record
/// rotated out of the kernel ring buffer would), until there is evidence it recovered (a reset).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real control plane: scripts/e2e.sh"]
async fn a_restarted_agent_keeps_a_failed_device_until_it_recovers() {
    let scope = Scope::new("agent-restart").await;
    let node = scope.add_node("n1", 2).await;
    let kubelet = scope.kubelet(&node, 2).await;
    let flags = ["--probation-secs", "2"];
    let agent = scope.agent_with(&node, &kubelet, None, &flags).await;
    let device = "fake-gpu-1";
    let health =
        |client: kube::Client, node: String| async move { published_health(&client, &node, device).await };
    eventually("the device is published Healthy", Duration::from_secs(30), || {
        let f = health(scope.client.clone(), node.clone());
        async move { (f.await? == "Healthy").then_some(()) }
    })
    .await;
    agent.inject("fail", device);
    eventually("the device is published Unhealthy", Duration::from_secs(20), || {
        let f = health(scope.client.clone(), node.clone());
        async move { (f.await? == "Unhealthy").then_some(()) }
    })
    .await;
    agent.stop();

    // The new process's sources see the device healthy; its last report does not.
    let again = scope.agent_with(&node, &kubelet, None, &flags).await;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(8) {
        let now = health(scope.client.clone(), node.clone()).await;
        assert_eq!(now.as_deref(), Some("Unhealthy"), "after the restart, {:?} in", started.elapsed());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let ndh = node_device_health(&scope.client, &node).await.expect("the report");
    let reasons = ndh["status"]["devices"]
        .as_array()
        .and_then(|ds| ds.iter().find(|d| d["id"] == device))
        .map(|d| d["reasons"].clone())
        .unwrap_or_default();
    assert!(
        reasons
            .as_array()
            .is_some_and(|rs| rs.iter().any(|r| r["source"] == "kernel_log" && r["code"] == 79)),
        "the Xid is kept: {reasons}"
    );
    // A reset is evidence of recovery: probation (2 s), then Healthy.
    again.inject("recover", device);
    eventually("the device is Healthy after its reset and probation", Duration::from_secs(30), || {
        let f = health(scope.client.clone(), node.clone());
        async move { (f.await? == "Healthy").then_some(()) }
    })
    .await;
}

/// The agent opens no device plugin stream of its own; a device its plugin reported Unhealthy
/// reaches it through the kubelet: no longer offered in PodResources, and counted by the real
/// Node's status (capacity 2, allocatable 1), which the agent reads with its own credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real control plane: scripts/e2e.sh"]
async fn a_device_the_kubelet_stops_offering_is_published_unhealthy() {
    let scope = Scope::new("kubelet-view").await;
    let node = scope.add_node("n1", 2).await;
    let kubelet = scope.kubelet(&node, 2).await;
    let _agent = scope.agent(&node, &kubelet, None).await;
    eventually("both devices published Healthy", Duration::from_secs(30), || {
        let (client, node) = (scope.client.clone(), node.clone());
        async move {
            let a = published_health(&client, &node, "fake-gpu-0").await;
            let b = published_health(&client, &node, "fake-gpu-1").await;
            (a.as_deref() == Some("Healthy") && b.as_deref() == Some("Healthy")).then_some(())
        }
    })
    .await;
    // The plugin reports fake-gpu-1 Unhealthy to the kubelet (no kernel line, no fake endpoint).
    kubelet.state.lock().unwrap().unhealthy.insert("fake-gpu-1".into());
    let reason = eventually(
        "fake-gpu-1 published Unhealthy by its plugin, through the kubelet",
        Duration::from_secs(40),
        || {
            let (client, node) = (scope.client.clone(), node.clone());
            async move {
                let object = node_device_health(&client, &node).await?;
                let device =
                    object["status"]["devices"].as_array()?.iter().find(|d| d["id"] == "fake-gpu-1")?.clone();
                (device["health"] == "Unhealthy").then(|| device["reasons"][0].clone())
            }
        },
    )
    .await;
    assert_eq!(reason["source"], "device_plugin", "{reason}");
    assert!(reason["message"].as_str().unwrap_or("").contains("capacity 2, allocatable 1"), "{reason}");
    assert_eq!(published_health(&scope.client, &node, "fake-gpu-0").await.as_deref(), Some("Healthy"));
}
