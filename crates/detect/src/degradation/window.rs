//! One subject's step times gathered into aligned windows, each summarised by a robust location
//! (the interquartile mean of its step times).
//!
//! The detectors judge windows, not single steps. Where the steps and the judgement happen in
//! different places (the node agent sees a pod's steps, the controller compares a gang's members
//! across nodes), the agent summarises each closed window with [`WindowAggregator`] and ships the
//! [`StepWindow`]; the detectors take it with their `observe_window` methods. Their step-by-step
//! `observe` methods use the same summary, so both paths judge identical numbers.
//!
//! # Bounded
//!
//! An aggregator holds at most [`MAX_WINDOW_SAMPLES`] step times, whatever a reporter sends: up
//! to that many steps in a window (one every 59 ms in a one-minute window; a training step takes
//! far longer) the location is exact. Beyond it the aggregator keeps a uniform sample of the
//! window's steps (reservoir sampling, Vitter's algorithm R, with a generator seeded by the window
//! index, so a run is reproducible) and the location is that sample's interquartile mean; the
//! count is still every step. A flood of steps costs time, never memory.

use devheal_core::{Duration, Time};
use serde::{Deserialize, Serialize};

use super::{DegradationError, interquartile_mean_in_place, window_index};

/// A closed window of one subject's steps.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub struct StepWindow {
    /// The window's index: its start is `index × window length` since the Unix epoch (or the
    /// trace's zero), so every node with a synchronised clock numbers windows alike.
    pub index: i64,
    /// Steps reported in the window.
    pub samples: u32,
    /// The interquartile mean of the window's step times, in seconds.
    pub location_secs: f64,
}

impl StepWindow {
    /// When the window starts.
    pub fn start(&self, window: Duration) -> Time {
        Time::from_nanos(self.index.saturating_mul(window.as_nanos()))
    }

    /// When the window ends.
    pub fn end(&self, window: Duration) -> Time {
        Time::from_nanos(self.index.saturating_add(1).saturating_mul(window.as_nanos()))
    }
}

/// The most step times an aggregator holds for its open window (8 KiB).
pub const MAX_WINDOW_SAMPLES: usize = 1024;

/// Collects one subject's step times, window by window, in bounded memory.
#[derive(Clone, Debug)]
pub struct WindowAggregator {
    window: Duration,
    open: Option<i64>,
    /// At most [`MAX_WINDOW_SAMPLES`]: every step of the open window, or a uniform sample of them.
    samples: Vec<f64>,
    /// Steps seen in the open window (all of them, kept or not).
    seen: u64,
    /// The reservoir's generator (splitmix64), seeded when a window opens.
    rng: u64,
}

impl WindowAggregator {
    /// `window` must be positive (the detectors' configs check theirs).
    pub fn new(window: Duration) -> Self {
        WindowAggregator {
            window: Duration::from_nanos(window.as_nanos().max(1)),
            open: None,
            samples: Vec::new(),
            seen: 0,
            rng: 0,
        }
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    /// The index of the window collecting steps, if any.
    pub fn open_window(&self) -> Option<i64> {
        self.open
    }

    /// Records a step of `step` that ended at `at`. A step in a later window than the open one
    /// closes it and returns its summary; a step in an earlier window is an error (`subject`
    /// names the reporter in it). Non-positive or non-finite step times are errors too.
    pub fn push(
        &mut self,
        subject: &str,
        at: Time,
        step: Duration,
    ) -> Result<Option<StepWindow>, DegradationError> {
        if step.as_nanos() <= 0 {
            return Err(DegradationError::NonPositiveStep {
                subject: subject.to_string(),
                nanos: step.as_nanos(),
            });
        }
        let index = window_index(at, self.window);
        let closed = match self.open {
            Some(open) if index < open => {
                return Err(DegradationError::OutOfOrder {
                    subject: subject.to_string(),
                    at_ns: at.as_nanos(),
                    closed_ns: open.saturating_mul(self.window.as_nanos()),
                });
            }
            Some(open) if index > open => self.close(),
            _ => None,
        };
        if self.open.is_none() {
            self.open = Some(index);
            self.seen = 0;
            self.rng = index as u64 ^ 0x9e37_79b9_7f4a_7c15;
        }
        self.keep(step.as_secs_f64());
        Ok(closed)
    }

    /// Algorithm R: the n-th step (from 0) replaces a kept one with probability k/(n+1).
    fn keep(&mut self, secs: f64) {
        let n = self.seen;
        self.seen = self.seen.saturating_add(1);
        if self.samples.len() < MAX_WINDOW_SAMPLES {
            self.samples.push(secs);
            return;
        }
        let slot = self.next_random() % (n + 1);
        if let Some(kept) = usize::try_from(slot).ok().and_then(|i| self.samples.get_mut(i)) {
            *kept = secs;
        }
    }

    fn next_random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Closes the open window if `now` is past its end (reports stopped, or a quiet subject);
    /// returns its summary.
    pub fn close_if_ended(&mut self, now: Time) -> Option<StepWindow> {
        let open = self.open?;
        if window_index(now, self.window) > open { self.close() } else { None }
    }

    /// Closes the open window now, whatever the time.
    pub fn close(&mut self) -> Option<StepWindow> {
        let index = self.open.take()?;
        let samples = u32::try_from(self.seen).unwrap_or(u32::MAX);
        let location = interquartile_mean_in_place(&mut self.samples);
        self.samples.clear();
        self.seen = 0;
        location.map(|location_secs| StepWindow { index, samples, location_secs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_close_when_a_later_step_or_the_clock_passes_them() {
        let mut agg = WindowAggregator::new(Duration::from_mins(1));
        for (s, secs) in [(1, 1.0), (10, 1.2), (20, 40.0), (30, 1.1), (40, 0.9), (50, 0.8)] {
            assert_eq!(
                agg.push("p", Time::from_secs(s), Duration::from_nanos((secs * 1e9) as i64)).unwrap(),
                None
            );
        }
        let closed = agg.push("p", Time::from_secs(61), Duration::from_secs(1)).unwrap().unwrap();
        assert_eq!(closed.index, 0);
        assert_eq!(closed.samples, 6);
        assert!((closed.location_secs - 1.05).abs() < 1e-9, "the 40 s step is trimmed: {closed:?}");
        assert_eq!(agg.close_if_ended(Time::from_secs(119)), None);
        let quiet = agg.close_if_ended(Time::from_secs(120)).unwrap();
        assert_eq!((quiet.index, quiet.samples), (1, 1));
        assert_eq!(quiet.start(Duration::from_mins(1)), Time::from_secs(60));
        assert_eq!(agg.close(), None, "nothing open");
    }

    #[test]
    fn a_flood_of_steps_is_held_in_bounded_memory_and_summarised_fairly() {
        let mut agg = WindowAggregator::new(Duration::from_mins(1));
        // 100,000 steps in one window: 90 % take 1.0 s, 10 % take 5.0 s (trimmed as outliers
        // only partly: the interquartile mean of the whole window is 1.0).
        for i in 0..100_000u32 {
            let secs = if i % 10 == 9 { 5.0 } else { 1.0 };
            let at = Time::from_nanos(i64::from(i) * 500_000);
            agg.push("p", at, Duration::from_nanos((secs * 1e9) as i64)).unwrap();
            assert!(agg.samples.len() <= MAX_WINDOW_SAMPLES);
        }
        assert!(agg.samples.capacity() <= 2 * MAX_WINDOW_SAMPLES, "{}", agg.samples.capacity());
        let w = agg.close().unwrap();
        assert_eq!(w.samples, 100_000, "every step is counted");
        assert!((w.location_secs - 1.0).abs() < 1e-9, "{w:?}");
        // A slow second half is seen in the sample too (it is uniform over the window).
        let mut agg = WindowAggregator::new(Duration::from_mins(1));
        for i in 0..20_000u32 {
            let secs = if i < 10_000 { 1.0 } else { 2.0 };
            agg.push(
                "p",
                Time::from_nanos(i64::from(i) * 1_000_000),
                Duration::from_nanos((secs * 1e9) as i64),
            )
            .unwrap();
        }
        let w = agg.close().unwrap();
        assert!((1.3..1.7).contains(&w.location_secs), "a fair mix of both halves: {w:?}");
        // Reproducible: the same steps give the same summary.
        let run = || {
            let mut agg = WindowAggregator::new(Duration::from_mins(1));
            for i in 0..5_000u32 {
                let secs = 1.0 + f64::from(i % 97) / 100.0;
                agg.push(
                    "p",
                    Time::from_nanos(i64::from(i) * 1_000_000),
                    Duration::from_nanos((secs * 1e9) as i64),
                )
                .unwrap();
            }
            agg.close().unwrap()
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn late_and_non_positive_steps_are_errors() {
        let mut agg = WindowAggregator::new(Duration::from_mins(1));
        agg.push("p", Time::from_secs(130), Duration::from_secs(1)).unwrap();
        let err = agg.push("p", Time::from_secs(10), Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, DegradationError::OutOfOrder { .. }), "{err}");
        let err = agg.push("p", Time::from_secs(131), Duration::ZERO).unwrap_err();
        assert!(err.to_string().contains("\"p\""), "{err}");
    }
}
