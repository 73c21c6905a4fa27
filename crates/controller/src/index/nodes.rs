//! Nodes: their watch events.

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
                let d = digest(&info);
                match self.nodes.get_mut(&info.name) {
                    Some(entry) if entry.0 == d => entry.1 = epoch,
                    _ => {
                        self.nodes.insert(info.name.clone(), (d, epoch));
                        up.inputs.push(Input::NodeUpsert(info));
                    }
                }
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
                    self.nodes.iter().filter(|(_, e)| e.1 != epoch).map(|(k, _)| k.clone()).collect();
                gone.sort();
                for name in gone {
                    self.nodes.remove(&name);
                    up.inputs.push(Input::NodeDeleted { name });
                }
            }
        }
    }
}
