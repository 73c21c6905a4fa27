//! The thread every vendor management library loaded at run time runs on: amdsmi for AMD GPUs
//! ([`crate::amd`]), hlml for Intel Gaudi ([`crate::gaudi`]); which library is which is
//! [`crate::vendor`], above both.
//!
//! Each library is opened on its own thread (their handles belong to the thread that opened
//! them), enumerates its devices, then samples each device every interval and tells the loop
//! ([`LibraryEvent`]). A library that cannot be opened (absent, no driver) or fails to enumerate
//! is reported [`LibraryEvent::Unavailable`] with the reason and opened again after [`RETRY`]:
//! the agent runs on without it, as without NVML.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration as StdDuration;

use tokio::sync::mpsc;

use crate::health::Evidence;

/// How long the thread waits before opening the library again.
pub const RETRY: StdDuration = StdDuration::from_secs(30);

/// A device a library enumerates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LibraryDevice {
    /// `dddd:bb:dd.f`, the kernel's form.
    pub pci_address: String,
    /// The board's serial number, where the library gives one and a device plugin names the
    /// device by it (Gaudi).
    pub serial: Option<String>,
}

/// What the agent needs from a vendor's management library.
pub trait DeviceLibrary {
    /// Enumerate the devices (again).
    fn devices(&mut self) -> Result<Vec<LibraryDevice>, String>;
    /// Why each device the last enumeration could not read was left out.
    fn unreadable(&self) -> Vec<String> {
        Vec::new()
    }
    /// The evidence about device `index` of the last enumeration (empty: nothing wrong);
    /// `Ok(None)`: the library cannot tell on this device.
    fn sample(&mut self, index: usize) -> Result<Option<Vec<Evidence>>, String>;
    /// Wait `total` before the next round (a library with events listens meanwhile); `false`
    /// when told to stop.
    fn wait(&mut self, total: StdDuration, stop: &AtomicBool) -> bool {
        sleep_unless_stopped(total, stop)
    }
}

/// What a library's thread tells the loop.
#[derive(Debug)]
pub enum LibraryEvent {
    /// The devices the library enumerates, and why any it could not read were left out.
    Inventory {
        devices: Vec<LibraryDevice>,
        unreadable: Vec<String>,
    },
    /// One device's evidence (empty: nothing wrong); `None` evidence: the library cannot tell.
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

/// Opens a library (on the thread that will use it); `Err`: why it cannot be used here.
pub type Opener = Box<dyn Fn() -> Result<Box<dyn DeviceLibrary>, String> + Send>;

/// Start `name`'s thread: inventory, then every device's sample each `interval`; when the
/// library cannot be used, [`LibraryEvent::Unavailable`] and another try after [`RETRY`].
pub fn spawn_library_thread(
    name: &str,
    open: Opener,
    interval: StdDuration,
    events: mpsc::Sender<LibraryEvent>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name(name.into()).spawn(move || {
        let send = |e: LibraryEvent| events.blocking_send(e).is_ok();
        loop {
            let ended = match open() {
                Ok(mut library) => follow(library.as_mut(), interval, &send, &stop),
                Err(e) => Some(e),
            };
            let Some(message) = ended else { return };
            if !send(LibraryEvent::Unavailable { message }) || !sleep_unless_stopped(RETRY, &stop) {
                return;
            }
        }
    })
}

/// Returns why it stopped following (`None`: told to stop, or the loop is gone).
fn follow(
    library: &mut dyn DeviceLibrary,
    interval: StdDuration,
    send: &dyn Fn(LibraryEvent) -> bool,
    stop: &AtomicBool,
) -> Option<String> {
    let devices = match library.devices() {
        Ok(devices) => devices,
        Err(e) => return Some(e),
    };
    if !send(LibraryEvent::Inventory { devices: devices.clone(), unreadable: library.unreadable() }) {
        return None;
    }
    loop {
        for (index, device) in devices.iter().enumerate() {
            let pci_address = device.pci_address.clone();
            let event = match library.sample(index) {
                Ok(evidence) => LibraryEvent::Sample { pci_address, evidence },
                Err(message) => LibraryEvent::SampleFailed { pci_address, message },
            };
            if !send(event) {
                return None;
            }
        }
        if !library.wait(interval, stop) {
            return None;
        }
    }
}

/// Sleep `total` in short steps; `false` when told to stop.
pub fn sleep_unless_stopped(total: StdDuration, stop: &AtomicBool) -> bool {
    let until = std::time::Instant::now() + total;
    while std::time::Instant::now() < until {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        std::thread::sleep(StdDuration::from_millis(50).min(total));
    }
    !stop.load(Ordering::Relaxed)
}

/// The devices an enumeration gave, by their PCI address in the kernel's form (a device without
/// a readable address is dropped, a second device at one address is the first), with each
/// one's index in the enumeration; and each serial number's address (Gaudi).
pub fn by_address(devices: &[LibraryDevice]) -> (Vec<(usize, String)>, BTreeMap<String, String>) {
    let mut seen = BTreeSet::new();
    let mut found = Vec::new();
    let mut serials = BTreeMap::new();
    for (index, d) in devices.iter().enumerate() {
        let Some(pci) = devheal_core::identity::normalise_pci_address(&d.pci_address) else { continue };
        if let Some(serial) = d.serial.as_ref().filter(|s| !s.is_empty()) {
            serials.insert(serial.clone(), pci.clone());
        }
        if seen.insert(pci.clone()) {
            found.push((index, pci));
        }
    }
    (found, serials)
}
