//! The kubelet gRPC clients against in-process servers on temporary Unix sockets: the device map
//! and health are right, a kubelet socket re-creation and a plugin restart are survived, and a
//! `ListAndWatch` stream that ends is re-opened.

use std::time::Duration;

use devheal_kubelet::api::deviceplugin_v1beta1 as dp;
use devheal_kubelet::api::podresources_v1 as pr;
use devheal_kubelet::deviceplugin::register;
use devheal_kubelet::podresources::{AllocatableDevice, DeviceBinding, PodResourcesClient};
use devheal_kubelet::server::{PodResourcesServer, PodResourcesState, RegistrationServer, serve};
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
