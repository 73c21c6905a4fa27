//! Property tests of the restart budgets and the progress breaker, over arbitrary input
//! sequences on eight gangs of two pods in three namespaces under tight limits: gang restarts
//! and member replacements stay within the per-gang, per-namespace and cluster hourly budgets;
//! restarts caused by progress reports alone are never planned while the progress breaker is
//! open, and never more than its threshold within its window; a flood of progress findings opens
//! it while a failed device still restarts its gang; and the budgets refill as the hour slides.
//!
//! Whether a restart was caused by progress alone is judged here from the inputs the harness
//! sent (a model of each device's last report), not from the engine's own bookkeeping.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use devheal_core::policy::SafetySettings;
use devheal_core::{
    Action, ContainerInfo, ContainerState, Device, DeviceKey, Duration, Engine, EngineConfig, Health,
    HealthReason, HealthSource, Input, NodeInfo, PlannedAction, PodInfo, PodPhase, Time, Vendor,
};
use proptest::prelude::*;

const GANGS: usize = 8;
const MEMBERS: usize = 2;
const NAMESPACES: usize = 3;
/// Pod `p` is member `p % MEMBERS` of gang `p / MEMBERS` and uses device `p`; gang `g` runs on
/// node `n<g>`, in namespace `ns-<g % NAMESPACES>`.
const PODS: usize = GANGS * MEMBERS;

fn safety() -> SafetySettings {
    SafetySettings {
        max_gang_restarts_per_hour: 3,
        max_gang_restarts_per_hour_per_namespace: 4,
        max_gang_restarts_per_hour_cluster: 6,
        progress_breaker_restarts: 3,
        progress_breaker_window: Duration::from_mins(10),
        breaker_cooldown: Duration::from_mins(15),
        degraded_replace_after: Duration::from_mins(5),
        hang_timeout: Duration::from_mins(5),
        // The node breaker holds restarts too; these properties are about the other limits.
        breaker_min_nodes: 1000,
        ..SafetySettings::default()
    }
}

#[derive(Clone, Debug)]
enum Op {
    Advance(u16),
    Tick,
    /// The device turns Unhealthy (an NVML reason): a fault.
    Fails(usize),
    Recovers(usize),
    /// The device turns Degraded on a progress reason (a straggler): progress alone.
    Straggler(usize),
    /// The device turns Degraded on an NVML reason (clocks throttled): a fault.
    Throttled(usize),
    /// The controller's hang finding for the pod.
    Hung(usize),
    Progress(usize),
    /// The gang's pods come back as new incarnations (its restart went through).
    GangRestarted(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1u16..1800).prop_map(Op::Advance),
        2 => Just(Op::Tick),
        1 => (0..PODS).prop_map(Op::Fails),
        1 => (0..PODS).prop_map(Op::Recovers),
        2 => (0..PODS).prop_map(Op::Straggler),
        1 => (0..PODS).prop_map(Op::Throttled),
        3 => (0..PODS).prop_map(Op::Hung),
        2 => (0..PODS).prop_map(Op::Progress),
        2 => (0..GANGS).prop_map(Op::GangRestarted),
    ]
}

fn namespace(gang: usize) -> String {
    format!("ns-{}", gang % NAMESPACES)
}

fn device_key(d: usize) -> DeviceKey {
    DeviceKey::new(format!("n{}", d / MEMBERS), "nvidia.com/gpu", format!("GPU-{d}"))
}

fn device_index(k: &DeviceKey) -> Option<usize> {
    k.id.strip_prefix("GPU-")?.parse().ok()
}

fn pod(p: usize, generation: u32, now: Time) -> PodInfo {
    let gang = p / MEMBERS;
    PodInfo {
        uid: format!("pod-{p}-g{generation}"),
        namespace: namespace(gang),
        name: format!("gang-{gang}-{}", p % MEMBERS),
        node: Some(device_key(p).node),
        labels: [("jobset.sigs.k8s.io/jobset-name".to_string(), format!("gang-{gang}"))].into(),
        phase: PodPhase::Running,
        containers: vec![ContainerInfo {
            name: "main".into(),
            state: ContainerState::Running { started_at: Some(now) },
            ..ContainerInfo::default()
        }],
        devices: vec![device_key(p)],
        start_time: Some(now),
        ..PodInfo::default()
    }
}

/// What the harness last told the engine about each device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reported {
    Healthy,
    Unhealthy,
    DegradedByProgress,
    DegradedByDevice,
}

/// A gang restart or member replacement the engine planned.
#[derive(Clone, Debug)]
struct Restart {
    at: Time,
    gang: usize,
    /// Caused by progress reports alone, judged from what the harness reported.
    progress_only: bool,
}

/// Everything a run produced, in order: each action, and the restarts among them.
#[derive(Default)]
struct Run {
    actions: Vec<(Time, PlannedAction)>,
    restarts: Vec<Restart>,
    /// The index (into `actions`) of each restart.
    restart_at: Vec<usize>,
}

impl Run {
    fn reports(&self, reason: &str) -> usize {
        self.actions
            .iter()
            .filter(|(_, a)| matches!(&a.action, Action::Report { reason: r, .. } if r == reason))
            .count()
    }
}

struct Harness {
    engine: Engine,
    now: Time,
    generation: [u32; PODS],
    reported: [Reported; PODS],
    since: u64,
    run: Run,
}

impl Harness {
    fn new() -> Self {
        let mut engine = Engine::new(EngineConfig { safety: safety(), ..EngineConfig::default() });
        let now = Time::from_secs(1);
        for g in 0..GANGS {
            let name = format!("n{g}");
            let info = NodeInfo { name: name.clone(), boot_id: Some("boot-0".into()), ..NodeInfo::default() };
            engine.handle(Input::NodeUpsert(info), now);
            let devices = (0..MEMBERS)
                .map(|m| {
                    let d = g * MEMBERS + m;
                    let pci = Some(format!("0000:{:02x}:00.0", m + 1));
                    Device { key: device_key(d), pci_address: pci, vendor: Vendor::Nvidia, model: None }
                })
                .collect();
            engine.handle(Input::Devices { node: name, devices }, now);
        }
        for p in 0..PODS {
            engine.handle(Input::PodUpsert(pod(p, 0, now)), now);
        }
        Harness {
            engine,
            now,
            generation: [0; PODS],
            reported: [Reported::Healthy; PODS],
            since: 0,
            run: Run::default(),
        }
    }

    fn uid(&self, p: usize) -> String {
        format!("pod-{p}-g{}", self.generation[p])
    }

    fn health(&mut self, d: usize, health: Health, source: HealthSource) -> Input {
        self.reported[d] = match (health, source) {
            (Health::Unhealthy, _) => Reported::Unhealthy,
            (Health::Degraded, HealthSource::Progress) => Reported::DegradedByProgress,
            (Health::Degraded, _) => Reported::DegradedByDevice,
            _ => Reported::Healthy,
        };
        let reasons = if health == Health::Healthy {
            Vec::new()
        } else {
            vec![HealthReason {
                source,
                code: None,
                message: format!("{source:?} says {health:?}"),
                first_seen: self.now,
                last_seen: self.now,
                count: 1,
            }]
        };
        Input::DeviceHealth { device: device_key(d), health, reasons }
    }

    fn apply(&mut self, op: &Op) {
        let input = match op {
            Op::Advance(s) => {
                self.now = self.now + Duration::from_secs(i64::from(*s));
                return;
            }
            Op::Tick => Input::Tick,
            Op::Fails(d) => self.health(*d, Health::Unhealthy, HealthSource::Nvml),
            Op::Recovers(d) => self.health(*d, Health::Healthy, HealthSource::Nvml),
            Op::Straggler(d) => self.health(*d, Health::Degraded, HealthSource::Progress),
            Op::Throttled(d) => self.health(*d, Health::Degraded, HealthSource::Nvml),
            Op::Hung(p) => {
                // Each finding is a new silence.
                self.since += 1;
                let since = self.now - Duration::from_secs(60) + Duration::from_nanos(self.since as i64);
                Input::Hung { pod_uid: self.uid(*p), since, evidence: "no step".into() }
            }
            Op::Progress(p) => {
                Input::Progress { pod_uid: self.uid(*p), step: 1, step_time: Duration::from_secs(1) }
            }
            Op::GangRestarted(g) => {
                for p in g * MEMBERS..(g + 1) * MEMBERS {
                    let old = self.uid(p);
                    let acts = self.engine.handle(Input::PodDeleted { uid: old }, self.now);
                    self.record(acts);
                    self.generation[p] += 1;
                    let acts =
                        self.engine.handle(Input::PodUpsert(pod(p, self.generation[p], self.now)), self.now);
                    self.record(acts);
                }
                return;
            }
        };
        let acts = self.engine.handle(input, self.now);
        self.record(acts);
    }

    fn record(&mut self, actions: Vec<PlannedAction>) {
        for a in actions {
            let restart = match &a.action {
                Action::RestartGang { gang, incident, .. } => {
                    let g = gang_index(&gang.name);
                    // A hang is progress alone unless a member's device had failed.
                    let members_failed =
                        (g * MEMBERS..(g + 1) * MEMBERS).any(|d| self.reported[d] == Reported::Unhealthy);
                    Some(Restart {
                        at: self.now,
                        gang: g,
                        progress_only: incident.starts_with("hang/") && !members_failed,
                    })
                }
                Action::ReplaceAtCheckpoint { gang, devices, .. } => {
                    let progress_only = !devices.is_empty()
                        && devices.iter().all(|k| {
                            device_index(k).is_some_and(|d| self.reported[d] == Reported::DegradedByProgress)
                        });
                    Some(Restart { at: self.now, gang: gang_index(&gang.name), progress_only })
                }
                _ => None,
            };
            if let Some(r) = restart {
                self.run.restart_at.push(self.run.actions.len());
                self.run.restarts.push(r);
            }
            self.run.actions.push((self.now, a));
        }
    }
}

fn gang_index(name: &str) -> usize {
    name.strip_prefix("gang-").and_then(|n| n.parse().ok()).unwrap_or(usize::MAX)
}

fn run(ops: &[Op]) -> Run {
    let mut h = Harness::new();
    for op in ops {
        h.apply(op);
    }
    h.run
}

/// Keeps the times in a sliding window ending now, and says how many there are with `now`.
fn slide(window: &mut VecDeque<Time>, now: Time, length: Duration) -> usize {
    while window.front().is_some_and(|t| *t <= now - length) {
        window.pop_front();
    }
    window.push_back(now);
    window.len()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn restarts_stay_within_the_gang_namespace_and_cluster_budgets(ops in prop::collection::vec(op(), 1..120)) {
        let s = safety();
        let r = run(&ops);
        let hour = Duration::from_hours(1);
        let (mut per_gang, mut per_namespace) = (BTreeMap::new(), BTreeMap::new());
        let mut cluster = VecDeque::new();
        for restart in &r.restarts {
            let n = slide(per_gang.entry(restart.gang).or_insert_with(VecDeque::new), restart.at, hour);
            prop_assert!(n <= s.max_gang_restarts_per_hour as usize, "gang {} at {:?}", restart.gang, restart.at);
            let ns = namespace(restart.gang);
            let n = slide(per_namespace.entry(ns.clone()).or_insert_with(VecDeque::new), restart.at, hour);
            prop_assert!(n <= s.max_gang_restarts_per_hour_per_namespace as usize, "namespace {ns} at {:?}", restart.at);
            let n = slide(&mut cluster, restart.at, hour);
            prop_assert!(n <= s.max_gang_restarts_per_hour_cluster as usize, "cluster at {:?}", restart.at);
        }
    }

    #[test]
    fn no_progress_driven_restart_while_the_progress_breaker_is_open(ops in prop::collection::vec(op(), 1..120)) {
        let s = safety();
        let r = run(&ops);
        let restart_index: BTreeMap<usize, &Restart> = r.restart_at.iter().copied().zip(&r.restarts).collect();
        let mut open = false;
        let mut window = VecDeque::new();
        for (i, (now, a)) in r.actions.iter().enumerate() {
            match &a.action {
                Action::Report { reason, .. } if reason == "ProgressBreakerOpen" => {
                    prop_assert!(!open, "opened twice at {now:?}");
                    open = true;
                }
                Action::Report { reason, .. } if reason == "ProgressBreakerClosed" => {
                    prop_assert!(open, "closed while closed at {now:?}");
                    open = false;
                }
                _ => {}
            }
            if let Some(restart) = restart_index.get(&i).filter(|r| r.progress_only) {
                prop_assert!(!open, "progress-driven restart of gang {} while the breaker is open, at {now:?}", restart.gang);
                let n = slide(&mut window, *now, s.progress_breaker_window);
                prop_assert!(n <= s.progress_breaker_restarts as usize, "{n} progress-driven restarts within the window at {now:?}");
            }
        }
    }

    /// Hangs and stragglers on gangs 0..7 within four minutes, then a Tick once the stragglers'
    /// slow-downs lasted: the first three restarts or replacements are planned and the breaker
    /// opens; the rest are held. A device failure in gang 7 then still restarts it.
    #[test]
    fn a_flood_of_progress_findings_opens_the_breaker_and_a_failed_device_still_restarts_its_gang(
        findings in prop::collection::vec((0..GANGS - 1, 0..MEMBERS, any::<bool>(), 0u16..8), 1..30)
    ) {
        let s = safety();
        let mut ops = Vec::new();
        let mut gangs = BTreeSet::new();
        for (g, m, hang, gap) in &findings {
            gangs.insert(*g);
            let p = g * MEMBERS + m;
            ops.push(Op::Advance(*gap));
            ops.push(if *hang { Op::Hung(p) } else { Op::Straggler(p) });
        }
        ops.push(Op::Advance(6 * 60));
        ops.push(Op::Tick);
        let flood = run(&ops);
        let planned = flood.restarts.len();
        prop_assert!(flood.restarts.iter().all(|r| r.progress_only));
        let limit = s.progress_breaker_restarts as usize;
        if gangs.len() >= limit {
            // Each gang with a finding wants at least one restart; the budgets admit more than
            // the breaker's threshold, so the breaker is what stops them.
            prop_assert_eq!(planned, limit);
            prop_assert_eq!(flood.reports("ProgressBreakerOpen"), 1);
        } else {
            prop_assert!(planned <= limit);
        }
        let opened = flood.reports("ProgressBreakerOpen") == 1;
        ops.push(Op::Fails((GANGS - 1) * MEMBERS));
        let r = run(&ops);
        let fault: Vec<&Restart> = r.restarts[planned..].iter().collect();
        prop_assert_eq!(fault.len(), 1, "{:?}", fault);
        prop_assert!(fault[0].gang == GANGS - 1 && !fault[0].progress_only);
        prop_assert_eq!(r.reports("ProgressBreakerClosed"), 0);
        prop_assert_eq!(r.reports("ProgressBreakerOpen"), usize::from(opened));
    }

    /// Six device failures in six gangs within the first hour spend the cluster's budget; a
    /// seventh gang is refused; the moment the first restart is an hour old, an eighth restarts.
    #[test]
    fn the_cluster_budget_refills_an_hour_after_each_restart(gaps in prop::collection::vec(1u16..600, 5)) {
        let mut ops = vec![Op::Fails(0)];
        for (g, gap) in gaps.iter().enumerate() {
            ops.push(Op::Advance(*gap));
            ops.push(Op::Fails((g + 1) * MEMBERS));
        }
        let elapsed: u16 = gaps.iter().sum();
        ops.push(Op::Advance(1));
        ops.push(Op::Fails(6 * MEMBERS));
        // One second before the first restart is an hour old: still refused.
        ops.push(Op::Advance(3599 - elapsed - 1));
        ops.push(Op::Fails(7 * MEMBERS));
        ops.push(Op::Advance(1));
        ops.push(Op::Fails(7 * MEMBERS + 1));
        let r = run(&ops);
        let gangs: Vec<usize> = r.restarts.iter().map(|r| r.gang).collect();
        prop_assert_eq!(gangs, vec![0, 1, 2, 3, 4, 5, 7]);
        prop_assert_eq!(r.reports("ClusterRestartBudgetExhausted"), 2);
        let last = r.restarts.last().map(|r| r.at);
        prop_assert_eq!(last, Some(Time::from_secs(1) + Duration::from_hours(1)));
    }
}

/// The random runs reach what the properties are about: budgets refusing restarts, the progress
/// breaker opening and closing, and progress-driven and fault-driven restarts both.
#[test]
fn the_harness_reaches_refusals_and_both_kinds_of_restart() {
    let mut ops = Vec::new();
    for g in 0..GANGS - 1 {
        ops.push(Op::Hung(g * MEMBERS));
        ops.push(Op::Advance(10));
    }
    ops.extend([Op::Fails(GANGS * MEMBERS - 1), Op::Advance(16 * 60), Op::Tick]);
    for g in 0..GANGS - 1 {
        ops.push(Op::GangRestarted(g));
        ops.push(Op::Fails(g * MEMBERS + 1));
    }
    let r = run(&ops);
    assert_eq!(r.reports("ProgressBreakerOpen"), 1);
    assert_eq!(r.reports("ProgressBreakerClosed"), 1);
    assert!(r.reports("NamespaceRestartBudgetExhausted") + r.reports("ClusterRestartBudgetExhausted") >= 1);
    // Three hangs restarted before the breaker opened; held ones are retried once it closed
    // (16 min later), within the budgets.
    let start = Time::from_secs(0) + Duration::from_mins(10);
    let progress =
        |before: bool| r.restarts.iter().filter(|x| x.progress_only && (x.at < start) == before).count();
    assert_eq!(progress(true), 3);
    assert!(progress(false) >= 1, "held hangs retried after the breaker closed");
    assert!(r.restarts.iter().filter(|r| !r.progress_only).count() >= 1);
}
