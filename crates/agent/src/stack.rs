//! The device stack's pods on this node: which device plugin (or DRA driver) serves the node's
//! devices, at which version. The agent reports it as its `device_plugin_pod` source, whose
//! version the controller gives the engine's version canary (over the Node's labels) and
//! `kubectl devheal status` lists beside the driver version NVML reads.
//!
//! A pod is a device-stack pod when it runs on this node, is owned by a DaemonSet, has not
//! ended, and its labels match one of the selectors (`--device-plugin-selector`, repeatable;
//! each `key=value[,key=value…]`, all pairs required). The defaults name the labels of the
//! stacks users deploy:
//!
//! | selector | whose pods |
//! |---|---|
//! | `app.kubernetes.io/name=nvidia-device-plugin` | NVIDIA's k8s-device-plugin Helm chart |
//! | `name=nvidia-device-plugin-ds` | NVIDIA's static manifest (`nvidia-device-plugin.yml`) |
//! | `app=nvidia-device-plugin-daemonset` | the NVIDIA GPU Operator's device plugin |
//! | `app.kubernetes.io/name=nvidia-dra-driver-gpu` | NVIDIA's DRA driver Helm chart (its kubelet plugin) |
//! | `name=amdgpu-dp-ds` | AMD's ROCm k8s-device-plugin manifests |
//! | `app=intel-gpu-plugin` | Intel's GPU device plugin |
//!
//! The version of a pod is its `app.kubernetes.io/version` label, else the tag of its first
//! container's image, else the image digest's first 12 hex digits (`sha256:0123456789ab`).
//! When several pods match, the first selector wins, then the pod name; the message names
//! every match (at most [`MAX_LISTED`]).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;

/// The label a pod's version is read from first.
pub const VERSION_LABEL: &str = "app.kubernetes.io/version";

/// The default selectors, in order of preference (crate docs: the table).
pub const DEFAULT_SELECTORS: [&str; 6] = [
    "app.kubernetes.io/name=nvidia-device-plugin",
    "name=nvidia-device-plugin-ds",
    "app=nvidia-device-plugin-daemonset",
    "app.kubernetes.io/name=nvidia-dra-driver-gpu",
    "name=amdgpu-dp-ds",
    "app=intel-gpu-plugin",
];

/// Most pods a message names; most selectors a run takes.
pub const MAX_LISTED: usize = 8;
pub const MAX_SELECTORS: usize = 32;
/// Longest version reported (a label value is at most 63 characters; a tag at most 128).
pub const MAX_VERSION: usize = 128;

/// Labels that must all be present with these values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selector(Vec<(String, String)>);

/// A selector that is not `key=value[,key=value…]`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("device plugin selector {selector:?}: {problem}")]
pub struct SelectorError {
    pub selector: String,
    pub problem: String,
}

impl std::str::FromStr for Selector {
    type Err = SelectorError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = |problem: String| SelectorError { selector: text.to_string(), problem };
        let mut pairs = Vec::new();
        for part in text.split(',') {
            let Some((key, value)) = part.split_once('=') else {
                return Err(err(format!("{part:?} is not key=value")));
            };
            let (key, value) = (key.trim(), value.trim());
            if key.is_empty() || key.len() > 317 || key.chars().any(|c| c.is_whitespace() || c == '=') {
                return Err(err(format!("{key:?} is not a label key")));
            }
            if value.len() > 63 || value.chars().any(|c| !(c.is_ascii_alphanumeric() || "-_.".contains(c))) {
                return Err(err(format!("{value:?} is not a label value")));
            }
            pairs.push((key.to_string(), value.to_string()));
        }
        Ok(Selector(pairs))
    }
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
        f.write_str(&parts.join(","))
    }
}

impl Selector {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|(k, v)| labels.get(k) == Some(v))
    }

    /// [`DEFAULT_SELECTORS`], parsed.
    pub fn defaults() -> Vec<Selector> {
        DEFAULT_SELECTORS.iter().filter_map(|s| s.parse().ok()).collect()
    }
}

/// A device-stack pod on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StackPod {
    /// `namespace/name`.
    pub pod: String,
    /// The index of the first selector it matches (lower is preferred).
    pub selector: usize,
    /// The DaemonSet that owns it.
    pub daemon_set: String,
    pub image: Option<String>,
    /// Its version (crate docs), if any can be read.
    pub version: Option<String>,
    /// Its `controller-revision-hash` label: the DaemonSet template it runs.
    pub revision: Option<String>,
}

/// The pod as a device-stack pod, if it is one (crate docs).
pub fn stack_pod(pod: &Pod, selectors: &[Selector]) -> Option<StackPod> {
    let meta = &pod.metadata;
    if meta.deletion_timestamp.is_some()
        || pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p == "Succeeded" || p == "Failed")
    {
        return None;
    }
    let daemon_set = meta
        .owner_references
        .as_ref()?
        .iter()
        .find(|o| o.kind == "DaemonSet" && o.api_version.starts_with("apps/"))?
        .name
        .clone();
    let labels = meta.labels.as_ref()?;
    let selector = selectors.iter().position(|s| s.matches(labels))?;
    let image = pod.spec.as_ref().and_then(|s| s.containers.first()).and_then(|c| c.image.clone());
    let version = labels
        .get(VERSION_LABEL)
        .filter(|v| !v.is_empty())
        .cloned()
        .or_else(|| image.as_deref().and_then(image_version))
        .map(|v| v.chars().take(MAX_VERSION).collect());
    Some(StackPod {
        pod: format!("{}/{}", meta.namespace.as_deref().unwrap_or("default"), meta.name.as_deref()?),
        selector,
        daemon_set,
        image,
        version,
        revision: labels.get("controller-revision-hash").cloned(),
    })
}

/// The version an image reference carries: its tag (`nvcr.io/nvidia/k8s-device-plugin:v0.17.0`
/// → `v0.17.0`; a registry port is not a tag), else its digest's first 12 hex digits.
pub fn image_version(image: &str) -> Option<String> {
    let (name, digest) = match image.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (image, None),
    };
    let last = name.rsplit('/').next().unwrap_or(name);
    if let Some((_, tag)) = last.split_once(':')
        && !tag.is_empty()
    {
        return Some(tag.to_string());
    }
    let digest = digest?;
    let (algorithm, hex) = digest.split_once(':')?;
    (!hex.is_empty()).then(|| format!("{algorithm}:{}", &hex[..hex.len().min(12)]))
}

/// What the agent reports of the node's device-stack pods: the preferred pod's version and a
/// message naming every match. `None` when there is none.
pub fn report(pods: &[StackPod]) -> Option<(Option<String>, String)> {
    let mut sorted: Vec<&StackPod> = pods.iter().collect();
    sorted.sort_by(|a, b| a.selector.cmp(&b.selector).then(a.pod.cmp(&b.pod)));
    let first = sorted.first()?;
    let mut named: Vec<String> = sorted
        .iter()
        .take(MAX_LISTED)
        .map(|p| {
            let mut s =
                format!("{} ({} {}", p.pod, p.daemon_set, p.version.as_deref().unwrap_or("version unknown"));
            if let Some(r) = &p.revision {
                s.push_str(&format!(", revision {r}"));
            }
            if let Some(i) = &p.image {
                s.push_str(&format!(", image {i}"));
            }
            s.push(')');
            s
        })
        .collect();
    if sorted.len() > MAX_LISTED {
        named.push(format!("and {} more", sorted.len() - MAX_LISTED));
    }
    Some((first.version.clone(), format!("device stack pods on this node: {}", named.join("; "))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, labels: serde_json::Value, owner: &str, image: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "gpu-operator", "labels": labels,
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": owner, "name": "nvidia-device-plugin-daemonset",
                                     "uid": "u-1", "controller": true}]},
            "spec": {"containers": [{"name": "plugin", "image": image}]},
            "status": {"phase": "Running"}
        }))
        .expect("a pod")
    }

    #[test]
    fn selectors_parse_and_bad_ones_name_what_is_wrong() {
        let s: Selector = "app=nvidia-device-plugin-daemonset, tier=gpu".parse().expect("valid");
        assert_eq!(s.to_string(), "app=nvidia-device-plugin-daemonset,tier=gpu");
        assert_eq!(Selector::defaults().len(), DEFAULT_SELECTORS.len());
        let e = "app".parse::<Selector>().unwrap_err();
        assert_eq!(e.to_string(), "device plugin selector \"app\": \"app\" is not key=value");
        assert!("=x".parse::<Selector>().unwrap_err().problem.contains("not a label key"));
        assert!("a=b c".parse::<Selector>().unwrap_err().problem.contains("not a label value"));
    }

    #[test]
    fn versions_come_from_the_label_then_the_tag_then_the_digest() {
        assert_eq!(image_version("nvcr.io/nvidia/k8s-device-plugin:v0.17.0").as_deref(), Some("v0.17.0"));
        assert_eq!(image_version("registry:5000/team/plugin:1.2").as_deref(), Some("1.2"));
        assert_eq!(image_version("registry:5000/team/plugin"), None);
        assert_eq!(
            image_version("rocm/k8s-device-plugin@sha256:0123456789abcdef0123").as_deref(),
            Some("sha256:0123456789ab")
        );
        assert_eq!(image_version("plugin:v1@sha256:0123456789abcdef").as_deref(), Some("v1"));

        let selectors = Selector::defaults();
        let labelled = pod(
            "p",
            json!({"app": "nvidia-device-plugin-daemonset", "app.kubernetes.io/version": "v0.17.1",
                   "controller-revision-hash": "5c9f"}),
            "DaemonSet",
            "nvcr.io/nvidia/k8s-device-plugin:v0.17.0",
        );
        let p = stack_pod(&labelled, &selectors).expect("a stack pod");
        assert_eq!(p.version.as_deref(), Some("v0.17.1"), "the label wins over the tag");
        assert_eq!((p.selector, p.revision.as_deref()), (2, Some("5c9f")));
        let tagged = pod(
            "p",
            json!({"name": "amdgpu-dp-ds"}),
            "DaemonSet",
            "docker.io/rocm/k8s-device-plugin:1.31.0.6",
        );
        assert_eq!(stack_pod(&tagged, &selectors).and_then(|p| p.version).as_deref(), Some("1.31.0.6"));
    }

    #[test]
    fn only_live_daemon_set_pods_that_match_count() {
        let selectors = Selector::defaults();
        let labels = json!({"app": "nvidia-device-plugin-daemonset"});
        assert!(stack_pod(&pod("p", labels.clone(), "ReplicaSet", "x:1"), &selectors).is_none());
        assert!(stack_pod(&pod("p", json!({"app": "other"}), "DaemonSet", "x:1"), &selectors).is_none());
        let mut ended = pod("p", labels.clone(), "DaemonSet", "x:1");
        ended.status.as_mut().expect("status").phase = Some("Failed".into());
        assert!(stack_pod(&ended, &selectors).is_none());
        let custom: Vec<Selector> = vec!["app=nvidia-device-plugin-daemonset".parse().expect("valid")];
        assert!(stack_pod(&pod("p", labels, "DaemonSet", "x:1"), &custom).is_some());
    }

    #[test]
    fn the_preferred_pod_gives_the_version_and_the_message_names_all() {
        let selectors = Selector::defaults();
        let dra = pod(
            "dra-kubelet-plugin-x",
            json!({"app.kubernetes.io/name": "nvidia-dra-driver-gpu"}),
            "DaemonSet",
            "nvcr.io/nvidia/k8s-dra-driver-gpu:v25.3.0",
        );
        let plugin = pod(
            "nvdp-y",
            json!({"app.kubernetes.io/name": "nvidia-device-plugin", "controller-revision-hash": "7d"}),
            "DaemonSet",
            "nvcr.io/nvidia/k8s-device-plugin:v0.17.0",
        );
        let pods: Vec<StackPod> = [dra, plugin].iter().filter_map(|p| stack_pod(p, &selectors)).collect();
        let (version, message) = report(&pods).expect("a report");
        assert_eq!(version.as_deref(), Some("v0.17.0"));
        assert_eq!(
            message,
            "device stack pods on this node: gpu-operator/nvdp-y (nvidia-device-plugin-daemonset v0.17.0, \
             revision 7d, image nvcr.io/nvidia/k8s-device-plugin:v0.17.0); gpu-operator/dra-kubelet-plugin-x \
             (nvidia-device-plugin-daemonset v25.3.0, image nvcr.io/nvidia/k8s-dra-driver-gpu:v25.3.0)"
        );
        assert!(report(&[]).is_none());
        let many: Vec<StackPod> = (0..10)
            .map(|i| StackPod {
                pod: format!("ns/p{i}"),
                selector: 0,
                daemon_set: "ds".into(),
                image: None,
                version: None,
                revision: None,
            })
            .collect();
        assert!(report(&many).expect("a report").1.ends_with("; and 2 more"));
    }
}
