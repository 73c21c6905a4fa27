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
    Cluster, Controller, ControllerSettings, KubeCluster, LeaderFlag, LoopHealth, Metrics, SystemClock,
    WatchSettings, keep_lease, serve,
};
use devheal_core::Actuator;
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
}

fn identity(args: &ControllerArgs) -> String {
    args.identity
        .clone()
        .or_else(|| std::env::var("POD_NAME").ok().filter(|n| !n.is_empty()))
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_string()))
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "devheal-controller".to_string())
}

async fn client(kubeconfig: Option<&PathBuf>) -> anyhow::Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("using kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer().await.context(
            "no Kubernetes configuration: not in a cluster, and no $KUBECONFIG or ~/.kube/config (or pass --kubeconfig)",
        )?,
    };
    Client::try_from(config).context("building the Kubernetes client")
}

// ================================ MERGE POINT ================================================
// The Kubernetes actuator (`devheal_k8s::actuator::KubeActuator`) and the Lease elector
// (`devheal_k8s::lease::LeaseElector`) are written on another branch. At merge, replace the two
// functions below: `actuator` returns the KubeActuator built from `client` (told `dry_run`), and
// `renew_lease` calls `elector.try_acquire_or_renew()`. Nothing else in this file changes.

/// The actuator that carries out actions on the cluster. Not merged yet: an error, so the
/// controller never runs without one (it never fakes actions).
fn actuator(_client: &Client, _dry_run: bool) -> anyhow::Result<NotMerged> {
    anyhow::bail!(
        "the Kubernetes actuator is not merged yet (devheal_k8s::actuator::KubeActuator); \
         the controller cannot act on a cluster in this build"
    )
}

/// One renewal of the Lease: whether this replica holds it now. Not merged yet.
async fn renew_lease(_client: &Client, lease: &LeaseSettings) -> Result<bool, String> {
    Err(format!(
        "cannot take Lease {}/{} as {}: the Lease elector is not merged yet (devheal_k8s::lease::LeaseElector)",
        lease.namespace, lease.name, lease.identity
    ))
}

/// No value of this type exists: it stands for the actuator until it is merged.
enum NotMerged {}

impl Actuator for NotMerged {
    async fn execute(&self, _planned: &devheal_core::PlannedAction) -> devheal_core::ActionOutcome {
        match *self {}
    }
}
// ============================== END MERGE POINT ==============================================

/// Which Lease this replica competes for.
struct LeaseSettings {
    namespace: String,
    name: String,
    identity: String,
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

async fn run_async(args: ControllerArgs) -> anyhow::Result<ExitCode> {
    let client = client(args.kubeconfig.as_ref()).await?;
    let actuator = actuator(&client, args.dry_run)?;
    let settings = ControllerSettings { dry_run: args.dry_run, ..ControllerSettings::default() };
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
    let leader = LeaderFlag::new(false);
    let lease_client = client.clone();
    let lease = LeaseSettings {
        namespace: args.lease_namespace.clone(),
        name: args.lease_name.clone(),
        identity: identity(&args),
    };
    let lease_task = {
        let leader = leader.clone();
        let stop = wait_stop();
        tokio::spawn(async move {
            keep_lease(|| renew_lease(&lease_client, &lease), leader, Duration::from_secs(2), stop).await;
        })
    };
    let cluster = KubeCluster::new(
        client,
        WatchSettings {
            pod_label_selector: args.pod_selector.clone(),
            pod_field_selector: None,
            policy_namespace: args.policy_namespace.clone(),
        },
    );
    eprintln!(
        "devheal controller: {} as {} (lease {}/{}), metrics on {}",
        if args.dry_run { "dry run" } else { "acting" },
        identity(&args),
        args.lease_namespace,
        args.lease_name,
        args.metrics_addr
    );
    let controller = Controller::new(settings, actuator, leader, SystemClock, metrics, health);
    let result = controller.run(cluster.events(), shutdown_signal()).await;
    let _ = stop.send(true);
    let _ = lease_task.await;
    server.await.context("the metrics server task")?.context("serving metrics")?;
    result.context("the controller loop")?;
    Ok(ExitCode::SUCCESS)
}

pub fn run(args: ControllerArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run_async(args))
}
