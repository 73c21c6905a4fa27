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

// Tested through the public API with a sysfs tree in crates/agent/tests/topology_run.rs.
