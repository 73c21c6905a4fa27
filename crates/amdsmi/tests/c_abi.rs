//! The FFI against a C library: `src/ffi.rs`'s function signatures, struct layouts
//! (`amdsmi_bdf_t`, `amdsmi_error_count_t`) and call sequence (`amdsmi_init`, the two-call
//! handle lists, `amdsmi_shut_down` on drop), as devheal reads `amdsmi.h`, checked by loading a
//! library compiled from C at test time through the crate's real path (`AmdSmi::open`, dlopen).
//!
//! The C source, `tests/data/fake_amd_smi.c`, is our own stand-in written from the header's
//! declarations (ROCm/amdsmi `0ceca28f4139dced5e9b5739a3f393780d7add48`,
//! `include/amd_smi/amdsmi.h`), not AMD's library: this proves that the Rust side and a C
//! compiler agree on the header as we transcribed it, not that amdsmi behaves so on AMD
//! hardware, which nobody has here. The test needs a C compiler (`$CC`, else `cc`) and fails
//! without one.

use std::path::{Path, PathBuf};
use std::process::Command;

use devheal_amdsmi::{AmdGpu, AmdSmi, AmdSmiError, EccCounts};

const SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/fake_amd_smi.c");

/// What the stand-in counts (`struct fake_calls` in the C source).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Calls {
    init: u32,
    shut_down: u32,
    init_flags: u64,
}

/// `AMDSMI_INIT_AMD_GPUS`.
const INIT_AMD_GPUS: u64 = 1 << 1;

/// One compiled variant of the stand-in, in its own directory under its own file name (the
/// dynamic loader shares one copy, globals included, between opens of the same file), held
/// open by the test so that its counters outlive the crate's handle.
struct Fake {
    path: PathBuf,
    probe: libloading::Library,
    _dir: tempfile::TempDir,
}

impl Fake {
    fn build(variant: &str, defines: &[&str]) -> Fake {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join(format!("libamd_smi-{variant}.so"));
        let compiler = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
        let output = Command::new(&compiler)
            .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-o"])
            .arg(&path)
            .args(defines)
            .arg(SOURCE)
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run the C compiler `{compiler}` ({e}): tests/c_abi.rs compiles a \
                     stand-in libamd_smi.so and needs one (install cc, or set CC)"
                )
            });
        assert!(
            output.status.success(),
            "`{compiler}` failed to build {} from {SOURCE} ({}):\n{}",
            path.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let probe = probe(&path);
        Fake { path, probe, _dir: dir }
    }

    fn calls(&self) -> Calls {
        calls(&self.probe)
    }
}

#[allow(unsafe_code)]
fn probe(path: &Path) -> libloading::Library {
    // SAFETY: the stand-in built above; its only initialisers are static data.
    unsafe { libloading::Library::new(path) }.expect("the test loads its stand-in")
}

#[allow(unsafe_code)]
fn calls(library: &libloading::Library) -> Calls {
    // SAFETY: `struct fake_calls fake_amdsmi_calls(void)` in the C source; `Calls` is its layout.
    unsafe {
        let f = library
            .get::<unsafe extern "C" fn() -> Calls>(b"fake_amdsmi_calls\0")
            .expect("the stand-in exports fake_amdsmi_calls");
        f()
    }
}

fn open(fake: &Fake) -> AmdSmi {
    AmdSmi::open(Some(&fake.path)).unwrap_or_else(|e| panic!("the stand-in opens: {e}"))
}

fn gpu(index: usize, pci: &str) -> AmdGpu {
    AmdGpu { index, pci_address: pci.to_string() }
}

#[test]
fn gpus_come_socket_by_socket_with_their_kernel_pci_addresses() {
    let fake = Fake::build("gpus", &[]);
    let mut amdsmi = open(&fake);
    let expected = vec![gpu(0, "0000:c1:00.0"), gpu(1, "0000:c2:00.0"), gpu(2, "0001:3b:1f.7")];
    assert_eq!(amdsmi.gpus().unwrap(), expected);
    // Enumerating again gives the same GPUs, without initialising again.
    assert_eq!(amdsmi.gpus().unwrap(), expected);
    assert_eq!(fake.calls(), Calls { init: 1, shut_down: 0, init_flags: INIT_AMD_GPUS });
}

#[test]
fn ecc_counts_are_each_gpus_own() {
    let fake = Fake::build("ecc", &[]);
    let mut amdsmi = open(&fake);
    let gpus = amdsmi.gpus().unwrap();
    assert_eq!(amdsmi.ecc(&gpus[0]).unwrap(), EccCounts { correctable: 11, uncorrectable: 0, deferred: 3 });
    assert_eq!(
        amdsmi.ecc(&gpus[2]).unwrap(),
        EccCounts { correctable: 1_234_567_890_123, uncorrectable: 42, deferred: 7 }
    );
}

#[test]
fn a_gpu_without_ecc_counts_is_not_supported_and_named() {
    let fake = Fake::build("not-supported", &[]);
    let mut amdsmi = open(&fake);
    let gpus = amdsmi.gpus().unwrap();
    let error = amdsmi.ecc(&gpus[1]).unwrap_err();
    assert_eq!(
        error,
        AmdSmiError::NotSupported {
            call: "amdsmi_get_gpu_total_ecc_count",
            gpu: Some("0000:c2:00.0".to_string()),
        }
    );
    assert!(error.to_string().contains("0000:c2:00.0"), "{error}");
    // The other GPUs still read.
    assert!(amdsmi.ecc(&gpus[0]).is_ok());
}

#[test]
fn shut_down_runs_once_when_dropped() {
    let fake = Fake::build("shut-down", &[]);
    let mut amdsmi = open(&fake);
    amdsmi.gpus().unwrap();
    assert_eq!(fake.calls(), Calls { init: 1, shut_down: 0, init_flags: INIT_AMD_GPUS });
    drop(amdsmi);
    assert_eq!(fake.calls(), Calls { init: 1, shut_down: 1, init_flags: INIT_AMD_GPUS });
}

#[test]
fn a_failing_init_is_unavailable_with_its_status() {
    let fake = Fake::build("init-fails", &["-DFAKE_INIT_STATUS=AMDSMI_STATUS_DRIVER_NOT_LOADED"]);
    match AmdSmi::open(Some(&fake.path)) {
        Err(AmdSmiError::Unavailable(message)) => {
            assert!(message.contains("amdsmi_init"), "{message}");
            // AMDSMI_STATUS_DRIVER_NOT_LOADED
            assert!(message.contains("status 34"), "{message}");
        }
        Err(other) => panic!("expected Unavailable, got {other}"),
        Ok(_) => panic!("amdsmi_init failed: the library cannot be used"),
    }
    // Tried once with the flag; a library that did not initialise is not shut down.
    assert_eq!(fake.calls(), Calls { init: 1, shut_down: 0, init_flags: INIT_AMD_GPUS });
}

#[test]
fn a_library_without_the_ecc_function_is_unavailable_and_never_initialised() {
    let fake = Fake::build("no-ecc", &["-DOMIT_ECC"]);
    match AmdSmi::open(Some(&fake.path)) {
        Err(AmdSmiError::Unavailable(message)) => {
            assert!(message.contains("amdsmi_get_gpu_total_ecc_count"), "{message}");
            assert!(message.contains(&*fake.path.to_string_lossy()), "{message}");
        }
        Err(other) => panic!("expected Unavailable, got {other}"),
        Ok(_) => panic!("a library without amdsmi_get_gpu_total_ecc_count cannot be used"),
    }
    assert_eq!(fake.calls(), Calls { init: 0, shut_down: 0, init_flags: 0 });
}
