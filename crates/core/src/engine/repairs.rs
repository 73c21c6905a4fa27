//! Repair requests: what the engine asked of a repair system on each node (one node condition
//! and label: `RequestRepair`), and their withdrawal once the repair happened
//! (`WithdrawRepair`), so that nothing devheal asked for is left standing without an owner.
//!
//! A node's requests are kept per device (`None`: the node itself), each with the boot the node
//! was in when it was made. They are withdrawn:
//! - those made in an earlier boot when the node comes back in a new one (a reboot resets every
//!   device), except requests to inspect hardware, which a reboot does not answer;
//! - a device's reset request when the device is released after probation (it works again);
//! - with the node, when it is deleted (nothing is left to withdraw from).
//!
//! The condition and label stand while any request stands; the withdrawal is planned when the
//! last one goes. Requests outlive the process that runs the engine ([`super::durable`]), and a
//! request found on a node that this engine has no record of (made just before a restart, before
//! it was saved) is adopted, as of the node's boot then: see [`Engine::adopt_node_marks`].
//!
//! Guarantees (tests below and in `durable`):
//! - a withdrawal is planned only for a node with a standing request, once per request episode;
//! - a request to inspect hardware is never withdrawn by a reboot or a device release;
//! - at most [`MAX_REPAIR_NODES`] nodes' requests are kept (more only when the fleet is larger:
//!   one entry per node that has one).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::action::{Action, PlannedAction, RepairKind};
use crate::device::DeviceKey;
use crate::pod::FailureClass;
use crate::time::{Duration, Time};

use super::Engine;

/// The most nodes whose requests are kept (one entry per node with a standing request).
pub const MAX_REPAIR_NODES: usize = 65_536;

/// How long after it lifted a cordon or withdrew a request the engine does not adopt that mark
/// from the node again (a watch event written before the lift reached the API server).
pub(super) const ADOPT_QUIET: Duration = Duration::from_mins(5);

/// The repairs requested on one node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRepairs {
    pub node: String,
    pub requests: Vec<RepairRequest>,
}

/// One standing request: the device (`None`: the node), the repair, and the node's boot when
/// it was made (`None`: the boot the node is first seen in).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RepairRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceKey>,
    pub kind: RepairKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    /// The device's PCI address when the request was saved: a new device found there after a
    /// restart of the engine is still recognised as the replacement ([`Engine::device_replaced`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci_address: Option<String>,
}

/// A node's standing requests, in the engine: by device, the repair and the boot it was made in.
#[derive(Clone, Debug, Default)]
pub(super) struct Repairs {
    pub(super) requests: BTreeMap<Option<DeviceKey>, (RepairKind, Option<String>)>,
    /// When the first request of this episode was made (for the withdrawal's key).
    pub(super) since: Time,
}

impl Repairs {
    /// Add a request (a repeat keeps the larger repair and takes the newer boot).
    fn add(&mut self, device: Option<DeviceKey>, kind: RepairKind, boot: Option<String>) {
        let e = self.requests.entry(device).or_insert((kind, None));
        e.0 = e.0.max(kind);
        if boot.is_some() || e.1.is_none() {
            e.1 = boot;
        }
    }

    fn listed(&self) -> Vec<RepairRequest> {
        self.requests
            .iter()
            .map(|(d, (k, b))| RepairRequest {
                device: d.clone(),
                kind: *k,
                boot_id: b.clone(),
                pci_address: None,
            })
            .collect()
    }
}

impl Engine {
    /// A `RequestRepair` was just planned: remember it.
    pub(super) fn record_repair(
        &mut self,
        node: &str,
        device: Option<DeviceKey>,
        kind: RepairKind,
        now: Time,
    ) {
        if !self.repairs.contains_key(node) && self.repairs.len() >= MAX_REPAIR_NODES {
            return;
        }
        let boot = self.nodes.get(node).and_then(|n| n.info.as_ref()).and_then(|i| i.boot_id.clone());
        let r = self
            .repairs
            .entry(node.to_string())
            .or_insert_with(|| Repairs { requests: BTreeMap::new(), since: now });
        r.add(device, kind, boot);
        self.durable_changes += 1;
    }

    /// The node is seen in `boot`: requests made in an earlier boot are answered, but hardware
    /// inspections; requests made before the node's boot was known take this one.
    pub(super) fn repairs_on_reboot(
        &mut self,
        node: &str,
        boot: &str,
        now: Time,
        out: &mut Vec<PlannedAction>,
    ) {
        let Some(r) = self.repairs.get_mut(node) else { return };
        let mut answered = false;
        r.requests.retain(|_, (kind, made_in)| match made_in.as_deref() {
            None => {
                *made_in = Some(boot.to_string());
                true
            }
            Some(b) if b == boot => true,
            Some(_) if *kind == RepairKind::InspectHardware => true,
            Some(_) => {
                answered = true;
                false
            }
        });
        if answered {
            let reason = format!("node {node} came back in a new boot ({boot})");
            self.withdraw_if_answered(node, &reason, now, out);
        }
    }

    /// A device works again (released after probation): its reset request is answered.
    pub(super) fn repairs_on_release(&mut self, key: &DeviceKey, now: Time, out: &mut Vec<PlannedAction>) {
        let Some(r) = self.repairs.get_mut(&key.node) else { return };
        let dev = Some(key.clone());
        if r.requests.get(&dev).is_some_and(|(k, _)| *k < RepairKind::InspectHardware) {
            r.requests.remove(&dev);
            let reason = format!("device {key} healthy through probation");
            self.withdraw_if_answered(&key.node, &reason, now, out);
        }
    }

    /// The agent's reset of `device` failed (`Input::DeviceResetFailed`): a reboot of the node
    /// is the next repair, requested once per failed request and only while the device's reset
    /// request stands (a reset answered by a reboot since, or withdrawn, asks for nothing).
    /// The device stays quarantined; the node is not cordoned for it (the repair system that
    /// takes the request drains the node as its reboot needs).
    pub(super) fn on_reset_failed(
        &mut self,
        device: &DeviceKey,
        request: &str,
        message: &str,
        now: Time,
        out: &mut Vec<PlannedAction>,
    ) {
        let standing = self.repairs.get(&device.node).is_some_and(|r| {
            r.requests.get(&Some(device.clone())).is_some_and(|(k, _)| *k == RepairKind::ResetDevice)
        });
        if !standing || !self.config.safety.request_repairs {
            return;
        }
        let node = device.node.clone();
        let reason = format!("the reset of device {device} failed: {message}");
        if let Some(hold) = self.node_held(&node) {
            self.report_hold(out, hold, &node, format!("node {node}: {reason}"), now);
            return;
        }
        let action =
            Action::RequestRepair { node: node.clone(), device: None, kind: RepairKind::RebootNode, reason };
        self.emit(
            out,
            format!("repair/{node}/reset-failed/{request}"),
            action,
            FailureClass::DeviceFailure,
            now,
        );
    }

    /// `old` left the node and `new` is at its PCI address: the hardware was replaced. Its
    /// standing requests are answered (a hardware inspection too: the part was swapped), a
    /// quarantine the old device left behind is lifted (nothing of it is left to keep pods off),
    /// and `new` starts clean.
    pub(super) fn device_replaced(
        &mut self,
        old: &DeviceKey,
        new: &DeviceKey,
        now: Time,
        out: &mut Vec<PlannedAction>,
    ) {
        self.departed.remove(old);
        if self.vanished.remove(old).is_some_and(|(_, st)| st.quarantined) {
            let reason = format!("device {old} was replaced by {new} at the same PCI address");
            let action = Action::ReleaseDevice { device: old.clone(), reason };
            self.emit(out, format!("release/{old}/replaced"), action, FailureClass::None, now);
        }
        let Some(r) = self.repairs.get_mut(&old.node) else { return };
        if r.requests.remove(&Some(old.clone())).is_some() {
            let reason = format!("device {old} was replaced by {new}");
            self.withdraw_if_answered(&old.node, &reason, now, out);
        }
    }

    fn withdraw_if_answered(&mut self, node: &str, reason: &str, now: Time, out: &mut Vec<PlannedAction>) {
        let Some(r) = self.repairs.get(node) else { return };
        if !r.requests.is_empty() {
            return;
        }
        let since = r.since;
        self.repairs.remove(node);
        self.durable_changes += 1;
        if let Some(ns) = self.nodes.get_mut(node) {
            ns.released_at = Some(now);
        }
        let key = format!("withdraw-repair/{node}/{}", since.as_nanos());
        let action = Action::WithdrawRepair { node: node.to_string(), reason: reason.to_string() };
        self.emit(out, key, action, FailureClass::None, now);
    }

    /// The repairs standing on `node` (for reports and tests).
    pub fn repair_requests(&self, node: &str) -> Vec<RepairRequest> {
        self.repairs.get(node).map(Repairs::listed).unwrap_or_default()
    }

    /// Marks devheal wrote on a node that this engine has no record of (made by an earlier
    /// process just before it stopped, before its state was saved): a cordon (devheal's
    /// taint) or a repair request (devheal's label). They are adopted as of the node's boot
    /// now, so that a reboot lifts and withdraws them as it would have; a mark this engine
    /// lifted within [`ADOPT_QUIET`] is not taken back (the event predates the lift).
    pub(super) fn adopt_node_marks(&mut self, node: &str, now: Time, out: &mut Vec<PlannedAction>) {
        let Some(ns) = self.nodes.get(node) else { return };
        let Some(info) = ns.info.as_ref() else { return };
        if ns.released_at.is_some_and(|t| now.since(t) < ADOPT_QUIET) {
            return;
        }
        let (cordon, repair, boot) = (
            info.devheal_cordoned && !ns.cordoned,
            info.repair_requested.filter(|_| !self.repairs.contains_key(node)),
            info.boot_id.clone(),
        );
        if cordon && let Some(ns) = self.nodes.get_mut(node) {
            ns.cordoned = true;
            *self.quarantined_nodes.entry(node.to_string()).or_default() += 1;
            self.durable_changes += 1;
            let msg = format!(
                "node {node} carries devheal's cordon, made by an earlier controller process that kept no record of it; kept, and lifted after a reboot and probation"
            );
            self.report(out, format!("adopt-cordon/{node}/{}", now.as_nanos()), "CordonAdopted", msg, now);
        }
        if let Some(kind) = repair
            && self.repairs.len() < MAX_REPAIR_NODES
        {
            let requests = BTreeMap::from([(None, (kind, boot))]);
            self.repairs.insert(node.to_string(), Repairs { requests, since: now });
            self.durable_changes += 1;
        }
    }

    pub(super) fn durable_repairs(&self) -> Vec<NodeRepairs> {
        self.repairs
            .iter()
            .map(|(node, r)| {
                let mut requests = r.listed();
                for q in &mut requests {
                    let Some(k) = &q.device else { continue };
                    q.pci_address = self
                        .devices
                        .get(k)
                        .and_then(|d| d.pci.clone())
                        .or_else(|| self.vanished.get(k).and_then(|(_, d)| d.pci.clone()))
                        .or_else(|| self.departed.get(k).cloned());
                }
                NodeRepairs { node: node.clone(), requests }
            })
            .collect()
    }

    pub(super) fn restore_repairs(&mut self, saved: Vec<NodeRepairs>, now: Time) {
        for NodeRepairs { node, requests } in saved {
            if requests.is_empty()
                || (!self.repairs.contains_key(&node) && self.repairs.len() >= MAX_REPAIR_NODES)
            {
                continue;
            }
            let r =
                self.repairs.entry(node).or_insert_with(|| Repairs { requests: BTreeMap::new(), since: now });
            for RepairRequest { device, kind, boot_id, pci_address } in requests {
                if let (Some(k), Some(pci)) = (&device, pci_address)
                    && !self.devices.contains_key(k)
                {
                    // Known again if it is still there (the inventory drops this); else a new
                    // device at that address is its replacement.
                    self.departed.insert(k.clone(), pci.to_ascii_lowercase());
                }
                if !r.requests.contains_key(&device) {
                    r.add(device, kind, boot_id);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::test_support::*;
    use crate::pod::NodeInfo;

    /// A saved hardware inspection of `device` on node-0.
    fn inspection_of(device: &DeviceKey) -> Vec<NodeRepairs> {
        vec![NodeRepairs {
            node: "node-0".into(),
            requests: vec![RepairRequest {
                device: Some(device.clone()),
                kind: RepairKind::InspectHardware,
                boot_id: Some("b1".into()),
                pci_address: None,
            }],
        }]
    }

    /// node-0's inventory with a new device (id `new`) where device `i` was.
    fn swapped(i: usize, new: &str) -> Input {
        let Input::Devices { node, mut devices } = inventory("node-0", None) else { unreachable!() };
        devices[i].key = DeviceKey::new("node-0", "nvidia.com/gpu", new);
        Input::Devices { node, devices }
    }

    fn withdrawn(acts: &[PlannedAction]) -> Vec<String> {
        acts.iter()
            .filter_map(|a| match &a.action {
                Action::WithdrawRepair { node, .. } => Some(node.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_reboot_answers_the_reboot_request_of_a_host_fault() {
        let mut e = engine_with(20);
        let acts = e.handle(host_fault("node-0"), t(2));
        assert_eq!(count(&acts, |a| matches!(a, Action::RequestRepair { .. })), 1, "{acts:#?}");
        assert_eq!(e.repair_requests("node-0").len(), 1);
        // The same boot again: nothing.
        assert!(withdrawn(&e.handle(node_info("node-0", "b1"), t(50))).is_empty());
        let acts = e.handle(node_info("node-0", "b2"), t(100));
        assert_eq!(withdrawn(&acts), ["node-0"], "{acts:#?}");
        assert!(e.repair_requests("node-0").is_empty());
        // Once.
        assert!(withdrawn(&e.handle(node_info("node-0", "b3"), t(200))).is_empty());
    }

    #[test]
    fn a_device_released_after_probation_answers_its_reset_request() {
        let mut e = engine_with(4);
        let k = key("node-0", 0);
        let acts = unhealthy(&mut e, k.clone(), t(2));
        assert_eq!(
            count(&acts, |a| matches!(a, Action::RequestRepair { kind: RepairKind::ResetDevice, .. })),
            1,
            "{acts:#?}"
        );
        healthy(&mut e, k.clone(), t(100));
        assert!(withdrawn(&e.handle(Input::Tick, t(200))).is_empty(), "still in probation");
        let acts = e.handle(Input::Tick, t(100 + 600));
        assert_eq!(count(&acts, |a| matches!(a, Action::ReleaseDevice { .. })), 1, "{acts:#?}");
        assert_eq!(withdrawn(&acts), ["node-0"], "{acts:#?}");
    }

    #[test]
    fn a_failed_reset_asks_for_a_reboot_once_and_only_while_the_reset_stands() {
        let mut e = engine_with(4);
        let k = key("node-0", 0);
        unhealthy(&mut e, k.clone(), t(2));
        let failed = |request: &str| Input::DeviceResetFailed {
            device: k.clone(),
            request: request.into(),
            message: "nvidia-smi exited 255: GPU is lost".into(),
        };
        let acts = e.handle(failed("repair/a"), t(30));
        let reboots: Vec<_> = acts
            .iter()
            .filter_map(|a| match &a.action {
                Action::RequestRepair { node, device: None, kind: RepairKind::RebootNode, reason } => {
                    Some((node.clone(), reason.clone()))
                }
                _ => None,
            })
            .collect();
        assert_eq!(reboots.len(), 1, "{acts:#?}");
        assert_eq!(reboots[0].0, "node-0");
        assert!(reboots[0].1.contains("GPU is lost"), "{reboots:?}");
        assert!(e.handle(failed("repair/a"), t(31)).is_empty(), "once per request");
        // The reboot answers every request: a late report of the old failure asks for nothing.
        e.handle(node_info("node-0", "b2"), t(40));
        e.handle(node_info("node-0", "b3"), t(50));
        assert!(e.repair_requests("node-0").is_empty());
        assert!(e.handle(failed("repair/b"), t(60)).is_empty());
    }

    #[test]
    fn a_failed_reset_of_a_device_without_a_reset_request_asks_for_nothing() {
        let mut e = engine_with(4);
        let acts = e.handle(
            Input::DeviceResetFailed { device: key("node-0", 3), request: "x".into(), message: "m".into() },
            t(5),
        );
        assert!(acts.is_empty(), "{acts:#?}");
    }

    #[test]
    fn a_replaced_device_answers_its_hardware_inspection() {
        let mut e = engine_with(4);
        let old = key("node-0", 1);
        e.restore_repairs(inspection_of(&old), t(1));
        // Taken out for the swap: nothing is answered while it is gone.
        assert!(withdrawn(&e.handle(inventory("node-0", Some(1)), t(10))).is_empty());
        assert!(withdrawn(&e.handle(node_info("node-0", "b2"), t(20))).is_empty());
        // A new GPU (another UUID) at the old one's PCI address.
        let acts = e.handle(swapped(1, "GPU-new-serial"), t(30));
        assert_eq!(withdrawn(&acts), ["node-0"], "{acts:#?}");
        assert!(e.repair_requests("node-0").is_empty());
    }

    #[test]
    fn a_swap_made_while_the_engine_restarted_is_recognised_from_its_saved_state() {
        let mut e = engine_with(4);
        let old = key("node-0", 3);
        e.restore_repairs(inspection_of(&old), t(1));
        let saved = e.durable_repairs();
        assert_eq!(saved[0].requests[0].pci_address.as_deref(), Some("0000:04:00.0"), "{saved:?}");
        // A new engine, which never saw the old GPU: the first inventory already has the new one.
        let mut fresh = engine_with(0);
        fresh.restore_repairs(saved, t(100));
        let acts = fresh.handle(swapped(3, "GPU-swapped"), t(200));
        assert_eq!(withdrawn(&acts), ["node-0"], "{acts:#?}");
        // Saved, then found still there: not a swap.
        let mut again = engine_with(0);
        again.restore_repairs(e.durable_repairs(), t(100));
        assert!(withdrawn(&again.handle(inventory("node-0", None), t(200))).is_empty());
        assert_eq!(again.repair_requests("node-0").len(), 1);
    }

    #[test]
    fn a_device_swapped_while_quarantined_is_released_and_its_request_answered() {
        let mut e = engine_with(4);
        let old = key("node-0", 2);
        let acts = unhealthy(&mut e, old.clone(), t(2));
        assert_eq!(count(&acts, |a| matches!(a, Action::QuarantineDevice { .. })), 1, "{acts:#?}");
        // In one inventory: the old device gone, a new one at its address.
        let acts = e.handle(swapped(2, "GPU-replacement"), t(3_000));
        assert_eq!(
            count(&acts, |a| matches!(a, Action::ReleaseDevice { device, .. } if *device == old)),
            1,
            "{acts:#?}"
        );
        assert_eq!(withdrawn(&acts), ["node-0"], "{acts:#?}");
        // The same inventory again: nothing more.
        assert!(e.handle(swapped(2, "GPU-replacement"), t(3_001)).is_empty());
    }

    #[test]
    fn a_reboot_does_not_answer_a_hardware_inspection() {
        let mut e = engine_with(4);
        e.restore_repairs(
            vec![NodeRepairs {
                node: "node-0".into(),
                requests: vec![
                    RepairRequest {
                        device: None,
                        kind: RepairKind::RebootNode,
                        boot_id: Some("b1".into()),
                        pci_address: None,
                    },
                    RepairRequest {
                        device: Some(key("node-0", 1)),
                        kind: RepairKind::InspectHardware,
                        boot_id: Some("b1".into()),
                        pci_address: None,
                    },
                ],
            }],
            t(1),
        );
        assert!(withdrawn(&e.handle(node_info("node-0", "b2"), t(10))).is_empty());
        assert_eq!(
            e.repair_requests("node-0"),
            [RepairRequest {
                device: Some(key("node-0", 1)),
                kind: RepairKind::InspectHardware,
                boot_id: Some("b1".into()),
                pci_address: None,
            }]
        );
    }

    #[test]
    fn marks_found_on_a_node_are_adopted_unless_just_lifted() {
        let mut e = engine_with(20);
        let marked = |boot: &str| NodeInfo {
            name: "node-0".into(),
            boot_id: Some(boot.into()),
            devheal_cordoned: true,
            repair_requested: Some(RepairKind::RebootNode),
            ..NodeInfo::default()
        };
        let acts = e.handle(Input::NodeUpsert(marked("b1")), t(10));
        assert_eq!(reports(&acts, "CordonAdopted").len(), 1, "{acts:#?}");
        assert_eq!(e.safety_state(t(10)).quarantined_nodes, 1);
        assert_eq!(e.repair_requests("node-0").len(), 1);
        // Seen again: adopted once.
        assert!(e.handle(Input::NodeUpsert(marked("b1")), t(20)).is_empty());
        // The reboot lifts both, after probation for the cordon.
        let acts = e.handle(Input::NodeUpsert(marked("b2")), t(30));
        assert_eq!(withdrawn(&acts), ["node-0"], "{acts:#?}");
        let acts = e.handle(Input::Tick, t(30 + 600));
        assert_eq!(count(&acts, |a| matches!(a, Action::UncordonNode { .. })), 1, "{acts:#?}");
        // The watch still shows the marks (the lift is on its way): not adopted again.
        assert!(e.handle(Input::NodeUpsert(marked("b2")), t(30 + 601)).is_empty());
        assert_eq!(e.safety_state(t(30 + 601)).quarantined_nodes, 0);
        assert!(e.repair_requests("node-0").is_empty());
    }
}
