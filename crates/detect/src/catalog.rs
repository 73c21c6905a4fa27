//! Fault catalogs: what each Xid and each other kernel event means and what to do about it,
//! as versioned data (`crates/detect/catalogs/xid.yaml`) compiled in as the default and
//! overridable by an operator's file at run time.
//!
//! An operator file has the same shape as the built-in one; every entry it names replaces the
//! built-in entry with the same key (Xid code or event name), everything else keeps the built-in
//! value. Errors name the file and the line.

use std::collections::BTreeMap;
use std::path::Path;

use devheal_core::{Attribution, Health, RepairKind};
use serde::Deserialize;
use serde_saphyr::Spanned;

/// The built-in catalog file.
pub const BUILTIN_CATALOG_YAML: &str = include_str!("../catalogs/xid.yaml");

/// Events other than Xids that the classifier reports, as `kind.variant`.
pub const EVENT_NAMES: &[&str] = &[
    "nvidia_sxid.fatal",
    "nvidia_sxid.non_fatal",
    "nvidia_fallen_off_bus.fallen_off_bus",
    "nvidia_init_failure.rm_init_adapter",
    "pcie_aer.corrected",
    "pcie_aer.non_fatal",
    "pcie_aer.fatal",
    "pcie_aer.recovery_failed",
    "amdgpu.ring_timeout",
    "amdgpu.ring_reset_failed",
    "amdgpu.reset_begin",
    "amdgpu.reset_succeeded",
    "amdgpu.reset_failed",
    "amdgpu.ras_correctable",
    "amdgpu.ras_uncorrectable",
    "amdgpu.page_fault",
    "mce.corrected",
    "mce.uncorrected",
    "mce.fatal",
    "mce.logged",
    "nvidia_gsp.heartbeat_timeout",
    "nvidia_gsp.rpc_timeout",
    "edac.corrected",
    "edac.uncorrected",
    "habanalabs.heartbeat_failed",
    "intel_gpu.gpu_hang",
    "intel_gpu.job_timeout",
    "intel_gpu.reset_failed",
    "intel_gpu.wedged",
    "nic_link.down",
    "nic_link.up",
];

/// What a catalog says about one Xid code or event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogEntry {
    /// NVIDIA's mnemonic for an Xid (`GPU_HAS_FALLEN_OFF_THE_BUS`), if any.
    pub mnemonic: Option<String>,
    /// A short lower-case phrase: what happened.
    pub summary: String,
    /// NVIDIA's resolution bucket, kept for reference (`RESTART_BM`).
    pub nvidia_bucket: Option<String>,
    pub attribution: Attribution,
    pub health: Health,
    pub action: RepairKind,
}

/// A loaded catalog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Catalog {
    version: String,
    origin: String,
    xids: BTreeMap<u32, CatalogEntry>,
    default_xid: CatalogEntry,
    events: BTreeMap<String, CatalogEntry>,
}

/// A catalog that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("cannot read catalog {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("catalog {origin} is not valid: {message}")]
    Syntax { origin: String, message: String },
    #[error("catalog {origin}, line {line}, field `{field}`: {message}")]
    Invalid { origin: String, line: u64, field: String, message: String },
}

/// Health as written in catalog files (lower case, matching `classify-log` output).
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
enum HealthName {
    Healthy,
    Degraded,
    Unhealthy,
}

impl From<HealthName> for Health {
    fn from(name: HealthName) -> Health {
        match name {
            HealthName::Healthy => Health::Healthy,
            HealthName::Degraded => Health::Degraded,
            HealthName::Unhealthy => Health::Unhealthy,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalog {
    version: Spanned<String>,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    default_xid: Option<RawEntry>,
    #[serde(default)]
    xid: Vec<RawEntry>,
    #[serde(default)]
    events: Vec<RawEntry>,
}

/// One catalog entry as written: `code` in the `xid` list, `event` in the `events` list.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    #[serde(default)]
    code: Option<Spanned<u32>>,
    #[serde(default)]
    event: Option<Spanned<String>>,
    #[serde(default)]
    mnemonic: Option<String>,
    summary: Spanned<String>,
    #[serde(default)]
    nvidia_bucket: Option<String>,
    attribution: Attribution,
    health: HealthName,
    action: RepairKind,
}

impl RawEntry {
    fn into_entry(self, origin: &str) -> Result<CatalogEntry, CatalogError> {
        let summary = self.summary.value.trim().to_string();
        if summary.is_empty() {
            return Err(CatalogError::Invalid {
                origin: origin.to_string(),
                line: self.summary.referenced.line(),
                field: "summary".into(),
                message: "must not be empty".into(),
            });
        }
        Ok(CatalogEntry {
            mnemonic: self.mnemonic,
            summary,
            nvidia_bucket: self.nvidia_bucket,
            attribution: self.attribution,
            health: self.health.into(),
            action: self.action,
        })
    }
}

impl Catalog {
    /// The catalog compiled into devheal (parsed once per process).
    pub fn builtin() -> Catalog {
        static BUILTIN: std::sync::LazyLock<Catalog> = std::sync::LazyLock::new(|| {
            match Catalog::parse(BUILTIN_CATALOG_YAML, "built-in xid.yaml", None) {
                Ok(catalog) => catalog,
                // The built-in file is checked by the tests below; this is unreachable in a
                // build whose tests pass, and an empty-but-valid catalog is the safest fallback.
                Err(_) => Catalog::empty(),
            }
        });
        BUILTIN.clone()
    }

    fn empty() -> Catalog {
        Catalog {
            version: "none".into(),
            origin: "empty".into(),
            xids: BTreeMap::new(),
            default_xid: CatalogEntry {
                mnemonic: None,
                summary: "an Xid the catalog does not list".into(),
                nvidia_bucket: None,
                attribution: Attribution::Unknown,
                health: Health::Degraded,
                action: RepairKind::None,
            },
            events: BTreeMap::new(),
        }
    }

    /// Load an operator's catalog text; entries it does not name keep the built-in value.
    /// `origin` names the text in errors (usually the file name).
    pub fn from_yaml_str(text: &str, origin: &str) -> Result<Catalog, CatalogError> {
        Self::parse(text, origin, Some(Catalog::builtin()))
    }

    /// Load an operator's catalog file; entries it does not name keep the built-in value.
    pub fn from_path(path: &Path) -> Result<Catalog, CatalogError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| CatalogError::Read { path: path.display().to_string(), source })?;
        Self::from_yaml_str(&text, &path.display().to_string())
    }

    fn parse(text: &str, origin: &str, base: Option<Catalog>) -> Result<Catalog, CatalogError> {
        let raw: RawCatalog = serde_saphyr::from_str(text)
            .map_err(|err| CatalogError::Syntax { origin: origin.to_string(), message: err.to_string() })?;
        let invalid = |line: u64, field: &str, message: String| CatalogError::Invalid {
            origin: origin.to_string(),
            line,
            field: field.to_string(),
            message,
        };
        let version = raw.version.value.trim().to_string();
        if version.is_empty() {
            return Err(invalid(raw.version.referenced.line(), "version", "must not be empty".into()));
        }
        let _ = raw.source;
        let base_is_none = base.is_none();
        let mut catalog = base.unwrap_or_else(Catalog::empty);
        catalog.version = version;
        catalog.origin = origin.to_string();
        if let Some(default_xid) = raw.default_xid {
            catalog.default_xid = default_xid.into_entry(origin)?;
        } else if base_is_none {
            return Err(invalid(raw.version.referenced.line(), "default_xid", "is required".into()));
        }
        let mut seen_codes = BTreeMap::new();
        for xid in raw.xid {
            let summary_line = xid.summary.referenced.line();
            let Some(code) = xid.code.clone() else {
                return Err(invalid(summary_line, "code", "every `xid` entry needs a `code`".into()));
            };
            let line = code.referenced.line();
            if xid.event.is_some() {
                return Err(invalid(line, "event", "`xid` entries take a `code`, not an `event`".into()));
            }
            if let Some(first) = seen_codes.insert(code.value, line) {
                return Err(invalid(
                    line,
                    "code",
                    format!("Xid {} is listed twice (first at line {first})", code.value),
                ));
            }
            catalog.xids.insert(code.value, xid.into_entry(origin)?);
        }
        let mut seen_events = BTreeMap::new();
        for event in raw.events {
            let summary_line = event.summary.referenced.line();
            let Some(spanned_name) = event.event.clone() else {
                return Err(invalid(summary_line, "event", "every `events` entry needs an `event`".into()));
            };
            let line = spanned_name.referenced.line();
            if event.code.is_some() {
                return Err(invalid(line, "code", "`events` entries take an `event`, not a `code`".into()));
            }
            let name = spanned_name.value.trim().to_string();
            if !EVENT_NAMES.contains(&name.as_str()) {
                return Err(invalid(
                    line,
                    "event",
                    format!("unknown event `{name}`; known events: {}", EVENT_NAMES.join(", ")),
                ));
            }
            if let Some(first) = seen_events.insert(name.clone(), line) {
                return Err(invalid(
                    line,
                    "event",
                    format!("`{name}` is listed twice (first at line {first})"),
                ));
            }
            catalog.events.insert(name, event.into_entry(origin)?);
        }
        if base_is_none
            && let Some(missing) = EVENT_NAMES.iter().find(|name| !catalog.events.contains_key(**name))
        {
            return Err(invalid(0, "events", format!("event `{missing}` is missing")));
        }
        Ok(catalog)
    }

    /// The catalog's `version:` field.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Where the catalog came from (`built-in xid.yaml` or a file name).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The entry for an Xid code, and whether the catalog lists it (unlisted codes get the
    /// catalog's `default_xid`).
    pub fn xid(&self, code: u32) -> (&CatalogEntry, bool) {
        match self.xids.get(&code) {
            Some(entry) => (entry, true),
            None => (&self.default_xid, false),
        }
    }

    /// The entry for an event (`pcie_aer.fatal`, see [`EVENT_NAMES`]).
    pub fn event(&self, name: &str) -> Option<&CatalogEntry> {
        self.events.get(name)
    }

    /// All listed Xid codes with their entries, in code order.
    pub fn xids(&self) -> impl Iterator<Item = (u32, &CatalogEntry)> {
        self.xids.iter().map(|(code, entry)| (*code, entry))
    }
}

impl Default for Catalog {
    fn default() -> Self {
        Catalog::builtin()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_catalog_parses_and_is_complete() {
        let catalog = Catalog::parse(BUILTIN_CATALOG_YAML, "built-in", None).unwrap();
        assert!(!catalog.version().is_empty());
        for name in EVENT_NAMES {
            assert!(catalog.event(name).is_some(), "{name}");
        }
        assert!(catalog.xids().count() >= 30);
        assert_eq!(Catalog::builtin(), catalog.clone_with_origin("built-in xid.yaml"));
    }

    impl Catalog {
        fn clone_with_origin(mut self, origin: &str) -> Catalog {
            self.origin = origin.into();
            self
        }
    }

    #[test]
    fn application_xids_are_not_device_faults() {
        let catalog = Catalog::builtin();
        for code in [13, 31, 43, 45] {
            let (entry, listed) = catalog.xid(code);
            assert!(listed, "Xid {code}");
            assert_eq!(entry.attribution, Attribution::Application, "Xid {code}");
            assert_eq!(entry.health, Health::Healthy, "Xid {code}");
        }
        let (fallen, _) = catalog.xid(79);
        assert_eq!(fallen.health, Health::Unhealthy);
        assert_eq!(fallen.action, RepairKind::RebootNode);
    }

    #[test]
    fn operator_file_overrides_only_what_it_names() {
        let text = "version: ops-3\nxid:\n  - code: 45\n    summary: teardown\n    attribution: device\n    health: degraded\n    action: reset_device\n";
        let catalog = Catalog::from_yaml_str(text, "ops.yaml").unwrap();
        assert_eq!(catalog.version(), "ops-3");
        assert_eq!(catalog.xid(45).0.action, RepairKind::ResetDevice);
        assert_eq!(catalog.xid(79).0, Catalog::builtin().xid(79).0);
        assert!(catalog.event("pcie_aer.fatal").is_some());
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let dup = "version: x\nxid:\n  - code: 45\n    summary: a\n    attribution: device\n    health: degraded\n    action: none\n  - code: 45\n    summary: b\n    attribution: device\n    health: degraded\n    action: none\n";
        let err = Catalog::from_yaml_str(dup, "ops.yaml").unwrap_err().to_string();
        assert!(err.contains("ops.yaml") && err.contains("line 8") && err.contains("code"), "{err}");

        let bad_event = "version: x\nevents:\n  - event: pcie_aer.bogus\n    summary: a\n    attribution: device\n    health: degraded\n    action: none\n";
        let err = Catalog::from_yaml_str(bad_event, "ops.yaml").unwrap_err().to_string();
        assert!(err.contains("line 3") && err.contains("pcie_aer.bogus"), "{err}");

        let bad_health = "version: x\nxid:\n  - code: 1\n    summary: a\n    attribution: device\n    health: sick\n    action: none\n";
        let err = Catalog::from_yaml_str(bad_health, "ops.yaml").unwrap_err().to_string();
        assert!(err.contains("ops.yaml") && err.contains("sick"), "{err}");

        let typo = "version: x\nxid:\n  - code: 1\n    sumary: a\n";
        let err = Catalog::from_yaml_str(typo, "ops.yaml").unwrap_err().to_string();
        assert!(err.contains("sumary"), "{err}");

        let missing = Catalog::from_path(Path::new("/nonexistent/ops.yaml")).unwrap_err().to_string();
        assert!(missing.contains("/nonexistent/ops.yaml"), "{missing}");
    }
}
