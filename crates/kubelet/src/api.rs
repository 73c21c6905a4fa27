//! Messages and services generated at build time from `proto/` (see build.rs).

/// The kubelet PodResources API v1 (`v1.PodResourcesLister`).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod podresources_v1 {
    tonic::include_proto!("v1");
}

/// The device plugin API v1beta1 (`v1beta1.DevicePlugin`, `v1beta1.Registration`).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod deviceplugin_v1beta1 {
    tonic::include_proto!("v1beta1");
}

/// `Healthy` as the device plugin API spells it.
pub const HEALTHY: &str = "Healthy";
/// `Unhealthy` as the device plugin API spells it.
pub const UNHEALTHY: &str = "Unhealthy";
/// The only device plugin API version the kubelet accepts.
pub const DEVICE_PLUGIN_VERSION: &str = "v1beta1";
/// Default locations on a node.
pub const DEFAULT_POD_RESOURCES_SOCKET: &str = "/var/lib/kubelet/pod-resources/kubelet.sock";
pub const DEFAULT_DEVICE_PLUGIN_DIR: &str = "/var/lib/kubelet/device-plugins";
/// The kubelet's own registration socket inside the device-plugin directory.
pub const KUBELET_REGISTRATION_SOCKET_NAME: &str = "kubelet.sock";
