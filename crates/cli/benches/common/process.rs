//! A running devheal process measured from outside: CPU ticks and memory from `/proc`, a metric
//! from its `/metrics`, and `--name value` arguments of a benchmark (included by path:
//! `#[path = "common/process.rs"] mod process;`, next to `common/memory.rs`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use super::memory;

/// CPU ticks (user + system) and RSS/peak RSS in KiB of a process.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub ticks: u64,
    pub rss_kib: u64,
    pub hwm_kib: u64,
}

pub fn sample(pid: u32) -> Option<Sample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let mem = memory::memory(pid)?;
    Some(Sample { ticks, rss_kib: mem.rss_kib, hwm_kib: mem.hwm_kib })
}

pub fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// The value of an unlabelled metric `name` on `addr`'s `/metrics`.
pub fn metric(addr: SocketAddr, name: &str) -> Option<u64> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<f64>().ok().map(|v| v as u64))
}

/// The address a devheal process announces on a stderr `line` as `<before>http://ADDR<after>`
/// (`metrics on http://ADDR/metrics`).
pub fn announced(line: &str, before: &str, after: &str) -> Option<SocketAddr> {
    line.split(&format!("{before}http://")).nth(1)?.strip_suffix(after)?.parse().ok()
}

/// `--name N` from the benchmark's arguments, else `default`.
pub fn arg(args: &[String], name: &str, default: u64) -> u64 {
    args.windows(2).find(|w| w[0] == name).and_then(|w| w[1].parse().ok()).unwrap_or(default)
}
