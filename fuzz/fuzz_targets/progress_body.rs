//! Fuzz target: arbitrary bytes as a `POST /v1/progress` body. Parsing must not panic; a body
//! it accepts goes through the progress book (two reports, then an hour of silence) into a
//! NodeDeviceHealth status that must validate against the CRD's schema with nothing dropped.
#![no_main]

use devheal_agent::http::parse_progress;
use devheal_agent::progress::{ProgressBook, ProgressConfig};
use devheal_agent::snapshot::{keep_within_schema, within_schema};
use devheal_core::{Duration, Time};
use devheal_k8s::crd::NodeDeviceHealthStatus;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(post) = parse_progress(data) else {
        return;
    };
    let Ok(mut book) = ProgressBook::new(ProgressConfig::default()) else {
        return;
    };
    let now = Time::from_secs(1_800_000_000);
    let pause = post.pause_seconds.map(|s| now + Duration::from_nanos((s * 1e9) as i64));
    let _ = book.report(&post.pod, &post.steps, pause, now);
    let _ = book.report(&post.pod, &post.steps, None, now + Duration::from_secs(30));
    book.tick(now + Duration::from_secs(3_600));
    let mut status = NodeDeviceHealthStatus { workloads: book.workloads(), ..NodeDeviceHealthStatus::default() };
    within_schema(&mut status);
    let dropped = keep_within_schema(&mut status);
    assert!(dropped.is_empty(), "an accepted body broke the CRD schema: {dropped:?}");
});
