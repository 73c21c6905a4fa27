//! Scenario files: the cluster, its workloads, the fault model and each strategy's parameters,
//! read from YAML and checked before a run. Bundled scenarios are compiled into the binary.
//!
//! Every duration field says its unit in its name (`_s`, `_min`, `_h`, `_days`); every rate is
//! per GPU-hour unless its name says otherwise.

use serde::{Deserialize, Serialize};

use devheal_core::Duration;

/// The scenario `devheal sim` runs when given no `--scenario`.
pub const DEFAULT_SCENARIO: &str = "llama3-16k";

/// Scenarios compiled into the binary: (name, YAML text).
pub const BUNDLED: &[(&str, &str)] = &[
    ("llama3-16k", include_str!("../scenarios/llama3-16k.yaml")),
    ("fleet-100k-365d", include_str!("../scenarios/fleet-100k-365d.yaml")),
];

/// Why a scenario could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("scenario {source_name}: {message}")]
    Yaml { source_name: String, message: String },
    #[error("scenario {source_name}: field `{field}`: {problem}")]
    Invalid { source_name: String, field: String, problem: String },
    #[error("no bundled scenario named `{0}` (see `devheal sim --list`)")]
    UnknownBundled(String),
}

/// A whole scenario.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    pub duration_days: f64,
    pub cluster: ClusterSpec,
    #[serde(default)]
    pub training: Vec<TrainingSpec>,
    #[serde(default)]
    pub inference: Vec<InferenceSpec>,
    pub kubernetes: KubernetesSpec,
    pub operator: OperatorSpec,
    pub repair: RepairSpec,
    pub strategies: StrategiesSpec,
    pub faults: Vec<FaultClassSpec>,
    #[serde(default)]
    pub planned_maintenance: Option<PlannedMaintenanceSpec>,
    #[serde(default)]
    pub stragglers: Option<StragglerSpec>,
    /// Harmless kernel events, lost and late lines, blind log sources (absent: none).
    #[serde(default)]
    pub noise: Option<crate::noise::NoiseSpec>,
    /// The step times the degradation detectors read (absent: the defaults).
    #[serde(default)]
    pub step_times: crate::noise::StepTimesSpec,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    pub gpus_per_node: u32,
    pub nodes_per_rack: u32,
    /// Spare nodes in the training pool, beyond the nodes the gangs need.
    pub training_spare_nodes: u32,
    /// Nodes in the inference pool (services are packed onto them; the rest are free capacity).
    pub inference_nodes: u32,
    /// Share of nodes that are "lemons" (fault-model.md §2: about 1–2 % of nodes).
    #[serde(default)]
    pub lemon_node_fraction: f64,
    /// How many times more often a lemon node faults than an ordinary one.
    #[serde(default = "one")]
    pub lemon_rate_multiplier: f64,
    /// GPUs are DRA devices (a `DeviceTaintRule` keeps one device from the scheduler). Without
    /// DRA (the default: GPUs from a device plugin) a quarantined device taints its node, which
    /// then takes no new pods on any of its GPUs (docs/actuator.md, "quarantine a device").
    #[serde(default)]
    pub dra: bool,
}

fn one() -> f64 {
    1.0
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingSpec {
    pub name: String,
    pub namespace: String,
    /// Pods in the gang; each takes a whole node.
    pub nodes: u32,
    pub checkpoint_interval_min: f64,
    pub checkpoint_blocking_s: f64,
    /// Nominal time of one training step (for progress reports).
    pub step_time_s: f64,
    pub nccl_watchdog_s: f64,
    pub restart: RestartCostSpec,
    /// The gang's pods restart in place on exit 76 (a container restart rule, KEP-5307/5532:
    /// docs/policy.md, "Restarting a gang in place"): a devheal restart in which every member
    /// stays on its node costs no scheduling and pod start (`scheduling_and_pod_start_s`).
    #[serde(default)]
    pub restart_rules: bool,
}

/// The parts of a gang restart, summed into its restart cost R.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartCostSpec {
    pub scheduling_and_pod_start_s: f64,
    pub framework_init_s: f64,
    pub nccl_init_s: f64,
    pub checkpoint_load_s: f64,
}

impl RestartCostSpec {
    pub fn total(&self) -> Duration {
        secs(
            self.scheduling_and_pod_start_s
                + self.framework_init_s
                + self.nccl_init_s
                + self.checkpoint_load_s,
        )
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InferenceSpec {
    pub name: String,
    pub namespace: String,
    pub replicas: u32,
    pub gpus_per_replica: u32,
    /// Replicas that must be up for the service to count as available.
    pub needed_replicas: u32,
    /// Scheduling, image pull and model load of a new replica.
    pub start_s: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesSpec {
    pub node_monitor_grace_s: f64,
    pub not_ready_toleration_s: f64,
    pub termination_grace_s: f64,
    /// Time for the kubelet to see a crashed container and the API to show the pod failed.
    pub pod_failure_report_s: f64,
    /// Liveness probe: period × failure threshold.
    pub liveness_detect_s: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorSpec {
    /// How long after a workload stops making progress a person steps in.
    pub response_min: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepairSpec {
    pub reset_device_min: f64,
    pub reboot_node_min: f64,
    pub replace_hardware_h: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StrategiesSpec {
    pub node_health_controller: NodeHealthControllerSpec,
    #[serde(default)]
    pub nvsentinel_jobset: NvsentinelJobsetSpec,
    #[serde(default)]
    pub progress_watchdog: ProgressWatchdogSpec,
    pub devheal: DevhealSpec,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeHealthControllerSpec {
    pub poll_interval_s: f64,
}

/// NVSentinel (its Xid catalogue, partial drain and GPU reset) with JobSet recreating the gang.
/// Defaults are NVSentinel's documented values (docs/simulator.md lists the sources).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NvsentinelJobsetSpec {
    /// syslog-health-monitor reads journald every this often (the Helm chart's
    /// `--polling-interval 15s`); gpu-health-monitor's DCGM health check runs as often
    /// (`PollIntervalSeconds = 15`).
    pub poll_interval_s: f64,
    /// Health event → node cordoned by fault-quarantine (measured in NVSentinel PR #714: 1.8 s).
    pub quarantine_s: f64,
    /// Health event → pods evicted by node-drainer (measured in NVSentinel PR #714: about 70 s).
    pub eviction_s: f64,
}

impl Default for NvsentinelJobsetSpec {
    fn default() -> Self {
        NvsentinelJobsetSpec { poll_interval_s: 15.0, quarantine_s: 1.8, eviction_s: 70.0 }
    }
}

/// In-job restart on a progress timeout, as nvidia-resiliency-ext's `ft_launcher` does.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProgressWatchdogSpec {
    /// A rank that makes no progress for this long is declared hung and the job restarted in
    /// place (NVRx docs: Megatron's section timeouts `step:120`).
    pub progress_timeout_s: f64,
    /// A rank process that exits is seen by its launcher within this (NVRx `--monitor-interval`
    /// default 0.3 s), and the job restarted in place.
    pub exit_detect_s: f64,
    /// The launcher stops restarting after this many restarts in a row that made no progress
    /// (NVRx `max_no_progress_restarts` default 3) …
    pub max_no_progress_restarts: u32,
    /// … where a restart made progress if it ran at least this many steps (NVRx
    /// `min_progress_iterations` default 200).
    pub min_progress_iterations: f64,
}

impl Default for ProgressWatchdogSpec {
    fn default() -> Self {
        ProgressWatchdogSpec {
            progress_timeout_s: 120.0,
            exit_detect_s: 0.3,
            max_no_progress_restarts: 3,
            min_progress_iterations: 200.0,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevhealSpec {
    /// Kernel line written → parsed event on the node (the detect benchmark's p99).
    pub kernel_log_detect_ms: f64,
    /// Agent → NodeDeviceHealth → controller watch (an assumption until measured).
    pub publish_s: f64,
    /// NVML polling/event latency for signals only NVML sees (thermal, clocks).
    pub nvml_detect_s: f64,
    /// Tick cadence while the engine has recent input, and the idle heartbeat.
    pub tick_active_s: f64,
    pub tick_idle_s: f64,
    /// How often rank 0 reports progress.
    pub progress_interval_s: f64,
    /// After a gang restart, does the controller's pod watch show the engine every member
    /// Running in the new attempt (what JobSet does), or only rank 0 and the members that moved?
    /// With `false` the engine closes the restart when rank 0, seen re-created, reports progress;
    /// it is a simplification for fleet-scale runs (one 20,480-GPU gang restart is 2,560 pod
    /// updates), documented in docs/simulator.md. Default `true`.
    #[serde(default = "yes")]
    pub resend_restarted_members: bool,
    /// Degradation detection: devheal's gang straggler detector (`devheal_detect`) judges the
    /// members' simulated step-time windows; a finding marks the member's devices Degraded, as
    /// the controller does (docs/simulator.md, "Step times and the detectors").
    #[serde(default = "yes")]
    pub detect_stragglers: bool,
    /// Also run devheal with straggler detection off on the same trace, and report the
    /// difference (doubles devheal's run time; the fleet scenario turns it off).
    #[serde(default = "yes")]
    pub compare_without_straggler_detection: bool,
}

fn yes() -> bool {
    true
}

/// Which part of the cluster a fault strikes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultScope {
    /// One GPU.
    Device,
    /// A whole node (host components, NIC, maintenance).
    Node,
    /// The software running on one GPU's worth of a workload (bugs, SDC, unknown hangs): only
    /// busy GPUs fault.
    Workload,
}

/// How the workload experiences the fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Manifestation {
    /// The process on the device exits with an error within a second.
    Crash,
    /// The process stalls; peers block in a collective until the NCCL watchdog.
    Hang,
    /// The node stops (kubelet gone): NotReady after the grace period, pods evicted after the
    /// toleration.
    NodeDown,
    /// The node is drained gracefully (provider or operator maintenance).
    Evicted,
}

/// What it takes for the fault to go away.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Persistence {
    /// Gone once the process restarts.
    Transient,
    UntilReset,
    UntilReboot,
    UntilReplace,
}

/// What NVML (and DCGM) show for the fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NvmlSignal {
    None,
    Degraded,
    Unhealthy,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultClassSpec {
    pub name: String,
    /// Where the rate comes from.
    pub source: String,
    pub rate_per_gpu_hour: f64,
    pub scope: FaultScope,
    pub manifestation: Manifestation,
    pub persistence: Persistence,
    /// Whether the NVIDIA device plugin's health check marks the device Unhealthy.
    #[serde(default)]
    pub device_plugin_detects: bool,
    #[serde(default = "no_nvml")]
    pub nvml: NvmlSignal,
    /// Kernel log lines the fault prints; `{pci}` is the GPU's bus id as Xid lines print it
    /// (`0000:3b:00`), `{bdf}` the full address (`0000:3b:00.0`), `{nic}` the NIC's address,
    /// `{pid}` a process id.
    #[serde(default)]
    pub kernel_lines: Vec<String>,
    /// Probability that a node-scoped fault takes down the whole rack at once (a ToR switch).
    #[serde(default)]
    pub rack_burst_probability: f64,
    /// Whether lemon nodes see this class more often.
    #[serde(default)]
    pub lemon_prone: bool,
    /// The message a crashing process leaves in its container status.
    #[serde(default)]
    pub crash_message: Option<String>,
}

fn no_nvml() -> NvmlSignal {
    NvmlSignal::None
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlannedMaintenanceSpec {
    pub source: String,
    /// Per GPU-hour of each training gang.
    pub rate_per_gpu_hour: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StragglerSpec {
    pub source: String,
    pub episodes_per_node_hour: f64,
    pub median_duration_min: f64,
    pub duration_sigma: f64,
    /// Median step-time multiplier while a member is slow (1.1 = 10 % slower) …
    pub slowdown: f64,
    /// … and the sigma of the log-normal spread of the excess (`slowdown` − 1) around it
    /// (0: every episode exactly `slowdown`).
    #[serde(default)]
    pub slowdown_sigma: f64,
}

/// The shortest duration `validate` accepts for anything that schedules a repeating event.
pub const MIN_INTERVAL_S: f64 = 0.001;

/// Seconds (as written in a scenario) to integer nanoseconds.
pub fn secs(s: f64) -> Duration {
    Duration((s * 1e9).round() as i64)
}

impl Scenario {
    /// Parse and check a scenario; `source_name` (a file name or `bundled:NAME`) is used in errors.
    pub fn from_yaml(text: &str, source_name: &str) -> Result<Scenario, ScenarioError> {
        let scenario: Scenario = serde_saphyr::from_str(text).map_err(|e| ScenarioError::Yaml {
            source_name: source_name.to_string(),
            message: e.to_string(),
        })?;
        scenario.validate(source_name)?;
        Ok(scenario)
    }

    /// A bundled scenario by name.
    pub fn bundled(name: &str) -> Result<Scenario, ScenarioError> {
        let (_, text) = BUNDLED
            .iter()
            .find(|(n, _)| *n == name)
            .ok_or_else(|| ScenarioError::UnknownBundled(name.to_string()))?;
        Scenario::from_yaml(text, &format!("bundled:{name}"))
    }

    pub fn duration(&self) -> Duration {
        secs(self.duration_days * 86_400.0)
    }

    /// Every node of the cluster. `validate` refuses more than 1,000,000, so on a checked scenario
    /// the saturating sums here are exact.
    pub fn total_nodes(&self) -> u32 {
        self.training_nodes().saturating_add(self.cluster.inference_nodes)
    }

    pub fn training_nodes(&self) -> u32 {
        self.training.iter().fold(self.cluster.training_spare_nodes, |sum, t| sum.saturating_add(t.nodes))
    }

    /// The node count in 64 bits with every sum checked, naming the first field whose addition
    /// overflows.
    fn node_count(&self) -> Result<u64, String> {
        let mut sum = u64::from(self.cluster.training_spare_nodes);
        for (i, t) in self.training.iter().enumerate() {
            sum = sum.checked_add(u64::from(t.nodes)).ok_or_else(|| format!("training[{i}].nodes"))?;
        }
        sum.checked_add(u64::from(self.cluster.inference_nodes))
            .ok_or_else(|| "cluster.inference_nodes".to_string())
    }

    /// Check every value a run relies on, naming the field that is wrong.
    pub fn validate(&self, source_name: &str) -> Result<(), ScenarioError> {
        let bad = |field: String, problem: &str| ScenarioError::Invalid {
            source_name: source_name.to_string(),
            field,
            problem: problem.to_string(),
        };
        let positive = |field: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(bad(field.to_string(), "must be a number above 0"))
            }
        };
        // A duration that schedules a repeating event (a tick, a report, a checkpoint cycle, a
        // watchdog, a person's next look, a repair) must be at least 1 ms: one that rounds to 0 ns
        // would re-queue the event at the same instant forever.
        let interval_s = |field: &str, v: f64| {
            if v.is_finite() && v >= MIN_INTERVAL_S {
                Ok(())
            } else {
                Err(bad(field.to_string(), "must be a duration of at least 1 ms"))
            }
        };
        let non_negative = |field: &str, v: f64| {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err(bad(field.to_string(), "must be a number ≥ 0"))
            }
        };
        let probability = |field: &str, v: f64| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(bad(field.to_string(), "must be between 0 and 1"))
            }
        };
        positive("duration_days", self.duration_days)?;
        if self.duration_days > 3660.0 {
            return Err(bad("duration_days".into(), "must be at most 3660 (ten years)"));
        }
        let c = &self.cluster;
        if !(1..=64).contains(&c.gpus_per_node) {
            return Err(bad("cluster.gpus_per_node".into(), "must be between 1 and 64"));
        }
        if c.nodes_per_rack == 0 {
            return Err(bad("cluster.nodes_per_rack".into(), "must be at least 1"));
        }
        probability("cluster.lemon_node_fraction", c.lemon_node_fraction)?;
        if !(c.lemon_rate_multiplier.is_finite() && c.lemon_rate_multiplier >= 1.0) {
            return Err(bad("cluster.lemon_rate_multiplier".into(), "must be a number ≥ 1"));
        }
        let nodes = self.node_count().map_err(|field| bad(field, "the node count overflows"))?;
        if nodes == 0 {
            return Err(bad("cluster".into(), "the cluster has no nodes"));
        }
        if nodes > 1_000_000 {
            return Err(bad("cluster".into(), "more than 1,000,000 nodes"));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, t) in self.training.iter().enumerate() {
            let f = |name: &str| format!("training[{i}].{name}");
            if t.name.is_empty() || !names.insert(t.name.clone()) {
                return Err(bad(f("name"), "must be non-empty and unique"));
            }
            if t.nodes == 0 {
                return Err(bad(f("nodes"), "must be at least 1"));
            }
            interval_s(&f("checkpoint_interval_min"), t.checkpoint_interval_min * 60.0)?;
            non_negative(&f("checkpoint_blocking_s"), t.checkpoint_blocking_s)?;
            positive(&f("step_time_s"), t.step_time_s)?;
            interval_s(&f("nccl_watchdog_s"), t.nccl_watchdog_s)?;
            non_negative(&f("restart.scheduling_and_pod_start_s"), t.restart.scheduling_and_pod_start_s)?;
            non_negative(&f("restart.framework_init_s"), t.restart.framework_init_s)?;
            non_negative(&f("restart.nccl_init_s"), t.restart.nccl_init_s)?;
            non_negative(&f("restart.checkpoint_load_s"), t.restart.checkpoint_load_s)?;
            // A restart that lands on still-broken hardware is retried: it must take time.
            interval_s(&f("restart"), t.restart.total().0 as f64 / 1e9)?;
        }
        let inference_slots = u64::from(c.inference_nodes) * u64::from(c.gpus_per_node);
        let mut used_slots = 0u64;
        for (i, s) in self.inference.iter().enumerate() {
            let f = |name: &str| format!("inference[{i}].{name}");
            if s.name.is_empty() || !names.insert(s.name.clone()) {
                return Err(bad(f("name"), "must be non-empty and unique across training and inference"));
            }
            if s.gpus_per_replica == 0 || !c.gpus_per_node.is_multiple_of(s.gpus_per_replica) {
                return Err(bad(f("gpus_per_replica"), "must divide cluster.gpus_per_node"));
            }
            if s.replicas == 0 {
                return Err(bad(f("replicas"), "must be at least 1"));
            }
            if s.needed_replicas > s.replicas {
                return Err(bad(f("needed_replicas"), "must not exceed replicas"));
            }
            non_negative(&f("start_s"), s.start_s)?;
            used_slots += u64::from(s.replicas) * u64::from(s.gpus_per_replica);
        }
        if used_slots > inference_slots {
            return Err(bad(
                "cluster.inference_nodes".into(),
                "too few inference nodes for the replicas the services ask for",
            ));
        }
        let k = &self.kubernetes;
        non_negative("kubernetes.node_monitor_grace_s", k.node_monitor_grace_s)?;
        non_negative("kubernetes.not_ready_toleration_s", k.not_ready_toleration_s)?;
        non_negative("kubernetes.termination_grace_s", k.termination_grace_s)?;
        non_negative("kubernetes.pod_failure_report_s", k.pod_failure_report_s)?;
        non_negative("kubernetes.liveness_detect_s", k.liveness_detect_s)?;
        interval_s("operator.response_min", self.operator.response_min * 60.0)?;
        interval_s("repair.reset_device_min", self.repair.reset_device_min * 60.0)?;
        interval_s("repair.reboot_node_min", self.repair.reboot_node_min * 60.0)?;
        interval_s("repair.replace_hardware_h", self.repair.replace_hardware_h * 3600.0)?;
        interval_s(
            "strategies.node_health_controller.poll_interval_s",
            self.strategies.node_health_controller.poll_interval_s,
        )?;
        let n = &self.strategies.nvsentinel_jobset;
        interval_s("strategies.nvsentinel_jobset.poll_interval_s", n.poll_interval_s)?;
        non_negative("strategies.nvsentinel_jobset.quarantine_s", n.quarantine_s)?;
        non_negative("strategies.nvsentinel_jobset.eviction_s", n.eviction_s)?;
        let p = &self.strategies.progress_watchdog;
        interval_s("strategies.progress_watchdog.progress_timeout_s", p.progress_timeout_s)?;
        non_negative("strategies.progress_watchdog.exit_detect_s", p.exit_detect_s)?;
        non_negative("strategies.progress_watchdog.min_progress_iterations", p.min_progress_iterations)?;
        let d = &self.strategies.devheal;
        non_negative("strategies.devheal.kernel_log_detect_ms", d.kernel_log_detect_ms)?;
        non_negative("strategies.devheal.publish_s", d.publish_s)?;
        non_negative("strategies.devheal.nvml_detect_s", d.nvml_detect_s)?;
        interval_s("strategies.devheal.tick_active_s", d.tick_active_s)?;
        interval_s("strategies.devheal.tick_idle_s", d.tick_idle_s)?;
        interval_s("strategies.devheal.progress_interval_s", d.progress_interval_s)?;
        let mut fault_names = std::collections::BTreeSet::new();
        for (i, fc) in self.faults.iter().enumerate() {
            let f = |name: &str| format!("faults[{i}].{name}");
            if fc.name.is_empty() || !fault_names.insert(fc.name.clone()) {
                return Err(bad(f("name"), "must be non-empty and unique"));
            }
            non_negative(&f("rate_per_gpu_hour"), fc.rate_per_gpu_hour)?;
            if fc.rate_per_gpu_hour > 1.0 {
                return Err(bad(f("rate_per_gpu_hour"), "above one fault per GPU-hour; check the unit"));
            }
            probability(&f("rack_burst_probability"), fc.rack_burst_probability)?;
            if fc.rack_burst_probability > 0.0 && fc.scope != FaultScope::Node {
                return Err(bad(f("rack_burst_probability"), "only node-scoped faults can take down a rack"));
            }
            if fc.scope == FaultScope::Workload && fc.persistence != Persistence::Transient {
                return Err(bad(f("persistence"), "a workload-scoped fault must be transient"));
            }
            if fc.kernel_lines.len() > 8 {
                return Err(bad(f("kernel_lines"), "at most 8 lines"));
            }
            for (j, line) in fc.kernel_lines.iter().enumerate() {
                if line.trim().is_empty() {
                    return Err(bad(format!("faults[{i}].kernel_lines[{j}]"), "must not be empty"));
                }
            }
        }
        if let Some(p) = &self.planned_maintenance {
            non_negative("planned_maintenance.rate_per_gpu_hour", p.rate_per_gpu_hour)?;
        }
        if let Some(s) = &self.stragglers {
            non_negative("stragglers.episodes_per_node_hour", s.episodes_per_node_hour)?;
            positive("stragglers.median_duration_min", s.median_duration_min)?;
            non_negative("stragglers.duration_sigma", s.duration_sigma)?;
            if !(s.slowdown.is_finite() && (1.0..=10.0).contains(&s.slowdown)) {
                return Err(bad("stragglers.slowdown".into(), "must be a number between 1 and 10"));
            }
            if !(s.slowdown_sigma.is_finite() && (0.0..=3.0).contains(&s.slowdown_sigma)) {
                return Err(bad("stragglers.slowdown_sigma".into(), "must be a number between 0 and 3"));
            }
        }
        if let Some(n) = &self.noise {
            n.validate().map_err(|(field, problem)| bad(field, problem))?;
        }
        self.step_times.validate().map_err(|(field, problem)| bad(field, problem))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bundled_scenario_parses_and_validates() {
        for (name, _) in BUNDLED {
            let s = Scenario::bundled(name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(&s.name, name);
        }
    }

    #[test]
    fn a_yaml_syntax_error_names_the_source_and_position() {
        let err = Scenario::from_yaml("name: x\nduration_days: [1,\n", "broken.yaml").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("broken.yaml"), "{text}");
        assert!(text.contains("line") || text.contains(":2") || text.contains("2:"), "{text}");
    }

    #[test]
    fn an_unknown_field_is_named() {
        let base = BUNDLED[0].1;
        let text = base.replacen("duration_days:", "duration_dayz:", 1);
        let err = Scenario::from_yaml(&text, "typo.yaml").unwrap_err().to_string();
        assert!(err.contains("duration_dayz"), "{err}");
    }

    #[test]
    fn a_bad_value_names_the_field_path() {
        let base = BUNDLED[0].1;
        let text = base.replacen("gpus_per_replica: 8", "gpus_per_replica: 3", 1);
        let err = Scenario::from_yaml(&text, "bad.yaml").unwrap_err().to_string();
        assert!(err.contains("inference[0].gpus_per_replica"), "{err}");
        let text = base.replacen("response_min: 30", "response_min: -1", 1);
        let err = Scenario::from_yaml(&text, "bad.yaml").unwrap_err().to_string();
        assert!(err.contains("operator.response_min"), "{err}");
    }

    /// The noise and step-time keys are validated like the rest: a bad value names its path,
    /// an unknown key is named.
    #[test]
    fn bad_noise_and_step_time_keys_are_named() {
        let base = BUNDLED[0].1;
        for (from, to, field) in [
            ("lost_line_probability: 0.001", "lost_line_probability: 1.5", "noise.lost_line_probability"),
            ("late_median_s: 30", "late_median_s: 0", "noise.late_median_s"),
            ("blind_median_min: 30", "blind_median_min: -3", "noise.blind_median_min"),
            ("rate_per_gpu_hour: 1.43e-6", "rate_per_gpu_hour: -1", "noise.kinds[0].rate_per_gpu_hour"),
            ("recover_median_s: 5", "recover_median_s: 0", "noise.kinds[4].recover_median_s"),
            ("jitter_sigma: 0.03", "jitter_sigma: 2", "step_times.jitter_sigma"),
            (
                "bursts_per_member_hour: 0.05",
                "bursts_per_member_hour: -0.1",
                "step_times.bursts_per_member_hour",
            ),
            ("burst_median_s: 20", "burst_median_s: 0", "step_times.burst_median_s"),
            ("panel_members: 32", "panel_members: 2", "step_times.panel_members"),
            ("  lost_line_probability:", "  lost_lines_probability:", "lost_lines_probability"),
            ("  burst_sigma:", "  burst_sigmaa:", "burst_sigmaa"),
        ] {
            assert!(base.contains(from), "the bundled scenario has {from}");
            let text = base.replacen(from, to, 1);
            let err = Scenario::from_yaml(&text, "bad.yaml").unwrap_err().to_string();
            assert!(err.contains(field), "{to}: {err}");
        }
    }

    /// Durations that drive repeating events and round to nothing are refused by name, before a
    /// run could spin at one instant.
    #[test]
    fn a_repeating_duration_under_a_millisecond_is_refused() {
        let base = BUNDLED[0].1;
        for (from, to, field) in [
            ("tick_active_s: 5", "tick_active_s: 1.0e-12", "strategies.devheal.tick_active_s"),
            (
                "progress_interval_s: 30",
                "progress_interval_s: 0.0001",
                "strategies.devheal.progress_interval_s",
            ),
            (
                "checkpoint_interval_min: 30",
                "checkpoint_interval_min: 1.0e-9",
                "training[0].checkpoint_interval_min",
            ),
            ("nccl_watchdog_s: 600", "nccl_watchdog_s: 1.0e-12", "training[0].nccl_watchdog_s"),
            ("response_min: 30", "response_min: 1.0e-9", "operator.response_min"),
        ] {
            assert!(base.contains(from), "fixture lacks `{from}`");
            let text = base.replacen(from, to, 1);
            let err = Scenario::from_yaml(&text, "tiny.yaml").unwrap_err().to_string();
            assert!(err.contains(field) && err.contains("1 ms"), "{field}: {err}");
        }
        // Exactly 1 ms is accepted.
        let text = base.replacen("tick_active_s: 5", "tick_active_s: 0.001", 1);
        Scenario::from_yaml(&text, "ok.yaml").expect("1 ms is enough");
    }

    /// A restart that costs nothing would retry at the same instant while a member's hardware is
    /// still broken.
    #[test]
    fn a_zero_restart_cost_is_refused() {
        let mut s = Scenario::bundled(DEFAULT_SCENARIO).expect("bundled");
        let r = &mut s.training[0].restart;
        r.scheduling_and_pod_start_s = 0.0;
        r.framework_init_s = 0.0;
        r.nccl_init_s = 0.0;
        r.checkpoint_load_s = 1.0e-12;
        let err = s.validate("zero.yaml").unwrap_err().to_string();
        assert!(err.contains("training[0].restart"), "{err}");
    }

    /// Node counts that overflow 32 bits are an error naming the cluster, not a panic or a wrap.
    #[test]
    fn node_counts_that_overflow_u32_are_refused() {
        let mut s = Scenario::bundled(DEFAULT_SCENARIO).expect("bundled");
        s.training[0].nodes = u32::MAX;
        s.cluster.training_spare_nodes = u32::MAX;
        s.cluster.inference_nodes = 2;
        let err = s.validate("huge.yaml").unwrap_err().to_string();
        assert!(err.contains("`cluster`") && err.contains("1,000,000"), "{err}");
        // The accessors saturate rather than wrap to a small count.
        assert_eq!(s.total_nodes(), u32::MAX);
        s.training[0].nodes = 1_000_000;
        s.cluster.training_spare_nodes = 0;
        s.cluster.inference_nodes = 1;
        let err = s.validate("big.yaml").unwrap_err().to_string();
        assert!(err.contains("more than 1,000,000 nodes"), "{err}");
    }
}
