//! The `Network links` section of `kubectl devheal status`: each node's NICs whose link is down,
//! at fault, or has flapped, from `status.network` of its NodeDeviceHealth (the agent's NIC link
//! tracker, `docs/agent.md` "NIC links"). A link that is up and never flapped says nothing and is
//! not listed.

use devheal_k8s::crd::{NicLinkState, NodeDeviceHealth};
use k8s_openapi::jiff::Timestamp;
use serde::Serialize;

use super::text::{age, clip, or_dash, stamp, table};

/// One NIC link worth a look.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LinkRow {
    pub node: String,
    /// Its interface or RDMA device names, else its PCI address.
    pub nic: String,
    pub pci_address: String,
    /// `Up`, `Down` or `Unknown`.
    pub link: String,
    /// Flaps since the agent started.
    pub flaps: u64,
    /// The network fault, when the link is at fault.
    pub fault: Option<String>,
    pub fault_since: Option<String>,
    pub fault_since_age: Option<String>,
}

/// The links down, at fault or flapping, by node and address.
pub fn links(health: &[NodeDeviceHealth], now: Timestamp) -> Vec<LinkRow> {
    let mut rows = Vec::new();
    for h in health {
        let node = h.metadata.name.clone().unwrap_or_else(|| h.spec.node_name.clone());
        let Some(status) = &h.status else { continue };
        for nic in &status.network {
            if nic.link != NicLinkState::Down && nic.fault.is_none() && nic.flaps == 0 {
                continue;
            }
            let since = nic.fault_since.as_ref().map(|t| t.0);
            rows.push(LinkRow {
                node: node.clone(),
                nic: if nic.names.is_empty() { nic.pci_address.clone() } else { nic.names.join(",") },
                pci_address: nic.pci_address.clone(),
                link: format!("{:?}", nic.link),
                flaps: nic.flaps,
                fault: nic.fault.clone(),
                fault_since: since.map(stamp),
                fault_since_age: since.map(|t| age(now, t)),
            });
        }
    }
    rows.sort_by(|a, b| (&a.node, &a.pci_address).cmp(&(&b.node, &b.pci_address)));
    rows
}

/// The section's table.
pub fn render(rows: &[LinkRow]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|l| {
            vec![
                l.node.clone(),
                l.nic.clone(),
                l.pci_address.clone(),
                l.link.clone(),
                l.flaps.to_string(),
                or_dash(l.fault_since_age.clone()),
                or_dash(l.fault.as_deref().map(|f| clip(f, 60))),
            ]
        })
        .collect();
    table(&["NODE", "NIC", "PCI", "LINK", "FLAPS", "FAULT SINCE", "FAULT"], &rows)
}
