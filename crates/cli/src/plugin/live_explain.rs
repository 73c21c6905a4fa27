//! `kubectl devheal explain POD`: the live pod, its node's NodeDeviceHealth and the cluster's
//! FailurePolicies run through the same attribution, policy and engine code as `devheal
//! explain` (crate::explain, which the controller's engine backs), plus what the pod's devices
//! report and the devheal conditions the pod carries. [`build`] and [`render`] are pure.

use anyhow::Context;
use devheal_core::EngineConfig;
use devheal_k8s::crd::{FailurePolicy, NodeDeviceHealth};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use serde::Serialize;

use super::status::{DeviceRow, device_row};
use super::text::{or_dash, stamp, table};
use crate::explain::{Explanation, explain};

/// Everything `explain` reads.
#[derive(Clone, Debug)]
pub struct ExplainInputs {
    pub pod: Pod,
    /// The NodeDeviceHealth of the pod's node (`None`: there is none, or no node yet).
    pub health: Option<NodeDeviceHealth>,
    pub policies: Vec<FailurePolicy>,
    pub notes: Vec<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LiveExplanation {
    pub pod: String,
    pub node: Option<String>,
    pub phase: Option<String>,
    /// The pod's devices as its node's agent reports them.
    pub devices: Vec<DeviceRow>,
    /// The pod's `devheal.io/*` conditions: what devheal already did.
    pub conditions: Vec<String>,
    /// The last action a FailurePolicy's status records for this pod.
    pub last_action: Option<String>,
    /// What the engine makes of the pod, as `devheal explain` prints it.
    pub explanation: Explanation,
    pub notes: Vec<String>,
}

/// Runs the engine over the live objects.
pub fn build(inputs: &ExplainInputs, now: Timestamp) -> anyhow::Result<LiveExplanation> {
    let meta = &inputs.pod.metadata;
    let name = format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default()
    );
    let node = inputs.pod.spec.as_ref().and_then(|s| s.node_name.clone());
    let mut reports = Vec::new();
    if let Some(h) = &inputs.health {
        let loose: devheal_k8s::NodeDeviceHealth =
            serde_json::to_value(h)
                .and_then(serde_json::from_value)
                .with_context(|| format!("reading the NodeDeviceHealth of {}", or_dash(node.clone())))?;
        reports =
            loose.reports().with_context(|| format!("the NodeDeviceHealth of {}", or_dash(node.clone())))?;
    }
    let config = EngineConfig {
        policies: inputs.policies.iter().map(FailurePolicy::to_policy).collect(),
        ..EngineConfig::default()
    };
    let pod_json = serde_json::to_string(&inputs.pod).context("the pod as JSON")?;
    let explanation = explain(&pod_json, &format!("pod {name}"), &reports, config)?
        .into_iter()
        .next()
        .with_context(|| format!("the engine said nothing about pod {name}"))?;

    let devices = match (&inputs.health, &node) {
        (Some(h), Some(node)) => h
            .status
            .iter()
            .flat_map(|s| &s.devices)
            .filter(|d| explanation.devices.contains(&format!("{node}/{}/{}", d.resource, d.id)))
            .map(|d| device_row(node, d, now))
            .collect(),
        _ => Vec::new(),
    };
    let conditions = inputs
        .pod
        .status
        .iter()
        .flat_map(|s| s.conditions.iter().flatten())
        .filter(|c| c.type_.starts_with("devheal.io/"))
        .map(|c| {
            let since =
                c.last_transition_time.as_ref().map(|t| format!(" since {}", stamp(t.0))).unwrap_or_default();
            let message = c.message.as_deref().map(|m| format!(": {m}")).unwrap_or_default();
            format!("{}={}{since}{message}", c.type_, c.status)
        })
        .collect();
    let last_action = inputs.policies.iter().find_map(|p| {
        let a = p.status.as_ref()?.last_action.as_ref()?;
        (a.target == name).then(|| {
            format!(
                "{} by FailurePolicy {}/{} at {}: {}",
                a.action,
                p.metadata.namespace.as_deref().unwrap_or_default(),
                p.metadata.name.as_deref().unwrap_or_default(),
                stamp(a.at.0),
                a.reason
            )
        })
    });
    let mut notes = inputs.notes.clone();
    if node.is_some() && inputs.health.is_some() && devices.is_empty() {
        notes.push(format!(
            "no device of the node's NodeDeviceHealth is bound to {name} (the agent has not seen it use one)"
        ));
    }
    Ok(LiveExplanation {
        pod: name,
        node,
        phase: inputs.pod.status.as_ref().and_then(|s| s.phase.clone()),
        devices,
        conditions,
        last_action,
        explanation,
        notes,
    })
}

pub fn render(e: &LiveExplanation) -> String {
    let x = &e.explanation;
    let mut out = String::new();
    let on = e.node.as_deref().map_or_else(|| "not scheduled".to_string(), |n| format!("on node {n}"));
    out.push_str(&format!("Pod:        {} ({}) {on}\n", e.pod, or_dash(e.phase.clone())));
    out.push_str(&format!("Class:      {} (confidence {:.2})\n", x.class, x.confidence));
    let rule =
        x.rule.as_deref().map(|r| format!(", rule {r}")).unwrap_or_else(|| ", no rule matched".to_string());
    out.push_str(&format!("Policy:     {}{rule}\n", x.policy));
    if let Some(g) = &x.gang {
        out.push_str(&format!("Gang:       {g}\n"));
    }
    out.push_str(&format!("Action:     {}\n", x.action));
    if !x.evidence.is_empty() {
        out.push_str("Evidence:\n");
        for ev in &x.evidence {
            out.push_str(&format!("  - {ev}\n"));
        }
    }
    if !x.actions.is_empty() {
        out.push_str("Devheal would:\n");
        for a in &x.actions {
            out.push_str(&format!("  - {}\n", a.action.summary()));
        }
    }
    if e.devices.is_empty() {
        out.push_str("Devices:    none known\n");
    } else {
        out.push_str("Devices:\n");
        let rows: Vec<Vec<String>> = e
            .devices
            .iter()
            .map(|d| {
                vec![
                    d.device.clone(),
                    d.resource.clone(),
                    d.health.clone(),
                    or_dash(d.since.clone()),
                    or_dash(Some(d.reasons.join("; "))),
                ]
            })
            .collect();
        for line in table(&["DEVICE", "RESOURCE", "HEALTH", "SINCE", "REASONS"], &rows).lines() {
            out.push_str(&format!("  {line}\n"));
        }
    }
    if !e.conditions.is_empty() {
        out.push_str("Conditions:\n");
        for c in &e.conditions {
            out.push_str(&format!("  - {c}\n"));
        }
    }
    if let Some(a) = &e.last_action {
        out.push_str(&format!("Last action: {a}\n"));
    }
    if !e.notes.is_empty() {
        out.push_str("Notes:\n");
        for n in &e.notes {
            out.push_str(&format!("  - {n}\n"));
        }
    }
    out
}
