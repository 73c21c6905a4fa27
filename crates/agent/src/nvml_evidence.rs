//! What an NVML sample says about a GPU's health: each condition the sample shows becomes one
//! piece of [`Evidence`] with a stable code, and a condition the next sample no longer shows
//! clears (NVML reports state, so the agent clears every NVML code not in the latest list).
//!
//! Pure: the thresholds are the ones NVIDIA documents for these counters (a failed row remap
//! means replace the GPU; a pending remap or pending page retirement needs a reset; an
//! uncorrectable ECC error since the driver loaded is a memory fault), plus throughput
//! conditions that do not stop the GPU but slow it (PCIe link trained below its maximum,
//! hardware slowdown, an NVLink down beside active ones).

use devheal_core::{Health, HealthSource};

use crate::health::Evidence;
use crate::nvml::GpuSample;

/// Stable codes of NVML conditions (the `code` of an NVML reason in NodeDeviceHealth).
pub mod codes {
    pub const ROW_REMAP_FAILURE: u32 = 1;
    pub const ROW_REMAP_PENDING: u32 = 2;
    pub const UNCORRECTABLE_ECC: u32 = 3;
    pub const PAGE_RETIREMENT_PENDING: u32 = 4;
    pub const PCIE_LINK_DOWNTRAINED: u32 = 5;
    pub const HARDWARE_SLOWDOWN: u32 = 6;
    pub const NVLINK_DOWN: u32 = 7;
    // Rates and trends over several samples (`crate::nvml_trends`).
    pub const PCIE_REPLAY_RATE: u32 = 8;
    pub const NVLINK_ERROR_RATE: u32 = 9;
    pub const CORRECTED_ECC_RATE: u32 = 10;
    pub const TEMPERATURE_RISING: u32 = 11;
}

/// Throttle reasons that mean the hardware is holding the GPU back (not idling or a setting).
const SLOWDOWN_REASONS: [&str; 4] =
    ["HW_SLOWDOWN", "HW_THERMAL_SLOWDOWN", "HW_POWER_BRAKE_SLOWDOWN", "SW_THERMAL_SLOWDOWN"];

fn evidence(code: u32, health: Health, message: String) -> Evidence {
    Evidence { source: HealthSource::Nvml, code: Some(code), health, message }
}

/// The conditions one sample shows.
pub fn evidence_from_sample(s: &GpuSample) -> Vec<Evidence> {
    let mut out = Vec::new();
    if s.row_remapping.failure == Some(true) {
        out.push(evidence(
            codes::ROW_REMAP_FAILURE,
            Health::Unhealthy,
            "row remapping failed: the GPU's memory cannot be repaired, replace the GPU".into(),
        ));
    }
    if s.row_remapping.pending == Some(true) {
        out.push(evidence(
            codes::ROW_REMAP_PENDING,
            Health::Degraded,
            "a row remap is pending: it takes effect at the next GPU reset".into(),
        ));
    }
    if let Some(n) = s.ecc.volatile_uncorrected.filter(|n| *n > 0) {
        out.push(evidence(
            codes::UNCORRECTABLE_ECC,
            Health::Unhealthy,
            format!("{n} uncorrectable ECC error(s) since the driver loaded"),
        ));
    }
    if s.retired_pages.pending == Some(true) {
        out.push(evidence(
            codes::PAGE_RETIREMENT_PENDING,
            Health::Degraded,
            "a memory page retirement is pending: it takes effect at the next GPU reset".into(),
        ));
    }
    // An idle GPU may drop its PCIe generation to save power: judge the generation only under
    // load, the width always (a lane that is gone stays gone).
    let idle = s.throttle_reasons.iter().any(|r| r == "GPU_IDLE");
    let p = &s.pcie;
    let narrow = matches!((p.width, p.max_width), (Some(w), Some(m)) if w < m);
    let slow_gen = !idle && matches!((p.generation, p.max_generation), (Some(g), Some(m)) if g < m);
    if narrow || slow_gen {
        out.push(evidence(
            codes::PCIE_LINK_DOWNTRAINED,
            Health::Degraded,
            format!(
                "PCIe link trained at gen {} x{} of gen {} x{}",
                opt(p.generation),
                opt(p.width),
                opt(p.max_generation),
                opt(p.max_width)
            ),
        ));
    }
    let slowdowns: Vec<&str> =
        s.throttle_reasons.iter().map(String::as_str).filter(|r| SLOWDOWN_REASONS.contains(r)).collect();
    if !slowdowns.is_empty() {
        out.push(evidence(
            codes::HARDWARE_SLOWDOWN,
            Health::Degraded,
            match (s.clocks.sm_mhz, s.clocks.sm_application_mhz) {
                (Some(sm), Some(app)) if app > 0 && sm < app => format!(
                    "clocks held back by {}: SM at {sm} MHz, {:.0} % below its application clock of {app} MHz",
                    slowdowns.join(", "),
                    f64::from(app - sm) * 100.0 / f64::from(app)
                ),
                _ => format!("clocks held back by {}", slowdowns.join(", ")),
            },
        ));
    }
    let active = s.nvlinks.iter().filter(|l| l.active).count();
    let down: Vec<String> = s.nvlinks.iter().filter(|l| !l.active).map(|l| l.link.to_string()).collect();
    if active > 0 && !down.is_empty() {
        out.push(evidence(
            codes::NVLINK_DOWN,
            Health::Degraded,
            format!("NVLink link(s) {} down while {active} are active", down.join(", ")),
        ));
    }
    out
}

fn opt(v: Option<u32>) -> String {
    v.map_or_else(|| "?".to_string(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nvml::{NvLinkSample, PcieLink, RowRemapping};

    fn healthy_h200() -> GpuSample {
        // Shaped after the real H200 sample in docs/benchmarks.md (idle, everything clean).
        GpuSample {
            uuid: "GPU-dd421d2c".into(),
            pci_address: "0000:00:06.0".into(),
            throttle_reasons: vec!["GPU_IDLE".into()],
            pcie: PcieLink {
                generation: Some(5),
                max_generation: Some(5),
                width: Some(16),
                max_width: Some(16),
                replay_counter: Some(0),
            },
            row_remapping: RowRemapping {
                corrected_rows: Some(0),
                uncorrected_rows: Some(0),
                pending: Some(false),
                failure: Some(false),
            },
            ..GpuSample::default()
        }
    }

    fn codes_of(s: &GpuSample) -> Vec<(Option<u32>, Health)> {
        evidence_from_sample(s).into_iter().map(|e| (e.code, e.health)).collect()
    }

    #[test]
    fn a_clean_gpu_gives_no_evidence() {
        assert!(evidence_from_sample(&healthy_h200()).is_empty());
    }

    #[test]
    fn memory_conditions() {
        let mut s = healthy_h200();
        s.row_remapping.failure = Some(true);
        s.row_remapping.pending = Some(true);
        s.ecc.volatile_uncorrected = Some(2);
        assert_eq!(
            codes_of(&s),
            vec![
                (Some(codes::ROW_REMAP_FAILURE), Health::Unhealthy),
                (Some(codes::ROW_REMAP_PENDING), Health::Degraded),
                (Some(codes::UNCORRECTABLE_ECC), Health::Unhealthy),
            ]
        );
    }

    #[test]
    fn pcie_generation_counts_only_under_load_width_always() {
        let mut s = healthy_h200();
        s.pcie.generation = Some(1); // idle power saving
        assert!(evidence_from_sample(&s).is_empty());
        s.throttle_reasons.clear(); // under load
        assert_eq!(codes_of(&s), vec![(Some(codes::PCIE_LINK_DOWNTRAINED), Health::Degraded)]);
        let mut s = healthy_h200();
        s.pcie.width = Some(8);
        let e = evidence_from_sample(&s);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].message, "PCIe link trained at gen 5 x8 of gen 5 x16");
    }

    #[test]
    fn hardware_slowdown_and_nvlink() {
        let mut s = healthy_h200();
        s.throttle_reasons = vec!["SW_POWER_CAP".into(), "HW_THERMAL_SLOWDOWN".into()];
        s.nvlinks = vec![
            NvLinkSample { link: 0, active: true, ..NvLinkSample::default() },
            NvLinkSample { link: 1, active: false, ..NvLinkSample::default() },
        ];
        let e = evidence_from_sample(&s);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].message, "clocks held back by HW_THERMAL_SLOWDOWN");
        assert_eq!(e[1].message, "NVLink link(s) 1 down while 1 are active");
        // A GPU with no active NVLink at all (a PCIe card) is not degraded for it.
        s.nvlinks[0].active = false;
        assert_eq!(evidence_from_sample(&s).len(), 1);
    }
}
