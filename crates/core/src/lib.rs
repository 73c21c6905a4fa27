//! devheal-core: the vocabulary every other crate speaks (devices, health, pods, gangs, kernel
//! incidents, failure classes, actions), failure attribution, the policy model and the decision
//! engine.
//!
//! This crate is pure: no I/O, no async, no clock. Time is always an argument ([`Time`]), so the
//! controller, the node agent and the simulator all run exactly the same decisions.
#![forbid(unsafe_code)]

pub mod action;
pub mod device;
pub mod engine;
pub mod incident;
pub mod pod;
pub mod time;

pub use action::{Action, PlannedAction, RepairKind};
pub use device::{Device, DeviceHealth, DeviceKey, Health, HealthReason, HealthSource, Vendor};
pub use engine::{Engine, EngineConfig, Input};
pub use incident::{Attribution, KernelIncident};
pub use pod::{
    ContainerInfo, ContainerState, FailureClass, GangId, NodeInfo, PodCondition, PodInfo, PodPhase,
};
pub use time::{Duration, Time};
