//! `kubernetes-default`: no tooling beyond Kubernetes. Containers restart in place (on a dead
//! device: a crash loop), a hung gang waits for the NCCL watchdog, and a person steps in after
//! `operator.response_min` (the person is part of the world, in every strategy).

use super::{Commands, Mechanics, Policy, Signal, Strategy, View};

pub(crate) struct KubernetesDefault;

impl Policy for KubernetesDefault {
    type Timer = ();

    fn strategy(&self) -> Strategy {
        Strategy::KubernetesDefault
    }

    fn mechanics(&self) -> Mechanics {
        Mechanics { recreates_pods: false, in_job_restart: false, agent_resets: false }
    }

    fn signal(&mut self, _signal: Signal, _view: &dyn View, _out: &mut Commands<()>) {}
}
