//! Quarantines an earlier controller process left in the cluster and this one does not hold.
//!
//! The engine keeps its quarantines in memory. A new process (a restart, an upgrade, a new
//! leader) re-quarantines every device it sees Unhealthy (the actuator finds the taint or the
//! rule already there), but a device that recovered while no controller ran is Healthy when the
//! new engine first sees it: the engine never quarantined it, so it would never release it, and
//! what the old process wrote would keep new pods off that node, or that device, forever.
//!
//! [`Leftovers`] reads both kinds of quarantine back (pure: fed the same watch events as the
//! index):
//! - the per-device node taints (`devheal.io/device-quarantine-<hash>`), from the Node watch;
//! - the DRA DeviceTaintRules devheal created (labelled `app.kubernetes.io/managed-by=devheal`),
//!   from their own watch where the cluster serves them. A rule is tied to its node by its
//!   `devheal.io/device` annotation (`<node>/<resource>/<id>`: node names hold no `/`), and to
//!   its device by its name, which [`device_taint_rule_name`] derives from the device.
//!
//! For a device that NodeDeviceHealth reports Healthy, that the engine does not hold
//! quarantined, and that has stayed so for the engine's probation, it hands out one
//! `ReleaseDevice`: the same action, through the same actuator, as a release after probation
//! (the actuator deletes the rule of a DRA device where rules are served, else lifts the taint).
//!
//! Guarantees:
//! - only a taint whose key, or a rule whose name, is the quarantine of a device
//!   NodeDeviceHealth reports on that node is ever released (taints and rules of other tools,
//!   and of devices no agent reports, stay);
//! - a device that is not Healthy, or that the engine holds quarantined, is never released here;
//! - one release per standing quarantine: it is handed out again only after the watch showed it
//!   gone and back, or after the controller gave that release up (it failed, its retries ran
//!   out, or a replica that lost the lease dropped it: [`Leftovers::retry`]);
//! - bounded: it holds what the watches show of devheal's own marks and nothing else (a relist
//!   drops what it no longer shows).

use std::collections::{BTreeMap, BTreeSet};

use devheal_core::{Action, DeviceKey, Duration, FailureClass, PlannedAction, Time};
use devheal_k8s::actuator::{DEVICE_QUARANTINE_TAINT, device_taint_rule_name, node_quarantine_taint_key};
use k8s_openapi::api::core::v1::Node;
use kube::api::DynamicObject;
use kube::runtime::watcher;

pub use devheal_k8s::actuator::RULE_DEVICE_ANNOTATION;

/// One quarantine devheal wrote, as a watch shows it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Mark {
    /// A node taint, by key.
    Taint(String),
    /// A DeviceTaintRule, by name.
    Rule(String),
}

/// Quarantine marks seen in the cluster, and which of them this process released.
#[derive(Debug, Default)]
pub struct Leftovers {
    /// Marks standing on each node, as the watches last showed them.
    marks: BTreeMap<String, BTreeSet<Mark>>,
    /// The node of each rule seen (to forget a rule on its deletion).
    rule_nodes: BTreeMap<String, String>,
    /// Rules seen during a relist of rules in progress (`Init` … `InitDone`).
    relisting: Option<BTreeMap<String, String>>,
    /// Since when each device with a standing mark has been seen Healthy and not held.
    healthy_since: BTreeMap<DeviceKey, Time>,
    /// Marks a release was handed out for, by node.
    sent: BTreeMap<String, BTreeSet<Mark>>,
}

fn quarantine_taints(node: &Node) -> BTreeSet<Mark> {
    let prefix = format!("{DEVICE_QUARANTINE_TAINT}-");
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .map(|ts| {
            ts.iter().filter(|t| t.key.starts_with(&prefix)).map(|t| Mark::Taint(t.key.clone())).collect()
        })
        .unwrap_or_default()
}

/// A rule's name and the node its annotation names; `None` for a rule devheal cannot place
/// (no name, no annotation, or an annotation without a node).
fn rule_and_node(rule: &DynamicObject) -> Option<(String, String)> {
    let name = rule.metadata.name.clone()?;
    let device = rule.metadata.annotations.as_ref()?.get(RULE_DEVICE_ANNOTATION)?;
    let node = device.split('/').next().filter(|n| !n.is_empty())?;
    Some((name, node.to_string()))
}

/// The marks a device's quarantine can leave.
fn marks_of(device: &DeviceKey) -> [Mark; 2] {
    [Mark::Taint(node_quarantine_taint_key(device)), Mark::Rule(device_taint_rule_name(device))]
}

impl Leftovers {
    pub fn new() -> Self {
        Self::default()
    }

    fn stands(&self, device: &DeviceKey) -> bool {
        self.marks.get(&device.node).is_some_and(|m| marks_of(device).iter().any(|k| m.contains(k)))
    }

    /// After the marks of `node` changed: forget releases and probations of marks now gone.
    fn settle(&mut self, node: &str) {
        let marks = self.marks.get(node).cloned().unwrap_or_default();
        if let Some(sent) = self.sent.get_mut(node) {
            sent.retain(|k| marks.contains(k));
            if sent.is_empty() {
                self.sent.remove(node);
            }
        }
        // A mark that went away starts its device's probation over if it comes back.
        let gone: Vec<DeviceKey> =
            self.healthy_since.keys().filter(|d| d.node == node && !self.stands(d)).cloned().collect();
        for d in gone {
            self.healthy_since.remove(&d);
        }
    }

    /// Replace the marks of one kind on `node`.
    fn set_marks(&mut self, node: &str, keep: impl Fn(&Mark) -> bool, add: BTreeSet<Mark>) {
        let mut marks = self.marks.remove(node).unwrap_or_default();
        marks.retain(keep);
        marks.extend(add);
        if !marks.is_empty() {
            self.marks.insert(node.to_string(), marks);
        }
        self.settle(node);
    }

    /// Follow the Node watch. Relists need no special care: a node's taints are replaced by each
    /// event for it, and a node deleted during a gap keeps marks that can release nothing (no
    /// device of a deleted node is reported).
    pub fn observe(&mut self, event: &watcher::Event<Node>) {
        match event {
            watcher::Event::Apply(node) | watcher::Event::InitApply(node) => {
                let Some(name) = node.metadata.name.as_deref() else { return };
                self.set_marks(name, |m| matches!(m, Mark::Rule(_)), quarantine_taints(node));
            }
            watcher::Event::Delete(node) => {
                if let Some(name) = node.metadata.name.as_deref() {
                    self.set_marks(name, |m| matches!(m, Mark::Rule(_)), BTreeSet::new());
                }
            }
            watcher::Event::Init | watcher::Event::InitDone => {}
        }
    }

    fn add_rule(&mut self, rule: String, node: String) {
        if let Some(old) = self.rule_nodes.insert(rule.clone(), node.clone())
            && old != node
        {
            self.remove_rule_mark(&old, &rule);
        }
        self.marks.entry(node.clone()).or_default().insert(Mark::Rule(rule));
        self.settle(&node);
    }

    fn remove_rule_mark(&mut self, node: &str, rule: &str) {
        let gone = Mark::Rule(rule.to_string());
        self.set_marks(node, |m| *m != gone, BTreeSet::new());
    }

    fn remove_rule(&mut self, rule: &str) {
        if let Some(node) = self.rule_nodes.remove(rule) {
            self.remove_rule_mark(&node, rule);
        }
    }

    /// Follow the watch of devheal's DeviceTaintRules. A relist replaces what was known: a rule
    /// deleted during a gap in the watch is forgotten at `InitDone`.
    pub fn observe_rule(&mut self, event: &watcher::Event<DynamicObject>) {
        match event {
            watcher::Event::Init => self.relisting = Some(BTreeMap::new()),
            watcher::Event::InitApply(rule) => {
                if let (Some(seen), Some((name, node))) = (self.relisting.as_mut(), rule_and_node(rule)) {
                    seen.insert(name, node);
                }
            }
            watcher::Event::InitDone => {
                let Some(seen) = self.relisting.take() else { return };
                let vanished: Vec<String> =
                    self.rule_nodes.keys().filter(|r| !seen.contains_key(*r)).cloned().collect();
                for rule in vanished {
                    self.remove_rule(&rule);
                }
                for (rule, node) in seen {
                    self.add_rule(rule, node);
                }
            }
            watcher::Event::Apply(rule) => match rule_and_node(rule) {
                Some((name, node)) => self.add_rule(name, node),
                None => {
                    if let Some(name) = &rule.metadata.name {
                        self.remove_rule(name);
                    }
                }
            },
            watcher::Event::Delete(rule) => {
                if let Some(name) = &rule.metadata.name {
                    self.remove_rule(name);
                }
            }
        }
    }

    /// Number of nodes with a quarantine mark (for tests and metrics).
    pub fn tainted_nodes(&self) -> usize {
        self.marks.len()
    }

    /// Number of devheal DeviceTaintRules known.
    pub fn rules(&self) -> usize {
        self.rule_nodes.len()
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
        for (node, marks) in &self.marks {
            for device in healthy(node) {
                let standing: Vec<Mark> =
                    marks_of(device).into_iter().filter(|m| marks.contains(m)).collect();
                if standing.is_empty() || held(device) {
                    continue;
                }
                candidates.insert(device.clone());
                let since = *self.healthy_since.entry(device.clone()).or_insert(now);
                let sent = self.sent.entry(node.clone()).or_default();
                if now.since(since) < probation || standing.iter().all(|m| sent.contains(m)) {
                    continue;
                }
                sent.extend(standing);
                out.push(PlannedAction {
                    idempotency_key: format!("leftover-release/{device}/{}", now.as_nanos()),
                    action: Action::ReleaseDevice {
                        device: device.clone(),
                        reason: format!(
                            "a quarantine an earlier controller process wrote, on a device that has been \
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
        self.sent.retain(|_, s| !s.is_empty());
        out
    }

    /// A release handed out by [`Leftovers::due`] did not happen: offer it again.
    pub fn retry(&mut self, device: &DeviceKey) {
        if let Some(sent) = self.sent.get_mut(&device.node) {
            for m in marks_of(device) {
                sent.remove(&m);
            }
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
    fn rule(d: &DeviceKey, annotated: bool) -> DynamicObject {
        let mut meta =
            json!({"name": device_taint_rule_name(d), "labels": {"app.kubernetes.io/managed-by": "devheal"}});
        if annotated {
            meta["annotations"] = json!({RULE_DEVICE_ANNOTATION: d.to_string()});
        }
        serde_json::from_value(json!({
            "apiVersion": "resource.k8s.io/v1", "kind": "DeviceTaintRule", "metadata": meta,
            "spec": {"taint": {"key": DEVICE_QUARANTINE_TAINT, "effect": "NoSchedule"}},
        }))
        .unwrap()
    }

    fn dra(node: &str, name: &str) -> DeviceKey {
        DeviceKey::new(node, "gpu.example.com", format!("gpu.example.com/pool-{node}/{name}"))
    }

    #[test]
    fn a_device_taint_rule_an_earlier_process_wrote_is_released_once_its_device_is_healthy() {
        let d = dra("n1", "dev-0");
        let held_elsewhere = dra("n1", "dev-1");
        let mut l = Leftovers::new();
        l.observe_rule(&watcher::Event::Init);
        l.observe_rule(&watcher::Event::InitApply(rule(&d, true)));
        l.observe_rule(&watcher::Event::InitApply(rule(&held_elsewhere, true)));
        l.observe_rule(&watcher::Event::InitDone);
        assert_eq!(l.rules(), 2);
        // A Node event for n1 (no taints) must not forget the rules on n1.
        l.observe(&watcher::Event::Apply(node("n1", &[])));
        let healthy = [d.clone(), held_elsewhere.clone()];
        let held = |x: &DeviceKey| *x == held_elsewhere;
        let t0 = Time::from_secs(5);
        assert!(l.due(t0, PROBATION, |_| healthy.iter(), held).is_empty(), "probation first");
        let due = l.due(t0 + PROBATION, PROBATION, |_| healthy.iter(), held);
        assert_eq!(due.len(), 1, "{due:?}");
        assert!(matches!(&due[0].action, Action::ReleaseDevice { device, .. } if *device == d));
        assert!(l.due(t0 + PROBATION + PROBATION, PROBATION, |_| healthy.iter(), held).is_empty(), "once");
        // The release failed: offered again.
        l.retry(&d);
        assert_eq!(
            l.due(t0 + PROBATION + PROBATION + PROBATION, PROBATION, |_| healthy.iter(), held).len(),
            1
        );
        // Deleted: nothing more, and the node holds only the other rule.
        l.observe_rule(&watcher::Event::Delete(rule(&d, true)));
        assert_eq!(l.rules(), 1);
        l.retry(&d);
        assert!(
            l.due(t0 + PROBATION + PROBATION + PROBATION + PROBATION, PROBATION, |_| healthy.iter(), held)
                .is_empty()
        );
        // Re-created (a new quarantine): its own probation, then released again.
        l.observe_rule(&watcher::Event::Apply(rule(&d, true)));
        let t1 = t0 + PROBATION + PROBATION + PROBATION + PROBATION + PROBATION;
        assert!(l.due(t1, PROBATION, |_| healthy.iter(), held).is_empty());
        assert_eq!(l.due(t1 + PROBATION, PROBATION, |_| healthy.iter(), held).len(), 1);
    }

    #[test]
    fn a_relist_forgets_rules_deleted_during_the_gap_and_unplaceable_rules_are_ignored() {
        let d = dra("n1", "dev-0");
        let e = dra("n2", "dev-0");
        let mut l = Leftovers::new();
        l.observe_rule(&watcher::Event::Apply(rule(&d, true)));
        l.observe_rule(&watcher::Event::Apply(rule(&e, true)));
        assert_eq!((l.rules(), l.tainted_nodes()), (2, 2));
        // The watch broke; the relist shows only e's rule.
        l.observe_rule(&watcher::Event::Init);
        l.observe_rule(&watcher::Event::InitApply(rule(&e, true)));
        l.observe_rule(&watcher::Event::InitDone);
        assert_eq!((l.rules(), l.tainted_nodes()), (1, 1));
        let healthy = [d.clone()];
        assert!(l.due(Time::from_secs(0), Duration::ZERO, |_| healthy.iter(), |_| false).is_empty());
        // A rule without the device annotation cannot be tied to a node: never released.
        let mut l = Leftovers::new();
        l.observe_rule(&watcher::Event::Apply(rule(&d, false)));
        assert_eq!(l.rules(), 0);
        assert!(l.due(Time::from_secs(0), Duration::ZERO, |_| healthy.iter(), |_| false).is_empty());
        // A rule naming another device of the node is not this device's quarantine.
        l.observe_rule(&watcher::Event::Apply(rule(&dra("n1", "dev-7"), true)));
        assert!(l.due(Time::from_secs(0), Duration::ZERO, |_| healthy.iter(), |_| false).is_empty());
    }
}
