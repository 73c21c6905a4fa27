//! Devices: the inventory of each node, health reports and kernel incidents as they arrive,
//! and what a device failing, degrading or recovering sets in motion (quarantine and repair,
//! the decisions for the pods bound to it, probation).

use std::collections::{BTreeSet, VecDeque};

use crate::action::{PlannedAction, RepairKind};
use crate::attribution::IncidentEvidence;
use crate::device::{Device, DeviceKey, Health, HealthReason, HealthSource};
use crate::incident::{Attribution, KernelIncident};
use crate::pod::{FailureClass, PodPhase};
use crate::time::{Duration, Time};

use super::Engine;
use super::nodes::NodeState;

/// Incidents kept per device as attribution evidence.
const INCIDENTS_PER_DEVICE: usize = 4;

/// How long a lone NVLink error (Xid 74) is held waiting for a second one or for an
/// interruption of a job on its device (NVSentinel's repeated-Xid rule uses the same 24 h).
pub(super) const NVLINK_HOLD: Duration = Duration::from_hours(24);

/// How long before a job interruption began a held NVLink error may have come to be paired with
/// it: a link failure that stops the job prints its Xid 74 as the job stalls, not hours before.
pub(super) const NVLINK_PAIRING: Duration = Duration::from_mins(10);

/// A lone NVLink error, not yet a failure of its device: NVIDIA's catalog sends Xid 74 to a
/// register-decode workflow (`WORKFLOW_NVLINK_ERR`), not to a reset, and notes it may be
/// sympathetic to a failing peer GPU; a link that retried and recovered prints it too.
/// Held, it is no evidence against the device (a verdict does not see it) and fails nothing.
#[derive(Clone, Debug)]
pub(super) struct HeldNvlink {
    pub(super) evidence: IncidentEvidence,
    pub(super) action: RepairKind,
    pub(super) reason: String,
    pub(super) at: Time,
}

/// Keep `evidence` among the device's recent incidents.
fn push_evidence(st: &mut DeviceState, evidence: IncidentEvidence) {
    st.incidents.push(evidence);
    if st.incidents.len() > INCIDENTS_PER_DEVICE {
        st.incidents.remove(0);
    }
}

/// A kernel incident that is an NVLink error (Xid 74) seen once.
fn lone_nvlink(inc: &KernelIncident) -> bool {
    inc.kind == "nvidia_xid" && inc.code == Some(74) && inc.count < 2
}

/// An agent's health report whose only reason is one NVLink error (Xid 74) from the kernel log,
/// seen once: the report path's twin of [`lone_nvlink`] (on a cluster the agent turns the line
/// into the device's health, and the controller sends the engine that health, not the incident).
fn lone_nvlink_report(reasons: &[HealthReason]) -> Option<&HealthReason> {
    match reasons {
        [r] if r.source == HealthSource::KernelLog && r.code == Some(74) && r.count < 2 => Some(r),
        _ => None,
    }
}

#[derive(Clone, Debug)]
pub(super) struct DeviceState {
    /// PCI address, lower-case, from the inventory.
    pub(super) pci: Option<String>,
    /// Uids of the pods bound to the device.
    pub(super) pods: Vec<String>,
    pub(super) health: Health,
    pub(super) since: Time,
    pub(super) reasons: Vec<HealthReason>,
    pub(super) incidents: Vec<IncidentEvidence>,
    pub(super) open_incident: Option<String>,
    pub(super) quarantined: bool,
    pub(super) probation_until: Option<Time>,
    /// Evidence from before this time is stale (last reset, recovery or reboot).
    pub(super) recovered_at: Time,
    pub(super) incident_times: VecDeque<Time>,
    /// When each recent Degraded episode began (its `since`).
    pub(super) degraded_episodes: VecDeque<Time>,
    /// A lone NVLink error waiting for confirmation ([`HeldNvlink`]).
    pub(super) held_nvlink: Option<HeldNvlink>,
}

impl DeviceState {
    /// Degraded on nothing but progress reports (a straggler, a baseline shift): no reason from
    /// a device source, no device incident.
    pub(super) fn progress_only(&self) -> bool {
        self.health == Health::Degraded
            && !self.reasons.is_empty()
            && self.reasons.iter().all(|r| r.source == HealthSource::Progress)
            && !self.incidents.iter().any(|i| {
                matches!(i.attribution, Attribution::Device | Attribution::Interconnect | Attribution::Host)
            })
    }

    /// A new device's state, with the history an earlier engine kept for it.
    fn restored(now: Time, restored: Option<(VecDeque<Time>, VecDeque<Time>)>) -> Self {
        let mut st = DeviceState::new(now);
        if let Some((incidents, episodes)) = restored {
            st.incident_times = incidents;
            st.degraded_episodes = episodes;
        }
        st
    }

    pub(super) fn new(now: Time) -> Self {
        DeviceState {
            pci: None,
            pods: Vec::new(),
            health: Health::Healthy,
            since: now,
            reasons: Vec::new(),
            incidents: Vec::new(),
            open_incident: None,
            quarantined: false,
            probation_until: None,
            recovered_at: Time(i64::MIN),
            incident_times: VecDeque::new(),
            degraded_episodes: VecDeque::new(),
            held_nvlink: None,
        }
    }
}

impl Engine {
    /// The devices of a node (a range of the ordered device map).
    pub(super) fn node_devices(&self, node: &str) -> impl Iterator<Item = (&DeviceKey, &DeviceState)> {
        self.devices.range(DeviceKey::new(node, "", "")..).take_while(move |(k, _)| k.node == node)
    }

    /// The device's state, created on first sight (with any history restored for it).
    pub(super) fn device_entry(&mut self, key: &DeviceKey, now: Time) -> &mut DeviceState {
        let restored = self.restored_for(key);
        self.devices.entry(key.clone()).or_insert_with(|| DeviceState::restored(now, restored))
    }

    /// History restored for a device not seen yet ([`super::durable`]).
    fn restored_for(&mut self, key: &DeviceKey) -> Option<(VecDeque<Time>, VecDeque<Time>)> {
        if self.devices.contains_key(key) { None } else { self.restored_history.remove(key) }
    }

    pub(super) fn node_device_keys(&self, node: &str) -> Vec<DeviceKey> {
        self.node_devices(node).map(|(k, _)| k.clone()).collect()
    }

    pub(super) fn on_devices(
        &mut self,
        node: String,
        devices: Vec<Device>,
        now: Time,
        out: &mut Vec<PlannedAction>,
    ) {
        self.nodes.entry(node.clone()).or_default();
        let listed: BTreeSet<&DeviceKey> = devices.iter().map(|d| &d.key).collect();
        let gone: Vec<DeviceKey> =
            self.node_devices(&node).filter(|(k, _)| !listed.contains(k)).map(|(k, _)| k.clone()).collect();
        // A device that left and a new one (another id: serial, UUID) at its PCI address: the
        // hardware was replaced. Gone now, or gone earlier and kept as vanished.
        let mut left_at: Vec<(DeviceKey, String)> = gone
            .iter()
            .filter_map(|k| Some((k.clone(), self.devices.get(k)?.pci.clone()?)))
            .chain(
                self.vanished
                    .iter()
                    .filter(|(k, _)| k.node == node && !listed.contains(k))
                    .filter_map(|(k, (_, st))| Some((k.clone(), st.pci.clone()?))),
            )
            .chain(
                self.departed
                    .iter()
                    .filter(|(k, _)| k.node == node && !listed.contains(k))
                    .map(|(k, pci)| (k.clone(), pci.clone())),
            )
            .collect();
        left_at.sort();
        left_at.dedup();
        let replaced: Vec<(DeviceKey, DeviceKey)> = devices
            .iter()
            .filter(|d| !self.devices.contains_key(&d.key) && !self.vanished.contains_key(&d.key))
            .filter_map(|d| {
                let pci = d.pci_address.as_deref()?.to_ascii_lowercase();
                let (old, _) = left_at.iter().find(|(_, p)| *p == pci)?;
                Some((old.clone(), d.key.clone()))
            })
            .collect();
        for k in gone {
            self.probation.remove(&k);
            self.pending_devices.remove(&k);
            let Some(mut st) = self.devices.remove(&k) else { continue };
            let requested =
                self.repairs.get(&k.node).is_some_and(|r| r.requests.contains_key(&Some(k.clone())));
            if requested && let Some(pci) = &st.pci {
                self.departed.insert(k.clone(), pci.clone());
            }
            if st.quarantined {
                // A device that is gone keeps no pod off its node: release its budget share as
                // the release path does, and remember it so that it comes back quarantined.
                self.unquarantine_node(&k.node);
                st.pods.clear();
                st.probation_until = None;
                self.vanished.insert(k, (now, st));
            }
        }
        for d in devices {
            self.departed.remove(&d.key);
            if !self.devices.contains_key(&d.key)
                && let Some((_, mut st)) = self.vanished.remove(&d.key)
            {
                // Back after falling off the bus: still quarantined (the quarantine was never
                // lifted) until it is Healthy through probation. It counts against the budget
                // again, even when the budget is full, since the quarantine is already in place.
                if st.health != Health::Unhealthy {
                    st.health = Health::Unknown;
                    st.since = now;
                }
                *self.quarantined_nodes.entry(d.key.node.clone()).or_default() += 1;
                if st.health == Health::Unhealthy {
                    self.unwell.insert(d.key.clone());
                }
                self.devices.insert(d.key.clone(), st);
            }
            let st = self.device_entry(&d.key, now);
            st.pci = d.pci_address.map(|p| p.to_ascii_lowercase());
        }
        for (old, new) in replaced {
            self.device_replaced(&old, &new, now, out);
        }
    }

    pub(super) fn on_device_health(
        &mut self,
        key: DeviceKey,
        health: Health,
        reasons: Vec<HealthReason>,
        now: Time,
        out: &mut Vec<PlannedAction>,
    ) {
        if !self.nodes.contains_key(&key.node) {
            self.nodes.insert(key.node.clone(), NodeState::default());
        }
        let restored = self.restored_for(&key);
        let st = self.devices.entry(key.clone()).or_insert_with(|| DeviceState::restored(now, restored));
        // Stale: every reason predates the device's last recovery.
        if !reasons.is_empty() && reasons.iter().all(|r| r.last_seen < st.recovered_at) {
            return;
        }
        let previous = st.health;
        if health == Health::Unhealthy
            && previous != Health::Unhealthy
            && st.open_incident.is_none()
            && let Some(r) = lone_nvlink_report(&reasons)
        {
            // Held as the incident path holds it: the device fails on a second Xid 74 (the
            // agent's count of the reason goes up) within NVLINK_HOLD, or when a job on it is
            // interrupted (`confirm_nvlink`). A republished report of the same line keeps the
            // hold as it is.
            if st.held_nvlink.as_ref().is_none_or(|h| now.since(h.at) > NVLINK_HOLD) {
                let evidence = IncidentEvidence {
                    id: format!("health/{key}/74/{}", r.first_seen.as_nanos()),
                    code: Some(74),
                    attribution: Attribution::Interconnect,
                    health: Health::Unhealthy,
                    summary: r.message.clone(),
                    last_seen: r.last_seen,
                };
                let reason = format!("{:?} 74: {}", r.source, r.message);
                st.held_nvlink =
                    Some(HeldNvlink { evidence, action: RepairKind::ResetDevice, reason, at: now });
                self.held_nvlink.insert(key);
            }
            return;
        }
        if health == Health::Unknown {
            // The detector lost sight: record it, change nothing else (no remediation, no release).
            st.health = Health::Unknown;
            st.since = now;
            return;
        }
        st.reasons = reasons;
        if health != previous {
            st.since = now;
        }
        st.health = health;
        if matches!(health, Health::Unhealthy | Health::Degraded) {
            self.unwell.insert(key.clone());
        }
        match health {
            Health::Unhealthy => {
                if st.open_incident.is_none() {
                    let code = st.reasons.iter().find_map(|r| r.code);
                    let incident = match code {
                        Some(c) => format!("health/{key}/{c}/{}", now.as_nanos()),
                        None => format!("health/{key}/{}", now.as_nanos()),
                    };
                    let summary = st.reasons.first().map(|r| r.message.clone()).unwrap_or_default();
                    let reason = format!(
                        "device reported Unhealthy{}",
                        if summary.is_empty() { String::new() } else { format!(": {summary}") }
                    );
                    self.device_failed(&key, incident, RepairKind::ResetDevice, reason, now, out);
                }
            }
            // Only a transition into Healthy is a recovery: a source that republishes its full
            // state (NodeDeviceHealth heartbeats) must not push probation out forever. A
            // quarantined device not yet in probation starts it on any Healthy report.
            Health::Healthy => {
                if previous != Health::Healthy || (st.quarantined && st.probation_until.is_none()) {
                    self.device_recovered(&key, now);
                }
            }
            Health::Degraded => self.device_degraded(&key, now, out),
            Health::Unknown => {}
        }
    }

    pub(super) fn on_incident(&mut self, inc: KernelIncident, now: Time, out: &mut Vec<PlannedAction>) {
        // Stale: from another boot of the node.
        let node_boot =
            self.nodes.get(&inc.node).and_then(|n| n.info.as_ref()).and_then(|i| i.boot_id.clone());
        if let (Some(current), Some(seen)) = (&node_boot, &inc.boot_id)
            && current != seen
        {
            return;
        }
        if self.seen_incidents.contains_key(&inc.id) {
            return;
        }
        let key = inc.pci_address.as_ref().and_then(|pci| {
            let pci = pci.to_ascii_lowercase();
            self.node_devices(&inc.node)
                .find(|(_, d)| d.pci.as_deref() == Some(pci.as_str()))
                .map(|(k, _)| k.clone())
        });
        let Some(key) = key else {
            if inc.pci_address.is_none() {
                self.seen_incidents.insert(inc.id.clone(), now);
                self.node_incident(inc, now, out);
            } else if inc.kind == "nvidia_sxid" && inc.health == Health::Unhealthy {
                // A fatal error of an NVSwitch (not in the GPU inventory) on the node: its GPUs'
                // held NVLink errors were links failing, not retries.
                self.seen_incidents.insert(inc.id.clone(), now);
                let held: Vec<DeviceKey> =
                    self.held_nvlink.iter().filter(|k| k.node == inc.node).cloned().collect();
                self.confirm_nvlink(&held, now, now, out);
            }
            // Otherwise a PCI address the inventory does not know: nothing to act on.
            return;
        };
        let Some(st) = self.devices.get_mut(&key) else { return };
        if inc.last_seen < st.recovered_at {
            return;
        }
        self.seen_incidents.insert(inc.id.clone(), now);
        let evidence = IncidentEvidence {
            id: inc.id.clone(),
            code: inc.code,
            attribution: inc.attribution,
            health: inc.health,
            summary: inc.summary.clone(),
            last_seen: inc.last_seen,
        };
        let reason = format!("{}: {}", inc.kind, inc.summary);
        if lone_nvlink(&inc) && inc.health == Health::Unhealthy && st.open_incident.is_none() {
            // The first NVLink error is held: the device fails on a second one within
            // NVLINK_HOLD, or when a job on it is interrupted (`confirm_nvlink`).
            match st.held_nvlink.take() {
                Some(held) if now.since(held.at) <= NVLINK_HOLD => push_evidence(st, held.evidence),
                _ => {
                    st.held_nvlink = Some(HeldNvlink { evidence, action: inc.action, reason, at: now });
                    self.held_nvlink.insert(key);
                    return;
                }
            }
            self.held_nvlink.remove(&key);
        }
        let Some(st) = self.devices.get_mut(&key) else { return };
        push_evidence(st, evidence);
        let device_fault =
            matches!(inc.attribution, Attribution::Device | Attribution::Interconnect | Attribution::Host);
        if !device_fault {
            return;
        }
        match inc.health {
            Health::Unhealthy => {
                if st.open_incident.is_some() {
                    return;
                }
                if st.health != Health::Unhealthy {
                    st.since = now;
                }
                st.health = Health::Unhealthy;
                self.unwell.insert(key.clone());
                self.device_failed(&key, inc.id, inc.action, reason, now, out);
            }
            Health::Degraded if st.health == Health::Healthy => {
                st.health = Health::Degraded;
                st.since = now;
                self.unwell.insert(key.clone());
                self.device_degraded(&key, now, out);
            }
            _ => {}
        }
    }

    /// A job on `keys` was interrupted at `began` (a pod failed on one of them, or its gang went
    /// silent): a held NVLink error on any of them seen from [`NVLINK_PAIRING`] before that on
    /// now fails its device as it would have at once without the hold. Older ones stay held.
    pub(super) fn confirm_nvlink<'k>(
        &mut self,
        keys: impl IntoIterator<Item = &'k DeviceKey>,
        began: Time,
        now: Time,
        out: &mut Vec<PlannedAction>,
    ) {
        let keys: Vec<DeviceKey> =
            keys.into_iter().filter(|k| self.held_nvlink.contains(*k)).cloned().collect();
        for key in keys {
            let Some(st) = self.devices.get_mut(&key) else { continue };
            if st.held_nvlink.as_ref().is_none_or(|h| h.at < began - NVLINK_PAIRING) {
                continue;
            }
            self.held_nvlink.remove(&key);
            let Some(held) = st.held_nvlink.take() else { continue };
            if st.open_incident.is_some() {
                continue;
            }
            let incident = held.evidence.id.clone();
            push_evidence(st, held.evidence);
            if st.health != Health::Unhealthy {
                st.since = now;
            }
            st.health = Health::Unhealthy;
            self.unwell.insert(key.clone());
            self.device_failed(&key, incident, held.action, held.reason, now, out);
        }
    }

    fn device_failed(
        &mut self,
        key: &DeviceKey,
        incident: String,
        repair: RepairKind,
        reason: String,
        now: Time,
        out: &mut Vec<PlannedAction>,
    ) {
        let s = &self.config.safety;
        let lemon_horizon = now - s.lemon_window;
        let Some(st) = self.devices.get_mut(key) else { return };
        st.open_incident = Some(incident.clone());
        st.probation_until = None;
        self.probation.remove(key);
        st.incident_times.push_back(now);
        while st.incident_times.front().is_some_and(|t| *t < lemon_horizon) {
            st.incident_times.pop_front();
        }
        self.record_failure(&key.node, now, out);
        // Keep new pods off the device first, then recover the workload, then repair.
        let repair = if self.is_lemon(key) { RepairKind::InspectHardware } else { repair };
        self.remediate_device(key, &incident, repair, &reason, now, out);
        let bound: Vec<String> = self.devices.get(key).map(|d| d.pods.clone()).unwrap_or_default();
        for uid in bound {
            let Some(p) = self.pods.get(&uid) else { continue };
            if matches!(p.info.phase, PodPhase::Succeeded | PodPhase::Failed) {
                continue;
            }
            if !self.config.safety.evict_pods_on_unhealthy_devices && p.gang.is_none() {
                continue;
            }
            let verdict = self.verdict(&p.info.to_pod_info(&uid), now);
            if verdict.class == FailureClass::DeviceFailure {
                self.decide_pod(&uid, None, verdict, Some(incident.clone()), now, out);
            }
        }
    }

    fn is_lemon(&self, key: &DeviceKey) -> bool {
        self.devices
            .get(key)
            .is_some_and(|d| d.incident_times.len() >= self.config.safety.lemon_incidents.max(1) as usize)
    }

    fn device_degraded(&mut self, key: &DeviceKey, now: Time, out: &mut Vec<PlannedAction>) {
        // Count the episode (once, by its start) and quarantine a device that keeps degrading.
        let s = &self.config.safety;
        let (limit, horizon) = (s.degraded_episodes_to_quarantine as usize, now - s.lemon_window);
        let mut repeat = None;
        if let Some(d) = self.devices.get_mut(key) {
            if d.degraded_episodes.back() != Some(&d.since) {
                d.degraded_episodes.push_back(d.since);
            }
            while d.degraded_episodes.front().is_some_and(|t| *t < horizon) {
                d.degraded_episodes.pop_front();
            }
            if limit > 0 && d.degraded_episodes.len() >= limit && !d.quarantined {
                repeat = Some((d.degraded_episodes.len(), d.since));
            }
        }
        if let Some((episodes, since)) = repeat {
            let days = self.config.safety.lemon_window.as_secs_f64() / 86_400.0;
            let reason = format!("Degraded {episodes} times within {days:.0} days");
            let incident = format!("degraded-repeat/{key}/{}", since.as_nanos());
            self.remediate_device(key, &incident, RepairKind::InspectHardware, &reason, now, out);
        }
        let bound: Vec<String> = self.devices.get(key).map(|d| d.pods.clone()).unwrap_or_default();
        for uid in bound {
            let Some(p) = self.pods.get(&uid) else { continue };
            if p.info.phase != PodPhase::Running {
                continue;
            }
            let verdict = self.verdict(&p.info.to_pod_info(&uid), now);
            if verdict.class == FailureClass::DeviceDegraded {
                // One decision per pod and episode, however many of its devices are Degraded
                // (decide_pod names the episode by its earliest Degraded device).
                self.decide_pod(&uid, None, verdict, None, now, out);
            }
        }
    }

    fn device_recovered(&mut self, key: &DeviceKey, now: Time) {
        let probation = self.config.safety.probation;
        let Some(st) = self.devices.get_mut(key) else { return };
        st.open_incident = None;
        st.recovered_at = now;
        st.incidents.clear();
        st.held_nvlink = None;
        self.held_nvlink.remove(key);
        self.pending_devices.remove(key);
        if st.quarantined {
            st.probation_until = Some(now + probation);
            self.probation.insert(key.clone());
        }
    }

    /// Degraded devices whose slow-down has now lasted long enough for a replacement.
    pub(super) fn mature_degraded(&mut self, now: Time, out: &mut Vec<PlannedAction>) {
        let (last, after) = (self.last_tick, self.config.safety.degraded_replace_after);
        self.last_tick = now;
        let matured: Vec<DeviceKey> = self
            .unwell
            .iter()
            .filter(|k| {
                self.devices.get(*k).is_some_and(|d| {
                    d.health == Health::Degraded && d.since + after > last && d.since + after <= now
                })
            })
            .cloned()
            .collect();
        for k in matured {
            self.device_degraded(&k, now, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::test_support::*;

    /// The third Degraded episode of one device within the lemon window quarantines it and asks
    /// for an inspection; the first two only count.
    #[test]
    fn a_device_degraded_three_times_is_quarantined() {
        let mut e = engine_with(1);
        let k = key("node-0", 3);
        for episode in 0..3 {
            let start = t(episode * 3600);
            let acts = degraded(&mut e, k.clone(), start);
            let quarantined = count(&acts, |a| matches!(a, Action::QuarantineDevice { .. }));
            if episode < 2 {
                assert_eq!(quarantined, 0, "episode {episode}: {acts:?}");
                assert!(healthy(&mut e, k.clone(), start + Duration::from_mins(10)).is_empty());
            } else {
                assert_eq!(quarantined, 1, "{acts:?}");
                assert!(acts.iter().any(|a| matches!(
                    &a.action,
                    Action::RequestRepair { kind: RepairKind::InspectHardware, .. }
                )));
            }
        }
        assert!(e.is_quarantined(&k));
    }

    #[test]
    fn a_device_that_falls_off_the_bus_frees_its_budget_and_returns_quarantined() {
        // 20 nodes: at most 2 quarantined at once.
        let mut e = engine_with(20);
        unhealthy(&mut e, key("node-0", 0), t(2));
        assert_eq!(e.safety_state(t(2)).quarantined_nodes, 1);
        // Xid 79: the device drops out of the node's inventory.
        e.handle(inventory("node-0", Some(0)), t(3));
        assert_eq!(e.safety_state(t(3)).quarantined_nodes, 0, "a vanished device holds no budget");
        let a = unhealthy(&mut e, key("node-1", 0), t(4));
        let b = unhealthy(&mut e, key("node-2", 0), t(5));
        assert_eq!(count(&a, |a| matches!(a, Action::QuarantineDevice { .. })), 1, "{a:#?}");
        assert_eq!(count(&b, |a| matches!(a, Action::QuarantineDevice { .. })), 1, "{b:#?}");
        // It comes back after a reset: still quarantined, counted again, and released only
        // after probation.
        e.handle(inventory("node-0", None), t(50));
        assert!(e.is_quarantined(&key("node-0", 0)));
        assert_eq!(e.safety_state(t(50)).quarantined_nodes, 3);
        assert!(healthy(&mut e, key("node-0", 0), t(60)).is_empty());
        assert!(e.handle(Input::Tick, t(300)).is_empty(), "still in probation");
        let acts = e.handle(Input::Tick, t(60 + 600));
        assert_eq!(count(&acts, |a| matches!(a, Action::ReleaseDevice { .. })), 1, "{acts:#?}");
        assert!(!e.is_quarantined(&key("node-0", 0)));
        assert_eq!(e.safety_state(t(660)).quarantined_nodes, 2);
    }

    #[test]
    fn a_vanished_device_that_never_returns_is_forgotten() {
        let mut e = engine_with(20);
        unhealthy(&mut e, key("node-0", 0), t(2));
        e.handle(inventory("node-0", Some(0)), t(3));
        assert_eq!(e.vanished.len(), 1);
        e.handle(Input::Tick, t(3) + ISSUED_MEMORY + Duration::from_hours(2));
        assert!(e.vanished.is_empty());
    }

    #[test]
    fn unknown_health_does_nothing() {
        let mut e = engine_with(10);
        e.handle(Input::PodUpsert(gang_pod(0, "node-0")), t(1));
        let acts = e.handle(
            Input::DeviceHealth { device: key("node-0", 0), health: Health::Unknown, reasons: vec![] },
            t(2),
        );
        assert!(acts.is_empty());
        let acts = e.handle(Input::PodUpsert(failed(gang_pod(0, "node-0"), 1)), t(3));
        assert!(acts.is_empty(), "{acts:#?}");
    }

    #[test]
    fn kernel_incident_by_pci_address_and_stale_boot() {
        let mut e = engine_with(10);
        e.handle(Input::PodUpsert(gang_pod(0, "node-0")), t(1));
        let mut inc = KernelIncident {
            id: "node-0/b0/0000:01:00.0/79/1".into(),
            node: "node-0".into(),
            boot_id: Some("b0".into()),
            pci_address: Some("0000:01:00.0".into()),
            kind: "nvidia_xid".into(),
            code: Some(79),
            attribution: Attribution::Device,
            health: Health::Unhealthy,
            action: RepairKind::RebootNode,
            first_seen: t(2),
            last_seen: t(2),
            count: 1,
            summary: "GPU has fallen off the bus".into(),
        };
        assert!(e.handle(Input::KernelIncident(inc.clone()), t(2)).is_empty(), "earlier boot is stale");
        inc.boot_id = Some("b1".into());
        inc.id = "node-0/b1/0000:01:00.0/79/1".into();
        let acts = e.handle(Input::KernelIncident(inc.clone()), t(3));
        assert_eq!(count(&acts, |a| matches!(a, Action::RestartGang { .. })), 1, "{acts:#?}");
        assert_eq!(
            count(&acts, |a| matches!(a, Action::RequestRepair { kind: RepairKind::RebootNode, .. })),
            1
        );
        assert!(e.handle(Input::KernelIncident(inc), t(4)).is_empty(), "replayed incident");
    }

    /// Xid 74 (NVLink error) on node-0's GPU 0 at `at`, the `n`th on that device.
    fn nvlink(n: u32, at: i64) -> Input {
        Input::KernelIncident(KernelIncident {
            id: format!("node-0/b1/0000:01:00.0/74/{n}"),
            node: "node-0".into(),
            boot_id: Some("b1".into()),
            pci_address: Some("0000:01:00.0".into()),
            kind: "nvidia_xid".into(),
            code: Some(74),
            attribution: Attribution::Interconnect,
            health: Health::Unhealthy,
            action: RepairKind::ResetDevice,
            first_seen: t(at),
            last_seen: t(at),
            count: 1,
            summary: "NVLink error (may be sympathetic to a failing peer GPU)".into(),
        })
    }

    /// A lone Xid 74 fails nothing: no quarantine, no restart, and a running pod on the device
    /// is not judged failing. The device fails, once, on a second Xid 74 within 24 h, on a fatal
    /// SXid of the node's NVSwitch within 10 minutes, or when a job on it is interrupted within
    /// 10 minutes (its pod fails, its gang goes silent); an interruption an hour later is not
    /// paired with it, and a second one after 24 h is again a lone one.
    #[test]
    fn a_lone_nvlink_error_is_held_until_repeated_or_a_job_is_interrupted() {
        let quarantines =
            |acts: &[PlannedAction]| count(acts, |a| matches!(a, Action::QuarantineDevice { .. }));
        let restarts = |acts: &[PlannedAction]| count(acts, |a| matches!(a, Action::RestartGang { .. }));
        let fresh = || {
            let mut e = engine_with(2);
            e.handle(Input::PodUpsert(gang_pod(0, "node-0")), t(1));
            e.handle(Input::PodUpsert(gang_pod(1, "node-1")), t(1));
            assert!(e.handle(nvlink(1, 10), t(10)).is_empty(), "a lone Xid 74 fails nothing");
            let acts = e.handle(Input::PodUpsert(gang_pod(0, "node-0")), t(20));
            assert!(acts.is_empty(), "a running pod on it is not failing: {acts:#?}");
            assert_eq!(e.verdict(&gang_pod(0, "node-0"), t(20)).class, FailureClass::None);
            e
        };
        // Repeated within 24 h.
        let mut e = fresh();
        let acts = e.handle(nvlink(2, 3600), t(3600));
        assert_eq!((quarantines(&acts), restarts(&acts)), (1, 1), "{acts:#?}");
        assert!(e.handle(nvlink(3, 3700), t(3700)).is_empty(), "the device already failed");
        // A fatal SXid of the node's switch.
        let mut e = fresh();
        let sxid = |node: &str, at: i64| {
            Input::KernelIncident(KernelIncident {
                id: format!("{node}/b1/0000:86:00.0/20034/1"),
                node: node.into(),
                boot_id: Some("b1".into()),
                pci_address: Some("0000:86:00.0".into()),
                kind: "nvidia_sxid".into(),
                code: Some(20034),
                attribution: Attribution::Interconnect,
                health: Health::Unhealthy,
                action: RepairKind::ResetDevice,
                first_seen: t(at),
                last_seen: t(at),
                count: 1,
                summary: "fatal NVSwitch error".into(),
            })
        };
        assert!(e.handle(sxid("node-1", 11), t(11)).is_empty(), "another node's switch");
        let acts = e.handle(sxid("node-0", 12), t(12));
        assert_eq!((quarantines(&acts), restarts(&acts)), (1, 1), "{acts:#?}");
        // Its pod fails.
        let mut e = fresh();
        let acts = e.handle(Input::PodUpsert(failed(gang_pod(0, "node-0"), 1)), t(60));
        assert_eq!((quarantines(&acts), restarts(&acts)), (1, 1), "{acts:#?}");
        // Its gang hangs (a member on another node reported hung).
        let mut e = fresh();
        let acts = hung(&mut e, "uid-1", t(30), t(200));
        assert_eq!((quarantines(&acts), restarts(&acts)), (1, 1), "{acts:#?}");
        // Its pod fails an hour later: another failure, not the NVLink error's.
        let mut e = fresh();
        let acts = e.handle(Input::PodUpsert(failed(gang_pod(0, "node-0"), 1)), t(3610));
        assert_eq!(quarantines(&acts), 0, "{acts:#?}");
        // Its gang went silent an hour later.
        let mut e = fresh();
        let acts = hung(&mut e, "uid-1", t(3610), t(3700));
        assert_eq!((quarantines(&acts), restarts(&acts)), (0, 1), "{acts:#?}");
        // A second one after 24 h is held again.
        let mut e = fresh();
        let day = 24 * 3600;
        assert!(e.handle(nvlink(2, 11 + day), t(11 + day)).is_empty());
        let acts = e.handle(nvlink(3, 12 + day), t(12 + day));
        assert_eq!(quarantines(&acts), 1, "the third, a second within 24 h of the second: {acts:#?}");
    }

    /// On a cluster the agent publishes an Xid 74 as the device's health (reason `KernelLog` 74,
    /// counted), not as an incident: the engine holds it the same way. A republished report of
    /// the same line keeps the hold; the agent counting a second line fails the device, and so
    /// does a pod on it failing.
    #[test]
    fn an_agent_report_of_a_lone_nvlink_error_is_held_like_the_incident() {
        let quarantines =
            |acts: &[PlannedAction]| count(acts, |a| matches!(a, Action::QuarantineDevice { .. }));
        let report = |count: u64, at: i64| Input::DeviceHealth {
            device: key("node-0", 0),
            health: Health::Unhealthy,
            reasons: vec![HealthReason {
                source: HealthSource::KernelLog,
                code: Some(74),
                message: "Xid 74 (NVLINK_ERROR) on 0000:01:00.0".into(),
                first_seen: t(10),
                last_seen: t(at),
                count,
            }],
        };
        let fresh = || {
            let mut e = engine_with(2);
            e.handle(Input::PodUpsert(gang_pod(0, "node-0")), t(1));
            e.handle(Input::PodUpsert(gang_pod(1, "node-1")), t(1));
            assert!(e.handle(report(1, 10), t(10)).is_empty(), "a lone Xid 74 fails nothing");
            assert!(e.handle(report(1, 10), t(40)).is_empty(), "republished: still held");
            assert_ne!(e.device_health(&key("node-0", 0)), Some(Health::Unhealthy));
            e
        };
        let mut e = fresh();
        let acts = e.handle(report(2, 600), t(600));
        assert_eq!(quarantines(&acts), 1, "a second line: {acts:#?}");
        let mut e = fresh();
        let acts = e.handle(Input::PodUpsert(failed(gang_pod(0, "node-0"), 1)), t(60));
        assert_eq!(quarantines(&acts), 1, "its pod failed: {acts:#?}");
        // Any other reason beside it is no lone NVLink error.
        let mut e = engine_with(1);
        let mut both = report(1, 10);
        if let Input::DeviceHealth { reasons, .. } = &mut both {
            reasons.push(HealthReason { code: Some(79), ..reasons[0].clone() });
        }
        assert_eq!(quarantines(&e.handle(both, t(10))), 1);
    }

    #[test]
    fn application_xid_incident_takes_no_device_action() {
        let mut e = engine_with(10);
        e.handle(Input::PodUpsert(gang_pod(0, "node-0")), t(1));
        let inc = KernelIncident {
            id: "x13".into(),
            node: "node-0".into(),
            boot_id: Some("b1".into()),
            pci_address: Some("0000:01:00.0".into()),
            kind: "nvidia_xid".into(),
            code: Some(13),
            attribution: Attribution::Application,
            health: Health::Healthy,
            action: RepairKind::RestartApp,
            first_seen: t(2),
            last_seen: t(2),
            count: 1,
            summary: "Graphics Engine Exception".into(),
        };
        assert!(e.handle(Input::KernelIncident(inc), t(2)).is_empty());
        let acts = e.handle(Input::PodUpsert(failed(gang_pod(0, "node-0"), 134)), t(3));
        assert!(acts.is_empty(), "{acts:#?}");
        assert_eq!(e.verdict(&failed(gang_pod(0, "node-0"), 134), t(3)).class, FailureClass::Application);
    }

    #[test]
    fn repeat_offender_escalates_to_inspection() {
        let mut e = engine_with(4);
        let mut last = Vec::new();
        for round in 0..3 {
            let base = round * 1000;
            last = unhealthy(&mut e, key("node-0", 0), t(base + 1));
            e.handle(
                Input::DeviceHealth { device: key("node-0", 0), health: Health::Healthy, reasons: vec![] },
                t(base + 2),
            );
        }
        assert_eq!(
            count(&last, |a| matches!(a, Action::RequestRepair { kind: RepairKind::InspectHardware, .. })),
            1,
            "{last:#?}"
        );
    }
}
