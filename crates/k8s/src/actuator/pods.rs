//! Pod actions: a condition merged into a pod's status, an eviction through the Eviction API with
//! PodDisruptionBudget backoff.

use super::*;

impl KubeActuator {
    pub(super) fn pod_path(pod: &PodRef) -> String {
        format!("/api/v1/namespaces/{}/pods/{}", path_segment(&pod.namespace), path_segment(&pod.name))
    }

    pub(super) fn pod_regarding(pod: &PodRef) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "namespace": pod.namespace, "name": pod.name, "uid": pod.uid})
    }

    /// A strategic-merge patch of `pods/status` with one condition. Strategic merge (rather
    /// than server-side apply) because `status.conditions` merges by `type` (its patch merge
    /// key): the patch touches our condition only, takes no field ownership over the status the
    /// kubelet writes with updates, and needs no `force`. `metadata.uid` in the patch is a
    /// guard: UID is immutable, so a pod re-created under the same name refuses the patch (422
    /// on `metadata.uid`) and the outcome is `Gone`.
    pub(super) async fn patch_pod_condition(
        &self,
        pod: &PodRef,
        condition_type: &str,
        reason: &str,
        message: &str,
    ) -> Result<(), CallError> {
        let now = wire::rfc3339_seconds(self.now());
        let patch = json!({
            "metadata": {"uid": pod.uid},
            "status": {"conditions": [{
                "type": condition_type,
                "status": "True",
                "reason": reason,
                "message": message,
                "lastTransitionTime": now,
            }]},
        });
        let path = format!("{}/status{}", Self::pod_path(pod), self.write_query());
        self.send(Method::PATCH, &path, Some((Body::StrategicMergePatch, &patch))).await.map(|_| ())
    }

    pub(super) fn is_replaced_pod(err: &CallError) -> bool {
        match err {
            CallError::Status { code: 409, .. } => true,
            CallError::Status { code: 422, cause_fields, message, .. } => {
                cause_fields.iter().any(|f| f == "metadata.uid") || message.contains("metadata.uid")
            }
            _ => false,
        }
    }

    pub(super) async fn mark_pod(
        &self,
        pod: &PodRef,
        condition_type: &str,
        reason: &str,
        message: &str,
    ) -> Carried {
        let key = format!("pod/{}", pod.uid);
        match self.patch_pod_condition(pod, condition_type, reason, message).await {
            Ok(()) => {
                self.settle(&key);
                Carried::with(
                    ActionOutcome::Done,
                    EventSpec {
                        namespace: pod.namespace.clone(),
                        regarding: Some(Self::pod_regarding(pod)),
                        reason: "DevhealPodMarked",
                        action: "MarkPod",
                        note: format!("condition {condition_type}=True ({reason}): {message}"),
                        warning: true,
                    },
                )
            }
            Err(e) if Self::is_replaced_pod(&e) => {
                self.settle(&key);
                Carried::quiet(ActionOutcome::Gone)
            }
            Err(e) => Carried::quiet(self.failed_call(&key, "marking the pod", &e)),
        }
    }

    /// `POST .../pods/{name}/eviction` with the pod's UID as a precondition, so that a pod
    /// re-created under the same name is never evicted in its place (409 → `Gone`).
    pub(super) async fn evict(&self, pod: &PodRef, reason: &str) -> Carried {
        let key = format!("pod/{}", pod.uid);
        let body = json!({
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": pod.name, "namespace": pod.namespace},
            "deleteOptions": {"preconditions": {"uid": pod.uid}},
        });
        let path = format!("{}/eviction", Self::pod_path(pod));
        let regarding = Some(Self::pod_regarding(pod));
        match self.send(Method::POST, &path, Some((Body::Json, &body))).await {
            Ok(_) => {
                self.settle(&key);
                Carried::with(
                    ActionOutcome::Done,
                    EventSpec {
                        namespace: pod.namespace.clone(),
                        regarding,
                        reason: "DevhealEvicted",
                        action: "Evict",
                        note: format!("evicted: {reason}"),
                        warning: true,
                    },
                )
            }
            Err(e) if matches!(e.code(), Some(404) | Some(409)) => {
                self.settle(&key);
                Carried::quiet(ActionOutcome::Gone)
            }
            Err(e) if e.code() == Some(429) => {
                let what = format!("eviction of pod {}/{} refused", pod.namespace, pod.name);
                let (outcome, attempts) = self.retry(&key, format!("{what}: {}", e.describe()));
                if attempts == 1 {
                    let note = format!("eviction refused, will retry: {}", e.describe());
                    let event = EventSpec {
                        namespace: pod.namespace.clone(),
                        regarding,
                        reason: "DevhealEvictionBlocked",
                        action: "Evict",
                        note,
                        warning: true,
                    };
                    return Carried::with(outcome, event);
                }
                Carried::quiet(outcome)
            }
            Err(e) => Carried::quiet(self.failed_call(&key, "evicting the pod", &e)),
        }
    }
}
