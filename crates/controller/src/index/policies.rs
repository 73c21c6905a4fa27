//! FailurePolicies: the set the engine gets, once per change.

use super::*;

impl ClusterIndex {
    pub(super) fn on_policy_event(&mut self, ev: watcher::Event<FailurePolicyObject>, up: &mut IndexUpdate) {
        match ev {
            watcher::Event::Init => self.begin_list(ObjectKind::FailurePolicy),
            watcher::Event::Apply(obj) | watcher::Event::InitApply(obj) => {
                let epoch = self.epoch(ObjectKind::FailurePolicy);
                let policy = obj.to_policy();
                if policy.name.is_empty() {
                    up.rejected.push(IndexError::PolicyWithoutName);
                    return;
                }
                let key = pod_key(policy.namespace.as_deref().unwrap_or(""), &policy.name);
                self.policies.insert(key, (policy, epoch));
            }
            watcher::Event::Delete(obj) => {
                let key = pod_key(
                    obj.metadata.namespace.as_deref().unwrap_or(""),
                    obj.metadata.name.as_deref().unwrap_or(""),
                );
                self.policies.remove(&key);
            }
            watcher::Event::InitDone => {
                up.relisted = self.end_list(ObjectKind::FailurePolicy);
                let epoch = self.epoch(ObjectKind::FailurePolicy);
                self.policies.retain(|_, (_, e)| *e == epoch);
            }
        }
        // The engine gets the whole set, when it differs from what it has; during a list, once
        // the list is complete.
        if self.lists[slot(ObjectKind::FailurePolicy)].listing {
            return;
        }
        let list: Vec<devheal_core::FailurePolicy> = self.policies.values().map(|(p, _)| p.clone()).collect();
        let d = digest(&list);
        if self.sent_policies != Some(d) && !(self.sent_policies.is_none() && list.is_empty()) {
            self.sent_policies = Some(d);
            up.inputs.push(Input::Policies(list));
        }
    }
}
