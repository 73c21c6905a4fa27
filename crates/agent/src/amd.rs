//! The amdsmi source: AMD GPUs and their ECC/RAS counts through AMD's management library
//! (`libamd_smi.so`), loaded at run time by `devheal-amdsmi`.
//!
//! As with NVML ([`crate::nvml`]), a node without the library (or without an AMD GPU driver)
//! reports the `amd_smi` source unavailable with the reason and the agent runs on; the thread
//! ([`crate::library`]) tries again every [`crate::library::RETRY`]. Everything goes through
//! the [`DeviceLibrary`] trait: the real library ([`AmdLibrary`]), or [`FakeAmdTelemetry`] in
//! tests.
//!
//! Each GPU is tracked under its PCI address (the key the ROCm device plugin's ids and the
//! kernel's `amdgpu 0000:c1:00.0:` lines give it). Evidence ([`evidence_from_ecc`]):
//! uncorrectable errors since the driver loaded make the GPU Unhealthy, deferred ones (an
//! uncorrectable error not yet consumed) Degraded; correctable ones are not evidence.

use std::path::PathBuf;

use devheal_amdsmi::{AmdGpu, AmdSmi, AmdSmiError, EccCounts};
use devheal_core::{Health, HealthSource};

use crate::health::Evidence;
use crate::library::{DeviceLibrary, LibraryDevice, Opener};

/// The source's name in `status.sources`.
pub const AMD_SMI_SOURCE: &str = "amd_smi";
/// The resource AMD's device plugin registers.
pub const AMD_GPU_RESOURCE: &str = "amd.com/gpu";

/// Reason codes of [`HealthSource::AmdSmi`] evidence.
pub mod codes {
    pub const UNCORRECTABLE_ECC: u32 = 1;
    pub const DEFERRED_ECC: u32 = 2;
}

/// amdsmi as a [`DeviceLibrary`]: its GPUs of the last enumeration and their counts.
pub struct AmdLibrary {
    smi: AmdSmi,
    gpus: Vec<AmdGpu>,
}

impl DeviceLibrary for AmdLibrary {
    fn devices(&mut self) -> Result<Vec<LibraryDevice>, String> {
        self.gpus = self.smi.gpus().map_err(|e| e.to_string())?;
        Ok(self
            .gpus
            .iter()
            .map(|g| LibraryDevice { pci_address: g.pci_address.clone(), serial: None })
            .collect())
    }

    fn sample(&mut self, index: usize) -> Result<Option<Vec<Evidence>>, String> {
        let gpu = self.gpus.get(index).ok_or_else(|| format!("no AMD GPU #{index}"))?;
        sample_result(self.smi.ecc(gpu))
    }
}

/// Counts, or not supported (`None`), or a failure.
fn sample_result(ecc: Result<EccCounts, AmdSmiError>) -> Result<Option<Vec<Evidence>>, String> {
    match ecc {
        Ok(ecc) => Ok(Some(evidence_from_ecc(&ecc))),
        Err(AmdSmiError::NotSupported { .. }) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// Scripted AMD GPUs: each GPU's counts by PCI address (a GPU without counts answers
/// `NotSupported`).
#[derive(Clone, Debug, Default)]
pub struct FakeAmdTelemetry {
    pub gpus: Vec<String>,
    pub ecc: std::collections::BTreeMap<String, EccCounts>,
}

impl FakeAmdTelemetry {
    fn ecc(&self, pci_address: &str) -> Result<EccCounts, AmdSmiError> {
        self.ecc.get(pci_address).copied().ok_or(AmdSmiError::NotSupported {
            call: "amdsmi_get_gpu_total_ecc_count",
            gpu: Some(pci_address.to_string()),
        })
    }
}

impl DeviceLibrary for FakeAmdTelemetry {
    fn devices(&mut self) -> Result<Vec<LibraryDevice>, String> {
        Ok(self.gpus.iter().map(|pci| LibraryDevice { pci_address: pci.clone(), serial: None }).collect())
    }

    fn sample(&mut self, index: usize) -> Result<Option<Vec<Evidence>>, String> {
        let pci = self.gpus.get(index).ok_or_else(|| format!("no AMD GPU #{index}"))?;
        sample_result(self.ecc(pci))
    }
}

/// Where AMD GPU telemetry comes from.
#[derive(Clone, Debug, Default)]
pub enum AmdSource {
    /// amdsmi, loaded at run time (retried while absent).
    #[default]
    AmdSmi,
    /// Scripted GPUs (tests).
    Fake(FakeAmdTelemetry),
    /// None.
    Off,
}

impl AmdSource {
    /// How the library thread opens this source (`library`: amdsmi's path); `None`: off.
    pub fn opener(&self, library: Option<PathBuf>) -> Option<Opener> {
        match self.clone() {
            AmdSource::Off => None,
            AmdSource::Fake(fake) => {
                Some(Box::new(move || Ok(Box::new(fake.clone()) as Box<dyn DeviceLibrary>)))
            }
            AmdSource::AmdSmi => Some(Box::new(move || {
                let smi = AmdSmi::open(library.as_deref()).map_err(|e| e.to_string())?;
                Ok(Box::new(AmdLibrary { smi, gpus: Vec::new() }) as Box<dyn DeviceLibrary>)
            })),
        }
    }
}

/// Evidence from one GPU's counts.
pub fn evidence_from_ecc(ecc: &EccCounts) -> Vec<Evidence> {
    let mut out = Vec::new();
    let evidence =
        |code, health, message| Evidence { source: HealthSource::AmdSmi, code: Some(code), health, message };
    if ecc.uncorrectable > 0 {
        out.push(evidence(
            codes::UNCORRECTABLE_ECC,
            Health::Unhealthy,
            format!("{} uncorrectable ECC error(s) since the driver loaded (amdsmi)", ecc.uncorrectable),
        ));
    }
    if ecc.deferred > 0 {
        out.push(evidence(
            codes::DEFERRED_ECC,
            Health::Degraded,
            format!("{} deferred ECC error(s) since the driver loaded (amdsmi)", ecc.deferred),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uncorrectable_errors_are_unhealthy_deferred_degraded_correctable_nothing() {
        let codes = |e: EccCounts| -> Vec<(Option<u32>, Health)> {
            evidence_from_ecc(&e).into_iter().map(|e| (e.code, e.health)).collect()
        };
        assert!(codes(EccCounts { correctable: 12, ..EccCounts::default() }).is_empty());
        assert_eq!(
            codes(EccCounts { correctable: 1, uncorrectable: 2, deferred: 1 }),
            [
                (Some(codes::UNCORRECTABLE_ECC), Health::Unhealthy),
                (Some(codes::DEFERRED_ECC), Health::Degraded)
            ]
        );
    }

    #[test]
    fn a_missing_library_is_reported_unavailable_and_the_thread_runs_on() {
        use crate::library::{LibraryEvent, spawn_library_thread};
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        let stop = Arc::new(AtomicBool::new(false));
        let open = AmdSource::AmdSmi.opener(Some("/nonexistent/libamd_smi.so".into())).expect("on");
        let thread =
            spawn_library_thread("amdsmi", open, std::time::Duration::from_secs(1), tx, Arc::clone(&stop))
                .expect("thread");
        let Some(LibraryEvent::Unavailable { message }) = rx.blocking_recv() else {
            panic!("unavailable first")
        };
        assert!(
            message.starts_with("amdsmi unavailable: cannot load /nonexistent/libamd_smi.so"),
            "{message}"
        );
        stop.store(true, Ordering::Relaxed);
        thread.join().expect("the thread ends when told");
        assert!(AmdSource::Off.opener(None).is_none(), "off: no thread");
    }

    #[test]
    fn a_gpu_without_counts_is_not_supported_not_failed() {
        let mut fake = FakeAmdTelemetry { gpus: vec!["0000:c1:00.0".into()], ..FakeAmdTelemetry::default() };
        assert_eq!(fake.devices().expect("gpus").len(), 1);
        assert_eq!(fake.sample(0), Ok(None));
        assert!(fake.sample(1).is_err(), "no such GPU");
    }
}
