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
//!
//! The module is split by responsibility: `record` (the record, the options and the summary
//! types), `causes` (free-text causes → fault classes), `parse` (CSV and JSON lines, RFC 3339
//! times), `build` (records → a [`FaultTrace`] for a scenario). `parse` and `causes` import only
//! `record`, `build` imports `record` and `causes`, none imports this file; it declares them,
//! re-exports their public items and reads a trace with them.

mod build;
mod causes;
mod parse;
mod record;
#[cfg(test)]
mod tests;

pub use build::build;
pub use causes::{CAUSE_RULES, map_cause};
pub use parse::{parse, rfc3339};
pub use record::{
    BUNDLED_TRACES, Cause, FIELDS, NodeRef, ReplayOptions, ReplaySummary, Stamp, TraceError, TraceFormat,
    TraceRecord,
};

use crate::scenario::Scenario;
use crate::trace::FaultTrace;

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
