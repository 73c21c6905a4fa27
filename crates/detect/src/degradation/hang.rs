//! Hang detection: a subject that reported progress before and has reported none for longer
//! than `timeout` (default 90 s, well inside NCCL's 10-minute watchdog).
//!
//! The caller reports progress with [`HangDetector::progress`] and polls with
//! [`HangDetector::check`]; a hang is reported once per silence, and the next progress report
//! clears it. A workload that announces a pause (a checkpoint save, an evaluation pass) with
//! [`HangDetector::announce_pause`] is not reported until `timeout` after the announced end of
//! the pause. Without an announcement, a pause longer than `timeout` is reported as a hang, so the
//! timeout must exceed the longest unannounced checkpoint pause (about a minute in our traces).

use std::collections::BTreeMap;

use devheal_core::{Duration, Time};

use super::{DegradationError, DegradationFinding, DegradationKind, human_duration, require};

/// Parameters of [`HangDetector`].
#[derive(Clone, Debug, PartialEq)]
pub struct HangConfig {
    /// Silence longer than this is a hang.
    pub timeout: Duration,
}

impl Default for HangConfig {
    fn default() -> Self {
        HangConfig { timeout: Duration::from_secs(90) }
    }
}

impl HangConfig {
    pub fn validate(&self) -> Result<(), DegradationError> {
        require(self.timeout.as_nanos() > 0, "hang timeout", "must be positive")
    }
}

#[derive(Debug)]
struct Silence {
    last_progress: Time,
    paused_until: Option<Time>,
    reported: bool,
}

/// Detects subjects that stopped reporting progress.
#[derive(Debug)]
pub struct HangDetector {
    config: HangConfig,
    subjects: BTreeMap<String, Silence>,
}

impl HangDetector {
    pub fn new(config: HangConfig) -> Result<Self, DegradationError> {
        config.validate()?;
        Ok(HangDetector { config, subjects: BTreeMap::new() })
    }

    pub fn config(&self) -> &HangConfig {
        &self.config
    }

    /// `subject` made progress at `at` (a step finished). Older reports than the latest are
    /// ignored.
    pub fn progress(&mut self, subject: &str, at: Time) {
        match self.subjects.get_mut(subject) {
            Some(state) => {
                if at >= state.last_progress {
                    state.last_progress = at;
                    state.reported = false;
                    if state.paused_until.is_some_and(|until| until <= at) {
                        state.paused_until = None;
                    }
                }
            }
            None => {
                self.subjects.insert(
                    subject.to_string(),
                    Silence { last_progress: at, paused_until: None, reported: false },
                );
            }
        }
    }

    /// The workload announced that `subject` will make no progress until `until` (e.g. a
    /// checkpoint save). Ignored for subjects that never reported progress.
    pub fn announce_pause(&mut self, subject: &str, until: Time) {
        if let Some(state) = self.subjects.get_mut(subject) {
            state.paused_until = Some(state.paused_until.map_or(until, |old| old.max(until)));
        }
    }

    /// Stop tracking `subject` (the pod ended).
    pub fn forget(&mut self, subject: &str) {
        self.subjects.remove(subject);
    }

    /// Subjects silent for longer than the timeout at `now`, each reported once per silence.
    pub fn check(&mut self, now: Time) -> Vec<DegradationFinding> {
        let timeout = self.config.timeout;
        let mut findings = Vec::new();
        for (subject, state) in &mut self.subjects {
            if state.reported {
                continue;
            }
            let quiet_from = match state.paused_until {
                Some(until) if until > state.last_progress => until,
                _ => state.last_progress,
            };
            if now.since(quiet_from) <= timeout {
                continue;
            }
            state.reported = true;
            let silent = now.since(state.last_progress);
            let pause = match state.paused_until {
                Some(until) if until > state.last_progress => {
                    format!("; an announced pause ended {} ago", human_duration(now.since(until)))
                }
                _ => String::new(),
            };
            findings.push(DegradationFinding {
                subject: subject.clone(),
                kind: DegradationKind::Hang,
                magnitude: 1.0,
                since: state.last_progress,
                detected_at: now,
                windows: 0,
                evidence: format!(
                    "no progress for {} (limit {}{pause})",
                    human_duration(silent),
                    human_duration(timeout)
                ),
            });
        }
        findings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_past_the_timeout_is_one_finding_and_progress_clears_it() {
        let mut det = HangDetector::new(HangConfig::default()).unwrap();
        det.progress("pod-a", Time::from_secs(100));
        assert!(det.check(Time::from_secs(190)).is_empty());
        let found = det.check(Time::from_secs(191));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].since, Time::from_secs(100));
        assert_eq!(found[0].evidence, "no progress for 1 min 31 s (limit 1 min 30 s)");
        assert!(det.check(Time::from_secs(300)).is_empty(), "reported once per silence");
        det.progress("pod-a", Time::from_secs(310));
        assert!(det.check(Time::from_secs(350)).is_empty());
        assert_eq!(det.check(Time::from_secs(401)).len(), 1);
    }

    #[test]
    fn an_announced_pause_defers_the_timeout() {
        let mut det = HangDetector::new(HangConfig::default()).unwrap();
        det.progress("pod-a", Time::from_secs(0));
        det.announce_pause("pod-a", Time::from_secs(120));
        assert!(det.check(Time::from_secs(200)).is_empty());
        let found = det.check(Time::from_secs(211));
        assert_eq!(found.len(), 1);
        assert!(found[0].evidence.contains("announced pause"), "{}", found[0].evidence);
    }

    #[test]
    fn a_zero_timeout_is_rejected() {
        let err = HangDetector::new(HangConfig { timeout: Duration::ZERO }).unwrap_err();
        assert!(err.to_string().contains("hang timeout"), "{err}");
    }
}
