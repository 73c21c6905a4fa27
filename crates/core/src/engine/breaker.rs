//! Holds on remediation: the breaker, which opens when failures correlate across many nodes
//! (a power or network event, a bad rollout) and holds every destructive step until a quiet
//! cooldown, and version holds, when failures concentrate on one driver or device plugin
//! version.

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::action::{PlannedAction, PodRef};
use crate::pod::NodeInfo;
use crate::time::Time;

use super::Engine;
use super::durable::{BreakerFailure, BreakerState, MAX_DURABLE_FAILURES};

/// Why remediation of a node is held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Hold {
    Breaker,
    Version(String),
}

#[derive(Clone, Debug, Default)]
pub(super) struct Breaker {
    pub(super) events: VecDeque<(Time, String)>,
    /// Failures per node in the window, and the version tags its first one counted in
    /// `per_version` (decremented exactly, even if the node was upgraded or deleted since).
    pub(super) per_node: HashMap<String, (u32, Vec<String>)>,
    pub(super) per_version: HashMap<String, u32>,
    pub(super) open_since: Option<Time>,
    pub(super) last_event: Option<Time>,
}

pub(super) fn version_tags(info: &NodeInfo) -> Vec<String> {
    let mut tags = Vec::new();
    if let Some(v) = &info.driver_version {
        tags.push(format!("driver {v}"));
    }
    if let Some(v) = &info.device_plugin_version {
        tags.push(format!("device plugin {v}"));
    }
    tags
}

impl Engine {
    /// The breaker as a new process must find it (`None`: nothing to keep).
    pub(super) fn durable_breaker(&self, now: Time) -> Option<BreakerState> {
        let b = &self.breaker;
        let horizon = now - self.config.safety.breaker_window;
        let recent: Vec<&(Time, String)> = b.events.iter().filter(|(t, _)| *t >= horizon).collect();
        let failures: Vec<BreakerFailure> = recent[recent.len().saturating_sub(MAX_DURABLE_FAILURES)..]
            .iter()
            .map(|(at, node)| BreakerFailure { at: *at, node: node.clone() })
            .collect();
        if failures.is_empty() && b.open_since.is_none() && self.held_versions.is_empty() {
            return None;
        }
        let node_tags = failures
            .iter()
            .filter_map(|f| b.per_node.get(&f.node).map(|(_, tags)| (f.node.clone(), tags.clone())))
            .filter(|(_, tags)| !tags.is_empty())
            .collect();
        Some(BreakerState {
            failures,
            node_tags,
            open_since: b.open_since,
            last_failure: b.last_event,
            held_versions: self.held_versions.iter().cloned().collect(),
        })
    }

    /// Put back a breaker an earlier process kept (into a new engine, before anything else).
    pub(super) fn restore_breaker(&mut self, state: BreakerState, now: Time) {
        let horizon = now - self.config.safety.breaker_window;
        let mut fresh: Vec<BreakerFailure> = state
            .failures
            .into_iter()
            .filter(|f| {
                f.at >= horizon && f.at <= now && !self.breaker.events.contains(&(f.at, f.node.clone()))
            })
            .collect();
        fresh.sort_by(|a, b| a.at.cmp(&b.at).then_with(|| a.node.cmp(&b.node)));
        fresh.truncate(MAX_DURABLE_FAILURES);
        for BreakerFailure { at, node } in fresh {
            let entry = self.breaker.per_node.entry(node.clone()).or_default();
            entry.0 += 1;
            if entry.0 == 1 {
                entry.1 = state.node_tags.get(&node).cloned().unwrap_or_default();
                for t in &entry.1 {
                    *self.breaker.per_version.entry(t.clone()).or_default() += 1;
                }
            }
            self.breaker.events.push_back((at, node));
        }
        self.breaker.events.make_contiguous().sort();
        let b = &mut self.breaker;
        b.last_event = b.last_event.max(state.last_failure.filter(|t| *t <= now));
        if b.open_since.is_none() {
            b.open_since = state.open_since.filter(|t| *t <= now);
        }
        self.held_versions.extend(state.held_versions);
    }

    pub(super) fn node_held(&self, node: &str) -> Option<Hold> {
        if self.breaker.open_since.is_some() {
            return Some(Hold::Breaker);
        }
        if self.held_versions.is_empty() {
            return None;
        }
        let info = self.nodes.get(node)?.info.as_ref()?;
        version_tags(info).into_iter().find(|t| self.held_versions.contains(t)).map(Hold::Version)
    }

    /// Say that remediation is held: the breaker's holds are counted (its opening was
    /// reported once); a version hold is reported once per node and version.
    pub(super) fn report_hold(
        &mut self,
        out: &mut Vec<PlannedAction>,
        hold: Hold,
        node: &str,
        what: String,
        now: Time,
    ) {
        match hold {
            Hold::Breaker => self.held_by_breaker += 1,
            Hold::Version(tag) => {
                let msg = format!("{what}; held: failures concentrate on {tag}");
                self.report(out, format!("held/{node}/{tag}"), "RemediationHeld", msg, now);
            }
        }
    }

    /// The pod's reference, unless remediation of its node is held (then the hold is reported
    /// as "not <doing> ns/name" and there is nothing to do).
    pub(super) fn pod_unless_held(
        &mut self,
        uid: &str,
        doing: &str,
        now: Time,
        out: &mut Vec<PlannedAction>,
    ) -> Option<PodRef> {
        let p = self.pods.get(uid)?;
        let pref = p.info.pod_ref(uid);
        let node = p.info.node.clone().unwrap_or_default();
        if let Some(hold) = self.node_held(&node) {
            let what = format!("not {doing} {}/{}", pref.namespace, pref.name);
            self.report_hold(out, hold, &node, what, now);
            return None;
        }
        Some(pref)
    }

    fn prune_breaker(&mut self, now: Time) {
        let horizon = now - self.config.safety.breaker_window;
        while let Some((t, _)) = self.breaker.events.front() {
            if *t >= horizon {
                break;
            }
            let Some((_, node)) = self.breaker.events.pop_front() else { break };
            let gone = match self.breaker.per_node.get_mut(&node) {
                Some((c, _)) => {
                    *c = c.saturating_sub(1);
                    *c == 0
                }
                None => false,
            };
            if gone && let Some((_, tags)) = self.breaker.per_node.remove(&node) {
                for t in tags {
                    if let Some(c) = self.breaker.per_version.get_mut(&t) {
                        *c = c.saturating_sub(1);
                        if *c == 0 {
                            self.breaker.per_version.remove(&t);
                        }
                    }
                }
            }
        }
    }

    /// Count a failure on a node; open the breaker or hold a version when failures correlate.
    pub(super) fn record_failure(&mut self, node: &str, now: Time, out: &mut Vec<PlannedAction>) {
        self.prune_breaker(now);
        let s = self.config.safety.clone();
        self.breaker.last_event = Some(now);
        self.breaker.events.push_back((now, node.to_string()));
        let tags = self.nodes.get(node).and_then(|n| n.info.as_ref()).map(version_tags).unwrap_or_default();
        let entry = self.breaker.per_node.entry(node.to_string()).or_default();
        entry.0 += 1;
        let first_on_node = entry.0 == 1;
        if first_on_node {
            entry.1 = tags.clone();
            for t in &tags {
                *self.breaker.per_version.entry(t.clone()).or_default() += 1;
            }
        }
        let failed_nodes = self.breaker.per_node.len();
        let fleet = self.nodes.len().max(1);
        if self.breaker.open_since.is_none() {
            let by_percent = ((s.breaker_node_percent / 100.0) * fleet as f64).ceil() as usize;
            let threshold = by_percent.max(s.breaker_min_nodes as usize).max(1);
            if failed_nodes >= threshold {
                self.breaker.open_since = Some(now);
                self.durable_changes += 1;
                let mut racks: BTreeMap<&str, usize> = BTreeMap::new();
                for n in self.breaker.per_node.keys() {
                    if let Some(r) =
                        self.nodes.get(n).and_then(|ns| ns.info.as_ref()).and_then(|i| i.rack.as_deref())
                    {
                        *racks.entry(r).or_default() += 1;
                    }
                }
                let top_rack = racks
                    .iter()
                    .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
                    .map(|(r, c)| format!("; most in rack {r} ({c} nodes)"))
                    .unwrap_or_default();
                let msg = format!(
                    "{failed_nodes} nodes failed within {:.0}s (threshold {threshold} of {fleet}){top_rack}: correlated failure (power, network, rollout), not bad devices; remediation held",
                    s.breaker_window.as_secs_f64()
                );
                self.report(out, format!("breaker-open/{}", now.as_nanos()), "BreakerOpen", msg, now);
            }
        }
        if first_on_node {
            for t in tags {
                if self.held_versions.contains(&t) {
                    continue;
                }
                let failed_v = self.breaker.per_version.get(&t).copied().unwrap_or(0) as f64;
                let total_v = self.version_nodes.get(&t).copied().unwrap_or(0).max(1) as f64;
                let other_total = fleet as f64 - total_v;
                if other_total <= 0.0 || failed_v < s.canary_min_nodes as f64 {
                    continue;
                }
                let rate_v = failed_v / total_v;
                let rate_other = (failed_nodes as f64 - failed_v).max(0.0) / other_total;
                if rate_v >= s.canary_ratio * rate_other && rate_v > rate_other {
                    self.held_versions.insert(t.clone());
                    self.durable_changes += 1;
                    let msg = format!(
                        "{failed_v:.0} of {total_v:.0} nodes running {t} failed within {:.0}s ({:.1}% vs {:.1}% elsewhere): an infrastructure problem of {t}; its nodes are held, not cycled",
                        s.breaker_window.as_secs_f64(),
                        rate_v * 100.0,
                        rate_other * 100.0
                    );
                    self.report(
                        out,
                        format!("version/{t}/{}", now.as_nanos()),
                        "VersionCorrelatedFailures",
                        msg,
                        now,
                    );
                }
            }
        }
    }

    /// The breaker closes after a quiet cooldown; a version hold ends when its nodes have no
    /// failure left in the window.
    pub(super) fn tick_breaker(&mut self, now: Time, out: &mut Vec<PlannedAction>) {
        let cooldown = self.config.safety.breaker_cooldown;
        self.prune_breaker(now);
        if let Some(since) = self.breaker.open_since
            && self.breaker.last_event.is_none_or(|t| now.since(t) >= cooldown)
        {
            self.breaker.open_since = None;
            self.durable_changes += 1;
            let key = format!("breaker-closed/{}", since.as_nanos());
            self.report(
                out,
                key,
                "BreakerClosed",
                format!("no correlated failures for {:.0}s; remediation resumes", cooldown.as_secs_f64()),
                now,
            );
        }
        let released: Vec<String> = self
            .held_versions
            .iter()
            .filter(|t| self.breaker.per_version.get(*t).copied().unwrap_or(0) == 0)
            .cloned()
            .collect();
        for t in released {
            self.held_versions.remove(&t);
            self.durable_changes += 1;
            let key = format!("version-released/{t}/{}", now.as_nanos());
            self.report(
                out,
                key,
                "VersionHoldReleased",
                format!("no recent failures on {t}; its nodes are remediated again"),
                now,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::test_support::*;

    /// 100 nodes: node-0..9 run driver 570.1 (the canary), the rest 550.9.
    fn engine_with_canary_fleet() -> Engine {
        let mut e = engine_with(100);
        for n in 0..100 {
            let v = if n < 10 { "570.1" } else { "550.9" };
            e.handle(
                Input::NodeUpsert(NodeInfo {
                    name: format!("node-{n}"),
                    boot_id: Some("b1".into()),
                    driver_version: Some(v.into()),
                    ..NodeInfo::default()
                }),
                t(1),
            );
        }
        e
    }

    #[test]
    fn version_hold_is_released_after_its_nodes_are_upgraded_or_deleted() {
        let mut e = engine_with_canary_fleet();
        for n in 0..4 {
            unhealthy(&mut e, key(&format!("node-{n}"), 0), t(10 + n as i64));
        }
        assert_eq!(e.safety_state(t(20)).held_versions, vec!["driver 570.1".to_string()]);
        // Inside the window, the failed nodes are upgraded or deleted.
        for n in 0..3 {
            e.handle(
                Input::NodeUpsert(NodeInfo {
                    name: format!("node-{n}"),
                    boot_id: Some("b1".into()),
                    driver_version: Some("580.0".into()),
                    ..NodeInfo::default()
                }),
                t(30),
            );
        }
        e.handle(Input::NodeDeleted { name: "node-3".into() }, t(31));
        let acts = e.handle(Input::Tick, t(13 + 5 * 60 + 1));
        assert_eq!(
            count(&acts, |a| matches!(a, Action::Report { reason, .. } if reason == "VersionHoldReleased")),
            1,
            "{acts:#?}"
        );
        assert!(e.safety_state(t(400)).held_versions.is_empty());
        assert!(e.breaker.per_version.is_empty(), "{:?}", e.breaker.per_version);
    }

    #[test]
    fn breaker_opens_on_correlated_failures_and_holds() {
        let mut e = engine_with(100);
        let mut all = Vec::new();
        for n in 0..20 {
            all.extend(unhealthy(&mut e, key(&format!("node-{n}"), 0), t(10 + n as i64)));
        }
        assert_eq!(count(&all, |a| matches!(a, Action::Report { reason, .. } if reason == "BreakerOpen")), 1);
        let quarantines = count(&all, |a| matches!(a, Action::QuarantineDevice { .. }));
        assert_eq!(quarantines, 9, "the 10th failure trips the breaker");
        assert!(e.safety_state(t(40)).breaker_open);
        let acts = e.handle(Input::Tick, t(40 + 15 * 60));
        assert_eq!(
            count(&acts, |a| matches!(a, Action::Report { reason, .. } if reason == "BreakerClosed")),
            1
        );
        // Still-bad devices are remediated once the breaker closes (level-triggered).
        assert!(count(&acts, |a| matches!(a, Action::QuarantineDevice { .. })) >= 1, "{acts:#?}");
    }

    #[test]
    fn version_canary_holds_its_nodes() {
        let mut e = engine_with_canary_fleet();
        let mut all = Vec::new();
        for n in 0..4 {
            all.extend(unhealthy(&mut e, key(&format!("node-{n}"), 0), t(10 + n as i64)));
        }
        assert_eq!(
            count(
                &all,
                |a| matches!(a, Action::Report { reason, .. } if reason == "VersionCorrelatedFailures")
            ),
            1,
            "{all:#?}"
        );
        assert_eq!(
            count(&all, |a| matches!(a, Action::QuarantineDevice { .. })),
            2,
            "third failure holds the version"
        );
        assert_eq!(e.safety_state(t(20)).held_versions, vec!["driver 570.1".to_string()]);
    }
}
