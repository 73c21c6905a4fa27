//! Tests of trace replay: both formats, the cause table, errors, the bundled trace.

use std::collections::BTreeMap;

use devheal_core::Time;

use super::*;
use crate::scenario::secs;
use crate::trace::{FaultTarget, TraceEvent, TraceKind};

fn llama3() -> Scenario {
    Scenario::bundled("llama3-16k").expect("bundled")
}

fn read(text: &str, file: &str) -> Result<(FaultTrace, ReplaySummary), TraceError> {
    read_trace(text, file, &llama3(), &ReplayOptions::default())
}

fn class_of(scenario: &Scenario, e: &TraceEvent) -> String {
    match e.kind {
        TraceKind::Fault { class, .. } => scenario.faults[class as usize].name.clone(),
        _ => panic!("only faults are replayed"),
    }
}

#[test]
fn csv_and_json_lines_give_the_same_trace() {
    let csv = "# a comment\n\
               start,end,node,device,cause,note\n\
               \n\
               60,120,3,5,\"GPU has fallen off the bus (Xid 79)\",\"a note, with a comma\"\n\
               3600,,node-00007,,HBM3 double bit error,\n\
               7200,7300,12,,\"Parameter Plane Cable: Link Down\",\n";
    let jsonl = "{\"start\": 60, \"end\": 120, \"node\": 3, \"device\": 5, \"cause\": \"GPU has fallen off the bus (Xid 79)\"}\n\
                 # a comment\n\
                 {\"start\": \"3600\", \"node\": \"node-00007\", \"cause\": \"HBM3 double bit error\", \"note\": \"x\"}\n\
                 {\"start\": 7200, \"duration_s\": 100, \"node\": \"12\", \"cause\": \"Parameter Plane Cable: Link Down\"}\n";
    let (a, sa) = read(csv, "t.csv").expect("CSV parses");
    let (b, sb) = read(jsonl, "t.jsonl").expect("JSON lines parse");
    assert_eq!(sa.format, TraceFormat::Csv);
    assert_eq!(sb.format, TraceFormat::JsonLines);
    assert_eq!(a.events.len(), 3);
    // The same faults; only the pids (from line numbers) may differ.
    let strip = |t: &FaultTrace| -> Vec<(Time, u16, FaultTarget)> {
        t.events
            .iter()
            .map(|e| match e.kind {
                TraceKind::Fault { class, target, .. } => (e.at, class, target),
                _ => unreachable!(),
            })
            .collect()
    };
    assert_eq!(strip(&a), strip(&b));
    let s = llama3();
    assert_eq!(class_of(&s, &a.events[0]), "gpu_fell_off_bus");
    assert_eq!(
        a.events[0].kind,
        TraceKind::Fault {
            class: 0,
            target: FaultTarget::Device { node: 3, device: 5 },
            lemon_excess: false,
            pid: 1004,
            lines: crate::noise::LineDelivery::default(),
        }
    );
    assert_eq!(a.events[0].at, Time::ZERO + secs(60.0));
    assert_eq!(class_of(&s, &a.events[1]), "gpu_hbm");
    assert!(matches!(
        a.events[1].kind,
        TraceKind::Fault { target: FaultTarget::Device { node: 7, device: 0 }, .. }
    ));
    assert_eq!(class_of(&s, &a.events[2]), "network_switch_cable");
    assert!(matches!(a.events[2].kind, TraceKind::Fault { target: FaultTarget::Node { node: 12 }, .. }));
    assert_eq!(sa.records, 3);
    assert_eq!(sa.replayed, 3);
    assert!((sa.recorded_fault_hours - 160.0 / 3600.0).abs() < 1e-9, "{}", sa.recorded_fault_hours);
    assert_eq!(sa.recorded_fault_hours, sb.recorded_fault_hours);
    assert_eq!(a.lemons.len(), s.total_nodes() as usize);
    // Detected by content when the name says nothing.
    assert_eq!(TraceFormat::detect("faults.txt", jsonl), TraceFormat::JsonLines);
    assert_eq!(TraceFormat::detect("faults.txt", csv), TraceFormat::Csv);
    assert_eq!(TraceFormat::detect("x.NDJSON", csv), TraceFormat::JsonLines);
}

#[test]
fn rfc3339_times_count_from_the_earliest_start() {
    let csv = "start,end,node,class\n\
               2024-03-30T01:00:00Z,2024-03-30T02:00:00+00:00,1,gpu_hbm\n\
               2024-03-30T02:00:00+02:00,,2,gpu_sram\n\
               2024-03-30 00:30:00.5z,,3,gpu_gsp\n";
    let (t, _) = read(csv, "t.csv").expect("parses");
    let at: Vec<f64> = t.events.iter().map(|e| e.at.as_secs_f64()).collect();
    // 02:00+02:00 is 00:00Z, the earliest: the origin.
    assert_eq!(at, vec![0.0, 1800.5, 3600.0]);
    assert_eq!(rfc3339("1970-01-01T00:00:00Z"), Ok(0.0));
    assert_eq!(rfc3339("2024-03-30T00:00:00Z"), Ok(1_711_756_800.0));
    assert_eq!(rfc3339("2024-02-29T12:00:00-01:30"), Ok(1_709_208_000.0 + 5400.0));
    assert_eq!(rfc3339("1969-12-31T23:59:59Z"), Ok(-1.0));
    for bad in [
        "2023-02-29T00:00:00Z",
        "2024-13-01T00:00:00Z",
        "2024-01-01T24:00:00Z",
        "2024-01-01T00:00:00",
        "2024-01-01",
        "2024-01-01T00:00:00.Z",
        "2024-01-01T00:00:00+2:00",
    ] {
        assert!(rfc3339(bad).is_err(), "{bad}");
    }
}

/// Every bad record is an error naming the file, the line (counting comments and blank
/// lines) and the field.
#[test]
fn bad_records_name_the_file_line_and_field() {
    let header = "# comment\nstart,end,node,device,cause\n";
    let cases: &[(&str, usize, &str, &str)] = &[
        ("x,,1,,HBM\n", 3, "start", "neither seconds"),
        ("-5,,1,,HBM\n", 3, "start", "≥ 0"),
        (",,1,,HBM\n", 3, "start", "missing"),
        ("10,5,1,,HBM\n", 3, "end", "before the start"),
        ("10,20,,,HBM\n", 3, "node", "missing"),
        ("10,20,9999999,,HBM\n", 3, "node", "outside the scenario"),
        ("10,20,1,8,HBM\n", 3, "device", "GPU 8 on a node of 8 GPUs"),
        ("10,20,1,x,HBM\n", 3, "device", "not a GPU index"),
        ("10,20,1,,\n", 3, "cause", "missing"),
        ("1,2,1,,HBM\n10,2024-01-01T00:00:00Z,1,,HBM\n", 4, "end", "RFC 3339 time in a file"),
    ];
    for (body, line, field, words) in cases {
        let err = read(&format!("{header}{body}"), "bad.csv").unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(&err, TraceError::Field { line: l, field: f, .. } if l == line && f == field),
            "{body:?}: {text}"
        );
        assert!(text.starts_with(&format!("trace bad.csv, line {line}, field `{field}`")), "{text}");
        assert!(text.contains(words), "{body:?}: {text}");
    }
    // Line-level problems name the line.
    for (text, line, words) in [
        ("start,node,cause\n1,2\n", 2, "2 fields, the header has 3"),
        ("start,node,cause\n1,2,\"HBM\n", 2, "not closed"),
        ("start,node,cause\n1,2,HB\"M\n", 2, "quote inside"),
        ("{\"start\": 1, \"node\": 2, \"cause\": \"HBM\"}\n[1,2]\n", 2, "not a JSON object"),
        ("{\"start\": 1, \"node\": 2, \"cause\": \"HBM\"}\n{\"start\": 1,\n", 2, "not a JSON object"),
    ] {
        let err = read(text, "bad.trace").unwrap_err();
        assert!(matches!(&err, TraceError::Line { line: l, .. } if *l == line), "{text:?}: {err}");
        assert!(err.to_string().contains(words), "{err}");
    }
    for (text, line, field, words) in [
        ("start,node,cuase\n", 1, "cuase", "unknown column"),
        ("start,node,node,cause\n", 1, "node", "twice"),
        ("{\"start\": 1, \"nod\": 2, \"cause\": \"x\"}\n", 1, "nod", "unknown key"),
        ("{\"start\": [1], \"node\": 2, \"cause\": \"x\"}\n", 1, "start", "number or a string"),
        ("{\"start\": 1, \"node\": 2, \"cause\": 7}\n", 1, "cause", "must be a string"),
        ("{\"start\": 1, \"node\": 2.5, \"cause\": \"x\"}\n", 1, "node", "not a node index"),
        ("{\"start\": 1, \"node\": 2, \"class\": \"gpu_hbm\", \"cause\": \"x\"}\n", 1, "class", "not both"),
        (
            "{\"start\": 1, \"end\": 3, \"duration_s\": 2, \"node\": 2, \"cause\": \"x\"}\n",
            1,
            "duration_s",
            "not both",
        ),
        ("{\"start\": 1, \"node\": 2, \"class\": \"gpu_hmb\"}\n", 1, "class", "no fault class `gpu_hmb`"),
    ] {
        let err = read(text, "bad.trace").unwrap_err();
        assert!(
            matches!(&err, TraceError::Field { line: l, field: f, .. } if *l == line && f == field),
            "{text:?}: {err}"
        );
        assert!(err.to_string().contains(words), "{err}");
    }
    assert!(read("# only a comment\n", "empty.csv").unwrap_err().to_string().contains("no header"));
    assert!(read("start,node,cause\n", "empty.csv").unwrap_err().to_string().contains("no records"));
}

/// The documented table: each cause text and the llama3-16k class it maps to.
#[test]
fn causes_map_to_classes_by_the_documented_table() {
    let s = llama3();
    let cases = [
        ("GPU has fallen off the bus", "gpu_fell_off_bus"),
        ("Xid 79", "gpu_fell_off_bus"),
        ("NVRM: Xid (PCI:0000:3b:00): 79, pid=1", "gpu_fell_off_bus"),
        ("GPU: GPU Lost", "gpu_fell_off_bus"),
        ("Faulty GPU", "gpu_fell_off_bus"),
        ("GPU: GPU xid Error", "gpu_fell_off_bus"),
        ("xid 74 NVLink error", "gpu_nvlink"),
        ("NVSwitch SXid 20034", "gpu_nvlink"),
        ("GPU HBM3 Memory", "gpu_hbm"),
        ("GPU: GPU DBE(Double Bit ECC) > Threshold", "gpu_hbm"),
        ("Xid 48", "gpu_hbm"),
        ("GPU SRAM Memory", "gpu_sram"),
        ("Xid 95 uncontained", "gpu_sram"),
        ("GPU System Processor", "gpu_gsp"),
        ("Xid 119 GSP timeout", "gpu_gsp"),
        ("GPU Thermal Interface + Sensor", "gpu_thermal"),
        ("GPU: GPU Temperature High", "gpu_thermal"),
        ("Silent Data Corruption", "silent_data_corruption"),
        ("loss is NaN", "silent_data_corruption"),
        ("Xid 31 illegal memory access", "software_bug_cuda"),
        ("NCCL Watchdog Timeouts", "nccl_timeout_unknown"),
        ("NIC: NIC Lost", "nic"),
        ("mlx5 PCIe fatal", "nic"),
        ("Network Switch/Cable", "network_switch_cable"),
        ("Parameter Plane Cable: Link Down", "network_switch_cable"),
        ("Host Maintenance", "host_maintenance"),
        ("CPU", "host_cpu_memory"),
        ("System Memory", "host_cpu_memory"),
        ("Machine Check Exception", "host_cpu_memory"),
        ("SSD", "host_other"),
        ("Power Supply: Power Supply Failure detected", "host_other"),
        ("Fan: Speed Critical (Sensor)", "host_other"),
        ("Server Chassis", "host_other"),
        ("IO Expansion Board", "host_other"),
        ("Software Bug", "software_bug"),
        ("Dependency", "software_bug"),
        ("gpu_nvlink", "gpu_nvlink"),
    ];
    for (cause, class) in cases {
        let got = map_cause(cause, &s).map(|(i, _)| s.faults[i as usize].name.as_str());
        assert_eq!(got, Some(class), "{cause:?}");
    }
    // Words, not substrings: "technician" holds "nic", "fanatic" holds "fan".
    for cause in ["Unknown Error", "technician visit", "fanatic", "Stress Test Failure", ""] {
        assert_eq!(map_cause(cause, &s), None, "{cause:?}");
    }
    // Every rule names a class of the default scenario.
    for (_, class) in CAUSE_RULES {
        assert!(s.faults.iter().any(|f| f.name == *class), "{class}");
    }
    // A rule whose class the scenario lacks is skipped: the next rule that matches wins.
    let mut fewer = s.clone();
    fewer.faults.retain(|f| f.name != "gpu_hbm");
    let got = map_cause("GPU HBM3 Memory", &fewer).map(|(i, _)| fewer.faults[i as usize].name.clone());
    assert_eq!(got.as_deref(), Some("gpu_fell_off_bus"), "falls through to the generic GPU rule");
}

#[test]
fn unknown_causes_are_counted_and_replayed_only_when_asked() {
    let csv =
        "start,node,cause\n10,1,Unknown Error\n20,2,Unknown Error\n30,3,Stress Test Failure\n40,4,HBM\n";
    let (t, s) = read(csv, "u.csv").expect("parses");
    assert_eq!(t.events.len(), 1);
    assert_eq!((s.records, s.replayed), (4, 1));
    assert_eq!(
        s.unknown_causes,
        vec![("Stress Test Failure".to_string(), 1), ("Unknown Error".to_string(), 2)]
    );
    assert!(s.lines().contains("3 with an unknown cause (not replayed)"), "{}", s.lines());
    assert!(s.lines().contains("Unknown Error ×2"), "{}", s.lines());
    let options = ReplayOptions { unknown_as: Some("nccl_timeout_unknown".into()) };
    let (t, s) = read_trace(csv, "u.csv", &llama3(), &options).expect("parses");
    assert_eq!(t.events.len(), 4);
    assert_eq!(s.unknown_replayed_as.as_deref(), Some("nccl_timeout_unknown"));
    assert_eq!(s.unknown_causes.iter().map(|(_, n)| n).sum::<u64>(), 3, "still counted");
    // A workload-scoped class lands on the rank that starts on the node.
    assert!(matches!(
        t.events[0].kind,
        TraceKind::Fault { target: FaultTarget::GangMember { gang: 0, member: 1 }, .. }
    ));
    let options = ReplayOptions { unknown_as: Some("no_such_class".into()) };
    let err = read_trace(csv, "u.csv", &llama3(), &options).unwrap_err().to_string();
    assert!(err.contains("no_such_class"), "{err}");
}

#[test]
fn names_take_free_nodes_in_order_of_first_appearance() {
    let csv = "start,node,class\n1,b,gpu_hbm\n2,0,gpu_hbm\n3,a,gpu_hbm\n4,b,gpu_hbm\n5,node-00001,gpu_hbm\n";
    let (t, s) = read(csv, "n.csv").expect("parses");
    let nodes: Vec<u32> = t
        .events
        .iter()
        .map(|e| match e.kind {
            TraceKind::Fault { target: FaultTarget::Device { node, .. }, .. } => node,
            _ => unreachable!(),
        })
        .collect();
    // 0 and node-00001 are named explicitly, so b → 2, a → 3.
    assert_eq!(nodes, vec![2, 0, 3, 2, 1]);
    assert_eq!(s.nodes, 4);
    // Records after the scenario's end are counted, not replayed; so are software faults on
    // nodes no gang starts on (the spares and the inference pool).
    let csv = "start,node,class\n4665600,1,gpu_hbm\n10,2100,software_bug\n";
    let (t, s) = read(csv, "late.csv").expect("parses");
    assert!(t.events.is_empty());
    assert_eq!((s.after_end, s.workload_off_gang), (1, 1));
}

#[test]
fn the_bundled_trace_reads_on_the_default_scenario() {
    let text = bundled("infinitehbd-54d").expect("bundled");
    let (t, s) = read(text, "bundled:infinitehbd-54d.csv").expect("parses");
    assert_eq!(s.records, 151);
    assert_eq!(s.after_end, 0);
    let unknown: u64 = s.unknown_causes.iter().map(|(_, n)| n).sum();
    assert_eq!(s.replayed + unknown, s.records);
    assert_eq!(t.events.len() as u64, s.replayed);
    assert!(t.events.windows(2).all(|w| w[0].at <= w[1].at));
    let by: BTreeMap<&str, u64> = s.replayed_by_class.iter().map(|(c, n)| (c.as_str(), *n)).collect();
    assert_eq!(by["network_switch_cable"], 16);
    assert_eq!(by["host_other"], 18);
    assert_eq!(by["gpu_hbm"], 5);
    assert_eq!(by["nic"], 6);
}

proptest::proptest! {
    /// What the fuzz target (`fuzz/fuzz_targets/sim_trace.rs`) checks, on generated text in
    /// CI: the reader refuses or accepts, never panics, and accepts only ordered traces.
    #[test]
    fn the_reader_never_panics_on_arbitrary_text(
        pieces in proptest::collection::vec(
            proptest::sample::select(vec![
                "start,end,node,device,cause", "start,node,class", "\n", ",", "\"", "{", "}", ":",
                "\"start\"", "\"node\"", "\"cause\"", "1", "-1", "1e308", "NaN", "4294967296",
                "2024-02-29T23:59:60+23:59", "2024-01-01T00:00:00Z", "node-99999", "node-1", "gpu_hbm",
                "Xid 79", "Unknown", "# x", " ", "\u{e9}", "7", "8", "0.5",
            ]),
            0..40,
        ),
        noise in ".{0,40}",
    ) {
        let text = pieces.concat() + &noise;
        let scenario = llama3();
        for format in [TraceFormat::Csv, TraceFormat::JsonLines] {
            let Ok(records) = parse(&text, "prop", format) else { continue };
            for unknown_as in [None, Some("nccl_timeout_unknown".to_string())] {
                if let Ok((trace, summary)) =
                    build(&records, "prop", format, &scenario, &ReplayOptions { unknown_as })
                {
                    proptest::prop_assert!(trace.events.windows(2).all(|w| w[0].at <= w[1].at));
                    proptest::prop_assert_eq!(trace.events.len() as u64, summary.replayed);
                    proptest::prop_assert!(summary.replayed <= summary.records);
                }
            }
        }
    }
}
