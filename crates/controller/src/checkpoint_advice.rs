//! Checkpoint advice per gang: how often a gang should checkpoint, from the interruptions the
//! controller sees it suffer (Daly's optimum, [`devheal_core::checkpoint`]).
//!
//! A gang takes part by declaring how long one checkpoint write takes: the pod annotation
//! `devheal.io/checkpoint-write-seconds` on any of its pods (seconds, > 0 and ≤ 1 day). From the
//! first such pod the controller counts the gang's interruptions: each gang restart the engine
//! plans for it. Over the last [`AdviceSettings::window`] (default 7 days, shorter while the
//! gang is younger) the mean time to interrupt is the time observed divided by the
//! interruptions, and the advice is Daly's optimal compute time between checkpoints for that
//! mean and the declared write time. A gang needs [`AdviceSettings::min_interruptions`] (2)
//! interruptions in the window before it gets advice: one is no rate.
//!
//! Exported as `devheal_controller_recommended_checkpoint_interval_seconds{namespace, gang}`
//! and `devheal_controller_gang_mean_time_to_interrupt_seconds{namespace, gang}`. Advice
//! decides nothing: it is not persisted, and a restarted controller starts counting again.
//! Bounded: at most [`AdviceSettings::max_gangs`] gangs (the one seen longest ago goes) and
//! [`AdviceSettings::max_interruptions`] interruptions per gang; a gang none of whose pods was
//! seen for a window is forgotten.

use std::collections::{BTreeMap, VecDeque};

use devheal_core::{Duration, GangId, PodInfo, Time};

/// The annotation a gang's pods declare their checkpoint write time with.
pub const WRITE_SECONDS_ANNOTATION: &str = "devheal.io/checkpoint-write-seconds";

/// Bounds and window.
#[derive(Clone, Debug, PartialEq)]
pub struct AdviceSettings {
    pub window: Duration,
    pub min_interruptions: usize,
    pub max_gangs: usize,
    pub max_interruptions: usize,
}

impl Default for AdviceSettings {
    fn default() -> Self {
        AdviceSettings {
            window: Duration::from_hours(24 * 7),
            min_interruptions: 2,
            max_gangs: 4096,
            max_interruptions: 1024,
        }
    }
}

#[derive(Clone, Debug)]
struct Record {
    write_seconds: f64,
    first_seen: Time,
    last_seen: Time,
    interruptions: VecDeque<Time>,
}

/// One gang's advice.
#[derive(Clone, Debug, PartialEq)]
pub struct Advice {
    pub gang: GangId,
    pub interruptions: usize,
    pub mean_time_to_interrupt_s: f64,
    pub write_seconds: f64,
    pub interval_s: f64,
}

/// The gangs that declared a checkpoint write time, and their interruptions.
#[derive(Debug, Default)]
pub struct CheckpointAdvisor {
    settings: AdviceSettings,
    gangs: BTreeMap<GangId, Record>,
}

/// The declared write time, if the annotation holds a usable one.
pub fn write_seconds(pod: &PodInfo) -> Option<f64> {
    let v: f64 = pod.annotations.get(WRITE_SECONDS_ANNOTATION)?.trim().parse().ok()?;
    (v.is_finite() && v > 0.0 && v <= 86_400.0).then_some(v)
}

impl CheckpointAdvisor {
    pub fn new(settings: AdviceSettings) -> Self {
        CheckpointAdvisor { settings, gangs: BTreeMap::new() }
    }

    pub fn len(&self) -> usize {
        self.gangs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.gangs.is_empty()
    }

    /// A pod of `gang` that carries the annotation was seen, with the write time it declares
    /// (`None`: not a usable one, see [`write_seconds`]): a usable one registers the gang (or
    /// updates it); any keeps a registered gang from being forgotten.
    pub fn observe(&mut self, gang: Option<&GangId>, write: Option<f64>, now: Time) {
        let Some(gang) = gang else { return };
        if let Some(record) = self.gangs.get_mut(gang) {
            record.last_seen = now;
            if let Some(w) = write {
                record.write_seconds = w;
            }
            return;
        }
        let Some(w) = write else { return };
        if self.gangs.len() >= self.settings.max_gangs
            && let Some(oldest) = self.gangs.iter().min_by_key(|(_, r)| r.last_seen).map(|(g, _)| g.clone())
        {
            self.gangs.remove(&oldest);
        }
        self.gangs.insert(
            gang.clone(),
            Record { write_seconds: w, first_seen: now, last_seen: now, interruptions: VecDeque::new() },
        );
    }

    /// The engine restarts `gang`: one interruption (only gangs that declared a write time).
    pub fn interrupted(&mut self, gang: &GangId, now: Time) {
        let Some(record) = self.gangs.get_mut(gang) else { return };
        if record.interruptions.len() >= self.settings.max_interruptions {
            record.interruptions.pop_front();
        }
        record.interruptions.push_back(now);
        record.last_seen = now;
    }

    /// Every gang's advice now, and forgets what the window left behind.
    pub fn advice(&mut self, now: Time) -> Vec<Advice> {
        let window = self.settings.window;
        let horizon = now - window;
        self.gangs.retain(|_, r| r.last_seen >= horizon);
        let mut out = Vec::new();
        for (gang, r) in &mut self.gangs {
            while r.interruptions.front().is_some_and(|t| *t < horizon) {
                r.interruptions.pop_front();
            }
            let n = r.interruptions.len();
            if n < self.settings.min_interruptions {
                continue;
            }
            let observed = now.since(r.first_seen.max(horizon)).as_secs_f64();
            if observed <= 0.0 {
                continue;
            }
            let m = observed / n as f64;
            out.push(Advice {
                gang: gang.clone(),
                interruptions: n,
                mean_time_to_interrupt_s: m,
                write_seconds: r.write_seconds,
                interval_s: devheal_core::checkpoint::daly_optimal_interval(r.write_seconds, m),
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gang(name: &str) -> GangId {
        GangId { namespace: "ml".into(), kind: "jobset".into(), name: name.into() }
    }

    fn pod(write: Option<&str>) -> PodInfo {
        let mut p =
            PodInfo { uid: "u".into(), namespace: "ml".into(), name: "p".into(), ..PodInfo::default() };
        if let Some(w) = write {
            p.annotations.insert(WRITE_SECONDS_ANNOTATION.into(), w.into());
        }
        p
    }

    fn at(h: i64) -> Time {
        Time::from_secs(h * 3600)
    }

    /// A gang that writes a checkpoint in 60 s and is interrupted every 6 h on average gets
    /// Daly's interval for δ = 60 s and M = 6 h (about 26 min); a gang that declared nothing gets
    /// no advice, and neither does one with a single interruption.
    #[test]
    fn advice_is_dalys_optimum_for_the_observed_rate() {
        let mut a = CheckpointAdvisor::new(AdviceSettings::default());
        a.observe(Some(&gang("llama")), write_seconds(&pod(Some("60"))), at(0));
        a.observe(Some(&gang("silent")), write_seconds(&pod(None)), at(0));
        a.observe(Some(&gang("once")), write_seconds(&pod(Some("30"))), at(0));
        for h in [6, 12, 18, 24] {
            a.interrupted(&gang("llama"), at(h));
            a.interrupted(&gang("silent"), at(h));
        }
        a.interrupted(&gang("once"), at(3));
        let advice = a.advice(at(24));
        assert_eq!(advice.len(), 1, "{advice:?}");
        let l = &advice[0];
        assert_eq!((l.gang.name.as_str(), l.interruptions), ("llama", 4));
        assert!((l.mean_time_to_interrupt_s - 6.0 * 3600.0).abs() < 1e-6, "{l:?}");
        let expected = devheal_core::checkpoint::daly_optimal_interval(60.0, 6.0 * 3600.0);
        assert!((l.interval_s - expected).abs() < 1e-9 && (1500.0..1700.0).contains(&l.interval_s), "{l:?}");
    }

    /// Interruptions older than the window stop counting; a gang whose pods were not seen for a
    /// window is forgotten; bad annotations register nothing.
    #[test]
    fn the_window_and_the_bounds_hold() {
        let settings =
            AdviceSettings { window: Duration::from_hours(24), max_gangs: 2, ..AdviceSettings::default() };
        let mut a = CheckpointAdvisor::new(settings);
        a.observe(Some(&gang("a")), write_seconds(&pod(Some("60"))), at(0));
        for h in [1, 2, 30, 40] {
            a.interrupted(&gang("a"), at(h));
        }
        let advice = a.advice(at(48));
        assert_eq!(advice[0].interruptions, 2, "only those of the last 24 h");
        assert!((advice[0].mean_time_to_interrupt_s - 12.0 * 3600.0).abs() < 1e-6, "{advice:?}");
        assert!(a.advice(at(100)).is_empty() && a.is_empty(), "forgotten after a quiet window");

        for bad in ["0", "-5", "nan", "inf", "90000", "soon"] {
            a.observe(Some(&gang("bad")), write_seconds(&pod(Some(bad))), at(0));
        }
        assert!(a.is_empty());
        for (i, name) in ["x", "y", "z"].iter().enumerate() {
            a.observe(Some(&gang(name)), write_seconds(&pod(Some("10"))), at(i as i64));
        }
        assert_eq!(a.len(), 2, "at most max_gangs; the one seen longest ago went");
        a.interrupted(&gang("x"), at(5));
        assert!(a.advice(at(5)).is_empty(), "x was dropped: its interruption is not counted");
    }
}
