//! TinyViT inference engines over folded (deployment) weights.
//!
//! # The API
//!
//! - [`Weights`] borrows one packed f32 blob holding every tensor of
//!   [`params::for_each_folded`] in that order, each padded to a
//!   multiple of [`FOLDED_ALIGN`](crate::params::FOLDED_ALIGN) values. It comes from a `.tvb`
//!   file ([`crate::tvb`], zero copy, possibly in flash) or from [`pack_folded`] (std) on the host.
//! - [`arena_len`] says, before running, how many f32 values of scratch memory the [`exact`]
//!   engine needs for a config; the caller owns that arena (a static buffer on a device).
//! - [`forward`] (= [`exact::forward`]) runs one image: input `[C, H, W]` already normalised,
//!   logits `[num_classes]` out. No allocation, no panic on bad sizes: every size is checked and
//!   reported as an [`EngineError`].
//! - `fast` (feature `fast`, host only) runs batches with packed, register-tiled GEMMs
//!   (AVX-512, AVX2 + FMA or portable kernels) over the same weights and agrees with `exact` to
//!   about 1e-6 relative.
//!
//! The `exact` engine is scalar with a fixed summation order, `libm` for every transcendental and
//! no fused multiply-add, so it gives bit-identical logits on x86_64 and thumbv7em.
//!
//! Semantics follow the reference (`TinyViT/models/tiny_vit.py` of microsoft/Cream, pinned by
//! `tests/tests/parity.rs`): exact erf GELU, per-head
//! interleaved qkv, relative bias index `|dy| * ws + |dx|`, windows zero-padded right/bottom
//! without a mask (padded tokens pass through the attention LayerNorm like real ones), local conv
//! without residual, GELU after the MBConv add, stride-2 PatchMerging, head = token mean ->
//! LayerNorm -> Linear.

pub mod exact;
#[cfg(feature = "fast")]
pub mod fast;
#[cfg(feature = "std")]
pub mod fold;
pub(crate) mod layers;

use crate::config::{ConfigError, ModelConfig, STAGES};
use crate::params::{self, align_up};

/// Why an inference call cannot run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EngineError {
    /// The config does not describe a network.
    Config(ConfigError),
    /// Sizes derived from the config overflow `usize` on this target.
    TooLarge,
    /// The weight blob has the wrong length (f32 values).
    WeightsLen { expected: usize, got: usize },
    /// The input has the wrong length (f32 values, `C*H*W` per image).
    InputLen { expected: usize, got: usize },
    /// The logits buffer has the wrong length.
    LogitsLen { expected: usize, got: usize },
    /// The arena is smaller than [`arena_len`].
    ArenaTooSmall { needed: usize, got: usize },
    /// The fast engine's kernel (named) needs instructions this CPU lacks.
    KernelUnsupported(&'static str),
}

impl core::fmt::Display for EngineError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            EngineError::Config(e) => write!(f, "invalid model config: {e}"),
            EngineError::TooLarge => write!(f, "model sizes overflow this target's usize"),
            EngineError::WeightsLen { expected, got } => {
                write!(f, "weights: expected {expected} f32 values, got {got}")
            }
            EngineError::InputLen { expected, got } => {
                write!(f, "input: expected {expected} f32 values, got {got}")
            }
            EngineError::LogitsLen { expected, got } => {
                write!(f, "logits: expected {expected} f32 values, got {got}")
            }
            EngineError::ArenaTooSmall { needed, got } => {
                write!(f, "arena: needs {needed} f32 values, got {got}")
            }
            EngineError::KernelUnsupported(k) => {
                write!(
                    f,
                    "the fast engine's {k} kernel needs instructions this CPU lacks"
                )
            }
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for EngineError {}

impl From<ConfigError> for EngineError {
    fn from(e: ConfigError) -> Self {
        EngineError::Config(e)
    }
}

/// Folded weights of one network, borrowed from a packed blob.
#[derive(Clone, Copy, Debug)]
pub struct Weights<'a> {
    cfg: ModelConfig,
    blob: &'a [f32],
}

impl<'a> Weights<'a> {
    /// Wraps a packed blob (see the module doc) after checking the config and the blob length.
    pub fn new(cfg: &ModelConfig, blob: &'a [f32]) -> Result<Self, EngineError> {
        cfg.validate()?;
        let expected = params::folded_blob_len(cfg);
        if expected == usize::MAX {
            return Err(EngineError::TooLarge);
        }
        if blob.len() != expected {
            return Err(EngineError::WeightsLen {
                expected,
                got: blob.len(),
            });
        }
        Ok(Weights { cfg: *cfg, blob })
    }

    /// The network these weights belong to.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// The packed blob.
    pub fn blob(&self) -> &'a [f32] {
        self.blob
    }

    /// Reads the tensors in forward order.
    pub(crate) fn reader(&self) -> Reader<'a> {
        Reader {
            blob: self.blob,
            pos: 0,
        }
    }
}

/// Sequential access to the packed tensors, in [`params::for_each_folded`] order.
pub(crate) struct Reader<'a> {
    blob: &'a [f32],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// The next tensor of `n` values (the padding after it is skipped).
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [f32], EngineError> {
        let end = self.pos.checked_add(n).ok_or(EngineError::TooLarge)?;
        let t = self
            .blob
            .get(self.pos..end)
            .ok_or(EngineError::WeightsLen {
                expected: end,
                got: self.blob.len(),
            })?;
        self.pos = align_up(end);
        Ok(t)
    }
}

/// Packs tensors into a blob for [`Weights::new`]: `get(name, shape)` returns the folded tensor
/// of that name, whose length must be the shape's element count.
#[cfg(feature = "std")]
pub fn pack_folded<E>(
    cfg: &ModelConfig,
    mut get: impl FnMut(&str, &[usize]) -> Result<std::vec::Vec<f32>, E>,
) -> Result<std::vec::Vec<f32>, E>
where
    E: From<EngineError>,
{
    cfg.validate().map_err(EngineError::from)?;
    let mut blob = std::vec::Vec::with_capacity(params::folded_blob_len(cfg));
    let mut err = None;
    params::for_each_folded(cfg, |name, shape| {
        if err.is_some() {
            return;
        }
        match get(name, shape) {
            Ok(t) if t.len() == params::numel(shape) => {
                blob.extend_from_slice(&t);
                blob.resize(align_up(blob.len()), 0.0);
            }
            Ok(t) => {
                err = Some(E::from(EngineError::WeightsLen {
                    expected: params::numel(shape),
                    got: t.len(),
                }))
            }
            Err(e) => err = Some(e),
        }
    });
    match err {
        Some(e) => Err(e),
        None => Ok(blob),
    }
}

/// Number of f32 values of one input image, `in_chans * img_size * img_size`.
pub fn input_len(cfg: &ModelConfig) -> Result<usize, EngineError> {
    let s = cfg.img_size as usize;
    (cfg.in_chans as usize)
        .checked_mul(s)
        .and_then(|v| v.checked_mul(s))
        .ok_or(EngineError::TooLarge)
}

/// Where the exact engine keeps what in its arena: two activation regions `A` and `B` (stage
/// outputs alternate between them, a PatchMerging reads one and writes the other) followed by a
/// scratch region sized for the hungriest layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArenaPlan {
    /// f32 values of region A (stage 0 and stage 2 activations).
    pub a: usize,
    /// f32 values of region B (stage 1 and stage 3 activations).
    pub b: usize,
    /// f32 values of the scratch region.
    pub scratch: usize,
}

impl ArenaPlan {
    /// Total f32 values.
    pub fn total(&self) -> usize {
        self.a + self.b + self.scratch
    }
}

fn mul(a: usize, b: usize) -> Result<usize, EngineError> {
    a.checked_mul(b).ok_or(EngineError::TooLarge)
}

fn add(a: usize, b: usize) -> Result<usize, EngineError> {
    a.checked_add(b).ok_or(EngineError::TooLarge)
}

/// Scratch needed by one attention block (see `exact::attention_block`): the padded window
/// `[T, C]`, one head's qkv `[T, 3*hd]`, a score row `[T]`, the head outputs `[T, C]` and a
/// projected token `[C]`.
pub(crate) fn attention_scratch(t: usize, c: usize, hd: usize) -> Result<usize, EngineError> {
    let mut s = mul(mul(t, c)?, 2)?;
    s = add(s, mul(mul(t, 3)?, hd)?)?;
    s = add(s, t)?;
    add(s, c)
}

/// The arena layout of the exact engine for `cfg`.
pub fn arena_plan(cfg: &ModelConfig) -> Result<ArenaPlan, EngineError> {
    cfg.validate()?;
    let r = cfg.stage_resolutions().map(|v| v as usize);
    let e = cfg.embed_dims.map(|v| v as usize);
    let mut act = [0usize; STAGES];
    for s in 0..STAGES {
        act[s] = mul(mul(r[s], r[s])?, e[s])?;
    }
    let a = act[0].max(act[2]);
    let b = act[1].max(act[3]);
    // Stem: a ring of three rows of the first conv's output.
    let w1 = (cfg.img_size as usize).div_ceil(2);
    let mut scratch = mul(mul(3, w1)?, e[0] / 2)?;
    // MBConv: ring of three expanded rows, one expanded token, one output token.
    let hid0 = mul(e[0], cfg.mbconv_expand_ratio as usize)?;
    scratch = scratch.max(add(add(mul(mul(3, r[0])?, hid0)?, hid0)?, e[0])?);
    for s in 0..STAGES {
        if s > 0 {
            let ws = cfg.window_sizes[s] as usize;
            let t = mul(ws, ws)?;
            let hd = e[s] / cfg.num_heads[s] as usize;
            scratch = scratch.max(attention_scratch(t, e[s], hd)?);
            // Local conv: ring of `local_conv_size` original rows and one output token.
            let k = cfg.local_conv_size as usize;
            scratch = scratch.max(add(mul(mul(k, r[s])?, e[s])?, e[s])?);
            // MLP: a normalised token and the hidden vector.
            scratch = scratch.max(add(e[s], mul(e[s], cfg.mlp_ratio as usize)?)?);
        }
        if s + 1 < STAGES {
            // PatchMerging: ring of three expanded input rows and one token.
            scratch = scratch.max(add(mul(mul(3, r[s])?, e[s + 1])?, e[s + 1])?);
        }
    }
    // Head: the pooled token.
    scratch = scratch.max(e[3]);
    let plan = ArenaPlan { a, b, scratch };
    add(add(a, b)?, scratch)?;
    Ok(plan)
}

/// f32 values of arena the exact engine needs for one image of `cfg` (multiply by 4 for bytes).
pub fn arena_len(cfg: &ModelConfig) -> Result<usize, EngineError> {
    Ok(arena_plan(cfg)?.total())
}

pub use exact::forward;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mcu_presets_fit_their_arena_budgets() {
        let h7 = arena_len(&ModelConfig::tiny_vit_mcu_h7()).unwrap() * 4;
        let m4 = arena_len(&ModelConfig::tiny_vit_mcu_m4()).unwrap() * 4;
        assert!(h7 <= 384 * 1024, "{h7}");
        assert!(m4 <= 192 * 1024, "{m4}");
    }

    #[test]
    fn weights_reject_a_wrong_length() {
        let cfg = ModelConfig::tiny_vit_mcu_m4();
        let n = params::folded_blob_len(&cfg);
        let blob = std::vec![0.0f32; n + 1];
        assert_eq!(
            Weights::new(&cfg, &blob).unwrap_err(),
            EngineError::WeightsLen {
                expected: n,
                got: n + 1
            }
        );
        assert!(Weights::new(&cfg, &blob[..n]).is_ok());
    }

    #[test]
    fn absurd_configs_are_errors_not_overflows() {
        let mut cfg = ModelConfig::tiny_vit_21m_512();
        cfg.img_size = 1 << 14;
        cfg.embed_dims = [1 << 16; 4];
        cfg.num_heads = [1; 4];
        // On 64-bit targets this fits; what matters is that it returns instead of panicking.
        let _ = arena_len(&cfg);
        cfg.in_chans = 2;
        assert!(matches!(arena_len(&cfg), Err(EngineError::Config(_))));
    }
}
