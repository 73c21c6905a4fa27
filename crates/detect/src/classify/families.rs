//! The parsers for the fault families beyond NVIDIA Xids, PCIe AER, amdgpu and machine checks:
//! NVIDIA GSP firmware timeouts, EDAC memory errors, Intel Gaudi (habanalabs), Intel GPUs
//! (i915, xe) and NIC link state. Each returns `None` for a line that only shares a prefilter
//! literal with a fault. The message forms and the sources they were taken from are listed in
//! `docs/kernel-log.md`; the real lines are in `tests/data/real-lines.txt`.

use super::{Classifier, DeviceFault, FaultKind};
use crate::pci::{first_pci_address, normalize_pci_address};

impl Classifier {
    /// NVIDIA GSP firmware that stopped answering:
    /// `NVRM: GPU6 _kgspIsHeartbeatTimedOut: Heartbeat timed out, currentTimeMs ...`,
    /// `NVRM: GPU0 _kgspRpcRecvPoll: GSP RM heartbeat timed out`,
    /// `NVRM: GPU6 _kgspLogRpcTimeout: ****** GSP Timeout ******`,
    /// `NVRM: Timeout waiting for RPC from GSP! ...`. The messages name the GPU by its driver
    /// index, not its PCI address; the device stays unknown unless the line carries one.
    pub(super) fn gsp(&self, message: &str) -> Option<DeviceFault> {
        if !message.contains("NVRM") {
            return None;
        }
        let variant = if message.contains("eartbeat timed out") {
            "heartbeat_timeout"
        } else if message.contains("GSP Timeout") || message.contains("RPC from GSP") {
            "rpc_timeout"
        } else {
            return None;
        };
        let gpu = message
            .split_ascii_whitespace()
            .find(|token| token.starts_with("GPU") && token[3..].bytes().all(|b| b.is_ascii_digit()))
            .filter(|token| token.len() > 3);
        let detail = gpu.map(|gpu| format!("driver {gpu}")).unwrap_or_default();
        self.event_fault(FaultKind::NvidiaGsp, variant, first_pci_address(message), None, &detail)
    }

    /// EDAC memory-controller errors, with the DIMM they name:
    /// `EDAC MC0: 1 CE memory read error on CPU_SrcID#0_Ha#0_Chan#2_DIMM#0 (channel:2 ...)`,
    /// `EDAC MC0: 4 CE error on CPU#0Channel#2_DIMM#0 (channel:2 slot:0 ...)`,
    /// `EDAC MC1: 1 UE memory read error on CPU_SrcID#0_MC#0_Chan#0_DIMM#0 (...)`.
    pub(super) fn edac(&self, message: &str) -> Option<DeviceFault> {
        let at = message.find("EDAC MC")?;
        let after = &message[at + "EDAC MC".len()..];
        let (controller, rest) = after.split_once(": ")?;
        if controller.is_empty() || !controller.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let mut words = rest.split_ascii_whitespace();
        let count = words.next()?;
        if !count.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let variant = match words.next()? {
            "CE" => "corrected",
            "UE" => "uncorrected",
            _ => return None,
        };
        let location = rest
            .split_once(" on ")
            .map(|(_, on)| on.split(" (").next().unwrap_or(on).trim())
            .filter(|location| !location.is_empty());
        let mut detail = format!("{count} on memory controller {controller}");
        if let Some(location) = location {
            detail.push_str(", ");
            detail.push_str(location);
        }
        self.event_fault(FaultKind::Edac, variant, None, None, &detail)
    }

    /// Intel Gaudi: `habanalabs hl0: Device heartbeat failed! PCI link is broken` (the driver
    /// then resets the device). The driver names the device `hlN` or by PCI address.
    pub(super) fn habanalabs(&self, message: &str) -> Option<DeviceFault> {
        let at = message.find("Device heartbeat failed")?;
        if !message[..at].contains("habanalabs") && !message[..at].contains("accel") {
            return None;
        }
        let device = message[..at].split_ascii_whitespace().find_map(normalize_pci_address);
        // Without an address, the device's own name: `hl0`, `accel0` (the word after the
        // driver's or the class's).
        let name = match device {
            Some(_) => None,
            None => message[..at]
                .split_ascii_whitespace()
                .map(|w| w.trim_end_matches(':'))
                .find(|w| is_accel_name(w))
                .map(str::to_string),
        };
        let detail = message[at + "Device heartbeat failed".len()..].trim_start_matches('!').trim();
        let mut fault = self.event_fault(FaultKind::Habanalabs, "heartbeat_failed", device, None, detail)?;
        fault.device_name = name;
        Some(fault)
    }

    /// Intel GPUs, i915 and xe:
    /// `i915 0000:00:02.0: [drm] GPU HANG: ecode 12:1:0020fffe, in xdg-desktop-por [1676]`,
    /// `i915 0000:00:02.0: [drm] *ERROR* GT0: GUC: Engine reset failed on 0:0 (rcs0) ...`,
    /// `xe 0000:00:02.0: [drm] *ERROR* Tile0: GT0: reset failed (-ETIMEDOUT)`,
    /// `xe 0000:00:02.0: [drm] *ERROR* CRITICAL: Xe has declared device 0000:00:02.0 as wedged.`,
    /// `xe 0000:03:00.0: [drm] Tile0: GT0: Timedout job: seqno=..., guc_id=..., flags=0x0 ...`.
    pub(super) fn intel_gpu(&self, message: &str) -> Option<DeviceFault> {
        // The driver word may follow a prefix the line parser left in place (`22:39:31 kernel:`).
        let words: Vec<&str> = message.split_ascii_whitespace().take(8).collect();
        let driver_at =
            words.iter().position(|word| matches!(*word, "i915" | "xe") || word.starts_with("drmn"));
        let in_function = message.contains("[i915]]") || message.contains("[xe]]");
        if (driver_at.is_none() && !in_function) || !message.contains("[drm") {
            return None;
        }
        let device = driver_at.and_then(|at| words.get(at + 1)).and_then(|word| normalize_pci_address(word));
        let after_drm = message.split_once("*ERROR*").or_else(|| message.split_once("[drm]"));
        let detail = after_drm.map(|(_, rest)| rest.trim()).unwrap_or("");
        let variant = if message.contains("as wedged") || message.contains("declaring it wedged") {
            "wedged"
        } else if message.contains("reset failed")
            || message.contains("reset request failed")
            || message.contains("Failed to reset GuC")
            || message.contains("reset request timed out")
        {
            "reset_failed"
        } else if message.contains("GPU HANG") {
            "gpu_hang"
        } else if message.contains("Timedout job") {
            "job_timeout"
        } else {
            return None;
        };
        self.event_fault(FaultKind::IntelGpu, variant, device, None, detail)
    }

    /// NIC link state, from the driver that owns the port:
    /// `mlx5_core 0000:01:00.1 eth1: Link up`, `mlx5_core 0000:08:00.0 ens1np0: Link down`,
    /// `igb 0000:00:14.0 eth0: igb: eth0 NIC Link is Down`,
    /// `igc 0000:05:00.0 eth5: NIC Link is Up 100 Mbps Full Duplex, Flow Control: RX`.
    /// A line names the port by its PCI address (which the agent maps to a NIC of its node),
    /// by its interface name (`e1000e: eth0 NIC Link is Down`), or both; a line that names
    /// neither does not count (a switch chip's `mdio-bus:1f lan: Link is Down` is not a NIC's).
    pub(super) fn nic_link(&self, message: &str) -> Option<DeviceFault> {
        let (before, variant) = if let Some(at) = message.find("NIC Link is ") {
            let state = &message[at + "NIC Link is ".len()..];
            let variant = if state.starts_with("Down") {
                "down"
            } else if state.starts_with("Up") {
                "up"
            } else {
                return None;
            };
            (&message[..at], variant)
        } else if let Some(before) = message.strip_suffix("Link down") {
            (before, "down")
        } else if let Some(before) = message.strip_suffix("Link up") {
            (before, "up")
        } else {
            return None;
        };
        // `driver ADDRESS interface: ...`: the port's PCI address, then (usually) its interface.
        // Without an address (`e1000e: eth0 NIC Link is Down`), the interface alone: the last
        // word before the state, which the agent maps to a NIC of its node by name.
        let words: Vec<&str> = before.split_ascii_whitespace().collect();
        let (device, interface) = match words.iter().position(|word| normalize_pci_address(word).is_some()) {
            Some(at) => {
                let device = normalize_pci_address(words[at])?;
                let interface = words
                    .get(at + 1)
                    .map(|word| word.trim_end_matches(':'))
                    .filter(|word| !word.contains(':') && is_interface_name(word));
                (Some(device), interface)
            }
            None => (None, Some(words.last()?.trim_end_matches(':')).filter(|w| is_interface_name(w))),
        };
        if device.is_none() && interface.is_none() {
            return None;
        }
        let detail = interface.map(|name| format!("interface {name}")).unwrap_or_default();
        let mut fault = self.event_fault(FaultKind::NicLink, variant, device, None, &detail)?;
        fault.interface = interface.map(str::to_string);
        Some(fault)
    }
}

/// A Gaudi device's own name: `hl<N>` (the habanalabs class, before the accel subsystem) or
/// `accel<N>` (the accel class, Linux 6.2 and later).
fn is_accel_name(word: &str) -> bool {
    let digits = word.strip_prefix("accel").or_else(|| word.strip_prefix("hl"));
    digits.is_some_and(|d| !d.is_empty() && d.len() <= 4 && d.bytes().all(|b| b.is_ascii_digit()))
}

/// A Linux interface name: 1 to 15 bytes (`IFNAMSIZ` less the NUL), no `/`, `:` or blank.
fn is_interface_name(word: &str) -> bool {
    (1..=15).contains(&word.len())
        && word.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'@'))
}
