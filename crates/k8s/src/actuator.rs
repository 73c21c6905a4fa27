//! The Kubernetes actuator: carries out the engine's [`PlannedAction`]s on a cluster through the
//! API server, and reports what became of each as an [`ActionOutcome`].
//!
//! What each action sends:
//!
//! | action | requests | Event reason (type) | Event regarding |
//! |---|---|---|---|
//! | `MarkPod` | strategic-merge patch of `pods/status`: one condition, merged by `type` | `DevhealPodMarked` (Warning) | the pod |
//! | `EvictPod` | `POST pods/{name}/eviction` (policy/v1, UID precondition) | `DevhealEvicted` (Warning); `DevhealEvictionBlocked` (Warning) on the first refusal | the pod |
//! | `RestartGang` | list the gang's pods; condition `devheal.io/RestartInPlace` on each member the action restarts in place whose spec still allows it; `DELETE` each other live one with a UID precondition (LeaderWorkerSet: the group's leader, foreground, unless every member restarts in place) | `DevhealGangRestart` (Warning) | the members' controlling owner, else a member pod |
//! | `ReplaceAtCheckpoint` | condition `devheal.io/ReplaceAtCheckpoint` on the slow member (as `MarkPod`), for the launcher that sees checkpoints | `DevhealPodMarked` (Warning) | the pod |
//! | `FailWorkload` | condition `devheal.io/WorkloadFailed` on each live member; for Jobs and JobSets the pod is then deleted | `DevhealWorkloadFailed` (Warning) | as for `RestartGang` |
//! | `QuarantineDevice` | create a DRA `DeviceTaintRule` (NoSchedule), or a node taint where DRA cannot name the device | `DevhealDeviceQuarantined` (Warning) | the rule, or the node |
//! | `ReleaseDevice` | delete that rule, or remove that node taint | `DevhealDeviceReleased` (Normal) | the rule, or the node |
//! | `CordonNode` | JSON patch: `test` the taints, add `devheal.io/unhealthy:NoSchedule`, set `spec.unschedulable` | `DevhealNodeCordoned` (Warning) | the node |
//! | `UncordonNode` | JSON patch: `test` the taints, remove ours, clear `spec.unschedulable` if we set it | `DevhealNodeUncordoned` (Normal) | the node |
//! | `RequestRepair` | node condition `devheal.io/RepairRequested` (`nodes/status`), label `devheal.io/repair=<kind>` | `DevhealRepairRequested` (Warning) | the node |
//! | `WithdrawRepair` | the condition set False (reason `RepairDone`), the label removed; nothing when neither stands | `DevhealRepairWithdrawn` (Normal) | the node |
//! | `Report` | only the Event | `DevhealReport` (Warning) | nothing (namespace `default`) |
//! | any, failed for good | — | `DevhealActionFailed` (Warning) | the pod or node, when the action names one |
//! | any, in dry run | nothing (a gang's pods are listed) | `DevhealDryRun` (Normal), once per idempotency key | as above; a device's node |
//!
//! Events are `events.k8s.io/v1` with `reportingController: devheal.io/controller` and the
//! configured `reportingInstance`; those about cluster-scoped objects go to namespace `default`,
//! as kubectl's do. The same Event again within six minutes raises `series.count` on the first
//! instead of creating another (the `events` module says why this is not kube-runtime's
//! `Recorder`). An Event that cannot be written is logged and never changes the outcome
//! (except for `Report`, whose only effect is its Event). An action that finds its effect already
//! in place (a replay) returns `Done` and writes no Event.
//!
//! Outcomes: 404 → `Gone` (for deletions of our own objects, `Done`); 429, 5xx, transport
//! failures and conflicts that do not settle → `Retry` with a per-target exponential backoff
//! (`backoff_base` doubling up to `backoff_cap`, jittered into `[d/2, d]`), kept here and reset
//! by any final outcome;
//! 403, 422 and other refusals → `Failed` quoting the API's message. With `dry_run` nothing
//! changes: the outcome is `WouldDo` with the sentence of what would have been done, and the only
//! write is one Normal Event per idempotency key, reason `DevhealDryRun`, with the real Event's
//! `action` and regarding the object the real Event would be about (for a gang, the owner found
//! by listing its pods; for a device, its node), its note the sentence.
//!
//! One file per kind of action: `actuator/pods.rs` (conditions, evictions), `actuator/gangs.rs`
//! (restarts, failed workloads), `actuator/devices.rs` (quarantines), `actuator/nodes.rs`
//! (cordons, repair requests); beside them the names devheal writes (`names.rs`), Events in a
//! series (`events.rs`), jittered retries (`backoff.rs`) and the dry run (`dry_run.rs`). This
//! file holds the configuration, the dispatch, the outcome bookkeeping and the policy status.
//!
//! The `kube::Client` given should not retry on its own: a client built from a
//! `kube::Config` with `default_retry: true` (kube 5's default) retries 429s internally, which
//! would hide a PodDisruptionBudget's refusal behind minutes of silent retries. Set
//! `config.default_retry = false` before building it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration as StdDuration;

use devheal_core::action::PodRef;
use devheal_core::{
    Action, ActionOutcome, Actuator, DeviceKey, GangId, PlannedAction, PodInfo, Time, gang_of,
};
use http::Method;
use serde_json::{Value, json};

use crate::wire::{self, Body, CallError, Clock, call, call_within, path_segment, query_escape};

mod backoff;
mod devices;
mod dry_run;
mod events;
mod gangs;
mod names;
mod nodes;
mod pods;

use backoff::{Backoff, merge_stop, stop_of};
use dry_run::would_do;
use events::{EventSpec, SeriesCache};
use gangs::*;
use names::*;
pub use names::{device_taint_rule_name, dra_device, node_quarantine_taint_key};
use nodes::*;

/// The field manager the actuator writes under.
pub const FIELD_MANAGER: &str = "devheal-controller";
/// `reportingController` of every Event the actuator writes.
pub const REPORTING_CONTROLLER: &str = "devheal.io/controller";
/// Pod condition set on every member of a gang devheal restarts, just before the member is
/// deleted, so that a Job's `podFailurePolicy` rule
/// `{action: Ignore, onPodConditions: [{type: devheal.io/GangRestart}]}` does not count the
/// healthy members a restart takes down (the real Job controller counts every pod that ends
/// Failed, deleted or not, against `backoffLimit`; docs/policy.md §5).
pub const GANG_RESTART_CONDITION: &str = "devheal.io/GangRestart";
/// Pod condition set on every member of a workload devheal fails, for a Job's
/// `podFailurePolicy` rule `{action: FailJob, onPodConditions: [{type: devheal.io/WorkloadFailed}]}`.
pub const WORKLOAD_FAILED_CONDITION: &str = "devheal.io/WorkloadFailed";
/// Pod condition telling a healthy member of a restarted gang to restart in place: the agent
/// answers the member's progress reports with `restartInPlace` while it stands and the pod has
/// not restarted since, and the member exits with
/// [`devheal_core::pod::RESTART_IN_PLACE_EXIT_CODE`] for its pod's container restart rule
/// (docs/policy.md, "Restarting a gang in place"). Its message ends with
/// [`in_place_message`]'s `[incident …, restarts N]`.
pub const RESTART_IN_PLACE_CONDITION: &str = "devheal.io/RestartInPlace";

/// The message of [`RESTART_IN_PLACE_CONDITION`]: what is asked, then the incident and the pod's
/// restart count (the sum over its containers) when it was asked, which
/// [`in_place_request_of`] reads back.
pub fn in_place_message(gang: &str, incident: &str, restarts: u32, reason: &str) -> String {
    format!(
        "devheal restarts gang {gang} in place: exit {} to be restarted on this node and its devices: {reason} [incident {incident}, restarts {restarts}]",
        devheal_core::pod::RESTART_IN_PLACE_EXIT_CODE
    )
}

/// The incident and the restart count an [`in_place_message`] names; `None` for any other text.
pub fn in_place_request_of(message: &str) -> Option<(&str, u32)> {
    let tail = message.strip_suffix(']')?;
    let open = tail.rfind("[incident ")?;
    let (incident, restarts) = tail[open + "[incident ".len()..].rsplit_once(", restarts ")?;
    Some((incident, restarts.parse().ok()?))
}

/// Pod condition asking for a slow gang member to be replaced at the gang's next checkpoint
/// (`Action::ReplaceAtCheckpoint`). The controller does not see checkpoints: the training
/// launcher or operator that does acts on the condition (restart from the checkpoint with this
/// pod deleted); a `podFailurePolicy` cannot, as the pod has not failed.
pub const REPLACE_AT_CHECKPOINT_CONDITION: &str = "devheal.io/ReplaceAtCheckpoint";
/// Node condition that asks repair tooling (medik8s NHC, cloud auto-repair) for a repair.
pub const REPAIR_REQUESTED_CONDITION: &str = "devheal.io/RepairRequested";
/// Node label naming the repair asked for (`RepairKind::as_str`), for tools that select on labels.
pub const REPAIR_LABEL: &str = "devheal.io/repair";
/// Annotation on a DeviceTaintRule naming the device it quarantines (`<node>/<resource>/<id>`:
/// node names hold no `/`).
pub const RULE_DEVICE_ANNOTATION: &str = "devheal.io/device";
/// Annotation on a DeviceTaintRule saying why the device is quarantined.
pub const RULE_REASON_ANNOTATION: &str = "devheal.io/reason";

/// Node taint (NoSchedule) of a node devheal cordoned.
pub const UNHEALTHY_TAINT: &str = "devheal.io/unhealthy";
/// Taint key of a quarantined device: the `DeviceTaintRule`'s taint, and the prefix of the
/// per-device node taint key (`devheal.io/device-quarantine-<hash>`) where DRA is not used.
pub const DEVICE_QUARANTINE_TAINT: &str = "devheal.io/device-quarantine";
/// Value of [`UNHEALTHY_TAINT`] when devheal set `spec.unschedulable` itself, so that uncordon
/// clears only a cordon devheal made.
pub const CORDONED_BY_DEVHEAL: &str = "cordoned";
/// Value of [`UNHEALTHY_TAINT`] when the node was already unschedulable (someone else's cordon).
pub const CORDONED_BEFORE: &str = "already-cordoned";

const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
const RESOURCE_GROUP: &str = "resource.k8s.io";
/// `resource.k8s.io` versions that serve `DeviceTaintRule`, newest first (v1 from 1.37, v1beta2
/// from 1.36 behind `DRADeviceTaintRules`, v1alpha3 from 1.33).
const DEVICE_TAINT_RULE_VERSIONS: [&str; 3] = ["v1", "v1beta2", "v1alpha3"];
const NOTE_MAX_BYTES: usize = 1024;
const NODE_PATCH_ATTEMPTS: usize = 3;
/// Backoff state idle for this long is forgotten (the target was settled elsewhere or abandoned).
const BACKOFF_FORGET_AFTER_NS: i64 = 3_600_000_000_000;
/// Gang restarts are remembered this long, so that a replay never deletes re-created pods.
const GANG_MEMORY_NS: i64 = 24 * 3_600_000_000_000;
/// A dry run's Event per idempotency key is remembered this long (a week), so that the same
/// would-be action decided again writes no second Event.
const DRY_RUN_MEMORY_NS: i64 = 7 * 24 * 3_600_000_000_000;
/// Reason of the Normal Event a dry run writes for each would-be action; its `action` is the
/// real Event's (`Evict`, `Cordon`, …) and its note the would-do sentence.
pub const DRY_RUN_REASON: &str = "DevhealDryRun";

/// Whether the cluster serves DRA `DeviceTaintRule`, and at which `resource.k8s.io` version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceTaintRuleSupport {
    /// Not served: devices are quarantined with node taints.
    NotServed,
    /// Served at `resource.k8s.io/<version>`.
    Served { version: String },
}

/// How the actuator behaves.
#[derive(Clone, Debug)]
pub struct ActuatorConfig {
    /// `fieldManager` of every write ([`FIELD_MANAGER`] by default).
    pub field_manager: String,
    /// Send nothing; answer `WouldDo` with what would have been sent.
    pub dry_run: bool,
    /// The controller's identity (its pod name), the Events' `reportingInstance`.
    pub reporting_instance: String,
    /// First delay of a retried target (a PDB-blocked eviction, a 5xx).
    pub backoff_base: StdDuration,
    /// Longest delay of a retried target.
    pub backoff_cap: StdDuration,
    /// Spread each delay over `[d/2, d]` by a hash of the target and attempt (on by default;
    /// see the `backoff` module), so that many targets failed at once are not retried at once.
    pub backoff_jitter: bool,
    /// Where device quarantines go.
    pub device_taint_rules: DeviceTaintRuleSupport,
    /// How long one request may wait for its answer (10 s by default);
    /// no answer in time is retried like a failed connection.
    pub call_timeout: StdDuration,
}

impl ActuatorConfig {
    /// Defaults: field manager `devheal-controller`, no dry run, backoff 5 s doubling to 5 min,
    /// no DeviceTaintRule (use [`discover_device_taint_rules`] or [`KubeActuator::discover`]).
    pub fn new(reporting_instance: impl Into<String>) -> Self {
        ActuatorConfig {
            field_manager: FIELD_MANAGER.to_string(),
            dry_run: false,
            reporting_instance: reporting_instance.into(),
            backoff_base: StdDuration::from_secs(5),
            backoff_cap: StdDuration::from_secs(300),
            backoff_jitter: true,
            device_taint_rules: DeviceTaintRuleSupport::NotServed,
            call_timeout: crate::wire::CALL_TIMEOUT,
        }
    }
}

/// Errors of setting the actuator up (its actions report [`ActionOutcome`]s instead).
#[derive(Debug, thiserror::Error)]
pub enum ActuatorError {
    /// API discovery of `resource.k8s.io` failed.
    #[error("discovering resource.k8s.io: {0}")]
    Discovery(String),
}

/// Why a FailurePolicy's status was not written.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum StatusWriteError {
    /// The policy is gone (404): there is nothing to write to.
    #[error("FailurePolicy {0} is gone")]
    Gone(String),
    /// Any other failure (refused, no answer); the caller tries again with its next write.
    #[error("writing the status of FailurePolicy {policy}: {message}")]
    Failed { policy: String, message: String },
}

/// Asks the API server whether `DeviceTaintRule` is served, and at which version: a GET of
/// `/apis/resource.k8s.io`, then of each offered version's resource list, newest first.
pub async fn discover_device_taint_rules(
    client: &kube::Client,
) -> Result<DeviceTaintRuleSupport, ActuatorError> {
    let group = match call(client, Method::GET, &format!("/apis/{RESOURCE_GROUP}"), None).await {
        Ok(g) => g,
        Err(e) if e.code() == Some(404) => return Ok(DeviceTaintRuleSupport::NotServed),
        Err(e) => return Err(ActuatorError::Discovery(e.describe())),
    };
    let offered: Vec<&str> = group["versions"]
        .as_array()
        .map(|vs| vs.iter().filter_map(|v| v["version"].as_str()).collect())
        .unwrap_or_default();
    for version in DEVICE_TAINT_RULE_VERSIONS.iter().filter(|v| offered.contains(v)) {
        let path = format!("/apis/{RESOURCE_GROUP}/{version}");
        let resources = match call(client, Method::GET, &path, None).await {
            Ok(r) => r,
            Err(e) if e.code() == Some(404) => continue,
            Err(e) => return Err(ActuatorError::Discovery(e.describe())),
        };
        let serves = resources["resources"]
            .as_array()
            .is_some_and(|rs| rs.iter().any(|r| r["name"].as_str() == Some("devicetaintrules")));
        if serves {
            return Ok(DeviceTaintRuleSupport::Served { version: version.to_string() });
        }
    }
    Ok(DeviceTaintRuleSupport::NotServed)
}

/// What an action came to, and the Event that tells of it.
struct Carried {
    outcome: ActionOutcome,
    event: Option<EventSpec>,
}

impl Carried {
    fn quiet(outcome: ActionOutcome) -> Self {
        Carried { outcome, event: None }
    }
    fn with(outcome: ActionOutcome, event: EventSpec) -> Self {
        Carried { outcome, event: Some(event) }
    }
}

/// A failure of a multi-request action, before it becomes an outcome.
enum Stop {
    Retry(String),
    Failed(String),
    Gone,
}

/// Carries out the engine's actions on a Kubernetes cluster. See the module docs for what each
/// action sends.
/// Whether this process may still write (the controller's leadership); asked before every
/// write, so that an action a stalled replica had begun is not finished after another replica
/// took over.
pub type WriteFence = std::sync::Arc<dyn Fn() -> bool + Send + Sync>;

pub struct KubeActuator {
    client: kube::Client,
    config: ActuatorConfig,
    fence: Option<WriteFence>,
    clock: Clock,
    backoff: Mutex<HashMap<String, Backoff>>,
    /// Gang restarts by idempotency key: when first tried, and whether they completed.
    gang_restarts: Mutex<HashMap<String, (Time, bool)>>,
    /// Dry run: the idempotency keys whose `DevhealDryRun` Event was written, and when.
    dry_run_events: Mutex<HashMap<String, Time>>,
    /// Events written recently, so that a repeat is counted in their series.
    series: SeriesCache,
}

impl KubeActuator {
    /// An actuator with the configuration as given (DeviceTaintRule support included).
    pub fn new(client: kube::Client, config: ActuatorConfig) -> Self {
        KubeActuator {
            client,
            config,
            fence: None,
            clock: wire::system_clock(),
            backoff: Mutex::new(HashMap::new()),
            gang_restarts: Mutex::new(HashMap::new()),
            dry_run_events: Mutex::new(HashMap::new()),
            series: SeriesCache::default(),
        }
    }

    /// Ask `fence` before every write (reads are never fenced); a write it refuses is not sent
    /// and the action's outcome is a retry, which a replica that no longer leads drops.
    pub fn with_fence(mut self, fence: WriteFence) -> Self {
        self.fence = Some(fence);
        self
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<(Body, &Value)>,
    ) -> Result<Value, CallError> {
        if method != Method::GET && self.fence.as_ref().is_some_and(|may_write| !may_write()) {
            return Err(CallError::Fenced);
        }
        call_within(&self.client, method, path, body, self.config.call_timeout).await
    }

    /// An actuator whose DeviceTaintRule support is discovered from the API server once.
    pub async fn discover(client: kube::Client, mut config: ActuatorConfig) -> Result<Self, ActuatorError> {
        config.device_taint_rules = discover_device_taint_rules(&client).await?;
        Ok(Self::new(client, config))
    }

    /// Replaces the wall clock (condition and Event times, backoff bookkeeping).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The configuration in use.
    pub fn config(&self) -> &ActuatorConfig {
        &self.config
    }

    fn now(&self) -> Time {
        (self.clock)()
    }

    fn write_query(&self) -> String {
        format!("?fieldManager={}", query_escape(&self.config.field_manager))
    }

    // ---- actions -------------------------------------------------------------------------

    async fn carry(&self, planned: &PlannedAction) -> Carried {
        match &planned.action {
            Action::MarkPod { pod, condition_type, reason, message } => {
                self.mark_pod(pod, condition_type, reason, message).await
            }
            Action::EvictPod { pod, reason } => self.evict(pod, reason).await,
            Action::RestartGang { gang, incident, reason, in_place } => {
                self.restart_gang(&planned.idempotency_key, gang, incident, reason, in_place).await
            }
            Action::FailWorkload { gang, reason } => self.fail_workload(gang, reason).await,
            Action::ReplaceAtCheckpoint { pod, gang, devices, reason } => {
                let devices: Vec<String> = devices.iter().map(|d| d.to_string()).collect();
                let message = format!(
                    "replace this member of gang {gang} at its next checkpoint (slow devices: {}): {reason}",
                    devices.join(", ")
                );
                self.mark_pod(pod, REPLACE_AT_CHECKPOINT_CONDITION, "SlowMember", &message).await
            }
            Action::QuarantineDevice { device, reason } => self.quarantine(device, reason, true).await,
            Action::ReleaseDevice { device, reason } => self.quarantine(device, reason, false).await,
            Action::CordonNode { node, reason } => self.cordon(node, reason, true).await,
            Action::UncordonNode { node, reason } => self.cordon(node, reason, false).await,
            Action::RequestRepair { node, device, kind, reason } => {
                let carried = self
                    .request_repair(node, device.as_ref(), kind.as_str(), &camel(kind.as_str()), reason)
                    .await;
                match (kind, device) {
                    (devheal_core::RepairKind::ResetDevice, Some(device))
                        if matches!(carried.outcome, ActionOutcome::Done) =>
                    {
                        match self.ask_agent_to_reset(node, device, &planned.idempotency_key, reason).await {
                            Ok(()) => carried,
                            Err(outcome) => Carried::quiet(outcome),
                        }
                    }
                    _ => carried,
                }
            }
            Action::WithdrawRepair { node, reason } => self.withdraw_repair(node, reason).await,
            Action::Report { reason, message } => self.report(reason, message).await,
        }
    }
}

impl KubeActuator {
    /// Writes the status of the FailurePolicy `namespace/name`: a JSON merge patch of its
    /// `status` subresource (`{"status": …}`) under the actuator's field manager. Merge patch
    /// because only the leader writes it and it always writes the whole status it keeps: no
    /// resourceVersion precondition, and no field ownership to force. A dry run writes it too:
    /// the status then counts would-be actions under `dryRunActions`.
    pub async fn write_policy_status(
        &self,
        namespace: &str,
        name: &str,
        status: &crate::crd::FailurePolicyStatus,
    ) -> Result<(), StatusWriteError> {
        let policy = format!("{namespace}/{name}");
        let body = serde_json::to_value(status)
            .map(|s| json!({ "status": s }))
            .map_err(|e| StatusWriteError::Failed { policy: policy.clone(), message: e.to_string() })?;
        let path = format!(
            "/apis/{}/{}/namespaces/{}/failurepolicies/{}/status{}",
            crate::crd::GROUP,
            crate::crd::VERSION,
            path_segment(namespace),
            path_segment(name),
            self.write_query()
        );
        match self.send(Method::PATCH, &path, Some((Body::MergePatch, &body))).await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some(404) => Err(StatusWriteError::Gone(policy)),
            Err(e) => Err(StatusWriteError::Failed { policy, message: e.describe() }),
        }
    }
}

impl Actuator for KubeActuator {
    async fn execute(&self, planned: &PlannedAction) -> ActionOutcome {
        if self.config.dry_run {
            let description = would_do(&planned.action, &self.config);
            self.dry_run_event(planned, &description).await;
            return ActionOutcome::WouldDo { description };
        }
        let carried = self.carry(planned).await;
        let event = match (&carried.outcome, carried.event) {
            (ActionOutcome::Failed { reason }, None) => Self::failure_event(&planned.action, reason),
            (_, event) => event,
        };
        if let Some(event) = event {
            let reason = event.reason;
            if let Err(e) = self.emit(event).await {
                tracing::warn!(action = planned.action.label(), reason, error = %e, "could not write the Event");
            }
        }
        carried.outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The agent reads back what the actuator wrote; a reason with brackets of its own does not
    /// confuse it, and other text is no request.
    #[test]
    fn an_in_place_request_reads_back_its_incident_and_restart_count() {
        let m = in_place_message("ml/jobset/llama", "hang/ml/jobset/llama/17", 3, "no progress [rank 2]");
        assert_eq!(in_place_request_of(&m), Some(("hang/ml/jobset/llama/17", 3)));
        assert!(m.contains("exit 76"), "{m}");
        assert_eq!(in_place_request_of("restart please"), None);
        assert_eq!(in_place_request_of("[incident x, restarts many]"), None);
    }

    #[test]
    fn dra_ids_split_and_others_do_not() {
        let parts = |resource: &str, id: &str| {
            dra_device(&DeviceKey::new("n", resource, id)).map(|d| (d.driver, d.pool, d.device))
        };
        let some = |a: &str, b: &str, c: &str| Some((a.to_string(), b.to_string(), c.to_string()));
        assert_eq!(
            parts("gpu.nvidia.com", "gpu.nvidia.com/node-a/gpu-0"),
            some("gpu.nvidia.com", "node-a", "gpu-0")
        );
        assert_eq!(
            parts("gpu.example.com", "gpu.example.com/rack/1/dev-3"),
            some("gpu.example.com", "rack/1", "dev-3")
        );
        // The shapes the agent (PodResources) and a pod's status (KEP-4680) write it in.
        assert_eq!(parts("gpu.nvidia.com", "node-a/gpu-0"), some("gpu.nvidia.com", "node-a", "gpu-0"));
        assert_eq!(
            parts("claim:train/gpu", "gpu.nvidia.com/node-a/gpu-0"),
            some("gpu.nvidia.com", "node-a", "gpu-0")
        );
        assert_eq!(parts("nvidia.com/gpu", "GPU-fef8089b-4820-abfc-e83e-94318197576e"), None);
        assert_eq!(parts("nvidia.com/gpu", "MIG-GPU-fef8089b-4820-abfc-e83e-94318197576e/3/0"), None);
        assert_eq!(parts("nvidia.com/gpu", "k8s.gpu.nvidia.com/claim=uid-gpu-0"), None);
        assert_eq!(parts("nvidia.com/gpu", "nvidia.com//x"), None);
    }

    /// A DRA device is quarantined with a DeviceTaintRule in every shape it is reported in:
    /// the agent's `driver/pool/device`, PodResources' `pool/device` under the driver, a pod
    /// status' `claim:<claim>`; a device-plugin device with a node taint.
    #[test]
    fn every_shape_of_a_dra_device_gets_a_device_taint_rule() {
        let mut config = ActuatorConfig::new("test");
        config.device_taint_rules = DeviceTaintRuleSupport::Served { version: "v1".into() };
        let quarantine = |device: DeviceKey| {
            would_do(&Action::QuarantineDevice { device, reason: "Xid 79".into() }, &config)
        };
        for device in [
            DeviceKey::new("node-a", "gpu.nvidia.com", "gpu.nvidia.com/node-a/gpu-0"),
            DeviceKey::new("node-a", "gpu.nvidia.com", "node-a/gpu-0"),
            DeviceKey::new("node-a", "claim:train-gpus/gpu", "gpu.nvidia.com/node-a/gpu-0"),
            DeviceKey::new("node-a", "gpu.nvidia.com", "node-a/gpu-1-mig-2g47gb-14-0"),
            DeviceKey::new(
                "node-a",
                "claim:train-gpus",
                "k8s.gpu.nvidia.com/claim=dab5ab50-d59a-42a6-af16-cfd4628c0f7a-gpu-0",
            ),
        ] {
            let sentence = quarantine(device.clone());
            assert!(sentence.contains("with DeviceTaintRule"), "{device}: {sentence}");
        }
        for device in [
            DeviceKey::new("node-a", "nvidia.com/gpu", "GPU-4404041a-04cf-1ccf-9e70-f139a9b1e23c"),
            DeviceKey::new(
                "node-a",
                "nvidia.com/mig-1g.10gb",
                "MIG-GPU-b1028956-cfa2-0990-bf4a-5da9abb51763/3/0",
            ),
            DeviceKey::new("node-a", "amd.com/gpu", "0000:19:00.0"),
        ] {
            let sentence = quarantine(device.clone());
            assert!(sentence.contains("with node taint"), "{device}: {sentence}");
        }
    }

    #[test]
    fn rule_names_are_dns_labels_and_distinct() {
        let a = DeviceKey::new("Node_A.example", "nvidia.com/gpu", "gpu.nvidia.com/pool/GPU-0");
        let b = DeviceKey::new("node-a-example", "nvidia.com/gpu", "gpu-nvidia-com-pool-gpu-0");
        let (na, nb) = (device_taint_rule_name(&a), device_taint_rule_name(&b));
        assert_ne!(na, nb);
        for n in [&na, &nb] {
            assert!(n.len() <= 63, "{n}");
            assert!(n.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'), "{n}");
            assert!(n.starts_with("devheal-node-a-example-"), "{n}");
        }
        let long = DeviceKey::new("n".repeat(200), "r", "i".repeat(200));
        let n = device_taint_rule_name(&long);
        assert_eq!(n.len(), 63);
        assert_eq!(n, device_taint_rule_name(&long.clone()));
    }

    #[test]
    fn label_values_are_sanitised() {
        assert_eq!(label_value("GPU-fef8089b-4820"), "GPU-fef8089b-4820");
        assert_eq!(label_value("/a b/"), "a-b");
        assert_eq!(label_value(&"x".repeat(80)).len(), 63);
        assert!(is_label_value("g7"));
        assert!(!is_label_value("a/b"));
    }

    #[test]
    fn repair_kinds_become_reasons() {
        assert_eq!(camel("inspect_hardware"), "InspectHardware");
        assert_eq!(camel("none"), "None");
    }
}
