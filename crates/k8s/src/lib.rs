//! devheal-k8s: Kubernetes objects into the engine's types.
//!
//! - [`pod`]: a k8s-openapi `Pod` into the engine's lean [`devheal_core::PodInfo`];
//! - [`node`]: a k8s-openapi `Node` into [`devheal_core::NodeInfo`];
//! - [`node_health`]: the `NodeDeviceHealth` object (devheal.io/v1alpha1) into devices, their
//!   health and the pods bound to them;
//! - [`document`]: reading what `kubectl get -o json|yaml` prints (a Pod, a List or PodList),
//!   NodeDeviceHealth objects and FailurePolicy objects, with errors that say what and where.
//!
//! This library does not pick a k8s-openapi version feature; the binary does.
#![forbid(unsafe_code)]

pub mod crd;
pub mod document;
pub mod node;
pub mod node_health;
pub mod pod;

pub use document::{DocumentError, parse_node_health, parse_pods, parse_policies};
pub use node::node_from_k8s;
pub use node_health::NodeDeviceHealth;
pub use pod::{ConversionError, pod_from_k8s};
