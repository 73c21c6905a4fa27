//! The hlml source: Intel Gaudi devices through Intel's management library (`libhlml.so`),
//! loaded at run time by `devheal-hlml`, on the shared library thread ([`crate::library`]).
//!
//! Why: Intel's Gaudi device plugin (`habana.ai/gaudi`) names each device by its **serial
//! number**, and only hlml ties a serial to a PCI address. With it, a pod's Gaudi is the device
//! the kernel's `habanalabs hl0:` lines name (through sysfs' `accel<N>`), and its health is one
//! record. Without it (no library, no driver) the source is reported unavailable with the reason
//! and the plugin's ids stay as they are, as before.
//!
//! Evidence ([`evidence_for`]), all [`HealthSource::Hlml`]:
//! - uncorrected ECC errors since the device's last reset or driver load: Unhealthy;
//! - a critical-error event (`HLML_EVENT_CRITICAL_ERR`, what Intel's plugin marks a device
//!   unhealthy on) or a double-bit ECC event: Unhealthy. Events are one-shot; each is kept for
//!   the life of the library session (the agent's restart forgets it, as the plugin does), so
//!   the next round's sample does not clear it.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::{Duration as StdDuration, Instant};

use devheal_core::{Health, HealthSource};
use devheal_hlml::{EVENT_CRITICAL_ERR, EVENT_ECC_DERR, GaudiDevice, Hlml, HlmlError};

use crate::health::Evidence;
use crate::library::{DeviceLibrary, LibraryDevice, Opener, sleep_unless_stopped};

/// The source's name in `status.sources`.
pub const HLML_SOURCE: &str = "hlml";
/// The resource Intel's Gaudi device plugin registers.
pub const GAUDI_RESOURCE: &str = "habana.ai/gaudi";
/// The longest one wait for an event lasts (the stop flag is read between waits).
const EVENT_WAIT_MS: u32 = 250;

/// Reason codes of [`HealthSource::Hlml`] evidence.
pub mod codes {
    pub const UNCORRECTED_ECC: u32 = 1;
    pub const CRITICAL_ERROR: u32 = 2;
    pub const DOUBLE_BIT_ECC: u32 = 3;
}

/// What is known of one device: its uncorrected ECC count (`None`: not supported) and the
/// events heard since the library was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GaudiState {
    pub uncorrected: Option<u64>,
    pub critical_errors: u32,
    pub double_bit_errors: u32,
}

/// Evidence about one device.
pub fn evidence_for(state: &GaudiState) -> Vec<Evidence> {
    let evidence = |code, message| Evidence {
        source: HealthSource::Hlml,
        code: Some(code),
        health: Health::Unhealthy,
        message,
    };
    let mut out = Vec::new();
    if let Some(n) = state.uncorrected.filter(|n| *n > 0) {
        out.push(evidence(
            codes::UNCORRECTED_ECC,
            format!("{n} uncorrected ECC error(s) since the device's last reset (hlml)"),
        ));
    }
    if state.critical_errors > 0 {
        out.push(evidence(
            codes::CRITICAL_ERROR,
            format!("{} critical error event(s) (hlml HLML_EVENT_CRITICAL_ERR)", state.critical_errors),
        ));
    }
    if state.double_bit_errors > 0 {
        out.push(evidence(
            codes::DOUBLE_BIT_ECC,
            format!("{} double-bit ECC error event(s) (hlml HLML_EVENT_ECC_DERR)", state.double_bit_errors),
        ));
    }
    out
}

/// hlml as a [`DeviceLibrary`].
pub struct HlmlLibrary {
    hlml: Hlml,
    devices: Vec<GaudiDevice>,
    /// Events heard, by device index.
    events: Vec<GaudiState>,
}

impl HlmlLibrary {
    fn record(&mut self, index: usize, event_type: u64) {
        let Some(state) = self.events.get_mut(index) else { return };
        if event_type & EVENT_CRITICAL_ERR != 0 {
            state.critical_errors = state.critical_errors.saturating_add(1);
        }
        if event_type & EVENT_ECC_DERR != 0 {
            state.double_bit_errors = state.double_bit_errors.saturating_add(1);
        }
    }
}

impl DeviceLibrary for HlmlLibrary {
    fn devices(&mut self) -> Result<Vec<LibraryDevice>, String> {
        self.devices = self.hlml.devices().map_err(|e| e.to_string())?;
        self.events = vec![GaudiState::default(); self.devices.len()];
        if !self.hlml.events_heard() {
            tracing::warn!(
                "hlml: no Gaudi device took the event registration; critical errors are not heard"
            );
        }
        Ok(self.devices.iter().map(library_device).collect())
    }

    fn unreadable(&self) -> Vec<String> {
        self.hlml.unreadable().iter().map(ToString::to_string).collect()
    }

    fn sample(&mut self, index: usize) -> Result<Option<Vec<Evidence>>, String> {
        let device = self.devices.get(index).ok_or_else(|| format!("no Gaudi #{index}"))?;
        let uncorrected = match self.hlml.uncorrected_ecc(device) {
            Ok(n) => Some(n),
            Err(HlmlError::NotSupported { .. }) => None,
            Err(e) => return Err(e.to_string()),
        };
        let state = GaudiState { uncorrected, ..self.events.get(index).copied().unwrap_or_default() };
        Ok(Some(evidence_for(&state)))
    }

    /// Listen for events until `total` has passed.
    fn wait(&mut self, total: StdDuration, stop: &AtomicBool) -> bool {
        if !self.hlml.events_heard() {
            return sleep_unless_stopped(total, stop);
        }
        let until = Instant::now() + total;
        loop {
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                return false;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            let timeout = u32::try_from(left.as_millis()).unwrap_or(u32::MAX).min(EVENT_WAIT_MS);
            let asked = Instant::now();
            match self.hlml.next_event(timeout) {
                Ok(Some(event)) => {
                    tracing::warn!(
                        device = self.devices.get(event.index).map(|d| d.serial.as_str()).unwrap_or("?"),
                        event_type = event.event_type,
                        "hlml event"
                    );
                    self.record(event.index, event.event_type);
                }
                // A library that answers "no event" before its timeout is not waited on in a
                // busy loop: the rest of the slice is slept.
                Ok(None) => std::thread::sleep(
                    StdDuration::from_millis(u64::from(timeout)).saturating_sub(asked.elapsed()),
                ),
                Err(e) => {
                    tracing::debug!(error = %e, "hlml event wait failed; sleeping instead");
                    return sleep_unless_stopped(left, stop);
                }
            }
        }
    }
}

fn library_device(d: &GaudiDevice) -> LibraryDevice {
    LibraryDevice { pci_address: d.pci_address.clone(), serial: Some(d.serial.clone()) }
}

/// Scripted Gaudi devices (tests): each with its serial, PCI address and state.
#[derive(Clone, Debug, Default)]
pub struct FakeGaudiTelemetry {
    pub devices: Vec<(String, String, GaudiState)>,
}

impl DeviceLibrary for FakeGaudiTelemetry {
    fn devices(&mut self) -> Result<Vec<LibraryDevice>, String> {
        Ok(self
            .devices
            .iter()
            .map(|(serial, pci, _)| LibraryDevice { pci_address: pci.clone(), serial: Some(serial.clone()) })
            .collect())
    }

    fn sample(&mut self, index: usize) -> Result<Option<Vec<Evidence>>, String> {
        let (_, _, state) = self.devices.get(index).ok_or_else(|| format!("no Gaudi #{index}"))?;
        Ok(Some(evidence_for(state)))
    }
}

/// Where Gaudi telemetry comes from.
#[derive(Clone, Debug, Default)]
pub enum GaudiSource {
    /// hlml, loaded at run time (retried while absent).
    #[default]
    Hlml,
    /// Scripted devices (tests).
    Fake(FakeGaudiTelemetry),
    /// None.
    Off,
}

impl GaudiSource {
    /// How the library thread opens this source (`library`: hlml's path); `None`: off.
    pub fn opener(&self, library: Option<PathBuf>) -> Option<Opener> {
        match self.clone() {
            GaudiSource::Off => None,
            GaudiSource::Fake(fake) => {
                Some(Box::new(move || Ok(Box::new(fake.clone()) as Box<dyn DeviceLibrary>)))
            }
            GaudiSource::Hlml => Some(Box::new(move || {
                let hlml = Hlml::open(library.as_deref()).map_err(|e| e.to_string())?;
                Ok(Box::new(HlmlLibrary { hlml, devices: Vec::new(), events: Vec::new() })
                    as Box<dyn DeviceLibrary>)
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecc_errors_and_events_are_unhealthy_and_a_quiet_device_has_no_evidence() {
        let codes = |s: GaudiState| -> Vec<(Option<u32>, Health)> {
            evidence_for(&s).into_iter().map(|e| (e.code, e.health)).collect()
        };
        assert!(codes(GaudiState { uncorrected: Some(0), ..GaudiState::default() }).is_empty());
        assert!(codes(GaudiState::default()).is_empty(), "ECC not supported, no event");
        assert_eq!(
            codes(GaudiState { uncorrected: Some(3), critical_errors: 1, double_bit_errors: 2 }),
            [
                (Some(codes::UNCORRECTED_ECC), Health::Unhealthy),
                (Some(codes::CRITICAL_ERROR), Health::Unhealthy),
                (Some(codes::DOUBLE_BIT_ECC), Health::Unhealthy)
            ]
        );
    }

    #[test]
    fn a_node_without_hlml_is_told_why() {
        let open = GaudiSource::Hlml.opener(Some("/nonexistent/libhlml.so".into())).expect("on");
        match open() {
            Err(message) => assert!(
                message.starts_with("hlml unavailable: cannot load /nonexistent/libhlml.so"),
                "{message}"
            ),
            Ok(_) => panic!("no library there"),
        }
        assert!(GaudiSource::Off.opener(None).is_none());
    }
}
