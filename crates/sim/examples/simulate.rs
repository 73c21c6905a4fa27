//! Run one bundled scenario and print the table and per-strategy wall times (for profiling
//! without the CLI): `cargo run --release -p devheal-sim --example simulate -- llama3-16k 1 [STRATEGY] [DAYS]`.
//! With `DEVHEAL_SIM_DUMP=DIR` set, each strategy's whole report is also written as JSON to
//! `DIR/STRATEGY.json` (to check that a speed-up changed no result: compare the files).

use std::time::Instant;

use devheal_sim::{FaultTrace, Scenario, Strategy, simulate_strategy};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let name = args.get(1).map_or("llama3-16k", String::as_str);
    let seed = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1);
    let only = args.get(3).map(String::as_str);
    let days: Option<f64> = args.get(4).and_then(|s| s.parse().ok());
    let scenario = match Scenario::bundled(name) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let mut scenario = scenario;
    if let Some(d) = days {
        scenario.duration_days = d;
    }
    let trace = FaultTrace::generate(&scenario, seed);
    for s in Strategy::ALL {
        if only.is_some_and(|o| o != s.name()) {
            continue;
        }
        let t = Instant::now();
        let r = simulate_strategy(&scenario, s, &trace);
        println!(
            "{:<24} {:>8.3} s  events {:>9}  engine inputs {:>9} (ticks {})  ETTR {:.4}  lost {:.0}",
            s.name(),
            t.elapsed().as_secs_f64(),
            r.events,
            r.counts.engine_inputs,
            r.counts.engine_ticks,
            r.ettr,
            r.gpu_hours_lost.total
        );
        if let Ok(dir) = std::env::var("DEVHEAL_SIM_DUMP") {
            let path = std::path::Path::new(&dir).join(format!("{}.json", s.name()));
            let json = serde_json::to_string_pretty(&r).unwrap_or_default();
            if let Err(e) = std::fs::write(&path, json) {
                eprintln!("{}: {e}", path.display());
            }
        }
    }
}
