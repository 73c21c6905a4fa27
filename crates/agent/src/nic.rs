//! The node's NICs from sysfs, so that a kernel line about a link (`mlx5_core 0000:08:00.0
//! ens1np0: Link down`) maps to a NIC of this node, and the link state sysfs reads now.
//!
//! - **Network interfaces.** `<class>/net/<interface>/device` is a link to the interface's
//!   device; for a PCI NIC its last component is the function's PCI address (virtual interfaces
//!   have no `device`, USB ones another kind of name: neither is read). The link is `up` or
//!   `down` in `operstate`; an interface that is administratively down (`flags` without
//!   `IFF_UP`) is not in use and says nothing.
//! - **RDMA devices.** `<class>/infiniband/<device>/device` likewise; each port's
//!   `ports/<n>/state` reads `4: ACTIVE` when the link is up and `1: DOWN` when it is down
//!   (`INIT` and `ARMED` are a link still being brought up: they say nothing).
//!
//! One NIC is one PCI function, with all the names it goes by. A node with RDMA devices runs
//! its gangs' collectives over them: there only the RDMA NICs are the fabric the agent follows
//! ([`NicInventory::fabric`]); a node without any follows every PCI NIC.
//!
//! The read is bounded ([`MAX_ENTRIES`] directory entries per class, [`MAX_NICS`] NICs) and
//! never fails the agent: what cannot be read is said in [`NicInventory::message`].

use std::collections::BTreeMap;
use std::path::Path;

use devheal_detect::LinkState;
use devheal_detect::pci::normalize_pci_address;

/// Most entries looked at in `net/` and in `infiniband/` (a node has tens of interfaces, most
/// of them virtual).
pub const MAX_ENTRIES: usize = 4096;
/// Most NICs kept.
pub const MAX_NICS: usize = 64;
/// `IFF_UP` in an interface's `flags`.
const IFF_UP: u64 = 0x1;

/// One NIC: a PCI function with network interfaces or RDMA devices.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Nic {
    pub pci_address: String,
    /// Its network interfaces (`ens1np0`), sorted.
    pub interfaces: Vec<String>,
    /// Its RDMA devices (`mlx5_0`), sorted.
    pub rdma: Vec<String>,
    /// The link as sysfs has it now: `None` when nothing says (administratively down, a port
    /// still training, no state file).
    pub link: Option<LinkState>,
}

impl Nic {
    /// How reasons name it: `ens1np0 (0000:08:00.0)`, its RDMA device's name, or the address.
    pub fn label(&self) -> String {
        match self.interfaces.first().or(self.rdma.first()) {
            Some(name) => format!("{name} ({})", self.pci_address),
            None => self.pci_address.clone(),
        }
    }

    /// Every name it goes by: interfaces, then RDMA devices.
    pub fn names(&self) -> Vec<String> {
        self.interfaces.iter().chain(self.rdma.iter()).cloned().collect()
    }
}

/// What was read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NicInventory {
    /// By PCI address.
    pub nics: Vec<Nic>,
    /// Whether `net/` could be read at all.
    pub available: bool,
    /// One line for the source's status.
    pub message: String,
}

impl NicInventory {
    /// The NICs the node's gangs use: the RDMA NICs if it has any, else every NIC.
    pub fn fabric(&self) -> impl Iterator<Item = &Nic> {
        let rdma = self.nics.iter().any(|n| !n.rdma.is_empty());
        self.nics.iter().filter(move |n| !rdma || !n.rdma.is_empty())
    }

    /// The NIC of this node a kernel line names, by its PCI address, else by an interface or
    /// RDMA device name. `None`: not a NIC of this node.
    pub fn find(&self, pci_address: Option<&str>, name: Option<&str>) -> Option<&Nic> {
        if let Some(pci) = pci_address {
            return self.nics.iter().find(|n| n.pci_address == pci);
        }
        let name = name?;
        self.nics.iter().find(|n| n.interfaces.iter().chain(n.rdma.iter()).any(|x| x == name))
    }
}

/// The PCI address a `device` link in sysfs points at, if it is a PCI function.
fn pci_of(entry: &Path) -> Option<String> {
    let target = std::fs::read_link(entry.join("device")).ok()?;
    let last = target.file_name()?.to_str()?;
    normalize_pci_address(last)
}

fn read_trimmed(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    // Attribute files are one short line; a longer one is not a state.
    (text.len() <= 64).then(|| text.trim().to_ascii_lowercase())
}

/// An interface's link: `None` when administratively down or `operstate` says neither.
fn interface_link(dir: &Path) -> Option<LinkState> {
    if let Some(flags) = read_trimmed(&dir.join("flags"))
        && let Ok(flags) = u64::from_str_radix(flags.trim_start_matches("0x"), 16)
        && flags & IFF_UP == 0
    {
        return None;
    }
    match read_trimmed(&dir.join("operstate"))?.as_str() {
        "up" => Some(LinkState::Up),
        "down" | "lowerlayerdown" => Some(LinkState::Down),
        _ => None,
    }
}

/// An RDMA device's link over its ports: down if a port is down, up if one is active.
fn rdma_link(dir: &Path) -> Option<LinkState> {
    let ports = std::fs::read_dir(dir.join("ports")).ok()?;
    let mut link = None;
    for port in ports.take(16).flatten() {
        let Some(state) = read_trimmed(&port.path().join("state")) else { continue };
        let word = state.split_once(':').map_or(state.as_str(), |(_, w)| w.trim());
        match word {
            "down" => return Some(LinkState::Down),
            "active" => link = Some(LinkState::Up),
            _ => {}
        }
    }
    link
}

/// Both views of one NIC: down if either says down, up if either says up.
fn combine(a: Option<LinkState>, b: Option<LinkState>) -> Option<LinkState> {
    match (a, b) {
        (Some(LinkState::Down), _) | (_, Some(LinkState::Down)) => Some(LinkState::Down),
        (Some(LinkState::Up), _) | (_, Some(LinkState::Up)) => Some(LinkState::Up),
        _ => None,
    }
}

/// Each entry of a sysfs class directory that is a PCI function, handed to `f` with the NIC of
/// its address (at most [`MAX_ENTRIES`] entries and [`MAX_NICS`] NICs; entries beyond are
/// counted in `skipped`).
fn each_function(
    entries: std::fs::ReadDir,
    nics: &mut BTreeMap<String, Nic>,
    skipped: &mut usize,
    mut f: impl FnMut(&mut Nic, String, &Path),
) {
    for entry in entries.take(MAX_ENTRIES).flatten() {
        let Some(name) = entry.file_name().to_str().map(str::to_string) else { continue };
        let path = entry.path();
        let Some(pci) = pci_of(&path) else { continue };
        if !nics.contains_key(&pci) && nics.len() >= MAX_NICS {
            *skipped += 1;
            continue;
        }
        let nic = nics.entry(pci.clone()).or_insert_with(|| Nic { pci_address: pci, ..Nic::default() });
        f(nic, name, &path);
    }
}

/// Read the node's NICs under `class_dir` (`/sys/class`).
pub fn read_nics(class_dir: &Path) -> NicInventory {
    let mut out = NicInventory::default();
    let mut nics: BTreeMap<String, Nic> = BTreeMap::new();
    let mut skipped = 0usize;
    let net = class_dir.join("net");
    match std::fs::read_dir(&net) {
        Ok(entries) => {
            out.available = true;
            each_function(entries, &mut nics, &mut skipped, |nic, name, path| {
                nic.link = combine(nic.link, interface_link(path));
                nic.interfaces.push(name);
            });
        }
        Err(e) => {
            out.message = format!("cannot read {}: {e}; NIC link lines are not followed", net.display());
            return out;
        }
    }
    if let Ok(entries) = std::fs::read_dir(class_dir.join("infiniband")) {
        each_function(entries, &mut nics, &mut skipped, |nic, name, path| {
            nic.link = combine(nic.link, rdma_link(path));
            nic.rdma.push(name);
        });
    }
    for nic in nics.values_mut() {
        nic.interfaces.sort();
        nic.rdma.sort();
    }
    out.nics = nics.into_values().collect();
    let rdma = out.nics.iter().filter(|n| !n.rdma.is_empty()).count();
    out.message = format!("{} NIC(s), {rdma} with RDMA", out.nics.len());
    if skipped > 0 {
        out.message.push_str(&format!(" ({skipped} beyond the first {MAX_NICS} not followed)"));
    }
    out
}
