//! The node's PCIe topology from sysfs, for the kernel-log correlation
//! ([`devheal_detect::Topology`]): which bridge or switch port each device sits below, and which
//! GPUs the node's NVSwitches link.
//!
//! - **PCIe paths.** `/sys/bus/pci/devices/<address>` is a link to the device's place in
//!   `/sys/devices`, e.g. `/sys/devices/pci0000:00/0000:00:01.0/0000:01:00.0/0000:02:08.0/0000:1b:00.0`:
//!   every PCI address on the way is the parent of the next. The agent resolves the link of each
//!   device it tracks (NVML's GPUs, AMD's, fake devices: a fake address has no entry and is
//!   skipped) and records the chain.
//! - **NVSwitches.** An NVIDIA function of class `0x0680` (bridge, other) is an NVSwitch. On an
//!   HGX baseboard every NVSwitch is linked to every GPU of the board (8 GPUs, 4 or 6 switches,
//!   each GPU's NVLinks spread over all of them), so each switch found is recorded as linking
//!   every NVIDIA GPU of class `0x03xx` the agent tracks. Rack-scale systems (NVL72) have their
//!   switches in separate trays, not on the node's PCI bus: none is found there, and no link is
//!   assumed.
//!
//! The read is bounded ([`MAX_ENTRIES`] directory entries, [`devheal_detect::topology::MAX_DEPTH`]
//! per path) and never fails the agent: what cannot be read is said in [`PciTopology::message`].

use std::collections::BTreeSet;
use std::path::Path;

use devheal_detect::Topology;
use devheal_detect::pci::normalize_pci_address;

/// Most `/sys/bus/pci/devices` entries looked at (a large node has a few hundred functions).
pub const MAX_ENTRIES: usize = 4096;
/// The PCI vendor id of NVIDIA.
const NVIDIA_VENDOR: &str = "0x10de";

/// What was read.
#[derive(Clone, Debug, Default)]
pub struct PciTopology {
    pub topology: Topology,
    /// Devices placed on a PCIe path.
    pub placed: usize,
    /// NVSwitches found, each linked to the GPUs in [`Self::linked_gpus`].
    pub switches: usize,
    pub linked_gpus: usize,
    /// Tracked devices with no sysfs entry (fake devices, a device gone).
    pub missing: usize,
    /// Whether the directory could be read at all.
    pub available: bool,
    /// One line for the source's status.
    pub message: String,
}

/// The PCI addresses on the way to a device, upstream first, from its resolved sysfs path.
fn chain_of(path: &Path) -> Vec<String> {
    path.components().filter_map(|c| c.as_os_str().to_str().and_then(normalize_pci_address)).collect()
}

fn read_attr(dir: &Path, address: &str, attr: &str) -> Option<String> {
    let text = std::fs::read_to_string(dir.join(address).join(attr)).ok()?;
    Some(text.trim().to_ascii_lowercase())
}

/// Read the topology of `devices` (normalised PCI addresses) from `dir`
/// (`/sys/bus/pci/devices`).
pub fn read_pci_topology(dir: &Path, devices: &BTreeSet<String>) -> PciTopology {
    let mut out = PciTopology::default();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            out.message =
                format!("cannot read {}: {e}; faults are mapped by their own address only", dir.display());
            return out;
        }
    };
    out.available = true;
    let mut errors = Vec::new();
    for device in devices {
        let Ok(resolved) = std::fs::canonicalize(dir.join(device)) else {
            out.missing += 1;
            continue;
        };
        let chain = chain_of(&resolved);
        if chain.last() != Some(device) {
            errors.push(format!("{device}: its sysfs path {} does not end in it", resolved.display()));
            continue;
        }
        if chain.len() < 2 {
            continue;
        }
        match out.topology.add_path(&chain) {
            Ok(()) => out.placed += 1,
            Err(e) => errors.push(format!("{device}: {e}")),
        }
    }
    // NVSwitches on the node's bus, and the NVIDIA GPUs among the tracked devices.
    let mut switches = Vec::new();
    for entry in entries.take(MAX_ENTRIES).flatten() {
        let Some(address) = entry.file_name().to_str().and_then(normalize_pci_address) else { continue };
        let nvidia = read_attr(dir, &address, "vendor").is_some_and(|v| v == NVIDIA_VENDOR);
        if nvidia && read_attr(dir, &address, "class").is_some_and(|c| c.starts_with("0x0680")) {
            switches.push(address);
        }
    }
    switches.sort();
    let gpus: Vec<String> = devices
        .iter()
        .filter(|d| {
            read_attr(dir, d, "vendor").is_some_and(|v| v == NVIDIA_VENDOR)
                && read_attr(dir, d, "class").is_some_and(|c| c.starts_with("0x03"))
        })
        .cloned()
        .collect();
    if !gpus.is_empty() {
        for switch in &switches {
            match out.topology.add_nvlinks(switch, &gpus) {
                Ok(()) => out.switches += 1,
                Err(e) => errors.push(format!("NVSwitch {switch}: {e}")),
            }
        }
        if out.switches > 0 {
            out.linked_gpus = gpus.len();
        }
    }
    out.message = format!(
        "{} of {} device(s) placed on their PCIe path, {} NVSwitch(es) linking {} GPU(s), {} without a sysfs entry",
        out.placed,
        devices.len(),
        out.switches,
        out.linked_gpus,
        out.missing
    );
    if !errors.is_empty() {
        errors.truncate(3);
        out.message.push_str(&format!("; not used: {}", errors.join("; ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sysfs tree in `root`: `devices/<path>` directories with `vendor` and `class` files, and
    /// `bus/pci/devices/<address>` links to them, as the kernel lays them out.
    pub(crate) fn fake_sysfs(root: &Path, functions: &[(&str, &str, &str)]) -> std::path::PathBuf {
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
}
