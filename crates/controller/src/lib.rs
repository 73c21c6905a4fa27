//! devheal-controller: the cluster controller.
//!
//! - [`index`]: a pure index fed by the watches (Pods, Nodes, NodeDeviceHealth, FailurePolicy)
//!   that turns what changed into the decision engine's inputs, and survives relists;
//! - [`events`]: the kinds of object watched and one watch event of any of them;
//! - [`leftovers`]: quarantines (node taints, DeviceTaintRules) an earlier controller process
//!   left, released once their device is Healthy;
//! - [`cluster`]: the small trait the loop reads the cluster through ([`cluster::Cluster`]), its
//!   Kubernetes implementation over kube-runtime watchers ([`cluster::KubeCluster`]) and an
//!   in-memory fake that also carries out actions like Kubernetes would ([`cluster::FakeCluster`]);
//! - [`controller`]: the loop — index, engine with the wall clock, periodic ticks, actions through
//!   a [`devheal_core::Actuator`] only while leader, retries, dry run;
//! - [`metrics`]: Prometheus metrics and the `/metrics`, `/healthz`, `/readyz` server;
//! - [`settings`]: the settings file (budgets, breakers, probation, quorum), its overrides and
//!   its reload;
//! - [`status`]: the FailurePolicy status the leader writes (actions taken per policy, matched
//!   pods, budgets), through a [`status::PolicyStatusWriter`];
//! - [`upgrade`]: the rollout gate, staged device-stack DaemonSet upgrades under `UpgradePlan`s,
//!   beside the loop and under the same lease.
//!
//! The controller does not pick a k8s-openapi version feature; the binary does.
#![forbid(unsafe_code)]

pub mod checkpoint_advice;
pub mod cluster;
pub mod controller;
pub mod durable;
pub mod events;
pub mod index;
pub mod leftovers;
pub mod metrics;
pub mod progress;
pub mod settings;
pub mod status;
pub mod upgrade;

pub use cluster::{Cluster, FakeCluster, KubeCluster, WatchSettings};
pub use controller::{
    AlwaysLeader, Clock, Controller, ControllerError, ControllerSettings, LeaderFlag, Leadership,
    ManualClock, SystemClock, describe, keep_lease,
};
pub use durable::{KubeStateStore, MemoryStateStore, StateStore};
pub use index::{ClusterEvent, ClusterIndex, IndexError, IndexUpdate, ObjectKind};
pub use metrics::{LoopHealth, Metrics, serve};
pub use settings::{ReloadOutcome, Settings, SettingsError, SettingsReloader};
pub use status::{PolicyStatusBook, PolicyStatusWriter};
