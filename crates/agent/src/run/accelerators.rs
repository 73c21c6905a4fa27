//! AMD and Intel accelerators in the loop: the DRM cards and accel devices read from sysfs
//! every `accelerator_interval` give the identity resolver and the kernel pipeline their names
//! (`card1` of Intel's plugin, Gaudi's `hl0`), and amdsmi's GPUs and ECC counts
//! ([`crate::amd`]) are tracked under their PCI addresses.

use crate::amd::{AMD_GPU_RESOURCE, AMD_SMI_SOURCE, AmdEvent};
use devheal_k8s::crd::DeviceVendor;

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

    /// The key of the AMD GPU at `pci_address`: the device already known there, else the
    /// address (the ROCm plugin's id for it).
    fn amd_key(&self, pci_address: &str) -> String {
        self.identity.key_at_pci(pci_address).unwrap_or_else(|| pci_address.to_string())
    }

    pub(super) fn handle_amd(&mut self, event: AmdEvent, now: Time) {
        match event {
            AmdEvent::Inventory { gpus } => {
                let addresses: BTreeSet<String> =
                    gpus.iter().filter_map(|g| devheal_core::identity::normalise_pci_address(g)).collect();
                let devices: Vec<InventoryDevice> = addresses
                    .iter()
                    .map(|pci| InventoryDevice {
                        id: self.amd_key(pci),
                        resource: AMD_GPU_RESOURCE.into(),
                        vendor: DeviceVendor::Amd,
                        pci_address: Some(pci.clone()),
                        ..InventoryDevice::default()
                    })
                    .collect();
                for gpu in &devices {
                    self.tracker.set_watch(&gpu.id, HealthSource::AmdSmi, true, now);
                    self.kubelet.note(&gpu.resource, &gpu.id);
                }
                let message = format!("{} AMD GPU(s)", devices.len());
                self.amd_devices = devices;
                self.set_source(AMD_SMI_SOURCE, true, message, None, now);
            }
            AmdEvent::Sample { pci_address, evidence } => {
                let key = self.amd_key(&pci_address);
                let Some(evidence) = evidence else { return };
                self.tracker.set_watch(&key, HealthSource::AmdSmi, true, now);
                let codes: Vec<Option<u32>> = evidence.iter().map(|e| e.code).collect();
                for e in evidence {
                    self.tracker.observe(&key, e, now);
                }
                self.tracker.clear_source_except(&key, HealthSource::AmdSmi, &codes, now);
            }
            AmdEvent::SampleFailed { pci_address, message } => {
                tracing::debug!(gpu = %pci_address, %message, "amdsmi sample failed");
                let key = self.amd_key(&pci_address);
                self.tracker.set_watch(&key, HealthSource::AmdSmi, false, now);
            }
            AmdEvent::Unavailable { message } => {
                for gpu in &self.amd_devices {
                    self.tracker.set_watch(&gpu.id, HealthSource::AmdSmi, false, now);
                }
                // A node whose sysfs shows no AMD GPU does not need amdsmi: its absence is not
                // a source down there (an NVIDIA node would otherwise always list one).
                if self.amd_devices.is_empty() && self.accelerators.has_no_amd_gpu() {
                    tracing::debug!(%message, "amdsmi not loaded; no AMD GPU in sysfs");
                    self.sources.remove(AMD_SMI_SOURCE);
                    return;
                }
                self.set_source(AMD_SMI_SOURCE, false, message, None, now);
            }
        }
    }
}
