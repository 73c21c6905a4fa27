//! The node's PCIe topology in the running agent: a fatal AER on a root port reaches the GPU below
//! it. The lines are real (crates/detect/tests/data/real-lines.txt, lines 43 and 47: a fatal AER on
//! `0000:00:02.0`, then `nvidia 0000:02:00.0: device has no AER-aware driver`); NVML is played by
//! scripted GPUs, sysfs by a tree of directories and links laid out as the kernel lays them out,
//! the kernel log by a saved log file the test appends records to. Without the topology the port
//! is no device the agent knows and the GPU behind it stays Healthy. The sysfs reader itself
//! (`devheal_agent::pci_topology`) is tested on the same kind of tree at the end.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use common::{ChannelPublisher, kmsg_record, scripted_gpus, test_config, wait_for_status};
use devheal_agent::nvml::GpuIdentity;
use devheal_agent::pci_topology::read_pci_topology;
use devheal_agent::run::start;
use devheal_core::HealthSource;
use devheal_k8s::crd::{DeviceHealthState, NodeDeviceHealthStatus};
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
    config.gpus = scripted_gpus(gpus);
    config.nvml_interval = Duration::from_millis(200);

    let (statuses, mut rx) = mpsc::unbounded_channel();
    let (events, _event_rx) = mpsc::unbounded_channel();
    let kmsg = config.paths.kmsg.clone();
    let agent = start(config, ChannelPublisher { statuses, events }).await.expect("agent starts");
    wait_for_status(&mut rx, WAIT, "both GPUs Healthy", |s| {
        [BELOW, ELSEWHERE].iter().all(|id| health(s, id) == Some(DeviceHealthState::Healthy))
    })
    .await;

    let lines = [
        kmsg_record(1, 3, "pcieport 0000:00:02.0: AER: Uncorrected (Fatal) error received: id=0010"),
        kmsg_record(2, 6, "nvidia 0000:02:00.0: device has no AER-aware driver"),
    ];
    std::fs::OpenOptions::new()
        .append(true)
        .open(&kmsg)
        .and_then(|mut f| f.write_all(lines.concat().as_bytes()))
        .expect("append kernel records");
    let status = wait_for_status(&mut rx, WAIT, "the GPU below the port Unhealthy", |s| {
        health(s, BELOW) == Some(DeviceHealthState::Unhealthy)
    })
    .await;
    let below = status.devices.iter().find(|d| d.id == BELOW).expect("the GPU");
    let reason = below.reasons.iter().find(|r| r.source == HealthSource::KernelLog).expect("a kernel reason");
    assert!(reason.message.starts_with("below PCIe port 0000:00:02.0: "), "{reason:?}");
    assert_eq!(health(&status, ELSEWHERE), Some(DeviceHealthState::Healthy), "another port's GPU");

    agent.stop().await;
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Two GPUs below two ports of one PCIe switch, an NVSwitch and a NIC on the root port.
const HGX: &[(&str, &str, &str)] = &[
    ("pci0000:00/0000:00:01.0", "0x8086", "0x060400"),
    ("pci0000:00/0000:00:01.0/0000:01:00.0", "0x1000", "0x060400"),
    ("pci0000:00/0000:00:01.0/0000:01:00.0/0000:02:08.0", "0x1000", "0x060400"),
    ("pci0000:00/0000:00:01.0/0000:01:00.0/0000:02:08.0/0000:1b:00.0", "0x10de", "0x030200"),
    ("pci0000:00/0000:00:01.0/0000:01:00.0/0000:02:10.0", "0x1000", "0x060400"),
    ("pci0000:00/0000:00:01.0/0000:01:00.0/0000:02:10.0/0000:43:00.0", "0x10de", "0x030200"),
    ("pci0000:c0/0000:c0:01.0/0000:c6:00.0", "0x10de", "0x068000"),
    ("pci0000:00/0000:00:01.0/0000:01:00.0/0000:02:18.0/0000:1c:00.0", "0x15b3", "0x020700"),
];

#[test]
fn paths_and_nvswitch_links_come_from_sysfs() {
    let root = tempfile::tempdir().expect("tempdir");
    let bus = fake_sysfs(root.path(), HGX);
    let read = read_pci_topology(&bus, &set(&["0000:1b:00.0", "0000:43:00.0", "0000:fa:00.0"]));
    assert!(read.available);
    assert_eq!(
        (read.placed, read.switches, read.linked_gpus, read.missing),
        (2, 1, 2, 1),
        "{}",
        read.message
    );
    let t = &read.topology;
    assert!(t.is_upstream_of("0000:02:08.0", "0000:1b:00.0"));
    assert!(t.is_upstream_of("0000:01:00.0", "0000:43:00.0"), "the switch's upstream port is above both");
    assert!(!t.is_upstream_of("0000:02:08.0", "0000:43:00.0"), "another port of the switch is not");
    assert!(t.links("0000:c6:00.0", "0000:1b:00.0") && t.links("0000:c6:00.0", "0000:43:00.0"));
    // The NIC is not tracked: not placed, and not linked to the NVSwitch.
    assert!(!t.links("0000:c6:00.0", "0000:1c:00.0"));
    assert!(read.message.starts_with("2 of 3 device(s) placed"), "{}", read.message);
}

#[test]
fn a_node_without_nvswitch_or_without_sysfs_links_nothing() {
    let root = tempfile::tempdir().expect("tempdir");
    let without: Vec<(&str, &str, &str)> =
        HGX.iter().copied().filter(|(p, ..)| !p.ends_with("0000:c6:00.0")).collect();
    let bus = fake_sysfs(root.path(), &without);
    let read = read_pci_topology(&bus, &set(&["0000:1b:00.0"]));
    assert_eq!((read.placed, read.switches), (1, 0));
    assert!(!read.topology.links("0000:c6:00.0", "0000:1b:00.0"));

    let gone = read_pci_topology(&root.path().join("no-such-dir"), &set(&["0000:1b:00.0"]));
    assert!(!gone.available && gone.topology.is_empty());
    assert!(gone.message.contains("cannot read"), "{}", gone.message);
}
