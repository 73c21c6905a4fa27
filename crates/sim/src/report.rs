//! What a run produces: per-strategy figures (ETTR, lost GPU-hours by cause, inference
//! availability, action counts), as JSON and as the terminal table.

use serde::Serialize;

/// GPU-hours lost, by cause.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct LostGpuHours {
    /// From the fault until something acts on it (hang, crash loop, waiting for a person).
    pub hang_before_detection: f64,
    /// Work done since the last checkpoint and thrown away.
    pub rework_since_checkpoint: f64,
    /// Restarting: scheduling, start-up, NCCL init, checkpoint load; a new replica starting.
    pub restart: f64,
    /// Workloads waiting for healthy capacity (no spare node, no free GPU).
    pub capacity_held_out: f64,
    /// Healthy GPUs taken out by over-broad quarantine (node drains for one GPU, false
    /// positives) and replicas killed on healthy devices.
    pub collateral_quarantine: f64,
    /// Blocking checkpoint writes.
    pub checkpoint_overhead: f64,
    /// Throughput lost to slow ranks (the slowest rank sets a gang's pace).
    pub straggler_slowdown: f64,
    /// Restarts for planned maintenance.
    pub planned_maintenance: f64,
}

impl LostGpuHours {
    pub fn total(&self) -> f64 {
        self.hang_before_detection
            + self.rework_since_checkpoint
            + self.restart
            + self.capacity_held_out
            + self.collateral_quarantine
            + self.checkpoint_overhead
            + self.straggler_slowdown
            + self.planned_maintenance
    }

    /// (name, value) pairs in a fixed order, for tables and charts.
    pub fn by_cause(&self) -> [(&'static str, f64); 8] {
        [
            ("hang_before_detection", self.hang_before_detection),
            ("rework_since_checkpoint", self.rework_since_checkpoint),
            ("restart", self.restart),
            ("capacity_held_out", self.capacity_held_out),
            ("collateral_quarantine", self.collateral_quarantine),
            ("checkpoint_overhead", self.checkpoint_overhead),
            ("straggler_slowdown", self.straggler_slowdown),
            ("planned_maintenance", self.planned_maintenance),
        ]
    }
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct LostGpuHoursReport {
    pub total: f64,
    pub by_cause: LostGpuHours,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Counts {
    /// Faults that stopped a running training gang.
    pub training_interruptions: u64,
    pub gang_restarts: u64,
    /// Of those, restarts in which every member restarted in place (no scheduling, no pod
    /// start): devheal on a gang whose pods have the restart rule, no member moved.
    pub in_place_restarts: u64,
    pub pod_evictions: u64,
    pub node_drains: u64,
    pub device_quarantines: u64,
    /// Of those, quarantines that tainted their node (no DRA: the node had no quarantined
    /// device yet, and now takes no new pods).
    pub node_taints: u64,
    /// Devices or nodes quarantined, drained or cordoned while their hardware was healthy.
    pub false_quarantines: u64,
    pub repairs_reset: u64,
    /// Resets not carried out: the device stayed held by a process for the agent's whole wait,
    /// or (devheal's agent) it had had its 3 resets in 24 h.
    pub resets_refused: u64,
    pub repairs_reboot: u64,
    pub repairs_replace: u64,
    pub operator_interventions: u64,
    pub replica_failures: u64,
    /// Actions the devheal engine returned (all kinds), and those the model could not map.
    pub engine_actions: u64,
    pub engine_actions_unmapped: u64,
    pub engine_inputs: u64,
    pub engine_ticks: u64,
    /// Slow members moved elsewhere at a checkpoint (devheal's degradation policy).
    pub straggler_replacements: u64,
    /// … of which on a node that was not slow when they moved.
    pub false_replacements: u64,
    /// Restarts a strategy caused of a gang that was running on healthy hardware (no member
    /// broken or slow), and evictions of serving replicas on healthy devices.
    pub false_restarts: u64,
    /// Drains, reboots, replacements and resets a strategy ordered of healthy hardware.
    pub false_repairs: u64,
    /// Harmless kernel events (noise) that struck a node that was up.
    pub noise_events: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct TrainingReport {
    pub name: String,
    pub gpus: u64,
    pub ettr: f64,
    /// Cumulative ETTR at the end of each simulated day.
    pub ettr_by_day: Vec<f64>,
    pub interruptions: u64,
    pub restarts: u64,
    /// Hours the gang was computing or checkpointing (not hung, restarting or waiting).
    pub running_hours: f64,
    /// GPU-hours of this gang by cause (also included in the strategy's total).
    pub gpu_hours_lost: LostGpuHours,
    /// Useful GPU-hours (ETTR × GPUs × wall hours).
    pub productive_gpu_hours: f64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct InferenceReport {
    pub name: String,
    pub replicas: u32,
    pub needed_replicas: u32,
    /// Share of time with at least `needed_replicas` replicas serving.
    pub availability: f64,
    pub replica_hours_unavailable: f64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct StrategyReport {
    pub name: String,
    pub description: String,
    /// GPU-weighted mean ETTR of the training gangs (1 when there are none).
    pub ettr: f64,
    pub gpu_hours_lost: LostGpuHoursReport,
    /// Time-weighted mean availability over the inference services (1 when there are none).
    pub inference_availability: f64,
    pub replica_hours_unavailable: f64,
    pub training: Vec<TrainingReport>,
    pub inference: Vec<InferenceReport>,
    pub counts: Counts,
    /// Events the simulator processed for this strategy.
    pub events: u64,
    /// Faults that interrupted a running training gang, by fault class (the planned
    /// maintenance and a strategy's own actions are not faults).
    pub interruptions_by_class: Vec<(String, u64)>,
    /// devheal's degradation detectors, scored (devheal's run only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detectors: Option<DetectorReport>,
}

/// How one of devheal's degradation detectors did, scored by the world against the truth.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct DetectorScore {
    /// Findings, and those that were true (a straggler or baseline finding while the member's
    /// node was slow; a hang finding while the gang was hung).
    pub findings: u64,
    pub true_findings: u64,
    pub precision: Option<f64>,
    /// Episodes it could find (straggler: ≥ 6 % slower for ≥ 4 min on a gang member; baseline:
    /// the same on a panel member; hang: a silence of ≥ 120 s or one it found), and found.
    pub episodes: u64,
    pub found: u64,
    pub recall: Option<f64>,
    /// From the episode's start to its first true finding, over the episodes found.
    pub delay_median_s: Option<f64>,
    pub delay_p95_s: Option<f64>,
}

impl DetectorScore {
    /// `precision 0.95 (190/200), recall 0.88 (176/200), delay median 240 s, p95 420 s`.
    pub fn line(&self) -> String {
        let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
        let secs = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0} s"));
        format!(
            "precision {} ({}/{}), recall {} ({}/{}), delay median {}, p95 {}",
            pct(self.precision),
            self.true_findings,
            self.findings,
            pct(self.recall),
            self.found,
            self.episodes,
            secs(self.delay_median_s),
            secs(self.delay_p95_s)
        )
    }
}

/// devheal's degradation detectors on the simulated step times.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct DetectorReport {
    pub straggler: DetectorScore,
    pub baseline_shift: DetectorScore,
    pub hang: DetectorScore,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct TraceSummary {
    /// Fault events of each class in the shared trace.
    pub faults_by_class: Vec<(String, u64)>,
    pub straggler_episodes: u64,
    pub planned_maintenance: u64,
    pub lemon_nodes: u64,
    /// What the signal noise put into the trace.
    pub noise: crate::noise::NoiseSummary,
}

/// The scenario's quarantine and repair paths, as the report states them.
pub fn repair_paths(scenario: &crate::Scenario) -> String {
    let quarantine = if scenario.cluster.dra {
        "a quarantined GPU is kept from the scheduler alone (DRA)"
    } else {
        "a quarantined GPU taints its node, which takes no new pods (no DRA: device-plugin GPUs)"
    };
    let r = &scenario.repair;
    let in_place: Vec<&str> =
        scenario.training.iter().filter(|t| t.restart_rules).map(|t| t.name.as_str()).collect();
    let restarts = if in_place.is_empty() {
        "gang restarts re-create every member (no gang's pods restart in place on exit 76)".to_string()
    } else {
        format!(
            "devheal restarts {} in place when no member moves (no scheduling and pod start)",
            in_place.join(", ")
        )
    };
    format!(
        "repairs: {quarantine}; GPU reset ({} min, only once no process holds the GPU; devheal's agent: at most 3 a GPU in 24 h, a failed reset asks for a reboot), node reboot ({} min), hardware replacement ({} h); {restarts}",
        r.reset_device_min, r.reboot_node_min, r.replace_hardware_h
    )
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Report {
    pub scenario: String,
    pub description: String,
    pub seed: u64,
    pub duration_days: f64,
    pub gpus: u64,
    pub trace: TraceSummary,
    /// How a quarantined device is kept from the scheduler in this scenario, and the repair
    /// paths it has (one sentence, printed under the headline).
    pub repair_paths: String,
    pub strategies: Vec<StrategyReport>,
    /// devheal with and without its straggler detection, on the same trace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub straggler_detection: Option<StragglerDetectionReport>,
    /// For each training gang as devheal ran it: the interruptions it saw and Daly's optimal
    /// checkpoint interval for them (empty when devheal did not run).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub checkpoint_advice: Vec<CheckpointAdvice>,
    /// Present when the trace was read from a file (`devheal sim --trace`) instead of generated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replay: Option<crate::replay::ReplaySummary>,
}

/// The checkpoint interval devheal recommends for one gang from the failures it observed:
/// Daly's higher-order optimum (fault-model.md §4) for the observed mean time to interrupt and
/// the gang's blocking checkpoint write time, beside the interval the scenario uses.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct CheckpointAdvice {
    pub gang: String,
    /// Faults that stopped the gang while it ran, and the hours it ran.
    pub interruptions: u64,
    pub running_hours: f64,
    /// Running time per interruption, in seconds (Daly's M); absent with no interruption.
    pub mean_time_to_interrupt_s: Option<f64>,
    /// The blocking checkpoint write (Daly's δ), in seconds.
    pub checkpoint_write_s: f64,
    /// The gang's restart cost R, in seconds.
    pub restart_s: f64,
    /// The interval the scenario uses (τ), in seconds.
    pub scenario_interval_s: f64,
    /// Daly's optimum τ for M and δ, in seconds; absent with no interruption.
    pub daly_optimal_interval_s: Option<f64>,
    /// Daly's expected ETTR τ / E[segment] at the scenario's τ and at the optimum.
    pub daly_ettr_at_scenario_interval: Option<f64>,
    pub daly_ettr_at_optimum: Option<f64>,
}

impl CheckpointAdvice {
    /// The advice for each gang of devheal's run in `reports` (none if devheal did not run).
    pub fn for_devheal(scenario: &crate::Scenario, reports: &[StrategyReport]) -> Vec<CheckpointAdvice> {
        let Some(devheal) = reports.iter().find(|r| r.name == "devheal") else { return Vec::new() };
        devheal
            .training
            .iter()
            .zip(&scenario.training)
            .map(|(g, spec)| {
                let tau = spec.checkpoint_interval_min * 60.0;
                let delta = spec.checkpoint_blocking_s;
                let restart = spec.restart.total().0 as f64 / 1e9;
                let m = (g.interruptions > 0).then(|| g.running_hours * 3600.0 / g.interruptions as f64);
                let optimum = m.map(|m| crate::daly::daly_optimal_interval(delta, m));
                CheckpointAdvice {
                    gang: g.name.clone(),
                    interruptions: g.interruptions,
                    running_hours: g.running_hours,
                    mean_time_to_interrupt_s: m,
                    checkpoint_write_s: delta,
                    restart_s: restart,
                    scenario_interval_s: tau,
                    daly_optimal_interval_s: optimum,
                    daly_ettr_at_scenario_interval: m
                        .map(|m| crate::daly::expected_ettr(tau, delta, restart, m)),
                    daly_ettr_at_optimum: m
                        .zip(optimum)
                        .map(|(m, opt)| crate::daly::expected_ettr(opt, delta, restart, m)),
                }
            })
            .collect()
    }

    /// One line for a person, e.g. `llama3-405b: 362 interruptions in 1,140 running hours
    /// (mean time to interrupt 3.15 h), checkpoint write 30 s: Daly's optimum 13.6 min
    /// (scenario 30.0 min; Daly's ETTR 95.9 % vs 94.6 %)`.
    pub fn line(&self) -> String {
        match (self.mean_time_to_interrupt_s, self.daly_optimal_interval_s) {
            (Some(m), Some(opt)) => format!(
                "{}: {} interruptions in {} running hours (mean time to interrupt {:.2} h), checkpoint write {} s: \
                 Daly's optimal interval {:.1} min (the scenario's {:.1} min; Daly's ETTR {:.1}% at the optimum vs {:.1}%)",
                self.gang,
                self.interruptions,
                fmt_thousands(self.running_hours),
                m / 3600.0,
                self.checkpoint_write_s,
                opt / 60.0,
                self.scenario_interval_s / 60.0,
                self.daly_ettr_at_optimum.unwrap_or(f64::NAN) * 100.0,
                self.daly_ettr_at_scenario_interval.unwrap_or(f64::NAN) * 100.0,
            ),
            _ => format!(
                "{}: no interruption in {} running hours: no failure rate to size the interval by (the scenario's {:.1} min)",
                self.gang,
                fmt_thousands(self.running_hours),
                self.scenario_interval_s / 60.0
            ),
        }
    }
}

/// What devheal's degradation detection is worth on this trace: the devheal strategy run again
/// with straggler detection off.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct StragglerDetectionReport {
    pub ettr_with: f64,
    pub ettr_without: f64,
    /// GPU-hours lost to slow ranks, with and without.
    pub straggler_gpu_hours_with: f64,
    pub straggler_gpu_hours_without: f64,
    /// All GPU-hours lost, with and without (replacements cost restarts).
    pub gpu_hours_lost_with: f64,
    pub gpu_hours_lost_without: f64,
    /// Slow members moved at a checkpoint.
    pub replacements: u64,
}

impl Report {
    pub fn to_json(&self) -> String {
        // Serialising plain structs of numbers and strings cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// What the signal noise put into the trace, in one line (none without noise).
    pub fn noise_line(&self) -> Option<String> {
        let n = &self.trace.noise;
        let events: u64 = n.events_by_kind.iter().map(|(_, c)| c).sum();
        if events == 0 && n.lines_lost + n.lines_late + n.blind_episodes == 0 {
            return None;
        }
        let kinds: Vec<String> = n.events_by_kind.iter().map(|(k, c)| format!("{c} {k}")).collect();
        Some(format!(
            "noise: {events} harmless kernel events ({}); {} lines lost, {} late; {} blind log-source episodes ({} lines missed)",
            kinds.join(", "),
            n.lines_lost,
            n.lines_late,
            n.blind_episodes,
            n.lines_blind
        ))
    }

    /// devheal's detectors on the simulated step times, one line each.
    pub fn detector_lines(&self) -> Vec<String> {
        let Some(d) = self.strategies.iter().find(|s| s.name == "devheal").and_then(|s| s.detectors.as_ref())
        else {
            return Vec::new();
        };
        vec![
            format!("  straggler (gang median, acted on): {}", d.straggler.line()),
            format!("  baseline shift (panel, scored only): {}", d.baseline_shift.line()),
            format!("  hang (rank 0 silence → Hung):       {}", d.hang.line()),
        ]
    }

    /// The first line of the table: the scenario, its size and the shared trace.
    pub fn headline(&self) -> String {
        let faults: u64 = self.trace.faults_by_class.iter().map(|(_, n)| n).sum();
        format!(
            "scenario {} (seed {}): {} GPUs, {} days, {} faults in the shared trace ({} lemon nodes, {} straggler episodes, {} planned maintenances)",
            self.scenario,
            self.seed,
            self.gpus,
            self.duration_days,
            faults,
            self.trace.lemon_nodes,
            self.trace.straggler_episodes,
            self.trace.planned_maintenance
        )
    }

    /// The comparison's first table (ETTR and GPU-hours lost by cause), header row first, as
    /// [`Report::to_table`] prints it.
    pub fn loss_rows(&self) -> Vec<Vec<String>> {
        let header = [
            "strategy",
            "ETTR",
            "GPU-h lost",
            "hang",
            "rework",
            "restart",
            "capacity",
            "collateral",
            "ckpt",
            "slow",
            "planned",
            "inference avail",
            "replica-h down",
        ];
        let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
        for s in &self.strategies {
            let c = &s.gpu_hours_lost.by_cause;
            rows.push(vec![
                s.name.clone(),
                format!("{:.1}%", s.ettr * 100.0),
                fmt_thousands(s.gpu_hours_lost.total),
                fmt_thousands(c.hang_before_detection),
                fmt_thousands(c.rework_since_checkpoint),
                fmt_thousands(c.restart),
                fmt_thousands(c.capacity_held_out),
                fmt_thousands(c.collateral_quarantine),
                fmt_thousands(c.checkpoint_overhead),
                fmt_thousands(c.straggler_slowdown),
                fmt_thousands(c.planned_maintenance),
                format!("{:.3}%", s.inference_availability * 100.0),
                fmt_thousands(s.replica_hours_unavailable),
            ]);
        }
        rows
    }

    /// The comparison's second table (interruptions, evictions, quarantines, repairs …), header
    /// row first.
    pub fn count_rows(&self) -> Vec<Vec<String>> {
        let header = [
            "strategy",
            "interruptions",
            "gang restarts",
            "evictions",
            "node drains",
            "quarantines",
            "false quar.",
            "false restarts",
            "false repairs",
            "healthy GPU-h out",
            "repairs r/b/x",
            "operator",
            "engine actions",
        ];
        let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
        for s in &self.strategies {
            let c = &s.counts;
            rows.push(vec![
                s.name.clone(),
                c.training_interruptions.to_string(),
                c.gang_restarts.to_string(),
                c.pod_evictions.to_string(),
                c.node_drains.to_string(),
                c.device_quarantines.to_string(),
                c.false_quarantines.to_string(),
                c.false_restarts.to_string(),
                c.false_repairs.to_string(),
                fmt_thousands(s.gpu_hours_lost.by_cause.collateral_quarantine),
                format!("{}/{}/{}", c.repairs_reset, c.repairs_reboot, c.repairs_replace),
                c.operator_interventions.to_string(),
                if s.name == "devheal" { c.engine_actions.to_string() } else { "-".to_string() },
            ]);
        }
        rows
    }

    /// The strategy other than devheal with the highest ETTR (ties: fewer GPU-hours lost), if
    /// devheal and another strategy ran.
    pub fn best_other(&self) -> Option<&StrategyReport> {
        self.strategies.iter().find(|s| s.name == "devheal")?;
        self.strategies.iter().filter(|s| s.name != "devheal").max_by(|a, b| {
            a.ettr.total_cmp(&b.ettr).then(b.gpu_hours_lost.total.total_cmp(&a.gpu_hours_lost.total))
        })
    }

    /// One line comparing devheal with the best of the other strategies.
    pub fn best_other_summary(&self) -> Option<String> {
        let devheal = self.strategies.iter().find(|s| s.name == "devheal")?;
        let best = self.best_other()?;
        let lost = devheal.gpu_hours_lost.total - best.gpu_hours_lost.total;
        Some(format!(
            "devheal against the best other strategy ({}): ETTR {:.2}% vs {:.2}% ({:+.2} points); GPU-h lost {} vs {} ({}{}).",
            best.name,
            devheal.ettr * 100.0,
            best.ettr * 100.0,
            (devheal.ettr - best.ettr) * 100.0,
            fmt_thousands(devheal.gpu_hours_lost.total),
            fmt_thousands(best.gpu_hours_lost.total),
            if lost > 0.0 { "+" } else { "" },
            fmt_thousands(lost),
        ))
    }

    /// Two lines on what devheal's straggler detection changed, when the run compared it.
    pub fn straggler_summary(&self) -> Option<String> {
        let d = self.straggler_detection.as_ref()?;
        Some(format!(
            "devheal's straggler detection: ETTR {:.2}% with, {:.2}% without ({:+.2} points); slow-rank GPU-h {} with, {} without;\n\
                 {} slow members replaced at a checkpoint; all GPU-h lost {} with, {} without ({}).",
            d.ettr_with * 100.0,
            d.ettr_without * 100.0,
            (d.ettr_with - d.ettr_without) * 100.0,
            fmt_thousands(d.straggler_gpu_hours_with),
            fmt_thousands(d.straggler_gpu_hours_without),
            d.replacements,
            fmt_thousands(d.gpu_hours_lost_with),
            fmt_thousands(d.gpu_hours_lost_without),
            if d.gpu_hours_lost_with <= d.gpu_hours_lost_without {
                format!("{} saved", fmt_thousands(d.gpu_hours_lost_without - d.gpu_hours_lost_with))
            } else {
                format!("{} more", fmt_thousands(d.gpu_hours_lost_with - d.gpu_hours_lost_without))
            }
        ))
    }

    /// The terminal table.
    pub fn to_table(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(out, "{}", self.headline());
        if let Some(line) = self.noise_line() {
            let _ = writeln!(out, "{line}");
        }
        let _ = writeln!(out, "{}", self.repair_paths);
        let _ = writeln!(out);
        write_table(&mut out, &self.loss_rows());
        let _ = writeln!(out);
        write_table(&mut out, &self.count_rows());
        if let Some(summary) = self.best_other_summary() {
            let _ = writeln!(out, "\n{summary}");
        }
        if let Some(summary) = self.straggler_summary() {
            let _ = writeln!(out, "\n{summary}");
        }
        let detectors = self.detector_lines();
        if !detectors.is_empty() {
            let _ = writeln!(
                out,
                "\ndevheal's degradation detectors (crates/detect) on the simulated step times:"
            );
            for line in detectors {
                let _ = writeln!(out, "{line}");
            }
        }
        let _ = writeln!(
            out,
            "\nETTR: useful training time / wall time of the training gangs. GPU-h lost: training and inference, by cause.\n\
             False restarts: of a gang running on healthy hardware, or of a serving replica on healthy devices; false repairs:\n\
             drains, reboots, replacements, resets of healthy hardware; healthy GPU-h out: healthy GPUs taken out of service.\n\
             Repairs r/b/x: device resets / node reboots / hardware replacements. See docs/simulator.md for the model."
        );
        out
    }
}

pub(crate) fn write_table(out: &mut String, rows: &[Vec<String>]) {
    use std::fmt::Write;
    let cols = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> =
        (0..cols).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    for (i, row) in rows.iter().enumerate() {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            let pad = widths[c] - cell.chars().count();
            if c == 0 {
                let _ = write!(line, "{cell}{}", " ".repeat(pad));
            } else {
                let _ = write!(line, "  {}{cell}", " ".repeat(pad));
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
        if i == 0 {
            let total: usize = widths.iter().sum::<usize>() + 2 * cols.saturating_sub(1);
            let _ = writeln!(out, "{}", "-".repeat(total));
        }
    }
}

/// `1234567.8` → `1,234,568`.
pub fn fmt_thousands(v: f64) -> String {
    let n = v.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    if n < 0 { format!("-{out}") } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(fmt_thousands(0.4), "0");
        assert_eq!(fmt_thousands(999.0), "999");
        assert_eq!(fmt_thousands(1234567.8), "1,234,568");
        assert_eq!(fmt_thousands(-1000.0), "-1,000");
    }
}
