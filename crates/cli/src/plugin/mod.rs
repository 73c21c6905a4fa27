//! The `kubectl devheal` plugin's commands: `status`, `explain POD`, `history NODE`. Each reads
//! the cluster once ([`fetch`]), builds a report from the objects read (pure functions in
//! [`status`], [`live_explain`] and [`history`], unit-tested on fixture objects) and prints it as
//! aligned text, or as JSON with `-o json`.

mod fetch;
mod history;
mod live_explain;
mod network;
mod status;
#[cfg(test)]
mod tests;
mod text;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use k8s_openapi::jiff::Timestamp;

use crate::explain::OutputFormat;

/// Where devheal's controller keeps its Lease and state, as `deploy/` installs it.
const DEFAULT_NAMESPACE: &str = "devheal-system";
const DEFAULT_LEASE: &str = "devheal-controller";

/// See what devheal sees: devices that are not healthy, what devheal did about them (quarantines,
/// cordons, repair requests), its budgets and breakers, why a pod failed, and a node's history.
/// Read-only.
#[derive(Parser)]
#[command(name = "kubectl-devheal", bin_name = "kubectl devheal", version, about, long_about = None)]
struct Cli {
    /// A kubeconfig file (default: $KUBECONFIG, else ~/.kube/config, else in-cluster).
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    /// How long each request to the API server may take, in seconds.
    #[arg(long, global = true, default_value_t = 10, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..=600))]
    request_timeout: u64,
    /// `table` (text for people) or `json`.
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = OutputFormat::Table)]
    output: OutputFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Devices that are not healthy, nodes that need attention, quarantines, cordons, repair
    /// requests, budgets and breakers, policies, and which controller replica leads.
    Status {
        /// The devheal controller's namespace (its Lease and state ConfigMap).
        #[arg(short = 'n', long, default_value = DEFAULT_NAMESPACE)]
        namespace: String,
        /// The controller's Lease (its state ConfigMap is `<lease>-state`).
        #[arg(long, default_value = DEFAULT_LEASE)]
        lease: String,
    },
    /// Why a pod failed and what devheal would do: the live pod, its node's NodeDeviceHealth and
    /// the FailurePolicies, through the controller's own engine.
    Explain {
        /// The pod's name.
        pod: String,
        /// The pod's namespace (default: the kubeconfig context's).
        #[arg(short = 'n', long)]
        namespace: Option<String>,
    },
    /// What happened to a node's devices, oldest first: devheal's Events, the controller's
    /// state, the node's marks and its NodeDeviceHealth reasons.
    History {
        /// The node's name.
        node: String,
        /// The devheal controller's namespace (its state ConfigMap).
        #[arg(short = 'n', long, default_value = DEFAULT_NAMESPACE)]
        namespace: String,
        /// The controller's Lease (its state ConfigMap is `<lease>-state`).
        #[arg(long, default_value = DEFAULT_LEASE)]
        lease: String,
    },
}

fn print(
    output: OutputFormat,
    text: impl FnOnce() -> String,
    json: impl serde::Serialize,
) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match output {
        OutputFormat::Table => out.write_all(text().as_bytes())?,
        OutputFormat::Json => {
            serde_json::to_writer_pretty(&mut out, &json)?;
            writeln!(out)?;
        }
    }
    out.flush().context("writing the output")
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let client = crate::kube_env::client(cli.kubeconfig.as_deref(), true, "use --kubeconfig").await?;
    let reader = fetch::Reader { client: client.clone(), timeout: Duration::from_secs(cli.request_timeout) };
    match cli.command {
        Command::Status { namespace, lease } => {
            let inputs = reader.status_inputs(&namespace, &lease).await?;
            let report = status::build(&inputs, Timestamp::now());
            print(cli.output, || status::render(&report), &report)
        }
        Command::Explain { pod, namespace } => {
            let namespace = namespace.unwrap_or_else(|| client.default_namespace().to_string());
            let inputs = reader.explain_inputs(&namespace, &pod).await?;
            let report = live_explain::build(&inputs, Timestamp::now())?;
            print(cli.output, || live_explain::render(&report), &report)
        }
        Command::History { node, namespace, lease } => {
            let inputs = reader.history_inputs(&node, &namespace, &lease).await?;
            let report = history::build(&inputs);
            print(cli.output, || history::render(&report), &report)
        }
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
        .and_then(|rt| rt.block_on(run(cli)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("kubectl-devheal: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
