//! Publishing: the node's `NodeDeviceHealth` status, the node condition `devheal.io/DevicesHealthy`
//! and Events on device health transitions.
//!
//! The event loop computes a [`Publication`] after every batch of source events and hands the
//! latest one to [`run_publisher`] through a `watch` channel, so publications coalesce while a
//! write is in flight and the loop never waits for the API server. The publisher task writes
//!
//! - the status when it changed (the loop only sends significant changes: health, reasons,
//!   pods, sources; not a reason's count or last sighting) and on every heartbeat (default 60 s,
//!   which also refreshes counts and `lastHeartbeat`), at most one write per `min_interval`;
//! - the node condition when its status, reason or message changed, and on the heartbeat;
//! - one Event per device health transition, best effort.
//!
//! A failed status write is retried with exponential backoff (1 s doubling to 30 s) and counted
//! in the metrics; the state it would have written is never lost, since the next attempt takes
//! the latest publication.
//!
//! [`Publisher`] is the seam: [`KubePublisher`] server-side-applies through the Kubernetes API
//! (field manager `devheal-agent`, forced), [`JsonLinesPublisher`] prints JSON lines for
//! `devheal agent --no-kube`.

use std::future::Future;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use devheal_core::{Health, Time};
use devheal_k8s::crd::{HealthSummary, NodeDeviceHealth, NodeDeviceHealthStatus, k8s_time};
use k8s_openapi::api::core::v1::{Node, ObjectReference};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::metrics::AgentMetrics;

/// The field manager of every server-side apply the agent sends.
pub const FIELD_MANAGER: &str = "devheal-agent";
/// The node condition the agent owns.
pub const CONDITION_TYPE: &str = "devheal.io/DevicesHealthy";

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("{what} failed: {message}")]
    Api { what: &'static str, message: String, not_found: bool },
    #[error("cannot write {what}: {message}")]
    Output { what: &'static str, message: String },
}

impl PublishError {
    fn from_kube(what: &'static str, e: kube::Error) -> Self {
        let not_found = matches!(&e, kube::Error::Api(status) if status.is_not_found());
        PublishError::Api { what, message: e.to_string(), not_found }
    }
}

/// How long one request to the API server may wait for its answer. The kube client bounds
/// connecting and writing; nothing bounds the answer (its watches must stay open), so each
/// write here is bounded, and one that gets no answer in time is retried like any failure.
pub const REQUEST_TIMEOUT: StdDuration = StdDuration::from_secs(10);

/// `request`, or an error naming `what` if it has no answer within [`REQUEST_TIMEOUT`].
async fn bounded<T>(
    what: &'static str,
    request: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, PublishError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
        Ok(result) => result.map_err(|e| PublishError::from_kube(what, e)),
        Err(_) => Err(PublishError::Api {
            what,
            message: format!("no answer within {} s", REQUEST_TIMEOUT.as_secs()),
            not_found: false,
        }),
    }
}

/// The node condition `devheal.io/DevicesHealthy`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DevicesCondition {
    /// `True`, `False` or `Unknown`.
    pub status: &'static str,
    pub reason: &'static str,
    pub message: String,
}

/// The condition for a node's device summary: `False` when a device is Unhealthy; `Unknown` when
/// none is but the agent has lost sight of one; `True` otherwise (Degraded devices still work).
pub fn devices_condition(
    summary: &HealthSummary,
    unhealthy: &[String],
    unknown: &[String],
) -> DevicesCondition {
    let list = |ids: &[String]| {
        let mut shown: Vec<&str> = ids.iter().take(8).map(String::as_str).collect();
        if ids.len() > shown.len() {
            shown.push("...");
        }
        shown.join(", ")
    };
    if summary.unhealthy > 0 {
        DevicesCondition {
            status: "False",
            reason: "DevicesUnhealthy",
            message: format!(
                "{} of {} device(s) unhealthy: {}",
                summary.unhealthy,
                summary.devices,
                list(unhealthy)
            ),
        }
    } else if summary.unknown > 0 {
        DevicesCondition {
            status: "Unknown",
            reason: "DevicesUnknown",
            message: format!(
                "the agent has lost sight of {} of {} device(s): {}",
                summary.unknown,
                summary.devices,
                list(unknown)
            ),
        }
    } else if summary.degraded > 0 {
        DevicesCondition {
            status: "True",
            reason: "DevicesDegraded",
            message: format!(
                "{} of {} device(s) degraded or on probation",
                summary.degraded, summary.devices
            ),
        }
    } else if summary.devices == 0 {
        DevicesCondition {
            status: "True",
            reason: "NoDevices",
            message: "no devices found on this node".into(),
        }
    } else {
        DevicesCondition {
            status: "True",
            reason: "AllDevicesHealthy",
            message: format!("all {} device(s) healthy", summary.devices),
        }
    }
}

/// One device changing health, for an Event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeviceTransition {
    pub device: String,
    pub resource: String,
    pub from: Option<Health>,
    pub to: Health,
    /// The standing reasons, worst first, in one line.
    pub reasons: String,
    /// `namespace/pod` of the pods bound to the device.
    pub pods: Vec<String>,
    /// Not a change of health but a step of a reset the controller requested
    /// ([`crate::reset`]): the phase reached and what happened.
    pub reset: Option<(devheal_k8s::crd::DeviceResetPhase, String)>,
}

impl DeviceTransition {
    /// The Event reason (CamelCase, stable): `DeviceUnhealthy`, `DeviceDegraded`, `DeviceHealthy`,
    /// `DeviceHealthUnknown`.
    pub fn reason(&self) -> &'static str {
        use devheal_k8s::crd::DeviceResetPhase as P;
        if let Some((phase, _)) = &self.reset {
            return match phase {
                P::Pending => "DeviceResetStarted",
                P::Succeeded => "DeviceResetSucceeded",
                P::Failed => "DeviceResetFailed",
                P::Refused => "DeviceResetRefused",
                P::WouldReset => "DeviceResetDryRun",
            };
        }
        match self.to {
            Health::Unhealthy => "DeviceUnhealthy",
            Health::Degraded => "DeviceDegraded",
            Health::Healthy => "DeviceHealthy",
            Health::Unknown => "DeviceHealthUnknown",
        }
    }

    pub fn is_warning(&self) -> bool {
        use devheal_k8s::crd::DeviceResetPhase as P;
        match &self.reset {
            Some((phase, _)) => matches!(phase, P::Failed | P::Refused),
            None => self.to != Health::Healthy,
        }
    }

    /// The Event's action: `ResetDevice` for a reset's steps, `UpdateDeviceHealth` otherwise.
    pub fn action(&self) -> &'static str {
        if self.reset.is_some() { "ResetDevice" } else { "UpdateDeviceHealth" }
    }

    pub fn note(&self) -> String {
        let from = self.from.map_or("new", Health::as_str);
        let mut note = match &self.reset {
            Some((_, message)) => format!("device {} ({}) reset: {message}", self.device, self.resource),
            None => format!("device {} ({}) {} -> {}", self.device, self.resource, from, self.to.as_str()),
        };
        if !self.reasons.is_empty() {
            note.push_str(": ");
            note.push_str(&self.reasons);
        }
        if !self.pods.is_empty() {
            note.push_str("; pods: ");
            note.push_str(&self.pods.join(", "));
        }
        // The Events API limits a note to 1 kB.
        if note.len() > 1000 {
            let mut end = 997;
            while !note.is_char_boundary(end) {
                end -= 1;
            }
            note.truncate(end);
            note.push_str("...");
        }
        note
    }
}

/// What the loop hands the publisher: the whole object and the node condition.
#[derive(Clone, Debug, PartialEq)]
pub struct Publication {
    pub object: NodeDeviceHealth,
    pub condition: DevicesCondition,
}

/// Where publications go.
pub trait Publisher: Send + 'static {
    /// Write the object's status (creating the object first when it does not exist).
    fn apply_status(
        &mut self,
        object: &NodeDeviceHealth,
    ) -> impl Future<Output = Result<(), PublishError>> + Send;
    /// Write the node condition; `since` is when its status last changed, as this agent saw it.
    fn apply_condition(
        &mut self,
        node: &str,
        condition: &DevicesCondition,
        since: Time,
        now: Time,
    ) -> impl Future<Output = Result<(), PublishError>> + Send;
    fn emit_event(
        &mut self,
        node: &str,
        transition: &DeviceTransition,
    ) -> impl Future<Output = Result<(), PublishError>> + Send;
    /// The status this node's agent last published, read back at start (see
    /// [`crate::restore`]); `Ok(None)` where there is none, or nowhere to read it from.
    fn last_published(
        &mut self,
        _node: &str,
    ) -> impl Future<Output = Result<Option<NodeDeviceHealthStatus>, PublishError>> + Send {
        async { Ok(None) }
    }
}

/// Server-side apply through the Kubernetes API.
pub struct KubePublisher {
    objects: Api<NodeDeviceHealth>,
    nodes: Api<Node>,
    recorder: Recorder,
    params: PatchParams,
    /// The object is known to exist (applied once by this process).
    created: bool,
    /// The node, as Events refer to it (its uid once read).
    node_ref: Option<ObjectReference>,
    /// The condition's `lastTransitionTime` already on the node, read once at the first write.
    existing_condition: Option<Option<(String, k8s_openapi::apimachinery::pkg::apis::meta::v1::Time)>>,
}

impl KubePublisher {
    pub fn new(client: kube::Client) -> Self {
        let instance = std::env::var("POD_NAME").ok().filter(|s| !s.is_empty());
        KubePublisher {
            objects: Api::all(client.clone()),
            nodes: Api::all(client.clone()),
            recorder: Recorder::new(client, Reporter { controller: FIELD_MANAGER.into(), instance }),
            params: PatchParams::apply(FIELD_MANAGER).force(),
            created: false,
            node_ref: None,
            existing_condition: None,
        }
    }

    async fn ensure_object(&mut self, object: &NodeDeviceHealth) -> Result<(), PublishError> {
        let name = object.metadata.name.clone().unwrap_or_default();
        let body = serde_json::json!({
            "apiVersion": "devheal.io/v1alpha1",
            "kind": "NodeDeviceHealth",
            "metadata": { "name": name },
            "spec": object.spec,
        });
        bounded("apply NodeDeviceHealth", self.objects.patch(&name, &self.params, &Patch::Apply(&body)))
            .await?;
        self.created = true;
        Ok(())
    }

    async fn read_node(&mut self, node: &str) {
        if self.existing_condition.is_some() {
            return;
        }
        let found = bounded("read the node", self.nodes.get(node)).await.ok();
        let uid = found.as_ref().and_then(|n| n.metadata.uid.clone());
        self.node_ref = Some(ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node.to_string()),
            uid,
            ..ObjectReference::default()
        });
        self.existing_condition = Some(found.and_then(|n| {
            n.status?.conditions?.into_iter().find(|c| c.type_ == CONDITION_TYPE).and_then(|c| {
                let at = c.last_transition_time?;
                Some((c.status, at))
            })
        }));
    }
}

impl Publisher for KubePublisher {
    async fn apply_status(&mut self, object: &NodeDeviceHealth) -> Result<(), PublishError> {
        if !self.created {
            self.ensure_object(object).await?;
        }
        let name = object.metadata.name.clone().unwrap_or_default();
        let body = serde_json::json!({
            "apiVersion": "devheal.io/v1alpha1",
            "kind": "NodeDeviceHealth",
            "metadata": { "name": name },
            "status": object.status,
        });
        let what = "apply NodeDeviceHealth status";
        match bounded(what, self.objects.patch_status(&name, &self.params, &Patch::Apply(&body))).await {
            Ok(_) => Ok(()),
            Err(e) => {
                if matches!(e, PublishError::Api { not_found: true, .. }) {
                    // Deleted behind our back: create it again on the next attempt.
                    self.created = false;
                }
                Err(e)
            }
        }
    }

    async fn apply_condition(
        &mut self,
        node: &str,
        condition: &DevicesCondition,
        since: Time,
        now: Time,
    ) -> Result<(), PublishError> {
        self.read_node(node).await;
        // Keep the transition time already on the node when the status is the same.
        let transition = match self.existing_condition.as_ref().and_then(Option::as_ref) {
            Some((status, at)) if status == condition.status => at.clone(),
            _ => k8s_time(since),
        };
        let body = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": { "name": node },
            "status": { "conditions": [{
                "type": CONDITION_TYPE,
                "status": condition.status,
                "reason": condition.reason,
                "message": condition.message,
                "lastHeartbeatTime": k8s_time(now),
                "lastTransitionTime": transition,
            }]},
        });
        bounded("apply node condition", self.nodes.patch_status(node, &self.params, &Patch::Apply(&body)))
            .await?;
        self.existing_condition = Some(Some((condition.status.to_string(), transition)));
        Ok(())
    }

    async fn last_published(&mut self, node: &str) -> Result<Option<NodeDeviceHealthStatus>, PublishError> {
        let found = bounded("read the last NodeDeviceHealth", self.objects.get_opt(node)).await?;
        Ok(found.and_then(|o| o.status))
    }

    async fn emit_event(&mut self, node: &str, transition: &DeviceTransition) -> Result<(), PublishError> {
        self.read_node(node).await;
        let regarding = self.node_ref.clone().unwrap_or_default();
        let secondary = Some(ObjectReference {
            api_version: Some("devheal.io/v1alpha1".into()),
            kind: Some("NodeDeviceHealth".into()),
            name: Some(node.to_string()),
            ..ObjectReference::default()
        });
        let event = Event {
            type_: if transition.is_warning() { EventType::Warning } else { EventType::Normal },
            reason: transition.reason().into(),
            note: Some(transition.note()),
            action: transition.action().into(),
            secondary,
        };
        bounded("create Event", self.recorder.publish(&event, &regarding)).await
    }
}

/// `devheal agent --no-kube`: one JSON object per line on a writer (stdout), one line per write
/// the Kubernetes publisher would make: `{"type":"status","object":...}`,
/// `{"type":"condition",...}`, `{"type":"event",...}`.
pub struct JsonLinesPublisher<W: Write + Send + 'static> {
    out: W,
}

impl<W: Write + Send + 'static> JsonLinesPublisher<W> {
    pub fn new(out: W) -> Self {
        JsonLinesPublisher { out }
    }

    fn line(&mut self, what: &'static str, value: serde_json::Value) -> Result<(), PublishError> {
        let err = |e: std::io::Error| PublishError::Output { what, message: e.to_string() };
        let text = value.to_string();
        self.out.write_all(text.as_bytes()).map_err(err)?;
        self.out.write_all(b"\n").map_err(err)?;
        self.out.flush().map_err(err)
    }
}

impl<W: Write + Send + 'static> Publisher for JsonLinesPublisher<W> {
    async fn apply_status(&mut self, object: &NodeDeviceHealth) -> Result<(), PublishError> {
        let object = serde_json::to_value(object).unwrap_or_default();
        self.line("status", serde_json::json!({ "type": "status", "object": object }))
    }

    async fn apply_condition(
        &mut self,
        node: &str,
        condition: &DevicesCondition,
        since: Time,
        now: Time,
    ) -> Result<(), PublishError> {
        self.line(
            "condition",
            serde_json::json!({
                "type": "condition", "node": node, "conditionType": CONDITION_TYPE,
                "status": condition.status, "reason": condition.reason, "message": condition.message,
                "lastTransitionTime": k8s_time(since), "lastHeartbeatTime": k8s_time(now),
            }),
        )
    }

    async fn emit_event(&mut self, node: &str, transition: &DeviceTransition) -> Result<(), PublishError> {
        self.line(
            "event",
            serde_json::json!({
                "type": "event", "node": node,
                "eventType": if transition.is_warning() { "Warning" } else { "Normal" },
                "reason": transition.reason(), "note": transition.note(),
            }),
        )
    }
}

/// How often and how fast the publisher writes.
#[derive(Clone, Debug)]
pub struct PublishConfig {
    /// Write the status (and the condition) at least this often, changed or not.
    pub heartbeat: StdDuration,
    /// Least time between two status writes; changes within it coalesce into one write.
    pub min_interval: StdDuration,
}

impl Default for PublishConfig {
    fn default() -> Self {
        PublishConfig { heartbeat: StdDuration::from_secs(60), min_interval: StdDuration::from_millis(100) }
    }
}

/// The wall clock as the engine's time.
pub fn wall_now() -> Time {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos().min(i64::MAX as u128) as i64)
        .unwrap_or(0);
    Time::from_nanos(nanos)
}

const RETRY_FIRST: StdDuration = StdDuration::from_secs(1);
const RETRY_MAX: StdDuration = StdDuration::from_secs(30);

/// The delays between failed status writes: doubling from [`RETRY_FIRST`] to [`RETRY_MAX`], each
/// with up to its own length again of random jitter, so that the agents of a whole fleet that
/// lost the API server together do not come back in step. Also the delays between reads of the
/// last report at start ([`crate::run`]).
pub(crate) fn retry_delays() -> impl Iterator<Item = StdDuration> {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(RETRY_FIRST)
        .with_max_delay(RETRY_MAX)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
}

/// The publisher task: runs until `shutdown` turns true or the loop drops its sender, then makes
/// one last attempt at a status write that is still pending.
pub async fn run_publisher<P: Publisher>(
    mut publisher: P,
    node: String,
    mut updates: watch::Receiver<Option<Publication>>,
    mut transitions: mpsc::Receiver<DeviceTransition>,
    metrics: Arc<AgentMetrics>,
    config: PublishConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut pending = false;
    let mut last_write: Option<Instant> = None;
    let mut next_heartbeat = Instant::now() + config.heartbeat;
    let mut retry_at: Option<Instant> = None;
    let mut delays = retry_delays();
    let mut written_condition: Option<DevicesCondition> = None;
    let mut condition_since: Option<(&'static str, Time)> = None;
    let mut heartbeat_due = false;
    let mut transitions_open = true;
    loop {
        let stopping;
        tokio::select! {
            changed = updates.changed() => {
                stopping = changed.is_err();
                pending = pending || !stopping;
            }
            transition = transitions.recv(), if transitions_open => {
                match transition {
                    Some(t) => {
                        let ok = publisher.emit_event(&node, &t).await;
                        if let Err(e) = &ok {
                            tracing::warn!(error = %e, "event not written");
                        }
                        metrics.published("event", ok.is_ok());
                    }
                    None => transitions_open = false,
                }
                continue;
            }
            _ = tokio::time::sleep_until(next_heartbeat) => {
                stopping = false;
                pending = true;
                heartbeat_due = true;
            }
            _ = sleep_until_some(retry_at) => {
                stopping = false;
                retry_at = None;
            }
            _ = shutdown.changed() => {
                stopping = true;
            }
        }
        if stopping && !pending {
            return;
        }
        if !pending || retry_at.is_some() {
            continue;
        }
        if let Some(last) = last_write
            && !stopping
        {
            tokio::time::sleep_until(last + config.min_interval).await;
        }
        let Some(publication) = updates.borrow_and_update().clone() else {
            if stopping {
                return;
            }
            continue;
        };
        let now = wall_now();
        let mut object = publication.object;
        if let Some(status) = object.status.as_mut() {
            status.last_heartbeat = Some(k8s_time(now));
        }
        last_write = Some(Instant::now());
        match publisher.apply_status(&object).await {
            Ok(()) => {
                metrics.published("status", true);
                metrics.last_publish.set(now.as_secs_f64());
                pending = false;
                delays = retry_delays();
                next_heartbeat = Instant::now() + config.heartbeat;
            }
            Err(e) => {
                let backoff = delays.next().unwrap_or(RETRY_MAX);
                tracing::warn!(error = %e, retry_in = ?backoff, "NodeDeviceHealth status not written");
                metrics.published("status", false);
                retry_at = Some(Instant::now() + backoff);
            }
        }
        let condition = publication.condition;
        let since = match condition_since {
            Some((status, since)) if status == condition.status => since,
            _ => now,
        };
        condition_since = Some((condition.status, since));
        if heartbeat_due || written_condition.as_ref() != Some(&condition) {
            match publisher.apply_condition(&node, &condition, since, now).await {
                Ok(()) => {
                    metrics.published("condition", true);
                    written_condition = Some(condition);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "node condition not written");
                    metrics.published("condition", false);
                }
            }
        }
        heartbeat_due = false;
        if stopping {
            return;
        }
    }
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => futures::future::pending().await,
    }
}

#[cfg(test)]
mod retry_tests {
    use super::*;

    /// Doubling from 1 s to 30 s with jitter: each delay lies in [d, 2d) (capped), and two
    /// agents' sequences differ.
    #[test]
    fn retries_double_with_jitter_up_to_the_cap() {
        let a: Vec<StdDuration> = retry_delays().take(8).collect();
        let b: Vec<StdDuration> = retry_delays().take(8).collect();
        let mut nominal = RETRY_FIRST;
        for d in &a {
            assert!(*d >= nominal.min(RETRY_MAX), "{a:?}");
            assert!(*d <= (nominal * 2).min(RETRY_MAX * 2), "{a:?}");
            nominal = (nominal * 2).min(RETRY_MAX);
        }
        assert_ne!(a, b, "jittered");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(devices: u32, healthy: u32, degraded: u32, unhealthy: u32, unknown: u32) -> HealthSummary {
        HealthSummary { devices, healthy, degraded, unhealthy, unknown }
    }

    #[test]
    fn the_condition_is_false_only_for_unhealthy_devices_and_unknown_when_blind() {
        let c = devices_condition(&summary(2, 1, 0, 1, 0), &["GPU-1".into()], &[]);
        assert_eq!((c.status, c.reason), ("False", "DevicesUnhealthy"));
        assert!(c.message.contains("GPU-1"), "{}", c.message);
        let c = devices_condition(&summary(2, 1, 0, 0, 1), &[], &["GPU-0".into()]);
        assert_eq!((c.status, c.reason), ("Unknown", "DevicesUnknown"));
        let c = devices_condition(&summary(2, 1, 1, 0, 0), &[], &[]);
        assert_eq!((c.status, c.reason), ("True", "DevicesDegraded"));
        let c = devices_condition(&summary(0, 0, 0, 0, 0), &[], &[]);
        assert_eq!((c.status, c.reason), ("True", "NoDevices"));
        let c = devices_condition(&summary(8, 8, 0, 0, 0), &[], &[]);
        assert_eq!(
            (c.status, c.reason, c.message.as_str()),
            ("True", "AllDevicesHealthy", "all 8 device(s) healthy")
        );
        let many: Vec<String> = (0..12).map(|i| format!("d{i}")).collect();
        let c = devices_condition(&summary(12, 0, 0, 12, 0), &many, &[]);
        assert!(c.message.ends_with("d7, ..."), "{}", c.message);
    }

    /// Records every write; fails the first `fail_first` status writes.
    struct Recording {
        fail_first: usize,
        log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    }

    impl Publisher for Recording {
        async fn apply_status(&mut self, object: &NodeDeviceHealth) -> Result<(), PublishError> {
            let heartbeat = object.status.as_ref().and_then(|s| s.last_heartbeat.clone());
            let mut log = self.log.lock().expect("lock");
            if self.fail_first > 0 {
                self.fail_first -= 1;
                log.push("status failed".into());
                return Err(PublishError::Api { what: "test", message: "503".into(), not_found: false });
            }
            log.push(format!("status heartbeat={}", heartbeat.is_some()));
            Ok(())
        }

        async fn apply_condition(
            &mut self,
            _node: &str,
            condition: &DevicesCondition,
            _since: Time,
            _now: Time,
        ) -> Result<(), PublishError> {
            self.log.lock().expect("lock").push(format!("condition {}", condition.status));
            Ok(())
        }

        async fn emit_event(&mut self, _node: &str, t: &DeviceTransition) -> Result<(), PublishError> {
            self.log.lock().expect("lock").push(format!("event {}", t.reason()));
            Ok(())
        }
    }

    fn publication(condition_status: &'static str) -> Publication {
        let mut object = NodeDeviceHealth::new(
            "n",
            devheal_k8s::crd::NodeDeviceHealthSpec { node_name: "n".into(), ..Default::default() },
        );
        object.status = Some(devheal_k8s::crd::NodeDeviceHealthStatus::default());
        Publication {
            object,
            condition: DevicesCondition { status: condition_status, reason: "R", message: "m".into() },
        }
    }

    #[tokio::test]
    async fn a_failed_write_is_retried_the_heartbeat_rewrites_and_the_condition_follows_changes() {
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = watch::channel(None);
        let (event_tx, event_rx) = mpsc::channel(8);
        let (stop_tx, stop_rx) = watch::channel(false);
        let config = PublishConfig {
            heartbeat: StdDuration::from_millis(2000),
            min_interval: StdDuration::from_millis(10),
        };
        let task = tokio::spawn(run_publisher(
            Recording { fail_first: 1, log: std::sync::Arc::clone(&log) },
            "n".into(),
            rx,
            event_rx,
            std::sync::Arc::new(AgentMetrics::new()),
            config,
            stop_rx,
        ));
        tx.send_replace(Some(publication("True")));
        // The first write fails; the retry 1 to 2 s later (jittered) succeeds and writes the
        // condition.
        for _ in 0..25 {
            if log.lock().expect("lock").len() >= 3 {
                break;
            }
            tokio::time::sleep(StdDuration::from_millis(100)).await;
        }
        assert_eq!(
            *log.lock().expect("lock"),
            vec!["status failed", "condition True", "status heartbeat=true"]
        );
        event_tx
            .send(DeviceTransition {
                device: "d".into(),
                resource: "r".into(),
                from: Some(Health::Healthy),
                to: Health::Unhealthy,
                reasons: String::new(),
                pods: vec![],
                reset: None,
            })
            .await
            .expect("send");
        tx.send_replace(Some(publication("False")));
        // The heartbeat (2 s after the last write) writes status and condition again.
        tokio::time::sleep(StdDuration::from_millis(2700)).await;
        let _ = stop_tx.send(true);
        task.await.expect("publisher stops");
        let log = log.lock().expect("lock").clone();
        // Events go out beside status writes, in either order.
        let writes: Vec<&String> = log.iter().filter(|l| !l.starts_with("event")).collect();
        assert_eq!(
            writes,
            vec![
                "status failed",
                "condition True",
                "status heartbeat=true",
                "status heartbeat=true",
                "condition False",
                "status heartbeat=true",
                "condition False",
            ],
            "{log:?}"
        );
        assert_eq!(log.iter().filter(|l| *l == "event DeviceUnhealthy").count(), 1, "{log:?}");
    }

    #[test]
    fn transitions_have_stable_reasons_and_bounded_notes() {
        let t = DeviceTransition {
            device: "GPU-1".into(),
            resource: "nvidia.com/gpu".into(),
            from: Some(Health::Healthy),
            to: Health::Unhealthy,
            reasons: "kernel_log Xid 79: GPU has fallen off the bus".into(),
            pods: vec!["ml/trainer-0".into()],
            reset: None,
        };
        assert_eq!(t.reason(), "DeviceUnhealthy");
        assert!(t.is_warning());
        assert_eq!(
            t.note(),
            "device GPU-1 (nvidia.com/gpu) Healthy -> Unhealthy: kernel_log Xid 79: GPU has fallen off the bus; pods: ml/trainer-0"
        );
        let long = DeviceTransition { reasons: "é".repeat(2000), ..t.clone() };
        assert!(long.note().len() <= 1000);
        let back = DeviceTransition { from: Some(Health::Degraded), to: Health::Healthy, ..t.clone() };
        assert_eq!((back.reason(), back.is_warning()), ("DeviceHealthy", false));
        use devheal_k8s::crd::DeviceResetPhase as P;
        let step = |phase, m: &str| DeviceTransition { reset: Some((phase, m.to_string())), ..t.clone() };
        let failed = step(P::Failed, "not back after the reset");
        assert_eq!(
            (failed.reason(), failed.is_warning(), failed.action()),
            ("DeviceResetFailed", true, "ResetDevice")
        );
        assert!(failed.note().starts_with("device GPU-1 (nvidia.com/gpu) reset: not back after the reset"));
        let done = step(P::Succeeded, "seen again");
        assert_eq!((done.reason(), done.is_warning()), ("DeviceResetSucceeded", false));
        assert_eq!(step(P::Refused, "off").reason(), "DeviceResetRefused");
        assert_eq!(step(P::WouldReset, "dry").reason(), "DeviceResetDryRun");
        assert_eq!(step(P::Pending, "taken").reason(), "DeviceResetStarted");
    }
}
