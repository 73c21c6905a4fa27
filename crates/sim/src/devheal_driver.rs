//! The devheal strategy's driver: it turns what happens in the model into the inputs the real
//! agent and controller would give the engine (kernel lines through the real detect classifier
//! and correlator, NVML health, pod and node status, progress reports, ticks), delivers them with
//! the scenario's measured latencies, and carries out the engine's actions on the model.
//!
//! Nothing here decides anything: every remediation comes from `devheal_core::Engine`.

use std::collections::BTreeMap;

use devheal_core::{
    Action, ContainerInfo, ContainerState, Device, DeviceKey, Engine, EngineConfig, Health, HealthReason,
    HealthSource, Input, NodeInfo, PodInfo, PodPhase, RepairKind, Time, Vendor,
};
use devheal_detect::{Catalog, Classifier, CorrelationConfig, Correlator};

use crate::model::{GangState, Repair, ReplicaState, World};
use crate::scenario::{Manifestation, NvmlSignal, Scenario, secs};

/// PCI bus ids of the eight GPUs of an HGX H100 board, as `nvidia-smi` lists them.
const GPU_BUS: [&str; 8] = ["18", "2a", "3a", "5d", "9a", "ab", "ba", "db"];
const NIC_ADDRESS: &str = "0000:0c:00.0";
const GPU_RESOURCE: &str = "nvidia.com/gpu";
/// After an input, the engine is ticked at the active cadence for this long.
const ACTIVE_WINDOW_S: f64 = 120.0;

/// Who owns a pod uid in the model.
#[derive(Clone, Copy, Debug)]
enum PodOwner {
    GangMember { gang: u16, member: u32 },
    Replica { service: u16, replica: u32 },
}

/// The engine and the detection path the agent would run.
pub(crate) struct Controller {
    engine: Engine,
    classifier: Classifier,
    correlator: Correlator,
    pods: BTreeMap<String, PodOwner>,
    last_input: Time,
    pub(crate) actions: u64,
    pub(crate) unmapped: u64,
    pub(crate) inputs: u64,
    pub(crate) ticks: u64,
    kernel_latency: devheal_core::Duration,
    publish: devheal_core::Duration,
    nvml_latency: devheal_core::Duration,
    /// Every node's name and every GPU's key, made once: a restarted 2,048-pod gang is re-sent
    /// whole, and formatting 16,384 keys each time was a third of the run.
    node_names: Vec<String>,
    device_keys: Vec<DeviceKey>,
}

impl Controller {
    pub(crate) fn new(scenario: &Scenario) -> Controller {
        let d = &scenario.strategies.devheal;
        Controller {
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
        }
    }
}

pub(crate) fn node_name(node: u32) -> String {
    format!("node-{node:05}")
}

fn parse_node(name: &str) -> Option<u32> {
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

impl World<'_> {
    fn ctl(&mut self) -> &mut Controller {
        // Only called on the devheal strategy, where the controller exists.
        self.controller.get_or_insert_with(|| Controller::new(self.scenario))
    }

    /// Schedule an input for the engine `delay` from now.
    fn send(&mut self, delay: devheal_core::Duration, input: Input) {
        let at = self.now + delay;
        self.queue.push(at, crate::model::Event::Deliver(Box::new(input)));
    }

    fn device_key(&self, node: u32, device: u8) -> DeviceKey {
        let i = node as usize * self.gpn as usize + usize::from(device);
        match self.controller.as_ref().and_then(|c| c.device_keys.get(i)) {
            Some(k) => k.clone(),
            None => DeviceKey::new(node_name(node), GPU_RESOURCE, gpu_id(node, device)),
        }
    }

    fn node_name(&self, node: u32) -> String {
        match self.controller.as_ref().and_then(|c| c.node_names.get(node as usize)) {
            Some(n) => n.clone(),
            None => node_name(node),
        }
    }

    fn node_info(&self, node: u32) -> NodeInfo {
        let n = &self.nodes[node as usize];
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

    pub(crate) fn member_uid(&self, gang: u16, member: u32) -> String {
        let g = &self.gangs[gang as usize];
        format!("{}-{}-g{}", g.name, member, g.pod_generation[member as usize])
    }

    fn replica_uid(&self, service: u16, replica: u32, generation: u32) -> String {
        format!("{}-{}-g{}", self.services[service as usize].name, replica, generation)
    }

    fn member_pod(&self, gang: u16, member: u32, phase: PodPhase, failure: Option<&str>) -> PodInfo {
        let g = &self.gangs[gang as usize];
        let node = g.members[member as usize];
        let mut labels = BTreeMap::new();
        labels.insert("jobset.sigs.k8s.io/jobset-name".to_string(), g.name.clone());
        labels.insert("jobset.sigs.k8s.io/replicatedjob-name".to_string(), "workers".to_string());
        labels.insert("jobset.sigs.k8s.io/restart-attempt".to_string(), g.attempt.to_string());
        labels.insert("batch.kubernetes.io/job-name".to_string(), format!("{}-workers-0", g.name));
        labels.insert("batch.kubernetes.io/job-completion-index".to_string(), member.to_string());
        let state = self.container_state(failure);
        PodInfo {
            uid: self.member_uid(gang, member),
            namespace: g.namespace.clone(),
            name: format!("{}-workers-0-{}", g.name, member),
            node: Some(self.node_name(node)),
            labels,
            owner: Some(("Job".to_string(), format!("{}-workers-0", g.name))),
            restart_policy: Some("Never".to_string()),
            phase,
            containers: vec![ContainerInfo {
                name: "trainer".to_string(),
                state,
                ..ContainerInfo::default()
            }],
            devices: (0..self.gpn as u8).map(|d| self.device_key(node, d)).collect(),
            start_time: Some(self.now),
            ..PodInfo::default()
        }
    }

    /// A container that failed now with `failure` as its message, or one running since now.
    fn container_state(&self, failure: Option<&str>) -> ContainerState {
        match failure {
            Some(message) => ContainerState::Terminated {
                exit_code: 1,
                signal: None,
                reason: Some("Error".to_string()),
                message: Some(message.to_string()),
                finished_at: Some(self.now),
            },
            None => ContainerState::Running { started_at: Some(self.now) },
        }
    }

    fn replica_pod(
        &self,
        service: u16,
        replica: u32,
        phase: PodPhase,
        failure: Option<&str>,
    ) -> Option<PodInfo> {
        let s = &self.services[service as usize];
        let r = &s.replicas[replica as usize];
        let node = r.node?;
        let mut labels = BTreeMap::new();
        labels.insert("app.kubernetes.io/name".to_string(), s.name.clone());
        let state = self.container_state(failure);
        Some(PodInfo {
            uid: self.replica_uid(service, replica, r.generation),
            namespace: s.namespace.clone(),
            name: format!("{}-{}", s.name, replica),
            node: Some(self.node_name(node)),
            labels,
            owner: Some(("ReplicaSet".to_string(), s.name.clone())),
            restart_policy: Some("Always".to_string()),
            phase,
            containers: vec![ContainerInfo { name: "server".to_string(), state, ..ContainerInfo::default() }],
            devices: (r.first_device..r.first_device + s.gpus_per_replica as u8)
                .map(|d| self.device_key(node, d))
                .collect(),
            start_time: Some(self.now),
            ..PodInfo::default()
        })
    }

    /// The engine learns the cluster as the controller's first list would show it.
    pub(crate) fn devheal_start(&mut self) {
        for node in 0..self.nodes.len() as u32 {
            let devices: Vec<Device> = (0..self.gpn as u8)
                .map(|d| Device {
                    key: self.device_key(node, d),
                    pci_address: Some(bdf(d)),
                    vendor: Vendor::Nvidia,
                    model: Some("NVIDIA H100 80GB HBM3".to_string()),
                })
                .collect();
            let info = self.node_info(node);
            self.deliver_now(Input::Devices { node: node_name(node), devices });
            self.deliver_now(Input::NodeUpsert(info));
        }
        for g in 0..self.gangs.len() as u16 {
            for m in 0..self.gangs[g as usize].members.len() as u32 {
                let pod = self.member_pod(g, m, PodPhase::Running, None);
                self.ctl().pods.insert(pod.uid.clone(), PodOwner::GangMember { gang: g, member: m });
                self.deliver_now(Input::PodUpsert(pod));
            }
            let interval = secs(self.scenario.strategies.devheal.progress_interval_s);
            self.queue.push(self.now + interval, crate::model::Event::Progress { gang: g });
        }
        for s in 0..self.services.len() as u16 {
            for r in 0..self.services[s as usize].replicas.len() as u32 {
                if let Some(pod) = self.replica_pod(s, r, PodPhase::Running, None) {
                    self.ctl().pods.insert(pod.uid.clone(), PodOwner::Replica { service: s, replica: r });
                    self.deliver_now(Input::PodUpsert(pod));
                }
            }
        }
        let idle = secs(self.scenario.strategies.devheal.tick_idle_s);
        self.queue.push(self.now + idle, crate::model::Event::EngineTick);
    }

    fn deliver_now(&mut self, input: Input) {
        let now = self.now;
        let routine = matches!(input, Input::Progress { .. } | Input::Tick);
        let ctl = self.ctl();
        ctl.inputs += 1;
        if !routine {
            ctl.last_input = now;
        }
        let actions = ctl.engine.handle(input, now);
        for planned in actions {
            self.ctl().actions += 1;
            self.apply(planned.action);
        }
    }

    pub(crate) fn devheal_deliver(&mut self, input: Input) {
        self.deliver_now(input);
    }

    pub(crate) fn devheal_tick(&mut self) {
        let now = self.now;
        // Tick at the active cadence while something is in flight (a recent input, or a hung
        // gang, whose silence the engine's hang detection must notice); at
        // the idle cadence otherwise, when a tick can only refill budgets and end probations.
        let gang_stalled = (0..self.gangs.len()).any(|g| {
            matches!(self.gangs[g].state, GangState::Hung { .. } | GangState::WaitingCapacity { .. })
        });
        let recent = gang_stalled || now.since(self.ctl().last_input).as_secs_f64() < ACTIVE_WINDOW_S;
        let d = &self.scenario.strategies.devheal;
        let next = secs(if recent { d.tick_active_s } else { d.tick_idle_s });
        let ctl = self.ctl();
        ctl.inputs += 1;
        ctl.ticks += 1;
        let actions = ctl.engine.handle(Input::Tick, now);
        for planned in actions {
            self.ctl().actions += 1;
            self.apply(planned.action);
        }
        self.queue.push(now + next, crate::model::Event::EngineTick);
    }

    pub(crate) fn devheal_progress(&mut self, gang: u16) {
        let now = self.now;
        let interval = secs(self.scenario.strategies.devheal.progress_interval_s);
        self.queue.push(now + interval, crate::model::Event::Progress { gang });
        let g = &self.gangs[gang as usize];
        let running_work = match g.state {
            GangState::Computing => g.cycle_work + now.since(g.last_settle).as_secs_f64() / g.pace,
            GangState::Checkpointing { .. } => g.cycle_work,
            _ => return, // a stalled gang reports nothing: that silence is the signal
        };
        let step = ((g.committed_work + running_work) / g.step_time_s) as u64;
        let step_time = secs(g.step_time_s * g.pace);
        let pod_uid = self.member_uid(gang, 0);
        self.deliver_now(Input::Progress { pod_uid, step, step_time });
    }

    /// A fault's signals: kernel lines through the real classifier and correlator, NVML health.
    pub(crate) fn devheal_fault_signals(&mut self, class_idx: u16, node: u32, device: Option<u8>, pid: u32) {
        let class = &self.scenario.faults[class_idx as usize];
        let device = device.unwrap_or(0);
        let boot = boot_id(node, self.nodes[node as usize].boot);
        let name = node_name(node);
        let now = self.now;
        let lines: Vec<String> = class
            .kernel_lines
            .iter()
            .map(|t| {
                t.replace("{pci}", &pci(device))
                    .replace("{bdf}", &bdf(device))
                    .replace("{nic}", NIC_ADDRESS)
                    .replace("{pid}", &pid.to_string())
            })
            .collect();
        let nvml = class.nvml;
        let class_name = class.name.clone();
        let delay = {
            let c = self.ctl();
            c.kernel_latency + c.publish
        };
        for line in &lines {
            let ctl = self.ctl();
            let Some(fault) = ctl.classifier.classify(line) else { continue };
            let observation = ctl.correlator.observe(&name, Some(boot.as_str()), now, &fault);
            if observation.is_new {
                self.send(delay, Input::KernelIncident(observation.incident));
            }
        }
        if lines.is_empty() && nvml != NvmlSignal::None {
            let health = if nvml == NvmlSignal::Degraded { Health::Degraded } else { Health::Unhealthy };
            let reason = HealthReason {
                source: HealthSource::Nvml,
                code: None,
                message: format!("NVML reports {class_name}"),
                first_seen: now,
                last_seen: now,
                count: 1,
            };
            let delay = {
                let c = self.ctl();
                c.nvml_latency + c.publish
            };
            let key = self.device_key(node, device);
            self.send(delay, Input::DeviceHealth { device: key, health, reasons: vec![reason] });
        }
        if class.manifestation == Manifestation::NodeDown {
            let mut info = self.node_info(node);
            info.ready = Some(false);
            let grace = secs(self.scenario.kubernetes.node_monitor_grace_s);
            self.send(grace, Input::NodeUpsert(info));
        }
    }

    /// The pod status the controller sees when a gang fails.
    pub(crate) fn devheal_gang_failure(
        &mut self,
        gang: u16,
        member: u32,
        manifestation: Manifestation,
        class: u16,
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
                let n = self.gangs[gang as usize].members.len() as u32;
                let peer = (member + 1) % n.max(1);
                let watchdog = self.gangs[gang as usize].watchdog;
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
        let pod = self.member_pod(gang, member, PodPhase::Failed, Some(&message));
        self.send(delay, Input::PodUpsert(pod));
    }

    pub(crate) fn devheal_replica_failure(
        &mut self,
        service: u16,
        replica: u32,
        manifestation: Manifestation,
    ) {
        if manifestation != Manifestation::Crash {
            return;
        }
        let delay = secs(self.scenario.kubernetes.pod_failure_report_s);
        if let Some(pod) = self.replica_pod(
            service,
            replica,
            PodPhase::Running,
            Some("RuntimeError: CUDA error: unspecified launch failure"),
        ) {
            self.send(delay, Input::PodUpsert(pod));
        }
    }

    pub(crate) fn devheal_member_moved(&mut self, gang: u16, member: u32, _from: u32) {
        let g = &self.gangs[gang as usize];
        let old_uid =
            format!("{}-{}-g{}", g.name, member, g.pod_generation[member as usize].saturating_sub(1));
        self.ctl().pods.remove(&old_uid);
        self.deliver_now(Input::PodDeleted { uid: old_uid });
        let pod = self.member_pod(gang, member, PodPhase::Pending, None);
        self.ctl().pods.insert(pod.uid.clone(), PodOwner::GangMember { gang, member });
        self.deliver_now(Input::PodUpsert(pod));
    }

    /// The restarted gang runs again: the controller's pod watch shows every member Running in
    /// the new restart attempt (JobSet bumps `restart-attempt` on all of them, moved or not), so
    /// the engine closes the restart it had open and a new failure is a new incident.
    /// With `resend_restarted_members: false` only rank 0 is re-sent (moved members were sent
    /// when they moved): its progress then closes the restart.
    pub(crate) fn devheal_gang_running(&mut self, gang: u16) {
        let members = if self.scenario.strategies.devheal.resend_restarted_members {
            self.gangs[gang as usize].members.len() as u32
        } else {
            1
        };
        for member in 0..members {
            let pod = self.member_pod(gang, member, PodPhase::Running, None);
            self.deliver_now(Input::PodUpsert(pod));
        }
    }

    pub(crate) fn devheal_replica_moved(&mut self, service: u16, replica: u32, old_generation: u32) {
        let old_uid = self.replica_uid(service, replica, old_generation);
        self.ctl().pods.remove(&old_uid);
        self.deliver_now(Input::PodDeleted { uid: old_uid });
        if let Some(pod) = self.replica_pod(service, replica, PodPhase::Pending, None) {
            self.ctl().pods.insert(pod.uid.clone(), PodOwner::Replica { service, replica });
            self.deliver_now(Input::PodUpsert(pod));
        }
    }

    /// After a repair the agent reports the node and its devices afresh.
    pub(crate) fn devheal_node_repaired(&mut self, node: u32) {
        let info = self.node_info(node);
        self.deliver_now(Input::NodeUpsert(info));
        for d in 0..self.gpn as u8 {
            self.devheal_device_repaired(node, d);
        }
    }

    pub(crate) fn devheal_device_repaired(&mut self, node: u32, device: u8) {
        let i = self.dev(node, device);
        if self.devices[i].fault.is_none() {
            let key = self.device_key(node, device);
            let publish = self.ctl().publish;
            self.send(
                publish,
                Input::DeviceHealth { device: key, health: Health::Healthy, reasons: Vec::new() },
            );
        }
    }

    /// The straggler detector found the node's member slow: the agent publishes its devices
    /// Degraded (a device with an active fault keeps that health).
    pub(crate) fn devheal_straggler_found(&mut self, node: u32) {
        let now = self.now;
        let slowdown = self.nodes[node as usize].slowdown;
        self.nodes[node as usize].straggler_reported = true;
        let publish = self.ctl().publish;
        let message = format!("straggler: {:.0} % slower than the gang median", (slowdown - 1.0) * 100.0);
        for d in 0..self.gpn as u8 {
            if self.devices[self.dev(node, d)].fault.is_some() {
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
            self.send(
                publish,
                Input::DeviceHealth { device, health: Health::Degraded, reasons: vec![reason] },
            );
        }
    }

    /// The slow-down ended and the detector saw it: the devices are published Healthy again.
    pub(crate) fn devheal_straggler_gone(&mut self, node: u32) {
        if !std::mem::take(&mut self.nodes[node as usize].straggler_reported) {
            return;
        }
        let publish = self.ctl().publish;
        for d in 0..self.gpn as u8 {
            if self.devices[self.dev(node, d)].fault.is_some() {
                continue;
            }
            let device = self.device_key(node, d);
            self.send(publish, Input::DeviceHealth { device, health: Health::Healthy, reasons: Vec::new() });
        }
    }

    /// A checkpoint just completed with replacements pending: as the controller would, move the
    /// members whose devices the engine still holds Degraded and restart the gang from this
    /// checkpoint (nothing to redo, only the restart).
    pub(crate) fn devheal_replace_at_checkpoint(&mut self, gang: u16) {
        let wanted = std::mem::take(&mut self.gangs[gang as usize].replace_at_checkpoint);
        if self.gangs[gang as usize].state != GangState::Computing {
            return;
        }
        let still: Vec<u32> = wanted
            .into_iter()
            .filter(|&m| {
                let node = self.gangs[gang as usize].members[m as usize];
                (0..self.gpn as u8).any(|d| {
                    let key = self.device_key(node, d);
                    self.controller.as_ref().and_then(|c| c.engine.device_health(&key))
                        == Some(Health::Degraded)
                })
            })
            .collect();
        if still.is_empty() {
            return;
        }
        self.counts.straggler_replacements += still.len() as u64;
        self.gangs[gang as usize].pending_moves.extend(still);
        self.begin_restart(gang, false);
    }

    /// Carry out one engine action on the model.
    fn apply(&mut self, action: Action) {
        let now = self.now;
        match action {
            Action::ReplaceAtCheckpoint { pod, .. } => match self.ctl().pods.get(&pod.uid).copied() {
                Some(PodOwner::GangMember { gang, member }) => {
                    self.gangs[gang as usize].replace_at_checkpoint.insert(member);
                }
                _ => self.ctl().unmapped += 1,
            },
            Action::MarkPod { .. } | Action::Report { .. } => {}
            Action::EvictPod { pod, .. } => {
                let owner = self.ctl().pods.get(&pod.uid).copied();
                match owner {
                    Some(PodOwner::GangMember { gang, member }) => {
                        self.counts.pod_evictions += 1;
                        self.evict_gang_member(gang, member);
                    }
                    Some(PodOwner::Replica { service, replica }) => {
                        self.counts.pod_evictions += 1;
                        let node = self.services[service as usize].replicas[replica as usize].node;
                        let healthy =
                            node.is_some_and(|n| self.node_problem(n, Some((service, replica))).is_none());
                        let state = self.services[service as usize].replicas[replica as usize].state;
                        if matches!(state, ReplicaState::Up | ReplicaState::Starting { .. }) {
                            self.replica_set_state_pub(service, replica, healthy);
                        }
                        let epoch = self.services[service as usize].replicas[replica as usize].epoch;
                        let at = now + secs(self.scenario.kubernetes.termination_grace_s);
                        self.queue
                            .push(at, crate::model::Event::ReplicaReschedule { service, replica, epoch });
                    }
                    None => self.ctl().unmapped += 1,
                }
            }
            Action::RestartGang { gang, .. } => {
                let Some(g) =
                    self.gangs.iter().position(|g| g.name == gang.name && g.namespace == gang.namespace)
                else {
                    self.ctl().unmapped += 1;
                    return;
                };
                if !matches!(
                    self.gangs[g].state,
                    GangState::Restarting { .. } | GangState::WaitingCapacity { .. }
                ) {
                    self.begin_restart(g as u16, false);
                }
            }
            Action::QuarantineDevice { device, .. } => match parse_gpu(&device) {
                Some((node, d)) if (node as usize) < self.nodes.len() && u32::from(d) < self.gpn => {
                    let i = self.dev(node, d);
                    if self.devices[i].quarantined.is_none() {
                        self.counts.device_quarantines += 1;
                        if self.devices[i].fault.is_none() && self.nodes[node as usize].host_fault.is_none() {
                            self.counts.false_quarantines += 1;
                        }
                        self.quarantine_device(i);
                    }
                }
                _ => self.ctl().unmapped += 1,
            },
            Action::ReleaseDevice { device, .. } => match parse_gpu(&device) {
                Some((node, d)) if (node as usize) < self.nodes.len() && u32::from(d) < self.gpn => {
                    let i = self.dev(node, d);
                    self.release_device(i);
                }
                _ => self.ctl().unmapped += 1,
            },
            Action::CordonNode { node, .. } => match parse_node(&node) {
                Some(n) if (n as usize) < self.nodes.len() => {
                    if !self.nodes[n as usize].cordoned && self.node_problem(n, None).is_none() {
                        self.counts.false_quarantines += 1;
                    }
                    self.nodes[n as usize].cordoned = true;
                }
                _ => self.ctl().unmapped += 1,
            },
            Action::UncordonNode { node, .. } => match parse_node(&node) {
                Some(n) if (n as usize) < self.nodes.len() => self.nodes[n as usize].cordoned = false,
                _ => self.ctl().unmapped += 1,
            },
            Action::RequestRepair { node, device, kind, .. } => {
                let Some(n) = parse_node(&node).filter(|&n| (n as usize) < self.nodes.len()) else {
                    self.ctl().unmapped += 1;
                    return;
                };
                match kind {
                    RepairKind::None | RepairKind::RestartApp => {}
                    RepairKind::ResetDevice => match device.as_ref().and_then(parse_gpu) {
                        Some((_, d)) if u32::from(d) < self.gpn => self.reset_device(n, d),
                        _ => self.start_repair(n, Repair::Reboot, true),
                    },
                    RepairKind::RebootNode => self.start_repair(n, Repair::Reboot, true),
                    RepairKind::InspectHardware => self.start_repair(n, Repair::Replace, true),
                }
            }
            // The simulated repair system finishes a request by itself; nothing stands.
            Action::WithdrawRepair { .. } => {}
            Action::FailWorkload { gang, .. } => {
                if let Some(g) =
                    self.gangs.iter().position(|g| g.name == gang.name && g.namespace == gang.namespace)
                {
                    self.fail_gang(g as u16);
                } else {
                    self.ctl().unmapped += 1;
                }
            }
        }
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
