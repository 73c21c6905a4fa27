//! Where the engine's durable state ([`devheal_core::DurableState`]: the restart budgets' last
//! hour, repeat-offender history and the nodes it cordoned) is kept across controller restarts.
//!
//! [`KubeStateStore`] keeps it in one ConfigMap beside the lease, named after it
//! (`<lease name>-state`: `devheal-controller-state` by default), key `state.json`, written by
//! server-side apply. The controller reads it once at start, before it handles anything, and
//! the leader writes it when it changed: at the next tick after a restart was counted or a node
//! cordoned or uncordoned, otherwise at most every [`SAVE_EVERY`]; never in dry run. Every call
//! has a timeout. A standby makes the same
//! decisions from the same events, so its own budgets follow the leader's while it waits.
//! [`MemoryStateStore`] is the test double (a process restart in the fake-cluster tests).

use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;

use devheal_core::DurableState;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams};

/// The suffix of the ConfigMap's name, after the lease's.
pub const STATE_SUFFIX: &str = "-state";
/// Its key holding the state as JSON.
pub const STATE_KEY: &str = "state.json";
/// The least time between two writes.
pub const SAVE_EVERY: StdDuration = StdDuration::from_secs(10);
/// How long one read or write may take.
pub const STORE_TIMEOUT: StdDuration = StdDuration::from_secs(10);

/// Keeps the durable state somewhere that outlives the process.
pub trait StateStore: Send + Sync {
    /// The state last saved (`None`: nothing saved yet).
    fn load(&self) -> BoxFuture<'_, Result<Option<DurableState>, String>>;
    fn save<'a>(&'a self, state: &'a DurableState) -> BoxFuture<'a, Result<(), String>>;
}

/// The ConfigMap `<lease>-state` in the lease's `namespace`.
pub struct KubeStateStore {
    api: kube::Api<ConfigMap>,
    namespace: String,
    name: String,
}

impl KubeStateStore {
    pub fn new(client: kube::Client, namespace: &str, lease: &str) -> Self {
        KubeStateStore {
            api: kube::Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            name: format!("{lease}{STATE_SUFFIX}"),
        }
    }
}

impl StateStore for KubeStateStore {
    fn load(&self) -> BoxFuture<'_, Result<Option<DurableState>, String>> {
        Box::pin(async move {
            let found = tokio::time::timeout(STORE_TIMEOUT, self.api.get_opt(&self.name))
                .await
                .map_err(|_| format!("no answer within {STORE_TIMEOUT:?}"))?
                .map_err(|e| e.to_string())?;
            let Some(map) = found else { return Ok(None) };
            let Some(text) = map.data.as_ref().and_then(|d| d.get(STATE_KEY)) else { return Ok(None) };
            serde_json::from_str(text).map(Some).map_err(|e| {
                format!(
                    "ConfigMap {}/{}, key {STATE_KEY}: not a devheal state: {e}",
                    self.namespace, self.name
                )
            })
        })
    }

    fn save<'a>(&'a self, state: &'a DurableState) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let text = serde_json::to_string(state).map_err(|e| e.to_string())?;
            let object = serde_json::json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": self.name, "labels": {"app.kubernetes.io/managed-by": "devheal"}},
                "data": {STATE_KEY: text},
            });
            let params = PatchParams::apply("devheal-controller").force();
            tokio::time::timeout(STORE_TIMEOUT, self.api.patch(&self.name, &params, &Patch::Apply(&object)))
                .await
                .map_err(|_| format!("no answer within {STORE_TIMEOUT:?}"))?
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }
}

/// In memory, shared between the "processes" of a test.
#[derive(Clone, Debug, Default)]
pub struct MemoryStateStore {
    state: Arc<Mutex<Option<DurableState>>>,
}

impl MemoryStateStore {
    pub fn saved(&self) -> Option<DurableState> {
        self.state.lock().ok().and_then(|s| s.clone())
    }
}

impl StateStore for MemoryStateStore {
    fn load(&self) -> BoxFuture<'_, Result<Option<DurableState>, String>> {
        let saved = self.saved();
        Box::pin(async move { Ok(saved) })
    }

    fn save<'a>(&'a self, state: &'a DurableState) -> BoxFuture<'a, Result<(), String>> {
        if let Ok(mut s) = self.state.lock() {
            *s = Some(state.clone());
        }
        Box::pin(async { Ok(()) })
    }
}
