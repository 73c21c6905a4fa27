//! Fake devices (`devheal agent --fake-devices N`): a device plugin for `devheal.io/fake-gpu` that
//! a real kubelet can schedule pods onto, and fault injection that makes a fake device fail,
//! degrade or recover with the signals a real GPU would give:
//!
//! - **fail**: the plugin reports the device `Unhealthy` on `ListAndWatch`, and an Xid 79 ("GPU
//!   has fallen off the bus") line naming the device's PCI address enters the agent's kernel-log
//!   pipeline;
//! - **degrade**: an Xid 92 (excessive single-bit ECC interrupts, Degraded) line; the plugin keeps
//!   the device `Healthy`, as NVIDIA's plugin does for that Xid;
//! - **recover**: the plugin reports the device `Healthy` again and the device is reset, so the
//!   kernel-log reasons clear and probation starts, as after a real GPU reset;
//! - **ecc**: an Xid 48 (double-bit ECC error) line, whose repair is a reset, and the plugin
//!   reports the device `Unhealthy` (as NVIDIA's plugin does for that Xid) until it is reset;
//! - **wedge** / **hold** / **free**: how the device answers a reset the agent carries out
//!   ([`crate::reset`]): a wedged device does not come back from it; a held one has a process on
//!   it (so it is not reset) until freed.
//!
//! The fake devices are their own reset backend: a reset of a device that is not wedged makes
//! the plugin report it `Healthy` again.
//!
//! The plugin serves `<device-plugin-dir>/devheal-fake-gpu.sock` and registers with the
//! kubelet's `kubelet.sock` there. A kubelet that restarts deletes every socket in that
//! directory; the plugin notices its socket is gone, serves it again and registers again. It also
//! registers again when `kubelet.sock` itself was re-created (a new inode or change time).

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;

use devheal_k8s::crd::DeviceVendor;
use devheal_kubelet::api::deviceplugin_v1beta1 as dp;
use devheal_kubelet::api::{HEALTHY, KUBELET_REGISTRATION_SOCKET_NAME, UNHEALTHY};
use devheal_kubelet::server::{DevicePluginServer, ServerHandle, serve};
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use crate::snapshot::InventoryDevice;

/// The extended resource fake devices are registered as.
pub const FAKE_RESOURCE: &str = "devheal.io/fake-gpu";
/// The plugin's socket name in the device-plugin directory.
pub const FAKE_SOCKET_NAME: &str = "devheal-fake-gpu.sock";
/// The PCI domain of a node's fake devices: `fXXX`, the low 12 bits a hash of the node's name.
/// Real GPUs sit in low domains, so these are unused on real nodes; and agents of several fake
/// nodes on one machine (the end-to-end tests) read the same `/dev/kmsg` without one node's
/// kernel line matching another node's device.
pub fn fake_pci_domain(node: &str) -> String {
    // FNV-1a: stable across builds and platforms (std's hasher is not).
    let hash = node
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    format!("f{:03x}", hash & 0xfff)
}

/// What can be done to a fake device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FakeFault {
    Fail,
    Degrade,
    Recover,
    Ecc,
    Wedge,
    Hold,
    Free,
}

impl FakeFault {
    pub fn parse(word: &str) -> Option<FakeFault> {
        match word {
            "fail" => Some(FakeFault::Fail),
            "degrade" => Some(FakeFault::Degrade),
            "recover" => Some(FakeFault::Recover),
            "ecc" => Some(FakeFault::Ecc),
            "wedge" => Some(FakeFault::Wedge),
            "hold" => Some(FakeFault::Hold),
            "free" => Some(FakeFault::Free),
            _ => None,
        }
    }
}

/// What the fake devices tell the event loop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FakeSignal {
    /// A kernel-log line, as the kernel would print it for this device.
    KernelLine(String),
    /// The device was reset.
    Reset { device: String },
    /// The health the fake plugin now serves for the device (at start: Healthy for each).
    PluginHealth { device: String, healthy: bool },
}

#[derive(Debug, thiserror::Error)]
pub enum FakeError {
    #[error("no fake device {0:?} (the fake devices are {1})")]
    UnknownDevice(String, String),
    #[error("the agent is shutting down")]
    Closed,
}

/// The fake devices' identities on `node`.
pub fn fake_inventory(count: usize, node: &str) -> Vec<InventoryDevice> {
    let domain = fake_pci_domain(node);
    (0..count)
        .map(|i| InventoryDevice {
            id: format!("fake-gpu-{i}"),
            resource: FAKE_RESOURCE.into(),
            vendor: DeviceVendor::Other,
            model: Some("devheal fake GPU".into()),
            pci_address: Some(format!("{domain}:{:02x}:{:02x}.0", (i / 32) % 256, i % 32)),
            ..InventoryDevice::default()
        })
        .collect()
}

/// The handle that injects faults (shared with the HTTP server).
#[derive(Clone)]
pub struct FakeControl {
    devices: Arc<Vec<InventoryDevice>>,
    health: Arc<Mutex<watch::Sender<Vec<dp::Device>>>>,
    signals: mpsc::Sender<FakeSignal>,
    /// Devices that do not come back from a reset, and devices a process holds.
    resets: Arc<Mutex<FakeResetState>>,
}

#[derive(Default)]
struct FakeResetState {
    wedged: std::collections::BTreeSet<String>,
    held: std::collections::BTreeSet<String>,
}

impl FakeControl {
    pub fn devices(&self) -> &[InventoryDevice] {
        &self.devices
    }

    /// Apply `fault` to `device`; returns the kernel-log line it emitted, if any.
    pub async fn inject(&self, device: &str, fault: FakeFault) -> Result<Option<String>, FakeError> {
        let Some(d) = self.devices.iter().find(|d| d.id == device) else {
            let ids: Vec<&str> = self.devices.iter().map(|d| d.id.as_str()).collect();
            return Err(FakeError::UnknownDevice(device.to_string(), ids.join(", ")));
        };
        let pci = d.pci_address.clone().unwrap_or_default();
        // The Xid line names the device as `dddd:bb:dd`, without the function.
        let short = pci.rsplit_once('.').map_or(pci.as_str(), |(head, _)| head).to_string();
        let (plugin_health, line) = match fault {
            FakeFault::Fail => (
                Some(UNHEALTHY),
                Some(format!(
                    "NVRM: Xid (PCI:{short}): 79, pid=0, name=devheal-fake, GPU has fallen off the bus."
                )),
            ),
            FakeFault::Degrade => (
                None,
                Some(format!(
                    "NVRM: Xid (PCI:{short}): 92, pid=0, name=devheal-fake, High single-bit ECC error rate"
                )),
            ),
            FakeFault::Recover => (Some(HEALTHY), None),
            FakeFault::Ecc => (
                Some(UNHEALTHY),
                Some(format!(
                    "NVRM: Xid (PCI:{short}): 48, pid=0, name=devheal-fake, An uncorrectable double bit error (DBE) has been detected on GPU in the framebuffer at partition 0, subpartition 0."
                )),
            ),
            FakeFault::Wedge | FakeFault::Hold | FakeFault::Free => {
                if let Ok(mut s) = self.resets.lock() {
                    let id = device.to_string();
                    match fault {
                        FakeFault::Wedge => s.wedged.insert(id),
                        FakeFault::Hold => s.held.insert(id),
                        _ => s.held.remove(&id),
                    };
                }
                (None, None)
            }
        };
        if let Some(health) = plugin_health
            && let Ok(sender) = self.health.lock()
        {
            sender.send_modify(|devices| {
                for dev in devices.iter_mut().filter(|x| x.id == device) {
                    dev.health = health.to_string();
                }
            });
        }
        if let Some(health) = plugin_health {
            let signal = FakeSignal::PluginHealth { device: device.to_string(), healthy: health == HEALTHY };
            self.signals.send(signal).await.map_err(|_| FakeError::Closed)?;
        }
        if let Some(line) = &line {
            self.signals.send(FakeSignal::KernelLine(line.clone())).await.map_err(|_| FakeError::Closed)?;
        }
        if fault == FakeFault::Recover {
            self.signals
                .send(FakeSignal::Reset { device: device.to_string() })
                .await
                .map_err(|_| FakeError::Closed)?;
        }
        Ok(line)
    }
}

impl crate::reset::ResetBackend for FakeControl {
    fn holders(&self, target: &crate::reset::ResetTarget) -> Result<Vec<String>, crate::reset::ResetError> {
        let held = self.resets.lock().map(|s| s.held.contains(&target.id)).unwrap_or(false);
        Ok(if held { vec!["pid 4242 (devheal-fake-workload)".to_string()] } else { Vec::new() })
    }

    fn reset(&self, target: &crate::reset::ResetTarget) -> Result<String, crate::reset::ResetError> {
        if !self.devices.iter().any(|d| d.id == target.id) {
            return Err(crate::reset::ResetError::Unsupported(format!("no fake device {}", target.id)));
        }
        Ok(format!("fake reset of {}", target.id))
    }

    fn observe(&self, target: &crate::reset::ResetTarget) -> Result<String, crate::reset::ResetError> {
        if self.resets.lock().map(|s| s.wedged.contains(&target.id)).unwrap_or(false) {
            return Err(crate::reset::ResetError::Failed(format!(
                "fake device {} did not come back (wedged)",
                target.id
            )));
        }
        // Back: the plugin serves it Healthy again (the loop clears its reasons itself).
        if let Ok(sender) = self.health.lock() {
            sender.send_modify(|devices| {
                for dev in devices.iter_mut().filter(|x| x.id == target.id) {
                    dev.health = HEALTHY.to_string();
                }
            });
        }
        let signal = FakeSignal::PluginHealth { device: target.id.clone(), healthy: true };
        if self.signals.try_send(signal).is_err() {
            tracing::warn!(device = %target.id, "fake plugin health after a reset not passed on (queue full)");
        }
        Ok(format!("fake device {} answers again", target.id))
    }

    fn describe(&self, target: &crate::reset::ResetTarget) -> String {
        format!("a fake reset of {}", target.id)
    }
}

/// The fake device plugin: serves, registers, and re-serves and re-registers after a kubelet
/// restart removed its socket.
pub struct FakeDevicePlugin {
    dir: PathBuf,
    health: Arc<Mutex<watch::Sender<Vec<dp::Device>>>>,
    plugin: DevicePluginServer,
    /// How often the socket and the registration are checked.
    pub check_every: StdDuration,
}

/// Build the fake devices: the plugin to run and the control handle.
pub fn fake_devices(
    count: usize,
    node: &str,
    device_plugin_dir: PathBuf,
    signals: mpsc::Sender<FakeSignal>,
) -> (FakeDevicePlugin, FakeControl) {
    let devices = fake_inventory(count, node);
    let initial: Vec<dp::Device> = devices
        .iter()
        .map(|d| dp::Device { id: d.id.clone(), health: HEALTHY.into(), topology: None })
        .collect();
    let (plugin, health) = DevicePluginServer::new(initial, "DEVHEAL_FAKE_GPUS");
    let health = Arc::new(Mutex::new(health));
    (
        FakeDevicePlugin {
            dir: device_plugin_dir,
            health: Arc::clone(&health),
            plugin,
            check_every: StdDuration::from_secs(1),
        },
        FakeControl { devices: Arc::new(devices), health, signals, resets: Arc::default() },
    )
}

impl FakeDevicePlugin {
    /// Serve and keep registered until `shutdown` turns true; then stop serving.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let socket = self.dir.join(FAKE_SOCKET_NAME);
        let kubelet = self.dir.join(KUBELET_REGISTRATION_SOCKET_NAME);
        let _keep_health_sender = self.health;
        let mut server: Option<ServerHandle> = None;
        let mut registered = false;
        let mut reported_failure = false;
        // The kubelet's socket we registered on: a new one (another inode or creation time) is a
        // restarted kubelet.
        let mut registered_with: Option<(u64, i64, i64)> = None;
        loop {
            let kubelet_inode =
                std::fs::metadata(&kubelet).ok().map(|m| (m.ino(), m.ctime(), m.ctime_nsec()));
            if registered && kubelet_inode != registered_with {
                registered = false;
            }
            if server.is_none() || !socket.exists() {
                if let Some(old) = server.take() {
                    old.stop().await;
                }
                registered = false;
                match serve(&socket, self.plugin.clone().router()) {
                    Ok(handle) => server = Some(handle),
                    Err(e) => {
                        if !reported_failure {
                            tracing::warn!(error = %e, "fake device plugin cannot serve");
                            reported_failure = true;
                        }
                    }
                }
            }
            if server.is_some() && !registered {
                let options = dp::DevicePluginOptions::default();
                match devheal_kubelet::deviceplugin::register(
                    &kubelet,
                    FAKE_SOCKET_NAME,
                    FAKE_RESOURCE,
                    options,
                )
                .await
                {
                    Ok(()) => {
                        tracing::info!(
                            resource = FAKE_RESOURCE,
                            "fake device plugin registered with the kubelet"
                        );
                        registered = true;
                        registered_with = kubelet_inode;
                        reported_failure = false;
                    }
                    Err(e) => {
                        if !reported_failure {
                            tracing::warn!(error = %e, "fake device plugin not registered yet (retrying)");
                            reported_failure = true;
                        }
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.check_every) => {}
                _ = shutdown.changed() => break,
            }
            if *shutdown.borrow() {
                break;
            }
        }
        if let Some(handle) = server {
            handle.stop().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_devices_have_distinct_valid_pci_addresses() {
        let devices = fake_inventory(70, "node-a");
        let domain = fake_pci_domain("node-a");
        assert_eq!(devices[0].pci_address, Some(format!("{domain}:00:00.0")));
        assert_eq!(devices[33].pci_address, Some(format!("{domain}:01:01.0")));
        assert!(domain.starts_with('f') && domain.len() == 4, "{domain}");
        assert_ne!(fake_pci_domain("node-a"), fake_pci_domain("node-b"), "nodes get their own domain");
        let mut pcis: Vec<_> = devices.iter().filter_map(|d| d.pci_address.clone()).collect();
        pcis.sort();
        pcis.dedup();
        assert_eq!(pcis.len(), 70);
    }

    #[tokio::test]
    async fn fail_sends_an_xid_line_and_marks_the_plugin_device_unhealthy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (tx, mut rx) = mpsc::channel(8);
        let (plugin, control) = fake_devices(2, "node-t", dir.path().to_path_buf(), tx);
        let line = control.inject("fake-gpu-1", FakeFault::Fail).await.expect("known device");
        let line = line.expect("a line");
        assert!(line.contains(&format!("Xid (PCI:{}:00:01): 79", fake_pci_domain("node-t"))), "{line}");
        let unhealthy = FakeSignal::PluginHealth { device: "fake-gpu-1".into(), healthy: false };
        assert_eq!(rx.recv().await, Some(unhealthy));
        assert_eq!(rx.recv().await, Some(FakeSignal::KernelLine(line)));
        let health: Vec<String> =
            plugin.health.lock().expect("lock").borrow().iter().map(|d| d.health.clone()).collect();
        assert_eq!(health, vec!["Healthy", "Unhealthy"]);
        control.inject("fake-gpu-1", FakeFault::Recover).await.expect("known device");
        let healthy = FakeSignal::PluginHealth { device: "fake-gpu-1".into(), healthy: true };
        assert_eq!(rx.recv().await, Some(healthy));
        assert_eq!(rx.recv().await, Some(FakeSignal::Reset { device: "fake-gpu-1".into() }));
        assert!(matches!(control.inject("gpu-9", FakeFault::Fail).await, Err(FakeError::UnknownDevice(..))));
        assert_eq!(FakeFault::parse("degrade"), Some(FakeFault::Degrade));
        assert_eq!(FakeFault::parse("explode"), None);
    }
}
