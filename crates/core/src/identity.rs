//! Device identity: the names one device goes by, and the one key devheal tracks it under.
//!
//! A GPU appears under many ids, depending on who names it:
//!
//! | who | shape | example |
//! |---|---|---|
//! | NVML, NVIDIA device plugin (`uuid` strategy) | GPU UUID | `GPU-4404041a-04cf-1ccf-9e70-f139a9b1e23c` |
//! | NVML (driver ≥ R470), plugin with MIG | MIG UUID | `MIG-4d806f22-346a-5a1d-ac01-86b505cdf485` |
//! | NVML (R450/R460), plugin with MIG | legacy MIG UUID naming its parent | `MIG-GPU-b1028956-cfa2-0990-bf4a-5da9abb51763/3/0` |
//! | NVIDIA plugin, time-slicing or MPS | replica of a GPU or MIG id | `GPU-…::3`, `MIG-…::0` |
//! | NVIDIA plugin `index` strategy (container side), CDI | index, MIG index | `0`, `0:1` |
//! | the kernel log, NVML, AMD ROCm plugin | PCI bus id | `0000:3b:00.0`, `00000000:3B:00.0` |
//! | `/dev/nvidiaN`, GKE's plugin | minor number | `nvidia3`, `/dev/nvidia3`; MIG `nvidia0/gi2`, shares `nvidia0/vgpu1` |
//! | AMD ROCm plugin, MI300 partitions | partition | `amdgpu_xcp_30` |
//! | Intel GPU plugin (`gpu.intel.com/i915`, `gpu.intel.com/xe`) | DRM card and share | `card1-0`, `card1-3` (the 4th container sharing `card1`) |
//! | DRA (PodResources, ResourceClaim, DeviceTaintRule) | `driver/pool/device` | `gpu.nvidia.com/node-1/gpu-0`, `…/gpu-1-mig-2g47gb-14-0` |
//! | pod status (KEP-4680) for a DRA claim | resource `claim:<claim>[/<request>]`, id the first CDI device id the driver prepared, else `driver/pool/device` | `claim:train-gpus` + `k8s.gpu.nvidia.com/claim=dab5ab50-d59a-42a6-af16-cfd4628c0f7a-gpu-0`, or + `gpu.nvidia.com/node-1/gpu-0` |
//!
//! [`parse_device_id`] reads any of these into a [`DeviceId`] (with the replica number apart);
//! [`canonical_key`] is the one key a device is tracked under whoever named it: a replica is its
//! device, a DRA device is `(driver, driver/pool/device)` whether it came from PodResources
//! (`(driver, pool/device)`), a pod's status (`(claim:…, driver/pool/device)`, or the CDI id
//! of a claim's device, [`claim_cdi_device`]) or the agent.
//! Which physical GPU a MIG slice, an index or a DRA device is needs the node's inventory: the
//! agent resolves that (`devheal_agent::identity`) and publishes each device once, with its
//! parent and every other name it goes by.
//!
//! Where each shape comes from is recorded next to the fixtures in
//! `crates/core/tests/data/device-ids/`.

use serde::{Deserialize, Serialize};

use crate::device::DeviceKey;

/// The resource name prefix KEP-4680 gives a DRA claim in a container's
/// `allocatedResourcesStatus` (`claim:<claim>` or `claim:<claim>/<request>`).
pub const CLAIM_RESOURCE_PREFIX: &str = "claim:";

/// The NVIDIA DRA driver's name (k8s-dra-driver-gpu).
pub const NVIDIA_DRA_DRIVER: &str = "gpu.nvidia.com";

/// One DRA device: `<driver>/<pool>/<device>` (the pool may hold `/`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DraDevice {
    pub driver: String,
    pub pool: String,
    pub device: String,
}

impl DraDevice {
    /// `driver/pool/device`.
    pub fn id(&self) -> String {
        format!("{}/{}/{}", self.driver, self.pool, self.device)
    }
}

/// A DRA driver name: a DNS subdomain with at least one dot, no `/` (an extended resource name
/// has one) and not a KEP-4680 claim.
pub fn is_dra_driver(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.contains('.')
        && !name.starts_with(CLAIM_RESOURCE_PREFIX)
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !name.starts_with(['.', '-'])
        && !name.ends_with(['.', '-'])
}

/// Whether `resource` is the KEP-4680 name of a DRA claim (`claim:<claim>[/<request>]`).
pub fn is_claim_resource(resource: &str) -> bool {
    resource.strip_prefix(CLAIM_RESOURCE_PREFIX).is_some_and(|rest| !rest.is_empty())
}

fn dra_part(s: &str) -> bool {
    !s.is_empty() && !s.contains(['=', ':', ' ']) && !s.starts_with('/') && !s.ends_with('/')
}

/// The DRA device a `(resource, id)` names, in any of the shapes it is written in:
///
/// - `driver/pool/device` under any resource (a pod's status names the claim, `claim:<claim>`;
///   the agent and DeviceTaintRules the driver);
/// - `pool/device` under the driver's name (PodResources' `ClaimResource`).
///
/// `None` for anything else: a device-plugin id (a GPU UUID, a legacy MIG UUID
/// `MIG-GPU-…/3/0` whose first part is no driver name), a CDI name (`vendor/class=name`).
pub fn dra_device(resource: &str, id: &str) -> Option<DraDevice> {
    let split = |driver: &str, rest: &str| -> Option<DraDevice> {
        let (pool, device) = rest.rsplit_once('/')?;
        (is_dra_driver(driver) && dra_part(pool) && dra_part(device) && !device.contains('/')).then(|| {
            DraDevice { driver: driver.to_string(), pool: pool.to_string(), device: device.to_string() }
        })
    };
    if is_dra_driver(resource) {
        // The agent's `driver/pool/device` or PodResources' `pool/device`, under the driver.
        let rest = id
            .strip_prefix(resource)
            .and_then(|r| r.strip_prefix('/'))
            .filter(|r| r.contains('/'))
            .unwrap_or(id);
        return split(resource, rest);
    }
    let (driver, rest) = id.split_once('/')?;
    if rest.contains('/') { split(driver, rest) } else { None }
}

/// A CDI device name `<vendor>/<class>=<name>` (the Container Device Interface's qualified
/// name), as parts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CdiName<'a> {
    pub vendor: &'a str,
    pub class: &'a str,
    pub name: &'a str,
}

/// Read a CDI qualified device name (`vendor/class=name`); `None` for anything else.
pub fn cdi_name(id: &str) -> Option<CdiName<'_>> {
    let (kind, name) = id.split_once('=')?;
    let (vendor, class) = kind.split_once('/')?;
    let ok = |s: &str| {
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    };
    (ok(vendor) && vendor.contains('.') && ok(class) && !name.is_empty() && !name.contains(['/', '=']))
        .then_some(CdiName { vendor, class, name })
}

/// The DRA device a pod's status names by the CDI id the kubelet takes for it (the first CDI
/// device the driver prepared for the claim, KEP-4680) on `node`: the NVIDIA DRA driver's
/// `k8s.<driver>/claim=<claim uid>-<device>` (`k8s.gpu.nvidia.com/claim=dab5ab50-…-gpu-0`),
/// whose pool is the node's name (the driver publishes one pool per node, named after it).
/// Other drivers' CDI names say nothing of the device: `None`.
pub fn claim_cdi_device(id: &str, node: &str) -> Option<DraDevice> {
    let cdi = cdi_name(id)?;
    let driver = cdi.vendor.strip_prefix("k8s.")?;
    if cdi.class != "claim" || !is_dra_driver(driver) || node.is_empty() {
        return None;
    }
    // `<claim uid>-<device>`: the uid is a UUID (36 characters).
    let (uid, device) = (cdi.name.get(..36)?, cdi.name.get(36..)?.strip_prefix('-')?);
    (is_uuid(uid) && dra_part(device)).then(|| DraDevice {
        driver: driver.to_string(),
        pool: node.to_string(),
        device: device.to_string(),
    })
}

/// A device id with a replica number split off: the NVIDIA device plugin's time-slicing and
/// MPS replicas (`<id>::<n>`) and GKE's shared GPUs (`nvidia0/vgpu<n>`). The rest is the device.
pub fn split_replica(id: &str) -> (&str, Option<u32>) {
    if let Some((base, n)) = id.rsplit_once("::")
        && !base.is_empty()
        && let Ok(n) = n.parse::<u32>()
    {
        return (base, Some(n));
    }
    if let Some((base, n)) = id.rsplit_once("/vgpu")
        && base.starts_with("nvidia")
        && let Ok(n) = n.parse::<u32>()
    {
        return (base, Some(n));
    }
    (id, None)
}

/// [`split_replica`] for an id exposed under `resource`: Intel's GPU plugin
/// (`gpu.intel.com/…`) names each share of a DRM card `card<N>-<share>` (one id per container
/// that may share it, `-shared-dev-num`), so `card1-3` is share 3 of `card1`. Other resources as
/// [`split_replica`].
pub fn split_replica_of<'a>(resource: &str, id: &'a str) -> (&'a str, Option<u32>) {
    if resource.starts_with(INTEL_GPU_RESOURCE_PREFIX)
        && let Some((card, share)) = id.rsplit_once('-')
        && drm_card(card).is_some()
        && let Ok(share) = share.parse::<u32>()
    {
        return (card, Some(share));
    }
    split_replica(id)
}

/// The resource prefix of Intel's GPU plugin (`gpu.intel.com/i915`, `gpu.intel.com/xe`).
pub const INTEL_GPU_RESOURCE_PREFIX: &str = "gpu.intel.com/";

/// The number of a DRM card name, `card<N>` (`/sys/class/drm/card<N>`); `None` for anything
/// else (a connector `card1-DP-1`, a render node `renderD128`).
pub fn drm_card(name: &str) -> Option<u32> {
    let n = name.strip_prefix("card")?;
    (!n.is_empty()
        && n.len() <= 6
        && n.bytes().all(|b| b.is_ascii_digit())
        && (n == "0" || !n.starts_with('0')))
    .then(|| n.parse().ok())
    .flatten()
}

/// A PCI address as the kernel prints it: lower-case `dddd:bb:dd.f`, the domain without the
/// zero padding NVML adds (`00000000:3B:00.0` → `0000:3b:00.0`, a VMD domain
/// `00010000:E1:00.0` → `10000:e1:00.0`). Accepts `dddd:bb:dd` (function 0, the NVIDIA Xid
/// form) and `bb:dd.f` (domain 0). `None` for anything else.
pub fn normalise_pci_address(text: &str) -> Option<String> {
    let text = text.trim();
    let text = text.strip_prefix("PCI:").unwrap_or(text);
    let (body, function) = match text.rsplit_once('.') {
        Some((body, f)) => (body, f),
        None => (text, "0"),
    };
    let function: u8 = function.parse().ok().filter(|f| *f <= 7)?;
    let parts: Vec<&str> = body.split(':').collect();
    let (domain, bus, device) = match parts.as_slice() {
        [domain, bus, device] => (*domain, *bus, *device),
        [bus, device] if text.contains('.') => ("0", *bus, *device),
        _ => return None,
    };
    let hex =
        |s: &str, max: usize| !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex(domain, 8) || !hex(bus, 2) || bus.len() != 2 || !hex(device, 2) || device.len() != 2 {
        return None;
    }
    let domain = u32::from_str_radix(domain, 16).ok()?;
    let bus = u8::from_str_radix(bus, 16).ok()?;
    let device = u8::from_str_radix(device, 16).ok().filter(|d| *d <= 0x1f)?;
    Some(format!("{domain:04x}:{bus:02x}:{device:02x}.{function}"))
}

fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// What one id says about the device it names (its replica number apart).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceId {
    /// `GPU-<uuid>`: a whole NVIDIA GPU.
    GpuUuid(String),
    /// `MIG-<uuid>`: a MIG device (its parent is known to NVML only).
    MigUuid(String),
    /// `MIG-GPU-<uuid>/<gi>/<ci>`: a MIG device of an R450/R460 driver, naming its parent GPU.
    LegacyMig { parent: String, gi: u32, ci: u32 },
    /// A PCI bus id, normalised ([`normalise_pci_address`]).
    PciBusId(String),
    /// A GPU's index (`0`): the NVIDIA plugin's `index` strategy, CDI names.
    Index(u32),
    /// `<gpu index>:<mig index>`: a MIG device in the `index` strategy.
    MigIndex { gpu: u32, mig: u32 },
    /// A GPU's minor number: `/dev/nvidia3`, `nvidia3` (GKE's plugin).
    Minor(u32),
    /// `nvidia<minor>/gi<gpu instance>`: a MIG device in GKE's plugin.
    MinorGpuInstance { minor: u32, gi: u32 },
    /// `amdgpu_xcp_<n>`: a partition of an AMD Instinct GPU (ROCm plugin).
    AmdPartition(u32),
    /// `card<n>`: a DRM card (`/sys/class/drm/card<n>`), as Intel's GPU plugin names a GPU.
    DrmCard(u32),
    /// A DRA device.
    Dra(DraDevice),
    /// Any other id (a fake device, another vendor's plugin).
    Other(String),
}

/// An id read by [`parse_device_id`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedId {
    pub id: DeviceId,
    /// The replica (time-slicing, MPS, a shared GPU) the id names of its device.
    pub replica: Option<u32>,
}

/// Read `id` (as exposed under `resource`) into what it says about its device. Indexes are read
/// only for NVIDIA resources (`nvidia.com/…`, the NVIDIA DRA driver): a bare number is any
/// plugin's id otherwise.
pub fn parse_device_id(resource: &str, id: &str) -> ParsedId {
    if let Some(d) = dra_device(resource, id) {
        return ParsedId { id: DeviceId::Dra(d), replica: None };
    }
    let (base, replica) = split_replica_of(resource, id);
    ParsedId { id: parse_base(resource, base), replica }
}

fn parse_base(resource: &str, id: &str) -> DeviceId {
    let number = |s: &str| -> Option<u32> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0')))
            .then(|| s.parse().ok())
            .flatten()
    };
    if let Some(rest) = id.strip_prefix("GPU-")
        && is_uuid(rest)
    {
        return DeviceId::GpuUuid(id.to_string());
    }
    if let Some(rest) = id.strip_prefix("MIG-") {
        if is_uuid(rest) {
            return DeviceId::MigUuid(id.to_string());
        }
        let parts: Vec<&str> = rest.split('/').collect();
        if let [parent, gi, ci] = parts.as_slice()
            && parent.strip_prefix("GPU-").is_some_and(is_uuid)
            && let (Some(gi), Some(ci)) = (number(gi), number(ci))
        {
            return DeviceId::LegacyMig { parent: parent.to_string(), gi, ci };
        }
    }
    if let Some(pci) = normalise_pci_address(id)
        && id.contains('.')
    {
        return DeviceId::PciBusId(pci);
    }
    let path = id.strip_prefix("/dev/").unwrap_or(id);
    if let Some(rest) = path.strip_prefix("nvidia") {
        if let Some(minor) = number(rest) {
            return DeviceId::Minor(minor);
        }
        if let Some((minor, gi)) = rest.split_once("/gi")
            && let (Some(minor), Some(gi)) = (number(minor), number(gi))
        {
            return DeviceId::MinorGpuInstance { minor, gi };
        }
    }
    if let Some(n) = id.strip_prefix("amdgpu_xcp_").and_then(number) {
        return DeviceId::AmdPartition(n);
    }
    if resource.starts_with(INTEL_GPU_RESOURCE_PREFIX)
        && let Some(n) = drm_card(id)
    {
        return DeviceId::DrmCard(n);
    }
    let nvidia = resource.starts_with("nvidia.com/") || resource == NVIDIA_DRA_DRIVER;
    if nvidia {
        if let Some(i) = number(id) {
            return DeviceId::Index(i);
        }
        if let Some((gpu, mig)) = id.split_once(':')
            && let (Some(gpu), Some(mig)) = (number(gpu), number(mig))
        {
            return DeviceId::MigIndex { gpu, mig };
        }
    }
    DeviceId::Other(id.to_string())
}

/// A device name of the NVIDIA DRA driver: `gpu-<n>` (a whole GPU), `gpu-<n>-mig-…` (a MIG
/// device of GPU `n`), where `n` is the GPU's minor number since the driver's v25.8 and its
/// index before (commit 85eff3b, "Use device minor as suffix in device name instead of the
/// index"); `gpu-vfio-<n>` is a GPU passed through to a VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NvidiaDraName {
    Gpu(u32),
    /// A MIG device of GPU `parent`: `gpu-<n>-mig-<profile>-<profile id>-<placement start>`
    /// (`gpu-1-mig-2g47gb-14-0`), or before v25.8 `gpu-<n>-mig-<profile id>-<start>-<size>`
    /// (`gpu-1-mig-19-4-1`).
    Mig {
        parent: u32,
    },
    Vfio(u32),
}

/// Read an NVIDIA DRA driver device name (see [`NvidiaDraName`]).
pub fn nvidia_dra_name(device: &str) -> Option<NvidiaDraName> {
    let rest = device.strip_prefix("gpu-")?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if let Some(n) = rest.strip_prefix("vfio-") {
        return digits(n).then(|| n.parse().ok().map(NvidiaDraName::Vfio)).flatten();
    }
    match rest.split_once("-mig-") {
        Some((n, profile)) if digits(n) && !profile.is_empty() => {
            n.parse().ok().map(|parent| NvidiaDraName::Mig { parent })
        }
        None if digits(rest) => rest.parse().ok().map(NvidiaDraName::Gpu),
        _ => None,
    }
}

/// The key a device is tracked under, whoever named it: a DRA device as
/// `(node, driver, driver/pool/device)` (from PodResources' `(driver, pool/device)` and a pod
/// status' `(claim:<claim>, driver/pool/device)` or `(claim:<claim>, <CDI id>)` alike,
/// [`claim_cdi_device`]); a replica (`GPU-…::3`) as its device.
/// Anything else as it is. Which physical GPU a key is, and its parent, is the agent's to say
/// (it publishes every other name a device goes by with it).
pub fn canonical_key(key: &DeviceKey) -> DeviceKey {
    let dra = dra_device(&key.resource, &key.id)
        .or_else(|| is_claim_resource(&key.resource).then(|| claim_cdi_device(&key.id, &key.node)).flatten());
    if let Some(d) = dra {
        return DeviceKey::new(key.node.clone(), d.driver.clone(), d.id());
    }
    let (base, replica) = split_replica_of(&key.resource, &key.id);
    match replica {
        Some(_) => DeviceKey::new(key.node.clone(), key.resource.clone(), base),
        None => key.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_addresses_normalise_to_the_kernel_form() {
        for (input, want) in [
            ("00000000:3B:00.0", Some("0000:3b:00.0")),
            ("0000:3b:00.0", Some("0000:3b:00.0")),
            ("0000:3B:00", Some("0000:3b:00.0")),
            ("PCI:0000:3b:00", Some("0000:3b:00.0")),
            ("3b:00.0", Some("0000:3b:00.0")),
            ("00000001:C1:00.1", Some("0001:c1:00.1")),
            ("00010000:E1:00.0", Some("10000:e1:00.0")),
            ("10000:e1:00.0", Some("10000:e1:00.0")),
            ("0000:3b:20.0", None),
            ("0000:3b:00.8", None),
            ("garbage", None),
            ("GPU-4404041a-04cf-1ccf-9e70-f139a9b1e23c", None),
        ] {
            assert_eq!(normalise_pci_address(input).as_deref(), want, "{input}");
        }
    }

    #[test]
    fn dra_devices_read_in_every_shape() {
        let d = |driver: &str, pool: &str, device: &str| {
            Some(DraDevice { driver: driver.into(), pool: pool.into(), device: device.into() })
        };
        assert_eq!(dra_device("gpu.nvidia.com", "node-1/gpu-0"), d("gpu.nvidia.com", "node-1", "gpu-0"));
        assert_eq!(
            dra_device("claim:train-gpus/gpu", "gpu.nvidia.com/node-1/gpu-0"),
            d("gpu.nvidia.com", "node-1", "gpu-0")
        );
        assert_eq!(
            dra_device("gpu.nvidia.com", "gpu.nvidia.com/node-1/gpu-0"),
            d("gpu.nvidia.com", "node-1", "gpu-0")
        );
        assert_eq!(dra_device("gpu.example.com", "rack/1/dev-3"), d("gpu.example.com", "rack/1", "dev-3"));
        assert_eq!(dra_device("x", "gpu.example.com/rack/1/dev-3"), d("gpu.example.com", "rack/1", "dev-3"));
        assert_eq!(dra_device("nvidia.com/gpu", "GPU-fef8089b-4820-abfc-e83e-94318197576e"), None);
        assert_eq!(dra_device("nvidia.com/gpu", "MIG-GPU-b1028956-cfa2-0990-bf4a-5da9abb51763/3/0"), None);
        assert_eq!(dra_device("nvidia.com/gpu", "k8s.gpu.nvidia.com/claim=uid-gpu-0"), None);
        assert_eq!(dra_device("nvidia.com/gpu", "nvidia.com//x"), None);
        assert_eq!(dra_device("nvidia.com/gpu", "nvidia0/vgpu1"), None);
        assert_eq!(dra_device("claim:", "gpu.nvidia.com/n/gpu-0"), d("gpu.nvidia.com", "n", "gpu-0"));
        assert!(is_claim_resource("claim:c") && !is_claim_resource("claim:"));
    }

    #[test]
    fn replicas_split_off() {
        assert_eq!(split_replica("GPU-4404041a-04cf-1ccf-9e70-f139a9b1e23c::3").1, Some(3));
        assert_eq!(
            split_replica("MIG-4d806f22-346a-5a1d-ac01-86b505cdf485::0").0,
            "MIG-4d806f22-346a-5a1d-ac01-86b505cdf485"
        );
        assert_eq!(split_replica("nvidia0/gi1/vgpu2"), ("nvidia0/gi1", Some(2)));
        assert_eq!(split_replica("nvidia0/vgpu2"), ("nvidia0", Some(2)));
        assert_eq!(split_replica("0::1"), ("0", Some(1)));
        assert_eq!(split_replica("a::b"), ("a::b", None));
        assert_eq!(split_replica("::1"), ("::1", None));
        assert_eq!(split_replica_of("gpu.intel.com/i915", "card1-3"), ("card1", Some(3)));
        assert_eq!(split_replica_of("gpu.intel.com/xe", "card1-DP-1"), ("card1-DP-1", None));
        assert_eq!(split_replica_of("example.com/x", "card1-3"), ("card1-3", None));
        assert_eq!((drm_card("card0"), drm_card("card01"), drm_card("renderD128")), (Some(0), None, None));
    }

    #[test]
    fn nvidia_dra_names() {
        assert_eq!(nvidia_dra_name("gpu-0"), Some(NvidiaDraName::Gpu(0)));
        assert_eq!(nvidia_dra_name("gpu-1-mig-2g47gb-14-0"), Some(NvidiaDraName::Mig { parent: 1 }));
        assert_eq!(nvidia_dra_name("gpu-1-mig-19-4-1"), Some(NvidiaDraName::Mig { parent: 1 }));
        assert_eq!(nvidia_dra_name("gpu-vfio-2"), Some(NvidiaDraName::Vfio(2)));
        assert_eq!(nvidia_dra_name("gpu-"), None);
        assert_eq!(nvidia_dra_name("dev-0"), None);
    }

    #[test]
    fn canonical_keys_of_one_device_are_equal() {
        let agent = DeviceKey::new("n", "gpu.nvidia.com", "gpu.nvidia.com/n/gpu-0");
        for k in [
            DeviceKey::new("n", "gpu.nvidia.com", "n/gpu-0"),
            DeviceKey::new("n", "claim:train", "gpu.nvidia.com/n/gpu-0"),
            DeviceKey::new("n", "claim:train/gpu", "gpu.nvidia.com/n/gpu-0"),
            agent.clone(),
        ] {
            assert_eq!(canonical_key(&k), agent, "{k}");
        }
        // The NVIDIA DRA driver's CDI id, which the kubelet puts in the pod's status.
        let cdi = DeviceKey::new(
            "n",
            "claim:train",
            "k8s.gpu.nvidia.com/claim=dab5ab50-d59a-42a6-af16-cfd4628c0f7a-gpu-0",
        );
        assert_eq!(canonical_key(&cdi), agent);
        let other = DeviceKey::new("n", "claim:train", "gpu.example.com/test=abc");
        assert_eq!(canonical_key(&other), other, "a CDI name that says nothing of the device");
        let gpu = DeviceKey::new("n", "nvidia.com/gpu", "GPU-4404041a-04cf-1ccf-9e70-f139a9b1e23c");
        let replica = DeviceKey::new("n", "nvidia.com/gpu", "GPU-4404041a-04cf-1ccf-9e70-f139a9b1e23c::7");
        assert_eq!(canonical_key(&replica), gpu);
        assert_eq!(canonical_key(&gpu), gpu);
    }
}
