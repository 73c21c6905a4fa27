//! The controller's index: what the watches of Pods, Nodes, NodeDeviceHealth and FailurePolicy
//! report, reduced to what the decision engine reads, and turned into engine [`Input`]s.
//!
//! The index is pure (no I/O, no clock): it is fed kube-runtime [`watcher::Event`]s and answers
//! with the inputs the engine must see. It keeps a compact record per object, never the object:
//!
//! - per pod, its uid and a digest of its conversion (`devheal_k8s::pod_from_k8s`), so that an
//!   update that changes nothing the engine reads (a resourceVersion bump, a heartbeat, a
//!   managed-fields change) emits nothing; for a pod that reports no devices of its own, a
//!   trimmed copy of what the engine keeps (identity, node, labels, owner, phase), so it can be
//!   re-sent when the agent binds it to a device;
//! - per node, a digest of `devheal_k8s::node_from_k8s`;
//! - per NodeDeviceHealth, a digest of the device inventory, one per device's health and
//!   reasons, and the pods the agent binds to each device;
//! - the FailurePolicies, converted.
//!
//! NodeDeviceHealth also carries the progress of the node's pods (`status.workloads`): the
//! index hands it on ([`IndexUpdate::progress`], with each pod's uid filled in) for the
//! controller's [`crate::progress::ProgressMonitor`], and merges what that monitor finds about
//! a pod (a straggler, a baseline shift) into the health of the pod's devices as a
//! `progress` reason ([`ClusterIndex::set_progress_reason`]): the agent's report of a device and
//! the gang-wide comparison are two sources for one device health, and the engine gets their
//! merge (Healthy plus a progress reason is Degraded; Unhealthy and Unknown stay as they are).
//!
//! A relist (`Init`, `InitApply`…, `InitDone`, as the watcher does at start and after a 410 Gone)
//! marks what it sees with a new epoch; at `InitDone` whatever the relist did not see vanished
//! during the gap and is deleted. Unchanged objects emit nothing, so a relist never repeats an
//! input the engine already acted on.
//!
//! A pod whose deletion was requested (it has a deletionTimestamp) is withheld from the engine
//! (it is deleted there): it will not run again, and a restarted controller must not restart a
//! gang again because the members its first incarnation restarted are still terminating.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::Hasher;

use devheal_core::{Device, DeviceKey, Health, HealthReason, Input, PodInfo};
use devheal_k8s::crd::{
    FailurePolicy as FailurePolicyObject, NodeDeviceHealth as NodeDeviceHealthObject, WorkloadProgress,
};
use devheal_k8s::node_health::{DeviceReport, NodeDeviceHealth as NodeDeviceHealthDocument, PodBinding};
use devheal_k8s::{node_from_k8s, pod_from_k8s};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::watcher;
use serde::Serialize;

pub use crate::events::{ClusterEvent, ObjectKind};

/// Where a kind's list state is kept.
fn slot(kind: ObjectKind) -> usize {
    kind as usize
}

/// An object the index could not use (it is skipped; the rest of the watch goes on).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IndexError {
    #[error("pod {0}")]
    Pod(#[from] devheal_k8s::ConversionError),
    #[error("node without metadata.name")]
    NodeWithoutName,
    #[error("NodeDeviceHealth {name}: {reason}")]
    NodeHealth { name: String, reason: String },
    #[error("FailurePolicy without metadata.name")]
    PolicyWithoutName,
}

/// What one event changed.
#[derive(Debug, Default)]
pub struct IndexUpdate {
    /// Inputs for the engine, in order.
    pub inputs: Vec<Input>,
    /// Objects skipped because they are invalid.
    pub rejected: Vec<IndexError>,
    /// A relist finished (`InitDone` after the first list of this kind).
    pub relisted: bool,
    /// A watch error was reported.
    pub watch_error: bool,
    /// NodeDeviceHealth workload progress: per node, the workloads of the node's own pods with
    /// their uids filled in; an empty list when the object went away.
    pub progress: Vec<(String, Vec<WorkloadProgress>)>,
    /// Claims a NodeDeviceHealth made about pods on another node, ignored; each is listed once,
    /// when it first appears in that node's report.
    pub foreign: Vec<ForeignClaim>,
}

/// A NodeDeviceHealth of one node that speaks for a pod of another: a device binding or a
/// workload's progress. Ignored (a node speaks only for its own devices and pods).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ForeignClaim {
    /// The node whose NodeDeviceHealth made the claim.
    pub node: String,
    /// The pod it named (`namespace/name`).
    pub pod: String,
    /// The node the pod is on (empty while unscheduled).
    pub pod_node: String,
    /// `device` (a binding of the pod to one of the node's devices) or `progress`.
    pub what: &'static str,
}

/// The fields of a pod the engine keeps between inputs, plus what re-sending it needs.
#[derive(Debug)]
struct PodEntry {
    uid: String,
    /// Digest of the pod as converted, with its own devices (allocatedResourcesStatus).
    digest: u64,
    epoch: u32,
    /// Deletion requested: deleted in the engine, not sent again.
    withheld: bool,
    /// For a pod whose devices only NodeDeviceHealth names (no allocatedResourcesStatus): the
    /// trimmed pod (no container states, conditions or messages), re-sent when the agent binds
    /// it to a device. A pod that reports its own devices keeps none (memory: see
    /// docs/controller.md); a binding that adds a device to it reaches the engine with the
    /// pod's next change.
    view: Option<Box<PodInfo>>,
    /// Devices NodeDeviceHealth binds the pod to beyond its own (as last sent).
    bound: Vec<DeviceKey>,
    /// The node the pod is bound to (`spec.nodeName`; empty while unscheduled): only that
    /// node's NodeDeviceHealth speaks for the pod.
    node: Box<str>,
    /// The pod's labels as sorted hashes of `key=value` ([`label_hash`]): enough to count the
    /// pods each FailurePolicy selects ([`ClusterIndex::matched_pods`]) at 8 bytes a label.
    labels: Box<[u64]>,
}

#[derive(Debug, Default)]
struct HealthEntry {
    epoch: u32,
    inventory: u64,
    devices: BTreeMap<DeviceKey, DeviceEntry>,
    /// Pods bound to each device, as (pod key `namespace/name`, uid if given).
    bindings: Vec<(String, Option<String>, DeviceKey)>,
    /// Claims about other nodes' pods in the last report (each reported once).
    foreign: BTreeSet<ForeignClaim>,
    /// Every other id the report gives a device (`aliases`), to the device's key: a pod's
    /// status that names a device by one of them is matched to the device.
    aliases: HashMap<String, DeviceKey>,
}

/// A device as its NodeDeviceHealth last reported it, and the digest of what the engine last
/// got for it (the report merged with any progress reason).
#[derive(Debug)]
struct DeviceEntry {
    health: Health,
    reasons: Vec<HealthReason>,
    sent: u64,
}

/// A device's health as the agent reported it, with a progress finding merged in.
fn merged(
    health: Health,
    reasons: &[HealthReason],
    progress: Option<&HealthReason>,
) -> (Health, Vec<HealthReason>) {
    let mut reasons = reasons.to_vec();
    let Some(p) = progress else { return (health, reasons) };
    reasons.push(p.clone());
    let health = match health {
        Health::Healthy | Health::Degraded => Health::Degraded,
        // A failed device is already worse; a device nobody can see is never acted on.
        Health::Unhealthy | Health::Unknown => health,
    };
    (health, reasons)
}

#[derive(Debug, Default, Clone, Copy)]
struct ListState {
    epoch: u32,
    listing: bool,
    listed_once: bool,
}

/// The index. See the module documentation.
#[derive(Debug, Default)]
pub struct ClusterIndex {
    /// By `namespace/name` (unique at any moment; the uid changes when a pod is re-created).
    pods: HashMap<String, PodEntry>,
    nodes: HashMap<String, (u64, u32)>,
    health: HashMap<String, HealthEntry>,
    policies: BTreeMap<String, (devheal_core::FailurePolicy, u32)>,
    /// Devices NodeDeviceHealth binds to each pod key, with the uid the binding names.
    bound: HashMap<String, Vec<(DeviceKey, Option<String>)>>,
    /// Progress findings on devices (see [`ClusterIndex::set_progress_reason`]).
    progress_reasons: HashMap<DeviceKey, HealthReason>,
    /// Digest of the policy set the engine last got (`None`: none sent, the engine's own).
    sent_policies: Option<u64>,
    /// By [`slot`]; the DeviceTaintRule slot stays unused (the index holds no rules).
    lists: [ListState; 5],
}

/// A stable 64-bit digest of a value's JSON form.
fn digest<T: Serialize>(value: &T) -> u64 {
    struct HashWriter(std::hash::DefaultHasher);
    impl std::io::Write for HashWriter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.write(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut w = HashWriter(std::hash::DefaultHasher::new());
    // The engine's types serialise infallibly (string map keys only); a failure would only make
    // every update look changed, which is safe.
    if serde_json::to_writer(&mut w, value).is_err() {
        w.0.write_u8(0xff);
    }
    w.0.finish()
}

/// The hash a label `key=value` is kept as (a stable, keyless SipHash: equal pairs hash equal in
/// every process; a false match needs a 64-bit collision).
fn label_hash(key: &str, value: &str) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    h.write(key.as_bytes());
    h.write_u8(0xff);
    h.write(value.as_bytes());
    h.finish()
}

fn label_hashes(labels: &BTreeMap<String, String>) -> Box<[u64]> {
    let mut v: Vec<u64> = labels.iter().map(|(k, v)| label_hash(k, v)).collect();
    v.sort_unstable();
    v.dedup();
    v.into_boxed_slice()
}

fn pod_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// What of a pod is kept: the engine re-reads labels (gangs, selectors), owner, phase, node and
/// devices; container states, conditions and messages matter only in the input that carries them.
fn trimmed(pod: &PodInfo) -> PodInfo {
    PodInfo {
        uid: pod.uid.clone(),
        namespace: pod.namespace.clone(),
        name: pod.name.clone(),
        node: pod.node.clone(),
        labels: pod.labels.clone(),
        annotations: pod
            .annotations
            .iter()
            .filter(|(k, v)| v.len() <= 253 && !k.starts_with("kubectl.kubernetes.io/"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        owner: pod.owner.clone(),
        restart_policy: pod.restart_policy.clone(),
        phase: pod.phase,
        start_time: pod.start_time,
        devices: pod.devices.clone(),
        deletion_requested: pod.deletion_requested,
        // Restart counts keep the engine's failure identities stable when the pod is re-sent.
        containers: pod
            .containers
            .iter()
            .map(|c| devheal_core::ContainerInfo {
                name: c.name.clone(),
                restart_count: c.restart_count,
                ..devheal_core::ContainerInfo::default()
            })
            .collect(),
        ..PodInfo::default()
    }
}

fn with_devices(mut pod: PodInfo, bound: &[DeviceKey]) -> PodInfo {
    if !bound.is_empty() {
        pod.devices.extend(bound.iter().cloned());
        pod.devices.sort();
        pod.devices.dedup();
    }
    pod
}

impl ClusterIndex {
    pub fn new() -> Self {
        ClusterIndex::default()
    }

    /// Has every kind finished its first list?
    pub fn ready(&self) -> bool {
        ObjectKind::ALL.into_iter().all(|k| self.lists[slot(k)].listed_once)
    }

    /// The kinds whose first list has not finished.
    pub fn waiting_for(&self) -> Vec<ObjectKind> {
        ObjectKind::ALL.into_iter().filter(|k| !self.lists[slot(*k)].listed_once).collect()
    }

    /// Objects held, by kind.
    pub fn len(&self, kind: ObjectKind) -> usize {
        match kind {
            ObjectKind::Pod => self.pods.len(),
            ObjectKind::Node => self.nodes.len(),
            ObjectKind::NodeDeviceHealth => self.health.len(),
            ObjectKind::FailurePolicy => self.policies.len(),
            // Rules feed crate::leftovers, not the index.
            ObjectKind::DeviceTaintRule => 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        ObjectKind::ALL.into_iter().all(|k| self.len(k) == 0)
    }

    /// The FailurePolicy objects held, by `namespace/name`, in the order the engine gets them.
    pub fn policies(&self) -> impl Iterator<Item = (&str, &devheal_core::FailurePolicy)> {
        self.policies.iter().map(|(k, (p, _))| (k.as_str(), p))
    }

    /// How many pods each FailurePolicy object selects (its namespace and all its
    /// `matchLabels`), by `namespace/name`; pods being deleted are not counted. A pod two
    /// policies select counts for both (the engine applies the first, in name order). One pass
    /// over the pods per call: callers recompute it when pods or policies changed, not per event.
    pub fn matched_pods(&self) -> BTreeMap<String, u64> {
        let selectors: Vec<(&str, Option<&str>, Vec<u64>)> = self
            .policies
            .iter()
            .map(|(k, (p, _))| {
                let wanted = p.selector.match_labels.iter().map(|(k, v)| label_hash(k, v)).collect();
                (k.as_str(), p.namespace.as_deref(), wanted)
            })
            .collect();
        let mut hits = vec![0u64; selectors.len()];
        for (key, entry) in &self.pods {
            if entry.withheld {
                continue;
            }
            let namespace = key.split_once('/').map_or("", |(ns, _)| ns);
            for (i, (_, ns, wanted)) in selectors.iter().enumerate() {
                if ns.is_some_and(|ns| ns != namespace) {
                    continue;
                }
                if wanted.iter().all(|h| entry.labels.binary_search(h).is_ok()) {
                    hits[i] += 1;
                }
            }
        }
        selectors.iter().zip(hits).map(|((k, ..), n)| (k.to_string(), n)).collect()
    }

    /// Apply one watch event; returns the engine inputs it causes.
    pub fn apply(&mut self, event: ClusterEvent) -> IndexUpdate {
        let mut up = IndexUpdate::default();
        match event {
            ClusterEvent::Pod(ev) => self.on_pod_event(ev, &mut up),
            ClusterEvent::Node(ev) => self.on_node_event(ev, &mut up),
            ClusterEvent::NodeHealth(ev) => self.on_health_event(ev, &mut up),
            ClusterEvent::Policy(ev) => self.on_policy_event(ev, &mut up),
            // What devheal's DeviceTaintRules say is for crate::leftovers, not the engine.
            ClusterEvent::DeviceTaintRule(_) => {}
            ClusterEvent::WatchError { .. } => up.watch_error = true,
        }
        up
    }

    /// Start of a (re)list: objects seen from now on carry a new epoch.
    fn begin_list(&mut self, kind: ObjectKind) {
        let l = &mut self.lists[slot(kind)];
        l.epoch = l.epoch.wrapping_add(1);
        l.listing = true;
    }

    /// The epoch an object seen now is marked with.
    fn epoch(&self, kind: ObjectKind) -> u32 {
        self.lists[slot(kind)].epoch
    }

    /// End of a (re)list; returns whether it was a relist.
    fn end_list(&mut self, kind: ObjectKind) -> bool {
        let l = &mut self.lists[slot(kind)];
        let relist = l.listed_once;
        l.listing = false;
        l.listed_once = true;
        relist
    }

    // ------------------------------------------------------------------ pods

    fn on_pod_event(&mut self, ev: watcher::Event<Pod>, up: &mut IndexUpdate) {
        match ev {
            watcher::Event::Init => self.begin_list(ObjectKind::Pod),
            watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) => self.upsert_pod(&pod, up),
            watcher::Event::Delete(pod) => {
                let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
                let Some(name) = pod.metadata.name.as_deref() else { return };
                let key = pod_key(namespace, name);
                let same = |e: &PodEntry| pod.metadata.uid.as_ref().is_none_or(|u| *u == e.uid);
                if self.pods.get(&key).is_some_and(same)
                    && let Some(old) = self.pods.remove(&key)
                    && !old.withheld
                {
                    up.inputs.push(Input::PodDeleted { uid: old.uid });
                }
            }
            watcher::Event::InitDone => {
                up.relisted = self.end_list(ObjectKind::Pod);
                let epoch = self.epoch(ObjectKind::Pod);
                let mut gone: Vec<String> =
                    self.pods.iter().filter(|(_, e)| e.epoch != epoch).map(|(k, _)| k.clone()).collect();
                gone.sort();
                for key in gone {
                    if let Some(old) = self.pods.remove(&key)
                        && !old.withheld
                    {
                        up.inputs.push(Input::PodDeleted { uid: old.uid });
                    }
                }
            }
        }
    }

    /// Devices NodeDeviceHealth binds to a pod.
    /// The devices NodeDeviceHealth binds to the pod `key` with `uid` on `node`: only devices of
    /// the pod's own node count (a node speaks only for its own pods).
    fn bound_devices(&self, key: &str, uid: &str, node: &str) -> Vec<DeviceKey> {
        let Some(list) = self.bound.get(key) else { return Vec::new() };
        let mut out: Vec<DeviceKey> = list
            .iter()
            .filter(|(d, u)| u.as_deref().is_none_or(|u| u == uid) && d.node == node)
            .map(|(d, _)| d.clone())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// A pod's own devices (its status' `allocatedResourcesStatus`, already under their
    /// canonical keys) under the keys its node's NodeDeviceHealth reports them by, where the
    /// status names a device by another of its ids (an alias the agent lists). A pod seen
    /// before its node's report is matched at its next change.
    fn under_reported_keys(&self, info: &mut PodInfo) {
        let Some(entry) = info.node.as_deref().and_then(|n| self.health.get(n)) else { return };
        let reported = |k: &DeviceKey| -> Option<DeviceKey> {
            if entry.devices.contains_key(k) {
                return None;
            }
            if let Some(a) = entry.aliases.get(&k.id) {
                return Some(a.clone());
            }
            // A DRA device named by the CDI id of its claim says its driver and device but not
            // its pool (taken to be the node's): the node's one device of that driver and name.
            let d = devheal_core::dra_device(&k.resource, &k.id)?;
            let mut same = entry.devices.keys().filter(|r| {
                devheal_core::dra_device(&r.resource, &r.id)
                    .is_some_and(|x| x.driver == d.driver && x.device == d.device)
            });
            match (same.next(), same.next()) {
                (Some(only), None) => Some(only.clone()),
                _ => None,
            }
        };
        let mut changed = false;
        for d in &mut info.devices {
            if let Some(k) = reported(d) {
                *d = k;
                changed = true;
            }
        }
        if changed {
            info.devices.sort();
            info.devices.dedup();
        }
        let node = info.node.clone().unwrap_or_default();
        for c in &mut info.containers {
            for r in &mut c.allocated_resources_status {
                let key = devheal_core::canonical_key(&DeviceKey::new(
                    node.clone(),
                    r.resource.clone(),
                    r.device_id.clone(),
                ));
                if let Some(k) = reported(&key) {
                    r.resource = k.resource;
                    r.device_id = k.id;
                }
            }
        }
    }

    fn upsert_pod(&mut self, pod: &Pod, up: &mut IndexUpdate) {
        let mut info = match pod_from_k8s(pod) {
            Ok(info) => info,
            Err(e) => {
                up.rejected.push(e.into());
                return;
            }
        };
        self.under_reported_keys(&mut info);
        let epoch = self.epoch(ObjectKind::Pod);
        let key = pod_key(&info.namespace, &info.name);
        let d = digest(&info);
        let node: Box<str> = info.node.as_deref().unwrap_or("").into();
        let bound = self.bound_devices(&key, &info.uid, &node);
        let withheld = info.deletion_requested;
        if let Some(old) = self.pods.get_mut(&key) {
            old.epoch = epoch;
            if old.uid == info.uid {
                if old.digest == d && old.bound == bound {
                    return;
                }
                if old.withheld {
                    // A pod being deleted stays out of the engine.
                    old.digest = d;
                    return;
                }
            } else if !old.withheld {
                // Re-created under the same name while we were not looking.
                up.inputs.push(Input::PodDeleted { uid: old.uid.clone() });
            }
        }
        let was_sent = self.pods.get(&key).is_some_and(|o| o.uid == info.uid && !o.withheld);
        let view = info.devices.is_empty().then(|| Box::new(trimmed(&info)));
        let uid = info.uid.clone();
        let labels = label_hashes(&info.labels);
        if withheld {
            if was_sent {
                up.inputs.push(Input::PodDeleted { uid: uid.clone() });
            }
        } else {
            up.inputs.push(Input::PodUpsert(with_devices(info, &bound)));
        }
        self.pods.insert(key, PodEntry { uid, digest: d, epoch, withheld, view, bound, node, labels });
    }

    /// Re-send the pods whose NodeDeviceHealth bindings changed.
    fn rebind(&mut self, keys: BTreeSet<String>, up: &mut IndexUpdate) {
        for key in keys {
            let Some((uid, node)) = self.pods.get(&key).map(|e| (e.uid.clone(), e.node.clone())) else {
                continue;
            };
            let bound = self.bound_devices(&key, &uid, &node);
            let Some(entry) = self.pods.get_mut(&key) else { continue };
            if entry.bound == bound {
                continue;
            }
            // Without a view the binding waits for the pod's next change (`bound` stays as last
            // sent, so that change is seen as one).
            let Some(view) = &entry.view else { continue };
            let pod = with_devices((**view).clone(), &bound);
            entry.bound = bound;
            if !entry.withheld {
                up.inputs.push(Input::PodUpsert(pod));
            }
        }
    }

    // ------------------------------------------------------------------ nodes

    fn on_node_event(&mut self, ev: watcher::Event<Node>, up: &mut IndexUpdate) {
        match ev {
            watcher::Event::Init => self.begin_list(ObjectKind::Node),
            watcher::Event::Apply(node) | watcher::Event::InitApply(node) => {
                let info = node_from_k8s(&node);
                if info.name.is_empty() {
                    up.rejected.push(IndexError::NodeWithoutName);
                    return;
                }
                let epoch = self.epoch(ObjectKind::Node);
                let d = digest(&info);
                match self.nodes.get_mut(&info.name) {
                    Some(entry) if entry.0 == d => entry.1 = epoch,
                    _ => {
                        self.nodes.insert(info.name.clone(), (d, epoch));
                        up.inputs.push(Input::NodeUpsert(info));
                    }
                }
            }
            watcher::Event::Delete(node) => {
                if let Some(name) = node.metadata.name
                    && self.nodes.remove(&name).is_some()
                {
                    up.inputs.push(Input::NodeDeleted { name });
                }
            }
            watcher::Event::InitDone => {
                up.relisted = self.end_list(ObjectKind::Node);
                let epoch = self.epoch(ObjectKind::Node);
                let mut gone: Vec<String> =
                    self.nodes.iter().filter(|(_, e)| e.1 != epoch).map(|(k, _)| k.clone()).collect();
                gone.sort();
                for name in gone {
                    self.nodes.remove(&name);
                    up.inputs.push(Input::NodeDeleted { name });
                }
            }
        }
    }

    // ------------------------------------------------------------------ device health

    fn on_health_event(&mut self, ev: watcher::Event<NodeDeviceHealthObject>, up: &mut IndexUpdate) {
        match ev {
            watcher::Event::Init => self.begin_list(ObjectKind::NodeDeviceHealth),
            watcher::Event::Apply(obj) | watcher::Event::InitApply(obj) => self.upsert_health(&obj, up),
            watcher::Event::Delete(obj) => {
                if let Some(name) = obj.metadata.name.clone() {
                    self.remove_health(&name, up);
                }
            }
            watcher::Event::InitDone => {
                up.relisted = self.end_list(ObjectKind::NodeDeviceHealth);
                let epoch = self.epoch(ObjectKind::NodeDeviceHealth);
                let mut gone: Vec<String> =
                    self.health.iter().filter(|(_, e)| e.epoch != epoch).map(|(k, _)| k.clone()).collect();
                gone.sort();
                for name in gone {
                    self.remove_health(&name, up);
                }
            }
        }
    }

    /// The object's devices through devheal-k8s's NodeDeviceHealth conversion.
    fn reports(obj: &NodeDeviceHealthObject) -> Result<(String, Vec<DeviceReport>), IndexError> {
        let name = obj.metadata.name.clone().unwrap_or_default();
        let fail = |reason: String| IndexError::NodeHealth { name: name.clone(), reason };
        let json = serde_json::to_value(obj).map_err(|e| fail(e.to_string()))?;
        let doc: NodeDeviceHealthDocument = serde_json::from_value(json).map_err(|e| fail(e.to_string()))?;
        let reports = doc.reports().map_err(|e| fail(e.to_string()))?;
        Ok((name, reports))
    }

    fn upsert_health(&mut self, obj: &NodeDeviceHealthObject, up: &mut IndexUpdate) {
        let (node, reports) = match Self::reports(obj) {
            Ok(r) => r,
            Err(e) => {
                up.rejected.push(e);
                return;
            }
        };
        let epoch = self.epoch(ObjectKind::NodeDeviceHealth);
        let devices: Vec<Device> = reports.iter().map(|r| r.device.clone()).collect();
        let inventory = digest(&devices);
        let mut bindings: Vec<(String, Option<String>, DeviceKey)> = Vec::new();
        let mut foreign: BTreeSet<ForeignClaim> = BTreeSet::new();
        // A claim about a pod the index knows on another node is dropped here; one about a pod
        // not known yet is kept, and counts only if the pod turns out to be on this node
        // (`bound_devices`).
        let mut elsewhere = |key: &str, what: &'static str, pods: &HashMap<String, PodEntry>| -> bool {
            match pods.get(key) {
                Some(p) if *p.node != *node => {
                    foreign.insert(ForeignClaim {
                        node: node.clone(),
                        pod: key.to_string(),
                        pod_node: p.node.to_string(),
                        what,
                    });
                    true
                }
                _ => false,
            }
        };
        for r in &reports {
            for b in &r.pods {
                let (key, uid) = match b {
                    PodBinding::Name(s) => match s.split_once('/') {
                        Some((ns, n)) => (pod_key(ns, n), None),
                        None => (pod_key("default", s), None),
                    },
                    PodBinding::Ref { namespace, name, uid } => (pod_key(namespace, name), uid.clone()),
                };
                if elsewhere(&key, "device", &self.pods) {
                    continue;
                }
                bindings.push((key, uid, r.device.key.clone()));
            }
        }
        // Progress only of pods the index knows on this node.
        let mut workloads = obj.status.as_ref().map(|s| s.workloads.clone()).unwrap_or_default();
        workloads.retain(|w| {
            let key = pod_key(&w.namespace, &w.name);
            !elsewhere(&key, "progress", &self.pods) && self.pods.contains_key(&key)
        });
        for w in workloads.iter_mut().filter(|w| w.uid.is_none()) {
            w.uid = self.pods.get(&pod_key(&w.namespace, &w.name)).map(|p| p.uid.clone());
        }
        bindings.sort();
        bindings.dedup();
        let mut entry = self.health.remove(&node).unwrap_or_default();
        entry.epoch = epoch;
        entry.aliases = reports
            .iter()
            .flat_map(|r| r.aliases.iter().map(|a| (a.clone(), r.device.key.clone())))
            .collect();
        // Inventory first, then bindings (so pods are on their devices), then health.
        if entry.inventory != inventory || entry.devices.is_empty() != devices.is_empty() {
            entry.inventory = inventory;
            up.inputs.push(Input::Devices { node: node.clone(), devices });
        }
        if entry.bindings != bindings {
            let old = std::mem::replace(&mut entry.bindings, bindings);
            self.replace_bindings(&old, &entry.bindings, up);
        }
        let mut health: BTreeMap<DeviceKey, DeviceEntry> = BTreeMap::new();
        for r in reports {
            let key = r.device.key;
            let (h, reasons) = merged(r.health, &r.reasons, self.progress_reasons.get(&key));
            let sent = digest(&(h, &reasons));
            if entry.devices.get(&key).map(|d| d.sent) != Some(sent) {
                up.inputs.push(Input::DeviceHealth { device: key.clone(), health: h, reasons });
            }
            health.insert(key, DeviceEntry { health: r.health, reasons: r.reasons, sent });
        }
        entry.devices = health;
        up.foreign.extend(foreign.iter().filter(|c| !entry.foreign.contains(*c)).cloned());
        entry.foreign = foreign;
        self.health.insert(node.clone(), entry);
        up.progress.push((node, workloads));
    }

    /// The devices NodeDeviceHealth reports Healthy on `node` (the agent's own report, without
    /// progress findings).
    pub fn healthy_devices<'a>(&'a self, node: &str) -> impl Iterator<Item = &'a DeviceKey> + use<'a> {
        self.health
            .get(node)
            .into_iter()
            .flat_map(|e| e.devices.iter().filter(|(_, d)| d.health == Health::Healthy).map(|(k, _)| k))
    }

    /// Sets (or, with `None`, clears) the progress finding on `device` and returns the input
    /// that gives the engine the device's merged health, if it changed. A device no
    /// NodeDeviceHealth reports keeps the reason until one does.
    pub fn set_progress_reason(&mut self, device: &DeviceKey, reason: Option<HealthReason>) -> Option<Input> {
        match reason {
            Some(r) => self.progress_reasons.insert(device.clone(), r),
            None => self.progress_reasons.remove(device),
        };
        let entry = self.health.get_mut(&device.node)?.devices.get_mut(device)?;
        let (health, reasons) = merged(entry.health, &entry.reasons, self.progress_reasons.get(device));
        let sent = digest(&(health, &reasons));
        if entry.sent == sent {
            return None;
        }
        entry.sent = sent;
        Some(Input::DeviceHealth { device: device.clone(), health, reasons })
    }

    fn replace_bindings(
        &mut self,
        old: &[(String, Option<String>, DeviceKey)],
        new: &[(String, Option<String>, DeviceKey)],
        up: &mut IndexUpdate,
    ) {
        let mut touched = BTreeSet::new();
        for (key, uid, dev) in old {
            if let Some(list) = self.bound.get_mut(key) {
                if let Some(i) = list.iter().position(|(d, u)| d == dev && u == uid) {
                    list.swap_remove(i);
                }
                if list.is_empty() {
                    self.bound.remove(key);
                }
            }
            touched.insert(key.clone());
        }
        for (key, uid, dev) in new {
            self.bound.entry(key.clone()).or_default().push((dev.clone(), uid.clone()));
            touched.insert(key.clone());
        }
        self.rebind(touched, up);
    }

    /// The node's NodeDeviceHealth is gone: its agent lost sight of the devices (Unknown, which
    /// never remediates) and its bindings no longer hold.
    fn remove_health(&mut self, node: &str, up: &mut IndexUpdate) {
        let Some(entry) = self.health.remove(node) else { return };
        up.progress.push((node.to_string(), Vec::new()));
        self.replace_bindings(&entry.bindings, &[], up);
        for device in entry.devices.into_keys() {
            up.inputs.push(Input::DeviceHealth {
                device,
                health: Health::Unknown,
                reasons: Vec::<HealthReason>::new(),
            });
        }
    }

    // ------------------------------------------------------------------ policies

    fn on_policy_event(&mut self, ev: watcher::Event<FailurePolicyObject>, up: &mut IndexUpdate) {
        match ev {
            watcher::Event::Init => self.begin_list(ObjectKind::FailurePolicy),
            watcher::Event::Apply(obj) | watcher::Event::InitApply(obj) => {
                let epoch = self.epoch(ObjectKind::FailurePolicy);
                let policy = obj.to_policy();
                if policy.name.is_empty() {
                    up.rejected.push(IndexError::PolicyWithoutName);
                    return;
                }
                let key = pod_key(policy.namespace.as_deref().unwrap_or(""), &policy.name);
                self.policies.insert(key, (policy, epoch));
            }
            watcher::Event::Delete(obj) => {
                let key = pod_key(
                    obj.metadata.namespace.as_deref().unwrap_or(""),
                    obj.metadata.name.as_deref().unwrap_or(""),
                );
                self.policies.remove(&key);
            }
            watcher::Event::InitDone => {
                up.relisted = self.end_list(ObjectKind::FailurePolicy);
                let epoch = self.epoch(ObjectKind::FailurePolicy);
                self.policies.retain(|_, (_, e)| *e == epoch);
            }
        }
        // The engine gets the whole set, when it differs from what it has; during a list, once
        // the list is complete.
        if self.lists[slot(ObjectKind::FailurePolicy)].listing {
            return;
        }
        let list: Vec<devheal_core::FailurePolicy> = self.policies.values().map(|(p, _)| p.clone()).collect();
        let d = digest(&list);
        if self.sent_policies != Some(d) && !(self.sent_policies.is_none() && list.is_empty()) {
            self.sent_policies = Some(d);
            up.inputs.push(Input::Policies(list));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, uid: &str, rv: &str, device: &str, phase: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ml", "uid": uid, "resourceVersion": rv,
                         "labels": {"jobset.sigs.k8s.io/jobset-name": "llama"}},
            "spec": {"nodeName": "node-0", "containers": [{"name": "c"}]},
            "status": {"phase": phase, "containerStatuses": [{
                "name": "c", "image": "i", "imageID": "", "ready": true, "restartCount": 0,
                "allocatedResourcesStatus": [{"name": "nvidia.com/gpu", "resources": [{"resourceID": device, "health": "Healthy"}]}]
            }]}
        }))
        .expect("valid pod")
    }

    fn health(node: &str, devices: serde_json::Value) -> NodeDeviceHealthObject {
        serde_json::from_value(json!({
            "apiVersion": "devheal.io/v1alpha1", "kind": "NodeDeviceHealth",
            "metadata": {"name": node}, "spec": {"nodeName": node},
            "status": {"devices": devices}
        }))
        .expect("valid object")
    }

    fn names(inputs: &[Input]) -> Vec<String> {
        inputs
            .iter()
            .map(|i| match i {
                Input::PodUpsert(p) => format!("upsert {} {:?}", p.name, p.devices.len()),
                Input::PodDeleted { uid } => format!("deleted {uid}"),
                Input::Devices { node, devices } => format!("devices {node} {}", devices.len()),
                Input::DeviceHealth { device, health, .. } => format!("health {} {health:?}", device.id),
                Input::NodeUpsert(n) => format!("node {}", n.name),
                Input::NodeDeleted { name } => format!("node deleted {name}"),
                Input::Policies(p) => format!("policies {}", p.len()),
                other => format!("{other:?}"),
            })
            .collect()
    }

    fn list(index: &mut ClusterIndex, pods: Vec<Pod>) -> Vec<String> {
        let mut out = names(&index.apply(ClusterEvent::Pod(watcher::Event::Init)).inputs);
        for p in pods {
            out.extend(names(&index.apply(ClusterEvent::Pod(watcher::Event::InitApply(p))).inputs));
        }
        let done = index.apply(ClusterEvent::Pod(watcher::Event::InitDone));
        out.extend(names(&done.inputs));
        out
    }

    #[test]
    fn an_update_that_changes_nothing_the_engine_reads_emits_nothing() {
        let mut index = ClusterIndex::new();
        let first =
            index.apply(ClusterEvent::Pod(watcher::Event::Apply(pod("a", "u1", "1", "G0", "Running"))));
        assert_eq!(names(&first.inputs), ["upsert a 1"]);
        // A new resourceVersion and a managed-fields change only.
        let mut same = pod("a", "u1", "2", "G0", "Running");
        same.metadata.managed_fields = Some(vec![Default::default()]);
        assert!(index.apply(ClusterEvent::Pod(watcher::Event::Apply(same))).inputs.is_empty());
        let changed =
            index.apply(ClusterEvent::Pod(watcher::Event::Apply(pod("a", "u1", "3", "G0", "Failed"))));
        assert_eq!(names(&changed.inputs), ["upsert a 1"]);
    }

    #[test]
    fn a_relist_deletes_what_vanished_in_the_gap_and_repeats_nothing() {
        let mut index = ClusterIndex::new();
        let pods = vec![pod("a", "u1", "1", "G0", "Running"), pod("b", "u2", "1", "G1", "Running")];
        assert_eq!(list(&mut index, pods), ["upsert a 1", "upsert b 1"]);
        assert!(index.ready() || index.waiting_for().len() == 3);
        // During the gap: b was deleted, c created, a unchanged (new resourceVersion).
        let relist = vec![pod("a", "u1", "9", "G0", "Running"), pod("c", "u3", "9", "G2", "Running")];
        let mut index2 = index;
        let out = list(&mut index2, relist);
        assert_eq!(out, ["upsert c 1", "deleted u2"]);
        assert_eq!(index2.len(ObjectKind::Pod), 2);
    }

    #[test]
    fn an_interrupted_relist_keeps_objects_until_a_complete_one() {
        let mut index = ClusterIndex::new();
        list(&mut index, vec![pod("a", "u1", "1", "G0", "Running"), pod("b", "u2", "1", "G1", "Running")]);
        // Init, part of a list, then a 410 again: nothing is deleted until an InitDone.
        index.apply(ClusterEvent::Pod(watcher::Event::Init));
        index.apply(ClusterEvent::Pod(watcher::Event::InitApply(pod("a", "u1", "5", "G0", "Running"))));
        let err = index.apply(ClusterEvent::WatchError { kind: ObjectKind::Pod, message: "410".into() });
        assert!(err.watch_error && err.inputs.is_empty());
        let out = list(
            &mut index,
            vec![pod("a", "u1", "6", "G0", "Running"), pod("b", "u2", "6", "G1", "Running")],
        );
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn a_pod_recreated_under_the_same_name_replaces_the_old_uid() {
        let mut index = ClusterIndex::new();
        list(&mut index, vec![pod("a", "u1", "1", "G0", "Running")]);
        let out = list(&mut index, vec![pod("a", "u9", "7", "G0", "Running")]);
        assert_eq!(out, ["deleted u1", "upsert a 1"]);
        // A late Delete of the old incarnation does not remove the new one.
        let late =
            index.apply(ClusterEvent::Pod(watcher::Event::Delete(pod("a", "u1", "8", "G0", "Running"))));
        assert!(late.inputs.is_empty());
        assert_eq!(index.len(ObjectKind::Pod), 1);
    }

    #[test]
    fn a_pod_being_deleted_leaves_the_engine_and_does_not_come_back() {
        let mut index = ClusterIndex::new();
        list(&mut index, vec![pod("a", "u1", "1", "G0", "Running")]);
        let mut terminating = pod("a", "u1", "2", "G0", "Running");
        terminating.metadata.deletion_timestamp = Some(devheal_k8s::crd::k8s_time(devheal_core::Time(1)));
        let out = index.apply(ClusterEvent::Pod(watcher::Event::Apply(terminating.clone())));
        assert_eq!(names(&out.inputs), ["deleted u1"]);
        terminating.metadata.resource_version = Some("3".into());
        let status = terminating.status.as_mut().expect("status");
        status.phase = Some("Failed".into());
        assert!(index.apply(ClusterEvent::Pod(watcher::Event::Apply(terminating.clone()))).inputs.is_empty());
        assert!(index.apply(ClusterEvent::Pod(watcher::Event::Delete(terminating))).inputs.is_empty());
        // Seen first while terminating (a restarted controller): never sent.
        let mut fresh = ClusterIndex::new();
        let mut t = pod("b", "u2", "1", "G1", "Running");
        t.metadata.deletion_timestamp = Some(devheal_k8s::crd::k8s_time(devheal_core::Time(1)));
        assert!(list(&mut fresh, vec![t]).is_empty());
    }

    #[test]
    fn node_device_health_sends_inventory_bindings_and_changed_health_only() {
        let mut index = ClusterIndex::new();
        // A pod without allocatedResourcesStatus: NodeDeviceHealth binds it to its device.
        let bare: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ml", "uid": "u1"},
            "spec": {"nodeName": "node-0", "containers": [{"name": "c"}]},
            "status": {"phase": "Running"}
        }))
        .expect("valid pod");
        assert_eq!(
            names(&index.apply(ClusterEvent::Pod(watcher::Event::Apply(bare))).inputs),
            ["upsert p 0"]
        );
        let dev = |h: &str, pods: serde_json::Value| {
            json!([{"id": "G0", "resource": "nvidia.com/gpu", "health": h, "pods": pods},
                   {"id": "G1", "resource": "nvidia.com/gpu", "health": "Healthy"}])
        };
        let first = index.apply(ClusterEvent::NodeHealth(watcher::Event::Apply(health(
            "node-0",
            dev("Healthy", json!([{"namespace": "ml", "name": "p", "uid": "u1"}])),
        ))));
        assert_eq!(
            names(&first.inputs),
            ["devices node-0 2", "upsert p 1", "health G0 Healthy", "health G1 Healthy"]
        );
        // A heartbeat that changes nothing the engine reads.
        let mut again =
            health("node-0", dev("Healthy", json!([{"namespace": "ml", "name": "p", "uid": "u1"}])));
        again.status.as_mut().expect("status").last_heartbeat =
            Some(devheal_k8s::crd::k8s_time(devheal_core::Time(5)));
        assert!(index.apply(ClusterEvent::NodeHealth(watcher::Event::Apply(again))).inputs.is_empty());
        let failed = index.apply(ClusterEvent::NodeHealth(watcher::Event::Apply(health(
            "node-0",
            dev("Unhealthy", json!([{"namespace": "ml", "name": "p", "uid": "u1"}])),
        ))));
        assert_eq!(names(&failed.inputs), ["health G0 Unhealthy"]);
        // The object goes away: its devices are Unknown (never remediated), the binding ends.
        let gone = index.apply(ClusterEvent::NodeHealth(watcher::Event::Delete(health("node-0", json!([])))));
        assert_eq!(names(&gone.inputs), ["upsert p 0", "health G0 Unknown", "health G1 Unknown"]);
    }

    /// A node speaks only for its own pods: node-0's NodeDeviceHealth binding a pod of node-1 to
    /// one of node-0's devices, or reporting that pod's progress, is ignored and listed once as a
    /// foreign claim; a binding named before the pod is known counts only if the pod turns out
    /// to be on node-0.
    #[test]
    fn a_node_speaks_only_for_its_own_pods() {
        let mut index = ClusterIndex::new();
        let bare = |name: &str, uid: &str, node: &str| -> Pod {
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "ml", "uid": uid},
                "spec": {"nodeName": node, "containers": [{"name": "c"}]},
                "status": {"phase": "Running"}
            }))
            .expect("valid pod")
        };
        index.apply(ClusterEvent::Pod(watcher::Event::Apply(bare("victim", "u-v", "node-1"))));
        index.apply(ClusterEvent::Pod(watcher::Event::Apply(bare("own", "u-o", "node-0"))));
        let report = |h: &str| {
            let mut o = health(
                "node-0",
                json!([{"id": "G0", "resource": "nvidia.com/gpu", "health": h, "pods": [
                    {"namespace": "ml", "name": "victim", "uid": "u-v"},
                    {"namespace": "ml", "name": "own", "uid": "u-o"},
                    {"namespace": "ml", "name": "later", "uid": "u-l"}]}]),
            );
            o.status.as_mut().expect("status").workloads = ["victim", "own"]
                .iter()
                .map(|n| devheal_k8s::crd::WorkloadProgress {
                    namespace: "ml".into(),
                    name: n.to_string(),
                    ..Default::default()
                })
                .collect();
            o
        };
        let first = index.apply(ClusterEvent::NodeHealth(watcher::Event::Apply(report("Healthy"))));
        assert_eq!(names(&first.inputs), ["devices node-0 1", "upsert own 1", "health G0 Healthy"]);
        let claims: Vec<(&str, &str, &str)> =
            first.foreign.iter().map(|c| (c.pod.as_str(), c.pod_node.as_str(), c.what)).collect();
        assert_eq!(claims, [("ml/victim", "node-1", "device"), ("ml/victim", "node-1", "progress")]);
        let progress: Vec<&str> = first.progress[0].1.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(progress, ["own"], "only the node's own pods' progress is handed on");
        // The same claims again are not listed again; the device fails: only the own pod is on it.
        let failed = index.apply(ClusterEvent::NodeHealth(watcher::Event::Apply(report("Unhealthy"))));
        assert!(failed.foreign.is_empty());
        assert_eq!(names(&failed.inputs), ["health G0 Unhealthy"]);
        // A pod named before it was known turns out to be on node-1: node-0's device is not its.
        let later = index.apply(ClusterEvent::Pod(watcher::Event::Apply(bare("later", "u-l", "node-1"))));
        assert_eq!(names(&later.inputs), ["upsert later 0"]);
    }

    /// A progress finding and the agent's report are merged: Healthy plus the finding is
    /// Degraded, Unhealthy and Unknown stay, a heartbeat repeats nothing, and withdrawing the
    /// finding gives the agent's report back. The workloads are handed on with their uids.
    #[test]
    fn progress_reasons_merge_with_the_agents_report() {
        let mut index = ClusterIndex::new();
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ml", "uid": "u1"},
            "spec": {"nodeName": "node-0", "containers": [{"name": "c"}]},
            "status": {"phase": "Running"}
        }))
        .expect("valid pod");
        index.apply(ClusterEvent::Pod(watcher::Event::Apply(pod)));
        let object = |h: &str| {
            let mut o = health("node-0", json!([{"id": "G0", "resource": "nvidia.com/gpu", "health": h}]));
            o.status.as_mut().expect("status").workloads = vec![devheal_k8s::crd::WorkloadProgress {
                namespace: "ml".into(),
                name: "p".into(),
                window_seconds: 60,
                ..Default::default()
            }];
            o
        };
        let up = index.apply(ClusterEvent::NodeHealth(watcher::Event::Apply(object("Healthy"))));
        assert_eq!(up.progress.len(), 1);
        assert_eq!(up.progress[0].1[0].uid.as_deref(), Some("u1"), "the uid is filled in from the pod");
        let g0 = DeviceKey { node: "node-0".into(), resource: "nvidia.com/gpu".into(), id: "G0".into() };
        let reason = HealthReason {
            source: devheal_core::HealthSource::Progress,
            code: None,
            message: "straggler ml/p: 17 % slower".into(),
            first_seen: devheal_core::Time(1),
            last_seen: devheal_core::Time(2),
            count: 1,
        };
        let set = index.set_progress_reason(&g0, Some(reason.clone()));
        assert_eq!(names(set.as_slice()), ["health G0 Degraded"]);
        assert!(index.set_progress_reason(&g0, Some(reason.clone())).is_none(), "unchanged");
        let heartbeat = index.apply(ClusterEvent::NodeHealth(watcher::Event::Apply(object("Healthy"))));
        assert!(heartbeat.inputs.is_empty(), "{:?}", names(&heartbeat.inputs));
        let failed = index.apply(ClusterEvent::NodeHealth(watcher::Event::Apply(object("Unhealthy"))));
        assert_eq!(names(&failed.inputs), ["health G0 Unhealthy"]);
        let Input::DeviceHealth { reasons, .. } = &failed.inputs[0] else { unreachable!() };
        assert_eq!(reasons.last(), Some(&reason), "the finding stays as evidence");
        let blind = index.apply(ClusterEvent::NodeHealth(watcher::Event::Apply(object("Unknown"))));
        assert_eq!(names(&blind.inputs), ["health G0 Unknown"]);
        index.apply(ClusterEvent::NodeHealth(watcher::Event::Apply(object("Healthy"))));
        let cleared = index.set_progress_reason(&g0, None);
        assert_eq!(names(cleared.as_slice()), ["health G0 Healthy"]);
        // A device no NodeDeviceHealth reports keeps the reason until one does.
        let elsewhere = DeviceKey { node: "node-9".into(), ..g0 };
        assert!(index.set_progress_reason(&elsewhere, Some(reason)).is_none());
    }

    #[test]
    fn a_binding_for_a_pod_with_its_own_devices_arrives_with_its_next_change() {
        let mut index = ClusterIndex::new();
        index.apply(ClusterEvent::Pod(watcher::Event::Apply(pod("a", "u1", "1", "G0", "Running"))));
        let bind = json!([{"id": "G5", "resource": "nvidia.com/gpu", "health": "Healthy",
                           "pods": [{"namespace": "ml", "name": "a"}]}]);
        let up = index.apply(ClusterEvent::NodeHealth(watcher::Event::Apply(health("node-0", bind))));
        assert_eq!(names(&up.inputs), ["devices node-0 1", "health G5 Healthy"]);
        let next = index.apply(ClusterEvent::Pod(watcher::Event::Apply(pod("a", "u1", "2", "G0", "Failed"))));
        assert_eq!(names(&next.inputs), ["upsert a 2"]);
    }

    /// One DRA device, however it is named: the pod's status names it by the CDI id of its
    /// claim (KEP-4680, the NVIDIA DRA driver) or by `driver/pool/device`, the agent reports it
    /// as `driver/pool/device` (or, an older agent, `pool/device` under the driver). The pod is
    /// on the agent's key, and the engine hears of one device.
    #[test]
    fn a_dra_device_from_a_pod_status_and_from_the_agent_is_one_device() {
        let mut index = ClusterIndex::new();
        let agent = DeviceKey::new("node-0", "gpu.nvidia.com", "gpu.nvidia.com/pool-a/gpu-0");
        let report = |id: &str| {
            health(
                "node-0",
                json!([{"id": id, "resource": "gpu.nvidia.com", "health": "Unhealthy",
                "aliases": ["GPU-4404041a-04cf-1ccf-9e70-f139a9b1e23c"]}]),
            )
        };
        let up = index.apply(ClusterEvent::NodeHealth(watcher::Event::Apply(report("pool-a/gpu-0"))));
        let Input::Devices { devices, .. } = &up.inputs[0] else { panic!("{:?}", names(&up.inputs)) };
        assert_eq!(devices[0].key, agent, "an older agent's `pool/device` is the same device");
        let claim_pod = |name: &str, uid: &str, id: &str| -> Pod {
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "ml", "uid": uid},
                "spec": {"nodeName": "node-0", "containers": [{"name": "c"}]},
                "status": {"phase": "Running", "containerStatuses": [{
                    "name": "c", "image": "i", "imageID": "", "ready": true, "restartCount": 0,
                    "allocatedResourcesStatus": [{"name": "claim:train-gpus/gpu",
                        "resources": [{"resourceID": id, "health": "Unhealthy"}]}]
                }]}
            }))
            .expect("valid pod")
        };
        // The CDI id names the pool nowhere: the node's one gpu-0 of that driver is it.
        let cdi = "k8s.gpu.nvidia.com/claim=dab5ab50-d59a-42a6-af16-cfd4628c0f7a-gpu-0";
        // A device plugin's name the agent lists as an alias.
        let named = [
            ("a", "u1", cdi),
            ("b", "u2", "gpu.nvidia.com/pool-a/gpu-0"),
            ("c", "u3", "GPU-4404041a-04cf-1ccf-9e70-f139a9b1e23c"),
        ];
        for (name, uid, id) in named {
            let up = index.apply(ClusterEvent::Pod(watcher::Event::Apply(claim_pod(name, uid, id))));
            let Some(Input::PodUpsert(p)) = up.inputs.first() else { panic!("{:?}", names(&up.inputs)) };
            assert_eq!(p.devices, std::slice::from_ref(&agent), "{id}");
            let status = &p.containers[0].allocated_resources_status[0];
            assert_eq!(
                devheal_core::canonical_key(&DeviceKey::new(
                    "node-0",
                    status.resource.clone(),
                    status.device_id.clone()
                )),
                agent,
                "{id}: the status' report is about the agent's device"
            );
        }
    }

    #[test]
    fn invalid_objects_are_rejected_not_fatal() {
        let mut index = ClusterIndex::new();
        let nameless: Pod = serde_json::from_value(json!({"metadata": {"namespace": "ml"}})).expect("pod");
        let up = index.apply(ClusterEvent::Pod(watcher::Event::Apply(nameless)));
        assert_eq!(up.rejected.len(), 1);
        assert!(up.inputs.is_empty());
        let mut bad =
            health("node-1", json!([{"id": "G0", "resource": "nvidia.com/gpu", "health": "Healthy"}]));
        bad.metadata.name = Some(String::new());
        let up = index.apply(ClusterEvent::NodeHealth(watcher::Event::Apply(bad)));
        assert_eq!(up.rejected.len(), 1, "{:?}", up.rejected);
    }

    #[test]
    fn matched_pods_count_each_policys_namespace_and_labels() {
        let mut index = ClusterIndex::new();
        let policy = |name: &str, ns: &str, labels: serde_json::Value| -> FailurePolicyObject {
            serde_json::from_value(json!({
                "apiVersion": "devheal.io/v1alpha1", "kind": "FailurePolicy",
                "metadata": {"name": name, "namespace": ns},
                "spec": {"selector": {"matchLabels": labels}, "rules": [{"name": "r", "action": "MarkPod"}]}
            }))
            .expect("valid policy")
        };
        for p in [
            policy("llama", "ml", json!({"jobset.sigs.k8s.io/jobset-name": "llama"})),
            policy("other-jobset", "ml", json!({"jobset.sigs.k8s.io/jobset-name": "gpt"})),
            policy("everything", "ml", json!({})),
            policy("elsewhere", "web", json!({})),
        ] {
            index.apply(ClusterEvent::Policy(watcher::Event::Apply(p)));
        }
        list(&mut index, vec![pod("a", "u1", "1", "G0", "Running"), pod("b", "u2", "1", "G1", "Running")]);
        let mut other = pod("c", "u3", "1", "G2", "Running");
        other.metadata.labels =
            Some([("jobset.sigs.k8s.io/jobset-name".to_string(), "gpt".to_string())].into());
        index.apply(ClusterEvent::Pod(watcher::Event::Apply(other)));
        let counts =
            |index: &ClusterIndex| -> Vec<(String, u64)> { index.matched_pods().into_iter().collect() };
        let expected = |llama: u64, everything: u64| {
            vec![
                ("ml/everything".to_string(), everything),
                ("ml/llama".to_string(), llama),
                ("ml/other-jobset".to_string(), 1),
                ("web/elsewhere".to_string(), 0),
            ]
        };
        assert_eq!(counts(&index), expected(2, 3));
        // A pod being deleted no longer counts; a relabelled one moves.
        let mut terminating = pod("a", "u1", "2", "G0", "Running");
        terminating.metadata.deletion_timestamp = Some(devheal_k8s::crd::k8s_time(devheal_core::Time(1)));
        index.apply(ClusterEvent::Pod(watcher::Event::Apply(terminating)));
        let mut moved = pod("b", "u2", "2", "G1", "Running");
        moved.metadata.labels = Some([("team".to_string(), "x".to_string())].into());
        index.apply(ClusterEvent::Pod(watcher::Event::Apply(moved)));
        assert_eq!(counts(&index), expected(0, 2));
    }

    #[test]
    fn policies_are_sent_as_a_set_once_per_change() {
        let mut index = ClusterIndex::new();
        let policy = |name: &str, action: &str| -> FailurePolicyObject {
            serde_json::from_value(json!({
                "apiVersion": "devheal.io/v1alpha1", "kind": "FailurePolicy",
                "metadata": {"name": name, "namespace": "ml"},
                "spec": {"rules": [{"name": "r", "action": action}]}
            }))
            .expect("valid policy")
        };
        let mut out = Vec::new();
        for ev in [
            watcher::Event::Init,
            watcher::Event::InitApply(policy("a", "MarkPod")),
            watcher::Event::InitApply(policy("b", "Ignore")),
            watcher::Event::InitDone,
        ] {
            out.extend(names(&index.apply(ClusterEvent::Policy(ev)).inputs));
        }
        assert_eq!(out, ["policies 2"]);
        let same = index.apply(ClusterEvent::Policy(watcher::Event::Apply(policy("a", "MarkPod"))));
        assert!(same.inputs.is_empty());
        let changed = index.apply(ClusterEvent::Policy(watcher::Event::Apply(policy("a", "EvictPod"))));
        assert_eq!(names(&changed.inputs), ["policies 2"]);
        let gone = index.apply(ClusterEvent::Policy(watcher::Event::Delete(policy("b", "Ignore"))));
        assert_eq!(names(&gone.inputs), ["policies 1"]);
    }
}
