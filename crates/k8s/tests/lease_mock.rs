//! The Lease elector against a scripted API server, only for what the real server cannot be
//! made to do on demand: a holder whose renewTime is far off by our clock (skew), a 500, and
//! the futures' `Send` bound. Creating, renewing, taking over, losing a create or an update race
//! and releasing are tested on the real control plane: crates/cli/tests/e2e/actuator.rs.

mod mock_api;

use std::time::Duration;

use devheal_k8s::lease::{LeaseElector, LeaseError};
use mock_api::*;
use serde_json::{Value, json};

const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/devheal/leases/devheal-controller";
const LEASE_WRITE: &str = "/apis/coordination.k8s.io/v1/namespaces/devheal/leases/devheal-controller?fieldManager=devheal-controller";

fn elector(client: kube::Client, clock: &TestClock) -> LeaseElector {
    LeaseElector::new(client, "devheal", "devheal-controller", "controller-a", Duration::from_secs(15))
        .with_clock(clock.clock())
}

fn lease(rv: &str, holder: Option<&str>, renew: &str, transitions: i64) -> Value {
    let mut l = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "devheal-controller", "namespace": "devheal", "resourceVersion": rv},
        "spec": {
            "leaseDurationSeconds": 15,
            "acquireTime": "2026-09-21T14:00:00.000000Z",
            "renewTime": renew,
            "leaseTransitions": transitions,
        },
    });
    if let Some(h) = holder {
        l["spec"]["holderIdentity"] = json!(h);
    }
    l
}

/// The Lease after `controller-a` took it over at `at`.
fn taken(rv: &str, at: &str, transitions: i64) -> Value {
    let mut l = lease(rv, Some("controller-a"), at, transitions);
    l["spec"]["acquireTime"] = json!(at);
    l
}

/// T0 + 31 s.
const MICROS_31: &str = "2026-09-21T14:13:51.000000Z";

#[tokio::test]
async fn another_holders_lease_is_taken_over_only_after_it_stays_unrenewed_for_its_duration_on_our_clock() {
    let clock = TestClock::at(T0);
    // The holder's renewTime is far in the past by our clock (skew): that alone does not expire it.
    let held = lease("7", Some("controller-b"), "2026-09-21T13:00:00.000000Z", 2);
    let renewed_by_b = lease("8", Some("controller-b"), "2026-09-21T13:00:10.000000Z", 2);
    let script = vec![
        expect("GET", LEASE, None, ok(held.clone())),
        // 10 s later: unchanged, but not yet for 15 s.
        expect("GET", LEASE, None, ok(held)),
        // b renewed: the 15 s start again from when we saw it.
        expect("GET", LEASE, None, ok(renewed_by_b.clone())),
        expect("GET", LEASE, None, ok(renewed_by_b)),
        expect("PUT", LEASE_WRITE, Some(taken("8", MICROS_31, 3)), ok(taken("9", MICROS_31, 3))),
    ];
    let c = clock.clone();
    let outs = run(script, |client| async move {
        let e = elector(client, &c);
        let mut outs = vec![e.try_acquire_or_renew().await.ok()];
        c.advance_secs(10);
        outs.push(e.try_acquire_or_renew().await.ok());
        c.advance_secs(6);
        outs.push(e.try_acquire_or_renew().await.ok());
        c.advance_secs(15);
        outs.push(e.try_acquire_or_renew().await.ok());
        outs
    })
    .await;
    assert_eq!(outs, vec![Some(false), Some(false), Some(false), Some(true)]);
}

#[tokio::test]
async fn api_failures_are_errors_not_lost_elections() {
    let clock = TestClock::at(T0);
    let script = vec![
        expect("GET", LEASE, None, status(500, "InternalError", "etcd down")),
        expect(
            "GET",
            LEASE,
            None,
            status(403, "Forbidden", "leases.coordination.k8s.io \"devheal-controller\" is forbidden"),
        ),
    ];
    let outs = run(script, |client| async move {
        let e = elector(client, &clock);
        (e.try_acquire_or_renew().await, e.try_acquire_or_renew().await)
    })
    .await;
    match outs {
        (Err(LeaseError::Api { message: a, .. }), Err(LeaseError::Api { message: b, .. })) => {
            assert_eq!(a, "HTTP 500 InternalError: etcd down");
            assert_eq!(
                b,
                "HTTP 403 Forbidden: leases.coordination.k8s.io \"devheal-controller\" is forbidden"
            );
        }
        other => panic!("expected two API errors, got {other:?}"),
    }
}

/// The controller runs the elector on its own task: its futures must be `Send`.
#[tokio::test]
async fn the_electors_futures_can_run_on_spawned_tasks() {
    let clock = TestClock::at(T0);
    let script = vec![expect("GET", LEASE, None, ok(lease("3", Some("controller-b"), T0_MICROS, 0)))];
    let out = run(script, |client| async move {
        let e = std::sync::Arc::new(elector(client, &clock));
        let task = tokio::spawn({
            let e = e.clone();
            async move { e.try_acquire_or_renew().await.ok() }
        });
        let held = task.await.expect("task");
        tokio::spawn(async move { e.release().await }).await.expect("task");
        held
    })
    .await;
    assert_eq!(out, Some(false));
}
