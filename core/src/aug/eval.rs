//! The evaluation transform (timm `transforms_imagenet_eval`): resize the shorter side to
//! `floor(size / crop_pct)` (the longer to `int(short * long / short_side)`, as torchvision),
//! then take the centred `size x size` crop (offsets `round((side - size) / 2)`, ties to even).
//! Only the cropped region of the resized image is computed.
//!
//! [`EVAL_CROP_PCT`] is the one crop fraction of the project: the trainer's validation views,
//! `tinyvit infer`, `tinyvit augment --eval` and the replay vectors all use it.

use super::resize::{region_scratch_len, resample};
use super::rng::round_half_even;
use super::{AugError, CropBox, ImageMut, ImageRef, Interpolation};

/// The centre-crop fraction of every evaluation view (timm's default `crop_pct`).
pub const EVAL_CROP_PCT: f32 = 0.875;

/// Geometry of one evaluation view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EvalDims {
    /// The resized image, of which only the crop is computed.
    pub resized_width: u32,
    pub resized_height: u32,
    /// Top-left of the centre crop in the resized image.
    pub crop_x: u32,
    pub crop_y: u32,
}

/// The resize and crop geometry for a `src_w x src_h` source.
pub fn eval_dims(src_w: u32, src_h: u32, size: u32, crop_pct: f32) -> Result<EvalDims, AugError> {
    if src_w == 0 || src_h == 0 {
        return Err(AugError::EmptyImage {
            width: src_w,
            height: src_h,
        });
    }
    if !(crop_pct > 0.0 && crop_pct <= 1.0) {
        return Err(AugError::Config {
            field: "crop_pct",
            reason: "must be in (0, 1]",
        });
    }
    if size == 0 || size > super::MAX_SIDE {
        return Err(AugError::Config {
            field: "size",
            reason: "must be 1..=16384",
        });
    }
    let scale = libm::floor(f64::from(size) / f64::from(crop_pct));
    if scale > f64::from(super::MAX_SIDE) {
        return Err(AugError::TooLarge("eval resize"));
    }
    let s = scale as u32;
    let (short, long) = if src_w <= src_h {
        (src_w, src_h)
    } else {
        (src_h, src_w)
    };
    let new_long = f64::from(s) * f64::from(long) / f64::from(short);
    if new_long > f64::from(super::MAX_SIDE) * 16.0 {
        return Err(AugError::TooLarge("eval resize"));
    }
    let new_long = new_long as u32;
    let (rw, rh) = if src_w <= src_h {
        (s, new_long)
    } else {
        (new_long, s)
    };
    Ok(EvalDims {
        resized_width: rw,
        resized_height: rh,
        crop_x: round_half_even(f64::from(rw - size) / 2.0) as u32,
        crop_y: round_half_even(f64::from(rh - size) / 2.0) as u32,
    })
}

/// Scratch bytes [`eval_transform`] needs.
pub fn eval_scratch_len(
    src_w: u32,
    src_h: u32,
    size: u32,
    crop_pct: f32,
    channels: u32,
) -> Result<usize, AugError> {
    let d = eval_dims(src_w, src_h, size, crop_pct)?;
    region_scratch_len(
        src_w,
        src_h,
        d.resized_width,
        d.resized_height,
        size,
        size,
        channels,
    )
}

/// Renders the evaluation view of `src` into `out` (square; its side is the view size).
pub fn eval_transform(
    src: ImageRef<'_>,
    out: ImageMut<'_>,
    crop_pct: f32,
    f: Interpolation,
    scratch: &mut [u8],
) -> Result<(), AugError> {
    src.validate()?;
    out.validate()?;
    if out.width != out.height {
        return Err(AugError::Mismatch("eval output must be square"));
    }
    if out.channels != src.channels {
        return Err(AugError::Mismatch("channels"));
    }
    let d = eval_dims(src.width, src.height, out.width, crop_pct)?;
    let need = eval_scratch_len(src.width, src.height, out.width, crop_pct, src.channels)?;
    if scratch.len() < need {
        return Err(AugError::BufferSize {
            what: "scratch",
            expected: need,
            actual: scratch.len(),
        });
    }
    let bx = CropBox {
        x: 0,
        y: 0,
        width: src.width,
        height: src.height,
    };
    let region = CropBox {
        x: d.crop_x,
        y: d.crop_y,
        width: out.width,
        height: out.height,
    };
    resample(
        src,
        bx,
        d.resized_width,
        d.resized_height,
        region,
        f,
        out.data,
        scratch,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dims_follow_timm() {
        let d = eval_dims(500, 375, 224, EVAL_CROP_PCT).unwrap();
        assert_eq!((d.resized_width, d.resized_height), (341, 256));
        assert_eq!((d.crop_x, d.crop_y), (58, 16));
        let d = eval_dims(28, 28, 28, 1.0).unwrap();
        assert_eq!(
            (d.resized_width, d.resized_height, d.crop_x, d.crop_y),
            (28, 28, 0, 0)
        );
        assert!(eval_dims(10, 10, 8, 1.5).is_err());
    }

    #[test]
    fn identity_eval_copies() {
        let src: [u8; 8 * 8] = core::array::from_fn(|i| i as u8);
        let mut out = [0u8; 64];
        let mut scratch = [0u8; 4096];
        eval_transform(
            ImageRef::new(8, 8, 1, &src).unwrap(),
            ImageMut::new(8, 8, 1, &mut out).unwrap(),
            1.0,
            Interpolation::Bicubic,
            &mut scratch,
        )
        .unwrap();
        assert_eq!(out, src);
    }
}
