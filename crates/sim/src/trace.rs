//! The fault trace: every fault, straggler episode and planned maintenance of one
//! `(scenario, seed)`, drawn once and replayed identically into every strategy.
//!
//! Faults strike physical devices, nodes or workload ranks; what a fault does depends on the
//! strategy's state when it lands (a fault on a node already under repair is absorbed).

use devheal_core::{Duration, Time};

use crate::noise::{LineDelivery, LineFate, NoisePool, NoiseScope, NoiseSummary};
use crate::rng::Xoshiro256StarStar;
use crate::scenario::{FaultScope, Scenario, secs};

/// Where a fault lands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultTarget {
    Device {
        node: u32,
        device: u8,
    },
    Node {
        node: u32,
    },
    /// One rank of a training gang (software faults follow the workload, not the hardware).
    GangMember {
        gang: u16,
        member: u32,
    },
    /// One replica of an inference service.
    Replica {
        service: u16,
        replica: u32,
    },
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum TraceKind {
    Fault {
        class: u16,
        target: FaultTarget,
        /// A fault that only happens because the node is a lemon: gone once the node's hardware
        /// has been replaced.
        lemon_excess: bool,
        /// The process id printed in the kernel lines.
        pid: u32,
        /// Which of its kernel lines reach the log readers, and when.
        lines: LineDelivery,
    },
    /// A harmless kernel event (noise kind `kind`): it prints lines and changes nothing; with
    /// `recovery`, the kind's recovery lines (a link back up).
    Noise {
        kind: u16,
        node: u32,
        device: u8,
        pid: u32,
        recovery: bool,
        lines: LineDelivery,
    },
    Straggler {
        node: u32,
        duration: Duration,
        slowdown: f64,
    },
    PlannedMaintenance {
        gang: u16,
    },
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TraceEvent {
    pub at: Time,
    pub kind: TraceKind,
}

/// The whole trace, in time order (ties keep generation order).
#[derive(Clone, Debug)]
pub struct FaultTrace {
    pub events: Vec<TraceEvent>,
    /// Which nodes are lemons.
    pub lemons: Vec<bool>,
    /// What the noise put into the trace.
    pub noise: NoiseSummary,
    /// The seed the trace was drawn from (0 for a replayed file): the step-time noise the
    /// detectors read is drawn from it too.
    pub seed: u64,
}

/// Poisson arrivals with the given total rate per hour over `[0, end)`.
pub(crate) fn poisson_times(
    rng: &mut Xoshiro256StarStar,
    rate_per_hour: f64,
    end: Time,
    mut f: impl FnMut(Time),
) {
    if rate_per_hour <= 0.0 {
        return;
    }
    let mean_gap_s = 3600.0 / rate_per_hour;
    let mut t = 0.0f64;
    let end_s = end.as_secs_f64();
    loop {
        t += rng.exponential(mean_gap_s);
        if t >= end_s {
            break;
        }
        f(Time((t * 1e9) as i64));
    }
}

impl FaultTrace {
    pub fn generate(scenario: &Scenario, seed: u64) -> FaultTrace {
        let end = Time::ZERO + scenario.duration();
        let nodes = scenario.total_nodes();
        let gpn = scenario.cluster.gpus_per_node;
        let mut lemon_rng = Xoshiro256StarStar::stream(seed, "lemons");
        let lemons: Vec<bool> =
            (0..nodes).map(|_| lemon_rng.bernoulli(scenario.cluster.lemon_node_fraction)).collect();
        let lemon_nodes: Vec<u32> = (0..nodes).filter(|&n| lemons[n as usize]).collect();
        let m = scenario.cluster.lemon_rate_multiplier;
        // Probability that a lemon-prone fault lands on a lemon node, keeping the fleet's mean rate.
        let lemon_weight = lemon_nodes.len() as f64 * m;
        let p_lemon = lemon_weight / (lemon_weight + (nodes as usize - lemon_nodes.len()) as f64);
        let mut events = Vec::new();
        let total_gpus = f64::from(nodes) * f64::from(gpn);

        for (ci, class) in scenario.faults.iter().enumerate() {
            let mut rng = Xoshiro256StarStar::stream(seed, &format!("fault:{}", class.name));
            match class.scope {
                FaultScope::Device | FaultScope::Node => {
                    let rate = class.rate_per_gpu_hour * total_gpus;
                    let mut arrivals = Vec::new();
                    poisson_times(&mut rng, rate, end, |t| arrivals.push(t));
                    let mut place = Xoshiro256StarStar::stream(seed, &format!("place:{}", class.name));
                    for at in arrivals {
                        let (node, lemon_excess) =
                            if class.lemon_prone && !lemon_nodes.is_empty() && place.bernoulli(p_lemon) {
                                let n = lemon_nodes[place.below(lemon_nodes.len() as u64) as usize];
                                (n, place.bernoulli((m - 1.0) / m))
                            } else {
                                // Uniform over non-lemon nodes when lemons are weighted separately.
                                let mut n = place.below(u64::from(nodes)) as u32;
                                if class.lemon_prone && !lemon_nodes.is_empty() {
                                    while lemons[n as usize] {
                                        n = place.below(u64::from(nodes)) as u32;
                                    }
                                }
                                (n, false)
                            };
                        let device = place.below(u64::from(gpn)) as u8;
                        let pid = 1000 + place.below(4_000_000) as u32;
                        let class_idx = ci as u16;
                        if class.scope == FaultScope::Device {
                            events.push(TraceEvent {
                                at,
                                kind: TraceKind::Fault {
                                    class: class_idx,
                                    target: FaultTarget::Device { node, device },
                                    lemon_excess,
                                    pid,
                                    lines: LineDelivery::default(),
                                },
                            });
                        } else if place.bernoulli(class.rack_burst_probability) {
                            let per_rack = scenario.cluster.nodes_per_rack;
                            let rack_start = node / per_rack * per_rack;
                            let rack_end = (rack_start + per_rack).min(nodes);
                            for (i, n) in (rack_start..rack_end).enumerate() {
                                events.push(TraceEvent {
                                    at: at + Duration::from_millis(i as i64),
                                    kind: TraceKind::Fault {
                                        class: class_idx,
                                        target: FaultTarget::Node { node: n },
                                        lemon_excess: false,
                                        pid,
                                        lines: LineDelivery::default(),
                                    },
                                });
                            }
                        } else {
                            events.push(TraceEvent {
                                at,
                                kind: TraceKind::Fault {
                                    class: class_idx,
                                    target: FaultTarget::Node { node },
                                    lemon_excess,
                                    pid,
                                    lines: LineDelivery::default(),
                                },
                            });
                        }
                    }
                }
                FaultScope::Workload => {
                    for (gi, gang) in scenario.training.iter().enumerate() {
                        let gpus = f64::from(gang.nodes) * f64::from(gpn);
                        let mut place =
                            Xoshiro256StarStar::stream(seed, &format!("rank:{}:{}", class.name, gang.name));
                        poisson_times(&mut rng, class.rate_per_gpu_hour * gpus, end, |at| {
                            let member = place.below(u64::from(gang.nodes)) as u32;
                            let pid = 1000 + place.below(4_000_000) as u32;
                            events.push(TraceEvent {
                                at,
                                kind: TraceKind::Fault {
                                    class: ci as u16,
                                    target: FaultTarget::GangMember { gang: gi as u16, member },
                                    lemon_excess: false,
                                    pid,
                                    lines: LineDelivery::default(),
                                },
                            });
                        });
                    }
                    for (si, svc) in scenario.inference.iter().enumerate() {
                        let gpus = f64::from(svc.replicas) * f64::from(svc.gpus_per_replica);
                        let mut place =
                            Xoshiro256StarStar::stream(seed, &format!("rank:{}:{}", class.name, svc.name));
                        poisson_times(&mut rng, class.rate_per_gpu_hour * gpus, end, |at| {
                            let replica = place.below(u64::from(svc.replicas)) as u32;
                            let pid = 1000 + place.below(4_000_000) as u32;
                            events.push(TraceEvent {
                                at,
                                kind: TraceKind::Fault {
                                    class: ci as u16,
                                    target: FaultTarget::Replica { service: si as u16, replica },
                                    lemon_excess: false,
                                    pid,
                                    lines: LineDelivery::default(),
                                },
                            });
                        });
                    }
                }
            }
        }

        if let Some(s) = &scenario.stragglers {
            let mut rng = Xoshiro256StarStar::stream(seed, "stragglers");
            let mut place = Xoshiro256StarStar::stream(seed, "stragglers:place");
            // Its own stream, so the episodes' places and lengths do not depend on the spread.
            let mut size = Xoshiro256StarStar::stream(seed, "stragglers:slowdown");
            poisson_times(&mut rng, s.episodes_per_node_hour * f64::from(nodes), end, |at| {
                let node = place.below(u64::from(nodes)) as u32;
                let minutes = place.lognormal(s.median_duration_min, s.duration_sigma);
                let excess = (s.slowdown - 1.0) * (s.slowdown_sigma * size.standard_normal()).exp();
                let slowdown = 1.0 + excess.min(9.0);
                events.push(TraceEvent {
                    at,
                    kind: TraceKind::Straggler { node, duration: secs(minutes * 60.0), slowdown },
                });
            });
        }

        if let Some(p) = &scenario.planned_maintenance {
            for (gi, gang) in scenario.training.iter().enumerate() {
                let mut rng = Xoshiro256StarStar::stream(seed, &format!("planned:{}", gang.name));
                let gpus = f64::from(gang.nodes) * f64::from(gpn);
                poisson_times(&mut rng, p.rate_per_gpu_hour * gpus, end, |at| {
                    events.push(TraceEvent { at, kind: TraceKind::PlannedMaintenance { gang: gi as u16 } });
                });
            }
        }

        let mut noise = NoiseSummary::default();
        if let Some(spec) = &scenario.noise {
            let training_nodes = scenario.training_nodes();
            for (ki, kind) in spec.kinds.iter().enumerate() {
                let (first, count) = match kind.pool {
                    NoisePool::All => (0, nodes),
                    NoisePool::Training => (0, training_nodes),
                    NoisePool::Inference => (training_nodes, nodes - training_nodes),
                };
                let mut n = 0u64;
                if count > 0 {
                    let mut rng = Xoshiro256StarStar::stream(seed, &format!("noise:{}", kind.name));
                    let mut place = Xoshiro256StarStar::stream(seed, &format!("noise:place:{}", kind.name));
                    let gpus = f64::from(count) * f64::from(gpn);
                    poisson_times(&mut rng, kind.rate_per_gpu_hour * gpus, end, |at| {
                        let node = first + place.below(u64::from(count)) as u32;
                        let device = match kind.scope {
                            NoiseScope::Device => place.below(u64::from(gpn)) as u8,
                            NoiseScope::Node => 0,
                        };
                        let pid = 1000 + place.below(4_000_000) as u32;
                        n += 1;
                        let mut push = |at: Time, recovery: bool| {
                            let lines = LineDelivery::default();
                            let kind =
                                TraceKind::Noise { kind: ki as u16, node, device, pid, recovery, lines };
                            events.push(TraceEvent { at, kind });
                        };
                        push(at, false);
                        if !kind.recovery_lines.is_empty() {
                            let after = place.lognormal(kind.recover_median_s, kind.recover_sigma);
                            push(at + secs(after).max(Duration::from_millis(1)), true);
                        }
                    });
                }
                noise.events_by_kind.push((kind.name.clone(), n));
            }
        }

        // Stable sort: equal times keep generation order, which is itself deterministic.
        events.sort_by_key(|e| e.at);
        // A recovery drawn past the end is not part of the run.
        events.retain(|e| e.at < end || !matches!(e.kind, TraceKind::Noise { .. }));

        // Each kernel line's fate (lost, late, on time; all lost while the node's source is
        // blind), drawn in trace order from one stream.
        let (mut fate, blind) = LineFate::new(scenario.noise.as_ref(), seed, nodes, end);
        noise.blind_episodes = blind;
        for e in &mut events {
            match &mut e.kind {
                TraceKind::Fault { class, target, lines, .. } => {
                    let count = scenario.faults[*class as usize].kernel_lines.len();
                    // Where a rank's software fault lands is known only when it lands; its
                    // lines' fate is drawn for the rank's first node (a blind episode elsewhere
                    // then misses it: a small approximation).
                    let node = match *target {
                        FaultTarget::Device { node, .. } | FaultTarget::Node { node } => node,
                        FaultTarget::GangMember { gang, member } => {
                            scenario.training[..gang as usize].iter().map(|t| t.nodes).sum::<u32>() + member
                        }
                        FaultTarget::Replica { .. } => u32::MAX,
                    };
                    *lines = fate.draw(node, e.at, count, &mut noise);
                }
                TraceKind::Noise { kind, node, recovery, lines, .. } => {
                    let Some(spec) = &scenario.noise else { continue };
                    let k = &spec.kinds[*kind as usize];
                    let count = if *recovery { k.recovery_lines.len() } else { k.kernel_lines.len() };
                    *lines = fate.draw(*node, e.at, count, &mut noise);
                }
                _ => {}
            }
        }
        FaultTrace { events, lemons, noise, seed }
    }

    /// Number of fault events of each class.
    pub fn fault_counts(&self, classes: usize) -> Vec<u64> {
        let mut counts = vec![0u64; classes];
        for e in &self.events {
            if let TraceKind::Fault { class, .. } = e.kind {
                counts[class as usize] += 1;
            }
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_trace_and_another_seed_does_not() {
        let s = Scenario::bundled("llama3-16k").unwrap();
        let a = FaultTrace::generate(&s, 1);
        let b = FaultTrace::generate(&s, 1);
        let c = FaultTrace::generate(&s, 2);
        assert_eq!(a.events, b.events);
        assert_eq!(a.lemons, b.lemons);
        assert_ne!(a.events, c.events);
        assert!(a.events.windows(2).all(|w| w[0].at <= w[1].at));
    }

    #[test]
    fn fleet_wide_fault_count_matches_the_scenario_rates() {
        // Expected count = Σ rate × GPUs × hours; over 20 seeds the mean is within 3 %.
        let s = Scenario::bundled("llama3-16k").unwrap();
        let hours = s.duration_days * 24.0;
        let all_gpus = f64::from(s.total_nodes() * s.cluster.gpus_per_node);
        let busy_gpus = 16384.0 + 64.0 * 8.0 + 256.0;
        let expected: f64 = s
            .faults
            .iter()
            .map(|f| {
                let gpus = if f.scope == FaultScope::Workload { busy_gpus } else { all_gpus };
                let burst = if f.rack_burst_probability > 0.0 {
                    1.0 + f.rack_burst_probability * (f64::from(s.cluster.nodes_per_rack) - 1.0)
                } else {
                    1.0
                };
                f.rate_per_gpu_hour * gpus * hours * burst
            })
            .sum();
        let seeds = 20;
        let total: u64 = (0..seeds)
            .map(|seed| FaultTrace::generate(&s, seed).fault_counts(s.faults.len()).iter().sum::<u64>())
            .sum();
        let mean = total as f64 / seeds as f64;
        assert!((mean / expected - 1.0).abs() < 0.03, "mean {mean} expected {expected}");
    }
}
