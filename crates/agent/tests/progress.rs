//! Workload progress through the running agent: steps posted to the real HTTP router over TCP,
//! and a step-time histogram scraped from a real HTTP server on 127.0.0.1, reach the published
//! `status.workloads` (windows, then a hang once the pod goes quiet); a pod holding no device
//! here is 404, a malformed body 400 naming the problem, and a failing scrape is blindness, not
//! a hang. The kubelet (PodResources) and a device plugin are in-process servers on temporary
//! Unix sockets binding `ml/trainer-3` to `fake-0`. Windows are 1 s and the hang timeout 2 s so
//! each test takes a few seconds; every wait polls with a deadline. The pod watch that finds
//! annotated pods is tested on the real API server (crates/cli/tests/e2e/agent_path.rs).

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use common::{ChannelPublisher, http, http_with_body, pod_resources, test_config};
use devheal_agent::http::ProgressLimits;
use devheal_agent::progress::PodRef;
use devheal_agent::run::{AgentConfig, AgentHandle, start};
use devheal_agent::scrape::{PodAddress, PodAddresses, ScrapeTarget, ScrapeUrl};
use devheal_agent::token::{PROGRESS_AUDIENCE, PodTokens, TokenReviewer};
use devheal_k8s::crd::{NodeDeviceHealth, NodeDeviceHealthStatus, ProgressReporter, WorkloadProgress};
use devheal_kubelet::api::deviceplugin_v1beta1 as dp;
use devheal_kubelet::api::podresources_v1 as pr;
use devheal_kubelet::server::{
    DevicePluginServer, PodResourcesServer, PodResourcesState, ServerHandle, serve,
};
use k8s_openapi::api::authentication::v1::TokenReviewStatus;
use tokio::sync::{mpsc, watch};

/// Liveness bound for every wait, not a performance target.
const WAIT: Duration = Duration::from_secs(20);
const RESOURCE: &str = "devheal.io/fake-gpu";

struct Node {
    _dir: tempfile::TempDir,
    config: AgentConfig,
    _kubelet: ServerHandle,
    _plugin: ServerHandle,
    /// The pod watch's view of the node's pods and their IPs (progress reports' authentication).
    _addresses: tokio::sync::watch::Sender<PodAddresses>,
}

/// A kubelet binding `ml/trainer-3` to `fake-0`, a plugin serving it, and a config for a fast
/// agent (1 s windows, 2 s hang timeout).
fn node() -> Node {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path(), "node-a");
    config.progress.window = devheal_core::Duration::from_secs(1);
    config.progress.hang_timeout = devheal_core::Duration::from_secs(2);
    config.progress.scrape_every = devheal_core::Duration::from_millis(200);
    config.scrape_timeout = Duration::from_secs(2);

    std::fs::create_dir(&config.paths.device_plugin_dir).expect("mkdir");
    let (plugin, _health) = DevicePluginServer::new(
        vec![dp::Device { id: "fake-0".into(), health: "Healthy".into(), topology: None }],
        "X",
    );
    let plugin =
        serve(&config.paths.device_plugin_dir.join("fake.sock"), plugin.router()).expect("serve plugin");
    let state = PodResourcesState::default();
    state.set_pods(vec![pod_resources("ml", "trainer-3", "trainer", RESOURCE, &["fake-0"])]);
    state.set_allocatable(vec![pr::ContainerDevices {
        resource_name: RESOURCE.into(),
        device_ids: vec!["fake-0".into()],
        topology: None,
    }]);
    let kubelet = serve(&config.paths.pod_resources_socket, PodResourcesServer { state }.router())
        .expect("serve kubelet");
    // As the pod watch would see them: trainer-3 and a pod without devices at 127.0.0.1 (where
    // the test posts from), another pod elsewhere, and a host-network pod (the node's IP).
    let address = |ip: &str, host_network: bool| PodAddress {
        ip: ip.parse().ok(),
        uid: None,
        host_network,
        replace_at_checkpoint: None,
        restart_in_place: None,
    };
    let (addresses, addresses_rx) = tokio::sync::watch::channel(PodAddresses::from([
        (PodRef::new("ml", "trainer-3"), address("127.0.0.1", false)),
        (PodRef::new("ml", "no-device"), address("127.0.0.1", false)),
        (PodRef::new("ml", "other-pod"), address("10.0.0.5", false)),
        (PodRef::new("ml", "host-net"), address("127.0.0.1", true)),
    ]));
    config.pod_addresses = Some(addresses_rx);
    Node { _dir: dir, config, _kubelet: kubelet, _plugin: plugin, _addresses: addresses }
}

/// Wait for a published status whose `ml/trainer-3` workload satisfies `ok`; also checks every
/// status seen on the way with `always`.
async fn wait_workload(
    rx: &mut mpsc::UnboundedReceiver<NodeDeviceHealth>,
    what: &str,
    always: impl Fn(&WorkloadProgress),
    ok: impl Fn(&WorkloadProgress) -> bool,
) -> WorkloadProgress {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut last: Option<NodeDeviceHealthStatus> = None;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(object)) => {
                let status = object.status.expect("a status");
                if let Some(w) =
                    status.workloads.iter().find(|w| w.namespace == "ml" && w.name == "trainer-3")
                {
                    always(w);
                    if ok(w) {
                        return w.clone();
                    }
                }
                last = Some(status);
            }
            _ => panic!("never published: {what}; last workloads {:?}", last.map(|s| s.workloads)),
        }
    }
}

async fn post_async(addr: SocketAddr, body: String) -> (u16, String) {
    tokio::task::spawn_blocking(move || http_with_body(addr, "POST", "/v1/progress", &body))
        .await
        .expect("join")
}

/// Post until the agent knows the pod is bound here (PodResources answered), then return the
/// answer to the first accepted post.
async fn post_when_bound(addr: SocketAddr, body: &str) -> (u16, String) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (code, answer) = post_async(addr, body.to_string()).await;
        if code != 503 && code != 404 {
            return (code, answer);
        }
        assert!(tokio::time::Instant::now() < deadline, "never accepted: {code} {answer}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn stop(agent: AgentHandle) {
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posted_steps_are_published_as_windows_then_a_hang() {
    let node = node();
    let (statuses, mut rx) = mpsc::unbounded_channel();
    let (events, _event_rx) = mpsc::unbounded_channel();
    let agent =
        start(node.config.clone(), ChannelPublisher { statuses, events }).await.expect("agent starts");
    let addr = agent.progress_addr.expect("served");
    let metrics_addr = agent.metrics_addr.expect("served");
    // Each port serves only its own paths.
    let (code, _) = tokio::task::spawn_blocking(move || http(addr, "GET", "/metrics")).await.expect("join");
    assert_eq!(code, 404, "no metrics on the progress port");
    let (code, _) = post_async(metrics_addr, r#"{"namespace":"ml","pod":"trainer-3"}"#.into()).await;
    assert_eq!(code, 404, "no progress on the metrics port");

    // Three steps of 0.5 s, one with a step number; the window closes at the next second.
    let body = r#"{"namespace":"ml","pod":"trainer-3","steps":[{"seconds":0.5},{"seconds":0.5,"step":41},{"seconds":0.5,"step":42}]}"#;
    let (code, answer) = post_when_bound(addr, body).await;
    assert_eq!(code, 202, "{answer}");
    let answer: serde_json::Value = serde_json::from_str(&answer).expect("JSON answer");
    assert_eq!(answer, serde_json::json!({ "accepted": 3, "rejected": [] }));

    // The controller marks the pod ReplaceAtCheckpoint (the pod watch sees the condition): the
    // next answer tells the pod to checkpoint and leave with the contract's exit code.
    node._addresses.send_modify(|a| {
        if let Some(p) = a.get_mut(&PodRef::new("ml", "trainer-3")) {
            p.replace_at_checkpoint =
                Some("replace this member of gang ml/llama at its next checkpoint".into());
        }
    });
    let (code, answer) = post_async(addr, r#"{"namespace":"ml","pod":"trainer-3","steps":[]}"#.into()).await;
    assert_eq!(code, 202, "{answer}");
    let answer: serde_json::Value = serde_json::from_str(&answer).expect("JSON answer");
    assert_eq!(answer["replaceAtCheckpoint"]["exitCode"], devheal_core::pod::REPLACE_EXIT_CODE);
    assert!(answer["replaceAtCheckpoint"]["message"].as_str().is_some_and(|m| m.contains("next checkpoint")));
    node._addresses.send_modify(|a| {
        if let Some(p) = a.get_mut(&PodRef::new("ml", "trainer-3")) {
            p.replace_at_checkpoint = None;
        }
    });

    // The controller restarts the gang and this member in place: a poll (no steps) is told to
    // exit with the restart-in-place code, naming the incident.
    node._addresses.send_modify(|a| {
        if let Some(p) = a.get_mut(&PodRef::new("ml", "trainer-3")) {
            p.restart_in_place =
                Some(devheal_k8s::actuator::in_place_message("ml/jobset/llama", "inc-9", 0, "GPU lost"));
        }
    });
    let (code, answer) = post_async(addr, r#"{"namespace":"ml","pod":"trainer-3"}"#.into()).await;
    assert_eq!(code, 202, "{answer}");
    let answer: serde_json::Value = serde_json::from_str(&answer).expect("JSON answer");
    assert_eq!(answer["restartInPlace"]["exitCode"], devheal_core::pod::RESTART_IN_PLACE_EXIT_CODE);
    assert_eq!(answer["restartInPlace"]["incident"], "inc-9", "{answer}");
    assert!(answer.get("replaceAtCheckpoint").is_none(), "{answer}");
    node._addresses.send_modify(|a| {
        if let Some(p) = a.get_mut(&PodRef::new("ml", "trainer-3")) {
            p.restart_in_place = None;
        }
    });

    let w = wait_workload(&mut rx, "a closed window", |_| {}, |w| !w.windows.is_empty()).await;
    assert_eq!(w.reporter, ProgressReporter::Endpoint);
    assert_eq!(w.window_seconds, 1);
    assert_eq!((w.windows[0].samples, w.windows[0].step_seconds), (3, 0.5), "{w:?}");
    assert!(w.hang.is_none() && w.error.is_none(), "{w:?}");

    // Not a pod holding a device here; malformed bodies.
    let (code, answer) = post_async(addr, r#"{"namespace":"ml","pod":"no-device","steps":[]}"#.into()).await;
    assert_eq!(code, 404, "{answer}");
    assert!(answer.contains("ml/no-device holds no device on this node"), "{answer}");
    // Only the pod itself may report: a post about another pod (from an address that is not
    // its IP), about a host-network pod (whose address proves nothing), or about a pod the node
    // does not have is refused alike, without saying whether the pod exists.
    let mut refusals = Vec::new();
    for pod in ["other-pod", "host-net", "never-existed"] {
        let (code, answer) =
            post_async(addr, format!(r#"{{"namespace":"ml","pod":"{pod}","steps":[{{"seconds":1}}]}}"#))
                .await;
        refusals.push((code, answer));
    }
    assert!(refusals.iter().all(|(code, _)| *code == 403), "{refusals:?}");
    assert!(refusals.windows(2).all(|w| w[0].1 == w[1].1), "the same answer for each: {refusals:?}");
    let (code, answer) = post_async(addr, "{garbage".into()).await;
    assert_eq!(code, 400);
    assert!(answer.contains("the body is not JSON"), "{answer}");
    let (code, answer) = post_async(
        addr,
        r#"{"namespace":"ml","pod":"trainer-3","steps":[{"seconds":1},{"seconds":"NaN"}]}"#.into(),
    )
    .await;
    assert_eq!(code, 400);
    assert!(answer.contains("steps[1].seconds must be a positive number"), "{answer}");
    // One byte over 1 MiB (exactly one, so the server has read all of it when it answers and no
    // unread bytes make the closing connection reset).
    let padding = (1 << 20) + 1 - r#"{"namespace":"ml","pod":""}"#.len();
    let (code, _) =
        post_async(addr, format!(r#"{{"namespace":"ml","pod":"{}"}}"#, "x".repeat(padding))).await;
    assert_eq!(code, 413, "a body over 1 MiB");

    // A second report: from now on the pod's silence is judged (one report alone never is).
    let (code, answer) = post_async(
        addr,
        r#"{"namespace":"ml","pod":"trainer-3","steps":[{"seconds":0.5,"step":43}]}"#.into(),
    )
    .await;
    assert_eq!(code, 202, "{answer}");
    // Silent for longer than the 2 s hang timeout: hung, since the last step.
    let w = wait_workload(&mut rx, "a hang", |_| {}, |w| w.hang.is_some()).await;
    let hang = w.hang.as_ref().expect("hang");
    assert_eq!(Some(&hang.since), w.last_progress.as_ref());
    assert_eq!(w.steps, 4);
    assert_eq!(w.step, Some(43));

    let (code, metrics) =
        tokio::task::spawn_blocking(move || http(metrics_addr, "GET", "/metrics")).await.expect("join");
    assert_eq!(code, 200);
    for line in [
        "devheal_agent_progress_reports_total{code=\"202\"} 4",
        "devheal_agent_progress_reports_total{code=\"404\"} 1",
        "devheal_agent_progress_reports_total{code=\"403\"} 3",
        "devheal_agent_progress_reports_total{code=\"400\"} 2",
        "devheal_agent_progress_steps_total{result=\"accepted\"} 4",
        "devheal_agent_progress_pods 1",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    stop(agent).await;
}

/// What the fake trainer's `/metrics` does.
const ADVANCING: u8 = 0;
const FAILING: u8 = 1;
const STUCK: u8 = 2;

struct Trainer {
    mode: AtomicU8,
    steps: AtomicU64,
}

/// A prometheus_client-style histogram of step seconds: 4 more steps of 0.25 s per read.
async fn trainer_metrics(State(trainer): State<Arc<Trainer>>) -> (StatusCode, String) {
    let mode = trainer.mode.load(Ordering::SeqCst);
    if mode == FAILING {
        return (StatusCode::INTERNAL_SERVER_ERROR, "oops\n".into());
    }
    let n = if mode == ADVANCING {
        trainer.steps.fetch_add(4, Ordering::SeqCst) + 4
    } else {
        trainer.steps.load(Ordering::SeqCst)
    };
    let sum = n as f64 * 0.25;
    let text = format!(
        "# HELP train_step_seconds Own compute time per step.\n\
         # TYPE train_step_seconds histogram\n\
         train_step_seconds_bucket{{le=\"0.5\"}} {n}\n\
         train_step_seconds_bucket{{le=\"+Inf\"}} {n}\n\
         train_step_seconds_sum {sum}\n\
         train_step_seconds_count {n}\n\
         # EOF\n"
    );
    (StatusCode::OK, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scraped_histogram_gives_windows_a_failing_scrape_is_blind_and_a_stuck_one_hangs() {
    let trainer = Arc::new(Trainer { mode: AtomicU8::new(ADVANCING), steps: AtomicU64::new(100) });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let trainer_addr = listener.local_addr().expect("addr");
    let app = axum::Router::new().route("/metrics", get(trainer_metrics)).with_state(Arc::clone(&trainer));
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let mut node = node();
    let target = |pod: &str| ScrapeTarget {
        pod: PodRef::new("ml", pod),
        uid: Some(format!("uid-{pod}")),
        url: Ok(ScrapeUrl { address: trainer_addr, path: "/metrics".into() }),
        metric: "train_step_seconds".into(),
    };
    // A second annotated pod holds no device here: it is never scraped or published.
    let (_targets_tx, targets) = watch::channel(vec![target("trainer-3"), target("not-here")]);
    node.config.scrape_targets = Some(targets);
    let (statuses, mut rx) = mpsc::unbounded_channel();
    let (events, _event_rx) = mpsc::unbounded_channel();
    let agent =
        start(node.config.clone(), ChannelPublisher { statuses, events }).await.expect("agent starts");

    let w = wait_workload(&mut rx, "a scraped window", |_| {}, |w| w.windows.iter().any(|x| x.samples >= 3))
        .await;
    assert_eq!(w.reporter, ProgressReporter::Scrape);
    assert_eq!(w.uid.as_deref(), Some("uid-trainer-3"));
    let full = w.windows.iter().find(|x| x.samples >= 3).expect("a full window");
    assert!((full.step_seconds - 0.25).abs() < 1e-9, "{w:?}");

    // The pod's metrics fail: an error, and however long it lasts (well past the 2 s timeout),
    // never a hang.
    trainer.mode.store(FAILING, Ordering::SeqCst);
    let w = wait_workload(&mut rx, "the scrape error", |_| {}, |w| w.error.is_some()).await;
    let error = w.error.clone().expect("error");
    assert!(error.contains("HTTP 500") && error.contains(&trainer_addr.to_string()), "{error}");
    let blind_until = tokio::time::Instant::now() + Duration::from_secs(4);
    while tokio::time::Instant::now() < blind_until {
        if let Ok(Some(object)) = tokio::time::timeout_at(blind_until, rx.recv()).await {
            let status = object.status.expect("status");
            assert!(
                status.workloads.iter().all(|w| w.hang.is_none()),
                "a blind pod reported hung: {:?}",
                status.workloads
            );
        }
    }

    // Reads work again but the count stands still: hung, 2 s after reads resumed.
    trainer.mode.store(STUCK, Ordering::SeqCst);
    let w = wait_workload(
        &mut rx,
        "a hang once reads work and show no progress",
        |w| assert!(w.hang.is_none() || w.error.is_none(), "hung while blind: {w:?}"),
        |w| w.hang.is_some(),
    )
    .await;
    assert!(w.error.is_none(), "{w:?}");
    assert!(w.hang.as_ref().is_some_and(|h| h.message.contains("no progress")), "{w:?}");

    let addr = agent.metrics_addr.expect("served");
    let (_, metrics) =
        tokio::task::spawn_blocking(move || http(addr, "GET", "/metrics")).await.expect("join");
    assert!(metrics.contains("devheal_agent_progress_scrapes_total{result=\"ok\"}"), "{metrics}");
    assert!(metrics.contains("devheal_agent_progress_scrapes_total{result=\"failed\"}"), "{metrics}");
    assert!(metrics.contains("devheal_agent_progress_pods 1"), "only the bound pod: {metrics}");
    stop(agent).await;
    server.abort();
}

/// Send `request` as raw bytes (leaving the connection open for more) and read the response
/// head and body; returns the response and how long it took.
fn raw_exchange(addr: SocketAddr, request: &[u8]) -> (String, Duration) {
    use std::io::{Read, Write};
    let started = std::time::Instant::now();
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    stream.write_all(request).expect("write");
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    // Read until the head and the declared body are in (the server may keep the connection).
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => response.extend_from_slice(&buf[..n]),
        }
        let text = String::from_utf8_lossy(&response);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string())
                })
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if body.len() >= length {
                break;
            }
        }
    }
    (String::from_utf8_lossy(&response).into_owned(), started.elapsed())
}

fn post_request(body: &str) -> Vec<u8> {
    format!(
        "POST /v1/progress HTTP/1.1\r\nHost: agent\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Rate limits: a pod over its rate gets 429 with `Retry-After` (and nothing of the report is
/// taken), counted in the metric.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_over_its_rate_gets_429_and_retry_after() {
    let mut node = node();
    node.config.progress_limits =
        ProgressLimits { per_pod_per_second: 1, per_pod_burst: 2, ..ProgressLimits::default() };
    let (statuses, _rx) = mpsc::unbounded_channel();
    let (events, _event_rx) = mpsc::unbounded_channel();
    let agent =
        start(node.config.clone(), ChannelPublisher { statuses, events }).await.expect("agent starts");
    let addr = agent.progress_addr.expect("served");
    let body = r#"{"namespace":"ml","pod":"trainer-3","steps":[{"seconds":0.5}]}"#;
    // Until the agent knows the pod is bound here; every answer, 429 included, says something.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (code, answer) = post_async(addr, body.into()).await;
        if code == 202 {
            break;
        }
        assert!(matches!(code, 404 | 429 | 503), "{code} {answer}");
        assert!(tokio::time::Instant::now() < deadline, "never accepted: {code} {answer}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Five more at once: at most the burst of 2 is taken, the rest are 429 with Retry-After.
    let answers = tokio::task::spawn_blocking(move || {
        (0..5).map(|_| raw_exchange(addr, &post_request(body)).0).collect::<Vec<_>>()
    })
    .await
    .expect("join");
    let accepted = answers.iter().filter(|a| a.starts_with("HTTP/1.1 202")).count();
    let limited: Vec<&String> = answers.iter().filter(|a| a.starts_with("HTTP/1.1 429")).collect();
    assert!(accepted <= 2, "{answers:?}");
    assert!(limited.len() >= 3, "{answers:?}");
    assert!(limited.iter().all(|a| a.to_ascii_lowercase().contains("retry-after: 1")), "{limited:?}");
    assert!(limited[0].contains("too many progress reports"), "{limited:?}");
    let metrics_addr = agent.metrics_addr.expect("served");
    let (_, metrics) =
        tokio::task::spawn_blocking(move || http(metrics_addr, "GET", "/metrics")).await.expect("join");
    assert!(metrics.contains("devheal_agent_progress_reports_total{code=\"429\"}"), "{metrics}");
    stop(agent).await;
}

/// Before a body is read: a peer over its rate is answered 429 at once (the body it declared is
/// never waited for), and a client that does not send the body it declared is cut off with 408
/// once the body timeout passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_is_limited_before_its_body_is_read_and_a_slow_body_times_out() {
    let mut node = node();
    node.config.progress_limits = ProgressLimits {
        per_peer_per_second: 1,
        per_peer_burst: 1,
        body_timeout: Duration::from_millis(500),
        ..ProgressLimits::default()
    };
    let (statuses, _rx) = mpsc::unbounded_channel();
    let (events, _event_rx) = mpsc::unbounded_channel();
    let agent =
        start(node.config.clone(), ChannelPublisher { statuses, events }).await.expect("agent starts");
    let addr = agent.progress_addr.expect("served");
    let (first, second, slow) = tokio::task::spawn_blocking(move || {
        // The peer's one token: a body that is sent only in part; cut off after 0.5 s.
        let slow = raw_exchange(
            addr,
            b"POST /v1/progress HTTP/1.1\r\nHost: agent\r\nContent-Length: 1000\r\n\r\n{\"namespace\":",
        );
        std::thread::sleep(Duration::from_millis(1100));
        // A new token: garbage, parsed and refused.
        let first = raw_exchange(addr, &post_request("{garbage"));
        // Over the rate: refused although its body never comes.
        let second =
            raw_exchange(addr, b"POST /v1/progress HTTP/1.1\r\nHost: agent\r\nContent-Length: 1000\r\n\r\n");
        (first, second, slow)
    })
    .await
    .expect("join");
    assert!(slow.0.starts_with("HTTP/1.1 408"), "{slow:?}");
    assert!(slow.1 >= Duration::from_millis(450) && slow.1 < Duration::from_secs(5), "{slow:?}");
    assert!(first.0.starts_with("HTTP/1.1 400"), "{first:?}");
    assert!(second.0.starts_with("HTTP/1.1 429"), "{second:?}");
    assert!(second.1 < Duration::from_millis(400), "answered without waiting for the body: {second:?}");
    stop(agent).await;
}

/// The API server's answers to TokenReviews, scripted: token → the pod it is bound to.
struct ScriptedReviews;

impl TokenReviewer for ScriptedReviews {
    fn review<'a>(
        &'a self,
        token: &'a str,
        audience: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<TokenReviewStatus, String>> {
        use k8s_openapi::api::authentication::v1::UserInfo;
        let bound = |pod: &str, audiences: &[&str]| TokenReviewStatus {
            authenticated: Some(true),
            audiences: Some(audiences.iter().map(|a| a.to_string()).collect()),
            user: Some(UserInfo {
                username: Some("system:serviceaccount:ml:default".into()),
                extra: Some(
                    [("authentication.kubernetes.io/pod-name".to_string(), vec![pod.to_string()])].into(),
                ),
                ..UserInfo::default()
            }),
            error: None,
        };
        let status = match token {
            "host-net-token" => bound("host-net", &[audience]),
            "trainer-token" => bound("trainer-3", &[audience]),
            "apiserver-audience-token" => bound("host-net", &["https://kubernetes.default.svc"]),
            _ => TokenReviewStatus {
                authenticated: Some(false),
                error: Some("invalid bearer token".into()),
                ..Default::default()
            },
        };
        Box::pin(async move { Ok(status) })
    }
}

/// A host-network pod shares the node's IP, so only a token bound to it proves a report is its
/// own: its token is taken, another pod's token or a token for another audience is not, a token
/// that is no pod's is 401, and no token at all is 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_network_pod_proves_itself_with_its_own_token() {
    let mut node = node();
    node.config.progress_tokens =
        Some(Arc::new(PodTokens::new(Arc::new(ScriptedReviews), PROGRESS_AUDIENCE, Duration::from_secs(2))));
    let (statuses, _rx) = mpsc::unbounded_channel();
    let (events, _event_rx) = mpsc::unbounded_channel();
    let agent =
        start(node.config.clone(), ChannelPublisher { statuses, events }).await.expect("agent starts");
    let addr = agent.progress_addr.expect("served");
    // Once PodResources has answered (a report from trainer-3, from its IP, is taken).
    let (code, answer) = post_when_bound(addr, r#"{"namespace":"ml","pod":"trainer-3"}"#).await;
    assert_eq!(code, 202, "{answer}");
    let body = r#"{"namespace":"ml","pod":"host-net","steps":[{"seconds":1}]}"#;
    let with_token = move |token: Option<&str>| {
        let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        let request = format!(
            "POST /v1/progress HTTP/1.1\r\nHost: agent\r\n{auth}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        raw_exchange(addr, request.as_bytes()).0
    };
    let answers = tokio::task::spawn_blocking(move || {
        [
            None,
            Some("host-net-token"),
            Some("trainer-token"),
            Some("apiserver-audience-token"),
            Some("forged"),
        ]
        .map(with_token)
    })
    .await
    .expect("join");
    let [none, own, other, audience, forged] = answers;
    assert!(none.starts_with("HTTP/1.1 403"), "no token, the node's IP: {none}");
    // Past the check of who sent it: the pod holds no device here, so 404 (not 403).
    assert!(own.starts_with("HTTP/1.1 404"), "its own token: {own}");
    assert!(other.starts_with("HTTP/1.1 403"), "another pod's token: {other}");
    assert!(audience.starts_with("HTTP/1.1 401") && audience.contains("audience"), "{audience}");
    assert!(
        forged.starts_with("HTTP/1.1 401")
            && forged.to_ascii_lowercase().contains("www-authenticate: bearer"),
        "{forged}"
    );
    stop(agent).await;
}
