//! devheal-gpucheck: a short functional check of one NVIDIA GPU before it returns to service
//! (after a reset), through the CUDA driver API, `libcuda.so.1`, loaded at run time so that one
//! binary runs on nodes without it ([`CheckError::Unavailable`]).
//!
//! The check, in order, each step named in the report or in the error:
//!
//! 1. `cuInit`, the device by its PCI bus id (`cuDeviceGetByPCIBusId`), its primary context;
//! 2. **allocation** of `memory_bytes` of device memory (`cuMemAlloc`);
//! 3. **patterns** over all of it: two constant fills (`0xA5A5A5A5`, `0x5A5A5A5A`, by
//!    `cuMemsetD32`) and an address-dependent one written from the host (word `i` holds
//!    `i ^ 0x9E3779B9`, which catches address-line faults a constant fill cannot), each read
//!    back whole (`cuMemcpyDtoH`) and compared word by word;
//! 4. **compute**: a kernel JIT-compiled from PTX ([`KERNEL_PTX`]) computes `3 * x + 7` over
//!    [`KERNEL_ELEMENTS`] words on the GPU; every result is compared with the host's;
//! 5. everything freed, the context released.
//!
//! The calls block and a broken GPU can hang them, so the agent never runs the check in its own
//! process: it runs `devheal gpu-check` as a child with a time limit and kills it on expiry.
//!
//! Every `unsafe` block is in the private `ffi` module.
#![deny(unsafe_code)]

mod ffi;

use std::time::Instant;

use serde::Serialize;

/// The library's file name, as the NVIDIA driver installs it.
pub const DEFAULT_LIBRARY: &str = "libcuda.so.1";

/// Elements the kernel computes.
pub const KERNEL_ELEMENTS: u32 = 1 << 20;

/// Threads per block of the kernel launch.
const BLOCK: u32 = 256;

/// The kernel: `out[i] = in[i] * 3 + 7` for `i < n` (32-bit, wrapping). PTX ISA 6.0 for
/// `sm_50`: the driver JIT-compiles it for whatever GPU it runs on (PTX is forward compatible).
pub const KERNEL_PTX: &str = r#".version 6.0
.target sm_50
.address_size 64

.visible .entry devheal_check(
    .param .u64 p_in,
    .param .u64 p_out,
    .param .u32 p_n
)
{
    .reg .pred %p<2>;
    .reg .b32 %r<9>;
    .reg .b64 %rd<8>;

    ld.param.u64 %rd1, [p_in];
    ld.param.u64 %rd2, [p_out];
    ld.param.u32 %r1, [p_n];
    mov.u32 %r2, %ctaid.x;
    mov.u32 %r3, %ntid.x;
    mov.u32 %r4, %tid.x;
    mad.lo.s32 %r5, %r2, %r3, %r4;
    setp.ge.u32 %p1, %r5, %r1;
    @%p1 bra DONE;
    cvta.to.global.u64 %rd3, %rd1;
    cvta.to.global.u64 %rd4, %rd2;
    mul.wide.u32 %rd5, %r5, 4;
    add.s64 %rd6, %rd3, %rd5;
    ld.global.u32 %r6, [%rd6];
    mul.lo.u32 %r7, %r6, 3;
    add.u32 %r8, %r7, 7;
    add.s64 %rd7, %rd4, %rd5;
    st.global.u32 [%rd7], %r8;
DONE:
    ret;
}
"#;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum CheckError {
    /// The check cannot run on this node: no CUDA driver library, or a function missing.
    #[error("the GPU check cannot run: {0}")]
    Unavailable(String),
    /// The GPU failed a step.
    #[error("the GPU failed the check at {step}: {message}")]
    Failed { step: &'static str, message: String },
}

/// What a passed check did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckReport {
    pub pci_bus_id: String,
    pub device_name: String,
    pub memory_bytes: u64,
    pub patterns: u32,
    pub kernel_elements: u32,
    pub elapsed_ms: u64,
}

/// The value the address-dependent pattern holds at word `i`.
pub fn address_pattern(i: usize) -> u32 {
    (i as u32) ^ 0x9E37_79B9
}

/// The kernel's answer for `x`.
pub fn kernel_answer(x: u32) -> u32 {
    x.wrapping_mul(3).wrapping_add(7)
}

/// The first word of `got` that is not `want(i)`, as a message.
pub fn first_mismatch(got: &[u32], want: impl Fn(usize) -> u32) -> Option<String> {
    let (i, g) = got.iter().enumerate().find(|(i, g)| **g != want(*i))?;
    let bad = got.iter().enumerate().filter(|(i, g)| **g != want(*i)).count();
    Some(format!(
        "word {i} (byte offset {:#x}) is {g:#010x}, not {:#010x}; {bad} words wrong",
        i * 4,
        want(i)
    ))
}

/// Run the check on the GPU at `pci_bus_id` (`dddd:bb:dd.f`) over `memory_bytes` of its memory
/// (rounded down to whole 32-bit words, at least one). Blocking; see the crate docs for why it
/// belongs in a child process.
pub fn run_check(
    library: &std::ffi::OsStr,
    pci_bus_id: &str,
    memory_bytes: u64,
) -> Result<CheckReport, CheckError> {
    let started = Instant::now();
    let words = usize::try_from(memory_bytes / 4).unwrap_or(usize::MAX).max(1);
    let cuda = ffi::Cuda::load(library)?;
    let gpu = cuda.open(pci_bus_id)?;
    let device_name = gpu.name();

    let memory = gpu.alloc(words * 4, "allocating device memory")?;
    let mut host = vec![0u32; words];
    let mut patterns = 0;
    for fill in [0xA5A5_A5A5_u32, 0x5A5A_5A5A] {
        memory.fill(fill)?;
        memory.read(&mut host)?;
        if let Some(m) = first_mismatch(&host, |_| fill) {
            return Err(CheckError::Failed { step: "the constant pattern read back", message: m });
        }
        patterns += 1;
    }
    for (i, w) in host.iter_mut().enumerate() {
        *w = address_pattern(i);
    }
    memory.write(&host)?;
    host.fill(0);
    memory.read(&mut host)?;
    if let Some(m) = first_mismatch(&host, address_pattern) {
        return Err(CheckError::Failed { step: "the address pattern read back", message: m });
    }
    patterns += 1;
    drop(host);
    drop(memory);

    let n = KERNEL_ELEMENTS as usize;
    let input: Vec<u32> = (0..n).map(|i| address_pattern(i).rotate_left(7)).collect();
    let d_in = gpu.alloc(n * 4, "allocating the kernel's input")?;
    let d_out = gpu.alloc(n * 4, "allocating the kernel's output")?;
    d_in.write(&input)?;
    d_out.fill(0)?;
    gpu.run_kernel(KERNEL_PTX, "devheal_check", &d_in, &d_out, KERNEL_ELEMENTS, BLOCK)?;
    let mut out = vec![0u32; n];
    d_out.read(&mut out)?;
    if let Some(m) = first_mismatch(&out, |i| kernel_answer(input[i])) {
        return Err(CheckError::Failed { step: "the kernel's results", message: m });
    }
    Ok(CheckReport {
        pci_bus_id: pci_bus_id.to_string(),
        device_name,
        memory_bytes: (words * 4) as u64,
        patterns,
        kernel_elements: KERNEL_ELEMENTS,
        elapsed_ms: started.elapsed().as_millis() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_without_the_cuda_driver_cannot_run_the_check() {
        let e = run_check("/nonexistent/libcuda.so.1".as_ref(), "0000:3b:00.0", 1 << 20).unwrap_err();
        assert!(matches!(&e, CheckError::Unavailable(m) if m.contains("cannot load")), "{e}");
    }

    #[test]
    fn mismatches_name_the_first_word_and_count_the_rest() {
        let mut got: Vec<u32> = (0..16).map(address_pattern).collect();
        assert_eq!(first_mismatch(&got, address_pattern), None);
        got[5] ^= 1 << 3;
        got[9] = 0;
        let m = first_mismatch(&got, address_pattern).expect("a mismatch");
        assert!(m.starts_with("word 5 (byte offset 0x14)"), "{m}");
        assert!(m.ends_with("2 words wrong"), "{m}");
    }

    #[test]
    fn the_kernel_computes_three_x_plus_seven_wrapping() {
        assert_eq!(kernel_answer(0), 7);
        assert_eq!(kernel_answer(5), 22);
        assert_eq!(kernel_answer(u32::MAX), u32::MAX.wrapping_mul(3).wrapping_add(7));
        // The PTX names the entry point the check launches and uses no double precision.
        assert!(KERNEL_PTX.contains(".entry devheal_check("));
        assert!(!KERNEL_PTX.contains(".f64"));
    }
}
