//! The controller loop: watch events → [`ClusterIndex`] → [`Engine`] (with the wall clock) →
//! actions through an [`Actuator`], only while this replica is the leader.
//!
//! - Every replica indexes and decides, so a standby that takes over has a warm engine; only the
//!   leader hands actions to the actuator. What a standby decides is counted and dropped: the
//!   leader, seeing the same cluster, carried it out, and a takeover must not repeat a gang
//!   restart (see docs/controller.md, "Restart safety").
//! - Ticks are sent periodically (budgets refill, probation ends, hangs are noticed).
//! - `ActionOutcome::Retry { after_ms }` is retried after the delay, up to a limit.
//! - In dry run the actuator is told so and answers `WouldDo` (writing a `DevhealDryRun` Event),
//!   which is logged ("dry run: would evict …"), counted, and shown in the FailurePolicy's status
//!   (`dryRunActions`, `lastAction.dryRun`); no pod, node or rule changes.
//!
//! The loop is also usable step by step ([`Controller::handle_event`], [`Controller::tick`],
//! [`Controller::run_due_retries`]) with a [`ManualClock`], which is how the tests drive it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Instant;

use devheal_core::{
    Action, ActionOutcome, Actuator, DurableState, Duration, Engine, EngineConfig, FailureClass, Input,
    PlannedAction, SafetyState, Time,
};
use futures::{Stream, StreamExt};

use crate::checkpoint_advice::{self, CheckpointAdvisor, WRITE_SECONDS_ANNOTATION};
use crate::durable::StateStore;
use crate::index::{ClusterEvent, ClusterIndex, ObjectKind};
use crate::leftovers::Leftovers;
use crate::metrics::{LoopHealth, Metrics};
use crate::progress::{ProgressEffects, ProgressMonitor, ProgressSettings};
use crate::settings::{ReloadOutcome, Settings, SettingsReloader};
use crate::status::{PolicyStatusBook, PolicyStatusWriter};

/// Where the loop reads the time from.
pub trait Clock: Send + Sync {
    fn now(&self) -> Time;
}

/// The wall clock (nanoseconds since the Unix epoch).
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Time {
        let ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        Time::from_nanos(ns)
    }
}

/// A clock that moves only when told (tests, benchmarks).
#[derive(Clone, Debug, Default)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    pub fn new(start: Time) -> Self {
        ManualClock(Arc::new(AtomicI64::new(start.as_nanos())))
    }
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_nanos(), Ordering::SeqCst);
    }
    pub fn set(&self, t: Time) {
        self.0.store(t.as_nanos(), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Time {
        Time::from_nanos(self.0.load(Ordering::SeqCst))
    }
}

/// Whether this replica may act. The real one wraps the Lease elector (see [`keep_lease`]).
pub trait Leadership: Send + Sync {
    fn is_leader(&self) -> impl std::future::Future<Output = bool> + Send;
}

/// A single replica without a lease: always the leader.
#[derive(Clone, Copy, Debug, Default)]
pub struct AlwaysLeader;

impl Leadership for AlwaysLeader {
    async fn is_leader(&self) -> bool {
        true
    }
}

/// Leadership as a shared flag with a deadline: set by [`keep_lease`] (or a test), read by the
/// loop without I/O. Leadership lapses by itself at the deadline, measured on the monotonic
/// clock from when the renewal that granted it was sent, so a replica that stalls (stopped,
/// starved, or waiting on a renewal that hangs) never acts once a standby may have taken the
/// Lease over: it is a standby again until a renewal succeeds.
#[derive(Clone, Debug)]
pub struct LeaderFlag(Arc<LeaderState>);

#[derive(Debug)]
struct LeaderState {
    base: std::time::Instant,
    /// Nanoseconds after `base` until which this replica leads; 0: it does not.
    until: std::sync::atomic::AtomicU64,
}

impl Default for LeaderFlag {
    fn default() -> Self {
        LeaderFlag::new(false)
    }
}

impl LeaderFlag {
    /// `true`: a leader with no deadline (a single replica, tests); `false`: a standby.
    pub fn new(leader: bool) -> Self {
        let flag = LeaderFlag(Arc::new(LeaderState {
            base: std::time::Instant::now(),
            until: std::sync::atomic::AtomicU64::new(0),
        }));
        flag.set(leader);
        flag
    }
    /// Lead with no deadline, or stop leading.
    pub fn set(&self, leader: bool) {
        self.0.until.store(if leader { u64::MAX } else { 0 }, Ordering::SeqCst);
    }
    /// Lead until `deadline` (a monotonic instant), no longer.
    pub fn lead_until(&self, deadline: std::time::Instant) {
        let nanos = deadline.saturating_duration_since(self.0.base).as_nanos();
        self.0.until.store(u64::try_from(nanos).unwrap_or(u64::MAX).max(1), Ordering::SeqCst);
    }
    pub fn get(&self) -> bool {
        let until = self.0.until.load(Ordering::SeqCst);
        until != 0 && (until == u64::MAX || (self.0.base.elapsed().as_nanos() as u64) < until)
    }
}

impl Leadership for LeaderFlag {
    async fn is_leader(&self) -> bool {
        self.get()
    }
}

/// Keep a lease and mirror it into `flag`: call `renew` (e.g.
/// `|| elector.try_acquire_or_renew()`) every `every`, giving each call at most `every`;
/// `Ok(true)` makes this replica the leader until `valid_for` after the call was sent (keep it
/// below the Lease's duration: a standby may take over one duration after the last renewal the
/// server saw), `Ok(false)`, an error or a timeout makes it a standby at once (fail safe: an
/// error never keeps leadership). Returns when `shutdown` completes, leaving the flag false.
pub async fn keep_lease<F, Fut, E>(
    mut renew: F,
    flag: LeaderFlag,
    every: std::time::Duration,
    valid_for: std::time::Duration,
    shutdown: impl std::future::Future<Output = ()>,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, E>>,
    E: std::fmt::Display,
{
    let mut shutdown = std::pin::pin!(shutdown);
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = interval.tick() => {
                let sent = std::time::Instant::now();
                let leader = match tokio::time::timeout(every, renew()).await {
                    Ok(Ok(leader)) => leader,
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "lease renewal failed; acting as a standby");
                        false
                    }
                    Err(_) => {
                        tracing::warn!(timeout = ?every, "lease renewal timed out; acting as a standby");
                        false
                    }
                };
                if leader != flag.get() {
                    tracing::info!(leader, "leadership changed");
                }
                if leader {
                    flag.lead_until(sent + valid_for);
                } else {
                    flag.set(false);
                }
            }
        }
    }
    flag.set(false);
}

/// How the loop runs.
#[derive(Clone, Debug)]
pub struct ControllerSettings {
    pub engine: EngineConfig,
    /// Whether the actuator was told to only say what it would do (for logs).
    pub dry_run: bool,
    /// How often the engine gets a Tick.
    pub tick_every: std::time::Duration,
    /// Attempts per action (the first and its retries) before it is given up.
    pub max_attempts: u32,
    /// FailurePolicy statuses are written at most this often (changes in between coalesce);
    /// they are looked at with each Tick.
    pub status_every: std::time::Duration,
    /// Workload progress across gangs (stragglers, hangs) from the agents' reports.
    pub progress: ProgressSettings,
}

impl Default for ControllerSettings {
    fn default() -> Self {
        ControllerSettings {
            engine: EngineConfig::default(),
            dry_run: false,
            tick_every: std::time::Duration::from_secs(5),
            max_attempts: 8,
            status_every: std::time::Duration::from_secs(5),
            progress: ProgressSettings::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("the watch streams ended")]
    EventsEnded,
}

#[derive(Debug)]
struct PendingRetry {
    planned: PlannedAction,
    attempt: u32,
}

/// A human sentence for an action: "evict ml/trainer-3 (…)" — used for dry-run logs and
/// `WouldDo` descriptions.
pub fn describe(action: &Action) -> String {
    match action {
        // A report's summary already says it all.
        Action::Report { .. } => action.summary(),
        _ => format!("{} ({})", action.summary(), action.reason()),
    }
}

/// What an action names, for its log line (empty where it names none): the pod
/// (`namespace/name`), the node (the action's, else the pod's), the devices
/// (`node/resource/id`, comma-separated: the action's, else the pod's) and the gang.
struct Subjects {
    pod: String,
    node: String,
    device: String,
    gang: String,
}

impl Subjects {
    fn of(action: &Action, engine: &Engine) -> Self {
        let join = |devices: &[devheal_core::DeviceKey]| {
            devices.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(",")
        };
        let mut s =
            Subjects { pod: String::new(), node: String::new(), device: String::new(), gang: String::new() };
        let mut pod_uid = None;
        match action {
            Action::MarkPod { pod, .. } | Action::EvictPod { pod, .. } => {
                s.pod = format!("{}/{}", pod.namespace, pod.name);
                pod_uid = Some(pod.uid.as_str());
            }
            Action::ReplaceAtCheckpoint { pod, gang, devices, .. } => {
                s.pod = format!("{}/{}", pod.namespace, pod.name);
                pod_uid = Some(pod.uid.as_str());
                s.gang = gang.to_string();
                s.device = join(devices);
            }
            Action::RestartGang { gang, .. } | Action::FailWorkload { gang, .. } => s.gang = gang.to_string(),
            Action::QuarantineDevice { device, .. } | Action::ReleaseDevice { device, .. } => {
                s.device = device.to_string();
                s.node = device.node.clone();
            }
            Action::CordonNode { node, .. }
            | Action::UncordonNode { node, .. }
            | Action::WithdrawRepair { node, .. } => {
                s.node = node.clone();
            }
            Action::RequestRepair { node, device, .. } => {
                s.node = node.clone();
                s.device = device.as_ref().map(|d| d.to_string()).unwrap_or_default();
            }
            Action::Report { .. } => {}
        }
        if let Some(uid) = pod_uid {
            if s.node.is_empty() {
                s.node = engine.pod_node(uid).unwrap_or_default().to_string();
            }
            if s.device.is_empty() {
                s.device = join(engine.pod_devices(uid));
            }
        }
        s
    }
}

/// The loop's state: index, engine, pending retries. See the module documentation.
pub struct Controller<A, L, C> {
    index: ClusterIndex,
    engine: Engine,
    actuator: A,
    leadership: L,
    clock: C,
    metrics: Arc<Metrics>,
    health: Arc<LoopHealth>,
    settings: ControllerSettings,
    /// Retries by due time (and a sequence number, so equal times keep their order).
    retries: BTreeMap<(Time, u64), PendingRetry>,
    retry_seq: u64,
    /// What to report on each FailurePolicy object.
    status: PolicyStatusBook,
    /// Gang-wide comparison of the agents' progress reports.
    progress: ProgressMonitor,
    /// Quarantine taints and DeviceTaintRules an earlier process left, to release when their
    /// device is healthy.
    leftovers: Leftovers,
    /// Where the engine's durable state outlives the process ([`crate::durable`]).
    store: Option<Box<dyn StateStore>>,
    /// The state last written, when, and the engine's count of urgent changes then.
    saved: Option<(DurableState, Time, u64)>,
    /// The settings file, looked at again every `reload_every` ([`crate::settings`]).
    reloader: Option<SettingsReloader>,
    reload_every: std::time::Duration,
    /// Daly's checkpoint interval per gang that declares its write time ([`crate::checkpoint_advice`]).
    advice: CheckpointAdvisor,
}

impl<A: Actuator + PolicyStatusWriter, L: Leadership, C: Clock> Controller<A, L, C> {
    pub fn new(
        settings: ControllerSettings,
        actuator: A,
        leadership: L,
        clock: C,
        metrics: Arc<Metrics>,
        health: Arc<LoopHealth>,
    ) -> Self {
        let progress = match ProgressMonitor::new(settings.progress.clone()) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %e, "invalid progress settings; using the defaults");
                ProgressMonitor::default()
            }
        };
        // Hangs come from the agents, which time each pod's silence where it runs; the engine's
        // own check times the silence of its Progress inputs, and in the controller those stop
        // when agents stop publishing (a DaemonSet rollout), which is not a hung workload.
        let mut engine_config = settings.engine.clone();
        engine_config.safety.hang_timeout = Duration::ZERO;
        Controller {
            index: ClusterIndex::new(),
            engine: Engine::new(engine_config),
            actuator,
            leadership,
            clock,
            metrics,
            health,
            settings,
            retries: BTreeMap::new(),
            retry_seq: 0,
            status: PolicyStatusBook::new(),
            progress,
            leftovers: Leftovers::new(),
            store: None,
            saved: None,
            reloader: None,
            reload_every: std::time::Duration::from_secs(10),
            advice: CheckpointAdvisor::default(),
        }
    }

    /// Look at the settings file every `every` while [`Controller::run`] runs, and apply a
    /// changed one ([`Controller::reload_settings`]).
    pub fn with_settings_reloader(mut self, reloader: SettingsReloader, every: std::time::Duration) -> Self {
        self.reloader = Some(reloader);
        self.reload_every = every.max(std::time::Duration::from_millis(100));
        self
    }

    /// Apply settings to the running loop: the engine's safety settings (budgets, breakers,
    /// probation, windows) take effect from the next input on, with everything counted so far
    /// kept. `progress.hangQuorum` and `safety.hangTimeout` need a restart (the controller keeps
    /// the engine's own hang check off: hangs come from the agents).
    pub fn apply_settings(&mut self, settings: &Settings) {
        let mut safety = settings.safety.clone();
        self.settings.engine.safety = safety.clone();
        safety.hang_timeout = Duration::ZERO;
        self.engine.set_safety(safety);
    }

    /// Look at the settings file once: new valid content is applied; new content that cannot be
    /// used is logged and the settings in force stay. Each change is counted in
    /// `devheal_controller_settings_reloads_total{outcome}`.
    pub fn reload_settings(&mut self) {
        let Some(reloader) = self.reloader.as_mut() else { return };
        let outcome = reloader.poll();
        let path = reloader.path().display().to_string();
        if let Some(label) = outcome.label() {
            self.metrics.settings_reload(label);
        }
        match outcome {
            ReloadOutcome::Unchanged => {}
            ReloadOutcome::Applied(settings) => {
                if settings.hang_quorum != self.settings.progress.hang_quorum {
                    tracing::warn!(
                        file = %path,
                        "progress.hangQuorum changed: it takes effect at the next start"
                    );
                }
                self.apply_settings(&settings);
                tracing::info!(file = %path, "settings reloaded: budgets, breakers and probation applied");
            }
            ReloadOutcome::Invalid(e) => {
                tracing::error!(error = %e, "the changed settings file cannot be used; the settings in force stay");
            }
        }
    }

    /// Keep the engine's durable state in `store` ([`crate::durable`]).
    pub fn with_state_store(mut self, store: Box<dyn StateStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Read the durable state an earlier process saved and restore it into the engine: once, at
    /// start, before any event. A store that cannot be read is logged and counted; the
    /// controller then starts from nothing, as before.
    pub async fn restore_state(&mut self) {
        let Some(store) = &self.store else { return };
        let now = self.clock.now();
        match store.load().await {
            Ok(Some(state)) => {
                tracing::info!(
                    gangs = state.restarts.len(),
                    devices = state.devices.len(),
                    "restored the restart budgets' last hour and repeat-offender history"
                );
                self.engine.restore(state.clone(), now);
                self.saved = Some((state, now, self.engine.durable_changes()));
                self.metrics.state_store("restored");
            }
            Ok(None) => self.metrics.state_store("empty"),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the saved state; budgets and history start empty");
                self.metrics.state_store("load_failed");
            }
        }
    }

    /// The leader writes the durable state when it changed: at the next tick after a restart
    /// was counted or a node cordoned or uncordoned (so a crash loses at most a tick of them),
    /// otherwise at most every [`crate::durable::SAVE_EVERY`]; never in dry run.
    async fn persist_state(&mut self, now: Time) {
        if self.settings.dry_run || self.store.is_none() {
            return;
        }
        let every = Duration::from_nanos(crate::durable::SAVE_EVERY.as_nanos() as i64);
        let changes = self.engine.durable_changes();
        let urgent = self.saved.as_ref().is_none_or(|(_, _, at_save)| *at_save != changes);
        if !urgent && self.saved.as_ref().is_some_and(|(_, at, _)| now.since(*at) < every) {
            return;
        }
        let state = self.engine.durable(now);
        if self.saved.as_ref().is_some_and(|(last, _, _)| *last == state)
            || (self.saved.is_none() && state.is_empty())
        {
            return;
        }
        if !self.leadership.is_leader().await {
            return;
        }
        let Some(store) = &self.store else { return };
        match store.save(&state).await {
            Ok(()) => {
                self.saved = Some((state, now, changes));
                self.metrics.state_store("saved");
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot save the restart budgets and repeat-offender history; retrying");
                self.metrics.state_store("save_failed");
            }
        }
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn index(&self) -> &ClusterIndex {
        &self.index
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn actuator(&self) -> &A {
        &self.actuator
    }

    pub fn progress(&self) -> &ProgressMonitor {
        &self.progress
    }

    pub fn safety_state(&self) -> SafetyState {
        self.engine.safety_state(self.clock.now())
    }

    /// When the earliest pending retry is due.
    pub fn next_retry_at(&self) -> Option<Time> {
        self.retries.keys().next().map(|(t, _)| *t)
    }

    pub fn pending_retries(&self) -> usize {
        self.retries.len()
    }

    /// One watch event: index it, decide, and hand the actions to the actuator if leader.
    pub async fn handle_event(&mut self, event: ClusterEvent) {
        let arrival = Instant::now();
        let kind = event.kind();
        if let ClusterEvent::Policy(
            kube::runtime::watcher::Event::Apply(obj) | kube::runtime::watcher::Event::InitApply(obj),
        ) = &event
        {
            self.status.observe(obj);
        }
        match &event {
            ClusterEvent::Node(ev) => self.leftovers.observe(ev),
            ClusterEvent::DeviceTaintRule(ev) => self.leftovers.observe_rule(ev),
            _ => {}
        }
        let update = self.index.apply(event);
        if matches!(kind, ObjectKind::Pod | ObjectKind::FailurePolicy)
            && (!update.inputs.is_empty() || update.relisted)
        {
            self.status.pods_or_policies_changed();
        }
        if update.watch_error {
            self.metrics.watch_error(kind);
        } else {
            self.metrics.watch_event(kind);
        }
        if update.relisted {
            self.metrics.relist(kind);
            tracing::info!(kind = kind.label(), "relist finished");
        }
        if !update.rejected.is_empty() {
            self.metrics.rejected(kind, update.rejected.len());
            for e in &update.rejected {
                tracing::warn!(error = %e, "skipped an invalid object");
            }
        }
        let held = match kind {
            ObjectKind::DeviceTaintRule => self.leftovers.rules(),
            _ => self.index.len(kind),
        };
        self.metrics.indexed(kind, held);
        self.metrics.inputs(kind, update.inputs.len());
        let now = self.clock.now();
        let mut planned = Vec::new();
        // A node spoke for another node's pod: ignored by the index; counted, logged and
        // reported once per claim (an Event), as a sign of a misbehaving or compromised agent.
        for c in &update.foreign {
            self.metrics.foreign_claim(c.what);
            tracing::warn!(node = %c.node, pod = %c.pod, pod_node = %c.pod_node, what = c.what,
                "ignored a NodeDeviceHealth claim about a pod on another node");
            planned.push(PlannedAction {
                idempotency_key: format!("foreign/{}/{}/{}/{}", c.node, c.pod, c.what, now.as_nanos()),
                action: Action::Report {
                    reason: "DevhealForeignClaim".into(),
                    message: format!(
                        "NodeDeviceHealth {} named pod {} (on node {}) in its {} report; a node speaks only for \
                         its own pods, so it was ignored",
                        c.node,
                        c.pod,
                        if c.pod_node.is_empty() { "none" } else { &c.pod_node },
                        c.what
                    ),
                },
                class: FailureClass::None,
                policy: None,
            });
        }
        let mut gone = Vec::new();
        for input in update.inputs {
            if let Input::PodDeleted { uid } = &input {
                gone.push(uid.clone());
            }
            // Pods that carry the checkpoint annotation: its value, not a copy of the pod.
            let declared = match &input {
                Input::PodUpsert(p) if p.annotations.contains_key(WRITE_SECONDS_ANNOTATION) => {
                    Some((p.uid.clone(), checkpoint_advice::write_seconds(p)))
                }
                _ => None,
            };
            planned.extend(self.engine.handle(input, now));
            if let Some((uid, write)) = declared {
                self.advice.observe(self.engine.pod_gang(&uid), write, now);
            }
        }
        for uid in gone {
            let fx = self.progress.forget_pod(&uid);
            self.apply_progress(fx, now, &mut planned);
        }
        for (node, workloads) in update.progress {
            let fx = self.progress.observe_node(&node, &workloads, &self.engine, now);
            self.apply_progress(fx, now, &mut planned);
        }
        self.dispatch(planned, arrival).await;
        self.health.set_ready(self.index.ready(), &self.index.waiting_for());
        self.health.beat();
    }

    /// Time passes: the engine's Tick, then any due retries, then the safety gauges.
    pub async fn tick(&mut self) {
        let arrival = Instant::now();
        let now = self.clock.now();
        let mut planned = Vec::new();
        let fx = self.progress.tick(&self.engine, now);
        self.apply_progress(fx, now, &mut planned);
        planned.extend(self.engine.handle(Input::Tick, now));
        // Quarantines an earlier process left on devices that are healthy now (leftovers.rs);
        // only once every kind is listed, so a taint is never judged against half the cluster.
        if self.index.ready() && self.leadership.is_leader().await {
            let (index, engine) = (&self.index, &self.engine);
            planned.extend(self.leftovers.due(
                now,
                self.settings.engine.safety.probation,
                |node| index.healthy_devices(node),
                |device| engine.is_quarantined(device),
            ));
        }
        self.dispatch(planned, arrival).await;
        self.run_due_retries().await;
        self.persist_state(now).await;
        self.metrics.safety(&self.engine.safety_state(now));
        self.metrics.checkpoint_advice(&self.advice.advice(now));
        self.flush_status().await;
        self.health.beat();
    }

    /// Write the FailurePolicy statuses that changed, if this replica leads and the last
    /// flush was at least `status_every` ago (in dry run too: the status counts the would-be
    /// actions under `dryRunActions`). A write that fails is tried again at the next flush.
    pub async fn flush_status(&mut self) {
        let now = self.clock.now();
        if !self.leadership.is_leader().await {
            self.status.standby();
            return;
        }
        let every = i64::try_from(self.settings.status_every.as_nanos()).unwrap_or(i64::MAX);
        if !self.status.due(now, Duration::from_nanos(every)) {
            return;
        }
        let policies: Vec<(String, String, String)> = self
            .index
            .policies()
            .map(|(k, p)| (k.to_string(), p.namespace.clone().unwrap_or_default(), p.name.clone()))
            .collect();
        let index = &self.index;
        let safety = self.engine.safety_state(now);
        let writes = self.status.changed(&policies, || index.matched_pods(), &safety, now);
        for w in writes {
            let policy = format!("{}/{}", w.namespace, w.name);
            match self.actuator.write_policy_status(&w.namespace, &w.name, &w.status).await {
                Ok(()) => {
                    self.metrics.status_write("done");
                    self.status.written(w);
                }
                Err(devheal_k8s::StatusWriteError::Gone(_)) => {
                    self.metrics.status_write("gone");
                    tracing::debug!(%policy, "policy gone before its status was written");
                }
                Err(e) => {
                    self.metrics.status_write("failed");
                    tracing::warn!(error = %e, "status not written; trying again at the next flush");
                }
            }
        }
    }

    /// What the progress monitor concluded: device reasons through the index (merged with the
    /// agents' reports), then its inputs, to the engine.
    fn apply_progress(&mut self, fx: ProgressEffects, now: Time, planned: &mut Vec<PlannedAction>) {
        if fx.is_empty() {
            return;
        }
        for f in &fx.findings {
            self.metrics.progress_finding(f.kind.as_str());
            tracing::info!(subject = %f.subject, kind = f.kind.as_str(), "progress finding: {}", f.evidence);
        }
        for (device, reason) in fx.device_reasons {
            if let Some(input) = self.index.set_progress_reason(&device, reason) {
                planned.extend(self.engine.handle(input, now));
            }
        }
        for input in fx.inputs {
            if let Input::Hung { evidence, .. } = &input {
                self.metrics.progress_finding("hang");
                tracing::warn!("workload hung: {evidence}");
            }
            planned.extend(self.engine.handle(input, now));
        }
    }

    /// An action that will not be carried out: a release of a leftover quarantine is offered
    /// again (the taint still stands).
    fn gave_up(&mut self, planned: &PlannedAction) {
        if let Action::ReleaseDevice { device, .. } = &planned.action {
            self.leftovers.retry(device);
        }
    }

    /// Hand the engine's actions to the actuator, in order, if this replica leads.
    async fn dispatch(&mut self, planned: Vec<PlannedAction>, arrival: Instant) {
        if planned.is_empty() {
            return;
        }
        let leader = self.leadership.is_leader().await;
        self.metrics.set_leader(leader);
        if !leader {
            for p in &planned {
                self.metrics.standby_action(p.action.label());
                tracing::debug!(key = %p.idempotency_key, "standby: decided, not sent: {}", describe(&p.action));
            }
            return;
        }
        self.metrics.decision_latency(arrival.elapsed());
        for p in planned {
            // Leadership can lapse while earlier actions of the batch were carried out.
            if !self.leadership.is_leader().await {
                self.metrics.set_leader(false);
                self.metrics.standby_action(p.action.label());
                tracing::warn!(key = %p.idempotency_key, "leadership lapsed; not sent: {}", describe(&p.action));
                continue;
            }
            self.execute(p, 1).await;
        }
        self.metrics.safety(&self.engine.safety_state(self.clock.now()));
    }

    async fn execute(&mut self, planned: PlannedAction, attempt: u32) {
        let label = planned.action.label();
        let outcome = self.actuator.execute(&planned).await;
        self.metrics.action(label, outcome.label());
        // One interruption per incident: the fallback of an in-place restart is the same one.
        if let (Action::RestartGang { gang, .. }, ActionOutcome::Done | ActionOutcome::WouldDo { .. }) =
            (&planned.action, &outcome)
            && !planned.idempotency_key.ends_with(devheal_core::IN_PLACE_FALLBACK_SUFFIX)
        {
            self.advice.interrupted(gang, self.clock.now());
        }
        // One structured line per action and outcome (docs/controller.md, "Logs").
        let s = Subjects::of(&planned.action, &self.engine);
        macro_rules! action_line {
            ($level:ident, $($rest:tt)+) => {
                tracing::$level!(
                    pod = %s.pod,
                    node = %s.node,
                    device = %s.device,
                    gang = %s.gang,
                    policy = planned.policy.as_deref().unwrap_or(""),
                    incident = %planned.idempotency_key,
                    action = label,
                    outcome = outcome.label(),
                    $($rest)+
                )
            };
        }
        match &outcome {
            ActionOutcome::Done => {
                self.status.record(&planned, self.clock.now());
                action_line!(info, "done: {}", describe(&planned.action));
            }
            ActionOutcome::WouldDo { description } => {
                if !self.settings.dry_run {
                    tracing::warn!("the actuator answered WouldDo although the controller is not in dry run");
                }
                self.status.record_dry_run(&planned, self.clock.now());
                // The Kubernetes actuator's sentences start with "would"; the fake cluster's do not.
                if description.starts_with("would ") {
                    action_line!(info, "dry run: {description}");
                } else {
                    action_line!(info, "dry run: would {description}");
                }
            }
            ActionOutcome::Gone => {
                action_line!(info, "nothing left to act on: {}", describe(&planned.action));
            }
            ActionOutcome::Failed { reason } => {
                action_line!(warn, %reason, "failed: {}", describe(&planned.action));
                self.gave_up(&planned);
            }
            ActionOutcome::Retry { after_ms, reason } => {
                if attempt >= self.settings.max_attempts {
                    self.metrics.retries_exhausted(label);
                    action_line!(warn, %reason, attempt,
                        "giving up after {attempt} attempts: {}", describe(&planned.action));
                    self.gave_up(&planned);
                    return;
                }
                let after_ms = *after_ms;
                let after = Duration::from_millis(i64::try_from(after_ms).unwrap_or(i64::MAX / 1_000_000));
                let due = self.clock.now() + after;
                action_line!(info, %reason, after_ms, attempt,
                    "refused for now, retrying: {}", describe(&planned.action));
                self.retry_seq += 1;
                self.retries.insert((due, self.retry_seq), PendingRetry { planned, attempt: attempt + 1 });
            }
        }
    }

    /// Carry out the retries that are due (only as leader; a standby drops them).
    pub async fn run_due_retries(&mut self) {
        let now = self.clock.now();
        let due: Vec<(Time, u64)> = self.retries.range(..(now, u64::MAX)).map(|(k, _)| *k).collect();
        if due.is_empty() {
            return;
        }
        let leader = self.leadership.is_leader().await;
        self.metrics.set_leader(leader);
        for k in due {
            let Some(r) = self.retries.remove(&k) else { continue };
            if leader {
                self.execute(r.planned, r.attempt).await;
            } else {
                self.metrics.standby_action(r.planned.action.label());
                self.gave_up(&r.planned);
            }
        }
    }

    /// Run until `shutdown` completes: events as they come, a Tick every `tick_every`, retries
    /// when due. Returns an error if the event stream ends.
    pub async fn run<S>(
        mut self,
        events: S,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<Self, ControllerError>
    where
        S: Stream<Item = ClusterEvent>,
    {
        let mut events = std::pin::pin!(events);
        let mut shutdown = std::pin::pin!(shutdown);
        let mut ticks = tokio::time::interval(self.settings.tick_every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reloads = tokio::time::interval(self.reload_every);
        reloads.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.metrics.set_leader(self.leadership.is_leader().await);
        tracing::info!(dry_run = self.settings.dry_run, "controller loop started");
        for kind in ObjectKind::ALL {
            self.metrics.indexed(kind, 0);
        }
        loop {
            let retry_wait = self.next_retry_at().map(|t| {
                let ns = t.since(self.clock.now()).as_nanos().max(0);
                std::time::Duration::from_nanos(u64::try_from(ns).unwrap_or(0))
            });
            tokio::select! {
                _ = &mut shutdown => return Ok(self),
                event = events.next() => match event {
                    Some(event) => self.handle_event(event).await,
                    None => return Err(ControllerError::EventsEnded),
                },
                _ = ticks.tick() => {
                    self.metrics.set_leader(self.leadership.is_leader().await);
                    self.tick().await;
                }
                _ = reloads.tick(), if self.reloader.is_some() => self.reload_settings(),
                _ = tokio::time::sleep(retry_wait.unwrap_or(std::time::Duration::from_secs(3600))),
                    if retry_wait.is_some() => self.run_due_retries().await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration as StdDuration;

    #[test]
    fn leadership_lapses_at_its_deadline_without_anyone_clearing_it() {
        let flag = LeaderFlag::new(false);
        assert!(!flag.get());
        flag.lead_until(std::time::Instant::now() + StdDuration::from_millis(100));
        assert!(flag.get());
        std::thread::sleep(StdDuration::from_millis(150));
        assert!(!flag.get(), "a replica that stalled past its deadline must not lead");
        flag.set(true);
        assert!(flag.get(), "set(true) leads with no deadline");
        flag.set(false);
        assert!(!flag.get());
    }

    #[tokio::test]
    async fn a_renewal_that_hangs_ends_leadership() {
        let flag = LeaderFlag::new(false);
        let calls = Arc::new(AtomicI64::new(0));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = {
            let (flag, calls) = (flag.clone(), calls.clone());
            tokio::spawn(keep_lease(
                move || {
                    let n = calls.fetch_add(1, Ordering::SeqCst);
                    async move {
                        if n > 0 {
                            // The API server stopped answering.
                            std::future::pending::<()>().await;
                        }
                        Ok::<bool, String>(true)
                    }
                },
                flag,
                StdDuration::from_millis(50),
                StdDuration::from_secs(60),
                async move {
                    let _ = stopped.await;
                },
            ))
        };
        tokio::time::sleep(StdDuration::from_millis(20)).await;
        assert!(flag.get(), "the first renewal succeeded");
        tokio::time::sleep(StdDuration::from_millis(150)).await;
        assert!(!flag.get(), "a renewal that hangs past its timeout must end leadership");
        let _ = stop.send(());
        task.await.unwrap();
    }
}
