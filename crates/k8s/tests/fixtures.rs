//! Attribution on real pod objects from public bug reports and docs (`tests/data/pods`, the
//! source of each written beside it): each must parse, convert and get the class a person
//! reading the report would give it.

use std::path::{Path, PathBuf};

use devheal_core::{Engine, EngineConfig, FailureClass, RuleAction, Time};
use devheal_k8s::pod::latest_time;
use devheal_k8s::{parse_pods, pod_from_k8s};

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/pods")
}

/// (file, expected class, expected default-policy action)
const CASES: [(&str, FailureClass, RuleAction); 14] = [
    ("uae-gpu-lost.yaml", FailureClass::DeviceFailure, RuleAction::RestartGang),
    ("uae-devices-unavailable.yaml", FailureClass::Infrastructure, RuleAction::Ignore),
    ("uae-unhealthy-devices-amd.yaml", FailureClass::DeviceFailure, RuleAction::RestartGang),
    ("oom-init-container.yaml", FailureClass::Oom, RuleAction::Ignore),
    ("oom-crashloop.yaml", FailureClass::Oom, RuleAction::Ignore),
    ("evicted-memory.yaml", FailureClass::Disruption, RuleAction::Ignore),
    ("evicted-disruption-target.yaml", FailureClass::Disruption, RuleAction::Ignore),
    ("preempted.json", FailureClass::Disruption, RuleAction::Ignore),
    ("nodelost.json", FailureClass::Infrastructure, RuleAction::Ignore),
    ("imagepullbackoff.yaml", FailureClass::Infrastructure, RuleAction::Ignore),
    ("crashloop-exit-127.yaml", FailureClass::Application, RuleAction::Ignore),
    ("allocated-resources-unhealthy.yaml", FailureClass::DeviceFailure, RuleAction::RestartGang),
    ("running-node-down.json", FailureClass::None, RuleAction::Ignore),
    ("volcano-container-status-unknown.yaml", FailureClass::Infrastructure, RuleAction::Ignore),
];

#[test]
fn every_fixture_is_classified_as_its_report_says() {
    let engine = Engine::new(EngineConfig::default());
    let mut failures = Vec::new();
    for (file, class, action) in CASES {
        let path = data_dir().join(file);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
        let pods = parse_pods(&text, file).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(pods.len(), 1, "{file}");
        let info = pod_from_k8s(&pods[0]).unwrap_or_else(|e| panic!("{file}: {e}"));
        let now = latest_time(&info).unwrap_or(Time::ZERO);
        let decision = engine.decide(&info, now);
        if decision.verdict.class != class || decision.action != action {
            failures.push(format!(
                "{file}: got {} / {} ({:?}), want {} / {}",
                decision.verdict.class.as_str(),
                decision.action.as_str(),
                decision.verdict.evidence,
                class.as_str(),
                action.as_str()
            ));
        }
        assert!(!decision.verdict.evidence.is_empty(), "{file}: no evidence");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_fixture_names_its_source() {
    let mut count = 0;
    for entry in std::fs::read_dir(data_dir()).expect("data dir") {
        let path = entry.expect("entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        if name.ends_with(".source") {
            continue;
        }
        count += 1;
        let text = std::fs::read_to_string(&path).expect("readable");
        let named_inline = text.lines().next().is_some_and(|l| l.starts_with("# Source: http"));
        let sidecar =
            std::fs::read_to_string(path.with_file_name(format!("{name}.source"))).unwrap_or_default();
        assert!(
            named_inline || sidecar.starts_with("Source: http"),
            "{name}: no source URL (first line `# Source: <url>` or a {name}.source file)"
        );
        assert!(CASES.iter().any(|(f, _, _)| *f == name), "{name} has no expected class in CASES");
    }
    assert_eq!(count, CASES.len());
}

#[test]
fn gang_members_are_recognised_in_real_labels() {
    let text =
        std::fs::read_to_string(data_dir().join("volcano-container-status-unknown.yaml")).expect("fixture");
    let pods = parse_pods(&text, "volcano").expect("parses");
    let info = pod_from_k8s(&pods[0]).expect("converts");
    let gang = devheal_core::gang_of(&info, &[]).expect("a Volcano job is a gang");
    assert_eq!((gang.kind.as_str(), gang.name.as_str()), ("volcano", "9255574-22337438-gpu"));
}
