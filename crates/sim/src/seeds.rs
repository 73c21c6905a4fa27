//! Many seeds: the same scenario over several independent fault traces, every figure reported as
//! its mean and 95 % interval over the seeds, and devheal's difference from each other strategy
//! paired by seed (both ran on the same trace), with its interval.
//!
//! The interval is Student's t: mean ± t(0.975, n − 1) · s / √n over the n seeds (s the sample
//! standard deviation). Seeds are independent traces, so the per-seed figures are independent
//! draws; paired differences remove the trace-to-trace variation the strategies share.

use serde::Serialize;

use crate::report::{Report, StrategyReport, fmt_thousands, write_table};

/// A mean and its 95 % interval.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct Interval {
    pub mean: f64,
    /// Half the width of the 95 % interval (0 with one seed).
    pub half_width: f64,
    pub low: f64,
    pub high: f64,
}

/// t(0.975, df) for df = 1 …; 1.96 beyond the table.
const T975: [f64; 30] = [
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
    2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
];

/// The two-sided 95 % quantile of Student's t with `df` degrees of freedom.
pub fn t_975(df: usize) -> f64 {
    match df {
        0 => f64::INFINITY,
        d if d <= T975.len() => T975[d - 1],
        _ => 1.96,
    }
}

impl Interval {
    /// The mean of `values` and its 95 % t interval (half-width 0 for a single value).
    pub fn of(values: &[f64]) -> Interval {
        let n = values.len();
        if n == 0 {
            return Interval { mean: f64::NAN, half_width: f64::NAN, low: f64::NAN, high: f64::NAN };
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let half_width = if n < 2 {
            0.0
        } else {
            let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
            t_975(n - 1) * (var / n as f64).sqrt()
        };
        Interval { mean, half_width, low: mean - half_width, high: mean + half_width }
    }

    /// Whether the whole interval is above zero.
    pub fn above_zero(&self) -> bool {
        self.low > 0.0
    }

    /// Whether the whole interval is below zero.
    pub fn below_zero(&self) -> bool {
        self.high < 0.0
    }
}

/// One strategy over the seeds.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct StrategySummary {
    pub name: String,
    pub ettr: Interval,
    pub gpu_hours_lost: Interval,
    pub hang_before_detection: Interval,
    pub rework_since_checkpoint: Interval,
    pub restart: Interval,
    pub collateral_quarantine: Interval,
    pub straggler_slowdown: Interval,
    pub inference_availability: Interval,
    pub training_interruptions: Interval,
    pub gang_restarts: Interval,
    pub node_drains: Interval,
    pub false_quarantines: Interval,
    pub operator_interventions: Interval,
    /// ETTR of each seed, in seed order.
    pub ettr_by_seed: Vec<f64>,
}

/// devheal minus another strategy, seed by seed.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Difference {
    /// The other strategy.
    pub baseline: String,
    /// ETTR difference (a fraction; +0.01 = devheal one point higher).
    pub ettr: Interval,
    /// GPU-hours lost difference (negative = devheal lost fewer).
    pub gpu_hours_lost: Interval,
    pub hang_before_detection: Interval,
    pub false_quarantines: Interval,
}

/// The report of a multi-seed run.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SeedsReport {
    pub scenario: String,
    pub description: String,
    pub seeds: Vec<u64>,
    pub duration_days: f64,
    pub gpus: u64,
    pub strategies: Vec<StrategySummary>,
    /// devheal minus each other strategy (empty when devheal did not run).
    pub differences: Vec<Difference>,
    /// For each strategy, on how many seeds it had the highest ETTR.
    pub best_ettr_count: Vec<(String, u64)>,
}

fn figure(reports: &[&StrategyReport], f: impl Fn(&StrategyReport) -> f64) -> Interval {
    Interval::of(&reports.iter().map(|r| f(r)).collect::<Vec<_>>())
}

fn summary(name: &str, reports: &[&StrategyReport]) -> StrategySummary {
    StrategySummary {
        name: name.to_string(),
        ettr: figure(reports, |r| r.ettr),
        gpu_hours_lost: figure(reports, |r| r.gpu_hours_lost.total),
        hang_before_detection: figure(reports, |r| r.gpu_hours_lost.by_cause.hang_before_detection),
        rework_since_checkpoint: figure(reports, |r| r.gpu_hours_lost.by_cause.rework_since_checkpoint),
        restart: figure(reports, |r| r.gpu_hours_lost.by_cause.restart),
        collateral_quarantine: figure(reports, |r| r.gpu_hours_lost.by_cause.collateral_quarantine),
        straggler_slowdown: figure(reports, |r| r.gpu_hours_lost.by_cause.straggler_slowdown),
        inference_availability: figure(reports, |r| r.inference_availability),
        training_interruptions: figure(reports, |r| r.counts.training_interruptions as f64),
        gang_restarts: figure(reports, |r| r.counts.gang_restarts as f64),
        node_drains: figure(reports, |r| r.counts.node_drains as f64),
        false_quarantines: figure(reports, |r| r.counts.false_quarantines as f64),
        operator_interventions: figure(reports, |r| r.counts.operator_interventions as f64),
        ettr_by_seed: reports.iter().map(|r| r.ettr).collect(),
    }
}

fn paired(a: &[&StrategyReport], b: &[&StrategyReport], f: impl Fn(&StrategyReport) -> f64) -> Interval {
    Interval::of(&a.iter().zip(b).map(|(x, y)| f(x) - f(y)).collect::<Vec<_>>())
}

impl SeedsReport {
    /// Summarise one report per seed (each with the same strategies, in the same order).
    pub fn from_reports(reports: &[Report]) -> SeedsReport {
        let Some(first) = reports.first() else {
            return SeedsReport {
                scenario: String::new(),
                description: String::new(),
                seeds: Vec::new(),
                duration_days: 0.0,
                gpus: 0,
                strategies: Vec::new(),
                differences: Vec::new(),
                best_ettr_count: Vec::new(),
            };
        };
        let names: Vec<&str> = first.strategies.iter().map(|s| s.name.as_str()).collect();
        let by_name = |name: &str| -> Vec<&StrategyReport> {
            reports.iter().filter_map(|r| r.strategies.iter().find(|s| s.name == name)).collect()
        };
        let strategies: Vec<StrategySummary> = names.iter().map(|n| summary(n, &by_name(n))).collect();
        let mut differences = Vec::new();
        if names.contains(&"devheal") {
            let devheal = by_name("devheal");
            for other in names.iter().filter(|&&n| n != "devheal") {
                let o = by_name(other);
                differences.push(Difference {
                    baseline: other.to_string(),
                    ettr: paired(&devheal, &o, |r| r.ettr),
                    gpu_hours_lost: paired(&devheal, &o, |r| r.gpu_hours_lost.total),
                    hang_before_detection: paired(&devheal, &o, |r| {
                        r.gpu_hours_lost.by_cause.hang_before_detection
                    }),
                    false_quarantines: paired(&devheal, &o, |r| r.counts.false_quarantines as f64),
                });
            }
        }
        let mut best_ettr_count: Vec<(String, u64)> = names.iter().map(|n| (n.to_string(), 0)).collect();
        for r in reports {
            if let Some(i) = (0..r.strategies.len())
                .max_by(|&a, &b| r.strategies[a].ettr.total_cmp(&r.strategies[b].ettr).then(b.cmp(&a)))
            {
                best_ettr_count[i].1 += 1;
            }
        }
        SeedsReport {
            scenario: first.scenario.clone(),
            description: first.description.clone(),
            seeds: reports.iter().map(|r| r.seed).collect(),
            duration_days: first.duration_days,
            gpus: first.gpus,
            strategies,
            differences,
            best_ettr_count,
        }
    }

    pub fn to_json(&self) -> String {
        // Serialising plain structs of numbers and strings cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The strategy other than devheal with the highest mean ETTR.
    pub fn best_other(&self) -> Option<&StrategySummary> {
        self.strategies
            .iter()
            .filter(|s| s.name != "devheal")
            .max_by(|a, b| a.ettr.mean.total_cmp(&b.ettr.mean))
    }

    /// The terminal table.
    pub fn to_table(&self) -> String {
        use std::fmt::Write;
        let pct = |i: &Interval| format!("{:.2}% ± {:.2}", i.mean * 100.0, i.half_width * 100.0);
        let pct3 = |i: &Interval| format!("{:.3}% ± {:.3}", i.mean * 100.0, i.half_width * 100.0);
        let num = |i: &Interval| format!("{} ± {}", fmt_thousands(i.mean), fmt_thousands(i.half_width));
        let count = |i: &Interval| format!("{:.1} ± {:.1}", i.mean, i.half_width);
        let mut out = String::new();
        let seeds = match (self.seeds.first(), self.seeds.last()) {
            (Some(a), Some(b)) if a != b => format!("seeds {a}–{b}"),
            (Some(a), _) => format!("seed {a}"),
            _ => "no seeds".to_string(),
        };
        let _ = writeln!(
            out,
            "scenario {} ({seeds}, {} traces): {} GPUs, {} days; each figure is the mean over the seeds ± the half-width of its 95 % interval (Student's t)",
            self.scenario,
            self.seeds.len(),
            self.gpus,
            self.duration_days
        );
        let _ = writeln!(out);
        let mut rows = vec![
            ["strategy", "ETTR", "GPU-h lost", "hang", "rework", "restart", "inference avail"]
                .map(String::from)
                .to_vec(),
        ];
        for s in &self.strategies {
            rows.push(vec![
                s.name.clone(),
                pct(&s.ettr),
                num(&s.gpu_hours_lost),
                num(&s.hang_before_detection),
                num(&s.rework_since_checkpoint),
                num(&s.restart),
                pct3(&s.inference_availability),
            ]);
        }
        write_table(&mut out, &rows);
        let _ = writeln!(out);
        let mut rows = vec![
            [
                "strategy",
                "interruptions",
                "gang restarts",
                "node drains",
                "false quar.",
                "operator",
                "best ETTR",
            ]
            .map(String::from)
            .to_vec(),
        ];
        for (s, (_, best)) in self.strategies.iter().zip(&self.best_ettr_count) {
            rows.push(vec![
                s.name.clone(),
                count(&s.training_interruptions),
                count(&s.gang_restarts),
                count(&s.node_drains),
                count(&s.false_quarantines),
                count(&s.operator_interventions),
                format!("{best} of {}", self.seeds.len()),
            ]);
        }
        write_table(&mut out, &rows);
        if !self.differences.is_empty() {
            let _ = writeln!(
                out,
                "\ndevheal minus each other strategy, paired by seed (mean ± 95 % half-width):\n"
            );
            let mut rows = vec![
                [
                    "other strategy",
                    "ETTR (points)",
                    "GPU-h lost",
                    "hang GPU-h",
                    "false quar.",
                    "ETTR verdict",
                ]
                .map(String::from)
                .to_vec(),
            ];
            for d in &self.differences {
                let verdict = if d.ettr.above_zero() {
                    "devheal higher"
                } else if d.ettr.below_zero() {
                    "devheal lower"
                } else {
                    "not resolved"
                };
                rows.push(vec![
                    d.baseline.clone(),
                    format!("{:+.2} ± {:.2}", d.ettr.mean * 100.0, d.ettr.half_width * 100.0),
                    format!(
                        "{}{} ± {}",
                        if d.gpu_hours_lost.mean > 0.0 { "+" } else { "" },
                        fmt_thousands(d.gpu_hours_lost.mean),
                        fmt_thousands(d.gpu_hours_lost.half_width)
                    ),
                    format!(
                        "{}{} ± {}",
                        if d.hang_before_detection.mean > 0.0 { "+" } else { "" },
                        fmt_thousands(d.hang_before_detection.mean),
                        fmt_thousands(d.hang_before_detection.half_width)
                    ),
                    format!("{:+.1} ± {:.1}", d.false_quarantines.mean, d.false_quarantines.half_width),
                    verdict.to_string(),
                ]);
            }
            write_table(&mut out, &rows);
            if let Some(best) = self.best_other()
                && let Some(d) = self.differences.iter().find(|d| d.baseline == best.name)
            {
                let _ = writeln!(
                    out,
                    "\nBest other strategy by mean ETTR: {}; devheal minus it: {:+.2} ± {:.2} points of ETTR, {}{} ± {} GPU-h lost.",
                    best.name,
                    d.ettr.mean * 100.0,
                    d.ettr.half_width * 100.0,
                    if d.gpu_hours_lost.mean > 0.0 { "+" } else { "" },
                    fmt_thousands(d.gpu_hours_lost.mean),
                    fmt_thousands(d.gpu_hours_lost.half_width)
                );
            }
        }
        let _ = writeln!(
            out,
            "\n\"not resolved\": the 95 % interval of the difference contains 0. One trace per seed, shared by every strategy; see docs/simulator.md."
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_is_students_t() {
        let i = Interval::of(&[1.0, 2.0, 3.0, 4.0]);
        assert!((i.mean - 2.5).abs() < 1e-12);
        // s = 1.2910, s/√n = 0.6455, t(0.975, 3) = 3.182.
        assert!((i.half_width - 3.182 * (5.0f64 / 3.0).sqrt() / 2.0).abs() < 1e-9, "{i:?}");
        assert_eq!(Interval::of(&[7.0]).half_width, 0.0);
        assert!(Interval::of(&[1.0, 1.1, 0.9, 1.05]).above_zero());
        assert!(!Interval::of(&[1.0, -1.0, 0.5]).above_zero());
        assert_eq!(t_975(1), 12.706);
        assert_eq!(t_975(100), 1.96);
    }
}
