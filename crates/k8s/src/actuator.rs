//! The Kubernetes actuator: carries out the engine's [`PlannedAction`]s on a cluster through the
//! API server, and reports what became of each as an [`ActionOutcome`].
//!
//! What each action sends:
//!
//! | action | requests | Event reason (type) | Event regarding |
//! |---|---|---|---|
//! | `MarkPod` | strategic-merge patch of `pods/status`: one condition, merged by `type` | `DevhealPodMarked` (Warning) | the pod |
//! | `EvictPod` | `POST pods/{name}/eviction` (policy/v1, UID precondition) | `DevhealEvicted` (Warning); `DevhealEvictionBlocked` (Warning) on the first refusal | the pod |
//! | `RestartGang` | list the gang's pods, `DELETE` each live one with a UID precondition (LeaderWorkerSet: the group's leader, foreground) | `DevhealGangRestart` (Warning) | the members' controlling owner, else a member pod |
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
mod dry_run;
mod events;

use backoff::{Backoff, merge_stop, stop_of};
use dry_run::would_do;
use events::{EventSpec, SeriesCache};

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
            Action::RestartGang { gang, incident, reason } => {
                self.restart_gang(&planned.idempotency_key, gang, incident, reason).await
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
                self.request_repair(node, device.as_ref(), kind.as_str(), &camel(kind.as_str()), reason).await
            }
            Action::WithdrawRepair { node, reason } => self.withdraw_repair(node, reason).await,
            Action::Report { reason, message } => self.report(reason, message).await,
        }
    }

    fn pod_path(pod: &PodRef) -> String {
        format!("/api/v1/namespaces/{}/pods/{}", path_segment(&pod.namespace), path_segment(&pod.name))
    }

    fn pod_regarding(pod: &PodRef) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "namespace": pod.namespace, "name": pod.name, "uid": pod.uid})
    }

    /// A strategic-merge patch of `pods/status` with one condition. Strategic merge (rather
    /// than server-side apply) because `status.conditions` merges by `type` (its patch merge
    /// key): the patch touches our condition only, takes no field ownership over the status the
    /// kubelet writes with updates, and needs no `force`. `metadata.uid` in the patch is a
    /// guard: UID is immutable, so a pod re-created under the same name refuses the patch (422
    /// on `metadata.uid`) and the outcome is `Gone`.
    async fn patch_pod_condition(
        &self,
        pod: &PodRef,
        condition_type: &str,
        reason: &str,
        message: &str,
    ) -> Result<(), CallError> {
        let now = wire::rfc3339_seconds(self.now());
        let patch = json!({
            "metadata": {"uid": pod.uid},
            "status": {"conditions": [{
                "type": condition_type,
                "status": "True",
                "reason": reason,
                "message": message,
                "lastTransitionTime": now,
            }]},
        });
        let path = format!("{}/status{}", Self::pod_path(pod), self.write_query());
        self.send(Method::PATCH, &path, Some((Body::StrategicMergePatch, &patch))).await.map(|_| ())
    }

    fn is_replaced_pod(err: &CallError) -> bool {
        match err {
            CallError::Status { code: 409, .. } => true,
            CallError::Status { code: 422, cause_fields, message, .. } => {
                cause_fields.iter().any(|f| f == "metadata.uid") || message.contains("metadata.uid")
            }
            _ => false,
        }
    }

    async fn mark_pod(&self, pod: &PodRef, condition_type: &str, reason: &str, message: &str) -> Carried {
        let key = format!("pod/{}", pod.uid);
        match self.patch_pod_condition(pod, condition_type, reason, message).await {
            Ok(()) => {
                self.settle(&key);
                Carried::with(
                    ActionOutcome::Done,
                    EventSpec {
                        namespace: pod.namespace.clone(),
                        regarding: Some(Self::pod_regarding(pod)),
                        reason: "DevhealPodMarked",
                        action: "MarkPod",
                        note: format!("condition {condition_type}=True ({reason}): {message}"),
                        warning: true,
                    },
                )
            }
            Err(e) if Self::is_replaced_pod(&e) => {
                self.settle(&key);
                Carried::quiet(ActionOutcome::Gone)
            }
            Err(e) => Carried::quiet(self.failed_call(&key, "marking the pod", &e)),
        }
    }

    /// `POST .../pods/{name}/eviction` with the pod's UID as a precondition, so that a pod
    /// re-created under the same name is never evicted in its place (409 → `Gone`).
    async fn evict(&self, pod: &PodRef, reason: &str) -> Carried {
        let key = format!("pod/{}", pod.uid);
        let body = json!({
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": pod.name, "namespace": pod.namespace},
            "deleteOptions": {"preconditions": {"uid": pod.uid}},
        });
        let path = format!("{}/eviction", Self::pod_path(pod));
        let regarding = Some(Self::pod_regarding(pod));
        match self.send(Method::POST, &path, Some((Body::Json, &body))).await {
            Ok(_) => {
                self.settle(&key);
                Carried::with(
                    ActionOutcome::Done,
                    EventSpec {
                        namespace: pod.namespace.clone(),
                        regarding,
                        reason: "DevhealEvicted",
                        action: "Evict",
                        note: format!("evicted: {reason}"),
                        warning: true,
                    },
                )
            }
            Err(e) if matches!(e.code(), Some(404) | Some(409)) => {
                self.settle(&key);
                Carried::quiet(ActionOutcome::Gone)
            }
            Err(e) if e.code() == Some(429) => {
                let what = format!("eviction of pod {}/{} refused", pod.namespace, pod.name);
                let (outcome, attempts) = self.retry(&key, format!("{what}: {}", e.describe()));
                if attempts == 1 {
                    let note = format!("eviction refused, will retry: {}", e.describe());
                    let event = EventSpec {
                        namespace: pod.namespace.clone(),
                        regarding,
                        reason: "DevhealEvictionBlocked",
                        action: "Evict",
                        note,
                        warning: true,
                    };
                    return Carried::with(outcome, event);
                }
                Carried::quiet(outcome)
            }
            Err(e) => Carried::quiet(self.failed_call(&key, "evicting the pod", &e)),
        }
    }

    /// The live pods of a gang: listed (by the gang's own label where it has one) and kept when
    /// [`gang_of`] recognises exactly this gang in them, as the engine did; terminal pods and
    /// pods already being deleted are left alone.
    async fn gang_members(&self, gang: &GangId) -> Result<Vec<Value>, CallError> {
        let selector = match gang.kind.as_str() {
            "jobset" => Some(format!("jobset.sigs.k8s.io/jobset-name={}", gang.name)),
            "job" => Some(format!("batch.kubernetes.io/job-name={}", gang.name)),
            "kubeflow" => Some(format!("training.kubeflow.org/job-name={}", gang.name)),
            "volcano" => Some(format!("volcano.sh/job-name={}", gang.name)),
            "lws" => gang.name.split_once('/').map(|(lws, group)| {
                format!(
                    "leaderworkerset.sigs.k8s.io/name={lws},leaderworkerset.sigs.k8s.io/group-index={group}"
                )
            }),
            // PodGroup names are often annotations only; a label key from a policy is a label.
            "podgroup" => None,
            key if is_label_value(&gang.name) => Some(format!("{key}={}", gang.name)),
            _ => None,
        };
        let mut path = format!("/api/v1/namespaces/{}/pods", path_segment(&gang.namespace));
        if let Some(selector) = selector {
            path.push_str(&format!("?labelSelector={}", query_escape(&selector)));
        }
        let list = self.send(Method::GET, &path, None).await?;
        let extra: Vec<String> = match gang.kind.as_str() {
            "jobset" | "job" | "kubeflow" | "volcano" | "lws" | "podgroup" => Vec::new(),
            key => vec![key.to_string()],
        };
        let items = list["items"].as_array().cloned().unwrap_or_default();
        Ok(items
            .into_iter()
            .filter(|p| {
                let phase = p["status"]["phase"].as_str().unwrap_or("");
                !matches!(phase, "Succeeded" | "Failed") && p["metadata"]["deletionTimestamp"].is_null()
            })
            .filter(|p| gang_of(&membership_view(p, &gang.namespace), &extra).as_ref() == Some(gang))
            .collect())
    }

    async fn delete_pod(&self, pod: &Value, foreground: bool) -> Result<(), Stop> {
        let Some(pod) = pod_ref(pod) else {
            return Err(Stop::Failed("a listed pod has no name or uid".into()));
        };
        let mut options = json!({
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "preconditions": {"uid": pod.uid},
        });
        if foreground {
            options["propagationPolicy"] = json!("Foreground");
        }
        match self.send(Method::DELETE, &Self::pod_path(&pod), Some((Body::Json, &options))).await {
            // Already gone, or re-created under the same name (UID precondition): nothing to do.
            Ok(_) => Ok(()),
            Err(e) if matches!(e.code(), Some(404) | Some(409)) => Ok(()),
            Err(e) => Err(stop_of(&format!("deleting pod {}/{}", pod.namespace, pod.name), &e)),
        }
    }

    /// Sets `condition` (type, reason) on the pod, then, with `delete: Some(foreground)`,
    /// deletes it, so that it ends carrying the condition for its owner's failure policy. A pod
    /// gone or replaced since it was listed needs nothing more.
    async fn mark_then_delete(
        &self,
        pod: &Value,
        r: &PodRef,
        (condition, reason): (&str, &str),
        message: &str,
        delete: Option<bool>,
    ) -> Result<(), Stop> {
        match self.patch_pod_condition(r, condition, reason, message).await {
            Ok(()) => match delete {
                Some(foreground) => self.delete_pod(pod, foreground).await,
                None => Ok(()),
            },
            Err(e) if e.code() == Some(404) || Self::is_replaced_pod(&e) => Ok(()),
            Err(e) => Err(stop_of(&format!("marking pod {}/{}", r.namespace, r.name), &e)),
        }
    }

    /// Restarts a gang by deleting its live pods with UID preconditions, so that its owner
    /// re-creates them all at once:
    ///
    /// - JobSet, Indexed Job, Kubeflow training jobs, Volcano jobs, PodGroups and policy label
    ///   keys: every live member is deleted. A Job re-creates its pods (and with
    ///   `backoffLimit: 0` fails, so that JobSet's failure policy restarts the JobSet and counts
    ///   a restart); Kubeflow's operator re-creates missing replicas; Volcano sees `PodEvicted`
    ///   and applies its policy (`RestartJob`).
    /// - LeaderWorkerSet: only the group's leader (`worker-index` 0) is deleted, with foreground
    ///   propagation: the workers' StatefulSet is owned by the leader pod, so the whole group
    ///   goes and LWS re-creates it, whatever its `restartPolicy`.
    ///
    /// A plain delete skips PodDisruptionBudgets on purpose: the gang is already broken. The
    /// restart is remembered by idempotency key: a replay after it completed sends nothing, and
    /// a retry after a partial failure deletes only pods created before the first attempt (to
    /// within the clock skew between this controller and the API server).
    async fn restart_gang(&self, key: &str, gang: &GangId, incident: &str, reason: &str) -> Carried {
        let now = self.now();
        // `Some(first attempt)` when this is a retry of a restart that did not complete.
        let retry_of = match self.gang_restarts.lock() {
            Ok(mut map) => {
                map.retain(|_, (t, _)| now.since(*t).as_nanos() < GANG_MEMORY_NS);
                match map.get(key) {
                    Some((_, true)) => return Carried::quiet(ActionOutcome::Done),
                    Some((first, false)) => Some(*first),
                    None => {
                        map.insert(key.to_string(), (now, false));
                        None
                    }
                }
            }
            Err(_) => None,
        };
        let first = retry_of.unwrap_or(now);
        let backoff_key = format!("gang/{gang}");
        let members = match self.gang_members(gang).await {
            Ok(m) => m,
            Err(e) => return Carried::quiet(self.failed_call(&backoff_key, "listing the gang's pods", &e)),
        };
        let members: Vec<Value> = members
            .into_iter()
            .filter(|p| retry_of.is_none() || created_at(p).is_none_or(|created| created < first))
            .collect();
        if members.is_empty() {
            self.settle(&backoff_key);
            return Carried::quiet(ActionOutcome::Gone);
        }
        let leaders: Vec<&Value> = if gang.kind == "lws" {
            members
                .iter()
                .filter(|p| p["metadata"]["labels"]["leaderworkerset.sigs.k8s.io/worker-index"] == "0")
                .collect()
        } else {
            Vec::new()
        };
        let (targets, foreground): (Vec<&Value>, bool) =
            if leaders.is_empty() { (members.iter().collect(), false) } else { (leaders, true) };
        let mark = format!("devheal restarts gang {gang} (incident {incident}): {reason}");
        let mut stop = None;
        for pod in &targets {
            // Marked first, so the pod ends Failed carrying the condition a podFailurePolicy
            // can ignore.
            let condition = (GANG_RESTART_CONDITION, "DevhealGangRestart");
            let result = match pod_ref(pod) {
                Some(r) => self.mark_then_delete(pod, &r, condition, &mark, Some(foreground)).await,
                None => self.delete_pod(pod, foreground).await,
            };
            if let Err(s) = result {
                stop = merge_stop(stop, s);
            }
        }
        let regarding = owner_regarding(&members);
        match stop {
            Some(s) => Carried::quiet(self.stop_outcome(&backoff_key, s)),
            None => {
                self.settle(&backoff_key);
                if let Ok(mut map) = self.gang_restarts.lock() {
                    map.insert(key.to_string(), (first, true));
                }
                Carried::with(
                    ActionOutcome::Done,
                    EventSpec {
                        namespace: gang.namespace.clone(),
                        regarding,
                        reason: "DevhealGangRestart",
                        action: "RestartGang",
                        note: format!(
                            "restarting gang {gang} (incident {incident}): deleted {} of {} pods: {reason}",
                            targets.len(),
                            members.len()
                        ),
                        warning: true,
                    },
                )
            }
        }
    }

    /// Fails a workload: every live member gets the pod condition
    /// [`WORKLOAD_FAILED_CONDITION`] (True). For Jobs and JobSets the pod is then deleted, so
    /// that it terminates carrying the condition and the Job's `podFailurePolicy` rule
    /// `{action: FailJob, onPodConditions: [{type: devheal.io/WorkloadFailed}]}` fails the Job
    /// (and a JobSet rule `{action: FailJobSet, onJobFailureReasons: [PodFailurePolicy]}` the
    /// JobSet). Without such a rule the deletion is one more restart; the Event says so. Other
    /// kinds have no pod-condition failure policy: their pods are marked only, for an operator or
    /// the owner's own policy when the pods fail.
    async fn fail_workload(&self, gang: &GangId, reason: &str) -> Carried {
        let backoff_key = format!("fail/{gang}");
        let members = match self.gang_members(gang).await {
            Ok(m) => m,
            Err(e) => {
                return Carried::quiet(self.failed_call(&backoff_key, "listing the workload's pods", &e));
            }
        };
        if members.is_empty() {
            self.settle(&backoff_key);
            return Carried::quiet(ActionOutcome::Gone);
        }
        let delete = matches!(gang.kind.as_str(), "jobset" | "job");
        let message = format!("devheal failed workload {gang}: {reason}");
        let mut stop = None;
        for pod in &members {
            let Some(r) = pod_ref(pod) else { continue };
            let condition = (WORKLOAD_FAILED_CONDITION, "DevhealFailedWorkload");
            if let Err(s) = self.mark_then_delete(pod, &r, condition, &message, delete.then_some(false)).await
            {
                stop = merge_stop(stop, s);
            }
        }
        match stop {
            Some(s) => Carried::quiet(self.stop_outcome(&backoff_key, s)),
            None => {
                self.settle(&backoff_key);
                let what = if delete {
                    "marked and deleted; a podFailurePolicy FailJob rule on this condition fails the Job"
                } else {
                    "marked; the owner must be failed by its own policy or an operator"
                };
                Carried::with(
                    ActionOutcome::Done,
                    EventSpec {
                        namespace: gang.namespace.clone(),
                        regarding: owner_regarding(&members),
                        reason: "DevhealWorkloadFailed",
                        action: "FailWorkload",
                        note: format!(
                            "failing workload {gang}: {} pods {what} ({WORKLOAD_FAILED_CONDITION}): {reason}",
                            members.len()
                        ),
                        warning: true,
                    },
                )
            }
        }
    }

    /// Quarantine (`on`) or release a device: a DeviceTaintRule where DRA serves it and the
    /// device is a DRA device ([`dra_device`]: `<driver>/<pool>/<device>` under any resource, or
    /// `<pool>/<device>` under its driver, as PodResources names it), otherwise a node taint
    /// `devheal.io/device-quarantine-<hash>=<device id>:NoSchedule`. The node taint keeps new
    /// pods off the whole node (taints are per node), not only off the one device; pods that
    /// tolerate it still land there.
    async fn quarantine(&self, device: &DeviceKey, reason: &str, on: bool) -> Carried {
        let dra = match &self.config.device_taint_rules {
            DeviceTaintRuleSupport::Served { version } => dra_device(device).map(|d| (version.clone(), d)),
            DeviceTaintRuleSupport::NotServed => None,
        };
        match dra {
            Some((version, d)) => {
                self.device_taint_rule(device, &version, (&d.driver, &d.pool, &d.device), reason, on).await
            }
            None => self.device_node_taint(device, reason, on).await,
        }
    }

    async fn device_taint_rule(
        &self,
        device: &DeviceKey,
        version: &str,
        (driver, pool, name): (&str, &str, &str),
        reason: &str,
        on: bool,
    ) -> Carried {
        let rule = device_taint_rule_name(device);
        let key = format!("dtr/{rule}");
        let collection = format!("/apis/{RESOURCE_GROUP}/{version}/devicetaintrules");
        let mut regarding = json!({
            "apiVersion": format!("{RESOURCE_GROUP}/{version}"),
            "kind": "DeviceTaintRule",
            "name": rule,
        });
        let result = if on {
            let body = json!({
                "apiVersion": format!("{RESOURCE_GROUP}/{version}"),
                "kind": "DeviceTaintRule",
                "metadata": {
                    "name": rule,
                    "labels": {MANAGED_BY: "devheal"},
                    "annotations": {RULE_DEVICE_ANNOTATION: device.to_string(), RULE_REASON_ANNOTATION: reason},
                },
                "spec": {
                    "deviceSelector": {"driver": driver, "pool": pool, "device": name},
                    "taint": {"key": DEVICE_QUARANTINE_TAINT, "effect": "NoSchedule"},
                },
            });
            let path = format!("{collection}{}", self.write_query());
            self.send(Method::POST, &path, Some((Body::Json, &body))).await
        } else {
            let path = format!("{collection}/{}", path_segment(&rule));
            self.send(Method::DELETE, &path, None).await
        };
        match result {
            Ok(obj) => {
                self.settle(&key);
                if let Some(uid) = obj["metadata"]["uid"].as_str() {
                    regarding["uid"] = json!(uid);
                }
                let (reason_code, action, note, warning) = if on {
                    let note = format!(
                        "device {device} quarantined by DeviceTaintRule {rule} (NoSchedule): {reason}"
                    );
                    ("DevhealDeviceQuarantined", "Quarantine", note, true)
                } else {
                    let note = format!("device {device} released, DeviceTaintRule {rule} deleted: {reason}");
                    ("DevhealDeviceReleased", "Release", note, false)
                };
                let event = EventSpec {
                    namespace: "default".into(),
                    regarding: Some(regarding),
                    reason: reason_code,
                    action,
                    note,
                    warning,
                };
                Carried::with(ActionOutcome::Done, event)
            }
            // Already there (the name is derived from the device), or already deleted.
            Err(e) if (on && e.code() == Some(409)) || (!on && e.code() == Some(404)) => {
                self.settle(&key);
                Carried::quiet(ActionOutcome::Done)
            }
            Err(e) if e.code() == Some(404) => {
                self.settle(&key);
                Carried::quiet(ActionOutcome::Failed {
                    reason: format!(
                        "DeviceTaintRule is not served at {RESOURCE_GROUP}/{version} (discovery is stale): {}",
                        e.describe()
                    ),
                })
            }
            Err(e) => {
                let what = if on { "creating the DeviceTaintRule" } else { "deleting the DeviceTaintRule" };
                Carried::quiet(self.failed_call(&key, what, &e))
            }
        }
    }

    async fn device_node_taint(&self, device: &DeviceKey, reason: &str, on: bool) -> Carried {
        let taint_key = node_quarantine_taint_key(device);
        let mut taint = json!({"key": taint_key, "effect": "NoSchedule"});
        let value = label_value(&device.id);
        if !value.is_empty() {
            taint["value"] = json!(value);
        }
        let edit = |view: &NodeView| {
            let mut taints = view.taints.clone();
            let present = taints.iter().any(|t| same_taint(t, &taint_key));
            if on && !present {
                taints.push(taint.clone());
            } else if !on {
                taints.retain(|t| !same_taint(t, &taint_key));
            }
            NodeEdit { taints, unschedulable: None }
        };
        let (reason_code, action, note, warning) = if on {
            let note = format!("device {device} quarantined by node taint {taint_key}:NoSchedule: {reason}");
            ("DevhealDeviceQuarantined", "Quarantine", note, true)
        } else {
            let note = format!("device {device} released, node taint {taint_key} removed: {reason}");
            ("DevhealDeviceReleased", "Release", note, false)
        };
        self.edit_node_outcome(&device.node, edit, reason_code, action, note, warning).await
    }

    async fn cordon(&self, node: &str, reason: &str, on: bool) -> Carried {
        let edit = |view: &NodeView| {
            let mut taints = view.taints.clone();
            let ours = taints.iter().find(|t| same_taint(t, UNHEALTHY_TAINT)).cloned();
            if on {
                if ours.is_none() {
                    let value = if view.unschedulable { CORDONED_BEFORE } else { CORDONED_BY_DEVHEAL };
                    taints.push(json!({"key": UNHEALTHY_TAINT, "value": value, "effect": "NoSchedule"}));
                }
                NodeEdit { taints, unschedulable: Some(true) }
            } else {
                let Some(ours) = ours else {
                    // Not cordoned by devheal: someone else's cordon is theirs to lift.
                    return NodeEdit { taints, unschedulable: None };
                };
                taints.retain(|t| !same_taint(t, UNHEALTHY_TAINT));
                let unschedulable = (ours["value"] == CORDONED_BY_DEVHEAL).then_some(false);
                NodeEdit { taints, unschedulable }
            }
        };
        let (reason_code, action, note, warning) = if on {
            (
                "DevhealNodeCordoned",
                "Cordon",
                format!("cordoned, taint {UNHEALTHY_TAINT}:NoSchedule: {reason}"),
                true,
            )
        } else {
            (
                "DevhealNodeUncordoned",
                "Uncordon",
                format!("uncordoned, taint {UNHEALTHY_TAINT} removed: {reason}"),
                false,
            )
        };
        self.edit_node_outcome(node, edit, reason_code, action, note, warning).await
    }

    async fn edit_node_outcome(
        &self,
        node: &str,
        edit: impl Fn(&NodeView) -> NodeEdit,
        reason_code: &'static str,
        action: &'static str,
        note: String,
        warning: bool,
    ) -> Carried {
        let key = format!("node/{node}");
        match self.edit_node(node, edit).await {
            Ok((changed, uid)) => {
                self.settle(&key);
                if !changed {
                    return Carried::quiet(ActionOutcome::Done);
                }
                Carried::with(
                    ActionOutcome::Done,
                    EventSpec {
                        namespace: "default".into(),
                        regarding: Some(node_regarding(node, uid.as_deref())),
                        reason: reason_code,
                        action,
                        note,
                        warning,
                    },
                )
            }
            Err(stop) => Carried::quiet(self.stop_outcome(&key, stop)),
        }
    }

    /// Reads the node, computes its new taints (and `spec.unschedulable`) and sends a JSON patch
    /// that first `test`s the taint list it read, so a concurrent change by another manager
    /// fails the patch instead of being overwritten; then re-reads and tries again, a few times.
    /// Returns whether anything changed, and the node's UID.
    async fn edit_node(
        &self,
        node: &str,
        edit: impl Fn(&NodeView) -> NodeEdit,
    ) -> Result<(bool, Option<String>), Stop> {
        let path = format!("/api/v1/nodes/{}", path_segment(node));
        let mut last = String::new();
        for _ in 0..NODE_PATCH_ATTEMPTS {
            let obj = self
                .send(Method::GET, &path, None)
                .await
                .map_err(|e| stop_of(&format!("reading node {node}"), &e))?;
            let view = NodeView::of(&obj);
            let want = edit(&view);
            let taints_change = want.taints != view.taints;
            let unschedulable_change = want.unschedulable.is_some_and(|u| u != view.unschedulable);
            if !taints_change && !unschedulable_change {
                return Ok((false, view.uid));
            }
            let mut ops = vec![json!({"op": "test", "path": "/spec/taints", "value": view.raw_taints})];
            if taints_change {
                ops.push(json!({"op": "add", "path": "/spec/taints", "value": want.taints}));
            }
            if let Some(u) = want.unschedulable.filter(|_| unschedulable_change) {
                ops.push(
                    json!({"op": "test", "path": "/spec/unschedulable", "value": view.raw_unschedulable}),
                );
                ops.push(json!({"op": "add", "path": "/spec/unschedulable", "value": u}));
            }
            let patch = Value::Array(ops);
            let patch_path = format!("{path}{}", self.write_query());
            match self.send(Method::PATCH, &patch_path, Some((Body::JsonPatch, &patch))).await {
                Ok(obj) => {
                    let uid = obj["metadata"]["uid"].as_str().map(str::to_string).or(view.uid);
                    return Ok((true, uid));
                }
                Err(e) if is_failed_test(&e) => last = e.describe(),
                Err(e) => return Err(stop_of(&format!("patching node {node}"), &e)),
            }
        }
        Err(Stop::Retry(format!(
            "node {node} changed under each of {NODE_PATCH_ATTEMPTS} taint patches; last: {last}"
        )))
    }

    /// A repair request: node condition [`REPAIR_REQUESTED_CONDITION`] (True, reason the repair
    /// kind in CamelCase) through `nodes/status`, and label [`REPAIR_LABEL`]`=<kind>` on the node.
    async fn request_repair(
        &self,
        node: &str,
        device: Option<&DeviceKey>,
        kind: &str,
        kind_reason: &str,
        reason: &str,
    ) -> Carried {
        let key = format!("node/{node}");
        let now = wire::rfc3339_seconds(self.now());
        let message = match device {
            Some(d) => format!("{kind} requested for device {}: {reason}", d.id),
            None => format!("{kind} requested: {reason}"),
        };
        let status = json!({"status": {"conditions": [{
            "type": REPAIR_REQUESTED_CONDITION,
            "status": "True",
            "reason": kind_reason,
            "message": message,
            "lastHeartbeatTime": now,
            "lastTransitionTime": now,
        }]}});
        let node_path = format!("/api/v1/nodes/{}", path_segment(node));
        let status_path = format!("{node_path}/status{}", self.write_query());
        let obj =
            match self.send(Method::PATCH, &status_path, Some((Body::StrategicMergePatch, &status))).await {
                Ok(obj) => obj,
                Err(e) => return Carried::quiet(self.failed_call(&key, "setting the repair condition", &e)),
            };
        let label = json!({"metadata": {"labels": {REPAIR_LABEL: kind}}});
        let label_path = format!("{node_path}{}", self.write_query());
        if let Err(e) = self.send(Method::PATCH, &label_path, Some((Body::MergePatch, &label))).await {
            return Carried::quiet(self.failed_call(&key, "labelling the node for repair", &e));
        }
        self.settle(&key);
        Carried::with(
            ActionOutcome::Done,
            EventSpec {
                namespace: "default".into(),
                regarding: Some(node_regarding(node, obj["metadata"]["uid"].as_str())),
                reason: "DevhealRepairRequested",
                action: "RequestRepair",
                note: format!(
                    "{REPAIR_REQUESTED_CONDITION}={kind_reason}, label {REPAIR_LABEL}={kind}: {message}"
                ),
                warning: true,
            },
        )
    }

    /// The end of a repair request: condition [`REPAIR_REQUESTED_CONDITION`] False (reason
    /// `RepairDone`) and label [`REPAIR_LABEL`] removed. A node without devheal's condition is
    /// left alone (nothing to withdraw: the request was never written, or someone cleared it).
    async fn withdraw_repair(&self, node: &str, reason: &str) -> Carried {
        let key = format!("node/{node}");
        let node_path = format!("/api/v1/nodes/{}", path_segment(node));
        let current = match self.send(Method::GET, &node_path, None).await {
            Ok(obj) => obj,
            Err(e) if e.code() == Some(404) => return Carried::quiet(ActionOutcome::Done),
            Err(e) => return Carried::quiet(self.failed_call(&key, "reading the node", &e)),
        };
        let standing = current["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter().any(|c| c["type"] == REPAIR_REQUESTED_CONDITION && c["status"] == "True")
        });
        let labelled = current["metadata"]["labels"].get(REPAIR_LABEL).is_some();
        if !standing && !labelled {
            self.settle(&key);
            return Carried::quiet(ActionOutcome::Done);
        }
        let now = wire::rfc3339_seconds(self.now());
        if standing {
            let status = json!({"status": {"conditions": [{
                "type": REPAIR_REQUESTED_CONDITION,
                "status": "False",
                "reason": "RepairDone",
                "message": reason,
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
            }]}});
            let status_path = format!("{node_path}/status{}", self.write_query());
            if let Err(e) =
                self.send(Method::PATCH, &status_path, Some((Body::StrategicMergePatch, &status))).await
            {
                return Carried::quiet(self.failed_call(&key, "clearing the repair condition", &e));
            }
        }
        if labelled {
            let label = json!({"metadata": {"labels": {REPAIR_LABEL: null}}});
            let label_path = format!("{node_path}{}", self.write_query());
            if let Err(e) = self.send(Method::PATCH, &label_path, Some((Body::MergePatch, &label))).await {
                return Carried::quiet(self.failed_call(&key, "removing the repair label", &e));
            }
        }
        self.settle(&key);
        Carried::with(
            ActionOutcome::Done,
            EventSpec {
                namespace: "default".into(),
                regarding: Some(node_regarding(node, current["metadata"]["uid"].as_str())),
                reason: "DevhealRepairWithdrawn",
                action: "WithdrawRepair",
                note: format!("{REPAIR_REQUESTED_CONDITION}=False, label {REPAIR_LABEL} removed: {reason}"),
                warning: false,
            },
        )
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

// ---- node taints -------------------------------------------------------------------------

/// What the actuator reads from a node.
struct NodeView {
    uid: Option<String>,
    /// `spec.taints` exactly as read (`null` when absent), for the patch's `test`.
    raw_taints: Value,
    taints: Vec<Value>,
    raw_unschedulable: Value,
    unschedulable: bool,
}

impl NodeView {
    fn of(obj: &Value) -> Self {
        let raw_taints = obj["spec"]["taints"].clone();
        let raw_unschedulable = obj["spec"]["unschedulable"].clone();
        NodeView {
            uid: obj["metadata"]["uid"].as_str().map(str::to_string),
            taints: raw_taints.as_array().cloned().unwrap_or_default(),
            raw_taints,
            unschedulable: raw_unschedulable.as_bool().unwrap_or(false),
            raw_unschedulable,
        }
    }
}

/// The node as it should be: every taint (other managers' untouched, in their order), and the
/// `spec.unschedulable` wanted (`None`: leave it).
struct NodeEdit {
    taints: Vec<Value>,
    unschedulable: Option<bool>,
}

fn same_taint(t: &Value, key: &str) -> bool {
    t["key"] == key && t["effect"] == "NoSchedule"
}

/// A JSON patch whose `test` failed, or a write conflict. The API server answers a JSON patch
/// that does not apply with 422 and only the generic message "the server rejected our request
/// due to an error in our request" (the patch library's text is not passed on), while a patch
/// that applies but yields an invalid node gets 422 "Node \"x\" is invalid: ..." with causes.
/// Our patches only `test` and `add` under `/spec`, so the generic 422 is a failed test; the
/// patch library's own wording is matched too, should a server pass it on.
fn is_failed_test(e: &CallError) -> bool {
    match e {
        CallError::Status { code: 409, .. } => true,
        CallError::Status { code: 422, message, cause_fields, .. } => {
            let m = message.to_ascii_lowercase();
            (cause_fields.is_empty() && m.contains("the server rejected our request"))
                || m.contains("testing value")
                || m.contains("test operation")
        }
        _ => false,
    }
}

fn node_regarding(node: &str, uid: Option<&str>) -> Value {
    let mut r = json!({"apiVersion": "v1", "kind": "Node", "name": node});
    if let Some(uid) = uid {
        r["uid"] = json!(uid);
    }
    r
}

// ---- gangs -------------------------------------------------------------------------------

/// The parts of a listed pod that [`gang_of`] reads.
fn membership_view(pod: &Value, namespace: &str) -> PodInfo {
    let strings = |v: &Value| {
        v.as_object()
            .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
            .unwrap_or_default()
    };
    PodInfo {
        namespace: namespace.to_string(),
        labels: strings(&pod["metadata"]["labels"]),
        annotations: strings(&pod["metadata"]["annotations"]),
        ..PodInfo::default()
    }
}

fn pod_ref(pod: &Value) -> Option<PodRef> {
    let m = &pod["metadata"];
    Some(PodRef {
        namespace: m["namespace"].as_str()?.to_string(),
        name: m["name"].as_str()?.to_string(),
        uid: m["uid"].as_str()?.to_string(),
    })
}

fn created_at(pod: &Value) -> Option<Time> {
    let t: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time =
        serde_json::from_value(pod["metadata"]["creationTimestamp"].clone()).ok()?;
    i64::try_from(t.0.as_nanosecond()).ok().map(Time::from_nanos)
}

/// The Event's subject for a gang: the controlling owner of its first member (a Job, a
/// PyTorchJob, a StatefulSet), else that member.
fn owner_regarding(members: &[Value]) -> Option<Value> {
    let first = members.first()?;
    let namespace = first["metadata"]["namespace"].clone();
    let owner = first["metadata"]["ownerReferences"]
        .as_array()
        .and_then(|os| os.iter().find(|o| o["controller"] == true))
        .cloned();
    match owner {
        Some(o) => Some(json!({
            "apiVersion": o["apiVersion"], "kind": o["kind"], "namespace": namespace,
            "name": o["name"], "uid": o["uid"],
        })),
        None => pod_ref(first).map(|p| KubeActuator::pod_regarding(&p)),
    }
}

// ---- names -------------------------------------------------------------------------------

/// The DRA device a device key names, in whichever shape it was written
/// ([`devheal_core::identity::dra_device`]): `<driver>/<pool>/<device>` (the kubelet's
/// ResourceID format, which the agent publishes and a pod's status carries under
/// `claim:<claim>`, or the NVIDIA driver's CDI id of the claim's device there), or
/// `<pool>/<device>` under the driver's name (PodResources). Driver names are DNS subdomains and
/// device names DNS labels (neither has a slash); pool names may have slashes. Device-plugin ids
/// (a GPU UUID, a legacy MIG UUID) and other CDI ids are not DRA devices.
pub fn dra_device(device: &DeviceKey) -> Option<devheal_core::DraDevice> {
    // A pod status' CDI id of a claim's device is one too (its pool is the node's name).
    let key = devheal_core::canonical_key(device);
    devheal_core::identity::dra_device(&key.resource, &key.id)
}

/// 64-bit FNV-1a: a small, stable hash for name suffixes (std's hasher may change between
/// Rust releases, and names must not).
fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            // A separator no UTF-8 text contains, so that ("ab", "c") and ("a", "bc") differ.
            h ^= 0xff;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        for b in part.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

fn device_hash(device: &DeviceKey) -> String {
    format!("{:08x}", fnv1a(&[&device.node, &device.resource, &device.id]) >> 32)
}

/// The DeviceTaintRule of a device: `devheal-<node>-<id>` as a DNS-1123 label (lower case,
/// `[a-z0-9-]`, at most 63 characters) ending in 8 hex digits of a hash of the whole key, so
/// that two devices whose names sanitise alike still get two rules.
pub fn device_taint_rule_name(device: &DeviceKey) -> String {
    let raw = format!("devheal-{}-{}", device.node, device.id);
    let mut stem: String =
        raw.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    stem.truncate(63 - 9);
    let stem = stem.trim_end_matches('-');
    format!("{stem}-{}", device_hash(device))
}

/// The node taint key of a quarantined device, where no DeviceTaintRule can be used: one key
/// per device (a node's taints are unique by key and effect).
pub fn node_quarantine_taint_key(device: &DeviceKey) -> String {
    format!("{DEVICE_QUARANTINE_TAINT}-{}", device_hash(device))
}

/// `s` as a label value: `[A-Za-z0-9._-]`, at most 63, starting and ending alphanumeric.
fn label_value(s: &str) -> String {
    let mapped: String = s
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '-' })
        .take(63)
        .collect();
    mapped.trim_matches(|c: char| !c.is_ascii_alphanumeric()).to_string()
}

fn is_label_value(s: &str) -> bool {
    !s.is_empty() && label_value(s) == s
}

/// `reset_device` → `ResetDevice`.
fn camel(s: &str) -> String {
    s.split('_')
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut cs = w.chars();
            cs.next().map(|c| c.to_ascii_uppercase().to_string() + cs.as_str()).unwrap_or_default()
        })
        .collect()
}

fn camel_static(label: &str) -> &'static str {
    match label {
        "mark_pod" => "MarkPod",
        "evict_pod" => "Evict",
        "restart_gang" => "RestartGang",
        "quarantine_device" => "Quarantine",
        "release_device" => "Release",
        "cordon_node" => "Cordon",
        "uncordon_node" => "Uncordon",
        "request_repair" => "RequestRepair",
        "withdraw_repair" => "WithdrawRepair",
        "fail_workload" => "FailWorkload",
        _ => "Report",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
