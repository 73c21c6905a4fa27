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
//! NodeDeviceHealth's `status.network` (the node's NICs and their links) becomes the node's
//! network fault ([`network_fault`]), sent to the engine as `Input::NodeNetwork` when it changes:
//! a fault when a link is at fault, `None` when none is (which lifts a network cordon). A
//! deleted NodeDeviceHealth sends nothing: with no agent, nothing is known of the links.
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
//!
//! This file holds the index's records and the bookkeeping of lists; each kind's watch events
//! are handled in a file of their own: `index/pods.rs`, `index/nodes.rs`, `index/health.rs`
//! (NodeDeviceHealth) and `index/policies.rs`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::Hasher;

use devheal_core::{Device, DeviceKey, Health, HealthReason, Input, NodeInfo, PodInfo};
use devheal_k8s::crd::{
    FailurePolicy as FailurePolicyObject, NodeDeviceHealth as NodeDeviceHealthObject, WorkloadProgress,
};
use devheal_k8s::node_health::{DeviceReport, NodeDeviceHealth as NodeDeviceHealthDocument, PodBinding};
use devheal_k8s::{node_from_k8s, pod_from_k8s};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::watcher;
use serde::Serialize;

pub use crate::events::{ClusterEvent, ObjectKind};

mod health;
mod nodes;
mod pods;
mod policies;

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

/// A node: its conversion from the Node object (the driver version its labels give, if any),
/// the digest of what the engine last got for it (with the agent's driver version, see
/// [`HealthEntry::versions`]), and the list epoch. The conversion is kept (a few hundred
/// bytes of labels a node) so that a new driver version from the agent can be sent without the
/// Node changing.
#[derive(Debug)]
struct NodeEntry {
    info: NodeInfo,
    sent: u64,
    epoch: u32,
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
    /// The versions of the device stack the node's agent reports: the engine's version canary
    /// counts nodes by them, over the Node's labels, so that the version `kubectl devheal
    /// status` lists is the one a hold names.
    versions: StackVersions,
    /// The network fault the node's agent last reported (`status.network`), as the engine got it.
    network: Option<devheal_core::NetworkFault>,
    /// The reset requests the node's agent answered `Failed` (`status.resets`) that the engine
    /// was told of, by id: each once. Bounded by the CRD (64 answers).
    resets_failed: BTreeSet<String>,
}

/// The device stack's versions as a node's agent reports them in its NodeDeviceHealth's sources.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct StackVersions {
    /// The driver version NVML reads (the `nvml` source).
    pub(crate) driver: Option<String>,
    /// The device plugin's version, from its pod on the node (the `device_plugin_pod` source).
    pub(crate) device_plugin: Option<String>,
}

impl StackVersions {
    /// The versions in a NodeDeviceHealth's sources (an empty version is none).
    pub(crate) fn of(status: Option<&devheal_k8s::crd::NodeDeviceHealthStatus>) -> StackVersions {
        let version = |name: &str| {
            status
                .and_then(|s| s.sources.iter().find(|src| src.name == name))
                .and_then(|src| src.version.clone())
                .filter(|v| !v.is_empty())
        };
        StackVersions {
            driver: version(devheal_k8s::crd::NVML_SOURCE),
            device_plugin: version(devheal_k8s::crd::DEVICE_PLUGIN_POD_SOURCE),
        }
    }

    fn is_empty(&self) -> bool {
        self.driver.is_none() && self.device_plugin.is_none()
    }
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
    nodes: HashMap<String, NodeEntry>,
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
        in_place: pod.in_place,
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
}

#[cfg(test)]
mod tests;
