//! devheal-hlml against a C library: `tests/data/fake_hlml.c`, our own stand-in for
//! `libhlml.so` written from the header's declarations, compiled here with `cc` and loaded
//! through the crate's real FFI path.
//!
//! What this proves: the function names, C signatures, struct layouts (`hlml_pci_info_t`,
//! `hlml_event_data_t`), buffer sizes, return codes and call sequence (init, enumeration, event
//! registration, shutdown once) as devheal reads hlml.h. It is not a run on a Gaudi, which
//! nobody has here: the stand-in answers what the header says the library answers.
//!
//! Unsafe code here only reads the stand-in's call counters through libloading.
#![allow(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use devheal_hlml::{DeviceEvent, EVENT_CRITICAL_ERR, EVENT_ECC_DERR, Hlml, HlmlError};

/// Compile the stand-in with `defines` into `dir/<name>` (each case its own file, so that the
/// loader never hands one case another's globals).
fn build(dir: &Path, name: &str, defines: &[&str]) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fake_hlml.c");
    let out = dir.join(name);
    let status = Command::new("cc")
        .args(["-shared", "-fPIC", "-O1", "-Wall", "-Werror", "-o"])
        .arg(&out)
        .args(defines)
        .arg(&source)
        .status()
        .unwrap_or_else(|e| panic!("this test needs a C compiler (`cc`) to build its stand-in library: {e}"));
    assert!(status.success(), "cc failed to build {} from {}", out.display(), source.display());
    out
}

/// The test's own handle on the stand-in: it keeps the library loaded (and so its counters)
/// while the crate's handle comes and goes.
struct Counters(libloading::Library);

impl Counters {
    fn load(library: &Path) -> Counters {
        // SAFETY: the stand-in is our C code, without initialisers.
        Counters(unsafe { libloading::Library::new(library) }.expect("load the stand-in"))
    }

    /// Inits, shutdowns, event sets created, event sets freed.
    fn get(&self) -> [i32; 4] {
        // SAFETY: `fake_hlml_counts` writes four ints to the array it is given.
        unsafe {
            let f = self
                .0
                .get::<unsafe extern "C" fn(*mut i32)>(b"fake_hlml_counts\0")
                .expect("fake_hlml_counts");
            let mut out = [0i32; 4];
            f(out.as_mut_ptr());
            out
        }
    }
}

#[test]
fn devices_serials_addresses_ecc_and_events_read_as_the_header_declares() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = build(dir.path(), "libhlml-events.so", &["-DEVENTS=\"1:2,7:2,2:1,0:4\""]);
    let counts = Counters::load(&path);
    {
        let mut hlml = Hlml::open(Some(&path)).expect("the stand-in loads and initialises");
        let devices = hlml.devices().expect("enumerates");
        let found: Vec<(usize, &str, &str)> =
            devices.iter().map(|d| (d.index, d.serial.as_str(), d.pci_address.as_str())).collect();
        assert_eq!(
            found,
            [
                (0, "AM0000001", "0000:19:00.0"),
                (1, "AM0000002", "0000:b3:00.0"),
                (2, "AM0000003", "0001:1a:1f.7")
            ],
            "serials cut at their NUL, bus ids in the kernel's form"
        );
        assert!(hlml.events_heard(), "every device took the registration");
        assert_eq!(hlml.uncorrected_ecc(&devices[0]), Ok(0));
        assert_eq!(hlml.uncorrected_ecc(&devices[1]), Ok(2));
        assert_eq!(
            hlml.uncorrected_ecc(&devices[2]),
            Err(HlmlError::NotSupported {
                call: "hlml_device_get_total_ecc_errors",
                device: Some("AM0000003".into())
            })
        );
        // A critical error on #1; an event for no such device is skipped by the library; a
        // double-bit ECC error on #2; a type nobody registered for is never delivered.
        assert_eq!(hlml.next_event(0), Ok(Some(DeviceEvent { index: 1, event_type: EVENT_CRITICAL_ERR })));
        assert_eq!(hlml.next_event(0), Ok(Some(DeviceEvent { index: 2, event_type: EVENT_ECC_DERR })));
        assert_eq!(hlml.next_event(0), Ok(None), "then a timeout: no event");
        // Enumerating again frees the old event set and makes a new one.
        hlml.devices().expect("enumerates again");
        assert_eq!(counts.get(), [1, 0, 2, 1]);
    }
    assert_eq!(counts.get(), [1, 1, 2, 2], "dropped: the event set freed and hlml shut down once");
}

#[test]
fn an_hlml_that_does_not_initialise_is_unavailable_with_its_status() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = build(dir.path(), "libhlml-noinit.so", &["-DINIT_STATUS=9"]);
    let counts = Counters::load(&path);
    match Hlml::open(Some(&path)) {
        Err(HlmlError::Unavailable(message)) => {
            assert!(message.contains("hlml_init failed with status 9"), "{message}")
        }
        Err(other) => panic!("expected Unavailable, got {other}"),
        Ok(_) => panic!("init failed"),
    }
    assert_eq!(counts.get()[..2], [1, 0], "no shutdown of a library that did not initialise");
}

#[test]
fn an_hlml_without_a_function_devheal_calls_is_unavailable_and_names_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = build(dir.path(), "libhlml-nowait.so", &["-DOMIT_WAIT"]);
    let counts = Counters::load(&path);
    match Hlml::open(Some(&path)) {
        Err(HlmlError::Unavailable(message)) => {
            assert!(message.contains("has no hlml_event_set_wait"), "{message}")
        }
        Err(other) => panic!("expected Unavailable, got {other}"),
        Ok(_) => panic!("a library without hlml_event_set_wait cannot be used"),
    }
    assert_eq!(counts.get()[0], 0, "no function is called before all are found");
}

#[test]
fn a_lost_device_is_left_out_with_its_error_and_the_others_are_read() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = build(dir.path(), "libhlml-lost.so", &["-DLOST=1", "-DEVENTS=\"2:2\""]);
    let _counts = Counters::load(&path);
    let mut hlml = Hlml::open(Some(&path)).expect("loads");
    let devices = hlml.devices().expect("the readable devices");
    let found: Vec<(usize, &str)> = devices.iter().map(|d| (d.index, d.serial.as_str())).collect();
    assert_eq!(found, [(0, "AM0000001"), (1, "AM0000003")], "indexes are the readable devices'");
    assert_eq!(
        hlml.unreadable(),
        [HlmlError::Call { call: "hlml_device_get_serial", status: 15, device: Some("#1".into()) }]
    );
    assert_eq!(hlml.uncorrected_ecc(&devices[0]), Ok(0));
    // The third device's event reaches it under its index among the readable ones.
    assert_eq!(hlml.next_event(0), Ok(Some(DeviceEvent { index: 1, event_type: EVENT_CRITICAL_ERR })));
}
