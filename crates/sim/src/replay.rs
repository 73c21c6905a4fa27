//! Trace replay (`devheal sim --trace FILE`): a fault trace read from a file, one fault per
//! record, instead of one drawn by [`FaultTrace::generate`]. The reader produces the same
//! [`FaultTrace`], so every strategy replays it exactly as it replays a generated one.
//!
//! Two formats, chosen by the file's extension (`.csv`; `.jsonl`, `.ndjson`, `.json`) or, for
//! any other name, by its first record (`{` → JSON lines). Fields (docs/simulator.md, "Trace
//! replay"):
//!
//! | field | meaning |
//! |---|---|
//! | `start` | seconds from the scenario's start, or an RFC 3339 time (then the earliest start of the file is the scenario's start); required |
//! | `end` / `duration_s` | when the fault ended, or how long it lasted (at most one; optional, reported but not replayed: the model's repairs decide how long hardware stays broken) |
//! | `node` | a node index (0 …), a model node name (`node-00042`), or any other name (names get node indices in order of first appearance) |
//! | `device` | the GPU index on the node (optional; device-scoped faults without one strike GPU 0) |
//! | `class` | a fault class of the scenario, by its exact name |
//! | `cause` | free text mapped to a class by [`CAUSE_RULES`] (one of `class` and `cause` is required) |
//! | `note` | free text, ignored |
//!
//! Lines that are blank or start with `#` are skipped. A cause that no rule maps is counted in
//! the report (`unknown_causes`) and not replayed, unless the caller names a class to replay
//! such records as ([`ReplayOptions::unknown_as`]). Every error names the file, the line and the
//! field.

use std::collections::{BTreeMap, BTreeSet};

use devheal_core::Time;
use serde::Serialize;

use crate::scenario::{FaultScope, Scenario, secs};
use crate::trace::{FaultTarget, FaultTrace, TraceEvent, TraceKind};

/// Traces compiled into the binary: (name, CSV text). `devheal sim --trace NAME` replays one.
pub const BUNDLED_TRACES: &[(&str, &str)] =
    &[("infinitehbd-54d", include_str!("../traces/infinitehbd-54d.csv"))];

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
    /// `cause`: free text, mapped by [`CAUSE_RULES`].
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

/// Free-text causes → the scenario's fault classes. The cause is lower-cased and split into
/// words (letters and digits); a rule matches when its words appear together, in order. Rules
/// are tried top to bottom and the first match wins, so the specific ones (an Xid number, HBM)
/// come before the generic ones ("gpu"). A rule whose class the scenario lacks is skipped.
pub const CAUSE_RULES: &[(&[&str], &str)] = &[
    (
        &[
            "xid 79",
            "fell off the bus",
            "fallen off the bus",
            "off the bus",
            "gpu lost",
            "gpu device not found",
        ],
        "gpu_fell_off_bus",
    ),
    (&["xid 74", "nvlink", "sxid", "nvswitch"], "gpu_nvlink"),
    (&["xid 119", "xid 120", "gsp", "gpu system processor"], "gpu_gsp"),
    (&["xid 95", "sram", "uncontained"], "gpu_sram"),
    (
        &[
            "xid 48",
            "xid 63",
            "xid 64",
            "xid 94",
            "hbm",
            "hbm3",
            "dbe",
            "double bit",
            "ecc",
            "row remap",
            "row remapper",
            "gpu memory",
        ],
        "gpu_hbm",
    ),
    (&["thermal", "temperature", "overheat", "overheating"], "gpu_thermal"),
    (&["sdc", "silent data corruption", "nan"], "silent_data_corruption"),
    (
        &["xid 13", "xid 31", "xid 43", "illegal memory access", "mmu fault", "cuda error"],
        "software_bug_cuda",
    ),
    (&["nccl", "watchdog", "collective timeout"], "nccl_timeout_unknown"),
    (&["nic", "rnic", "hca", "mlx5", "network adapter"], "nic"),
    (&["link down", "link flap", "cable", "switch", "network", "infiniband", "roce"], "network_switch_cable"),
    (&["maintenance", "drain", "drained"], "host_maintenance"),
    (&["cpu", "mce", "machine check", "system memory", "dimm", "host memory"], "host_cpu_memory"),
    (
        &[
            "ssd",
            "disk",
            "nvme",
            "psu",
            "power supply",
            "power",
            "chassis",
            "fan",
            "motherboard",
            "io board",
            "io expansion",
            "riser",
            "raid",
            "bmc",
        ],
        "host_other",
    ),
    (&["software", "bug", "dependency", "application", "user error", "oom"], "software_bug"),
    (&["gpu", "xid", "faulty gpu"], "gpu_fell_off_bus"),
];

/// The words of a text: lower case, split at anything that is not a letter or a digit.
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase).collect()
}

/// The class (and the rule's pattern) a free-text cause maps to in `scenario`, if any rule whose
/// class the scenario has matches. An exact class name maps to itself.
pub fn map_cause(cause: &str, scenario: &Scenario) -> Option<(u16, &'static str)> {
    let index = |name: &str| scenario.faults.iter().position(|f| f.name == name).map(|i| i as u16);
    if let Some(i) = index(cause.trim()) {
        return Some((i, "class name"));
    }
    let have = words(cause);
    for (patterns, class) in CAUSE_RULES {
        let Some(i) = index(class) else { continue };
        for pattern in *patterns {
            let want: Vec<&str> = pattern.split(' ').collect();
            if have.windows(want.len()).any(|w| w.iter().zip(&want).all(|(a, b)| a == b)) {
                return Some((i, pattern));
            }
        }
    }
    None
}

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

/// Read a trace: its text, its name (for errors and the format), the scenario it is replayed on.
pub fn read_trace(
    text: &str,
    file: &str,
    scenario: &Scenario,
    options: &ReplayOptions,
) -> Result<(FaultTrace, ReplaySummary), TraceError> {
    let format = TraceFormat::detect(file, text);
    let records = parse(text, file, format)?;
    build(&records, file, format, scenario, options)
}

/// A bundled trace by name.
pub fn bundled(name: &str) -> Option<&'static str> {
    BUNDLED_TRACES.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// Parse every record of a file in `format`.
pub fn parse(text: &str, file: &str, format: TraceFormat) -> Result<Vec<TraceRecord>, TraceError> {
    let content = text.lines().enumerate().map(|(i, l)| (i + 1, l)).filter(|(_, l)| {
        let t = l.trim();
        !t.is_empty() && !t.starts_with('#')
    });
    let records = match format {
        TraceFormat::Csv => parse_csv(content, file)?,
        TraceFormat::JsonLines => {
            let mut out = Vec::new();
            for (line, l) in content {
                out.push(parse_json_line(l, line, file)?);
            }
            out
        }
    };
    if records.is_empty() {
        return Err(TraceError::File { file: file.to_string(), problem: "no records".into() });
    }
    Ok(records)
}

/// Split one CSV line into fields: commas separate, double quotes enclose a field that may hold
/// commas, `""` inside quotes is a quote. Fields are trimmed.
fn split_csv(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    let mut was_quoted = false;
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => quoted = false,
                _ => field.push(c),
            }
        } else {
            match c {
                ',' => {
                    fields.push(if was_quoted {
                        std::mem::take(&mut field)
                    } else {
                        field.trim().to_string()
                    });
                    field.clear();
                    was_quoted = false;
                }
                '"' if field.trim().is_empty() => {
                    field.clear();
                    quoted = true;
                    was_quoted = true;
                }
                '"' => return Err("a quote inside an unquoted field".into()),
                _ if was_quoted && !c.is_whitespace() => {
                    return Err("text after a closing quote".into());
                }
                _ => field.push(c),
            }
        }
    }
    if quoted {
        return Err("a quoted field is not closed".into());
    }
    fields.push(if was_quoted { field } else { field.trim().to_string() });
    Ok(fields)
}

fn parse_csv<'a>(
    mut lines: impl Iterator<Item = (usize, &'a str)>,
    file: &str,
) -> Result<Vec<TraceRecord>, TraceError> {
    let Some((header_line, header)) = lines.next() else {
        return Err(TraceError::File { file: file.to_string(), problem: "no header line".into() });
    };
    let line_err = |line: usize, problem: String| TraceError::Line { file: file.to_string(), line, problem };
    let columns = split_csv(header).map_err(|p| line_err(header_line, format!("header: {p}")))?;
    let mut seen = BTreeSet::new();
    for c in &columns {
        if !FIELDS.contains(&c.as_str()) {
            return Err(TraceError::Field {
                file: file.to_string(),
                line: header_line,
                field: c.clone(),
                problem: format!("unknown column (the columns are {})", FIELDS.join(", ")),
            });
        }
        if !seen.insert(c.clone()) {
            return Err(TraceError::Field {
                file: file.to_string(),
                line: header_line,
                field: c.clone(),
                problem: "column given twice".into(),
            });
        }
    }
    let mut out = Vec::new();
    for (line, l) in lines {
        let cells = split_csv(l).map_err(|p| line_err(line, p))?;
        if cells.len() != columns.len() {
            return Err(line_err(
                line,
                format!("{} fields, the header has {} ({})", cells.len(), columns.len(), columns.join(",")),
            ));
        }
        let get = |name: &str| {
            columns.iter().position(|c| c == name).map(|i| cells[i].as_str()).filter(|v| !v.is_empty())
        };
        let raw = Raw {
            start: get("start").map(Value::Text),
            end: get("end").map(Value::Text),
            duration_s: get("duration_s").map(Value::Text),
            node: get("node").map(Value::Text),
            device: get("device").map(Value::Text),
            class: get("class").map(str::to_string),
            cause: get("cause").map(str::to_string),
        };
        out.push(raw.record(line, file)?);
    }
    Ok(out)
}

fn parse_json_line(text: &str, line: usize, file: &str) -> Result<TraceRecord, TraceError> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| TraceError::Line {
        file: file.to_string(),
        line,
        problem: format!("not a JSON object: {e}"),
    })?;
    let Some(object) = value.as_object() else {
        return Err(TraceError::Line { file: file.to_string(), line, problem: "not a JSON object".into() });
    };
    let field_err = |field: &str, problem: &str| TraceError::Field {
        file: file.to_string(),
        line,
        field: field.to_string(),
        problem: problem.to_string(),
    };
    for key in object.keys() {
        if !FIELDS.contains(&key.as_str()) {
            return Err(field_err(key, &format!("unknown key (the keys are {})", FIELDS.join(", "))));
        }
    }
    let scalar = |key: &str| -> Result<Option<Value>, TraceError> {
        match object.get(key) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::Number(n)) => {
                n.as_f64().map(|v| Some(Value::Number(v))).ok_or_else(|| field_err(key, "not a number"))
            }
            Some(serde_json::Value::String(s)) if s.trim().is_empty() => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(Value::Text(s.trim()))),
            Some(_) => Err(field_err(key, "must be a number or a string")),
        }
    };
    let text_of = |key: &str| -> Result<Option<String>, TraceError> {
        match object.get(key) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) if s.trim().is_empty() => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s.trim().to_string())),
            Some(_) => Err(field_err(key, "must be a string")),
        }
    };
    if let Some(note) = object.get("note")
        && !(note.is_string() || note.is_null())
    {
        return Err(field_err("note", "must be a string"));
    }
    let raw = Raw {
        start: scalar("start")?,
        end: scalar("end")?,
        duration_s: scalar("duration_s")?,
        node: scalar("node")?,
        device: scalar("device")?,
        class: text_of("class")?,
        cause: text_of("cause")?,
    };
    raw.record(line, file)
}

/// A field's value before it is checked: JSON gives numbers, CSV only text.
#[derive(Clone, Copy, Debug)]
enum Value<'a> {
    Number(f64),
    Text(&'a str),
}

struct Raw<'a> {
    start: Option<Value<'a>>,
    end: Option<Value<'a>>,
    duration_s: Option<Value<'a>>,
    node: Option<Value<'a>>,
    device: Option<Value<'a>>,
    class: Option<String>,
    cause: Option<String>,
}

impl Raw<'_> {
    fn record(self, line: usize, file: &str) -> Result<TraceRecord, TraceError> {
        let err = |field: &str, problem: String| TraceError::Field {
            file: file.to_string(),
            line,
            field: field.to_string(),
            problem,
        };
        let stamp = |field: &str, v: Value<'_>| -> Result<Stamp, TraceError> {
            let seconds = |s: f64| {
                if s.is_finite() && s >= 0.0 {
                    Ok(Stamp::Offset(s))
                } else {
                    Err(err(field, format!("`{s}` is not a number of seconds ≥ 0")))
                }
            };
            match v {
                Value::Number(n) => seconds(n),
                Value::Text(t) => match t.parse::<f64>() {
                    Ok(n) => seconds(n),
                    Err(_) => rfc3339(t).map(Stamp::Absolute).map_err(|p| {
                        err(
                            field,
                            format!("`{t}` is neither seconds from the start nor an RFC 3339 time ({p})"),
                        )
                    }),
                },
            }
        };
        let start = stamp("start", self.start.ok_or_else(|| err("start", "missing".into()))?)?;
        let end = self.end.map(|v| stamp("end", v)).transpose()?;
        let duration_s = match self.duration_s {
            None => None,
            Some(v) => {
                let d = match v {
                    Value::Number(n) => Some(n),
                    Value::Text(t) => t.parse::<f64>().ok(),
                };
                match d {
                    Some(d) if d.is_finite() && d >= 0.0 => Some(d),
                    _ => return Err(err("duration_s", "must be a number of seconds ≥ 0".into())),
                }
            }
        };
        if end.is_some() && duration_s.is_some() {
            return Err(err("duration_s", "give `end` or `duration_s`, not both".into()));
        }
        let node = match self.node.ok_or_else(|| err("node", "missing".into()))? {
            Value::Number(n) if n >= 0.0 && n.fract() == 0.0 && n <= f64::from(u32::MAX) => {
                NodeRef::Index(n as u32)
            }
            Value::Number(n) => return Err(err("node", format!("`{n}` is not a node index"))),
            Value::Text(t) if t.bytes().all(|b| b.is_ascii_digit()) => {
                NodeRef::Index(t.parse().map_err(|_| err("node", format!("`{t}` is not a node index")))?)
            }
            Value::Text(t) => NodeRef::Name(t.to_string()),
        };
        let device = match self.device {
            None => None,
            Some(Value::Number(n)) if n >= 0.0 && n.fract() == 0.0 && n <= 1e6 => Some(n as u32),
            Some(Value::Text(t)) if t.bytes().all(|b| b.is_ascii_digit()) && t.len() <= 6 => {
                Some(t.parse().map_err(|_| err("device", format!("`{t}` is not a GPU index")))?)
            }
            Some(Value::Number(n)) => return Err(err("device", format!("`{n}` is not a GPU index"))),
            Some(Value::Text(t)) => return Err(err("device", format!("`{t}` is not a GPU index"))),
        };
        let cause = match (self.class, self.cause) {
            (Some(c), None) => Cause::Class(c),
            (None, Some(c)) => Cause::Text(c),
            (Some(_), Some(_)) => return Err(err("class", "give `class` or `cause`, not both".into())),
            (None, None) => return Err(err("cause", "missing: give `class` or `cause`".into())),
        };
        Ok(TraceRecord { line, start, end, duration_s, node, device, cause })
    }
}

/// Seconds since the Unix epoch of an RFC 3339 time: `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`
/// (`t` or a space may stand for `T`, `z` for `Z`).
pub fn rfc3339(text: &str) -> Result<f64, String> {
    let b = text.as_bytes();
    let num = |from: usize, len: usize| -> Result<i64, String> {
        let s = text.get(from..from + len).ok_or("too short")?;
        if s.bytes().all(|c| c.is_ascii_digit()) {
            s.parse::<i64>().map_err(|e| e.to_string())
        } else {
            Err(format!("`{s}` is not a number"))
        }
    };
    let at = |i: usize, c: &[u8]| b.get(i).is_some_and(|x| c.contains(x));
    if b.len() < 20 || !at(4, b"-") || !at(7, b"-") || !at(10, b"Tt ") || !at(13, b":") || !at(16, b":") {
        return Err("expected YYYY-MM-DDTHH:MM:SS and a zone".into());
    }
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return Err("no such date".into());
    }
    if hour > 23 || minute > 59 || second > 60 {
        return Err("no such time of day".into());
    }
    let mut i = 19;
    let mut fraction = 0.0;
    if at(i, b".") {
        let digits = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return Err("a decimal point without digits".into());
        }
        fraction = format!("0.{}", &text[i + 1..i + 1 + digits]).parse::<f64>().map_err(|e| e.to_string())?;
        i += 1 + digits;
    }
    let offset_min = match b.get(i) {
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(sign @ (b'+' | b'-')) if b.len() == i + 6 && at(i + 3, b":") => {
            let (h, m) = (num(i + 1, 2)?, num(i + 4, 2)?);
            if h > 23 || m > 59 {
                return Err("no such zone offset".into());
            }
            let minutes = h * 60 + m;
            if *sign == b'-' { -minutes } else { minutes }
        }
        _ => return Err("expected a zone: Z or ±HH:MM at the end".into()),
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_min * 60;
    Ok(seconds as f64 + fraction)
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar (years from 0).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let mut days = 0;
    for y in 1970..year {
        days += if is_leap(y) { 366 } else { 365 };
    }
    for y in year..1970 {
        days -= if is_leap(y) { 366 } else { 365 };
    }
    for m in 1..month {
        days += days_in_month(year, m);
    }
    days + day - 1
}

/// Turn parsed records into a trace for `scenario`.
pub fn build(
    records: &[TraceRecord],
    file: &str,
    format: TraceFormat,
    scenario: &Scenario,
    options: &ReplayOptions,
) -> Result<(FaultTrace, ReplaySummary), TraceError> {
    let field_err = |line: usize, field: &str, problem: String| TraceError::Field {
        file: file.to_string(),
        line,
        field: field.to_string(),
        problem,
    };
    let unknown_as = match &options.unknown_as {
        None => None,
        Some(name) => match scenario.faults.iter().position(|f| &f.name == name) {
            Some(i) => Some(i as u16),
            None => {
                return Err(TraceError::File {
                    file: file.to_string(),
                    problem: format!(
                        "unknown causes are to be replayed as `{name}`, which is no class of scenario {}",
                        scenario.name
                    ),
                });
            }
        },
    };
    // Every start and end in one kind of time: offsets, or RFC 3339 times measured from the
    // earliest start.
    let absolute = matches!(records[0].start, Stamp::Absolute(_));
    let mut origin = f64::INFINITY;
    for r in records {
        for (field, stamp) in [("start", Some(r.start)), ("end", r.end)] {
            match stamp {
                Some(Stamp::Absolute(_)) if !absolute => {
                    return Err(field_err(
                        r.line,
                        field,
                        "an RFC 3339 time in a file that starts with seconds from the start".into(),
                    ));
                }
                Some(Stamp::Offset(_)) if absolute => {
                    return Err(field_err(
                        r.line,
                        field,
                        "seconds from the start in a file that starts with RFC 3339 times".into(),
                    ));
                }
                _ => {}
            }
        }
        if let Stamp::Absolute(t) = r.start {
            origin = origin.min(t);
        }
    }
    let seconds = |s: Stamp| match s {
        Stamp::Offset(v) => v,
        Stamp::Absolute(t) => t - origin,
    };
    // Node names: model names (`node-00042`) are those nodes; any other name takes the next
    // node index nobody names explicitly, in order of first appearance.
    let total = scenario.total_nodes();
    let mut explicit = BTreeSet::new();
    for r in records {
        match &r.node {
            NodeRef::Index(i) => {
                if *i >= total {
                    return Err(field_err(
                        r.line,
                        "node",
                        format!("node {i} is outside the scenario's {total} nodes (0 … {})", total - 1),
                    ));
                }
                explicit.insert(*i);
            }
            NodeRef::Name(name) => {
                if let Some(i) = crate::strategy::devheal::parse_node(name).filter(|i| *i < total) {
                    explicit.insert(i);
                }
            }
        }
    }
    let mut named: BTreeMap<&str, u32> = BTreeMap::new();
    let mut next = 0u32;
    let gang_nodes: u32 = scenario.training.iter().map(|t| t.nodes).sum();
    let gpn = scenario.cluster.gpus_per_node;
    let end = scenario.duration().as_secs_f64();
    let mut events = Vec::new();
    let mut replayed_by_class = vec![0u64; scenario.faults.len()];
    let mut unknown: BTreeMap<String, u64> = BTreeMap::new();
    let (mut after_end, mut off_gang, mut fault_hours) = (0u64, 0u64, 0.0f64);
    let mut nodes_seen = BTreeSet::new();
    for r in records {
        let start = seconds(r.start);
        let stop = match (r.end, r.duration_s) {
            (Some(e), _) => Some(seconds(e)),
            (None, Some(d)) => Some(start + d),
            (None, None) => None,
        };
        if let Some(stop) = stop {
            if stop < start {
                return Err(field_err(r.line, "end", "before the start".into()));
            }
            fault_hours += (stop - start) / 3600.0;
        }
        let node = match &r.node {
            NodeRef::Index(i) => *i,
            NodeRef::Name(name) => match crate::strategy::devheal::parse_node(name).filter(|i| *i < total) {
                Some(i) => i,
                None => match named.get(name.as_str()) {
                    Some(&i) => i,
                    None => {
                        while explicit.contains(&next) {
                            next += 1;
                        }
                        if next >= total {
                            return Err(field_err(
                                r.line,
                                "node",
                                format!("`{name}` is one name more than the scenario's {total} nodes"),
                            ));
                        }
                        named.insert(name, next);
                        next += 1;
                        next - 1
                    }
                },
            },
        };
        nodes_seen.insert(node);
        if let Some(d) = r.device
            && d >= gpn
        {
            return Err(field_err(
                r.line,
                "device",
                format!("GPU {d} on a node of {gpn} GPUs (0 … {})", gpn - 1),
            ));
        }
        let class = match &r.cause {
            Cause::Class(name) => match scenario.faults.iter().position(|f| &f.name == name) {
                Some(i) => i as u16,
                None => {
                    let names: Vec<&str> = scenario.faults.iter().map(|f| f.name.as_str()).collect();
                    return Err(field_err(
                        r.line,
                        "class",
                        format!(
                            "no fault class `{name}` in scenario {} ({})",
                            scenario.name,
                            names.join(", ")
                        ),
                    ));
                }
            },
            Cause::Text(text) => match map_cause(text, scenario) {
                Some((i, _)) => i,
                None => {
                    *unknown.entry(text.clone()).or_default() += 1;
                    match unknown_as {
                        Some(i) => i,
                        None => continue,
                    }
                }
            },
        };
        if start >= end {
            after_end += 1;
            continue;
        }
        let spec = &scenario.faults[class as usize];
        let target = match spec.scope {
            FaultScope::Device => FaultTarget::Device { node, device: r.device.unwrap_or(0) as u8 },
            FaultScope::Node => FaultTarget::Node { node },
            FaultScope::Workload => {
                // The rank that starts on the node (software faults follow the rank).
                if node >= gang_nodes {
                    off_gang += 1;
                    continue;
                }
                let mut first = 0;
                let mut target = None;
                for (g, t) in scenario.training.iter().enumerate() {
                    if node < first + t.nodes {
                        target = Some(FaultTarget::GangMember { gang: g as u16, member: node - first });
                        break;
                    }
                    first += t.nodes;
                }
                match target {
                    Some(t) => t,
                    None => {
                        off_gang += 1;
                        continue;
                    }
                }
            }
        };
        replayed_by_class[class as usize] += 1;
        events.push(TraceEvent {
            at: Time::ZERO + secs(start),
            kind: TraceKind::Fault {
                class,
                target,
                lemon_excess: false,
                pid: 1000 + r.line as u32,
                lines: Default::default(),
            },
        });
    }
    events.sort_by_key(|e| e.at);
    let summary = ReplaySummary {
        source: file.to_string(),
        format,
        records: records.len() as u64,
        replayed: events.len() as u64,
        replayed_by_class: scenario.faults.iter().map(|f| f.name.clone()).zip(replayed_by_class).collect(),
        unknown_causes: unknown.into_iter().collect(),
        unknown_replayed_as: unknown_as.map(|i| scenario.faults[i as usize].name.clone()),
        after_end,
        workload_off_gang: off_gang,
        nodes: nodes_seen.len() as u64,
        recorded_fault_hours: fault_hours,
    };
    Ok((
        FaultTrace { events, lemons: vec![false; total as usize], noise: Default::default(), seed: 0 },
        summary,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn llama3() -> Scenario {
        Scenario::bundled("llama3-16k").expect("bundled")
    }

    fn read(text: &str, file: &str) -> Result<(FaultTrace, ReplaySummary), TraceError> {
        read_trace(text, file, &llama3(), &ReplayOptions::default())
    }

    fn class_of(scenario: &Scenario, e: &TraceEvent) -> String {
        match e.kind {
            TraceKind::Fault { class, .. } => scenario.faults[class as usize].name.clone(),
            _ => panic!("only faults are replayed"),
        }
    }

    #[test]
    fn csv_and_json_lines_give_the_same_trace() {
        let csv = "# a comment\n\
                   start,end,node,device,cause,note\n\
                   \n\
                   60,120,3,5,\"GPU has fallen off the bus (Xid 79)\",\"a note, with a comma\"\n\
                   3600,,node-00007,,HBM3 double bit error,\n\
                   7200,7300,12,,\"Parameter Plane Cable: Link Down\",\n";
        let jsonl = "{\"start\": 60, \"end\": 120, \"node\": 3, \"device\": 5, \"cause\": \"GPU has fallen off the bus (Xid 79)\"}\n\
                     # a comment\n\
                     {\"start\": \"3600\", \"node\": \"node-00007\", \"cause\": \"HBM3 double bit error\", \"note\": \"x\"}\n\
                     {\"start\": 7200, \"duration_s\": 100, \"node\": \"12\", \"cause\": \"Parameter Plane Cable: Link Down\"}\n";
        let (a, sa) = read(csv, "t.csv").expect("CSV parses");
        let (b, sb) = read(jsonl, "t.jsonl").expect("JSON lines parse");
        assert_eq!(sa.format, TraceFormat::Csv);
        assert_eq!(sb.format, TraceFormat::JsonLines);
        assert_eq!(a.events.len(), 3);
        // The same faults; only the pids (from line numbers) may differ.
        let strip = |t: &FaultTrace| -> Vec<(Time, u16, FaultTarget)> {
            t.events
                .iter()
                .map(|e| match e.kind {
                    TraceKind::Fault { class, target, .. } => (e.at, class, target),
                    _ => unreachable!(),
                })
                .collect()
        };
        assert_eq!(strip(&a), strip(&b));
        let s = llama3();
        assert_eq!(class_of(&s, &a.events[0]), "gpu_fell_off_bus");
        assert_eq!(
            a.events[0].kind,
            TraceKind::Fault {
                class: 0,
                target: FaultTarget::Device { node: 3, device: 5 },
                lemon_excess: false,
                pid: 1004,
                lines: crate::noise::LineDelivery::default(),
            }
        );
        assert_eq!(a.events[0].at, Time::ZERO + secs(60.0));
        assert_eq!(class_of(&s, &a.events[1]), "gpu_hbm");
        assert!(matches!(
            a.events[1].kind,
            TraceKind::Fault { target: FaultTarget::Device { node: 7, device: 0 }, .. }
        ));
        assert_eq!(class_of(&s, &a.events[2]), "network_switch_cable");
        assert!(matches!(a.events[2].kind, TraceKind::Fault { target: FaultTarget::Node { node: 12 }, .. }));
        assert_eq!(sa.records, 3);
        assert_eq!(sa.replayed, 3);
        assert!((sa.recorded_fault_hours - 160.0 / 3600.0).abs() < 1e-9, "{}", sa.recorded_fault_hours);
        assert_eq!(sa.recorded_fault_hours, sb.recorded_fault_hours);
        assert_eq!(a.lemons.len(), s.total_nodes() as usize);
        // Detected by content when the name says nothing.
        assert_eq!(TraceFormat::detect("faults.txt", jsonl), TraceFormat::JsonLines);
        assert_eq!(TraceFormat::detect("faults.txt", csv), TraceFormat::Csv);
        assert_eq!(TraceFormat::detect("x.NDJSON", csv), TraceFormat::JsonLines);
    }

    #[test]
    fn rfc3339_times_count_from_the_earliest_start() {
        let csv = "start,end,node,class\n\
                   2024-03-30T01:00:00Z,2024-03-30T02:00:00+00:00,1,gpu_hbm\n\
                   2024-03-30T02:00:00+02:00,,2,gpu_sram\n\
                   2024-03-30 00:30:00.5z,,3,gpu_gsp\n";
        let (t, _) = read(csv, "t.csv").expect("parses");
        let at: Vec<f64> = t.events.iter().map(|e| e.at.as_secs_f64()).collect();
        // 02:00+02:00 is 00:00Z, the earliest: the origin.
        assert_eq!(at, vec![0.0, 1800.5, 3600.0]);
        assert_eq!(rfc3339("1970-01-01T00:00:00Z"), Ok(0.0));
        assert_eq!(rfc3339("2024-03-30T00:00:00Z"), Ok(1_711_756_800.0));
        assert_eq!(rfc3339("2024-02-29T12:00:00-01:30"), Ok(1_709_208_000.0 + 5400.0));
        assert_eq!(rfc3339("1969-12-31T23:59:59Z"), Ok(-1.0));
        for bad in [
            "2023-02-29T00:00:00Z",
            "2024-13-01T00:00:00Z",
            "2024-01-01T24:00:00Z",
            "2024-01-01T00:00:00",
            "2024-01-01",
            "2024-01-01T00:00:00.Z",
            "2024-01-01T00:00:00+2:00",
        ] {
            assert!(rfc3339(bad).is_err(), "{bad}");
        }
    }

    /// Every bad record is an error naming the file, the line (counting comments and blank
    /// lines) and the field.
    #[test]
    fn bad_records_name_the_file_line_and_field() {
        let header = "# comment\nstart,end,node,device,cause\n";
        let cases: &[(&str, usize, &str, &str)] = &[
            ("x,,1,,HBM\n", 3, "start", "neither seconds"),
            ("-5,,1,,HBM\n", 3, "start", "≥ 0"),
            (",,1,,HBM\n", 3, "start", "missing"),
            ("10,5,1,,HBM\n", 3, "end", "before the start"),
            ("10,20,,,HBM\n", 3, "node", "missing"),
            ("10,20,9999999,,HBM\n", 3, "node", "outside the scenario"),
            ("10,20,1,8,HBM\n", 3, "device", "GPU 8 on a node of 8 GPUs"),
            ("10,20,1,x,HBM\n", 3, "device", "not a GPU index"),
            ("10,20,1,,\n", 3, "cause", "missing"),
            ("1,2,1,,HBM\n10,2024-01-01T00:00:00Z,1,,HBM\n", 4, "end", "RFC 3339 time in a file"),
        ];
        for (body, line, field, words) in cases {
            let err = read(&format!("{header}{body}"), "bad.csv").unwrap_err();
            let text = err.to_string();
            assert!(
                matches!(&err, TraceError::Field { line: l, field: f, .. } if l == line && f == field),
                "{body:?}: {text}"
            );
            assert!(text.starts_with(&format!("trace bad.csv, line {line}, field `{field}`")), "{text}");
            assert!(text.contains(words), "{body:?}: {text}");
        }
        // Line-level problems name the line.
        for (text, line, words) in [
            ("start,node,cause\n1,2\n", 2, "2 fields, the header has 3"),
            ("start,node,cause\n1,2,\"HBM\n", 2, "not closed"),
            ("start,node,cause\n1,2,HB\"M\n", 2, "quote inside"),
            ("{\"start\": 1, \"node\": 2, \"cause\": \"HBM\"}\n[1,2]\n", 2, "not a JSON object"),
            ("{\"start\": 1, \"node\": 2, \"cause\": \"HBM\"}\n{\"start\": 1,\n", 2, "not a JSON object"),
        ] {
            let err = read(text, "bad.trace").unwrap_err();
            assert!(matches!(&err, TraceError::Line { line: l, .. } if *l == line), "{text:?}: {err}");
            assert!(err.to_string().contains(words), "{err}");
        }
        for (text, line, field, words) in [
            ("start,node,cuase\n", 1, "cuase", "unknown column"),
            ("start,node,node,cause\n", 1, "node", "twice"),
            ("{\"start\": 1, \"nod\": 2, \"cause\": \"x\"}\n", 1, "nod", "unknown key"),
            ("{\"start\": [1], \"node\": 2, \"cause\": \"x\"}\n", 1, "start", "number or a string"),
            ("{\"start\": 1, \"node\": 2, \"cause\": 7}\n", 1, "cause", "must be a string"),
            ("{\"start\": 1, \"node\": 2.5, \"cause\": \"x\"}\n", 1, "node", "not a node index"),
            (
                "{\"start\": 1, \"node\": 2, \"class\": \"gpu_hbm\", \"cause\": \"x\"}\n",
                1,
                "class",
                "not both",
            ),
            (
                "{\"start\": 1, \"end\": 3, \"duration_s\": 2, \"node\": 2, \"cause\": \"x\"}\n",
                1,
                "duration_s",
                "not both",
            ),
            ("{\"start\": 1, \"node\": 2, \"class\": \"gpu_hmb\"}\n", 1, "class", "no fault class `gpu_hmb`"),
        ] {
            let err = read(text, "bad.trace").unwrap_err();
            assert!(
                matches!(&err, TraceError::Field { line: l, field: f, .. } if *l == line && f == field),
                "{text:?}: {err}"
            );
            assert!(err.to_string().contains(words), "{err}");
        }
        assert!(read("# only a comment\n", "empty.csv").unwrap_err().to_string().contains("no header"));
        assert!(read("start,node,cause\n", "empty.csv").unwrap_err().to_string().contains("no records"));
    }

    /// The documented table: each cause text and the llama3-16k class it maps to.
    #[test]
    fn causes_map_to_classes_by_the_documented_table() {
        let s = llama3();
        let cases = [
            ("GPU has fallen off the bus", "gpu_fell_off_bus"),
            ("Xid 79", "gpu_fell_off_bus"),
            ("NVRM: Xid (PCI:0000:3b:00): 79, pid=1", "gpu_fell_off_bus"),
            ("GPU: GPU Lost", "gpu_fell_off_bus"),
            ("Faulty GPU", "gpu_fell_off_bus"),
            ("GPU: GPU xid Error", "gpu_fell_off_bus"),
            ("xid 74 NVLink error", "gpu_nvlink"),
            ("NVSwitch SXid 20034", "gpu_nvlink"),
            ("GPU HBM3 Memory", "gpu_hbm"),
            ("GPU: GPU DBE(Double Bit ECC) > Threshold", "gpu_hbm"),
            ("Xid 48", "gpu_hbm"),
            ("GPU SRAM Memory", "gpu_sram"),
            ("Xid 95 uncontained", "gpu_sram"),
            ("GPU System Processor", "gpu_gsp"),
            ("Xid 119 GSP timeout", "gpu_gsp"),
            ("GPU Thermal Interface + Sensor", "gpu_thermal"),
            ("GPU: GPU Temperature High", "gpu_thermal"),
            ("Silent Data Corruption", "silent_data_corruption"),
            ("loss is NaN", "silent_data_corruption"),
            ("Xid 31 illegal memory access", "software_bug_cuda"),
            ("NCCL Watchdog Timeouts", "nccl_timeout_unknown"),
            ("NIC: NIC Lost", "nic"),
            ("mlx5 PCIe fatal", "nic"),
            ("Network Switch/Cable", "network_switch_cable"),
            ("Parameter Plane Cable: Link Down", "network_switch_cable"),
            ("Host Maintenance", "host_maintenance"),
            ("CPU", "host_cpu_memory"),
            ("System Memory", "host_cpu_memory"),
            ("Machine Check Exception", "host_cpu_memory"),
            ("SSD", "host_other"),
            ("Power Supply: Power Supply Failure detected", "host_other"),
            ("Fan: Speed Critical (Sensor)", "host_other"),
            ("Server Chassis", "host_other"),
            ("IO Expansion Board", "host_other"),
            ("Software Bug", "software_bug"),
            ("Dependency", "software_bug"),
            ("gpu_nvlink", "gpu_nvlink"),
        ];
        for (cause, class) in cases {
            let got = map_cause(cause, &s).map(|(i, _)| s.faults[i as usize].name.as_str());
            assert_eq!(got, Some(class), "{cause:?}");
        }
        // Words, not substrings: "technician" holds "nic", "fanatic" holds "fan".
        for cause in ["Unknown Error", "technician visit", "fanatic", "Stress Test Failure", ""] {
            assert_eq!(map_cause(cause, &s), None, "{cause:?}");
        }
        // Every rule names a class of the default scenario.
        for (_, class) in CAUSE_RULES {
            assert!(s.faults.iter().any(|f| f.name == *class), "{class}");
        }
        // A rule whose class the scenario lacks is skipped: the next rule that matches wins.
        let mut fewer = s.clone();
        fewer.faults.retain(|f| f.name != "gpu_hbm");
        let got = map_cause("GPU HBM3 Memory", &fewer).map(|(i, _)| fewer.faults[i as usize].name.clone());
        assert_eq!(got.as_deref(), Some("gpu_fell_off_bus"), "falls through to the generic GPU rule");
    }

    #[test]
    fn unknown_causes_are_counted_and_replayed_only_when_asked() {
        let csv =
            "start,node,cause\n10,1,Unknown Error\n20,2,Unknown Error\n30,3,Stress Test Failure\n40,4,HBM\n";
        let (t, s) = read(csv, "u.csv").expect("parses");
        assert_eq!(t.events.len(), 1);
        assert_eq!((s.records, s.replayed), (4, 1));
        assert_eq!(
            s.unknown_causes,
            vec![("Stress Test Failure".to_string(), 1), ("Unknown Error".to_string(), 2)]
        );
        assert!(s.lines().contains("3 with an unknown cause (not replayed)"), "{}", s.lines());
        assert!(s.lines().contains("Unknown Error ×2"), "{}", s.lines());
        let options = ReplayOptions { unknown_as: Some("nccl_timeout_unknown".into()) };
        let (t, s) = read_trace(csv, "u.csv", &llama3(), &options).expect("parses");
        assert_eq!(t.events.len(), 4);
        assert_eq!(s.unknown_replayed_as.as_deref(), Some("nccl_timeout_unknown"));
        assert_eq!(s.unknown_causes.iter().map(|(_, n)| n).sum::<u64>(), 3, "still counted");
        // A workload-scoped class lands on the rank that starts on the node.
        assert!(matches!(
            t.events[0].kind,
            TraceKind::Fault { target: FaultTarget::GangMember { gang: 0, member: 1 }, .. }
        ));
        let options = ReplayOptions { unknown_as: Some("no_such_class".into()) };
        let err = read_trace(csv, "u.csv", &llama3(), &options).unwrap_err().to_string();
        assert!(err.contains("no_such_class"), "{err}");
    }

    #[test]
    fn names_take_free_nodes_in_order_of_first_appearance() {
        let csv =
            "start,node,class\n1,b,gpu_hbm\n2,0,gpu_hbm\n3,a,gpu_hbm\n4,b,gpu_hbm\n5,node-00001,gpu_hbm\n";
        let (t, s) = read(csv, "n.csv").expect("parses");
        let nodes: Vec<u32> = t
            .events
            .iter()
            .map(|e| match e.kind {
                TraceKind::Fault { target: FaultTarget::Device { node, .. }, .. } => node,
                _ => unreachable!(),
            })
            .collect();
        // 0 and node-00001 are named explicitly, so b → 2, a → 3.
        assert_eq!(nodes, vec![2, 0, 3, 2, 1]);
        assert_eq!(s.nodes, 4);
        // Records after the scenario's end are counted, not replayed; so are software faults on
        // nodes no gang starts on (the spares and the inference pool).
        let csv = "start,node,class\n4665600,1,gpu_hbm\n10,2100,software_bug\n";
        let (t, s) = read(csv, "late.csv").expect("parses");
        assert!(t.events.is_empty());
        assert_eq!((s.after_end, s.workload_off_gang), (1, 1));
    }

    #[test]
    fn the_bundled_trace_reads_on_the_default_scenario() {
        let text = bundled("infinitehbd-54d").expect("bundled");
        let (t, s) = read(text, "bundled:infinitehbd-54d.csv").expect("parses");
        assert_eq!(s.records, 151);
        assert_eq!(s.after_end, 0);
        let unknown: u64 = s.unknown_causes.iter().map(|(_, n)| n).sum();
        assert_eq!(s.replayed + unknown, s.records);
        assert_eq!(t.events.len() as u64, s.replayed);
        assert!(t.events.windows(2).all(|w| w[0].at <= w[1].at));
        let by: BTreeMap<&str, u64> = s.replayed_by_class.iter().map(|(c, n)| (c.as_str(), *n)).collect();
        assert_eq!(by["network_switch_cable"], 16);
        assert_eq!(by["host_other"], 18);
        assert_eq!(by["gpu_hbm"], 5);
        assert_eq!(by["nic"], 6);
    }

    proptest::proptest! {
        /// What the fuzz target (`fuzz/fuzz_targets/sim_trace.rs`) checks, on generated text in
        /// CI: the reader refuses or accepts, never panics, and accepts only ordered traces.
        #[test]
        fn the_reader_never_panics_on_arbitrary_text(
            pieces in proptest::collection::vec(
                proptest::sample::select(vec![
                    "start,end,node,device,cause", "start,node,class", "\n", ",", "\"", "{", "}", ":",
                    "\"start\"", "\"node\"", "\"cause\"", "1", "-1", "1e308", "NaN", "4294967296",
                    "2024-02-29T23:59:60+23:59", "2024-01-01T00:00:00Z", "node-99999", "node-1", "gpu_hbm",
                    "Xid 79", "Unknown", "# x", " ", "\u{e9}", "7", "8", "0.5",
                ]),
                0..40,
            ),
            noise in ".{0,40}",
        ) {
            let text = pieces.concat() + &noise;
            let scenario = llama3();
            for format in [TraceFormat::Csv, TraceFormat::JsonLines] {
                let Ok(records) = parse(&text, "prop", format) else { continue };
                for unknown_as in [None, Some("nccl_timeout_unknown".to_string())] {
                    if let Ok((trace, summary)) =
                        build(&records, "prop", format, &scenario, &ReplayOptions { unknown_as })
                    {
                        proptest::prop_assert!(trace.events.windows(2).all(|w| w[0].at <= w[1].at));
                        proptest::prop_assert_eq!(trace.events.len() as u64, summary.replayed);
                        proptest::prop_assert!(summary.replayed <= summary.records);
                    }
                }
            }
        }
    }
}
