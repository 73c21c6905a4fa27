//! The devheal strategy: it turns what happens in the world into the inputs the real agent and
//! controller would give the engine (kernel lines through the real detect classifier and
//! correlator, NVML health, pod and node status, progress reports, ticks), delivers them with the
//! scenario's measured latencies, and turns the engine's actions into commands for the world.
//!
//! Nothing here decides anything: every remediation comes from `devheal_core::Engine`.

use std::collections::{BTreeMap, BTreeSet};

use devheal_core::{
    Action, ContainerInfo, ContainerState, Device, DeviceKey, Duration, Engine, EngineConfig, Health,
    HealthReason, HealthSource, Input, NodeInfo, PodInfo, PodPhase, RepairKind, Time, Vendor,
};
use devheal_detect::{Catalog, Classifier, CorrelationConfig, Correlator};

use super::Detector;
use super::steps::GangSteps;
use super::{
    Command, Commands, GangPhase, LineSource, Mechanics, Policy, Repair, Signal, Strategy, View, arriving,
    source_lines,
};
use crate::report::Counts;
use crate::scenario::{Manifestation, NvmlSignal, Scenario, secs};

/// PCI bus ids of the eight GPUs of an HGX H100 board, as `nvidia-smi` lists them.
const GPU_BUS: [&str; 8] = ["18", "2a", "3a", "5d", "9a", "ab", "ba", "db"];
const NIC_ADDRESS: &str = "0000:0c:00.0";
const GPU_RESOURCE: &str = "nvidia.com/gpu";
/// After an input, the engine is ticked at the active cadence for this long.
const ACTIVE_WINDOW_S: f64 = 120.0;

/// Who owns a pod uid in the world.
#[derive(Clone, Copy, Debug)]
enum PodOwner {
    GangMember { gang: u16, member: u32 },
    Replica { service: u16, replica: u32 },
}

/// What the devheal strategy wakes itself with.
#[derive(Debug)]
pub(crate) enum Timer {
    /// An input reaches the engine (after its delivery latency).
    Deliver(Box<Input>),
    /// The controller's tick.
    Tick,
    /// Rank 0 of the gang reports progress.
    Progress { gang: u16 },
    /// A detector window of the gang ends: its members' step times are judged.
    Window { gang: u16 },
}

type Out = Commands<Timer>;

/// The engine and the detection path the agent would run.
pub(crate) struct Devheal<'a> {
    scenario: &'a Scenario,
    gpn: u32,
    engine: Engine,
    classifier: Classifier,
    correlator: Correlator,
    pods: BTreeMap<String, PodOwner>,
    last_input: Time,
    actions: u64,
    unmapped: u64,
    inputs: u64,
    ticks: u64,
    kernel_latency: Duration,
    publish: Duration,
    nvml_latency: Duration,
    /// Every node's name and every GPU's key, made once: a restarted 2,048-pod gang is re-sent
    /// whole, and formatting 16,384 keys each time was a third of the run.
    node_names: Vec<String>,
    device_keys: Vec<DeviceKey>,
    /// Each gang's step-time model and devheal's real degradation detectors on it.
    steps: Vec<Option<GangSteps>>,
    /// Per gang, the members whose node has a straggler episode now (their step times are
    /// drawn every window).
    slow_members: Vec<BTreeSet<u32>>,
    /// Nodes whose member the detector reported slow (their devices published Degraded).
    straggler_reported: BTreeSet<u32>,
    /// Per gang: members to move elsewhere at the next checkpoint (slow ones).
    replace_at_checkpoint: BTreeMap<u16, BTreeSet<u32>>,
    /// Per gang and member: the restarts in place of its current pod (its restart count, as the
    /// kubelet reports it; only on gangs whose pods have the restart rule).
    in_place_restarts: BTreeMap<(u16, u32), u32>,
}

impl<'a> Devheal<'a> {
    /// `seed` draws the step-time noise the detectors read (the trace's seed).
    pub(crate) fn new(scenario: &'a Scenario, seed: u64) -> Devheal<'a> {
        let d = &scenario.strategies.devheal;
        Devheal {
            scenario,
            gpn: scenario.cluster.gpus_per_node,
            engine: Engine::new(EngineConfig::default()),
            classifier: Classifier::new(Catalog::builtin()),
            correlator: Correlator::new(CorrelationConfig::default()),
            pods: BTreeMap::new(),
            last_input: Time::ZERO,
            actions: 0,
            unmapped: 0,
            inputs: 0,
            ticks: 0,
            kernel_latency: secs(d.kernel_log_detect_ms / 1000.0),
            publish: secs(d.publish_s),
            nvml_latency: secs(d.nvml_detect_s),
            node_names: (0..scenario.total_nodes()).map(node_name).collect(),
            device_keys: (0..scenario.total_nodes())
                .flat_map(|n| {
                    (0..scenario.cluster.gpus_per_node)
                        .map(move |d| DeviceKey::new(node_name(n), GPU_RESOURCE, gpu_id(n, d as u8)))
                })
                .collect(),
            steps: scenario
                .training
                .iter()
                .map(|t| GangSteps::new(&scenario.step_times, seed, &t.name, t.nodes))
                .collect(),
            slow_members: vec![BTreeSet::new(); scenario.training.len()],
            straggler_reported: BTreeSet::new(),
            replace_at_checkpoint: BTreeMap::new(),
            in_place_restarts: BTreeMap::new(),
        }
    }
}

pub(crate) fn node_name(node: u32) -> String {
    format!("node-{node:05}")
}

pub(crate) fn parse_node(name: &str) -> Option<u32> {
    name.strip_prefix("node-")?.parse().ok()
}

fn gpu_id(node: u32, device: u8) -> String {
    format!("GPU-{node:05}-{device}")
}

fn parse_gpu(key: &DeviceKey) -> Option<(u32, u8)> {
    let rest = key.id.strip_prefix("GPU-")?;
    let (node, dev) = rest.split_once('-')?;
    Some((node.parse().ok()?, dev.parse().ok()?))
}

/// The GPU's PCI address without the function (`DDDD:BB:00`, as Xid lines print it). The first
/// eight devices of a node sit on the HGX board's buses in domain 0000; every further group of
/// eight gets the next PCI domain, so each of up to 64 devices has its own address.
fn pci(device: u8) -> String {
    let domain = usize::from(device) / GPU_BUS.len();
    let bus = GPU_BUS[usize::from(device) % GPU_BUS.len()];
    format!("{domain:04x}:{bus}:00")
}

/// The full address (`DDDD:BB:00.0`), as the inventory and AER lines give it.
fn bdf(device: u8) -> String {
    format!("{}.0", pci(device))
}

fn boot_id(node: u32, boot: u32) -> String {
    format!("boot-{node:05}-{boot}")
}

/// A container that failed at `now` with `failure` as its message, or one running since `now`.
fn container_state(now: Time, failure: Option<&str>) -> ContainerState {
    match failure {
        Some(message) => ContainerState::Terminated {
            exit_code: 1,
            signal: None,
            reason: Some("Error".to_string()),
            message: Some(message.to_string()),
            finished_at: Some(now),
        },
        None => ContainerState::Running { started_at: Some(now) },
    }
}

impl Devheal<'_> {
    /// Schedule an input for the engine `delay` from now.
    fn send(out: &mut Out, delay: Duration, input: Input) {
        out.push(Command::After { delay, timer: Timer::Deliver(Box::new(input)) });
    }

    fn device_key(&self, node: u32, device: u8) -> DeviceKey {
        let i = node as usize * self.gpn as usize + usize::from(device);
        match self.device_keys.get(i) {
            Some(k) => k.clone(),
            None => DeviceKey::new(node_name(node), GPU_RESOURCE, gpu_id(node, device)),
        }
    }

    fn node_name(&self, node: u32) -> String {
        match self.node_names.get(node as usize) {
            Some(n) => n.clone(),
            None => node_name(node),
        }
    }

    fn node_info(&self, view: &dyn View, node: u32) -> NodeInfo {
        let n = view.node(node);
        NodeInfo {
            name: node_name(node),
            ready: Some(n.up),
            unschedulable: n.cordoned,
            boot_id: Some(boot_id(node, n.boot)),
            driver_version: Some("570.133.20".to_string()),
            device_plugin_version: Some("0.17.1".to_string()),
            rack: Some(format!("rack-{:04}", node / self.scenario.cluster.nodes_per_rack)),
            ..NodeInfo::default()
        }
    }

    fn member_uid(view: &dyn View, gang: u16, member: u32) -> String {
        let g = view.gang(gang);
        format!("{}-{}-g{}", g.name, member, g.pod_generation[member as usize])
    }

    fn replica_uid(view: &dyn View, service: u16, replica: u32, generation: u32) -> String {
        format!("{}-{}-g{}", view.replica(service, replica).service, replica, generation)
    }

    fn member_pod(
        &self,
        view: &dyn View,
        gang: u16,
        member: u32,
        phase: PodPhase,
        failure: Option<&str>,
    ) -> PodInfo {
        let g = view.gang(gang);
        let node = g.members[member as usize];
        let mut labels = BTreeMap::new();
        labels.insert("jobset.sigs.k8s.io/jobset-name".to_string(), g.name.to_string());
        labels.insert("jobset.sigs.k8s.io/replicatedjob-name".to_string(), "workers".to_string());
        labels.insert("jobset.sigs.k8s.io/restart-attempt".to_string(), g.attempt.to_string());
        labels.insert("batch.kubernetes.io/job-name".to_string(), format!("{}-workers-0", g.name));
        labels.insert("batch.kubernetes.io/job-completion-index".to_string(), member.to_string());
        let now = view.now();
        PodInfo {
            uid: Self::member_uid(view, gang, member),
            namespace: g.namespace.to_string(),
            name: format!("{}-workers-0-{}", g.name, member),
            node: Some(self.node_name(node)),
            labels,
            owner: Some(("Job".to_string(), format!("{}-workers-0", g.name))),
            restart_policy: Some("Never".to_string()),
            phase,
            containers: vec![ContainerInfo {
                name: "trainer".to_string(),
                state: container_state(now, failure),
                restart_count: self.in_place_restarts.get(&(gang, member)).copied().unwrap_or(0),
                ..ContainerInfo::default()
            }],
            devices: (0..self.gpn as u8).map(|d| self.device_key(node, d)).collect(),
            start_time: Some(now),
            in_place: self.scenario.training[gang as usize]
                .restart_rules
                .then_some(devheal_core::InPlaceRestart::AllContainers),
            ..PodInfo::default()
        }
    }

    fn replica_pod(
        &self,
        view: &dyn View,
        service: u16,
        replica: u32,
        phase: PodPhase,
        failure: Option<&str>,
    ) -> Option<PodInfo> {
        let r = view.replica(service, replica);
        let node = r.node?;
        let mut labels = BTreeMap::new();
        labels.insert("app.kubernetes.io/name".to_string(), r.service.to_string());
        let now = view.now();
        Some(PodInfo {
            uid: Self::replica_uid(view, service, replica, r.generation),
            namespace: r.namespace.to_string(),
            name: format!("{}-{}", r.service, replica),
            node: Some(self.node_name(node)),
            labels,
            owner: Some(("ReplicaSet".to_string(), r.service.to_string())),
            restart_policy: Some("Always".to_string()),
            phase,
            containers: vec![ContainerInfo {
                name: "server".to_string(),
                state: container_state(now, failure),
                ..ContainerInfo::default()
            }],
            devices: (r.first_device..r.first_device + r.gpus as u8)
                .map(|d| self.device_key(node, d))
                .collect(),
            start_time: Some(now),
            ..PodInfo::default()
        })
    }

    /// Hand `input` to the engine now and turn what it returns into commands.
    fn deliver_now(&mut self, input: Input, view: &dyn View, out: &mut Out) {
        let now = view.now();
        let routine = matches!(input, Input::Progress { .. } | Input::Tick);
        self.inputs += 1;
        if !routine {
            self.last_input = now;
        }
        let actions = self.engine.handle(input, now);
        for planned in actions {
            self.actions += 1;
            self.apply(planned.action, view, out);
        }
    }

    fn tick(&mut self, view: &dyn View, out: &mut Out) {
        let now = view.now();
        // Tick at the active cadence while something is in flight (a recent input, or a hung
        // gang, whose silence the engine's hang detection must notice); at the idle cadence
        // otherwise, when a tick can only refill budgets and end probations.
        let gang_stalled = (0..view.gangs() as u16)
            .any(|g| matches!(view.gang(g).phase, GangPhase::Hung | GangPhase::WaitingCapacity));
        let recent = gang_stalled || now.since(self.last_input).as_secs_f64() < ACTIVE_WINDOW_S;
        let d = &self.scenario.strategies.devheal;
        let next = secs(if recent { d.tick_active_s } else { d.tick_idle_s });
        self.check_hangs(view, out);
        self.inputs += 1;
        self.ticks += 1;
        let actions = self.engine.handle(Input::Tick, now);
        for planned in actions {
            self.actions += 1;
            self.apply(planned.action, view, out);
        }
        out.push(Command::After { delay: next, timer: Timer::Tick });
    }

    fn progress(&mut self, gang: u16, view: &dyn View, out: &mut Out) {
        let interval = secs(self.scenario.strategies.devheal.progress_interval_s);
        out.push(Command::After { delay: interval, timer: Timer::Progress { gang } });
        // A stalled gang reports nothing: that silence is the signal.
        let Some(work_s) = view.gang_work_s(gang) else { return };
        let step_time_s = self.scenario.training[gang as usize].step_time_s;
        let step = (work_s / step_time_s) as u64;
        let step_time = secs(step_time_s * view.gang(gang).pace);
        let pod_uid = Self::member_uid(view, gang, 0);
        let attempt = view.gang(gang).attempt;
        if let Some(Some(steps)) = self.steps.get_mut(gang as usize) {
            steps.progress(&pod_uid, attempt, view.now());
        }
        self.deliver_now(Input::Progress { pod_uid, step, step_time }, view, out);
    }

    /// A fault's signals: kernel lines through the real classifier and correlator, NVML health.
    #[allow(clippy::too_many_arguments)]
    fn fault_signals(
        &mut self,
        class_idx: u16,
        node: u32,
        device: Option<u8>,
        pid: u32,
        mask: u8,
        view: &dyn View,
        out: &mut Out,
    ) {
        let class = &self.scenario.faults[class_idx as usize];
        self.kernel_lines(LineSource::Fault(class_idx), node, device, pid, mask, view, out);
        let device = device.unwrap_or(0);
        let now = view.now();
        let lines = &class.kernel_lines;
        let nvml = class.nvml;
        if lines.is_empty() && nvml != NvmlSignal::None {
            let health = if nvml == NvmlSignal::Degraded { Health::Degraded } else { Health::Unhealthy };
            let reason = HealthReason {
                source: HealthSource::Nvml,
                code: None,
                message: format!("NVML reports {}", class.name),
                first_seen: now,
                last_seen: now,
                count: 1,
            };
            let key = self.device_key(node, device);
            Self::send(
                out,
                self.nvml_latency + self.publish,
                Input::DeviceHealth { device: key, health, reasons: vec![reason] },
            );
        }
        if class.manifestation == Manifestation::NodeDown {
            let mut info = self.node_info(view, node);
            info.ready = Some(false);
            let grace = secs(self.scenario.kubernetes.node_monitor_grace_s);
            Self::send(out, grace, Input::NodeUpsert(info));
        }
    }

    /// Kernel lines reach the agent: each through the real classifier and correlator, a new
    /// incident published to the engine.
    #[allow(clippy::too_many_arguments)]
    fn kernel_lines(
        &mut self,
        source: LineSource,
        node: u32,
        device: Option<u8>,
        pid: u32,
        mask: u8,
        view: &dyn View,
        out: &mut Out,
    ) {
        if mask == 0 {
            return;
        }
        let device = device.unwrap_or(0);
        let boot = boot_id(node, view.node(node).boot);
        let name = node_name(node);
        let now = view.now();
        let delay = self.kernel_latency + self.publish;
        for template in arriving(source_lines(self.scenario, source), mask) {
            let line = template
                .replace("{pci}", &pci(device))
                .replace("{bdf}", &bdf(device))
                .replace("{nic}", NIC_ADDRESS)
                .replace("{pid}", &pid.to_string());
            let Some(fault) = self.classifier.classify(&line) else { continue };
            let observation = self.correlator.observe(&name, Some(boot.as_str()), now, &fault);
            if observation.is_new {
                Self::send(out, delay, Input::KernelIncident(observation.incident));
            }
        }
    }

    /// The pod status the controller sees when a gang fails.
    fn gang_failure(
        &mut self,
        gang: u16,
        member: u32,
        manifestation: Manifestation,
        class: u16,
        view: &dyn View,
        out: &mut Out,
    ) {
        let k = &self.scenario.kubernetes;
        let (member, delay, message) = match manifestation {
            Manifestation::Crash => {
                let message = self.scenario.faults[class as usize]
                    .crash_message
                    .clone()
                    .unwrap_or_else(|| "RuntimeError: CUDA error: unspecified launch failure".to_string());
                (member, secs(k.pod_failure_report_s), message)
            }
            Manifestation::Hang => {
                // Another rank's NCCL watchdog fires first.
                let n = view.gang(gang).members.len() as u32;
                let peer = (member + 1) % n.max(1);
                let watchdog = secs(self.scenario.training[gang as usize].nccl_watchdog_s);
                let ms = watchdog.0 / 1_000_000;
                (
                    peer,
                    watchdog,
                    format!(
                        "[Rank {peer}] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=81234, OpType=ALLREDUCE, NumelIn=262144, NumelOut=262144, Timeout(ms)={ms}) ran for {} milliseconds before timing out.",
                        ms + 12
                    ),
                )
            }
            Manifestation::NodeDown | Manifestation::Evicted => return,
        };
        let pod = self.member_pod(view, gang, member, PodPhase::Failed, Some(&message));
        Self::send(out, delay, Input::PodUpsert(pod));
    }

    fn replica_failure(
        &mut self,
        service: u16,
        replica: u32,
        manifestation: Manifestation,
        view: &dyn View,
        out: &mut Out,
    ) {
        if manifestation != Manifestation::Crash {
            return;
        }
        let delay = secs(self.scenario.kubernetes.pod_failure_report_s);
        if let Some(pod) = self.replica_pod(
            view,
            service,
            replica,
            PodPhase::Running,
            Some("RuntimeError: CUDA error: unspecified launch failure"),
        ) {
            Self::send(out, delay, Input::PodUpsert(pod));
        }
    }

    fn member_moved(&mut self, gang: u16, member: u32, view: &dyn View, out: &mut Out) {
        // A new pod: no restarts yet.
        self.in_place_restarts.remove(&(gang, member));
        if let Some(Some(steps)) = self.steps.get_mut(gang as usize) {
            steps.forget(member);
        }
        // The controller withdraws a straggler reason when the pod goes away: a node the
        // member left is no longer marked Degraded.
        let left: Vec<u32> =
            self.straggler_reported.iter().copied().filter(|&n| view.node(n).gang_member.is_none()).collect();
        for node in left {
            self.straggler_gone(node, view, out);
        }
        if let Some(set) = self.slow_members.get_mut(gang as usize) {
            set.remove(&member);
            let node = view.gang(gang).members[member as usize];
            if view.node(node).slowdown > 1.0 {
                set.insert(member);
            }
        }
        let g = view.gang(gang);
        let old_uid =
            format!("{}-{}-g{}", g.name, member, g.pod_generation[member as usize].saturating_sub(1));
        self.pods.remove(&old_uid);
        self.deliver_now(Input::PodDeleted { uid: old_uid }, view, out);
        let pod = self.member_pod(view, gang, member, PodPhase::Pending, None);
        self.pods.insert(pod.uid.clone(), PodOwner::GangMember { gang, member });
        self.deliver_now(Input::PodUpsert(pod), view, out);
    }

    /// The restarted gang runs again: the controller's pod watch shows every member Running in
    /// the new restart attempt (JobSet bumps `restart-attempt` on all of them, moved or not), so
    /// the engine closes the restart it had open and a new failure is a new incident.
    /// With `resend_restarted_members: false` only rank 0 is re-sent (moved members were sent
    /// when they moved): its progress then closes the restart.
    fn gang_running(&mut self, gang: u16, view: &dyn View, out: &mut Out) {
        let members = if self.scenario.strategies.devheal.resend_restarted_members {
            view.gang(gang).members.len() as u32
        } else {
            1
        };
        for member in 0..members {
            let pod = self.member_pod(view, gang, member, PodPhase::Running, None);
            self.deliver_now(Input::PodUpsert(pod), view, out);
        }
    }

    fn replica_moved(
        &mut self,
        service: u16,
        replica: u32,
        old_generation: u32,
        view: &dyn View,
        out: &mut Out,
    ) {
        let old_uid = Self::replica_uid(view, service, replica, old_generation);
        self.pods.remove(&old_uid);
        self.deliver_now(Input::PodDeleted { uid: old_uid }, view, out);
        if let Some(pod) = self.replica_pod(view, service, replica, PodPhase::Pending, None) {
            self.pods.insert(pod.uid.clone(), PodOwner::Replica { service, replica });
            self.deliver_now(Input::PodUpsert(pod), view, out);
        }
    }

    /// After a repair the agent reports the node and its devices afresh.
    fn node_repaired(&mut self, node: u32, view: &dyn View, out: &mut Out) {
        let info = self.node_info(view, node);
        self.deliver_now(Input::NodeUpsert(info), view, out);
        for d in 0..self.gpn as u8 {
            self.device_repaired(node, d, view, out);
        }
    }

    /// A device a repair fixed is published Healthy (one still faulty keeps its health).
    fn device_repaired(&mut self, node: u32, device: u8, view: &dyn View, out: &mut Out) {
        if !view.device_faulty(node, device) {
            let key = self.device_key(node, device);
            Self::send(
                out,
                self.publish,
                Input::DeviceHealth { device: key, health: Health::Healthy, reasons: Vec::new() },
            );
        }
    }

    /// A reset the agent carried out is over: a device it fixed is published Healthy; one still
    /// faulty failed its reset, which the agent answers `Failed` (the controller's
    /// `Input::DeviceResetFailed`), and the engine asks for a reboot of the node.
    fn reset_done(&mut self, node: u32, device: u8, view: &dyn View, out: &mut Out) {
        if !view.device_faulty(node, device) {
            return self.device_repaired(node, device, view, out);
        }
        let device = self.device_key(node, device);
        let request = format!("sim-reset/{device}/{}", view.now().as_nanos());
        let message = "the device is still faulty after the reset".to_string();
        Self::send(out, self.publish, Input::DeviceResetFailed { device, request, message });
    }

    /// The agents' hang detectors on rank 0: a gang silent past the timeout is reported to the
    /// engine as hung (the controller's `Input::Hung`); a gang whose pods are being recreated is
    /// not followed.
    fn check_hangs(&mut self, view: &dyn View, out: &mut Out) {
        let now = view.now();
        for g in 0..self.steps.len() {
            let gang = g as u16;
            let phase = view.gang(gang).phase;
            let Some(Some(steps)) = self.steps.get_mut(g) else { continue };
            if matches!(phase, GangPhase::Restarting | GangPhase::WaitingCapacity) {
                steps.restarting();
                continue;
            }
            let Some(finding) = steps.check_hang(now) else { continue };
            out.push(Command::Finding { detector: Detector::Hang, gang, member: 0 });
            let pod_uid = Self::member_uid(view, gang, 0);
            let input = Input::Hung { pod_uid, since: finding.since, evidence: finding.evidence };
            Self::send(out, self.publish, input);
        }
    }

    /// A detector window of the gang ended: its members' step times go to the detectors; a new
    /// straggler finding marks the member's devices Degraded, a cleared one Healthy again.
    fn window(&mut self, gang: u16, view: &dyn View, out: &mut Out) {
        let g = gang as usize;
        let Some(Some(steps)) = self.steps.get_mut(g) else { return };
        let window = steps.window();
        out.push(Command::After { delay: window, timer: Timer::Window { gang } });
        let now = view.now();
        let index = now.as_nanos().div_euclid(window.as_nanos().max(1)) - 1;
        let v = view.gang(gang);
        let step_time_s = self.scenario.training[g].step_time_s;
        let steps_in_window = (window.as_secs_f64() / (step_time_s * v.pace)).floor() as u32;
        let samples = match v.phase {
            GangPhase::Computing => steps_in_window,
            GangPhase::Checkpointing => steps_in_window / 2,
            _ => 0,
        };
        let members = v.members;
        let slowdown = |m: u32| members.get(m as usize).map_or(1.0, |&n| view.node(n).slowdown);
        let found = steps.judge(index, samples, step_time_s, &self.slow_members[g], &slowdown);
        for m in found.baseline {
            out.push(Command::Finding { detector: Detector::BaselineShift, gang, member: m });
        }
        for m in found.stragglers {
            out.push(Command::Finding { detector: Detector::Straggler, gang, member: m });
            if let Some(&node) = members.get(m as usize) {
                self.straggler_found(node, view, out);
            }
        }
        for m in found.cleared {
            if let Some(&node) = members.get(m as usize) {
                self.straggler_gone(node, view, out);
            }
        }
    }

    /// A straggler episode began or ended on a node: its gang member's step times are drawn
    /// every window while it lasts.
    fn straggler_changed(&mut self, node: u32, view: &dyn View) {
        if let Some((g, m)) = view.node(node).gang_member
            && let Some(set) = self.slow_members.get_mut(g as usize)
        {
            if view.node(node).slowdown > 1.0 {
                set.insert(m);
            } else {
                set.remove(&m);
            }
        }
    }

    /// The straggler detector found the node's member slow: the agent publishes its devices
    /// Degraded (a device with an active fault keeps that health).
    fn straggler_found(&mut self, node: u32, view: &dyn View, out: &mut Out) {
        let now = view.now();
        if !self.straggler_reported.insert(node) {
            return;
        }
        let message = "straggler: slower than the gang median".to_string();
        for d in 0..self.gpn as u8 {
            if view.device_faulty(node, d) {
                continue;
            }
            let reason = HealthReason {
                source: HealthSource::Progress,
                code: None,
                message: message.clone(),
                first_seen: now,
                last_seen: now,
                count: 1,
            };
            let device = self.device_key(node, d);
            Self::send(
                out,
                self.publish,
                Input::DeviceHealth { device, health: Health::Degraded, reasons: vec![reason] },
            );
        }
    }

    /// The slow-down ended and the detector saw it: the devices are published Healthy again.
    fn straggler_gone(&mut self, node: u32, view: &dyn View, out: &mut Out) {
        if !self.straggler_reported.remove(&node) {
            return;
        }
        for d in 0..self.gpn as u8 {
            if view.device_faulty(node, d) {
                continue;
            }
            let device = self.device_key(node, d);
            Self::send(
                out,
                self.publish,
                Input::DeviceHealth { device, health: Health::Healthy, reasons: Vec::new() },
            );
        }
    }

    /// A checkpoint just completed with replacements pending: as the controller would, move the
    /// members whose devices the engine still holds Degraded and restart the gang from this
    /// checkpoint (nothing to redo, only the restart).
    fn replace_at_checkpoint(&mut self, gang: u16, view: &dyn View, out: &mut Out) {
        let Some(wanted) = self.replace_at_checkpoint.remove(&gang) else { return };
        let g = view.gang(gang);
        if g.phase != GangPhase::Computing {
            return;
        }
        let still: Vec<u32> = wanted
            .into_iter()
            .filter(|&m| {
                let node = g.members[m as usize];
                (0..self.gpn as u8)
                    .any(|d| self.engine.device_health(&self.device_key(node, d)) == Some(Health::Degraded))
            })
            .collect();
        if !still.is_empty() {
            out.push(Command::ReplaceMembers { gang, members: still });
        }
    }

    /// Turn one engine action into commands for the world.
    fn apply(&mut self, action: Action, view: &dyn View, out: &mut Out) {
        let nodes = self.scenario.total_nodes();
        let gang_index = |name: &str, namespace: &str| {
            (0..view.gangs() as u16).find(|&g| {
                let v = view.gang(g);
                v.name == name && v.namespace == namespace
            })
        };
        let command = match action {
            Action::ReplaceAtCheckpoint { pod, .. } => {
                match self.pods.get(&pod.uid).copied() {
                    Some(PodOwner::GangMember { gang, member }) => {
                        self.replace_at_checkpoint.entry(gang).or_default().insert(member);
                    }
                    _ => self.unmapped += 1,
                }
                None
            }
            Action::MarkPod { .. } | Action::Report { .. } => None,
            Action::EvictPod { pod, .. } => match self.pods.get(&pod.uid).copied() {
                Some(PodOwner::GangMember { gang, member }) => {
                    Some(Command::EvictGangMember { gang, member })
                }
                Some(PodOwner::Replica { service, replica }) => {
                    Some(Command::EvictReplica { service, replica })
                }
                None => {
                    self.unmapped += 1;
                    None
                }
            },
            Action::RestartGang { gang, in_place, .. } => match gang_index(&gang.name, &gang.namespace) {
                Some(g) => {
                    // The members told to restart in place exit 76 and the kubelet restarts
                    // them: their pods show one restart more after the publish latency.
                    let mut told = 0;
                    for r in &in_place {
                        if let Some(&PodOwner::GangMember { gang: pg, member }) = self.pods.get(&r.uid)
                            && pg == g
                        {
                            *self.in_place_restarts.entry((g, member)).or_insert(0) += 1;
                            told += 1;
                            let pod = self.member_pod(view, g, member, PodPhase::Running, None);
                            Self::send(out, self.publish, Input::PodUpsert(pod));
                        }
                    }
                    let all = told > 0 && told == view.gang(g).members.len();
                    Some(Command::RestartGang { gang: g, in_place: all })
                }
                None => {
                    self.unmapped += 1;
                    None
                }
            },
            Action::QuarantineDevice { device, .. } => match parse_gpu(&device) {
                Some((node, d)) if node < nodes && u32::from(d) < self.gpn => {
                    Some(Command::QuarantineDevice { node, device: d })
                }
                _ => {
                    self.unmapped += 1;
                    None
                }
            },
            Action::ReleaseDevice { device, .. } => match parse_gpu(&device) {
                Some((node, d)) if node < nodes && u32::from(d) < self.gpn => {
                    Some(Command::ReleaseDevice { node, device: d })
                }
                _ => {
                    self.unmapped += 1;
                    None
                }
            },
            Action::CordonNode { node, .. } => match parse_node(&node) {
                Some(n) if n < nodes => Some(Command::Cordon { node: n }),
                _ => {
                    self.unmapped += 1;
                    None
                }
            },
            Action::UncordonNode { node, .. } => match parse_node(&node) {
                Some(n) if n < nodes => Some(Command::Uncordon { node: n }),
                _ => {
                    self.unmapped += 1;
                    None
                }
            },
            Action::RequestRepair { node, device, kind, .. } => {
                match parse_node(&node).filter(|&n| n < nodes) {
                    None => {
                        self.unmapped += 1;
                        None
                    }
                    Some(n) => match kind {
                        RepairKind::None | RepairKind::RestartApp => None,
                        RepairKind::ResetDevice => match device.as_ref().and_then(parse_gpu) {
                            Some((_, d)) if u32::from(d) < self.gpn => {
                                Some(Command::ResetDevice { node: n, device: d })
                            }
                            _ => Some(Command::Repair { node: n, kind: Repair::Reboot }),
                        },
                        RepairKind::RebootNode => Some(Command::Repair { node: n, kind: Repair::Reboot }),
                        RepairKind::InspectHardware => {
                            Some(Command::Repair { node: n, kind: Repair::Replace })
                        }
                    },
                }
            }
            // The simulated repair system finishes a request by itself; nothing stands.
            Action::WithdrawRepair { .. } => None,
            Action::FailWorkload { gang, .. } => match gang_index(&gang.name, &gang.namespace) {
                Some(g) => Some(Command::FailGang { gang: g }),
                None => {
                    self.unmapped += 1;
                    None
                }
            },
        };
        out.extend(command);
    }
}

impl Policy for Devheal<'_> {
    type Timer = Timer;

    fn strategy(&self) -> Strategy {
        Strategy::Devheal
    }

    fn mechanics(&self) -> Mechanics {
        Mechanics { recreates_pods: true, in_job_restart: false, agent_resets: true }
    }

    /// The engine learns the cluster as the controller's first list would show it.
    fn start(&mut self, view: &dyn View, out: &mut Out) {
        let nodes = self.scenario.total_nodes();
        for node in 0..nodes {
            let devices: Vec<Device> = (0..self.gpn as u8)
                .map(|d| Device {
                    key: self.device_key(node, d),
                    pci_address: Some(bdf(d)),
                    vendor: Vendor::Nvidia,
                    model: Some("NVIDIA H100 80GB HBM3".to_string()),
                })
                .collect();
            let info = self.node_info(view, node);
            self.deliver_now(Input::Devices { node: node_name(node), devices }, view, out);
            self.deliver_now(Input::NodeUpsert(info), view, out);
        }
        let interval = secs(self.scenario.strategies.devheal.progress_interval_s);
        for g in 0..view.gangs() as u16 {
            for m in 0..view.gang(g).members.len() as u32 {
                let pod = self.member_pod(view, g, m, PodPhase::Running, None);
                self.pods.insert(pod.uid.clone(), PodOwner::GangMember { gang: g, member: m });
                self.deliver_now(Input::PodUpsert(pod), view, out);
            }
            out.push(Command::After { delay: interval, timer: Timer::Progress { gang: g } });
            if self.scenario.strategies.devheal.detect_stragglers
                && let Some(Some(steps)) = self.steps.get(g as usize)
            {
                out.push(Command::After { delay: steps.window(), timer: Timer::Window { gang: g } });
            }
        }
        for s in 0..view.services() as u16 {
            for r in 0..view.replicas(s) as u32 {
                if let Some(pod) = self.replica_pod(view, s, r, PodPhase::Running, None) {
                    self.pods.insert(pod.uid.clone(), PodOwner::Replica { service: s, replica: r });
                    self.deliver_now(Input::PodUpsert(pod), view, out);
                }
            }
        }
        let idle = secs(self.scenario.strategies.devheal.tick_idle_s);
        out.push(Command::After { delay: idle, timer: Timer::Tick });
    }

    fn signal(&mut self, signal: Signal, view: &dyn View, out: &mut Out) {
        match signal {
            Signal::Fault { class, node, device, pid, lines } => {
                self.fault_signals(class, node, device, pid, lines, view, out)
            }
            Signal::KernelLines { source, node, device, pid, lines } => {
                self.kernel_lines(source, node, device, pid, lines, view, out)
            }
            Signal::StragglerStarted { node } | Signal::StragglerEnded { node } => {
                self.straggler_changed(node, view)
            }
            Signal::GangFailed { gang, member, manifestation, class } => {
                self.gang_failure(gang, member, manifestation, class, view, out)
            }
            Signal::MemberMoved { gang, member } => self.member_moved(gang, member, view, out),
            Signal::GangRunning { gang } => self.gang_running(gang, view, out),
            Signal::CheckpointDone { gang } => self.replace_at_checkpoint(gang, view, out),
            Signal::ReplicaFailed { service, replica, manifestation } => {
                self.replica_failure(service, replica, manifestation, view, out)
            }
            Signal::ReplicaMoved { service, replica, old_generation } => {
                self.replica_moved(service, replica, old_generation, view, out)
            }
            Signal::NodeRepaired { node } => self.node_repaired(node, view, out),
            Signal::DeviceRepaired { node, device } => self.reset_done(node, device, view, out),
        }
    }

    fn timer(&mut self, timer: Timer, view: &dyn View, out: &mut Out) {
        match timer {
            Timer::Deliver(input) => self.deliver_now(*input, view, out),
            Timer::Tick => self.tick(view, out),
            Timer::Progress { gang } => self.progress(gang, view, out),
            Timer::Window { gang } => self.window(gang, view, out),
        }
    }

    fn counts(&self, counts: &mut Counts) {
        counts.engine_actions = self.actions;
        counts.engine_actions_unmapped = self.unmapped;
        counts.engine_inputs = self.inputs;
        counts.engine_ticks = self.ticks;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use devheal_detect::{Catalog, Classifier};

    #[test]
    fn every_device_of_a_64_gpu_node_has_its_own_pci_address() {
        let all: std::collections::BTreeSet<String> = (0..64u8).map(bdf).collect();
        assert_eq!(all.len(), 64);
        assert_eq!(bdf(0), "0000:18:00.0");
        assert_eq!(bdf(7), "0000:db:00.0");
        assert_eq!(bdf(8), "0001:18:00.0");
        assert_eq!(bdf(63), "0007:db:00.0");
    }

    /// The real classifier reads back, from an Xid line, the address the inventory gives.
    #[test]
    fn an_xid_line_names_the_inventory_address_of_a_high_device() {
        let classifier = Classifier::new(Catalog::builtin());
        for d in [0u8, 8, 17, 63] {
            let line =
                format!("NVRM: Xid (PCI:{}): 79, pid=7, name=python3, GPU has fallen off the bus.", pci(d));
            let fault = classifier.classify(&line).expect("an Xid line classifies");
            let text = format!("{fault:?}");
            assert!(text.contains(&bdf(d)), "device {d}: {text}");
        }
    }
}
