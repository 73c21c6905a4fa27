//! devheal-detect: kernel-log detection of device faults.
//!
//! - [`parse_line`]: one line of `/dev/kmsg`, `dmesg`, `dmesg -T`, `journalctl -k` or a bare
//!   message → timestamp, sequence number and message text.
//! - [`Classifier`]: one message → an optional [`DeviceFault`] (NVIDIA Xid/SXid, fallen off the
//!   bus, RmInitAdapter, PCIe AER, amdgpu, machine checks), with meanings from a versioned
//!   [`Catalog`] that an operator can override.
//! - [`Correlator`]: faults → incidents (repeats collapse, Xid 45 folds into 94/95/48, a GPU lost
//!   after a PCIe error on its port joins that error, NIC link flaps become one incident).
//! - [`LinkTracker`]: NIC link changes over time, per port: a brief flap is counted, a link
//!   that stays down (or flaps too often) is a network fault, cleared once up and stable.
//! - [`Topology`]: PCIe paths and NVSwitch links, so faults below a port or switch share its
//!   incident.
//! - [`LogScanner`]: the fast whole-file path behind `devheal classify-log` (literal prefilter
//!   over big blocks; only candidate lines are parsed).
//! - [`KmsgReader`]: a streaming `/dev/kmsg` reader for the node agent.
//! - [`degradation`]: stragglers, baseline shifts and hangs from workload progress reports
//!   (pure detectors, a labelled trace generator and their evaluation).
//! - [`promtext`]: the Prometheus / OpenMetrics text format, and a workload's step metric read
//!   from one scrape.
#![forbid(unsafe_code)]

pub mod catalog;
pub mod classify;
pub mod correlate;
pub mod degradation;
pub mod kmsg;
pub mod line;
pub mod link;
pub mod pci;
pub mod promtext;
pub mod scan;
pub mod topology;

pub use catalog::{Catalog, CatalogEntry, CatalogError};
pub use classify::{Classifier, DeviceFault, FaultKind};
pub use correlate::{CorrelationConfig, Correlator, Observation};
pub use kmsg::{KmsgError, KmsgEvent, KmsgReader, KmsgRecord, StartAt, parse_kmsg_record};
pub use line::{LineError, LineFormat, LogLine, MAX_LINE_BYTES, Timestamp, parse_line, parse_text};
pub use link::{FaultChange, LinkChange, LinkConfig, LinkConfigError, LinkState, LinkTracker, PortLink};
pub use scan::{FaultLine, LogScanner, ScanStats};
pub use topology::{Topology, TopologyError};
