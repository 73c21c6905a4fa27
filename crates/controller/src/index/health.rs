//! NodeDeviceHealth: the reports of each node's agent, their bindings, and the progress findings
//! merged into them.

use super::*;

impl ClusterIndex {
    pub(super) fn on_health_event(
        &mut self,
        ev: watcher::Event<NodeDeviceHealthObject>,
        up: &mut IndexUpdate,
    ) {
        match ev {
            watcher::Event::Init => self.begin_list(ObjectKind::NodeDeviceHealth),
            watcher::Event::Apply(obj) | watcher::Event::InitApply(obj) => self.upsert_health(&obj, up),
            watcher::Event::Delete(obj) => {
                if let Some(name) = obj.metadata.name.clone() {
                    self.remove_health(&name, up);
                }
            }
            watcher::Event::InitDone => {
                up.relisted = self.end_list(ObjectKind::NodeDeviceHealth);
                let epoch = self.epoch(ObjectKind::NodeDeviceHealth);
                let mut gone: Vec<String> =
                    self.health.iter().filter(|(_, e)| e.epoch != epoch).map(|(k, _)| k.clone()).collect();
                gone.sort();
                for name in gone {
                    self.remove_health(&name, up);
                }
            }
        }
    }

    /// The object's devices through devheal-k8s's NodeDeviceHealth conversion.
    pub(super) fn reports(obj: &NodeDeviceHealthObject) -> Result<(String, Vec<DeviceReport>), IndexError> {
        let name = obj.metadata.name.clone().unwrap_or_default();
        let fail = |reason: String| IndexError::NodeHealth { name: name.clone(), reason };
        let json = serde_json::to_value(obj).map_err(|e| fail(e.to_string()))?;
        let doc: NodeDeviceHealthDocument = serde_json::from_value(json).map_err(|e| fail(e.to_string()))?;
        let reports = doc.reports().map_err(|e| fail(e.to_string()))?;
        Ok((name, reports))
    }

    pub(super) fn upsert_health(&mut self, obj: &NodeDeviceHealthObject, up: &mut IndexUpdate) {
        let (node, reports) = match Self::reports(obj) {
            Ok(r) => r,
            Err(e) => {
                up.rejected.push(e);
                return;
            }
        };
        let epoch = self.epoch(ObjectKind::NodeDeviceHealth);
        let devices: Vec<Device> = reports.iter().map(|r| r.device.clone()).collect();
        let inventory = digest(&devices);
        let mut bindings: Vec<(String, Option<String>, DeviceKey)> = Vec::new();
        let mut foreign: BTreeSet<ForeignClaim> = BTreeSet::new();
        // A claim about a pod the index knows on another node is dropped here; one about a pod
        // not known yet is kept, and counts only if the pod turns out to be on this node
        // (`bound_devices`).
        let mut elsewhere = |key: &str, what: &'static str, pods: &HashMap<String, PodEntry>| -> bool {
            match pods.get(key) {
                Some(p) if *p.node != *node => {
                    foreign.insert(ForeignClaim {
                        node: node.clone(),
                        pod: key.to_string(),
                        pod_node: p.node.to_string(),
                        what,
                    });
                    true
                }
                _ => false,
            }
        };
        for r in &reports {
            for b in &r.pods {
                let (key, uid) = match b {
                    PodBinding::Name(s) => match s.split_once('/') {
                        Some((ns, n)) => (pod_key(ns, n), None),
                        None => (pod_key("default", s), None),
                    },
                    PodBinding::Ref { namespace, name, uid } => (pod_key(namespace, name), uid.clone()),
                };
                if elsewhere(&key, "device", &self.pods) {
                    continue;
                }
                bindings.push((key, uid, r.device.key.clone()));
            }
        }
        // Progress only of pods the index knows on this node.
        let mut workloads = obj.status.as_ref().map(|s| s.workloads.clone()).unwrap_or_default();
        workloads.retain(|w| {
            let key = pod_key(&w.namespace, &w.name);
            !elsewhere(&key, "progress", &self.pods) && self.pods.contains_key(&key)
        });
        for w in workloads.iter_mut().filter(|w| w.uid.is_none()) {
            w.uid = self.pods.get(&pod_key(&w.namespace, &w.name)).map(|p| p.uid.clone());
        }
        bindings.sort();
        bindings.dedup();
        let mut entry = self.health.remove(&node).unwrap_or_default();
        entry.epoch = epoch;
        entry.aliases = reports
            .iter()
            .flat_map(|r| r.aliases.iter().map(|a| (a.clone(), r.device.key.clone())))
            .collect();
        // Inventory first, then bindings (so pods are on their devices), then health.
        if entry.inventory != inventory || entry.devices.is_empty() != devices.is_empty() {
            entry.inventory = inventory;
            up.inputs.push(Input::Devices { node: node.clone(), devices });
        }
        if entry.bindings != bindings {
            let old = std::mem::replace(&mut entry.bindings, bindings);
            self.replace_bindings(&old, &entry.bindings, up);
        }
        let mut health: BTreeMap<DeviceKey, DeviceEntry> = BTreeMap::new();
        for r in reports {
            let key = r.device.key;
            let (h, reasons) = merged(r.health, &r.reasons, self.progress_reasons.get(&key));
            let sent = digest(&(h, &reasons));
            if entry.devices.get(&key).map(|d| d.sent) != Some(sent) {
                up.inputs.push(Input::DeviceHealth { device: key.clone(), health: h, reasons });
            }
            health.insert(key, DeviceEntry { health: r.health, reasons: r.reasons, sent });
        }
        entry.devices = health;
        up.foreign.extend(foreign.iter().filter(|c| !entry.foreign.contains(*c)).cloned());
        entry.foreign = foreign;
        let versions = StackVersions::of(obj.status.as_ref());
        let new_versions = entry.versions != versions;
        entry.versions = versions;
        let network = obj.status.as_ref().and_then(|s| network_fault(&s.network));
        if entry.network != network {
            entry.network = network.clone();
            up.inputs.push(Input::NodeNetwork { node: node.clone(), fault: network });
        }
        // Resets the agent tried and that failed: the engine asks for the next repair, once each.
        let answers = obj.status.as_ref().map_or(&[][..], |s| &s.resets[..]);
        let failed: BTreeSet<String> = answers
            .iter()
            .filter(|a| a.phase == devheal_k8s::crd::DeviceResetPhase::Failed)
            .map(|a| a.id.clone())
            .collect();
        for a in answers.iter().filter(|a| failed.contains(&a.id) && !entry.resets_failed.contains(&a.id)) {
            let key = entry
                .devices
                .keys()
                .find(|k| k.id == a.device)
                .or_else(|| entry.aliases.get(&a.device))
                .cloned();
            match key {
                Some(device) => up.inputs.push(Input::DeviceResetFailed {
                    device,
                    request: a.id.clone(),
                    message: a.message.clone(),
                }),
                None => {
                    tracing::warn!(%node, device = %a.device, "a failed reset names no device the node reports")
                }
            }
        }
        entry.resets_failed = failed;
        self.health.insert(node.clone(), entry);
        if new_versions {
            self.send_node(&node, up);
        }
        up.progress.push((node, workloads));
    }

    /// The devices NodeDeviceHealth reports Healthy on `node` (the agent's own report, without
    /// progress findings).
    pub fn healthy_devices<'a>(&'a self, node: &str) -> impl Iterator<Item = &'a DeviceKey> + use<'a> {
        self.health
            .get(node)
            .into_iter()
            .flat_map(|e| e.devices.iter().filter(|(_, d)| d.health == Health::Healthy).map(|(k, _)| k))
    }

    /// Sets (or, with `None`, clears) the progress finding on `device` and returns the input
    /// that gives the engine the device's merged health, if it changed. A device no
    /// NodeDeviceHealth reports keeps the reason until one does.
    pub fn set_progress_reason(&mut self, device: &DeviceKey, reason: Option<HealthReason>) -> Option<Input> {
        match reason {
            Some(r) => self.progress_reasons.insert(device.clone(), r),
            None => self.progress_reasons.remove(device),
        };
        let entry = self.health.get_mut(&device.node)?.devices.get_mut(device)?;
        let (health, reasons) = merged(entry.health, &entry.reasons, self.progress_reasons.get(device));
        let sent = digest(&(health, &reasons));
        if entry.sent == sent {
            return None;
        }
        entry.sent = sent;
        Some(Input::DeviceHealth { device: device.clone(), health, reasons })
    }

    pub(super) fn replace_bindings(
        &mut self,
        old: &[(String, Option<String>, DeviceKey)],
        new: &[(String, Option<String>, DeviceKey)],
        up: &mut IndexUpdate,
    ) {
        let mut touched = BTreeSet::new();
        for (key, uid, dev) in old {
            if let Some(list) = self.bound.get_mut(key) {
                if let Some(i) = list.iter().position(|(d, u)| d == dev && u == uid) {
                    list.swap_remove(i);
                }
                if list.is_empty() {
                    self.bound.remove(key);
                }
            }
            touched.insert(key.clone());
        }
        for (key, uid, dev) in new {
            self.bound.entry(key.clone()).or_default().push((dev.clone(), uid.clone()));
            touched.insert(key.clone());
        }
        self.rebind(touched, up);
    }

    /// The node's NodeDeviceHealth is gone: its agent lost sight of the devices (Unknown, which
    /// never remediates) and its bindings no longer hold.
    pub(super) fn remove_health(&mut self, node: &str, up: &mut IndexUpdate) {
        let Some(entry) = self.health.remove(node) else { return };
        if !entry.versions.is_empty() {
            self.send_node(node, up);
        }
        up.progress.push((node.to_string(), Vec::new()));
        self.replace_bindings(&entry.bindings, &[], up);
        for device in entry.devices.into_keys() {
            up.inputs.push(Input::DeviceHealth {
                device,
                health: Health::Unknown,
                reasons: Vec::<HealthReason>::new(),
            });
        }
    }
}

/// The node's network fault from its NICs' links: the links at fault, the earliest since, their
/// reasons. `None` when no link is at fault (or none says since when).
pub fn network_fault(nics: &[devheal_k8s::crd::NicLinkStatus]) -> Option<devheal_core::NetworkFault> {
    let faulted: Vec<(&devheal_k8s::crd::NicLinkStatus, &str)> =
        nics.iter().filter_map(|n| n.fault.as_deref().map(|f| (n, f))).collect();
    let since = faulted
        .iter()
        .filter_map(|(n, _)| n.fault_since.as_ref().map(devheal_k8s::pod::time_from_k8s))
        .min()?;
    let mut links: Vec<String> = faulted
        .iter()
        .map(|(n, _)| match n.names.first() {
            Some(name) => format!("{name} ({})", n.pci_address),
            None => n.pci_address.clone(),
        })
        .collect();
    links.sort();
    let reason = faulted.iter().map(|(_, f)| *f).collect::<Vec<_>>().join("; ");
    Some(devheal_core::NetworkFault { links, since, reason })
}
