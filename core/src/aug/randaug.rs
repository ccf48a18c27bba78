//! RandAugment's 15 increasing-strength ops (timm `_RAND_INCREASING_TRANSFORMS`), their
//! magnitude -> argument maps (timm `LEVEL_TO_ARG`, `_LEVEL_DENOM = 10`) and the point ops
//! (PIL `ImageOps`): AutoContrast, Equalize, Invert, Posterize, Solarize, SolarizeAdd, all
//! integer and bit-exact with PIL. Enhance ops live in `enhance.rs`, geometric ones in
//! `affine.rs`.

use rand_pcg::Pcg32;
use serde::{Deserialize, Serialize};

use super::affine::{affine, rotate_matrix};
use super::enhance::{enhance, Enhance};
use super::image::luma;
use super::rng::{int_in, normal, uniform};
use super::{AugError, ImageMut, ImageRef, Interpolation, OpStep, RandAugConfig};

/// The RandAugment ops, in timm's order (the op draw indexes [`Op::ALL`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    AutoContrast,
    Equalize,
    Invert,
    Rotate,
    PosterizeIncreasing,
    SolarizeIncreasing,
    SolarizeAdd,
    ColorIncreasing,
    ContrastIncreasing,
    BrightnessIncreasing,
    SharpnessIncreasing,
    ShearX,
    ShearY,
    TranslateXRel,
    TranslateYRel,
}

impl Op {
    /// Every op, in the order the op draw indexes.
    pub const ALL: [Op; 15] = [
        Op::AutoContrast,
        Op::Equalize,
        Op::Invert,
        Op::Rotate,
        Op::PosterizeIncreasing,
        Op::SolarizeIncreasing,
        Op::SolarizeAdd,
        Op::ColorIncreasing,
        Op::ContrastIncreasing,
        Op::BrightnessIncreasing,
        Op::SharpnessIncreasing,
        Op::ShearX,
        Op::ShearY,
        Op::TranslateXRel,
        Op::TranslateYRel,
    ];

    /// timm's name of the op.
    pub fn name(self) -> &'static str {
        match self {
            Op::AutoContrast => "AutoContrast",
            Op::Equalize => "Equalize",
            Op::Invert => "Invert",
            Op::Rotate => "Rotate",
            Op::PosterizeIncreasing => "PosterizeIncreasing",
            Op::SolarizeIncreasing => "SolarizeIncreasing",
            Op::SolarizeAdd => "SolarizeAdd",
            Op::ColorIncreasing => "ColorIncreasing",
            Op::ContrastIncreasing => "ContrastIncreasing",
            Op::BrightnessIncreasing => "BrightnessIncreasing",
            Op::SharpnessIncreasing => "SharpnessIncreasing",
            Op::ShearX => "ShearX",
            Op::ShearY => "ShearY",
            Op::TranslateXRel => "TranslateXRel",
            Op::TranslateYRel => "TranslateYRel",
        }
    }

    /// The op with timm's name `name` (case-insensitive).
    pub fn from_name(name: &str) -> Result<Op, AugError> {
        Op::ALL
            .iter()
            .copied()
            .find(|o| o.name().eq_ignore_ascii_case(name))
            .ok_or(AugError::UnknownOp)
    }
}

/// An op's concrete argument, derived from its magnitude as timm's level functions do.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OpArg {
    AutoContrast,
    Equalize,
    Invert,
    /// Counter-clockwise degrees: `m / 10 * 30`, signed.
    Rotate(f64),
    /// Bits kept: `4 - int(m / 10 * 4)`, clamped to 0..=8; 0 clears every bit (Pillow 13
    /// rejects 0 bits, older Pillow cleared every bit: this keeps the older behaviour).
    Posterize(u8),
    /// Threshold: `256 - min(256, int(m / 10 * 256))`; values `>= t` are inverted.
    Solarize(u32),
    /// Added to values below 128: `min(128, int(m / 10 * 110))`.
    SolarizeAdd(u8),
    /// Enhance factors: `max(0.1, 1 +- m / 10 * 0.9)`.
    Color(f32),
    Contrast(f32),
    Brightness(f32),
    Sharpness(f32),
    /// Shear factors `+- m / 10 * 0.3`.
    ShearX(f64),
    ShearY(f64),
    /// Translation as a fraction of the side: `+- m / 10 * translate_pct`.
    TranslateX(f64),
    TranslateY(f64),
}

/// The argument of `op` at `magnitude` (0..10 scale), negated when `negate` for signed ops.
pub(crate) fn op_arg(op: Op, magnitude: f32, negate: bool, cfg: &RandAugConfig) -> OpArg {
    let level = f64::from(magnitude) / 10.0;
    let sign = |v: f64| if negate { -v } else { v };
    let enh = |l: f64| {
        let f = 1.0 + sign(l * 0.9);
        (if f < 0.1 { 0.1 } else { f }) as f32
    };
    match op {
        Op::AutoContrast => OpArg::AutoContrast,
        Op::Equalize => OpArg::Equalize,
        Op::Invert => OpArg::Invert,
        Op::Rotate => OpArg::Rotate(sign(level * 30.0)),
        Op::PosterizeIncreasing => OpArg::Posterize((4 - (level * 4.0) as i64).clamp(0, 8) as u8),
        Op::SolarizeIncreasing => {
            OpArg::Solarize(256 - ((level * 256.0) as i64).clamp(0, 256) as u32)
        }
        Op::SolarizeAdd => OpArg::SolarizeAdd(((level * 110.0) as i64).clamp(0, 128) as u8),
        Op::ColorIncreasing => OpArg::Color(enh(level)),
        Op::ContrastIncreasing => OpArg::Contrast(enh(level)),
        Op::BrightnessIncreasing => OpArg::Brightness(enh(level)),
        Op::SharpnessIncreasing => OpArg::Sharpness(enh(level)),
        Op::ShearX => OpArg::ShearX(sign(level * 0.3)),
        Op::ShearY => OpArg::ShearY(sign(level * 0.3)),
        Op::TranslateXRel => OpArg::TranslateX(sign(level * f64::from(cfg.translate_pct))),
        Op::TranslateYRel => OpArg::TranslateY(sign(level * f64::from(cfg.translate_pct))),
    }
}

/// Draws one op slot (5 `u32` draws, always; see [`super::decode`] step 3).
pub(crate) fn sample_step(rng: &mut Pcg32, cfg: &RandAugConfig) -> Option<OpStep> {
    let op = Op::ALL[int_in(rng, 0, 14) as usize];
    let applied = uniform(rng) < f64::from(cfg.prob);
    let z = normal(rng);
    let negate = uniform(rng) > 0.5;
    let mut m = f64::from(cfg.magnitude);
    if cfg.magnitude_std > 0.0 {
        m += f64::from(cfg.magnitude_std) * z;
    }
    let max = f64::from(cfg.magnitude_max);
    let m = if m > max { max } else { m };
    let m = if m < 0.0 { 0.0 } else { m };
    applied.then_some(OpStep {
        op,
        magnitude: m as f32,
        negate,
    })
}

fn apply_lut(lut: &[[u8; 256]; 3], src: ImageRef<'_>, dst: ImageMut<'_>) {
    let ch = src.channels as usize;
    if ch == 1 {
        for (o, &s) in dst.data.iter_mut().zip(src.data) {
            *o = lut[0][usize::from(s)];
        }
    } else {
        for (o, s) in dst.data.chunks_exact_mut(3).zip(src.data.chunks_exact(3)) {
            o[0] = lut[0][usize::from(s[0])];
            o[1] = lut[1][usize::from(s[1])];
            o[2] = lut[2][usize::from(s[2])];
        }
    }
}

fn histograms(src: ImageRef<'_>) -> [[u32; 256]; 3] {
    let ch = src.channels as usize;
    let mut h = [[0u32; 256]; 3];
    for px in src.data.chunks_exact(ch) {
        for c in 0..ch {
            h[c][usize::from(px[c])] += 1;
        }
    }
    h
}

fn identity_lut() -> [u8; 256] {
    core::array::from_fn(|i| i as u8)
}

/// PIL `ImageOps.autocontrast(img)` (cutoff 0): per channel, stretch [lo, hi] to [0, 255].
fn autocontrast_lut(src: ImageRef<'_>) -> [[u8; 256]; 3] {
    let h = histograms(src);
    let mut lut = [identity_lut(); 3];
    for c in 0..src.channels as usize {
        let lo = (0..256).find(|&i| h[c][i] != 0).unwrap_or(0);
        let hi = (0..256).rev().find(|&i| h[c][i] != 0).unwrap_or(0);
        if hi <= lo {
            continue;
        }
        let scale = 255.0 / (hi - lo) as f64;
        let offset = -(lo as f64) * scale;
        for (ix, v) in lut[c].iter_mut().enumerate() {
            let x = (ix as f64 * scale + offset) as i64;
            *v = x.clamp(0, 255) as u8;
        }
    }
    lut
}

/// PIL `ImageOps.equalize(img)`: per channel, integer cumulative histogram mapping.
fn equalize_lut(src: ImageRef<'_>) -> [[u8; 256]; 3] {
    let h = histograms(src);
    let mut lut = [identity_lut(); 3];
    for c in 0..src.channels as usize {
        let nonzero = h[c].iter().filter(|&&v| v != 0).count();
        if nonzero <= 1 {
            continue;
        }
        let last = h[c].iter().rev().find(|&&v| v != 0).copied().unwrap_or(0);
        let total: u64 = h[c].iter().map(|&v| u64::from(v)).sum();
        let step = (total - u64::from(last)) / 255;
        if step == 0 {
            continue;
        }
        let mut n = step / 2;
        for i in 0..256 {
            lut[c][i] = (n / step).min(255) as u8;
            n += u64::from(h[c][i]);
        }
    }
    lut
}

fn point_lut(f: impl Fn(u8) -> u8) -> [[u8; 256]; 3] {
    let l: [u8; 256] = core::array::from_fn(|i| f(i as u8));
    [l; 3]
}

/// Applies a resolved op argument from `src` into `dst` (same shape).
pub(crate) fn apply_arg(
    arg: OpArg,
    fill: [u8; 3],
    interp: Interpolation,
    src: ImageRef<'_>,
    dst: ImageMut<'_>,
) -> Result<(), AugError> {
    let fill = if src.channels == 1 {
        [luma(fill[0], fill[1], fill[2]); 3]
    } else {
        fill
    };
    let (w, h) = (f64::from(src.width), f64::from(src.height));
    match arg {
        OpArg::AutoContrast => apply_lut(&autocontrast_lut(src), src, dst),
        OpArg::Equalize => apply_lut(&equalize_lut(src), src, dst),
        OpArg::Invert => apply_lut(&point_lut(|v| 255 - v), src, dst),
        OpArg::Posterize(bits) => {
            if bits >= 8 {
                dst.data.copy_from_slice(src.data);
            } else {
                let mask = !((1u16 << (8 - bits)) - 1) as u8;
                apply_lut(&point_lut(|v| v & mask), src, dst);
            }
        }
        OpArg::Solarize(t) => apply_lut(
            &point_lut(|v| if u32::from(v) < t { v } else { 255 - v }),
            src,
            dst,
        ),
        OpArg::SolarizeAdd(add) => apply_lut(
            &point_lut(|v| if v < 128 { v.saturating_add(add) } else { v }),
            src,
            dst,
        ),
        OpArg::Color(f) => enhance(Enhance::Color, f, src, dst),
        OpArg::Contrast(f) => enhance(Enhance::Contrast, f, src, dst),
        OpArg::Brightness(f) => enhance(Enhance::Brightness, f, src, dst),
        OpArg::Sharpness(f) => enhance(Enhance::Sharpness, f, src, dst),
        OpArg::Rotate(deg) => affine(
            src,
            dst,
            rotate_matrix(deg, src.width, src.height),
            interp,
            fill,
        ),
        OpArg::ShearX(s) => affine(src, dst, [1.0, s, 0.0, 0.0, 1.0, 0.0], interp, fill),
        OpArg::ShearY(s) => affine(src, dst, [1.0, 0.0, 0.0, s, 1.0, 0.0], interp, fill),
        OpArg::TranslateX(p) => affine(src, dst, [1.0, 0.0, p * w, 0.0, 1.0, 0.0], interp, fill),
        OpArg::TranslateY(p) => affine(src, dst, [1.0, 0.0, 0.0, 0.0, 1.0, p * h], interp, fill),
    }
    Ok(())
}

/// Applies one RandAugment `op` at `magnitude` (0..10 scale, not clipped here), in the negative
/// direction when `negate`, with `cfg`'s fill and translate range, from `src` into `dst`
/// (same width, height and channels). Returns the resolved argument.
pub fn apply_op(
    op: Op,
    magnitude: f32,
    negate: bool,
    cfg: &RandAugConfig,
    interp: Interpolation,
    src: ImageRef<'_>,
    dst: ImageMut<'_>,
) -> Result<OpArg, AugError> {
    src.validate()?;
    dst.validate()?;
    if src.width != dst.width || src.height != dst.height || src.channels != dst.channels {
        return Err(AugError::Mismatch("op output shape"));
    }
    if !magnitude.is_finite() || magnitude < 0.0 {
        return Err(AugError::Value { key: "magnitude" });
    }
    let arg = op_arg(op, magnitude, negate, cfg);
    apply_arg(arg, cfg.fill, interp, src, dst)?;
    Ok(arg)
}

#[cfg(test)]
mod tests {
    use super::super::config::DEFAULT_RA;
    use super::*;

    #[test]
    fn level_maps_match_timm_at_m9() {
        let c = &DEFAULT_RA;
        assert_eq!(
            op_arg(Op::PosterizeIncreasing, 9.0, false, c),
            OpArg::Posterize(1)
        );
        assert_eq!(
            op_arg(Op::SolarizeIncreasing, 9.0, false, c),
            OpArg::Solarize(26)
        );
        assert_eq!(
            op_arg(Op::SolarizeAdd, 9.0, false, c),
            OpArg::SolarizeAdd(99)
        );
        assert_eq!(op_arg(Op::Rotate, 9.0, true, c), OpArg::Rotate(-27.0));
        assert_eq!(
            op_arg(Op::ColorIncreasing, 9.0, false, c),
            OpArg::Color(1.81)
        );
        assert_eq!(
            op_arg(Op::ColorIncreasing, 10.0, true, c),
            OpArg::Color(0.1)
        );
        assert_eq!(
            op_arg(Op::PosterizeIncreasing, 10.0, false, c),
            OpArg::Posterize(0)
        );
        assert_eq!(
            op_arg(Op::SolarizeIncreasing, 0.0, false, c),
            OpArg::Solarize(256)
        );
    }

    #[test]
    fn names_round_trip() {
        for op in Op::ALL {
            assert_eq!(Op::from_name(op.name()).unwrap(), op);
        }
        assert_eq!(Op::from_name("rotate").unwrap(), Op::Rotate);
        assert!(Op::from_name("Cutout").is_err());
    }

    #[test]
    fn equalize_and_autocontrast_on_two_levels() {
        let src = [10u8, 10, 200, 200];
        let mut out = [0u8; 4];
        apply_op(
            Op::AutoContrast,
            0.0,
            false,
            &DEFAULT_RA,
            Interpolation::Bicubic,
            ImageRef::new(2, 2, 1, &src).unwrap(),
            ImageMut::new(2, 2, 1, &mut out).unwrap(),
        )
        .unwrap();
        assert_eq!(out, [0, 0, 255, 255]);
        // Equalize: histo [2, 2], step = (4 - 2) / 255 = 0 -> identity.
        apply_op(
            Op::Equalize,
            0.0,
            false,
            &DEFAULT_RA,
            Interpolation::Bicubic,
            ImageRef::new(2, 2, 1, &src).unwrap(),
            ImageMut::new(2, 2, 1, &mut out).unwrap(),
        )
        .unwrap();
        assert_eq!(out, src);
    }
}
