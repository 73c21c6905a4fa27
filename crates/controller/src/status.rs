//! FailurePolicy status: what the controller reports on each FailurePolicy object.
//!
//! [`PolicyStatusBook`] keeps, per policy, the actions its rules took (counted by action when
//! the actuator answered `Done`) and the last of them; the controller adds the pods the policy
//! selects (from the index), the engine's safety budgets and the object's
//! `metadata.generation`, and writes the result through a [`PolicyStatusWriter`] when it
//! changed, at most once per `status_every`, only as leader and never in dry run.
//!
//! Counts survive restarts and leader changes: until this replica has written a policy's
//! status, it adopts the counts the object's status already shows (the previous leader's), and
//! adds its own on top. A replica that loses leadership forgets what it wrote and counted, and
//! adopts again from what the new leader writes.

use std::collections::{BTreeMap, HashMap};

use devheal_core::{Action, PlannedAction, SafetyState, Time};
use devheal_k8s::StatusWriteError;
use devheal_k8s::actuator::KubeActuator;
use devheal_k8s::crd::{
    BudgetStatus, FailurePolicy as FailurePolicyObject, FailurePolicyStatus, LastAction, k8s_time,
};

/// Writes a FailurePolicy's status: the Kubernetes actuator sends a merge patch of the
/// `status` subresource; the fake cluster records it.
pub trait PolicyStatusWriter: Send + Sync {
    fn write_policy_status(
        &self,
        namespace: &str,
        name: &str,
        status: &FailurePolicyStatus,
    ) -> impl std::future::Future<Output = Result<(), StatusWriteError>> + Send;
}

impl PolicyStatusWriter for KubeActuator {
    async fn write_policy_status(
        &self,
        namespace: &str,
        name: &str,
        status: &FailurePolicyStatus,
    ) -> Result<(), StatusWriteError> {
        KubeActuator::write_policy_status(self, namespace, name, status).await
    }
}

/// `lastAction.reason` is at most this long (the CRD's validation).
const REASON_MAX_BYTES: usize = 1024;

/// The name an action is counted under in `actionsTaken` and shown in `lastAction.action`, as
/// the CRD documents it (the spelling of the rules' actions); `None` for a `Report`, which
/// changes nothing in the cluster.
pub fn action_name(action: &Action) -> Option<&'static str> {
    Some(match action {
        Action::MarkPod { .. } => "MarkPod",
        Action::EvictPod { .. } => "EvictPod",
        Action::RestartGang { .. } => "RestartGang",
        Action::QuarantineDevice { .. } => "QuarantineDevice",
        Action::ReleaseDevice { .. } => "ReleaseDevice",
        Action::CordonNode { .. } => "CordonNode",
        Action::UncordonNode { .. } => "UncordonNode",
        Action::RequestRepair { .. } => "RequestRepair",
        Action::WithdrawRepair { .. } => "WithdrawRepair",
        Action::ReplaceAtCheckpoint { .. } => "ReplaceAtCheckpoint",
        Action::FailWorkload { .. } => "FailWorkload",
        Action::Report { .. } => return None,
    })
}

/// What an action acted on, as `lastAction.target` documents it: `namespace/pod`, a gang
/// (`namespace/kind/name`), `node/resource/device` or a node; and its reason.
fn target_and_reason(action: &Action) -> (String, &str) {
    match action {
        Action::MarkPod { pod, message, .. } => (format!("{}/{}", pod.namespace, pod.name), message),
        Action::EvictPod { pod, reason } | Action::ReplaceAtCheckpoint { pod, reason, .. } => {
            (format!("{}/{}", pod.namespace, pod.name), reason)
        }
        Action::RestartGang { gang, reason, .. } | Action::FailWorkload { gang, reason } => {
            (gang.to_string(), reason)
        }
        Action::QuarantineDevice { device, reason } | Action::ReleaseDevice { device, reason } => {
            (device.to_string(), reason)
        }
        Action::CordonNode { node, reason }
        | Action::UncordonNode { node, reason }
        | Action::WithdrawRepair { node, reason } => (node.clone(), reason),
        Action::RequestRepair { node, device, reason, .. } => {
            (device.as_ref().map_or_else(|| node.clone(), |d| d.to_string()), reason)
        }
        Action::Report { reason, .. } => (String::new(), reason),
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

fn budget(safety: &SafetyState) -> BudgetStatus {
    let n = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
    BudgetStatus {
        breaker_open: safety.breaker_open,
        quarantined_nodes: n(safety.quarantined_nodes),
        quarantine_node_limit: n(safety.quarantine_node_limit),
        evictions_last_minute: n(safety.evictions_last_minute),
        held_versions: safety.held_versions.clone(),
        progress_breaker_open: safety.progress_breaker_open,
    }
}

/// What a policy's rules did: adopted from its object's status, plus what this replica did.
#[derive(Clone, Debug, Default, PartialEq)]
struct Taken {
    adopted: BTreeMap<String, u64>,
    adopted_last: Option<LastAction>,
    own: BTreeMap<String, u64>,
    own_last: Option<LastAction>,
    adopted_dry_run: BTreeMap<String, u64>,
    own_dry_run: BTreeMap<String, u64>,
}

/// One status to write.
#[derive(Clone, Debug, PartialEq)]
pub struct StatusWrite {
    pub namespace: String,
    pub name: String,
    pub status: FailurePolicyStatus,
}

/// The controller's record of what to report on each FailurePolicy. See the module docs.
#[derive(Debug, Default)]
pub struct PolicyStatusBook {
    /// By policy id (`namespace/name`, as `PlannedAction::policy`).
    taken: HashMap<String, Taken>,
    /// `metadata.generation` of each policy object, by `namespace/name`.
    generations: HashMap<String, Option<i64>>,
    /// What this replica last wrote (or, in dry run, said it would write), by `namespace/name`.
    written: HashMap<String, FailurePolicyStatus>,
    /// Pods each policy object selects, as last counted.
    matched: BTreeMap<String, u64>,
    /// Pods or policies changed since `matched` was counted.
    matched_stale: bool,
    last_flush: Option<Time>,
}

impl PolicyStatusBook {
    pub fn new() -> Self {
        PolicyStatusBook { matched_stale: true, ..PolicyStatusBook::default() }
    }

    /// A FailurePolicy object as its watch reports it: its generation, and (until this replica
    /// has written its status) the counts its status shows.
    pub fn observe(&mut self, obj: &FailurePolicyObject) {
        let key = format!(
            "{}/{}",
            obj.metadata.namespace.as_deref().unwrap_or(""),
            obj.metadata.name.as_deref().unwrap_or("")
        );
        self.generations.insert(key.clone(), obj.metadata.generation);
        if self.written.contains_key(&key) {
            return;
        }
        let t = self.taken.entry(key).or_default();
        match &obj.status {
            Some(s) => {
                t.adopted = s.actions_taken.clone();
                t.adopted_dry_run = s.dry_run_actions.clone();
                t.adopted_last = s.last_action.clone();
            }
            None => {
                t.adopted.clear();
                t.adopted_dry_run.clear();
                t.adopted_last = None;
            }
        }
    }

    /// The pods or the policies changed: recount matched pods at the next flush.
    pub fn pods_or_policies_changed(&mut self) {
        self.matched_stale = true;
    }

    /// An action the actuator carried out (`Done`), counted for the policy that produced it.
    pub fn record(&mut self, planned: &PlannedAction, now: Time) {
        self.count(planned, now, false);
    }

    /// An action a dry run would have taken (`WouldDo`): counted under `dryRunActions` and
    /// shown as `lastAction` with `dryRun: true`, never under `actionsTaken`.
    pub fn record_dry_run(&mut self, planned: &PlannedAction, now: Time) {
        self.count(planned, now, true);
    }

    fn count(&mut self, planned: &PlannedAction, now: Time, dry_run: bool) {
        let Some(policy) = &planned.policy else { return };
        let Some(name) = action_name(&planned.action) else { return };
        let (target, reason) = target_and_reason(&planned.action);
        let t = self.taken.entry(policy.clone()).or_default();
        let counts = if dry_run { &mut t.own_dry_run } else { &mut t.own };
        *counts.entry(name.to_string()).or_default() += 1;
        t.own_last = Some(LastAction {
            action: name.to_string(),
            target,
            reason: truncate(reason, REASON_MAX_BYTES),
            at: k8s_time(now),
            dry_run,
        });
    }

    /// This replica is not the leader: forget what it wrote and counted; the leader's writes
    /// are adopted as they are observed.
    pub fn standby(&mut self) {
        if self.written.is_empty()
            && self.taken.values().all(|t| t.own.is_empty() && t.own_dry_run.is_empty())
        {
            return;
        }
        self.written.clear();
        for t in self.taken.values_mut() {
            t.own.clear();
            t.own_dry_run.clear();
            t.own_last = None;
        }
    }

    /// Whether a flush is due at `now` (the first is due at once).
    pub fn due(&self, now: Time, every: devheal_core::Duration) -> bool {
        self.last_flush.is_none_or(|t| now.since(t) >= every)
    }

    /// The statuses that differ from what was last written, for the policy objects `policies`
    /// (`namespace/name` → namespace and name). `count` recounts matched pods when pods or
    /// policies changed since the last count. Marks the flush as done at `now`.
    pub fn changed(
        &mut self,
        policies: &[(String, String, String)],
        count: impl FnOnce() -> BTreeMap<String, u64>,
        safety: &SafetyState,
        now: Time,
    ) -> Vec<StatusWrite> {
        self.last_flush = Some(now);
        if self.matched_stale {
            self.matched = count();
            self.matched_stale = false;
        }
        // Forget policies that are gone.
        let live: std::collections::HashSet<&str> = policies.iter().map(|(k, ..)| k.as_str()).collect();
        self.taken.retain(|k, _| live.contains(k.as_str()));
        self.generations.retain(|k, _| live.contains(k.as_str()));
        self.written.retain(|k, _| live.contains(k.as_str()));
        let budget = budget(safety);
        let mut out = Vec::new();
        for (key, namespace, name) in policies {
            let taken = self.taken.get(key).cloned().unwrap_or_default();
            let mut actions_taken = taken.adopted;
            for (a, n) in taken.own {
                *actions_taken.entry(a).or_default() += n;
            }
            let mut dry_run_actions = taken.adopted_dry_run;
            for (a, n) in taken.own_dry_run {
                *dry_run_actions.entry(a).or_default() += n;
            }
            let status = FailurePolicyStatus {
                observed_generation: self.generations.get(key).copied().flatten(),
                matched_pods: self.matched.get(key).copied().unwrap_or(0),
                actions_taken,
                dry_run_actions,
                last_action: taken.own_last.or(taken.adopted_last),
                budget: Some(budget.clone()),
            };
            if self.written.get(key) != Some(&status) {
                out.push(StatusWrite { namespace: namespace.clone(), name: name.clone(), status });
            }
        }
        out
    }

    /// A status was written (or, in dry run, logged).
    pub fn written(&mut self, write: StatusWrite) {
        self.written.insert(format!("{}/{}", write.namespace, write.name), write.status);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use devheal_core::{FailureClass, GangId};

    fn restart(policy: Option<&str>) -> PlannedAction {
        PlannedAction {
            idempotency_key: "k".into(),
            action: Action::RestartGang {
                gang: GangId { namespace: "ml".into(), kind: "jobset".into(), name: "llama".into() },
                incident: "i".into(),
                reason: "DeviceFailure: Xid 79".into(),
                in_place: vec![],
            },
            class: FailureClass::DeviceFailure,
            policy: policy.map(str::to_string),
        }
    }

    fn object(status: Option<FailurePolicyStatus>) -> FailurePolicyObject {
        let mut obj: FailurePolicyObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "devheal.io/v1alpha1", "kind": "FailurePolicy",
            "metadata": {"name": "training", "namespace": "ml", "generation": 4},
            "spec": {"rules": [{"name": "r", "action": "RestartGang"}]}
        }))
        .expect("valid policy");
        obj.status = status;
        obj
    }

    fn policies() -> Vec<(String, String, String)> {
        vec![("ml/training".into(), "ml".into(), "training".into())]
    }

    fn counts() -> BTreeMap<String, u64> {
        BTreeMap::from([("ml/training".to_string(), 64)])
    }

    #[test]
    fn counts_add_to_the_adopted_ones_and_unchanged_statuses_are_not_written_again() {
        let mut book = PolicyStatusBook::new();
        let earlier = FailurePolicyStatus {
            actions_taken: BTreeMap::from([("RestartGang".to_string(), 2)]),
            ..FailurePolicyStatus::default()
        };
        book.observe(&object(Some(earlier)));
        book.record(&restart(Some("ml/training")), Time::from_secs(100));
        // Neither an unattributed action nor one of another policy counts here.
        book.record(&restart(None), Time::from_secs(100));
        book.record(&restart(Some("ml/other")), Time::from_secs(100));
        let writes = book.changed(&policies(), counts, &SafetyState::default(), Time::from_secs(101));
        assert_eq!(writes.len(), 1);
        let status = &writes[0].status;
        assert_eq!(status.observed_generation, Some(4));
        assert_eq!(status.matched_pods, 64);
        assert_eq!(status.actions_taken, BTreeMap::from([("RestartGang".to_string(), 3)]));
        let last = status.last_action.clone().expect("a last action");
        assert_eq!((last.action.as_str(), last.target.as_str()), ("RestartGang", "ml/jobset/llama"));
        book.written(writes[0].clone());
        // Our own write comes back through the watch: not adopted again (no double count).
        book.observe(&object(Some(status.clone())));
        let again =
            book.changed(&policies(), unreachable_count, &SafetyState::default(), Time::from_secs(110));
        assert!(again.is_empty(), "{again:?}");
        // The budget changing is a change.
        let safety = SafetyState { breaker_open: true, ..SafetyState::default() };
        let budget = book.changed(&policies(), unreachable_count, &safety, Time::from_secs(120));
        assert_eq!(budget.len(), 1);
        assert_eq!(budget[0].status.budget.as_ref().map(|b| b.breaker_open), Some(true));
        book.written(budget[0].clone());
        let safety =
            SafetyState { breaker_open: true, progress_breaker_open: true, ..SafetyState::default() };
        let budget = book.changed(&policies(), unreachable_count, &safety, Time::from_secs(130));
        assert_eq!(budget.len(), 1);
        assert_eq!(budget[0].status.budget.as_ref().map(|b| b.progress_breaker_open), Some(true));
    }

    /// Matched pods are counted only when pods or policies changed.
    fn unreachable_count() -> BTreeMap<String, u64> {
        BTreeMap::from([("ml/training".to_string(), 9999)])
    }

    #[test]
    fn a_standby_forgets_its_own_counts_and_adopts_the_leaders() {
        let mut book = PolicyStatusBook::new();
        book.observe(&object(None));
        book.record(&restart(Some("ml/training")), Time::from_secs(100));
        let w = book.changed(&policies(), counts, &SafetyState::default(), Time::from_secs(101));
        book.written(w[0].clone());
        book.standby();
        let leader = FailurePolicyStatus {
            actions_taken: BTreeMap::from([("RestartGang".to_string(), 5)]),
            ..FailurePolicyStatus::default()
        };
        book.observe(&object(Some(leader)));
        let w = book.changed(&policies(), unreachable_count, &SafetyState::default(), Time::from_secs(102));
        assert_eq!(w[0].status.actions_taken, BTreeMap::from([("RestartGang".to_string(), 5)]));
        assert_eq!(w[0].status.matched_pods, 64, "counted once, not recounted");
    }

    #[test]
    fn flushes_are_coalesced_and_reasons_bounded() {
        let mut book = PolicyStatusBook::new();
        let every = devheal_core::Duration::from_secs(5);
        assert!(book.due(Time::from_secs(0), every));
        book.changed(&policies(), counts, &SafetyState::default(), Time::from_secs(0));
        assert!(!book.due(Time::from_secs(4), every));
        assert!(book.due(Time::from_secs(5), every));
        assert_eq!(truncate("ééé", 3), "é");
        assert_eq!(action_name(&Action::Report { reason: "r".into(), message: "m".into() }), None);
    }
}
