//! Nothing the agent publishes can be refused by the CRD's schema.
//!
//! - Property: whatever `POST /v1/progress` accepts (any names, step numbers up to `u64::MAX`,
//!   step times from a microsecond to years, pauses up to the endpoint's day) ends up, through
//!   the progress book and the agent's own bounds, in a NodeDeviceHealth status that validates
//!   against the schema devheal ships (`deploy/crds`), with nothing dropped.
//! - What no bound fixes (an id longer than the schema allows, a PCI address of another shape)
//!   is dropped as the smallest part that holds it, named, and the rest is kept.

use devheal_agent::http::parse_progress;
use devheal_agent::progress::{ProgressBook, ProgressConfig};
use devheal_agent::snapshot::{keep_within_schema, within_schema};
use devheal_core::{Duration, Time};
use devheal_k8s::crd::NodeDeviceHealthStatus;
use devheal_k8s::schema::{node_device_health_status_schema, violations};
use proptest::prelude::*;
use serde_json::json;

fn step() -> impl Strategy<Value = serde_json::Value> {
    (1e-6f64..1e8, proptest::option::of(any::<u64>()))
        .prop_map(|(seconds, step)| json!({"seconds": seconds, "step": step}))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn anything_the_progress_endpoint_accepts_is_published_within_the_crd_schema(
        // Names of every length around the limits: ASCII (one byte a character) and any
        // printable characters (up to four bytes each).
        namespace in prop_oneof!["[a-z0-9._-]{1,80}", "\\PC{1,70}"],
        pod in prop_oneof!["[a-z0-9._-]{1,270}", "\\PC{1,260}"],
        first in proptest::collection::vec(step(), 0..40),
        second in proptest::collection::vec(step(), 0..40),
        pause in proptest::option::of(0.0f64..86_400.0),
        silence in 0i64..100_000,
    ) {
        let body = json!({"namespace": namespace, "pod": pod, "steps": first, "pauseSeconds": pause});
        let Ok(post) = parse_progress(body.to_string().as_bytes()) else { return Ok(()) };
        let mut book = ProgressBook::new(ProgressConfig::default()).expect("default settings");
        let now = Time::from_secs(1_800_000_000);
        let pause_until = post.pause_seconds.map(|s| now + Duration::from_nanos((s * 1e9) as i64));
        let _ = book.report(&post.pod, &post.steps, pause_until, now);
        let again = json!({"namespace": namespace, "pod": pod, "steps": second});
        if let Ok(next) = parse_progress(again.to_string().as_bytes()) {
            let _ = book.report(&next.pod, &next.steps, None, now + Duration::from_secs(30));
        }
        book.tick(now + Duration::from_secs(30 + silence));
        let mut status = NodeDeviceHealthStatus {
            boot_id: Some("boot".into()),
            workloads: book.workloads(),
            ..NodeDeviceHealthStatus::default()
        };
        within_schema(&mut status);
        let value = serde_json::to_value(&status).expect("json");
        let found = violations(&node_device_health_status_schema(), &value, "status");
        prop_assert!(found.is_empty(), "{found:?} in {value}");
    }
}

#[test]
fn what_no_bound_fixes_is_dropped_by_the_smallest_part_and_named() {
    let mut status: NodeDeviceHealthStatus = serde_json::from_value(json!({
        "devices": [
            {"id": "GPU-ok", "resource": "nvidia.com/gpu", "health": "Healthy"},
            {"id": "x".repeat(400), "resource": "nvidia.com/gpu", "health": "Healthy"},
            {"id": "GPU-pci", "resource": "nvidia.com/gpu", "health": "Healthy", "pciAddress": "not-a-pci-address"},
        ],
    }))
    .expect("a status");
    let removed = keep_within_schema(&mut status);
    let ids: Vec<&str> = status.devices.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["GPU-ok"]);
    let paths: Vec<&str> = removed.iter().map(|v| v.path.as_str()).collect();
    assert_eq!(paths, ["status.devices[2].pciAddress", "status.devices[1].id"], "{removed:?}");
    assert!(keep_within_schema(&mut status).is_empty(), "valid now");
}
