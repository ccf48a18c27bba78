//! Random erasing (timm `RandomErasing(mode='pixel', max_count=1)`), on the u8 view.
//!
//! timm erases the normalised tensor with `N(0, 1)` noise. Here each erased value is the u8
//! level `v` whose interval contains `255 * (mean_c + std_c * z)`, `z ~ N(0, 1)`, clamped to
//! 0..255: after normalisation that is timm's noise quantised to grey levels and clipped to the
//! displayable range. `v` is drawn exactly by inverse CDF: per channel a table of 255
//! thresholds `T[k] = floor(2^32 * Phi(((k + 0.5) / 255 - mean) / std))` (libm `erfc`), and
//! `v` = the number of thresholds `<= r` for one `r = next_u32` of the noise stream
//! (`Pcg32::new(mix64(seed ^ 0x7469_6e79_7669_7402), 0x7469_6e79_7669_7402)`), drawn in
//! row-major order, channels innermost. Grey images use `mean[0]`, `std[0]`.

use rand_core::RngCore;
use rand_pcg::Pcg32;

use super::rng::{int_in, round_half_even, stream, uniform, uniform_in, DOMAIN_NOISE};
use super::{CropBox, EraseConfig, ImageMut};

/// Draws the erase decision and box for a `size x size` view (see [`super::decode`] step 5).
pub(crate) fn sample_box(rng: &mut Pcg32, cfg: &EraseConfig, size: u32) -> Option<CropBox> {
    if uniform(rng) >= f64::from(cfg.prob) {
        return None;
    }
    let area = f64::from(size) * f64::from(size);
    let la = [
        libm::log(f64::from(cfg.aspect[0])),
        libm::log(f64::from(cfg.aspect[1])),
    ];
    for _ in 0..10 {
        let target = uniform_in(rng, f64::from(cfg.area[0]), f64::from(cfg.area[1])) * area;
        let aspect = libm::exp(uniform_in(rng, la[0], la[1]));
        let h = round_half_even(libm::sqrt(target * aspect));
        let w = round_half_even(libm::sqrt(target / aspect));
        if w >= 1.0 && h >= 1.0 && w < f64::from(size) && h < f64::from(size) {
            let (w, h) = (w as u32, h as u32);
            let y = int_in(rng, 0, size - h);
            let x = int_in(rng, 0, size - w);
            return Some(CropBox {
                x,
                y,
                width: w,
                height: h,
            });
        }
    }
    None
}

fn thresholds(mean: f32, std: f32) -> [u32; 255] {
    core::array::from_fn(|k| {
        let t = ((k as f64 + 0.5) / 255.0 - f64::from(mean)) / f64::from(std);
        let phi = 0.5 * libm::erfc(-t / core::f64::consts::SQRT_2);
        let v = phi * 4_294_967_296.0;
        if v >= 4_294_967_295.0 {
            u32::MAX
        } else if v <= 0.0 {
            0
        } else {
            v as u32
        }
    })
}

/// Fills box `b` of `img` with noise drawn from `seed`'s noise stream.
pub(crate) fn erase(img: ImageMut<'_>, b: CropBox, seed: u32, mean: [f32; 3], std: [f32; 3]) {
    let ch = img.channels as usize;
    let t: [[u32; 255]; 3] = core::array::from_fn(|c| thresholds(mean[c], std[c]));
    let mut rng = stream(seed, DOMAIN_NOISE);
    let stride = img.width as usize * ch;
    for y in b.y as usize..(b.y + b.height) as usize {
        for x in b.x as usize..(b.x + b.width) as usize {
            for c in 0..ch {
                let r = rng.next_u32();
                img.data[y * stride + x * ch + c] = t[c].partition_point(|&th| th <= r) as u8;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::rng::DOMAIN_PARAMS;
    use super::*;

    #[test]
    fn noise_has_the_configured_distribution() {
        let mut img = [0u8; 64 * 64 * 3];
        let mean = [0.485, 0.456, 0.406];
        let std = [0.229, 0.224, 0.225];
        let b = CropBox {
            x: 0,
            y: 0,
            width: 64,
            height: 64,
        };
        erase(ImageMut::new(64, 64, 3, &mut img).unwrap(), b, 9, mean, std);
        for c in 0..3 {
            let vals = img.iter().skip(c).step_by(3).map(|&v| f64::from(v) / 255.0);
            let n = 4096.0;
            let (s, s2) = vals.fold((0.0, 0.0), |(s, s2), v| (s + v, s2 + v * v));
            let m = s / n;
            let sd = libm::sqrt(s2 / n - m * m);
            assert!((m - f64::from(mean[c])).abs() < 0.02, "mean {m}");
            // Clipping at 0 and 1 shrinks the spread a little.
            assert!((sd - f64::from(std[c])).abs() < 0.03, "std {sd}");
        }
    }

    #[test]
    fn boxes_fit() {
        let cfg = EraseConfig {
            prob: 1.0,
            area: [0.02, 1.0 / 3.0],
            aspect: [0.3, 1.0 / 0.3],
        };
        let mut r = stream(5, DOMAIN_PARAMS);
        for size in [1u32, 2, 5, 224] {
            for _ in 0..100 {
                if let Some(b) = sample_box(&mut r, &cfg, size) {
                    assert!(b.x + b.width <= size && b.y + b.height <= size);
                    assert!(b.width >= 1 && b.height >= 1);
                }
            }
        }
    }
}
