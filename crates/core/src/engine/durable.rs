//! What the engine must not forget when the process that runs it restarts: the restart
//! budgets' last hour (each gang's restarts and member replacements, which also fill its
//! namespace's and the cluster's budgets), repeat-offender history (each device's incidents
//! and Degraded episodes within the lemon window), and the nodes it cordoned (with the boot
//! they were cordoned in, and any probation under way), so that a node rebooted while no
//! controller ran is still uncordoned after probation.
//!
//! [`Engine::durable`] takes it out, bounded and in a stable order; [`Engine::restore`] puts it
//! back into a new engine before it handles anything (a device not known yet gets its history
//! when it first appears). The controller keeps it in the cluster, written under its lease.
//!
//! Guarantees (checked in the tests below and in `tests/restart_budgets.rs`):
//! - restoring what an engine exported leaves a new engine's budgets exactly as spent: it
//!   plans no restart the first engine would have refused;
//! - only the last hour of restarts and the lemon window of history are kept, at most
//!   [`MAX_DURABLE_DEVICES`] devices (the most recent), so the state stays small;
//! - restoring never plans an action by itself.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::device::DeviceKey;
use crate::pod::GangId;
use crate::time::{Duration, Time};

use super::Engine;
pub use super::repairs::{NodeRepairs, RepairRequest};

/// The most devices whose history is kept.
pub const MAX_DURABLE_DEVICES: usize = 4096;

/// A gang's restarts and member replacements in the last hour.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GangRestarts {
    pub gang: GangId,
    pub times: Vec<Time>,
}

/// A device's incidents and Degraded episodes within the lemon window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceHistory {
    pub device: DeviceKey,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub incidents: Vec<Time>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub degraded_episodes: Vec<Time>,
}

/// A node the engine cordoned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeCordon {
    pub node: String,
    /// The node's boot when it was last seen (a later boot is a reboot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    /// Rebooted already: uncordoned at this time unless it fails again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probation_until: Option<Time>,
    /// Cordoned for a network fault alone: lifted when the node's agent no longer reports one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub network: bool,
}

/// What a controller restart must not lose.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DurableState {
    #[serde(default)]
    pub restarts: Vec<GangRestarts>,
    #[serde(default)]
    pub devices: Vec<DeviceHistory>,
    #[serde(default)]
    pub cordons: Vec<NodeCordon>,
    /// Evictions in the last minute (the eviction budget's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub evictions: Vec<Time>,
    /// The node breaker: failures in its window, whether it is open, version holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaker: Option<BreakerState>,
    /// The progress breaker: restarts caused by progress alone in its window, whether open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_breaker: Option<ProgressBreakerState>,
    /// Standing repair requests, with the boot each node was in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repairs: Vec<NodeRepairs>,
}

/// The most breaker failures kept (the most recent).
pub const MAX_DURABLE_FAILURES: usize = 10_000;

/// One failure the node breaker counted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BreakerFailure {
    pub at: Time,
    pub node: String,
}

/// The node breaker, as a restart must find it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BreakerState {
    #[serde(default)]
    pub failures: Vec<BreakerFailure>,
    /// The version tags each failed node's first failure counted against.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_tags: BTreeMap<String, Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_since: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<Time>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held_versions: Vec<String>,
}

/// One gang restart or replacement caused by progress alone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProgressRestart {
    pub at: Time,
    pub namespace: String,
}

/// The progress breaker, as a restart must find it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProgressBreakerState {
    #[serde(default)]
    pub planned: Vec<ProgressRestart>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_since: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_wanted: Option<Time>,
}

impl DurableState {
    pub fn is_empty(&self) -> bool {
        self.restarts.is_empty()
            && self.devices.is_empty()
            && self.cordons.is_empty()
            && self.evictions.is_empty()
            && self.breaker.is_none()
            && self.progress_breaker.is_none()
            && self.repairs.is_empty()
    }
}

impl Engine {
    /// The state a restart must not lose, as of `now`.
    pub fn durable(&self, now: Time) -> DurableState {
        let hour = now - Duration::from_hours(1);
        let lemon = now - self.config.safety.lemon_window;
        let restarts = self
            .gangs
            .iter()
            .filter_map(|(gang, gs)| {
                let times: Vec<Time> = gs.restarts.iter().copied().filter(|t| *t > hour).collect();
                (!times.is_empty()).then(|| GangRestarts { gang: gang.clone(), times })
            })
            .collect();
        let recent =
            |times: &VecDeque<Time>| times.iter().copied().filter(|t| *t >= lemon).collect::<Vec<_>>();
        let mut devices: Vec<DeviceHistory> = self
            .devices
            .iter()
            .map(|(k, st)| (k, recent(&st.incident_times), recent(&st.degraded_episodes)))
            .chain(self.restored_history.iter().map(|(k, (i, d))| (k, recent(i), recent(d))))
            .filter(|(_, i, d)| !i.is_empty() || !d.is_empty())
            .map(|(k, incidents, degraded_episodes)| DeviceHistory {
                device: k.clone(),
                incidents,
                degraded_episodes,
            })
            .collect();
        if devices.len() > MAX_DURABLE_DEVICES {
            let last = |h: &DeviceHistory| h.incidents.iter().chain(&h.degraded_episodes).max().copied();
            devices.sort_by_key(|h| std::cmp::Reverse(last(h)));
            devices.truncate(MAX_DURABLE_DEVICES);
            devices.sort_by(|a, b| a.device.cmp(&b.device));
        }
        let cordons = self
            .nodes
            .iter()
            .filter(|(_, ns)| ns.cordoned)
            .map(|(node, ns)| NodeCordon {
                node: node.clone(),
                boot_id: ns.info.as_ref().and_then(|i| i.boot_id.clone()).or_else(|| ns.cordon_boot.clone()),
                probation_until: ns.probation_until,
                network: ns.network_cordon,
            })
            .collect();
        let minute = now - Duration::from_mins(1);
        let evictions = self.evictions.iter().copied().filter(|t| *t > minute).collect();
        DurableState {
            restarts,
            devices,
            cordons,
            evictions,
            breaker: self.durable_breaker(now),
            progress_breaker: self.durable_progress_breaker(now),
            repairs: self.durable_repairs(),
        }
    }

    /// How many changes of the durable state that should be saved at once (a restart counted,
    /// a node cordoned or uncordoned) this engine has made; compare with the count at the last
    /// save. Repeat-offender history changes only with them or can wait.
    pub fn durable_changes(&self) -> u64 {
        self.durable_changes
    }

    /// Put back what [`Engine::durable`] took out of an earlier engine. Meant for a new engine,
    /// before it handles anything; restarts already in this engine are kept, not counted twice.
    pub fn restore(&mut self, state: DurableState, now: Time) {
        let hour = now - Duration::from_hours(1);
        let lemon = now - self.config.safety.lemon_window;
        for GangRestarts { gang, times } in state.restarts {
            let gs = self.gangs.entry(gang.clone()).or_default();
            let mut fresh: Vec<Time> =
                times.into_iter().filter(|t| *t > hour && *t <= now && !gs.restarts.contains(t)).collect();
            fresh.sort();
            fresh.dedup();
            for t in fresh {
                gs.restarts.push_back(t);
                self.restart_windows.record(&gang.namespace, t);
            }
            gs.restarts.make_contiguous().sort();
        }
        self.restart_windows.sort();
        let keep = |times: Vec<Time>| -> VecDeque<Time> {
            let mut v: Vec<Time> = times.into_iter().filter(|t| *t >= lemon && *t <= now).collect();
            v.sort();
            v.dedup();
            v.into()
        };
        for c in state.cordons {
            let ns = self.nodes.entry(c.node.clone()).or_default();
            if ns.cordoned {
                continue;
            }
            // Cordoned, as the earlier engine left it: it counts against the quarantine budget,
            // and a reboot seen from now on (or one already seen: probation) uncordons it.
            ns.cordoned = true;
            ns.cordon_boot = c.boot_id;
            ns.network_cordon = c.network;
            *self.quarantined_nodes.entry(c.node.clone()).or_default() += 1;
            if let Some(until) = c.probation_until {
                ns.probation_until = Some(until);
                self.node_probation.insert(c.node);
            }
        }
        let minute = now - Duration::from_mins(1);
        let mut evictions: Vec<Time> = self
            .evictions
            .iter()
            .copied()
            .chain(state.evictions.into_iter().filter(|t| *t > minute && *t <= now))
            .collect();
        evictions.sort();
        evictions.dedup();
        self.evictions = evictions.into();
        if let Some(b) = state.breaker {
            self.restore_breaker(b, now);
        }
        if let Some(pb) = state.progress_breaker {
            self.restore_progress_breaker(pb, now);
        }
        self.restore_repairs(state.repairs, now);
        for h in state.devices.into_iter().take(MAX_DURABLE_DEVICES) {
            let (incidents, episodes) = (keep(h.incidents), keep(h.degraded_episodes));
            if incidents.is_empty() && episodes.is_empty() {
                continue;
            }
            match self.devices.get_mut(&h.device) {
                Some(st) => {
                    let merge = |into: &mut VecDeque<Time>, from: VecDeque<Time>| {
                        let mut all: Vec<Time> = into.drain(..).chain(from).collect();
                        all.sort();
                        all.dedup();
                        *into = all.into();
                    };
                    merge(&mut st.incident_times, incidents);
                    merge(&mut st.degraded_episodes, episodes);
                }
                None => {
                    self.restored_history.insert(h.device, (incidents, episodes));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::{Action, RepairKind};
    use crate::engine::test_support::*;
    use crate::policy::SafetySettings;
    use crate::{Input, PlannedAction};

    fn restarts(actions: &[PlannedAction]) -> usize {
        count(actions, |a| matches!(a, Action::RestartGang { .. } | Action::ReplaceAtCheckpoint { .. }))
    }

    /// The same pods and devices a restarted controller would list again.
    fn relist(e: &mut Engine, gangs: usize) {
        for n in 0..gangs {
            e.handle(Input::PodUpsert(one_pod_gang("a", &format!("g{n}"), &format!("node-{n}"))), t(1));
        }
    }

    #[test]
    fn a_restored_engine_spends_no_more_of_the_namespace_budget_than_the_first_would() {
        let safety =
            SafetySettings { max_gang_restarts_per_hour_per_namespace: 2, ..SafetySettings::default() };
        let mut first = engine_with_safety(50, safety.clone());
        relist(&mut first, 4);
        let mut acts = unhealthy(&mut first, key("node-0", 0), t(10));
        acts.extend(unhealthy(&mut first, key("node-1", 0), t(20)));
        assert_eq!(restarts(&acts), 2, "{acts:#?}");
        let saved = first.durable(t(30));
        assert_eq!(saved.restarts.len(), 2);
        // Through JSON, as the controller keeps it.
        let text = serde_json::to_string(&saved).expect("serialises");
        let back: DurableState = serde_json::from_str(&text).expect("parses");
        assert_eq!(back, saved);

        // A new process: the same cluster listed again, the history restored first.
        let mut second = engine_with_safety(50, safety.clone());
        second.restore(back, t(40));
        assert!(second.handle(Input::Tick, t(40)).is_empty(), "restoring plans nothing");
        relist(&mut second, 4);
        let acts = unhealthy(&mut second, key("node-2", 0), t(50));
        assert_eq!(restarts(&acts), 0, "the namespace's budget is spent: {acts:#?}");
        assert_eq!(reports(&acts, "NamespaceRestartBudgetExhausted").len(), 1, "{acts:#?}");
        assert_eq!(second.safety_state(t(50)).gang_restarts_last_hour, 2);
        // Without the restore, the new process would restart it: the test can fail.
        let mut forgetful = engine_with_safety(50, safety);
        relist(&mut forgetful, 4);
        assert_eq!(restarts(&unhealthy(&mut forgetful, key("node-2", 0), t(50))), 1);
        // An hour after the first restarts, the budget is back.
        let acts = unhealthy(&mut second, key("node-3", 0), t(10 + 3600));
        assert_eq!(restarts(&acts), 1, "{acts:#?}");
        // Restoring twice counts nothing twice.
        let mut twice = engine_with_safety(50, SafetySettings::default());
        twice.restore(saved.clone(), t(40));
        twice.restore(saved, t(40));
        assert_eq!(twice.safety_state(t(40)).gang_restarts_last_hour, 2);
    }

    #[test]
    fn a_devices_repeat_offences_outlive_the_engine() {
        let mut first = engine_with(10);
        let k = key("node-0", 0);
        // Two incidents, each recovered from.
        for (fail, ok) in [(10, 1000), (2000, 3000)] {
            unhealthy(&mut first, k.clone(), t(fail));
            healthy(&mut first, k.clone(), t(ok));
            first.handle(Input::Tick, t(ok + 700));
        }
        let saved = first.durable(t(4000));
        assert_eq!(saved.devices.len(), 1, "{saved:?}");
        assert_eq!(saved.devices[0].incidents, [t(10), t(2000)]);

        // The new engine learns the device only after the restore: its third incident within
        // the lemon window asks for an inspection, not just the usual repair.
        let mut second = engine_with(10);
        second.restore(saved, t(5000));
        let acts = unhealthy(&mut second, k.clone(), t(5000));
        let inspect = |acts: &[PlannedAction]| {
            count(acts, |a| matches!(a, Action::RequestRepair { kind: RepairKind::InspectHardware, .. }))
        };
        assert_eq!(inspect(&acts), 1, "{acts:#?}");
        let mut forgetful = engine_with(10);
        assert_eq!(inspect(&unhealthy(&mut forgetful, k, t(5000))), 0, "without the history: no inspection");
    }

    /// A node cordoned for a host fault and rebooted while no controller ran is uncordoned by
    /// the next process after probation; one not rebooted stays cordoned; one rebooted before
    /// the restart finishes its probation.
    #[test]
    fn a_cordon_outlives_the_engine_and_a_reboot_meanwhile_ends_it() {
        // 40 nodes: four may be quarantined at once.
        let mut first = engine_with(40);
        for node in ["node-0", "node-1", "node-2"] {
            let acts = first.handle(host_fault(node), t(2));
            assert_eq!(count(&acts, |a| matches!(a, Action::CordonNode { .. })), 1, "{acts:#?}");
        }
        // node-2 reboots before the restart: its probation is under way.
        first.handle(node_info("node-2", "b2"), t(50));
        let saved = first.durable(t(60));
        assert_eq!(saved.cordons.len(), 3, "{saved:?}");

        // The new process restores before it sees any node; node-0 rebooted meanwhile, node-1
        // did not.
        let mut second = Engine::new(crate::EngineConfig::default());
        second.restore(saved.clone(), t(100));
        assert_eq!(second.safety_state(t(100)).quarantined_nodes, 3);
        // node-0's reboot answers the reboot requested for it (node-2's was withdrawn by the
        // first engine, node-1's still stands).
        let withdrawn = |acts: &[PlannedAction]| count(acts, |a| matches!(a, Action::WithdrawRepair { .. }));
        let acts = second.handle(node_info("node-0", "b2"), t(100));
        assert_eq!((acts.len(), withdrawn(&acts)), (1, 1), "{acts:#?}");
        assert!(second.handle(node_info("node-1", "b1"), t(100)).is_empty());
        assert!(second.handle(node_info("node-2", "b2"), t(100)).is_empty());
        assert_eq!(second.repair_requests("node-1").len(), 1);
        let uncordoned = |acts: &[PlannedAction]| -> Vec<String> {
            acts.iter()
                .filter_map(|a| match &a.action {
                    Action::UncordonNode { node, .. } => Some(node.clone()),
                    _ => None,
                })
                .collect()
        };
        // node-2's probation began at 50 s and ends at 650 s; node-0's at 100 s + 600 s.
        assert_eq!(uncordoned(&second.handle(Input::Tick, t(660))), ["node-2"]);
        assert_eq!(uncordoned(&second.handle(Input::Tick, t(710))), ["node-0"]);
        assert!(uncordoned(&second.handle(Input::Tick, t(5000))).is_empty(), "node-1 never rebooted");
        assert_eq!(second.safety_state(t(5000)).quarantined_nodes, 1);
        // Without the restore, nothing would ever uncordon them.
        let mut forgetful = Engine::new(crate::EngineConfig::default());
        forgetful.handle(node_info("node-0", "b2"), t(100));
        assert!(uncordoned(&forgetful.handle(Input::Tick, t(5000))).is_empty());
        // Restoring twice cordons nothing twice.
        let mut twice = Engine::new(crate::EngineConfig::default());
        twice.restore(saved.clone(), t(100));
        twice.restore(saved, t(100));
        assert_eq!(twice.safety_state(t(100)).quarantined_nodes, 3);
    }

    /// The node breaker (open, with its failures), the progress breaker and the eviction
    /// budget's minute are found again by a new process: it holds what the first would have.
    #[test]
    fn the_breakers_and_the_eviction_minute_outlive_the_engine() {
        let safety =
            SafetySettings { breaker_min_nodes: 3, breaker_node_percent: 0.0, ..SafetySettings::default() };
        let mut first = engine_with_safety(40, safety.clone());
        for n in 0..3 {
            first.handle(host_fault(&format!("node-{n}")), t(10 + n));
        }
        assert!(first.safety_state(t(20)).breaker_open);
        let saved = first.durable(t(20));
        assert_eq!(saved.breaker.as_ref().map(|b| b.failures.len()), Some(3), "{saved:?}");
        let text = serde_json::to_string(&saved).expect("serialises");
        let back: DurableState = serde_json::from_str(&text).expect("parses");
        assert_eq!(back, saved);

        let cordons = |acts: &[PlannedAction]| count(acts, |a| matches!(a, Action::CordonNode { .. }));
        let mut second = engine_with_safety(40, safety.clone());
        second.restore(back, t(30));
        assert!(second.safety_state(t(30)).breaker_open);
        assert_eq!(cordons(&second.handle(host_fault("node-5"), t(40))), 0, "held by the breaker");
        let mut forgetful = engine_with_safety(40, safety);
        assert_eq!(cordons(&forgetful.handle(host_fault("node-5"), t(40))), 1, "the test can fail");

        // The progress breaker and the eviction minute.
        let state = DurableState {
            evictions: vec![t(95), t(100), t(20)],
            progress_breaker: Some(ProgressBreakerState {
                planned: vec![ProgressRestart { at: t(90), namespace: "a".into() }],
                open_since: Some(t(90)),
                last_wanted: Some(t(95)),
            }),
            ..DurableState::default()
        };
        let mut third = engine_with(10);
        third.restore(state, t(110));
        let s = third.safety_state(t(110));
        assert_eq!((s.evictions_last_minute, s.progress_breaker_open), (2, true), "{s:?}");
        let kept = third.durable(t(110));
        assert_eq!(kept.evictions, [t(95), t(100)]);
        assert_eq!(kept.progress_breaker.map(|p| p.open_since), Some(Some(t(90))));
    }

    #[test]
    fn what_is_kept_is_bounded_and_old_history_is_dropped() {
        let mut e = engine_with(2);
        let state = DurableState {
            restarts: vec![GangRestarts {
                gang: GangId { namespace: "a".into(), kind: "jobset".into(), name: "g0".into() },
                times: vec![t(10), t(4000), t(4000)],
            }],
            devices: (0..MAX_DURABLE_DEVICES + 10)
                .map(|i| DeviceHistory {
                    device: key(&format!("node-{i}"), 0),
                    incidents: vec![t(4000)],
                    degraded_episodes: Vec::new(),
                })
                .collect(),
            ..DurableState::default()
        };
        e.restore(state, t(4000));
        // The restart at 10 s is more than an hour old at 4,000 s; the repeated one counts once.
        assert_eq!(e.safety_state(t(4000)).gang_restarts_last_hour, 1);
        let kept = e.durable(t(4000));
        assert_eq!(kept.devices.len(), MAX_DURABLE_DEVICES);
        assert_eq!(kept.restarts[0].times, [t(4000)]);
        // A week later nothing is left.
        assert!(
            e.durable(t(4000) + SafetySettings::default().lemon_window + Duration::from_secs(1)).is_empty()
        );
    }
}
