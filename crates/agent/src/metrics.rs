//! The agent's Prometheus metrics (`/metrics`), all prefixed `devheal_agent_`.
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `devheal_agent_devices` | gauge | `health` | devices by their current health |
//! | `devheal_agent_source_available` | gauge | `source` | 1 while a source sees what it watches |
//! | `devheal_agent_kmsg_lines_total` | counter | | kernel-log records read |
//! | `devheal_agent_kmsg_faults_total` | counter | | records that are device faults |
//! | `devheal_agent_kmsg_lost_total` | counter | | records overwritten before they were read |
//! | `devheal_agent_kmsg_unmapped_faults_total` | counter | | device faults on no known device |
//! | `devheal_agent_nic_link_changes_total` | counter | `state` | NIC link changes (`up`, `down`) on this node's followed NICs |
//! | `devheal_agent_nic_link_flaps_total` | counter | | NIC links back up within the flap window (recorded, no action) |
//! | `devheal_agent_nic_links_at_fault` | gauge | | NIC links at fault now (down too long, or flapping too often) |
//! | `devheal_agent_nic_lines_not_followed_total` | counter | | NIC link lines naming no followed NIC of this node |
//! | `devheal_agent_pod_resources_calls_total` | counter | | calls to the kubelet's PodResources API |
//! | `devheal_agent_publishes_total` | counter | `kind` | successful writes (`status`, `condition`, `event`) |
//! | `devheal_agent_publish_failures_total` | counter | `kind` | failed writes |
//! | `devheal_agent_last_publish_timestamp_seconds` | gauge | | Unix time of the last status write |
//! | `devheal_agent_progress_reports_total` | counter | `code` | `POST /v1/progress` answers by HTTP status |
//! | `devheal_agent_progress_steps_total` | counter | `result` | reported steps `accepted` or `rejected` |
//! | `devheal_agent_progress_scrapes_total` | counter | `result` | progress-metric reads `ok` or `failed` |
//! | `devheal_agent_progress_pods` | gauge | | pods whose progress the agent follows |
//! | `devheal_agent_device_health` | gauge | `UUID`, `resource`, `pci_bus_id`, `namespace`, `pod`, `container` | each device's health (0 Healthy, 1 Degraded, 2 Unhealthy, 3 Unknown), one series per pod bound to it (empty pod labels when none); `UUID` and the pod labels are the DCGM exporter's, so dashboards can join the two |

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HealthLabel {
    pub health: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    pub phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

/// One device, and one pod bound to it, as the DCGM exporter labels them.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
#[allow(non_snake_case)]
pub struct DeviceLabels {
    /// The device's id (for NVIDIA, the GPU UUID).
    pub UUID: String,
    pub resource: String,
    pub pci_bus_id: String,
    pub namespace: String,
    pub pod: String,
    pub container: String,
}

/// The most series `devheal_agent_device_health` holds (devices × their pods); beyond it, a
/// device's further pods are not exported.
pub const MAX_DEVICE_SERIES: usize = 4096;

/// Every metric the agent exports, and the registry that renders them.
pub struct AgentMetrics {
    registry: Registry,
    pub devices: Family<HealthLabel, Gauge>,
    pub source_available: Family<SourceLabel, Gauge>,
    pub kmsg_lines: Counter,
    pub kmsg_faults: Counter,
    pub kmsg_lost: Counter,
    pub kmsg_unmapped: Counter,
    pub nic_link_changes: Family<StateLabel, Counter>,
    /// Reset requests answered, by the phase reached (`docs/agent.md`, "Device resets").
    pub device_resets: Family<PhaseLabel, Counter>,
    pub nic_link_flaps: Counter,
    pub nic_links_at_fault: Gauge,
    pub nic_lines_not_followed: Counter,
    pub pod_resources_calls: Counter,
    pub publishes: Family<KindLabel, Counter>,
    pub publish_failures: Family<KindLabel, Counter>,
    pub last_publish: Gauge<f64, AtomicU64>,
    pub progress_reports: Family<CodeLabel, Counter>,
    pub progress_steps: Family<ResultLabel, Counter>,
    pub progress_scrapes: Family<ResultLabel, Counter>,
    pub progress_pods: Gauge,
    pub device_health: Family<DeviceLabels, Gauge>,
    /// Unix seconds of the event loop's last turn, for `/healthz` (not exported).
    pub loop_alive_unix_s: AtomicI64,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl AgentMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("devheal_agent");
        let devices = Family::<HealthLabel, Gauge>::default();
        registry.register("devices", "Devices on this node by their current health", devices.clone());
        let source_available = Family::<SourceLabel, Gauge>::default();
        registry.register(
            "source_available",
            "1 while a source (kernel log, NVML, a device plugin, PodResources) sees what it watches",
            source_available.clone(),
        );
        let kmsg_lines = Counter::default();
        registry.register("kmsg_lines", "Kernel-log records read", kmsg_lines.clone());
        let kmsg_faults = Counter::default();
        registry.register("kmsg_faults", "Kernel-log records that are device faults", kmsg_faults.clone());
        let kmsg_lost = Counter::default();
        registry.register(
            "kmsg_lost",
            "Kernel-log records overwritten before they were read",
            kmsg_lost.clone(),
        );
        let kmsg_unmapped = Counter::default();
        registry.register(
            "kmsg_unmapped_faults",
            "Device faults in the kernel log on no device this node knows",
            kmsg_unmapped.clone(),
        );
        let device_resets = Family::<PhaseLabel, Counter>::default();
        registry.register(
            "device_resets",
            "Steps of the device resets the controller requested, by phase (Pending: taken; Succeeded, Failed, Refused, WouldReset: answered)",
            device_resets.clone(),
        );
        let nic_link_changes = Family::<StateLabel, Counter>::default();
        registry.register(
            "nic_link_changes",
            "NIC link changes (up, down) on the NICs of this node the agent follows",
            nic_link_changes.clone(),
        );
        let nic_link_flaps = Counter::default();
        registry.register(
            "nic_link_flaps",
            "NIC links that came back up within the flap window (recorded, no action)",
            nic_link_flaps.clone(),
        );
        let nic_links_at_fault = Gauge::default();
        registry.register(
            "nic_links_at_fault",
            "NIC links at fault now (down for longer than a flap, or flapping too often)",
            nic_links_at_fault.clone(),
        );
        let nic_lines_not_followed = Counter::default();
        registry.register(
            "nic_lines_not_followed",
            "NIC link lines in the kernel log that name no followed NIC of this node",
            nic_lines_not_followed.clone(),
        );
        let pod_resources_calls = Counter::default();
        registry.register(
            "pod_resources_calls",
            "Calls to the kubelet's PodResources API",
            pod_resources_calls.clone(),
        );
        let publishes = Family::<KindLabel, Counter>::default();
        registry.register(
            "publishes",
            "Successful writes to the API server by kind (status, condition, event)",
            publishes.clone(),
        );
        let publish_failures = Family::<KindLabel, Counter>::default();
        registry.register(
            "publish_failures",
            "Failed writes to the API server by kind",
            publish_failures.clone(),
        );
        let last_publish = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "last_publish_timestamp_seconds",
            "Unix time of the last NodeDeviceHealth status write",
            last_publish.clone(),
        );
        let progress_reports = Family::<CodeLabel, Counter>::default();
        registry.register(
            "progress_reports",
            "POST /v1/progress requests by the HTTP status of the answer",
            progress_reports.clone(),
        );
        let progress_steps = Family::<ResultLabel, Counter>::default();
        registry.register(
            "progress_steps",
            "Steps reported to POST /v1/progress, accepted or rejected",
            progress_steps.clone(),
        );
        let progress_scrapes = Family::<ResultLabel, Counter>::default();
        registry.register(
            "progress_scrapes",
            "Reads of pods' progress metrics (devheal.io/progress-metric), ok or failed",
            progress_scrapes.clone(),
        );
        let progress_pods = Gauge::default();
        registry.register("progress_pods", "Pods whose progress the agent follows", progress_pods.clone());
        let device_health = Family::<DeviceLabels, Gauge>::default();
        registry.register(
            "device_health",
            "Each device's health (0 Healthy, 1 Degraded, 2 Unhealthy, 3 Unknown), one series per pod bound to it",
            device_health.clone(),
        );
        AgentMetrics {
            registry,
            devices,
            source_available,
            kmsg_lines,
            kmsg_faults,
            kmsg_lost,
            kmsg_unmapped,
            nic_link_changes,
            device_resets,
            nic_link_flaps,
            nic_links_at_fault,
            nic_lines_not_followed,
            pod_resources_calls,
            publishes,
            publish_failures,
            last_publish,
            progress_reports,
            progress_steps,
            progress_scrapes,
            progress_pods,
            device_health,
            loop_alive_unix_s: AtomicI64::new(0),
        }
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn published(&self, kind: &str, ok: bool) {
        let label = KindLabel { kind: kind.to_string() };
        if ok {
            self.publishes.get_or_create(&label).inc();
        } else {
            self.publish_failures.get_or_create(&label).inc();
        }
    }

    pub fn progress_report(&self, code: u16) {
        self.progress_reports.get_or_create(&CodeLabel { code: code.to_string() }).inc();
    }

    pub fn progress_steps(&self, accepted: usize, rejected: usize) {
        for (result, n) in [("accepted", accepted), ("rejected", rejected)] {
            self.progress_steps.get_or_create(&ResultLabel { result: result.into() }).inc_by(n as u64);
        }
    }

    pub fn scraped(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.progress_scrapes.get_or_create(&ResultLabel { result: result.into() }).inc();
    }

    pub fn mark_loop_alive(&self, unix_s: i64) {
        self.loop_alive_unix_s.store(unix_s, Ordering::Relaxed);
    }

    pub fn loop_alive(&self) -> i64 {
        self.loop_alive_unix_s.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_with_the_prefix() {
        let m = AgentMetrics::new();
        m.devices.get_or_create(&HealthLabel { health: "Unhealthy".into() }).set(2);
        m.kmsg_lines.inc_by(5);
        m.published("status", true);
        m.published("event", false);
        m.progress_report(202);
        m.progress_steps(3, 1);
        m.scraped(false);
        m.progress_pods.set(2);
        let text = m.render();
        assert!(text.contains("devheal_agent_devices{health=\"Unhealthy\"} 2"), "{text}");
        assert!(text.contains("devheal_agent_kmsg_lines_total 5"), "{text}");
        assert!(text.contains("devheal_agent_publishes_total{kind=\"status\"} 1"), "{text}");
        assert!(text.contains("devheal_agent_publish_failures_total{kind=\"event\"} 1"), "{text}");
        assert!(text.contains("devheal_agent_progress_reports_total{code=\"202\"} 1"), "{text}");
        assert!(text.contains("devheal_agent_progress_steps_total{result=\"rejected\"} 1"), "{text}");
        assert!(text.contains("devheal_agent_progress_scrapes_total{result=\"failed\"} 1"), "{text}");
        assert!(text.contains("devheal_agent_progress_pods 2"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
