//! devheal's custom resources, group `devheal.io`, version `v1alpha1`, as kube derive types.
//!
//! - `NodeDeviceHealth` (cluster-scoped, one per node, named after it): what the node agent knows
//!   about each device (health, the reasons with their first/last sighting and count, since
//!   when, the pods bound to it) and about its own sources, kept apart from device health so a
//!   blind source never reads as a failed device. The agent writes the status; the controller
//!   reads it.
//!
//! - `FailurePolicy` (namespaced): which pods a policy selects and its ordered rules (the engine's
//!   policy model, `devheal_core::policy`, whose types carry their JSON schema), with a status
//!   the controller writes: pods matched, actions taken, the last action and the budget state.
//!
//! The schema carries the validation, so the API server refuses a malformed object before any
//! of our code sees it: enumerations for health, vendor and reason source, a pattern for PCI
//! addresses, bounds on lengths and counts, and CEL rules (the object is named after its node;
//! a device's `since` is not before its reasons' first sighting is left to the agent).
//! `devheal crds` prints the CustomResourceDefinitions; `deploy/crds/` holds the same output.

use std::collections::BTreeMap;

use devheal_core::policy::{PodSelector, PolicyRule};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// The API group of every devheal resource.
pub const GROUP: &str = "devheal.io";
/// The version of every devheal resource.
pub const VERSION: &str = "v1alpha1";

/// The node this object describes (it must also be the object's name).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "devheal.io",
    version = "v1alpha1",
    kind = "NodeDeviceHealth",
    plural = "nodedevicehealths",
    singular = "nodedevicehealth",
    shortname = "ndh",
    status = "NodeDeviceHealthStatus",
    derive = "PartialEq",
    doc = "Health of every device on one node, written by the devheal agent on that node.",
    validation = Rule::new("self.metadata.name == self.spec.nodeName").message("a NodeDeviceHealth is named after its node: metadata.name must equal spec.nodeName"),
    printcolumn(name = "Devices", type_ = "integer", json_path = ".status.summary.devices"),
    printcolumn(name = "Unhealthy", type_ = "integer", json_path = ".status.summary.unhealthy"),
    printcolumn(name = "Degraded", type_ = "integer", json_path = ".status.summary.degraded"),
    printcolumn(name = "Unknown", type_ = "integer", json_path = ".status.summary.unknown"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct NodeDeviceHealthSpec {
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.nodeName is immutable"))]
    #[schemars(length(min = 1, max = 253))]
    pub node_name: String,
    /// Device resets the controller asks the agent on this node to carry out (`docs/actuator.md`,
    /// "Device resets"). Written by the controller only; the agent answers each in
    /// `status.resets`. Cleared when the node's repair requests are withdrawn.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub reset_requests: Vec<DeviceResetRequest>,
}

/// A reset the controller requests of one device.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeviceResetRequest {
    /// The device, by the id the agent reports it under (`status.devices[].id`).
    #[schemars(length(min = 1, max = 512))]
    pub device: String,
    /// The request's identity (the engine's idempotency key): the agent answers each id once.
    #[schemars(length(min = 1, max = 512))]
    pub id: String,
    pub requested_at: Time,
    #[serde(default)]
    #[schemars(length(max = 1024))]
    pub reason: String,
}

/// Where the agent is with one reset request.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceResetPhase {
    /// Taken, not finished (waiting for the device's processes to exit, or running).
    #[default]
    Pending,
    /// The device was reset and answered afterwards as the same device.
    Succeeded,
    /// The reset was tried and the device did not come back, or the driver refused it.
    Failed,
    /// Not carried out: resets are off on this agent (`--device-reset=off`), the device is
    /// unknown, still in use past the wait, or over the agent's own limit. Nothing was tried.
    Refused,
    /// Dry run (`--device-reset=dry-run`): what would have been run is in the message.
    WouldReset,
}

/// The agent's answer to one reset request.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeviceResetStatus {
    #[schemars(length(min = 1, max = 512))]
    pub device: String,
    /// The request's id (`spec.resetRequests[].id`).
    #[schemars(length(min = 1, max = 512))]
    pub id: String,
    pub phase: DeviceResetPhase,
    /// What happened, in words (the command's output, the processes holding the device).
    #[serde(default)]
    #[schemars(length(max = 2048))]
    pub message: String,
    /// When the phase was last set.
    pub at: Time,
}

/// What the agent last published.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeDeviceHealthStatus {
    /// Boot id of the node when this was written; reasons from an earlier boot are dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    /// When the agent last wrote the status (it writes on change and on a heartbeat).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<HealthSummary>,
    #[serde(default)]
    #[schemars(length(max = 256))]
    pub devices: Vec<DeviceStatus>,
    /// The agent's sources and the node's device infrastructure (driver, device plugins,
    /// kubelet sockets): their state says whether the agent can see, not whether devices work.
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub sources: Vec<SourceStatus>,
    /// Training progress of the pods on this node that report it (to the agent's
    /// `POST /v1/progress`, or through a metric their `devheal.io/progress-metric` annotation
    /// names). The controller compares a gang's members across nodes with these windows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub workloads: Vec<WorkloadProgress>,
    /// The node's NICs and their links as the agent follows them (`docs/agent.md`, "NIC
    /// links"): a link that stayed down, or flapped too often, is a network fault, which the
    /// controller answers by cordoning the node and restarting gangs hung or failed on it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub network: Vec<NicLinkStatus>,
    /// The agent's answers to `spec.resetRequests`, newest last; kept after the request is
    /// cleared so that a restarted agent does not answer a request twice.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub resets: Vec<DeviceResetStatus>,
}

/// A NIC link's state as the agent reads it.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub enum NicLinkState {
    Up,
    Down,
    /// Not known yet, or administratively down (not in use).
    #[default]
    Unknown,
}

/// One NIC of the node (a PCI function with network interfaces or RDMA devices) and its link.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NicLinkStatus {
    /// `dddd:bb:dd.f`, lower case.
    #[schemars(regex(pattern = r"^[0-9a-f]{4,8}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$"))]
    pub pci_address: String,
    /// Its interfaces and RDMA devices (`ens1np0`, `mlx5_0`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8), inner(length(min = 1, max = 64)))]
    pub names: Vec<String>,
    pub link: NicLinkState,
    /// Flaps (down, then up again before the down counted as a fault) since the agent started.
    #[serde(default, serialize_with = "int64::value")]
    pub flaps: u64,
    /// The network fault, when the link is at fault: what it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub fault: Option<String>,
    /// Since when the link has been at fault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault_since: Option<Time>,
}

/// How the agent learns a pod's progress.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum ProgressReporter {
    /// The pod posts its steps to the agent (`POST /v1/progress`).
    #[default]
    Endpoint,
    /// The agent scrapes the metric the pod's `devheal.io/progress-metric` annotation names.
    Scrape,
}

/// One pod's training progress, as the agent on its node saw it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadProgress {
    #[schemars(length(min = 1, max = 63))]
    pub namespace: String,
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(default)]
    pub reporter: ProgressReporter,
    /// When the last reported step ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_progress: Option<Time>,
    /// The step number the workload last gave, if it gives them (at most 2^63 - 1: larger
    /// numbers are written as that, see [`int64`]).
    #[serde(default, skip_serializing_if = "Option::is_none", serialize_with = "int64::option")]
    pub step: Option<u64>,
    /// Steps the agent has counted since it began following the pod.
    #[serde(default, serialize_with = "int64::value")]
    pub steps: u64,
    /// Length of each window, in seconds; windows start at multiples of it since the Unix epoch,
    /// so the windows of a gang's members on different nodes line up.
    #[schemars(range(min = 1, max = 3600))]
    pub window_seconds: u32,
    /// The latest closed windows, oldest first.
    #[serde(default)]
    #[schemars(length(max = 10))]
    pub windows: Vec<ProgressWindow>,
    /// The workload announced it makes no progress until then (a checkpoint save).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_until: Option<Time>,
    /// The pod stopped making progress (the agent's hang detector).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hang: Option<ProgressFinding>,
    /// The pod runs slower than its own baseline (the agent's change detector).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_shift: Option<ProgressFinding>,
    /// Why the agent cannot read the pod's progress now (a failed scrape, a missing metric):
    /// silence with an error here is blindness, not a hang.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub error: Option<String>,
}

/// One closed window of a pod's steps.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProgressWindow {
    pub start: Time,
    /// Steps reported in the window.
    pub samples: u32,
    /// The interquartile mean of the window's step times, in seconds (the pod's own compute
    /// time per step, not the gang's wall-clock step).
    pub step_seconds: f64,
}

/// A finding of one of the agent's progress detectors.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProgressFinding {
    /// When the silence or the slow-down began.
    pub since: Time,
    pub detected_at: Time,
    /// Relative slow-down (0.17 = 17 % slower); 1 for a hang.
    pub magnitude: f64,
    #[schemars(length(max = 1024))]
    pub message: String,
}

/// Counts for `kubectl get ndh`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HealthSummary {
    pub devices: u32,
    pub healthy: u32,
    pub degraded: u32,
    pub unhealthy: u32,
    pub unknown: u32,
}

/// A device's health, vendor and the source of a reason are the engine's own types (their JSON
/// schema comes from `devheal-core`), under the names the CRD uses.
pub use devheal_core::{Health as DeviceHealthState, HealthSource as ReasonSource, Vendor as DeviceVendor};

/// One device.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeviceStatus {
    /// The id the device is tracked under: for a DRA device `<driver>/<pool>/<device>` (what a
    /// DeviceTaintRule selects and a pod's status names), otherwise the device plugin's id
    /// without a replica number (for NVIDIA, the GPU or MIG UUID).
    #[schemars(length(min = 1, max = 384))]
    pub id: String,
    /// The extended resource (`nvidia.com/gpu`) or DRA driver the device is exposed through.
    #[schemars(length(min = 1, max = 253))]
    pub resource: String,
    #[serde(default)]
    pub vendor: DeviceVendor,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub model: Option<String>,
    /// `dddd:bb:dd.f`, lower case, as the kernel log prints it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9a-f]{4,8}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$"))]
    pub pci_address: Option<String>,
    pub health: DeviceHealthState,
    /// Since when the device has had this health.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
    #[serde(default)]
    #[schemars(length(max = 32))]
    pub reasons: Vec<HealthReasonStatus>,
    /// The pods (and containers) the kubelet has bound to this device, through any of its
    /// names (every time-slicing or MPS replica of a GPU is the GPU).
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub pods: Vec<BoundPod>,
    /// The id of the device this one is a slice of (a MIG device's GPU): a fault on the parent
    /// is a fault of this device too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 384))]
    pub parent: Option<String>,
    /// Other ids the device goes by (its UUID when published under a DRA id, the device
    /// plugin's ids, a DRA id), without replica numbers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 384)))]
    pub aliases: Vec<String>,
}

/// One reason behind a device's health, de-duplicated by (source, code).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HealthReasonStatus {
    pub source: ReasonSource,
    /// Xid/SXid number or another source-specific code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u32>,
    #[schemars(length(max = 1024))]
    pub message: String,
    pub first_seen: Time,
    pub last_seen: Time,
    #[schemars(range(min = 1))]
    #[serde(serialize_with = "int64::value")]
    pub count: u64,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BoundPod {
    #[schemars(length(min = 1, max = 63))]
    pub namespace: String,
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

/// The source whose `version` is the driver version NVML reads.
pub const NVML_SOURCE: &str = "nvml";
/// The source whose `version` is the device plugin's, from its pod on the node (its
/// `app.kubernetes.io/version` label, else its image tag).
pub const DEVICE_PLUGIN_POD_SOURCE: &str = "device_plugin_pod";

/// One of the agent's sources or a piece of the node's device infrastructure.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SourceStatus {
    /// `kernel_log`, `nvml`, `pod_resources`, `device_plugin:<socket>`, `driver`, ...
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Whether the source currently sees what it watches.
    pub available: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub message: Option<String>,
    /// A version the source reports (driver version, plugin version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
}

/// Which pods the policy applies to and what to do when they fail; the first matching rule wins.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "devheal.io",
    version = "v1alpha1",
    kind = "FailurePolicy",
    plural = "failurepolicies",
    singular = "failurepolicy",
    shortname = "dhfp",
    namespaced,
    status = "FailurePolicyStatus",
    derive = "PartialEq",
    doc = "How devheal handles failures of the pods it selects: ordered rules, the first match wins.",
    printcolumn(name = "Matched", type_ = "integer", json_path = ".status.matchedPods"),
    printcolumn(name = "Last action", type_ = "string", json_path = ".status.lastAction.action"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("self.rules.all(r, !has(r.repair) || r.action == 'RequestRepair')").message("a rule's repair applies only to the RequestRepair action"))]
#[serde(rename_all = "camelCase")]
pub struct FailurePolicySpec {
    /// Labels a pod must all carry (empty: every pod in the namespace).
    #[serde(default)]
    pub selector: PodSelector,
    /// A label key whose value names the gang of the selected pods, for workloads whose
    /// controller devheal does not already know.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 317))]
    pub gang_label: Option<String>,
    #[schemars(length(min = 1, max = 64))]
    pub rules: Vec<PolicyRule>,
}

impl FailurePolicy {
    /// The engine's policy for this object.
    pub fn to_policy(&self) -> devheal_core::policy::FailurePolicy {
        devheal_core::policy::FailurePolicy {
            name: self.metadata.name.clone().unwrap_or_default(),
            namespace: self.metadata.namespace.clone(),
            selector: self.spec.selector.clone(),
            gang_label: self.spec.gang_label.clone(),
            rules: self.spec.rules.clone(),
        }
    }
}

/// What the controller reports about a policy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FailurePolicyStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pods the policy currently selects.
    #[serde(default)]
    pub matched_pods: u64,
    /// Actions taken under this policy, by action (`RestartGang`, `EvictPod`, ...).
    #[serde(default)]
    pub actions_taken: BTreeMap<String, u64>,
    /// Actions a dry-run controller would have taken under this policy, by action; nothing was
    /// changed for them (each also has a `DevhealDryRun` Event on the object it names).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub dry_run_actions: BTreeMap<String, u64>,
    /// The latest action, taken or (with `dryRun: true`) only said by a dry run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_action: Option<LastAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetStatus>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LastAction {
    pub action: String,
    /// What it acted on: `namespace/pod`, a gang, `node/resource/device` or a node.
    pub target: String,
    #[schemars(length(max = 1024))]
    pub reason: String,
    pub at: Time,
    /// True: a dry run would have taken it; nothing was changed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

/// The cluster-wide safety budgets as the controller last saw them.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BudgetStatus {
    pub breaker_open: bool,
    pub quarantined_nodes: u32,
    pub quarantine_node_limit: u32,
    pub evictions_last_minute: u32,
    /// Driver or device plugin versions whose nodes' remediation is held (canary signal).
    #[serde(default)]
    pub held_versions: Vec<String>,
    /// Gang restarts and replacements caused by progress reports alone are held (too many of
    /// them in a short time).
    #[serde(default)]
    pub progress_breaker_open: bool,
}

/// A Kubernetes timestamp for one of the engine's times (nanoseconds since the Unix epoch).
pub fn k8s_time(t: devheal_core::Time) -> Time {
    Time(k8s_openapi::jiff::Timestamp::from_nanosecond(i128::from(t.as_nanos())).unwrap_or_default())
}

/// Kubernetes keeps integers as int64 (JSON numbers beyond 2^63 - 1 are refused by a CRD's
/// `type: integer`, as the real API server showed for a step near `u64::MAX`, and clients in
/// other languages lose precision beyond 2^53 anyway). Our counters are `u64` in Rust; these
/// serializers write them saturated at `i64::MAX`, so the agent never publishes an object the
/// server refuses (a refused apply would be retried forever and freeze the node's report).
pub mod int64 {
    use serde::Serializer;

    pub fn value<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64((*v).min(i64::MAX as u64))
    }

    pub fn option<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => value(v, s),
            None => s.serialize_none(),
        }
    }
}

/// Integer formats as Kubernetes knows them: schemars writes `uint32`/`uint64` for Rust's
/// unsigned types, which the API server does not recognise (it warns "unrecognized format" and
/// enforces nothing). `uint32` becomes `int64` with the type's bounds, `uint64` becomes `int64`
/// (values are saturated on the way out, see [`int64`]).
fn kubernetes_integer_formats(schema: &mut JSONSchemaProps) {
    match schema.format.as_deref() {
        Some("uint32") => {
            schema.format = Some("int64".into());
            schema.minimum = Some(schema.minimum.unwrap_or(0.0).max(0.0));
            schema.maximum = Some(f64::from(u32::MAX));
        }
        Some("uint64") | Some("uint") => {
            schema.format = Some("int64".into());
            schema.minimum = Some(schema.minimum.unwrap_or(0.0).max(0.0));
        }
        Some("uint16") | Some("uint8") | Some("int8") | Some("int16") => schema.format = Some("int32".into()),
        _ => {}
    }
    for child in schema.properties.iter_mut().flat_map(|p| p.values_mut()) {
        kubernetes_integer_formats(child);
    }
    if let Some(JSONSchemaPropsOrArray::Schema(items)) = schema.items.as_mut() {
        kubernetes_integer_formats(items);
    }
    if let Some(JSONSchemaPropsOrArray::Schemas(items)) = schema.items.as_mut() {
        items.iter_mut().for_each(kubernetes_integer_formats);
    }
    if let Some(JSONSchemaPropsOrBool::Schema(extra)) = schema.additional_properties.as_mut() {
        kubernetes_integer_formats(extra);
    }
    for list in [&mut schema.all_of, &mut schema.any_of, &mut schema.one_of].into_iter().flatten() {
        list.iter_mut().for_each(kubernetes_integer_formats);
    }
}

/// The CustomResourceDefinitions devheal serves, as the API server should get them.
pub fn crds() -> Vec<CustomResourceDefinition> {
    use kube::CustomResourceExt;
    let mut crds =
        vec![NodeDeviceHealth::crd(), FailurePolicy::crd(), crate::upgrade_plan::UpgradePlan::crd()];
    for crd in &mut crds {
        for version in &mut crd.spec.versions {
            if let Some(schema) = version.schema.as_mut().and_then(|s| s.open_api_v3_schema.as_mut()) {
                kubernetes_integer_formats(schema);
            }
        }
    }
    crds
}

/// The CustomResourceDefinitions devheal serves, as YAML documents separated by `---`.
pub fn crds_yaml() -> Result<String, serde_saphyr::SerializeError> {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&crd)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn node_device_health_crd_is_cluster_scoped_with_status_and_validation() {
        let crd = NodeDeviceHealth::crd();
        assert_eq!(crd.spec.group, GROUP);
        assert_eq!(crd.spec.scope, "Cluster");
        assert_eq!(crd.spec.names.kind, "NodeDeviceHealth");
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, VERSION);
        assert!(version.subresources.as_ref().is_some_and(|s| s.status.is_some()));
        let schema = serde_json::to_string(&version.schema).unwrap_or_default();
        assert!(schema.contains("self.metadata.name == self.spec.nodeName"), "{schema}");
        assert!(schema.contains(r#""enum":["Healthy","Degraded","Unhealthy","Unknown"]"#), "{schema}");
        assert!(schema.contains("kernel_log"), "reason sources are an enumeration");
        assert!(schema.contains(r#"^[0-9a-f]{4,8}:[0-9a-f]{2}:[0-9a-f]{2}\\.[0-7]$"#), "{schema}");
    }

    #[test]
    fn status_round_trips_and_rejects_unknown_health() {
        let json = serde_json::json!({
            "apiVersion": "devheal.io/v1alpha1", "kind": "NodeDeviceHealth",
            "metadata": {"name": "gpu-node-7"},
            "spec": {"nodeName": "gpu-node-7"},
            "status": {"devices": [{
                "id": "GPU-1", "resource": "nvidia.com/gpu", "vendor": "nvidia",
                "pciAddress": "0000:3b:00.0", "health": "Unhealthy",
                "reasons": [{"source": "kernel_log", "code": 79, "message": "fallen off the bus",
                    "firstSeen": "2026-11-28T10:00:00Z", "lastSeen": "2026-11-28T10:00:01Z", "count": 2}],
                "pods": [{"namespace": "ml", "name": "trainer-0", "container": "trainer"}]
            }]}
        });
        let object: NodeDeviceHealth = serde_json::from_value(json.clone()).expect("valid object");
        let status = object.status.as_ref().expect("status");
        assert_eq!(status.devices[0].health, DeviceHealthState::Unhealthy);
        assert_eq!(status.devices[0].reasons[0].source, ReasonSource::KernelLog);
        let mut bad = json;
        bad["status"]["devices"][0]["health"] = "Broken".into();
        assert!(serde_json::from_value::<NodeDeviceHealth>(bad).is_err());
    }

    #[test]
    fn crd_yaml_reads_back_as_the_same_definitions() {
        use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
        let yaml = crds_yaml().expect("serialises");
        let docs: Vec<&str> = yaml.split("---\n").filter(|d| !d.trim().is_empty()).collect();
        assert_eq!(docs.len(), 3);
        let back: Vec<CustomResourceDefinition> =
            docs.iter().map(|d| serde_saphyr::from_str(d).expect("YAML parses back")).collect();
        assert_eq!(back, crds());
    }

    #[test]
    fn integers_are_int64_for_the_api_server_and_saturate() {
        let schema = serde_json::to_string(&crds()).unwrap_or_default();
        assert!(!schema.contains("\"uint"), "Kubernetes knows int32 and int64 only");
        assert!(schema.contains(r#""format":"int64","maximum":4294967295.0"#), "u32 keeps its bounds");
        let w = WorkloadProgress { step: Some(u64::MAX), steps: u64::MAX, ..WorkloadProgress::default() };
        let json = serde_json::to_value(&w).unwrap_or_default();
        assert_eq!(json["step"], serde_json::json!(i64::MAX));
        assert_eq!(json["steps"], serde_json::json!(i64::MAX));
        let small = WorkloadProgress { step: Some(7), ..WorkloadProgress::default() };
        assert_eq!(serde_json::to_value(&small).unwrap_or_default()["step"], 7);
    }

    #[test]
    fn failure_policy_crd_carries_the_engine_policy_schema() {
        let crd = FailurePolicy::crd();
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.plural, "failurepolicies");
        let schema = serde_json::to_string(&crd.spec.versions[0].schema).unwrap_or_default();
        for expected in [
            "onClasses",
            "onExitCodes",
            "onXids",
            "RestartGang",
            "device_failure",
            "Unhealthy",
            "inspect_hardware",
        ] {
            assert!(schema.contains(expected), "{expected} missing from {schema}");
        }
        assert!(schema.contains("r.action == 'RequestRepair'"));
    }

    #[test]
    fn a_failure_policy_object_becomes_the_engine_policy() {
        let object: FailurePolicy = serde_json::from_value(serde_json::json!({
            "apiVersion": "devheal.io/v1alpha1", "kind": "FailurePolicy",
            "metadata": {"name": "training", "namespace": "ml"},
            "spec": {
                "selector": {"matchLabels": {"team": "llm"}},
                "rules": [{"name": "dead-gpu", "onClasses": ["device_failure"], "action": "RestartGang"},
                          {"name": "rest", "action": "Ignore"}]
            }
        }))
        .expect("valid object");
        let policy = object.to_policy();
        assert_eq!((policy.name.as_str(), policy.namespace.as_deref()), ("training", Some("ml")));
        assert_eq!(policy.rules.len(), 2);
        assert_eq!(policy.rules[0].action, devheal_core::policy::RuleAction::RestartGang);
    }
}
