//! Mixup / CutMix on pairs (timm `Mixup`, pair mode with `correct_lam`), on normalised f32
//! images. A pair is two neighbours of the epoch permutation ([`super::pair_partner`]); both
//! derive the same [`MixParams`] from [`super::pair_seed`], and each member's mixed input is
//! `lam * own + (1 - lam) * partner` (mixup) or `own` with the box pasted from the partner
//! (cutmix). Its soft target is `lam * target(own) + (1 - lam) * target(partner)`.
//!
//! Draws from `Pcg32::new(mix64(pair_seed ^ 0x7469_6e79_7669_7403), 0x7469_6e79_7669_7403)`:
//! `u` (cutmix iff `u < switch_prob`, when both kinds are on), `u` (mix at all iff
//! `u < prob`), then `lam ~ Beta(alpha, alpha)` (Gamma draws, Marsaglia-Tsang), then for
//! cutmix `cy = int(0..=H-1)`, `cx = int(0..=W-1)`.

use serde::{Deserialize, Serialize};

use super::rng::{beta, int_in, stream, uniform, DOMAIN_MIX};
use super::{AugError, MixConfig};

/// What a pair does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MixKind {
    /// Inputs and targets unchanged (`lam = 1`).
    None,
    /// Pixel-wise blend.
    Mixup,
    /// The box `[x0, x1) x [y0, y1)` comes from the partner.
    Cutmix { x0: u32, y0: u32, x1: u32, y1: u32 },
}

/// A pair's mix decision. `lam` is the weight of a sample's own target (for cutmix, corrected
/// to the pasted area as timm's `correct_lam` does).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct MixParams {
    pub kind: MixKind,
    pub lam: f32,
}

/// Draws the mix decision of a pair for `width x height` images.
pub fn mix_params(
    cfg: &MixConfig,
    pair_seed: u32,
    width: u32,
    height: u32,
) -> Result<MixParams, AugError> {
    if width == 0 || height == 0 {
        return Err(AugError::EmptyImage { width, height });
    }
    let none = MixParams {
        kind: MixKind::None,
        lam: 1.0,
    };
    let (mu, cu) = (cfg.mixup_alpha > 0.0, cfg.cutmix_alpha > 0.0);
    if !mu && !cu {
        return Ok(none);
    }
    let mut r = stream(pair_seed, DOMAIN_MIX);
    let switch = uniform(&mut r) < f64::from(cfg.switch_prob);
    let use_cutmix = if mu && cu { switch } else { cu };
    if uniform(&mut r) >= f64::from(cfg.prob) {
        return Ok(none);
    }
    let alpha = f64::from(if use_cutmix {
        cfg.cutmix_alpha
    } else {
        cfg.mixup_alpha
    });
    let lam = beta(&mut r, alpha, alpha);
    if !use_cutmix {
        return Ok(MixParams {
            kind: MixKind::Mixup,
            lam: lam as f32,
        });
    }
    // timm rand_bbox: cut = int(side * sqrt(1 - lam)), centre uniform, clipped.
    let ratio = libm::sqrt(1.0 - lam);
    let cut_h = (f64::from(height) * ratio) as i64;
    let cut_w = (f64::from(width) * ratio) as i64;
    let cy = i64::from(int_in(&mut r, 0, height - 1));
    let cx = i64::from(int_in(&mut r, 0, width - 1));
    let y0 = (cy - cut_h / 2).clamp(0, i64::from(height)) as u32;
    let y1 = (cy + cut_h / 2).clamp(0, i64::from(height)) as u32;
    let x0 = (cx - cut_w / 2).clamp(0, i64::from(width)) as u32;
    let x1 = (cx + cut_w / 2).clamp(0, i64::from(width)) as u32;
    let area = f64::from(y1 - y0) * f64::from(x1 - x0);
    let lam = 1.0 - area / (f64::from(width) * f64::from(height));
    Ok(MixParams {
        kind: MixKind::Cutmix { x0, y0, x1, y1 },
        lam: lam as f32,
    })
}

/// Mixes `partner` into `own` in place.
///
/// # Shapes
/// `own`, `partner`: `[channels, height, width]` f32 (CHW, as [`super::normalize`] writes).
pub fn apply_mix(
    p: &MixParams,
    own: &mut [f32],
    partner: &[f32],
    channels: u32,
    height: u32,
    width: u32,
) -> Result<(), AugError> {
    let plane = (width as usize)
        .checked_mul(height as usize)
        .ok_or(AugError::TooLarge("mix image"))?;
    let n = plane
        .checked_mul(channels as usize)
        .ok_or(AugError::TooLarge("mix image"))?;
    if own.len() != n || partner.len() != n {
        return Err(AugError::BufferSize {
            what: "mix images",
            expected: n,
            actual: if own.len() != n {
                own.len()
            } else {
                partner.len()
            },
        });
    }
    match p.kind {
        MixKind::None => {}
        MixKind::Mixup => {
            let lam = p.lam;
            let rest = 1.0 - lam;
            for (o, &q) in own.iter_mut().zip(partner) {
                *o = *o * lam + q * rest;
            }
        }
        MixKind::Cutmix { x0, y0, x1, y1 } => {
            if x1 > width || y1 > height || x0 > x1 || y0 > y1 {
                return Err(AugError::Params("cutmix box"));
            }
            for c in 0..channels as usize {
                for y in y0 as usize..y1 as usize {
                    let s = c * plane + y * width as usize;
                    own[s + x0 as usize..s + x1 as usize]
                        .copy_from_slice(&partner[s + x0 as usize..s + x1 as usize]);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::config::DEFAULT_MIX;
    use super::*;

    #[test]
    fn params_are_valid_and_both_kinds_occur() {
        let (mut mixup, mut cutmix) = (0, 0);
        for seed in 0..400 {
            let p = mix_params(&DEFAULT_MIX, seed, 7, 5).unwrap();
            assert!((0.0..=1.0).contains(&p.lam));
            match p.kind {
                MixKind::Mixup => mixup += 1,
                MixKind::Cutmix { x0, y0, x1, y1 } => {
                    cutmix += 1;
                    assert!(x0 <= x1 && x1 <= 7 && y0 <= y1 && y1 <= 5);
                    let area = f64::from((x1 - x0) * (y1 - y0));
                    assert!((f64::from(p.lam) - (1.0 - area / 35.0)).abs() < 1e-6);
                }
                MixKind::None => panic!("prob 1 always mixes"),
            }
        }
        assert!(mixup > 150 && cutmix > 150, "{mixup} {cutmix}");
    }

    #[test]
    fn mixup_and_cutmix_apply() {
        let mut own = [1.0f32; 2 * 2 * 3];
        let partner = [3.0f32; 12];
        let p = MixParams {
            kind: MixKind::Mixup,
            lam: 0.25,
        };
        apply_mix(&p, &mut own, &partner, 2, 2, 3).unwrap();
        assert!(own.iter().all(|&v| v == 2.5));
        let mut own = [1.0f32; 12];
        let p = MixParams {
            kind: MixKind::Cutmix {
                x0: 1,
                y0: 0,
                x1: 3,
                y1: 1,
            },
            lam: 0.5,
        };
        apply_mix(&p, &mut own, &partner, 2, 2, 3).unwrap();
        assert_eq!(
            own,
            [1.0, 3.0, 3.0, 1.0, 1.0, 1.0, 1.0, 3.0, 3.0, 1.0, 1.0, 1.0]
        );
        assert!(apply_mix(&p, &mut own[..11], &partner[..11], 2, 2, 3).is_err());
    }
}
