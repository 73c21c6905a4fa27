//! gRPC channels over Unix domain sockets.
//!
//! The channel is lazy and its connector dials the socket *path* every time it (re)connects.
//! The kubelet deletes and re-creates its sockets when it restarts, and a device plugin's socket
//! comes back when the plugin does; dialing by path means the next call after that reaches the
//! new socket, with no state to reset on our side.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

/// A lazily connecting channel to the gRPC server on `socket`.
pub fn channel(socket: &Path) -> Channel {
    let path: PathBuf = socket.to_path_buf();
    // The URI is required by tonic but unused: the connector below decides where to connect.
    Endpoint::from_static("http://kubelet.local")
        .connect_timeout(std::time::Duration::from_secs(5))
        .connect_with_connector_lazy(tower::service_fn(move |_| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
}
