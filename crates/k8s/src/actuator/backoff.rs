//! Per-target retry delays of the actuator: exponential from `backoff_base`, doubling up to
//! `backoff_cap`, kept per target (a pod, a gang, a node) and forgotten once the target's action
//! ends for good; and how a failed request becomes a [`Stop`] and then an outcome.
//!
//! With `backoff_jitter` (the default) each delay is drawn from `[d/2, d]` ("equal jitter"), `d`
//! the exponential delay, by a hash of the target and the attempt: a storm that fails many
//! targets at once (an API server restart, a PodDisruptionBudget over a whole gang) is retried
//! spread over half the delay, not all in the same second, and a given target's delays are
//! reproducible. The delay never exceeds the cap and is never below half the exponential one.

use devheal_core::{ActionOutcome, Time};

use super::{BACKOFF_FORGET_AFTER_NS, KubeActuator, Stop, fnv1a};
use crate::wire::CallError;

#[derive(Clone, Copy, Debug)]
pub(super) struct Backoff {
    attempts: u32,
    last: Time,
}

impl KubeActuator {
    pub(super) fn retry(&self, key: &str, reason: String) -> (ActionOutcome, u32) {
        let now = self.now();
        let attempts = match self.backoff.lock() {
            Ok(mut map) => {
                map.retain(|_, b| now.since(b.last).as_nanos() < BACKOFF_FORGET_AFTER_NS);
                let entry = map.entry(key.to_string()).or_insert(Backoff { attempts: 0, last: now });
                entry.attempts = entry.attempts.saturating_add(1);
                entry.last = now;
                entry.attempts
            }
            Err(_) => 1,
        };
        let base = u64::try_from(self.config.backoff_base.as_millis()).unwrap_or(u64::MAX);
        let cap = u64::try_from(self.config.backoff_cap.as_millis()).unwrap_or(u64::MAX);
        let factor = 1u64.checked_shl(attempts.saturating_sub(1).min(63)).unwrap_or(u64::MAX);
        let full = base.saturating_mul(factor).min(cap);
        let after_ms = if self.config.backoff_jitter { jittered(full, key, attempts) } else { full };
        (ActionOutcome::Retry { after_ms, reason }, attempts)
    }

    pub(super) fn settle(&self, key: &str) {
        if let Ok(mut map) = self.backoff.lock() {
            map.remove(key);
        }
    }

    /// The outcome of a request that failed, for a target named `key`; `what` says what was
    /// being done, for the reason. A final outcome forgets the target's backoff.
    pub(super) fn failed_call(&self, key: &str, what: &str, err: &CallError) -> ActionOutcome {
        self.stop_outcome(key, stop_of(what, err))
    }

    pub(super) fn stop_outcome(&self, key: &str, stop: Stop) -> ActionOutcome {
        match stop {
            Stop::Retry(reason) => self.retry(key, reason).0,
            Stop::Failed(reason) => {
                self.settle(key);
                ActionOutcome::Failed { reason }
            }
            Stop::Gone => {
                self.settle(key);
                ActionOutcome::Gone
            }
        }
    }
}

/// `full` milliseconds jittered into `[full/2, full]`, chosen by a hash of `key` and `attempt`.
fn jittered(full: u64, key: &str, attempt: u32) -> u64 {
    let half = full / 2;
    let spread = full - half;
    if spread == 0 {
        return full;
    }
    // FNV-1a, then a 64-bit finaliser so that keys that differ in one byte land far apart.
    let mut h = fnv1a(&[key, &attempt.to_string()]);
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    half + h % (spread + 1)
}

pub(super) fn stop_of(what: &str, e: &CallError) -> Stop {
    match e.code() {
        Some(404) => Stop::Gone,
        Some(429) | Some(500..=599) | None => Stop::Retry(format!("{what}: {}", e.describe())),
        Some(_) => Stop::Failed(format!("{what}: {}", e.describe())),
    }
}

/// The worse of two stops: failed over retry over gone; the first of equals.
pub(super) fn merge_stop(acc: Option<Stop>, next: Stop) -> Option<Stop> {
    let rank = |s: &Stop| match s {
        Stop::Failed(_) => 2,
        Stop::Retry(_) => 1,
        Stop::Gone => 0,
    };
    match acc {
        Some(a) if rank(&a) >= rank(&next) => Some(a),
        _ => Some(next),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_keep_the_worst() {
        let s = merge_stop(merge_stop(None, Stop::Retry("r".into())), Stop::Gone);
        assert!(matches!(s, Some(Stop::Retry(_))));
        let s = merge_stop(s, Stop::Failed("f".into()));
        assert!(matches!(s, Some(Stop::Failed(_))));
    }

    #[test]
    fn jitter_stays_within_half_and_whole_and_spreads_targets() {
        let delays: Vec<u64> = (0..200).map(|i| jittered(8_000, &format!("pod/ml/w-{i}"), 1)).collect();
        assert!(delays.iter().all(|d| (4_000..=8_000).contains(d)), "{delays:?}");
        let mut distinct = delays.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert!(distinct.len() > 150, "200 targets retried at once share {} delays", distinct.len());
        let (lo, hi) =
            (delays.iter().filter(|d| **d < 6_000).count(), delays.iter().filter(|d| **d >= 6_000).count());
        assert!(lo > 60 && hi > 60, "spread over the whole range: {lo} below 6 s, {hi} above");
        assert_eq!(jittered(8_000, "pod/ml/w-1", 3), jittered(8_000, "pod/ml/w-1", 3), "reproducible");
        assert_eq!(jittered(1, "k", 1), 1);
        assert_eq!(jittered(0, "k", 1), 0);
        assert!(jittered(u64::MAX, "k", 1) >= u64::MAX / 2);
    }
}
