//! A parser for the Prometheus text exposition format (0.0.4) and OpenMetrics 1.0 text, and the
//! reading of a workload's step metric from one scrape.
//!
//! A training pod names a metric in the annotation `devheal.io/progress-metric`; the node agent
//! scrapes the pod and calls [`parse`] then [`step_reading`] to learn how many steps it has done
//! and, when the metric is a histogram or summary of step seconds, how long they took.
//!
//! Written from the format descriptions (no other parser's code):
//! - <https://prometheus.io/docs/instrumenting/exposition_formats/>
//! - <https://prometheus.io/docs/specs/om/open_metrics_spec/>
//!
//! What is accepted, and where this is more lenient or stricter than those texts:
//! - Lines end in `\n` or `\r\n`; blank lines are skipped; tokens are separated by blanks or tabs.
//! - `# HELP`, `# TYPE` and `# UNIT` lines name a metric (checked); other `#` lines are comments.
//!   `# TYPE` takes the 0.0.4 types and the OpenMetrics ones (`untyped` and `unknown` both give
//!   [`MetricType::Unknown`]). Two `# TYPE` lines that disagree for one name are an error.
//! - Metric names are `[a-zA-Z_:][a-zA-Z0-9_:]*`, label names `[a-zA-Z_][a-zA-Z0-9_]*`; either
//!   may instead be quoted (the UTF-8 syntax: `{"my.metric", "a.b"="c"}`).
//! - Label values unescape `\\`, `\"` and `\n`; any other backslash pair is kept as written (as
//!   the Prometheus server does). A trailing comma in a label set is accepted; a label named
//!   twice in one set is an error.
//! - Values: decimal floats with exponents, `NaN`, `+Inf`, `-Inf` (any case, as Go's
//!   `ParseFloat`, which the format refers to, accepts; hexadecimal floats are not accepted).
//! - Timestamps: an integer is milliseconds in 0.0.4 text and seconds in OpenMetrics text (a
//!   text whose last line is `# EOF`); a number with a fraction or exponent is seconds in either.
//!   All are stored as milliseconds.
//! - An OpenMetrics exemplar (` # {labels} value [timestamp]` after the sample) is skipped.
//! - `# EOF` ends the text; anything but blank lines after it is an error.
//! - OpenMetrics `_created`, `_gcount`, `_info` … samples are plain samples; no family grouping
//!   or histogram consistency is checked.
//! - Limits: the whole text at most [`MAX_TEXT_BYTES`], one line at most [`MAX_LINE_BYTES`].

use std::collections::BTreeMap;

/// The largest exposition [`parse`] accepts, in bytes.
pub const MAX_TEXT_BYTES: usize = 16 * 1024 * 1024;

/// The longest line [`parse`] accepts, in bytes (without its line ending).
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// What devheal needs a step metric to be; said in every [`step_reading`] error.
const NEEDS: &str = "a histogram or summary of step seconds, or a counter of steps";

/// The type a `# TYPE` line declares for a metric family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricType {
    Counter,
    Gauge,
    Histogram,
    GaugeHistogram,
    Summary,
    Info,
    StateSet,
    Unknown,
}

impl MetricType {
    /// The type named on a `# TYPE` line, in either format.
    fn from_keyword(word: &str) -> Option<MetricType> {
        Some(match word {
            "counter" => MetricType::Counter,
            "gauge" => MetricType::Gauge,
            "histogram" => MetricType::Histogram,
            "gaugehistogram" => MetricType::GaugeHistogram,
            "summary" => MetricType::Summary,
            "info" => MetricType::Info,
            "stateset" => MetricType::StateSet,
            "untyped" | "unknown" => MetricType::Unknown,
            _ => return None,
        })
    }

    /// The lower-case word for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
            MetricType::Histogram => "histogram",
            MetricType::GaugeHistogram => "gaugehistogram",
            MetricType::Summary => "summary",
            MetricType::Info => "info",
            MetricType::StateSet => "stateset",
            MetricType::Unknown => "untyped",
        }
    }
}

impl std::fmt::Display for MetricType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One sample line.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
    pub timestamp_ms: Option<i64>,
}

/// A parsed exposition: the declared types by the name on their `# TYPE` line, and every sample
/// in text order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Exposition {
    pub types: BTreeMap<String, MetricType>,
    pub samples: Vec<Sample>,
}

/// Why a text could not be parsed, or a step metric not read from it. Every parse error but
/// [`PromTextError::TooLarge`] names the 1-based line.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PromTextError {
    #[error("the exposition is {size} bytes, over the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("line {line}: {len} bytes long, over the limit of {limit} bytes")]
    LineTooLong { line: usize, len: usize, limit: usize },
    #[error("line {line}: sample {name:?} has no value")]
    MissingValue { line: usize, name: String },
    #[error("line {line}: label set is not closed with '}}'")]
    UnterminatedLabelSet { line: usize },
    #[error("line {line}: quoted string is not closed with '\"'")]
    UnterminatedQuote { line: usize },
    #[error("line {line}: invalid metric name {name:?}")]
    InvalidMetricName { line: usize, name: String },
    #[error("line {line}: invalid label name {name:?}")]
    InvalidLabelName { line: usize, name: String },
    #[error("line {line}: value {value:?} is not a number")]
    InvalidValue { line: usize, value: String },
    #[error("line {line}: timestamp {value:?} is not a number of milliseconds or seconds in range")]
    InvalidTimestamp { line: usize, value: String },
    #[error(
        "line {line}: unknown metric type {word:?} (want counter, gauge, histogram, summary, untyped, …)"
    )]
    InvalidType { line: usize, word: String },
    #[error("line {line}: {what}")]
    Malformed { line: usize, what: String },
    #[error("metric {metric:?} is not in the exposition; devheal needs {NEEDS}")]
    MetricAbsent { metric: String },
    #[error("metric {metric:?} is a {found}; devheal needs {NEEDS}")]
    WrongType { metric: String, found: MetricType },
    #[error("metric {metric:?} is a {found} without {missing:?} samples; devheal needs {NEEDS}")]
    Incomplete { metric: String, found: MetricType, missing: String },
}

impl PromTextError {
    /// The 1-based line a parse error is on; `None` for the size limit and the step errors.
    pub fn line(&self) -> Option<usize> {
        match self {
            PromTextError::LineTooLong { line, .. }
            | PromTextError::MissingValue { line, .. }
            | PromTextError::UnterminatedLabelSet { line }
            | PromTextError::UnterminatedQuote { line }
            | PromTextError::InvalidMetricName { line, .. }
            | PromTextError::InvalidLabelName { line, .. }
            | PromTextError::InvalidValue { line, .. }
            | PromTextError::InvalidTimestamp { line, .. }
            | PromTextError::InvalidType { line, .. }
            | PromTextError::Malformed { line, .. } => Some(*line),
            PromTextError::TooLarge { .. }
            | PromTextError::MetricAbsent { .. }
            | PromTextError::WrongType { .. }
            | PromTextError::Incomplete { .. } => None,
        }
    }
}

/// Parses the Prometheus text format (0.0.4) and OpenMetrics 1.0 text (`# EOF` ends it;
/// `_created` etc. are plain samples). See the module documentation for the exact rules.
pub fn parse(text: &str) -> Result<Exposition, PromTextError> {
    if text.len() > MAX_TEXT_BYTES {
        return Err(PromTextError::TooLarge { size: text.len(), limit: MAX_TEXT_BYTES });
    }
    let openmetrics = is_eof(last_line(text));
    let mut expo = Exposition::default();
    let mut eof_line: Option<usize> = None;
    for (index, raw) in text.split('\n').enumerate() {
        let line = index + 1;
        let content = raw.strip_suffix('\r').unwrap_or(raw);
        if content.len() > MAX_LINE_BYTES {
            return Err(PromTextError::LineTooLong { line, len: content.len(), limit: MAX_LINE_BYTES });
        }
        let trimmed = content.trim_matches(is_blank);
        if trimmed.is_empty() {
            continue;
        }
        if let Some(eof) = eof_line {
            return Err(malformed(line, format!("text after the '# EOF' on line {eof}")));
        }
        if is_eof(trimmed) {
            eof_line = Some(line);
            continue;
        }
        if let Some(comment) = trimmed.strip_prefix('#') {
            parse_comment(comment, line, &mut expo)?;
            continue;
        }
        expo.samples.push(parse_sample(trimmed, line, openmetrics)?);
    }
    Ok(expo)
}

/// What a step metric reads at one scrape.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum StepReading {
    /// A histogram or summary of step durations in seconds: `<m>_count` and `<m>_sum`, summed
    /// over all label sets.
    Durations { count: f64, sum_seconds: f64 },
    /// A counter of completed steps (`<m>` or `<m>_total`, summed over label sets): progress
    /// only, no step time.
    Steps { count: f64 },
}

/// Reads metric family `metric` from an exposition. A histogram/summary (by `# TYPE`, or untyped
/// with both `_count` and `_sum` present) gives Durations; a counter gives Steps; a gauge, or a
/// metric absent from the exposition, is an error whose message says what devheal needs ("a
/// histogram or summary of step seconds, or a counter of steps"). The name may be given with or
/// without `_total` for counters.
///
/// Counters: the `# TYPE` may name `<m>` (OpenMetrics) or `<m>_total` (0.0.4 from most
/// clients); the samples summed are those named `<m>_total` if there are any, else those named
/// `<m>`, so a text carrying both is not counted twice. An untyped metric reads as Durations when
/// it has both `_count` and `_sum`, as Steps when it has `_total` samples (the counter naming
/// convention), and is otherwise an error, since it may be a gauge.
pub fn step_reading(expo: &Exposition, metric: &str) -> Result<StepReading, PromTextError> {
    let base = metric.strip_suffix("_total").filter(|b| !b.is_empty()).unwrap_or(metric);
    let total = format!("{base}_total");
    // Another name than the one given is looked up only for a counter.
    let declared = expo.types.get(metric).copied().or_else(|| {
        [base, total.as_str()]
            .into_iter()
            .find_map(|name| expo.types.get(name).copied().filter(|t| *t == MetricType::Counter))
    });
    match declared {
        Some(found @ (MetricType::Histogram | MetricType::Summary)) => {
            let count = sum_named(expo, &format!("{metric}_count"));
            let sum = sum_named(expo, &format!("{metric}_sum"));
            match (count, sum) {
                (Some(count), Some(sum_seconds)) => Ok(StepReading::Durations { count, sum_seconds }),
                (None, _) => Err(PromTextError::Incomplete {
                    metric: metric.into(),
                    found,
                    missing: format!("{metric}_count"),
                }),
                (_, None) => Err(PromTextError::Incomplete {
                    metric: metric.into(),
                    found,
                    missing: format!("{metric}_sum"),
                }),
            }
        }
        Some(MetricType::Counter) => match sum_named(expo, &total).or_else(|| sum_named(expo, base)) {
            Some(count) => Ok(StepReading::Steps { count }),
            None => Err(PromTextError::Incomplete {
                metric: metric.into(),
                found: MetricType::Counter,
                missing: total,
            }),
        },
        Some(MetricType::Unknown) | None => {
            let count = sum_named(expo, &format!("{metric}_count"));
            let sum = sum_named(expo, &format!("{metric}_sum"));
            if let (Some(count), Some(sum_seconds)) = (count, sum) {
                return Ok(StepReading::Durations { count, sum_seconds });
            }
            if let Some(count) = sum_named(expo, &total) {
                return Ok(StepReading::Steps { count });
            }
            let seen = declared.is_some()
                || count.is_some()
                || sum.is_some()
                || expo.samples.iter().any(|s| s.name == metric || s.name == base);
            if seen {
                Err(PromTextError::WrongType { metric: metric.into(), found: MetricType::Unknown })
            } else {
                Err(PromTextError::MetricAbsent { metric: metric.into() })
            }
        }
        Some(found) => Err(PromTextError::WrongType { metric: metric.into(), found }),
    }
}

/// The sum of the values of all samples named `name`, or `None` when there are none.
fn sum_named(expo: &Exposition, name: &str) -> Option<f64> {
    expo.samples
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .fold(None, |acc, v| Some(acc.unwrap_or(0.0) + v))
}

/// The last non-blank line of `text`, trimmed.
fn last_line(text: &str) -> &str {
    let text = text.trim_end_matches(|c: char| c.is_ascii_whitespace());
    let start = text.rfind('\n').map_or(0, |i| i + 1);
    text.get(start..).unwrap_or("").trim_matches(is_blank)
}

/// Whether a trimmed line is OpenMetrics' `# EOF` (blanks between `#` and `EOF` allowed).
fn is_eof(trimmed: &str) -> bool {
    trimmed.strip_prefix('#').is_some_and(|rest| rest.trim_start_matches(is_blank) == "EOF")
}

fn is_blank(c: char) -> bool {
    c == ' ' || c == '\t'
}

fn malformed(line: usize, what: impl Into<String>) -> PromTextError {
    PromTextError::Malformed { line, what: what.into() }
}

/// Splits off the first blank-separated token.
fn next_token(s: &str) -> (&str, &str) {
    let s = s.trim_start_matches(is_blank);
    match s.find(is_blank) {
        Some(end) => (s.get(..end).unwrap_or(s), s.get(end..).unwrap_or("")),
        None => (s, ""),
    }
}

/// A `#` line (the text after `#`): HELP, TYPE and UNIT are checked; the rest are comments.
fn parse_comment(comment: &str, line: usize, expo: &mut Exposition) -> Result<(), PromTextError> {
    let (keyword, rest) = next_token(comment);
    if !matches!(keyword, "HELP" | "TYPE" | "UNIT") {
        return Ok(());
    }
    let rest = rest.trim_start_matches(is_blank);
    if rest.is_empty() {
        return Err(malformed(line, format!("# {keyword} line without a metric name")));
    }
    let (name, rest) = metric_name_token(rest, line)?;
    if keyword != "TYPE" {
        return Ok(());
    }
    let (word, extra) = next_token(rest);
    if word.is_empty() {
        return Err(malformed(line, format!("# TYPE line for {name:?} without a type")));
    }
    if !extra.trim_matches(is_blank).is_empty() {
        return Err(malformed(line, format!("# TYPE line for {name:?} has text after the type")));
    }
    let kind = MetricType::from_keyword(word)
        .ok_or_else(|| PromTextError::InvalidType { line, word: word.into() })?;
    if let Some(earlier) = expo.types.get(&name)
        && *earlier != kind
    {
        return Err(malformed(
            line,
            format!("# TYPE {kind} for {name:?}, which an earlier line typed {earlier}"),
        ));
    }
    expo.types.insert(name, kind);
    Ok(())
}

/// A metric name at the start of `s` on a comment line, bare or quoted; returns it and the rest.
fn metric_name_token(s: &str, line: usize) -> Result<(String, &str), PromTextError> {
    if let Some(quoted) = s.strip_prefix('"') {
        let (name, rest) = quoted_string(quoted, line)?;
        if name.is_empty() {
            return Err(PromTextError::InvalidMetricName { line, name });
        }
        if !rest.is_empty() && !rest.starts_with(is_blank) {
            return Err(malformed(line, format!("no blank after the quoted name {name:?}")));
        }
        return Ok((name, rest));
    }
    let (name, rest) = next_token(s);
    if !is_metric_name(name) {
        return Err(PromTextError::InvalidMetricName { line, name: name.into() });
    }
    Ok((name.into(), rest))
}

fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The body of a quoted string (after its opening quote), unescaped, and the text after its
/// closing quote.
fn quoted_string(s: &str, line: usize) -> Result<(String, &str), PromTextError> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, s.get(i + 1..).unwrap_or(""))),
            '\\' => match chars.next() {
                Some((_, '\\')) => out.push('\\'),
                Some((_, '"')) => out.push('"'),
                Some((_, 'n')) => out.push('\n'),
                Some((_, other)) => {
                    out.push('\\');
                    out.push(other);
                }
                None => break,
            },
            c => out.push(c),
        }
    }
    Err(PromTextError::UnterminatedQuote { line })
}

/// A sample line, already trimmed and not a comment.
fn parse_sample(s: &str, line: usize, openmetrics: bool) -> Result<Sample, PromTextError> {
    let name_end = s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')).unwrap_or(s.len());
    let bare = s.get(..name_end).unwrap_or("");
    let after = s.get(name_end..).unwrap_or("");
    if !bare.is_empty() && !is_metric_name(bare) {
        return Err(PromTextError::InvalidMetricName { line, name: bare.into() });
    }
    let mut name = (!bare.is_empty()).then(|| bare.to_string());
    let mut labels = Vec::new();
    let rest = if let Some(inner) = after.strip_prefix('{') {
        let (quoted_name, rest) = label_set(inner, line, name.is_none(), &mut labels)?;
        if quoted_name.is_some() {
            name = quoted_name;
        }
        rest
    } else if after.is_empty() || after.starts_with(is_blank) {
        after
    } else {
        let token = s.split(is_blank).next().unwrap_or(s);
        return Err(PromTextError::InvalidMetricName { line, name: token.into() });
    };
    let Some(name) = name else {
        return Err(malformed(line, "sample without a metric name"));
    };

    let (value_token, rest) = next_token(rest);
    if value_token.is_empty() || value_token.starts_with('#') {
        return Err(PromTextError::MissingValue { line, name });
    }
    let value = parse_value(value_token)
        .ok_or_else(|| PromTextError::InvalidValue { line, value: value_token.into() })?;
    let (ts_token, rest) = next_token(rest);
    let mut timestamp_ms = None;
    let exemplar = if ts_token.is_empty() || ts_token.starts_with('#') {
        ts_token
    } else {
        timestamp_ms = Some(
            parse_timestamp(ts_token, openmetrics)
                .ok_or_else(|| PromTextError::InvalidTimestamp { line, value: ts_token.into() })?,
        );
        next_token(rest).0
    };
    if !exemplar.is_empty() && !exemplar.starts_with('#') {
        return Err(malformed(line, format!("unexpected {exemplar:?} after the value and timestamp")));
    }
    Ok(Sample { name, labels, value, timestamp_ms })
}

/// A label set after its `{`: pushes the labels and returns a quoted metric name if the set
/// carried one (only when `name_allowed`), and the text after the closing `}`.
fn label_set<'a>(
    mut s: &'a str,
    line: usize,
    name_allowed: bool,
    labels: &mut Vec<(String, String)>,
) -> Result<(Option<String>, &'a str), PromTextError> {
    let mut metric_name: Option<String> = None;
    loop {
        s = s.trim_start_matches(is_blank);
        if let Some(rest) = s.strip_prefix('}') {
            return Ok((metric_name, rest));
        }
        if s.is_empty() {
            return Err(PromTextError::UnterminatedLabelSet { line });
        }
        // A label name (bare or quoted), or the quoted metric name.
        let (key, quoted, rest) = if let Some(q) = s.strip_prefix('"') {
            let (key, rest) = quoted_string(q, line)?;
            (key, true, rest)
        } else {
            let end = s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(s.len());
            let key = s.get(..end).unwrap_or("");
            let after = s.get(end..).unwrap_or("");
            if key.is_empty() || !(after.is_empty() || after.starts_with(['=', ',', '}', ' ', '\t'])) {
                let bad = s.split(['=', ',', '}', ' ', '\t']).next().unwrap_or(s);
                return Err(PromTextError::InvalidLabelName { line, name: bad.into() });
            }
            (key.to_string(), false, s.get(end..).unwrap_or(""))
        };
        let rest = rest.trim_start_matches(is_blank);
        if let Some(rest) = rest.strip_prefix('=') {
            if (quoted && key.is_empty()) || (!quoted && !is_label_name(&key)) {
                return Err(PromTextError::InvalidLabelName { line, name: key });
            }
            let rest = rest.trim_start_matches(is_blank);
            let Some(q) = rest.strip_prefix('"') else {
                if rest.is_empty() {
                    return Err(PromTextError::UnterminatedLabelSet { line });
                }
                return Err(malformed(line, format!("label {key:?} has an unquoted value")));
            };
            let (value, rest) = quoted_string(q, line)?;
            if labels.iter().any(|(k, _)| *k == key) {
                return Err(malformed(line, format!("label {key:?} appears twice")));
            }
            labels.push((key, value));
            s = rest;
        } else if quoted && name_allowed && metric_name.is_none() && labels.is_empty() {
            if key.is_empty() {
                return Err(PromTextError::InvalidMetricName { line, name: key });
            }
            metric_name = Some(key);
            s = rest;
        } else if rest.is_empty() {
            return Err(PromTextError::UnterminatedLabelSet { line });
        } else if !quoted && !is_label_name(&key) {
            return Err(PromTextError::InvalidLabelName { line, name: key });
        } else {
            return Err(malformed(line, format!("label {key:?} is not followed by '='")));
        }
        s = s.trim_start_matches(is_blank);
        if let Some(rest) = s.strip_prefix(',') {
            s = rest;
        } else if !s.starts_with('}') {
            if !s.contains('}') {
                return Err(PromTextError::UnterminatedLabelSet { line });
            }
            return Err(malformed(line, "expected ',' or '}' after a label"));
        }
    }
}

/// A sample value: a decimal float, or NaN / ±Inf in any case.
fn parse_value(token: &str) -> Option<f64> {
    // Rust's float parser takes exactly the decimal, "inf", "infinity" and "nan" spellings
    // (any case, optional sign) that Go's ParseFloat does, less hex floats and underscores.
    token.parse::<f64>().ok()
}

/// A timestamp in milliseconds: an integer is ms (0.0.4) or s (OpenMetrics); a number with a
/// fraction or exponent is seconds.
fn parse_timestamp(token: &str, openmetrics: bool) -> Option<i64> {
    let is_integer = {
        let digits = token.strip_prefix(['+', '-']).unwrap_or(token);
        !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
    };
    if is_integer {
        let n: i64 = token.parse().ok()?;
        return if openmetrics { n.checked_mul(1000) } else { Some(n) };
    }
    let seconds: f64 = token.parse().ok()?;
    let ms = (seconds * 1000.0).round();
    // i64::MAX as f64 rounds up to 2^63, so the upper bound is exclusive.
    (ms.is_finite() && ms >= i64::MIN as f64 && ms < i64::MAX as f64).then_some(ms as i64)
}

#[cfg(test)]
mod tests;
