//! Gang actions: a gang's live members found by label, marked and deleted (a restart), or marked
//! failed.

use super::*;

impl KubeActuator {
    /// The live pods of a gang: listed (by the gang's own label where it has one) and kept when
    /// [`gang_of`] recognises exactly this gang in them, as the engine did; terminal pods and
    /// pods already being deleted are left alone.
    pub(super) async fn gang_members(&self, gang: &GangId) -> Result<Vec<Value>, CallError> {
        let selector = match gang.kind.as_str() {
            "jobset" => Some(format!("jobset.sigs.k8s.io/jobset-name={}", gang.name)),
            "job" => Some(format!("batch.kubernetes.io/job-name={}", gang.name)),
            "kubeflow" => Some(format!("training.kubeflow.org/job-name={}", gang.name)),
            "volcano" => Some(format!("volcano.sh/job-name={}", gang.name)),
            "lws" => gang.name.split_once('/').map(|(lws, group)| {
                format!(
                    "leaderworkerset.sigs.k8s.io/name={lws},leaderworkerset.sigs.k8s.io/group-index={group}"
                )
            }),
            // PodGroup names are often annotations only; a label key from a policy is a label.
            "podgroup" => None,
            key if is_label_value(&gang.name) => Some(format!("{key}={}", gang.name)),
            _ => None,
        };
        let mut path = format!("/api/v1/namespaces/{}/pods", path_segment(&gang.namespace));
        if let Some(selector) = selector {
            path.push_str(&format!("?labelSelector={}", query_escape(&selector)));
        }
        let list = self.send(Method::GET, &path, None).await?;
        let extra: Vec<String> = match gang.kind.as_str() {
            "jobset" | "job" | "kubeflow" | "volcano" | "lws" | "podgroup" => Vec::new(),
            key => vec![key.to_string()],
        };
        let items = list["items"].as_array().cloned().unwrap_or_default();
        Ok(items
            .into_iter()
            .filter(|p| {
                let phase = p["status"]["phase"].as_str().unwrap_or("");
                !matches!(phase, "Succeeded" | "Failed") && p["metadata"]["deletionTimestamp"].is_null()
            })
            .filter(|p| gang_of(&membership_view(p, &gang.namespace), &extra).as_ref() == Some(gang))
            .collect())
    }

    pub(super) async fn delete_pod(&self, pod: &Value, foreground: bool) -> Result<(), Stop> {
        let Some(pod) = pod_ref(pod) else {
            return Err(Stop::Failed("a listed pod has no name or uid".into()));
        };
        let mut options = json!({
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "preconditions": {"uid": pod.uid},
        });
        if foreground {
            options["propagationPolicy"] = json!("Foreground");
        }
        match self.send(Method::DELETE, &Self::pod_path(&pod), Some((Body::Json, &options))).await {
            // Already gone, or re-created under the same name (UID precondition): nothing to do.
            Ok(_) => Ok(()),
            Err(e) if matches!(e.code(), Some(404) | Some(409)) => Ok(()),
            Err(e) => Err(stop_of(&format!("deleting pod {}/{}", pod.namespace, pod.name), &e)),
        }
    }

    /// Sets `condition` (type, reason) on the pod, then, with `delete: Some(foreground)`,
    /// deletes it, so that it ends carrying the condition for its owner's failure policy. A pod
    /// gone or replaced since it was listed needs nothing more.
    pub(super) async fn mark_then_delete(
        &self,
        pod: &Value,
        r: &PodRef,
        (condition, reason): (&str, &str),
        message: &str,
        delete: Option<bool>,
    ) -> Result<(), Stop> {
        match self.patch_pod_condition(r, condition, reason, message).await {
            Ok(()) => match delete {
                Some(foreground) => self.delete_pod(pod, foreground).await,
                None => Ok(()),
            },
            Err(e) if e.code() == Some(404) || Self::is_replaced_pod(&e) => Ok(()),
            Err(e) => Err(stop_of(&format!("marking pod {}/{}", r.namespace, r.name), &e)),
        }
    }

    /// Restarts a gang by deleting its live pods with UID preconditions, so that its owner
    /// re-creates them all at once:
    ///
    /// - JobSet, Indexed Job, Kubeflow training jobs, Volcano jobs, PodGroups and policy label
    ///   keys: every live member is deleted. A Job re-creates its pods (and with
    ///   `backoffLimit: 0` fails, so that JobSet's failure policy restarts the JobSet and counts
    ///   a restart); Kubeflow's operator re-creates missing replicas; Volcano sees `PodEvicted`
    ///   and applies its policy (`RestartJob`).
    /// - LeaderWorkerSet: only the group's leader (`worker-index` 0) is deleted, with foreground
    ///   propagation: the workers' StatefulSet is owned by the leader pod, so the whole group
    ///   goes and LWS re-creates it, whatever its `restartPolicy`.
    ///
    /// A plain delete skips PodDisruptionBudgets on purpose: the gang is already broken. The
    /// restart is remembered by idempotency key: a replay after it completed sends nothing, and
    /// a retry after a partial failure deletes only pods created before the first attempt (to
    /// within the clock skew between this controller and the API server).
    pub(super) async fn restart_gang(
        &self,
        key: &str,
        gang: &GangId,
        incident: &str,
        reason: &str,
        in_place: &[PodRef],
    ) -> Carried {
        let now = self.now();
        // `Some(first attempt)` when this is a retry of a restart that did not complete.
        let retry_of = match self.gang_restarts.lock() {
            Ok(mut map) => {
                map.retain(|_, (t, _)| now.since(*t).as_nanos() < GANG_MEMORY_NS);
                match map.get(key) {
                    Some((_, true)) => return Carried::quiet(ActionOutcome::Done),
                    Some((first, false)) => Some(*first),
                    None => {
                        map.insert(key.to_string(), (now, false));
                        None
                    }
                }
            }
            Err(_) => None,
        };
        let first = retry_of.unwrap_or(now);
        let backoff_key = format!("gang/{gang}");
        let members = match self.gang_members(gang).await {
            Ok(m) => m,
            Err(e) => return Carried::quiet(self.failed_call(&backoff_key, "listing the gang's pods", &e)),
        };
        let members: Vec<Value> = members
            .into_iter()
            .filter(|p| retry_of.is_none() || created_at(p).is_none_or(|created| created < first))
            .collect();
        if members.is_empty() {
            self.settle(&backoff_key);
            return Carried::quiet(ActionOutcome::Gone);
        }
        // Members the engine restarts in place, if their spec (as listed now) still allows it.
        let told: std::collections::HashSet<&str> = in_place.iter().map(|r| r.uid.as_str()).collect();
        let (stay, go): (Vec<&Value>, Vec<&Value>) = members.iter().partition(|p| {
            p["metadata"]["uid"].as_str().is_some_and(|uid| told.contains(uid)) && restarts_in_place(p)
        });
        let leaders: Vec<&Value> = if gang.kind == "lws" && !go.is_empty() {
            members
                .iter()
                .filter(|p| p["metadata"]["labels"]["leaderworkerset.sigs.k8s.io/worker-index"] == "0")
                .collect()
        } else {
            Vec::new()
        };
        // A LeaderWorkerSet group goes as a whole when any member must be re-created.
        let (stay, targets, foreground): (Vec<&Value>, Vec<&Value>, bool) =
            if leaders.is_empty() { (stay, go, false) } else { (Vec::new(), leaders, true) };
        let mut stop = None;
        for pod in &stay {
            if let Err(s) = self.ask_in_place(pod, gang, incident, reason).await {
                stop = merge_stop(stop, s);
            }
        }
        let mark = format!("devheal restarts gang {gang} (incident {incident}): {reason}");
        for pod in &targets {
            // Marked first, so the pod ends Failed carrying the condition a podFailurePolicy
            // can ignore.
            let condition = (GANG_RESTART_CONDITION, "DevhealGangRestart");
            let result = match pod_ref(pod) {
                Some(r) => self.mark_then_delete(pod, &r, condition, &mark, Some(foreground)).await,
                None => self.delete_pod(pod, foreground).await,
            };
            if let Err(s) = result {
                stop = merge_stop(stop, s);
            }
        }
        let regarding = owner_regarding(&members);
        match stop {
            Some(s) => Carried::quiet(self.stop_outcome(&backoff_key, s)),
            None => {
                self.settle(&backoff_key);
                if let Ok(mut map) = self.gang_restarts.lock() {
                    map.insert(key.to_string(), (first, true));
                }
                Carried::with(
                    ActionOutcome::Done,
                    EventSpec {
                        namespace: gang.namespace.clone(),
                        regarding,
                        reason: "DevhealGangRestart",
                        action: "RestartGang",
                        note: if stay.is_empty() {
                            format!(
                                "restarting gang {gang} (incident {incident}): deleted {} of {} pods: {reason}",
                                targets.len(),
                                members.len()
                            )
                        } else {
                            format!(
                                "restarting gang {gang} (incident {incident}): {} of {} pods restart in place (exit {}), deleted {}: {reason}",
                                stay.len(),
                                members.len(),
                                devheal_core::pod::RESTART_IN_PLACE_EXIT_CODE,
                                targets.len()
                            )
                        },
                        warning: true,
                    },
                )
            }
        }
    }

    /// Tells a member to restart in place: condition [`RESTART_IN_PLACE_CONDITION`] with the
    /// incident and the pod's restart count now. A member that already carries it for this
    /// incident (a retry) is left alone, so that a member restarted since is not told twice.
    async fn ask_in_place(
        &self,
        pod: &Value,
        gang: &GangId,
        incident: &str,
        reason: &str,
    ) -> Result<(), Stop> {
        let Some(r) = pod_ref(pod) else {
            return Err(Stop::Failed("a listed pod has no name or uid".into()));
        };
        let told = pod["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter().any(|c| {
                c["type"] == RESTART_IN_PLACE_CONDITION
                    && c["status"] == "True"
                    && c["message"].as_str().and_then(in_place_request_of).is_some_and(|(i, _)| i == incident)
            })
        });
        if told {
            return Ok(());
        }
        let message = in_place_message(&gang.to_string(), incident, restart_total(pod), reason);
        match self
            .patch_pod_condition(&r, RESTART_IN_PLACE_CONDITION, "DevhealRestartInPlace", &message)
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Some(404) || Self::is_replaced_pod(&e) => Ok(()),
            Err(e) => Err(stop_of(&format!("asking pod {}/{} to restart in place", r.namespace, r.name), &e)),
        }
    }

    /// Fails a workload: every live member gets the pod condition
    /// [`WORKLOAD_FAILED_CONDITION`] (True). For Jobs and JobSets the pod is then deleted, so
    /// that it terminates carrying the condition and the Job's `podFailurePolicy` rule
    /// `{action: FailJob, onPodConditions: [{type: devheal.io/WorkloadFailed}]}` fails the Job
    /// (and a JobSet rule `{action: FailJobSet, onJobFailureReasons: [PodFailurePolicy]}` the
    /// JobSet). Without such a rule the deletion is one more restart; the Event says so. Other
    /// kinds have no pod-condition failure policy: their pods are marked only, for an operator or
    /// the owner's own policy when the pods fail.
    pub(super) async fn fail_workload(&self, gang: &GangId, reason: &str) -> Carried {
        let backoff_key = format!("fail/{gang}");
        let members = match self.gang_members(gang).await {
            Ok(m) => m,
            Err(e) => {
                return Carried::quiet(self.failed_call(&backoff_key, "listing the workload's pods", &e));
            }
        };
        if members.is_empty() {
            self.settle(&backoff_key);
            return Carried::quiet(ActionOutcome::Gone);
        }
        let delete = matches!(gang.kind.as_str(), "jobset" | "job");
        let message = format!("devheal failed workload {gang}: {reason}");
        let mut stop = None;
        for pod in &members {
            let Some(r) = pod_ref(pod) else { continue };
            let condition = (WORKLOAD_FAILED_CONDITION, "DevhealFailedWorkload");
            if let Err(s) = self.mark_then_delete(pod, &r, condition, &message, delete.then_some(false)).await
            {
                stop = merge_stop(stop, s);
            }
        }
        match stop {
            Some(s) => Carried::quiet(self.stop_outcome(&backoff_key, s)),
            None => {
                self.settle(&backoff_key);
                let what = if delete {
                    "marked and deleted; a podFailurePolicy FailJob rule on this condition fails the Job"
                } else {
                    "marked; the owner must be failed by its own policy or an operator"
                };
                Carried::with(
                    ActionOutcome::Done,
                    EventSpec {
                        namespace: gang.namespace.clone(),
                        regarding: owner_regarding(&members),
                        reason: "DevhealWorkloadFailed",
                        action: "FailWorkload",
                        note: format!(
                            "failing workload {gang}: {} pods {what} ({WORKLOAD_FAILED_CONDITION}): {reason}",
                            members.len()
                        ),
                        warning: true,
                    },
                )
            }
        }
    }
}

/// Whether a listed pod's spec restarts it in place on the contract's exit code.
fn restarts_in_place(pod: &Value) -> bool {
    serde_json::from_value::<k8s_openapi::api::core::v1::PodSpec>(pod["spec"].clone())
        .ok()
        .and_then(|spec| crate::pod::in_place_restart(&spec))
        .is_some()
}

/// The sum of a listed pod's containers' restart counts.
pub(super) fn restart_total(pod: &Value) -> u32 {
    pod["status"]["containerStatuses"]
        .as_array()
        .map(|cs| cs.iter().filter_map(|c| c["restartCount"].as_u64()).sum::<u64>())
        .unwrap_or(0)
        .min(u64::from(u32::MAX)) as u32
}

/// The parts of a listed pod that [`gang_of`] reads.
pub(super) fn membership_view(pod: &Value, namespace: &str) -> PodInfo {
    let strings = |v: &Value| {
        v.as_object()
            .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
            .unwrap_or_default()
    };
    PodInfo {
        namespace: namespace.to_string(),
        labels: strings(&pod["metadata"]["labels"]),
        annotations: strings(&pod["metadata"]["annotations"]),
        ..PodInfo::default()
    }
}

pub(super) fn pod_ref(pod: &Value) -> Option<PodRef> {
    let m = &pod["metadata"];
    Some(PodRef {
        namespace: m["namespace"].as_str()?.to_string(),
        name: m["name"].as_str()?.to_string(),
        uid: m["uid"].as_str()?.to_string(),
    })
}

pub(super) fn created_at(pod: &Value) -> Option<Time> {
    let t: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time =
        serde_json::from_value(pod["metadata"]["creationTimestamp"].clone()).ok()?;
    i64::try_from(t.0.as_nanosecond()).ok().map(Time::from_nanos)
}

/// The Event's subject for a gang: the controlling owner of its first member (a Job, a
/// PyTorchJob, a StatefulSet), else that member.
pub(super) fn owner_regarding(members: &[Value]) -> Option<Value> {
    let first = members.first()?;
    let namespace = first["metadata"]["namespace"].clone();
    let owner = first["metadata"]["ownerReferences"]
        .as_array()
        .and_then(|os| os.iter().find(|o| o["controller"] == true))
        .cloned();
    match owner {
        Some(o) => Some(json!({
            "apiVersion": o["apiVersion"], "kind": o["kind"], "namespace": namespace,
            "name": o["name"], "uid": o["uid"],
        })),
        None => pod_ref(first).map(|p| KubeActuator::pod_regarding(&p)),
    }
}
