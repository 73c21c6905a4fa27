//! Scraping workload progress: pods on this node that name a step metric in their annotations
//! are read every `--scrape-every` (10 s) and their cumulative readings go to the event loop,
//! which keeps them in the [`crate::progress::ProgressBook`].
//!
//! | annotation | | |
//! |---|---|---|
//! | `devheal.io/progress-metric` | required | the metric family: a histogram or summary of step seconds, or a counter of steps |
//! | `devheal.io/progress-port` | required | the container port serving it (a number) |
//! | `devheal.io/progress-path` | default `/metrics` | the path |
//!
//! The scheme is plain HTTP to the pod's IP. One read may take 5 s and 4 MiB at most. Only pods
//! bound to a device on this node (PodResources) are read. Where targets come from is a `watch`
//! channel of [`ScrapeTarget`]s: [`watch_pods`] fills it from the API server (Pods with
//! `spec.nodeName=<node>`); tests fill it themselves; `--no-kube` has no pod watch and so no
//! scraping (pods can still post to `/v1/progress`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration as StdDuration;

use axum::body::Bytes;
use devheal_core::Time;
use devheal_detect::promtext::{parse, step_reading};
use futures::StreamExt;
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::Pod;
use tokio::sync::{mpsc, watch};

use crate::progress::{PodRef, StepReading};
use crate::publish::wall_now;
use crate::stack::{Selector, StackPod, stack_pod};

pub const PROGRESS_METRIC_ANNOTATION: &str = "devheal.io/progress-metric";
pub const PROGRESS_PORT_ANNOTATION: &str = "devheal.io/progress-port";
pub const PROGRESS_PATH_ANNOTATION: &str = "devheal.io/progress-path";

/// Where a pod's progress metric is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScrapeUrl {
    pub address: SocketAddr,
    pub path: String,
}

impl std::fmt::Display for ScrapeUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}{}", self.address, self.path)
    }
}

/// A pod whose annotations name a progress metric.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScrapeTarget {
    pub pod: PodRef,
    pub uid: Option<String>,
    /// Where to read, or why the annotations (or the pod) do not say (reported as the
    /// workload's `error`).
    pub url: Result<ScrapeUrl, String>,
    pub metric: String,
}

/// What the scraper tells the event loop.
#[derive(Debug)]
pub enum ScrapeEvent {
    Read {
        pod: PodRef,
        uid: Option<String>,
        reading: Result<StepReading, String>,
        at: Time,
    },
    /// The pod is no longer a target (annotation removed, pod gone, device released).
    Stopped {
        pod: PodRef,
    },
}

/// Limits of one scrape.
#[derive(Clone, Debug, PartialEq)]
pub struct ScrapeConfig {
    pub every: StdDuration,
    pub timeout: StdDuration,
    pub max_body: usize,
}

impl Default for ScrapeConfig {
    fn default() -> Self {
        ScrapeConfig {
            every: StdDuration::from_secs(10),
            timeout: StdDuration::from_secs(5),
            max_body: 4 << 20,
        }
    }
}

/// The scrape target a pod's annotations describe; `None` when it names no metric or has ended.
pub fn target_of(pod: &Pod) -> Option<ScrapeTarget> {
    let annotations = pod.metadata.annotations.as_ref()?;
    let metric = annotations.get(PROGRESS_METRIC_ANNOTATION)?.trim().to_string();
    let status = pod.status.as_ref();
    if pod.metadata.deletion_timestamp.is_some()
        || status.and_then(|s| s.phase.as_deref()).is_some_and(|p| p == "Succeeded" || p == "Failed")
    {
        return None;
    }
    let pod_ref =
        PodRef::new(pod.metadata.namespace.as_deref().unwrap_or("default"), pod.metadata.name.as_deref()?);
    let url = (|| {
        if metric.is_empty() {
            return Err(format!("annotation {PROGRESS_METRIC_ANNOTATION} is empty"));
        }
        let port = annotations.get(PROGRESS_PORT_ANNOTATION).ok_or_else(|| {
            format!("annotation {PROGRESS_PORT_ANNOTATION} is missing (the port serving {metric})")
        })?;
        let port: u16 =
            port.trim().parse().ok().filter(|p| *p > 0).ok_or_else(|| {
                format!("annotation {PROGRESS_PORT_ANNOTATION} {port:?} is not a port number")
            })?;
        let path = annotations.get(PROGRESS_PATH_ANNOTATION).map_or("/metrics", |p| p.trim());
        if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "annotation {PROGRESS_PATH_ANNOTATION} {path:?} is not a path (it starts with /)"
            ));
        }
        let ip = status.and_then(|s| s.pod_ip.as_deref()).ok_or("the pod has no IP yet")?;
        let ip: IpAddr = ip.parse().map_err(|_| format!("the pod's IP {ip:?} is not an IP address"))?;
        Ok(ScrapeUrl { address: SocketAddr::new(ip, port), path: path.to_string() })
    })();
    Some(ScrapeTarget { pod: pod_ref, uid: pod.metadata.uid.clone(), url, metric })
}

/// Where a pod on this node is, for telling its own progress reports from forged ones
/// (`POST /v1/progress` is accepted only from the pod's IP; see [`crate::http::ProgressAuth`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodAddress {
    pub ip: Option<IpAddr>,
    /// The pod's uid (a token bound to an earlier pod of the same name is not this pod's).
    pub uid: Option<String>,
    /// A host-network pod shares the node's IP: its address proves nothing.
    pub host_network: bool,
    /// The message of the pod's `devheal.io/ReplaceAtCheckpoint` condition while it is True:
    /// the controller wants this gang member to checkpoint and leave (`docs/policy.md`,
    /// "Replacing a slow member"); its progress reports are answered with it.
    pub replace_at_checkpoint: Option<String>,
    /// The message of the pod's `devheal.io/RestartInPlace` condition while it is True and the
    /// pod has not restarted since it was asked (its containers' restart counts add up to no
    /// more than the count the condition names): the controller wants this gang member to exit
    /// with the restart-in-place code (`docs/policy.md`, "Restarting a gang in place").
    pub restart_in_place: Option<String>,
}

/// Every pod on the node, by namespace and name.
pub type PodAddresses = BTreeMap<PodRef, PodAddress>;

fn address_of(pod: &Pod) -> PodAddress {
    PodAddress {
        ip: pod.status.as_ref().and_then(|s| s.pod_ip.as_deref()).and_then(|ip| ip.parse().ok()),
        uid: pod.metadata.uid.clone(),
        host_network: pod.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false),
        replace_at_checkpoint: pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| {
                cs.iter().find(|c| {
                    c.type_ == devheal_k8s::actuator::REPLACE_AT_CHECKPOINT_CONDITION && c.status == "True"
                })
            })
            .map(|c| c.message.clone().unwrap_or_default()),
        restart_in_place: pending_in_place(pod),
    }
}

/// The message of a pod's standing `devheal.io/RestartInPlace` request, unless the pod restarted
/// since it was made (or the message is not one the controller writes).
fn pending_in_place(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    let condition = status
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == devheal_k8s::actuator::RESTART_IN_PLACE_CONDITION && c.status == "True")?;
    let message = condition.message.as_deref()?;
    let (_, asked_at) = devheal_k8s::actuator::in_place_request_of(message)?;
    let restarts: u32 = status
        .container_statuses
        .iter()
        .flatten()
        .map(|c| u32::try_from(c.restart_count).unwrap_or(0))
        .fold(0, u32::saturating_add);
    (restarts <= asked_at).then(|| message.to_string())
}

/// Follow the Pods on `node` and keep `targets` at those that name a progress metric. Runs
/// until `targets` has no receiver; watch errors are retried with the watcher's back-off.
pub async fn watch_pods(client: kube::Client, node: String, targets: watch::Sender<Vec<ScrapeTarget>>) {
    watch_node_pods(client, node, targets, NodePodSinks::default()).await
}

/// Where the pod watch of [`watch_node_pods`] keeps what it finds besides scrape targets.
#[derive(Default)]
pub struct NodePodSinks {
    /// Every pod of the node (for progress reports' authentication).
    pub addresses: Option<watch::Sender<PodAddresses>>,
    /// The node's device-stack pods ([`crate::stack`]) by these selectors.
    pub stack: Option<(Vec<Selector>, watch::Sender<Vec<StackPod>>)>,
}

/// One view of the node's pods kept from the watch: what `of` makes of each pod, by pod. A
/// relist replaces it whole when it is done.
struct Mirror<T> {
    current: BTreeMap<PodRef, T>,
    listing: Option<BTreeMap<PodRef, T>>,
}

impl<T> Mirror<T> {
    fn new() -> Self {
        Mirror { current: BTreeMap::new(), listing: None }
    }

    fn apply(&mut self, event: &kube::runtime::watcher::Event<Pod>, of: impl Fn(&Pod) -> Option<T>) {
        use kube::runtime::watcher::Event;
        match event {
            Event::Apply(pod) => match of(pod) {
                Some(t) => {
                    self.current.insert(pod_key(pod), t);
                }
                None => {
                    self.current.remove(&pod_key(pod));
                }
            },
            Event::Delete(pod) => {
                self.current.remove(&pod_key(pod));
            }
            Event::Init => self.listing = Some(BTreeMap::new()),
            Event::InitApply(pod) => {
                if let (Some(list), Some(t)) = (self.listing.as_mut(), of(pod)) {
                    list.insert(pod_key(pod), t);
                }
            }
            Event::InitDone => {
                if let Some(list) = self.listing.take() {
                    self.current = list;
                }
            }
        }
    }
}

fn pod_key(p: &Pod) -> PodRef {
    PodRef::new(
        p.metadata.namespace.as_deref().unwrap_or("default"),
        p.metadata.name.as_deref().unwrap_or(""),
    )
}

impl<T: Clone + PartialEq> Mirror<T> {
    /// Sets `tx` to the view, by pod, if it differs (receivers wake only on a change; nothing is
    /// copied when nothing changed).
    fn publish_map(&self, tx: &watch::Sender<BTreeMap<PodRef, T>>) {
        tx.send_if_modified(|old| {
            let changed = *old != self.current;
            if changed {
                old.clone_from(&self.current);
            }
            changed
        });
    }

    /// Sets `tx` to the view's values in pod order, if they differ.
    fn publish_values(&self, tx: &watch::Sender<Vec<T>>) {
        tx.send_if_modified(|old| {
            let changed = !old.iter().eq(self.current.values());
            if changed {
                *old = self.current.values().cloned().collect();
            }
            changed
        });
    }
}

/// [`watch_pods`], also keeping the [`NodePodSinks`] at what they follow.
pub async fn watch_node_pods(
    client: kube::Client,
    node: String,
    targets: watch::Sender<Vec<ScrapeTarget>>,
    sinks: NodePodSinks,
) {
    use kube::runtime::WatchStreamExt;
    use kube::runtime::watcher;
    let api: kube::Api<Pod> = kube::Api::all(client);
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut stream = watcher::watcher(api, config).default_backoff().boxed();
    let mut scrape: Mirror<ScrapeTarget> = Mirror::new();
    let mut addresses: Mirror<PodAddress> = Mirror::new();
    let mut stack: Mirror<StackPod> = Mirror::new();
    let mut failing = false;
    loop {
        let event = tokio::select! {
            event = stream.next() => event,
            _ = targets.closed() => return,
        };
        let Some(event) = event else { return };
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "watching this node's pods failed (retrying); scrape targets may be stale");
                }
                failing = true;
                continue;
            }
        };
        failing = false;
        if let Some(tx) = &sinks.addresses {
            addresses.apply(&event, |p| Some(address_of(p)));
            addresses.publish_map(tx);
        }
        if let Some((selectors, tx)) = &sinks.stack {
            stack.apply(&event, |p| stack_pod(p, selectors));
            stack.publish_values(tx);
        }
        scrape.apply(&event, target_of);
        scrape.publish_values(&targets);
    }
}

/// Read every target bound to a device here (`bound`) each `config.every`, concurrently, and
/// send what was read to `out`, until `shutdown` turns true or `out` is closed.
pub async fn run_scraper(
    config: ScrapeConfig,
    targets: watch::Receiver<Vec<ScrapeTarget>>,
    bound: watch::Receiver<BTreeSet<PodRef>>,
    out: mpsc::Sender<ScrapeEvent>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(config.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut scraped: BTreeSet<PodRef> = BTreeSet::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        let current: Vec<ScrapeTarget> = {
            let bound = bound.borrow();
            targets.borrow().iter().filter(|t| bound.contains(&t.pod)).cloned().collect()
        };
        let now_scraped: BTreeSet<PodRef> = current.iter().map(|t| t.pod.clone()).collect();
        for pod in scraped.difference(&now_scraped) {
            if out.send(ScrapeEvent::Stopped { pod: pod.clone() }).await.is_err() {
                return;
            }
        }
        scraped = now_scraped;
        let reads = futures::future::join_all(current.into_iter().map(|t| {
            let config = config.clone();
            async move {
                let reading = match &t.url {
                    Ok(url) => read_progress(url, &t.metric, &config).await,
                    Err(problem) => Err(problem.clone()),
                };
                ScrapeEvent::Read { pod: t.pod, uid: t.uid, reading, at: wall_now() }
            }
        }))
        .await;
        for read in reads {
            if out.send(read).await.is_err() {
                return;
            }
        }
    }
}

/// One read of `metric` at `url`; the error names the URL and what went wrong.
pub async fn read_progress(
    url: &ScrapeUrl,
    metric: &str,
    config: &ScrapeConfig,
) -> Result<StepReading, String> {
    let text = match tokio::time::timeout(config.timeout, fetch(url, config.max_body)).await {
        Ok(Ok(text)) => text,
        Ok(Err(e)) => return Err(format!("{url}: {e}")),
        Err(_) => return Err(format!("{url}: no answer within {:?}", config.timeout)),
    };
    let exposition = parse(&text).map_err(|e| format!("{url}: {e}"))?;
    step_reading(&exposition, metric).map_err(|e| format!("{url}: {e}"))
}

/// GET `url` over HTTP/1.1; the body as text, at most `max_body` bytes.
async fn fetch(url: &ScrapeUrl, max_body: usize) -> Result<String, String> {
    let stream = tokio::net::TcpStream::connect(url.address).await.map_err(|e| e.to_string())?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    let connection = tokio::spawn(connection);
    let request = http::Request::get(url.path.as_str())
        .header(http::header::HOST, url.address.to_string())
        .header(
            http::header::ACCEPT,
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
        )
        .header(http::header::USER_AGENT, "devheal-agent")
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let result = async {
        let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("HTTP {}", response.status()));
        }
        let body = http_body_util::Limited::new(response.into_body(), max_body)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    format!("the body is larger than {max_body} bytes")
                } else {
                    e.to_string()
                }
            })?
            .to_bytes();
        String::from_utf8(body.to_vec()).map_err(|_| "the body is not UTF-8 text".to_string())
    }
    .await;
    connection.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodStatus;
    use kube::api::ObjectMeta;

    fn pod(annotations: &[(&str, &str)], ip: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("trainer-3".into()),
                namespace: Some("ml".into()),
                uid: Some("u-1".into()),
                annotations: Some(annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
                ..ObjectMeta::default()
            },
            status: Some(PodStatus {
                pod_ip: ip.map(str::to_string),
                phase: Some("Running".into()),
                ..PodStatus::default()
            }),
            ..Pod::default()
        }
    }

    /// A restart-in-place request stands until the pod's restart count passes the count it
    /// was made at: a member restarted as asked is not told again (it would restart forever).
    #[test]
    fn a_restart_in_place_request_ends_when_the_pod_restarted() {
        let message = devheal_k8s::actuator::in_place_message("ml/jobset/llama", "inc-1", 2, "hang");
        let with = |restart_counts: &[i32], status: &str, message: &str| {
            let mut p = pod(&[], Some("10.1.2.3"));
            let s: PodStatus = serde_json::from_value(serde_json::json!({
                "phase": "Running", "podIP": "10.1.2.3",
                "conditions": [{"type": "devheal.io/RestartInPlace", "status": status, "message": message}],
                "containerStatuses": restart_counts.iter().enumerate().map(|(i, n)| serde_json::json!({
                    "name": format!("c{i}"), "image": "i", "imageID": "", "ready": true, "restartCount": n,
                })).collect::<Vec<_>>(),
            }))
            .expect("a status");
            p.status = Some(s);
            address_of(&p).restart_in_place
        };
        assert_eq!(with(&[1, 1], "True", &message).as_deref(), Some(message.as_str()));
        assert_eq!(with(&[2, 1], "True", &message), None, "restarted since");
        assert_eq!(with(&[1, 1], "False", &message), None);
        assert_eq!(with(&[0], "True", "restart, please"), None, "not a request the controller wrote");
    }

    #[test]
    fn annotations_give_a_target_or_say_what_is_wrong() {
        let t = target_of(&pod(
            &[(PROGRESS_METRIC_ANNOTATION, "train_step_seconds"), (PROGRESS_PORT_ANNOTATION, "8000")],
            Some("10.1.2.3"),
        ))
        .expect("a target");
        assert_eq!(t.pod, PodRef::new("ml", "trainer-3"));
        assert_eq!(t.uid.as_deref(), Some("u-1"));
        assert_eq!(t.metric, "train_step_seconds");
        assert_eq!(t.url.expect("a url").to_string(), "http://10.1.2.3:8000/metrics");

        let with_path = target_of(&pod(
            &[
                (PROGRESS_METRIC_ANNOTATION, "s"),
                (PROGRESS_PORT_ANNOTATION, "9"),
                (PROGRESS_PATH_ANNOTATION, "/m"),
            ],
            Some("fd00::1"),
        ))
        .expect("a target");
        assert_eq!(with_path.url.expect("a url").to_string(), "http://[fd00::1]:9/m");

        assert_eq!(target_of(&pod(&[], Some("10.1.2.3"))), None, "no metric, no target");
        let problem = |annotations: &[(&str, &str)], ip| {
            target_of(&pod(annotations, ip)).expect("a target").url.expect_err("a problem")
        };
        let missing = problem(&[(PROGRESS_METRIC_ANNOTATION, "s")], Some("10.1.2.3"));
        assert!(missing.contains("devheal.io/progress-port is missing"), "{missing}");
        let bad = problem(
            &[(PROGRESS_METRIC_ANNOTATION, "s"), (PROGRESS_PORT_ANNOTATION, "http")],
            Some("10.1.2.3"),
        );
        assert!(bad.contains("\"http\" is not a port number"), "{bad}");
        let path = problem(
            &[
                (PROGRESS_METRIC_ANNOTATION, "s"),
                (PROGRESS_PORT_ANNOTATION, "1"),
                (PROGRESS_PATH_ANNOTATION, "m"),
            ],
            Some("10.1.2.3"),
        );
        assert!(path.contains("progress-path"), "{path}");
        let no_ip = problem(&[(PROGRESS_METRIC_ANNOTATION, "s"), (PROGRESS_PORT_ANNOTATION, "1")], None);
        assert!(no_ip.contains("no IP"), "{no_ip}");

        let mut ended =
            pod(&[(PROGRESS_METRIC_ANNOTATION, "s"), (PROGRESS_PORT_ANNOTATION, "1")], Some("10.1.2.3"));
        ended.status.as_mut().expect("status").phase = Some("Succeeded".into());
        assert_eq!(target_of(&ended), None, "an ended pod is not scraped");
    }
}
