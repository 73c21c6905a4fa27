//! Pods: their watch events, the devices each is on (its own and those its node binds to it), and
//! their rebinding.

use super::*;

impl ClusterIndex {
    pub(super) fn on_pod_event(&mut self, ev: watcher::Event<Pod>, up: &mut IndexUpdate) {
        match ev {
            watcher::Event::Init => self.begin_list(ObjectKind::Pod),
            watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) => self.upsert_pod(&pod, up),
            watcher::Event::Delete(pod) => {
                let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
                let Some(name) = pod.metadata.name.as_deref() else { return };
                let key = pod_key(namespace, name);
                let same = |e: &PodEntry| pod.metadata.uid.as_ref().is_none_or(|u| *u == e.uid);
                if self.pods.get(&key).is_some_and(same)
                    && let Some(old) = self.pods.remove(&key)
                    && !old.withheld
                {
                    up.inputs.push(Input::PodDeleted { uid: old.uid });
                }
            }
            watcher::Event::InitDone => {
                up.relisted = self.end_list(ObjectKind::Pod);
                let epoch = self.epoch(ObjectKind::Pod);
                let mut gone: Vec<String> =
                    self.pods.iter().filter(|(_, e)| e.epoch != epoch).map(|(k, _)| k.clone()).collect();
                gone.sort();
                for key in gone {
                    if let Some(old) = self.pods.remove(&key)
                        && !old.withheld
                    {
                        up.inputs.push(Input::PodDeleted { uid: old.uid });
                    }
                }
            }
        }
    }

    /// Devices NodeDeviceHealth binds to a pod.
    /// The devices NodeDeviceHealth binds to the pod `key` with `uid` on `node`: only devices of
    /// the pod's own node count (a node speaks only for its own pods).
    pub(super) fn bound_devices(&self, key: &str, uid: &str, node: &str) -> Vec<DeviceKey> {
        let Some(list) = self.bound.get(key) else { return Vec::new() };
        let mut out: Vec<DeviceKey> = list
            .iter()
            .filter(|(d, u)| u.as_deref().is_none_or(|u| u == uid) && d.node == node)
            .map(|(d, _)| d.clone())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// A pod's own devices (its status' `allocatedResourcesStatus`, already under their
    /// canonical keys) under the keys its node's NodeDeviceHealth reports them by, where the
    /// status names a device by another of its ids (an alias the agent lists). A pod seen
    /// before its node's report is matched at its next change.
    pub(super) fn under_reported_keys(&self, info: &mut PodInfo) {
        let Some(entry) = info.node.as_deref().and_then(|n| self.health.get(n)) else { return };
        let reported = |k: &DeviceKey| -> Option<DeviceKey> {
            if entry.devices.contains_key(k) {
                return None;
            }
            if let Some(a) = entry.aliases.get(&k.id) {
                return Some(a.clone());
            }
            // A DRA device named by the CDI id of its claim says its driver and device but not
            // its pool (taken to be the node's): the node's one device of that driver and name.
            let d = devheal_core::dra_device(&k.resource, &k.id)?;
            let mut same = entry.devices.keys().filter(|r| {
                devheal_core::dra_device(&r.resource, &r.id)
                    .is_some_and(|x| x.driver == d.driver && x.device == d.device)
            });
            match (same.next(), same.next()) {
                (Some(only), None) => Some(only.clone()),
                _ => None,
            }
        };
        let mut changed = false;
        for d in &mut info.devices {
            if let Some(k) = reported(d) {
                *d = k;
                changed = true;
            }
        }
        if changed {
            info.devices.sort();
            info.devices.dedup();
        }
        let node = info.node.clone().unwrap_or_default();
        for c in &mut info.containers {
            for r in &mut c.allocated_resources_status {
                let key = devheal_core::canonical_key(&DeviceKey::new(
                    node.clone(),
                    r.resource.clone(),
                    r.device_id.clone(),
                ));
                if let Some(k) = reported(&key) {
                    r.resource = k.resource;
                    r.device_id = k.id;
                }
            }
        }
    }

    pub(super) fn upsert_pod(&mut self, pod: &Pod, up: &mut IndexUpdate) {
        let mut info = match pod_from_k8s(pod) {
            Ok(info) => info,
            Err(e) => {
                up.rejected.push(e.into());
                return;
            }
        };
        self.under_reported_keys(&mut info);
        let epoch = self.epoch(ObjectKind::Pod);
        let key = pod_key(&info.namespace, &info.name);
        let d = digest(&info);
        let node: Box<str> = info.node.as_deref().unwrap_or("").into();
        let bound = self.bound_devices(&key, &info.uid, &node);
        let withheld = info.deletion_requested;
        if let Some(old) = self.pods.get_mut(&key) {
            old.epoch = epoch;
            if old.uid == info.uid {
                if old.digest == d && old.bound == bound {
                    return;
                }
                if old.withheld {
                    // A pod being deleted stays out of the engine.
                    old.digest = d;
                    return;
                }
            } else if !old.withheld {
                // Re-created under the same name while we were not looking.
                up.inputs.push(Input::PodDeleted { uid: old.uid.clone() });
            }
        }
        let was_sent = self.pods.get(&key).is_some_and(|o| o.uid == info.uid && !o.withheld);
        let view = info.devices.is_empty().then(|| Box::new(trimmed(&info)));
        let uid = info.uid.clone();
        let labels = label_hashes(&info.labels);
        if withheld {
            if was_sent {
                up.inputs.push(Input::PodDeleted { uid: uid.clone() });
            }
        } else {
            up.inputs.push(Input::PodUpsert(with_devices(info, &bound)));
        }
        self.pods.insert(key, PodEntry { uid, digest: d, epoch, withheld, view, bound, node, labels });
    }

    /// Re-send the pods whose NodeDeviceHealth bindings changed.
    pub(super) fn rebind(&mut self, keys: BTreeSet<String>, up: &mut IndexUpdate) {
        for key in keys {
            let Some((uid, node)) = self.pods.get(&key).map(|e| (e.uid.clone(), e.node.clone())) else {
                continue;
            };
            let bound = self.bound_devices(&key, &uid, &node);
            let Some(entry) = self.pods.get_mut(&key) else { continue };
            if entry.bound == bound {
                continue;
            }
            // Without a view the binding waits for the pod's next change (`bound` stays as last
            // sent, so that change is seen as one).
            let Some(view) = &entry.view else { continue };
            let pod = with_devices((**view).clone(), &bound);
            entry.bound = bound;
            if !entry.withheld {
                up.inputs.push(Input::PodUpsert(pod));
            }
        }
    }
}
