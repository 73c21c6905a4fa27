//! The CUDA driver API calls of the check: the only place in this crate with `unsafe` code.
//!
//! Signatures are those of `cuda.h` (the `_v2` entry points its macros map the plain names to
//! since CUDA 4/11). Each function is looked up once when the library loads (a missing one makes
//! the check unavailable, never a crash later) and kept with the library. Every call passes
//! pointers to memory owned here, sized for what the call writes.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString, OsStr, c_char, c_int, c_uint, c_void};
use std::ptr::{null, null_mut};

use crate::CheckError;

type CuResult = c_int;
type CuDevice = c_int;
type CuDevicePtr = u64;
type Opaque = *mut c_void;

const CUDA_SUCCESS: CuResult = 0;

type InitFn = unsafe extern "C" fn(c_uint) -> CuResult;
type DeviceByBusIdFn = unsafe extern "C" fn(*mut CuDevice, *const c_char) -> CuResult;
type DeviceNameFn = unsafe extern "C" fn(*mut c_char, c_int, CuDevice) -> CuResult;
type PrimaryRetainFn = unsafe extern "C" fn(*mut Opaque, CuDevice) -> CuResult;
type PrimaryReleaseFn = unsafe extern "C" fn(CuDevice) -> CuResult;
type SetCurrentFn = unsafe extern "C" fn(Opaque) -> CuResult;
type SynchronizeFn = unsafe extern "C" fn() -> CuResult;
type MemAllocFn = unsafe extern "C" fn(*mut CuDevicePtr, usize) -> CuResult;
type MemFreeFn = unsafe extern "C" fn(CuDevicePtr) -> CuResult;
type MemsetD32Fn = unsafe extern "C" fn(CuDevicePtr, c_uint, usize) -> CuResult;
type HtoDFn = unsafe extern "C" fn(CuDevicePtr, *const c_void, usize) -> CuResult;
type DtoHFn = unsafe extern "C" fn(*mut c_void, CuDevicePtr, usize) -> CuResult;
type ModuleLoadDataFn = unsafe extern "C" fn(*mut Opaque, *const c_void) -> CuResult;
type ModuleGetFunctionFn = unsafe extern "C" fn(*mut Opaque, Opaque, *const c_char) -> CuResult;
type ModuleUnloadFn = unsafe extern "C" fn(Opaque) -> CuResult;
#[allow(clippy::type_complexity)]
type LaunchKernelFn = unsafe extern "C" fn(
    Opaque,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    Opaque,
    *mut *mut c_void,
    *mut *mut c_void,
) -> CuResult;
type ErrorStringFn = unsafe extern "C" fn(CuResult, *mut *const c_char) -> CuResult;

pub(crate) struct Cuda {
    device_by_bus_id: DeviceByBusIdFn,
    device_name: DeviceNameFn,
    primary_retain: PrimaryRetainFn,
    primary_release: PrimaryReleaseFn,
    set_current: SetCurrentFn,
    synchronize: SynchronizeFn,
    mem_alloc: MemAllocFn,
    mem_free: MemFreeFn,
    memset_d32: MemsetD32Fn,
    htod: HtoDFn,
    dtoh: DtoHFn,
    module_load_data: ModuleLoadDataFn,
    module_get_function: ModuleGetFunctionFn,
    module_unload: ModuleUnloadFn,
    launch_kernel: LaunchKernelFn,
    error_string: ErrorStringFn,
    /// Keeps the functions above loaded; dropped last.
    _library: libloading::Library,
}

impl Cuda {
    /// Load the driver library at `path`, look up every function used, and `cuInit`.
    pub(crate) fn load(path: &OsStr) -> Result<Cuda, CheckError> {
        let unavailable = |what: String| CheckError::Unavailable(what);
        // SAFETY: loading runs the library's initialisers; libcuda is meant to be dlopen'd (the
        // CUDA runtime itself loads it so).
        let library = unsafe { libloading::Library::new(path) }
            .map_err(|e| unavailable(format!("cannot load {}: {e}", path.to_string_lossy())))?;
        macro_rules! function {
            ($name:literal, $ty:ty) => {{
                // SAFETY: the type is the function's C signature in cuda.h.
                let symbol = unsafe { library.get::<$ty>(concat!($name, "\0").as_bytes()) }
                    .map_err(|e| unavailable(format!("{} has no {}: {e}", path.to_string_lossy(), $name)))?;
                *symbol
            }};
        }
        let init = function!("cuInit", InitFn);
        let cuda = Cuda {
            device_by_bus_id: function!("cuDeviceGetByPCIBusId", DeviceByBusIdFn),
            device_name: function!("cuDeviceGetName", DeviceNameFn),
            primary_retain: function!("cuDevicePrimaryCtxRetain", PrimaryRetainFn),
            primary_release: function!("cuDevicePrimaryCtxRelease_v2", PrimaryReleaseFn),
            set_current: function!("cuCtxSetCurrent", SetCurrentFn),
            synchronize: function!("cuCtxSynchronize", SynchronizeFn),
            mem_alloc: function!("cuMemAlloc_v2", MemAllocFn),
            mem_free: function!("cuMemFree_v2", MemFreeFn),
            memset_d32: function!("cuMemsetD32_v2", MemsetD32Fn),
            htod: function!("cuMemcpyHtoD_v2", HtoDFn),
            dtoh: function!("cuMemcpyDtoH_v2", DtoHFn),
            module_load_data: function!("cuModuleLoadData", ModuleLoadDataFn),
            module_get_function: function!("cuModuleGetFunction", ModuleGetFunctionFn),
            module_unload: function!("cuModuleUnload", ModuleUnloadFn),
            launch_kernel: function!("cuLaunchKernel", LaunchKernelFn),
            error_string: function!("cuGetErrorString", ErrorStringFn),
            _library: library,
        };
        // SAFETY: cuInit takes flags by value; 0 is the only valid value.
        let status = unsafe { init(0) };
        if status != CUDA_SUCCESS {
            return Err(CheckError::Unavailable(format!("cuInit failed: {}", cuda.describe(status))));
        }
        Ok(cuda)
    }

    /// The driver's words for `status`.
    fn describe(&self, status: CuResult) -> String {
        let mut text: *const c_char = null();
        // SAFETY: cuGetErrorString writes a pointer to a static string, or leaves it null.
        let known = unsafe { (self.error_string)(status, &mut text) } == CUDA_SUCCESS && !text.is_null();
        if known {
            // SAFETY: non-null, NUL-terminated, static (cuda.h).
            let words = unsafe { CStr::from_ptr(text) }.to_string_lossy();
            format!("{words} (CUresult {status})")
        } else {
            format!("CUresult {status}")
        }
    }

    fn check(&self, step: &'static str, status: CuResult) -> Result<(), CheckError> {
        if status == CUDA_SUCCESS {
            Ok(())
        } else {
            Err(CheckError::Failed { step, message: self.describe(status) })
        }
    }

    /// The GPU at `pci_bus_id`, its primary context current on this thread.
    pub(crate) fn open(&self, pci_bus_id: &str) -> Result<Gpu<'_>, CheckError> {
        let bus = CString::new(pci_bus_id)
            .map_err(|_| CheckError::Unavailable(format!("{pci_bus_id:?} is not a PCI bus id")))?;
        let mut device: CuDevice = 0;
        // SAFETY: writes one CUdevice; the id is NUL-terminated.
        self.check("finding the GPU by its PCI bus id", unsafe {
            (self.device_by_bus_id)(&mut device, bus.as_ptr())
        })?;
        let mut context: Opaque = null_mut();
        // SAFETY: writes one CUcontext.
        self.check("retaining the GPU's primary context", unsafe {
            (self.primary_retain)(&mut context, device)
        })?;
        let gpu = Gpu { cuda: self, device };
        // SAFETY: the context was just retained.
        self.check("making the context current", unsafe { (self.set_current)(context) })?;
        Ok(gpu)
    }
}

pub(crate) struct Gpu<'a> {
    cuda: &'a Cuda,
    device: CuDevice,
}

impl Drop for Gpu<'_> {
    fn drop(&mut self) {
        // SAFETY: releases the retain made in `open`.
        let _ = unsafe { (self.cuda.primary_release)(self.device) };
    }
}

impl<'a> Gpu<'a> {
    pub(crate) fn name(&self) -> String {
        let mut buffer = [0 as c_char; 256];
        // SAFETY: writes at most `len` bytes, NUL-terminated.
        let status =
            unsafe { (self.cuda.device_name)(buffer.as_mut_ptr(), buffer.len() as c_int, self.device) };
        if status != CUDA_SUCCESS {
            return String::new();
        }
        // SAFETY: NUL-terminated within the buffer (the last byte is still 0 if it was cut).
        buffer[buffer.len() - 1] = 0;
        unsafe { CStr::from_ptr(buffer.as_ptr()) }.to_string_lossy().into_owned()
    }

    fn synchronize(&self, step: &'static str) -> Result<(), CheckError> {
        // SAFETY: no arguments; waits for the current context.
        self.cuda.check(step, unsafe { (self.cuda.synchronize)() })
    }

    pub(crate) fn alloc(&self, bytes: usize, step: &'static str) -> Result<Memory<'_, 'a>, CheckError> {
        let mut ptr: CuDevicePtr = 0;
        // SAFETY: writes one CUdeviceptr.
        self.cuda.check(step, unsafe { (self.cuda.mem_alloc)(&mut ptr, bytes) })?;
        Ok(Memory { gpu: self, ptr, words: bytes / 4 })
    }

    /// JIT-compile `ptx`, launch `entry(input, output, n)` over `n` threads and wait for it.
    pub(crate) fn run_kernel(
        &self,
        ptx: &str,
        entry: &str,
        input: &Memory<'_, '_>,
        output: &Memory<'_, '_>,
        n: u32,
        block: u32,
    ) -> Result<(), CheckError> {
        let image =
            CString::new(ptx).map_err(|_| CheckError::Unavailable("the PTX has a NUL byte".into()))?;
        let name =
            CString::new(entry).map_err(|_| CheckError::Unavailable("the entry has a NUL byte".into()))?;
        let mut module: Opaque = null_mut();
        // SAFETY: the image is NUL-terminated PTX text; writes one CUmodule.
        self.cuda.check("compiling the check's kernel", unsafe {
            (self.cuda.module_load_data)(&mut module, image.as_ptr().cast())
        })?;
        let result = (|| {
            let mut function: Opaque = null_mut();
            // SAFETY: the module was loaded; the name is NUL-terminated; writes one CUfunction.
            self.cuda.check("finding the kernel", unsafe {
                (self.cuda.module_get_function)(&mut function, module, name.as_ptr())
            })?;
            let (mut a, mut b, mut count) = (input.ptr, output.ptr, n);
            let mut params: [*mut c_void; 3] =
                [(&mut a as *mut u64).cast(), (&mut b as *mut u64).cast(), (&mut count as *mut u32).cast()];
            let grid = n.div_ceil(block);
            // SAFETY: three parameters, each a pointer to a value of the kernel's parameter type
            // (.u64, .u64, .u32), alive across the call; default stream; no extra options.
            self.cuda.check("launching the kernel", unsafe {
                (self.cuda.launch_kernel)(
                    function,
                    grid,
                    1,
                    1,
                    block,
                    1,
                    1,
                    0,
                    null_mut(),
                    params.as_mut_ptr(),
                    null_mut(),
                )
            })?;
            self.synchronize("running the kernel")
        })();
        // SAFETY: the module was loaded above and is not used after this.
        let _ = unsafe { (self.cuda.module_unload)(module) };
        result
    }
}

/// Device memory, freed on drop.
pub(crate) struct Memory<'g, 'a> {
    gpu: &'g Gpu<'a>,
    ptr: CuDevicePtr,
    words: usize,
}

impl Drop for Memory<'_, '_> {
    fn drop(&mut self) {
        // SAFETY: frees the allocation made in `alloc`, once.
        let _ = unsafe { (self.gpu.cuda.mem_free)(self.ptr) };
    }
}

impl Memory<'_, '_> {
    pub(crate) fn fill(&self, value: u32) -> Result<(), CheckError> {
        let cuda = self.gpu.cuda;
        // SAFETY: sets `words` 32-bit words of this allocation.
        cuda.check("filling device memory", unsafe { (cuda.memset_d32)(self.ptr, value, self.words) })?;
        self.gpu.synchronize("filling device memory")
    }

    pub(crate) fn write(&self, from: &[u32]) -> Result<(), CheckError> {
        let cuda = self.gpu.cuda;
        let words = from.len().min(self.words);
        // SAFETY: copies `words` words from a host slice at least that long into this allocation.
        cuda.check("copying to device memory", unsafe {
            (cuda.htod)(self.ptr, from.as_ptr().cast(), words * 4)
        })
    }

    pub(crate) fn read(&self, into: &mut [u32]) -> Result<(), CheckError> {
        let cuda = self.gpu.cuda;
        let words = into.len().min(self.words);
        // SAFETY: copies `words` words of this allocation into a host slice at least that long.
        cuda.check("copying from device memory", unsafe {
            (cuda.dtoh)(into.as_mut_ptr().cast(), self.ptr, words * 4)
        })
    }
}
