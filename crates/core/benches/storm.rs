//! Benchmark: a rack power event (10,000 pod failures across 1,250 nodes) decided by the engine,
//! against a baseline that scans every pod per input (what a watcher without indexes does), and
//! the engine's memory for 100,000 pods and 160,000 devices against the same pods held in a
//! plain `Vec<PodInfo>`.
//!
//! Run: `cargo bench -p devheal-core --bench storm` (`-- --engine-only` skips the slow baseline
//! and the memory measurement). Times are on-CPU time of the benchmark thread
//! (/proc/thread-self/schedstat), with wall time beside them. Targets: storm ≤ 100 ms on one core; state
//! ≤ 256 MiB. Memory is measured in child processes (this binary re-run with `--memory-child`)
//! from VmRSS/VmHWM in /proc/self/status, so the two measurements do not share an allocator.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::process::Command;
use std::time::Instant;

use devheal_core::{
    Action, ContainerInfo, ContainerState, Device, DeviceKey, Engine, EngineConfig, Health, HealthReason,
    HealthSource, Input, NodeInfo, PodInfo, PodPhase, Time, Vendor,
};

const GANG_SIZE: usize = 64;
const DEVICES_PER_NODE: usize = 8;
const RUNS: usize = 7;

fn device(node: usize, i: usize) -> Device {
    Device {
        key: DeviceKey::new(
            format!("gpu-node-{node:05}"),
            "nvidia.com/gpu",
            format!("GPU-{node:05}-{i}-3f9a2c1e"),
        ),
        pci_address: Some(format!("0000:{:02x}:00.0", 0x18 + i)),
        vendor: Vendor::Nvidia,
        model: Some("NVIDIA H100 80GB HBM3".into()),
    }
}

fn pod(p: usize, failed: bool, now: Time) -> PodInfo {
    let node = p / DEVICES_PER_NODE;
    let gang = p / GANG_SIZE;
    let labels: BTreeMap<String, String> = [
        ("jobset.sigs.k8s.io/jobset-name", format!("train-{gang:04}")),
        ("jobset.sigs.k8s.io/replicatedjob-name", "workers".to_string()),
        ("jobset.sigs.k8s.io/job-index", format!("{}", p % GANG_SIZE)),
        ("jobset.sigs.k8s.io/restart-attempt", "0".to_string()),
        ("batch.kubernetes.io/job-name", format!("train-{gang:04}-workers-{}", p % GANG_SIZE)),
        ("app.kubernetes.io/part-of", "training".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let state = if failed {
        ContainerState::Terminated {
            exit_code: 1,
            signal: None,
            reason: Some("Error".into()),
            message: Some("RuntimeError: CUDA error: unknown error".into()),
            finished_at: Some(now),
        }
    } else {
        ContainerState::Running { started_at: Some(Time::ZERO) }
    };
    PodInfo {
        uid: format!("0c5e{p:08}-8d2b-4f6a-9c1e-5b7d3a2f1e0d"),
        namespace: "training".into(),
        name: format!("train-{gang:04}-workers-{}-0-x7k2p", p % GANG_SIZE),
        node: Some(format!("gpu-node-{node:05}")),
        labels,
        owner: Some(("Job".into(), format!("train-{gang:04}-workers-{}", p % GANG_SIZE))),
        restart_policy: Some("Never".into()),
        phase: if failed { PodPhase::Failed } else { PodPhase::Running },
        containers: vec![ContainerInfo { name: "pytorch".into(), state, ..ContainerInfo::default() }],
        devices: vec![device(node, p % DEVICES_PER_NODE).key],
        start_time: Some(Time::ZERO),
        ..PodInfo::default()
    }
}

fn build_engine(nodes: usize, pods: usize) -> Engine {
    let mut engine = Engine::new(EngineConfig::default());
    for n in 0..nodes {
        let name = format!("gpu-node-{n:05}");
        let info = NodeInfo {
            name: name.clone(),
            boot_id: Some(format!("boot-{n}")),
            driver_version: Some("570.86.15".into()),
            rack: Some(format!("rack-{:03}", n / 16)),
            ..NodeInfo::default()
        };
        engine.handle(Input::NodeUpsert(info), Time::ZERO);
        let devices = (0..DEVICES_PER_NODE).map(|i| device(n, i)).collect();
        engine.handle(Input::Devices { node: name, devices }, Time::ZERO);
    }
    for p in 0..pods {
        engine.handle(Input::PodUpsert(pod(p, false, Time::ZERO)), Time::ZERO);
    }
    engine
}

/// The storm: every device loses power (reported Unhealthy), then every pod fails, within 30 s.
/// Inputs with the time each is observed at.
type TimedInputs = Vec<(Input, Time)>;

fn storm_inputs(pods: usize) -> (TimedInputs, TimedInputs) {
    let health = (0..pods)
        .map(|p| {
            let t = Time::from_secs(1_000) + devheal_core::Duration::from_millis((p as i64 * 3) % 30_000);
            let reason = HealthReason {
                source: HealthSource::Nvml,
                code: Some(79),
                message: "GPU has fallen off the bus".into(),
                first_seen: t,
                last_seen: t,
                count: 1,
            };
            let key = device(p / DEVICES_PER_NODE, p % DEVICES_PER_NODE).key;
            (Input::DeviceHealth { device: key, health: Health::Unhealthy, reasons: vec![reason] }, t)
        })
        .collect();
    let failures = (0..pods)
        .map(|p| {
            let t = Time::from_secs(1_031) + devheal_core::Duration::from_millis(p as i64 % 30_000);
            (Input::PodUpsert(pod(p, true, t)), t)
        })
        .collect();
    (health, failures)
}

/// The baseline: a watcher that keeps a list of pods and scans all of them for every input
/// (to find the pods on a device, and a failed pod's gang), with one restart per gang.
struct ScanningWatcher {
    pods: Vec<PodInfo>,
    unhealthy: Vec<DeviceKey>,
    restarted: Vec<String>,
}

impl ScanningWatcher {
    fn handle(&mut self, input: &Input) -> usize {
        let mut actions = 0;
        match input {
            Input::DeviceHealth { device, health: Health::Unhealthy, .. } => {
                self.unhealthy.push(device.clone());
                for p in &self.pods {
                    if p.devices.contains(device) {
                        actions += self.restart(p);
                    }
                }
            }
            Input::PodUpsert(failed) => {
                let bad = failed.devices.iter().any(|d| self.unhealthy.contains(d));
                if bad {
                    for p in &self.pods {
                        if p.uid == failed.uid {
                            actions += self.restart(p);
                        }
                    }
                }
            }
            _ => {}
        }
        actions
    }

    fn restart(&self, p: &PodInfo) -> usize {
        let gang = p.labels.get("jobset.sigs.k8s.io/jobset-name").cloned().unwrap_or_default();
        let members = self
            .pods
            .iter()
            .filter(|q| q.labels.get("jobset.sigs.k8s.io/jobset-name") == Some(&gang))
            .count();
        usize::from(!self.restarted.contains(&gang) && members > 0)
    }
}

/// Nanoseconds this thread has run on a CPU (first field of /proc/thread-self/schedstat): on a
/// loaded machine it separates the engine's cost from time spent waiting for a core.
fn cpu_ns() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()))
        .unwrap_or(f64::NAN)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Child process: build one structure and print `rss_delta_kib hwm_kib`.
fn memory_child(what: &str) {
    let before = status_kib("VmRSS:");
    match what {
        "engine" => {
            let engine = build_engine(20_000, 100_000);
            let after = status_kib("VmRSS:");
            println!("{} {}", after.saturating_sub(before), status_kib("VmHWM:"));
            black_box(&engine);
        }
        _ => {
            let pods: Vec<PodInfo> = (0..100_000).map(|p| pod(p, false, Time::ZERO)).collect();
            let devices: Vec<Device> =
                (0..20_000).flat_map(|n| (0..DEVICES_PER_NODE).map(move |i| device(n, i))).collect();
            let after = status_kib("VmRSS:");
            println!("{} {}", after.saturating_sub(before), status_kib("VmHWM:"));
            black_box((&pods, &devices));
        }
    }
}

fn measure_memory(what: &str) -> Option<(f64, f64)> {
    let exe = std::env::current_exe().ok()?;
    let out = Command::new(exe).arg("--memory-child").arg(what).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text.split_whitespace().map(|v| v.parse::<f64>().unwrap_or(0.0) / 1024.0);
    Some((it.next()?, it.next()?))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--memory-child") {
        memory_child(args.get(i + 1).map(String::as_str).unwrap_or("engine"));
        return;
    }

    let (nodes, pods) = (1_250, 10_000);
    println!(
        "storm: {pods} pod failures (and {pods} devices reported Unhealthy) across {nodes} nodes, gangs of {GANG_SIZE}"
    );
    let base = build_engine(nodes, pods);
    let (health, failures) = storm_inputs(pods);

    let mut engine_failures_ms = Vec::new();
    let mut engine_failures_cpu_ms = Vec::new();
    let mut engine_total_ms = Vec::new();
    let mut engine_total_cpu_ms = Vec::new();
    let mut restarts = 0;
    let mut marks = 0;
    let mut held = 0;
    for _ in 0..RUNS {
        let mut engine = base.clone();
        // Inputs are built before the clock starts: only the engine is timed.
        let (health_run, failures_run) = (health.clone(), failures.clone());
        let mut out = Vec::with_capacity(4 * pods);
        let start = Instant::now();
        let cpu_start = cpu_ns();
        for (input, t) in health_run {
            out.extend(engine.handle(input, t));
        }
        let mid = Instant::now();
        let cpu_mid = cpu_ns();
        for (input, t) in failures_run {
            out.extend(engine.handle(input, t));
        }
        let cpu_end = cpu_ns();
        let end = Instant::now();
        engine_failures_ms.push((end - mid).as_secs_f64() * 1e3);
        engine_failures_cpu_ms.push((cpu_end - cpu_mid) / 1e6);
        engine_total_cpu_ms.push((cpu_end - cpu_start) / 1e6);
        engine_total_ms.push((end - start).as_secs_f64() * 1e3);
        restarts = out.iter().filter(|a| matches!(a.action, Action::RestartGang { .. })).count();
        marks = out.iter().filter(|a| matches!(a.action, Action::MarkPod { .. })).count();
        held = engine.safety_state(Time::from_secs(2_000)).held_by_breaker;
        black_box(&out);
    }

    let engine_only = args.iter().any(|a| a == "--engine-only");
    // The baseline sees the same storm; its device reports are applied untimed (they only
    // record the device), and each pod failure is timed: a scan of all pods per input.
    let mut scan_failures_ms = Vec::new();
    for _ in 0..if engine_only { 1 } else { 3 } {
        let mut watcher = ScanningWatcher {
            pods: (0..pods).map(|p| pod(p, false, Time::ZERO)).collect(),
            unhealthy: Vec::new(),
            restarted: Vec::new(),
        };
        if engine_only {
            scan_failures_ms.push(f64::NAN);
            break;
        }
        for (input, _) in &health {
            if let Input::DeviceHealth { device, .. } = input {
                watcher.unhealthy.push(device.clone());
            }
        }
        let cpu_start = cpu_ns();
        let mut n = 0;
        for (input, _) in &failures {
            n += watcher.handle(input);
        }
        let cpu_end = cpu_ns();
        black_box(n);
        scan_failures_ms.push((cpu_end - cpu_start) / 1e6);
    }

    let (ef, et) = (median(engine_failures_cpu_ms), median(engine_total_cpu_ms));
    let et_wall = median(engine_total_ms);
    let ef_wall = median(engine_failures_ms);
    let sf = median(scan_failures_ms);
    println!(
        "  engine, {pods} pod failures: median {ef:9.2} ms on-CPU ({ef_wall:.2} ms wall), {RUNS} runs (target <= 100 ms)"
    );
    println!(
        "  engine, whole storm (+{pods} device reports): median {et:9.2} ms on-CPU ({et_wall:.2} ms wall), {RUNS} runs"
    );
    println!("  baseline scan-all-pods watcher, failures:   median {sf:9.2} ms on-CPU over 3 runs");
    println!("  ratio baseline/engine (pod failures, on-CPU): {:.1}x", sf / ef);
    println!(
        "  engine: {restarts} gang restarts and {marks} pod marks before/after its breaker opened, {held} steps held"
    );
    println!("  storm within target: {}", if ef <= 100.0 { "yes" } else { "NO" });

    if engine_only {
        return;
    }
    println!("memory: 100,000 pods + 160,000 devices on 20,000 nodes (child processes, /proc/self/status)");
    match (measure_memory("engine"), measure_memory("vec")) {
        (Some((e_rss, e_hwm)), Some((v_rss, v_hwm))) => {
            println!(
                "  engine state:        VmRSS growth {e_rss:8.1} MiB (VmHWM {e_hwm:8.1} MiB; target <= 256 MiB)"
            );
            println!(
                "  baseline Vec<PodInfo> + Vec<Device>: VmRSS growth {v_rss:8.1} MiB (VmHWM {v_hwm:8.1} MiB)"
            );
            println!("  ratio engine/baseline: {:.2}x", e_rss / v_rss.max(0.1));
            println!("  memory within target: {}", if e_rss <= 256.0 { "yes" } else { "NO" });
        }
        _ => println!("  memory: could not run the child process or read /proc/self/status"),
    }
}
