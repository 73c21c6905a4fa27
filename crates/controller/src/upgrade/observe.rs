//! The gate's reads: the plans, and for each the DaemonSet, its ControllerRevisions, the
//! pool's nodes; the cluster's pods and NodeDeviceHealth objects once per pass (shared by the
//! plans). Lists are paged, so a large cluster is read in bounded pieces.

use std::collections::BTreeMap;

use devheal_k8s::crd::NodeDeviceHealth;
use devheal_k8s::upgrade_plan::UpgradePlan;
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;

use super::view::View;

/// Objects per page of a list.
const PAGE: u32 = 500;
/// Pages of one list at most (500,000 objects): beyond that the pass gives up rather than
/// growing without a bound.
const MAX_PAGES: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("listing {what}: {source}")]
    List { what: &'static str, source: kube::Error },
    #[error("reading {what}: {source}")]
    Get { what: String, source: kube::Error },
    #[error("listing {what}: more than {MAX_PAGES} pages of {PAGE}")]
    TooMany { what: &'static str },
}

/// Every object of a list, page by page.
pub async fn list_all<K>(api: &Api<K>, params: ListParams, what: &'static str) -> Result<Vec<K>, ReadError>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let mut out = Vec::new();
    let mut params = params.limit(PAGE);
    for _ in 0..MAX_PAGES {
        let page = api.list(&params).await.map_err(|source| ReadError::List { what, source })?;
        out.extend(page.items);
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(out),
        }
    }
    Err(ReadError::TooMany { what })
}

/// What every plan of a pass shares.
pub struct Shared {
    pub pods: Vec<Pod>,
    pub health: Vec<NodeDeviceHealth>,
}

pub async fn shared(client: &Client) -> Result<Shared, ReadError> {
    let pods = list_all(&Api::<Pod>::all(client.clone()), ListParams::default(), "pods").await?;
    let health =
        list_all(&Api::<NodeDeviceHealth>::all(client.clone()), ListParams::default(), "nodedevicehealths")
            .await?;
    Ok(Shared { pods, health })
}

fn selector(labels: &BTreeMap<String, String>) -> String {
    labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

/// The view of one plan.
pub async fn view(client: &Client, plan: &UpgradePlan, shared: &Shared) -> Result<View, ReadError> {
    let ns = plan.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let name = &plan.spec.daemon_set;
    let ds = Api::<DaemonSet>::namespaced(client.clone(), &ns)
        .get_opt(name)
        .await
        .map_err(|source| ReadError::Get { what: format!("DaemonSet {ns}/{name}"), source })?;
    let Some(ds) = ds else { return Ok(View::default()) };
    let match_labels = ds.spec.as_ref().and_then(|s| s.selector.match_labels.clone()).unwrap_or_default();
    let revisions = list_all(
        &Api::<ControllerRevision>::namespaced(client.clone(), &ns),
        ListParams::default().labels(&selector(&match_labels)),
        "controllerrevisions",
    )
    .await?;
    let nodes = list_all(
        &Api::<Node>::all(client.clone()),
        ListParams::default().labels(&selector(&plan.spec.node_selector)),
        "nodes",
    )
    .await?;
    Ok(View::build(
        Some(&ds),
        &revisions,
        &shared.pods,
        &nodes,
        &shared.health,
        plan.spec.health.resource.as_deref(),
    ))
}
