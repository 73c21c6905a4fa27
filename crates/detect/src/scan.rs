//! The whole-log fast path behind `devheal classify-log`: reads big blocks, finds candidate
//! lines with the classifier's literal prefilter over the whole block (ripgrep style), and
//! parses and classifies only those. Every line is still counted, and lines that are not text
//! (invalid UTF-8, NUL bytes) or are too long are skipped and counted.

use std::io::{self, Read};

use crate::classify::{Classifier, DeviceFault};
use crate::line::{LineError, LineFormat, LogLine, MAX_LINE_BYTES, parse_line};

/// Size of the blocks read at once.
const BLOCK_BYTES: usize = 1 << 20;

/// What a scan saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScanStats {
    pub lines: u64,
    pub bytes: u64,
    /// Lines the prefilter passed to the classifier.
    pub candidates: u64,
    /// Lines classified as device faults.
    pub faults: u64,
    pub skipped_invalid_utf8: u64,
    pub skipped_binary: u64,
    pub skipped_too_long: u64,
}

impl ScanStats {
    pub fn skipped(&self) -> u64 {
        self.skipped_invalid_utf8 + self.skipped_binary + self.skipped_too_long
    }
}

/// One device-fault line found by a scan.
#[derive(Debug)]
pub struct FaultLine<'a> {
    /// 1-based line number.
    pub line_number: u64,
    pub line: LogLine<'a>,
    pub fault: DeviceFault,
    /// The boot named by the last `journalctl` `-- Boot <id> --` separator before this line.
    pub boot_id: Option<&'a str>,
}

/// Scans a log stream for device-fault lines.
#[derive(Debug)]
pub struct LogScanner<'c> {
    classifier: &'c Classifier,
    max_line_bytes: usize,
    stats: ScanStats,
    boot_id: Option<String>,
}

impl<'c> LogScanner<'c> {
    pub fn new(classifier: &'c Classifier) -> Self {
        LogScanner { classifier, max_line_bytes: MAX_LINE_BYTES, stats: ScanStats::default(), boot_id: None }
    }

    /// Lines longer than this are skipped (default [`MAX_LINE_BYTES`]).
    pub fn with_max_line_bytes(mut self, max: usize) -> Self {
        self.max_line_bytes = max.clamp(1, MAX_LINE_BYTES);
        self
    }

    pub fn stats(&self) -> ScanStats {
        self.stats
    }

    /// Scan everything `reader` yields; `on_fault` gets each device-fault line in order.
    pub fn scan<R: Read>(
        &mut self,
        mut reader: R,
        mut on_fault: impl FnMut(FaultLine<'_>),
    ) -> io::Result<()> {
        let mut buffer = vec![0_u8; BLOCK_BYTES];
        let mut filled = 0;
        // Inside a line that is already known to be too long: drop bytes until its newline.
        let mut discarding = false;
        loop {
            let read = match reader.read(&mut buffer[filled..]) {
                Ok(0) => break,
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(err),
            };
            self.stats.bytes += read as u64;
            let mut start = 0;
            if discarding {
                match memchr::memchr(b'\n', &buffer[filled..filled + read]) {
                    Some(at) => {
                        discarding = false;
                        start = filled + at + 1;
                    }
                    None => {
                        filled = 0;
                        continue;
                    }
                }
            }
            let end = filled + read;
            match memchr::memrchr(b'\n', &buffer[start..end]) {
                Some(last_newline) => {
                    let complete = start + last_newline + 1;
                    self.scan_block(&buffer[start..complete], &mut on_fault);
                    buffer.copy_within(complete..end, 0);
                    filled = end - complete;
                }
                None => {
                    buffer.copy_within(start..end, 0);
                    filled = end - start;
                }
            }
            if filled > self.max_line_bytes {
                // The partial line is already too long: count it now and drop the rest of it.
                self.stats.lines += 1;
                self.stats.skipped_too_long += 1;
                filled = 0;
                discarding = true;
            }
        }
        if filled > 0 {
            self.scan_block(&buffer[..filled], &mut on_fault);
        }
        Ok(())
    }

    /// Scan a block of whole lines (the last may lack its newline).
    pub fn scan_block(&mut self, block: &[u8], on_fault: &mut impl FnMut(FaultLine<'_>)) {
        let clean = memchr::memchr(0, block).is_none() && std::str::from_utf8(block).is_ok();
        let candidates = self.candidate_line_starts(block);
        let mut next_candidate = candidates.iter().copied().peekable();
        let mut line_start = 0;
        let mut newlines = memchr::memchr_iter(b'\n', block);
        loop {
            let line_end = match newlines.next() {
                Some(at) => at,
                None if line_start < block.len() => block.len(),
                None => break,
            };
            self.stats.lines += 1;
            let line = &block[line_start..line_end];
            let is_candidate = next_candidate.peek() == Some(&line_start);
            if is_candidate {
                next_candidate.next();
            }
            if line.len() > self.max_line_bytes {
                self.stats.skipped_too_long += 1;
            } else if is_candidate {
                self.stats.candidates += 1;
                match parse_line(line) {
                    Ok(parsed) if parsed.format == LineFormat::JournalBoot => {
                        self.boot_id = Some(parsed.message.to_string());
                    }
                    Ok(parsed) => {
                        if let Some(fault) = self.classifier.classify(parsed.message) {
                            self.stats.faults += 1;
                            on_fault(FaultLine {
                                line_number: self.stats.lines,
                                line: parsed,
                                fault,
                                boot_id: self.boot_id.as_deref(),
                            });
                        }
                    }
                    Err(err) => self.count_error(&err),
                }
            } else if !clean {
                if memchr::memchr(0, line).is_some() {
                    self.stats.skipped_binary += 1;
                } else if std::str::from_utf8(line).is_err() {
                    self.stats.skipped_invalid_utf8 += 1;
                }
            }
            line_start = line_end + 1;
            if line_end == block.len() {
                break;
            }
        }
    }

    fn count_error(&mut self, err: &LineError) {
        match err {
            LineError::TooLong { .. } => self.stats.skipped_too_long += 1,
            LineError::Binary { .. } => self.stats.skipped_binary += 1,
            LineError::InvalidUtf8 { .. } => self.stats.skipped_invalid_utf8 += 1,
        }
    }

    /// Start offsets of the lines that contain a prefilter literal, in order.
    fn candidate_line_starts(&self, block: &[u8]) -> Vec<usize> {
        let mut starts = Vec::new();
        let mut from = 0;
        while from < block.len() {
            let Some(hit) = self.classifier.next_candidate(&block[from..]) else { break };
            let hit = from + hit;
            let start = memchr::memrchr(b'\n', &block[..hit]).map_or(0, |at| at + 1);
            starts.push(start);
            from = memchr::memchr(b'\n', &block[hit..]).map_or(block.len(), |at| hit + at + 1);
        }
        starts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(input: &[u8], max: usize) -> (Vec<(u64, String)>, ScanStats) {
        let classifier = Classifier::default();
        let mut scanner = LogScanner::new(&classifier).with_max_line_bytes(max);
        let mut found = Vec::new();
        scanner.scan(input, |f| found.push((f.line_number, f.fault.kind.as_str().to_string()))).unwrap();
        (found, scanner.stats())
    }

    const XID: &str = "[ 5.0] NVRM: Xid (PCI:0000:3b:00): 79, pid=1, name=x, GPU has fallen off the bus.";

    #[test]
    fn finds_faults_with_line_numbers_and_counts_every_line() {
        let input = format!("usb 1-1: new device\n{XID}\next4: mounted\n{XID}");
        let (found, stats) = scan(input.as_bytes(), MAX_LINE_BYTES);
        assert_eq!(found, vec![(2, "nvidia_xid".to_string()), (4, "nvidia_xid".to_string())]);
        assert_eq!(stats.lines, 4);
        assert_eq!(stats.faults, 2);
        assert_eq!(stats.skipped(), 0);
    }

    #[test]
    fn skips_and_counts_bad_lines() {
        let mut input = Vec::new();
        input.extend_from_slice(b"ok line\n");
        input.extend_from_slice(b"bad \xff\xfe utf8\n");
        input.extend_from_slice(b"bin\0ary\n");
        input.extend_from_slice(b"NVRM: Xid (PCI:0000:3b:00): 79, \xff\n");
        input.extend_from_slice(&vec![b'a'; 300]);
        input.push(b'\n');
        input.extend_from_slice(XID.as_bytes());
        input.push(b'\n');
        let (found, stats) = scan(&input, 200);
        assert_eq!(found, vec![(6, "nvidia_xid".to_string())]);
        assert_eq!(stats.lines, 6);
        assert_eq!(stats.skipped_invalid_utf8, 2);
        assert_eq!(stats.skipped_binary, 1);
        assert_eq!(stats.skipped_too_long, 1);
    }

    #[test]
    fn megabyte_lines_across_blocks_are_skipped_without_losing_line_numbers() {
        let mut input = Vec::new();
        input.extend_from_slice(&vec![b'x'; 3 * BLOCK_BYTES + 17]);
        input.push(b'\n');
        input.extend_from_slice(XID.as_bytes());
        input.extend_from_slice(b"\ntrailing");
        let (found, stats) = scan(&input, MAX_LINE_BYTES);
        assert_eq!(found, vec![(2, "nvidia_xid".to_string())]);
        assert_eq!(stats.lines, 3);
        assert_eq!(stats.skipped_too_long, 1);
        assert_eq!(stats.bytes, input.len() as u64);
    }

    #[test]
    fn journal_boot_separators_name_the_boot() {
        let input = format!("{XID}\n-- Boot 0f6ec3d4a1b84b1c9d6f0e7a9b1c2d3e --\n{XID}\n");
        let classifier = Classifier::default();
        let mut scanner = LogScanner::new(&classifier);
        let mut boots = Vec::new();
        scanner.scan(input.as_bytes(), |f| boots.push(f.boot_id.map(str::to_string))).unwrap();
        assert_eq!(boots, vec![None, Some("0f6ec3d4a1b84b1c9d6f0e7a9b1c2d3e".to_string())]);
    }

    #[test]
    fn lines_split_across_reads_are_whole() {
        // A reader that returns one byte at a time.
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let Some((first, rest)) = self.0.split_first() else { return Ok(0) };
                buf[0] = *first;
                self.0 = rest;
                Ok(1)
            }
        }
        let input = format!("noise\n{XID}\n{XID}\n");
        let classifier = Classifier::default();
        let mut scanner = LogScanner::new(&classifier);
        let mut lines = Vec::new();
        scanner.scan(Trickle(input.as_bytes()), |f| lines.push(f.line_number)).unwrap();
        assert_eq!(lines, vec![2, 3]);
        assert_eq!(scanner.stats().lines, 3);
    }
}
