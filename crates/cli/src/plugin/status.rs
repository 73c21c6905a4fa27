//! `kubectl devheal status`: what is wrong now and what devheal has done about it, from the
//! objects read once: devices that are not Healthy (NodeDeviceHealth), the nodes that need
//! attention, NIC links down, at fault or flapping ([`super::network`]), quarantines (node taints and DeviceTaintRules), cordons, repair requests, the
//! budgets and breakers (FailurePolicy status and the controller's state ConfigMap), the
//! policies, the leader (the Lease), the versions of the device stack the agents report with
//! their nodes' health, and the staged upgrades (UpgradePlan) with the health of each stage's
//! nodes. [`build`] and [`render`] are pure: objects in, a report
//! and its text out.

use std::collections::{BTreeMap, BTreeSet};

use devheal_core::{DurableState, Health};
use devheal_k8s::actuator::{
    DEVICE_QUARANTINE_TAINT, REPAIR_LABEL, REPAIR_REQUESTED_CONDITION, RULE_DEVICE_ANNOTATION,
    RULE_REASON_ANNOTATION, UNHEALTHY_TAINT,
};
use devheal_k8s::crd::{BudgetStatus, DeviceStatus, FailurePolicy, NodeDeviceHealth};
use devheal_k8s::upgrade_plan::{RevisionRef, UpgradePlan};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use serde::Serialize;
use serde_json::Value;

use super::text::{age, clip, engine_time, or_dash, reason_line, stamp, table};

/// Everything `status` reads.
#[derive(Clone, Debug, Default)]
pub struct StatusInputs {
    pub nodes: Vec<Node>,
    pub health: Vec<NodeDeviceHealth>,
    /// DeviceTaintRules labelled `app.kubernetes.io/managed-by=devheal`, as JSON.
    pub device_taint_rules: Vec<Value>,
    pub policies: Vec<FailurePolicy>,
    pub upgrade_plans: Vec<UpgradePlan>,
    /// The controller's durable state (`<lease>-state`, key `state.json`), when it was read.
    pub state: Option<DurableState>,
    /// Where the state was read from (`devheal-system/devheal-controller-state`).
    pub state_source: String,
    pub lease: Option<Lease>,
    /// What could not be read, and other things the reader should know.
    pub notes: Vec<String>,
}

/// What `status` reports (its JSON form with `-o json`).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    pub leader: Leader,
    pub devices: Vec<DeviceRow>,
    pub nodes: Vec<NodeRow>,
    pub network: Vec<super::network::LinkRow>,
    pub quarantines: Vec<Quarantine>,
    pub cordons: Vec<Cordon>,
    pub repairs: Vec<Repair>,
    /// The cluster-wide budgets as the controller last wrote them into a FailurePolicy's status.
    pub budgets: Option<Budgets>,
    /// The breakers as the controller last saved them (its state ConfigMap).
    pub breakers: Option<Breakers>,
    pub policies: Vec<PolicyRow>,
    /// Each version of the device stack the agents report, with its nodes and their health.
    pub versions: Vec<VersionRow>,
    /// The staged upgrades (UpgradePlan) and the health of each stage's nodes.
    pub upgrades: Vec<UpgradeRow>,
    pub notes: Vec<String>,
    /// When this was read (ages in the text are relative to it).
    pub at: String,
}

#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Leader {
    /// The Lease's holder (`None`: nobody holds it).
    pub holder: Option<String>,
    pub renewed: Option<String>,
    /// The holder has not renewed within the Lease's duration.
    pub expired: bool,
    #[serde(skip)]
    renewed_age: Option<String>,
}

/// A device that is not Healthy.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceRow {
    pub node: String,
    pub device: String,
    pub resource: String,
    pub health: String,
    pub since: Option<String>,
    pub reasons: Vec<String>,
    pub pods: Vec<String>,
    #[serde(skip)]
    since_age: Option<String>,
}

/// A node with something wrong or something devheal did to it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRow {
    pub node: String,
    /// The node's Ready condition (`None`: no Node object, or no such condition).
    pub ready: Option<String>,
    pub devices: usize,
    pub not_healthy: usize,
    pub cordon: Option<String>,
    pub quarantines: usize,
    pub repair: Option<String>,
    /// When its agent last wrote its NodeDeviceHealth (`None`: no NodeDeviceHealth).
    pub heartbeat: Option<String>,
    /// The agent's sources that cannot see what they watch.
    pub sources_down: Vec<String>,
    #[serde(skip)]
    heartbeat_age: Option<String>,
}

/// A device kept from new pods.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Quarantine {
    pub node: String,
    pub device: String,
    /// `taint devheal.io/device-quarantine-…` or `DeviceTaintRule <name>`.
    pub by: String,
    pub since: Option<String>,
    pub reason: Option<String>,
    #[serde(skip)]
    since_age: Option<String>,
}

/// A node devheal cordoned (its taint), or the controller's state says it did.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Cordon {
    pub node: String,
    /// The taint's value: `cordoned` (devheal set `unschedulable`), `already-cordoned`; `None`
    /// when only the controller's state records the cordon.
    pub taint: Option<String>,
    pub unschedulable: bool,
    pub since: Option<String>,
    /// Rebooted already: uncordoned then unless it fails again.
    pub probation_until: Option<String>,
    #[serde(skip)]
    since_age: Option<String>,
}

/// A standing repair request.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Repair {
    pub node: String,
    /// The `devheal.io/repair` label's value.
    pub label: Option<String>,
    /// The `devheal.io/RepairRequested` condition's status and reason (`True ResetDevice`).
    pub condition: Option<String>,
    pub since: Option<String>,
    pub message: Option<String>,
    /// The requests the controller's state holds (`reset_device GPU-1`, `reboot_node`).
    pub requests: Vec<String>,
    #[serde(skip)]
    since_age: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Budgets {
    /// The FailurePolicy whose status they were read from.
    pub from: String,
    #[serde(flatten)]
    pub budget: BudgetStatus,
}

#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Breakers {
    pub from: String,
    pub node_breaker_open: bool,
    pub node_breaker_open_since: Option<String>,
    /// Node failures the breaker counts (within its window when it was saved).
    pub node_failures: usize,
    pub last_node_failure: Option<String>,
    pub held_versions: Vec<String>,
    pub progress_breaker_open: bool,
    pub progress_breaker_open_since: Option<String>,
    pub evictions_last_minute: usize,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRow {
    pub policy: String,
    pub matched_pods: u64,
    pub actions_taken: BTreeMap<String, u64>,
    /// `EvictPod ml/trainer-0 (5m ago): …`.
    pub last_action: Option<String>,
}

/// One version of a piece of the device stack, as the agents' sources report it (NVML reports
/// the driver's), and the nodes that run it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionRow {
    /// What the version is of: `driver` (NVML's report), else the source's name.
    pub component: String,
    pub version: String,
    pub nodes: usize,
    pub devices: usize,
    pub not_healthy: usize,
    /// Its nodes with a device not Healthy (at most [`MAX_NAMED_NODES`]).
    pub nodes_not_healthy: Vec<String>,
    /// The engine's version canary holds remediation on its nodes: the budgets or the
    /// controller's state name it (`driver 575.57.08`, the tag the controller counts nodes under,
    /// from the same NVML report).
    pub held: bool,
}

/// A staged upgrade.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UpgradeRow {
    /// `namespace/name`.
    pub plan: String,
    pub daemon_set: String,
    /// `DevicePlugin`, `Driver`, `DraDriver`.
    pub component: String,
    /// `Pending`, `Progressing`, `Paused`, `Completed`, `RollingBack`, `RolledBack`, `Invalid`.
    pub phase: String,
    /// The stage under way (1 is the canary; 0 before the first).
    pub stage: u32,
    /// Stages the plan writes (later waves repeat the last one's size).
    pub stages: usize,
    pub upgraded_nodes: u32,
    pub pool_nodes: u32,
    /// The revision the pool ran and the one rolled out (their images where known).
    pub from: Option<String>,
    pub to: Option<String>,
    pub reason: Option<String>,
    pub message: Option<String>,
    /// The nodes each stage took up and their devices' health now.
    pub stage_nodes: Vec<UpgradeStageRow>,
}

/// The nodes one stage of an upgrade took up.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UpgradeStageRow {
    pub stage: u32,
    pub nodes: Vec<String>,
    /// Their devices, and those not Healthy now (NodeDeviceHealth).
    pub devices: usize,
    pub not_healthy: usize,
    /// Their devices Unhealthy or Unknown before they were taken up.
    pub not_healthy_before: u32,
}

/// Most node names a row lists.
pub const MAX_NAMED_NODES: usize = 5;

/// What a source's version is of.
fn component_of(source: &str) -> String {
    match source {
        devheal_k8s::crd::NVML_SOURCE => "driver".to_string(),
        // The engine's version canary names it so (`device plugin <version>`).
        devheal_k8s::crd::DEVICE_PLUGIN_POD_SOURCE => "device plugin".to_string(),
        other => other.to_string(),
    }
}

/// A serde unit variant's name (`Progressing`).
fn variant_name<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(Value::String(s)) => s,
        _ => "-".to_string(),
    }
}

fn revision(r: &RevisionRef) -> String {
    match &r.images {
        Some(images) if !images.is_empty() => format!("{} ({images})", r.hash),
        _ => r.hash.clone(),
    }
}

/// Per node with a NodeDeviceHealth: its devices, those not Healthy, its last heartbeat and
/// its sources that are down.
type PerNode = BTreeMap<String, (usize, usize, Option<Timestamp>, Vec<String>)>;

/// Devices and devices not Healthy on `node` (none without a NodeDeviceHealth).
fn counts_of(per_node: &PerNode, node: &str) -> (usize, usize) {
    per_node.get(node).map_or((0, 0), |(devices, not_healthy, ..)| (*devices, *not_healthy))
}

/// The versions the agents report, each with its nodes and their devices' health; the version
/// with the most devices not Healthy first within a component.
fn versions(inputs: &StatusInputs, per_node: &PerNode) -> Vec<VersionRow> {
    let mut held: BTreeSet<&str> = inputs
        .policies
        .iter()
        .filter_map(|p| p.status.as_ref()?.budget.as_ref())
        .flat_map(|b| b.held_versions.iter().map(String::as_str))
        .collect();
    if let Some(breaker) = inputs.state.as_ref().and_then(|s| s.breaker.as_ref()) {
        held.extend(breaker.held_versions.iter().map(String::as_str));
    }
    let mut by: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for h in &inputs.health {
        let node = h.metadata.name.clone().unwrap_or_else(|| h.spec.node_name.clone());
        let Some(status) = &h.status else { continue };
        for source in &status.sources {
            if let Some(version) = source.version.as_deref().filter(|v| !v.is_empty()) {
                by.entry((component_of(&source.name), version.to_string())).or_default().insert(node.clone());
            }
        }
    }
    let mut rows: Vec<VersionRow> = by
        .into_iter()
        .map(|((component, version), nodes)| {
            let (mut devices, mut not_healthy) = (0, 0);
            let mut nodes_not_healthy = Vec::new();
            for n in &nodes {
                let (d, u) = counts_of(per_node, n);
                devices += d;
                not_healthy += u;
                if u > 0 && nodes_not_healthy.len() < MAX_NAMED_NODES {
                    nodes_not_healthy.push(n.clone());
                }
            }
            let held = held.contains(format!("{component} {version}").as_str());
            VersionRow {
                component,
                version,
                nodes: nodes.len(),
                devices,
                not_healthy,
                nodes_not_healthy,
                held,
            }
        })
        .collect();
    rows.sort_by(|a, b| {
        a.component.cmp(&b.component).then(b.not_healthy.cmp(&a.not_healthy)).then(a.version.cmp(&b.version))
    });
    rows
}

fn upgrades(inputs: &StatusInputs, per_node: &PerNode) -> Vec<UpgradeRow> {
    let mut rows: Vec<UpgradeRow> = inputs
        .upgrade_plans
        .iter()
        .map(|plan| {
            let status = plan.status.clone().unwrap_or_default();
            let mut stages: BTreeMap<u32, UpgradeStageRow> = BTreeMap::new();
            for n in &status.nodes {
                let row = stages.entry(n.stage).or_insert_with(|| UpgradeStageRow {
                    stage: n.stage,
                    nodes: Vec::new(),
                    devices: 0,
                    not_healthy: 0,
                    not_healthy_before: 0,
                });
                let (d, u) = counts_of(per_node, &n.name);
                row.nodes.push(n.name.clone());
                row.devices += d;
                row.not_healthy += u;
                row.not_healthy_before += n.unhealthy_before;
            }
            UpgradeRow {
                plan: format!(
                    "{}/{}",
                    plan.metadata.namespace.as_deref().unwrap_or_default(),
                    plan.metadata.name.as_deref().unwrap_or_default()
                ),
                daemon_set: plan.spec.daemon_set.clone(),
                component: variant_name(&plan.spec.component),
                phase: variant_name(&status.phase),
                stage: status.stage,
                stages: plan.spec.stages.len(),
                upgraded_nodes: status.upgraded_nodes,
                pool_nodes: status.pool_nodes,
                from: status.from_revision.as_ref().map(revision),
                to: status.to_revision.as_ref().map(revision),
                reason: status.reason.clone(),
                message: status.message.clone(),
                stage_nodes: stages.into_values().collect(),
            }
        })
        .collect();
    rows.sort_by(|a, b| a.plan.cmp(&b.plan));
    rows
}

/// A NodeDeviceHealth device as a row.
pub fn device_row(node: &str, d: &DeviceStatus, now: Timestamp) -> DeviceRow {
    DeviceRow {
        node: node.to_string(),
        device: d.id.clone(),
        resource: d.resource.clone(),
        health: d.health.as_str().to_string(),
        since: d.since.as_ref().map(|t| stamp(t.0)),
        since_age: d.since.as_ref().map(|t| age(now, t.0)),
        reasons: d.reasons.iter().map(reason_line).collect(),
        pods: d.pods.iter().map(|p| format!("{}/{}", p.namespace, p.name)).collect(),
    }
}

fn node_name(n: &Node) -> String {
    n.metadata.name.clone().unwrap_or_default()
}

fn ready(n: &Node) -> Option<String> {
    let conditions = n.status.as_ref()?.conditions.as_ref()?;
    conditions.iter().find(|c| c.type_ == "Ready").map(|c| c.status.clone())
}

fn repair_condition(n: &Node) -> Option<&k8s_openapi::api::core::v1::NodeCondition> {
    n.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == REPAIR_REQUESTED_CONDITION)
}

fn taints(n: &Node) -> &[k8s_openapi::api::core::v1::Taint] {
    n.spec.as_ref().and_then(|s| s.taints.as_deref()).unwrap_or_default()
}

fn quarantine_taint_prefix() -> String {
    format!("{DEVICE_QUARANTINE_TAINT}-")
}

/// The quarantines on nodes (taints) and in DeviceTaintRules.
fn quarantines(inputs: &StatusInputs, now: Timestamp) -> Vec<Quarantine> {
    let prefix = quarantine_taint_prefix();
    let mut out = Vec::new();
    for n in &inputs.nodes {
        for t in taints(n).iter().filter(|t| t.key.starts_with(&prefix)) {
            out.push(Quarantine {
                node: node_name(n),
                device: or_dash(t.value.clone()),
                by: format!("taint {}", t.key),
                since: t.time_added.as_ref().map(|a| stamp(a.0)),
                since_age: t.time_added.as_ref().map(|a| age(now, a.0)),
                reason: None,
            });
        }
    }
    for rule in &inputs.device_taint_rules {
        let meta = &rule["metadata"];
        // The annotation names the device `node/resource/id`; node names hold no slash.
        let annotated = meta["annotations"][RULE_DEVICE_ANNOTATION].as_str().unwrap_or_default();
        let node = annotated.split_once('/').map_or("-", |(n, _)| n);
        let selector = &rule["spec"]["deviceSelector"];
        let device = ["driver", "pool", "device"]
            .iter()
            .map(|k| selector[k].as_str().unwrap_or_default())
            .collect::<Vec<_>>()
            .join("/");
        let created: Option<Timestamp> = meta["creationTimestamp"].as_str().and_then(|s| s.parse().ok());
        out.push(Quarantine {
            node: node.to_string(),
            device,
            by: format!("DeviceTaintRule {}", meta["name"].as_str().unwrap_or_default()),
            since: created.map(stamp),
            since_age: created.map(|c| age(now, c)),
            reason: meta["annotations"][RULE_REASON_ANNOTATION].as_str().map(str::to_string),
        });
    }
    out.sort_by(|a, b| (&a.node, &a.device).cmp(&(&b.node, &b.device)));
    out
}

fn cordons(inputs: &StatusInputs, now: Timestamp) -> Vec<Cordon> {
    let mut out: BTreeMap<String, Cordon> = BTreeMap::new();
    for n in &inputs.nodes {
        if let Some(t) = taints(n).iter().find(|t| t.key == UNHEALTHY_TAINT) {
            let name = node_name(n);
            out.insert(
                name.clone(),
                Cordon {
                    node: name,
                    taint: t.value.clone(),
                    unschedulable: n.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false),
                    since: t.time_added.as_ref().map(|a| stamp(a.0)),
                    since_age: t.time_added.as_ref().map(|a| age(now, a.0)),
                    probation_until: None,
                },
            );
        }
    }
    for c in inputs.state.iter().flat_map(|s| &s.cordons) {
        let unschedulable = inputs
            .nodes
            .iter()
            .find(|n| node_name(n) == c.node)
            .and_then(|n| n.spec.as_ref()?.unschedulable)
            .unwrap_or(false);
        let entry = out.entry(c.node.clone()).or_insert_with(|| Cordon {
            node: c.node.clone(),
            taint: None,
            unschedulable,
            since: None,
            since_age: None,
            probation_until: None,
        });
        entry.probation_until = c.probation_until.map(|t| stamp(engine_time(t)));
    }
    out.into_values().collect()
}

fn repairs(inputs: &StatusInputs, now: Timestamp) -> Vec<Repair> {
    let mut out: BTreeMap<String, Repair> = BTreeMap::new();
    for n in &inputs.nodes {
        let label = n.metadata.labels.as_ref().and_then(|l| l.get(REPAIR_LABEL)).cloned();
        let condition = repair_condition(n).filter(|c| c.status == "True");
        if label.is_none() && condition.is_none() {
            continue;
        }
        let name = node_name(n);
        let since = condition.and_then(|c| c.last_transition_time.as_ref()).map(|t| t.0);
        out.insert(
            name.clone(),
            Repair {
                node: name,
                label,
                condition: condition.map(|c| {
                    format!("{} {}", c.status, c.reason.clone().unwrap_or_default()).trim().to_string()
                }),
                since: since.map(stamp),
                since_age: since.map(|t| age(now, t)),
                message: condition.and_then(|c| c.message.clone()),
                requests: Vec::new(),
            },
        );
    }
    for r in inputs.state.iter().flat_map(|s| &s.repairs) {
        let entry = out.entry(r.node.clone()).or_insert_with(|| Repair {
            node: r.node.clone(),
            label: None,
            condition: None,
            since: None,
            since_age: None,
            message: None,
            requests: Vec::new(),
        });
        for q in &r.requests {
            let device = q.device.as_ref().map(|d| format!(" {}", d.id)).unwrap_or_default();
            entry.requests.push(format!("{}{device}", q.kind.as_str()));
        }
    }
    out.into_values().collect()
}

fn leader(lease: Option<&Lease>, now: Timestamp) -> Leader {
    let Some(spec) = lease.and_then(|l| l.spec.as_ref()) else { return Leader::default() };
    let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
    let renewed = spec.renew_time.as_ref().map(|t| t.0);
    let expired = match (renewed, spec.lease_duration_seconds) {
        (Some(r), Some(d)) => now.as_second() > r.as_second() + i64::from(d),
        _ => holder.is_some(),
    };
    Leader { holder, renewed: renewed.map(stamp), renewed_age: renewed.map(|r| age(now, r)), expired }
}

fn policy_row(p: &FailurePolicy, now: Timestamp) -> PolicyRow {
    let name = format!(
        "{}/{}",
        p.metadata.namespace.as_deref().unwrap_or_default(),
        p.metadata.name.as_deref().unwrap_or_default()
    );
    let status = p.status.clone().unwrap_or_default();
    PolicyRow {
        policy: name,
        matched_pods: status.matched_pods,
        actions_taken: status.actions_taken,
        last_action: status
            .last_action
            .map(|a| format!("{} {} ({} ago): {}", a.action, a.target, age(now, a.at.0), a.reason)),
    }
}

/// The report, from what was read at `now`.
pub fn build(inputs: &StatusInputs, now: Timestamp) -> StatusReport {
    let mut devices = Vec::new();
    let mut per_node: PerNode = BTreeMap::new();
    for h in &inputs.health {
        let node = h.metadata.name.clone().unwrap_or_else(|| h.spec.node_name.clone());
        let Some(status) = &h.status else {
            per_node.insert(node, (0, 0, None, Vec::new()));
            continue;
        };
        let mut not_healthy = 0;
        for d in status.devices.iter().filter(|d| d.health != Health::Healthy) {
            not_healthy += 1;
            devices.push(device_row(&node, d, now));
        }
        let down = status
            .sources
            .iter()
            .filter(|s| !s.available)
            .map(|s| match &s.message {
                Some(m) => format!("{}: {m}", s.name),
                None => s.name.clone(),
            })
            .collect();
        per_node.insert(
            node,
            (status.devices.len(), not_healthy, status.last_heartbeat.as_ref().map(|t| t.0), down),
        );
    }
    let quarantines = quarantines(inputs, now);
    let cordons = cordons(inputs, now);
    let repairs = repairs(inputs, now);

    // The nodes that need attention: not Ready, a device not Healthy, a source down, or a mark.
    let mut names: BTreeSet<String> = inputs.nodes.iter().map(node_name).collect();
    names.extend(per_node.keys().cloned());
    names.extend(quarantines.iter().map(|q| q.node.clone()));
    names.extend(cordons.iter().map(|c| c.node.clone()));
    names.extend(repairs.iter().map(|r| r.node.clone()));
    names.remove("-");
    let mut nodes = Vec::new();
    for name in names {
        let object = inputs.nodes.iter().find(|n| node_name(n) == name);
        let ready = object.and_then(ready);
        let (count, not_healthy, heartbeat, sources_down) = per_node.get(&name).cloned().unwrap_or_default();
        let cordon = cordons
            .iter()
            .find(|c| c.node == name)
            .map(|c| c.taint.clone().unwrap_or_else(|| "in controller state".to_string()));
        let quarantined = quarantines.iter().filter(|q| q.node == name).count();
        let repair = repairs.iter().find(|r| r.node == name).map(|r| {
            r.label.clone().or_else(|| r.requests.first().cloned()).unwrap_or_else(|| "requested".to_string())
        });
        let not_ready = object.is_some() && ready.as_deref() != Some("True");
        if not_ready
            || not_healthy > 0
            || !sources_down.is_empty()
            || cordon.is_some()
            || quarantined > 0
            || repair.is_some()
        {
            nodes.push(NodeRow {
                node: name,
                ready,
                devices: count,
                not_healthy,
                cordon,
                quarantines: quarantined,
                repair,
                heartbeat: heartbeat.map(stamp),
                heartbeat_age: heartbeat.map(|h| age(now, h)),
                sources_down,
            });
        }
    }

    let budgets = inputs.policies.iter().find_map(|p| {
        let budget = p.status.as_ref()?.budget.clone()?;
        let from = format!(
            "FailurePolicy {}/{}",
            p.metadata.namespace.as_deref().unwrap_or_default(),
            p.metadata.name.as_deref().unwrap_or_default()
        );
        Some(Budgets { from, budget })
    });
    let breakers = inputs.state.as_ref().map(|s| {
        let b = s.breaker.clone().unwrap_or_default();
        let p = s.progress_breaker.clone().unwrap_or_default();
        Breakers {
            from: format!("ConfigMap {}", inputs.state_source),
            node_breaker_open: b.open_since.is_some(),
            node_breaker_open_since: b.open_since.map(|t| stamp(engine_time(t))),
            node_failures: b.failures.len(),
            last_node_failure: b.last_failure.map(|t| stamp(engine_time(t))),
            held_versions: b.held_versions,
            progress_breaker_open: p.open_since.is_some(),
            progress_breaker_open_since: p.open_since.map(|t| stamp(engine_time(t))),
            evictions_last_minute: s.evictions.len(),
        }
    });
    let mut policies: Vec<PolicyRow> = inputs.policies.iter().map(|p| policy_row(p, now)).collect();
    policies.sort_by(|a, b| a.policy.cmp(&b.policy));

    let versions = versions(inputs, &per_node);
    let upgrades = upgrades(inputs, &per_node);

    let mut notes = inputs.notes.clone();
    if inputs.lease.is_none() {
        notes.push(
            "no controller Lease found: is the devheal controller running (see --namespace)?".to_string(),
        );
    }
    StatusReport {
        leader: leader(inputs.lease.as_ref(), now),
        devices,
        nodes,
        network: super::network::links(&inputs.health, now),
        quarantines,
        cordons,
        repairs,
        budgets,
        breakers,
        policies,
        versions,
        upgrades,
        notes,
        at: stamp(now),
    }
}

fn section(out: &mut String, title: &str, count: usize, body: impl FnOnce() -> String) {
    if count == 0 {
        out.push_str(&format!("{title}: none\n\n"));
    } else {
        out.push_str(&format!("{title} ({count}):\n"));
        out.push_str(&body());
        out.push('\n');
    }
}

fn yes_no(b: bool, yes: &str, no: &str) -> String {
    if b { yes.to_string() } else { no.to_string() }
}

/// The report as text: a line for the leader, then one table per kind of thing.
pub fn render(r: &StatusReport) -> String {
    let mut out = String::new();
    let leader = match (&r.leader.holder, &r.leader.renewed_age) {
        (None, _) => "none (nobody holds the Lease: no controller acts)".to_string(),
        (Some(h), Some(a)) if r.leader.expired => format!("{h} (EXPIRED: last renewed {a} ago)"),
        (Some(h), Some(a)) => format!("{h} (renewed {a} ago)"),
        (Some(h), None) => h.clone(),
    };
    out.push_str(&format!("Leader: {leader}\n\n"));

    section(&mut out, "Devices not healthy", r.devices.len(), || {
        let rows: Vec<Vec<String>> = r
            .devices
            .iter()
            .map(|d| {
                vec![
                    d.node.clone(),
                    d.device.clone(),
                    d.resource.clone(),
                    d.health.clone(),
                    or_dash(d.since_age.clone()),
                    or_dash(Some(d.pods.join(","))),
                    or_dash(Some(clip(&d.reasons.join("; "), 80))),
                ]
            })
            .collect();
        table(&["NODE", "DEVICE", "RESOURCE", "HEALTH", "SINCE", "PODS", "REASONS"], &rows)
    });
    section(&mut out, "Nodes needing attention", r.nodes.len(), || {
        let rows: Vec<Vec<String>> = r
            .nodes
            .iter()
            .map(|n| {
                vec![
                    n.node.clone(),
                    or_dash(n.ready.clone()),
                    format!("{}/{}", n.not_healthy, n.devices),
                    or_dash(n.cordon.clone()),
                    n.quarantines.to_string(),
                    or_dash(n.repair.clone()),
                    n.heartbeat_age.clone().unwrap_or_else(|| "no NodeDeviceHealth".to_string()),
                    or_dash(Some(clip(&n.sources_down.join("; "), 60))),
                ]
            })
            .collect();
        table(
            &["NODE", "READY", "NOT HEALTHY", "CORDON", "QUARANTINES", "REPAIR", "HEARTBEAT", "SOURCES DOWN"],
            &rows,
        )
    });
    section(&mut out, "Network links", r.network.len(), || super::network::render(&r.network));
    section(&mut out, "Quarantines", r.quarantines.len(), || {
        let rows: Vec<Vec<String>> = r
            .quarantines
            .iter()
            .map(|q| {
                vec![
                    q.node.clone(),
                    q.device.clone(),
                    q.by.clone(),
                    or_dash(q.since_age.clone()),
                    or_dash(q.reason.clone()),
                ]
            })
            .collect();
        table(&["NODE", "DEVICE", "BY", "SINCE", "REASON"], &rows)
    });
    section(&mut out, "Cordons", r.cordons.len(), || {
        let rows: Vec<Vec<String>> = r
            .cordons
            .iter()
            .map(|c| {
                vec![
                    c.node.clone(),
                    c.taint.clone().unwrap_or_else(|| "(no taint; in controller state)".to_string()),
                    yes_no(c.unschedulable, "yes", "no"),
                    or_dash(c.since_age.clone()),
                    or_dash(c.probation_until.clone()),
                ]
            })
            .collect();
        table(&["NODE", "TAINT", "UNSCHEDULABLE", "SINCE", "PROBATION UNTIL"], &rows)
    });
    section(&mut out, "Repair requests", r.repairs.len(), || {
        let rows: Vec<Vec<String>> = r
            .repairs
            .iter()
            .map(|p| {
                vec![
                    p.node.clone(),
                    or_dash(p.label.clone()),
                    or_dash(p.condition.clone()),
                    or_dash(p.since_age.clone()),
                    or_dash(Some(p.requests.join(", "))),
                    or_dash(p.message.as_deref().map(|m| clip(m, 60))),
                ]
            })
            .collect();
        table(&["NODE", "LABEL", "CONDITION", "SINCE", "REQUESTS", "MESSAGE"], &rows)
    });

    match &r.budgets {
        None => {
            out.push_str("Budgets: not reported yet (no FailurePolicy carries a status with budgets)\n\n")
        }
        Some(b) => {
            out.push_str(&format!("Budgets (from {}):\n", b.from));
            let held = if b.budget.held_versions.is_empty() {
                "none".to_string()
            } else {
                b.budget.held_versions.join(", ")
            };
            let rows = vec![
                vec![
                    "node breaker".to_string(),
                    yes_no(b.budget.breaker_open, "OPEN: remediation of nodes held", "closed"),
                ],
                vec![
                    "progress breaker".to_string(),
                    yes_no(
                        b.budget.progress_breaker_open,
                        "OPEN: restarts for progress alone held",
                        "closed",
                    ),
                ],
                vec![
                    "quarantined nodes".to_string(),
                    format!("{} of at most {}", b.budget.quarantined_nodes, b.budget.quarantine_node_limit),
                ],
                vec!["evictions last minute".to_string(), b.budget.evictions_last_minute.to_string()],
                vec!["held versions".to_string(), held],
            ];
            for line in table(&["", ""], &rows).lines().skip(1) {
                out.push_str(&format!("  {line}\n"));
            }
            out.push('\n');
        }
    }
    match &r.breakers {
        None => out.push_str("Breakers: controller state not read\n\n"),
        Some(b) => {
            out.push_str(&format!("Breakers (from {}):\n", b.from));
            let node = match &b.node_breaker_open_since {
                Some(s) => format!("OPEN since {s}"),
                None => "closed".to_string(),
            };
            let progress = match &b.progress_breaker_open_since {
                Some(s) => format!("OPEN since {s}"),
                None => "closed".to_string(),
            };
            let failures = match &b.last_node_failure {
                Some(l) => format!("{} (last {l})", b.node_failures),
                None => b.node_failures.to_string(),
            };
            let rows = vec![
                vec!["node breaker".to_string(), node],
                vec!["node failures counted".to_string(), failures],
                vec!["progress breaker".to_string(), progress],
                vec!["evictions last minute".to_string(), b.evictions_last_minute.to_string()],
            ];
            for line in table(&["", ""], &rows).lines().skip(1) {
                out.push_str(&format!("  {line}\n"));
            }
            out.push('\n');
        }
    }
    section(&mut out, "Policies", r.policies.len(), || {
        let rows: Vec<Vec<String>> = r
            .policies
            .iter()
            .map(|p| {
                let taken: Vec<String> = p.actions_taken.iter().map(|(a, n)| format!("{a}={n}")).collect();
                vec![
                    p.policy.clone(),
                    p.matched_pods.to_string(),
                    or_dash(Some(taken.join(","))),
                    or_dash(p.last_action.as_deref().map(|a| clip(a, 80))),
                ]
            })
            .collect();
        table(&["POLICY", "MATCHED", "ACTIONS TAKEN", "LAST ACTION"], &rows)
    });
    section(&mut out, "Versions", r.versions.len(), || {
        let rows: Vec<Vec<String>> = r
            .versions
            .iter()
            .map(|v| {
                vec![
                    v.component.clone(),
                    v.version.clone(),
                    v.nodes.to_string(),
                    format!("{}/{}", v.not_healthy, v.devices),
                    or_dash(Some(v.nodes_not_healthy.join(","))),
                    yes_no(v.held, "HELD: remediation on its nodes held", "-"),
                ]
            })
            .collect();
        table(&["COMPONENT", "VERSION", "NODES", "NOT HEALTHY", "ON NODES", "CANARY"], &rows)
    });
    section(&mut out, "Upgrades", r.upgrades.len(), || {
        let rows: Vec<Vec<String>> = r
            .upgrades
            .iter()
            .map(|u| {
                let stage = if u.stage as usize <= u.stages {
                    format!("{}/{}", u.stage, u.stages)
                } else {
                    format!("{} (waves after {})", u.stage, u.stages)
                };
                let why = match (&u.reason, &u.message) {
                    (Some(r), Some(m)) => Some(clip(&format!("{r}: {m}"), 80)),
                    (Some(r), None) => Some(r.clone()),
                    (None, m) => m.as_deref().map(|m| clip(m, 80)),
                };
                vec![
                    u.plan.clone(),
                    format!("{} ({})", u.daemon_set, u.component),
                    u.phase.clone(),
                    stage,
                    format!("{}/{}", u.upgraded_nodes, u.pool_nodes),
                    or_dash(u.to.as_deref().map(|t| clip(t, 60))),
                    or_dash(why),
                ]
            })
            .collect();
        let mut text =
            table(&["PLAN", "DAEMONSET", "PHASE", "STAGE", "UPGRADED", "TO REVISION", "REASON"], &rows);
        let stage_rows: Vec<Vec<String>> = r
            .upgrades
            .iter()
            .flat_map(|u| {
                u.stage_nodes.iter().map(|s| {
                    let mut names: Vec<String> = s.nodes.iter().take(MAX_NAMED_NODES).cloned().collect();
                    if s.nodes.len() > MAX_NAMED_NODES {
                        names.push(format!("+{}", s.nodes.len() - MAX_NAMED_NODES));
                    }
                    vec![
                        u.plan.clone(),
                        s.stage.to_string(),
                        names.join(","),
                        format!("{}/{}", s.not_healthy, s.devices),
                        s.not_healthy_before.to_string(),
                    ]
                })
            })
            .collect();
        if !stage_rows.is_empty() {
            text.push('\n');
            text.push_str(&table(&["PLAN", "STAGE", "NODES", "NOT HEALTHY NOW", "BEFORE"], &stage_rows));
        }
        text
    });
    if !r.notes.is_empty() {
        out.push_str("Notes:\n");
        for n in &r.notes {
            out.push_str(&format!("  - {n}\n"));
        }
    }
    while out.ends_with("\n\n") {
        out.pop();
    }
    out
}
