//! The Helm chart (`deploy/helm/devheal`) renders the kustomize manifests: with its default values
//! exactly the objects of `deploy/base` (CRDs included), with `dryRun` those of
//! `deploy/overlays/dry-run`, with `agent.privileged` those of `deploy/overlays/privileged-agent`.
//! Each render is parsed into JSON values and compared object by object, keyed by apiVersion,
//! kind, namespace and name. The one thing ignored is helm's own annotation
//! `helm.sh/resource-policy: keep` on the Namespace (helm uninstall keeps it); the chart adds no
//! label of its own.
//! The other values reach the objects they name, and the monitoring toggles render Prometheus
//! Operator and Grafana objects that point at what the chart really serves.
//!
//! The tests that run helm are `#[ignore]`d: helm is built from its Go module by
//! `testenv/build-helm.sh` (minutes when cold), so `scripts/check-helm.sh` builds it and runs
//! them with `DEVHEAL_HELM` set (`.ci/run` calls it). They fail, not skip, without it. The ones
//! that need no helm run with the workspace's tests. All need `kubectl` (client only).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("the repository root")
}

fn chart_dir() -> PathBuf {
    repo_root().join("deploy/helm/devheal")
}

fn helm_binary() -> PathBuf {
    match std::env::var_os("DEVHEAL_HELM") {
        Some(path) => PathBuf::from(path),
        None => panic!(
            "DEVHEAL_HELM is not set: these tests run helm, which testenv/build-helm.sh builds; \
             run scripts/check-helm.sh (it builds helm if missing and runs them)"
        ),
    }
}

/// Runs a command; its standard output, or a panic with everything it printed.
fn run(command: &mut Command, what: &str) -> String {
    let out = command.output().unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// `helm template` of a chart with extra values (YAML text, empty for the defaults); every object
/// of the render, CRDs included.
fn helm_template_of(chart: &Path, values: &str) -> Vec<Value> {
    let dir = tempfile::tempdir().expect("a scratch directory");
    let values_file = dir.path().join("values.yaml");
    std::fs::write(&values_file, values).expect("write the values");
    let text = run(
        Command::new(helm_binary())
            .arg("template")
            .arg("devheal")
            .arg(chart)
            .arg("--include-crds")
            .arg("--values")
            .arg(&values_file),
        "helm template",
    );
    parse(&text, "helm template")
}

fn helm_template(values: &str) -> Vec<Value> {
    helm_template_of(&chart_dir(), values)
}

/// `helm template` that is expected to fail: its error output.
fn helm_template_error(chart: &Path, values: &str) -> String {
    let dir = tempfile::tempdir().expect("a scratch directory");
    let values_file = dir.path().join("values.yaml");
    std::fs::write(&values_file, values).expect("write the values");
    let out = Command::new(helm_binary())
        .arg("template")
        .arg("devheal")
        .arg(chart)
        .arg("--values")
        .arg(&values_file)
        .output()
        .expect("run helm template");
    assert!(
        !out.status.success(),
        "helm template succeeded where it must fail:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn kustomize(dir: &str) -> Vec<Value> {
    let text = run(
        Command::new("kubectl").arg("kustomize").arg(repo_root().join(dir)),
        &format!("kubectl kustomize {dir}"),
    );
    parse(&text, dir)
}

/// Every non-empty document of a multi-document YAML text (helm separates templates with `---`
/// and leaves a document empty where a template renders nothing).
fn parse(text: &str, what: &str) -> Vec<Value> {
    let documents: Vec<Value> = serde_saphyr::from_multiple(text)
        .unwrap_or_else(|e| panic!("{what}: not multi-document YAML: {e}\n{text}"));
    let objects: Vec<Value> = documents.into_iter().filter(|d| !d.is_null()).collect();
    for o in &objects {
        assert!(
            o.is_object() && o["kind"].is_string() && o["metadata"]["name"].is_string(),
            "{what}: not an object: {o}"
        );
    }
    objects
}

type Key = (String, String, String, String);

fn key(o: &Value) -> Key {
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    (s(&o["apiVersion"]), s(&o["kind"]), s(&o["metadata"]["namespace"]), s(&o["metadata"]["name"]))
}

/// The objects by key; a key twice is an error (the same object rendered twice).
fn by_key(objects: &[Value], what: &str) -> BTreeMap<Key, Value> {
    let mut map = BTreeMap::new();
    for o in objects {
        let previous = map.insert(key(o), o.clone());
        assert!(previous.is_none(), "{what} renders {:?} twice", key(o));
    }
    map
}

/// The first place two JSON values differ, as a path (for the failure message).
fn first_difference(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| match (x.get(k), y.get(k)) {
                (Some(u), Some(v)) => first_difference(u, v, &format!("{path}.{k}")),
                (u, v) => Some(format!("{path}.{k}: {u:?} vs {v:?}")),
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (u, v))| first_difference(u, v, &format!("{path}[{i}]"))),
        // The same number written two ways: kustomize rewrites the CRDs' `4294967295.0` as
        // `4294967295`, helm passes crds/ through as written; the API server stores one value.
        (Value::Number(x), Value::Number(y))
            if x.as_f64() == y.as_f64() && x.as_f64().is_some_and(|f| f.fract() == 0.0) =>
        {
            None
        }
        _ if a == b => None,
        _ => Some(format!("{path}: {a} vs {b}")),
    }
}

/// A helm render without the one thing that only helm reads: the Namespace's
/// `helm.sh/resource-policy: keep` (which must be there).
fn without_helm_annotations(helm: &[Value]) -> Vec<Value> {
    let mut objects = helm.to_vec();
    for o in objects.iter_mut().filter(|o| o["kind"] == "Namespace") {
        let metadata = o["metadata"].as_object_mut().unwrap();
        assert_eq!(
            metadata["annotations"],
            json!({"helm.sh/resource-policy": "keep"}),
            "the chart's Namespace outlives the release"
        );
        metadata.remove("annotations");
    }
    objects
}

/// Both renders hold the same objects, each equal to the other's.
fn assert_same_objects(kustomized: &[Value], helm: &[Value], what: &str) {
    let k = by_key(kustomized, "kubectl kustomize");
    let h = by_key(&without_helm_annotations(helm), "helm template");
    let only_k: Vec<&Key> = k.keys().filter(|key| !h.contains_key(*key)).collect();
    let only_h: Vec<&Key> = h.keys().filter(|key| !k.contains_key(*key)).collect();
    assert!(
        only_k.is_empty() && only_h.is_empty(),
        "{what}: only in kustomize: {only_k:?}; only in helm: {only_h:?}"
    );
    for (key, object) in &k {
        if let Some(difference) = first_difference(object, &h[key], "") {
            panic!("{what}: {key:?} differs at {difference}");
        }
    }
    assert!(k.len() >= 18, "{what}: only {} objects: not the whole base", k.len());
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the render"))
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn container(workload: &Value) -> &Value {
    &workload["spec"]["template"]["spec"]["containers"][0]
}

fn args(workload: &Value) -> Vec<String> {
    container(workload)["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("a string argument").to_string())
        .collect()
}

/// A file of the repository parsed as YAML (JSON is YAML too).
fn repo_yaml(path: &str) -> Value {
    let text = std::fs::read_to_string(repo_root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

const ALL_MONITORING: &str = "
monitoring:
  serviceMonitor: {enabled: true, interval: 30s, labels: {release: kube-prometheus-stack}}
  podMonitor: {enabled: true}
  prometheusRule: {enabled: true, labels: {role: alert-rules}}
  dashboard: {enabled: true, namespace: monitoring, annotations: {grafana_folder: devheal}}
";

// ---------------------------------------------------------------------------------------------
// The same objects as kustomize

#[test]
#[ignore = "needs helm (DEVHEAL_HELM): scripts/check-helm.sh"]
fn default_values_render_the_kustomize_base() {
    assert_same_objects(&kustomize("deploy/base"), &helm_template(""), "defaults vs deploy/base");
}

#[test]
#[ignore = "needs helm (DEVHEAL_HELM): scripts/check-helm.sh"]
fn dry_run_renders_the_dry_run_overlay() {
    assert_same_objects(
        &kustomize("deploy/overlays/dry-run"),
        &helm_template("dryRun: true"),
        "dryRun vs the dry-run overlay",
    );
}

#[test]
#[ignore = "needs helm (DEVHEAL_HELM): scripts/check-helm.sh"]
fn a_privileged_agent_renders_the_privileged_overlay() {
    assert_same_objects(
        &kustomize("deploy/overlays/privileged-agent"),
        &helm_template("agent: {privileged: true}"),
        "agent.privileged vs the privileged-agent overlay",
    );
}

// ---------------------------------------------------------------------------------------------
// Values

#[test]
#[ignore = "needs helm (DEVHEAL_HELM): scripts/check-helm.sh"]
fn images_resources_scheduling_and_arguments_reach_the_workloads() {
    let objects = helm_template(
        "
dryRun: true
agent:
  image: {repository: registry.example.com/devheal, tag: 0.2.0-rc1, pullPolicy: Always}
  resources: {requests: {cpu: 10m, memory: 32Mi}, limits: {memory: 128Mi}}
  tolerations: [{key: gpu, operator: Exists, effect: NoSchedule}]
  nodeSelector: {nvidia.com/gpu.present: 'true'}
  nvidiaLibraryDir: /run/nvidia/driver/usr/lib/x86_64-linux-gnu
  extraArgs: [--progress-auth, pod]
controller:
  image: {repository: registry.example.com/devheal-controller, tag: 7}
  replicas: 3
  resources: {limits: {memory: 2Gi}}
  tolerations: [{key: infra, operator: Exists}]
  nodeSelector: {role: infra}
  policyNamespace: team-a
  podSelector: devheal.io/managed=true
  extraArgs: [--probation, 15m]
",
    );
    let agent = find(&objects, "DaemonSet", "devheal-agent");
    let c = container(agent);
    assert_eq!(c["image"], "registry.example.com/devheal:0.2.0-rc1");
    assert_eq!(c["imagePullPolicy"], "Always");
    assert_eq!(
        c["resources"],
        json!({"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}})
    );
    let pod = &agent["spec"]["template"]["spec"];
    assert_eq!(pod["tolerations"], json!([{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]));
    assert_eq!(pod["nodeSelector"], json!({"nvidia.com/gpu.present": "true"}));
    let nvidia = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "nvidia-lib")
        .expect("the nvidia-lib volume");
    assert_eq!(nvidia["hostPath"]["path"], "/run/nvidia/driver/usr/lib/x86_64-linux-gnu");
    let agent_args = args(agent);
    assert_eq!(agent_args[0], "agent");
    assert_eq!(agent_args[agent_args.len() - 2..], ["--progress-auth", "pod"]);
    assert!(!agent_args.contains(&"--dry-run".to_string()), "dryRun is the controller's: {agent_args:?}");

    let controller = find(&objects, "Deployment", "devheal-controller");
    let c = container(controller);
    // A number as a tag is a tag, not a YAML integer.
    assert_eq!(c["image"], "registry.example.com/devheal-controller:7");
    assert!(c.get("imagePullPolicy").is_none(), "no pull policy unless one is given: {c}");
    // Helm merges a map given in the values into the default one.
    assert_eq!(
        c["resources"],
        json!({"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "2Gi"}})
    );
    assert_eq!(controller["spec"]["replicas"], 3);
    let pod = &controller["spec"]["template"]["spec"];
    assert_eq!(pod["tolerations"], json!([{"key": "infra", "operator": "Exists"}]));
    assert_eq!(pod["nodeSelector"], json!({"role": "infra"}));
    assert_eq!(
        args(controller),
        [
            "controller",
            "--lease-namespace",
            "devheal-system",
            "--lease-name",
            "devheal-controller",
            "--metrics-addr",
            "0.0.0.0:9100",
            "--settings",
            "/etc/devheal/settings.yaml",
            "--policy-namespace",
            "team-a",
            "--pod-selector",
            "devheal.io/managed=true",
            "--probation",
            "15m",
            "--dry-run",
        ]
    );
}

#[test]
#[ignore = "needs helm (DEVHEAL_HELM): scripts/check-helm.sh"]
fn vendor_library_directories_are_mounted_and_passed_only_when_set() {
    let objects = helm_template(
        "
agent:
  amdsmiLibraryDir: /opt/rocm/lib
  hlmlLibraryDir: /usr/lib/habanalabs
",
    );
    let agent = find(&objects, "DaemonSet", "devheal-agent");
    let agent_args = args(agent);
    for (flag, file) in [
        ("--amdsmi-library", "/host/amdsmi-lib/libamd_smi.so"),
        ("--hlml-library", "/host/hlml-lib/libhlml.so"),
    ] {
        let at =
            agent_args.iter().position(|a| a == flag).unwrap_or_else(|| panic!("{flag}: {agent_args:?}"));
        assert_eq!(agent_args[at + 1], file);
    }
    let pod = &agent["spec"]["template"]["spec"];
    for (name, host, mount) in [
        ("amdsmi-lib", "/opt/rocm/lib", "/host/amdsmi-lib"),
        ("hlml-lib", "/usr/lib/habanalabs", "/host/hlml-lib"),
    ] {
        let volume = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == name).expect(name);
        assert_eq!(volume["hostPath"], json!({"path": host, "type": "Directory"}));
        let mounted =
            container(agent)["volumeMounts"].as_array().unwrap().iter().find(|m| m["name"] == name).cloned();
        assert_eq!(mounted, Some(json!({"name": name, "mountPath": mount, "readOnly": true})));
    }
    // Unset (the default): neither flag nor volume.
    let default = helm_template("");
    let agent = find(&default, "DaemonSet", "devheal-agent");
    let agent_args = args(agent);
    assert!(!agent_args.iter().any(|a| a == "--amdsmi-library" || a == "--hlml-library"), "{agent_args:?}");
    let volumes = agent["spec"]["template"]["spec"]["volumes"].as_array().unwrap();
    assert!(!volumes.iter().any(|v| v["name"] == "amdsmi-lib" || v["name"] == "hlml-lib"), "{volumes:?}");
}

#[test]
#[ignore = "needs helm (DEVHEAL_HELM): scripts/check-helm.sh"]
fn another_name_and_namespace_move_every_reference_together() {
    let objects = helm_template("name: gpuheal\nnamespace: {name: gpu-ops}\n");
    let k = by_key(&kustomize("deploy/base"), "kubectl kustomize");
    let h = by_key(&objects, "helm template");
    assert_eq!(k.len(), h.len(), "the same number of objects");
    for o in &objects {
        let name = o["metadata"]["name"].as_str().unwrap();
        if o["kind"] != "CustomResourceDefinition" {
            assert!(
                name.starts_with("gpuheal") || name == "gpu-ops",
                "{} {name} keeps the old name",
                o["kind"]
            );
        }
        if let Some(ns) = o["metadata"]["namespace"].as_str() {
            assert_eq!(ns, "gpu-ops", "{} {name}", o["kind"]);
        }
    }
    let namespace = find(&objects, "Namespace", "gpu-ops");
    assert_eq!(namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "privileged");
    // The admission policy matches the agent's new service account, and nothing else.
    let policy = find(&objects, "ValidatingAdmissionPolicy", "gpuheal-agent-own-node");
    assert_eq!(
        policy["spec"]["matchConditions"][0]["expression"],
        "request.userInfo.username == 'system:serviceaccount:gpu-ops:gpuheal-agent'"
    );
    assert_eq!(
        find(&objects, "ValidatingAdmissionPolicyBinding", "gpuheal-agent-own-node")["spec"]["policyName"],
        "gpuheal-agent-own-node"
    );
    // Each binding names its role and the service account that exists.
    for kind in ["ClusterRoleBinding", "RoleBinding"] {
        for b in of_kind(&objects, kind) {
            let subject = &b["subjects"][0];
            assert_eq!(subject["namespace"], "gpu-ops");
            find(&objects, "ServiceAccount", subject["name"].as_str().unwrap());
            find(&objects, b["roleRef"]["kind"].as_str().unwrap(), b["roleRef"]["name"].as_str().unwrap());
        }
    }
    // The controller's Lease and state ConfigMap are the ones its Role grants.
    let controller = find(&objects, "Deployment", "gpuheal-controller");
    let a = args(controller);
    assert_eq!(a[1..5], ["--lease-namespace", "gpu-ops", "--lease-name", "gpuheal-controller"]);
    let role = find(&objects, "Role", "gpuheal-controller");
    let granted: Vec<&Value> =
        role["rules"].as_array().unwrap().iter().filter_map(|r| r.get("resourceNames")).collect();
    assert_eq!(granted, [&json!(["gpuheal-controller"]), &json!(["gpuheal-controller-state"])]);
    assert_eq!(controller["spec"]["template"]["spec"]["serviceAccountName"], "gpuheal-controller");
    assert_eq!(
        find(&objects, "DaemonSet", "gpuheal-agent")["spec"]["template"]["spec"]["serviceAccountName"],
        "gpuheal-agent"
    );

    // An existing namespace: no Namespace object, everything else as before.
    let objects = helm_template("namespace: {name: gpu-ops, create: false}\n");
    assert!(of_kind(&objects, "Namespace").is_empty());
    assert_eq!(objects.len(), k.len() - 1);
}

#[test]
#[ignore = "needs helm (DEVHEAL_HELM): scripts/check-helm.sh"]
fn settings_become_the_settings_file_the_controller_reads() {
    // Default values: the base's commented empty file, which the controller reads as the
    // built-in defaults.
    let defaults = helm_template("");
    let config = find(&defaults, "ConfigMap", "devheal-settings");
    let empty = config["data"]["settings.yaml"].as_str().expect("settings.yaml");
    check_settings(empty, "every setting is its default");

    let settings = json!({
        "safety": {"maxQuarantinedNodesPercent": 5, "maxGangRestartsPerHour": 3, "breakerWindow": "10m",
                   "requestRepairs": false},
        "progress": {"hangQuorum": 0.75}
    });
    let objects = helm_template(&format!("settings: {settings}\n"));
    let config = find(&objects, "ConfigMap", "devheal-settings");
    assert_eq!(config["metadata"]["namespace"], "devheal-system");
    let data = config["data"].as_object().expect("data");
    assert_eq!(data.keys().collect::<Vec<_>>(), ["settings.yaml"]);
    let text = data["settings.yaml"].as_str().unwrap();
    let file: Value = serde_saphyr::from_str(text).expect("the settings file is YAML");
    assert_eq!(file, settings, "the settings file is the values' map as it stands");
    check_settings(
        text,
        "differs from the defaults in safety.requestRepairs, safety.maxQuarantinedNodesPercent, \
         safety.maxGangRestartsPerHour, safety.breakerWindow, progress.hangQuorum",
    );

    // The controller reads the file from the ConfigMap's directory (not a subPath, so that a
    // changed ConfigMap reaches the running controller).
    let deployment = find(&objects, "Deployment", "devheal-controller");
    let pod = &deployment["spec"]["template"]["spec"];
    let args = pod["containers"][0]["args"].as_array().expect("args");
    let at = args.iter().position(|a| a == "--settings").expect("--settings");
    assert_eq!(args[at + 1], "/etc/devheal/settings.yaml");
    let mount = &pod["containers"][0]["volumeMounts"][0];
    assert_eq!((mount["mountPath"].as_str(), mount.get("subPath")), (Some("/etc/devheal"), None));
    assert_eq!(pod["volumes"][0]["configMap"]["name"], "devheal-settings");
}

/// `devheal config --check` on a rendered settings file: it must be usable and say `expected`.
fn check_settings(text: &str, expected: &str) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("settings.yaml");
    std::fs::write(&path, text).expect("write the settings file");
    let out = Command::new(env!("CARGO_BIN_EXE_devheal"))
        .args(["config", "--check"])
        .arg(&path)
        .output()
        .expect("run devheal config --check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}: {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(expected), "{text}: {stdout}");
}

#[test]
#[ignore = "needs helm (DEVHEAL_HELM): scripts/check-helm.sh"]
fn a_misspelt_or_mistyped_value_is_refused_not_ignored() {
    for (values, message) in [
        ("dryrun: true", "additional properties 'dryrun' not allowed"),
        ("agent: {privilged: true}", "additional properties 'privilged' not allowed"),
        ("monitoring: {serviceMonitor: {enable: true}}", "additional properties 'enable' not allowed"),
        ("dryRun: \"yes\"", "got string, want boolean"),
        ("name: Devheal_2", "does not match pattern"),
        ("controller: {replicas: -1}", "minimum"),
    ] {
        let error = helm_template_error(&chart_dir(), values);
        assert!(error.contains(message), "{values}: {error}");
    }
    // The settings are the controller's to check (`devheal config --check`): any map passes
    // the chart.
    helm_template("settings: {anything: {nested: [1, 2]}}");
}

// ---------------------------------------------------------------------------------------------
// Monitoring

#[test]
#[ignore = "needs helm (DEVHEAL_HELM): scripts/check-helm.sh"]
fn monitoring_objects_are_rendered_only_when_enabled() {
    let defaults = helm_template("");
    let default_keys = by_key(&defaults, "defaults");
    assert!(
        defaults.iter().all(|o| !o["apiVersion"].as_str().unwrap().starts_with("monitoring.coreos.com/")),
        "no Prometheus Operator object by default"
    );
    for (toggle, added_kinds) in [
        ("serviceMonitor", &["ServiceMonitor", "ServiceMonitor"][..]),
        ("podMonitor", &["PodMonitor", "PodMonitor"][..]),
        ("prometheusRule", &["PrometheusRule"][..]),
        ("dashboard", &["ConfigMap"][..]),
    ] {
        let objects = helm_template(&format!("monitoring: {{{toggle}: {{enabled: true}}}}\n"));
        let added: Vec<&Value> = objects.iter().filter(|o| !default_keys.contains_key(&key(o))).collect();
        let kinds: Vec<&str> = added.iter().map(|o| o["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds, added_kinds, "{toggle} adds only its own objects");
        for o in added.iter().filter(|o| o["kind"] != "ConfigMap") {
            assert_eq!(o["apiVersion"], "monitoring.coreos.com/v1");
        }
    }
}

/// Whether a label selector (matchLabels only) selects `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    assert!(selector.get("matchExpressions").is_none(), "only matchLabels is checked here");
    selector["matchLabels"].as_object().expect("matchLabels").iter().all(|(k, v)| &labels[k] == v)
}

/// The port named `metrics` of a list of ports.
fn metrics_port<'a>(ports: &'a Value, what: &str) -> &'a Value {
    ports
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "metrics")
        .unwrap_or_else(|| panic!("{what}: no port named metrics"))
}

/// The one monitor of each component scrapes that component's metrics port (the agent's 9101, the
/// controller's 9100, where the program serves `/metrics`), under a job name that devheal's alerts
/// recognise (DevhealAgentDown: a job containing "devheal-agent"), the agents' series with the
/// node's name.
#[test]
#[ignore = "needs helm (DEVHEAL_HELM): scripts/check-helm.sh"]
fn the_monitors_scrape_the_metrics_ports_of_the_agent_and_the_controller() {
    let objects = helm_template(ALL_MONITORING);
    let node_label = json!([{"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node"}]);
    for (component, workload_kind, port) in [("agent", "DaemonSet", 9101), ("controller", "Deployment", 9100)]
    {
        let name = format!("devheal-{component}");

        let monitor = find(&objects, "ServiceMonitor", &name);
        assert_eq!(monitor["metadata"]["namespace"], "devheal-system");
        assert_eq!(monitor["metadata"]["labels"]["release"], "kube-prometheus-stack");
        assert_eq!(monitor["spec"]["namespaceSelector"]["matchNames"], json!(["devheal-system"]));
        let endpoint = &monitor["spec"]["endpoints"][0];
        assert_eq!(
            (&endpoint["port"], &endpoint["path"], &endpoint["interval"]),
            (&json!("metrics"), &json!("/metrics"), &json!("30s"))
        );
        let services: Vec<&Value> = of_kind(&objects, "Service")
            .into_iter()
            .filter(|s| selects(&monitor["spec"]["selector"], &s["metadata"]["labels"]))
            .collect();
        assert_eq!(services.len(), 1, "{name}: one Service");
        // The job is the Service's name.
        assert_eq!(services[0]["metadata"]["name"], format!("{name}-metrics"));
        assert_eq!(metrics_port(&services[0]["spec"]["ports"], &name)["port"], port);

        let monitor = find(&objects, "PodMonitor", &name);
        assert_eq!(monitor["spec"]["namespaceSelector"]["matchNames"], json!(["devheal-system"]));
        let endpoint = &monitor["spec"]["podMetricsEndpoints"][0];
        assert_eq!((&endpoint["port"], &endpoint["path"]), (&json!("metrics"), &json!("/metrics")));
        let workloads: Vec<&Value> = objects
            .iter()
            .filter(|w| w["spec"]["template"].is_object())
            .filter(|w| selects(&monitor["spec"]["selector"], &w["spec"]["template"]["metadata"]["labels"]))
            .collect();
        assert_eq!(workloads.len(), 1, "{name}: one workload");
        assert_eq!(workloads[0]["kind"], workload_kind);
        assert_eq!(metrics_port(&container(workloads[0])["ports"], &name)["containerPort"], port);
        let a = args(workloads[0]);
        let addr = &a[a.iter().position(|x| x == "--metrics-addr").expect("--metrics-addr") + 1];
        assert_eq!(addr, &format!("0.0.0.0:{port}"), "{name} serves /metrics on the port scraped");

        // The node label on the agents' series only.
        let service_endpoint = &find(&objects, "ServiceMonitor", &name)["spec"]["endpoints"][0];
        for relabelings in [&service_endpoint["relabelings"], &endpoint["relabelings"]] {
            if component == "agent" {
                assert_eq!(relabelings, &node_label);
            } else {
                assert!(relabelings.is_null(), "{name}: {relabelings}");
            }
        }
    }
}

#[test]
#[ignore = "needs helm (DEVHEAL_HELM): scripts/check-helm.sh"]
fn the_rule_and_the_dashboard_are_the_files_in_deploy_monitoring() {
    let objects = helm_template(ALL_MONITORING);
    let rule = find(&objects, "PrometheusRule", "devheal");
    assert_eq!(rule["metadata"]["labels"]["role"], "alert-rules");
    assert_eq!(
        rule["spec"],
        repo_yaml("deploy/monitoring/devheal-alerts.yaml"),
        "the rule's spec is the rule file"
    );

    let dashboard = find(&objects, "ConfigMap", "devheal-dashboard");
    assert_eq!(dashboard["metadata"]["namespace"], "monitoring");
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_eq!(dashboard["metadata"]["annotations"], json!({"grafana_folder": "devheal"}));
    let text = dashboard["data"]["devheal-dashboard.json"].as_str().expect("the dashboard as text");
    let parsed: Value = serde_json::from_str(text).expect("the dashboard is JSON");
    assert_eq!(parsed, repo_yaml("deploy/monitoring/devheal-dashboard.json"));
}

/// A copy of the chart (links followed) with `files/<name>` replaced by `content`.
fn chart_with_file(name: &str, content: &str) -> tempfile::TempDir {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if std::fs::metadata(entry.path()).unwrap().is_dir() {
                copy(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), &target).unwrap();
            }
        }
    }
    let dir = tempfile::tempdir().expect("a scratch directory");
    copy(&chart_dir(), &dir.path().join("devheal"));
    std::fs::write(dir.path().join("devheal/files").join(name), content).unwrap();
    dir
}

#[test]
#[ignore = "needs helm (DEVHEAL_HELM): scripts/check-helm.sh"]
fn a_broken_rule_file_or_dashboard_fails_the_render() {
    for (content, message) in [
        ("groups: [unclosed\n", "is not YAML"),
        ("rules: []\n", "not a Prometheus rule file"),
        ("", "missing or empty"),
    ] {
        let chart = chart_with_file("devheal-alerts.yaml", content);
        let error = helm_template_error(
            &chart.path().join("devheal"),
            "monitoring: {prometheusRule: {enabled: true}}",
        );
        assert!(error.contains(message), "rule file {content:?}: {error}");
        // Off, the file is not read.
        helm_template_of(&chart.path().join("devheal"), "");
    }
    for (content, message) in [("{\"panels\": [", "is not a JSON object"), ("", "missing or empty")] {
        let chart = chart_with_file("devheal-dashboard.json", content);
        let error =
            helm_template_error(&chart.path().join("devheal"), "monitoring: {dashboard: {enabled: true}}");
        assert!(error.contains(message), "dashboard {content:?}: {error}");
    }
}

// ---------------------------------------------------------------------------------------------
// Without helm

/// The chart holds the CRDs, the rule file and the dashboard as links to the files under
/// `deploy/`, so there is one copy of each (helm follows the links, and `helm package` stores
/// their contents).
#[test]
fn the_charts_crds_and_monitoring_files_are_links_to_deploy() {
    for (in_chart, target) in [
        ("crds/devheal.io.yaml", "deploy/crds/devheal.io.yaml"),
        ("files/devheal-alerts.yaml", "deploy/monitoring/devheal-alerts.yaml"),
        ("files/devheal-dashboard.json", "deploy/monitoring/devheal-dashboard.json"),
    ] {
        let link = chart_dir().join(in_chart);
        let meta = std::fs::symlink_metadata(&link).unwrap_or_else(|e| panic!("{in_chart}: {e}"));
        assert!(meta.file_type().is_symlink(), "{in_chart} is a link, not a copy that could drift");
        let resolved = link.canonicalize().unwrap_or_else(|e| panic!("{in_chart} is a dangling link: {e}"));
        assert_eq!(resolved, repo_root().join(target), "{in_chart} points at {target}");
    }
}

#[test]
fn the_chart_versions_and_default_image_are_the_workspaces() {
    let chart = repo_yaml("deploy/helm/devheal/Chart.yaml");
    assert_eq!(chart["apiVersion"], "v2");
    assert_eq!(chart["name"], "devheal");
    assert_eq!(chart["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(chart["appVersion"], env!("CARGO_PKG_VERSION"));
    let values = repo_yaml("deploy/helm/devheal/values.yaml");
    for component in ["agent", "controller"] {
        let image = &values[component]["image"];
        assert_eq!(image["repository"], "ghcr.io/devheal/devheal", "{component}");
        assert_eq!(image["tag"], "", "{component}: the tag follows appVersion");
    }
    let monitoring = values["monitoring"].as_object().expect("monitoring values");
    assert_eq!(monitoring.len(), 4);
    for (toggle, v) in monitoring {
        assert_eq!(v["enabled"], false, "monitoring.{toggle} is off by default");
    }
    assert_eq!(values["dryRun"], false);
    assert_eq!(values["settings"], json!({}));
}
