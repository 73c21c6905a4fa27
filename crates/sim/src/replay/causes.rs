//! Free-text causes of a trace's records mapped to the scenario's fault classes.

use crate::scenario::Scenario;

/// Free-text causes → the scenario's fault classes. The cause is lower-cased and split into
/// words (letters and digits); a rule matches when its words appear together, in order. Rules
/// are tried top to bottom and the first match wins, so the specific ones (an Xid number, HBM)
/// come before the generic ones ("gpu"). A rule whose class the scenario lacks is skipped.
pub const CAUSE_RULES: &[(&[&str], &str)] = &[
    (
        &[
            "xid 79",
            "fell off the bus",
            "fallen off the bus",
            "off the bus",
            "gpu lost",
            "gpu device not found",
        ],
        "gpu_fell_off_bus",
    ),
    (&["xid 74", "nvlink", "sxid", "nvswitch"], "gpu_nvlink"),
    (&["xid 119", "xid 120", "gsp", "gpu system processor"], "gpu_gsp"),
    (&["xid 95", "sram", "uncontained"], "gpu_sram"),
    (
        &[
            "xid 48",
            "xid 63",
            "xid 64",
            "xid 94",
            "hbm",
            "hbm3",
            "dbe",
            "double bit",
            "ecc",
            "row remap",
            "row remapper",
            "gpu memory",
        ],
        "gpu_hbm",
    ),
    (&["thermal", "temperature", "overheat", "overheating"], "gpu_thermal"),
    (&["sdc", "silent data corruption", "nan"], "silent_data_corruption"),
    (
        &["xid 13", "xid 31", "xid 43", "illegal memory access", "mmu fault", "cuda error"],
        "software_bug_cuda",
    ),
    (&["nccl", "watchdog", "collective timeout"], "nccl_timeout_unknown"),
    (&["nic", "rnic", "hca", "mlx5", "network adapter"], "nic"),
    (&["link down", "link flap", "cable", "switch", "network", "infiniband", "roce"], "network_switch_cable"),
    (&["maintenance", "drain", "drained"], "host_maintenance"),
    (&["cpu", "mce", "machine check", "system memory", "dimm", "host memory"], "host_cpu_memory"),
    (
        &[
            "ssd",
            "disk",
            "nvme",
            "psu",
            "power supply",
            "power",
            "chassis",
            "fan",
            "motherboard",
            "io board",
            "io expansion",
            "riser",
            "raid",
            "bmc",
        ],
        "host_other",
    ),
    (&["software", "bug", "dependency", "application", "user error", "oom"], "software_bug"),
    (&["gpu", "xid", "faulty gpu"], "gpu_fell_off_bus"),
];

/// The words of a text: lower case, split at anything that is not a letter or a digit.
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase).collect()
}

/// The class (and the rule's pattern) a free-text cause maps to in `scenario`, if any rule whose
/// class the scenario has matches. An exact class name maps to itself.
pub fn map_cause(cause: &str, scenario: &Scenario) -> Option<(u16, &'static str)> {
    let index = |name: &str| scenario.faults.iter().position(|f| f.name == name).map(|i| i as u16);
    if let Some(i) = index(cause.trim()) {
        return Some((i, "class name"));
    }
    let have = words(cause);
    for (patterns, class) in CAUSE_RULES {
        let Some(i) = index(class) else { continue };
        for pattern in *patterns {
            let want: Vec<&str> = pattern.split(' ').collect();
            if have.windows(want.len()).any(|w| w.iter().zip(&want).all(|(a, b)| a == b)) {
                return Some((i, pattern));
            }
        }
    }
    None
}
