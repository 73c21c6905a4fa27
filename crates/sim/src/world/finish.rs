//! The end of a run: close every open state into the accounts and write the strategy's report.

use super::{GangState, NS_PER_HOUR, World, hours};
use crate::report::{InferenceReport, LostGpuHours, LostGpuHoursReport, StrategyReport, TrainingReport};
use crate::strategy::Policy;

impl<P: Policy> World<'_, P> {
    pub(super) fn finish(mut self) -> StrategyReport {
        let now = self.now;
        for gi in 0..self.gangs.len() {
            let g = &mut self.gangs[gi];
            Self::settle(g, now);
            match g.state {
                GangState::Computing => g.committed_work += g.cycle_work,
                GangState::Checkpointing { .. } => g.committed_work += g.cycle_work,
                _ => g.lost.rework_since_checkpoint += g.cycle_work / 3600.0 * g.gpus,
            }
            g.cycle_work = 0.0;
            Self::close_state(g, now);
        }
        for s in 0..self.services.len() {
            self.service_change(s as u16, 0);
            for r in 0..self.services[s].replicas.len() {
                self.replica_close(s as u16, r as u32);
            }
        }
        for node in 0..self.nodes.len() {
            if let Some((since, healthy)) = self.nodes[node].held_out_since.take() {
                self.fleet_lost.collateral_quarantine += hours(now.since(since).0) * f64::from(healthy);
            }
        }
        for i in 0..self.devices.len() {
            self.quarantine_collateral_close(i);
        }
        let wall_s = self.end.as_secs_f64();
        let mut lost = self.fleet_lost.clone();
        let mut training = Vec::new();
        let (mut weighted, mut gpus_total) = (0.0, 0.0);
        for g in &self.gangs {
            add_lost(&mut lost, &g.lost);
            let ettr = if wall_s > 0.0 { g.committed_work / wall_s } else { 0.0 };
            weighted += ettr * g.gpus;
            gpus_total += g.gpus;
            let down_gpu_hours = g.lost.hang_before_detection
                + g.lost.restart
                + g.lost.capacity_held_out
                + g.lost.planned_maintenance;
            training.push(TrainingReport {
                name: g.name.clone(),
                gpus: g.gpus as u64,
                ettr,
                ettr_by_day: g.ettr_by_day.clone(),
                interruptions: g.interruptions,
                restarts: g.restarts,
                running_hours: wall_s / 3600.0 - down_gpu_hours / g.gpus,
                gpu_hours_lost: g.lost.clone(),
                productive_gpu_hours: g.committed_work / 3600.0 * g.gpus,
            });
        }
        let mut inference = Vec::new();
        let (mut avail_sum, mut down_sum) = (0.0, 0.0);
        let end_ns = self.end.0.max(1) as f64;
        for s in &self.services {
            let availability = s.available_ns as f64 / end_ns;
            let down_h = s.replica_down_ns / NS_PER_HOUR;
            avail_sum += availability;
            down_sum += down_h;
            inference.push(InferenceReport {
                name: s.name.clone(),
                replicas: s.replicas.len() as u32,
                needed_replicas: s.needed,
                availability,
                replica_hours_unavailable: down_h,
            });
        }
        let inference_availability =
            if self.services.is_empty() { 1.0 } else { avail_sum / self.services.len() as f64 };
        let mut counts = self.counts.clone();
        if let Some(policy) = &self.policy {
            policy.counts(&mut counts);
        }
        let strategy = self.strategy;
        StrategyReport {
            name: strategy.name().to_string(),
            description: strategy.description().to_string(),
            ettr: if gpus_total > 0.0 { weighted / gpus_total } else { 1.0 },
            gpu_hours_lost: LostGpuHoursReport { total: lost.total(), by_cause: lost },
            inference_availability,
            replica_hours_unavailable: down_sum,
            training,
            inference,
            counts,
            events: self.queue.popped() + self.trace_events,
            interruptions_by_class: self
                .scenario
                .faults
                .iter()
                .map(|f| f.name.clone())
                .zip(self.interruptions_by_class.iter().copied())
                .collect(),
            detectors: self.detector_report(),
        }
    }
}

fn add_lost(into: &mut LostGpuHours, from: &LostGpuHours) {
    into.hang_before_detection += from.hang_before_detection;
    into.rework_since_checkpoint += from.rework_since_checkpoint;
    into.restart += from.restart;
    into.capacity_held_out += from.capacity_held_out;
    into.collateral_quarantine += from.collateral_quarantine;
    into.checkpoint_overhead += from.checkpoint_overhead;
    into.straggler_slowdown += from.straggler_slowdown;
    into.planned_maintenance += from.planned_maintenance;
}
