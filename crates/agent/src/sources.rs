//! The agent's sources as tasks and threads, and what they tell the event loop
//! ([`SourceEvent`]): PodResources (bindings and the devices the kubelet offers), the Node's
//! device counts, and GPU telemetry (NVML or scripted GPUs). The kernel log, fake devices,
//! progress reports and the scraper live in their own modules; the loop is in [`crate::run`].

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration as StdDuration;

use devheal_k8s::crd::DeviceVendor;
use devheal_kubelet::podresources::{AllocatableDevice, DeviceBinding, PodResourcesClient};
use tokio::sync::{Notify, mpsc, watch};

use crate::fake::FakeSignal;
use crate::health::Evidence;
use crate::http::ProgressRequest;
use crate::identity::{SliceDevice, SliceRead, slice_devices};
use crate::kernel::KernelEvent;
use crate::kubelet_devices::{NodeCounts, node_counts};
use crate::metrics::AgentMetrics;
use crate::nvml::{FakeGpuTelemetry, GpuIdentity, GpuTelemetry, NvmlTelemetry, XidEvent};
use crate::nvml_evidence::evidence_from_sample;
use crate::nvml_trends::{NvmlTrends, TrendConfig};
use crate::once::NVIDIA_GPU_RESOURCE;
use crate::scrape::ScrapeEvent;
use crate::snapshot::InventoryDevice;

/// An NVML GPU as an inventory device (tracked under its UUID).
pub(crate) fn gpu_device(g: &GpuIdentity) -> InventoryDevice {
    InventoryDevice {
        id: g.uuid.clone(),
        resource: NVIDIA_GPU_RESOURCE.into(),
        vendor: DeviceVendor::Nvidia,
        model: Some(g.name.clone()),
        pci_address: Some(g.pci_address.clone()),
        ..InventoryDevice::default()
    }
}

/// Where GPU telemetry comes from.
#[derive(Clone, Debug)]
pub enum GpuSource {
    /// NVML, loaded at run time (retried while the driver is absent).
    Nvml,
    /// Scripted GPUs (tests, demos).
    Fake(FakeGpuTelemetry),
    /// No GPU telemetry.
    Off,
}

/// Everything the sources tell the loop.
#[derive(Debug)]
pub(crate) enum SourceEvent {
    Kernel(KernelEvent),
    Fake(FakeSignal),
    Nvml(NvmlEvent),
    Amd(crate::library::LibraryEvent),
    Gaudi(crate::library::LibraryEvent),
    PodResources(PodResourcesEvent),
    /// The Node's device counts changed (`None`: not known).
    NodeCounts(Option<NodeCounts>),
    /// The devices this node's ResourceSlices announce (`Err`: why they cannot be read).
    Slices(Result<Vec<SliceDevice>, String>),
    /// The device plugin (or DRA driver) pods on this node ([`crate::stack`]).
    StackPods(Vec<crate::stack::StackPod>),
    Progress(ProgressRequest),
    Scrape(ScrapeEvent),
    /// The controller's reset requests of this node (`spec.resetRequests`), the whole list.
    ResetRequests(Vec<devheal_k8s::crd::DeviceResetRequest>),
    /// A reset or check the worker finished ([`crate::reset`]).
    ResetDone(crate::reset::Done),
}

#[derive(Debug)]
pub(crate) enum NvmlEvent {
    Inventory { driver_version: Option<String>, gpus: Vec<GpuIdentity> },
    Sample { uuid: String, evidence: Vec<Evidence> },
    SampleFailed { uuid: String, message: String },
    Xid(XidEvent),
    Unavailable { message: String },
}

#[derive(Debug)]
pub(crate) enum PodResourcesEvent {
    /// The pods' device bindings, and in the same turn the devices the kubelet offers (or why
    /// they could not be read), so that no status is published between the two.
    Listed {
        bindings: Vec<DeviceBinding>,
        allocatable: Result<Vec<AllocatableDevice>, String>,
    },
    Unavailable(String),
}

/// Where and how often PodResources is read.
#[derive(Clone, Debug)]
pub(crate) struct PodResourcesSettings {
    pub socket: PathBuf,
    pub timeout: StdDuration,
    pub interval: StdDuration,
    pub min_interval: StdDuration,
}

/// Reads PodResources on every `refresh` and at least every `interval`: the pods' device
/// bindings (`List`), then the devices the kubelet offers (`GetAllocatableResources`: only those
/// it counts healthy, see [`crate::kubelet_devices`]).
pub(crate) async fn pod_resources_task(
    settings: PodResourcesSettings,
    refresh: Arc<Notify>,
    events: mpsc::Sender<SourceEvent>,
    metrics: Arc<AgentMetrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let PodResourcesSettings { socket, timeout, interval, min_interval } = settings;
    let mut client = PodResourcesClient::new(&socket, min_interval);
    loop {
        let event = if !socket.exists() {
            PodResourcesEvent::Unavailable(format!(
                "{} does not exist (no kubelet on this node?)",
                socket.display()
            ))
        } else {
            metrics.pod_resources_calls.inc();
            match tokio::time::timeout(timeout, client.list()).await {
                Ok(Ok(bindings)) => {
                    metrics.pod_resources_calls.inc();
                    let allocatable = match tokio::time::timeout(timeout, client.allocatable()).await {
                        Ok(Ok(devices)) => Ok(devices),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err(format!("no answer within {timeout:?}")),
                    };
                    PodResourcesEvent::Listed { bindings, allocatable }
                }
                Ok(Err(e)) => PodResourcesEvent::Unavailable(e.to_string()),
                Err(_) => PodResourcesEvent::Unavailable(format!("no answer within {timeout:?}")),
            }
        };
        if events.send(SourceEvent::PodResources(event)).await.is_err() {
            return;
        }
        tokio::select! {
            _ = refresh.notified() => {}
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Reads `node`'s status every `every` and keeps `counts` at its extended resources' capacity
/// and allocatable ([`node_counts`]); a read that fails keeps the last counts (logged). Needs
/// `get` on its own Node. Runs until `counts` has no receiver.
pub async fn poll_node_counts(
    client: kube::Client,
    node: String,
    every: StdDuration,
    timeout: StdDuration,
    counts: watch::Sender<Option<NodeCounts>>,
) {
    let api: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client);
    loop {
        match tokio::time::timeout(timeout, api.get(&node)).await {
            Ok(Ok(object)) => {
                let now = Some(node_counts(&object));
                counts.send_if_modified(|old| {
                    let changed = *old != now;
                    if changed {
                        old.clone_from(&now);
                    }
                    changed
                });
            }
            Ok(Err(e)) => tracing::warn!(%node, error = %e, "cannot read the Node's device counts"),
            Err(_) => tracing::warn!(%node, ?timeout, "no answer reading the Node's device counts"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = counts.closed() => return,
        }
    }
}

/// Watches this node's NodeDeviceHealth (field selector `metadata.name`) and keeps `requests` at
/// its `spec.resetRequests`, the resets the controller asks of this agent ([`crate::reset`]).
/// The object not existing yet is no request. Needs `watch` on `nodedevicehealths`. Runs until
/// `requests` has no receiver.
pub async fn watch_reset_requests(
    client: kube::Client,
    node: String,
    requests: watch::Sender<Vec<devheal_k8s::crd::DeviceResetRequest>>,
) {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    let api: kube::Api<devheal_k8s::crd::NodeDeviceHealth> = kube::Api::all(client);
    let config = watcher::Config::default().fields(&format!("metadata.name={node}"));
    let mut stream = watcher::watcher(api, config).default_backoff().applied_objects().boxed();
    loop {
        tokio::select! {
            next = stream.next() => match next {
                Some(Ok(object)) if object.metadata.name.as_deref() == Some(node.as_str()) => {
                    let now = object.spec.reset_requests;
                    requests.send_if_modified(|old| {
                        let changed = *old != now;
                        if changed {
                            old.clone_from(&now);
                        }
                        changed
                    });
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => tracing::warn!(%node, error = %e, "watching this node's reset requests"),
                None => return,
            },
            _ = requests.closed() => return,
        }
    }
}

/// `resource.k8s.io` versions that serve ResourceSlice, newest first (v1 from 1.34).
const RESOURCE_SLICE_VERSIONS: [&str; 3] = ["v1", "v1beta2", "v1beta1"];

/// Reads the ResourceSlices of `node` (field selector `spec.nodeName`) every `every` and keeps
/// `slices` at their devices ([`slice_devices`]): which DRA device is which GPU (the NVIDIA DRA
/// driver announces each with its `uuid`). The first version the server serves is kept; a read
/// that fails keeps the last devices and says why. Needs `list` on `resourceslices`. Runs until
/// `slices` has no receiver.
pub async fn poll_resource_slices(
    client: kube::Client,
    node: String,
    every: StdDuration,
    timeout: StdDuration,
    slices: watch::Sender<SliceRead>,
) {
    use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
    let params = ListParams::default().fields(&format!("spec.nodeName={node}"));
    let mut versions = RESOURCE_SLICE_VERSIONS.iter().cycle().take(RESOURCE_SLICE_VERSIONS.len());
    let mut version = versions.next().copied().unwrap_or("v1");
    loop {
        let gvk = GroupVersionKind::gvk("resource.k8s.io", version, "ResourceSlice");
        let api: Api<DynamicObject> =
            Api::all_with(client.clone(), &ApiResource::from_gvk_with_plural(&gvk, "resourceslices"));
        let read = match tokio::time::timeout(timeout, api.list(&params)).await {
            Ok(Ok(list)) => Ok(list
                .items
                .iter()
                .filter_map(|o| serde_json::to_value(o).ok())
                .flat_map(|v| slice_devices(&v))
                .collect::<Vec<_>>()),
            Ok(Err(kube::Error::Api(status))) if status.is_not_found() => match versions.next() {
                Some(next) => {
                    version = next;
                    continue;
                }
                None => Err("ResourceSlice is not served (no DRA on this cluster)".to_string()),
            },
            Ok(Err(e)) => Err(format!("cannot list this node's ResourceSlices: {e}")),
            Err(_) => Err(format!("no answer listing this node's ResourceSlices within {timeout:?}")),
        };
        if let Err(e) = &read {
            tracing::debug!(%node, error = %e, "ResourceSlices not read");
        }
        let now = Some(read);
        slices.send_if_modified(|old| {
            let changed = *old != now;
            if changed {
                old.clone_from(&now);
            }
            changed
        });
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = slices.closed() => return,
        }
    }
}

/// How long the NVML thread waits before trying to load the library again.
const NVML_RETRY: StdDuration = StdDuration::from_secs(30);

pub(crate) fn spawn_gpu_telemetry(
    source: GpuSource,
    library: Option<PathBuf>,
    interval: StdDuration,
    events: mpsc::Sender<SourceEvent>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("gpu-telemetry".into()).spawn(move || {
        let send = |e: NvmlEvent| events.blocking_send(SourceEvent::Nvml(e)).is_ok();
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let ended = match &source {
                GpuSource::Off => return,
                GpuSource::Fake(fake) => {
                    let (_keep, xids) = std::sync::mpsc::channel();
                    follow_gpus(fake, &xids, interval, &send, &stop)
                }
                GpuSource::Nvml => match NvmlTelemetry::open_at(library.as_deref().map(|p| p.as_os_str())) {
                    Ok(nvml) => {
                        let (xid_tx, xids) = std::sync::mpsc::channel();
                        let watcher = nvml.spawn_xid_watcher(xid_tx, Arc::clone(&stop), 500);
                        if let Err(e) = &watcher {
                            tracing::warn!(error = %e, "NVML Xid events unavailable; the kernel log still has them");
                        }
                        follow_gpus(&nvml, &xids, interval, &send, &stop)
                    }
                    Err(e) => Some(e.to_string()),
                },
            };
            match ended {
                Some(message) => {
                    if !send(NvmlEvent::Unavailable { message }) {
                        return;
                    }
                }
                None => return,
            }
            if !crate::library::sleep_unless_stopped(NVML_RETRY, &stop) {
                return;
            }
        }
    })
}

/// Inventory, then a sample of every GPU each `interval`, forwarding Xid events as they come.
/// Returns why it stopped following (`None`: told to stop).
fn follow_gpus(
    telemetry: &dyn GpuTelemetry,
    xids: &std::sync::mpsc::Receiver<XidEvent>,
    interval: StdDuration,
    send: &dyn Fn(NvmlEvent) -> bool,
    stop: &AtomicBool,
) -> Option<String> {
    let driver_version = telemetry.driver().ok().map(|d| d.driver_version);
    let gpus = match telemetry.gpus() {
        Ok(gpus) => gpus,
        Err(e) => return Some(e.to_string()),
    };
    if !send(NvmlEvent::Inventory { driver_version, gpus: gpus.clone() }) {
        return None;
    }
    // Rates and trends need the samples before this one.
    let mut trends = NvmlTrends::new(TrendConfig::default());
    loop {
        for gpu in &gpus {
            let event = match telemetry.sample(gpu.index) {
                Ok(sample) => {
                    let mut evidence = evidence_from_sample(&sample);
                    evidence.extend(trends.observe(&sample));
                    NvmlEvent::Sample { uuid: gpu.uuid.clone(), evidence }
                }
                Err(e) => NvmlEvent::SampleFailed { uuid: gpu.uuid.clone(), message: e.to_string() },
            };
            if !send(event) {
                return None;
            }
        }
        let until = std::time::Instant::now() + interval;
        loop {
            if stop.load(Ordering::Relaxed) {
                return None;
            }
            let left = until.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            match xids.recv_timeout(left.min(StdDuration::from_secs(1))) {
                Ok(xid) => {
                    if !send(NvmlEvent::Xid(xid)) {
                        return None;
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                // The Xid thread ended (an NVML error): keep sampling; the kernel log has Xids.
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(left.min(StdDuration::from_secs(1)))
                }
            }
        }
    }
}
