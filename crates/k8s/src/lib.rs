//! devheal-k8s: Kubernetes objects into the engine's types.
//!
//! - [`pod`]: a k8s-openapi `Pod` into the engine's lean [`devheal_core::PodInfo`];
//! - [`node`]: a k8s-openapi `Node` into [`devheal_core::NodeInfo`];
//! - [`node_health`]: the `NodeDeviceHealth` object (devheal.io/v1alpha1) into devices, their
//!   health and the pods bound to them;
//! - [`document`]: reading what `kubectl get -o json|yaml` prints (a Pod, a List or PodList),
//!   NodeDeviceHealth objects and FailurePolicy objects, with errors that say what and where;
//! - [`actuator`]: [`KubeActuator`], the engine's actions carried out on a cluster (evictions,
//!   pod and node conditions, taints, DeviceTaintRules, gang restarts, Events);
//! - [`lease`]: [`LeaseElector`], leader election on a coordination.k8s.io/v1 Lease;
//! - [`upgrade_plan`]: the `UpgradePlan` resource, a staged device-stack DaemonSet upgrade.
//!
//! This library does not pick a k8s-openapi version feature; the binary does.
#![forbid(unsafe_code)]

pub mod actuator;
pub mod crd;
pub mod document;
pub mod lease;
pub mod node;
pub mod node_health;
pub mod pod;
pub mod schema;
pub mod upgrade_plan;
mod wire;

pub use actuator::{ActuatorConfig, ActuatorError, DeviceTaintRuleSupport, KubeActuator, StatusWriteError};
pub use document::{DocumentError, parse_node_health, parse_pods, parse_policies};
pub use lease::{LeaseElector, LeaseError};
pub use node::node_from_k8s;
pub use node_health::NodeDeviceHealth;
pub use pod::{ConversionError, pod_from_k8s};
pub use wire::{Clock, system_clock};
