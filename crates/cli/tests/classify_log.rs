//! End-to-end tests of `devheal classify-log`: the built binary on real kernel log lines
//! (`crates/detect/tests/data/example-kernel.log`, sources written in the file).

use std::path::PathBuf;

mod common;
use common::devheal;

fn example_log() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../detect/tests/data/example-kernel.log")
}

#[test]
fn json_output_is_exactly_the_promised_fields() {
    let log = example_log();
    let output = devheal(&["classify-log", log.to_str().unwrap()], None);
    // The log shows hardware faults (Xid 62, 79, a fatal PCIe error): exit 1.
    assert_eq!(output.status.code(), Some(1), "stderr: {}", String::from_utf8_lossy(&output.stderr));
    let expected = [
        r#"{"line":2,"kind":"nvidia_xid","code":62,"device":"0000:01:00.0","attribution":"device","health":"unhealthy","action":"reset_device","incident":"local/-/0000:01:00.0/nvidia_xid-62/1","summary":"Xid 62 (PMU_HALT_ERROR) on 0000:01:00.0: internal micro-controller halt."}"#,
        r#"{"line":4,"kind":"nvidia_xid","code":154,"device":"0000:01:00.0","attribution":"device","health":"unhealthy","action":"reset_device","incident":"local/-/0000:01:00.0/nvidia_xid-62/1","summary":"Xid 154 (GPU_RECOVERY_ACTION_CHANGED) on 0000:01:00.0: the driver changed the GPU's recovery action to GPU Reset Required."}"#,
        r#"{"line":5,"kind":"nvidia_xid","code":45,"device":"0000:01:00.0","attribution":"application","health":"healthy","action":"none","incident":"local/-/0000:01:00.0/nvidia_xid-62/1","summary":"Xid 45 (PREEMPTIVE_REMOVAL) on 0000:01:00.0: preemptive cleanup of the application's channels (process teardown) (process VLLM::Worker, pid 12542)."}"#,
        r#"{"line":7,"kind":"pcie_aer","code":null,"device":"0000:00:02.0","attribution":"interconnect","health":"unhealthy","action":"reboot_node","incident":"local/-/0000:00:02.0/pcie_aer-fatal/2","summary":"Uncorrected fatal PCIe error (the link is unreliable) on 0000:00:02.0."}"#,
        r#"{"line":8,"kind":"pcie_aer","code":null,"device":"0000:00:02.0","attribution":"interconnect","health":"unhealthy","action":"reboot_node","incident":"local/-/0000:00:02.0/pcie_aer-fatal/2","summary":"Uncorrected fatal PCIe error (the link is unreliable) on 0000:00:02.0: type=Transaction Layer, id=0010(Receiver ID)."}"#,
        r#"{"line":11,"kind":"nvidia_xid","code":79,"device":"0000:02:00.0","attribution":"device","health":"unhealthy","action":"reboot_node","incident":"local/-/0000:02:00.0/nvidia_xid-79/3","summary":"Xid 79 (GPU_HAS_FALLEN_OFF_THE_BUS) on 0000:02:00.0: the GPU has fallen off the bus."}"#,
    ];
    let stdout = String::from_utf8(output.stdout).expect("utf-8 output");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines, expected);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("11 lines, 6 device-fault lines in 3 incidents"), "{stderr}");
}

#[test]
fn stdin_with_junk_is_skipped_and_counted() {
    let mut input = Vec::new();
    input.extend_from_slice(b"[ 1.0] usb 1-1: new high-speed USB device number 2 using xhci_hcd\n");
    input.extend_from_slice(b"\xff\xfe\xfd binary \x00 junk\n");
    input.extend_from_slice(b"NVRM: Xid (PCI:0000:3b:00): 95, \xc3\x28 bad utf-8\n");
    input.extend_from_slice(&vec![b'x'; 3 << 20]);
    input.push(b'\n');
    input.extend_from_slice(
        b"[ 2.0] NVRM: Xid (PCI:0000:3b:00): 95, pid=7, name=train, Uncontained ECC error\n",
    );
    let output = devheal(&["classify-log", "-", "--format", "json"], Some(&input));
    assert_eq!(output.status.code(), Some(1), "Xid 95 is a device fault");
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.starts_with(r#"{"line":5,"kind":"nvidia_xid","code":95,"#), "{stdout}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("skipped 3 lines: 1 invalid UTF-8, 1 binary, 1 longer than 65536 bytes"),
        "{stderr}"
    );
}

#[test]
fn table_format_has_a_header_and_one_row_per_fault() {
    let log = example_log();
    let output = devheal(&["classify-log", "--format", "table", log.to_str().unwrap()], None);
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 7, "{stdout}");
    assert!(lines[0].contains("KIND") && lines[0].contains("ATTRIBUTION"), "{}", lines[0]);
    assert!(lines[1].contains("nvidia_xid") && lines[1].contains("0000:01:00.0") && lines[1].contains("#1"));
}

#[test]
fn an_operator_catalog_overrides_the_built_in_one() {
    let dir = std::env::temp_dir().join(format!("devheal-cli-catalog-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let catalog = dir.join("ops.yaml");
    std::fs::write(
        &catalog,
        "version: ops-1\nxid:\n  - code: 79\n    summary: fell off the bus, inspect the riser\n    attribution: host\n    health: unhealthy\n    action: inspect_hardware\n",
    )
    .unwrap();
    let log = example_log();
    let output =
        devheal(&["classify-log", "--catalog", catalog.to_str().unwrap(), log.to_str().unwrap()], None);
    assert_eq!(output.status.code(), Some(1), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8(output.stdout).unwrap();
    let xid79 = stdout.lines().find(|l| l.contains(r#""code":79"#)).expect("Xid 79 line");
    assert!(
        xid79.contains(r#""attribution":"host""#) && xid79.contains(r#""action":"inspect_hardware""#),
        "{xid79}"
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("catalog ops-1"));

    std::fs::write(&catalog, "version: ops-2\nxid:\n  - code: 79\n    summary: x\n    attribution: gremlins\n    health: unhealthy\n    action: none\n").unwrap();
    let bad = devheal(&["classify-log", "--catalog", catalog.to_str().unwrap(), log.to_str().unwrap()], None);
    assert_eq!(bad.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("ops.yaml") && stderr.contains("line 5") && stderr.contains("gremlins"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_missing_file_is_a_clear_error() {
    let output = devheal(&["classify-log", "/nonexistent/kern.log"], None);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot open /nonexistent/kern.log"), "{stderr}");
}

#[test]
fn exit_zero_keeps_the_output_and_exits_0_on_hardware_faults() {
    let log = example_log();
    let failing = devheal(&["classify-log", log.to_str().unwrap()], None);
    let output = devheal(&["classify-log", "--exit-zero", log.to_str().unwrap()], None);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(output.stdout, failing.stdout, "--exit-zero changes only the exit status");
    assert_eq!(output.stdout.iter().filter(|&&b| b == b'\n').count(), 6);
}

#[test]
fn application_errors_and_clean_logs_exit_0() {
    // Xid 13 and 45 are the application's: reported, but not a hardware fault.
    let app = b"[ 10.0] NVRM: Xid (PCI:0000:3b:00): 13, pid=7, name=train, Graphics Exception\n\
                [ 11.0] NVRM: Xid (PCI:0000:3b:00): 45, pid=7, name=train, channel 0x00000002\n";
    let output = devheal(&["classify-log", "--format", "json"], Some(app));
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
    assert!(stdout.lines().all(|l| l.contains(r#""attribution":"application""#)), "{stdout}");

    let clean = devheal(&["classify-log"], Some(b"[ 1.0] usb 1-1: new device\n"));
    assert_eq!(clean.status.code(), Some(0));
    assert!(clean.stdout.is_empty());

    // One hardware line among application lines is enough for exit 1.
    let mut mixed = app.to_vec();
    mixed.extend_from_slice(b"[ 12.0] NVRM: Xid (PCI:0000:3b:00): 79, GPU has fallen off the bus.\n");
    assert_eq!(devheal(&["classify-log"], Some(&mixed)).status.code(), Some(1));
}

#[test]
fn help_documents_the_exit_status() {
    let output = devheal(&["classify-log", "--help"], None);
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("Exit status:") && help.contains("--exit-zero"), "{help}");
}

fn temp_file(name: &str, text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("devheal-classify-{}-{name}", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn topology_makes_a_port_error_and_the_gpu_below_it_one_incident() {
    let log = example_log();
    // The example's fatal PCIe error is on port 0000:00:02.0; the GPU lost on line 11 is
    // 0000:02:00.0. The topology says the GPU sits below that port.
    let topology = temp_file("topology.txt", "# test\n/sys/devices/pci0000:00/0000:00:02.0/0000:02:00.0\n");
    let output =
        devheal(&["classify-log", "--topology", topology.to_str().unwrap(), log.to_str().unwrap()], None);
    assert_eq!(output.status.code(), Some(1), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lost = stdout.lines().find(|l| l.starts_with(r#"{"line":11,"#)).expect("line 11 is reported");
    assert!(lost.contains(r#""incident":"local/-/0000:00:02.0/pcie_aer-fatal/2""#), "{lost}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("6 device-fault lines in 2 incidents"), "{stderr}");

    let bad = temp_file("bad-topology.txt", "pci 0000:00:02.0 nonsense\n");
    let output = devheal(&["classify-log", "--topology", bad.to_str().unwrap(), log.to_str().unwrap()], None);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("line 1: `nonsense` is not a PCI address"), "{stderr}");
    let _ = std::fs::remove_file(topology);
    let _ = std::fs::remove_file(bad);
}
