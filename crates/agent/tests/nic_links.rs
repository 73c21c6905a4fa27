//! NIC links in the running agent: sysfs played by a tree laid out as the kernel lays out
//! `/sys/class/net` and `/sys/class/infiniband` (links to the PCI function, `operstate`,
//! `flags`, `ports/<n>/state`), the kernel log by a saved log the test appends mlx5 lines to
//! (the format of `mlx5_core`'s `mlx5e_update_carrier`: `mlx5_core 0000:08:00.0 ens1np0: Link
//! down`). A flap is counted and nothing more; a link that stays down is a network fault in
//! `status.network` (the GPU stays Healthy), cleared once the link is up and stable; a line
//! about a NIC this node does not have is not followed. The sysfs reader itself
//! (`devheal_agent::nic`) is tested on the same kind of tree at the end.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{ChannelPublisher, kmsg_record, scripted_gpus, test_config, wait_for_status};
use devheal_agent::nic::read_nics;
use devheal_agent::nvml::GpuIdentity;
use devheal_agent::run::start;
use devheal_detect::{LinkConfig, LinkState};
use devheal_k8s::crd::{DeviceHealthState, NicLinkState, NicLinkStatus, NodeDeviceHealthStatus};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(20);
const RDMA_NIC: &str = "0000:08:00.0";
const GPU: &str = "GPU-4404041a-04cf-1ccf-9e70-f139a9b1e23c";

/// A fake `/sys/class` under `root`.
struct FakeClass {
    root: PathBuf,
}

impl FakeClass {
    fn new(root: &Path) -> Self {
        std::fs::create_dir_all(root.join("net")).expect("net dir");
        std::fs::create_dir_all(root.join("infiniband")).expect("infiniband dir");
        FakeClass { root: root.to_path_buf() }
    }

    /// `net/<name>`, linked to the PCI function `pci` (none: a virtual interface).
    fn interface(&self, name: &str, pci: Option<&str>, operstate: &str, flags: &str) -> &Self {
        let dir = self.root.join("net").join(name);
        std::fs::create_dir_all(&dir).expect("interface dir");
        if let Some(pci) = pci {
            let target = format!("../../../devices/pci0000:00/0000:00:01.0/{pci}");
            std::os::unix::fs::symlink(target, dir.join("device")).expect("device link");
        }
        std::fs::write(dir.join("operstate"), format!("{operstate}\n")).expect("operstate");
        std::fs::write(dir.join("flags"), format!("{flags}\n")).expect("flags");
        self
    }

    /// `infiniband/<name>` on `pci`, with one port in `state`.
    fn rdma(&self, name: &str, pci: &str, state: &str) -> &Self {
        let dir = self.root.join("infiniband").join(name);
        std::fs::create_dir_all(dir.join("ports/1")).expect("port dir");
        let target = format!("../../../devices/pci0000:00/0000:00:01.0/{pci}");
        std::os::unix::fs::symlink(target, dir.join("device")).expect("device link");
        std::fs::write(dir.join("ports/1/state"), format!("{state}\n")).expect("port state");
        self
    }

    /// The link as the kernel would show it after a change.
    fn set_link(&self, interface: &str, rdma: &str, up: bool) {
        let (oper, port) = if up { ("up", "4: ACTIVE") } else { ("down", "1: DOWN") };
        std::fs::write(self.root.join("net").join(interface).join("operstate"), format!("{oper}\n"))
            .expect("operstate");
        std::fs::write(self.root.join("infiniband").join(rdma).join("ports/1/state"), format!("{port}\n"))
            .expect("port state");
    }
}

fn append(kmsg: &Path, records: &[String]) {
    std::fs::OpenOptions::new()
        .append(true)
        .open(kmsg)
        .and_then(|mut f| f.write_all(records.concat().as_bytes()))
        .expect("append kernel records");
}

fn nic<'a>(status: &'a NodeDeviceHealthStatus, pci: &str) -> Option<&'a NicLinkStatus> {
    status.network.iter().find(|n| n.pci_address == pci)
}

fn gpu_health(status: &NodeDeviceHealthStatus) -> Option<DeviceHealthState> {
    status.devices.iter().find(|d| d.id == GPU).map(|d| d.health)
}

fn metric(rendered: &str, name: &str) -> f64 {
    rendered
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flap_is_counted_a_dead_link_is_a_network_fault_and_it_clears_when_stable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path(), "node-a");
    let class = FakeClass::new(&config.paths.sys_class_dir);
    class
        .interface("ens1np0", Some(RDMA_NIC), "up", "0x1003")
        .rdma("mlx5_0", RDMA_NIC, "4: ACTIVE")
        // The management NIC: no RDMA, so not the fabric on a node that has RDMA NICs.
        .interface("eno1", Some("0000:03:00.0"), "up", "0x1003")
        .interface("lo", None, "unknown", "0x9");
    config.links = LinkConfig {
        down_after: devheal_core::Duration::from_secs(3),
        flap_window: devheal_core::Duration::from_mins(1),
        max_flaps: 1,
        stable_after: devheal_core::Duration::from_secs(2),
    };
    config.nic_interval = Duration::from_millis(100);
    config.gpus = scripted_gpus(vec![GpuIdentity {
        index: 0,
        uuid: GPU.into(),
        name: "scripted".into(),
        pci_address: "0000:1b:00.0".into(),
        minor: Some(0),
        migs: Vec::new(),
    }]);
    config.nvml_interval = Duration::from_millis(200);

    let (statuses, mut rx) = mpsc::unbounded_channel();
    let (events, _event_rx) = mpsc::unbounded_channel();
    let kmsg = config.paths.kmsg.clone();
    let agent = start(config, ChannelPublisher { statuses, events }).await.expect("agent starts");
    let status = wait_for_status(&mut rx, WAIT, "the RDMA NIC followed, up", |s| {
        nic(s, RDMA_NIC).is_some_and(|n| n.link == NicLinkState::Up)
            && gpu_health(s) == Some(DeviceHealthState::Healthy)
    })
    .await;
    assert_eq!(status.network.len(), 1, "only the fabric: {:?}", status.network);
    assert_eq!(
        nic(&status, RDMA_NIC).map(|n| n.names.clone()),
        Some(vec!["ens1np0".into(), "mlx5_0".into()])
    );

    // A flap: down, and up again within the 3 s. Down for 1 s: long enough for a loaded
    // machine's 100 ms sysfs poll to see it (at 400 ms a run under load once saw neither), short
    // enough to be back up well inside the 3 s.
    class.set_link("ens1np0", "mlx5_0", false);
    append(&kmsg, &[kmsg_record(1, 6, "mlx5_core 0000:08:00.0 ens1np0: Link down")]);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    class.set_link("ens1np0", "mlx5_0", true);
    append(&kmsg, &[kmsg_record(2, 6, "mlx5_core 0000:08:00.0 ens1np0: Link up")]);
    let status = wait_for_status(&mut rx, WAIT, "one flap counted", |s| {
        nic(s, RDMA_NIC).is_some_and(|n| n.flaps == 1 && n.link == NicLinkState::Up)
    })
    .await;
    assert_eq!(nic(&status, RDMA_NIC).and_then(|n| n.fault.clone()), None, "a flap is no fault");
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let rendered = agent.metrics.render();
    assert_eq!(metric(&rendered, "devheal_agent_nic_link_flaps_total"), 1.0, "{rendered}");
    assert_eq!(metric(&rendered, "devheal_agent_nic_links_at_fault"), 0.0);

    // Another node's NIC (or one this node does not follow): not followed.
    append(&kmsg, &[kmsg_record(3, 6, "mlx5_core 0000:99:00.0 ens9np0: Link down")]);
    // The link dies and stays down: a network fault from when it went down; the GPU is fine.
    class.set_link("ens1np0", "mlx5_0", false);
    append(&kmsg, &[kmsg_record(4, 6, "mlx5_core 0000:08:00.0 ens1np0: Link down")]);
    let status = wait_for_status(&mut rx, WAIT, "the dead link at fault", |s| {
        nic(s, RDMA_NIC).is_some_and(|n| n.fault.is_some())
    })
    .await;
    let dead = nic(&status, RDMA_NIC).expect("the NIC");
    assert_eq!(dead.link, NicLinkState::Down);
    assert!(dead.fault_since.is_some());
    assert!(
        dead.fault.as_deref().is_some_and(|f| f.contains("link down on ens1np0 (0000:08:00.0)")),
        "{dead:?}"
    );
    assert_eq!(gpu_health(&status), Some(DeviceHealthState::Healthy), "a network fault is no GPU's");
    let rendered = agent.metrics.render();
    assert_eq!(metric(&rendered, "devheal_agent_nic_links_at_fault"), 1.0, "{rendered}");
    assert!(metric(&rendered, "devheal_agent_nic_lines_not_followed_total") >= 1.0, "{rendered}");

    // Up again: cleared once stable for 2 s.
    class.set_link("ens1np0", "mlx5_0", true);
    append(&kmsg, &[kmsg_record(5, 6, "mlx5_core 0000:08:00.0 ens1np0: Link up")]);
    let status = wait_for_status(&mut rx, WAIT, "the fault cleared", |s| {
        nic(s, RDMA_NIC).is_some_and(|n| n.fault.is_none() && n.link == NicLinkState::Up)
    })
    .await;
    assert_eq!(nic(&status, RDMA_NIC).map(|n| n.flaps), Some(1), "a long down is not a flap");

    agent.stop().await;
}

#[test]
fn the_sysfs_reader_maps_interfaces_and_rdma_devices_to_their_pci_function() {
    let dir = tempfile::tempdir().expect("tempdir");
    let class = FakeClass::new(dir.path());
    class
        .interface("ens1np0", Some("0000:08:00.0"), "up", "0x1003")
        .rdma("mlx5_0", "0000:08:00.0", "4: ACTIVE")
        .interface("ens2np0", Some("0000:09:00.0"), "down", "0x1003")
        .rdma("mlx5_1", "0000:0a:00.0", "2: INIT")
        // Administratively down: not in use, says nothing.
        .interface("ens3", Some("0000:0b:00.0"), "down", "0x1002")
        .interface("veth12", None, "up", "0x1003")
        .interface("lo", None, "unknown", "0x9");
    let read = read_nics(dir.path());
    assert!(read.available);
    let found: Vec<(&str, Option<LinkState>)> =
        read.nics.iter().map(|n| (n.pci_address.as_str(), n.link)).collect();
    assert_eq!(
        found,
        [
            ("0000:08:00.0", Some(LinkState::Up)),
            ("0000:09:00.0", Some(LinkState::Down)),
            ("0000:0a:00.0", None),
            ("0000:0b:00.0", None),
        ]
    );
    let fabric: Vec<&str> = read.fabric().map(|n| n.pci_address.as_str()).collect();
    assert_eq!(fabric, ["0000:08:00.0", "0000:0a:00.0"], "the RDMA NICs");
    assert_eq!(read.nics[0].label(), "ens1np0 (0000:08:00.0)");
    assert_eq!(read.find(None, Some("mlx5_0")).map(|n| n.pci_address.as_str()), Some("0000:08:00.0"));
    assert_eq!(read.find(None, Some("ens2np0")).map(|n| n.pci_address.as_str()), Some("0000:09:00.0"));
    assert!(read.find(Some("0000:99:00.0"), Some("ens1np0")).is_none(), "the address decides");
    assert!(read.find(None, Some("veth12")).is_none(), "a virtual interface is no NIC");

    // A port down on an RDMA device makes its NIC down, whatever the interface says.
    class.set_link("ens1np0", "mlx5_0", true);
    std::fs::write(dir.path().join("infiniband/mlx5_0/ports/1/state"), "1: DOWN\n").expect("state");
    assert_eq!(read_nics(dir.path()).nics[0].link, Some(LinkState::Down));

    let missing = read_nics(&dir.path().join("absent"));
    assert!(!missing.available);
    assert!(missing.nics.is_empty());
    assert!(missing.message.contains("cannot read"), "{}", missing.message);
}
