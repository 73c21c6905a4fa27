//! The kubelet gRPC clients against in-process servers on temporary Unix sockets: the device map
//! and health are right, a kubelet socket re-creation and a plugin restart are survived, and a
//! `ListAndWatch` stream that ends is re-opened.

use std::path::Path;
use std::time::Duration;

use devheal_kubelet::api::deviceplugin_v1beta1 as dp;
use devheal_kubelet::api::podresources_v1 as pr;
use devheal_kubelet::deviceplugin::{PluginDevice, PluginEvent, PluginWatcher, plugin_sockets, register};
use devheal_kubelet::podresources::{AllocatableDevice, DeviceBinding, PodResourcesClient};
use devheal_kubelet::server::{
    DevicePluginServer, PodResourcesServer, PodResourcesState, RegistrationServer, serve,
};
use tokio::sync::mpsc;

/// Waits are liveness bounds, not performance targets: generous so a loaded machine never flakes.
const WAIT: Duration = Duration::from_secs(20);

fn gpu_pod(ns: &str, name: &str, ids: &[&str]) -> pr::PodResources {
    pr::PodResources {
        name: name.into(),
        namespace: ns.into(),
        containers: vec![pr::ContainerResources {
            name: "trainer".into(),
            devices: vec![pr::ContainerDevices {
                resource_name: "nvidia.com/gpu".into(),
                device_ids: ids.iter().map(|s| s.to_string()).collect(),
                topology: None,
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn binding(ns: &str, pod: &str, container: &str, resource: &str, id: &str) -> DeviceBinding {
    DeviceBinding {
        namespace: ns.into(),
        pod: pod.into(),
        container: container.into(),
        resource: resource.into(),
        device_id: id.into(),
    }
}

fn device(id: &str, healthy: bool) -> dp::Device {
    dp::Device { id: id.into(), health: if healthy { "Healthy" } else { "Unhealthy" }.into(), topology: None }
}

async fn next_event(rx: &mut mpsc::Receiver<PluginEvent>) -> PluginEvent {
    match tokio::time::timeout(WAIT, rx.recv()).await {
        Ok(Some(event)) => event,
        Ok(None) => panic!("plugin watcher stopped"),
        Err(_) => panic!("no plugin event within {WAIT:?}"),
    }
}

/// The next `Devices` snapshot from `socket`, skipping other events.
async fn next_devices(rx: &mut mpsc::Receiver<PluginEvent>, socket: &Path) -> Vec<PluginDevice> {
    loop {
        if let PluginEvent::Devices { socket: s, devices } = next_event(rx).await
            && Path::new(&s) == socket
        {
            return devices;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_resources_map_survives_kubelet_socket_recreation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("kubelet.sock");
    let state = PodResourcesState::default();
    state.set_pods(vec![
        gpu_pod("ml", "trainer-0", &["GPU-b", "GPU-a"]),
        pr::PodResources {
            name: "infer-0".into(),
            namespace: "serving".into(),
            containers: vec![pr::ContainerResources {
                name: "server".into(),
                dynamic_resources: vec![pr::DynamicResource {
                    claim_name: "gpu-claim".into(),
                    claim_namespace: "serving".into(),
                    claim_resources: vec![pr::ClaimResource {
                        driver_name: "gpu.nvidia.com".into(),
                        pool_name: "node-1".into(),
                        device_name: "gpu-3".into(),
                        ..Default::default()
                    }],
                }],
                ..Default::default()
            }],
            ..Default::default()
        },
    ]);
    state.set_allocatable(vec![pr::ContainerDevices {
        resource_name: "nvidia.com/gpu".into(),
        device_ids: vec!["GPU-a".into(), "GPU-b".into(), "GPU-c".into()],
        topology: None,
    }]);
    let kubelet = serve(&socket, PodResourcesServer { state: state.clone() }.router()).expect("serve");

    let mut client = PodResourcesClient::new(&socket, Duration::from_millis(10));
    let map = client.list().await.expect("list");
    assert_eq!(
        map,
        vec![
            binding("ml", "trainer-0", "trainer", "nvidia.com/gpu", "GPU-a"),
            binding("ml", "trainer-0", "trainer", "nvidia.com/gpu", "GPU-b"),
            binding("serving", "infer-0", "server", "gpu.nvidia.com", "node-1/gpu-3"),
        ]
    );
    let allocatable = client.allocatable().await.expect("allocatable");
    assert_eq!(allocatable.len(), 3);
    assert_eq!(
        allocatable[2],
        AllocatableDevice { resource: "nvidia.com/gpu".into(), device_id: "GPU-c".into() }
    );

    // The kubelet restarts: its socket disappears and a new one is created at the same path.
    kubelet.stop().await;
    assert!(client.list().await.is_err(), "no kubelet, no answer");
    let restarted = PodResourcesState::default();
    restarted.set_pods(vec![gpu_pod("ml", "trainer-0", &["GPU-c"])]);
    let kubelet = serve(&socket, PodResourcesServer { state: restarted }.router()).expect("serve again");
    let deadline = tokio::time::Instant::now() + WAIT;
    let map = loop {
        match client.list().await {
            Ok(map) => break map,
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("retrying after: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the client never reached the re-created socket: {e}"),
        }
    };
    assert_eq!(map, vec![binding("ml", "trainer-0", "trainer", "nvidia.com/gpu", "GPU-c")]);
    kubelet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_health_is_followed_through_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The kubelet's own socket in the directory is not a plugin.
    std::fs::write(dir.path().join("kubelet.sock"), b"").expect("write");
    let socket = dir.path().join("nvidia-gpu.sock");
    let (plugin, health) =
        DevicePluginServer::new(vec![device("GPU-a", true), device("GPU-b", true)], "NVIDIA_VISIBLE_DEVICES");
    let server = serve(&socket, plugin.router()).expect("serve plugin");
    assert_eq!(plugin_sockets(dir.path()).expect("scan"), vec![socket.clone()]);

    let (tx, mut rx) = mpsc::channel(64);
    let mut watcher = PluginWatcher::new(dir.path());
    watcher.rescan = Duration::from_millis(50);
    watcher.retry = Duration::from_millis(50);
    let task = watcher.spawn(tx);

    let devices = next_devices(&mut rx, &socket).await;
    assert_eq!(
        devices,
        vec![
            PluginDevice { id: "GPU-a".into(), healthy: true },
            PluginDevice { id: "GPU-b".into(), healthy: true }
        ]
    );

    // The plugin marks a device Unhealthy: the change arrives as a new snapshot.
    health.send(vec![device("GPU-a", true), device("GPU-b", false)]).expect("send");
    let devices = next_devices(&mut rx, &socket).await;
    assert_eq!(devices[1], PluginDevice { id: "GPU-b".into(), healthy: false });

    // The plugin process exits (its streams end, its socket is removed): the source goes blind,
    // it does not fail devices.
    drop(health);
    server.stop().await;
    let mut saw_blind = false;
    for _ in 0..4 {
        match next_event(&mut rx).await {
            PluginEvent::Disconnected { .. } | PluginEvent::Removed { .. } => {
                saw_blind = true;
                break;
            }
            PluginEvent::Devices { .. } => {}
        }
    }
    assert!(saw_blind, "a vanished plugin is reported as gone");

    // It comes back on the same path with its devices healthy again.
    let (plugin, _health2) = DevicePluginServer::new(vec![device("GPU-a", true), device("GPU-b", true)], "X");
    let server = serve(&socket, plugin.router()).expect("serve plugin again");
    let devices = next_devices(&mut rx, &socket).await;
    assert!(devices.iter().all(|d| d.healthy), "restarted plugin followed: {devices:?}");

    task.abort();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_and_watch_stream_that_ends_is_reopened() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("fake.sock");
    let (plugin, health) = DevicePluginServer::new(vec![device("d0", true)], "FAKE");
    let server = serve(&socket, plugin.router()).expect("serve");
    let (tx, mut rx) = mpsc::channel(64);
    let mut watcher = PluginWatcher::new(dir.path());
    watcher.rescan = Duration::from_millis(50);
    watcher.retry = Duration::from_millis(50);
    let task = watcher.spawn(tx);
    next_devices(&mut rx, &socket).await;

    // Dropping the sender ends every ListAndWatch stream while the server stays up.
    drop(health);
    let mut disconnected = false;
    loop {
        match next_event(&mut rx).await {
            PluginEvent::Disconnected { reason, .. } => {
                assert!(reason.contains("ended"), "{reason}");
                disconnected = true;
            }
            PluginEvent::Devices { devices, .. } if disconnected => {
                assert_eq!(devices, vec![PluginDevice { id: "d0".into(), healthy: true }]);
                break; // re-opened and got the plugin's current devices again
            }
            _ => {}
        }
    }
    task.abort();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_registers_with_the_kubelet() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kubelet_socket = dir.path().join("kubelet.sock");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let kubelet = serve(&kubelet_socket, RegistrationServer { registrations: tx }.router()).expect("serve");
    register(&kubelet_socket, "devheal-fake.sock", "devheal.io/fake-gpu", dp::DevicePluginOptions::default())
        .await
        .expect("register");
    let request = tokio::time::timeout(WAIT, rx.recv()).await.expect("in time").expect("a registration");
    assert_eq!(request.version, "v1beta1");
    assert_eq!(request.endpoint, "devheal-fake.sock");
    assert_eq!(request.resource_name, "devheal.io/fake-gpu");
    kubelet.stop().await;
}
