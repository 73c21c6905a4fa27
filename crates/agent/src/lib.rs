//! devheal-agent: the node agent.
//!
//! - [`nvml`]: GPU telemetry and Xid events through NVML, loaded at run time;
//!   [`nvml_evidence`] turns a sample into health evidence.
//! - [`health`]: the per-device health state machine (probation, Unknown when blind, no latching).
//! - [`snapshot`]: the `NodeDeviceHealth` object built from inventory, verdicts, the kubelet's
//!   device ↔ pod map and the sources' state.
//! - [`once`]: one pass over every source (`devheal agent --once`).
//!
//! The kernel-log reader comes from `devheal-detect` and the kubelet clients from
//! `devheal-kubelet`. Still to come (issue 6): the long-running event loop and the publisher that
//! server-side-applies the object, the node condition, Events and `/metrics`.
#![forbid(unsafe_code)]

pub mod health;
pub mod nvml;
pub mod nvml_evidence;
pub mod once;
pub mod snapshot;
