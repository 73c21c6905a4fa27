//! Simulator benchmarks, plain std timing (the machine is noisy: medians of several runs, each
//! printed beside its baseline from the same run).
//!
//! - event throughput: the simulator's events/s under a high event rate (2,048 one-node gangs
//!   checkpointing every minute) and on the bundled scenarios, each next to a plain
//!   `BinaryHeap` push/pop loop with the same number of events (what a bare queue reaches);
//! - the default scenario (`llama3-16k`, every strategy) wall time, target ≤ 10 s;
//! - the 100,000-GPU, 365-day scenario, target ≤ 60 s.
//!
//! Run: `cargo bench -p devheal-sim --bench sim` (add `-- quick` for one repetition). Other
//! arguments select sections by name: `-- quick fleet` runs only the 100,000-GPU year,
//! `-- throughput llama3` the first two.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::hint::black_box;
use std::time::Instant;

use devheal_sim::{FaultTrace, Scenario, Strategy, simulate_strategy};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Baseline: push then pop `n` (time, seq) keys through a std BinaryHeap, with a steady queue
/// depth like the simulator's.
fn heap_baseline(n: u64) -> f64 {
    let start = Instant::now();
    let mut heap = BinaryHeap::new();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in 0..1024u64 {
        heap.push(Reverse((i, i, 0u64)));
    }
    for i in 0..n {
        let Reverse((t, _, _)) = heap.pop().unwrap_or(Reverse((0, 0, 0)));
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        heap.push(Reverse((t + (x % 1_000_000), i + 1024, x)));
    }
    black_box(&heap);
    start.elapsed().as_secs_f64()
}

fn run_scenario(name: &str, reps: usize, target_s: f64) {
    let scenario = match Scenario::bundled(name) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return;
        }
    };
    println!("== {name}: every strategy on one trace (seed 1), {reps} repetition(s), target ≤ {target_s} s");
    let mut totals = Vec::new();
    let mut per_strategy: Vec<Vec<f64>> = vec![Vec::new(); Strategy::ALL.len()];
    let mut events = vec![0u64; Strategy::ALL.len()];
    let mut trace_times = Vec::new();
    for _ in 0..reps {
        let t0 = Instant::now();
        let trace = FaultTrace::generate(&scenario, 1);
        trace_times.push(t0.elapsed().as_secs_f64());
        for (i, &s) in Strategy::ALL.iter().enumerate() {
            let t = Instant::now();
            let report = simulate_strategy(&scenario, s, &trace);
            per_strategy[i].push(t.elapsed().as_secs_f64());
            events[i] = report.events;
            black_box(report);
        }
        totals.push(t0.elapsed().as_secs_f64());
    }
    println!("  trace generation: median {:.3} s", median(trace_times));
    let all_events: u64 = events.iter().sum();
    for (i, s) in Strategy::ALL.iter().enumerate() {
        let m = median(per_strategy[i].clone());
        let base = median((0..reps).map(|_| heap_baseline(events[i])).collect());
        println!(
            "  {:<24} median {:>7.3} s  {:>10} events  {:>12.0} events/s  | baseline BinaryHeap loop {:>12.0} events/s  ratio {:.2}",
            s.name(),
            m,
            events[i],
            events[i] as f64 / m,
            events[i] as f64 / base,
            base / m
        );
    }
    let total = median(totals);
    let base_all = median((0..reps).map(|_| heap_baseline(all_events)).collect());
    println!(
        "  TOTAL                    median {total:>7.3} s  {all_events:>10} events  {:>12.0} events/s  | baseline {:>12.0} events/s  | target {target_s} s: {}",
        all_events as f64 / total,
        all_events as f64 / base_all,
        if total <= target_s { "met" } else { "MISSED" }
    );
}

/// The event loop under a high event rate: 2,048 one-node gangs checkpointing every minute
/// (two events per cycle) for two simulated days, the llama3-16k fault model, no engine
/// (job-failure-policy). Target ≥ 2,000,000 events/s; printed beside the BinaryHeap baseline.
fn event_throughput(reps: usize) {
    let Ok(mut scenario) = Scenario::bundled("llama3-16k") else { return };
    let template = scenario.training[0].clone();
    scenario.training = (0..2048)
        .map(|i| {
            let mut g = template.clone();
            g.name = format!("g{i}");
            g.nodes = 1;
            g.checkpoint_interval_min = 1.0;
            g.checkpoint_blocking_s = 1.0;
            g
        })
        .collect();
    scenario.duration_days = 2.0;
    println!(
        "== event throughput: 2,048 one-node gangs, 1-min checkpoints, 2 days, job-failure-policy, {reps} repetition(s), target ≥ 2,000,000 events/s"
    );
    let trace = FaultTrace::generate(&scenario, 1);
    let mut times = Vec::new();
    let mut events = 0;
    for _ in 0..reps {
        let t = Instant::now();
        let report = simulate_strategy(&scenario, Strategy::JobFailurePolicy, &trace);
        times.push(t.elapsed().as_secs_f64());
        events = report.events;
        black_box(report);
    }
    let m = median(times);
    let base = median((0..reps).map(|_| heap_baseline(events)).collect());
    println!(
        "  simulator median {m:.3} s  {events} events  {:.0} events/s  | baseline BinaryHeap loop {:.0} events/s  ratio {:.2}  | target: {}",
        events as f64 / m,
        events as f64 / base,
        base / m,
        if events as f64 / m >= 2_000_000.0 { "met" } else { "MISSED" }
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let quick = args.iter().any(|a| a == "quick");
    let filters: Vec<&String> = args.iter().filter(|a| *a != "quick").collect();
    let run = |section: &str| filters.is_empty() || filters.iter().any(|f| section.contains(f.as_str()));
    let reps = if quick { 1 } else { 3 };
    if run("event-throughput") {
        event_throughput(reps);
    }
    if run("llama3-16k") {
        run_scenario("llama3-16k", reps, 10.0);
    }
    if run("fleet-100k-365d") {
        run_scenario("fleet-100k-365d", if quick { 1 } else { 2 }, 60.0);
    }
}
