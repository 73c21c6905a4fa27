//! `kubectl devheal history NODE`: what happened to a node's devices, oldest first, from every
//! place devheal leaves a trace: its Events (about the node, its DeviceTaintRules and its pods),
//! the controller's state (each device's incidents and Degraded episodes, the cordon and its
//! probation, repair requests, breaker failures), the node itself (taints, the repair condition
//! and label) and its NodeDeviceHealth (each reason's first and last sighting). [`build`] and
//! [`render`] are pure.

use devheal_core::{DurableState, Health};
use devheal_k8s::actuator::{
    DEVICE_QUARANTINE_TAINT, REPAIR_LABEL, REPAIR_REQUESTED_CONDITION, UNHEALTHY_TAINT,
};
use devheal_k8s::crd::NodeDeviceHealth;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::jiff::Timestamp;
use serde::Serialize;

use super::text::{engine_time, or_dash, reason_line, source_name, stamp, table};

/// Everything `history` reads about one node.
#[derive(Clone, Debug, Default)]
pub struct HistoryInputs {
    pub node: String,
    pub node_object: Option<Node>,
    pub health: Option<NodeDeviceHealth>,
    /// devheal's Events about the node, its DeviceTaintRules and its pods.
    pub events: Vec<Event>,
    pub state: Option<DurableState>,
    pub notes: Vec<String>,
}

/// One thing that happened.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// When (`None`: standing now, with no time recorded).
    pub time: Option<String>,
    /// `event`, `health` (NodeDeviceHealth), `state` (the controller's state) or `node`.
    pub source: &'static str,
    /// The device, pod, rule or node it concerns.
    pub subject: String,
    pub what: String,
    #[serde(skip)]
    at: Option<Timestamp>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryReport {
    pub node: String,
    /// One line about where the node stands now.
    pub summary: String,
    pub entries: Vec<Entry>,
    pub notes: Vec<String>,
}

fn entry(
    at: Option<Timestamp>,
    source: &'static str,
    subject: impl Into<String>,
    what: impl Into<String>,
) -> Entry {
    Entry { time: at.map(stamp), source, subject: subject.into(), what: what.into(), at }
}

/// When an Event last happened: the series' last sighting, else its time, else when it was
/// written.
fn event_time(e: &Event) -> Option<Timestamp> {
    e.series
        .as_ref()
        .map(|s| s.last_observed_time.0)
        .or_else(|| e.event_time.as_ref().map(|t| t.0))
        .or_else(|| e.deprecated_last_timestamp.as_ref().map(|t| t.0))
        .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

fn event_entry(e: &Event) -> Entry {
    let subject = e
        .regarding
        .as_ref()
        .map(|r| {
            let kind = r.kind.clone().unwrap_or_default();
            match &r.namespace {
                Some(ns) if !ns.is_empty() => format!("{kind} {ns}/{}", r.name.clone().unwrap_or_default()),
                _ => format!("{kind} {}", r.name.clone().unwrap_or_default()),
            }
        })
        .unwrap_or_else(|| "-".to_string());
    let count = e.series.as_ref().map(|s| s.count).or(e.deprecated_count).filter(|c| *c > 1);
    let count = count.map(|c| format!(" (x{c})")).unwrap_or_default();
    let what = format!(
        "{} ({}): {}{count}",
        e.reason.clone().unwrap_or_default(),
        e.type_.clone().unwrap_or_default(),
        e.note.clone().unwrap_or_default()
    );
    entry(event_time(e), "event", subject, what)
}

/// The history, oldest first; what has no time comes last.
pub fn build(inputs: &HistoryInputs) -> HistoryReport {
    let node = inputs.node.as_str();
    let mut entries: Vec<Entry> = inputs.events.iter().map(event_entry).collect();

    let mut devices = 0;
    let mut not_healthy = 0;
    if let Some(status) = inputs.health.as_ref().and_then(|h| h.status.as_ref()) {
        devices = status.devices.len();
        for d in &status.devices {
            if d.health != Health::Healthy {
                not_healthy += 1;
                entries.push(entry(
                    d.since.as_ref().map(|t| t.0),
                    "health",
                    &d.id,
                    format!("{} (the agent's current health)", d.health.as_str()),
                ));
            }
            for r in &d.reasons {
                entries.push(entry(
                    Some(r.first_seen.0),
                    "health",
                    &d.id,
                    format!("first seen: {}", reason_line(r)),
                ));
                if r.last_seen != r.first_seen {
                    let code = r.code.map(|c| format!(" {c}")).unwrap_or_default();
                    entries.push(entry(
                        Some(r.last_seen.0),
                        "health",
                        &d.id,
                        format!("last seen: {}{code} ({} times in all)", source_name(r.source), r.count),
                    ));
                }
            }
        }
        for s in status.sources.iter().filter(|s| !s.available) {
            let message = s.message.as_deref().map(|m| format!(": {m}")).unwrap_or_default();
            entries.push(entry(
                s.since.as_ref().map(|t| t.0),
                "health",
                "agent",
                format!("source {} down{message}", s.name),
            ));
        }
    }

    let mut marks = Vec::new();
    if let Some(n) = &inputs.node_object {
        let taints = n.spec.as_ref().and_then(|s| s.taints.as_deref()).unwrap_or_default();
        let prefix = format!("{DEVICE_QUARANTINE_TAINT}-");
        for t in taints {
            let at = t.time_added.as_ref().map(|a| a.0);
            if t.key == UNHEALTHY_TAINT {
                marks.push(format!("cordoned ({})", or_dash(t.value.clone())));
                entries.push(entry(
                    at,
                    "node",
                    node,
                    format!("taint {UNHEALTHY_TAINT}={} (cordon)", or_dash(t.value.clone())),
                ));
            } else if t.key.starts_with(&prefix) {
                marks.push("quarantined device".to_string());
                let device = or_dash(t.value.clone());
                entries.push(entry(at, "node", device, format!("taint {} (device quarantined)", t.key)));
            }
        }
        let condition = n
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == REPAIR_REQUESTED_CONDITION));
        if let Some(c) = condition {
            let message = c.message.as_deref().map(|m| format!(": {m}")).unwrap_or_default();
            entries.push(entry(
                c.last_transition_time.as_ref().map(|t| t.0),
                "node",
                node,
                format!(
                    "condition {REPAIR_REQUESTED_CONDITION}={} ({}){message}",
                    c.status,
                    c.reason.clone().unwrap_or_default()
                ),
            ));
        }
        if let Some(label) = n.metadata.labels.as_ref().and_then(|l| l.get(REPAIR_LABEL)) {
            marks.push(format!("repair requested ({label})"));
            entries.push(entry(
                None,
                "node",
                node,
                format!("label {REPAIR_LABEL}={label} (repair requested)"),
            ));
        }
    }

    if let Some(state) = &inputs.state {
        for h in state.devices.iter().filter(|h| h.device.node == node) {
            for t in &h.incidents {
                entries.push(entry(
                    Some(engine_time(*t)),
                    "state",
                    &h.device.id,
                    "incident counted (repeat-offender history)",
                ));
            }
            for t in &h.degraded_episodes {
                entries.push(entry(
                    Some(engine_time(*t)),
                    "state",
                    &h.device.id,
                    "Degraded episode counted (repeat-offender history)",
                ));
            }
        }
        for c in state.cordons.iter().filter(|c| c.node == node) {
            let boot = c.boot_id.as_deref().map(|b| format!(" in boot {b}")).unwrap_or_default();
            entries.push(entry(None, "state", node, format!("cordoned by devheal{boot}")));
            if let Some(p) = c.probation_until {
                entries.push(entry(
                    Some(engine_time(p)),
                    "state",
                    node,
                    "probation ends: uncordoned unless it fails again",
                ));
            }
        }
        for r in state.repairs.iter().filter(|r| r.node == node) {
            for q in &r.requests {
                let subject = q.device.as_ref().map_or_else(|| node.to_string(), |d| d.id.clone());
                let boot = q.boot_id.as_deref().map(|b| format!(" in boot {b}")).unwrap_or_default();
                entries.push(entry(
                    None,
                    "state",
                    subject,
                    format!("repair requested: {}{boot}", q.kind.as_str()),
                ));
            }
        }
        for f in state.breaker.iter().flat_map(|b| &b.failures).filter(|f| f.node == node) {
            entries.push(entry(
                Some(engine_time(f.at)),
                "state",
                node,
                "node failure counted by the node breaker",
            ));
        }
    }

    // Oldest first; entries with no time (standing marks) last; ties keep the order above.
    entries.sort_by_key(|e| (e.at.is_none(), e.at));
    let mut summary = if inputs.health.is_some() {
        format!("{devices} devices, {not_healthy} not healthy")
    } else {
        "no NodeDeviceHealth".to_string()
    };
    for m in marks {
        summary.push_str(&format!("; {m}"));
    }
    HistoryReport { node: node.to_string(), summary, entries, notes: inputs.notes.clone() }
}

pub fn render(r: &HistoryReport) -> String {
    let mut out = format!("Node {}: {}\n\n", r.node, r.summary);
    if r.entries.is_empty() {
        out.push_str("Nothing recorded.\n");
    } else {
        let rows: Vec<Vec<String>> = r
            .entries
            .iter()
            .map(|e| {
                vec![
                    e.time.clone().unwrap_or_else(|| "(now)".to_string()),
                    e.source.to_string(),
                    e.subject.clone(),
                    e.what.clone(),
                ]
            })
            .collect();
        out.push_str(&table(&["TIME", "SOURCE", "SUBJECT", "WHAT"], &rows));
    }
    if !r.notes.is_empty() {
        out.push_str("\nNotes:\n");
        for n in &r.notes {
            out.push_str(&format!("  - {n}\n"));
        }
    }
    out
}
