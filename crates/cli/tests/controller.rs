//! `devheal controller` end to end, without a cluster: bad input and an API server that does not
//! answer are named, and the process exits rather than run blind.

mod common;
use common::{dead_kubeconfig, devheal};

#[test]
fn a_missing_kubeconfig_is_named() {
    let out = devheal(&["controller", "--kubeconfig", "/nonexistent/devheal-kubeconfig"], None);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/devheal-kubeconfig"), "{err}");
}

#[test]
fn an_api_server_that_does_not_answer_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dead_kubeconfig(dir.path());
    let out =
        devheal(&["controller", "--kubeconfig", &path, "--dry-run", "--metrics-addr", "127.0.0.1:0"], None);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    // The actuator first asks the API server which DRA version it serves.
    assert!(err.contains("no answer from the API server"), "{err}");
    assert!(err.contains("DeviceTaintRules"), "{err}");
}

#[test]
fn help_lists_the_flags() {
    let out = devheal(&["controller", "--help"], None);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--dry-run",
        "--kubeconfig",
        "--lease-namespace",
        "--lease-name",
        "--identity",
        "--metrics-addr",
        "--pod-selector",
        "--policy-namespace",
    ] {
        assert!(text.contains(flag), "{flag} missing: {text}");
    }
    assert!(text.contains("devheal-system") && text.contains("0.0.0.0:9100"));
}
