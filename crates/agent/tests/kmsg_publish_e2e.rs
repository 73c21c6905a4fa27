//! End-to-end: a real Xid line written into the kernel ring buffer through `/dev/kmsg`, for a GPU
//! that the test-served PodResources reports as held by a pod, until the real Kubernetes
//! publisher's server-side apply reaches a mock API server on 127.0.0.1 with that device
//! `Unhealthy` and the pod listed. 100 runs, each on its own GPU; prints p50/p99/max of
//! write → apply-received.
//!
//! The GPUs are scripted NVML GPUs (no driver here) whose PCI addresses sit in a PCI domain
//! picked at random per run of the test, so records left in the ring buffer by earlier runs (the
//! agent replays the boot's log at start) never match. Needs root on Linux to write `/dev/kmsg`;
//! elsewhere it prints why it skipped. `printk_devkmsg` is set to "on" for the test's duration
//! (it rate-limits writes otherwise) and restored afterwards.
//!
//! The latency is printed, not asserted (timings live in docs/benchmarks.md); what is asserted is
//! that every injected fault is published, on the right device, with its pod and its Xid.

mod common;

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{MockApiServer, applied_status};
use devheal_agent::nvml::GpuIdentity;
use devheal_agent::once::SourcePaths;
use devheal_agent::publish::{KubePublisher, PublishConfig};
use devheal_agent::run::{AgentConfig, start};
use devheal_core::HealthSource;
use devheal_k8s::crd::DeviceHealthState;
use devheal_kubelet::api::podresources_v1 as pr;
use devheal_kubelet::server::{PodResourcesServer, PodResourcesState, serve};

const RUNS: usize = 100;
/// Pause between runs: longer than the publisher's 100 ms spacing, so each run measures one
/// fault on its own rather than a fault coalesced into the previous write.
const BETWEEN_RUNS: Duration = Duration::from_millis(150);

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kernel_xid_is_published_unhealthy_with_its_pod() {
    let kmsg = Path::new("/dev/kmsg");
    let mut writer = match OpenOptions::new().write(true).open(kmsg) {
        Ok(file) => file,
        Err(err) => {
            eprintln!(
                "SKIPPED agent kmsg end-to-end test: cannot open /dev/kmsg for writing ({err}); needs root on Linux"
            );
            return;
        }
    };
    let _policy = match devheal_detect::kmsg::UnlimitedKmsgWrites::enable() {
        Ok(policy) => policy,
        Err(reason) => {
            eprintln!("SKIPPED agent kmsg end-to-end test: {reason}");
            return;
        }
    };

    // A PCI domain no earlier run used (not 0000, where real devices live, nor the fake devices').
    let seed =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
            ^ u128::from(std::process::id());
    let domain = format!("{:04x}", 0x1000 + (seed % 0xe000) as u32);
    let marker = format!("devheal-agent-e2e-{domain}");
    let gpus: Vec<GpuIdentity> = (0..RUNS as u32)
        .map(|i| GpuIdentity {
            index: i,
            uuid: format!("GPU-e2e-{domain}-{i:03}"),
            name: "scripted".into(),
            pci_address: format!("{domain}:{i:02x}:00.0"),
            minor: None,
            migs: vec![],
        })
        .collect();

    // The kubelet: pod trainer-<i> holds GPU i.
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("pod-resources.sock");
    let state = PodResourcesState::default();
    state.set_pods(
        gpus.iter()
            .map(|g| pr::PodResources {
                name: format!("trainer-{}", g.index),
                namespace: "ml".into(),
                containers: vec![pr::ContainerResources {
                    name: "trainer".into(),
                    devices: vec![pr::ContainerDevices {
                        resource_name: "nvidia.com/gpu".into(),
                        device_ids: vec![g.uuid.clone()],
                        topology: None,
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    );
    let kubelet = serve(&socket, PodResourcesServer { state }.router()).expect("serve kubelet");

    let mut api = MockApiServer::start().await;
    let mut config = AgentConfig::new("e2e-node");
    config.paths = SourcePaths {
        kmsg: kmsg.to_path_buf(),
        pod_resources_socket: socket,
        device_plugin_dir: dir.path().join("device-plugins"),
        nvml_library: None,
        ..SourcePaths::default()
    };
    config.gpus = common::scripted_gpus(gpus.clone());
    config.metrics_addr = None;
    config.publish = PublishConfig::default();
    let agent = start(config, KubePublisher::new(api.client())).await.expect("agent starts");

    // Ready: every GPU published Healthy with its pod.
    api.next_matching(Duration::from_secs(30), |r| {
        applied_status(r).filter(|s| {
            s.devices.len() == RUNS
                && s.devices.iter().all(|d| d.health == DeviceHealthState::Healthy && d.pods.len() == 1)
        })
    })
    .await
    .expect("every scripted GPU published Healthy with its pod");

    let mut latencies = Vec::with_capacity(RUNS);
    for (i, gpu) in gpus.iter().enumerate() {
        let line = format!(
            "<4>NVRM: Xid (PCI:{domain}:{i:02x}:00): 79, pid=4242, name={marker}-{i}, GPU has fallen off the bus (devheal test record, not a real GPU)\n"
        );
        let written = Instant::now();
        writer.write_all(line.as_bytes()).expect("write one record to /dev/kmsg");
        let uuid = gpu.uuid.clone();
        let pod = format!("trainer-{i}");
        let (request, ()) = api
            .next_matching(Duration::from_secs(10), |r| {
                let status = applied_status(r)?;
                let d = status.devices.iter().find(|d| d.id == uuid)?;
                (d.health == DeviceHealthState::Unhealthy
                    && d.pods.iter().any(|p| p.name == pod && p.namespace == "ml")
                    && d.reasons.iter().any(|x| x.source == HealthSource::KernelLog && x.code == Some(79)))
                .then_some(())
            })
            .await
            .unwrap_or_else(|| {
                panic!("run {i}: GPU {uuid} was not published Unhealthy with {pod} within 10 s")
            });
        latencies.push(request.at.saturating_duration_since(written));
        tokio::time::sleep(BETWEEN_RUNS).await;
    }
    agent.stop().await;
    kubelet.stop().await;

    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    eprintln!(
        "agent end-to-end: {RUNS} Xid records written to /dev/kmsg -> NodeDeviceHealth apply with the device Unhealthy and its pod \
         received by the API server: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (target p99 <= 1000 ms)",
        ms(percentile(&latencies, 0.50)),
        ms(percentile(&latencies, 0.99)),
        ms(latencies[latencies.len() - 1]),
    );
}
