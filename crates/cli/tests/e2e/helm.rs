//! The Helm chart (`deploy/helm/devheal`) installed with a real `helm install` (helm v4, built
//! by `testenv/build-helm.sh`, `DEVHEAL_HELM` from `scripts/e2e.sh`) and removed with
//! `helm uninstall`, on the real control plane.
//!
//! The kustomize base is applied by the harness under the default names, so the chart is
//! installed beside it under another name (`name=e2e-helm`), into namespace `e2e-helm-system`
//! the way docs/install.md installs it into `devheal-system`: `--namespace … --create-namespace`,
//! the release recorded there and the chart's Namespace object adding the Pod Security labels.
//! The CRDs are shared by both: they are deleted first, so that the chart's `crds/` really
//! installs them, and put back as the harness applies them at the end. No kubelet runs pods here, so what is checked is what
//! the API server, its admission and the controller manager make of the objects.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::*;
use crate::setup;

const RELEASE: &str = "e2e-helm";
const NS: &str = "e2e-helm-system";
const CRDS: [&str; 2] = ["crd/nodedevicehealths.devheal.io", "crd/failurepolicies.devheal.io"];

/// `helm <args>` with the admin kubeconfig and helm's own directories in `dir`; its output.
fn helm(env: &Env, dir: &Path, args: &[&str]) -> std::process::Output {
    let binary = std::env::var_os("DEVHEAL_HELM").map(PathBuf::from).unwrap_or_else(|| {
        panic!("DEVHEAL_HELM is not set: scripts/e2e.sh builds helm (testenv/build-helm.sh) and sets it")
    });
    Command::new(binary)
        .args(args)
        .arg("--kubeconfig")
        .arg(&env.kubeconfig)
        .env("HELM_CACHE_HOME", dir.join("helm-cache"))
        .env("HELM_CONFIG_HOME", dir.join("helm-config"))
        .env("HELM_DATA_HOME", dir.join("helm-data"))
        .output()
        .expect("run helm")
}

fn helm_ok(env: &Env, dir: &Path, args: &[&str]) -> String {
    let out = helm(env, dir, args);
    assert!(
        out.status.success(),
        "helm {} failed:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The live objects named in a manifest (`kubectl get -f`), those that exist.
fn live_objects(env: &Env, manifest: &str) -> Vec<Value> {
    let text =
        kubectl(env, &["get", "--ignore-not-found", "-o", "json", "-f", "-"], Some(manifest.as_bytes()));
    if text.trim().is_empty() {
        return Vec::new();
    }
    let list: Value = serde_json::from_str(&text).expect("kubectl get -o json");
    match list["kind"].as_str() {
        Some("List") => list["items"].as_array().cloned().unwrap_or_default(),
        _ => vec![list],
    }
}

fn describe(o: &Value) -> String {
    format!("{} {}", o["kind"].as_str().unwrap_or("?"), o["metadata"]["name"].as_str().unwrap_or("?"))
}

/// Puts the CRDs and `deploy/base` back as the harness applies them, whatever happened in the
/// test: the tests after this one rely on them.
struct RestoreDeploy(&'static Env);

impl Drop for RestoreDeploy {
    fn drop(&mut self) {
        if let Err(e) = setup::apply_deploy(&self.0.kubeconfig, &repo_root(), "devheal-e2e") {
            eprintln!("putting deploy/ back after the helm test failed: {e:#}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real control plane: scripts/e2e.sh"]
async fn the_helm_chart_installs_and_uninstalls_on_the_real_server() {
    let scope = Scope::new("helm").await;
    let env = scope.env;
    let dir = scope.dir.path();
    let _restore = RestoreDeploy(env);

    // What an earlier failed run may have left: the chart's namespace (with the release record).
    kubectl(env, &["delete", "namespace", NS, "--ignore-not-found", "--wait=true", "--timeout=90s"], None);
    // The CRDs, so that the chart's crds/ installs them (helm leaves CRDs that exist alone).
    let mut delete = vec!["delete", "--ignore-not-found", "--wait=true", "--timeout=60s"];
    delete.extend(CRDS);
    kubectl(env, &delete, None);

    let chart = repo_root().join("deploy/helm/devheal");
    let chart = chart.to_str().unwrap();
    let settings = r#"settings={"safety":{"maxQuarantinedNodesPercent":5}}"#;
    let out = helm_ok(
        env,
        dir,
        &[
            "install",
            RELEASE,
            chart,
            "--namespace",
            NS,
            "--create-namespace",
            "--set",
            &format!("name={RELEASE},namespace.name={NS},dryRun=true,monitoring.dashboard.enabled=true"),
            "--set-json",
            settings,
        ],
    );
    assert!(out.contains("STATUS: deployed"), "helm install: {out}");

    // The CRDs are the chart's, and the API server serves them.
    let mut wait = vec!["wait", "--for", "condition=Established", "--timeout", "60s"];
    wait.extend(CRDS);
    kubectl(env, &wait, None);

    // Every object of the release exists, recorded as the release's.
    let manifest = helm_ok(env, dir, &["get", "manifest", RELEASE, "--namespace", NS]);
    let rendered: Vec<Value> = serde_saphyr::from_multiple::<Value>(&manifest)
        .expect("the release's manifest is YAML")
        .into_iter()
        .filter(|o| !o.is_null())
        .collect();
    let mut kinds: Vec<&str> = rendered.iter().map(|o| o["kind"].as_str().unwrap()).collect();
    kinds.sort();
    kinds.dedup();
    assert_eq!(
        kinds,
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "DaemonSet",
            "Deployment",
            "Namespace",
            "PodDisruptionBudget",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding"
        ]
    );
    let live = live_objects(env, &manifest);
    assert_eq!(
        live.len(),
        rendered.len(),
        "every object of the release exists: {:?}",
        live.iter().map(describe).collect::<Vec<_>>()
    );
    for o in &live {
        assert_eq!(o["metadata"]["annotations"]["meta.helm.sh/release-name"], RELEASE, "{}", describe(o));
        assert_eq!(o["metadata"]["annotations"]["meta.helm.sh/release-namespace"], NS, "{}", describe(o));
        if let Some(ns) = o["metadata"]["namespace"].as_str() {
            assert_eq!(ns, NS, "{}", describe(o));
        }
    }
    let namespace = live.iter().find(|o| o["kind"] == "Namespace").expect("the chart's namespace");
    assert_eq!(namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "privileged");
    let settings = kubectl(
        env,
        &["-n", NS, "get", "configmap", "e2e-helm-settings", "-o", "jsonpath={.data.settings\\.yaml}"],
        None,
    );
    assert_eq!(settings.trim(), "safety:\n  maxQuarantinedNodesPercent: 5");
    let dashboard = kubectl(env, &["-n", NS, "get", "configmap", "e2e-helm-dashboard", "-o", "json"], None);
    let dashboard: Value = serde_json::from_str(&dashboard).unwrap();
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");

    // The controller's Lease and the dry run, as the chart wrote them.
    let deployment = live.iter().find(|o| o["kind"] == "Deployment").expect("the controller's Deployment");
    let args: Vec<&str> = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .expect("the controller's args")
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[1..5], ["--lease-namespace", NS, "--lease-name", "e2e-helm-controller"]);
    assert_eq!(args.last(), Some(&"--dry-run"));

    // The real controller manager makes the controller's pods (Pending: no kubelet runs them),
    // so Pod Security and the API server admitted its pod template in the chart's namespace.
    eventually("the Deployment's two controller pods exist", Duration::from_secs(60), || async {
        let pods = kubectl(
            env,
            &["-n", NS, "get", "pods", "-l", "app.kubernetes.io/component=controller", "-o", "name"],
            None,
        );
        (pods.lines().count() == 2).then_some(())
    })
    .await;
    // The agent's pod (hostPath volumes, uid 0, SYSLOG, a hostPort) is admitted there too: a
    // pod of the DaemonSet's template, created as a server-side dry run.
    let daemonset = live.iter().find(|o| o["kind"] == "DaemonSet").expect("the agent's DaemonSet");
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "agent-probe", "namespace": NS, "labels": daemonset["spec"]["template"]["metadata"]["labels"]},
        "spec": daemonset["spec"]["template"]["spec"],
    });
    kubectl(env, &["create", "--dry-run=server", "-f", "-"], Some(pod.to_string().as_bytes()));

    // RBAC: the bindings give the chart's accounts the base's split.
    let controller_sa = format!("--as=system:serviceaccount:{NS}:e2e-helm-controller");
    let agent_sa = format!("--as=system:serviceaccount:{NS}:e2e-helm-agent");
    // (`pods --subresource=eviction`: `pods/eviction` would ask about a pod named "eviction".)
    for (who, verb, resource, allowed) in [
        (&controller_sa, "create", "pods --subresource=eviction", "yes"),
        (&controller_sa, "patch", "nodes", "yes"),
        (&agent_sa, "patch", "nodedevicehealths.devheal.io", "yes"),
        (&agent_sa, "create", "pods --subresource=eviction", "no"),
        (&agent_sa, "patch", "nodes", "no"),
    ] {
        let mut args = vec!["auth", "can-i", verb];
        args.extend(resource.split(' '));
        args.push(who);
        let out = kubectl_output(env, &args, None);
        let answer = String::from_utf8_lossy(&out.stdout);
        assert_eq!(answer.trim(), allowed, "{who} {verb} {resource}");
    }
    let lease_namespace = format!("--namespace={NS}");
    let out = kubectl_output(
        env,
        &["auth", "can-i", "update", "leases/e2e-helm-controller", &lease_namespace, &controller_sa],
        None,
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "yes", "the controller renews its own Lease");

    // The chart's admission policy is in force for the chart's agent: a write without a
    // node-name claim (an impersonated request has none) is refused by it, by name.
    let probe = json!({"apiVersion": "devheal.io/v1alpha1", "kind": "NodeDeviceHealth",
                       "metadata": {"name": "e2e-helm-probe"}, "spec": {"nodeName": "e2e-helm-probe"}})
    .to_string();
    eventually("the chart's admission policy refuses its agent's write", Duration::from_secs(30), || async {
        let out = kubectl_output(env, &["create", "-f", "-", &agent_sa], Some(probe.as_bytes()));
        if out.status.success() {
            // Not in force yet (the API server loads policies asynchronously): undo and retry.
            kubectl(env, &["delete", "nodedevicehealth", "e2e-helm-probe", "--ignore-not-found"], None);
            return None;
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("e2e-helm-agent-own-node") && err.contains("carries no node name"), "{err}");
        Some(())
    })
    .await;

    // helm uninstall removes every object of the release but the namespace (which holds the
    // release's record until the end), and keeps the CRDs (and with them every FailurePolicy),
    // as helm does for a chart's crds/.
    let out = helm_ok(env, dir, &["uninstall", RELEASE, "--namespace", NS, "--wait", "--timeout", "90s"]);
    assert!(out.contains("uninstalled"), "helm uninstall: {out}");
    eventually("every object of the release but its namespace is gone", Duration::from_secs(90), || async {
        let left: Vec<String> = live_objects(env, &manifest).iter().map(describe).collect();
        (left == [format!("Namespace {NS}")]).then_some(())
    })
    .await;
    let status = helm(env, dir, &["status", RELEASE, "--namespace", NS]);
    let err = String::from_utf8_lossy(&status.stderr);
    assert!(!status.status.success() && err.contains("not found"), "no release left: {err}");
    kubectl(env, &wait, None);
    kubectl(env, &["delete", "namespace", NS, "--wait=false"], None);
}
