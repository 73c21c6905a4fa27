//! Real-hardware check of the device-reset path ([`devheal_agent::reset`]) on an NVIDIA GPU:
//! NVML's process listing before a reset, a dry run answered by the running agent, and the
//! whole path of a reset (idle, reset, observed, functional check, the fault cleared) with the
//! reset command itself replaced by `true`.
//!
//! The reset itself is never run: the GPU machines these tests are run on are lent, and their
//! GPUs must not be reset. Everything around it is real: NVML (`libnvidia-ml.so.1`) says who
//! holds the GPU and whether it answers afterwards, and `devheal gpu-check` (the binary named by
//! `DEVHEAL_BIN`) runs the functional check through the CUDA driver.
//!
//! It needs an NVIDIA GPU, its driver, the `devheal` binary and a program that holds the GPU
//! (by default `python3` with PyTorch; `DEVHEAL_GPU_HOLDER` names another shell command that
//! prints `ready` once it holds a CUDA context), so it is ignored by default. On a GPU machine:
//!
//! ```text
//! DEVHEAL_BIN=target/release/devheal \
//!   cargo test -p devheal-agent --test reset_gpu -- --ignored --nocapture --test-threads=1
//! ```

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    ChannelPublisher, health_of, kmsg_record, reset_phase, reset_request, test_config, wait_for_status,
};
use devheal_agent::nvml::{GpuIdentity, GpuTelemetry, NvmlTelemetry};
use devheal_agent::reset::{
    CheckMode, CheckOutcome, NvidiaReset, ResetBackend, ResetLimits, ResetMode, ResetTarget, carry_out,
    default_reset_command, gpu_check_command,
};
use devheal_agent::run::start;
use devheal_agent::sources::GpuSource;
use devheal_core::HealthSource;
use devheal_k8s::crd::{DeviceHealthState, DeviceResetPhase};
use tokio::sync::{mpsc, watch};

const WAIT: Duration = Duration::from_secs(60);

/// Holds a CUDA context (and 64 MiB) on the GPU until killed.
const TORCH_HOLDER: &str = "python3 -c \"import time, torch; x = torch.ones(16 << 20, device='cuda'); \
torch.cuda.synchronize(); print('ready', flush=True); time.sleep(120)\"";

fn devheal_bin() -> String {
    std::env::var("DEVHEAL_BIN").expect("DEVHEAL_BIN must name the devheal binary (for gpu-check)")
}

fn first_gpu() -> GpuIdentity {
    let nvml = NvmlTelemetry::open().unwrap_or_else(|e| panic!("NVML must load on a GPU machine: {e}"));
    let gpus = nvml.gpus().expect("gpu identities");
    gpus.into_iter().next().expect("a GPU machine has a GPU")
}

fn target_of(gpu: &GpuIdentity) -> ResetTarget {
    ResetTarget {
        id: gpu.uuid.clone(),
        pci_address: Some(gpu.pci_address.clone()),
        uuid: Some(gpu.uuid.clone()),
    }
}

/// The real backend with the reset itself replaced by `true`, checking 1 GiB.
fn backend() -> NvidiaReset {
    NvidiaReset {
        command: vec!["true".into()],
        check_command: Some(gpu_check_command(&devheal_bin(), 1024, None)),
        nvml_library: None,
        timeout: Duration::from_secs(120),
    }
}

/// A process holding a CUDA context on the GPU; killed on drop.
struct Holder(Child);

impl Holder {
    fn start() -> Holder {
        let command = std::env::var("DEVHEAL_GPU_HOLDER").unwrap_or_else(|_| TORCH_HOLDER.to_string());
        let mut child = Command::new("sh")
            .args(["-c", &format!("exec {command}")])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the holder");
        let stdout = child.stdout.take().expect("holder's stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read the holder's first line");
        assert_eq!(line.trim(), "ready", "the holder did not take the GPU: {line:?}");
        Holder(child)
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls the holders until `done` says so, or panics after `WAIT`.
fn holders_until(
    backend: &NvidiaReset,
    target: &ResetTarget,
    what: &str,
    done: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let started = Instant::now();
    loop {
        let held = backend.holders(target).expect("NVML lists the GPU's processes");
        if done(&held) {
            return held;
        }
        assert!(started.elapsed() < WAIT, "{what}: the holders are still {held:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU, its driver, DEVHEAL_BIN and python3 with PyTorch"]
fn nvml_names_the_holder_a_held_gpu_is_refused_and_an_idle_one_goes_the_whole_way() {
    let gpu = first_gpu();
    let target = target_of(&gpu);
    println!("gpu: {} {} at {}", gpu.name, gpu.uuid, gpu.pci_address);
    let nvidia = backend();

    // What a reset would run: NVIDIA's per-GPU reset, by bus id.
    let real = NvidiaReset { command: default_reset_command(), ..backend() };
    assert_eq!(real.describe(&target), format!("nvidia-smi --gpu-reset -i {}", gpu.pci_address));

    // Idle: nobody holds it.
    let idle = holders_until(&nvidia, &target, "idle at the start", |h| h.is_empty());
    println!("holders while idle: {idle:?}");

    // A process takes a CUDA context: NVML names it, by pid.
    let holder = Holder::start();
    let pid = holder.pid();
    let held = holders_until(&nvidia, &target, "the holder named", |h| {
        h.iter().any(|p| p.starts_with(&format!("pid {pid}")))
    });
    println!("holders while held: {held:?}");

    // A reset requested now waits, then is refused with the holder named, and nothing ran.
    let limits = ResetLimits {
        busy_wait: Duration::from_secs(2),
        busy_poll: Duration::from_millis(500),
        check: CheckMode::Required,
        ..ResetLimits::default()
    };
    let wedge = NvidiaReset { command: vec!["false".into()], ..backend() };
    let started = Instant::now();
    let refused = carry_out(&wedge, &limits, "held-1", &target);
    println!("held: {:?} after {:?}: {}", refused.phase, started.elapsed(), refused.message);
    assert_eq!(refused.phase, DeviceResetPhase::Refused, "{refused:?}");
    assert!(refused.message.contains(&format!("pid {pid}")), "{refused:?}");

    // At the end of probation a device in use is not disturbed: its workload is the test.
    match devheal_agent::reset::check_at_end_of_probation(&nvidia, &target) {
        CheckOutcome::Passed(why) => assert!(why.contains(&format!("pid {pid}")), "{why}"),
        other => panic!("a held device is not checked: {other:?}"),
    }

    // The holder exits: the GPU is idle again, and the whole path runs.
    drop(holder);
    holders_until(&nvidia, &target, "idle after the holder exited", |h| h.is_empty());
    let started = Instant::now();
    let done = carry_out(&nvidia, &limits, "idle-1", &target);
    let took = started.elapsed();
    println!("idle: {:?} after {took:?}: {}", done.phase, done.message);
    assert_eq!(done.phase, DeviceResetPhase::Succeeded, "{done:?}");
    assert!(
        done.message.contains(&format!("NVML sees {} at {} again", gpu.uuid, gpu.pci_address)),
        "{done:?}"
    );
    assert!(
        done.message.contains("check passed") && done.message.contains("\"result\":\"passed\""),
        "{done:?}"
    );

    // Observed, not assumed: a GPU that came back as another one is not the device.
    let other =
        ResetTarget { uuid: Some("GPU-00000000-0000-0000-0000-000000000000".into()), ..target.clone() };
    let err = nvidia.observe(&other).expect_err("another UUID is not the same device");
    println!("another uuid: {err}");
    assert!(err.to_string().contains(&format!("is now {}", gpu.uuid)), "{err}");
    // And a bus with no GPU is not one either.
    let absent = ResetTarget { pci_address: Some("0000:ff:1f.0".into()), ..target.clone() };
    let err = nvidia.observe(&absent).expect_err("no GPU at ff:1f");
    println!("absent bus: {err}");
}

/// `dddd:bb:dd` of `dddd:bb:dd.f`, as an Xid line prints a GPU.
fn xid_address(pci: &str) -> &str {
    pci.rsplit_once('.').map_or(pci, |(a, _)| a)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs an NVIDIA GPU, its driver and DEVHEAL_BIN"]
async fn the_running_agent_answers_a_dry_run_and_then_resets_checks_and_returns_the_gpu() {
    let gpu = tokio::task::spawn_blocking(first_gpu).await.expect("join");
    let uuid = gpu.uuid.clone();

    // Dry run: the agent reports the GPU from NVML and answers with what it would run.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path(), "gpu-node");
    config.gpus = GpuSource::Nvml;
    config.nvml_interval = Duration::from_secs(1);
    config.reset_mode = ResetMode::DryRun;
    let (requests_tx, requests_rx) = watch::channel(Vec::new());
    config.reset_requests = Some(requests_rx);
    let (statuses, mut rx) = mpsc::unbounded_channel();
    let (events, mut event_rx) = mpsc::unbounded_channel();
    let agent = start(config, ChannelPublisher { statuses, events }).await.expect("agent starts");
    let before =
        wait_for_status(&mut rx, WAIT, "the GPU reported from NVML", |s| health_of(s, &uuid).is_some()).await;
    let health = health_of(&before, &uuid);
    println!("the GPU as the agent reports it: {health:?}");
    let started = Instant::now();
    requests_tx.send_replace(vec![reset_request("repair/dry-1", &uuid)]);
    let status = wait_for_status(&mut rx, WAIT, "the dry run answered", |s| {
        reset_phase(s, "repair/dry-1") == Some(DeviceResetPhase::WouldReset)
    })
    .await;
    let answer = status.resets.iter().find(|r| r.id == "repair/dry-1").expect("answered");
    println!("dry run, answered in {:?}: {}", started.elapsed(), answer.message);
    assert!(answer.message.contains(&format!("nvidia-smi --gpu-reset -i {}", gpu.pci_address)), "{answer:?}");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, event_rx.recv()).await {
            Ok(Some(t)) if t.reason() == "DeviceResetDryRun" => break,
            Ok(Some(_)) => {}
            _ => panic!("no DeviceResetDryRun Event"),
        }
    }
    assert_eq!(health_of(&status, &uuid), health, "a dry run changes nothing");
    agent.stop().await;

    // On, with the reset replaced by `true`: an Xid 48 the kernel logged for this GPU makes it
    // Unhealthy; the request runs the real idle check, the stand-in reset, NVML's observation
    // and `devheal gpu-check`, and only then the Xid clears.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path(), "gpu-node");
    let line = format!(
        "NVRM: Xid (PCI:{}): 48, pid=4242, name=devheal-gpu-test, An uncorrectable double bit error (DBE) \
         has been detected on GPU (devheal test record in a temporary file, not the kernel log)",
        xid_address(&gpu.pci_address)
    );
    config.gpus = GpuSource::Nvml;
    config.nvml_interval = Duration::from_secs(1);
    config.reset_mode = ResetMode::On;
    config.reset_command = vec!["true".into()];
    config.reset_check_command = Some(gpu_check_command(&devheal_bin(), 256, None));
    config.reset_limits = ResetLimits {
        busy_poll: Duration::from_millis(200),
        check: CheckMode::Required,
        ..ResetLimits::default()
    };
    let (requests_tx, requests_rx) = watch::channel(Vec::new());
    config.reset_requests = Some(requests_rx);
    let (statuses, mut rx) = mpsc::unbounded_channel();
    let (events, _event_rx) = mpsc::unbounded_channel();
    let kmsg = config.paths.kmsg.clone();
    let agent = start(config, ChannelPublisher { statuses, events }).await.expect("agent starts");
    // The line comes once the agent knows the GPU's address from NVML, as on a node.
    wait_for_status(&mut rx, WAIT, "the GPU reported from NVML", |s| health_of(s, &uuid).is_some()).await;
    std::fs::OpenOptions::new()
        .append(true)
        .open(&kmsg)
        .and_then(|mut f| std::io::Write::write_all(&mut f, kmsg_record(1, 3, &line).as_bytes()))
        .expect("append the Xid record");
    wait_for_status(&mut rx, WAIT, "the GPU Unhealthy on the Xid", |s| {
        s.devices.iter().any(|d| {
            d.id == uuid
                && d.health == DeviceHealthState::Unhealthy
                && d.reasons.iter().any(|r| r.source == HealthSource::KernelLog && r.code == Some(48))
        })
    })
    .await;
    let started = Instant::now();
    requests_tx.send_replace(vec![reset_request("repair/ecc-1", &uuid)]);
    let status = wait_for_status(&mut rx, WAIT, "reset, observed, checked, returned", |s| {
        reset_phase(s, "repair/ecc-1") == Some(DeviceResetPhase::Succeeded)
            && health_of(s, &uuid) != Some(DeviceHealthState::Unhealthy)
    })
    .await;
    let answer = status.resets.iter().find(|r| r.id == "repair/ecc-1").expect("answered");
    println!("reset path, answered in {:?}: {}", started.elapsed(), answer.message);
    assert!(answer.message.contains("check passed"), "{answer:?}");
    let dev = status.devices.iter().find(|d| d.id == uuid).expect("device");
    println!("after: {:?}, reasons {:?}", dev.health, dev.reasons);
    assert!(!dev.reasons.iter().any(|r| r.code == Some(48)), "{dev:?}");
    agent.stop().await;
}
