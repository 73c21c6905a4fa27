//! The real `devheal controller` against a real kube-apiserver and etcd on loopback: 1,000 Nodes
//! with 8 devices each, 8,000 pods in 1,000 gangs of 8 (an Indexed Job's labels), 1,000
//! NodeDeviceHealth objects, on the same machine as the control plane.
//!
//! ```text
//! cargo bench --profile dev -p devheal --bench real_apiserver     # options: -- --gangs N --faults N --baseline N --keep
//! ```
//!
//! What it does, in one run:
//! - starts its own control plane (`testenv/controlplane.sh`, etcd + kube-apiserver only, with the
//!   API server's audit log on) and applies `deploy/crds` and `deploy/base`;
//! - populates the cluster as the admin: Ready Nodes with 8 `devheal.io/fake-gpu`, gang g's 8
//!   members on node g (member m on device `fake-gpu-m`, Running), and each node's
//!   NodeDeviceHealth with its 8 devices Healthy and their pods bound (uids included); the last
//!   gang's device 0 is already Unhealthy before the controller starts;
//! - starts `devheal controller` with a token of the `devheal-controller` service account (real
//!   RBAC, and the audit log names its requests) and measures the time to `/readyz` (its lists
//!   and watches of every Pod, Node and NodeDeviceHealth) and to its first action (on the fault
//!   present at start), beside the same-run baseline of the admin listing the same objects;
//! - baseline: the API server's own propagation, a NodeDeviceHealth status patch to the change
//!   seen on the bench's watch (the floor any controller pays, twice: its input and its action);
//! - faults: one at a time, device 0 of gang i's node turns Unhealthy (Xid 79, nvml), timed from
//!   the patch to the first action visible on the bench's watches of Nodes (the quarantine taint,
//!   a repair condition) and Pods (a `devheal.io/…` condition, a deletion), 10 s at most each;
//! - API requests per action from the audit log (the controller's requests that are not watches
//!   during the faults, over its `devheal_controller_actions_total{outcome="done"}` delta), and
//!   every non-2xx answer the controller got, by verb, resource and code;
//! - the controller's VmRSS and VmHWM (`/proc/<pid>/status`).
//!
//! Needs the control-plane binaries (`testenv/build.sh`: go and about 15 minutes cold), openssl,
//! python3, curl and kubectl. Exits non-zero when the control plane does not start or a fault is
//! never acted on. Not part of CI; about 2 minutes on 2 cores, most of it populating the cluster.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ServiceAccount};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};

// The control-plane setup the end-to-end tests use (kubectl, deploy/, clients, tokens).
#[path = "common/memory.rs"]
mod memory;
#[path = "../tests/e2e/setup.rs"]
mod setup;
use setup::SYSTEM_NS;

const FAKE_GPU: &str = "devheal.io/fake-gpu";
const GPUS: usize = 8;
const NS: &str = "bench";
const CONTROLLER_USER: &str = "system:serviceaccount:devheal-system:devheal-controller";
const QUARANTINE_TAINT: &str = "devheal.io/device-quarantine-";
const JOB_NAME: &str = "batch.kubernetes.io/job-name";
const JOB_INDEX: &str = "batch.kubernetes.io/job-completion-index";
/// Requests in flight while populating.
const PARALLEL: usize = 32;
/// How long a fault may wait for its first action before it counts as never acted on.
const FAULT_TIMEOUT: Duration = Duration::from_secs(10);

fn node_name(g: usize) -> String {
    format!("bench-node-{g:04}")
}
fn gang_name(g: usize) -> String {
    format!("gang-{g:04}")
}
fn pod_name(g: usize, m: usize) -> String {
    format!("gang-{g:04}-{m}")
}
fn index_of(name: &str, prefix: &str) -> Option<usize> {
    name.strip_prefix(prefix)?.get(..4)?.parse().ok()
}

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.windows(2).find(|w| w[0] == name).and_then(|w| w[1].parse().ok()).unwrap_or(default)
}

// ------------------------------------------------------------------------ processes

/// The control plane `testenv/controlplane.sh` started; stopped on drop (also on a panic or a
/// half start).
struct ControlPlane {
    script: PathBuf,
    dir: PathBuf,
    kubeconfig: PathBuf,
    server: String,
    ca: PathBuf,
}

impl ControlPlane {
    fn start(root: &Path, dir: &Path) -> Result<ControlPlane> {
        let mut cp = ControlPlane {
            script: root.join("testenv/controlplane.sh"),
            dir: dir.to_path_buf(),
            kubeconfig: PathBuf::new(),
            server: String::new(),
            ca: PathBuf::new(),
        };
        let status = Command::new(&cp.script)
            .arg("start")
            .arg(dir)
            .env("DEVHEAL_TESTENV_COMPONENTS", "etcd apiserver")
            .env("DEVHEAL_TESTENV_AUDIT", "1")
            .stdin(Stdio::null())
            .status()
            .context("running testenv/controlplane.sh")?;
        if !status.success() {
            bail!("testenv/controlplane.sh start failed ({status})");
        }
        let env = std::fs::read_to_string(dir.join("env")).context("reading the control plane's env file")?;
        for line in env.lines() {
            match line.split_once('=') {
                Some(("DEVHEAL_E2E_KUBECONFIG", v)) => cp.kubeconfig = v.into(),
                Some(("DEVHEAL_E2E_SERVER", v)) => cp.server = v.into(),
                Some(("DEVHEAL_E2E_CA", v)) => cp.ca = v.into(),
                _ => {}
            }
        }
        if cp.server.is_empty() {
            bail!("the control plane's env file names no server");
        }
        Ok(cp)
    }

    /// RSS in KiB of a control-plane component (`DIR/pids`).
    fn rss_kib(&self, component: &str) -> Option<u64> {
        let pids = std::fs::read_to_string(self.dir.join("pids")).ok()?;
        let pid: u32 = pids.lines().find_map(|l| l.strip_prefix(component)?.trim().parse().ok())?;
        memory::memory(pid).map(|s| s.rss_kib)
    }

    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        setup::kubectl(&self.kubeconfig, args, stdin.map(str::as_bytes))
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = Command::new(&self.script).arg("stop").arg(&self.dir).stdin(Stdio::null()).status();
    }
}

/// The `devheal controller` process: SIGTERM on drop, its log's tail printed when the run failed.
struct ControllerProcess {
    child: Child,
    log: PathBuf,
    failed: bool,
}

impl ControllerProcess {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        self.stop();
        if self.failed || std::thread::panicking() {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            eprintln!("--- last lines of the controller's log ({})", self.log.display());
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// `devheal_controller_actions_total{outcome="done"}` per action.
fn actions_done(metrics: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in metrics.lines().filter(|l| l.starts_with("devheal_controller_actions_total{")) {
        let Some((labels, value)) = line.rsplit_once(' ') else { continue };
        if !labels.contains("outcome=\"done\"") {
            continue;
        }
        let Some(action) = labels.split("action=\"").nth(1).and_then(|r| r.split('"').next()) else {
            continue;
        };
        *out.entry(action.to_string()).or_default() += value.trim().parse::<f64>().unwrap_or(0.0);
    }
    out
}

fn metric(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

// ------------------------------------------------------------------------ objects

fn node_object(g: usize) -> Node {
    let name = node_name(g);
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}},
    }))
    .expect("a node")
}

/// The status a kubelet reports for a Ready node with 8 fake GPUs.
fn node_status(g: usize) -> Value {
    let name = node_name(g);
    let resources = json!({"cpu": "64", "memory": "512Gi", "pods": "110", FAKE_GPU: GPUS.to_string()});
    let now = Timestamp::now().to_string();
    json!({"status": {
        "capacity": resources, "allocatable": resources,
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                        "message": "the benchmark plays the kubelet",
                        "lastHeartbeatTime": now, "lastTransitionTime": now}],
        "nodeInfo": {"machineID": name, "systemUUID": name, "bootID": format!("boot-{name}"),
                     "kernelVersion": "6.1.0", "osImage": "bench", "containerRuntimeVersion": "fake://1",
                     "kubeletVersion": "v1.37.2", "kubeProxyVersion": "", "operatingSystem": "linux",
                     "architecture": "amd64"},
    }})
}

/// Member `m` of gang `g`: an Indexed Job's labels, bound to node g, one fake GPU.
fn pod_object(g: usize, m: usize) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": pod_name(g, m), "namespace": NS,
                     "labels": {JOB_NAME: gang_name(g), JOB_INDEX: m.to_string()}},
        "spec": {
            "nodeName": node_name(g),
            "restartPolicy": "Never",
            "containers": [{"name": "work", "image": "registry.k8s.io/pause:3.10",
                            "resources": {"limits": {FAKE_GPU: "1"}}}],
        },
    }))
    .expect("a pod")
}

/// The status a kubelet reports for a running pod.
fn pod_running() -> Value {
    let now = Timestamp::now().to_string();
    json!({"status": {
        "phase": "Running", "startTime": now, "hostIP": "127.0.0.1", "podIP": "127.0.0.1",
        "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now},
                       {"type": "PodScheduled", "status": "True", "lastTransitionTime": now}],
        "containerStatuses": [{"name": "work", "image": "registry.k8s.io/pause:3.10", "imageID": "",
                               "ready": true, "restartCount": 0, "started": true,
                               "state": {"running": {"startedAt": now}}}],
    }})
}

fn ndh_api(client: &Client) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("devheal.io", "v1alpha1", "NodeDeviceHealth");
    Api::all_with(client.clone(), &ApiResource::from_gvk_with_plural(&gvk, "nodedevicehealths"))
}

fn ndh_object(g: usize) -> DynamicObject {
    let name = node_name(g);
    serde_json::from_value(json!({
        "apiVersion": "devheal.io/v1alpha1", "kind": "NodeDeviceHealth",
        "metadata": {"name": name}, "spec": {"nodeName": name},
    }))
    .expect("a NodeDeviceHealth")
}

/// Node g's NodeDeviceHealth status as its agent would publish it: 8 devices, each with its pod
/// bound; device 0 Unhealthy (Xid 79 from NVML) when `failed`.
fn ndh_status(g: usize, uids: &[String], since: &str, failed: Option<&str>) -> Value {
    let devices: Vec<Value> = (0..GPUS)
        .map(|m| {
            let unhealthy = m == 0 && failed.is_some();
            let reasons = match failed {
                Some(at) if unhealthy => json!([{"source": "nvml", "code": 79,
                    "message": "GPU has fallen off the bus", "firstSeen": at, "lastSeen": at, "count": 1}]),
                _ => json!([]),
            };
            json!({"id": format!("fake-gpu-{m}"), "resource": FAKE_GPU,
                   "health": if unhealthy { "Unhealthy" } else { "Healthy" },
                   "since": if unhealthy { failed.unwrap_or(since) } else { since },
                   "reasons": reasons,
                   "pods": [{"namespace": NS, "name": pod_name(g, m), "uid": uids[m], "container": "work"}]})
        })
        .collect();
    let unhealthy = u32::from(failed.is_some());
    json!({"status": {
        "lastHeartbeat": failed.unwrap_or(since),
        "summary": {"devices": GPUS, "healthy": GPUS as u32 - unhealthy, "degraded": 0,
                    "unhealthy": unhealthy, "unknown": 0},
        "devices": devices,
        "sources": [{"name": "nvml", "available": true}, {"name": "pod_resources", "available": true}],
    }})
}

// ------------------------------------------------------------------------ what the bench sees

/// What the bench's own watches saw, with when.
#[derive(Default)]
struct Seen {
    /// Gang → the first action on it visible in the API server, and its kind.
    first_action: HashMap<usize, (Instant, &'static str)>,
    /// Node index → when its NodeDeviceHealth was first seen with device 0 Unhealthy.
    ndh_unhealthy: HashMap<usize, Instant>,
    /// `status.lastHeartbeat` values seen on the NodeDeviceHealth objects, with when.
    heartbeats: HashMap<String, Instant>,
    /// Watches that finished their initial list.
    listed: usize,
}

struct Shared {
    seen: Mutex<Seen>,
    tick: tokio::sync::watch::Sender<u64>,
}

impl Shared {
    fn update(&self, f: impl FnOnce(&mut Seen) -> bool) {
        let changed = f(&mut self.seen.lock().unwrap());
        if changed {
            self.tick.send_modify(|t| *t += 1);
        }
    }

    /// Waits until `check` answers, at most `timeout`.
    async fn wait_for<T>(&self, timeout: Duration, mut check: impl FnMut(&Seen) -> Option<T>) -> Option<T> {
        let mut rx = self.tick.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            rx.borrow_and_update();
            if let Some(v) = check(&self.seen.lock().unwrap()) {
                return Some(v);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => return None,
            }
        }
    }

    fn action(&self, gang: usize, kind: &'static str) {
        let now = Instant::now();
        self.update(|s| {
            if s.first_action.contains_key(&gang) {
                return false;
            }
            s.first_action.insert(gang, (now, kind));
            true
        });
    }
}

fn spawn_watch<K, F>(shared: Arc<Shared>, api: Api<K>, mut on: F)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    F: FnMut(&Shared, &K, bool) + Send + 'static,
{
    tokio::spawn(async move {
        let mut stream = watcher(api, watcher::Config::default()).default_backoff().boxed();
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => on(&shared, &o, false),
                Ok(watcher::Event::Delete(o)) => on(&shared, &o, true),
                Ok(watcher::Event::InitDone) => shared.update(|s| {
                    s.listed += 1;
                    true
                }),
                Ok(watcher::Event::Init) => {}
                Err(e) => eprintln!("bench watch: {e}"),
            }
        }
    });
}

fn on_node(shared: &Shared, node: &Node, _deleted: bool) {
    let Some(g) = node.metadata.name.as_deref().and_then(|n| index_of(n, "bench-node-")) else { return };
    let taints = node.spec.as_ref().and_then(|s| s.taints.as_ref());
    if taints.is_some_and(|ts| ts.iter().any(|t| t.key.starts_with(QUARANTINE_TAINT))) {
        shared.action(g, "quarantine taint");
    }
    let conditions = node.status.as_ref().and_then(|s| s.conditions.as_ref());
    if conditions.is_some_and(|cs| cs.iter().any(|c| c.type_.starts_with("devheal.io/"))) {
        shared.action(g, "node repair condition");
    }
}

fn on_pod(shared: &Shared, pod: &Pod, deleted: bool) {
    let labels = pod.metadata.labels.as_ref();
    let Some(g) = labels.and_then(|l| l.get(JOB_NAME)).and_then(|n| index_of(n, "gang-")) else { return };
    if deleted || pod.metadata.deletion_timestamp.is_some() {
        shared.action(g, "pod deletion");
    }
    let conditions = pod.status.as_ref().and_then(|s| s.conditions.as_ref());
    if conditions.is_some_and(|cs| cs.iter().any(|c| c.type_.starts_with("devheal.io/"))) {
        shared.action(g, "pod condition");
    }
}

fn on_ndh(shared: &Shared, obj: &DynamicObject, _deleted: bool) {
    let now = Instant::now();
    let status = &obj.data["status"];
    let g = obj.metadata.name.as_deref().and_then(|n| index_of(n, "bench-node-"));
    let unhealthy = status["devices"][0]["health"] == "Unhealthy";
    let heartbeat = status["lastHeartbeat"].as_str().map(str::to_string);
    shared.update(|s| {
        let mut changed = false;
        if let (Some(g), true) = (g, unhealthy)
            && !s.ndh_unhealthy.contains_key(&g)
        {
            s.ndh_unhealthy.insert(g, now);
            changed = true;
        }
        if let Some(h) = heartbeat
            && !s.heartbeats.contains_key(&h)
        {
            s.heartbeats.insert(h, now);
            changed = true;
        }
        changed
    });
}

// ------------------------------------------------------------------------ statistics

/// Nearest-rank percentile of sorted values.
fn pct(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

fn dist(v: &[f64]) -> String {
    format!(
        "p50 {:7.1} ms  p90 {:7.1} ms  p99 {:7.1} ms  max {:7.1} ms  (n={})",
        pct(v, 0.5),
        pct(v, 0.9),
        pct(v, 0.99),
        pct(v, 1.0),
        v.len()
    )
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Signed milliseconds from `a` to `b`.
fn ms_between(a: Instant, b: Instant) -> f64 {
    if b >= a { ms(b - a) } else { -ms(a - b) }
}

// ------------------------------------------------------------------------ audit log

/// One request of the controller, from the audit log.
struct Request {
    verb: String,
    resource: String,
    code: i64,
    /// The API server's message for a refusal.
    message: String,
    received: Timestamp,
}

fn controller_requests(path: &Path) -> Result<Vec<Request>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut by_id: HashMap<String, Request> = HashMap::new();
    for line in BufReader::new(file).lines() {
        let line = line?;
        let Ok(v) = serde_json::from_str::<Value>(&line) else { continue };
        if v["user"]["username"] != CONTROLLER_USER {
            continue;
        }
        let Some(id) = v["auditID"].as_str() else { continue };
        let Some(received) = v["requestReceivedTimestamp"].as_str().and_then(|t| t.parse::<Timestamp>().ok())
        else {
            continue;
        };
        let o = &v["objectRef"];
        // Requests without an object (discovery) are named by their path.
        let path = v["requestURI"].as_str().unwrap_or("-").split('?').next().unwrap_or("-");
        let mut resource = o["resource"].as_str().unwrap_or(path).to_string();
        if let Some(sub) = o["subresource"].as_str() {
            resource = format!("{resource}/{sub}");
        }
        if let Some(group) = o["apiGroup"].as_str().filter(|g| !g.is_empty()) {
            resource = format!("{resource}.{group}");
        }
        let code = v["responseStatus"]["code"].as_i64().unwrap_or(0);
        let message = v["responseStatus"]["message"].as_str().unwrap_or_default().to_string();
        let verb = v["verb"].as_str().unwrap_or("-").to_string();
        let entry = by_id.entry(id.to_string()).or_insert(Request {
            verb,
            resource,
            code,
            message: String::new(),
            received,
        });
        if code != 0 {
            entry.code = code;
        }
        if !message.is_empty() {
            entry.message = message;
        }
    }
    let mut all: Vec<Request> = by_id.into_values().collect();
    all.sort_by_key(|r| r.received);
    Ok(all)
}

fn in_window(r: &Request, from: Timestamp, to: Timestamp) -> bool {
    r.received >= from && r.received < to
}

/// `count verb resource` lines, most first.
fn by_verb_resource<'a>(requests: impl Iterator<Item = &'a Request>) -> Vec<String> {
    let mut counts: BTreeMap<(String, String), usize> = BTreeMap::new();
    for r in requests {
        *counts.entry((r.verb.clone(), r.resource.clone())).or_default() += 1;
    }
    let mut lines: Vec<((String, String), usize)> = counts.into_iter().collect();
    lines.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    lines.into_iter().map(|((verb, res), n)| format!("{n:6} {verb} {res}")).collect()
}

// ------------------------------------------------------------------------ the run

struct Options {
    gangs: usize,
    faults: usize,
    baseline: usize,
}

async fn admin_client(cp: &ControlPlane) -> Result<Client> {
    setup::client_from(&cp.kubeconfig, true).await
}

fn apply_deploy(cp: &ControlPlane, root: &Path) -> Result<()> {
    setup::apply_deploy(&cp.kubeconfig, root, "devheal-bench")?;
    // No controller manager runs here; keep the manifests' agents from ever appearing anyway.
    cp.kubectl(&["-n", SYSTEM_NS, "delete", "daemonset", "devheal-agent", "--ignore-not-found"], None)?;
    Ok(())
}

/// Runs `f` over `items` with [`PARALLEL`] requests in flight; the results in no order.
async fn parallel<I, T, F, Fut>(items: I, f: F) -> Result<Vec<T>>
where
    I: IntoIterator,
    F: Fn(I::Item) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    futures::stream::iter(items).map(f).buffer_unordered(PARALLEL).try_collect().await
}

/// Lists every object of `api` in pages of 500, as a watcher's initial list does; the count.
async fn list_all<K>(api: &Api<K>) -> Result<usize>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut n = 0;
    let mut lp = ListParams::default().limit(500);
    loop {
        let page = api.list(&lp).await?;
        n += page.items.len();
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(c) => lp = lp.continue_token(&c),
            None => return Ok(n),
        }
    }
}

/// A timestamp that is unique within the run (RFC 3339, nanoseconds).
fn unique_time() -> String {
    Timestamp::now().to_string()
}

struct Report {
    failed: bool,
}

async fn run(cp: &ControlPlane, root: &Path, dir: &Path, opts: &Options) -> Result<Report> {
    let gangs = opts.gangs;
    let pods_total = gangs * GPUS;
    let started = Instant::now();
    apply_deploy(cp, root)?;
    println!("deploy/crds and deploy/base applied in {:.1} s", started.elapsed().as_secs_f64());

    let client = admin_client(cp).await?;
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let ndhs = ndh_api(&client);
    let pp = PatchParams::default();

    // ---- populate
    let namespace: Namespace = serde_json::from_value(json!({"metadata": {"name": NS}}))?;
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &namespace).await?;
    // No service-account controller here: the namespace's default account, which pod admission
    // looks up, is made by hand.
    let account: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "default", "namespace": NS}}))?;
    Api::<ServiceAccount>::namespaced(client.clone(), NS).create(&PostParams::default(), &account).await?;

    let t = Instant::now();
    parallel(0..gangs, |g| {
        let nodes = nodes.clone();
        let pp = pp.clone();
        async move {
            let name = node_name(g);
            nodes.create(&PostParams::default(), &node_object(g)).await?;
            nodes.patch_status(&name, &pp, &Patch::Merge(&node_status(g))).await?;
            // The API server taints a new node not-ready; no node lifecycle controller runs here.
            nodes.patch(&name, &pp, &Patch::Merge(&json!({"spec": {"taints": null}}))).await?;
            Ok(())
        }
    })
    .await
    .context("creating the nodes")?;
    let nodes_took = t.elapsed();

    let t = Instant::now();
    let created: Vec<(usize, usize, String)> =
        parallel((0..gangs).flat_map(|g| (0..GPUS).map(move |m| (g, m))), |(g, m)| {
            let pods = pods.clone();
            let pp = pp.clone();
            async move {
                let pod = pods.create(&PostParams::default(), &pod_object(g, m)).await?;
                let uid = pod.metadata.uid.clone().ok_or_else(|| anyhow!("pod without uid"))?;
                pods.patch_status(&pod_name(g, m), &pp, &Patch::Merge(&pod_running())).await?;
                Ok((g, m, uid))
            }
        })
        .await
        .context("creating the pods")?;
    let pods_took = t.elapsed();
    let mut uids = vec![vec![String::new(); GPUS]; gangs];
    for (g, m, uid) in created {
        uids[g][m] = uid;
    }
    let uids = Arc::new(uids);

    // The last gang's device 0 is already Unhealthy when the controller starts.
    let pre = gangs - 1;
    let baseline_node = gangs - 2;
    let populated_at = unique_time();
    let t = Instant::now();
    parallel(0..gangs, |g| {
        let ndhs = ndhs.clone();
        let pp = pp.clone();
        let uids = uids.clone();
        let at = populated_at.clone();
        async move {
            ndhs.create(&PostParams::default(), &ndh_object(g)).await?;
            let failed = (g == pre).then(unique_time);
            ndhs.patch_status(
                &node_name(g),
                &pp,
                &Patch::Merge(&ndh_status(g, &uids[g], &at, failed.as_deref())),
            )
            .await?;
            Ok(())
        }
    })
    .await
    .context("creating the NodeDeviceHealth objects")?;
    let ndh_took = t.elapsed();
    let populate = nodes_took + pods_took + ndh_took;
    let requests = gangs * 3 + pods_total * 2 + gangs * 2;
    println!(
        "populated: {gangs} nodes in {:.1} s, {pods_total} pods in {:.1} s, {gangs} NodeDeviceHealth in {:.1} s: {:.1} s, {requests} requests, {:.0} requests/s ({PARALLEL} in flight)",
        nodes_took.as_secs_f64(),
        pods_took.as_secs_f64(),
        ndh_took.as_secs_f64(),
        populate.as_secs_f64(),
        requests as f64 / populate.as_secs_f64()
    );

    // ---- the bench's own watches
    let (tick, _) = tokio::sync::watch::channel(0u64);
    let shared = Arc::new(Shared { seen: Mutex::new(Seen::default()), tick });
    spawn_watch(shared.clone(), nodes.clone(), on_node);
    spawn_watch(shared.clone(), pods.clone(), on_pod);
    spawn_watch(shared.clone(), ndhs.clone(), on_ndh);
    shared
        .wait_for(Duration::from_secs(120), |s| (s.listed >= 3).then_some(()))
        .await
        .context("the bench's watches list")?;

    // ---- startup baseline: the admin lists the same objects, pages of 500 as a watcher does.
    let t = Instant::now();
    let listed_pods = list_all(&Api::<Pod>::all(client.clone())).await?;
    let list_pods = t.elapsed();
    let t = Instant::now();
    let listed_nodes = list_all(&nodes).await?;
    let list_nodes = t.elapsed();
    let t = Instant::now();
    let listed_ndh = list_all(&ndhs).await?;
    let list_ndh = t.elapsed();
    let list_total = list_pods + list_nodes + list_ndh;

    // ---- the controller, with its service account's token
    let token = setup::service_account_token(&client, "devheal-controller", None).await?;
    let kubeconfig = setup::token_kubeconfig(&cp.server, &cp.ca, dir, "controller", &token)?;
    let addr = setup::free_addr()?;
    let log = dir.join("controller.log");
    let controller_started_at = Timestamp::now();
    let spawned = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_devheal"))
        .args(["controller", "--identity", "bench", "--metrics-addr", &addr.to_string()])
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .env("DEVHEAL_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("starting devheal controller")?;
    let mut controller = ControllerProcess { child, log, failed: false };
    let ready = loop {
        if setup::http(addr, "GET", "/readyz").is_some_and(|(code, _)| code == 200) {
            break spawned.elapsed();
        }
        if spawned.elapsed() > Duration::from_secs(300) {
            controller.failed = true;
            bail!("the controller was not ready within 300 s");
        }
        if let Ok(Some(status)) = controller.child.try_wait() {
            controller.failed = true;
            bail!("the controller exited before it was ready ({status})");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let mem_ready = memory::memory(controller.pid()).unwrap_or_default();
    let first = shared.wait_for(Duration::from_secs(60), |s| s.first_action.get(&pre).copied()).await;
    let first_action = first.map(|(at, kind)| (at - spawned, kind));
    // Leading (the Lease) before the faults, and the start-up fault's actions carried out.
    let leading = Instant::now();
    while setup::http(addr, "GET", "/metrics").and_then(|(_, m)| metric(&m, "devheal_controller_leader"))
        != Some(1.0)
    {
        if leading.elapsed() > Duration::from_secs(30) {
            controller.failed = true;
            bail!("the controller does not hold the Lease after 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mem_started = memory::memory(controller.pid()).unwrap_or_default();

    // ---- baseline: the API server's propagation of a NodeDeviceHealth status patch to a watch.
    let baseline_from = Timestamp::now();
    let mut base_send = Vec::new();
    let mut base_return = Vec::new();
    let mut base_timeouts = 0;
    for _ in 0..opts.baseline {
        let hb = unique_time();
        let patch = json!({"status": {"lastHeartbeat": hb}});
        let sent = Instant::now();
        ndhs.patch_status(&node_name(baseline_node), &pp, &Patch::Merge(&patch)).await?;
        let returned = Instant::now();
        match shared.wait_for(FAULT_TIMEOUT, |s| s.heartbeats.get(&hb).copied()).await {
            Some(at) => {
                base_send.push(ms_between(sent, at));
                base_return.push(ms_between(returned, at));
            }
            None => base_timeouts += 1,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let base_send = sorted(base_send);
    let base_return = sorted(base_return);

    // ---- faults, one at a time, one per gang
    let faults = opts.faults.min(gangs.saturating_sub(2));
    let before = actions_done(&setup::http(addr, "GET", "/metrics").map(|(_, m)| m).unwrap_or_default());
    let faults_from = Timestamp::now();
    let mut from_send = Vec::new();
    let mut from_return = Vec::new();
    let mut ndh_seen = Vec::new();
    let mut controller_share = Vec::new();
    let mut kinds: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut kinds_by_fault = Vec::new();
    let mut by_kind: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    let mut timeouts = Vec::new();
    for g in 0..faults {
        let at = unique_time();
        let status = ndh_status(g, &uids[g], &populated_at, Some(&at));
        let sent = Instant::now();
        ndhs.patch_status(&node_name(g), &pp, &Patch::Merge(&status)).await?;
        let returned = Instant::now();
        match shared.wait_for(FAULT_TIMEOUT, |s| s.first_action.get(&g).copied()).await {
            Some((seen, kind)) => {
                from_send.push(ms_between(sent, seen));
                by_kind.entry(kind).or_default().push(ms_between(sent, seen));
                from_return.push(ms_between(returned, seen));
                *kinds.entry(kind).or_default() += 1;
                kinds_by_fault.push(kind);
                if let Some(input) = shared.seen.lock().unwrap().ndh_unhealthy.get(&g).copied() {
                    ndh_seen.push(ms_between(sent, input));
                    controller_share.push(ms_between(input, seen));
                }
            }
            None => {
                timeouts.push(g);
                kinds_by_fault.push("none");
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // What the last faults set off (gang restarts after the first action) is finished.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let faults_to = Timestamp::now();
    let metrics_after = setup::http(addr, "GET", "/metrics").map(|(_, m)| m).unwrap_or_default();
    let after = actions_done(&metrics_after);
    let mem_end = memory::memory(controller.pid()).unwrap_or_default();
    let apiserver_kib = cp.rss_kib("apiserver");
    let etcd_kib = cp.rss_kib("etcd");
    controller.failed = !timeouts.is_empty();
    controller.stop();
    // The audit log's last lines (the watches' ends) are written as the controller's
    // connections close.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let requests = controller_requests(&cp.dir.join("audit.log"))?;

    // ---- report
    let from_send = sorted(from_send);
    let from_return = sorted(from_return);
    let ndh_seen = sorted(ndh_seen);
    let controller_share = sorted(controller_share);
    println!();
    println!(
        "real API server benchmark: {gangs} nodes x {GPUS} devices, {pods_total} pods in {gangs} gangs of {GPUS}, {faults} faults; etcd + kube-apiserver (audit log on) + devheal controller + this bench on {} cores",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    println!(
        "startup (list + watch of {listed_pods} pods, {listed_nodes} nodes, {listed_ndh} NodeDeviceHealth)"
    );
    println!(
        "  baseline: the admin lists the same objects (pages of 500): pods {:.2} s, nodes {:.2} s, NodeDeviceHealth {:.2} s = {:.2} s",
        list_pods.as_secs_f64(),
        list_nodes.as_secs_f64(),
        list_ndh.as_secs_f64(),
        list_total.as_secs_f64()
    );
    println!(
        "  controller: /readyz 200 after {:.2} s (ratio to the baseline lists {:.2}x)",
        ready.as_secs_f64(),
        ready.as_secs_f64() / list_total.as_secs_f64()
    );
    match first_action {
        Some((d, kind)) => println!(
            "  first action after start (the fault present at start, gang {pre}): {:.2} s after spawn ({kind})",
            d.as_secs_f64()
        ),
        None => println!(
            "  first action after start: NONE within 60 s for the fault present at start (gang {pre})"
        ),
    }
    println!(
        "propagation baseline: NodeDeviceHealth status patch -> seen on the bench's watch ({} patches, {base_timeouts} lost)",
        opts.baseline
    );
    println!("  from send:         {}", dist(&base_send));
    println!("  from the response: {}", dist(&base_return));
    println!("faults: device 0 Unhealthy (Xid 79, nvml) -> first action visible in the API server");
    println!("  from send:         {}", dist(&from_send));
    println!("  from the response: {}", dist(&from_return));
    println!(
        "  (the fault itself seen on the bench's NodeDeviceHealth watch, from send: {})",
        dist(&ndh_seen)
    );
    println!(
        "  controller's share (first action seen - fault seen by the bench): {}",
        dist(&controller_share)
    );
    println!(
        "  ratio to the baseline (from send): p50 {:.1}x  p99 {:.1}x",
        pct(&from_send, 0.5) / pct(&base_send, 0.5),
        pct(&from_send, 0.99) / pct(&base_send, 0.99)
    );
    for (kind, v) in by_kind {
        println!("  first action {kind:>16}, from send: {}", dist(&sorted(v)));
    }
    let kinds_text: Vec<String> = kinds.iter().map(|(k, n)| format!("{k} {n}")).collect();
    println!(
        "  first action seen: {}; never acted on within 10 s: {}",
        kinds_text.join(", "),
        timeouts.len()
    );
    if !timeouts.is_empty() {
        println!("  faults never acted on (gang index): {timeouts:?}");
    }
    // Where the first action changed kind (e.g. the breaker holding remediation).
    let mut runs: Vec<(usize, usize, &str)> = Vec::new();
    for (i, k) in kinds_by_fault.iter().enumerate() {
        match runs.last_mut() {
            Some(r) if r.2 == *k => r.1 = i,
            _ => runs.push((i, i, k)),
        }
    }
    let runs_text: Vec<String> = runs.iter().map(|(a, b, k)| format!("faults {a}-{b}: {k}")).collect();
    println!("  by fault: {}", runs_text.join("; "));
    let mut done: BTreeMap<String, f64> = BTreeMap::new();
    for (k, v) in &after {
        let d = v - before.get(k).copied().unwrap_or(0.0);
        if d > 0.0 {
            done.insert(k.clone(), d);
        }
    }
    let total_done: f64 = done.values().sum();
    let done_text: Vec<String> = done.iter().map(|(k, v)| format!("{k} {v:.0}")).collect();
    println!("actions done during the faults: {total_done:.0} ({})", done_text.join(", "));
    let other: Vec<String> = metrics_after
        .lines()
        .filter(|l| l.starts_with("devheal_controller_actions_total{") && !l.contains("outcome=\"done\""))
        .filter(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).is_some_and(|v| v > 0.0))
        .map(str::to_string)
        .collect();
    if !other.is_empty() {
        println!("  actions with another outcome (whole run):");
        for l in &other {
            println!("    {l}");
        }
    }
    let safety = [
        "devheal_controller_breaker_open",
        "devheal_controller_held_by_breaker",
        "devheal_controller_quarantined_nodes",
        "devheal_controller_quarantine_node_limit",
        "devheal_controller_standby_actions",
        "devheal_controller_retries_exhausted",
    ];
    let safety_text: Vec<&str> = metrics_after
        .lines()
        .filter(|l| !l.starts_with('#') && safety.iter().any(|s| l.starts_with(s)))
        .collect();
    println!("  safety state at the end: {}", safety_text.join("; "));

    let startup: Vec<&Request> =
        requests.iter().filter(|r| in_window(r, controller_started_at, baseline_from)).collect();
    let during: Vec<&Request> = requests.iter().filter(|r| in_window(r, faults_from, faults_to)).collect();
    let not_watch: Vec<&&Request> = during.iter().filter(|r| r.verb != "watch").collect();
    let leases = not_watch.iter().filter(|r| r.resource.starts_with("leases")).count();
    let events = not_watch.iter().filter(|r| r.resource.starts_with("events")).count();
    println!("API requests by the controller (audit log, {} requests in all)", requests.len());
    println!("  startup (spawn to the baseline's start): {}", startup.len());
    for l in by_verb_resource(startup.iter().copied()) {
        println!("    {l}");
    }
    println!(
        "  during the faults: {} not watches ({} watches)",
        not_watch.len(),
        during.len() - not_watch.len()
    );
    for l in by_verb_resource(not_watch.iter().map(|r| **r)) {
        println!("    {l}");
    }
    let per_action = not_watch.len() as f64 / total_done.max(1.0);
    println!(
        "  per action done: {per_action:.2} (without the Lease's {leases}: {:.2}; without those and the {events} Events: {:.2})",
        (not_watch.len() - leases) as f64 / total_done.max(1.0),
        (not_watch.len() - leases - events) as f64 / total_done.max(1.0)
    );
    let mut refused: BTreeMap<(String, String, i64), (usize, String)> = BTreeMap::new();
    for r in requests.iter().filter(|r| !(200..300).contains(&r.code)) {
        let entry = refused.entry((r.verb.clone(), r.resource.clone(), r.code)).or_default();
        entry.0 += 1;
        if entry.1.is_empty() {
            entry.1.clone_from(&r.message);
        }
    }
    if refused.is_empty() {
        println!("  non-2xx answers to the controller: none");
    } else {
        println!(
            "  non-2xx answers to the controller (whole run; code 0: no response recorded), with the first message:"
        );
        for ((verb, res, code), (n, message)) in &refused {
            println!("    {n:6} {verb} {res} -> {code}: {message}");
        }
    }
    println!("memory (/proc/<pid>/status)");
    println!(
        "  controller VmRSS: ready {:.1} MiB, after the start-up fault {:.1} MiB, end {:.1} MiB; peak VmHWM {:.1} MiB (target <= 150 MiB)",
        mib(mem_ready.rss_kib),
        mib(mem_started.rss_kib),
        mib(mem_end.rss_kib),
        mib(mem_end.hwm_kib)
    );
    println!(
        "  beside it: kube-apiserver {:.0} MiB, etcd {:.0} MiB",
        apiserver_kib.map(mib).unwrap_or(f64::NAN),
        etcd_kib.map(mib).unwrap_or(f64::NAN)
    );
    println!();
    println!("| what | target | measured | baseline (same run) |");
    println!("|---|---|---|---|");
    println!(
        "| controller RSS (peak) | <= 150 MiB | {:.1} MiB ({}) | - |",
        mib(mem_end.hwm_kib),
        if mib(mem_end.hwm_kib) <= 150.0 { "met" } else { "missed" }
    );
    println!(
        "| time to ready (list + watch) | - | {:.2} s; first action {} | admin lists {:.2} s |",
        ready.as_secs_f64(),
        first_action.map(|(d, _)| format!("{:.2} s", d.as_secs_f64())).unwrap_or_else(|| "none".into()),
        list_total.as_secs_f64()
    );
    println!("| API requests per action (faults) | - | {per_action:.2} | - |");
    println!(
        "| NodeDeviceHealth change -> first action, p50 / p99 | p99 <= 250 ms | {:.1} / {:.1} ms ({}) | {:.1} / {:.1} ms |",
        pct(&from_send, 0.5),
        pct(&from_send, 0.99),
        if pct(&from_send, 0.99) <= 250.0 && timeouts.is_empty() { "met" } else { "missed" },
        pct(&base_send, 0.5),
        pct(&base_send, 0.99)
    );
    println!("total run {:.0} s", started.elapsed().as_secs_f64());
    Ok(Report { failed: !timeouts.is_empty() || first_action.is_none() })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let opts = Options {
        gangs: arg(&args, "--gangs", 1000).max(3),
        faults: arg(&args, "--faults", 100),
        baseline: arg(&args, "--baseline", 100),
    };
    let keep = args.iter().any(|a| a == "--keep");
    let root = match Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("real_apiserver: the repository root: {e}");
            return ExitCode::FAILURE;
        }
    };
    let tmp = match tempfile::Builder::new().prefix("devheal-bench-apiserver-").tempdir() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("real_apiserver: a scratch directory: {e}");
            return ExitCode::FAILURE;
        }
    };
    let dir = tmp.path().to_path_buf();
    let result = {
        let cp = match ControlPlane::start(&root, &dir) {
            Ok(cp) => cp,
            Err(e) => {
                eprintln!("real_apiserver: the control plane did not start: {e:#}");
                return ExitCode::FAILURE;
            }
        };
        let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()
        {
            Ok(r) => r,
            Err(e) => {
                eprintln!("real_apiserver: a tokio runtime: {e}");
                return ExitCode::FAILURE;
            }
        };
        let result = runtime.block_on(run(&cp, &root, &dir, &opts));
        // The bench's watches end with the runtime, before the control plane stops.
        runtime.shutdown_timeout(Duration::from_secs(2));
        result
    };
    if keep {
        let kept = tmp.keep();
        eprintln!("real_apiserver: kept {} (audit.log, controller.log, logs/)", kept.display());
    }
    match result {
        Ok(report) if !report.failed => ExitCode::SUCCESS,
        Ok(_) => {
            eprintln!("real_apiserver: a fault was never acted on (see above)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("real_apiserver: {e:#}");
            ExitCode::FAILURE
        }
    }
}
