//! The node's PCIe topology in the running agent: a fatal AER on a root port reaches the GPU below
//! it. The lines are real (crates/detect/tests/data/real-lines.txt, lines 43 and 47: a fatal AER on
//! `0000:00:02.0`, then `nvidia 0000:02:00.0: device has no AER-aware driver`); NVML is played by
//! scripted GPUs, sysfs by a tree of directories and links laid out as the kernel lays them out,
//! the kernel log by a saved log file the test appends records to. Without the topology the port
//! is no device the agent knows and the GPU behind it stays Healthy.

mod common;

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use common::{ChannelPublisher, test_config};
use devheal_agent::nvml::{FakeGpuTelemetry, GpuIdentity, GpuSample};
use devheal_agent::run::{GpuSource, start};
use devheal_core::HealthSource;
use devheal_k8s::crd::{DeviceHealthState, NodeDeviceHealth, NodeDeviceHealthStatus};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(20);
const BELOW: &str = "GPU-4404041a-04cf-1ccf-9e70-f139a9b1e23c";
const ELSEWHERE: &str = "GPU-9e6df7cb-64d4-5e53-2b1d-cee9e58aeb94";

/// `devices/<path>` with `vendor` and `class`, and `bus/pci/devices/<address>` linking to it.
fn fake_sysfs(root: &Path, functions: &[(&str, &str, &str)]) -> std::path::PathBuf {
    let bus = root.join("bus/pci/devices");
    std::fs::create_dir_all(&bus).expect("bus dir");
    for (path, vendor, class) in functions {
        let dir = root.join("devices").join(path);
        std::fs::create_dir_all(&dir).expect("device dir");
        std::fs::write(dir.join("vendor"), format!("{vendor}\n")).expect("vendor");
        std::fs::write(dir.join("class"), format!("{class}\n")).expect("class");
        let address = path.rsplit('/').next().expect("an address");
        std::os::unix::fs::symlink(&dir, bus.join(address)).expect("the bus link");
    }
    bus
}

fn gpu(index: u32, uuid: &str, pci: &str) -> GpuIdentity {
    GpuIdentity {
        index,
        uuid: uuid.into(),
        name: "scripted".into(),
        pci_address: pci.into(),
        minor: Some(index),
        migs: Vec::new(),
    }
}

fn health(status: &NodeDeviceHealthStatus, id: &str) -> Option<DeviceHealthState> {
    status.devices.iter().find(|d| d.id == id).map(|d| d.health)
}

async fn wait_for(
    rx: &mut mpsc::UnboundedReceiver<NodeDeviceHealth>,
    what: &str,
    ok: impl Fn(&NodeDeviceHealthStatus) -> bool,
) -> NodeDeviceHealthStatus {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut last = None;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(object)) => {
                let status = object.status.expect("a status");
                if ok(&status) {
                    return status;
                }
                last = Some(status);
            }
            _ => panic!("never published: {what}; last seen {last:#?}"),
        }
    }
}

/// A `/dev/kmsg` record of `message` at priority `level`, timed now.
fn record(seq: u64, level: u8, message: &str) -> String {
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(1000.0);
    format!("{level},{seq},{},-;{message}\n", (uptime * 1e6) as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_aer_on_a_root_port_makes_the_gpu_below_it_unhealthy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path(), "node-a");
    config.paths.pci_devices_dir = fake_sysfs(
        &dir.path().join("sys"),
        &[
            ("pci0000:00/0000:00:02.0", "0x8086", "0x060400"),
            ("pci0000:00/0000:00:02.0/0000:02:00.0", "0x10de", "0x030200"),
            ("pci0000:00/0000:00:03.0", "0x8086", "0x060400"),
            ("pci0000:00/0000:00:03.0/0000:41:00.0", "0x10de", "0x030200"),
        ],
    );
    let gpus = vec![gpu(0, BELOW, "0000:02:00.0"), gpu(1, ELSEWHERE, "0000:41:00.0")];
    let samples = gpus
        .iter()
        .map(|g| {
            (
                g.index,
                GpuSample {
                    uuid: g.uuid.clone(),
                    pci_address: g.pci_address.clone(),
                    ..GpuSample::default()
                },
            )
        })
        .collect();
    config.gpus = GpuSource::Fake(FakeGpuTelemetry { driver: None, gpus, samples });
    config.nvml_interval = Duration::from_millis(200);

    let (statuses, mut rx) = mpsc::unbounded_channel();
    let (events, _event_rx) = mpsc::unbounded_channel();
    let kmsg = config.paths.kmsg.clone();
    let agent = start(config, ChannelPublisher { statuses, events }).await.expect("agent starts");
    wait_for(&mut rx, "both GPUs Healthy", |s| {
        [BELOW, ELSEWHERE].iter().all(|id| health(s, id) == Some(DeviceHealthState::Healthy))
    })
    .await;

    let lines = [
        record(1, 3, "pcieport 0000:00:02.0: AER: Uncorrected (Fatal) error received: id=0010"),
        record(2, 6, "nvidia 0000:02:00.0: device has no AER-aware driver"),
    ];
    std::fs::OpenOptions::new()
        .append(true)
        .open(&kmsg)
        .and_then(|mut f| f.write_all(lines.concat().as_bytes()))
        .expect("append kernel records");
    let status = wait_for(&mut rx, "the GPU below the port Unhealthy", |s| {
        health(s, BELOW) == Some(DeviceHealthState::Unhealthy)
    })
    .await;
    let below = status.devices.iter().find(|d| d.id == BELOW).expect("the GPU");
    let reason = below.reasons.iter().find(|r| r.source == HealthSource::KernelLog).expect("a kernel reason");
    assert!(reason.message.starts_with("below PCIe port 0000:00:02.0: "), "{reason:?}");
    assert_eq!(health(&status, ELSEWHERE), Some(DeviceHealthState::Healthy), "another port's GPU");

    agent.stop().await;
}
