//! What the agent's runtime tests share: a mock Kubernetes API server on 127.0.0.1 that accepts
//! what the real `KubePublisher` sends and records every request with the time it arrived, a
//! publisher double that hands each status to the test, and a tiny HTTP/1.1 client.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use devheal_agent::once::SourcePaths;
use devheal_agent::publish::PublishConfig;
use devheal_agent::publish::{DeviceTransition, DevicesCondition, PublishError, Publisher};
use devheal_agent::run::{AgentConfig, GpuSource};
use devheal_core::Time;
use devheal_k8s::crd::{
    DeviceHealthState, DeviceResetPhase, DeviceResetRequest, NodeDeviceHealth, NodeDeviceHealthStatus,
    k8s_time,
};
use devheal_kubelet::api::podresources_v1 as pr;
use std::path::Path;
use tokio::sync::mpsc;

/// One request the mock API server received.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub at: Instant,
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: serde_json::Value,
}

/// A mock API server: answers the NodeDeviceHealth and Node apply patches, the node read and
/// Event creation as an API server would (the applied object back), and records every request.
pub struct MockApiServer {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
    pub arrivals: mpsc::UnboundedReceiver<Recorded>,
}

impl MockApiServer {
    pub async fn start() -> MockApiServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the mock API server");
        let addr = listener.local_addr().expect("address");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (tx, arrivals) = mpsc::unbounded_channel();
        let record = Arc::clone(&requests);
        let app = Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let record = Arc::clone(&record);
            let tx = tx.clone();
            async move {
                let recorded = Recorded {
                    at: Instant::now(),
                    method: method.to_string(),
                    path: uri.path().to_string(),
                    query: uri.query().unwrap_or("").to_string(),
                    content_type: headers
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string(),
                    body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
                };
                let response = answer(&recorded);
                record.lock().expect("lock").push(recorded.clone());
                let _ = tx.send(recorded);
                response
            }
        });
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        MockApiServer { addr, requests, arrivals }
    }

    /// A kube client for this server.
    pub fn client(&self) -> kube::Client {
        let url = format!("http://{}", self.addr).parse().expect("url");
        kube::Client::try_from(kube::Config::new(url)).expect("kube client")
    }

    /// The next request for which `pick` returns something, within `wait`.
    pub async fn next_matching<T>(
        &mut self,
        wait: std::time::Duration,
        mut pick: impl FnMut(&Recorded) -> Option<T>,
    ) -> Option<(Recorded, T)> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let recorded = tokio::time::timeout_at(deadline, self.arrivals.recv()).await.ok()??;
            if let Some(found) = pick(&recorded) {
                return Some((recorded, found));
            }
        }
    }

    pub fn recorded(&self) -> Vec<Recorded> {
        self.requests.lock().expect("lock").clone()
    }
}

fn json(status: StatusCode, value: serde_json::Value) -> Response {
    (status, [("content-type", "application/json")], value.to_string()).into_response()
}

fn answer(r: &Recorded) -> Response {
    let ndh = "/apis/devheal.io/v1alpha1/nodedevicehealths/";
    let nodes = "/api/v1/nodes/";
    if let Some(rest) = r.path.strip_prefix(ndh) {
        let name = rest.trim_end_matches("/status");
        let mut object = serde_json::json!({
            "apiVersion": "devheal.io/v1alpha1", "kind": "NodeDeviceHealth",
            "metadata": {"name": name, "uid": "ndh-uid"}, "spec": {"nodeName": name},
        });
        if let Some(status) = r.body.get("status") {
            object["status"] = status.clone();
        }
        return json(StatusCode::OK, object);
    }
    if let Some(rest) = r.path.strip_prefix(nodes) {
        let name = rest.trim_end_matches("/status");
        let mut object = serde_json::json!({
            "apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "uid": "node-uid-1"},
        });
        if let Some(status) = r.body.get("status") {
            object["status"] = status.clone();
        }
        return json(StatusCode::OK, object);
    }
    if r.path.ends_with("/events") && r.method == "POST" {
        return json(StatusCode::CREATED, r.body.clone());
    }
    json(
        StatusCode::NOT_FOUND,
        serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404, "reason": "NotFound", "message": "not served by the mock"}),
    )
}

/// The `status` of a NodeDeviceHealth status apply, if `r` is one.
pub fn applied_status(r: &Recorded) -> Option<NodeDeviceHealthStatus> {
    if r.method != "PATCH" || !r.path.ends_with("/status") || !r.path.contains("/nodedevicehealths/") {
        return None;
    }
    serde_json::from_value(r.body.get("status")?.clone()).ok()
}

/// A publisher double: every status it is asked to write goes to the test.
pub struct ChannelPublisher {
    pub statuses: mpsc::UnboundedSender<NodeDeviceHealth>,
    pub events: mpsc::UnboundedSender<DeviceTransition>,
}

impl Publisher for ChannelPublisher {
    async fn apply_status(&mut self, object: &NodeDeviceHealth) -> Result<(), PublishError> {
        let _ = self.statuses.send(object.clone());
        Ok(())
    }

    async fn apply_condition(
        &mut self,
        _node: &str,
        _condition: &DevicesCondition,
        _since: Time,
        _now: Time,
    ) -> Result<(), PublishError> {
        Ok(())
    }

    async fn emit_event(&mut self, _node: &str, transition: &DeviceTransition) -> Result<(), PublishError> {
        let _ = self.events.send(transition.clone());
        Ok(())
    }
}

/// One HTTP/1.1 request to `addr` without a body; returns the status code and the body.
pub fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    http_with_body(addr, method, path, "")
}

/// One HTTP/1.1 request to `addr` with a JSON body (none when empty); returns the status code
/// and the body.
pub fn http_with_body(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10))).expect("timeout");
    let content_type = if body.is_empty() { "" } else { "Content-Type: application/json\r\n" };
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{content_type}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("write request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let code = response.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (code, body)
}

/// What the kubelet's PodResources API says of a pod with one container on `ids` of `resource`.
pub fn pod_resources(
    namespace: &str,
    name: &str,
    container: &str,
    resource: &str,
    ids: &[&str],
) -> pr::PodResources {
    pr::PodResources {
        name: name.into(),
        namespace: namespace.into(),
        containers: vec![pr::ContainerResources {
            name: container.into(),
            devices: vec![pr::ContainerDevices {
                resource_name: resource.into(),
                device_ids: ids.iter().map(|s| s.to_string()).collect(),
                topology: None,
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A config for a fast agent on `node` with its files and sockets under `dir`: an empty saved
/// kernel log, no GPU library, quick PodResources polling and plugin rescans, metrics on an
/// ephemeral port.
pub fn test_config(dir: &Path, node: &str) -> AgentConfig {
    let kmsg = dir.join("kmsg");
    std::fs::write(&kmsg, b"").expect("an empty saved kernel log");
    let boot_id = dir.join("boot_id");
    std::fs::write(&boot_id, "test-boot\n").expect("boot id");
    let mut config = AgentConfig::new(node);
    config.paths = SourcePaths {
        kmsg,
        pod_resources_socket: dir.join("pod-resources.sock"),
        device_plugin_dir: dir.join("device-plugins"),
        nvml_library: None,
        boot_id_file: boot_id,
        pci_devices_dir: dir.join("sys-bus-pci-devices"),
        sys_class_dir: dir.join("sys-class"),
        drm_class_dir: dir.join("sys-class-drm"),
        accel_class_dir: dir.join("sys-class-accel"),
        kfd_topology_dir: dir.join("sys-class-kfd"),
        amdsmi_library: None,
        hlml_library: None,
    };
    config.gpus = GpuSource::Off;
    config.amd = devheal_agent::amd::AmdSource::Off;
    config.gaudi = devheal_agent::gaudi::GaudiSource::Off;
    config.metrics_addr = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    config.progress_addr = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    config.publish = PublishConfig {
        heartbeat: std::time::Duration::from_secs(60),
        min_interval: std::time::Duration::from_millis(10),
    };
    config.pod_resources_interval = std::time::Duration::from_millis(200);
    config.pod_resources_min_interval = std::time::Duration::from_millis(20);
    config.source_timeout = std::time::Duration::from_secs(2);
    config
}

/// NVML played by `gpus`, each sampled with nothing wrong.
pub fn scripted_gpus(gpus: Vec<devheal_agent::nvml::GpuIdentity>) -> GpuSource {
    let samples = gpus
        .iter()
        .map(|g| {
            let sample = devheal_agent::nvml::GpuSample {
                uuid: g.uuid.clone(),
                pci_address: g.pci_address.clone(),
                ..Default::default()
            };
            (g.index, sample)
        })
        .collect();
    GpuSource::Fake(devheal_agent::nvml::FakeGpuTelemetry { driver: None, gpus, samples })
}

/// The next status the agent publishes for which `ok` holds, within `wait`; the last one seen is
/// in the panic message.
pub async fn wait_for_status(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<NodeDeviceHealth>,
    wait: std::time::Duration,
    what: &str,
    ok: impl Fn(&NodeDeviceHealthStatus) -> bool,
) -> NodeDeviceHealthStatus {
    let deadline = tokio::time::Instant::now() + wait;
    let mut last = None;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(object)) => {
                let status = object.status.expect("a status");
                if ok(&status) {
                    return status;
                }
                last = Some(status);
            }
            _ => panic!("never published: {what}; last seen {last:#?}"),
        }
    }
}

/// One `/dev/kmsg` record of `message` at priority `level`, timed now (the kernel's timestamp is
/// time since boot).
pub fn kmsg_record(seq: u64, level: u8, message: &str) -> String {
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(1000.0);
    format!("{level},{seq},{},-;{message}\n", (uptime * 1e6) as u64)
}

/// The health `status` gives device `id`, if it lists it.
pub fn health_of(status: &NodeDeviceHealthStatus, id: &str) -> Option<DeviceHealthState> {
    status.devices.iter().find(|d| d.id == id).map(|d| d.health)
}

/// The phase of the answer to reset request `id` in `status.resets`, if answered.
pub fn reset_phase(status: &NodeDeviceHealthStatus, id: &str) -> Option<DeviceResetPhase> {
    status.resets.iter().find(|r| r.id == id).map(|r| r.phase)
}

/// A reset request as the controller writes it (for an Xid 48).
pub fn reset_request(id: &str, device: &str) -> DeviceResetRequest {
    DeviceResetRequest {
        device: device.into(),
        id: id.into(),
        requested_at: k8s_time(Time::from_secs(1_767_225_600)),
        reason: "Xid 48: double-bit ECC error".into(),
    }
}
