//! The C calls into hlml: with devheal-amdsmi's and nvml-wrapper's, the only `unsafe` code in
//! devheal.
//!
//! Each function is looked up once when the library loads (a missing one makes the library
//! unavailable, never a crash later) and kept with the library, so the pointers live as long as
//! it does. Every call passes pointers to memory owned here and sized as `hlml.h` declares;
//! strings the library writes are read up to the buffer's end even without a terminating NUL.
#![allow(unsafe_code)]

use std::ffi::{OsStr, c_char, c_void};
use std::ptr::null_mut;

use crate::HlmlError;

/// `hlml_return_t` values used here.
pub(crate) const SUCCESS: u32 = 0;
pub(crate) const ERROR_INVALID_ARGUMENT: u32 = 2;
const ERROR_NOT_SUPPORTED: u32 = 3;
const ERROR_TIMEOUT: u32 = 10;
/// `HL_FIELD_MAX_SIZE`: the buffer for a serial number.
const FIELD_MAX_SIZE: usize = 32;
/// `PCI_ADDR_LEN` (`PCI_DOMAIN_LEN` 9 + 10): the bus id string in `hlml_pci_info_t`.
const PCI_ADDR_LEN: usize = 19;
const PCI_LINK_INFO_LEN: usize = 10;
/// `HLML_MEMORY_ERROR_TYPE_UNCORRECTED`, `HLML_VOLATILE_ECC`.
const MEMORY_ERROR_UNCORRECTED: u32 = 1;
const VOLATILE_ECC: u32 = 0;

/// An `hlml_device_t` (or `hlml_event_set_t`): an opaque pointer owned by the library, valid
/// until `hlml_shutdown` (an event set: until `hlml_event_set_free`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Handle(*mut c_void);

/// `hlml_pci_cap_t`.
#[repr(C)]
#[derive(Default)]
struct PciCap {
    link_speed: [c_char; PCI_LINK_INFO_LEN],
    link_width: [c_char; PCI_LINK_INFO_LEN],
    link_max_speed: [c_char; PCI_LINK_INFO_LEN],
    link_max_width: [c_char; PCI_LINK_INFO_LEN],
}

/// `hlml_pci_info_t`.
#[repr(C)]
#[derive(Default)]
struct PciInfo {
    bus: u32,
    bus_id: [c_char; PCI_ADDR_LEN],
    device: u32,
    domain: u32,
    pci_device_id: u32,
    caps: PciCap,
    pci_rev: u32,
    pci_subsys_id: u32,
}

/// `hlml_event_data_t`.
#[repr(C)]
struct EventData {
    device: *mut c_void,
    event_type: u64,
}

/// What `hlml_device_get_pci_info` says of a device.
pub(crate) struct Pci {
    /// `bus_id`, as written (`0000:b3:00.0`).
    pub bus_id: String,
    pub domain: u32,
    pub bus: u32,
    pub device: u32,
}

type InitFn = unsafe extern "C" fn() -> u32;
type ShutdownFn = unsafe extern "C" fn() -> u32;
type CountFn = unsafe extern "C" fn(*mut u32) -> u32;
type HandleByIndexFn = unsafe extern "C" fn(u32, *mut *mut c_void) -> u32;
type SerialFn = unsafe extern "C" fn(*mut c_void, *mut c_char, u32) -> u32;
type PciInfoFn = unsafe extern "C" fn(*mut c_void, *mut PciInfo) -> u32;
type TotalEccFn = unsafe extern "C" fn(*mut c_void, u32, u32, *mut u64) -> u32;
type EventSetCreateFn = unsafe extern "C" fn(*mut *mut c_void) -> u32;
type EventSetFreeFn = unsafe extern "C" fn(*mut c_void) -> u32;
type RegisterEventsFn = unsafe extern "C" fn(*mut c_void, u64, *mut c_void) -> u32;
type EventSetWaitFn = unsafe extern "C" fn(*mut c_void, *mut EventData, u32) -> u32;

pub(crate) struct Library {
    shutdown: ShutdownFn,
    count: CountFn,
    handle_by_index: HandleByIndexFn,
    serial: SerialFn,
    pci_info: PciInfoFn,
    total_ecc: TotalEccFn,
    event_set_create: EventSetCreateFn,
    event_set_free: EventSetFreeFn,
    register_events: RegisterEventsFn,
    event_set_wait: EventSetWaitFn,
    /// Keeps the functions above loaded; dropped last.
    _library: libloading::Library,
}

pub(crate) fn check(call: &'static str, status: u32) -> Result<(), HlmlError> {
    match status {
        SUCCESS => Ok(()),
        ERROR_NOT_SUPPORTED => Err(HlmlError::NotSupported { call, device: None }),
        status => Err(HlmlError::Call { call, status, device: None }),
    }
}

/// The text in a C buffer: up to its first NUL, or all of it.
fn text(buffer: &[c_char]) -> String {
    let bytes: Vec<u8> = buffer.iter().take_while(|c| **c != 0).map(|c| *c as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

impl Library {
    /// Load the library at `path`, look up every function used, and initialise it.
    pub(crate) fn load(path: &OsStr) -> Result<Library, HlmlError> {
        let unavailable = |what: String| HlmlError::Unavailable(what);
        // SAFETY: loading runs the library's initialisers; hlml's are those of a C shared library
        // meant to be dlopen'd (its Python binding and Intel's Gaudi device plugin do so).
        let library = unsafe { libloading::Library::new(path) }
            .map_err(|e| unavailable(format!("cannot load {}: {e}", path.to_string_lossy())))?;
        macro_rules! function {
            ($name:literal, $ty:ty) => {{
                // SAFETY: the type is the function's C signature in hlml.h.
                let symbol = unsafe { library.get::<$ty>(concat!($name, "\0").as_bytes()) }
                    .map_err(|e| unavailable(format!("{} has no {}: {e}", path.to_string_lossy(), $name)))?;
                *symbol
            }};
        }
        let init = function!("hlml_init", InitFn);
        let shutdown = function!("hlml_shutdown", ShutdownFn);
        let count = function!("hlml_device_get_count", CountFn);
        let handle_by_index = function!("hlml_device_get_handle_by_index", HandleByIndexFn);
        let serial = function!("hlml_device_get_serial", SerialFn);
        let pci_info = function!("hlml_device_get_pci_info", PciInfoFn);
        let total_ecc = function!("hlml_device_get_total_ecc_errors", TotalEccFn);
        let event_set_create = function!("hlml_event_set_create", EventSetCreateFn);
        let event_set_free = function!("hlml_event_set_free", EventSetFreeFn);
        let register_events = function!("hlml_device_register_events", RegisterEventsFn);
        let event_set_wait = function!("hlml_event_set_wait", EventSetWaitFn);
        // SAFETY: a plain call without arguments.
        let status = unsafe { init() };
        if status != SUCCESS {
            return Err(unavailable(format!(
                "hlml_init failed with status {status} (no habanalabs driver loaded?)"
            )));
        }
        Ok(Library {
            shutdown,
            count,
            handle_by_index,
            serial,
            pci_info,
            total_ecc,
            event_set_create,
            event_set_free,
            register_events,
            event_set_wait,
            _library: library,
        })
    }

    pub(crate) fn count(&self) -> Result<u32, HlmlError> {
        let mut count = 0u32;
        // SAFETY: `count` is a writable u32.
        check("hlml_device_get_count", unsafe { (self.count)(&mut count) })?;
        Ok(count)
    }

    pub(crate) fn handle(&self, index: u32) -> Result<Handle, HlmlError> {
        let mut handle = null_mut();
        // SAFETY: `handle` is a writable pointer slot.
        check("hlml_device_get_handle_by_index", unsafe { (self.handle_by_index)(index, &mut handle) })?;
        if handle.is_null() {
            return Err(HlmlError::Call { call: "hlml_device_get_handle_by_index", status: 0, device: None });
        }
        Ok(Handle(handle))
    }

    pub(crate) fn serial(&self, device: Handle) -> Result<String, HlmlError> {
        let mut buffer: [c_char; FIELD_MAX_SIZE] = [0; FIELD_MAX_SIZE];
        // SAFETY: `device` came from hlml_device_get_handle_by_index; the buffer holds
        // FIELD_MAX_SIZE bytes and the call is told so.
        let status = unsafe { (self.serial)(device.0, buffer.as_mut_ptr(), FIELD_MAX_SIZE as u32) };
        check("hlml_device_get_serial", status)?;
        Ok(text(&buffer))
    }

    pub(crate) fn pci(&self, device: Handle) -> Result<Pci, HlmlError> {
        let mut info = PciInfo::default();
        // SAFETY: `device` came from hlml_device_get_handle_by_index; `info` is an
        // hlml_pci_info_t owned here.
        check("hlml_device_get_pci_info", unsafe { (self.pci_info)(device.0, &mut info) })?;
        Ok(Pci { bus_id: text(&info.bus_id), domain: info.domain, bus: info.bus, device: info.device })
    }

    /// Uncorrected ECC errors since the last reset or driver load (`HLML_VOLATILE_ECC`).
    pub(crate) fn uncorrected_ecc(&self, device: Handle) -> Result<u64, HlmlError> {
        let mut count = 0u64;
        // SAFETY: `device` came from hlml_device_get_handle_by_index; `count` is a writable
        // unsigned long long.
        let status =
            unsafe { (self.total_ecc)(device.0, MEMORY_ERROR_UNCORRECTED, VOLATILE_ECC, &mut count) };
        check("hlml_device_get_total_ecc_errors", status)?;
        Ok(count)
    }

    pub(crate) fn event_set(&self) -> Result<Handle, HlmlError> {
        let mut set = null_mut();
        // SAFETY: `set` is a writable pointer slot.
        check("hlml_event_set_create", unsafe { (self.event_set_create)(&mut set) })?;
        if set.is_null() {
            return Err(HlmlError::Call { call: "hlml_event_set_create", status: 0, device: None });
        }
        Ok(Handle(set))
    }

    pub(crate) fn free_event_set(&self, set: Handle) {
        // SAFETY: `set` came from hlml_event_set_create and is freed once (its owner's drop).
        let _ = unsafe { (self.event_set_free)(set.0) };
    }

    pub(crate) fn register(&self, device: Handle, events: u64, set: Handle) -> Result<(), HlmlError> {
        // SAFETY: both handles came from the library and are live.
        check("hlml_device_register_events", unsafe { (self.register_events)(device.0, events, set.0) })
    }

    /// The next event in `set` within `timeout_ms`: the device's handle and the event's type;
    /// `None` when none came.
    pub(crate) fn wait(&self, set: Handle, timeout_ms: u32) -> Result<Option<(Handle, u64)>, HlmlError> {
        let mut data = EventData { device: null_mut(), event_type: 0 };
        // SAFETY: `set` came from hlml_event_set_create; `data` is an hlml_event_data_t owned
        // here.
        let status = unsafe { (self.event_set_wait)(set.0, &mut data, timeout_ms) };
        if status == ERROR_TIMEOUT {
            return Ok(None);
        }
        check("hlml_event_set_wait", status)?;
        Ok(Some((Handle(data.device), data.event_type)))
    }
}

impl Drop for Library {
    fn drop(&mut self) {
        // SAFETY: the library was initialised in `load`; no handle outlives `Hlml`.
        let _ = unsafe { (self.shutdown)() };
    }
}
