//! What the agent and the controller both take from their environment: a name for this process
//! (a flag, else an environment variable the manifests set, else the host name) and a Kubernetes
//! client (a kubeconfig file, else in-cluster or the usual kubeconfig search).

use std::path::Path;

use anyhow::Context;

/// `flag`, else `$env` (set from the downward API in the manifests), else the host name, else
/// `fallback`.
pub fn own_name(flag: Option<&str>, env: &str, fallback: &str) -> String {
    flag.map(str::to_string)
        .or_else(|| std::env::var(env).ok().filter(|n| !n.is_empty()))
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_string()))
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| fallback.to_string())
}

/// A client from `kubeconfig`, or inferred (in-cluster service account, `$KUBECONFIG`,
/// `~/.kube/config`). With `client_retries: false` kube's own retries of 429/503 are off, for a
/// caller that backs off itself (the controller's actuator must see a PodDisruptionBudget's 429).
pub async fn client(
    kubeconfig: Option<&Path>,
    client_retries: bool,
    missing_hint: &str,
) -> anyhow::Result<kube::Client> {
    let mut config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read the kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("cannot use the kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer().await.with_context(|| {
            format!("no Kubernetes credentials (in-cluster, $KUBECONFIG or ~/.kube/config); {missing_hint}")
        })?,
    };
    config.default_retry = client_retries;
    // Connecting is bounded here; each one-shot request is bounded by its caller (10 s), and
    // kube-runtime's watchers reconnect after an idle watch (their own timeout).
    config.connect_timeout = Some(std::time::Duration::from_secs(10));
    kube::Client::try_from(config).context("cannot build the Kubernetes client")
}
