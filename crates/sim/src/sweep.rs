//! Sensitivity (`devheal sim --sweep PARAM=v1,v2,…`): the scenario rerun with one parameter
//! changed at a time, on the same trace, and each strategy's ETTR (and devheal's lead over the
//! best other strategy) reported per value.
//!
//! A parameter is named by its scenario path (`operator.response_min`); `training.X` sets field
//! `X` of every training gang. Only parameters that do not change the trace can be swept (none in
//! [`PARAMS`] does: the generator reads the cluster, the gangs' sizes, the services, the fault
//! classes, stragglers and planned maintenance), so every value replays the very same faults.

use serde::Serialize;

use crate::report::{Report, fmt_thousands, write_table};
use crate::{FaultTrace, Progress, Scenario, Strategy};

/// Every parameter `--sweep` accepts: (scenario path, what it is).
pub const PARAMS: &[(&str, &str)] = &[
    ("training.checkpoint_interval_min", "checkpoint interval τ of every gang, minutes"),
    ("training.checkpoint_blocking_s", "blocking checkpoint write δ of every gang, seconds"),
    ("training.nccl_watchdog_s", "NCCL watchdog timeout of every gang, seconds"),
    ("training.restart.scheduling_and_pod_start_s", "restart: scheduling and pod start, seconds"),
    ("training.restart.framework_init_s", "restart: framework initialisation, seconds"),
    ("training.restart.nccl_init_s", "restart: NCCL initialisation, seconds"),
    ("training.restart.checkpoint_load_s", "restart: checkpoint load, seconds"),
    ("operator.response_min", "a person's response time, minutes"),
    ("kubernetes.node_monitor_grace_s", "node-monitor grace period, seconds"),
    ("kubernetes.not_ready_toleration_s", "not-ready/unreachable toleration, seconds"),
    ("kubernetes.pod_failure_report_s", "crashed container → pod failed, seconds"),
    ("repair.reset_device_min", "GPU reset, minutes"),
    ("repair.reboot_node_min", "node reboot, minutes"),
    ("repair.replace_hardware_h", "hardware replacement, hours"),
    ("strategies.devheal.kernel_log_detect_ms", "devheal: kernel line → parsed event, milliseconds"),
    ("strategies.devheal.publish_s", "devheal: agent → controller publish, seconds"),
    ("strategies.devheal.nvml_detect_s", "devheal: NVML-only signal detection, seconds"),
    ("strategies.devheal.tick_active_s", "devheal: engine tick while active, seconds"),
    ("strategies.devheal.progress_interval_s", "devheal: rank-0 progress report interval, seconds"),
    ("strategies.node_health_controller.poll_interval_s", "node-health-controller poll, seconds"),
    ("strategies.nvsentinel_jobset.poll_interval_s", "NVSentinel poll, seconds"),
    ("strategies.nvsentinel_jobset.eviction_s", "NVSentinel event → eviction, seconds"),
    ("strategies.progress_watchdog.progress_timeout_s", "NVRx step (progress) timeout, seconds"),
];

/// Why a `--sweep` could not be run. Each error names the parameter.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SweepError {
    #[error("--sweep {0}: expected PARAM=v1,v2,… (e.g. training.checkpoint_interval_min=10,30,60)")]
    Syntax(String),
    #[error("--sweep: unknown parameter `{name}` (known: {known})")]
    UnknownParam { name: String, known: String },
    #[error("--sweep {name}: `{value}` is not a number")]
    BadNumber { name: String, value: String },
    #[error("--sweep {name}={value}: {problem}")]
    BadValue { name: String, value: String, problem: String },
    #[error("--sweep {name}: the scenario has no training gang to set it on")]
    NoGang { name: String },
    #[error("--sweep {0} is given twice")]
    Duplicate(String),
}

/// One `--sweep` request: a parameter and the values to try.
#[derive(Clone, Debug, PartialEq)]
pub struct SweepSpec {
    pub param: String,
    pub values: Vec<f64>,
}

impl std::str::FromStr for SweepSpec {
    type Err = SweepError;

    /// `PARAM=v1,v2,…`: a known parameter and at least one finite number.
    fn from_str(text: &str) -> Result<SweepSpec, SweepError> {
        let (name, list) = text.split_once('=').ok_or_else(|| SweepError::Syntax(text.to_string()))?;
        let name = name.trim();
        if !PARAMS.iter().any(|(p, _)| *p == name) {
            let known: Vec<&str> = PARAMS.iter().map(|(p, _)| *p).collect();
            return Err(SweepError::UnknownParam { name: name.to_string(), known: known.join(", ") });
        }
        let mut values = Vec::new();
        for v in list.split(',') {
            let v = v.trim();
            match v.parse::<f64>() {
                Ok(x) if x.is_finite() => values.push(x),
                _ => return Err(SweepError::BadNumber { name: name.to_string(), value: v.to_string() }),
            }
        }
        Ok(SweepSpec { param: name.to_string(), values })
    }
}

/// The scenario fields a parameter names (every gang's, for `training.*`).
fn fields<'a>(s: &'a mut Scenario, param: &str) -> Vec<&'a mut f64> {
    if let Some(rest) = param.strip_prefix("training.") {
        return s
            .training
            .iter_mut()
            .filter_map(|t| match rest {
                "checkpoint_interval_min" => Some(&mut t.checkpoint_interval_min),
                "checkpoint_blocking_s" => Some(&mut t.checkpoint_blocking_s),
                "nccl_watchdog_s" => Some(&mut t.nccl_watchdog_s),
                "restart.scheduling_and_pod_start_s" => Some(&mut t.restart.scheduling_and_pod_start_s),
                "restart.framework_init_s" => Some(&mut t.restart.framework_init_s),
                "restart.nccl_init_s" => Some(&mut t.restart.nccl_init_s),
                "restart.checkpoint_load_s" => Some(&mut t.restart.checkpoint_load_s),
                _ => None,
            })
            .collect();
    }
    let d = &mut s.strategies;
    let field = match param {
        "operator.response_min" => &mut s.operator.response_min,
        "kubernetes.node_monitor_grace_s" => &mut s.kubernetes.node_monitor_grace_s,
        "kubernetes.not_ready_toleration_s" => &mut s.kubernetes.not_ready_toleration_s,
        "kubernetes.pod_failure_report_s" => &mut s.kubernetes.pod_failure_report_s,
        "repair.reset_device_min" => &mut s.repair.reset_device_min,
        "repair.reboot_node_min" => &mut s.repair.reboot_node_min,
        "repair.replace_hardware_h" => &mut s.repair.replace_hardware_h,
        "strategies.devheal.kernel_log_detect_ms" => &mut d.devheal.kernel_log_detect_ms,
        "strategies.devheal.publish_s" => &mut d.devheal.publish_s,
        "strategies.devheal.nvml_detect_s" => &mut d.devheal.nvml_detect_s,
        "strategies.devheal.tick_active_s" => &mut d.devheal.tick_active_s,
        "strategies.devheal.progress_interval_s" => &mut d.devheal.progress_interval_s,
        "strategies.node_health_controller.poll_interval_s" => &mut d.node_health_controller.poll_interval_s,
        "strategies.nvsentinel_jobset.poll_interval_s" => &mut d.nvsentinel_jobset.poll_interval_s,
        "strategies.nvsentinel_jobset.eviction_s" => &mut d.nvsentinel_jobset.eviction_s,
        "strategies.progress_watchdog.progress_timeout_s" => &mut d.progress_watchdog.progress_timeout_s,
        _ => return Vec::new(),
    };
    vec![field]
}

/// The scenario's value of a parameter (the first gang's, for `training.*`).
pub fn current_value(scenario: &Scenario, param: &str) -> Option<f64> {
    let mut copy = scenario.clone();
    fields(&mut copy, param).first().map(|v| **v)
}

/// The scenario with `param` set to `value`, checked as a scenario file would be (the error
/// names the parameter and the value).
pub fn with_value(scenario: &Scenario, param: &str, value: f64) -> Result<Scenario, SweepError> {
    let mut s = scenario.clone();
    let targets = fields(&mut s, param);
    if targets.is_empty() {
        return Err(if param.starts_with("training.") {
            SweepError::NoGang { name: param.to_string() }
        } else {
            let known: Vec<&str> = PARAMS.iter().map(|(p, _)| *p).collect();
            SweepError::UnknownParam { name: param.to_string(), known: known.join(", ") }
        });
    }
    for t in targets {
        *t = value;
    }
    s.validate(&format!("{} with {param}={value}", scenario.name)).map_err(|e| SweepError::BadValue {
        name: param.to_string(),
        value: value.to_string(),
        problem: e.to_string(),
    })?;
    Ok(s)
}

/// Check every requested value before anything runs.
pub fn validate(scenario: &Scenario, specs: &[SweepSpec]) -> Result<(), SweepError> {
    let mut seen = std::collections::BTreeSet::new();
    for spec in specs {
        if !seen.insert(spec.param.as_str()) {
            return Err(SweepError::Duplicate(spec.param.clone()));
        }
        for &v in &spec.values {
            with_value(scenario, &spec.param, v)?;
        }
    }
    Ok(())
}

/// One value of a swept parameter and what each strategy made of it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SweepPoint {
    pub value: f64,
    /// (strategy, ETTR) in the order the strategies ran.
    pub ettr: Vec<(String, f64)>,
    /// devheal's ETTR minus the best other strategy's, and which that was (absent if devheal
    /// or every other strategy did not run).
    pub devheal_lead: Option<f64>,
    pub best_other: Option<String>,
}

impl SweepPoint {
    fn of(value: f64, report: &Report) -> SweepPoint {
        let devheal = report.strategies.iter().find(|s| s.name == "devheal");
        let best = report.best_other();
        SweepPoint {
            value,
            ettr: report.strategies.iter().map(|s| (s.name.clone(), s.ettr)).collect(),
            devheal_lead: devheal.zip(best).map(|(d, b)| d.ettr - b.ettr),
            best_other: best.map(|b| b.name.clone()),
        }
    }

    pub fn devheal_ettr(&self) -> Option<f64> {
        self.ettr.iter().find(|(n, _)| n == "devheal").map(|(_, e)| *e)
    }
}

/// A figure's range over a sweep: ((value at the minimum, minimum), (value at the maximum,
/// maximum)).
pub type Range = ((f64, f64), (f64, f64));

/// One swept parameter.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ParamSweep {
    pub param: String,
    pub description: String,
    /// The scenario's own value.
    pub baseline_value: f64,
    pub points: Vec<SweepPoint>,
}

impl ParamSweep {
    /// The lowest and highest devheal ETTR over the values, with the values that gave them.
    pub fn devheal_range(&self) -> Option<Range> {
        range(self.points.iter().filter_map(|p| Some((p.value, p.devheal_ettr()?))))
    }

    /// The lowest and highest devheal lead over the values, with the values that gave them.
    pub fn lead_range(&self) -> Option<Range> {
        range(self.points.iter().filter_map(|p| Some((p.value, p.devheal_lead?))))
    }
}

/// ((value at the minimum, minimum), (value at the maximum, maximum)).
fn range(items: impl Iterator<Item = (f64, f64)>) -> Option<Range> {
    items.fold(None, |acc, (v, y)| match acc {
        None => Some(((v, y), (v, y))),
        Some((lo, hi)) => Some((if y < lo.1 { (v, y) } else { lo }, if y > hi.1 { (v, y) } else { hi })),
    })
}

/// Every sweep of one run, with the unswept run they are measured against.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SweepReport {
    /// The scenario as given, every strategy, the same trace.
    pub baseline: Report,
    pub sweeps: Vec<ParamSweep>,
}

/// Run the scenario as given (the baseline, a full report) and then once per swept value, every
/// run on `trace`. The sweep runs leave out devheal's without-straggler-detection comparison.
/// Values are checked first ([`validate`]).
pub fn run_sweeps(
    scenario: &Scenario,
    seed: u64,
    trace: &FaultTrace,
    strategies: &[Strategy],
    specs: &[SweepSpec],
    progress: &mut dyn FnMut(Progress<'_>),
    on_value: &mut dyn FnMut(&str, f64),
) -> Result<SweepReport, SweepError> {
    validate(scenario, specs)?;
    let baseline = crate::simulate_trace(scenario, seed, trace, strategies, progress);
    let mut sweeps = Vec::new();
    for spec in specs {
        let mut points = Vec::new();
        for &value in &spec.values {
            on_value(&spec.param, value);
            let mut s = with_value(scenario, &spec.param, value)?;
            s.strategies.devheal.compare_without_straggler_detection = false;
            let report = crate::simulate_trace(&s, seed, trace, strategies, progress);
            points.push(SweepPoint::of(value, &report));
        }
        sweeps.push(ParamSweep {
            param: spec.param.clone(),
            description: PARAMS
                .iter()
                .find(|(p, _)| *p == spec.param)
                .map(|(_, d)| d.to_string())
                .unwrap_or_default(),
            baseline_value: current_value(scenario, &spec.param).unwrap_or(f64::NAN),
            points,
        });
    }
    Ok(SweepReport { baseline, sweeps })
}

/// A value as the tables print it: no trailing zeros.
pub fn fmt_value(v: f64) -> String {
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.to_string() }
}

impl SweepReport {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// One table per swept parameter: a row per value, a column per strategy's ETTR, devheal's
    /// lead; then the range of devheal's ETTR per parameter, widest first (the tornado).
    pub fn to_table(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let b = &self.baseline;
        let _ = writeln!(out, "{}", b.headline());
        if let Some(r) = &b.replay {
            let _ = writeln!(out, "{}", r.lines());
        }
        let base: Vec<String> =
            b.strategies.iter().map(|s| format!("{} {:.2}%", s.name, s.ettr * 100.0)).collect();
        let _ = writeln!(out, "\nbaseline (the scenario as given) ETTR: {}", base.join(", "));
        for sweep in &self.sweeps {
            let _ = writeln!(
                out,
                "\nsweep {} ({}; the scenario's value {}):",
                sweep.param,
                sweep.description,
                fmt_value(sweep.baseline_value)
            );
            let mut header = vec!["value".to_string()];
            header.extend(b.strategies.iter().map(|s| s.name.clone()));
            header.push("devheal − best other".into());
            let mut rows = vec![header];
            for p in &sweep.points {
                let mut row = vec![fmt_value(p.value)];
                row.extend(p.ettr.iter().map(|(_, e)| format!("{:.2}%", e * 100.0)));
                row.push(match (&p.devheal_lead, &p.best_other) {
                    (Some(l), Some(n)) => format!("{:+.2} ({n})", l * 100.0),
                    _ => "-".into(),
                });
                rows.push(row);
            }
            write_table(&mut out, &rows);
        }
        if self.sweeps.iter().any(|s| s.devheal_range().is_some()) {
            let _ = writeln!(out, "\ndevheal's ETTR over each sweep, widest range first:");
            for s in self.tornado_order() {
                if let Some(((v_lo, lo), (v_hi, hi))) = s.devheal_range() {
                    let _ = writeln!(
                        out,
                        "  {:<48} {:.2}% ({}) … {:.2}% ({}): {:.2} points",
                        s.param,
                        lo * 100.0,
                        fmt_value(v_lo),
                        hi * 100.0,
                        fmt_value(v_hi),
                        (hi - lo) * 100.0
                    );
                }
            }
        }
        if !b.checkpoint_advice.is_empty() {
            let _ = writeln!(
                out,
                "\ndevheal's checkpoint advice (baseline run, Daly's optimum for the interruptions it saw):"
            );
            for a in &b.checkpoint_advice {
                let _ = writeln!(out, "  {}", a.line());
            }
        }
        let _ = writeln!(
            out,
            "\nEvery run replays the same trace ({} faults); only the swept parameter differs. GPU-h lost by the baseline's devheal: {}.",
            b.trace.faults_by_class.iter().map(|(_, n)| n).sum::<u64>(),
            b.strategies
                .iter()
                .find(|s| s.name == "devheal")
                .map_or("-".to_string(), |s| fmt_thousands(s.gpu_hours_lost.total))
        );
        out
    }

    /// The sweeps ordered by the width of devheal's ETTR range, widest first (ties: as given).
    pub fn tornado_order(&self) -> Vec<&ParamSweep> {
        let width = |s: &ParamSweep| s.devheal_range().map_or(-1.0, |((_, lo), (_, hi))| hi - lo);
        let mut order: Vec<&ParamSweep> = self.sweeps.iter().collect();
        order.sort_by(|a, b| width(b).total_cmp(&width(a)));
        order
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Scenario {
        Scenario::from_yaml(include_str!("../tests/data/small-cluster.yaml"), "small").expect("fixture")
    }

    #[test]
    fn specs_parse_and_bad_ones_name_the_parameter() {
        let s: SweepSpec = "training.checkpoint_interval_min=10, 30,60".parse().expect("parses");
        assert_eq!(
            s,
            SweepSpec { param: "training.checkpoint_interval_min".into(), values: vec![10.0, 30.0, 60.0] }
        );
        let err = "no.such=1".parse::<SweepSpec>().unwrap_err().to_string();
        assert!(
            err.contains("unknown parameter `no.such`") && err.contains("operator.response_min"),
            "{err}"
        );
        let err = "operator.response_min=5,x".parse::<SweepSpec>().unwrap_err().to_string();
        assert!(err.contains("operator.response_min") && err.contains("`x`"), "{err}");
        let err = "operator.response_min=nan".parse::<SweepSpec>().unwrap_err().to_string();
        assert!(err.contains("`nan` is not a number"), "{err}");
        let err = "operator.response_min".parse::<SweepSpec>().unwrap_err().to_string();
        assert!(err.contains("PARAM=v1,v2"), "{err}");
        let err = "operator.response_min=".parse::<SweepSpec>().unwrap_err().to_string();
        assert!(err.contains("operator.response_min"), "{err}");
    }

    #[test]
    fn every_parameter_sets_its_scenario_field_and_values_are_checked() {
        let scenario = small();
        for (param, _) in PARAMS {
            let base = current_value(&scenario, param).unwrap_or_else(|| panic!("{param} has no field"));
            let changed = with_value(&scenario, param, base * 2.0 + 1.0).expect("a larger value is valid");
            assert_eq!(current_value(&changed, param), Some(base * 2.0 + 1.0), "{param}");
            // The trace does not depend on any sweepable parameter.
            assert_eq!(
                FaultTrace::generate(&scenario, 3).events,
                FaultTrace::generate(&changed, 3).events,
                "{param} changes the trace"
            );
        }
        // Every gang gets a training.* value.
        let s = with_value(&scenario, "training.nccl_watchdog_s", 120.0).expect("valid");
        assert!(s.training.iter().all(|t| t.nccl_watchdog_s == 120.0));
        // A bad value: the scenario's own check, naming the parameter and the field.
        let err = with_value(&scenario, "training.checkpoint_interval_min", 0.0).unwrap_err().to_string();
        assert!(err.contains("--sweep training.checkpoint_interval_min=0") && err.contains("1 ms"), "{err}");
        let err = with_value(&scenario, "operator.response_min", -5.0).unwrap_err().to_string();
        assert!(err.contains("operator.response_min=-5"), "{err}");
        let specs = vec![
            "operator.response_min=10".parse().expect("ok"),
            "operator.response_min=20".parse().expect("ok"),
        ];
        assert_eq!(validate(&scenario, &specs), Err(SweepError::Duplicate("operator.response_min".into())));
        let mut no_gangs = scenario.clone();
        no_gangs.training.clear();
        assert!(matches!(
            with_value(&no_gangs, "training.nccl_watchdog_s", 60.0),
            Err(SweepError::NoGang { .. })
        ));
    }

    #[test]
    fn values_print_without_trailing_zeros() {
        assert_eq!(fmt_value(30.0), "30");
        assert_eq!(fmt_value(0.5), "0.5");
        assert_eq!(fmt_value(4.024), "4.024");
        assert_eq!(fmt_value(-0.0), "0");
    }
}
