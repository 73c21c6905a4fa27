//! The agent's HTTP endpoint (default `0.0.0.0:9101`):
//!
//! - `GET /metrics`: Prometheus metrics (OpenMetrics text);
//! - `GET /healthz`: 200 while the event loop has turned within the last 30 s, else 503;
//! - with `--fake-devices N` only: `POST /fake/fail?device=ID`, `POST /fake/degrade?device=ID`,
//!   `POST /fake/recover?device=ID` (see [`crate::fake`]); 404 for an unknown device.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::fake::{FakeControl, FakeError, FakeFault};
use crate::metrics::AgentMetrics;
use crate::publish::wall_now;

/// The event loop turns at least once a second; this much silence means it is stuck.
const LOOP_STALE_SECS: i64 = 30;

#[derive(Clone)]
pub struct HttpState {
    pub metrics: Arc<AgentMetrics>,
    pub fake: Option<FakeControl>,
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/fake/{action}", post(fake))
        .with_state(state)
}

async fn metrics(State(state): State<HttpState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        state.metrics.render(),
    )
        .into_response()
}

async fn healthz(State(state): State<HttpState>) -> Response {
    let now = (wall_now().as_nanos() / 1_000_000_000).max(0);
    let last = state.metrics.loop_alive();
    if last > 0 && now - last <= LOOP_STALE_SECS {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("event loop last ran at {last}, now {now}\n"))
            .into_response()
    }
}

async fn fake(State(state): State<HttpState>, Path(action): Path<String>, uri: Uri) -> Response {
    let Some(control) = state.fake else {
        return (StatusCode::NOT_FOUND, "fake devices are off (start the agent with --fake-devices N)\n")
            .into_response();
    };
    let Some(fault) = FakeFault::parse(&action) else {
        return (StatusCode::NOT_FOUND, format!("no fake action {action:?}: use fail, degrade or recover\n"))
            .into_response();
    };
    let Some(device) = query_param(uri.query().unwrap_or(""), "device") else {
        return (StatusCode::BAD_REQUEST, "missing ?device=ID\n").into_response();
    };
    match control.inject(&device, fault).await {
        Ok(line) => {
            let body = serde_json::json!({ "device": device, "action": fault, "kernelLine": line });
            ([(header::CONTENT_TYPE, "application/json")], format!("{body}\n")).into_response()
        }
        Err(e @ FakeError::UnknownDevice(..)) => (StatusCode::NOT_FOUND, format!("{e}\n")).into_response(),
        Err(e @ FakeError::Closed) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    }
}

/// The value of `name` in a query string, percent-decoded (`+` is a space).
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(key)? == name).then(|| percent_decode(value)).flatten()
    })
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_found_and_decoded() {
        assert_eq!(query_param("device=fake-gpu-1", "device").as_deref(), Some("fake-gpu-1"));
        assert_eq!(query_param("a=1&device=GPU%2Dx+y", "device").as_deref(), Some("GPU-x y"));
        assert_eq!(query_param("devices=1", "device"), None);
        assert_eq!(query_param("device=%zz", "device"), None);
        assert_eq!(query_param("device=%4", "device"), None);
        assert_eq!(query_param("", "device"), None);
    }
}
