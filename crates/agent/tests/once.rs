//! `collect_once` against a test kubelet on a temporary Unix socket, a saved kernel log, and no
//! NVIDIA library: the object lists the devices the kubelet offers and the one it does not
//! (held by a pod) with its pod, and every source that cannot be read says so. No device
//! plugin is asked anything (the agent opens no ListAndWatch of its own).

mod common;

use std::time::Duration;

use devheal_agent::once::{SourcePaths, collect_once};
use devheal_core::Time;
use devheal_detect::Catalog;
use devheal_k8s::crd::DeviceHealthState;
use devheal_kubelet::api::podresources_v1 as pr;
use devheal_kubelet::server::{PodResourcesServer, PodResourcesState, serve};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_health_pod_map_and_kernel_log_come_together() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plugins = dir.path().join("device-plugins");

    let state = PodResourcesState::default();
    state.set_pods(vec![common::pod_resources(
        "ml",
        "trainer-3",
        "trainer",
        "devheal.io/fake-gpu",
        &["fake-1"],
    )]);
    state.set_allocatable(vec![pr::ContainerDevices {
        resource_name: "devheal.io/fake-gpu".into(),
        // fake-1's plugin reported it Unhealthy: the kubelet no longer offers it.
        device_ids: vec!["fake-0".into()],
        topology: None,
    }]);
    let kubelet_socket = dir.path().join("pod-resources.sock");
    let kubelet = serve(&kubelet_socket, PodResourcesServer { state }.router()).expect("serve kubelet");

    // The real kernel log: inject an Xid on a GPU this node's inventory does not know (root in a
    // VM here); where /dev/kmsg cannot be written, the source must say it is unavailable instead.
    let kmsg = std::path::PathBuf::from("/dev/kmsg");
    let injected = std::fs::OpenOptions::new()
        .write(true)
        .open(&kmsg)
        .and_then(|mut f| {
            use std::io::Write;
            f.write_all(b"<4>NVRM: Xid (PCI:0000:ff:1e): 79, pid=4242, name=devheal-once-test, GPU has fallen off the bus.\n")
        })
        .is_ok();
    if !injected {
        eprintln!("skipping the kernel-log part: /dev/kmsg is not writable here");
    }
    let boot_id = dir.path().join("boot_id");
    std::fs::write(&boot_id, "3c1e0e2a-boot\n").expect("write boot id");

    let paths = SourcePaths {
        kmsg,
        pod_resources_socket: kubelet_socket,
        device_plugin_dir: plugins,
        nvml_library: Some(dir.path().join("no-libnvidia-ml.so.1")),
        boot_id_file: boot_id,
        pci_devices_dir: dir.path().join("no-sysfs"),
        sys_class_dir: dir.path().join("no-sysfs-class"),
        drm_class_dir: dir.path().join("no-sysfs-drm"),
        accel_class_dir: dir.path().join("no-sysfs-accel"),
        kfd_topology_dir: dir.path().join("no-sysfs-kfd"),
        amdsmi_library: None,
        hlml_library: Some(dir.path().join("no-libhlml.so")),
    };
    // An operator's catalog (`--catalog`): the kernel log is classified with it, and says so.
    let catalog = Catalog::from_yaml_str(
        "version: \"site-7\"\nxid:\n  - code: 79\n    summary: fell off the bus (site reading)\n    attribution: device\n    health: unhealthy\n    action: inspect_hardware\n",
        "site.yaml",
    )
    .expect("the override catalog");
    let object =
        collect_once("node-a", &paths, &catalog, Duration::from_secs(10), Time::from_secs(1_795_000_000))
            .await;
    kubelet.stop().await;

    assert_eq!(object.metadata.name.as_deref(), Some("node-a"));
    let status = object.status.expect("status");
    assert_eq!(status.boot_id.as_deref(), Some("3c1e0e2a-boot"));
    let ids: Vec<(&str, &str, DeviceHealthState)> =
        status.devices.iter().map(|d| (d.resource.as_str(), d.id.as_str(), d.health)).collect();
    assert_eq!(
        ids,
        vec![
            ("devheal.io/fake-gpu", "fake-0", DeviceHealthState::Healthy),
            ("devheal.io/fake-gpu", "fake-1", DeviceHealthState::Unknown),
        ]
    );
    assert_eq!(status.devices[1].pods.len(), 1);
    assert_eq!(status.devices[1].pods[0].name, "trainer-3");
    let source = |name: &str| status.sources.iter().find(|s| s.name == name).cloned().expect(name);
    assert!(!source("nvml").available, "no NVIDIA library here");
    assert!(source("pod_resources").available);
    let plugins = source("device_plugins");
    assert!(plugins.available);
    assert!(
        plugins.message.as_deref().unwrap_or("").contains("1 device(s) offered, 1 not offered"),
        "{plugins:?}"
    );
    let kernel = source("kernel_log");
    let message = kernel.message.clone().unwrap_or_default();
    if injected {
        assert!(kernel.available, "{message}");
        // "<n> record(s) of this boot read, <f> device-fault line(s), <u> on no known device, ..."
        let numbers: Vec<u64> =
            message.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse().ok()).collect();
        assert!(
            numbers.len() >= 3 && numbers[1] >= 1 && numbers[2] >= 1,
            "the injected Xid was seen: {message}"
        );
        assert_eq!(kernel.version.as_deref(), Some("site-7"), "classified with the operator's catalog");
        assert!(message.contains("; catalog site.yaml; PCIe topology: cannot read"), "{message}");
    } else {
        assert!(!kernel.available, "{message}");
    }
}

#[tokio::test]
async fn a_node_with_nothing_still_gets_an_answer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = |name: &str| dir.path().join(name);
    let paths = SourcePaths {
        kmsg: missing("kmsg"),
        pod_resources_socket: missing("kubelet.sock"),
        device_plugin_dir: missing("device-plugins"),
        nvml_library: Some(missing("libnvidia-ml.so.1")),
        boot_id_file: missing("boot_id"),
        pci_devices_dir: missing("sys-bus-pci-devices"),
        sys_class_dir: missing("sys-class"),
        drm_class_dir: missing("sys-class-drm"),
        accel_class_dir: missing("sys-class-accel"),
        kfd_topology_dir: missing("sys-class-kfd"),
        amdsmi_library: Some(missing("libamd_smi.so")),
        hlml_library: Some(missing("libhlml.so")),
    };
    let object =
        collect_once("bare", &paths, &Catalog::builtin(), Duration::from_secs(1), Time::from_secs(0)).await;
    let status = object.status.expect("status");
    assert!(status.devices.is_empty());
    let names: Vec<&str> = status.sources.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "nvml",
            "sysfs_accelerators",
            "amd_smi",
            "hlml",
            "pod_resources",
            "device_plugins",
            "kernel_log"
        ]
    );
    assert!(
        status.sources.iter().all(|s| !s.available && s.message.as_deref().is_some_and(|m| !m.is_empty()))
    );
}
