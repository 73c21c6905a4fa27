//! devheal-sim: the deterministic fleet simulator.
//!
//! A discrete-event model of a GPU cluster with training gangs and inference services, driven
//! by a fault trace calibrated from published data (`../shared/reference/fault-model.md`), that
//! compares what Kubernetes, peer tools and devheal's real engine do on the same trace.
//!
//! ```no_run
//! let scenario = devheal_sim::Scenario::bundled("llama3-16k")?;
//! let report = devheal_sim::simulate(&scenario, 1, &mut |_| {});
//! println!("{}", report.to_table());
//! # Ok::<(), devheal_sim::ScenarioError>(())
//! ```
#![forbid(unsafe_code)]

pub mod daly;
pub mod html;
pub mod noise;
pub mod queue;
pub mod replay;
pub mod report;
pub mod rng;
pub mod rollout;
pub mod scenario;
pub mod seeds;
pub mod strategy;
pub mod sweep;
pub mod trace;
mod world;

pub use report::Report;
pub use scenario::{BUNDLED, DEFAULT_SCENARIO, Scenario, ScenarioError};
pub use seeds::SeedsReport;
pub use strategy::Strategy;
pub use trace::FaultTrace;

use report::TraceSummary;
use trace::TraceKind;

/// The seed `devheal sim` uses when given none.
pub const DEFAULT_SEED: u64 = 1;

/// Run one strategy over a trace.
pub fn simulate_strategy(
    scenario: &Scenario,
    strategy: Strategy,
    trace: &FaultTrace,
) -> report::StrategyReport {
    run_strategy(scenario, strategy, trace, &mut |_| {})
}

/// Run one strategy over a trace, telling `on_day` each whole simulated day done. The one place
/// that names each strategy's implementation: the world is generic over [`strategy::Policy`].
fn run_strategy(
    scenario: &Scenario,
    strategy: Strategy,
    trace: &FaultTrace,
    on_day: &mut dyn FnMut(u32),
) -> report::StrategyReport {
    use strategy::{
        devheal, job_failure_policy, kubernetes_default, node_health_controller, nvsentinel_jobset,
        progress_watchdog,
    };
    match strategy {
        Strategy::KubernetesDefault => {
            world::World::new(scenario, kubernetes_default::KubernetesDefault, trace)
                .run_observed(trace, on_day)
        }
        Strategy::NodeHealthController => {
            world::World::new(scenario, node_health_controller::NodeHealthController::new(scenario), trace)
                .run_observed(trace, on_day)
        }
        Strategy::JobFailurePolicy => {
            world::World::new(scenario, job_failure_policy::JobFailurePolicy, trace)
                .run_observed(trace, on_day)
        }
        Strategy::NvsentinelJobset => {
            world::World::new(scenario, nvsentinel_jobset::NvsentinelJobset::new(scenario), trace)
                .run_observed(trace, on_day)
        }
        Strategy::ProgressWatchdog => {
            world::World::new(scenario, progress_watchdog::ProgressWatchdog::new(scenario), trace)
                .run_observed(trace, on_day)
        }
        Strategy::Devheal => world::World::new(scenario, devheal::Devheal::new(scenario, trace.seed), trace)
            .run_observed(trace, on_day),
    }
}

/// What a simulation tells its caller while it runs, for a progress display.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Progress<'a> {
    /// A run of one strategy starts: its name, its number (from 1) and how many runs there are.
    Run { name: &'a str, number: usize, runs: usize },
    /// The current run has simulated `day` whole days of `days` (the length rounded up).
    Day { day: u32, days: u32 },
    /// A multi-seed run finished the seed `seed`; `done` of `seeds` are finished.
    Seed { seed: u64, done: usize, seeds: usize },
}

/// Run the given strategies on one shared trace; `progress` hears each run start and each
/// simulated day it passes.
pub fn simulate_strategies(
    scenario: &Scenario,
    seed: u64,
    strategies: &[Strategy],
    progress: &mut dyn FnMut(Progress<'_>),
) -> Report {
    let trace = FaultTrace::generate(scenario, seed);
    simulate_trace(scenario, seed, &trace, strategies, progress)
}

/// Run the given strategies on a trace the caller supplies (generated with [`FaultTrace::generate`]
/// or read from a file with [`replay::read_trace`]); `seed` is only recorded in the report.
pub fn simulate_trace(
    scenario: &Scenario,
    seed: u64,
    trace: &FaultTrace,
    strategies: &[Strategy],
    progress: &mut dyn FnMut(Progress<'_>),
) -> Report {
    simulate_trace_on(scenario, seed, trace, strategies, 1, progress)
}

/// [`simulate_trace`] with the runs (each strategy, and devheal without straggler detection)
/// spread over up to `workers` threads. The runs share nothing but the trace, so the report is
/// the same for any `workers`; with more than one, `progress` hears [`Progress::Run`] as each
/// run ends (numbered in the order they end) and no [`Progress::Day`].
pub fn simulate_trace_on(
    scenario: &Scenario,
    seed: u64,
    trace: &FaultTrace,
    strategies: &[Strategy],
    workers: usize,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Report {
    let d = &scenario.strategies.devheal;
    let compare_stragglers = d.detect_stragglers
        && d.compare_without_straggler_detection
        && strategies.contains(&Strategy::Devheal);
    let runs = strategies.len() + usize::from(compare_stragglers);
    let days = scenario.duration_days.ceil() as u32;
    let mut off = scenario.clone();
    off.strategies.devheal.detect_stragglers = false;
    let mut jobs: Vec<(&Scenario, Strategy, &str)> =
        strategies.iter().map(|&s| (scenario, s, s.name())).collect();
    if compare_stragglers {
        jobs.push((&off, Strategy::Devheal, "devheal (without straggler detection)"));
    }
    let mut done: Vec<Option<report::StrategyReport>> = (0..runs).map(|_| None).collect();
    if workers <= 1 {
        for (i, &(s, strategy, name)) in jobs.iter().enumerate() {
            progress(Progress::Run { name, number: i + 1, runs });
            done[i] =
                Some(run_strategy(s, strategy, trace, &mut |day| progress(Progress::Day { day, days })));
        }
    } else {
        let next = std::sync::atomic::AtomicUsize::new(0);
        let (tx, rx) = std::sync::mpsc::channel::<(usize, report::StrategyReport)>();
        std::thread::scope(|scope| {
            for _ in 0..workers.min(runs) {
                let (tx, next, jobs) = (tx.clone(), &next, &jobs);
                scope.spawn(move || {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(&(s, strategy, _)) = jobs.get(i) else { break };
                        if tx.send((i, run_strategy(s, strategy, trace, &mut |_| {}))).is_err() {
                            break;
                        }
                    }
                });
            }
            drop(tx);
            for (n, (i, report)) in rx.iter().enumerate() {
                progress(Progress::Run { name: jobs[i].2, number: n + 1, runs });
                done[i] = Some(report);
            }
        });
    }
    let mut reports: Vec<report::StrategyReport> = done.into_iter().flatten().collect();
    let without = if compare_stragglers { reports.pop() } else { None };
    let straggler_detection =
        reports.iter().find(|r| r.name == Strategy::Devheal.name()).zip(without).map(|(with, without)| {
            report::StragglerDetectionReport {
                ettr_with: with.ettr,
                ettr_without: without.ettr,
                straggler_gpu_hours_with: with.gpu_hours_lost.by_cause.straggler_slowdown,
                straggler_gpu_hours_without: without.gpu_hours_lost.by_cause.straggler_slowdown,
                gpu_hours_lost_with: with.gpu_hours_lost.total,
                gpu_hours_lost_without: without.gpu_hours_lost.total,
                replacements: with.counts.straggler_replacements,
            }
        });
    let counts = trace.fault_counts(scenario.faults.len());
    let summary = TraceSummary {
        faults_by_class: scenario.faults.iter().map(|f| f.name.clone()).zip(counts).collect(),
        straggler_episodes: trace
            .events
            .iter()
            .filter(|e| matches!(e.kind, TraceKind::Straggler { .. }))
            .count() as u64,
        planned_maintenance: trace
            .events
            .iter()
            .filter(|e| matches!(e.kind, TraceKind::PlannedMaintenance { .. }))
            .count() as u64,
        lemon_nodes: trace.lemons.iter().filter(|&&l| l).count() as u64,
        noise: trace.noise.clone(),
    };
    Report {
        scenario: scenario.name.clone(),
        description: scenario.description.clone(),
        seed,
        duration_days: scenario.duration_days,
        gpus: u64::from(scenario.total_nodes()) * u64::from(scenario.cluster.gpus_per_node),
        trace: summary,
        repair_paths: report::repair_paths(scenario),
        checkpoint_advice: report::CheckpointAdvice::for_devheal(scenario, &reports),
        strategies: reports,
        straggler_detection,
        replay: None,
    }
}

/// Run every strategy on one shared trace.
pub fn simulate(scenario: &Scenario, seed: u64, progress: &mut dyn FnMut(Progress<'_>)) -> Report {
    simulate_strategies(scenario, seed, &Strategy::ALL, progress)
}

/// Run `strategies` on `seeds` traces (seeds `first_seed`, `first_seed + 1`, …), on as many
/// threads as the machine offers, and summarise each figure as a mean with its 95 % interval and
/// devheal's paired differences ([`SeedsReport`]). Each seed's run skips devheal's
/// without-straggler-detection comparison. The result does not depend on the thread count.
pub fn simulate_seeds(
    scenario: &Scenario,
    first_seed: u64,
    seeds: usize,
    strategies: &[Strategy],
    progress: &mut dyn FnMut(Progress<'_>),
) -> SeedsReport {
    let mut lean = scenario.clone();
    lean.strategies.devheal.compare_without_straggler_detection = false;
    let workers = std::thread::available_parallelism().map_or(1, usize::from).clamp(1, seeds.max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let (tx, rx) = std::sync::mpsc::channel::<(usize, Report)>();
    let mut reports: Vec<Option<Report>> = (0..seeds).map(|_| None).collect();
    std::thread::scope(|scope| {
        for _ in 0..workers {
            let tx = tx.clone();
            let (lean, next) = (&lean, &next);
            scope.spawn(move || {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= seeds {
                        break;
                    }
                    let report = simulate_strategies(lean, first_seed + i as u64, strategies, &mut |_| {});
                    if tx.send((i, report)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        for (done, (i, report)) in rx.iter().enumerate() {
            progress(Progress::Seed { seed: report.seed, done: done + 1, seeds });
            reports[i] = Some(report);
        }
    });
    let reports: Vec<Report> = reports.into_iter().flatten().collect();
    SeedsReport::from_reports(&reports)
}
