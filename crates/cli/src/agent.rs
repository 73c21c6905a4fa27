//! `devheal agent`: the node agent. `--once` reads every source one time and prints the
//! NodeDeviceHealth object the agent would publish (JSON), then exits; it works on a machine with
//! no kubelet and no GPU, reporting those sources as unavailable.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use devheal_agent::once::{SourcePaths, collect_once};
use devheal_core::Time;

#[derive(clap::Args)]
pub struct AgentArgs {
    /// Read every source once, print the NodeDeviceHealth that would be published, and exit.
    #[arg(long)]
    once: bool,
    /// This node's name (default: $NODE_NAME, else the host name).
    #[arg(long)]
    node: Option<String>,
    /// The kernel log device.
    #[arg(long, default_value = "/dev/kmsg")]
    kmsg: PathBuf,
    /// The kubelet's PodResources socket.
    #[arg(long, default_value = devheal_kubelet::api::DEFAULT_POD_RESOURCES_SOCKET)]
    pod_resources_socket: PathBuf,
    /// The kubelet's device-plugin directory (plugin sockets live here).
    #[arg(long, default_value = devheal_kubelet::api::DEFAULT_DEVICE_PLUGIN_DIR)]
    device_plugin_dir: PathBuf,
    /// libnvidia-ml.so.1, when it is not on the loader's path (e.g. a driver mounted elsewhere).
    #[arg(long)]
    nvml_library: Option<PathBuf>,
    /// How long to wait for each kubelet or plugin socket.
    #[arg(long, default_value_t = 5)]
    source_timeout_secs: u64,
}

fn node_name(args: &AgentArgs) -> String {
    args.node
        .clone()
        .or_else(|| std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty()))
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_string()))
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "unknown-node".to_string())
}

pub fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    if !args.once {
        anyhow::bail!(
            "the long-running agent (event loop and NodeDeviceHealth publisher) is not built yet; \
             use `devheal agent --once` to read every source and print what it would publish"
        );
    }
    let paths = SourcePaths {
        kmsg: args.kmsg.clone(),
        pod_resources_socket: args.pod_resources_socket.clone(),
        device_plugin_dir: args.device_plugin_dir.clone(),
        nvml_library: args.nvml_library.clone(),
        ..SourcePaths::default()
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let object = runtime.block_on(collect_once(
        &node_name(&args),
        &paths,
        Duration::from_secs(args.source_timeout_secs),
        Time::from_nanos(now),
    ));
    println!("{}", serde_json::to_string_pretty(&object)?);
    Ok(ExitCode::SUCCESS)
}
