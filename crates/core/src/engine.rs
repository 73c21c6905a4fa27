//! The decision engine: `(state, input, now) -> actions`.
//!
//! SKELETON: the signatures below are the contract the simulator, controller and agent code
//! against. The body is being written (issue 3); keep these names and shapes, extend freely.

use serde::{Deserialize, Serialize};

use crate::action::PlannedAction;
use crate::device::{Device, DeviceKey, Health, HealthReason};
use crate::incident::KernelIncident;
use crate::pod::{NodeInfo, PodInfo};
use crate::time::{Duration, Time};

/// Cluster-wide safety settings and the policies in force.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EngineConfig {}

/// Everything the engine can be told.
#[derive(Clone, Debug)]
pub enum Input {
    /// The devices a node has (its inventory, from NodeDeviceHealth or the simulator's model),
    /// so that kernel incidents naming a PCI address can be mapped to a device.
    Devices {
        node: String,
        devices: Vec<Device>,
    },
    /// A device's health as a source (agent, NodeDeviceHealth, simulator) now reports it.
    DeviceHealth {
        device: DeviceKey,
        health: Health,
        reasons: Vec<HealthReason>,
    },
    /// A correlated kernel/NVML incident on a node.
    KernelIncident(KernelIncident),
    PodUpsert(PodInfo),
    PodDeleted {
        uid: String,
    },
    NodeUpsert(NodeInfo),
    NodeDeleted {
        name: String,
    },
    /// Training progress from a pod: the step reached and the step's duration.
    Progress {
        pod_uid: String,
        step: u64,
        step_time: Duration,
    },
    /// Time passes (budgets refill, probation ends, hangs are noticed).
    Tick,
}

/// The engine and all the state it keeps.
#[derive(Debug, Default)]
pub struct Engine {
    _config: EngineConfig,
}

impl Engine {
    pub fn new(config: EngineConfig) -> Self {
        Engine { _config: config }
    }

    /// Feed one input observed at `now`; returns the actions to carry out, each with an
    /// idempotency key.
    pub fn handle(&mut self, _input: Input, _now: Time) -> Vec<PlannedAction> {
        Vec::new()
    }
}
