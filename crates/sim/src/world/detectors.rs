//! The world scores devheal's degradation detectors against what really happened: a straggler
//! or baseline-shift finding is true when the member's node has a straggler episode then, a
//! hang finding when the gang is hung; an episode is found by its first true finding, and the
//! delay is from the episode's start.

use devheal_core::Time;

use super::{GangState, World};
use crate::report::{DetectorReport, DetectorScore};
use crate::strategy::steps::in_panel;
use crate::strategy::{Detector, Policy};

/// An episode the straggler detector can find with its defaults: at least 6 % slower (its
/// relative threshold) for at least 4 one-minute windows (3 slow windows of 4).
pub(crate) const DETECTABLE_EXCESS: f64 = 0.06;
pub(crate) const DETECTABLE_MIN_S: f64 = 240.0;
/// A hang the hang detector can find: silent longer than its 90 s timeout plus a 30 s progress
/// interval.
const HANG_DETECTABLE_S: f64 = 120.0;

#[derive(Clone, Debug, Default)]
pub(crate) struct Tally {
    findings: u64,
    true_findings: u64,
    episodes: u64,
    found: u64,
    delays_s: Vec<f64>,
}

impl Tally {
    fn score(&self) -> DetectorScore {
        let mut d = self.delays_s.clone();
        d.sort_by(f64::total_cmp);
        let q = |p: f64| (!d.is_empty()).then(|| d[((d.len() - 1) as f64 * p).round() as usize]);
        DetectorScore {
            findings: self.findings,
            true_findings: self.true_findings,
            precision: (self.findings > 0).then(|| self.true_findings as f64 / self.findings as f64),
            episodes: self.episodes,
            found: self.found,
            recall: (self.episodes > 0).then(|| self.found as f64 / self.episodes as f64),
            delay_median_s: q(0.5),
            delay_p95_s: q(0.95),
        }
    }
}

/// One straggler episode on a gang member, as scored.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct EpisodeMark {
    pub since: Time,
    pub detectable: bool,
    pub panel: bool,
    pub found: [bool; 2],
}

impl<P: Policy> World<'_, P> {
    /// A straggler episode started on a gang member's node (`duration_s` long, `slowdown`).
    pub(super) fn score_episode_start(&mut self, node: u32, slowdown: f64, duration_s: f64) {
        let Some((g, m)) = self.nodes[node as usize].gang_member else {
            self.nodes[node as usize].episode = None;
            return;
        };
        let detectable = slowdown - 1.0 >= DETECTABLE_EXCESS && duration_s >= DETECTABLE_MIN_S;
        let gang_nodes = self.gangs[g as usize].members.len() as u32;
        let panel = in_panel(m, gang_nodes, self.scenario.step_times.panel_members.min(gang_nodes));
        if detectable && self.scores_detectors() {
            self.detectors[Detector::Straggler as usize].episodes += 1;
            if panel {
                self.detectors[Detector::BaselineShift as usize].episodes += 1;
            }
        }
        self.nodes[node as usize].episode =
            Some(EpisodeMark { since: self.now, detectable, panel, found: [false; 2] });
    }

    /// Whether this run scores detectors (devheal with straggler detection on).
    fn scores_detectors(&self) -> bool {
        self.strategy == crate::strategy::Strategy::Devheal
            && self.scenario.strategies.devheal.detect_stragglers
    }

    /// A hang finding, or a straggler or baseline-shift finding about `member` of `gang`.
    pub(super) fn score_finding(&mut self, detector: Detector, gang: u16, member: u32) {
        let now = self.now;
        let i = detector as usize;
        self.detectors[i].findings += 1;
        if detector == Detector::Hang {
            let g = &mut self.gangs[gang as usize];
            if let (GangState::Hung { since }, Some(ep)) = (g.state, g.hang_episode.as_mut())
                && ep.0 == since
            {
                self.detectors[i].true_findings += 1;
                if !ep.1 {
                    ep.1 = true;
                    self.detectors[i].found += 1;
                    self.detectors[i].episodes += 1;
                    self.detectors[i].delays_s.push(now.since(since).as_secs_f64());
                }
            }
            return;
        }
        let Some(&node) = self.gangs[gang as usize].members.get(member as usize) else { return };
        if self.nodes[node as usize].slowdown <= 1.0 {
            return;
        }
        self.detectors[i].true_findings += 1;
        if let Some(ep) = self.nodes[node as usize].episode.as_mut()
            && !ep.found[i]
        {
            ep.found[i] = true;
            let counted = ep.detectable && (detector == Detector::Straggler || ep.panel);
            if counted {
                self.detectors[i].found += 1;
                self.detectors[i].delays_s.push(now.since(ep.since).as_secs_f64());
            }
        }
    }

    /// A gang leaves a hung state (restarted, failed over): a hang the detector did not find,
    /// that lasted long enough for it to, is a miss.
    pub(super) fn score_hang_end(&mut self, gang: u16) {
        let now = self.now;
        let g = &mut self.gangs[gang as usize];
        if let Some((since, found)) = g.hang_episode.take()
            && !found
            && now.since(since).as_secs_f64() >= HANG_DETECTABLE_S
            && self.strategy == crate::strategy::Strategy::Devheal
        {
            self.detectors[Detector::Hang as usize].episodes += 1;
        }
    }

    /// The scores, for devheal's run.
    pub(super) fn detector_report(&self) -> Option<DetectorReport> {
        (self.strategy == crate::strategy::Strategy::Devheal).then(|| DetectorReport {
            straggler: self.detectors[Detector::Straggler as usize].score(),
            baseline_shift: self.detectors[Detector::BaselineShift as usize].score(),
            hang: self.detectors[Detector::Hang as usize].score(),
        })
    }
}
