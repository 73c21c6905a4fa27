//! `devheal explain [FILE|-]`: what `kubectl get pod -o json|yaml` printed, run through the same
//! attribution, policy and engine code the controller uses, told to a person: per pod the
//! class, the evidence and the action devheal would take. `--node-health` adds the devices'
//! health (NodeDeviceHealth objects), `--policy` operator FailurePolicies.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use devheal_core::{Action, Engine, EngineConfig, Health, Input, NodeInfo, PlannedAction, PodInfo, Time};
use devheal_k8s::node_health::DeviceReport;
use devheal_k8s::pod::latest_time;
use devheal_k8s::{parse_node_health, parse_pods, parse_policies, pod_from_k8s};
use serde::Serialize;

#[derive(Clone, Copy, Debug, Default, clap::ValueEnum)]
pub enum OutputFormat {
    /// A table for people.
    #[default]
    Table,
    /// One JSON object per pod, one per line.
    Json,
}

#[derive(clap::Args)]
pub struct ExplainArgs {
    /// A Pod, List or PodList as JSON or YAML (`kubectl get pod -o json`); `-` or nothing reads stdin.
    pub file: Option<PathBuf>,
    /// NodeDeviceHealth objects (one, or a List) with the health of the pods' devices.
    #[arg(long = "node-health", value_name = "FILE")]
    pub node_health: Vec<PathBuf>,
    /// FailurePolicy objects (one, or a List) to use instead of the built-in default policy.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub format: OutputFormat,
}

/// What `explain` says about one pod.
#[derive(Debug, Serialize)]
pub struct Explanation {
    pub pod: String,
    pub class: String,
    pub confidence: f64,
    pub evidence: Vec<String>,
    /// The main thing devheal would do: `restart_gang`, `evict_pod`, `mark_pod`, ... or `none`.
    pub action: String,
    pub policy: String,
    pub rule: Option<String>,
    pub gang: Option<String>,
    pub devices: Vec<String>,
    /// Every action the engine would plan, in order.
    pub actions: Vec<PlannedAction>,
}

fn read_input(path: Option<&PathBuf>) -> anyhow::Result<(String, String)> {
    match path {
        None => read_stdin(),
        Some(p) if p.as_os_str() == "-" => read_stdin(),
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
            Ok((text, p.display().to_string()))
        }
    }
}

fn read_stdin() -> anyhow::Result<(String, String)> {
    let mut text = String::new();
    std::io::stdin().read_to_string(&mut text).context("cannot read stdin")?;
    Ok((text, "<stdin>".to_string()))
}

/// The action that matters most among those planned for the pod.
fn main_action(actions: &[PlannedAction]) -> String {
    let order = [
        "restart_gang",
        "fail_workload",
        "evict_pod",
        "replace_at_checkpoint",
        "cordon_node",
        "request_repair",
        "quarantine_device",
        "mark_pod",
        "report",
    ];
    order
        .iter()
        .find(|name| actions.iter().any(|a| a.action.label() == **name))
        .map_or("none", |n| n)
        .to_string()
}

/// The engine that knows the nodes and devices from the NodeDeviceHealth files, and the actions
/// it planned for the devices themselves (quarantine, repair).
fn base_engine(config: EngineConfig, reports: &[DeviceReport]) -> (Engine, Vec<PlannedAction>) {
    let mut device_actions = Vec::new();
    let mut engine = Engine::new(config);
    let mut nodes: Vec<&str> = reports.iter().map(|r| r.device.key.node.as_str()).collect();
    nodes.sort_unstable();
    nodes.dedup();
    for node in nodes {
        engine.handle(
            Input::NodeUpsert(NodeInfo { name: node.to_string(), ..NodeInfo::default() }),
            Time::ZERO,
        );
        let devices =
            reports.iter().filter(|r| r.device.key.node == node).map(|r| r.device.clone()).collect();
        engine.handle(Input::Devices { node: node.to_string(), devices }, Time::ZERO);
    }
    for r in reports {
        if r.health != Health::Healthy {
            let at = r.since.unwrap_or(Time::ZERO);
            let input = Input::DeviceHealth {
                device: r.device.key.clone(),
                health: r.health,
                reasons: r.reasons.clone(),
            };
            device_actions.extend(engine.handle(input, at));
        }
    }
    (engine, device_actions)
}

/// The device a device-level action concerns.
fn action_device(a: &Action) -> Option<&devheal_core::DeviceKey> {
    match a {
        Action::QuarantineDevice { device, .. } | Action::ReleaseDevice { device, .. } => Some(device),
        Action::RequestRepair { device, .. } => device.as_ref(),
        _ => None,
    }
}

/// Explain every pod in `pods_text` (named `source_name` in errors).
pub fn explain(
    pods_text: &str,
    source_name: &str,
    reports: &[DeviceReport],
    config: EngineConfig,
) -> anyhow::Result<Vec<Explanation>> {
    let pods = parse_pods(pods_text, source_name)?;
    let (base, device_actions) = base_engine(config, reports);
    let mut out = Vec::with_capacity(pods.len());
    for (i, pod) in pods.iter().enumerate() {
        let mut info: PodInfo = pod_from_k8s(pod).with_context(|| format!("{source_name}: item {i}"))?;
        for r in reports {
            if r.pods.iter().any(|b| b.names(&info.namespace, &info.name, &info.uid))
                && !info.devices.contains(&r.device.key)
            {
                info.devices.push(r.device.key.clone());
            }
        }
        info.devices.sort();
        let now = latest_time(&info)
            .into_iter()
            .chain(reports.iter().filter_map(|r| r.since))
            .max()
            .unwrap_or(Time::ZERO);
        let decision = base.decide(&info, now);
        let mut engine = base.clone();
        let mut actions: Vec<PlannedAction> = device_actions
            .iter()
            .filter(|a| action_device(&a.action).is_some_and(|d| info.devices.contains(d)))
            .cloned()
            .collect();
        actions.extend(engine.handle(Input::PodUpsert(info.clone()), now));
        out.push(Explanation {
            pod: format!("{}/{}", info.namespace, info.name),
            class: decision.verdict.class.as_str().to_string(),
            confidence: decision.verdict.confidence,
            evidence: decision.verdict.evidence.clone(),
            action: main_action(&actions),
            policy: decision.policy,
            rule: decision.rule,
            gang: decision.gang.map(|g| g.to_string()),
            devices: info.devices.iter().map(|d| d.to_string()).collect(),
            actions,
        });
    }
    Ok(out)
}

fn write_table(out: &mut impl Write, explanations: &[Explanation]) -> std::io::Result<()> {
    let width = explanations.iter().map(|e| e.pod.len()).max().unwrap_or(3).max(3);
    writeln!(out, "{:<width$}  {:<15} {:>4}  ACTION", "POD", "CLASS", "CONF")?;
    for e in explanations {
        writeln!(out, "{:<width$}  {:<15} {:>4.2}  {}", e.pod, e.class, e.confidence, e.action)?;
        for ev in &e.evidence {
            writeln!(out, "    - {ev}")?;
        }
        let rule = e.rule.as_deref().map(|r| format!(", rule {r}")).unwrap_or_default();
        writeln!(out, "    policy {}{rule}", e.policy)?;
        for a in &e.actions {
            writeln!(out, "    would: {}", a.action.summary())?;
        }
    }
    Ok(())
}

pub fn run(args: ExplainArgs) -> anyhow::Result<ExitCode> {
    let (text, source_name) = read_input(args.file.as_ref())?;
    let mut reports = Vec::new();
    for path in &args.node_health {
        let name = path.display().to_string();
        let t = std::fs::read_to_string(path).with_context(|| format!("cannot read {name}"))?;
        for object in parse_node_health(&t, &name)? {
            reports.extend(object.reports().with_context(|| name.clone())?);
        }
    }
    let mut config = EngineConfig::default();
    if let Some(path) = &args.policy {
        let name = path.display().to_string();
        let t = std::fs::read_to_string(path).with_context(|| format!("cannot read {name}"))?;
        config.policies = parse_policies(&t, &name)?;
    }
    let explanations = explain(&text, &source_name, &reports, config)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match args.format {
        OutputFormat::Table => write_table(&mut out, &explanations)?,
        OutputFormat::Json => {
            for e in &explanations {
                serde_json::to_writer(&mut out, e)?;
                writeln!(out)?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
