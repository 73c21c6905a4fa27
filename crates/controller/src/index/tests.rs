use super::*;
use serde_json::json;

fn pod(name: &str, uid: &str, rv: &str, device: &str, phase: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "ml", "uid": uid, "resourceVersion": rv,
                     "labels": {"jobset.sigs.k8s.io/jobset-name": "llama"}},
        "spec": {"nodeName": "node-0", "containers": [{"name": "c"}]},
        "status": {"phase": phase, "containerStatuses": [{
            "name": "c", "image": "i", "imageID": "", "ready": true, "restartCount": 0,
            "allocatedResourcesStatus": [{"name": "nvidia.com/gpu", "resources": [{"resourceID": device, "health": "Healthy"}]}]
        }]}
    }))
    .expect("valid pod")
}

fn health(node: &str, devices: serde_json::Value) -> NodeDeviceHealthObject {
    serde_json::from_value(json!({
        "apiVersion": "devheal.io/v1alpha1", "kind": "NodeDeviceHealth",
        "metadata": {"name": node}, "spec": {"nodeName": node},
        "status": {"devices": devices}
    }))
    .expect("valid object")
}

fn names(inputs: &[Input]) -> Vec<String> {
    inputs
        .iter()
        .map(|i| match i {
            Input::PodUpsert(p) => format!("upsert {} {:?}", p.name, p.devices.len()),
            Input::PodDeleted { uid } => format!("deleted {uid}"),
            Input::Devices { node, devices } => format!("devices {node} {}", devices.len()),
            Input::DeviceHealth { device, health, .. } => format!("health {} {health:?}", device.id),
            Input::NodeUpsert(n) => format!("node {}", n.name),
            Input::NodeDeleted { name } => format!("node deleted {name}"),
            Input::Policies(p) => format!("policies {}", p.len()),
            other => format!("{other:?}"),
        })
        .collect()
}

fn list(index: &mut ClusterIndex, pods: Vec<Pod>) -> Vec<String> {
    let mut out = names(&index.apply(ClusterEvent::Pod(watcher::Event::Init)).inputs);
    for p in pods {
        out.extend(names(&index.apply(ClusterEvent::Pod(watcher::Event::InitApply(p))).inputs));
    }
    let done = index.apply(ClusterEvent::Pod(watcher::Event::InitDone));
    out.extend(names(&done.inputs));
    out
}

#[test]
fn an_update_that_changes_nothing_the_engine_reads_emits_nothing() {
    let mut index = ClusterIndex::new();
    let first = index.apply(ClusterEvent::Pod(watcher::Event::Apply(pod("a", "u1", "1", "G0", "Running"))));
    assert_eq!(names(&first.inputs), ["upsert a 1"]);
    // A new resourceVersion and a managed-fields change only.
    let mut same = pod("a", "u1", "2", "G0", "Running");
    same.metadata.managed_fields = Some(vec![Default::default()]);
    assert!(index.apply(ClusterEvent::Pod(watcher::Event::Apply(same))).inputs.is_empty());
    let changed = index.apply(ClusterEvent::Pod(watcher::Event::Apply(pod("a", "u1", "3", "G0", "Failed"))));
    assert_eq!(names(&changed.inputs), ["upsert a 1"]);
}

#[test]
fn a_relist_deletes_what_vanished_in_the_gap_and_repeats_nothing() {
    let mut index = ClusterIndex::new();
    let pods = vec![pod("a", "u1", "1", "G0", "Running"), pod("b", "u2", "1", "G1", "Running")];
    assert_eq!(list(&mut index, pods), ["upsert a 1", "upsert b 1"]);
    assert!(index.ready() || index.waiting_for().len() == 3);
    // During the gap: b was deleted, c created, a unchanged (new resourceVersion).
    let relist = vec![pod("a", "u1", "9", "G0", "Running"), pod("c", "u3", "9", "G2", "Running")];
    let mut index2 = index;
    let out = list(&mut index2, relist);
    assert_eq!(out, ["upsert c 1", "deleted u2"]);
    assert_eq!(index2.len(ObjectKind::Pod), 2);
}

#[test]
fn an_interrupted_relist_keeps_objects_until_a_complete_one() {
    let mut index = ClusterIndex::new();
    list(&mut index, vec![pod("a", "u1", "1", "G0", "Running"), pod("b", "u2", "1", "G1", "Running")]);
    // Init, part of a list, then a 410 again: nothing is deleted until an InitDone.
    index.apply(ClusterEvent::Pod(watcher::Event::Init));
    index.apply(ClusterEvent::Pod(watcher::Event::InitApply(pod("a", "u1", "5", "G0", "Running"))));
    let err = index.apply(ClusterEvent::WatchError { kind: ObjectKind::Pod, message: "410".into() });
    assert!(err.watch_error && err.inputs.is_empty());
    let out =
        list(&mut index, vec![pod("a", "u1", "6", "G0", "Running"), pod("b", "u2", "6", "G1", "Running")]);
    assert!(out.is_empty(), "{out:?}");
}

#[test]
fn a_pod_recreated_under_the_same_name_replaces_the_old_uid() {
    let mut index = ClusterIndex::new();
    list(&mut index, vec![pod("a", "u1", "1", "G0", "Running")]);
    let out = list(&mut index, vec![pod("a", "u9", "7", "G0", "Running")]);
    assert_eq!(out, ["deleted u1", "upsert a 1"]);
    // A late Delete of the old incarnation does not remove the new one.
    let late = index.apply(ClusterEvent::Pod(watcher::Event::Delete(pod("a", "u1", "8", "G0", "Running"))));
    assert!(late.inputs.is_empty());
    assert_eq!(index.len(ObjectKind::Pod), 1);
}

#[test]
fn a_pod_being_deleted_leaves_the_engine_and_does_not_come_back() {
    let mut index = ClusterIndex::new();
    list(&mut index, vec![pod("a", "u1", "1", "G0", "Running")]);
    let mut terminating = pod("a", "u1", "2", "G0", "Running");
    terminating.metadata.deletion_timestamp = Some(devheal_k8s::crd::k8s_time(devheal_core::Time(1)));
    let out = index.apply(ClusterEvent::Pod(watcher::Event::Apply(terminating.clone())));
    assert_eq!(names(&out.inputs), ["deleted u1"]);
    terminating.metadata.resource_version = Some("3".into());
    let status = terminating.status.as_mut().expect("status");
    status.phase = Some("Failed".into());
    assert!(index.apply(ClusterEvent::Pod(watcher::Event::Apply(terminating.clone()))).inputs.is_empty());
    assert!(index.apply(ClusterEvent::Pod(watcher::Event::Delete(terminating))).inputs.is_empty());
    // Seen first while terminating (a restarted controller): never sent.
    let mut fresh = ClusterIndex::new();
    let mut t = pod("b", "u2", "1", "G1", "Running");
    t.metadata.deletion_timestamp = Some(devheal_k8s::crd::k8s_time(devheal_core::Time(1)));
    assert!(list(&mut fresh, vec![t]).is_empty());
}

#[test]
fn node_device_health_sends_inventory_bindings_and_changed_health_only() {
    let mut index = ClusterIndex::new();
    // A pod without allocatedResourcesStatus: NodeDeviceHealth binds it to its device.
    let bare: Pod = serde_json::from_value(json!({
        "metadata": {"name": "p", "namespace": "ml", "uid": "u1"},
        "spec": {"nodeName": "node-0", "containers": [{"name": "c"}]},
        "status": {"phase": "Running"}
    }))
    .expect("valid pod");
    assert_eq!(names(&index.apply(ClusterEvent::Pod(watcher::Event::Apply(bare))).inputs), ["upsert p 0"]);
    let dev = |h: &str, pods: serde_json::Value| {
        json!([{"id": "G0", "resource": "nvidia.com/gpu", "health": h, "pods": pods},
               {"id": "G1", "resource": "nvidia.com/gpu", "health": "Healthy"}])
    };
    let first = index.apply(ClusterEvent::NodeHealth(watcher::Event::Apply(health(
        "node-0",
        dev("Healthy", json!([{"namespace": "ml", "name": "p", "uid": "u1"}])),
    ))));
    assert_eq!(
        names(&first.inputs),
        ["devices node-0 2", "upsert p 1", "health G0 Healthy", "health G1 Healthy"]
    );
    // A heartbeat that changes nothing the engine reads.
    let mut again = health("node-0", dev("Healthy", json!([{"namespace": "ml", "name": "p", "uid": "u1"}])));
    again.status.as_mut().expect("status").last_heartbeat =
        Some(devheal_k8s::crd::k8s_time(devheal_core::Time(5)));
    assert!(index.apply(ClusterEvent::NodeHealth(watcher::Event::Apply(again))).inputs.is_empty());
    let failed = index.apply(ClusterEvent::NodeHealth(watcher::Event::Apply(health(
        "node-0",
        dev("Unhealthy", json!([{"namespace": "ml", "name": "p", "uid": "u1"}])),
    ))));
    assert_eq!(names(&failed.inputs), ["health G0 Unhealthy"]);
    // The object goes away: its devices are Unknown (never remediated), the binding ends.
    let gone = index.apply(ClusterEvent::NodeHealth(watcher::Event::Delete(health("node-0", json!([])))));
    assert_eq!(names(&gone.inputs), ["upsert p 0", "health G0 Unknown", "health G1 Unknown"]);
}

/// A node speaks only for its own pods: node-0's NodeDeviceHealth binding a pod of node-1 to
/// one of node-0's devices, or reporting that pod's progress, is ignored and listed once as a
/// foreign claim; a binding named before the pod is known counts only if the pod turns out
/// to be on node-0.
#[test]
fn a_node_speaks_only_for_its_own_pods() {
    let mut index = ClusterIndex::new();
    let bare = |name: &str, uid: &str, node: &str| -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ml", "uid": uid},
            "spec": {"nodeName": node, "containers": [{"name": "c"}]},
            "status": {"phase": "Running"}
        }))
        .expect("valid pod")
    };
    index.apply(ClusterEvent::Pod(watcher::Event::Apply(bare("victim", "u-v", "node-1"))));
    index.apply(ClusterEvent::Pod(watcher::Event::Apply(bare("own", "u-o", "node-0"))));
    let report = |h: &str| {
        let mut o = health(
            "node-0",
            json!([{"id": "G0", "resource": "nvidia.com/gpu", "health": h, "pods": [
                {"namespace": "ml", "name": "victim", "uid": "u-v"},
                {"namespace": "ml", "name": "own", "uid": "u-o"},
                {"namespace": "ml", "name": "later", "uid": "u-l"}]}]),
        );
        o.status.as_mut().expect("status").workloads = ["victim", "own"]
            .iter()
            .map(|n| devheal_k8s::crd::WorkloadProgress {
                namespace: "ml".into(),
                name: n.to_string(),
                ..Default::default()
            })
            .collect();
        o
    };
    let first = index.apply(ClusterEvent::NodeHealth(watcher::Event::Apply(report("Healthy"))));
    assert_eq!(names(&first.inputs), ["devices node-0 1", "upsert own 1", "health G0 Healthy"]);
    let claims: Vec<(&str, &str, &str)> =
        first.foreign.iter().map(|c| (c.pod.as_str(), c.pod_node.as_str(), c.what)).collect();
    assert_eq!(claims, [("ml/victim", "node-1", "device"), ("ml/victim", "node-1", "progress")]);
    let progress: Vec<&str> = first.progress[0].1.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(progress, ["own"], "only the node's own pods' progress is handed on");
    // The same claims again are not listed again; the device fails: only the own pod is on it.
    let failed = index.apply(ClusterEvent::NodeHealth(watcher::Event::Apply(report("Unhealthy"))));
    assert!(failed.foreign.is_empty());
    assert_eq!(names(&failed.inputs), ["health G0 Unhealthy"]);
    // A pod named before it was known turns out to be on node-1: node-0's device is not its.
    let later = index.apply(ClusterEvent::Pod(watcher::Event::Apply(bare("later", "u-l", "node-1"))));
    assert_eq!(names(&later.inputs), ["upsert later 0"]);
}

/// A progress finding and the agent's report are merged: Healthy plus the finding is
/// Degraded, Unhealthy and Unknown stay, a heartbeat repeats nothing, and withdrawing the
/// finding gives the agent's report back. The workloads are handed on with their uids.
#[test]
fn progress_reasons_merge_with_the_agents_report() {
    let mut index = ClusterIndex::new();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "p", "namespace": "ml", "uid": "u1"},
        "spec": {"nodeName": "node-0", "containers": [{"name": "c"}]},
        "status": {"phase": "Running"}
    }))
    .expect("valid pod");
    index.apply(ClusterEvent::Pod(watcher::Event::Apply(pod)));
    let object = |h: &str| {
        let mut o = health("node-0", json!([{"id": "G0", "resource": "nvidia.com/gpu", "health": h}]));
        o.status.as_mut().expect("status").workloads = vec![devheal_k8s::crd::WorkloadProgress {
            namespace: "ml".into(),
            name: "p".into(),
            window_seconds: 60,
            ..Default::default()
        }];
        o
    };
    let up = index.apply(ClusterEvent::NodeHealth(watcher::Event::Apply(object("Healthy"))));
    assert_eq!(up.progress.len(), 1);
    assert_eq!(up.progress[0].1[0].uid.as_deref(), Some("u1"), "the uid is filled in from the pod");
    let g0 = DeviceKey { node: "node-0".into(), resource: "nvidia.com/gpu".into(), id: "G0".into() };
    let reason = HealthReason {
        source: devheal_core::HealthSource::Progress,
        code: None,
        message: "straggler ml/p: 17 % slower".into(),
        first_seen: devheal_core::Time(1),
        last_seen: devheal_core::Time(2),
        count: 1,
    };
    let set = index.set_progress_reason(&g0, Some(reason.clone()));
    assert_eq!(names(set.as_slice()), ["health G0 Degraded"]);
    assert!(index.set_progress_reason(&g0, Some(reason.clone())).is_none(), "unchanged");
    let heartbeat = index.apply(ClusterEvent::NodeHealth(watcher::Event::Apply(object("Healthy"))));
    assert!(heartbeat.inputs.is_empty(), "{:?}", names(&heartbeat.inputs));
    let failed = index.apply(ClusterEvent::NodeHealth(watcher::Event::Apply(object("Unhealthy"))));
    assert_eq!(names(&failed.inputs), ["health G0 Unhealthy"]);
    let Input::DeviceHealth { reasons, .. } = &failed.inputs[0] else { unreachable!() };
    assert_eq!(reasons.last(), Some(&reason), "the finding stays as evidence");
    let blind = index.apply(ClusterEvent::NodeHealth(watcher::Event::Apply(object("Unknown"))));
    assert_eq!(names(&blind.inputs), ["health G0 Unknown"]);
    index.apply(ClusterEvent::NodeHealth(watcher::Event::Apply(object("Healthy"))));
    let cleared = index.set_progress_reason(&g0, None);
    assert_eq!(names(cleared.as_slice()), ["health G0 Healthy"]);
    // A device no NodeDeviceHealth reports keeps the reason until one does.
    let elsewhere = DeviceKey { node: "node-9".into(), ..g0 };
    assert!(index.set_progress_reason(&elsewhere, Some(reason)).is_none());
}

#[test]
fn a_binding_for_a_pod_with_its_own_devices_arrives_with_its_next_change() {
    let mut index = ClusterIndex::new();
    index.apply(ClusterEvent::Pod(watcher::Event::Apply(pod("a", "u1", "1", "G0", "Running"))));
    let bind = json!([{"id": "G5", "resource": "nvidia.com/gpu", "health": "Healthy",
                       "pods": [{"namespace": "ml", "name": "a"}]}]);
    let up = index.apply(ClusterEvent::NodeHealth(watcher::Event::Apply(health("node-0", bind))));
    assert_eq!(names(&up.inputs), ["devices node-0 1", "health G5 Healthy"]);
    let next = index.apply(ClusterEvent::Pod(watcher::Event::Apply(pod("a", "u1", "2", "G0", "Failed"))));
    assert_eq!(names(&next.inputs), ["upsert a 2"]);
}

/// One DRA device, however it is named: the pod's status names it by the CDI id of its
/// claim (KEP-4680, the NVIDIA DRA driver) or by `driver/pool/device`, the agent reports it
/// as `driver/pool/device` (or, an older agent, `pool/device` under the driver). The pod is
/// on the agent's key, and the engine hears of one device.
#[test]
fn a_dra_device_from_a_pod_status_and_from_the_agent_is_one_device() {
    let mut index = ClusterIndex::new();
    let agent = DeviceKey::new("node-0", "gpu.nvidia.com", "gpu.nvidia.com/pool-a/gpu-0");
    let report = |id: &str| {
        health(
            "node-0",
            json!([{"id": id, "resource": "gpu.nvidia.com", "health": "Unhealthy",
            "aliases": ["GPU-4404041a-04cf-1ccf-9e70-f139a9b1e23c"]}]),
        )
    };
    let up = index.apply(ClusterEvent::NodeHealth(watcher::Event::Apply(report("pool-a/gpu-0"))));
    let Input::Devices { devices, .. } = &up.inputs[0] else { panic!("{:?}", names(&up.inputs)) };
    assert_eq!(devices[0].key, agent, "an older agent's `pool/device` is the same device");
    let claim_pod = |name: &str, uid: &str, id: &str| -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ml", "uid": uid},
            "spec": {"nodeName": "node-0", "containers": [{"name": "c"}]},
            "status": {"phase": "Running", "containerStatuses": [{
                "name": "c", "image": "i", "imageID": "", "ready": true, "restartCount": 0,
                "allocatedResourcesStatus": [{"name": "claim:train-gpus/gpu",
                    "resources": [{"resourceID": id, "health": "Unhealthy"}]}]
            }]}
        }))
        .expect("valid pod")
    };
    // The CDI id names the pool nowhere: the node's one gpu-0 of that driver is it.
    let cdi = "k8s.gpu.nvidia.com/claim=dab5ab50-d59a-42a6-af16-cfd4628c0f7a-gpu-0";
    // A device plugin's name the agent lists as an alias.
    let named = [
        ("a", "u1", cdi),
        ("b", "u2", "gpu.nvidia.com/pool-a/gpu-0"),
        ("c", "u3", "GPU-4404041a-04cf-1ccf-9e70-f139a9b1e23c"),
    ];
    for (name, uid, id) in named {
        let up = index.apply(ClusterEvent::Pod(watcher::Event::Apply(claim_pod(name, uid, id))));
        let Some(Input::PodUpsert(p)) = up.inputs.first() else { panic!("{:?}", names(&up.inputs)) };
        assert_eq!(p.devices, std::slice::from_ref(&agent), "{id}");
        let status = &p.containers[0].allocated_resources_status[0];
        assert_eq!(
            devheal_core::canonical_key(&DeviceKey::new(
                "node-0",
                status.resource.clone(),
                status.device_id.clone()
            )),
            agent,
            "{id}: the status' report is about the agent's device"
        );
    }
}

#[test]
fn invalid_objects_are_rejected_not_fatal() {
    let mut index = ClusterIndex::new();
    let nameless: Pod = serde_json::from_value(json!({"metadata": {"namespace": "ml"}})).expect("pod");
    let up = index.apply(ClusterEvent::Pod(watcher::Event::Apply(nameless)));
    assert_eq!(up.rejected.len(), 1);
    assert!(up.inputs.is_empty());
    let mut bad = health("node-1", json!([{"id": "G0", "resource": "nvidia.com/gpu", "health": "Healthy"}]));
    bad.metadata.name = Some(String::new());
    let up = index.apply(ClusterEvent::NodeHealth(watcher::Event::Apply(bad)));
    assert_eq!(up.rejected.len(), 1, "{:?}", up.rejected);
}

#[test]
fn matched_pods_count_each_policys_namespace_and_labels() {
    let mut index = ClusterIndex::new();
    let policy = |name: &str, ns: &str, labels: serde_json::Value| -> FailurePolicyObject {
        serde_json::from_value(json!({
            "apiVersion": "devheal.io/v1alpha1", "kind": "FailurePolicy",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"selector": {"matchLabels": labels}, "rules": [{"name": "r", "action": "MarkPod"}]}
        }))
        .expect("valid policy")
    };
    for p in [
        policy("llama", "ml", json!({"jobset.sigs.k8s.io/jobset-name": "llama"})),
        policy("other-jobset", "ml", json!({"jobset.sigs.k8s.io/jobset-name": "gpt"})),
        policy("everything", "ml", json!({})),
        policy("elsewhere", "web", json!({})),
    ] {
        index.apply(ClusterEvent::Policy(watcher::Event::Apply(p)));
    }
    list(&mut index, vec![pod("a", "u1", "1", "G0", "Running"), pod("b", "u2", "1", "G1", "Running")]);
    let mut other = pod("c", "u3", "1", "G2", "Running");
    other.metadata.labels = Some([("jobset.sigs.k8s.io/jobset-name".to_string(), "gpt".to_string())].into());
    index.apply(ClusterEvent::Pod(watcher::Event::Apply(other)));
    let counts = |index: &ClusterIndex| -> Vec<(String, u64)> { index.matched_pods().into_iter().collect() };
    let expected = |llama: u64, everything: u64| {
        vec![
            ("ml/everything".to_string(), everything),
            ("ml/llama".to_string(), llama),
            ("ml/other-jobset".to_string(), 1),
            ("web/elsewhere".to_string(), 0),
        ]
    };
    assert_eq!(counts(&index), expected(2, 3));
    // A pod being deleted no longer counts; a relabelled one moves.
    let mut terminating = pod("a", "u1", "2", "G0", "Running");
    terminating.metadata.deletion_timestamp = Some(devheal_k8s::crd::k8s_time(devheal_core::Time(1)));
    index.apply(ClusterEvent::Pod(watcher::Event::Apply(terminating)));
    let mut moved = pod("b", "u2", "2", "G1", "Running");
    moved.metadata.labels = Some([("team".to_string(), "x".to_string())].into());
    index.apply(ClusterEvent::Pod(watcher::Event::Apply(moved)));
    assert_eq!(counts(&index), expected(0, 2));
}

#[test]
fn policies_are_sent_as_a_set_once_per_change() {
    let mut index = ClusterIndex::new();
    let policy = |name: &str, action: &str| -> FailurePolicyObject {
        serde_json::from_value(json!({
            "apiVersion": "devheal.io/v1alpha1", "kind": "FailurePolicy",
            "metadata": {"name": name, "namespace": "ml"},
            "spec": {"rules": [{"name": "r", "action": action}]}
        }))
        .expect("valid policy")
    };
    let mut out = Vec::new();
    for ev in [
        watcher::Event::Init,
        watcher::Event::InitApply(policy("a", "MarkPod")),
        watcher::Event::InitApply(policy("b", "Ignore")),
        watcher::Event::InitDone,
    ] {
        out.extend(names(&index.apply(ClusterEvent::Policy(ev)).inputs));
    }
    assert_eq!(out, ["policies 2"]);
    let same = index.apply(ClusterEvent::Policy(watcher::Event::Apply(policy("a", "MarkPod"))));
    assert!(same.inputs.is_empty());
    let changed = index.apply(ClusterEvent::Policy(watcher::Event::Apply(policy("a", "EvictPod"))));
    assert_eq!(names(&changed.inputs), ["policies 2"]);
    let gone = index.apply(ClusterEvent::Policy(watcher::Event::Delete(policy("b", "Ignore"))));
    assert_eq!(names(&gone.inputs), ["policies 1"]);
}

/// The driver version a node's agent reads from NVML is the one the engine's version canary
/// counts the node under, over a GPU feature discovery label; a new version reaches the engine
/// without the Node changing, the same report twice sends nothing, and without a report the
/// label is back.
#[test]
fn the_engine_gets_the_driver_version_the_agent_reports() {
    let driver = |up: &IndexUpdate| -> Vec<Option<String>> {
        up.inputs
            .iter()
            .filter_map(|i| match i {
                Input::NodeUpsert(n) => Some(n.driver_version.clone()),
                _ => None,
            })
            .collect()
    };
    let mut index = ClusterIndex::new();
    let node: Node = serde_json::from_value(json!({"metadata": {"name": "node-0",
        "labels": {"nvidia.com/cuda.driver-version.full": "570.86.15"}}}))
    .expect("a node");
    let up = index.apply(ClusterEvent::Node(watcher::Event::Apply(node.clone())));
    assert_eq!(driver(&up), [Some("570.86.15".to_string())]);
    let report = |version: &str| -> NodeDeviceHealthObject {
        serde_json::from_value(json!({
            "apiVersion": "devheal.io/v1alpha1", "kind": "NodeDeviceHealth",
            "metadata": {"name": "node-0"}, "spec": {"nodeName": "node-0"},
            "status": {"devices": [{"id": "GPU-0", "resource": "nvidia.com/gpu", "health": "Healthy"}],
                       "sources": [{"name": "nvml", "available": true, "version": version}]}
        }))
        .expect("valid object")
    };
    let up = index.apply(ClusterEvent::NodeHealth(watcher::Event::Apply(report("575.57.08"))));
    assert_eq!(driver(&up), [Some("575.57.08".to_string())], "{:?}", names(&up.inputs));
    let again = index.apply(ClusterEvent::NodeHealth(watcher::Event::Apply(report("575.57.08"))));
    assert!(driver(&again).is_empty(), "{:?}", names(&again.inputs));
    let unchanged = index.apply(ClusterEvent::Node(watcher::Event::Apply(node)));
    assert!(driver(&unchanged).is_empty(), "the Node did not change: {:?}", names(&unchanged.inputs));
    let gone = index.apply(ClusterEvent::NodeHealth(watcher::Event::Delete(report("575.57.08"))));
    assert_eq!(driver(&gone), [Some("570.86.15".to_string())], "{:?}", names(&gone.inputs));
}

#[test]
fn a_network_fault_reaches_the_engine_once_and_its_clearing_too() {
    let network = |up: &IndexUpdate| -> Vec<Option<devheal_core::NetworkFault>> {
        up.inputs
            .iter()
            .filter_map(|i| match i {
                Input::NodeNetwork { node, fault } if node == "node-0" => Some(fault.clone()),
                _ => None,
            })
            .collect()
    };
    let report = |nics: serde_json::Value| -> NodeDeviceHealthObject {
        serde_json::from_value(json!({
            "apiVersion": "devheal.io/v1alpha1", "kind": "NodeDeviceHealth",
            "metadata": {"name": "node-0"}, "spec": {"nodeName": "node-0"},
            "status": {"devices": [{"id": "GPU-0", "resource": "nvidia.com/gpu", "health": "Healthy"}],
                       "network": nics}
        }))
        .expect("valid object")
    };
    let up_link =
        json!([{"pciAddress": "0000:08:00.0", "names": ["ens1np0", "mlx5_0"], "link": "Up", "flaps": 1}]);
    let dead = json!([
        {"pciAddress": "0000:08:00.0", "names": ["ens1np0", "mlx5_0"], "link": "Down", "flaps": 1,
         "fault": "link down on ens1np0 (0000:08:00.0)", "faultSince": "2026-01-01T00:00:30Z"},
        {"pciAddress": "0000:09:00.0", "link": "Down", "flaps": 0,
         "fault": "link down on 0000:09:00.0", "faultSince": "2026-01-01T00:00:10Z"}
    ]);
    let mut index = ClusterIndex::new();
    let up = index.apply(ClusterEvent::NodeHealth(watcher::Event::Apply(report(up_link.clone()))));
    assert!(network(&up).is_empty(), "no fault, none before: {:?}", names(&up.inputs));
    let up = index.apply(ClusterEvent::NodeHealth(watcher::Event::Apply(report(dead.clone()))));
    let sent = network(&up);
    assert_eq!(sent.len(), 1, "{:?}", names(&up.inputs));
    let fault = sent[0].clone().expect("a fault");
    assert_eq!(fault.links, ["0000:09:00.0", "ens1np0 (0000:08:00.0)"]);
    assert_eq!(fault.since, devheal_core::Time::from_secs(1_767_225_610), "the earliest");
    assert!(fault.reason.contains("link down on ens1np0"), "{}", fault.reason);
    let again = index.apply(ClusterEvent::NodeHealth(watcher::Event::Apply(report(dead))));
    assert!(network(&again).is_empty(), "the same fault again: {:?}", names(&again.inputs));
    let cleared = index.apply(ClusterEvent::NodeHealth(watcher::Event::Apply(report(up_link))));
    assert_eq!(network(&cleared), [None]);
}

/// The device plugin version the agent reads from the plugin's pod on its node is the one the
/// engine counts the node under, over the Node's label, beside the driver's; a new plugin
/// version reaches the engine without the Node changing, and when the agent no longer reports
/// one the label's is back.
#[test]
fn the_engine_gets_the_device_plugin_version_the_agent_reports() {
    let versions = |up: &IndexUpdate| -> Vec<(Option<String>, Option<String>)> {
        up.inputs
            .iter()
            .filter_map(|i| match i {
                Input::NodeUpsert(n) => Some((n.driver_version.clone(), n.device_plugin_version.clone())),
                _ => None,
            })
            .collect()
    };
    let some = |d: &str, p: &str| (Some(d.to_string()), Some(p.to_string()));
    let mut index = ClusterIndex::new();
    let node: Node = serde_json::from_value(json!({"metadata": {"name": "node-0", "labels": {
        "nvidia.com/cuda.driver-version.full": "570.86.15",
        "devheal.io/device-plugin-version": "v0.16.2"}}}))
    .expect("a node");
    let up = index.apply(ClusterEvent::Node(watcher::Event::Apply(node)));
    assert_eq!(versions(&up), [some("570.86.15", "v0.16.2")]);
    let report = |sources: serde_json::Value| -> NodeDeviceHealthObject {
        serde_json::from_value(json!({
            "apiVersion": "devheal.io/v1alpha1", "kind": "NodeDeviceHealth",
            "metadata": {"name": "node-0"}, "spec": {"nodeName": "node-0"},
            "status": {"devices": [{"id": "GPU-0", "resource": "nvidia.com/gpu", "health": "Healthy"}],
                       "sources": sources}
        }))
        .expect("valid object")
    };
    let plugin = |v: &str| json!({"name": "device_plugin_pod", "available": true, "version": v});
    let up = index.apply(ClusterEvent::NodeHealth(watcher::Event::Apply(report(json!([plugin("v0.17.0")])))));
    assert_eq!(versions(&up), [some("570.86.15", "v0.17.0")], "{:?}", names(&up.inputs));
    let both =
        report(json!([plugin("v0.17.1"), {"name": "nvml", "available": true, "version": "575.57.08"}]));
    let up = index.apply(ClusterEvent::NodeHealth(watcher::Event::Apply(both.clone())));
    assert_eq!(versions(&up), [some("575.57.08", "v0.17.1")], "{:?}", names(&up.inputs));
    let again = index.apply(ClusterEvent::NodeHealth(watcher::Event::Apply(both)));
    assert!(versions(&again).is_empty(), "{:?}", names(&again.inputs));
    // The plugin's pod is gone from the report (an empty version is none): the label's again.
    let up = index.apply(ClusterEvent::NodeHealth(watcher::Event::Apply(report(json!([
        {"name": "device_plugin_pod", "available": false, "version": ""},
        {"name": "nvml", "available": true, "version": "575.57.08"}])))));
    assert_eq!(versions(&up), [some("575.57.08", "v0.16.2")], "{:?}", names(&up.inputs));
}

#[test]
fn a_reset_the_agent_reports_failed_reaches_the_engine_once_per_request() {
    let failed = |up: &IndexUpdate| -> Vec<(String, String, String)> {
        up.inputs
            .iter()
            .filter_map(|i| match i {
                Input::DeviceResetFailed { device, request, message } => {
                    Some((device.id.clone(), request.clone(), message.clone()))
                }
                _ => None,
            })
            .collect()
    };
    let report = |resets: serde_json::Value| -> NodeDeviceHealthObject {
        serde_json::from_value(json!({
            "apiVersion": "devheal.io/v1alpha1", "kind": "NodeDeviceHealth",
            "metadata": {"name": "node-0"}, "spec": {"nodeName": "node-0"},
            "status": {"devices": [{"id": "GPU-0", "resource": "nvidia.com/gpu", "health": "Unhealthy"}],
                       "resets": resets}
        }))
        .expect("valid object")
    };
    let at = "2026-01-01T00:00:30Z";
    let pending =
        json!([{"device": "GPU-0", "id": "repair/a", "phase": "Pending", "message": "taken", "at": at}]);
    let done = json!([
        {"device": "GPU-0", "id": "repair/a", "phase": "Failed", "message": "not back after the reset", "at": at},
        {"device": "GPU-0", "id": "repair/b", "phase": "Refused", "message": "off", "at": at}
    ]);
    let mut index = ClusterIndex::new();
    let up = index.apply(ClusterEvent::NodeHealth(watcher::Event::Apply(report(pending))));
    assert!(failed(&up).is_empty(), "{:?}", names(&up.inputs));
    let up = index.apply(ClusterEvent::NodeHealth(watcher::Event::Apply(report(done.clone()))));
    assert_eq!(
        failed(&up),
        [("GPU-0".to_string(), "repair/a".to_string(), "not back after the reset".to_string())],
        "a refusal is not a failure"
    );
    let again = index.apply(ClusterEvent::NodeHealth(watcher::Event::Apply(report(done))));
    assert!(failed(&again).is_empty(), "the same answer again: {:?}", names(&again.inputs));
}
