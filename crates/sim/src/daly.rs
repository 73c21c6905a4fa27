//! Young's and Daly's checkpoint models (fault-model.md §4), used to validate the simulator
//! analytically and to pick checkpoint intervals.

/// Daly's higher-order optimum (the controller's checkpoint advice uses the same function).
pub use devheal_core::checkpoint::daly_optimal_interval;

/// Young's first-order optimum `√(2δM)`.
pub fn young_optimal_interval(delta: f64, m: f64) -> f64 {
    (2.0 * delta * m).sqrt()
}

/// Expected wall time of one segment (τ compute + δ dump, retried until it succeeds, each failure
/// costing a restart R that can itself fail): `M·e^{R/M}·(e^{(τ+δ)/M} − 1)`.
pub fn expected_segment_time(tau: f64, delta: f64, restart: f64, m: f64) -> f64 {
    m * (restart / m).exp() * ((tau + delta) / m).exp_m1()
}

/// Daly's expected goodput (ETTR) `τ / E[segment]`.
pub fn expected_ettr(tau: f64, delta: f64, restart: f64, m: f64) -> f64 {
    tau / expected_segment_time(tau, delta, restart, m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reproduces_dalys_published_optima_and_goodputs() {
        // fault-model.md §4: R = 10 min, δ = 5 min; M = 24 h, 6 h, 15 min → τ = 117, 57, 9.1 min;
        // exact-expectation goodput 0.9126, 0.8194, 0.1997.
        let cases = [(24.0 * 60.0, 116.69, 0.9126), (6.0 * 60.0, 56.71, 0.8194), (15.0, 9.14, 0.1997)];
        for (m, tau_expected, ettr_expected) in cases {
            let tau = daly_optimal_interval(5.0, m);
            assert!((tau - tau_expected).abs() < 0.01, "M={m}: τ={tau}");
            let ettr = expected_ettr(tau, 5.0, 10.0, m);
            assert!((ettr - ettr_expected).abs() < 0.0005, "M={m}: ETTR={ettr}");
        }
        assert!((young_optimal_interval(5.0, 1440.0) - 120.0).abs() < 1e-9);
        assert_eq!(daly_optimal_interval(10.0, 4.0), 4.0);
    }
}
