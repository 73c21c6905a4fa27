//! `devheal classify-log [FILE|-]`: finds the device faults in a kernel log (dmesg, dmesg -T,
//! journalctl -k, /dev/kmsg records or bare messages), attributes them, folds them into
//! incidents and prints one JSON object per fault line (or a table on a terminal).
//!
//! Exit status, for scripts: 0 when the log shows no hardware fault, 1 when at least one fault
//! line is a hardware fault (see [`is_hardware_fault`]; `--exit-zero` makes that 0 too), 2 when
//! the arguments, the input or the catalog cannot be used.

use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use devheal_core::{Attribution, Health, Time};
use devheal_detect::{
    Catalog, Classifier, Correlator, DeviceFault, FaultLine, LogScanner, MAX_LINE_BYTES, Topology,
};
use serde::Serialize;

#[derive(clap::Args)]
#[command(after_help = "\
Exit status:
  0  no hardware fault in the log (application and unknown-cause lines do not count)
  1  at least one hardware fault: a line attributed to the device, the interconnect, the
     host or the network whose health is degraded or unhealthy (--exit-zero turns this into 0)
  2  bad arguments, an unreadable input or catalog, or a write error")]
pub struct ClassifyLogArgs {
    /// The kernel log to read; `-` or nothing reads standard input.
    #[arg(value_name = "FILE|-")]
    input: Option<PathBuf>,
    /// Output format; JSON lines when stdout is not a terminal, a table when it is.
    #[arg(long, value_enum)]
    format: Option<OutputFormat>,
    /// A catalog file whose entries override the built-in Xid/event catalog.
    #[arg(long, value_name = "FILE")]
    catalog: Option<PathBuf>,
    /// The node's device topology (PCIe paths, NVSwitch links; format in docs/kernel-log.md):
    /// faults below a failing port or switch join its incident.
    #[arg(long, value_name = "FILE")]
    topology: Option<PathBuf>,
    /// Node name used in incident ids.
    #[arg(long, default_value = "local")]
    node: String,
    /// Exit 0 even when the log shows a hardware fault (for pipelines that only want the output).
    #[arg(long)]
    exit_zero: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum OutputFormat {
    Json,
    Table,
}

/// One output line, with exactly the fields `classify-log` promises, in this order.
#[derive(Serialize)]
struct FaultRecord<'a> {
    line: u64,
    kind: &'a str,
    code: Option<u32>,
    device: Option<&'a str>,
    attribution: &'a str,
    health: &'a str,
    action: &'a str,
    incident: &'a str,
    summary: &'a str,
}

pub fn run(args: ClassifyLogArgs) -> anyhow::Result<ExitCode> {
    let catalog = match &args.catalog {
        Some(path) => Catalog::from_path(path)?,
        None => Catalog::builtin(),
    };
    let format = args.format.unwrap_or(if io::stdout().is_terminal() {
        OutputFormat::Table
    } else {
        OutputFormat::Json
    });
    let classifier = Classifier::new(catalog);
    let mut correlator = Correlator::default();
    if let Some(path) = &args.topology {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read topology {}", path.display()))?;
        correlator = correlator.with_topology(Topology::parse(&text, &path.display().to_string())?);
    }
    let mut scanner = LogScanner::new(&classifier);

    let stdout = io::stdout();
    let mut out = io::BufWriter::with_capacity(64 * 1024, stdout.lock());
    let mut write_error: Option<io::Error> = None;
    let mut last_time = Time::ZERO;
    let mut hardware_faults = 0u64;
    if format == OutputFormat::Table {
        write_error = writeln!(
            out,
            "{:>7}  {:<21}  {:>5}  {:<12}  {:<12}  {:<9}  {:<16}  {:>5}  SUMMARY",
            "LINE", "KIND", "CODE", "DEVICE", "ATTRIBUTION", "HEALTH", "ACTION", "INC"
        )
        .err();
    }
    let mut on_fault = |found: FaultLine<'_>| {
        let at = found.line.timestamp.map(|t| t.as_time()).unwrap_or(last_time);
        last_time = at;
        let observation = correlator.observe(&args.node, found.boot_id, at, &found.fault);
        if is_hardware_fault(&found.fault) {
            hardware_faults += 1;
        }
        if write_error.is_some() {
            return;
        }
        let health = found.fault.health.as_str().to_ascii_lowercase();
        let record = FaultRecord {
            line: found.line_number,
            kind: found.fault.kind.as_str(),
            code: found.fault.code,
            device: found.fault.device.as_deref(),
            attribution: found.fault.attribution.as_str(),
            health: &health,
            action: found.fault.action.as_str(),
            incident: &observation.incident.id,
            summary: &found.fault.summary,
        };
        let result = match format {
            OutputFormat::Json => serde_json::to_writer(&mut out, &record)
                .map_err(io::Error::other)
                .and_then(|()| out.write_all(b"\n")),
            OutputFormat::Table => write_table_row(&mut out, &record),
        };
        write_error = result.err();
    };

    let input_name = match &args.input {
        Some(path) if path.as_os_str() != "-" => {
            let file =
                std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
            scanner.scan(file, &mut on_fault).with_context(|| format!("cannot read {}", path.display()))?;
            path.display().to_string()
        }
        _ => {
            scanner.scan(io::stdin().lock(), &mut on_fault).context("cannot read standard input")?;
            "standard input".to_string()
        }
    };
    if write_error.is_none() {
        write_error = out.flush().err();
    }
    match write_error {
        // A closed pipe (`| head`) is the reader's choice, not an error.
        Some(err) if err.kind() == io::ErrorKind::BrokenPipe => {}
        Some(err) => return Err(err).context("cannot write to standard output"),
        None => {}
    }

    let stats = scanner.stats();
    let mut report = format!(
        "classify-log: {input_name}: {} lines, {} device-fault lines in {} incidents (catalog {})",
        stats.lines,
        stats.faults,
        correlator.incidents_opened(),
        classifier.catalog().version()
    );
    if stats.skipped() > 0 {
        report.push_str(&format!(
            "; skipped {} lines: {} invalid UTF-8, {} binary, {} longer than {MAX_LINE_BYTES} bytes",
            stats.skipped(),
            stats.skipped_invalid_utf8,
            stats.skipped_binary,
            stats.skipped_too_long
        ));
    }
    eprintln!("{report}");
    Ok(if hardware_faults > 0 && !args.exit_zero { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// Whether a fault line makes `classify-log` exit 1: the catalog blames the hardware (the device
/// itself, its interconnect, its host or its network) and says it is not healthy. Application errors
/// (Xid 13, 31, 43, 45 …), causes the catalog does not know, and informational lines are not.
fn is_hardware_fault(fault: &DeviceFault) -> bool {
    matches!(
        fault.attribution,
        Attribution::Device | Attribution::Interconnect | Attribution::Host | Attribution::Network
    ) && matches!(fault.health, Health::Degraded | Health::Unhealthy)
}

fn write_table_row(out: &mut impl Write, record: &FaultRecord<'_>) -> io::Result<()> {
    let code = record.code.map(|c| c.to_string()).unwrap_or_else(|| "-".into());
    // The incident's ordinal (the id's last segment) keeps the table narrow.
    let incident = record.incident.rsplit('/').next().unwrap_or(record.incident);
    writeln!(
        out,
        "{:>7}  {:<21}  {:>5}  {:<12}  {:<12}  {:<9}  {:<16}  {:>5}  {}",
        record.line,
        record.kind,
        code,
        record.device.unwrap_or("-"),
        record.attribution,
        record.health,
        record.action,
        format!("#{incident}"),
        record.summary
    )
}
