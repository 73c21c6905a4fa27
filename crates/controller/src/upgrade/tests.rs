//! The rollout gate's decisions on hand-made views, and a property test that plays the
//! DaemonSet controller and the kubelet around it until the plan ends.

use devheal_core::{Duration, Time};
use devheal_k8s::upgrade_plan::{UpgradePhase, UpgradePlanSpec, UpgradePlanStatus};
use proptest::prelude::*;

use super::decide::{Decision, Step, decide};
use super::validate::{ValidPlan, validate};
use super::view::{DevicePod, NodeView, PluginPod, Revision, View};

fn plan(json: serde_json::Value) -> ValidPlan {
    let spec: UpgradePlanSpec = serde_json::from_value(json).expect("spec");
    validate(&spec).expect("valid")
}

fn three_stages() -> ValidPlan {
    plan(serde_json::json!({"daemonSet": "plugin", "stages": [{"nodes": 1}, {"nodes": 2}, {"nodes": 2}],
        "soakSeconds": 10, "maxUnavailable": 2, "health": {"resource": "nvidia.com/gpu"}}))
}

fn revision(hash: &str, number: i64) -> Revision {
    Revision { name: format!("plugin-{hash}"), hash: hash.into(), number, images: format!("p=plugin:{hash}") }
}

/// `n` nodes with 8 GPUs each, all running revision `a`; the template is `b`.
fn cluster(n: usize) -> View {
    let mut view = View {
        found: true,
        update_strategy: "OnDelete".into(),
        revisions: vec![revision("a", 1), revision("b", 2)],
        ..View::default()
    };
    for i in 0..n {
        let name = format!("n{i}");
        view.nodes.insert(
            name.clone(),
            NodeView {
                name: name.clone(),
                allocatable: Some(8),
                plugin: Some(pod(&name, "a", 0)),
                ..NodeView::default()
            },
        );
    }
    view
}

fn pod(node: &str, hash: &str, generation: u32) -> PluginPod {
    PluginPod {
        namespace: "gpu".into(),
        name: format!("plugin-{node}-{generation}"),
        uid: format!("uid-{node}-{generation}"),
        hash: hash.into(),
        ready: true,
        deleting: false,
    }
}

/// The DaemonSet controller and kubelet at once: each deleted pod comes back Ready on the
/// template's revision.
fn carry_out(view: &mut View, steps: &[Step]) {
    let current = view.current().map(|r| r.hash.clone()).unwrap_or_default();
    for step in steps {
        match step {
            Step::DeletePod { node, .. } => {
                let n = view.nodes.get_mut(node).expect("a node of the view");
                let generation = n
                    .plugin
                    .as_ref()
                    .map_or(0, |p| p.name.rsplit('-').next().unwrap().parse::<u32>().unwrap() + 1);
                n.plugin = Some(pod(node, &current, generation));
            }
            Step::Cordon { node } => {
                let n = view.nodes.get_mut(node).unwrap();
                n.cordoned_by_gate = true;
                n.unschedulable = true;
            }
            Step::Uncordon { node } => {
                let n = view.nodes.get_mut(node).unwrap();
                n.cordoned_by_gate = false;
                n.unschedulable = false;
            }
            Step::EvictPod { node, uid, .. } => {
                view.nodes.get_mut(node).unwrap().device_pods.retain(|p| &p.uid != uid)
            }
            Step::RestoreTemplate { revision } => {
                let r = view.revisions.iter().position(|r| &r.name == revision).expect("a known revision");
                let mut back = view.revisions.remove(r);
                back.number = view.revisions.iter().map(|r| r.number).max().unwrap_or(0) + 1;
                view.revisions.push(back);
            }
        }
    }
}

fn on(view: &View, hash: &str) -> Vec<String> {
    view.nodes
        .values()
        .filter(|n| n.plugin.as_ref().is_some_and(|p| p.hash == hash))
        .map(|n| n.name.clone())
        .collect()
}

fn pass(p: &ValidPlan, st: &UpgradePlanStatus, view: &View, now: Time) -> Decision {
    decide(Ok(p), "plugin", Some(1), st, view, now)
}

#[test]
fn a_good_version_goes_canary_first_then_waves_with_soaks_and_completes() {
    let p = three_stages();
    let mut view = cluster(5);
    let mut st = UpgradePlanStatus::default();
    let mut now = Time::from_secs(1_000);
    let d = pass(&p, &st, &view, now);
    assert_eq!(d.status.phase, UpgradePhase::Progressing);
    assert_eq!(d.status.from_revision.as_ref().map(|r| r.hash.as_str()), Some("a"));
    assert_eq!(d.status.to_revision.as_ref().map(|r| r.hash.as_str()), Some("b"));
    assert_eq!(d.steps.len(), 1, "the canary is one node: {:?}", d.steps);
    assert!(d.events.iter().any(|e| e.reason == "UpgradeStageStarted"));
    carry_out(&mut view, &d.steps);
    st = d.status;
    let d = pass(&p, &st, &view, now);
    assert_eq!(d.status.reason.as_deref(), Some("Soaking"));
    assert!(d.steps.is_empty(), "no second stage before the canary soaked");
    st = d.status;
    now = now + Duration::from_secs(11);
    let d = pass(&p, &st, &view, now);
    assert_eq!(d.status.stage, 2);
    assert_eq!(d.steps.len(), 2, "stage two is two nodes, within a budget of two");
    carry_out(&mut view, &d.steps);
    st = d.status;
    let mut rounds = 0;
    while st.phase != UpgradePhase::Completed {
        now = now + Duration::from_secs(5);
        let d = pass(&p, &st, &view, now);
        carry_out(&mut view, &d.steps);
        st = d.status;
        rounds += 1;
        assert!(rounds < 20, "does not complete: {st:?}");
    }
    assert_eq!(on(&view, "b").len(), 5);
    assert_eq!(st.upgraded_nodes, 5);
    assert_eq!(st.nodes.iter().map(|t| t.stage).collect::<Vec<_>>(), [1, 2, 2, 3, 3]);
}

#[test]
fn devices_turning_unhealthy_in_stage_two_pause_before_stage_three_with_the_reason() {
    let p = three_stages();
    let mut view = cluster(5);
    let mut st = UpgradePlanStatus::default();
    let mut now = Time::from_secs(1_000);
    for _ in 0..2 {
        let d = pass(&p, &st, &view, now);
        carry_out(&mut view, &d.steps);
        st = d.status;
        now = now + Duration::from_secs(11);
    }
    let d = pass(&p, &st, &view, now);
    carry_out(&mut view, &d.steps);
    st = d.status;
    assert_eq!(st.stage, 2);
    let stage_two: Vec<String> = st.nodes.iter().filter(|t| t.stage == 2).map(|t| t.name.clone()).collect();
    view.nodes.get_mut(&stage_two[1]).unwrap().unhealthy_devices = 2;
    let d = pass(&p, &st, &view, now);
    assert_eq!(d.status.phase, UpgradePhase::Paused);
    assert_eq!(d.status.reason.as_deref(), Some("DevicesUnhealthy"));
    assert!(d.status.message.as_deref().unwrap_or("").contains(&stage_two[1]), "{:?}", d.status.message);
    assert!(d.steps.is_empty());
    let paused = d.events.iter().find(|e| e.reason == "UpgradePaused").expect("an UpgradePaused Event");
    assert!(paused.warning && paused.message.starts_with("DevicesUnhealthy: "));
    // It stays paused, even when the devices recover, and takes no third stage.
    st = d.status;
    view.nodes.get_mut(&stage_two[1]).unwrap().unhealthy_devices = 0;
    for _ in 0..3 {
        now = now + Duration::from_secs(60);
        let d = pass(&p, &st, &view, now);
        assert!(d.steps.is_empty() && d.events.is_empty());
        assert_eq!(d.status.phase, UpgradePhase::Paused);
        st = d.status;
    }
    assert_eq!(on(&view, "b").len(), 3);
}

#[test]
fn rollback_restores_the_template_first_then_only_the_upgraded_nodes() {
    let mut p = three_stages();
    p.rollback_on_failure = true;
    let mut view = cluster(5);
    let mut st = UpgradePlanStatus::default();
    let mut now = Time::from_secs(1_000);
    for _ in 0..3 {
        let d = pass(&p, &st, &view, now);
        carry_out(&mut view, &d.steps);
        st = d.status;
        now = now + Duration::from_secs(11);
    }
    let upgraded = on(&view, "b");
    assert_eq!(upgraded.len(), 3);
    let untouched: Vec<(String, String)> = view
        .nodes
        .values()
        .filter(|n| !upgraded.contains(&n.name))
        .map(|n| (n.name.clone(), n.plugin.as_ref().unwrap().uid.clone()))
        .collect();
    view.nodes.get_mut(&upgraded[0]).unwrap().allocatable = Some(6);
    let d = pass(&p, &st, &view, now);
    assert_eq!(d.status.phase, UpgradePhase::RollingBack);
    assert_eq!(d.status.reason.as_deref(), Some("DevicesNotAdvertised"));
    assert_eq!(
        d.steps,
        [Step::RestoreTemplate { revision: "plugin-a".into() }],
        "the template before any pod"
    );
    carry_out(&mut view, &d.steps);
    st = d.status;
    let mut rounds = 0;
    while st.phase != UpgradePhase::RolledBack {
        let d = pass(&p, &st, &view, now);
        assert!(
            d.steps.iter().filter(|s| matches!(s, Step::DeletePod { .. })).count() <= 2,
            "within the budget"
        );
        for s in &d.steps {
            if let Step::DeletePod { node, .. } = s {
                assert!(upgraded.contains(node), "only upgraded nodes are rolled back, not {node}");
            }
        }
        carry_out(&mut view, &d.steps);
        st = d.status;
        rounds += 1;
        assert!(rounds < 10, "does not finish: {st:?}");
    }
    assert_eq!(on(&view, "a").len(), 5);
    for (node, uid) in untouched {
        assert_eq!(view.nodes[&node].plugin.as_ref().unwrap().uid, uid, "{node}'s pod was never replaced");
    }
    assert!(st.message.unwrap_or_default().contains("advertises 6"));
}

#[test]
fn nodes_running_training_gangs_wait_unless_allowed() {
    let mut p = plan(serde_json::json!({"daemonSet": "plugin", "stages": [{"nodes": 2}], "soakSeconds": 0,
        "maxUnavailable": 2}));
    let mut view = cluster(2);
    for n in view.nodes.values_mut() {
        n.device_pods.push(DevicePod {
            namespace: "ml".into(),
            name: format!("trainer-{}", n.name),
            uid: format!("t-{}", n.name),
            running: true,
            gang: true,
        });
    }
    view.nodes.get_mut("n1").unwrap().device_pods[0].gang = false;
    let d = pass(&p, &UpgradePlanStatus::default(), &view, Time::from_secs(1));
    assert_eq!(d.steps.len(), 1, "only n1, whose pod is no gang's: {:?}", d.steps);
    assert!(matches!(&d.steps[0], Step::DeletePod { node, .. } if node == "n1"));
    assert_eq!(d.status.reason.as_deref(), Some("WaitingForGangs"));
    assert!(d.status.message.unwrap_or_default().contains("n0"));
    p.allow_interrupting_gangs = true;
    let d = pass(&p, &UpgradePlanStatus::default(), &view, Time::from_secs(1));
    assert_eq!(d.steps.len(), 2);
}

#[test]
fn a_drain_cordons_and_evicts_before_the_old_pod_goes_and_uncordons_after() {
    let p = plan(serde_json::json!({"daemonSet": "plugin", "stages": [{"nodes": 1}], "soakSeconds": 0,
        "drainDevicePods": true}));
    let mut view = cluster(1);
    view.nodes.get_mut("n0").unwrap().device_pods.push(DevicePod {
        namespace: "ml".into(),
        name: "infer".into(),
        uid: "i".into(),
        running: true,
        gang: false,
    });
    let d = pass(&p, &UpgradePlanStatus::default(), &view, Time::from_secs(1));
    assert_eq!(d.steps.len(), 2, "{:?}", d.steps);
    assert!(matches!(d.steps[0], Step::Cordon { .. }) && matches!(d.steps[1], Step::EvictPod { .. }));
    carry_out(&mut view, &d.steps);
    let d = pass(&p, &d.status, &view, Time::from_secs(2));
    assert!(matches!(d.steps.as_slice(), [Step::DeletePod { .. }]), "{:?}", d.steps);
    carry_out(&mut view, &d.steps);
    let d = pass(&p, &d.status, &view, Time::from_secs(3));
    assert!(d.steps.contains(&Step::Uncordon { node: "n0".into() }), "{:?}", d.steps);
    assert_eq!(d.status.phase, UpgradePhase::Completed);
}

#[test]
fn plans_that_cannot_be_carried_out_say_why() {
    let p = three_stages();
    let mut view = cluster(2);
    view.update_strategy = "RollingUpdate".into();
    let d = pass(&p, &UpgradePlanStatus::default(), &view, Time::from_secs(1));
    assert_eq!((d.status.phase, d.status.reason.as_deref()), (UpgradePhase::Invalid, Some("NotOnDelete")));
    assert!(d.status.message.unwrap_or_default().starts_with("spec.daemonSet: "));
    assert!(d.events.iter().any(|e| e.reason == "UpgradeInvalid"));
    let spec: UpgradePlanSpec = serde_json::from_value(
        serde_json::json!({"daemonSet": "plugin", "stages": [{"nodes": 1, "percent": 5}]}),
    )
    .unwrap();
    let e = validate(&spec).unwrap_err();
    let d = decide(Err(&e), "plugin", None, &UpgradePlanStatus::default(), &cluster(1), Time::ZERO);
    assert_eq!(d.status.message.as_deref(), Some("spec.stages[0]: give exactly one of nodes or percent"));
    // Every node already on the template: nothing to do.
    let mut view = cluster(2);
    view.revisions.truncate(1);
    let d = pass(&p, &UpgradePlanStatus::default(), &view, Time::ZERO);
    assert_eq!(
        (d.status.phase, d.status.reason.as_deref()),
        (UpgradePhase::Completed, Some("NothingToUpgrade"))
    );
}

#[test]
fn a_template_changed_under_the_plan_pauses_it() {
    let p = three_stages();
    let mut view = cluster(3);
    let d = pass(&p, &UpgradePlanStatus::default(), &view, Time::ZERO);
    carry_out(&mut view, &d.steps);
    view.revisions.push(revision("c", 3));
    let d = pass(&p, &d.status, &view, Time::from_secs(1));
    assert_eq!((d.status.phase, d.status.reason.as_deref()), (UpgradePhase::Paused, Some("TargetChanged")));
    assert!(d.steps.is_empty());
}

#[test]
fn a_pass_repeated_decides_the_same_steps() {
    // What a restarted controller does: the status and the pods are all it has.
    let p = three_stages();
    let view = cluster(5);
    let first = pass(&p, &UpgradePlanStatus::default(), &view, Time::from_secs(5));
    let again = pass(&p, &first.status, &view, Time::from_secs(9));
    assert_eq!(first.steps, again.steps, "the old pod not gone yet: deleted again (same UID)");
    assert_eq!(again.status.nodes, first.status.nodes, "no second node taken up");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Whatever the pool, stages and budget: never more nodes unavailable than the budget, no
    /// stage starts before the one before it is Ready and soaked, nodes with gangs are never
    /// touched when not allowed, and the plan ends with every free node upgraded.
    #[test]
    fn the_budget_and_the_stages_hold(
        nodes in 1usize..12,
        sizes in proptest::collection::vec((1u32..5, any::<bool>()), 1..4),
        max_unavailable in 1u32..4,
        gang_nodes in proptest::collection::btree_set(0usize..12, 0..3),
        slow in proptest::collection::vec(any::<bool>(), 12),
    ) {
        let stages: Vec<serde_json::Value> = sizes.iter().map(|(n, pct)| if *pct {
            serde_json::json!({"percent": n * 20})
        } else {
            serde_json::json!({"nodes": n})
        }).collect();
        let p = plan(serde_json::json!({"daemonSet": "plugin", "stages": stages, "soakSeconds": 3,
            "maxUnavailable": max_unavailable}));
        let mut view = cluster(nodes);
        for g in &gang_nodes {
            if let Some(n) = view.nodes.get_mut(&format!("n{g}")) {
                n.device_pods.push(DevicePod { namespace: "ml".into(), name: "t".into(), uid: format!("t{g}"),
                    running: true, gang: true });
            }
        }
        let mut st = UpgradePlanStatus::default();
        let mut now = Time::from_secs(100);
        let mut pending: Vec<Step> = Vec::new();
        for round in 0..400 {
            let d = pass(&p, &st, &view, now);
            // Nodes whose old pod is gone but whose new one is not Ready: the "slow" ones take
            // a round more (the deletes of last round land now).
            carry_out(&mut view, &pending);
            pending.clear();
            let (slow_steps, fast): (Vec<Step>, Vec<Step>) = d.steps.iter().cloned().partition(|s| match s {
                Step::DeletePod { node, .. } => slow[node[1..].parse::<usize>().unwrap() % 12] && round % 2 == 0,
                _ => false,
            });
            for s in &slow_steps {
                if let Step::DeletePod { node, .. } = s {
                    let n = view.nodes.get_mut(node).unwrap();
                    if let Some(pod) = n.plugin.as_mut() { pod.deleting = true; pod.ready = false; }
                }
            }
            carry_out(&mut view, &fast);
            pending.extend(slow_steps);
            for s in &d.steps {
                if let Step::DeletePod { node, .. } = s {
                    prop_assert!(!gang_nodes.contains(&node[1..].parse::<usize>().unwrap()), "touched gang node {node}");
                }
            }
            let unavailable = d.status.nodes.iter().filter(|t| {
                view.nodes[&t.name].plugin.as_ref().is_none_or(|p| p.hash != "b" || !p.ready || p.deleting)
            }).count();
            prop_assert!(unavailable <= max_unavailable as usize, "{unavailable} unavailable at once");
            // A stage begins only when every node before it runs the new revision Ready.
            for t in d.status.nodes.iter().filter(|t| t.stage < d.status.stage) {
                let n = &view.nodes[&t.name];
                prop_assert!(n.plugin.as_ref().is_some_and(|p| p.hash == "b"), "{} of stage {} not upgraded", t.name, t.stage);
            }
            st = d.status;
            now = now + Duration::from_secs(2);
            if st.phase == UpgradePhase::Completed && pending.is_empty() {
                break;
            }
        }
        let free = nodes - gang_nodes.iter().filter(|g| **g < nodes).count();
        if gang_nodes.iter().all(|g| *g >= nodes) {
            prop_assert_eq!(st.phase, UpgradePhase::Completed);
        }
        prop_assert!(on(&view, "b").len() >= free.min(nodes), "{} of {free} free nodes upgraded", on(&view, "b").len());
    }
}
