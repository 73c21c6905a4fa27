//! The exit-code and termination-message catalog: what a container's exit code or message says
//! about whose fault a failure is. The catalog is data (`catalogs/exit-codes.json`, compiled in),
//! so an operator can read and replace it without touching the attribution code.

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::pod::FailureClass;

/// What one exit code means.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExitCodeEntry {
    pub code: i32,
    pub meaning: String,
    pub class: FailureClass,
    pub confidence: f64,
}

/// A substring that, found in a termination message or reason, hints at a class.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageEntry {
    /// Matched case-insensitively as a plain substring.
    pub pattern: String,
    pub meaning: String,
    pub class: FailureClass,
    pub confidence: f64,
    /// The message points at the device the container used.
    #[serde(default)]
    pub device_suspect: bool,
    /// The message says another member of the gang failed first.
    #[serde(default)]
    pub peer_caused: bool,
}

/// The whole catalog.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExitCodeCatalog {
    pub version: String,
    #[serde(default)]
    pub about: String,
    pub exit_codes: Vec<ExitCodeEntry>,
    pub messages: Vec<MessageEntry>,
    /// Lower-cased patterns, in `messages` order.
    #[serde(skip)]
    lowered: Vec<String>,
}

/// The catalog file is not valid.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("exit-code catalog is not valid JSON of the expected shape: {0}")]
    Parse(#[from] serde_json::Error),
    #[error("exit-code catalog entry {index} ({what}): confidence {confidence} is outside 0..=1")]
    Confidence { index: usize, what: String, confidence: f64 },
}

const BUILTIN_JSON: &str = include_str!("../catalogs/exit-codes.json");

impl ExitCodeCatalog {
    /// Parse and check a catalog.
    pub fn from_json(text: &str) -> Result<Self, CatalogError> {
        let mut catalog: ExitCodeCatalog = serde_json::from_str(text)?;
        for (index, e) in catalog.exit_codes.iter().enumerate() {
            if !(0.0..=1.0).contains(&e.confidence) {
                return Err(CatalogError::Confidence {
                    index,
                    what: format!("exit code {}", e.code),
                    confidence: e.confidence,
                });
            }
        }
        for (index, e) in catalog.messages.iter().enumerate() {
            if !(0.0..=1.0).contains(&e.confidence) {
                return Err(CatalogError::Confidence {
                    index,
                    what: format!("message {:?}", e.pattern),
                    confidence: e.confidence,
                });
            }
        }
        catalog.exit_codes.sort_by_key(|e| e.code);
        catalog.lowered = catalog.messages.iter().map(|m| m.pattern.to_ascii_lowercase()).collect();
        Ok(catalog)
    }

    /// The catalog compiled into the binary.
    pub fn builtin() -> &'static ExitCodeCatalog {
        static BUILTIN: OnceLock<ExitCodeCatalog> = OnceLock::new();
        BUILTIN.get_or_init(|| match ExitCodeCatalog::from_json(BUILTIN_JSON) {
            Ok(c) => c,
            // The built-in file is checked by a unit test; an empty catalog keeps the engine
            // running (attribution then relies on reasons and device health only).
            Err(_) => ExitCodeCatalog {
                version: "invalid".into(),
                about: String::new(),
                exit_codes: Vec::new(),
                messages: Vec::new(),
                lowered: Vec::new(),
            },
        })
    }

    pub fn exit_code(&self, code: i32) -> Option<&ExitCodeEntry> {
        self.exit_codes.binary_search_by_key(&code, |e| e.code).ok().map(|i| &self.exit_codes[i])
    }

    /// Every entry whose pattern occurs in `text` (case-insensitive), in catalog order.
    pub fn messages_in<'a>(&'a self, text: &str) -> impl Iterator<Item = &'a MessageEntry> + 'a {
        let lowered = text.to_ascii_lowercase();
        self.messages
            .iter()
            .zip(self.lowered.iter())
            .filter(move |(_, p)| lowered.contains(p.as_str()))
            .map(|(m, _)| m)
    }
}

/// The signal name for an exit code of 128+n, as shells and container runtimes report it.
pub fn signal_name(exit_code: i32) -> Option<&'static str> {
    let n = exit_code.checked_sub(128)?;
    Some(match n {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_catalog_parses_and_is_complete() {
        let c = ExitCodeCatalog::from_json(BUILTIN_JSON).expect("built-in catalog must parse");
        assert!(c.exit_codes.len() >= 10);
        assert_eq!(c.exit_code(137).map(|e| e.class), Some(FailureClass::Disruption));
        assert_eq!(c.exit_code(139).map(|e| e.class), Some(FailureClass::Application));
        assert!(c.exit_code(0).is_none());
        assert!(ExitCodeCatalog::builtin().exit_code(143).is_some());
    }

    #[test]
    fn message_matching_is_case_insensitive() {
        let c = ExitCodeCatalog::builtin();
        let hits: Vec<_> = c
            .messages_in("RuntimeError: CUDA error: UNCORRECTABLE ECC ERROR ENCOUNTERED")
            .map(|m| m.class)
            .collect();
        assert_eq!(hits, vec![FailureClass::DeviceFailure]);
        assert_eq!(c.messages_in("all good").count(), 0);
    }

    #[test]
    fn bad_confidence_is_rejected_with_its_entry() {
        let text = r#"{"version":"x","exitCodes":[{"code":1,"meaning":"m","class":"application","confidence":2.0}],"messages":[]}"#;
        let err = ExitCodeCatalog::from_json(text).unwrap_err().to_string();
        assert!(err.contains("exit code 1"), "{err}");
        assert!(ExitCodeCatalog::from_json("{").is_err());
    }

    #[test]
    fn signals_are_named() {
        assert_eq!(signal_name(137), Some("SIGKILL"));
        assert_eq!(signal_name(143), Some("SIGTERM"));
        assert_eq!(signal_name(1), None);
    }
}
