//! `job-failure-policy`: Job podFailurePolicy / JobSet failure policy. The gang is recreated
//! when a pod fails; the scheduler keeps new pods off devices the device plugin marks Unhealthy
//! and off cordoned nodes. No other device awareness, so nothing to decide here: the world's
//! Kubernetes mechanics do it all.

use super::{Commands, Mechanics, Policy, Signal, Strategy, View};

pub(crate) struct JobFailurePolicy;

impl Policy for JobFailurePolicy {
    type Timer = ();

    fn strategy(&self) -> Strategy {
        Strategy::JobFailurePolicy
    }

    fn mechanics(&self) -> Mechanics {
        Mechanics { recreates_pods: true, in_job_restart: false, agent_resets: false }
    }

    fn signal(&mut self, _signal: Signal, _view: &dyn View, _out: &mut Commands<()>) {}
}
