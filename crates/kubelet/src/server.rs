//! In-process servers for the kubelet APIs on Unix sockets.
//!
//! They play the kubelet and device plugins in tests, and [`DevicePluginServer`] is also what the
//! agent's fake-device mode serves to a real kubelet.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{UnixListenerStream, WatchStream};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::KubeletError;
use crate::api::deviceplugin_v1beta1 as dp;
use crate::api::podresources_v1 as pr;

/// A running server; dropping the handle does not stop it, [`ServerHandle::stop`] does.
pub struct ServerHandle {
    pub socket: PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    join: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl ServerHandle {
    /// Stop serving and remove the socket file, as a process that exits would leave it gone.
    /// Open streams get a short grace period to finish; then the server is dropped.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = std::fs::remove_file(&self.socket);
        if tokio::time::timeout(std::time::Duration::from_secs(1), &mut self.join).await.is_err() {
            self.join.abort();
        }
    }
}

/// Serve `router` on a fresh Unix socket at `socket` (an old socket file there is removed first,
/// as the kubelet does).
pub fn serve(socket: &Path, router: tonic::transport::server::Router) -> Result<ServerHandle, KubeletError> {
    let _ = std::fs::remove_file(socket);
    let err = |e: std::io::Error| KubeletError::Serve {
        socket: socket.display().to_string(),
        message: e.to_string(),
    };
    let listener = UnixListener::bind(socket).map_err(err)?;
    let (tx, rx) = oneshot::channel::<()>();
    let incoming = UnixListenerStream::new(listener);
    let join = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
        let _ = rx.await;
    }));
    Ok(ServerHandle { socket: socket.to_path_buf(), shutdown: Some(tx), join })
}

/// What a PodResources server answers; change it at any time.
#[derive(Clone, Default)]
pub struct PodResourcesState {
    inner: Arc<Mutex<(Vec<pr::PodResources>, Vec<pr::ContainerDevices>)>>,
}

impl PodResourcesState {
    pub fn set_pods(&self, pods: Vec<pr::PodResources>) {
        if let Ok(mut guard) = self.inner.lock() {
            guard.0 = pods;
        }
    }

    pub fn set_allocatable(&self, devices: Vec<pr::ContainerDevices>) {
        if let Ok(mut guard) = self.inner.lock() {
            guard.1 = devices;
        }
    }

    fn snapshot(&self) -> Result<(Vec<pr::PodResources>, Vec<pr::ContainerDevices>), Status> {
        self.inner.lock().map(|g| g.clone()).map_err(|_| Status::internal("state poisoned"))
    }
}

/// The kubelet's PodResources service over [`PodResourcesState`].
#[derive(Clone, Default)]
pub struct PodResourcesServer {
    pub state: PodResourcesState,
}

impl PodResourcesServer {
    pub fn router(self) -> tonic::transport::server::Router {
        tonic::transport::Server::builder()
            .add_service(pr::pod_resources_lister_server::PodResourcesListerServer::new(self))
    }
}

#[tonic::async_trait]
impl pr::pod_resources_lister_server::PodResourcesLister for PodResourcesServer {
    async fn list(
        &self,
        _request: Request<pr::ListPodResourcesRequest>,
    ) -> Result<Response<pr::ListPodResourcesResponse>, Status> {
        let (pods, _) = self.state.snapshot()?;
        Ok(Response::new(pr::ListPodResourcesResponse { pod_resources: pods }))
    }

    async fn get_allocatable_resources(
        &self,
        _request: Request<pr::AllocatableResourcesRequest>,
    ) -> Result<Response<pr::AllocatableResourcesResponse>, Status> {
        let (_, devices) = self.state.snapshot()?;
        Ok(Response::new(pr::AllocatableResourcesResponse { devices, cpu_ids: vec![], memory: vec![] }))
    }

    async fn get(
        &self,
        request: Request<pr::GetPodResourcesRequest>,
    ) -> Result<Response<pr::GetPodResourcesResponse>, Status> {
        let want = request.into_inner();
        let (pods, _) = self.state.snapshot()?;
        let pod = pods
            .into_iter()
            .find(|p| p.name == want.pod_name && p.namespace == want.pod_namespace)
            .ok_or_else(|| {
                Status::not_found(format!("pod {}/{} not found", want.pod_namespace, want.pod_name))
            })?;
        Ok(Response::new(pr::GetPodResourcesResponse { pod_resources: Some(pod) }))
    }
}

/// A device plugin whose devices (and their health) are set through a watch channel; every
/// change is streamed to `ListAndWatch` clients, as a real plugin does.
#[derive(Clone)]
pub struct DevicePluginServer {
    devices: watch::Receiver<Vec<dp::Device>>,
    /// Environment variable through which `Allocate` hands the device ids to the container.
    pub env_name: String,
}

impl DevicePluginServer {
    /// The server and the sender that changes what it reports.
    pub fn new(initial: Vec<dp::Device>, env_name: &str) -> (Self, watch::Sender<Vec<dp::Device>>) {
        let (tx, rx) = watch::channel(initial);
        (DevicePluginServer { devices: rx, env_name: env_name.to_string() }, tx)
    }

    pub fn router(self) -> tonic::transport::server::Router {
        tonic::transport::Server::builder()
            .add_service(dp::device_plugin_server::DevicePluginServer::new(self))
    }
}

type DeviceStream = Pin<Box<dyn Stream<Item = Result<dp::ListAndWatchResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl dp::device_plugin_server::DevicePlugin for DevicePluginServer {
    async fn get_device_plugin_options(
        &self,
        _request: Request<dp::Empty>,
    ) -> Result<Response<dp::DevicePluginOptions>, Status> {
        Ok(Response::new(dp::DevicePluginOptions::default()))
    }

    type ListAndWatchStream = DeviceStream;

    async fn list_and_watch(&self, _request: Request<dp::Empty>) -> Result<Response<DeviceStream>, Status> {
        let stream =
            WatchStream::new(self.devices.clone()).map(|devices| Ok(dp::ListAndWatchResponse { devices }));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_preferred_allocation(
        &self,
        request: Request<dp::PreferredAllocationRequest>,
    ) -> Result<Response<dp::PreferredAllocationResponse>, Status> {
        let container_responses = request
            .into_inner()
            .container_requests
            .into_iter()
            .map(|c| {
                let mut ids = c.must_include_device_i_ds.clone();
                for id in c.available_device_i_ds {
                    if ids.len() >= c.allocation_size.max(0) as usize {
                        break;
                    }
                    if !ids.contains(&id) {
                        ids.push(id);
                    }
                }
                dp::ContainerPreferredAllocationResponse { device_i_ds: ids }
            })
            .collect();
        Ok(Response::new(dp::PreferredAllocationResponse { container_responses }))
    }

    async fn allocate(
        &self,
        request: Request<dp::AllocateRequest>,
    ) -> Result<Response<dp::AllocateResponse>, Status> {
        let known: Vec<String> = self.devices.borrow().iter().map(|d| d.id.clone()).collect();
        let mut container_responses = Vec::new();
        for c in request.into_inner().container_requests {
            if let Some(unknown) = c.devices_ids.iter().find(|id| !known.contains(id)) {
                return Err(Status::invalid_argument(format!("unknown device {unknown}")));
            }
            let mut response = dp::ContainerAllocateResponse::default();
            response.envs.insert(self.env_name.clone(), c.devices_ids.join(","));
            container_responses.push(response);
        }
        Ok(Response::new(dp::AllocateResponse { container_responses }))
    }

    async fn pre_start_container(
        &self,
        _request: Request<dp::PreStartContainerRequest>,
    ) -> Result<Response<dp::PreStartContainerResponse>, Status> {
        Ok(Response::new(dp::PreStartContainerResponse {}))
    }
}

/// The kubelet's Registration service: forwards each registration to a channel.
#[derive(Clone)]
pub struct RegistrationServer {
    pub registrations: mpsc::UnboundedSender<dp::RegisterRequest>,
}

impl RegistrationServer {
    pub fn router(self) -> tonic::transport::server::Router {
        tonic::transport::Server::builder()
            .add_service(dp::registration_server::RegistrationServer::new(self))
    }
}

#[tonic::async_trait]
impl dp::registration_server::Registration for RegistrationServer {
    async fn register(&self, request: Request<dp::RegisterRequest>) -> Result<Response<dp::Empty>, Status> {
        let request = request.into_inner();
        if request.version != crate::api::DEVICE_PLUGIN_VERSION {
            return Err(Status::invalid_argument(format!("unsupported version {}", request.version)));
        }
        self.registrations.send(request).map_err(|_| Status::unavailable("kubelet is shutting down"))?;
        Ok(Response::new(dp::Empty {}))
    }
}
