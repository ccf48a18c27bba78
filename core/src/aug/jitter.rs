//! Colour jitter (torchvision `ColorJitter(brightness, contrast, saturation)` on PIL images,
//! which timm uses when RandAugment is off): the three enhancements in a random order with
//! factors drawn from `[max(0, 1 - s), 1 + s]`. Hue is not supported.

use rand_pcg::Pcg32;

use super::enhance::{enhance, Enhance};
use super::rng::{int_in, uniform_in};
use super::{AugError, ImageMut, ImageRef, JitterConfig, JitterStep};

/// Draws the order and factors (see [`super::decode`] step 4).
pub(crate) fn sample(rng: &mut Pcg32, cfg: &JitterConfig) -> JitterStep {
    let mut order = [0u8, 1, 2];
    for i in (1..3usize).rev() {
        let j = int_in(rng, 0, i as u32) as usize;
        order.swap(i, j);
    }
    let mut factors = [1.0f32; 3];
    for (k, s) in [cfg.brightness, cfg.contrast, cfg.saturation]
        .into_iter()
        .enumerate()
    {
        if s > 0.0 {
            let lo = 1.0 - f64::from(s);
            let lo = if lo < 0.0 { 0.0 } else { lo };
            factors[k] = uniform_in(rng, lo, 1.0 + f64::from(s)) as f32;
        }
    }
    JitterStep { order, factors }
}

/// Applies jitter kind `kind` (0 brightness, 1 contrast, 2 saturation) with `factor`.
pub(crate) fn apply_kind(
    kind: u8,
    factor: f32,
    src: ImageRef<'_>,
    dst: ImageMut<'_>,
) -> Result<(), AugError> {
    let e = match kind {
        0 => Enhance::Brightness,
        1 => Enhance::Contrast,
        2 => Enhance::Color,
        _ => return Err(AugError::Params("jitter.order")),
    };
    enhance(e, factor, src, dst);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::rng::{stream, DOMAIN_PARAMS};
    use super::*;

    #[test]
    fn order_is_a_permutation_and_factors_in_range() {
        let cfg = JitterConfig {
            brightness: 0.4,
            contrast: 0.0,
            saturation: 1.5,
        };
        let mut r = stream(3, DOMAIN_PARAMS);
        for _ in 0..200 {
            let s = sample(&mut r, &cfg);
            let mut o = s.order;
            o.sort_unstable();
            assert_eq!(o, [0, 1, 2]);
            assert!((0.6..=1.4).contains(&s.factors[0]));
            assert_eq!(s.factors[1], 1.0);
            assert!((0.0..=2.5).contains(&s.factors[2]));
        }
    }
}
