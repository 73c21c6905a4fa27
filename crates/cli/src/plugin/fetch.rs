//! Reading what the commands need from the API server. Every request waits at most the
//! `--request-timeout`; an error names what could not be read and why. What `status` can do
//! without (the policies, the controller's state, the Lease, DeviceTaintRules) becomes a note
//! in its output instead of an error.

use std::future::Future;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use devheal_controller::durable::{STATE_KEY, STATE_SUFFIX};
use devheal_core::DurableState;
use devheal_k8s::actuator::{DeviceTaintRuleSupport, discover_device_taint_rules};
use devheal_k8s::crd::{FailurePolicy, NodeDeviceHealth};
use devheal_k8s::upgrade_plan::UpgradePlan;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};

use super::history::HistoryInputs;
use super::live_explain::ExplainInputs;
use super::status::StatusInputs;

/// The controller's Events carry this `reportingController`.
const REPORTING_CONTROLLER: &str = devheal_k8s::actuator::REPORTING_CONTROLLER;
/// Events about nodes and DeviceTaintRules are written in this namespace (docs/actuator.md).
const NODE_EVENTS_NAMESPACE: &str = "default";

/// A client and the longest a request may wait.
pub struct Reader {
    pub client: kube::Client,
    pub timeout: Duration,
}

/// A request that failed: what it was, why (404 and 403 said plainly), and the HTTP status.
#[derive(Debug)]
struct ReadError {
    what: String,
    why: String,
    code: Option<u16>,
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.what, self.why)
    }
}

impl std::error::Error for ReadError {}

impl ReadError {
    fn new(what: &str, e: &kube::Error) -> Self {
        let (why, code) = match e {
            kube::Error::Api(s) if s.code == 404 => (format!("not found ({})", s.message), Some(s.code)),
            kube::Error::Api(s) if s.code == 403 => (format!("forbidden: {}", s.message), Some(s.code)),
            kube::Error::Api(s) => (format!("{} {}: {}", s.code, s.reason, s.message), Some(s.code)),
            other => (other.to_string(), None),
        };
        ReadError { what: what.to_string(), why, code }
    }
}

fn is_status(e: &anyhow::Error, code: u16) -> bool {
    e.downcast_ref::<ReadError>().is_some_and(|r| r.code == Some(code))
}

impl Reader {
    /// `fut`, within the timeout; `what` names the request in the error.
    async fn call<T>(
        &self,
        what: &str,
        fut: impl Future<Output = Result<T, kube::Error>>,
    ) -> anyhow::Result<T> {
        match tokio::time::timeout(self.timeout, fut).await {
            Err(_) => bail!("{what}: no answer from the API server within {:?}", self.timeout),
            Ok(Err(e)) => Err(ReadError::new(what, &e).into()),
            Ok(Ok(v)) => Ok(v),
        }
    }

    async fn node_device_healths(&self) -> anyhow::Result<Vec<NodeDeviceHealth>> {
        let api: Api<NodeDeviceHealth> = Api::all(self.client.clone());
        match self.call("listing NodeDeviceHealth", api.list(&ListParams::default())).await {
            Ok(list) => Ok(list.items),
            Err(e) if is_status(&e, 404) => Err(anyhow!(
                "the API server does not serve NodeDeviceHealth (devheal.io/v1alpha1): are devheal's CRDs installed (kubectl apply -k deploy/crds)?"
            )),
            Err(e) => Err(e),
        }
    }

    async fn node_device_health(&self, node: &str) -> anyhow::Result<Option<NodeDeviceHealth>> {
        let api: Api<NodeDeviceHealth> = Api::all(self.client.clone());
        self.call(&format!("reading the NodeDeviceHealth of node {node}"), api.get_opt(node)).await
    }

    /// Every FailurePolicy, or a note saying why there are none.
    async fn policies(&self, notes: &mut Vec<String>) -> Vec<FailurePolicy> {
        let api: Api<FailurePolicy> = Api::all(self.client.clone());
        match self.call("listing FailurePolicies", api.list(&ListParams::default())).await {
            Ok(list) => list.items,
            Err(e) => {
                notes.push(format!("{e:#}"));
                Vec::new()
            }
        }
    }

    /// Every UpgradePlan, or a note saying why there are none (an older install has no such CRD).
    async fn upgrade_plans(&self, notes: &mut Vec<String>) -> Vec<UpgradePlan> {
        let api: Api<UpgradePlan> = Api::all(self.client.clone());
        match self.call("listing UpgradePlans", api.list(&ListParams::default())).await {
            Ok(list) => list.items,
            Err(e) if is_status(&e, 404) => Vec::new(),
            Err(e) => {
                notes.push(format!("{e:#}"));
                Vec::new()
            }
        }
    }

    /// The controller's durable state, or a note saying why there is none.
    async fn state(&self, namespace: &str, lease: &str, notes: &mut Vec<String>) -> Option<DurableState> {
        let name = format!("{lease}{STATE_SUFFIX}");
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), namespace);
        let what = format!("reading the controller's state ConfigMap {namespace}/{name}");
        let map = match self.call(&what, api.get_opt(&name)).await {
            Ok(Some(map)) => map,
            Ok(None) => {
                notes.push(format!(
                    "no controller state ConfigMap {namespace}/{name}: the controller has saved nothing yet, or runs in another namespace (--namespace)"
                ));
                return None;
            }
            Err(e) => {
                notes.push(format!("{e:#}"));
                return None;
            }
        };
        let text = map.data.as_ref().and_then(|d| d.get(STATE_KEY))?;
        match serde_json::from_str(text) {
            Ok(state) => Some(state),
            Err(e) => {
                notes
                    .push(format!("ConfigMap {namespace}/{name}, key {STATE_KEY}: not a devheal state: {e}"));
                None
            }
        }
    }

    async fn lease(&self, namespace: &str, lease: &str, notes: &mut Vec<String>) -> Option<Lease> {
        let api: Api<Lease> = Api::namespaced(self.client.clone(), namespace);
        match self.call(&format!("reading the Lease {namespace}/{lease}"), api.get_opt(lease)).await {
            Ok(l) => l,
            Err(e) => {
                notes.push(format!("{e:#}"));
                None
            }
        }
    }

    /// DeviceTaintRules devheal wrote, as JSON (none where DRA's DeviceTaintRule is not served).
    async fn device_taint_rules(&self, notes: &mut Vec<String>) -> Vec<serde_json::Value> {
        let support =
            match tokio::time::timeout(self.timeout, discover_device_taint_rules(&self.client)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    notes.push(format!("{e}"));
                    return Vec::new();
                }
                Err(_) => {
                    notes.push(format!("discovering resource.k8s.io: no answer within {:?}", self.timeout));
                    return Vec::new();
                }
            };
        let DeviceTaintRuleSupport::Served { version } = support else { return Vec::new() };
        let gvk = GroupVersionKind::gvk("resource.k8s.io", &version, "DeviceTaintRule");
        let resource = ApiResource::from_gvk_with_plural(&gvk, "devicetaintrules");
        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &resource);
        let params = ListParams::default().labels("app.kubernetes.io/managed-by=devheal");
        match self.call("listing DeviceTaintRules", api.list(&params)).await {
            Ok(list) => list.items.iter().filter_map(|o| serde_json::to_value(o).ok()).collect(),
            Err(e) => {
                notes.push(format!("{e:#}"));
                Vec::new()
            }
        }
    }

    pub async fn status_inputs(&self, namespace: &str, lease: &str) -> anyhow::Result<StatusInputs> {
        let mut notes = Vec::new();
        let nodes: Api<Node> = Api::all(self.client.clone());
        let nodes = self.call("listing Nodes", nodes.list(&ListParams::default())).await?.items;
        let health = self.node_device_healths().await?;
        if health.is_empty() {
            notes.push("no NodeDeviceHealth at all: is the devheal agent DaemonSet running?".to_string());
        }
        let device_taint_rules = self.device_taint_rules(&mut notes).await;
        let policies = self.policies(&mut notes).await;
        let upgrade_plans = self.upgrade_plans(&mut notes).await;
        let state = self.state(namespace, lease, &mut notes).await;
        let state_source = format!("{namespace}/{lease}{STATE_SUFFIX}");
        let lease = self.lease(namespace, lease, &mut notes).await;
        Ok(StatusInputs {
            nodes,
            health,
            device_taint_rules,
            policies,
            upgrade_plans,
            state,
            state_source,
            lease,
            notes,
        })
    }

    /// devheal's Events in `namespace` (`reportingController=devheal.io/controller`).
    async fn devheal_events(&self, namespace: &str) -> anyhow::Result<Vec<Event>> {
        let api: Api<Event> = Api::namespaced(self.client.clone(), namespace);
        let params = ListParams::default().fields(&format!("reportingController={REPORTING_CONTROLLER}"));
        let what = format!("listing devheal's Events in namespace {namespace}");
        let items = self.call(&what, api.list(&params)).await?.items;
        Ok(items
            .into_iter()
            .filter(|e| e.reason.as_deref().is_some_and(|r| r.starts_with("Devheal")))
            .collect())
    }

    pub async fn history_inputs(
        &self,
        node: &str,
        namespace: &str,
        lease: &str,
    ) -> anyhow::Result<HistoryInputs> {
        let mut notes = Vec::new();
        let nodes: Api<Node> = Api::all(self.client.clone());
        let node_object = self.call(&format!("reading node {node}"), nodes.get_opt(node)).await?;
        let health = self.node_device_health(node).await?;
        if node_object.is_none() && health.is_none() {
            bail!("no node {node} and no NodeDeviceHealth for it: is the name right (kubectl get nodes)?");
        }
        if node_object.is_none() {
            notes.push(format!("node {node} no longer exists; what devheal recorded about it follows"));
        }
        if health.is_none() {
            notes.push(format!("no NodeDeviceHealth for node {node}: is the agent running there?"));
        }
        // Events about the node and its DeviceTaintRules (their note names `<node>/…` devices).
        let mut events: Vec<Event> = self
            .devheal_events(NODE_EVENTS_NAMESPACE)
            .await?
            .into_iter()
            .filter(|e| {
                let Some(r) = &e.regarding else { return false };
                match r.kind.as_deref() {
                    Some("Node") => r.name.as_deref() == Some(node),
                    Some("DeviceTaintRule") => {
                        e.note.as_deref().is_some_and(|n| n.contains(&format!("device {node}/")))
                    }
                    _ => false,
                }
            })
            .collect();
        // Events about the pods on the node now: one list per namespace of theirs.
        let pods: Api<Pod> = Api::all(self.client.clone());
        let on_node = ListParams::default().fields(&format!("spec.nodeName={node}"));
        match self.call(&format!("listing the pods on node {node}"), pods.list(&on_node)).await {
            Ok(list) => {
                let mut namespaces: Vec<String> =
                    list.items.iter().filter_map(|p| p.metadata.namespace.clone()).collect();
                namespaces.sort();
                namespaces.dedup();
                for ns in namespaces {
                    let names: Vec<&str> = list
                        .items
                        .iter()
                        .filter(|p| p.metadata.namespace.as_deref() == Some(ns.as_str()))
                        .filter_map(|p| p.metadata.name.as_deref())
                        .collect();
                    match self.devheal_events(&ns).await {
                        Ok(found) => events.extend(found.into_iter().filter(|e| {
                            e.regarding.as_ref().is_some_and(|r| {
                                r.kind.as_deref() == Some("Pod")
                                    && r.name.as_deref().is_some_and(|n| names.contains(&n))
                            })
                        })),
                        Err(e) => notes.push(format!("{e:#}")),
                    }
                }
            }
            Err(e) => notes.push(format!("{e:#}")),
        }
        let state = self.state(namespace, lease, &mut notes).await;
        Ok(HistoryInputs { node: node.to_string(), node_object, health, events, state, notes })
    }

    pub async fn explain_inputs(&self, namespace: &str, pod: &str) -> anyhow::Result<ExplainInputs> {
        let mut notes = Vec::new();
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let object = self
            .call(&format!("reading pod {namespace}/{pod}"), pods.get_opt(pod))
            .await?
            .with_context(|| format!("no pod {pod} in namespace {namespace} (-n NAMESPACE)"))?;
        let node = object.spec.as_ref().and_then(|s| s.node_name.clone());
        let health = match &node {
            None => {
                notes.push("the pod is not scheduled to a node yet: no device health to read".to_string());
                None
            }
            Some(node) => {
                let h = self.node_device_health(node).await?;
                if h.is_none() {
                    notes.push(format!(
                        "no NodeDeviceHealth for node {node}: is the agent running there? (the pod's devices' health is unknown)"
                    ));
                }
                h
            }
        };
        let policies = self.policies(&mut notes).await;
        if policies.is_empty() {
            notes.push("no FailurePolicy in the cluster: the built-in default policy applies".to_string());
        }
        Ok(ExplainInputs { pod: object, health, policies, notes })
    }
}
