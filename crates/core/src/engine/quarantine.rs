//! Quarantine: devices (DRA DeviceTaintRule or node taint) and cordoned nodes, within the
//! budget of nodes quarantined at once, with the repairs they call for; and their end, after
//! probation.

use crate::action::{Action, PlannedAction, RepairKind};
use crate::device::{DeviceKey, Health};
use crate::pod::FailureClass;
use crate::time::Time;

use super::Engine;

impl Engine {
    /// One quarantine (device or cordon) on `node` ended: release its share of the budget.
    pub(super) fn unquarantine_node(&mut self, node: &str) {
        if let Some(c) = self.quarantined_nodes.get_mut(node) {
            *c = c.saturating_sub(1);
            if *c == 0 {
                self.quarantined_nodes.remove(node);
            }
        }
    }

    pub(super) fn quarantine_node_limit(&self) -> usize {
        let s = &self.config.safety;
        let fleet = self.nodes.len().max(1) as f64;
        let by_percent = ((s.max_quarantined_nodes_percent / 100.0) * fleet).floor().max(1.0) as usize;
        by_percent.min(s.max_quarantined_nodes as usize)
    }

    pub(super) fn cordon(
        &mut self,
        node: &str,
        incident: &str,
        reason: &str,
        now: Time,
        out: &mut Vec<PlannedAction>,
    ) {
        let already = self.nodes.get(node).is_some_and(|n| n.cordoned);
        if already {
            return;
        }
        if !self.quarantined_nodes.contains_key(node)
            && self.quarantined_nodes.len() >= self.quarantine_node_limit()
        {
            let key = format!("budget/cordon/{node}/{incident}");
            let msg = format!(
                "not cordoning {node}: {} nodes already quarantined (limit {})",
                self.quarantined_nodes.len(),
                self.quarantine_node_limit()
            );
            self.report(out, key, "QuarantineBudgetExhausted", msg, now);
            return;
        }
        let key = format!("cordon/{node}/{incident}");
        let action = Action::CordonNode { node: node.to_string(), reason: reason.to_string() };
        if self.emit(out, key, action, FailureClass::DeviceFailure, now) {
            *self.quarantined_nodes.entry(node.to_string()).or_default() += 1;
            self.durable_changes += 1;
            if let Some(ns) = self.nodes.get_mut(node) {
                ns.cordoned = true;
            }
        }
    }

    /// Quarantine a device and request its repair, within the budget and unless held.
    pub(super) fn remediate_device(
        &mut self,
        key: &DeviceKey,
        incident: &str,
        repair: RepairKind,
        reason: &str,
        now: Time,
        out: &mut Vec<PlannedAction>,
    ) {
        if let Some(hold) = self.node_held(&key.node) {
            self.pending_devices.insert(key.clone(), (incident.to_string(), repair, reason.to_string()));
            self.report_hold(out, hold, &key.node, format!("device {key}: {reason}"), now);
            return;
        }
        let s = self.config.safety.clone();
        let quarantined = self.devices.get(key).is_some_and(|d| d.quarantined);
        if s.quarantine_unhealthy_devices && !quarantined {
            let node_counted = self.quarantined_nodes.contains_key(&key.node);
            if !node_counted && self.quarantined_nodes.len() >= self.quarantine_node_limit() {
                self.pending_devices.insert(key.clone(), (incident.to_string(), repair, reason.to_string()));
                let msg = format!(
                    "not quarantining {key}: {} nodes already quarantined (limit {})",
                    self.quarantined_nodes.len(),
                    self.quarantine_node_limit()
                );
                self.report(
                    out,
                    format!("budget/quarantine/{key}/{incident}"),
                    "QuarantineBudgetExhausted",
                    msg,
                    now,
                );
                return;
            }
            let action = Action::QuarantineDevice { device: key.clone(), reason: reason.to_string() };
            if self.emit(
                out,
                format!("quarantine/{key}/{incident}"),
                action,
                FailureClass::DeviceFailure,
                now,
            ) {
                *self.quarantined_nodes.entry(key.node.clone()).or_default() += 1;
                if let Some(d) = self.devices.get_mut(key) {
                    d.quarantined = true;
                }
            }
        }
        if s.request_repairs && repair > RepairKind::RestartApp {
            let action = Action::RequestRepair {
                node: key.node.clone(),
                device: Some(key.clone()),
                kind: repair,
                reason: if repair == RepairKind::InspectHardware {
                    format!(
                        "{reason} (repeat offender: {} incidents within {:.0}h)",
                        self.devices.get(key).map_or(0, |d| d.incident_times.len()),
                        s.lemon_window.as_secs_f64() / 3600.0
                    )
                } else {
                    reason.to_string()
                },
            };
            self.emit(out, format!("repair/{key}/{incident}"), action, FailureClass::DeviceFailure, now);
        }
    }

    /// Quarantined devices Healthy through probation are released; cordoned nodes that
    /// rebooted are uncordoned after theirs.
    pub(super) fn end_probations(&mut self, now: Time, out: &mut Vec<PlannedAction>) {
        let due: Vec<DeviceKey> = self
            .probation
            .iter()
            .filter(|k| self.devices.get(*k).is_some_and(|d| d.probation_until.is_some_and(|t| t <= now)))
            .cloned()
            .collect();
        for k in due {
            self.probation.remove(&k);
            let Some(d) = self.devices.get_mut(&k) else { continue };
            d.probation_until = None;
            if d.health != Health::Healthy || !d.quarantined {
                continue;
            }
            d.quarantined = false;
            let since = d.since;
            self.unquarantine_node(&k.node);
            let key = format!("release/{k}/{}", since.as_nanos());
            let action =
                Action::ReleaseDevice { device: k.clone(), reason: "healthy through probation".into() };
            self.emit(out, key, action, FailureClass::None, now);
            self.repairs_on_release(&k, now, out);
        }
        let nodes_due: Vec<String> = self
            .node_probation
            .iter()
            .filter(|name| {
                self.nodes
                    .get(*name)
                    .is_none_or(|n| !n.cordoned || n.probation_until.is_some_and(|t| t <= now))
            })
            .cloned()
            .collect();
        for name in nodes_due {
            self.node_probation.remove(&name);
            let Some(ns) = self.nodes.get_mut(&name) else { continue };
            if !ns.cordoned {
                continue;
            }
            if ns.network.is_some() {
                // Through probation, but its network is still at fault: the cordon stays, now
                // for the network, and is lifted when that clears ([`super::network`]).
                ns.network_cordon = true;
                ns.probation_until = None;
                continue;
            }
            ns.cordoned = false;
            ns.probation_until = None;
            ns.released_at = Some(now);
            self.durable_changes += 1;
            self.unquarantine_node(&name);
            let key = format!("uncordon/{name}/{}", now.as_nanos());
            let action =
                Action::UncordonNode { node: name.clone(), reason: "rebooted and through probation".into() };
            self.emit(out, key, action, FailureClass::None, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::test_support::*;

    #[test]
    fn healthy_heartbeats_do_not_postpone_release() {
        let mut e = engine_with(4);
        unhealthy(&mut e, key("node-0", 0), t(2));
        healthy(&mut e, key("node-0", 0), t(100));
        // NodeDeviceHealth republishes the full state every minute.
        for s in (160..700).step_by(60) {
            assert!(healthy(&mut e, key("node-0", 0), t(s)).is_empty());
        }
        let acts = e.handle(Input::Tick, t(100 + 600));
        assert_eq!(count(&acts, |a| matches!(a, Action::ReleaseDevice { .. })), 1, "{acts:#?}");
        assert!(!e.is_quarantined(&key("node-0", 0)));
    }

    #[test]
    fn probation_then_release() {
        let mut e = engine_with(4);
        unhealthy(&mut e, key("node-0", 0), t(2));
        assert!(e.is_quarantined(&key("node-0", 0)));
        e.handle(
            Input::DeviceHealth { device: key("node-0", 0), health: Health::Healthy, reasons: vec![] },
            t(100),
        );
        assert!(e.handle(Input::Tick, t(200)).is_empty());
        let acts = e.handle(Input::Tick, t(100 + 600));
        assert_eq!(count(&acts, |a| matches!(a, Action::ReleaseDevice { .. })), 1, "{acts:#?}");
        assert!(!e.is_quarantined(&key("node-0", 0)));
    }
}
