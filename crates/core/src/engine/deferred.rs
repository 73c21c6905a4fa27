//! Gang restarts that were wanted but held (by a spent restart budget, the progress breaker, the
//! node breaker or a version hold), retried when the hold ends, so that a gang that stays hung
//! or broken is restarted as soon as it may be, not only at its next failure.
//!
//! One deferred restart per gang (the first incident's; later incidents of the same gang join
//! it). Each Tick looks at them again, level-triggered: a deferred restart is dropped when the
//! gang no longer needs it, that is when
//! - the gang made progress after the restart was refused (it recovered by itself),
//! - the gang restarted by other means (an open restart, or none of the members that were there
//!   when it was refused is left: its own controller replaced them), or
//! - it has waited [`DEFER_LIMIT`] (then it is reported once: a person should look);
//!
//! and otherwise it is offered to [`Engine::restart_gang`] again, which checks every budget and
//! hold as for a new restart. While the progress breaker or the node breaker is open, nothing is
//! offered (offering would count as wanting a restart, which keeps a breaker open).
//!
//! Bounded: at most one entry per gang the engine knows.

use std::collections::BTreeSet;

use crate::action::PlannedAction;
use crate::pod::{FailureClass, GangId};
use crate::time::{Duration, Time};

use super::Engine;
use super::budgets::Cause;

/// How long a held restart is retried before it is given up and reported.
pub(super) const DEFER_LIMIT: Duration = Duration::from_hours(1);

#[derive(Clone, Debug)]
pub(super) struct DeferredRestart {
    incident: String,
    reason: String,
    class: FailureClass,
    cause: Cause,
    policy: Option<String>,
    /// When it was first refused.
    at: Time,
    /// The gang's members then.
    members: BTreeSet<String>,
}

impl Engine {
    /// A restart of `g` for `incident` was refused or held: keep it to retry.
    pub(super) fn defer_restart(
        &mut self,
        g: &GangId,
        incident: &str,
        reason: &str,
        class: FailureClass,
        cause: Cause,
        now: Time,
    ) {
        if self.deferred_restarts.contains_key(g) {
            return;
        }
        let Some(gs) = self.gangs.get(g) else { return };
        let d = DeferredRestart {
            incident: incident.to_string(),
            reason: reason.to_string(),
            class,
            cause,
            policy: self.acting_for.clone(),
            at: now,
            members: gs.members.clone(),
        };
        self.deferred_restarts.insert(g.clone(), d);
    }

    /// Offer each deferred restart again, unless its gang no longer needs it.
    pub(super) fn retry_deferred_restarts(&mut self, now: Time, out: &mut Vec<PlannedAction>) {
        if self.deferred_restarts.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut self.deferred_restarts);
        for (g, d) in pending {
            let still_needed = self.gangs.get(&g).is_some_and(|gs| {
                gs.open_restart.is_none()
                    && gs.last_progress.is_none_or(|t| t <= d.at)
                    && gs.members.iter().any(|m| d.members.contains(m))
            });
            if !still_needed {
                continue;
            }
            if now.since(d.at) >= DEFER_LIMIT {
                let msg = format!(
                    "gang {g} still wanted a restart after {:.0} min of holds and spent budgets; devheal gives up on it: {}",
                    DEFER_LIMIT.as_secs_f64() / 60.0,
                    d.reason
                );
                self.report(out, format!("deferred-expired/{g}/{}", d.incident), "RestartGivenUp", msg, now);
                continue;
            }
            let breaker_open = self.breaker.open_since.is_some()
                || (d.cause == Cause::Progress && self.progress_breaker.open_since.is_some());
            if breaker_open {
                self.deferred_restarts.insert(g, d);
                continue;
            }
            // A hang is blamed as it would be now: a member's device that failed meanwhile makes
            // it a fault, one that recovered makes it progress alone again.
            let hang = d.incident.starts_with("hang/");
            let (class, cause) = if hang { self.hang_blame(&g) } else { (d.class, d.cause) };
            if cause == Cause::Progress && self.progress_breaker.open_since.is_some() {
                self.deferred_restarts.insert(g, d);
                continue;
            }
            self.acting_for = d.policy.clone();
            self.restart_gang(&g, &d.incident, &d.reason, class, cause, now, out);
            self.acting_for = None;
            // Refused again: it keeps the time it was first refused.
            if let Some(again) = self.deferred_restarts.get_mut(&g) {
                again.at = d.at;
                again.members = d.members;
            }
        }
    }

    /// Gang restarts waiting for a hold to end (for reports and tests).
    pub fn deferred_restarts(&self) -> Vec<GangId> {
        self.deferred_restarts.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::Action;
    use crate::engine::test_support::*;
    use crate::pod::PodInfo;
    use crate::policy::SafetySettings;

    fn restarted(actions: &[PlannedAction]) -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match &a.action {
                Action::RestartGang { gang, .. } => Some(gang.to_string()),
                _ => None,
            })
            .collect()
    }

    /// A restart refused by the namespace's budget is carried out when the budget refills, once.
    #[test]
    fn a_restart_refused_by_a_budget_happens_when_the_budget_refills() {
        let safety =
            SafetySettings { max_gang_restarts_per_hour_per_namespace: 1, ..SafetySettings::default() };
        let mut e = engine_with_safety(10, safety);
        for (n, name) in ["g0", "g1"].iter().enumerate() {
            e.handle(Input::PodUpsert(one_pod_gang("a", name, &format!("node-{n}"))), t(1));
        }
        assert_eq!(restarted(&unhealthy(&mut e, key("node-0", 0), t(100))), ["a/jobset/g0"]);
        let acts = unhealthy(&mut e, key("node-1", 0), t(200));
        assert!(restarted(&acts).is_empty(), "{acts:#?}");
        assert_eq!(e.deferred_restarts().len(), 1);
        assert!(restarted(&e.handle(Input::Tick, t(100 + 3599))).is_empty(), "the hour is not over");
        let acts = e.handle(Input::Tick, t(100 + 3600));
        assert_eq!(restarted(&acts), ["a/jobset/g1"], "{acts:#?}");
        assert!(e.deferred_restarts().is_empty());
        assert!(restarted(&e.handle(Input::Tick, t(100 + 3700))).is_empty(), "once");
    }

    /// A gang that recovered by itself, or was replaced by its own controller, is not restarted
    /// when the hold ends.
    #[test]
    fn a_gang_that_no_longer_needs_it_is_not_restarted_later() {
        let safety =
            SafetySettings { max_gang_restarts_per_hour_per_namespace: 1, ..SafetySettings::default() };
        let mut e = engine_with_safety(10, safety);
        for (n, name) in ["g0", "g1", "g2"].iter().enumerate() {
            e.handle(Input::PodUpsert(one_pod_gang("a", name, &format!("node-{n}"))), t(1));
        }
        unhealthy(&mut e, key("node-0", 0), t(100));
        unhealthy(&mut e, key("node-1", 0), t(200));
        unhealthy(&mut e, key("node-2", 0), t(300));
        assert_eq!(e.deferred_restarts().len(), 2);
        // g1 reports progress again; g2's pod is replaced by its own controller.
        e.handle(
            Input::Progress { pod_uid: "a/g1".into(), step: 10, step_time: Duration::from_secs(1) },
            t(400),
        );
        e.handle(Input::PodDeleted { uid: "a/g2".into() }, t(500));
        let replaced = PodInfo { uid: "a/g2-new".into(), ..one_pod_gang("a", "g2", "node-3") };
        e.handle(Input::PodUpsert(replaced), t(510));
        // g1 keeps reporting (no hang of its own).
        e.handle(
            Input::Progress { pod_uid: "a/g1".into(), step: 20, step_time: Duration::from_secs(1) },
            t(3650),
        );
        let acts = e.handle(Input::Tick, t(100 + 3600));
        assert!(restarted(&acts).is_empty(), "{acts:#?}");
        assert!(e.deferred_restarts().is_empty());
    }

    /// A restart caused by progress alone, held by the open progress breaker, is not offered
    /// while it is open (that would keep it open) and happens once it closed.
    #[test]
    fn a_hang_held_by_the_progress_breaker_is_restarted_after_it_closes() {
        let safety = SafetySettings { progress_breaker_restarts: 1, ..SafetySettings::default() };
        let cooldown = safety.breaker_cooldown;
        let mut e = engine_with_safety(10, safety);
        for (n, name) in ["g0", "g1"].iter().enumerate() {
            e.handle(Input::PodUpsert(one_pod_gang("a", name, &format!("node-{n}"))), t(1));
        }
        let hung = |e: &mut Engine, name: &str, at: i64| {
            e.handle(
                Input::Hung { pod_uid: format!("a/{name}"), since: t(at - 50), evidence: "silent".into() },
                t(at),
            )
        };
        assert_eq!(restarted(&hung(&mut e, "g0", 100)), ["a/jobset/g0"]);
        let acts = hung(&mut e, "g1", 200);
        assert!(restarted(&acts).is_empty(), "{acts:#?}");
        assert_eq!(e.deferred_restarts().len(), 1);
        let before = e.safety_state(t(300)).held_by_progress_breaker;
        let cooldown = cooldown.as_secs_f64() as i64;
        for s in (300..200 + cooldown).step_by(30) {
            assert!(restarted(&e.handle(Input::Tick, t(s))).is_empty());
        }
        assert_eq!(e.safety_state(t(300)).held_by_progress_breaker, before, "not offered while open");
        let mut acts = Vec::new();
        for s in (200 + cooldown..200 + cooldown + 60).step_by(10) {
            acts.extend(e.handle(Input::Tick, t(s)));
        }
        assert_eq!(restarted(&acts), ["a/jobset/g1"], "{acts:#?}");
    }
}
