//! A streaming `/dev/kmsg` reader for the node agent.
//!
//! The kernel ABI (`Documentation/ABI/testing/dev-kmsg`): every `read()` returns exactly one
//! record, `pri,seq,usec,flags[,...];message\n` followed by ` KEY=VALUE\n` lines; the first read
//! after `open()` returns the oldest record still in the ring buffer; `lseek(SEEK_END)` skips
//! history; a read fails with `EPIPE` when records were overwritten before we read them, and the
//! number lost is the gap in the 64-bit sequence numbers. Reads block until a record arrives.
//!
//! Wake-up latency: the kernel wakes blocked `/dev/kmsg` readers from deferred work that runs at
//! the next scheduler tick, so a blocking read sees a record up to one tick (4 ms at HZ=250) after
//! it was logged. [`KmsgReader::open_polling`] trades a little CPU (one non-blocking read per
//! interval while idle) for a latency bounded by the interval instead.
//!
//! The boot id (`/proc/sys/kernel/random/boot_id`) is read at open and attached to every
//! record, so that incidents from an earlier boot are never mistaken for current ones.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use devheal_core::Duration;

use crate::line::{LineFormat, parse_text};

/// Where the Linux kernel publishes the current boot id.
pub const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

/// Large enough for any record: the kernel's limit is about 1 KiB of text plus properties.
const RECORD_BUFFER_BYTES: usize = 16 * 1024;

/// `O_NONBLOCK` for the Linux architectures devheal runs on (x86_64, aarch64, riscv64, arm).
const O_NONBLOCK: i32 = 0o4000;

/// Where reading starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartAt {
    /// Replay every record still in the ring buffer (since boot, if nothing was overwritten).
    Beginning,
    /// Only records logged after the reader opened.
    End,
}

/// One kernel log record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KmsgRecord {
    /// Syslog priority: facility * 8 + level.
    pub priority: u32,
    pub seq: u64,
    pub since_boot: Duration,
    /// The message text (the kernel escapes unprintable bytes as `\xNN`).
    pub message: String,
    /// The ` KEY=VALUE` lines after the message (`SUBSYSTEM=pci`, `DEVICE=+pci:0000:3b:00.0`).
    pub properties: Vec<(String, String)>,
}

/// What one call to [`KmsgReader::next_record`] returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KmsgEvent {
    Record(KmsgRecord),
    /// Records were overwritten before they could be read; the count comes from the sequence
    /// gap. The next call returns the record after the gap.
    Lost {
        count: u64,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum KmsgError {
    #[error("cannot open {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} reached end of file (not a kmsg device?)")]
    Closed { path: PathBuf },
    #[error("malformed kmsg record: {reason}")]
    Malformed { reason: String },
}

impl KmsgError {
    /// A non-blocking reader has read every record that was waiting.
    pub fn is_caught_up(&self) -> bool {
        matches!(self, KmsgError::Read { source, .. } if source.kind() == io::ErrorKind::WouldBlock)
    }
}

/// Parse one record as a `read()` of `/dev/kmsg` returns it.
pub fn parse_kmsg_record(bytes: &[u8]) -> Result<KmsgRecord, KmsgError> {
    let text = String::from_utf8_lossy(bytes);
    let mut lines = text.split('\n');
    let first = lines.next().unwrap_or("");
    let header = parse_text(first);
    if header.format != LineFormat::Kmsg {
        return Err(KmsgError::Malformed {
            reason: format!("no `pri,seq,usec,flags;` header in {first:.80?}"),
        });
    }
    let (Some(priority), Some(seq), Some(crate::line::Timestamp::SinceBoot(since_boot))) =
        (header.priority, header.seq, header.timestamp)
    else {
        return Err(KmsgError::Malformed { reason: format!("incomplete header in {first:.80?}") });
    };
    let properties = lines
        .filter_map(|line| line.strip_prefix(' '))
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect();
    Ok(KmsgRecord { priority, seq, since_boot, message: header.message.to_string(), properties })
}

/// Blocking reader of `/dev/kmsg` records.
#[derive(Debug)]
pub struct KmsgReader {
    path: PathBuf,
    file: File,
    buffer: Vec<u8>,
    boot_id: Option<String>,
    last_seq: Option<u64>,
    pending: Option<KmsgRecord>,
    lost_total: u64,
    /// `Some` when the file is non-blocking and idle waits sleep for this long.
    poll_interval: Option<std::time::Duration>,
}

impl KmsgReader {
    /// Open `path` (normally `/dev/kmsg`), reading the boot id from [`BOOT_ID_PATH`].
    pub fn open(path: &Path, start: StartAt) -> Result<KmsgReader, KmsgError> {
        let boot_id = std::fs::read_to_string(BOOT_ID_PATH).ok().map(|s| s.trim().to_string());
        Self::open_with_boot_id(path, start, boot_id.filter(|id| !id.is_empty()))
    }

    /// Open `path` with a known boot id (tests, or a boot id read elsewhere).
    pub fn open_with_boot_id(
        path: &Path,
        start: StartAt,
        boot_id: Option<String>,
    ) -> Result<KmsgReader, KmsgError> {
        Self::open_inner(path, start, boot_id, None)
    }

    /// Open `path` non-blocking: while no record is waiting, sleep `interval` between reads.
    /// Detection latency is then bounded by `interval` rather than by the kernel's deferred
    /// wake-up of blocked readers.
    pub fn open_polling(
        path: &Path,
        start: StartAt,
        interval: std::time::Duration,
    ) -> Result<KmsgReader, KmsgError> {
        let boot_id = std::fs::read_to_string(BOOT_ID_PATH).ok().map(|s| s.trim().to_string());
        Self::open_inner(path, start, boot_id.filter(|id| !id.is_empty()), Some(interval))
    }

    /// Open `path` non-blocking with no waiting: once every waiting record has been read,
    /// [`KmsgReader::next_record`] returns an error for which [`KmsgError::is_caught_up`] is
    /// true. For one-shot readers (`devheal agent --once`) that replay the boot and stop.
    pub fn open_nonblocking(path: &Path, start: StartAt) -> Result<KmsgReader, KmsgError> {
        let boot_id = std::fs::read_to_string(BOOT_ID_PATH).ok().map(|s| s.trim().to_string());
        let mut reader = Self::open_inner(
            path,
            start,
            boot_id.filter(|id| !id.is_empty()),
            Some(std::time::Duration::ZERO),
        )?;
        reader.poll_interval = None;
        Ok(reader)
    }

    fn open_inner(
        path: &Path,
        start: StartAt,
        boot_id: Option<String>,
        poll_interval: Option<std::time::Duration>,
    ) -> Result<KmsgReader, KmsgError> {
        let mut options = std::fs::OpenOptions::new();
        options.read(true);
        if poll_interval.is_some() {
            use std::os::unix::fs::OpenOptionsExt;
            options.custom_flags(O_NONBLOCK);
        }
        let mut file =
            options.open(path).map_err(|source| KmsgError::Open { path: path.to_path_buf(), source })?;
        if start == StartAt::End {
            file.seek(SeekFrom::End(0))
                .map_err(|source| KmsgError::Open { path: path.to_path_buf(), source })?;
        }
        Ok(KmsgReader {
            path: path.to_path_buf(),
            file,
            buffer: vec![0; RECORD_BUFFER_BYTES],
            boot_id,
            last_seq: None,
            pending: None,
            lost_total: 0,
            poll_interval,
        })
    }

    /// The boot the records belong to.
    pub fn boot_id(&self) -> Option<&str> {
        self.boot_id.as_deref()
    }

    /// Records lost to overwrite so far.
    pub fn lost_total(&self) -> u64 {
        self.lost_total
    }

    /// Block until the next record (or a report of lost records).
    pub fn next_record(&mut self) -> Result<KmsgEvent, KmsgError> {
        if let Some(record) = self.pending.take() {
            return Ok(KmsgEvent::Record(record));
        }
        loop {
            let read = match self.file.read(&mut self.buffer) {
                Ok(0) => return Err(KmsgError::Closed { path: self.path.clone() }),
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    match self.poll_interval {
                        Some(interval) => std::thread::sleep(interval),
                        None => return Err(KmsgError::Read { path: self.path.clone(), source: err }),
                    }
                    continue;
                }
                // EPIPE: records were overwritten; the next read returns the oldest surviving
                // record and the sequence gap tells how many were lost.
                Err(err) if err.kind() == io::ErrorKind::BrokenPipe => continue,
                Err(source) => return Err(KmsgError::Read { path: self.path.clone(), source }),
            };
            let record = parse_kmsg_record(&self.buffer[..read])?;
            let lost = match self.last_seq {
                Some(last) if record.seq > last.saturating_add(1) => record.seq - last - 1,
                _ => 0,
            };
            self.last_seq = Some(record.seq);
            if lost > 0 {
                self.lost_total += lost;
                self.pending = Some(record);
                return Ok(KmsgEvent::Lost { count: lost });
            }
            return Ok(KmsgEvent::Record(record));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_record_with_properties() {
        let record = parse_kmsg_record(
            b"3,1047,123456789,-;NVRM: Xid (PCI:0000:3b:00): 79, pid=1, name=x, y\n SUBSYSTEM=pci\n DEVICE=+pci:0000:3b:00.0\n",
        )
        .unwrap();
        assert_eq!(record.priority, 3);
        assert_eq!(record.seq, 1047);
        assert_eq!(record.since_boot, Duration::from_nanos(123_456_789_000));
        assert_eq!(record.message, "NVRM: Xid (PCI:0000:3b:00): 79, pid=1, name=x, y");
        assert_eq!(
            record.properties,
            vec![("SUBSYSTEM".into(), "pci".into()), ("DEVICE".into(), "+pci:0000:3b:00.0".into())]
        );
    }

    #[test]
    fn rejects_a_record_without_header() {
        let err = parse_kmsg_record(b"hello\n").unwrap_err();
        assert!(err.to_string().contains("hello"), "{err}");
    }

    #[test]
    fn counts_lost_records_from_the_sequence_gap() {
        // A regular file returns its whole content in one read: read one record, then swap in
        // a file holding a later record, as the kernel does after overwriting records.
        let dir = std::env::temp_dir().join(format!("devheal-kmsg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("records");
        std::fs::write(&path, b"6,10,1,-;first\n").unwrap();
        let mut reader = KmsgReader::open_with_boot_id(&path, StartAt::Beginning, Some("b".into())).unwrap();
        assert!(matches!(reader.next_record().unwrap(), KmsgEvent::Record(r) if r.seq == 10));
        std::fs::write(&path, b"6,15,2,-;after a gap\n").unwrap();
        reader.file = File::open(&path).unwrap();
        assert_eq!(reader.next_record().unwrap(), KmsgEvent::Lost { count: 4 });
        assert!(matches!(reader.next_record().unwrap(), KmsgEvent::Record(r) if r.seq == 15));
        assert_eq!(reader.lost_total(), 4);
        assert!(matches!(reader.next_record(), Err(KmsgError::Closed { .. })));
        assert_eq!(reader.boot_id(), Some("b"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn open_names_the_path() {
        let err = KmsgReader::open(Path::new("/nonexistent/kmsg"), StartAt::End).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/kmsg"), "{err}");
    }
}

/// Where the kernel's rate limit on user-space writes to `/dev/kmsg` is set.
pub const DEVKMSG_POLICY: &str = "/proc/sys/kernel/printk_devkmsg";

/// Why user-space writes to `/dev/kmsg` could not be made unlimited.
#[derive(Debug, thiserror::Error)]
pub enum DevkmsgPolicyError {
    #[error("cannot read {DEVKMSG_POLICY}: {source}")]
    Read { source: io::Error },
    #[error("{DEVKMSG_POLICY} is {previous:?} and cannot be set to \"on\": {source}")]
    Set { previous: String, source: io::Error },
}

/// While held, user-space writes to `/dev/kmsg` are not rate limited (`printk_devkmsg` is `on`);
/// dropping it restores the previous setting. For tests and benchmarks that inject kernel-log
/// lines (needs root).
#[derive(Debug)]
pub struct UnlimitedKmsgWrites {
    previous: String,
}

impl UnlimitedKmsgWrites {
    pub fn enable() -> Result<UnlimitedKmsgWrites, DevkmsgPolicyError> {
        let previous = std::fs::read_to_string(DEVKMSG_POLICY)
            .map_err(|source| DevkmsgPolicyError::Read { source })?
            .trim()
            .to_string();
        if previous != "on" {
            std::fs::write(DEVKMSG_POLICY, "on\n")
                .map_err(|source| DevkmsgPolicyError::Set { previous: previous.clone(), source })?;
        }
        Ok(UnlimitedKmsgWrites { previous })
    }
}

impl Drop for UnlimitedKmsgWrites {
    fn drop(&mut self) {
        if self.previous != "on" {
            let _ = std::fs::write(DEVKMSG_POLICY, format!("{}\n", self.previous));
        }
    }
}
