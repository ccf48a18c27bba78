//! Normalisation of a u8 HWC view to f32 CHW: `(v / 255 - mean_c) / std_c`, the same f32
//! operations in the same order as torchvision's `ToTensor` + `Normalize`.

use super::{AugError, ImageRef};

/// ImageNet channel means (timm `IMAGENET_DEFAULT_MEAN`).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations (timm `IMAGENET_DEFAULT_STD`).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// CLIP channel means (timm `OPENAI_CLIP_MEAN`).
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// CLIP channel standard deviations (timm `OPENAI_CLIP_STD`).
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

/// Writes `img` normalised into `out`. Grey images use `mean[0]`, `std[0]`.
///
/// # Shapes
/// `img`: `[H, W, C]` u8; `out`: `[C, H, W]` f32.
pub fn normalize(
    img: ImageRef<'_>,
    mean: [f32; 3],
    std: [f32; 3],
    out: &mut [f32],
) -> Result<(), AugError> {
    img.validate()?;
    if out.len() != img.data.len() {
        return Err(AugError::BufferSize {
            what: "normalize output",
            expected: img.data.len(),
            actual: out.len(),
        });
    }
    let ch = img.channels as usize;
    let plane = img.width as usize * img.height as usize;
    for c in 0..ch {
        let (m, s) = (mean[c], std[c]);
        // Every u8 level's value, computed with the same f32 operations as per pixel.
        let lut: [f32; 256] = core::array::from_fn(|v| (v as f32 / 255.0 - m) / s);
        let dst = &mut out[c * plane..(c + 1) * plane];
        for (o, px) in dst.iter_mut().zip(img.data.chunks_exact(ch)) {
            *o = lut[usize::from(px[c])];
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chw_layout_and_values() {
        let img = [0u8, 255, 51, 255, 0, 102];
        let mut out = [0.0f32; 6];
        normalize(
            ImageRef::new(2, 1, 3, &img).unwrap(),
            [0.0; 3],
            [1.0; 3],
            &mut out,
        )
        .unwrap();
        assert_eq!(out, [0.0, 1.0, 1.0, 0.0, 0.2, 0.4]);
        assert!(normalize(
            ImageRef::new(2, 1, 3, &img).unwrap(),
            [0.0; 3],
            [1.0; 3],
            &mut out[..5]
        )
        .is_err());
    }
}
