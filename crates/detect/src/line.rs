//! Kernel log line parsing: splits one line of any common kernel-log form into its timestamp,
//! sequence number and message text.
//!
//! Forms recognised (see `docs/kernel-log.md`):
//! - `/dev/kmsg` records: `pri,seq,usec,flags[,...];message`
//! - `dmesg`: `[  123.456789] message` (also with a raw `<4>` priority prefix, `dmesg -r`)
//! - `dmesg -T`: `[Tue Nov 18 10:11:12 2025] message`
//! - `journalctl -k` / syslog short forms: `Nov 18 10:11:12 host kernel: message`, the
//!   `short-precise` and `short-iso` variants, and the kern.log habit of a `[ 123.45]` stamp
//!   after `kernel:`
//! - bare messages (anything else).
//!
//! Parsing is pure and never panics; bytes that cannot be a log line (invalid UTF-8, NUL bytes,
//! lines longer than [`MAX_LINE_BYTES`]) are reported as a [`LineError`].

use devheal_core::{Duration, Time};

/// Longest line accepted. Kernel records are at most about 1 KiB; journal lines add a prefix.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// Which textual form a line was in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineFormat {
    /// A `/dev/kmsg` record.
    Kmsg,
    /// A `/dev/kmsg` continuation line (` KEY=VALUE`), which carries no message.
    KmsgContinuation,
    /// `dmesg` with seconds since boot.
    Dmesg,
    /// `dmesg -T` with a wall-clock time.
    DmesgWallClock,
    /// `journalctl` / syslog short forms.
    Journal,
    /// A `journalctl` boot separator (`-- Boot 0123... --`); the message is the boot id.
    JournalBoot,
    /// No recognised prefix: the whole line is the message.
    Bare,
}

/// When a line was logged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timestamp {
    /// Time since boot (kmsg, dmesg).
    SinceBoot(Duration),
    /// Wall-clock time since the Unix epoch. Forms without a year (`journalctl` short, syslog)
    /// are taken to be in 1970, which keeps the order and spacing within one year.
    WallClock(Time),
}

impl Timestamp {
    /// The timestamp as a [`Time`] for correlation windows.
    pub fn as_time(self) -> Time {
        match self {
            Timestamp::SinceBoot(d) => Time::from_nanos(d.as_nanos()),
            Timestamp::WallClock(t) => t,
        }
    }
}

/// One parsed log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogLine<'a> {
    pub format: LineFormat,
    pub timestamp: Option<Timestamp>,
    /// The kmsg sequence number, if the line is a kmsg record.
    pub seq: Option<u64>,
    /// Syslog priority (facility * 8 + level), if the line carries one.
    pub priority: Option<u32>,
    /// The kernel message without any prefix.
    pub message: &'a str,
}

/// Why a line was not parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("line is {len} bytes, longer than the {max}-byte limit")]
    TooLong { len: usize, max: usize },
    #[error("line contains a NUL byte at offset {offset} (binary data)")]
    Binary { offset: usize },
    #[error("line is not valid UTF-8 (first bad byte at offset {valid_up_to})")]
    InvalidUtf8 { valid_up_to: usize },
}

/// Parse one line (with or without its trailing newline).
pub fn parse_line(line: &[u8]) -> Result<LogLine<'_>, LineError> {
    let line = trim_line_end(line);
    if line.len() > MAX_LINE_BYTES {
        return Err(LineError::TooLong { len: line.len(), max: MAX_LINE_BYTES });
    }
    if let Some(offset) = memchr::memchr(0, line) {
        return Err(LineError::Binary { offset });
    }
    let text =
        std::str::from_utf8(line).map_err(|e| LineError::InvalidUtf8 { valid_up_to: e.valid_up_to() })?;
    Ok(parse_text(text))
}

/// Parse one line that is already known to be valid text.
pub fn parse_text(text: &str) -> LogLine<'_> {
    let text = text.trim_end_matches(['\n', '\r']);
    let bytes = text.as_bytes();
    match bytes.first() {
        Some(b'0'..=b'9') => {
            if let Some(line) = parse_kmsg(text) {
                return line;
            }
            if let Some(line) = parse_iso_journal(text) {
                return line;
            }
        }
        Some(b'[') => {
            if let Some(line) = parse_dmesg(text, None) {
                return line;
            }
        }
        Some(b'<') => {
            if let Some((priority, rest)) = split_raw_priority(text)
                && let Some(line) = parse_dmesg(rest, Some(priority))
            {
                return line;
            }
        }
        Some(b' ') if is_kmsg_continuation(text) => {
            return LogLine {
                format: LineFormat::KmsgContinuation,
                timestamp: None,
                seq: None,
                priority: None,
                message: "",
            };
        }
        Some(b'-') => {
            if let Some(boot) = parse_boot_separator(text) {
                return LogLine {
                    format: LineFormat::JournalBoot,
                    timestamp: None,
                    seq: None,
                    priority: None,
                    message: boot,
                };
            }
        }
        Some(b'A'..=b'Z') => {
            if let Some(line) = parse_short_journal(text) {
                return line;
            }
        }
        Some(b'a'..=b'z') => {
            if let Some(rest) = strip_dmesg_level(text) {
                let mut line = parse_text(rest);
                if line.format == LineFormat::Bare {
                    line.message = rest;
                }
                return line;
            }
        }
        _ => {}
    }
    LogLine { format: LineFormat::Bare, timestamp: None, seq: None, priority: None, message: text }
}

fn trim_line_end(mut line: &[u8]) -> &[u8] {
    while let [rest @ .., b'\n' | b'\r'] = line {
        line = rest;
    }
    line
}

/// Split a leading run of ASCII digits; returns (value, rest). Saturates instead of overflowing.
fn split_number(s: &str) -> Option<(u64, &str)> {
    let end = s.bytes().position(|b| !b.is_ascii_digit()).unwrap_or(s.len());
    if end == 0 || end > 19 {
        return None;
    }
    let value = s[..end].parse().ok()?;
    Some((value, &s[end..]))
}

/// ` KEY=VALUE` with an upper-case key, as /dev/kmsg prints after a record.
fn is_kmsg_continuation(text: &str) -> bool {
    let Some((key, _)) = text[1..].split_once('=') else { return false };
    !key.is_empty() && key.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// `pri,seq,usec,flags[,more];message`
fn parse_kmsg(text: &str) -> Option<LogLine<'_>> {
    let (header, message) = text.split_once(';')?;
    let mut fields = header.split(',');
    let priority: u32 = fields.next()?.parse().ok()?;
    let seq: u64 = fields.next()?.parse().ok()?;
    let usec: u64 = fields.next()?.parse().ok()?;
    let flags = fields.next()?;
    if flags.len() > 1 || flags.bytes().any(|b| b.is_ascii_digit()) {
        return None;
    }
    let nanos = i64::try_from(usec).ok()?.checked_mul(1000)?;
    Some(LogLine {
        format: LineFormat::Kmsg,
        timestamp: Some(Timestamp::SinceBoot(Duration::from_nanos(nanos))),
        seq: Some(seq),
        priority: Some(priority),
        message,
    })
}

/// `<N>rest` (dmesg -r)
fn split_raw_priority(text: &str) -> Option<(u32, &str)> {
    let rest = text.strip_prefix('<')?;
    let (value, rest) = split_number(rest)?;
    let rest = rest.strip_prefix('>')?;
    Some((u32::try_from(value).ok()?, rest))
}

/// `[  123.456789] message` or `[Tue Nov 18 10:11:12 2025] message`
fn parse_dmesg(text: &str, priority: Option<u32>) -> Option<LogLine<'_>> {
    let inner_and_rest = text.strip_prefix('[')?;
    let close = inner_and_rest.find(']')?;
    let inner = &inner_and_rest[..close];
    let message = strip_caller_id(
        inner_and_rest[close + 1..].strip_prefix(' ').unwrap_or(&inner_and_rest[close + 1..]),
    );
    // `dmesg -H` / `--time-format delta`: `[  +0.000844] message` carries no absolute time.
    if let Some(delta) = inner.trim_start().strip_prefix('+')
        && parse_seconds_since_boot(delta).is_some()
    {
        return Some(LogLine { format: LineFormat::Dmesg, timestamp: None, seq: None, priority, message });
    }
    if let Some(since_boot) = parse_seconds_since_boot(inner.trim_start()) {
        return Some(LogLine {
            format: LineFormat::Dmesg,
            timestamp: Some(Timestamp::SinceBoot(since_boot)),
            seq: None,
            priority,
            message,
        });
    }
    let time = parse_ctime(inner)?;
    Some(LogLine {
        format: LineFormat::DmesgWallClock,
        timestamp: Some(Timestamp::WallClock(time)),
        seq: None,
        priority,
        message,
    })
}

/// The printk caller id some kernels add after the time: `[  T125] message`, `[    C3] message`.
fn strip_caller_id(message: &str) -> &str {
    if let Some(inner_and_rest) = message.strip_prefix('[')
        && let Some(close) = inner_and_rest.find(']')
    {
        let inner = inner_and_rest[..close].trim_start();
        let is_caller = matches!(inner.as_bytes().first(), Some(b'T' | b'C'))
            && inner.len() > 1
            && inner[1..].bytes().all(|b| b.is_ascii_digit());
        if is_caller {
            let rest = &inner_and_rest[close + 1..];
            return rest.strip_prefix(' ').unwrap_or(rest);
        }
    }
    message
}

/// `dmesg -x`: `kern  :err   : rest` → rest.
fn strip_dmesg_level(text: &str) -> Option<&str> {
    let (facility, rest) = text.split_once(':')?;
    let (level, rest) = rest.split_once(':')?;
    let is_word = |s: &str| {
        let s = s.trim_end();
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase())
    };
    (is_word(facility)
        && is_word(level)
        && !facility.ends_with(|c: char| c != ' ' && !c.is_ascii_lowercase()))
    .then(|| rest.strip_prefix(' ').unwrap_or(rest))
}

/// `123.456789` → duration.
fn parse_seconds_since_boot(s: &str) -> Option<Duration> {
    let (secs, rest) = split_number(s)?;
    let frac = rest.strip_prefix('.')?;
    if frac.is_empty() || frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac_value: i64 = frac.parse().ok()?;
    let scale = 10_i64.pow(9 - frac.len() as u32);
    let nanos = i64::try_from(secs).ok()?.checked_mul(1_000_000_000)?.checked_add(frac_value * scale)?;
    Some(Duration::from_nanos(nanos))
}

const MONTHS: [&str; 12] =
    ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
const WEEKDAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

fn month_number(name: &str) -> Option<u32> {
    MONTHS.iter().position(|m| *m == name).map(|i| i as u32 + 1)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month = i64::from(month);
    let day_of_year = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// `HH:MM:SS[.fraction]` → nanoseconds into the day.
fn parse_clock(s: &str) -> Option<i64> {
    let (hh, rest) = split_number(s)?;
    let (mm, rest) = split_number(rest.strip_prefix(':')?)?;
    let (ss, rest) = split_number(rest.strip_prefix(':')?)?;
    if hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let mut nanos = ((hh * 60 + mm) * 60 + ss) as i64 * 1_000_000_000;
    if let Some(frac) = rest.strip_prefix('.').or_else(|| rest.strip_prefix(',')) {
        if frac.is_empty() || frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let frac_value: i64 = frac.parse().ok()?;
        nanos += frac_value * 10_i64.pow(9 - frac.len() as u32);
    } else if !rest.is_empty() {
        return None;
    }
    Some(nanos)
}

fn wall_clock(year: i64, month: u32, day: u32, clock_nanos: i64) -> Option<Time> {
    // Years outside 1..=9999 are not log timestamps (and would overflow the day arithmetic).
    if !(1..=31).contains(&day) || !(1..=12).contains(&month) || !(1..=9999).contains(&year) {
        return None;
    }
    let days = days_from_civil(year, month, day);
    days.checked_mul(86_400_000_000_000)?.checked_add(clock_nanos).map(Time::from_nanos)
}

/// `Tue Nov 18 10:11:12 2025` (day may be space padded).
fn parse_ctime(s: &str) -> Option<Time> {
    let mut parts = s.split_ascii_whitespace();
    let weekday = parts.next()?;
    if !WEEKDAYS.contains(&weekday) {
        return None;
    }
    let month = month_number(parts.next()?)?;
    let day: u32 = parts.next()?.parse().ok()?;
    let clock = parse_clock(parts.next()?)?;
    let year: i64 = parts.next()?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    wall_clock(year, month, day, clock)
}

/// After the time: `host ident[pid]: message`; the kern.log habit `kernel: [ 12.3] message`
/// is stripped too.
fn split_host_ident(rest: &str, dmesg_iso: bool) -> Option<&str> {
    let rest = rest.strip_prefix(' ')?;
    let (host, after_host) = rest.split_once(' ').unwrap_or((rest, ""));
    if host.is_empty() {
        return None;
    }
    // No host name: `Mar 29 15:38:59 kernel: message`; or `dmesg --time-format iso`, where the
    // message itself follows the time.
    if host.ends_with(':') {
        if host == "kernel:" || !dmesg_iso {
            return Some(strip_kern_log_stamp(after_host));
        }
        return Some(rest);
    }
    let rest = after_host;
    let colon = rest.find(": ").or_else(|| rest.strip_suffix(':').map(|r| r.len()))?;
    let ident = &rest[..colon];
    if ident.is_empty() || ident.contains(' ') {
        return None;
    }
    Some(strip_kern_log_stamp(rest.get(colon + 2..).unwrap_or("")))
}

/// kern.log: `kernel: [ 123.456] message` → `message`.
fn strip_kern_log_stamp(message: &str) -> &str {
    if let Some(inner) = message.strip_prefix('[')
        && let Some(close) = inner.find(']')
        && parse_seconds_since_boot(inner[..close].trim_start()).is_some()
    {
        let after = &inner[close + 1..];
        return after.strip_prefix(' ').unwrap_or(after);
    }
    message
}

/// `Nov 18 10:11:12[.123456] host ident: message`
fn parse_short_journal(text: &str) -> Option<LogLine<'_>> {
    let month = month_number(text.get(..3)?)?;
    let rest = text.get(3..)?.strip_prefix(' ')?;
    let rest = rest.trim_start_matches(' ');
    let (day, rest) = split_number(rest)?;
    let rest = rest.strip_prefix(' ')?;
    let clock_end = rest.find(' ')?;
    let clock = parse_clock(&rest[..clock_end])?;
    let message = split_host_ident(&rest[clock_end..], false)?;
    let time = wall_clock(1970, month, u32::try_from(day).ok()?, clock)?;
    Some(LogLine {
        format: LineFormat::Journal,
        timestamp: Some(Timestamp::WallClock(time)),
        seq: None,
        priority: None,
        message,
    })
}

/// `2025-11-18T10:11:12[.123456](+0000|+00:00|Z) host ident: message`
fn parse_iso_journal(text: &str) -> Option<LogLine<'_>> {
    let (stamp, _) = text.split_once(' ')?;
    let (date, clock_and_zone) = stamp.split_once('T')?;
    let mut date_parts = date.split('-');
    let year: i64 = date_parts.next()?.parse().ok()?;
    let month: u32 = date_parts.next()?.parse().ok()?;
    let day: u32 = date_parts.next()?.parse().ok()?;
    if date_parts.next().is_some() || !(1..=12).contains(&month) {
        return None;
    }
    let zone_at = clock_and_zone.find(['+', '-', 'Z']).unwrap_or(clock_and_zone.len());
    let clock = parse_clock(&clock_and_zone[..zone_at])?;
    let offset_nanos = parse_zone(&clock_and_zone[zone_at..])?;
    let message = split_host_ident(&text[stamp.len()..], true)?;
    let time = wall_clock(year, month, day, clock)?;
    Some(LogLine {
        format: LineFormat::Journal,
        timestamp: Some(Timestamp::WallClock(Time::from_nanos(time.as_nanos().saturating_sub(offset_nanos)))),
        seq: None,
        priority: None,
        message,
    })
}

/// `""`, `Z`, `+0100`, `-01:30` → offset in nanoseconds.
fn parse_zone(zone: &str) -> Option<i64> {
    if zone.is_empty() || zone == "Z" {
        return Some(0);
    }
    let (sign, digits) = match zone.as_bytes()[0] {
        b'+' => (1, &zone[1..]),
        b'-' => (-1, &zone[1..]),
        _ => return None,
    };
    let digits: String = digits.chars().filter(|c| *c != ':').collect();
    if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let hours: i64 = digits[..2].parse().ok()?;
    let minutes: i64 = digits[2..].parse().ok()?;
    Some(sign * (hours * 60 + minutes) * 60 * 1_000_000_000)
}

/// `-- Boot 0123abcd... --`
fn parse_boot_separator(text: &str) -> Option<&str> {
    let id = text.strip_prefix("-- Boot ")?.strip_suffix(" --")?.trim();
    (!id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Option<Timestamp> {
        Some(Timestamp::SinceBoot(Duration::from_nanos((s * 1e9).round() as i64)))
    }

    #[test]
    fn kmsg_record() {
        let line =
            parse_line(b"4,1234,5678901,-;NVRM: Xid (PCI:0000:3b:00): 79, pid=1, name=x, y\n").unwrap();
        assert_eq!(line.format, LineFormat::Kmsg);
        assert_eq!(line.seq, Some(1234));
        assert_eq!(line.priority, Some(4));
        assert_eq!(line.timestamp, secs(5.678901));
        assert_eq!(line.message, "NVRM: Xid (PCI:0000:3b:00): 79, pid=1, name=x, y");
    }

    #[test]
    fn kmsg_record_with_extra_header_fields() {
        let line = parse_line(b"6,339,5140900,-,caller=T1;hello world").unwrap();
        assert_eq!(line.format, LineFormat::Kmsg);
        assert_eq!(line.message, "hello world");
    }

    #[test]
    fn kmsg_continuation() {
        let line = parse_line(b" SUBSYSTEM=pci").unwrap();
        assert_eq!(line.format, LineFormat::KmsgContinuation);
        assert_eq!(line.message, "");
    }

    #[test]
    fn dmesg_forms() {
        let line = parse_line(b"[  123.456789] usb 1-1: new high-speed USB device").unwrap();
        assert_eq!(line.format, LineFormat::Dmesg);
        assert_eq!(line.timestamp, secs(123.456789));
        assert_eq!(line.message, "usb 1-1: new high-speed USB device");

        let raw = parse_line(b"<4>[    7.5] NVRM: hi").unwrap();
        assert_eq!(raw.priority, Some(4));
        assert_eq!(raw.message, "NVRM: hi");

        let wall = parse_line(b"[Tue Nov 18 10:11:12 2025] NVRM: hi").unwrap();
        assert_eq!(wall.format, LineFormat::DmesgWallClock);
        // 2025-11-18T10:11:12Z
        assert_eq!(wall.timestamp, Some(Timestamp::WallClock(Time::from_secs(1_763_460_672))));
        assert_eq!(wall.message, "NVRM: hi");

        let padded = parse_line(b"[Sat Nov  1 00:00:00 2025] x").unwrap();
        assert_eq!(padded.timestamp, Some(Timestamp::WallClock(Time::from_secs(1_761_955_200))));
    }

    #[test]
    fn journal_forms() {
        let line = parse_line(b"Nov 18 10:11:12 gpu-node-7 kernel: NVRM: Xid (PCI:0000:3b:00): 79").unwrap();
        assert_eq!(line.format, LineFormat::Journal);
        assert_eq!(line.message, "NVRM: Xid (PCI:0000:3b:00): 79");

        let precise = parse_line(b"Nov  8 10:11:12.250000 host kernel: msg").unwrap();
        assert_eq!(precise.message, "msg");

        let kern_log = parse_line(b"Nov 18 10:11:12 host kernel: [ 1234.5] NVRM: Xid x").unwrap();
        assert_eq!(kern_log.message, "NVRM: Xid x");

        let iso = parse_line(b"2025-11-18T10:11:12+0000 host kernel: msg").unwrap();
        assert_eq!(iso.timestamp, Some(Timestamp::WallClock(Time::from_secs(1_763_460_672))));
        let iso_offset = parse_line(b"2025-11-18T11:11:12.5+01:00 host kernel: msg").unwrap();
        assert_eq!(
            iso_offset.timestamp,
            Some(Timestamp::WallClock(Time::from_nanos(1_763_460_672_500_000_000)))
        );

        let daemon = parse_line(b"Nov 18 10:11:12 host nvidia-persistenced[123]: Started (123)").unwrap();
        assert_eq!(daemon.message, "Started (123)");
    }

    #[test]
    fn more_real_prefixes() {
        let no_host = parse_line(b"Mar 29 15:38:59 kernel: NVRM: Xid (PCI:0000:01:00): 120, GSP").unwrap();
        assert_eq!(no_host.message, "NVRM: Xid (PCI:0000:01:00): 120, GSP");
        let level = parse_line(b"kern  :err   : 2025-01-25T10:34:54,859532+00:00 nvidia-nvswitch1: SXid (PCI:0000:84:00.0): 12028, Data").unwrap();
        assert_eq!(level.message, "nvidia-nvswitch1: SXid (PCI:0000:84:00.0): 12028, Data");
        assert!(matches!(level.timestamp, Some(Timestamp::WallClock(_))));
        let level_ctime = parse_line(b"kern  :info  : [Fri Apr  7 00:04:33 2023] DMAR: dmar0").unwrap();
        assert_eq!(level_ctime.message, "DMAR: dmar0");
        let delta = parse_line(b"[  +0.000844] nvidia 0000:03:00.0: AER: can't recover").unwrap();
        assert_eq!(delta.message, "nvidia 0000:03:00.0: AER: can't recover");
        assert_eq!(delta.timestamp, None);
        let caller = parse_line(b"[   36.117975][  T291] pcieport 0000:00:00.0: AER: x").unwrap();
        assert_eq!(caller.message, "pcieport 0000:00:00.0: AER: x");
    }

    #[test]
    fn boot_separator() {
        let line = parse_line(b"-- Boot 0f6ec3d4a1b84b1c9d6f0e7a9b1c2d3e --").unwrap();
        assert_eq!(line.format, LineFormat::JournalBoot);
        assert_eq!(line.message, "0f6ec3d4a1b84b1c9d6f0e7a9b1c2d3e");
    }

    #[test]
    fn bare_message_and_near_misses() {
        for text in
            ["NVRM: Xid (PCI:0000:3b:00): 79", "[unterminated", "1,2,3", "Nov 18 garbage", "<x>", "12345"]
        {
            let line = parse_line(text.as_bytes()).unwrap();
            assert_eq!(line.format, LineFormat::Bare, "{text}");
            assert_eq!(line.message, text);
        }
    }

    #[test]
    fn rejects_bad_bytes() {
        assert_eq!(parse_line(b"ab\0cd"), Err(LineError::Binary { offset: 2 }));
        assert_eq!(parse_line(b"ab\xffcd"), Err(LineError::InvalidUtf8 { valid_up_to: 2 }));
        let long = vec![b'a'; MAX_LINE_BYTES + 1];
        assert!(matches!(parse_line(&long), Err(LineError::TooLong { .. })));
    }

    #[test]
    fn absurd_years_are_not_timestamps() {
        // Found by the fuzz target: a 25-digit year overflowed the day arithmetic.
        let line = parse_line(b"[Fri Aug 30 11:43:28 0000008208339013254716514] No 0").unwrap();
        assert_eq!(line.format, LineFormat::Bare);
        let iso = parse_line(b"9223372036854775807-11-18T10:11:12+0000 host kernel: msg").unwrap();
        assert_eq!(iso.format, LineFormat::Bare);
    }

    #[test]
    fn huge_numbers_do_not_overflow() {
        let line = parse_line(b"4,99999999999999999999,1,-;m").unwrap();
        assert_eq!(line.format, LineFormat::Bare);
        let line = parse_line(b"[99999999999999999.9] m").unwrap();
        assert_eq!(line.format, LineFormat::Bare);
    }
}
