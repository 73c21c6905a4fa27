//! The controller's reset requests in the loop: taken against the devices this agent reports,
//! handed to the reset worker, answered in `status.resets`, each step an Event and a count
//! ([`crate::reset`]). A reset that succeeded clears the device's reasons and starts its
//! probation, as a reset the kernel logged does.

use super::*;
use crate::reset::{ResetBackend, ResetBook, ResetLimits, ResetMode, ResetResult, ResetStep, ResetTarget};
use devheal_k8s::crd::{DeviceResetPhase, DeviceResetRequest};

pub(super) struct Resets {
    pub(super) book: ResetBook,
    pub(super) mode: ResetMode,
    pub(super) limits: ResetLimits,
    pub(super) backend: Arc<dyn ResetBackend>,
    /// The worker's queue (with `--device-reset=on` or the end-of-probation check).
    pub(super) jobs: Option<std::sync::mpsc::SyncSender<crate::reset::Job>>,
    /// Steps to report as Events at the end of the turn: (device, resource, phase, message).
    pub(super) pending: Vec<(String, String, DeviceResetPhase, String)>,
}

/// The device of `inventory` a request or a result names: by the id it is published under, or
/// by its tracker key.
fn named<'a>(inventory: &'a [InventoryDevice], id: &str) -> Option<&'a InventoryDevice> {
    inventory.iter().find(|d| d.published_id() == id || d.id == id)
}

/// What the reset worker needs of a device.
fn target_of(d: &InventoryDevice) -> ResetTarget {
    ResetTarget {
        id: d.published_id().to_string(),
        pci_address: d.pci_address.clone(),
        uuid: d.id.starts_with("GPU-").then(|| d.id.clone()),
    }
}

impl LoopState {
    /// The tracker key of the device a request or result names (the name itself if unknown).
    fn tracker_key(&self, device: &str) -> String {
        named(&self.inventory(), device).map_or_else(|| device.to_string(), |d| d.id.clone())
    }

    pub(super) fn take_reset_requests(&mut self, requests: &[DeviceResetRequest], now: Time) {
        let inventory = self.inventory();
        let known = |id: &str| named(&inventory, id).map(target_of);
        let backend = Arc::clone(&self.resets.backend);
        let steps = self.resets.book.take(
            requests,
            self.resets.mode,
            &self.resets.limits,
            known,
            |t| backend.describe(t),
            now,
        );
        for step in steps {
            match step {
                ResetStep::Answer(a) => self.note_reset(&a.device, a.phase, a.message),
                ResetStep::Run { id, target } => {
                    let device = target.id.clone();
                    let sent = match &self.resets.jobs {
                        Some(jobs) => {
                            jobs.try_send(crate::reset::Job::Reset { id: id.clone(), target }).is_ok()
                        }
                        None => false,
                    };
                    if sent {
                        self.note_reset(
                            &device,
                            DeviceResetPhase::Pending,
                            "taken: waiting for the device to be idle".into(),
                        );
                    } else {
                        let result = ResetResult {
                            id,
                            device,
                            phase: DeviceResetPhase::Refused,
                            message: "the reset worker is busy or gone: not taken".into(),
                        };
                        self.finish_reset(result, now);
                    }
                }
            }
        }
    }

    /// Hand the devices whose probation is over to the worker for their functional check.
    pub(super) fn start_due_checks(&mut self) {
        let due = self.tracker.due_checks();
        if due.is_empty() {
            return;
        }
        let inventory = self.inventory();
        for key in due {
            let now = wall_now();
            let target = inventory.iter().find(|d| d.id == key).map(target_of);
            let sent = match (&self.resets.jobs, target) {
                (Some(jobs), Some(target)) => jobs.try_send(crate::reset::Job::Check { target }).is_ok(),
                _ => false,
            };
            if !sent {
                // Nothing can check it (no worker, a device no longer listed, a full queue): it
                // returns on its probation alone, as without the check.
                self.tracker.check_passed(&key, now);
            }
        }
    }

    /// A device's end-of-probation check is back.
    pub(super) fn finish_check(&mut self, device: &str, outcome: crate::reset::CheckOutcome, now: Time) {
        use crate::reset::{CheckMode, CheckOutcome};
        let key = self.tracker_key(device);
        let word = match &outcome {
            CheckOutcome::Passed(_) => "passed",
            CheckOutcome::Failed(_) => "failed",
            CheckOutcome::Unavailable(_) => "unavailable",
        };
        self.metrics
            .device_checks
            .get_or_create(&crate::metrics::ResultLabel { result: word.to_string() })
            .inc();
        match outcome {
            CheckOutcome::Passed(what) => {
                tracing::info!(%device, %what, "functional check passed at the end of probation");
                self.tracker.check_passed(&key, now);
            }
            CheckOutcome::Unavailable(why) if self.resets.limits.check != CheckMode::Required => {
                tracing::info!(%device, %why, "functional check cannot run here: the device returns on its probation");
                self.tracker.check_passed(&key, now);
            }
            CheckOutcome::Unavailable(why) => {
                self.tracker.check_failed(&key, &format!("the required check cannot run here: {why}"), now)
            }
            CheckOutcome::Failed(why) => {
                tracing::warn!(%device, %why, "functional check failed at the end of probation");
                self.tracker.check_failed(&key, &why, now);
            }
        }
    }

    pub(super) fn finish_reset(&mut self, result: ResetResult, now: Time) {
        self.resets.book.finish(&result, now);
        if result.phase == DeviceResetPhase::Succeeded {
            // The reset's answer, not a source's: every reason clears, probation starts.
            let key = self.tracker_key(&result.device);
            self.tracker.device_reset(&key, now);
        }
        self.note_reset(&result.device, result.phase, result.message);
    }

    fn note_reset(&mut self, device: &str, phase: DeviceResetPhase, message: String) {
        let word = match phase {
            DeviceResetPhase::Pending => "Pending",
            DeviceResetPhase::Succeeded => "Succeeded",
            DeviceResetPhase::Failed => "Failed",
            DeviceResetPhase::Refused => "Refused",
            DeviceResetPhase::WouldReset => "WouldReset",
        };
        self.metrics.device_resets.get_or_create(&crate::metrics::PhaseLabel { phase: word }).inc();
        match phase {
            DeviceResetPhase::Failed | DeviceResetPhase::Refused => {
                tracing::warn!(%device, phase = word, %message, "device reset")
            }
            _ => tracing::info!(%device, phase = word, %message, "device reset"),
        }
        let resource =
            named(&self.inventory(), device).map(|d| d.published_resource().to_string()).unwrap_or_default();
        if self.resets.pending.len() < crate::reset::MAX_RESETS {
            self.resets.pending.push((device.to_string(), resource, phase, message));
        }
    }

    /// The turn's reset steps as Events.
    pub(super) fn send_reset_steps(&mut self, transitions: &mpsc::Sender<DeviceTransition>) {
        for (device, resource, phase, message) in self.resets.pending.drain(..) {
            // A reset step, not a change of health: `reset` decides the Event.
            let transition = DeviceTransition {
                device: device.clone(),
                resource,
                from: None,
                to: Health::Unknown,
                reasons: String::new(),
                pods: Vec::new(),
                reset: Some((phase, message)),
            };
            if transitions.try_send(transition).is_err() {
                tracing::warn!(%device, "event queue full: reset step not reported as an Event");
            }
        }
    }
}
