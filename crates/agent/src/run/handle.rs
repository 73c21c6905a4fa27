//! One turn of the loop per event: a source's event applied to the tracker, the identity and the
//! inventory (kernel faults by PCI address, NVML, the kubelet's view, fake devices, progress).

use super::*;
use crate::vendor::Library;
use devheal_k8s::crd::{DEVICE_PLUGIN_POD_SOURCE, NVML_SOURCE};

impl LoopState {
    pub(super) fn handle(&mut self, event: SourceEvent) {
        let now = wall_now();
        match event {
            SourceEvent::ResetRequests(requests) => self.take_reset_requests(&requests, now),
            SourceEvent::ResetDone(crate::reset::Done::Reset(result)) => self.finish_reset(result, now),
            SourceEvent::ResetDone(crate::reset::Done::Check { device, outcome }) => {
                self.finish_check(&device, outcome, now)
            }
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
            SourceEvent::Amd(event) => self.handle_library(Library::Amd, event, now),
            SourceEvent::Gaudi(event) => self.handle_library(Library::Gaudi, event, now),
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
            SourceEvent::StackPods(pods) => match crate::stack::report(&pods) {
                Some((version, message)) => {
                    self.set_source(DEVICE_PLUGIN_POD_SOURCE, true, message, version, now)
                }
                // No device-stack pod here (yet, or any more): no version to report; the
                // controller falls back to the Node's labels.
                None => {
                    self.sources.remove(DEVICE_PLUGIN_POD_SOURCE);
                }
            },
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
    pub(super) fn progress_report(
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

    pub(super) fn apply_kernel(&mut self, mapped: Mapped) {
        match mapped {
            Mapped::Device { pci_address, evidence, at } => {
                // The device at the address, else the devices below the port or linked to the
                // NVSwitch there; held until one is known otherwise.
                let concerned = match self.device_at(&pci_address) {
                    Some(id) => vec![(id, evidence.clone())],
                    None => self.kernel.evidence_for(&pci_address, &evidence, &self.placed_devices()),
                };
                if concerned.is_empty() {
                    self.metrics.kmsg_unmapped.inc();
                    self.kernel.hold(pci_address, evidence, at);
                }
                for (id, evidence) in concerned {
                    self.tracker.observe(&id, evidence, at);
                }
            }
            Mapped::NoAddress => {
                self.metrics.kmsg_unmapped.inc();
            }
            Mapped::Link { pci_address, interface, state, at } => {
                self.apply_link(pci_address.as_deref(), interface.as_deref(), state, at);
            }
            Mapped::Ignored => {}
        }
    }

    /// The physical devices the topology was read for, as `(PCI address, key)`.
    pub(super) fn placed_devices(&self) -> Vec<(String, String)> {
        self.topology_for.iter().filter_map(|pci| self.device_at(pci).map(|key| (pci.clone(), key))).collect()
    }

    /// Read the PCIe topology again when the physical devices' addresses changed (NVML's
    /// inventory, fake devices), and correlate kernel faults with it.
    pub(super) fn refresh_topology(&mut self, inventory: &[InventoryDevice]) {
        let addresses: BTreeSet<String> =
            crate::snapshot::physical_devices(inventory).into_iter().map(|(pci, _)| pci).collect();
        if addresses == self.topology_for {
            return;
        }
        let read = crate::pci_topology::read_pci_topology(&self.pci_devices_dir, &addresses);
        tracing::info!(available = read.available, "PCIe topology: {}", read.message);
        self.kernel.set_topology(read.topology);
        self.topology_for = addresses;
    }

    /// The key of the physical device at `pci_address`: NVML's GPU or a fake device there, or
    /// a device the kubelet names by that address (AMD's plugin).
    pub(super) fn device_at(&self, pci_address: &str) -> Option<String> {
        self.identity.key_at_pci(pci_address).or_else(|| {
            self.inventory()
                .into_iter()
                .find(|d| d.parent.is_none() && d.pci_address.as_deref() == Some(pci_address))
                .map(|d| d.id)
        })
    }

    pub(super) fn handle_nvml(&mut self, event: NvmlEvent, now: Time) {
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
                self.set_source(NVML_SOURCE, true, message, driver_version, now);
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
                self.set_source(NVML_SOURCE, false, message, None, now);
            }
        }
    }

    /// Plugin-side health as the kubelet has it: each device's view, over all the names the
    /// kubelet knows it by (every replica of a GPU), is given to the tracker when it changes (so
    /// a steady state adds nothing to a reason's count). A device is Unhealthy when the kubelet
    /// counts any of its names unhealthy, Healthy when it offers any of them, and the plugin is
    /// blind to it otherwise.
    pub(super) fn apply_kubelet(&mut self, now: Time) {
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

    pub(super) fn set_source(
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
    pub(super) fn inventory(&self) -> Vec<InventoryDevice> {
        let mut devices = fold_inventory(
            &self.identity,
            self.static_devices
                .iter()
                .chain(self.nvml_devices.iter())
                .chain(self.library_devices.values().flatten()),
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
}
