//! Real-hardware check of the NVML source. It needs an NVIDIA GPU and driver, so it is ignored
//! by default; run it on a GPU machine with
//! `cargo test -p devheal-agent --test nvml_gpu -- --ignored --nocapture`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use devheal_agent::nvml::{GpuTelemetry, NvmlTelemetry};

#[test]
#[ignore = "needs an NVIDIA GPU and driver"]
fn reads_every_signal_on_every_gpu() {
    let nvml = match NvmlTelemetry::open() {
        Ok(n) => n,
        Err(e) => panic!("NVML must load on a GPU machine: {e}"),
    };
    let driver = nvml.driver().expect("driver info");
    println!("driver: {}", serde_json::to_string(&driver).unwrap_or_default());
    assert!(driver.device_count >= 1, "a GPU machine has at least one GPU");

    let gpus = nvml.gpus().expect("gpu identities");
    assert_eq!(gpus.len() as u32, driver.device_count);
    for gpu in &gpus {
        println!("gpu: {}", serde_json::to_string(gpu).unwrap_or_default());
        assert!(gpu.uuid.starts_with("GPU-"), "uuid {}", gpu.uuid);
        assert_eq!(gpu.pci_address.len(), 12, "pci address {} is dddd:bb:dd.f", gpu.pci_address);

        let s = nvml.sample(gpu.index).expect("sample");
        println!("sample: {}", serde_json::to_string_pretty(&s).unwrap_or_default());
        // Every signal is either read or named as unsupported; nothing fails silently.
        assert!(s.errors.is_empty(), "signals failed to read: {:?}", s.errors);
        let t = s.temperature_c.expect("temperature");
        assert!((5..=110).contains(&t), "temperature {t} C");
        assert!(s.power_mw.expect("power") > 0);
        assert!(s.clocks.sm_mhz.expect("SM clock") > 0);
        assert!(s.clocks.sm_max_mhz.expect("max SM clock") >= s.clocks.sm_mhz.unwrap_or(0));
        let (g, mg) = (s.pcie.generation.expect("pcie gen"), s.pcie.max_generation.expect("max gen"));
        let (w, mw) = (s.pcie.width.expect("pcie width"), s.pcie.max_width.expect("max width"));
        assert!(g >= 1 && g <= mg, "pcie gen {g}/{mg}");
        assert!(w >= 1 && w <= mw, "pcie width {w}/{mw}");
        assert!(s.pcie.replay_counter.is_some() || s.unsupported.iter().any(|u| u == "pcie_replay_counter"));
        assert!(s.ecc.enabled.is_some() || s.unsupported.iter().any(|u| u == "ecc_mode"));
        if s.ecc.enabled == Some(true) {
            assert!(s.ecc.volatile_uncorrected.is_some(), "ECC on but its counters unread");
        }
        assert!(
            s.row_remapping.pending.is_some() || s.unsupported.iter().any(|u| u.starts_with("row_remapping")),
            "row remapping neither read nor unsupported"
        );
    }

    // The Xid event thread registers on every GPU and waits; with no fault, it sees nothing.
    let (tx, rx) = std::sync::mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let handle = nvml.spawn_xid_watcher(tx, Arc::clone(&stop), 200).expect("xid watcher");
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    let result = handle.join().expect("xid thread did not panic");
    let events: Vec<_> = rx.try_iter().collect();
    println!("xid watcher: {result:?}, {} events while idle", events.len());
    assert!(result.is_ok(), "xid event loop failed: {result:?}");
}
