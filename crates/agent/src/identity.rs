//! One device identity on the node: every name a device goes by, resolved to the one key the
//! agent tracks its health under and its parent.
//!
//! The kernel log names a GPU by its PCI bus id, NVML by its UUID, the kubelet by whatever its
//! device plugin calls it (a UUID, a time-slicing or MPS replica `GPU-…::3`, a MIG UUID, a PCI
//! id for AMD's plugin), a DRA pod's binding by `driver/pool/device` (the NVIDIA DRA driver's
//! `gpu-0`, `gpu-1-mig-2g47gb-14-0`). [`NodeIdentity::resolve`] maps each of these
//! ([`devheal_core::identity`] reads the shapes) to a [`Resolved`]:
//!
//! - the **key**: the GPU's (or MIG device's) UUID where NVML or the ResourceSlice says which
//!   one it is, otherwise the name itself without its replica number (a fake device, another
//!   vendor's id, a DRA device nothing identifies);
//! - the **parent**: the key of the GPU a MIG device (or a GKE `nvidia0/gi1`) is a slice of;
//! - the **replica** the name is of its device, and the **DRA device** it is, if it is one.
//!
//! So every replica of a GPU is the GPU (its pods are the GPU's pods), a MIG device is a device
//! of its own whose parent is the GPU (a fault on the GPU reaches it: [`crate::snapshot`]), and a
//! GPU a DRA driver exposes is the same device as NVML's, published under its DRA id (the one a
//! DeviceTaintRule selects and a pod's status names).
//!
//! Which DRA device is which GPU comes from the node's ResourceSlices (the agent reads them,
//! [`crate::sources::poll_resource_slices`]): the NVIDIA DRA driver announces each device with
//! its `uuid` (and a MIG device's `parentUUID`). Without them the NVIDIA driver's own names are
//! read: `gpu-<n>` is the GPU with minor number `n` (driver v25.8 and later) or index `n`
//! (before): taken only when that cannot be two GPUs.

use std::collections::BTreeMap;

use devheal_core::Vendor;
use devheal_core::identity::{
    DeviceId, DraDevice, NVIDIA_DRA_DRIVER, NvidiaDraName, normalise_pci_address, nvidia_dra_name,
    parse_device_id, split_replica_of,
};

/// A GPU as NVML enumerates it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PhysicalGpu {
    pub uuid: String,
    pub index: Option<u32>,
    /// `/dev/nvidia<minor>`.
    pub minor: Option<u32>,
    /// `dddd:bb:dd.f`, as the kernel prints it.
    pub pci_address: Option<String>,
    /// Its MIG devices (MIG mode), by their index under the GPU.
    pub migs: Vec<MigDevice>,
}

/// A MIG device as NVML enumerates it under its GPU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigDevice {
    /// The index under its GPU (the NVIDIA plugin's `<gpu>:<mig>` index strategy).
    pub index: u32,
    pub uuid: String,
}

/// A DRA device as a ResourceSlice of this node announces it: what identity needs of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceDevice {
    pub device: DraDevice,
    /// The `uuid` attribute (the NVIDIA driver: `GPU-…` or `MIG-…`).
    pub uuid: Option<String>,
    /// The `parentUUID` attribute of a MIG device.
    pub parent_uuid: Option<String>,
    /// The `type` attribute (`gpu`, `mig`, `vfio`).
    pub kind: Option<String>,
    /// `resource.kubernetes.io/pciBusID`, normalised (a MIG device carries its parent's).
    pub pci_address: Option<String>,
}

/// The node's ResourceSlice devices as last read (`Err`: why they could not be read), `None`
/// before the first read.
pub type SliceRead = Option<Result<Vec<SliceDevice>, String>>;

/// What one name resolves to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The key the device's health is tracked under.
    pub key: String,
    /// The key of the device this one is a slice of.
    pub parent: Option<String>,
    /// The replica (time-slicing, MPS, shared GPU) the name is of its device.
    pub replica: Option<u32>,
    /// The DRA device the name is, if it is one.
    pub dra: Option<DraDevice>,
    /// Whether the name was tied to a device the node knows (NVML, a ResourceSlice) rather than
    /// taken as it is.
    pub identified: bool,
}

/// The node's devices and every name they go by. See the module documentation.
#[derive(Clone, Debug, Default)]
pub struct NodeIdentity {
    gpus: Vec<PhysicalGpu>,
    slices: Vec<SliceDevice>,
    /// Other physical devices by PCI address (fake devices): address → key.
    pci_keys: BTreeMap<String, String>,
    /// AMD and Intel accelerators by the name sysfs gives them (`card1`, `accel0`, `hl0`):
    /// name → PCI address ([`crate::accel`]).
    sysfs_names: BTreeMap<String, String>,
    /// MI300 partitions by the ROCm plugin's id (`amdgpu_xcp_30`) → their GPU's PCI address.
    amd_partitions: BTreeMap<String, String>,
    /// Gaudi devices by serial number (the id Intel's Gaudi plugin gives them) → PCI address
    /// (hlml, [`crate::gaudi`]).
    gaudi_serials: BTreeMap<String, String>,
}

impl NodeIdentity {
    /// NVML's GPUs (replacing the last enumeration).
    pub fn set_gpus(&mut self, gpus: Vec<PhysicalGpu>) {
        self.gpus = gpus;
    }

    pub fn gpus(&self) -> &[PhysicalGpu] {
        &self.gpus
    }

    /// The node's ResourceSlice devices (replacing the last read).
    pub fn set_slices(&mut self, slices: Vec<SliceDevice>) {
        self.slices = slices;
    }

    pub fn slices(&self) -> &[SliceDevice] {
        &self.slices
    }

    /// The node's DRM cards and accel devices by name (replacing the last read):
    /// `(name, PCI address)`.
    pub fn set_sysfs_names(&mut self, names: BTreeMap<String, String>) {
        self.sysfs_names = names;
    }

    /// Which GPU each MI300 partition is a slice of (replacing the last read): partition id →
    /// the GPU's PCI address ([`crate::accel`]).
    pub fn set_amd_partitions(&mut self, partitions: BTreeMap<String, String>) {
        self.amd_partitions = partitions;
    }

    /// Which PCI device each Gaudi serial number is (replacing the last enumeration); whether
    /// anything changed.
    pub fn set_gaudi_serials(&mut self, serials: BTreeMap<String, String>) -> bool {
        let changed = serials != self.gaudi_serials;
        self.gaudi_serials = serials;
        changed
    }

    /// The PCI address of the device sysfs calls `name` (`card1`, `accel0`, `hl0`).
    pub fn pci_of_sysfs_name(&self, name: &str) -> Option<&str> {
        self.sysfs_names.get(name).map(String::as_str)
    }

    /// A device at `pci_address` known by `key` (fake devices).
    pub fn add_device_at(&mut self, key: &str, pci_address: &str) {
        if let Some(pci) = normalise_pci_address(pci_address) {
            self.pci_keys.insert(pci, key.to_string());
        }
    }

    fn gpu_by_uuid(&self, uuid: &str) -> Option<&PhysicalGpu> {
        self.gpus.iter().find(|g| g.uuid == uuid)
    }

    fn gpu_by_pci(&self, pci: &str) -> Option<&PhysicalGpu> {
        self.gpus.iter().find(|g| g.pci_address.as_deref() == Some(pci))
    }

    fn gpu_by_index(&self, index: u32) -> Option<&PhysicalGpu> {
        self.gpus.iter().find(|g| g.index == Some(index))
    }

    fn gpu_by_minor(&self, minor: u32) -> Option<&PhysicalGpu> {
        self.gpus.iter().find(|g| g.minor == Some(minor))
    }

    /// The GPU the NVIDIA DRA driver calls `gpu-<n>`: minor `n` (driver ≥ v25.8) or index `n`
    /// (before). Taken when both name the same GPU, or only one of them names any; `None`
    /// when they name two different GPUs (no guess then).
    fn gpu_by_dra_number(&self, n: u32) -> Option<&PhysicalGpu> {
        match (self.gpu_by_minor(n), self.gpu_by_index(n)) {
            (Some(a), Some(b)) if a.uuid == b.uuid => Some(a),
            (Some(_), Some(_)) => None,
            (a, b) => a.or(b),
        }
    }

    /// The GPU a MIG UUID is a slice of (NVML's enumeration, else a ResourceSlice's
    /// `parentUUID`).
    fn mig_parent(&self, mig_uuid: &str) -> Option<String> {
        self.gpus.iter().find(|g| g.migs.iter().any(|m| m.uuid == mig_uuid)).map(|g| g.uuid.clone()).or_else(
            || {
                self.slices
                    .iter()
                    .find(|s| s.uuid.as_deref() == Some(mig_uuid))
                    .and_then(|s| s.parent_uuid.clone())
            },
        )
    }

    /// The key of the physical device at `pci_address`: NVML's GPU there, a device registered
    /// there ([`NodeIdentity::add_device_at`]), else `None` (the caller may hold the evidence).
    pub fn key_at_pci(&self, pci_address: &str) -> Option<String> {
        let pci = normalise_pci_address(pci_address)?;
        self.gpu_by_pci(&pci).map(|g| g.uuid.clone()).or_else(|| self.pci_keys.get(&pci).cloned())
    }

    /// The PCI address of the physical device `key` (NVML's GPU, or a key that is itself a PCI
    /// address, as the AMD plugin's ids are).
    pub fn pci_of(&self, key: &str) -> Option<String> {
        if let Some(g) = self.gpu_by_uuid(key) {
            return g.pci_address.clone();
        }
        if let Some((pci, _)) = self.pci_keys.iter().find(|(_, k)| *k == key) {
            return Some(pci.clone());
        }
        normalise_pci_address(key).filter(|_| key.contains('.'))
    }

    /// Resolve one name: `id` as exposed under `resource` (a device plugin's resource, a DRA
    /// driver, a KEP-4680 `claim:…`). See the module documentation.
    pub fn resolve(&self, resource: &str, id: &str) -> Resolved {
        let parsed = parse_device_id(resource, id);
        let base = split_replica_of(resource, id).0.to_string();
        let plain = |key: String, parent: Option<String>| Resolved {
            identified: key != base || parent.is_some(),
            key,
            parent,
            replica: parsed.replica,
            dra: None,
        };
        // A device named through its PCI address: NVML's key there, else the address.
        let at_pci = |pci: &str| {
            let key = self.key_at_pci(pci).unwrap_or_else(|| pci.to_string());
            Resolved { identified: true, ..plain(key, None) }
        };
        match parsed.id {
            DeviceId::Dra(d) => self.resolve_dra(d),
            DeviceId::GpuUuid(u) => Resolved { identified: self.gpu_by_uuid(&u).is_some(), ..plain(u, None) },
            DeviceId::MigUuid(u) => {
                let parent = self.mig_parent(&u);
                plain(u, parent)
            }
            DeviceId::LegacyMig { parent, .. } => plain(base.clone(), Some(parent)),
            DeviceId::PciBusId(pci) => match self.key_at_pci(&pci) {
                Some(key) => plain(key, None),
                // An AMD GPU (the ROCm plugin names GPUs by PCI id): the address is its key.
                None => Resolved { identified: true, ..plain(pci, None) },
            },
            DeviceId::Index(i) => plain(self.gpu_by_index(i).map_or(base.clone(), |g| g.uuid.clone()), None),
            DeviceId::MigIndex { gpu, mig } => match self.gpu_by_index(gpu) {
                Some(g) => {
                    let key = g.migs.iter().find(|m| m.index == mig).map_or(base.clone(), |m| m.uuid.clone());
                    plain(key, Some(g.uuid.clone()))
                }
                None => plain(base.clone(), None),
            },
            DeviceId::Minor(m) => plain(self.gpu_by_minor(m).map_or(base.clone(), |g| g.uuid.clone()), None),
            DeviceId::MinorGpuInstance { minor, .. } => {
                plain(base.clone(), self.gpu_by_minor(minor).map(|g| g.uuid.clone()))
            }
            // An Intel GPU by its DRM card: the device at the card's PCI address (its key is the
            // address, as an AMD GPU's; NVML's key if NVML knows it).
            DeviceId::DrmCard(n) => match self.pci_of_sysfs_name(&format!("card{n}")) {
                Some(pci) => at_pci(pci),
                None => plain(base.clone(), None),
            },
            // An MI300 partition: a device of its own whose parent is its GPU, when KFD said.
            DeviceId::AmdPartition(_) => {
                let gpu = self.amd_partitions.get(&base);
                let parent = gpu.map(|pci| self.key_at_pci(pci).unwrap_or_else(|| pci.clone()));
                plain(base.clone(), parent)
            }
            // A Gaudi by its serial number (Intel's plugin): the device at the PCI address
            // hlml gives that serial, keyed as an Intel GPU is.
            DeviceId::Other(_) if resource.starts_with(GAUDI_RESOURCE_PREFIX) => {
                match self.gaudi_serials.get(&base) {
                    Some(pci) => at_pci(pci),
                    None => plain(base.clone(), None),
                }
            }
            DeviceId::Other(_) => plain(base.clone(), None),
        }
    }

    fn resolve_dra(&self, d: DraDevice) -> Resolved {
        let found = |key: String, parent: Option<String>| Resolved {
            key,
            parent,
            replica: None,
            dra: Some(d.clone()),
            identified: true,
        };
        if let Some(s) = self.slices.iter().find(|s| s.device == d) {
            if let Some(uuid) = &s.uuid {
                let parent = match &s.parent_uuid {
                    Some(p) => Some(p.clone()),
                    None if uuid.starts_with("MIG-") => self.mig_parent(uuid),
                    None => None,
                };
                return found(uuid.clone(), parent);
            }
            // A device the slice names only by its PCI address (a MIG device carries its
            // parent's, so it is not its GPU).
            if s.kind.as_deref() != Some("mig")
                && let Some(key) = s.pci_address.as_deref().and_then(|p| self.key_at_pci(p))
            {
                return found(key, None);
            }
        }
        if d.driver == NVIDIA_DRA_DRIVER {
            match nvidia_dra_name(&d.device) {
                Some(NvidiaDraName::Gpu(n)) => {
                    if let Some(g) = self.gpu_by_dra_number(n) {
                        return found(g.uuid.clone(), None);
                    }
                }
                Some(NvidiaDraName::Mig { parent }) => {
                    let parent = self.gpu_by_dra_number(parent).map(|g| g.uuid.clone());
                    let identified = parent.is_some();
                    return Resolved { identified, ..found(d.id(), parent) };
                }
                _ => {}
            }
        }
        Resolved { identified: false, ..found(d.id(), None) }
    }
}

/// The resources of Intel's Gaudi device plugin (`habana.ai/gaudi`), whose ids are serial
/// numbers.
pub const GAUDI_RESOURCE_PREFIX: &str = "habana.ai/";

/// The vendor a resource (an extended resource or a DRA driver) belongs to (Gaudi's
/// `habana.ai` is Intel's).
pub fn vendor_of(resource: &str) -> Vendor {
    let domain = resource.split('/').next().unwrap_or(resource);
    if domain == "nvidia.com" || domain.ends_with(".nvidia.com") {
        Vendor::Nvidia
    } else if domain == "amd.com" || domain.ends_with(".amd.com") {
        Vendor::Amd
    } else if domain == "intel.com" || domain.ends_with(".intel.com") || domain == "habana.ai" {
        Vendor::Intel
    } else {
        Vendor::Other
    }
}

/// The devices of a ResourceSlice (`resource.k8s.io` v1, v1beta2 or v1beta1 as JSON: the
/// attributes sit under `devices[].attributes`, or `devices[].basic.attributes` in v1beta1).
pub fn slice_devices(slice: &serde_json::Value) -> Vec<SliceDevice> {
    let spec = &slice["spec"];
    let Some(driver) = spec["driver"].as_str() else { return Vec::new() };
    let Some(pool) = spec["pool"]["name"].as_str() else { return Vec::new() };
    let Some(devices) = spec["devices"].as_array() else { return Vec::new() };
    devices
        .iter()
        .filter_map(|d| {
            let name = d["name"].as_str()?;
            let attributes = d.get("attributes").or_else(|| d["basic"].get("attributes"))?.as_object();
            // An attribute's name is bare (in the driver's domain) or qualified by a domain.
            let attr = |wanted: &str| -> Option<String> {
                let qualified =
                    if wanted.contains('/') { wanted.to_string() } else { format!("{driver}/{wanted}") };
                let value = attributes?.iter().find(|(k, _)| **k == wanted || **k == qualified)?.1;
                value["string"].as_str().map(str::to_string)
            };
            Some(SliceDevice {
                device: DraDevice {
                    driver: driver.to_string(),
                    pool: pool.to_string(),
                    device: name.to_string(),
                },
                uuid: attr("uuid"),
                parent_uuid: attr("parentUUID"),
                kind: attr("type"),
                pci_address: attr("resource.kubernetes.io/pciBusID").and_then(|p| normalise_pci_address(&p)),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GPU0: &str = "GPU-a4f34abc-7715-3560-dcea-7238b9611a45";
    const GPU1: &str = "GPU-9e6df7cb-64d4-5e53-2b1d-cee9e58aeb94";
    const MIG0: &str = "MIG-4d806f22-346a-5a1d-ac01-86b505cdf485";

    fn node() -> NodeIdentity {
        let mut n = NodeIdentity::default();
        n.set_gpus(vec![
            PhysicalGpu {
                uuid: GPU0.into(),
                index: Some(0),
                minor: Some(0),
                pci_address: Some("0009:01:00.0".into()),
                migs: vec![MigDevice { index: 0, uuid: MIG0.into() }],
            },
            PhysicalGpu {
                uuid: GPU1.into(),
                index: Some(1),
                minor: Some(1),
                pci_address: Some("0019:01:00.0".into()),
                migs: vec![],
            },
        ]);
        n
    }

    #[test]
    fn every_name_of_a_gpu_is_the_gpu() {
        let n = node();
        for (resource, id) in [
            ("nvidia.com/gpu", GPU0),
            ("nvidia.com/gpu", &*format!("{GPU0}::3")),
            ("nvidia.com/gpu.shared", &*format!("{GPU0}::0")),
            ("nvidia.com/gpu", "0"),
            ("nvidia.com/gpu", "nvidia0"),
            ("nvidia.com/gpu", "nvidia0/vgpu4"),
            ("nvidia.com/gpu", "/dev/nvidia0"),
            ("amd.com/gpu", "0009:01:00.0"),
            ("x", "00000009:01:00.0"),
            ("gpu.nvidia.com", "node-a/gpu-0"),
            ("claim:train/gpu", "gpu.nvidia.com/node-a/gpu-0"),
        ] {
            let r = n.resolve(resource, id);
            assert_eq!((r.key.as_str(), r.parent.as_deref()), (GPU0, None), "{resource} {id}");
            assert!(r.identified, "{resource} {id}");
        }
        assert_eq!(n.key_at_pci("0000:09:01:00.0"), None, "not an address");
        assert_eq!(n.key_at_pci("0009:01:00.0").as_deref(), Some(GPU0));
        assert_eq!(n.resolve("nvidia.com/gpu", &format!("{GPU0}::3")).replica, Some(3));
    }

    #[test]
    fn a_mig_device_is_its_own_with_the_gpu_as_parent() {
        let n = node();
        for (resource, id) in [
            ("nvidia.com/gpu", MIG0),
            ("nvidia.com/mig-1g.12gb", MIG0),
            ("nvidia.com/mig-1g.12gb", &*format!("{MIG0}::1")),
            ("nvidia.com/gpu", "0:0"),
        ] {
            let r = n.resolve(resource, id);
            assert_eq!((r.key.as_str(), r.parent.as_deref()), (MIG0, Some(GPU0)), "{resource} {id}");
        }
        let legacy = n.resolve("nvidia.com/gpu", &format!("MIG-{GPU1}/3/0"));
        assert_eq!((legacy.key, legacy.parent.as_deref()), (format!("MIG-{GPU1}/3/0"), Some(GPU1)));
        let gke = n.resolve("nvidia.com/gpu", "nvidia1/gi2/vgpu0");
        assert_eq!(
            (gke.key.as_str(), gke.parent.as_deref(), gke.replica),
            ("nvidia1/gi2", Some(GPU1), Some(0))
        );
        let dra = n.resolve("gpu.nvidia.com", "node-a/gpu-1-mig-1g12gb-19-0");
        assert_eq!(dra.key, "gpu.nvidia.com/node-a/gpu-1-mig-1g12gb-19-0");
        assert_eq!(dra.parent.as_deref(), Some(GPU1));
    }

    #[test]
    fn a_dra_gpu_number_that_could_be_two_gpus_is_not_guessed() {
        let mut n = node();
        // Index and minor disagree: gpu-1 is minor 1 (GPU0) for a new driver, index 1 (GPU1)
        // for an old one.
        n.gpus[0].minor = Some(1);
        n.gpus[1].minor = Some(0);
        let r = n.resolve("gpu.nvidia.com", "node-a/gpu-1");
        assert_eq!((r.key.as_str(), r.identified), ("gpu.nvidia.com/node-a/gpu-1", false));
        // The ResourceSlice says which.
        n.set_slices(vec![SliceDevice {
            device: DraDevice {
                driver: "gpu.nvidia.com".into(),
                pool: "node-a".into(),
                device: "gpu-1".into(),
            },
            uuid: Some(GPU0.into()),
            parent_uuid: None,
            kind: Some("gpu".into()),
            pci_address: None,
        }]);
        assert_eq!(n.resolve("gpu.nvidia.com", "node-a/gpu-1").key, GPU0);
    }

    /// The fixtures of `crates/core/tests/data/device-ids/` (real id shapes of the NVIDIA and
    /// AMD device plugins, GKE's plugin and the NVIDIA DRA driver, with their sources), each on
    /// the node it describes: every name resolves to the device and parent the fixture says.
    #[test]
    fn the_fixtures_resolve_to_their_devices() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../core/tests/data/device-ids");
        let mut checked = 0;
        for file in [
            "nvidia-k8s-device-plugin.json",
            "nvidia-dra-driver-gpu.json",
            "rocm-k8s-device-plugin.json",
            "gke-device-plugin.json",
            "intel-gpu-plugin.json",
        ] {
            let text = std::fs::read_to_string(format!("{dir}/{file}")).expect("fixture");
            let f: serde_json::Value = serde_json::from_str(&text).expect("json");
            let mut n = NodeIdentity::default();
            let gpus = f["node"]["gpus"].as_array().expect("gpus");
            n.set_gpus(
                gpus.iter()
                    .map(|g| PhysicalGpu {
                        uuid: g["uuid"].as_str().expect("uuid").into(),
                        index: g["index"].as_u64().map(|i| i as u32),
                        minor: g["minor"].as_u64().map(|i| i as u32),
                        pci_address: g["pci_address"].as_str().map(str::to_string),
                        migs: g["migs"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|m| MigDevice {
                                index: m["index"].as_u64().expect("index") as u32,
                                uuid: m["uuid"].as_str().expect("uuid").into(),
                            })
                            .collect(),
                    })
                    .collect(),
            );
            n.set_slices(
                f["node"]["slices"].as_array().into_iter().flatten().flat_map(slice_devices).collect(),
            );
            n.set_sysfs_names(
                f["node"]["drm_cards"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|c| {
                        let field = |k: &str| c[k].as_str().expect("drm card field").to_string();
                        (field("name"), field("pci_address"))
                    })
                    .collect(),
            );
            for case in f["cases"].as_array().expect("cases") {
                let Some(key) = case["key"].as_str() else { continue };
                let (resource, id) =
                    (case["resource"].as_str().expect("resource"), case["id"].as_str().expect("id"));
                let r = n.resolve(resource, id);
                assert_eq!(
                    (r.key.as_str(), r.parent.as_deref()),
                    (key, case["parent"].as_str()),
                    "{file}: {} ({resource} {id})",
                    case["what"]
                );
                checked += 1;
            }
            // Each GPU's PCI address (the kernel log's name for it) is the GPU.
            for g in gpus {
                let pci = g["pci_address"].as_str().expect("pci");
                assert_eq!(n.key_at_pci(pci).as_deref(), g["uuid"].as_str(), "{file}: {pci}");
            }
        }
        assert!(checked >= 31, "only {checked} cases");
    }

    #[test]
    fn a_resource_slice_is_read_in_each_version() {
        let v1 = serde_json::json!({"spec": {"driver": "gpu.nvidia.com", "pool": {"name": "n"}, "devices": [
            {"name": "gpu-0", "attributes": {"uuid": {"string": GPU0}, "type": {"string": "gpu"},
             "resource.kubernetes.io/pciBusID": {"string": "0009:01:00.0"}}}]}});
        let v1beta1 = serde_json::json!({"spec": {"driver": "gpu.nvidia.com", "pool": {"name": "n"}, "devices": [
            {"name": "gpu-1-mig-1g12gb-19-0", "basic": {"attributes": {"gpu.nvidia.com/uuid": {"string": MIG0},
             "parentUUID": {"string": GPU0}}}}]}});
        let a = slice_devices(&v1);
        assert_eq!(
            (a[0].uuid.as_deref(), a[0].kind.as_deref(), a[0].pci_address.as_deref()),
            (Some(GPU0), Some("gpu"), Some("0009:01:00.0"))
        );
        let b = slice_devices(&v1beta1);
        assert_eq!((b[0].uuid.as_deref(), b[0].parent_uuid.as_deref()), (Some(MIG0), Some(GPU0)));
        assert!(slice_devices(&serde_json::json!({"spec": {}})).is_empty());
    }

    #[test]
    fn names_nothing_identifies_are_taken_as_they_are() {
        let n = node();
        let r = n.resolve("devheal.io/fake-gpu", "fake-0");
        assert_eq!((r.key.as_str(), r.parent, r.identified), ("fake-0", None, false));
        let r = n.resolve("amd.com/gpu", "amdgpu_xcp_30");
        assert_eq!((r.key.as_str(), r.parent.as_deref()), ("amdgpu_xcp_30", None));
        // With KFD's word on its GPU, a partition is a slice of it.
        let mut amd = n.clone();
        amd.set_amd_partitions(BTreeMap::from([("amdgpu_xcp_30".to_string(), "0000:05:00.0".to_string())]));
        let r = amd.resolve("amd.com/gpu", "amdgpu_xcp_30");
        assert_eq!(
            (r.key.as_str(), r.parent.as_deref(), r.identified),
            ("amdgpu_xcp_30", Some("0000:05:00.0"), true)
        );
        // An Intel card sysfs does not list (yet): its name without the share.
        let r = n.resolve("gpu.intel.com/xe", "card4-1");
        assert_eq!((r.key.as_str(), r.replica, r.identified), ("card4", Some(1), false));
        let r = n.resolve("nic.example.com", "pool/eth-0");
        assert_eq!((r.key.as_str(), r.identified), ("nic.example.com/pool/eth-0", false));
        // An index only for NVIDIA resources.
        assert_eq!(n.resolve("example.com/dev", "0").key, "0");
    }

    #[test]
    fn a_gaudi_serial_resolves_through_hlml_to_its_pci_address_and_only_for_gaudi() {
        let mut n = node();
        let r = n.resolve("habana.ai/gaudi", "AM0000001");
        assert_eq!((r.key.as_str(), r.identified), ("AM0000001", false), "hlml not read yet");
        let serials = BTreeMap::from([("AM0000001".to_string(), "0000:19:00.0".to_string())]);
        assert!(n.set_gaudi_serials(serials.clone()));
        assert!(!n.set_gaudi_serials(serials), "the same serials again: no change");
        let r = n.resolve("habana.ai/gaudi", "AM0000001");
        assert_eq!((r.key.as_str(), r.identified), ("0000:19:00.0", true));
        // Another plugin's id that happens to be the same text is not a Gaudi.
        assert_eq!(n.resolve("example.com/dev", "AM0000001").key, "AM0000001");
        assert_eq!(vendor_of("habana.ai/gaudi"), Vendor::Intel);
    }
}
