//! The manifests in `deploy/`, as `kubectl kustomize` renders them, keep devheal's least-privilege
//! split (DESIGN.md principle 8): the agent reports, only its own node, and the controller alone
//! acts. Each ServiceAccount's permissions are resolved through its (Cluster)RoleBindings, the
//! way the RBAC authorizer resolves them (wildcards, `*/subresource`, resourceNames, namespaces),
//! and checked against what each component needs; the admission policy, the security contexts,
//! the overlays, the CRDs and the image are checked too.
//!
//! Needs `kubectl` on PATH (client only; `kubectl kustomize` works offline). Without it these
//! tests fail rather than skip: CI has it, and an unchecked RBAC change is the failure they exist
//! to prevent.
//!
//! `e2e_on_kind` (ignored) runs `scripts/e2e-kind.sh`, which needs docker and kind:
//! `cargo test -p devheal-k8s --test deploy_manifests -- --ignored`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::{Value, json};

const NAMESPACE: &str = "devheal-system";
const AGENT: &str = "devheal-agent";
const CONTROLLER: &str = "devheal-controller";
const LEASE: &str = "devheal-controller";
const NODE_NAME_CLAIM: &str = "authentication.kubernetes.io/node-name";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

// ---------------------------------------------------------------------------------------------
// Rendering

/// Every object one kustomization renders to, in order.
#[derive(Clone)]
struct Rendered {
    dir: String,
    objects: Vec<Value>,
}

fn kustomize(dir: &str) -> Rendered {
    let path = repo_root().join(dir);
    let out = match Command::new("kubectl").arg("kustomize").arg(&path).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "kubectl is not on PATH: these tests render {dir} with `kubectl kustomize` (client only, \
             no cluster needed). Install kubectl (https://kubernetes.io/docs/tasks/tools/) and run them again."
        ),
        Err(e) => panic!("cannot run kubectl kustomize {}: {e}", path.display()),
    };
    assert!(
        out.status.success(),
        "kubectl kustomize {dir} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("kubectl kustomize prints UTF-8");
    Rendered::parse(dir, &text)
}

impl Rendered {
    fn parse(dir: &str, yaml: &str) -> Rendered {
        let objects: Vec<Value> = serde_saphyr::from_multiple(yaml)
            .unwrap_or_else(|e| panic!("{dir}: the render is not valid multi-document YAML: {e}"));
        assert!(objects.iter().all(Value::is_object), "{dir}: every document is an object");
        Rendered { dir: dir.to_string(), objects }
    }

    fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.objects.iter().filter(move |o| o["kind"] == kind)
    }

    fn find(&self, kind: &str, namespace: Option<&str>, name: &str) -> Option<&Value> {
        self.objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name && namespace_of(o) == namespace)
    }

    fn get(&self, kind: &str, namespace: Option<&str>, name: &str) -> &Value {
        self.find(kind, namespace, name).unwrap_or_else(|| {
            panic!(
                "{}: no {kind} {}{name} in the render",
                self.dir,
                namespace.map(|n| format!("{n}/")).unwrap_or_default()
            )
        })
    }

    fn get_mut(&mut self, kind: &str, namespace: Option<&str>, name: &str) -> &mut Value {
        self.objects
            .iter_mut()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name && namespace_of(o) == namespace)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    }
}

fn namespace_of(object: &Value) -> Option<&str> {
    object["metadata"]["namespace"].as_str()
}

fn base() -> &'static Rendered {
    static BASE: OnceLock<Rendered> = OnceLock::new();
    BASE.get_or_init(|| kustomize("deploy/base"))
}

fn dry_run() -> &'static Rendered {
    static DRY_RUN: OnceLock<Rendered> = OnceLock::new();
    DRY_RUN.get_or_init(|| kustomize("deploy/overlays/dry-run"))
}

fn privileged_agent() -> &'static Rendered {
    static PRIVILEGED: OnceLock<Rendered> = OnceLock::new();
    PRIVILEGED.get_or_init(|| kustomize("deploy/overlays/privileged-agent"))
}

fn strings(value: &Value) -> Vec<&str> {
    value.as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// RBAC, resolved as the authorizer does

/// One API request as the RBAC authorizer sees it. `namespace: None` is a cluster-scoped
/// resource or a request across all namespaces; `name: None` a request without one (list,
/// watch, create, deletecollection).
#[derive(Clone, Copy, Debug)]
struct Request<'a> {
    verb: &'a str,
    group: &'a str,
    resource: &'a str,
    subresource: Option<&'a str>,
    namespace: Option<&'a str>,
    name: Option<&'a str>,
}

impl<'a> Request<'a> {
    /// `resource` may carry a subresource: `pods/eviction`.
    fn new(verb: &'a str, group: &'a str, resource: &'a str) -> Request<'a> {
        let (resource, subresource) = match resource.split_once('/') {
            Some((r, s)) => (r, Some(s)),
            None => (resource, None),
        };
        Request { verb, group, resource, subresource, namespace: None, name: None }
    }

    fn in_namespace(self, namespace: &'a str) -> Request<'a> {
        Request { namespace: Some(namespace), ..self }
    }

    fn named(self, name: &'a str) -> Request<'a> {
        Request { name: Some(name), ..self }
    }
}

/// Where a bound rule applies: everywhere (ClusterRoleBinding) or in one namespace (RoleBinding).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Scope {
    Cluster,
    Namespace(String),
}

/// The effective rules of one ServiceAccount: every rule of every role bound to it.
struct Grants {
    rules: Vec<(Scope, Value)>,
}

/// RBAC's rule matching (k8s.io/component-helpers/auth/rbac): `*` matches any verb, group or
/// resource (subresources included), `*/x` any resource's subresource x, and a rule with
/// resourceNames only requests that name one of them.
fn rule_allows(rule: &Value, req: &Request) -> bool {
    let verbs = strings(&rule["verbs"]);
    let groups = strings(&rule["apiGroups"]);
    let resources = strings(&rule["resources"]);
    let names = strings(&rule["resourceNames"]);
    let combined = match req.subresource {
        Some(sub) => format!("{}/{sub}", req.resource),
        None => req.resource.to_string(),
    };
    let resource_ok = resources.iter().any(|r| {
        *r == "*" || *r == combined || req.subresource.is_some_and(|sub| r.strip_prefix("*/") == Some(sub))
    });
    (verbs.contains(&"*") || verbs.contains(&req.verb))
        && (groups.contains(&"*") || groups.contains(&req.group))
        && resource_ok
        && (names.is_empty() || req.name.is_some_and(|n| names.contains(&n)))
}

/// Whether a binding's subject is this ServiceAccount: by kind ServiceAccount (the namespace
/// defaulting to a RoleBinding's own), by its user name, or by one of the groups every service
/// account token carries.
fn subject_is(subject: &Value, binding_namespace: Option<&str>, sa_namespace: &str, sa_name: &str) -> bool {
    let name = subject["name"].as_str().unwrap_or_default();
    match subject["kind"].as_str() {
        Some("ServiceAccount") => {
            let namespace = subject["namespace"].as_str().or(binding_namespace);
            name == sa_name && namespace == Some(sa_namespace)
        }
        Some("User") => name == format!("system:serviceaccount:{sa_namespace}:{sa_name}"),
        Some("Group") => {
            name == "system:serviceaccounts"
                || name == format!("system:serviceaccounts:{sa_namespace}")
                || name == "system:authenticated"
        }
        _ => false,
    }
}

fn grants(r: &Rendered, sa_namespace: &str, sa_name: &str) -> Grants {
    let mut rules = Vec::new();
    for binding in r.of_kind("ClusterRoleBinding").chain(r.of_kind("RoleBinding")) {
        let binding_namespace = namespace_of(binding);
        let subjects = binding["subjects"].as_array().cloned().unwrap_or_default();
        if !subjects.iter().any(|s| subject_is(s, binding_namespace, sa_namespace, sa_name)) {
            continue;
        }
        let role_name = binding["roleRef"]["name"].as_str().unwrap_or_default();
        let role = match binding["roleRef"]["kind"].as_str() {
            Some("ClusterRole") => r.find("ClusterRole", None, role_name),
            Some("Role") => r.find("Role", binding_namespace, role_name),
            _ => None,
        };
        // A dangling roleRef grants nothing; `every_binding_resolves` reports it.
        let Some(role) = role else { continue };
        let scope = match (binding["kind"].as_str(), binding_namespace) {
            (Some("RoleBinding"), Some(ns)) => Scope::Namespace(ns.to_string()),
            _ => Scope::Cluster,
        };
        for rule in role["rules"].as_array().into_iter().flatten() {
            rules.push((scope.clone(), rule.clone()));
        }
    }
    Grants { rules }
}

impl Grants {
    fn allows(&self, req: Request) -> bool {
        self.rules.iter().any(|(scope, rule)| {
            let scope_ok = match scope {
                Scope::Cluster => true,
                Scope::Namespace(ns) => req.namespace == Some(ns.as_str()),
            };
            scope_ok && rule_allows(rule, &req)
        })
    }

    /// Every (scope, verb, group/resource, names) the rules grant, one line each, for comparing
    /// against the complete list a component is meant to have.
    fn lines(&self) -> BTreeSet<String> {
        let mut lines = BTreeSet::new();
        for (scope, rule) in &self.rules {
            let scope = match scope {
                Scope::Cluster => "cluster".to_string(),
                Scope::Namespace(ns) => format!("ns {ns}"),
            };
            let names = strings(&rule["resourceNames"]);
            let names = if names.is_empty() { String::new() } else { format!(" [{}]", names.join(",")) };
            for group in strings(&rule["apiGroups"]) {
                let group = if group.is_empty() { "core" } else { group };
                for resource in strings(&rule["resources"]) {
                    for verb in strings(&rule["verbs"]) {
                        lines.insert(format!("{scope}: {verb} {group}/{resource}{names}"));
                    }
                }
            }
        }
        lines
    }
}

/// `allows(sa, verb, group, resource)`: whether the ServiceAccount (in devheal-system) may do
/// this everywhere: in every namespace and for every name (so only through a ClusterRoleBinding
/// and a rule without resourceNames). `resource` may name a subresource (`pods/eviction`).
fn allows(r: &Rendered, sa: &str, verb: &str, group: &str, resource: &str) -> bool {
    grants(r, NAMESPACE, sa).allows(Request::new(verb, group, resource))
}

/// (verb, API group, resource[/subresource], allowed cluster-wide)
type Expectation = (&'static str, &'static str, &'static str, bool);

const AGENT_EXPECTATIONS: &[Expectation] = &[
    // What it needs.
    ("get", "", "pods", true),
    ("list", "", "pods", true),
    ("watch", "", "pods", true),
    ("get", "", "nodes", true),
    ("patch", "", "nodes/status", true),
    ("create", "devheal.io", "nodedevicehealths", true),
    ("patch", "devheal.io", "nodedevicehealths", true),
    ("get", "devheal.io", "nodedevicehealths/status", true),
    ("patch", "devheal.io", "nodedevicehealths/status", true),
    ("update", "devheal.io", "nodedevicehealths/status", true),
    ("create", "events.k8s.io", "events", true),
    // Who sent a progress report with a token (host-network pods): TokenReview.
    ("create", "authentication.k8s.io", "tokenreviews", true),
    // Which DRA device is which GPU: its node's ResourceSlices, read only.
    ("list", "resource.k8s.io", "resourceslices", true),
    ("create", "resource.k8s.io", "resourceslices", false),
    ("update", "resource.k8s.io", "resourceslices", false),
    ("delete", "resource.k8s.io", "resourceslices", false),
    // Core-group events: nothing writes them.
    ("create", "", "events", false),
    // Acting is the controller's.
    ("create", "", "pods/eviction", false),
    ("delete", "", "pods", false),
    ("deletecollection", "", "pods", false),
    ("create", "", "pods", false),
    ("patch", "", "pods", false),
    ("patch", "", "pods/status", false),
    ("patch", "", "nodes", false),
    ("update", "", "nodes", false),
    ("delete", "", "nodes", false),
    ("create", "resource.k8s.io", "devicetaintrules", false),
    ("update", "resource.k8s.io", "devicetaintrules", false),
    ("patch", "resource.k8s.io", "devicetaintrules", false),
    ("delete", "resource.k8s.io", "devicetaintrules", false),
    ("delete", "devheal.io", "nodedevicehealths", false),
    ("deletecollection", "devheal.io", "nodedevicehealths", false),
    ("patch", "devheal.io", "failurepolicies", false),
    ("get", "", "secrets", false),
    ("list", "", "secrets", false),
    ("watch", "", "secrets", false),
    ("create", "", "serviceaccounts/token", false),
    ("create", "", "pods/exec", false),
    ("update", "coordination.k8s.io", "leases", false),
];

const CONTROLLER_EXPECTATIONS: &[Expectation] = &[
    ("list", "", "pods", true),
    ("watch", "", "pods", true),
    ("list", "", "nodes", true),
    ("watch", "devheal.io", "nodedevicehealths", true),
    // Device resets asked of an agent: spec.resetRequests, never the agent's status.
    ("patch", "devheal.io", "nodedevicehealths", true),
    ("watch", "devheal.io", "failurepolicies", true),
    ("create", "", "pods/eviction", true),
    ("delete", "", "pods", true),
    ("patch", "", "pods/status", true),
    ("patch", "", "nodes", true),
    ("patch", "", "nodes/status", true),
    ("patch", "devheal.io", "failurepolicies/status", true),
    ("update", "devheal.io", "failurepolicies/status", true),
    ("create", "events.k8s.io", "events", true),
    ("create", "", "events", false),
    ("list", "resource.k8s.io", "resourceslices", true),
    ("get", "resource.k8s.io", "deviceclasses", true),
    ("create", "resource.k8s.io", "devicetaintrules", true),
    ("update", "resource.k8s.io", "devicetaintrules", true),
    ("patch", "resource.k8s.io", "devicetaintrules", true),
    ("delete", "resource.k8s.io", "devicetaintrules", true),
    // Not its business, or not needed.
    ("get", "", "secrets", false),
    ("list", "", "secrets", false),
    ("deletecollection", "", "pods", false),
    ("create", "", "pods", false),
    ("patch", "", "pods", false),
    ("delete", "", "nodes", false),
    ("update", "", "nodes", false),
    ("create", "devheal.io", "nodedevicehealths", false),
    ("patch", "devheal.io", "nodedevicehealths/status", false),
    ("patch", "devheal.io", "failurepolicies", false),
    ("create", "", "serviceaccounts/token", false),
    // FailWorkload goes through pod conditions and the workload's own failure policy.
    ("patch", "batch", "jobs", false),
    ("update", "batch", "jobs", false),
    ("patch", "jobset.x-k8s.io", "jobsets", false),
    ("update", "jobset.x-k8s.io", "jobsets", false),
    // The lease is namespaced and named: not cluster-wide (checked in detail below).
    ("get", "coordination.k8s.io", "leases", false),
    ("update", "coordination.k8s.io", "leases", false),
    ("create", "coordination.k8s.io", "leases", false),
];

/// The complete grants, as `Grants::lines` prints them: anything added or removed must be
/// added or removed here, deliberately.
const AGENT_GRANTS: &[&str] = &[
    "cluster: get core/pods",
    "cluster: list core/pods",
    "cluster: watch core/pods",
    "cluster: get core/nodes",
    "cluster: patch core/nodes/status",
    "cluster: get devheal.io/nodedevicehealths",
    "cluster: list devheal.io/nodedevicehealths",
    "cluster: watch devheal.io/nodedevicehealths",
    "cluster: create devheal.io/nodedevicehealths",
    "cluster: patch devheal.io/nodedevicehealths",
    "cluster: update devheal.io/nodedevicehealths",
    "cluster: get devheal.io/nodedevicehealths/status",
    "cluster: patch devheal.io/nodedevicehealths/status",
    "cluster: update devheal.io/nodedevicehealths/status",
    "cluster: create events.k8s.io/events",
    "cluster: patch events.k8s.io/events",
    "cluster: create authentication.k8s.io/tokenreviews",
    "cluster: list resource.k8s.io/resourceslices",
];

const CONTROLLER_GRANTS: &[&str] = &[
    "cluster: get core/pods",
    "cluster: list core/pods",
    "cluster: watch core/pods",
    "cluster: delete core/pods",
    "cluster: create core/pods/eviction",
    "cluster: patch core/pods/status",
    "cluster: get core/nodes",
    "cluster: list core/nodes",
    "cluster: watch core/nodes",
    "cluster: patch core/nodes",
    "cluster: patch core/nodes/status",
    "cluster: get devheal.io/nodedevicehealths",
    "cluster: list devheal.io/nodedevicehealths",
    "cluster: watch devheal.io/nodedevicehealths",
    "cluster: patch devheal.io/nodedevicehealths",
    "cluster: get devheal.io/failurepolicies",
    "cluster: list devheal.io/failurepolicies",
    "cluster: watch devheal.io/failurepolicies",
    "cluster: update devheal.io/failurepolicies/status",
    "cluster: patch devheal.io/failurepolicies/status",
    "cluster: get devheal.io/upgradeplans",
    "cluster: list devheal.io/upgradeplans",
    "cluster: patch devheal.io/upgradeplans/status",
    "cluster: get apps/daemonsets",
    "cluster: patch apps/daemonsets",
    "cluster: get apps/controllerrevisions",
    "cluster: list apps/controllerrevisions",
    "cluster: create events.k8s.io/events",
    "cluster: patch events.k8s.io/events",
    "cluster: get resource.k8s.io/deviceclasses",
    "cluster: list resource.k8s.io/deviceclasses",
    "cluster: watch resource.k8s.io/deviceclasses",
    "cluster: get resource.k8s.io/resourceslices",
    "cluster: list resource.k8s.io/resourceslices",
    "cluster: watch resource.k8s.io/resourceslices",
    "cluster: get resource.k8s.io/devicetaintrules",
    "cluster: list resource.k8s.io/devicetaintrules",
    "cluster: watch resource.k8s.io/devicetaintrules",
    "cluster: create resource.k8s.io/devicetaintrules",
    "cluster: update resource.k8s.io/devicetaintrules",
    "cluster: patch resource.k8s.io/devicetaintrules",
    "cluster: delete resource.k8s.io/devicetaintrules",
    "ns devheal-system: create coordination.k8s.io/leases",
    "ns devheal-system: get coordination.k8s.io/leases [devheal-controller]",
    "ns devheal-system: update coordination.k8s.io/leases [devheal-controller]",
    "ns devheal-system: patch coordination.k8s.io/leases [devheal-controller]",
    "ns devheal-system: create core/configmaps",
    "ns devheal-system: get core/configmaps [devheal-controller-state]",
    "ns devheal-system: patch core/configmaps [devheal-controller-state]",
];

/// Everything wrong with the RBAC in a render, one line each (empty when it is right).
fn rbac_violations(r: &Rendered) -> Vec<String> {
    let mut out = Vec::new();
    for (sa, expectations) in [(AGENT, AGENT_EXPECTATIONS), (CONTROLLER, CONTROLLER_EXPECTATIONS)] {
        for &(verb, group, resource, expected) in expectations {
            if allows(r, sa, verb, group, resource) != expected {
                let group = if group.is_empty() { "core" } else { group };
                let may = if expected { "should be able to" } else { "must not be able to" };
                out.push(format!("{sa} {may} {verb} {group}/{resource}"));
            }
        }
    }
    for (sa, expected) in [(AGENT, AGENT_GRANTS), (CONTROLLER, CONTROLLER_GRANTS)] {
        let actual = grants(r, NAMESPACE, sa).lines();
        let expected: BTreeSet<String> = expected.iter().map(|s| s.to_string()).collect();
        for extra in actual.difference(&expected) {
            out.push(format!("{sa} is granted `{extra}`, which is not in its list of grants"));
        }
        for missing in expected.difference(&actual) {
            out.push(format!("{sa} lacks `{missing}`"));
        }
    }
    for role in r.of_kind("ClusterRole").chain(r.of_kind("Role")) {
        let name = role["metadata"]["name"].as_str().unwrap_or_default();
        if !role["aggregationRule"].is_null() {
            out.push(format!("{name} aggregates other roles: its permissions cannot be checked here"));
        }
        let labels = role["metadata"]["labels"].as_object().cloned().unwrap_or_default();
        for label in labels.keys().filter(|l| l.starts_with("rbac.authorization.k8s.io/aggregate-to-")) {
            out.push(format!("{name} has {label}: it would widen the cluster's built-in roles"));
        }
        for rule in role["rules"].as_array().into_iter().flatten() {
            for field in ["verbs", "apiGroups", "resources", "resourceNames"] {
                if strings(&rule[field]).iter().any(|s| s.contains('*')) {
                    out.push(format!("{name} uses a wildcard in {field}: {rule}"));
                }
            }
            if !rule["nonResourceURLs"].is_null() {
                out.push(format!("{name} grants non-resource URLs: {rule}"));
            }
        }
    }
    out
}

/// What `kubectl devheal` reads, each as `<scope>: <verb> <group>/<resource> [names]`.
const VIEWER_GRANTS: &[&str] = &[
    "cluster: get devheal.io/nodedevicehealths",
    "cluster: list devheal.io/nodedevicehealths",
    "cluster: watch devheal.io/nodedevicehealths",
    "cluster: get devheal.io/failurepolicies",
    "cluster: list devheal.io/failurepolicies",
    "cluster: watch devheal.io/failurepolicies",
    "cluster: get devheal.io/upgradeplans",
    "cluster: list devheal.io/upgradeplans",
    "cluster: watch devheal.io/upgradeplans",
    "cluster: get core/nodes",
    "cluster: list core/nodes",
    "cluster: watch core/nodes",
    "cluster: get core/pods",
    "cluster: list core/pods",
    "cluster: watch core/pods",
    "cluster: get events.k8s.io/events",
    "cluster: list events.k8s.io/events",
    "cluster: watch events.k8s.io/events",
    "cluster: get resource.k8s.io/devicetaintrules",
    "cluster: list resource.k8s.io/devicetaintrules",
    "cluster: watch resource.k8s.io/devicetaintrules",
    "ns devheal-system: get coordination.k8s.io/leases [devheal-controller]",
    "ns devheal-system: get core/configmaps [devheal-controller-state]",
];

/// The grants of the viewer roles (ClusterRole and Role `devheal-viewer`), one line each.
fn viewer_grants(r: &Rendered) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (kind, namespace) in [("ClusterRole", None), ("Role", Some(NAMESPACE))] {
        let role = r.get(kind, namespace, "devheal-viewer");
        let scope = namespace.map(|n| format!("ns {n}")).unwrap_or_else(|| "cluster".into());
        for rule in role["rules"].as_array().into_iter().flatten() {
            let names = strings(&rule["resourceNames"]);
            let names = if names.is_empty() { String::new() } else { format!(" [{}]", names.join(",")) };
            for group in strings(&rule["apiGroups"]) {
                let group = if group.is_empty() { "core" } else { group };
                for resource in strings(&rule["resources"]) {
                    for verb in strings(&rule["verbs"]) {
                        out.insert(format!("{scope}: {verb} {group}/{resource}{names}"));
                    }
                }
            }
        }
    }
    out
}

/// The roles for `kubectl devheal` users only read, and only what the plugin reads (the
/// plugin's end-to-end test runs as a user bound to them alone, which shows they suffice).
#[test]
fn the_viewer_roles_only_read_what_the_plugin_reads() {
    let actual = viewer_grants(base());
    let expected: BTreeSet<String> = VIEWER_GRANTS.iter().map(|s| s.to_string()).collect();
    assert_eq!(actual, expected);
    for line in &actual {
        let verb = line.split(": ").nth(1).and_then(|v| v.split(' ').next()).unwrap_or_default();
        assert!(["get", "list", "watch"].contains(&verb), "the viewer may only read: {line}");
    }
    for binding in base().of_kind("ClusterRoleBinding").chain(base().of_kind("RoleBinding")) {
        assert_ne!(
            binding["roleRef"]["name"], "devheal-viewer",
            "the viewer roles are bound by the user: {binding}"
        );
    }
}

#[test]
fn rbac_splits_reporting_from_acting() {
    let violations = rbac_violations(base());
    assert!(violations.is_empty(), "deploy/base RBAC:\n  {}", violations.join("\n  "));
}

#[test]
fn the_controller_lease_is_granted_in_devheal_system_only() {
    let g = grants(base(), NAMESPACE, CONTROLLER);
    let lease = |verb| Request::new(verb, "coordination.k8s.io", "leases");
    for verb in ["get", "update"] {
        assert!(g.allows(lease(verb).in_namespace(NAMESPACE).named(LEASE)), "{verb} its lease");
        assert!(
            !g.allows(lease(verb).in_namespace(NAMESPACE).named("kube-scheduler")),
            "{verb} another lease"
        );
        assert!(!g.allows(lease(verb).in_namespace("kube-system").named(LEASE)), "{verb} in kube-system");
        assert!(!g.allows(lease(verb)), "{verb} leases cluster-wide");
    }
    assert!(g.allows(lease("create").in_namespace(NAMESPACE)), "create its lease");
    assert!(!g.allows(lease("create").in_namespace("kube-system")), "create a lease in kube-system");
    assert!(!g.allows(lease("list").in_namespace(NAMESPACE)), "list leases");
    assert!(!g.allows(lease("delete").in_namespace(NAMESPACE).named(LEASE)), "delete its lease");
    // The agent has nothing to do with it.
    let agent = grants(base(), NAMESPACE, AGENT);
    assert!(!agent.allows(lease("update").in_namespace(NAMESPACE).named(LEASE)));

    // The lease the controller is told to use is the one it is granted.
    let args = container_args(controller_container(base()));
    assert_eq!(flag_value(&args, "--lease-namespace"), Some(NAMESPACE), "controller args {args:?}");
    assert_eq!(flag_value(&args, "--lease-name"), Some(LEASE), "controller args {args:?}");
}

#[test]
fn every_binding_resolves_to_a_role_and_existing_service_accounts() {
    let r = base();
    for binding in r.of_kind("ClusterRoleBinding").chain(r.of_kind("RoleBinding")) {
        let name = &binding["metadata"]["name"];
        let role_name = binding["roleRef"]["name"].as_str().unwrap_or_default();
        let found = match binding["roleRef"]["kind"].as_str() {
            Some("ClusterRole") => r.find("ClusterRole", None, role_name).is_some(),
            Some("Role") => r.find("Role", namespace_of(binding), role_name).is_some(),
            other => panic!("binding {name}: roleRef kind {other:?}"),
        };
        assert!(found, "binding {name} refers to a role the render does not have: {role_name}");
        for subject in binding["subjects"].as_array().into_iter().flatten() {
            assert_eq!(
                subject["kind"], "ServiceAccount",
                "binding {name}: only devheal's own service accounts"
            );
            let sa = subject["name"].as_str().unwrap_or_default();
            let ns = subject["namespace"].as_str().or(namespace_of(binding));
            assert!(
                r.find("ServiceAccount", ns, sa).is_some(),
                "binding {name}: no ServiceAccount {ns:?}/{sa}"
            );
        }
    }
}

/// The checks above must be able to fail: a render with the agent given eviction, or a
/// wildcard, is reported.
#[test]
fn rbac_checks_catch_an_agent_that_can_act() {
    let mut r = base().clone();
    let role = r.get_mut("ClusterRole", None, AGENT);
    let rules = role["rules"].as_array_mut().expect("rules");
    rules.push(json!({"apiGroups": [""], "resources": ["pods/eviction"], "verbs": ["create"]}));
    let violations = rbac_violations(&r);
    assert!(
        violations.iter().any(|v| v == "devheal-agent must not be able to create core/pods/eviction"),
        "{violations:#?}"
    );
    assert!(violations.iter().any(|v| v.contains("`cluster: create core/pods/eviction`")), "{violations:#?}");

    let mut r = base().clone();
    let role = r.get_mut("ClusterRole", None, AGENT);
    let rules = role["rules"].as_array_mut().expect("rules");
    rules.push(json!({"apiGroups": ["*"], "resources": ["*/status"], "verbs": ["*"]}));
    let violations = rbac_violations(&r);
    assert!(violations.iter().any(|v| v.starts_with("devheal-agent uses a wildcard")), "{violations:#?}");
    assert!(
        violations.iter().any(|v| v == "devheal-agent must not be able to patch core/pods/status"),
        "{violations:#?}"
    );
}

#[test]
fn rbac_matching_honours_wildcards_subresources_names_and_namespaces() {
    let r = Rendered::parse(
        "synthetic",
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: status-writer}
rules:
  - {apiGroups: ["*"], resources: ["*/status"], verbs: [patch]}
  - {apiGroups: [""], resources: [configmaps], resourceNames: [one], verbs: ["*"]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: status-writer}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: status-writer}
subjects: [{kind: Group, name: "system:serviceaccounts:devheal-system"}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: everything, namespace: scratch}
rules:
  - {apiGroups: ["*"], resources: ["*"], verbs: ["*"]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: everything, namespace: scratch}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: everything}
subjects: [{kind: ServiceAccount, name: devheal-agent, namespace: devheal-system}]
"#,
    );
    let agent = grants(&r, NAMESPACE, AGENT);
    let other_sa = grants(&r, "elsewhere", AGENT);
    assert!(allows(&r, AGENT, "patch", "", "nodes/status"));
    assert!(allows(&r, AGENT, "patch", "devheal.io", "nodedevicehealths/status"));
    assert!(!allows(&r, AGENT, "patch", "", "nodes"), "*/status is not the resource itself");
    assert!(!allows(&r, AGENT, "update", "", "nodes/status"));
    assert!(!other_sa.allows(Request::new("patch", "", "nodes/status")), "the group is per namespace");
    assert!(!allows(&r, AGENT, "get", "", "configmaps"), "resourceNames: not every name");
    assert!(agent.allows(Request::new("delete", "", "configmaps").in_namespace("x").named("one")));
    assert!(!agent.allows(Request::new("delete", "", "configmaps").in_namespace("x").named("two")));
    assert!(agent.allows(Request::new("create", "", "pods/eviction").in_namespace("scratch")));
    assert!(!agent.allows(Request::new("create", "", "pods/eviction").in_namespace("other")));
    assert!(!allows(&r, AGENT, "create", "", "pods/eviction"), "a RoleBinding is not cluster-wide");
    let violations = rbac_violations(&r);
    assert!(
        violations.iter().any(|v| v.starts_with("everything uses a wildcard in verbs")),
        "{violations:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// The admission policy

#[test]
fn an_admission_policy_keeps_the_agent_to_its_own_node() {
    let r = base();
    let sa = agent_pod_spec(r)["serviceAccountName"].as_str().expect("the agent names its ServiceAccount");
    assert_eq!(sa, AGENT);
    let username = format!("system:serviceaccount:{NAMESPACE}:{sa}");

    let applies_to_agent = |policy: &Value| {
        let conditions = policy["spec"]["matchConditions"].as_array().into_iter().flatten();
        conditions.filter_map(|c| c["expression"].as_str()).any(|e| e.contains(&format!("'{username}'")))
    };
    let policies: Vec<&Value> = r
        .of_kind("ValidatingAdmissionPolicy")
        .filter(|p| p["apiVersion"] == "admissionregistration.k8s.io/v1" && applies_to_agent(p))
        .collect();
    assert_eq!(
        policies.len(),
        1,
        "one ValidatingAdmissionPolicy (admissionregistration.k8s.io/v1) matches {username}"
    );
    let policy = policies[0];
    let spec = &policy["spec"];
    assert_eq!(spec["failurePolicy"], "Fail", "a policy that cannot be evaluated must refuse, not allow");

    // It matches every write to NodeDeviceHealth, status included.
    let rules = spec["matchConstraints"]["resourceRules"].as_array().expect("resourceRules");
    for resource in ["nodedevicehealths", "nodedevicehealths/status"] {
        for operation in ["CREATE", "UPDATE", "DELETE"] {
            let covered = rules.iter().any(|rule| {
                strings(&rule["apiGroups"]).contains(&"devheal.io")
                    && strings(&rule["resources"]).contains(&resource)
                    && strings(&rule["operations"]).contains(&operation)
            });
            assert!(covered, "the policy does not match {operation} on devheal.io {resource}");
        }
    }
    let node_status = rules.iter().any(|rule| {
        strings(&rule["apiGroups"]).contains(&"")
            && strings(&rule["resources"]).contains(&"nodes/status")
            && strings(&rule["operations"]).contains(&"UPDATE")
    });
    assert!(node_status, "the policy does not match the agent's Node status writes");

    // The node comes from the token's claim and is compared with the object's name, old and new.
    let cel: Vec<&str> = spec["variables"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(spec["validations"].as_array().into_iter().flatten())
        .filter_map(|v| v["expression"].as_str())
        .collect();
    let all = cel.join("\n");
    assert!(
        all.contains(&format!("request.userInfo.extra['{NODE_NAME_CLAIM}']")),
        "the node-name claim:\n{all}"
    );
    assert!(all.contains("object.metadata.name"), "compares the new object's name:\n{all}");
    assert!(
        all.contains("oldObject.metadata.name"),
        "compares the old object's name (UPDATE, DELETE):\n{all}"
    );
    // A CREATE has no oldObject and a DELETE no object: each is read only where it exists.
    let guarded = all.contains("request.operation == 'DELETE' || object.metadata.name")
        && all.contains("request.operation == 'CREATE' || oldObject.metadata.name");
    assert!(guarded, "object is read on DELETE or oldObject on CREATE:\n{all}");
    for validation in spec["validations"].as_array().into_iter().flatten() {
        assert_eq!(validation["reason"], "Forbidden", "{validation}");
    }

    // And it is bound, denying.
    let name = policy["metadata"]["name"].as_str().expect("policy name");
    let binding = r
        .of_kind("ValidatingAdmissionPolicyBinding")
        .find(|b| b["spec"]["policyName"] == name)
        .unwrap_or_else(|| panic!("no ValidatingAdmissionPolicyBinding for {name}"));
    assert!(strings(&binding["spec"]["validationActions"]).contains(&"Deny"), "{binding}");
    assert!(binding["spec"]["matchResources"].is_null(), "the binding narrows nothing: {binding}");
}

// ---------------------------------------------------------------------------------------------
// The workloads

fn agent_pod_spec(r: &Rendered) -> &Value {
    &r.get("DaemonSet", Some(NAMESPACE), AGENT)["spec"]["template"]["spec"]
}

fn controller_pod_spec(r: &Rendered) -> &Value {
    &r.get("Deployment", Some(NAMESPACE), CONTROLLER)["spec"]["template"]["spec"]
}

fn only_container(pod_spec: &Value) -> &Value {
    let containers = pod_spec["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1, "one container: {pod_spec}");
    assert!(pod_spec["initContainers"].is_null(), "no init containers");
    &containers[0]
}

fn agent_container(r: &Rendered) -> &Value {
    only_container(agent_pod_spec(r))
}

fn controller_container(r: &Rendered) -> &Value {
    only_container(controller_pod_spec(r))
}

fn container_args(container: &Value) -> Vec<&str> {
    assert!(container["command"].is_null(), "the image's entrypoint is `devheal`; args carry the rest");
    strings(&container["args"])
}

fn flag_value<'a>(args: &[&'a str], flag: &str) -> Option<&'a str> {
    args.iter().position(|a| *a == flag).and_then(|i| args.get(i + 1)).copied()
}

fn env_field_ref<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    container["env"].as_array()?.iter().find(|e| e["name"] == name)?["valueFrom"]["fieldRef"]["fieldPath"]
        .as_str()
}

fn port_named<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    container["ports"].as_array()?.iter().find(|p| p["name"] == name)
}

#[test]
fn the_agent_runs_with_only_what_it_needs() {
    let r = base();
    let pod = agent_pod_spec(r);
    let container = agent_container(r);
    let sc = &container["securityContext"];
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"], "{sc}");
    assert_eq!(strings(&sc["capabilities"]["add"]), ["SYSLOG"], "{sc}");
    assert_eq!(sc["readOnlyRootFilesystem"], true, "{sc}");
    assert_eq!(sc["allowPrivilegeEscalation"], false, "{sc}");
    assert_ne!(sc["privileged"], true, "{sc}");
    assert_eq!(sc["runAsUser"], 0, "root, for the kubelet's root-owned 0600 sockets: {sc}");
    assert!(pod["hostNetwork"].is_null() && pod["hostPID"].is_null() && pod["hostIPC"].is_null(), "{pod}");

    assert_eq!(pod["serviceAccountName"], AGENT);
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    let tolerates_all = pod["tolerations"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|t| t["operator"] == "Exists" && t["key"].is_null() && t["effect"].is_null());
    assert!(tolerates_all, "the agent tolerates every taint (it must run on tainted GPU nodes)");

    let args = container_args(container);
    assert_eq!(args.first(), Some(&"agent"), "{args:?}");
    assert_eq!(flag_value(&args, "--node"), Some("$(NODE_NAME)"), "{args:?}");
    assert_eq!(env_field_ref(container, "NODE_NAME"), Some("spec.nodeName"));
    assert_eq!(flag_value(&args, "--metrics-addr"), Some("0.0.0.0:9101"), "{args:?}");
    assert_eq!(flag_value(&args, "--progress-addr"), Some("0.0.0.0:9102"), "{args:?}");
    assert!(!args.contains(&"--fake-devices"), "fake devices are for scripts/e2e-kind.sh only");

    let metrics = port_named(container, "metrics").expect("a port named metrics");
    assert_eq!(metrics["containerPort"], 9101);
    assert!(metrics["hostPort"].is_null(), "/metrics is not published on the node's IP: {metrics}");
    let progress = port_named(container, "progress").expect("a port named progress");
    assert_eq!(progress["containerPort"], 9102);
    assert_eq!(progress["hostPort"], 9102, "pods post progress to the agent on their node's IP");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["resources"]["limits"]["memory"], "256Mi");
    assert!(container["resources"]["requests"]["cpu"].is_string(), "requests set");

    // Host paths: each mounted read-only, and the NVML library flag points into the driver mount.
    let volumes = pod["volumes"].as_array().expect("volumes");
    let host_path = |path: &str| volumes.iter().find(|v| v["hostPath"]["path"] == path);
    let kmsg = host_path("/dev/kmsg").expect("/dev/kmsg");
    assert_eq!(kmsg["hostPath"]["type"], "CharDevice");
    assert!(host_path("/var/lib/kubelet/pod-resources").is_some(), "the PodResources socket's directory");
    assert!(
        host_path("/var/lib/kubelet/device-plugins").is_none(),
        "no device plugins' directory: the agent opens no plugin socket"
    );
    for mount in container["volumeMounts"].as_array().expect("volumeMounts") {
        assert_eq!(mount["readOnly"], true, "host mounts are read-only in the base: {mount}");
    }
    let nvml = flag_value(&args, "--nvml-library").expect("--nvml-library");
    let mounted = container["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["mountPath"].as_str())
        .any(|p| nvml.starts_with(&format!("{p}/")));
    assert!(mounted, "--nvml-library {nvml} is not inside a mounted directory");
}

#[test]
fn the_controller_is_leader_elected_non_root_and_not_in_dry_run() {
    let r = base();
    let deployment = r.get("Deployment", Some(NAMESPACE), CONTROLLER);
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pod = controller_pod_spec(r);
    let container = controller_container(r);
    assert_eq!(pod["serviceAccountName"], CONTROLLER);
    let run_as_non_root = pod["securityContext"]["runAsNonRoot"] == true
        || container["securityContext"]["runAsNonRoot"] == true;
    assert!(run_as_non_root, "the controller runs as non-root");
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    let sc = &container["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true, "{sc}");
    assert_eq!(sc["allowPrivilegeEscalation"], false, "{sc}");
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"], "{sc}");
    assert!(sc["capabilities"]["add"].is_null(), "{sc}");
    // Only its settings file, from the ConfigMap devheal-settings: the whole directory, so that
    // the kubelet swaps in a changed ConfigMap (a subPath mount would never change).
    let volumes = pod["volumes"].as_array().expect("the settings volume");
    assert!(volumes.iter().all(|v| v["hostPath"].is_null()), "the controller mounts nothing from the host");
    let config_maps: Vec<_> = volumes.iter().map(|v| v["configMap"]["name"].as_str()).collect();
    assert_eq!(config_maps, [Some("devheal-settings")]);
    let mount = &container["volumeMounts"][0];
    assert_eq!((mount["mountPath"].as_str(), mount.get("subPath")), (Some("/etc/devheal"), None));
    assert_eq!(mount["readOnly"], true);
    let settings = r.get("ConfigMap", Some("devheal-system"), "devheal-settings");
    assert!(settings["data"]["settings.yaml"].is_string(), "{settings}");

    let args = container_args(container);
    assert_eq!(flag_value(&args, "--settings"), Some("/etc/devheal/settings.yaml"), "{args:?}");
    assert_eq!(args.first(), Some(&"controller"), "{args:?}");
    assert_eq!(flag_value(&args, "--metrics-addr"), Some("0.0.0.0:9100"), "{args:?}");
    assert!(!args.contains(&"--dry-run"), "the base acts; the dry-run overlay does not: {args:?}");
    assert_eq!(env_field_ref(container, "POD_NAME"), Some("metadata.name"), "the lease identity");
    assert_eq!(port_named(container, "metrics").expect("metrics port")["containerPort"], 9100);
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["port"], "metrics");

    let spread = pod["topologySpreadConstraints"].as_array().into_iter().flatten();
    let anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| &t["podAffinityTerm"]);
    assert!(
        spread.chain(anti).any(|c| c["topologyKey"] == "kubernetes.io/hostname"),
        "the replicas are spread across nodes"
    );

    let pdb = r.get("PodDisruptionBudget", Some(NAMESPACE), CONTROLLER);
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"], deployment["spec"]["selector"]["matchLabels"],
        "the PodDisruptionBudget selects the controller's pods"
    );
}

#[test]
fn metrics_services_select_the_workloads_ports() {
    let r = base();
    for (service, workload, kind, port) in [
        ("devheal-agent-metrics", AGENT, "DaemonSet", 9101),
        ("devheal-controller-metrics", CONTROLLER, "Deployment", 9100),
    ] {
        let svc = r.get("Service", Some(NAMESPACE), service);
        let labels = &r.get(kind, Some(NAMESPACE), workload)["spec"]["template"]["metadata"]["labels"];
        for (key, value) in svc["spec"]["selector"].as_object().expect("selector") {
            assert_eq!(&labels[key], value, "{service} selects {key}={value}, which {workload}'s pods lack");
        }
        assert_eq!(svc["spec"]["ports"][0]["port"], port);
        assert_eq!(svc["spec"]["ports"][0]["targetPort"], "metrics");
    }
}

#[test]
fn namespaced_objects_are_in_devheal_system() {
    let r = base();
    assert!(r.find("Namespace", None, NAMESPACE).is_some(), "the render creates {NAMESPACE}");
    let cluster_scoped = [
        "Namespace",
        "CustomResourceDefinition",
        "ClusterRole",
        "ClusterRoleBinding",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ];
    for object in &r.objects {
        let kind = object["kind"].as_str().unwrap_or_default();
        let name = &object["metadata"]["name"];
        if cluster_scoped.contains(&kind) {
            assert!(namespace_of(object).is_none(), "{kind} {name} is cluster-scoped");
        } else {
            assert_eq!(namespace_of(object), Some(NAMESPACE), "{kind} {name}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The overlays

/// The render with the one container's args and securityContext taken out, for comparing
/// overlays with the base.
fn without(r: &Rendered, kind: &str, name: &str, field: &str) -> Vec<Value> {
    let mut r = r.clone();
    let container = &mut r.get_mut(kind, Some(NAMESPACE), name)["spec"]["template"]["spec"]["containers"][0];
    container.as_object_mut().expect("container").remove(field);
    r.objects
}

#[test]
fn the_dry_run_overlay_only_adds_dry_run() {
    let args = container_args(controller_container(dry_run()));
    assert!(args.contains(&"--dry-run"), "deploy/overlays/dry-run: controller args {args:?}");
    let base_args = container_args(controller_container(base()));
    let mut expected = base_args.clone();
    expected.push("--dry-run");
    assert_eq!(args, expected, "the overlay appends --dry-run and changes no other argument");
    assert!(
        without(dry_run(), "Deployment", CONTROLLER, "args")
            == without(base(), "Deployment", CONTROLLER, "args"),
        "deploy/overlays/dry-run changes something besides the controller's args"
    );
}

#[test]
fn the_privileged_agent_overlay_only_makes_the_agent_privileged() {
    let sc = &agent_container(privileged_agent())["securityContext"];
    assert_eq!(sc["privileged"], true, "{sc}");
    assert_eq!(sc["allowPrivilegeEscalation"], true, "the API server refuses privileged without it: {sc}");
    assert!(
        without(privileged_agent(), "DaemonSet", AGENT, "securityContext")
            == without(base(), "DaemonSet", AGENT, "securityContext"),
        "deploy/overlays/privileged-agent changes something besides the agent's securityContext"
    );
}

// ---------------------------------------------------------------------------------------------
// CRDs and the image

#[test]
fn every_crd_in_deploy_crds_is_in_the_render_unchanged() {
    let path = repo_root().join("deploy/crds/devheal.io.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let crds: Vec<Value> = serde_saphyr::from_multiple(&text).expect("deploy/crds/devheal.io.yaml parses");
    assert!(crds.len() >= 2, "NodeDeviceHealth and FailurePolicy");
    for render in [base(), dry_run(), privileged_agent()] {
        for crd in &crds {
            let name = crd["metadata"]["name"].as_str().expect("CRD name");
            let rendered = render.get("CustomResourceDefinition", None, name);
            assert!(
                same_numbers(rendered) == same_numbers(crd),
                "{}: CRD {name} differs from deploy/crds/devheal.io.yaml",
                render.dir
            );
        }
        assert_eq!(render.of_kind("CustomResourceDefinition").count(), crds.len(), "{}", render.dir);
    }
}

/// The value with every number as a float: kustomize re-prints `minimum: 1.0` as `minimum: 1`,
/// the same number to the API server.
fn same_numbers(value: &Value) -> Value {
    match value {
        Value::Number(n) => n.as_f64().map(Value::from).unwrap_or(Value::Null),
        Value::Array(items) => Value::Array(items.iter().map(same_numbers).collect()),
        Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), same_numbers(v))).collect()),
        other => other.clone(),
    }
}

/// `ARG NAME=value` lines in the Dockerfile; a name declared in several stages must agree.
fn dockerfile_arg(dockerfile: &str, name: &str) -> String {
    let values: BTreeSet<&str> = dockerfile
        .lines()
        .filter_map(|l| l.trim().strip_prefix("ARG ")?.trim().strip_prefix(name)?.strip_prefix('='))
        .map(|v| v.trim().trim_matches('"'))
        .collect();
    assert_eq!(values.len(), 1, "Dockerfile: ARG {name} has one default value, found {values:?}");
    values.into_iter().next().unwrap_or_default().to_string()
}

#[test]
fn the_manifests_run_the_image_the_dockerfile_builds() {
    let dockerfile = std::fs::read_to_string(repo_root().join("Dockerfile")).expect("the Dockerfile");
    let version = dockerfile_arg(&dockerfile, "DEVHEAL_VERSION");
    assert_eq!(version, env!("CARGO_PKG_VERSION"), "the image's version is the workspace's");
    let image = format!("{}:{version}", dockerfile_arg(&dockerfile, "DEVHEAL_IMAGE"));
    assert!(
        dockerfile.contains("cargo build --release --locked -p devheal"),
        "the Dockerfile builds devheal"
    );
    assert!(dockerfile.contains("ENTRYPOINT [\"devheal\"]"), "the entrypoint the manifests' args assume");

    for render in [base(), dry_run(), privileged_agent()] {
        let mut seen = 0;
        for object in &render.objects {
            let pod = &object["spec"]["template"]["spec"];
            for container in
                pod["containers"].as_array().into_iter().chain(pod["initContainers"].as_array()).flatten()
            {
                seen += 1;
                assert_eq!(
                    container["image"],
                    image.as_str(),
                    "{}: {} {}",
                    render.dir,
                    object["kind"],
                    object["metadata"]["name"]
                );
            }
        }
        assert_eq!(seen, 2, "{}: the agent and the controller", render.dir);
    }
}

// ---------------------------------------------------------------------------------------------
// End to end

#[test]
fn the_e2e_script_is_valid_bash_and_builds_the_same_image() {
    let script = repo_root().join("scripts/e2e-kind.sh");
    let out = Command::new("bash").arg("-n").arg(&script).output().expect("bash");
    assert!(out.status.success(), "bash -n {}: {}", script.display(), String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&script).expect("scripts/e2e-kind.sh");
    assert!(text.contains("set -euo pipefail"), "the script stops at the first failure");
    assert!(
        text.contains("DEVHEAL_IMAGE") && text.contains("Dockerfile"),
        "it tags the image the Dockerfile names"
    );
}

#[test]
#[ignore = "needs docker and kind; creates and deletes a kind cluster (a few minutes): \
            cargo test -p devheal-k8s --test deploy_manifests -- --ignored"]
fn e2e_on_kind() {
    let script = repo_root().join("scripts/e2e-kind.sh");
    let status = Command::new("bash").arg(&script).status().expect("run bash");
    assert!(status.success(), "{} failed ({status})", script.display());
}
