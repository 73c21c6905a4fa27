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
        if clean && self.no_line_too_long(block) {
            self.scan_clean_block(block, &candidates, on_fault);
            return;
        }
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
                self.classify_line(line, on_fault);
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

    /// The common case, a block of text with no over-long line: only candidate lines are
    /// visited; the lines between them are counted in bulk (like `rg -n`), not one by one.
    fn scan_clean_block(
        &mut self,
        block: &[u8],
        candidates: &[usize],
        on_fault: &mut impl FnMut(FaultLine<'_>),
    ) {
        let mut counted_to = 0;
        for &start in candidates {
            self.stats.lines += count_newlines(&block[counted_to..start]);
            let end = memchr::memchr(b'\n', &block[start..]).map_or(block.len(), |at| start + at);
            self.stats.lines += 1;
            self.stats.candidates += 1;
            self.classify_line(&block[start..end], on_fault);
            counted_to = (end + 1).min(block.len());
        }
        let rest = &block[counted_to..];
        self.stats.lines += count_newlines(rest) + u64::from(rest.last().is_some_and(|&b| b != b'\n'));
    }

    /// Parse and classify one candidate line; `self.stats.lines` is its line number.
    fn classify_line(&mut self, line: &[u8], on_fault: &mut impl FnMut(FaultLine<'_>)) {
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
    }

    /// True when no line of `block` can be longer than the limit: every stretch of half the
    /// limit holds a newline, so no two newlines are further apart than the limit. `memchr`
    /// stops at the first newline of each stretch, so this reads a few bytes per 32 KiB.
    fn no_line_too_long(&self, block: &[u8]) -> bool {
        let stretch = (self.max_line_bytes / 2).max(1);
        block.chunks(stretch).all(|chunk| memchr::memchr(b'\n', chunk).is_some())
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

/// Newlines in `bytes`: memchr's vectorised count (its iterator's `count` is specialised), so
/// the bulk of a log is counted, never split into lines.
fn count_newlines(bytes: &[u8]) -> u64 {
    memchr::memchr_iter(b'\n', bytes).count() as u64
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

    #[test]
    fn the_clean_fast_path_counts_like_the_line_by_line_path() {
        // The same input scanned whole (clean fast path) and with a tiny line limit (the
        // line-by-line path): line numbers and counts agree, with and without a final newline.
        for tail in ["", "\n", "\nlast words"] {
            let input = format!("a\n\n{XID}\nb\nc\n{XID}\n\n\nd{tail}");
            let (fast, fast_stats) = scan(input.as_bytes(), MAX_LINE_BYTES);
            let classifier = Classifier::default();
            let mut scanner = LogScanner::new(&classifier);
            let mut slow = Vec::new();
            let mut sink = |f: FaultLine<'_>| slow.push((f.line_number, f.fault.kind.as_str().to_string()));
            // One byte of junk makes the block unclean: the line-by-line path.
            let mut bytes = input.clone().into_bytes();
            bytes.extend_from_slice(b"\n\xff");
            scanner.scan_block(&bytes, &mut sink);
            assert_eq!(fast, slow, "{tail:?}");
            assert_eq!(fast, vec![(3, "nvidia_xid".to_string()), (6, "nvidia_xid".to_string())]);
            let expected_lines = input.matches('\n').count() as u64 + u64::from(!input.ends_with('\n'));
            assert_eq!(fast_stats.lines, expected_lines, "{tail:?}");
            assert_eq!(count_newlines(input.as_bytes()), input.matches('\n').count() as u64);
        }
        let long = "x\n".repeat(40_000);
        assert_eq!(count_newlines(long.as_bytes()), 40_000);
    }
}
