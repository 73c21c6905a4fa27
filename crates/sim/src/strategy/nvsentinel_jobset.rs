//! `nvsentinel-jobset`: NVIDIA NVSentinel remediating nodes, JobSet recreating the gang.
//!
//! What NVSentinel does, from its documentation and code (docs/simulator.md has the sources):
//! - syslog-health-monitor reads journald every 15 s and gives each Xid the action of NVIDIA's
//!   Xid catalogue: none for application Xids (13, 31, 43, 63 …), `COMPONENT_RESET` for
//!   48/95/119 …, `RESTART_BM` for 79 and "fallen off the bus", `CONTACT_SUPPORT` for 74, fatal
//!   SXids and unknown codes; the nic-health-monitor sees a NIC that fell off the PCIe bus
//!   (`REPLACE_VM`); gpu-health-monitor's DCGM health check (also every 15 s) adds nothing for
//!   thermal throttling;
//! - fault-quarantine cordons the whole node (measured 1.8 s after the event), node-drainer
//!   evicts (measured about 70 s): only the pods using the GPU for a `COMPONENT_RESET` (partial
//!   drain), every pod otherwise;
//! - fault-remediation asks janitor for a GPU reset (`COMPONENT_RESET`) or a reboot
//!   (`RESTART_BM`); other actions have no default template, so a person takes the node;
//! - after a successful reset the node is uncordoned; after a reboot that fixed it, too.
//!
//! JobSet recreates the gang when a pod fails or is evicted; the scheduler keeps new pods off
//! cordoned nodes and devices the device plugin marks Unhealthy.

use std::collections::{BTreeMap, BTreeSet};

use devheal_core::Duration;

use super::{
    Command, Commands, Mechanics, Policy, Repair, Signal, Strategy, View, arriving, next_poll, source_lines,
};
use crate::scenario::{NvmlSignal, Scenario, secs};

/// What NVSentinel does about a health event, in increasing order of reach.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Action {
    /// Not fatal: recorded, nothing done.
    None,
    /// Cordon, evict the pods on the GPU, reset the GPU.
    ComponentReset,
    /// Cordon, drain, reboot the node.
    RestartBm,
    /// Cordon, drain, and leave the node to a person (`CONTACT_SUPPORT`, `REPLACE_VM`).
    Escalate,
}

/// The Xid catalogue's action as NVSentinel's syslog monitor applies it (peers-and-xid-catalog
/// §4.3, "NVSentinel syslog-HM" column). Codes it does not list are fatal (`CONTACT_SUPPORT`).
pub(crate) fn xid_action(code: u32) -> Action {
    match code {
        8 | 13 | 31 | 32 | 43 | 44 | 45 | 63 | 68 | 69 | 92 | 94 | 121 | 137 | 157 => Action::None,
        46 | 48 | 62 | 64 | 95 | 109 | 110 | 119 | 120 | 136 | 140 | 143 | 155 | 156 | 158 => {
            Action::ComponentReset
        }
        79 | 151 => Action::RestartBm,
        _ => Action::Escalate,
    }
}

/// The Xid code of an `NVRM: Xid (PCI:…): N, …` line.
fn xid_code(line: &str) -> Option<u32> {
    let rest = &line[line.find("Xid (")? + 5..];
    let rest = rest[rest.find("): ")? + 3..].trim_start();
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// NVSentinel's action for one kernel line, and whether its source is the 1 s NIC port poll
/// (otherwise the 15 s journald poll).
pub(crate) fn line_action(line: &str) -> (Action, bool) {
    if let Some(code) = xid_code(line) {
        return (xid_action(code), false);
    }
    if line.contains("SXid") {
        let fatal = line.contains("Fatal");
        return (if fatal { Action::Escalate } else { Action::None }, false);
    }
    if line.contains("fallen off the bus") {
        return (Action::RestartBm, false);
    }
    // A NIC whose PCIe link failed disappears from sysfs: nic-health-monitor reports it fatal
    // (`REPLACE_VM`) after three 1 s polls.
    if line.contains("Uncorrected (Fatal)") {
        return (Action::Escalate, true);
    }
    // A link that goes down and comes back within seconds: the monitor's recovery event
    // un-quarantines the node before the drain would start. Machine checks and other host
    // lines are not NVSentinel's to watch.
    (Action::None, false)
}

/// The strongest action of some lines, and whether the NIC monitor (not the 15 s poll) saw it.
fn lines_action<'l>(lines: impl Iterator<Item = &'l String>) -> (Action, bool) {
    let mut action = Action::None;
    let mut nic = false;
    for line in lines {
        let (a, from_nic) = line_action(line);
        if a > action {
            action = a;
            nic = from_nic;
        }
    }
    (action, nic)
}

/// What NVSentinel does about one node.
#[derive(Debug)]
struct Remediation {
    action: Action,
    /// The GPUs to reset (for `ComponentReset`).
    devices: BTreeSet<u8>,
    /// node-drainer has evicted and fault-remediation has asked for the repair.
    started: bool,
    /// Which eviction timer is current.
    token: u32,
}

#[derive(Debug)]
pub(crate) enum Timer {
    /// A monitor's poll finds the event.
    Found { node: u32, device: u8, action: Action },
    /// fault-quarantine cordons the node.
    Cordon { node: u32 },
    /// node-drainer evicts, then fault-remediation asks for the repair.
    Evict { node: u32, token: u32 },
}

type Out = Commands<Timer>;

pub(crate) struct NvsentinelJobset<'a> {
    scenario: &'a Scenario,
    poll: Duration,
    quarantine: Duration,
    eviction: Duration,
    nodes: BTreeMap<u32, Remediation>,
    tokens: u32,
}

impl<'a> NvsentinelJobset<'a> {
    /// The monitor saw `action` for the node: the event reaches fault-quarantine at the node's
    /// next poll (the NIC monitor's in 3 s).
    fn act(
        &mut self,
        node: u32,
        device: Option<u8>,
        action: Action,
        nic: bool,
        view: &dyn View,
        out: &mut Out,
    ) {
        if action == Action::None {
            return;
        }
        let now = view.now();
        let at = if nic { now + secs(3.0) } else { next_poll(node, self.poll, now) };
        let device = device.unwrap_or(0);
        out.push(Command::After { delay: at.since(now), timer: Timer::Found { node, device, action } });
    }

    pub(crate) fn new(scenario: &'a Scenario) -> Self {
        let n = &scenario.strategies.nvsentinel_jobset;
        NvsentinelJobset {
            scenario,
            poll: secs(n.poll_interval_s),
            quarantine: secs(n.quarantine_s),
            eviction: secs(n.eviction_s),
            nodes: BTreeMap::new(),
            tokens: 0,
        }
    }

    /// A monitor reported the event: quarantine now, drain and remediate after the drainer's delay.
    fn found(&mut self, node: u32, device: u8, action: Action, out: &mut Out) {
        self.tokens += 1;
        let token = self.tokens;
        let r = self.nodes.entry(node).or_insert(Remediation {
            action,
            devices: BTreeSet::new(),
            started: false,
            token,
        });
        let new_device = action == Action::ComponentReset && !r.devices.contains(&device);
        if r.started {
            // Already remediating: a new event starts another round only if it asks for more.
            if action < r.action || (action == r.action && !new_device) {
                return;
            }
            *r = Remediation { action, devices: BTreeSet::new(), started: false, token };
        } else {
            r.action = r.action.max(action);
            r.token = token;
        }
        if action == Action::ComponentReset {
            r.devices.insert(device);
        }
        out.push(Command::After { delay: self.quarantine, timer: Timer::Cordon { node } });
        out.push(Command::After { delay: self.eviction, timer: Timer::Evict { node, token } });
    }

    fn evict(&mut self, node: u32, token: u32, view: &dyn View, out: &mut Out) {
        let Some(r) = self.nodes.get_mut(&node) else { return };
        if r.token != token || r.started {
            return;
        }
        r.started = true;
        if view.node(node).in_repair {
            return;
        }
        match r.action {
            Action::None => {}
            Action::ComponentReset => {
                for &device in &r.devices {
                    out.push(Command::EvictDevicePods { node, device });
                }
                for &device in &r.devices {
                    out.push(Command::ResetDevice { node, device });
                }
            }
            Action::RestartBm => {
                out.push(Command::Drain { node });
                out.push(Command::Repair { node, kind: Repair::Reboot });
            }
            Action::Escalate => {
                out.push(Command::Drain { node });
                out.push(Command::Ticket { node });
            }
        }
    }

    /// A GPU reset finished: if every GPU it reset is healthy the node is uncordoned; if not, the
    /// reset's health check failed and a person takes the node.
    fn reset_done(&mut self, node: u32, view: &dyn View, out: &mut Out) {
        let Some(r) = self.nodes.get(&node) else { return };
        if !r.started || r.action != Action::ComponentReset {
            return;
        }
        if r.devices.iter().all(|&d| !view.device_faulty(node, d)) {
            out.push(Command::Uncordon { node });
        } else {
            out.push(Command::Ticket { node });
        }
        self.nodes.remove(&node);
    }
}

impl Policy for NvsentinelJobset<'_> {
    type Timer = Timer;

    fn strategy(&self) -> Strategy {
        Strategy::NvsentinelJobset
    }

    fn mechanics(&self) -> Mechanics {
        Mechanics { recreates_pods: true, in_job_restart: false, agent_resets: false }
    }

    fn signal(&mut self, signal: Signal, view: &dyn View, out: &mut Out) {
        match signal {
            Signal::Fault { class, node, device, lines, .. } => {
                let class = &self.scenario.faults[class as usize];
                let (mut action, nic) = lines_action(arriving(&class.kernel_lines, lines));
                if class.kernel_lines.is_empty() && class.nvml == NvmlSignal::Unhealthy {
                    // DCGM's health check: a GPU that needs a reset.
                    action = Action::ComponentReset;
                }
                self.act(node, device, action, nic, view, out);
            }
            Signal::KernelLines { source, node, device, lines, .. } => {
                let (action, nic) = lines_action(arriving(source_lines(self.scenario, source), lines));
                self.act(node, device, action, nic, view, out);
            }
            Signal::DeviceRepaired { node, .. } => self.reset_done(node, view, out),
            Signal::NodeRepaired { node } => {
                self.nodes.remove(&node);
            }
            _ => {}
        }
    }

    fn timer(&mut self, timer: Timer, view: &dyn View, out: &mut Out) {
        match timer {
            Timer::Found { node, device, action } => self.found(node, device, action, out),
            Timer::Cordon { node } => {
                if !view.node(node).in_repair {
                    out.push(Command::Cordon { node });
                }
            }
            Timer::Evict { node, token } => self.evict(node, token, view, out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalogue_maps_application_xids_to_no_action() {
        let line = |code: u32| format!("NVRM: Xid (PCI:0000:18:00): {code}, pid=4242, name=python3, x");
        assert_eq!(line_action(&line(13)), (Action::None, false));
        assert_eq!(line_action(&line(31)), (Action::None, false));
        assert_eq!(line_action(&line(63)), (Action::None, false));
        assert_eq!(line_action(&line(48)), (Action::ComponentReset, false));
        assert_eq!(line_action(&line(95)), (Action::ComponentReset, false));
        assert_eq!(line_action(&line(119)), (Action::ComponentReset, false));
        assert_eq!(line_action(&line(79)), (Action::RestartBm, false));
        assert_eq!(line_action(&line(74)), (Action::Escalate, false));
        assert_eq!(line_action(&line(999)), (Action::Escalate, false), "unknown codes are fatal");
        assert_eq!(
            line_action("nvidia-nvswitch2: SXid (PCI:0000:86:00.0): 20034, Fatal, Link 40 LTSSM Fault Up"),
            (Action::Escalate, false)
        );
        assert_eq!(
            line_action("NVRM: GPU 0000:18:00.0: GPU has fallen off the bus."),
            (Action::RestartBm, false)
        );
        assert_eq!(line_action("mlx5_core 0000:0c:00.0 ibp12s0: Link down"), (Action::None, false));
        assert_eq!(
            line_action("pcieport 0000:00:01.0: AER: Uncorrected (Fatal) error received: 0000:0c:00.0"),
            (Action::Escalate, true)
        );
        assert_eq!(line_action("mce: [Hardware Error]: Machine check events logged"), (Action::None, false));
    }
}
