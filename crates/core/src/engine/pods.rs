//! Pods: what is kept of each pod (a lean copy), the indexes from devices and gangs to pods,
//! a pod's update deciding its failure, and evictions within the per-minute budget.

use std::collections::{BTreeMap, BTreeSet};

use crate::action::{Action, PlannedAction, PodRef};
use crate::device::{DeviceKey, Health, HealthReason};
use crate::gang::{gang_of, restart_attempt};
use crate::identity::canonical_key;
use crate::pod::{FailureClass, GangId, InPlaceRestart, PodInfo, PodPhase};
use crate::time::{Duration, Time};

use super::Engine;

use super::gangs::GangState;
use super::nodes::NodeState;

/// What is kept of a pod between inputs: not what only its own failure needs (containers,
/// conditions, messages, annotations, labels no policy selects on). Attribution from device
/// evidence and policy selection work on it.
#[derive(Clone, Debug)]
pub(super) struct LeanPod {
    pub(super) namespace: String,
    pub(super) name: String,
    pub(super) node: Option<String>,
    pub(super) labels: BTreeMap<String, String>,
    pub(super) owner: Option<(String, String)>,
    pub(super) phase: PodPhase,
    pub(super) devices: Vec<DeviceKey>,
    pub(super) start_time: Option<Time>,
    pub(super) in_place: Option<InPlaceRestart>,
}

impl LeanPod {
    pub(super) fn to_pod_info(&self, uid: &str) -> PodInfo {
        PodInfo {
            uid: uid.to_string(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            node: self.node.clone(),
            labels: self.labels.clone(),
            owner: self.owner.clone(),
            phase: self.phase,
            devices: self.devices.clone(),
            start_time: self.start_time,
            in_place: self.in_place,
            ..PodInfo::default()
        }
    }

    pub(super) fn pod_ref(&self, uid: &str) -> PodRef {
        PodRef { namespace: self.namespace.clone(), name: self.name.clone(), uid: uid.to_string() }
    }
}

/// An eviction held back by the eviction budget, sent by a later Tick.
#[derive(Clone, Debug)]
pub(super) struct PendingEviction {
    pub(super) identity: String,
    pub(super) reason: String,
    pub(super) class: FailureClass,
    /// The policy whose rule asked for it.
    pub(super) policy: Option<String>,
}

#[derive(Clone, Debug)]
pub(super) struct PodState {
    pub(super) info: LeanPod,
    pub(super) restarts: u32,
    pub(super) attempt: Option<u64>,
    pub(super) gang: Option<GangId>,
    /// Failure identities already decided (one decision per failure).
    pub(super) decided: BTreeSet<String>,
}

/// Forget a pod's own failure identities (`pod/<uid>/<restarts>/<class>`) from restarts before
/// `restarts`: they cannot recur, and a pod crash-looping for weeks would otherwise keep one per
/// restart.
fn prune_decided(decided: &mut BTreeSet<String>, uid: &str, restarts: u32) {
    if decided.is_empty() {
        return;
    }
    let prefix = format!("pod/{uid}/");
    decided.retain(|id| {
        id.strip_prefix(prefix.as_str())
            .and_then(|rest| rest.split_once('/'))
            .and_then(|(r, _)| r.parse::<u32>().ok())
            .is_none_or(|r| r >= restarts)
    });
}

impl Engine {
    /// What is kept of a pod between inputs.
    pub(super) fn lean(&self, pod: &PodInfo) -> LeanPod {
        LeanPod {
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            node: pod.node.clone(),
            labels: pod
                .labels
                .iter()
                .filter(|(k, _)| self.selector_keys.contains(*k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            owner: pod.owner.clone(),
            phase: pod.phase,
            devices: pod.devices.clone(),
            start_time: pod.start_time,
            in_place: pod.in_place,
        }
    }

    pub(super) fn on_pod(&mut self, mut pod: PodInfo, now: Time, out: &mut Vec<PlannedAction>) {
        // One device, one key: a replica is its device, a DRA device the pod's status names as
        // `claim:<claim>` is the `driver/pool/device` the agent reports ([`crate::identity`]).
        if pod.devices.iter().any(|d| canonical_key(d) != *d) {
            pod.devices = pod.devices.iter().map(canonical_key).collect();
            pod.devices.sort();
            pod.devices.dedup();
        }
        let uid = pod.uid.clone();
        let restarts: u32 = pod.containers.iter().map(|c| c.restart_count).sum();
        // An update of a known pod on the same node and devices changes no index (gang labels
        // do not change during a pod's life): update it in place.
        let unchanged =
            self.pods.get(&uid).is_some_and(|p| p.info.node == pod.node && p.info.devices == pod.devices);
        let (gang, decided) = if unchanged {
            let Some(p) = self.pods.get_mut(&uid) else { return };
            p.info.phase = pod.phase;
            p.info.start_time = pod.start_time;
            p.info.in_place = pod.in_place;
            p.restarts = restarts;
            p.attempt = restart_attempt(&pod);
            prune_decided(&mut p.decided, &uid, p.restarts);
            (p.gang.clone(), None)
        } else {
            let gang = gang_of(&pod, &self.gang_label_keys);
            let decided = match self.pods.remove(&uid) {
                Some(old) => {
                    self.unindex(&uid, &old);
                    old.decided
                }
                None => BTreeSet::new(),
            };
            (gang, Some(decided))
        };
        for d in pod.devices.iter().filter(|_| !unchanged) {
            if !self.devices.contains_key(d) {
                if !self.nodes.contains_key(&d.node) {
                    self.nodes.insert(d.node.clone(), NodeState::default());
                }
                self.device_entry(d, now);
            }
            if let Some(st) = self.devices.get_mut(d)
                && !st.pods.contains(&uid)
            {
                st.pods.push(uid.clone());
            }
        }
        let mut absorbed = false;
        if let Some(g) = &gang {
            if !self.gangs.contains_key(g) {
                self.gangs.insert(g.clone(), GangState::default());
            }
            let Some(gs) = self.gangs.get_mut(g) else { return };
            if !gs.members.contains(&uid) {
                gs.members.insert(uid.clone());
            }
            if let Some(open) = &mut gs.open_restart
                && let Some(before) = open.in_place.get(&uid).copied()
            {
                if restarts > before {
                    // The kubelet restarted it in place, as it was told.
                    open.in_place.remove(&uid);
                    if open.doomed.is_empty() && open.in_place.is_empty() {
                        gs.open_restart = None;
                        self.restarting.remove(g);
                    }
                } else {
                    // Told to restart in place and not yet restarted: what it shows meanwhile
                    // (its exit with the contract's code, a hang) is part of the incident.
                    absorbed = true;
                }
            }
            if let Some(open) = &mut gs.open_restart
                && open.doomed.contains(&uid)
            {
                let new_incarnation = pod.start_time.is_some_and(|t| t > open.at)
                    || restart_attempt(&pod).zip(open.attempt).is_some_and(|(a, b)| a > b);
                if new_incarnation {
                    open.doomed.remove(&uid);
                    if open.doomed.is_empty() && open.in_place.is_empty() {
                        gs.open_restart = None;
                        self.restarting.remove(g);
                    }
                } else {
                    // A member of a gang whose restart is already planned: its failure is part
                    // of that incident.
                    absorbed = true;
                }
            }
        }
        // The kubelet's allocatedResourcesStatus is a health source too (KEP-4680): a device it
        // reports Unhealthy is handled like any other device failure.
        let reported_unhealthy: Vec<(DeviceKey, String)> = pod
            .containers
            .iter()
            .flat_map(|c| c.allocated_resources_status.iter())
            .filter(|r| r.health == Health::Unhealthy)
            .map(|r| {
                let key = canonical_key(&DeviceKey::new(
                    pod.node.clone().unwrap_or_default(),
                    r.resource.clone(),
                    r.device_id.clone(),
                ));
                let message =
                    r.message.clone().unwrap_or_else(|| "Unhealthy in allocatedResourcesStatus".to_string());
                (key, message)
            })
            .collect();
        if let Some(mut decided) = decided {
            prune_decided(&mut decided, &uid, restarts);
            let state =
                PodState { info: self.lean(&pod), restarts, attempt: restart_attempt(&pod), gang, decided };
            self.pods.insert(uid.clone(), state);
        }
        if absorbed {
            return;
        }
        for (key, message) in reported_unhealthy {
            if self.devices.get(&key).is_some_and(|d| d.health == Health::Unhealthy) {
                continue;
            }
            let reason = HealthReason {
                source: crate::device::HealthSource::PodStatus,
                code: None,
                message,
                first_seen: now,
                last_seen: now,
                count: 1,
            };
            self.on_device_health(key, Health::Unhealthy, vec![reason], now, out);
        }
        if self.replaced_at_checkpoint(&uid, &pod, now, out) {
            return;
        }
        let mut verdict = self.verdict(&pod, now);
        if verdict.failing && !self.held_nvlink.is_empty() {
            // The pod's failure is the job interruption that confirms a held NVLink error on
            // one of its devices: that device fails now, and the verdict sees it.
            self.confirm_nvlink(&pod.devices, now, now, out);
            verdict = self.verdict(&pod, now);
        }
        // (Not a device's failure, an OOM or a disruption: those are their own.)
        if verdict.failing
            && matches!(
                verdict.class,
                FailureClass::Application | FailureClass::Infrastructure | FailureClass::None
            )
            && let Some(g) = self.pods.get(&uid).and_then(|p| p.gang.clone())
        {
            // A member failing on a node whose network is at fault: the network's failure.
            self.member_failed_on_faulted_network(&uid, &g, now, out);
        }
        if verdict.is_failure() && (verdict.failing || verdict.class == FailureClass::DeviceDegraded) {
            self.decide_pod(&uid, Some(&pod), verdict, None, now, out);
        }
    }

    fn unindex(&mut self, uid: &str, old: &PodState) {
        for d in &old.info.devices {
            if let Some(st) = self.devices.get_mut(d) {
                st.pods.retain(|p| p != uid);
            }
        }
        if let Some(g) = &old.gang
            && let Some(gs) = self.gangs.get_mut(g)
        {
            gs.members.remove(uid);
        }
    }

    pub(super) fn on_pod_deleted(&mut self, uid: &str) {
        self.replacing.remove(uid);
        let Some(old) = self.pods.remove(uid) else { return };
        self.unindex(uid, &old);
        self.pending_evictions.remove(uid);
        if let Some(g) = &old.gang
            && let Some(gs) = self.gangs.get_mut(g)
        {
            if let Some(open) = &mut gs.open_restart {
                open.doomed.remove(uid);
                open.in_place.remove(uid);
                if open.doomed.is_empty() && open.in_place.is_empty() {
                    gs.open_restart = None;
                    self.restarting.remove(g);
                }
            }
            if gs.members.is_empty() && gs.open_restart.is_none() {
                // Keep the restart history for the budget: only drop gangs with no recent restarts.
                if gs.restarts.is_empty() {
                    self.gangs.remove(g);
                }
                self.progressing.remove(g);
            }
        }
    }

    pub(super) fn evict(
        &mut self,
        uid: &str,
        identity: &str,
        reason: &str,
        class: FailureClass,
        now: Time,
        out: &mut Vec<PlannedAction>,
    ) {
        let Some(pref) = self.pod_unless_held(uid, "evicting", now, out) else { return };
        let minute = now - Duration::from_mins(1);
        while self.evictions.front().is_some_and(|t| *t <= minute) {
            self.evictions.pop_front();
        }
        let key = format!("evict/{uid}/{identity}");
        if self.issued.contains_key(&key) {
            return;
        }
        if self.evictions.len() >= self.config.safety.max_evictions_per_minute as usize {
            let pending = PendingEviction {
                identity: identity.to_string(),
                reason: reason.to_string(),
                class,
                policy: self.acting_for.clone(),
            };
            self.pending_evictions.insert(uid.to_string(), pending);
            let msg = format!(
                "eviction of {}/{} deferred: {} evictions in the last minute (limit {})",
                pref.namespace,
                pref.name,
                self.evictions.len(),
                self.config.safety.max_evictions_per_minute
            );
            self.report(out, format!("budget/evict/{uid}/{identity}"), "EvictionBudgetExhausted", msg, now);
            return;
        }
        let action = Action::EvictPod { pod: pref, reason: reason.to_string() };
        if self.emit(out, key, action, class, now) {
            self.evictions.push_back(now);
            self.durable_changes += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::test_support::*;

    #[test]
    fn a_crash_looping_pod_keeps_no_identity_per_restart() {
        let policy = FailurePolicy {
            name: "mark-app".into(),
            rules: vec![PolicyRule {
                name: "mark".into(),
                on_classes: vec![FailureClass::Application],
                action: RuleAction::MarkPod,
                ..PolicyRule::default()
            }],
            ..FailurePolicy::builtin_default()
        };
        let mut e = Engine::new(EngineConfig { policies: vec![policy], ..EngineConfig::default() });
        let mut p = gang_pod(0, "node-0");
        p.labels.clear();
        e.handle(Input::PodUpsert(p.clone()), t(1));
        let mut marks = 0;
        for r in 1..=50 {
            let mut crashed = failed(p.clone(), 1);
            crashed.phase = PodPhase::Running;
            crashed.containers[0].restart_count = r;
            let acts = e.handle(Input::PodUpsert(crashed), t(i64::from(r) * 300));
            marks += count(&acts, |a| matches!(a, Action::MarkPod { .. }));
        }
        assert_eq!(marks, 50, "every restart is still decided once");
        let decided = &e.pods["uid-0"].decided;
        assert!(decided.len() <= 1, "{decided:?}");
    }

    /// A DRA device the agent reports as `(driver, driver/pool/device)` and a pod's status
    /// names as `(claim:<claim>, <CDI id>)` (KEP-4680, the NVIDIA DRA driver) is one device:
    /// the pod is on it, the status' Unhealthy report fails it, and it is quarantined once.
    #[test]
    fn a_dra_device_from_the_agent_and_from_a_pod_status_is_one_device() {
        let mut e = engine_with(1);
        let agent = DeviceKey::new("node-0", "gpu.nvidia.com", "gpu.nvidia.com/node-0/gpu-0");
        let device = Device {
            key: agent.clone(),
            pci_address: None,
            vendor: crate::device::Vendor::Nvidia,
            model: None,
        };
        e.handle(Input::Devices { node: "node-0".into(), devices: vec![device] }, t(0));
        e.handle(
            Input::DeviceHealth { device: agent.clone(), health: Health::Healthy, reasons: vec![] },
            t(0),
        );
        let known = e.devices.len();
        let mut p = gang_pod(0, "node-0");
        p.labels.clear();
        let cdi = "k8s.gpu.nvidia.com/claim=dab5ab50-d59a-42a6-af16-cfd4628c0f7a-gpu-0";
        p.devices = vec![DeviceKey::new("node-0", "claim:train-gpus", cdi)];
        p.containers[0].allocated_resources_status = vec![crate::pod::ResourceHealth {
            resource: "claim:train-gpus".into(),
            device_id: cdi.into(),
            health: Health::Unhealthy,
            message: Some("the driver reports it Unhealthy".into()),
        }];
        let acts = e.handle(Input::PodUpsert(p), t(1));
        assert_eq!(e.pod_devices("uid-0"), std::slice::from_ref(&agent), "the pod is on the agent's device");
        assert_eq!(e.devices.len(), known, "no second device for the pod status' name");
        assert_eq!(e.device_health(&agent), Some(Health::Unhealthy));
        let quarantined: Vec<&DeviceKey> = acts
            .iter()
            .filter_map(|a| match &a.action {
                Action::QuarantineDevice { device, .. } => Some(device),
                _ => None,
            })
            .collect();
        assert_eq!(quarantined, [&agent], "{acts:#?}");
        assert_eq!(count(&acts, |a| matches!(a, Action::MarkPod { .. })), 1, "{acts:#?}");
        // The agent's own report of the same failure adds nothing.
        let again = unhealthy(&mut e, agent.clone(), t(2));
        assert_eq!(count(&again, |a| matches!(a, Action::QuarantineDevice { .. })), 0, "{again:#?}");
    }

    #[test]
    fn lone_pod_on_dead_device_is_marked_and_evicted() {
        let mut e = engine_with(4);
        let mut p = gang_pod(0, "node-0");
        p.labels.clear();
        e.handle(Input::PodUpsert(p), t(1));
        let acts = unhealthy(&mut e, key("node-0", 0), t(2));
        assert_eq!(count(&acts, |a| matches!(a, Action::MarkPod { .. })), 1, "{acts:#?}");
        assert_eq!(count(&acts, |a| matches!(a, Action::EvictPod { .. })), 1);
    }
}
