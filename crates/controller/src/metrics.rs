//! The controller's Prometheus metrics (prometheus-client, names prefixed `devheal_`) and the
//! HTTP server for `/metrics`, `/healthz` (the loop is alive) and `/readyz` (every watch finished
//! its first list).
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `devheal_controller_actions_total` | counter | `action`, `outcome` (`done`, `would_do`, `retry`, `gone`, `failed`) |
//! | `devheal_controller_standby_actions_total` | counter | `action` (decided while not leader, not sent) |
//! | `devheal_controller_retries_exhausted_total` | counter | `action` |
//! | `devheal_controller_decision_latency_seconds` | histogram | (input arrival → actions handed to the actuator) |
//! | `devheal_controller_state_store_total` | counter | `outcome` (`restored`, `empty`, `load_failed`, `saved`, `save_failed`): reads and writes of the durable state (restart budgets, repeat offenders) |
//! | `devheal_controller_settings_reloads_total` | counter | `outcome` (`applied`, `invalid`, `unreadable`): changes of the settings file seen by a running controller; on `invalid` and `unreadable` the old settings stay |
//! | `devheal_controller_foreign_claims_total` | counter | `what` (`device`, `progress`): claims a NodeDeviceHealth made about another node's pods, ignored |
//! | `devheal_controller_watch_events_total` | counter | `kind` |
//! | `devheal_controller_engine_inputs_total` | counter | `kind` (inputs the index gave the engine) |
//! | `devheal_controller_watch_relists_total` | counter | `kind` |
//! | `devheal_controller_watch_errors_total` | counter | `kind` |
//! | `devheal_controller_rejected_objects_total` | counter | `kind` |
//! | `devheal_controller_indexed_objects` | gauge | `kind` |
//! | `devheal_controller_leader` | gauge | 1 while this replica holds the lease |
//! | `devheal_controller_breaker_open` | gauge | |
//! | `devheal_controller_quarantined_nodes`, `..._quarantine_node_limit` | gauge | |
//! | `devheal_controller_quarantined_devices` | gauge | |
//! | `devheal_controller_evictions_last_minute` | gauge | |
//! | `devheal_controller_held_by_breaker` | gauge | remediation steps the breaker held since start |
//! | `devheal_controller_held_versions` | gauge | driver/plugin versions whose nodes are held |
//! | `devheal_controller_gang_restarts_last_hour` | gauge | gang restarts and member replacements in the cluster |
//! | `devheal_controller_recommended_checkpoint_interval_seconds` | gauge | `namespace`, `gang` (`kind/name`): Daly's optimal interval for a gang that declares its checkpoint write time ([`crate::checkpoint_advice`]) |
//! | `devheal_controller_gang_mean_time_to_interrupt_seconds` | gauge | `namespace`, `gang`: the observed mean time between its interruptions |
//! | `devheal_controller_progress_breaker_open` | gauge | 1 while restarts caused by progress reports alone are held |
//! | `devheal_controller_held_by_progress_breaker` | gauge | restarts the progress breaker held since start |
//! | `devheal_upgrade_*` | | the rollout gate's: [`crate::upgrade::metrics`] |

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use devheal_core::SafetyState;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::index::ObjectKind;

type Labels1 = [(&'static str, &'static str); 1];
type Labels2 = [(&'static str, &'static str); 2];

/// Every metric the controller exports, and the registry that serves them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    actions: Family<Labels2, Counter>,
    standby: Family<Labels1, Counter>,
    retries_exhausted: Family<Labels1, Counter>,
    status_writes: Family<Labels1, Counter>,
    decision_latency: Histogram,
    watch_events: Family<Labels1, Counter>,
    inputs: Family<Labels1, Counter>,
    watch_relists: Family<Labels1, Counter>,
    watch_errors: Family<Labels1, Counter>,
    rejected: Family<Labels1, Counter>,
    progress_findings: Family<Labels1, Counter>,
    foreign_claims: Family<Labels1, Counter>,
    state_store: Family<Labels1, Counter>,
    settings_reloads: Family<Labels1, Counter>,
    indexed: Family<Labels1, Gauge>,
    leader: Gauge,
    breaker_open: Gauge,
    quarantined_nodes: Gauge,
    quarantine_node_limit: Gauge,
    quarantined_devices: Gauge,
    evictions_last_minute: Gauge,
    held_by_breaker: Gauge,
    held_versions: Gauge,
    gang_restarts_last_hour: Gauge,
    progress_breaker_open: Gauge,
    held_by_progress_breaker: Gauge,
    /// Per gang ([`crate::checkpoint_advice`]).
    checkpoint_interval: Family<Vec<(String, String)>, Gauge>,
    mean_time_to_interrupt: Family<Vec<(String, String)>, Gauge>,
    /// The rollout gate's ([`crate::upgrade::metrics`]).
    pub upgrade: crate::upgrade::UpgradeMetrics,
}

fn gauge_value(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("devheal");
        let m = Metrics {
            registry: Registry::default(),
            actions: Family::default(),
            standby: Family::default(),
            retries_exhausted: Family::default(),
            status_writes: Family::default(),
            // 50 µs … ~26 s.
            decision_latency: Histogram::new(exponential_buckets(0.00005, 2.0, 20)),
            watch_events: Family::default(),
            inputs: Family::default(),
            watch_relists: Family::default(),
            watch_errors: Family::default(),
            rejected: Family::default(),
            progress_findings: Family::default(),
            foreign_claims: Family::default(),
            state_store: Family::default(),
            settings_reloads: Family::default(),
            indexed: Family::default(),
            leader: Gauge::default(),
            breaker_open: Gauge::default(),
            quarantined_nodes: Gauge::default(),
            quarantine_node_limit: Gauge::default(),
            quarantined_devices: Gauge::default(),
            evictions_last_minute: Gauge::default(),
            held_by_breaker: Gauge::default(),
            held_versions: Gauge::default(),
            gang_restarts_last_hour: Gauge::default(),
            checkpoint_interval: Family::default(),
            mean_time_to_interrupt: Family::default(),
            progress_breaker_open: Gauge::default(),
            held_by_progress_breaker: Gauge::default(),
            upgrade: crate::upgrade::UpgradeMetrics::default(),
        };
        registry.register(
            "controller_actions",
            "Actions handed to the actuator, by action and outcome",
            m.actions.clone(),
        );
        registry.register(
            "controller_progress_findings",
            "Findings from workload progress, by kind (straggler, baseline_shift, hang)",
            m.progress_findings.clone(),
        );
        registry.register(
            "controller_foreign_claims",
            "Claims a NodeDeviceHealth made about pods on another node (ignored), by what (device, progress)",
            m.foreign_claims.clone(),
        );
        registry.register(
            "controller_state_store",
            "Reads and writes of the durable state (restart budgets' last hour, repeat-offender history), by outcome",
            m.state_store.clone(),
        );
        registry.register(
            "controller_settings_reloads",
            "Changes of the settings file seen by a running controller, by outcome (applied, invalid, unreadable)",
            m.settings_reloads.clone(),
        );
        registry.register(
            "controller_standby_actions",
            "Actions decided while not the leader (not sent)",
            m.standby.clone(),
        );
        registry.register(
            "controller_retries_exhausted",
            "Actions that were still refused after the last retry",
            m.retries_exhausted.clone(),
        );
        registry.register(
            "controller_policy_status_writes",
            "FailurePolicy status writes, by outcome (done, gone, failed)",
            m.status_writes.clone(),
        );
        registry.register(
            "controller_decision_latency_seconds",
            "From an input's arrival at the index to its actions being handed to the actuator",
            m.decision_latency.clone(),
        );
        registry.register(
            "controller_watch_events",
            "Watch events received, by kind",
            m.watch_events.clone(),
        );
        registry.register(
            "controller_engine_inputs",
            "Inputs the index gave the engine, by the kind of object that caused them",
            m.inputs.clone(),
        );
        registry.register(
            "controller_watch_relists",
            "Relists completed after the first list (410 Gone, restarted watches), by kind",
            m.watch_relists.clone(),
        );
        registry.register("controller_watch_errors", "Watch errors, by kind", m.watch_errors.clone());
        registry.register(
            "controller_rejected_objects",
            "Objects the index skipped because they are invalid, by kind",
            m.rejected.clone(),
        );
        registry.register("controller_indexed_objects", "Objects in the index, by kind", m.indexed.clone());
        registry.register("controller_leader", "1 while this replica holds the lease", m.leader.clone());
        registry.register(
            "controller_breaker_open",
            "1 while the breaker holds remediation (correlated failures)",
            m.breaker_open.clone(),
        );
        registry.register(
            "controller_quarantined_nodes",
            "Nodes with a quarantined device or a cordon",
            m.quarantined_nodes.clone(),
        );
        registry.register(
            "controller_quarantine_node_limit",
            "The most nodes that may be quarantined at once",
            m.quarantine_node_limit.clone(),
        );
        registry.register(
            "controller_quarantined_devices",
            "Devices quarantined now",
            m.quarantined_devices.clone(),
        );
        registry.register(
            "controller_evictions_last_minute",
            "Evictions planned in the last minute",
            m.evictions_last_minute.clone(),
        );
        registry.register(
            "controller_held_by_breaker",
            "Remediation steps the breaker held since the controller started",
            m.held_by_breaker.clone(),
        );
        registry.register(
            "controller_held_versions",
            "Driver or device plugin versions whose nodes' remediation is held",
            m.held_versions.clone(),
        );
        registry.register(
            "controller_gang_restarts_last_hour",
            "Gang restarts and member replacements planned in the cluster in the last hour",
            m.gang_restarts_last_hour.clone(),
        );
        registry.register(
            "controller_recommended_checkpoint_interval_seconds",
            "Daly's optimal compute time between checkpoints for a gang that declares its checkpoint write time, from its interruptions in the window",
            m.checkpoint_interval.clone(),
        );
        registry.register(
            "controller_gang_mean_time_to_interrupt_seconds",
            "Observed mean time between a gang's interruptions (gangs that declare a checkpoint write time)",
            m.mean_time_to_interrupt.clone(),
        );
        registry.register(
            "controller_progress_breaker_open",
            "1 while the progress breaker holds restarts caused by progress reports alone",
            m.progress_breaker_open.clone(),
        );
        registry.register(
            "controller_held_by_progress_breaker",
            "Gang restarts and replacements the progress breaker held since the controller started",
            m.held_by_progress_breaker.clone(),
        );
        m.upgrade.register(&mut registry);
        Metrics { registry, ..m }
    }

    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    pub fn action(&self, action: &'static str, outcome: &'static str) {
        self.actions.get_or_create(&[("action", action), ("outcome", outcome)]).inc();
    }

    /// How many actions of this type ended with this outcome.
    pub fn action_count(&self, action: &'static str, outcome: &'static str) -> u64 {
        self.actions.get_or_create(&[("action", action), ("outcome", outcome)]).get()
    }

    pub fn standby_action(&self, action: &'static str) {
        self.standby.get_or_create(&[("action", action)]).inc();
    }

    pub fn standby_count(&self, action: &'static str) -> u64 {
        self.standby.get_or_create(&[("action", action)]).get()
    }

    pub fn status_write(&self, outcome: &'static str) {
        self.status_writes.get_or_create(&[("outcome", outcome)]).inc();
    }

    pub fn status_write_count(&self, outcome: &'static str) -> u64 {
        self.status_writes.get_or_create(&[("outcome", outcome)]).get()
    }

    pub fn retries_exhausted(&self, action: &'static str) {
        self.retries_exhausted.get_or_create(&[("action", action)]).inc();
    }

    pub fn decision_latency(&self, d: Duration) {
        self.decision_latency.observe(d.as_secs_f64());
    }

    pub fn watch_event(&self, kind: ObjectKind) {
        self.watch_events.get_or_create(&[("kind", kind.label())]).inc();
    }

    pub fn inputs(&self, kind: ObjectKind, n: usize) {
        self.inputs.get_or_create(&[("kind", kind.label())]).inc_by(n as u64);
    }

    pub fn input_count(&self, kind: ObjectKind) -> u64 {
        self.inputs.get_or_create(&[("kind", kind.label())]).get()
    }

    pub fn relist(&self, kind: ObjectKind) {
        self.watch_relists.get_or_create(&[("kind", kind.label())]).inc();
    }

    pub fn relists(&self, kind: ObjectKind) -> u64 {
        self.watch_relists.get_or_create(&[("kind", kind.label())]).get()
    }

    pub fn watch_error(&self, kind: ObjectKind) {
        self.watch_errors.get_or_create(&[("kind", kind.label())]).inc();
    }

    pub fn watch_errors(&self, kind: ObjectKind) -> u64 {
        self.watch_errors.get_or_create(&[("kind", kind.label())]).get()
    }

    pub fn rejected(&self, kind: ObjectKind, n: usize) {
        self.rejected.get_or_create(&[("kind", kind.label())]).inc_by(n as u64);
    }

    pub fn progress_finding(&self, kind: &'static str) {
        self.progress_findings.get_or_create(&[("kind", kind)]).inc();
    }

    pub fn state_store(&self, outcome: &'static str) {
        self.state_store.get_or_create(&[("outcome", outcome)]).inc();
    }

    pub fn settings_reload(&self, outcome: &'static str) {
        self.settings_reloads.get_or_create(&[("outcome", outcome)]).inc();
    }

    pub fn settings_reloads(&self, outcome: &'static str) -> u64 {
        self.settings_reloads.get_or_create(&[("outcome", outcome)]).get()
    }

    pub fn state_stores(&self, outcome: &'static str) -> u64 {
        self.state_store.get_or_create(&[("outcome", outcome)]).get()
    }

    pub fn foreign_claim(&self, what: &'static str) {
        self.foreign_claims.get_or_create(&[("what", what)]).inc();
    }

    pub fn foreign_claims(&self, what: &'static str) -> u64 {
        self.foreign_claims.get_or_create(&[("what", what)]).get()
    }

    pub fn progress_findings(&self, kind: &'static str) -> u64 {
        self.progress_findings.get_or_create(&[("kind", kind)]).get()
    }

    pub fn indexed(&self, kind: ObjectKind, n: usize) {
        self.indexed.get_or_create(&[("kind", kind.label())]).set(gauge_value(n));
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// Every gang's checkpoint advice now (a gang without advice has no series).
    pub fn checkpoint_advice(&self, advice: &[crate::checkpoint_advice::Advice]) {
        self.checkpoint_interval.clear();
        self.mean_time_to_interrupt.clear();
        for a in advice {
            let labels = vec![
                ("namespace".to_string(), a.gang.namespace.clone()),
                ("gang".to_string(), format!("{}/{}", a.gang.kind, a.gang.name)),
            ];
            self.checkpoint_interval.get_or_create(&labels).set(a.interval_s.round() as i64);
            self.mean_time_to_interrupt.get_or_create(&labels).set(a.mean_time_to_interrupt_s.round() as i64);
        }
    }

    pub fn safety(&self, s: &SafetyState) {
        self.breaker_open.set(i64::from(s.breaker_open));
        self.quarantined_nodes.set(gauge_value(s.quarantined_nodes));
        self.quarantine_node_limit.set(gauge_value(s.quarantine_node_limit));
        self.quarantined_devices.set(gauge_value(s.quarantined_devices));
        self.evictions_last_minute.set(gauge_value(s.evictions_last_minute));
        self.held_by_breaker.set(gauge_value(s.held_by_breaker));
        self.held_versions.set(gauge_value(s.held_versions.len()));
        self.gang_restarts_last_hour.set(gauge_value(s.gang_restarts_last_hour));
        self.progress_breaker_open.set(i64::from(s.progress_breaker_open));
        self.held_by_progress_breaker.set(gauge_value(s.held_by_progress_breaker));
    }
}

/// Whether the loop is alive and the first lists are done, for `/healthz` and `/readyz`.
#[derive(Debug)]
pub struct LoopHealth {
    start: Instant,
    /// Milliseconds after `start` of the loop's last turn.
    last_beat_ms: AtomicU64,
    ready: AtomicBool,
    waiting: std::sync::Mutex<String>,
    /// The loop is stalled when it has not turned for this long.
    stale_after: Duration,
}

impl LoopHealth {
    pub fn new(stale_after: Duration) -> Self {
        LoopHealth {
            start: Instant::now(),
            last_beat_ms: AtomicU64::new(0),
            ready: AtomicBool::new(false),
            waiting: std::sync::Mutex::new("pods, nodes, node device health, failure policies".into()),
            stale_after,
        }
    }

    /// The loop turned.
    pub fn beat(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_beat_ms.store(ms, Ordering::Relaxed);
    }

    /// How long since the loop last turned.
    pub fn since_beat(&self) -> Duration {
        let now = self.start.elapsed();
        now.saturating_sub(Duration::from_millis(self.last_beat_ms.load(Ordering::Relaxed)))
    }

    pub fn alive(&self) -> bool {
        self.since_beat() <= self.stale_after
    }

    pub fn set_ready(&self, ready: bool, waiting_for: &[ObjectKind]) {
        self.ready.store(ready, Ordering::Relaxed);
        if let Ok(mut w) = self.waiting.lock() {
            *w = waiting_for.iter().map(|k| k.label()).collect::<Vec<_>>().join(", ");
        }
    }

    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    fn waiting(&self) -> String {
        self.waiting.lock().map(|w| w.clone()).unwrap_or_default()
    }
}

#[derive(Clone)]
struct ServerState {
    metrics: Arc<Metrics>,
    health: Arc<LoopHealth>,
}

async fn metrics_handler(State(s): State<ServerState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        s.metrics.encode(),
    )
}

async fn healthz(State(s): State<ServerState>) -> impl IntoResponse {
    if s.health.alive() {
        (StatusCode::OK, "ok\n".to_string())
    } else {
        let secs = s.health.since_beat().as_secs();
        (StatusCode::SERVICE_UNAVAILABLE, format!("the controller loop has not turned for {secs}s\n"))
    }
}

async fn readyz(State(s): State<ServerState>) -> impl IntoResponse {
    if s.health.ready() {
        (StatusCode::OK, "ready\n".to_string())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("waiting for the first list of: {}\n", s.health.waiting()))
    }
}

/// The HTTP routes: `/metrics`, `/healthz`, `/readyz`.
pub fn router(metrics: Arc<Metrics>, health: Arc<LoopHealth>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(ServerState { metrics, health })
}

/// Serve the routes on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<LoopHealth>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(metrics, health)).with_graceful_shutdown(shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get_path(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connects");
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("writes");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("reads");
        out
    }

    #[tokio::test]
    async fn serves_metrics_health_and_readiness() {
        let metrics = Arc::new(Metrics::new());
        let health = Arc::new(LoopHealth::new(Duration::from_secs(60)));
        metrics.action("evict_pod", "done");
        metrics.relist(ObjectKind::Pod);
        metrics.set_leader(true);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, metrics.clone(), health.clone(), async move {
            let _ = stopped.await;
        }));
        let text = get_path(addr, "/metrics").await;
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(
            text.contains(r#"devheal_controller_actions_total{action="evict_pod",outcome="done"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"devheal_controller_watch_relists_total{kind="pod"} 1"#), "{text}");
        assert!(text.contains("devheal_controller_leader 1"), "{text}");
        assert!(text.contains("devheal_controller_decision_latency_seconds_bucket"), "{text}");

        health.beat();
        assert!(get_path(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        let not_ready = get_path(addr, "/readyz").await;
        assert!(not_ready.starts_with("HTTP/1.1 503") && not_ready.contains("pods"), "{not_ready}");
        health.set_ready(true, &[]);
        assert!(get_path(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        let _ = stop.send(());
        server.await.expect("joins").expect("serves");
    }

    #[test]
    fn a_loop_that_stops_beating_is_not_alive() {
        let health = LoopHealth::new(Duration::ZERO);
        health.beat();
        std::thread::sleep(Duration::from_millis(5));
        assert!(!health.alive());
        let health = LoopHealth::new(Duration::from_secs(60));
        health.beat();
        assert!(health.alive());
    }
}
