//! [`AugConfig`]: every knob of the training view pipeline, serialisable so a logit store can
//! record exactly what its seeds replay. Named presets live in [`super::preset`]; any knob can be
//! overridden by name with [`AugConfig::set`].

use serde::{Deserialize, Serialize};

use super::AugError;

/// Resampling filter for resizing and for the geometric RandAugment ops (PIL semantics).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Interpolation {
    /// PIL `BILINEAR` (triangle filter; antialiased when shrinking).
    Bilinear,
    /// PIL `BICUBIC` (Keys cubic a = -0.5 when resizing, antialiased when shrinking;
    /// a = -1 in affine transforms, as PIL does).
    Bicubic,
}

/// RandomResizedCrop: area fraction and aspect-ratio ranges (timm `scale`, `ratio`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct CropConfig {
    /// Crop area as a fraction of the source area, `[min, max]`.
    pub scale: [f32; 2],
    /// Crop aspect ratio (width / height), `[min, max]`, drawn log-uniformly.
    pub ratio: [f32; 2],
}

/// RandAugment over the 15 increasing-strength ops (timm `rand-mM-mstdS-inc1`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RandAugConfig {
    /// Ops drawn per image, with replacement (timm `n`), at most [`super::MAX_RANDAUG_OPS`].
    pub num_ops: u32,
    /// Mean magnitude on the 0..10 scale (timm `m`).
    pub magnitude: f32,
    /// Standard deviation of the per-op Gaussian magnitude noise (timm `mstd`); 0 = fixed.
    pub magnitude_std: f32,
    /// Upper clip of the magnitude (timm `mmax`, default 10).
    pub magnitude_max: f32,
    /// Probability that each drawn op is applied (timm `p`).
    pub prob: f32,
    /// Translation at magnitude 10 as a fraction of the side (timm `translate_pct`).
    pub translate_pct: f32,
    /// Fill colour of pixels that geometric ops uncover (timm: the mean colour, rounded).
    /// Grey images use its PIL luma.
    pub fill: [u8; 3],
}

/// Colour jitter (torchvision `ColorJitter` without hue); used only when RandAugment is off,
/// as in timm.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct JitterConfig {
    /// Factor drawn from `[max(0, 1 - b), 1 + b]`; 0 disables.
    pub brightness: f32,
    pub contrast: f32,
    pub saturation: f32,
}

/// Random erasing (timm `RandomErasing`, pixel mode, one box).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct EraseConfig {
    /// Probability of erasing one box.
    pub prob: f32,
    /// Box area as a fraction of the image, `[min, max]`.
    pub area: [f32; 2],
    /// Box aspect ratio (height / width), `[min, max]`, drawn log-uniformly.
    pub aspect: [f32; 2],
}

/// Mixup / CutMix on pairs of samples (timm `Mixup`, pair mode).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct MixConfig {
    /// Beta(alpha, alpha) for mixup; 0 disables mixup.
    pub mixup_alpha: f32,
    /// Beta(alpha, alpha) for cutmix; 0 disables cutmix.
    pub cutmix_alpha: f32,
    /// Probability of cutmix when both are enabled.
    pub switch_prob: f32,
    /// Probability that a pair is mixed at all.
    pub prob: f32,
}

/// The whole training-view pipeline: crop + resize, flip, RandAugment or colour jitter,
/// random erasing; then (outside [`super::apply`]) normalisation and pair mixing.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AugConfig {
    /// Output side in pixels (square views).
    pub size: u32,
    pub crop: CropConfig,
    pub interpolation: Interpolation,
    /// Horizontal flip probability.
    pub hflip: f32,
    pub randaug: Option<RandAugConfig>,
    pub jitter: Option<JitterConfig>,
    pub erase: Option<EraseConfig>,
    pub mix: Option<MixConfig>,
    /// Normalisation mean per channel (0..1 scale); random erasing noise is drawn in this
    /// normalised space, as timm does.
    pub mean: [f32; 3],
    /// Normalisation standard deviation per channel (0..1 scale).
    pub std: [f32; 3],
}

fn finite_in(field: &'static str, v: f32, lo: f32, hi: f32) -> Result<(), AugError> {
    if v.is_finite() && v >= lo && v <= hi {
        Ok(())
    } else {
        Err(AugError::Config {
            field,
            reason: "out of range",
        })
    }
}

fn ordered(field: &'static str, r: [f32; 2], lo: f32, hi: f32) -> Result<(), AugError> {
    finite_in(field, r[0], lo, hi)?;
    finite_in(field, r[1], lo, hi)?;
    if r[0] > r[1] {
        return Err(AugError::Config {
            field,
            reason: "min above max",
        });
    }
    Ok(())
}

impl AugConfig {
    /// Checks every knob; [`super::decode`] and [`super::apply`] call it.
    pub fn validate(&self) -> Result<(), AugError> {
        if self.size == 0 || self.size > super::MAX_SIDE {
            return Err(AugError::Config {
                field: "size",
                reason: "must be 1..=16384",
            });
        }
        ordered("crop.scale", self.crop.scale, 1e-6, 1.0)?;
        ordered("crop.ratio", self.crop.ratio, 1e-3, 1e3)?;
        finite_in("hflip", self.hflip, 0.0, 1.0)?;
        if let Some(ra) = &self.randaug {
            if ra.num_ops as usize > super::MAX_RANDAUG_OPS {
                return Err(AugError::Config {
                    field: "randaug.num_ops",
                    reason: "at most 4",
                });
            }
            finite_in("randaug.magnitude", ra.magnitude, 0.0, 100.0)?;
            finite_in("randaug.magnitude_std", ra.magnitude_std, 0.0, 100.0)?;
            finite_in("randaug.magnitude_max", ra.magnitude_max, 0.0, 100.0)?;
            finite_in("randaug.prob", ra.prob, 0.0, 1.0)?;
            finite_in("randaug.translate_pct", ra.translate_pct, 0.0, 1.0)?;
        }
        if let Some(j) = &self.jitter {
            finite_in("jitter.brightness", j.brightness, 0.0, 10.0)?;
            finite_in("jitter.contrast", j.contrast, 0.0, 10.0)?;
            finite_in("jitter.saturation", j.saturation, 0.0, 10.0)?;
        }
        if let Some(e) = &self.erase {
            finite_in("erase.prob", e.prob, 0.0, 1.0)?;
            ordered("erase.area", e.area, 0.0, 1.0)?;
            ordered("erase.aspect", e.aspect, 1e-3, 1e3)?;
        }
        if let Some(m) = &self.mix {
            finite_in("mix.mixup_alpha", m.mixup_alpha, 0.0, 100.0)?;
            finite_in("mix.cutmix_alpha", m.cutmix_alpha, 0.0, 100.0)?;
            finite_in("mix.switch_prob", m.switch_prob, 0.0, 1.0)?;
            finite_in("mix.prob", m.prob, 0.0, 1.0)?;
        }
        for c in 0..3 {
            finite_in("mean", self.mean[c], -10.0, 10.0)?;
            finite_in("std", self.std[c], 1e-6, 100.0)?;
        }
        Ok(())
    }

    /// Overrides one knob by its dotted name, e.g. `size=64`, `crop.scale=0.35,1`,
    /// `interpolation=bilinear`, `randaug.magnitude=5`, `randaug=off`, `erase.prob=0`,
    /// `mix=on`, `norm=clip`, `mean=0.5,0.5,0.5`. Switching a section `on` (or setting one of
    /// its knobs while it is off) starts from the reference recipe's values (RandAugment m9
    /// mstd0.5, jitter 0.4, erasing 0.25, mixup 0.8 / cutmix 1.0). The result is validated; on
    /// error the config is left unchanged.
    ///
    /// Keys: `size`, `crop.scale`, `crop.ratio`, `interpolation`, `hflip`, `randaug`,
    /// `randaug.{num_ops,magnitude,magnitude_std,magnitude_max,prob,translate_pct,fill}`,
    /// `jitter`, `jitter.{brightness,contrast,saturation}`, `erase`,
    /// `erase.{prob,area,aspect}`, `mix`, `mix.{mixup_alpha,cutmix_alpha,switch_prob,prob}`,
    /// `norm` (`imagenet`, `clip`, `half`), `mean`, `std`.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), AugError> {
        let value = value.trim();
        let mut next = *self;
        match key {
            "size" => next.size = parse_u32(key, value)?,
            "crop.scale" => next.crop.scale = parse_arr::<2>(value)?,
            "crop.ratio" => next.crop.ratio = parse_arr::<2>(value)?,
            "interpolation" => {
                next.interpolation = match value {
                    "bicubic" => Interpolation::Bicubic,
                    "bilinear" => Interpolation::Bilinear,
                    _ => {
                        return Err(AugError::Value {
                            key: "interpolation",
                        })
                    }
                }
            }
            "hflip" => next.hflip = parse_f32(value)?,
            "randaug" => next.randaug = switch(value, DEFAULT_RA, "randaug")?,
            "jitter" => next.jitter = switch(value, DEFAULT_JITTER, "jitter")?,
            "erase" => next.erase = switch(value, DEFAULT_ERASE, "erase")?,
            "mix" => next.mix = switch(value, DEFAULT_MIX, "mix")?,
            "norm" => {
                let (m, s) = match value {
                    "imagenet" => (super::IMAGENET_MEAN, super::IMAGENET_STD),
                    "clip" => (super::CLIP_MEAN, super::CLIP_STD),
                    "half" => ([0.5; 3], [0.5; 3]),
                    _ => return Err(AugError::Value { key: "norm" }),
                };
                next.mean = m;
                next.std = s;
            }
            "mean" => next.mean = parse_arr::<3>(value)?,
            "std" => next.std = parse_arr::<3>(value)?,
            _ => {
                if let Some(k) = key.strip_prefix("randaug.") {
                    let ra = next.randaug.get_or_insert(DEFAULT_RA);
                    match k {
                        "num_ops" => ra.num_ops = parse_u32(key, value)?,
                        "magnitude" => ra.magnitude = parse_f32(value)?,
                        "magnitude_std" => ra.magnitude_std = parse_f32(value)?,
                        "magnitude_max" => ra.magnitude_max = parse_f32(value)?,
                        "prob" => ra.prob = parse_f32(value)?,
                        "translate_pct" => ra.translate_pct = parse_f32(value)?,
                        "fill" => {
                            let f = parse_arr::<3>(value)?;
                            let mut out = [0u8; 3];
                            for c in 0..3 {
                                finite_in("randaug.fill", f[c], 0.0, 255.0)?;
                                out[c] = f[c] as u8;
                            }
                            ra.fill = out;
                        }
                        _ => return Err(AugError::UnknownKey),
                    }
                } else if let Some(k) = key.strip_prefix("jitter.") {
                    let j = next.jitter.get_or_insert(DEFAULT_JITTER);
                    match k {
                        "brightness" => j.brightness = parse_f32(value)?,
                        "contrast" => j.contrast = parse_f32(value)?,
                        "saturation" => j.saturation = parse_f32(value)?,
                        _ => return Err(AugError::UnknownKey),
                    }
                } else if let Some(k) = key.strip_prefix("erase.") {
                    let e = next.erase.get_or_insert(DEFAULT_ERASE);
                    match k {
                        "prob" => e.prob = parse_f32(value)?,
                        "area" => e.area = parse_arr::<2>(value)?,
                        "aspect" => e.aspect = parse_arr::<2>(value)?,
                        _ => return Err(AugError::UnknownKey),
                    }
                } else if let Some(k) = key.strip_prefix("mix.") {
                    let m = next.mix.get_or_insert(DEFAULT_MIX);
                    match k {
                        "mixup_alpha" => m.mixup_alpha = parse_f32(value)?,
                        "cutmix_alpha" => m.cutmix_alpha = parse_f32(value)?,
                        "switch_prob" => m.switch_prob = parse_f32(value)?,
                        "prob" => m.prob = parse_f32(value)?,
                        _ => return Err(AugError::UnknownKey),
                    }
                } else {
                    return Err(AugError::UnknownKey);
                }
            }
        }
        next.validate()?;
        *self = next;
        Ok(())
    }

    /// Applies `key=value` overrides in order (see [`AugConfig::set`]).
    pub fn set_all<'a>(
        &mut self,
        overrides: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), AugError> {
        for kv in overrides {
            let (k, v) = kv.split_once('=').ok_or(AugError::UnknownKey)?;
            self.set(k.trim(), v)?;
        }
        Ok(())
    }
}

pub(crate) const DEFAULT_RA: RandAugConfig = RandAugConfig {
    num_ops: 2,
    magnitude: 9.0,
    magnitude_std: 0.5,
    magnitude_max: 10.0,
    prob: 0.5,
    translate_pct: 0.45,
    fill: [124, 116, 104],
};
pub(crate) const DEFAULT_JITTER: JitterConfig = JitterConfig {
    brightness: 0.4,
    contrast: 0.4,
    saturation: 0.4,
};
pub(crate) const DEFAULT_ERASE: EraseConfig = EraseConfig {
    prob: 0.25,
    area: [0.02, 1.0 / 3.0],
    aspect: [0.3, 1.0 / 0.3],
};
pub(crate) const DEFAULT_MIX: MixConfig = MixConfig {
    mixup_alpha: 0.8,
    cutmix_alpha: 1.0,
    switch_prob: 0.5,
    prob: 1.0,
};

fn switch<T: Copy>(value: &str, default: T, key: &'static str) -> Result<Option<T>, AugError> {
    match value {
        "off" | "none" | "false" | "0" => Ok(None),
        "on" | "true" | "1" => Ok(Some(default)),
        _ => Err(AugError::Value { key }),
    }
}

fn parse_f32(value: &str) -> Result<f32, AugError> {
    value
        .trim()
        .parse::<f32>()
        .map_err(|_| AugError::Value { key: "number" })
}

fn parse_u32(key: &str, value: &str) -> Result<u32, AugError> {
    let _ = key;
    value
        .trim()
        .parse::<u32>()
        .map_err(|_| AugError::Value { key: "integer" })
}

fn parse_arr<const N: usize>(value: &str) -> Result<[f32; N], AugError> {
    let mut out = [0.0f32; N];
    let mut parts = value.split(',');
    for slot in out.iter_mut() {
        *slot = parse_f32(parts.next().ok_or(AugError::Value { key: "list" })?)?;
    }
    if parts.next().is_some() {
        return Err(AugError::Value { key: "list" });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::preset;
    use super::*;

    #[test]
    fn overrides_apply_and_validate() {
        let mut c = preset::in22k_distill();
        c.set("size", "64").unwrap();
        c.set("crop.scale", "0.35, 1").unwrap();
        c.set("randaug.magnitude", "5").unwrap();
        c.set("interpolation", "bilinear").unwrap();
        c.set("mix", "on").unwrap();
        c.set("norm", "clip").unwrap();
        assert_eq!(c.size, 64);
        assert_eq!(c.crop.scale, [0.35, 1.0]);
        assert_eq!(c.randaug.unwrap().magnitude, 5.0);
        assert_eq!(c.interpolation, Interpolation::Bilinear);
        assert_eq!(c.mix, Some(DEFAULT_MIX));
        assert_eq!(c.mean, super::super::CLIP_MEAN);
        c.set("randaug", "off").unwrap();
        assert!(c.randaug.is_none());
        let before = c;
        assert!(c.set("size", "0").is_err());
        assert!(c.set("crop.scale", "0.9,0.1").is_err());
        assert!(c.set("nope", "1").is_err());
        assert!(c.set("hflip", "x").is_err());
        assert!(c.set("std", "1,1").is_err());
        assert_eq!(c, before, "a failed override leaves the config unchanged");
        c.set_all(["erase.prob=0.5", "hflip=0"]).unwrap();
        assert_eq!(c.erase.unwrap().prob, 0.5);
        assert_eq!(c.hflip, 0.0);
    }
}
