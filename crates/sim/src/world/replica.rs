//! Inference replicas: failures where they run, in-place restarts, rescheduling onto a free
//! slot, and the availability of their services.

use super::{Event, ReplicaState, World, hours};
use crate::scenario::{Manifestation, Persistence, secs};
use crate::strategy::{Policy, Signal};

impl<P: Policy> World<'_, P> {
    pub(super) fn service_change(&mut self, service: u16, delta: i32) {
        let now = self.now;
        let s = &mut self.services[service as usize];
        let dt = now.since(s.last_change).0;
        if s.up >= s.needed {
            s.available_ns += dt;
        }
        s.replica_down_ns += (s.replicas.len() as u32 - s.up) as f64 * dt as f64;
        s.last_change = now;
        s.up = (s.up as i32 + delta).max(0) as u32;
    }

    /// Close a replica's current down state into the lost-hours buckets.
    pub(super) fn replica_close(&mut self, service: u16, replica: u32) {
        let now = self.now;
        let gpus = f64::from(self.services[service as usize].gpus_per_replica);
        let state = self.services[service as usize].replicas[replica as usize].state;
        match state {
            ReplicaState::Up => {}
            ReplicaState::Down { since, collateral } => {
                let h = hours(now.since(since).0) * gpus;
                if collateral {
                    self.fleet_lost.collateral_quarantine += h;
                } else {
                    self.fleet_lost.hang_before_detection += h;
                }
            }
            ReplicaState::Starting { since } => self.fleet_lost.restart += hours(now.since(since).0) * gpus,
            ReplicaState::Waiting { since } => {
                self.fleet_lost.capacity_held_out += hours(now.since(since).0) * gpus
            }
        }
    }

    pub(super) fn replica_set_state(&mut self, service: u16, replica: u32, state: ReplicaState) {
        self.replica_close(service, replica);
        let was_up = self.services[service as usize].replicas[replica as usize].state == ReplicaState::Up;
        let is_up = state == ReplicaState::Up;
        if was_up != is_up {
            self.service_change(service, if is_up { 1 } else { -1 });
        }
        let r = &mut self.services[service as usize].replicas[replica as usize];
        r.state = state;
        r.epoch += 1;
    }

    pub(super) fn replica_fault(
        &mut self,
        service: u16,
        replica: u32,
        manifestation: Manifestation,
        persistence: Persistence,
    ) {
        let now = self.now;
        let state = self.services[service as usize].replicas[replica as usize].state;
        if !matches!(state, ReplicaState::Up | ReplicaState::Starting { .. }) {
            return;
        }
        self.counts.replica_failures += 1;
        self.replica_set_state(service, replica, ReplicaState::Down { since: now, collateral: false });
        let epoch = self.services[service as usize].replicas[replica as usize].epoch;
        let k = &self.scenario.kubernetes;
        match manifestation {
            Manifestation::Crash | Manifestation::Hang => {
                // The container restarts in place (crash: at once; hang: once liveness fails).
                let delay = if manifestation == Manifestation::Crash {
                    k.pod_failure_report_s
                } else {
                    k.liveness_detect_s
                };
                let _ = persistence;
                self.queue.push(now + secs(delay), Event::ReplicaRestartInPlace { service, replica, epoch });
            }
            Manifestation::NodeDown => {
                let at = now + self.k8s_pod_eviction_delay();
                self.queue.push(at, Event::ReplicaReschedule { service, replica, epoch });
            }
            Manifestation::Evicted => {
                self.queue.push(
                    now + secs(k.termination_grace_s),
                    Event::ReplicaReschedule { service, replica, epoch },
                );
            }
        }
        self.queue.push(now + self.operator_delay(), Event::ReplicaOperator { service, replica, epoch });
        self.signal(Signal::ReplicaFailed { service, replica, manifestation });
    }

    /// Start (or restart) the replica where it is.
    pub(super) fn replica_start(&mut self, service: u16, replica: u32, fresh: bool) {
        let now = self.now;
        let start = self.services[service as usize].start;
        let collateral = matches!(
            self.services[service as usize].replicas[replica as usize].state,
            ReplicaState::Down { collateral: true, .. }
        );
        let _ = (fresh, collateral);
        self.replica_set_state(service, replica, ReplicaState::Starting { since: now });
        let epoch = self.services[service as usize].replicas[replica as usize].epoch;
        self.queue.push(now + start, Event::ReplicaStarted { service, replica, epoch });
    }

    pub(super) fn replica_started(&mut self, service: u16, replica: u32) {
        let node = self.services[service as usize].replicas[replica as usize].node;
        let Some(node) = node else { return };
        let n = &self.nodes[node as usize];
        if !n.up || n.in_repair.is_some() {
            self.replica_reschedule(service, replica);
            return;
        }
        if let Some((_, manifestation)) = self.node_problem(node, Some((service, replica))) {
            // Still on broken hardware: it fails again (and stays down until someone moves it).
            let now = self.now;
            self.replica_set_state(service, replica, ReplicaState::Down { since: now, collateral: false });
            let epoch = self.services[service as usize].replicas[replica as usize].epoch;
            if manifestation == Manifestation::NodeDown {
                self.queue.push(
                    now + self.k8s_pod_eviction_delay(),
                    Event::ReplicaReschedule { service, replica, epoch },
                );
            }
            self.queue.push(now + self.operator_delay(), Event::ReplicaOperator { service, replica, epoch });
            self.signal(Signal::ReplicaFailed { service, replica, manifestation });
            return;
        }
        self.replica_set_state(service, replica, ReplicaState::Up);
    }

    pub(super) fn free_replica_devices(&mut self, service: u16, replica: u32) {
        let (node, first) = {
            let r = &self.services[service as usize].replicas[replica as usize];
            (r.node, r.first_device)
        };
        if let Some(node) = node {
            for d in first..first + self.services[service as usize].gpus_per_replica as u8 {
                let i = self.dev(node, d);
                if self.devices[i].occupant == Some((service, replica)) {
                    self.set_occupant(i, None);
                }
            }
        }
        self.services[service as usize].replicas[replica as usize].node = None;
    }

    /// Set device `i`'s occupant, keeping its node's count of occupied devices.
    pub(super) fn set_occupant(&mut self, i: usize, occupant: Option<(u16, u32)>) {
        let node = &mut self.nodes[i / self.gpn as usize];
        match (self.devices[i].occupant.is_some(), occupant.is_some()) {
            (false, true) => node.occupied += 1,
            (true, false) => node.occupied -= 1,
            _ => {}
        }
        self.devices[i].occupant = occupant;
    }

    pub(super) fn find_replica_slot(&self, gpus: u32) -> Option<(u32, u8)> {
        let start = self.scenario.training_nodes();
        let end = self.scenario.total_nodes();
        for node in start..end {
            let n = &self.nodes[node as usize];
            if !n.up || n.in_repair.is_some() || n.cordoned || u32::from(n.occupied) + gpus > self.gpn {
                continue;
            }
            if !self.scenario.cluster.dra && self.node_tainted(node) {
                continue;
            }
            let mut first = 0u32;
            while first + gpus <= self.gpn {
                let ok = (first..first + gpus).all(|d| {
                    let dv = &self.devices[self.dev(node, d as u8)];
                    dv.occupant.is_none() && !dv.plugin_unhealthy && dv.quarantined.is_none() && !dv.resetting
                });
                if ok {
                    return Some((node, first as u8));
                }
                first += gpus;
            }
        }
        None
    }

    /// Delete the replica's pod and let its ReplicaSet create one on a free, schedulable slot.
    pub(crate) fn replica_reschedule(&mut self, service: u16, replica: u32) {
        let now = self.now;
        self.free_replica_devices(service, replica);
        let gpus = self.services[service as usize].gpus_per_replica;
        let old_gen = self.services[service as usize].replicas[replica as usize].generation;
        match self.find_replica_slot(gpus) {
            Some((node, first)) => {
                for d in first..first + gpus as u8 {
                    let i = self.dev(node, d);
                    self.set_occupant(i, Some((service, replica)));
                }
                let r = &mut self.services[service as usize].replicas[replica as usize];
                r.node = Some(node);
                r.first_device = first;
                r.generation += 1;
                self.replica_start(service, replica, true);
            }
            None => {
                self.services[service as usize].replicas[replica as usize].generation += 1;
                self.replica_set_state(service, replica, ReplicaState::Waiting { since: now });
            }
        }
        self.signal(Signal::ReplicaMoved { service, replica, old_generation: old_gen });
    }

    /// Give waiting workloads a chance at capacity that just came back.
    pub(super) fn retry_waiting(&mut self) {
        for g in 0..self.gangs.len() {
            if self.gangs[g].waiting {
                self.begin_restart(g as u16, false);
            }
        }
        for s in 0..self.services.len() {
            for r in 0..self.services[s].replicas.len() {
                if matches!(self.services[s].replicas[r].state, ReplicaState::Waiting { .. }) {
                    self.replica_reschedule(s as u16, r as u32);
                    if matches!(self.services[s].replicas[r].state, ReplicaState::Waiting { .. }) {
                        return;
                    }
                }
            }
        }
    }
}
