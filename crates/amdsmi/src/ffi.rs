//! The C calls into amdsmi: the only place in devheal with `unsafe` code.
//!
//! Each function is looked up once when the library loads (a missing one makes the library
//! unavailable, never a crash later) and kept with the library, so the pointers live as long as
//! it does. Every call passes pointers to memory owned here and sized as `amdsmi.h` declares;
//! counts the library writes back are clamped to what was allocated.
#![allow(unsafe_code)]

use std::ffi::{OsStr, c_void};
use std::ptr::null_mut;

use crate::{AmdSmiError, EccCounts, MAX_HANDLES};

/// `amdsmi_status_t` values used here.
const STATUS_SUCCESS: u32 = 0;
pub(crate) const STATUS_INVAL: u32 = 1;
const STATUS_NOT_SUPPORTED: u32 = 2;
/// `AMDSMI_INIT_AMD_GPUS`.
const INIT_AMD_GPUS: u64 = 1 << 1;

/// An `amdsmi_processor_handle` (or socket handle): an opaque pointer owned by the library,
/// valid until `amdsmi_shut_down`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Handle(*mut c_void);

/// `amdsmi_error_count_t`.
#[repr(C)]
#[derive(Default)]
struct ErrorCount {
    correctable_count: u64,
    uncorrectable_count: u64,
    deferred_count: u64,
    reserved: [u64; 5],
}

type InitFn = unsafe extern "C" fn(u64) -> u32;
type ShutDownFn = unsafe extern "C" fn() -> u32;
type SocketHandlesFn = unsafe extern "C" fn(*mut u32, *mut *mut c_void) -> u32;
type ProcessorHandlesFn = unsafe extern "C" fn(*mut c_void, *mut u32, *mut *mut c_void) -> u32;
/// `amdsmi_bdf_t` is a union of a bit-field struct and a `uint64_t`: written through a pointer
/// to a `u64`.
type DeviceBdfFn = unsafe extern "C" fn(*mut c_void, *mut u64) -> u32;
type TotalEccCountFn = unsafe extern "C" fn(*mut c_void, *mut ErrorCount) -> u32;

pub(crate) struct Library {
    shut_down: ShutDownFn,
    socket_handles: SocketHandlesFn,
    processor_handles: ProcessorHandlesFn,
    device_bdf: DeviceBdfFn,
    total_ecc_count: TotalEccCountFn,
    /// Keeps the functions above loaded; dropped last.
    _library: libloading::Library,
}

fn check(call: &'static str, status: u32) -> Result<(), AmdSmiError> {
    match status {
        STATUS_SUCCESS => Ok(()),
        STATUS_NOT_SUPPORTED => Err(AmdSmiError::NotSupported { call, gpu: None }),
        status => Err(AmdSmiError::Call { call, status, gpu: None }),
    }
}

impl Library {
    /// Load the library at `path`, look up every function used, and initialise it for AMD GPUs.
    pub(crate) fn load(path: &OsStr) -> Result<Library, AmdSmiError> {
        let unavailable = |what: String| AmdSmiError::Unavailable(what);
        // SAFETY: loading runs the library's initialisers; amdsmi's are those of a C/C++ shared
        // library meant to be dlopen'd (its Python and Go bindings do so).
        let library = unsafe { libloading::Library::new(path) }
            .map_err(|e| unavailable(format!("cannot load {}: {e}", path.to_string_lossy())))?;
        macro_rules! function {
            ($name:literal, $ty:ty) => {{
                // SAFETY: the type is the function's C signature in amdsmi.h.
                let symbol = unsafe { library.get::<$ty>(concat!($name, "\0").as_bytes()) }
                    .map_err(|e| unavailable(format!("{} has no {}: {e}", path.to_string_lossy(), $name)))?;
                *symbol
            }};
        }
        let init = function!("amdsmi_init", InitFn);
        let shut_down = function!("amdsmi_shut_down", ShutDownFn);
        let socket_handles = function!("amdsmi_get_socket_handles", SocketHandlesFn);
        let processor_handles = function!("amdsmi_get_processor_handles", ProcessorHandlesFn);
        let device_bdf = function!("amdsmi_get_gpu_device_bdf", DeviceBdfFn);
        let total_ecc_count = function!("amdsmi_get_gpu_total_ecc_count", TotalEccCountFn);
        // SAFETY: a plain call with a flag word.
        let status = unsafe { init(INIT_AMD_GPUS) };
        if status != STATUS_SUCCESS {
            return Err(unavailable(format!(
                "amdsmi_init(AMDSMI_INIT_AMD_GPUS) failed with status {status} (no AMD GPU driver loaded?)"
            )));
        }
        Ok(Library {
            shut_down,
            socket_handles,
            processor_handles,
            device_bdf,
            total_ecc_count,
            _library: library,
        })
    }

    /// Every GPU handle, socket by socket (at most [`MAX_HANDLES`] sockets, and as many
    /// processors per socket).
    pub(crate) fn processors(&self) -> Result<Vec<Handle>, AmdSmiError> {
        let sockets = self.handles("amdsmi_get_socket_handles", |count, out| {
            // SAFETY: `count` points to a u32; `out` is null (count only) or has `*count` slots.
            unsafe { (self.socket_handles)(count, out) }
        })?;
        let mut processors = Vec::new();
        for socket in sockets {
            let found = self.handles("amdsmi_get_processor_handles", |count, out| {
                // SAFETY: as above; `socket` came from amdsmi_get_socket_handles.
                unsafe { (self.processor_handles)(socket.0, count, out) }
            })?;
            processors.extend(found);
        }
        Ok(processors)
    }

    /// amdsmi's two-call pattern: the count with a null array, then the handles.
    fn handles(
        &self,
        call: &'static str,
        f: impl Fn(*mut u32, *mut *mut c_void) -> u32,
    ) -> Result<Vec<Handle>, AmdSmiError> {
        let mut count = 0u32;
        check(call, f(&mut count, null_mut()))?;
        let mut slots: Vec<*mut c_void> = vec![null_mut(); count.min(MAX_HANDLES) as usize];
        let mut written = slots.len() as u32;
        check(call, f(&mut written, slots.as_mut_ptr()))?;
        slots.truncate((written as usize).min(slots.len()));
        Ok(slots.into_iter().filter(|p| !p.is_null()).map(Handle).collect())
    }

    pub(crate) fn device_bdf(&self, handle: Handle, index: usize) -> Result<u64, AmdSmiError> {
        let mut bdf = 0u64;
        // SAFETY: `handle` came from amdsmi_get_processor_handles; `bdf` is 8 writable bytes.
        let status = unsafe { (self.device_bdf)(handle.0, &mut bdf) };
        check("amdsmi_get_gpu_device_bdf", status).map_err(|e| match e {
            AmdSmiError::Call { call, status, .. } => {
                AmdSmiError::Call { call, status, gpu: Some(format!("#{index}")) }
            }
            other => other,
        })?;
        Ok(bdf)
    }

    pub(crate) fn total_ecc_count(&self, handle: Handle) -> Result<EccCounts, AmdSmiError> {
        let mut counts = ErrorCount::default();
        // SAFETY: `handle` came from amdsmi_get_processor_handles; `counts` is an
        // amdsmi_error_count_t the caller allocated, as the function requires.
        let status = unsafe { (self.total_ecc_count)(handle.0, &mut counts) };
        check("amdsmi_get_gpu_total_ecc_count", status)?;
        Ok(EccCounts {
            correctable: counts.correctable_count,
            uncorrectable: counts.uncorrectable_count,
            deferred: counts.deferred_count,
        })
    }
}

impl Drop for Library {
    fn drop(&mut self) {
        // SAFETY: the library was initialised in `load`; no handle outlives `AmdSmi`.
        let _ = unsafe { (self.shut_down)() };
    }
}
