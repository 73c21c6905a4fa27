//! What a trace file holds once read (records), how to replay it (options) and what the replay
//! did (the summary), and the errors that name the file, line and field.

use serde::Serialize;

/// Traces compiled into the binary: (name, CSV text). `devheal sim --trace NAME` replays one.
pub const BUNDLED_TRACES: &[(&str, &str)] =
    &[("infinitehbd-54d", include_str!("../../traces/infinitehbd-54d.csv"))];

/// Why a trace file could not be replayed. Every variant names the file; record errors name the
/// line (from 1) and the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TraceError {
    #[error("trace {file}, line {line}, field `{field}`: {problem}")]
    Field { file: String, line: usize, field: String, problem: String },
    #[error("trace {file}, line {line}: {problem}")]
    Line { file: String, line: usize, problem: String },
    #[error("trace {file}: {problem}")]
    File { file: String, problem: String },
}

/// The two file formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TraceFormat {
    Csv,
    JsonLines,
}

impl TraceFormat {
    /// The format a file name says (`.csv`, `.jsonl`, `.ndjson`, `.json`), else the format its
    /// first record has (`{` starts a JSON object).
    pub fn detect(file: &str, text: &str) -> TraceFormat {
        let lower = file.to_ascii_lowercase();
        if lower.ends_with(".csv") {
            return TraceFormat::Csv;
        }
        if [".jsonl", ".ndjson", ".json"].iter().any(|e| lower.ends_with(e)) {
            return TraceFormat::JsonLines;
        }
        let first = text.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with('#'));
        if first.is_some_and(|l| l.starts_with('{')) { TraceFormat::JsonLines } else { TraceFormat::Csv }
    }
}

/// When a record's fault started or ended.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Stamp {
    /// Seconds from the scenario's start.
    Offset(f64),
    /// An RFC 3339 time, as seconds since the Unix epoch.
    Absolute(f64),
}

/// A node as a record names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeRef {
    Index(u32),
    Name(String),
}

/// What a record says caused the fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cause {
    /// `class`: a scenario class name, used as is.
    Class(String),
    /// `cause`: free text, mapped by [`CAUSE_RULES`](super::CAUSE_RULES).
    Text(String),
}

/// One parsed record.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceRecord {
    /// Line in the file, from 1.
    pub line: usize,
    pub start: Stamp,
    pub end: Option<Stamp>,
    pub duration_s: Option<f64>,
    pub node: NodeRef,
    pub device: Option<u32>,
    pub cause: Cause,
}

/// The columns (CSV) or keys (JSON) a record may have.
pub const FIELDS: &[&str] = &["start", "end", "duration_s", "node", "device", "class", "cause", "note"];

/// How to replay what the mapping does not know.
#[derive(Clone, Debug, Default)]
pub struct ReplayOptions {
    /// Replay records whose cause maps to no class as this scenario class; `None` (the default)
    /// counts them in the report and leaves them out.
    pub unknown_as: Option<String>,
}

/// What the replay read and what it did with it (in the report as `replay`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReplaySummary {
    /// The file name, or `bundled:NAME`.
    pub source: String,
    pub format: TraceFormat,
    /// Records read.
    pub records: u64,
    /// Records that became faults in the replayed trace.
    pub replayed: u64,
    /// Replayed records by scenario class, in the scenario's order.
    pub replayed_by_class: Vec<(String, u64)>,
    /// Causes no rule maps, with their record counts (replayed only with `unknown_as`).
    pub unknown_causes: Vec<(String, u64)>,
    /// The class unknown causes were replayed as, if any.
    pub unknown_replayed_as: Option<String>,
    /// Records that start at or after the scenario's end (not replayed).
    pub after_end: u64,
    /// Workload-scoped (software) records on a node that no training gang starts on: there is no
    /// rank there to fail (not replayed).
    pub workload_off_gang: u64,
    /// Distinct nodes the records name.
    pub nodes: u64,
    /// Sum of the recorded fault durations (records with an end or a duration), in hours.
    pub recorded_fault_hours: f64,
}

impl ReplaySummary {
    /// Two lines for the table.
    pub fn lines(&self) -> String {
        let unknown: u64 = self.unknown_causes.iter().map(|(_, n)| n).sum();
        let mut out = format!(
            "trace {} ({}): {} records on {} nodes, {} replayed as faults; {} with an unknown cause{}; {} after the scenario's end; {} software records off the gangs.",
            self.source,
            match self.format {
                TraceFormat::Csv => "CSV",
                TraceFormat::JsonLines => "JSON lines",
            },
            self.records,
            self.nodes,
            self.replayed,
            unknown,
            match &self.unknown_replayed_as {
                Some(class) => format!(" (replayed as {class})"),
                None => " (not replayed)".to_string(),
            },
            self.after_end,
            self.workload_off_gang,
        );
        if !self.unknown_causes.is_empty() {
            let list: Vec<String> = self.unknown_causes.iter().map(|(c, n)| format!("{c} ×{n}")).collect();
            out.push_str(&format!("\nunknown causes: {}.", list.join("; ")));
        }
        out
    }
}
