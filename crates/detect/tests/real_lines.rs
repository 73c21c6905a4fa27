//! Accuracy on real kernel log lines from public bug reports and docs
//! (`tests/data/real-lines.txt`, each group with its source URL).

use std::collections::{BTreeMap, BTreeSet};

use devheal_detect::{Classifier, parse_line};

const REAL_LINES: &str = include_str!("data/real-lines.txt");

/// One `# expect:` line and the log line after it.
struct Case<'a> {
    line_number: usize,
    source: &'a str,
    /// The fault family the line belongs to (`# family:` in its group, or from its kind).
    family: String,
    expected: Option<Vec<&'a str>>,
    text: &'a str,
}

fn cases() -> Vec<Case<'static>> {
    let mut cases = Vec::new();
    let mut source = "";
    let mut group_family: Option<&str> = None;
    let mut pending: Option<Option<Vec<&str>>> = None;
    for (index, line) in REAL_LINES.lines().enumerate() {
        if let Some(url) = line.strip_prefix("# source: ") {
            source = url;
            group_family = None;
        } else if let Some(family) = line.strip_prefix("# family: ") {
            group_family = Some(family.trim());
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
            let family = match (group_family, &expected) {
                (Some(family), _) => family.to_string(),
                (None, Some(fields)) => family_of(fields).to_string(),
                (None, None) => String::new(),
            };
            cases.push(Case { line_number: index + 1, source, family, expected, text: line });
        }
    }
    // A non-fault line without a `# family:` belongs to the family of its group's faults.
    let mut by_source: BTreeMap<&str, String> = BTreeMap::new();
    for case in cases.iter().filter(|c| !c.family.is_empty()) {
        by_source.entry(case.source).or_insert_with(|| case.family.clone());
    }
    for case in cases.iter_mut().filter(|c| c.family.is_empty()) {
        case.family = by_source.get(case.source).cloned().unwrap_or_else(|| "other".into());
    }
    cases
}

/// The family of an expected fault: NVLink 5 and GSP Xids are their own families.
fn family_of(fields: &[&str]) -> &'static str {
    match (fields[0], fields[1].parse::<u32>().ok()) {
        ("nvidia_xid", Some(144..=150)) => "nvlink5",
        ("nvidia_xid", Some(119 | 120)) | ("nvidia_gsp", _) => "gsp",
        ("nvidia_xid" | "nvidia_fallen_off_bus" | "nvidia_init_failure", _) => "nvidia_xid",
        ("nvidia_sxid", _) => "nvswitch",
        ("pcie_aer", _) => "pcie_aer",
        ("amdgpu", _) => "amd",
        ("mce" | "edac", _) => "edac_mce",
        ("habanalabs", _) => "gaudi",
        ("intel_gpu", _) => "intel_gpu",
        ("nic_link", _) => "nic",
        _ => "other",
    }
}

fn null(value: Option<String>) -> String {
    value.unwrap_or_else(|| "-".to_string())
}

/// What the classifier says about a case, in the `# expect:` fields.
fn classify_case(classifier: &Classifier, case: &Case<'_>) -> (Option<Vec<String>>, Option<Vec<String>>) {
    let parsed = parse_line(case.text.as_bytes()).expect("fixture lines are text");
    let actual: Option<Vec<String>> = classifier.classify(parsed.message).map(|f| {
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
    (expected, actual)
}

#[test]
fn every_real_line_is_classified_as_expected() {
    let classifier = Classifier::default();
    let mut failures = Vec::new();
    for case in cases() {
        let (expected, actual) = classify_case(&classifier, &case);
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

/// Per-family accuracy (every field as expected), missed faults and false faults (a fault
/// reported on a line that is none), printed for docs/benchmarks.md:
/// `cargo test -p devheal-detect --test real_lines -- --nocapture per_family`.
#[test]
fn per_family_accuracy_and_false_faults() {
    #[derive(Default)]
    struct Tally {
        lines: usize,
        faults: usize,
        correct: usize,
        missed: usize,
        false_faults: usize,
    }
    let classifier = Classifier::default();
    let cases = cases();
    let mut families: BTreeMap<String, Tally> = BTreeMap::new();
    for case in &cases {
        let (expected, actual) = classify_case(&classifier, case);
        let tally = families.entry(case.family.clone()).or_default();
        tally.lines += 1;
        tally.faults += usize::from(expected.is_some());
        tally.correct += usize::from(expected == actual);
        tally.missed += usize::from(expected.is_some() && actual.is_none());
        tally.false_faults += usize::from(expected.is_none() && actual.is_some());
    }
    println!("| family | lines | fault lines | correct | accuracy | missed | false faults |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (family, t) in &families {
        println!(
            "| {family} | {} | {} | {} | {:.1} % | {} | {} |",
            t.lines,
            t.faults,
            t.correct,
            100.0 * t.correct as f64 / t.lines as f64,
            t.missed,
            t.false_faults
        );
    }
    assert!(cases.len() >= 150, "{} real lines; the issue asks for at least 150", cases.len());
    // Families with at least 20 public lines found; NVLink 5, NVSwitch and Gaudi have fewer
    // (docs/benchmarks.md says how many were found).
    for family in ["gsp", "pcie_aer", "edac_mce", "amd", "intel_gpu", "nic"] {
        let lines = families.get(family).map_or(0, |t| t.lines);
        assert!(lines >= 20, "family {family}: {lines} real lines, fewer than 20");
    }
    for (family, t) in &families {
        assert_eq!(t.false_faults, 0, "family {family}: {} false faults", t.false_faults);
        assert_eq!(t.correct, t.lines, "family {family}: {} of {} lines as expected", t.correct, t.lines);
    }
}
