//! Workload progress through the controller loop against the fake cluster: the agents on eight
//! nodes publish their pods' step windows and hang findings (`status.workloads`), as the real
//! agent does, and the controller compares the 64 members of a JobSet gang.
//!
//! - one member 17 % slower than the rest is found within 5 minutes, its GPU turns Degraded
//!   with a `progress` reason, and it is marked for replacement at the next checkpoint once the
//!   slow-down has lasted `degraded_replace_after`; nothing else in the gang is touched;
//! - a gang whose every reporting member is hung is restarted once, within 2 minutes of its
//!   last step; one quiet member among progressing ones, or a member its agent cannot read, is
//!   not a hang;
//! - hang findings for many gangs at once (forged, or a broken reporter) restart no more gangs
//!   than the progress breaker allows, while a GPU that dies under a held gang still restarts it.

mod common;

use std::collections::BTreeMap;

use common::Harness;
use devheal_controller::{AlwaysLeader, Clock, FakeCluster, ManualClock};
use devheal_core::{DeviceKey, Duration, Health, Time};
use devheal_k8s::crd::{ProgressFinding, ProgressReporter, ProgressWindow, WorkloadProgress, k8s_time};

/// A minute boundary, so windows start on the hour.
const START: Time = Time::from_secs(1_800_000_000);
const WINDOW: i64 = 60;
const SLOW: &str = "llama-workers-5-a0";

fn cluster() -> (FakeCluster, ManualClock) {
    let clock = ManualClock::new(START);
    let fake = FakeCluster::new(clock.clone());
    fake.add_gpu_nodes(8, 8);
    fake.add_jobset("ml", "llama", 64);
    (fake, clock)
}

/// What one member's agent knows: its step times so far (per window) and how it stands.
#[derive(Clone, Default)]
struct Agentside {
    /// Window index → step seconds (6 steps of 10 s a window).
    windows: BTreeMap<i64, f64>,
    last_progress: Option<Time>,
    steps: u64,
    hang: Option<Time>,
    error: bool,
}

/// The eight agents: each publishes its node's pods.
struct Agents {
    members: BTreeMap<String, Agentside>,
}

impl Agents {
    fn new() -> Self {
        Agents { members: BTreeMap::new() }
    }

    /// Every running member made a minute of steps ending at `now` (`factor` of 1 s each, with a
    /// ±0.5 % wobble so the gang is not perfectly flat), except those `skip` names.
    fn minute(
        &mut self,
        fake: &FakeCluster,
        now: Time,
        factor: impl Fn(&str) -> f64,
        skip: impl Fn(&str) -> bool,
    ) {
        let window = now.as_nanos() / 1_000_000_000 / WINDOW - 1;
        for (i, pod) in fake.pods().iter().enumerate() {
            let name = pod.metadata.name.clone().unwrap_or_default();
            if skip(&name) {
                continue;
            }
            let wobble = 1.0 + 0.005 * ((i % 3) as f64 - 1.0);
            let a = self.members.entry(name.clone()).or_default();
            a.windows.insert(window, factor(&name) * wobble);
            a.last_progress = Some(now - Duration::from_secs(1));
            a.steps += 6;
            a.hang = None;
        }
    }

    /// Publish every node's workloads as its agent would.
    fn publish(&self, fake: &FakeCluster, now: Time) {
        let mut by_node: BTreeMap<String, Vec<WorkloadProgress>> = BTreeMap::new();
        for pod in fake.pods() {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let Some(a) = self.members.get(&name) else { continue };
            let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else { continue };
            let windows = a
                .windows
                .iter()
                .rev()
                .take(5)
                .rev()
                .map(|(&w, &secs)| ProgressWindow {
                    start: k8s_time(Time::from_secs(w * WINDOW)),
                    samples: 6,
                    step_seconds: secs,
                })
                .collect();
            by_node.entry(node).or_default().push(WorkloadProgress {
                namespace: pod.metadata.namespace.clone().unwrap_or_default(),
                name,
                uid: pod.metadata.uid.clone(),
                reporter: ProgressReporter::Endpoint,
                last_progress: a.last_progress.map(k8s_time),
                step: Some(a.steps),
                steps: a.steps,
                window_seconds: WINDOW as u32,
                windows,
                paused_until: None,
                hang: a.hang.map(|since| ProgressFinding {
                    since: k8s_time(since),
                    detected_at: k8s_time(now),
                    magnitude: 1.0,
                    message: format!(
                        "no progress for {} s (limit 1 min 30 s)",
                        now.since(since).as_nanos() / 1_000_000_000
                    ),
                }),
                baseline_shift: None,
                error: a.error.then(|| "scrape failed: connection refused".to_string()),
            });
        }
        for n in 0..8 {
            let node = format!("node-{n:02}");
            fake.set_workloads(&node, by_node.remove(&node).unwrap_or_default());
        }
    }
}

#[tokio::test]
async fn a_slow_member_is_found_and_replaced_at_the_next_checkpoint_and_nothing_else_is_touched() {
    let (fake, clock) = cluster();
    let mut h = Harness::start(&fake, &clock, AlwaysLeader, false);
    h.pump().await;
    let mut agents = Agents::new();
    let slow_from = START + Duration::from_mins(3);
    let mut found_at = None;
    let mut replaced_at = None;
    for minute in 1..=40 {
        clock.set(START + Duration::from_mins(minute));
        let now = clock.now();
        agents.minute(&fake, now, |name| if name == SLOW && now > slow_from { 1.17 } else { 1.0 }, |_| false);
        // Agents publish a closed window within seconds.
        clock.advance(Duration::from_secs(2));
        agents.publish(&fake, clock.now());
        h.pump().await;
        h.tick().await;
        if found_at.is_none() && h.controller.progress().is_straggler(&uid(&fake, SLOW)) {
            found_at = Some(clock.now());
        }
        if replaced_at.is_none() && replaced(&fake) > 0 {
            replaced_at = Some(clock.now());
        }
    }
    let found_at = found_at.expect("the straggler is found");
    let delay = found_at.since(slow_from);
    assert!(delay <= Duration::from_mins(5), "found {} s after it began", delay.as_nanos() / 1_000_000_000);
    assert_eq!(h.controller.metrics().progress_findings("straggler"), 1);
    // Its GPU is Degraded with the finding as a progress reason; every other GPU is Healthy.
    let devices = h.controller.engine().pod_devices(&uid(&fake, SLOW)).to_vec();
    assert_eq!(devices.len(), 1);
    let device = devices[0].clone();
    assert_eq!(h.controller.engine().device_health(&device), Some(Health::Degraded), "{device:?}");
    for n in 0..8 {
        for g in 0..8 {
            let other = DeviceKey {
                node: format!("node-{n:02}"),
                resource: "nvidia.com/gpu".into(),
                id: format!("GPU-node-{n:02}-{g}"),
            };
            if other != device {
                assert_eq!(h.controller.engine().device_health(&other), Some(Health::Healthy), "{other:?}");
            }
        }
    }
    // Replaced at the next checkpoint once the slow-down lasted degraded_replace_after (20 min),
    // and only that member; no gang restart, no eviction, no quarantine.
    let replaced_at = replaced_at.expect("the slow member is marked for replacement");
    let after = replaced_at.since(found_at);
    assert!(after >= Duration::from_mins(19) && after <= Duration::from_mins(21), "{after:?}");
    let record = fake.record();
    assert_eq!(replaced(&fake), 1, "{record:?}");
    assert!(record.gang_restarts.is_empty(), "{record:?}");
    assert_eq!(record.quarantine_calls, 0);
    let marked = fake.pod("ml", SLOW).and_then(|p| p.status).and_then(|s| s.conditions).unwrap_or_default();
    assert!(
        marked.iter().any(|c| c.type_ == "devheal.io/ReplaceAtCheckpoint"
            && c.message.as_deref().is_some_and(|m| m.contains("straggler ml/llama-workers-5-a0"))),
        "{marked:?}"
    );
}

#[tokio::test]
async fn a_replaced_or_recovered_member_gives_its_gpu_back_healthy() {
    let (fake, clock) = cluster();
    let mut h = Harness::start(&fake, &clock, AlwaysLeader, false);
    h.pump().await;
    let mut agents = Agents::new();
    // Slow for minutes 1–8, then normal again.
    for minute in 1..=20 {
        clock.set(START + Duration::from_mins(minute));
        let slow = minute <= 8;
        agents.minute(&fake, clock.now(), |name| if name == SLOW && slow { 1.2 } else { 1.0 }, |_| false);
        clock.advance(Duration::from_secs(2));
        agents.publish(&fake, clock.now());
        h.pump().await;
        h.tick().await;
        if minute == 8 {
            assert!(h.controller.progress().is_straggler(&uid(&fake, SLOW)));
        }
    }
    let device = h.controller.engine().pod_devices(&uid(&fake, SLOW))[0].clone();
    assert!(!h.controller.progress().is_straggler(&uid(&fake, SLOW)));
    assert_eq!(h.controller.engine().device_health(&device), Some(Health::Healthy));
    assert_eq!(replaced(&fake), 0, "recovered before degraded_replace_after");
}

#[tokio::test]
async fn a_hung_gang_is_restarted_once_within_two_minutes_of_its_last_step() {
    let (fake, clock) = cluster();
    let mut h = Harness::start(&fake, &clock, AlwaysLeader, false);
    h.pump().await;
    let mut agents = Agents::new();
    for minute in 1..=5 {
        clock.set(START + Duration::from_mins(minute));
        agents.minute(&fake, clock.now(), |_| 1.0, |_| false);
        agents.publish(&fake, clock.now());
        h.pump().await;
        h.tick().await;
    }
    let last_step = START + Duration::from_mins(5) - Duration::from_secs(1);

    // One member's reporter goes quiet while the rest progress: its agent reports a hang, but
    // the gang moves, so nothing is done.
    clock.set(START + Duration::from_mins(6));
    agents.minute(&fake, clock.now(), |_| 1.0, |name| name == SLOW);
    agents.members.get_mut(SLOW).expect("member").hang = Some(last_step);
    agents.publish(&fake, clock.now());
    h.pump().await;
    h.tick().await;
    assert!(fake.record().gang_restarts.is_empty(), "one quiet reporter is not a hung gang");

    // Now every member stops at its last step (a collective that never completes). The agents'
    // hang detectors fire 90 s later, one node after another; one member's agent cannot read
    // its progress (blind, not hung) and is left out.
    let stop = START + Duration::from_mins(6) - Duration::from_secs(1);
    agents.members.get_mut("llama-workers-9-a0").expect("member").error = true;
    for n in 0..8u32 {
        clock.set(stop + Duration::from_secs(91 + i64::from(n)));
        for (name, a) in agents.members.iter_mut() {
            let on_node = fake
                .pod("ml", name)
                .and_then(|p| p.spec)
                .and_then(|s| s.node_name)
                .is_some_and(|node| node == format!("node-{n:02}"));
            if on_node && a.hang.is_none() {
                a.hang = a.last_progress;
            }
        }
        agents.publish(&fake, clock.now());
        h.pump().await;
        let restarts = fake.record().gang_restarts.get("ml/jobset/llama").copied().unwrap_or(0);
        assert_eq!(
            restarts,
            u32::from(n == 7),
            "restart only once every reporting member is hung (node {n})"
        );
    }
    let restarted_at = clock.now();
    assert!(restarted_at.since(stop) <= Duration::from_mins(2), "{:?}", restarted_at.since(stop));
    assert_eq!(h.controller.metrics().progress_findings("hang"), 1);

    // The agents keep reporting the same silence: still one restart.
    for _ in 0..3 {
        clock.advance(Duration::from_secs(30));
        agents.publish(&fake, clock.now());
        h.pump().await;
        h.tick().await;
    }
    assert_eq!(fake.record().gang_restarts.get("ml/jobset/llama"), Some(&1));
}

fn uid(fake: &FakeCluster, name: &str) -> String {
    fake.pod("ml", name).and_then(|p| p.metadata.uid).unwrap_or_default()
}

fn replaced(fake: &FakeCluster) -> usize {
    fake.record().executed.iter().filter(|(a, o)| a == "replace_at_checkpoint" && *o == "done").count()
}

/// A pod outside any gang has nothing to be compared with: its agent's baseline-shift finding
/// marks its GPU Degraded (withdrawn when the finding clears), and its hang is reported, not
/// acted on. In a gang, the same finding says nothing about devices.
#[tokio::test]
async fn a_lone_pods_baseline_shift_marks_its_gpu_and_its_hang_is_reported() {
    let clock = ManualClock::new(START);
    let fake = FakeCluster::new(clock.clone());
    fake.add_gpu_nodes(1, 8);
    fake.add_lone_pod("web", "server");
    fake.add_jobset("ml", "small", 2);
    let mut h = Harness::start(&fake, &clock, AlwaysLeader, false);
    h.pump().await;
    let lone = fake.pod("web", "server").expect("pod");
    let lone_uid = lone.metadata.uid.clone().unwrap_or_default();
    let member = fake.pod("ml", "small-workers-0-a0").expect("member");
    let workload = |namespace: &str, pod: &k8s_openapi::api::core::v1::Pod, shift: bool, hang: bool| {
        let now = clock.now();
        WorkloadProgress {
            namespace: namespace.into(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            uid: pod.metadata.uid.clone(),
            reporter: ProgressReporter::Scrape,
            last_progress: Some(k8s_time(START)),
            step: None,
            steps: 600,
            window_seconds: 60,
            windows: Vec::new(),
            paused_until: None,
            hang: hang.then(|| ProgressFinding {
                since: k8s_time(START),
                detected_at: k8s_time(now),
                magnitude: 1.0,
                message: "no progress for 1 min 31 s (limit 1 min 30 s)".into(),
            }),
            baseline_shift: shift.then(|| ProgressFinding {
                since: k8s_time(START - Duration::from_mins(4)),
                detected_at: k8s_time(START),
                magnitude: 0.15,
                message: "15 % slower than its own baseline for 4 min".into(),
            }),
            error: None,
        }
    };
    fake.set_workloads(
        "node-00",
        vec![workload("web", &lone, true, false), workload("ml", &member, true, false)],
    );
    h.pump().await;
    let lone_gpu = h.controller.engine().pod_devices(&lone_uid)[0].clone();
    let member_gpu =
        h.controller.engine().pod_devices(member.metadata.uid.as_deref().unwrap_or(""))[0].clone();
    assert_eq!(h.controller.engine().device_health(&lone_gpu), Some(Health::Degraded));
    assert_eq!(
        h.controller.engine().device_health(&member_gpu),
        Some(Health::Degraded),
        "a 2-pod gang is too small to compare its members: the member's own baseline counts"
    );
    assert_eq!(h.controller.metrics().progress_findings("baseline_shift"), 2);

    // The finding clears; then the lone pod hangs: reported once, nothing done to it.
    clock.advance(Duration::from_mins(2));
    fake.set_workloads(
        "node-00",
        vec![workload("web", &lone, false, true), workload("ml", &member, false, false)],
    );
    h.pump().await;
    assert_eq!(h.controller.engine().device_health(&lone_gpu), Some(Health::Healthy));
    assert_eq!(h.controller.engine().device_health(&member_gpu), Some(Health::Healthy));
    clock.advance(Duration::from_secs(30));
    fake.set_workloads(
        "node-00",
        vec![workload("web", &lone, false, true), workload("ml", &member, false, false)],
    );
    h.pump().await;
    let record = fake.record();
    assert_eq!(record.reports.iter().filter(|r| *r == "WorkloadHung").count(), 1, "{record:?}");
    assert_eq!(h.controller.metrics().progress_findings("hang"), 1);
    assert!(record.gang_restarts.is_empty() && record.evicted.is_empty(), "{record:?}");
}

fn member_index(name: &str) -> usize {
    name.trim_start_matches("llama-workers-")
        .split('-')
        .next()
        .and_then(|i| i.parse().ok())
        .unwrap_or(usize::MAX)
}

/// A hang needs a quorum: one report about one member of a 64-member gang (anyone who can reach
/// an agent could send one), then its agent's hang finding, restarts nothing; neither do 31 hung
/// reporters; the 32nd (half the gang) does, and only once its hang follows an earlier report
/// of progress (a first report carrying a hang is not one).
#[tokio::test]
async fn a_hang_needs_a_quorum_of_the_gang_and_a_first_report_is_never_one() {
    let (fake, clock) = cluster();
    let mut h = Harness::start(&fake, &clock, AlwaysLeader, false);
    h.pump().await;
    let mut agents = Agents::new();
    let restarts =
        |fake: &FakeCluster| fake.record().gang_restarts.get("ml/jobset/llama").copied().unwrap_or(0);

    // One member only ever reports, once, then is reported hung.
    clock.set(START + Duration::from_mins(1));
    agents.minute(&fake, clock.now(), |_| 1.0, |name| name != SLOW);
    agents.publish(&fake, clock.now());
    h.pump().await;
    clock.set(START + Duration::from_mins(3));
    let a = agents.members.get_mut(SLOW).expect("member");
    a.hang = a.last_progress;
    agents.publish(&fake, clock.now());
    h.pump().await;
    h.tick().await;
    assert_eq!(restarts(&fake), 0, "one reporter of 64 is not a hung gang");

    // 31 members report, then all of them are hung: still under half the gang.
    for minute in 4..=5 {
        clock.set(START + Duration::from_mins(minute));
        agents.minute(&fake, clock.now(), |_| 1.0, |name| member_index(name) >= 31);
        agents.publish(&fake, clock.now());
        h.pump().await;
    }
    clock.set(START + Duration::from_mins(7));
    for a in agents.members.values_mut() {
        a.hang = a.last_progress;
    }
    agents.publish(&fake, clock.now());
    h.pump().await;
    h.tick().await;
    assert_eq!(restarts(&fake), 0, "31 hung reporters of 64 are not a quorum");

    // A 32nd member's first report already carries a hang: not counted.
    let newcomer = "llama-workers-31-a0";
    agents.members.insert(
        newcomer.to_string(),
        Agentside {
            last_progress: Some(START + Duration::from_mins(5)),
            steps: 6,
            hang: Some(START + Duration::from_mins(5)),
            ..Agentside::default()
        },
    );
    clock.advance(Duration::from_secs(30));
    agents.publish(&fake, clock.now());
    h.pump().await;
    assert_eq!(restarts(&fake), 0, "a first report cannot be a hang");
    // Its next report still says hung: now 32 of 64, half the gang, are hung.
    clock.advance(Duration::from_secs(30));
    agents.publish(&fake, clock.now());
    h.pump().await;
    assert_eq!(restarts(&fake), 1, "a quorum of hung reporters restarts the gang");
}

/// Every member of fourteen two-pod JobSets in four namespaces reports a hang at once (what a
/// tenant able to write its pods' progress could send): ten gangs are restarted, then the
/// progress breaker opens and holds the other four. A GPU that then dies under one of those is a
/// fault, and still restarts its gang.
#[tokio::test]
async fn a_flood_of_hang_findings_opens_the_progress_breaker_and_a_dead_gpu_still_restarts_its_gang() {
    let clock = ManualClock::new(START);
    let fake = FakeCluster::new(clock.clone());
    fake.add_gpu_nodes(8, 8);
    let gang = |g: usize| format!("team-{}/jobset/job-{g}", g % 4);
    for g in 0..14 {
        fake.add_jobset(&format!("team-{}", g % 4), &format!("job-{g}"), 2);
    }
    let mut h = Harness::start(&fake, &clock, AlwaysLeader, false);
    h.pump().await;
    let mut agents = Agents::new();
    for minute in 1..=3 {
        clock.set(START + Duration::from_mins(minute));
        agents.minute(&fake, clock.now(), |_| 1.0, |_| false);
        agents.publish(&fake, clock.now());
        h.pump().await;
        h.tick().await;
    }
    clock.set(START + Duration::from_mins(5));
    for a in agents.members.values_mut() {
        a.hang = a.last_progress;
    }
    agents.publish(&fake, clock.now());
    h.pump().await;
    h.tick().await;

    let record = fake.record();
    assert_eq!(record.gang_restarts.len(), 10, "{:?}", record.gang_restarts);
    assert_eq!(
        record.reports.iter().filter(|r| *r == "ProgressBreakerOpen").count(),
        1,
        "{:?}",
        record.reports
    );
    let safety = h.controller.safety_state();
    assert!(safety.progress_breaker_open && !safety.breaker_open, "{safety:?}");
    assert_eq!((safety.held_by_progress_breaker, safety.gang_restarts_last_hour), (4, 10));
    let text = h.controller.metrics().encode();
    assert!(text.contains("devheal_controller_progress_breaker_open 1"), "{text}");
    assert!(text.contains("devheal_controller_held_by_progress_breaker 4"), "{text}");
    assert!(text.contains("devheal_controller_gang_restarts_last_hour 10"), "{text}");

    let held = (0..14).find(|g| !record.gang_restarts.contains_key(&gang(*g))).expect("a held gang");
    let pod = format!("job-{held}-workers-0-a0");
    let uid = fake.pod(&format!("team-{}", held % 4), &pod).and_then(|p| p.metadata.uid).unwrap_or_default();
    let device = h.controller.engine().pod_devices(&uid).first().cloned().expect("its GPU");
    let index = device.id.rsplit('-').next().and_then(|i| i.parse().ok()).expect("GPU index");
    clock.advance(Duration::from_secs(10));
    fake.set_gpu_health(&device.node, index, Health::Unhealthy, 79, "GPU has fallen off the bus");
    h.pump().await;
    assert_eq!(fake.record().gang_restarts.get(&gang(held)), Some(&1), "{:?}", fake.record().gang_restarts);
}
