//! Leader election on a `coordination.k8s.io/v1` Lease, so that only one controller replica
//! acts at a time (kube has no elector of its own).
//!
//! Each call of [`LeaseElector::try_acquire_or_renew`] reads the Lease and writes it back with
//! the `resourceVersion` it read: creates it when absent, renews it when ours, takes it over
//! when its holder is empty or it has expired (bumping `leaseTransitions`). Any write that
//! loses a race gets 409 Conflict (or AlreadyExists) and means someone else won: `Ok(false)`.
//!
//! **Expiry is measured on our own clock.** The holder's `renewTime` is written by the holder's
//! clock, which may be skewed from ours by any amount; so it is never compared with our time.
//! Instead the elector remembers when (by our clock) it first saw the current
//! `(holderIdentity, renewTime)` pair, and the lease is expired once that pair has not changed
//! for `leaseDurationSeconds` of our time. Any clock skew between replicas is tolerated; what
//! must hold is that clocks *advance* at about the same rate (a drift of a few percent of the
//! lease duration). The price is that a replica that has just started waits one full lease
//! duration before taking over a lease abandoned long ago. The holder renews well before the
//! duration (callers renew every third of it, as client-go does) and must stop acting as leader
//! when a renewal fails for longer than the duration.

use std::sync::Mutex;
use std::time::Duration as StdDuration;

use devheal_core::Time;
use http::Method;
use serde_json::{Value, json};

use crate::actuator::FIELD_MANAGER;
use crate::wire::{self, Body, CallError, Clock, call, path_segment};

/// Why a lease could not be read or written (losing the election is not an error).
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The API server refused or could not be reached.
    #[error("{doing} lease {lease}: {message}")]
    Api { doing: &'static str, lease: String, message: String },
    /// The Lease read is not a Lease this elector can write back.
    #[error("lease {lease} is malformed: {message}")]
    Malformed { lease: String, message: String },
}

/// The `(holderIdentity, renewTime)` pair last seen, and when (by our clock) it was first seen.
#[derive(Clone, Debug, PartialEq)]
struct Observed {
    holder: String,
    renew_time: Value,
    seen_at: Time,
}

/// A leader elector on one Lease. See the module docs for the protocol and its clock rules.
pub struct LeaseElector {
    client: kube::Client,
    namespace: String,
    name: String,
    identity: String,
    lease_duration: StdDuration,
    clock: Clock,
    observed: Mutex<Option<Observed>>,
    /// The Lease as we last wrote it while holding it (for `release`).
    held: Mutex<Option<Value>>,
}

impl LeaseElector {
    /// An elector for Lease `namespace/name`, competing as `identity` (the pod name), holding it
    /// for `lease_duration` after each renewal.
    pub fn new(
        client: kube::Client,
        namespace: impl Into<String>,
        name: impl Into<String>,
        identity: impl Into<String>,
        lease_duration: StdDuration,
    ) -> Self {
        LeaseElector {
            client,
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration,
            clock: wire::system_clock(),
            observed: Mutex::new(None),
            held: Mutex::new(None),
        }
    }

    /// Replaces the wall clock (tests step it).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The identity this elector competes as.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    fn lease(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    fn collection(&self) -> String {
        format!("/apis/coordination.k8s.io/v1/namespaces/{}/leases", path_segment(&self.namespace))
    }

    fn duration_secs(&self) -> i64 {
        i64::try_from(self.lease_duration.as_secs()).unwrap_or(i64::MAX).max(1)
    }

    fn api_error(&self, doing: &'static str, e: &CallError) -> LeaseError {
        LeaseError::Api { doing, lease: self.lease(), message: e.describe() }
    }

    fn set_held(&self, lease: Option<Value>) {
        if let Ok(mut held) = self.held.lock() {
            *held = lease;
        }
    }

    /// Whether the lease held by `holder`, last renewed at `renew_time`, has expired by our
    /// clock: unchanged for `duration_secs` since we first saw it so.
    fn expired(&self, holder: &str, renew_time: &Value, duration_secs: i64, now: Time) -> bool {
        let Ok(mut observed) = self.observed.lock() else { return false };
        let seen_at = match observed.as_ref() {
            Some(o) if o.holder == holder && &o.renew_time == renew_time => o.seen_at,
            _ => {
                *observed = Some(Observed {
                    holder: holder.to_string(),
                    renew_time: renew_time.clone(),
                    seen_at: now,
                });
                now
            }
        };
        now.since(seen_at).as_nanos() >= duration_secs.saturating_mul(1_000_000_000)
    }

    /// Creates, renews or takes over the Lease. `Ok(true)`: we hold it for the lease duration
    /// from now. `Ok(false)`: someone else holds it, or won the race to write it.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, LeaseError> {
        let now = (self.clock)();
        let path = format!("{}/{}", self.collection(), path_segment(&self.name));
        let current = match call(&self.client, Method::GET, &path, None).await {
            Ok(lease) => lease,
            Err(e) if e.code() == Some(404) => return self.create(now).await,
            Err(e) => return Err(self.api_error("reading", &e)),
        };
        if current["metadata"]["resourceVersion"].as_str().is_none_or(str::is_empty) {
            return Err(LeaseError::Malformed {
                lease: self.lease(),
                message: "no metadata.resourceVersion".into(),
            });
        }
        let spec = &current["spec"];
        let holder = spec["holderIdentity"].as_str().unwrap_or("");
        let duration_secs = spec["leaseDurationSeconds"].as_i64().unwrap_or(self.duration_secs());
        let stamp = wire::rfc3339_micros(now);
        let mut next = current.clone();
        if holder == self.identity {
            next["spec"]["renewTime"] = stamp;
            next["spec"]["leaseDurationSeconds"] = json!(self.duration_secs());
        } else if holder.is_empty() || self.expired(holder, &spec["renewTime"], duration_secs, now) {
            let transitions = spec["leaseTransitions"].as_i64().unwrap_or(0);
            next["spec"] = json!({
                "holderIdentity": self.identity,
                "leaseDurationSeconds": self.duration_secs(),
                "acquireTime": stamp,
                "renewTime": stamp,
                "leaseTransitions": transitions.saturating_add(1),
            });
        } else {
            self.set_held(None);
            return Ok(false);
        }
        let put_path = format!("{path}?fieldManager={FIELD_MANAGER}");
        match call(&self.client, Method::PUT, &put_path, Some((Body::Json, &next))).await {
            Ok(written) => {
                self.set_held(Some(if written.is_object() { written } else { next }));
                Ok(true)
            }
            Err(e) if e.code() == Some(409) => {
                self.set_held(None);
                Ok(false)
            }
            Err(e) => Err(self.api_error("writing", &e)),
        }
    }

    async fn create(&self, now: Time) -> Result<bool, LeaseError> {
        let stamp = wire::rfc3339_micros(now);
        let lease = json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": self.duration_secs(),
                "acquireTime": stamp,
                "renewTime": stamp,
                "leaseTransitions": 0,
            },
        });
        let path = format!("{}?fieldManager={FIELD_MANAGER}", self.collection());
        match call(&self.client, Method::POST, &path, Some((Body::Json, &lease))).await {
            Ok(written) => {
                self.set_held(Some(if written.is_object() { written } else { lease }));
                Ok(true)
            }
            Err(e) if e.code() == Some(409) => Ok(false),
            Err(e) => Err(self.api_error("creating", &e)),
        }
    }

    /// Gives the Lease up if we hold it, so that another replica takes over at once rather than
    /// after the lease duration: the holder is cleared and the duration set to one second, with
    /// the `resourceVersion` of our last write (a conflict means it is no longer ours). Best
    /// effort, for shutdown: failures are logged, not returned.
    pub async fn release(&self) {
        let held = self.held.lock().ok().and_then(|mut h| h.take());
        let Some(mut lease) = held else { return };
        let now = wire::rfc3339_micros((self.clock)());
        lease["spec"]["holderIdentity"] = Value::Null;
        lease["spec"]["leaseDurationSeconds"] = json!(1);
        lease["spec"]["renewTime"] = now;
        let path = format!("{}/{}?fieldManager={FIELD_MANAGER}", self.collection(), path_segment(&self.name));
        if let Err(e) = call(&self.client, Method::PUT, &path, Some((Body::Json, &lease))).await {
            tracing::warn!(lease = %self.lease(), error = %e, "could not release the lease");
        }
    }
}
