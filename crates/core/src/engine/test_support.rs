//! What the engine's unit tests share: a cluster of 8-device nodes, gang pods, and the
//! inputs the tests send.

pub(super) use crate::action::{Action, PlannedAction, RepairKind};
pub(super) use crate::device::{Device, DeviceKey, Health, HealthReason};
pub(super) use crate::pod::{ContainerInfo, ContainerState, NodeInfo, PodInfo, PodPhase};
pub(super) use crate::policy::{FailurePolicy, PolicyRule, RuleAction, SafetySettings};
pub(super) use crate::time::Time;

pub(super) use super::{Engine, EngineConfig, ISSUED_MEMORY, Input};

pub(super) const GPU: &str = "nvidia.com/gpu";

pub(super) fn t(s: i64) -> Time {
    Time::from_secs(s)
}

pub(super) fn key(node: &str, i: usize) -> DeviceKey {
    DeviceKey::new(node, GPU, format!("GPU-{node}-{i}"))
}

pub(super) fn gang_pod(i: usize, node: &str) -> PodInfo {
    PodInfo {
        uid: format!("uid-{i}"),
        namespace: "ml".into(),
        name: format!("llama-{i}"),
        node: Some(node.into()),
        labels: [("jobset.sigs.k8s.io/jobset-name".to_string(), "llama".to_string())].into(),
        phase: PodPhase::Running,
        containers: vec![ContainerInfo {
            name: "pytorch".into(),
            state: ContainerState::Running { started_at: Some(t(0)) },
            ..ContainerInfo::default()
        }],
        devices: vec![key(node, 0)],
        start_time: Some(t(0)),
        ..PodInfo::default()
    }
}

pub(super) fn engine_with(nodes: usize) -> Engine {
    engine_with_safety(nodes, SafetySettings::default())
}

/// `nodes` nodes of 8 devices each (`node-0`, …), under `safety`.
pub(super) fn engine_with_safety(nodes: usize, safety: SafetySettings) -> Engine {
    let mut e = Engine::new(EngineConfig { safety, ..EngineConfig::default() });
    for n in 0..nodes {
        let node = format!("node-{n}");
        e.handle(
            Input::NodeUpsert(NodeInfo {
                name: node.clone(),
                boot_id: Some("b1".into()),
                ..NodeInfo::default()
            }),
            t(0),
        );
        let devices = (0..8)
            .map(|i| Device {
                key: key(&node, i),
                pci_address: Some(format!("0000:{:02x}:00.0", i + 1)),
                vendor: crate::device::Vendor::Nvidia,
                model: None,
            })
            .collect();
        e.handle(Input::Devices { node, devices }, t(0));
    }
    e
}

pub(super) fn failed(mut p: PodInfo, code: i32) -> PodInfo {
    p.phase = PodPhase::Failed;
    p.containers[0].state = ContainerState::Terminated {
        exit_code: code,
        signal: None,
        reason: Some("Error".into()),
        message: None,
        finished_at: None,
    };
    p
}

pub(super) fn count(actions: &[PlannedAction], f: impl Fn(&Action) -> bool) -> usize {
    actions.iter().filter(|a| f(&a.action)).count()
}

pub(super) fn unhealthy(e: &mut Engine, k: DeviceKey, now: Time) -> Vec<PlannedAction> {
    e.handle(
        Input::DeviceHealth {
            device: k,
            health: Health::Unhealthy,
            reasons: vec![HealthReason {
                source: crate::device::HealthSource::KernelLog,
                code: Some(79),
                message: "GPU has fallen off the bus".into(),
                first_seen: now,
                last_seen: now,
                count: 1,
            }],
        },
        now,
    )
}

pub(super) fn inventory(node: &str, skip: Option<usize>) -> Input {
    let devices = (0..8)
        .filter(|i| Some(*i) != skip)
        .map(|i| Device {
            key: key(node, i),
            pci_address: Some(format!("0000:{:02x}:00.0", i + 1)),
            vendor: crate::device::Vendor::Nvidia,
            model: None,
        })
        .collect();
    Input::Devices { node: node.into(), devices }
}

pub(super) fn healthy(e: &mut Engine, k: DeviceKey, now: Time) -> Vec<PlannedAction> {
    e.handle(Input::DeviceHealth { device: k, health: Health::Healthy, reasons: vec![] }, now)
}

pub(super) fn degraded(e: &mut Engine, k: DeviceKey, now: Time) -> Vec<PlannedAction> {
    let reason = HealthReason {
        source: crate::device::HealthSource::Progress,
        code: None,
        message: "straggler: 12 % slower than the gang median for 5 min".into(),
        first_seen: now,
        last_seen: now,
        count: 1,
    };
    e.handle(Input::DeviceHealth { device: k, health: Health::Degraded, reasons: vec![reason] }, now)
}

/// A gang of one pod, `name` in `namespace`, on device 0 of `node` (uid `namespace/name`).
pub(super) fn one_pod_gang(namespace: &str, name: &str, node: &str) -> PodInfo {
    PodInfo {
        uid: format!("{namespace}/{name}"),
        namespace: namespace.into(),
        name: format!("{name}-0"),
        labels: [("jobset.sigs.k8s.io/jobset-name".to_string(), name.to_string())].into(),
        ..gang_pod(0, node)
    }
}

/// The controller's hang finding for a pod, silent since `since`.
pub(super) fn hung(e: &mut Engine, uid: &str, since: Time, now: Time) -> Vec<PlannedAction> {
    e.handle(Input::Hung { pod_uid: uid.into(), since, evidence: "no step for 90 s".into() }, now)
}

/// A device Degraded by a device source (NVML: clocks throttled), not by progress reports.
pub(super) fn throttled(e: &mut Engine, k: DeviceKey, now: Time) -> Vec<PlannedAction> {
    let reason = HealthReason {
        source: crate::device::HealthSource::Nvml,
        code: None,
        message: "clocks throttled: hardware slowdown".into(),
        first_seen: now,
        last_seen: now,
        count: 1,
    };
    e.handle(Input::DeviceHealth { device: k, health: Health::Degraded, reasons: vec![reason] }, now)
}

/// Reports with this reason.
pub(super) fn reports<'a>(actions: &'a [PlannedAction], reason: &str) -> Vec<&'a str> {
    actions
        .iter()
        .filter_map(|a| match &a.action {
            Action::Report { reason: r, message } if r == reason => Some(message.as_str()),
            _ => None,
        })
        .collect()
}

/// A machine check on `node` in boot `b1` (a host fault: no device, the node is cordoned and
/// a reboot requested).
pub(super) fn host_fault(node: &str) -> Input {
    Input::KernelIncident(crate::incident::KernelIncident {
        id: format!("mce-{node}"),
        node: node.into(),
        boot_id: Some("b1".into()),
        pci_address: None,
        kind: "machine_check".into(),
        code: None,
        attribution: crate::incident::Attribution::Host,
        health: Health::Unhealthy,
        action: RepairKind::RebootNode,
        first_seen: t(2),
        last_seen: t(2),
        count: 1,
        summary: "Machine check: uncorrected memory error".into(),
    })
}

/// A node as its NodeInfo reports it, in boot `boot`.
pub(super) fn node_info(name: &str, boot: &str) -> Input {
    Input::NodeUpsert(NodeInfo { name: name.into(), boot_id: Some(boot.into()), ..NodeInfo::default() })
}
