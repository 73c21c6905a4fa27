//! What a restarted agent takes from its own last report.
//!
//! Some faults leave no trace the agent can read again after a restart: a kernel Xid record
//! rotates out of the ring buffer, a GPU that fell off the bus is no longer enumerated. An agent
//! that started from its sources alone would publish such a device Healthy, and the controller
//! would release it after probation. So at start the agent reads the NodeDeviceHealth it last
//! published ([`crate::publish::Publisher::last_published`]) and, if the node has not rebooted
//! since (same boot id), keeps every device it had published Unhealthy or Degraded as it was,
//! with the same reasons, until there is positive evidence of recovery:
//!
//! - a reboot (a new boot id) or a device reset drops every reason, as it does for live ones;
//! - a source that reports its full state (an NVML sample, the device plugin's list) and sees
//!   the device healthy clears that source's reason, as it would have before the restart;
//! - a kernel-log reason has no "cleared" message: only a reset or a reboot clears it, so a
//!   rotated ring buffer never releases a device.
//!
//! A kept device no source lists any more (a GPU that is gone) stays in the inventory, with what
//! the last report said about it, while it is not Healthy.
//!
//! Notes the tracker makes itself (probation, blindness: source `operator`) are not reasons:
//! a device on probation starts its probation again from the restart.

use std::collections::BTreeMap;

use devheal_core::{Health, HealthReason, HealthSource, Time};
use devheal_k8s::crd::NodeDeviceHealthStatus;
use devheal_k8s::pod::time_from_k8s;

use crate::health::DeviceHealthTracker;
use crate::snapshot::InventoryDevice;

/// The devices a restarted agent keeps from its last report, by id.
pub type Kept = BTreeMap<String, InventoryDevice>;

/// Put the last report's bad devices back into `tracker` when it is of this boot, and return
/// them (for the inventory). A report of another boot, or of an unknown one when this boot is
/// known, keeps nothing.
pub fn restore(
    tracker: &mut DeviceHealthTracker,
    last: Option<&NodeDeviceHealthStatus>,
    boot_id: Option<&str>,
    now: Time,
) -> Kept {
    let mut kept = Kept::new();
    let Some(status) = last else { return kept };
    if status.boot_id.as_deref() != boot_id {
        return kept;
    }
    for d in &status.devices {
        if !matches!(d.health, Health::Unhealthy | Health::Degraded) {
            continue;
        }
        let reasons: Vec<HealthReason> = d
            .reasons
            .iter()
            .filter(|r| !matches!(r.source, HealthSource::Operator))
            .map(|r| HealthReason {
                source: r.source,
                code: r.code,
                message: r.message.clone(),
                first_seen: time_from_k8s(&r.first_seen),
                last_seen: time_from_k8s(&r.last_seen),
                count: r.count,
            })
            .collect();
        let since = d.since.as_ref().map(time_from_k8s).unwrap_or(now);
        // A reason the report carried from a device's parent is the parent's: it comes back
        // with the parent (a MIG device keeps only its own).
        let reasons: Vec<HealthReason> = if d.parent.is_some() {
            reasons.into_iter().filter(|r| !r.message.starts_with("on its parent ")).collect()
        } else {
            reasons
        };
        let key = tracked_key(d);
        if !reasons.is_empty() || d.parent.is_none() {
            tracker.restore(&key, d.health, &reasons, since, now);
        }
        let dra = (key != d.id).then(|| d.id.clone());
        kept.insert(
            key.clone(),
            InventoryDevice {
                id: key,
                resource: d.resource.clone(),
                vendor: d.vendor,
                model: d.model.clone(),
                pci_address: d.pci_address.clone(),
                parent: d.parent.as_deref().map(|p| parent_key(status, p)),
                dra,
                aliases: d.aliases.iter().cloned().collect(),
            },
        );
    }
    kept
}

/// The key a reported device was tracked under ([`crate::identity`]): a device published under
/// its DRA id is tracked under its UUID, which the report lists among its aliases.
fn tracked_key(d: &devheal_k8s::crd::DeviceStatus) -> String {
    if devheal_core::identity::dra_device(&d.resource, &d.id).is_none() {
        return d.id.clone();
    }
    let uuid = d.aliases.iter().find(|a| {
        matches!(
            devheal_core::identity::parse_device_id(&d.resource, a).id,
            devheal_core::identity::DeviceId::GpuUuid(_) | devheal_core::identity::DeviceId::MigUuid(_)
        )
    });
    uuid.cloned().unwrap_or_else(|| d.id.clone())
}

/// The key of the reported device published as `parent`.
fn parent_key(status: &NodeDeviceHealthStatus, parent: &str) -> String {
    status.devices.iter().find(|p| p.id == parent).map_or_else(|| parent.to_string(), tracked_key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::{Evidence, TrackerConfig};
    use serde_json::json;

    fn status(boot: Option<&str>) -> NodeDeviceHealthStatus {
        serde_json::from_value(json!({
            "bootId": boot,
            "devices": [
                {"id": "GPU-dead", "resource": "nvidia.com/gpu", "health": "Unhealthy", "since": "2026-12-04T10:00:00Z",
                 "reasons": [{"source": "kernel_log", "code": 79, "message": "GPU has fallen off the bus",
                              "firstSeen": "2026-12-04T10:00:00Z", "lastSeen": "2026-12-04T10:00:00Z", "count": 1}]},
                {"id": "GPU-plugin", "resource": "nvidia.com/gpu", "health": "Unhealthy",
                 "reasons": [{"source": "device_plugin", "message": "Unhealthy",
                              "firstSeen": "2026-12-04T10:00:00Z", "lastSeen": "2026-12-04T10:00:00Z", "count": 1}]},
                {"id": "GPU-probation", "resource": "nvidia.com/gpu", "health": "Degraded",
                 "reasons": [{"source": "operator", "message": "probation: no fault since …",
                              "firstSeen": "2026-12-04T10:00:00Z", "lastSeen": "2026-12-04T10:00:00Z", "count": 1}]},
                {"id": "GPU-fine", "resource": "nvidia.com/gpu", "health": "Healthy"}
            ]
        }))
        .expect("a status")
    }

    fn health(t: &DeviceHealthTracker, id: &str) -> Option<Health> {
        t.verdict(id).map(|v| v.health)
    }

    const PROBATION: i64 = 600;

    #[test]
    fn a_restart_keeps_bad_devices_until_positive_evidence() {
        let now = Time::from_secs(1_800_000_000);
        let mut t = DeviceHealthTracker::new(TrackerConfig::default(), Some("boot-1".into()));
        let kept = restore(&mut t, Some(&status(Some("boot-1"))), Some("boot-1"), now);
        assert_eq!(kept.keys().collect::<Vec<_>>(), ["GPU-dead", "GPU-plugin", "GPU-probation"]);
        assert_eq!(health(&t, "GPU-fine"), None, "a healthy device is left to the sources");
        // The kernel-log reason stands however long: the ring buffer may have rotated.
        t.tick(now + devheal_core::Duration::from_secs(100 * PROBATION));
        assert_eq!(health(&t, "GPU-dead"), Some(Health::Unhealthy));
        let v = t.verdict("GPU-dead").expect("kept");
        assert_eq!((v.reasons[0].source, v.reasons[0].code), (HealthSource::KernelLog, Some(79)));
        // The plugin sees its device healthy again: positive evidence, probation, then Healthy.
        let healthy = Evidence {
            source: HealthSource::DevicePlugin,
            code: None,
            health: Health::Healthy,
            message: "ok".into(),
        };
        let later = now + devheal_core::Duration::from_secs(100 * PROBATION);
        t.observe("GPU-plugin", healthy, later);
        assert_eq!(health(&t, "GPU-plugin"), Some(Health::Degraded));
        t.tick(later + devheal_core::Duration::from_secs(PROBATION));
        assert_eq!(health(&t, "GPU-plugin"), Some(Health::Healthy));
        // A device on probation starts it again from the restart.
        assert_eq!(health(&t, "GPU-probation"), Some(Health::Healthy), "probation ran out long ago");
        // A reset clears the kernel reason.
        t.device_reset("GPU-dead", later);
        assert_eq!(health(&t, "GPU-dead"), Some(Health::Degraded));
    }

    #[test]
    fn probation_restarts_from_the_restart() {
        let now = Time::from_secs(1_800_000_000);
        let mut t = DeviceHealthTracker::new(TrackerConfig::default(), Some("boot-1".into()));
        restore(&mut t, Some(&status(Some("boot-1"))), Some("boot-1"), now);
        t.tick(now + devheal_core::Duration::from_secs(PROBATION - 1));
        assert_eq!(health(&t, "GPU-probation"), Some(Health::Degraded));
        t.tick(now + devheal_core::Duration::from_secs(PROBATION));
        assert_eq!(health(&t, "GPU-probation"), Some(Health::Healthy));
    }

    #[test]
    fn a_report_of_another_boot_keeps_nothing() {
        let now = Time::from_secs(1_800_000_000);
        let mut t = DeviceHealthTracker::new(TrackerConfig::default(), Some("boot-2".into()));
        assert!(restore(&mut t, Some(&status(Some("boot-1"))), Some("boot-2"), now).is_empty());
        assert!(restore(&mut t, None, Some("boot-2"), now).is_empty());
        assert_eq!(t.devices().count(), 0);
    }
}
