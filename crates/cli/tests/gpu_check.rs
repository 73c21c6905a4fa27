//! `devheal gpu-check` on a machine without an NVIDIA GPU or driver: it says the check cannot
//! run here, in JSON, with exit status 2 (the agent's `--device-check if-available` then returns
//! a reset GPU on NVML's word alone, `required` fails the reset). The check itself runs on a GPU
//! machine: docs/benchmarks.md.

use std::process::Command;

#[test]
fn without_the_cuda_driver_the_check_cannot_run_and_says_so() {
    let out = Command::new(env!("CARGO_BIN_EXE_devheal"))
        .args(["gpu-check", "--pci", "0000:3b:00.0", "--memory-mib", "1"])
        .args(["--cuda-library", "/nonexistent/libcuda.so.1"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(answer["result"], "unavailable", "{answer}");
    assert!(
        answer["error"].as_str().is_some_and(|e| e.contains("cannot load /nonexistent/libcuda.so.1")),
        "{answer}"
    );
}

#[test]
fn a_bad_memory_size_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_devheal"))
        .args(["gpu-check", "--pci", "0000:3b:00.0", "--memory-mib", "0"])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--memory-mib must be at least 1"), "{out:?}");
}
