//! The monitoring files in `deploy/monitoring/` name only metrics devheal exports.
//!
//! The exported names come from the code: the controller's and the agent's registries are built
//! and encoded, and every `# TYPE` line of the exposition gives a family (a counter is queried as
//! `<name>_total`, a histogram as `<name>_bucket`, `_sum` and `_count`). The alerting rules
//! (`devheal-alerts.yaml`) and the Grafana dashboard (`devheal-dashboard.json`) are read, every
//! PromQL expression in them is tokenized, and each identifier that is a metric name (not a
//! function, an aggregation, a keyword, a label inside `{…}`, `by (…)`, `without (…)`, `on (…)`,
//! `ignoring (…)` or `group_left/right (…)`, a duration, a string or a Grafana variable) must be
//! one of those names.
//!
//! PromQL's grammar, as this tokenizer reads it, is from the Prometheus query documentation
//! (<https://prometheus.io/docs/prometheus/latest/querying/basics/>, `…/operators/`,
//! `…/functions/`); Grafana's variables from its templating documentation.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use devheal_detect::promtext::{self, MetricType};
use serde_json::Value as Json;

/// Series Prometheus itself writes for every scrape target; the rules use `up` to see an agent
/// that cannot be scraped (its own series are then gone).
const PROMETHEUS_TARGET_SERIES: &[&str] = &["up"];

/// PromQL functions (the functions page, Prometheus 3.x) and Grafana's `$__…` helpers are not here:
/// an identifier followed by `(` must be one of these or an aggregation, or the query is refused.
const FUNCTIONS: &[&str] = &[
    "abs",
    "absent",
    "absent_over_time",
    "acos",
    "acosh",
    "asin",
    "asinh",
    "atan",
    "atanh",
    "avg_over_time",
    "ceil",
    "changes",
    "clamp",
    "clamp_max",
    "clamp_min",
    "cos",
    "cosh",
    "count_over_time",
    "day_of_month",
    "day_of_week",
    "day_of_year",
    "days_in_month",
    "deg",
    "delta",
    "deriv",
    "double_exponential_smoothing",
    "exp",
    "first_over_time",
    "floor",
    "histogram_avg",
    "histogram_count",
    "histogram_fraction",
    "histogram_quantile",
    "histogram_stddev",
    "histogram_stdvar",
    "histogram_sum",
    "hour",
    "idelta",
    "increase",
    "info",
    "irate",
    "label_join",
    "label_replace",
    "last_over_time",
    "ln",
    "log10",
    "log2",
    "mad_over_time",
    "max_over_time",
    "min_over_time",
    "minute",
    "month",
    "pi",
    "predict_linear",
    "present_over_time",
    "quantile_over_time",
    "rad",
    "rate",
    "resets",
    "round",
    "scalar",
    "sgn",
    "sin",
    "sinh",
    "sort",
    "sort_by_label",
    "sort_by_label_desc",
    "sort_desc",
    "sqrt",
    "stddev_over_time",
    "stdvar_over_time",
    "sum_over_time",
    "tan",
    "tanh",
    "time",
    "timestamp",
    "ts_of_max_over_time",
    "ts_of_min_over_time",
    "ts_of_last_over_time",
    "vector",
    "year",
    // `@ start()` and `@ end()`.
    "start",
    "end",
];

/// Aggregation operators: `sum by (l) (…)`, `sum (…) without (l)`, `topk(3, …)`.
const AGGREGATIONS: &[&str] = &[
    "avg",
    "bottomk",
    "count",
    "count_values",
    "group",
    "limit_ratio",
    "limitk",
    "max",
    "min",
    "quantile",
    "stddev",
    "stdvar",
    "sum",
    "topk",
];

/// Words that are never metric names.
const KEYWORDS: &[&str] = &["and", "or", "unless", "atan2", "bool", "offset", "inf", "nan"];

/// Keywords whose parenthesized list is label names, not expressions.
const LABEL_LIST_KEYWORDS: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];

/// Why a query could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
enum QueryError {
    Unterminated { what: &'static str, at: usize },
    UnknownFunction(String),
    Unexpected { ch: char, at: usize },
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueryError::Unterminated { what, at } => write!(f, "unterminated {what} opened at byte {at}"),
            QueryError::UnknownFunction(name) => {
                write!(f, "`{name}(` is not a PromQL function or aggregation")
            }
            QueryError::Unexpected { ch, at } => write!(f, "unexpected {ch:?} at byte {at}"),
        }
    }
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c == b':'
}

fn is_ident_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b':'
}

/// The index just past the bracket closing the one at `open`, skipping strings inside.
fn skip_bracketed(q: &[u8], open: usize, close: u8, what: &'static str) -> Result<usize, QueryError> {
    let opener = q[open];
    let mut depth = 0usize;
    let mut i = open;
    while i < q.len() {
        match q[i] {
            b'"' | b'\'' | b'`' => i = skip_string(q, i)?,
            c if c == opener => {
                depth += 1;
                i += 1;
            }
            c if c == close => {
                depth -= 1;
                i += 1;
                if depth == 0 {
                    return Ok(i);
                }
            }
            _ => i += 1,
        }
    }
    Err(QueryError::Unterminated { what, at: open })
}

/// The index just past the string literal that starts at `start`.
fn skip_string(q: &[u8], start: usize) -> Result<usize, QueryError> {
    let quote = q[start];
    let mut i = start + 1;
    while i < q.len() {
        if q[i] == b'\\' && quote != b'`' {
            i += 2;
            continue;
        }
        if q[i] == quote {
            return Ok(i + 1);
        }
        i += 1;
    }
    Err(QueryError::Unterminated { what: "string", at: start })
}

fn skip_blanks(q: &[u8], mut i: usize) -> usize {
    while i < q.len() && q[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// Every metric name a PromQL expression (which may hold Grafana variables) selects, in order.
fn metric_names(query: &str) -> Result<Vec<String>, QueryError> {
    let q = query.as_bytes();
    let mut names = Vec::new();
    let mut i = 0;
    while i < q.len() {
        let c = q[i];
        match c {
            b'"' | b'\'' | b'`' => i = skip_string(q, i)?,
            b'#' => {
                while i < q.len() && q[i] != b'\n' {
                    i += 1;
                }
            }
            // Label matchers and range or subquery durations hold no metric names.
            b'{' => i = skip_bracketed(q, i, b'}', "label matcher")?,
            b'[' => i = skip_bracketed(q, i, b']', "range")?,
            // Grafana variables: `$name`, `${name}`, `${name:format}`.
            b'$' => {
                i += 1;
                if i < q.len() && q[i] == b'{' {
                    i = skip_bracketed(q, i, b'}', "variable")?;
                } else {
                    while i < q.len() && is_ident_char(q[i]) {
                        i += 1;
                    }
                }
            }
            // Numbers and durations (`5m`, `1e3`, `0x1f`, `.5`).
            b'0'..=b'9' | b'.' => {
                while i < q.len() && (q[i].is_ascii_alphanumeric() || q[i] == b'.' || q[i] == b'_') {
                    i += 1;
                }
            }
            c if is_ident_start(c) => {
                let start = i;
                while i < q.len() && is_ident_char(q[i]) {
                    i += 1;
                }
                let word = &query[start..i];
                let lower = word.to_ascii_lowercase();
                let next = skip_blanks(q, i);
                let called = next < q.len() && q[next] == b'(';
                let keyword = |list: &[&str]| list.contains(&lower.as_str());
                if keyword(LABEL_LIST_KEYWORDS) {
                    // `by (a, b)`: label names, never metrics.
                    if called {
                        i = skip_bracketed(q, next, b')', "label list")?;
                    }
                } else if keyword(AGGREGATIONS) || keyword(KEYWORDS) {
                    // An operator: what follows is read on its own.
                } else if called && !FUNCTIONS.contains(&word) {
                    return Err(QueryError::UnknownFunction(word.to_string()));
                } else if !called {
                    names.push(word.to_string());
                }
            }
            b'(' | b')' | b',' | b'+' | b'-' | b'*' | b'/' | b'%' | b'^' | b'=' | b'!' | b'<' | b'>'
            | b'@' | b':' => i += 1,
            c if c.is_ascii_whitespace() => i += 1,
            _ => return Err(QueryError::Unexpected { ch: char::from(c), at: i }),
        }
    }
    Ok(names)
}

/// The names a scrape of this exposition gives Prometheus, from its `# TYPE` lines.
fn exported_names(exposition: &str) -> BTreeSet<String> {
    let parsed = promtext::parse(exposition).expect("devheal's own exposition parses");
    let mut names = BTreeSet::new();
    for (family, kind) in &parsed.types {
        let suffixes: &[&str] = match kind {
            MetricType::Counter => &["_total"],
            MetricType::Histogram | MetricType::GaugeHistogram => &["_bucket", "_sum", "_count"],
            MetricType::Summary => &["", "_sum", "_count"],
            MetricType::Info => &["_info"],
            _ => &[""],
        };
        names.extend(suffixes.iter().map(|suffix| format!("{family}{suffix}")));
    }
    names
}

/// The controller's exposition once every family holds a series. A labelled family is encoded
/// only once it has one, so each recording method is called once, as the controller calls them.
fn controller_exposition() -> String {
    let m = devheal_controller::Metrics::new();
    let kind = devheal_controller::ObjectKind::NodeDeviceHealth;
    m.action("evict_pod", "done");
    m.standby_action("evict_pod");
    m.retries_exhausted("evict_pod");
    m.status_write("done");
    m.decision_latency(std::time::Duration::from_millis(1));
    m.watch_event(kind);
    m.inputs(kind, 1);
    m.relist(kind);
    m.watch_error(kind);
    m.rejected(kind, 1);
    m.progress_finding("hang");
    m.state_store("saved");
    m.settings_reload("applied");
    m.foreign_claim("device");
    m.indexed(kind, 1);
    m.set_leader(true);
    m.safety(&devheal_core::SafetyState::default());
    m.checkpoint_advice(&[devheal_controller::checkpoint_advice::Advice {
        gang: devheal_core::GangId { namespace: "ml".into(), kind: "jobset".into(), name: "llama".into() },
        interruptions: 2,
        mean_time_to_interrupt_s: 21_600.0,
        write_seconds: 60.0,
        interval_s: 1_584.0,
    }]);
    m.encode()
}

/// The agent's exposition once every family holds a series.
fn agent_exposition() -> String {
    use devheal_agent::metrics::{
        AgentMetrics, DeviceLabels, HealthLabel, PhaseLabel, SourceLabel, StateLabel,
    };
    let m = AgentMetrics::new();
    let gpu = DeviceLabels {
        UUID: "GPU-1".into(),
        resource: "nvidia.com/gpu".into(),
        pci_bus_id: "0000:18:00.0".into(),
        namespace: "ml".into(),
        pod: "p".into(),
        container: "c".into(),
    };
    m.device_health.get_or_create(&gpu).set(2);
    m.devices.get_or_create(&HealthLabel { health: "Unhealthy".into() }).set(1);
    m.source_available.get_or_create(&SourceLabel { source: "kmsg".into() }).set(1);
    m.published("status", true);
    m.published("status", false);
    m.progress_report(202);
    m.progress_steps(1, 1);
    m.scraped(true);
    m.nic_link_changes.get_or_create(&StateLabel { state: "down" }).inc();
    m.device_resets.get_or_create(&PhaseLabel { phase: "Failed" }).inc();
    m.render()
}

/// Every name devheal's two processes export, and the series Prometheus adds per target.
fn devheal_metrics() -> BTreeSet<String> {
    let mut names = exported_names(&controller_exposition());
    names.extend(exported_names(&agent_exposition()));
    names.extend(PROMETHEUS_TARGET_SERIES.iter().map(|s| s.to_string()));
    names
}

/// What is wrong with one query: a name devheal does not export, or a query that cannot be read.
fn check_query(query: &str, known: &BTreeSet<String>) -> Vec<String> {
    match metric_names(query) {
        Ok(names) if names.is_empty() => vec![format!("names no metric: {query}")],
        Ok(names) => names
            .into_iter()
            .filter(|n| !known.contains(n))
            .map(|n| format!("`{n}` is not a metric devheal exports: {query}"))
            .collect(),
        Err(e) => vec![format!("{e}: {query}")],
    }
}

fn monitoring_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/monitoring")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// One alerting rule as the file holds it.
#[derive(Debug, serde::Deserialize)]
struct RuleFile {
    groups: Vec<RuleGroup>,
}

#[derive(Debug, serde::Deserialize)]
struct RuleGroup {
    name: String,
    rules: Vec<Rule>,
}

#[derive(Debug, serde::Deserialize)]
struct Rule {
    alert: Option<String>,
    record: Option<String>,
    expr: String,
    #[serde(default)]
    labels: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    annotations: std::collections::BTreeMap<String, String>,
}

fn rules() -> RuleFile {
    let path = monitoring_dir().join("devheal-alerts.yaml");
    serde_saphyr::from_str(&read(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn dashboard() -> Json {
    let path = monitoring_dir().join("devheal-dashboard.json");
    serde_json::from_str(&read(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every PromQL query in a dashboard: each `expr` anywhere (panel targets, rows' panels), and
/// each query variable's `label_values(<expr>, label)` or query.
fn dashboard_queries(dashboard: &Json) -> Vec<String> {
    fn walk(v: &Json, out: &mut Vec<String>) {
        match v {
            Json::Object(map) => {
                for (k, child) in map {
                    match (k.as_str(), child) {
                        ("expr", Json::String(s)) => out.push(s.clone()),
                        _ => walk(child, out),
                    }
                }
            }
            Json::Array(items) => items.iter().for_each(|c| walk(c, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(dashboard, &mut out);
    let variables =
        dashboard.pointer("/templating/list").and_then(Json::as_array).cloned().unwrap_or_default();
    for var in variables.iter().filter(|v| v["type"] == "query") {
        let query = match &var["query"] {
            Json::String(s) => s.clone(),
            Json::Object(o) => o.get("query").and_then(Json::as_str).unwrap_or_default().to_string(),
            _ => String::new(),
        };
        out.push(variable_expr(&query).to_string());
    }
    out
}

/// The expression inside Grafana's `label_values(<expr>, <label>)`; any other query as it is.
fn variable_expr(query: &str) -> &str {
    let q = query.trim();
    let Some(inner) = q.strip_prefix("label_values(").and_then(|r| r.strip_suffix(')')) else { return q };
    // The label is after the last comma outside braces.
    let mut depth = 0i32;
    let mut split = None;
    for (i, c) in inner.char_indices() {
        match c {
            '{' | '(' => depth += 1,
            '}' | ')' => depth -= 1,
            ',' if depth == 0 => split = Some(i),
            _ => {}
        }
    }
    match split {
        Some(i) => inner[..i].trim(),
        None => inner.trim(),
    }
}

#[test]
fn every_alert_expression_names_a_metric_devheal_exports() {
    let known = devheal_metrics();
    let file = rules();
    let mut problems = Vec::new();
    let mut checked = 0;
    for group in &file.groups {
        for rule in &group.rules {
            let name = rule.alert.as_deref().or(rule.record.as_deref()).unwrap_or("?");
            problems.extend(
                check_query(&rule.expr, &known).into_iter().map(|p| format!("{}/{name}: {p}", group.name)),
            );
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} rules in devheal-alerts.yaml");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_dashboard_query_names_a_metric_devheal_exports() {
    let known = devheal_metrics();
    let queries = dashboard_queries(&dashboard());
    assert!(queries.len() >= 15, "only {} queries in devheal-dashboard.json", queries.len());
    let problems: Vec<String> = queries.iter().flat_map(|q| check_query(q, &known)).collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_alert_has_a_severity_a_summary_a_description_and_a_runbook_section() {
    let docs = read(&monitoring_dir().join("../../docs/monitoring.md"));
    // GitHub's anchors for `### Name` headings: lower case, spaces to dashes.
    let anchors: BTreeSet<String> = docs
        .lines()
        .filter_map(|l| l.strip_prefix("### "))
        .map(|h| h.trim().to_ascii_lowercase().replace(' ', "-"))
        .collect();
    let mut problems = Vec::new();
    for rule in rules().groups.iter().flat_map(|g| &g.rules) {
        let Some(alert) = &rule.alert else { continue };
        match rule.labels.get("severity").map(String::as_str) {
            Some("critical" | "warning" | "info") => {}
            other => problems.push(format!("{alert}: severity {other:?}")),
        }
        for key in ["summary", "description", "runbook_url"] {
            if rule.annotations.get(key).is_none_or(|v| v.trim().is_empty()) {
                problems.push(format!("{alert}: no {key}"));
            }
        }
        let anchor = alert.to_ascii_lowercase();
        let runbook = rule.annotations.get("runbook_url").map(String::as_str).unwrap_or_default();
        if !runbook.ends_with(&format!("docs/monitoring.md#{anchor}")) {
            problems.push(format!("{alert}: runbook_url {runbook:?} is not docs/monitoring.md#{anchor}"));
        }
        if !anchors.contains(&anchor) {
            problems.push(format!("{alert}: docs/monitoring.md has no `### {alert}` section"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_dashboard_panel_queries_the_templated_datasource() {
    let dash = dashboard();
    let variables = dash.pointer("/templating/list").and_then(Json::as_array).cloned().unwrap_or_default();
    assert!(
        variables
            .iter()
            .any(|v| v["name"] == "datasource" && v["type"] == "datasource" && v["query"] == "prometheus"),
        "no `datasource` variable of type datasource for Prometheus"
    );
    fn panels(v: &Json, out: &mut Vec<Json>) {
        for p in v["panels"].as_array().into_iter().flatten() {
            out.push(p.clone());
            panels(p, out);
        }
    }
    let mut all = Vec::new();
    panels(&dash, &mut all);
    let mut problems = Vec::new();
    for p in all.iter().filter(|p| p["type"] != "row") {
        let title = p["title"].as_str().unwrap_or("?");
        if p["datasource"]["uid"] != "${datasource}" {
            problems.push(format!("panel {title:?}: datasource {}", p["datasource"]));
        }
        let targets = p["targets"].as_array().cloned().unwrap_or_default();
        if targets.is_empty() {
            problems.push(format!("panel {title:?}: no queries"));
        }
        for t in &targets {
            if t["datasource"]["uid"] != "${datasource}" {
                problems.push(format!("panel {title:?}: a target's datasource is {}", t["datasource"]));
            }
        }
    }
    assert!(all.len() >= 10, "only {} panels", all.len());
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_exported_names_come_from_the_registries_with_their_suffixes() {
    let known = devheal_metrics();
    for name in [
        "devheal_controller_actions_total",
        "devheal_controller_decision_latency_seconds_bucket",
        "devheal_controller_decision_latency_seconds_sum",
        "devheal_controller_decision_latency_seconds_count",
        "devheal_controller_leader",
        "devheal_agent_devices",
        "devheal_agent_progress_reports_total",
        "devheal_agent_last_publish_timestamp_seconds",
    ] {
        assert!(known.contains(name), "{name} missing from {known:?}");
    }
    // A counter is not queried by its family name, a histogram not by its own.
    assert!(!known.contains("devheal_controller_actions"));
    assert!(!known.contains("devheal_controller_decision_latency_seconds"));
}

/// A family registered in a metrics.rs but never given a series above would be missing from
/// [`devheal_metrics`], and a query naming it refused: count the registrations in the source.
#[test]
fn every_registered_family_is_in_the_exposition_the_check_uses() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for (source, exposition) in [
        ("crates/controller/src/metrics.rs", controller_exposition()),
        ("crates/agent/src/metrics.rs", agent_exposition()),
    ] {
        let registered = read(&root.join(source)).matches("registry.register(").count();
        let families = promtext::parse(&exposition).expect("parses").types.len();
        assert!(registered > 0, "{source}: no registrations found");
        assert_eq!(
            families, registered,
            "{source} registers {registered} families, the exposition the check builds has {families}: give each new family a series in this test"
        );
    }
}

#[test]
fn the_tokenizer_finds_metric_names_and_skips_labels_functions_and_variables() {
    let q = r#"sum by (instance, code) (rate(devheal_agent_progress_reports_total{code=~"4..", job="x"}[$__rate_interval]))
        / ignoring (code) group_left () sum without (code) (rate(devheal_agent_progress_reports_total[5m] offset 1h))
        and on (job, instance) (devheal_controller_leader == bool 1) > 0.1 # a comment naming nothing_here"#;
    assert_eq!(
        metric_names(q),
        Ok(vec![
            "devheal_agent_progress_reports_total".to_string(),
            "devheal_agent_progress_reports_total".to_string(),
            "devheal_controller_leader".to_string(),
        ])
    );
    assert_eq!(
        metric_names(
            "histogram_quantile(0.99, sum by (le) (rate(devheal_controller_decision_latency_seconds_bucket[${interval}])))"
        ),
        Ok(vec!["devheal_controller_decision_latency_seconds_bucket".to_string()])
    );
    assert_eq!(
        metric_names(
            r#"label_replace(up{job=~".*agent.*"}, "node", "$1", "instance", "(.*):.*") or vector(0)"#
        ),
        Ok(vec!["up".to_string()])
    );
    assert_eq!(metric_names("max(x) by (a) @ start()"), Ok(vec!["x".to_string()]));
    assert_eq!(
        variable_expr("label_values(devheal_agent_devices{job=~\"a,b\"}, instance)"),
        "devheal_agent_devices{job=~\"a,b\"}"
    );
}

#[test]
fn the_checker_refuses_a_metric_devheal_does_not_export() {
    let known = devheal_metrics();
    assert!(check_query("devheal_agent_devices{health=\"Unhealthy\"} > 0", &known).is_empty());
    let problems =
        check_query("sum(rate(devheal_controller_action_total[5m])) + devheal_agent_devices", &known);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("`devheal_controller_action_total` is not a metric devheal exports"),
        "{problems:?}"
    );
    // Another exporter's metric is refused too, and a histogram queried by its family name.
    assert_eq!(check_query("DCGM_FI_DEV_GPU_UTIL > 0", &known).len(), 1);
    assert_eq!(check_query("devheal_controller_decision_latency_seconds", &known).len(), 1);
}

#[test]
fn the_checker_refuses_queries_it_cannot_read_or_that_name_no_metric() {
    let known = devheal_metrics();
    let unknown_fn = check_query("ratee(devheal_agent_devices[5m])", &known);
    assert!(
        unknown_fn.len() == 1 && unknown_fn[0].contains("`ratee(` is not a PromQL function"),
        "{unknown_fn:?}"
    );
    let open = check_query("devheal_agent_devices{health=\"Unhealthy\"", &known);
    assert!(open.len() == 1 && open[0].contains("unterminated label matcher"), "{open:?}");
    let string = check_query("devheal_agent_devices{health=\"Unhealthy}", &known);
    assert!(string.len() == 1 && string[0].contains("unterminated"), "{string:?}");
    assert_eq!(check_query("vector(1)", &known).len(), 1);
    assert_eq!(check_query("devheal_agent_devices ; 1", &known).len(), 1);
}

#[test]
fn the_dashboard_walk_finds_nested_targets_and_variable_queries() {
    let dash = serde_json::json!({
        "panels": [
            {"type": "row", "panels": [{"targets": [{"expr": "a_total"}]}]},
            {"targets": [{"expr": "b"}, {"expr": "c"}]}
        ],
        "templating": {"list": [
            {"type": "datasource", "name": "datasource", "query": "prometheus"},
            {"type": "query", "name": "instance", "query": {"query": "label_values(d, instance)"}},
            {"type": "query", "name": "job", "query": "label_values(e{x=\"1\"}, job)"}
        ]}
    });
    let mut queries = dashboard_queries(&dash);
    queries.sort();
    assert_eq!(queries, vec!["a_total", "b", "c", "d", "e{x=\"1\"}"]);
}
