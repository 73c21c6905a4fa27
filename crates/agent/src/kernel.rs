//! The kernel-log source of the long-running agent.
//!
//! A blocking thread reads `/dev/kmsg` from the start of the ring buffer (this boot's records
//! first, then live ones), counts every record, classifies it with the catalog, and sends only
//! device faults to the event loop, so a storm of ordinary kernel lines never reaches it.
//! In the loop, [`KernelPipeline`] correlates the faults into incidents (a storm of one Xid is one
//! reason with a count), drops what is not the device's fault (application Xids, folded Xid 45)
//! and maps the rest to a device by its PCI address. With the node's PCIe topology
//! ([`crate::pci_topology`]), a fault on a bridge or switch port and the faults of the devices
//! below it are one incident whose root cause is the port, and that incident is evidence about
//! every tracked device below the port (an NVSwitch's: about every GPU it links).
//! NIC link lines are never evidence about a device: they go to the loop as
//! [`Mapped::Link`], for the NIC link tracker ([`devheal_detect::LinkTracker`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use devheal_core::{Attribution, Duration, Health, HealthSource, Time};
use devheal_detect::{
    Catalog, Classifier, CorrelationConfig, Correlator, DeviceFault, FaultKind, KmsgError, KmsgEvent,
    KmsgReader, LinkState, StartAt, Topology,
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
    /// Correlates with the node's PCIe paths and NVSwitch links (empty: faults map by their own
    /// address only), which [`Self::relation`] reads too.
    correlator: Correlator,
    /// Evidence on PCI addresses no known device has yet (NVML may come up after the replay),
    /// applied when a device with that address appears. Bounded.
    pending: BTreeMap<String, Vec<(Evidence, Time)>>,
    pending_count: usize,
    /// Devices by the name their driver gives them in place of a PCI address (Gaudi's `hl0`,
    /// `accel0`): name → PCI address ([`crate::accel`]).
    names: BTreeMap<String, String>,
}

/// How a fault elsewhere concerns a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Relation {
    /// The fault is on a bridge or switch port above the device.
    BelowPort,
    /// The fault is on an NVSwitch the device (a GPU) is linked to.
    LinkedSwitch,
}

impl Relation {
    /// Evidence about the device from a fault at `at`, worded so the device's reason says where.
    pub fn evidence(self, at: &str, evidence: &Evidence) -> Evidence {
        let place = match self {
            Relation::BelowPort => format!("below PCIe port {at}"),
            Relation::LinkedSwitch => format!("linked to NVSwitch {at}"),
        };
        Evidence { message: format!("{place}: {}", evidence.message), ..evidence.clone() }
    }
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
    /// A NIC's link went down or came up: the port by its PCI address, its interface, or both.
    Link { pci_address: Option<String>, interface: Option<String>, state: LinkState, at: Time },
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
            names: BTreeMap::new(),
        }
    }

    /// Classify with `catalog` (the agent's `--catalog`) instead of the built-in catalog.
    pub fn with_catalog(mut self, catalog: Catalog) -> Self {
        self.classifier = Classifier::new(catalog);
        self
    }

    /// Map the devices a line names by their own name (`hl0`, `accel0`) to these PCI
    /// addresses from now on (replacing the last names).
    pub fn set_device_names(&mut self, names: BTreeMap<String, String>) {
        self.names = names;
    }

    /// Correlate with the node's topology from now on (replacing the last one read).
    pub fn set_topology(&mut self, topology: Topology) {
        let config = self.correlator.config().clone();
        let correlator = std::mem::replace(&mut self.correlator, Correlator::new(config));
        self.correlator = correlator.with_topology(topology);
    }

    /// How a fault at `at` (a port, an NVSwitch) concerns the device at `device`: `None` when
    /// it does not (the device's own address is not "below" itself).
    pub fn relation(&self, at: &str, device: &str) -> Option<Relation> {
        let topology = self.correlator.topology();
        if topology.is_upstream_of(at, device) {
            Some(Relation::BelowPort)
        } else if topology.links(at, device) {
            Some(Relation::LinkedSwitch)
        } else {
            None
        }
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
        // A line that names the device by its driver's name (`habanalabs hl0: ...`): its
        // address, when sysfs says which device that is.
        let named;
        let fault = match (&fault.device, fault.device_name.as_ref().and_then(|n| self.names.get(n))) {
            (None, Some(pci)) => {
                named = DeviceFault { device: Some(pci.clone()), ..fault.clone() };
                &named
            }
            _ => fault,
        };
        if fault.kind == FaultKind::NicLink {
            // A network link, never a device's fault: the loop's link tracker tells a flap from
            // a dead link.
            let state = if fault.variant == "up" { LinkState::Up } else { LinkState::Down };
            return Mapped::Link {
                pci_address: fault.device.clone(),
                interface: fault.interface.clone(),
                state,
                at,
            };
        }
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

    /// Which of `devices` (`(pci address, key)`, the physical devices tracked) a fault mapped
    /// to `pci_address` is evidence about, with the evidence for each: the device at that
    /// address itself; else every device below the port there or linked to the NVSwitch there,
    /// the evidence worded to say where ([`Relation::evidence`]). Empty: no tracked device.
    pub fn evidence_for(
        &self,
        pci_address: &str,
        evidence: &Evidence,
        devices: &[(String, String)],
    ) -> Vec<(String, Evidence)> {
        if let Some((_, key)) = devices.iter().find(|(pci, _)| pci == pci_address) {
            return vec![(key.clone(), evidence.clone())];
        }
        devices
            .iter()
            .filter_map(|(pci, key)| {
                self.relation(pci_address, pci).map(|r| (key.clone(), r.evidence(pci_address, evidence)))
            })
            .collect()
    }

    /// Evidence held for a port or NVSwitch that concerns some of `devices` (`(pci address,
    /// key)`), now that the topology places them: each such device gets it (worded by
    /// [`Relation::evidence`]) and the port's evidence is no longer held.
    pub fn take_held_upstream(&mut self, devices: &[(String, String)]) -> Vec<(String, Evidence, Time)> {
        let mut out = Vec::new();
        let ports: Vec<String> = self.pending.keys().cloned().collect();
        for port in ports {
            let concerned: Vec<(&String, Relation)> =
                devices.iter().filter_map(|(pci, key)| self.relation(&port, pci).map(|r| (key, r))).collect();
            if concerned.is_empty() {
                continue;
            }
            let held = self.pending.remove(&port).unwrap_or_default();
            self.pending_count -= held.len();
            for (evidence, at) in &held {
                for (key, relation) in &concerned {
                    out.push(((*key).clone(), relation.evidence(&port, evidence), *at));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two GPUs below two root ports, one NVSwitch linking both (the text form of
    /// `classify-log --topology`).
    fn topology() -> Topology {
        Topology::parse(
            "pci 0000:00:02.0 0000:02:00.0\npci 0000:00:03.0 0000:41:00.0\nnvswitch 0000:87:00.0 0000:02:00.0 0000:41:00.0\n",
            "test",
        )
        .expect("a topology")
    }

    fn gpus() -> Vec<(String, String)> {
        vec![("0000:02:00.0".into(), "GPU-a".into()), ("0000:41:00.0".into(), "GPU-b".into())]
    }

    /// The real lines of crates/detect/tests/data/real-lines.txt (a fatal AER on the root port
    /// above an NVIDIA GPU): without the topology the port is no device and the GPU stays
    /// Healthy; with it the GPU below is Unhealthy, and its own Xid 79 that follows is part of
    /// the port's incident.
    #[test]
    fn a_fatal_aer_on_a_port_is_evidence_about_the_device_below_it() {
        let aer = "pcieport 0000:00:02.0: AER: Uncorrected (Fatal) error received: id=0010";
        let mut plain = KernelPipeline::new("n", Some("b".into()), Time::from_secs(1000));
        let Some(Mapped::Device { pci_address, evidence, .. }) = plain.line(aer, Time::from_secs(1001))
        else {
            panic!("a fatal AER is a device fault");
        };
        assert_eq!(pci_address, "0000:00:02.0");
        assert!(plain.evidence_for(&pci_address, &evidence, &gpus()).is_empty(), "no device at the port");

        let mut p = KernelPipeline::new("n", Some("b".into()), Time::from_secs(1000));
        p.set_topology(topology());
        let Some(Mapped::Device { pci_address, evidence, .. }) = p.line(aer, Time::from_secs(1001)) else {
            panic!("a fatal AER is a device fault");
        };
        let got = p.evidence_for(&pci_address, &evidence, &gpus());
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].0, "GPU-a", "only the GPU below that port");
        assert_eq!(got[0].1.health, Health::Unhealthy);
        assert!(got[0].1.message.starts_with("below PCIe port 0000:00:02.0: "), "{:?}", got[0].1);
        let xid = "NVRM: Xid (PCI:0000:02:00): 79, pid=1, name=x, GPU has fallen off the bus.";
        assert_eq!(
            p.line(xid, Time::from_secs(1002)),
            Some(Mapped::Ignored),
            "folded into the port's incident"
        );
        // A device's own address is itself, not below itself.
        let own = p.evidence_for("0000:41:00.0", &evidence, &gpus());
        assert_eq!(own, vec![("GPU-b".to_string(), evidence.clone())]);
    }

    #[test]
    fn a_fatal_nvswitch_fault_is_evidence_about_every_gpu_it_links() {
        let mut p = KernelPipeline::new("n", Some("b".into()), Time::from_secs(1000));
        p.set_topology(topology());
        let sxid = "nvidia-nvswitch2: SXid (PCI:0000:87:00.0): 20034, Fatal, Link 30 LTSSM Fault Up";
        let Some(Mapped::Device { pci_address, evidence, .. }) = p.line(sxid, Time::from_secs(1001)) else {
            panic!("a fatal SXid is a fault");
        };
        let got = p.evidence_for(&pci_address, &evidence, &gpus());
        let keys: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["GPU-a", "GPU-b"]);
        assert!(
            got.iter().all(|(_, e)| e.message.starts_with("linked to NVSwitch 0000:87:00.0: ")),
            "{got:?}"
        );
    }

    /// Evidence on a port seen before the topology placed any device waits, and then reaches
    /// every device below the port, once.
    #[test]
    fn evidence_held_on_a_port_reaches_the_devices_below_it_once_they_are_placed() {
        let mut p = KernelPipeline::new("n", Some("b".into()), Time::from_secs(1000));
        let aer = "pcieport 0000:00:02.0: AER: Uncorrected (Fatal) error received: id=0010";
        let Some(Mapped::Device { pci_address, evidence, at }) = p.line(aer, Time::from_secs(1001)) else {
            panic!("a fatal AER is a device fault");
        };
        p.hold(pci_address, evidence, at);
        assert!(p.take_held_upstream(&gpus()).is_empty(), "no topology yet");
        assert!(p.has_held());
        p.set_topology(topology());
        let released = p.take_held_upstream(&gpus());
        assert_eq!(released.len(), 1, "{released:?}");
        assert_eq!(released[0].0, "GPU-a");
        assert!(!p.has_held());
        assert!(p.take_held_upstream(&gpus()).is_empty(), "once");
    }

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
    fn nic_link_lines_go_to_the_link_tracker_never_to_a_device() {
        let mut p = KernelPipeline::new("n", Some("b".into()), Time::from_secs(1000));
        let down = p.line("mlx5_core 0000:08:00.0 ens1np0: Link down", Time::from_secs(1001));
        assert_eq!(
            down,
            Some(Mapped::Link {
                pci_address: Some("0000:08:00.0".into()),
                interface: Some("ens1np0".into()),
                state: LinkState::Down,
                at: Time::from_secs(1001),
            })
        );
        let up = p.line("e1000e: eth0 NIC Link is Up 1000 Mbps Full Duplex", Time::from_secs(1002));
        assert!(
            matches!(up, Some(Mapped::Link { pci_address: None, state: LinkState::Up, ref interface, .. })
                if interface.as_deref() == Some("eth0")),
            "{up:?}"
        );
        assert!(!p.has_held(), "nothing waits for a device at a NIC's address");
    }

    /// A Gaudi line names the device `hl0`: with sysfs' names it is evidence about the device
    /// at that address; without them it names no address.
    #[test]
    fn a_gaudi_line_by_name_maps_through_the_sysfs_names() {
        let line = "habanalabs hl0: Device heartbeat failed! PCI link is broken";
        let mut p = KernelPipeline::new("n", Some("b".into()), Time::from_secs(1000));
        assert_eq!(p.line(line, Time::from_secs(1001)), Some(Mapped::NoAddress));
        let mut p = KernelPipeline::new("n", Some("b".into()), Time::from_secs(1000));
        p.set_device_names(BTreeMap::from([("hl0".to_string(), "0000:19:00.0".to_string())]));
        let Some(Mapped::Device { pci_address, evidence, .. }) = p.line(line, Time::from_secs(1001)) else {
            panic!("a heartbeat failure is a device fault");
        };
        assert_eq!(pci_address, "0000:19:00.0");
        assert_eq!(evidence.health, Health::Unhealthy);
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
