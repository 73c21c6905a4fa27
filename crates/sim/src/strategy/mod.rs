//! The ways a cluster can respond to device faults that `devheal sim` compares, and the narrow
//! interface through which the world drives them.
//!
//! The world (`crate::world`) knows a strategy only through [`Policy`]: it hands the strategy
//! [`Signal`]s (what a fault prints, a pod's failure, a restarted gang running again, a repair
//! done …) together with a read-only [`View`] of the cluster, and applies the [`Command`]s the
//! strategy returns (evict a pod, restart a gang, quarantine a device, request a repair, wake me
//! later …). Nothing in the world branches on which strategy runs, and no strategy imports the
//! world: imports go one way, world → this interface ← each strategy.

use devheal_core::{Duration, Time};
use serde::Serialize;

use crate::report::Counts;
use crate::scenario::{Manifestation, Scenario};

pub(crate) mod devheal;
pub(crate) mod job_failure_policy;
pub(crate) mod kubernetes_default;
pub(crate) mod node_health_controller;
pub(crate) mod nvsentinel_jobset;
pub(crate) mod progress_watchdog;
pub(crate) mod steps;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// No extra tooling: pods stay on dead devices, containers restart in place, a gang hangs
    /// until the NCCL watchdog, and a person steps in after `operator.response_min`.
    KubernetesDefault,
    /// node-problem-detector plus a generic remediator: node-level detection on a polling
    /// period, then cordon, drain and reboot of the whole node, whatever the kernel line said.
    NodeHealthController,
    /// Job podFailurePolicy / JobSet failure policy: the gang is recreated when a pod fails;
    /// the scheduler honours the device plugin's Unhealthy marks; no other device awareness.
    JobFailurePolicy,
    /// NVIDIA NVSentinel with JobSet: the Xid catalogue's action for each event (none for
    /// application Xids 13/31), cordon, partial drain of the pods on the GPU and a GPU reset,
    /// or a full drain and a reboot; a 15 s poll; JobSet recreates the gang.
    NvsentinelJobset,
    /// In-job restart on a progress timeout (nvidia-resiliency-ext's `ft_launcher`): a hung or
    /// exited rank restarts the job in place, nodes failing the NVML health check replaced by
    /// hot spares.
    ProgressWatchdog,
    /// devheal's engine, unchanged, fed by the real detect code, on top of JobSet mechanics.
    Devheal,
}

impl Strategy {
    pub const ALL: [Strategy; 6] = [
        Strategy::KubernetesDefault,
        Strategy::NodeHealthController,
        Strategy::JobFailurePolicy,
        Strategy::NvsentinelJobset,
        Strategy::ProgressWatchdog,
        Strategy::Devheal,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Strategy::KubernetesDefault => "kubernetes-default",
            Strategy::NodeHealthController => "node-health-controller",
            Strategy::JobFailurePolicy => "job-failure-policy",
            Strategy::NvsentinelJobset => "nvsentinel-jobset",
            Strategy::ProgressWatchdog => "progress-watchdog",
            Strategy::Devheal => "devheal",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Strategy::KubernetesDefault => {
                "no extra tooling: in-place container restarts, NCCL watchdog, a person steps in"
            }
            Strategy::NodeHealthController => {
                "node-level detection on a polling period, cordon + drain + reboot of the node"
            }
            Strategy::JobFailurePolicy => "JobSet/podFailurePolicy recreates the gang when a pod fails",
            Strategy::NvsentinelJobset => {
                "NVSentinel: Xid catalogue actions, partial drain + GPU reset or drain + reboot, 15 s poll; JobSet recreates the gang"
            }
            Strategy::ProgressWatchdog => {
                "nvidia-resiliency-ext in-job restart on a progress timeout, NVML-unhealthy nodes swapped for hot spares"
            }
            Strategy::Devheal => "devheal engine on the real detect path, over JobSet mechanics",
        }
    }
}

/// A repair, in increasing order of cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Repair {
    Reset,
    Reboot,
    Replace,
}

/// How the workloads are deployed under a strategy: mechanics the world carries out, not
/// decisions.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Mechanics {
    /// A gang restart recreates its pods (JobSet), so they are rescheduled away from devices the
    /// scheduler knows are bad; otherwise containers restart in place.
    pub recreates_pods: bool,
    /// Restarts happen inside the running pods (the launcher respawns the ranks), so a restart
    /// costs no pod scheduling and start.
    pub in_job_restart: bool,
    /// Device resets are carried out by devheal's node agent, under its limit: at most
    /// [`AGENT_RESETS_PER_DAY`] resets of one device in 24 h, beyond which it refuses
    /// (docs/agent.md, "Device resets"). Every strategy's resets wait for an idle device.
    pub agent_resets: bool,
}

/// The node agent's limit on resets of one device within 24 h (`--device-reset-limit`).
pub(crate) const AGENT_RESETS_PER_DAY: usize = 3;

/// What happened in the world that a strategy may observe. A strategy reads only what the
/// signal carries and what a real tool could see of it (a fault's kernel lines, NVML signal,
/// crash message and whether the node stops; never its persistence or the ground truth of
/// whether hardware is broken).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Signal {
    /// A fault struck (`device` is the GPU it names, if any): it prints its class's kernel
    /// lines (`lines`: the mask of those that reach the log readers now; lost ones never do,
    /// late ones come as [`Signal::KernelLines`]), NVML shows its class's signal, and a
    /// `node_down` fault stops the node.
    Fault { class: u16, node: u32, device: Option<u8>, pid: u32, lines: u8 },
    /// Kernel lines reach the log readers with nothing else: a harmless event's (noise), or a
    /// fault's lines that arrive late. `lines` is the mask of the source's lines.
    KernelLines { source: LineSource, node: u32, device: Option<u8>, pid: u32, lines: u8 },
    /// A straggler episode began on the node (or a new one replaced the last).
    StragglerStarted { node: u32 },
    /// The node's latest straggler episode ended.
    StragglerEnded { node: u32 },
    /// A running gang failed because of `member` (its pods' status shows it after the
    /// Kubernetes delays the strategy applies).
    GangFailed { gang: u16, member: u32, manifestation: Manifestation, class: u16 },
    /// A gang member's pod was recreated on another node.
    MemberMoved { gang: u16, member: u32 },
    /// A restarted gang runs again.
    GangRunning { gang: u16 },
    /// A gang completed a checkpoint and computes again.
    CheckpointDone { gang: u16 },
    /// An inference replica failed where it runs.
    ReplicaFailed { service: u16, replica: u32, manifestation: Manifestation },
    /// An inference replica's pod was deleted and (maybe) recreated; `old_generation` names the
    /// deleted pod.
    ReplicaMoved { service: u16, replica: u32, old_generation: u32 },
    /// A node came back from a repair.
    NodeRepaired { node: u32 },
    /// A device reset finished.
    DeviceRepaired { node: u32, device: u8 },
}

/// Whose kernel lines a [`Signal::KernelLines`] carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LineSource {
    /// A fault class's lines (arriving late).
    Fault(u16),
    /// A noise kind's lines, or its recovery lines.
    Noise { kind: u16, recovery: bool },
}

/// The lines of a source, all of them.
pub(crate) fn source_lines(scenario: &Scenario, source: LineSource) -> &[String] {
    match source {
        LineSource::Fault(class) => &scenario.faults[class as usize].kernel_lines,
        LineSource::Noise { kind, recovery } => match &scenario.noise {
            Some(n) => {
                let k = &n.kinds[kind as usize];
                if recovery { &k.recovery_lines } else { &k.kernel_lines }
            }
            None => &[],
        },
    }
}

/// The lines of `lines` whose bit is set in `mask`.
pub(crate) fn arriving(lines: &[String], mask: u8) -> impl Iterator<Item = &String> {
    lines.iter().enumerate().filter(move |(i, _)| *i < 8 && mask & (1 << i) != 0).map(|(_, l)| l)
}

/// What a strategy asks the world to do. The world applies commands in order, right after the
/// call that returned them, and keeps every count and the accounting of healthy hardware taken
/// out of service.
#[derive(Debug)]
pub(crate) enum Command<T> {
    /// Call the strategy's [`Policy::timer`] with `timer` after `delay`.
    After {
        delay: Duration,
        timer: T,
    },
    /// Evict a gang member's pod (it must be recreated elsewhere).
    EvictGangMember {
        gang: u16,
        member: u32,
    },
    /// Evict an inference replica's pod (its ReplicaSet recreates it on a free slot).
    EvictReplica {
        service: u16,
        replica: u32,
    },
    /// Restart the gang now, unless it is already restarting or waiting for capacity. With
    /// `in_place`, every member is told to restart in place: a restart in which no member has to
    /// move costs no scheduling and pod start.
    RestartGang {
        gang: u16,
        in_place: bool,
    },
    /// The same, placing these members on other nodes (hot spares) first.
    RestartGangWithout {
        gang: u16,
        members: Vec<u32>,
    },
    /// Fail the workload: it waits for a person.
    FailGang {
        gang: u16,
    },
    /// Move these members elsewhere and restart the gang from the checkpoint it just took.
    ReplaceMembers {
        gang: u16,
        members: Vec<u32>,
    },
    QuarantineDevice {
        node: u32,
        device: u8,
    },
    ReleaseDevice {
        node: u32,
        device: u8,
    },
    Cordon {
        node: u32,
    },
    Uncordon {
        node: u32,
    },
    ResetDevice {
        node: u32,
        device: u8,
    },
    /// Send the node for a repair of this kind.
    Repair {
        node: u32,
        kind: Repair,
    },
    /// Evict every pod on the node.
    Drain {
        node: u32,
    },
    /// Evict only the pods that use this device (a partial drain).
    EvictDevicePods {
        node: u32,
        device: u8,
    },
    /// Ask a person to look at the node (they come after `operator.response_min`).
    Ticket {
        node: u32,
    },
    /// Node-level remediation: cordon, drain every pod, send the node for a repair of this kind.
    DrainAndRepair {
        node: u32,
        kind: Repair,
    },
    /// A degradation detector concluded about a gang member (or, for a hang, the gang): changes
    /// nothing; the world scores it against what really happened.
    Finding {
        detector: Detector,
        gang: u16,
        member: u32,
    },
}

/// devheal's degradation detectors, as the world scores them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Detector {
    Straggler = 0,
    BaselineShift = 1,
    Hang = 2,
}

/// Where a gang is in its life, as a controller watching its pods and progress would tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GangPhase {
    Computing,
    Checkpointing,
    Hung,
    Restarting,
    WaitingCapacity,
}

/// A node as the API server and the agent would show it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NodeView {
    pub up: bool,
    pub in_repair: bool,
    pub cordoned: bool,
    pub boot: u32,
    /// The straggler slow-down of the node's work (1.0 when none).
    pub slowdown: f64,
    /// The gang member whose pod runs on the node.
    pub gang_member: Option<(u16, u32)>,
}

/// A gang as its pods show it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GangView<'w> {
    pub name: &'w str,
    pub namespace: &'w str,
    /// The node of each member.
    pub members: &'w [u32],
    /// The pod generation of each member (a recreated pod has a new uid).
    pub pod_generation: &'w [u32],
    /// JobSet's restart attempt.
    pub attempt: u64,
    pub phase: GangPhase,
    /// The pace the slowest member sets (1.0 when none is slow).
    pub pace: f64,
}

/// An inference replica's pod.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ReplicaView<'w> {
    pub service: &'w str,
    pub namespace: &'w str,
    pub gpus: u32,
    pub node: Option<u32>,
    pub first_device: u8,
    pub generation: u32,
}

/// What a strategy may read of the world.
pub(crate) trait View {
    fn now(&self) -> Time;
    fn node(&self, node: u32) -> NodeView;
    fn gangs(&self) -> usize;
    fn gang(&self, gang: u16) -> GangView<'_>;
    /// Failure-free seconds of work the gang has done in all (what its step counter shows),
    /// or `None` while it is stalled (hung, restarting, waiting): then it reports nothing.
    fn gang_work_s(&self, gang: u16) -> Option<f64>;
    fn services(&self) -> usize;
    fn replicas(&self, service: u16) -> usize;
    fn replica(&self, service: u16, replica: u32) -> ReplicaView<'_>;
    /// Whether a device carries an active fault. Only for what a tool could read off the device
    /// itself (a faulted device keeps its fault's health, not a straggler's Degraded).
    fn device_faulty(&self, node: u32, device: u8) -> bool;
    /// Whether NVML shows the device unhealthy or needing a recovery action (what the device
    /// plugin's health check and NVML-based node checks read).
    fn device_needs_recovery(&self, node: u32, device: u8) -> bool;
}

/// The commands one call returns.
pub(crate) type Commands<T> = Vec<Command<T>>;

/// One strategy, as the world drives it.
pub(crate) trait Policy {
    /// What the strategy wakes itself with ([`Command::After`]).
    type Timer: std::fmt::Debug;

    fn strategy(&self) -> Strategy;

    fn mechanics(&self) -> Mechanics;

    /// The run starts (every workload is running).
    fn start(&mut self, _view: &dyn View, _out: &mut Commands<Self::Timer>) {}

    fn signal(&mut self, signal: Signal, view: &dyn View, out: &mut Commands<Self::Timer>);

    fn timer(&mut self, _timer: Self::Timer, _view: &dyn View, _out: &mut Commands<Self::Timer>) {}

    /// Add the strategy's own counts (engine inputs, actions …) to the report's.
    fn counts(&self, _counts: &mut Counts) {}
}

/// The next time the check of `node` runs after `now`, for a check every `period` on a phase of
/// its own per node.
pub(crate) fn next_poll(node: u32, period: Duration, now: Time) -> Time {
    let poll = period.0.max(1);
    let phase = (i64::from(node) * 7_919_000_000) % poll;
    Time(((now.0 - phase).div_euclid(poll) + 1) * poll + phase)
}
