//! `progress-watchdog`: in-job restart on a progress timeout, as nvidia-resiliency-ext's fault
//! tolerance launcher (`ft_launcher`) does it.
//!
//! - A rank process that exits is seen by its launcher within the monitor interval; a rank that
//!   stops making progress (a hang, a dead node's peers blocked in a collective) is declared
//!   hung by its rank monitor when its step section times out. Either way every launcher stops
//!   its ranks and the job restarts in place: the pods stay, the ranks are respawned (no pod
//!   scheduling or start).
//! - Before the ranks start again each node runs the launcher's NVML GPU health check (a device
//!   NVML reports unhealthy or needing a recovery action, or a node that does not come to the
//!   rendezvous, fails it); failing nodes are left out and hot spares take their ranks.
//! - After `max_no_progress_restarts` restarts in a row that each ran fewer than
//!   `min_progress_iterations` steps the launcher gives up; the job waits for a person.
//!
//! It does nothing about nodes: no cordon, drain or repair. People repair what the device plugin
//! shows broken, as in every strategy.

use devheal_core::{Duration, Time};

use super::{Command, Commands, GangPhase, Mechanics, Policy, Signal, Strategy, View};
use crate::scenario::{Manifestation, Scenario, secs};

/// A restart the launcher will make, unless something else restarted the gang first.
#[derive(Debug)]
pub(crate) struct Restart {
    gang: u16,
    failure: u64,
}

pub(crate) struct ProgressWatchdog<'a> {
    scenario: &'a Scenario,
    progress_timeout: Duration,
    exit_detect: Duration,
    /// Per gang: failures seen, when it last started running, restarts in a row without progress.
    failures: Vec<u64>,
    running_since: Vec<Option<Time>>,
    no_progress: Vec<u32>,
}

impl<'a> ProgressWatchdog<'a> {
    pub(crate) fn new(scenario: &'a Scenario) -> Self {
        let p = &scenario.strategies.progress_watchdog;
        let gangs = scenario.training.len();
        ProgressWatchdog {
            scenario,
            progress_timeout: secs(p.progress_timeout_s),
            exit_detect: secs(p.exit_detect_s),
            failures: vec![0; gangs],
            running_since: vec![Some(Time::ZERO); gangs],
            no_progress: vec![0; gangs],
        }
    }

    fn gang_failed(
        &mut self,
        gang: u16,
        manifestation: Manifestation,
        view: &dyn View,
        out: &mut Commands<Restart>,
    ) {
        let g = gang as usize;
        self.failures[g] += 1;
        let p = &self.scenario.strategies.progress_watchdog;
        let min_run = secs(p.min_progress_iterations * self.scenario.training[g].step_time_s);
        let progressed = self.running_since[g].is_some_and(|since| view.now().since(since) >= min_run);
        self.running_since[g] = None;
        self.no_progress[g] = if progressed { 0 } else { self.no_progress[g] + 1 };
        if self.no_progress[g] > p.max_no_progress_restarts {
            // The launcher stops restarting: the job fails and waits for a person.
            self.no_progress[g] = 0;
            out.push(Command::FailGang { gang });
            return;
        }
        let delay = match manifestation {
            // The rank's process exits (or is terminated by the eviction): its launcher sees it.
            Manifestation::Crash | Manifestation::Evicted => self.exit_detect,
            // Its step section never closes: the rank monitor's timeout.
            Manifestation::Hang | Manifestation::NodeDown => self.progress_timeout,
        };
        out.push(Command::After { delay, timer: Restart { gang, failure: self.failures[g] } });
    }

    /// Restart in place, leaving out the nodes that fail the launcher's health check.
    fn restart(&mut self, Restart { gang, failure }: Restart, view: &dyn View, out: &mut Commands<Restart>) {
        if self.failures[gang as usize] != failure || view.gang(gang).phase != GangPhase::Hung {
            return;
        }
        let gpn = self.scenario.cluster.gpus_per_node;
        let g = view.gang(gang);
        let unhealthy: Vec<u32> = g
            .members
            .iter()
            .enumerate()
            .filter(|&(_, &node)| {
                let n = view.node(node);
                !n.up || n.in_repair || (0..gpn as u8).any(|d| view.device_needs_recovery(node, d))
            })
            .map(|(m, _)| m as u32)
            .collect();
        out.push(Command::RestartGangWithout { gang, members: unhealthy });
    }
}

impl Policy for ProgressWatchdog<'_> {
    type Timer = Restart;

    fn strategy(&self) -> Strategy {
        Strategy::ProgressWatchdog
    }

    fn mechanics(&self) -> Mechanics {
        Mechanics { recreates_pods: false, in_job_restart: true, agent_resets: false }
    }

    fn signal(&mut self, signal: Signal, view: &dyn View, out: &mut Commands<Restart>) {
        match signal {
            Signal::GangFailed { gang, manifestation, .. } => {
                self.gang_failed(gang, manifestation, view, out)
            }
            Signal::GangRunning { gang } => self.running_since[gang as usize] = Some(view.now()),
            _ => {}
        }
    }

    fn timer(&mut self, timer: Restart, view: &dyn View, out: &mut Commands<Restart>) {
        self.restart(timer, view, out);
    }
}
