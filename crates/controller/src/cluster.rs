//! The cluster as the controller loop sees it: a stream of watch events ([`Cluster`]); actions go
//! through a [`devheal_core::Actuator`].
//!
//! - [`KubeCluster`]: kube-runtime watchers (with backoff; a 410 Gone makes them relist) for
//!   Pods (optionally restricted by label and field selectors), Nodes, NodeDeviceHealth and
//!   FailurePolicy (optionally one namespace), and devheal's own DeviceTaintRules where the
//!   cluster serves them, merged into one stream.
//! - [`FakeCluster`]: an in-memory cluster of Pods, Nodes and NodeDeviceHealth objects whose
//!   [`FakeActuator`] changes it as Kubernetes would: an eviction deletes the pod, a gang restart
//!   deletes the members and re-creates them with the next `jobset.sigs.k8s.io/restart-attempt`
//!   (on their devices, unless quarantined), quarantine records the device, cordon sets the
//!   node unschedulable, a FailurePolicy status write sets the policy's status (and is recorded
//!   in [`FakeRecord::status_writes`]). It can refuse actions with 429s and keep deleted pods
//!   terminating, and it reports every change as a watch event.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use devheal_core::{Action, ActionOutcome, Actuator, DeviceKey, GangId, Health, PlannedAction, RepairKind};
use devheal_k8s::StatusWriteError;
use devheal_k8s::actuator::{CORDONED_BY_DEVHEAL, REPAIR_LABEL, UNHEALTHY_TAINT};
use devheal_k8s::crd::{
    DeviceStatus, FailurePolicy as FailurePolicyObject, FailurePolicyStatus, HealthReasonStatus,
    NodeDeviceHealth, NodeDeviceHealthSpec, NodeDeviceHealthStatus, ReasonSource, k8s_time,
};
use futures::StreamExt;
use futures::channel::mpsc;
use futures::stream::BoxStream;
use k8s_openapi::api::core::v1::{Node, Pod, PodCondition, Taint};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};

use crate::controller::{Clock, ManualClock, describe};
use crate::index::{ClusterEvent, ObjectKind};
use crate::status::PolicyStatusWriter;

/// Where the controller's events come from.
pub trait Cluster {
    /// Every watch's events, merged: each kind starts with a list (`Init` … `InitDone`).
    fn events(&self) -> BoxStream<'static, ClusterEvent>;
}

/// What the Kubernetes watches are restricted to.
#[derive(Clone, Debug, Default)]
pub struct WatchSettings {
    /// A label selector for pods (e.g. `devheal.io/managed=true`).
    pub pod_label_selector: Option<String>,
    /// A field selector for pods (e.g. `status.phase!=Succeeded`).
    pub pod_field_selector: Option<String>,
    /// Watch FailurePolicies in this namespace only.
    pub policy_namespace: Option<String>,
    /// The `resource.k8s.io` version at which the cluster serves DeviceTaintRule, if it does:
    /// devheal's own rules are then watched too, so that a restarted controller finds the rules
    /// an earlier process wrote (see [`crate::leftovers`]).
    pub device_taint_rule_version: Option<String>,
}

/// The label selector of the DeviceTaintRules devheal creates.
const DEVHEAL_RULES: &str = "app.kubernetes.io/managed-by=devheal";

/// The real cluster, through kube-runtime watchers.
#[derive(Clone)]
pub struct KubeCluster {
    client: Client,
    settings: WatchSettings,
}

impl KubeCluster {
    pub fn new(client: Client, settings: WatchSettings) -> Self {
        KubeCluster { client, settings }
    }
}

fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
    kind: ObjectKind,
    wrap: fn(watcher::Event<K>) -> ClusterEvent,
) -> BoxStream<'static, ClusterEvent>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    watcher(api, config)
        .default_backoff()
        .map(move |r| match r {
            Ok(ev) => wrap(ev),
            Err(e) => ClusterEvent::WatchError { kind, message: e.to_string() },
        })
        .boxed()
}

impl Cluster for KubeCluster {
    fn events(&self) -> BoxStream<'static, ClusterEvent> {
        let mut pods = watcher::Config::default();
        if let Some(l) = &self.settings.pod_label_selector {
            pods = pods.labels(l);
        }
        if let Some(f) = &self.settings.pod_field_selector {
            pods = pods.fields(f);
        }
        let policies: Api<FailurePolicyObject> = match &self.settings.policy_namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        };
        let mut streams = vec![
            watch(Api::<Pod>::all(self.client.clone()), pods, ObjectKind::Pod, ClusterEvent::Pod),
            watch(
                Api::<Node>::all(self.client.clone()),
                watcher::Config::default(),
                ObjectKind::Node,
                ClusterEvent::Node,
            ),
            watch(
                Api::<NodeDeviceHealth>::all(self.client.clone()),
                watcher::Config::default(),
                ObjectKind::NodeDeviceHealth,
                ClusterEvent::NodeHealth,
            ),
            watch(policies, watcher::Config::default(), ObjectKind::FailurePolicy, ClusterEvent::Policy),
        ];
        if let Some(version) = &self.settings.device_taint_rule_version {
            let gvk = GroupVersionKind::gvk("resource.k8s.io", version, "DeviceTaintRule");
            let resource = ApiResource::from_gvk_with_plural(&gvk, "devicetaintrules");
            let rules = Api::<DynamicObject>::all_with(self.client.clone(), &resource);
            let config = watcher::Config::default().labels(DEVHEAL_RULES);
            streams.push(watch(rules, config, ObjectKind::DeviceTaintRule, ClusterEvent::DeviceTaintRule));
        }
        futures::stream::select_all(streams).boxed()
    }
}

// ---------------------------------------------------------------------------------- the fake

const GPU: &str = "nvidia.com/gpu";
const JOBSET_NAME: &str = "jobset.sigs.k8s.io/jobset-name";
const RESTART_ATTEMPT: &str = "jobset.sigs.k8s.io/restart-attempt";
const JOB_INDEX: &str = "jobset.sigs.k8s.io/job-index";

/// What the fake has done, for tests to check.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FakeRecord {
    /// Gang restarts carried out, per gang.
    pub gang_restarts: BTreeMap<String, u32>,
    /// Quarantine actions carried out (including ones that found the device already quarantined).
    pub quarantine_calls: u32,
    pub evicted: Vec<String>,
    pub repairs: BTreeSet<(String, Option<String>, &'static str)>,
    /// Nodes whose repair requests were withdrawn, in order.
    pub withdrawn_repairs: Vec<String>,
    pub failed_workloads: Vec<String>,
    pub reports: Vec<String>,
    /// Every action the actuator was handed, with its outcome label.
    pub executed: Vec<(String, &'static str)>,
    /// Every FailurePolicy status the actuator was handed (`namespace/name`, status), in dry
    /// run too (where it changes nothing).
    pub status_writes: Vec<(String, FailurePolicyStatus)>,
}

#[derive(Debug, Default)]
struct FakeState {
    pods: BTreeMap<String, Pod>,
    nodes: BTreeMap<String, Node>,
    health: BTreeMap<String, NodeDeviceHealth>,
    policies: BTreeMap<String, FailurePolicyObject>,
    quarantined: BTreeSet<DeviceKey>,
    /// Deleted pods stay terminating (deletionTimestamp set) until `finish_terminations`.
    graceful: bool,
    /// Members to re-create once the terminating ones are gone: (gang name, template, attempt).
    recreate: Vec<(Pod, u64)>,
    /// Refusals to give, per action label, and the delay they ask for.
    refusals: BTreeMap<&'static str, (u32, u64)>,
    record: FakeRecord,
    resource_version: u64,
    uid_seq: u64,
    subscribers: Vec<mpsc::UnboundedSender<ClusterEvent>>,
}

/// An in-memory cluster. Cloning shares it.
#[derive(Clone, Debug)]
pub struct FakeCluster {
    state: Arc<Mutex<FakeState>>,
    clock: ManualClock,
}

/// Carries out actions on a [`FakeCluster`]; in dry run it only says what it would do.
#[derive(Clone, Debug)]
pub struct FakeActuator {
    cluster: FakeCluster,
    dry_run: bool,
}

fn key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

fn gpu_id(node: &str, i: usize) -> String {
    format!("GPU-{node}-{i}")
}

fn pod_object(
    namespace: &str,
    name: &str,
    uid: &str,
    node: Option<&str>,
    device: Option<&str>,
    labels: &BTreeMap<String, String>,
    started: devheal_core::Time,
) -> Pod {
    let mut status = serde_json::json!({"phase": "Pending"});
    if let (Some(_), Some(device)) = (node, device) {
        status = serde_json::json!({
            "phase": "Running",
            "startTime": k8s_time(started),
            "containerStatuses": [{
                "name": "trainer", "image": "trainer:1", "imageID": "", "ready": true, "restartCount": 0,
                "state": {"running": {"startedAt": k8s_time(started)}},
                "allocatedResourcesStatus": [{"name": GPU, "resources": [{"resourceID": device, "health": "Healthy"}]}]
            }]
        });
    }
    let json = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "uid": uid, "labels": labels},
        "spec": {"nodeName": node, "restartPolicy": "Never", "containers": [{"name": "trainer", "image": "trainer:1"}]},
        "status": status,
    });
    serde_json::from_value(json).unwrap_or_default()
}

fn pod_device(pod: &Pod) -> Option<DeviceKey> {
    let node = pod.spec.as_ref()?.node_name.clone()?;
    let cs = pod.status.as_ref()?.container_statuses.as_ref()?;
    cs.iter()
        .flat_map(|c| c.allocated_resources_status.iter().flatten())
        .flat_map(|rs| rs.resources.iter().flatten().map(move |r| (rs.name.clone(), r.resource_id.clone())))
        .map(|(resource, id)| DeviceKey::new(node.clone(), resource, id))
        .next()
}

impl FakeState {
    fn bump(&mut self) -> String {
        self.resource_version += 1;
        self.resource_version.to_string()
    }

    fn next_uid(&mut self) -> String {
        self.uid_seq += 1;
        format!("uid-{:06}", self.uid_seq)
    }

    fn send(&mut self, make: impl Fn() -> ClusterEvent) {
        self.subscribers.retain(|s| s.unbounded_send(make()).is_ok());
    }

    fn put_pod(&mut self, mut pod: Pod) {
        pod.metadata.resource_version = Some(self.bump());
        let k =
            key(pod.metadata.namespace.as_deref().unwrap_or(""), pod.metadata.name.as_deref().unwrap_or(""));
        self.pods.insert(k, pod.clone());
        self.send(|| ClusterEvent::Pod(watcher::Event::Apply(pod.clone())));
    }

    fn remove_pod(&mut self, k: &str) {
        if let Some(mut pod) = self.pods.remove(k) {
            pod.metadata.resource_version = Some(self.bump());
            self.send(|| ClusterEvent::Pod(watcher::Event::Delete(pod.clone())));
        }
    }

    fn put_node(&mut self, mut node: Node) {
        node.metadata.resource_version = Some(self.bump());
        let name = node.metadata.name.clone().unwrap_or_default();
        self.nodes.insert(name, node.clone());
        self.send(|| ClusterEvent::Node(watcher::Event::Apply(node.clone())));
    }

    fn put_health(&mut self, mut obj: NodeDeviceHealth) {
        obj.metadata.resource_version = Some(self.bump());
        let name = obj.metadata.name.clone().unwrap_or_default();
        self.health.insert(name, obj.clone());
        self.send(|| ClusterEvent::NodeHealth(watcher::Event::Apply(obj.clone())));
    }

    fn put_policy(&mut self, mut obj: FailurePolicyObject) {
        obj.metadata.resource_version = Some(self.bump());
        let k =
            key(obj.metadata.namespace.as_deref().unwrap_or(""), obj.metadata.name.as_deref().unwrap_or(""));
        self.policies.insert(k, obj.clone());
        self.send(|| ClusterEvent::Policy(watcher::Event::Apply(obj.clone())));
    }

    /// Delete a pod as the API server would: at once, or (graceful) by setting its
    /// deletionTimestamp until `finish_terminations`.
    fn delete_pod(&mut self, k: &str, now: devheal_core::Time) {
        if self.graceful {
            if let Some(mut pod) = self.pods.get(k).cloned()
                && pod.metadata.deletion_timestamp.is_none()
            {
                pod.metadata.deletion_timestamp = Some(k8s_time(now));
                self.put_pod(pod);
            }
        } else {
            self.remove_pod(k);
        }
    }

    /// A free device for a re-created pod: its old one unless quarantined, else any free and
    /// unquarantined device on a schedulable node.
    fn place(&self, preferred: Option<&DeviceKey>) -> Option<DeviceKey> {
        let used: BTreeSet<DeviceKey> = self
            .pods
            .values()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter_map(pod_device)
            .collect();
        let usable = |d: &DeviceKey| {
            !used.contains(d)
                && !self.quarantined.contains(d)
                && self
                    .nodes
                    .get(&d.node)
                    .is_some_and(|n| !n.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false))
        };
        if let Some(d) = preferred.filter(|d| usable(d)) {
            return Some(d.clone());
        }
        self.health
            .values()
            .flat_map(|h| {
                let node = h.metadata.name.clone().unwrap_or_default();
                h.status
                    .iter()
                    .flat_map(|s| s.devices.iter())
                    .map(move |d| DeviceKey::new(node.clone(), d.resource.clone(), d.id.clone()))
            })
            .find(|d| usable(d))
    }

    fn create_member(&mut self, template: &Pod, attempt: u64, now: devheal_core::Time) {
        let namespace = template.metadata.namespace.clone().unwrap_or_default();
        let mut labels = template.metadata.labels.clone().unwrap_or_default();
        labels.insert(RESTART_ATTEMPT.to_string(), attempt.to_string());
        let jobset = labels.get(JOBSET_NAME).cloned().unwrap_or_default();
        let index = labels.get(JOB_INDEX).cloned().unwrap_or_default();
        let name = format!("{jobset}-workers-{index}-a{attempt}");
        self.add_pod(&namespace, &name, pod_device(template).as_ref(), &labels, now);
    }

    /// A new pod with a fresh uid, on `preferred` if it is free, else the first free device.
    fn add_pod(
        &mut self,
        namespace: &str,
        name: &str,
        preferred: Option<&DeviceKey>,
        labels: &BTreeMap<String, String>,
        now: devheal_core::Time,
    ) {
        let uid = self.next_uid();
        let device = self.place(preferred);
        let pod = pod_object(
            namespace,
            name,
            &uid,
            device.as_ref().map(|d| d.node.as_str()),
            device.as_ref().map(|d| d.id.as_str()),
            labels,
            now,
        );
        self.put_pod(pod);
    }
}

impl FakeCluster {
    /// An empty cluster whose re-created pods start at `clock`'s time.
    pub fn new(clock: ManualClock) -> Self {
        FakeCluster { state: Arc::new(Mutex::new(FakeState::default())), clock }
    }

    fn lock(&self) -> MutexGuard<'_, FakeState> {
        // A test that panicked while holding the lock poisons it; the state is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Add `nodes` nodes `node-00`… with `gpus` healthy GPUs each (and their NodeDeviceHealth).
    pub fn add_gpu_nodes(&self, nodes: usize, gpus: usize) {
        let mut s = self.lock();
        for n in 0..nodes {
            let name = format!("node-{n:02}");
            let node: Node = serde_json::from_value(serde_json::json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "labels": {"devheal.io/rack": format!("rack-{}", n / 8)}},
                "status": {"conditions": [{"type": "Ready", "status": "True"}]}
            }))
            .unwrap_or_default();
            s.put_node(node);
            let devices = (0..gpus)
                .map(|i| DeviceStatus {
                    id: gpu_id(&name, i),
                    resource: GPU.to_string(),
                    vendor: devheal_core::Vendor::Nvidia,
                    pci_address: Some(format!("0000:{:02x}:00.0", 0x18 + i)),
                    health: Health::Healthy,
                    ..DeviceStatus::default()
                })
                .collect();
            let mut obj = NodeDeviceHealth::new(
                &name,
                NodeDeviceHealthSpec { node_name: name.clone(), ..Default::default() },
            );
            obj.status = Some(NodeDeviceHealthStatus { devices, ..NodeDeviceHealthStatus::default() });
            s.put_health(obj);
        }
    }

    /// Change a node as its kubelet or an operator would (a new boot id, a taint, a label).
    pub fn edit_node(&self, name: &str, edit: impl FnOnce(&mut Node)) {
        let mut s = self.lock();
        if let Some(mut node) = s.nodes.get(name).cloned() {
            edit(&mut node);
            s.put_node(node);
        }
    }

    /// Change every pod as a workload's owner would (an annotation, a label).
    pub fn edit_pods(&self, edit: impl Fn(&mut Pod)) {
        let mut s = self.lock();
        let pods: Vec<Pod> = s.pods.values().cloned().collect();
        for mut pod in pods {
            edit(&mut pod);
            s.put_pod(pod);
        }
    }

    /// A JobSet gang of `size` pods (one GPU each), placed on free devices in node order.
    pub fn add_jobset(&self, namespace: &str, name: &str, size: usize) {
        let now = self.clock.now();
        let mut s = self.lock();
        for i in 0..size {
            let labels: BTreeMap<String, String> = [
                (JOBSET_NAME, name.to_string()),
                (RESTART_ATTEMPT, "0".to_string()),
                (JOB_INDEX, i.to_string()),
                ("jobset.sigs.k8s.io/replicatedjob-name", "workers".to_string()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
            s.add_pod(namespace, &format!("{name}-workers-{i}-a0"), None, &labels, now);
        }
    }

    /// A pod that belongs to no gang, on a free device.
    pub fn add_lone_pod(&self, namespace: &str, name: &str) {
        let now = self.clock.now();
        let mut s = self.lock();
        let labels = BTreeMap::from([("app".to_string(), name.to_string())]);
        s.add_pod(namespace, name, None, &labels, now);
    }

    /// The agent on `node` reports GPU `index` with this health (and an Xid reason).
    pub fn set_gpu_health(&self, node: &str, index: usize, health: Health, xid: u32, message: &str) {
        let now = k8s_time(self.clock.now());
        let mut s = self.lock();
        let Some(mut obj) = s.health.get(node).cloned() else { return };
        let id = gpu_id(node, index);
        for d in obj.status.iter_mut().flat_map(|st| st.devices.iter_mut()).filter(|d| d.id == id) {
            d.health = health;
            d.since = Some(now.clone());
            d.reasons = if health == Health::Healthy {
                Vec::new()
            } else {
                vec![HealthReasonStatus {
                    source: ReasonSource::KernelLog,
                    code: Some(xid),
                    message: message.to_string(),
                    first_seen: now.clone(),
                    last_seen: now.clone(),
                    count: 1,
                }]
            };
        }
        s.put_health(obj);
    }

    /// The agent on `node` publishes the progress of its pods (`status.workloads`).
    pub fn set_workloads(&self, node: &str, workloads: Vec<devheal_k8s::crd::WorkloadProgress>) {
        let mut s = self.lock();
        let Some(mut obj) = s.health.get(node).cloned() else { return };
        if let Some(status) = obj.status.as_mut() {
            status.workloads = workloads;
        }
        s.put_health(obj);
    }

    /// Create or replace a FailurePolicy (its spec: a new `metadata.generation`, as the API
    /// server counts; the status kept).
    pub fn apply_policy(&self, mut obj: FailurePolicyObject) {
        let mut s = self.lock();
        let k =
            key(obj.metadata.namespace.as_deref().unwrap_or(""), obj.metadata.name.as_deref().unwrap_or(""));
        let old = s.policies.get(&k);
        obj.metadata.generation = Some(old.and_then(|o| o.metadata.generation).unwrap_or(0) + 1);
        obj.status = old.and_then(|o| o.status.clone());
        s.put_policy(obj);
    }

    /// A FailurePolicy as the API server holds it.
    pub fn policy(&self, namespace: &str, name: &str) -> Option<FailurePolicyObject> {
        self.lock().policies.get(&key(namespace, name)).cloned()
    }

    /// Keep deleted pods terminating (deletionTimestamp set) until [`Self::finish_terminations`].
    pub fn set_graceful_deletion(&self, graceful: bool) {
        self.lock().graceful = graceful;
    }

    /// Terminating pods go away; gang members waiting for that are re-created.
    pub fn finish_terminations(&self) {
        let now = self.clock.now();
        let mut s = self.lock();
        let terminating: Vec<String> = s
            .pods
            .iter()
            .filter(|(_, p)| p.metadata.deletion_timestamp.is_some())
            .map(|(k, _)| k.clone())
            .collect();
        for k in terminating {
            s.remove_pod(&k);
        }
        for (template, attempt) in std::mem::take(&mut s.recreate) {
            s.create_member(&template, attempt, now);
        }
    }

    /// Refuse the next `times` actions of this type (`Action::label()`) with a 429 that asks
    /// to retry after `after_ms`.
    pub fn refuse(&self, action: &'static str, times: u32, after_ms: u64) {
        self.lock().refusals.insert(action, (times, after_ms));
    }

    pub fn actuator(&self, dry_run: bool) -> FakeActuator {
        FakeActuator { cluster: self.clone(), dry_run }
    }

    pub fn record(&self) -> FakeRecord {
        self.lock().record.clone()
    }

    pub fn quarantined(&self) -> BTreeSet<DeviceKey> {
        self.lock().quarantined.clone()
    }

    pub fn pods(&self) -> Vec<Pod> {
        self.lock().pods.values().cloned().collect()
    }

    pub fn pod(&self, namespace: &str, name: &str) -> Option<Pod> {
        self.lock().pods.get(&key(namespace, name)).cloned()
    }

    pub fn node(&self, name: &str) -> Option<Node> {
        self.lock().nodes.get(name).cloned()
    }

    /// The current state as one list per kind (`Init`, `InitApply`…, `InitDone`): what a
    /// freshly started controller's watches report.
    pub fn list_events(&self) -> Vec<ClusterEvent> {
        Self::list_of(&self.lock())
    }

    fn list_of(s: &FakeState) -> Vec<ClusterEvent> {
        // Pods first: the watches are independent, and pods listed before the device health
        // that condemns their devices is the order in which a replayed decision would bite.
        let mut out = vec![ClusterEvent::Pod(watcher::Event::Init)];
        out.extend(s.pods.values().map(|p| ClusterEvent::Pod(watcher::Event::InitApply(p.clone()))));
        out.push(ClusterEvent::Pod(watcher::Event::InitDone));
        out.push(ClusterEvent::Node(watcher::Event::Init));
        out.extend(s.nodes.values().map(|n| ClusterEvent::Node(watcher::Event::InitApply(n.clone()))));
        out.push(ClusterEvent::Node(watcher::Event::InitDone));
        out.push(ClusterEvent::NodeHealth(watcher::Event::Init));
        out.extend(s.health.values().map(|h| ClusterEvent::NodeHealth(watcher::Event::InitApply(h.clone()))));
        out.push(ClusterEvent::NodeHealth(watcher::Event::InitDone));
        out.push(ClusterEvent::Policy(watcher::Event::Init));
        out.extend(s.policies.values().map(|p| ClusterEvent::Policy(watcher::Event::InitApply(p.clone()))));
        out.push(ClusterEvent::Policy(watcher::Event::InitDone));
        out
    }

    fn gang_members(s: &FakeState, gang: &GangId) -> Vec<String> {
        s.pods
            .iter()
            .filter(|(_, p)| p.metadata.namespace.as_deref() == Some(gang.namespace.as_str()))
            .filter(|(_, p)| p.metadata.deletion_timestamp.is_none())
            .filter(|(_, p)| {
                gang.kind == "jobset"
                    && p.metadata.labels.as_ref().and_then(|l| l.get(JOBSET_NAME)) == Some(&gang.name)
            })
            .map(|(k, _)| k.clone())
            .collect()
    }

    fn apply(&self, planned: &PlannedAction) -> ActionOutcome {
        let now = self.clock.now();
        let mut s = self.lock();
        let label = planned.action.label();
        if let Some((left, after_ms)) = s.refusals.get_mut(label)
            && *left > 0
        {
            *left -= 1;
            return ActionOutcome::Retry { after_ms: *after_ms, reason: "429 Too Many Requests".into() };
        }
        let live = |s: &FakeState, ns: &str, name: &str, uid: &str| {
            s.pods.get(&key(ns, name)).is_some_and(|p| p.metadata.uid.as_deref() == Some(uid))
        };
        // A replacement at the next checkpoint is, for the cluster, a condition on the pod.
        let replace;
        let action = match &planned.action {
            Action::ReplaceAtCheckpoint { pod, reason, .. } => {
                replace = Action::MarkPod {
                    pod: pod.clone(),
                    condition_type: "devheal.io/ReplaceAtCheckpoint".into(),
                    reason: "SlowMember".into(),
                    message: reason.clone(),
                };
                &replace
            }
            other => other,
        };
        match action {
            Action::MarkPod { pod, condition_type, reason, message } => {
                if !live(&s, &pod.namespace, &pod.name, &pod.uid) {
                    return ActionOutcome::Gone;
                }
                let Some(mut p) = s.pods.get(&key(&pod.namespace, &pod.name)).cloned() else {
                    return ActionOutcome::Gone;
                };
                let status = p.status.get_or_insert_with(Default::default);
                let conditions = status.conditions.get_or_insert_with(Vec::new);
                conditions.retain(|c| &c.type_ != condition_type);
                conditions.push(PodCondition {
                    type_: condition_type.clone(),
                    status: "True".into(),
                    reason: Some(reason.clone()),
                    message: Some(message.clone()),
                    last_transition_time: Some(k8s_time(now)),
                    ..PodCondition::default()
                });
                s.put_pod(p);
            }
            Action::EvictPod { pod, .. } => {
                if !live(&s, &pod.namespace, &pod.name, &pod.uid) {
                    return ActionOutcome::Gone;
                }
                s.record.evicted.push(key(&pod.namespace, &pod.name));
                s.delete_pod(&key(&pod.namespace, &pod.name), now);
            }
            Action::RestartGang { gang, .. } => {
                let members = Self::gang_members(&s, gang);
                if members.is_empty() {
                    return ActionOutcome::Gone;
                }
                let attempt = members
                    .iter()
                    .filter_map(|k| s.pods.get(k))
                    .filter_map(|p| p.metadata.labels.as_ref()?.get(RESTART_ATTEMPT)?.parse::<u64>().ok())
                    .max()
                    .unwrap_or(0)
                    + 1;
                let templates: Vec<Pod> = members.iter().filter_map(|k| s.pods.get(k).cloned()).collect();
                for k in &members {
                    s.delete_pod(k, now);
                }
                if s.graceful {
                    s.recreate.extend(templates.into_iter().map(|t| (t, attempt)));
                } else {
                    for t in templates {
                        s.create_member(&t, attempt, now);
                    }
                }
                *s.record.gang_restarts.entry(gang.to_string()).or_default() += 1;
            }
            Action::QuarantineDevice { device, .. } => {
                s.record.quarantine_calls += 1;
                s.quarantined.insert(device.clone());
            }
            Action::ReleaseDevice { device, .. } => {
                s.quarantined.remove(device);
            }
            Action::CordonNode { node, .. } | Action::UncordonNode { node, .. } => {
                let cordon = matches!(planned.action, Action::CordonNode { .. });
                let Some(mut n) = s.nodes.get(node).cloned() else { return ActionOutcome::Gone };
                let spec = n.spec.get_or_insert_with(Default::default);
                spec.unschedulable = Some(cordon);
                // devheal's taint, as the real actuator writes it.
                let taints = spec.taints.get_or_insert_with(Vec::new);
                taints.retain(|t| t.key != UNHEALTHY_TAINT);
                if cordon {
                    taints.push(Taint {
                        key: UNHEALTHY_TAINT.into(),
                        value: Some(CORDONED_BY_DEVHEAL.into()),
                        effect: "NoSchedule".into(),
                        ..Taint::default()
                    });
                }
                s.put_node(n);
            }
            Action::WithdrawRepair { node, .. } => {
                s.record.repairs.retain(|(n, _, _)| n != node);
                s.record.withdrawn_repairs.push(node.clone());
                if let Some(mut n) = s.nodes.get(node).cloned() {
                    if let Some(labels) = n.metadata.labels.as_mut() {
                        labels.remove(REPAIR_LABEL);
                    }
                    s.put_node(n);
                }
            }
            Action::RequestRepair { node, device, kind, .. } => {
                let kind: &'static str = match kind {
                    RepairKind::None => "none",
                    k => k.as_str(),
                };
                s.record.repairs.insert((node.clone(), device.as_ref().map(|d| d.to_string()), kind));
                if let Some(mut n) = s.nodes.get(node).cloned() {
                    n.metadata
                        .labels
                        .get_or_insert_with(Default::default)
                        .insert(REPAIR_LABEL.into(), kind.into());
                    s.put_node(n);
                }
            }
            Action::FailWorkload { gang, .. } => s.record.failed_workloads.push(gang.to_string()),
            Action::Report { reason, .. } => s.record.reports.push(reason.clone()),
            // Turned into a MarkPod above.
            Action::ReplaceAtCheckpoint { .. } => {}
        }
        ActionOutcome::Done
    }
}

impl Actuator for FakeActuator {
    async fn execute(&self, planned: &PlannedAction) -> ActionOutcome {
        let outcome = if self.dry_run {
            ActionOutcome::WouldDo { description: describe(&planned.action) }
        } else {
            self.cluster.apply(planned)
        };
        self.cluster.lock().record.executed.push((planned.action.label().to_string(), outcome.label()));
        outcome
    }
}

impl PolicyStatusWriter for FakeActuator {
    /// Records the write, sets the status of the policy (a status write changes no
    /// generation; a dry run writes it too) and reports it as a watch event, or answers `Gone`.
    async fn write_policy_status(
        &self,
        namespace: &str,
        name: &str,
        status: &FailurePolicyStatus,
    ) -> Result<(), StatusWriteError> {
        let k = key(namespace, name);
        let mut s = self.cluster.lock();
        s.record.status_writes.push((k.clone(), status.clone()));
        let Some(mut obj) = s.policies.get(&k).cloned() else { return Err(StatusWriteError::Gone(k)) };
        obj.status = Some(status.clone());
        s.put_policy(obj);
        Ok(())
    }
}

impl Cluster for FakeCluster {
    fn events(&self) -> BoxStream<'static, ClusterEvent> {
        // futures' channel rather than tokio's: tokio's cooperative budget would make a test
        // that drains events without yielding see an empty channel.
        let (tx, rx) = mpsc::unbounded();
        let mut s = self.lock();
        for ev in Self::list_of(&s) {
            let _ = tx.unbounded_send(ev);
        }
        s.subscribers.push(tx);
        drop(s);
        rx.boxed()
    }
}
