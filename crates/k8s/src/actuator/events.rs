//! The Events the actuator writes, and how repeats become one Event's `series`.
//!
//! Kubernetes groups repeated Events into a series: the first is created, and a repeat within a
//! few minutes raises `series.count` on it (client-go's `tools/events` recorder; kube-runtime's
//! `events::Recorder`, which the agent uses). The controller keeps its own small series cache
//! here instead of kube-runtime's `Recorder`, for four reasons:
//! - the `Recorder`'s key leaves out the note, so two different device quarantines on one node
//!   (same node, reason and action; different devices) would become one series whose note names
//!   only the first device, and a dry run read a week later would hide actions;
//! - its cache is bounded only by time; this one holds at most [`SERIES_MAX`] series, dropping
//!   the longest idle first (devheal's trust model bounds every map);
//! - it reads the wall clock; the actuator's clock is injected (tests, the simulator's replay);
//! - its requests would bypass the actuator's write fence (leadership) and call timeout.
//!
//! A series lasts [`SERIES_WINDOW_NS`] from its last occurrence (six minutes, as both
//! recorders); an occurrence after that, or after the API server dropped the Event (404),
//! creates a new Event.

use std::collections::HashMap;
use std::sync::Mutex;

use devheal_core::{Action, ActionOutcome, Time};
use http::Method;
use serde_json::{Value, json};

use super::{Carried, KubeActuator, NOTE_MAX_BYTES, REPORTING_CONTROLLER, camel_static, node_regarding};
use crate::wire::{self, Body, CallError, path_segment};

/// A repeat within this long of the last occurrence joins the series (6 minutes).
pub(super) const SERIES_WINDOW_NS: i64 = 6 * 60 * 1_000_000_000;
/// At most this many series are remembered.
pub(super) const SERIES_MAX: usize = 4096;

/// An Event to write after an action.
pub(super) struct EventSpec {
    pub(super) namespace: String,
    pub(super) regarding: Option<Value>,
    pub(super) reason: &'static str,
    pub(super) action: &'static str,
    pub(super) note: String,
    pub(super) warning: bool,
}

/// What makes two Events the same: everything but the time.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct SeriesKey {
    namespace: String,
    /// The `regarding` reference as JSON text (empty when none).
    regarding: String,
    reason: &'static str,
    action: &'static str,
    warning: bool,
    note: String,
}

#[derive(Clone, Debug)]
struct Series {
    /// The Event's name, as the API server gave it.
    name: String,
    /// Occurrences counted so far (1 for a singleton Event).
    count: i32,
    last: Time,
}

/// The Events written recently, by what they say: bounded, and safe to share between tasks.
#[derive(Debug, Default)]
pub(super) struct SeriesCache {
    series: Mutex<HashMap<SeriesKey, Series>>,
}

impl SeriesCache {
    /// The Event to count a repeat of `key` on, and its next count, if one is in its window.
    fn next_in_series(&self, key: &SeriesKey, now: Time) -> Option<(String, i32)> {
        let map = self.series.lock().ok()?;
        let s = map.get(key)?;
        (now.since(s.last).as_nanos() < SERIES_WINDOW_NS).then(|| (s.name.clone(), s.count.saturating_add(1)))
    }

    /// The repeat was counted on the Event.
    fn counted(&self, key: &SeriesKey, count: i32, now: Time) {
        if let Ok(mut map) = self.series.lock()
            && let Some(s) = map.get_mut(key)
        {
            s.count = s.count.max(count);
            s.last = now;
        }
    }

    fn forget(&self, key: &SeriesKey) {
        if let Ok(mut map) = self.series.lock() {
            map.remove(key);
        }
    }

    /// A new Event `name` was created for `key`; series out of their window are dropped, and
    /// the longest idle one when [`SERIES_MAX`] are held.
    fn started(&self, key: SeriesKey, name: String, now: Time) {
        let Ok(mut map) = self.series.lock() else { return };
        map.retain(|_, s| now.since(s.last).as_nanos() < SERIES_WINDOW_NS);
        if map.len() >= SERIES_MAX
            && let Some(oldest) = map.iter().min_by_key(|(_, s)| s.last).map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(key, Series { name, count: 1, last: now });
    }

    /// How many series are held (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.series.lock().map(|m| m.len()).unwrap_or(0)
    }
}

impl KubeActuator {
    /// Writes `spec` as an `events.k8s.io/v1` Event, or, when the same Event (same object,
    /// reason, action, type and note) was written in the last [`SERIES_WINDOW_NS`], counts it
    /// in that Event's `series` instead (a merge patch of `series.count` and
    /// `series.lastObservedTime`), as Kubernetes' own event recorders do: a storm of one Event
    /// becomes one object with a count, not thousands.
    pub(super) async fn emit(&self, spec: EventSpec) -> Result<(), CallError> {
        let mut note = spec.note;
        if note.len() > NOTE_MAX_BYTES {
            let mut cut = NOTE_MAX_BYTES - 3;
            while !note.is_char_boundary(cut) {
                cut -= 1;
            }
            note.truncate(cut);
            note.push_str("...");
        }
        let key = SeriesKey {
            namespace: spec.namespace.clone(),
            regarding: spec.regarding.as_ref().map(Value::to_string).unwrap_or_default(),
            reason: spec.reason,
            action: spec.action,
            warning: spec.warning,
            note: note.clone(),
        };
        let now = self.now();
        if let Some((name, count)) = self.series.next_in_series(&key, now) {
            let patch = json!({"series": {"count": count, "lastObservedTime": wire::rfc3339_micros(now)}});
            let path = format!(
                "/apis/events.k8s.io/v1/namespaces/{}/events/{}",
                path_segment(&spec.namespace),
                path_segment(&name)
            );
            match self.send(Method::PATCH, &path, Some((Body::MergePatch, &patch))).await {
                Ok(_) => {
                    self.series.counted(&key, count, now);
                    return Ok(());
                }
                // The Event expired (the API server keeps them an hour by default): a new one.
                Err(e) if e.code() == Some(404) => self.series.forget(&key),
                Err(e) => return Err(e),
            }
        }
        // The API server names the Event `<prefix><5 random characters>`; the prefix itself
        // must be a valid name, so it ends in `-` (which the server's check allows at the end
        // of a prefix), never `.` (refused with 422 by a real API server). An object name is
        // at most 253 characters: the prefix keeps room for the suffix.
        let mut prefix =
            spec.regarding.as_ref().and_then(|r| r["name"].as_str()).unwrap_or("devheal").to_string();
        let mut cut = prefix.len().min(240);
        while !prefix.is_char_boundary(cut) {
            cut -= 1;
        }
        prefix.truncate(cut);
        let prefix = prefix.trim_end_matches(['.', '-']).to_string();
        let mut event = json!({
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            "metadata": {"generateName": format!("{prefix}-"), "namespace": spec.namespace},
            "eventTime": wire::rfc3339_micros(now),
            "reportingController": REPORTING_CONTROLLER,
            "reportingInstance": self.config.reporting_instance,
            "action": spec.action,
            "reason": spec.reason,
            "note": note,
            "type": if spec.warning { "Warning" } else { "Normal" },
        });
        if let Some(regarding) = spec.regarding {
            event["regarding"] = regarding;
        }
        let path = format!("/apis/events.k8s.io/v1/namespaces/{}/events", path_segment(&spec.namespace));
        let created = self.send(Method::POST, &path, Some((Body::Json, &event))).await?;
        if let Some(name) = created["metadata"]["name"].as_str() {
            self.series.started(key, name.to_string(), now);
        }
        Ok(())
    }

    /// A report is only an Event, so its Event's failure is the action's.
    pub(super) async fn report(&self, reason: &str, message: &str) -> Carried {
        let spec = EventSpec {
            namespace: "default".into(),
            regarding: None,
            reason: "DevhealReport",
            action: "Report",
            note: format!("{reason}: {message}"),
            warning: true,
        };
        let key = "report";
        match self.emit(spec).await {
            Ok(()) => {
                self.settle(key);
                Carried::quiet(ActionOutcome::Done)
            }
            Err(e) => Carried::quiet(self.failed_call(key, "writing the report Event", &e)),
        }
    }

    /// The Event about an action that failed for good, on the pod or node it names.
    pub(super) fn failure_event(action: &Action, reason: &str) -> Option<EventSpec> {
        let (namespace, regarding) = match action {
            Action::MarkPod { pod, .. } | Action::EvictPod { pod, .. } => {
                (pod.namespace.clone(), Self::pod_regarding(pod))
            }
            Action::CordonNode { node, .. }
            | Action::UncordonNode { node, .. }
            | Action::RequestRepair { node, .. }
            | Action::WithdrawRepair { node, .. } => ("default".to_string(), node_regarding(node, None)),
            Action::QuarantineDevice { device, .. } | Action::ReleaseDevice { device, .. } => {
                ("default".to_string(), node_regarding(&device.node, None))
            }
            _ => return None,
        };
        Some(EventSpec {
            namespace,
            regarding: Some(regarding),
            reason: "DevhealActionFailed",
            action: camel_static(action.label()),
            note: format!("{} failed: {reason}", action.label()),
            warning: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(note: &str) -> SeriesKey {
        SeriesKey {
            namespace: "default".into(),
            regarding: r#"{"kind":"Node","name":"n1"}"#.into(),
            reason: "DevhealDryRun",
            action: "Quarantine",
            warning: false,
            note: note.into(),
        }
    }

    #[test]
    fn repeats_join_a_series_only_within_its_window_and_only_when_identical() {
        let c = SeriesCache::default();
        let t0 = Time::from_nanos(1_000_000_000_000);
        assert_eq!(c.next_in_series(&key("GPU-a"), t0), None);
        c.started(key("GPU-a"), "n1-x7k2p".into(), t0);
        // Another device on the same node is another Event (kube-runtime's key would merge them).
        assert_eq!(c.next_in_series(&key("GPU-b"), t0), None);
        let t1 = Time::from_nanos(t0.as_nanos() + 60_000_000_000);
        assert_eq!(c.next_in_series(&key("GPU-a"), t1), Some(("n1-x7k2p".into(), 2)));
        c.counted(&key("GPU-a"), 2, t1);
        let t2 = Time::from_nanos(t1.as_nanos() + SERIES_WINDOW_NS - 1);
        assert_eq!(c.next_in_series(&key("GPU-a"), t2), Some(("n1-x7k2p".into(), 3)));
        // The window runs from the last occurrence.
        let t3 = Time::from_nanos(t1.as_nanos() + SERIES_WINDOW_NS);
        assert_eq!(c.next_in_series(&key("GPU-a"), t3), None);
        c.forget(&key("GPU-a"));
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn the_cache_is_bounded_and_drops_the_longest_idle() {
        let c = SeriesCache::default();
        let t0 = Time::from_nanos(1_000_000_000_000);
        for i in 0..SERIES_MAX + 10 {
            let t = Time::from_nanos(t0.as_nanos() + i as i64);
            c.started(key(&format!("GPU-{i}")), format!("e{i}"), t);
        }
        assert_eq!(c.len(), SERIES_MAX);
        let now = Time::from_nanos(t0.as_nanos() + 100_000);
        assert_eq!(c.next_in_series(&key("GPU-0"), now), None, "the oldest went first");
        let last = SERIES_MAX + 9;
        assert_eq!(c.next_in_series(&key(&format!("GPU-{last}")), now), Some((format!("e{last}"), 2)));
    }
}
