//! The controller loop against the in-memory fake cluster: the acceptance scenarios of a dead
//! GPU under a 64-pod JobSet gang, a controller restart in the middle of the incident, a
//! correlated failure that opens the breaker, dry run, a 429 on eviction, and a standby replica.

mod common;

use common::Harness;
use devheal_controller::{
    AlwaysLeader, Clock, ControllerSettings, FakeCluster, LeaderFlag, Leadership, ManualClock,
    MemoryStateStore, ObjectKind,
};
use devheal_core::{Duration, GangId, Health, Time};
use devheal_k8s::actuator::{CORDONED_BY_DEVHEAL, REPAIR_LABEL, UNHEALTHY_TAINT};
use k8s_openapi::api::core::v1::{NodeSystemInfo, Taint};

const START: Time = Time::from_secs(1_800_000_000);

fn gang() -> GangId {
    GangId { namespace: "ml".into(), kind: "jobset".into(), name: "llama".into() }
}

fn restart_attempts(fake: &FakeCluster) -> Vec<String> {
    let mut v: Vec<String> = fake
        .pods()
        .iter()
        .filter_map(|p| p.metadata.labels.as_ref()?.get("jobset.sigs.k8s.io/restart-attempt").cloned())
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Gang restarts handed to the actuator, whatever they found (a second one is the bug).
fn restarts_sent(fake: &FakeCluster) -> usize {
    fake.record().executed.iter().filter(|(a, _)| a == "restart_gang").count()
}

fn phases(fake: &FakeCluster) -> (usize, usize) {
    let pods = fake.pods();
    let running =
        pods.iter().filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")).count();
    (running, pods.len() - running)
}

/// 8 nodes × 8 GPUs, all used by one 64-pod JobSet.
fn gang_cluster() -> (FakeCluster, ManualClock) {
    let clock = ManualClock::new(START);
    let fake = FakeCluster::new(clock.clone());
    fake.add_gpu_nodes(8, 8);
    fake.add_jobset("ml", "llama", 64);
    (fake, clock)
}

async fn kill_gpu<L: Leadership>(h: &mut Harness<L>, fake: &FakeCluster, clock: &ManualClock) {
    clock.advance(Duration::from_secs(10));
    fake.set_gpu_health("node-03", 5, Health::Unhealthy, 79, "GPU has fallen off the bus");
    h.pump().await;
}

#[tokio::test]
async fn a_dead_gpu_under_a_gang_is_one_restart_and_one_quarantine_even_across_a_controller_restart() {
    let (fake, clock) = gang_cluster();
    let mut h = Harness::start(&fake, &clock, AlwaysLeader, false);
    h.pump().await;
    assert!(h.controller.index().ready());
    assert_eq!(h.controller.index().len(ObjectKind::Pod), 64);
    assert!(fake.record().executed.is_empty(), "a healthy cluster needs nothing");

    kill_gpu(&mut h, &fake, &clock).await;
    let record = fake.record();
    assert_eq!(record.gang_restarts.get("ml/jobset/llama"), Some(&1), "{record:?}");
    assert_eq!(fake.quarantined().len(), 1);
    assert_eq!(record.quarantine_calls, 1);
    assert!(fake.quarantined().iter().all(|d| d.node == "node-03" && d.id == "GPU-node-03-5"));
    // The gang was re-created with the next restart attempt; the member whose GPU is
    // quarantined waits for a device.
    assert_eq!(restart_attempts(&fake), ["1"]);
    assert_eq!(phases(&fake), (63, 1));
    assert_eq!(h.controller.metrics().action_count("restart_gang", "done"), 1);

    // Time passes: ticks plan nothing more.
    for _ in 0..5 {
        clock.advance(Duration::from_secs(60));
        h.tick().await;
    }
    assert_eq!(fake.record().gang_restarts.get("ml/jobset/llama"), Some(&1));

    // The controller process restarts mid-incident (the GPU is still Unhealthy): a new index and
    // engine from the cluster as it is now.
    drop(h);
    clock.advance(Duration::from_secs(30));
    let mut h = Harness::start(&fake, &clock, AlwaysLeader, false);
    h.pump().await;
    for _ in 0..3 {
        clock.advance(Duration::from_secs(60));
        h.tick().await;
    }
    let record = fake.record();
    assert_eq!(record.gang_restarts.get("ml/jobset/llama"), Some(&1), "restarted twice: {record:?}");
    assert_eq!(restarts_sent(&fake), 1);
    assert_eq!(fake.quarantined().len(), 1);
    assert_eq!(restart_attempts(&fake), ["1"]);
    assert_eq!(h.controller.metrics().action_count("restart_gang", "done"), 0);
}

#[tokio::test]
async fn a_controller_restarted_while_the_old_members_terminate_does_not_restart_the_gang_again() {
    let (fake, clock) = gang_cluster();
    fake.set_graceful_deletion(true);
    let mut h = Harness::start(&fake, &clock, AlwaysLeader, false);
    h.pump().await;
    kill_gpu(&mut h, &fake, &clock).await;
    assert_eq!(fake.record().gang_restarts.get("ml/jobset/llama"), Some(&1));
    // The old members are terminating, still bound to the dead GPU; none re-created yet.
    let terminating = fake.pods().iter().filter(|p| p.metadata.deletion_timestamp.is_some()).count();
    assert_eq!(terminating, 64);

    // Crash and restart now: the new process sees the dead GPU and the pod on it.
    drop(h);
    clock.advance(Duration::from_secs(5));
    let mut h = Harness::start(&fake, &clock, AlwaysLeader, false);
    h.pump().await;
    assert_eq!(restarts_sent(&fake), 1, "{:?}", fake.record());
    assert!(h.controller.engine().open_gang_incident(&gang()).is_none());

    // The old members go; JobSet re-creates the gang; still one restart.
    fake.finish_terminations();
    h.pump().await;
    for _ in 0..3 {
        clock.advance(Duration::from_secs(60));
        h.tick().await;
    }
    assert_eq!(fake.record().gang_restarts.get("ml/jobset/llama"), Some(&1));
    assert_eq!(restarts_sent(&fake), 1);
    assert_eq!(restart_attempts(&fake), ["1"]);
    assert_eq!(phases(&fake), (63, 1));
    assert_eq!(fake.quarantined().len(), 1);
}

#[tokio::test]
async fn a_correlated_failure_across_30_percent_of_nodes_opens_the_breaker_within_budget() {
    let clock = ManualClock::new(START);
    let fake = FakeCluster::new(clock.clone());
    fake.add_gpu_nodes(40, 8);
    let mut h = Harness::start(&fake, &clock, AlwaysLeader, false);
    h.pump().await;
    // 12 of 40 nodes lose a GPU within a minute (a power event).
    for n in 0..12 {
        clock.advance(Duration::from_secs(5));
        fake.set_gpu_health(&format!("node-{n:02}"), 0, Health::Unhealthy, 79, "GPU has fallen off the bus");
        h.pump().await;
    }
    let safety = h.controller.safety_state();
    assert!(safety.breaker_open, "{safety:?}");
    assert_eq!(safety.quarantine_node_limit, 4);
    let quarantined = fake.quarantined();
    assert!(quarantined.len() <= safety.quarantine_node_limit, "{quarantined:?}");
    assert_eq!(quarantined.len(), 4);
    assert!(safety.held_by_breaker > 0);
    let record = fake.record();
    assert!(record.reports.iter().any(|r| r == "BreakerOpen"), "{:?}", record.reports);
    assert!(record.reports.iter().any(|r| r == "QuarantineBudgetExhausted"));
    h.tick().await;
    let text = h.controller.metrics().encode();
    assert!(text.contains("devheal_controller_breaker_open 1"), "{text}");
    assert!(text.contains("devheal_controller_quarantined_devices 4"), "{text}");
}

#[tokio::test]
async fn dry_run_changes_nothing_and_says_what_it_would_do() {
    let (fake, clock) = gang_cluster();
    let before: Vec<_> = fake.pods();
    let mut h = Harness::start(&fake, &clock, AlwaysLeader, true);
    h.pump().await;
    kill_gpu(&mut h, &fake, &clock).await;
    let record = fake.record();
    assert!(record.gang_restarts.is_empty() && fake.quarantined().is_empty(), "{record:?}");
    assert_eq!(fake.pods(), before);
    assert!(record.executed.iter().any(|(a, o)| a == "restart_gang" && *o == "would_do"));
    assert!(record.executed.iter().all(|(_, o)| *o == "would_do"));
    let m = h.controller.metrics();
    assert_eq!(m.action_count("restart_gang", "would_do"), 1);
    assert_eq!(m.action_count("quarantine_device", "would_do"), 1);
    assert_eq!(m.action_count("restart_gang", "done"), 0);
}

#[tokio::test]
async fn an_eviction_refused_with_429_is_retried_after_the_delay() {
    let clock = ManualClock::new(START);
    let fake = FakeCluster::new(clock.clone());
    fake.add_gpu_nodes(2, 8);
    fake.add_lone_pod("web", "infer-0");
    fake.refuse("evict_pod", 1, 5_000);
    let mut h = Harness::start(&fake, &clock, AlwaysLeader, false);
    h.pump().await;
    clock.advance(Duration::from_secs(1));
    fake.set_gpu_health("node-00", 0, Health::Unhealthy, 48, "double bit ECC error");
    h.pump().await;
    let m = h.controller.metrics().clone();
    assert_eq!(m.action_count("evict_pod", "retry"), 1);
    assert!(fake.pod("web", "infer-0").is_some());
    assert_eq!(h.controller.pending_retries(), 1);
    assert_eq!(h.controller.next_retry_at(), Some(clock.now() + Duration::from_millis(5_000)));

    clock.advance(Duration::from_millis(4_000));
    h.tick().await;
    assert!(fake.pod("web", "infer-0").is_some(), "retried before the delay");
    clock.advance(Duration::from_millis(1_000));
    h.tick().await;
    assert!(fake.pod("web", "infer-0").is_none(), "not retried after the delay");
    assert_eq!(fake.record().evicted, ["web/infer-0"]);
    assert_eq!(m.action_count("evict_pod", "done"), 1);
    assert_eq!(h.controller.pending_retries(), 0);
}

#[tokio::test]
async fn a_standby_decides_but_sends_nothing_and_acts_once_it_leads() {
    let clock = ManualClock::new(START);
    let fake = FakeCluster::new(clock.clone());
    fake.add_gpu_nodes(9, 8);
    fake.add_jobset("ml", "llama", 64);
    fake.add_lone_pod("web", "infer-0");
    let leader = LeaderFlag::new(false);
    let mut h = Harness::start(&fake, &clock, leader.clone(), false);
    h.pump().await;
    kill_gpu(&mut h, &fake, &clock).await;
    // Decided (the engine holds the planned restart) but nothing reached the cluster.
    assert!(h.controller.engine().open_gang_incident(&gang()).is_some());
    assert_eq!(h.controller.metrics().standby_count("restart_gang"), 1);
    assert!(fake.record().executed.is_empty());
    assert!(fake.quarantined().is_empty());
    assert!(h.controller.metrics().encode().contains("devheal_controller_leader 0"));

    // Takeover: what the standby decided is not replayed; new failures are acted on.
    leader.set(true);
    h.tick().await;
    assert!(fake.record().gang_restarts.is_empty());
    clock.advance(Duration::from_secs(10));
    fake.set_gpu_health("node-08", 0, Health::Unhealthy, 79, "GPU has fallen off the bus");
    h.pump().await;
    assert_eq!(fake.record().evicted, ["web/infer-0"]);
    assert!(h.controller.metrics().encode().contains("devheal_controller_leader 1"));
}

/// A FailurePolicy in `namespace` that selects every pod there and restarts the gang on a
/// device failure.
fn policy(namespace: &str, name: &str) -> devheal_k8s::crd::FailurePolicy {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "devheal.io/v1alpha1", "kind": "FailurePolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"rules": [{"name": "device-failure", "onClasses": ["device_failure"], "action": "RestartGang"}]}
    }))
    .expect("valid policy")
}

/// The status writes the fake was handed for one policy.
fn status_writes(fake: &FakeCluster, policy: &str) -> Vec<devheal_k8s::crd::FailurePolicyStatus> {
    fake.record().status_writes.into_iter().filter(|(p, _)| p == policy).map(|(_, s)| s).collect()
}

#[tokio::test]
async fn a_policys_status_shows_the_pods_it_selects_and_what_its_rules_did() {
    let (fake, clock) = gang_cluster();
    fake.apply_policy(policy("ml", "training"));
    fake.apply_policy(policy("web", "serving"));
    let mut h = Harness::start(&fake, &clock, AlwaysLeader, false);
    h.pump().await;
    kill_gpu(&mut h, &fake, &clock).await;
    assert_eq!(fake.record().gang_restarts.get("ml/jobset/llama"), Some(&1));
    h.tick().await;

    let status = fake.policy("ml", "training").and_then(|p| p.status).expect("status written");
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(status.matched_pods, 64, "{status:?}");
    // The mark and the restart are the rule's; quarantine and repair are the engine's own.
    let taken: Vec<(&str, u64)> = status.actions_taken.iter().map(|(a, n)| (a.as_str(), *n)).collect();
    assert_eq!(taken, [("MarkPod", 1), ("RestartGang", 1)]);
    let last = status.last_action.clone().expect("last action");
    assert_eq!((last.action.as_str(), last.target.as_str()), ("RestartGang", "ml/jobset/llama"));
    assert!(last.reason.starts_with("DeviceFailure"), "{last:?}");
    assert_eq!(last.at, devheal_k8s::crd::k8s_time(clock.now()));
    let budget = status.budget.clone().expect("budget");
    assert_eq!((budget.breaker_open, budget.quarantined_nodes), (false, 1));
    let serving = fake.policy("web", "serving").and_then(|p| p.status).expect("status written");
    assert_eq!((serving.matched_pods, serving.actions_taken.len()), (0, 0));
    assert_eq!(h.controller.metrics().status_write_count("done"), 2);

    // Nothing changed: nothing is written again.
    for _ in 0..3 {
        clock.advance(Duration::from_secs(10));
        h.tick().await;
    }
    assert_eq!(status_writes(&fake, "ml/training").len(), 1);

    // A new spec is a new generation, reported once the flush is due.
    fake.apply_policy(policy("ml", "training"));
    h.pump().await;
    clock.advance(Duration::from_secs(10));
    h.tick().await;
    let writes = status_writes(&fake, "ml/training");
    assert_eq!(writes.len(), 2);
    assert_eq!(writes[1].observed_generation, Some(2));

    // A restarted controller keeps the counts it finds on the object, without counting twice.
    drop(h);
    clock.advance(Duration::from_secs(30));
    let mut h = Harness::start(&fake, &clock, AlwaysLeader, false);
    h.pump().await;
    h.tick().await;
    let status = fake.policy("ml", "training").and_then(|p| p.status).expect("status");
    assert_eq!(status.actions_taken.get("RestartGang"), Some(&1), "{status:?}");
    assert_eq!(status.last_action.map(|l| l.action), Some("RestartGang".to_string()));
}

/// A dry run writes the policy's status: what it would have done is counted under
/// `dryRunActions` (never `actionsTaken`) and shown as the last action, marked `dryRun`.
#[tokio::test]
async fn a_dry_run_counts_its_would_be_actions_in_the_status() {
    let (fake, clock) = gang_cluster();
    fake.apply_policy(policy("ml", "training"));
    let mut dry = Harness::start(&fake, &clock, AlwaysLeader, true);
    dry.pump().await;
    kill_gpu(&mut dry, &fake, &clock).await;
    clock.advance(Duration::from_secs(10));
    dry.tick().await;
    let status = fake.policy("ml", "training").and_then(|p| p.status).expect("a dry run writes the status");
    assert!(status.actions_taken.is_empty(), "{status:?}");
    assert_eq!(status.dry_run_actions.get("RestartGang"), Some(&1), "{status:?}");
    let last = status.last_action.expect("the would-be action is the last one");
    assert_eq!((last.action.as_str(), last.dry_run), ("RestartGang", true));
    assert!(fake.record().gang_restarts.is_empty());
}

#[tokio::test]
async fn no_status_is_written_by_a_standby() {
    let (fake, clock) = gang_cluster();
    fake.apply_policy(policy("ml", "training"));
    let leader = LeaderFlag::new(false);
    let mut h = Harness::start(&fake, &clock, leader.clone(), false);
    h.pump().await;
    clock.advance(Duration::from_secs(10));
    h.tick().await;
    assert!(fake.record().status_writes.is_empty(), "{:?}", fake.record().status_writes);
    // Once it leads, it reports (what it did as a standby is nothing).
    leader.set(true);
    h.tick().await;
    let writes = status_writes(&fake, "ml/training");
    assert_eq!(writes.len(), 1);
    assert_eq!((writes[0].matched_pods, writes[0].actions_taken.len()), (64, 0));
}

/// The restart budgets outlive the process: a gang restarted once (its budget: once an hour)
/// is not restarted again by a new controller process for a second dead GPU within the hour,
/// because the first process saved its budget use and the second restored it. Without the
/// store the second process restarts the gang again.
#[tokio::test]
async fn a_restarted_controller_keeps_the_gang_restart_budget_it_spent() {
    let settings = || {
        let mut s = ControllerSettings::default();
        s.engine.safety.max_gang_restarts_per_hour = 1;
        s
    };
    let run = |keep: bool| async move {
        let (fake, clock) = gang_cluster();
        let store = MemoryStateStore::default();
        let mut h = Harness::start_with_store(&fake, &clock, AlwaysLeader, settings(), &store).await;
        h.pump().await;
        kill_gpu(&mut h, &fake, &clock).await;
        clock.advance(Duration::from_secs(60));
        h.tick().await;
        assert_eq!(fake.record().gang_restarts.get("ml/jobset/llama"), Some(&1));
        let saved = store.saved().expect("the leader saved its state");
        assert_eq!(saved.restarts.len(), 1, "{saved:?}");
        assert_eq!(h.controller.metrics().state_stores("saved"), 1);
        drop(h);
        // A new process, with the saved state or without it.
        clock.advance(Duration::from_secs(30));
        let fresh = MemoryStateStore::default();
        let mut h = Harness::start_with_store(
            &fake,
            &clock,
            AlwaysLeader,
            settings(),
            if keep { &store } else { &fresh },
        )
        .await;
        h.pump().await;
        clock.advance(Duration::from_secs(10));
        fake.set_gpu_health("node-05", 2, Health::Unhealthy, 79, "GPU has fallen off the bus");
        h.pump().await;
        for _ in 0..3 {
            clock.advance(Duration::from_secs(60));
            h.tick().await;
        }
        let restarts = fake.record().gang_restarts.get("ml/jobset/llama").copied();
        (restarts, h.controller.metrics().state_stores("restored"), h.controller.safety_state())
    };
    let (restarts, restored, safety) = run(true).await;
    assert_eq!(restarts, Some(1), "the second dead GPU within the hour restarts nothing");
    assert_eq!(restored, 1);
    assert_eq!(safety.gang_restarts_last_hour, 1);
    let (restarts, restored, _) = run(false).await;
    assert_eq!(restarts, Some(2), "without the saved state the budget is forgotten");
    assert_eq!(restored, 0);
}

/// A counted restart is saved at the next tick, not after the 10 s between routine writes, so a
/// crash right after a restart does not lose it from the budget.
#[tokio::test]
async fn a_restart_is_saved_at_the_next_tick() {
    let (fake, clock) = gang_cluster();
    let store = MemoryStateStore::default();
    let mut h =
        Harness::start_with_store(&fake, &clock, AlwaysLeader, ControllerSettings::default(), &store).await;
    h.pump().await;
    kill_gpu(&mut h, &fake, &clock).await;
    clock.advance(Duration::from_secs(1));
    h.tick().await;
    let first = store.saved().expect("saved");
    assert_eq!(first.restarts.iter().map(|r| r.times.len()).sum::<usize>(), 1);
    // A second dead GPU 2 s later restarts the gang again; the next tick (well within 10 s of
    // the last write) saves it.
    clock.advance(Duration::from_secs(2));
    fake.set_gpu_health("node-06", 1, Health::Unhealthy, 79, "GPU has fallen off the bus");
    h.pump().await;
    assert_eq!(fake.record().gang_restarts.get("ml/jobset/llama"), Some(&2));
    clock.advance(Duration::from_secs(1));
    h.tick().await;
    let second = store.saved().expect("saved");
    assert_eq!(second.restarts.iter().map(|r| r.times.len()).sum::<usize>(), 2, "{second:?}");
    assert_eq!(h.controller.metrics().state_stores("saved"), 2);
}

/// The node's kubelet reports this boot.
fn set_boot(fake: &FakeCluster, node: &str, boot: &str) {
    fake.edit_node(node, |n| {
        n.status.get_or_insert_with(Default::default).node_info =
            Some(NodeSystemInfo { boot_id: boot.into(), ..NodeSystemInfo::default() });
    });
}

fn repair_label(fake: &FakeCluster, node: &str) -> Option<String> {
    fake.node(node)?.metadata.labels?.get(REPAIR_LABEL).cloned()
}

/// A repair requested by one controller process and answered while no controller ran (the node
/// rebooted and its GPU works again) is withdrawn by the next process: it saved the request with
/// the boot it was made in. Without the saved state, the next process finds only the label and
/// takes it as made in the node's current boot, so nothing is withdrawn: the test can fail.
#[tokio::test]
async fn a_repair_answered_while_no_controller_ran_is_withdrawn_by_the_next() {
    let run = |keep: bool| async move {
        let (fake, clock) = gang_cluster();
        for n in 0..8 {
            set_boot(&fake, &format!("node-{n:02}"), "boot-1");
        }
        let store = MemoryStateStore::default();
        let mut h =
            Harness::start_with_store(&fake, &clock, AlwaysLeader, ControllerSettings::default(), &store)
                .await;
        h.pump().await;
        kill_gpu(&mut h, &fake, &clock).await;
        clock.advance(Duration::from_secs(1));
        h.tick().await;
        assert_eq!(repair_label(&fake, "node-03").as_deref(), Some("reset_device"));
        let saved = store.saved().expect("saved");
        assert_eq!(saved.repairs.len(), 1, "{saved:?}");
        assert_eq!(saved.repairs[0].requests[0].boot_id.as_deref(), Some("boot-1"));
        drop(h);
        // node-03 reboots while no controller runs, and its GPU works again.
        clock.advance(Duration::from_secs(120));
        set_boot(&fake, "node-03", "boot-2");
        fake.set_gpu_health("node-03", 5, Health::Healthy, 0, "");
        let fresh = MemoryStateStore::default();
        let settings = ControllerSettings::default();
        let mut h = Harness::start_with_store(
            &fake,
            &clock,
            AlwaysLeader,
            settings,
            if keep { &store } else { &fresh },
        )
        .await;
        h.pump().await;
        clock.advance(Duration::from_secs(1));
        h.tick().await;
        (fake.record().withdrawn_repairs, repair_label(&fake, "node-03"))
    };
    let (withdrawn, label) = run(true).await;
    assert_eq!(withdrawn, ["node-03"]);
    assert_eq!(label, None, "the label is gone");
    let (withdrawn, label) = run(false).await;
    assert!(withdrawn.is_empty(), "{withdrawn:?}");
    assert_eq!(label.as_deref(), Some("reset_device"));
}

/// A cordon devheal made just before its process stopped, before the state was saved, is found
/// on the node (devheal's taint) by the next process, which takes it as its own: it counts
/// against the quarantine budget, is saved, and is lifted after the node reboots and passes
/// probation. The old code never lifted it.
#[tokio::test]
async fn a_cordon_made_but_never_saved_is_adopted_and_lifted_after_a_reboot() {
    let (fake, clock) = gang_cluster();
    for n in 0..8 {
        set_boot(&fake, &format!("node-{n:02}"), "boot-1");
    }
    fake.edit_node("node-02", |n| {
        let spec = n.spec.get_or_insert_with(Default::default);
        spec.unschedulable = Some(true);
        spec.taints = Some(vec![Taint {
            key: UNHEALTHY_TAINT.into(),
            value: Some(CORDONED_BY_DEVHEAL.into()),
            effect: "NoSchedule".into(),
            ..Taint::default()
        }]);
    });
    let store = MemoryStateStore::default();
    let mut h =
        Harness::start_with_store(&fake, &clock, AlwaysLeader, ControllerSettings::default(), &store).await;
    h.pump().await;
    clock.advance(Duration::from_secs(1));
    h.tick().await;
    assert!(fake.record().reports.iter().any(|r| r == "CordonAdopted"), "{:?}", fake.record().reports);
    assert_eq!(h.controller.safety_state().quarantined_nodes, 1);
    assert_eq!(store.saved().map(|s| s.cordons.len()), Some(1));
    clock.advance(Duration::from_secs(60));
    set_boot(&fake, "node-02", "boot-2");
    h.pump().await;
    for _ in 0..11 {
        clock.advance(Duration::from_secs(60));
        h.tick().await;
    }
    let node = fake.node("node-02").expect("node-02");
    let spec = node.spec.unwrap_or_default();
    assert_eq!(spec.unschedulable, Some(false));
    assert!(spec.taints.unwrap_or_default().iter().all(|t| t.key != UNHEALTHY_TAINT));
    assert_eq!(h.controller.safety_state().quarantined_nodes, 0);
}

/// A changed settings file reaches a running controller: a lowered gang restart budget holds
/// the next restart of a gang that already spent it, and a bad edit afterwards is refused and
/// counted while the lowered budget stays.
#[tokio::test]
async fn a_reloaded_settings_file_applies_a_new_budget_and_a_bad_one_keeps_it() {
    let dir = std::env::temp_dir().join(format!("devheal-reload-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("settings.yaml");
    std::fs::write(&path, "{}\n").unwrap();
    let (fake, clock) = gang_cluster();
    let mut h = Harness::start(&fake, &clock, AlwaysLeader, false);
    h.controller = h.controller.with_settings_reloader(
        devheal_controller::SettingsReloader::new(path.clone(), Vec::new()),
        std::time::Duration::from_secs(1),
    );
    h.pump().await;
    h.controller.reload_settings();
    assert_eq!(h.controller.metrics().settings_reloads("applied"), 0, "the file did not change");

    kill_gpu(&mut h, &fake, &clock).await;
    assert_eq!(fake.record().gang_restarts.get("ml/jobset/llama"), Some(&1));

    std::fs::write(&path, "safety:\n  maxGangRestartsPerHour: 1\n").unwrap();
    h.controller.reload_settings();
    assert_eq!(h.controller.metrics().settings_reloads("applied"), 1);

    // A second dead GPU under the same gang: with the default budget (6 an hour) the gang would
    // restart again; the reloaded budget (1) holds it.
    clock.advance(Duration::from_secs(30));
    fake.set_gpu_health("node-05", 2, Health::Unhealthy, 79, "GPU has fallen off the bus");
    h.pump().await;
    for _ in 0..3 {
        clock.advance(Duration::from_secs(60));
        h.tick().await;
    }
    assert_eq!(fake.record().gang_restarts.get("ml/jobset/llama"), Some(&1), "the new budget holds it");

    // A bad edit is refused; the budget in force stays 1, so a third dead GPU restarts nothing.
    std::fs::write(&path, "safety:\n  maxGangRestartsPerHour: 6\n  breakerWindow: 0s\n").unwrap();
    h.controller.reload_settings();
    assert_eq!(h.controller.metrics().settings_reloads("invalid"), 1);
    assert_eq!(h.controller.metrics().settings_reloads("applied"), 1);
    assert!(
        h.controller
            .metrics()
            .encode()
            .contains("devheal_controller_settings_reloads_total{outcome=\"invalid\"} 1")
    );
    clock.advance(Duration::from_secs(30));
    fake.set_gpu_health("node-06", 1, Health::Unhealthy, 79, "GPU has fallen off the bus");
    h.pump().await;
    for _ in 0..3 {
        clock.advance(Duration::from_secs(60));
        h.tick().await;
    }
    assert_eq!(fake.record().gang_restarts.get("ml/jobset/llama"), Some(&1), "the old settings stayed");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A gang that declares its checkpoint write time gets Daly's interval for the interruptions the
/// controller restarted it for, exported per gang; without two interruptions it gets none.
#[tokio::test]
async fn a_gang_that_declares_its_checkpoint_write_time_gets_dalys_interval() {
    let (fake, clock) = gang_cluster();
    fake.edit_pods(|p| {
        p.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert("devheal.io/checkpoint-write-seconds".into(), "60".into());
    });
    let mut h = Harness::start(&fake, &clock, AlwaysLeader, false);
    h.pump().await;
    let series = |h: &Harness<AlwaysLeader>, name: &str| -> Option<f64> {
        let text = h.controller.metrics().encode();
        let prefix = format!("{name}{{namespace=\"ml\",gang=\"jobset/llama\"}} ");
        text.lines().find_map(|l| l.strip_prefix(prefix.as_str())).and_then(|v| v.trim().parse().ok())
    };
    kill_gpu(&mut h, &fake, &clock).await;
    clock.advance(Duration::from_secs(60));
    h.tick().await;
    assert_eq!(
        series(&h, "devheal_controller_recommended_checkpoint_interval_seconds"),
        None,
        "one is no rate"
    );

    clock.advance(Duration::from_secs(2 * 3600));
    fake.set_gpu_health("node-06", 2, Health::Unhealthy, 79, "GPU has fallen off the bus");
    h.pump().await;
    clock.advance(Duration::from_secs(60));
    h.tick().await;
    assert_eq!(fake.record().gang_restarts.get("ml/jobset/llama"), Some(&2), "{:?}", fake.record());
    let mtti = series(&h, "devheal_controller_gang_mean_time_to_interrupt_seconds").expect("the gang's MTTI");
    // Observed from the first pod seen (START) to the tick: 10 s + 60 s + 2 h + 60 s, over 2.
    assert_eq!(mtti, ((10 + 60 + 7200 + 60) / 2) as f64);
    let interval = series(&h, "devheal_controller_recommended_checkpoint_interval_seconds").expect("advice");
    let expected = devheal_core::checkpoint::daly_optimal_interval(60.0, mtti).round();
    assert_eq!(interval, expected, "Daly's optimum for δ = 60 s, M = {mtti} s");
}
