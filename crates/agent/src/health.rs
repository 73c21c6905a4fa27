//! The per-device health state machine on the node (C5).
//!
//! Every source (kernel log, NVML, the device plugin, `allocatedResourcesStatus`, progress)
//! reports *evidence*: a reason keyed by (source, code) with the health it implies. The machine
//! keeps the reasons, de-duplicated with first/last sighting and a count, and derives one health
//! per device with these rules:
//!
//! - **Worst evidence wins** while it stands: `Unhealthy` over `Degraded` over `Healthy`.
//! - **Every condition has an exit (no latching).** A reason stands until the source that raised
//!   it says it has cleared (the plugin reports the device Healthy again, an NVML condition is no
//!   longer observed), or the device is reset, or the node reboots (a new boot id drops every
//!   reason from the earlier boot). Kernel-log reasons have no "cleared" message, so only a reset
//!   or a reboot clears them.
//! - **Probation.** When the last bad reason clears, the device is `Degraded` ("probation") until
//!   it has been clean for the probation period; any new bad evidence restarts it.
//! - **A check before it returns** ([`TrackerConfig::check_after_probation`]): at the end of
//!   probation the device stays `Degraded` until the functional check has passed
//!   ([`DeviceHealthTracker::due_checks`], [`DeviceHealthTracker::check_passed`]); a failed check
//!   is an `Unhealthy` reason of its own (source `functional_check`), which only a reset or a
//!   reboot clears, like a kernel-log fault.
//! - **Blind is not bad.** When every source that watches a device has lost sight of it (plugin
//!   gone, NVML not answering), a device with no standing bad reason is `Unknown`, never
//!   `Unhealthy`; a standing bad reason keeps its health.
//!
//! Pure: time is passed in.

use std::collections::BTreeMap;

use devheal_core::{Duration, Health, HealthReason, HealthSource, Time};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackerConfig {
    /// How long a device must stay clean after its last bad reason cleared.
    pub probation: Duration,
    /// Whether a device that was bad must pass the functional check at the end of its
    /// probation before it is `Healthy` again.
    pub check_after_probation: bool,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig { probation: Duration::from_mins(10), check_after_probation: false }
    }
}

/// Where a device is with its end-of-probation check.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum CheckState {
    #[default]
    NotNeeded,
    /// Probation is over; the check is to be run.
    Due,
    /// Handed out by `due_checks`, not answered yet.
    Running,
    /// Passed: the device may return.
    Passed,
}

/// One piece of evidence about one device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Evidence {
    pub source: HealthSource,
    /// Xid, SXid or another source-specific code; `None` for a source's only condition.
    pub code: Option<u32>,
    /// The health this evidence implies while it stands (`Healthy` evidence is ignored).
    pub health: Health,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct StandingReason {
    health: Health,
    reason: HealthReason,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct DeviceState {
    reasons: BTreeMap<(HealthSource, Option<u32>), StandingReason>,
    /// Sources that watch this device, and whether each currently sees it.
    watchers: BTreeMap<HealthSource, bool>,
    health: Health,
    since: Time,
    /// When the last bad reason cleared; probation runs from here.
    clean_since: Option<Time>,
    /// Set once the device has had a bad reason, so a clean device never enters probation.
    was_bad: bool,
    check: CheckState,
}

/// What the machine says about one device now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceVerdict {
    pub health: Health,
    pub since: Time,
    /// Standing reasons, worst first; a probation or blindness note when that decides.
    pub reasons: Vec<HealthReason>,
}

/// Health of every device on one node.
#[derive(Clone, Debug, Default)]
pub struct DeviceHealthTracker {
    config: TrackerConfig,
    boot_id: Option<String>,
    devices: BTreeMap<String, DeviceState>,
}

impl DeviceHealthTracker {
    pub fn new(config: TrackerConfig, boot_id: Option<String>) -> Self {
        DeviceHealthTracker { config, boot_id, devices: BTreeMap::new() }
    }

    /// Make a device known (inventory from NVML or the device plugin). Idempotent.
    pub fn add_device(&mut self, device: &str, now: Time) {
        self.devices
            .entry(device.to_string())
            .or_insert_with(|| DeviceState { since: now, ..DeviceState::default() });
    }

    pub fn devices(&self) -> impl Iterator<Item = &str> {
        self.devices.keys().map(String::as_str)
    }

    /// Record that `source` watches `device` and whether it currently sees it.
    pub fn set_watch(&mut self, device: &str, source: HealthSource, sees: bool, now: Time) {
        self.add_device(device, now);
        if let Some(state) = self.devices.get_mut(device) {
            state.watchers.insert(source, sees);
        }
        self.evaluate_one(device, now);
    }

    /// Evidence observed at `now`. `Healthy` evidence clears the standing reason with the same
    /// (source, code), as a plugin reporting the device Healthy again does.
    pub fn observe(&mut self, device: &str, evidence: Evidence, now: Time) {
        self.add_device(device, now);
        let Some(state) = self.devices.get_mut(device) else { return };
        let key = (evidence.source, evidence.code);
        if evidence.health == Health::Healthy || evidence.health == Health::Unknown {
            state.reasons.remove(&key);
        } else {
            let standing = state.reasons.entry(key).or_insert_with(|| StandingReason {
                health: evidence.health,
                reason: HealthReason {
                    source: evidence.source,
                    code: evidence.code,
                    message: evidence.message.clone(),
                    first_seen: now,
                    last_seen: now,
                    count: 0,
                },
            });
            standing.health = standing.health.max(evidence.health);
            standing.reason.message = evidence.message;
            standing.reason.last_seen = now;
            standing.reason.count += 1;
        }
        self.evaluate_one(device, now);
    }

    /// Clear every standing reason of `source` on `device` that is not in `still_standing`
    /// (used by sources that report their full current state, like NVML samples).
    pub fn clear_source_except(
        &mut self,
        device: &str,
        source: HealthSource,
        still_standing: &[Option<u32>],
        now: Time,
    ) {
        if let Some(state) = self.devices.get_mut(device) {
            state.reasons.retain(|(s, code), _| *s != source || still_standing.contains(code));
        }
        self.evaluate_one(device, now);
    }

    /// Put back what the agent last published about a device before it restarted (see
    /// [`crate::restore`]): an Unhealthy or Degraded device gets its reasons back as standing
    /// reasons of that health (they clear as live ones do); one with no reason left (probation)
    /// starts its probation again at `now`. Other healths are left to the sources.
    pub fn restore(
        &mut self,
        device: &str,
        health: Health,
        reasons: &[HealthReason],
        since: Time,
        now: Time,
    ) {
        if severity(health) == 0 {
            return;
        }
        self.add_device(device, since);
        let Some(state) = self.devices.get_mut(device) else { return };
        for r in reasons {
            state
                .reasons
                .entry((r.source, r.code))
                .or_insert_with(|| StandingReason { health, reason: r.clone() });
        }
        state.was_bad = true;
        if state.reasons.is_empty() {
            state.clean_since = Some(now);
        }
        state.health = health;
        state.since = since;
        self.evaluate_one(device, now);
    }

    /// The devices whose probation is over and whose functional check is to be run now; each is
    /// handed out once (until it is answered or the device turns bad again).
    pub fn due_checks(&mut self) -> Vec<String> {
        let mut due = Vec::new();
        for (name, state) in &mut self.devices {
            if state.check == CheckState::Due {
                state.check = CheckState::Running;
                due.push(name.clone());
            }
        }
        due
    }

    /// The functional check passed: the device returns (`Healthy`, unless something new stands).
    pub fn check_passed(&mut self, device: &str, now: Time) {
        if let Some(state) = self.devices.get_mut(device)
            && state.check == CheckState::Running
        {
            state.check = CheckState::Passed;
        }
        self.evaluate_one(device, now);
    }

    /// The functional check failed: an `Unhealthy` reason that only a reset or a reboot clears.
    pub fn check_failed(&mut self, device: &str, message: &str, now: Time) {
        if let Some(state) = self.devices.get_mut(device) {
            state.check = CheckState::NotNeeded;
        }
        let evidence = Evidence {
            source: HealthSource::FunctionalCheck,
            code: None,
            health: Health::Unhealthy,
            message: format!("failed the functional check at the end of probation: {message}"),
        };
        self.observe(device, evidence, now);
    }

    /// The device was reset: every reason from before clears, probation starts.
    pub fn device_reset(&mut self, device: &str, now: Time) {
        if let Some(state) = self.devices.get_mut(device) {
            state.reasons.clear();
        }
        self.evaluate_one(device, now);
    }

    /// The node booted (`boot_id` differs from the one the tracker knows): reasons from the
    /// earlier boot are stale and dropped.
    pub fn boot(&mut self, boot_id: &str, now: Time) {
        if self.boot_id.as_deref() == Some(boot_id) {
            return;
        }
        self.boot_id = Some(boot_id.to_string());
        let names: Vec<String> = self.devices.keys().cloned().collect();
        for name in names {
            self.device_reset(&name, now);
        }
    }

    pub fn boot_id(&self) -> Option<&str> {
        self.boot_id.as_deref()
    }

    /// Let time pass (probation ends).
    pub fn tick(&mut self, now: Time) {
        let names: Vec<String> = self.devices.keys().cloned().collect();
        for name in names {
            self.evaluate_one(&name, now);
        }
    }

    fn evaluate_one(&mut self, device: &str, now: Time) {
        let probation = self.config.probation;
        let Some(state) = self.devices.get_mut(device) else { return };
        let worst = state.reasons.values().map(|r| r.health).max_by_key(|h| severity(*h));
        let next = match worst {
            Some(h) if severity(h) > 0 => {
                state.was_bad = true;
                state.clean_since = None;
                state.check = CheckState::NotNeeded;
                h
            }
            _ => {
                if state.was_bad && state.clean_since.is_none() {
                    state.clean_since = Some(now);
                }
                let mut in_probation = state.clean_since.is_some_and(|t| now.since(t) < probation);
                if !in_probation && state.was_bad && self.config.check_after_probation {
                    // Probation is over: the functional check decides.
                    match state.check {
                        CheckState::NotNeeded => {
                            state.check = CheckState::Due;
                            in_probation = true;
                        }
                        CheckState::Due | CheckState::Running => in_probation = true,
                        CheckState::Passed => {}
                    }
                }
                if !in_probation {
                    state.was_bad = false;
                    state.clean_since = None;
                    state.check = CheckState::NotNeeded;
                }
                let blind = !state.watchers.is_empty() && state.watchers.values().all(|sees| !sees);
                if blind {
                    Health::Unknown
                } else if in_probation {
                    Health::Degraded
                } else {
                    Health::Healthy
                }
            }
        };
        if next != state.health {
            state.health = next;
            state.since = now;
        }
    }

    /// The verdict for one device.
    pub fn verdict(&self, device: &str) -> Option<DeviceVerdict> {
        let state = self.devices.get(device)?;
        let mut standing: Vec<&StandingReason> = state.reasons.values().collect();
        standing.sort_by_key(|r| std::cmp::Reverse(severity(r.health)));
        let mut reasons: Vec<HealthReason> = standing.into_iter().map(|r| r.reason.clone()).collect();
        if reasons.is_empty() {
            let note = match state.health {
                Health::Degraded if matches!(state.check, CheckState::Due | CheckState::Running) => {
                    Some("probation over; waiting for the functional check before it returns".to_string())
                }
                Health::Degraded => state.clean_since.map(|t| {
                    format!(
                        "probation: no fault since {:.0} s; healthy after {:.0} s clean",
                        t.as_secs_f64(),
                        self.config.probation.as_secs_f64()
                    )
                }),
                Health::Unknown => {
                    Some("every source that watches this device has lost sight of it".to_string())
                }
                _ => None,
            };
            if let Some(message) = note {
                reasons.push(HealthReason {
                    source: HealthSource::Operator,
                    code: None,
                    message,
                    first_seen: state.since,
                    last_seen: state.since,
                    count: 1,
                });
            }
        }
        Some(DeviceVerdict { health: state.health, since: state.since, reasons })
    }
}

/// How bad a health is, for "worst wins"; Unknown evidence is never bad.
fn severity(h: Health) -> u8 {
    match h {
        Health::Healthy | Health::Unknown => 0,
        Health::Degraded => 1,
        Health::Unhealthy => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Time {
        Time::from_secs(s)
    }

    fn xid(code: u32, health: Health) -> Evidence {
        Evidence { source: HealthSource::KernelLog, code: Some(code), health, message: format!("Xid {code}") }
    }

    fn plugin(health: Health) -> Evidence {
        Evidence { source: HealthSource::DevicePlugin, code: None, health, message: "plugin".into() }
    }

    #[test]
    fn with_the_check_on_a_device_returns_after_probation_only_once_its_check_passed() {
        let config = TrackerConfig { probation: Duration::from_secs(600), check_after_probation: true };
        let mut m = DeviceHealthTracker::new(config, Some("b".into()));
        m.add_device("GPU-0", t(0));
        m.add_device("GPU-1", t(0));
        assert!(m.due_checks().is_empty(), "a device that was never bad is not checked");
        for d in ["GPU-0", "GPU-1"] {
            m.observe(d, xid(48, Health::Unhealthy), t(10));
            m.device_reset(d, t(20));
        }
        m.tick(t(20 + 599));
        assert!(m.due_checks().is_empty(), "still in probation");
        m.tick(t(20 + 600));
        assert_eq!(m.verdict("GPU-0").map(|v| v.health), Some(Health::Degraded));
        assert!(m.verdict("GPU-0").unwrap().reasons[0].message.contains("waiting for the functional check"));
        assert_eq!(m.due_checks(), ["GPU-0", "GPU-1"]);
        assert!(m.due_checks().is_empty(), "handed out once");
        m.check_passed("GPU-0", t(700));
        assert_eq!(m.verdict("GPU-0").map(|v| v.health), Some(Health::Healthy));
        m.check_failed("GPU-1", "word 7 is 0x0, not 0xa5a5a5a5", t(700));
        let v = m.verdict("GPU-1").unwrap();
        assert_eq!(v.health, Health::Unhealthy);
        assert_eq!(v.reasons[0].source, HealthSource::FunctionalCheck);
        // Only a reset clears it; then probation and the check again.
        m.tick(t(5_000));
        assert_eq!(m.verdict("GPU-1").map(|v| v.health), Some(Health::Unhealthy));
        m.device_reset("GPU-1", t(5_000));
        m.tick(t(5_600));
        assert_eq!(m.due_checks(), ["GPU-1"]);
        // And a passed device that fails again is checked again after its next probation.
        m.observe("GPU-0", xid(48, Health::Unhealthy), t(6_000));
        m.device_reset("GPU-0", t(6_001));
        m.tick(t(6_601));
        assert_eq!(m.due_checks(), ["GPU-0"]);
    }

    #[test]
    fn an_xid_makes_a_device_unhealthy_until_a_reset_then_probation_then_healthy() {
        let mut m = DeviceHealthTracker::new(TrackerConfig::default(), Some("boot-1".into()));
        m.add_device("GPU-0", t(0));
        assert_eq!(m.verdict("GPU-0").map(|v| v.health), Some(Health::Healthy));
        m.observe("GPU-0", xid(79, Health::Unhealthy), t(10));
        m.observe("GPU-0", xid(79, Health::Unhealthy), t(11));
        let v = m.verdict("GPU-0").expect("known");
        assert_eq!((v.health, v.since), (Health::Unhealthy, t(10)));
        assert_eq!(v.reasons[0].count, 2);
        assert_eq!(v.reasons[0].first_seen, t(10));
        assert_eq!(v.reasons[0].last_seen, t(11));
        // A kernel-log reason does not clear on its own.
        m.tick(t(100_000));
        assert_eq!(m.verdict("GPU-0").map(|v| v.health), Some(Health::Unhealthy));
        m.device_reset("GPU-0", t(100_010));
        assert_eq!(m.verdict("GPU-0").map(|v| v.health), Some(Health::Degraded), "probation");
        m.tick(t(100_010 + 599));
        assert_eq!(m.verdict("GPU-0").map(|v| v.health), Some(Health::Degraded));
        m.tick(t(100_010 + 600));
        let v = m.verdict("GPU-0").expect("known");
        assert_eq!((v.health, v.since), (Health::Healthy, t(100_610)));
        assert!(v.reasons.is_empty());
    }

    #[test]
    fn new_bad_evidence_during_probation_restarts_it() {
        let mut m = DeviceHealthTracker::new(TrackerConfig::default(), None);
        m.observe("d", plugin(Health::Unhealthy), t(0));
        m.observe("d", plugin(Health::Healthy), t(100)); // the plugin clears its own reason
        assert_eq!(m.verdict("d").map(|v| v.health), Some(Health::Degraded));
        m.observe("d", xid(48, Health::Unhealthy), t(400));
        assert_eq!(m.verdict("d").map(|v| v.health), Some(Health::Unhealthy));
        m.device_reset("d", t(500));
        m.tick(t(500 + 599));
        assert_eq!(m.verdict("d").map(|v| v.health), Some(Health::Degraded));
        m.tick(t(1100));
        assert_eq!(m.verdict("d").map(|v| v.health), Some(Health::Healthy));
    }

    #[test]
    fn a_blind_source_makes_a_clean_device_unknown_never_unhealthy() {
        let mut m = DeviceHealthTracker::new(TrackerConfig::default(), None);
        m.set_watch("d", HealthSource::DevicePlugin, true, t(0));
        m.set_watch("d", HealthSource::Nvml, true, t(0));
        m.set_watch("d", HealthSource::DevicePlugin, false, t(5));
        assert_eq!(m.verdict("d").map(|v| v.health), Some(Health::Healthy), "NVML still sees it");
        m.set_watch("d", HealthSource::Nvml, false, t(6));
        let v = m.verdict("d").expect("known");
        assert_eq!(v.health, Health::Unknown);
        assert!(v.reasons[0].message.contains("lost sight"));
        m.set_watch("d", HealthSource::Nvml, true, t(7));
        assert_eq!(m.verdict("d").map(|v| v.health), Some(Health::Healthy));
        // With standing bad evidence, blindness keeps the evidence's health.
        m.observe("d", xid(95, Health::Unhealthy), t(8));
        m.set_watch("d", HealthSource::Nvml, false, t(9));
        assert_eq!(m.verdict("d").map(|v| v.health), Some(Health::Unhealthy));
    }

    #[test]
    fn a_reboot_drops_reasons_from_the_earlier_boot() {
        let mut m = DeviceHealthTracker::new(TrackerConfig::default(), Some("a".into()));
        m.observe("d", xid(79, Health::Unhealthy), t(0));
        m.boot("a", t(1)); // same boot: nothing changes
        assert_eq!(m.verdict("d").map(|v| v.health), Some(Health::Unhealthy));
        m.boot("b", t(2));
        assert_eq!(m.verdict("d").map(|v| v.health), Some(Health::Degraded));
        assert_eq!(m.boot_id(), Some("b"));
    }

    #[test]
    fn worst_evidence_wins_and_full_state_sources_clear_what_they_no_longer_see() {
        let mut m = DeviceHealthTracker::new(TrackerConfig::default(), None);
        let pcie = Evidence {
            source: HealthSource::Nvml,
            code: Some(1),
            health: Health::Degraded,
            message: "PCIe x8 of x16".into(),
        };
        m.observe("d", pcie, t(0));
        assert_eq!(m.verdict("d").map(|v| v.health), Some(Health::Degraded));
        m.observe("d", xid(79, Health::Unhealthy), t(1));
        let v = m.verdict("d").expect("known");
        assert_eq!(v.health, Health::Unhealthy);
        assert_eq!(v.reasons[0].code, Some(79), "worst reason first");
        m.clear_source_except("d", HealthSource::Nvml, &[], t(2));
        assert_eq!(m.verdict("d").map(|v| v.reasons.len()), Some(1));
    }
}
