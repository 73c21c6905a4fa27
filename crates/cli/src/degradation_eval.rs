//! `devheal degradation-eval`: generates labelled progress traces (clean, slowed-down members,
//! hung gangs), runs the degradation detectors over them and prints precision, recall within
//! 5 minutes and detection delay per slow-down magnitude, the false-finding rate on clean traces
//! and the hang detection delay.

use std::io::{self, Write};
use std::process::ExitCode;

use anyhow::{Context, bail};
use devheal_core::Duration;
use devheal_detect::degradation::{EvalConfig, EvalReport, TraceConfig, evaluate};

#[derive(clap::Args)]
pub struct DegradationEvalArgs {
    /// Seed of the trace generator (same seed, same traces, same figures).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Traces per set (clean, each magnitude, hangs).
    #[arg(long, default_value_t = 8)]
    gangs: usize,
    /// Length of every trace, in days.
    #[arg(long, default_value_t = 2)]
    days: u32,
    /// Members per gang.
    #[arg(long, default_value_t = 64)]
    members: usize,
    /// Let the simulated workload not announce its checkpoint pauses to the hang detector.
    #[arg(long)]
    unannounced_checkpoints: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    format: OutputFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum OutputFormat {
    Table,
    Json,
}

pub fn run(args: DegradationEvalArgs) -> anyhow::Result<ExitCode> {
    if args.days == 0 || args.days > 365 {
        bail!("--days must be between 1 and 365, got {}", args.days);
    }
    if args.gangs == 0 || args.gangs > 10_000 {
        bail!("--gangs must be between 1 and 10000, got {}", args.gangs);
    }
    let config = EvalConfig {
        seed: args.seed,
        gangs: args.gangs,
        trace: TraceConfig {
            members: args.members,
            length: Duration::from_hours(24 * i64::from(args.days)),
            ..TraceConfig::default()
        },
        announce_checkpoints: !args.unannounced_checkpoints,
        ..EvalConfig::default()
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let report = evaluate(&config, threads).context("degradation evaluation")?;
    let mut out = io::stdout().lock();
    match args.format {
        OutputFormat::Json => {
            serde_json::to_writer_pretty(&mut out, &report)?;
            writeln!(out)?;
        }
        OutputFormat::Table => write_table(&mut out, &report)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn seconds(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_string(), |s| format!("{s:.0} s"))
}

fn write_table(out: &mut impl Write, report: &EvalReport) -> io::Result<()> {
    writeln!(
        out,
        "degradation-eval: seed {}, {} gangs per set, {} members, {:.0} h per trace",
        report.seed, report.gangs, report.members, report.trace_hours
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "{:<15} {:>9} {:>8} {:>9} {:>10} {:>9} {:>10} {:>10} {:>10}",
        "detector",
        "slow-down",
        "injected",
        "recalled",
        "recall@5m",
        "findings",
        "precision",
        "delay p50",
        "delay p95"
    )?;
    for b in &report.buckets {
        writeln!(
            out,
            "{:<15} {:>8.0}% {:>8} {:>9} {:>10.3} {:>9} {:>10} {:>10} {:>10}",
            b.detector.as_str(),
            b.magnitude * 100.0,
            b.injected,
            b.recalled,
            b.recall,
            b.findings,
            b.precision.map_or_else(|| "-".to_string(), |p| format!("{p:.3}")),
            seconds(b.delay_p50_s),
            seconds(b.delay_p95_s),
        )?;
    }
    let c = &report.clean;
    writeln!(out)?;
    writeln!(
        out,
        "clean traces: {:.0} device-days, {} straggler + {} baseline_shift + {} hang findings = {:.2} per 1,000 device-days",
        c.device_days,
        c.straggler_findings,
        c.baseline_shift_findings,
        c.hang_findings,
        c.per_1000_device_days
    )?;
    let h = &report.hang;
    writeln!(
        out,
        "hangs: {} of {} detected, delay from last progress p50 {}, p99 {}, max {}; {} other findings on hang traces",
        h.detected,
        h.injected,
        seconds(h.delay_p50_s),
        seconds(h.delay_p99_s),
        seconds(h.delay_max_s),
        h.other_findings
    )
}
