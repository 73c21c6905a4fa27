//! Fuzz target: arbitrary text through the simulator's trace reader (`devheal sim --trace`), as
//! CSV and as JSON lines, onto the default scenario. It may refuse the text (an error naming the
//! line and field) but never panic, and what it accepts is a time-ordered trace of the
//! scenario's classes and nodes.
#![no_main]

use devheal_sim::Scenario;
use devheal_sim::replay::{ReplayOptions, TraceFormat, build, parse};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn scenario() -> &'static Scenario {
    static SCENARIO: OnceLock<Scenario> = OnceLock::new();
    SCENARIO.get_or_init(|| Scenario::bundled("llama3-16k").expect("bundled scenario"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let scenario = scenario();
    for format in [TraceFormat::Csv, TraceFormat::JsonLines] {
        let Ok(records) = parse(text, "fuzz", format) else { continue };
        for unknown_as in [None, Some("nccl_timeout_unknown".to_string())] {
            if let Ok((trace, summary)) = build(&records, "fuzz", format, scenario, &ReplayOptions { unknown_as }) {
                assert!(trace.events.windows(2).all(|w| w[0].at <= w[1].at));
                assert_eq!(trace.events.len() as u64, summary.replayed);
                assert!(summary.replayed <= summary.records);
            }
        }
    }
});
