//! Labelled synthetic progress traces for evaluating the degradation detectors.
//!
//! A [`Trace`] is a gang of `members` that each report their own compute time for every step.
//! The gang's clock advances by the slowest member's time (a synchronous gang waits for its
//! slowest rank). Noise, all of it deterministic from the seed:
//! - a per-member static offset (hardware lottery, about 1 %),
//! - a diurnal swing: a 24-hour sine of 1–2 % peak to peak, shared by the gang with a per-member
//!   amplitude (Llama 3 reports 1–2 % diurnal throughput variation from mid-day temperatures),
//! - data-loader jitter: a log-normal factor per member and step,
//! - occasional single-step spikes on one member (a slow batch, a GC pause),
//! - checkpoint pauses every `checkpoint_every`: the whole gang stops reporting for 20–60 s and
//!   the first step after is 1.5× slower on every member.
//!
//! Injected faults, labelled in [`TraceLabels`]: slow-downs of one member by a given magnitude
//! for minutes to hours (Falcon: fail-slows last tens of seconds to about ten hours), and hangs
//! where the whole gang stops reporting (a hung collective stalls every rank) until a restart.
//!
//! The generator carries its own SplitMix64 so traces are reproducible across platforms and
//! crate versions.

use devheal_core::{Duration, Time};
use serde::Serialize;

use super::{DegradationError, require};

/// SplitMix64: a tiny, well-mixed 64-bit generator (Steele, Lea, Flood 2014).
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [low, high).
    pub fn uniform(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * self.next_f64()
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.next_f64(); // (0, 1]
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Uniform index in [0, n); `n` must be positive.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_f64() * n as f64) as usize % n.max(1)
    }
}

/// How to generate one trace.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceConfig {
    pub members: usize,
    pub length: Duration,
    /// Median compute time of a step.
    pub base_step: Duration,
    /// Sigma of the per-step log-normal data-loader jitter.
    pub jitter_sigma: f64,
    /// Sigma of each member's static offset.
    pub member_offset_sigma: f64,
    /// Peak-to-peak diurnal swing is drawn uniformly from this range (0.01–0.02).
    pub diurnal_peak_to_peak: (f64, f64),
    /// Probability per member and step of a single slow step (1.5–4×).
    pub spike_probability: f64,
    pub checkpoint_every: Duration,
    /// Gang-wide silence of a checkpoint save, drawn uniformly from this range.
    pub checkpoint_pause: (Duration, Duration),
    /// Relative slow-down of injected stragglers (0.1 = 10 % slower); `None` for none.
    pub slowdown_magnitude: Option<f64>,
    /// How many slow-downs to inject over the trace.
    pub slowdowns: u32,
    /// Duration range of a slow-down (log-uniform).
    pub slowdown_duration: (Duration, Duration),
    /// How many gang hangs to inject.
    pub hangs: u32,
    /// How long the gang stays silent after a hang (watchdog, restart, reload).
    pub hang_stall: Duration,
}

impl Default for TraceConfig {
    fn default() -> Self {
        TraceConfig {
            members: 64,
            length: Duration::from_hours(24),
            base_step: Duration::from_secs(10),
            jitter_sigma: 0.03,
            member_offset_sigma: 0.01,
            diurnal_peak_to_peak: (0.01, 0.02),
            spike_probability: 0.002,
            checkpoint_every: Duration::from_mins(30),
            checkpoint_pause: (Duration::from_secs(20), Duration::from_secs(60)),
            slowdown_magnitude: None,
            slowdowns: 0,
            slowdown_duration: (Duration::from_mins(6), Duration::from_hours(4)),
            hangs: 0,
            hang_stall: Duration::from_mins(10),
        }
    }
}

impl TraceConfig {
    pub fn validate(&self) -> Result<(), DegradationError> {
        require(self.members >= 4, "trace members", "a gang needs at least 4 members")?;
        require(self.length.as_nanos() > 0, "trace length", "must be positive")?;
        require(self.base_step.as_nanos() >= 1_000_000, "trace base_step", "must be at least 1 ms")?;
        for (value, what) in [
            (self.jitter_sigma, "trace jitter_sigma"),
            (self.member_offset_sigma, "trace member_offset_sigma"),
            (self.spike_probability, "trace spike_probability"),
        ] {
            require(value.is_finite() && (0.0..=0.5).contains(&value), what, "must be in [0, 0.5]")?;
        }
        let (lo, hi) = self.diurnal_peak_to_peak;
        require(
            lo.is_finite() && hi.is_finite() && 0.0 <= lo && lo <= hi && hi < 0.5,
            "trace diurnal_peak_to_peak",
            "must be 0 ≤ low ≤ high < 0.5",
        )?;
        require(self.checkpoint_every.as_nanos() > 0, "trace checkpoint_every", "must be positive")?;
        require(
            self.checkpoint_pause.0.as_nanos() >= 0 && self.checkpoint_pause.0 <= self.checkpoint_pause.1,
            "trace checkpoint_pause",
            "must be 0 ≤ low ≤ high",
        )?;
        if let Some(m) = self.slowdown_magnitude {
            require(m.is_finite() && m > 0.0, "trace slowdown_magnitude", "must be > 0")?;
        }
        require(
            self.slowdown_duration.0.as_nanos() > 0 && self.slowdown_duration.0 <= self.slowdown_duration.1,
            "trace slowdown_duration",
            "must be 0 < low ≤ high",
        )?;
        require(self.hang_stall.as_nanos() > 0, "trace hang_stall", "must be positive")
    }
}

/// One progress report: `member` finished a step at `at` after `step` of its own compute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepReport {
    pub member: usize,
    pub at: Time,
    pub step: Duration,
}

/// An injected slow-down of one member.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct InjectedSlowdown {
    pub member: usize,
    pub magnitude: f64,
    pub start: Time,
    pub end: Time,
}

/// An injected gang hang: the gang's last progress before it, and when reports resumed.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct InjectedHang {
    pub planned_at: Time,
    /// Filled in as the trace is generated (`None` until the hang is reached).
    pub last_progress: Option<Time>,
    pub resumed_at: Option<Time>,
}

/// A checkpoint save: the gang reported nothing from `start` to `end`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct CheckpointPause {
    pub start: Time,
    pub end: Time,
}

/// What was injected into a trace, and the checkpoint pauses so far (filled in as generated).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TraceLabels {
    pub slowdowns: Vec<InjectedSlowdown>,
    pub hangs: Vec<InjectedHang>,
    pub checkpoints: Vec<CheckpointPause>,
}

/// A deterministic trace; iterate it for the reports, then read [`Trace::labels`].
#[derive(Debug)]
pub struct Trace {
    config: TraceConfig,
    rng: SplitMix64,
    labels: TraceLabels,
    offsets: Vec<f64>,
    diurnal_amplitude: Vec<f64>,
    diurnal_phase: f64,
    clock: Time,
    end: Time,
    next_checkpoint: Time,
    warmup_step: bool,
    next_hang: usize,
    buffer: Vec<StepReport>,
    cursor: usize,
}

impl Trace {
    pub fn new(config: TraceConfig, seed: u64) -> Result<Trace, DegradationError> {
        config.validate()?;
        let mut rng = SplitMix64::new(seed);
        let offsets: Vec<f64> = (0..config.members)
            .map(|_| (config.member_offset_sigma * rng.normal()).clamp(-0.03, 0.03))
            .collect();
        let (lo, hi) = config.diurnal_peak_to_peak;
        let half_swing = rng.uniform(lo, hi.max(lo + f64::EPSILON)) / 2.0;
        let diurnal_amplitude: Vec<f64> =
            (0..config.members).map(|_| half_swing * rng.uniform(0.8, 1.2)).collect();
        let diurnal_phase = rng.uniform(0.0, std::f64::consts::TAU);
        let labels = plan_injections(&config, &mut rng);
        let end = Time::ZERO + config.length;
        let next_checkpoint = Time::ZERO + config.checkpoint_every;
        Ok(Trace {
            rng,
            labels,
            offsets,
            diurnal_amplitude,
            diurnal_phase,
            clock: Time::ZERO,
            end,
            next_checkpoint,
            warmup_step: false,
            next_hang: 0,
            buffer: Vec::with_capacity(config.members),
            cursor: 0,
            config,
        })
    }

    pub fn config(&self) -> &TraceConfig {
        &self.config
    }

    /// The injections (hang times are complete once the trace has been iterated to the end).
    pub fn labels(&self) -> &TraceLabels {
        &self.labels
    }

    /// Computes the next gang step into the buffer; false at the end of the trace.
    fn next_step(&mut self) -> bool {
        // Hangs and checkpoint pauses happen between steps.
        if let Some(hang) = self.labels.hangs.get_mut(self.next_hang)
            && self.clock >= hang.planned_at
        {
            hang.last_progress = Some(self.clock);
            self.clock = self.clock + self.config.hang_stall;
            self.next_hang += 1;
            self.warmup_step = true;
            self.labels.hangs[self.next_hang - 1].resumed_at = Some(self.clock);
            while self.next_checkpoint <= self.clock {
                self.next_checkpoint = self.next_checkpoint + self.config.checkpoint_every;
            }
        }
        if self.clock >= self.next_checkpoint {
            let (lo, hi) = self.config.checkpoint_pause;
            let pause = self.rng.uniform(lo.as_nanos() as f64, hi.as_nanos() as f64) as i64;
            let start = self.clock;
            self.clock = self.clock + Duration::from_nanos(pause);
            self.labels.checkpoints.push(CheckpointPause { start, end: self.clock });
            self.next_checkpoint = self.next_checkpoint + self.config.checkpoint_every;
            self.warmup_step = true;
        }
        if self.clock >= self.end {
            return false;
        }
        let hours = self.clock.as_secs_f64() / 3600.0;
        let diurnal_angle = std::f64::consts::TAU * hours / 24.0 + self.diurnal_phase;
        let diurnal_sin = diurnal_angle.sin();
        let base = self.config.base_step.as_secs_f64();
        let warmup = if self.warmup_step { 1.5 } else { 1.0 };
        self.warmup_step = false;
        self.buffer.clear();
        self.cursor = 0;
        let mut slowest: f64 = 0.0;
        for member in 0..self.config.members {
            let mut secs = base
                * warmup
                * (1.0 + self.offsets[member])
                * (1.0 + self.diurnal_amplitude[member] * diurnal_sin)
                * (self.config.jitter_sigma * self.rng.normal()).exp();
            if self.rng.next_f64() < self.config.spike_probability {
                secs *= self.rng.uniform(1.5, 4.0);
            }
            for slow in &self.labels.slowdowns {
                if slow.member == member && slow.start <= self.clock && self.clock < slow.end {
                    secs *= 1.0 + slow.magnitude;
                }
            }
            slowest = slowest.max(secs);
            self.buffer.push(StepReport {
                member,
                at: Time::ZERO, // set below, once the gang's step end is known
                step: Duration::from_nanos((secs * 1e9) as i64),
            });
        }
        self.clock = self.clock + Duration::from_nanos((slowest * 1e9) as i64);
        for report in &mut self.buffer {
            report.at = self.clock;
        }
        true
    }
}

impl Iterator for Trace {
    type Item = StepReport;

    fn next(&mut self) -> Option<StepReport> {
        if self.cursor >= self.buffer.len() && !self.next_step() {
            return None;
        }
        let report = self.buffer[self.cursor];
        self.cursor += 1;
        Some(report)
    }
}

/// Places the slow-downs and hangs: the trace (after a 30-minute settling period) is cut into
/// equal slots, one injection per slot, so injections never overlap.
fn plan_injections(config: &TraceConfig, rng: &mut SplitMix64) -> TraceLabels {
    let mut labels = TraceLabels::default();
    let slowdowns = if config.slowdown_magnitude.is_some() { config.slowdowns } else { 0 };
    let events = slowdowns + config.hangs;
    if events == 0 {
        return labels;
    }
    let settle = Duration::from_mins(30).as_nanos().min(config.length.as_nanos() / 4);
    let usable = config.length.as_nanos() - settle;
    let slot = usable / i64::from(events);
    // Which slots hold hangs: spread them evenly among the slow-downs.
    for event in 0..events {
        let slot_start = settle + slot * i64::from(event);
        let is_hang = config.hangs > 0
            && (u64::from(event) * u64::from(config.hangs)) / u64::from(events)
                != (u64::from(event + 1) * u64::from(config.hangs)) / u64::from(events);
        // Start in the first third of the slot; leave at least 10 minutes quiet at the end.
        let start = slot_start + (rng.next_f64() * slot as f64 / 3.0) as i64;
        if is_hang {
            labels.hangs.push(InjectedHang {
                planned_at: Time::from_nanos(start),
                last_progress: None,
                resumed_at: None,
            });
            continue;
        }
        let Some(magnitude) = config.slowdown_magnitude else { continue };
        let room = (slot_start + slot - start - Duration::from_mins(10).as_nanos()).max(1);
        let (lo, hi) = config.slowdown_duration;
        let lo = (lo.as_nanos() as f64).min(room as f64);
        let hi = (hi.as_nanos() as f64).min(room as f64).max(lo);
        let length = (lo.ln() + rng.next_f64() * (hi.ln() - lo.ln())).exp() as i64;
        labels.slowdowns.push(InjectedSlowdown {
            member: rng.below(config.members),
            magnitude,
            start: Time::from_nanos(start),
            end: Time::from_nanos(start + length),
        });
    }
    labels
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(seed: u64, config: TraceConfig) -> (Vec<StepReport>, TraceLabels) {
        let mut trace = Trace::new(config, seed).unwrap();
        let reports: Vec<StepReport> = trace.by_ref().collect();
        (reports, trace.labels().clone())
    }

    #[test]
    fn same_seed_same_trace_other_seed_other_trace() {
        let config = TraceConfig { members: 8, length: Duration::from_hours(2), ..TraceConfig::default() };
        let (a, _) = small(7, config.clone());
        let (b, _) = small(7, config.clone());
        let (c, _) = small(8, config);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.windows(2).all(|w| w[0].at <= w[1].at), "reports are in time order");
    }

    #[test]
    fn injected_slowdowns_slow_the_labelled_member_by_the_magnitude() {
        let config = TraceConfig {
            members: 8,
            length: Duration::from_hours(6),
            slowdown_magnitude: Some(0.5),
            slowdowns: 3,
            ..TraceConfig::default()
        };
        let (reports, labels) = small(3, config);
        assert_eq!(labels.slowdowns.len(), 3);
        let first = labels.slowdowns[0];
        let mean = |inside: bool| {
            let picked: Vec<f64> = reports
                .iter()
                .filter(|r| r.member == first.member && (first.start < r.at && r.at <= first.end) == inside)
                .map(|r| r.step.as_secs_f64())
                .collect();
            picked.iter().sum::<f64>() / picked.len() as f64
        };
        let ratio = mean(true) / mean(false);
        assert!((1.4..1.6).contains(&ratio), "{ratio}");
    }

    #[test]
    fn hangs_silence_the_gang_and_checkpoints_pause_it() {
        let config =
            TraceConfig { members: 4, length: Duration::from_hours(4), hangs: 2, ..TraceConfig::default() };
        let (reports, labels) = small(11, config);
        assert_eq!(labels.hangs.len(), 2);
        let mut gaps: Vec<i64> = reports.windows(2).map(|w| w[1].at.since(w[0].at).as_nanos()).collect();
        gaps.sort_unstable();
        let longest = *gaps.last().unwrap();
        assert!(longest >= Duration::from_mins(10).as_nanos(), "a hang stalls the gang");
        for hang in &labels.hangs {
            let (last, resumed) = (hang.last_progress.unwrap(), hang.resumed_at.unwrap());
            assert!(!reports.iter().any(|r| r.at > last && r.at <= resumed));
        }
        // Checkpoint pauses: gaps of at least 20 s, several of them.
        let pauses = gaps.iter().filter(|&&g| g >= Duration::from_secs(30).as_nanos()).count();
        assert!(pauses >= 5, "{pauses}");
    }

    #[test]
    fn bad_configs_are_rejected_by_name() {
        let err = Trace::new(TraceConfig { members: 2, ..TraceConfig::default() }, 1).unwrap_err();
        assert!(err.to_string().contains("trace members"), "{err}");
        let err = Trace::new(TraceConfig { slowdown_magnitude: Some(-0.1), ..TraceConfig::default() }, 1)
            .unwrap_err();
        assert!(err.to_string().contains("slowdown_magnitude"), "{err}");
    }
}
