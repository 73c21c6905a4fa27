//! Benchmark: what one pass of the rollout gate costs (docs/upgrades.md), beside the cost of
//! reading what it reads.
//!
//! Each pass of the gate lists every pod and every NodeDeviceHealth once (shared by the plans),
//! and per plan the DaemonSet, its ControllerRevisions and the pool's Nodes; it then builds the
//! plan's [`View`] and decides (pure). This benchmark builds the list responses an API server
//! would send for a fleet (`--nodes N` nodes of 8 GPUs, default 12,500: 100,000 single-GPU
//! device pods in JobSet gangs, one device-plugin DaemonSet pod per node, one NodeDeviceHealth
//! per node with 8 devices), then times, over `--runs` runs (default 5, medians reported):
//!
//! - **baseline: decode the lists** — `serde_json` into k8s-openapi objects, what kube's `list`
//!   does with the bytes of each response (every pass pays it, whatever it decides);
//! - **build the view** — `View::build` from those objects;
//! - **decide** — `decide` on the first pass of a three-stage plan (revisions fixed, canary
//!   taken up) and on the pass after it (the canary's pod deleted, soaking).
//!
//! It prints the bytes each pass transfers, each median, and the gate's own work as a ratio of
//! the baseline. Run: `cargo bench -p devheal-controller --bench upgrade_pass` (`-- --nodes N
//! --runs R`). Target: the gate's own work (view + decide) at most a quarter of decoding the
//! lists, so a pass costs what its reads cost.

use std::time::Instant;

use devheal_controller::upgrade::decide;
use devheal_controller::upgrade::validate::validate;
use devheal_controller::upgrade::view::View;
use devheal_core::Time;
use devheal_k8s::crd::NodeDeviceHealth;
use devheal_k8s::upgrade_plan::{UpgradePlanSpec, UpgradePlanStatus};
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet};
use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::{Value, json};

const GPUS: usize = 8;
const GANG_NODES: usize = 8;
const DS_UID: &str = "3b1f6d0e-9c2a-4c55-8f0e-1d2b3c4d5e6f";

fn node_name(n: usize) -> String {
    format!("gpu-node-{n:05}")
}

fn list(kind: &str, api_version: &str, items: Vec<Value>) -> String {
    json!({"kind": format!("{kind}List"), "apiVersion": api_version,
           "metadata": {"resourceVersion": "123456"}, "items": items})
    .to_string()
}

fn device_pod(n: usize, i: usize) -> Value {
    let gang = n / GANG_NODES;
    let index = (n % GANG_NODES) * GPUS + i;
    json!({
        "metadata": {
            "name": format!("train-{gang:04}-workers-0-{index}-x7k2p"), "namespace": "ml",
            "uid": format!("pod-{n:05}-{i}-8d2b-4f6a-9c1e-3f9a2c1e8d2b"),
            "labels": {"jobset.sigs.k8s.io/jobset-name": format!("train-{gang:04}"),
                       "jobset.sigs.k8s.io/replicatedjob-name": "workers",
                       "jobset.sigs.k8s.io/restart-attempt": "0",
                       "batch.kubernetes.io/job-completion-index": index.to_string()},
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": format!("train-{gang:04}-workers-0"),
                                 "uid": format!("job-{gang:04}"), "controller": true}]},
        "spec": {"nodeName": node_name(n), "containers": [{"name": "trainer", "image": "nvcr.io/nvidia/pytorch:25.01-py3",
            "resources": {"limits": {"nvidia.com/gpu": "1"}, "requests": {"nvidia.com/gpu": "1", "cpu": "8"}}}]},
        "status": {"phase": "Running", "podIP": format!("10.{}.{}.{}", n / 65536 % 256, n / 256 % 256, n % 256),
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-12-01T00:00:00Z"}],
            "containerStatuses": [{"name": "trainer", "ready": true, "restartCount": 0, "image": "pytorch", "imageID": "",
                "state": {"running": {"startedAt": "2026-12-01T00:00:00Z"}}}]}
    })
}

fn plugin_pod(n: usize) -> Value {
    json!({
        "metadata": {"name": format!("nvidia-device-plugin-{n:05}"), "namespace": "gpu-operator",
            "uid": format!("plugin-{n:05}-8d2b-4f6a-9c1e-3f9a2c1e8d2b"),
            "labels": {"app": "nvidia-device-plugin-daemonset", "controller-revision-hash": "6b7c9d8f5"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "nvidia-device-plugin-daemonset",
                                 "uid": DS_UID, "controller": true}]},
        "spec": {"nodeName": node_name(n), "containers": [{"name": "plugin", "image": "nvcr.io/nvidia/k8s-device-plugin:v0.17.0"}]},
        "status": {"phase": "Running",
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-12-01T00:00:00Z"}]}
    })
}

fn node(n: usize) -> Value {
    json!({
        "metadata": {"name": node_name(n), "labels": {"nvidia.com/gpu.present": "true", "pool": "training",
            "nvidia.com/cuda.driver-version.full": "570.86.15"}},
        "spec": {},
        "status": {"allocatable": {"nvidia.com/gpu": "8", "cpu": "192"}, "capacity": {"nvidia.com/gpu": "8"},
            "conditions": [{"type": "Ready", "status": "True"}]}
    })
}

fn health(n: usize) -> Value {
    let devices: Vec<Value> = (0..GPUS)
        .map(|i| {
            json!({"id": format!("GPU-{n:05}-{i}-3f9a2c1e-8d2b-4f6a"), "resource": "nvidia.com/gpu",
                        "health": "Healthy", "pods": [{"namespace": "ml", "name": "x"}]})
        })
        .collect();
    json!({"apiVersion": "devheal.io/v1alpha1", "kind": "NodeDeviceHealth",
           "metadata": {"name": node_name(n)}, "spec": {"nodeName": node_name(n)},
           "status": {"lastHeartbeat": "2026-12-04T11:59:50Z", "devices": devices,
                      "sources": [{"name": "nvml", "available": true, "version": "570.86.15"}]}})
}

fn revision(hash: &str, number: i64, image: &str) -> Value {
    json!({"metadata": {"name": format!("nvidia-device-plugin-daemonset-{hash}"), "namespace": "gpu-operator",
            "labels": {"app": "nvidia-device-plugin-daemonset", "controller-revision-hash": hash},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "nvidia-device-plugin-daemonset",
                                 "uid": DS_UID, "controller": true}]},
           "revision": number,
           "data": {"spec": {"template": {"spec": {"containers": [{"name": "plugin", "image": image}]}}}}})
}

fn daemon_set() -> DaemonSet {
    serde_json::from_value(json!({
        "metadata": {"name": "nvidia-device-plugin-daemonset", "namespace": "gpu-operator", "uid": DS_UID},
        "spec": {"selector": {"matchLabels": {"app": "nvidia-device-plugin-daemonset"}},
                 "updateStrategy": {"type": "OnDelete"},
                 "template": {"metadata": {"labels": {"app": "nvidia-device-plugin-daemonset"}},
                              "spec": {"containers": [{"name": "plugin", "image": "nvcr.io/nvidia/k8s-device-plugin:v0.17.1"}]}}}
    }))
    .expect("a DaemonSet")
}

struct Bodies {
    pods: String,
    nodes: String,
    health: String,
    revisions: String,
}

struct Decoded {
    pods: Vec<Pod>,
    nodes: Vec<Node>,
    health: Vec<NodeDeviceHealth>,
    revisions: Vec<ControllerRevision>,
}

fn decode(b: &Bodies) -> Decoded {
    fn items<T: serde::de::DeserializeOwned + Clone>(body: &str) -> Vec<T> {
        serde_json::from_str::<kube::core::ObjectList<T>>(body).expect("a list").items
    }
    Decoded {
        pods: items(&b.pods),
        nodes: items(&b.nodes),
        health: items(&b.health),
        revisions: items(&b.revisions),
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{name} takes a number, not {v:?}")))
        .unwrap_or(default)
}

fn main() {
    let nodes = arg("--nodes", 12_500);
    let runs = arg("--runs", 5).max(1);
    let bodies = Bodies {
        pods: list(
            "Pod",
            "v1",
            (0..nodes)
                .flat_map(|n| (0..GPUS).map(move |i| device_pod(n, i)))
                .chain((0..nodes).map(plugin_pod))
                .collect(),
        ),
        nodes: list("Node", "v1", (0..nodes).map(node).collect()),
        health: list("NodeDeviceHealth", "devheal.io/v1alpha1", (0..nodes).map(health).collect()),
        revisions: list(
            "ControllerRevision",
            "apps/v1",
            vec![
                revision("6b7c9d8f5", 1, "nvcr.io/nvidia/k8s-device-plugin:v0.17.0"),
                revision("7d8e9f0a1", 2, "nvcr.io/nvidia/k8s-device-plugin:v0.17.1"),
            ],
        ),
    };
    let ds = daemon_set();
    let spec: UpgradePlanSpec = serde_json::from_value(json!({
        "daemonSet": "nvidia-device-plugin-daemonset", "nodeSelector": {"pool": "training"},
        "stages": [{"nodes": 1}, {"percent": 10}, {"percent": 100}], "soakSeconds": 1800,
        "maxUnavailable": 8, "health": {"resource": "nvidia.com/gpu"}, "allowInterruptingGangs": true}))
    .expect("a plan");
    let plan = validate(&spec).expect("a valid plan");
    let now = Time::from_secs(1_800_000_000);

    println!(
        "upgrade gate pass: {nodes} nodes × {GPUS} GPUs, {} device pods + {nodes} plugin pods, {runs} runs (medians)",
        nodes * GPUS
    );
    println!(
        "bytes listed per pass: pods {:.1} MB, NodeDeviceHealths {:.1} MB, Nodes {:.1} MB, revisions {:.1} kB",
        bodies.pods.len() as f64 / 1e6,
        bodies.health.len() as f64 / 1e6,
        bodies.nodes.len() as f64 / 1e6,
        bodies.revisions.len() as f64 / 1e3
    );
    let (mut t_decode, mut t_view, mut t_first, mut t_second) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut taken = 0;
    for _ in 0..runs {
        let start = Instant::now();
        let d = decode(&bodies);
        t_decode.push(start.elapsed().as_secs_f64() * 1e3);

        let start = Instant::now();
        let view = View::build(Some(&ds), &d.revisions, &d.pods, &d.nodes, &d.health, Some("nvidia.com/gpu"));
        t_view.push(start.elapsed().as_secs_f64() * 1e3);
        assert_eq!(view.nodes.len(), nodes, "every node in the view");

        let start = Instant::now();
        let first = decide(Ok(&plan), &spec.daemon_set, Some(1), &UpgradePlanStatus::default(), &view, now);
        t_first.push(start.elapsed().as_secs_f64() * 1e3);
        let start = Instant::now();
        let second = decide(Ok(&plan), &spec.daemon_set, Some(1), &first.status, &view, now);
        t_second.push(start.elapsed().as_secs_f64() * 1e3);
        taken = first.status.nodes.len();
        assert!(
            taken >= 1 && !second.steps.is_empty() || !first.steps.is_empty(),
            "the gate took up the canary"
        );
        std::hint::black_box((d, view, first, second));
    }
    let (decode_ms, view_ms, first_ms, second_ms) =
        (median(t_decode), median(t_view), median(t_first), median(t_second));
    println!("baseline  decode the lists (serde_json → k8s-openapi)   {decode_ms:>9.1} ms");
    println!("gate      build the view                             {view_ms:>9.1} ms");
    println!("gate      decide, first pass (canary taken: {taken} node)   {first_ms:>9.2} ms");
    println!("gate      decide, next pass                          {second_ms:>9.2} ms");
    let own = view_ms + first_ms.max(second_ms);
    println!(
        "gate's own work per pass {own:.1} ms = {:.2}× the baseline (target ≤ 0.25×); a whole pass ≈ {:.0} ms of CPU",
        own / decode_ms,
        own + decode_ms
    );
}
