//! Gangs: members, progress and hangs, one restart per incident (an open restart absorbs the
//! members' later failures until the gang runs again), and replacement of one member at the
//! next checkpoint. Both kinds of restart pass the budgets in `budgets`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::action::{Action, PlannedAction, RepairKind};
use crate::device::{DeviceKey, Health};
use crate::pod::{FailureClass, GangId};
use crate::time::{Duration, Time};

use super::Engine;
use super::budgets::{Cause, Refused};

/// How long an open gang restart waits for the gang to make progress before it is closed anyway.
const RESTART_SETTLE: Duration = Duration::from_mins(20);

#[derive(Clone, Debug)]
pub(super) struct OpenRestart {
    pub(super) incident: String,
    pub(super) at: Time,
    /// Members to be re-created: the restart is over when each is seen re-created.
    pub(super) doomed: BTreeSet<String>,
    /// Members told to restart in place, with their pods' restart count when told: each is
    /// done when the count goes up.
    pub(super) in_place: BTreeMap<String, u32>,
    pub(super) attempt: Option<u64>,
}

#[derive(Clone, Debug, Default)]
pub(super) struct GangState {
    pub(super) members: BTreeSet<String>,
    /// Its restarts and member replacements in the last hour (its budget; see `budgets`).
    pub(super) restarts: VecDeque<Time>,
    pub(super) open_restart: Option<OpenRestart>,
    pub(super) last_progress: Option<Time>,
}

/// The latest JobSet restart attempt among `members` (what a re-created member must exceed).
pub(super) fn latest_attempt(
    members: &BTreeSet<String>,
    pods: &std::collections::HashMap<String, super::pods::PodState>,
) -> Option<u64> {
    members.iter().filter_map(|uid| pods.get(uid).and_then(|p| p.attempt)).max()
}

impl Engine {
    pub(super) fn on_progress(&mut self, uid: &str, now: Time) {
        let Some(gang) = self.pods.get(uid).and_then(|p| p.gang.clone()) else { return };
        let Some(gs) = self.gangs.get_mut(&gang) else { return };
        if let Some(open) = &gs.open_restart
            && now > open.at
            && !open.doomed.contains(uid)
            && !open.in_place.contains_key(uid)
        {
            // The restarted gang makes progress again: the incident is over.
            gs.open_restart = None;
            self.restarting.remove(&gang);
        }
        if gs.open_restart.is_none() {
            gs.last_progress = Some(now);
            self.progressing.insert(gang);
        }
    }

    pub(super) fn on_hung(
        &mut self,
        uid: &str,
        since: Time,
        evidence: &str,
        now: Time,
        out: &mut Vec<PlannedAction>,
    ) {
        let Some(p) = self.pods.get(uid) else { return };
        let Some(g) = p.gang.clone() else {
            let key = format!("hang/{uid}/{}", since.as_nanos());
            let msg = format!("{}/{} makes no progress: {evidence}", p.info.namespace, p.info.name);
            self.report(out, key, "WorkloadHung", msg, now);
            return;
        };
        if self.gangs.get(&g).is_none_or(|gs| gs.open_restart.is_some()) {
            return;
        }
        self.restart_hung_gang(&g, since, evidence, now, out);
    }

    /// A gang whose last progress was at `since` is hung (the engine's own silence check, or a
    /// hang confirmed from the agents): it stops being watched and is restarted, one incident
    /// per silence.
    fn restart_hung_gang(
        &mut self,
        g: &GangId,
        since: Time,
        reason: &str,
        now: Time,
        out: &mut Vec<PlannedAction>,
    ) {
        self.progressing.remove(g);
        // The hang is the job interruption that confirms a held NVLink error on a member's
        // device: it fails now, and its gang restart is this one.
        let held: Vec<DeviceKey> = self
            .held_nvlink
            .iter()
            .filter(|k| {
                self.devices.get(*k).is_some_and(|d| {
                    d.pods.iter().any(|uid| self.pods.get(uid).is_some_and(|p| p.gang.as_ref() == Some(g)))
                })
            })
            .cloned()
            .collect();
        self.confirm_nvlink(&held, since, now, out);
        let (class, cause) = self.hang_blame(g);
        let reason = match self.gang_network_fault(g) {
            Some((_, _, why)) if class == FailureClass::Infrastructure => format!("{reason}; {why}"),
            _ => reason.to_string(),
        };
        let reason = reason.as_str();
        let incident = format!("hang/{g}/{}", since.as_nanos());
        if let Some(gs) = self.gangs.get_mut(g) {
            gs.last_progress = None;
        }
        self.restart_gang(g, &incident, reason, class, cause, now, out);
    }

    /// What a hang of `g` answers: the workload's own reports (or their absence) say it is hung;
    /// only a member's failed device, or a member's node whose network is at fault, makes the
    /// restart answer a fault.
    /// A member's node with a network fault makes the hang the network's (`infrastructure`, a
    /// fault), unless a member's device failed.
    pub(super) fn hang_blame(&self, g: &GangId) -> (FailureClass, Cause) {
        let class = self.gang_device_class(g);
        if class != FailureClass::DeviceFailure && self.gang_network_fault(g).is_some() {
            return (FailureClass::Infrastructure, Cause::Fault);
        }
        let cause = if class == FailureClass::DeviceFailure { Cause::Fault } else { Cause::Progress };
        (class, cause)
    }

    /// The class a hang is blamed on: the worst device health among the gang's members.
    pub(super) fn gang_device_class(&self, g: &GangId) -> FailureClass {
        if !self.gangs.contains_key(g) {
            return FailureClass::Application;
        }
        let mut class = FailureClass::Application;
        for k in &self.unwell {
            let Some(d) = self.devices.get(k) else { continue };
            if !matches!(d.health, Health::Unhealthy | Health::Degraded) {
                continue;
            }
            let held =
                d.pods.iter().any(|uid| self.pods.get(uid).is_some_and(|p| p.gang.as_ref() == Some(g)));
            match d.health {
                Health::Unhealthy if held => return FailureClass::DeviceFailure,
                Health::Degraded if held => class = FailureClass::DeviceDegraded,
                _ => {}
            }
        }
        class
    }

    /// Plan the replacement of a slow gang member at the gang's next checkpoint: one at a time
    /// per gang and incident, held like any remediation, and within the restart budgets (the
    /// replacement is a restart from that checkpoint).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn replace_at_checkpoint(
        &mut self,
        uid: &str,
        g: &GangId,
        devices: Vec<DeviceKey>,
        identity: &str,
        reason: &str,
        class: FailureClass,
        cause: Cause,
        now: Time,
        out: &mut Vec<PlannedAction>,
    ) {
        let Some(pref) = self.pod_unless_held(uid, "replacing at the next checkpoint", now, out) else {
            return;
        };
        let key = format!("replace/{uid}/{identity}");
        if self.issued.contains_key(&key) {
            return;
        }
        // The gang restarting anyway: the member is replaced if its device is quarantined or it
        // fails again; a second restart is not worth it.
        if self.gangs.get(g).is_none_or(|gs| gs.open_restart.is_some()) {
            return;
        }
        if let Err(refused) = self.admit_restart(g, cause, now, out) {
            let pod = format!("{}/{}", pref.namespace, pref.name);
            self.report_refused(out, &refused, g, Refused::Replacement { uid, pod, identity }, reason, now);
            return;
        }
        let action = Action::ReplaceAtCheckpoint {
            pod: pref,
            gang: g.clone(),
            devices: devices.clone(),
            reason: reason.to_string(),
        };
        if self.emit(out, key, action, class, now) {
            self.replacing.insert(uid.to_string(), devices);
            if cause == Cause::Progress {
                self.planned_progress_restart(&g.namespace, now, out);
            }
        }
    }

    /// A member marked for replacement at its gang's checkpoint exited with
    /// [`crate::pod::REPLACE_EXIT_CODE`]: it wrote its checkpoint and left, as the contract asks.
    /// Only it is replaced: its slow devices are quarantined (so that its workload controller
    /// places the new member elsewhere), the gang is not restarted, and the exit is not judged a
    /// failure. Returns whether this was such an exit.
    pub(super) fn replaced_at_checkpoint(
        &mut self,
        uid: &str,
        pod: &crate::pod::PodInfo,
        now: Time,
        out: &mut Vec<PlannedAction>,
    ) -> bool {
        let exited = pod.containers.iter().any(|c| {
            matches!(c.state, crate::pod::ContainerState::Terminated { exit_code, .. } if exit_code == crate::pod::REPLACE_EXIT_CODE)
        });
        if !exited || !self.replacing.contains_key(uid) {
            return false;
        }
        let devices = self.replacing.remove(uid).unwrap_or_default();
        let who = format!("{}/{}", pod.namespace, pod.name);
        let reason =
            format!("{who} left at its checkpoint to be replaced (exit {})", crate::pod::REPLACE_EXIT_CODE);
        // Only those still slow: a device whose slow-down ended since is not kept off.
        let devices: Vec<DeviceKey> = devices
            .into_iter()
            .filter(|d| self.devices.get(d).is_some_and(|st| st.health != Health::Healthy))
            .collect();
        for d in &devices {
            self.remediate_device(d, &format!("replace/{uid}"), RepairKind::None, &reason, now, out);
        }
        let listed: Vec<String> = devices.iter().map(|d| d.to_string()).collect();
        let msg = format!("{reason}; its slow devices kept off: {}", listed.join(", "));
        self.report(out, format!("replaced/{uid}"), "MemberReplacedAtCheckpoint", msg, now);
        true
    }

    /// Restart the whole gang once for `incident`, unless a restart is already planned, a
    /// member's node is held, or the restart budgets (and, for a restart caused by progress
    /// alone, the progress breaker) refuse it.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn restart_gang(
        &mut self,
        g: &GangId,
        incident: &str,
        reason: &str,
        class: FailureClass,
        cause: Cause,
        now: Time,
        out: &mut Vec<PlannedAction>,
    ) {
        let held = {
            let Some(gs) = self.gangs.get(g) else { return };
            if gs.open_restart.is_some() {
                // One restart per incident: this failure joins the restart already planned.
                return;
            }
            // Held when any member's node is held (breaker, version canary); with neither in
            // force, no node is held and the members need not be looked at.
            if self.breaker.open_since.is_none() && self.held_versions.is_empty() {
                None
            } else {
                gs.members
                    .iter()
                    .filter_map(|uid| self.pods.get(uid).and_then(|p| p.info.node.as_deref()))
                    .find_map(|n| self.node_held(n).map(|h| (n.to_string(), h)))
            }
        };
        if let Some((node, hold)) = held {
            self.report_hold(out, hold, &node, format!("not restarting gang {g}: {reason}"), now);
            self.defer_restart(g, incident, reason, class, cause, now);
            return;
        }
        let key = format!("restart-gang/{g}/{incident}");
        if self.issued.contains_key(&key) {
            return;
        }
        if let Err(refused) = self.admit_restart(g, cause, now, out) {
            self.report_refused(out, &refused, g, Refused::Restart { incident }, reason, now);
            self.defer_restart(g, incident, reason, class, cause, now);
            return;
        }
        let in_place = self.in_place_members(g);
        let Some(gs) = self.gangs.get_mut(g) else { return };
        let attempt = latest_attempt(&gs.members, &self.pods);
        let doomed =
            gs.members.iter().filter(|uid| !in_place.iter().any(|(r, _)| &r.uid == *uid)).cloned().collect();
        gs.open_restart = Some(OpenRestart {
            incident: incident.to_string(),
            at: now,
            doomed,
            in_place: in_place.iter().map(|(r, restarts)| (r.uid.clone(), *restarts)).collect(),
            attempt,
        });
        gs.last_progress = None;
        self.progressing.remove(g);
        self.restarting.insert(g.clone());
        let action = Action::RestartGang {
            gang: g.clone(),
            incident: incident.to_string(),
            reason: reason.to_string(),
            in_place: in_place.into_iter().map(|(r, _)| r).collect(),
        };
        if self.emit(out, key, action, class, now) && cause == Cause::Progress {
            self.planned_progress_restart(&g.namespace, now, out);
        }
    }

    /// The restarting gangs whose open restart (none: already closed) `keep` picks.
    pub(super) fn restarting_where(&self, keep: impl Fn(Option<&OpenRestart>) -> bool) -> Vec<GangId> {
        self.restarting
            .iter()
            .filter(|g| keep(self.gangs.get(*g).and_then(|gs| gs.open_restart.as_ref())))
            .cloned()
            .collect()
    }

    /// Open restarts settle (the gang made progress, or `RESTART_SETTLE` passed); gangs silent
    /// for `hang_timeout` are hung.
    pub(super) fn tick_gangs(&mut self, now: Time, out: &mut Vec<PlannedAction>) {
        self.in_place_fallbacks(now, out);
        let hang_timeout = self.config.safety.hang_timeout;
        let settled = self.restarting_where(|o| o.is_none_or(|o| now.since(o.at) >= RESTART_SETTLE));
        for g in settled {
            self.restarting.remove(&g);
            if let Some(gs) = self.gangs.get_mut(&g) {
                gs.open_restart = None;
            }
        }
        if hang_timeout > Duration::ZERO {
            let hung: Vec<(GangId, Time)> = self
                .progressing
                .iter()
                .filter_map(|g| {
                    let gs = self.gangs.get(g)?;
                    let last = gs.last_progress?;
                    (gs.open_restart.is_none() && !gs.members.is_empty() && now.since(last) >= hang_timeout)
                        .then(|| (g.clone(), last))
                })
                .collect();
            for (g, last) in hung {
                let reason = format!("no progress for {:.0}s", now.since(last).as_secs_f64());
                self.restart_hung_gang(&g, last, &reason, now, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::test_support::*;

    /// A slow member whose eight devices all turn Degraded: nothing until the slow-down has
    /// lasted `degraded_replace_after`, then one mark and one replacement at the next checkpoint
    /// (not eight), and none again for the same episode.
    #[test]
    fn a_lasting_slow_member_is_replaced_at_the_next_checkpoint_once() {
        let mut e = engine_with(2);
        for (i, node) in ["node-0", "node-1"].into_iter().enumerate() {
            let mut p = gang_pod(i, node);
            p.devices = (0..8).map(|d| key(node, d)).collect();
            e.handle(Input::PodUpsert(p), t(1));
        }
        let mut early = Vec::new();
        for d in 0..8 {
            early.extend(degraded(&mut e, key("node-0", d), t(100)));
        }
        early.extend(e.handle(Input::Tick, t(100 + 19 * 60)));
        assert!(early.is_empty(), "a 19-minute slow-down is left alone: {early:?}");
        let acts = e.handle(Input::Tick, t(100 + 20 * 60));
        let replaced: Vec<&PlannedAction> =
            acts.iter().filter(|a| matches!(a.action, Action::ReplaceAtCheckpoint { .. })).collect();
        assert_eq!(replaced.len(), 1, "{acts:?}");
        let Action::ReplaceAtCheckpoint { pod, devices, .. } = &replaced[0].action else { unreachable!() };
        assert_eq!(pod.uid, "uid-0");
        assert_eq!(devices.len(), 8, "the finding names every Degraded device of the member");
        assert_eq!(count(&acts, |a| matches!(a, Action::MarkPod { .. })), 1);
        let mut later = e.handle(Input::Tick, t(100 + 40 * 60));
        later.extend(degraded(&mut e, key("node-0", 0), t(100 + 41 * 60)));
        // The mark updates the pod; that update is the same episode, not a new decision.
        let mut p = gang_pod(0, "node-0");
        p.devices = (0..8).map(|d| key("node-0", d)).collect();
        later.extend(e.handle(Input::PodUpsert(p), t(100 + 42 * 60)));
        assert!(later.is_empty(), "one replacement per episode: {later:?}");
        assert!(!e.is_quarantined(&key("node-0", 0)));
    }

    /// A gang whose member 0 on node-0 was planned for replacement at the checkpoint.
    fn marked_for_replacement() -> Engine {
        let mut e = engine_with(2);
        for (i, node) in ["node-0", "node-1"].into_iter().enumerate() {
            let mut p = gang_pod(i, node);
            p.devices = (0..2).map(|d| key(node, d)).collect();
            e.handle(Input::PodUpsert(p), t(1));
        }
        for d in 0..2 {
            degraded(&mut e, key("node-0", d), t(100));
        }
        let acts = e.handle(Input::Tick, t(100 + 20 * 60));
        assert_eq!(count(&acts, |a| matches!(a, Action::ReplaceAtCheckpoint { .. })), 1, "{acts:#?}");
        e
    }

    fn member_0(code: i32) -> crate::pod::PodInfo {
        let mut p = failed(gang_pod(0, "node-0"), code);
        p.devices = (0..2).map(|d| key("node-0", d)).collect();
        p
    }

    #[test]
    fn a_marked_member_that_leaves_at_its_checkpoint_is_replaced_alone_off_its_slow_devices() {
        let mut e = marked_for_replacement();
        let acts = e.handle(Input::PodUpsert(member_0(crate::pod::REPLACE_EXIT_CODE)), t(100 + 30 * 60));
        assert_eq!(count(&acts, |a| matches!(a, Action::RestartGang { .. })), 0, "{acts:#?}");
        assert_eq!(count(&acts, |a| matches!(a, Action::QuarantineDevice { .. })), 2, "{acts:#?}");
        assert_eq!(reports(&acts, "MemberReplacedAtCheckpoint").len(), 1, "{acts:#?}");
        assert!(e.is_quarantined(&key("node-0", 1)));
        // Seen again (the pod object is updated while it is cleaned up): nothing more.
        assert!(
            e.handle(Input::PodUpsert(member_0(crate::pod::REPLACE_EXIT_CODE)), t(100 + 31 * 60)).is_empty()
        );
    }

    #[test]
    fn a_marked_member_that_fails_otherwise_is_a_failure_and_an_unmarked_exit_75_too() {
        let mut e = marked_for_replacement();
        let acts = e.handle(Input::PodUpsert(member_0(1)), t(100 + 30 * 60));
        assert_eq!(reports(&acts, "MemberReplacedAtCheckpoint").len(), 0, "{acts:#?}");
        assert_eq!(count(&acts, |a| matches!(a, Action::QuarantineDevice { .. })), 0, "{acts:#?}");

        // Member 1 was never marked: its exit 75 is judged as any exit.
        let mut e = marked_for_replacement();
        let mut p = failed(gang_pod(1, "node-1"), crate::pod::REPLACE_EXIT_CODE);
        p.devices = (0..2).map(|d| key("node-1", d)).collect();
        let acts = e.handle(Input::PodUpsert(p), t(100 + 30 * 60));
        assert_eq!(reports(&acts, "MemberReplacedAtCheckpoint").len(), 0, "{acts:#?}");
    }

    #[test]
    fn a_device_whose_slow_down_ended_before_the_checkpoint_is_not_kept_off() {
        let mut e = marked_for_replacement();
        healthy(&mut e, key("node-0", 1), t(100 + 25 * 60));
        let acts = e.handle(Input::PodUpsert(member_0(crate::pod::REPLACE_EXIT_CODE)), t(100 + 30 * 60));
        assert_eq!(count(&acts, |a| matches!(a, Action::QuarantineDevice { .. })), 1, "{acts:#?}");
        assert!(e.is_quarantined(&key("node-0", 0)) && !e.is_quarantined(&key("node-0", 1)));
    }

    #[test]
    fn dead_device_restarts_gang_once_and_quarantines() {
        let mut e = engine_with(100);
        for i in 0..4 {
            e.handle(Input::PodUpsert(gang_pod(i, &format!("node-{i}"))), t(1));
        }
        let acts = unhealthy(&mut e, key("node-2", 0), t(10));
        assert_eq!(count(&acts, |a| matches!(a, Action::RestartGang { .. })), 1, "{acts:#?}");
        assert_eq!(count(&acts, |a| matches!(a, Action::QuarantineDevice { .. })), 1);
        assert_eq!(
            count(&acts, |a| matches!(a, Action::RequestRepair { kind: RepairKind::ResetDevice, .. })),
            1
        );
        // The other members now fail (NCCL errors): absorbed into the same incident.
        let mut later = Vec::new();
        for i in 0..4 {
            later.extend(e.handle(Input::PodUpsert(failed(gang_pod(i, &format!("node-{i}")), 1)), t(20)));
        }
        assert_eq!(count(&later, |a| matches!(a, Action::RestartGang { .. })), 0, "{later:#?}");
    }

    #[test]
    fn hang_restarts_gang_after_timeout() {
        let mut e = engine_with(4);
        for i in 0..4 {
            e.handle(Input::PodUpsert(gang_pod(i, &format!("node-{i}"))), t(1));
        }
        for i in 0..4 {
            e.handle(
                Input::Progress { pod_uid: format!("uid-{i}"), step: 1, step_time: Duration::from_secs(1) },
                t(10),
            );
        }
        assert!(e.handle(Input::Tick, t(200)).is_empty());
        let acts = e.handle(Input::Tick, t(10 + 300));
        assert_eq!(count(&acts, |a| matches!(a, Action::RestartGang { .. })), 1, "{acts:#?}");
        assert!(e.handle(Input::Tick, t(700)).is_empty(), "no second restart without new progress");
    }
}
