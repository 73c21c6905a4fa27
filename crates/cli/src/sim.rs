//! `devheal sim`: run the fleet simulator on a bundled or user scenario and print the
//! comparison of the strategies (table, JSON, or a report directory).

use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use devheal_sim::{BUNDLED, DEFAULT_SCENARIO, DEFAULT_SEED, Progress, Scenario};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SimFormat {
    Table,
    Json,
}

#[derive(clap::Args)]
pub struct SimArgs {
    /// A bundled scenario name (see --list) or a path to a scenario YAML file.
    #[arg(long, default_value = DEFAULT_SCENARIO)]
    scenario: String,
    /// Seed of the fault trace; the same scenario and seed give the same report. With --seeds,
    /// the first of the seeds.
    #[arg(long, default_value_t = DEFAULT_SEED)]
    seed: u64,
    /// Run this many seeds (SEED, SEED+1, …) and report each figure as its mean and 95 %
    /// interval, and devheal's difference from each other strategy paired by seed.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1000))]
    seeds: u64,
    /// Output format on stdout.
    #[arg(long, value_enum, default_value_t = SimFormat::Table)]
    format: SimFormat,
    /// Also write report.json and a self-contained report.html into this directory (their paths
    /// are printed on stderr); with --seeds, report.json only.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Rerun the scenario with PARAM set to each value (same trace) and report every strategy's
    /// ETTR per value; PARAM is a scenario path such as training.checkpoint_interval_min
    /// (docs/simulator.md lists them). May be given several times; with --out, report.html gets
    /// a tornado chart.
    #[arg(long, value_name = "PARAM=V1,V2,…")]
    sweep: Vec<String>,
    /// Replay this fault trace (a bundled trace name, see --list, or a CSV / JSON-lines file)
    /// instead of generating one from the seed.
    #[arg(long, value_name = "NAME|FILE")]
    trace: Option<String>,
    /// With --trace: replay records whose cause maps to no fault class as this scenario class
    /// (default: count and list them, do not replay them).
    #[arg(long, value_name = "CLASS", requires = "trace")]
    trace_unknown: Option<String>,
    /// Instead of the fault comparison: roll a device-stack version out to a fleet, fleet-wide
    /// versus staged behind devheal's rollout gate, with a bad and a good version (a bundled
    /// rollout scenario, see --list, or a YAML file; docs/simulator.md "Rollouts").
    #[arg(long, value_name = "NAME|FILE", conflicts_with_all = ["sweep", "trace", "out"])]
    rollout: Option<String>,
    /// List the bundled scenarios and traces and exit.
    #[arg(long)]
    list: bool,
}

/// The trace a run replays: the file's (`--trace`) with what was read, or the seed's.
fn load_trace(
    args: &SimArgs,
    scenario: &Scenario,
) -> anyhow::Result<(devheal_sim::FaultTrace, Option<devheal_sim::replay::ReplaySummary>)> {
    let Some(arg) = &args.trace else {
        return Ok((devheal_sim::FaultTrace::generate(scenario, args.seed), None));
    };
    let options = devheal_sim::replay::ReplayOptions { unknown_as: args.trace_unknown.clone() };
    let (text, name) = match devheal_sim::replay::bundled(arg) {
        Some(text) => (text.to_string(), format!("bundled:{arg}.csv")),
        None => {
            let path = PathBuf::from(arg);
            if !path.exists() {
                let names: Vec<&str> = devheal_sim::replay::BUNDLED_TRACES.iter().map(|(n, _)| *n).collect();
                anyhow::bail!("--trace `{arg}` is neither a bundled trace ({}) nor a file", names.join(", "));
            }
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading trace {}", path.display()))?;
            (text, path.display().to_string())
        }
    };
    let (trace, summary) = devheal_sim::replay::read_trace(&text, &name, scenario, &options)?;
    Ok((trace, Some(summary)))
}

fn load_scenario(arg: &str) -> anyhow::Result<Scenario> {
    if BUNDLED.iter().any(|(name, _)| *name == arg) {
        return Ok(Scenario::bundled(arg)?);
    }
    let path = PathBuf::from(arg);
    if !path.exists() {
        let names: Vec<&str> = BUNDLED.iter().map(|(n, _)| *n).collect();
        anyhow::bail!("`{arg}` is neither a bundled scenario ({}) nor a file", names.join(", "));
    }
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading scenario {}", path.display()))?;
    Ok(Scenario::from_yaml(&text, &path.display().to_string())?)
}

pub fn run(args: SimArgs) -> anyhow::Result<ExitCode> {
    if args.list {
        for (name, _) in BUNDLED {
            let s = Scenario::bundled(name)?;
            println!("{name:<18} {}", s.description);
        }
        for (name, text) in devheal_sim::rollout::BUNDLED_ROLLOUTS {
            let s = devheal_sim::rollout::RolloutScenario::from_yaml(text, name)?;
            println!("{name:<18} rollout (--rollout): {}", s.description);
        }
        for (name, text) in devheal_sim::replay::BUNDLED_TRACES {
            let first = text.lines().next().unwrap_or("").trim_start_matches('#').trim();
            println!("{name:<18} trace: {first}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(rollout) = &args.rollout {
        anyhow::ensure!(args.seeds == 1, "--rollout runs one seed; it does not combine with --seeds");
        let scenario = crate::sim_rollout::load(rollout)?;
        let report = crate::sim_rollout::compare(&scenario, args.seed)?;
        match args.format {
            SimFormat::Table => print!("{}", report.to_table()),
            SimFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        }
        return Ok(ExitCode::SUCCESS);
    }
    let scenario = load_scenario(&args.scenario)?;
    let specs = args
        .sweep
        .iter()
        .map(|s| s.parse::<devheal_sim::sweep::SweepSpec>())
        .collect::<Result<Vec<_>, _>>()?;
    devheal_sim::sweep::validate(&scenario, &specs)?;
    if args.seeds > 1 {
        if !specs.is_empty() || args.trace.is_some() {
            anyhow::bail!(
                "--seeds runs several generated traces; it does not combine with --sweep or --trace"
            );
        }
        return run_seeds(&args, &scenario);
    }
    let (trace, replay) = load_trace(&args, &scenario)?;
    if !specs.is_empty() {
        return run_sweep(&args, &scenario, &trace, replay, &specs);
    }
    // Progress only on a terminal: piped or redirected stderr (CI, scripts) stays empty.
    let mut progress = std::io::stderr()
        .is_terminal()
        .then(|| ProgressLine::new(std::io::stderr(), &scenario.name, args.seed));
    let started = Instant::now();
    // The runs are independent: one per core (the report does not depend on it).
    let workers = std::thread::available_parallelism().map_or(1, usize::from);
    let mut report = devheal_sim::simulate_trace_on(
        &scenario,
        args.seed,
        &trace,
        &devheal_sim::Strategy::ALL,
        workers,
        &mut |event| {
            if let Some(line) = &mut progress {
                // A failed write to the terminal only loses the display, never the report.
                let _ = line.show(event, started.elapsed());
            }
        },
    );
    report.replay = replay;
    if let Some(line) = &mut progress {
        let _ = line.finish();
    }
    if let Some(dir) = &args.out {
        write_report(dir, report.to_json(), devheal_sim::html::render(&report))?;
    }
    match args.format {
        SimFormat::Table => {
            if let Some(replay) = &report.replay {
                println!("{}\n", replay.lines());
            }
            print!("{}", report.to_table());
            if report.replay.is_some() {
                for a in &report.checkpoint_advice {
                    println!("devheal's checkpoint advice: {}", a.line());
                }
            }
        }
        SimFormat::Json => println!("{}", report.to_json()),
    }
    Ok(ExitCode::SUCCESS)
}

/// `--out DIR`: report.json and report.html, each named on stderr (always: the caller asked for
/// files, and stdout stays the report).
fn write_report(dir: &std::path::Path, json: String, html: String) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let json_path = dir.join("report.json");
    std::fs::write(&json_path, json + "\n").with_context(|| format!("writing {}", json_path.display()))?;
    let html_path = dir.join("report.html");
    std::fs::write(&html_path, html).with_context(|| format!("writing {}", html_path.display()))?;
    eprintln!("devheal sim: wrote {}", json_path.display());
    eprintln!("devheal sim: wrote {}", html_path.display());
    Ok(())
}

/// `--sweep`: the baseline run and one run per swept value, all on one trace.
fn run_sweep(
    args: &SimArgs,
    scenario: &Scenario,
    trace: &devheal_sim::FaultTrace,
    replay: Option<devheal_sim::replay::ReplaySummary>,
    specs: &[devheal_sim::sweep::SweepSpec],
) -> anyhow::Result<ExitCode> {
    let progress = std::cell::RefCell::new(
        std::io::stderr()
            .is_terminal()
            .then(|| ProgressLine::new(std::io::stderr(), &scenario.name, args.seed)),
    );
    let started = Instant::now();
    let mut report = devheal_sim::sweep::run_sweeps(
        scenario,
        args.seed,
        trace,
        &devheal_sim::Strategy::ALL,
        specs,
        &mut |event| {
            if let Some(line) = progress.borrow_mut().as_mut() {
                let _ = line.show(event, started.elapsed());
            }
        },
        &mut |param, value| {
            if let Some(line) = progress.borrow_mut().as_mut() {
                let _ = line.finish();
                let _ = writeln!(line.out, "sweep {param}={}", devheal_sim::sweep::fmt_value(value));
            }
        },
    )?;
    if let Some(line) = progress.borrow_mut().as_mut() {
        let _ = line.finish();
    }
    report.baseline.replay = replay;
    if let Some(dir) = &args.out {
        write_report(dir, report.to_json(), devheal_sim::html::render_sweep(&report))?;
    }
    match args.format {
        SimFormat::Table => print!("{}", report.to_table()),
        SimFormat::Json => println!("{}", report.to_json()),
    }
    Ok(ExitCode::SUCCESS)
}

/// `--seeds N`: N traces, means and intervals.
fn run_seeds(args: &SimArgs, scenario: &Scenario) -> anyhow::Result<ExitCode> {
    let seeds = args.seeds as usize;
    let mut progress = std::io::stderr().is_terminal().then(|| {
        let mut err = std::io::stderr();
        let _ = writeln!(
            err,
            "devheal sim: {} (seeds {}–{})",
            scenario.name,
            args.seed,
            args.seed + args.seeds - 1
        );
        err
    });
    let started = Instant::now();
    let report =
        devheal_sim::simulate_seeds(scenario, args.seed, seeds, &devheal_sim::Strategy::ALL, &mut |event| {
            if let (Some(err), Progress::Seed { seed, done, seeds }) = (&mut progress, event) {
                let _ = write!(
                    err,
                    "\r  seed {seed:>5} done, {done:>4}/{seeds}  {:>7.1} s",
                    started.elapsed().as_secs_f64()
                );
                let _ = err.flush();
            }
        });
    if let Some(err) = &mut progress {
        let _ = writeln!(err);
    }
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let json_path = dir.join("report.json");
        std::fs::write(&json_path, report.to_json() + "\n")
            .with_context(|| format!("writing {}", json_path.display()))?;
        eprintln!("devheal sim: wrote {}", json_path.display());
    }
    match args.format {
        SimFormat::Table => print!("{}", report.to_table()),
        SimFormat::Json => println!("{}", report.to_json()),
    }
    Ok(ExitCode::SUCCESS)
}

/// The progress display on a terminal: one line per strategy run, rewritten in place (`\r`) as
/// its simulated days pass, e.g. `run 2/5 node-health-controller  day  23/54   4.1 s`.
struct ProgressLine<W: Write> {
    out: W,
    run: Option<(usize, usize, String)>,
}

impl<W: Write> ProgressLine<W> {
    fn new(mut out: W, scenario: &str, seed: u64) -> Self {
        let _ = writeln!(out, "devheal sim: {scenario} (seed {seed})");
        ProgressLine { out, run: None }
    }

    fn show(&mut self, event: Progress<'_>, elapsed: Duration) -> io::Result<()> {
        match event {
            Progress::Run { name, number, runs } => {
                if self.run.is_some() {
                    writeln!(self.out)?;
                }
                write!(self.out, "  run {number}/{runs} {name:<38}")?;
                self.run = Some((number, runs, name.to_string()));
            }
            Progress::Seed { .. } => {}
            Progress::Day { day, days } => {
                let Some((number, runs, name)) = &self.run else { return Ok(()) };
                // Fixed widths: each rewrite covers the one before it.
                let width = days.to_string().len();
                write!(
                    self.out,
                    "\r  run {number}/{runs} {name:<38}  day {day:>width$}/{days}  {:>6.1} s",
                    elapsed.as_secs_f64()
                )?;
            }
        }
        self.out.flush()
    }

    fn finish(&mut self) -> io::Result<()> {
        if self.run.take().is_some() {
            writeln!(self.out)?;
        }
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_rewrites_one_line_per_run_and_ends_it() {
        let mut buf = Vec::new();
        let mut line = ProgressLine::new(&mut buf, "small", 3);
        let events = [
            Progress::Run { name: "kubernetes-default", number: 1, runs: 2 },
            Progress::Day { day: 1, days: 10 },
            Progress::Day { day: 10, days: 10 },
            Progress::Run { name: "devheal", number: 2, runs: 2 },
            Progress::Day { day: 9, days: 10 },
        ];
        for (i, e) in events.into_iter().enumerate() {
            line.show(e, Duration::from_millis(1500 * i as u64)).unwrap();
        }
        line.finish().unwrap();
        let text = String::from_utf8(buf).unwrap();
        let lines: Vec<&str> = text.split('\n').collect();
        assert_eq!(lines.len(), 4, "{text:?}");
        assert_eq!(lines[0], "devheal sim: small (seed 3)");
        // What the terminal shows of each run's line: the text after its last carriage return.
        let shown = |l: &str| l.rsplit('\r').next().unwrap().to_string();
        assert_eq!(shown(lines[1]), format!("  run 1/2 {:<38}  day 10/10     3.0 s", "kubernetes-default"));
        assert_eq!(shown(lines[2]), format!("  run 2/2 {:<38}  day  9/10     6.0 s", "devheal"));
        assert_eq!(lines[3], "", "the display ends its last line");
        // Every rewrite of a line is as long as the one it covers.
        let lens: Vec<usize> = lines[1].split('\r').skip(1).map(str::len).collect();
        assert!(lens.windows(2).all(|w| w[0] == w[1]), "{lens:?}");
    }
}
