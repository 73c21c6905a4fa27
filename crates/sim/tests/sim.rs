//! Acceptance tests of the simulator: Daly's analytic model, calibration against the Llama 3
//! interruption table (rates, per-class counts, the hang/crash split), the golden default report,
//! the ranking over seeds, determinism, and accounting invariants.

use devheal_core::Time;
use devheal_sim::daly::{daly_optimal_interval, expected_ettr};
use devheal_sim::scenario::Manifestation;
use devheal_sim::scenario::secs;
use devheal_sim::seeds::Interval;
use devheal_sim::trace::{FaultTarget, TraceEvent, TraceKind};
use devheal_sim::{FaultTrace, Progress, Scenario, Strategy, simulate, simulate_seeds, simulate_strategy};

const DALY: &str = include_str!("data/daly.yaml");
const SMALL: &str = include_str!("data/small-cluster.yaml");

/// One gang, exponential failures with mean `m_min`, instant detection, R = 10 min, δ = 5 min,
/// at Daly's optimum τ: the mean ETTR over `seeds` runs must be within ±1 % absolute of
/// τ / E[segment] (fault-model.md §4).
fn daly_point(m_min: f64, published_tau_min: f64, hours_per_seed: f64, seeds: u64) {
    let mut scenario = Scenario::from_yaml(DALY, "tests/data/daly.yaml").expect("fixture parses");
    let tau = daly_optimal_interval(5.0, m_min);
    assert!(
        (tau - published_tau_min).abs() / published_tau_min < 0.01,
        "Daly τ {tau} vs published {published_tau_min}"
    );
    scenario.training[0].checkpoint_interval_min = tau;
    scenario.faults[0].rate_per_gpu_hour = 1.0 / (m_min / 60.0 * 8.0);
    scenario.duration_days = hours_per_seed / 24.0;
    scenario.validate("daly").expect("still valid");
    let expected = expected_ettr(tau, 5.0, 10.0, m_min);
    let mut sum = 0.0;
    for seed in 0..seeds {
        let trace = FaultTrace::generate(&scenario, seed);
        let report = simulate_strategy(&scenario, Strategy::JobFailurePolicy, &trace);
        sum += report.ettr;
    }
    let mean = sum / seeds as f64;
    assert!(
        (mean - expected).abs() <= 0.01,
        "M = {m_min} min, τ = {tau:.2} min: simulated ETTR {mean:.4}, Daly {expected:.4}"
    );
    eprintln!("Daly M = {m_min} min, τ = {tau:.2} min: simulated {mean:.4}, analytic {expected:.4}");
}

#[test]
fn daly_m_24h() {
    // ~5,000 failures in total: standard error of the mean ETTR ≈ 0.002.
    daly_point(24.0 * 60.0, 117.0, 10_000.0, 12);
}

#[test]
fn daly_m_6h() {
    daly_point(6.0 * 60.0, 57.0, 5_000.0, 8);
}

#[test]
fn daly_m_15min() {
    daly_point(15.0, 9.1, 1_000.0, 8);
}

/// The default scenario's kubernetes-default run sees unexpected interruptions at the Llama 3
/// rate: 419 in 54 days of a 16,384-GPU job, i.e. 0.3233 per hour of running. Faults only
/// interrupt a running gang, so the count is compared per running hour. Tolerance: the mean over
/// three seeds within ±10 %, and each seed within 4 Poisson standard deviations.
#[test]
fn calibration_matches_llama3_interruption_rate() {
    let scenario = Scenario::bundled("llama3-16k").expect("bundled");
    let llama3_rate = 419.0 / (54.0 * 24.0);
    let mut rates = Vec::new();
    for seed in 1..=3 {
        let trace = FaultTrace::generate(&scenario, seed);
        let report = simulate_strategy(&scenario, Strategy::KubernetesDefault, &trace);
        let gang = &report.training[0];
        let expected = llama3_rate * gang.running_hours;
        let sd = expected.sqrt();
        let observed = gang.interruptions as f64;
        assert!(
            (observed - expected).abs() <= 4.0 * sd,
            "seed {seed}: {observed} interruptions in {:.0} running hours, expected {expected:.0} ± {sd:.0}",
            gang.running_hours
        );
        rates.push(observed / gang.running_hours);
    }
    let mean = rates.iter().sum::<f64>() / rates.len() as f64;
    assert!((mean / llama3_rate - 1.0).abs() <= 0.10, "mean rate {mean:.4}/h vs Llama 3 {llama3_rate:.4}/h");
}

#[test]
fn same_scenario_and_seed_give_identical_json_and_another_seed_differs() {
    let scenario = Scenario::from_yaml(SMALL, "tests/data/small-cluster.yaml").expect("fixture parses");
    let a = simulate(&scenario, 7, &mut |_| {}).to_json();
    let b = simulate(&scenario, 7, &mut |_| {}).to_json();
    let c = simulate(&scenario, 8, &mut |_| {}).to_json();
    assert_eq!(a, b);
    assert_ne!(a, c);
}

/// The CLI spreads the runs over threads; the report must not depend on how many, and progress
/// still names every run once.
#[test]
fn runs_on_several_threads_give_the_same_report() {
    let scenario = Scenario::from_yaml(SMALL, "tests/data/small-cluster.yaml").expect("fixture parses");
    let trace = FaultTrace::generate(&scenario, 7);
    let one = devheal_sim::simulate_trace(&scenario, 7, &trace, &Strategy::ALL, &mut |_| {}).to_json();
    let mut names = Vec::new();
    let three = devheal_sim::simulate_trace_on(&scenario, 7, &trace, &Strategy::ALL, 3, &mut |p| {
        if let Progress::Run { name, .. } = p {
            names.push(name.to_string());
        }
    });
    assert_eq!(one, three.to_json());
    names.sort();
    names.dedup();
    assert!(names.len() >= Strategy::ALL.len(), "{names:?}");
}

/// Progress names every run in order with its number, then counts each run's days up to the
/// scenario's end; watching does not change the report.
#[test]
fn progress_reports_each_run_and_its_days() {
    let mut scenario = Scenario::from_yaml(SMALL, "tests/data/small-cluster.yaml").expect("fixture parses");
    scenario.duration_days = 9.5;
    /// One run as progress told it: name, number, runs, and each (day, days) heard.
    type Run = (String, usize, usize, Vec<(u32, u32)>);
    let mut events: Vec<Run> = Vec::new();
    let watched = simulate(&scenario, 7, &mut |p| match p {
        Progress::Run { name, number, runs } => events.push((name.to_string(), number, runs, Vec::new())),
        Progress::Day { day, days } => events.last_mut().expect("a run started first").3.push((day, days)),
        Progress::Seed { .. } => panic!("one seed only"),
    });
    let runs = events.len();
    let n = Strategy::ALL.len();
    assert!(
        runs == n || runs == n + 1,
        "every strategy, plus devheal without straggler detection if compared"
    );
    for (i, (name, number, of, days)) in events.iter().enumerate() {
        assert_eq!((*number, *of), (i + 1, runs), "{name}");
        assert!(days.iter().all(|&(_, of)| of == 10), "9.5 days round up to 10: {days:?}");
        assert!(days.windows(2).all(|w| w[0].0 < w[1].0), "{name}: days only grow: {days:?}");
        assert_eq!(days.last().map(|d| d.0), Some(10), "{name} reaches its last day");
    }
    let names: Vec<&str> = events.iter().take(n).map(|e| e.0.as_str()).collect();
    assert_eq!(names, Strategy::ALL.iter().map(|s| s.name()).collect::<Vec<_>>());
    assert_eq!(watched.to_json(), simulate(&scenario, 7, &mut |_| {}).to_json());
}

/// Every GPU-hour of a gang is either productive or lost to a named cause.
#[test]
fn gang_time_is_fully_accounted_for_every_strategy() {
    let scenario = Scenario::from_yaml(SMALL, "tests/data/small-cluster.yaml").expect("fixture parses");
    let report = simulate(&scenario, 3, &mut |_| {});
    let wall_h = scenario.duration_days * 24.0;
    for s in &report.strategies {
        for g in &s.training {
            let lost = &g.gpu_hours_lost;
            // Straggler slowdown is wall time spent computing beyond the work done.
            let accounted = g.productive_gpu_hours
                + lost.hang_before_detection
                + lost.rework_since_checkpoint
                + lost.restart
                + lost.capacity_held_out
                + lost.checkpoint_overhead
                + lost.straggler_slowdown
                + lost.planned_maintenance;
            let wall = wall_h * g.gpus as f64;
            assert!(
                (accounted / wall - 1.0).abs() < 1e-6,
                "{} {}: {accounted} of {wall} GPU-h",
                s.name,
                g.name
            );
            assert!(g.ettr > 0.0 && g.ettr <= 1.0, "{} {}: ETTR {}", s.name, g.name, g.ettr);
        }
        assert!((0.0..=1.0).contains(&s.inference_availability));
        assert!(s.counts.training_interruptions > 0, "{}: the fixture must interrupt training", s.name);
    }
    let devheal = report.strategies.iter().find(|s| s.name == "devheal").expect("devheal ran");
    assert!(devheal.counts.engine_actions > 0, "the engine acts on the fixture's faults");
    assert_eq!(devheal.counts.engine_actions_unmapped, 0, "every engine action maps onto the model");
}

/// On the default scenario the devheal strategy is driven by the engine: it acts, every action
/// names something in the model, and it quarantines single devices. Some quarantines are false
/// (noise: Xid 74 and tenants' Xids read as the device's fault; 45 of 281 on seed 1): fewer than a
/// quarter. With the noise off there are none (`noise_turns_false_actions_...`).
#[test]
fn devheal_on_the_default_scenario_is_the_engine_at_work() {
    let scenario = Scenario::bundled("llama3-16k").expect("bundled");
    let trace = FaultTrace::generate(&scenario, 1);
    let report = simulate_strategy(&scenario, Strategy::Devheal, &trace);
    let c = &report.counts;
    assert!(c.engine_actions > 0, "{c:?}");
    assert_eq!(c.engine_actions_unmapped, 0, "{c:?}");
    assert!(c.device_quarantines > 0, "{c:?}");
    assert!(c.false_quarantines * 4 < c.device_quarantines, "{c:?}");
}

/// The small fixture with no random faults, and a trace of `faults` (class index, target, hours).
fn hand_made(faults: &[(u16, FaultTarget, f64)]) -> (Scenario, FaultTrace) {
    let mut scenario = Scenario::from_yaml(SMALL, "tests/data/small-cluster.yaml").expect("fixture parses");
    scenario.duration_days = 1.0;
    scenario.stragglers = None;
    scenario.planned_maintenance = None;
    for f in &mut scenario.faults {
        f.rate_per_gpu_hour = 0.0;
    }
    let events = faults
        .iter()
        .map(|&(class, target, h)| TraceEvent {
            at: Time::ZERO + secs(h * 3600.0),
            kind: TraceKind::Fault {
                class,
                target,
                lemon_excess: false,
                pid: 4242,
                lines: Default::default(),
            },
        })
        .collect();
    let lemons = vec![false; scenario.total_nodes() as usize];
    (scenario, FaultTrace { events, lemons, noise: Default::default(), seed: 0 })
}

/// A rank hangs with no evidence but its silence (class 8, nccl_timeout_unknown) twice: the
/// second time 6 minutes after the gang came back from the restart the engine ordered for the
/// first. The engine must see every member in the new restart attempt, close that restart and
/// notice the second silence after its 5-minute hang timeout; if it kept the first restart open
/// (all members "doomed", their progress dropped) it would notice nothing and the gang would wait
/// for the 10-minute NCCL watchdog.
#[test]
fn a_second_hang_soon_after_a_restart_is_detected_by_the_engine() {
    let rank = |member| FaultTarget::GangMember { gang: 0, member };
    // Gang-a: progress every 30 s, R = 230 s. First hang at 1 h: noticed ≈ 1 h 5.5 min, running
    // again ≈ 1 h 9.5 min; second hang at 1 h 15.5 min.
    let (scenario, trace) = hand_made(&[(8, rank(3), 1.0), (8, rank(9), 1.0 + 15.5 / 60.0)]);
    assert_eq!(scenario.faults[8].name, "nccl_timeout_unknown");
    let report = simulate_strategy(&scenario, Strategy::Devheal, &trace);
    let gang = &report.training[0];
    assert_eq!(gang.interruptions, 2, "{gang:?}");
    assert_eq!(gang.restarts, 2, "{gang:?}");
    // Each hang ≈ 5.5 min × 128 GPUs = 11.7 GPU-h when the engine notices it; the watchdog
    // would make the second 21.3 GPU-h (33 in all).
    let limit = 2.0 * gang.gpus as f64 * 6.5 / 60.0;
    let hang = gang.gpu_hours_lost.hang_before_detection;
    assert!(hang < limit, "hang {hang:.2} GPU-h, expected under {limit:.2}");
    assert_eq!(report.counts.engine_actions_unmapped, 0);
}

/// Restart in place (#14 item 4) at its measured cost: on a gang whose pods have the restart
/// rule, a hang with no failed device restarts every member in place, without scheduling and
/// pod start (10 s of R = 230 s here), and the engine sees each restarted (no fallback to
/// re-creating the gang); a GPU that falls off the bus moves its member, so that restart is
/// re-created at the full cost. The same trace without the rule restarts as before.
#[test]
fn a_gang_whose_pods_restart_in_place_is_restarted_in_place_when_no_member_moves() {
    let rank = |member| FaultTarget::GangMember { gang: 0, member };
    let (mut with_rules, trace) = hand_made(&[(8, rank(3), 1.0)]);
    with_rules.training[0].restart_rules = true;
    let (without, _) = hand_made(&[]);
    let a = simulate_strategy(&with_rules, Strategy::Devheal, &trace);
    let b = simulate_strategy(&without, Strategy::Devheal, &trace);
    assert_eq!((a.training[0].restarts, b.training[0].restarts), (1, 1), "one restart each: {:?}", a.counts);
    assert_eq!((a.counts.in_place_restarts, b.counts.in_place_restarts), (1, 0));
    assert_eq!(a.counts.engine_actions_unmapped, 0);
    let saved = b.training[0].gpu_hours_lost.restart - a.training[0].gpu_hours_lost.restart;
    let expected =
        with_rules.training[0].restart.scheduling_and_pod_start_s / 3600.0 * a.training[0].gpus as f64;
    assert!((saved - expected).abs() < 1e-6, "saved {saved} GPU-h, expected {expected}");

    // A device failure: the member on the dead GPU moves, so the gang is not restarted in place.
    let xid79 = with_rules
        .faults
        .iter()
        .position(|f| f.name == "gpu_fell_off_bus")
        .expect("a fell-off-the-bus class") as u16;
    let (mut dead, trace) = hand_made(&[(xid79, FaultTarget::GangMember { gang: 0, member: 2 }, 1.0)]);
    dead.training[0].restart_rules = true;
    let c = simulate_strategy(&dead, Strategy::Devheal, &trace);
    assert!(c.training[0].restarts >= 1, "{:?}", c.counts);
    assert_eq!(c.counts.in_place_restarts, 0, "{:?}", c.counts);
}

/// `resend_restarted_members: false` (the fleet scenario's shortcut: only rank 0 of a restarted
/// gang is re-sent and its progress closes the restart) must not change what the report
/// measures, only how many inputs the engine reads.
#[test]
fn re_sending_only_rank_0_after_a_restart_changes_no_outcome() {
    let mut lean = Scenario::bundled("llama3-16k").expect("bundled");
    lean.duration_days = 12.0;
    assert!(!lean.strategies.devheal.resend_restarted_members, "the default scenario takes the shortcut");
    let mut full = lean.clone();
    full.strategies.devheal.resend_restarted_members = true;
    let trace = FaultTrace::generate(&full, 3);
    let a = simulate_strategy(&full, Strategy::Devheal, &trace);
    let b = simulate_strategy(&lean, Strategy::Devheal, &trace);
    assert!(a.counts.gang_restarts > 3, "the window has restarts to compare: {:?}", a.counts);
    assert!(
        b.counts.engine_inputs * 2 < a.counts.engine_inputs,
        "the shortcut reads far fewer inputs: {} vs {}",
        b.counts.engine_inputs,
        a.counts.engine_inputs
    );
    assert_eq!(a.ettr, b.ettr);
    assert_eq!(a.counts.gang_restarts, b.counts.gang_restarts);
    assert_eq!(a.counts.pod_evictions, b.counts.pod_evictions);
    assert_eq!(a.counts.device_quarantines, b.counts.device_quarantines);
    assert_eq!(
        serde_json::to_string(&a.gpu_hours_lost).expect("json"),
        serde_json::to_string(&b.gpu_hours_lost).expect("json")
    );
}

/// Issue 7: with stragglers in the trace, devheal with its straggler detection (lasting slow
/// members replaced at a checkpoint) loses fewer GPU-hours to slow ranks than devheal without
/// it, and the report carries the difference. Its ETTR is not higher on seed 1 (86.41 % with,
/// 86.51 % without: each replacement is a gang restart, and false findings on transient bursts
/// replace healthy members too), so that is bounded, not claimed: within half a point.
#[test]
fn straggler_detection_cuts_slow_rank_hours_on_the_default_scenario() {
    let scenario = Scenario::bundled("llama3-16k").expect("bundled");
    let report = devheal_sim::simulate_strategies(&scenario, 1, &[Strategy::Devheal], &mut |_| {});
    let d = report.straggler_detection.as_ref().expect("the comparison is on by default");
    assert!(d.replacements > 0, "{d:?}");
    assert!(d.straggler_gpu_hours_with < 0.8 * d.straggler_gpu_hours_without, "{d:?}");
    assert!((d.ettr_with - d.ettr_without).abs() < 0.005, "{d:?}");
    assert!(report.to_table().contains("straggler detection: ETTR"), "{}", report.to_table());
    assert!(report.to_json().contains("\"straggler_detection\""));
}

/// Llama 3 Table 5 (fault-model.md §1.1): unexpected interruptions of the 16,384-GPU job in its
/// 54 days (1,296 h), by the scenario classes that model each row. Rows of fewer than 15 are
/// pooled. The counts sum to 419.
const LLAMA3_ROWS: &[(&str, &[&str], f64)] = &[
    ("Faulty GPU", &["gpu_fell_off_bus", "gpu_nvlink"], 148.0),
    ("GPU HBM3 Memory", &["gpu_hbm"], 72.0),
    ("Software Bug + Dependency", &["software_bug_cuda", "software_bug"], 56.0),
    ("Network Switch/Cable", &["network_switch_cable"], 35.0),
    ("Host Maintenance", &["host_maintenance"], 32.0),
    ("GPU SRAM Memory", &["gpu_sram"], 19.0),
    ("GPU System Processor", &["gpu_gsp"], 17.0),
    (
        "NIC, NCCL watchdog, SDC, thermal, host parts",
        &[
            "nic",
            "nccl_timeout_unknown",
            "silent_data_corruption",
            "gpu_thermal",
            "host_cpu_memory",
            "host_other",
        ],
        40.0,
    ),
];

/// Per-class interruption counts and the hang/crash split of the default scenario against the
/// Llama 3 table. `kubernetes-default` over seeds 1–4, pooled; a fault interrupts the gang only
/// while it runs, so each row's expectation is its Llama 3 count × running hours / 1,296 h.
/// Tolerance: 4 Poisson standard deviations of each row's pooled expectation, and 4 binomial
/// standard deviations for the share of hangs among hang and crash interruptions (the table's
/// rows mapped to manifestations as the scenario does: 214 hangs, 159 crashes).
#[test]
fn interruptions_by_class_and_the_hang_crash_split_match_the_llama3_table() {
    let scenario = Scenario::bundled("llama3-16k").expect("bundled");
    let mut running_hours = 0.0;
    let mut by_class = vec![0u64; scenario.faults.len()];
    for seed in 1..=4 {
        let trace = FaultTrace::generate(&scenario, seed);
        let report = simulate_strategy(&scenario, Strategy::KubernetesDefault, &trace);
        running_hours += report.training[0].running_hours;
        for (i, (name, n)) in report.interruptions_by_class.iter().enumerate() {
            assert_eq!(name, &scenario.faults[i].name);
            by_class[i] += n;
        }
    }
    let count = |names: &[&str]| -> u64 {
        names
            .iter()
            .map(|n| {
                let i = scenario
                    .faults
                    .iter()
                    .position(|f| f.name == *n)
                    .unwrap_or_else(|| panic!("no class {n}"));
                by_class[i]
            })
            .sum()
    };
    let mut covered = 0;
    for (row, names, llama3) in LLAMA3_ROWS {
        covered += names.len();
        let expected = llama3 * running_hours / 1296.0;
        let observed = count(names) as f64;
        let tolerance = 4.0 * expected.sqrt();
        eprintln!("{row}: {observed} interruptions, expected {expected:.1} ± {tolerance:.1}");
        assert!(
            (observed - expected).abs() <= tolerance,
            "{row}: {observed} interruptions in {running_hours:.0} running hours, expected {expected:.1} ± {tolerance:.1}"
        );
    }
    assert_eq!(covered, scenario.faults.len(), "every class is compared with a Llama 3 row");
    let total: f64 = LLAMA3_ROWS.iter().map(|r| r.2).sum();
    assert_eq!(total, 419.0);
    // The hang/crash split.
    let manifest = |m: Manifestation| -> u64 {
        scenario
            .faults
            .iter()
            .enumerate()
            .filter(|(_, f)| f.manifestation == m)
            .map(|(i, _)| by_class[i])
            .sum()
    };
    let (hangs, crashes) = (manifest(Manifestation::Hang) as f64, manifest(Manifestation::Crash) as f64);
    let p = 214.0 / (214.0 + 159.0);
    let n = hangs + crashes;
    let share = hangs / n;
    let tolerance = 4.0 * (p * (1.0 - p) / n).sqrt();
    eprintln!(
        "hang share {share:.3} of {n} (Llama 3 rows as the scenario maps them: {p:.3} ± {tolerance:.3})"
    );
    assert!((share - p).abs() <= tolerance, "hang share {share:.3}, expected {p:.3} ± {tolerance:.3}");
}

const GOLDEN: &str = include_str!("data/golden/llama3-16k-seed1.txt");

/// The default report (`devheal sim`: llama3-16k, seed 1, every strategy) is exactly the golden
/// file, and the README shows that same table. After an intended change, regenerate it with
/// `DEVHEAL_BLESS=1 cargo test -p devheal-sim --test sim golden` and review the diff.
#[test]
fn the_default_report_matches_the_golden_file_and_the_readme() {
    let scenario = Scenario::bundled("llama3-16k").expect("bundled");
    let table = simulate(&scenario, 1, &mut |_| {}).to_table();
    if std::env::var_os("DEVHEAL_BLESS").is_some() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/golden/llama3-16k-seed1.txt");
        std::fs::write(&path, &table).expect("write the golden file");
        return;
    }
    assert_eq!(table, GOLDEN, "the default report changed; see this test's comment");
    let readme = include_str!("../../../README.md");
    assert!(readme.contains(GOLDEN.trim_end()), "README.md's sim output is not the golden report");
}

/// The ranking of the strategies, checked over eight seeds with the 95 % intervals of the
/// paired differences (not per seed): devheal's ETTR is above kubernetes-default's,
/// node-health-controller's, job-failure-policy's and nvsentinel-jobset's (each interval above
/// 0; measured +0.84 ± 0.20 points over nvsentinel-jobset) and level with progress-watchdog's
/// (measured −0.01 ± 0.10 points, not resolved; checked within ±1.5 points: it was −0.63 ±
/// 0.15 while every noise Xid 74 quarantined a device and restarted its gang, before the
/// engine held a lone NVLink error); the two strongest baselines are above
/// job-failure-policy; among the simpler baselines job-failure-policy is above
/// node-health-controller, which is now below kubernetes-default (−2.45 ± 0.71 points: with
/// noise it drains a node for every tenant's Xid and NIC flap, about 1,290 false quarantines a
/// run; before noise it was above).
#[test]
fn the_ranking_holds_over_seeds_with_its_intervals() {
    let scenario = Scenario::bundled("llama3-16k").expect("bundled");
    let report = simulate_seeds(&scenario, 1, 8, &Strategy::ALL, &mut |_| {});
    eprintln!("{}", report.to_table());
    let diff = |name: &str| {
        report.differences.iter().find(|d| d.baseline == name).unwrap_or_else(|| panic!("no {name}")).ettr
    };
    for name in ["kubernetes-default", "node-health-controller", "job-failure-policy", "nvsentinel-jobset"] {
        assert!(diff(name).above_zero(), "devheal − {name}: {:?}", diff(name));
    }
    let d = diff("progress-watchdog");
    assert!(d.high < 0.015 && d.low > -0.015, "devheal − progress-watchdog: {d:?}");
    let ettr =
        |name: &str| report.strategies.iter().find(|s| s.name == name).expect("ran").ettr_by_seed.clone();
    let paired = |a: &str, b: &str| {
        let d: Vec<f64> = ettr(a).iter().zip(ettr(b)).map(|(x, y)| x - y).collect();
        Interval::of(&d)
    };
    for (a, b) in [
        ("nvsentinel-jobset", "job-failure-policy"),
        ("progress-watchdog", "job-failure-policy"),
        ("job-failure-policy", "node-health-controller"),
        ("kubernetes-default", "node-health-controller"),
    ] {
        assert!(paired(a, b).above_zero(), "{a} − {b}: {:?}", paired(a, b));
    }
}

/// Trace replay: a hand-written trace (one fault every 12 hours, each on a gang node no earlier
/// fault touched, few enough hardware replacements for the spares) replays identically twice,
/// and for every strategy each record interrupts its gang exactly once, by the class it names.
#[test]
fn a_replayed_trace_interrupts_once_per_record_and_replays_identically() {
    use devheal_sim::replay::{ReplayOptions, read_trace};
    let scenario = Scenario::from_yaml(SMALL, "tests/data/small-cluster.yaml").expect("fixture parses");
    // gang-a is nodes 0–15, gang-b 16–23.
    let records = [
        (0, "GPU HBM3 Memory: Xid 48 double bit error"),
        (17, "Network Switch/Cable: link down"),
        (2, "software_bug_cuda"),
        (18, "GPU HBM3 Memory"),
        (4, "Parameter Plane Cable: Link Down"),
        (5, "GPU has fallen off the bus (Xid 79)"),
        (19, "Xid 31 illegal memory access"),
        (7, "HBM"),
        (20, "network switch"),
        (9, "Power Supply Failure"),
    ];
    let mut csv = String::from("# hand-written\nstart,node,cause\n");
    for (i, (node, cause)) in records.iter().enumerate() {
        csv.push_str(&format!("{},{node},\"{cause}\"\n", 7200 + i * 12 * 3600));
    }
    let (trace, summary) =
        read_trace(&csv, "hand.csv", &scenario, &ReplayOptions::default()).expect("the trace reads");
    assert_eq!(summary.replayed, records.len() as u64);
    assert!(summary.unknown_causes.is_empty());
    let run = || {
        let mut r = devheal_sim::simulate_trace(&scenario, 1, &trace, &Strategy::ALL, &mut |_| {});
        r.replay = Some(summary.clone());
        r
    };
    let report = run();
    assert_eq!(report.to_json(), run().to_json(), "deterministic");
    let faults: u64 = report.trace.faults_by_class.iter().map(|(_, n)| n).sum();
    assert_eq!(faults, records.len() as u64);
    for s in &report.strategies {
        assert_eq!(s.counts.training_interruptions, records.len() as u64, "{}: {:?}", s.name, s.counts);
        assert_eq!(s.interruptions_by_class, summary.replayed_by_class, "{}", s.name);
    }
    let json = report.to_json();
    assert!(json.contains("\"replay\"") && json.contains("\"replayed_by_class\""));
}

/// Sensitivity: sweeping the checkpoint interval on the Daly fixture (M = 6 h, δ = 5 min,
/// R = 10 min) moves ETTR as Daly's model says: up towards the optimum τ* = 56.7 min, down past
/// it; and devheal's checkpoint advice, from the interruptions it observed, lands near τ*.
#[test]
fn sweeping_the_checkpoint_interval_peaks_near_dalys_optimum() {
    use devheal_sim::sweep::{SweepSpec, run_sweeps};
    let mut scenario = Scenario::from_yaml(DALY, "tests/data/daly.yaml").expect("fixture parses");
    let m_min = 6.0 * 60.0;
    scenario.faults[0].rate_per_gpu_hour = 1.0 / (m_min / 60.0 * 8.0);
    scenario.duration_days = 3000.0 / 24.0;
    let tau = daly_optimal_interval(5.0, m_min);
    let factors = [0.125, 1.0 / 3.0, 1.0, 3.0, 8.0];
    let spec = SweepSpec {
        param: "training.checkpoint_interval_min".into(),
        values: factors.iter().map(|f| f * tau).collect(),
    };
    let trace = FaultTrace::generate(&scenario, 1);
    let report = run_sweeps(
        &scenario,
        1,
        &trace,
        &[Strategy::JobFailurePolicy, Strategy::Devheal],
        &[spec],
        &mut |_| {},
        &mut |_, _| {},
    )
    .expect("the sweep runs");
    let sweep = &report.sweeps[0];
    for name in ["job-failure-policy", "devheal"] {
        let ettr: Vec<f64> =
            sweep.points.iter().map(|p| p.ettr.iter().find(|(n, _)| n == name).expect("ran").1).collect();
        eprintln!("{name}: ETTR at τ* × {factors:?} = {ettr:?}");
        assert!(ettr[0] < ettr[1] && ettr[1] < ettr[2], "{name}: rises towards τ*: {ettr:?}");
        assert!(ettr[2] > ettr[3] && ettr[3] > ettr[4], "{name}: falls past τ*: {ettr:?}");
        for (f, e) in factors.iter().zip(&ettr) {
            let daly = expected_ettr(f * tau, 5.0, 10.0, m_min);
            assert!((e - daly).abs() < 0.03, "{name} at τ* × {f}: {e:.4} vs Daly {daly:.4}");
        }
    }
    let (lo, hi) = sweep.devheal_range().expect("devheal ran");
    assert!(hi.1 > lo.1 && (hi.0 - tau).abs() < 1e-9, "devheal's best value is τ*: {lo:?} {hi:?}");
    let advice = &report.baseline.checkpoint_advice[0];
    let m = advice.mean_time_to_interrupt_s.expect("interrupted") / 60.0;
    assert!((m / m_min - 1.0).abs() < 0.15, "observed M {m:.1} min vs {m_min}");
    let recommended = advice.daly_optimal_interval_s.expect("recommended") / 60.0;
    assert!((recommended / tau - 1.0).abs() < 0.1, "recommended {recommended:.1} min vs τ* {tau:.1}");
    let table = report.to_table();
    assert!(table.contains("sweep training.checkpoint_interval_min"), "{table}");
    assert!(table.contains("Daly's optimal interval"), "{table}");
}

/// Noise is what makes most strategies act on healthy hardware: with every noise source at rate
/// 0 (and no transient slow-downs) no strategy but node-health-controller makes a false restart,
/// repair or quarantine in the default scenario's first 12 days (seed 2); node-health-controller
/// already drains nodes on software faults' Xid lines (13 false repairs), and with the
/// scenario's noise rates it makes many more (237), and false restarts (45) where it made none.
#[test]
fn noise_turns_false_actions_from_zero_to_some_for_the_node_level_baseline() {
    let mut noisy = Scenario::bundled("llama3-16k").expect("bundled");
    noisy.duration_days = 12.0;
    let mut quiet = noisy.clone();
    quiet.noise = None;
    quiet.step_times.bursts_per_member_hour = 0.0;
    let seed = 2;
    let quiet_trace = FaultTrace::generate(&quiet, seed);
    let noisy_trace = FaultTrace::generate(&noisy, seed);
    for s in Strategy::ALL {
        let c = simulate_strategy(&quiet, s, &quiet_trace).counts;
        let falses = [c.false_restarts, c.false_repairs, c.false_quarantines, c.false_replacements];
        if s != Strategy::NodeHealthController {
            assert_eq!(falses, [0; 4], "{}: {c:?}", s.name());
        }
    }
    let quiet = simulate_strategy(&quiet, Strategy::NodeHealthController, &quiet_trace).counts;
    let noisy = simulate_strategy(&noisy, Strategy::NodeHealthController, &noisy_trace).counts;
    assert_eq!(quiet.false_restarts, 0, "{quiet:?}");
    assert!(noisy.false_restarts > 0, "{noisy:?}");
    assert!(noisy.false_repairs > 5 * quiet.false_repairs.max(1), "{quiet:?} {noisy:?}");
}

/// The straggler findings come from the detector, not from the trace: on a hand-made day with
/// four slow members of gang-a, a 3 % slow-down (under the detector's 6 % threshold) is never
/// reported, while the three detectable ones (12–20 %, an hour each, starting off the minute
/// boundaries) are each found once, with delays that differ (an oracle's fixed delay would not).
#[test]
fn straggler_findings_come_from_the_detector_not_the_trace() {
    let (mut scenario, mut trace) = hand_made(&[]);
    scenario.step_times.bursts_per_member_hour = 0.0;
    scenario.strategies.devheal.detect_stragglers = true;
    for (node, start_h, slowdown) in [(3u32, 1.0, 1.03), (5, 4.0, 1.20), (7, 7.0, 1.12), (9, 10.0, 1.15)] {
        trace.events.push(TraceEvent {
            at: Time::ZERO + secs(start_h * 3600.0 + 17.0 * f64::from(node)),
            kind: TraceKind::Straggler { node, duration: secs(3600.0), slowdown },
        });
    }
    let report = simulate_strategy(&scenario, Strategy::Devheal, &trace);
    let s = report.detectors.expect("devheal scores its detectors").straggler;
    assert_eq!((s.episodes, s.found), (3, 3), "{s:?}");
    assert_eq!((s.findings, s.true_findings), (3, 3), "the 3 % member is not reported: {s:?}");
    let (median, p95) = (s.delay_median_s.expect("delays"), s.delay_p95_s.expect("delays"));
    assert!(median >= 120.0 && p95 <= 600.0, "{s:?}");
    assert!(p95 > median, "delays vary with the window alignment: {s:?}");
}

/// The detectors' measured accuracy on the default scenario (seed 1) within the bounds
/// docs/simulator.md states: the straggler detector finds at least 90 % of the episodes it can
/// find, at a precision of at least 0.4 (transient bursts of over two minutes are found too,
/// and are false), a median delay of 2–5 minutes (3 slow one-minute windows of 4); the hang
/// detector's findings are at least 70 % true and it finds at least 40 % of the silent stalls
/// (the rest are cut short by the NCCL watchdog or a crash before its 90 s timeout).
#[test]
fn the_detectors_accuracy_on_the_default_scenario_is_within_its_bounds() {
    let scenario = Scenario::bundled("llama3-16k").expect("bundled");
    let trace = FaultTrace::generate(&scenario, 1);
    let d = simulate_strategy(&scenario, Strategy::Devheal, &trace).detectors.expect("scored");
    let (p, r) = (d.straggler.precision.expect("findings"), d.straggler.recall.expect("episodes"));
    assert!(r >= 0.9 && (0.4..1.0).contains(&p), "{:?}", d.straggler);
    let median = d.straggler.delay_median_s.expect("found");
    assert!((120.0..=300.0).contains(&median), "{:?}", d.straggler);
    let (p, r) = (d.hang.precision.expect("findings"), d.hang.recall.expect("stalls"));
    assert!(p >= 0.7 && r >= 0.4, "{:?}", d.hang);
}

/// NVSentinel gives Xid 74 `CONTACT_SUPPORT`: cordon, drain, and a person takes the node. When
/// the line was noise (an NVLink error that recovered) the person finds nothing to repair and
/// the node goes back into service. Six such lines on six gang members within five hours of a
/// cluster with four spare nodes: every node comes back and no gang ever waits for capacity.
/// Before the person returned healthy nodes, each one stayed cordoned for the rest of the run,
/// the spares ran out, and the 100k-GPU year fell to 25.7 % ETTR (held-out capacity).
#[test]
fn nvsentinel_gets_back_the_nodes_it_escalated_on_a_false_alarm() {
    use devheal_sim::noise::{NoiseKindSpec, NoiseScope, NoiseSpec};
    let (mut scenario, mut trace) = hand_made(&[]);
    scenario.noise = Some(NoiseSpec {
        kinds: vec![NoiseKindSpec {
            name: "nvlink_retry".into(),
            source: "test".into(),
            rate_per_gpu_hour: 0.0,
            scope: NoiseScope::Device,
            pool: devheal_sim::noise::NoisePool::Training,
            kernel_lines: vec![
                "NVRM: Xid (PCI:{pci}): 74, pid={pid}, name=python3, NVLink: fatal error detected on link 6"
                    .into(),
            ],
            recovery_lines: Vec::new(),
            recover_median_s: 0.0,
            recover_sigma: 0.0,
        }],
        lost_line_probability: 0.0,
        late_line_probability: 0.0,
        late_median_s: 1.0,
        late_sigma: 0.0,
        blind_episodes_per_node_hour: 0.0,
        blind_median_min: 1.0,
        blind_sigma: 0.0,
    });
    trace.events = (0..6u32)
        .map(|i| TraceEvent {
            at: Time::ZERO + secs(3600.0 + f64::from(i) * 2400.0),
            kind: TraceKind::Noise {
                kind: 0,
                node: i * 2,
                device: 3,
                pid: 4242,
                recovery: false,
                lines: Default::default(),
            },
        })
        .collect();
    let r = simulate_strategy(&scenario, Strategy::NvsentinelJobset, &trace);
    let c = &r.counts;
    assert_eq!(c.false_quarantines, 6, "each line cordons a healthy node: {c:?}");
    assert!(c.operator_interventions >= 6, "a person takes each node: {c:?}");
    assert_eq!(r.gpu_hours_lost.by_cause.capacity_held_out, 0.0, "{:?}", r.gpu_hours_lost);
    assert!(r.ettr > 0.85, "ETTR {}", r.ettr);
}

/// The reset path under devheal: an Xid 119 (GSP RPC timeout, `gpu_gsp`, which only a reboot
/// cures in this model) on a gang member's GPU. The engine quarantines the GPU, restarts the gang
/// away from it and asks for a reset; the agent resets it once the gang's pod has left (never
/// under a running process), the GPU is still faulty, the agent reports the reset failed, and the
/// engine asks for a reboot of the node: one reset, one reboot, no person needed.
#[test]
fn a_failed_reset_escalates_to_a_reboot_of_the_node() {
    let (scenario, trace) = hand_made(&[(2, FaultTarget::GangMember { gang: 0, member: 5 }, 1.0)]);
    assert_eq!(scenario.faults[2].name, "gpu_gsp");
    let c = simulate_strategy(&scenario, Strategy::Devheal, &trace).counts;
    assert_eq!((c.repairs_reset, c.resets_refused, c.repairs_reboot), (1, 0, 1), "{c:?}");
    assert_eq!(c.operator_interventions, 0, "{c:?}");
    assert_eq!(c.engine_actions_unmapped, 0, "{c:?}");
}
