//! Named augmentation presets. Every knob of a preset can be overridden with
//! [`AugConfig::set`].
//!
//! | preset | size | crop scale | RandAugment | erasing | mixup / cutmix | mean / std |
//! |---|---|---|---|---|---|---|
//! | `in22k-distill` | 224 | 0.08-1 | 2 ops, m9 mstd0.5, p 0.5 | p 0.25 | off | ImageNet |
//! | `in1k-scratch` | 224 | 0.08-1 | 2 ops, m9 mstd0.5, p 0.5 | p 0.25 | 0.8 / 1.0, switch 0.5 | ImageNet |
//! | `light` | 32 | 0.35-1 | 2 ops, m5 mstd0.5, p 0.5, translate 0.3 | p 0.1, area 0.02-0.2 | off | 0.5 / 0.5 |
//! | `plain` | 32 | 0.8-1 | off | off | off | 0.5 / 0.5 |
//!
//! All use ratio 3/4-4/3, bicubic resampling and horizontal flip 0.5. `in22k-distill` and
//! `in1k-scratch` are the reference recipes (the official `TinyViT/configs/` files; the configured colour
//! jitter 0.4 is inactive under RandAugment there, so it is off here too). `light` is this
//! project's recipe for 28-64 px datasets (Fashion-MNIST, CIFAR-like): a milder crop, since a
//! 0.08 crop of a 28 px image is 8 px of content, milder ops, and a neutral fill. `plain` (crop
//! and flip only) is for teachers that must converge in few epochs on small images.

use super::config::EraseConfig;
use super::config::{
    AugConfig, CropConfig, Interpolation, RandAugConfig, DEFAULT_ERASE, DEFAULT_MIX, DEFAULT_RA,
};
use super::{AugError, IMAGENET_MEAN, IMAGENET_STD};

/// The preset names [`preset`] accepts.
pub const PRESETS: [&str; 4] = ["in22k-distill", "in1k-scratch", "light", "plain"];

const CROP_224: CropConfig = CropConfig {
    scale: [0.08, 1.0],
    ratio: [3.0 / 4.0, 4.0 / 3.0],
};

/// The reference's ImageNet-22k distillation recipe (no mixup, no cutmix).
pub fn in22k_distill() -> AugConfig {
    AugConfig {
        size: 224,
        crop: CROP_224,
        interpolation: Interpolation::Bicubic,
        hflip: 0.5,
        randaug: Some(DEFAULT_RA),
        jitter: None,
        erase: Some(DEFAULT_ERASE),
        mix: None,
        mean: IMAGENET_MEAN,
        std: IMAGENET_STD,
    }
}

/// The reference's ImageNet-1k from-scratch recipe: the 22k recipe plus mixup 0.8 and
/// cutmix 1.0 with switch probability 0.5.
pub fn in1k_scratch() -> AugConfig {
    AugConfig {
        mix: Some(DEFAULT_MIX),
        ..in22k_distill()
    }
}

/// A light recipe for 28-64 px images; the output side defaults to 32 (override `size`).
pub fn light() -> AugConfig {
    AugConfig {
        size: 32,
        crop: CropConfig {
            scale: [0.35, 1.0],
            ratio: [3.0 / 4.0, 4.0 / 3.0],
        },
        interpolation: Interpolation::Bicubic,
        hflip: 0.5,
        randaug: Some(RandAugConfig {
            num_ops: 2,
            magnitude: 5.0,
            magnitude_std: 0.5,
            magnitude_max: 10.0,
            prob: 0.5,
            translate_pct: 0.3,
            fill: [128, 128, 128],
        }),
        jitter: None,
        erase: Some(EraseConfig {
            prob: 0.1,
            area: [0.02, 0.2],
            aspect: [0.3, 1.0 / 0.3],
        }),
        mix: None,
        mean: [0.5; 3],
        std: [0.5; 3],
    }
}

/// Crop and flip only, for 28-64 px images: what a teacher that must converge in a few epochs
/// trains with; the output side defaults to 32 (override `size`).
pub fn plain() -> AugConfig {
    AugConfig {
        crop: CropConfig {
            scale: [0.8, 1.0],
            ratio: [3.0 / 4.0, 4.0 / 3.0],
        },
        randaug: None,
        erase: None,
        ..light()
    }
}

/// The preset called `name` (one of [`PRESETS`]).
pub fn preset(name: &str) -> Result<AugConfig, AugError> {
    match name {
        "in22k-distill" => Ok(in22k_distill()),
        "in1k-scratch" => Ok(in1k_scratch()),
        "light" => Ok(light()),
        "plain" => Ok(plain()),
        _ => Err(AugError::UnknownPreset),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_validates() {
        for name in PRESETS {
            preset(name).unwrap().validate().unwrap();
        }
        assert_eq!(preset("nope").unwrap_err(), AugError::UnknownPreset);
        assert_eq!(in1k_scratch().mix.unwrap().cutmix_alpha, 1.0);
        assert!(in22k_distill().mix.is_none());
    }
}
