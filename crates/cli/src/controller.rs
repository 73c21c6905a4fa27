//! `devheal controller`: the cluster controller. It watches Pods, Nodes, NodeDeviceHealth and
//! FailurePolicy objects, decides with the engine, and — while it holds the Lease — carries out
//! the actions through the Kubernetes actuator. `/metrics`, `/healthz` and `/readyz` are served
//! on `--metrics-addr`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use devheal_controller::{
    Cluster, Controller, ControllerSettings, KubeCluster, LeaderFlag, LoopHealth, Metrics, Settings,
    SettingsReloader, SystemClock, WatchSettings, keep_lease, serve,
};
use devheal_k8s::actuator::{ActuatorConfig, DeviceTaintRuleSupport, KubeActuator};
use devheal_k8s::lease::LeaseElector;
use kube::Client;

#[derive(clap::Args)]
pub struct ControllerArgs {
    /// Decide and log what would be done ("would evict …"), change nothing in the cluster.
    #[arg(long)]
    dry_run: bool,
    /// A kubeconfig file (default: in-cluster service account, else $KUBECONFIG, else ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Namespace of the Lease that elects the acting replica.
    #[arg(long, default_value = "devheal-system")]
    lease_namespace: String,
    /// Name of that Lease.
    #[arg(long, default_value = "devheal-controller")]
    lease_name: String,
    /// This replica's identity in the Lease (default: $POD_NAME, else the host name).
    #[arg(long)]
    identity: Option<String>,
    /// Where to serve /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:9100")]
    metrics_addr: SocketAddr,
    /// Watch only pods with these labels (a label selector, e.g. `devheal.io/managed=true`).
    #[arg(long)]
    pod_selector: Option<String>,
    /// Read FailurePolicies from this namespace only (default: all namespaces).
    #[arg(long)]
    policy_namespace: Option<String>,
    /// The settings file (budgets, breakers, probation, quorum; `devheal config
    /// --print-defaults` prints every key). Default: $DEVHEAL_SETTINGS, else the built-in
    /// defaults. A changed file is applied without a restart where the setting allows.
    #[arg(long, value_name = "FILE")]
    settings: Option<PathBuf>,
    /// How often the settings file is looked at for changes.
    #[arg(long, default_value = "10s", value_parser = crate::agent::parse_duration)]
    settings_reload_every: Duration,
    /// How often the rollout gate looks at the UpgradePlans (staged device-plugin and driver
    /// upgrades, docs/upgrades.md); each pass lists the plans, and the pods and NodeDeviceHealth
    /// objects only when there is one.
    #[arg(long, default_value = "10s", value_parser = crate::agent::parse_duration)]
    upgrade_every: Duration,
    /// Override one setting of the file (repeatable): `--set safety.breakerWindow=10m`.
    /// Overrides win over the file, also when it is reloaded.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// How long a quarantined device must stay Healthy before it is released (`10m`, `90s`):
    /// safety.probation.
    #[arg(long, value_parser = crate::agent::parse_duration)]
    probation: Option<Duration>,
    /// At most this many nodes with quarantined devices or cordons at once:
    /// safety.maxQuarantinedNodes.
    #[arg(long)]
    max_quarantined_nodes: Option<u32>,
    /// ...and at most this percent of the fleet: safety.maxQuarantinedNodesPercent.
    #[arg(long)]
    max_quarantined_nodes_percent: Option<f64>,
    /// Evictions in any minute: safety.maxEvictionsPerMinute.
    #[arg(long)]
    max_evictions_per_minute: Option<u32>,
    /// Restarts of one gang in any hour: safety.maxGangRestartsPerHour.
    #[arg(long)]
    max_gang_restarts_per_hour: Option<u32>,
    /// Gang restarts in one namespace in any hour: safety.maxGangRestartsPerHourPerNamespace.
    #[arg(long)]
    max_gang_restarts_per_hour_per_namespace: Option<u32>,
    /// Gang restarts in the cluster in any hour: safety.maxGangRestartsPerHourCluster.
    #[arg(long)]
    max_gang_restarts_per_hour_cluster: Option<u32>,
}

impl ControllerArgs {
    /// The settings file: `--settings`, else $DEVHEAL_SETTINGS (when not empty).
    fn settings_file(&self) -> Option<PathBuf> {
        self.settings
            .clone()
            .or_else(|| std::env::var_os("DEVHEAL_SETTINGS").filter(|v| !v.is_empty()).map(PathBuf::from))
    }

    /// The command line's settings as `--set` overrides, named flags first and `--set` last.
    fn overrides(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(d) = self.probation {
            out.push(format!("safety.probation={}ms", d.as_millis()));
        }
        let counts = [
            ("safety.maxQuarantinedNodes", self.max_quarantined_nodes),
            ("safety.maxEvictionsPerMinute", self.max_evictions_per_minute),
            ("safety.maxGangRestartsPerHour", self.max_gang_restarts_per_hour),
            ("safety.maxGangRestartsPerHourPerNamespace", self.max_gang_restarts_per_hour_per_namespace),
            ("safety.maxGangRestartsPerHourCluster", self.max_gang_restarts_per_hour_cluster),
        ];
        out.extend(counts.iter().filter_map(|(k, v)| v.map(|v| format!("{k}={v}"))));
        if let Some(p) = self.max_quarantined_nodes_percent {
            out.push(format!("safety.maxQuarantinedNodesPercent={p}"));
        }
        out.extend(self.overrides.iter().cloned());
        out
    }
}

fn identity(args: &ControllerArgs) -> String {
    crate::kube_env::own_name(args.identity.as_deref(), "POD_NAME", "devheal-controller")
}

/// The actuator that carries out actions on the cluster: the Kubernetes actuator, told whether
/// this is a dry run, with DRA DeviceTaintRule support discovered from the API server.
async fn actuator(client: &Client, dry_run: bool, identity: &str) -> anyhow::Result<KubeActuator> {
    let mut config = ActuatorConfig::new(identity);
    config.dry_run = dry_run;
    KubeActuator::discover(client.clone(), config)
        .await
        .context("discovering whether the cluster serves DRA DeviceTaintRules")
}

/// How long a held Lease lasts without renewal (renewed every 2 s).
const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How long this replica acts after a renewal was sent: less than the Lease's duration, so a
/// stalled replica stops acting before a standby can take the Lease over (3 s for clock-rate
/// differences between the machines and the API server's own delay).
const LEAD_FOR: Duration = Duration::from_secs(12);

/// A future that ends at SIGTERM or SIGINT. The handlers are installed when this is called,
/// not when the future is first polled: a signal that arrives after the controller announced
/// itself stops it cleanly instead of killing it with the default action.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! { _ = term.recv() => {}, _ = interrupt.recv() => {} }
    })
}

async fn run_async(args: ControllerArgs) -> anyhow::Result<ExitCode> {
    let shutdown = shutdown_signal().context("cannot listen for SIGTERM")?;
    // Settings first: a file that cannot be used stops the start before anything is contacted.
    let settings_file = args.settings_file();
    let overrides = args.overrides();
    let file_settings = Settings::load(settings_file.as_deref(), &overrides)?;
    // The actuator backs off on a PodDisruptionBudget's 429 itself: no retries inside the client.
    let client = crate::kube_env::client(args.kubeconfig.as_deref(), false, "pass --kubeconfig").await?;
    let leader = LeaderFlag::new(false);
    // Every write asks the lease first, so an action a stalled replica had begun (a gang
    // restart is a list, then a mark and a delete per member) stops once the lease lapsed.
    let fence = {
        let leader = leader.clone();
        Arc::new(move || leader.get())
    };
    let actuator = actuator(&client, args.dry_run, &identity(&args)).await?.with_fence(fence.clone());
    // Where DRA serves DeviceTaintRules, the controller watches its own (to find those an
    // earlier process wrote: leftovers.rs).
    let rule_version = match &actuator.config().device_taint_rules {
        DeviceTaintRuleSupport::Served { version } => Some(version.clone()),
        DeviceTaintRuleSupport::NotServed => None,
    };
    let mut settings = ControllerSettings { dry_run: args.dry_run, ..ControllerSettings::default() };
    settings.engine.safety = file_settings.safety.clone();
    settings.progress.hang_quorum = file_settings.hang_quorum;
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(LoopHealth::new(settings.tick_every * 6));
    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("binding the metrics address {}", args.metrics_addr))?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let wait_stop = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        }
    };
    let server = tokio::spawn(serve(listener, metrics.clone(), health.clone(), wait_stop()));
    let elector = LeaseElector::new(
        client.clone(),
        args.lease_namespace.clone(),
        args.lease_name.clone(),
        identity(&args),
        LEASE_DURATION,
    );
    let lease_task = {
        let leader = leader.clone();
        let stop = wait_stop();
        tokio::spawn(async move {
            keep_lease(|| elector.try_acquire_or_renew(), leader, Duration::from_secs(2), LEAD_FOR, stop)
                .await;
            // Hand the Lease over at once on shutdown rather than after it expires.
            elector.release().await;
        })
    };
    // The rollout gate (UpgradePlans) beside the loop, writing under the same lease.
    let gate = devheal_controller::upgrade::UpgradeGate::new(
        client.clone(),
        fence,
        SystemClock,
        metrics.clone(),
        &identity(&args),
        args.dry_run,
    );
    let gate_task = tokio::spawn(gate.run(args.upgrade_every, wait_stop()));
    let store =
        devheal_controller::KubeStateStore::new(client.clone(), &args.lease_namespace, &args.lease_name);
    let cluster = KubeCluster::new(
        client,
        WatchSettings {
            pod_label_selector: args.pod_selector.clone(),
            pod_field_selector: None,
            policy_namespace: args.policy_namespace.clone(),
            device_taint_rule_version: rule_version,
        },
    );
    tracing::info!(
        dry_run = args.dry_run,
        identity = %identity(&args),
        lease = %format!("{}/{}", args.lease_namespace, args.lease_name),
        metrics_addr = %args.metrics_addr,
        "devheal controller: {} as {} (lease {}/{}), metrics on {}",
        if args.dry_run { "dry run" } else { "acting" },
        identity(&args),
        args.lease_namespace,
        args.lease_name,
        args.metrics_addr
    );
    // The restart budgets' last hour and repeat-offender history, kept beside the lease.
    let mut controller = Controller::new(settings, actuator, leader, SystemClock, metrics, health)
        .with_state_store(Box::new(store));
    if let Some(path) = settings_file {
        eprintln!(
            "devheal controller: settings from {} (looked at every {:?})",
            path.display(),
            args.settings_reload_every
        );
        controller = controller
            .with_settings_reloader(SettingsReloader::new(path, overrides), args.settings_reload_every);
    }
    controller.restore_state().await;
    let result = controller.run(cluster.events(), shutdown).await;
    let _ = stop.send(true);
    let _ = lease_task.await;
    let _ = gate_task.await;
    server.await.context("the metrics server task")?.context("serving metrics")?;
    result.context("the controller loop")?;
    Ok(ExitCode::SUCCESS)
}

pub fn run(args: ControllerArgs) -> anyhow::Result<ExitCode> {
    // Decisions, actions, dry-run "would …" lines and lease changes are logged (main.rs sets
    // up logging for every subcommand).
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run_async(args))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ControllerArgs,
    }

    #[test]
    fn flags_win_over_the_settings_file_and_the_file_over_the_defaults() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("settings.yaml");
        std::fs::write(
            &file,
            "safety:\n  probation: 1m\n  maxEvictionsPerMinute: 5\n  maxGangRestartsPerHourCluster: 40\n  \
             maxQuarantinedNodes: 9\n",
        )
        .expect("write");
        let cli = Cli::try_parse_from([
            "controller".as_ref(),
            "--settings".as_ref(),
            file.as_os_str(),
            "--probation".as_ref(),
            "90s".as_ref(),
            "--max-gang-restarts-per-hour-cluster".as_ref(),
            "7".as_ref(),
            "--max-quarantined-nodes".as_ref(),
            "3".as_ref(),
            "--set".as_ref(),
            "safety.maxQuarantinedNodes=4".as_ref(),
        ] as [&std::ffi::OsStr; 11])
        .expect("the flags parse");
        let s = Settings::load(cli.args.settings_file().as_deref(), &cli.args.overrides()).expect("loads");
        let defaults = devheal_core::SafetySettings::default();
        assert_eq!(s.safety.probation, devheal_core::Duration::from_secs(90), "--probation over the file");
        assert_eq!(s.safety.max_gang_restarts_per_hour_cluster, 7, "a budget flag over the file");
        assert_eq!(s.safety.max_quarantined_nodes, 4, "--set over a named flag");
        assert_eq!(s.safety.max_evictions_per_minute, 5, "the file over the default");
        assert_eq!(
            s.safety.max_gang_restarts_per_hour_per_namespace,
            defaults.max_gang_restarts_per_hour_per_namespace,
            "the default where neither says"
        );
        // No file and no flags: the built-in defaults (the probation flag no longer has a default
        // of its own that would hide the file's).
        let cli = Cli::try_parse_from(["controller"]).expect("parses");
        assert!(cli.args.overrides().is_empty());
        assert_eq!(cli.args.settings.as_deref(), None);
    }
}
