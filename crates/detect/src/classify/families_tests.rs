//! Unit tests for the families in `families.rs` and the NVLink 5, AER-recovery and amdgpu
//! additions in the parent module. Real lines with their sources are in
//! `tests/data/real-lines.txt`; these pin the parsers' edges.

use devheal_core::{Attribution, Health, RepairKind};

use super::{Classifier, DeviceFault, FaultKind};

fn classify(message: &str) -> Option<DeviceFault> {
    Classifier::default().classify(message)
}

#[test]
fn gsp_heartbeat_and_rpc_timeouts() {
    let beat = classify("NVRM: GPU6 _kgspIsHeartbeatTimedOut: Heartbeat timed out, currentTimeMs 812751949 heartbeat 1899482 heartbeatWithOffsetMs 812745879 diff 6070 timeout 5200").unwrap();
    assert_eq!(beat.kind, FaultKind::NvidiaGsp);
    assert_eq!(beat.variant, "heartbeat_timeout");
    assert_eq!(beat.health, Health::Unhealthy);
    assert_eq!(beat.action, RepairKind::ResetDevice);
    assert!(beat.summary.contains("driver GPU6"), "{}", beat.summary);
    let poll = classify("NVRM: GPU0 _kgspRpcRecvPoll: GSP RM heartbeat timed out").unwrap();
    assert_eq!(poll.variant, "heartbeat_timeout");
    let rpc = classify(
        "NVRM: GPU6 _kgspLogRpcTimeout: ********************************* GSP Timeout **********************************",
    )
    .unwrap();
    assert_eq!(rpc.variant, "rpc_timeout");
    // Not the NVIDIA driver: a heartbeat of something else.
    assert!(classify("ipmi_si: heartbeat timed out, resetting BMC").is_none());
}

#[test]
fn nvlink5_xids_decode_fatal_from_the_text() {
    let fatal = classify("NVRM: Xid (PCI:0000:00:00): 149, NETIR_LINK_EVT Fatal XC0 i0 Link 00 (0x025001c6 0x00000000 0x00000000 0x00000000 0x00000000 0x00000000)").unwrap();
    assert_eq!(fatal.code, Some(149));
    assert_eq!(fatal.health, Health::Unhealthy);
    assert_eq!(fatal.action, RepairKind::ResetDevice);
    assert_eq!(fatal.attribution, Attribution::Interconnect);
    assert!(fatal.summary.contains("(fatal)"), "{}", fatal.summary);
    let benign = classify("NVRM: Xid (PCI:0018:01:00): 145, RLW_RXPIPE Nonfatal XC0 i0 Link 13 (0x0409a0c2 0x00000008 0x00000001 0x00000000 0x00100000 0x00000004)").unwrap();
    assert_eq!(benign.health, Health::Healthy);
    assert_eq!(benign.action, RepairKind::None);
    assert!(benign.summary.contains("(non-fatal)"), "{}", benign.summary);
    // Without a severity word the catalog's entry stands.
    let unknown = classify("NVRM: Xid (PCI:0000:01:00): 146, something new").unwrap();
    assert_eq!(unknown.health, Health::Degraded);
    // The severity word of another Xid is not read.
    let other = classify("NVRM: Xid (PCI:0000:01:00): 13, pid=1, name=x, Fatal Graphics Exception").unwrap();
    assert_eq!(other.health, Health::Healthy);
}

#[test]
fn aer_recovery_failures() {
    let port = classify("pcieport 0000:80:1b.4: AER: device recovery failed").unwrap();
    assert_eq!(port.kind, FaultKind::PcieAer);
    assert_eq!(port.variant, "recovery_failed");
    assert_eq!(port.device.as_deref(), Some("0000:80:1b.4"));
    assert_eq!(port.health, Health::Unhealthy);
    let driver = classify("xhci_hcd 0000:97:00.0: AER: can't recover (no error_detected callback)").unwrap();
    assert_eq!(driver.variant, "recovery_failed");
    assert_eq!(driver.device.as_deref(), Some("0000:97:00.0"));
    assert!(classify("pcieport 0000:00:01.0: AER: device recovery successful").is_none());
}

#[test]
fn amdgpu_ring_reset_failed_and_athub() {
    let ring = classify("amdgpu 0000:28:00.0: Ring gfx_0.0.0 reset failed").unwrap();
    assert_eq!(ring.variant, "ring_reset_failed");
    assert_eq!(ring.device.as_deref(), Some("0000:28:00.0"));
    assert_eq!(ring.health, Health::Unhealthy);
    let athub = classify(
        "amdgpu 0000:e3:00.0: amdgpu: uncorrectable hardware error(ERREVENT_ATHUB_INTERRUPT) detected!",
    )
    .unwrap();
    assert_eq!(athub.variant, "ras_uncorrectable");
    assert!(athub.summary.contains("ERREVENT_ATHUB_INTERRUPT"), "{}", athub.summary);
    let braced =
        classify("amdgpu 0000:e6:00.0: {1}uncorrectable hardware error(ERREVENT_ATHUB_INTERRUPT) detected!")
            .unwrap();
    assert_eq!(braced.device.as_deref(), Some("0000:e6:00.0"));
    let start = classify("amdgpu 0000:28:00.0: Starting gfx_0.0.0 ring reset");
    assert!(start.is_none(), "{start:?}");
}

#[test]
fn edac_with_dimm() {
    let ce = classify("EDAC MC0: 1 CE memory read error on CPU_SrcID#0_Ha#0_Chan#2_DIMM#0 (channel:2 slot:0 page:0x849923 offset:0x380 grain:32 syndrome:0x0 -  area:DRAM err_code:0001:0092 socket:0 ha:0 channel_mask:4 rank:0)").unwrap();
    assert_eq!(ce.kind, FaultKind::Edac);
    assert_eq!(ce.variant, "corrected");
    assert_eq!(ce.health, Health::Healthy);
    assert!(ce.summary.contains("CPU_SrcID#0_Ha#0_Chan#2_DIMM#0"), "{}", ce.summary);
    let ue =
        classify("EDAC MC1: 1 UE memory read error on CPU_SrcID#0_MC#0_Chan#0_DIMM#0 (channel:0 slot:0)")
            .unwrap();
    assert_eq!(ue.variant, "uncorrected");
    assert_eq!(ue.health, Health::Unhealthy);
    assert_eq!(ue.attribution, Attribution::Host);
    assert!(classify("EDAC MC0: Giving out device to module skx_edac controller Skylake").is_none());
    assert!(classify("EDAC MC: Ver: 3.0.0").is_none());
}

#[test]
fn machine_check_by_bank() {
    let bank = classify("EDAC sbridge MC0: CPU 0: Machine Check Event: 0 Bank 5: 8c00004000010092").unwrap();
    assert_eq!(bank.kind, FaultKind::Mce);
    assert_eq!(bank.variant, "corrected");
    assert!(bank.summary.contains("CPU 0 bank 5"), "{}", bank.summary);
}

#[test]
fn habanalabs_heartbeat() {
    let fault = classify("habanalabs hl0: Device heartbeat failed! PCI link is broken").unwrap();
    assert_eq!(fault.kind, FaultKind::Habanalabs);
    assert_eq!(fault.health, Health::Unhealthy);
    assert!(fault.summary.ends_with("PCI link is broken."), "{}", fault.summary);
    assert_eq!((fault.device.as_deref(), fault.device_name.as_deref()), (None, Some("hl0")));
    let accel = classify("accel accel3: Device heartbeat failed! PCI link is broken").unwrap();
    assert_eq!(accel.device_name.as_deref(), Some("accel3"));
    let by_address = classify("habanalabs 0000:19:00.0: Device heartbeat failed!").unwrap();
    assert_eq!(by_address.device.as_deref(), Some("0000:19:00.0"));
    assert_eq!(by_address.device_name, None, "the address is the name");
    assert!(classify("myapp: Device heartbeat failed: timeout").is_none());
}

#[test]
fn intel_gpu_forms() {
    let hang = classify("i915 0000:00:02.0: [drm] GPU HANG: ecode 12:1:0020fffe, in xdg-desktop-por [1676]")
        .unwrap();
    assert_eq!(hang.kind, FaultKind::IntelGpu);
    assert_eq!(hang.variant, "gpu_hang");
    assert_eq!(hang.device.as_deref(), Some("0000:00:02.0"));
    let failed = classify(
        "i915 0000:00:02.0: [drm] *ERROR* GT0: GUC: Engine reset failed on 0:0 (rcs0) because 0x00000000",
    )
    .unwrap();
    assert_eq!(failed.variant, "reset_failed");
    assert_eq!(failed.health, Health::Unhealthy);
    let wedged =
        classify("xe 0000:00:02.0: [drm] *ERROR* CRITICAL: Xe has declared device 0000:00:02.0 as wedged.")
            .unwrap();
    assert_eq!(wedged.variant, "wedged");
    assert!(classify("xe 0000:00:02.0: [drm] Tile0: GT0: reset started").is_none());
    assert!(classify("amdgpu 0000:65:00.0: [drm] device wedged, but recovered through reset").is_none());
}

#[test]
fn nic_link_is_a_network_fault() {
    let down = classify("mlx5_core 0000:08:00.0 ens1np0: Link down").unwrap();
    assert_eq!(down.kind, FaultKind::NicLink);
    assert_eq!(down.variant, "down");
    assert_eq!(down.device.as_deref(), Some("0000:08:00.0"));
    assert_eq!(down.attribution, Attribution::Network);
    assert_eq!(down.health, Health::Degraded);
    let up = classify("mlx5_core 0000:01:00.1 eth1: Link up").unwrap();
    assert_eq!(up.variant, "up");
    assert_eq!(up.health, Health::Healthy);
    let igb = classify("igb 0000:00:14.0 eth0: igb: eth0 NIC Link is Down").unwrap();
    assert_eq!(igb.variant, "down");
    assert_eq!(down.interface.as_deref(), Some("ens1np0"));
    assert_eq!(igb.interface.as_deref(), Some("eth0"));
    // The interface alone: mapped by name on the node.
    let named = classify("e1000e: eth0 NIC Link is Down").unwrap();
    assert_eq!(
        (named.variant, named.device.as_deref(), named.interface.as_deref()),
        ("down", None, Some("eth0"))
    );
    let bare = classify("mlx5_core 0000:08:00.0: Link down").unwrap();
    assert_eq!((bare.device.as_deref(), bare.interface.as_deref()), (Some("0000:08:00.0"), None));
    assert!(classify("Link down").is_none(), "names no port");
    assert!(classify("foo/bar: Link down").is_none(), "not an interface name");
    assert!(classify("mt7530-mdio mdio-bus:1f lan: Link is Down").is_none());
    assert!(classify("ata23: SATA link down (SStatus FFFFFFFF SControl FFFFFFFF)").is_none());
}
