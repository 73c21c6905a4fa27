//! Benchmark: the controller's decision latency and memory with 100,000 pods in the index.
//!
//! The cluster: 12,500 nodes × 8 GPUs, 100,000 single-GPU pods (8 per node) in JobSet gangs of
//! 64 (8 nodes each), 12,500 NodeDeviceHealth objects, all fed through the controller exactly as
//! the watches deliver them (k8s-openapi objects in kube-runtime watcher events). Then ≥ 1,000
//! updates, alternating:
//! - a pod update (a container restarted: the index converts it, sees it changed, the engine
//!   attributes it; no action), and
//! - a GPU turning Unhealthy in its node's NodeDeviceHealth (the index converts the object, the
//!   engine plans quarantine, repair, mark and a 64-pod gang restart, handed to a recording
//!   actuator),
//!
//! each timed from the event's arrival at the controller to its last action being handed to the
//! actuator (or, with no action, to the end of its handling). Same-run baselines on the same
//! updates: the raw conversion alone (`pod_from_k8s`, NodeDeviceHealth conversion), and a naive
//! controller without an index that scans every pod per update. Memory: VmRSS of child processes
//! (this binary re-run with `--memory-child`) holding the controller with 100,000 pods, against
//! the same pods held as k8s-openapi objects (what a kube reflector store keeps), and the engine
//! alone for the breakdown.
//!
//! Then workload progress: every node publishes its NodeDeviceHealth with its 8 pods' progress
//! (`status.workloads`, the latest 5 one-minute windows each, as the agent does) once a minute for
//! `--progress-minutes` minutes (default 6), one member of gang 0 running 20 % slow. Each update
//! is timed as above; the same-run baseline is a minute of the same objects without workloads (a
//! plain heartbeat). The run checks the slow member was found and no one else.
//!
//! Run: `cargo bench -p devheal-controller --bench decision` (`-- --updates N`). Targets: p99 ≤ 10 ms;
//! RSS ≤ 300 MiB.

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use devheal_controller::{
    AlwaysLeader, Clock, ClusterEvent, Controller, ControllerSettings, LoopHealth, ManualClock, Metrics,
};
use devheal_core::{
    ActionOutcome, Actuator, DeviceKey, Duration, EngineConfig, PlannedAction, PodInfo, Time,
};
use devheal_k8s::crd::{
    DeviceStatus, HealthReasonStatus, NodeDeviceHealth, NodeDeviceHealthSpec, NodeDeviceHealthStatus,
    ProgressReporter, ProgressWindow, ReasonSource, WorkloadProgress, k8s_time,
};
use devheal_k8s::pod_from_k8s;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::watcher::Event;

const NODES: usize = 12_500;
const GPUS: usize = 8;
const GANG: usize = 64;
const PODS: usize = NODES * GPUS;
const START: Time = Time::from_secs(1_800_000_000);

fn node_name(n: usize) -> String {
    format!("gpu-node-{n:05}")
}

fn gpu(n: usize, i: usize) -> String {
    format!("GPU-{n:05}-{i}-3f9a2c1e-8d2b-4f6a")
}

fn pod_uid(p: usize) -> String {
    format!("0c5e{p:08}-8d2b-4f6a-9c1e-5b7d3a2f1e0d")
}

fn pod(p: usize, restarts: i32) -> Pod {
    let n = p / GPUS;
    let g = p / GANG;
    let last = if restarts > 0 {
        serde_json::json!({"terminated": {"exitCode": 1, "reason": "Error", "finishedAt": "2027-01-15T08:00:00Z"}})
    } else {
        serde_json::json!({})
    };
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": format!("train-{g:04}-workers-{}-0-x7k2p", p % GANG), "namespace": "training",
            "uid": pod_uid(p), "resourceVersion": format!("{}", 1000 + restarts),
            "labels": {
                "jobset.sigs.k8s.io/jobset-name": format!("train-{g:04}"),
                "jobset.sigs.k8s.io/replicatedjob-name": "workers",
                "jobset.sigs.k8s.io/job-index": format!("{}", p % GANG),
                "jobset.sigs.k8s.io/restart-attempt": "0",
                "batch.kubernetes.io/job-name": format!("train-{g:04}-workers-{}", p % GANG),
                "app.kubernetes.io/part-of": "training"
            },
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": format!("train-{g:04}-workers-{}", p % GANG),
                                 "uid": format!("job-{g}-{}", p % GANG), "controller": true}]
        },
        "spec": {"nodeName": node_name(n), "restartPolicy": "Never",
                 "containers": [{"name": "pytorch", "image": "nvcr.io/nvidia/pytorch:25.01-py3",
                                 "resources": {"limits": {"nvidia.com/gpu": "1"}}}]},
        "status": {"phase": "Running", "startTime": "2027-01-15T07:00:00Z", "containerStatuses": [{
            "name": "pytorch", "image": "nvcr.io/nvidia/pytorch:25.01-py3", "imageID": "", "ready": true,
            "restartCount": restarts,
            "state": {"running": {"startedAt": "2027-01-15T07:00:00Z"}},
            "lastState": last,
            "allocatedResourcesStatus": [{"name": "nvidia.com/gpu", "resources": [{"resourceID": gpu(n, p % GPUS), "health": "Healthy"}]}]
        }]}
    }))
    .unwrap_or_default()
}

fn node(n: usize) -> Node {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": node_name(n), "labels": {"devheal.io/rack": format!("rack-{:03}", n / 16),
                     "nvidia.com/cuda.driver-version.full": "570.86.15"}},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]}
    }))
    .unwrap_or_default()
}

fn health(n: usize, failed: Option<(usize, Time)>) -> NodeDeviceHealth {
    let name = node_name(n);
    let devices = (0..GPUS)
        .map(|i| {
            let bad = failed.filter(|(f, _)| *f == i).map(|(_, t)| k8s_time(t));
            DeviceStatus {
                id: gpu(n, i),
                resource: "nvidia.com/gpu".into(),
                vendor: devheal_core::Vendor::Nvidia,
                model: Some("NVIDIA H100 80GB HBM3".into()),
                pci_address: Some(format!("0000:{:02x}:00.0", 0x18 + i)),
                health: if bad.is_some() {
                    devheal_core::Health::Unhealthy
                } else {
                    devheal_core::Health::Healthy
                },
                reasons: bad
                    .map(|t| {
                        vec![HealthReasonStatus {
                            source: ReasonSource::KernelLog,
                            code: Some(79),
                            message: "GPU has fallen off the bus".into(),
                            first_seen: t.clone(),
                            last_seen: t,
                            count: 1,
                        }]
                    })
                    .unwrap_or_default(),
                ..DeviceStatus::default()
            }
        })
        .collect();
    let mut obj =
        NodeDeviceHealth::new(&name, NodeDeviceHealthSpec { node_name: name.clone(), ..Default::default() });
    obj.status = Some(NodeDeviceHealthStatus { devices, ..NodeDeviceHealthStatus::default() });
    obj
}

/// Node `n`'s NodeDeviceHealth at minute `minute` of the progress phase: its pods' latest five
/// closed windows (with `progress`), or none (the baseline heartbeat). Pod 5 (gang 0) runs 20 %
/// slow; everyone else within ±0.5 %.
fn health_with_progress(n: usize, now: Time, progress: bool) -> NodeDeviceHealth {
    let mut obj = health(n, None);
    let status = obj.status.get_or_insert_with(NodeDeviceHealthStatus::default);
    status.last_heartbeat = Some(k8s_time(now));
    if !progress {
        return obj;
    }
    let window = now.as_nanos() / 60_000_000_000;
    status.workloads = (0..GPUS)
        .map(|i| {
            let p = n * GPUS + i;
            let factor = if p == 5 { 1.2 } else { 1.0 + 0.005 * ((p % 3) as f64 - 1.0) };
            WorkloadProgress {
                namespace: "training".into(),
                name: format!("train-{:04}-workers-{}-0-x7k2p", p / GANG, p % GANG),
                uid: Some(pod_uid(p)),
                reporter: ProgressReporter::Endpoint,
                last_progress: Some(k8s_time(now - Duration::from_secs(1))),
                step: Some(window as u64 * 6),
                steps: window as u64 * 6,
                window_seconds: 60,
                windows: (window - 5..window)
                    .map(|w| ProgressWindow {
                        start: k8s_time(Time::from_secs(w * 60)),
                        samples: 60,
                        step_seconds: factor,
                    })
                    .collect(),
                ..WorkloadProgress::default()
            }
        })
        .collect();
    obj
}

/// Records when each action was handed over; does nothing else.
#[derive(Clone, Default)]
struct Recording {
    last: Arc<Mutex<Option<Instant>>>,
    count: Arc<Mutex<usize>>,
}

/// The benchmark has no FailurePolicy objects: no status is ever due.
impl devheal_controller::PolicyStatusWriter for Recording {
    async fn write_policy_status(
        &self,
        _namespace: &str,
        _name: &str,
        _status: &devheal_k8s::crd::FailurePolicyStatus,
    ) -> Result<(), devheal_k8s::StatusWriteError> {
        Ok(())
    }
}

impl Actuator for Recording {
    async fn execute(&self, _planned: &PlannedAction) -> ActionOutcome {
        let now = Instant::now();
        if let Ok(mut l) = self.last.lock() {
            *l = Some(now);
        }
        if let Ok(mut c) = self.count.lock() {
            *c += 1;
        }
        ActionOutcome::Done
    }
}

type Bench = Controller<Recording, AlwaysLeader, ManualClock>;

fn settings() -> ControllerSettings {
    let mut engine = EngineConfig::default();
    // Room for every failure of the run: the benchmark measures deciding, not budget refusals.
    engine.safety.max_quarantined_nodes = 100_000;
    engine.safety.max_quarantined_nodes_percent = 100.0;
    ControllerSettings { engine, ..ControllerSettings::default() }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    futures::executor::block_on(f)
}

/// A controller holding the whole cluster, fed as the watches would.
fn build(clock: &ManualClock, recording: &Recording) -> Bench {
    let mut c = Controller::new(
        settings(),
        recording.clone(),
        AlwaysLeader,
        clock.clone(),
        Arc::new(Metrics::new()),
        Arc::new(LoopHealth::new(std::time::Duration::from_secs(60))),
    );
    block_on(async {
        c.handle_event(ClusterEvent::Node(Event::Init)).await;
        for n in 0..NODES {
            c.handle_event(ClusterEvent::Node(Event::InitApply(node(n)))).await;
        }
        c.handle_event(ClusterEvent::Node(Event::InitDone)).await;
        c.handle_event(ClusterEvent::NodeHealth(Event::Init)).await;
        for n in 0..NODES {
            c.handle_event(ClusterEvent::NodeHealth(Event::InitApply(health(n, None)))).await;
        }
        c.handle_event(ClusterEvent::NodeHealth(Event::InitDone)).await;
        c.handle_event(ClusterEvent::Policy(Event::Init)).await;
        c.handle_event(ClusterEvent::Policy(Event::InitDone)).await;
        c.handle_event(ClusterEvent::Pod(Event::Init)).await;
        for p in 0..PODS {
            c.handle_event(ClusterEvent::Pod(Event::InitApply(pod(p, 0)))).await;
        }
        c.handle_event(ClusterEvent::Pod(Event::InitDone)).await;
    });
    c
}

/// Update `k`: even, a pod's container restarts; odd, a GPU fails (on a different gang each time).
enum Update {
    Pod(Box<Pod>),
    Gpu(usize, usize, Box<NodeDeviceHealth>),
}

fn update(k: usize, at: Time) -> Update {
    if k.is_multiple_of(2) {
        let p = (k * 104_729) % PODS;
        Update::Pod(Box::new(pod(p, 1 + (k / 2) as i32)))
    } else {
        // Nodes 8 apart are in different gangs.
        let n = ((k / 2) * 8 * 97) % NODES;
        let i = k % GPUS;
        Update::Gpu(n, i, Box::new(health(n, Some((i, at)))))
    }
}

fn percentile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * q).round() as usize;
    v[i.min(v.len() - 1)]
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn memory_child(what: &str) {
    let before = status_kib("VmRSS:");
    match what {
        "controller" => {
            let clock = ManualClock::new(START);
            let c = build(&clock, &Recording::default());
            let rss = status_kib("VmRSS:");
            println!("{} {} {}", rss, rss.saturating_sub(before), status_kib("VmHWM:"));
            std::hint::black_box(&c);
        }
        "progress" => {
            // Every pod reports progress: two minutes of publications, so the monitor holds
            // every member, every gang's detector and its pending windows.
            let clock = ManualClock::new(START);
            let mut c = build(&clock, &Recording::default());
            for minute in 1..=2 {
                let now = START + Duration::from_mins(minute);
                clock.set(now + Duration::from_secs(2));
                for n in 0..NODES {
                    let obj = health_with_progress(n, now, true);
                    block_on(c.handle_event(ClusterEvent::NodeHealth(Event::Apply(obj))));
                }
            }
            let rss = status_kib("VmRSS:");
            println!("{} {} {}", rss, rss.saturating_sub(before), status_kib("VmHWM:"));
            std::hint::black_box(&c);
        }
        "engine" => {
            let mut e = devheal_core::Engine::new(settings().engine);
            for n in 0..NODES {
                e.handle(devheal_core::Input::NodeUpsert(devheal_k8s::node_from_k8s(&node(n))), START);
            }
            for p in 0..PODS {
                if let Ok(info) = pod_from_k8s(&pod(p, 0)) {
                    e.handle(devheal_core::Input::PodUpsert(info), START);
                }
            }
            let rss = status_kib("VmRSS:");
            println!("{} {} {}", rss, rss.saturating_sub(before), status_kib("VmHWM:"));
            std::hint::black_box(&e);
        }
        _ => {
            let pods: Vec<Pod> = (0..PODS).map(|p| pod(p, 0)).collect();
            let nodes: Vec<Node> = (0..NODES).map(node).collect();
            let health: Vec<NodeDeviceHealth> = (0..NODES).map(|n| health(n, None)).collect();
            let rss = status_kib("VmRSS:");
            println!("{} {} {}", rss, rss.saturating_sub(before), status_kib("VmHWM:"));
            std::hint::black_box((&pods, &nodes, &health));
        }
    }
}

fn measure_memory(what: &str) -> Option<(f64, f64, f64)> {
    let exe = std::env::current_exe().ok()?;
    let out = Command::new(exe).arg("--memory-child").arg(what).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Vec<f64> = text.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    (v.len() == 3).then(|| (v[0] / 1024.0, v[1] / 1024.0, v[2] / 1024.0))
}

/// The naive baseline: every pod as converted, scanned per update.
fn naive(pods: &mut [PodInfo], up: &Update) -> usize {
    match up {
        Update::Pod(obj) => {
            let Ok(info) = pod_from_k8s(obj) else { return 0 };
            match pods.iter_mut().find(|p| p.uid == info.uid) {
                Some(slot) => {
                    *slot = info;
                    1
                }
                None => 0,
            }
        }
        Update::Gpu(n, i, _) => {
            let key = DeviceKey::new(node_name(*n), "nvidia.com/gpu", gpu(*n, *i));
            let on_device: Vec<&PodInfo> = pods.iter().filter(|p| p.devices.contains(&key)).collect();
            let gangs: Vec<String> = on_device
                .iter()
                .filter_map(|p| p.labels.get("jobset.sigs.k8s.io/jobset-name").cloned())
                .collect();
            pods.iter()
                .filter(|p| p.labels.get("jobset.sigs.k8s.io/jobset-name").is_some_and(|g| gangs.contains(g)))
                .count()
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--memory-child") {
        memory_child(args.get(i + 1).map(String::as_str).unwrap_or("controller"));
        return;
    }
    let updates: usize = args
        .iter()
        .position(|a| a == "--updates")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000)
        .max(2);

    println!(
        "decision benchmark: {PODS} pods (gangs of {GANG}, 1 GPU each) on {NODES} nodes x {GPUS} GPUs, {updates} updates"
    );
    let clock = ManualClock::new(START);
    let recording = Recording::default();
    let t = Instant::now();
    let mut controller = build(&clock, &recording);
    println!(
        "  initial lists (nodes, NodeDeviceHealth, pods) through index + engine: {:.2} s",
        t.elapsed().as_secs_f64()
    );

    let mut all = Vec::new();
    let mut pod_lat = Vec::new();
    let mut gpu_lat = Vec::new();
    let mut conversion = Vec::new();
    let mut actions = 0usize;
    let mut inputs: Vec<Update> = Vec::new();
    for k in 0..updates {
        // A minute apart: failures on distinct nodes never look correlated to the breaker.
        clock.advance(Duration::from_secs(60));
        let up = update(k, clock.now());
        let event = match &up {
            Update::Pod(obj) => ClusterEvent::Pod(Event::Apply((**obj).clone())),
            Update::Gpu(_, _, obj) => ClusterEvent::NodeHealth(Event::Apply((**obj).clone())),
        };
        if let Ok(mut l) = recording.last.lock() {
            *l = None;
        }
        let before = recording.count.lock().map(|c| *c).unwrap_or(0);
        let arrival = Instant::now();
        block_on(controller.handle_event(event));
        let end = Instant::now();
        let last = recording.last.lock().ok().and_then(|l| *l).unwrap_or(end);
        let ms = last.duration_since(arrival).as_secs_f64() * 1e3;
        let handed = recording.count.lock().map(|c| *c).unwrap_or(0) - before;
        actions += handed;
        all.push(ms);
        match &up {
            Update::Pod(..) => pod_lat.push(ms),
            Update::Gpu(..) => gpu_lat.push(ms),
        }
        // Raw conversion of the same object, same run.
        let t = Instant::now();
        match &up {
            Update::Pod(obj) => {
                std::hint::black_box(pod_from_k8s(obj).ok());
            }
            Update::Gpu(_, _, obj) => {
                let json = serde_json::to_value(&**obj).unwrap_or_default();
                let doc: Option<devheal_k8s::node_health::NodeDeviceHealth> =
                    serde_json::from_value(json).ok();
                std::hint::black_box(doc.map(|d| d.reports().ok()));
            }
        }
        conversion.push(t.elapsed().as_secs_f64() * 1e3);
        if k % 10 == 9 {
            block_on(controller.tick());
        }
        inputs.push(up);
    }
    let gang_restarts = controller.metrics().action_count("restart_gang", "done");
    let p50 = percentile(&mut all, 0.5);
    let p99 = percentile(&mut all, 0.99);
    println!(
        "  controller (index + engine + hand-off), all updates: p50 {p50:7.3} ms  p99 {p99:7.3} ms  max {:7.3} ms",
        all.last().copied().unwrap_or(0.0)
    );
    println!(
        "    pod updates:        p50 {:7.3} ms  p99 {:7.3} ms",
        percentile(&mut pod_lat, 0.5),
        percentile(&mut pod_lat, 0.99)
    );
    println!(
        "    GPU failures:       p50 {:7.3} ms  p99 {:7.3} ms  ({actions} actions handed over, {gang_restarts} gang restarts)",
        percentile(&mut gpu_lat, 0.5),
        percentile(&mut gpu_lat, 0.99)
    );
    let c50 = percentile(&mut conversion, 0.5);
    let c99 = percentile(&mut conversion, 0.99);
    println!("  baseline raw conversion of the same objects: p50 {c50:7.3} ms  p99 {c99:7.3} ms");
    println!(
        "  ratio controller/conversion: p50 {:.1}x  p99 {:.1}x",
        p50 / c50.max(1e-9),
        p99 / c99.max(1e-9)
    );

    // The naive controller: every pod converted and kept in a Vec, scanned per update.
    let mut pods: Vec<PodInfo> = (0..PODS).filter_map(|p| pod_from_k8s(&pod(p, 0)).ok()).collect();
    let sample = inputs.len().min(200);
    let mut scan = Vec::new();
    for up in inputs.iter().take(sample) {
        let t = Instant::now();
        std::hint::black_box(naive(&mut pods, up));
        scan.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let s50 = percentile(&mut scan, 0.5);
    let s99 = percentile(&mut scan, 0.99);
    println!(
        "  baseline naive full scan (no index), first {sample} updates: p50 {s50:7.3} ms  p99 {s99:7.3} ms"
    );
    println!("  ratio naive/controller: p50 {:.1}x  p99 {:.1}x", s50 / p50.max(1e-9), s99 / p99.max(1e-9));
    println!("  latency within target (p99 <= 10 ms): {}", if p99 <= 10.0 { "yes" } else { "NO" });
    drop(pods);

    let minutes: i64 = args
        .iter()
        .position(|a| a == "--progress-minutes")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(6)
        .max(1);
    println!(
        "progress: {NODES} NodeDeviceHealth updates a minute, each with its {GPUS} pods' last 5 windows, {minutes} minutes"
    );
    let base = START + Duration::from_hours(24 * 30);
    let time_updates = |controller: &mut Bench, minute: i64, progress: bool| -> (Vec<f64>, f64) {
        let now = base + Duration::from_mins(minute);
        clock.set(now + Duration::from_secs(2));
        let mut lat = Vec::with_capacity(NODES);
        let t = Instant::now();
        for n in 0..NODES {
            let obj = health_with_progress(n, now, progress);
            let arrival = Instant::now();
            block_on(controller.handle_event(ClusterEvent::NodeHealth(Event::Apply(obj))));
            lat.push(arrival.elapsed().as_secs_f64() * 1e3);
        }
        let total = t.elapsed().as_secs_f64();
        block_on(controller.tick());
        (lat, total)
    };
    let (mut plain, plain_total) = time_updates(&mut controller, 0, false);
    let mut with = Vec::new();
    let mut with_total = 0.0;
    for minute in 1..=minutes {
        let (lat, total) = time_updates(&mut controller, minute, true);
        with.extend(lat);
        with_total += total;
    }
    let (b50, b99) = (percentile(&mut plain, 0.5), percentile(&mut plain, 0.99));
    let (w50, w99) = (percentile(&mut with, 0.5), percentile(&mut with, 0.99));
    println!(
        "  baseline, the same objects without workloads (heartbeat): p50 {b50:7.3} ms  p99 {b99:7.3} ms"
    );
    println!(
        "  with workloads (index + progress monitor + engine):      p50 {w50:7.3} ms  p99 {w99:7.3} ms  max {:7.3} ms",
        with.last().copied().unwrap_or(0.0)
    );
    println!("  ratio with/without: p50 {:.2}x  p99 {:.2}x", w50 / b50.max(1e-9), w99 / b99.max(1e-9));
    println!(
        "  one minute of the fleet's publications: {:.2} s with workloads, {plain_total:.2} s without (one core)",
        with_total / minutes as f64
    );
    let found = controller.metrics().progress_findings("straggler");
    println!(
        "  stragglers found: {found} (expected 1: train-0000-workers-5 once 3 of 4 windows are slow); marked: {}",
        controller.progress().is_straggler(&pod_uid(5))
    );
    drop(controller);

    println!("memory: child processes, /proc/self/status");
    match (measure_memory("controller"), measure_memory("store")) {
        (Some((c_rss, c_growth, c_hwm)), Some((s_rss, s_growth, s_hwm))) => {
            println!(
                "  controller with {PODS} pods:  VmRSS {c_rss:7.1} MiB (growth {c_growth:7.1}, VmHWM {c_hwm:7.1}; target <= 300 MiB)"
            );
            println!(
                "  baseline: the same objects as k8s-openapi values (a reflector store): VmRSS {s_rss:7.1} MiB (growth {s_growth:7.1}, VmHWM {s_hwm:7.1})"
            );
            println!("  ratio controller/store (RSS): {:.2}x", c_rss / s_rss.max(0.1));
            if let Some((e_rss, e_growth, _)) = measure_memory("engine") {
                println!(
                    "  of which the engine alone (same pods as PodInfo inputs): VmRSS {e_rss:7.1} MiB (growth {e_growth:7.1})"
                );
            }
            println!("  memory within target: {}", if c_rss <= 300.0 { "yes" } else { "NO" });
            if let Some((p_rss, p_growth, _)) = measure_memory("progress") {
                println!(
                    "  controller with every pod reporting progress (2 minutes of windows): VmRSS {p_rss:7.1} MiB (growth {p_growth:7.1})"
                );
            }
        }
        _ => println!("  memory: could not run the child process or read /proc/self/status"),
    }
}
