//! AMD and Intel accelerators end to end in the running agent: sysfs (a fake tree built from
//! `tests/data/sysfs/amd-intel-gaudi.txt`, which names its sources) says which PCI device each
//! DRM card and accel device is; the kubelet (an in-process PodResources server) names an AMD
//! GPU by its PCI address (the ROCm plugin) and an Intel GPU by its card's shares (`card2-0`,
//! `card2-1`: Intel's GPU plugin); the kernel log (a saved log file the test appends records
//! to) names both by PCI address; amdsmi is played by scripted GPUs. A Gaudi is named by the
//! kubelet by its serial number (Intel's Gaudi plugin) and by the kernel as `hl0`: hlml (scripted)
//! ties the serial to the PCI address that sysfs ties `accel0` to.

mod common;

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use common::{ChannelPublisher, kmsg_record, test_config, wait_for_status};
use devheal_agent::accel::read_accelerators;
use devheal_agent::amd::{AmdSource, FakeAmdTelemetry};
use devheal_agent::gaudi::{FakeGaudiTelemetry, GaudiSource, GaudiState};
use devheal_agent::run::start;
use devheal_amdsmi::EccCounts;
use devheal_core::{HealthSource, Vendor};
use devheal_k8s::crd::{DeviceHealthState, NodeDeviceHealthStatus};
use devheal_kubelet::api::podresources_v1 as pr;
use devheal_kubelet::server::{PodResourcesServer, PodResourcesState, serve};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(20);
const AMD_GPU: &str = "0000:c1:00.0";
const INTEL_GPU: &str = "0000:03:00.0";
const GAUDI: &str = "0000:19:00.0";
/// The Gaudi's serial number: the id Intel's plugin gives it.
const GAUDI_SERIAL: &str = "AM0000001";
/// A second Gaudi, only hlml knows (no sysfs entry, no pod), with a critical-error event.
const GAUDI_2: &str = "0000:1a:00.0";
/// An MI300 partition of the AMD GPU (KFD says whose).
const PARTITION: &str = "amdgpu_xcp_30";
/// A GPU only amdsmi reports (no plugin names it here), with uncorrectable ECC errors.
const AMD_ECC_GPU: &str = "0000:c2:00.0";

/// Build the tree `fixture` describes under `root` (standing for `/sys`).
fn build_sysfs(root: &Path, fixture: &str) {
    let path = format!("{}/tests/data/sysfs/{fixture}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.splitn(3, ' ');
        let (kind, at, rest) = (words.next(), words.next(), words.next());
        let at = root.join(at.unwrap_or_else(|| panic!("{path}:{}: no path", n + 1)));
        if let Some(parent) = at.parent() {
            std::fs::create_dir_all(parent).expect("parent directory");
        }
        match (kind, rest) {
            (Some("dir"), None) => std::fs::create_dir_all(&at).expect("dir"),
            (Some("file"), Some(content)) => {
                std::fs::write(&at, format!("{}\n", content.replace("\\n", "\n"))).expect("file")
            }
            (Some("link"), Some(target)) => std::os::unix::fs::symlink(target, &at).expect("link"),
            _ => panic!("{path}:{}: cannot read {line:?}", n + 1),
        }
    }
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

/// Append one record and give the reader time to take it alone (a saved log is read one
/// record per read, as `/dev/kmsg` is).
async fn append(kmsg: &Path, record: &str) {
    std::fs::OpenOptions::new()
        .append(true)
        .open(kmsg)
        .and_then(|mut f| f.write_all(record.as_bytes()))
        .expect("append a kernel record");
    tokio::time::sleep(Duration::from_millis(400)).await;
}

#[test]
fn the_fixture_tree_reads_as_its_cards_and_accel_devices() {
    let dir = tempfile::tempdir().expect("tempdir");
    build_sysfs(dir.path(), "amd-intel-gaudi.txt");
    let inv = read_accelerators(
        &dir.path().join("class/drm"),
        &dir.path().join("class/accel"),
        &dir.path().join("class/kfd/kfd/topology/nodes"),
    );
    assert!(inv.available, "{}", inv.message);
    let seen: Vec<(&str, &str, Vendor, Option<&str>)> = inv
        .devices
        .iter()
        .map(|d| (d.name.as_str(), d.pci_address.as_str(), d.vendor, d.driver.as_deref()))
        .collect();
    // card0 is the BMC's VGA (ASPEED, not read), card2-DP-1 a connector, renderD128 a render
    // node, card9 and renderD136 a partition's.
    assert_eq!(
        seen,
        [
            ("accel0", GAUDI, Vendor::Intel, Some("habanalabs")),
            ("card1", AMD_GPU, Vendor::Amd, Some("amdgpu")),
            ("card2", INTEL_GPU, Vendor::Intel, Some("xe")),
        ]
    );
    let partitions: Vec<(&str, Option<u32>, Option<&str>)> =
        inv.partitions.iter().map(|p| (p.id.as_str(), p.render_minor, p.gpu.as_deref())).collect();
    assert_eq!(partitions, [("amdgpu_xcp_30", Some(136), Some(AMD_GPU))], "KFD's node for renderD136");
    assert_eq!(inv.pci_of("hl0"), Some(GAUDI));
    assert_eq!(inv.devices[1].class.as_deref(), Some("0x120000"));
    assert_eq!(
        inv.message,
        "1 AMD and 2 Intel accelerator(s) by PCI address, 1 MI300 partition(s), 1 mapped to their GPU"
    );
}

struct Node {
    _dir: tempfile::TempDir,
    kmsg: std::path::PathBuf,
    rx: mpsc::UnboundedReceiver<devheal_k8s::crd::NodeDeviceHealth>,
    agent: devheal_agent::run::AgentHandle,
    kubelet: devheal_kubelet::server::ServerHandle,
}

/// amdsmi played by scripted GPUs: the fixture's AMD GPU and one with ECC errors.
fn scripted_amdsmi() -> AmdSource {
    AmdSource::Fake(FakeAmdTelemetry {
        gpus: vec![AMD_GPU.into(), AMD_ECC_GPU.into()],
        ecc: [
            (AMD_GPU.to_string(), EccCounts::default()),
            (AMD_ECC_GPU.to_string(), EccCounts { correctable: 4, uncorrectable: 2, deferred: 0 }),
        ]
        .into(),
    })
}

/// The agent on the fixture's node, with sysfs' accelerators read or not (`mapped`).
async fn start_node(mapped: bool, amd: AmdSource) -> Node {
    start_node_with(mapped, amd, GaudiSource::Off).await
}

/// hlml played by scripted devices: the fixture's Gaudi, quiet, and a second one with a
/// critical-error event.
fn scripted_hlml() -> GaudiSource {
    GaudiSource::Fake(FakeGaudiTelemetry {
        devices: vec![
            (GAUDI_SERIAL.into(), GAUDI.into(), GaudiState { uncorrected: Some(0), ..GaudiState::default() }),
            ("AM0000002".into(), GAUDI_2.into(), GaudiState { critical_errors: 1, ..GaudiState::default() }),
        ],
    })
}

async fn start_node_with(mapped: bool, amd: AmdSource, gaudi: GaudiSource) -> Node {
    start_node_at(mapped, amd, gaudi, None).await
}

/// [`start_node_with`] with hlml at `hlml` (default: a path where there is none).
async fn start_node_at(
    mapped: bool,
    amd: AmdSource,
    gaudi: GaudiSource,
    hlml: Option<std::path::PathBuf>,
) -> Node {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path(), "node-amd");
    if mapped {
        build_sysfs(&dir.path().join("sys"), "amd-intel-gaudi.txt");
        config.paths.drm_class_dir = dir.path().join("sys/class/drm");
        config.paths.accel_class_dir = dir.path().join("sys/class/accel");
        config.paths.kfd_topology_dir = dir.path().join("sys/class/kfd/kfd/topology/nodes");
    }
    config.amd = amd;
    config.gaudi = gaudi;
    config.paths.hlml_library = Some(hlml.unwrap_or_else(|| dir.path().join("no-habanalabs/libhlml.so")));
    config.paths.amdsmi_library = Some(dir.path().join("no-rocm/libamd_smi.so"));
    config.nvml_interval = Duration::from_millis(200);

    let state = PodResourcesState::default();
    state.set_pods(vec![
        common::pod_resources("ml", "rocm-a", "trainer", "amd.com/gpu", &[AMD_GPU]),
        common::pod_resources("ml", "xcp-a", "trainer", "amd.com/gpu", &[PARTITION]),
        common::pod_resources("media", "xe-a", "encoder", "gpu.intel.com/xe", &["card2-0"]),
        common::pod_resources("media", "xe-b", "encoder", "gpu.intel.com/xe", &["card2-1"]),
        common::pod_resources("llm", "gaudi-a", "trainer", "habana.ai/gaudi", &[GAUDI_SERIAL]),
    ]);
    state.set_allocatable(vec![
        pr::ContainerDevices {
            resource_name: "amd.com/gpu".into(),
            device_ids: vec![AMD_GPU.into(), PARTITION.into()],
            topology: None,
        },
        pr::ContainerDevices {
            resource_name: "gpu.intel.com/xe".into(),
            device_ids: vec!["card2-0".into(), "card2-1".into()],
            topology: None,
        },
        pr::ContainerDevices {
            resource_name: "habana.ai/gaudi".into(),
            device_ids: vec![GAUDI_SERIAL.into()],
            topology: None,
        },
    ]);
    let kubelet = serve(&config.paths.pod_resources_socket, PodResourcesServer { state }.router())
        .expect("serve kubelet");
    let (statuses, rx) = mpsc::unbounded_channel();
    let (events, _event_rx) = mpsc::unbounded_channel();
    let kmsg = config.paths.kmsg.clone();
    let agent = start(config, ChannelPublisher { statuses, events }).await.expect("agent starts");
    Node { _dir: dir, kmsg, rx, agent, kubelet }
}

const AMDGPU_LINE: &str =
    "amdgpu 0000:c1:00.0: amdgpu: uncorrectable hardware error(ERREVENT_ATHUB_INTERRUPT) detected!";
const GAUDI_LINE: &str = "habanalabs hl0: Device heartbeat failed! PCI link is broken";
const XE_LINE: &str =
    "xe 0000:03:00.0: [drm] *ERROR* CRITICAL: Xe has declared device 0000:03:00.0 as wedged.";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amdgpu_and_xe_kernel_faults_reach_the_pods_holding_the_devices() {
    let mut node = start_node(true, scripted_amdsmi()).await;

    // Every device once: the Intel GPU's two shares are one device at its PCI address.
    let status = wait_for_status(&mut node.rx, WAIT, "the AMD and Intel GPUs with their pods", |s| {
        pods(s, AMD_GPU) == ["rocm-a"]
            && pods(s, INTEL_GPU) == ["xe-a", "xe-b"]
            && health(s, AMD_ECC_GPU) == Some(DeviceHealthState::Unhealthy)
    })
    .await;
    let intel = device(&status, INTEL_GPU).expect("the Intel GPU");
    assert_eq!(
        (intel.resource.as_str(), intel.pci_address.as_deref(), intel.vendor),
        ("gpu.intel.com/xe", Some(INTEL_GPU), Vendor::Intel)
    );
    let amd = device(&status, AMD_GPU).expect("the AMD GPU");
    assert_eq!((amd.pci_address.as_deref(), amd.vendor), (Some(AMD_GPU), Vendor::Amd));
    let partition = device(&status, PARTITION).expect("the partition");
    assert_eq!(
        (partition.parent.as_deref(), pods(&status, PARTITION)),
        (Some(AMD_GPU), vec!["xcp-a".to_string()])
    );
    assert!(status.devices.iter().all(|d| !d.id.starts_with("card")), "{status:#?}");
    let source = |name: &str| status.sources.iter().find(|s| s.name == name).cloned();
    assert!(source("sysfs_accelerators").is_some_and(|s| s.available), "{:?}", status.sources);

    // amdsmi: the GPU with uncorrectable ECC errors is Unhealthy, with amdsmi's reason.
    let ecc = device(&status, AMD_ECC_GPU).expect("amdsmi's GPU");
    assert!(ecc.reasons.iter().any(|r| r.source == HealthSource::AmdSmi && r.code == Some(1)), "{ecc:?}");
    assert!(status.sources.iter().any(|s| s.name == "amd_smi" && s.available), "{:?}", status.sources);
    assert_eq!(health(&status, AMD_GPU), Some(DeviceHealthState::Healthy));

    // The kernel names each by its PCI address: each device is Unhealthy, with its pods.
    append(&node.kmsg, &kmsg_record(1, 3, AMDGPU_LINE)).await;
    append(&node.kmsg, &kmsg_record(2, 3, XE_LINE)).await;
    let status = wait_for_status(&mut node.rx, WAIT, "the AMD and Intel GPUs Unhealthy", |s| {
        health(s, AMD_GPU) == Some(DeviceHealthState::Unhealthy)
            && health(s, INTEL_GPU) == Some(DeviceHealthState::Unhealthy)
            && health(s, PARTITION) == Some(DeviceHealthState::Unhealthy)
    })
    .await;
    // The partition takes on its GPU's fault, with the pod on it.
    let inherited = device(&status, PARTITION)
        .and_then(|d| d.reasons.iter().find(|r| r.source == HealthSource::KernelLog));
    assert!(
        inherited.is_some_and(|r| r.message.starts_with(&format!("on its parent {AMD_GPU}: "))),
        "{inherited:?}"
    );
    for (id, want) in
        [(AMD_GPU, vec!["rocm-a"]), (PARTITION, vec!["xcp-a"]), (INTEL_GPU, vec!["xe-a", "xe-b"])]
    {
        let d = device(&status, id).expect("device");
        assert_eq!(pods(&status, id), want);
        assert!(d.reasons.iter().any(|r| r.source == HealthSource::KernelLog), "{d:?}");
    }

    node.agent.stop().await;
    node.kubelet.stop().await;
}

/// The same node without sysfs' accelerators: the Intel plugin's `card2-0` is no PCI address,
/// so the `xe 0000:03:00.0` line reaches no device and the pods on the card are never told.
/// (The AMD GPU still is: the ROCm plugin's id is its address.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_sysfs_mapping_an_xe_fault_reaches_no_pod() {
    let mut node = start_node(false, scripted_amdsmi()).await;
    wait_for_status(&mut node.rx, WAIT, "the Intel GPU by its card", |s| {
        pods(s, "card2") == ["xe-a", "xe-b"]
    })
    .await;
    append(&node.kmsg, &kmsg_record(1, 3, XE_LINE)).await;
    append(&node.kmsg, &kmsg_record(2, 3, AMDGPU_LINE)).await;
    let status = wait_for_status(&mut node.rx, WAIT, "the AMD GPU Unhealthy", |s| {
        health(s, AMD_GPU) == Some(DeviceHealthState::Unhealthy)
    })
    .await;
    assert!(node.agent.metrics.kmsg_unmapped.get() >= 1, "the xe line found no device");
    assert_eq!(health(&status, "card2"), Some(DeviceHealthState::Healthy), "{status:#?}");
    assert_eq!(device(&status, "card2").and_then(|d| d.pci_address.clone()), None);
    // Nor does the partition know its GPU: it stays Healthy beside the Unhealthy GPU.
    assert_eq!(device(&status, PARTITION).and_then(|d| d.parent.clone()), None);
    assert_eq!(health(&status, PARTITION), Some(DeviceHealthState::Healthy));
    node.agent.stop().await;
    node.kubelet.stop().await;
}

/// amdsmi absent (the real loader, pointed at no library): on the AMD node the source is
/// unavailable with the reason and the agent runs on, its kernel faults still mapped; on a node
/// whose sysfs shows no AMD GPU the absent library is not a source down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_amdsmi_the_agent_runs_on_and_says_why() {
    let mut node = start_node(true, AmdSource::AmdSmi).await;
    let status = wait_for_status(&mut node.rx, WAIT, "amdsmi unavailable", |s| {
        s.sources.iter().any(|s| s.name == "amd_smi" && !s.available)
    })
    .await;
    let amd = status.sources.iter().find(|s| s.name == "amd_smi").expect("the source");
    let message = amd.message.as_deref().unwrap_or_default();
    assert!(message.starts_with("amdsmi unavailable: cannot load "), "{message}");
    assert!(device(&status, AMD_ECC_GPU).is_none(), "no amdsmi, no GPU only it knows");
    append(&node.kmsg, &kmsg_record(1, 3, AMDGPU_LINE)).await;
    wait_for_status(&mut node.rx, WAIT, "the AMD GPU Unhealthy all the same", |s| {
        health(s, AMD_GPU) == Some(DeviceHealthState::Unhealthy)
    })
    .await;
    node.agent.stop().await;
    node.kubelet.stop().await;

    // No AMD GPU in sysfs (an empty DRM class): no amd_smi source at all.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path(), "node-nvidia");
    std::fs::create_dir_all(dir.path().join("drm")).expect("an empty DRM class");
    config.paths.drm_class_dir = dir.path().join("drm");
    config.paths.amdsmi_library = Some(dir.path().join("libamd_smi.so"));
    config.amd = AmdSource::AmdSmi;
    let (statuses, mut rx) = mpsc::unbounded_channel();
    let (events, _event_rx) = mpsc::unbounded_channel();
    let agent = start(config, ChannelPublisher { statuses, events }).await.expect("agent starts");
    let status = wait_for_status(&mut rx, WAIT, "the first status", |_| true).await;
    // The amdsmi thread's first try is at once; give the loop a moment to have taken it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let later = rx.try_recv().ok().and_then(|o| o.status).unwrap_or(status);
    assert!(
        later.sources.iter().any(|s| s.name == "sysfs_accelerators" && s.available),
        "{:?}",
        later.sources
    );
    assert!(!later.sources.iter().any(|s| s.name == "amd_smi"), "{:?}", later.sources);
    agent.stop().await;
}

/// A Gaudi the kubelet names by its serial number is, through hlml, the device at its PCI
/// address, the one the kernel's `habanalabs hl0:` line names through sysfs' `accel0`: the
/// heartbeat failure reaches the pod holding it. hlml's critical-error event makes the other
/// Gaudi Unhealthy with hlml's reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gaudi_named_by_its_serial_is_the_device_the_kernel_calls_hl0() {
    let mut node = start_node_with(true, AmdSource::Off, scripted_hlml()).await;
    let status = wait_for_status(&mut node.rx, WAIT, "the Gaudi at its PCI address with its pod", |s| {
        pods(s, GAUDI) == ["gaudi-a"] && health(s, GAUDI_2) == Some(DeviceHealthState::Unhealthy)
    })
    .await;
    let gaudi = device(&status, GAUDI).expect("the Gaudi");
    assert_eq!(
        (gaudi.resource.as_str(), gaudi.pci_address.as_deref(), gaudi.vendor),
        ("habana.ai/gaudi", Some(GAUDI), Vendor::Intel)
    );
    assert!(
        device(&status, GAUDI_SERIAL).is_none(),
        "the serial is a name of the device, not one: {status:#?}"
    );
    let hlml = status.sources.iter().find(|s| s.name == "hlml").expect("the hlml source");
    assert_eq!((hlml.available, hlml.message.as_deref()), (true, Some("2 Gaudi device(s)")));
    let second = device(&status, GAUDI_2).expect("hlml's second Gaudi");
    assert!(second.reasons.iter().any(|r| r.source == HealthSource::Hlml && r.code == Some(2)), "{second:?}");
    assert_eq!(health(&status, GAUDI), Some(DeviceHealthState::Healthy));

    append(&node.kmsg, &kmsg_record(1, 3, GAUDI_LINE)).await;
    let status = wait_for_status(&mut node.rx, WAIT, "the Gaudi Unhealthy", |s| {
        health(s, GAUDI) == Some(DeviceHealthState::Unhealthy)
    })
    .await;
    let gaudi = device(&status, GAUDI).expect("the Gaudi");
    assert_eq!(pods(&status, GAUDI), ["gaudi-a"]);
    assert!(gaudi.reasons.iter().any(|r| r.source == HealthSource::KernelLog), "{gaudi:?}");
    node.agent.stop().await;
    node.kubelet.stop().await;
}

/// Without hlml the plugin's serial number is no PCI address: the `hl0` line names a PCI device
/// no pod's device is, so it is unmapped and the pod's Gaudi stays Healthy, never told (the hole
/// hlml closes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_hlml_a_gaudi_fault_misses_the_pod_and_the_source_says_why() {
    let mut node = start_node_with(true, AmdSource::Off, GaudiSource::Hlml).await;
    let status = wait_for_status(&mut node.rx, WAIT, "the Gaudi by its serial, hlml unavailable", |s| {
        pods(s, GAUDI_SERIAL) == ["gaudi-a"] && s.sources.iter().any(|s| s.name == "hlml" && !s.available)
    })
    .await;
    let hlml = status.sources.iter().find(|s| s.name == "hlml").expect("the source");
    let message = hlml.message.as_deref().unwrap_or_default();
    assert!(message.starts_with("hlml unavailable: cannot load "), "{message}");
    append(&node.kmsg, &kmsg_record(1, 3, GAUDI_LINE)).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while node.agent.metrics.kmsg_unmapped.get() < 1 {
        assert!(tokio::time::Instant::now() < deadline, "the hl0 line was never read");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut status = status;
    while let Ok(object) = node.rx.try_recv() {
        status = object.status.unwrap_or(status);
    }
    assert_eq!(health(&status, GAUDI_SERIAL), Some(DeviceHealthState::Healthy), "{status:#?}");
    assert!(device(&status, GAUDI).is_none(), "{status:#?}");
    node.agent.stop().await;
    node.kubelet.stop().await;
}

/// The real hlml loader in the running agent, against `crates/hlml/tests/data/fake_hlml.c` (our
/// stand-in for libhlml.so, written from the header, compiled here with `cc`): its first device
/// is the fixture's Gaudi by serial `AM0000001`, its second has 2 uncorrected ECC errors and a
/// critical-error event, its third no ECC counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hlml_loader_maps_serials_and_hears_events_from_a_c_library() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../hlml/tests/data/fake_hlml.c");
    let library = dir.path().join("libhlml.so");
    let built = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(&library)
        .arg("-DEVENTS=\"1:2\"")
        .arg(&source)
        .status()
        .unwrap_or_else(|e| panic!("this test needs a C compiler (`cc`) to build the hlml stand-in: {e}"));
    assert!(built.success(), "cc failed on {}", source.display());
    let mut node = start_node_at(true, AmdSource::Off, GaudiSource::Hlml, Some(library)).await;
    let status = wait_for_status(&mut node.rx, WAIT, "the Gaudi by serial, the second Unhealthy", |s| {
        pods(s, GAUDI) == ["gaudi-a"]
            && device(s, "0000:b3:00.0").is_some_and(|d| {
                d.health == DeviceHealthState::Unhealthy
                    && d.reasons.iter().filter(|r| r.source == HealthSource::Hlml).count() == 2
            })
    })
    .await;
    let hlml = status.sources.iter().find(|s| s.name == "hlml").expect("the hlml source");
    assert_eq!((hlml.available, hlml.message.as_deref()), (true, Some("3 Gaudi device(s)")));
    let second = device(&status, "0000:b3:00.0").expect("the second Gaudi");
    let codes: Vec<Option<u32>> =
        second.reasons.iter().filter(|r| r.source == HealthSource::Hlml).map(|r| r.code).collect();
    assert_eq!(codes, [Some(1), Some(2)], "uncorrected ECC, then the critical-error event: {second:?}");
    assert_eq!(health(&status, GAUDI), Some(DeviceHealthState::Healthy));
    assert_eq!(
        health(&status, "0001:1a:1f.7"),
        Some(DeviceHealthState::Healthy),
        "no ECC counts is no evidence"
    );
    node.agent.stop().await;
    node.kubelet.stop().await;
}
