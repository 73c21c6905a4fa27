//! The long-running agent against in-process servers on temporary Unix sockets playing the
//! kubelet (PodResources, Registration, the Node's device counts) and device plugins, and a mock
//! API server on 127.0.0.1 for the real Kubernetes publisher: the device map and plugin-side
//! health come from the kubelet and survive its restart, the agent opens no `ListAndWatch` of its
//! own (a plugin that feeds every stream from one channel loses nothing to it), and the fake
//! devices register, re-register and fail, degrade and recover on request.

mod common;

use std::time::Duration;

use common::{ChannelPublisher, MockApiServer, applied_status, health_of, http, pod_resources, test_config};
use devheal_agent::health::TrackerConfig;
use devheal_agent::kubelet_devices::{NodeCounts, ResourceCounts};
use devheal_agent::publish::KubePublisher;
use devheal_agent::run::start;
use devheal_core::HealthSource;
use devheal_k8s::crd::{DeviceHealthState, NodeDeviceHealth, NodeDeviceHealthStatus};
use devheal_kubelet::api::deviceplugin_v1beta1 as dp;
use devheal_kubelet::api::podresources_v1 as pr;
use devheal_kubelet::server::{PodResourcesServer, PodResourcesState, RegistrationServer, serve};
use tokio::sync::{mpsc, watch};

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// Liveness bound for every wait, not a performance target.
const WAIT: Duration = Duration::from_secs(20);
const RESOURCE: &str = "devheal.io/fake-gpu";

fn device(id: &str, healthy: bool) -> dp::Device {
    dp::Device { id: id.into(), health: if healthy { "Healthy" } else { "Unhealthy" }.into(), topology: None }
}

fn pod(name: &str, ids: &[&str]) -> pr::PodResources {
    pod_resources("ml", name, "trainer", RESOURCE, ids)
}

/// Wait for a published status for which `ok` holds (within [`WAIT`]).
async fn wait_for(
    rx: &mut mpsc::UnboundedReceiver<NodeDeviceHealth>,
    what: &str,
    ok: impl Fn(&NodeDeviceHealthStatus) -> bool,
) -> NodeDeviceHealthStatus {
    common::wait_for_status(rx, WAIT, what, ok).await
}

fn pods_of(status: &NodeDeviceHealthStatus, id: &str) -> Vec<String> {
    status
        .devices
        .iter()
        .find(|d| d.id == id)
        .map(|d| d.pods.iter().map(|p| p.name.clone()).collect())
        .unwrap_or_default()
}

fn source_available(status: &NodeDeviceHealthStatus, name: &str) -> Option<bool> {
    status.sources.iter().find(|s| s.name == name).map(|s| s.available)
}

/// The kubelet's state: `pods`, and the devices it offers (those it counts healthy).
fn kubelet_offering(pods: Vec<pr::PodResources>, offered: &[&str]) -> PodResourcesState {
    let state = PodResourcesState::default();
    state.set_pods(pods);
    state.set_allocatable(vec![pr::ContainerDevices {
        resource_name: RESOURCE.into(),
        device_ids: offered.iter().map(|d| d.to_string()).collect(),
        topology: None,
    }]);
    state
}

fn counts(capacity: u64, allocatable: u64) -> Option<NodeCounts> {
    Some(NodeCounts::from([(RESOURCE.to_string(), ResourceCounts { capacity, allocatable })]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_health_comes_from_the_kubelet_and_survives_kubelet_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path(), "node-a");
    // fake-1's plugin reported it Unhealthy: the kubelet offers only fake-0, and the Node counts
    // two with one allocatable. trainer-3 still holds fake-1.
    let (node_counts, counts_rx) = watch::channel(counts(2, 1));
    config.node_counts = Some(counts_rx);
    let state = kubelet_offering(vec![pod("trainer-3", &["fake-1"])], &["fake-0"]);
    let kubelet =
        serve(&config.paths.pod_resources_socket, PodResourcesServer { state: state.clone() }.router())
            .expect("serve kubelet");

    let (statuses, mut rx) = mpsc::unbounded_channel();
    let (events, mut event_rx) = mpsc::unbounded_channel();
    let agent = start(config.clone(), ChannelPublisher { statuses, events }).await.expect("agent starts");

    let status = wait_for(&mut rx, "fake-1 Unhealthy with trainer-3", |s| {
        health_of(s, "fake-0") == Some(DeviceHealthState::Healthy)
            && health_of(s, "fake-1") == Some(DeviceHealthState::Unhealthy)
            && pods_of(s, "fake-1") == ["trainer-3"]
            && s.devices.iter().all(|d| d.resource == RESOURCE)
    })
    .await;
    let fake1 = status.devices.iter().find(|d| d.id == "fake-1").expect("fake-1");
    assert_eq!(fake1.reasons[0].source, HealthSource::DevicePlugin);
    assert!(fake1.reasons[0].message.contains("capacity 2, allocatable 1"), "{:?}", fake1.reasons);
    assert_eq!(source_available(&status, "pod_resources"), Some(true));
    assert_eq!(source_available(&status, "device_plugins"), Some(true));
    let transition = tokio::time::timeout(WAIT, event_rx.recv()).await.expect("an event").expect("open");
    assert_eq!((transition.device.as_str(), transition.reason()), ("fake-1", "DeviceUnhealthy"));
    assert_eq!(transition.pods, vec!["ml/trainer-3"]);

    // /metrics and /healthz.
    let addr = agent.metrics_addr.expect("metrics served");
    let (code, body) =
        tokio::task::spawn_blocking(move || http(addr, "GET", "/metrics")).await.expect("join");
    assert_eq!(code, 200);
    assert!(body.contains("devheal_agent_devices{health=\"Unhealthy\"} 1"), "{body}");
    assert!(body.contains("devheal_agent_source_available{source=\"pod_resources\"} 1"), "{body}");
    // Per device, with the pod bound to it, labelled as the DCGM exporter labels GPUs and pods.
    let bound = body
        .lines()
        .find(|l| l.starts_with("devheal_agent_device_health{") && l.contains("UUID=\"fake-1\""))
        .unwrap_or_default();
    assert!(bound.contains("namespace=\"ml\"") && bound.contains("pod=\"trainer-3\""), "{body}");
    assert!(bound.ends_with(" 2"), "Unhealthy is 2: {bound}");
    assert!(
        body.lines().any(|l| l.starts_with("devheal_agent_device_health{")
            && l.contains("UUID=\"fake-0\"")
            && l.ends_with(" 0")),
        "{body}"
    );
    assert!(body.contains("devheal_agent_publishes_total{kind=\"status\"}"), "{body}");
    let (code, _) = tokio::task::spawn_blocking(move || http(addr, "GET", "/healthz")).await.expect("join");
    assert_eq!(code, 200);
    let (code, _) = tokio::task::spawn_blocking(move || http(addr, "POST", "/fake/fail?device=fake-0"))
        .await
        .expect("join");
    assert_eq!(code, 404, "no fake devices in this agent");

    // The kubelet restarts: its socket is re-created with a new map (trainer-4 on fake-0), and
    // fake-1's plugin reports it Healthy again: offered, counted allocatable. Probation follows.
    kubelet.stop().await;
    let state = kubelet_offering(vec![pod("trainer-4", &["fake-0"])], &["fake-0", "fake-1"]);
    let kubelet =
        serve(&config.paths.pod_resources_socket, PodResourcesServer { state: state.clone() }.router())
            .expect("serve kubelet again");
    node_counts.send_replace(counts(2, 2));
    let status = wait_for(&mut rx, "the new kubelet's map, fake-1 on probation", |s| {
        pods_of(s, "fake-0") == ["trainer-4"]
            && pods_of(s, "fake-1").is_empty()
            && health_of(s, "fake-1") == Some(DeviceHealthState::Degraded)
    })
    .await;
    let fake1 = status.devices.iter().find(|d| d.id == "fake-1").expect("fake-1");
    assert!(fake1.reasons[0].message.starts_with("probation"), "{:?}", fake1.reasons);

    // fake-0 is no longer offered while the Node's counts are not known (no API server): that
    // cannot tell a failed device from a removed one, so fake-0 is blind here, not failed.
    node_counts.send_replace(None);
    state.set_allocatable(vec![pr::ContainerDevices {
        resource_name: RESOURCE.into(),
        device_ids: vec!["fake-1".into()],
        topology: None,
    }]);
    let status = wait_for(&mut rx, "fake-0 Unknown, not Unhealthy", |s| {
        health_of(s, "fake-0") == Some(DeviceHealthState::Unknown)
    })
    .await;
    let source = status.sources.iter().find(|s| s.name == "device_plugins").expect("the source");
    assert!(source.message.as_deref().unwrap_or("").contains("not known"), "{source:?}");
    // Counts again, with one unhealthy: fake-0's plugin reported it Unhealthy.
    node_counts.send_replace(counts(2, 1));
    wait_for(&mut rx, "fake-0 Unhealthy once the counts say so", |s| {
        health_of(s, "fake-0") == Some(DeviceHealthState::Unhealthy)
    })
    .await;

    agent.stop().await;
    kubelet.stop().await;
}

/// NVIDIA's device plugin feeds every open `ListAndWatch` stream from one shared health channel,
/// so a second reader takes updates away from the kubelet. With the agent running beside the
/// kubelet's stream, the kubelet's stream must still receive every change, and the plugin must
/// see no stream but the kubelet's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubelets_plugin_stream_gets_every_change_while_the_agent_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = test_config(dir.path(), "node-s");
    std::fs::create_dir(&config.paths.device_plugin_dir).expect("mkdir");
    let plugin_socket = config.paths.device_plugin_dir.join("nvidia-gpu.sock");
    let (changes, shared) = mpsc::channel::<Vec<dp::Device>>(64);
    let plugin = SharedChannelPlugin {
        health: Arc::new(tokio::sync::Mutex::new(shared)),
        streams: Arc::new(AtomicUsize::new(0)),
    };
    let streams = Arc::clone(&plugin.streams);
    let plugin_server = serve(
        &plugin_socket,
        tonic::transport::Server::builder()
            .add_service(dp::device_plugin_server::DevicePluginServer::new(plugin)),
    )
    .expect("serve the plugin");
    let kubelet = serve(
        &config.paths.pod_resources_socket,
        PodResourcesServer { state: kubelet_offering(vec![], &["gpu-0", "gpu-1"]) }.router(),
    )
    .expect("serve PodResources");

    // The kubelet's stream.
    let mut client =
        dp::device_plugin_client::DevicePluginClient::new(devheal_kubelet::uds::channel(&plugin_socket));
    let mut stream = client.list_and_watch(dp::Empty {}).await.expect("ListAndWatch").into_inner();
    let first = stream.message().await.expect("a message").expect("the initial list");
    assert_eq!(first.devices.len(), 2);

    let (statuses, mut rx) = mpsc::unbounded_channel();
    let (events, _event_rx) = mpsc::unbounded_channel();
    let agent = start(config.clone(), ChannelPublisher { statuses, events }).await.expect("agent starts");
    wait_for(&mut rx, "the agent publishes both devices", |s| s.devices.len() == 2).await;
    // Time for a stream of the agent's own to open, if it opened one.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    const CHANGES: usize = 20;
    for i in 0..CHANGES {
        let healthy = i % 2 == 1;
        changes.send(vec![device("gpu-1", healthy)]).await.expect("the plugin's channel");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut seen = 0;
    while seen < CHANGES {
        match tokio::time::timeout(Duration::from_secs(3), stream.message()).await {
            Ok(Ok(Some(_))) => seen += 1,
            _ => break,
        }
    }
    assert_eq!(seen, CHANGES, "the kubelet's stream missed {} change(s)", CHANGES - seen);
    assert_eq!(streams.load(Ordering::SeqCst), 1, "only the kubelet opened ListAndWatch");

    agent.stop().await;
    plugin_server.stop().await;
    kubelet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_devices_register_fail_and_recover_through_the_kube_publisher() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path(), "node-b");
    config.fake_devices = 2;
    config.tracker =
        TrackerConfig { probation: devheal_core::Duration::from_secs(600), check_after_probation: false };
    std::fs::create_dir(&config.paths.device_plugin_dir).expect("mkdir");
    // The kubelet: Registration on device-plugins/kubelet.sock and PodResources.
    let (reg_tx, mut registrations) = mpsc::unbounded_channel();
    let registration_socket = config.paths.device_plugin_dir.join("kubelet.sock");
    let registration =
        serve(&registration_socket, RegistrationServer { registrations: reg_tx.clone() }.router())
            .expect("serve");
    let state = PodResourcesState::default();
    state.set_pods(vec![pod_resources("serving", "infer-0", "server", RESOURCE, &["fake-gpu-1"])]);
    let kubelet = serve(&config.paths.pod_resources_socket, PodResourcesServer { state }.router())
        .expect("serve kubelet");

    let mut api = MockApiServer::start().await;
    let agent = start(config.clone(), KubePublisher::new(api.client())).await.expect("agent starts");

    // The fake plugin registers with the kubelet.
    let request =
        tokio::time::timeout(WAIT, registrations.recv()).await.expect("registered in time").expect("open");
    assert_eq!(
        (request.resource_name.as_str(), request.endpoint.as_str()),
        (RESOURCE, "devheal-fake-gpu.sock")
    );

    // Healthy first.
    api.next_matching(WAIT, |r| {
        applied_status(r).filter(|s| {
            s.devices.len() == 2 && s.devices.iter().all(|d| d.health == DeviceHealthState::Healthy)
        })
    })
    .await
    .expect("both fake devices published Healthy");

    // Fail fake-gpu-1 through the HTTP endpoint.
    let addr = agent.metrics_addr.expect("served");
    let (code, body) =
        tokio::task::spawn_blocking(move || http(addr, "POST", "/fake/fail?device=fake-gpu-1"))
            .await
            .expect("join");
    assert_eq!(code, 200, "{body}");
    let domain = devheal_agent::fake::fake_pci_domain("node-b");
    assert!(body.contains(&format!("Xid (PCI:{domain}:00:01): 79")), "{body}");
    let (_, status) = api
        .next_matching(WAIT, |r| {
            applied_status(r).filter(|s| {
                s.devices.iter().any(|d| {
                    d.id == "fake-gpu-1"
                        && d.health == DeviceHealthState::Unhealthy
                        && d.reasons.iter().any(|x| x.source == HealthSource::KernelLog && x.code == Some(79))
                })
            })
        })
        .await
        .expect("fake-gpu-1 published Unhealthy with the Xid");
    let failed = status.devices.iter().find(|d| d.id == "fake-gpu-1").expect("device");
    assert_eq!(failed.pci_address, Some(format!("{domain}:00:01.0")));
    assert_eq!(failed.pods[0].name, "infer-0");
    assert_eq!(status.summary.as_ref().map(|s| s.unhealthy), Some(1));

    // What the requests carry (server-side apply of the object, its status and the node
    // condition; the Event on the Node) is checked on the real API server: crates/cli/tests/e2e
    // (a_fake_device_failure_reaches_the_controllers_actions).

    // Degrade fake-gpu-0; recover fake-gpu-1 (a reset: probation, Degraded).
    let (code, _) =
        tokio::task::spawn_blocking(move || http(addr, "POST", "/fake/degrade?device=fake-gpu-0"))
            .await
            .expect("join");
    assert_eq!(code, 200);
    let (code, _) =
        tokio::task::spawn_blocking(move || http(addr, "POST", "/fake/recover?device=fake-gpu-1"))
            .await
            .expect("join");
    assert_eq!(code, 200);
    api.next_matching(WAIT, |r| {
        applied_status(r).filter(|s| {
            s.devices.iter().all(|d| d.health == DeviceHealthState::Degraded)
                && s.devices
                    .iter()
                    .any(|d| d.id == "fake-gpu-0" && d.reasons.iter().any(|x| x.code == Some(92)))
        })
    })
    .await
    .expect("fake-gpu-0 degraded by Xid 92, fake-gpu-1 on probation after its reset");
    let (code, _) = tokio::task::spawn_blocking(move || http(addr, "POST", "/fake/fail?device=gpu-9"))
        .await
        .expect("join");
    assert_eq!(code, 404);
    let (code, _) =
        tokio::task::spawn_blocking(move || http(addr, "POST", "/fake/fail")).await.expect("join");
    assert_eq!(code, 400);

    // A kubelet restart deletes every socket in the directory: the plugin serves and registers again.
    std::fs::remove_file(config.paths.device_plugin_dir.join("devheal-fake-gpu.sock"))
        .expect("remove the plugin socket");
    let again =
        tokio::time::timeout(WAIT, registrations.recv()).await.expect("re-registered in time").expect("open");
    assert_eq!(again.resource_name, RESOURCE);
    assert!(config.paths.device_plugin_dir.join("devheal-fake-gpu.sock").exists());

    // The kubelet restarts and re-creates only its own socket: the plugin registers again.
    registration.stop().await;
    let registration =
        serve(&registration_socket, RegistrationServer { registrations: reg_tx.clone() }.router())
            .expect("serve again");
    let again = tokio::time::timeout(WAIT, registrations.recv())
        .await
        .expect("registered with the new kubelet")
        .expect("open");
    assert_eq!(again.endpoint, "devheal-fake-gpu.sock");

    agent.stop().await;
    registration.stop().await;
    kubelet.stop().await;
}

/// A device plugin that, like NVIDIA's, sends each new stream the device list and then feeds
/// every open stream from one shared channel of health changes: a change taken by one stream is
/// never sent on another.
#[derive(Clone)]
struct SharedChannelPlugin {
    health: Arc<tokio::sync::Mutex<mpsc::Receiver<Vec<dp::Device>>>>,
    streams: Arc<AtomicUsize>,
}

type DeviceStream = Pin<Box<dyn Stream<Item = Result<dp::ListAndWatchResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl dp::device_plugin_server::DevicePlugin for SharedChannelPlugin {
    async fn get_device_plugin_options(
        &self,
        _: Request<dp::Empty>,
    ) -> Result<Response<dp::DevicePluginOptions>, Status> {
        Ok(Response::new(dp::DevicePluginOptions::default()))
    }

    type ListAndWatchStream = DeviceStream;

    async fn list_and_watch(&self, _: Request<dp::Empty>) -> Result<Response<DeviceStream>, Status> {
        self.streams.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = mpsc::channel(16);
        let initial = vec![device("gpu-0", true), device("gpu-1", true)];
        let health = Arc::clone(&self.health);
        tokio::spawn(async move {
            if tx.send(Ok(dp::ListAndWatchResponse { devices: initial })).await.is_err() {
                return;
            }
            loop {
                let Some(devices) = health.lock().await.recv().await else { return };
                if tx.send(Ok(dp::ListAndWatchResponse { devices })).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn get_preferred_allocation(
        &self,
        _: Request<dp::PreferredAllocationRequest>,
    ) -> Result<Response<dp::PreferredAllocationResponse>, Status> {
        Err(Status::unimplemented("not needed"))
    }

    async fn allocate(
        &self,
        _: Request<dp::AllocateRequest>,
    ) -> Result<Response<dp::AllocateResponse>, Status> {
        Err(Status::unimplemented("not needed"))
    }

    async fn pre_start_container(
        &self,
        _: Request<dp::PreStartContainerRequest>,
    ) -> Result<Response<dp::PreStartContainerResponse>, Status> {
        Ok(Response::new(dp::PreStartContainerResponse {}))
    }
}

/// A device plugin DaemonSet pod as the pod watch sees it on this node.
fn plugin_pod(name: &str, image: &str) -> k8s_openapi::api::core::v1::Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": "gpu-operator",
            "labels": {"app": "nvidia-device-plugin-daemonset", "controller-revision-hash": "6b7c"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet",
                                 "name": "nvidia-device-plugin-daemonset", "uid": "u", "controller": true}]},
        "spec": {"containers": [{"name": "plugin", "image": image}]},
        "status": {"phase": "Running"}
    }))
    .expect("a pod")
}

/// The device plugin's pod on the node gives the version the agent reports (its
/// `device_plugin_pod` source, which the controller hands the engine's version canary); a new
/// pod after an upgrade changes it, and with no plugin pod the source is gone (the Node's
/// labels speak again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_reports_the_device_plugin_version_of_the_pod_on_its_node() {
    use devheal_agent::stack::{Selector, stack_pod};
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path(), "node-a");
    let selectors = Selector::defaults();
    let stack = |pods: &[k8s_openapi::api::core::v1::Pod]| -> Vec<devheal_agent::stack::StackPod> {
        pods.iter().filter_map(|p| stack_pod(p, &selectors)).collect()
    };
    let (pods_tx, pods_rx) =
        watch::channel(stack(&[plugin_pod("nvdp-a", "nvcr.io/nvidia/k8s-device-plugin:v0.17.0")]));
    config.stack_pods = Some(pods_rx);
    let (statuses, mut rx) = mpsc::unbounded_channel();
    let (events, _event_rx) = mpsc::unbounded_channel();
    let agent = start(config, ChannelPublisher { statuses, events }).await.expect("agent starts");
    let version = |s: &NodeDeviceHealthStatus| {
        s.sources
            .iter()
            .find(|x| x.name == "device_plugin_pod")
            .map(|x| (x.version.clone(), x.message.clone()))
    };

    let status = wait_for(&mut rx, "the plugin's version", |s| {
        version(s).is_some_and(|(v, _)| v.as_deref() == Some("v0.17.0"))
    })
    .await;
    let (_, message) = version(&status).expect("the source");
    assert!(
        message
            .as_deref()
            .unwrap_or("")
            .contains("gpu-operator/nvdp-a (nvidia-device-plugin-daemonset v0.17.0, revision 6b7c"),
        "{message:?}"
    );
    pods_tx.send_replace(stack(&[plugin_pod("nvdp-b", "nvcr.io/nvidia/k8s-device-plugin:v0.17.1")]));
    wait_for(&mut rx, "the upgraded plugin's version", |s| {
        version(s).is_some_and(|(v, _)| v.as_deref() == Some("v0.17.1"))
    })
    .await;
    pods_tx.send_replace(Vec::new());
    wait_for(&mut rx, "no plugin pod, no version", |s| version(s).is_none()).await;
    agent.stop().await;
}
