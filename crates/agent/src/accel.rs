//! AMD and Intel accelerators from sysfs: which PCI device each DRM card and each accel device
//! is, so that the names their device plugins and their drivers give them reach one device.
//!
//! - **DRM cards** (`/sys/class/drm/card<N>`, [`read_accelerators`]'s `drm_dir`): an AMD GPU
//!   (`amdgpu`, vendor `0x1002`) or an Intel GPU (`i915` or `xe`, vendor `0x8086`). Each
//!   card's `device` is a link to its PCI device, whose last component is the PCI address;
//!   `device/vendor`, `device/class` (`0x030000` VGA, `0x038000` display controller, `0x120000`
//!   processing accelerator) and the `device/driver` link say what it is. Intel's GPU plugin
//!   names GPUs by card (`card1-0`, [`devheal_core::identity::split_replica_of`]); AMD's by PCI
//!   address.
//! - **MI300 partitions.** A partition beyond the first is a platform device,
//!   `/sys/devices/platform/amdgpu_xcp_<n>`, with a card and a render node of its own (the
//!   ROCm plugin's id for it is `amdgpu_xcp_<n>`). Which GPU it is a slice of, KFD's topology
//!   says (as the ROCm plugin reads it): the node whose `drm_render_minor` is the partition's
//!   render node has the GPU's `domain` and `location_id` (bus in bits 8–15, device in bits
//!   3–7; the function bits number the partition), so the GPU is `domain:bus:device.0`.
//! - **accel devices** (`/sys/class/accel/accel<N>`, `accel_dir`): Intel Gaudi (`habanalabs`,
//!   vendor `0x1da3`), whose kernel lines name the device `accel<N>` or, with the driver before
//!   the accel subsystem, `hl<N>` (the same number: both are the driver's device id).
//!
//! The read is bounded ([`MAX_ENTRIES`] entries per directory, [`MAX_DEVICES`] devices) and
//! never fails the agent: what cannot be read is said in [`AcceleratorInventory::message`].

use std::collections::BTreeMap;
use std::path::Path;

use devheal_core::Vendor;
use devheal_core::identity::{drm_card, normalise_pci_address};

/// Most entries looked at in each class directory (`drm/` also holds connectors and render
/// nodes: a few per card).
pub const MAX_ENTRIES: usize = 4096;
/// Most devices kept (and most partitions).
pub const MAX_DEVICES: usize = 256;
/// Most KFD topology nodes read, and the longest `properties` file read of each.
pub const MAX_KFD_NODES: usize = 1024;
pub const MAX_PROPERTIES_BYTES: u64 = 64 * 1024;

/// PCI vendor ids.
const AMD_VENDOR: &str = "0x1002";
const INTEL_VENDOR: &str = "0x8086";
const HABANA_VENDOR: &str = "0x1da3";

/// One accelerator as sysfs has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SysfsAccelerator {
    /// Its class device: `card1`, `accel0`.
    pub name: String,
    /// `dddd:bb:dd.f`.
    pub pci_address: String,
    pub vendor: Vendor,
    /// The PCI class (`0x038000`).
    pub class: Option<String>,
    /// The kernel driver bound to it (`amdgpu`, `i915`, `xe`, `habanalabs`).
    pub driver: Option<String>,
}

/// An MI300 partition (a platform device `amdgpu_xcp_<n>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AmdPartition {
    /// `amdgpu_xcp_<n>`: the ROCm plugin's id for it.
    pub id: String,
    /// Its render node's minor number (`renderD<minor>`).
    pub render_minor: Option<u32>,
    /// The GPU it is a slice of, from KFD's topology.
    pub gpu: Option<String>,
}

/// What was read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AcceleratorInventory {
    /// Sorted by name.
    pub devices: Vec<SysfsAccelerator>,
    /// MI300 partitions, by id.
    pub partitions: Vec<AmdPartition>,
    /// Whether either directory could be read.
    pub available: bool,
    /// One line for the source's status.
    pub message: String,
}

impl AcceleratorInventory {
    /// The PCI address of the device a driver or plugin calls `name`: `card<N>`, `accel<N>`,
    /// or `hl<N>` (the Gaudi driver's name before the accel subsystem: `accel<N>`).
    pub fn pci_of(&self, name: &str) -> Option<&str> {
        let wanted = match name.strip_prefix("hl") {
            Some(n) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => format!("accel{n}"),
            _ => name.to_string(),
        };
        self.devices.iter().find(|d| d.name == wanted).map(|d| d.pci_address.as_str())
    }

    /// Whether sysfs was read and shows no AMD GPU: amdsmi's absence then says nothing.
    pub fn has_no_amd_gpu(&self) -> bool {
        self.available && !self.devices.iter().any(|d| d.vendor == Vendor::Amd) && self.partitions.is_empty()
    }

    /// Whether sysfs was read and shows no Gaudi (no accel device bound to `habanalabs`): hlml's
    /// absence then says nothing.
    pub fn has_no_gaudi(&self) -> bool {
        self.available && !self.devices.iter().any(|d| d.driver.as_deref() == Some("habanalabs"))
    }

    /// Each partition whose GPU is known: partition id → the GPU's PCI address.
    pub fn partition_gpus(&self) -> BTreeMap<String, String> {
        self.partitions.iter().filter_map(|p| Some((p.id.clone(), p.gpu.clone()?))).collect()
    }

    /// Every name → PCI address, `hl<N>` beside `accel<N>`.
    pub fn names(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for d in &self.devices {
            out.insert(d.name.clone(), d.pci_address.clone());
            if let Some(n) = d.name.strip_prefix("accel") {
                out.insert(format!("hl{n}"), d.pci_address.clone());
            }
        }
        out
    }
}

fn read_attr(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    // Attribute files are one short line.
    (text.len() <= 64).then(|| text.trim().to_ascii_lowercase())
}

fn link_name(path: &Path) -> Option<String> {
    let target = std::fs::read_link(path).ok()?;
    target.file_name()?.to_str().map(str::to_string)
}

fn vendor_of(id: &str) -> Option<Vendor> {
    match id {
        AMD_VENDOR => Some(Vendor::Amd),
        INTEL_VENDOR | HABANA_VENDOR => Some(Vendor::Intel),
        _ => None,
    }
}

/// What one class directory held.
#[derive(Default)]
struct Walk {
    readable: bool,
    error: Option<String>,
    skipped: usize,
}

/// Each entry of `dir` that `is_device` accepts and whose `device` link is a PCI function of an
/// accepted vendor, into `out` (bounded).
fn walk(
    dir: &Path,
    is_device: impl Fn(&str) -> bool,
    vendors: &[&str],
    out: &mut BTreeMap<String, SysfsAccelerator>,
    partitions: &mut BTreeMap<String, AmdPartition>,
    optional: bool,
) -> Walk {
    let mut walk = Walk::default();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        // No accel class at all is a node without an accel driver: nothing to say.
        Err(e) if optional && e.kind() == std::io::ErrorKind::NotFound => return walk,
        Err(e) => {
            walk.error = Some(format!("cannot read {}: {e}", dir.display()));
            return walk;
        }
    };
    walk.readable = true;
    for entry in entries.take(MAX_ENTRIES).flatten() {
        let Some(name) = entry.file_name().to_str().map(str::to_string) else { continue };
        let render_minor = name.strip_prefix("renderD").and_then(|m| m.parse::<u32>().ok());
        if !is_device(&name) && render_minor.is_none() {
            continue;
        }
        let path = entry.path();
        let Some(target) = link_name(&path.join("device")) else { continue };
        if target.starts_with("amdgpu_xcp_") {
            if !partitions.contains_key(&target) && partitions.len() >= MAX_DEVICES {
                walk.skipped += 1;
                continue;
            }
            let partition = partitions.entry(target.clone()).or_insert_with(|| AmdPartition {
                id: target,
                render_minor: None,
                gpu: None,
            });
            if render_minor.is_some() {
                partition.render_minor = render_minor;
            }
            continue;
        }
        if render_minor.is_some() {
            continue;
        }
        let Some(pci_address) = normalise_pci_address(&target).filter(|_| target.contains('.')) else {
            continue;
        };
        let Some(vendor_id) = read_attr(&path.join("device/vendor")) else { continue };
        if !vendors.contains(&vendor_id.as_str()) {
            continue;
        }
        let Some(vendor) = vendor_of(&vendor_id) else { continue };
        if out.len() >= MAX_DEVICES {
            walk.skipped += 1;
            continue;
        }
        out.insert(
            name.clone(),
            SysfsAccelerator {
                name,
                pci_address,
                vendor,
                class: read_attr(&path.join("device/class")),
                driver: link_name(&path.join("device/driver")),
            },
        );
    }
    walk
}

/// The PCI address of the GPU each KFD topology node under `dir`
/// (`/sys/class/kfd/kfd/topology/nodes`) with a render node stands for: render minor → GPU.
/// A node without a GPU (a CPU: `drm_render_minor 0`) or whose properties cannot be read is
/// skipped; `None` when the directory cannot be read.
pub fn read_kfd_gpus(dir: &Path) -> Option<BTreeMap<u32, String>> {
    use std::io::Read;
    let entries = std::fs::read_dir(dir).ok()?;
    let mut out = BTreeMap::new();
    for entry in entries.take(MAX_KFD_NODES).flatten() {
        let Ok(file) = std::fs::File::open(entry.path().join("properties")) else { continue };
        let mut text = String::new();
        if file.take(MAX_PROPERTIES_BYTES).read_to_string(&mut text).is_err() {
            continue;
        }
        let value = |key: &str| -> Option<u64> {
            text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
        };
        let (Some(minor), Some(location), Some(domain)) =
            (value("drm_render_minor"), value("location_id"), value("domain"))
        else {
            continue;
        };
        let Ok(minor) = u32::try_from(minor) else { continue };
        if minor == 0 || domain > 0xffff_ffff {
            continue;
        }
        let (bus, device) = ((location >> 8) & 0xff, (location >> 3) & 0x1f);
        out.insert(minor, format!("{domain:04x}:{bus:02x}:{device:02x}.0"));
    }
    Some(out)
}

/// Read the DRM cards under `drm_dir` (`/sys/class/drm`), the accel devices under
/// `accel_dir` (`/sys/class/accel`) and, for MI300 partitions, KFD's topology nodes under
/// `kfd_dir` (`/sys/class/kfd/kfd/topology/nodes`).
pub fn read_accelerators(drm_dir: &Path, accel_dir: &Path, kfd_dir: &Path) -> AcceleratorInventory {
    let mut found = BTreeMap::new();
    let mut partitions = BTreeMap::new();
    let drm = walk(
        drm_dir,
        |n| drm_card(n).is_some(),
        &[AMD_VENDOR, INTEL_VENDOR],
        &mut found,
        &mut partitions,
        false,
    );
    let accel = walk(
        accel_dir,
        |n| n.strip_prefix("accel").is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit())),
        &[HABANA_VENDOR],
        &mut found,
        &mut partitions,
        true,
    );
    // Each partition's GPU, from KFD (read only where there are partitions).
    let kfd = if partitions.is_empty() { Some(BTreeMap::new()) } else { read_kfd_gpus(kfd_dir) };
    for p in partitions.values_mut() {
        p.gpu = p.render_minor.and_then(|m| kfd.as_ref()?.get(&m).cloned());
    }
    let mut out = AcceleratorInventory {
        devices: found.into_values().collect(),
        partitions: partitions.into_values().collect(),
        available: drm.readable || accel.readable,
        message: String::new(),
    };
    let count = |v: Vendor| out.devices.iter().filter(|d| d.vendor == v).count();
    out.message = format!(
        "{} AMD and {} Intel accelerator(s) by PCI address",
        count(Vendor::Amd),
        count(Vendor::Intel)
    );
    if !out.partitions.is_empty() {
        let mapped = out.partitions.iter().filter(|p| p.gpu.is_some()).count();
        let total = out.partitions.len();
        out.message.push_str(&format!(", {total} MI300 partition(s), {mapped} mapped to their GPU"));
        if kfd.is_none() {
            out.message.push_str(&format!(" (cannot read {})", kfd_dir.display()));
        }
    }
    let skipped = drm.skipped + accel.skipped;
    if skipped > 0 {
        out.message.push_str(&format!(" ({skipped} beyond the first {MAX_DEVICES} not read)"));
    }
    let errors: Vec<String> = [drm.error, accel.error].into_iter().flatten().collect();
    if !errors.is_empty() {
        out.message.push_str(&format!("; {}", errors.join("; ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hl_names_are_the_accel_devices() {
        let inv = AcceleratorInventory {
            devices: vec![SysfsAccelerator {
                name: "accel2".into(),
                pci_address: "0000:4d:00.0".into(),
                vendor: Vendor::Intel,
                class: None,
                driver: Some("habanalabs".into()),
            }],
            ..AcceleratorInventory::default()
        };
        assert_eq!(inv.pci_of("hl2"), Some("0000:4d:00.0"));
        assert_eq!(inv.pci_of("accel2"), Some("0000:4d:00.0"));
        assert_eq!(inv.pci_of("hl"), None);
        assert_eq!(inv.pci_of("card2"), None);
        assert_eq!(inv.names().get("hl2").map(String::as_str), Some("0000:4d:00.0"));
    }

    #[test]
    fn missing_directories_are_reported_not_fatal() {
        let inv = read_accelerators(
            Path::new("/nonexistent/drm"),
            Path::new("/nonexistent/accel"),
            Path::new("/nonexistent/kfd"),
        );
        assert!(!inv.available);
        assert!(inv.devices.is_empty());
        assert!(inv.message.contains("cannot read /nonexistent/drm"), "{}", inv.message);
        assert!(
            !inv.message.contains("/nonexistent/accel"),
            "no accel class is no accel driver: {}",
            inv.message
        );
    }
}
