//! Fuzz target: arbitrary bytes through the kernel-log line parser, the classifier, the kmsg
//! record parser and the block scanner. None of them may panic.
#![no_main]

use std::sync::LazyLock;

use devheal_detect::{Classifier, LogScanner, parse_kmsg_record, parse_line};
use libfuzzer_sys::fuzz_target;

static CLASSIFIER: LazyLock<Classifier> = LazyLock::new(Classifier::default);

fuzz_target!(|data: &[u8]| {
    if let Ok(line) = parse_line(data) {
        let _ = CLASSIFIER.classify(line.message);
    }
    let _ = parse_kmsg_record(data);
    let mut scanner = LogScanner::new(&CLASSIFIER).with_max_line_bytes(256);
    let _ = scanner.scan(data, |_| {});
});
