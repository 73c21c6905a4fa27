//! Text shared by the plugin's commands: aligned tables, times as RFC 3339 stamps or ages, and
//! one line per health reason.

use devheal_k8s::crd::HealthReasonStatus;
use k8s_openapi::jiff::Timestamp;

/// Rows under their headers, each column as wide as its widest cell and two spaces apart; the
/// last column is not padded, and no line ends in spaces.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, width) in widths.iter().enumerate() {
            let cell = row.get(i).map_or("", String::as_str);
            line.push_str(cell);
            if i + 1 < widths.len() {
                let pad = width.saturating_sub(cell.chars().count()) + 2;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `2026-12-04T23:10:01Z`: a time to the second, in UTC.
pub fn stamp(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// How long before `now` `t` was, as kubectl prints ages: `42s`, `5m`, `3h12m`, `4d`
/// (`0s` for a time in the future).
pub fn age(now: Timestamp, t: Timestamp) -> String {
    let s = (now.as_second() - t.as_second()).max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 if (s % 3600) / 60 == 0 => format!("{}h", s / 3600),
        3600..86_400 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d", s / 86_400),
    }
}

/// One of the engine's times (nanoseconds since the Unix epoch) as a timestamp.
pub fn engine_time(t: devheal_core::Time) -> Timestamp {
    Timestamp::from_nanosecond(i128::from(t.as_nanos())).unwrap_or_default()
}

/// `-` for nothing.
pub fn or_dash(s: Option<String>) -> String {
    s.filter(|s| !s.is_empty()).unwrap_or_else(|| "-".to_string())
}

/// `kernel_log` and the like: a reason source as the CRD writes it.
pub fn source_name(source: devheal_core::HealthSource) -> String {
    serde_json::to_value(source).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

/// `kernel_log 79: GPU has fallen off the bus (x3)`.
pub fn reason_line(r: &HealthReasonStatus) -> String {
    let code = r.code.map(|c| format!(" {c}")).unwrap_or_default();
    let count = if r.count > 1 { format!(" (x{})", r.count) } else { String::new() };
    format!("{}{code}: {}{count}", source_name(r.source), r.message)
}

/// `s` cut to `max` characters, with `…` when cut (for table cells; JSON keeps the whole text).
pub fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_and_leave_no_trailing_spaces() {
        let rows = vec![
            vec!["gpu-node-1".to_string(), "GPU-1".to_string(), String::new()],
            vec!["n2".to_string(), "GPU-22222".to_string(), "x".to_string()],
        ];
        let text = table(&["NODE", "DEVICE", "PODS"], &rows);
        assert_eq!(text, "NODE        DEVICE     PODS\ngpu-node-1  GPU-1\nn2          GPU-22222  x\n");
    }

    #[test]
    fn ages_read_like_kubectl() {
        let now: Timestamp = "2026-12-04T12:00:00Z".parse().unwrap();
        let at = |s: &str| -> Timestamp { s.parse().unwrap() };
        assert_eq!(age(now, at("2026-12-04T11:59:18Z")), "42s");
        assert_eq!(age(now, at("2026-12-04T11:55:00Z")), "5m");
        assert_eq!(age(now, at("2026-12-04T09:00:00Z")), "3h");
        assert_eq!(age(now, at("2026-12-04T08:48:00Z")), "3h12m");
        assert_eq!(age(now, at("2026-11-30T12:00:00Z")), "4d");
        assert_eq!(age(now, at("2026-12-05T12:00:00Z")), "0s", "a clock ahead of ours is not negative");
        assert_eq!(stamp(at("2026-12-04T08:48:00.123Z")), "2026-12-04T08:48:00Z");
        assert_eq!(stamp(engine_time(devheal_core::Time::from_secs(60))), "1970-01-01T00:01:00Z");
    }

    #[test]
    fn clipping_keeps_short_text_and_marks_a_cut() {
        assert_eq!(clip("short", 10), "short");
        assert_eq!(clip("0123456789abc", 10), "012345678…");
    }
}
