//! What the engine can be asked without changing it: verdicts and policy decisions for a pod
//! (`explain`), what it knows of pods, gangs and devices, and the safety state.

use crate::attribution::{DeviceEvidence, IncidentEvidence, Verdict, attribute};
use crate::device::{DeviceKey, Health};
use crate::gang::gang_of;
use crate::pod::{GangId, PodInfo};
use crate::policy::{FailurePolicy, RuleAction};
use crate::time::{Duration, Time};

use super::Engine;
use super::devices::DeviceState;
use super::{PolicyDecision, SafetyState};

impl Engine {
    /// Attribute a pod with what the engine knows about its devices now.
    pub fn verdict(&self, pod: &PodInfo, now: Time) -> Verdict {
        let (evidence, quiet) = self.evidence_for(pod, now);
        let mut verdict = attribute(pod, &evidence);
        // A Healthy device with nothing to say changes only the worst health (see evidence_for).
        if quiet && verdict.worst_device_health.is_none() {
            verdict.worst_device_health = Some(Health::Healthy);
        }
        verdict
    }

    /// What the policy says about a pod (no state changes, no budgets).
    pub fn decide(&self, pod: &PodInfo, now: Time) -> PolicyDecision {
        let verdict = self.verdict(pod, now);
        let policy = self.policy_for(pod);
        let rule = if verdict.is_failure() { policy.first_match(pod, &verdict) } else { None };
        PolicyDecision {
            policy: policy.name.clone(),
            rule: rule.map(|r| r.name.clone()),
            action: rule.map_or(RuleAction::Ignore, |r| r.action),
            gang: gang_of(pod, &self.gang_label_keys),
            verdict,
        }
    }

    /// The gang a pod belongs to, if the engine knows the pod and it is in one.
    pub fn pod_gang(&self, uid: &str) -> Option<&GangId> {
        self.pods.get(uid).and_then(|p| p.gang.as_ref())
    }

    /// `namespace/name` of a pod the engine knows.
    pub fn pod_name(&self, uid: &str) -> Option<String> {
        self.pods.get(uid).map(|p| format!("{}/{}", p.info.namespace, p.info.name))
    }

    /// The node of a pod the engine knows, if it is scheduled.
    pub fn pod_node(&self, uid: &str) -> Option<&str> {
        self.pods.get(uid).and_then(|p| p.info.node.as_deref())
    }

    /// The devices a pod is bound to (empty for an unknown pod).
    pub fn pod_devices(&self, uid: &str) -> &[DeviceKey] {
        self.pods.get(uid).map(|p| p.info.devices.as_slice()).unwrap_or(&[])
    }

    /// How many pods the engine counts in a gang.
    pub fn gang_size(&self, gang: &GangId) -> usize {
        self.gangs.get(gang).map_or(0, |gs| gs.members.len())
    }

    pub fn device_health(&self, key: &DeviceKey) -> Option<Health> {
        self.devices.get(key).map(|d| d.health)
    }

    /// The incident of the gang's planned restart, while the gang has not yet restarted.
    pub fn open_gang_incident(&self, gang: &GangId) -> Option<&str> {
        self.gangs.get(gang)?.open_restart.as_ref().map(|o| o.incident.as_str())
    }

    pub fn is_quarantined(&self, key: &DeviceKey) -> bool {
        self.devices.get(key).is_some_and(|d| d.quarantined)
    }

    pub fn safety_state(&self, now: Time) -> SafetyState {
        let window_start = now - Duration::from_mins(1);
        SafetyState {
            breaker_open: self.breaker.open_since.is_some(),
            quarantined_nodes: self.quarantined_nodes.len(),
            quarantine_node_limit: self.quarantine_node_limit(),
            evictions_last_minute: self.evictions.iter().filter(|t| **t > window_start).count(),
            held_versions: self.held_versions.iter().cloned().collect(),
            quarantined_devices: self.devices.values().filter(|d| d.quarantined).count(),
            held_by_breaker: self.held_by_breaker,
            gang_restarts_last_hour: self.restart_windows.in_cluster(now - Duration::from_hours(1)),
            progress_breaker_open: self.progress_breaker.open_since.is_some(),
            held_by_progress_breaker: self.progress_breaker.held,
        }
    }

    pub(super) fn policy_for(&self, pod: &PodInfo) -> &FailurePolicy {
        self.config.policies.iter().find(|p| p.selects(pod)).unwrap_or(&self.default_policy)
    }

    /// Evidence from the pod's devices that can move a verdict: devices that are not Healthy or
    /// carry reasons or recent incidents, in the pod's order. A Healthy device with nothing to say
    /// would only make the worst health Healthy; the flag says whether the pod had one. Pods are
    /// re-sent often (every member of a restarted gang), and most of their devices are quiet:
    /// this keeps a re-sent pod from cloning eight device keys to find nothing.
    fn evidence_for(&self, pod: &PodInfo, now: Time) -> (Vec<DeviceEvidence>, bool) {
        let horizon = now - self.config.safety.incident_window;
        let mut quiet = false;
        let mut evidence = Vec::new();
        let mut consider = |k: &DeviceKey, d: &DeviceState| {
            let live = |i: &&IncidentEvidence| i.last_seen >= horizon && i.last_seen >= d.recovered_at;
            if d.health == Health::Healthy && d.reasons.is_empty() && !d.incidents.iter().any(|i| live(&i)) {
                quiet = true;
                return;
            }
            evidence.push(DeviceEvidence {
                key: k.clone(),
                health: d.health,
                reasons: d.reasons.clone(),
                incidents: d.incidents.iter().filter(live).cloned().collect(),
            });
        };
        // The usual pod holds devices of one node in key order: one walk of that range instead
        // of a tree descent per device.
        let sorted_one_node = pod.devices.windows(2).all(|w| w[0] < w[1] && w[0].node == w[1].node);
        match pod.devices.first() {
            Some(first) if sorted_one_node && pod.devices.len() > 1 => {
                let mut wanted = pod.devices.iter().peekable();
                for (k, d) in self.devices.range(first..) {
                    while wanted.next_if(|w| *w < k).is_some() {}
                    match wanted.peek() {
                        None => break,
                        Some(w) if *w == k => {
                            consider(k, d);
                            wanted.next();
                        }
                        Some(_) => {}
                    }
                    if k.node != first.node {
                        break;
                    }
                }
            }
            _ => {
                for k in &pod.devices {
                    if let Some(d) = self.devices.get(k) {
                        consider(k, d);
                    }
                }
            }
        }
        (evidence, quiet)
    }
}
