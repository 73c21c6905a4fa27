//! Restart budgets: gang restarts and member replacements (a replacement is a restart from the
//! next checkpoint) are limited per gang, per namespace and in the whole cluster, each over a
//! sliding hour, and those caused by progress reports alone pass the progress breaker first.
//! Both kinds of restart are admitted here, so they spend the same budgets.

use std::collections::{BTreeMap, VecDeque};

use crate::action::PlannedAction;
use crate::attribution::Verdict;
use crate::pod::{FailureClass, GangId};
use crate::time::{Duration, Time};

use super::Engine;
use super::devices::DeviceState;

/// What a gang restart or member replacement answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Cause {
    /// Evidence of a fault: a device's health from a device source, a kernel incident, a pod's
    /// own failure.
    Fault,
    /// Progress reports alone: a hang, a straggler, a baseline shift. A workload reports its
    /// own progress, so these can be forged.
    Progress,
}

/// Gang restarts and member replacements planned in the last hour, per namespace and in the
/// cluster (each gang's own are in its `GangState::restarts`, which also keep the gang's state
/// alive for its budget). Only planned restarts are kept, so the cluster budget bounds both.
#[derive(Clone, Debug, Default)]
pub(super) struct RestartWindows {
    cluster: VecDeque<Time>,
    per_namespace: BTreeMap<String, VecDeque<Time>>,
}

impl RestartWindows {
    /// Forget restarts at or before `hour` (an hour before now), and namespaces left with none.
    pub(super) fn prune(&mut self, hour: Time) {
        while self.cluster.front().is_some_and(|t| *t <= hour) {
            self.cluster.pop_front();
        }
        self.per_namespace.retain(|_, q| {
            while q.front().is_some_and(|t| *t <= hour) {
                q.pop_front();
            }
            !q.is_empty()
        });
    }

    /// Restarts in the cluster after `hour` (an hour before now).
    pub(super) fn in_cluster(&self, hour: Time) -> usize {
        self.cluster.iter().filter(|t| **t > hour).count()
    }

    fn namespace(&self, namespace: &str) -> usize {
        self.per_namespace.get(namespace).map_or(0, VecDeque::len)
    }

    /// A restart at `at` (now, or from an earlier engine, [`super::durable`], which calls
    /// [`RestartWindows::sort`] after the last).
    pub(super) fn record(&mut self, namespace: &str, at: Time) {
        self.cluster.push_back(at);
        self.per_namespace.entry(namespace.to_string()).or_default().push_back(at);
    }

    /// Restore the oldest-first order the pruning relies on.
    pub(super) fn sort(&mut self) {
        self.cluster.make_contiguous().sort();
        for q in self.per_namespace.values_mut() {
            q.make_contiguous().sort();
        }
    }
}

/// Which hourly budget refused a restart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum BudgetScope {
    Gang,
    Namespace,
    Cluster,
}

/// Why a gang restart or member replacement was not planned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum RestartRefused {
    /// The progress breaker is open; the hold is counted, not reported one by one.
    ProgressBreaker,
    /// A budget is spent: the restarts it counted in the last hour, and its limit.
    Budget { scope: BudgetScope, restarts: usize, limit: u32 },
}

/// What a refused restart was: a gang restart for an incident, or the replacement of a member
/// for a failure identity.
pub(super) enum Refused<'a> {
    Restart { incident: &'a str },
    Replacement { uid: &'a str, pod: String, identity: &'a str },
}

impl Engine {
    /// What a pod's verdict answers: progress reports alone when it is a slow-down
    /// (`DeviceDegraded`) whose suspect devices are all Degraded on `progress` reasons only
    /// (stragglers, baseline shifts) with no device incident; a fault otherwise.
    pub(super) fn cause_of(&self, verdict: &Verdict) -> Cause {
        let progress_only = verdict.class == FailureClass::DeviceDegraded
            && !verdict.suspect_devices.is_empty()
            && verdict
                .suspect_devices
                .iter()
                .all(|k| self.devices.get(k).is_some_and(DeviceState::progress_only));
        if progress_only { Cause::Progress } else { Cause::Fault }
    }

    /// Admit one gang restart or member replacement of `g`: the progress breaker first for one
    /// caused by progress alone, then the gang's, its namespace's and the cluster's hourly
    /// budgets. Nothing is taken unless every budget admits it. Once the restart is planned, a
    /// progress-driven one is counted by [`Engine::planned_progress_restart`].
    pub(super) fn admit_restart(
        &mut self,
        g: &GangId,
        cause: Cause,
        now: Time,
        out: &mut Vec<PlannedAction>,
    ) -> Result<(), RestartRefused> {
        if cause == Cause::Progress && self.progress_breaker_holds(now, out) {
            return Err(RestartRefused::ProgressBreaker);
        }
        let s = &self.config.safety;
        let (per_gang, per_namespace, cluster) = (
            s.max_gang_restarts_per_hour,
            s.max_gang_restarts_per_hour_per_namespace,
            s.max_gang_restarts_per_hour_cluster,
        );
        let refuse = |scope, restarts, limit| Err(RestartRefused::Budget { scope, restarts, limit });
        let hour = now - Duration::from_hours(1);
        let Some(gs) = self.gangs.get_mut(g) else { return refuse(BudgetScope::Gang, 0, per_gang) };
        while gs.restarts.front().is_some_and(|t| *t <= hour) {
            gs.restarts.pop_front();
        }
        if gs.restarts.len() >= per_gang as usize {
            return refuse(BudgetScope::Gang, gs.restarts.len(), per_gang);
        }
        self.restart_windows.prune(hour);
        let in_namespace = self.restart_windows.namespace(&g.namespace);
        if in_namespace >= per_namespace as usize {
            return refuse(BudgetScope::Namespace, in_namespace, per_namespace);
        }
        let in_cluster = self.restart_windows.in_cluster(hour);
        if in_cluster >= cluster as usize {
            return refuse(BudgetScope::Cluster, in_cluster, cluster);
        }
        gs.restarts.push_back(now);
        self.restart_windows.record(&g.namespace, now);
        self.durable_changes += 1;
        Ok(())
    }

    /// Say why a restart or replacement of `g` was refused: a spent budget is reported once per
    /// gang (or member) and incident; the progress breaker's holds were counted when it held
    /// them (its opening was reported once).
    pub(super) fn report_refused(
        &mut self,
        out: &mut Vec<PlannedAction>,
        refused: &RestartRefused,
        g: &GangId,
        what: Refused<'_>,
        reason: &str,
        now: Time,
    ) {
        let RestartRefused::Budget { scope, restarts, limit } = refused else { return };
        let ns = &g.namespace;
        let (name, scope_key, spent) = match scope {
            BudgetScope::Gang => (
                "GangRestartBudgetExhausted",
                "gang",
                format!("{restarts} restarts in the last hour (limit {limit})"),
            ),
            BudgetScope::Namespace => (
                "NamespaceRestartBudgetExhausted",
                "namespace",
                format!(
                    "{restarts} gang restarts and replacements in namespace {ns} in the last hour (limit {limit})"
                ),
            ),
            BudgetScope::Cluster => (
                "ClusterRestartBudgetExhausted",
                "cluster",
                format!(
                    "{restarts} gang restarts and replacements in the cluster in the last hour (limit {limit})"
                ),
            ),
        };
        let (key, msg) = match what {
            Refused::Restart { incident } => (
                format!("budget/{scope_key}/{g}/{incident}"),
                format!("not restarting gang {g}: {spent}; {reason}"),
            ),
            Refused::Replacement { uid, pod, identity } => {
                // The gang budget's key for a replacement predates the others.
                let part = if *scope == BudgetScope::Gang {
                    "replace".to_string()
                } else {
                    format!("replace-{scope_key}")
                };
                (
                    format!("budget/{part}/{uid}/{identity}"),
                    format!("not replacing {pod} in gang {g}: {spent}; {reason}"),
                )
            }
        };
        self.report(out, key, name, msg, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::test_support::*;

    fn budgets(per_namespace: u32, cluster: u32) -> SafetySettings {
        SafetySettings {
            max_gang_restarts_per_hour_per_namespace: per_namespace,
            max_gang_restarts_per_hour_cluster: cluster,
            ..SafetySettings::default()
        }
    }

    /// The gangs restarted or with a member replaced, as `namespace/jobset/name`.
    fn restarted(actions: &[PlannedAction]) -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match &a.action {
                Action::RestartGang { gang, .. } | Action::ReplaceAtCheckpoint { gang, .. } => {
                    Some(gang.to_string())
                }
                _ => None,
            })
            .collect()
    }

    /// One-pod gangs `(namespace, name)`, each on its own node (`node-0`, …, in order).
    fn gangs(e: &mut Engine, gangs: &[(&str, &str)]) {
        for (n, (ns, name)) in gangs.iter().enumerate() {
            e.handle(Input::PodUpsert(one_pod_gang(ns, name, &format!("node-{n}"))), t(1));
        }
    }

    #[test]
    fn a_namespace_spends_its_own_restart_budget_and_not_the_others() {
        // 50 nodes: five may be quarantined at once.
        let mut e = engine_with_safety(50, budgets(2, 10));
        gangs(&mut e, &[("a", "g0"), ("a", "g1"), ("a", "g2"), ("b", "g0")]);
        let mut acts = Vec::new();
        for n in 0..4 {
            acts.extend(unhealthy(&mut e, key(&format!("node-{n}"), 0), t(10 + n)));
        }
        assert_eq!(restarted(&acts), ["a/jobset/g0", "a/jobset/g1", "b/jobset/g0"], "{acts:#?}");
        let refused = reports(&acts, "NamespaceRestartBudgetExhausted");
        assert_eq!(refused.len(), 1, "{acts:#?}");
        assert!(refused[0].contains("not restarting gang a/jobset/g2"), "{}", refused[0]);
        assert!(refused[0].contains("2 gang restarts and replacements in namespace a"), "{}", refused[0]);
        // The device is still quarantined: only the restart is refused.
        assert!(e.is_quarantined(&key("node-2", 0)));
        assert_eq!(e.safety_state(t(20)).gang_restarts_last_hour, 3);
    }

    #[test]
    fn the_cluster_budget_counts_restarts_and_replacements_together() {
        let mut e = engine_with_safety(10, budgets(10, 2));
        gangs(&mut e, &[("a", "g0"), ("b", "g0"), ("c", "g0")]);
        let mut acts = unhealthy(&mut e, key("node-0", 0), t(10));
        // A member slowed by its device (not by progress reports) is replaced once the slow-down
        // lasted 20 min.
        acts.extend(throttled(&mut e, key("node-1", 0), t(20)));
        acts.extend(e.handle(Input::Tick, t(20 + 20 * 60)));
        assert_eq!(count(&acts, |a| matches!(a, Action::ReplaceAtCheckpoint { .. })), 1, "{acts:#?}");
        acts.extend(unhealthy(&mut e, key("node-2", 0), t(30 * 60)));
        assert_eq!(restarted(&acts), ["a/jobset/g0", "b/jobset/g0"], "{acts:#?}");
        let refused = reports(&acts, "ClusterRestartBudgetExhausted");
        assert_eq!(refused.len(), 1, "{acts:#?}");
        assert!(refused[0].contains("2 gang restarts and replacements in the cluster"), "{}", refused[0]);
    }

    #[test]
    fn a_replacement_over_the_namespace_budget_is_reported_once_per_member_and_episode() {
        let mut e = engine_with_safety(10, budgets(1, 10));
        gangs(&mut e, &[("a", "g0"), ("a", "g1")]);
        unhealthy(&mut e, key("node-0", 0), t(10));
        let mut acts = throttled(&mut e, key("node-1", 0), t(20));
        acts.extend(e.handle(Input::Tick, t(20 + 20 * 60)));
        acts.extend(e.handle(Input::Tick, t(20 + 25 * 60)));
        assert!(restarted(&acts).is_empty(), "{acts:#?}");
        let refused = reports(&acts, "NamespaceRestartBudgetExhausted");
        assert_eq!(refused.len(), 1, "{acts:#?}");
        assert!(refused[0].starts_with("not replacing a/g1-0 in gang a/jobset/g1"), "{}", refused[0]);
    }

    #[test]
    fn the_restart_budgets_refill_as_the_hour_slides() {
        let mut e = engine_with_safety(10, budgets(1, 1));
        gangs(&mut e, &[("a", "g0"), ("a", "g1"), ("a", "g2")]);
        let first = unhealthy(&mut e, key("node-0", 0), t(100));
        assert_eq!(restarted(&first), ["a/jobset/g0"]);
        let within = unhealthy(&mut e, key("node-1", 0), t(100 + 3599));
        assert!(restarted(&within).is_empty(), "{within:#?}");
        assert_eq!(reports(&within, "NamespaceRestartBudgetExhausted").len(), 1, "{within:#?}");
        assert_eq!(e.safety_state(t(100 + 3599)).gang_restarts_last_hour, 1);
        // An hour after the first restart, its share is free again.
        assert_eq!(e.safety_state(t(100 + 3600)).gang_restarts_last_hour, 0);
        let after = unhealthy(&mut e, key("node-2", 0), t(100 + 3600));
        assert_eq!(restarted(&after), ["a/jobset/g2"], "{after:#?}");
    }
}
