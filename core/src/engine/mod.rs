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
//! - [`Limits`] caps what a network may ask of an engine: its multiply-accumulates per image
//!   ([`macs`]) and the engine's memory. Every engine checks the declared work and memory
//!   against the limits its [`Weights`] carry before it allocates or loops, so a file that
//!   parses can still not make an engine hang or exhaust the host.
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
    /// The network needs more of a resource (named, with its unit) than [`Limits`] allow.
    OverLimit {
        what: &'static str,
        needed: u64,
        limit: u64,
    },
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
            EngineError::OverLimit {
                what,
                needed,
                limit,
            } => write!(
                f,
                "the model needs {needed} {what}, above the limit of {limit}"
            ),
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

/// Explicit ceilings on what one network may ask of an engine, checked before the engine
/// allocates or loops. The defaults are generous: about 7 times the work of the largest preset
/// (`tiny_vit_21m_512`, about 27 G multiply-accumulates, 0.5 GB for the fast engine) and 8 GiB
/// of engine memory, so only users of much larger models need to raise them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most multiply-accumulates one image may take ([`macs`]).
    pub max_macs: u64,
    /// Most bytes of engine memory: the exact engine's arena ([`arena_len`] values of 4
    /// bytes), or everything the fast engine allocates (packed weights, gathered attention
    /// biases and its workspace).
    pub max_memory: u64,
}

impl Limits {
    /// The defaults (see the type's doc).
    pub const DEFAULT: Limits = Limits {
        max_macs: 200_000_000_000,
        max_memory: 8 << 30,
    };

    /// No limit beyond what the arithmetic can represent.
    pub const NONE: Limits = Limits {
        max_macs: u64::MAX,
        max_memory: u64::MAX,
    };

    /// The network's multiply-accumulates per image, if within [`Limits::max_macs`].
    pub fn check_macs(&self, cfg: &ModelConfig) -> Result<u64, EngineError> {
        let needed = macs(cfg)?;
        over(self.max_macs, needed, "multiply-accumulates per image")?;
        Ok(needed)
    }

    /// `bytes` of engine memory, if within [`Limits::max_memory`].
    pub fn check_memory(&self, bytes: u64) -> Result<(), EngineError> {
        over(self.max_memory, bytes, "bytes of engine memory")
    }

    /// The exact engine's arena layout for `cfg`, after checking its work and its arena
    /// against the limits: what a caller sizes the arena from before allocating it.
    pub fn check_exact(&self, cfg: &ModelConfig) -> Result<ArenaPlan, EngineError> {
        let plan = arena_plan(cfg)?;
        self.check_macs(cfg)?;
        let bytes = (plan.total() as u64)
            .checked_mul(4)
            .ok_or(EngineError::TooLarge)?;
        self.check_memory(bytes)?;
        Ok(plan)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}

fn over(limit: u64, needed: u64, what: &'static str) -> Result<(), EngineError> {
    if needed > limit {
        return Err(EngineError::OverLimit {
            what,
            needed,
            limit,
        });
    }
    Ok(())
}

/// Folded weights of one network, borrowed from a packed blob, with the [`Limits`] the engines
/// check before running it.
#[derive(Clone, Copy, Debug)]
pub struct Weights<'a> {
    cfg: ModelConfig,
    blob: &'a [f32],
    limits: Limits,
}

impl<'a> Weights<'a> {
    /// Wraps a packed blob (see the module doc) after checking the config and the blob length.
    /// The engines will hold the network to [`Limits::DEFAULT`]; see [`Weights::with_limits`].
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
        Ok(Weights {
            cfg: *cfg,
            blob,
            limits: Limits::DEFAULT,
        })
    }

    /// The same weights, held to other limits.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The limits the engines check before running these weights.
    pub fn limits(&self) -> &Limits {
        &self.limits
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

/// Checks the buffers of a one-image run of `cfg` (the f32 `exact` engine's and the int8
/// engine's, in that order): `input` values of one image ([`input_len`]), `logits` values of
/// one row of classes, and an arena of at least `needed` values.
pub fn check_buffers(
    cfg: &ModelConfig,
    input: usize,
    logits: usize,
    arena: usize,
    needed: usize,
) -> Result<(), EngineError> {
    let n_in = input_len(cfg)?;
    if input != n_in {
        return Err(EngineError::InputLen {
            expected: n_in,
            got: input,
        });
    }
    let classes = cfg.num_classes as usize;
    if logits != classes {
        return Err(EngineError::LogitsLen {
            expected: classes,
            got: logits,
        });
    }
    if arena < needed {
        return Err(EngineError::ArenaTooSmall { needed, got: arena });
    }
    Ok(())
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

pub(crate) fn mul(a: usize, b: usize) -> Result<usize, EngineError> {
    a.checked_mul(b).ok_or(EngineError::TooLarge)
}

pub(crate) fn add(a: usize, b: usize) -> Result<usize, EngineError> {
    a.checked_add(b).ok_or(EngineError::TooLarge)
}

/// Nominal multiply-accumulates of one forward pass: every conv tap (padding taps included),
/// every Linear, and the two attention products over padded windows (`q k^T` and `p v`).
/// LayerNorm, softmax, GELU and the residual adds are not counted. Both engines do this work.
///
/// Computed in checked `u64`: for any config [`ModelConfig::validate`] accepts it is below
/// 2^62; [`EngineError::TooLarge`] only for configs beyond the bounds.
pub fn macs(cfg: &ModelConfig) -> Result<u64, EngineError> {
    cfg.validate()?;
    let m = |a: u64, b: u64| a.checked_mul(b).ok_or(EngineError::TooLarge);
    let mut n = 0u64;
    let mut acc = |v: u64| -> Result<(), EngineError> {
        n = n.checked_add(v).ok_or(EngineError::TooLarge)?;
        Ok(())
    };
    let r = cfg.stage_resolutions().map(u64::from);
    let e = cfg.embed_dims.map(u64::from);
    let (cin, half) = (u64::from(cfg.in_chans), e[0] / 2);
    let w1 = u64::from(cfg.img_size).div_ceil(2);
    // Stem: two 3x3 convs.
    acc(m(m(m(half, cin)?, 9)?, m(w1, w1)?)?)?;
    acc(m(m(m(e[0], half)?, 9)?, m(r[0], r[0])?)?)?;
    // MBConv: two 1x1 convs and a 3x3 depthwise per pixel.
    let hid0 = m(e[0], u64::from(cfg.mbconv_expand_ratio))?;
    let per_px = m(m(2, hid0)?, e[0])?
        .checked_add(m(hid0, 9)?)
        .ok_or(EngineError::TooLarge)?;
    acc(m(m(u64::from(cfg.depths[0]), m(r[0], r[0])?)?, per_px)?)?;
    for s in 0..STAGES {
        if s > 0 {
            let (c, ws) = (e[s], u64::from(cfg.window_sizes[s]));
            let heads = u64::from(cfg.num_heads[s]);
            let side = r[s].div_ceil(ws);
            let (t, nwin) = (m(ws, ws)?, m(side, side)?);
            let hid = m(c, u64::from(cfg.mlp_ratio))?;
            let k = u64::from(cfg.local_conv_size);
            let tokens = m(r[s], r[s])?;
            let parts = [
                m(m(m(nwin, t)?, 3)?, m(c, c)?)?, // qkv over padded windows
                m(m(m(2, nwin)?, m(heads, t)?)?, m(t, c / heads)?)?, // q k^T and p v
                m(tokens, m(c, c)?)?,             // proj
                m(tokens, m(c, m(k, k)?)?)?,      // local conv
                m(tokens, m(m(2, c)?, hid)?)?,    // MLP
            ];
            let mut block = 0u64;
            for p in parts {
                block = block.checked_add(p).ok_or(EngineError::TooLarge)?;
            }
            acc(m(u64::from(cfg.depths[s]), block)?)?;
        }
        if s + 1 < STAGES {
            let (a, b) = (m(r[s], r[s])?, m(r[s + 1], r[s + 1])?);
            acc(m(a, m(e[s], e[s + 1])?)?)?;
            acc(m(b, m(e[s + 1], 9)?)?)?;
            acc(m(b, m(e[s + 1], e[s + 1])?)?)?;
        }
    }
    acc(m(u64::from(cfg.num_classes), e[3])?)?;
    Ok(n)
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
    fn macs_of_a_tiny_network_by_hand() {
        // 8 px grey, widths 2/2/2/2, one block each, windows 1, one head, 3 classes.
        let cfg = ModelConfig {
            in_chans: 1,
            img_size: 8,
            num_classes: 3,
            embed_dims: [2; 4],
            depths: [1; 4],
            num_heads: [1; 4],
            window_sizes: [1; 4],
            mlp_ratio: 1,
            mbconv_expand_ratio: 1,
            local_conv_size: 1,
            drop_path_rate: 0.0,
        };
        // Resolutions 2, 1, 1, 1; the stem's first conv runs at 4x4.
        let stem = 9 * 16 + 2 * 9 * 4;
        let mbconv = 4 * (2 * 2 * 2 + 2 * 9);
        let merge0 = 4 * 4 + 2 * 9 + 4;
        let merge = 4 + 2 * 9 + 4;
        let block = 12 + 2 * 2 + 4 + 2 + 2 * 4;
        assert_eq!(
            macs(&cfg),
            Ok(stem + mbconv + merge0 + 2 * merge + 3 * block + 3 * 2)
        );
        // The figure the README gives for the M4 preset.
        assert_eq!(macs(&ModelConfig::tiny_vit_mcu_m4()), Ok(4_741_216));
    }

    /// Every preset, and 21m at 1024 px with 21,841 classes, runs under the default limits.
    #[test]
    fn presets_and_large_models_fit_the_default_limits() {
        let big = ModelConfig::tiny_vit_21m_512()
            .with_img_size(1024)
            .with_num_classes(21_841);
        let mut cfgs: std::vec::Vec<ModelConfig> = crate::config::PRESET_NAMES
            .iter()
            .map(|n| ModelConfig::preset(n).unwrap())
            .collect();
        cfgs.push(big);
        for cfg in cfgs {
            let plan = Limits::DEFAULT.check_exact(&cfg).unwrap();
            assert_eq!(plan, arena_plan(&cfg).unwrap());
            #[cfg(feature = "fast")]
            for kernel in [
                fast::Kernel::Avx512,
                fast::Kernel::Avx2,
                fast::Kernel::Portable,
            ] {
                let bytes = fast::FastModel::memory(&cfg, kernel).unwrap();
                Limits::DEFAULT.check_memory(bytes).unwrap();
            }
        }
    }

    #[test]
    fn limits_refuse_by_name_and_figure() {
        let cfg = ModelConfig::tiny_vit_mcu_m4();
        let work = macs(&cfg).unwrap();
        let tight = Limits {
            max_macs: work - 1,
            max_memory: u64::MAX,
        };
        let err = tight.check_exact(&cfg).unwrap_err();
        assert_eq!(
            err,
            EngineError::OverLimit {
                what: "multiply-accumulates per image",
                needed: work,
                limit: work - 1
            }
        );
        assert_eq!(
            std::format!("{err}"),
            std::format!(
                "the model needs {work} multiply-accumulates per image, above the limit of {}",
                work - 1
            )
        );
        let arena = arena_len(&cfg).unwrap() as u64 * 4;
        let tight = Limits {
            max_macs: u64::MAX,
            max_memory: arena - 1,
        };
        assert!(matches!(
            tight.check_exact(&cfg),
            Err(EngineError::OverLimit { needed, .. }) if needed == arena
        ));
        let exact_fit = Limits {
            max_macs: work,
            max_memory: arena,
        };
        assert!(exact_fit.check_exact(&cfg).is_ok());
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

/// Defect 2 of issue 16 and its generalisation: every size derived from a config that
/// validates is computed without overflow; configs beyond the bounds are refused.
#[cfg(test)]
mod bounded_sizes {
    use super::*;
    use crate::config::bounds;
    use crate::params;
    use proptest::prelude::*;

    /// A value in `1..=max`, often at or near the bound.
    fn field(max: u32) -> impl Strategy<Value = u32> {
        prop_oneof![1..=max.min(64), (max - max / 8)..=max]
    }

    /// A config within the bounds (it may still be refused: a width its heads do not divide)
    /// or, one time in three, one with a field pushed beyond its bound.
    fn config() -> impl Strategy<Value = ModelConfig> {
        let fields = (
            (
                prop_oneof![Just(1u32), Just(3)],
                field(bounds::IMG_SIZE),
                field(bounds::NUM_CLASSES),
            ),
            proptest::array::uniform4(field(bounds::EMBED_DIM)),
            proptest::array::uniform4(prop_oneof![1u32..=4, 250u32..=bounds::DEPTH]),
            proptest::array::uniform4(1u32..=8),
            proptest::array::uniform4(field(bounds::WINDOW)),
            (
                field(bounds::RATIO),
                field(bounds::RATIO),
                field(bounds::LOCAL_CONV),
            ),
        );
        let beyond = prop_oneof![
            2 => Just(None),
            1 => (0usize..8, prop_oneof![1u32..=4, Just(u32::MAX)]).prop_map(Some),
        ];
        (fields, beyond).prop_map(
            |(((ch, img, nc), e, depths, heads, ws, (mlp, ex, k)), beyond)| {
                let mut c = ModelConfig {
                    in_chans: ch,
                    img_size: img,
                    num_classes: nc,
                    // Widths rounded down to a multiple of the heads (at least one head each).
                    embed_dims: core::array::from_fn(|s| (e[s] / heads[s]).max(1) * heads[s]),
                    depths,
                    num_heads: heads,
                    window_sizes: ws,
                    mlp_ratio: mlp,
                    mbconv_expand_ratio: ex,
                    local_conv_size: k | 1,
                    drop_path_rate: 0.0,
                };
                if let Some((which, by)) = beyond {
                    let past = |max: u32| max.saturating_add(by);
                    match which {
                        0 => c.img_size = past(bounds::IMG_SIZE),
                        1 => c.num_classes = past(bounds::NUM_CLASSES),
                        2 => c.embed_dims[1] = past(bounds::EMBED_DIM),
                        // Kept small enough to walk in a test.
                        3 => c.depths[2] = bounds::DEPTH + by.min(4),
                        4 => c.window_sizes[3] = past(bounds::WINDOW),
                        5 => c.mlp_ratio = past(bounds::RATIO),
                        6 => c.mbconv_expand_ratio = past(bounds::RATIO),
                        _ => c.local_conv_size = past(bounds::LOCAL_CONV) | 1,
                    }
                }
                c
            },
        )
    }

    /// Parameter count summed in `u128` over the official shapes.
    fn wide_count(cfg: &ModelConfig, folded: bool) -> u128 {
        let mut n = 0u128;
        let mut f = |_: &str, s: &[usize]| n += s.iter().map(|d| *d as u128).product::<u128>();
        if folded {
            params::for_each_folded(cfg, &mut f);
        } else {
            params::for_each_param(cfg, &mut f);
        }
        n
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 256,
            rng_seed: proptest::test_runner::RngSeed::Fixed(0x7417_0016),
            ..ProptestConfig::default()
        })]

        #[test]
        fn sizes_of_valid_configs_never_overflow(cfg in config()) {
            let params_wide = wide_count(&cfg, false);
            match cfg.validate() {
                Ok(()) => {
                    prop_assert!(params_wide < 1 << 42, "{:?}", cfg);
                    prop_assert_eq!(params::param_count(&cfg) as u128, params_wide);
                    prop_assert_eq!(params::folded_count(&cfg) as u128, wide_count(&cfg, true));
                    let m = macs(&cfg);
                    prop_assert!(matches!(m, Ok(v) if v < 1 << 62), "{:?}: {:?}", cfg, m);
                    prop_assert!(arena_len(&cfg).is_ok());
                    prop_assert!(params::folded_blob_len(&cfg) < usize::MAX);
                    #[cfg(feature = "fast")]
                    for kernel in [fast::Kernel::Avx512, fast::Kernel::Portable] {
                        let bytes = fast::FastModel::memory(&cfg, kernel);
                        prop_assert!(matches!(bytes, Ok(v) if v < 1 << 62), "{:?}", bytes);
                    }
                }
                Err(_) => {
                    // Refused configs still get answers, never a panic or a wrapped count.
                    prop_assert!(macs(&cfg).is_err());
                    prop_assert!(arena_len(&cfg).is_err());
                    let p = params::param_count(&cfg) as u128;
                    prop_assert!(p == params_wide || p == u64::MAX as u128);
                }
            }
        }
    }

    /// The configs that overflowed `param_count` before the bounds (a huge window and MLP
    /// ratio, defect 2) are refused, and their counts saturate instead of wrapping.
    #[test]
    fn the_overflowing_configs_of_defect_2_are_refused() {
        let mut cfg = ModelConfig::tiny_vit_21m_512();
        cfg.window_sizes = [u32::MAX; 4];
        cfg.mlp_ratio = u32::MAX;
        assert!(matches!(
            cfg.validate(),
            Err(crate::config::ConfigError::TooLarge {
                field: "mlp_ratio",
                ..
            })
        ));
        assert!(wide_count(&cfg, false) > u64::MAX as u128);
        assert_eq!(params::param_count(&cfg), u64::MAX);
        assert_eq!(params::folded_count(&cfg), u64::MAX);
        assert!(macs(&cfg).is_err());
    }
}
