//! devheal-core: the vocabulary every other crate speaks (devices, health, pods, gangs, kernel
//! incidents, failure classes, actions), failure attribution, the policy model and the decision
//! engine.
//!
//! This crate is pure: no I/O, no async, no clock. Time is always an argument ([`Time`]), so the
//! controller, the node agent and the simulator all run exactly the same decisions.
#![forbid(unsafe_code)]

pub mod action;
pub mod attribution;
pub mod catalog;
pub mod checkpoint;
pub mod device;
pub mod engine;
pub mod gang;
pub mod identity;
pub mod incident;
pub mod pod;
pub mod policy;
pub mod time;

pub use action::{Action, ActionOutcome, Actuator, PlannedAction, RepairKind};
pub use attribution::{DeviceEvidence, IncidentEvidence, Verdict, attribute};
pub use catalog::ExitCodeCatalog;
pub use device::{Device, DeviceHealth, DeviceKey, Health, HealthReason, HealthSource, Vendor};
pub use engine::{
    BreakerFailure, BreakerState, DeviceHistory, DurableState, Engine, EngineConfig, GangRestarts,
    IN_PLACE_FALLBACK_SUFFIX, Input, MAX_DURABLE_DEVICES, NodeCordon, NodeRepairs, PolicyDecision,
    ProgressBreakerState, ProgressRestart, RepairRequest, SafetyState,
};
pub use gang::gang_of;
pub use identity::{DeviceId, DraDevice, canonical_key, dra_device, parse_device_id};
pub use incident::{Attribution, KernelIncident, NetworkFault};
pub use pod::ResourceHealth;
pub use pod::{
    ContainerInfo, ContainerState, FailureClass, GangId, InPlaceRestart, NodeInfo, PodCondition, PodInfo,
    PodPhase,
};
pub use policy::{FailurePolicy, PolicyRule, RuleAction, SafetySettings, SafetySettingsError};
pub use time::{Duration, Time};
