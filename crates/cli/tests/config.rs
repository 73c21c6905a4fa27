//! `devheal config` and the controller's settings file, through the built binary: the printed
//! defaults are the whole file and read back as the defaults; `--check` names the file and the
//! key of a bad setting; the controller refuses a bad file before it contacts a cluster, and its
//! flags win over the file.

mod common;
use common::devheal;

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, text).expect("write the settings file");
    path.to_string_lossy().into_owned()
}

#[test]
fn the_printed_defaults_are_every_key_and_check_as_the_defaults() {
    let out = devheal(&["config", "--print-defaults"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).expect("utf-8");
    for key in [
        "maxQuarantinedNodes: 32",
        "maxQuarantinedNodesPercent: 10.0",
        "maxEvictionsPerMinute: 30",
        "maxGangRestartsPerHourPerNamespace: 20",
        "maxGangRestartsPerHourCluster: 60",
        "breakerWindow: \"5m\"",
        "breakerCooldown: \"15m\"",
        "progressBreakerWindow: \"10m\"",
        "probation: \"10m\"",
        "lemonWindow: \"168h\"",
        "degradedReplaceAfter: \"20m\"",
        "requestRepairs: true",
        "quarantineUnhealthyDevices: true",
        "hangQuorum: 0.5",
    ] {
        assert!(text.contains(key), "{key} is missing:\n{text}");
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write(&dir, "defaults.yaml", &text);
    let out = devheal(&["config", "--check", &path], None);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("valid; every setting is its default"), "{stdout}");
}

#[test]
fn check_names_the_file_and_the_key_of_a_bad_setting() {
    let dir = tempfile::tempdir().expect("temp dir");
    for (text, expected) in [
        ("safety:\n  breakerWindow: 0s\n", "bad.yaml: safety.breakerWindow: must be positive"),
        ("safety:\n  maxEvictionsPerMinut: 5\n", "bad.yaml: safety.maxEvictionsPerMinut: unknown key"),
        (
            "safety:\n  probation: ten minutes\n",
            "bad.yaml: safety.probation: \"ten minutes\" is not a duration",
        ),
    ] {
        let path = write(&dir, "bad.yaml", text);
        let out = devheal(&["config", "--check", &path], None);
        assert_eq!(out.status.code(), Some(2), "{text}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected), "{text}: {err}");
    }
    let path = write(&dir, "good.yaml", "safety:\n  maxEvictionsPerMinute: 5\n");
    let out = devheal(&["config", "--check", &path, "--set", "safety.breakerCooldown=0s"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("safety.breakerCooldown: must be positive"));
    let out = devheal(&["config", "--check", &path], None);
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("differs from the defaults in safety.maxEvictionsPerMinute")
    );
}

#[test]
fn the_controller_refuses_a_bad_settings_file_before_contacting_a_cluster() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write(&dir, "settings.yaml", "safety:\n  breakerWindw: 5m\n");
    // The kubeconfig does not exist: an error about it would mean the settings were not read first.
    let kubeconfig = dir.path().join("no-kubeconfig").to_string_lossy().into_owned();
    let out = devheal(&["controller", "--settings", &path, "--kubeconfig", &kubeconfig], None);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("settings.yaml: safety.breakerWindw: unknown key (did you mean safety.breakerWindow?)"),
        "{err}"
    );

    // A flag that makes a good file bad: the flag is applied over the file, and named.
    let path = write(&dir, "good.yaml", "safety:\n  maxQuarantinedNodesPercent: 5\n");
    let out = devheal(
        &[
            "controller",
            "--settings",
            &path,
            "--max-quarantined-nodes-percent",
            "150",
            "--kubeconfig",
            &kubeconfig,
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("safety.maxQuarantinedNodesPercent: must be from 0 to 100, not 150"), "{err}");
}
