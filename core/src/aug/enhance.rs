//! PIL `ImageEnhance` (Color, Contrast, Brightness, Sharpness): each op blends the image with a
//! "degenerate" version, `out = d + factor * (img - d)` in f32 as libImaging/Blend.c does
//! (truncated to u8, clipped when extrapolating). The degenerate images: luma (Color), the
//! rounded mean luma (Contrast), black (Brightness), PIL's 3x3 SMOOTH filter with the border
//! kept (Sharpness).

use super::image::luma;
use super::{ImageMut, ImageRef};

/// The four enhancements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Enhance {
    Color,
    Contrast,
    Brightness,
    Sharpness,
}

#[inline(always)]
fn blend(d: u8, s: u8, alpha: f32) -> u8 {
    let v = f32::from(d) + alpha * (f32::from(s) - f32::from(d));
    if v <= 0.0 {
        0
    } else if v >= 255.0 {
        255
    } else {
        v as u8
    }
}

/// Applies enhancement `kind` with `factor` from `src` into `dst` (same shape).
pub(crate) fn enhance(kind: Enhance, factor: f32, src: ImageRef<'_>, dst: ImageMut<'_>) {
    let ch = src.channels as usize;
    match kind {
        Enhance::Brightness => {
            for (o, &s) in dst.data.iter_mut().zip(src.data) {
                *o = blend(0, s, factor);
            }
        }
        Enhance::Color => {
            if ch == 1 {
                dst.data.copy_from_slice(src.data);
                return;
            }
            for (o, s) in dst.data.chunks_exact_mut(3).zip(src.data.chunks_exact(3)) {
                let l = luma(s[0], s[1], s[2]);
                o[0] = blend(l, s[0], factor);
                o[1] = blend(l, s[1], factor);
                o[2] = blend(l, s[2], factor);
            }
        }
        Enhance::Contrast => {
            let mut sum: u64 = 0;
            if ch == 1 {
                for &v in src.data {
                    sum += u64::from(v);
                }
            } else {
                for s in src.data.chunks_exact(3) {
                    sum += u64::from(luma(s[0], s[1], s[2]));
                }
            }
            let n = u64::from(src.width) * u64::from(src.height);
            let mean = (sum as f64 / n as f64 + 0.5) as u8;
            for (o, &s) in dst.data.iter_mut().zip(src.data) {
                *o = blend(mean, s, factor);
            }
        }
        Enhance::Sharpness => sharpness(factor, src, dst),
    }
}

fn sharpness(factor: f32, src: ImageRef<'_>, dst: ImageMut<'_>) {
    let ch = src.channels as usize;
    let (w, h) = (src.width as usize, src.height as usize);
    // Border pixels of the SMOOTH image are the source pixels: blending leaves them unchanged.
    dst.data.copy_from_slice(src.data);
    if w < 3 || h < 3 {
        return;
    }
    let k_side = 1.0f32 / 13.0f32;
    let k_mid = 5.0f32 / 13.0f32;
    let stride = w * ch;
    for y in 1..h - 1 {
        let r_up = &src.data[(y - 1) * stride..y * stride];
        let r_mid = &src.data[y * stride..(y + 1) * stride];
        let r_dn = &src.data[(y + 1) * stride..(y + 2) * stride];
        let out = &mut dst.data[y * stride..(y + 1) * stride];
        for i in ch..stride - ch {
            // PIL's order: offset, then the row below, this row, the row above; each row
            // `(left * k0 + centre * k1) + right * k2`.
            let k3 = |r: &[u8], km: f32| {
                f32::from(r[i - ch]) * k_side + f32::from(r[i]) * km + f32::from(r[i + ch]) * k_side
            };
            let mut ss = 0.5f32;
            ss += k3(r_dn, k_side);
            ss += k3(r_mid, k_mid);
            ss += k3(r_up, k_side);
            let ss = if ss < 0.0 { 0.0 } else { ss };
            let ss = if ss > 255.0 { 255.0 } else { ss };
            out[i] = blend(ss as u8, r_mid[i], factor);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn factor_one_is_identity_and_zero_is_degenerate() {
        let src: [u8; 4 * 4 * 3] = core::array::from_fn(|i| (i * 29 % 256) as u8);
        for kind in [
            Enhance::Color,
            Enhance::Contrast,
            Enhance::Brightness,
            Enhance::Sharpness,
        ] {
            let mut out = [0u8; 48];
            enhance(
                kind,
                1.0,
                ImageRef::new(4, 4, 3, &src).unwrap(),
                ImageMut::new(4, 4, 3, &mut out).unwrap(),
            );
            assert_eq!(out, src, "{kind:?}");
        }
        let mut out = [1u8; 48];
        enhance(
            Enhance::Brightness,
            0.0,
            ImageRef::new(4, 4, 3, &src).unwrap(),
            ImageMut::new(4, 4, 3, &mut out).unwrap(),
        );
        assert!(out.iter().all(|&v| v == 0));
    }

    #[test]
    fn extrapolation_clips() {
        assert_eq!(blend(100, 250, 1.9), 255);
        assert_eq!(blend(200, 10, 1.9), 0);
        assert_eq!(blend(100, 150, 0.5), 125);
    }
}
