//! The device plugin side of the kubelet's API that devheal uses: registering a plugin with the
//! kubelet (the agent's fake devices are a plugin).
//!
//! devheal opens no `ListAndWatch` stream of a plugin: some plugins (NVIDIA's among them) feed
//! every open stream from one shared health channel, so a second reader would take updates the
//! kubelet then never sees. The agent reads plugin-side health from the kubelet instead (its
//! allocatable devices and the Node's counts; `devheal_agent::kubelet_devices`).

use std::path::Path;

use crate::KubeletError;
use crate::api::DEVICE_PLUGIN_VERSION;
use crate::api::deviceplugin_v1beta1::registration_client::RegistrationClient;
use crate::api::deviceplugin_v1beta1::{DevicePluginOptions, RegisterRequest};
use crate::uds;

/// Register a device plugin with the kubelet (the plugin must already be serving `endpoint`).
pub async fn register(
    kubelet_socket: &Path,
    endpoint: &str,
    resource_name: &str,
    options: DevicePluginOptions,
) -> Result<(), KubeletError> {
    let mut client = RegistrationClient::new(uds::channel(kubelet_socket));
    client
        .register(RegisterRequest {
            version: DEVICE_PLUGIN_VERSION.to_string(),
            endpoint: endpoint.to_string(),
            resource_name: resource_name.to_string(),
            options: Some(options),
        })
        .await
        .map(|_| ())
        .map_err(|status| KubeletError::Call {
            call: "Registration/Register",
            socket: kubelet_socket.display().to_string(),
            status: Box::new(status),
        })
}
