//! The running agent under a hostile progress load: two clients (each from its own loopback
//! address) post maximum-size `POST /v1/progress` bodies (1,000 steps, padded to just under
//! 1 MiB) as fast as the agent answers, for `--secs` seconds (default 60). Measured: the
//! agent's RSS (median and peak, sampled every 100 ms) beside its idle RSS in the same run (the
//! baseline), its CPU, the answers by status, that it keeps publishing (its writes, printed as
//! JSON lines with `--no-kube`, and the workloads' windows in them), and how soon it closes
//! 1,000 half-open connections afterwards. Targets (issue #13): RSS ≤ 64 MiB, publishing goes
//! on, half-open connections closed within 10 s.
//!
//! ```text
//! cargo bench --profile dev -p devheal --bench agent_progress_load              # options: -- --secs N
//! ```
//!
//! The agent runs as `devheal agent --no-kube --no-nvml --fake-devices 2 --progress-auth none`
//! with 5 s progress windows; PodResources is an in-process server binding `ml/trainer-0` to
//! `fake-gpu-0` and `ml/trainer-1` to `fake-gpu-1`. `--no-kube` has no pod watch, so the check
//! of who sent a report is off (`none`); every bound that follows it (per-pod rate, the
//! windows) still applies.

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use devheal_kubelet::api::podresources_v1 as pr;
use devheal_kubelet::server::{PodResourcesServer, PodResourcesState, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

#[path = "common/memory.rs"]
mod memory;
#[path = "common/process.rs"]
mod process;

use process::{announced, arg, clock_ticks_per_second, metric, sample};

const MAX_BODY: usize = 1 << 20;
const RSS_TARGET_MIB: f64 = 64.0;
const CLOSE_TARGET: Duration = Duration::from_secs(10);

fn bound_pod(name: &str, device: &str) -> pr::PodResources {
    pr::PodResources {
        name: name.into(),
        namespace: "ml".into(),
        containers: vec![pr::ContainerResources {
            name: "trainer".into(),
            devices: vec![pr::ContainerDevices {
                resource_name: devheal_agent::fake::FAKE_RESOURCE.into(),
                device_ids: vec![device.into()],
                topology: None,
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A body of 1,000 steps for `pod`, padded with spaces to one byte under 1 MiB.
fn max_body(pod: &str) -> String {
    let steps: Vec<String> = (0..1000)
        .map(|i| format!(r#"{{"seconds":{:.3},"step":{i}}}"#, 0.9 + (i % 7) as f64 / 100.0))
        .collect();
    let body = format!(r#"{{"namespace":"ml","pod":"{pod}","steps":[{}]}}"#, steps.join(","));
    let padding = MAX_BODY - 1 - body.len();
    format!("{}{}", body, " ".repeat(padding))
}

#[derive(Default)]
struct Answers {
    sent: AtomicU64,
    accepted: AtomicU64,
    limited: AtomicU64,
    busy: AtomicU64,
    other: AtomicU64,
    failed: AtomicU64,
}

/// One request on a fresh connection from `from`; the status code, or `None` when the
/// exchange failed (an answer before the whole body was written may reset the connection).
async fn post(from: IpAddr, to: SocketAddr, request: &[u8]) -> Option<u16> {
    let socket = TcpSocket::new_v4().ok()?;
    socket.bind(SocketAddr::new(from, 0)).ok()?;
    let mut stream = tokio::time::timeout(Duration::from_secs(5), socket.connect(to)).await.ok()?.ok()?;
    let write = stream.write_all(request).await;
    let mut head = [0u8; 64];
    let mut read = 0;
    while read < 12 {
        match tokio::time::timeout(Duration::from_secs(15), stream.read(&mut head[read..])).await {
            Ok(Ok(n)) if n > 0 => read += n,
            _ => break,
        }
    }
    let text = std::str::from_utf8(&head[..read]).ok()?;
    let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok());
    if code.is_none() && write.is_err() {
        return None;
    }
    code
}

async fn client(
    from: IpAddr,
    to: SocketAddr,
    pod: &'static str,
    answers: Arc<Answers>,
    stop: Arc<AtomicBool>,
) {
    let body = max_body(pod);
    let request = format!(
        "POST /v1/progress HTTP/1.1\r\nHost: {to}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes();
    while !stop.load(Ordering::Relaxed) {
        answers.sent.fetch_add(1, Ordering::Relaxed);
        let counter = match post(from, to, &request).await {
            Some(202) => &answers.accepted,
            Some(429) => &answers.limited,
            Some(503) => &answers.busy,
            Some(_) => &answers.other,
            None => &answers.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let secs = arg(&args, "--secs", 60).max(5);
    let hz = clock_ticks_per_second();
    let dir = tempfile::tempdir().expect("temp dir");
    let plugins = dir.path().join("device-plugins");
    std::fs::create_dir_all(&plugins).expect("plugin dir");
    let kmsg = dir.path().join("kmsg");
    std::fs::write(&kmsg, b"").expect("an empty saved kernel log");
    let socket = dir.path().join("pod-resources.sock");
    let state = PodResourcesState::default();
    state.set_pods(vec![bound_pod("trainer-0", "fake-gpu-0"), bound_pod("trainer-1", "fake-gpu-1")]);
    let _kubelet = serve(&socket, PodResourcesServer { state }.router()).expect("serve PodResources");

    let mut agent = Command::new(env!("CARGO_BIN_EXE_devheal"))
        .args(["agent", "--no-kube", "--no-nvml", "--node", "load", "--fake-devices", "2"])
        .args(["--metrics-addr", "127.0.0.1:0", "--progress-addr", "127.0.0.1:0", "--progress-auth", "none"])
        .args(["--progress-window", "5s", "--publish-min-interval-ms", "100"])
        .arg("--kmsg")
        .arg(&kmsg)
        .arg("--device-plugin-dir")
        .arg(&plugins)
        .arg("--pod-resources-socket")
        .arg(&socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start devheal agent");
    let pid = agent.id();
    let stderr = BufReader::new(agent.stderr.take().expect("stderr"));
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (metrics_tx, metrics_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if let Some(addr) = announced(&line, "metrics on ", "/metrics") {
                let _ = metrics_tx.send(addr);
            }
            if let Some(addr) = announced(&line, "progress reports on ", "/v1/progress") {
                let _ = addr_tx.send(addr);
            }
        }
    });
    // Every write the agent makes: when, and whether both trainers' windows are in it.
    let started = Instant::now();
    let writes: Arc<std::sync::Mutex<Vec<(Duration, usize)>>> = Arc::default();
    let stdout = BufReader::new(agent.stdout.take().expect("stdout"));
    let seen = Arc::clone(&writes);
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let windows = serde_json::from_str::<serde_json::Value>(&line)
                .ok()
                .and_then(|v| {
                    v.pointer("/object/status/workloads").or_else(|| v.pointer("/status/workloads")).cloned()
                })
                .and_then(|w| w.as_array().cloned())
                .map(|w| w.iter().filter(|x| x["windows"].as_array().is_some_and(|a| !a.is_empty())).count())
                .unwrap_or(0);
            if let Ok(mut w) = seen.lock() {
                w.push((started.elapsed(), windows));
            }
        }
    });
    let to = tokio::task::spawn_blocking(move || addr_rx.recv_timeout(Duration::from_secs(30)))
        .await
        .expect("join")
        .expect("the agent announces its progress address");
    let metrics_addr =
        metrics_rx.recv_timeout(Duration::from_secs(5)).expect("the agent announces its metrics address");
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Baseline: the same agent idle.
    let idle = sample(pid).expect("agent stats");

    // Load.
    let answers = Arc::new(Answers::default());
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> =
        [(Ipv4Addr::new(127, 0, 0, 2), "trainer-0"), (Ipv4Addr::new(127, 0, 0, 3), "trainer-1")]
            .into_iter()
            .map(|(from, pod)| {
                tokio::spawn(client(IpAddr::V4(from), to, pod, Arc::clone(&answers), Arc::clone(&stop)))
            })
            .collect();
    let load_started = Instant::now();
    let before = sample(pid).expect("agent stats");
    let writes_before = writes.lock().map(|w| w.len()).unwrap_or(0);
    let mut rss = Vec::new();
    while load_started.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        rss.push(sample(pid).expect("the agent is alive under load").rss_kib as f64 / 1024.0);
    }
    let after = sample(pid).expect("agent stats");
    let load_secs = load_started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }
    let load_end = started.elapsed();
    let (writes_during, last_write, windows_last) = {
        let w = writes.lock().expect("writes");
        let during: Vec<&(Duration, usize)> =
            w[writes_before..].iter().filter(|(t, _)| *t <= load_end).collect();
        (
            during.len(),
            during.last().map(|(t, _)| load_end.saturating_sub(*t)),
            during.last().map(|(_, n)| *n).unwrap_or(0),
        )
    };

    // Half-open connections: 1,000 that send nothing; how long until the agent closed them all.
    let mut idle_conns = Vec::new();
    for _ in 0..1000 {
        if let Ok(s) = tokio::net::TcpStream::connect(to).await {
            idle_conns.push(s);
        }
    }
    let opened = idle_conns.len();
    let close_started = Instant::now();
    let closes: Vec<_> = idle_conns
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                let mut buf = [0u8; 16];
                let _ = tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf)).await;
                close_started.elapsed()
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    for c in closes {
        slowest = slowest.max(c.await.unwrap_or(Duration::from_secs(30)));
    }
    let still_up = sample(pid).is_some();
    let steps = |result: &str| {
        metric(metrics_addr, &format!("devheal_agent_progress_steps_total{{result=\"{result}\"}}"))
            .unwrap_or(0)
    };
    let (steps_accepted, steps_rejected) = (steps("accepted"), steps("rejected"));

    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    let exit = agent.wait();

    let mib = |kib: u64| kib as f64 / 1024.0;
    let peak = rss.iter().copied().fold(0.0, f64::max);
    let idle_mib = mib(idle.rss_kib);
    let rss_median = median(&mut rss);
    let cpu = (after.ticks - before.ticks) as f64 / hz / load_secs * 100.0;
    let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
    println!(
        "agent under hostile progress load (devheal agent --no-kube --no-nvml --fake-devices 2 --progress-auth none, 5 s windows)"
    );
    println!("idle (baseline):  RSS {idle_mib:.1} MiB");
    println!(
        "load {load_secs:.0} s:       2 clients (127.0.0.2, 127.0.0.3) posting {} KiB bodies of 1,000 steps, as fast as answered",
        MAX_BODY / 1024
    );
    println!(
        "  agent:          RSS median {rss_median:.1} MiB, peak {peak:.1} MiB ({:.2}x idle; VmHWM {:.1} MiB); CPU {cpu:.1} % of one core",
        peak / idle_mib.max(0.1),
        mib(after.hwm_kib)
    );
    println!(
        "  answers:        {} requests: 202 {}, 429 {}, 503 {}, other {}, no answer {}",
        n(&answers.sent),
        n(&answers.accepted),
        n(&answers.limited),
        n(&answers.busy),
        n(&answers.other),
        n(&answers.failed)
    );
    println!(
        "  steps:          {steps_accepted} accepted, {steps_rejected} rejected (ended in a window already closed)"
    );
    println!(
        "  publishing:     {writes_during} writes during the load, the last {} before its end, with {windows_last} workloads' windows",
        last_write.map(|d| format!("{:.1} s", d.as_secs_f64())).unwrap_or_else(|| "never".into())
    );
    println!(
        "half-open:        {opened} connections that send nothing: all closed within {:.1} s (target ≤ {} s); agent alive: {still_up}",
        slowest.as_secs_f64(),
        CLOSE_TARGET.as_secs()
    );
    let ok_rss = peak <= RSS_TARGET_MIB;
    let ok_publish =
        writes_during > 0 && last_write.is_some_and(|d| d <= Duration::from_secs(15)) && windows_last == 2;
    let ok_close = slowest <= CLOSE_TARGET && opened > 0;
    println!(
        "targets:          RSS ≤ {RSS_TARGET_MIB} MiB: {}; keeps publishing: {}; half-open closed ≤ 10 s: {}",
        verdict(ok_rss),
        verdict(ok_publish),
        verdict(ok_close)
    );
    println!("agent exit: {exit:?}");
    if !(ok_rss && ok_publish && ok_close) {
        std::process::exit(1);
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}
