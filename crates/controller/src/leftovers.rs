//! Quarantines an earlier controller process left in the cluster and this one does not hold.
//!
//! The engine keeps its quarantines in memory. A new process (a restart, an upgrade, a new
//! leader) re-quarantines every device it sees Unhealthy (the actuator finds the taint already
//! there), but a device that recovered while no controller ran is Healthy when the new engine
//! first sees it: the engine never quarantined it, so it would never release it, and the node
//! taint the old process wrote would keep new pods off that node forever.
//!
//! [`Leftovers`] reads the quarantine taints back from the Node watch (pure: fed the same events
//! as the index) and, for a device that NodeDeviceHealth reports Healthy, that the engine does
//! not hold quarantined, and that has stayed so for the engine's probation, hands out one
//! `ReleaseDevice` — the same action, through the same actuator, as a release after probation.
//!
//! Guarantees:
//! - only taints whose key is the quarantine key of a device NodeDeviceHealth reports on that
//!   node are ever released (taints of other tools, and of devices no agent reports, stay);
//! - a device that is not Healthy, or that the engine holds quarantined, is never released here;
//! - one release per standing taint: it is handed out again only after the Node watch showed the
//!   taint gone and back, or after the controller gave that release up (it failed, its retries
//!   ran out, or a replica that lost the lease dropped it: [`Leftovers::retry`]).
//!
//! DeviceTaintRules the old process created are not read back yet (the controller does not
//! watch them); see docs/controller.md, "Restart safety".

use std::collections::{BTreeMap, BTreeSet};

use devheal_core::{Action, DeviceKey, Duration, FailureClass, PlannedAction, Time};
use devheal_k8s::actuator::{DEVICE_QUARANTINE_TAINT, node_quarantine_taint_key};
use k8s_openapi::api::core::v1::Node;
use kube::runtime::watcher;

/// Quarantine taints seen on nodes, and which of them this process released.
#[derive(Debug, Default)]
pub struct Leftovers {
    /// Quarantine taint keys on each node, as its watch last showed them.
    taints: BTreeMap<String, BTreeSet<String>>,
    /// Since when each device with a standing taint has been seen Healthy and not held.
    healthy_since: BTreeMap<DeviceKey, Time>,
    /// Taint keys a release was handed out for, by node.
    sent: BTreeMap<String, BTreeSet<String>>,
}

fn quarantine_taints(node: &Node) -> BTreeSet<String> {
    let prefix = format!("{DEVICE_QUARANTINE_TAINT}-");
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .map(|ts| ts.iter().filter(|t| t.key.starts_with(&prefix)).map(|t| t.key.clone()).collect())
        .unwrap_or_default()
}

impl Leftovers {
    pub fn new() -> Self {
        Self::default()
    }

    /// Follow the Node watch. Relists need no special care: a node's entry is replaced by each
    /// event for it, and a node deleted during a gap keeps an entry that can release nothing
    /// (no device of a deleted node is reported).
    pub fn observe(&mut self, event: &watcher::Event<Node>) {
        match event {
            watcher::Event::Apply(node) | watcher::Event::InitApply(node) => {
                let Some(name) = node.metadata.name.clone() else { return };
                let taints = quarantine_taints(node);
                if let Some(sent) = self.sent.get_mut(&name) {
                    sent.retain(|k| taints.contains(k));
                }
                // A taint that went away starts its device's probation over if it comes back.
                self.healthy_since
                    .retain(|d, _| d.node != name || taints.contains(&node_quarantine_taint_key(d)));
                if taints.is_empty() {
                    self.taints.remove(&name);
                } else {
                    self.taints.insert(name, taints);
                }
            }
            watcher::Event::Delete(node) => {
                if let Some(name) = &node.metadata.name {
                    self.taints.remove(name);
                    self.sent.remove(name);
                    self.healthy_since.retain(|d, _| d.node != *name);
                }
            }
            watcher::Event::Init | watcher::Event::InitDone => {}
        }
    }

    /// Number of nodes with a quarantine taint (for tests and metrics).
    pub fn tainted_nodes(&self) -> usize {
        self.taints.len()
    }

    /// The releases due now: `healthy(node)` lists the devices NodeDeviceHealth reports Healthy
    /// on a node, `held(device)` says whether the engine holds the device quarantined.
    pub fn due<'a, H, I, Q>(
        &mut self,
        now: Time,
        probation: Duration,
        healthy: H,
        held: Q,
    ) -> Vec<PlannedAction>
    where
        H: Fn(&str) -> I,
        I: Iterator<Item = &'a DeviceKey>,
        Q: Fn(&DeviceKey) -> bool,
    {
        let mut candidates: BTreeSet<DeviceKey> = BTreeSet::new();
        let mut out = Vec::new();
        for (node, keys) in &self.taints {
            for device in healthy(node) {
                let key = node_quarantine_taint_key(device);
                if !keys.contains(&key) || held(device) {
                    continue;
                }
                candidates.insert(device.clone());
                let since = *self.healthy_since.entry(device.clone()).or_insert(now);
                let sent = self.sent.entry(node.clone()).or_default();
                if now.since(since) < probation || sent.contains(&key) {
                    continue;
                }
                sent.insert(key);
                out.push(PlannedAction {
                    idempotency_key: format!("leftover-release/{device}/{}", now.as_nanos()),
                    action: Action::ReleaseDevice {
                        device: device.clone(),
                        reason: format!(
                            "a quarantine taint an earlier controller process wrote, on a device that has been \
                             Healthy for {}s and that this process does not hold",
                            probation.as_nanos() / 1_000_000_000
                        ),
                    },
                    class: FailureClass::None,
                    policy: None,
                });
            }
        }
        self.healthy_since.retain(|d, _| candidates.contains(d));
        out
    }

    /// A release handed out by [`Leftovers::due`] did not happen: offer it again.
    pub fn retry(&mut self, device: &DeviceKey) {
        if let Some(sent) = self.sent.get_mut(&device.node) {
            sent.remove(&node_quarantine_taint_key(device));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, taints: &[&str]) -> Node {
        let taints: Vec<_> = taints.iter().map(|k| json!({"key": k, "effect": "NoSchedule"})).collect();
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"taints": taints}})).unwrap()
    }

    fn dev(node: &str, id: &str) -> DeviceKey {
        DeviceKey::new(node, "nvidia.com/gpu", id)
    }

    const PROBATION: Duration = Duration::from_secs(60);

    #[test]
    fn a_healthy_device_whose_taint_nobody_holds_is_released_once_after_probation() {
        let d = dev("n1", "GPU-0");
        let other = "node.kubernetes.io/unreachable".to_string();
        let mut l = Leftovers::new();
        l.observe(&watcher::Event::InitApply(node("n1", &[&node_quarantine_taint_key(&d), &other])));
        let healthy = [d.clone()];
        let t0 = Time::from_secs(100);
        assert!(l.due(t0, PROBATION, |_| healthy.iter(), |_| false).is_empty(), "probation first");
        let due = l.due(t0 + PROBATION, PROBATION, |_| healthy.iter(), |_| false);
        assert_eq!(due.len(), 1);
        assert!(matches!(&due[0].action, Action::ReleaseDevice { device, .. } if *device == d));
        assert!(
            l.due(t0 + PROBATION + PROBATION, PROBATION, |_| healthy.iter(), |_| false).is_empty(),
            "once"
        );
        // The taint is gone and comes back (a new quarantine by someone): again after probation.
        l.observe(&watcher::Event::Apply(node("n1", &[&other])));
        l.observe(&watcher::Event::Apply(node("n1", &[&node_quarantine_taint_key(&d)])));
        let t1 = t0 + PROBATION + PROBATION + PROBATION;
        assert!(l.due(t1, PROBATION, |_| healthy.iter(), |_| false).is_empty());
        assert_eq!(l.due(t1 + PROBATION, PROBATION, |_| healthy.iter(), |_| false).len(), 1);
    }

    #[test]
    fn held_unreported_or_unhealthy_devices_and_foreign_taints_are_left_alone() {
        let d = dev("n1", "GPU-0");
        let unreported = dev("n1", "GPU-9");
        let mut l = Leftovers::new();
        l.observe(&watcher::Event::Apply(node(
            "n1",
            &[
                &node_quarantine_taint_key(&d),
                &node_quarantine_taint_key(&unreported),
                "devheal.io/unhealthy",
            ],
        )));
        let healthy = [d.clone()];
        let late = Time::from_secs(10_000);
        // Held by the engine: never.
        assert!(l.due(Time::from_secs(0), PROBATION, |_| healthy.iter(), |_| true).is_empty());
        assert!(l.due(late, PROBATION, |_| healthy.iter(), |_| true).is_empty());
        // Not reported Healthy (Unhealthy, or no agent reports it): never.
        assert!(l.due(late, PROBATION, |_| [].iter(), |_| false).is_empty());
        // Healthy and not held: probation restarts from when it was first seen so.
        assert!(l.due(late, PROBATION, |_| healthy.iter(), |_| false).is_empty());
        let due = l.due(late + PROBATION, PROBATION, |_| healthy.iter(), |_| false);
        assert_eq!(due.len(), 1, "only the reported device's taint: {due:?}");
        // A deleted node releases nothing.
        l.observe(&watcher::Event::Delete(node("n1", &[])));
        assert_eq!(l.tainted_nodes(), 0);
    }

    #[test]
    fn a_failed_release_is_offered_again() {
        let d = dev("n1", "GPU-0");
        let mut l = Leftovers::new();
        l.observe(&watcher::Event::Apply(node("n1", &[&node_quarantine_taint_key(&d)])));
        let healthy = [d.clone()];
        assert_eq!(l.due(Time::from_secs(0), Duration::ZERO, |_| healthy.iter(), |_| false).len(), 1);
        assert!(l.due(Time::from_secs(1), Duration::ZERO, |_| healthy.iter(), |_| false).is_empty());
        l.retry(&d);
        assert_eq!(l.due(Time::from_secs(2), Duration::ZERO, |_| healthy.iter(), |_| false).len(), 1);
    }
}
