//! The gate's writes: the plan's status (server-side apply, so fields it no longer sets go),
//! the steps of a [`super::decide::Decision`] and its Events. Each write asks the lease first
//! (the `fence`), so a replica that lost it stops between writes.

use devheal_k8s::upgrade_plan::{UpgradePlan, UpgradePlanStatus};
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Client;
use kube::api::{Api, DeleteParams, EvictParams, Patch, PatchParams, PostParams, Preconditions};
use serde_json::json;

use super::decide::{GateEvent, Step};
use super::view::CORDON_ANNOTATION;

/// The field manager of the gate's status writes.
pub const FIELD_MANAGER: &str = "devheal-upgrade-gate";

/// What became of a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// The object was gone already.
    Gone,
    Failed,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Done => "done",
            Outcome::Gone => "gone",
            Outcome::Failed => "failed",
        }
    }
}

impl Step {
    pub fn label(&self) -> &'static str {
        match self {
            Step::DeletePod { .. } => "delete_pod",
            Step::Cordon { .. } => "cordon",
            Step::Uncordon { .. } => "uncordon",
            Step::EvictPod { .. } => "evict_pod",
            Step::RestoreTemplate { .. } => "restore_template",
        }
    }

    /// A sentence for logs and dry runs.
    pub fn describe(&self) -> String {
        match self {
            Step::DeletePod { namespace, name, node, .. } => {
                format!("delete pod {namespace}/{name} on node {node}")
            }
            Step::Cordon { node } => format!("cordon node {node} to drain it"),
            Step::Uncordon { node } => format!("uncordon node {node}"),
            Step::EvictPod { namespace, name, node, .. } => {
                format!("evict device pod {namespace}/{name} from node {node}")
            }
            Step::RestoreTemplate { revision } => {
                format!("restore the DaemonSet's template from ControllerRevision {revision}")
            }
        }
    }
}

fn outcome<T>(result: Result<T, kube::Error>, what: &str) -> Outcome {
    match result {
        Ok(_) => Outcome::Done,
        Err(kube::Error::Api(e)) if e.code == 404 => Outcome::Gone,
        Err(e) => {
            // A refused eviction (a PodDisruptionBudget's 429) or a conflict is tried again at
            // the next pass, which decides the step again if it is still needed.
            tracing::warn!(error = %e, "upgrade gate: {what} failed; the next pass tries again");
            Outcome::Failed
        }
    }
}

fn uid_precondition(uid: &str) -> DeleteParams {
    DeleteParams {
        preconditions: Some(Preconditions { uid: Some(uid.to_string()), resource_version: None }),
        ..DeleteParams::default()
    }
}

/// Write the plan's status.
pub async fn write_status(
    client: &Client,
    plan: &UpgradePlan,
    status: &UpgradePlanStatus,
) -> Result<(), kube::Error> {
    let ns = plan.metadata.namespace.clone().unwrap_or_default();
    let name = plan.metadata.name.clone().unwrap_or_default();
    let api: Api<UpgradePlan> = Api::namespaced(client.clone(), &ns);
    let body = json!({"apiVersion": "devheal.io/v1alpha1", "kind": "UpgradePlan", "status": status});
    api.patch_status(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body))
        .await
        .map(|_| ())
}

/// Carry out one step for the DaemonSet `daemon_set` of namespace `ns`, for plan `plan`
/// (`namespace/name`).
pub async fn carry(client: &Client, ns: &str, daemon_set: &str, plan: &str, step: &Step) -> Outcome {
    let what = step.describe();
    match step {
        Step::DeletePod { namespace, name, uid, .. } => {
            let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
            outcome(api.delete(name, &uid_precondition(uid)).await, &what)
        }
        Step::EvictPod { namespace, name, uid, .. } => {
            let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
            let params = EvictParams {
                delete_options: Some(uid_precondition(uid)),
                post_options: PostParams::default(),
            };
            outcome(api.evict(name, &params).await, &what)
        }
        Step::Cordon { node } => {
            let api: Api<Node> = Api::all(client.clone());
            let patch = json!({"metadata": {"annotations": {CORDON_ANNOTATION: plan}}, "spec": {"unschedulable": true}});
            outcome(api.patch(node, &PatchParams::default(), &Patch::Merge(&patch)).await, &what)
        }
        Step::Uncordon { node } => {
            let api: Api<Node> = Api::all(client.clone());
            let patch = json!({"metadata": {"annotations": {CORDON_ANNOTATION: null}}, "spec": {"unschedulable": null}});
            outcome(api.patch(node, &PatchParams::default(), &Patch::Merge(&patch)).await, &what)
        }
        Step::RestoreTemplate { revision } => {
            let revisions: Api<ControllerRevision> = Api::namespaced(client.clone(), ns);
            let data = match revisions.get(revision).await {
                Ok(r) => r.data.map(|d| d.0),
                Err(e) => return outcome::<()>(Err(e), &what),
            };
            let Some(data) = data else {
                tracing::warn!(
                    "upgrade gate: ControllerRevision {ns}/{revision} has no data; cannot roll back"
                );
                return Outcome::Failed;
            };
            // A DaemonSet revision's data is a strategic-merge patch of the template (what
            // `kubectl rollout undo` applies).
            let api: Api<DaemonSet> = Api::namespaced(client.clone(), ns);
            outcome(api.patch(daemon_set, &PatchParams::default(), &Patch::Strategic(&data)).await, &what)
        }
    }
}

/// An `events.k8s.io/v1` Event about the plan.
pub async fn emit(client: &Client, plan: &UpgradePlan, instance: &str, event: &GateEvent) {
    let ns = plan.metadata.namespace.clone().unwrap_or_default();
    let name = plan.metadata.name.clone().unwrap_or_default();
    let gvk = kube::api::GroupVersionKind::gvk("events.k8s.io", "v1", "Event");
    let api: Api<kube::api::DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &kube::api::ApiResource::from_gvk(&gvk));
    let mut note = event.message.clone();
    if note.len() > 1000 {
        let mut cut = 997;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
        note.push_str("...");
    }
    let now = k8s_openapi::jiff::Timestamp::now();
    let body = json!({
        "apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": {"generateName": format!("{}-", name.trim_end_matches(['.', '-'])), "namespace": ns},
        "eventTime": now.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
        "reportingController": devheal_k8s::actuator::REPORTING_CONTROLLER,
        "reportingInstance": instance,
        "action": "Upgrade",
        "reason": event.reason,
        "note": note,
        "type": if event.warning { "Warning" } else { "Normal" },
        "regarding": {"apiVersion": "devheal.io/v1alpha1", "kind": "UpgradePlan", "namespace": ns, "name": name,
                      "uid": plan.metadata.uid.clone().unwrap_or_default()},
    });
    let object: kube::api::DynamicObject = match serde_json::from_value(body) {
        Ok(o) => o,
        Err(e) => return tracing::warn!(error = %e, "upgrade gate: an Event that does not serialise"),
    };
    if let Err(e) = api.create(&PostParams::default(), &object).await {
        tracing::warn!(error = %e, reason = event.reason, "upgrade gate: the Event was not written");
    }
}
