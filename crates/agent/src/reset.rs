//! Device resets the controller requests of this node (`spec.resetRequests` of its
//! NodeDeviceHealth), carried out by the agent and answered in `status.resets`.
//!
//! The controller's engine asks for a reset (`RequestRepair`, kind `reset_device`) for a device
//! whose fault a reset clears (the Xid catalog's `reset_device`: an uncorrectable ECC error, a
//! contained or uncontained memory error, a GSP error). The agent, the only thing on the node
//! that can, carries it out in steps, each with an Event (`DeviceReset*`) and the counter
//! `devheal_agent_device_resets_total{phase}`:
//!
//! 1. **Mode** (`--device-reset`): `off` (the default) answers `Refused` and leaves the request
//!    to a repair system or a person; `dry-run` answers `WouldReset` with the command it would
//!    run; `on` goes on.
//! 2. **Known device**: a request for a device this agent does not report is `Refused`.
//! 3. **Limit**: at most [`ResetLimits::per_device`] resets of one device within
//!    [`ResetLimits::window`], whatever the controller asks (a looping controller cannot reset a
//!    GPU forever); beyond it, `Refused`.
//! 4. **Idle**: only when no process holds the device, as the driver reports it (NVML's running
//!    compute and graphics processes). A device still held is waited for (its pod's containers
//!    are exiting) for up to [`ResetLimits::busy_wait`], then `Refused` with the processes named.
//! 5. **Reset** by the driver's supported method (`nvidia-smi --gpu-reset -i <bus id>` by
//!    default, `--device-reset-command`), bounded by [`ResetLimits::timeout`].
//! 6. **Observed**: the result is what the driver shows afterwards, not the command's exit
//!    status alone: the device must be found again at its PCI address, as the same device (its
//!    UUID), and answer a query.
//! 7. **Checked** (`--device-check`): a short functional check of the device, run as a child
//!    process with a time limit (`devheal gpu-check`: allocation, write/read patterns over its
//!    memory, a small kernel with a known answer). Only a device that passes returns: then
//!    `Succeeded`, and the device's reasons clear and its probation starts, as after a reset the
//!    kernel logged; otherwise `Failed`, which the controller answers by asking for a reboot of
//!    the node. With `if-available` (the default) a node where the check cannot run (no CUDA
//!    driver library for the agent) returns the device on the observation alone and says so.
//!
//! One reset runs at a time per node, on a thread of its own (a reset blocks for seconds). Each
//! request id is answered once: the answers are published and read back by a restarted agent
//! (a request the agent was in the middle of is taken again). At most [`MAX_RESETS`] answers
//! are kept.

use std::collections::{BTreeMap, VecDeque};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use devheal_core::{Duration, Time};
use devheal_k8s::crd::{DeviceResetPhase, DeviceResetRequest, DeviceResetStatus, k8s_time};
use devheal_k8s::pod::time_from_k8s;
use tokio::sync::mpsc;

/// The most answers kept (the CRD's bound on `status.resets`).
pub const MAX_RESETS: usize = 64;

/// What the agent does with a reset request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ResetMode {
    /// Answer `Refused`: resets are left to a repair system or a person.
    #[default]
    Off,
    /// Answer `WouldReset` with what would be run.
    DryRun,
    /// Carry it out.
    On,
}

impl ResetMode {
    pub fn parse(word: &str) -> Option<ResetMode> {
        match word {
            "off" => Some(ResetMode::Off),
            "dry-run" => Some(ResetMode::DryRun),
            "on" => Some(ResetMode::On),
            _ => None,
        }
    }
}

/// The agent's own bounds on resets.
#[derive(Clone, Debug)]
pub struct ResetLimits {
    /// At most this many resets of one device ...
    pub per_device: usize,
    /// ... within this long.
    pub window: Duration,
    /// How long a device still held by a process is waited for.
    pub busy_wait: StdDuration,
    /// How often a held device is looked at again.
    pub busy_poll: StdDuration,
    /// How long the reset command may run.
    pub timeout: StdDuration,
    /// Whether the device must pass the functional check before it returns.
    pub check: CheckMode,
}

impl Default for ResetLimits {
    fn default() -> Self {
        ResetLimits {
            per_device: 3,
            window: Duration::from_hours(24),
            busy_wait: StdDuration::from_secs(300),
            busy_poll: StdDuration::from_secs(5),
            timeout: StdDuration::from_secs(60),
            check: CheckMode::IfAvailable,
        }
    }
}

/// The device a reset is for, with what the backend needs to find it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResetTarget {
    /// The id the agent reports it under.
    pub id: String,
    /// `dddd:bb:dd.f`.
    pub pci_address: Option<String>,
    /// The NVML UUID (`GPU-…`), when known: the device must come back as the same one.
    pub uuid: Option<String>,
}

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResetError {
    /// The backend cannot look at or reset this device at all (no NVML, no PCI address).
    #[error("{0}")]
    Unsupported(String),
    /// The reset ran and did not work.
    #[error("{0}")]
    Failed(String),
}

/// Whether a device must pass the functional check before it returns (`--device-check`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CheckMode {
    /// No check: the observation alone.
    Off,
    /// The check where it can run; where it cannot (no CUDA driver library), the observation
    /// alone, and the answer says so.
    #[default]
    IfAvailable,
    /// The check, and a device whose check cannot run does not return.
    Required,
}

impl CheckMode {
    pub fn parse(word: &str) -> Option<CheckMode> {
        match word {
            "off" => Some(CheckMode::Off),
            "if-available" => Some(CheckMode::IfAvailable),
            "required" => Some(CheckMode::Required),
            _ => None,
        }
    }
}

/// The exit status of `devheal gpu-check` when the check cannot run on the node.
pub const CHECK_UNAVAILABLE_EXIT: i32 = 2;

/// What a functional check found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckOutcome {
    Passed(String),
    Failed(String),
    /// It could not run here (and why).
    Unavailable(String),
}

/// The driver's side of a reset. Implementations: [`NvidiaReset`] (NVML and `nvidia-smi`) and
/// the fake devices' ([`crate::fake::FakeControl`]).
pub trait ResetBackend: Send + Sync + 'static {
    /// The processes holding the device now, in words (`pid 4242 (python)`); empty: idle.
    fn holders(&self, target: &ResetTarget) -> Result<Vec<String>, ResetError>;
    /// Reset the device; returns what the method printed.
    fn reset(&self, target: &ResetTarget) -> Result<String, ResetError>;
    /// After a reset: is it the same device, answering? Returns what was seen.
    fn observe(&self, target: &ResetTarget) -> Result<String, ResetError>;
    /// What a reset of `target` would run (for dry runs and messages).
    fn describe(&self, target: &ResetTarget) -> String;
    /// The functional check of a device back from its reset.
    fn check(&self, target: &ResetTarget) -> CheckOutcome;
}

/// One reset job's end, sent back to the loop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResetResult {
    pub id: String,
    pub device: String,
    pub phase: DeviceResetPhase,
    pub message: String,
}

/// What the loop should do after taking requests or a result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResetStep {
    /// Answer this request with this phase (an Event and the counter go with it).
    Answer(ResetResult),
    /// Run this job on the worker.
    Run { id: String, target: ResetTarget },
}

/// The requests taken and their answers, and each device's recent resets.
#[derive(Debug, Default)]
pub struct ResetBook {
    answers: VecDeque<DeviceResetStatus>,
    /// When each device was last reset (for the limit), by id.
    recent: BTreeMap<String, VecDeque<Time>>,
}

impl ResetBook {
    /// The book a restarted agent starts from: the answers it last published. A request it
    /// was in the middle of (`Pending`) is dropped, to be taken again.
    pub fn restored(published: &[DeviceResetStatus]) -> Self {
        let mut book = ResetBook::default();
        for a in published.iter().filter(|a| a.phase != DeviceResetPhase::Pending) {
            if matches!(a.phase, DeviceResetPhase::Succeeded | DeviceResetPhase::Failed) {
                book.recent.entry(a.device.clone()).or_default().push_back(time_from_k8s(&a.at));
            }
            book.answers.push_back(a.clone());
        }
        while book.answers.len() > MAX_RESETS {
            book.answers.pop_front();
        }
        book
    }

    /// The answers, oldest first (for `status.resets`).
    pub fn answers(&self) -> Vec<DeviceResetStatus> {
        self.answers.iter().cloned().collect()
    }

    fn answered(&self, id: &str) -> bool {
        self.answers.iter().any(|a| a.id == id)
    }

    fn set(&mut self, device: &str, id: &str, phase: DeviceResetPhase, message: &str, now: Time) {
        let mut message = message.to_string();
        if message.len() > 2000 {
            let mut end = 1997;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push_str("...");
        }
        let entry = DeviceResetStatus {
            device: device.to_string(),
            id: id.to_string(),
            phase,
            message,
            at: k8s_time(now),
        };
        match self.answers.iter_mut().find(|a| a.id == id) {
            Some(a) => *a = entry,
            None => {
                if self.answers.len() >= MAX_RESETS {
                    // The oldest finished answer goes first; a pending one stays.
                    let drop = self.answers.iter().position(|a| a.phase != DeviceResetPhase::Pending);
                    self.answers.remove(drop.unwrap_or(0));
                }
                self.answers.push_back(entry);
            }
        }
    }

    /// Take the controller's requests (the whole list, each time it changes): each one not
    /// answered yet is answered now, or, with resets on, marked `Pending` and handed to the
    /// worker. `known` finds a device the agent reports, by id.
    pub fn take(
        &mut self,
        requests: &[DeviceResetRequest],
        mode: ResetMode,
        limits: &ResetLimits,
        known: impl Fn(&str) -> Option<ResetTarget>,
        describe: impl Fn(&ResetTarget) -> String,
        now: Time,
    ) -> Vec<ResetStep> {
        let mut steps = Vec::new();
        for r in requests {
            if self.answered(&r.id) {
                continue;
            }
            let refuse = |why: String| ResetResult {
                id: r.id.clone(),
                device: r.device.clone(),
                phase: DeviceResetPhase::Refused,
                message: why,
            };
            let answer = match (mode, known(&r.device)) {
                (ResetMode::Off, _) => Some(refuse(
                    "device resets are off on this agent (--device-reset=off): the request is left to a repair system or a person"
                        .into(),
                )),
                (_, None) => Some(refuse(format!("this agent reports no device {:?}", r.device))),
                (ResetMode::DryRun, Some(target)) => Some(ResetResult {
                    id: r.id.clone(),
                    device: r.device.clone(),
                    phase: DeviceResetPhase::WouldReset,
                    message: format!("dry run: would wait until no process holds it, then run {}", describe(&target)),
                }),
                (ResetMode::On, Some(target)) => {
                    let recent = self.recent.entry(r.device.clone()).or_default();
                    while recent.front().is_some_and(|t| now.since(*t) >= limits.window) {
                        recent.pop_front();
                    }
                    if recent.len() >= limits.per_device {
                        Some(refuse(format!(
                            "already reset {} times within {:.0} h (--device-reset-limit): needs a reboot or a person",
                            recent.len(),
                            limits.window.as_secs_f64() / 3600.0
                        )))
                    } else {
                        recent.push_back(now);
                        self.set(&r.device, &r.id, DeviceResetPhase::Pending, "taken: waiting for the device to be idle", now);
                        steps.push(ResetStep::Run { id: r.id.clone(), target });
                        None
                    }
                }
            };
            if let Some(a) = answer {
                self.set(&a.device, &a.id, a.phase, &a.message, now);
                steps.push(ResetStep::Answer(a));
            }
        }
        steps
    }

    /// A job's end, from the worker.
    pub fn finish(&mut self, result: &ResetResult, now: Time) {
        self.set(&result.device, &result.id, result.phase, &result.message, now);
    }
}

/// Carry out one reset: wait for the device to be idle, reset it, observe it. Blocking.
pub fn carry_out(
    backend: &dyn ResetBackend,
    limits: &ResetLimits,
    id: &str,
    target: &ResetTarget,
) -> ResetResult {
    let end = |phase, message: String| ResetResult {
        id: id.to_string(),
        device: target.id.clone(),
        phase,
        message,
    };
    let started = Instant::now();
    loop {
        match backend.holders(target) {
            Ok(held) if held.is_empty() => break,
            Ok(held) if started.elapsed() >= limits.busy_wait => {
                return end(
                    DeviceResetPhase::Refused,
                    format!(
                        "still in use after {} s by {}: not reset (a reset would kill their work)",
                        limits.busy_wait.as_secs(),
                        held.join(", ")
                    ),
                );
            }
            Ok(_) => std::thread::sleep(limits.busy_poll),
            Err(e) => {
                return end(DeviceResetPhase::Refused, format!("cannot tell whether it is in use: {e}"));
            }
        }
    }
    let printed = match backend.reset(target) {
        Ok(printed) => printed,
        Err(ResetError::Unsupported(e)) => return end(DeviceResetPhase::Refused, e),
        Err(ResetError::Failed(e)) => return end(DeviceResetPhase::Failed, e),
    };
    let seen = match backend.observe(target) {
        Ok(seen) => join_words(&printed, &seen),
        Err(e) => {
            return end(
                DeviceResetPhase::Failed,
                join_words(&printed, &format!("not back after the reset: {e}")),
            );
        }
    };
    if limits.check == CheckMode::Off {
        return end(DeviceResetPhase::Succeeded, seen);
    }
    match backend.check(target) {
        CheckOutcome::Passed(what) => {
            end(DeviceResetPhase::Succeeded, join_words(&seen, &format!("check passed: {what}")))
        }
        CheckOutcome::Failed(why) => {
            end(DeviceResetPhase::Failed, join_words(&seen, &format!("failed the functional check: {why}")))
        }
        CheckOutcome::Unavailable(why) if limits.check == CheckMode::IfAvailable => end(
            DeviceResetPhase::Succeeded,
            join_words(&seen, &format!("not checked (the check cannot run here: {why})")),
        ),
        CheckOutcome::Unavailable(why) => end(
            DeviceResetPhase::Failed,
            join_words(&seen, &format!("the required functional check cannot run here: {why}")),
        ),
    }
}

fn join_words(a: &str, b: &str) -> String {
    match (a.trim(), b.trim()) {
        ("", b) => b.to_string(),
        (a, "") => a.to_string(),
        (a, b) => format!("{a}; {b}"),
    }
}

/// A job for the worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Job {
    /// Carry out reset request `id` ([`carry_out`]).
    Reset { id: String, target: ResetTarget },
    /// The end-of-probation check of a device ([`check_at_end_of_probation`]).
    Check { target: ResetTarget },
}

/// A job's end, sent back to the loop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Done {
    Reset(ResetResult),
    Check { device: String, outcome: CheckOutcome },
}

/// The end-of-probation check: a device a process holds is in use and working (its workload
/// is the test), and is not disturbed; any other is checked. Blocking.
pub fn check_at_end_of_probation(backend: &dyn ResetBackend, target: &ResetTarget) -> CheckOutcome {
    match backend.holders(target) {
        Ok(held) if !held.is_empty() => CheckOutcome::Passed(format!(
            "in use by {}: its workload runs on it, not checked",
            held.join(", ")
        )),
        _ => backend.check(target),
    }
}

/// The worker: one thread that runs jobs one at a time (a reset and a check never overlap on
/// a node) and sends each result back.
pub fn spawn_worker(
    backend: Arc<dyn ResetBackend>,
    limits: ResetLimits,
    results: mpsc::Sender<Done>,
) -> std::io::Result<std::sync::mpsc::SyncSender<Job>> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(MAX_RESETS);
    std::thread::Builder::new().name("device-reset".into()).spawn(move || {
        while let Ok(job) = rx.recv() {
            let done = match job {
                Job::Reset { id, target } => Done::Reset(carry_out(backend.as_ref(), &limits, &id, &target)),
                Job::Check { target } => Done::Check {
                    device: target.id.clone(),
                    outcome: check_at_end_of_probation(backend.as_ref(), &target),
                },
            };
            if results.blocking_send(done).is_err() {
                return;
            }
        }
    })?;
    Ok(tx)
}

/// NVIDIA GPUs: NVML says who holds the device and whether it came back; a command (by default
/// `nvidia-smi --gpu-reset -i {pci}`) resets it.
pub struct NvidiaReset {
    /// The command, as words; `{pci}`, `{uuid}` and `{id}` are replaced.
    pub command: Vec<String>,
    /// The functional check, as words (`devheal gpu-check --pci {pci}`), run with `timeout`;
    /// `None`: none is known (the check cannot run).
    pub check_command: Option<Vec<String>>,
    pub nvml_library: Option<std::path::PathBuf>,
    pub timeout: StdDuration,
}

/// The default reset command: NVIDIA's supported per-GPU reset.
pub fn default_reset_command() -> Vec<String> {
    ["nvidia-smi", "--gpu-reset", "-i", "{pci}"].iter().map(|s| s.to_string()).collect()
}

/// The functional check as the agent runs it: `program gpu-check --pci {pci} --memory-mib M`,
/// with the CUDA driver library when it is not on the loader's path (`program` is the agent's
/// own `devheal` binary).
pub fn gpu_check_command(
    program: &str,
    memory_mib: u64,
    cuda_library: Option<&std::path::Path>,
) -> Vec<String> {
    let mut words: Vec<String> =
        [program, "gpu-check", "--pci", "{pci}", "--memory-mib"].iter().map(|s| s.to_string()).collect();
    words.push(memory_mib.to_string());
    if let Some(library) = cuda_library {
        words.push("--cuda-library".to_string());
        words.push(library.to_string_lossy().into_owned());
    }
    words
}

/// `command` with `{pci}`, `{uuid}` and `{id}` filled in for `target`.
pub fn fill_command(command: &[String], target: &ResetTarget) -> Vec<String> {
    command
        .iter()
        .map(|w| {
            w.replace("{pci}", target.pci_address.as_deref().unwrap_or(""))
                .replace("{uuid}", target.uuid.as_deref().unwrap_or(""))
                .replace("{id}", &target.id)
        })
        .collect()
}

/// Run `words` with a time limit; Ok(output) when it exits 0.
pub fn run_bounded(words: &[String], timeout: StdDuration) -> Result<String, ResetError> {
    match run_with_status(words, timeout)? {
        (Some(0), text) => Ok(format!(
            "{} exited 0{}",
            words.join(" "),
            if text.is_empty() { String::new() } else { format!(": {text}") }
        )),
        (code, text) => Err(ResetError::Failed(format!(
            "{} failed ({}): {text}",
            words.join(" "),
            code.map_or_else(|| "killed by a signal".to_string(), |c| format!("exit status {c}"))
        ))),
    }
}

/// Run `words` with a time limit: its exit status (`None`: ended by a signal) and its output.
pub fn run_with_status(words: &[String], timeout: StdDuration) -> Result<(Option<i32>, String), ResetError> {
    let Some((program, args)) = words.split_first() else {
        return Err(ResetError::Unsupported("no reset command".into()));
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| ResetError::Unsupported(format!("cannot run {program}: {e}")))?;
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() >= timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ResetError::Failed(format!(
                    "{} did not finish within {} s (killed)",
                    words.join(" "),
                    timeout.as_secs()
                )));
            }
            Ok(None) => std::thread::sleep(StdDuration::from_millis(50)),
            Err(e) => return Err(ResetError::Failed(format!("waiting for {program}: {e}"))),
        }
    };
    let output = child
        .wait_with_output()
        .map_err(|e| ResetError::Failed(format!("reading {program}'s output: {e}")))?;
    let mut text = String::from_utf8_lossy(&output.stdout).trim().to_string();
    let err = String::from_utf8_lossy(&output.stderr);
    if !err.trim().is_empty() {
        text = join_words(&text, err.trim());
    }
    let text: String = text.chars().take(1000).collect();
    Ok((status.code(), text))
}

impl NvidiaReset {
    fn nvml(&self) -> Result<nvml_wrapper::Nvml, ResetError> {
        let mut builder = nvml_wrapper::Nvml::builder();
        if let Some(path) = &self.nvml_library {
            builder.lib_path(path.as_os_str());
        }
        builder.init().map_err(|e| ResetError::Unsupported(format!("NVML is unavailable: {e}")))
    }

    fn bus_id(target: &ResetTarget) -> Result<&str, ResetError> {
        target
            .pci_address
            .as_deref()
            .ok_or_else(|| ResetError::Unsupported(format!("no PCI address known for {}", target.id)))
    }
}

impl ResetBackend for NvidiaReset {
    fn holders(&self, target: &ResetTarget) -> Result<Vec<String>, ResetError> {
        let bus = Self::bus_id(target)?;
        let nvml = self.nvml()?;
        let device = nvml
            .device_by_pci_bus_id(bus)
            .map_err(|e| ResetError::Unsupported(format!("NVML finds no GPU at {bus}: {e}")))?;
        let mut held = Vec::new();
        for (kind, list) in [
            ("compute", device.running_compute_processes()),
            ("graphics", device.running_graphics_processes()),
        ] {
            let list =
                list.map_err(|e| ResetError::Unsupported(format!("NVML cannot list {kind} processes: {e}")))?;
            held.extend(list.into_iter().map(|p| {
                let name = nvml.sys_process_name(p.pid, 64).unwrap_or_default();
                if name.is_empty() { format!("pid {}", p.pid) } else { format!("pid {} ({name})", p.pid) }
            }));
        }
        held.sort();
        held.dedup();
        Ok(held)
    }

    fn reset(&self, target: &ResetTarget) -> Result<String, ResetError> {
        Self::bus_id(target)?;
        run_bounded(&fill_command(&self.command, target), self.timeout)
    }

    fn observe(&self, target: &ResetTarget) -> Result<String, ResetError> {
        // A fresh NVML: handles from before the reset may be stale.
        let nvml = self.nvml().map_err(|e| ResetError::Failed(e.to_string()))?;
        let bus = Self::bus_id(target)?;
        let device = nvml
            .device_by_pci_bus_id(bus)
            .map_err(|e| ResetError::Failed(format!("NVML finds no GPU at {bus}: {e}")))?;
        let uuid = device
            .uuid()
            .map_err(|e| ResetError::Failed(format!("the GPU at {bus} does not answer: {e}")))?;
        if let Some(want) = &target.uuid
            && *want != uuid
        {
            return Err(ResetError::Failed(format!("the GPU at {bus} is now {uuid}, not {want}")));
        }
        let memory = device
            .memory_info()
            .map_err(|e| ResetError::Failed(format!("the GPU at {bus} does not answer: {e}")))?;
        Ok(format!("NVML sees {uuid} at {bus} again ({} MiB of memory)", memory.total / (1024 * 1024)))
    }

    fn describe(&self, target: &ResetTarget) -> String {
        fill_command(&self.command, target).join(" ")
    }

    fn check(&self, target: &ResetTarget) -> CheckOutcome {
        let Some(command) = &self.check_command else {
            return CheckOutcome::Unavailable("no check command".into());
        };
        match run_with_status(&fill_command(command, target), self.timeout) {
            Ok((Some(0), text)) => CheckOutcome::Passed(text),
            Ok((Some(CHECK_UNAVAILABLE_EXIT), text)) => CheckOutcome::Unavailable(text),
            Ok((Some(code), text)) => CheckOutcome::Failed(format!("exit status {code}: {text}")),
            Ok((None, text)) => CheckOutcome::Failed(format!("ended by a signal: {text}")),
            Err(ResetError::Unsupported(why)) => CheckOutcome::Unavailable(why),
            Err(ResetError::Failed(why)) => CheckOutcome::Failed(why),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn t(s: i64) -> Time {
        Time::from_secs(s)
    }

    fn request(id: &str, device: &str) -> DeviceResetRequest {
        DeviceResetRequest {
            device: device.into(),
            id: id.into(),
            requested_at: k8s_time(t(0)),
            reason: "Xid 48".into(),
        }
    }

    fn target(id: &str) -> Option<ResetTarget> {
        (id != "unknown").then(|| ResetTarget {
            id: id.into(),
            pci_address: Some("0000:3b:00.0".into()),
            uuid: Some("GPU-1".into()),
        })
    }

    fn describe(t: &ResetTarget) -> String {
        fill_command(&default_reset_command(), t).join(" ")
    }

    #[test]
    fn off_refuses_dry_run_describes_and_on_hands_the_job_over_once() {
        let limits = ResetLimits::default();
        let reqs = [request("r1", "GPU-1")];
        let mut off = ResetBook::default();
        let steps = off.take(&reqs, ResetMode::Off, &limits, target, describe, t(1));
        assert!(
            matches!(&steps[..], [ResetStep::Answer(a)] if a.phase == DeviceResetPhase::Refused && a.message.contains("--device-reset=off")),
            "{steps:?}"
        );
        assert!(off.take(&reqs, ResetMode::Off, &limits, target, describe, t(2)).is_empty(), "answered once");

        let mut dry = ResetBook::default();
        let steps = dry.take(&reqs, ResetMode::DryRun, &limits, target, describe, t(1));
        assert!(
            matches!(&steps[..], [ResetStep::Answer(a)] if a.phase == DeviceResetPhase::WouldReset && a.message.contains("nvidia-smi --gpu-reset -i 0000:3b:00.0")),
            "{steps:?}"
        );

        let mut on = ResetBook::default();
        let steps = on.take(&reqs, ResetMode::On, &limits, target, describe, t(1));
        assert!(matches!(&steps[..], [ResetStep::Run { id, .. }] if id == "r1"), "{steps:?}");
        assert_eq!(on.answers()[0].phase, DeviceResetPhase::Pending);
        assert!(on.take(&reqs, ResetMode::On, &limits, target, describe, t(2)).is_empty());
        on.finish(
            &ResetResult {
                id: "r1".into(),
                device: "GPU-1".into(),
                phase: DeviceResetPhase::Succeeded,
                message: "ok".into(),
            },
            t(3),
        );
        assert_eq!(on.answers()[0].phase, DeviceResetPhase::Succeeded);
    }

    #[test]
    fn an_unknown_device_is_refused_and_the_limit_holds_per_device() {
        let limits = ResetLimits { per_device: 2, ..ResetLimits::default() };
        let mut book = ResetBook::default();
        let steps = book.take(&[request("u", "unknown")], ResetMode::On, &limits, target, describe, t(1));
        assert!(
            matches!(&steps[..], [ResetStep::Answer(a)] if a.phase == DeviceResetPhase::Refused),
            "{steps:?}"
        );
        let runs = |steps: &[ResetStep]| steps.iter().filter(|s| matches!(s, ResetStep::Run { .. })).count();
        assert_eq!(
            runs(&book.take(&[request("a", "GPU-1")], ResetMode::On, &limits, target, describe, t(10))),
            1
        );
        assert_eq!(
            runs(&book.take(&[request("b", "GPU-1")], ResetMode::On, &limits, target, describe, t(20))),
            1
        );
        let third = book.take(&[request("c", "GPU-1")], ResetMode::On, &limits, target, describe, t(30));
        assert!(
            matches!(&third[..], [ResetStep::Answer(a)] if a.phase == DeviceResetPhase::Refused && a.message.contains("already reset 2 times")),
            "{third:?}"
        );
        // Another device has its own count; a day later the first may be reset again.
        assert_eq!(
            runs(&book.take(&[request("d", "GPU-2")], ResetMode::On, &limits, target, describe, t(40))),
            1
        );
        assert_eq!(
            runs(&book.take(&[request("e", "GPU-1")], ResetMode::On, &limits, target, describe, t(86_411))),
            1
        );
    }

    #[test]
    fn a_restarted_agent_answers_nothing_twice_but_takes_up_what_it_was_doing() {
        let limits = ResetLimits::default();
        let mut book = ResetBook::default();
        book.take(
            &[request("done", "GPU-1"), request("doing", "GPU-2")],
            ResetMode::On,
            &limits,
            target,
            describe,
            t(1),
        );
        book.finish(
            &ResetResult {
                id: "done".into(),
                device: "GPU-1".into(),
                phase: DeviceResetPhase::Succeeded,
                message: String::new(),
            },
            t(2),
        );
        let mut again = ResetBook::restored(&book.answers());
        let steps = again.take(
            &[request("done", "GPU-1"), request("doing", "GPU-2")],
            ResetMode::On,
            &limits,
            target,
            describe,
            t(3),
        );
        assert!(matches!(&steps[..], [ResetStep::Run { id, .. }] if id == "doing"), "{steps:?}");
    }

    #[test]
    fn answers_are_bounded_keeping_the_pending() {
        let limits = ResetLimits { per_device: usize::MAX, ..ResetLimits::default() };
        let mut book = ResetBook::default();
        book.take(&[request("first", "GPU-1")], ResetMode::On, &limits, target, describe, t(0));
        for i in 0..200 {
            book.take(
                &[request(&format!("r{i}"), "unknown")],
                ResetMode::On,
                &limits,
                target,
                describe,
                t(i),
            );
        }
        let answers = book.answers();
        assert_eq!(answers.len(), MAX_RESETS);
        assert!(answers.iter().any(|a| a.id == "first" && a.phase == DeviceResetPhase::Pending));
        assert!(answers.iter().any(|a| a.id == "r199"));
    }

    /// A backend that does what it is told and records what was asked.
    struct Scripted {
        held_for: Mutex<u32>,
        reset: Result<String, ResetError>,
        observe: Result<String, ResetError>,
        check: CheckOutcome,
        calls: Mutex<Vec<&'static str>>,
    }

    impl ResetBackend for Scripted {
        fn holders(&self, _: &ResetTarget) -> Result<Vec<String>, ResetError> {
            self.calls.lock().unwrap().push("holders");
            let mut left = self.held_for.lock().unwrap();
            if *left == 0 {
                return Ok(vec![]);
            }
            *left -= 1;
            Ok(vec!["pid 4242 (python)".into()])
        }
        fn reset(&self, _: &ResetTarget) -> Result<String, ResetError> {
            self.calls.lock().unwrap().push("reset");
            self.reset.clone()
        }
        fn observe(&self, _: &ResetTarget) -> Result<String, ResetError> {
            self.calls.lock().unwrap().push("observe");
            self.observe.clone()
        }
        fn describe(&self, _: &ResetTarget) -> String {
            "scripted".into()
        }
        fn check(&self, _: &ResetTarget) -> CheckOutcome {
            self.calls.lock().unwrap().push("check");
            self.check.clone()
        }
    }

    fn scripted(
        held_for: u32,
        reset: Result<String, ResetError>,
        observe: Result<String, ResetError>,
    ) -> Scripted {
        Scripted {
            held_for: Mutex::new(held_for),
            reset,
            observe,
            check: CheckOutcome::Passed("memory and kernel".into()),
            calls: Mutex::new(vec![]),
        }
    }

    fn quick() -> ResetLimits {
        ResetLimits {
            busy_wait: StdDuration::from_millis(30),
            busy_poll: StdDuration::from_millis(1),
            ..ResetLimits::default()
        }
    }

    #[test]
    fn a_reset_waits_for_the_device_to_be_idle_and_is_judged_by_what_is_seen_after() {
        let dev = target("GPU-1").unwrap();
        let b = scripted(2, Ok("reset done".into()), Ok("seen again".into()));
        let r = carry_out(&b, &quick(), "r", &dev);
        assert_eq!(r.phase, DeviceResetPhase::Succeeded, "{r:?}");
        assert_eq!(r.message, "reset done; seen again; check passed: memory and kernel");
        assert_eq!(*b.calls.lock().unwrap(), ["holders", "holders", "holders", "reset", "observe", "check"]);

        // The command said it worked; the device did not come back: Failed.
        let b = scripted(
            0,
            Ok("exited 0".into()),
            Err(ResetError::Failed("NVML finds no GPU at 0000:3b:00.0".into())),
        );
        let r = carry_out(&b, &quick(), "r", &dev);
        assert_eq!(r.phase, DeviceResetPhase::Failed, "{r:?}");
        assert!(r.message.contains("not back after the reset"), "{r:?}");

        let b = scripted(0, Err(ResetError::Failed("GPU in use".into())), Ok(String::new()));
        assert_eq!(carry_out(&b, &quick(), "r", &dev).phase, DeviceResetPhase::Failed);
    }

    #[test]
    fn a_device_returns_only_when_it_passes_the_check_unless_the_check_cannot_run() {
        let dev = target("GPU-1").unwrap();
        let mut b = scripted(0, Ok("reset".into()), Ok("seen".into()));
        b.check = CheckOutcome::Failed("word 12 is 0xa5a5a5a4, not 0xa5a5a5a5".into());
        let r = carry_out(&b, &quick(), "r", &dev);
        assert_eq!(r.phase, DeviceResetPhase::Failed, "{r:?}");
        assert!(r.message.contains("failed the functional check: word 12"), "{r:?}");

        b.check = CheckOutcome::Unavailable("cannot load libcuda.so.1".into());
        let r = carry_out(&b, &quick(), "r", &dev);
        assert_eq!(r.phase, DeviceResetPhase::Succeeded, "if-available: {r:?}");
        assert!(r.message.contains("not checked"), "{r:?}");
        let required = ResetLimits { check: CheckMode::Required, ..quick() };
        assert_eq!(carry_out(&b, &required, "r", &dev).phase, DeviceResetPhase::Failed);

        let off = ResetLimits { check: CheckMode::Off, ..quick() };
        b.check = CheckOutcome::Failed("never asked".into());
        assert_eq!(carry_out(&b, &off, "r", &dev).phase, DeviceResetPhase::Succeeded);
    }

    #[test]
    fn the_check_command_names_the_bus_the_memory_and_the_cuda_library_when_given() {
        let target = target("GPU-1").expect("known");
        assert_eq!(
            fill_command(&gpu_check_command("/bin/devheal", 256, None), &target).join(" "),
            "/bin/devheal gpu-check --pci 0000:3b:00.0 --memory-mib 256"
        );
        let library = std::path::Path::new("/usr/lib/x/libcuda.so.1");
        assert_eq!(
            gpu_check_command("devheal", 1024, Some(library))[5..],
            ["1024", "--cuda-library", "/usr/lib/x/libcuda.so.1"]
        );
    }

    #[test]
    fn the_check_command_s_exit_status_is_its_verdict() {
        let dev = target("GPU-1").unwrap();
        let backend = |script: &str| NvidiaReset {
            command: default_reset_command(),
            check_command: Some(vec![
                "sh".into(),
                "-c".into(),
                script.into(),
                "check".into(),
                "{pci}".into(),
            ]),
            nvml_library: None,
            timeout: StdDuration::from_secs(5),
        };
        assert!(
            matches!(backend("echo passed $1").check(&dev), CheckOutcome::Passed(t) if t.contains("0000:3b:00.0"))
        );
        assert!(
            matches!(backend("echo bad; exit 1").check(&dev), CheckOutcome::Failed(t) if t.contains("bad"))
        );
        assert!(matches!(backend("exit 2").check(&dev), CheckOutcome::Unavailable(_)));
        let slow = NvidiaReset { timeout: StdDuration::from_millis(100), ..backend("sleep 5") };
        assert!(matches!(slow.check(&dev), CheckOutcome::Failed(t) if t.contains("killed")));
        let none = NvidiaReset { check_command: None, ..backend("true") };
        assert!(matches!(none.check(&dev), CheckOutcome::Unavailable(_)));
    }

    #[test]
    fn a_device_that_stays_held_is_not_reset() {
        let dev = target("GPU-1").unwrap();
        let b = scripted(u32::MAX, Ok(String::new()), Ok(String::new()));
        let r = carry_out(&b, &quick(), "r", &dev);
        assert_eq!(r.phase, DeviceResetPhase::Refused, "{r:?}");
        assert!(r.message.contains("pid 4242 (python)"), "{r:?}");
        assert!(!b.calls.lock().unwrap().contains(&"reset"));
    }

    #[test]
    fn the_command_is_run_with_a_time_limit_and_its_exit_status_counts() {
        let ok = run_bounded(&["sh".into(), "-c".into(), "echo reset".into()], StdDuration::from_secs(5));
        assert!(ok.as_ref().is_ok_and(|s| s.contains("reset")), "{ok:?}");
        let bad = run_bounded(
            &["sh".into(), "-c".into(), "echo busy >&2; exit 3".into()],
            StdDuration::from_secs(5),
        );
        assert!(matches!(&bad, Err(ResetError::Failed(m)) if m.contains("busy")), "{bad:?}");
        let slow = run_bounded(&["sleep".into(), "5".into()], StdDuration::from_millis(100));
        assert!(matches!(&slow, Err(ResetError::Failed(m)) if m.contains("killed")), "{slow:?}");
        let missing = run_bounded(&["/nonexistent/nvidia-smi".into()], StdDuration::from_secs(1));
        assert!(matches!(missing, Err(ResetError::Unsupported(_))));
        let dev = target("GPU-1").unwrap();
        assert_eq!(
            fill_command(&default_reset_command(), &dev),
            ["nvidia-smi", "--gpu-reset", "-i", "0000:3b:00.0"]
        );
    }

    #[test]
    fn without_nvml_a_reset_is_refused_not_failed() {
        let b = NvidiaReset {
            command: default_reset_command(),
            check_command: None,
            nvml_library: Some("/nonexistent/libnvidia-ml.so.1".into()),
            timeout: StdDuration::from_secs(1),
        };
        let r = carry_out(&b, &quick(), "r", &target("GPU-1").unwrap());
        assert_eq!(r.phase, DeviceResetPhase::Refused, "{r:?}");
        assert!(r.message.contains("NVML is unavailable"), "{r:?}");
    }
}
