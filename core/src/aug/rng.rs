//! The random streams every augmentation decision draws from, and the seed hashes.
//!
//! All draws are built from `Pcg32::next_u32` with scalar `f64` arithmetic and `libm`, so a
//! given seed yields the same numbers on x86_64, aarch64 and Cortex-M.

use rand_core::RngCore;
use rand_pcg::Pcg32;

/// A bijective 64-bit hash: the next [`splitmix64`](crate::params::splitmix64) output from
/// state `z`.
pub(crate) fn mix64(z: u64) -> u64 {
    let mut state = z;
    crate::params::splitmix64(&mut state)
}

/// Domain tags keep the streams derived from one seed independent of each other.
pub(crate) const DOMAIN_PARAMS: u64 = 0x7469_6e79_7669_7401; // "tinyvit\x01"
pub(crate) const DOMAIN_NOISE: u64 = 0x7469_6e79_7669_7402;
pub(crate) const DOMAIN_MIX: u64 = 0x7469_6e79_7669_7403;

/// The generator for one domain of one seed: `Pcg32::new(mix64(seed ^ domain), domain)`.
pub(crate) fn stream(seed: u32, domain: u64) -> Pcg32 {
    Pcg32::new(mix64(u64::from(seed) ^ domain), domain)
}

/// A uniform draw in `[0, 1)` with 32 bits of resolution: `next_u32 / 2^32`.
pub(crate) fn uniform(rng: &mut Pcg32) -> f64 {
    f64::from(rng.next_u32()) * (1.0 / 4_294_967_296.0)
}

/// A uniform draw in `[lo, hi)`: `lo + (hi - lo) * uniform`.
pub(crate) fn uniform_in(rng: &mut Pcg32, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * uniform(rng)
}

/// A uniform integer in `lo..=hi` (`lo <= hi`) by the multiply-shift map of one `u32`
/// (bias below 2^-32 * range, documented, no rejection loop).
pub(crate) fn int_in(rng: &mut Pcg32, lo: u32, hi: u32) -> u32 {
    let span = u64::from(hi - lo) + 1;
    lo + ((u64::from(rng.next_u32()) * span) >> 32) as u32
}

/// A standard normal draw by Box-Muller from two `u32` draws (cosine branch only).
pub(crate) fn normal(rng: &mut Pcg32) -> f64 {
    let u1 = (f64::from(rng.next_u32()) + 1.0) * (1.0 / 4_294_967_296.0); // (0, 1]
    let u2 = uniform(rng);
    libm::sqrt(-2.0 * libm::log(u1)) * libm::cos(2.0 * core::f64::consts::PI * u2)
}

/// Gamma(shape, 1) by Marsaglia and Tsang (2000); shapes below 1 use the
/// `Gamma(a + 1) * U^(1/a)` boost. The rejection loop is capped at 64 rounds (then the mode is
/// returned) so every seed terminates; the cap is hit with probability below 1e-60.
pub(crate) fn gamma(rng: &mut Pcg32, shape: f64) -> f64 {
    if shape < 1.0 {
        let g = gamma(rng, shape + 1.0);
        let u = (f64::from(rng.next_u32()) + 1.0) * (1.0 / 4_294_967_296.0);
        return g * libm::pow(u, 1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / libm::sqrt(9.0 * d);
    for _ in 0..64 {
        let z = normal(rng);
        let t = 1.0 + c * z;
        let v = t * t * t;
        let u = (f64::from(rng.next_u32()) + 1.0) * (1.0 / 4_294_967_296.0);
        if v > 0.0 && libm::log(u) < 0.5 * z * z + d - d * v + d * libm::log(v) {
            return d * v;
        }
    }
    d
}

/// Beta(a, b) as `X / (X + Y)` with `X ~ Gamma(a)` drawn first, then `Y ~ Gamma(b)`.
pub(crate) fn beta(rng: &mut Pcg32, a: f64, b: f64) -> f64 {
    let x = gamma(rng, a);
    let y = gamma(rng, b);
    if x + y > 0.0 {
        x / (x + y)
    } else {
        0.5
    }
}

/// Python's `round()` on a float: nearest integer, ties to even.
pub(crate) fn round_half_even(x: f64) -> f64 {
    libm::rint(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int_in_covers_bounds_only() {
        let mut rng = stream(7, DOMAIN_PARAMS);
        let mut seen = [false; 4];
        for _ in 0..1000 {
            let v = int_in(&mut rng, 3, 6);
            assert!((3..=6).contains(&v));
            seen[(v - 3) as usize] = true;
        }
        assert_eq!(seen, [true; 4]);
        assert_eq!(int_in(&mut rng, 5, 5), 5);
    }

    #[test]
    fn normal_and_beta_have_expected_moments() {
        let mut rng = stream(11, DOMAIN_MIX);
        let n = 20_000;
        let (mut s, mut s2) = (0.0, 0.0);
        for _ in 0..n {
            let z = normal(&mut rng);
            s += z;
            s2 += z * z;
        }
        let mean = s / n as f64;
        let var = s2 / n as f64 - mean * mean;
        assert!(mean.abs() < 0.03, "mean {mean}");
        assert!((var - 1.0).abs() < 0.05, "var {var}");
        // Beta(0.8, 0.8): mean 0.5, variance ab/((a+b)^2 (a+b+1)) = 0.0962.
        let (mut s, mut s2) = (0.0, 0.0);
        for _ in 0..n {
            let b = beta(&mut rng, 0.8, 0.8);
            assert!((0.0..=1.0).contains(&b));
            s += b;
            s2 += b * b;
        }
        let mean = s / n as f64;
        let var = s2 / n as f64 - mean * mean;
        assert!((mean - 0.5).abs() < 0.01, "beta mean {mean}");
        assert!((var - 0.0962).abs() < 0.01, "beta var {var}");
    }

    /// The seed hash keeps its values (every stored seed and golden vector depends on them).
    #[test]
    fn mix64_is_pinned() {
        assert_eq!(mix64(0), 0xE220_A839_7B1D_CDAF);
        assert_eq!(mix64(0x9E37_79B9_7F4A_7C15), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn round_half_even_matches_python() {
        assert_eq!(round_half_even(0.5), 0.0);
        assert_eq!(round_half_even(1.5), 2.0);
        assert_eq!(round_half_even(2.5), 2.0);
        assert_eq!(round_half_even(2.6), 3.0);
    }
}
