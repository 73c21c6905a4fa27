//! The Lease elector against a scripted API server: create, renew, take over, lose, release.

mod mock_api;

use std::time::Duration;

use devheal_k8s::lease::{LeaseElector, LeaseError};
use mock_api::*;
use serde_json::{Value, json};

const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/devheal/leases/devheal-controller";
const LEASE_WRITE: &str = "/apis/coordination.k8s.io/v1/namespaces/devheal/leases/devheal-controller?fieldManager=devheal-controller";
const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/devheal/leases?fieldManager=devheal-controller";

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
async fn an_absent_lease_is_created_and_then_renewed() {
    let clock = TestClock::at(T0);
    let created_lease = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "devheal-controller", "namespace": "devheal"},
        "spec": {"holderIdentity": "controller-a", "leaseDurationSeconds": 15, "acquireTime": T0_MICROS,
                 "renewTime": T0_MICROS, "leaseTransitions": 0},
    });
    let mut stored = created_lease.clone();
    stored["metadata"]["resourceVersion"] = json!("1");
    let mut renewed = stored.clone();
    renewed["spec"]["renewTime"] = json!("2026-09-21T14:13:25.000000Z");
    let script = vec![
        expect(
            "GET",
            LEASE,
            None,
            status(404, "NotFound", "leases.coordination.k8s.io \"devheal-controller\" not found"),
        ),
        expect("POST", LEASES, Some(created_lease), created(stored.clone())),
        expect("GET", LEASE, None, ok(stored)),
        expect("PUT", LEASE_WRITE, Some(renewed.clone()), ok(renewed)),
    ];
    let c = clock.clone();
    let outs = run(script, |client| async move {
        let e = elector(client, &c);
        let first = e.try_acquire_or_renew().await.ok();
        c.advance_secs(5);
        (first, e.try_acquire_or_renew().await.ok())
    })
    .await;
    assert_eq!(outs, (Some(true), Some(true)));
}

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
async fn taking_over_at_the_same_time_as_another_replica_loses_on_conflict() {
    let clock = TestClock::at(T0);
    let conflict = "Operation cannot be fulfilled on leases.coordination.k8s.io \"devheal-controller\": the object has \
                    been modified; please apply your changes to the latest version and try again";
    let script = vec![
        // An empty holder is taken over at once, but another replica wrote first.
        expect("GET", LEASE, None, ok(lease("4", None, "2026-09-21T13:00:00.000000Z", 5))),
        expect("PUT", LEASE_WRITE, Some(taken("4", T0_MICROS, 6)), status(409, "Conflict", conflict)),
        // A create race is lost the same way.
        expect("GET", LEASE, None, status(404, "NotFound", "not found")),
        expect(
            "POST",
            LEASES,
            Some(json!({
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": "devheal-controller", "namespace": "devheal"},
                "spec": {"holderIdentity": "controller-a", "leaseDurationSeconds": 15, "acquireTime": T0_MICROS,
                         "renewTime": T0_MICROS, "leaseTransitions": 0},
            })),
            status(409, "AlreadyExists", "leases.coordination.k8s.io \"devheal-controller\" already exists"),
        ),
    ];
    let c = clock.clone();
    let outs = run(script, |client| async move {
        let e = elector(client, &c);
        (e.try_acquire_or_renew().await.ok(), e.try_acquire_or_renew().await.ok())
    })
    .await;
    assert_eq!(outs, (Some(false), Some(false)));
}

#[tokio::test]
async fn release_clears_the_holder_only_when_we_hold_the_lease() {
    let clock = TestClock::at(T0);
    let ours = taken("20", "2026-09-21T14:13:10.000000Z", 1);
    let mut renewed = ours.clone();
    renewed["spec"]["renewTime"] = json!(T0_MICROS);
    let mut stored = renewed.clone();
    stored["metadata"]["resourceVersion"] = json!("21");
    let mut released = stored.clone();
    released["spec"]["holderIdentity"] = Value::Null;
    released["spec"]["leaseDurationSeconds"] = json!(1);
    released["spec"]["renewTime"] = json!("2026-09-21T14:13:21.000000Z");
    let script = vec![
        expect("GET", LEASE, None, ok(ours)),
        expect("PUT", LEASE_WRITE, Some(renewed), ok(stored)),
        expect("PUT", LEASE_WRITE, Some(released), ok(json!({"kind": "Lease"}))),
    ];
    let c = clock.clone();
    let out = run(script, |client| async move {
        let e = elector(client, &c);
        let held = e.try_acquire_or_renew().await.ok();
        c.advance_secs(1);
        e.release().await;
        // Released: a second release sends nothing.
        e.release().await;
        held
    })
    .await;
    assert_eq!(out, Some(true));
}

#[tokio::test]
async fn a_replica_that_never_held_the_lease_releases_nothing() {
    let clock = TestClock::at(T0);
    run(Vec::new(), |client| async move { elector(client, &clock).release().await }).await;
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
