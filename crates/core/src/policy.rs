//! The policy model: `FailurePolicy` (a selector and ordered rules; the first matching rule
//! wins) and the cluster-wide safety settings (budgets, breaker, probation). It generalises a
//! Job's podFailurePolicy to every workload and restart policy, and adds device evidence.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::action::RepairKind;
use crate::attribution::Verdict;
use crate::device::Health;
use crate::pod::{ContainerState, FailureClass, PodInfo};
use crate::time::Duration;

/// What a rule does with the pod (and its gang, devices and node).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
pub enum RuleAction {
    /// Do nothing.
    #[default]
    Ignore,
    /// Only set a `devheal.io/...` condition on the pod.
    MarkPod,
    /// Mark, then evict the pod through the Eviction API (a terminal pod is only marked).
    EvictPod,
    /// Mark, then restart the pod's whole gang once per incident; a pod without a gang is
    /// evicted instead.
    RestartGang,
    /// Mark, then quarantine the devices the evidence points at.
    QuarantineDevice,
    /// Mark, then cordon the pod's node.
    CordonNode,
    /// Mark, then ask for a repair of the pod's devices or node.
    RequestRepair,
    /// Mark, then fail the workload (the gang, or the pod's owner).
    FailWorkload,
    /// Mark, then replace the pod at its gang's next checkpoint: the driver restarts the gang
    /// from that checkpoint with this member placed elsewhere, so no work is thrown away. For a
    /// slow (Degraded) member of a synchronous gang, whose pace every rank pays. A pod without a
    /// gang is only marked. Counts against the gang restart budget.
    ReplaceAtCheckpoint,
}

impl RuleAction {
    pub fn as_str(self) -> &'static str {
        match self {
            RuleAction::Ignore => "ignore",
            RuleAction::MarkPod => "mark_pod",
            RuleAction::EvictPod => "evict_pod",
            RuleAction::RestartGang => "restart_gang",
            RuleAction::QuarantineDevice => "quarantine_device",
            RuleAction::CordonNode => "cordon_node",
            RuleAction::RequestRepair => "request_repair",
            RuleAction::FailWorkload => "fail_workload",
            RuleAction::ReplaceAtCheckpoint => "replace_at_checkpoint",
        }
    }
}

/// Exit codes a rule matches, as in a Job's podFailurePolicy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
pub struct ExitCodeRequirement {
    #[serde(default)]
    pub container_name: Option<String>,
    pub operator: ExitCodeOperator,
    pub values: Vec<i32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
pub enum ExitCodeOperator {
    In,
    NotIn,
}

/// A pod condition a rule matches (status defaults to "True").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
pub struct ConditionPattern {
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(default = "default_true")]
    pub status: String,
}

fn default_true() -> String {
    "True".to_string()
}

/// One rule: every `on*` field that is set must match; an empty rule matches everything.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
pub struct PolicyRule {
    pub name: String,
    #[serde(default)]
    pub on_classes: Vec<FailureClass>,
    #[serde(default)]
    pub on_exit_codes: Option<ExitCodeRequirement>,
    #[serde(default)]
    pub on_pod_conditions: Vec<ConditionPattern>,
    #[serde(default)]
    pub on_device_health: Vec<Health>,
    #[serde(default)]
    pub on_xids: Vec<u32>,
    pub action: RuleAction,
    /// The pod condition type to set (default `devheal.io/<Class>`, e.g. `devheal.io/DeviceFailure`).
    #[serde(default)]
    pub condition_type: Option<String>,
    /// For `RequestRepair`: which repair (default `reset_device`).
    #[serde(default)]
    pub repair: Option<RepairKind>,
}

/// Which pods a policy applies to: a namespace (or all) and labels that must all match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
pub struct PodSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// A `FailurePolicy` (API group devheal.io/v1alpha1, namespaced).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FailurePolicy {
    pub name: String,
    /// `None`: applies in every namespace (the built-in default policy).
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub selector: PodSelector,
    /// A label key that defines gangs for the pods this policy selects.
    #[serde(default)]
    pub gang_label: Option<String>,
    pub rules: Vec<PolicyRule>,
}

impl FailurePolicy {
    /// The built-in default: a device failure restarts the gang (or evicts a lone pod) and marks
    /// the pod; a degraded device marks the pod and, in a gang, replaces the member at the next
    /// checkpoint; everything else is left to Kubernetes.
    pub fn builtin_default() -> FailurePolicy {
        FailurePolicy {
            name: "devheal-default".into(),
            namespace: None,
            selector: PodSelector::default(),
            gang_label: None,
            rules: vec![
                PolicyRule {
                    name: "device-failure-restarts-gang".into(),
                    on_classes: vec![FailureClass::DeviceFailure],
                    action: RuleAction::RestartGang,
                    ..PolicyRule::default()
                },
                PolicyRule {
                    name: "degraded-device-replaces-member-at-checkpoint".into(),
                    on_classes: vec![FailureClass::DeviceDegraded],
                    action: RuleAction::ReplaceAtCheckpoint,
                    ..PolicyRule::default()
                },
                PolicyRule {
                    name: "otherwise-ignore".into(),
                    action: RuleAction::Ignore,
                    ..PolicyRule::default()
                },
            ],
        }
    }

    /// How actions are attributed to this policy ([`crate::PlannedAction::policy`]):
    /// `namespace/name`, or the name alone for a policy without a namespace.
    pub fn id(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}/{}", self.name),
            None => self.name.clone(),
        }
    }

    pub fn selects(&self, pod: &PodInfo) -> bool {
        if let Some(ns) = &self.namespace
            && ns != &pod.namespace
        {
            return false;
        }
        self.selector.match_labels.iter().all(|(k, v)| pod.labels.get(k) == Some(v))
    }

    /// The first rule that matches, if any.
    pub fn first_match(&self, pod: &PodInfo, verdict: &Verdict) -> Option<&PolicyRule> {
        self.rules.iter().find(|r| r.matches(pod, verdict))
    }
}

impl PolicyRule {
    pub fn matches(&self, pod: &PodInfo, verdict: &Verdict) -> bool {
        if !self.on_classes.is_empty() && !self.on_classes.contains(&verdict.class) {
            return false;
        }
        if let Some(req) = &self.on_exit_codes {
            let any = pod.containers.iter().chain(pod.init_containers.iter()).any(|c| {
                if req.container_name.as_ref().is_some_and(|n| n != &c.name) {
                    return false;
                }
                match &c.state {
                    ContainerState::Terminated { exit_code, .. } if *exit_code != 0 => match req.operator {
                        ExitCodeOperator::In => req.values.contains(exit_code),
                        ExitCodeOperator::NotIn => !req.values.contains(exit_code),
                    },
                    _ => false,
                }
            });
            if !any {
                return false;
            }
        }
        if !self.on_pod_conditions.is_empty()
            && !self
                .on_pod_conditions
                .iter()
                .any(|p| pod.conditions.iter().any(|c| c.type_ == p.type_ && c.status == p.status))
        {
            return false;
        }
        if !self.on_device_health.is_empty()
            && !verdict.worst_device_health.is_some_and(|h| self.on_device_health.contains(&h))
        {
            return false;
        }
        if !self.on_xids.is_empty() && !verdict.xids.iter().any(|x| self.on_xids.contains(x)) {
            return false;
        }
        true
    }

    /// The condition type this rule sets on a pod.
    pub fn condition_type_for(&self, class: FailureClass) -> String {
        self.condition_type.clone().unwrap_or_else(|| default_condition_type(class))
    }
}

/// The name of a failure class in conditions and reasons: `DeviceFailure`, `ApplicationFailure`, ...
pub(crate) fn class_name(class: FailureClass) -> &'static str {
    match class {
        FailureClass::DeviceFailure => "DeviceFailure",
        FailureClass::DeviceDegraded => "DeviceDegraded",
        FailureClass::Application => "ApplicationFailure",
        FailureClass::Oom => "OutOfMemory",
        FailureClass::Infrastructure => "InfrastructureFailure",
        FailureClass::Disruption => "Disruption",
        FailureClass::None => "Unclassified",
    }
}

/// `devheal.io/DeviceFailure`, `devheal.io/DeviceDegraded`, ...
pub fn default_condition_type(class: FailureClass) -> String {
    format!("devheal.io/{}", class_name(class))
}

/// Cluster-wide safety settings: budgets, the breaker, probation and timing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SafetySettings {
    /// Quarantine a device that turns Unhealthy (DRA DeviceTaintRule or node taint).
    pub quarantine_unhealthy_devices: bool,
    /// Ask for the repair an incident calls for.
    pub request_repairs: bool,
    /// Evict running non-gang pods bound to a device that turned Unhealthy ("pod watcher").
    pub evict_pods_on_unhealthy_devices: bool,
    /// At most this many nodes with quarantined devices or cordons at once...
    pub max_quarantined_nodes: u32,
    /// ...and at most this percent of the fleet.
    pub max_quarantined_nodes_percent: f64,
    pub max_evictions_per_minute: u32,
    /// Restarts of one gang (and replacements of its members) in any hour.
    pub max_gang_restarts_per_hour: u32,
    /// Gang restarts and member replacements in one namespace in any hour, however many gangs
    /// the namespace runs: one tenant cannot spend the cluster's budget (0: none at all).
    pub max_gang_restarts_per_hour_per_namespace: u32,
    /// Gang restarts and member replacements in the whole cluster in any hour (0: none at all).
    pub max_gang_restarts_per_hour_cluster: u32,
    /// Open the progress breaker when this many gang restarts and member replacements caused by
    /// progress reports alone (hangs, stragglers, baseline shifts: what a workload reports about
    /// itself, and could forge) were planned within `progress_breaker_window` (0: never). While
    /// it is open, such restarts are held; restarts for device faults go on. It closes after
    /// `breaker_cooldown` without one.
    pub progress_breaker_restarts: u32,
    pub progress_breaker_window: Duration,
    /// Open the breaker when this many distinct nodes fail within `breaker_window`...
    pub breaker_min_nodes: u32,
    /// ...and they are at least this percent of the fleet.
    pub breaker_node_percent: f64,
    pub breaker_window: Duration,
    /// Close the breaker after this long without a new failure.
    pub breaker_cooldown: Duration,
    /// Report a driver/device plugin version when at least this many of its nodes failed in the
    /// window...
    pub canary_min_nodes: u32,
    /// ...and its failure rate is this many times the rest of the fleet's.
    pub canary_ratio: f64,
    /// A gang that reported progress and then reports none for this long is hung (0: off).
    pub hang_timeout: Duration,
    /// A device that is Healthy again stays quarantined this long before release.
    pub probation: Duration,
    /// This many incidents on one device within `lemon_window` escalate to inspect_hardware.
    pub lemon_incidents: u32,
    pub lemon_window: Duration,
    /// This many Degraded episodes of one device within `lemon_window` quarantine it (within
    /// the quarantine budget) and ask for an inspection (0: never).
    pub degraded_episodes_to_quarantine: u32,
    /// A member's device must have been Degraded this long before `ReplaceAtCheckpoint` acts:
    /// most slow-downs end within minutes (Falcon: tens of seconds to hours), and replacing a
    /// member costs the gang a restart.
    pub degraded_replace_after: Duration,
    /// Kernel incidents count as evidence for a pod failure for this long.
    pub incident_window: Duration,
    /// Restart a gang's healthy members in place (the restart-in-place contract,
    /// `docs/policy.md`) where their pods' restart rules allow it; `false`: every member of a
    /// restarted gang is re-created.
    pub restart_in_place: bool,
    /// Members told to restart in place that have not restarted within this long (the kubelet
    /// shows no container restart) fail the in-place restart: the whole gang is then re-created.
    pub in_place_restart_deadline: Duration,
}

impl Default for SafetySettings {
    fn default() -> Self {
        SafetySettings {
            quarantine_unhealthy_devices: true,
            request_repairs: true,
            evict_pods_on_unhealthy_devices: true,
            max_quarantined_nodes: 32,
            max_quarantined_nodes_percent: 10.0,
            max_evictions_per_minute: 30,
            max_gang_restarts_per_hour: 6,
            max_gang_restarts_per_hour_per_namespace: 20,
            max_gang_restarts_per_hour_cluster: 60,
            progress_breaker_restarts: 10,
            progress_breaker_window: Duration::from_mins(10),
            breaker_min_nodes: 10,
            breaker_node_percent: 2.0,
            breaker_window: Duration::from_mins(5),
            breaker_cooldown: Duration::from_mins(15),
            canary_min_nodes: 3,
            canary_ratio: 4.0,
            hang_timeout: Duration::from_mins(5),
            probation: Duration::from_mins(10),
            lemon_incidents: 3,
            lemon_window: Duration::from_hours(24 * 7),
            degraded_episodes_to_quarantine: 3,
            degraded_replace_after: Duration::from_mins(20),
            incident_window: Duration::from_mins(15),
            restart_in_place: true,
            in_place_restart_deadline: Duration::from_mins(2),
        }
    }
}

/// A safety setting that cannot work as written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SafetySettingsError {
    /// `field` is the setting's name as written in configuration (camelCase).
    #[error("invalid safety setting {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

impl SafetySettings {
    /// Check the settings a breaker needs: a window of no length counts nothing, and a cooldown
    /// of none closes a breaker the moment it opens. Errors name the field as it is written in
    /// configuration.
    pub fn validate(&self) -> Result<(), SafetySettingsError> {
        let durations = [
            ("breakerWindow", self.breaker_window),
            ("breakerCooldown", self.breaker_cooldown),
            ("progressBreakerWindow", self.progress_breaker_window),
            ("inPlaceRestartDeadline", self.in_place_restart_deadline),
        ];
        for (field, d) in durations {
            if d <= Duration::ZERO {
                let reason = format!("must be positive, is {}ns", d.as_nanos());
                return Err(SafetySettingsError::Invalid { field, reason });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod::{ContainerInfo, PodPhase};

    fn verdict(class: FailureClass) -> Verdict {
        Verdict { class, ..Verdict::default() }
    }

    #[test]
    fn default_policy_restarts_gangs_on_device_failure_only() {
        let p = FailurePolicy::builtin_default();
        let pod = PodInfo::default();
        assert_eq!(
            p.first_match(&pod, &verdict(FailureClass::DeviceFailure)).map(|r| r.action),
            Some(RuleAction::RestartGang)
        );
        assert_eq!(
            p.first_match(&pod, &verdict(FailureClass::Application)).map(|r| r.action),
            Some(RuleAction::Ignore)
        );
    }

    #[test]
    fn exit_code_rules_match_like_pod_failure_policy() {
        let rule = PolicyRule {
            name: "r".into(),
            on_exit_codes: Some(ExitCodeRequirement {
                container_name: None,
                operator: ExitCodeOperator::In,
                values: vec![42],
            }),
            action: RuleAction::FailWorkload,
            ..PolicyRule::default()
        };
        let mut pod = PodInfo { phase: PodPhase::Failed, ..PodInfo::default() };
        pod.containers.push(ContainerInfo {
            name: "c".into(),
            state: ContainerState::Terminated {
                exit_code: 42,
                signal: None,
                reason: None,
                message: None,
                finished_at: None,
            },
            ..ContainerInfo::default()
        });
        assert!(rule.matches(&pod, &verdict(FailureClass::Application)));
        if let ContainerState::Terminated { exit_code, .. } = &mut pod.containers[0].state {
            *exit_code = 1;
        }
        assert!(!rule.matches(&pod, &verdict(FailureClass::Application)));
    }

    #[test]
    fn selectors_check_namespace_and_labels() {
        let mut p = FailurePolicy::builtin_default();
        p.namespace = Some("ml".into());
        p.selector.match_labels.insert("team".into(), "a".into());
        let mut pod = PodInfo { namespace: "ml".into(), ..PodInfo::default() };
        assert!(!p.selects(&pod));
        pod.labels.insert("team".into(), "a".into());
        assert!(p.selects(&pod));
        pod.namespace = "web".into();
        assert!(!p.selects(&pod));
    }

    #[test]
    fn policies_parse_from_json_and_reject_unknown_rule_fields() {
        let text =
            r#"{"name":"p","rules":[{"name":"r","onClasses":["device_failure"],"action":"RestartGang"}]}"#;
        let p: FailurePolicy = serde_json::from_str(text).expect("parses");
        assert_eq!(p.rules[0].action, RuleAction::RestartGang);
        let bad = r#"{"name":"p","rules":[{"name":"r","onClass":["oom"],"action":"Ignore"}]}"#;
        assert!(serde_json::from_str::<FailurePolicy>(bad).is_err());
    }

    #[test]
    fn restart_budgets_and_the_progress_breaker_parse_in_camel_case_and_are_validated() {
        let text = r#"{"maxGangRestartsPerHourPerNamespace":5,"maxGangRestartsPerHourCluster":12,
            "progressBreakerRestarts":4,"progressBreakerWindow":300000000000}"#;
        let s: SafetySettings = serde_json::from_str(text).expect("parses");
        assert_eq!(
            (s.max_gang_restarts_per_hour_per_namespace, s.max_gang_restarts_per_hour_cluster),
            (5, 12)
        );
        assert_eq!((s.progress_breaker_restarts, s.progress_breaker_window), (4, Duration::from_mins(5)));
        assert_eq!(s.validate(), Ok(()));
        assert_eq!(SafetySettings::default().validate(), Ok(()));
        let zero = SafetySettings { progress_breaker_window: Duration::ZERO, ..SafetySettings::default() };
        let err = zero.validate().unwrap_err().to_string();
        assert!(err.contains("progressBreakerWindow"), "{err}");
        let negative =
            SafetySettings { breaker_cooldown: Duration::from_secs(-1), ..SafetySettings::default() };
        let err = negative.validate().unwrap_err().to_string();
        assert!(err.contains("breakerCooldown"), "{err}");
    }
}
