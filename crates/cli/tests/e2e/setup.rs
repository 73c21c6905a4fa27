//! Setting up the real control plane for devheal: `kubectl` with a kubeconfig, `deploy/` applied
//! as `kubectl kustomize` renders it, clients from kubeconfigs, service-account tokens and the
//! kubeconfigs that carry them. Shared by the end-to-end tests (`tests/e2e`) and the benchmark
//! against the real API server (`benches/real_apiserver.rs`, which includes this file by path),
//! so it depends on nothing else of either.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::{Client, Config};

/// devheal's namespace, as `deploy/base` writes it.
pub const SYSTEM_NS: &str = "devheal-system";

/// `kubectl --kubeconfig <kubeconfig> <args>`, `stdin` fed and closed; its standard output, or
/// an error with everything it printed.
pub fn kubectl(kubeconfig: &Path, args: &[&str], stdin: Option<&[u8]>) -> Result<String> {
    let out = kubectl_output(kubeconfig, args, stdin)?;
    if !out.status.success() {
        bail!(
            "kubectl {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// [`kubectl`], whatever its exit status.
pub fn kubectl_output(
    kubeconfig: &Path,
    args: &[&str],
    stdin: Option<&[u8]>,
) -> Result<std::process::Output> {
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running kubectl (is it on PATH?)")?;
    let mut pipe = child.stdin.take().context("kubectl's stdin")?;
    if let Some(bytes) = stdin {
        pipe.write_all(bytes).context("writing kubectl's stdin")?;
    }
    drop(pipe);
    child.wait_with_output().context("waiting for kubectl")
}

/// `deploy/crds` (then waits until they are Established) and `deploy/base`, as
/// `kubectl kustomize` renders them, applied server-side as `field_manager`; the in-cluster
/// controller Deployment scaled to zero (no kubelet runs it here, and it must never compete with
/// the controller processes under test for the Lease).
pub fn apply_deploy(kubeconfig: &Path, root: &Path, field_manager: &str) -> Result<()> {
    let apply = ["apply", "--server-side", "--force-conflicts", "--field-manager", field_manager, "-f", "-"];
    let crds = kubectl(kubeconfig, &["kustomize", &root.join("deploy/crds").to_string_lossy()], None)?;
    kubectl(kubeconfig, &apply, Some(crds.as_bytes()))?;
    let established = [
        "wait",
        "--for",
        "condition=Established",
        "--timeout",
        "60s",
        "crd/nodedevicehealths.devheal.io",
        "crd/failurepolicies.devheal.io",
    ];
    kubectl(kubeconfig, &established, None)?;
    let base = kubectl(kubeconfig, &["kustomize", &root.join("deploy/base").to_string_lossy()], None)?;
    kubectl(kubeconfig, &apply, Some(base.as_bytes()))?;
    kubectl(kubeconfig, &["-n", SYSTEM_NS, "scale", "deployment/devheal-controller", "--replicas=0"], None)?;
    Ok(())
}

/// A client from a kubeconfig file; `retries: false` turns kube's own retries off (as the
/// controller does, so a PodDisruptionBudget's 429 reaches the caller).
pub async fn client_from(kubeconfig: &Path, retries: bool) -> Result<Client> {
    let file = kube::config::Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading {}", kubeconfig.display()))?;
    let mut config = Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
        .await
        .with_context(|| format!("using {}", kubeconfig.display()))?;
    config.default_retry = retries;
    Client::try_from(config).context("building a client")
}

/// A kubeconfig at `dir/<name>.kubeconfig` that authenticates to `server` with `token`.
pub fn token_kubeconfig(server: &str, ca: &Path, dir: &Path, name: &str, token: &str) -> Result<PathBuf> {
    let path = dir.join(format!("{name}.kubeconfig"));
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster:\n    server: {server}\n    certificate-authority: {}\nusers:\n- name: {name}\n  user:\n    token: {token}\ncontexts:\n- name: e2e\n  context: {{cluster: e2e, user: {name}}}\ncurrent-context: e2e\n",
        ca.display()
    );
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// A TokenRequest token (one hour) for `devheal-system/<account>`; bound to `pod` when given, so
/// that it carries the pod's node name (`authentication.kubernetes.io/node-name`).
pub async fn service_account_token(client: &Client, account: &str, pod: Option<&Pod>) -> Result<String> {
    token_request(client, SYSTEM_NS, account, pod, None).await
}

/// A TokenRequest token (one hour) for `<namespace>/<account>`, bound to `pod` when given and
/// issued for `audiences` (default: the API server's).
pub async fn token_request(
    client: &Client,
    namespace: &str,
    account: &str,
    pod: Option<&Pod>,
    audiences: Option<Vec<String>>,
) -> Result<String> {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let bound_object_ref = pod.map(|p| BoundObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: p.metadata.name.clone(),
        uid: p.metadata.uid.clone(),
    });
    let request = TokenRequest {
        spec: Some(TokenRequestSpec { audiences, bound_object_ref, expiration_seconds: Some(3600) }),
        ..TokenRequest::default()
    };
    let answer = accounts
        .create_token_request(account, &PostParams::default(), &request)
        .await
        .with_context(|| format!("TokenRequest for {namespace}/{account}"))?;
    answer.status.and_then(|s| s.token).context("a TokenRequest answered without a token")
}

/// A free port on loopback for a process the test starts (bound, then released for it).
///
/// The port comes from below the kernel's ephemeral range (`ip_local_port_range`), never from a
/// bind to port 0: a port the kernel chose is one it may hand, between the check and the process
/// binding it, to one of the many outgoing connections the tests make to the API server (a CI run
/// failed on exactly that: `cannot listen on 127.0.0.1:45849: Address already in use`). Ports
/// below the range are taken only by listeners, which the bind check sees. Each test process
/// walks the range from its own offset, so two processes (an e2e run and a bench) rarely meet.
pub fn free_addr() -> Result<SocketAddr> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOWEST: u32 = 20_000;
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|low| low.parse::<u32>().ok()))
        .unwrap_or(32_768);
    if ephemeral <= LOWEST + 1_000 {
        // No room below the ephemeral range: the kernel's choice is all there is.
        return Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?);
    }
    let span = ephemeral - LOWEST;
    let start = std::process::id() % span;
    for _ in 0..span {
        let step = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = LOWEST + (start + step) % span;
        let port = u16::try_from(port).context("a port below the ephemeral range")?;
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            return Ok(listener.local_addr()?);
        }
    }
    bail!("no free loopback port in {LOWEST}..{ephemeral}")
}

/// A plain HTTP/1.0 request with no body to a devheal process's metrics port on loopback: the
/// status code and body, or `None` when it does not answer.
pub fn http(addr: SocketAddr, method: &str, path: &str) -> Option<(u16, String)> {
    http_body(addr, method, path, "")
}

/// [`http`] with a JSON body.
pub fn http_body(addr: SocketAddr, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    http_request(addr, method, path, &[], body)
}

/// [`http_body`] with extra request headers.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((code, body))
}
