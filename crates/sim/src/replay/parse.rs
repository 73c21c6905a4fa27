//! Reading a trace file's records: CSV or JSON lines, and RFC 3339 times.

use std::collections::BTreeSet;

use super::record::{Cause, FIELDS, NodeRef, Stamp, TraceError, TraceFormat, TraceRecord};

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
