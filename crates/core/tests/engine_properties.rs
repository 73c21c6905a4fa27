//! Property tests of the engine over arbitrary input sequences on a small cluster with tight
//! budgets: budgets are never exceeded, a gang restarts at most once per incident (and, when
//! members told to restart in place do not, is re-created once more for it), `Unknown`
//! health and stale input never cause an action, a network fault never quarantines a device,
//! evicts a pod or requests a repair, and the same inputs give the same actions.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use devheal_core::policy::SafetySettings;
use devheal_core::{
    Action, Attribution, ContainerInfo, ContainerState, Device, DeviceKey, Duration, Engine, EngineConfig,
    Health, HealthReason, HealthSource, IN_PLACE_FALLBACK_SUFFIX, InPlaceRestart, Input, KernelIncident,
    NetworkFault, NodeInfo, PlannedAction, PodInfo, PodPhase, RepairKind, Time, Vendor,
};
use proptest::prelude::*;

const NODES: usize = 6;
const DEVICES_PER_NODE: usize = 2;
const PODS: usize = 10;

#[derive(Clone, Debug)]
enum Op {
    Advance(u16),
    Health(usize, u8),
    Incident {
        device: usize,
        attribution: u8,
        stale: bool,
    },
    PodFails(usize, i32),
    PodReplaced(usize),
    /// The kubelet restarted the pod's container in place (its restart count goes up).
    PodRestartedInPlace(usize),
    Progress(usize),
    Reboot(usize),
    /// The node's agent reports its network at fault (true) or not.
    Network(usize, bool),
    Tick,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1u16..900).prop_map(Op::Advance),
        (0..NODES * DEVICES_PER_NODE, 0u8..4).prop_map(|(d, h)| Op::Health(d, h)),
        (0..NODES * DEVICES_PER_NODE, 0u8..3, any::<bool>())
            .prop_map(|(device, attribution, stale)| Op::Incident { device, attribution, stale }),
        (0..PODS, prop_oneof![Just(1), Just(137), Just(139), Just(143)])
            .prop_map(|(p, c)| Op::PodFails(p, c)),
        (0..PODS).prop_map(Op::PodReplaced),
        (0..PODS).prop_map(Op::PodRestartedInPlace),
        (0..PODS).prop_map(Op::Progress),
        (0..NODES).prop_map(Op::Reboot),
        (0..NODES, any::<bool>()).prop_map(|(n, down)| Op::Network(n, down)),
        Just(Op::Tick),
    ]
}

fn safety() -> SafetySettings {
    SafetySettings {
        max_quarantined_nodes: 2,
        max_quarantined_nodes_percent: 50.0,
        max_evictions_per_minute: 2,
        max_gang_restarts_per_hour: 2,
        breaker_min_nodes: 4,
        breaker_node_percent: 1.0,
        hang_timeout: Duration::from_mins(5),
        probation: Duration::from_mins(2),
        ..SafetySettings::default()
    }
}

fn device_key(d: usize) -> DeviceKey {
    DeviceKey::new(format!("n{}", d / DEVICES_PER_NODE), "nvidia.com/gpu", format!("GPU-{d}"))
}

fn pci(d: usize) -> String {
    format!("0000:{:02x}:00.0", d % DEVICES_PER_NODE + 1)
}

/// Pods 0..4 are gang a, whose pods restart in place on exit 76; 4..8 gang b; 8 and 9 are lone
/// pods; pod p uses device p.
fn pod(p: usize, generation: u32, now: Time, phase: PodPhase, exit: Option<i32>) -> PodInfo {
    let mut labels = BTreeMap::new();
    if p < 8 {
        labels
            .insert("jobset.sigs.k8s.io/jobset-name".to_string(), if p < 4 { "a" } else { "b" }.to_string());
    }
    let state = match exit {
        Some(code) => ContainerState::Terminated {
            exit_code: code,
            signal: None,
            reason: Some("Error".into()),
            message: None,
            finished_at: Some(now),
        },
        None => ContainerState::Running { started_at: Some(now) },
    };
    PodInfo {
        uid: format!("pod-{p}-g{generation}"),
        namespace: "ml".into(),
        name: format!("pod-{p}"),
        node: Some(device_key(p).node),
        labels,
        phase,
        containers: vec![ContainerInfo { name: "main".into(), state, ..ContainerInfo::default() }],
        devices: vec![device_key(p)],
        start_time: Some(now),
        in_place: (p < 4).then_some(InPlaceRestart::AllContainers),
        ..PodInfo::default()
    }
}

struct Run {
    /// (time, the input was Unknown health or stale, actions)
    steps: Vec<(Time, bool, Vec<PlannedAction>)>,
    /// Indices into `steps` of the network reports.
    network_steps: Vec<usize>,
}

fn run(ops: &[Op]) -> Run {
    let mut engine = Engine::new(EngineConfig { safety: safety(), ..EngineConfig::default() });
    let mut now = Time::from_secs(1);
    let mut steps = Vec::new();
    let mut generation = [0u32; PODS];
    let mut restarted = [0u32; PODS];
    let mut boots = [0u32; NODES];
    for n in 0..NODES {
        let name = format!("n{n}");
        let info = NodeInfo { name: name.clone(), boot_id: Some("boot-0".into()), ..NodeInfo::default() };
        engine.handle(Input::NodeUpsert(info), now);
        let devices = (0..DEVICES_PER_NODE)
            .map(|i| {
                let d = n * DEVICES_PER_NODE + i;
                Device { key: device_key(d), pci_address: Some(pci(d)), vendor: Vendor::Nvidia, model: None }
            })
            .collect();
        engine.handle(Input::Devices { node: name, devices }, now);
    }
    for p in 0..PODS {
        engine.handle(Input::PodUpsert(pod(p, 0, now, PodPhase::Running, None)), now);
    }
    let mut incident_seq = 0u32;
    let mut network_since: [Option<Time>; NODES] = [None; NODES];
    let mut network_steps = Vec::new();
    for op in ops {
        let mut ignorable = false;
        let input = match op {
            Op::Advance(s) => {
                now = now + Duration::from_secs(i64::from(*s));
                continue;
            }
            Op::Health(d, h) => {
                let health =
                    [Health::Healthy, Health::Degraded, Health::Unhealthy, Health::Unknown][*h as usize];
                ignorable = health == Health::Unknown;
                let reason = HealthReason {
                    source: HealthSource::Nvml,
                    code: Some(48),
                    message: "double-bit ECC".into(),
                    first_seen: now,
                    last_seen: now,
                    count: 1,
                };
                Input::DeviceHealth { device: device_key(*d), health, reasons: vec![reason] }
            }
            Op::Incident { device, attribution, stale } => {
                incident_seq += 1;
                let node = *device / DEVICES_PER_NODE;
                ignorable = *stale;
                let boot = if *stale {
                    format!("boot-old-{}", boots[node])
                } else {
                    format!("boot-{}", boots[node])
                };
                Input::KernelIncident(KernelIncident {
                    id: format!("inc-{incident_seq}"),
                    node: format!("n{node}"),
                    boot_id: Some(boot),
                    pci_address: Some(pci(*device)),
                    kind: "nvidia_xid".into(),
                    code: Some(79),
                    attribution: [Attribution::Device, Attribution::Application, Attribution::Interconnect]
                        [*attribution as usize],
                    health: if *attribution == 1 { Health::Healthy } else { Health::Unhealthy },
                    action: RepairKind::RebootNode,
                    first_seen: now,
                    last_seen: now,
                    count: 1,
                    summary: "GPU has fallen off the bus".into(),
                })
            }
            Op::PodFails(p, code) => {
                let mut failed = pod(*p, generation[*p], now, PodPhase::Failed, Some(*code));
                failed.containers[0].restart_count = restarted[*p];
                Input::PodUpsert(failed)
            }
            Op::PodReplaced(p) => {
                let old = pod(*p, generation[*p], now, PodPhase::Running, None).uid;
                steps.push((now, false, engine.handle(Input::PodDeleted { uid: old }, now)));
                generation[*p] += 1;
                restarted[*p] = 0;
                Input::PodUpsert(pod(*p, generation[*p], now, PodPhase::Running, None))
            }
            Op::PodRestartedInPlace(p) => {
                restarted[*p] += 1;
                let mut running = pod(*p, generation[*p], now, PodPhase::Running, None);
                running.containers[0].restart_count = restarted[*p];
                running.containers[0].last_state = ContainerState::Terminated {
                    exit_code: 76,
                    signal: None,
                    reason: Some("Error".into()),
                    message: None,
                    finished_at: Some(now),
                };
                Input::PodUpsert(running)
            }
            Op::Progress(p) => Input::Progress {
                pod_uid: format!("pod-{p}-g{}", generation[*p]),
                step: 1,
                step_time: Duration::from_secs(1),
            },
            Op::Reboot(n) => {
                boots[*n] += 1;
                Input::NodeUpsert(NodeInfo {
                    name: format!("n{n}"),
                    boot_id: Some(format!("boot-{}", boots[*n])),
                    ..NodeInfo::default()
                })
            }
            Op::Network(n, down) => {
                network_since[*n] = if *down { Some(network_since[*n].unwrap_or(now)) } else { None };
                network_steps.push(steps.len());
                Input::NodeNetwork {
                    node: format!("n{n}"),
                    fault: network_since[*n].map(|since| NetworkFault {
                        links: vec!["ib0 (0000:08:00.0)".into()],
                        since,
                        reason: "link down".into(),
                    }),
                }
            }
            Op::Tick => Input::Tick,
        };
        let actions = engine.handle(input, now);
        steps.push((now, ignorable, actions));
    }
    Run { steps, network_steps }
}

fn node_limit() -> usize {
    let s = safety();
    (((s.max_quarantined_nodes_percent / 100.0) * NODES as f64).floor().max(1.0) as usize)
        .min(s.max_quarantined_nodes as usize)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn budgets_are_never_exceeded(ops in prop::collection::vec(op(), 1..80)) {
        let s = safety();
        let r = run(&ops);
        let mut quarantined: BTreeMap<String, i64> = BTreeMap::new();
        let mut evictions: VecDeque<Time> = VecDeque::new();
        let mut restarts: BTreeMap<String, VecDeque<Time>> = BTreeMap::new();
        for (now, _, actions) in &r.steps {
            for a in actions {
                match &a.action {
                    Action::QuarantineDevice { device, .. } => *quarantined.entry(device.node.clone()).or_default() += 1,
                    Action::CordonNode { node, .. } => *quarantined.entry(node.clone()).or_default() += 1,
                    Action::ReleaseDevice { device, .. } => *quarantined.entry(device.node.clone()).or_default() -= 1,
                    Action::UncordonNode { node, .. } => *quarantined.entry(node.clone()).or_default() -= 1,
                    Action::EvictPod { .. } => {
                        while evictions.front().is_some_and(|t| *t <= *now - Duration::from_mins(1)) {
                            evictions.pop_front();
                        }
                        evictions.push_back(*now);
                        prop_assert!(evictions.len() <= s.max_evictions_per_minute as usize, "evictions at {now:?}");
                    }
                    // The fallback of an in-place restart re-creates the gang for the same
                    // incident: not another restart of the budget.
                    Action::RestartGang { .. } if a.idempotency_key.ends_with(IN_PLACE_FALLBACK_SUFFIX) => {}
                    Action::RestartGang { gang, .. } => {
                        let q = restarts.entry(gang.to_string()).or_default();
                        while q.front().is_some_and(|t| *t <= *now - Duration::from_hours(1)) {
                            q.pop_front();
                        }
                        q.push_back(*now);
                        prop_assert!(q.len() <= s.max_gang_restarts_per_hour as usize, "restarts of {gang}");
                    }
                    _ => {}
                }
                let nodes = quarantined.values().filter(|c| **c > 0).count();
                prop_assert!(nodes <= node_limit(), "{nodes} nodes quarantined, limit {}", node_limit());
            }
        }
    }

    #[test]
    fn a_gang_restarts_at_most_once_per_incident(ops in prop::collection::vec(op(), 1..80)) {
        let r = run(&ops);
        let mut seen = BTreeSet::new();
        let mut fell_back = BTreeSet::new();
        for (_, _, actions) in &r.steps {
            for a in actions {
                if let Action::RestartGang { gang, incident, in_place, .. } = &a.action {
                    if a.idempotency_key.ends_with(IN_PLACE_FALLBACK_SUFFIX) {
                        // Once, after a restart of that incident, and re-creating every member.
                        prop_assert!(seen.contains(&(gang.clone(), incident.clone())), "a fallback first for {incident}");
                        prop_assert!(fell_back.insert((gang.clone(), incident.clone())), "second fallback for {incident}");
                        prop_assert!(in_place.is_empty());
                    } else {
                        prop_assert!(seen.insert((gang.clone(), incident.clone())), "second restart of {gang} for {incident}");
                        // Only gang a's pods restart in place.
                        prop_assert!(in_place.iter().all(|p| ["pod-0", "pod-1", "pod-2", "pod-3"].contains(&p.name.as_str())));
                    }
                }
            }
            let keys: Vec<&str> = actions.iter().map(|a| a.idempotency_key.as_str()).collect();
            let unique: BTreeSet<&str> = keys.iter().copied().collect();
            prop_assert_eq!(keys.len(), unique.len());
        }
    }

    #[test]
    fn unknown_health_and_stale_input_never_act(ops in prop::collection::vec(op(), 1..80)) {
        let r = run(&ops);
        for (now, ignorable, actions) in &r.steps {
            if *ignorable {
                prop_assert!(actions.is_empty(), "at {now:?}: {actions:?}");
            }
        }
    }

    #[test]
    fn a_network_fault_never_quarantines_evicts_or_requests_a_repair(ops in prop::collection::vec(op(), 1..80)) {
        let r = run(&ops);
        for i in &r.network_steps {
            let (now, _, actions) = &r.steps[*i];
            for a in actions {
                let device_action = matches!(
                    a.action,
                    Action::QuarantineDevice { .. } | Action::EvictPod { .. } | Action::RequestRepair { .. }
                );
                prop_assert!(!device_action, "at {now:?}: {:?}", a.action);
            }
        }
    }

    #[test]
    fn the_engine_is_deterministic(ops in prop::collection::vec(op(), 1..80)) {
        let a = run(&ops);
        let b = run(&ops);
        let flat = |r: &Run| r.steps.iter().map(|(_, _, acts)| acts.clone()).collect::<Vec<_>>();
        prop_assert_eq!(flat(&a), flat(&b));
    }
}

/// The harness drives the engine into the states the properties are about: restarts, absorbed
/// member failures, quarantines and exhausted budgets.
#[test]
fn the_harness_reaches_restarts_quarantines_and_budget_limits() {
    let ops = [
        Op::Health(0, 2),
        Op::PodFails(1, 1),
        Op::Advance(5),
        Op::Health(4, 2),
        Op::Advance(5),
        Op::Health(8, 2),
        Op::Advance(5),
        Op::Health(10, 2),
        Op::PodFails(9, 139),
    ];
    let r = run(&ops);
    let all: Vec<&Action> = r.steps.iter().flat_map(|(_, _, a)| a.iter().map(|p| &p.action)).collect();
    let count = |f: &dyn Fn(&Action) -> bool| all.iter().filter(|a| f(a)).count();
    assert_eq!(count(&|a| matches!(a, Action::RestartGang { .. })), 2, "{all:#?}");
    assert_eq!(count(&|a| matches!(a, Action::QuarantineDevice { .. })), 2);
    assert!(
        count(&|a| matches!(a, Action::Report { reason, .. } if reason == "QuarantineBudgetExhausted")) >= 1
    );
    // The lone pod on device 8 is evicted (evictions have their own budget) although its device
    // could not be quarantined; pod 9 crashed on a healthy device: nothing.
    assert_eq!(count(&|a| matches!(a, Action::EvictPod { .. })), 1);
}

/// The harness reaches restarts in place and their fallback: gang a's device 0 fails, pods 1–3
/// are told to restart in place; only pod 1 does, so after the deadline the gang is re-created
/// once for the same incident.
#[test]
fn the_harness_reaches_in_place_restarts_and_their_fallback() {
    let ops = [
        Op::Health(0, 2),
        Op::PodRestartedInPlace(1),
        Op::Advance(121),
        Op::Tick,
        Op::Advance(300),
        Op::Tick,
    ];
    let r = run(&ops);
    let restarts: Vec<(&str, Vec<&str>)> = r
        .steps
        .iter()
        .flat_map(|(_, _, a)| a.iter())
        .filter_map(|p| match &p.action {
            Action::RestartGang { in_place, .. } => {
                Some((p.idempotency_key.as_str(), in_place.iter().map(|r| r.name.as_str()).collect()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(restarts.len(), 2, "{restarts:#?}");
    assert_eq!(restarts[0].1, ["pod-1", "pod-2", "pod-3"]);
    assert!(restarts[1].0.ends_with(IN_PLACE_FALLBACK_SUFFIX) && restarts[1].1.is_empty(), "{restarts:#?}");
}
