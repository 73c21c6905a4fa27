//! The agent's HTTP server (`/metrics`, `/healthz`, `POST /v1/progress`, the fake devices'
//! endpoint), bounded against clients that hold connections: at most `max_connections` at once
//! (a connection over the cap is closed at once), request headers within `header_timeout` of
//! the connection opening or of the previous response (a half-open connection that sends
//! nothing is closed then), and no connection lives longer than `connection_timeout` (a body
//! sent a byte at a time cannot hold one). Each request carries the peer's address
//! (`ConnectInfo`), which progress reports are checked against.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

/// Bounds of the agent's HTTP server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServeLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub connection_timeout: Duration,
}

impl Default for ServeLimits {
    /// 512 connections, headers within 5 s, 30 s a connection.
    fn default() -> Self {
        ServeLimits {
            max_connections: 512,
            header_timeout: Duration::from_secs(5),
            connection_timeout: Duration::from_secs(30),
        }
    }
}

/// Serve `app` on `listener` within `limits` until `stop` turns true.
pub async fn serve(listener: TcpListener, app: Router, limits: ServeLimits, mut stop: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|s| *s) => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: pause rather than spin.
                tracing::warn!(error = %e, "accepting an HTTP connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::debug!(%peer, max = limits.max_connections, "HTTP connection over the cap: closed");
            drop(stream);
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(
            app.clone().layer(axum::Extension(ConnectInfo(peer))),
        );
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(limits.connection_timeout, connection).await;
            drop(slot);
        });
    }
}
