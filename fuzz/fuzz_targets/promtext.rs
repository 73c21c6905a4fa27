//! Fuzz target: arbitrary bytes through the Prometheus / OpenMetrics text parser, then
//! `step_reading` for every metric name the input holds (sample names, `# TYPE` names, and the
//! input's first token). None of them may panic.
#![no_main]

use devheal_detect::promtext::{parse, step_reading};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(expo) = parse(&text) else {
        return;
    };
    let first = text.split_whitespace().next().unwrap_or("");
    let _ = step_reading(&expo, first);
    for sample in &expo.samples {
        let _ = step_reading(&expo, &sample.name);
    }
    for name in expo.types.keys() {
        let _ = step_reading(&expo, name);
    }
});
