//! What the end-to-end tests share: the control plane's coordinates, `deploy/` applied once, a
//! namespace and node names per test, a fake kubelet per node, and devheal agent and controller
//! processes with real service-account credentials.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use devheal_kubelet::api::deviceplugin_v1beta1 as dp;
use devheal_kubelet::api::podresources_v1 as pr;
use devheal_kubelet::server::{
    PodResourcesServer, PodResourcesState, RegistrationServer, ServerHandle, serve,
};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ServiceAccount};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};

use crate::setup::{self, SYSTEM_NS};
use serde_json::{Value, json};

/// The label every test puts on its pods; its controller watches only pods carrying its value.
pub const TEST_LABEL: &str = "e2e.devheal.io/test";
/// The fake devices' extended resource (`devheal agent --fake-devices`).
pub const FAKE_GPU: &str = "devheal.io/fake-gpu";

/// The control plane `scripts/e2e.sh` started.
pub struct Env {
    pub kubeconfig: PathBuf,
    pub server: String,
    pub ca: PathBuf,
}

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: these tests need the real control plane; run scripts/e2e.sh")
    })
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("the repository root")
}

/// The control plane, with `deploy/base` applied (once per test binary).
pub fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let env = Env {
            kubeconfig: PathBuf::from(var("DEVHEAL_E2E_KUBECONFIG")),
            server: var("DEVHEAL_E2E_SERVER"),
            ca: PathBuf::from(var("DEVHEAL_E2E_CA")),
        };
        apply_deploy(&env);
        env
    })
}

/// `kubectl` with the admin kubeconfig; panics with its output when it fails.
pub fn kubectl(env: &Env, args: &[&str], stdin: Option<&[u8]>) -> String {
    setup::kubectl(&env.kubeconfig, args, stdin).unwrap_or_else(|e| panic!("{e:#}"))
}

/// `kubectl` with the admin kubeconfig, whatever its exit status.
pub fn kubectl_output(env: &Env, args: &[&str], stdin: Option<&[u8]>) -> std::process::Output {
    setup::kubectl_output(&env.kubeconfig, args, stdin).unwrap_or_else(|e| panic!("{e:#}"))
}

fn apply_deploy(env: &Env) {
    setup::apply_deploy(&env.kubeconfig, &repo_root(), "devheal-e2e").unwrap_or_else(|e| panic!("{e:#}"))
}

/// An admin client (a new one per test: a client belongs to the runtime it was made on).
pub async fn admin_client(env: &Env) -> Client {
    setup::client_from(&env.kubeconfig, true).await.unwrap_or_else(|e| panic!("the admin client: {e:#}"))
}

/// A kubeconfig that authenticates with `token`, in `dir`.
pub fn token_kubeconfig(env: &Env, dir: &Path, name: &str, token: &str) -> PathBuf {
    setup::token_kubeconfig(&env.server, &env.ca, dir, name, token).unwrap_or_else(|e| panic!("{e:#}"))
}

/// A client that authenticates with a token kubeconfig, kube's own retries off.
pub async fn token_client(kubeconfig: &Path) -> Client {
    setup::client_from(kubeconfig, false).await.unwrap_or_else(|e| panic!("a token client: {e:#}"))
}

/// A token for `devheal-system/<account>`, bound to `pod` when given (see [`setup`]).
pub async fn service_account_token(client: &Client, account: &str, pod: Option<&Pod>) -> String {
    setup::service_account_token(client, account, pod).await.unwrap_or_else(|e| panic!("{e:#}"))
}

/// A free port on loopback (bound, then released for the process that will use it).
pub fn free_addr() -> SocketAddr {
    setup::free_addr().expect("a free loopback port")
}

/// Polls `check` every 200 ms until it answers `Some`, or panics after `timeout` naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub use setup::http;

/// The sum of a Prometheus counter's samples whose labels contain every `key="value"` of `labels`.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// One test's corner of the cluster: a namespace, node names with its prefix, a scratch
/// directory, and the processes and kubelets it started (stopped on drop; on a failure their
/// logs are printed).
pub struct Scope {
    pub env: &'static Env,
    pub name: String,
    pub ns: String,
    pub dir: tempfile::TempDir,
    pub client: Client,
    nodes: Mutex<Vec<String>>,
    procs: Mutex<Vec<Proc>>,
}

impl Scope {
    /// A fresh scope: namespace `e2e-<name>`, the Lease and any leftovers of an earlier run of
    /// the same test removed.
    pub async fn new(name: &str) -> Scope {
        let env = env();
        let client = admin_client(env).await;
        let ns = format!("e2e-{name}");
        let scope = Scope {
            env,
            name: name.to_string(),
            ns: ns.clone(),
            dir: tempfile::tempdir().expect("a scratch directory"),
            client: client.clone(),
            nodes: Mutex::new(Vec::new()),
            procs: Mutex::new(Vec::new()),
        };
        // The one Lease the controller's RBAC allows: whoever held it in an earlier test is gone.
        let _ = kubectl_output(
            env,
            &["-n", SYSTEM_NS, "delete", "lease", "devheal-controller", "--ignore-not-found", "--wait=false"],
            None,
        );
        // What earlier tests left behind (a failed test keeps its objects): their nodes, every
        // NodeDeviceHealth (the controller's budgets count every reported node) and the
        // DeviceTaintRules devheal wrote. Tests run one at a time, so none of it is in use.
        for args in [
            &["delete", "nodes", "-l", TEST_LABEL, "--wait=false"][..],
            &["delete", "nodedevicehealths", "--all", "--wait=false"][..],
            &["delete", "devicetaintrules", "-l", "app.kubernetes.io/managed-by=devheal", "--wait=false"][..],
        ] {
            let _ = kubectl_output(env, args, None);
        }
        let namespaces: Api<Namespace> = Api::all(client.clone());
        // A namespace of an earlier run may still be terminating.
        eventually(&format!("namespace {ns} is gone from an earlier run"), Duration::from_secs(90), || {
            let namespaces = namespaces.clone();
            let ns = ns.clone();
            async move { namespaces.get_opt(&ns).await.ok()?.is_none().then_some(()) }
        })
        .await;
        let object: Namespace = serde_json::from_value(json!({
            "metadata": {"name": ns, "labels": {TEST_LABEL: name}}
        }))
        .expect("a namespace");
        namespaces.create(&PostParams::default(), &object).await.expect("create the test namespace");
        // The namespace's default service account (the service-account controller makes it).
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
        eventually("the namespace's default service account", Duration::from_secs(30), || {
            let accounts = accounts.clone();
            async move { accounts.get_opt("default").await.ok()?.map(|_| ()) }
        })
        .await;
        scope
    }

    /// `<test>-<suffix>`: a node name that belongs to this test.
    pub fn node_name(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.name)
    }

    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Creates `pod` and sets its status Running, as a kubelet would (for pods on nodes no fake
    /// kubelet runs, or before one gets to them).
    pub async fn create_running(&self, pod: &Pod) -> Pod {
        let name = pod.metadata.name.clone().expect("a pod name");
        let created = self.pods().create(&PostParams::default(), pod).await.expect("create a pod");
        self.pods()
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&running(&created)))
            .await
            .expect("the pod runs")
    }

    /// Creates a Ready, schedulable Node with `gpus` fake GPUs (and room for everything else),
    /// as a kubelet would register it.
    pub async fn add_node(&self, suffix: &str, gpus: usize) -> String {
        let name = self.node_name(suffix);
        let nodes: Api<Node> = Api::all(self.client.clone());
        let _ = nodes.delete(&name, &DeleteParams::default()).await;
        eventually(&format!("node {name} from an earlier run is gone"), Duration::from_secs(30), || {
            let nodes = nodes.clone();
            let name = name.clone();
            async move { nodes.get_opt(&name).await.ok()?.is_none().then_some(()) }
        })
        .await;
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {
                TEST_LABEL: self.name, "kubernetes.io/hostname": name, "kubernetes.io/os": "linux"
            }},
        }))
        .expect("a node");
        nodes.create(&PostParams::default(), &node).await.expect("create the node");
        self.nodes.lock().unwrap().push(name.clone());
        let resources = json!({"cpu": "64", "memory": "512Gi", "pods": "110", FAKE_GPU: gpus.to_string()});
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        let status = json!({"status": {
            "capacity": resources, "allocatable": resources,
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "the e2e test plays the kubelet",
                            "lastHeartbeatTime": now, "lastTransitionTime": now}],
            "nodeInfo": {"machineID": name, "systemUUID": name, "bootID": format!("boot-{name}"),
                         "kernelVersion": "6.1.0", "osImage": "e2e", "containerRuntimeVersion": "fake://1",
                         "kubeletVersion": "v1.37.2", "kubeProxyVersion": "", "operatingSystem": "linux",
                         "architecture": "amd64"},
            // As a v1.37 kubelet with its default gates declares (KEP-5328): the scheduler
            // places a pod with a `RestartAllContainers` rule only on such a node.
            "declaredFeatures": ["RestartAllContainersOnContainerExits"],
        }});
        nodes
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .expect("set the node's status");
        // The API server taints a new node not-ready until its lifecycle controller sees it
        // Ready; no kubelet heartbeats here, so that controller is off and the test lifts it.
        nodes
            .patch(&name, &PatchParams::default(), &Patch::Merge(&json!({"spec": {"taints": null}})))
            .await
            .expect("untaint the node");
        name
    }

    fn spawn(&self, name: &str, mut command: Command) -> Arc<Mutex<Child>> {
        let log = self.dir.path().join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("a log file");
        command.stdout(Stdio::null()).stderr(file).stdin(Stdio::null());
        let child = Arc::new(Mutex::new(command.spawn().expect("start a devheal process")));
        self.procs.lock().unwrap().push(Proc { name: name.to_string(), log, child: child.clone() });
        child
    }

    /// A fake kubelet for `node`: its PodResources and Registration services, and a loop that
    /// runs the node's pods (see [`FakeKubelet`]).
    pub async fn kubelet(&self, node: &str, gpus: usize) -> FakeKubelet {
        FakeKubelet::start(self.client.clone(), node, gpus, self.dir.path()).await
    }

    /// The DaemonSet's agent pod on `node` (the DaemonSet controller creates it; the fake
    /// kubelet runs it), and a kubeconfig with a token bound to it.
    pub async fn agent_credentials(&self, node: &str) -> PathBuf {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), SYSTEM_NS);
        let pod =
            eventually(&format!("the DaemonSet's agent pod on {node}"), Duration::from_secs(60), || {
                let pods = pods.clone();
                let lp = ListParams::default()
                    .labels("app.kubernetes.io/component=agent")
                    .fields(&format!("spec.nodeName={node}"));
                async move {
                    let list = pods.list(&lp).await.ok()?;
                    list.items.into_iter().find(|p| p.metadata.deletion_timestamp.is_none())
                }
            })
            .await;
        let token = service_account_token(&self.client, "devheal-agent", Some(&pod)).await;
        token_kubeconfig(self.env, self.dir.path(), &format!("agent-{node}"), &token)
    }

    /// `devheal agent` for `node` with the node's credentials and `kubelet`'s sockets.
    pub async fn agent(&self, node: &str, kubelet: &FakeKubelet, kmsg: Option<&Path>) -> Agent {
        self.agent_with(node, kubelet, kmsg, &[]).await
    }

    /// [`Scope::agent`] with extra flags.
    pub async fn agent_with(
        &self,
        node: &str,
        kubelet: &FakeKubelet,
        kmsg: Option<&Path>,
        extra: &[&str],
    ) -> Agent {
        let kubeconfig = self.agent_credentials(node).await;
        let addr = free_addr();
        let progress = free_addr();
        let mut command = Command::new(env!("CARGO_BIN_EXE_devheal"));
        command
            .args(["agent", "--node", node, "--no-nvml", "--fake-devices", &kubelet.gpus.to_string()])
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--kmsg")
            .arg(kmsg.map(Path::to_path_buf).unwrap_or_else(|| self.dir.path().join("no-kmsg")))
            .arg("--pod-resources-socket")
            .arg(&kubelet.pod_resources_socket)
            .arg("--device-plugin-dir")
            .arg(&kubelet.device_plugin_dir)
            .args(["--metrics-addr", &addr.to_string()])
            .args(["--progress-addr", &progress.to_string()])
            .args(["--heartbeat-secs", "10", "--publish-min-interval-ms", "50"])
            .args(["--pod-resources-interval-secs", "1", "--pod-resources-min-interval-ms", "100"])
            .args(extra)
            .env("DEVHEAL_LOG", std::env::var("DEVHEAL_E2E_LOG").unwrap_or_else(|_| "info".into()));
        let child = self.spawn(&format!("agent-{node}"), command);
        let agent = Agent { addr, progress, node: node.to_string(), child };
        eventually(&format!("agent {node} serves /healthz"), Duration::from_secs(30), || {
            let ok = http(addr, "GET", "/healthz").is_some_and(|(code, _)| code == 200);
            async move { ok.then_some(()) }
        })
        .await;
        agent
    }

    /// For each suffix: a node with `gpus` fake GPUs, its fake kubelet and its agent.
    pub async fn nodes_with_agents(&self, suffixes: &[&str], gpus: usize) -> (Vec<FakeKubelet>, Vec<Agent>) {
        let (mut kubelets, mut agents) = (Vec::new(), Vec::new());
        for suffix in suffixes {
            let node = self.add_node(suffix, gpus).await;
            let kubelet = self.kubelet(&node, gpus).await;
            agents.push(self.agent(&node, &kubelet, None).await);
            kubelets.push(kubelet);
        }
        (kubelets, agents)
    }

    /// Credentials of the controller's service account (RBAC from `deploy/base`).
    pub async fn controller_credentials(&self) -> PathBuf {
        let path = self.dir.path().join("controller.kubeconfig");
        if !path.exists() {
            let token = service_account_token(&self.client, "devheal-controller", None).await;
            token_kubeconfig(self.env, self.dir.path(), "controller", &token);
        }
        path
    }

    /// `devheal controller` as `identity`, watching this test's pods.
    pub async fn controller(&self, identity: &str, extra: &[&str]) -> Controller {
        let kubeconfig = self.controller_credentials().await;
        let addr = free_addr();
        let mut command = Command::new(env!("CARGO_BIN_EXE_devheal"));
        command
            .args(["controller", "--identity", identity, "--metrics-addr", &addr.to_string()])
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["--pod-selector", &format!("{TEST_LABEL}={}", self.name)])
            .args(extra)
            .env("DEVHEAL_LOG", std::env::var("DEVHEAL_E2E_LOG").unwrap_or_else(|_| "info".into()));
        let child = self.spawn(&format!("controller-{identity}"), command);
        let controller = Controller { addr, child, identity: identity.to_string() };
        eventually(&format!("controller {identity} is ready"), Duration::from_secs(60), || {
            let ok = http(addr, "GET", "/readyz").is_some_and(|(code, _)| code == 200);
            async move { ok.then_some(()) }
        })
        .await;
        controller
    }

    /// Creates `pod` (bound to `kubelet`'s node) and waits until the kubelet gave it a device;
    /// returns the device.
    pub async fn start_pod(&self, kubelet: &FakeKubelet, pod: &Pod) -> String {
        let name = pod.metadata.name.clone().expect("a pod name");
        self.pods().create(&PostParams::default(), pod).await.expect("create the pod");
        eventually(&format!("the kubelet gives {name} a device"), Duration::from_secs(30), || {
            let d = kubelet.devices_of(&self.ns, &name);
            async move { d.first().cloned() }
        })
        .await
    }

    /// Waits until the agent of `node` publishes `pod` on `device`.
    /// Waits until every pod of this test bound by one of `kubelets` is published with its first
    /// device in its node's NodeDeviceHealth.
    pub async fn await_bound_published(&self, kubelets: &[FakeKubelet]) {
        for kubelet in kubelets {
            let bound: Vec<(String, Vec<String>)> = {
                let st = kubelet.state.lock().unwrap();
                st.bound.values().filter(|b| b.0 == self.ns).map(|b| (b.1.clone(), b.3.clone())).collect()
            };
            for (pod, devices) in bound {
                self.await_published(&kubelet.node, &devices[0], &pod).await;
            }
        }
    }

    pub async fn await_published(&self, node: &str, device: &str, pod: &str) {
        eventually(&format!("the agent publishes {pod} on {node}/{device}"), Duration::from_secs(30), || {
            let client = self.client.clone();
            async move { published_pods(&client, node, device).await.iter().any(|p| p == pod).then_some(()) }
        })
        .await
    }

    /// The log a process of this scope has written so far.
    pub fn log_of(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        let procs = std::mem::take(&mut *self.procs.lock().unwrap());
        for p in &procs {
            if let Ok(mut child) = p.child.lock() {
                // A stopped process (SIGSTOP in a test) must be continued to die on SIGTERM.
                for signal in ["-CONT", "-TERM"] {
                    let _ = Command::new("kill")
                        .args([signal, &child.id().to_string()])
                        .stderr(Stdio::null())
                        .status();
                }
                let deadline = Instant::now() + Duration::from_secs(5);
                while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            for p in &procs {
                let text = std::fs::read_to_string(&p.log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(60).collect();
                eprintln!("\n--- last lines of {} ({})", p.name, p.log.display());
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
            if std::env::var_os("DEVHEAL_E2E_KEEP").is_some() {
                eprintln!("DEVHEAL_E2E_KEEP: leaving namespace {} and its nodes", self.ns);
                return;
            }
        }
        let nodes = std::mem::take(&mut *self.nodes.lock().unwrap());
        for node in &nodes {
            let _ = kubectl_output(
                self.env,
                &["delete", "node", node, "--ignore-not-found", "--wait=false"],
                None,
            );
            let _ = kubectl_output(
                self.env,
                &["delete", "nodedevicehealth", node, "--ignore-not-found", "--wait=false"],
                None,
            );
        }
        // Pods bound to a node no kubelet runs would keep the namespace terminating.
        let _ = kubectl_output(
            self.env,
            &["-n", &self.ns, "delete", "pods", "--all", "--grace-period=0", "--force", "--wait=false"],
            None,
        );
        let _ = kubectl_output(
            self.env,
            &["delete", "namespace", &self.ns, "--ignore-not-found", "--wait=false"],
            None,
        );
    }
}

struct Proc {
    name: String,
    log: PathBuf,
    child: Arc<Mutex<Child>>,
}

/// A running `devheal agent`.
pub struct Agent {
    /// `/metrics`, `/healthz`, `/fake/*`.
    pub addr: SocketAddr,
    /// `POST /v1/progress`.
    pub progress: SocketAddr,
    pub node: String,
    child: Arc<Mutex<Child>>,
}

/// SIGTERM a devheal process and wait (20 s at most) for it to end.
fn terminate(child: &Mutex<Child>, what: &str) {
    let Ok(mut child) = child.lock() else { return };
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not stop within 20 s of SIGTERM");
}

impl Agent {
    /// SIGTERM, and wait for the process to end.
    pub fn stop(&self) {
        terminate(&self.child, &format!("agent {}", self.node));
    }

    /// `POST /fake/<fault>?device=<device>` (fail, degrade, recover).
    pub fn inject(&self, fault: &str, device: &str) {
        let answer = http(self.addr, "POST", &format!("/fake/{fault}?device={device}"));
        assert!(
            answer.as_ref().is_some_and(|(code, _)| (200..300).contains(code)),
            "agent {}: /fake/{fault}?device={device} answered {answer:?}",
            self.node
        );
    }

    /// Its `/metrics` text (empty when it does not answer).
    pub fn metrics(&self) -> String {
        http(self.addr, "GET", "/metrics").map(|(_, body)| body).unwrap_or_default()
    }
}

/// A running `devheal controller`.
pub struct Controller {
    pub addr: SocketAddr,
    pub identity: String,
    child: Arc<Mutex<Child>>,
}

impl Controller {
    pub fn metrics(&self) -> String {
        http(self.addr, "GET", "/metrics").map(|(_, body)| body).unwrap_or_default()
    }

    /// `devheal_controller_actions_total` for `action` with `outcome`.
    pub fn actions(&self, action: &str, outcome: &str) -> f64 {
        metric_sum(
            &self.metrics(),
            "devheal_controller_actions_total",
            &[("action", action), ("outcome", outcome)],
        )
    }

    /// Waits until the controller counted at least `count` `action`s with `outcome` (its counter
    /// moves just after the write that a test sees in the API server).
    pub async fn await_actions(&self, action: &str, outcome: &str, count: f64) {
        let what = format!("the controller counts {count} {action} {outcome}");
        let counted = eventually(&what, Duration::from_secs(10), || {
            let n = self.actions(action, outcome);
            async move { (n >= count).then_some(()) }
        });
        counted.await
    }

    pub fn is_leader(&self) -> bool {
        metric_sum(&self.metrics(), "devheal_controller_leader", &[]) == 1.0
    }

    pub fn signal(&self, signal: &str) {
        let pid = self.child.lock().unwrap().id();
        let status =
            Command::new("kill").args([&format!("-{signal}"), &pid.to_string()]).status().expect("kill");
        assert!(status.success(), "kill -{signal} {pid}");
    }

    /// SIGTERM, and wait for the process to end.
    pub fn stop(&self) {
        terminate(&self.child, &format!("controller {}", self.identity));
    }
}

/// How long the fake kubelet takes from seeing a pod deleted to removing it (its containers
/// stopping): short, but long enough for a test to see the pod's last status.
const TERMINATION: Duration = Duration::from_secs(2);

/// Plays the kubelet of one node: serves PodResources and the device-plugin Registration
/// service on Unix sockets (the agent reads the first and its fake device plugin registers with
/// the second), and runs a loop over the node's pods as a kubelet would: a new pod gets free fake
/// GPUs for its `devheal.io/fake-gpu` limit (lowest id first, never one marked unhealthy), is
/// reported in PodResources and set Running; a device marked unhealthy is not offered
/// (`GetAllocatableResources`) and not counted in the Node's allocatable; a pod being deleted is set Failed (exit code 143,
/// as after SIGTERM) and removed with a zero grace period 2 s later; a pod that failed on its own
/// keeps its status.
pub struct FakeKubelet {
    pub node: String,
    pub gpus: usize,
    pub pod_resources_socket: PathBuf,
    pub device_plugin_dir: PathBuf,
    pub state: Arc<Mutex<KubeletState>>,
    pub registrations: Arc<Mutex<Vec<String>>>,
    servers: Vec<ServerHandle>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
pub struct KubeletState {
    /// pod uid → (namespace, name, container, devices)
    pub bound: BTreeMap<String, (String, String, String, Vec<String>)>,
    /// Devices the kubelet will not hand out (as after the plugin reported them Unhealthy).
    pub unhealthy: BTreeSet<String>,
}

impl FakeKubelet {
    async fn start(client: Client, node: &str, gpus: usize, scratch: &Path) -> FakeKubelet {
        let dir = scratch.join(format!("kubelet-{node}"));
        let device_plugin_dir = dir.join("device-plugins");
        std::fs::create_dir_all(&device_plugin_dir).expect("the device-plugin directory");
        let pod_resources_socket = dir.join("pod-resources.sock");
        let pr_state = PodResourcesState::default();
        let pr_server = PodResourcesServer { state: pr_state.clone() };
        let mut servers = vec![serve(&pod_resources_socket, pr_server.router()).expect("serve PodResources")];
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<dp::RegisterRequest>();
        servers.push(
            serve(&device_plugin_dir.join("kubelet.sock"), RegistrationServer { registrations: tx }.router())
                .expect("serve the Registration service"),
        );
        let registrations = Arc::new(Mutex::new(Vec::new()));
        {
            let registrations = registrations.clone();
            tokio::spawn(async move {
                while let Some(r) = rx.recv().await {
                    registrations.lock().unwrap().push(r.resource_name);
                }
            });
        }
        let state = Arc::new(Mutex::new(KubeletState::default()));
        let task = tokio::spawn(kubelet_loop(client, node.to_string(), gpus, state.clone(), pr_state));
        FakeKubelet {
            node: node.to_string(),
            gpus,
            pod_resources_socket,
            device_plugin_dir,
            state,
            registrations,
            servers,
            task,
        }
    }

    /// The devices bound to pod `name` of namespace `ns`.
    pub fn devices_of(&self, ns: &str, name: &str) -> Vec<String> {
        let state = self.state.lock().unwrap();
        state
            .bound
            .values()
            .find(|(n, p, _, _)| n == ns && p == name)
            .map(|b| b.3.clone())
            .unwrap_or_default()
    }
}

impl Drop for FakeKubelet {
    fn drop(&mut self) {
        self.task.abort();
        // The gRPC servers end with the test's runtime.
        self.servers.clear();
    }
}

fn gpu_request(pod: &Pod) -> (String, usize) {
    let containers = pod.spec.as_ref().map(|s| s.containers.clone()).unwrap_or_default();
    for c in &containers {
        let limits = c.resources.as_ref().and_then(|r| r.limits.as_ref());
        if let Some(q) = limits.and_then(|l| l.get(FAKE_GPU)) {
            return (c.name.clone(), q.0.parse().unwrap_or(0));
        }
    }
    (containers.first().map(|c| c.name.clone()).unwrap_or_default(), 0)
}

async fn kubelet_loop(
    client: Client,
    node: String,
    gpus: usize,
    state: Arc<Mutex<KubeletState>>,
    pr_state: PodResourcesState,
) {
    let all: Api<Pod> = Api::all(client.clone());
    let lp = ListParams::default().fields(&format!("spec.nodeName={node}"));
    // Pods being deleted, since when the loop saw it.
    let mut terminating: BTreeMap<String, Instant> = BTreeMap::new();
    // The fake GPUs the Node's status last counted allocatable.
    let mut counted: Option<usize> = Some(gpus);
    loop {
        if let Ok(list) = all.list(&lp).await {
            let live: BTreeSet<String> = list.items.iter().filter_map(|p| p.metadata.uid.clone()).collect();
            terminating.retain(|uid, _| live.contains(uid));
            for pod in &list.items {
                let (Some(uid), Some(ns), Some(name)) =
                    (pod.metadata.uid.clone(), pod.metadata.namespace.clone(), pod.metadata.name.clone())
                else {
                    continue;
                };
                let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
                let phase = pod.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
                if pod.metadata.deletion_timestamp.is_some() {
                    if phase != "Failed" && phase != "Succeeded" {
                        let _ = pods
                            .patch_status(
                                &name,
                                &PatchParams::default(),
                                &Patch::Merge(&terminated(pod, 143)),
                            )
                            .await;
                    }
                    // As a kubelet does after the containers stopped: a moment later, not at once.
                    let since = *terminating.entry(uid.clone()).or_insert_with(Instant::now);
                    if since.elapsed() >= TERMINATION {
                        let dp = DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::default() };
                        let _ = pods.delete(&name, &dp).await;
                    }
                    continue;
                }
                if phase.is_empty() || phase == "Pending" {
                    let (container, want) = gpu_request(pod);
                    {
                        // Free devices for a pod not bound yet (lowest ids first, none unhealthy).
                        let mut st = state.lock().unwrap();
                        if !st.bound.contains_key(&uid) {
                            let used: BTreeSet<String> =
                                st.bound.values().flat_map(|b| b.3.iter().cloned()).collect();
                            let free: Vec<String> = (0..gpus)
                                .map(|i| format!("fake-gpu-{i}"))
                                .filter(|d| !used.contains(d) && !st.unhealthy.contains(d))
                                .take(want)
                                .collect();
                            if free.len() < want {
                                continue; // as a kubelet would refuse admission; the test sees it pending
                            }
                            st.bound.insert(uid.clone(), (ns.clone(), name.clone(), container.clone(), free));
                        }
                    }
                    let _ =
                        pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&running(pod))).await;
                }
            }
            let pods: Vec<pr::PodResources> = {
                let mut st = state.lock().unwrap();
                st.bound.retain(|uid, _| live.contains(uid));
                st.bound
                    .values()
                    .map(|(ns, name, container, devices)| pr::PodResources {
                        name: name.clone(),
                        namespace: ns.clone(),
                        containers: vec![pr::ContainerResources {
                            name: container.clone(),
                            devices: if devices.is_empty() {
                                Vec::new()
                            } else {
                                vec![pr::ContainerDevices {
                                    resource_name: FAKE_GPU.into(),
                                    device_ids: devices.clone(),
                                    topology: None,
                                }]
                            },
                            ..Default::default()
                        }],
                        ..Default::default()
                    })
                    .collect()
            };
            pr_state.set_pods(pods);
            // As a kubelet does: it offers only the devices it counts healthy, and the Node
            // counts the others in capacity but not in allocatable.
            let unhealthy = state.lock().unwrap().unhealthy.clone();
            pr_state.set_allocatable(vec![pr::ContainerDevices {
                resource_name: FAKE_GPU.into(),
                device_ids: (0..gpus)
                    .map(|i| format!("fake-gpu-{i}"))
                    .filter(|d| !unhealthy.contains(d))
                    .collect(),
                topology: None,
            }]);
            let allocatable = gpus.saturating_sub(unhealthy.len());
            if counted != Some(allocatable) {
                let status = json!({"status": {"allocatable": {FAKE_GPU: allocatable.to_string()}}});
                let nodes: Api<Node> = Api::all(client.clone());
                if nodes.patch_status(&node, &PatchParams::default(), &Patch::Merge(&status)).await.is_ok() {
                    counted = Some(allocatable);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn container_names(pod: &Pod) -> Vec<(String, String)> {
    pod.spec
        .as_ref()
        .map(|s| s.containers.iter().map(|c| (c.name.clone(), c.image.clone().unwrap_or_default())).collect())
        .unwrap_or_default()
}

/// The status a kubelet reports for a running pod.
pub fn running(pod: &Pod) -> Value {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let statuses: Vec<Value> = container_names(pod)
        .into_iter()
        .map(|(name, image)| {
            json!({"name": name, "image": image, "imageID": "", "ready": true, "restartCount": 0,
                   "started": true, "state": {"running": {"startedAt": now}}})
        })
        .collect();
    json!({"status": {
        "phase": "Running", "startTime": now, "hostIP": "127.0.0.1", "podIP": "127.0.0.1",
        "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now},
                       {"type": "PodScheduled", "status": "True", "lastTransitionTime": now}],
        "containerStatuses": statuses,
    }})
}

/// The status a kubelet reports for a pod whose containers ended with `exit_code`.
pub fn terminated(pod: &Pod, exit_code: i32) -> Value {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let statuses: Vec<Value> = container_names(pod)
        .into_iter()
        .map(|(name, image)| {
            json!({"name": name, "image": image, "imageID": "", "ready": false, "restartCount": 0,
                   "state": {"terminated": {"exitCode": exit_code, "reason": "Error",
                                            "startedAt": now, "finishedAt": now}}})
        })
        .collect();
    json!({"status": {"phase": "Failed", "containerStatuses": statuses}})
}

/// A pod of this test bound to `node`, asking for `gpus` fake GPUs.
pub fn pod_object(scope: &Scope, name: &str, node: &str, gpus: usize, labels: Value) -> Pod {
    let mut all_labels = json!({TEST_LABEL: scope.name});
    if let (Some(into), Some(from)) = (all_labels.as_object_mut(), labels.as_object()) {
        into.extend(from.clone());
    }
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": scope.ns, "labels": all_labels},
        "spec": {
            "nodeName": node,
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 5,
            "containers": [{"name": "work", "image": "registry.k8s.io/pause:3.10",
                            "resources": {"limits": {FAKE_GPU: gpus.to_string()}}}],
        },
    }))
    .expect("a pod")
}

/// The `events.k8s.io` Events in `ns` with `reason`, as JSON (none if they cannot be listed).
pub async fn events(client: &Client, ns: &str, reason: &str) -> Vec<Value> {
    let gvk = kube::api::GroupVersionKind::gvk("events.k8s.io", "v1", "Event");
    let api: Api<kube::api::DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &kube::api::ApiResource::from_gvk(&gvk));
    let Ok(list) = api.list(&ListParams::default()).await else { return Vec::new() };
    list.items
        .into_iter()
        .map(|e| serde_json::to_value(e).unwrap_or_default())
        .filter(|e| e["reason"] == reason)
        .collect()
}

/// The pod's condition `type`'s status, if it has one.
pub fn condition(pod: &Pod, type_: &str) -> Option<String> {
    pod.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == type_).map(|c| c.status.clone())
}

/// The NodeDeviceHealth of `node` as JSON (admin read), if it exists.
pub async fn node_device_health(client: &Client, node: &str) -> Option<Value> {
    let gvk = kube::api::GroupVersionKind::gvk("devheal.io", "v1alpha1", "NodeDeviceHealth");
    let resource = kube::api::ApiResource::from_gvk_with_plural(&gvk, "nodedevicehealths");
    let api: Api<kube::api::DynamicObject> = Api::all_with(client.clone(), &resource);
    let object = api.get_opt(node).await.ok()??;
    serde_json::to_value(object).ok()
}

/// The health the agent published for `device` on `node`.
pub async fn published_health(client: &Client, node: &str, device: &str) -> Option<String> {
    let object = node_device_health(client, node).await?;
    object["status"]["devices"]
        .as_array()?
        .iter()
        .find(|d| d["id"] == device)
        .and_then(|d| d["health"].as_str().map(str::to_string))
}

/// Pods of `node`'s device `device` as the agent published them.
pub async fn published_pods(client: &Client, node: &str, device: &str) -> Vec<String> {
    let Some(object) = node_device_health(client, node).await else { return Vec::new() };
    object["status"]["devices"]
        .as_array()
        .and_then(|ds| ds.iter().find(|d| d["id"] == device))
        .and_then(|d| d["pods"].as_array())
        .map(|ps| ps.iter().filter_map(|p| p["name"].as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

/// Counts the writes to the namespace's pods (every watch event) from now until `stop`.
pub async fn count_pod_writes(
    pods: &Api<Pod>,
) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<usize>) {
    use futures::{StreamExt, TryStreamExt};
    use kube::api::{WatchEvent, WatchParams};
    let rv =
        pods.list(&ListParams::default()).await.expect("list").metadata.resource_version.unwrap_or_default();
    let pods = pods.clone();
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let mut n = 0;
        let Ok(stream) = pods.watch(&WatchParams::default().timeout(290), &rv).await else { return n };
        let mut stream = stream.boxed();
        loop {
            tokio::select! {
                _ = &mut stopped => return n,
                e = stream.try_next() => match e {
                    Ok(Some(WatchEvent::Added(_) | WatchEvent::Modified(_) | WatchEvent::Deleted(_))) => n += 1,
                    Ok(Some(_)) => {}
                    _ => return n,
                },
            }
        }
    });
    (stop, task)
}
