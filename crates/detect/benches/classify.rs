//! Throughput of `devheal classify-log`'s path over a realistic generated kernel log, side by
//! side in the same run with (a) `rg -n` (ripgrep) and (b) `grep -cE` using the same literals as
//! devheal's prefilter, and (c) a naive baseline that tries every rule's regex on every line (how
//! node-problem-detector's log monitor works). Medians of several runs; ratios against devheal.
//! ripgrep comes from Debian's `ripgrep` package; without it that row says so.
//!
//! Run: `cargo bench -p devheal-detect --bench classify` (options: `-- --lines N --runs N`).
//!
//! The log: `--lines` (default 1,000,000) dmesg-format lines, mostly ordinary kernel noise of
//! real shapes (usb, ext4, audit, systemd, network, kvm, nvme, cgroup, perf, bridge), about
//! 0.1 % device faults (Xid, SXid, GSP, PCIe AER and failed recovery, amdgpu, machine checks,
//! EDAC, Intel GPU, NIC link down) and a few driver lines that contain a prefilter literal
//! without being faults. Generated from a fixed seed.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use devheal_core::Time;
use devheal_detect::{Classifier, Correlator, LogScanner, classify::trigger_literals};
use regex::Regex;

/// xorshift64*: a small deterministic generator, so every run benchmarks the same bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

fn noise_line(rng: &mut Rng, out: &mut String) {
    let n = rng.below(10_000);
    let pid = 1000 + rng.below(60_000);
    let _ = match rng.below(16) {
        0 => write!(out, "usb 1-{}: new high-speed USB device number {} using xhci_hcd", 1 + n % 8, n % 128),
        1 => write!(out, "usb {}-{}: USB disconnect, device number {}", 1 + n % 4, 1 + n % 6, n % 128),
        2 => write!(
            out,
            "EXT4-fs (nvme{}n1p{}): mounted filesystem {:08x}-6d2f-4c1e-9a7b-{:012x} r/w with ordered data mode. Quota mode: none.",
            n % 4,
            1 + n % 3,
            rng.next() as u32,
            rng.next() & 0xffff_ffff_ffff
        ),
        3 => write!(
            out,
            "audit: type=1400 audit({}.{:03}:{}): apparmor=\"STATUS\" operation=\"profile_load\" profile=\"unconfined\" name=\"{}\" pid={} comm=\"apparmor_parser\"",
            1_763_000_000 + n,
            n % 1000,
            n,
            rng.pick(&["/usr/sbin/cupsd", "/usr/bin/man", "nvidia_modprobe", "/usr/lib/snapd/snap-confine"]),
            pid
        ),
        4 => write!(
            out,
            "audit: type=1130 audit({}.{:03}:{}): pid=1 uid=0 auid=4294967295 ses=4294967295 msg='unit={} comm=\"systemd\" exe=\"/usr/lib/systemd/systemd\" hostname=? addr=? terminal=? res=success'",
            1_763_000_000 + n,
            n % 1000,
            n,
            rng.pick(&["systemd-tmpfiles-clean", "kubelet", "containerd", "logrotate", "sysstat-collect"])
        ),
        5 => write!(out, "systemd[1]: Started Session {} of User root.", n),
        // NIC link changes are faults now (nic_link); the NIC noise is their driver's other lines.
        6 => write!(
            out,
            "mlx5_core 0000:{:02x}:00.{}: E-Switch: Total vports 10, per vport: max uc(1024) max mc(16384)",
            0x10 + n % 0xe0,
            n % 2
        ),
        7 => write!(out, "IPv6: ADDRCONF(NETDEV_CHANGE): eth{}: link becomes ready", n % 8),
        8 => write!(out, "ixgbe 0000:03:00.{}: registered PHC device on eno{}", n % 2, 49 + n % 2),
        9 => write!(out, "kvm: {}: cpu{} unhandled rdmsr: 0x{:x} data 0x0", pid, n % 64, 0x600 + n % 0x100),
        10 => write!(
            out,
            "kvm [{}]: vcpu{}, guest rIP: 0xffffffff{:08x} disabled perfctr wrmsr: 0xc2 data 0xffff",
            pid,
            n % 64,
            rng.next() as u32
        ),
        11 => write!(
            out,
            "TCP: request_sock_TCP: Possible SYN flooding on port {}. Sending cookies.  Check SNMP counters.",
            1024 + n
        ),
        12 => write!(
            out,
            "perf: interrupt took too long ({} > {}), lowering kernel.perf_event_max_sample_rate to {}",
            2500 + n % 3000,
            2500 + n % 2000,
            25_000 + n
        ),
        13 => write!(
            out,
            "docker0: port {}(veth{:07x}) entered {} state",
            1 + n % 32,
            rng.next() as u32 >> 4,
            rng.pick(&["blocking", "forwarding", "disabled"])
        ),
        14 => write!(
            out,
            "cgroup: fork rejected by pids controller in /kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{:08x}_{:04x}.slice",
            rng.next() as u32,
            n
        ),
        _ => write!(
            out,
            "nvme nvme{}: I/O tag {} (0x{:04x}) QID {} timeout, completion polled",
            n % 4,
            n % 1024,
            n,
            n % 64
        ),
    };
}

/// Driver lines that contain a prefilter literal but are not faults (boot-time AER and amdgpu
/// banners): they make the prefilter do real work.
fn near_miss_line(rng: &mut Rng, out: &mut String) {
    let n = rng.below(64);
    let _ = match rng.below(4) {
        0 => write!(out, "pcieport 0000:{:02x}:01.0: AER: enabled with IRQ {}", n, 24 + n),
        1 => write!(out, "amdgpu 0000:{:02x}:00.0: amdgpu: SMU is initialized successfully!", n),
        2 => write!(out, "[drm] amdgpu kernel modesetting enabled."),
        _ => write!(
            out,
            "mce: CPU{}: Core temperature above threshold, cpu clock throttled (total events = {})",
            n,
            n * 7
        ),
    };
}

/// Device-fault lines in the shapes of the real fixtures (`tests/data/real-lines.txt`).
fn fault_line(rng: &mut Rng, out: &mut String) {
    let bus = rng.pick(&["1b", "3b", "5d", "61", "9b", "b1", "cb", "db"]);
    let pid = 1000 + rng.below(3_000_000);
    let _ = match rng.below(20) {
        0 => write!(
            out,
            "NVRM: Xid (PCI:0000:{bus}:00): 13, pid='<unknown>', name=<unknown>, Graphics SM Warp Exception on (GPC 7, TPC 7, SM 0): Illegal Instruction Parameter"
        ),
        1 => write!(
            out,
            "NVRM: Xid (PCI:0000:{bus}:00): 31, pid={pid}, name=python, channel 0x0000001a, intr 00000000. MMU Fault: ENGINE GRAPHICS GPC10 GPCCLIENT_T1_5 faulted @ 0x725f_fb800000. Fault is of type FAULT_PDE ACCESS_TYPE_VIRT_READ"
        ),
        2 => write!(out, "NVRM: Xid (PCI:0000:{bus}:00): 45, pid={pid}, name=python3, Ch 00000001"),
        3 => write!(
            out,
            "NVRM: Xid (PCI:0000:{bus}:00): 48, pid={pid}, name=pt_main_thread, An uncorrectable double bit error (DBE) has been detected on GPU in the framebuffer at partition 0, subpartition 0."
        ),
        4 => write!(
            out,
            "NVRM: Xid (PCI:0000:{bus}:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus."
        ),
        5 => write!(out, "NVRM: Xid (PCI:0000:{bus}:00): 94, pid={pid}, name=python3, Contained ECC error"),
        6 => write!(out, "NVRM: Xid (PCI:0000:{bus}:00): 95, pid={pid}, name=python3, Uncontained ECC error"),
        7 => write!(
            out,
            "NVRM: Xid (PCI:0000:{bus}:00): 119, pid={pid}, name=nvidia-smi, Timeout after 6s of waiting for RPC response from GPU0 GSP!"
        ),
        8 => write!(
            out,
            "NVRM: Xid (PCI:0000:{bus}:00): 154, GPU recovery action changed from 0x0 (None) to 0x1 (GPU Reset Required)"
        ),
        9 => write!(
            out,
            "nvidia-nvswitch3: SXid (PCI:0000:04:00.0): 22013, Non-fatal, Link 44 Minion Link DLREQ interrupt"
        ),
        10 => write!(out, "pcieport 0000:00:02.0: AER: Corrected error received: 0000:{bus}:00.0"),
        11 => write!(
            out,
            "nvidia 0000:{bus}:00.0: PCIe Bus Error: severity=Corrected, type=Physical Layer, (Receiver ID)"
        ),
        12 => write!(
            out,
            "amdgpu 0000:{bus}:00.0: amdgpu: ring gfx_0.0.0 timeout, signaled seq=57638, emitted seq=57641"
        ),
        13 => write!(out, "mce: [Hardware Error]: Machine check events logged"),
        14 => write!(
            out,
            "NVRM: GPU6 _kgspIsHeartbeatTimedOut: Heartbeat timed out, currentTimeMs 812751949 heartbeat 1899482 heartbeatWithOffsetMs 812745879 diff 6070 timeout 5200"
        ),
        15 => write!(out, "pcieport 0000:{bus}:01.0: AER: device recovery failed"),
        16 => write!(
            out,
            "EDAC MC0: 1 CE memory read error on CPU_SrcID#0_Ha#0_Chan#2_DIMM#0 (channel:2 slot:0 page:0x849923 offset:0x380 grain:32 syndrome:0x0 -  area:DRAM err_code:0001:0092 socket:0 ha:0 channel_mask:4 rank:0)"
        ),
        17 => write!(out, "i915 0000:00:02.0: [drm] GPU HANG: ecode 12:1:0020fffe, in python3 [{pid}]"),
        18 => write!(out, "mlx5_core 0000:{bus}:00.1 ibp{bus}s0f1: Link down"),
        _ => write!(
            out,
            "NVRM: Xid (PCI:0000:{bus}:00): 149, NETIR_LINK_EVT Fatal XC0 i0 Link 00 (0x025001c6 0x00000000 0x00000000 0x00000000 0x00000000 0x00000000)"
        ),
    };
}

/// Write the log; returns (path, bytes, fault lines written).
fn generate(lines: usize) -> std::io::Result<(PathBuf, u64, usize)> {
    let path = std::env::temp_dir().join(format!("devheal-bench-kernel-{lines}.log"));
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut file = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&path)?);
    let mut line = String::with_capacity(512);
    let mut micros: u64 = 5_000_000;
    let mut faults = 0;
    for _ in 0..lines {
        line.clear();
        micros += 1 + rng.below(2000);
        let _ = write!(line, "[{:>5}.{:06}] ", micros / 1_000_000, micros % 1_000_000);
        match rng.below(10_000) {
            0..10 => {
                fault_line(&mut rng, &mut line);
                faults += 1;
            }
            10..15 => near_miss_line(&mut rng, &mut line),
            _ => noise_line(&mut rng, &mut line),
        }
        line.push('\n');
        file.write_all(line.as_bytes())?;
    }
    file.flush()?;
    let bytes = std::fs::metadata(&path)?.len();
    Ok((path, bytes, faults))
}

/// devheal's classify-log path: block scan with the literal prefilter, parse and classify the
/// candidates, correlate, and serialise each fault as the CLI does (into a sink).
fn run_devheal(path: &Path, classifier: &Classifier) -> u64 {
    let mut correlator = Correlator::default();
    let mut scanner = LogScanner::new(classifier);
    let mut sink = std::io::sink();
    let file = std::fs::File::open(path).expect("open the generated log");
    scanner
        .scan(file, |found| {
            let at = found.line.timestamp.map(|t| t.as_time()).unwrap_or(Time::ZERO);
            let observation = correlator.observe("bench", None, at, &found.fault);
            let record = serde_json::json!({
                "line": found.line_number,
                "kind": found.fault.kind.as_str(),
                "code": found.fault.code,
                "device": found.fault.device,
                "attribution": found.fault.attribution.as_str(),
                "health": found.fault.health.as_str().to_ascii_lowercase(),
                "action": found.fault.action.as_str(),
                "incident": observation.incident.id,
                "summary": found.fault.summary,
            });
            let _ = serde_json::to_writer(&mut sink, &record);
        })
        .expect("read the generated log");
    scanner.stats().faults
}

/// The same literals as devheal's prefilter, as one `grep -E` alternation.
fn grep_pattern() -> String {
    trigger_literals().map(regex::escape).collect::<Vec<_>>().join("|")
}

/// `grep -cE PATTERN FILE` (LC_ALL=C, its fastest mode); returns the count it prints.
fn run_grep(path: &Path, pattern: &str) -> Option<u64> {
    let output = Command::new("grep").env("LC_ALL", "C").arg("-cE").arg(pattern).arg(path).output().ok()?;
    String::from_utf8_lossy(&output.stdout).trim().parse().ok()
}

/// `rg -n` with the same literals (one `-e` each, fixed strings), its output read through a
/// pipe as a consumer of `classify-log` would; returns the number of lines it printed.
fn run_rg(path: &Path) -> Option<u64> {
    let mut command = Command::new("rg");
    command.arg("--no-config").arg("-n").arg("-F");
    for literal in trigger_literals() {
        command.arg("-e").arg(literal);
    }
    let output = command.arg(path).output().ok()?;
    if !output.status.success() && output.stdout.is_empty() {
        return None;
    }
    Some(output.stdout.iter().filter(|&&b| b == b'\n').count() as u64)
}

/// One regex per rule, as a node-problem-detector style config would list them.
fn naive_rules() -> Vec<Regex> {
    [
        r"NVRM: Xid \((?:PCI:)?([0-9a-fA-F:.]+)[^)]*\): (\d+),? ?(?:pid=([^,]*), )?(?:name=([^,]*), )?(.*)",
        r"SXid \(PCI:([0-9a-fA-F:.]+)\): (\d+), (Fatal|Non-fatal), (.*)",
        r"(?:GPU )?([0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7])?.*fallen off the bus",
        r"GPU ([0-9a-fA-F:.]+): (?:RmInitAdapter|rm_init_adapter) failed",
        r"AER: (Multiple )?(Corrected|Correctable|Uncorrected \(Non-Fatal\)|Uncorrectable \(Non-Fatal\)|Uncorrected \(Fatal\)|Uncorrectable \(Fatal\)) error (?:message )?received(?::| from) (\S+)",
        r"([0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]): (?:AER: )?PCIe Bus Error: severity=([^,]+), type=([^,]+)",
        r"amdgpu.*ring (\S+) timeout",
        r"amdgpu.*GPU reset begin",
        r"amdgpu.*GPU reset(?:\(\d+\))? succeeded",
        r"amdgpu.*GPU reset(?:\(\d+\))? failed",
        r"(\d+) (un)?correctable hardware errors detected in (?:total in )?(\S+) block",
        r"amdgpu.*page fault \(src_id",
        r"Machine check events logged",
        r"Machine Check(?: Exception)?: *(\d+) Bank (\d+): ([0-9a-fA-F]+)",
        r"\[Hardware Error\]: event severity: (\w+)",
        r"Corrected error, no action required",
        r"\[Hardware Error\]: .*_STATUS\[([^\]]*)\]",
        r"NVRM: GPU\d+ .*(?:[Hh]eartbeat timed out|GSP Timeout|RPC from GSP)",
        r"EDAC MC(\d+): (\d+) (CE|UE) .* on (\S+)",
        r"(\S+): AER: (?:device recovery failed|can't recover)",
        r"Ring (\S+) reset failed",
        r"uncorrectable hardware error\((\w+)\)",
        r"habanalabs.*Device heartbeat failed",
        r"(?:i915|xe) (\S+) \[drm\] .*(?:GPU HANG|reset failed|reset request failed|Failed to reset GuC|reset request timed out|Timedout job|wedged)",
        r"(\S+) (\S+): (?:Link (?:up|down)$|.*NIC Link is (?:Up|Down))",
    ]
    .iter()
    .map(|pattern| Regex::new(pattern).expect("naive rule compiles"))
    .collect()
}

/// Every rule's regex on every line; returns the number of lines some rule matched.
fn run_naive(path: &Path, rules: &[Regex]) -> u64 {
    use std::io::BufRead;
    let file = std::fs::File::open(path).expect("open the generated log");
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let mut line = Vec::with_capacity(512);
    let mut matched = 0;
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let Ok(text) = std::str::from_utf8(&line) else { continue };
        let mut any = false;
        for rule in rules {
            if rule.captures(text).is_some() {
                any = true;
            }
        }
        matched += u64::from(any);
    }
    matched
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn time_runs<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut samples = Vec::with_capacity(runs);
    let mut result = None;
    for _ in 0..runs {
        let start = Instant::now();
        let value = f();
        samples.push(start.elapsed());
        result = Some(value);
    }
    (median(&mut samples), result.expect("at least one run"))
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let lines = arg("--lines", 1_000_000);
    let runs = arg("--runs", 5).max(1);
    let (path, bytes, faults_written) = generate(lines).expect("write the generated log");
    println!(
        "classify benchmark: {lines} lines, {:.1} MB, {faults_written} device-fault lines ({:.3} %), {runs} runs each, medians",
        bytes as f64 / 1e6,
        100.0 * faults_written as f64 / lines as f64
    );

    let classifier = Classifier::default();
    let pattern = grep_pattern();
    let rules = naive_rules();

    // Warm the page cache so every contender reads from memory.
    let _ = run_devheal(&path, &classifier);

    let (devheal_time, devheal_faults) = time_runs(runs, || run_devheal(&path, &classifier));
    let (rg_time, rg_count) = time_runs(runs, || run_rg(&path));
    let (grep_time, grep_count) = time_runs(runs, || run_grep(&path, &pattern));
    let (naive_time, naive_matched) = time_runs(runs, || run_naive(&path, &rules));

    let row = |name: &str, time: Duration, found: String| {
        let secs = time.as_secs_f64();
        println!(
            "{name:<34} {:>9.1} ms {:>20.0} {:>14.1} {:>11.2}x   {found}",
            secs * 1e3,
            lines as f64 / secs,
            bytes as f64 / 1e6 / secs,
            secs / devheal_time.as_secs_f64(),
        );
    };
    println!(
        "{:<34} {:>12} {:>20} {:>14} {:>12}   found",
        "contender", "median", "lines/s", "MB/s", "time/devheal"
    );
    row("devheal classify-log path", devheal_time, format!("{devheal_faults} fault lines"));
    match rg_count {
        Some(count) => row("rg -n -F, same literals", rg_time, format!("{count} matching lines")),
        None => println!("rg -n: not available on this machine (apt-get install ripgrep)"),
    }
    match grep_count {
        Some(count) => {
            row("grep -cE (LC_ALL=C), same literals", grep_time, format!("{count} matching lines"))
        }
        None => println!("grep -cE: not available on this machine"),
    }
    row("naive: every rule regex, every line", naive_time, format!("{naive_matched} matching lines"));
    if rg_count.is_some() {
        println!(
            "devheal vs rg -n: {:.2}x ripgrep's throughput (target >= 1x)",
            rg_time.as_secs_f64() / devheal_time.as_secs_f64()
        );
    }
    if grep_count.is_some() {
        println!(
            "devheal vs grep: {:.2}x grep's throughput (target >= 1x); devheal vs naive: {:.1}x (target >= 10x)",
            grep_time.as_secs_f64() / devheal_time.as_secs_f64(),
            naive_time.as_secs_f64() / devheal_time.as_secs_f64()
        );
    }
    assert_eq!(devheal_faults, faults_written as u64, "devheal found every generated fault line");
    let _ = std::fs::remove_file(&path);
}
