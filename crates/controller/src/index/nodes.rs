//! Nodes: their watch events, and the node the engine gets (with the driver version the node's
//! agent reports).

use super::*;

impl ClusterIndex {
    pub(super) fn on_node_event(&mut self, ev: watcher::Event<Node>, up: &mut IndexUpdate) {
        match ev {
            watcher::Event::Init => self.begin_list(ObjectKind::Node),
            watcher::Event::Apply(node) | watcher::Event::InitApply(node) => {
                let info = node_from_k8s(&node);
                if info.name.is_empty() {
                    up.rejected.push(IndexError::NodeWithoutName);
                    return;
                }
                let epoch = self.epoch(ObjectKind::Node);
                let name = info.name.clone();
                match self.nodes.get_mut(&name) {
                    Some(entry) => {
                        entry.info = info;
                        entry.epoch = epoch;
                    }
                    None => {
                        self.nodes.insert(name.clone(), NodeEntry { info, sent: 0, epoch });
                    }
                }
                self.send_node(&name, up);
            }
            watcher::Event::Delete(node) => {
                if let Some(name) = node.metadata.name
                    && self.nodes.remove(&name).is_some()
                {
                    up.inputs.push(Input::NodeDeleted { name });
                }
            }
            watcher::Event::InitDone => {
                up.relisted = self.end_list(ObjectKind::Node);
                let epoch = self.epoch(ObjectKind::Node);
                let mut gone: Vec<String> =
                    self.nodes.iter().filter(|(_, e)| e.epoch != epoch).map(|(k, _)| k.clone()).collect();
                gone.sort();
                for name in gone {
                    self.nodes.remove(&name);
                    up.inputs.push(Input::NodeDeleted { name });
                }
            }
        }
    }

    /// The node as the engine should have it (the versions its agent reports over the labels'),
    /// sent when it differs from what the engine last got.
    pub(super) fn send_node(&mut self, name: &str, up: &mut IndexUpdate) {
        let Some(entry) = self.nodes.get_mut(name) else { return };
        let mut info = entry.info.clone();
        if let Some(versions) = self.health.get(name).map(|h| &h.versions) {
            if let Some(v) = &versions.driver {
                info.driver_version = Some(v.clone());
            }
            if let Some(v) = &versions.device_plugin {
                info.device_plugin_version = Some(v.clone());
            }
        }
        let d = digest(&info);
        if entry.sent != d {
            entry.sent = d;
            up.inputs.push(Input::NodeUpsert(info));
        }
    }
}
