//! Footprint of the running agent: RSS and CPU idle and under a `/dev/kmsg` line storm, beside
//! two baselines measured in the same run: `cat /dev/kmsg > /dev/null` (the cheapest possible
//! reader of every record) and the classifier alone on the same lines, in this process.
//!
//! ```text
//! cargo bench --profile dev -p devheal --bench agent_footprint            # options: -- --secs N --rate LINES_PER_S
//! ```
//!
//! The agent runs as `devheal agent --no-kube --no-nvml --fake-devices 8` (no kubelet, output to
//! /dev/null) on the real `/dev/kmsg`. Needs root on Linux (it writes the storm into the kernel
//! log, with `printk_devkmsg` set to "on" for the run and restored after); elsewhere it says why
//! it skipped. 1 % of the storm's lines are Xid 79 on the fake devices' PCI addresses (so the
//! agent classifies, correlates and publishes), the rest ordinary kernel noise; every line carries
//! a `devheal-footprint` marker.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use devheal_detect::Classifier;

#[path = "common/memory.rs"]
mod memory;
#[path = "common/process.rs"]
mod process;

use process::{announced, arg, clock_ticks_per_second, metric, sample};

fn storm_line(i: u64) -> String {
    if i.is_multiple_of(100) {
        format!(
            "<4>NVRM: Xid (PCI:{}:00:{:02x}): 79, pid=4242, name=devheal-footprint-{i}, GPU has fallen off the bus (devheal benchmark record)\n",
            devheal_agent::fake::fake_pci_domain("footprint"),
            (i / 100) % 8
        )
    } else {
        format!(
            "<6>devheal-footprint {i}: usb 1-1: new high-speed USB device number {} using xhci_hcd\n",
            i % 127
        )
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let secs = arg(&args, "--secs", 10).max(1);
    let rate = arg(&args, "--rate", 10_000).max(1);
    let mut kmsg = match std::fs::OpenOptions::new().write(true).open("/dev/kmsg") {
        Ok(f) => f,
        Err(e) => {
            println!("SKIPPED agent footprint: cannot write /dev/kmsg ({e}); needs root on Linux");
            return;
        }
    };
    let _policy = match devheal_detect::kmsg::UnlimitedKmsgWrites::enable() {
        Ok(p) => p,
        Err(e) => {
            println!("SKIPPED agent footprint: {e}");
            return;
        }
    };
    let hz = clock_ticks_per_second();
    let dir = std::env::temp_dir().join(format!("devheal-footprint-{}", std::process::id()));
    let plugins = dir.join("device-plugins");
    std::fs::create_dir_all(&plugins).expect("temp dir");

    let mut agent = Command::new(env!("CARGO_BIN_EXE_devheal"))
        .args(["agent", "--no-kube", "--no-nvml", "--node", "footprint", "--fake-devices", "8"])
        .args(["--metrics-addr", "127.0.0.1:0", "--progress-addr", "127.0.0.1:0"])
        .arg("--device-plugin-dir")
        .arg(&plugins)
        .arg("--pod-resources-socket")
        .arg(dir.join("no-kubelet.sock"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start devheal agent");
    let stderr = BufReader::new(agent.stderr.take().expect("stderr"));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if let Some(addr) = announced(&line, "metrics on ", "/metrics") {
                let _ = tx.send(addr);
            }
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(30)).expect("the agent announces its metrics address");
    let pid = agent.id();

    // Warm-up: the agent replays this boot's ring buffer at start.
    std::thread::sleep(Duration::from_secs(3));

    // Idle.
    let a = sample(pid).expect("agent stats");
    std::thread::sleep(Duration::from_secs(secs));
    let b = sample(pid).expect("agent stats");
    let idle_cpu = (b.ticks - a.ticks) as f64 / hz / secs as f64 * 100.0;

    // The baseline reader, started (and past its own replay) before the storm.
    let mut cat: Child =
        Command::new("cat").arg("/dev/kmsg").stdout(Stdio::null()).spawn().expect("start cat");
    std::thread::sleep(Duration::from_secs(1));

    let lines_before = metric(addr, "devheal_agent_kmsg_lines_total").unwrap_or(0);
    let lost_before = metric(addr, "devheal_agent_kmsg_lost_total").unwrap_or(0);
    let agent_start = sample(pid).expect("agent stats");
    let cat_start = sample(cat.id()).expect("cat stats");
    let started = Instant::now();
    let total = rate * secs;
    let mut written = 0u64;
    while written < total {
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        while written < due.min(total) {
            if kmsg.write_all(storm_line(written).as_bytes()).is_err() {
                break;
            }
            written += 1;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let storm_secs = started.elapsed().as_secs_f64();
    // Let the readers catch up with the last records.
    std::thread::sleep(Duration::from_millis(500));
    let window = started.elapsed().as_secs_f64();
    let agent_end = sample(pid).expect("agent stats");
    let cat_end = sample(cat.id()).expect("cat stats");
    let lines_after = metric(addr, "devheal_agent_kmsg_lines_total").unwrap_or(0);
    let lost_after = metric(addr, "devheal_agent_kmsg_lost_total").unwrap_or(0);
    let storm_cpu = (agent_end.ticks - agent_start.ticks) as f64 / hz / window * 100.0;
    let cat_cpu = (cat_end.ticks - cat_start.ticks) as f64 / hz / window * 100.0;

    // The classifier alone on the same lines (message text only, as the agent's thread sees it).
    let classifier = Classifier::default();
    let messages: Vec<String> = (0..total)
        .map(|i| {
            storm_line(i).trim_start_matches(|c| c != '>').trim_start_matches('>').trim_end().to_string()
        })
        .collect();
    let t = Instant::now();
    let faults = messages.iter().filter(|m| classifier.classify(m).is_some()).count();
    let classify_secs = t.elapsed().as_secs_f64();

    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    let _ = cat.kill();
    let _ = cat.wait();
    let exit = agent.wait();
    let _ = std::fs::remove_dir_all(&dir);

    let mib = |kib: u64| kib as f64 / 1024.0;
    println!("agent footprint (devheal agent --no-kube --no-nvml --fake-devices 8, {hz} ticks/s)");
    println!(
        "idle {secs} s:   agent CPU {idle_cpu:.2} % of one core ({} ticks), RSS {:.1} MiB (peak {:.1} MiB)",
        b.ticks - a.ticks,
        mib(b.rss_kib),
        mib(b.hwm_kib)
    );
    println!(
        "storm:         {written} lines written in {storm_secs:.1} s ({:.0} lines/s, 1 % Xid 79), measured over {window:.1} s",
        written as f64 / storm_secs
    );
    println!(
        "  agent:       CPU {storm_cpu:.1} % of one core, RSS {:.1} MiB (peak {:.1} MiB); read {} records, {} lost to overwrite",
        mib(agent_end.rss_kib),
        mib(agent_end.hwm_kib),
        lines_after.saturating_sub(lines_before),
        lost_after.saturating_sub(lost_before)
    );
    println!(
        "  cat /dev/kmsg > /dev/null: CPU {cat_cpu:.1} % of one core, RSS {:.1} MiB",
        mib(cat_end.rss_kib)
    );
    println!(
        "  classifier alone, same {total} messages: {:.1} ms ({:.2} us/line, {:.2} % of one core at {rate} lines/s), {faults} faults",
        classify_secs * 1e3,
        classify_secs * 1e6 / total as f64,
        classify_secs * 1e6 / total as f64 * rate as f64 / 1e4
    );
    println!("agent exit: {exit:?}");
}
