//! Property tests: any byte input is handled without a panic by the line parser, the classifier,
//! the kmsg record parser, the block scanner and the correlator.

use devheal_core::Time;
use devheal_detect::{Classifier, Correlator, LogScanner, parse_kmsg_record, parse_line, parse_text};
use proptest::prelude::*;

/// Pieces of real device-fault messages, so that random inputs reach deep into the parsers.
const FRAGMENTS: &[&str] = &[
    "NVRM: Xid",
    " (",
    "PCI:",
    "0000:3b:00",
    "0000:3b:00.0",
    "ffff:ff:1f.7",
    ")",
    "):",
    ": ",
    "79",
    "154",
    "45",
    "4294967296",
    ", ",
    "pid=",
    "'<unknown>'",
    "name=",
    "<unknown>",
    "SXid",
    "Fatal",
    "Non-fatal",
    "AER:",
    "PCIe Bus Error",
    "severity=",
    "Uncorrected (Fatal)",
    "Corrected",
    "error received: ",
    "error message received from ",
    "id=",
    "00e5",
    "zz",
    "amdgpu",
    "ring ",
    " timeout",
    "GPU reset",
    " begin",
    " failed",
    " succeeded",
    "correctable hardware errors detected in ",
    " block",
    "page fault (src_id",
    "mce:",
    "[Hardware Error]",
    "Machine Check: ",
    "Machine check: ",
    "Bank ",
    "bea0000000000108",
    "_STATUS[",
    "|CE|",
    "|PCC|",
    "]",
    "event severity: ",
    "fatal",
    "RmInitAdapter failed",
    "rm_init_adapter",
    "fallen off the bus",
    "recovery action changed from ",
    " to ",
    "(GPU Reset Required)",
    "[",
    "12.5",
    "+0.1",
    "T12",
    "Nov 18 10:11:12 ",
    "host ",
    "kernel: ",
    "2025-11-18T10:11:12,5+01:00 ",
    "kern  :err   : ",
    "-- Boot ",
    " --",
    "4,1,2,-;",
    "<4>",
    "\u{e9}",
    "\u{1f600}",
    "\n",
    " ",
    "\t",
    "=",
    ":",
    ".",
    "(",
    "0x",
];

fn fragment_line() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(FRAGMENTS), 0..40).prop_map(|parts| parts.concat())
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let classifier = Classifier::default();
        if let Ok(line) = parse_line(&bytes) {
            let _ = classifier.classify(line.message);
        }
        let _ = parse_kmsg_record(&bytes);
        let mut scanner = LogScanner::new(&classifier).with_max_line_bytes(64);
        scanner.scan(bytes.as_slice(), |_| {}).expect("reading a slice cannot fail");
        let stats = scanner.stats();
        prop_assert_eq!(stats.bytes, bytes.len() as u64);
        prop_assert!(stats.faults <= stats.candidates && stats.candidates <= stats.lines);
    }

    #[test]
    fn fault_shaped_text_never_panics(text in fragment_line(), at in any::<i64>()) {
        let classifier = Classifier::default();
        let mut correlator = Correlator::default();
        let line = parse_text(&text);
        if let Some(fault) = classifier.classify(line.message) {
            prop_assert!(!fault.summary.is_empty());
            if let Some(device) = &fault.device {
                prop_assert_eq!(device.matches(':').count(), 2, "{}", device);
            }
            let first = correlator.observe("n", Some("b"), Time::from_nanos(at), &fault);
            let again = correlator.observe("n", Some("b"), Time::from_nanos(at), &fault);
            prop_assert!(first.is_new);
            prop_assert_eq!(again.incident.id, first.incident.id);
        }
        let _ = parse_kmsg_record(text.as_bytes());
    }
}
