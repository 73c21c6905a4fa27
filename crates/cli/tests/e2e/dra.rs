//! e. DRA on the real API server and scheduler: with a DeviceClass and a ResourceSlice published
//! by the test (playing a DRA driver), a device reported Unhealthy is quarantined by the
//! controller with a DeviceTaintRule at the version the release serves, and the real scheduler
//! then never allocates that device to a new claim.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, PostParams};
use serde_json::{Value, json};

use crate::harness::*;

const DRIVER: &str = "gpu.e2e.devheal.io";

fn api(client: &kube::Client, kind: &str, plural: &str, ns: Option<&str>) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("resource.k8s.io", "v1", kind);
    let resource = ApiResource::from_gvk_with_plural(&gvk, plural);
    match ns {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    }
}

fn object(value: Value) -> DynamicObject {
    serde_json::from_value(value).expect("an object")
}

/// Publish one DRA device's health in the node's NodeDeviceHealth as its agent would (here the
/// test writes it, as admin, with the agent's field manager).
fn publish(scope: &Scope, node: &str, id: &str, health: &str) {
    let reasons = if health == "Healthy" {
        json!([])
    } else {
        json!([{"source": "nvml", "code": 79, "message": "GPU has fallen off the bus",
                "firstSeen": "2026-12-04T00:00:00Z", "lastSeen": "2026-12-04T00:00:00Z", "count": 1}])
    };
    let body = json!({"apiVersion": "devheal.io/v1alpha1", "kind": "NodeDeviceHealth",
           "metadata": {"name": node}, "spec": {"nodeName": node},
           "status": {"devices": [{"id": id, "resource": DRIVER, "health": health, "reasons": reasons}]}})
    .to_string();
    let apply = ["apply", "--server-side", "--force-conflicts", "--field-manager", "devheal-agent"];
    kubectl(scope.env, &[&apply[..], &["-f", "-"]].concat(), Some(body.as_bytes()));
    kubectl(
        scope.env,
        &[&apply[..], &["--subresource", "status", "-f", "-"]].concat(),
        Some(body.as_bytes()),
    );
}

/// devheal's DeviceTaintRules for `device` of `DRIVER` (any pool), as JSON.
async fn rules_for(rules: &Api<DynamicObject>, device: &str) -> Option<Vec<Value>> {
    let list =
        rules.list(&ListParams::default().labels("app.kubernetes.io/managed-by=devheal")).await.ok()?;
    Some(
        list.items
            .into_iter()
            .map(|r| serde_json::to_value(r).unwrap_or_default())
            .filter(|r| {
                r["spec"]["deviceSelector"]["device"] == device
                    && r["spec"]["deviceSelector"]["driver"] == DRIVER
            })
            .collect(),
    )
}

async fn allocated_device(claims: &Api<DynamicObject>, claim: &str) -> Option<String> {
    let c = claims.get_opt(claim).await.ok()??;
    let v = serde_json::to_value(c).ok()?;
    v["status"]["allocation"]["devices"]["results"][0]["device"].as_str().map(str::to_string)
}

fn claim_and_pod(scope: &Scope, name: &str, class: &str) -> (DynamicObject, Pod) {
    let claim = object(json!({
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
        "metadata": {"name": name, "namespace": scope.ns},
        "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {
            "deviceClassName": class, "allocationMode": "ExactCount", "count": 1}}]}},
    }));
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": scope.ns, "labels": {TEST_LABEL: scope.name}},
        "spec": {
            "restartPolicy": "Never",
            "resourceClaims": [{"name": "gpu", "resourceClaimName": name}],
            "containers": [{"name": "work", "image": "registry.k8s.io/pause:3.10",
                            "resources": {"claims": [{"name": "gpu"}]}}],
        },
    }))
    .expect("a pod");
    (claim, pod)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real control plane: scripts/e2e.sh"]
async fn a_device_taint_rule_keeps_the_scheduler_off_a_quarantined_device() {
    let scope = Scope::new("dra").await;
    let node = scope.add_node("n1", 0).await;
    let client = scope.client.clone();
    let class = format!("e2e-{}", scope.name);
    let pool = format!("pool-{node}");
    let classes = api(&client, "DeviceClass", "deviceclasses", None);
    let _ = classes.delete(&class, &Default::default()).await;
    classes
        .create(
            &PostParams::default(),
            &object(json!({
                "apiVersion": "resource.k8s.io/v1", "kind": "DeviceClass", "metadata": {"name": class},
                "spec": {"selectors": [{"cel": {"expression": format!("device.driver == '{DRIVER}'")}}]},
            })),
        )
        .await
        .expect("create the DeviceClass");
    let slices = api(&client, "ResourceSlice", "resourceslices", None);
    let slice_name = format!("{node}-{DRIVER}");
    let _ = slices.delete(&slice_name, &Default::default()).await;
    slices
        .create(
            &PostParams::default(),
            &object(json!({
                "apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice", "metadata": {"name": slice_name},
                "spec": {"driver": DRIVER, "nodeName": node,
                         "pool": {"name": pool, "generation": 1, "resourceSliceCount": 1},
                         "devices": [{"name": "dev-0"}, {"name": "dev-1"}]},
            })),
        )
        .await
        .expect("create the ResourceSlice");
    let controller = scope.controller("c1", &[]).await;

    // The node's agent (here: the test, as admin) reports dev-0 Healthy, then Unhealthy.
    let id = format!("{DRIVER}/{pool}/dev-0");
    publish(&scope, &node, &id, "Healthy");
    tokio::time::sleep(Duration::from_secs(1)).await;
    publish(&scope, &node, &id, "Unhealthy");

    let rules = api(&client, "DeviceTaintRule", "devicetaintrules", None);
    let rule = eventually("a DeviceTaintRule for dev-0", Duration::from_secs(30), || {
        let rules = rules.clone();
        async move {
            let list = rules.list(&ListParams::default()).await.ok()?;
            list.items.into_iter().map(|r| serde_json::to_value(r).unwrap()).find(|r| {
                r["spec"]["deviceSelector"]["device"] == "dev-0"
                    && r["spec"]["deviceSelector"]["driver"] == DRIVER
            })
        }
    })
    .await;
    // Written by the controller at the version 1.37 serves (its managed fields say which).
    let written_at: Vec<&str> = rule["metadata"]["managedFields"]
        .as_array()
        .map(|fs| {
            fs.iter()
                .filter(|f| f["manager"] == "devheal-controller")
                .filter_map(|f| f["apiVersion"].as_str())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(written_at, ["resource.k8s.io/v1"], "{rule}");
    assert_eq!(rule["spec"]["taint"]["effect"], "NoSchedule");
    controller.await_actions("quarantine_device", "done", 1.0).await;

    // The scheduler allocates dev-1 to the first claim and nothing to the second.
    let claims = api(&client, "ResourceClaim", "resourceclaims", Some(&scope.ns));
    for name in ["claim-a", "claim-b"] {
        let (claim, pod) = claim_and_pod(&scope, name, &class);
        claims.create(&PostParams::default(), &claim).await.expect("create the claim");
        scope.pods().create(&PostParams::default(), &pod).await.expect("create the pod");
        if name == "claim-a" {
            let device = eventually("the scheduler allocates claim-a", Duration::from_secs(30), || {
                let claims = claims.clone();
                async move { allocated_device(&claims, "claim-a").await }
            })
            .await;
            assert_eq!(device, "dev-1", "the tainted dev-0 must not be allocated");
        }
    }
    let pods = scope.pods();
    eventually("claim-b's pod is unschedulable", Duration::from_secs(30), || {
        let pods = pods.clone();
        async move {
            let p = pods.get("claim-b").await.ok()?;
            (condition(&p, "PodScheduled").as_deref() == Some("False")).then_some(())
        }
    })
    .await;
    assert_eq!(allocated_device(&claims, "claim-b").await, None, "claim-b must not get the tainted device");
    let _ = slices.delete(&slice_name, &Default::default()).await;
    let _ = classes.delete(&class, &Default::default()).await;
    let _ = rules.delete(rule["metadata"]["name"].as_str().unwrap(), &Default::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real control plane: scripts/e2e.sh"]
async fn a_restarted_controller_finds_its_device_taint_rules_and_releases_a_recovered_device() {
    let scope = Scope::new("dra-restart").await;
    let node = scope.add_node("n1", 0).await;
    let rules = api(&scope.client, "DeviceTaintRule", "devicetaintrules", None);
    let id = format!("{DRIVER}/pool-{node}/dev-0");
    let one_rule = |rules: Api<DynamicObject>| async move {
        let found = rules_for(&rules, "dev-0").await?;
        (found.len() == 1).then_some(())
    };
    publish(&scope, &node, &id, "Healthy");
    let c1 = scope.controller("c1", &["--probation", "2s"]).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    publish(&scope, &node, &id, "Unhealthy");
    eventually("c1 quarantines dev-0 with a DeviceTaintRule", Duration::from_secs(30), || {
        one_rule(rules.clone())
    })
    .await;
    c1.await_actions("quarantine_device", "done", 1.0).await;
    c1.stop();

    // A new process while the device is still Unhealthy: the rule stays, once.
    let c2 = scope.controller("c2", &["--probation", "2s"]).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(rules_for(&rules, "dev-0").await.map(|r| r.len()), Some(1), "one rule for dev-0");
    assert_eq!(c2.actions("release_device", "done"), 0.0, "an Unhealthy device must stay quarantined");
    c2.stop();

    // The device recovers while no controller runs. The next process never quarantined it, so
    // only the rule it reads back can tell it to release the device.
    publish(&scope, &node, &id, "Healthy");
    let c3 = scope.controller("c3", &["--probation", "2s"]).await;
    eventually("c3 deletes the DeviceTaintRule an earlier process wrote", Duration::from_secs(60), || {
        let rules = rules.clone();
        async move { rules_for(&rules, "dev-0").await?.is_empty().then_some(()) }
    })
    .await;
    c3.await_actions("release_device", "done", 1.0).await;
    // The rule came from the controller's watch of devheal's rules (the metrics say so).
    let seen =
        metric_sum(&c3.metrics(), "devheal_controller_watch_events_total", &[("kind", "device_taint_rule")]);
    assert!(seen >= 1.0, "the controller watched no DeviceTaintRule: {seen}");
}

/// One device identity on the real server, agent to rule: the agent lists its node's
/// ResourceSlices with its own credentials (RBAC from `deploy/base`); the slice, as the test's
/// DRA driver writes it, announces the node's first fake GPU by its PCI address
/// (`resource.kubernetes.io/pciBusID`) as `dev-0`. The agent publishes that GPU once, under its
/// DRA id `driver/pool/dev-0` with the driver as its resource and its plugin name among its
/// aliases. When it fails, the controller quarantines it with a DeviceTaintRule for `dev-0`, not
/// with a node taint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real control plane: scripts/e2e.sh"]
async fn the_agent_publishes_a_device_under_its_dra_id_and_the_controller_taints_that_device() {
    let scope = Scope::new("dra-ident").await;
    let node = scope.add_node("n1", 2).await;
    let pool = format!("pool-{node}");
    let domain = devheal_agent::fake::fake_pci_domain(&node);
    let slices = api(&scope.client, "ResourceSlice", "resourceslices", None);
    let slice_name = format!("{node}-{DRIVER}");
    let _ = slices.delete(&slice_name, &Default::default()).await;
    let announced = |name: &str, pci: String| json!({"name": name, "attributes": {"resource.kubernetes.io/pciBusID": {"string": pci}}});
    slices
        .create(
            &PostParams::default(),
            &object(json!({
                "apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice", "metadata": {"name": slice_name},
                "spec": {"driver": DRIVER, "nodeName": node,
                         "pool": {"name": pool, "generation": 1, "resourceSliceCount": 1},
                         "devices": [announced("dev-0", format!("{domain}:00:00.0")),
                                     announced("dev-1", format!("{domain}:00:01.0"))]},
            })),
        )
        .await
        .expect("create the ResourceSlice");
    let kubelet = scope.kubelet(&node, 2).await;
    let agent = scope.agent(&node, &kubelet, None).await;
    let controller = scope.controller("c1", &[]).await;

    let id = format!("{DRIVER}/{pool}/dev-0");
    let published = eventually("fake-gpu-0 published under its DRA id", Duration::from_secs(40), || {
        let (client, node, id) = (scope.client.clone(), node.clone(), id.clone());
        async move {
            let object = node_device_health(&client, &node).await?;
            let sources = object["status"]["sources"].as_array()?.clone();
            let slices_read =
                sources.iter().any(|s| s["name"] == "resource_slices" && s["available"] == true);
            let device =
                object["status"]["devices"].as_array()?.iter().find(|d| d["id"] == id.as_str())?.clone();
            slices_read.then_some((object, device))
        }
    })
    .await;
    let (object, device) = published;
    assert_eq!(device["resource"], DRIVER, "{device}");
    assert_eq!(device["aliases"], json!(["fake-gpu-0"]), "{device}");
    let ids: Vec<&str> =
        object["status"]["devices"].as_array().unwrap().iter().filter_map(|d| d["id"].as_str()).collect();
    assert!(!ids.contains(&"fake-gpu-0"), "one device, published once: {ids:?}");

    agent.inject("fail", "fake-gpu-0");
    let rules = api(&scope.client, "DeviceTaintRule", "devicetaintrules", None);
    eventually("a DeviceTaintRule for dev-0", Duration::from_secs(40), || {
        let rules = rules.clone();
        async move { rules_for(&rules, "dev-0").await.filter(|r| r.len() == 1).map(|_| ()) }
    })
    .await;
    controller.await_actions("quarantine_device", "done", 1.0).await;
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(scope.client.clone());
    let taints = nodes.get(&node).await.expect("the node").spec.and_then(|s| s.taints).unwrap_or_default();
    assert!(
        !taints.iter().any(|t| t.key.starts_with("devheal.io/device-quarantine")),
        "a DRA device is not quarantined with a node taint: {taints:?}"
    );
    for rule in rules_for(&rules, "dev-0").await.unwrap_or_default() {
        let _ =
            rules.delete(rule["metadata"]["name"].as_str().unwrap_or_default(), &Default::default()).await;
    }
    let _ = slices.delete(&slice_name, &Default::default()).await;
}
