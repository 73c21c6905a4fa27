//! AMD and Intel accelerators in the loop: the DRM cards and accel devices read from sysfs
//! every `accelerator_interval` give the identity resolver and the kernel pipeline their names
//! (`card1` of Intel's plugin, Gaudi's `hl0`); the vendor libraries' devices and evidence
//! (amdsmi's AMD GPUs, [`crate::amd`]; hlml's Gaudi devices, [`crate::gaudi`], whose serial
//! numbers the identity resolver takes the Gaudi plugin's ids through) are tracked under their
//! PCI addresses.

use crate::library::LibraryEvent;
use crate::vendor::Library;

use super::*;

/// The sysfs source's name in `status.sources`.
pub(super) const SYSFS_ACCELERATORS_SOURCE: &str = "sysfs_accelerators";

impl LoopState {
    /// Read the DRM cards and accel devices again (when due) and hand their names on.
    pub(super) fn refresh_accelerators(&mut self, now: Time) {
        let due = self.accelerators_read.is_none_or(|at| at.elapsed() >= self.accelerator_interval);
        if !due {
            return;
        }
        self.accelerators_read = Some(tokio::time::Instant::now());
        let read = crate::accel::read_accelerators(
            &self.drm_class_dir,
            &self.accel_class_dir,
            &self.kfd_topology_dir,
        );
        if read != self.accelerators {
            tracing::info!(available = read.available, "accelerators in sysfs: {}", read.message);
            let names = read.names();
            self.identity.set_sysfs_names(names.clone());
            self.identity.set_amd_partitions(read.partition_gpus());
            self.kernel.set_device_names(names);
            // The kubelet's names resolve anew (card1-0 is now a PCI address).
            self.kubelet_last.clear();
            self.apply_kubelet(now);
        }
        self.set_source(SYSFS_ACCELERATORS_SOURCE, read.available, read.message.clone(), None, now);
        self.accelerators = read;
    }

    /// The key of the device at `pci_address`: the device already known there, else the
    /// address (the ROCm plugin's id for an AMD GPU; the key a Gaudi's serial resolves to).
    fn key_at(&self, pci_address: &str) -> String {
        self.identity.key_at_pci(pci_address).unwrap_or_else(|| pci_address.to_string())
    }

    /// An event of a vendor library's thread ([`crate::library`]).
    pub(super) fn handle_library(&mut self, library: Library, event: LibraryEvent, now: Time) {
        let source = library.health_source();
        match event {
            LibraryEvent::Inventory { devices: found, unreadable } => {
                let (found, serials) = crate::library::by_address(&found);
                let addresses: BTreeSet<String> = found.into_iter().map(|(_, pci)| pci).collect();
                // Gaudi: the plugin's serial numbers resolve anew to PCI addresses.
                if library == Library::Gaudi && self.identity.set_gaudi_serials(serials) {
                    self.kubelet_last.clear();
                    self.apply_kubelet(now);
                }
                let devices: Vec<InventoryDevice> = addresses
                    .iter()
                    .map(|pci| InventoryDevice {
                        id: self.key_at(pci),
                        resource: library.resource().into(),
                        vendor: library.vendor(),
                        pci_address: Some(pci.clone()),
                        ..InventoryDevice::default()
                    })
                    .collect();
                for d in &devices {
                    self.tracker.set_watch(&d.id, source, true, now);
                    self.kubelet.note(&d.resource, &d.id);
                }
                let message = library.inventory_message(devices.len(), &unreadable);
                self.library_devices.insert(library, devices);
                self.set_source(library.source_name(), true, message, None, now);
            }
            LibraryEvent::Sample { pci_address, evidence } => {
                let key = self.key_at(&pci_address);
                let Some(evidence) = evidence else { return };
                self.tracker.set_watch(&key, source, true, now);
                let codes: Vec<Option<u32>> = evidence.iter().map(|e| e.code).collect();
                for e in evidence {
                    self.tracker.observe(&key, e, now);
                }
                self.tracker.clear_source_except(&key, source, &codes, now);
            }
            LibraryEvent::SampleFailed { pci_address, message } => {
                tracing::debug!(device = %pci_address, %message, "{} sample failed", library.source_name());
                let key = self.key_at(&pci_address);
                self.tracker.set_watch(&key, source, false, now);
            }
            LibraryEvent::Unavailable { message } => {
                let known = self.library_devices.get(&library).map_or(0, Vec::len);
                for d in self.library_devices.get(&library).into_iter().flatten() {
                    self.tracker.set_watch(&d.id, source, false, now);
                }
                // A node whose sysfs shows none of the library's devices does not need it: its
                // absence is not a source down there (an NVIDIA node would otherwise always list
                // amdsmi and hlml as down).
                if known == 0 && library.absent_from(&self.accelerators) {
                    tracing::debug!(%message, "{} not loaded; none of its devices in sysfs", library.source_name());
                    self.sources.remove(library.source_name());
                    return;
                }
                self.set_source(library.source_name(), false, message, None, now);
            }
        }
    }
}
