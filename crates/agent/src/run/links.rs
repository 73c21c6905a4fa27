//! NIC links: the node's NICs read from sysfs every `nic_interval`, the link lines of the
//! kernel log and the link state sysfs reads given to the link tracker, which tells a flap
//! (counted, no action) from a network fault (published in `status.network`, which the
//! controller acts on). The node speaks only for its own NICs: a line that names no followed
//! NIC of this node is counted and dropped.

use devheal_detect::{FaultChange, LinkChange, LinkState};
use devheal_k8s::crd::{NicLinkState, NicLinkStatus};

use super::*;

impl LoopState {
    /// Read the NICs again (when due), follow the fabric's ones, and give the tracker the link
    /// state sysfs reads now: a change no kernel line told (an InfiniBand port, a missed line)
    /// counts from now.
    pub(super) fn refresh_nics(&mut self, now: Time) {
        let due = self.nics_read.is_none_or(|at| at.elapsed() >= self.nic_interval);
        if !due {
            return;
        }
        self.nics_read = Some(tokio::time::Instant::now());
        let read = crate::nic::read_nics(&self.sys_class_dir);
        if read != self.nics {
            tracing::info!(available = read.available, "NICs: {}", read.message);
        }
        let fabric: Vec<(String, String, Option<LinkState>)> =
            read.fabric().map(|n| (n.pci_address.clone(), n.label(), n.link)).collect();
        self.links.set_ports(fabric.iter().map(|(pci, label, _)| (pci.clone(), label.clone())), now);
        for (pci, _, link) in &fabric {
            if let Some(state) = link {
                self.link_changed(pci, *state, now);
            }
        }
        let message = format!("{}; {} followed as the fabric", read.message, fabric.len());
        self.set_source("nic_links", read.available, message, None, now);
        self.nics = read;
    }

    /// A kernel line about a NIC's link.
    pub(super) fn apply_link(
        &mut self,
        pci_address: Option<&str>,
        interface: Option<&str>,
        state: LinkState,
        at: Time,
    ) {
        let pci = self.nics.find(pci_address, interface).map(|n| n.pci_address.clone());
        match pci {
            // Logged at `at` (the kernel's clock); it counts from now, on the tracker's clock.
            Some(pci) if self.links.is_tracked(&pci) => self.link_logged(&pci, state, at, wall_now()),
            _ => {
                self.metrics.nic_lines_not_followed.inc();
            }
        }
    }

    /// A link state sysfs reads now.
    fn link_changed(&mut self, pci: &str, state: LinkState, now: Time) {
        self.link_logged(pci, state, now, now);
    }

    /// A link change logged at `logged_at` that reaches the loop at `now`.
    fn link_logged(&mut self, pci: &str, state: LinkState, logged_at: Time, now: Time) {
        let (change, raised) = self.links.change_logged(pci, state, logged_at, now);
        match change {
            LinkChange::NotTracked | LinkChange::Unchanged => {}
            LinkChange::Down => {
                self.metrics.nic_link_changes.get_or_create(&StateLabel { state: "down" }).inc();
                tracing::info!(nic = pci, "NIC link down");
            }
            LinkChange::Up { flap } => {
                self.metrics.nic_link_changes.get_or_create(&StateLabel { state: "up" }).inc();
                if flap {
                    self.metrics.nic_link_flaps.inc();
                    tracing::info!(nic = pci, "NIC link flap: back up within the flap window");
                }
            }
        }
        self.log_fault_changes(raised);
    }

    /// Time passes for the links (once a second), and the NICs are read again when due.
    pub(super) fn tick_links(&mut self, now: Time) {
        self.refresh_nics(now);
        let changes = self.links.tick(now);
        self.log_fault_changes(changes);
    }

    fn log_fault_changes(&self, changes: impl IntoIterator<Item = FaultChange>) {
        for change in changes {
            match change {
                FaultChange::Raised { port, reason } => {
                    tracing::warn!(nic = %port, %reason, "network fault: NIC link at fault")
                }
                FaultChange::Cleared { port } => {
                    tracing::info!(nic = %port, "NIC link up and stable again: fault cleared")
                }
            }
        }
        let at_fault = self.links.ports().filter(|(_, p)| p.fault.is_some()).count();
        self.metrics.nic_links_at_fault.set(at_fault as i64);
    }

    /// The followed NICs for `status.network`.
    pub(super) fn network_status(&self) -> Vec<NicLinkStatus> {
        self.links
            .ports()
            .map(|(pci, port)| NicLinkStatus {
                pci_address: pci.to_string(),
                names: self
                    .nics
                    .nics
                    .iter()
                    .find(|n| n.pci_address == pci)
                    .map(|n| n.names())
                    .unwrap_or_default(),
                link: match port.state {
                    Some(LinkState::Up) => NicLinkState::Up,
                    Some(LinkState::Down) => NicLinkState::Down,
                    None => NicLinkState::Unknown,
                },
                flaps: port.flaps_total,
                fault: port.fault.as_ref().map(|f| f.reason.clone()),
                fault_since: port.fault.as_ref().map(|f| k8s_time(f.since)),
            })
            .collect()
    }
}
