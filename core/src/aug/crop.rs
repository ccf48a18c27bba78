//! RandomResizedCrop parameter sampling (timm `RandomResizedCropAndInterpolation.get_params`)
//! and the horizontal flip. The resampling itself is [`super::resize`].

use rand_pcg::Pcg32;

use super::rng::{int_in, round_half_even, uniform_in};
use super::{CropBox, CropConfig, ImageMut};

/// Draws the crop box for a `w x h` source; see [`super::decode`] step 1 for the draws.
/// Sides are at least 1 pixel (timm would produce an empty crop on tiny images).
pub(crate) fn sample_crop(rng: &mut Pcg32, cfg: &CropConfig, w: u32, h: u32) -> CropBox {
    let area = f64::from(w) * f64::from(h);
    let lr = [
        libm::log(f64::from(cfg.ratio[0])),
        libm::log(f64::from(cfg.ratio[1])),
    ];
    for _ in 0..10 {
        let target = uniform_in(rng, f64::from(cfg.scale[0]), f64::from(cfg.scale[1])) * area;
        let aspect = libm::exp(uniform_in(rng, lr[0], lr[1]));
        let tw = round_half_even(libm::sqrt(target * aspect));
        let th = round_half_even(libm::sqrt(target / aspect));
        if tw >= 1.0 && th >= 1.0 && tw <= f64::from(w) && th <= f64::from(h) {
            let (tw, th) = (tw as u32, th as u32);
            let y = int_in(rng, 0, h - th);
            let x = int_in(rng, 0, w - tw);
            return CropBox {
                x,
                y,
                width: tw,
                height: th,
            };
        }
    }
    // Centre fallback.
    let in_ratio = f64::from(w) / f64::from(h);
    let (rmin, rmax) = (f64::from(cfg.ratio[0]), f64::from(cfg.ratio[1]));
    let (tw, th) = if in_ratio < rmin {
        (f64::from(w), round_half_even(f64::from(w) / rmin))
    } else if in_ratio > rmax {
        (round_half_even(f64::from(h) * rmax), f64::from(h))
    } else {
        (f64::from(w), f64::from(h))
    };
    let tw = (tw as u32).clamp(1, w);
    let th = (th as u32).clamp(1, h);
    CropBox {
        x: (w - tw) / 2,
        y: (h - th) / 2,
        width: tw,
        height: th,
    }
}

/// Mirrors the image left-right in place.
pub(crate) fn hflip(img: ImageMut<'_>) {
    let ch = img.channels as usize;
    let w = img.width as usize;
    for row in img.data.chunks_exact_mut(w * ch) {
        // Reverse the bytes, then restore each pixel's channel order.
        row.reverse();
        if ch == 3 {
            for px in row.chunks_exact_mut(3) {
                px.swap(0, 2);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::rng::{stream, DOMAIN_PARAMS};
    use super::*;

    #[test]
    fn flip_mirrors_rows() {
        let mut d = [1u8, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
        hflip(ImageMut::new(2, 2, 3, &mut d).unwrap());
        assert_eq!(d, [4, 5, 6, 1, 2, 3, 10, 11, 12, 7, 8, 9]);
    }

    #[test]
    fn fallback_follows_timm() {
        // A 1000x10 strip: no 10-try crop fits its height often; the fallback is centred with
        // the maximum ratio.
        let cfg = CropConfig {
            scale: [1.0, 1.0],
            ratio: [0.75, 4.0 / 3.0],
        };
        let mut r = stream(1, DOMAIN_PARAMS);
        let b = sample_crop(&mut r, &cfg, 1000, 10);
        assert_eq!((b.width, b.height), (13, 10));
        assert_eq!(b.x, (1000 - 13) / 2);
    }
}
