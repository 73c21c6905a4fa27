//! Signal noise: kernel events that do not interrupt any job (recovered NVLink errors, other
//! tenants' application Xids, NIC link flaps that come back), kernel lines lost or delivered
//! late, and a node's kernel-log source going blind for a while; and the step-time model the
//! degradation detectors read (`step_times`).
//!
//! Noise is drawn into the shared trace ([`crate::trace::FaultTrace`]), so every strategy sees the
//! same noise through the same signals as real faults. Every parameter's source, or its being an
//! assumption, is in the bundled scenario files and docs/simulator.md.

use devheal_core::{Duration, Time};
use serde::{Deserialize, Serialize};

use crate::rng::Xoshiro256StarStar;
use crate::scenario::secs;

/// Which hardware a noise event names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoiseScope {
    /// One GPU (its lines carry the GPU's address).
    Device,
    /// A node (its NIC, its host).
    Node,
}

/// Which nodes a noise kind strikes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoisePool {
    All,
    /// The training pool (the gangs' nodes and the spares).
    Training,
    /// The inference pool: nodes shared by several tenants' pods.
    Inference,
}

/// One kind of harmless kernel event.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoiseKindSpec {
    pub name: String,
    /// Where the rate comes from (or that it is an assumption).
    pub source: String,
    /// Events per GPU-hour of the pool's GPUs (a node-scoped kind: per GPU-hour too, so a node
    /// of 8 GPUs sees 8× the rate).
    pub rate_per_gpu_hour: f64,
    pub scope: NoiseScope,
    #[serde(default = "all_pool")]
    pub pool: NoisePool,
    /// The lines the event prints (placeholders as for faults: `{pci}`, `{bdf}`, `{nic}`,
    /// `{pid}`).
    pub kernel_lines: Vec<String>,
    /// Lines printed when the event recovers (a link coming back up), `recover_median_s` later.
    #[serde(default)]
    pub recovery_lines: Vec<String>,
    /// Log-normal time to recovery (median, sigma), for kinds with `recovery_lines`.
    #[serde(default)]
    pub recover_median_s: f64,
    #[serde(default)]
    pub recover_sigma: f64,
}

fn all_pool() -> NoisePool {
    NoisePool::All
}

/// Noise in what the strategies read. Absent: no noise.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoiseSpec {
    #[serde(default)]
    pub kinds: Vec<NoiseKindSpec>,
    /// Probability that one kernel line (of a fault or of noise) never reaches a log reader.
    #[serde(default)]
    pub lost_line_probability: f64,
    /// Probability that a line reaches the readers late, and the log-normal delay (median,
    /// sigma) when it does.
    #[serde(default)]
    pub late_line_probability: f64,
    #[serde(default = "one")]
    pub late_median_s: f64,
    #[serde(default)]
    pub late_sigma: f64,
    /// Episodes per node-hour in which a node's kernel-log source is blind (every line printed
    /// then is lost to every reader), and their log-normal length (median, sigma).
    #[serde(default)]
    pub blind_episodes_per_node_hour: f64,
    #[serde(default = "one")]
    pub blind_median_min: f64,
    #[serde(default)]
    pub blind_sigma: f64,
}

fn one() -> f64 {
    1.0
}

/// Per-window step times of gang members, as the devheal agents would summarise them for the
/// degradation detectors (docs/simulator.md, "Step times and the detectors").
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepTimesSpec {
    /// Sigma of the per-step log-normal jitter (a window's summary carries its interquartile
    /// mean's share of it).
    #[serde(default = "jitter_sigma")]
    pub jitter_sigma: f64,
    /// Sigma of each member's static log-normal offset (hardware lottery).
    #[serde(default = "member_offset_sigma")]
    pub member_offset_sigma: f64,
    /// Transient slow-downs of one member (tens of seconds): episodes per member-hour, their
    /// log-normal length (median, sigma) and excess slow-down (median, sigma).
    #[serde(default = "bursts_per_member_hour")]
    pub bursts_per_member_hour: f64,
    #[serde(default = "burst_median_s")]
    pub burst_median_s: f64,
    #[serde(default = "burst_sigma")]
    pub burst_sigma: f64,
    #[serde(default = "burst_slowdown")]
    pub burst_slowdown: f64,
    #[serde(default = "burst_slowdown_sigma")]
    pub burst_slowdown_sigma: f64,
    /// Members of each gang whose windows are always computed (besides every member with a
    /// slow-down of any kind): the gang median and spread the detector compares with.
    #[serde(default = "panel_members")]
    pub panel_members: u32,
}

fn jitter_sigma() -> f64 {
    0.03
}
fn member_offset_sigma() -> f64 {
    0.01
}
fn bursts_per_member_hour() -> f64 {
    0.05
}
fn burst_median_s() -> f64 {
    20.0
}
fn burst_sigma() -> f64 {
    0.6
}
fn burst_slowdown() -> f64 {
    0.15
}
fn burst_slowdown_sigma() -> f64 {
    0.5
}
fn panel_members() -> u32 {
    32
}

impl Default for StepTimesSpec {
    fn default() -> Self {
        StepTimesSpec {
            jitter_sigma: jitter_sigma(),
            member_offset_sigma: member_offset_sigma(),
            bursts_per_member_hour: bursts_per_member_hour(),
            burst_median_s: burst_median_s(),
            burst_sigma: burst_sigma(),
            burst_slowdown: burst_slowdown(),
            burst_slowdown_sigma: burst_slowdown_sigma(),
            panel_members: panel_members(),
        }
    }
}

/// A field that is wrong, and why (the scenario's validation wraps it with the source name).
pub(crate) type Invalid = (String, &'static str);

fn check(ok: bool, field: impl Into<String>, problem: &'static str) -> Result<(), Invalid> {
    if ok { Ok(()) } else { Err((field.into(), problem)) }
}

fn rate(v: f64) -> bool {
    v.is_finite() && (0.0..=1.0).contains(&v)
}

fn non_negative(v: f64) -> bool {
    v.is_finite() && v >= 0.0
}

fn positive(v: f64) -> bool {
    v.is_finite() && v > 0.0
}

impl NoiseSpec {
    pub(crate) fn validate(&self) -> Result<(), Invalid> {
        let mut names = std::collections::BTreeSet::new();
        for (i, k) in self.kinds.iter().enumerate() {
            let f = |name: &str| format!("noise.kinds[{i}].{name}");
            check(
                !k.name.is_empty() && names.insert(k.name.clone()),
                f("name"),
                "must be non-empty and unique",
            )?;
            check(
                rate(k.rate_per_gpu_hour),
                f("rate_per_gpu_hour"),
                "must be a rate between 0 and 1 per GPU-hour",
            )?;
            check(!k.kernel_lines.is_empty(), f("kernel_lines"), "must list at least one line")?;
            check(k.kernel_lines.len() <= 8, f("kernel_lines"), "at most 8 lines")?;
            check(k.recovery_lines.len() <= 8, f("recovery_lines"), "at most 8 lines")?;
            for (j, line) in k.kernel_lines.iter().chain(&k.recovery_lines).enumerate() {
                check(!line.trim().is_empty(), format!("noise.kinds[{i}].lines[{j}]"), "must not be empty")?;
            }
            if !k.recovery_lines.is_empty() {
                check(positive(k.recover_median_s), f("recover_median_s"), "must be above 0 seconds")?;
            }
            check(non_negative(k.recover_sigma), f("recover_sigma"), "must be a number ≥ 0")?;
        }
        check(
            rate(self.lost_line_probability),
            "noise.lost_line_probability",
            "must be a probability between 0 and 1",
        )?;
        check(
            rate(self.late_line_probability),
            "noise.late_line_probability",
            "must be a probability between 0 and 1",
        )?;
        check(
            self.lost_line_probability + self.late_line_probability <= 1.0,
            "noise.late_line_probability",
            "lost and late probabilities together must not exceed 1",
        )?;
        check(positive(self.late_median_s), "noise.late_median_s", "must be above 0 seconds")?;
        check(non_negative(self.late_sigma), "noise.late_sigma", "must be a number ≥ 0")?;
        check(
            rate(self.blind_episodes_per_node_hour),
            "noise.blind_episodes_per_node_hour",
            "must be a rate between 0 and 1 per node-hour",
        )?;
        check(positive(self.blind_median_min), "noise.blind_median_min", "must be above 0 minutes")?;
        check(non_negative(self.blind_sigma), "noise.blind_sigma", "must be a number ≥ 0")
    }
}

impl StepTimesSpec {
    pub(crate) fn validate(&self) -> Result<(), Invalid> {
        let s = |name: &str| format!("step_times.{name}");
        check(
            non_negative(self.jitter_sigma) && self.jitter_sigma <= 1.0,
            s("jitter_sigma"),
            "must be between 0 and 1",
        )?;
        check(
            non_negative(self.member_offset_sigma) && self.member_offset_sigma <= 1.0,
            s("member_offset_sigma"),
            "must be between 0 and 1",
        )?;
        check(
            rate(self.bursts_per_member_hour),
            s("bursts_per_member_hour"),
            "must be a rate between 0 and 1",
        )?;
        check(positive(self.burst_median_s), s("burst_median_s"), "must be above 0 seconds")?;
        check(non_negative(self.burst_sigma), s("burst_sigma"), "must be a number ≥ 0")?;
        check(
            non_negative(self.burst_slowdown) && self.burst_slowdown <= 10.0,
            s("burst_slowdown"),
            "must be an excess slow-down between 0 and 10 (0.15 = 15 % slower)",
        )?;
        check(non_negative(self.burst_slowdown_sigma), s("burst_slowdown_sigma"), "must be a number ≥ 0")?;
        check((4..=4096).contains(&self.panel_members), s("panel_members"), "must be between 4 and 4096")
    }
}

/// Which of an event's kernel lines reach the readers (bit `i` is line `i`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LineDelivery {
    /// Lines that never arrive.
    pub lost: u8,
    /// Lines that arrive `late_by` after the event.
    pub late: u8,
    pub late_by: Duration,
}

impl LineDelivery {
    /// The lines that arrive at once, of `count`.
    pub fn on_time(&self, count: usize) -> u8 {
        all_lines(count) & !self.lost & !self.late
    }
}

/// A mask of the first `count` lines.
pub fn all_lines(count: usize) -> u8 {
    if count >= 8 { u8::MAX } else { (1u8 << count) - 1 }
}

/// Draws each line's fate: lost, late or on time; all lost while the node's source is blind.
pub(crate) struct LineFate {
    rng: Xoshiro256StarStar,
    lost_p: f64,
    late_p: f64,
    late_median_s: f64,
    late_sigma: f64,
    /// Per node, its blind intervals in time order.
    blind: std::collections::BTreeMap<u32, Vec<(Time, Time)>>,
}

/// Counts of what the noise did to the trace.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct NoiseSummary {
    /// Noise events of each kind (a recovery counts with its event, not again).
    pub events_by_kind: Vec<(String, u64)>,
    pub lines_lost: u64,
    pub lines_late: u64,
    pub blind_episodes: u64,
    /// Lines printed while their node's source was blind (lost to every reader).
    pub lines_blind: u64,
}

impl LineFate {
    /// With no noise section every line arrives.
    pub(crate) fn new(spec: Option<&NoiseSpec>, seed: u64, nodes: u32, end: Time) -> (LineFate, u64) {
        let mut fate = LineFate {
            rng: Xoshiro256StarStar::stream(seed, "noise:lines"),
            lost_p: spec.map_or(0.0, |s| s.lost_line_probability),
            late_p: spec.map_or(0.0, |s| s.late_line_probability),
            late_median_s: spec.map_or(1.0, |s| s.late_median_s),
            late_sigma: spec.map_or(0.0, |s| s.late_sigma),
            blind: std::collections::BTreeMap::new(),
        };
        let mut episodes = 0;
        if let Some(s) = spec
            && s.blind_episodes_per_node_hour > 0.0
        {
            let mut rng = Xoshiro256StarStar::stream(seed, "noise:blind");
            let mut place = Xoshiro256StarStar::stream(seed, "noise:blind:place");
            crate::trace::poisson_times(
                &mut rng,
                s.blind_episodes_per_node_hour * f64::from(nodes),
                end,
                |at| {
                    let node = place.below(u64::from(nodes)) as u32;
                    let minutes = place.lognormal(s.blind_median_min, s.blind_sigma);
                    fate.blind.entry(node).or_default().push((at, at + secs(minutes * 60.0)));
                    episodes += 1;
                },
            );
        }
        (fate, episodes)
    }

    fn blind_at(&self, node: u32, at: Time) -> bool {
        self.blind.get(&node).is_some_and(|v| v.iter().any(|&(from, to)| from <= at && at < to))
    }

    /// The fate of the `count` lines an event on `node` prints at `at`.
    pub(crate) fn draw(
        &mut self,
        node: u32,
        at: Time,
        count: usize,
        summary: &mut NoiseSummary,
    ) -> LineDelivery {
        let mut d = LineDelivery::default();
        if count == 0 {
            return d;
        }
        if self.blind_at(node, at) {
            d.lost = all_lines(count);
            summary.lines_blind += count as u64;
            return d;
        }
        if self.lost_p <= 0.0 && self.late_p <= 0.0 {
            return d;
        }
        for i in 0..count.min(8) {
            let u = self.rng.uniform();
            if u < self.lost_p {
                d.lost |= 1 << i;
                summary.lines_lost += 1;
            } else if u < self.lost_p + self.late_p {
                d.late |= 1 << i;
                summary.lines_late += 1;
            }
        }
        if d.late != 0 {
            d.late_by = secs(self.rng.lognormal(self.late_median_s, self.late_sigma));
        }
        d
    }
}
