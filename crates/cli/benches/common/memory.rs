//! A process's resident memory from `/proc/<pid>/status`, for the benchmarks that measure a
//! running devheal process (included by path: `#[path = "common/memory.rs"] mod memory;`).

/// Resident set size and its peak, in KiB.
#[derive(Clone, Copy, Debug, Default)]
pub struct Memory {
    pub rss_kib: u64,
    pub hwm_kib: u64,
}

/// `VmRSS` and `VmHWM` of `pid`, or `None` when the process is gone.
pub fn memory(pid: u32) -> Option<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Some(Memory { rss_kib: kib("VmRSS:"), hwm_kib: kib("VmHWM:") })
}
