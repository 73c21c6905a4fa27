//! The rollout gate's decision for one plan and one pass: from the plan, its status (the
//! gate's memory) and the [`View`] of the cluster, the next status and the steps to take.
//! Pure and level-triggered: a pass repeated (a lost write, a restarted controller) decides the
//! same steps again, and each step is idempotent (deletions carry the pod's UID).
//!
//! A pass, in order: the plan is valid and the DaemonSet updates `OnDelete` → the revisions are
//! fixed at the start (from: what most of the pool runs; to: the current template) → rolling
//! back goes on if it began → a changed template pauses → the health check
//! ([`super::health`]) pauses or starts a rollback → an operator's pause holds → nodes taken up
//! get their old pod deleted (after a drain, when asked) → a stage that is full and Ready soaks,
//! then the next begins → new nodes are taken up within the budget, skipping nodes whose devices
//! run training gangs unless allowed → when no node is left, the plan is complete.

use devheal_core::{Duration, Time};
use devheal_k8s::crd::k8s_time;
use devheal_k8s::pod::time_from_k8s;
use devheal_k8s::upgrade_plan::{RevisionRef, UpgradeNodeStatus, UpgradePhase, UpgradePlanStatus};

use super::health;
use super::validate::{PlanError, ValidPlan};
use super::view::{NodeView, Revision, View};

/// A change the gate makes in the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Delete the DaemonSet's old pod on `node`; the DaemonSet controller creates the new one
    /// from the current template.
    DeletePod { namespace: String, name: String, uid: String, node: String },
    /// Mark `node` unschedulable (with the gate's annotation) before draining it.
    Cordon { node: String },
    /// Undo the gate's cordon once the node's new pod is Ready.
    Uncordon { node: String },
    /// Evict a device pod from a node being drained (Eviction API: PodDisruptionBudgets hold).
    EvictPod { namespace: String, name: String, uid: String, node: String },
    /// Put the DaemonSet's template back to this ControllerRevision's (rollback).
    RestoreTemplate { revision: String },
}

/// An Event about the plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GateEvent {
    pub warning: bool,
    /// `UpgradeStageStarted`, `UpgradePaused`, `UpgradeRollingBack`, `UpgradeRolledBack`,
    /// `UpgradeCompleted`, `UpgradeInvalid`.
    pub reason: &'static str,
    pub message: String,
}

/// What one pass decided.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub status: UpgradePlanStatus,
    pub steps: Vec<Step>,
    pub events: Vec<GateEvent>,
}

/// Reasons of a pause that only a new plan lifts (a failed health check).
pub const HEALTH_REASONS: [&str; 5] = [
    "NewPodNotReady",
    "DevicesNotAdvertised",
    "DevicesUnhealthy",
    "DeviceFaultsRose",
    "DevicePodFailuresRose",
];

fn revision_ref(r: &Revision) -> RevisionRef {
    RevisionRef {
        hash: r.hash.clone(),
        name: r.name.clone(),
        revision: r.number,
        images: (!r.images.is_empty()).then(|| r.images.clone()),
    }
}

fn upgraded(node: &NodeView, hash: &str) -> bool {
    node.plugin.as_ref().is_some_and(|p| p.hash == hash && p.ready && !p.deleting)
}

fn set(st: &mut UpgradePlanStatus, phase: UpgradePhase, reason: &str, message: String) {
    st.phase = phase;
    st.reason = Some(reason.to_string());
    st.message = Some(message);
}

/// Decide one pass for a plan (`plan` as [`super::validate::validate`] found it).
pub fn decide(
    plan: Result<&ValidPlan, &PlanError>,
    daemon_set: &str,
    generation: Option<i64>,
    before: &UpgradePlanStatus,
    view: &View,
    now: Time,
) -> Decision {
    let mut st = before.clone();
    st.observed_generation = generation;
    let mut steps = Vec::new();
    pass(plan, daemon_set, &mut st, view, now, &mut steps);
    // The pool: the nodes the DaemonSet runs on, and those the gate took up.
    let to = st.to_revision.as_ref().map(|r| r.hash.clone()).unwrap_or_default();
    st.pool_nodes = view.nodes.values().filter(|n| n.plugin.is_some() || taken(&st, &n.name)).count() as u32;
    st.upgraded_nodes = view.nodes.values().filter(|n| !to.is_empty() && upgraded(n, &to)).count() as u32;
    let events = events(before, &st);
    Decision { status: st, steps, events }
}

fn taken(st: &UpgradePlanStatus, node: &str) -> bool {
    st.nodes.iter().any(|t| t.name == node)
}

fn pass(
    plan: Result<&ValidPlan, &PlanError>,
    daemon_set: &str,
    st: &mut UpgradePlanStatus,
    view: &View,
    now: Time,
    steps: &mut Vec<Step>,
) {
    let plan = match plan {
        Ok(p) => p,
        Err(e) => return set(st, UpgradePhase::Invalid, "InvalidPlan", e.to_string()),
    };
    if matches!(st.phase, UpgradePhase::Completed | UpgradePhase::RolledBack) {
        return;
    }
    if !view.found {
        let phase = if st.to_revision.is_some() { UpgradePhase::Paused } else { UpgradePhase::Pending };
        return set(
            st,
            phase,
            "DaemonSetNotFound",
            format!("spec.daemonSet: no DaemonSet {daemon_set} in the plan's namespace"),
        );
    }
    if view.update_strategy != "OnDelete" {
        return set(
            st,
            UpgradePhase::Invalid,
            "NotOnDelete",
            format!(
                "spec.daemonSet: DaemonSet {daemon_set} updates with {}; the gate stages only DaemonSets with \
                 updateStrategy OnDelete",
                view.update_strategy
            ),
        );
    }
    if st.phase == UpgradePhase::Invalid {
        // The plan was fixed.
        st.phase = if st.to_revision.is_some() { UpgradePhase::Progressing } else { UpgradePhase::Pending };
    }
    let (from, to) = match (&st.from_revision, &st.to_revision) {
        (Some(f), Some(t)) => (f.clone(), t.clone()),
        _ => {
            let Some(current) = view.current() else {
                return set(
                    st,
                    UpgradePhase::Pending,
                    "NoRevision",
                    "the DaemonSet has no ControllerRevision yet".into(),
                );
            };
            // What most of the pool runs, other than the current template (the newest on a tie).
            let mut counts: Vec<(usize, i64, &Revision)> = Vec::new();
            for r in view.revisions.iter().filter(|r| r.hash != current.hash) {
                let n = view
                    .nodes
                    .values()
                    .filter(|n| n.plugin.as_ref().is_some_and(|p| p.hash == r.hash))
                    .count();
                if n > 0 {
                    counts.push((n, r.number, r));
                }
            }
            counts.sort_by_key(|c| std::cmp::Reverse((c.0, c.1)));
            let Some((_, _, from)) = counts.first() else {
                return set(
                    st,
                    UpgradePhase::Completed,
                    "NothingToUpgrade",
                    format!(
                        "every node of the pool already runs revision {} ({})",
                        current.number, current.hash
                    ),
                );
            };
            st.from_revision = Some(revision_ref(from));
            st.to_revision = Some(revision_ref(current));
            (revision_ref(from), revision_ref(current))
        }
    };
    if st.phase == UpgradePhase::RollingBack {
        return rollback(plan, st, view, &from, steps);
    }
    if view.current().is_none_or(|c| c.hash != to.hash) {
        return set(
            st,
            UpgradePhase::Paused,
            "TargetChanged",
            format!(
                "the DaemonSet's template is no longer revision {} ({}); write a new plan for the new template",
                to.revision, to.hash
            ),
        );
    }
    if st.phase == UpgradePhase::Paused && st.reason.as_deref().is_some_and(|r| HEALTH_REASONS.contains(&r)) {
        return;
    }
    let window = st.window_start.as_ref().map(time_from_k8s).unwrap_or(now);
    if !st.nodes.is_empty()
        && let Err(f) = health::check(plan, view, &to.hash, &st.nodes, window, now)
    {
        if plan.rollback_on_failure {
            set(
                st,
                UpgradePhase::RollingBack,
                f.reason,
                format!("rolling back to revision {}: {}", from.revision, f.message),
            );
            return rollback(plan, st, view, &from, steps);
        }
        return set(st, UpgradePhase::Paused, f.reason, f.message);
    }
    if plan.paused {
        return set(st, UpgradePhase::Paused, "PausedBySpec", "spec.paused is true".into());
    }
    progress(plan, st, view, &to, now, steps);
}

/// Steps for the nodes taken up whose new pod is not Ready yet; returns how many there are.
fn replace_taken(
    plan: &ValidPlan,
    st: &mut UpgradePlanStatus,
    view: &View,
    to: &str,
    steps: &mut Vec<Step>,
) -> usize {
    let mut in_flight = 0;
    for t in st.nodes.iter_mut() {
        let Some(node) = view.nodes.get(&t.name) else { continue };
        if upgraded(node, to) {
            if t.cordoned && node.cordoned_by_gate {
                steps.push(Step::Uncordon { node: t.name.clone() });
            }
            t.cordoned = t.cordoned && node.cordoned_by_gate;
            continue;
        }
        in_flight += 1;
        let Some(pod) = node.plugin.as_ref().filter(|p| p.hash != to && !p.deleting) else { continue };
        if plan.drain_device_pods {
            if !node.cordoned_by_gate {
                steps.push(Step::Cordon { node: t.name.clone() });
            }
            t.cordoned = true;
            if !node.device_pods.is_empty() {
                steps.extend(node.device_pods.iter().filter(|p| p.running).map(|p| Step::EvictPod {
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                    uid: p.uid.clone(),
                    node: t.name.clone(),
                }));
                continue;
            }
        }
        steps.push(Step::DeletePod {
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            uid: pod.uid.clone(),
            node: t.name.clone(),
        });
    }
    in_flight
}

fn progress(
    plan: &ValidPlan,
    st: &mut UpgradePlanStatus,
    view: &View,
    to: &RevisionRef,
    now: Time,
    steps: &mut Vec<Step>,
) {
    advance(plan, st, view, to, now);
    replace_taken(plan, st, view, &to.hash, steps);
}

/// The stages: take up nodes within the budget, soak a full stage, begin the next.
fn advance(plan: &ValidPlan, st: &mut UpgradePlanStatus, view: &View, to: &RevisionRef, now: Time) {
    if st.stage == 0 {
        st.stage = 1;
        st.window_start = Some(k8s_time(now));
        st.stage_ready_at = None;
    }
    let pool = view.nodes.values().filter(|n| n.plugin.is_some() || taken(st, &n.name)).count();
    loop {
        let in_flight = st
            .nodes
            .iter()
            .filter(|t| view.nodes.get(&t.name).is_some_and(|n| !upgraded(n, &to.hash)))
            .count();
        let stage = plan.stage(st.stage);
        let target = stage.size.nodes(pool);
        let in_stage = st.nodes.iter().filter(|t| t.stage == st.stage).count();
        let candidates: Vec<&NodeView> = view
            .nodes
            .values()
            .filter(|n| n.plugin.as_ref().is_some_and(|p| p.hash != to.hash) && !taken(st, &n.name))
            .collect();
        if candidates.is_empty() && in_flight == 0 {
            return set(
                st,
                UpgradePhase::Completed,
                "Completed",
                format!("every node of the pool runs revision {} ({})", to.revision, to.hash),
            );
        }
        let need = target.saturating_sub(in_stage).min(candidates.len());
        if need > 0 {
            let budget = plan.max_unavailable.saturating_sub(in_flight);
            let (free, blocked): (Vec<&NodeView>, Vec<&NodeView>) = candidates.into_iter().partition(|n| {
                plan.allow_interrupting_gangs || !n.device_pods.iter().any(|p| p.gang && p.running)
            });
            let picked: Vec<&NodeView> = free.iter().take(need.min(budget)).copied().collect();
            for node in &picked {
                st.nodes.push(UpgradeNodeStatus {
                    name: node.name.clone(),
                    stage: st.stage,
                    started: k8s_time(now),
                    allocatable_before: node.allocatable,
                    unhealthy_before: node.unhealthy_devices,
                    cordoned: false,
                });
            }
            if free.len() < need && !blocked.is_empty() && in_flight + picked.len() < plan.max_unavailable {
                let names: Vec<&str> = blocked.iter().map(|n| n.name.as_str()).collect();
                return set(
                    st,
                    UpgradePhase::Progressing,
                    "WaitingForGangs",
                    format!(
                        "stage {}: the remaining nodes run training gangs on their devices (allowInterruptingGangs is \
                         false): {}",
                        st.stage,
                        names.join(", ")
                    ),
                );
            }
            let done = in_stage + picked.len();
            return set(
                st,
                UpgradePhase::Progressing,
                "Upgrading",
                format!("stage {}: {done} of {target} nodes taken up, revision {}", st.stage, to.revision),
            );
        }
        // The stage is full: once all its nodes are Ready on the new revision, it soaks.
        if in_flight > 0 {
            return set(
                st,
                UpgradePhase::Progressing,
                "Upgrading",
                format!("stage {}: waiting for the new pods to be Ready", st.stage),
            );
        }
        let ready_at = st.stage_ready_at.as_ref().map(time_from_k8s).unwrap_or(now);
        st.stage_ready_at = Some(k8s_time(ready_at));
        let soak = Duration::from_secs(i64::from(stage.soak_seconds));
        if now.since(ready_at) < soak {
            let left = (soak.as_nanos() - now.since(ready_at).as_nanos() + 999_999_999) / 1_000_000_000;
            return set(
                st,
                UpgradePhase::Progressing,
                "Soaking",
                format!("stage {} soaks for {left} s more", st.stage),
            );
        }
        st.stage += 1;
        st.window_start = Some(k8s_time(now));
        st.stage_ready_at = None;
    }
}

fn rollback(
    plan: &ValidPlan,
    st: &mut UpgradePlanStatus,
    view: &View,
    from: &RevisionRef,
    steps: &mut Vec<Step>,
) {
    st.phase = UpgradePhase::RollingBack;
    if view.current().is_none_or(|c| c.hash != from.hash) {
        // First the template: pods deleted before it is back would come back on the new one.
        steps.push(Step::RestoreTemplate { revision: from.name.clone() });
        return;
    }
    for t in st.nodes.iter_mut() {
        if let Some(n) = view.nodes.get(&t.name) {
            if upgraded(n, &from.hash) && n.cordoned_by_gate {
                steps.push(Step::Uncordon { node: t.name.clone() });
            }
            t.cordoned = t.cordoned && !upgraded(n, &from.hash);
        }
    }
    // Nodes on the new revision to give the old one back; nodes between the two (old pod
    // deleted, new one not Ready) count against the budget.
    let on_new: Vec<&NodeView> = view
        .nodes
        .values()
        .filter(|n| n.plugin.as_ref().is_some_and(|p| p.hash != from.hash && !p.deleting))
        .collect();
    let unavailable = view
        .nodes
        .values()
        .filter(|n| n.plugin.is_some() || taken(st, &n.name))
        .filter(|n| !upgraded(n, &from.hash) && !on_new.iter().any(|o| o.name == n.name))
        .count();
    if on_new.is_empty() && unavailable == 0 {
        let why = st.message.clone().unwrap_or_default();
        let why = why
            .strip_prefix("rolling back to revision ")
            .map(|w| w.split_once(": ").map_or(w, |x| x.1))
            .unwrap_or(&why)
            .to_string();
        return set(
            st,
            UpgradePhase::RolledBack,
            "RolledBack",
            format!(
                "the upgraded nodes run revision {} ({}) again; the rollout failed: {why}",
                from.revision, from.hash
            ),
        );
    }
    for n in on_new.iter().take(plan.max_unavailable.saturating_sub(unavailable)) {
        if let Some(p) = &n.plugin {
            steps.push(Step::DeletePod {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                uid: p.uid.clone(),
                node: n.name.clone(),
            });
        }
    }
}

fn events(before: &UpgradePlanStatus, after: &UpgradePlanStatus) -> Vec<GateEvent> {
    let mut out = Vec::new();
    if after.stage > before.stage && after.phase == UpgradePhase::Progressing {
        out.push(GateEvent {
            warning: false,
            reason: "UpgradeStageStarted",
            message: format!(
                "stage {} began: revision {}",
                after.stage,
                after.to_revision.as_ref().map(|r| r.revision.to_string()).unwrap_or_default()
            ),
        });
    }
    if (before.phase, &before.reason) == (after.phase, &after.reason) {
        return out;
    }
    let message =
        format!("{}: {}", after.reason.as_deref().unwrap_or(""), after.message.as_deref().unwrap_or(""));
    let (warning, reason) = match after.phase {
        UpgradePhase::Paused => (true, "UpgradePaused"),
        UpgradePhase::RollingBack if before.phase != UpgradePhase::RollingBack => {
            (true, "UpgradeRollingBack")
        }
        UpgradePhase::RolledBack => (false, "UpgradeRolledBack"),
        UpgradePhase::Completed => (false, "UpgradeCompleted"),
        UpgradePhase::Invalid => (true, "UpgradeInvalid"),
        _ => return out,
    };
    out.push(GateEvent { warning, reason, message });
    out
}
