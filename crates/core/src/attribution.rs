//! Failure attribution: whose fault is a pod's failure? Combines everything known at once: the
//! pod's phase, reason and message, its conditions (`DisruptionTarget` and its reasons), each
//! container's current and last state (exit codes, signals, `OOMKilled`, waiting reasons),
//! `allocatedResourcesStatus` (KEP-4680), the health of the pod's devices at the time and recent
//! kernel incidents on them. The result is a [`Verdict`]: a class, a confidence and the evidence.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::catalog::{ExitCodeCatalog, signal_name};
use crate::device::{DeviceKey, Health, HealthReason};
use crate::incident::Attribution;
use crate::pod::{ContainerInfo, ContainerState, FailureClass, PodInfo, PodPhase};
use crate::time::Time;

/// A kernel incident seen on a device, as attribution needs it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncidentEvidence {
    pub id: String,
    pub code: Option<u32>,
    pub attribution: Attribution,
    pub health: Health,
    pub summary: String,
    pub last_seen: Time,
}

/// What is known about one of the pod's devices when its failure is judged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceEvidence {
    pub key: DeviceKey,
    pub health: Health,
    pub reasons: Vec<HealthReason>,
    /// Recent, non-stale incidents on this device.
    pub incidents: Vec<IncidentEvidence>,
}

/// The outcome of attribution.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub class: FailureClass,
    /// 0..=1: how sure the evidence makes us.
    pub confidence: f64,
    /// Human-readable observations, the deciding ones first.
    pub evidence: Vec<String>,
    /// The pod (or one of its containers) failed or is failing, or sits on a bad device.
    pub failing: bool,
    /// The pod reached a terminal phase.
    pub terminal: bool,
    /// Non-zero exit codes of terminated containers (current state first).
    pub exit_codes: Vec<i32>,
    /// Xid/SXid codes of incidents on the pod's devices.
    pub xids: Vec<u32>,
    /// The worst health among the pod's devices (Unknown counts as not known).
    pub worst_device_health: Option<Health>,
    /// Devices the evidence points at.
    pub suspect_devices: Vec<DeviceKey>,
    /// The failure looks like the consequence of another gang member failing first.
    pub peer_caused: bool,
}

impl Verdict {
    pub fn is_failure(&self) -> bool {
        self.class != FailureClass::None
    }
}

struct Candidate {
    class: FailureClass,
    confidence: f64,
}

#[derive(Default)]
struct Collector {
    candidates: Vec<Candidate>,
    evidence: Vec<(FailureClass, String)>,
}

impl Collector {
    fn add(&mut self, class: FailureClass, confidence: f64, evidence: String) {
        self.candidates.push(Candidate { class, confidence });
        self.evidence.push((class, evidence));
    }
    fn note(&mut self, evidence: String) {
        self.evidence.push((FailureClass::None, evidence));
    }
}

/// Tie-break between classes of equal confidence: the class whose remedy matters most first.
fn priority(class: FailureClass) -> u8 {
    match class {
        FailureClass::DeviceFailure => 0,
        FailureClass::DeviceDegraded => 1,
        FailureClass::Oom => 2,
        FailureClass::Disruption => 3,
        FailureClass::Infrastructure => 4,
        FailureClass::Application => 5,
        FailureClass::None => 6,
    }
}

const WAITING_INFRASTRUCTURE: [&str; 6] = [
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// Attribute a pod's state using the built-in exit-code catalog.
pub fn attribute(pod: &PodInfo, devices: &[DeviceEvidence]) -> Verdict {
    attribute_with(pod, devices, ExitCodeCatalog::builtin())
}

/// Attribute a pod's state with a given catalog.
pub fn attribute_with(pod: &PodInfo, devices: &[DeviceEvidence], catalog: &ExitCodeCatalog) -> Verdict {
    let mut c = Collector::default();
    let mut v = Verdict {
        terminal: matches!(pod.phase, PodPhase::Failed | PodPhase::Succeeded),
        ..Verdict::default()
    };
    let mut failing = pod.phase == PodPhase::Failed;

    // Pod-level reason and message.
    let reason = pod.reason.as_deref().unwrap_or("");
    let message = pod.message.as_deref().unwrap_or("");
    if !reason.is_empty() {
        failing |= pod.phase != PodPhase::Succeeded;
        let m = message.to_ascii_lowercase();
        let said = if message.is_empty() { String::new() } else { format!(": {message}") };
        match reason {
            "UnexpectedAdmissionError" if m.contains("unhealthy devices") => c.add(
                FailureClass::DeviceFailure,
                0.85,
                format!("kubelet rejected the pod because its devices are unhealthy (UnexpectedAdmissionError{said})"),
            ),
            "UnexpectedAdmissionError" if m.contains("requested number of devices unavailable") => c.add(
                FailureClass::Infrastructure,
                0.7,
                format!("kubelet's device accounting disagrees with the scheduler (UnexpectedAdmissionError{said})"),
            ),
            "UnexpectedAdmissionError" => c.add(
                FailureClass::Infrastructure,
                0.7,
                format!("kubelet admission failed (UnexpectedAdmissionError{said})"),
            ),
            r if r.starts_with("OutOf") => c.add(
                FailureClass::Infrastructure,
                0.7,
                format!("kubelet rejected the pod: not enough {} on the node ({r}{said})", &r[5..]),
            ),
            "Evicted" => c.add(FailureClass::Disruption, 0.85, format!("evicted by the kubelet{said}")),
            "Preempting" | "Preempted" => {
                c.add(FailureClass::Disruption, 0.85, format!("preempted ({reason}{said})"))
            }
            "NodeLost" | "NodeUnreachable" => {
                c.add(FailureClass::Infrastructure, 0.75, format!("the node was lost ({reason}{said})"))
            }
            "Shutdown" | "NodeShutdown" | "Terminated" => {
                c.add(FailureClass::Disruption, 0.8, format!("the node shut down ({reason}{said})"))
            }
            "NodeAffinity" | "NodeSelectorMismatching" | "UnexpectedAdmissionErrorNode" => c.add(
                FailureClass::Infrastructure,
                0.6,
                format!("the node no longer fits the pod ({reason}{said})"),
            ),
            "DeadlineExceeded" => {
                c.add(FailureClass::Application, 0.6, format!("activeDeadlineSeconds passed{said}"))
            }
            _ => c.note(format!("pod reason {reason}{said}")),
        }
        // What the message itself says ("nvml: GPU is lost" inside an admission error).
        for m in catalog.messages_in(message) {
            v.peer_caused |= m.peer_caused;
            c.add(m.class, m.confidence, format!("pod message: {:?} — {}", m.pattern, m.meaning));
        }
    }

    // Conditions.
    for cond in &pod.conditions {
        if cond.type_ == "DisruptionTarget" && cond.status == "True" {
            failing = true;
            let r = cond.reason.as_deref().unwrap_or("");
            let said = cond.message.as_deref().map(|m| format!(": {m}")).unwrap_or_default();
            if r == "DeletionByDeviceTaintManager" {
                c.add(
                    FailureClass::DeviceFailure,
                    0.8,
                    format!("a device taint evicted the pod (DisruptionTarget {r}{said})"),
                );
            } else {
                c.add(FailureClass::Disruption, 0.9, format!("DisruptionTarget {r}{said}"));
            }
        } else if cond.type_.starts_with("devheal.io/") && cond.status == "True" {
            c.note(format!("already marked {} ({})", cond.type_, cond.reason.as_deref().unwrap_or("")));
        } else if cond.type_ == "PodScheduled" && cond.status == "False" {
            let said = cond.message.as_deref().map(|m| format!(": {m}")).unwrap_or_default();
            c.note(format!("not scheduled ({}{said})", cond.reason.as_deref().unwrap_or("")));
        }
    }

    // Containers.
    let succeeded = pod.phase == PodPhase::Succeeded;
    for (init, ct) in
        pod.init_containers.iter().map(|c| (true, c)).chain(pod.containers.iter().map(|c| (false, c)))
    {
        failing |= judge_container(init, ct, catalog, &mut c, &mut v);
    }
    if succeeded {
        failing = false;
    }

    // Devices: allocatedResourcesStatus and what the engine (or NodeDeviceHealth) knows.
    let mut by_device: BTreeMap<(&str, &str), Health> = BTreeMap::new();
    for ct in &pod.containers {
        for r in &ct.allocated_resources_status {
            let e = by_device.entry((r.resource.as_str(), r.device_id.as_str())).or_insert(r.health);
            if worse(r.health, *e) {
                *e = r.health;
            }
            if r.health == Health::Unhealthy && !succeeded {
                let said = r.message.as_deref().map(|m| format!(": {m}")).unwrap_or_default();
                c.add(
                    FailureClass::DeviceFailure,
                    0.9,
                    format!(
                        "container {} reports device {} {} Unhealthy (allocatedResourcesStatus{said})",
                        ct.name, r.resource, r.device_id
                    ),
                );
                v.suspect_devices.push(DeviceKey::new(
                    pod.node.clone().unwrap_or_default(),
                    r.resource.clone(),
                    r.device_id.clone(),
                ));
            } else if r.health == Health::Unknown {
                c.note(format!(
                    "device {} {} health Unknown in allocatedResourcesStatus (detector blind; not counted)",
                    r.resource, r.device_id
                ));
            }
        }
    }
    let mut worst: Option<Health> = by_device.values().copied().filter(|h| *h != Health::Unknown).max();
    for d in devices {
        if d.health != Health::Unknown {
            worst = Some(worst.map_or(d.health, |w| if worse(d.health, w) { d.health } else { w }));
        }
        let reasons = summarize_reasons(&d.reasons);
        v.xids.extend(d.reasons.iter().filter(|r| is_kernel_code(r)).filter_map(|r| r.code));
        match d.health {
            _ if succeeded => {}
            Health::Unhealthy => {
                failing = true;
                c.add(FailureClass::DeviceFailure, 0.9, format!("device {} is Unhealthy{reasons}", d.key));
                v.suspect_devices.push(d.key.clone());
            }
            Health::Degraded => {
                c.add(FailureClass::DeviceDegraded, 0.6, format!("device {} is Degraded{reasons}", d.key));
                v.suspect_devices.push(d.key.clone());
            }
            Health::Unknown => c.note(format!(
                "device {} health Unknown (the detector lost sight of it; not counted){reasons}",
                d.key
            )),
            Health::Healthy => {}
        }
        for inc in &d.incidents {
            if let Some(code) = inc.code {
                v.xids.push(code);
            }
            if succeeded {
                continue;
            }
            let what = format!("{} on {}: {}", inc.id, d.key, inc.summary);
            match (inc.attribution, inc.health) {
                (Attribution::Application, _) => c.add(
                    FailureClass::Application,
                    0.7,
                    format!("kernel incident attributed to the application ({what})"),
                ),
                (Attribution::Device | Attribution::Interconnect | Attribution::Host, Health::Unhealthy) => {
                    failing = true;
                    c.add(FailureClass::DeviceFailure, 0.9, format!("kernel incident ({what})"));
                    v.suspect_devices.push(d.key.clone());
                }
                (Attribution::Device | Attribution::Interconnect | Attribution::Host, Health::Degraded) => {
                    c.add(FailureClass::DeviceDegraded, 0.6, format!("kernel incident ({what})"));
                    v.suspect_devices.push(d.key.clone());
                }
                _ => c.note(format!("kernel incident ({what})")),
            }
        }
    }
    v.worst_device_health = worst;
    v.suspect_devices.sort();
    v.suspect_devices.dedup();
    v.xids.sort_unstable();
    v.xids.dedup();
    v.failing = failing;

    // Decide: combine candidates of one class (noisy-or), best confidence wins. A Degraded
    // device is the class of a running pod on it (a straggler) even when nothing failed.
    let mut combined: BTreeMap<FailureClass, f64> = BTreeMap::new();
    for cand in &c.candidates {
        let e = combined.entry(cand.class).or_insert(0.0);
        *e = 1.0 - (1.0 - *e) * (1.0 - cand.confidence);
    }
    let best = combined
        .iter()
        .max_by(|a, b| a.1.total_cmp(b.1).then_with(|| priority(*b.0).cmp(&priority(*a.0))))
        .map(|(k, conf)| (*k, *conf));
    let (class, confidence) = match best {
        Some((class, conf)) if failing || class == FailureClass::DeviceDegraded => (class, conf),
        _ => (FailureClass::None, if succeeded { 0.95 } else { 0.8 }),
    };
    v.class = class;
    v.confidence = (confidence * 100.0).round() / 100.0;
    if class != FailureClass::DeviceFailure && class != FailureClass::DeviceDegraded {
        v.suspect_devices.clear();
    }
    // Deciding evidence first, then the rest, each once.
    let mut evidence: Vec<String> = Vec::new();
    let deciding = c.evidence.iter().filter(|(k, _)| *k == class);
    for (_, e) in deciding.chain(c.evidence.iter().filter(|(k, _)| *k != class)) {
        if !evidence.contains(e) {
            evidence.push(e.clone());
        }
    }
    if evidence.is_empty() {
        evidence.push(match pod.phase {
            PodPhase::Succeeded => "the pod succeeded".to_string(),
            PodPhase::Running => "the pod is running and nothing failed".to_string(),
            PodPhase::Pending => "the pod is pending and nothing failed".to_string(),
            _ => "no failure evidence".to_string(),
        });
    }
    v.evidence = evidence;
    v
}

/// A reason whose code is an Xid/SXid (from the kernel log or NVML).
fn is_kernel_code(r: &HealthReason) -> bool {
    matches!(r.source, crate::device::HealthSource::KernelLog | crate::device::HealthSource::Nvml)
}

/// `a` is worse than `b` (Unknown is not worse than anything: it is not evidence).
fn worse(a: Health, b: Health) -> bool {
    let rank = |h: Health| match h {
        Health::Unknown => 0,
        Health::Healthy => 1,
        Health::Degraded => 2,
        Health::Unhealthy => 3,
    };
    rank(a) > rank(b)
}

fn summarize_reasons(reasons: &[HealthReason]) -> String {
    if reasons.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = reasons
        .iter()
        .take(3)
        .map(|r| match r.code {
            Some(code) => format!("{:?} {code}: {}", r.source, r.message),
            None => format!("{:?}: {}", r.source, r.message),
        })
        .collect();
    format!(" ({})", parts.join("; "))
}

/// Judge one container; returns whether it shows a failure.
fn judge_container(
    init: bool,
    ct: &ContainerInfo,
    catalog: &ExitCodeCatalog,
    c: &mut Collector,
    v: &mut Verdict,
) -> bool {
    let kind = if init { "init container" } else { "container" };
    let mut failing = false;
    // The current state, and the last one when the container restarted after a failure.
    let current = (&ct.state, "");
    let last = (&ct.last_state, " (previous run)");
    for (state, when) in [current, last] {
        if let ContainerState::Terminated { exit_code, signal, reason, message, .. } = state {
            let reason = reason.as_deref().unwrap_or("");
            let message = message.as_deref().unwrap_or("");
            if *exit_code == 0 && reason != "OOMKilled" {
                continue;
            }
            if *exit_code == crate::pod::RESTART_IN_PLACE_EXIT_CODE && reason != "OOMKilled" {
                // The restart-in-place contract: the member left to be restarted in place.
                c.note(format!(
                    "{kind} {} exited {exit_code}{when} to be restarted in place (devheal's contract)",
                    ct.name
                ));
                continue;
            }
            // A previous failure only matters while the container keeps failing or restarting.
            if !when.is_empty() && matches!(ct.state, ContainerState::Running { .. }) && ct.restart_count == 0
            {
                continue;
            }
            failing = true;
            if *exit_code != 0 {
                v.exit_codes.push(*exit_code);
            }
            let sig = signal
                .and_then(|s| signal_name(128 + s))
                .or_else(|| signal_name(*exit_code))
                .map(|s| format!(", {s}"))
                .unwrap_or_default();
            let head = format!("{kind} {} exited {exit_code}{sig}{when}", ct.name);
            if reason == "OOMKilled" {
                c.add(FailureClass::Oom, 0.95, format!("{head}: OOMKilled (memory limit reached)"));
                continue;
            }
            if reason == "ContainerStatusUnknown" {
                c.add(
                    FailureClass::Infrastructure,
                    0.5,
                    format!(
                        "{head}: the kubelet lost track of the container (ContainerStatusUnknown) {message}"
                    ),
                );
                continue;
            }
            if reason == "ContainerCannotRun" || reason == "StartError" {
                c.add(FailureClass::Infrastructure, 0.6, format!("{head}: {reason} {message}"));
                continue;
            }
            let mut matched = false;
            for m in catalog.messages_in(message).chain(catalog.messages_in(reason)) {
                matched = true;
                v.peer_caused |= m.peer_caused;
                c.add(m.class, m.confidence, format!("{head}: {:?} — {}", m.pattern, m.meaning));
            }
            match catalog.exit_code(*exit_code) {
                Some(e) => c.add(
                    e.class,
                    if matched { e.confidence * 0.5 } else { e.confidence },
                    format!("{head}: {}", e.meaning),
                ),
                None => c.add(
                    FailureClass::Application,
                    0.4,
                    format!(
                        "{head}{}",
                        if reason.is_empty() { String::new() } else { format!(" ({reason})") }
                    ),
                ),
            }
        }
    }
    if let ContainerState::Waiting { reason: Some(reason), message } = &ct.state {
        let said = message.as_deref().map(|m| format!(": {m}")).unwrap_or_default();
        if WAITING_INFRASTRUCTURE.contains(&reason.as_str()) {
            failing = true;
            c.add(
                FailureClass::Infrastructure,
                0.8,
                format!("{kind} {} cannot start ({reason}{said}); not a device fault", ct.name),
            );
        } else if reason == "CrashLoopBackOff" {
            failing = true;
            c.add(
                FailureClass::Application,
                0.3,
                format!(
                    "{kind} {} keeps exiting (CrashLoopBackOff after {} restarts)",
                    ct.name, ct.restart_count
                ),
            );
        }
    }
    failing
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod::{PodCondition, ResourceHealth};

    fn failed_with(exit_code: i32, reason: &str, message: &str) -> PodInfo {
        PodInfo {
            uid: "u".into(),
            namespace: "ns".into(),
            name: "p".into(),
            node: Some("n1".into()),
            phase: PodPhase::Failed,
            containers: vec![ContainerInfo {
                name: "main".into(),
                state: ContainerState::Terminated {
                    exit_code,
                    signal: None,
                    reason: Some(reason.into()),
                    message: Some(message.into()),
                    finished_at: None,
                },
                ..ContainerInfo::default()
            }],
            ..PodInfo::default()
        }
    }

    fn device(health: Health) -> DeviceEvidence {
        DeviceEvidence {
            key: DeviceKey::new("n1", "nvidia.com/gpu", "GPU-1"),
            health,
            reasons: vec![],
            incidents: vec![],
        }
    }

    #[test]
    fn oom_killed_is_oom() {
        let v = attribute(&failed_with(137, "OOMKilled", ""), &[]);
        assert_eq!(v.class, FailureClass::Oom);
        assert!(v.evidence[0].contains("OOMKilled"), "{:?}", v.evidence);
    }

    #[test]
    fn segfault_on_healthy_device_is_application() {
        let v = attribute(&failed_with(139, "Error", ""), &[device(Health::Healthy)]);
        assert_eq!(v.class, FailureClass::Application);
        assert!(v.evidence[0].contains("SIGSEGV"));
        assert!(v.suspect_devices.is_empty());
    }

    #[test]
    fn exit_on_unhealthy_device_is_device_failure() {
        let v =
            attribute(&failed_with(1, "Error", "CUDA error: unknown error"), &[device(Health::Unhealthy)]);
        assert_eq!(v.class, FailureClass::DeviceFailure);
        assert!(v.confidence > 0.9);
        assert_eq!(v.suspect_devices.len(), 1);
    }

    /// The restart-in-place contract's exit is no failure, before the restart (the container
    /// terminated, the pod still Running) or after it (its last state); any other exit of a
    /// restarted container still is.
    #[test]
    fn an_exit_to_restart_in_place_is_not_a_failure() {
        let code = crate::pod::RESTART_IN_PLACE_EXIT_CODE;
        let mut p = failed_with(code, "Error", "");
        p.phase = PodPhase::Running;
        let v = attribute(&p, &[device(Health::Healthy)]);
        assert!(!v.failing, "{v:?}");
        assert!(v.evidence.iter().any(|e| e.contains("restarted in place")), "{:?}", v.evidence);
        p.containers[0].last_state = p.containers[0].state.clone();
        p.containers[0].state = ContainerState::Running { started_at: None };
        p.containers[0].restart_count = 1;
        assert!(!attribute(&p, &[device(Health::Healthy)]).failing);
        if let ContainerState::Terminated { exit_code, .. } = &mut p.containers[0].last_state {
            *exit_code = 1;
        }
        assert!(attribute(&p, &[device(Health::Healthy)]).failing, "exit 1 and a restart: a failure");
    }

    #[test]
    fn unknown_health_is_not_evidence() {
        let v = attribute(&failed_with(1, "Error", ""), &[device(Health::Unknown)]);
        assert_eq!(v.class, FailureClass::Application);
        assert!(v.evidence.iter().any(|e| e.contains("Unknown")));
        assert_eq!(v.worst_device_health, None);
    }

    #[test]
    fn running_pod_on_unhealthy_device_needs_action() {
        let mut p = failed_with(0, "", "");
        p.phase = PodPhase::Running;
        p.containers[0].state = ContainerState::Running { started_at: None };
        assert_eq!(attribute(&p, &[device(Health::Healthy)]).class, FailureClass::None);
        let v = attribute(&p, &[device(Health::Unhealthy)]);
        assert_eq!(v.class, FailureClass::DeviceFailure);
        assert!(v.failing);
    }

    #[test]
    fn preemption_is_disruption() {
        let mut p = failed_with(143, "Error", "");
        p.conditions.push(PodCondition {
            type_: "DisruptionTarget".into(),
            status: "True".into(),
            reason: Some("PreemptionByScheduler".into()),
            message: None,
            last_transition: None,
        });
        assert_eq!(attribute(&p, &[]).class, FailureClass::Disruption);
    }

    #[test]
    fn allocated_resources_status_unhealthy_is_device_failure() {
        let mut p = failed_with(1, "Error", "");
        p.containers[0].allocated_resources_status.push(ResourceHealth {
            resource: "nvidia.com/gpu".into(),
            device_id: "GPU-9".into(),
            health: Health::Unhealthy,
            message: None,
        });
        let v = attribute(&p, &[]);
        assert_eq!(v.class, FailureClass::DeviceFailure);
        assert_eq!(v.suspect_devices[0].id, "GPU-9");
    }

    #[test]
    fn application_xid_points_at_the_application() {
        let mut d = device(Health::Healthy);
        d.incidents.push(IncidentEvidence {
            id: "i1".into(),
            code: Some(13),
            attribution: Attribution::Application,
            health: Health::Healthy,
            summary: "Graphics Engine Exception".into(),
            last_seen: Time(0),
        });
        let v = attribute(&failed_with(134, "Error", ""), &[d]);
        assert_eq!(v.class, FailureClass::Application);
        assert_eq!(v.xids, vec![13]);
    }

    #[test]
    fn succeeded_pod_is_none() {
        let mut p = failed_with(0, "Completed", "");
        p.phase = PodPhase::Succeeded;
        let v = attribute(&p, &[device(Health::Unhealthy)]);
        assert_eq!(v.class, FailureClass::None);
    }
}
