//! The NVML source: GPU telemetry and Xid events through NVIDIA's management library.
//!
//! The library (`libnvidia-ml.so.1`) is loaded at run time, so the same agent binary runs on
//! nodes without NVIDIA GPUs: there [`NvmlTelemetry::open`] returns
//! [`TelemetryError::Unavailable`] and the agent carries on with its other sources.
//!
//! Everything the agent reads goes through the small [`GpuTelemetry`] trait; the real
//! implementation is [`NvmlTelemetry`], and [`FakeGpuTelemetry`] plays scripted GPUs in tests.
//! A signal that a GPU does not support (NVML's `NotSupported`) is `None` in the sample and named
//! in [`GpuSample::unsupported`]; any other failure to read it is named in [`GpuSample::errors`],
//! so "this GPU has no NVLink" never looks like "NVLink broke".

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use nvml_wrapper::enum_wrappers::device::{
    Clock, EccCounter, MemoryError, RetirementCause, TemperatureSensor,
};
use nvml_wrapper::enum_wrappers::nv_link::ErrorCounter;
use nvml_wrapper::enums::device::SampleValue;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::struct_wrappers::device::FieldValueSample;
use nvml_wrapper::structs::device::FieldId;
use nvml_wrapper::sys_exports::field_id::{
    NVML_FI_DEV_REMAPPED_COR, NVML_FI_DEV_REMAPPED_FAILURE, NVML_FI_DEV_REMAPPED_PENDING,
    NVML_FI_DEV_REMAPPED_UNC,
};
use nvml_wrapper::{Device, Nvml};
use serde::{Deserialize, Serialize};

/// Upper bound on NVLink links per GPU that NVML defines (`NVML_NVLINK_MAX_LINKS`).
const MAX_NVLINKS: u32 = 18;

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// NVML cannot be used on this node: the library is absent, or it does not initialise.
    #[error("NVML unavailable: {0}")]
    Unavailable(String),
    #[error("NVML call {call} failed for GPU {gpu}: {message}")]
    Call { call: &'static str, gpu: String, message: String },
}

/// Driver and library versions, for the infrastructure view (failure mode 1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriverInfo {
    pub driver_version: String,
    pub nvml_version: String,
    pub device_count: u32,
}

/// What identifies one GPU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuIdentity {
    pub index: u32,
    pub uuid: String,
    pub name: String,
    /// `dddd:bb:dd.f`, lower case: the form the kernel log uses.
    pub pci_address: String,
    /// `/dev/nvidia<minor>` (the NVIDIA DRA driver names GPUs `gpu-<minor>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minor: Option<u32>,
    /// The GPU's MIG devices, when it is in MIG mode.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub migs: Vec<MigIdentity>,
}

/// What identifies one MIG device of a GPU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigIdentity {
    /// Its index under the GPU (`nvmlDeviceGetMigDeviceHandleByIndex`; the NVIDIA device
    /// plugin's `<gpu>:<mig>` index id).
    pub index: u32,
    /// `MIG-<uuid>` (R470 and later) or `MIG-GPU-<uuid>/<gi>/<ci>` (R450, R460).
    pub uuid: String,
}

impl GpuIdentity {
    /// The GPU as the node's identity map keeps it.
    pub fn physical(&self) -> crate::identity::PhysicalGpu {
        crate::identity::PhysicalGpu {
            uuid: self.uuid.clone(),
            index: Some(self.index),
            minor: self.minor,
            pci_address: devheal_core::identity::normalise_pci_address(&self.pci_address),
            migs: self
                .migs
                .iter()
                .map(|m| crate::identity::MigDevice { index: m.index, uuid: m.uuid.clone() })
                .collect(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Clocks {
    pub sm_mhz: Option<u32>,
    /// The application clock the SM runs at under load unless something holds it back.
    pub sm_application_mhz: Option<u32>,
    pub sm_max_mhz: Option<u32>,
    pub memory_mhz: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EccCounts {
    pub enabled: Option<bool>,
    pub volatile_corrected: Option<u64>,
    pub volatile_uncorrected: Option<u64>,
    pub aggregate_corrected: Option<u64>,
    pub aggregate_uncorrected: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RetiredPages {
    pub multiple_single_bit: Option<u64>,
    pub double_bit: Option<u64>,
    pub pending: Option<bool>,
}

/// Row remapping (Ampere and later): the HBM repair mechanism behind Xid 63/64.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RowRemapping {
    pub corrected_rows: Option<u64>,
    pub uncorrected_rows: Option<u64>,
    /// A remap waits for a GPU reset.
    pub pending: Option<bool>,
    /// A remap failed: the GPU needs replacing.
    pub failure: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PcieLink {
    pub generation: Option<u32>,
    pub max_generation: Option<u32>,
    pub width: Option<u32>,
    pub max_width: Option<u32>,
    pub replay_counter: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NvLinkSample {
    pub link: u32,
    pub active: bool,
    pub replay_errors: Option<u64>,
    pub recovery_errors: Option<u64>,
    pub crc_flit_errors: Option<u64>,
    pub crc_data_errors: Option<u64>,
}

/// One reading of every signal the agent watches on one GPU.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GpuSample {
    pub uuid: String,
    pub pci_address: String,
    /// Unix time of the reading, in milliseconds.
    pub at_unix_ms: i64,
    pub temperature_c: Option<u32>,
    pub power_mw: Option<u32>,
    pub power_limit_mw: Option<u32>,
    pub clocks: Clocks,
    /// Active clock throttle (clock event) reasons, by NVML name, e.g. `HW_SLOWDOWN`.
    pub throttle_reasons: Vec<String>,
    pub ecc: EccCounts,
    pub retired_pages: RetiredPages,
    pub row_remapping: RowRemapping,
    pub pcie: PcieLink,
    /// Links that exist on this GPU (inactive ones included); empty when it has none.
    pub nvlinks: Vec<NvLinkSample>,
    /// Signals this GPU does not support.
    pub unsupported: Vec<String>,
    /// Signals that failed to read for another reason, with the error.
    pub errors: BTreeMap<String, String>,
}

/// A critical Xid reported by NVML's event API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct XidEvent {
    pub uuid: String,
    pub pci_address: String,
    /// `None` when NVML reports an Xid it could not decode.
    pub xid: Option<u64>,
    pub at_unix_ms: i64,
}

/// What the agent needs from a GPU management library.
pub trait GpuTelemetry {
    fn driver(&self) -> Result<DriverInfo, TelemetryError>;
    fn gpus(&self) -> Result<Vec<GpuIdentity>, TelemetryError>;
    fn sample(&self, index: u32) -> Result<GpuSample, TelemetryError>;
}

/// The real NVML.
pub struct NvmlTelemetry {
    nvml: Arc<Nvml>,
}

impl NvmlTelemetry {
    /// Load and initialise NVML from the default library path.
    pub fn open() -> Result<Self, TelemetryError> {
        Self::open_at(None)
    }

    /// Load NVML from `lib_path` (a DaemonSet may mount the driver's libraries elsewhere).
    pub fn open_at(lib_path: Option<&std::ffi::OsStr>) -> Result<Self, TelemetryError> {
        let mut builder = Nvml::builder();
        if let Some(path) = lib_path {
            builder.lib_path(path);
        }
        let nvml = builder.init().map_err(|e| TelemetryError::Unavailable(e.to_string()))?;
        Ok(NvmlTelemetry { nvml: Arc::new(nvml) })
    }

    fn device(&self, index: u32) -> Result<Device<'_>, TelemetryError> {
        self.nvml.device_by_index(index).map_err(|e| call_error("device_by_index", index, e))
    }

    /// Start the Xid event thread: NVML's event wait blocks, so it gets a thread of its own and
    /// forwards each critical Xid to `sink` until `stop` is set (checked every `poll_ms`).
    pub fn spawn_xid_watcher(
        &self,
        sink: Sender<XidEvent>,
        stop: Arc<AtomicBool>,
        poll_ms: u32,
    ) -> Result<JoinHandle<Result<(), TelemetryError>>, TelemetryError> {
        let nvml = Arc::clone(&self.nvml);
        // Register on this thread first so a failure is reported to the caller, then move on.
        let count = nvml.device_count().map_err(|e| TelemetryError::Unavailable(e.to_string()))?;
        std::thread::Builder::new()
            .name("nvml-xid-events".into())
            .spawn(move || xid_event_loop(&nvml, count, &sink, &stop, poll_ms))
            .map_err(|e| TelemetryError::Unavailable(format!("cannot start the Xid event thread: {e}")))
    }
}

fn xid_event_loop(
    nvml: &Nvml,
    count: u32,
    sink: &Sender<XidEvent>,
    stop: &AtomicBool,
    poll_ms: u32,
) -> Result<(), TelemetryError> {
    use nvml_wrapper::bitmasks::event::EventTypes;
    let mut set = nvml.create_event_set().map_err(|e| TelemetryError::Unavailable(e.to_string()))?;
    for index in 0..count {
        let device = nvml.device_by_index(index).map_err(|e| call_error("device_by_index", index, e))?;
        set = device.register_events(EventTypes::CRITICAL_XID_ERROR, set).map_err(|e| {
            TelemetryError::Call { call: "register_events", gpu: index.to_string(), message: e.to_string() }
        })?;
    }
    while !stop.load(Ordering::Relaxed) {
        match set.wait(poll_ms) {
            Ok(event) => {
                let uuid = event.device.uuid().unwrap_or_default();
                let pci_address =
                    event.device.pci_info().map(|p| normalise_bus_id(&p.bus_id)).unwrap_or_default();
                let xid = match event.event_data {
                    Some(nvml_wrapper::enums::event::XidError::Value(v)) => Some(v),
                    _ => None,
                };
                if sink.send(XidEvent { uuid, pci_address, xid, at_unix_ms: unix_ms() }).is_err() {
                    return Ok(()); // the receiver is gone: the agent is shutting down
                }
            }
            Err(NvmlError::Timeout) => {}
            Err(e) => {
                return Err(TelemetryError::Call {
                    call: "event_set_wait",
                    gpu: "*".into(),
                    message: e.to_string(),
                });
            }
        }
    }
    Ok(())
}

impl GpuTelemetry for NvmlTelemetry {
    fn driver(&self) -> Result<DriverInfo, TelemetryError> {
        let unavailable = |e: NvmlError| TelemetryError::Unavailable(e.to_string());
        Ok(DriverInfo {
            driver_version: self.nvml.sys_driver_version().map_err(unavailable)?,
            nvml_version: self.nvml.sys_nvml_version().map_err(unavailable)?,
            device_count: self.nvml.device_count().map_err(unavailable)?,
        })
    }

    fn gpus(&self) -> Result<Vec<GpuIdentity>, TelemetryError> {
        let count = self.nvml.device_count().map_err(|e| TelemetryError::Unavailable(e.to_string()))?;
        (0..count)
            .map(|index| {
                let device = self.device(index)?;
                Ok(GpuIdentity {
                    index,
                    uuid: device.uuid().map_err(|e| call_error("uuid", index, e))?,
                    name: device.name().map_err(|e| call_error("name", index, e))?,
                    pci_address: normalise_bus_id(
                        &device.pci_info().map_err(|e| call_error("pci_info", index, e))?.bus_id,
                    ),
                    // Not every GPU or driver answers these: identity then has fewer names.
                    minor: device.minor_number().ok(),
                    migs: mig_devices(&device),
                })
            })
            .collect()
    }

    fn sample(&self, index: u32) -> Result<GpuSample, TelemetryError> {
        let device = self.device(index)?;
        let mut s = GpuSample {
            uuid: device.uuid().map_err(|e| call_error("uuid", index, e))?,
            pci_address: normalise_bus_id(
                &device.pci_info().map_err(|e| call_error("pci_info", index, e))?.bus_id,
            ),
            at_unix_ms: unix_ms(),
            ..GpuSample::default()
        };
        let mut r = Recorder { unsupported: Vec::new(), errors: BTreeMap::new() };

        s.temperature_c = r.take("temperature", device.temperature(TemperatureSensor::Gpu));
        s.power_mw = r.take("power_usage", device.power_usage());
        s.power_limit_mw = r.take("enforced_power_limit", device.enforced_power_limit());
        s.clocks = Clocks {
            sm_mhz: r.take("clock_sm", device.clock_info(Clock::SM)),
            sm_application_mhz: r.take("applications_clock_sm", device.applications_clock(Clock::SM)),
            sm_max_mhz: r.take("max_clock_sm", device.max_clock_info(Clock::SM)),
            memory_mhz: r.take("clock_memory", device.clock_info(Clock::Memory)),
        };
        if let Some(reasons) = r.take("throttle_reasons", device.current_throttle_reasons()) {
            s.throttle_reasons = reasons.iter_names().map(|(name, _)| name.to_string()).collect();
        }
        s.ecc = EccCounts {
            enabled: r.take("ecc_mode", device.is_ecc_enabled()).map(|m| m.currently_enabled),
            volatile_corrected: r.take(
                "ecc_volatile_corrected",
                device.total_ecc_errors(MemoryError::Corrected, EccCounter::Volatile),
            ),
            volatile_uncorrected: r.take(
                "ecc_volatile_uncorrected",
                device.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile),
            ),
            aggregate_corrected: r.take(
                "ecc_aggregate_corrected",
                device.total_ecc_errors(MemoryError::Corrected, EccCounter::Aggregate),
            ),
            aggregate_uncorrected: r.take(
                "ecc_aggregate_uncorrected",
                device.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Aggregate),
            ),
        };
        s.retired_pages = RetiredPages {
            multiple_single_bit: r
                .take("retired_pages_sbe", device.retired_pages(RetirementCause::MultipleSingleBitEccErrors))
                .map(|p| p.len() as u64),
            double_bit: r
                .take("retired_pages_dbe", device.retired_pages(RetirementCause::DoubleBitEccError))
                .map(|p| p.len() as u64),
            pending: r.take("retired_pages_pending", device.are_pages_pending_retired()),
        };
        s.row_remapping = read_row_remapping(&device, &mut r);
        s.pcie = PcieLink {
            generation: r.take("pcie_link_gen", device.current_pcie_link_gen()),
            max_generation: r.take("pcie_max_link_gen", device.max_pcie_link_gen()),
            width: r.take("pcie_link_width", device.current_pcie_link_width()),
            max_width: r.take("pcie_max_link_width", device.max_pcie_link_width()),
            replay_counter: r.take("pcie_replay_counter", device.pcie_replay_counter()).map(u64::from),
        };
        for link in 0..MAX_NVLINKS {
            let wrapper = device.link_wrapper_for(link);
            let active = match wrapper.is_active() {
                Ok(active) => active,
                // Links past the GPU's last one answer NotSupported / InvalidArg: the GPU has fewer.
                Err(NvmlError::NotSupported) | Err(NvmlError::InvalidArg) => break,
                Err(e) => {
                    r.errors.insert(format!("nvlink_{link}_state"), e.to_string());
                    continue;
                }
            };
            let mut counter = |name: &str, c: ErrorCounter| -> Option<u64> {
                r.take_named(format!("nvlink_{link}_{name}"), wrapper.error_counter(c))
            };
            s.nvlinks.push(NvLinkSample {
                link,
                active,
                replay_errors: counter("replay", ErrorCounter::DlReplay),
                recovery_errors: counter("recovery", ErrorCounter::DlRecovery),
                crc_flit_errors: counter("crc_flit", ErrorCounter::DlCrcFlit),
                crc_data_errors: counter("crc_data", ErrorCounter::DlCrcData),
            });
        }
        if s.nvlinks.is_empty() {
            r.unsupported.push("nvlink".into());
        }
        s.unsupported = r.unsupported;
        s.errors = r.errors;
        Ok(s)
    }
}

/// The MIG devices of a GPU in MIG mode (none otherwise, or where NVML cannot say).
fn mig_devices(device: &Device<'_>) -> Vec<MigIdentity> {
    let enabled = device.mig_mode().is_ok_and(|m| m.current == 1);
    if !enabled {
        return Vec::new();
    }
    let slots = device.mig_device_count().unwrap_or(0);
    (0..slots)
        .filter_map(|index| {
            // Empty slots answer NotFound.
            let mig = device.mig_device_by_index(index).ok()?;
            Some(MigIdentity { index, uuid: mig.uuid().ok()? })
        })
        .collect()
}

fn read_row_remapping(device: &Device<'_>, r: &mut Recorder) -> RowRemapping {
    let ids = [
        FieldId(NVML_FI_DEV_REMAPPED_COR),
        FieldId(NVML_FI_DEV_REMAPPED_UNC),
        FieldId(NVML_FI_DEV_REMAPPED_PENDING),
        FieldId(NVML_FI_DEV_REMAPPED_FAILURE),
    ];
    let Some(samples) = r.take("row_remapping", device.field_values_for(&ids)) else {
        return RowRemapping::default();
    };
    let mut values = samples.into_iter().zip(["corrected", "uncorrected", "pending", "failure"]).map(
        |(sample, name): (Result<FieldValueSample, NvmlError>, &str)| {
            let value = sample.and_then(|s| s.value);
            r.take_named(format!("row_remapping_{name}"), value).map(sample_as_u64)
        },
    );
    let corrected_rows = values.next().flatten();
    let uncorrected_rows = values.next().flatten();
    let pending = values.next().flatten().map(|v| v != 0);
    let failure = values.next().flatten().map(|v| v != 0);
    RowRemapping { corrected_rows, uncorrected_rows, pending, failure }
}

fn sample_as_u64(v: SampleValue) -> u64 {
    match v {
        SampleValue::U32(v) => u64::from(v),
        SampleValue::U64(v) => v,
        SampleValue::I64(v) => v.max(0) as u64,
        SampleValue::F64(v) => v.max(0.0) as u64,
    }
}

/// Sorts each signal's result into a value, "unsupported" or an error.
struct Recorder {
    unsupported: Vec<String>,
    errors: BTreeMap<String, String>,
}

impl Recorder {
    fn take<T>(&mut self, name: &str, result: Result<T, NvmlError>) -> Option<T> {
        self.take_named(name.to_string(), result)
    }

    fn take_named<T>(&mut self, name: String, result: Result<T, NvmlError>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(NvmlError::NotSupported) | Err(NvmlError::FunctionNotFound) => {
                self.unsupported.push(name);
                None
            }
            Err(e) => {
                self.errors.insert(name, e.to_string());
                None
            }
        }
    }
}

fn call_error(call: &'static str, index: u32, e: NvmlError) -> TelemetryError {
    TelemetryError::Call { call, gpu: index.to_string(), message: e.to_string() }
}

fn unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// NVML prints bus ids as `00000000:3B:00.0` (8-digit domain, upper case); the kernel log and
/// sysfs use `0000:3b:00.0`. Normalise to the kernel's form.
pub fn normalise_bus_id(bus_id: &str) -> String {
    devheal_core::identity::normalise_pci_address(bus_id)
        .unwrap_or_else(|| bus_id.trim().to_ascii_lowercase())
}

/// Scripted GPUs for tests and demos: returns the samples it was given.
#[derive(Clone, Debug, Default)]
pub struct FakeGpuTelemetry {
    pub driver: Option<DriverInfo>,
    pub gpus: Vec<GpuIdentity>,
    pub samples: BTreeMap<u32, GpuSample>,
}

impl GpuTelemetry for FakeGpuTelemetry {
    fn driver(&self) -> Result<DriverInfo, TelemetryError> {
        self.driver.clone().ok_or_else(|| TelemetryError::Unavailable("no fake driver configured".into()))
    }

    fn gpus(&self) -> Result<Vec<GpuIdentity>, TelemetryError> {
        Ok(self.gpus.clone())
    }

    fn sample(&self, index: u32) -> Result<GpuSample, TelemetryError> {
        self.samples.get(&index).cloned().ok_or_else(|| TelemetryError::Call {
            call: "sample",
            gpu: index.to_string(),
            message: "no such fake GPU".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bus_ids_are_normalised_to_the_kernel_form() {
        assert_eq!(normalise_bus_id("00000000:3B:00.0"), "0000:3b:00.0");
        assert_eq!(normalise_bus_id("0000:3b:00.0"), "0000:3b:00.0");
        assert_eq!(normalise_bus_id("00000001:C1:00.1"), "0001:c1:00.1");
        // A VMD domain keeps its fifth digit (the kernel prints 10000:e1:00.0).
        assert_eq!(normalise_bus_id("00010000:E1:00.0"), "10000:e1:00.0");
        assert_eq!(normalise_bus_id("garbage"), "garbage");
    }

    #[test]
    fn a_node_without_nvml_reports_unavailable_rather_than_failing() {
        // This machine has no NVIDIA driver; where one exists the library must load instead.
        let has_driver = std::path::Path::new("/proc/driver/nvidia/version").exists();
        match NvmlTelemetry::open_at(Some(std::ffi::OsStr::new("/nonexistent/libnvidia-ml.so.1"))) {
            Err(TelemetryError::Unavailable(msg)) => assert!(!msg.is_empty()),
            Err(other) => panic!("expected Unavailable, got {other}"),
            Ok(_) => panic!("a missing library path cannot load"),
        }
        if !has_driver {
            assert!(matches!(NvmlTelemetry::open(), Err(TelemetryError::Unavailable(_))));
        }
    }

    #[test]
    fn fake_telemetry_serves_what_it_was_given() {
        let gpu = GpuIdentity {
            index: 0,
            uuid: "GPU-0".into(),
            name: "Fake".into(),
            pci_address: "0000:3b:00.0".into(),
            minor: None,
            migs: vec![],
        };
        let sample = GpuSample { uuid: "GPU-0".into(), temperature_c: Some(40), ..GpuSample::default() };
        let fake = FakeGpuTelemetry {
            driver: None,
            gpus: vec![gpu.clone()],
            samples: BTreeMap::from([(0, sample.clone())]),
        };
        assert_eq!(fake.gpus().ok(), Some(vec![gpu]));
        assert_eq!(fake.sample(0).ok(), Some(sample));
        assert!(fake.sample(1).is_err());
        assert!(matches!(fake.driver(), Err(TelemetryError::Unavailable(_))));
    }
}
