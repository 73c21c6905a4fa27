//! `devheal agent` as a process: `--no-kube --fake-devices 2` prints its writes as JSON lines, a
//! fault injected over HTTP makes a fake device Unhealthy with the Xid and the plugin's report,
//! and SIGTERM stops it cleanly (exit 0).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

fn post(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to the agent");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let request =
        format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let code = response.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, response)
}

#[test]
fn no_kube_fake_devices_fail_on_request_and_stop_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plugins = dir.path().join("device-plugins");
    std::fs::create_dir(&plugins).expect("mkdir");
    let kmsg = dir.path().join("kmsg");
    std::fs::write(&kmsg, b"").expect("empty saved kernel log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_devheal"))
        .args(["agent", "--no-kube", "--no-nvml", "--node", "cli-node", "--fake-devices", "2"])
        .args([
            "--metrics-addr",
            "127.0.0.1:0",
            "--progress-addr",
            "127.0.0.1:0",
            "--publish-min-interval-ms",
            "10",
        ])
        .arg("--kmsg")
        .arg(&kmsg)
        .arg("--device-plugin-dir")
        .arg(&plugins)
        .arg("--pod-resources-socket")
        .arg(dir.path().join("none.sock"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the devheal binary runs");

    // stderr says where the metrics are served.
    let stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let (addr_tx, addr_rx) = mpsc::channel();
    let stderr_thread = std::thread::spawn(move || {
        let mut all = Vec::new();
        for line in stderr.lines().map_while(Result::ok) {
            if let Some(rest) = line.split("metrics on http://").nth(1)
                && let Some(addr) = rest.strip_suffix("/metrics")
                && let Ok(addr) = addr.parse::<SocketAddr>()
            {
                let _ = addr_tx.send(addr);
            }
            all.push(line);
        }
        all
    });
    let (line_tx, lines) = mpsc::channel();
    let stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let stdout_thread = std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            if line_tx.send(line).is_err() {
                break;
            }
        }
    });
    let addr =
        addr_rx.recv_timeout(Duration::from_secs(30)).expect("the agent announces its metrics address");

    let next_status = |ok: &dyn Fn(&serde_json::Value) -> bool| -> serde_json::Value {
        loop {
            let line = lines.recv_timeout(Duration::from_secs(20)).expect("a JSON line in time");
            let value: serde_json::Value = serde_json::from_str(&line).expect("every stdout line is JSON");
            if value["type"] == "status" && ok(&value["object"]) {
                return value["object"].clone();
            }
        }
    };
    let healthy = next_status(&|o| {
        o["status"]["devices"]
            .as_array()
            .is_some_and(|d| d.len() == 2 && d.iter().all(|d| d["health"] == "Healthy"))
    });
    assert_eq!(healthy["metadata"]["name"], "cli-node");
    assert_eq!(healthy["status"]["devices"][1]["resource"], "devheal.io/fake-gpu");

    let (code, response) = post(addr, "/fake/fail?device=fake-gpu-1");
    assert_eq!(code, 200, "{response}");
    let failed = next_status(&|o| o["status"]["devices"][1]["health"] == "Unhealthy");
    let reasons = failed["status"]["devices"][1]["reasons"].as_array().cloned().unwrap_or_default();
    assert!(reasons.iter().any(|r| r["source"] == "kernel_log" && r["code"] == 79), "{reasons:?}");
    assert!(reasons.iter().any(|r| r["source"] == "device_plugin"), "{reasons:?}");
    assert_eq!(failed["status"]["devices"][0]["health"], "Healthy");
    assert_eq!(failed["status"]["summary"]["unhealthy"], 1);

    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill runs");
    assert!(status.success());
    let exit = child.wait().expect("the agent exits");
    drop(lines);
    let _ = stdout_thread.join();
    let log = stderr_thread.join().expect("stderr thread");
    assert!(exit.success(), "exit {exit:?}; stderr: {log:?}");
    assert!(log.iter().any(|l| l.contains("SIGTERM")), "{log:?}");
    assert!(!plugins.join("devheal-fake-gpu.sock").exists(), "the fake plugin's socket is removed at exit");
}
