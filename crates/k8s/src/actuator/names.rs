//! Names: DRA device ids, DeviceTaintRule and taint names, label values, Event reasons.

use super::*;

/// The DRA device a device key names, in whichever shape it was written
/// ([`devheal_core::identity::dra_device`]): `<driver>/<pool>/<device>` (the kubelet's
/// ResourceID format, which the agent publishes and a pod's status carries under
/// `claim:<claim>`, or the NVIDIA driver's CDI id of the claim's device there), or
/// `<pool>/<device>` under the driver's name (PodResources). Driver names are DNS subdomains and
/// device names DNS labels (neither has a slash); pool names may have slashes. Device-plugin ids
/// (a GPU UUID, a legacy MIG UUID) and other CDI ids are not DRA devices.
pub fn dra_device(device: &DeviceKey) -> Option<devheal_core::DraDevice> {
    // A pod status' CDI id of a claim's device is one too (its pool is the node's name).
    let key = devheal_core::canonical_key(device);
    devheal_core::identity::dra_device(&key.resource, &key.id)
}

/// 64-bit FNV-1a: a small, stable hash for name suffixes (std's hasher may change between
/// Rust releases, and names must not).
pub(super) fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            // A separator no UTF-8 text contains, so that ("ab", "c") and ("a", "bc") differ.
            h ^= 0xff;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        for b in part.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

pub(super) fn device_hash(device: &DeviceKey) -> String {
    format!("{:08x}", fnv1a(&[&device.node, &device.resource, &device.id]) >> 32)
}

/// The DeviceTaintRule of a device: `devheal-<node>-<id>` as a DNS-1123 label (lower case,
/// `[a-z0-9-]`, at most 63 characters) ending in 8 hex digits of a hash of the whole key, so
/// that two devices whose names sanitise alike still get two rules.
pub fn device_taint_rule_name(device: &DeviceKey) -> String {
    let raw = format!("devheal-{}-{}", device.node, device.id);
    let mut stem: String =
        raw.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    stem.truncate(63 - 9);
    let stem = stem.trim_end_matches('-');
    format!("{stem}-{}", device_hash(device))
}

/// The node taint key of a quarantined device, where no DeviceTaintRule can be used: one key
/// per device (a node's taints are unique by key and effect).
pub fn node_quarantine_taint_key(device: &DeviceKey) -> String {
    format!("{DEVICE_QUARANTINE_TAINT}-{}", device_hash(device))
}

/// `s` as a label value: `[A-Za-z0-9._-]`, at most 63, starting and ending alphanumeric.
pub(super) fn label_value(s: &str) -> String {
    let mapped: String = s
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '-' })
        .take(63)
        .collect();
    mapped.trim_matches(|c: char| !c.is_ascii_alphanumeric()).to_string()
}

pub(super) fn is_label_value(s: &str) -> bool {
    !s.is_empty() && label_value(s) == s
}

/// `reset_device` → `ResetDevice`.
pub(super) fn camel(s: &str) -> String {
    s.split('_')
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut cs = w.chars();
            cs.next().map(|c| c.to_ascii_uppercase().to_string() + cs.as_str()).unwrap_or_default()
        })
        .collect()
}

pub(super) fn camel_static(label: &str) -> &'static str {
    match label {
        "mark_pod" => "MarkPod",
        "evict_pod" => "Evict",
        "restart_gang" => "RestartGang",
        "quarantine_device" => "Quarantine",
        "release_device" => "Release",
        "cordon_node" => "Cordon",
        "uncordon_node" => "Uncordon",
        "request_repair" => "RequestRepair",
        "withdraw_repair" => "WithdrawRepair",
        "fail_workload" => "FailWorkload",
        _ => "Report",
    }
}
