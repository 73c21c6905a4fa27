//! The `devheal` command. Each subcommand lives in its own module; `main` only dispatches.
#![forbid(unsafe_code)]

mod agent;
mod classify_log;
mod completion;
mod config;
mod controller;
mod crds;
mod degradation_eval;
mod explain;
mod kube_env;
mod logging;
mod sim;
mod sim_rollout;

use clap::{CommandFactory, Parser, Subcommand};

/// devheal keeps Kubernetes pods with devices (GPUs and other accelerators) productive when
/// devices fail, degrade or are misreported.
#[derive(Parser)]
#[command(name = "devheal", version, about, long_about = None)]
struct Cli {
    /// How log lines on stderr are written: `text` (one readable line each) or `json` (one JSON
    /// object each, for log collectors). Which lines: `DEVHEAL_LOG` or `RUST_LOG`
    /// (`info` by default; e.g. `warn,devheal_controller=debug`).
    #[arg(long, global = true, value_enum, default_value_t = logging::LogFormat::Text)]
    log_format: logging::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the fleet simulator and compare strategies (default: the bundled llama3-16k scenario).
    Sim(sim::SimArgs),
    /// Classify device faults in a kernel log (dmesg, journalctl -k, /dev/kmsg records).
    ClassifyLog(classify_log::ClassifyLogArgs),
    /// Explain why pods failed and what devheal would do about it.
    Explain(explain::ExplainArgs),
    /// The node agent: follow every device health source and publish NodeDeviceHealth
    /// (`--once`: read every source one time and print it).
    Agent(Box<agent::AgentArgs>),
    /// The cluster controller: watches, decides, and (while leader) acts; serves metrics.
    Controller(controller::ControllerArgs),
    /// Print devheal's CustomResourceDefinitions (NodeDeviceHealth, FailurePolicy) as YAML.
    Crds(crds::CrdsArgs),
    /// Score the degradation detectors (stragglers, baseline shifts, hangs) on labelled traces.
    DegradationEval(degradation_eval::DegradationEvalArgs),
    /// The controller's settings file: print every key with its default, or check a file.
    Config(config::ConfigArgs),
    /// Print a shell completion script (bash, zsh, fish, powershell, elvish).
    Completion(completion::CompletionArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // One place for every subcommand: logs go to stderr, so what a subcommand prints on stdout
    // (the sim table, classify-log's findings, the CRDs) stays as it was.
    logging::init(cli.log_format);
    let result = match cli.command {
        Command::Sim(args) => sim::run(args),
        Command::ClassifyLog(args) => classify_log::run(args),
        Command::Explain(args) => explain::run(args),
        Command::Crds(args) => crds::run(args),
        Command::Agent(args) => agent::run(*args),
        Command::Controller(args) => controller::run(args),
        Command::DegradationEval(args) => degradation_eval::run(args),
        Command::Config(args) => config::run(args),
        Command::Completion(args) => completion::run(args, Cli::command()),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            match cli.log_format {
                logging::LogFormat::Text => eprintln!("devheal: error: {err:#}"),
                // Every stderr line stays one JSON object for the log collector (unless the
                // filter hides errors: the failure is then said as text, never lost).
                logging::LogFormat::Json if tracing::enabled!(tracing::Level::ERROR) => {
                    tracing::error!(error = format!("{err:#}"), "devheal failed")
                }
                logging::LogFormat::Json => eprintln!("devheal: error: {err:#}"),
            }
            std::process::ExitCode::from(2)
        }
    }
}
