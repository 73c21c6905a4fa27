//! `devheal sim`: run the fleet simulator on a bundled or user scenario and print the
//! comparison of the four strategies (table, JSON, or a report directory).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use devheal_sim::{BUNDLED, DEFAULT_SCENARIO, DEFAULT_SEED, Scenario};

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
    /// Seed of the fault trace; the same scenario and seed give the same report.
    #[arg(long, default_value_t = DEFAULT_SEED)]
    seed: u64,
    /// Output format on stdout.
    #[arg(long, value_enum, default_value_t = SimFormat::Table)]
    format: SimFormat,
    /// Also write report.json and a self-contained report.html into this directory.
    #[arg(long)]
    out: Option<PathBuf>,
    /// List the bundled scenarios and exit.
    #[arg(long)]
    list: bool,
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
        return Ok(ExitCode::SUCCESS);
    }
    let scenario = load_scenario(&args.scenario)?;
    let show_progress = std::io::stderr().is_terminal();
    let started = std::time::Instant::now();
    let report = devheal_sim::simulate(&scenario, args.seed, &mut |name| {
        if show_progress {
            eprintln!(
                "devheal sim: {} — running {name} ({:.1} s elapsed)",
                scenario.name,
                started.elapsed().as_secs_f64()
            );
        }
    });
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let json_path = dir.join("report.json");
        std::fs::write(&json_path, report.to_json() + "\n")
            .with_context(|| format!("writing {}", json_path.display()))?;
        let html_path = dir.join("report.html");
        std::fs::write(&html_path, devheal_sim::html::render(&report))
            .with_context(|| format!("writing {}", html_path.display()))?;
        if show_progress {
            eprintln!("devheal sim: wrote {} and {}", json_path.display(), html_path.display());
        }
    }
    match args.format {
        SimFormat::Table => print!("{}", report.to_table()),
        SimFormat::Json => println!("{}", report.to_json()),
    }
    Ok(ExitCode::SUCCESS)
}
