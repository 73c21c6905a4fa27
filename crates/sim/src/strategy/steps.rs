//! Simulated step times and devheal's real degradation detectors on them.
//!
//! Once per detector window (one minute, [`StragglerConfig::default`]) each gang member that
//! matters gets one window summary ([`StepWindow`]: the samples and their interquartile mean), as
//! the agent's `WindowAggregator` would publish it: its own compute time per step × its static
//! offset × its straggler slow-down (the trace's episode on its node) × its transient burst, with
//! the jitter that an interquartile mean of `n` log-normal steps keeps (σ·1.1/√n). Steps are not
//! drawn one by one: a window's summary is drawn directly (docs/simulator.md, "Step times and
//! the detectors").
//!
//! "Members that matter" are a fixed panel of `step_times.panel_members` members, spread evenly
//! over the gang (the gang median and spread the detector compares with), plus every member with
//! a straggler episode or a transient burst in the window. The other members' windows would be
//! baseline jitter (about 1 % at 12 steps a window), which cannot reach the detector's 6 %
//! threshold and only refines the median; leaving them out keeps a 2,048-member gang at tens of
//! summaries a window.
//!
//! The detectors are `devheal_detect`'s: [`GangStragglerDetector::observe_window`] (what the
//! controller runs per gang), [`BaselineShiftDetector::observe_window`] on the panel (the agent's
//! per-pod baseline; the controller uses it only outside gangs, so here it is scored, not acted
//! on), and [`HangDetector`] on rank 0's progress (the agents' hang timeout; every member of a
//! gang goes silent at once in the model, so rank 0 stands for the controller's quorum).

use std::collections::BTreeSet;
use std::sync::Arc;

use devheal_core::{Duration, Time};
use devheal_detect::degradation::{
    BaselineConfig, BaselineShiftDetector, DegradationFinding, GangStragglerDetector, HangConfig,
    HangDetector, StepWindow, StragglerConfig,
};

use crate::noise::StepTimesSpec;
use crate::rng::Xoshiro256StarStar;
use crate::scenario::secs;

/// Whether `member` of a gang of `members` is on the fixed panel of `panel` members.
pub(crate) fn in_panel(member: u32, members: u32, panel: u32) -> bool {
    let stride = (members / panel.max(1)).max(1);
    member.is_multiple_of(stride) && member / stride < panel
}

/// A transient slow-down of one member.
#[derive(Clone, Copy, Debug)]
struct Burst {
    member: u32,
    from: Time,
    to: Time,
    excess: f64,
}

/// What one window's judgement found.
#[derive(Debug, Default)]
pub(crate) struct WindowFindings {
    /// Members the straggler detector newly reports.
    pub stragglers: Vec<u32>,
    /// Members it no longer reports.
    pub cleared: Vec<u32>,
    /// Panel members with a new baseline-shift finding.
    pub baseline: Vec<u32>,
}

/// One gang's step-time model and detectors.
pub(crate) struct GangSteps {
    spec: StepTimesSpec,
    members: u32,
    panel: Vec<u32>,
    /// Member names as the detectors know them (made on first use).
    names: Vec<Option<Arc<str>>>,
    offsets: Vec<f64>,
    window: Duration,
    straggler: GangStragglerDetector,
    baseline: BaselineShiftDetector,
    hang: HangDetector,
    /// Rank 0's pod as the hang detector follows it (a new restart attempt is a new pod).
    hang_subject: Option<String>,
    jitter: Xoshiro256StarStar,
    burst_rng: Xoshiro256StarStar,
    next_burst_s: f64,
    bursts: Vec<Burst>,
    /// Every burst drawn (tests compare findings with them).
    #[cfg(test)]
    drawn: Vec<Burst>,
    reported: BTreeSet<u32>,
    /// Members off the panel stay watched this many windows after their last slow or burst
    /// window (by member: the last window to draw), so their detector history sees the normal
    /// windows that follow, as it would with every member reporting.
    watch_until: std::collections::BTreeMap<u32, i64>,
}

impl GangSteps {
    /// `None` only if `devheal_detect`'s default configurations stopped validating (its tests
    /// check they do): the gang then runs without detectors rather than stop the simulation.
    pub(crate) fn new(spec: &StepTimesSpec, seed: u64, gang: &str, members: u32) -> Option<GangSteps> {
        let mut offsets_rng = Xoshiro256StarStar::stream(seed, &format!("steps:offset:{gang}"));
        let offsets = (0..members).map(|_| offsets_rng.lognormal(1.0, spec.member_offset_sigma)).collect();
        let mut burst_rng = Xoshiro256StarStar::stream(seed, &format!("steps:bursts:{gang}"));
        let rate_per_s = spec.bursts_per_member_hour * f64::from(members) / 3600.0;
        let next_burst_s =
            if rate_per_s > 0.0 { burst_rng.exponential(1.0 / rate_per_s) } else { f64::INFINITY };
        let straggler_cfg = StragglerConfig::default();
        let window = straggler_cfg.window;
        let panel_size = spec.panel_members.min(members);
        Some(GangSteps {
            spec: spec.clone(),
            members,
            panel: (0..members).filter(|&m| in_panel(m, members, panel_size)).collect(),
            names: vec![None; members as usize],
            offsets,
            window,
            straggler: GangStragglerDetector::new(straggler_cfg).ok()?,
            baseline: BaselineShiftDetector::new(BaselineConfig { window, ..BaselineConfig::default() })
                .ok()?,
            hang: HangDetector::new(HangConfig::default()).ok()?,
            hang_subject: None,
            jitter: Xoshiro256StarStar::stream(seed, &format!("steps:jitter:{gang}")),
            burst_rng,
            next_burst_s,
            bursts: Vec::new(),
            #[cfg(test)]
            drawn: Vec::new(),
            reported: BTreeSet::new(),
            watch_until: std::collections::BTreeMap::new(),
        })
    }

    pub(crate) fn window(&self) -> Duration {
        self.window
    }

    fn name(&mut self, member: u32) -> Arc<str> {
        self.names[member as usize].get_or_insert_with(|| Arc::from(format!("m{member}"))).clone()
    }

    /// The member's pod was recreated (it moved): the detectors start over with it.
    pub(crate) fn forget(&mut self, member: u32) {
        let name = self.name(member);
        self.straggler.forget(&name);
        self.baseline.forget(&name);
        self.reported.remove(&member);
        self.watch_until.remove(&member);
    }

    /// Draw the bursts that start before `until`, and drop those that ended before `from`.
    fn advance_bursts(&mut self, from: Time, until: Time) {
        let rate_per_s = self.spec.bursts_per_member_hour * f64::from(self.members) / 3600.0;
        while self.next_burst_s < until.as_secs_f64() {
            let start = Time::ZERO + secs(self.next_burst_s);
            let member = self.burst_rng.below(u64::from(self.members)) as u32;
            let length = self.burst_rng.lognormal(self.spec.burst_median_s, self.spec.burst_sigma);
            let excess = self.burst_rng.lognormal(self.spec.burst_slowdown, self.spec.burst_slowdown_sigma);
            let burst = Burst { member, from: start, to: start + secs(length), excess: excess.min(10.0) };
            #[cfg(test)]
            self.drawn.push(burst);
            self.bursts.push(burst);
            self.next_burst_s += self.burst_rng.exponential(1.0 / rate_per_s);
        }
        self.bursts.retain(|b| b.to > from);
    }

    /// Judge window `index` (ending now). `samples` is how many steps each member reported in
    /// it (0: the gang did not run, nothing is judged); `node_slowdown(member)` is the
    /// slow-down of the member's node; `slow_members` are the members whose node is slow now.
    pub(crate) fn judge(
        &mut self,
        index: i64,
        samples: u32,
        step_time_s: f64,
        slow_members: &BTreeSet<u32>,
        node_slowdown: &dyn Fn(u32) -> f64,
    ) -> WindowFindings {
        let start = Time::from_nanos(index * self.window.as_nanos());
        let end = start + self.window;
        self.advance_bursts(start, end);
        let mut out = WindowFindings::default();
        if samples == 0 {
            return out;
        }
        let keep = i64::from(self.straggler.config().of_windows);
        let newly = slow_members
            .iter()
            .copied()
            .filter(|&m| m < self.members)
            .chain(self.bursts.iter().filter(|b| b.from < end).map(|b| b.member));
        for m in newly.collect::<Vec<_>>() {
            self.watch_until.insert(m, index + keep);
        }
        self.watch_until.retain(|m, until| *until >= index || self.reported.contains(m));
        // The panel and the members watched off it, in increasing order, once each (both lists
        // are sorted: a merge, not a set built every window).
        let mut watched: Vec<u32> = Vec::with_capacity(self.panel.len() + self.watch_until.len());
        let mut extra = self.watch_until.keys().copied().peekable();
        for &p in &self.panel {
            while let Some(e) = extra.next_if(|&e| e < p) {
                watched.push(e);
            }
            extra.next_if_eq(&p);
            watched.push(p);
        }
        watched.extend(extra);
        // The share of a window's steps a burst covers; an interquartile mean ignores a quarter
        // on each side, so a burst under a quarter of the window leaves it alone and one over
        // three quarters shows in full.
        let window_s = self.window.as_secs_f64();
        let sigma = 1.1 * self.spec.jitter_sigma / f64::from(samples).sqrt();
        let mut summaries: Vec<(Arc<str>, StepWindow)> = Vec::with_capacity(watched.len());
        let mut panel_windows = Vec::new();
        for m in watched {
            let mut burst = 0.0;
            for b in self.bursts.iter().filter(|b| b.member == m) {
                let covered =
                    (b.to.min(end).as_secs_f64() - b.from.max(start).as_secs_f64()).max(0.0) / window_s;
                burst += b.excess * ((covered - 0.25) / 0.5).clamp(0.0, 1.0);
            }
            let noise = (sigma * self.jitter.standard_normal()).exp();
            let location = step_time_s * self.offsets[m as usize] * node_slowdown(m) * (1.0 + burst) * noise;
            let window = StepWindow { index, samples, location_secs: location };
            let name = self.name(m);
            if self.panel.binary_search(&m).is_ok() {
                panel_windows.push((name.clone(), window));
            }
            summaries.push((name, window));
        }
        // Windows are judged in increasing order here, so the detector cannot refuse them.
        let found = self.straggler.observe_window(index, &summaries).unwrap_or_default();
        for f in &found {
            if let Some(m) = member_of(f) {
                self.reported.insert(m);
                out.stragglers.push(m);
            }
        }
        let cleared: Vec<u32> = self
            .reported
            .iter()
            .copied()
            .filter(|&m| !self.names[m as usize].as_ref().is_some_and(|n| self.straggler.is_reported(n)))
            .collect();
        for m in cleared {
            self.reported.remove(&m);
            out.cleared.push(m);
        }
        for (name, window) in panel_windows {
            if let Ok(Some(f)) = self.baseline.observe_window(&name, &window)
                && let Some(m) = member_of(&f)
            {
                out.baseline.push(m);
            }
        }
        out
    }

    /// Rank 0 reported progress at `now` in restart attempt `attempt` of its pod `uid`.
    pub(crate) fn progress(&mut self, uid: &str, attempt: u64, now: Time) {
        let subject = format!("{uid}/{attempt}");
        if self.hang_subject.as_deref() != Some(subject.as_str()) {
            if let Some(old) = self.hang_subject.take() {
                self.hang.forget(&old);
            }
            self.hang_subject = Some(subject.clone());
        }
        self.hang.progress(&subject, now);
    }

    /// The pods are being recreated (a restart): rank 0's silence is not a hang.
    pub(crate) fn restarting(&mut self) {
        if let Some(old) = self.hang_subject.take() {
            self.hang.forget(&old);
        }
    }

    /// Rank 0's hang, if the detector finds one now: when the silence began.
    pub(crate) fn check_hang(&mut self, now: Time) -> Option<DegradationFinding> {
        self.hang.check(now).into_iter().next()
    }
}

fn member_of(f: &DegradationFinding) -> Option<u32> {
    f.subject.strip_prefix('m')?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_panel_is_spread_over_the_gang() {
        let panel: Vec<u32> = (0..2048).filter(|&m| in_panel(m, 2048, 32)).collect();
        assert_eq!(panel.len(), 32);
        assert_eq!(panel[1], 64);
        let small: Vec<u32> = (0..10).filter(|&m| in_panel(m, 10, 32)).collect();
        assert_eq!(small.len(), 10);
    }

    /// A member slowed by 15 % for 20 minutes is found by the real detector a few windows in;
    /// a gang with no slow member and no bursts gives nothing.
    #[test]
    fn the_real_detector_finds_a_slow_member_and_nothing_else() {
        let spec = StepTimesSpec { bursts_per_member_hour: 0.0, ..StepTimesSpec::default() };
        let mut steps = GangSteps::new(&spec, 7, "g", 256).expect("default configs validate");
        let slow: BTreeSet<u32> = [77].into_iter().collect();
        let none = BTreeSet::new();
        let mut found_at = None;
        for w in 0..60i64 {
            let episode = (20..40).contains(&w);
            let set = if episode { &slow } else { &none };
            let f = steps.judge(w, 12, 5.0, set, &|m| if episode && m == 77 { 1.15 } else { 1.0 });
            assert!(f.stragglers.iter().all(|&m| m == 77), "{f:?}");
            if f.stragglers.contains(&77) && found_at.is_none() {
                found_at = Some(w);
            }
        }
        let at = found_at.expect("found");
        assert!((22..=24).contains(&at), "found in window {at}");
    }

    /// Bursts only (no straggler episodes), 2,048 members, one day. Every straggler finding is
    /// on a member with a burst of at least 90 s that began within the last ten minutes (the
    /// bookkeeping for members off the panel is sound); with the old length model (median 40 s,
    /// σ 0.8: about 11 % of bursts over 2 min) the detector finds those long bursts, as it
    /// should; with the default "tens of seconds" model it finds almost nothing.
    #[test]
    fn burst_findings_are_explained_by_long_bursts() {
        let mut counts = Vec::new();
        for (median, sigma) in
            [(40.0, 0.8), (StepTimesSpec::default().burst_median_s, StepTimesSpec::default().burst_sigma)]
        {
            let spec = StepTimesSpec {
                bursts_per_member_hour: 0.05,
                burst_median_s: median,
                burst_sigma: sigma,
                ..StepTimesSpec::default()
            };
            let mut steps = GangSteps::new(&spec, 3, "g", 2048).expect("default configs validate");
            let none = BTreeSet::new();
            let mut findings = Vec::new();
            for w in 0..1440i64 {
                for m in steps.judge(w, 12, 5.0, &none, &|_| 1.0).stragglers {
                    findings.push((w, m));
                }
            }
            let long = steps.drawn.iter().filter(|b| b.to.since(b.from).as_secs_f64() >= 120.0).count();
            for &(w, m) in &findings {
                let end = Time::from_nanos((w + 1) * 60_000_000_000);
                assert!(
                    steps.drawn.iter().any(|b| b.member == m
                        && b.from < end
                        && b.to.since(b.from).as_secs_f64() >= 90.0
                        && end.since(b.from).as_secs_f64() <= 600.0),
                    "finding on m{m} in window {w} with no long burst"
                );
            }
            counts.push((steps.drawn.len(), long, findings.len()));
        }
        let (bursts, long, found) = counts[0];
        assert!(bursts > 2000 && long > 150 && found > 100 && found <= long, "{counts:?}");
        let (_, long, found) = counts[1];
        assert!(long < 20 && found <= 5, "{counts:?}");
    }
}
