//! The thread every vendor management library loaded at run time runs on: amdsmi for AMD GPUs
//! ([`crate::amd`]), hlml for Intel Gaudi ([`crate::gaudi`]).
//!
//! Each library is opened on its own thread (their handles belong to the thread that opened
//! them), enumerates its devices, then samples each device every interval and tells the loop
//! ([`LibraryEvent`]). A library that cannot be opened (absent, no driver) or fails to enumerate
//! is reported [`LibraryEvent::Unavailable`] with the reason and opened again after [`RETRY`]:
//! the agent runs on without it, as without NVML.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration as StdDuration;

use devheal_core::{HealthSource, Vendor};
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

/// The vendor libraries the agent loads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Library {
    /// amdsmi ([`crate::amd`]).
    Amd,
    /// hlml ([`crate::gaudi`]).
    Gaudi,
}

impl Library {
    pub fn source_name(self) -> &'static str {
        match self {
            Library::Amd => crate::amd::AMD_SMI_SOURCE,
            Library::Gaudi => crate::gaudi::HLML_SOURCE,
        }
    }

    pub fn health_source(self) -> HealthSource {
        match self {
            Library::Amd => HealthSource::AmdSmi,
            Library::Gaudi => HealthSource::Hlml,
        }
    }

    pub fn resource(self) -> &'static str {
        match self {
            Library::Amd => crate::amd::AMD_GPU_RESOURCE,
            Library::Gaudi => crate::gaudi::GAUDI_RESOURCE,
        }
    }

    pub fn vendor(self) -> Vendor {
        match self {
            Library::Amd => Vendor::Amd,
            Library::Gaudi => Vendor::Intel,
        }
    }

    pub fn devices_noun(self) -> &'static str {
        match self {
            Library::Amd => "AMD GPU(s)",
            Library::Gaudi => "Gaudi device(s)",
        }
    }

    /// The source's status line: how many devices, and any the library could not read (a lost
    /// device is worth seeing there).
    pub fn inventory_message(self, found: usize, unreadable: &[String]) -> String {
        let mut message = format!("{found} {}", self.devices_noun());
        if let Some(first) = unreadable.first() {
            tracing::warn!(library = self.source_name(), "devices left out: {}", unreadable.join("; "));
            message.push_str(&format!("; {} unreadable ({first}", unreadable.len()));
            if unreadable.len() > 1 {
                message.push_str(", …");
            }
            message.push(')');
        }
        message
    }

    /// Whether sysfs was read and shows none of this library's devices.
    pub fn absent_from(self, accelerators: &crate::accel::AcceleratorInventory) -> bool {
        match self {
            Library::Amd => accelerators.has_no_amd_gpu(),
            Library::Gaudi => accelerators.has_no_gaudi(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_line_counts_the_devices_and_names_the_first_unreadable_one() {
        assert_eq!(Library::Gaudi.inventory_message(8, &[]), "8 Gaudi device(s)");
        let lost = "hlml call hlml_device_get_serial failed with status 15 on device #3".to_string();
        assert_eq!(
            Library::Gaudi.inventory_message(7, std::slice::from_ref(&lost)),
            format!("7 Gaudi device(s); 1 unreadable ({lost})")
        );
        assert_eq!(
            Library::Amd.inventory_message(6, &[lost.clone(), lost.clone()]),
            format!("6 AMD GPU(s); 2 unreadable ({lost}, …)")
        );
    }
}
