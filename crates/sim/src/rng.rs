//! The simulator's pseudo-random numbers: xoshiro256** seeded through SplitMix64, with the few
//! distributions the fault model needs (uniform, exponential, log-normal, Bernoulli).
//!
//! The algorithm is named and implemented here so that a `(scenario, seed)` pair gives the same
//! stream on every platform and every version of this crate's dependencies (`rand`'s `StdRng`
//! makes no such promise).

/// SplitMix64 (Steele, Lea and Flood 2014) expands one 64-bit seed into well-mixed words; the
/// degradation trace generator uses the same one.
pub use devheal_detect::degradation::trace::SplitMix64;

/// xoshiro256** 1.0 (Blackman and Vigna 2018).
#[derive(Clone, Debug)]
pub struct Xoshiro256StarStar {
    s: [u64; 4],
}

impl Xoshiro256StarStar {
    /// Seed the four words from SplitMix64, as the algorithm's authors recommend.
    pub fn seed_from_u64(seed: u64) -> Self {
        let mut sm = SplitMix64::new(seed);
        let s = [sm.next_u64(), sm.next_u64(), sm.next_u64(), sm.next_u64()];
        Xoshiro256StarStar { s }
    }

    /// An independent stream for a named purpose: the seed mixed with a stream label, so that
    /// adding draws to one stream never shifts another.
    pub fn stream(seed: u64, label: &str) -> Self {
        let mut h: u64 = 0xCBF2_9CE4_8422_2325; // FNV-1a over the label
        for b in label.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01B3);
        }
        Self::seed_from_u64(seed ^ SplitMix64::new(h).next_u64())
    }

    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1), 53 bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in (0, 1]: safe to take the logarithm of.
    fn uniform_open_zero(&mut self) -> f64 {
        1.0 - self.uniform()
    }

    /// Uniform integer in [0, n); `n` must be positive. Lemire's multiply-shift (bias below 2^-32
    /// for the sizes used here, and deterministic).
    pub fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0);
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    pub fn bernoulli(&mut self, p: f64) -> bool {
        self.uniform() < p
    }

    /// Exponential with the given mean (inverse transform).
    pub fn exponential(&mut self, mean: f64) -> f64 {
        -mean * self.uniform_open_zero().ln()
    }

    /// Standard normal (Box–Muller, one value per call).
    pub fn standard_normal(&mut self) -> f64 {
        let u1 = self.uniform_open_zero();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Log-normal with the given median and log-space standard deviation.
    pub fn lognormal(&mut self, median: f64, sigma: f64) -> f64 {
        median * (sigma * self.standard_normal()).exp()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_matches_the_reference_output() {
        // Reference values of SplitMix64 seeded with 1234567 (from the published C code).
        let mut sm = SplitMix64::new(1234567);
        assert_eq!(sm.next_u64(), 6457827717110365317);
        assert_eq!(sm.next_u64(), 3203168211198807973);
        assert_eq!(sm.next_u64(), 9817491932198370423);
    }

    #[test]
    fn xoshiro_matches_the_reference_output_for_a_known_state() {
        // State {1, 2, 3, 4}: the first outputs of the reference C implementation.
        let mut x = Xoshiro256StarStar { s: [1, 2, 3, 4] };
        assert_eq!(x.next_u64(), 11520);
        assert_eq!(x.next_u64(), 0);
        assert_eq!(x.next_u64(), 1509978240);
        assert_eq!(x.next_u64(), 1215971899390074240);
    }

    #[test]
    fn streams_with_different_labels_differ_and_repeat() {
        let a: Vec<u64> = (0..4)
            .map({
                let mut r = Xoshiro256StarStar::stream(7, "faults");
                move |_| r.next_u64()
            })
            .collect();
        let b: Vec<u64> = (0..4)
            .map({
                let mut r = Xoshiro256StarStar::stream(7, "faults");
                move |_| r.next_u64()
            })
            .collect();
        let mut other = Xoshiro256StarStar::stream(7, "stragglers");
        assert_eq!(a, b);
        assert_ne!(a[0], other.next_u64());
    }

    #[test]
    fn exponential_and_lognormal_have_the_requested_centre() {
        let mut r = Xoshiro256StarStar::seed_from_u64(99);
        let n = 200_000;
        let mean = (0..n).map(|_| r.exponential(3.0)).sum::<f64>() / n as f64;
        assert!((mean - 3.0).abs() < 0.03, "exponential mean {mean}");
        let mut draws: Vec<f64> = (0..n).map(|_| r.lognormal(10.0, 0.8)).collect();
        draws.sort_by(f64::total_cmp);
        let median = draws[n / 2];
        assert!((median - 10.0).abs() < 0.15, "lognormal median {median}");
        let u = (0..n).map(|_| r.below(10)).filter(|&v| v == 3).count() as f64 / n as f64;
        assert!((u - 0.1).abs() < 0.005, "below(10) frequency {u}");
    }
}
