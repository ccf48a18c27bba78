//! BatchNorm folding: official (unfolded) state_dict tensors -> the packed deployment blob.
//!
//! Each `Conv2d_BN` becomes one conv with bias, like the reference's `fuse()`:
//! `s = gamma / sqrt(running_var + 1e-5)`, `w' = w * s` (per output channel),
//! `b' = beta - running_mean * s`. Every other tensor is copied unchanged.

use std::string::String;
use std::vec::Vec;

use super::{pack_folded, EngineError};
use crate::config::ModelConfig;
use crate::params::{numel, Name};

/// BatchNorm epsilon of every Conv2d_BN in TinyViT.
pub const BN_EPS: f32 = 1e-5;

/// Why folding failed.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum FoldError {
    /// The source has no tensor of this official name.
    Missing(String),
    /// The tensor of this name has the wrong number of values.
    Len {
        name: String,
        expected: usize,
        got: usize,
    },
    /// The config or the resulting blob is unusable.
    Engine(EngineError),
}

impl core::fmt::Display for FoldError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            FoldError::Missing(n) => write!(f, "tensor `{n}` is missing"),
            FoldError::Len {
                name,
                expected,
                got,
            } => write!(f, "tensor `{name}`: expected {expected} values, got {got}"),
            FoldError::Engine(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for FoldError {}

impl From<EngineError> for FoldError {
    fn from(e: EngineError) -> Self {
        FoldError::Engine(e)
    }
}

/// Folds a model given by official state_dict names into the blob [`super::Weights::new`]
/// takes. `get(name)` returns the f32 values of that official tensor, or `None`.
pub fn fold_state_dict<'a>(
    cfg: &ModelConfig,
    mut get: impl FnMut(&str) -> Option<&'a [f32]>,
) -> Result<Vec<f32>, FoldError> {
    let mut fetch = |name: &str, n: usize| -> Result<&'a [f32], FoldError> {
        let t = get(name).ok_or_else(|| FoldError::Missing(name.into()))?;
        if t.len() != n {
            return Err(FoldError::Len {
                name: name.into(),
                expected: n,
                got: t.len(),
            });
        }
        Ok(t)
    };
    pack_folded(cfg, |name, shape| {
        let n = numel(shape);
        // Folded conv tensors are `<prefix>.weight` / `<prefix>.bias` where the official ones
        // are `<prefix>.c.weight` and `<prefix>.bn.*`; detect them by the `.bn.` sibling.
        let (prefix, leaf) = name.rsplit_once('.').unwrap_or(("", name));
        let is_conv = shape.len() == 4 || (leaf == "bias" && is_conv_prefix(prefix));
        if !is_conv {
            return Ok(fetch(name, n)?.to_vec());
        }
        let out = if leaf == "weight" { shape[0] } else { n };
        let bn = |s: &str| -> Name {
            let mut x = Name::new();
            let _ = core::fmt::Write::write_fmt(&mut x, format_args!("{prefix}.bn.{s}"));
            x
        };
        let gamma = fetch(&bn("weight"), out)?;
        let beta = fetch(&bn("bias"), out)?;
        let mean = fetch(&bn("running_mean"), out)?;
        let var = fetch(&bn("running_var"), out)?;
        let scale: Vec<f32> = gamma
            .iter()
            .zip(var)
            .map(|(g, v)| g / libm::sqrtf(v + BN_EPS))
            .collect();
        if leaf == "weight" {
            let mut cw = Name::new();
            let _ = core::fmt::Write::write_fmt(&mut cw, format_args!("{prefix}.c.weight"));
            let w = fetch(&cw, n)?;
            let per = n / out;
            Ok(w.iter()
                .enumerate()
                .map(|(i, v)| v * scale[i / per])
                .collect())
        } else {
            Ok(beta
                .iter()
                .zip(mean)
                .zip(&scale)
                .map(|((b, m), s)| b - m * s)
                .collect())
        }
    })
}

/// The folded blob of `cfg` with [`synthetic_state_dict`](crate::params::synthetic_state_dict)'s
/// deterministic weights for `seed`: what tests, benchmarks, fuzz seeds, replay vectors and
/// the host's latency and cost measurements run a config with.
pub fn synthetic_blob(cfg: &ModelConfig, seed: u64) -> Result<Vec<f32>, FoldError> {
    let sd = crate::params::synthetic_state_dict(cfg, seed);
    fold_state_dict(cfg, |n| {
        sd.iter().find(|t| t.name == n).map(|t| &t.values[..])
    })
}

/// Whether a folded-tensor prefix names a Conv2d_BN (its weight is 4-D).
fn is_conv_prefix(prefix: &str) -> bool {
    prefix.starts_with("patch_embed.seq.")
        || prefix.ends_with(".conv1")
        || prefix.ends_with(".conv2")
        || prefix.ends_with(".conv3")
        || prefix.ends_with(".local_conv")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::{for_each_tensor, synthetic_state_dict};

    #[test]
    fn folding_matches_conv_then_bn_on_a_pixel() {
        let cfg = ModelConfig::tiny_vit_mcu_m4();
        let sd = synthetic_state_dict(&cfg, 7);
        let get = |n: &str| sd.iter().find(|t| t.name == n).map(|t| &t.values[..]);
        let blob = fold_state_dict(&cfg, get).unwrap();
        // Stem conv1, output channel 3, on an all-ones input patch: conv = sum of the kernel.
        let w = get("patch_embed.seq.0.c.weight").unwrap();
        let per = 9;
        let conv: f32 = w[3 * per..4 * per].iter().sum();
        let (g, b, m, v) = (
            get("patch_embed.seq.0.bn.weight").unwrap()[3],
            get("patch_embed.seq.0.bn.bias").unwrap()[3],
            get("patch_embed.seq.0.bn.running_mean").unwrap()[3],
            get("patch_embed.seq.0.bn.running_var").unwrap()[3],
        );
        let reference = (conv - m) / (v + BN_EPS).sqrt() * g + b;
        let half = 8; // E0 / 2, in_chans 1: weight [8, 1, 3, 3], bias at the next aligned slot.
        let fw: f32 = blob[3 * per..4 * per].iter().sum();
        let fb = blob[half * per + 3];
        assert!(
            (fw + fb - reference).abs() < 1e-5,
            "{} vs {reference}",
            fw + fb
        );
    }

    #[test]
    fn a_missing_tensor_is_named() {
        let cfg = ModelConfig::tiny_vit_mcu_m4();
        let sd = synthetic_state_dict(&cfg, 7);
        let err = fold_state_dict(&cfg, |n| {
            if n == "layers.1.blocks.0.attn.qkv.bias" {
                None
            } else {
                sd.iter().find(|t| t.name == n).map(|t| &t.values[..])
            }
        })
        .unwrap_err();
        assert_eq!(
            err,
            FoldError::Missing("layers.1.blocks.0.attn.qkv.bias".into())
        );
        let mut n = 0;
        for_each_tensor(&cfg, |_, _, _| n += 1);
        assert_eq!(sd.len(), n);
    }
}
