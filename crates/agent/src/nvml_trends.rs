//! What a GPU's counters say over time: error *rates* and a temperature *trend*, which one
//! sample cannot show. NVML's counters are cumulative (since the driver loaded, or for life), so
//! a healthy GPU with an old burst of corrected errors has a large count and a zero rate: judging
//! the count would flag healthy GPUs for ever (a peer tool's lifetime NVLink CRC counter did just
//! that to healthy H100s). Each condition is Degraded evidence while it holds over the window and
//! clears when it no longer does, like every NVML condition.
//!
//! Pure: samples carry their own time. The thresholds are our assumptions, not vendor figures;
//! each is a setting.

use std::collections::{BTreeMap, VecDeque};

use devheal_core::{Health, HealthSource};

use crate::health::Evidence;
use crate::nvml::GpuSample;
use crate::nvml_evidence::codes;

/// Thresholds of the trend conditions.
#[derive(Clone, Debug, PartialEq)]
pub struct TrendConfig {
    /// Rates are measured over the samples of this window (milliseconds)...
    pub window_ms: i64,
    /// ...once it spans at least this much (milliseconds).
    pub min_span_ms: i64,
    /// PCIe replays per minute (link-level retransmissions: a marginal link or riser).
    pub pcie_replays_per_min: f64,
    /// NVLink CRC (flit and data), replay and recovery errors per minute, summed over links.
    pub nvlink_errors_per_min: f64,
    /// Corrected (single-bit) ECC errors per hour: memory that is wearing out.
    pub corrected_ecc_per_hour: f64,
    /// A rise of at least this many °C over the window, ending at or above `hot_c`.
    pub temperature_rise_c: u32,
    pub hot_c: u32,
}

impl Default for TrendConfig {
    fn default() -> Self {
        TrendConfig {
            window_ms: 10 * 60_000,
            min_span_ms: 2 * 60_000,
            pcie_replays_per_min: 8.0,
            nvlink_errors_per_min: 60.0,
            corrected_ecc_per_hour: 100.0,
            temperature_rise_c: 10,
            hot_c: 80,
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Point {
    at_ms: i64,
    pcie_replays: Option<u64>,
    nvlink_errors: Option<u64>,
    corrected_ecc: Option<u64>,
    temperature_c: Option<u32>,
}

fn point(s: &GpuSample) -> Point {
    let nvlink: Option<u64> = if s.nvlinks.is_empty() {
        None
    } else {
        s.nvlinks
            .iter()
            .flat_map(|l| [l.crc_flit_errors, l.crc_data_errors, l.replay_errors, l.recovery_errors])
            .try_fold(0u64, |sum, v| v.map(|v| sum.saturating_add(v)))
    };
    Point {
        at_ms: s.at_unix_ms,
        pcie_replays: s.pcie.replay_counter,
        nvlink_errors: nvlink,
        corrected_ecc: s.ecc.volatile_corrected,
        temperature_c: s.temperature_c,
    }
}

/// The samples of each GPU within the window, and the conditions they show.
#[derive(Debug, Default)]
pub struct NvmlTrends {
    config: TrendConfig,
    history: BTreeMap<String, VecDeque<Point>>,
}

impl NvmlTrends {
    pub fn new(config: TrendConfig) -> Self {
        NvmlTrends { config, history: BTreeMap::new() }
    }

    /// Add a sample; the trend conditions it completes. A sample older than the last one of
    /// its GPU (a clock step) restarts that GPU's history; a counter that went down (driver
    /// reload, reset) restarts the rate of that counter from the new value.
    pub fn observe(&mut self, s: &GpuSample) -> Vec<Evidence> {
        let c = &self.config;
        let p = point(s);
        let h = self.history.entry(s.uuid.clone()).or_default();
        if h.back().is_some_and(|last| last.at_ms >= p.at_ms) {
            h.clear();
        }
        h.push_back(p);
        while h.front().is_some_and(|f| p.at_ms - f.at_ms > c.window_ms) {
            h.pop_front();
        }
        let mut out = Vec::new();
        let rate = |get: fn(&Point) -> Option<u64>, per_ms: f64| -> Option<(f64, u64, i64)> {
            // From the earliest point after the last counter reset.
            let now = get(&p)?;
            let mut from: Option<&Point> = None;
            for q in h.iter().rev().skip(1) {
                match get(q) {
                    Some(v) if v <= now => from = Some(q),
                    _ => break,
                }
            }
            let from = from?;
            let span = p.at_ms - from.at_ms;
            if span < c.min_span_ms {
                return None;
            }
            let delta = now - get(from)?;
            Some((delta as f64 * per_ms / span as f64, delta, span))
        };
        let minutes = |ms: i64| ms as f64 / 60_000.0;
        if let Some((r, delta, span)) = rate(|q| q.pcie_replays, 60_000.0)
            && r > c.pcie_replays_per_min
        {
            out.push(degraded(
                codes::PCIE_REPLAY_RATE,
                format!(
                    "PCIe replays at {r:.1} per minute ({delta} in {:.0} min; threshold {})",
                    minutes(span),
                    c.pcie_replays_per_min
                ),
            ));
        }
        if let Some((r, delta, span)) = rate(|q| q.nvlink_errors, 60_000.0)
            && r > c.nvlink_errors_per_min
        {
            out.push(degraded(
                codes::NVLINK_ERROR_RATE,
                format!(
                    "NVLink CRC/replay/recovery errors at {r:.0} per minute ({delta} in {:.0} min; threshold {})",
                    minutes(span),
                    c.nvlink_errors_per_min
                ),
            ));
        }
        if let Some((r, delta, span)) = rate(|q| q.corrected_ecc, 3_600_000.0)
            && r > c.corrected_ecc_per_hour
        {
            out.push(degraded(
                codes::CORRECTED_ECC_RATE,
                format!(
                    "corrected ECC errors at {r:.0} per hour ({delta} in {:.0} min; threshold {})",
                    minutes(span),
                    c.corrected_ecc_per_hour
                ),
            ));
        }
        if let Some(now_c) = p.temperature_c
            && now_c >= c.hot_c
            && let Some((lowest, at)) =
                h.iter().filter_map(|q| q.temperature_c.map(|t| (t, q.at_ms))).min_by_key(|(t, _)| *t)
            && now_c.saturating_sub(lowest) >= c.temperature_rise_c
            && p.at_ms - at >= c.min_span_ms
        {
            out.push(degraded(
                codes::TEMPERATURE_RISING,
                format!(
                    "temperature rose from {lowest} °C to {now_c} °C in {:.0} min (cooling?)",
                    minutes(p.at_ms - at)
                ),
            ));
        }
        out
    }

    /// Forget a GPU that left the inventory.
    pub fn forget(&mut self, uuid: &str) {
        self.history.remove(uuid);
    }
}

fn degraded(code: u32, message: String) -> Evidence {
    Evidence { source: HealthSource::Nvml, code: Some(code), health: Health::Degraded, message }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nvml::{NvLinkSample, PcieLink};

    fn sample(min: i64, replays: u64, nvlink: u64, ecc: u64, temp: u32) -> GpuSample {
        let mut s = GpuSample {
            uuid: "GPU-1".into(),
            at_unix_ms: 1_700_000_000_000 + min * 60_000,
            temperature_c: Some(temp),
            pcie: PcieLink { replay_counter: Some(replays), ..PcieLink::default() },
            nvlinks: vec![NvLinkSample {
                link: 0,
                active: true,
                replay_errors: Some(0),
                recovery_errors: Some(0),
                crc_flit_errors: Some(nvlink),
                crc_data_errors: Some(0),
            }],
            ..GpuSample::default()
        };
        s.ecc.volatile_corrected = Some(ecc);
        s
    }

    fn codes(e: &[Evidence]) -> Vec<u32> {
        e.iter().filter_map(|e| e.code).collect()
    }

    /// Large lifetime counts that do not grow are not a condition; the same counts growing fast are.
    #[test]
    fn rates_not_counts() {
        let mut t = NvmlTrends::new(TrendConfig::default());
        for m in 0..10 {
            assert!(t.observe(&sample(m, 50_000, 9_000_000, 70_000, 60)).is_empty(), "minute {m}");
        }
        let mut t = NvmlTrends::new(TrendConfig::default());
        let mut last = Vec::new();
        for m in 0..10 {
            let m64 = m as u64;
            last = t.observe(&sample(m, 50_000 + 20 * m64, 9_000_000 + 500 * m64, 70_000 + 10 * m64, 60));
            if m < 2 {
                assert!(last.is_empty(), "too short a span at minute {m}: {last:?}");
            }
        }
        assert_eq!(
            codes(&last),
            vec![codes::PCIE_REPLAY_RATE, codes::NVLINK_ERROR_RATE, codes::CORRECTED_ECC_RATE]
        );
        assert!(last.iter().all(|e| e.health == Health::Degraded));
        assert!(last[0].message.contains("20.0 per minute"), "{}", last[0].message);
    }

    /// Below the thresholds nothing is reported; a burst that stops clears once it leaves the window.
    #[test]
    fn slow_rates_and_old_bursts_clear() {
        let mut t = NvmlTrends::new(TrendConfig::default());
        for m in 0..10 {
            let m64 = m as u64;
            assert!(t.observe(&sample(m, 5 * m64, 30 * m64, m64, 60)).is_empty(), "minute {m}");
        }
        let mut t = NvmlTrends::new(TrendConfig::default());
        let mut e = Vec::new();
        for m in 0..30 {
            let replays = if m < 5 { 100 * m as u64 } else { 500 };
            e = t.observe(&sample(m, replays, 0, 0, 60));
            if m == 4 {
                assert_eq!(codes(&e), vec![codes::PCIE_REPLAY_RATE]);
            }
        }
        assert!(e.is_empty(), "the burst left the 10-minute window: {e:?}");
    }

    /// A counter that goes down (driver reload) is a new start, not a negative rate or a panic.
    #[test]
    fn counter_reset_restarts_the_rate() {
        let mut t = NvmlTrends::new(TrendConfig::default());
        for m in 0..5 {
            t.observe(&sample(m, 10_000 + 100 * m as u64, 0, 0, 60));
        }
        assert!(t.observe(&sample(5, 3, 0, 0, 60)).is_empty());
        assert!(t.observe(&sample(6, 4, 0, 0, 60)).is_empty(), "one minute after the reset: too short");
        let e = t.observe(&sample(8, 100, 0, 0, 60));
        assert_eq!(codes(&e), vec![codes::PCIE_REPLAY_RATE], "97 in 3 min after the reset");
        // A sample from the past (a clock step) restarts the history.
        assert!(t.observe(&sample(1, 100, 0, 0, 60)).is_empty());
    }

    #[test]
    fn a_hot_rising_temperature_is_reported_and_a_warm_steady_one_is_not() {
        let mut t = NvmlTrends::new(TrendConfig::default());
        for m in 0..10 {
            assert!(t.observe(&sample(m, 0, 0, 0, 84)).is_empty());
        }
        let mut t = NvmlTrends::new(TrendConfig::default());
        let mut e = Vec::new();
        for (m, temp) in [(0, 70), (2, 74), (4, 78), (6, 83)] {
            e = t.observe(&sample(m, 0, 0, 0, temp));
        }
        assert_eq!(codes(&e), vec![codes::TEMPERATURE_RISING]);
        assert!(e[0].message.contains("from 70 °C to 83 °C"), "{}", e[0].message);
    }

    /// Missing counters (unsupported on this GPU) give no condition.
    #[test]
    fn unsupported_counters_are_skipped() {
        let mut t = NvmlTrends::new(TrendConfig::default());
        for m in 0..10 {
            let mut s = sample(m, 0, 0, 0, 50);
            s.pcie.replay_counter = None;
            s.nvlinks[0].crc_flit_errors = None;
            s.ecc.volatile_corrected = None;
            s.temperature_c = None;
            assert!(t.observe(&s).is_empty());
        }
    }
}
