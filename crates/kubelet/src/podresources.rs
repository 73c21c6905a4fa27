//! The device ↔ pod map from the kubelet's PodResources API.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;
use tonic::transport::Channel;

use crate::KubeletError;
use crate::api::podresources_v1::pod_resources_lister_client::PodResourcesListerClient;
use crate::api::podresources_v1::{AllocatableResourcesRequest, ListPodResourcesRequest, PodResources};
use crate::uds;

/// One device held by one container.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceBinding {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    /// The extended resource name (`nvidia.com/gpu`), or the DRA driver name for claimed devices.
    pub resource: String,
    /// The device plugin's device id, or `<pool>/<device>` for a DRA device.
    pub device_id: String,
}

/// A device the node can allocate.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AllocatableDevice {
    pub resource: String,
    pub device_id: String,
}

/// Client of the PodResources API that spaces its calls so it stays far inside the kubelet's
/// server-side rate limit (100 QPS, burst 10).
pub struct PodResourcesClient {
    socket: PathBuf,
    client: PodResourcesListerClient<Channel>,
    min_interval: Duration,
    last_call: Option<Instant>,
}

impl PodResourcesClient {
    /// `min_interval` is the least time between two calls (the default agent uses 100 ms).
    pub fn new(socket: &Path, min_interval: Duration) -> Self {
        PodResourcesClient {
            socket: socket.to_path_buf(),
            client: PodResourcesListerClient::new(uds::channel(socket)),
            min_interval,
            last_call: None,
        }
    }

    async fn pace(&mut self) {
        if let Some(last) = self.last_call {
            tokio::time::sleep_until(last + self.min_interval).await;
        }
        self.last_call = Some(Instant::now());
    }

    fn call_error(&self, call: &'static str, status: tonic::Status) -> KubeletError {
        KubeletError::Call { call, socket: self.socket.display().to_string(), status: Box::new(status) }
    }

    /// Every device held by every container on the node, sorted.
    pub async fn list(&mut self) -> Result<Vec<DeviceBinding>, KubeletError> {
        self.pace().await;
        let response = self
            .client
            .list(ListPodResourcesRequest {})
            .await
            .map_err(|s| self.call_error("PodResourcesLister/List", s))?;
        let mut bindings = Vec::new();
        for pod in &response.get_ref().pod_resources {
            push_bindings(pod, &mut bindings);
        }
        bindings.sort();
        Ok(bindings)
    }

    /// Every device-plugin device the node can allocate, sorted.
    pub async fn allocatable(&mut self) -> Result<Vec<AllocatableDevice>, KubeletError> {
        self.pace().await;
        let response = self
            .client
            .get_allocatable_resources(AllocatableResourcesRequest {})
            .await
            .map_err(|s| self.call_error("PodResourcesLister/GetAllocatableResources", s))?;
        let mut devices: Vec<AllocatableDevice> = response
            .get_ref()
            .devices
            .iter()
            .flat_map(|d| {
                d.device_ids
                    .iter()
                    .map(|id| AllocatableDevice { resource: d.resource_name.clone(), device_id: id.clone() })
            })
            .collect();
        devices.sort();
        Ok(devices)
    }
}

fn push_bindings(pod: &PodResources, out: &mut Vec<DeviceBinding>) {
    for container in &pod.containers {
        let binding = |resource: &str, device_id: String| DeviceBinding {
            namespace: pod.namespace.clone(),
            pod: pod.name.clone(),
            container: container.name.clone(),
            resource: resource.to_string(),
            device_id,
        };
        for devices in &container.devices {
            for id in &devices.device_ids {
                out.push(binding(&devices.resource_name, id.clone()));
            }
        }
        for claim in &container.dynamic_resources {
            for r in &claim.claim_resources {
                out.push(binding(&r.driver_name, format!("{}/{}", r.pool_name, r.device_name)));
            }
        }
    }
}
