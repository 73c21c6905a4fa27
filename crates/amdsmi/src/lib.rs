//! devheal-amdsmi: AMD's management library, amdsmi (`libamd_smi.so`, ROCm), loaded at run
//! time, so that one agent binary runs on nodes without it: there [`AmdSmi::open`] returns
//! [`AmdSmiError::Unavailable`] with the reason, and the agent reports the source unavailable
//! and carries on.
//!
//! What is read (amdsmi's C API, `include/amd_smi/amdsmi.h`, ROCm/amdsmi
//! `0ceca28f4139dced5e9b5739a3f393780d7add48`):
//!
//! - `amdsmi_init(AMDSMI_INIT_AMD_GPUS)` once, `amdsmi_shut_down()` on drop;
//! - the GPUs: `amdsmi_get_socket_handles`, then `amdsmi_get_processor_handles` per socket
//!   (each called first for the count, then for the handles), and each GPU's PCI address from
//!   `amdsmi_get_gpu_device_bdf` ([`bdf_to_pci_address`]);
//! - each GPU's ECC/RAS counts since the driver loaded: `amdsmi_get_gpu_total_ecc_count`
//!   (correctable, uncorrectable, deferred).
//!
//! Every `unsafe` block is in the private `ffi` module; this crate denies unsafe code elsewhere.
#![deny(unsafe_code)]

mod ffi;

use std::path::Path;

/// The library's file name, as ROCm installs it (`/opt/rocm/lib/libamd_smi.so`).
pub const DEFAULT_LIBRARY: &str = "libamd_smi.so";

/// Most sockets and processors per socket read (a node has a few sockets of up to 8 GPUs,
/// partitions included).
pub const MAX_HANDLES: u32 = 64;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum AmdSmiError {
    /// amdsmi cannot be used on this node: the library is absent, lacks a function, or does
    /// not initialise.
    #[error("amdsmi unavailable: {0}")]
    Unavailable(String),
    /// The GPU or library does not support the call.
    #[error("amdsmi call {call} is not supported{on}", on = gpu.as_ref().map(|g| format!(" on GPU {g}")).unwrap_or_default())]
    NotSupported { call: &'static str, gpu: Option<String> },
    /// Any other failure, with amdsmi's status code.
    #[error("amdsmi call {call} failed with status {status}{on}", on = gpu.as_ref().map(|g| format!(" on GPU {g}")).unwrap_or_default())]
    Call { call: &'static str, status: u32, gpu: Option<String> },
}

/// One AMD GPU (or partition) amdsmi enumerates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AmdGpu {
    /// Its position in the last enumeration ([`AmdSmi::gpus`]).
    pub index: usize,
    /// `dddd:bb:dd.f`, the kernel's form.
    pub pci_address: String,
}

/// ECC/RAS error counts of one GPU since the driver loaded (`amdsmi_error_count_t`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EccCounts {
    pub correctable: u64,
    pub uncorrectable: u64,
    pub deferred: u64,
}

/// The loaded, initialised library. Its handles belong to the thread that opened it (it is not
/// `Send`): the agent opens it on its telemetry thread.
pub struct AmdSmi {
    lib: ffi::Library,
    handles: Vec<ffi::Handle>,
}

impl AmdSmi {
    /// Load `path` (else [`DEFAULT_LIBRARY`] from the loader's path) and initialise it for
    /// AMD GPUs.
    pub fn open(path: Option<&Path>) -> Result<AmdSmi, AmdSmiError> {
        let lib = ffi::Library::load(path.map(Path::as_os_str).unwrap_or(DEFAULT_LIBRARY.as_ref()))?;
        Ok(AmdSmi { lib, handles: Vec::new() })
    }

    /// Enumerate the GPUs again.
    pub fn gpus(&mut self) -> Result<Vec<AmdGpu>, AmdSmiError> {
        self.handles = self.lib.processors()?;
        self.handles
            .iter()
            .enumerate()
            .map(|(index, handle)| {
                let bdf = self.lib.device_bdf(*handle, index)?;
                Ok(AmdGpu { index, pci_address: bdf_to_pci_address(bdf) })
            })
            .collect()
    }

    /// The ECC counts of `gpu` (from the last [`AmdSmi::gpus`]).
    pub fn ecc(&self, gpu: &AmdGpu) -> Result<EccCounts, AmdSmiError> {
        let handle = *self.handles.get(gpu.index).ok_or(AmdSmiError::Call {
            call: "amdsmi_get_gpu_total_ecc_count",
            status: ffi::STATUS_INVAL,
            gpu: Some(gpu.pci_address.clone()),
        })?;
        self.lib.total_ecc_count(handle).map_err(|e| with_gpu(e, &gpu.pci_address))
    }
}

fn with_gpu(e: AmdSmiError, pci: &str) -> AmdSmiError {
    match e {
        AmdSmiError::NotSupported { call, .. } => {
            AmdSmiError::NotSupported { call, gpu: Some(pci.to_string()) }
        }
        AmdSmiError::Call { call, status, .. } => {
            AmdSmiError::Call { call, status, gpu: Some(pci.to_string()) }
        }
        other => other,
    }
}

/// The PCI address in an `amdsmi_bdf_t` read as its `uint64_t as_uint`: function in bits 0–2,
/// device in bits 3–7, bus in bits 8–15, domain in bits 16–63 (the bit-field struct of the
/// union, least significant member first).
pub fn bdf_to_pci_address(bdf: u64) -> String {
    let function = bdf & 0x7;
    let device = (bdf >> 3) & 0x1f;
    let bus = (bdf >> 8) & 0xff;
    let domain = bdf >> 16;
    format!("{domain:04x}:{bus:02x}:{device:02x}.{function}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bdf_words_read_as_kernel_addresses() {
        // 0000:c1:00.0: bus 0xc1 in bits 8–15.
        assert_eq!(bdf_to_pci_address(0xc1 << 8), "0000:c1:00.0");
        // 0001:3b:1f.7
        assert_eq!(bdf_to_pci_address((1 << 16) | (0x3b << 8) | (0x1f << 3) | 7), "0001:3b:1f.7");
        assert_eq!(bdf_to_pci_address(0), "0000:00:00.0");
    }

    #[test]
    fn a_node_without_amdsmi_reports_unavailable() {
        match AmdSmi::open(Some(Path::new("/nonexistent/libamd_smi.so"))) {
            Err(AmdSmiError::Unavailable(message)) => {
                assert!(message.contains("/nonexistent/libamd_smi.so"), "{message}")
            }
            Err(other) => panic!("expected Unavailable, got {other}"),
            Ok(_) => panic!("a missing library cannot load"),
        }
    }
}
