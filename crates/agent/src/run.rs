//! The long-running agent: every source as its own task or thread, one event loop that owns the
//! per-device health state machine, and the publisher.
//!
//! ```text
//!  kmsg reader thread ──(device faults only)──┐
//!  NVML thread (inventory, samples, Xids) ────┤
//!  PodResources: bindings, allocatable ───────┼──► event loop: tracker + device↔pod map ──watch──► publisher task
//!  Node device counts (poll of its Node) ─────┤       │ (batch, snapshot, diff)              └─► Events
//!  fake devices (kernel lines, resets) ───────┤       └──► /metrics gauges
//!  POST /v1/progress (reply on a oneshot) ────┤   + progress book (status.workloads)
//!  progress scraper (annotated, bound pods) ──┘
//! ```
//!
//! The agent opens no `ListAndWatch` stream of its own: a plugin that feeds every stream from one
//! channel would lose updates to it that the kubelet then never sees. Plugin-side health comes
//! from the kubelet instead ([`crate::kubelet_devices`]).
//!
//! The loop drains every event that is waiting, then builds the `NodeDeviceHealth` once and
//! hands it to the publisher only when it changed in substance. It turns at least once a second
//! (probation ends on time; `/healthz` sees it alive). Sources never decide health on their own:
//! a source that goes blind makes its devices' health `Unknown` through the tracker, never
//! `Unhealthy`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration as StdDuration;

use devheal_core::{Health, HealthSource, Time};
use devheal_k8s::crd::{NodeDeviceHealth, NodeDeviceHealthStatus, SourceStatus, k8s_time};
use devheal_kubelet::podresources::DeviceBinding;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;

use crate::fake::{FakeControl, FakeSignal, fake_devices};
use crate::health::{DeviceHealthTracker, Evidence, TrackerConfig};
use crate::http::{ProgressControl, ProgressRefusal, ProgressRequest};
use crate::identity::{NodeIdentity, SliceRead};
use crate::kernel::{KernelEvent, KernelPipeline, Mapped, spawn_kmsg_reader};
use crate::kubelet_devices::{KubeletDevices, KubeletView, NodeCounts, per_device};
use crate::metrics::{AgentMetrics, DeviceLabels, HealthLabel, MAX_DEVICE_SERIES, SourceLabel};
use crate::once::SourcePaths;
use crate::progress::{PodRef, ProgressBook, ProgressConfig, ProgressError};
use crate::publish::{
    DeviceTransition, Publication, PublishConfig, Publisher, devices_condition, run_publisher, wall_now,
};
use crate::scrape::{ScrapeConfig, ScrapeEvent, ScrapeTarget, run_scraper};
use crate::snapshot::{
    InventoryDevice, SnapshotInput, fold_inventory, keep_within_schema, node_device_health, within_schema,
};
pub use crate::sources::GpuSource;
use crate::sources::{
    NvmlEvent, PodResourcesEvent, PodResourcesSettings, SourceEvent, pod_resources_task, spawn_gpu_telemetry,
};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("cannot start the {what} thread: {source}")]
    Thread { what: &'static str, source: std::io::Error },
    #[error(transparent)]
    Progress(#[from] ProgressError),
}

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub node: String,
    pub paths: SourcePaths,
    pub gpus: GpuSource,
    /// Serve this many fake devices (`devheal.io/fake-gpu`) and accept fault injection.
    pub fake_devices: usize,
    /// `/metrics`, `/healthz` and `/fake/*`; `None` serves nothing.
    pub metrics_addr: Option<SocketAddr>,
    /// `POST /v1/progress`, on its own port; `None` takes no reports.
    pub progress_addr: Option<SocketAddr>,
    /// Rate limits and body slots of `POST /v1/progress`.
    pub progress_limits: crate::http::ProgressLimits,
    pub tracker: TrackerConfig,
    /// The Xid/event catalog kernel records are classified with (`--catalog`; default: the
    /// built-in one).
    pub catalog: devheal_detect::catalog::Catalog,
    pub publish: PublishConfig,
    /// PodResources is read on every change and at least this often.
    pub pod_resources_interval: StdDuration,
    /// Least time between two PodResources calls (the kubelet rate-limits the API).
    pub pod_resources_min_interval: StdDuration,
    /// How often NVML is sampled.
    pub nvml_interval: StdDuration,
    /// How long one kubelet or plugin call may take.
    pub source_timeout: StdDuration,
    /// Workload progress: windows, hang timeout, scrape interval.
    pub progress: ProgressConfig,
    /// Pods that name a progress metric (from the pod watch, [`crate::scrape::watch_pods`]);
    /// `None`: no scraping (`--no-kube`).
    pub scrape_targets: Option<watch::Receiver<Vec<ScrapeTarget>>>,
    /// How long one scrape may take.
    pub scrape_timeout: StdDuration,
    /// Bounds of the HTTP server (connections, header and connection timeouts).
    pub http_limits: crate::serve::ServeLimits,
    /// Who may post progress reports ([`crate::http::ProgressAuth`]; the pod itself by default).
    pub progress_auth: crate::http::ProgressAuth,
    /// The node's pods and their IPs, from the pod watch ([`crate::scrape::watch_node_pods`]),
    /// for [`crate::http::ProgressAuth::Pod`].
    pub pod_addresses: Option<watch::Receiver<crate::scrape::PodAddresses>>,
    /// The Node's device counts per extended resource ([`crate::sources::poll_node_counts`]),
    /// which tell a device its plugin reported Unhealthy from one that was removed; `None`
    /// without an API server.
    pub node_counts: Option<watch::Receiver<Option<NodeCounts>>>,
    /// Token reviews for pods that prove who they are with a token ([`crate::token`]); `None`
    /// without an API server.
    pub progress_tokens: Option<Arc<crate::token::PodTokens>>,
    /// The devices this node's ResourceSlices announce ([`crate::sources::poll_resource_slices`]),
    /// which say which DRA device is which GPU; `None` without an API server.
    pub resource_slices: Option<watch::Receiver<SliceRead>>,
}

impl AgentConfig {
    pub fn new(node: &str) -> Self {
        AgentConfig {
            node: node.to_string(),
            paths: SourcePaths::default(),
            gpus: GpuSource::Nvml,
            fake_devices: 0,
            metrics_addr: Some(SocketAddr::from(([0, 0, 0, 0], 9101))),
            progress_addr: Some(SocketAddr::from(([0, 0, 0, 0], 9102))),
            progress_limits: crate::http::ProgressLimits::default(),
            tracker: TrackerConfig::default(),
            catalog: devheal_detect::catalog::Catalog::builtin(),
            publish: PublishConfig::default(),
            pod_resources_interval: StdDuration::from_secs(10),
            pod_resources_min_interval: StdDuration::from_secs(1),
            nvml_interval: StdDuration::from_secs(10),
            source_timeout: StdDuration::from_secs(5),
            progress: ProgressConfig::default(),
            scrape_targets: None,
            scrape_timeout: StdDuration::from_secs(5),
            http_limits: crate::serve::ServeLimits::default(),
            progress_auth: crate::http::ProgressAuth::Pod,
            progress_tokens: None,
            node_counts: None,
            pod_addresses: None,
            resource_slices: None,
        }
    }
}

/// A running agent.
pub struct AgentHandle {
    /// Where `/metrics` is served (the bound address, when the configured port was 0).
    pub metrics_addr: Option<SocketAddr>,
    /// Where `POST /v1/progress` is served (the bound address).
    pub progress_addr: Option<SocketAddr>,
    pub metrics: Arc<AgentMetrics>,
    /// Fault injection, with `fake_devices > 0`.
    pub fake: Option<FakeControl>,
    shutdown: watch::Sender<bool>,
    stop_threads: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl AgentHandle {
    /// Stop every task (the publisher makes one last write of a pending change) and wait.
    pub async fn stop(self) {
        drop(self.fake);
        let _ = self.shutdown.send(true);
        self.stop_threads.store(true, Ordering::Relaxed);
        for task in self.tasks {
            if tokio::time::timeout(StdDuration::from_secs(10), task).await.is_err() {
                tracing::warn!("an agent task did not stop within 10 s");
            }
        }
    }
}

/// Start the agent on the current tokio runtime.
pub async fn start<P: Publisher>(config: AgentConfig, mut publisher: P) -> Result<AgentHandle, AgentError> {
    let progress = ProgressBook::new(config.progress.clone())?;
    let metrics = Arc::new(AgentMetrics::new());
    let (shutdown_tx, shutdown) = watch::channel(false);
    let stop_threads = Arc::new(AtomicBool::new(false));
    let (events_tx, events_rx) = mpsc::channel::<SourceEvent>(4096);
    let mut tasks = Vec::new();

    // Fake devices first: the HTTP endpoint needs their control handle.
    let mut fake = None;
    let mut static_devices = Vec::new();
    if config.fake_devices > 0 {
        let (signals_tx, signals_rx) = mpsc::channel::<FakeSignal>(256);
        let (plugin, control) = fake_devices(
            config.fake_devices,
            &config.node,
            config.paths.device_plugin_dir.clone(),
            signals_tx,
        );
        static_devices = control.devices().to_vec();
        tasks.push(tokio::spawn(plugin.run(shutdown.clone())));
        tasks.push(tokio::spawn(forward(signals_rx, events_tx.clone(), SourceEvent::Fake, shutdown.clone())));
        fake = Some(control);
    }

    // Progress reports from the HTTP endpoint, answered by the loop.
    let (progress_tx, progress_rx) = mpsc::channel::<ProgressRequest>(256);
    tasks.push(tokio::spawn(forward(
        progress_rx,
        events_tx.clone(),
        SourceEvent::Progress,
        shutdown.clone(),
    )));
    let (bound_tx, bound_rx) = watch::channel(BTreeSet::<PodRef>::new());
    if let Some(targets) = config.scrape_targets.clone() {
        let (scrape_tx, scrape_rx) = mpsc::channel::<ScrapeEvent>(1024);
        let scrape = ScrapeConfig {
            every: StdDuration::from_nanos(config.progress.scrape_every.as_nanos().max(1) as u64),
            timeout: config.scrape_timeout,
            ..ScrapeConfig::default()
        };
        tasks.push(tokio::spawn(run_scraper(scrape, targets, bound_rx, scrape_tx, shutdown.clone())));
        tasks.push(tokio::spawn(forward(
            scrape_rx,
            events_tx.clone(),
            SourceEvent::Scrape,
            shutdown.clone(),
        )));
    }

    let state = crate::http::HttpState {
        metrics: Arc::clone(&metrics),
        fake: fake.clone(),
        progress: Some(ProgressControl::new(progress_tx.clone())),
        auth: config.progress_auth,
        pod_addresses: config.pod_addresses.clone(),
        gate: Arc::new(crate::http::ProgressGate::new(config.progress_limits)),
        tokens: config.progress_tokens.clone(),
    };
    let mut listen = async |addr: Option<SocketAddr>, app: axum::Router| -> Result<_, AgentError> {
        let Some(addr) = addr else { return Ok(None) };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| AgentError::Listen { addr, source })?;
        let bound = listener.local_addr().map_err(|source| AgentError::Listen { addr, source })?;
        tasks.push(tokio::spawn(crate::serve::serve(listener, app, config.http_limits, shutdown.clone())));
        Ok(Some(bound))
    };
    let metrics_addr = listen(config.metrics_addr, crate::http::metrics_router(state.clone())).await?;
    let progress_addr = listen(config.progress_addr, crate::http::progress_router(state)).await?;

    // Kernel log.
    let (kernel_tx, kernel_rx) = mpsc::channel::<KernelEvent>(4096);
    spawn_kmsg_reader(
        config.paths.kmsg.clone(),
        kernel_tx,
        Arc::clone(&metrics),
        Arc::clone(&stop_threads),
        config.catalog.clone(),
    )
    .map_err(|source| AgentError::Thread { what: "kernel log", source })?;
    tasks.push(tokio::spawn(forward(kernel_rx, events_tx.clone(), SourceEvent::Kernel, shutdown.clone())));

    // GPU telemetry.
    if !matches!(config.gpus, GpuSource::Off) {
        spawn_gpu_telemetry(
            config.gpus.clone(),
            config.paths.nvml_library.clone(),
            config.nvml_interval,
            events_tx.clone(),
            Arc::clone(&stop_threads),
        )
        .map_err(|source| AgentError::Thread { what: "NVML", source })?;
    }

    // The Node's device counts, as they change.
    if let Some(mut counts) = config.node_counts.clone() {
        let events = events_tx.clone();
        let mut stop = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let now = counts.borrow_and_update().clone();
                if events.send(SourceEvent::NodeCounts(now)).await.is_err() {
                    return;
                }
                tokio::select! {
                    changed = counts.changed() => if changed.is_err() { return },
                    _ = stopped(&mut stop) => return,
                }
            }
        }));
    }

    // The node's ResourceSlices, as they change.
    if let Some(mut slices) = config.resource_slices.clone() {
        let events = events_tx.clone();
        let mut stop = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let now = slices.borrow_and_update().clone();
                if let Some(now) = now
                    && events.send(SourceEvent::Slices(now)).await.is_err()
                {
                    return;
                }
                tokio::select! {
                    changed = slices.changed() => if changed.is_err() { return },
                    _ = stopped(&mut stop) => return,
                }
            }
        }));
    }

    // PodResources.
    let refresh = Arc::new(Notify::new());
    let settings = PodResourcesSettings {
        socket: config.paths.pod_resources_socket.clone(),
        timeout: config.source_timeout,
        interval: config.pod_resources_interval,
        min_interval: config.pod_resources_min_interval,
    };
    tasks.push(tokio::spawn(pod_resources_task(
        settings,
        Arc::clone(&refresh),
        events_tx.clone(),
        Arc::clone(&metrics),
        shutdown.clone(),
    )));
    drop(events_tx);

    // What this node's agent last published, before the publisher takes over (restore.rs).
    let last = read_last_report(&mut publisher, &config.node).await;

    // Publisher.
    let (publication_tx, publication_rx) = watch::channel::<Option<Publication>>(None);
    let (transition_tx, transition_rx) = mpsc::channel::<DeviceTransition>(1024);
    tasks.push(tokio::spawn(run_publisher(
        publisher,
        config.node.clone(),
        publication_rx,
        transition_rx,
        Arc::clone(&metrics),
        config.publish.clone(),
        shutdown.clone(),
    )));

    // The loop.
    let boot_id = std::fs::read_to_string(&config.paths.boot_id_file)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    let now = wall_now();
    let boot_time = match uptime() {
        Some(up) => now - devheal_core::Duration::from_nanos((up * 1e9) as i64),
        None => now,
    };
    let mut tracker = DeviceHealthTracker::new(config.tracker.clone(), boot_id.clone());
    // Fake devices: the agent is their plugin, which serves them Healthy at first.
    for d in &static_devices {
        tracker.set_watch(&d.id, HealthSource::DevicePlugin, true, now);
    }
    let kept = crate::restore::restore(&mut tracker, last.as_ref(), boot_id.as_deref(), now);
    if !kept.is_empty() {
        tracing::warn!(devices = ?kept.keys().collect::<Vec<_>>(),
            "kept the devices the last report had Unhealthy or Degraded until there is evidence they recovered");
    }
    let mut kubelet = KubeletDevices::default();
    let mut identity = NodeIdentity::default();
    for d in &static_devices {
        kubelet.note(&d.resource, &d.id);
        if let Some(pci) = &d.pci_address {
            identity.add_device_at(&d.id, pci);
        }
    }
    let state = LoopState {
        node: config.node.clone(),
        boot_id: boot_id.clone(),
        tracker,
        kept,
        kernel: KernelPipeline::new(&config.node, boot_id, boot_time).with_catalog(config.catalog.clone()),
        static_devices,
        nvml_devices: Vec::new(),
        identity,
        kubelet,
        kubelet_last: BTreeMap::new(),
        bindings: Vec::new(),
        sources: BTreeMap::new(),
        last_health: BTreeMap::new(),
        last_sent: None,
        metrics: Arc::clone(&metrics),
        refresh,
        inventory_ids: BTreeSet::new(),
        ready: false,
        started: tokio::time::Instant::now(),
        progress,
        bound: BTreeSet::new(),
        bound_tx,
    };
    drop(progress_tx);
    tasks.push(tokio::spawn(event_loop(state, events_rx, publication_tx, transition_tx, shutdown.clone())));

    Ok(AgentHandle { metrics_addr, progress_addr, metrics, fake, shutdown: shutdown_tx, stop_threads, tasks })
}

/// Pass a source's events on to the loop until either side is gone or the agent stops.
async fn forward<T>(
    mut from: mpsc::Receiver<T>,
    to: mpsc::Sender<SourceEvent>,
    wrap: fn(T) -> SourceEvent,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            item = from.recv() => {
                let Some(item) = item else { return };
                if to.send(wrap(item)).await.is_err() {
                    return;
                }
            }
            _ = stopped(&mut shutdown) => return,
        }
    }
}

/// Resolves once the agent is told to stop (or its handle is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

fn uptime() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/uptime").ok()?;
    let up: f64 = text.split_whitespace().next()?.parse().ok()?;
    (up.is_finite() && up >= 0.0).then_some(up)
}

struct LoopState {
    node: String,
    boot_id: Option<String>,
    tracker: DeviceHealthTracker,
    kernel: KernelPipeline,
    /// Fake devices.
    static_devices: Vec<InventoryDevice>,
    nvml_devices: Vec<InventoryDevice>,
    /// Every name each device goes by ([`crate::identity`]).
    identity: NodeIdentity,
    /// The devices the kubelet offers, and what it says of the others (plugin-side health).
    kubelet: KubeletDevices,
    /// The kubelet's view of each device (by key, over all its names) as last given to the
    /// tracker.
    kubelet_last: BTreeMap<String, KubeletView>,
    bindings: Vec<DeviceBinding>,
    sources: BTreeMap<String, SourceStatus>,
    last_health: BTreeMap<String, Health>,
    /// The last status handed to the publisher, without what changes on every write.
    last_sent: Option<NodeDeviceHealthStatus>,
    metrics: Arc<AgentMetrics>,
    refresh: Arc<Notify>,
    inventory_ids: BTreeSet<String>,
    /// Devices kept from the last report (restore.rs): listed while no source lists them and
    /// the tracker does not call them Healthy.
    kept: crate::restore::Kept,
    /// Nothing is published before PodResources first answered (or failed) or the warm-up
    /// passed, so the first status and Events already list the pods.
    ready: bool,
    started: tokio::time::Instant,
    /// Workload progress of the pods bound to devices here.
    progress: ProgressBook,
    /// Pods bound to a device on this node (PodResources), for the scraper too.
    bound: BTreeSet<PodRef>,
    bound_tx: watch::Sender<BTreeSet<PodRef>>,
}

/// The longest the first publication waits for PodResources.
const WARM_UP: StdDuration = StdDuration::from_secs(2);

/// How many waiting events one turn takes before it publishes.
const BATCH: usize = 4096;

async fn event_loop(
    mut state: LoopState,
    mut events: mpsc::Receiver<SourceEvent>,
    publications: watch::Sender<Option<Publication>>,
    transitions: mpsc::Sender<DeviceTransition>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(StdDuration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            event = events.recv() => {
                let Some(event) = event else { break };
                state.handle(event);
                let mut taken = 1;
                while taken < BATCH {
                    match events.try_recv() {
                        Ok(event) => {
                            state.handle(event);
                            taken += 1;
                        }
                        Err(_) => break,
                    }
                }
            }
            _ = tick.tick() => {
                let now = wall_now();
                state.tracker.tick(now);
                state.progress.tick(now);
                state.metrics.mark_loop_alive(now.as_nanos() / 1_000_000_000);
            }
            _ = shutdown.changed() => break,
        }
        state.publish(&publications, &transitions);
    }
}

impl LoopState {
    fn handle(&mut self, event: SourceEvent) {
        let now = wall_now();
        match event {
            SourceEvent::Kernel(KernelEvent::Following { path }) => {
                self.set_source("kernel_log", true, format!("following {path}"), None, now);
            }
            SourceEvent::Kernel(KernelEvent::Unavailable { message }) => {
                self.set_source("kernel_log", false, message, None, now);
            }
            SourceEvent::Kernel(KernelEvent::Fault { fault, since_boot }) => {
                let at = self.kernel.wall_time(since_boot);
                let mapped = self.kernel.fault(&fault, at);
                self.apply_kernel(mapped);
            }
            SourceEvent::Fake(FakeSignal::KernelLine(line)) => {
                if let Some(mapped) = self.kernel.line(&line, now) {
                    self.apply_kernel(mapped);
                }
            }
            SourceEvent::Fake(FakeSignal::Reset { device }) => {
                let key = self.identity.resolve(crate::fake::FAKE_RESOURCE, &device).key;
                self.tracker.device_reset(&key, now)
            }
            SourceEvent::Fake(FakeSignal::PluginHealth { device, healthy }) => {
                // The agent is this plugin (fake devices): what it serves the kubelet, it knows.
                let (health, word) =
                    if healthy { (Health::Healthy, "Healthy") } else { (Health::Unhealthy, "Unhealthy") };
                self.tracker.set_watch(&device, HealthSource::DevicePlugin, true, now);
                self.tracker.observe(
                    &device,
                    Evidence {
                        source: HealthSource::DevicePlugin,
                        code: None,
                        health,
                        message: format!("the fake device plugin reports it {word}"),
                    },
                    now,
                );
            }
            SourceEvent::Nvml(event) => self.handle_nvml(event, now),
            SourceEvent::PodResources(PodResourcesEvent::Listed { bindings, allocatable }) => {
                let message = format!("{} device binding(s)", bindings.len());
                self.bound = bindings.iter().map(|b| PodRef::new(&b.namespace, &b.pod)).collect();
                let bound = &self.bound;
                self.progress.retain(|pod| bound.contains(pod));
                self.bound_tx.send_if_modified(|old| {
                    let changed = old != bound;
                    if changed {
                        old.clone_from(bound);
                    }
                    changed
                });
                for b in &bindings {
                    self.kubelet.note(&b.resource, &b.device_id);
                }
                self.bindings = bindings;
                self.set_source("pod_resources", true, message, None, now);
                match allocatable {
                    Ok(devices) => {
                        self.kubelet.set_allocatable(&devices);
                        self.apply_kubelet(now);
                    }
                    Err(message) => self.set_source(
                        "device_plugins",
                        false,
                        format!("the kubelet's allocatable devices: {message}"),
                        None,
                        now,
                    ),
                }
            }
            SourceEvent::NodeCounts(counts) => {
                self.kubelet.set_counts(counts);
                self.apply_kubelet(now);
            }
            SourceEvent::Slices(Ok(devices)) => {
                let message = format!("{} DRA device(s) announced for this node", devices.len());
                self.identity.set_slices(devices);
                self.set_source("resource_slices", true, message, None, now);
                self.apply_kubelet(now);
            }
            SourceEvent::Slices(Err(message)) => {
                self.set_source("resource_slices", false, message, None, now)
            }
            SourceEvent::PodResources(PodResourcesEvent::Unavailable(message)) => {
                self.set_source("pod_resources", false, message, None, now);
            }
            SourceEvent::Progress(request) => {
                let answer = self.progress_report(&request);
                let _ = request.reply.send(answer);
            }
            SourceEvent::Scrape(ScrapeEvent::Read { pod, uid, reading, at }) => {
                self.metrics.scraped(reading.is_ok());
                if !self.bound.contains(&pod) {
                    return;
                }
                if let Err(e) = self.progress.scrape(&pod, uid.as_deref(), reading, at) {
                    tracing::warn!(%pod, error = %e, "progress of a pod not followed");
                }
            }
            SourceEvent::Scrape(ScrapeEvent::Stopped { pod }) => {
                if self.progress.reporter(&pod) == Some(devheal_k8s::crd::ProgressReporter::Scrape) {
                    self.progress.forget(&pod);
                }
            }
        }
        self.metrics.progress_pods.set(self.progress.len() as i64);
    }

    /// A pod's `POST /v1/progress`, for pods bound to a device here only (which also bounds
    /// the book).
    fn progress_report(
        &mut self,
        request: &ProgressRequest,
    ) -> Result<crate::progress::ReportOutcome, ProgressRefusal> {
        let pod = &request.post.pod;
        if !self.bound.contains(pod) {
            // A pod that just started is not in the last PodResources list yet: read it again
            // (at most once a second), so its next report finds it.
            self.refresh.notify_one();
            return Err(match self.sources.get("pod_resources") {
                Some(s) if s.available => ProgressRefusal::NotOnNode(pod.to_string()),
                Some(s) => ProgressRefusal::NoBindings(s.message.clone().unwrap_or_default()),
                None => ProgressRefusal::NoBindings("PodResources has not answered yet".into()),
            });
        }
        let now = request.now;
        let pause_until =
            request.post.pause_seconds.map(|s| now + devheal_core::Duration::from_nanos((s * 1e9) as i64));
        self.progress
            .report(pod, &request.post.steps, pause_until, now)
            .map_err(|e| ProgressRefusal::Full(e.to_string()))
    }

    fn apply_kernel(&mut self, mapped: Mapped) {
        match mapped {
            Mapped::Device { pci_address, evidence, at } => {
                let device = self.device_at(&pci_address);
                match device {
                    Some(id) => self.tracker.observe(&id, evidence, at),
                    None => {
                        self.metrics.kmsg_unmapped.inc();
                        self.kernel.hold(pci_address, evidence, at);
                    }
                }
            }
            Mapped::NoAddress => {
                self.metrics.kmsg_unmapped.inc();
            }
            Mapped::Ignored => {}
        }
    }

    /// The key of the physical device at `pci_address`: NVML's GPU or a fake device there, or
    /// a device the kubelet names by that address (AMD's plugin).
    fn device_at(&self, pci_address: &str) -> Option<String> {
        self.identity.key_at_pci(pci_address).or_else(|| {
            self.inventory()
                .into_iter()
                .find(|d| d.parent.is_none() && d.pci_address.as_deref() == Some(pci_address))
                .map(|d| d.id)
        })
    }

    fn handle_nvml(&mut self, event: NvmlEvent, now: Time) {
        match event {
            NvmlEvent::Inventory { driver_version, gpus } => {
                let migs: usize = gpus.iter().map(|g| g.migs.len()).sum();
                let message = if migs == 0 {
                    format!("{} GPU(s)", gpus.len())
                } else {
                    format!("{} GPU(s), {migs} MIG device(s)", gpus.len())
                };
                self.identity.set_gpus(gpus.iter().map(crate::nvml::GpuIdentity::physical).collect());
                let devices: Vec<InventoryDevice> = gpus.iter().map(crate::sources::gpu_device).collect();
                for gpu in &devices {
                    self.tracker.set_watch(&gpu.id, HealthSource::Nvml, true, now);
                    self.kubelet.note(&gpu.resource, &gpu.id);
                }
                self.nvml_devices = devices;
                self.set_source("nvml", true, message, driver_version, now);
            }
            NvmlEvent::Sample { uuid, evidence } => {
                self.tracker.set_watch(&uuid, HealthSource::Nvml, true, now);
                let codes: Vec<Option<u32>> = evidence.iter().map(|e| e.code).collect();
                for e in evidence {
                    self.tracker.observe(&uuid, e, now);
                }
                self.tracker.clear_source_except(&uuid, HealthSource::Nvml, &codes, now);
            }
            NvmlEvent::SampleFailed { uuid, message } => {
                tracing::debug!(gpu = %uuid, %message, "NVML sample failed");
                self.tracker.set_watch(&uuid, HealthSource::Nvml, false, now);
            }
            NvmlEvent::Xid(xid) => {
                // The driver's own report of the Xid the kernel log prints: it joins the
                // kernel-log reason for that Xid, so a node whose /dev/kmsg cannot be read still
                // sees Xids.
                let Some(code) = xid.xid else { return };
                let short = xid.pci_address.rsplit_once('.').map_or(xid.pci_address.as_str(), |(h, _)| h);
                let line = format!("NVRM: Xid (PCI:{short}): {code}, reported through NVML events");
                if let Some(mapped) = self.kernel.line(&line, now) {
                    self.apply_kernel(mapped);
                }
            }
            NvmlEvent::Unavailable { message } => {
                for gpu in &self.nvml_devices {
                    self.tracker.set_watch(&gpu.id, HealthSource::Nvml, false, now);
                }
                self.set_source("nvml", false, message, None, now);
            }
        }
    }

    /// Plugin-side health as the kubelet has it: each device's view, over all the names the
    /// kubelet knows it by (every replica of a GPU), is given to the tracker when it changes (so
    /// a steady state adds nothing to a reason's count). A device is Unhealthy when the kubelet
    /// counts any of its names unhealthy, Healthy when it offers any of them, and the plugin is
    /// blind to it otherwise.
    fn apply_kubelet(&mut self, now: Time) {
        if !self.kubelet.listed() {
            return;
        }
        // NVML's UUID of a GPU the kubelet lists under other names (replicas, a DRA id) is not
        // a device of the plugin's.
        let covered: Vec<(String, String)> = self
            .nvml_devices
            .iter()
            .filter(|g| {
                self.kubelet
                    .allocatable()
                    .any(|(resource, id)| id != g.id && self.identity.resolve(resource, id).key == g.id)
            })
            .map(|g| (g.resource.clone(), g.id.clone()))
            .collect();
        for (resource, id) in covered {
            self.kubelet.forget_unlisted(&resource, &id);
        }
        let views = self.kubelet.views();
        let (mut offered, mut unhealthy, mut unknown) = (0, 0, 0);
        for v in &views {
            match &v.view {
                KubeletView::Healthy => offered += 1,
                KubeletView::Unhealthy { .. } => unhealthy += 1,
                KubeletView::Unknown(_) => unknown += 1,
                KubeletView::Gone => {}
            }
        }
        let identity = &self.identity;
        let mut last = BTreeMap::new();
        for view in per_device(views, |v| identity.resolve(&v.resource, &v.id).key) {
            if view.view == KubeletView::Gone {
                view.apply(&mut self.tracker, now);
                continue;
            }
            if self.kubelet_last.get(&view.id) != Some(&view.view) {
                view.apply(&mut self.tracker, now);
            }
            last.insert(view.id, view.view);
        }
        self.kubelet_last = last;
        let mut message = format!(
            "as the kubelet has them: {offered} device(s) offered, {unhealthy} reported Unhealthy by their plugin, {unknown} not offered for a reason not yet known"
        );
        if !self.kubelet.counts_known() {
            message.push_str(" (the Node's device counts are not known)");
        }
        self.set_source("device_plugins", true, message, None, now);
    }

    fn set_source(
        &mut self,
        name: &str,
        available: bool,
        message: String,
        version: Option<String>,
        now: Time,
    ) {
        let since = match self.sources.get(name) {
            Some(old) if old.available == available => old.since.clone(),
            _ => Some(k8s_time(now)),
        };
        self.sources.insert(
            name.to_string(),
            SourceStatus { name: name.to_string(), available, message: Some(message), version, since },
        );
    }

    /// Every device the node has, each once ([`fold_inventory`]): fake devices, NVML's GPUs,
    /// the devices the kubelet names (plugin devices offered or held, DRA devices held by pods),
    /// the GPUs the node's ResourceSlices announce, and devices kept from the last report while
    /// they are not Healthy.
    fn inventory(&self) -> Vec<InventoryDevice> {
        let mut devices = fold_inventory(
            &self.identity,
            self.static_devices.iter().chain(self.nvml_devices.iter()),
            self.kubelet.devices(),
            &self.bindings,
        );
        for (id, d) in &self.kept {
            let healthy = self.tracker.verdict(id).is_none_or(|v| v.health == Health::Healthy);
            if !healthy && !devices.iter().any(|x| x.id == *id) {
                devices.push(d.clone());
            }
        }
        devices
    }

    fn publish(
        &mut self,
        publications: &watch::Sender<Option<Publication>>,
        transitions: &mpsc::Sender<DeviceTransition>,
    ) {
        if !self.ready {
            let heard = self.sources.contains_key("pod_resources");
            if !heard && self.started.elapsed() < WARM_UP {
                return;
            }
            self.ready = true;
        }
        let now = wall_now();
        let inventory = self.inventory();
        // Evidence that waited for a device now known.
        if self.kernel.has_held() {
            for d in &inventory {
                if let Some(pci) = d.pci_address.as_deref() {
                    for (evidence, at) in self.kernel.take_held(pci) {
                        self.tracker.observe(&d.id, evidence, at);
                    }
                }
            }
        }
        let ids: BTreeSet<String> = inventory.iter().map(|d| d.id.clone()).collect();
        if ids != self.inventory_ids {
            self.inventory_ids = ids;
            self.refresh.notify_one();
        }
        let sources: Vec<SourceStatus> = self.sources.values().cloned().collect();
        let mut object: NodeDeviceHealth = node_device_health(SnapshotInput {
            node: &self.node,
            boot_id: self.boot_id.as_deref(),
            now,
            devices: &inventory,
            tracker: &self.tracker,
            bindings: &self.bindings,
            identity: &self.identity,
            sources,
        });
        if let Some(status) = object.status.as_mut() {
            status.workloads = self.progress.workloads();
            within_schema(status);
            for v in keep_within_schema(status) {
                tracing::warn!(field = %v.path, problem = %v.problem,
                    "dropped from the report: the API server would refuse the whole write for it");
            }
        }
        let Some(status) = object.status.as_ref() else { return };

        // Transitions, for Events.
        let mut changed_device = false;
        for d in &status.devices {
            let previous = self.last_health.insert(d.id.clone(), d.health);
            if previous == Some(d.health) || (previous.is_none() && d.health == Health::Healthy) {
                continue;
            }
            changed_device = true;
            let reasons: Vec<String> = d
                .reasons
                .iter()
                .map(|r| match r.code {
                    Some(code) => format!("{} (code {code}): {}", source_word(r.source), r.message),
                    None => format!("{}: {}", source_word(r.source), r.message),
                })
                .collect();
            let transition = DeviceTransition {
                device: d.id.clone(),
                resource: d.resource.clone(),
                from: previous,
                to: d.health,
                reasons: reasons.join("; "),
                pods: d.pods.iter().map(|p| format!("{}/{}", p.namespace, p.name)).collect(),
            };
            if transitions.try_send(transition).is_err() {
                tracing::warn!(device = %d.id, "event queue full: transition not reported as an Event");
            }
        }
        if changed_device {
            // A device changed health: make sure the pods listed with it are current.
            self.refresh.notify_one();
        }

        self.update_gauges(status);
        let significant = significant(status);
        let summary = status.summary.clone().unwrap_or_default();
        let of = |h: Health| -> Vec<String> {
            status.devices.iter().filter(|d| d.health == h).map(|d| d.id.clone()).collect()
        };
        let condition = devices_condition(&summary, &of(Health::Unhealthy), &of(Health::Unknown));
        let publication = Some(Publication { object, condition });
        if self.last_sent.as_ref() == Some(&significant) {
            // Nothing that needs a write now; the heartbeat's write carries the latest counts,
            // sightings and progress (the value is replaced without waking the publisher).
            publications.send_if_modified(|latest| {
                if latest.is_some() {
                    *latest = publication;
                }
                false
            });
            return;
        }
        self.last_sent = Some(significant);
        publications.send_replace(publication);
    }

    fn update_gauges(&self, status: &NodeDeviceHealthStatus) {
        let summary = status.summary.clone().unwrap_or_default();
        for (health, n) in [
            ("Healthy", summary.healthy),
            ("Degraded", summary.degraded),
            ("Unhealthy", summary.unhealthy),
            ("Unknown", summary.unknown),
        ] {
            self.metrics.devices.get_or_create(&HealthLabel { health: health.into() }).set(i64::from(n));
        }
        self.metrics.device_health.clear();
        let mut series = 0;
        for d in &status.devices {
            let value = match d.health {
                Health::Healthy => 0,
                Health::Degraded => 1,
                Health::Unhealthy => 2,
                Health::Unknown => 3,
            };
            let device = |namespace: &str, pod: &str, container: &str| DeviceLabels {
                UUID: d.id.clone(),
                resource: d.resource.clone(),
                pci_bus_id: d.pci_address.clone().unwrap_or_default(),
                namespace: namespace.to_string(),
                pod: pod.to_string(),
                container: container.to_string(),
            };
            let labels: Vec<DeviceLabels> = if d.pods.is_empty() {
                vec![device("", "", "")]
            } else {
                d.pods
                    .iter()
                    .map(|p| device(&p.namespace, &p.name, p.container.as_deref().unwrap_or("")))
                    .collect()
            };
            for l in labels {
                if series >= MAX_DEVICE_SERIES {
                    break;
                }
                self.metrics.device_health.get_or_create(&l).set(value);
                series += 1;
            }
        }
        for s in &status.sources {
            self.metrics
                .source_available
                .get_or_create(&SourceLabel { source: s.name.clone() })
                .set(i64::from(s.available));
        }
    }
}

fn source_word(source: HealthSource) -> &'static str {
    match source {
        HealthSource::KernelLog => "kernel log",
        HealthSource::Nvml => "NVML",
        HealthSource::DevicePlugin => "device plugin",
        HealthSource::PodStatus => "pod status",
        HealthSource::Progress => "progress",
        HealthSource::Operator => "agent",
    }
}

/// The status without what changes on every write (heartbeat, a reason's count and last
/// sighting) or rides the heartbeat (a workload's last progress, step numbers and counts,
/// announced pause, and the wording of its error): a new window, a hang or a baseline shift
/// appearing or clearing, an error appearing or clearing, a pod coming or going are changes.
fn significant(status: &NodeDeviceHealthStatus) -> NodeDeviceHealthStatus {
    let mut s = status.clone();
    s.last_heartbeat = None;
    for d in &mut s.devices {
        for r in &mut d.reasons {
            r.count = 1;
            r.last_seen = r.first_seen.clone();
        }
    }
    for w in &mut s.workloads {
        w.last_progress = None;
        w.step = None;
        w.steps = 0;
        w.paused_until = None;
        if let Some(error) = w.error.as_mut() {
            error.clear();
        }
    }
    s
}

/// The agent's last published status, read once at start: three tries with the publisher's
/// jittered delays between them (1–2 s, then 2–4 s: a fleet of agents restarted together does
/// not read in step), then none (the sources decide alone, as on a first start; said in the log).
async fn read_last_report<P: Publisher>(publisher: &mut P, node: &str) -> Option<NodeDeviceHealthStatus> {
    let mut delays = crate::publish::retry_delays();
    for attempt in 1..=3 {
        match publisher.last_published(node).await {
            Ok(status) => return status,
            Err(e) if attempt < 3 => {
                let delay = delays.next().unwrap_or(std::time::Duration::from_secs(1));
                tracing::warn!(error = %e, attempt, retry_in = ?delay, "cannot read the last report yet; retrying");
                tokio::time::sleep(delay).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the last report: devices start from what the sources say");
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_is_cut_to_the_crd_bounds() {
        use devheal_k8s::crd::{BoundPod, DeviceStatus, HealthReasonStatus};
        let reason = HealthReasonStatus {
            source: HealthSource::KernelLog,
            code: Some(79),
            message: "é".repeat(2000),
            first_seen: k8s_time(Time::from_secs(1)),
            last_seen: k8s_time(Time::from_secs(1)),
            count: 1,
        };
        let pod = BoundPod { namespace: "ml".into(), name: "p".into(), uid: None, container: None };
        let device = DeviceStatus {
            id: "d".into(),
            resource: "r".into(),
            reasons: vec![reason; 40],
            pods: vec![pod; 70],
            ..DeviceStatus::default()
        };
        let mut status = NodeDeviceHealthStatus {
            devices: vec![device; 300],
            sources: vec![
                SourceStatus {
                    name: "s".into(),
                    message: Some("x".repeat(5000)),
                    ..SourceStatus::default()
                };
                70
            ],
            ..NodeDeviceHealthStatus::default()
        };
        within_schema(&mut status);
        assert_eq!((status.devices.len(), status.sources.len()), (256, 64));
        assert_eq!((status.devices[0].reasons.len(), status.devices[0].pods.len()), (32, 64));
        assert_eq!(status.devices[0].reasons[0].message.chars().count(), 1024);
        assert!(status.devices[0].reasons[0].message.ends_with("..."));
        assert_eq!(status.sources[0].message.as_deref().map(|m| m.chars().count()), Some(1024));
    }

    #[test]
    fn significance_ignores_heartbeat_counts_and_last_sightings() {
        use devheal_k8s::crd::{DeviceStatus, HealthReasonStatus};
        let reason = |count: u64, last: i64| HealthReasonStatus {
            source: HealthSource::KernelLog,
            code: Some(79),
            message: "m".into(),
            first_seen: k8s_time(Time::from_secs(1)),
            last_seen: k8s_time(Time::from_secs(last)),
            count,
        };
        let status = |count, last, heartbeat| NodeDeviceHealthStatus {
            last_heartbeat: Some(k8s_time(Time::from_secs(heartbeat))),
            devices: vec![DeviceStatus {
                id: "d".into(),
                resource: "r".into(),
                health: Health::Unhealthy,
                reasons: vec![reason(count, last)],
                ..DeviceStatus::default()
            }],
            ..NodeDeviceHealthStatus::default()
        };
        assert_eq!(significant(&status(1, 1, 5)), significant(&status(40, 9, 6)));
        let mut healthy = status(1, 1, 5);
        healthy.devices[0].health = Health::Healthy;
        assert_ne!(significant(&status(1, 1, 5)), significant(&healthy));
    }

    #[test]
    fn workload_progress_is_significant_for_windows_hangs_shifts_and_errors_only() {
        use devheal_k8s::crd::{ProgressFinding, ProgressWindow, WorkloadProgress};
        let workload = |last: i64, steps: u64, error: Option<&str>| WorkloadProgress {
            namespace: "ml".into(),
            name: "trainer-3".into(),
            last_progress: Some(k8s_time(Time::from_secs(last))),
            step: Some(steps),
            steps,
            window_seconds: 60,
            error: error.map(str::to_string),
            ..WorkloadProgress::default()
        };
        let status =
            |w: WorkloadProgress| NodeDeviceHealthStatus { workloads: vec![w], ..Default::default() };
        let base = significant(&status(workload(10, 5, None)));
        assert_eq!(base, significant(&status(workload(70, 900, None))), "progress rides the heartbeat");
        assert_eq!(
            significant(&status(workload(10, 5, Some("connection refused")))),
            significant(&status(workload(10, 5, Some("HTTP 500")))),
            "the error's wording is not a change"
        );
        assert_ne!(base, significant(&status(workload(10, 5, Some("HTTP 500")))), "an error appearing is");
        let mut windowed = workload(10, 5, None);
        windowed.windows.push(ProgressWindow {
            start: k8s_time(Time::from_secs(0)),
            samples: 6,
            step_seconds: 1.0,
        });
        assert_ne!(base, significant(&status(windowed)), "a new window is");
        let mut hung = workload(10, 5, None);
        hung.hang = Some(ProgressFinding {
            since: k8s_time(Time::from_secs(10)),
            detected_at: k8s_time(Time::from_secs(101)),
            magnitude: 1.0,
            message: "no progress".into(),
        });
        assert_ne!(base, significant(&status(hung.clone())), "a hang is");
        let mut shifted = workload(10, 5, None);
        shifted.baseline_shift = hung.hang.clone();
        assert_ne!(base, significant(&status(shifted)), "a baseline shift is");

        let mut long = workload(10, 5, Some(&"e".repeat(3000)));
        long.windows =
            vec![ProgressWindow { start: k8s_time(Time::from_secs(0)), samples: 1, step_seconds: 1.0 }; 12];
        let mut cut = NodeDeviceHealthStatus { workloads: vec![long; 300], ..Default::default() };
        within_schema(&mut cut);
        assert_eq!((cut.workloads.len(), cut.workloads[0].windows.len()), (256, 10));
        assert_eq!(cut.workloads[0].error.as_deref().map(|e| e.chars().count()), Some(1024));
    }
}
