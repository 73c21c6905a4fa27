//! Node actions: a cordon (taint and unschedulable, undone only when devheal made it), repair
//! requests (a condition and a label) and their withdrawal, through a JSON patch whose `test`
//! guards the taints read.

use super::*;

impl KubeActuator {
    pub(super) async fn cordon(&self, node: &str, reason: &str, on: bool) -> Carried {
        let edit = |view: &NodeView| {
            let mut taints = view.taints.clone();
            let ours = taints.iter().find(|t| same_taint(t, UNHEALTHY_TAINT)).cloned();
            if on {
                if ours.is_none() {
                    let value = if view.unschedulable { CORDONED_BEFORE } else { CORDONED_BY_DEVHEAL };
                    taints.push(json!({"key": UNHEALTHY_TAINT, "value": value, "effect": "NoSchedule"}));
                }
                NodeEdit { taints, unschedulable: Some(true) }
            } else {
                let Some(ours) = ours else {
                    // Not cordoned by devheal: someone else's cordon is theirs to lift.
                    return NodeEdit { taints, unschedulable: None };
                };
                taints.retain(|t| !same_taint(t, UNHEALTHY_TAINT));
                let unschedulable = (ours["value"] == CORDONED_BY_DEVHEAL).then_some(false);
                NodeEdit { taints, unschedulable }
            }
        };
        let (reason_code, action, note, warning) = if on {
            (
                "DevhealNodeCordoned",
                "Cordon",
                format!("cordoned, taint {UNHEALTHY_TAINT}:NoSchedule: {reason}"),
                true,
            )
        } else {
            (
                "DevhealNodeUncordoned",
                "Uncordon",
                format!("uncordoned, taint {UNHEALTHY_TAINT} removed: {reason}"),
                false,
            )
        };
        self.edit_node_outcome(node, edit, reason_code, action, note, warning).await
    }

    pub(super) async fn edit_node_outcome(
        &self,
        node: &str,
        edit: impl Fn(&NodeView) -> NodeEdit,
        reason_code: &'static str,
        action: &'static str,
        note: String,
        warning: bool,
    ) -> Carried {
        let key = format!("node/{node}");
        match self.edit_node(node, edit).await {
            Ok((changed, uid)) => {
                self.settle(&key);
                if !changed {
                    return Carried::quiet(ActionOutcome::Done);
                }
                Carried::with(
                    ActionOutcome::Done,
                    EventSpec {
                        namespace: "default".into(),
                        regarding: Some(node_regarding(node, uid.as_deref())),
                        reason: reason_code,
                        action,
                        note,
                        warning,
                    },
                )
            }
            Err(stop) => Carried::quiet(self.stop_outcome(&key, stop)),
        }
    }

    /// Reads the node, computes its new taints (and `spec.unschedulable`) and sends a JSON patch
    /// that first `test`s the taint list it read, so a concurrent change by another manager
    /// fails the patch instead of being overwritten; then re-reads and tries again, a few times.
    /// Returns whether anything changed, and the node's UID.
    pub(super) async fn edit_node(
        &self,
        node: &str,
        edit: impl Fn(&NodeView) -> NodeEdit,
    ) -> Result<(bool, Option<String>), Stop> {
        let path = format!("/api/v1/nodes/{}", path_segment(node));
        let mut last = String::new();
        for _ in 0..NODE_PATCH_ATTEMPTS {
            let obj = self
                .send(Method::GET, &path, None)
                .await
                .map_err(|e| stop_of(&format!("reading node {node}"), &e))?;
            let view = NodeView::of(&obj);
            let want = edit(&view);
            let taints_change = want.taints != view.taints;
            let unschedulable_change = want.unschedulable.is_some_and(|u| u != view.unschedulable);
            if !taints_change && !unschedulable_change {
                return Ok((false, view.uid));
            }
            let mut ops = vec![json!({"op": "test", "path": "/spec/taints", "value": view.raw_taints})];
            if taints_change {
                ops.push(json!({"op": "add", "path": "/spec/taints", "value": want.taints}));
            }
            if let Some(u) = want.unschedulable.filter(|_| unschedulable_change) {
                ops.push(
                    json!({"op": "test", "path": "/spec/unschedulable", "value": view.raw_unschedulable}),
                );
                ops.push(json!({"op": "add", "path": "/spec/unschedulable", "value": u}));
            }
            let patch = Value::Array(ops);
            let patch_path = format!("{path}{}", self.write_query());
            match self.send(Method::PATCH, &patch_path, Some((Body::JsonPatch, &patch))).await {
                Ok(obj) => {
                    let uid = obj["metadata"]["uid"].as_str().map(str::to_string).or(view.uid);
                    return Ok((true, uid));
                }
                Err(e) if is_failed_test(&e) => last = e.describe(),
                Err(e) => return Err(stop_of(&format!("patching node {node}"), &e)),
            }
        }
        Err(Stop::Retry(format!(
            "node {node} changed under each of {NODE_PATCH_ATTEMPTS} taint patches; last: {last}"
        )))
    }

    /// A repair request: node condition [`REPAIR_REQUESTED_CONDITION`] (True, reason the repair
    /// kind in CamelCase) through `nodes/status`, and label [`REPAIR_LABEL`]`=<kind>` on the node.
    pub(super) async fn request_repair(
        &self,
        node: &str,
        device: Option<&DeviceKey>,
        kind: &str,
        kind_reason: &str,
        reason: &str,
    ) -> Carried {
        let key = format!("node/{node}");
        let now = wire::rfc3339_seconds(self.now());
        let message = match device {
            Some(d) => format!("{kind} requested for device {}: {reason}", d.id),
            None => format!("{kind} requested: {reason}"),
        };
        let status = json!({"status": {"conditions": [{
            "type": REPAIR_REQUESTED_CONDITION,
            "status": "True",
            "reason": kind_reason,
            "message": message,
            "lastHeartbeatTime": now,
            "lastTransitionTime": now,
        }]}});
        let node_path = format!("/api/v1/nodes/{}", path_segment(node));
        let status_path = format!("{node_path}/status{}", self.write_query());
        let obj =
            match self.send(Method::PATCH, &status_path, Some((Body::StrategicMergePatch, &status))).await {
                Ok(obj) => obj,
                Err(e) => return Carried::quiet(self.failed_call(&key, "setting the repair condition", &e)),
            };
        let label = json!({"metadata": {"labels": {REPAIR_LABEL: kind}}});
        let label_path = format!("{node_path}{}", self.write_query());
        if let Err(e) = self.send(Method::PATCH, &label_path, Some((Body::MergePatch, &label))).await {
            return Carried::quiet(self.failed_call(&key, "labelling the node for repair", &e));
        }
        self.settle(&key);
        Carried::with(
            ActionOutcome::Done,
            EventSpec {
                namespace: "default".into(),
                regarding: Some(node_regarding(node, obj["metadata"]["uid"].as_str())),
                reason: "DevhealRepairRequested",
                action: "RequestRepair",
                note: format!(
                    "{REPAIR_REQUESTED_CONDITION}={kind_reason}, label {REPAIR_LABEL}={kind}: {message}"
                ),
                warning: true,
            },
        )
    }

    /// The end of a repair request: condition [`REPAIR_REQUESTED_CONDITION`] False (reason
    /// `RepairDone`) and label [`REPAIR_LABEL`] removed. A node without devheal's condition is
    /// left alone (nothing to withdraw: the request was never written, or someone cleared it).
    pub(super) async fn withdraw_repair(&self, node: &str, reason: &str) -> Carried {
        let key = format!("node/{node}");
        let node_path = format!("/api/v1/nodes/{}", path_segment(node));
        let current = match self.send(Method::GET, &node_path, None).await {
            Ok(obj) => obj,
            Err(e) if e.code() == Some(404) => return Carried::quiet(ActionOutcome::Done),
            Err(e) => return Carried::quiet(self.failed_call(&key, "reading the node", &e)),
        };
        if let Err(e) = self.clear_reset_requests(node).await {
            return Carried::quiet(self.failed_call(&key, "clearing the resets asked of the agent", &e));
        }
        let standing = current["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter().any(|c| c["type"] == REPAIR_REQUESTED_CONDITION && c["status"] == "True")
        });
        let labelled = current["metadata"]["labels"].get(REPAIR_LABEL).is_some();
        if !standing && !labelled {
            self.settle(&key);
            return Carried::quiet(ActionOutcome::Done);
        }
        let now = wire::rfc3339_seconds(self.now());
        if standing {
            let status = json!({"status": {"conditions": [{
                "type": REPAIR_REQUESTED_CONDITION,
                "status": "False",
                "reason": "RepairDone",
                "message": reason,
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
            }]}});
            let status_path = format!("{node_path}/status{}", self.write_query());
            if let Err(e) =
                self.send(Method::PATCH, &status_path, Some((Body::StrategicMergePatch, &status))).await
            {
                return Carried::quiet(self.failed_call(&key, "clearing the repair condition", &e));
            }
        }
        if labelled {
            let label = json!({"metadata": {"labels": {REPAIR_LABEL: null}}});
            let label_path = format!("{node_path}{}", self.write_query());
            if let Err(e) = self.send(Method::PATCH, &label_path, Some((Body::MergePatch, &label))).await {
                return Carried::quiet(self.failed_call(&key, "removing the repair label", &e));
            }
        }
        self.settle(&key);
        Carried::with(
            ActionOutcome::Done,
            EventSpec {
                namespace: "default".into(),
                regarding: Some(node_regarding(node, current["metadata"]["uid"].as_str())),
                reason: "DevhealRepairWithdrawn",
                action: "WithdrawRepair",
                note: format!("{REPAIR_REQUESTED_CONDITION}=False, label {REPAIR_LABEL} removed: {reason}"),
                warning: false,
            },
        )
    }
}

/// The path of a node's NodeDeviceHealth.
fn device_health_path(node: &str) -> String {
    format!("/apis/{}/{}/nodedevicehealths/{}", crate::crd::GROUP, crate::crd::VERSION, path_segment(node))
}

/// The most reset requests kept on one NodeDeviceHealth (the CRD's bound).
const MAX_RESET_REQUESTS: usize = 64;

impl KubeActuator {
    /// A device reset is also asked of the node's agent, the one thing on the node that can
    /// carry it out: the request joins `spec.resetRequests` of the node's NodeDeviceHealth (an
    /// optimistic-concurrency merge patch; the controller is the only writer of that list), and
    /// the agent answers in `status.resets` (`docs/actuator.md`, "Device resets"). A node
    /// without a NodeDeviceHealth has no agent to ask: the condition and label stand alone.
    pub(super) async fn ask_agent_to_reset(
        &self,
        node: &str,
        device: &DeviceKey,
        id: &str,
        reason: &str,
    ) -> Result<(), ActionOutcome> {
        let key = format!("node/{node}");
        let path = device_health_path(node);
        let mut last = String::new();
        for _ in 0..NODE_PATCH_ATTEMPTS {
            let current = match self.send(Method::GET, &path, None).await {
                Ok(obj) => obj,
                Err(e) if e.code() == Some(404) => return Ok(()),
                Err(e) => return Err(self.failed_call(&key, "reading the node's NodeDeviceHealth", &e)),
            };
            let mut requests: Vec<Value> =
                current["spec"]["resetRequests"].as_array().cloned().unwrap_or_default();
            if requests.iter().any(|r| r["id"] == id) {
                return Ok(());
            }
            let reason: String = reason.chars().take(1024).collect();
            requests.push(json!({
                "device": device.id,
                "id": id,
                "requestedAt": wire::rfc3339_seconds(self.now()),
                "reason": reason,
            }));
            let excess = requests.len().saturating_sub(MAX_RESET_REQUESTS);
            requests.drain(..excess);
            let patch = json!({
                "metadata": {"resourceVersion": current["metadata"]["resourceVersion"]},
                "spec": {"resetRequests": requests},
            });
            let write = format!("{path}{}", self.write_query());
            match self.send(Method::PATCH, &write, Some((Body::MergePatch, &patch))).await {
                Ok(_) => return Ok(()),
                Err(e) if e.code() == Some(409) => last = e.to_string(),
                Err(e) => return Err(self.failed_call(&key, "asking the agent for a device reset", &e)),
            }
        }
        Err(self.stop_outcome(
            &key,
            Stop::Retry(format!(
                "NodeDeviceHealth {node} changed under each of {NODE_PATCH_ATTEMPTS} patches; last: {last}"
            )),
        ))
    }

    /// The node's repair requests were withdrawn: so are the resets asked of its agent.
    async fn clear_reset_requests(&self, node: &str) -> Result<(), CallError> {
        let path = device_health_path(node);
        let current = match self.send(Method::GET, &path, None).await {
            Ok(obj) => obj,
            Err(e) if e.code() == Some(404) => return Ok(()),
            Err(e) => return Err(e),
        };
        if current["spec"]["resetRequests"].as_array().is_none_or(|r| r.is_empty()) {
            return Ok(());
        }
        let patch = json!({"spec": {"resetRequests": null}});
        let write = format!("{path}{}", self.write_query());
        match self.send(Method::PATCH, &write, Some((Body::MergePatch, &patch))).await {
            Err(e) if e.code() != Some(404) => Err(e),
            _ => Ok(()),
        }
    }
}

/// What the actuator reads from a node.
pub(super) struct NodeView {
    pub(super) uid: Option<String>,
    /// `spec.taints` exactly as read (`null` when absent), for the patch's `test`.
    pub(super) raw_taints: Value,
    pub(super) taints: Vec<Value>,
    pub(super) raw_unschedulable: Value,
    pub(super) unschedulable: bool,
}

impl NodeView {
    pub(super) fn of(obj: &Value) -> Self {
        let raw_taints = obj["spec"]["taints"].clone();
        let raw_unschedulable = obj["spec"]["unschedulable"].clone();
        NodeView {
            uid: obj["metadata"]["uid"].as_str().map(str::to_string),
            taints: raw_taints.as_array().cloned().unwrap_or_default(),
            raw_taints,
            unschedulable: raw_unschedulable.as_bool().unwrap_or(false),
            raw_unschedulable,
        }
    }
}

/// The node as it should be: every taint (other managers' untouched, in their order), and the
/// `spec.unschedulable` wanted (`None`: leave it).
pub(super) struct NodeEdit {
    pub(super) taints: Vec<Value>,
    pub(super) unschedulable: Option<bool>,
}

pub(super) fn same_taint(t: &Value, key: &str) -> bool {
    t["key"] == key && t["effect"] == "NoSchedule"
}

/// A JSON patch whose `test` failed, or a write conflict. The API server answers a JSON patch
/// that does not apply with 422 and only the generic message "the server rejected our request
/// due to an error in our request" (the patch library's text is not passed on), while a patch
/// that applies but yields an invalid node gets 422 "Node \"x\" is invalid: ..." with causes.
/// Our patches only `test` and `add` under `/spec`, so the generic 422 is a failed test; the
/// patch library's own wording is matched too, should a server pass it on.
pub(super) fn is_failed_test(e: &CallError) -> bool {
    match e {
        CallError::Status { code: 409, .. } => true,
        CallError::Status { code: 422, message, cause_fields, .. } => {
            let m = message.to_ascii_lowercase();
            (cause_fields.is_empty() && m.contains("the server rejected our request"))
                || m.contains("testing value")
                || m.contains("test operation")
        }
        _ => false,
    }
}

pub(super) fn node_regarding(node: &str, uid: Option<&str>) -> Value {
    let mut r = json!({"apiVersion": "v1", "kind": "Node", "name": node});
    if let Some(uid) = uid {
        r["uid"] = json!(uid);
    }
    r
}
