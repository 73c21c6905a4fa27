//! Device resets the controller requests, carried out by the running agent (`crate::reset`):
//! the fake devices are the driver (a held device has a process on it, a wedged one does not
//! come back), the controller's `spec.resetRequests` arrive on the watch the API server would
//! feed, and the answers are read from the published `status.resets`, the Events and
//! `/metrics`.

mod common;

use std::time::Duration;

use common::{ChannelPublisher, health_of, http, reset_phase, reset_request, test_config, wait_for_status};
use devheal_agent::reset::{ResetLimits, ResetMode};
use devheal_agent::run::start;
use devheal_core::HealthSource;
use devheal_k8s::crd::{DeviceHealthState, DeviceResetPhase};
use tokio::sync::{mpsc, watch};

const WAIT: Duration = Duration::from_secs(20);

async fn post(addr: std::net::SocketAddr, path: &'static str) {
    let (code, body) = tokio::task::spawn_blocking(move || http(addr, "POST", path)).await.expect("join");
    assert_eq!(code, 200, "{path}: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requested_reset_waits_for_the_device_to_be_idle_and_clears_its_fault_only_when_it_comes_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path(), "node-r");
    config.fake_devices = 2;
    std::fs::create_dir(&config.paths.device_plugin_dir).expect("mkdir");
    config.reset_mode = ResetMode::On;
    config.reset_limits = ResetLimits {
        busy_wait: Duration::from_secs(30),
        busy_poll: Duration::from_millis(50),
        ..ResetLimits::default()
    };
    let (requests_tx, requests_rx) = watch::channel(Vec::new());
    config.reset_requests = Some(requests_rx);
    let (statuses, mut rx) = mpsc::unbounded_channel();
    let (events, mut event_rx) = mpsc::unbounded_channel();
    let agent = start(config, ChannelPublisher { statuses, events }).await.expect("agent starts");
    let addr = agent.metrics_addr.expect("served");

    // An uncorrectable ECC error on fake-gpu-1: Unhealthy on the Xid, whose repair is a reset.
    post(addr, "/fake/ecc?device=fake-gpu-1").await;
    wait_for_status(&mut rx, WAIT, "fake-gpu-1 Unhealthy on Xid 48", |s| {
        s.devices.iter().any(|d| {
            d.id == "fake-gpu-1"
                && d.health == DeviceHealthState::Unhealthy
                && d.reasons.iter().any(|r| r.source == HealthSource::KernelLog && r.code == Some(48))
        })
    })
    .await;

    // A process still holds it: the request is taken and waits.
    post(addr, "/fake/hold?device=fake-gpu-1").await;
    requests_tx.send_replace(vec![reset_request("repair/ecc-1", "fake-gpu-1")]);
    let mut waiting = wait_for_status(&mut rx, WAIT, "the request taken, waiting", |s| {
        reset_phase(s, "repair/ecc-1") == Some(DeviceResetPhase::Pending)
    })
    .await;
    // Ten looks at the holders later, the latest status still says so.
    tokio::time::sleep(Duration::from_millis(500)).await;
    while let Ok(object) = rx.try_recv() {
        waiting = object.status.expect("a status");
    }
    assert_eq!(
        reset_phase(&waiting, "repair/ecc-1"),
        Some(DeviceResetPhase::Pending),
        "not reset while held"
    );
    assert_eq!(health_of(&waiting, "fake-gpu-1"), Some(DeviceHealthState::Unhealthy));

    // The process exits: reset, seen back, its kernel-log reason gone (probation: Degraded).
    post(addr, "/fake/free?device=fake-gpu-1").await;
    let done = wait_for_status(&mut rx, WAIT, "the reset succeeded and the Xid cleared", |s| {
        reset_phase(s, "repair/ecc-1") == Some(DeviceResetPhase::Succeeded)
            && health_of(s, "fake-gpu-1") != Some(DeviceHealthState::Unhealthy)
    })
    .await;
    let answer = done.resets.iter().find(|r| r.id == "repair/ecc-1").expect("answered");
    assert!(answer.message.contains("answers again"), "{answer:?}");
    let dev = done.devices.iter().find(|d| d.id == "fake-gpu-1").expect("device");
    assert!(!dev.reasons.iter().any(|r| r.code == Some(48)), "{dev:?}");

    // A wedged device: the command "works", the device does not come back: Failed, still
    // Unhealthy.
    post(addr, "/fake/wedge?device=fake-gpu-0").await;
    post(addr, "/fake/ecc?device=fake-gpu-0").await;
    requests_tx.send_replace(vec![
        reset_request("repair/ecc-1", "fake-gpu-1"),
        reset_request("repair/ecc-0", "fake-gpu-0"),
    ]);
    let failed = wait_for_status(&mut rx, WAIT, "the wedged device's reset failed", |s| {
        reset_phase(s, "repair/ecc-0") == Some(DeviceResetPhase::Failed)
    })
    .await;
    assert_eq!(health_of(&failed, "fake-gpu-0"), Some(DeviceHealthState::Unhealthy));
    assert_eq!(reset_phase(&failed, "repair/ecc-1"), Some(DeviceResetPhase::Succeeded), "answered once");
    let answer = failed.resets.iter().find(|r| r.id == "repair/ecc-0").expect("answered");
    assert!(answer.message.contains("did not come back"), "{answer:?}");

    // A device that comes back but fails the functional check: Failed, still Unhealthy.
    post(addr, "/fake/corrupt?device=fake-gpu-1").await;
    post(addr, "/fake/ecc?device=fake-gpu-1").await;
    requests_tx.send_replace(vec![
        reset_request("repair/ecc-1", "fake-gpu-1"),
        reset_request("repair/ecc-0", "fake-gpu-0"),
        reset_request("repair/ecc-1b", "fake-gpu-1"),
    ]);
    let checked = wait_for_status(&mut rx, WAIT, "the corrupt device failed its check", |s| {
        reset_phase(s, "repair/ecc-1b") == Some(DeviceResetPhase::Failed)
            && health_of(s, "fake-gpu-1") == Some(DeviceHealthState::Unhealthy)
    })
    .await;
    let answer = checked.resets.iter().find(|r| r.id == "repair/ecc-1b").expect("answered");
    assert!(answer.message.contains("failed the functional check"), "{answer:?}");

    // A request for a device the agent does not report is refused.
    requests_tx.send_replace(vec![reset_request("repair/x", "GPU-not-here")]);
    wait_for_status(&mut rx, WAIT, "an unknown device refused", |s| {
        reset_phase(s, "repair/x") == Some(DeviceResetPhase::Refused)
    })
    .await;

    // Each step an Event and a count (the publisher sends Events beside status writes).
    let wanted = ["DeviceResetStarted", "DeviceResetSucceeded", "DeviceResetFailed", "DeviceResetRefused"];
    let mut reasons = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !wanted.iter().all(|w| reasons.contains(w)) {
        match tokio::time::timeout_at(deadline, event_rx.recv()).await {
            Ok(Some(t)) if t.reset.is_some() => reasons.push(t.reason()),
            Ok(Some(_)) => {}
            _ => panic!("not every reset step was an Event: {reasons:?}"),
        }
    }
    let (_, metrics) =
        tokio::task::spawn_blocking(move || http(addr, "GET", "/metrics")).await.expect("join");
    for line in [
        "devheal_agent_device_resets_total{phase=\"Succeeded\"} 1",
        "devheal_agent_device_resets_total{phase=\"Failed\"} 2",
        "devheal_agent_device_resets_total{phase=\"Refused\"} 1",
    ] {
        assert!(metrics.contains(line), "no {line:?} in\n{metrics}");
    }
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_resets_off_a_request_is_refused_and_nothing_is_reset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path(), "node-s");
    config.fake_devices = 1;
    std::fs::create_dir(&config.paths.device_plugin_dir).expect("mkdir");
    assert_eq!(config.reset_mode, ResetMode::Off, "off by default");
    let (requests_tx, requests_rx) = watch::channel(Vec::new());
    config.reset_requests = Some(requests_rx);
    let (statuses, mut rx) = mpsc::unbounded_channel();
    let (events, _event_rx) = mpsc::unbounded_channel();
    let agent = start(config, ChannelPublisher { statuses, events }).await.expect("agent starts");
    let addr = agent.metrics_addr.expect("served");
    post(addr, "/fake/ecc?device=fake-gpu-0").await;
    requests_tx.send_replace(vec![reset_request("repair/ecc-0", "fake-gpu-0")]);
    let status = wait_for_status(&mut rx, WAIT, "the request refused", |s| {
        reset_phase(s, "repair/ecc-0") == Some(DeviceResetPhase::Refused)
            && health_of(s, "fake-gpu-0") == Some(DeviceHealthState::Unhealthy)
    })
    .await;
    let answer = status.resets.iter().find(|r| r.id == "repair/ecc-0").expect("answered");
    assert!(answer.message.contains("--device-reset=off"), "{answer:?}");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_end_of_probation_a_device_returns_only_once_its_functional_check_passes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path(), "node-p");
    config.fake_devices = 2;
    std::fs::create_dir(&config.paths.device_plugin_dir).expect("mkdir");
    config.tracker = devheal_agent::health::TrackerConfig {
        probation: devheal_core::Duration::from_secs(1),
        check_after_probation: true,
    };
    let (statuses, mut rx) = mpsc::unbounded_channel();
    let (events, _event_rx) = mpsc::unbounded_channel();
    let agent = start(config, ChannelPublisher { statuses, events }).await.expect("agent starts");
    let addr = agent.metrics_addr.expect("served");
    // Both fail and are reset (the fake's recover); fake-gpu-0 comes back corrupt.
    post(addr, "/fake/corrupt?device=fake-gpu-0").await;
    post(addr, "/fake/ecc?device=fake-gpu-0").await;
    post(addr, "/fake/ecc?device=fake-gpu-1").await;
    wait_for_status(&mut rx, WAIT, "both Unhealthy", |s| {
        health_of(s, "fake-gpu-0") == Some(DeviceHealthState::Unhealthy)
            && health_of(s, "fake-gpu-1") == Some(DeviceHealthState::Unhealthy)
    })
    .await;
    post(addr, "/fake/recover?device=fake-gpu-0").await;
    post(addr, "/fake/recover?device=fake-gpu-1").await;
    let status =
        wait_for_status(&mut rx, WAIT, "the good one back, the corrupt one Unhealthy on its check", |s| {
            health_of(s, "fake-gpu-1") == Some(DeviceHealthState::Healthy)
                && health_of(s, "fake-gpu-0") == Some(DeviceHealthState::Unhealthy)
        })
        .await;
    let bad = status.devices.iter().find(|d| d.id == "fake-gpu-0").expect("device");
    assert!(
        bad.reasons
            .iter()
            .any(|r| r.source == HealthSource::FunctionalCheck && r.message.contains("word 4096")),
        "{bad:?}"
    );
    let (_, metrics) =
        tokio::task::spawn_blocking(move || http(addr, "GET", "/metrics")).await.expect("join");
    for line in [
        "devheal_agent_device_checks_total{result=\"passed\"} 1",
        "devheal_agent_device_checks_total{result=\"failed\"} 1",
    ] {
        assert!(metrics.contains(line), "no {line:?} in\n{metrics}");
    }
    agent.stop().await;
}
