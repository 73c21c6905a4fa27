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
    /// The worker's queue (with `--device-reset=on`).
    pub(super) jobs: Option<std::sync::mpsc::SyncSender<(String, ResetTarget)>>,
    /// Steps to report as Events at the end of the turn: (device, resource, phase, message).
    pub(super) pending: Vec<(String, String, DeviceResetPhase, String)>,
}

impl LoopState {
    pub(super) fn take_reset_requests(&mut self, requests: &[DeviceResetRequest], now: Time) {
        let inventory = self.inventory();
        let known = |id: &str| {
            inventory.iter().find(|d| d.published_id() == id || d.id == id).map(|d| ResetTarget {
                id: d.published_id().to_string(),
                pci_address: d.pci_address.clone(),
                uuid: d.id.starts_with("GPU-").then(|| d.id.clone()),
            })
        };
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
                        Some(jobs) => jobs.try_send((id.clone(), target)).is_ok(),
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

    pub(super) fn finish_reset(&mut self, result: ResetResult, now: Time) {
        self.resets.book.finish(&result, now);
        if result.phase == DeviceResetPhase::Succeeded {
            // The reset's answer, not a source's: every reason clears, probation starts.
            let key = self
                .inventory()
                .into_iter()
                .find(|d| d.published_id() == result.device || d.id == result.device)
                .map_or_else(|| result.device.clone(), |d| d.id);
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
        let resource = self
            .inventory()
            .into_iter()
            .find(|d| d.published_id() == device || d.id == device)
            .map(|d| d.published_resource().to_string())
            .unwrap_or_default();
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
