//! The trace lands on the cluster: faults strike devices, nodes and ranks (what each does depends
//! on the state it finds), straggler episodes slow nodes, planned maintenance restarts gangs.

use super::{ActiveFault, Event, GangState, ReplicaState, World, hours};
use crate::noise::{LineDelivery, all_lines};
use crate::scenario::{FaultScope, Manifestation, Persistence};
use crate::strategy::{LineSource, Policy, Repair, Signal};
use crate::trace::{FaultTarget, TraceKind};

impl<P: Policy> World<'_, P> {
    pub(super) fn on_trace(&mut self, kind: TraceKind) {
        match kind {
            TraceKind::Fault { class, target, lemon_excess, pid, lines } => {
                self.on_fault(class, target, lemon_excess, pid, lines);
            }
            TraceKind::Noise { kind, node, device, pid, recovery, lines } => {
                self.on_noise(kind, node, device, pid, recovery, lines);
            }
            TraceKind::Straggler { node, duration, slowdown } => {
                let n = &mut self.nodes[node as usize];
                if !n.up {
                    return;
                }
                n.straggler_token += 1;
                n.slowdown = slowdown;
                let token = n.straggler_token;
                let member = n.gang_member;
                self.score_episode_start(node, slowdown, duration.as_secs_f64());
                self.queue.push(self.now + duration, Event::StragglerEnd { node, token });
                self.signal(Signal::StragglerStarted { node });
                if let Some((g, _)) = member {
                    self.gang_slow(g, node, Some(slowdown));
                }
            }
            TraceKind::PlannedMaintenance { gang } => self.planned_maintenance(gang),
        }
    }

    /// A harmless kernel event: it changes nothing but what the log readers see. A node that is
    /// down or under repair prints nothing.
    fn on_noise(&mut self, kind: u16, node: u32, device: u8, pid: u32, recovery: bool, lines: LineDelivery) {
        let n = &self.nodes[node as usize];
        if !n.up || n.in_repair.is_some() {
            return;
        }
        self.counts.noise_events += u64::from(!recovery);
        let source = LineSource::Noise { kind, recovery };
        let count = crate::strategy::source_lines(self.scenario, source).len();
        self.deliver_lines(source, node, Some(device), pid, count, lines);
    }

    /// Hand the on-time lines to the strategy now and queue the late ones.
    fn deliver_lines(
        &mut self,
        source: LineSource,
        node: u32,
        device: Option<u8>,
        pid: u32,
        count: usize,
        lines: LineDelivery,
    ) {
        let now = lines.on_time(count);
        if now != 0 {
            self.signal(Signal::KernelLines { source, node, device, pid, lines: now });
        }
        let late = lines.late & all_lines(count);
        if late != 0 {
            self.queue
                .push(self.now + lines.late_by, Event::LateLines { source, node, device, pid, lines: late });
        }
    }

    pub(super) fn on_fault(
        &mut self,
        class_idx: u16,
        target: FaultTarget,
        lemon_excess: bool,
        pid: u32,
        lines: LineDelivery,
    ) {
        let class = &self.scenario.faults[class_idx as usize];
        let (node, device) = match target {
            FaultTarget::Device { node, device } => (node, Some(device)),
            FaultTarget::Node { node } => (node, None),
            FaultTarget::GangMember { gang, member } => {
                let node = self.gangs[gang as usize].members[member as usize];
                (node, Some((pid % self.gpn) as u8))
            }
            FaultTarget::Replica { service, replica } => {
                let r = &self.services[service as usize].replicas[replica as usize];
                match (r.node, r.state) {
                    (Some(node), ReplicaState::Up | ReplicaState::Starting { .. }) => {
                        (node, Some(r.first_device))
                    }
                    _ => return, // a replica that is not running has no software to fail
                }
            }
        };
        let n = &self.nodes[node as usize];
        // Hardware under repair or already dead absorbs the fault; a cured lemon no longer
        // produces its excess faults.
        if n.in_repair.is_some() || !n.up || (lemon_excess && !n.lemon) {
            return;
        }
        if class.scope == FaultScope::Workload {
            let busy = match target {
                FaultTarget::GangMember { gang, .. } => self.gang_is_active(gang),
                _ => true,
            };
            if !busy {
                return;
            }
        }
        // A running gang on the node is interrupted by this fault (counted by class).
        if let Some((g, _)) = self.nodes[node as usize].gang_member
            && matches!(self.gangs[g as usize].state, GangState::Computing | GangState::Checkpointing { .. })
        {
            self.interruptions_by_class[class_idx as usize] += 1;
        }
        let persistence = class.persistence;
        let manifestation = class.manifestation;
        let active = ActiveFault { class: class_idx, persistence };
        // Record persistent damage.
        if persistence != Persistence::Transient {
            match device {
                Some(d) if class.scope == FaultScope::Device => {
                    let i = self.dev(node, d);
                    // A quarantined device that breaks stops counting as collateral.
                    if let Some(since) = self.devices[i].collateral_since.take() {
                        self.fleet_lost.collateral_quarantine += hours(self.now.since(since).0);
                    }
                    self.devices[i].fault = Some(active);
                    if class.device_plugin_detects {
                        self.devices[i].plugin_unhealthy = true;
                    }
                }
                _ => self.nodes[node as usize].host_fault = Some(active),
            }
        }
        if manifestation == Manifestation::NodeDown {
            self.nodes[node as usize].up = false;
        }
        self.refresh_broken(node);
        // Signals the strategies can see: the lines that arrive now (late ones follow).
        let count = class.kernel_lines.len();
        self.signal(Signal::Fault { class: class_idx, node, device, pid, lines: lines.on_time(count) });
        let late = lines.late & all_lines(count);
        if late != 0 {
            let source = LineSource::Fault(class_idx);
            self.queue
                .push(self.now + lines.late_by, Event::LateLines { source, node, device, pid, lines: late });
        }
        // A person opens a repair ticket for hardware that Kubernetes shows as broken.
        let visible_to_people = class.device_plugin_detects || manifestation == Manifestation::NodeDown;
        if visible_to_people && persistence != Persistence::Transient {
            self.open_ticket(node, self.operator_delay());
        }
        if manifestation == Manifestation::Evicted {
            // The provider drains the node and takes it for maintenance.
            self.drain_node(node, false);
            let kind = Repair::needed_for(persistence).unwrap_or(Repair::Reboot);
            self.start_repair(node, kind, false);
            return;
        }
        // Who is hit.
        let fabric_only = class.scope == FaultScope::Node && manifestation == Manifestation::Hang;
        if let Some((g, member)) = self.nodes[node as usize].gang_member {
            self.gang_fault(g, member, manifestation, class_idx);
        }
        if fabric_only {
            return;
        }
        match (class.scope, device) {
            (FaultScope::Device | FaultScope::Workload, Some(d)) => {
                let i = self.dev(node, d);
                if let Some((s, r)) = self.devices[i].occupant {
                    self.replica_fault(s, r, manifestation, persistence);
                }
            }
            _ => {
                for d in 0..self.gpn as u8 {
                    let i = self.dev(node, d);
                    if let Some((s, r)) = self.devices[i].occupant
                        && d == self.services[s as usize].replicas[r as usize].first_device
                    {
                        self.replica_fault(s, r, manifestation, persistence);
                    }
                }
            }
        }
    }
}
