//! Checkpoint intervals: Daly's optimum for a checkpoint write time and a mean time to
//! interrupt (fault-model.md §4). The simulator validates it against its own runs; the
//! controller recommends it per gang from the interruptions it sees.

/// Daly's higher-order optimum compute time between checkpoints, for dump time `delta` and mean
/// time to interrupt `m` (same unit): `√(2δM)·[1 + ⅓√(δ/2M) + ⅑(δ/2M)] − δ` for `δ < 2M`, else `M`.
pub fn daly_optimal_interval(delta: f64, m: f64) -> f64 {
    if delta >= 2.0 * m {
        return m;
    }
    let x = delta / (2.0 * m);
    (2.0 * delta * m).sqrt() * (1.0 + x.sqrt() / 3.0 + x / 9.0) - delta
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Daly's worked case: δ = 5 min, M = 24 h gives about 116.7 min (Young's √(2δM) = 120 min,
    /// less δ, plus the higher-order terms); a dump longer than twice M checkpoints every M.
    #[test]
    fn daly_matches_the_worked_values() {
        let t = daly_optimal_interval(5.0, 24.0 * 60.0);
        assert!((t - 116.69).abs() < 0.01, "{t}");
        assert_eq!(daly_optimal_interval(100.0, 40.0), 40.0);
    }
}
