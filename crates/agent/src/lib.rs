//! devheal-agent: the node agent's device-health sources. So far: the NVML source (GPU telemetry
//! and Xid events, loaded at run time); the kernel-log, device-plugin and PodResources sources, the
//! per-device state machine and the publisher follow (issue 6).
#![forbid(unsafe_code)]

pub mod health;
pub mod nvml;
