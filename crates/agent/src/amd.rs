//! The amdsmi source: AMD GPUs and their ECC/RAS counts through AMD's management library
//! (`libamd_smi.so`), loaded at run time by `devheal-amdsmi`.
//!
//! As with NVML ([`crate::nvml`]), a node without the library (or without an AMD GPU driver)
//! reports the `amd_smi` source unavailable with the reason and the agent runs on; the thread
//! tries again every [`RETRY`]. Everything goes through the small [`AmdTelemetry`] trait: the
//! real library, or [`FakeAmdTelemetry`] in tests.
//!
//! Each GPU is tracked under its PCI address (the key the ROCm device plugin's ids and the
//! kernel's `amdgpu 0000:c1:00.0:` lines give it). Evidence ([`evidence_from_ecc`]):
//! uncorrectable errors since the driver loaded make the GPU Unhealthy, deferred ones (an
//! uncorrectable error not yet consumed) Degraded; correctable ones are not evidence.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration as StdDuration;

use devheal_amdsmi::{AmdGpu, AmdSmi, AmdSmiError, EccCounts};
use devheal_core::{Health, HealthSource};
use tokio::sync::mpsc;

use crate::health::Evidence;

/// The source's name in `status.sources`.
pub const AMD_SMI_SOURCE: &str = "amd_smi";
/// The resource AMD's device plugin registers.
pub const AMD_GPU_RESOURCE: &str = "amd.com/gpu";
/// How long the thread waits before loading the library again.
pub const RETRY: StdDuration = StdDuration::from_secs(30);

/// Reason codes of [`HealthSource::AmdSmi`] evidence.
pub mod codes {
    pub const UNCORRECTABLE_ECC: u32 = 1;
    pub const DEFERRED_ECC: u32 = 2;
}

/// What the agent needs from AMD's management library.
pub trait AmdTelemetry {
    fn gpus(&mut self) -> Result<Vec<AmdGpu>, AmdSmiError>;
    fn ecc(&mut self, gpu: &AmdGpu) -> Result<EccCounts, AmdSmiError>;
}

impl AmdTelemetry for AmdSmi {
    fn gpus(&mut self) -> Result<Vec<AmdGpu>, AmdSmiError> {
        AmdSmi::gpus(self)
    }

    fn ecc(&mut self, gpu: &AmdGpu) -> Result<EccCounts, AmdSmiError> {
        AmdSmi::ecc(self, gpu)
    }
}

/// Scripted AMD GPUs: each GPU's counts by PCI address (a GPU without counts answers
/// `NotSupported`).
#[derive(Clone, Debug, Default)]
pub struct FakeAmdTelemetry {
    pub gpus: Vec<String>,
    pub ecc: std::collections::BTreeMap<String, EccCounts>,
}

impl AmdTelemetry for FakeAmdTelemetry {
    fn gpus(&mut self) -> Result<Vec<AmdGpu>, AmdSmiError> {
        Ok(self
            .gpus
            .iter()
            .enumerate()
            .map(|(index, pci)| AmdGpu { index, pci_address: pci.clone() })
            .collect())
    }

    fn ecc(&mut self, gpu: &AmdGpu) -> Result<EccCounts, AmdSmiError> {
        self.ecc.get(&gpu.pci_address).copied().ok_or(AmdSmiError::NotSupported {
            call: "amdsmi_get_gpu_total_ecc_count",
            gpu: Some(gpu.pci_address.clone()),
        })
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

/// What the amdsmi thread tells the loop.
#[derive(Debug)]
pub enum AmdEvent {
    /// The GPUs amdsmi enumerates, by PCI address.
    Inventory {
        gpus: Vec<String>,
    },
    /// One GPU's evidence (empty: nothing wrong); `None` evidence: the counts are not
    /// supported on it.
    Sample {
        pci_address: String,
        evidence: Option<Vec<Evidence>>,
    },
    SampleFailed {
        pci_address: String,
        message: String,
    },
    Unavailable {
        message: String,
    },
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

/// Start the amdsmi thread: inventory, then every GPU's counts each `interval`; when the
/// library cannot be used, [`AmdEvent::Unavailable`] and a retry after [`RETRY`].
pub fn spawn_amd_telemetry(
    source: AmdSource,
    library: Option<PathBuf>,
    interval: StdDuration,
    events: mpsc::Sender<AmdEvent>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("amdsmi".into()).spawn(move || {
        let send = |e: AmdEvent| events.blocking_send(e).is_ok();
        loop {
            let ended = match &source {
                AmdSource::Off => return,
                AmdSource::Fake(fake) => follow(&mut fake.clone(), interval, &send, &stop),
                AmdSource::AmdSmi => match AmdSmi::open(library.as_deref()) {
                    Ok(mut smi) => follow(&mut smi, interval, &send, &stop),
                    Err(e) => Some(e.to_string()),
                },
            };
            let Some(message) = ended else { return };
            if !send(AmdEvent::Unavailable { message }) || !sleep_unless_stopped(RETRY, &stop) {
                return;
            }
        }
    })
}

/// Returns why it stopped following (`None`: told to stop, or the loop is gone).
fn follow(
    smi: &mut dyn AmdTelemetry,
    interval: StdDuration,
    send: &dyn Fn(AmdEvent) -> bool,
    stop: &AtomicBool,
) -> Option<String> {
    let gpus = match smi.gpus() {
        Ok(gpus) => gpus,
        Err(e) => return Some(e.to_string()),
    };
    if !send(AmdEvent::Inventory { gpus: gpus.iter().map(|g| g.pci_address.clone()).collect() }) {
        return None;
    }
    loop {
        for gpu in &gpus {
            let pci_address = gpu.pci_address.clone();
            let event = match smi.ecc(gpu) {
                Ok(ecc) => AmdEvent::Sample { pci_address, evidence: Some(evidence_from_ecc(&ecc)) },
                Err(AmdSmiError::NotSupported { .. }) => AmdEvent::Sample { pci_address, evidence: None },
                Err(e) => AmdEvent::SampleFailed { pci_address, message: e.to_string() },
            };
            if !send(event) {
                return None;
            }
        }
        if !sleep_unless_stopped(interval, stop) {
            return None;
        }
    }
}

fn sleep_unless_stopped(total: StdDuration, stop: &AtomicBool) -> bool {
    let until = std::time::Instant::now() + total;
    while std::time::Instant::now() < until {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        std::thread::sleep(StdDuration::from_millis(50).min(total));
    }
    !stop.load(Ordering::Relaxed)
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
        let (tx, mut rx) = mpsc::channel(4);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = spawn_amd_telemetry(
            AmdSource::AmdSmi,
            Some("/nonexistent/libamd_smi.so".into()),
            StdDuration::from_secs(1),
            tx,
            Arc::clone(&stop),
        )
        .expect("thread");
        let Some(AmdEvent::Unavailable { message }) = rx.blocking_recv() else { panic!("unavailable first") };
        assert!(
            message.starts_with("amdsmi unavailable: cannot load /nonexistent/libamd_smi.so"),
            "{message}"
        );
        stop.store(true, Ordering::Relaxed);
        thread.join().expect("the thread ends when told");
    }

    #[test]
    fn a_gpu_without_counts_is_not_supported_not_failed() {
        let mut fake = FakeAmdTelemetry { gpus: vec!["0000:c1:00.0".into()], ..FakeAmdTelemetry::default() };
        let gpu = fake.gpus().expect("gpus").remove(0);
        assert!(matches!(fake.ecc(&gpu), Err(AmdSmiError::NotSupported { .. })));
    }
}
