//! Checks a value against a CRD's structural OpenAPI v3 schema, the way the API server's
//! validation would refuse it, for the keywords devheal's CRDs use: `type`, `properties`,
//! `required`, `additionalProperties`, `items`, `maxItems`, `minItems`, `maxLength`,
//! `minLength`, `pattern`, `enum`, `minimum`, `maximum`, `format: int64`, `nullable`.
//! (CEL rules, `x-kubernetes-validations`, are not evaluated; devheal's status schemas carry
//! none.)
//!
//! The agent checks every status it is about to publish ([`drop_violations`]): what would make
//! the API server refuse the whole write (a 422) is dropped, named in the log, and the rest is
//! published, so one bad value never freezes a node's report.

use serde_json::Value;

/// One place where a value breaks its schema.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Where, as the API server names fields: `status.workloads[3].name`.
    pub path: String,
    /// What is wrong.
    pub problem: String,
    /// For a list with more items than `maxItems`: that maximum (the fix keeps the first ones).
    too_many: Option<usize>,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.problem)
    }
}

/// Every violation of `schema` by `value`; `path` names `value` (e.g. `status`).
pub fn violations(schema: &Value, value: &Value, path: &str) -> Vec<Violation> {
    let mut out = Vec::new();
    walk(schema, value, path, &mut out);
    out
}

fn walk(schema: &Value, value: &Value, path: &str, out: &mut Vec<Violation>) {
    let mut bad = |problem: String| out.push(Violation { path: path.to_string(), problem, too_many: None });
    if value.is_null() {
        // A null in a field that is not nullable is dropped by the server, never refused.
        return;
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("object") => {
            let Some(fields) = value.as_object() else {
                return bad(format!("must be an object, not {}", kind(value)));
            };
            for name in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
                if let Some(name) = name.as_str()
                    && fields.get(name).is_none_or(Value::is_null)
                {
                    out.push(Violation {
                        path: join(path, name),
                        problem: "is required".into(),
                        too_many: None,
                    });
                }
            }
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            for (name, field) in fields {
                match (properties.and_then(|p| p.get(name)), additional) {
                    (Some(sub), _) | (None, Some(sub)) => walk(sub, field, &join(path, name), out),
                    // Unknown fields are pruned by the server, not refused.
                    (None, None) => {}
                }
            }
        }
        Some("array") => {
            let Some(items) = value.as_array() else {
                return bad(format!("must be an array, not {}", kind(value)));
            };
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
                && items.len() as u64 > max
            {
                out.push(Violation {
                    path: path.to_string(),
                    problem: format!("has {} items, at most {max}", items.len()),
                    too_many: Some(usize::try_from(max).unwrap_or(usize::MAX)),
                });
            }
            if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
                && (items.len() as u64) < min
            {
                let problem = format!("has {} items, at least {min}", items.len());
                out.push(Violation { path: path.to_string(), problem, too_many: None });
            }
            if let Some(item) = schema.get("items") {
                for (i, v) in items.iter().enumerate() {
                    walk(item, v, &format!("{path}[{i}]"), out);
                }
            }
        }
        Some("string") => {
            let Some(s) = value.as_str() else {
                return bad(format!("must be a string, not {}", kind(value)));
            };
            let chars = s.chars().count() as u64;
            if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
                && chars > max
            {
                bad(format!("is {chars} characters long, at most {max}"));
            }
            if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
                && chars < min
            {
                bad(format!("is {chars} characters long, at least {min}"));
            }
            if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
                match regex::Regex::new(pattern) {
                    Ok(re) if !re.is_match(s) => bad(format!("{s:?} does not match {pattern}")),
                    Ok(_) => {}
                    Err(e) => {
                        bad(format!("the schema's pattern {pattern:?} is not a regular expression: {e}"))
                    }
                }
            }
            enumerated(schema, value, &mut bad);
        }
        Some("integer") => {
            let fits =
                value.as_i64().is_some() || value.as_u64().is_some_and(|_| schema.get("format").is_none());
            if !fits {
                return bad(format!("must be an integer within int64, not {value}"));
            }
            bounds(schema, value, &mut bad);
        }
        Some("number") => {
            if !value.is_number() {
                return bad(format!("must be a number, not {}", kind(value)));
            }
            bounds(schema, value, &mut bad);
        }
        Some("boolean") => {
            if !value.is_boolean() {
                bad(format!("must be true or false, not {}", kind(value)));
            }
        }
        _ => enumerated(schema, value, &mut bad),
    }
}

fn enumerated(schema: &Value, value: &Value, bad: &mut impl FnMut(String)) {
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        bad(format!("{value} is not one of {}", Value::Array(allowed.clone())));
    }
}

fn bounds(schema: &Value, value: &Value, bad: &mut impl FnMut(String)) {
    let Some(v) = value.as_f64() else { return };
    if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
        && v > max
    {
        bad(format!("{value} is more than {max}"));
    }
    if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
        && v < min
    {
        bad(format!("{value} is less than {min}"));
    }
}

/// What kind of JSON value `v` is, for messages: "a string", "an array", …
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() { name.to_string() } else { format!("{path}.{name}") }
}

/// Remove what breaks `schema` from `value` (named `path`), the smallest part that contains
/// each violation: the list element it is in (a device, a reason, a workload), else the field.
/// Returns what was removed, for the log. Repeats until the value is valid (at most 8 passes;
/// each pass removes at least one part, so a value always ends valid or emptied of the parts).
pub fn drop_violations(schema: &Value, value: &mut Value, path: &str) -> Vec<Violation> {
    let mut removed = Vec::new();
    for _ in 0..8 {
        let found = violations(schema, value, path);
        if found.is_empty() {
            break;
        }
        // Lists that are too long keep their first `maxItems` items (a pass of its own: the
        // indexes of other violations refer to the list as it was).
        let long: Vec<Violation> = found.iter().filter(|v| v.too_many.is_some()).cloned().collect();
        if !long.is_empty() {
            for v in long {
                let Some(segments) = segments_of(&v.path, path) else { continue };
                if let (Some(Value::Array(list)), Some(max)) = (at_mut(value, &segments), v.too_many) {
                    list.truncate(max);
                    removed.push(v);
                }
            }
            continue;
        }
        // Deepest first, later elements first, so removals do not shift what is left to remove.
        let mut targets: Vec<(Vec<Segment>, Violation)> =
            found.into_iter().filter_map(|v| Some((part_to_drop(&v.path, path)?, v))).collect();
        targets.sort_by(|a, b| b.0.cmp(&a.0));
        targets.dedup_by(|a, b| a.0 == b.0);
        if targets.is_empty() {
            break;
        }
        for (segments, violation) in targets {
            if remove(value, &segments) {
                removed.push(violation);
            }
        }
    }
    removed
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Segment {
    Field(String),
    Index(usize),
}

/// The segments of `path` below `root` (`status.devices[2].id` → devices, 2, id).
fn segments_of(path: &str, root: &str) -> Option<Vec<Segment>> {
    let rest = path.strip_prefix(root)?.trim_start_matches('.');
    let mut segments = Vec::new();
    for piece in rest.split('.').filter(|p| !p.is_empty()) {
        let (name, indexes) = piece.split_once('[').map_or((piece, ""), |(n, i)| (n, i));
        segments.push(Segment::Field(name.to_string()));
        for index in indexes.split('[').filter(|i| !i.is_empty()) {
            segments.push(Segment::Index(index.trim_end_matches(']').parse().ok()?));
        }
    }
    Some(segments)
}

/// The segments of the part to drop for a violation at `path`: up to and including the last
/// list index, or the whole path when it holds none.
fn part_to_drop(path: &str, root: &str) -> Option<Vec<Segment>> {
    let mut segments = segments_of(path, root)?;
    if let Some(last) = segments.iter().rposition(|s| matches!(s, Segment::Index(_))) {
        segments.truncate(last + 1);
    }
    (!segments.is_empty()).then_some(segments)
}

fn at_mut<'a>(value: &'a mut Value, segments: &[Segment]) -> Option<&'a mut Value> {
    let mut at = value;
    for s in segments {
        at = match s {
            Segment::Field(f) => at.get_mut(f.as_str())?,
            Segment::Index(i) => at.get_mut(*i)?,
        };
    }
    Some(at)
}

fn remove(value: &mut Value, segments: &[Segment]) -> bool {
    let Some((last, parents)) = segments.split_last() else { return false };
    let Some(at) = at_mut(value, parents) else { return false };
    match (last, at) {
        (Segment::Field(f), Value::Object(map)) => map.remove(f).is_some(),
        (Segment::Index(i), Value::Array(list)) if *i < list.len() => {
            list.remove(*i);
            true
        }
        _ => false,
    }
}

/// The schema of NodeDeviceHealth's `status`, from the CRDs devheal ships.
pub fn node_device_health_status_schema() -> Value {
    crate::crd::crds()
        .into_iter()
        .find(|c| c.spec.names.kind == "NodeDeviceHealth")
        .and_then(|c| serde_json::to_value(c).ok())
        .map(|v| v["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"].clone())
        .unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({"type": "object", "required": ["devices"], "properties": {
            "devices": {"type": "array", "maxItems": 3, "items": {"type": "object", "required": ["id"], "properties": {
                "id": {"type": "string", "maxLength": 5},
                "pci": {"type": "string", "pattern": "^[0-9a-f]{4}$"},
                "count": {"type": "integer", "format": "int64", "minimum": 0.0, "maximum": 100.0},
                "health": {"type": "string", "enum": ["Healthy", "Unhealthy"]}}}},
            "note": {"type": "string", "maxLength": 3}}})
    }

    #[test]
    fn each_keyword_is_checked_and_named_by_path() {
        let v = json!({"devices": [
            {"id": "GPU-0", "pci": "00ff", "count": 3, "health": "Healthy"},
            {"id": "GPU-10", "pci": "zz", "count": 101, "health": "Sick"},
            {"count": 18446744073709551615u64}], "note": "long", "unknown": 1});
        let found: Vec<String> = violations(&schema(), &v, "status").iter().map(|v| v.path.clone()).collect();
        assert_eq!(
            found,
            [
                "status.devices[1].count",
                "status.devices[1].health",
                "status.devices[1].id",
                "status.devices[1].pci",
                "status.devices[2].id",
                "status.devices[2].count",
                "status.note"
            ]
        );
    }

    #[test]
    fn the_smallest_part_with_a_violation_is_dropped_and_the_rest_kept() {
        let mut v = json!({"devices": [
            {"id": "a"}, {"id": "too-long"}, {"id": "b"}, {"id": "c", "health": "Sick"}], "note": "long"});
        let removed = drop_violations(&schema(), &mut v, "status");
        // One list too long keeps its first 3; then the bad element and the bad field go.
        assert_eq!(v, json!({"devices": [{"id": "a"}, {"id": "b"}]}));
        let paths: Vec<&str> = removed.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(paths, ["status.devices", "status.note", "status.devices[1].id"]);
        assert!(violations(&schema(), &v, "status").is_empty());
    }

    #[test]
    fn the_shipped_status_schema_is_found() {
        let s = node_device_health_status_schema();
        assert_eq!(s["type"], "object");
        assert_eq!(s["properties"]["workloads"]["maxItems"], 256);
    }
}
