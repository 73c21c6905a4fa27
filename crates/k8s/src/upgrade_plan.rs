//! `UpgradePlan` (namespaced, group `devheal.io`, version `v1alpha1`): a staged upgrade of one
//! DaemonSet of the device stack — the device plugin, the driver container or a DRA driver —
//! gated on device health. The DaemonSet lives in the plan's namespace and uses
//! `updateStrategy: OnDelete`, so its new template reaches a node only when its old pod is
//! deleted; the controller's rollout gate (crates/controller/src/upgrade/) deletes them stage by
//! stage, compares the upgraded nodes with the others and continues, pauses with a reason, or
//! rolls the upgraded nodes back to the previous ControllerRevision.
//!
//! The schema refuses what the API server can judge alone (bounds, one of `nodes` or `percent`
//! per stage); the gate validates the rest (crates/controller/src/upgrade/validate.rs) and says
//! which field is wrong in the plan's status and an Event. docs/upgrades.md describes the plan.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// A staged, health-gated upgrade of one device-stack DaemonSet.
// Each printcolumn repeats `type_`; clippy reads the repeats as one attribute given twice.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "devheal.io",
    version = "v1alpha1",
    kind = "UpgradePlan",
    plural = "upgradeplans",
    singular = "upgradeplan",
    shortname = "dhup",
    namespaced,
    status = "UpgradePlanStatus",
    derive = "PartialEq",
    doc = "A staged upgrade of a device plugin, driver or DRA driver DaemonSet, gated on device health.",
    printcolumn(name = "DaemonSet", type_ = "string", json_path = ".spec.daemonSet"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Stage", type_ = "integer", json_path = ".status.stage"),
    printcolumn(name = "Upgraded", type_ = "integer", json_path = ".status.upgradedNodes"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.reason"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct UpgradePlanSpec {
    /// The DaemonSet to upgrade, in the plan's namespace (`updateStrategy: OnDelete`).
    #[schemars(length(min = 1, max = 253))]
    pub daemon_set: String,
    /// What the DaemonSet runs (for reports; the gate treats them alike).
    #[serde(default)]
    pub component: UpgradeComponent,
    /// The node pool: labels a node must all carry (empty: every node the DaemonSet runs on).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// The stages in order (the first is the canary). Nodes left after the last stage are
    /// upgraded in further waves of the last stage's size.
    #[schemars(length(min = 1, max = 20))]
    pub stages: Vec<UpgradeStage>,
    /// How long each stage soaks once all its nodes run the new version and are Ready, before
    /// the next stage starts (a stage's own `soakSeconds` wins).
    #[serde(default = "default_soak")]
    #[schemars(range(max = 604800))]
    pub soak_seconds: u32,
    /// What healthy means on the upgraded nodes.
    #[serde(default)]
    pub health: UpgradeHealth,
    /// The budget: at most this many nodes whose old pod is deleted (or being drained) and whose
    /// new pod is not Ready yet, at once.
    #[serde(default = "default_max_unavailable")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_unavailable: u32,
    /// Upgrade nodes whose devices hold running training gangs (default: such nodes wait).
    #[serde(default)]
    pub allow_interrupting_gangs: bool,
    /// Cordon the node and evict its device pods (Eviction API) before the old pod is deleted;
    /// the node is uncordoned once its new pod is Ready (drivers that cannot be replaced under
    /// running work need this).
    #[serde(default)]
    pub drain_device_pods: bool,
    /// When a health check fails: restore the previous template revision on the upgraded nodes
    /// (true) or pause there (false).
    #[serde(default)]
    pub rollback_on_failure: bool,
    /// Hold the rollout where it is (an operator's pause; set false to continue).
    #[serde(default)]
    pub paused: bool,
}

fn default_soak() -> u32 {
    600
}

fn default_max_unavailable() -> u32 {
    1
}

/// What the DaemonSet runs.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UpgradeComponent {
    #[default]
    DevicePlugin,
    Driver,
    DraDriver,
}

/// One stage: a node count or a share of the pool.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = Rule::new("has(self.nodes) != has(self.percent)").message("a stage gives exactly one of nodes or percent"))]
#[serde(rename_all = "camelCase")]
pub struct UpgradeStage {
    /// Nodes in this stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub nodes: Option<u32>,
    /// Percent of the pool in this stage (rounded up, at least one node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub percent: Option<u32>,
    /// This stage's soak (default: the plan's `soakSeconds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 604800))]
    pub soak_seconds: Option<u32>,
}

/// What healthy means: checked on every pass, from a node's upgrade on, against the nodes not
/// yet upgraded in the same window.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UpgradeHealth {
    /// The extended resource the plugin advertises (`nvidia.com/gpu`): an upgraded node must
    /// advertise (Node allocatable) as many as before its upgrade. Unset: not checked (DRA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub resource: Option<String>,
    /// Devices on upgraded nodes that may turn Unhealthy or Unknown (NodeDeviceHealth) after
    /// their node's upgrade before the check fails.
    #[serde(default)]
    #[schemars(range(max = 100000))]
    pub max_unhealthy_devices: u32,
    /// Device faults (NodeDeviceHealth reasons seen in the stage's window) per upgraded node
    /// may exceed those per node not yet upgraded by at most this much.
    #[serde(default = "default_extra")]
    #[schemars(range(min = 0.0, max = 1000.0))]
    pub max_extra_faults_per_node: f64,
    /// Pod failures devheal attributed to devices (its `devheal.io/` pod conditions) per
    /// upgraded node may exceed those per node not yet upgraded by at most this much.
    #[serde(default = "default_extra")]
    #[schemars(range(min = 0.0, max = 1000.0))]
    pub max_extra_pod_failures_per_node: f64,
    /// A new pod must be Ready this long after its node's old pod was deleted.
    #[serde(default = "default_ready_timeout")]
    #[schemars(range(min = 1, max = 86400))]
    pub ready_timeout_seconds: u32,
}

fn default_extra() -> f64 {
    1.0
}

fn default_ready_timeout() -> u32 {
    300
}

impl Default for UpgradeHealth {
    fn default() -> Self {
        UpgradeHealth {
            resource: None,
            max_unhealthy_devices: 0,
            max_extra_faults_per_node: default_extra(),
            max_extra_pod_failures_per_node: default_extra(),
            ready_timeout_seconds: default_ready_timeout(),
        }
    }
}

/// Where a plan stands.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UpgradePhase {
    /// Not looked at yet.
    #[default]
    Pending,
    /// Stages are being upgraded or soaking.
    Progressing,
    /// Held: by the operator (`spec.paused`), a failed health check, or a target that changed.
    Paused,
    /// Every node of the pool runs the new revision.
    Completed,
    /// A health check failed and the upgraded nodes are being given the previous revision.
    RollingBack,
    /// The upgraded nodes run the previous revision again.
    RolledBack,
    /// The plan cannot be carried out as written (see `reason` and `message`).
    Invalid,
}

/// What the gate reports about a plan. It is also the gate's memory across controller
/// restarts, with the DaemonSet pods' `controller-revision-hash` labels.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UpgradePlanStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub phase: UpgradePhase,
    /// A CamelCase word for why the plan is in its phase (`HealthCheckFailed`, `Soaking`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub message: Option<String>,
    /// The revision the pool ran (`controller-revision-hash`) and its ControllerRevision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_revision: Option<RevisionRef>,
    /// The revision being rolled out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_revision: Option<RevisionRef>,
    /// The stage under way (1 is the canary; 0 before the first).
    #[serde(default)]
    pub stage: u32,
    /// When the current stage's nodes were all Ready on the new revision (its soak began).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage_ready_at: Option<Time>,
    /// When the current stage began: faults and pod failures are compared from then on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_start: Option<Time>,
    /// Nodes of the pool on the new revision (by anyone's hand).
    #[serde(default)]
    pub upgraded_nodes: u32,
    /// Nodes of the pool.
    #[serde(default)]
    pub pool_nodes: u32,
    /// The nodes this plan took up, in order, with what they had before.
    #[serde(default)]
    #[schemars(length(max = 10000))]
    pub nodes: Vec<UpgradeNodeStatus>,
}

/// A template revision of the DaemonSet.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RevisionRef {
    /// The `controller-revision-hash` its pods carry.
    #[schemars(length(min = 1, max = 63))]
    pub hash: String,
    /// The ControllerRevision object.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[serde(default)]
    pub revision: i64,
    /// The images of its containers, `container=image`, comma-separated (the version an
    /// operator recognises).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub images: Option<String>,
}

/// One node the plan took up.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UpgradeNodeStatus {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The stage that took it up.
    pub stage: u32,
    /// When it was taken up (its old pod deleted, or its drain begun).
    pub started: Time,
    /// The resource's allocatable count before (see `health.resource`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocatable_before: Option<i64>,
    /// Its devices Unhealthy or Unknown before.
    #[serde(default)]
    pub unhealthy_before: u32,
    /// Set when the gate has cordoned it to drain it (it uncordons it after the upgrade).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cordoned: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn the_crd_is_namespaced_with_status_and_the_stage_rule() {
        let crd = UpgradePlan::crd();
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.plural, "upgradeplans");
        let schema = serde_json::to_string(&crd.spec.versions[0].schema).unwrap_or_default();
        assert!(schema.contains("has(self.nodes) != has(self.percent)"), "{schema}");
        for field in
            ["daemonSet", "maxUnavailable", "allowInterruptingGangs", "drainDevicePods", "rollbackOnFailure"]
        {
            assert!(schema.contains(field), "{field} missing");
        }
    }

    #[test]
    fn defaults_fill_an_empty_health_section() {
        let plan: UpgradePlan = serde_json::from_value(serde_json::json!({
            "apiVersion": "devheal.io/v1alpha1", "kind": "UpgradePlan",
            "metadata": {"name": "plugin", "namespace": "gpu-operator"},
            "spec": {"daemonSet": "nvidia-device-plugin", "stages": [{"nodes": 1}, {"percent": 50}]}
        }))
        .expect("a valid plan");
        assert_eq!(plan.spec.soak_seconds, 600);
        assert_eq!(plan.spec.max_unavailable, 1);
        assert_eq!(plan.spec.health, UpgradeHealth::default());
        assert!(!plan.spec.rollback_on_failure && !plan.spec.allow_interrupting_gangs);
    }
}
