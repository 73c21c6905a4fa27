//! A node's device topology: which PCIe bridge or switch port each device sits below, and which
//! GPUs each NVSwitch links. Correlation uses it so that a fault on a port and the faults of the
//! devices below it, or an NVSwitch fault and the NVLink faults of its GPUs, become one incident
//! whose root cause is the upstream part.
//!
//! The text form (`devheal classify-log --topology FILE`, see `docs/kernel-log.md`), one entry a
//! line, `#` starts a comment:
//!
//! ```text
//! # a device's sysfs path (`readlink -f /sys/bus/pci/devices/0000:1b:00.0`): every PCI address
//! # in it is the parent of the next one
//! /sys/devices/pci0000:00/0000:00:01.0/0000:01:00.0/0000:02:08.0/0000:1b:00.0
//! # the same chain written directly, upstream first
//! pci 0000:00:01.0 0000:01:00.0 0000:02:08.0 0000:1b:00.0
//! # an NVSwitch and the GPUs its links reach
//! nvswitch 0000:c6:00.0 0000:1b:00.0 0000:43:00.0
//! ```
//!
//! The agent builds the same value from sysfs; both go through [`Topology::add_path`].

use std::collections::{HashMap, HashSet};

use crate::pci::normalize_pci_address;

/// Most devices one topology may name (a large node has a few hundred PCI functions).
pub const MAX_DEVICES: usize = 16_384;
/// Deepest PCIe path accepted (real ones are under ten hops).
pub const MAX_DEPTH: usize = 32;
/// Longest topology text accepted.
pub const MAX_TEXT_BYTES: usize = 4 << 20;

/// A topology that could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    #[error("topology {origin} is {len} bytes, more than the {max}-byte limit")]
    TooLong { origin: String, len: usize, max: usize },
    #[error("topology {origin}, line {line}: {message}")]
    Invalid { origin: String, line: usize, message: String },
    #[error("topology {origin}: more than {max} devices")]
    TooManyDevices { origin: String, max: usize },
}

/// Device relationships on one node. Addresses are normalised `dddd:bb:dd.f`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Topology {
    parent: HashMap<String, String>,
    /// NVSwitch → the GPUs its links reach.
    nvlinks: HashMap<String, HashSet<String>>,
    /// Every address named, for the size limit.
    known: HashSet<String>,
}

impl Topology {
    pub fn new() -> Topology {
        Topology::default()
    }

    /// Parse the text form; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Topology, TopologyError> {
        if text.len() > MAX_TEXT_BYTES {
            return Err(TopologyError::TooLong {
                origin: origin.to_string(),
                len: text.len(),
                max: MAX_TEXT_BYTES,
            });
        }
        let mut topology = Topology::new();
        for (index, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let invalid = |message: String| TopologyError::Invalid {
                origin: origin.to_string(),
                line: index + 1,
                message,
            };
            let mut words = line.split_ascii_whitespace();
            let first = words.next().unwrap_or("");
            let result = if first.starts_with('/') {
                if words.next().is_some() {
                    return Err(invalid("a sysfs path is alone on its line".into()));
                }
                let chain: Vec<String> = first.split('/').filter_map(normalize_pci_address).collect();
                if chain.is_empty() {
                    return Err(invalid(format!("no PCI address in the path `{first}`")));
                }
                topology.add_path(&chain)
            } else if first == "pci" || first == "nvswitch" {
                let mut addresses = Vec::new();
                for word in words {
                    match normalize_pci_address(word) {
                        Some(address) => addresses.push(address),
                        None => return Err(invalid(format!("`{word}` is not a PCI address"))),
                    }
                }
                if first == "pci" {
                    if addresses.len() < 2 {
                        return Err(invalid("`pci` needs at least two addresses, upstream first".into()));
                    }
                    topology.add_path(&addresses)
                } else {
                    let Some((switch, gpus)) = addresses.split_first().filter(|(_, gpus)| !gpus.is_empty())
                    else {
                        return Err(invalid("`nvswitch` needs the switch's address and its GPUs'".into()));
                    };
                    topology.add_nvlinks(switch, gpus)
                }
            } else {
                return Err(invalid(format!(
                    "expected a sysfs path, `pci ...` or `nvswitch ...`, found `{first}`"
                )));
            };
            result.map_err(invalid)?;
            if topology.device_count() > MAX_DEVICES {
                return Err(TopologyError::TooManyDevices { origin: origin.to_string(), max: MAX_DEVICES });
            }
        }
        Ok(topology)
    }

    /// Record a PCIe path, upstream first: each address is the parent of the next. A device's
    /// parent, once known, may not change (two paths that disagree are an error).
    pub fn add_path(&mut self, chain: &[String]) -> Result<(), String> {
        if chain.len() > MAX_DEPTH {
            return Err(format!("the path is {} devices deep, more than {MAX_DEPTH}", chain.len()));
        }
        for pair in chain.windows(2) {
            let (upstream, device) = (&pair[0], &pair[1]);
            if upstream == device || self.is_upstream_of(device, upstream) {
                return Err(format!("{device} cannot be below itself"));
            }
            match self.parent.get(device) {
                Some(known) if known != upstream => {
                    return Err(format!("{device} is below {known} already, not below {upstream}"));
                }
                _ => {
                    self.parent.insert(device.clone(), upstream.clone());
                }
            }
        }
        self.known.extend(chain.iter().cloned());
        Ok(())
    }

    /// Record the GPUs an NVSwitch's links reach.
    pub fn add_nvlinks(&mut self, switch: &str, gpus: &[String]) -> Result<(), String> {
        if gpus.iter().any(|gpu| gpu == switch) {
            return Err(format!("{switch} cannot link to itself"));
        }
        self.nvlinks.entry(switch.to_string()).or_default().extend(gpus.iter().cloned());
        self.known.insert(switch.to_string());
        self.known.extend(gpus.iter().cloned());
        Ok(())
    }

    /// How many devices the topology names.
    pub fn device_count(&self) -> usize {
        self.known.len()
    }

    pub fn is_empty(&self) -> bool {
        self.parent.is_empty() && self.nvlinks.is_empty()
    }

    /// The device's parent port or bridge, if known.
    pub fn parent(&self, device: &str) -> Option<&str> {
        self.parent.get(device).map(String::as_str)
    }

    /// Whether `upstream` is above `device` on its PCIe path (not the device itself).
    pub fn is_upstream_of(&self, upstream: &str, device: &str) -> bool {
        let mut at = device;
        for _ in 0..MAX_DEPTH {
            match self.parent.get(at) {
                Some(parent) if parent == upstream => return true,
                Some(parent) => at = parent,
                None => return false,
            }
        }
        false
    }

    /// Whether the NVSwitch `switch` links the GPU `gpu`.
    pub fn links(&self, switch: &str, gpu: &str) -> bool {
        self.nvlinks.get(switch).is_some_and(|gpus| gpus.contains(gpu))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "\
# two GPUs below one PCIe switch, one NVSwitch
/sys/devices/pci0000:00/0000:00:01.0/0000:01:00.0/0000:02:08.0/0000:1b:00.0
pci 0000:00:01.0 0000:01:00.0 0000:02:10.0 0000:43:00.0   # the second GPU
nvswitch 0000:c6:00.0 0000:1b:00.0 0000:43:00.0
";

    #[test]
    fn paths_and_links() {
        let topology = Topology::parse(EXAMPLE, "example").unwrap();
        assert_eq!(topology.parent("0000:1b:00.0"), Some("0000:02:08.0"));
        assert!(topology.is_upstream_of("0000:00:01.0", "0000:1b:00.0"));
        assert!(topology.is_upstream_of("0000:01:00.0", "0000:43:00.0"));
        assert!(!topology.is_upstream_of("0000:02:08.0", "0000:43:00.0"));
        assert!(!topology.is_upstream_of("0000:1b:00.0", "0000:1b:00.0"));
        assert!(topology.links("0000:c6:00.0", "0000:43:00.0"));
        assert!(!topology.links("0000:c6:00.0", "0000:00:01.0"));
        assert_eq!(topology.device_count(), 7);
    }

    #[test]
    fn errors_name_the_line() {
        let err = Topology::parse("pci 0000:00:01.0\n", "t.txt").unwrap_err();
        assert_eq!(
            err.to_string(),
            "topology t.txt, line 1: `pci` needs at least two addresses, upstream first"
        );
        let err = Topology::parse("# ok\npci 0000:00:01.0 banana\n", "t.txt").unwrap_err();
        assert!(err.to_string().contains("line 2: `banana` is not a PCI address"), "{err}");
        let err = Topology::parse("pci 0000:00:01.0 0000:01:00.0\npci 0000:00:02.0 0000:01:00.0\n", "t")
            .unwrap_err();
        assert!(err.to_string().contains("line 2: 0000:01:00.0 is below 0000:00:01.0 already"), "{err}");
        let err = Topology::parse("pci 0000:00:01.0 0000:01:00.0\npci 0000:01:00.0 0000:00:01.0\n", "t")
            .unwrap_err();
        assert!(err.to_string().contains("cannot be below itself"), "{err}");
        assert!(Topology::parse("gpu 0000:01:00.0\n", "t").is_err());
        assert!(Topology::parse("/sys/devices/platform/serial8250\n", "t").is_err());
        assert!(Topology::parse("nvswitch 0000:c6:00.0\n", "t").is_err());
    }

    proptest::proptest! {
        /// The parser never panics on any text, and what it accepts answers queries without
        /// looping (the fuzz target `fuzz/fuzz_targets/topology.rs` does the same on bytes).
        #[test]
        fn never_panics(lines in proptest::collection::vec(
            "(pci|nvswitch|/sys/devices/pci0000:00|#|x)?( (0000:0[0-3]:0[0-3]\\.[0-7]|[0-9a-f:./]{1,12}))*",
            0..12,
        )) {
            let text = lines.join("\n");
            if let Ok(topology) = Topology::parse(&text, "prop") {
                for word in text.split_ascii_whitespace() {
                    let _ = topology.is_upstream_of(word, "0000:01:00.0");
                    let _ = topology.is_upstream_of("0000:00:01.0", word);
                    let _ = topology.links(word, word);
                }
            }
        }
    }

    #[test]
    fn limits() {
        let deep: Vec<String> = (0..=MAX_DEPTH).map(|i| format!("0000:{i:02x}:00.0")).collect();
        assert!(Topology::new().add_path(&deep).is_err());
        let huge = "#".repeat(MAX_TEXT_BYTES + 1);
        assert!(matches!(Topology::parse(&huge, "t"), Err(TopologyError::TooLong { .. })));
    }
}
