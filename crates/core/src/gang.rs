//! Gangs: recognising which pods must run and restart together, from the labels and
//! annotations that JobSet, Indexed Jobs, Kubeflow training jobs, LeaderWorkerSet, Volcano and
//! coscheduling PodGroups put on their pods, or from a label key a policy names.

use crate::pod::{GangId, PodInfo};

/// Label and annotation keys, in the order they are tried. The first that is present wins:
/// JobSet before its child Job, LeaderWorkerSet's group before anything generic.
const JOBSET_NAME: &str = "jobset.sigs.k8s.io/jobset-name";
const JOBSET_RESTART_ATTEMPT: &str = "jobset.sigs.k8s.io/restart-attempt";
const LWS_NAME: &str = "leaderworkerset.sigs.k8s.io/name";
const LWS_GROUP_INDEX: &str = "leaderworkerset.sigs.k8s.io/group-index";
const KUBEFLOW_JOB_NAME: &str = "training.kubeflow.org/job-name";
const VOLCANO_JOB_NAME: &str = "volcano.sh/job-name";
const PODGROUP_KEYS: [&str; 4] = [
    "scheduling.k8s.io/group-name",
    "scheduling.volcano.sh/group-name",
    "scheduling.x-k8s.io/pod-group",
    "pod-group.scheduling.sigs.k8s.io",
];
const JOB_NAME: &str = "batch.kubernetes.io/job-name";
const JOB_COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";

fn label_or_annotation<'a>(pod: &'a PodInfo, key: &str) -> Option<&'a str> {
    pod.labels.get(key).or_else(|| pod.annotations.get(key)).map(String::as_str).filter(|v| !v.is_empty())
}

/// The gang a pod belongs to, if any. `extra_label_keys` (from policies) are tried first; the
/// gang kind is then the label key itself.
pub fn gang_of(pod: &PodInfo, extra_label_keys: &[String]) -> Option<GangId> {
    let id =
        |kind: &str, name: String| GangId { namespace: pod.namespace.clone(), kind: kind.to_string(), name };
    for key in extra_label_keys {
        if let Some(v) = label_or_annotation(pod, key) {
            return Some(id(key, v.to_string()));
        }
    }
    if let Some(v) = label_or_annotation(pod, JOBSET_NAME) {
        return Some(id("jobset", v.to_string()));
    }
    if let Some(v) = label_or_annotation(pod, LWS_NAME) {
        // The gang of a LeaderWorkerSet is one group (a leader and its workers).
        let group = label_or_annotation(pod, LWS_GROUP_INDEX).unwrap_or("0");
        return Some(id("lws", format!("{v}/{group}")));
    }
    if let Some(v) = label_or_annotation(pod, KUBEFLOW_JOB_NAME) {
        return Some(id("kubeflow", v.to_string()));
    }
    if let Some(v) = label_or_annotation(pod, VOLCANO_JOB_NAME) {
        return Some(id("volcano", v.to_string()));
    }
    for key in PODGROUP_KEYS {
        if let Some(v) = label_or_annotation(pod, key) {
            return Some(id("podgroup", v.to_string()));
        }
    }
    // An Indexed Job is a gang (its pods are ranks); a plain Job's pods are independent.
    if label_or_annotation(pod, JOB_COMPLETION_INDEX).is_some()
        && let Some(v) = label_or_annotation(pod, JOB_NAME).or_else(|| label_or_annotation(pod, "job-name"))
    {
        return Some(id("job", v.to_string()));
    }
    None
}

/// The restart attempt a gang member belongs to (JobSet's `restart-attempt` label), if known.
pub fn restart_attempt(pod: &PodInfo) -> Option<u64> {
    label_or_annotation(pod, JOBSET_RESTART_ATTEMPT).and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> PodInfo {
        PodInfo {
            namespace: "ml".into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            annotations: annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..PodInfo::default()
        }
    }

    #[test]
    fn recognises_each_controller() {
        let cases = [
            (pod(&[(JOBSET_NAME, "llama"), (JOB_NAME, "llama-w-0")], &[]), "jobset", "llama"),
            (pod(&[(LWS_NAME, "vllm"), (LWS_GROUP_INDEX, "3")], &[]), "lws", "vllm/3"),
            (pod(&[(KUBEFLOW_JOB_NAME, "bert")], &[]), "kubeflow", "bert"),
            (pod(&[(VOLCANO_JOB_NAME, "mpi")], &[]), "volcano", "mpi"),
            (pod(&[], &[("scheduling.k8s.io/group-name", "pg1")]), "podgroup", "pg1"),
            (pod(&[("scheduling.x-k8s.io/pod-group", "pg2")], &[]), "podgroup", "pg2"),
            (pod(&[(JOB_NAME, "idx")], &[(JOB_COMPLETION_INDEX, "0")]), "job", "idx"),
        ];
        for (p, kind, name) in cases {
            let g = gang_of(&p, &[]).expect("gang");
            assert_eq!((g.kind.as_str(), g.name.as_str(), g.namespace.as_str()), (kind, name, "ml"));
        }
    }

    #[test]
    fn plain_job_pods_and_bare_pods_are_not_gangs() {
        assert_eq!(gang_of(&pod(&[(JOB_NAME, "batch")], &[]), &[]), None);
        assert_eq!(gang_of(&pod(&[("app", "web")], &[]), &[]), None);
    }

    #[test]
    fn a_policy_label_key_wins() {
        let p = pod(&[("my.org/gang", "g7"), (JOBSET_NAME, "llama")], &[]);
        let g = gang_of(&p, &["my.org/gang".to_string()]).expect("gang");
        assert_eq!((g.kind.as_str(), g.name.as_str()), ("my.org/gang", "g7"));
    }

    #[test]
    fn restart_attempt_parses() {
        assert_eq!(restart_attempt(&pod(&[(JOBSET_RESTART_ATTEMPT, "4")], &[])), Some(4));
        assert_eq!(restart_attempt(&pod(&[(JOBSET_RESTART_ATTEMPT, "x")], &[])), None);
    }
}
