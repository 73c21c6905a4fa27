//! Dry run: nothing is changed; each would-be action is answered with the sentence of what
//! would have been done, and written once as a Normal Event (reason [`DRY_RUN_REASON`]) on the
//! object the real action's Event would be about.

use devheal_core::{Action, PlannedAction};

use super::events::EventSpec;
use super::{
    ActuatorConfig, DRY_RUN_MEMORY_NS, DRY_RUN_REASON, DeviceTaintRuleSupport, KubeActuator, REPAIR_LABEL,
    REPAIR_REQUESTED_CONDITION, REPLACE_AT_CHECKPOINT_CONDITION, RESTART_IN_PLACE_CONDITION, UNHEALTHY_TAINT,
    WORKLOAD_FAILED_CONDITION, camel_static, device_taint_rule_name, dra_device, node_quarantine_taint_key,
    node_regarding, owner_regarding,
};

impl KubeActuator {
    /// Dry run: the Normal Event [`DRY_RUN_REASON`] saying what would have been done, on the
    /// object the real action's Event would be about (a gang's owner is found by listing its
    /// pods, a read). One per idempotency key: a dry run left on for a week writes one Event per
    /// would-be action, not one per decision. An Event that cannot be written is logged and
    /// tried again the next time the action is decided.
    pub(super) async fn dry_run_event(&self, planned: &PlannedAction, description: &str) {
        let key = &planned.idempotency_key;
        let now = self.now();
        match self.dry_run_events.lock() {
            Ok(mut seen) => {
                seen.retain(|_, t| now.since(*t).as_nanos() < DRY_RUN_MEMORY_NS);
                if seen.contains_key(key) {
                    return;
                }
            }
            Err(_) => return,
        }
        let (namespace, regarding) = match &planned.action {
            Action::MarkPod { pod, .. }
            | Action::EvictPod { pod, .. }
            | Action::ReplaceAtCheckpoint { pod, .. } => {
                (pod.namespace.clone(), Some(Self::pod_regarding(pod)))
            }
            Action::RestartGang { gang, .. } | Action::FailWorkload { gang, .. } => {
                let members = self.gang_members(gang).await.unwrap_or_default();
                (gang.namespace.clone(), owner_regarding(&members))
            }
            // The rule or taint does not exist in a dry run: the node it would be on.
            Action::QuarantineDevice { device, .. } | Action::ReleaseDevice { device, .. } => {
                ("default".to_string(), Some(node_regarding(&device.node, None)))
            }
            Action::CordonNode { node, .. }
            | Action::UncordonNode { node, .. }
            | Action::RequestRepair { node, .. }
            | Action::WithdrawRepair { node, .. } => {
                ("default".to_string(), Some(node_regarding(node, None)))
            }
            Action::Report { .. } => ("default".to_string(), None),
        };
        let action = match &planned.action {
            Action::ReplaceAtCheckpoint { .. } => "MarkPod",
            other => camel_static(other.label()),
        };
        let spec = EventSpec {
            namespace,
            regarding,
            reason: DRY_RUN_REASON,
            action,
            note: format!("dry run: {description}"),
            warning: false,
        };
        match self.emit(spec).await {
            Ok(()) => {
                if let Ok(mut seen) = self.dry_run_events.lock() {
                    seen.insert(key.clone(), now);
                }
            }
            Err(e) => tracing::warn!(
                action = planned.action.label(),
                incident = %key,
                error = %e.describe(),
                "could not write the dry-run Event"
            ),
        }
    }
}

/// The sentence a dry run answers with.
pub(super) fn would_do(action: &Action, config: &ActuatorConfig) -> String {
    match action {
        Action::MarkPod { pod, condition_type, reason, .. } => format!(
            "would set condition {condition_type}=True (reason {reason}) on pod {}/{} (uid {})",
            pod.namespace, pod.name, pod.uid
        ),
        Action::EvictPod { pod, reason } => {
            format!("would evict pod {}/{} (uid {}): {reason}", pod.namespace, pod.name, pod.uid)
        }
        Action::RestartGang { gang, incident, reason, in_place } if in_place.is_empty() => {
            format!("would restart gang {gang} by deleting its live pods (incident {incident}): {reason}")
        }
        Action::RestartGang { gang, incident, reason, in_place } => {
            let names: Vec<String> = in_place.iter().map(|p| p.name.clone()).collect();
            format!(
                "would restart gang {gang} (incident {incident}): {} in place by condition {RESTART_IN_PLACE_CONDITION}, deleting its other live pods: {reason}",
                names.join(", ")
            )
        }
        Action::FailWorkload { gang, reason } => {
            format!("would fail workload {gang}, marking its pods {WORKLOAD_FAILED_CONDITION}: {reason}")
        }
        Action::ReplaceAtCheckpoint { pod, gang, reason, .. } => format!(
            "would set condition {REPLACE_AT_CHECKPOINT_CONDITION}=True on pod {}/{} (uid {}) of gang {gang}: {reason}",
            pod.namespace, pod.name, pod.uid
        ),
        Action::QuarantineDevice { device, reason } => {
            match (&config.device_taint_rules, dra_device(device)) {
                (DeviceTaintRuleSupport::Served { .. }, Some(_)) => format!(
                    "would quarantine device {device} with DeviceTaintRule {} (NoSchedule): {reason}",
                    device_taint_rule_name(device)
                ),
                _ => format!(
                    "would quarantine device {device} with node taint {}:NoSchedule on node {}: {reason}",
                    node_quarantine_taint_key(device),
                    device.node
                ),
            }
        }
        Action::ReleaseDevice { device, reason } => format!("would release device {device}: {reason}"),
        Action::CordonNode { node, reason } => {
            format!("would cordon node {node} with taint {UNHEALTHY_TAINT}:NoSchedule: {reason}")
        }
        Action::UncordonNode { node, reason } => format!("would uncordon node {node}: {reason}"),
        Action::RequestRepair { node, kind, reason, .. } => format!(
            "would request repair {} on node {node} ({REPAIR_REQUESTED_CONDITION}, {REPAIR_LABEL}={}): {reason}",
            kind.as_str(),
            kind.as_str()
        ),
        Action::WithdrawRepair { node, reason } => format!(
            "would withdraw the repair request on node {node} ({REPAIR_REQUESTED_CONDITION}=False, label {REPAIR_LABEL} removed): {reason}"
        ),
        Action::Report { reason, message } => format!("would report {reason}: {message}"),
    }
}
