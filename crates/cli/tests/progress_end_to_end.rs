//! Workload progress end to end, both halves as they run: eight agents' `ProgressBook`s (the
//! code behind `POST /v1/progress`) fed the steps of a 64-member JobSet gang, their
//! `status.workloads` published into the fake cluster's NodeDeviceHealth objects, and the
//! controller loop comparing the gang across nodes.
//!
//! - a member 17 % slower than the rest is found within 5 minutes of the start of its slow-down
//!   and replaced at the next checkpoint about 20 minutes later; nothing else is touched;
//! - when every member stops (a collective that never completes), the gang is restarted once,
//!   within 2 minutes of the last step.

use std::collections::BTreeMap;
use std::sync::Arc;

use devheal_agent::progress::{PodRef, ProgressBook, ProgressConfig, StepReport};
use devheal_controller::{
    AlwaysLeader, Cluster, ClusterEvent, Controller, ControllerSettings, FakeCluster, LoopHealth,
    ManualClock, Metrics,
};
use devheal_core::{Duration, Time};
use devheal_k8s::crd::WorkloadProgress;
use futures::{FutureExt, StreamExt};

/// A minute boundary.
const START: Time = Time::from_secs(1_800_000_000);
const SLOW: &str = "llama-workers-5-a0";

struct Cluster8 {
    fake: FakeCluster,
    clock: ManualClock,
    controller: Controller<devheal_controller::cluster::FakeActuator, AlwaysLeader, ManualClock>,
    events: futures::stream::BoxStream<'static, ClusterEvent>,
    /// Each node's agent, its pods, and what it last published.
    agents: BTreeMap<String, (ProgressBook, Vec<PodRef>, Vec<WorkloadProgress>)>,
}

impl Cluster8 {
    fn new() -> Self {
        let clock = ManualClock::new(START);
        let fake = FakeCluster::new(clock.clone());
        fake.add_gpu_nodes(8, 8);
        fake.add_jobset("ml", "llama", 64);
        let controller = Controller::new(
            ControllerSettings::default(),
            fake.actuator(false),
            AlwaysLeader,
            clock.clone(),
            Arc::new(Metrics::new()),
            Arc::new(LoopHealth::new(std::time::Duration::from_secs(60))),
        );
        let events = fake.events();
        let mut agents: BTreeMap<String, (ProgressBook, Vec<PodRef>, Vec<WorkloadProgress>)> =
            BTreeMap::new();
        for pod in fake.pods() {
            let node = pod.spec.and_then(|s| s.node_name).expect("placed");
            let name = pod.metadata.name.expect("named");
            let entry = agents.entry(node).or_insert_with(|| {
                (ProgressBook::new(ProgressConfig::default()).expect("valid config"), Vec::new(), Vec::new())
            });
            entry.1.push(PodRef::new("ml", &name));
        }
        Cluster8 { fake, clock, controller, events, agents }
    }

    async fn pump(&mut self) {
        while let Some(Some(event)) = self.events.next().now_or_never() {
            self.controller.handle_event(event).await;
        }
    }

    /// Advance to `t`: every running member posts the step that just ended (`step_secs(pod)`
    /// of compute, `None`: no step), each agent ticks and publishes at once what the real agent
    /// publishes at once (a new window, a hang or shift appearing or clearing; the rest rides
    /// its heartbeat, left out here), and the controller handles the updates and ticks.
    async fn second(&mut self, t: Time, step_secs: impl Fn(&str) -> Option<f64>) {
        self.clock.set(t);
        for (node, (book, pods, published)) in self.agents.iter_mut() {
            for pod in pods.iter() {
                if let Some(secs) = step_secs(&pod.name) {
                    let step = StepReport { seconds: secs, step: None, end: Some(t) };
                    book.report(pod, &[step], None, t).expect("a pod on this node");
                }
            }
            book.tick(t);
            let now = book.workloads();
            let significant = |w: &[WorkloadProgress]| -> Vec<_> {
                w.iter().map(|x| (x.windows.clone(), x.hang.is_some(), x.baseline_shift.is_some())).collect()
            };
            if significant(&now) != significant(published) {
                self.fake.set_workloads(node, now.clone());
                *published = now;
            }
        }
        self.pump().await;
        self.controller.tick().await;
        self.pump().await;
    }

    fn uid(&self, name: &str) -> String {
        self.fake.pod("ml", name).and_then(|p| p.metadata.uid).unwrap_or_default()
    }

    fn executed(&self, action: &str) -> usize {
        self.fake.record().executed.iter().filter(|(a, o)| a == action && *o == "done").count()
    }
}

/// Member `i`'s compute time: 1 s with a ±0.5 % spread across members.
fn normal(name: &str) -> f64 {
    let i: usize = name.split('-').nth(2).and_then(|i| i.parse().ok()).unwrap_or(0);
    1.0 + 0.005 * ((i % 3) as f64 - 1.0)
}

#[tokio::test]
async fn agents_and_controller_find_a_slow_member_and_restart_a_hung_gang() {
    let mut c = Cluster8::new();
    c.pump().await;
    let slow_from = START + Duration::from_mins(3);
    let (mut found_at, mut replaced_at) = (None, None);
    // 30 minutes of 10-second steps.
    for tick in 1..=180 {
        let t = START + Duration::from_secs(tick * 10);
        c.second(t, |name| {
            Some(if name == SLOW && t > slow_from { 1.17 * normal(name) } else { normal(name) })
        })
        .await;
        let slow_uid = c.uid(SLOW);
        if found_at.is_none() && c.controller.progress().is_straggler(&slow_uid) {
            found_at = Some(t);
        }
        if replaced_at.is_none() && c.executed("replace_at_checkpoint") > 0 {
            replaced_at = Some(t);
        }
    }
    let found_at = found_at.expect("the slow member is found");
    let delay = found_at.since(slow_from);
    assert!(
        delay <= Duration::from_mins(5),
        "found {} s after its slow-down began",
        delay.as_nanos() / 1_000_000_000
    );
    let replaced_at = replaced_at.expect("the slow member is replaced at the next checkpoint");
    let after = replaced_at.since(found_at);
    assert!(after >= Duration::from_mins(19) && after <= Duration::from_mins(21), "{after:?}");
    assert_eq!(c.executed("replace_at_checkpoint"), 1);
    assert_eq!(c.controller.metrics().progress_findings("straggler"), 1, "only the slow member");
    assert!(c.fake.record().gang_restarts.is_empty());

    // Every member stops at its last step; the agents tick every second.
    let last_step = START + Duration::from_secs(1800);
    let mut restarted_at = None;
    for s in 1..=150 {
        let t = last_step + Duration::from_secs(s);
        c.second(t, |_| None).await;
        if restarted_at.is_none() && !c.fake.record().gang_restarts.is_empty() {
            restarted_at = Some(t);
        }
    }
    let restarted_at = restarted_at.expect("the hung gang is restarted");
    assert!(restarted_at.since(last_step) <= Duration::from_mins(2), "{:?}", restarted_at.since(last_step));
    assert_eq!(c.fake.record().gang_restarts.get("ml/jobset/llama"), Some(&1));
    assert_eq!(c.controller.metrics().progress_findings("hang"), 1);
}
