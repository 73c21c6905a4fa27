//! Restart in place: a gang restart tells its healthy members to exit with
//! [`crate::pod::RESTART_IN_PLACE_EXIT_CODE`], which their pods' container restart rules turn
//! into a restart on the same node and devices (no deletion, rescheduling or image pull), and
//! re-creates only the others. A member is done when its pods' restart count goes up; one that
//! has not restarted within `in_place_restart_deadline` makes the restart fall back, once, to
//! re-creating the whole gang.

use crate::action::{Action, PlannedAction, PodRef};
use crate::device::Health;
use crate::pod::GangId;
use crate::time::Time;

use super::Engine;

impl Engine {
    /// The members of `g` that may restart in place, with their restart counts now: pods whose
    /// spec restarts them in place on the contract's exit code, running, on no device that is
    /// unwell and on no node devheal keeps pods off (a cordon, a network fault). Empty when
    /// restart in place is switched off.
    pub(super) fn in_place_members(&self, g: &GangId) -> Vec<(PodRef, u32)> {
        if !self.config.safety.restart_in_place {
            return Vec::new();
        }
        let Some(gs) = self.gangs.get(g) else { return Vec::new() };
        gs.members
            .iter()
            .filter_map(|uid| {
                let p = self.pods.get(uid)?;
                p.info.in_place?;
                if p.info.phase != crate::pod::PodPhase::Running {
                    return None;
                }
                let unwell = p.info.devices.iter().any(|d| {
                    self.devices
                        .get(d)
                        .is_some_and(|st| matches!(st.health, Health::Unhealthy | Health::Degraded))
                });
                let node = p.info.node.as_deref()?;
                let kept_off = self.network_faulted.contains(node)
                    || self.nodes.get(node).is_some_and(|n| n.cordoned || n.open_incident.is_some());
                (!unwell && !kept_off).then(|| (p.info.pod_ref(uid), p.restarts))
            })
            .collect()
    }

    /// An in-place restart whose members did not all restart within
    /// `in_place_restart_deadline` falls back, once, to re-creating every live member: the
    /// workload did not follow the contract, or its pods do not restart as their spec says.
    pub(super) fn in_place_fallbacks(&mut self, now: Time, out: &mut Vec<PlannedAction>) {
        let deadline = self.config.safety.in_place_restart_deadline;
        let late = self
            .restarting_where(|o| o.is_some_and(|o| !o.in_place.is_empty() && now.since(o.at) >= deadline));
        for g in late {
            let Some(gs) = self.gangs.get_mut(&g) else { continue };
            let Some(open) = gs.open_restart.as_mut() else { continue };
            let stuck: Vec<String> = open.in_place.keys().cloned().collect();
            let incident = open.incident.clone();
            open.in_place.clear();
            open.doomed = gs.members.clone();
            open.at = now;
            open.attempt = super::gangs::latest_attempt(&gs.members, &self.pods);
            let names: Vec<String> = stuck.iter().filter_map(|uid| self.pod_name(uid)).collect();
            let reason = format!(
                "{} member(s) told to restart in place did not within {:.0}s ({}): re-creating the gang",
                stuck.len(),
                deadline.as_secs_f64(),
                names.join(", ")
            );
            let action = Action::RestartGang {
                gang: g.clone(),
                incident: incident.clone(),
                reason,
                in_place: Vec::new(),
            };
            let class = self.gang_device_class(&g);
            let key = format!("restart-gang/{g}/{incident}{}", super::IN_PLACE_FALLBACK_SUFFIX);
            self.emit(out, key, action, class, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::test_support::*;
    use crate::pod::InPlaceRestart;
    use crate::time::Duration;

    /// A member of the four-pod gang `llama` whose pod restarts in place on exit 76.
    fn member(i: usize) -> PodInfo {
        PodInfo { in_place: Some(InPlaceRestart::AllContainers), ..gang_pod(i, &format!("node-{i}")) }
    }

    fn restarted(mut p: PodInfo, times: u32) -> PodInfo {
        p.containers[0].restart_count = times;
        p
    }

    fn restarts(acts: &[PlannedAction]) -> Vec<(Vec<String>, String)> {
        acts.iter()
            .filter_map(|a| match &a.action {
                Action::RestartGang { in_place, .. } => {
                    Some((in_place.iter().map(|p| p.name.clone()).collect(), a.idempotency_key.clone()))
                }
                _ => None,
            })
            .collect()
    }

    fn progress(e: &mut Engine, i: usize, at: i64) -> Vec<PlannedAction> {
        e.handle(
            Input::Progress { pod_uid: format!("uid-{i}"), step: 1, step_time: Duration::from_secs(1) },
            t(at),
        )
    }

    /// A hang with every member healthy: all four restart in place, none is re-created, and
    /// the restart is over when the kubelet shows each restarted (not at the progress of a
    /// member that has not restarted yet).
    #[test]
    fn a_hung_gang_of_healthy_members_restarts_in_place() {
        let mut e = engine_with(4);
        for i in 0..4 {
            e.handle(Input::PodUpsert(member(i)), t(1));
            progress(&mut e, i, 10);
        }
        let acts = e.handle(Input::Tick, t(10 + 300));
        let planned = restarts(&acts);
        assert_eq!(planned.len(), 1, "{acts:#?}");
        assert_eq!(planned[0].0, ["llama-0", "llama-1", "llama-2", "llama-3"]);
        // A member still hung answers late: its progress does not end the incident.
        progress(&mut e, 0, 320);
        assert!(e.open_gang_incident(&gang("llama")).is_some(), "not over before a restart is seen");
        for i in 0..4 {
            assert!(e.handle(Input::PodUpsert(restarted(member(i), 1)), t(330)).is_empty());
        }
        assert!(e.open_gang_incident(&gang("llama")).is_none(), "over once all four restarted");
        // No fallback later, and the gang is watched again.
        assert!(restarts(&e.handle(Input::Tick, t(330 + 600))).is_empty());
    }

    /// A member's GPU fails: it is re-created, the three healthy members restart in place, and
    /// the exit with the contract's code is not a failure of its own.
    #[test]
    fn a_member_on_a_failed_device_is_recreated_and_the_others_restart_in_place() {
        let mut e = engine_with(4);
        for i in 0..4 {
            e.handle(Input::PodUpsert(member(i)), t(1));
        }
        let acts = unhealthy(&mut e, key("node-0", 0), t(10));
        let planned = restarts(&acts);
        assert_eq!(planned.len(), 1, "{acts:#?}");
        assert_eq!(planned[0].0, ["llama-1", "llama-2", "llama-3"]);
        // llama-1 exits 76 (its container shows it, the pod still Running): nothing to decide.
        let mut exiting = member(1);
        exiting.containers[0].state = ContainerState::Terminated {
            exit_code: crate::pod::RESTART_IN_PLACE_EXIT_CODE,
            signal: None,
            reason: Some("Error".into()),
            message: None,
            finished_at: Some(t(12)),
        };
        assert!(e.handle(Input::PodUpsert(exiting), t(12)).is_empty());
        // Restarted, it runs again with the exit as its last state: still not a failure.
        let mut again = restarted(member(1), 1);
        again.containers[0].last_state = ContainerState::Terminated {
            exit_code: crate::pod::RESTART_IN_PLACE_EXIT_CODE,
            signal: None,
            reason: Some("Error".into()),
            message: None,
            finished_at: Some(t(12)),
        };
        assert!(e.handle(Input::PodUpsert(again.clone()), t(13)).is_empty());
        assert!(e.handle(Input::PodUpsert(again), t(900)).is_empty(), "not judged later either");
    }

    /// Members told to restart in place that do not (the workload ignores the contract) make
    /// the restart fall back once, after the deadline, to re-creating the whole gang.
    #[test]
    fn members_that_do_not_restart_in_place_fall_back_to_recreation_once() {
        let mut e = engine_with(4);
        for i in 0..4 {
            e.handle(Input::PodUpsert(member(i)), t(1));
        }
        let first = restarts(&unhealthy(&mut e, key("node-0", 0), t(10)));
        assert_eq!(first.len(), 1);
        // llama-1 restarts; llama-2 and llama-3 do not.
        e.handle(Input::PodUpsert(restarted(member(1), 1)), t(30));
        assert!(restarts(&e.handle(Input::Tick, t(10 + 119))).is_empty(), "not before the deadline");
        let acts = e.handle(Input::Tick, t(10 + 120));
        let fallback = restarts(&acts);
        assert_eq!(fallback.len(), 1, "{acts:#?}");
        assert!(fallback[0].0.is_empty(), "every member re-created: {fallback:?}");
        assert!(fallback[0].1.ends_with("/in-place-timeout"), "{fallback:?}");
        let why = acts.iter().find_map(|a| match &a.action {
            Action::RestartGang { reason, .. } => Some(reason.clone()),
            _ => None,
        });
        assert!(
            why.as_deref().is_some_and(|w| w.contains("ml/llama-2") && w.contains("ml/llama-3")),
            "{why:?}"
        );
        assert!(restarts(&e.handle(Input::Tick, t(10 + 240))).is_empty(), "one fallback only");
    }

    /// Pods whose spec does not restart them in place, and a cluster that switched restart in
    /// place off, are re-created as before.
    #[test]
    fn without_restart_rules_or_with_the_switch_off_every_member_is_recreated() {
        let mut e = engine_with(4);
        for i in 0..4 {
            e.handle(Input::PodUpsert(gang_pod(i, &format!("node-{i}"))), t(1));
        }
        let planned = restarts(&unhealthy(&mut e, key("node-0", 0), t(10)));
        assert_eq!(planned.len(), 1);
        assert!(planned[0].0.is_empty(), "{planned:?}");

        let safety = SafetySettings { restart_in_place: false, ..SafetySettings::default() };
        let mut e = engine_with_safety(4, safety);
        for i in 0..4 {
            e.handle(Input::PodUpsert(member(i)), t(1));
        }
        let planned = restarts(&unhealthy(&mut e, key("node-0", 0), t(10)));
        assert_eq!(planned.len(), 1);
        assert!(planned[0].0.is_empty(), "{planned:?}");
        assert!(restarts(&e.handle(Input::Tick, t(10 + 600))).is_empty(), "and no fallback");
    }

    fn gang(name: &str) -> GangId {
        GangId { namespace: "ml".into(), kind: "jobset".into(), name: name.into() }
    }
}
