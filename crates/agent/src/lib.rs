//! devheal-agent: the node agent.
//!
//! - [`nvml`]: GPU telemetry and Xid events through NVML, loaded at run time;
//!   [`nvml_evidence`] turns a sample into health evidence.
//! - [`health`]: the per-device health state machine (probation, Unknown when blind, no latching).
//! - [`accel`]: AMD and Intel accelerators from sysfs (DRM cards, accel devices) by PCI
//!   address; [`amd`]: AMD GPUs' ECC counts through amdsmi, loaded at run time.
//! - [`identity`]: every name a device goes by (UUID, PCI id, replicas, MIG, DRA) resolved to
//!   one key and its parent.
//! - [`snapshot`]: the `NodeDeviceHealth` object built from inventory, verdicts, the kubelet's
//!   device ↔ pod map and the sources' state.
//! - [`once`]: one pass over every source (`devheal agent --once`).
//! - [`run`]: the long-running agent: every source as a task or thread, one event loop that owns
//!   the tracker, and the publisher; [`kernel`] is its kernel-log source.
//! - [`publish`]: the `NodeDeviceHealth` status (server-side apply, on change and on a
//!   heartbeat), the node condition `devheal.io/DevicesHealthy` and Events; or JSON lines.
//! - [`metrics`] and [`http`]: `/metrics`, `/healthz` and the fake devices' `/fake/*`.
//! - [`fake`]: fake devices (`--fake-devices N`) with fault injection.
//! - [`progress`]: workload progress (each pod's step windows, hangs, shifts from its own
//!   baseline) for `status.workloads`; pods post steps to `POST /v1/progress` ([`http`]) or
//!   name a metric that [`scrape`] reads.
//!
//! The kernel-log reader comes from `devheal-detect` and the kubelet clients from
//! `devheal-kubelet`. See `docs/agent.md`.
#![forbid(unsafe_code)]

pub mod accel;
pub mod amd;
pub mod fake;
pub mod gaudi;
pub mod health;
pub mod http;
pub mod identity;
pub mod kernel;
pub mod kubelet_devices;
pub mod library;
pub mod metrics;
pub mod nic;
pub mod nvml;
pub mod nvml_evidence;
pub mod nvml_trends;
pub mod once;
pub mod pci_topology;
pub mod progress;
pub mod publish;
pub mod reset;
pub mod restore;
pub mod run;
pub mod scrape;
pub mod serve;
pub mod snapshot;
pub mod sources;
pub mod stack;
pub mod token;
pub mod vendor;
