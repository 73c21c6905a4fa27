//! The progress breaker. Hangs, stragglers and baseline shifts come from what a workload
//! reports about its own progress, which a hostile or broken workload can forge; each can cost a
//! gang a restart. When `progress_breaker_restarts` gang restarts and member replacements caused
//! by progress reports alone were planned within `progress_breaker_window`, the breaker opens and
//! holds every further one, until `breaker_cooldown` passes without one being wanted.
//!
//! It holds nothing else. Opening the node breaker instead would let anyone who can forge
//! progress switch off devheal's handling of real device faults for the whole cluster; with this
//! breaker open, a failed device still restarts its gang (within the restart budgets).

use std::collections::{BTreeMap, VecDeque};

use crate::action::PlannedAction;
use crate::time::{Duration, Time};

use super::Engine;
use super::durable::{ProgressBreakerState, ProgressRestart};

#[derive(Clone, Debug, Default)]
pub(super) struct ProgressBreaker {
    /// When each progress-driven restart in the window was planned, and its gang's namespace.
    planned: VecDeque<(Time, String)>,
    pub(super) open_since: Option<Time>,
    /// When a progress-driven restart was last wanted (planned or held).
    last_wanted: Option<Time>,
    /// Held since the engine started.
    pub(super) held: u64,
    /// Held since it last opened.
    held_while_open: u64,
}

impl ProgressBreaker {
    /// Forget restarts planned at or before `now - window`.
    fn prune(&mut self, now: Time, window: Duration) {
        let horizon = now - window;
        while self.planned.front().is_some_and(|(t, _)| *t <= horizon) {
            self.planned.pop_front();
        }
    }

    /// "; most in namespace ml (7 of 10)": the namespace the planned restarts came from most.
    fn top_namespace(&self) -> String {
        let mut per_namespace: BTreeMap<&str, usize> = BTreeMap::new();
        for (_, ns) in &self.planned {
            *per_namespace.entry(ns).or_default() += 1;
        }
        per_namespace
            .iter()
            .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
            .map(|(ns, c)| format!("; most in namespace {ns} ({c} of {})", self.planned.len()))
            .unwrap_or_default()
    }
}

impl Engine {
    /// The progress breaker as a new process must find it (`None`: nothing to keep).
    pub(super) fn durable_progress_breaker(&self, now: Time) -> Option<ProgressBreakerState> {
        let pb = &self.progress_breaker;
        let horizon = now - self.config.safety.progress_breaker_window;
        let planned: Vec<ProgressRestart> = pb
            .planned
            .iter()
            .filter(|(t, _)| *t > horizon)
            .map(|(at, namespace)| ProgressRestart { at: *at, namespace: namespace.clone() })
            .collect();
        if planned.is_empty() && pb.open_since.is_none() {
            return None;
        }
        Some(ProgressBreakerState { planned, open_since: pb.open_since, last_wanted: pb.last_wanted })
    }

    /// Put back a progress breaker an earlier process kept (into a new engine, first).
    pub(super) fn restore_progress_breaker(&mut self, state: ProgressBreakerState, now: Time) {
        let horizon = now - self.config.safety.progress_breaker_window;
        let pb = &mut self.progress_breaker;
        for ProgressRestart { at, namespace } in state.planned {
            if at > horizon && at <= now && !pb.planned.contains(&(at, namespace.clone())) {
                pb.planned.push_back((at, namespace));
            }
        }
        pb.planned.make_contiguous().sort();
        // No more than the window ever holds: the limit (planned beyond it are held).
        let limit = self.config.safety.progress_breaker_restarts.max(1) as usize;
        while pb.planned.len() > limit {
            pb.planned.pop_front();
        }
        pb.last_wanted = pb.last_wanted.max(state.last_wanted.filter(|t| *t <= now));
        if pb.open_since.is_none() {
            pb.open_since = state.open_since.filter(|t| *t <= now);
        }
    }

    /// A restart caused by progress alone is wanted now: whether the breaker holds it (the hold
    /// is counted). A breaker closed with its window still full (a cooldown shorter than the
    /// window) opens here again.
    pub(super) fn progress_breaker_holds(&mut self, now: Time, out: &mut Vec<PlannedAction>) -> bool {
        let (limit, window) =
            (self.config.safety.progress_breaker_restarts, self.config.safety.progress_breaker_window);
        let pb = &mut self.progress_breaker;
        pb.last_wanted = Some(now);
        if pb.open_since.is_none() {
            pb.prune(now, window);
            if limit == 0 || pb.planned.len() < limit as usize {
                return false;
            }
            self.open_progress_breaker(now, out);
        }
        let pb = &mut self.progress_breaker;
        pb.held += 1;
        pb.held_while_open += 1;
        true
    }

    /// Count a gang restart or replacement caused by progress alone, just planned in
    /// `namespace`; the one that fills the window opens the breaker.
    pub(super) fn planned_progress_restart(
        &mut self,
        namespace: &str,
        now: Time,
        out: &mut Vec<PlannedAction>,
    ) {
        let (limit, window) =
            (self.config.safety.progress_breaker_restarts, self.config.safety.progress_breaker_window);
        let pb = &mut self.progress_breaker;
        pb.prune(now, window);
        pb.planned.push_back((now, namespace.to_string()));
        self.durable_changes += 1;
        if pb.open_since.is_none() && limit > 0 && pb.planned.len() >= limit as usize {
            self.open_progress_breaker(now, out);
        }
    }

    fn open_progress_breaker(&mut self, now: Time, out: &mut Vec<PlannedAction>) {
        let s = &self.config.safety;
        let (window, cooldown) = (s.progress_breaker_window.as_secs_f64(), s.breaker_cooldown.as_secs_f64());
        let pb = &mut self.progress_breaker;
        pb.open_since = Some(now);
        pb.held_while_open = 0;
        self.durable_changes += 1;
        let msg = format!(
            "{} gang restarts and replacements within {window:.0}s were caused by progress reports alone (hangs, stragglers, baseline shifts){}: what workloads report about themselves, which can be forged or broken; such restarts are held until {cooldown:.0}s pass without one, device faults are still handled",
            pb.planned.len(),
            pb.top_namespace()
        );
        self.report(
            out,
            format!("progress-breaker-open/{}", now.as_nanos()),
            "ProgressBreakerOpen",
            msg,
            now,
        );
    }

    /// The progress breaker closes after `breaker_cooldown` without a restart caused by progress
    /// alone being wanted.
    pub(super) fn tick_progress_breaker(&mut self, now: Time, out: &mut Vec<PlannedAction>) {
        let cooldown = self.config.safety.breaker_cooldown;
        let pb = &mut self.progress_breaker;
        let Some(since) = pb.open_since else { return };
        if pb.last_wanted.is_some_and(|t| now.since(t) < cooldown) {
            return;
        }
        pb.open_since = None;
        self.durable_changes += 1;
        let msg = format!(
            "no restart caused by progress reports alone wanted for {:.0}s ({} held while open); such restarts resume",
            cooldown.as_secs_f64(),
            pb.held_while_open
        );
        self.report(
            out,
            format!("progress-breaker-closed/{}", since.as_nanos()),
            "ProgressBreakerClosed",
            msg,
            now,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::test_support::*;

    fn is_report(a: &PlannedAction, reason: &str) -> bool {
        matches!(&a.action, Action::Report { reason: r, .. } if r == reason)
    }

    /// One-pod gangs `g0`, `g1`, … in namespaces `team-0`..`team-5` in turn, gang `gn` on
    /// `node-n`; uid `team-<n % 6>/g<n>`.
    fn uid(n: usize) -> String {
        format!("team-{}/g{n}", n % 6)
    }

    fn gangs(e: &mut Engine, n: usize) {
        for g in 0..n {
            let pod = one_pod_gang(&format!("team-{}", g % 6), &format!("g{g}"), &format!("node-{g}"));
            e.handle(Input::PodUpsert(pod), t(1));
        }
    }

    #[test]
    fn a_flood_of_hangs_opens_the_progress_breaker_and_device_faults_are_still_handled() {
        let safety =
            SafetySettings { breaker_cooldown: Duration::from_hours(1), ..SafetySettings::default() };
        let mut e = engine_with_safety(40, safety);
        gangs(&mut e, 38);
        let mut acts = Vec::new();
        for n in 0..36 {
            acts.extend(hung(&mut e, &uid(n), t(100), t(200 + n as i64)));
        }
        assert_eq!(count(&acts, |a| matches!(a, Action::RestartGang { .. })), 10, "{acts:#?}");
        let opened = reports(&acts, "ProgressBreakerOpen");
        assert_eq!(opened.len(), 1, "{acts:#?}");
        assert!(opened[0].starts_with("10 gang restarts and replacements within 600s"), "{}", opened[0]);
        assert!(opened[0].contains("most in namespace team-0 (2 of 10)"), "{}", opened[0]);
        // The tenth restart is planned, then the breaker opens; the other 26 hangs are held and
        // counted, not reported one by one.
        assert!(is_report(&acts[10], "ProgressBreakerOpen"), "{acts:#?}");
        assert_eq!(acts.len(), 11, "{acts:#?}");
        let s = e.safety_state(t(240));
        assert!(s.progress_breaker_open && !s.breaker_open, "{s:?}");
        assert_eq!(s.held_by_progress_breaker, 26);
        // A failed device is a fault: its gang restarts with the progress breaker open.
        let acts = unhealthy(&mut e, key("node-36", 0), t(250));
        assert_eq!(count(&acts, |a| matches!(a, Action::RestartGang { .. })), 1, "{acts:#?}");
        // A straggler (Degraded on progress reports alone) is not replaced; a member slowed by its
        // device (NVML) is.
        let mut acts = degraded(&mut e, key("node-20", 0), t(260));
        acts.extend(throttled(&mut e, key("node-37", 0), t(260)));
        acts.extend(e.handle(Input::Tick, t(260 + 20 * 60)));
        let replaced: Vec<&str> = acts
            .iter()
            .filter_map(|a| match &a.action {
                Action::ReplaceAtCheckpoint { pod, .. } => Some(pod.uid.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(replaced, [uid(37)], "{acts:#?}");
        assert_eq!(e.safety_state(t(2000)).held_by_progress_breaker, 27);
        // The straggler is still marked: only its replacement is held.
        assert_eq!(count(&acts, |a| matches!(a, Action::MarkPod { .. })), 2, "{acts:#?}");
    }

    #[test]
    fn the_progress_breaker_closes_after_a_cooldown_without_a_progress_driven_restart() {
        let safety = SafetySettings { progress_breaker_restarts: 2, ..SafetySettings::default() };
        let mut e = engine_with_safety(10, safety);
        gangs(&mut e, 4);
        let mut acts = hung(&mut e, &uid(0), t(50), t(100));
        acts.extend(hung(&mut e, &uid(1), t(50), t(110)));
        assert_eq!(count(&acts, |a| matches!(a, Action::RestartGang { .. })), 2, "{acts:#?}");
        assert_eq!(reports(&acts, "ProgressBreakerOpen").len(), 1);
        // A hang while open is held, and keeps the breaker open for another cooldown.
        assert!(hung(&mut e, &uid(2), t(50), t(400)).is_empty());
        assert!(e.handle(Input::Tick, t(400 + 899)).is_empty());
        let acts = e.handle(Input::Tick, t(400 + 900));
        let closed = reports(&acts, "ProgressBreakerClosed");
        assert_eq!(closed.len(), 1, "{acts:#?}");
        assert!(closed[0].contains("(1 held while open)"), "{}", closed[0]);
        assert!(!e.safety_state(t(1300)).progress_breaker_open);
        let acts = hung(&mut e, &uid(3), t(50), t(1400));
        assert_eq!(count(&acts, |a| matches!(a, Action::RestartGang { .. })), 1, "{acts:#?}");
    }

    #[test]
    fn a_progress_breaker_closed_within_its_window_opens_again_on_the_next_progress_restart() {
        let safety = SafetySettings {
            progress_breaker_restarts: 2,
            progress_breaker_window: Duration::from_hours(1),
            ..SafetySettings::default()
        };
        let mut e = engine_with_safety(10, safety);
        gangs(&mut e, 3);
        hung(&mut e, &uid(0), t(50), t(100));
        hung(&mut e, &uid(1), t(50), t(110));
        let closed = e.handle(Input::Tick, t(110 + 900));
        assert_eq!(reports(&closed, "ProgressBreakerClosed").len(), 1, "{closed:#?}");
        let acts = hung(&mut e, &uid(2), t(50), t(1100));
        assert_eq!(count(&acts, |a| matches!(a, Action::RestartGang { .. })), 0, "{acts:#?}");
        assert_eq!(reports(&acts, "ProgressBreakerOpen").len(), 1, "{acts:#?}");
    }
}
