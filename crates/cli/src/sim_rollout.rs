//! `devheal sim --rollout`: the simulator's rollout model ([`devheal_sim::rollout`]) with
//! devheal's real rollout gate in the staged runs: each pass builds the controller's
//! [`View`] of the simulated fleet and calls the controller's pure [`decide`] on the scenario's
//! `UpgradePlan`, exactly as `devheal controller` does on a cluster; the steps it returns are
//! carried out on the model.

use devheal_controller::upgrade::decide::{Step, decide};
use devheal_controller::upgrade::validate::{PlanError, ValidPlan, validate};
use devheal_controller::upgrade::view::{DevicePod, NodeView, PluginPod, Revision, View};
use devheal_core::Time;
use devheal_k8s::upgrade_plan::{UpgradePlanSpec, UpgradePlanStatus};
use devheal_sim::rollout::{GateFleet, GateStep, RolloutGate, RolloutScenario, Version};

/// The DaemonSet the simulated plan names.
const DAEMON_SET: &str = "device-stack";
const OLD_HASH: &str = "5d8f6c7b9";
const NEW_HASH: &str = "7c9d4e2a1";

/// devheal's rollout gate on the simulated fleet.
#[derive(Clone)]
pub struct ControllerGate {
    plan: Result<ValidPlan, PlanError>,
    status: UpgradePlanStatus,
}

impl ControllerGate {
    /// The gate for the scenario's plan (`staged.plan`, the DaemonSet's name filled in).
    pub fn new(scenario: &RolloutScenario) -> anyhow::Result<ControllerGate> {
        let mut spec = scenario.staged.plan.clone();
        if let Some(map) = spec.as_object_mut() {
            map.insert("daemonSet".into(), DAEMON_SET.into());
        }
        let spec: UpgradePlanSpec = serde_json::from_value(spec)
            .map_err(|e| anyhow::anyhow!("rollout scenario {}: staged.plan: {e}", scenario.name))?;
        let plan = validate(&spec);
        if let Err(e) = &plan {
            anyhow::bail!("rollout scenario {}: staged.plan: {e}", scenario.name);
        }
        Ok(ControllerGate { plan, status: UpgradePlanStatus::default() })
    }
}

fn revision(hash: &str, number: i64) -> Revision {
    Revision { name: format!("{DAEMON_SET}-{hash}"), hash: hash.into(), number, images: String::new() }
}

fn hash(v: Version) -> &'static str {
    match v {
        Version::Old => OLD_HASH,
        Version::New => NEW_HASH,
    }
}

/// The controller's view of the simulated fleet: the DaemonSet `OnDelete` with its two
/// revisions (the old one again last once it was put back), each node's pod, its devices the
/// plugin still advertises and those its NodeDeviceHealth reports Unhealthy, and its gang pod.
pub fn view_of(fleet: &GateFleet) -> View {
    let revisions = if fleet.template_changes == 0 {
        vec![revision(OLD_HASH, 1), revision(NEW_HASH, 2)]
    } else {
        vec![revision(NEW_HASH, 2), revision(OLD_HASH, 2 + i64::from(fleet.template_changes))]
    };
    let nodes = fleet
        .nodes
        .iter()
        .map(|n| {
            let pod = format!("{}-{}", n.name, n.generation);
            let view = NodeView {
                name: n.name.clone(),
                allocatable: Some(i64::from(fleet.gpus_per_node.saturating_sub(n.unhealthy_gpus))),
                unhealthy_devices: n.unhealthy_gpus,
                plugin: Some(PluginPod {
                    namespace: "gpu-operator".into(),
                    name: pod.clone(),
                    uid: pod,
                    hash: hash(n.version).into(),
                    ready: n.ready,
                    deleting: false,
                }),
                device_pods: if n.gang_member {
                    vec![DevicePod {
                        namespace: "ml".into(),
                        name: format!("worker-{}", n.name),
                        uid: format!("worker-{}", n.name),
                        running: true,
                        gang: true,
                    }]
                } else {
                    Vec::new()
                },
                ..NodeView::default()
            };
            (n.name.clone(), view)
        })
        .collect();
    View { found: true, update_strategy: "OnDelete".into(), revisions, nodes }
}

impl RolloutGate for ControllerGate {
    fn pass(&mut self, fleet: &GateFleet, now: Time) -> Vec<GateStep> {
        let view = view_of(fleet);
        let d = decide(self.plan.as_ref(), DAEMON_SET, Some(1), &self.status, &view, now);
        self.status = d.status;
        let index = |node: &str| fleet.nodes.iter().position(|n| n.name == node);
        d.steps
            .into_iter()
            .filter_map(|step| match step {
                Step::DeletePod { node, .. } => index(&node).map(|node| GateStep::ReplacePod { node }),
                Step::RestoreTemplate { .. } => Some(GateStep::RestoreOldTemplate),
                // The scenario's plan drains nothing; a driver's disruption is the model's.
                Step::Cordon { .. } | Step::Uncordon { .. } | Step::EvictPod { .. } => None,
            })
            .collect()
    }

    fn state(&self) -> String {
        let phase = serde_json::to_value(self.status.phase)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| "-".into());
        let why = self
            .status
            .message
            .as_deref()
            .and_then(|m| m.split_once("the rollout failed: "))
            .map(|(_, why)| why.chars().take(60).collect::<String>());
        match (&self.status.reason, why) {
            (_, Some(why)) => format!("gate {phase} (stage {}): {why}", self.status.stage),
            (Some(reason), None) if *reason != phase => {
                format!("gate {phase}: {reason} (stage {})", self.status.stage)
            }
            _ => format!("gate {phase} (stage {})", self.status.stage),
        }
    }
}

/// Loads a bundled rollout scenario or a YAML file.
pub fn load(arg: &str) -> anyhow::Result<RolloutScenario> {
    if devheal_sim::rollout::BUNDLED_ROLLOUTS.iter().any(|(n, _)| *n == arg) {
        return Ok(RolloutScenario::bundled(arg)?);
    }
    let path = std::path::Path::new(arg);
    if !path.exists() {
        return Err(devheal_sim::rollout::RolloutError::Unknown(arg.into()).into());
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("reading rollout scenario {}: {e}", path.display()))?;
    Ok(RolloutScenario::from_yaml(&text, &path.display().to_string())?)
}

/// The four runs with devheal's gate in the staged ones.
pub fn compare(scenario: &RolloutScenario, seed: u64) -> anyhow::Result<devheal_sim::rollout::RolloutReport> {
    let fresh = ControllerGate::new(scenario)?;
    let mut make = || -> Box<dyn RolloutGate> { Box::new(fresh.clone()) };
    Ok(devheal_sim::rollout::compare(scenario, seed, &mut make))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bundled scenario with devheal's real gate: the bad version stops at the canary (or
    /// the first wave) and is rolled back by the gate; fleet-wide it reaches most of the fleet
    /// before the person's rollback and loses many times the GPU-hours; the good version
    /// completes both ways, fleet-wide sooner.
    #[test]
    fn the_real_gate_stops_a_bad_driver_that_fleet_wide_spreads() {
        let mut s = RolloutScenario::bundled("bad-driver-rollout").expect("bundled");
        s.horizon_h = 12.0;
        let r = compare(&s, 1).expect("runs");
        let [bad_fleet, bad_staged, good_fleet, good_staged] = &r.runs[..] else {
            panic!("four runs: {r:?}")
        };
        assert!(bad_staged.outcome.contains("RolledBack"), "{bad_staged:?}");
        assert_eq!(bad_staged.final_version, Some(Version::Old), "{bad_staged:?}");
        assert!(bad_staged.nodes_on_new * 5 < bad_fleet.nodes_on_new, "{bad_staged:?} {bad_fleet:?}");
        assert!(bad_staged.gpu_hours_lost * 3.0 < bad_fleet.gpu_hours_lost, "{bad_staged:?} {bad_fleet:?}");
        assert_eq!(good_staged.final_version, Some(Version::New), "{good_staged:?}");
        assert!(good_staged.outcome.contains("Completed"), "{good_staged:?}");
        assert_eq!(good_fleet.final_version, Some(Version::New), "{good_fleet:?}");
        assert!(good_fleet.settled_after_h < good_staged.settled_after_h, "{good_fleet:?} {good_staged:?}");
    }

    #[test]
    fn a_plan_the_gate_refuses_is_named() {
        let mut s = RolloutScenario::bundled("bad-driver-rollout").expect("bundled");
        s.staged.plan = serde_json::json!({"stages": []});
        let e = ControllerGate::new(&s).err().expect("refused").to_string();
        assert!(e.contains("staged.plan"), "{e}");
    }
}
