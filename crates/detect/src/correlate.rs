//! Correlation and de-duplication of device faults into incidents.
//!
//! Rules (see `docs/kernel-log.md`):
//! - Repeats of the same (node, boot, kind, device, code, variant) while the gap since the last
//!   repeat stays within `repeat_window` collapse into one incident with a count (an 800K-line
//!   storm of one Xid 95 is one incident).
//! - Xid 45 (preemptive cleanup at process teardown) on a device that had another Xid within
//!   `fold_window` folds into that incident instead of opening its own; a lone Xid 45 is its own
//!   application-attributed incident.
//! - Xid 154 (the driver announcing the recovery action a GPU now needs) folds into the Xid on
//!   the same device that caused it, within `fold_window`, and raises that incident's action and
//!   health to what it announces.
//! - Xid 79 and the driver's "GPU has fallen off the bus" line for the same device within
//!   `fold_window` are one incident.
//! - A GPU that is lost right after an uncorrected PCIe error (`fallen off the bus`, Xid 79, or
//!   AER recovery that failed) joins the PCIe error's incident: the error on the port is the root
//!   cause. The error may name the GPU itself, or (with a [`Topology`]) a port above it.
//! - With a [`Topology`], any non-application fault on a device below a port with an open
//!   uncorrected PCIe error joins that error's incident, and an NVLink Xid (74, 144–150) on a
//!   GPU that an NVSwitch links joins the open SXid incident of that switch.
//! - NIC link changes on one port within `repeat_window` are one incident; at
//!   [`FLAP_CHANGES`] changes it becomes a flapping link (unhealthy, still a network fault).
//! - A new boot id for a node drops everything known about its earlier boot.
//!
//! Pure and I/O-free: time is an argument.

use std::collections::HashMap;

use devheal_core::{Attribution, Duration, Health, KernelIncident, Time};

use crate::classify::{DeviceFault, FaultKind};
use crate::topology::Topology;

/// Link changes (downs and ups) on one NIC port within the repeat window that make it a
/// flapping link.
pub const FLAP_CHANGES: u32 = 4;

/// Correlation windows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CorrelationConfig {
    /// Repeats closer than this to the previous repeat join the open incident.
    pub repeat_window: Duration,
    /// How close an Xid 45 (or a fallen-off-the-bus pair) must be to fold into another incident.
    pub fold_window: Duration,
    /// Incidents idle for longer than this are forgotten (bounds memory).
    pub retention: Duration,
}

impl Default for CorrelationConfig {
    fn default() -> Self {
        CorrelationConfig {
            repeat_window: Duration::from_mins(10),
            fold_window: Duration::from_secs(30),
            retention: Duration::from_hours(1),
        }
    }
}

/// What one observed fault did to the incidents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    /// The incident the fault belongs to, after this observation.
    pub incident: KernelIncident,
    /// True when the fault opened a new incident.
    pub is_new: bool,
    /// True when the fault folded into an incident of another kind or code (Xid 45 beside
    /// 94/95/48, the fallen-off-the-bus line beside Xid 79).
    pub folded_into_other: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct IncidentKey {
    kind: FaultKind,
    device: Option<String>,
    code: Option<u32>,
    variant: &'static str,
}

#[derive(Debug, Default)]
struct NodeState {
    boot_id: Option<String>,
    open: HashMap<IncidentKey, KernelIncident>,
    /// The port that reported each open PCIe AER incident, when it differs from the device.
    reporters: HashMap<IncidentKey, String>,
}

/// Groups faults into incidents, per node.
#[derive(Debug, Default)]
pub struct Correlator {
    config: CorrelationConfig,
    nodes: HashMap<String, NodeState>,
    incidents_opened: u64,
    observations_since_prune: u64,
    topology: Topology,
}

const PRUNE_EVERY: u64 = 4096;

impl Correlator {
    pub fn new(config: CorrelationConfig) -> Correlator {
        Correlator {
            config,
            nodes: HashMap::new(),
            incidents_opened: 0,
            observations_since_prune: 0,
            topology: Topology::new(),
        }
    }

    /// Correlate with the node's device topology (PCIe paths, NVSwitch links).
    pub fn with_topology(mut self, topology: Topology) -> Correlator {
        self.topology = topology;
        self
    }

    /// The node's device topology correlation uses (empty unless given).
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    pub fn config(&self) -> &CorrelationConfig {
        &self.config
    }

    /// Number of incidents opened so far.
    pub fn incidents_opened(&self) -> u64 {
        self.incidents_opened
    }

    /// Record one fault seen on `node` at `at`.
    pub fn observe(
        &mut self,
        node: &str,
        boot_id: Option<&str>,
        at: Time,
        fault: &DeviceFault,
    ) -> Observation {
        self.observations_since_prune += 1;
        if self.observations_since_prune >= PRUNE_EVERY {
            self.observations_since_prune = 0;
            self.prune(at);
        }
        let config = self.config.clone();
        let state = match self.nodes.get_mut(node) {
            Some(state) => state,
            None => self.nodes.entry(node.to_string()).or_default(),
        };
        if let Some(boot_id) = boot_id
            && state.boot_id.as_deref() != Some(boot_id)
        {
            state.open.clear();
            state.reporters.clear();
            state.boot_id = Some(boot_id.to_string());
        }

        let target = fold_target(state, fault, at, config.fold_window)
            .or_else(|| root_cause_target(state, fault, at, &config, &self.topology));
        if let Some(target) = target
            && let Some(incident) = state.open.get_mut(&target)
        {
            absorb(incident, at);
            escalate(incident, fault);
            note_flapping(incident);
            let folded_into_other =
                target.kind != fault.kind || target.code != fault.code || target.variant != fault.variant;
            return Observation { incident: incident.clone(), is_new: false, folded_into_other };
        }

        let key = IncidentKey {
            kind: fault.kind,
            device: port_of(fault),
            code: fault.code,
            variant: fault.variant,
        };
        if let Some(incident) = state.open.get_mut(&key)
            && within(incident.last_seen, at, config.repeat_window)
        {
            absorb(incident, at);
            return Observation { incident: incident.clone(), is_new: false, folded_into_other: false };
        }

        self.incidents_opened += 1;
        let incident = KernelIncident {
            id: incident_id(node, state.boot_id.as_deref(), fault, self.incidents_opened),
            node: node.to_string(),
            boot_id: state.boot_id.clone(),
            pci_address: fault.device.clone(),
            kind: fault.kind.as_str().to_string(),
            code: fault.code,
            attribution: fault.attribution,
            health: fault.health,
            action: fault.action,
            first_seen: at,
            last_seen: at,
            count: 1,
            summary: fault.summary.clone(),
        };
        if let Some(reporter) = fault.reporter.as_ref().filter(|r| fault.device.as_ref() != Some(*r)) {
            state.reporters.insert(key.clone(), reporter.clone());
        }
        state.open.insert(key, incident.clone());
        Observation { incident, is_new: true, folded_into_other: false }
    }

    /// Forget incidents idle for longer than the retention.
    pub fn prune(&mut self, now: Time) {
        let retention = self.config.retention;
        for state in self.nodes.values_mut() {
            state.open.retain(|_, incident| within(incident.last_seen, now, retention));
            let open = &state.open;
            state.reporters.retain(|key, _| open.contains_key(key));
        }
        self.nodes.retain(|_, state| !state.open.is_empty() || state.boot_id.is_some());
    }

    /// The incidents currently open on `node`.
    pub fn open_incidents(&self, node: &str) -> impl Iterator<Item = &KernelIncident> {
        self.nodes.get(node).into_iter().flat_map(|state| state.open.values())
    }
}

/// `|at - seen| <= window` (faults may arrive slightly out of order).
fn within(seen: Time, at: Time, window: Duration) -> bool {
    let gap = if at >= seen { at.since(seen) } else { seen.since(at) };
    gap <= window
}

fn absorb(incident: &mut KernelIncident, at: Time) {
    incident.count += 1;
    if at > incident.last_seen {
        incident.last_seen = at;
    }
}

/// A folded fault may call for more than the incident it joins (Xid 154 announcing a reset):
/// keep the more serious action and health. `Unknown` health never overrides a known one.
fn escalate(incident: &mut KernelIncident, fault: &DeviceFault) {
    incident.action = incident.action.max(fault.action);
    let rank = |health: devheal_core::Health| match health {
        devheal_core::Health::Healthy | devheal_core::Health::Unknown => 0,
        devheal_core::Health::Degraded => 1,
        devheal_core::Health::Unhealthy => 2,
    };
    if rank(fault.health) > rank(incident.health) {
        incident.health = fault.health;
    }
}

/// The open incident this fault folds into, if a fold rule applies.
fn fold_target(state: &NodeState, fault: &DeviceFault, at: Time, window: Duration) -> Option<IncidentKey> {
    let device = fault.device.as_ref()?;
    let same_device_recent = |key: &IncidentKey, incident: &KernelIncident| {
        key.device.as_ref() == Some(device) && within(incident.last_seen, at, window)
    };
    let candidates = state.open.iter().filter(|(key, incident)| same_device_recent(key, incident));
    let wanted: fn(&IncidentKey) -> bool = match (fault.kind, fault.code) {
        // Xid 45 follows another Xid at teardown: fold into that Xid.
        (FaultKind::NvidiaXid, Some(45)) => {
            |key| key.kind == FaultKind::NvidiaXid && !matches!(key.code, Some(45 | 154))
        }
        // Xid 154 announces the recovery action for the Xid that caused it.
        (FaultKind::NvidiaXid, Some(154)) => {
            |key| key.kind == FaultKind::NvidiaXid && !matches!(key.code, Some(45 | 154))
        }
        // Xid 79 and the "fallen off the bus" line describe the same event.
        (FaultKind::NvidiaXid, Some(79)) => |key| key.kind == FaultKind::NvidiaFallenOffBus,
        (FaultKind::NvidiaFallenOffBus, _) => |key| key.kind == FaultKind::NvidiaXid && key.code == Some(79),
        _ => return None,
    };
    // The key is total over the candidates (they share the device; kind, code and variant
    // complete the incident key), so ties never fall to the map's hash order.
    candidates
        .filter(|(key, _)| wanted(key))
        .max_by_key(|(key, incident)| (incident.last_seen, key.code, key.kind.as_str(), key.variant))
        .map(|(key, _)| key.clone())
}

/// The open incident whose root cause this fault shares (a PCIe error on the device's port or on
/// the device itself, an NVSwitch that links the GPU, the same NIC port's link going down).
fn root_cause_target(
    state: &NodeState,
    fault: &DeviceFault,
    at: Time,
    config: &CorrelationConfig,
    topology: &Topology,
) -> Option<IncidentKey> {
    if fault.kind == FaultKind::NicLink {
        let key =
            IncidentKey { kind: FaultKind::NicLink, device: port_of(fault), code: None, variant: "down" };
        let open = state.open.get(&key)?;
        return within(open.last_seen, at, config.repeat_window).then_some(key);
    }
    let device = fault.device.as_deref()?;
    if fault.attribution == Attribution::Application {
        return None;
    }
    let lost_here = matches!(
        (fault.kind, fault.code, fault.variant),
        (FaultKind::NvidiaFallenOffBus, _, _)
            | (FaultKind::NvidiaXid, Some(79), _)
            | (FaultKind::PcieAer, _, "recovery_failed")
    );
    let nvlink = fault.kind == FaultKind::NvidiaXid && matches!(fault.code, Some(74 | 144..=150));
    state
        .open
        .iter()
        .filter(|(key, incident)| {
            let own = key.kind == fault.kind && key.code == fault.code && key.variant == fault.variant;
            !own && within(incident.last_seen, at, config.fold_window)
        })
        .filter(|(key, _)| {
            let Some(there) = key.device.as_deref() else { return false };
            match key.kind {
                FaultKind::PcieAer if matches!(key.variant, "fatal" | "non_fatal" | "recovery_failed") => {
                    let reporter = state.reporters.get(*key).map(String::as_str);
                    let same = there == device || reporter == Some(device);
                    (lost_here && same)
                        || topology.is_upstream_of(there, device)
                        || reporter.is_some_and(|port| topology.is_upstream_of(port, device))
                }
                FaultKind::NvidiaSxid => nvlink && topology.links(there, device),
                _ => false,
            }
        })
        .max_by_key(|(key, incident)| (incident.first_seen, key.kind, key.code, key.variant))
        .map(|(key, _)| key.clone())
}

/// What an incident of this fault is keyed by: its device, or for a NIC line that names only
/// its interface, the interface (two interfaces' links are two incidents).
fn port_of(fault: &DeviceFault) -> Option<String> {
    match (&fault.device, fault.kind) {
        (None, FaultKind::NicLink) => fault.interface.as_ref().map(|name| format!("interface {name}")),
        (device, _) => device.clone(),
    }
}

/// A NIC port whose link changed [`FLAP_CHANGES`] times within the repeat window is flapping.
fn note_flapping(incident: &mut KernelIncident) {
    if incident.kind == FaultKind::NicLink.as_str()
        && incident.count >= u64::from(FLAP_CHANGES)
        && incident.health != Health::Unhealthy
    {
        incident.health = Health::Unhealthy;
        let port = incident.pci_address.as_deref().unwrap_or("a NIC port");
        incident.summary = format!("NIC link flapping on {port}: the link went down and up repeatedly.");
    }
}

/// `node/boot/device/kind[-code|-variant]/n`, with `-` for what is unknown and the boot id cut
/// to 8 characters.
fn incident_id(node: &str, boot_id: Option<&str>, fault: &DeviceFault, number: u64) -> String {
    let boot = boot_id.map(|b| b.get(..8).unwrap_or(b)).unwrap_or("-");
    let device = fault.device.as_deref().unwrap_or("-");
    let label = match fault.code {
        Some(code) => format!("{}-{code}", fault.kind.as_str()),
        None => format!("{}-{}", fault.kind.as_str(), fault.variant),
    };
    format!("{node}/{boot}/{device}/{label}/{number}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::Classifier;
    use std::collections::BTreeSet;

    fn fault(message: &str) -> DeviceFault {
        Classifier::default().classify(message).unwrap()
    }

    fn xid(code: u32, bus: &str) -> DeviceFault {
        fault(&format!("NVRM: Xid (PCI:0000:{bus}:00): {code}, pid=42, name=train, detail"))
    }

    #[test]
    fn fold_target_ties_are_broken_deterministically() {
        // Two open fallen-off-the-bus incidents on one device, equal in last_seen and code,
        // differing only in variant: Xid 79 must fold into the same one every time, whatever
        // the hash order of the open incidents.
        let off_bus = fault("NVRM: GPU 0000:3b:00.0: GPU has fallen off the bus.");
        assert_eq!(off_bus.kind, FaultKind::NvidiaFallenOffBus);
        let mut other = off_bus.clone();
        other.variant = "fallen_off_bus_zz";
        let mut chosen = BTreeSet::new();
        for _ in 0..64 {
            let mut correlator = Correlator::default();
            correlator.observe("n1", None, Time::from_secs(10), &off_bus);
            correlator.observe("n1", None, Time::from_secs(10), &other);
            let folded = correlator.observe("n1", None, Time::from_secs(11), &xid(79, "3b"));
            assert!(folded.folded_into_other);
            chosen.insert(folded.incident.id);
        }
        assert_eq!(chosen.len(), 1, "{chosen:?}");
        assert!(chosen.iter().all(|id| id.ends_with("/2")), "the greater variant wins: {chosen:?}");
    }

    fn topology(text: &str) -> Topology {
        Topology::parse(text, "test").unwrap()
    }

    #[test]
    fn a_gpu_lost_after_a_pcie_error_joins_the_error() {
        let mut correlator = Correlator::default();
        let aer = fault(
            "pcieport 0000:00:01.0: AER: Uncorrectable (Fatal) error message received from 0000:01:00.0",
        );
        let first = correlator.observe("n1", None, Time::from_secs(100), &aer);
        let lost = correlator.observe(
            "n1",
            None,
            Time::from_secs(101),
            &fault("NVRM: GPU 0000:01:00.0: GPU has fallen off the bus."),
        );
        assert!(lost.folded_into_other);
        assert_eq!(lost.incident.id, first.incident.id);
        assert_eq!(lost.incident.kind, "pcie_aer");
        // The port's own "recovery failed" line names the port, which reported the error.
        let port = correlator.observe(
            "n1",
            None,
            Time::from_secs(102),
            &fault("pcieport 0000:00:01.0: AER: device recovery failed"),
        );
        assert_eq!(port.incident.id, first.incident.id);
        assert_eq!(port.incident.count, 3);
        assert_eq!(correlator.incidents_opened(), 1);
        // Long after the window, a lost GPU is its own incident.
        let later = correlator.observe("n1", None, Time::from_secs(200), &xid(79, "01"));
        assert!(later.is_new);
    }

    #[test]
    fn topology_joins_a_port_error_and_the_gpu_below_it() {
        let port_error =
            fault("pcieport 0000:00:03.0: AER: Multiple Uncorrected (Fatal) error received: 0000:00:03.0");
        let gpu_lost = xid(79, "03");
        let app_error = xid(13, "03");
        // Without the topology nothing says the GPU is below the port.
        let mut plain = Correlator::default();
        plain.observe("n1", None, Time::from_secs(1), &port_error);
        assert!(plain.observe("n1", None, Time::from_secs(2), &gpu_lost).is_new);

        let mut aware = Correlator::default().with_topology(topology("pci 0000:00:03.0 0000:03:00.0\n"));
        let root = aware.observe("n1", None, Time::from_secs(1), &port_error);
        let joined = aware.observe("n1", None, Time::from_secs(2), &gpu_lost);
        assert!(joined.folded_into_other);
        assert_eq!(joined.incident.id, root.incident.id);
        assert_eq!(joined.incident.pci_address.as_deref(), Some("0000:00:03.0"));
        // An application's own error below the port stays the application's.
        assert!(aware.observe("n1", None, Time::from_secs(3), &app_error).is_new);
        // A GPU on another port is not joined.
        assert!(aware.observe("n1", None, Time::from_secs(3), &xid(79, "04")).is_new);
    }

    #[test]
    fn nvlink_xids_join_the_nvswitch_that_links_the_gpu() {
        let sxid = fault("nvidia-nvswitch2: SXid (PCI:0000:c6:00.0): 20034, Fatal, Link 30 LTSSM Fault Up");
        let nvlink = fault(
            "NVRM: Xid (PCI:0000:1b:00): 149, NETIR_LINK_EVT Fatal XC0 i0 Link 00 (0x0 0x0 0x0 0x0 0x0 0x0)",
        );
        let mut correlator =
            Correlator::default().with_topology(topology("nvswitch 0000:c6:00.0 0000:1b:00.0\n"));
        let root = correlator.observe("n1", None, Time::from_secs(5), &sxid);
        let joined = correlator.observe("n1", None, Time::from_secs(6), &nvlink);
        assert_eq!(joined.incident.id, root.incident.id);
        assert_eq!(joined.incident.kind, "nvidia_sxid");
        let mut unlinked =
            Correlator::default().with_topology(topology("nvswitch 0000:c6:00.0 0000:43:00.0\n"));
        unlinked.observe("n1", None, Time::from_secs(5), &sxid);
        assert!(unlinked.observe("n1", None, Time::from_secs(6), &nvlink).is_new);
    }

    #[test]
    fn nic_link_flaps_are_one_network_incident() {
        let down = fault("mlx5_core 0000:08:00.0 ens1np0: Link down");
        let up = fault("mlx5_core 0000:08:00.0 ens1np0: Link up");
        let mut correlator = Correlator::default();
        let first = correlator.observe("n1", None, Time::from_secs(0), &down);
        assert_eq!(first.incident.health, Health::Degraded);
        let mut last = first.clone();
        for (i, change) in [&up, &down, &up].into_iter().enumerate() {
            last = correlator.observe("n1", None, Time::from_secs(10 * (i as i64 + 1)), change);
            assert_eq!(last.incident.id, first.incident.id);
        }
        assert_eq!(last.incident.count, u64::from(FLAP_CHANGES));
        assert_eq!(last.incident.health, Health::Unhealthy);
        assert_eq!(last.incident.attribution, Attribution::Network);
        assert!(last.incident.summary.contains("flapping"), "{}", last.incident.summary);
        // One down and up is not a flap; a lone link-up is its own healthy incident.
        let mut once = Correlator::default();
        once.observe("n1", None, Time::from_secs(0), &down);
        assert_eq!(once.observe("n1", None, Time::from_secs(5), &up).incident.health, Health::Degraded);
        let lone = Correlator::default().observe("n1", None, Time::from_secs(0), &up);
        assert_eq!(lone.incident.health, Health::Healthy);
    }

    #[test]
    fn nic_lines_that_name_only_an_interface_are_one_incident_per_interface() {
        let mut correlator = Correlator::default();
        let eth0 =
            correlator.observe("n1", None, Time::from_secs(0), &fault("e1000e: eth0 NIC Link is Down"));
        let eth1 =
            correlator.observe("n1", None, Time::from_secs(1), &fault("e1000e: eth1 NIC Link is Down"));
        assert!(eth0.is_new && eth1.is_new, "two interfaces, two incidents");
        assert_eq!(eth0.incident.attribution, Attribution::Network);
        assert_eq!(eth0.incident.pci_address, None, "no device named");
        let up = correlator.observe(
            "n1",
            None,
            Time::from_secs(5),
            &fault("e1000e: eth0 NIC Link is Up 1000 Mbps"),
        );
        assert_eq!(up.incident.id, eth0.incident.id, "the up joins its own interface's down");
    }

    #[test]
    fn a_storm_of_one_xid_is_one_incident() {
        let mut correlator = Correlator::default();
        let storm = xid(95, "3b");
        let first = correlator.observe("n1", Some("boot-a"), Time::from_secs(0), &storm);
        assert!(first.is_new);
        let mut last = first.clone();
        for i in 1..800_000_i64 {
            last = correlator.observe("n1", Some("boot-a"), Time::from_nanos(i * 10_000_000), &storm);
            assert!(!last.is_new);
        }
        assert_eq!(last.incident.id, first.incident.id);
        assert_eq!(last.incident.count, 800_000);
        assert_eq!(correlator.incidents_opened(), 1);
    }

    #[test]
    fn repeats_after_a_quiet_window_open_a_new_incident() {
        let mut correlator = Correlator::default();
        let f = xid(95, "3b");
        let a = correlator.observe("n1", None, Time::from_secs(0), &f);
        let b = correlator.observe("n1", None, Time::from_secs(11 * 60), &f);
        assert!(a.is_new && b.is_new);
        assert_ne!(a.incident.id, b.incident.id);
    }

    #[test]
    fn xid_45_folds_into_94_95_48_on_the_same_device() {
        for code in [94, 95, 48] {
            let mut correlator = Correlator::default();
            let main = correlator.observe("n1", None, Time::from_secs(100), &xid(code, "3b"));
            let teardown = correlator.observe("n1", None, Time::from_secs(101), &xid(45, "3b"));
            assert!(teardown.folded_into_other, "Xid {code}");
            assert!(!teardown.is_new);
            assert_eq!(teardown.incident.id, main.incident.id);
            assert_eq!(teardown.incident.code, Some(code));
            assert_eq!(teardown.incident.count, 2);
        }
    }

    #[test]
    fn xid_45_alone_or_elsewhere_is_its_own_application_incident() {
        let mut correlator = Correlator::default();
        correlator.observe("n1", None, Time::from_secs(0), &xid(95, "3b"));
        let other_device = correlator.observe("n1", None, Time::from_secs(1), &xid(45, "5e"));
        assert!(other_device.is_new && !other_device.folded_into_other);
        assert_eq!(other_device.incident.attribution, devheal_core::Attribution::Application);
        let too_late = correlator.observe("n1", None, Time::from_secs(120), &xid(45, "3b"));
        assert!(too_late.is_new && !too_late.folded_into_other);
    }

    #[test]
    fn xid_154_folds_into_its_cause_and_raises_the_action() {
        let mut correlator = Correlator::default();
        let cause = correlator.observe("n1", None, Time::from_secs(10), &xid(94, "01"));
        assert_eq!(cause.incident.action, devheal_core::RepairKind::RestartApp);
        let announce = fault(
            "NVRM: Xid (PCI:0000:01:00): 154, GPU recovery action changed from 0x0 (None) to 0x1 (GPU Reset Required)",
        );
        let folded = correlator.observe("n1", None, Time::from_secs(10), &announce);
        assert!(folded.folded_into_other);
        assert_eq!(folded.incident.id, cause.incident.id);
        assert_eq!(folded.incident.action, devheal_core::RepairKind::ResetDevice);
        assert_eq!(folded.incident.health, devheal_core::Health::Unhealthy);
        let teardown = correlator.observe("n1", None, Time::from_secs(11), &xid(45, "01"));
        assert_eq!(teardown.incident.id, cause.incident.id);
        assert_eq!(teardown.incident.count, 3);
        // A lone Xid 154 is its own incident.
        let lone = correlator.observe("n1", None, Time::from_secs(10), &fault(
            "NVRM: Xid (PCI:0000:02:00): 154, GPU recovery action changed from 0x0 (None) to 0x2 (Node Reboot Required)",
        ));
        assert!(lone.is_new);
        assert_eq!(lone.incident.action, devheal_core::RepairKind::RebootNode);
    }

    #[test]
    fn fallen_off_bus_line_joins_xid_79() {
        let mut correlator = Correlator::default();
        let xid79 = correlator.observe("n1", None, Time::from_secs(5), &xid(79, "3b"));
        let line = fault("NVRM: GPU 0000:3b:00.0: GPU has fallen off the bus.");
        let joined = correlator.observe("n1", None, Time::from_secs(5), &line);
        assert!(joined.folded_into_other);
        assert_eq!(joined.incident.id, xid79.incident.id);
    }

    #[test]
    fn a_new_boot_forgets_the_old_one() {
        let mut correlator = Correlator::default();
        let f = xid(95, "3b");
        let a = correlator.observe("n1", Some("boot-a"), Time::from_secs(0), &f);
        let b = correlator.observe("n1", Some("boot-b"), Time::from_secs(1), &f);
        assert!(b.is_new);
        assert_ne!(a.incident.id, b.incident.id);
        assert_eq!(b.incident.boot_id.as_deref(), Some("boot-b"));
    }

    #[test]
    fn nodes_and_devices_are_separate() {
        let mut correlator = Correlator::default();
        assert!(correlator.observe("n1", None, Time::ZERO, &xid(95, "3b")).is_new);
        assert!(correlator.observe("n2", None, Time::ZERO, &xid(95, "3b")).is_new);
        assert!(correlator.observe("n1", None, Time::ZERO, &xid(95, "5e")).is_new);
        assert!(correlator.observe("n1", None, Time::ZERO, &xid(94, "3b")).is_new);
        assert_eq!(correlator.incidents_opened(), 4);
    }

    #[test]
    fn prune_forgets_idle_incidents() {
        let mut correlator = Correlator::default();
        correlator.observe("n1", None, Time::ZERO, &xid(95, "3b"));
        correlator.prune(Time::from_secs(2 * 3600));
        assert_eq!(correlator.open_incidents("n1").count(), 0);
    }

    #[test]
    fn incident_ids_name_node_boot_device_and_code() {
        let mut correlator = Correlator::default();
        let obs = correlator.observe("gpu-7", Some("0f6ec3d4-a1b8"), Time::ZERO, &xid(79, "3b"));
        assert_eq!(obs.incident.id, "gpu-7/0f6ec3d4/0000:3b:00.0/nvidia_xid-79/1");
    }
}
