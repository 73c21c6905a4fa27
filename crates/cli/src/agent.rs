//! `devheal agent`: the node agent.
//!
//! - `--once` reads every source one time and prints the NodeDeviceHealth object the agent would
//!   publish (JSON), then exits; it works on a machine with no kubelet and no GPU, reporting those
//!   sources as unavailable.
//! - Without `--once` it runs until SIGTERM or ctrl-c: every source followed, the per-device
//!   state machine, the NodeDeviceHealth status server-side-applied on change and on a heartbeat,
//!   the node condition `devheal.io/DevicesHealthy`, Events, and `/metrics` + `/healthz`.
//!   `--no-kube` prints what it would write as JSON lines instead of talking to an API server.
//! - `--fake-devices N` serves N fake devices (`devheal.io/fake-gpu`) through the device plugin
//!   API and takes fault injection on `POST /fake/{fail,degrade,recover}?device=ID`.
//! - Workload progress: pods post steps to `POST /v1/progress`, or name a metric in the
//!   `devheal.io/progress-metric` annotation, which is scraped (not with `--no-kube`: the pods
//!   and their annotations come from the API server); `--progress-window`, `--hang-timeout` and
//!   `--scrape-every` take `90s`, `2m`, `1m30s` or plain seconds.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use devheal_agent::health::TrackerConfig;
use devheal_agent::once::{SourcePaths, collect_once};
use devheal_agent::publish::{JsonLinesPublisher, KubePublisher, PublishConfig, Publisher};
use devheal_agent::run::{AgentConfig, GpuSource, start};
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
    /// The kubelet's device-plugin directory (plugin sockets and the kubelet's kubelet.sock).
    #[arg(long, default_value = devheal_kubelet::api::DEFAULT_DEVICE_PLUGIN_DIR)]
    device_plugin_dir: PathBuf,
    /// sysfs' PCI devices: each tracked device's PCIe path and the node's NVSwitches, so that a
    /// fault on a bridge or switch port reaches the devices below it (docs/agent.md).
    #[arg(long, default_value = "/sys/bus/pci/devices")]
    pci_devices_dir: PathBuf,
    /// The labels of the device plugin (or DRA driver) pods whose version this node reports,
    /// `key=value[,key=value…]`, repeatable, first preferred; replaces the defaults (the
    /// NVIDIA, AMD and Intel plugins' and NVIDIA's DRA driver's labels, docs/agent.md).
    #[arg(long = "device-plugin-selector", value_name = "SELECTOR")]
    device_plugin_selectors: Vec<devheal_agent::stack::Selector>,
    /// sysfs' device classes: the node's NICs (`net/`, `infiniband/`), whose link lines in the
    /// kernel log and link state the agent follows (docs/agent.md, "NIC links").
    #[arg(long, default_value = "/sys/class")]
    sys_class_dir: PathBuf,
    /// sysfs' DRM cards: AMD and Intel GPUs by PCI address, so that the Intel GPU plugin's
    /// `card1-0` and a kernel line's address name one device (docs/agent.md, "AMD and Intel").
    #[arg(long, default_value = "/sys/class/drm")]
    drm_class_dir: PathBuf,
    /// sysfs' accel devices: Intel Gaudi by PCI address, so that `habanalabs hl0:` lines reach
    /// the device (docs/agent.md, "AMD and Intel").
    #[arg(long, default_value = "/sys/class/accel")]
    accel_class_dir: PathBuf,
    /// KFD's topology nodes: which AMD GPU each MI300 partition (`amdgpu_xcp_<n>`) is a slice
    /// of, so that a fault on the GPU reaches the pods on its partitions.
    #[arg(long, default_value = "/sys/class/kfd/kfd/topology/nodes")]
    kfd_topology_dir: PathBuf,
    /// A NIC link down for this long is a network fault; one back up sooner was a flap.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    nic_down_after: Duration,
    /// NIC link flaps are counted within this window.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    nic_flap_window: Duration,
    /// More NIC link flaps than this within the flap window is a network fault.
    #[arg(long, default_value_t = 1)]
    nic_max_flaps: u32,
    /// A NIC link at fault is clear again once up and unchanged for this long.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    nic_stable_after: Duration,
    /// libnvidia-ml.so.1, when it is not on the loader's path (e.g. a driver mounted elsewhere).
    #[arg(long)]
    nvml_library: Option<PathBuf>,
    /// Do not load NVML at all.
    #[arg(long)]
    no_nvml: bool,
    /// libamd_smi.so (AMD's management library), when it is not on the loader's path (ROCm
    /// installs it in /opt/rocm/lib).
    #[arg(long)]
    amdsmi_library: Option<PathBuf>,
    /// Do not load amdsmi at all.
    #[arg(long)]
    no_amdsmi: bool,
    /// libhlml.so (Intel Gaudi's management library), when it is neither on the loader's path
    /// nor in /usr/lib/habanalabs.
    #[arg(long)]
    hlml_library: Option<PathBuf>,
    /// Do not load hlml at all (Gaudi devices then stay named by the serial numbers their
    /// device plugin gives them).
    #[arg(long)]
    no_hlml: bool,
    /// How long to wait for each kubelet or plugin call.
    #[arg(long, default_value_t = 5)]
    source_timeout_secs: u64,
    /// A kubeconfig file (default: in-cluster credentials, else $KUBECONFIG or ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Run without an API server: print each write as a JSON line on stdout.
    #[arg(long)]
    no_kube: bool,
    /// Where /metrics, /healthz (and /fake/* with --fake-devices) are served.
    #[arg(long, default_value = "0.0.0.0:9101")]
    metrics_addr: SocketAddr,
    /// Where POST /v1/progress is served: its own port, the one the DaemonSet publishes on the
    /// node's IP for training pods (the metrics port is not published there).
    #[arg(long, default_value = "0.0.0.0:9102")]
    progress_addr: SocketAddr,
    /// Serve N fake devices (devheal.io/fake-gpu) through the device plugin API, with fault
    /// injection on POST /fake/{fail,degrade,recover}?device=fake-gpu-<i>.
    #[arg(long, default_value_t = 0)]
    fake_devices: usize,
    /// Write the status at least this often even when nothing changed.
    #[arg(long, default_value_t = 60)]
    heartbeat_secs: u64,
    /// Least time between two status writes (changes within it are coalesced).
    #[arg(long, default_value_t = 100)]
    publish_min_interval_ms: u64,
    /// How long a device stays Degraded (probation) after its last fault cleared.
    #[arg(long, default_value_t = 600)]
    probation_secs: u64,
    /// Read PodResources at least this often (it is also read on every device change).
    #[arg(long, default_value_t = 10)]
    pod_resources_interval_secs: u64,
    /// Least time between two PodResources calls (the kubelet rate-limits the API).
    #[arg(long, default_value_t = 1000)]
    pod_resources_min_interval_ms: u64,
    /// How often NVML is sampled.
    #[arg(long, default_value_t = 10)]
    nvml_interval_secs: u64,
    /// Length of a workload's progress windows (whole seconds, 1s to 1h; aligned to the epoch).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    progress_window: Duration,
    /// A pod that reported progress and then none for this long (after an announced pause: past
    /// its end) is reported hung.
    #[arg(long, default_value = "90s", value_parser = parse_duration)]
    hang_timeout: Duration,
    /// The longest pause a progress report may announce (`pauseSeconds`); longer ones are cut
    /// to this.
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    max_pause: Duration,
    /// Who may post progress reports: `pod` (only the pod itself, on this node: from its own
    /// pod IP, or with its own projected service-account token for the audience `devheal`,
    /// which host-network pods need; `peer-ip` is the same) or `none` (anyone who reaches the
    /// port; local trials only, needed with --no-kube).
    #[arg(long, value_enum, default_value_t = ProgressAuthArg::Pod)]
    progress_auth: ProgressAuthArg,
    /// A catalog file whose entries override the built-in Xid/event catalog (as
    /// `classify-log --catalog`); read at start.
    #[arg(long, value_name = "FILE")]
    catalog: Option<PathBuf>,
    /// How often pods that name a progress metric are scraped.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    scrape_every: Duration,
    /// The device resets the controller requests of this node (docs/agent.md, "Device
    /// resets"): `off` answers each request Refused and leaves it to a repair system or a
    /// person; `dry-run` answers with what would be run; `on` resets the device once no
    /// process holds it, and reports what the driver shows afterwards.
    #[arg(long, value_enum, default_value_t = DeviceResetArg::Off)]
    device_reset: DeviceResetArg,
    /// The command that resets one NVIDIA GPU, one string split at spaces (no shell); `{pci}`,
    /// `{uuid}` and `{id}` are replaced. Default: NVIDIA's `nvidia-smi --gpu-reset -i {pci}`.
    #[arg(long, value_name = "COMMAND", allow_hyphen_values = true)]
    device_reset_command: Option<String>,
    /// How long the reset command may run.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    device_reset_timeout: Duration,
    /// At most this many resets of one device within 24 h, whatever the controller asks.
    #[arg(long, default_value_t = 3)]
    device_reset_limit: usize,
    /// How long a device still held by a process is waited for before the reset is refused.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    device_reset_busy_wait: Duration,
    /// The functional check a reset GPU must pass before it returns (`devheal gpu-check`, run
    /// as a child with --device-reset-timeout): `if-available` runs it where the CUDA driver
    /// library loads and otherwise returns the GPU on NVML's word alone, saying so; `required`
    /// fails the reset where the check cannot run; `off` never runs it.
    #[arg(long, value_enum, default_value_t = DeviceCheckArg::IfAvailable)]
    device_check: DeviceCheckArg,
    /// How much of the GPU's memory the check's patterns cover, in MiB.
    #[arg(long, default_value_t = 256)]
    device_check_memory_mib: u64,
    /// The CUDA driver library the check loads, when it is not `libcuda.so.1` on the loader's
    /// path.
    #[arg(long)]
    cuda_library: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum DeviceCheckArg {
    Off,
    IfAvailable,
    Required,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum DeviceResetArg {
    Off,
    DryRun,
    On,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum ProgressAuthArg {
    #[value(alias = "peer-ip")]
    Pod,
    None,
}

/// `90s`, `2m`, `1m30s`, `1h`, `500ms` (the settings file's grammar:
/// [`devheal_controller::settings::parse_duration`]), or a plain number of seconds.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    if let Ok(secs) = text.trim().parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let d = devheal_controller::settings::parse_duration(text)?;
    Ok(Duration::from_nanos(u64::try_from(d.as_nanos()).unwrap_or(0)))
}

pub(crate) fn core_duration(d: Duration) -> devheal_core::Duration {
    devheal_core::Duration::from_nanos(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

fn node_name(args: &AgentArgs) -> String {
    crate::kube_env::own_name(args.node.as_deref(), "NODE_NAME", "unknown-node")
}

pub fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.device_plugin_selectors.len() <= devheal_agent::stack::MAX_SELECTORS,
        "--device-plugin-selector is given {} times; at most {} are taken",
        args.device_plugin_selectors.len(),
        devheal_agent::stack::MAX_SELECTORS
    );
    let paths = SourcePaths {
        kmsg: args.kmsg.clone(),
        pod_resources_socket: args.pod_resources_socket.clone(),
        device_plugin_dir: args.device_plugin_dir.clone(),
        nvml_library: args.nvml_library.clone(),
        pci_devices_dir: args.pci_devices_dir.clone(),
        sys_class_dir: args.sys_class_dir.clone(),
        drm_class_dir: args.drm_class_dir.clone(),
        accel_class_dir: args.accel_class_dir.clone(),
        kfd_topology_dir: args.kfd_topology_dir.clone(),
        amdsmi_library: args.amdsmi_library.clone(),
        hlml_library: args.hlml_library.clone(),
        ..SourcePaths::default()
    };
    let catalog = match &args.catalog {
        Some(path) => {
            let catalog = devheal_detect::catalog::Catalog::from_path(path)?;
            eprintln!("devheal agent: Xid/event catalog {} (version {})", path.display(), catalog.version());
            catalog
        }
        None => devheal_detect::catalog::Catalog::builtin(),
    };
    if args.once {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let object = runtime.block_on(collect_once(
            &node_name(&args),
            &paths,
            &catalog,
            Duration::from_secs(args.source_timeout_secs),
            Time::from_nanos(now),
        ));
        println!("{}", serde_json::to_string_pretty(&object)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut config = AgentConfig::new(&node_name(&args));
    config.catalog = catalog;
    config.paths = paths;
    config.gpus = if args.no_nvml { GpuSource::Off } else { GpuSource::Nvml };
    config.amd = if args.no_amdsmi {
        devheal_agent::amd::AmdSource::Off
    } else {
        devheal_agent::amd::AmdSource::AmdSmi
    };
    config.gaudi = if args.no_hlml {
        devheal_agent::gaudi::GaudiSource::Off
    } else {
        devheal_agent::gaudi::GaudiSource::Hlml
    };
    config.fake_devices = args.fake_devices;
    config.metrics_addr = Some(args.metrics_addr);
    config.progress_addr = Some(args.progress_addr);
    config.tracker = TrackerConfig {
        probation: devheal_core::Duration::from_secs(
            args.probation_secs.min(i64::MAX as u64 / 1_000_000_000) as i64,
        ),
        // A device that was bad returns only after its functional check (--device-check).
        check_after_probation: args.device_check != DeviceCheckArg::Off,
    };
    config.publish = PublishConfig {
        heartbeat: Duration::from_secs(args.heartbeat_secs.max(1)),
        min_interval: Duration::from_millis(args.publish_min_interval_ms),
    };
    config.pod_resources_interval = Duration::from_secs(args.pod_resources_interval_secs.max(1));
    config.pod_resources_min_interval = Duration::from_millis(args.pod_resources_min_interval_ms);
    config.nvml_interval = Duration::from_secs(args.nvml_interval_secs.max(1));
    config.source_timeout = Duration::from_secs(args.source_timeout_secs.max(1));
    config.progress.window = core_duration(args.progress_window);
    config.progress.hang_timeout = core_duration(args.hang_timeout);
    config.progress.max_pause = core_duration(args.max_pause);
    config.progress.scrape_every = core_duration(args.scrape_every);
    config.progress.validate()?;
    config.links = devheal_detect::LinkConfig {
        down_after: core_duration(args.nic_down_after),
        flap_window: core_duration(args.nic_flap_window),
        max_flaps: args.nic_max_flaps,
        stable_after: core_duration(args.nic_stable_after),
    };
    config.links.validate()?;
    config.reset_mode = match args.device_reset {
        DeviceResetArg::Off => devheal_agent::reset::ResetMode::Off,
        DeviceResetArg::DryRun => devheal_agent::reset::ResetMode::DryRun,
        DeviceResetArg::On => devheal_agent::reset::ResetMode::On,
    };
    anyhow::ensure!(args.device_reset_limit >= 1, "--device-reset-limit must be at least 1");
    config.reset_limits = devheal_agent::reset::ResetLimits {
        per_device: args.device_reset_limit,
        busy_wait: args.device_reset_busy_wait,
        timeout: args.device_reset_timeout.max(Duration::from_secs(1)),
        check: match args.device_check {
            DeviceCheckArg::Off => devheal_agent::reset::CheckMode::Off,
            DeviceCheckArg::IfAvailable => devheal_agent::reset::CheckMode::IfAvailable,
            DeviceCheckArg::Required => devheal_agent::reset::CheckMode::Required,
        },
        ..devheal_agent::reset::ResetLimits::default()
    };
    anyhow::ensure!(args.device_check_memory_mib >= 1, "--device-check-memory-mib must be at least 1");
    // The check is this binary's own `gpu-check`, run as a child so that a hung GPU call can be
    // killed at the time limit.
    config.reset_check_command = std::env::current_exe().ok().map(|exe| {
        devheal_agent::reset::gpu_check_command(
            &exe.to_string_lossy(),
            args.device_check_memory_mib,
            args.cuda_library.as_deref(),
        )
    });
    if let Some(command) = &args.device_reset_command {
        let words: Vec<String> = command.split_whitespace().map(str::to_string).collect();
        anyhow::ensure!(!words.is_empty(), "--device-reset-command needs a program");
        config.reset_command = words;
    }
    config.progress_auth = match args.progress_auth {
        ProgressAuthArg::Pod => {
            if args.no_kube {
                tracing::warn!(
                    "devheal agent: progress reports will be refused (403): --progress-auth pod needs the watch \
                     of this node's pods, which --no-kube turns off; pass --progress-auth none for a local trial"
                );
            }
            devheal_agent::http::ProgressAuth::Pod
        }
        ProgressAuthArg::None => {
            tracing::warn!(
                "--progress-auth none: any client that reaches the progress port can report for any pod on this \
                 node (forged hangs and slow steps); for local trials only"
            );
            devheal_agent::http::ProgressAuth::None
        }
    };

    // Two worker threads: the loop and the publisher never wait on each other.
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async move {
        if args.no_kube {
            run_until_signal(config, JsonLinesPublisher::new(std::io::stdout())).await
        } else {
            let client =
                crate::kube_env::client(args.kubeconfig.as_deref(), true, "use --kubeconfig or --no-kube")
                    .await?;
            // The pods on this node: their progress annotations, for the scraper, their IPs,
            // for telling a pod's own progress reports from anyone else's, and the device
            // plugin's pods, for the version this node reports.
            let (targets_tx, targets_rx) = tokio::sync::watch::channel(Vec::new());
            let (addresses_tx, addresses_rx) = tokio::sync::watch::channel(Default::default());
            let (stack_tx, stack_rx) = tokio::sync::watch::channel(Vec::new());
            let selectors = if args.device_plugin_selectors.is_empty() {
                devheal_agent::stack::Selector::defaults()
            } else {
                args.device_plugin_selectors.clone()
            };
            tokio::spawn(devheal_agent::scrape::watch_node_pods(
                client.clone(),
                config.node.clone(),
                targets_tx,
                devheal_agent::scrape::NodePodSinks {
                    addresses: Some(addresses_tx),
                    stack: Some((selectors, stack_tx)),
                },
            ));
            let mut config = config;
            config.scrape_targets = Some(targets_rx);
            config.pod_addresses = Some(addresses_rx);
            config.stack_pods = Some(stack_rx);
            // The Node's device counts: with the kubelet's allocatable devices, they say which
            // devices their plugin reported Unhealthy (the agent opens no ListAndWatch of its own).
            let (counts_tx, counts_rx) = tokio::sync::watch::channel(None);
            tokio::spawn(devheal_agent::sources::poll_node_counts(
                client.clone(),
                config.node.clone(),
                config.pod_resources_interval,
                Duration::from_secs(10),
                counts_tx,
            ));
            config.node_counts = Some(counts_rx);
            // The node's ResourceSlices: which DRA device is which GPU (crate docs: identity).
            let (slices_tx, slices_rx) = tokio::sync::watch::channel(None);
            tokio::spawn(devheal_agent::sources::poll_resource_slices(
                client.clone(),
                config.node.clone(),
                Duration::from_secs(30),
                Duration::from_secs(10),
                slices_tx,
            ));
            config.resource_slices = Some(slices_rx);
            // The controller's reset requests of this node (spec.resetRequests of its NodeDeviceHealth).
            let (resets_tx, resets_rx) = tokio::sync::watch::channel(Vec::new());
            tokio::spawn(devheal_agent::sources::watch_reset_requests(
                client.clone(),
                config.node.clone(),
                resets_tx,
            ));
            config.reset_requests = Some(resets_rx);
            // Pods that prove who they are with a token (host-network pods): TokenReview.
            config.progress_tokens = Some(std::sync::Arc::new(devheal_agent::token::PodTokens::new(
                std::sync::Arc::new(devheal_agent::token::KubeTokenReviewer::new(client.clone())),
                devheal_agent::token::PROGRESS_AUDIENCE,
                Duration::from_secs(5),
            )));
            run_until_signal(config, KubePublisher::new(client)).await
        }
    })
}

async fn run_until_signal<P: Publisher>(config: AgentConfig, publisher: P) -> anyhow::Result<ExitCode> {
    // Listen before the agent starts and says so: a SIGTERM right after the announcement (a pod
    // deleted as it starts, a test) must stop it cleanly, not kill it with the default action.
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let node = config.node.clone();
    let agent = start(config, publisher).await?;
    if let Some(addr) = agent.metrics_addr {
        tracing::info!("devheal agent: node {node}, metrics on http://{addr}/metrics");
    }
    if let Some(addr) = agent.progress_addr {
        tracing::info!("devheal agent: progress reports on http://{addr}/v1/progress");
    }
    tokio::select! {
        _ = term.recv() => tracing::info!("devheal agent: SIGTERM, stopping"),
        _ = interrupt.recv() => tracing::info!("devheal agent: interrupted, stopping"),
    }
    agent.stop().await;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_read_with_units_or_as_seconds() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        for bad in ["", "s", "1.5s", "10x", "-3s", "m5"] {
            let err = parse_duration(bad).expect_err(bad);
            assert!(err.contains("is not a duration"), "{err}");
        }
    }
}
