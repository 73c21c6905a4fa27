//! Parsed records turned into a [`FaultTrace`] for a scenario: causes mapped to classes, nodes
//! named, times made offsets from the scenario's start.

use std::collections::{BTreeMap, BTreeSet};

use devheal_core::Time;

use super::causes::map_cause;
use super::record::{
    Cause, NodeRef, ReplayOptions, ReplaySummary, Stamp, TraceError, TraceFormat, TraceRecord,
};
use crate::scenario::{FaultScope, Scenario, secs};
use crate::trace::{FaultTarget, FaultTrace, TraceEvent, TraceKind};

/// Turn parsed records into a trace for `scenario`.
pub fn build(
    records: &[TraceRecord],
    file: &str,
    format: TraceFormat,
    scenario: &Scenario,
    options: &ReplayOptions,
) -> Result<(FaultTrace, ReplaySummary), TraceError> {
    let field_err = |line: usize, field: &str, problem: String| TraceError::Field {
        file: file.to_string(),
        line,
        field: field.to_string(),
        problem,
    };
    let unknown_as = match &options.unknown_as {
        None => None,
        Some(name) => match scenario.faults.iter().position(|f| &f.name == name) {
            Some(i) => Some(i as u16),
            None => {
                return Err(TraceError::File {
                    file: file.to_string(),
                    problem: format!(
                        "unknown causes are to be replayed as `{name}`, which is no class of scenario {}",
                        scenario.name
                    ),
                });
            }
        },
    };
    // Every start and end in one kind of time: offsets, or RFC 3339 times measured from the
    // earliest start.
    let absolute = matches!(records[0].start, Stamp::Absolute(_));
    let mut origin = f64::INFINITY;
    for r in records {
        for (field, stamp) in [("start", Some(r.start)), ("end", r.end)] {
            match stamp {
                Some(Stamp::Absolute(_)) if !absolute => {
                    return Err(field_err(
                        r.line,
                        field,
                        "an RFC 3339 time in a file that starts with seconds from the start".into(),
                    ));
                }
                Some(Stamp::Offset(_)) if absolute => {
                    return Err(field_err(
                        r.line,
                        field,
                        "seconds from the start in a file that starts with RFC 3339 times".into(),
                    ));
                }
                _ => {}
            }
        }
        if let Stamp::Absolute(t) = r.start {
            origin = origin.min(t);
        }
    }
    let seconds = |s: Stamp| match s {
        Stamp::Offset(v) => v,
        Stamp::Absolute(t) => t - origin,
    };
    // Node names: model names (`node-00042`) are those nodes; any other name takes the next
    // node index nobody names explicitly, in order of first appearance.
    let total = scenario.total_nodes();
    let mut explicit = BTreeSet::new();
    for r in records {
        match &r.node {
            NodeRef::Index(i) => {
                if *i >= total {
                    return Err(field_err(
                        r.line,
                        "node",
                        format!("node {i} is outside the scenario's {total} nodes (0 … {})", total - 1),
                    ));
                }
                explicit.insert(*i);
            }
            NodeRef::Name(name) => {
                if let Some(i) = crate::strategy::devheal::parse_node(name).filter(|i| *i < total) {
                    explicit.insert(i);
                }
            }
        }
    }
    let mut named: BTreeMap<&str, u32> = BTreeMap::new();
    let mut next = 0u32;
    let gang_nodes: u32 = scenario.training.iter().map(|t| t.nodes).sum();
    let gpn = scenario.cluster.gpus_per_node;
    let end = scenario.duration().as_secs_f64();
    let mut events = Vec::new();
    let mut replayed_by_class = vec![0u64; scenario.faults.len()];
    let mut unknown: BTreeMap<String, u64> = BTreeMap::new();
    let (mut after_end, mut off_gang, mut fault_hours) = (0u64, 0u64, 0.0f64);
    let mut nodes_seen = BTreeSet::new();
    for r in records {
        let start = seconds(r.start);
        let stop = match (r.end, r.duration_s) {
            (Some(e), _) => Some(seconds(e)),
            (None, Some(d)) => Some(start + d),
            (None, None) => None,
        };
        if let Some(stop) = stop {
            if stop < start {
                return Err(field_err(r.line, "end", "before the start".into()));
            }
            fault_hours += (stop - start) / 3600.0;
        }
        let node = match &r.node {
            NodeRef::Index(i) => *i,
            NodeRef::Name(name) => match crate::strategy::devheal::parse_node(name).filter(|i| *i < total) {
                Some(i) => i,
                None => match named.get(name.as_str()) {
                    Some(&i) => i,
                    None => {
                        while explicit.contains(&next) {
                            next += 1;
                        }
                        if next >= total {
                            return Err(field_err(
                                r.line,
                                "node",
                                format!("`{name}` is one name more than the scenario's {total} nodes"),
                            ));
                        }
                        named.insert(name, next);
                        next += 1;
                        next - 1
                    }
                },
            },
        };
        nodes_seen.insert(node);
        if let Some(d) = r.device
            && d >= gpn
        {
            return Err(field_err(
                r.line,
                "device",
                format!("GPU {d} on a node of {gpn} GPUs (0 … {})", gpn - 1),
            ));
        }
        let class = match &r.cause {
            Cause::Class(name) => match scenario.faults.iter().position(|f| &f.name == name) {
                Some(i) => i as u16,
                None => {
                    let names: Vec<&str> = scenario.faults.iter().map(|f| f.name.as_str()).collect();
                    return Err(field_err(
                        r.line,
                        "class",
                        format!(
                            "no fault class `{name}` in scenario {} ({})",
                            scenario.name,
                            names.join(", ")
                        ),
                    ));
                }
            },
            Cause::Text(text) => match map_cause(text, scenario) {
                Some((i, _)) => i,
                None => {
                    *unknown.entry(text.clone()).or_default() += 1;
                    match unknown_as {
                        Some(i) => i,
                        None => continue,
                    }
                }
            },
        };
        if start >= end {
            after_end += 1;
            continue;
        }
        let spec = &scenario.faults[class as usize];
        let target = match spec.scope {
            FaultScope::Device => FaultTarget::Device { node, device: r.device.unwrap_or(0) as u8 },
            FaultScope::Node => FaultTarget::Node { node },
            FaultScope::Workload => {
                // The rank that starts on the node (software faults follow the rank).
                if node >= gang_nodes {
                    off_gang += 1;
                    continue;
                }
                let mut first = 0;
                let mut target = None;
                for (g, t) in scenario.training.iter().enumerate() {
                    if node < first + t.nodes {
                        target = Some(FaultTarget::GangMember { gang: g as u16, member: node - first });
                        break;
                    }
                    first += t.nodes;
                }
                match target {
                    Some(t) => t,
                    None => {
                        off_gang += 1;
                        continue;
                    }
                }
            }
        };
        replayed_by_class[class as usize] += 1;
        events.push(TraceEvent {
            at: Time::ZERO + secs(start),
            kind: TraceKind::Fault {
                class,
                target,
                lemon_excess: false,
                pid: 1000 + r.line as u32,
                lines: Default::default(),
            },
        });
    }
    events.sort_by_key(|e| e.at);
    let summary = ReplaySummary {
        source: file.to_string(),
        format,
        records: records.len() as u64,
        replayed: events.len() as u64,
        replayed_by_class: scenario.faults.iter().map(|f| f.name.clone()).zip(replayed_by_class).collect(),
        unknown_causes: unknown.into_iter().collect(),
        unknown_replayed_as: unknown_as.map(|i| scenario.faults[i as usize].name.clone()),
        after_end,
        workload_off_gang: off_gang,
        nodes: nodes_seen.len() as u64,
        recorded_fault_hours: fault_hours,
    };
    Ok((
        FaultTrace { events, lemons: vec![false; total as usize], noise: Default::default(), seed: 0 },
        summary,
    ))
}
