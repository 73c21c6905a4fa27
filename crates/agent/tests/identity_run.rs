//! One device identity, end to end in the running agent: a kernel Xid that names a GPU by its
//! PCI bus id reaches every pod on the GPU, whatever name the kubelet gave each pod's share of
//! it: time-slicing replicas (`GPU-…::n`) are the GPU, MIG devices are devices of their own
//! whose parent is the GPU and take on its fault.
//!
//! The kubelet is played by an in-process PodResources server (the NVIDIA device plugin's id
//! shapes: `crates/core/tests/data/device-ids/nvidia-k8s-device-plugin.json`), NVML by scripted
//! GPUs, the kernel log by a saved log file the test appends records to.

mod common;

use std::io::Write;
use std::time::Duration;

use common::{ChannelPublisher, kmsg_record, scripted_gpus, test_config, wait_for_status};
use devheal_agent::nvml::{GpuIdentity, MigIdentity};
use devheal_agent::run::start;
use devheal_core::HealthSource;
use devheal_k8s::crd::{DeviceHealthState, NodeDeviceHealthStatus};
use devheal_kubelet::api::podresources_v1 as pr;
use devheal_kubelet::server::{PodResourcesServer, PodResourcesState, serve};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(20);
/// The A100 of the fixtures, time-sliced into 4 replicas.
const SLICED: &str = "GPU-4404041a-04cf-1ccf-9e70-f139a9b1e23c";
const SLICED_PCI: &str = "0000:3b:00.0";
/// A GH200 in MIG mode with two MIG devices.
const MIG_GPU: &str = "GPU-a4f34abc-7715-3560-dcea-7238b9611a45";
const MIG_GPU_PCI: &str = "0009:01:00.0";
const MIG_0: &str = "MIG-4d806f22-346a-5a1d-ac01-86b505cdf485";
const MIG_1: &str = "MIG-8949ea7d-9166-53ce-9bac-6c58262addf9";
/// A GPU nothing happens to.
const OTHER: &str = "GPU-9e6df7cb-64d4-5e53-2b1d-cee9e58aeb94";

fn gpu(index: u32, uuid: &str, pci: &str, migs: &[&str]) -> GpuIdentity {
    GpuIdentity {
        index,
        uuid: uuid.into(),
        name: "scripted".into(),
        pci_address: pci.into(),
        minor: Some(index),
        migs: migs
            .iter()
            .enumerate()
            .map(|(i, u)| MigIdentity { index: i as u32, uuid: u.to_string() })
            .collect(),
    }
}

fn pod(name: &str, resource: &str, ids: &[&str]) -> pr::PodResources {
    common::pod_resources("ml", name, "trainer", resource, ids)
}

fn device<'a>(status: &'a NodeDeviceHealthStatus, id: &str) -> Option<&'a devheal_k8s::crd::DeviceStatus> {
    status.devices.iter().find(|d| d.id == id)
}

fn health(status: &NodeDeviceHealthStatus, id: &str) -> Option<DeviceHealthState> {
    device(status, id).map(|d| d.health)
}

fn pods(status: &NodeDeviceHealthStatus, id: &str) -> Vec<String> {
    device(status, id).map(|d| d.pods.iter().map(|p| p.name.clone()).collect()).unwrap_or_default()
}

/// One `/dev/kmsg` record of Xid 79 on the GPU at `pci` (the driver prints `dddd:bb:dd`), timed
/// now (the kernel's timestamp is time since boot).
fn xid_79(seq: u64, pci: &str) -> String {
    let short = pci.rsplit_once('.').map_or(pci, |(h, _)| h);
    kmsg_record(
        seq,
        4,
        &format!("NVRM: Xid (PCI:{short}): 79, pid=4242, name=trainer, GPU has fallen off the bus."),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kernel_xid_on_a_gpu_reaches_the_pods_on_its_replicas_and_mig_devices() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path(), "node-a");
    let gpus = vec![
        gpu(0, MIG_GPU, MIG_GPU_PCI, &[MIG_0, MIG_1]),
        gpu(1, OTHER, "0019:01:00.0", &[]),
        gpu(2, SLICED, SLICED_PCI, &[]),
    ];
    config.gpus = scripted_gpus(gpus);
    config.nvml_interval = Duration::from_millis(200);

    // The kubelet: the A100's 4 time-slicing replicas and the other GPU under nvidia.com/gpu,
    // the GH200's MIG devices under their profile (MIG strategy mixed).
    let replicas: Vec<String> = (0..4).map(|i| format!("{SLICED}::{i}")).collect();
    let state = PodResourcesState::default();
    state.set_pods(vec![
        pod("ts-a", "nvidia.com/gpu", &[&replicas[0]]),
        pod("ts-b", "nvidia.com/gpu", &[&replicas[3]]),
        pod("mig-a", "nvidia.com/mig-1g.12gb", &[MIG_0]),
        pod("mig-b", "nvidia.com/mig-1g.12gb", &[&format!("{MIG_1}::0")]),
        pod("bystander", "nvidia.com/gpu", &[OTHER]),
    ]);
    let mut offered: Vec<String> = replicas.clone();
    offered.push(OTHER.to_string());
    state.set_allocatable(vec![
        pr::ContainerDevices { resource_name: "nvidia.com/gpu".into(), device_ids: offered, topology: None },
        pr::ContainerDevices {
            resource_name: "nvidia.com/mig-1g.12gb".into(),
            device_ids: vec![MIG_0.into(), format!("{MIG_1}::0"), format!("{MIG_1}::1")],
            topology: None,
        },
    ]);
    let kubelet = serve(&config.paths.pod_resources_socket, PodResourcesServer { state }.router())
        .expect("serve kubelet");

    let (statuses, mut rx) = mpsc::unbounded_channel();
    let (events, _event_rx) = mpsc::unbounded_channel();
    let kmsg = config.paths.kmsg.clone();
    let agent = start(config, ChannelPublisher { statuses, events }).await.expect("agent starts");

    // Every device once, with every pod on any of its names.
    let status = wait_for_status(&mut rx, WAIT, "the inventory with its pods", |s| {
        pods(s, SLICED) == ["ts-a", "ts-b"] && pods(s, MIG_0) == ["mig-a"] && pods(s, MIG_1) == ["mig-b"]
    })
    .await;
    let ids: Vec<&str> = status.devices.iter().map(|d| d.id.as_str()).collect();
    assert!(ids.iter().all(|id| !id.contains("::")), "a replica is not a device: {ids:?}");
    assert_eq!(status.devices.len(), 5, "3 GPUs and 2 MIG devices: {ids:?}");
    for mig in [MIG_0, MIG_1] {
        let d = device(&status, mig).expect("the MIG device");
        assert_eq!(d.parent.as_deref(), Some(MIG_GPU), "{d:?}");
        assert_eq!(d.resource, "nvidia.com/mig-1g.12gb");
        assert_eq!(d.pci_address, None, "the PCI address is the GPU's");
    }
    let sliced = device(&status, SLICED).expect("the sliced GPU");
    assert_eq!(
        (sliced.resource.as_str(), sliced.pci_address.as_deref()),
        ("nvidia.com/gpu", Some(SLICED_PCI))
    );
    assert!(status.devices.iter().all(|d| d.health == DeviceHealthState::Healthy), "{status:#?}");

    // The kernel names the time-sliced GPU by its PCI bus id: both replicas' pods are on it.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&kmsg)
        .and_then(|mut f| f.write_all(xid_79(1, SLICED_PCI).as_bytes()))
        .expect("append a kernel record");
    let status = wait_for_status(&mut rx, WAIT, "the time-sliced GPU Unhealthy", |s| {
        health(s, SLICED) == Some(DeviceHealthState::Unhealthy)
    })
    .await;
    let sliced = device(&status, SLICED).expect("the sliced GPU");
    assert_eq!(pods(&status, SLICED), ["ts-a", "ts-b"]);
    assert!(
        sliced.reasons.iter().any(|r| r.source == HealthSource::KernelLog && r.code == Some(79)),
        "{sliced:?}"
    );
    for other in [MIG_GPU, MIG_0, MIG_1, OTHER] {
        assert_eq!(health(&status, other), Some(DeviceHealthState::Healthy), "{other}");
    }

    // The kernel names the GPU in MIG mode: each of its MIG devices is Unhealthy with its pod.
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::OpenOptions::new()
        .append(true)
        .open(&kmsg)
        .and_then(|mut f| f.write_all(xid_79(2, MIG_GPU_PCI).as_bytes()))
        .expect("append a kernel record");
    let status = wait_for_status(&mut rx, WAIT, "the MIG GPU and its MIG devices Unhealthy", |s| {
        [MIG_GPU, MIG_0, MIG_1].iter().all(|id| health(s, id) == Some(DeviceHealthState::Unhealthy))
    })
    .await;
    for (mig, pod) in [(MIG_0, "mig-a"), (MIG_1, "mig-b")] {
        let d = device(&status, mig).expect("the MIG device");
        assert_eq!(pods(&status, mig), [pod]);
        let inherited = d.reasons.iter().find(|r| r.code == Some(79)).expect("the GPU's Xid");
        assert!(inherited.message.starts_with(&format!("on its parent {MIG_GPU}: ")), "{inherited:?}");
    }
    assert_eq!(health(&status, OTHER), Some(DeviceHealthState::Healthy));
    assert_eq!(pods(&status, OTHER), ["bystander"]);

    agent.stop().await;
    kubelet.stop().await;
}
