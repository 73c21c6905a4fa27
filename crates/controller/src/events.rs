//! What the controller's watches report: the kinds of object it watches ([`ObjectKind`]) and one
//! watch event of any of them ([`ClusterEvent`]).
//!
//! Pods, Nodes, NodeDeviceHealth and FailurePolicy feed the index ([`crate::index`]); the index
//! is ready once each of them has been listed ([`ObjectKind::ALL`]). DeviceTaintRules are
//! watched only where the cluster serves them, and only those devheal wrote: they feed
//! [`crate::leftovers`] (what an earlier controller process left) and never the engine.

use devheal_k8s::crd::{FailurePolicy as FailurePolicyObject, NodeDeviceHealth as NodeDeviceHealthObject};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::DynamicObject;
use kube::runtime::watcher;

/// The kinds of object the controller watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectKind {
    Pod,
    Node,
    NodeDeviceHealth,
    FailurePolicy,
    /// DRA DeviceTaintRules labelled `app.kubernetes.io/managed-by=devheal` (watched where served).
    DeviceTaintRule,
}

impl ObjectKind {
    /// The kinds the index holds; it is ready once each has been listed.
    pub const ALL: [ObjectKind; 4] =
        [ObjectKind::Pod, ObjectKind::Node, ObjectKind::NodeDeviceHealth, ObjectKind::FailurePolicy];

    /// A short label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            ObjectKind::Pod => "pod",
            ObjectKind::Node => "node",
            ObjectKind::NodeDeviceHealth => "node_device_health",
            ObjectKind::FailurePolicy => "failure_policy",
            ObjectKind::DeviceTaintRule => "device_taint_rule",
        }
    }
}

/// One thing a watch reported.
///
/// The variants differ in size (a Pod is larger than a Status message); each event is moved a
/// few times from its watcher to the index, so boxing would cost more (an allocation per event)
/// than it saves.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum ClusterEvent {
    Pod(watcher::Event<Pod>),
    Node(watcher::Event<Node>),
    NodeHealth(watcher::Event<NodeDeviceHealthObject>),
    Policy(watcher::Event<FailurePolicyObject>),
    /// A DeviceTaintRule devheal wrote (at the `resource.k8s.io` version the cluster serves).
    DeviceTaintRule(watcher::Event<DynamicObject>),
    /// A watch failed; the watcher retries (with backoff) and, after a 410 Gone, relists.
    WatchError {
        kind: ObjectKind,
        message: String,
    },
}

impl ClusterEvent {
    pub fn kind(&self) -> ObjectKind {
        match self {
            ClusterEvent::Pod(_) => ObjectKind::Pod,
            ClusterEvent::Node(_) => ObjectKind::Node,
            ClusterEvent::NodeHealth(_) => ObjectKind::NodeDeviceHealth,
            ClusterEvent::Policy(_) => ObjectKind::FailurePolicy,
            ClusterEvent::DeviceTaintRule(_) => ObjectKind::DeviceTaintRule,
            ClusterEvent::WatchError { kind, .. } => *kind,
        }
    }
}
