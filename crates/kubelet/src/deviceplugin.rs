//! Device plugin health: find the plugin sockets in the device-plugins directory and follow each
//! plugin's `ListAndWatch` stream.
//!
//! A plugin that stops answering is reported as [`PluginEvent::Disconnected`] and one whose socket
//! vanished as [`PluginEvent::Removed`]: the agent treats both as "this source is blind" (its
//! devices' health becomes Unknown), never as the devices failing. Streams that end are re-opened;
//! a restarted plugin is found again at its socket path.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;

use crate::KubeletError;
use crate::api::deviceplugin_v1beta1::device_plugin_client::DevicePluginClient;
use crate::api::deviceplugin_v1beta1::registration_client::RegistrationClient;
use crate::api::deviceplugin_v1beta1::{DevicePluginOptions, Empty, RegisterRequest};
use crate::api::{DEVICE_PLUGIN_VERSION, HEALTHY, KUBELET_REGISTRATION_SOCKET_NAME};
use crate::uds;

/// One device as a plugin reports it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PluginDevice {
    pub id: String,
    /// `true` for "Healthy"; anything else the plugin sends counts as unhealthy.
    pub healthy: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PluginEvent {
    /// A full snapshot from the plugin's `ListAndWatch` stream.
    Devices { socket: String, devices: Vec<PluginDevice> },
    /// The plugin stopped answering or its stream ended; we keep retrying.
    Disconnected { socket: String, reason: String },
    /// The plugin's socket is gone from the directory.
    Removed { socket: String },
}

/// The device plugin sockets in `dir`, sorted: every `*.sock` except the kubelet's own.
pub fn plugin_sockets(dir: &Path) -> Result<Vec<PathBuf>, KubeletError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|source| KubeletError::PluginDir { dir: dir.display().to_string(), source })?;
    let mut sockets: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "sock")
                && p.file_name().is_some_and(|n| n != KUBELET_REGISTRATION_SOCKET_NAME)
        })
        .collect();
    sockets.sort();
    Ok(sockets)
}

/// Follows every plugin in a directory.
#[derive(Clone, Debug)]
pub struct PluginWatcher {
    pub dir: PathBuf,
    /// How often the directory is re-read for plugins that came or went.
    pub rescan: Duration,
    /// How long to wait before re-opening a stream that ended or a plugin that refused.
    pub retry: Duration,
}

impl PluginWatcher {
    pub fn new(dir: &Path) -> Self {
        PluginWatcher {
            dir: dir.to_path_buf(),
            rescan: Duration::from_secs(1),
            retry: Duration::from_millis(500),
        }
    }

    /// Run until `events` is closed.
    pub fn spawn(self, events: mpsc::Sender<PluginEvent>) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut followers: BTreeMap<PathBuf, JoinHandle<()>> = BTreeMap::new();
            loop {
                // A directory that cannot be read this time (the kubelet re-creating it) says
                // nothing about the plugins: keep following them and look again later.
                let Ok(present) = plugin_sockets(&self.dir) else {
                    if events.is_closed() {
                        return;
                    }
                    tokio::time::sleep(self.rescan).await;
                    continue;
                };
                for socket in &present {
                    let finished = followers.get(socket).is_some_and(|h| h.is_finished());
                    if finished || !followers.contains_key(socket) {
                        let handle = tokio::spawn(follow(socket.clone(), self.retry, events.clone()));
                        followers.insert(socket.clone(), handle);
                    }
                }
                let gone: Vec<PathBuf> = followers.keys().filter(|s| !present.contains(s)).cloned().collect();
                for socket in gone {
                    if let Some(handle) = followers.remove(&socket) {
                        handle.abort();
                    }
                    let event = PluginEvent::Removed { socket: socket.display().to_string() };
                    if events.send(event).await.is_err() {
                        break;
                    }
                }
                if events.is_closed() {
                    for (_, handle) in followers {
                        handle.abort();
                    }
                    return;
                }
                tokio::time::sleep(self.rescan).await;
            }
        })
    }
}

/// Follow one plugin's `ListAndWatch`, re-opening it whenever it ends.
async fn follow(socket: PathBuf, retry: Duration, events: mpsc::Sender<PluginEvent>) {
    let name = socket.display().to_string();
    let mut connected = true; // report the first failure too
    loop {
        let mut client = DevicePluginClient::new(uds::channel(&socket));
        let reason = match client.list_and_watch(Empty {}).await {
            Ok(response) => {
                let mut stream = response.into_inner();
                let mut reason = "ListAndWatch stream ended".to_string();
                while let Some(item) = stream.next().await {
                    match item {
                        Ok(snapshot) => {
                            connected = true;
                            let mut devices: Vec<PluginDevice> = snapshot
                                .devices
                                .into_iter()
                                .map(|d| PluginDevice { healthy: d.health == HEALTHY, id: d.id })
                                .collect();
                            devices.sort();
                            let event = PluginEvent::Devices { socket: name.clone(), devices };
                            if events.send(event).await.is_err() {
                                return;
                            }
                        }
                        Err(status) => {
                            reason = format!("ListAndWatch failed: {}", status.message());
                            break;
                        }
                    }
                }
                reason
            }
            Err(status) => format!("cannot open ListAndWatch: {}", status.message()),
        };
        if connected {
            connected = false;
            if events.send(PluginEvent::Disconnected { socket: name.clone(), reason }).await.is_err() {
                return;
            }
        }
        tokio::time::sleep(retry).await;
    }
}

/// One snapshot of a plugin's devices: open `ListAndWatch`, take its first message, close it.
/// For one-shot readers; the agent proper follows the stream with [`PluginWatcher`].
pub async fn list_devices(socket: &Path) -> Result<Vec<PluginDevice>, KubeletError> {
    let name = socket.display().to_string();
    let call_error = |status: tonic::Status| KubeletError::Call {
        call: "DevicePlugin/ListAndWatch",
        socket: name.clone(),
        status: Box::new(status),
    };
    let mut client = DevicePluginClient::new(uds::channel(socket));
    let mut stream = client.list_and_watch(Empty {}).await.map_err(call_error)?.into_inner();
    match stream.next().await {
        Some(Ok(snapshot)) => {
            let mut devices: Vec<PluginDevice> = snapshot
                .devices
                .into_iter()
                .map(|d| PluginDevice { healthy: d.health == HEALTHY, id: d.id })
                .collect();
            devices.sort();
            Ok(devices)
        }
        Some(Err(status)) => Err(call_error(status)),
        None => Err(call_error(tonic::Status::unavailable("ListAndWatch ended before its first message"))),
    }
}

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
