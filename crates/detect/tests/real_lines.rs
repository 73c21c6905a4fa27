//! Accuracy on real kernel log lines from public bug reports and docs
//! (`tests/data/real-lines.txt`, each group with its source URL).

use std::collections::{BTreeMap, BTreeSet};

use devheal_detect::{Classifier, parse_line};

const REAL_LINES: &str = include_str!("data/real-lines.txt");

/// One `# expect:` line and the log line after it.
struct Case<'a> {
    line_number: usize,
    source: &'a str,
    expected: Option<Vec<&'a str>>,
    text: &'a str,
}

fn cases() -> Vec<Case<'static>> {
    let mut cases = Vec::new();
    let mut source = "";
    let mut pending: Option<Option<Vec<&str>>> = None;
    for (index, line) in REAL_LINES.lines().enumerate() {
        if let Some(url) = line.strip_prefix("# source: ") {
            source = url;
        } else if let Some(expect) = line.strip_prefix("# expect: ") {
            assert!(pending.is_none(), "line {}: two expectations in a row", index + 1);
            let fields: Vec<&str> = expect.split_whitespace().collect();
            pending = Some(if fields == ["none"] { None } else { Some(fields) });
        } else if line.starts_with('#') || line.is_empty() {
            continue;
        } else {
            let expected =
                pending.take().unwrap_or_else(|| panic!("line {}: no `# expect:` before it", index + 1));
            assert!(!source.is_empty(), "line {}: no `# source:` before it", index + 1);
            cases.push(Case { line_number: index + 1, source, expected, text: line });
        }
    }
    cases
}

fn null(value: Option<String>) -> String {
    value.unwrap_or_else(|| "-".to_string())
}

#[test]
fn every_real_line_is_classified_as_expected() {
    let classifier = Classifier::default();
    let mut failures = Vec::new();
    for case in cases() {
        let parsed = parse_line(case.text.as_bytes()).expect("fixture lines are text");
        let fault = classifier.classify(parsed.message);
        let actual: Option<Vec<String>> = fault.map(|f| {
            vec![
                f.kind.as_str().to_string(),
                null(f.code.map(|c| c.to_string())),
                null(f.device),
                f.attribution.as_str().to_string(),
                f.health.as_str().to_ascii_lowercase(),
                f.action.as_str().to_string(),
            ]
        });
        let expected: Option<Vec<String>> =
            case.expected.as_ref().map(|fields| fields.iter().map(|f| f.to_string()).collect());
        if actual != expected {
            failures.push(format!(
                "line {} ({}):\n  {}\n  expected {:?}\n  got      {:?}",
                case.line_number, case.source, case.text, expected, actual
            ));
        }
    }
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn the_fixture_covers_what_the_issue_asks() {
    let cases = cases();
    let faults: Vec<&Case> = cases.iter().filter(|c| c.expected.is_some()).collect();
    let non_faults = cases.len() - faults.len();
    assert!(faults.len() >= 30, "{} fault lines", faults.len());
    assert!(non_faults >= 10, "{non_faults} non-fault lines");

    let mut kinds = BTreeSet::new();
    let mut xid_codes = BTreeSet::new();
    let mut sources = BTreeMap::new();
    for case in &faults {
        let fields = case.expected.as_ref().expect("filtered");
        kinds.insert(fields[0]);
        if fields[0] == "nvidia_xid" {
            xid_codes.insert(fields[1]);
        }
        *sources.entry(case.source).or_insert(0) += 1;
    }
    for kind in [
        "nvidia_xid",
        "nvidia_sxid",
        "nvidia_fallen_off_bus",
        "nvidia_init_failure",
        "pcie_aer",
        "amdgpu",
        "mce",
    ] {
        assert!(kinds.contains(kind), "no real line of kind {kind}");
    }
    assert!(xid_codes.len() >= 15, "only {} distinct Xid codes: {xid_codes:?}", xid_codes.len());
    assert!(sources.len() >= 10, "only {} sources", sources.len());
    for source in sources.keys() {
        assert!(source.starts_with("https://"), "{source}");
    }
    // Non-fault lines include the driver's load banner and the persistence daemon.
    assert!(cases.iter().any(|c| c.expected.is_none() && c.text.contains("NVRM: loading NVIDIA")));
    assert!(cases.iter().any(|c| c.expected.is_none() && c.text.contains("nvidia-persistenced")));
}
