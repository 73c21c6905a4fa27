//! Device-fault classification of one kernel message: NVIDIA Xid and SXid, "fallen off the bus",
//! RmInitAdapter failures, GSP firmware timeouts, PCIe AER (including failed recovery), amdgpu,
//! machine checks, EDAC memory errors, Intel Gaudi (habanalabs), Intel GPUs (i915, xe) and NIC
//! link state.
//!
//! A literal prefilter (Aho–Corasick over the few substrings that can start a device fault)
//! rejects ordinary lines; only candidate lines reach the per-kind parsers, which are
//! hand-written scanners plus a couple of small regexes. Meanings come from the [`Catalog`].

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use devheal_core::{Attribution, Health, RepairKind};
use regex::Regex;
use serde::Serialize;

use crate::catalog::{Catalog, CatalogEntry};
use crate::pci::{address_from_requester_id, first_pci_address, normalize_pci_address};

mod families;
#[cfg(test)]
mod families_tests;

/// What kind of device fault a kernel message reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    NvidiaXid,
    NvidiaSxid,
    NvidiaFallenOffBus,
    /// The NVIDIA driver failed to initialise a GPU (`RmInitAdapter failed`).
    NvidiaInitFailure,
    PcieAer,
    Amdgpu,
    Mce,
    /// The NVIDIA GPU System Processor stopped answering (heartbeat or RPC timeouts).
    NvidiaGsp,
    /// EDAC memory-controller errors (corrected or uncorrected, with the DIMM).
    Edac,
    /// Intel Gaudi accelerators (the `habanalabs` driver).
    Habanalabs,
    /// Intel GPUs (the `i915` and `xe` drivers).
    IntelGpu,
    /// NIC link state (mlx5 and other Ethernet/InfiniBand drivers): a network fault, never a
    /// GPU fault.
    NicLink,
}

impl FaultKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::NvidiaXid => "nvidia_xid",
            FaultKind::NvidiaSxid => "nvidia_sxid",
            FaultKind::NvidiaFallenOffBus => "nvidia_fallen_off_bus",
            FaultKind::NvidiaInitFailure => "nvidia_init_failure",
            FaultKind::PcieAer => "pcie_aer",
            FaultKind::Amdgpu => "amdgpu",
            FaultKind::Mce => "mce",
            FaultKind::NvidiaGsp => "nvidia_gsp",
            FaultKind::Edac => "edac",
            FaultKind::Habanalabs => "habanalabs",
            FaultKind::IntelGpu => "intel_gpu",
            FaultKind::NicLink => "nic_link",
        }
    }
}

impl std::fmt::Display for FaultKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One device fault read from one kernel message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeviceFault {
    pub kind: FaultKind,
    /// The catalog event within the kind (`fatal`, `corrected`, `ring_timeout`, ...); `xid` for
    /// Xids, whose meaning is keyed by `code`.
    pub variant: &'static str,
    /// The Xid or SXid number.
    pub code: Option<u32>,
    /// The failing device's PCI address, `dddd:bb:dd.f`.
    pub device: Option<String>,
    /// The device that reported the error, when it differs from the failing one (PCIe AER).
    pub reporter: Option<String>,
    /// The network interface a NIC link line names (`ens1np0`), with or without a PCI address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// The driver's own name for the failing device when the line names it so rather than by
    /// its PCI address: Intel Gaudi's `hl0` (the habanalabs class) or `accel0` (the accel
    /// class). The agent maps it to a PCI address through sysfs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_name: Option<String>,
    /// NVIDIA's mnemonic for an Xid.
    pub mnemonic: Option<String>,
    pub attribution: Attribution,
    pub health: Health,
    pub action: RepairKind,
    pub pid: Option<u32>,
    pub process: Option<String>,
    /// One short human sentence.
    pub summary: String,
}

/// Which parser a prefilter literal leads to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    Xid,
    Sxid,
    FallenOffBus,
    InitFailure,
    Aer,
    Amdgpu,
    Mce,
    Gsp,
    Edac,
    Habanalabs,
    IntelGpu,
    Nic,
    /// `journalctl`'s `-- Boot <id> --` separator: not a fault, but the scanner needs to see it.
    BootSeparator,
}

/// Number of [`Family`] values (the size of the per-message "already tried" set).
const FAMILIES: usize = Family::BootSeparator as usize + 1;

/// The literals that can start a device fault, and the parser each leads to.
const TRIGGERS: &[(&str, Family)] = &[
    ("NVRM: Xid", Family::Xid),
    ("SXid", Family::Sxid),
    ("fallen off the bus", Family::FallenOffBus),
    ("RmInitAdapter", Family::InitFailure),
    ("rm_init_adapter", Family::InitFailure),
    ("AER:", Family::Aer),
    ("PCIe Bus Error", Family::Aer),
    ("amdgpu", Family::Amdgpu),
    ("mce:", Family::Mce),
    ("Machine check", Family::Mce),
    ("Machine Check", Family::Mce),
    ("[Hardware Error]", Family::Mce),
    // Literals whose first bytes are rare in ordinary kernel text keep the prefilter fast
    // (`beat timed out` covers both `Heartbeat timed out` and `heartbeat timed out`).
    ("beat timed out", Family::Gsp),
    ("GSP Timeout", Family::Gsp),
    ("RPC from GSP", Family::Gsp),
    ("EDAC MC", Family::Edac),
    ("Device heartbeat failed", Family::Habanalabs),
    // Intel GPUs: the driver's name, then `intel_gpu` reads the message.
    ("i915", Family::IntelGpu),
    ("xe 0", Family::IntelGpu),
    ("drmn", Family::IntelGpu),
    ("Link down", Family::Nic),
    ("Link up", Family::Nic),
    ("NIC Link is", Family::Nic),
    ("-- Boot ", Family::BootSeparator),
];

/// The prefilter literals, for tools that build an equivalent `grep` pattern.
pub fn trigger_literals() -> impl Iterator<Item = &'static str> {
    TRIGGERS.iter().map(|(literal, _)| *literal)
}

/// Classifies kernel messages into device faults. Cheap to call, free of I/O.
#[derive(Clone, Debug)]
pub struct Classifier {
    catalog: Catalog,
    prefilter: AhoCorasick,
    amdgpu_ring: Regex,
    amdgpu_ras: Regex,
    mce_bank: Regex,
}

impl Classifier {
    pub fn new(catalog: Catalog) -> Classifier {
        let prefilter = AhoCorasickBuilder::new()
            .match_kind(MatchKind::LeftmostFirst)
            .build(TRIGGERS.iter().map(|(literal, _)| literal))
            .expect("the trigger literals are a valid Aho-Corasick pattern set");
        let compile = |pattern: &str| Regex::new(pattern).expect("constant pattern compiles");
        Classifier {
            catalog,
            prefilter,
            amdgpu_ring: compile(r"ring ([A-Za-z0-9_.]+) timeout"),
            amdgpu_ras: compile(
                r"(\d+) (un)?correctable hardware errors? (?:were )?detected in (?:total in )?(\S+) block",
            ),
            mce_bank: compile(
                r"(?:CPU:? ?(\d+):? )?Machine Check(?: Exception| Event)?: *\d+ Bank (\d+): ([0-9a-fA-F]{1,16})",
            ),
        }
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Offset of the first prefilter literal in `haystack`, if any. Lines without one are never
    /// device faults (the literals also find `journalctl` boot separators, which scanners track).
    pub fn next_candidate(&self, haystack: &[u8]) -> Option<usize> {
        self.prefilter.find(haystack).map(|m| m.start())
    }

    /// Classify one kernel message (without its dmesg/kmsg prefix).
    pub fn classify(&self, message: &str) -> Option<DeviceFault> {
        let mut tried = [false; FAMILIES];
        for found in self.prefilter.find_iter(message) {
            let family = TRIGGERS[found.pattern().as_usize()].1;
            let slot = family as usize;
            if tried[slot] {
                continue;
            }
            tried[slot] = true;
            let fault = match family {
                Family::Xid => self.xid(message, found.end()),
                Family::Sxid => self.sxid(message, found.end()),
                Family::FallenOffBus => self.fallen_off_bus(message),
                Family::InitFailure => self.init_failure(message),
                Family::Aer => self.aer(message, found.start()),
                Family::Amdgpu => self.amdgpu(message),
                Family::Mce => self.mce(message),
                Family::Gsp => self.gsp(message),
                Family::Edac => self.edac(message),
                Family::Habanalabs => self.habanalabs(message),
                Family::IntelGpu => self.intel_gpu(message),
                Family::Nic => self.nic_link(message),
                Family::BootSeparator => None,
            };
            if fault.is_some() {
                return fault;
            }
        }
        None
    }

    fn event(&self, kind: FaultKind, variant: &'static str) -> Option<&CatalogEntry> {
        let mut name = String::with_capacity(kind.as_str().len() + 1 + variant.len());
        name.push_str(kind.as_str());
        name.push('.');
        name.push_str(variant);
        self.catalog.event(&name)
    }

    /// A fault for a non-Xid event, with the catalog's meaning.
    fn event_fault(
        &self,
        kind: FaultKind,
        variant: &'static str,
        device: Option<String>,
        reporter: Option<String>,
        detail: &str,
    ) -> Option<DeviceFault> {
        let entry = self.event(kind, variant)?;
        let mut summary = capitalise(&entry.summary);
        if let Some(device) = &device {
            summary.push_str(" on ");
            summary.push_str(device);
        }
        if let Some(reporter) = reporter.as_ref().filter(|r| Some(*r) != device.as_ref()) {
            summary.push_str(" (reported by ");
            summary.push_str(reporter);
            summary.push(')');
        }
        let detail = detail.trim();
        if !detail.is_empty() {
            summary.push_str(": ");
            summary.push_str(&shorten(detail, 100));
        }
        end_sentence(&mut summary);
        Some(DeviceFault {
            kind,
            variant,
            code: None,
            device,
            reporter,
            interface: None,
            device_name: None,
            mnemonic: None,
            attribution: entry.attribution,
            health: entry.health,
            action: entry.action,
            pid: None,
            process: None,
            summary,
        })
    }

    /// `NVRM: Xid (PCI:0000:3b:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus.`
    fn xid(&self, message: &str, after_trigger: usize) -> Option<DeviceFault> {
        let header = parse_nvidia_header(&message[after_trigger..])?;
        let (mut rest, pid, process) = split_pid_and_name(header.rest);
        rest = rest.trim();
        let code = header.code;
        let (entry, listed) = self.catalog.xid(code);
        let mut health = entry.health;
        let mut action = entry.action;
        let mut announced = None;
        if code == 154
            && let Some((reported_action, reported_health, name)) = recovery_action(rest)
        {
            action = reported_action;
            health = reported_health;
            announced = Some(name);
        }
        // NVLink 5 Xids say in their text whether the event was fatal:
        // `149, NETIR_LINK_EVT Fatal XC0 i0 Link 00 (...)`, `144, SAW_MVB Nonfatal XC0 ...`.
        let mut severity = None;
        if (144..=150).contains(&code) {
            match nvlink5_severity(rest) {
                Some(true) => {
                    health = Health::Unhealthy;
                    action = action.max(RepairKind::ResetDevice);
                    severity = Some("fatal");
                }
                Some(false) => {
                    health = Health::Healthy;
                    action = RepairKind::None;
                    severity = Some("non-fatal");
                }
                None => {}
            }
        }
        let mut summary = format!("Xid {code}");
        if let Some(mnemonic) = &entry.mnemonic {
            summary.push_str(" (");
            summary.push_str(mnemonic);
            summary.push(')');
        }
        if let Some(device) = &header.device {
            summary.push_str(" on ");
            summary.push_str(device);
        }
        summary.push_str(": ");
        summary.push_str(&entry.summary);
        if let Some(name) = announced {
            summary.push_str(" to ");
            summary.push_str(name);
        }
        if let Some(severity) = severity {
            summary.push_str(" (");
            summary.push_str(severity);
            summary.push(')');
        }
        if !listed && !rest.is_empty() {
            summary.push_str(": ");
            summary.push_str(&shorten(rest, 80));
        }
        if let Some(process) = &process {
            summary.push_str(&format!(" (process {process}"));
            if let Some(pid) = pid {
                summary.push_str(&format!(", pid {pid}"));
            }
            summary.push(')');
        }
        end_sentence(&mut summary);
        Some(DeviceFault {
            kind: FaultKind::NvidiaXid,
            variant: "xid",
            code: Some(code),
            device: header.device,
            reporter: None,
            interface: None,
            device_name: None,
            mnemonic: entry.mnemonic.clone(),
            attribution: entry.attribution,
            health,
            action,
            pid,
            process,
            summary,
        })
    }

    /// `nvidia-nvswitch3: SXid (PCI:0000:c6:00.0): 12028, Non-fatal, Link 32 egress ... (First)`.
    /// Follow-up lines of the same SXid (`Severity 0 Engine instance ...`, `Data {...}`) state no
    /// severity and are not reported.
    fn sxid(&self, message: &str, after_trigger: usize) -> Option<DeviceFault> {
        let header = parse_nvidia_header(&message[after_trigger..])?;
        let rest = header.rest.trim_start_matches([',', ' ']);
        let (severity, detail) = rest.split_once(',').unwrap_or((rest, ""));
        let variant = match severity.trim() {
            "Fatal" => "fatal",
            "Non-fatal" | "Non-Fatal" | "Nonfatal" => "non_fatal",
            _ => return None,
        };
        let mut fault = self.event_fault(FaultKind::NvidiaSxid, variant, header.device, None, "")?;
        fault.code = Some(header.code);
        fault.summary = format!("SXid {} ({severity}) on ", header.code);
        fault.summary.push_str(fault.device.as_deref().unwrap_or("an NVSwitch"));
        fault.summary.push_str(": ");
        fault.summary.push_str(&shorten(detail.trim(), 100));
        end_sentence(&mut fault.summary);
        Some(fault)
    }

    /// `NVRM: GPU 0000:3b:00.0: GPU has fallen off the bus.`
    fn fallen_off_bus(&self, message: &str) -> Option<DeviceFault> {
        let device = first_pci_address(message);
        self.event_fault(FaultKind::NvidiaFallenOffBus, "fallen_off_bus", device, None, "")
    }

    /// `NVRM: GPU 0000:01:00.0: RmInitAdapter failed! (0x26:0xffff:1234)`,
    /// `NVRM: rm_init_adapter failed for device bearing minor number 0`.
    fn init_failure(&self, message: &str) -> Option<DeviceFault> {
        if !message.contains("fail") {
            return None;
        }
        let device = first_pci_address(message);
        let detail = message
            .find("RmInitAdapter")
            .or_else(|| message.find("rm_init_adapter"))
            .map(|at| &message[at..]);
        self.event_fault(FaultKind::NvidiaInitFailure, "rm_init_adapter", device, None, detail.unwrap_or(""))
    }

    /// PCIe Advanced Error Reporting:
    /// `pcieport 0000:00:03.1: AER: Corrected error received: 0000:01:00.0`,
    /// `pcieport 0000:00:1c.5: AER: Uncorrected (Non-Fatal) error received: id=00e5`,
    /// `nvidia 0000:01:00.0: PCIe Bus Error: severity=Corrected, type=Physical Layer, (Receiver ID)`,
    /// `pcieport 0000:00:01.0: AER: Uncorrectable (Fatal) error message received from 0000:01:00.0`.
    fn aer(&self, message: &str, trigger_at: usize) -> Option<DeviceFault> {
        let reporter = first_pci_address(&message[..trigger_at]);
        let body = &message[trigger_at..];
        // Recovery that failed: `pcieport 0000:00:01.0: AER: device recovery failed` (the port)
        // and `ahci 0000:01:00.0: AER: can't recover (no error_detected callback)` (a driver
        // below it that cannot take part).
        if body.contains("recovery failed") || body.contains("can't recover") {
            let detail = body.trim_start_matches("AER:").trim();
            return self.event_fault(
                FaultKind::PcieAer,
                "recovery_failed",
                reporter.clone(),
                reporter,
                detail,
            );
        }
        if let Some(at) = body.find("severity=") {
            let after = &body[at + "severity=".len()..];
            let severity_text = after.split(", ").next().unwrap_or(after);
            let variant = aer_severity(severity_text)?;
            let detail = after[severity_text.len()..].trim_start_matches([',', ' ']);
            return self.event_fault(FaultKind::PcieAer, variant, reporter.clone(), reporter, detail);
        }
        let received = body.find(" error received").or_else(|| body.find(" error message received"))?;
        let severity_text = body[..received].trim_start_matches("AER:").trim();
        let variant = aer_severity(severity_text)?;
        let after = &body[received..];
        let source = after
            .split_once("received: ")
            .or_else(|| after.split_once("received from "))
            .map(|(_, source)| source.trim());
        let failing = match source {
            Some(source) if source.starts_with("id=") => {
                let hex = source[3..].split(|c: char| !c.is_ascii_hexdigit()).next().unwrap_or("");
                u16::from_str_radix(hex, 16).ok().map(|id| address_from_requester_id(id, reporter.as_deref()))
            }
            Some(source) => source.split_ascii_whitespace().next().and_then(normalize_pci_address),
            None => None,
        };
        let device = failing.or_else(|| reporter.clone());
        self.event_fault(FaultKind::PcieAer, variant, device, reporter, "")
    }

    /// amdgpu ring timeouts, GPU resets, RAS error counts and page faults.
    fn amdgpu(&self, message: &str) -> Option<DeviceFault> {
        let device = message.split_ascii_whitespace().take(2).find_map(normalize_pci_address);
        let lower_has = |needle: &str| message.contains(needle);
        if lower_has("page fault (src_id") || lower_has("retry page fault") || lower_has("GPU fault detected")
        {
            let detail = message.find("for process").map(|at| &message[at..]).unwrap_or("");
            return self.event_fault(FaultKind::Amdgpu, "page_fault", device, None, detail);
        }
        if let Some(caps) = self.amdgpu_ring.captures(message) {
            let ring = caps.get(1).map(|m| m.as_str()).unwrap_or("");
            return self.event_fault(
                FaultKind::Amdgpu,
                "ring_timeout",
                device,
                None,
                &format!("ring {ring}"),
            );
        }
        // `Ring gfx_0.0.0 reset failed`: the per-ring reset did not help; a full reset follows.
        if let Some(at) = message.find("Ring ")
            && message[at..].contains(" reset failed")
        {
            let ring = message[at + "Ring ".len()..].split(' ').next().unwrap_or("");
            return self.event_fault(
                FaultKind::Amdgpu,
                "ring_reset_failed",
                device,
                None,
                &format!("ring {ring}"),
            );
        }
        // `uncorrectable hardware error(ERREVENT_ATHUB_INTERRUPT) detected!`
        if let Some(at) = message.find("uncorrectable hardware error(") {
            let event = &message[at + "uncorrectable hardware error(".len()..];
            let event = event.split(')').next().unwrap_or("");
            return self.event_fault(FaultKind::Amdgpu, "ras_uncorrectable", device, None, event);
        }
        if let Some(caps) = self.amdgpu_ras.captures(message) {
            let count = caps.get(1).map(|m| m.as_str()).unwrap_or("");
            let variant = if caps.get(2).is_some() { "ras_uncorrectable" } else { "ras_correctable" };
            let block = caps.get(3).map(|m| m.as_str()).unwrap_or("");
            return self.event_fault(
                FaultKind::Amdgpu,
                variant,
                device,
                None,
                &format!("{count} in the {block} block"),
            );
        }
        let is_reset = message.contains("reset") || message.contains("Reset") || message.contains("Recovery");
        if is_reset && message.contains("GPU") || message.contains("ASIC reset") {
            if message.contains("reset begin") {
                return self.event_fault(FaultKind::Amdgpu, "reset_begin", device, None, "");
            }
            if message.contains("fail") || message.contains("Fail") {
                return self.event_fault(FaultKind::Amdgpu, "reset_failed", device, None, "");
            }
            if message.contains("succeeded") {
                return self.event_fault(FaultKind::Amdgpu, "reset_succeeded", device, None, "");
            }
        }
        None
    }

    /// Machine checks: `mce: [Hardware Error]: CPU 0: Machine Check: 0 Bank 5: bea0000000000108`,
    /// `[Hardware Error]: Corrected error, no action required.`, AMD `MC27_STATUS[-|CE|...]`,
    /// APEI `{1}[Hardware Error]: event severity: fatal`, `Machine check events logged`.
    fn mce(&self, message: &str) -> Option<DeviceFault> {
        let detail_after_tag = |text: &str| -> String {
            let at = text.rfind("[Hardware Error]: ").map(|at| at + "[Hardware Error]: ".len());
            at.map(|at| text[at..].to_string()).unwrap_or_default()
        };
        let mut detail = String::new();
        let variant = if message.contains("Machine check events logged") {
            "logged"
        } else if let Some(caps) = self.mce_bank.captures(message) {
            let status = caps.get(3).and_then(|m| u64::from_str_radix(m.as_str(), 16).ok())?;
            let bank = caps.get(2).map(|m| m.as_str()).unwrap_or("?");
            detail = match caps.get(1) {
                Some(cpu) => format!("CPU {} bank {bank}, status {}", cpu.as_str(), &caps[3]),
                None => format!("bank {bank}, status {}", &caps[3]),
            };
            let uncorrected = status & (1 << 61) != 0;
            let context_corrupt = status & (1 << 57) != 0;
            match (uncorrected, context_corrupt) {
                (true, true) => "fatal",
                (true, false) => "uncorrected",
                _ => "corrected",
            }
        } else if message.contains("Machine check: ") || message.contains("Fatal machine check") {
            "fatal"
        } else if let Some(at) = message.find("_STATUS[") {
            let flags_end = message[at..].find(']')?;
            let flags = &message[at + "_STATUS[".len()..at + flags_end];
            let has = |flag: &str| flags.split('|').any(|f| f == flag);
            detail = detail_after_tag(message);
            if has("PCC") {
                "fatal"
            } else if has("UE") || has("UC") {
                "uncorrected"
            } else if has("CE") {
                "corrected"
            } else {
                return None;
            }
        } else if let Some(at) = message.find("event severity: ") {
            match message[at + "event severity: ".len()..].trim() {
                "corrected" => "corrected",
                "recoverable" => "uncorrected",
                "fatal" => "fatal",
                _ => return None,
            }
        } else if message.contains("Corrected error, no action required") {
            "corrected"
        } else if message.contains("[Hardware Error]: Uncorrected") {
            if message.contains("fatal") { "fatal" } else { "uncorrected" }
        } else {
            return None;
        };
        self.event_fault(FaultKind::Mce, variant, None, None, &detail)
    }
}

impl Default for Classifier {
    fn default() -> Self {
        Classifier::new(Catalog::builtin())
    }
}

/// The common head of Xid and SXid messages after the trigger: ` (PCI:addr ...): code, rest`.
struct NvidiaHeader<'a> {
    device: Option<String>,
    code: u32,
    rest: &'a str,
}

fn parse_nvidia_header(text: &str) -> Option<NvidiaHeader<'_>> {
    let text = text.trim_start().strip_prefix('(')?;
    let close = text.find(')')?;
    let inside = &text[..close];
    let device = inside
        .split_ascii_whitespace()
        .next()
        .map(|token| token.strip_prefix("PCI:").unwrap_or(token))
        .and_then(normalize_pci_address);
    let after = text[close + 1..].strip_prefix(':')?.trim_start();
    let digits = after.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || digits > 9 {
        return None;
    }
    let code = after[..digits].parse().ok()?;
    let rest = after[digits..].trim_start_matches([',', ' ']);
    Some(NvidiaHeader { device, code, rest })
}

/// Split `pid=1234, name=python3, rest` into (rest, pid, name); either part may be missing.
fn split_pid_and_name(mut text: &str) -> (&str, Option<u32>, Option<String>) {
    let mut pid = None;
    let mut process = None;
    if let Some(after) = text.strip_prefix("pid=") {
        let (value, rest) = after.split_once(", ").unwrap_or((after, ""));
        pid = value.trim_matches('\'').parse().ok();
        text = rest;
    }
    if let Some(after) = text.strip_prefix("name=") {
        let (value, rest) = after.split_once(", ").unwrap_or((after, ""));
        let value = value.trim_matches('\'');
        if !value.is_empty() && value != "<unknown>" {
            process = Some(value.to_string());
        }
        text = rest;
    }
    (text, pid, process)
}

/// Xid 154: `GPU recovery action changed from 0x0 (None) to 0x1 (GPU Reset Required)`.
/// Returns the repair, the health and the announced action's name.
fn recovery_action(detail: &str) -> Option<(RepairKind, Health, &str)> {
    let to = detail.rfind(" to ")?;
    let reported = &detail[to..];
    let open = reported.find('(')?;
    let close = reported[open..].find(')')? + open;
    let name = &reported[open + 1..close];
    let lower = name.to_ascii_lowercase();
    let (action, health) = if lower.contains("reboot") {
        (RepairKind::RebootNode, Health::Unhealthy)
    } else if lower.contains("reset") || lower.contains("drain") {
        (RepairKind::ResetDevice, Health::Unhealthy)
    } else if lower == "none" {
        (RepairKind::None, Health::Healthy)
    } else {
        return None;
    };
    Some((action, health, name))
}

/// The severity word of an NVLink 5 Xid (144–150): `Some(true)` for `Fatal` (also `Link Fatal`),
/// `Some(false)` for `Nonfatal` / `Non-fatal`, `None` when the text does not say.
fn nvlink5_severity(detail: &str) -> Option<bool> {
    detail.split_ascii_whitespace().take(4).find_map(|word| match word.trim_end_matches(',') {
        "Fatal" | "fatal" => Some(true),
        "Nonfatal" | "Non-fatal" | "Non-Fatal" | "nonfatal" => Some(false),
        _ => None,
    })
}

/// `Corrected`, `Multiple Uncorrected (Non-Fatal)`, `Uncorrectable (Fatal)` → catalog variant.
fn aer_severity(text: &str) -> Option<&'static str> {
    if text.contains("Non-Fatal") || text.contains("Nonfatal") {
        Some("non_fatal")
    } else if text.contains("Fatal") {
        Some("fatal")
    } else if text.contains("Correct") {
        Some("corrected")
    } else {
        None
    }
}

fn capitalise(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

fn end_sentence(summary: &mut String) {
    while summary.ends_with([' ', ',', ':']) {
        summary.pop();
    }
    if !summary.ends_with(['.', '!', '?']) {
        summary.push('.');
    }
}

/// At most `max` characters (on a char boundary), with `...` when cut.
fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify(message: &str) -> Option<DeviceFault> {
        Classifier::default().classify(message)
    }

    #[test]
    fn xid_with_pid_and_name() {
        let fault = classify(
            "NVRM: Xid (PCI:0000:3b:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus.",
        )
        .unwrap();
        assert_eq!(fault.kind, FaultKind::NvidiaXid);
        assert_eq!(fault.code, Some(79));
        assert_eq!(fault.device.as_deref(), Some("0000:3b:00.0"));
        assert_eq!(fault.pid, None);
        assert_eq!(fault.process, None);
        assert_eq!(fault.health, Health::Unhealthy);
        assert_eq!(fault.action, RepairKind::RebootNode);
        assert_eq!(
            fault.summary,
            "Xid 79 (GPU_HAS_FALLEN_OFF_THE_BUS) on 0000:3b:00.0: the GPU has fallen off the bus."
        );

        let app =
            classify("NVRM: Xid (PCI:0000:01:00): 13, pid=2954, name=python3, Graphics Exception").unwrap();
        assert_eq!(app.pid, Some(2954));
        assert_eq!(app.process.as_deref(), Some("python3"));
        assert_eq!(app.attribution, Attribution::Application);
    }

    #[test]
    fn old_xid_form_without_pci_prefix() {
        let fault = classify("NVRM: Xid (0000:03:00): 31, Ch 00000010, engmask 00000101").unwrap();
        assert_eq!(fault.code, Some(31));
        assert_eq!(fault.device.as_deref(), Some("0000:03:00.0"));
        assert_eq!(fault.attribution, Attribution::Application);
    }

    #[test]
    fn unlisted_xid_uses_the_default_entry() {
        let fault = classify("NVRM: Xid (PCI:0000:01:00): 999, pid=1, name=x, something new").unwrap();
        assert_eq!(fault.attribution, Attribution::Unknown);
        assert!(fault.summary.contains("something new"), "{}", fault.summary);
    }

    #[test]
    fn xid_154_follows_the_reported_recovery_action() {
        let fault = classify("NVRM: Xid (PCI:0000:9b:00): 154, GPU recovery action changed from 0x0 (None) to 0x2 (Node Reboot Required)").unwrap();
        assert_eq!(fault.action, RepairKind::RebootNode);
        assert_eq!(fault.health, Health::Unhealthy);
        assert!(fault.summary.ends_with("recovery action to Node Reboot Required."), "{}", fault.summary);
    }

    #[test]
    fn sxid_severity() {
        let fatal =
            classify("nvidia-nvswitch2: SXid (PCI:0000:87:00.0): 20034, Fatal, Link 30 LTSSM Fault Up")
                .unwrap();
        assert_eq!(fatal.kind, FaultKind::NvidiaSxid);
        assert_eq!(fatal.variant, "fatal");
        assert_eq!(fatal.code, Some(20034));
        assert_eq!(fatal.device.as_deref(), Some("0000:87:00.0"));
        assert_eq!(fatal.attribution, Attribution::Interconnect);
        let minor =
            classify("nvidia-nvswitch0: SXid (PCI:0000:05:00.0): 12028, Non-fatal, Link 45 (First)").unwrap();
        assert_eq!(minor.variant, "non_fatal");
        assert!(
            classify("nvidia-nvswitch0: SXid (PCI:0000:05:00.0): 12028, Severity 0 Engine instance 45")
                .is_none()
        );
    }

    #[test]
    fn fallen_off_bus_and_init_failure() {
        let fault = classify("NVRM: GPU 0000:3b:00.0: GPU has fallen off the bus.").unwrap();
        assert_eq!(fault.kind, FaultKind::NvidiaFallenOffBus);
        assert_eq!(fault.device.as_deref(), Some("0000:3b:00.0"));
        let init = classify("NVRM: GPU 0000:01:00.0: RmInitAdapter failed! (0x26:0xffff:1234)").unwrap();
        assert_eq!(init.kind, FaultKind::NvidiaInitFailure);
        assert_eq!(init.device.as_deref(), Some("0000:01:00.0"));
        assert!(classify("NVRM: RmInitAdapter succeeded").is_none());
    }

    #[test]
    fn aer_forms() {
        let received =
            classify("pcieport 0000:00:03.1: AER: Corrected error received: 0000:01:00.0").unwrap();
        assert_eq!(received.kind, FaultKind::PcieAer);
        assert_eq!(received.variant, "corrected");
        assert_eq!(received.device.as_deref(), Some("0000:01:00.0"));
        assert_eq!(received.reporter.as_deref(), Some("0000:00:03.1"));
        assert_eq!(received.health, Health::Healthy);

        let by_id =
            classify("pcieport 0000:00:1c.5: AER: Uncorrected (Non-Fatal) error received: id=00e5").unwrap();
        assert_eq!(by_id.variant, "non_fatal");
        assert_eq!(by_id.device.as_deref(), Some("0000:00:1c.5"));

        let bus_error = classify("nvidia 0000:01:00.0: PCIe Bus Error: severity=Uncorrected (Fatal), type=Transaction Layer, (Requester ID)").unwrap();
        assert_eq!(bus_error.variant, "fatal");
        assert_eq!(bus_error.device.as_deref(), Some("0000:01:00.0"));

        let new_kernel = classify(
            "pcieport 0000:00:01.0: AER: Uncorrectable (Fatal) error message received from 0000:01:00.0",
        )
        .unwrap();
        assert_eq!(new_kernel.variant, "fatal");
        assert_eq!(new_kernel.device.as_deref(), Some("0000:01:00.0"));

        assert!(classify("pcieport 0000:00:03.1: AER: enabled with IRQ 122").is_none());
        assert!(classify("pcieport 0000:00:03.1: AER:   [ 0] RxErr").is_none());
    }

    #[test]
    fn amdgpu_forms() {
        let ring = classify("amdgpu 0000:03:00.0: [drm:amdgpu_job_timedout [amdgpu]] *ERROR* ring gfx timeout, signaled seq=1, emitted seq=3").unwrap();
        assert_eq!(ring.kind, FaultKind::Amdgpu);
        assert_eq!(ring.variant, "ring_timeout");
        assert_eq!(ring.device.as_deref(), Some("0000:03:00.0"));
        let ras =
            classify("amdgpu 0000:c1:00.0: amdgpu: 2 uncorrectable hardware errors detected in umc block")
                .unwrap();
        assert_eq!(ras.variant, "ras_uncorrectable");
        let ce = classify(
            "amdgpu 0000:c1:00.0: amdgpu: 1 correctable hardware errors detected in total in gfx block",
        )
        .unwrap();
        assert_eq!(ce.variant, "ras_correctable");
        assert_eq!(classify("amdgpu 0000:03:00.0: amdgpu: GPU reset begin!").unwrap().variant, "reset_begin");
        assert_eq!(
            classify("amdgpu 0000:03:00.0: amdgpu: GPU reset(2) succeeded!").unwrap().variant,
            "reset_succeeded"
        );
        assert_eq!(
            classify("amdgpu 0000:03:00.0: amdgpu: GPU reset(3) failed").unwrap().variant,
            "reset_failed"
        );
        let fault = classify("amdgpu 0000:0b:00.0: amdgpu: [gfxhub0] retry page fault (src_id:0 ring:0 vmid:8 pasid:32770, for process blender pid 1234)").unwrap();
        assert_eq!(fault.variant, "page_fault");
        assert_eq!(fault.attribution, Attribution::Application);
        assert!(classify("[drm] amdgpu kernel modesetting enabled.").is_none());
        assert!(classify("amdgpu 0000:03:00.0: amdgpu: SMU is initialized successfully!").is_none());
    }

    #[test]
    fn mce_forms() {
        let bank =
            classify("mce: [Hardware Error]: CPU 0: Machine Check: 0 Bank 5: bea0000000000108").unwrap();
        assert_eq!(bank.kind, FaultKind::Mce);
        assert_eq!(bank.variant, "fatal");
        let corrected_bank =
            classify("mce: [Hardware Error]: CPU 2: Machine Check: 0 Bank 7: 8c00004000010090").unwrap();
        assert_eq!(corrected_bank.variant, "corrected");
        assert_eq!(classify("mce: [Hardware Error]: Machine check events logged").unwrap().variant, "logged");
        assert_eq!(
            classify("[Hardware Error]: Corrected error, no action required.").unwrap().variant,
            "corrected"
        );
        assert_eq!(classify("[Hardware Error]: CPU:0 (17:71:0) MC27_STATUS[-|CE|MiscV|-|-|-|SyndV|-|-|-]: 0x9c2040000000011b").unwrap().variant, "corrected");
        assert_eq!(classify("{1}[Hardware Error]: event severity: fatal").unwrap().variant, "fatal");
        assert_eq!(
            classify("mce: [Hardware Error]: Machine check: Processor context corrupt").unwrap().variant,
            "fatal"
        );
        assert!(classify("mce: [Hardware Error]: TSC 0 ADDR 1ffffb8aa8f00 MISC 80000086").is_none());
        assert!(classify("mce: CPU0: Core temperature above threshold, cpu clock throttled").is_none());
    }

    #[test]
    fn ordinary_lines_are_not_faults() {
        for line in [
            "NVRM: loading NVIDIA UNIX x86_64 Kernel Module  535.129.03  Thu Oct 19 18:56:32 UTC 2023",
            "nvidia-nvlink: Nvlink Core is being initialized, major device number 508",
            "usb 1-1: new high-speed USB device number 2 using xhci_hcd",
            "EXT4-fs (nvme0n1p1): mounted filesystem with ordered data mode.",
            "",
        ] {
            assert!(classify(line).is_none(), "{line}");
        }
    }

    #[test]
    fn an_amdgpu_aer_line_is_classified_as_aer() {
        let fault = classify("amdgpu 0000:03:00.0: AER: PCIe Bus Error: severity=Corrected, type=Data Link Layer, (Transmitter ID)").unwrap();
        assert_eq!(fault.kind, FaultKind::PcieAer);
    }
}
