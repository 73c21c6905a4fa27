//! Reading documents as `kubectl get -o json|yaml` prints them: a Pod, a `List` or `PodList` of
//! Pods, NodeDeviceHealth objects and FailurePolicy objects, as JSON or YAML. Errors name the
//! source, the format and the place (line and column from the parser, or the item).

use devheal_core::FailurePolicy;
use k8s_openapi::api::core::v1::Pod;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::node_health::{NodeDeviceHealth, NodeHealthError};

/// A document that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    #[error("{source_name}: empty input (expected {expected})")]
    Empty { source_name: String, expected: &'static str },
    #[error("{source_name}: not valid {format}: {detail}")]
    Syntax { source_name: String, format: &'static str, detail: String },
    #[error("{source_name}: {what}")]
    Shape { source_name: String, what: String },
    #[error("{source_name}: {error}")]
    NodeHealth { source_name: String, error: NodeHealthError },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Json,
    Yaml,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Format::Json => "JSON",
            Format::Yaml => "YAML",
        }
    }
}

/// JSON when the first meaningful character opens an object or array; YAML otherwise
/// (YAML comments are skipped when looking).
fn detect(text: &str) -> Option<Format> {
    let first =
        text.lines().map(str::trim_start).find(|l| !l.is_empty() && !l.starts_with('#'))?.chars().next()?;
    Some(if first == '{' || first == '[' { Format::Json } else { Format::Yaml })
}

fn parse<T: DeserializeOwned>(text: &str, format: Format, source_name: &str) -> Result<T, DocumentError> {
    let result = match format {
        Format::Json => serde_json::from_str(text).map_err(|e| e.to_string()),
        Format::Yaml => serde_saphyr::from_str(text).map_err(|e| e.to_string()),
    };
    result.map_err(|detail| DocumentError::Syntax {
        source_name: source_name.to_string(),
        format: format.name(),
        detail,
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Peek {
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    items: Option<Vec<ItemPeek>>,
}

#[derive(Deserialize)]
struct ItemPeek {
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    metadata: Option<MetaPeek>,
}

#[derive(Deserialize)]
struct MetaPeek {
    #[serde(default)]
    name: Option<String>,
}

#[derive(Deserialize)]
struct Items<T> {
    items: Vec<T>,
}

fn peek(text: &str, source_name: &str, expected: &'static str) -> Result<(Format, Peek), DocumentError> {
    let format = detect(text)
        .ok_or_else(|| DocumentError::Empty { source_name: source_name.to_string(), expected })?;
    let peek: Peek = parse(text, format, source_name)?;
    Ok((format, peek))
}

/// Read a Pod, a `List` or a `PodList`.
pub fn parse_pods(text: &str, source_name: &str) -> Result<Vec<Pod>, DocumentError> {
    let expected = "a Pod, List or PodList";
    let (format, p) = peek(text, source_name, expected)?;
    let shape = |what: String| DocumentError::Shape { source_name: source_name.to_string(), what };
    match p.kind.as_deref() {
        Some("Pod") => Ok(vec![parse::<Pod>(text, format, source_name)?]),
        Some("List") | Some("PodList") | None if p.items.is_some() => {
            for (i, item) in p.items.iter().flatten().enumerate() {
                if let Some(kind) = item.kind.as_deref().filter(|k| *k != "Pod") {
                    let name = item.metadata.as_ref().and_then(|m| m.name.as_deref()).unwrap_or("?");
                    return Err(shape(format!(
                        "items[{i}] ({name}) is a {kind}, not a Pod; explain reads Pods"
                    )));
                }
            }
            Ok(parse::<Items<Pod>>(text, format, source_name)?.items)
        }
        Some(other) => Err(shape(format!(
            "expected {expected}, found kind {other}{}",
            p.api_version.map(|v| format!(" ({v})")).unwrap_or_default()
        ))),
        None => Err(shape(format!("expected {expected}: the document has no kind and no items"))),
    }
}

/// Read NodeDeviceHealth objects: one, or a `List` of them.
pub fn parse_node_health(text: &str, source_name: &str) -> Result<Vec<NodeDeviceHealth>, DocumentError> {
    let (format, p) = peek(text, source_name, "a NodeDeviceHealth or a List of them")?;
    let objects = match p.kind.as_deref() {
        Some("List") | Some("NodeDeviceHealthList") => {
            parse::<Items<NodeDeviceHealth>>(text, format, source_name)?.items
        }
        _ => vec![parse::<NodeDeviceHealth>(text, format, source_name)?],
    };
    for o in &objects {
        o.reports()
            .map_err(|error| DocumentError::NodeHealth { source_name: source_name.to_string(), error })?;
    }
    Ok(objects)
}

/// A FailurePolicy object as written in a file.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FailurePolicyObject {
    api_version: String,
    kind: String,
    metadata: PolicyMeta,
    spec: PolicySpec,
}

#[derive(Deserialize)]
struct PolicyMeta {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PolicySpec {
    #[serde(default)]
    selector: devheal_core::policy::PodSelector,
    #[serde(default)]
    gang_label: Option<String>,
    rules: Vec<devheal_core::PolicyRule>,
}

/// Read FailurePolicy objects (devheal.io/v1alpha1): one, or a `List` of them.
pub fn parse_policies(text: &str, source_name: &str) -> Result<Vec<FailurePolicy>, DocumentError> {
    let (format, p) = peek(text, source_name, "a FailurePolicy or a List of them")?;
    let objects = match p.kind.as_deref() {
        Some("List") | Some("FailurePolicyList") => {
            parse::<Items<FailurePolicyObject>>(text, format, source_name)?.items
        }
        _ => vec![parse::<FailurePolicyObject>(text, format, source_name)?],
    };
    objects
        .into_iter()
        .enumerate()
        .map(|(i, o)| {
            if o.api_version != "devheal.io/v1alpha1" || o.kind != "FailurePolicy" {
                return Err(DocumentError::Shape {
                    source_name: source_name.to_string(),
                    what: format!(
                        "object {i} ({}): expected devheal.io/v1alpha1 FailurePolicy, found {} {}",
                        o.metadata.name, o.api_version, o.kind
                    ),
                });
            }
            if o.spec.rules.is_empty() {
                return Err(DocumentError::Shape {
                    source_name: source_name.to_string(),
                    what: format!("FailurePolicy {}: spec.rules is empty", o.metadata.name),
                });
            }
            Ok(FailurePolicy {
                name: o.metadata.name,
                namespace: o.metadata.namespace,
                selector: o.spec.selector,
                gang_label: o.spec.gang_label,
                rules: o.spec.rules,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD_YAML: &str =
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: a\nspec:\n  containers:\n  - name: c\n";

    #[test]
    fn reads_a_pod_and_lists_in_both_formats() {
        assert_eq!(parse_pods(POD_YAML, "t").expect("yaml pod").len(), 1);
        let list = r#"{"apiVersion":"v1","kind":"List","items":[{"kind":"Pod","metadata":{"name":"a"}},{"metadata":{"name":"b"}}]}"#;
        let pods = parse_pods(list, "t").expect("json list");
        assert_eq!(pods.len(), 2);
        assert_eq!(pods[1].metadata.name.as_deref(), Some("b"));
    }

    #[test]
    fn errors_say_what_and_where() {
        let err = parse_pods("{\"kind\": \"Pod\",\n \"metadata\": {\"name\": 5}}", "pods.json")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("pods.json: not valid JSON"), "{err}");
        assert!(err.contains("line 2"), "{err}");
        let err = parse_pods("kind: Pod\nmetadata:\n  name: [1, 2\n", "p.yaml").unwrap_err().to_string();
        assert!(err.starts_with("p.yaml: not valid YAML"), "{err}");
        let err = parse_pods("kind: Service\napiVersion: v1\n", "s.yaml").unwrap_err().to_string();
        assert_eq!(err, "s.yaml: expected a Pod, List or PodList, found kind Service (v1)");
        let err = parse_pods(
            "{\"kind\":\"List\",\"items\":[{\"kind\":\"Node\",\"metadata\":{\"name\":\"n\"}}]}",
            "l",
        )
        .unwrap_err();
        assert!(err.to_string().contains("items[0] (n) is a Node"), "{err}");
        assert!(parse_pods("  \n# only a comment\n", "e").unwrap_err().to_string().contains("empty input"));
    }

    #[test]
    fn reads_policies_and_rejects_unknown_fields() {
        let text = "apiVersion: devheal.io/v1alpha1\nkind: FailurePolicy\nmetadata:\n  name: p\n  namespace: ml\nspec:\n  rules:\n  - name: r\n    onClasses: [device_failure]\n    action: RestartGang\n";
        let p = parse_policies(text, "p.yaml").expect("policy");
        assert_eq!(p[0].namespace.as_deref(), Some("ml"));
        let bad = text.replace("onClasses", "onClass");
        assert!(parse_policies(&bad, "p.yaml").unwrap_err().to_string().contains("onClass"));
    }
}
