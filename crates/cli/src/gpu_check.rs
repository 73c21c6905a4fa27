//! `devheal gpu-check`: a short functional check of one NVIDIA GPU through the CUDA driver API
//! (`devheal_gpucheck`): allocation, write/read patterns over device memory, a small kernel with
//! a known answer. The agent runs it as a child process, with a time limit, before a GPU it reset
//! returns to service (docs/agent.md, "Device resets"); it can be run by hand on a node too.
//!
//! Prints one JSON object: `{"result":"passed",...}` with what was checked, or
//! `{"result":"failed"|"unavailable","error":"..."}`. Exit status: 0 passed, 1 failed (the GPU
//! is not fit to return), 2 the check could not run here (no CUDA driver library).

use std::path::PathBuf;
use std::process::ExitCode;

use devheal_gpucheck::{CheckError, DEFAULT_LIBRARY, run_check};

/// Exit status of a check that could not run.
pub const EXIT_UNAVAILABLE: u8 = 2;

#[derive(clap::Args)]
pub struct GpuCheckArgs {
    /// The GPU's PCI address, `dddd:bb:dd.f` (as `nvidia-smi -q` or the agent report it).
    #[arg(long)]
    pci: String,
    /// How much device memory the patterns cover, in MiB.
    #[arg(long, default_value_t = 256)]
    memory_mib: u64,
    /// The CUDA driver library, when it is not `libcuda.so.1` on the loader's path.
    #[arg(long)]
    cuda_library: Option<PathBuf>,
}

pub fn run(args: GpuCheckArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.memory_mib >= 1, "--memory-mib must be at least 1");
    let library = args.cuda_library.clone().map_or_else(|| DEFAULT_LIBRARY.into(), PathBuf::into_os_string);
    let (answer, code) = match run_check(&library, &args.pci, args.memory_mib.saturating_mul(1 << 20)) {
        Ok(report) => {
            let mut value = serde_json::to_value(&report)?;
            value["result"] = "passed".into();
            (value, 0)
        }
        Err(e @ CheckError::Unavailable(_)) => {
            (serde_json::json!({"result": "unavailable", "error": e.to_string()}), EXIT_UNAVAILABLE)
        }
        Err(e @ CheckError::Failed { .. }) => {
            (serde_json::json!({"result": "failed", "error": e.to_string()}), 1)
        }
    };
    println!("{answer}");
    Ok(ExitCode::from(code))
}
