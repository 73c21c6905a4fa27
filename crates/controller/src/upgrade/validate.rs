//! Validate an `UpgradePlan`'s spec beyond what its schema lets the API server check (a plan
//! written before the schema had a rule, or applied with validation off, reaches us too): each
//! error names the field.

use devheal_k8s::upgrade_plan::UpgradePlanSpec;

/// A field of the plan that cannot be used, and why.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct PlanError {
    /// The path in the object, `spec.stages[1].percent`.
    pub field: String,
    pub problem: String,
}

fn err(field: impl Into<String>, problem: impl Into<String>) -> PlanError {
    PlanError { field: field.into(), problem: problem.into() }
}

/// The size of a stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StageSize {
    Nodes(u32),
    Percent(u32),
}

impl StageSize {
    /// Nodes in the stage for a pool of `pool` nodes (a share rounds up; at least one).
    pub fn nodes(self, pool: usize) -> usize {
        match self {
            StageSize::Nodes(n) => n as usize,
            StageSize::Percent(p) => (pool * p as usize).div_ceil(100).max(1),
        }
    }
}

/// One validated stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stage {
    pub size: StageSize,
    pub soak_seconds: u32,
}

/// A plan the gate can carry out.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidPlan {
    pub stages: Vec<Stage>,
    pub max_unavailable: usize,
    pub resource: Option<String>,
    pub max_unhealthy_devices: u32,
    pub max_extra_faults_per_node: f64,
    pub max_extra_pod_failures_per_node: f64,
    pub ready_timeout_seconds: u32,
    pub allow_interrupting_gangs: bool,
    pub drain_device_pods: bool,
    pub rollback_on_failure: bool,
    pub paused: bool,
}

impl ValidPlan {
    /// Stage `n` (1-based); stages past the last repeat the last one's size and soak.
    pub fn stage(&self, n: u32) -> Stage {
        let i = (n.max(1) as usize - 1).min(self.stages.len().saturating_sub(1));
        self.stages.get(i).copied().unwrap_or(Stage { size: StageSize::Nodes(1), soak_seconds: 0 })
    }
}

const MAX_STAGES: usize = 20;
const MAX_SOAK: u32 = 7 * 24 * 3600;

/// Check a spec; the first problem found is returned.
pub fn validate(spec: &UpgradePlanSpec) -> Result<ValidPlan, PlanError> {
    if spec.daemon_set.is_empty() {
        return Err(err("spec.daemonSet", "name the DaemonSet to upgrade (in the plan's namespace)"));
    }
    if spec.stages.is_empty() {
        return Err(err("spec.stages", "give at least one stage (the canary)"));
    }
    if spec.stages.len() > MAX_STAGES {
        return Err(err("spec.stages", format!("{} stages; at most {MAX_STAGES}", spec.stages.len())));
    }
    if spec.soak_seconds > MAX_SOAK {
        return Err(err("spec.soakSeconds", format!("{} s is more than a week", spec.soak_seconds)));
    }
    let mut stages = Vec::with_capacity(spec.stages.len());
    for (i, s) in spec.stages.iter().enumerate() {
        let size = match (s.nodes, s.percent) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(err(format!("spec.stages[{i}]"), "give exactly one of nodes or percent"));
            }
            (Some(0), None) => return Err(err(format!("spec.stages[{i}].nodes"), "must be at least 1")),
            (Some(n), None) => StageSize::Nodes(n),
            (None, Some(p)) if !(1..=100).contains(&p) => {
                return Err(err(format!("spec.stages[{i}].percent"), format!("{p} is not within 1..=100")));
            }
            (None, Some(p)) => StageSize::Percent(p),
        };
        let soak_seconds = s.soak_seconds.unwrap_or(spec.soak_seconds);
        if soak_seconds > MAX_SOAK {
            return Err(err(
                format!("spec.stages[{i}].soakSeconds"),
                format!("{soak_seconds} s is more than a week"),
            ));
        }
        stages.push(Stage { size, soak_seconds });
    }
    if spec.max_unavailable == 0 {
        return Err(err("spec.maxUnavailable", "must be at least 1 (0 would never upgrade a node)"));
    }
    let h = &spec.health;
    for (field, v) in [
        ("spec.health.maxExtraFaultsPerNode", h.max_extra_faults_per_node),
        ("spec.health.maxExtraPodFailuresPerNode", h.max_extra_pod_failures_per_node),
    ] {
        if !v.is_finite() || v < 0.0 {
            return Err(err(field, format!("{v} is not a number of at least 0")));
        }
    }
    if h.ready_timeout_seconds == 0 {
        return Err(err("spec.health.readyTimeoutSeconds", "must be at least 1"));
    }
    if h.resource.as_deref().is_some_and(str::is_empty) {
        return Err(err("spec.health.resource", "leave it out or name a resource (nvidia.com/gpu)"));
    }
    Ok(ValidPlan {
        stages,
        max_unavailable: spec.max_unavailable as usize,
        resource: h.resource.clone(),
        max_unhealthy_devices: h.max_unhealthy_devices,
        max_extra_faults_per_node: h.max_extra_faults_per_node,
        max_extra_pod_failures_per_node: h.max_extra_pod_failures_per_node,
        ready_timeout_seconds: h.ready_timeout_seconds,
        allow_interrupting_gangs: spec.allow_interrupting_gangs,
        drain_device_pods: spec.drain_device_pods,
        rollback_on_failure: spec.rollback_on_failure,
        paused: spec.paused,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use devheal_k8s::upgrade_plan::UpgradeStage;

    fn spec() -> UpgradePlanSpec {
        serde_json::from_value(serde_json::json!({
            "daemonSet": "plugin", "stages": [{"nodes": 1}, {"percent": 25, "soakSeconds": 60}]
        }))
        .expect("spec")
    }

    #[test]
    fn a_good_plan_validates_with_its_defaults() {
        let p = validate(&spec()).expect("valid");
        assert_eq!(p.stages[0], Stage { size: StageSize::Nodes(1), soak_seconds: 600 });
        assert_eq!(p.stages[1], Stage { size: StageSize::Percent(25), soak_seconds: 60 });
        assert_eq!(p.stage(7), p.stages[1], "stages past the last repeat it");
        assert_eq!(StageSize::Percent(25).nodes(10), 3, "a share rounds up");
        assert_eq!(StageSize::Percent(1).nodes(3), 1, "at least one node");
    }

    #[test]
    fn each_bad_field_is_named() {
        type Change = Box<dyn Fn(&mut UpgradePlanSpec)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|s| s.daemon_set.clear()), "spec.daemonSet"),
            (Box::new(|s| s.stages.clear()), "spec.stages"),
            (
                Box::new(|s| {
                    s.stages[1] = UpgradeStage { nodes: Some(2), percent: Some(5), soak_seconds: None }
                }),
                "spec.stages[1]",
            ),
            (Box::new(|s| s.stages[1].percent = Some(150)), "spec.stages[1].percent"),
            (Box::new(|s| s.stages[0].nodes = Some(0)), "spec.stages[0].nodes"),
            (Box::new(|s| s.stages[0].soak_seconds = Some(MAX_SOAK + 1)), "spec.stages[0].soakSeconds"),
            (Box::new(|s| s.max_unavailable = 0), "spec.maxUnavailable"),
            (
                Box::new(|s| s.health.max_extra_faults_per_node = f64::NAN),
                "spec.health.maxExtraFaultsPerNode",
            ),
            (
                Box::new(|s| s.health.max_extra_pod_failures_per_node = -1.0),
                "spec.health.maxExtraPodFailuresPerNode",
            ),
            (Box::new(|s| s.health.ready_timeout_seconds = 0), "spec.health.readyTimeoutSeconds"),
            (Box::new(|s| s.health.resource = Some(String::new())), "spec.health.resource"),
        ];
        for (change, field) in cases {
            let mut s = spec();
            change(&mut s);
            let e = validate(&s).expect_err(field);
            assert_eq!(e.field, field, "{e}");
            assert!(e.to_string().starts_with(field), "{e}");
        }
    }
}
