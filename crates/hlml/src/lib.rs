//! devheal-hlml: Intel Gaudi's management library, hlml (`libhlml.so`, installed with the
//! habanalabs driver), loaded at run time, so that one agent binary runs on nodes without it:
//! there [`Hlml::open`] returns [`HlmlError::Unavailable`] with the reason, and the agent
//! reports the source unavailable and carries on.
//!
//! Why the agent needs it: Intel's Gaudi device plugin names each device by its **serial
//! number** (its `Allocate` looks the id up with hlml's `DeviceHandleBySerial`), and nothing in
//! sysfs gives a serial number (the habanalabs driver's attributes are `pci_addr`, `status`,
//! `module_id`, …). hlml is the one place that ties a serial to a PCI address, and so a pod's
//! device to the kernel's `habanalabs hl0:` lines.
//!
//! What is read (the C API as `hlml.h` declares it; the signatures and struct layouts follow
//! Intel's own Python binding, `habana-pyhlml` 1.24.2 on PyPI, `pyhlml/main.py` and
//! `pyhlml_types_generated.py`):
//!
//! - `hlml_init()` once, `hlml_shutdown()` on drop;
//! - the devices: `hlml_device_get_count`, `hlml_device_get_handle_by_index`, each one's
//!   `hlml_device_get_serial` (a `HL_FIELD_MAX_SIZE` = 32 byte buffer) and
//!   `hlml_device_get_pci_info` (`hlml_pci_info_t`: `bus`, `bus_id[19]`, `device`, `domain`, …);
//! - each device's uncorrected ECC errors since its last reset or the driver's load:
//!   `hlml_device_get_total_ecc_errors(dev, HLML_MEMORY_ERROR_TYPE_UNCORRECTED,
//!   HLML_VOLATILE_ECC, &count)`;
//! - critical-error and double-bit ECC events, the signal Intel's device plugin marks a device
//!   unhealthy on: `hlml_event_set_create`, `hlml_device_register_events(dev,
//!   HLML_EVENT_CRITICAL_ERR | HLML_EVENT_ECC_DERR, set)`, `hlml_event_set_wait(set, &data,
//!   timeout_ms)` (`HLML_ERROR_TIMEOUT` when none came), `hlml_event_set_free`.
//!
//! Every `unsafe` block is in the private `ffi` module; this crate denies unsafe code elsewhere.
#![deny(unsafe_code)]

mod ffi;

use std::path::Path;

/// The library's file name, looked up on the loader's path first.
pub const DEFAULT_LIBRARY: &str = "libhlml.so";
/// Where the habanalabs packages install it (tried when the loader's path has none).
pub const INSTALLED_LIBRARY: &str = "/usr/lib/habanalabs/libhlml.so";
/// Most devices read (a Gaudi node has 8).
pub const MAX_DEVICES: u32 = 64;
/// `HLML_EVENT_ECC_DERR`: a double-bit (uncorrectable) ECC error.
pub const EVENT_ECC_DERR: u64 = 1 << 0;
/// `HLML_EVENT_CRITICAL_ERR`: a critical device error (the driver resets the device).
pub const EVENT_CRITICAL_ERR: u64 = 1 << 1;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum HlmlError {
    /// hlml cannot be used on this node: the library is absent, lacks a function, or does not
    /// initialise.
    #[error("hlml unavailable: {0}")]
    Unavailable(String),
    /// The device or library does not support the call.
    #[error("hlml call {call} is not supported{on}", on = device.as_ref().map(|d| format!(" on device {d}")).unwrap_or_default())]
    NotSupported { call: &'static str, device: Option<String> },
    /// Any other failure, with hlml's status code.
    #[error("hlml call {call} failed with status {status}{on}", on = device.as_ref().map(|d| format!(" on device {d}")).unwrap_or_default())]
    Call { call: &'static str, status: u32, device: Option<String> },
}

/// One Gaudi device hlml enumerates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GaudiDevice {
    /// Its position in the last enumeration ([`Hlml::devices`]).
    pub index: usize,
    /// The board's serial number: the id Intel's Gaudi device plugin gives the device.
    pub serial: String,
    /// `dddd:bb:dd.f`, the kernel's form.
    pub pci_address: String,
}

/// An event hlml delivered for a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceEvent {
    /// The device's index in the last enumeration.
    pub index: usize,
    /// `HLML_EVENT_*` bits ([`EVENT_CRITICAL_ERR`], [`EVENT_ECC_DERR`]).
    pub event_type: u64,
}

/// The loaded, initialised library. Its handles belong to the thread that opened it (it is not
/// `Send`): the agent opens it on its telemetry thread.
pub struct Hlml {
    // Field order is drop order: the event set is freed before the library shuts down.
    events: Option<EventSet>,
    handles: Vec<ffi::Handle>,
    unreadable: Vec<HlmlError>,
    lib: std::rc::Rc<ffi::Library>,
}

/// An event set, freed on drop.
struct EventSet {
    set: ffi::Handle,
    lib: std::rc::Rc<ffi::Library>,
}

impl Drop for EventSet {
    fn drop(&mut self) {
        self.lib.free_event_set(self.set);
    }
}

impl Hlml {
    /// Load `path` (else [`DEFAULT_LIBRARY`] from the loader's path, then
    /// [`INSTALLED_LIBRARY`]) and initialise it.
    pub fn open(path: Option<&Path>) -> Result<Hlml, HlmlError> {
        let lib = match path {
            Some(path) => ffi::Library::load(path.as_os_str())?,
            None => match ffi::Library::load(DEFAULT_LIBRARY.as_ref()) {
                Ok(lib) => lib,
                Err(first) => ffi::Library::load(INSTALLED_LIBRARY.as_ref()).map_err(|second| {
                    HlmlError::Unavailable(format!(
                        "{}; {}",
                        first.to_string().trim_start_matches("hlml unavailable: "),
                        second.to_string().trim_start_matches("hlml unavailable: ")
                    ))
                })?,
            },
        };
        Ok(Hlml { events: None, handles: Vec::new(), unreadable: Vec::new(), lib: std::rc::Rc::new(lib) })
    }

    /// Enumerate the devices again, and listen for their critical-error and double-bit ECC
    /// events (a device that refuses the registration is still listed; its events are not
    /// heard, which [`Hlml::events_heard`] tells). A device hlml cannot read (a lost one answers
    /// `HLML_ERROR_AIP_IS_LOST`) is left out and its error kept ([`Hlml::unreadable`]): one
    /// broken Gaudi does not blind the source to the other seven.
    pub fn devices(&mut self) -> Result<Vec<GaudiDevice>, HlmlError> {
        self.events = None;
        self.handles.clear();
        self.unreadable.clear();
        let count = self.lib.count()?.min(MAX_DEVICES);
        let mut devices = Vec::new();
        for i in 0..count {
            let lib = &self.lib;
            let read = (|| {
                let handle = lib.handle(i)?;
                Ok((handle, lib.serial(handle)?, lib.pci(handle)?))
            })();
            let (handle, serial, pci) = match read {
                Ok(read) => read,
                Err(e) => {
                    self.unreadable.push(on_device(e, &format!("#{i}")));
                    continue;
                }
            };
            let pci_address = pci_address(&pci.bus_id).unwrap_or_else(|| {
                format!("{:04x}:{:02x}:{:02x}.0", pci.domain, pci.bus & 0xff, pci.device & 0x1f)
            });
            devices.push(GaudiDevice { index: self.handles.len(), serial, pci_address });
            self.handles.push(handle);
        }
        let set = EventSet { set: self.lib.event_set()?, lib: std::rc::Rc::clone(&self.lib) };
        let mut registered = 0;
        for handle in &self.handles {
            if self.lib.register(*handle, EVENT_CRITICAL_ERR | EVENT_ECC_DERR, set.set).is_ok() {
                registered += 1;
            }
        }
        self.events = (registered > 0).then_some(set);
        Ok(devices)
    }

    /// Why each device the last enumeration left out could not be read.
    pub fn unreadable(&self) -> &[HlmlError] {
        &self.unreadable
    }

    /// Whether events are heard for the devices of the last enumeration.
    pub fn events_heard(&self) -> bool {
        self.events.is_some()
    }

    /// Uncorrected ECC errors of `device` since its last reset or the driver's load.
    pub fn uncorrected_ecc(&self, device: &GaudiDevice) -> Result<u64, HlmlError> {
        let handle = *self.handles.get(device.index).ok_or(HlmlError::Call {
            call: "hlml_device_get_total_ecc_errors",
            status: ffi::ERROR_INVALID_ARGUMENT,
            device: Some(device.serial.clone()),
        })?;
        self.lib.uncorrected_ecc(handle).map_err(|e| on_device(e, &device.serial))
    }

    /// The next event within `timeout_ms` (`None`: none came, or none are heard). An event for a
    /// device not in the last enumeration is dropped.
    pub fn next_event(&self, timeout_ms: u32) -> Result<Option<DeviceEvent>, HlmlError> {
        let Some(events) = &self.events else { return Ok(None) };
        let Some((handle, event_type)) = self.lib.wait(events.set, timeout_ms)? else { return Ok(None) };
        Ok(self.handles.iter().position(|h| *h == handle).map(|index| DeviceEvent { index, event_type }))
    }
}

fn on_device(e: HlmlError, device: &str) -> HlmlError {
    match e {
        HlmlError::NotSupported { call, .. } => HlmlError::NotSupported { call, device: Some(device.into()) },
        HlmlError::Call { call, status, .. } => HlmlError::Call { call, status, device: Some(device.into()) },
        other => other,
    }
}

/// hlml's `bus_id` (`0000:b3:00.0`, or NVML's padded `00000000:B3:00.0`) in the kernel's form.
pub fn pci_address(bus_id: &str) -> Option<String> {
    devheal_core::identity::normalise_pci_address(bus_id).filter(|_| bus_id.contains('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bus_ids_read_as_kernel_addresses() {
        assert_eq!(pci_address("0000:b3:00.0").as_deref(), Some("0000:b3:00.0"));
        assert_eq!(pci_address("00000000:B3:00.0").as_deref(), Some("0000:b3:00.0"));
        assert_eq!(pci_address("0001:1a:1f.7").as_deref(), Some("0001:1a:1f.7"));
        for bad in ["", "0000:b3:00", "0000:b3:20.0", "0000:b3:00.8", "zz:b3:00.0", "0:0:0:0.0"] {
            assert_eq!(pci_address(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_node_without_hlml_reports_unavailable() {
        match Hlml::open(Some(Path::new("/nonexistent/libhlml.so"))) {
            Err(HlmlError::Unavailable(message)) => {
                assert!(message.contains("/nonexistent/libhlml.so"), "{message}")
            }
            Err(other) => panic!("expected Unavailable, got {other}"),
            Ok(_) => panic!("a missing library cannot load"),
        }
    }
}
