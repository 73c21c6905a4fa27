//! The controller's settings file (`devheal controller --settings FILE`, a ConfigMap's
//! `settings.yaml`): the engine's budgets, breakers, probation and timing, and the progress
//! monitor's hang quorum.
//!
//! Precedence: the built-in defaults, then the file, then `--set key=value` overrides (the
//! command line's named flags become such overrides). Every key is listed once, in [`FIELDS`]:
//! parsing, `--set`, validation messages and `devheal config --print-defaults` all read that
//! table, so a key cannot be known to one and not the others. Keys are camelCase, durations are
//! strings (`"10m"`, `"30s"`, `"1h30m"`, `"500ms"`), and an unknown key is refused with its path
//! (`safety.breakerWindw: unknown key`) rather than ignored.
//!
//! [`SettingsReloader`] reads the file again when its content changed (a ConfigMap volume
//! swaps a symlink, so the content is compared, not the file's inode or mtime); the controller
//! applies what reloads live ([`Field::reloads`]) and keeps the old settings when the new file
//! is invalid.

use std::path::{Path, PathBuf};

use devheal_core::{Duration, SafetySettings};
use serde_json::Value;

use crate::progress::ProgressSettings;

/// Everything the settings file sets.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// The engine's budgets, breakers, probation and timing (`safety.*`).
    pub safety: SafetySettings,
    /// The progress monitor's hang quorum (`progress.hangQuorum`).
    pub hang_quorum: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { safety: SafetySettings::default(), hang_quorum: ProgressSettings::default().hang_quorum }
    }
}

/// A settings file or override that cannot be used. `origin` is the file (or `--set`), `key` the
/// setting's path as written (`safety.breakerWindow`).
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read the settings file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{origin}: not YAML: {message}")]
    Syntax { origin: String, message: String },
    #[error("{origin}: {key}: {reason}")]
    Invalid { origin: String, key: String, reason: String },
}

/// The kind of value a key takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Bool,
    /// A whole number, 0 to 4294967295.
    Count,
    /// A number (percent, ratio, share).
    Number,
    /// A duration string: `"10m"`, `"90s"`, `"1h30m"`, `"500ms"`.
    Duration,
}

/// One setting: its path in the file, what it means, whether a running controller applies a
/// change to it, and how it is read from and written into [`Settings`].
pub struct Field {
    /// `section.key`, as written in the file and in `--set`.
    pub key: &'static str,
    pub kind: Kind,
    /// One line for `--print-defaults` and docs/policy.md.
    pub help: &'static str,
    /// Whether a change of the file reaches a running controller (otherwise at its next start).
    pub reloads: bool,
    get: fn(&Settings) -> Value,
    set: fn(&mut Settings, Value) -> Result<(), String>,
}

impl std::fmt::Debug for Field {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Field").field("key", &self.key).field("kind", &self.kind).finish()
    }
}

impl Field {
    /// This field's value in `settings`, as the file writes it.
    pub fn value(&self, settings: &Settings) -> Value {
        (self.get)(settings)
    }
}

macro_rules! safety_field {
    ($key:literal, $field:ident, $kind:ident, $reloads:literal, $help:literal) => {
        Field {
            key: concat!("safety.", $key),
            kind: Kind::$kind,
            help: $help,
            reloads: $reloads,
            get: |s| to_value(&s.safety.$field),
            set: |s, v| {
                s.safety.$field = from_value(v)?;
                Ok(())
            },
        }
    };
}

/// Every key the file knows, in the order `--print-defaults` writes them.
pub static FIELDS: &[Field] = &[
    safety_field!(
        "quarantineUnhealthyDevices",
        quarantine_unhealthy_devices,
        Bool,
        true,
        "Quarantine a device that turns Unhealthy (DRA DeviceTaintRule or node taint)."
    ),
    safety_field!("requestRepairs", request_repairs, Bool, true, "Ask for the repair an incident calls for."),
    safety_field!(
        "evictPodsOnUnhealthyDevices",
        evict_pods_on_unhealthy_devices,
        Bool,
        true,
        "Evict running non-gang pods bound to a device that turned Unhealthy."
    ),
    safety_field!(
        "maxQuarantinedNodes",
        max_quarantined_nodes,
        Count,
        true,
        "At most this many nodes with quarantined devices or cordons at once..."
    ),
    safety_field!(
        "maxQuarantinedNodesPercent",
        max_quarantined_nodes_percent,
        Number,
        true,
        "...and at most this percent of the fleet (0 to 100)."
    ),
    safety_field!("maxEvictionsPerMinute", max_evictions_per_minute, Count, true, "Evictions in any minute."),
    safety_field!(
        "maxGangRestartsPerHour",
        max_gang_restarts_per_hour,
        Count,
        true,
        "Restarts (and member replacements) of one gang in any hour."
    ),
    safety_field!(
        "maxGangRestartsPerHourPerNamespace",
        max_gang_restarts_per_hour_per_namespace,
        Count,
        true,
        "Gang restarts and member replacements in one namespace in any hour (0: none at all)."
    ),
    safety_field!(
        "maxGangRestartsPerHourCluster",
        max_gang_restarts_per_hour_cluster,
        Count,
        true,
        "Gang restarts and member replacements in the whole cluster in any hour (0: none at all)."
    ),
    safety_field!(
        "progressBreakerRestarts",
        progress_breaker_restarts,
        Count,
        true,
        "Open the progress breaker after this many restarts caused by progress reports alone within progressBreakerWindow (0: never)."
    ),
    safety_field!(
        "progressBreakerWindow",
        progress_breaker_window,
        Duration,
        true,
        "The progress breaker's window (more than 0)."
    ),
    safety_field!(
        "breakerMinNodes",
        breaker_min_nodes,
        Count,
        true,
        "Open the breaker when this many distinct nodes fail within breakerWindow..."
    ),
    safety_field!(
        "breakerNodePercent",
        breaker_node_percent,
        Number,
        true,
        "...and they are at least this percent of the fleet (0 to 100)."
    ),
    safety_field!("breakerWindow", breaker_window, Duration, true, "The breaker's window (more than 0)."),
    safety_field!(
        "breakerCooldown",
        breaker_cooldown,
        Duration,
        true,
        "Close a breaker after this long without a new failure (more than 0)."
    ),
    safety_field!(
        "canaryMinNodes",
        canary_min_nodes,
        Count,
        true,
        "Report a driver/plugin version when at least this many of its nodes failed in the breaker window..."
    ),
    safety_field!(
        "canaryRatio",
        canary_ratio,
        Number,
        true,
        "...and its failure rate is this many times the rest of the fleet's."
    ),
    safety_field!(
        "hangTimeout",
        hang_timeout,
        Duration,
        false,
        "The engine's own hang check; the controller leaves it off and takes hangs from the agents (devheal agent --hang-timeout). Used by devheal sim."
    ),
    safety_field!(
        "probation",
        probation,
        Duration,
        true,
        "A device that is Healthy again stays quarantined this long before release."
    ),
    safety_field!(
        "lemonIncidents",
        lemon_incidents,
        Count,
        true,
        "This many incidents on one device within lemonWindow escalate to inspect_hardware."
    ),
    safety_field!("lemonWindow", lemon_window, Duration, true, "The repeat-offender window."),
    safety_field!(
        "degradedEpisodesToQuarantine",
        degraded_episodes_to_quarantine,
        Count,
        true,
        "This many Degraded episodes of one device within lemonWindow quarantine it (0: never)."
    ),
    safety_field!(
        "degradedReplaceAfter",
        degraded_replace_after,
        Duration,
        true,
        "A member's device must have been Degraded this long before ReplaceAtCheckpoint acts."
    ),
    safety_field!(
        "incidentWindow",
        incident_window,
        Duration,
        true,
        "Kernel incidents count as evidence for a pod failure for this long."
    ),
    safety_field!(
        "restartInPlace",
        restart_in_place,
        Bool,
        true,
        "Restart a gang's healthy members in place where their pods' restart rules allow it (exit 76); false: re-create every member."
    ),
    safety_field!(
        "inPlaceRestartDeadline",
        in_place_restart_deadline,
        Duration,
        true,
        "Members told to restart in place that have not within this long make the gang be re-created (positive)."
    ),
    Field {
        key: "progress.hangQuorum",
        kind: Kind::Number,
        help: "The share of a gang's progress-reporting pods that must all be silent for the gang to be hung (more than 0, at most 1).",
        reloads: false,
        get: |s| to_value(&s.hang_quorum),
        set: |s, v| {
            s.hang_quorum = from_value(v)?;
            Ok(())
        },
    },
];

/// The field a key names.
pub fn field(key: &str) -> Option<&'static Field> {
    FIELDS.iter().find(|f| f.key == key)
}

/// How a setting's Rust type is written in the file.
trait SettingValue: Sized {
    fn to_json(&self) -> Value;
    fn from_json(v: Value) -> Result<Self, String>;
}

impl SettingValue for bool {
    fn to_json(&self) -> Value {
        Value::Bool(*self)
    }
    fn from_json(v: Value) -> Result<Self, String> {
        v.as_bool().ok_or_else(|| format!("must be true or false, not {v}"))
    }
}

impl SettingValue for u32 {
    fn to_json(&self) -> Value {
        Value::from(*self)
    }
    fn from_json(v: Value) -> Result<Self, String> {
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| format!("must be a whole number from 0 to {}, not {v}", u32::MAX))
    }
}

impl SettingValue for f64 {
    fn to_json(&self) -> Value {
        serde_json::Number::from_f64(*self).map(Value::Number).unwrap_or(Value::Null)
    }
    fn from_json(v: Value) -> Result<Self, String> {
        v.as_f64().filter(|x| x.is_finite()).ok_or_else(|| format!("must be a number, not {v}"))
    }
}

impl SettingValue for Duration {
    fn to_json(&self) -> Value {
        Value::String(format_duration(*self))
    }
    fn from_json(v: Value) -> Result<Self, String> {
        match &v {
            Value::String(s) => parse_duration(s),
            _ => Err(format!("must be a duration string such as \"10m\", \"90s\" or \"1h30m\", not {v}")),
        }
    }
}

fn to_value<T: SettingValue>(v: &T) -> Value {
    v.to_json()
}

fn from_value<T: SettingValue>(v: Value) -> Result<T, String> {
    T::from_json(v)
}

/// `"90s"`, `"2m"`, `"1h30m"`, `"500ms"`, `"168h"`; `"0s"` (or `"0"`) is zero.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration (write 90s, 10m, 1h30m, 500ms)");
    let text = text.trim();
    if text.is_empty() {
        return Err(bad());
    }
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total: i64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        let number: i64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let scale: i64 = match &rest[..unit] {
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(bad()),
        };
        total = number.checked_mul(scale).and_then(|n| total.checked_add(n)).ok_or_else(bad)?;
        rest = &rest[unit..];
    }
    Ok(Duration::from_nanos(total))
}

/// The shortest string [`parse_duration`] reads back as `d`: `"10m"`, `"168h"`, `"1m30s"`.
pub fn format_duration(d: Duration) -> String {
    let mut ns = d.as_nanos();
    if ns <= 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, scale) in
        [("h", 3_600_000_000_000i64), ("m", 60_000_000_000), ("s", 1_000_000_000), ("ms", 1_000_000)]
    {
        if ns >= scale {
            out.push_str(&format!("{}{unit}", ns / scale));
            ns %= scale;
        }
    }
    if ns > 0 {
        // Below a millisecond: no unit reads it back; round up to the next millisecond.
        let ms_total = (d.as_nanos() - 1) / 1_000_000 + 1;
        return format_duration(Duration::from_millis(ms_total));
    }
    out
}

impl Settings {
    /// Read a settings file over the defaults.
    pub fn from_path(path: &Path) -> Result<Settings, SettingsError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| SettingsError::Read { path: path.display().to_string(), source })?;
        let mut settings = Settings::default();
        settings.merge_yaml(&text, &path.display().to_string())?;
        Ok(settings)
    }

    /// Set every key `text` (a YAML or JSON map of sections) names; `origin` names the text in
    /// errors. An empty file, or one of comments only, sets nothing.
    pub fn merge_yaml(&mut self, text: &str, origin: &str) -> Result<(), SettingsError> {
        let invalid = |key: &str, reason: String| SettingsError::Invalid {
            origin: origin.into(),
            key: key.into(),
            reason,
        };
        let root: Value = if text.lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with('#')) {
            Value::Null
        } else {
            serde_saphyr::from_str(text)
                .map_err(|e| SettingsError::Syntax { origin: origin.into(), message: e.to_string() })?
        };
        let sections = match root {
            Value::Null => return Ok(()),
            Value::Object(map) => map,
            other => return Err(invalid("(top level)", format!("must be a map of sections, not {other}"))),
        };
        for (section, body) in sections {
            if !FIELDS.iter().any(|f| f.key.split('.').next() == Some(section.as_str())) {
                return Err(invalid(
                    &section,
                    format!("unknown section (known: {})", section_names().join(", ")),
                ));
            }
            let keys = match body {
                Value::Null => continue,
                Value::Object(map) => map,
                other => return Err(invalid(&section, format!("must be a map, not {other}"))),
            };
            for (key, value) in keys {
                let path = format!("{section}.{key}");
                let Some(field) = field(&path) else {
                    return Err(invalid(&path, format!("unknown key{}", suggestion(&path))));
                };
                (field.set)(self, value).map_err(|reason| invalid(&path, reason))?;
            }
        }
        Ok(())
    }

    /// Apply one `key=value` override (`safety.breakerWindow=10m`); the value is read as YAML.
    pub fn set(&mut self, assignment: &str) -> Result<(), SettingsError> {
        let invalid = |key: &str, reason: String| SettingsError::Invalid {
            origin: "--set".into(),
            key: key.into(),
            reason,
        };
        let Some((key, text)) = assignment.split_once('=') else {
            return Err(invalid(assignment, "write key=value, e.g. safety.maxEvictionsPerMinute=10".into()));
        };
        let key = key.trim();
        let Some(field) = field(key) else {
            return Err(invalid(key, format!("unknown key{}", suggestion(key))));
        };
        let text = text.trim();
        let value = match field.kind {
            // "10m" needs no quotes on a command line.
            Kind::Duration => Value::String(text.trim_matches('"').to_string()),
            _ => serde_saphyr::from_str(text).map_err(|e| invalid(key, format!("not a value: {e}")))?,
        };
        (field.set)(self, value).map_err(|reason| invalid(key, reason))
    }

    /// Check every setting; the error names the key as written in the file.
    pub fn validate(&self, origin: &str) -> Result<(), SettingsError> {
        let invalid = |key: &str, reason: String| SettingsError::Invalid {
            origin: origin.into(),
            key: key.into(),
            reason,
        };
        if let Err(devheal_core::SafetySettingsError::Invalid { field, reason }) = self.safety.validate() {
            return Err(invalid(&format!("safety.{field}"), reason));
        }
        let s = &self.safety;
        for (key, percent) in [
            ("safety.maxQuarantinedNodesPercent", s.max_quarantined_nodes_percent),
            ("safety.breakerNodePercent", s.breaker_node_percent),
        ] {
            if !(0.0..=100.0).contains(&percent) {
                return Err(invalid(key, format!("must be from 0 to 100, not {percent}")));
            }
        }
        if s.canary_ratio <= 0.0 {
            return Err(invalid(
                "safety.canaryRatio",
                format!("must be more than 0, not {}", s.canary_ratio),
            ));
        }
        if self.hang_quorum <= 0.0 || self.hang_quorum > 1.0 {
            return Err(invalid(
                "progress.hangQuorum",
                format!("must be more than 0 and at most 1, not {}", self.hang_quorum),
            ));
        }
        Ok(())
    }

    /// The defaults < `file` < `overrides` settings, validated.
    pub fn load(file: Option<&Path>, overrides: &[String]) -> Result<Settings, SettingsError> {
        let mut settings = match file {
            Some(path) => Settings::from_path(path)?,
            None => Settings::default(),
        };
        for assignment in overrides {
            settings.set(assignment)?;
        }
        // A value the command line set is not blamed on the file alone.
        let origin = match (file, overrides.is_empty()) {
            (Some(path), true) => path.display().to_string(),
            (Some(path), false) => format!("{} with the command line's settings", path.display()),
            (None, _) => "settings".into(),
        };
        settings.validate(&origin)?;
        Ok(settings)
    }

    /// The whole file with every key, its value and (as a comment) its meaning; whether a change
    /// reaches a running controller is said per key. [`Settings::merge_yaml`] reads it back.
    pub fn to_commented_yaml(&self) -> String {
        let mut out = String::from(
            "# devheal controller settings (docs/policy.md, \"Settings\"). Every key is optional; a key\n\
             # left out keeps its built-in default. Durations are strings: \"90s\", \"10m\", \"1h30m\".\n\
             # [reloads]: a running controller applies a change within seconds; [restart]: at its\n\
             # next start.\n",
        );
        let mut section = "";
        for f in FIELDS {
            let (s, key) = f.key.split_once('.').unwrap_or(("", f.key));
            if s != section {
                out.push_str(&format!("{s}:\n"));
                section = s;
            }
            let when = if f.reloads { "reloads" } else { "restart" };
            out.push_str(&format!("  # {} [{when}]\n", f.help));
            let value = match f.value(self) {
                Value::String(text) => format!("\"{text}\""),
                other => other.to_string(),
            };
            out.push_str(&format!("  {key}: {value}\n"));
        }
        out
    }
}

fn section_names() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = FIELDS.iter().filter_map(|f| f.key.split('.').next()).collect();
    names.dedup();
    names
}

/// ` (did you mean safety.breakerWindow?)` when a known key differs only in case, or by one
/// letter left out, added or changed.
fn suggestion(key: &str) -> String {
    let close = |a: &str, b: &str| {
        if a.eq_ignore_ascii_case(b) {
            return true;
        }
        let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
        let (short, long) = if a.len() <= b.len() { (&a, &b) } else { (&b, &a) };
        match long.len() - short.len() {
            0 => a.iter().zip(b.iter()).filter(|(x, y)| x != y).count() == 1,
            1 => (0..long.len()).any(|skip| {
                long.iter().enumerate().filter(|(i, _)| *i != skip).map(|(_, c)| c).eq(short.iter())
            }),
            _ => false,
        }
    };
    match FIELDS.iter().find(|f| close(f.key, key)) {
        Some(f) => format!(" (did you mean {}?)", f.key),
        None => String::new(),
    }
}

/// What one look at the settings file came to.
#[derive(Debug)]
pub enum ReloadOutcome {
    /// The content is what was last read.
    Unchanged,
    /// New content, valid: the settings to apply.
    Applied(Box<Settings>),
    /// New content that cannot be used: the old settings stay.
    Invalid(SettingsError),
}

impl ReloadOutcome {
    /// The `outcome` label of `devheal_controller_settings_reloads_total`.
    pub fn label(&self) -> Option<&'static str> {
        match self {
            ReloadOutcome::Unchanged => None,
            ReloadOutcome::Applied(_) => Some("applied"),
            ReloadOutcome::Invalid(SettingsError::Read { .. }) => Some("unreadable"),
            ReloadOutcome::Invalid(_) => Some("invalid"),
        }
    }
}

/// Reads the settings file again when its content changed, with the same overrides as at start
/// (so a flag keeps winning over the file).
#[derive(Debug)]
pub struct SettingsReloader {
    path: PathBuf,
    overrides: Vec<String>,
    /// The content last looked at (valid or not), so one bad edit is reported once.
    last: Option<Vec<u8>>,
}

impl SettingsReloader {
    /// The file's content now is taken as the one the running settings were read from.
    pub fn new(path: PathBuf, overrides: Vec<String>) -> Self {
        let last = std::fs::read(&path).ok();
        SettingsReloader { path, overrides, last }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Look at the file once.
    pub fn poll(&mut self) -> ReloadOutcome {
        let content = match std::fs::read(&self.path) {
            Ok(c) => c,
            Err(source) => {
                // Reported once per disappearance; the same content coming back is a change.
                if self.last.take().is_none() {
                    return ReloadOutcome::Unchanged;
                }
                return ReloadOutcome::Invalid(SettingsError::Read {
                    path: self.path.display().to_string(),
                    source,
                });
            }
        };
        if self.last.as_ref() == Some(&content) {
            return ReloadOutcome::Unchanged;
        }
        self.last = Some(content);
        match Settings::load(Some(&self.path), &self.overrides) {
            Ok(s) => ReloadOutcome::Applied(Box::new(s)),
            Err(e) => ReloadOutcome::Invalid(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Settings, SettingsError> {
        let mut s = Settings::default();
        s.merge_yaml(text, "settings.yaml")?;
        s.validate("settings.yaml")?;
        Ok(s)
    }

    #[test]
    fn the_printed_defaults_read_back_as_the_defaults_and_name_every_key() {
        let text = Settings::default().to_commented_yaml();
        assert_eq!(parse(&text).expect("the printed defaults parse"), Settings::default());
        for f in FIELDS {
            let key = f.key.split_once('.').unwrap().1;
            assert!(text.contains(&format!("  {key}: ")), "{} is missing:\n{text}", f.key);
        }
        // Changed settings print and read back too (durations with several units, fractions).
        let mut changed = Settings::default();
        changed.safety.breaker_window = Duration::from_secs(90);
        changed.safety.lemon_window = Duration::from_millis(3_600_500);
        changed.safety.breaker_node_percent = 2.5;
        changed.safety.request_repairs = false;
        changed.hang_quorum = 0.75;
        assert_eq!(parse(&changed.to_commented_yaml()).expect("parses"), changed);
    }

    #[test]
    fn durations_are_strings_with_units() {
        assert_eq!(parse_duration("10m"), Ok(Duration::from_mins(10)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_mins(90)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "10", "1.5h", "10x", "-3s", "m"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} must be refused");
        }
        assert_eq!(format_duration(Duration::from_hours(168)), "168h");
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_duration(Duration::ZERO), "0s");
    }

    #[test]
    fn a_file_sets_only_the_keys_it_names() {
        let s =
            parse("safety:\n  maxEvictionsPerMinute: 5\n  breakerWindow: 2m\nprogress:\n  hangQuorum: 1\n")
                .expect("parses");
        assert_eq!(s.safety.max_evictions_per_minute, 5);
        assert_eq!(s.safety.breaker_window, Duration::from_mins(2));
        assert_eq!(s.hang_quorum, 1.0);
        assert_eq!(s.safety.max_gang_restarts_per_hour, SafetySettings::default().max_gang_restarts_per_hour);
        // JSON is YAML; an empty file or comments only is the defaults.
        let json = parse(r#"{"safety": {"maxGangRestartsPerHourCluster": 7}}"#).expect("JSON parses");
        assert_eq!(json.safety.max_gang_restarts_per_hour_cluster, 7);
        assert_eq!(parse("").expect("empty"), Settings::default());
        assert_eq!(parse("# nothing\n{}\n").expect("comments"), Settings::default());
    }

    #[test]
    fn errors_name_the_file_and_the_key() {
        for (text, expected) in [
            (
                "safety:\n  breakerWindw: 5m\n",
                "settings.yaml: safety.breakerWindw: unknown key (did you mean safety.breakerWindow?)",
            ),
            ("budgets:\n  x: 1\n", "settings.yaml: budgets: unknown section"),
            ("safety:\n  breakerWindow: 0s\n", "settings.yaml: safety.breakerWindow: must be positive"),
            (
                "safety:\n  breakerWindow: 300\n",
                "settings.yaml: safety.breakerWindow: must be a duration string",
            ),
            (
                "safety:\n  maxQuarantinedNodes: -1\n",
                "settings.yaml: safety.maxQuarantinedNodes: must be a whole number",
            ),
            (
                "safety:\n  requestRepairs: \"no\"\n",
                "settings.yaml: safety.requestRepairs: must be true or false",
            ),
            (
                "safety:\n  maxQuarantinedNodesPercent: 150\n",
                "settings.yaml: safety.maxQuarantinedNodesPercent: must be from 0 to 100",
            ),
            ("progress:\n  hangQuorum: 0\n", "settings.yaml: progress.hangQuorum: must be more than 0"),
            ("safety: [1]\n", "settings.yaml: safety: must be a map"),
            ("safety: {breakerWindow: [\n", "settings.yaml: not YAML"),
        ] {
            let err = parse(text).expect_err(text).to_string();
            assert!(err.starts_with(expected), "{text:?}: {err}");
        }
    }

    #[test]
    fn overrides_win_over_the_file_and_the_file_over_the_defaults() {
        let dir = std::env::temp_dir().join(format!("devheal-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("precedence.yaml");
        std::fs::write(&path, "safety:\n  maxEvictionsPerMinute: 5\n  probation: 1m\n").unwrap();
        let s = Settings::load(Some(&path), &["safety.probation=30s".into()]).expect("loads");
        assert_eq!(s.safety.max_evictions_per_minute, 5, "the file over the default");
        assert_eq!(s.safety.probation, Duration::from_secs(30), "the override over the file");
        assert_eq!(s.safety.breaker_min_nodes, SafetySettings::default().breaker_min_nodes, "the default");
        let err = Settings::load(Some(&path), &["safety.probaton=1m".into()]).unwrap_err().to_string();
        assert!(
            err.starts_with("--set: safety.probaton: unknown key (did you mean safety.probation?)"),
            "{err}"
        );
        let err = Settings::load(Some(&path), &["safety.breakerCooldown=0s".into()]).unwrap_err().to_string();
        assert!(
            err.contains(
                "precedence.yaml with the command line's settings: safety.breakerCooldown: must be positive"
            ),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_reloader_reports_new_content_once_and_keeps_the_overrides() {
        let dir = std::env::temp_dir().join(format!("devheal-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("settings.yaml");
        std::fs::write(&path, "safety:\n  maxEvictionsPerMinute: 5\n").unwrap();
        let mut reloader = SettingsReloader::new(path.clone(), vec!["safety.maxQuarantinedNodes=3".into()]);
        assert!(matches!(reloader.poll(), ReloadOutcome::Unchanged));

        std::fs::write(&path, "safety:\n  maxEvictionsPerMinute: 7\n").unwrap();
        match reloader.poll() {
            ReloadOutcome::Applied(s) => {
                assert_eq!(s.safety.max_evictions_per_minute, 7);
                assert_eq!(s.safety.max_quarantined_nodes, 3, "the override still wins");
            }
            other => panic!("expected the new settings, got {other:?}"),
        }
        assert!(matches!(reloader.poll(), ReloadOutcome::Unchanged));

        std::fs::write(&path, "safety:\n  breakerWindow: 0s\n").unwrap();
        let outcome = reloader.poll();
        assert_eq!(outcome.label(), Some("invalid"), "{outcome:?}");
        assert!(matches!(reloader.poll(), ReloadOutcome::Unchanged), "one bad edit is reported once");

        std::fs::remove_file(&path).unwrap();
        assert_eq!(reloader.poll().label(), Some("unreadable"));
        assert!(matches!(reloader.poll(), ReloadOutcome::Unchanged));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn docs_policy_lists_every_key_with_its_default_and_whether_it_reloads() {
        let docs = include_str!("../../../docs/policy.md");
        for f in FIELDS {
            let value = match f.value(&Settings::default()) {
                Value::String(text) => format!("\"{text}\""),
                other => other.to_string(),
            };
            let reload = if f.reloads { "live" } else { "restart" };
            let row = format!("| `{}` | `{value}` | {reload} |", f.key);
            assert!(docs.contains(&row), "docs/policy.md lacks the row {row}");
        }
    }
}
