//! The kernel-log source of the long-running agent.
//!
//! A blocking thread reads `/dev/kmsg` from the start of the ring buffer (this boot's records
//! first, then live ones), counts every record, classifies it with the catalog, and sends only
//! device faults to the event loop, so a storm of ordinary kernel lines never reaches it.
//! In the loop, [`KernelPipeline`] correlates the faults into incidents (a storm of one Xid is one
//! reason with a count), drops what is not the device's fault (application Xids, folded Xid 45)
//! and maps the rest to a device by its PCI address.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use devheal_core::{Attribution, Duration, Health, HealthSource, Time};
use devheal_detect::{
    Catalog, Classifier, CorrelationConfig, Correlator, DeviceFault, KmsgError, KmsgEvent, KmsgReader,
    StartAt,
};
use tokio::sync::mpsc;

use crate::health::Evidence;
use crate::metrics::AgentMetrics;

/// What the reader thread tells the loop.
#[derive(Debug)]
pub enum KernelEvent {
    /// The reader is following the log.
    Following { path: String },
    /// A device-fault record; `since_boot` is the record's kernel timestamp.
    Fault { fault: Box<DeviceFault>, since_boot: Duration },
    /// The log cannot be read now; the thread retries.
    Unavailable { message: String },
}

/// How long the reader waits before opening the log again after an error.
const REOPEN_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

/// Start the reader thread. It stops at the first record after `stop` is set or the loop's
/// receiver is gone (a blocking read cannot be interrupted; the process exit ends it otherwise).
pub fn spawn_kmsg_reader(
    path: PathBuf,
    events: mpsc::Sender<KernelEvent>,
    metrics: Arc<AgentMetrics>,
    stop: Arc<AtomicBool>,
    catalog: Catalog,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("kmsg-reader".into()).spawn(move || {
        let classifier = Classifier::new(catalog);
        let mut start = StartAt::Beginning;
        while !stop.load(Ordering::Relaxed) && !events.is_closed() {
            let mut reader = match KmsgReader::open(&path, start) {
                Ok(reader) => reader,
                Err(e) => {
                    let _ = events.blocking_send(KernelEvent::Unavailable { message: e.to_string() });
                    std::thread::sleep(REOPEN_AFTER);
                    continue;
                }
            };
            let _ = events.blocking_send(KernelEvent::Following { path: path.display().to_string() });
            let message = follow(&mut reader, &classifier, &events, &metrics, &stop);
            let Some(message) = message else { return };
            let _ = events.blocking_send(KernelEvent::Unavailable { message });
            // Records between the error and the reopen are read; history before it is not replayed
            // again (its faults are already known).
            start = StartAt::End;
            std::thread::sleep(REOPEN_AFTER);
        }
    })
}

/// Read until an error (returned as its message) or until told to stop (`None`).
fn follow(
    reader: &mut KmsgReader,
    classifier: &Classifier,
    events: &mpsc::Sender<KernelEvent>,
    metrics: &AgentMetrics,
    stop: &AtomicBool,
) -> Option<String> {
    loop {
        match reader.next_record() {
            Ok(KmsgEvent::Record(record)) => {
                metrics.kmsg_lines.inc();
                if let Some(fault) = classifier.classify(&record.message) {
                    metrics.kmsg_faults.inc();
                    let event = KernelEvent::Fault { fault: Box::new(fault), since_boot: record.since_boot };
                    if events.blocking_send(event).is_err() {
                        return None;
                    }
                }
            }
            Ok(KmsgEvent::Lost { count }) => {
                metrics.kmsg_lost.inc_by(count);
            }
            // A saved log (a regular file, in tests) read to its end: wait for more.
            Err(KmsgError::Closed { .. }) => std::thread::sleep(std::time::Duration::from_millis(100)),
            Err(e) => return Some(e.to_string()),
        }
        if stop.load(Ordering::Relaxed) || events.is_closed() {
            return None;
        }
    }
}

/// Kernel faults → evidence about devices.
pub struct KernelPipeline {
    node: String,
    boot_id: Option<String>,
    /// Wall-clock time of boot, to place records' kernel timestamps.
    boot_time: Time,
    classifier: Classifier,
    correlator: Correlator,
    /// Evidence on PCI addresses no known device has yet (NVML may come up after the replay),
    /// applied when a device with that address appears. Bounded.
    pending: BTreeMap<String, Vec<(Evidence, Time)>>,
    pending_count: usize,
}

/// At most this many evidence items wait for their device.
const PENDING_LIMIT: usize = 4096;

/// What one fault came to.
#[derive(Debug, PartialEq)]
pub enum Mapped {
    /// Evidence for the device at this PCI address.
    Device { pci_address: String, evidence: Evidence, at: Time },
    /// Not the device's fault, or part of an incident already counted.
    Ignored,
    /// A device fault that names no PCI address.
    NoAddress,
}

impl KernelPipeline {
    pub fn new(node: &str, boot_id: Option<String>, boot_time: Time) -> Self {
        KernelPipeline {
            node: node.to_string(),
            boot_id,
            boot_time,
            classifier: Classifier::new(Catalog::builtin()),
            correlator: Correlator::new(CorrelationConfig::default()),
            pending: BTreeMap::new(),
            pending_count: 0,
        }
    }

    /// Classify with `catalog` (the agent's `--catalog`) instead of the built-in catalog.
    pub fn with_catalog(mut self, catalog: Catalog) -> Self {
        self.classifier = Classifier::new(catalog);
        self
    }

    /// The wall-clock time of a record's kernel timestamp.
    pub fn wall_time(&self, since_boot: Duration) -> Time {
        self.boot_time + since_boot
    }

    /// Classify one kernel-log message (a line injected by the fake devices, the same shape the
    /// kernel prints) logged at `at`.
    pub fn line(&mut self, message: &str, at: Time) -> Option<Mapped> {
        let fault = self.classifier.classify(message)?;
        Some(self.fault(&fault, at))
    }

    /// Correlate one fault and say which device it is evidence about.
    pub fn fault(&mut self, fault: &DeviceFault, at: Time) -> Mapped {
        let observation = self.correlator.observe(&self.node, self.boot_id.as_deref(), at, fault);
        let incident = observation.incident;
        if observation.folded_into_other
            || incident.attribution == Attribution::Application
            || incident.health == Health::Healthy
            || incident.health == Health::Unknown
        {
            return Mapped::Ignored;
        }
        let Some(pci_address) = incident.pci_address.clone() else { return Mapped::NoAddress };
        Mapped::Device {
            pci_address,
            evidence: Evidence {
                source: HealthSource::KernelLog,
                code: incident.code,
                health: incident.health,
                message: incident.summary,
            },
            at,
        }
    }

    /// Keep evidence for a device that is not known yet.
    pub fn hold(&mut self, pci_address: String, evidence: Evidence, at: Time) {
        if self.pending_count >= PENDING_LIMIT {
            return;
        }
        self.pending_count += 1;
        self.pending.entry(pci_address).or_default().push((evidence, at));
    }

    /// Evidence held for `pci_address`, now that a device has it.
    pub fn take_held(&mut self, pci_address: &str) -> Vec<(Evidence, Time)> {
        let held = self.pending.remove(pci_address).unwrap_or_default();
        self.pending_count -= held.len();
        held
    }

    pub fn has_held(&self) -> bool {
        self.pending_count > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_xid_line_becomes_evidence_about_its_pci_address_and_a_storm_is_one_reason() {
        let mut p = KernelPipeline::new("n", Some("b".into()), Time::from_secs(1000));
        let line = "NVRM: Xid (PCI:0000:3b:00): 79, pid=1, name=x, GPU has fallen off the bus.";
        let Some(Mapped::Device { pci_address, evidence, at }) = p.line(line, Time::from_secs(1001)) else {
            panic!("an Xid 79 is a device fault");
        };
        assert_eq!(pci_address, "0000:3b:00.0");
        assert_eq!(
            (evidence.source, evidence.code, evidence.health),
            (HealthSource::KernelLog, Some(79), Health::Unhealthy)
        );
        assert_eq!(at, Time::from_secs(1001));
        assert!(p.line("usb 1-1: new high-speed USB device", Time::from_secs(1002)).is_none());
        assert_eq!(p.wall_time(Duration::from_secs(5)), Time::from_secs(1005));
    }

    #[test]
    fn application_xids_are_not_evidence_against_the_device() {
        let mut p = KernelPipeline::new("n", None, Time::ZERO);
        let line = "NVRM: Xid (PCI:0000:3b:00): 13, pid=1, name=x, Graphics Exception";
        assert_eq!(p.line(line, Time::from_secs(1)), Some(Mapped::Ignored));
    }

    #[test]
    fn held_evidence_is_bounded_and_released_once() {
        let mut p = KernelPipeline::new("n", None, Time::ZERO);
        let e = Evidence {
            source: HealthSource::KernelLog,
            code: Some(79),
            health: Health::Unhealthy,
            message: "x".into(),
        };
        for _ in 0..PENDING_LIMIT + 10 {
            p.hold("0000:01:00.0".into(), e.clone(), Time::ZERO);
        }
        assert!(p.has_held());
        assert_eq!(p.take_held("0000:01:00.0").len(), PENDING_LIMIT);
        assert!(p.take_held("0000:01:00.0").is_empty());
        assert!(!p.has_held());
    }
}
