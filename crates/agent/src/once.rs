//! One pass over every source, for `devheal agent --once`: read what the node knows now and build
//! the `NodeDeviceHealth` the agent would publish.
//!
//! Each source that cannot be read (no NVIDIA driver, no amdsmi, no kubelet socket, no device-plugin
//! directory, no permission on `/dev/kmsg`) is reported in `status.sources` as unavailable with
//! the reason, and the pass goes on: a node without a GPU or a kubelet still gets an answer.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration as StdDuration;

use devheal_core::{HealthSource, Time};
use devheal_detect::{Catalog, KmsgEvent, KmsgReader, StartAt};
use devheal_k8s::crd::{NodeDeviceHealth, SourceStatus};
use devheal_kubelet::podresources::{DeviceBinding, PodResourcesClient};

use crate::health::{DeviceHealthTracker, TrackerConfig};
use crate::kernel::{KernelPipeline, Mapped};
use crate::nvml::{GpuTelemetry, NvmlTelemetry};
use crate::nvml_evidence::evidence_from_sample;
use crate::snapshot::{InventoryDevice, SnapshotInput, node_device_health};
use crate::vendor::Library;

/// Where the agent finds each source.
#[derive(Clone, Debug)]
pub struct SourcePaths {
    pub kmsg: PathBuf,
    pub pod_resources_socket: PathBuf,
    pub device_plugin_dir: PathBuf,
    /// `libnvidia-ml.so.1` when it is not on the loader's path.
    pub nvml_library: Option<PathBuf>,
    pub boot_id_file: PathBuf,
    /// sysfs' PCI devices (`/sys/bus/pci/devices`): the PCIe paths and NVSwitches
    /// ([`crate::pci_topology`]).
    pub pci_devices_dir: PathBuf,
    /// sysfs' device classes (`/sys/class`): the node's NICs, `net/` and `infiniband/`
    /// ([`crate::nic`]).
    pub sys_class_dir: PathBuf,
    /// sysfs' DRM cards (`/sys/class/drm`) and accel devices (`/sys/class/accel`): AMD and
    /// Intel accelerators by PCI address ([`crate::accel`]).
    pub drm_class_dir: PathBuf,
    pub accel_class_dir: PathBuf,
    /// KFD's topology nodes (`/sys/class/kfd/kfd/topology/nodes`): which AMD GPU each MI300
    /// partition is a slice of.
    pub kfd_topology_dir: PathBuf,
    /// `libamd_smi.so` when it is not on the loader's path ([`crate::amd`]).
    pub amdsmi_library: Option<PathBuf>,
    /// `libhlml.so` (Intel Gaudi) when it is not on the loader's path ([`crate::gaudi`]).
    pub hlml_library: Option<PathBuf>,
}

impl Default for SourcePaths {
    fn default() -> Self {
        SourcePaths {
            kmsg: "/dev/kmsg".into(),
            pod_resources_socket: devheal_kubelet::api::DEFAULT_POD_RESOURCES_SOCKET.into(),
            device_plugin_dir: devheal_kubelet::api::DEFAULT_DEVICE_PLUGIN_DIR.into(),
            nvml_library: None,
            boot_id_file: "/proc/sys/kernel/random/boot_id".into(),
            pci_devices_dir: "/sys/bus/pci/devices".into(),
            sys_class_dir: "/sys/class".into(),
            drm_class_dir: "/sys/class/drm".into(),
            accel_class_dir: "/sys/class/accel".into(),
            kfd_topology_dir: "/sys/class/kfd/kfd/topology/nodes".into(),
            amdsmi_library: None,
            hlml_library: None,
        }
    }
}

/// The resource name NVIDIA's device plugin registers.
pub const NVIDIA_GPU_RESOURCE: &str = "nvidia.com/gpu";

fn source(name: &str, available: bool, message: String, version: Option<String>) -> SourceStatus {
    SourceStatus { name: name.to_string(), available, message: Some(message), version, since: None }
}

/// Read every source once and build the object; kernel records are classified with `catalog`
/// (the built-in one, or the agent's `--catalog`), whose version the kernel-log source reports.
pub async fn collect_once(
    node: &str,
    paths: &SourcePaths,
    catalog: &Catalog,
    timeout: StdDuration,
    now: Time,
) -> NodeDeviceHealth {
    let boot_id = std::fs::read_to_string(&paths.boot_id_file)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    let mut tracker = DeviceHealthTracker::new(TrackerConfig::default(), boot_id.clone());
    let mut inventory: Vec<InventoryDevice> = Vec::new();
    let mut identity = crate::identity::NodeIdentity::default();
    let mut sources: Vec<SourceStatus> = Vec::new();

    // NVML: inventory and device-side conditions.
    match NvmlTelemetry::open_at(paths.nvml_library.as_deref().map(|p| p.as_os_str())) {
        Ok(nvml) => {
            let driver = nvml.driver().ok();
            match nvml.gpus() {
                Ok(gpus) => {
                    identity.set_gpus(gpus.iter().map(crate::nvml::GpuIdentity::physical).collect());
                    for gpu in gpus {
                        tracker.set_watch(&gpu.uuid, HealthSource::Nvml, true, now);
                        if let Ok(sample) = nvml.sample(gpu.index) {
                            for e in evidence_from_sample(&sample) {
                                tracker.observe(&gpu.uuid, e, now);
                            }
                        }
                        inventory.push(crate::sources::gpu_device(&gpu));
                    }
                    sources.push(source(
                        "nvml",
                        true,
                        format!("{} GPU(s)", inventory.len()),
                        driver.map(|d| d.driver_version),
                    ));
                }
                Err(e) => {
                    sources.push(source("nvml", false, e.to_string(), driver.map(|d| d.driver_version)))
                }
            }
        }
        Err(e) => sources.push(source("nvml", false, e.to_string(), None)),
    }

    // AMD and Intel accelerators: their names in sysfs, MI300 partitions' GPUs, and amdsmi.
    let accelerators = crate::accel::read_accelerators(
        &paths.drm_class_dir,
        &paths.accel_class_dir,
        &paths.kfd_topology_dir,
    );
    identity.set_sysfs_names(accelerators.names());
    identity.set_amd_partitions(accelerators.partition_gpus());
    sources.push(source("sysfs_accelerators", accelerators.available, accelerators.message.clone(), None));
    let libraries = [
        (Library::Amd, crate::amd::AmdSource::AmdSmi.opener(paths.amdsmi_library.clone())),
        (Library::Gaudi, crate::gaudi::GaudiSource::Hlml.opener(paths.hlml_library.clone())),
    ];
    for (library, open) in libraries {
        sources.extend(library_once(
            library,
            open,
            &accelerators,
            &mut identity,
            &mut inventory,
            &mut tracker,
            now,
        ));
    }

    // PodResources: who holds which device, and the devices the kubelet offers (those it
    // counts healthy; no plugin's own ListAndWatch is opened, see crate::kubelet_devices).
    let mut bindings: Vec<DeviceBinding> = Vec::new();
    let mut offered: Option<Vec<devheal_kubelet::podresources::AllocatableDevice>> = None;
    let mut allocatable_error = None;
    if paths.pod_resources_socket.exists() {
        let mut client = PodResourcesClient::new(&paths.pod_resources_socket, StdDuration::ZERO);
        match tokio::time::timeout(timeout, client.list()).await {
            Ok(Ok(list)) => {
                match tokio::time::timeout(timeout, client.allocatable()).await {
                    Ok(Ok(allocatable)) => offered = Some(allocatable),
                    Ok(Err(e)) => allocatable_error = Some(e.to_string()),
                    Err(_) => allocatable_error = Some(format!("no answer within {timeout:?}")),
                }
                sources.push(source(
                    "pod_resources",
                    true,
                    format!("{} device binding(s)", list.len()),
                    None,
                ));
                bindings = list;
            }
            Ok(Err(e)) => sources.push(source("pod_resources", false, e.to_string(), None)),
            Err(_) => {
                sources.push(source("pod_resources", false, format!("no answer within {timeout:?}"), None))
            }
        }
    } else {
        sources.push(source(
            "pod_resources",
            false,
            format!("{} does not exist (no kubelet on this node?)", paths.pod_resources_socket.display()),
            None,
        ));
    }

    // Device plugins, as the kubelet has them (crate::kubelet_devices): every device it offers
    // is Healthy by its plugin; one it does not offer (held by a pod, or found by NVML) cannot be
    // told failed from removed without the Node's counts, so it is left to the other sources.
    match offered {
        Some(devices) => {
            let mut kubelet = crate::kubelet_devices::KubeletDevices::default();
            for d in &inventory {
                kubelet.note(&d.resource, &d.id);
            }
            for b in &bindings {
                kubelet.note(&b.resource, &b.device_id);
            }
            kubelet.set_allocatable(&devices);
            // NVML's UUID of a GPU the kubelet lists under other names (its replicas) is not a
            // device of the plugin's.
            for d in &inventory {
                if devices
                    .iter()
                    .any(|a| a.device_id != d.id && identity.resolve(&a.resource, &a.device_id).key == d.id)
                {
                    kubelet.forget_unlisted(&d.resource, &d.id);
                }
            }
            let views = kubelet.views();
            let not_offered =
                views.iter().filter(|v| v.view != crate::kubelet_devices::KubeletView::Healthy).count();
            for v in crate::kubelet_devices::per_device(views, |v| identity.resolve(&v.resource, &v.id).key) {
                v.apply(&mut tracker, now);
            }
            inventory = crate::snapshot::fold_inventory(&identity, &inventory, kubelet.devices(), &bindings);
            sources.push(source(
                "device_plugins",
                true,
                format!(
                    "as the kubelet has them: {} device(s) offered, {not_offered} not offered (one reading without the Node's counts cannot say whether their plugin reported them Unhealthy)",
                    devices.len()
                ),
                None,
            ));
        }
        None => sources.push(source(
            "device_plugins",
            false,
            allocatable_error
                .map(|e| format!("the kubelet's allocatable devices: {e}"))
                .unwrap_or_else(|| "needs PodResources (the kubelet's allocatable devices)".into()),
            None,
        )),
    }

    // Kernel log: replay this boot's records and map device faults to devices by PCI address.
    sources.push(replay_kernel_log(node, paths, catalog, boot_id.as_deref(), &inventory, &mut tracker, now));

    let inventory = crate::snapshot::fold_inventory(&identity, &inventory, std::iter::empty(), &bindings);
    node_device_health(SnapshotInput {
        node,
        boot_id: boot_id.as_deref(),
        now,
        devices: &inventory,
        tracker: &tracker,
        bindings: &bindings,
        identity: &identity,
        sources,
    })
}

/// A vendor library once (amdsmi, hlml): each device into the inventory under its key, with its
/// evidence; the source's status (`None`: the library is off, or absent where sysfs shows none
/// of its devices, as in the running agent). A Gaudi's serial number is handed to the identity
/// resolver first, so that the kubelet's ids for it (read after this) resolve to its PCI
/// address.
fn library_once(
    library: Library,
    open: Option<crate::library::Opener>,
    accelerators: &crate::accel::AcceleratorInventory,
    identity: &mut crate::identity::NodeIdentity,
    inventory: &mut Vec<InventoryDevice>,
    tracker: &mut DeviceHealthTracker,
    now: Time,
) -> Option<SourceStatus> {
    let open = open?;
    let name = library.source_name();
    let unavailable =
        |message: String| (!library.absent_from(accelerators)).then(|| source(name, false, message, None));
    let mut lib = match open() {
        Ok(lib) => lib,
        Err(e) => return unavailable(e),
    };
    let devices = match lib.devices() {
        Ok(devices) => devices,
        Err(e) => return unavailable(e),
    };
    let (found, serials) = crate::library::by_address(&devices);
    if library == Library::Gaudi {
        identity.set_gaudi_serials(serials);
    }
    let count = found.len();
    for (index, pci) in found {
        let key = identity.key_at_pci(&pci).unwrap_or_else(|| pci.clone());
        if let Ok(Some(evidence)) = lib.sample(index) {
            tracker.set_watch(&key, library.health_source(), true, now);
            for e in evidence {
                tracker.observe(&key, e, now);
            }
        }
        inventory.push(InventoryDevice {
            id: key,
            resource: library.resource().into(),
            vendor: library.vendor(),
            pci_address: Some(pci),
            ..InventoryDevice::default()
        });
    }
    let message = library.inventory_message(count, &lib.unreadable());
    Some(source(name, true, message, None))
}

fn replay_kernel_log(
    node: &str,
    paths: &SourcePaths,
    catalog: &Catalog,
    boot_id: Option<&str>,
    inventory: &[InventoryDevice],
    tracker: &mut DeviceHealthTracker,
    now: Time,
) -> SourceStatus {
    let mut reader = match KmsgReader::open_nonblocking(&paths.kmsg, StartAt::Beginning) {
        Ok(r) => r,
        Err(e) => return source("kernel_log", false, e.to_string(), None),
    };
    // Records carry time since boot; place them on the wall clock through the uptime.
    let uptime = match std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|u| u.parse::<f64>().ok()))
    {
        Some(u) if u.is_finite() && u >= 0.0 => u,
        _ => return source("kernel_log", false, "cannot read the uptime from /proc/uptime".into(), None),
    };
    let boot_time = now - devheal_core::Duration::from_nanos((uptime * 1e9) as i64);
    // The same correlation and mapping as the running agent, with the node's PCIe topology.
    let devices = crate::snapshot::physical_devices(inventory);
    let addresses: BTreeSet<String> = devices.iter().map(|(pci, _)| pci.clone()).collect();
    let topology = crate::pci_topology::read_pci_topology(&paths.pci_devices_dir, &addresses);
    let mut kernel =
        KernelPipeline::new(node, boot_id.map(str::to_string), boot_time).with_catalog(catalog.clone());
    kernel.set_topology(topology.topology);
    // Gaudi lines name their device hl<N>/accel<N> (read again here: one cheap directory walk).
    kernel.set_device_names(
        crate::accel::read_accelerators(
            &paths.drm_class_dir,
            &paths.accel_class_dir,
            &paths.kfd_topology_dir,
        )
        .names(),
    );
    let (mut records, mut faults, mut unmapped, mut lost) = (0u64, 0u64, 0u64, 0u64);
    // Bounded: a ring buffer holds far fewer records than this.
    while records < 1_000_000 {
        match reader.next_record() {
            Ok(KmsgEvent::Record(record)) => {
                records += 1;
                let Some(mapped) = kernel.line(&record.message, boot_time + record.since_boot) else {
                    continue;
                };
                faults += 1;
                match mapped {
                    Mapped::Device { pci_address, evidence, at } => {
                        let concerned = kernel.evidence_for(&pci_address, &evidence, &devices);
                        if concerned.is_empty() {
                            unmapped += 1;
                        }
                        for (key, evidence) in concerned {
                            tracker.observe(&key, evidence, at);
                        }
                    }
                    Mapped::NoAddress => unmapped += 1,
                    // NIC links are followed over time by the running agent, not in one read.
                    Mapped::Link { .. } | Mapped::Ignored => {}
                }
            }
            Ok(KmsgEvent::Lost { count }) => lost += count,
            // Caught up with a live /dev/kmsg, or the end of a file holding saved records.
            Err(e) if e.is_caught_up() || matches!(e, devheal_detect::KmsgError::Closed { .. }) => break,
            Err(e) => return source("kernel_log", false, e.to_string(), None),
        }
    }
    tracker.tick(now);
    source(
        "kernel_log",
        true,
        format!(
            "{records} record(s) of this boot read, {faults} device-fault line(s), {unmapped} on no known device, {lost} lost to overwrite; catalog {}; PCIe topology: {}",
            catalog.origin(),
            topology.message
        ),
        Some(catalog.version().to_string()),
    )
}
