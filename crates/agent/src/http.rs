//! The agent's HTTP endpoints, on two ports:
//!
//! - the metrics port (default `0.0.0.0:9101`, [`metrics_router`]):
//!   - `GET /metrics`: Prometheus metrics (OpenMetrics text);
//!   - `GET /healthz`: 200 while the event loop has turned within the last 30 s, else 503;
//!   - with `--fake-devices N` only: `POST /fake/<action>?device=ID`, the action one of `fail`,
//!     `degrade`, `recover`, `ecc`, `wedge`, `corrupt`, `hold`, `free` (see [`crate::fake`]); 404 for an
//!     unknown device;
//! - the progress port (default `0.0.0.0:9102`, [`progress_router`]), the only one the
//!   DaemonSet publishes on the node's IP (a `hostPort`), so that training pods reach it:
//!   - `POST /v1/progress`: a pod's training steps (below).
//!
//! # `POST /v1/progress`
//!
//! A pod bound to a device on this node reports the steps it finished, as JSON (at most 1 MiB):
//!
//! ```json
//! {"namespace":"ml","pod":"trainer-3",
//!  "steps":[{"seconds":1.02,"step":1200,"endTime":"2026-11-28T10:00:00.5Z"}],
//!  "pauseSeconds":300}
//! ```
//!
//! - `namespace`, `pod` (required): the reporting pod.
//! - `steps` (optional, at most 1,000): `seconds` (required, > 0) is the pod's *own* compute time
//!   for the step (e.g. CUDA-event timing of forward and backward, before the collective), not
//!   the wall-clock step, which is the same on every member of a synchronous gang; `step` the
//!   workload's step number; `endTime` (RFC 3339) when the step ended, default: on arrival.
//! - `pauseSeconds` (optional, 0 to 86,400): no progress is to be expected for this long (a
//!   checkpoint save); the hang timeout counts from the end of the pause (the agent cuts it to
//!   `--max-pause`).
//!
//! Answers (JSON): 202 `{"accepted":N,"rejected":[{"index":i,"error":"..."}]}` (a step that ended
//! in a window already closed, or in the future, is rejected, the others kept), with
//! `"replaceAtCheckpoint":{"message":"...","exitCode":75}` while the pod carries the condition
//! `devheal.io/ReplaceAtCheckpoint` (the controller wants this gang member to write its checkpoint
//! and exit with that code, so that only it is replaced: `docs/policy.md`, "Replacing a slow
//! member), and `"restartInPlace":{"message":"...","incident":"...","exitCode":76}` while the pod
//! carries the condition `devheal.io/RestartInPlace` and has not restarted since (the controller
//! restarts the member's gang and wants this member restarted in place: it exits with that code,
//! and its pod's container restart rule restarts it on the same node and devices:
//! `docs/policy.md`, "Restarting a gang in place"); a body with no steps is a poll for these; 400
//! `{"error":"..."}` naming the field (and step index) for a malformed body; 401 for a bearer
//! token that is not a pod's projected token for the audience `devheal`; 403 when the request is
//! not shown to come from the pod (its own IP, or its own token; [`ProgressAuth`]; the same
//! answer whether or not the pod exists); 404 when the pod holds no device on this node; 408 when the body is not
//! sent within 10 s; 413 for a body over 1 MiB; 429 (with `Retry-After`) over a rate limit
//! ([`ProgressLimits`]: per peer address and for the whole agent before the body is read, per
//! pod after the check of who sent it); 503 when the agent cannot take it now.
//!
//! # Bounded
//!
//! Besides the server's own bounds ([`crate::serve`]), at most
//! [`ProgressLimits::concurrent_bodies`] bodies are read and parsed at once (each at most 1 MiB),
//! rate limits are checked before a body is read, and the rate limiters remember at most
//! [`ProgressLimits::max_tracked`] peers and pods. A reported step costs no memory after it is
//! summarised ([`devheal_detect::degradation::WindowAggregator`] is bounded).

use std::sync::Arc;

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration as StdDuration;

use axum::Router;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use devheal_core::Time;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde_json::{Map, Value, json};
use tokio::sync::{Semaphore, mpsc, oneshot};

use devheal_k8s::schema::kind;

use crate::fake::{FakeControl, FakeError, FakeFault};
use crate::metrics::AgentMetrics;
use crate::progress::{PodRef, ReportOutcome, StepReport};
use crate::publish::wall_now;
use crate::token::{PodTokens, TokenRefusal};

/// The event loop turns at least once a second; this much silence means it is stuck.
const LOOP_STALE_SECS: i64 = 30;

/// Who may report a pod's progress (`POST /v1/progress`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProgressAuth {
    /// Only the pod itself, on this node (the agent's watch of its node's pods), proven either
    /// by a projected service-account token for the audience `devheal` that is bound to the pod
    /// (`Authorization: Bearer …`, checked with a TokenReview; [`crate::token`]), or, without
    /// a token, by the request coming from the pod's own IP. A host-network pod shares the
    /// node's IP, so its address proves nothing: it needs the token.
    #[default]
    Pod,
    /// Anyone who reaches the port (for local trials only; the agent warns at start).
    None,
}

/// Rate and concurrency bounds of `POST /v1/progress`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProgressLimits {
    /// Reports a second from one pod (after the check of who sent it)...
    pub per_pod_per_second: u32,
    /// ...with bursts of this many.
    pub per_pod_burst: u32,
    /// Requests a second from one peer address, before the body is read...
    pub per_peer_per_second: u32,
    pub per_peer_burst: u32,
    /// Requests a second to the whole agent, before the body is read...
    pub global_per_second: u32,
    pub global_burst: u32,
    /// Bodies read and parsed at once; others wait up to `body_timeout` for a turn (503 then).
    pub concurrent_bodies: usize,
    /// How long a client has to send its body (408 after).
    pub body_timeout: StdDuration,
    /// Peers and pods each rate limiter remembers; a new one over the cap gets 429 until old
    /// ones have refilled and are forgotten.
    pub max_tracked: usize,
}

impl Default for ProgressLimits {
    /// A pod reports a batch of steps every few seconds (docs/agent.md); 5 a second with bursts
    /// of 20 leaves room for many more. 8 bodies of at most 1 MiB in flight bound what parsing
    /// holds.
    fn default() -> Self {
        ProgressLimits {
            per_pod_per_second: 5,
            per_pod_burst: 20,
            per_peer_per_second: 10,
            per_peer_burst: 40,
            global_per_second: 200,
            global_burst: 400,
            concurrent_bodies: 8,
            body_timeout: StdDuration::from_secs(10),
            max_tracked: 4096,
        }
    }
}

/// The rate limiters and the body slots of `POST /v1/progress`, shared by every connection.
pub struct ProgressGate {
    limits: ProgressLimits,
    global: DefaultDirectRateLimiter,
    per_peer: DefaultKeyedRateLimiter<IpAddr>,
    per_pod: DefaultKeyedRateLimiter<PodRef>,
    bodies: Semaphore,
}

impl std::fmt::Debug for ProgressGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProgressGate").field("limits", &self.limits).finish_non_exhaustive()
    }
}

fn quota(per_second: u32, burst: u32) -> Quota {
    let rate = NonZeroU32::new(per_second.max(1)).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(burst.max(per_second).max(1)).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(rate).allow_burst(burst)
}

/// How long until a limiter lets the next request through (at least a second, for `Retry-After`).
type Wait = StdDuration;

impl ProgressGate {
    pub fn new(limits: ProgressLimits) -> Self {
        ProgressGate {
            limits,
            global: RateLimiter::direct(quota(limits.global_per_second, limits.global_burst)),
            per_peer: RateLimiter::keyed(quota(limits.per_peer_per_second, limits.per_peer_burst)),
            per_pod: RateLimiter::keyed(quota(limits.per_pod_per_second, limits.per_pod_burst)),
            bodies: Semaphore::new(limits.concurrent_bodies.max(1)),
        }
    }

    pub fn limits(&self) -> &ProgressLimits {
        &self.limits
    }

    /// Before the body: the peer's and the agent's rate.
    fn admit_peer(&self, peer: IpAddr) -> Result<(), Wait> {
        keyed_check(&self.per_peer, &peer, self.limits.max_tracked)?;
        self.global.check().map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// After the check of who sent it: the pod's rate.
    fn admit_pod(&self, pod: &PodRef) -> Result<(), Wait> {
        keyed_check(&self.per_pod, pod, self.limits.max_tracked)
    }
}

/// One key's check, keeping at most `max_tracked` keys: when the map is full, keys whose bucket
/// has refilled are forgotten first; a new key that still finds no room waits a second.
fn keyed_check<K: Clone + Eq + std::hash::Hash>(
    limiter: &DefaultKeyedRateLimiter<K>,
    key: &K,
    max_tracked: usize,
) -> Result<(), Wait> {
    if limiter.len() >= max_tracked {
        limiter.retain_recent();
        limiter.shrink_to_fit();
        if limiter.len() >= max_tracked {
            return Err(StdDuration::from_secs(1));
        }
    }
    limiter.check_key(key).map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
}

#[derive(Clone)]
pub struct HttpState {
    pub metrics: Arc<AgentMetrics>,
    pub fake: Option<FakeControl>,
    /// Where `POST /v1/progress` hands reports (the event loop); `None`: 503.
    pub progress: Option<ProgressControl>,
    /// Who may report progress.
    pub auth: ProgressAuth,
    /// The node's pods and their IPs (from the pod watch), for [`ProgressAuth::Pod`];
    /// without it every report is refused.
    pub pod_addresses: Option<tokio::sync::watch::Receiver<crate::scrape::PodAddresses>>,
    /// Rate limits and body slots of `POST /v1/progress`.
    pub gate: Arc<ProgressGate>,
    /// Token reviews, for pods that prove who they are with a token; `None` (no API server):
    /// a report with a token is answered 503.
    pub tokens: Option<Arc<PodTokens>>,
}

/// Why a report was not taken on the word of whoever sent it.
enum Unproven {
    /// Not shown to come from the pod (403; the same answer whether or not the pod exists).
    Forbidden,
    /// A token that is not a pod's token for this audience (401).
    BadToken(String),
    /// Too many token reviews (429).
    Busy,
    /// The token could not be reviewed now (503).
    Unavailable(String),
}

/// Whether a report about `pod` from `peer`, with `bearer` if it sent a token, may be taken.
async fn authorize(
    state: &HttpState,
    pod: &PodRef,
    peer: IpAddr,
    bearer: Option<&str>,
) -> Result<(), Unproven> {
    if state.auth == ProgressAuth::None {
        return Ok(());
    }
    // The pod must be one of this node's (a node speaks only for its own pods).
    let Some(address) = state.pod_addresses.as_ref().and_then(|a| a.borrow().get(pod).cloned()) else {
        return Err(Unproven::Forbidden);
    };
    let Some(token) = bearer else {
        return if !address.host_network && address.ip == Some(peer) {
            Ok(())
        } else {
            Err(Unproven::Forbidden)
        };
    };
    let Some(tokens) = state.tokens.as_ref() else {
        return Err(Unproven::Unavailable("this agent cannot review tokens (no API server)".into()));
    };
    let identity = tokens.identify(token).await.map_err(|e| match e {
        TokenRefusal::Invalid(why) => Unproven::BadToken(why),
        TokenRefusal::Busy => Unproven::Busy,
        TokenRefusal::Unavailable(why) => Unproven::Unavailable(why),
    })?;
    let same_pod = identity.namespace == pod.namespace
        && identity.name == pod.name
        && match (&identity.uid, &address.uid) {
            (Some(token_uid), Some(pod_uid)) => token_uid == pod_uid,
            _ => true,
        };
    if same_pod { Ok(()) } else { Err(Unproven::Forbidden) }
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer_token(headers: &axum::http::HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_string())
}

/// The metrics port: `/metrics`, `/healthz`, `/fake/*`.
pub fn metrics_router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/fake/{action}", post(fake))
        .with_state(state)
}

/// The progress port: `POST /v1/progress` only.
pub fn progress_router(state: HttpState) -> Router {
    Router::new().route("/v1/progress", post(progress)).with_state(state)
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
        return (
            StatusCode::NOT_FOUND,
            format!(
                "no fake action {action:?}: use fail, degrade, recover, ecc, wedge, corrupt, hold or free\n"
            ),
        )
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

/// The largest body `POST /v1/progress` takes.
pub const MAX_PROGRESS_BODY: usize = 1 << 20;
/// The most steps one report may carry.
pub const MAX_PROGRESS_STEPS: usize = 1000;
/// The longest pause a report may announce (a day).
pub const MAX_PAUSE_SECONDS: f64 = 86_400.0;
/// How long a report waits for the event loop.
const PROGRESS_REPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A well-formed `POST /v1/progress` body.
#[derive(Clone, Debug, PartialEq)]
pub struct ProgressPost {
    pub pod: PodRef,
    pub steps: Vec<StepReport>,
    pub pause_seconds: Option<f64>,
}

/// Why the event loop did not take a report.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ProgressRefusal {
    #[error("pod {0} holds no device on this node")]
    NotOnNode(String),
    #[error("the agent cannot tell which pods hold devices here yet: {0}")]
    NoBindings(String),
    #[error("{0}")]
    Full(String),
}

/// A report on its way to the event loop, with where to answer.
#[derive(Debug)]
pub struct ProgressRequest {
    pub post: ProgressPost,
    pub now: Time,
    pub reply: oneshot::Sender<Result<ReportOutcome, ProgressRefusal>>,
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error(transparent)]
    Refused(ProgressRefusal),
    #[error("the agent is busy (its event loop has a backlog); retry shortly")]
    Busy,
    #[error("the agent is shutting down")]
    Closed,
}

/// The HTTP side of the channel that carries reports to the event loop (never blocks on it).
#[derive(Clone, Debug)]
pub struct ProgressControl {
    requests: mpsc::Sender<ProgressRequest>,
}

impl ProgressControl {
    pub fn new(requests: mpsc::Sender<ProgressRequest>) -> Self {
        ProgressControl { requests }
    }

    pub async fn submit(&self, post: ProgressPost, now: Time) -> Result<ReportOutcome, SubmitError> {
        let (reply, answer) = oneshot::channel();
        self.requests.try_send(ProgressRequest { post, now, reply }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SubmitError::Busy,
            mpsc::error::TrySendError::Closed(_) => SubmitError::Closed,
        })?;
        match tokio::time::timeout(PROGRESS_REPLY_TIMEOUT, answer).await {
            Ok(Ok(Ok(outcome))) => Ok(outcome),
            Ok(Ok(Err(refusal))) => Err(SubmitError::Refused(refusal)),
            Ok(Err(_)) => Err(SubmitError::Closed),
            Err(_) => Err(SubmitError::Busy),
        }
    }
}

fn json_response(code: StatusCode, body: Value) -> Response {
    (code, [(header::CONTENT_TYPE, "application/json")], format!("{body}\n")).into_response()
}

async fn progress(
    State(state): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    request: Request,
) -> Response {
    let answer = |code: StatusCode, body: Value| {
        state.metrics.progress_report(code.as_u16());
        json_response(code, body)
    };
    let too_many = |wait: StdDuration| {
        let mut response = answer(
            StatusCode::TOO_MANY_REQUESTS,
            json!({ "error": "too many progress reports; batch steps and retry after the time given" }),
        );
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        if let Ok(value) = HeaderValue::from_str(&secs.max(1).to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    };
    let gate = &state.gate;
    // Before the body is read: the peer's and the agent's rate, then a slot to read it in.
    if let Err(wait) = gate.admit_peer(peer.ip()) {
        return too_many(wait);
    }
    let bearer = bearer_token(request.headers());
    let timeout = gate.limits.body_timeout;
    let Ok(Ok(slot)) = tokio::time::timeout(timeout, gate.bodies.acquire()).await else {
        return answer(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "error": "the agent is busy; retry shortly" }),
        );
    };
    let body =
        match tokio::time::timeout(timeout, axum::body::to_bytes(request.into_body(), MAX_PROGRESS_BODY))
            .await
        {
            Ok(Ok(body)) => body,
            Ok(Err(_)) => {
                return answer(StatusCode::PAYLOAD_TOO_LARGE, json!({ "error": "the body is over 1 MiB" }));
            }
            Err(_) => {
                return answer(
                    StatusCode::REQUEST_TIMEOUT,
                    json!({ "error": format!("the body was not sent within {} s", timeout.as_secs()) }),
                );
            }
        };
    let parsed = parse_progress(&body);
    drop(body);
    drop(slot);
    let post = match parsed {
        Ok(post) => post,
        Err(message) => return answer(StatusCode::BAD_REQUEST, json!({ "error": message })),
    };
    // Before anything that depends on the pod: the answer must not say whether it exists.
    match authorize(&state, &post.pod, peer.ip(), bearer.as_deref()).await {
        Ok(()) => {}
        Err(Unproven::Forbidden) => {
            return answer(
                StatusCode::FORBIDDEN,
                json!({ "error": "forbidden: a pod may report only its own progress, from its own pod IP or with its own token" }),
            );
        }
        Err(Unproven::BadToken(why)) => {
            let mut response =
                answer(StatusCode::UNAUTHORIZED, json!({ "error": format!("unauthorized: {why}") }));
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return response;
        }
        Err(Unproven::Busy) => return too_many(StdDuration::from_secs(1)),
        Err(Unproven::Unavailable(why)) => {
            return answer(StatusCode::SERVICE_UNAVAILABLE, json!({ "error": why }));
        }
    }
    if let Err(wait) = gate.admit_pod(&post.pod) {
        return too_many(wait);
    }
    let Some(control) = state.progress.as_ref() else {
        return answer(StatusCode::SERVICE_UNAVAILABLE, json!({ "error": "progress reports are not taken" }));
    };
    // The pod is proven to be itself: it may be told what the controller wants of it.
    let (replace, restart) = state
        .pod_addresses
        .as_ref()
        .and_then(|a| {
            a.borrow().get(&post.pod).map(|p| (p.replace_at_checkpoint.clone(), p.restart_in_place.clone()))
        })
        .unwrap_or_default();
    match control.submit(post, wall_now()).await {
        Ok(outcome) => {
            state.metrics.progress_steps(outcome.accepted, outcome.rejected.len());
            let rejected: Vec<Value> = outcome
                .rejected
                .iter()
                .map(|(index, error)| json!({ "index": index, "error": error }))
                .collect();
            let mut body = json!({ "accepted": outcome.accepted, "rejected": rejected });
            if let Some(message) = replace {
                body["replaceAtCheckpoint"] = json!({
                    "message": message,
                    "exitCode": devheal_core::pod::REPLACE_EXIT_CODE,
                });
            }
            if let Some(message) = restart {
                let incident =
                    devheal_k8s::actuator::in_place_request_of(&message).map(|(i, _)| i.to_string());
                body["restartInPlace"] = json!({
                    "message": message,
                    "incident": incident,
                    "exitCode": devheal_core::pod::RESTART_IN_PLACE_EXIT_CODE,
                });
            }
            answer(StatusCode::ACCEPTED, body)
        }
        Err(SubmitError::Refused(e @ ProgressRefusal::NotOnNode(_))) => {
            answer(StatusCode::NOT_FOUND, json!({ "error": e.to_string() }))
        }
        Err(e) => answer(StatusCode::SERVICE_UNAVAILABLE, json!({ "error": e.to_string() })),
    }
}

/// Checks a `POST /v1/progress` body; the error names the field (and the step) that is wrong.
pub fn parse_progress(body: &[u8]) -> Result<ProgressPost, String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    let Value::Object(fields) = value else {
        return Err("the body must be a JSON object with namespace, pod and steps".into());
    };
    only_known(&fields, &["namespace", "pod", "steps", "pauseSeconds"], "")?;
    let namespace = name_field(&fields, "namespace", 63)?;
    let pod = name_field(&fields, "pod", 253)?;
    let steps = match fields.get("steps") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => {
            if items.len() > MAX_PROGRESS_STEPS {
                return Err(format!("steps: {} steps, at most {MAX_PROGRESS_STEPS} per report", items.len()));
            }
            items.iter().enumerate().map(|(i, item)| parse_step(i, item)).collect::<Result<_, _>>()?
        }
        Some(other) => return Err(format!("steps must be an array, not {}", kind(other))),
    };
    let pause_seconds = match fields.get("pauseSeconds") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_f64() {
            Some(s) if s.is_finite() && (0.0..=MAX_PAUSE_SECONDS).contains(&s) => Some(s),
            _ => return Err(format!("pauseSeconds must be a number from 0 to {MAX_PAUSE_SECONDS}, not {v}")),
        },
    };
    Ok(ProgressPost { pod: PodRef { namespace, name: pod }, steps, pause_seconds })
}

fn parse_step(index: usize, item: &Value) -> Result<StepReport, String> {
    let Value::Object(fields) = item else {
        return Err(format!("steps[{index}] must be an object with seconds, not {}", kind(item)));
    };
    only_known(fields, &["seconds", "step", "endTime"], &format!("steps[{index}]."))?;
    let seconds = match fields.get("seconds") {
        None => return Err(format!("steps[{index}].seconds is missing (the step's own compute time)")),
        Some(v) => match v.as_f64() {
            Some(s) if s.is_finite() && s > 0.0 => s,
            _ => return Err(format!("steps[{index}].seconds must be a positive number, not {v}")),
        },
    };
    let step = match fields.get("step") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64().ok_or_else(|| format!("steps[{index}].step must be a whole number ≥ 0, not {v}"))?,
        ),
    };
    let end = match fields.get("endTime") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(parse_rfc3339(text).ok_or_else(|| {
            format!("steps[{index}].endTime {text:?} is not an RFC 3339 time (2026-11-28T10:00:00.5Z)")
        })?),
        Some(v) => return Err(format!("steps[{index}].endTime must be an RFC 3339 string, not {v}")),
    };
    Ok(StepReport { seconds, step, end })
}

fn parse_rfc3339(text: &str) -> Option<Time> {
    let ts: k8s_openapi::jiff::Timestamp = text.parse().ok()?;
    i64::try_from(ts.as_nanosecond()).ok().map(Time::from_nanos)
}

fn only_known(fields: &Map<String, Value>, known: &[&str], prefix: &str) -> Result<(), String> {
    match fields.keys().find(|k| !known.contains(&k.as_str())) {
        Some(unknown) => {
            Err(format!("unknown field {prefix}{unknown} (the fields are {})", known.join(", ")))
        }
        None => Ok(()),
    }
}

fn name_field(fields: &Map<String, Value>, name: &str, max: usize) -> Result<String, String> {
    match fields.get(name) {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= max => Ok(s.clone()),
        Some(Value::String(s)) => Err(format!("{name} must be 1 to {max} characters, not {} long", s.len())),
        None => Err(format!("{name} is missing")),
        Some(other) => Err(format!("{name} must be a string, not {}", kind(other))),
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
    fn a_progress_body_is_parsed() {
        let body = br#"{"namespace":"ml","pod":"trainer-3","steps":[{"seconds":1.02,"step":1200,"endTime":"2026-11-28T10:00:00.5Z"},{"seconds":0.9}],"pauseSeconds":300}"#;
        let post = parse_progress(body).expect("valid");
        assert_eq!(post.pod, PodRef::new("ml", "trainer-3"));
        assert_eq!(post.pause_seconds, Some(300.0));
        assert_eq!(post.steps.len(), 2);
        assert_eq!(post.steps[0].step, Some(1200));
        let end = post.steps[0].end.expect("an end");
        assert_eq!(end.as_nanos() % 1_000_000_000, 500_000_000);
        assert_eq!(end, parse_rfc3339("2026-11-28T11:00:00.5+01:00").expect("offset form"));
        assert_eq!(post.steps[1], StepReport { seconds: 0.9, step: None, end: None });
        let pause_only = parse_progress(br#"{"namespace":"ml","pod":"p","pauseSeconds":60}"#).expect("valid");
        assert!(pause_only.steps.is_empty());
    }

    #[test]
    fn a_bad_progress_body_names_what_is_wrong_and_where() {
        let err = |body: &str| parse_progress(body.as_bytes()).expect_err("refused");
        assert!(err("{nope").starts_with("the body is not JSON"));
        assert!(err("[]").contains("JSON object"));
        assert_eq!(err(r#"{"pod":"p"}"#), "namespace is missing");
        assert!(err(r#"{"namespace":"ml","pod":7}"#).contains("pod must be a string"));
        assert!(err(r#"{"namespace":"ml","pod":""}"#).contains("pod must be 1 to 253"));
        let e = err(r#"{"namespace":"ml","pod":"p","steps":[{"seconds":1},{"seconds":0}]}"#);
        assert_eq!(e, "steps[1].seconds must be a positive number, not 0");
        let e = err(r#"{"namespace":"ml","pod":"p","steps":[{"seconds":-1.5}]}"#);
        assert!(e.starts_with("steps[0].seconds must be a positive number"), "{e}");
        assert!(
            err(r#"{"namespace":"ml","pod":"p","steps":[{"seconds":"1"}]}"#).contains("steps[0].seconds")
        );
        assert!(err(r#"{"namespace":"ml","pod":"p","steps":[{}]}"#).contains("steps[0].seconds is missing"));
        let e = err(r#"{"namespace":"ml","pod":"p","steps":[{"seconds":1,"endTime":"yesterday"}]}"#);
        assert!(e.starts_with("steps[0].endTime \"yesterday\" is not an RFC 3339 time"), "{e}");
        assert!(
            err(r#"{"namespace":"ml","pod":"p","steps":[{"seconds":1,"step":-2}]}"#)
                .contains("steps[0].step")
        );
        assert!(
            err(r#"{"namespace":"ml","pod":"p","steps":[{"seconds":1,"endtime":"x"}]}"#)
                .contains("unknown field steps[0].endtime")
        );
        assert!(err(r#"{"namespace":"ml","pod":"p","stepz":[]}"#).contains("unknown field stepz"));
        assert!(err(r#"{"namespace":"ml","pod":"p","steps":{}}"#).contains("steps must be an array"));
        assert!(err(r#"{"namespace":"ml","pod":"p","pauseSeconds":-1}"#).contains("pauseSeconds"));
        let many = format!(
            r#"{{"namespace":"ml","pod":"p","steps":[{}]}}"#,
            vec![r#"{"seconds":1}"#; 1001].join(",")
        );
        assert!(err(&many).contains("at most 1000"));
    }

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
