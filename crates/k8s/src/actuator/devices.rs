//! Device quarantine: a DeviceTaintRule for a DRA device where the cluster serves them, a per-
//! device node taint otherwise.

use super::*;

impl KubeActuator {
    /// Quarantine (`on`) or release a device: a DeviceTaintRule where DRA serves it and the
    /// device is a DRA device ([`dra_device`]: `<driver>/<pool>/<device>` under any resource, or
    /// `<pool>/<device>` under its driver, as PodResources names it), otherwise a node taint
    /// `devheal.io/device-quarantine-<hash>=<device id>:NoSchedule`. The node taint keeps new
    /// pods off the whole node (taints are per node), not only off the one device; pods that
    /// tolerate it still land there.
    pub(super) async fn quarantine(&self, device: &DeviceKey, reason: &str, on: bool) -> Carried {
        let dra = match &self.config.device_taint_rules {
            DeviceTaintRuleSupport::Served { version } => dra_device(device).map(|d| (version.clone(), d)),
            DeviceTaintRuleSupport::NotServed => None,
        };
        match dra {
            Some((version, d)) => {
                self.device_taint_rule(device, &version, (&d.driver, &d.pool, &d.device), reason, on).await
            }
            None => self.device_node_taint(device, reason, on).await,
        }
    }

    pub(super) async fn device_taint_rule(
        &self,
        device: &DeviceKey,
        version: &str,
        (driver, pool, name): (&str, &str, &str),
        reason: &str,
        on: bool,
    ) -> Carried {
        let rule = device_taint_rule_name(device);
        let key = format!("dtr/{rule}");
        let collection = format!("/apis/{RESOURCE_GROUP}/{version}/devicetaintrules");
        let mut regarding = json!({
            "apiVersion": format!("{RESOURCE_GROUP}/{version}"),
            "kind": "DeviceTaintRule",
            "name": rule,
        });
        let result = if on {
            let body = json!({
                "apiVersion": format!("{RESOURCE_GROUP}/{version}"),
                "kind": "DeviceTaintRule",
                "metadata": {
                    "name": rule,
                    "labels": {MANAGED_BY: "devheal"},
                    "annotations": {RULE_DEVICE_ANNOTATION: device.to_string(), RULE_REASON_ANNOTATION: reason},
                },
                "spec": {
                    "deviceSelector": {"driver": driver, "pool": pool, "device": name},
                    "taint": {"key": DEVICE_QUARANTINE_TAINT, "effect": "NoSchedule"},
                },
            });
            let path = format!("{collection}{}", self.write_query());
            self.send(Method::POST, &path, Some((Body::Json, &body))).await
        } else {
            let path = format!("{collection}/{}", path_segment(&rule));
            self.send(Method::DELETE, &path, None).await
        };
        match result {
            Ok(obj) => {
                self.settle(&key);
                if let Some(uid) = obj["metadata"]["uid"].as_str() {
                    regarding["uid"] = json!(uid);
                }
                let (reason_code, action, note, warning) = if on {
                    let note = format!(
                        "device {device} quarantined by DeviceTaintRule {rule} (NoSchedule): {reason}"
                    );
                    ("DevhealDeviceQuarantined", "Quarantine", note, true)
                } else {
                    let note = format!("device {device} released, DeviceTaintRule {rule} deleted: {reason}");
                    ("DevhealDeviceReleased", "Release", note, false)
                };
                let event = EventSpec {
                    namespace: "default".into(),
                    regarding: Some(regarding),
                    reason: reason_code,
                    action,
                    note,
                    warning,
                };
                Carried::with(ActionOutcome::Done, event)
            }
            // Already there (the name is derived from the device), or already deleted.
            Err(e) if (on && e.code() == Some(409)) || (!on && e.code() == Some(404)) => {
                self.settle(&key);
                Carried::quiet(ActionOutcome::Done)
            }
            Err(e) if e.code() == Some(404) => {
                self.settle(&key);
                Carried::quiet(ActionOutcome::Failed {
                    reason: format!(
                        "DeviceTaintRule is not served at {RESOURCE_GROUP}/{version} (discovery is stale): {}",
                        e.describe()
                    ),
                })
            }
            Err(e) => {
                let what = if on { "creating the DeviceTaintRule" } else { "deleting the DeviceTaintRule" };
                Carried::quiet(self.failed_call(&key, what, &e))
            }
        }
    }

    pub(super) async fn device_node_taint(&self, device: &DeviceKey, reason: &str, on: bool) -> Carried {
        let taint_key = node_quarantine_taint_key(device);
        let mut taint = json!({"key": taint_key, "effect": "NoSchedule"});
        let value = label_value(&device.id);
        if !value.is_empty() {
            taint["value"] = json!(value);
        }
        let edit = |view: &NodeView| {
            let mut taints = view.taints.clone();
            let present = taints.iter().any(|t| same_taint(t, &taint_key));
            if on && !present {
                taints.push(taint.clone());
            } else if !on {
                taints.retain(|t| !same_taint(t, &taint_key));
            }
            NodeEdit { taints, unschedulable: None }
        };
        let (reason_code, action, note, warning) = if on {
            let note = format!("device {device} quarantined by node taint {taint_key}:NoSchedule: {reason}");
            ("DevhealDeviceQuarantined", "Quarantine", note, true)
        } else {
            let note = format!("device {device} released, node taint {taint_key} removed: {reason}");
            ("DevhealDeviceReleased", "Release", note, false)
        };
        self.edit_node_outcome(&device.node, edit, reason_code, action, note, warning).await
    }
}
