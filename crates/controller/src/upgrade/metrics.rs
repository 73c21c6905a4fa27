//! The rollout gate's metrics, registered with the controller's ([`crate::Metrics`]):
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `devheal_upgrade_pauses_total` | counter | `plan` (`namespace/name`), `reason` (`DevicesUnhealthy`, `TargetChanged`, ...) |
//! | `devheal_upgrade_stage` | gauge | `plan`: the stage under way (1 is the canary) |
//! | `devheal_upgrade_upgraded_nodes` | gauge | `plan`: nodes of the pool on the new revision |
//! | `devheal_upgrade_phase` | gauge | `plan`, `phase`: 1 for the plan's phase |
//! | `devheal_upgrade_steps_total` | counter | `step` (`delete_pod`, `evict_pod`, `cordon`, `uncordon`, `restore_template`), `outcome` (`done`, `gone`, `failed`) |

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Owned = Vec<(String, String)>;

const PHASES: [&str; 7] =
    ["Pending", "Progressing", "Paused", "Completed", "RollingBack", "RolledBack", "Invalid"];

#[derive(Debug, Default)]
pub struct UpgradeMetrics {
    pauses: Family<Owned, Counter>,
    stage: Family<Owned, Gauge>,
    upgraded: Family<Owned, Gauge>,
    phase: Family<Owned, Gauge>,
    steps: Family<[(&'static str, &'static str); 2], Counter>,
}

fn plan_label(plan: &str) -> Owned {
    vec![("plan".to_string(), plan.to_string())]
}

impl UpgradeMetrics {
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register("upgrade_pauses", "Rollouts paused, by plan and reason", self.pauses.clone());
        registry.register(
            "upgrade_stage",
            "The stage a plan's rollout is in (1 is the canary)",
            self.stage.clone(),
        );
        registry.register(
            "upgrade_upgraded_nodes",
            "Nodes of a plan's pool on its new revision",
            self.upgraded.clone(),
        );
        registry.register("upgrade_phase", "1 for each plan's phase", self.phase.clone());
        registry.register(
            "upgrade_steps",
            "Changes the rollout gate made, by step and outcome",
            self.steps.clone(),
        );
    }

    pub fn paused(&self, plan: &str, reason: &str) {
        let mut labels = plan_label(plan);
        labels.push(("reason".into(), reason.into()));
        self.pauses.get_or_create(&labels).inc();
    }

    pub fn pauses(&self, plan: &str, reason: &str) -> u64 {
        let mut labels = plan_label(plan);
        labels.push(("reason".into(), reason.into()));
        self.pauses.get_or_create(&labels).get()
    }

    pub fn progress(&self, plan: &str, stage: u32, upgraded: u32, phase: &str) {
        self.stage.get_or_create(&plan_label(plan)).set(i64::from(stage));
        self.upgraded.get_or_create(&plan_label(plan)).set(i64::from(upgraded));
        for p in PHASES {
            let mut labels = plan_label(plan);
            labels.push(("phase".into(), p.into()));
            self.phase.get_or_create(&labels).set(i64::from(p == phase));
        }
    }

    /// A plan that is gone: its series go too.
    pub fn forget(&self, plan: &str) {
        self.stage.remove(&plan_label(plan));
        self.upgraded.remove(&plan_label(plan));
        for p in PHASES {
            let mut labels = plan_label(plan);
            labels.push(("phase".into(), p.into()));
            self.phase.remove(&labels);
        }
    }

    pub fn step(&self, step: &'static str, outcome: &'static str) {
        self.steps.get_or_create(&[("step", step), ("outcome", outcome)]).inc();
    }

    pub fn steps(&self, step: &'static str, outcome: &'static str) -> u64 {
        self.steps.get_or_create(&[("step", step), ("outcome", outcome)]).get()
    }
}
