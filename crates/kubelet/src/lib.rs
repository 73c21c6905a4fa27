//! devheal-kubelet: the kubelet's node-local gRPC APIs, from the project's own `.proto` files.
//!
//! - [`api`]: the generated PodResources v1 and device plugin v1beta1 messages and services.
//! - [`uds`]: gRPC channels over Unix sockets that re-dial the socket path whenever they reconnect,
//!   so a kubelet that re-creates its socket is followed without restarting the agent.
//! - [`podresources`]: which container holds which device, within the kubelet's rate limit.
//! - [`deviceplugin`]: registering a device plugin with the kubelet. devheal opens no plugin's
//!   `ListAndWatch`: a plugin that feeds every stream from one channel would lose updates to it.
//! - [`server`]: in-process servers for both APIs on a Unix socket: the test kubelet and test
//!   plugins, and the agent's fake-device mode.
#![forbid(unsafe_code)]

pub mod api;
pub mod deviceplugin;
pub mod podresources;
pub mod server;
pub mod uds;

#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    #[error("cannot reach {socket}: {message}")]
    Connect { socket: String, message: String },
    #[error("{call} on {socket} failed: {status}")]
    Call { call: &'static str, socket: String, status: Box<tonic::Status> },
    #[error("cannot serve on {socket}: {message}")]
    Serve { socket: String, message: String },
}
