//! Decisions: the policy applied to one pod's failure. The failure gets one identity (the
//! device incident behind it, the Degraded episode, or the pod's own restart), is decided once,
//! and the first matching rule is carried out, attributed to its policy.

use crate::action::{Action, PlannedAction, PodRef, RepairKind};
use crate::attribution::Verdict;
use crate::device::Health;
use crate::pod::{FailureClass, GangId, PodInfo, PodPhase};
use crate::policy::{PolicyRule, RuleAction};
use crate::time::Time;

use super::Engine;

pub(super) fn pod_ref(p: &PodInfo) -> PodRef {
    PodRef { namespace: p.namespace.clone(), name: p.name.clone(), uid: p.uid.clone() }
}

impl Engine {
    /// Apply the policy to a pod's failure.
    /// `full` is the pod as just reported (for rules on exit codes and conditions); without
    /// it the stored lean pod is used.
    pub(super) fn decide_pod(
        &mut self,
        uid: &str,
        full: Option<&PodInfo>,
        verdict: Verdict,
        incident: Option<String>,
        now: Time,
        out: &mut Vec<PlannedAction>,
    ) {
        let Some(p) = self.pods.get(uid) else { return };
        let stored;
        let info = match full {
            Some(f) => f,
            None => {
                stored = p.info.to_pod_info(uid);
                &stored
            }
        };
        let policy = self.policy_for(info);
        let Some(rule) = policy.first_match(info, &verdict) else { return };
        if rule.action == RuleAction::Ignore {
            return;
        }
        let policy_id = policy.id();
        // The failure's identity: the device incident behind it, or the pod's own failure.
        let device_incident = verdict
            .suspect_devices
            .iter()
            .find_map(|k| self.devices.get(k).and_then(|d| d.open_incident.clone()));
        let restarts = p.restarts;
        // A slow-down is one episode of its device, however the pod comes to be decided (the
        // device turning Degraded, a Tick once it lasted, an update of the pod itself).
        let degraded_episode = (verdict.class == FailureClass::DeviceDegraded)
            .then(|| {
                verdict
                    .suspect_devices
                    .iter()
                    .filter_map(|k| self.devices.get(k))
                    .filter(|d| d.health == Health::Degraded)
                    .map(|d| d.since)
                    .min()
            })
            .flatten()
            .map(|since| format!("degraded/{uid}/{}", since.as_nanos()));
        let identity = incident
            .or(device_incident.clone())
            .or(degraded_episode)
            .unwrap_or_else(|| format!("pod/{uid}/{restarts}/{}", verdict.class.as_str()));
        if p.decided.contains(&identity) {
            return;
        }
        if rule.action == RuleAction::ReplaceAtCheckpoint {
            // Not before the slow-down has lasted `degraded_replace_after` (a Tick looks again).
            let after = self.config.safety.degraded_replace_after;
            let lasted = verdict
                .suspect_devices
                .iter()
                .filter_map(|k| self.devices.get(k))
                .any(|d| d.health == Health::Degraded && now.since(d.since) >= after);
            if !lasted {
                return;
            }
        }
        let rule = rule.clone();
        let gang = p.gang.clone();
        let terminal = matches!(info.phase, PodPhase::Succeeded | PodPhase::Failed);
        let pref = pod_ref(info);
        let node = info.node.clone();
        let owner = info.owner.clone();
        let namespace = info.namespace.clone();
        let Some(p) = self.pods.get_mut(uid) else { return };
        p.decided.insert(identity.clone());
        // Failures not already counted through a device incident feed the breaker.
        if device_incident.is_none()
            && matches!(verdict.class, FailureClass::DeviceFailure | FailureClass::Infrastructure)
            && let Some(n) = &node
        {
            self.record_failure(n, now, out);
        }
        let class = verdict.class;
        let cause = self.cause_of(&verdict);
        let summary = verdict.evidence.first().cloned().unwrap_or_default();
        let reason = format!("{}: {summary}", crate::policy::class_name(class));
        // What follows carries out the rule: attributed to its policy (the breaker's report
        // above is the engine's own).
        self.acting_for = Some(policy_id);
        self.mark(&pref, &rule, class, &identity, &summary, now, out);
        match rule.action {
            RuleAction::Ignore | RuleAction::MarkPod => {}
            RuleAction::EvictPod => {
                if !terminal {
                    self.evict(uid, &identity, &reason, class, now, out);
                }
            }
            RuleAction::ReplaceAtCheckpoint => {
                if let (Some(g), false) = (&gang, terminal) {
                    let devices = verdict.suspect_devices.clone();
                    self.replace_at_checkpoint(uid, g, devices, &identity, &reason, class, cause, now, out);
                }
            }
            RuleAction::RestartGang => match &gang {
                Some(g) => self.restart_gang(g, &identity, &reason, class, cause, now, out),
                None if !terminal => self.evict(uid, &identity, &reason, class, now, out),
                None => {}
            },
            RuleAction::QuarantineDevice => {
                for k in &verdict.suspect_devices {
                    self.remediate_device(k, &identity, RepairKind::None, &reason, now, out);
                }
            }
            RuleAction::CordonNode => {
                if let Some(n) = &node {
                    if let Some(hold) = self.node_held(n) {
                        self.report_hold(out, hold, n, reason.clone(), now);
                    } else {
                        self.cordon(n, &identity, &reason, now, out);
                    }
                }
            }
            RuleAction::RequestRepair => {
                let kind = rule.repair.unwrap_or(RepairKind::ResetDevice);
                if let Some(n) = &node {
                    if let Some(hold) = self.node_held(n) {
                        self.report_hold(out, hold, n, reason.clone(), now);
                    } else {
                        let device = verdict.suspect_devices.first().cloned();
                        let action =
                            Action::RequestRepair { node: n.clone(), device, kind, reason: reason.clone() };
                        self.emit(out, format!("repair/{n}/{identity}"), action, class, now);
                    }
                }
            }
            RuleAction::FailWorkload => {
                let g = gang.unwrap_or_else(|| {
                    let (kind, name) = owner.unwrap_or_else(|| ("Pod".to_string(), pref.name.clone()));
                    GangId { namespace, kind: kind.to_ascii_lowercase(), name }
                });
                let action = Action::FailWorkload { gang: g.clone(), reason };
                self.emit(out, format!("fail-workload/{g}/{identity}"), action, class, now);
            }
        }
        self.acting_for = None;
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn mark(
        &mut self,
        pod: &PodRef,
        rule: &PolicyRule,
        class: FailureClass,
        identity: &str,
        summary: &str,
        now: Time,
        out: &mut Vec<PlannedAction>,
    ) {
        let condition_type = rule.condition_type_for(class);
        let key = format!("mark/{}/{condition_type}/{identity}", pod.uid);
        let action = Action::MarkPod {
            pod: pod.clone(),
            condition_type,
            reason: crate::policy::class_name(class).to_string(),
            message: summary.to_string(),
        };
        self.emit(out, key, action, class, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::test_support::*;

    #[test]
    fn rule_actions_are_attributed_to_their_policy_and_safety_actions_to_none() {
        let mut e = engine_with(10);
        let training = FailurePolicy {
            name: "training".into(),
            namespace: Some("ml".into()),
            ..FailurePolicy::builtin_default()
        };
        e.handle(Input::Policies(vec![training]), t(0));
        for i in 0..2 {
            e.handle(Input::PodUpsert(gang_pod(i, &format!("node-{i}"))), t(1));
        }
        let mut lone = gang_pod(9, "node-9");
        lone.namespace = "web".into();
        lone.labels.clear();
        e.handle(Input::PodUpsert(lone), t(1));
        let acts = unhealthy(&mut e, key("node-1", 0), t(10));
        let policy_of = |f: &dyn Fn(&Action) -> bool| -> Vec<Option<String>> {
            acts.iter().filter(|a| f(&a.action)).map(|a| a.policy.clone()).collect()
        };
        let ml = || Some("ml/training".to_string());
        assert_eq!(policy_of(&|a| matches!(a, Action::RestartGang { .. })), [ml()], "{acts:#?}");
        assert_eq!(policy_of(&|a| matches!(a, Action::MarkPod { .. })), [ml()]);
        assert_eq!(policy_of(&|a| matches!(a, Action::QuarantineDevice { .. })), [None]);
        // The pod in another namespace falls to the built-in default.
        let acts = unhealthy(&mut e, key("node-9", 0), t(20));
        let evicted: Vec<_> =
            acts.iter().filter(|a| matches!(a.action, Action::EvictPod { .. })).map(|a| &a.policy).collect();
        assert_eq!(evicted, [&Some("devheal-default".to_string())], "{acts:#?}");
        // The field is left out of the serialised form when there is none.
        let quarantine = acts.iter().find(|a| a.policy.is_none()).map(serde_json::to_value);
        assert!(quarantine.is_some_and(|v| v.is_ok_and(|v| v.get("policy").is_none())));
    }

    #[test]
    fn application_failure_takes_no_device_action() {
        let mut e = engine_with(10);
        e.handle(Input::PodUpsert(gang_pod(0, "node-0")), t(1));
        let acts = e.handle(Input::PodUpsert(failed(gang_pod(0, "node-0"), 139)), t(5));
        assert!(acts.is_empty(), "{acts:#?}");
    }
}
