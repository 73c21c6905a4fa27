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
//!
//! This file starts the sources and runs the loop; `run/handle.rs` applies each event and
//! `run/report.rs` builds and publishes the report.

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
use crate::library::LibraryEvent;
use crate::metrics::{AgentMetrics, DeviceLabels, HealthLabel, MAX_DEVICE_SERIES, SourceLabel, StateLabel};
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

mod accelerators;
mod handle;
mod links;
mod report;
mod resets;

use report::read_last_report;

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
    /// AMD GPUs' ECC counts: amdsmi, loaded at run time ([`crate::amd`]).
    pub amd: crate::amd::AmdSource,
    /// Intel Gaudi devices' serial numbers and health: hlml, loaded at run time
    /// ([`crate::gaudi`]).
    pub gaudi: crate::gaudi::GaudiSource,
    /// How often the DRM cards and accel devices are read from sysfs ([`crate::accel`]).
    pub accelerator_interval: StdDuration,
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
    /// When a NIC link change is a flap and when a network fault ([`devheal_detect::LinkConfig`]).
    pub links: devheal_detect::LinkConfig,
    /// How often the NICs and their link state are read from sysfs.
    pub nic_interval: StdDuration,
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
    /// The device plugin (or DRA driver) pods on this node, from the pod watch
    /// ([`crate::scrape::NodePodSinks::stack`]), reported as the `device_plugin_pod` source with
    /// their version; `None` without an API server.
    pub stack_pods: Option<watch::Receiver<Vec<crate::stack::StackPod>>>,
    /// What the agent does with the controller's reset requests (`--device-reset`), its own
    /// bounds on them, and the command that resets an NVIDIA GPU ([`crate::reset`]).
    pub reset_mode: crate::reset::ResetMode,
    pub reset_limits: crate::reset::ResetLimits,
    pub reset_command: Vec<String>,
    /// The functional check a reset device must pass (`devheal gpu-check --pci {pci}`, from the
    /// agent's own binary); `None`: none (the check cannot run, see [`crate::reset::CheckMode`]).
    pub reset_check_command: Option<Vec<String>>,
    /// The controller's reset requests of this node (`spec.resetRequests`, from
    /// [`crate::sources::watch_reset_requests`]); `None` without an API server.
    pub reset_requests: Option<watch::Receiver<Vec<devheal_k8s::crd::DeviceResetRequest>>>,
}

impl AgentConfig {
    pub fn new(node: &str) -> Self {
        AgentConfig {
            node: node.to_string(),
            paths: SourcePaths::default(),
            gpus: GpuSource::Nvml,
            amd: crate::amd::AmdSource::AmdSmi,
            gaudi: crate::gaudi::GaudiSource::Hlml,
            accelerator_interval: StdDuration::from_secs(30),
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
            links: devheal_detect::LinkConfig::default(),
            nic_interval: StdDuration::from_secs(10),
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
            stack_pods: None,
            reset_mode: crate::reset::ResetMode::Off,
            reset_limits: crate::reset::ResetLimits::default(),
            reset_command: crate::reset::default_reset_command(),
            reset_check_command: None,
            reset_requests: None,
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

    // AMD GPUs through amdsmi, Intel Gaudi through hlml: each library on its own thread.
    let libraries = [
        ("amdsmi", config.amd.opener(config.paths.amdsmi_library.clone()), SourceEvent::Amd as fn(_) -> _),
        ("hlml", config.gaudi.opener(config.paths.hlml_library.clone()), SourceEvent::Gaudi),
    ];
    for (what, open, wrap) in libraries {
        let Some(open) = open else { continue };
        let (tx, rx) = mpsc::channel::<LibraryEvent>(256);
        crate::library::spawn_library_thread(what, open, config.nvml_interval, tx, Arc::clone(&stop_threads))
            .map_err(|source| AgentError::Thread { what, source })?;
        tasks.push(tokio::spawn(forward(rx, events_tx.clone(), wrap, shutdown.clone())));
    }

    // The Node's device counts, its ResourceSlices and its device-stack pods, as they change.
    if let Some(counts) = config.node_counts.clone() {
        tasks.push(tokio::spawn(forward_changes(counts, events_tx.clone(), shutdown.clone(), |now| {
            Some(SourceEvent::NodeCounts(now))
        })));
    }
    if let Some(slices) = config.resource_slices.clone() {
        tasks.push(tokio::spawn(forward_changes(slices, events_tx.clone(), shutdown.clone(), |now| {
            now.map(SourceEvent::Slices)
        })));
    }
    if let Some(pods) = config.stack_pods.clone() {
        tasks.push(tokio::spawn(forward_changes(pods, events_tx.clone(), shutdown.clone(), |now| {
            Some(SourceEvent::StackPods(now))
        })));
    }
    if let Some(requests) = config.reset_requests.clone() {
        tasks.push(tokio::spawn(forward_changes(requests, events_tx.clone(), shutdown.clone(), |now| {
            Some(SourceEvent::ResetRequests(now))
        })));
    }
    // Device resets: the fake devices are their own backend; real GPUs go through NVML.
    let reset_backend: Arc<dyn crate::reset::ResetBackend> = match &fake {
        Some(control) => Arc::new(control.clone()),
        None => Arc::new(crate::reset::NvidiaReset {
            command: config.reset_command.clone(),
            check_command: config.reset_check_command.clone(),
            nvml_library: config.paths.nvml_library.clone(),
            timeout: config.reset_limits.timeout,
        }),
    };
    let checks = config.tracker.check_after_probation;
    let reset_jobs = if config.reset_mode == crate::reset::ResetMode::On || checks {
        let (done_tx, done_rx) = mpsc::channel(crate::reset::MAX_RESETS);
        let jobs =
            crate::reset::spawn_worker(Arc::clone(&reset_backend), config.reset_limits.clone(), done_tx)
                .map_err(|source| AgentError::Thread { what: "device reset", source })?;
        tasks.push(tokio::spawn(forward(
            done_rx,
            events_tx.clone(),
            SourceEvent::ResetDone,
            shutdown.clone(),
        )));
        Some(jobs)
    } else {
        None
    };

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
    let resets = resets::Resets {
        book: crate::reset::ResetBook::restored(last.as_ref().map_or(&[][..], |s| &s.resets)),
        mode: config.reset_mode,
        limits: config.reset_limits.clone(),
        backend: reset_backend,
        jobs: reset_jobs,
        pending: Vec::new(),
    };
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
    let mut state = LoopState {
        node: config.node.clone(),
        boot_id: boot_id.clone(),
        tracker,
        kept,
        kernel: KernelPipeline::new(&config.node, boot_id, boot_time).with_catalog(config.catalog.clone()),
        static_devices,
        nvml_devices: Vec::new(),
        library_devices: BTreeMap::new(),
        accelerators: crate::accel::AcceleratorInventory::default(),
        drm_class_dir: config.paths.drm_class_dir.clone(),
        accel_class_dir: config.paths.accel_class_dir.clone(),
        kfd_topology_dir: config.paths.kfd_topology_dir.clone(),
        accelerator_interval: config.accelerator_interval,
        accelerators_read: None,
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
        pci_devices_dir: config.paths.pci_devices_dir.clone(),
        topology_for: BTreeSet::new(),
        sys_class_dir: config.paths.sys_class_dir.clone(),
        nics: crate::nic::NicInventory::default(),
        links: devheal_detect::LinkTracker::new(config.links.clone()),
        nic_interval: config.nic_interval,
        nics_read: None,
        ready: false,
        started: tokio::time::Instant::now(),
        progress,
        bound: BTreeSet::new(),
        bound_tx,
        resets,
    };
    // The NICs before the kernel log's replay reaches the loop, so that its lines find them
    // (and lines older than the state sysfs reads now are stale).
    state.refresh_nics(wall_now());
    // The accelerators too: a Gaudi line names its device hl0, an Intel plugin card1-0.
    state.refresh_accelerators(wall_now());
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
/// Sends the event `to_event` makes of `rx`'s value now and at each change, until the loop or
/// `rx`'s sender is gone or the agent stops.
async fn forward_changes<T: Clone>(
    mut rx: watch::Receiver<T>,
    events: mpsc::Sender<SourceEvent>,
    mut shutdown: watch::Receiver<bool>,
    to_event: impl Fn(T) -> Option<SourceEvent>,
) {
    loop {
        let now = rx.borrow_and_update().clone();
        if let Some(event) = to_event(now)
            && events.send(event).await.is_err()
        {
            return;
        }
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            _ = stopped(&mut shutdown) => return,
        }
    }
}

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
    /// The vendor libraries' devices (amdsmi's AMD GPUs, hlml's Gaudi devices).
    library_devices: BTreeMap<crate::vendor::Library, Vec<InventoryDevice>>,
    /// The DRM cards and accel devices last read from sysfs, where, how often and when
    /// ([`accelerators`]).
    accelerators: crate::accel::AcceleratorInventory,
    drm_class_dir: std::path::PathBuf,
    accel_class_dir: std::path::PathBuf,
    kfd_topology_dir: std::path::PathBuf,
    accelerator_interval: StdDuration,
    accelerators_read: Option<tokio::time::Instant>,
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
    /// sysfs' PCI devices, and the physical devices' addresses the kernel pipeline's topology
    /// was last read for ([`crate::pci_topology`]).
    pci_devices_dir: std::path::PathBuf,
    topology_for: BTreeSet<String>,
    /// sysfs' device classes, the NICs last read there, their links, how often they are read
    /// and when they were last ([`links`]).
    sys_class_dir: std::path::PathBuf,
    nics: crate::nic::NicInventory,
    links: devheal_detect::LinkTracker,
    nic_interval: StdDuration,
    nics_read: Option<tokio::time::Instant>,
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
    /// The controller's reset requests and the agent's answers ([`resets`]).
    resets: resets::Resets,
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
                state.start_due_checks();
                state.progress.tick(now);
                state.tick_links(now);
                state.refresh_accelerators(now);
                state.metrics.mark_loop_alive(now.as_nanos() / 1_000_000_000);
            }
            _ = shutdown.changed() => break,
        }
        state.send_reset_steps(&transitions);
        state.publish(&publications, &transitions);
    }
}
