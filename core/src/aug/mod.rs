//! Replayable data augmentation: one `u32` seed per sample rebuilds exactly the view the
//! teacher saw, on any machine, with any number of workers, GPUs or shards.
//!
//! The ops follow timm / PIL semantics (timm `create_transform(224, is_training=True,
//! auto_augment='rand-m9-mstd0.5-inc1', re_prob=0.25, interpolation='bicubic')`) but use integer,
//! fixed-point or scalar IEEE arithmetic with `libm` only, so outputs are bit-identical on
//! x86_64, aarch64 and Cortex-M. No allocator: callers hand in the output and a scratch buffer.
//!
//! # API
//!
//! Seeds and replay order (all pure functions of their arguments):
//! - [`AUG_VERSION`]: names the draw order and the op semantics; any change bumps it.
//! - [`sample_seed`]`(run_seed, epoch, index) -> u32`: the seed of one sample in one epoch.
//! - [`epoch_permutation`]`(run_seed, epoch, n, position) -> index` and its inverse
//!   [`epoch_position`]: the epoch's sample order, computed one element at a time (no table).
//! - [`pair_partner`]`(run_seed, epoch, n, index)`: the mixup/cutmix partner, the neighbour in
//!   the epoch permutation (positions `2j`, `2j+1`); `None` for the last sample of an odd `n`.
//! - [`pair_seed`]`(seed_a, seed_b)`: the (symmetric) seed of a pair's mix parameters.
//!
//! One training view:
//! - [`AugConfig`] (serde; presets by name with [`preset()`], overrides with
//!   [`AugConfig::set`]).
//! - [`decode`]`(cfg, seed, src_w, src_h) -> AugParams`: every random decision, drawn in the
//!   order documented on [`decode`].
//! - [`apply`]`(cfg, &params, src, out, scratch)`; [`replay`] = decode + apply;
//!   [`scratch_len`] sizes `scratch`.
//! - [`apply_op`]: one RandAugment op at a given magnitude (for tests and `tinyvit augment`).
//! - [`normalize`] to f32 CHW; [`eval_transform`] (resize to size/crop_pct, centre crop).
//! - Pair mixing on normalised f32 images: [`mix_params`], [`apply_mix`]; the mixed soft target
//!   is `lam * target(own) + (1 - lam) * target(partner)` (see
//!   [`crate::softlabel::sparse_ce_and_grad_mixed`]).
//!
//! # Pipeline and draw order (AUG_VERSION 1)
//!
//! `RandomResizedCrop` (+ resize, PIL resampling) -> horizontal flip -> RandAugment ops (or
//! colour jitter when RandAugment is off) -> random erasing on the u8 view. Normalisation and
//! pair mixing follow outside [`apply`]. [`decode`] documents every draw.
//!
//! # Deviations from timm, on purpose
//! - Crop sides are at least 1 pixel (timm can round a tiny image's crop to 0 and fail).
//! - Random erasing runs on the u8 view: each erased value is the u8 level whose interval
//!   contains `255 * (mean + std * z)`, `z ~ N(0, 1)`, clamped to 0..255, so after
//!   normalisation it is timm's normal noise quantised to grey levels and clipped to the
//!   displayable range. The noise comes from its own stream of the same seed.
//! - Colour jitter has no hue term.
//! - PosterizeIncreasing at magnitude 10 keeps 0 bits (all black), as Pillow < 13 did; Pillow 13
//!   rejects `posterize(img, 0)`, so timm 1.0.31 on Pillow 13 raises for that draw (~2% of
//!   PosterizeIncreasing draws at m9 mstd0.5).

mod affine;
mod config;
mod crop;
mod enhance;
mod erase;
mod eval;
mod image;
mod jitter;
mod mix;
mod normalize;
pub mod preset;
mod randaug;
mod resize;
mod rng;
mod wide;

pub use config::{
    AugConfig, CropConfig, EraseConfig, Interpolation, JitterConfig, MixConfig, RandAugConfig,
};
pub use eval::{eval_dims, eval_scratch_len, eval_transform, EvalDims, EVAL_CROP_PCT};
pub use image::{fnv1a64, image_len, test_pattern, Fnv64, ImageMut, ImageRef};
pub use mix::{apply_mix, mix_params, MixKind, MixParams};
pub use normalize::{normalize, CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD};
pub use preset::{preset, PRESETS};
pub use randaug::{apply_op, Op, OpArg};
pub use resize::{resize, resize_scratch_len};

use serde::{Deserialize, Serialize};

/// Version of the seed -> parameters -> pixels contract. Stores record it and refuse a
/// mismatch. Bump on any change of draw order, op semantics or arithmetic.
pub const AUG_VERSION: u32 = 1;

/// Most RandAugment ops per image.
pub const MAX_RANDAUG_OPS: usize = 4;

/// Largest accepted image side (keeps every size computation far from overflow).
pub const MAX_SIDE: u32 = 16384;

/// Why an augmentation call cannot proceed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AugError {
    /// An image side is zero.
    EmptyImage { width: u32, height: u32 },
    /// Channels must be 1 or 3.
    Channels(u32),
    /// A buffer has the wrong length (`what` names it).
    BufferSize {
        what: &'static str,
        expected: usize,
        actual: usize,
    },
    /// A size is too large (`0` names it).
    TooLarge(&'static str),
    /// A config knob is invalid (`field` names it).
    Config {
        field: &'static str,
        reason: &'static str,
    },
    /// Parameters do not fit the image they are applied to (`field` names the parameter).
    Params(&'static str),
    /// Output and input images disagree (`field` names what).
    Mismatch(&'static str),
    /// A value could not be parsed (`key` names what was expected).
    Value { key: &'static str },
    /// An override key is not a knob of [`AugConfig`].
    UnknownKey,
    /// A preset name is not one of [`PRESETS`].
    UnknownPreset,
    /// An op name is not one of [`Op::ALL`].
    UnknownOp,
    /// A permutation position or sample index is not below `n`, or `n` is 0.
    OutOfRange { what: &'static str },
}

impl core::fmt::Display for AugError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::EmptyImage { width, height } => {
                write!(f, "image is empty ({width}x{height})")
            }
            Self::Channels(c) => write!(f, "channels: {c} (expected 1 or 3)"),
            Self::BufferSize {
                what,
                expected,
                actual,
            } => write!(f, "{what}: {actual} bytes, expected {expected}"),
            Self::TooLarge(what) => write!(f, "{what}: too large"),
            Self::Config { field, reason } => write!(f, "augmentation config {field}: {reason}"),
            Self::Params(field) => {
                write!(f, "augmentation parameters {field}: do not fit the image")
            }
            Self::Mismatch(field) => write!(f, "{field}: input and output disagree"),
            Self::Value { key } => write!(f, "cannot parse value ({key})"),
            Self::UnknownKey => write!(f, "unknown augmentation knob"),
            Self::UnknownPreset => write!(
                f,
                "unknown augmentation preset (expected in22k-distill, in1k-scratch or light)"
            ),
            Self::UnknownOp => write!(f, "unknown RandAugment op"),
            Self::OutOfRange { what } => write!(f, "{what}: out of range"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for AugError {}

// ---------------------------------------------------------------------------------------------
// Seeds and the epoch order.

/// The seed of sample `index` in `epoch` of the run seeded `run_seed`:
/// `(mix(mix(mix(run_seed) ^ epoch) ^ index) >> 32)` with SplitMix64's finaliser `mix`.
/// Independent of sharding, batching and worker count by construction.
pub fn sample_seed(run_seed: u64, epoch: u32, index: u64) -> u32 {
    (rng::mix64(rng::mix64(rng::mix64(run_seed) ^ u64::from(epoch)) ^ index) >> 32) as u32
}

const PERM_TAG: u64 = 0x7065_726d_7574_6531; // "permute1"

/// Half-width in bits of the smallest even-width power of two `>= n`, and the round keys.
fn feistel_setup(run_seed: u64, epoch: u32, n: u64) -> (u32, [u64; 4]) {
    let bits = 64 - (n - 1).leading_zeros(); // bits to hold n - 1 (0 for n = 1)
    let half = bits.div_ceil(2);
    let mut k = rng::mix64(rng::mix64(run_seed ^ PERM_TAG) ^ u64::from(epoch));
    let mut keys = [0u64; 4];
    for key in &mut keys {
        *key = k;
        k = rng::mix64(k);
    }
    (half, keys)
}

fn feistel(x: u64, half: u32, keys: &[u64; 4], inverse: bool) -> u64 {
    let mask = if half == 0 {
        0
    } else {
        u64::MAX >> (64 - half)
    };
    let (mut l, mut r) = (if half == 0 { 0 } else { x >> half }, x & mask);
    if !inverse {
        for &k in keys {
            let nl = r;
            r = l ^ (rng::mix64(r ^ k) & mask);
            l = nl;
        }
    } else {
        for &k in keys.iter().rev() {
            let nr = l;
            l = r ^ (rng::mix64(l ^ k) & mask);
            r = nr;
        }
    }
    if half == 0 {
        r
    } else {
        (l << half) | r
    }
}

/// The sample index at `position` of `epoch`'s order over `n` samples: a keyed 4-round
/// Feistel permutation of the smallest `4^h >= n` domain, cycle-walked into `0..n`
/// (expected fewer than 4 steps). No table, O(1) memory, any `n` up to `u64::MAX`.
pub fn epoch_permutation(
    run_seed: u64,
    epoch: u32,
    n: u64,
    position: u64,
) -> Result<u64, AugError> {
    if n == 0 || position >= n {
        return Err(AugError::OutOfRange { what: "position" });
    }
    let (half, keys) = feistel_setup(run_seed, epoch, n);
    let mut x = feistel(position, half, &keys, false);
    while x >= n {
        x = feistel(x, half, &keys, false);
    }
    Ok(x)
}

/// The position of sample `index` in `epoch`'s order: the inverse of [`epoch_permutation`].
pub fn epoch_position(run_seed: u64, epoch: u32, n: u64, index: u64) -> Result<u64, AugError> {
    if n == 0 || index >= n {
        return Err(AugError::OutOfRange { what: "index" });
    }
    let (half, keys) = feistel_setup(run_seed, epoch, n);
    let mut x = feistel(index, half, &keys, true);
    while x >= n {
        x = feistel(x, half, &keys, true);
    }
    Ok(x)
}

/// The sample that `index` is mixed with in `epoch`: its neighbour in the epoch permutation
/// (positions `2j` and `2j + 1` form a pair). `Ok(None)` for the unpaired last sample of an odd
/// `n`, which is used unmixed.
pub fn pair_partner(
    run_seed: u64,
    epoch: u32,
    n: u64,
    index: u64,
) -> Result<Option<u64>, AugError> {
    let pos = epoch_position(run_seed, epoch, n, index)?;
    let other = pos ^ 1;
    if other >= n {
        return Ok(None);
    }
    epoch_permutation(run_seed, epoch, n, other).map(Some)
}

/// The seed of a pair's mix parameters from the two samples' stored seeds. Symmetric, so
/// both members derive the same parameters without knowing which one comes first.
pub fn pair_seed(seed_a: u32, seed_b: u32) -> u32 {
    let (lo, hi) = if seed_a <= seed_b {
        (seed_a, seed_b)
    } else {
        (seed_b, seed_a)
    };
    (rng::mix64((u64::from(lo) << 32 | u64::from(hi)) ^ rng::DOMAIN_MIX) >> 32) as u32
}

// ---------------------------------------------------------------------------------------------
// Parameters.

/// A crop rectangle in source pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CropBox {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

/// One drawn RandAugment op.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct OpStep {
    pub op: Op,
    /// Magnitude after noise and clipping, on the 0..10 scale.
    pub magnitude: f32,
    /// Whether signed ops (rotate, shear, translate, enhance) use the negative direction.
    pub negate: bool,
}

/// One drawn colour jitter: factors in the order they are applied.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct JitterStep {
    /// Application order: 0 brightness, 1 contrast, 2 saturation.
    pub order: [u8; 3],
    /// Factor per kind (indexed by kind, not by order); 1.0 = unchanged.
    pub factors: [f32; 3],
}

/// Every decision of one training view; see [`decode`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AugParams {
    /// The seed these parameters came from (random erasing draws its noise from it).
    pub seed: u32,
    pub src_width: u32,
    pub src_height: u32,
    pub crop: CropBox,
    pub flip: bool,
    /// Applied RandAugment ops, in order; `None` slots were drawn but skipped (p).
    pub ops: [Option<OpStep>; MAX_RANDAUG_OPS],
    pub jitter: Option<JitterStep>,
    /// The erased box in output pixels.
    pub erase: Option<CropBox>,
}

/// Draws every decision of one view from `seed`, for a `src_w x src_h` source.
///
/// Stream: `Pcg32::new(mix64(seed ^ 0x7469_6e79_7669_7401), 0x7469_6e79_7669_7401)`. Draws, in
/// order (`u` = `next_u32 / 2^32`, `int(a..=b)` = `a + (next_u32 * (b - a + 1)) >> 32`,
/// `N` = Box-Muller from two `next_u32`, cosine branch):
/// 1. Crop: up to 10 tries of `scale = lerp(u)`, `log_ratio = lerp(u)`; `w = round(sqrt(area *
///    scale * r))`, `h = round(sqrt(area * scale / r))` (ties to even); when `1 <= w <= W` and
///    `1 <= h <= H`: `y = int(0..=H-h)`, `x = int(0..=W-w)`, done. Else timm's centre fallback.
/// 2. Flip: one `u`, flip iff `u < hflip`.
/// 3. RandAugment (if on), per slot, always 5 draws: `op = int(0..=14)` (index in [`Op::ALL`]),
///    `u` (applied iff `u < prob`), `N` (magnitude `clip(m + std * N, 0, max)`; `std = 0` keeps
///    `m`), `u` (negate iff `u > 0.5`).
/// 4. Colour jitter (only if on and RandAugment is off): Fisher-Yates order of the 3 kinds with
///    `int(0..=2)`, `int(0..=1)`; then a factor `lerp(u)` for each kind with strength > 0.
/// 5. Erasing (if on): `u` (erase iff `u < prob`); then up to 10 tries of `area = lerp(u)`,
///    `log_aspect = lerp(u)`, `h = round(sqrt(A * area * r))`, `w = round(sqrt(A * area / r))`;
///    when `1 <= w < size` and `1 <= h < size`: `y = int(0..=size-h)`, `x = int(0..=size-w)`.
pub fn decode(cfg: &AugConfig, seed: u32, src_w: u32, src_h: u32) -> Result<AugParams, AugError> {
    cfg.validate()?;
    if src_w == 0 || src_h == 0 {
        return Err(AugError::EmptyImage {
            width: src_w,
            height: src_h,
        });
    }
    if src_w > MAX_SIDE || src_h > MAX_SIDE {
        return Err(AugError::TooLarge("source image side"));
    }
    let mut r = rng::stream(seed, rng::DOMAIN_PARAMS);
    let crop = crop::sample_crop(&mut r, &cfg.crop, src_w, src_h);
    let flip = rng::uniform(&mut r) < f64::from(cfg.hflip);
    let mut ops = [None; MAX_RANDAUG_OPS];
    if let Some(ra) = &cfg.randaug {
        for slot in ops.iter_mut().take(ra.num_ops as usize) {
            *slot = randaug::sample_step(&mut r, ra);
        }
    }
    let jitter = match (&cfg.randaug, &cfg.jitter) {
        (None, Some(j)) => Some(jitter::sample(&mut r, j)),
        _ => None,
    };
    let erase = match &cfg.erase {
        Some(e) => erase::sample_box(&mut r, e, cfg.size),
        None => None,
    };
    Ok(AugParams {
        seed,
        src_width: src_w,
        src_height: src_h,
        crop,
        flip,
        ops,
        jitter,
        erase,
    })
}

/// Scratch bytes [`apply`] needs for a `src_w x src_h x channels` source.
pub fn scratch_len(
    cfg: &AugConfig,
    src_w: u32,
    src_h: u32,
    channels: u32,
) -> Result<usize, AugError> {
    let out = image_len(cfg.size, cfg.size, channels)?;
    let rs = resize_scratch_len(src_w, src_h, cfg.size, cfg.size, channels)?;
    out.checked_add(rs).ok_or(AugError::TooLarge("scratch"))
}

/// Renders the view described by `params` from `src` into `out` (`cfg.size` square, same
/// channels as `src`). `scratch` needs [`scratch_len`] bytes; its content is irrelevant.
pub fn apply(
    cfg: &AugConfig,
    params: &AugParams,
    src: ImageRef<'_>,
    mut out: ImageMut<'_>,
    scratch: &mut [u8],
) -> Result<(), AugError> {
    cfg.validate()?;
    src.validate()?;
    out.validate()?;
    if out.width != cfg.size || out.height != cfg.size {
        return Err(AugError::Mismatch("output size vs config size"));
    }
    if out.channels != src.channels {
        return Err(AugError::Mismatch("channels"));
    }
    if params.src_width != src.width || params.src_height != src.height {
        return Err(AugError::Params("src_width/src_height"));
    }
    let c = params.crop;
    if c.width == 0
        || c.height == 0
        || u64::from(c.x) + u64::from(c.width) > u64::from(src.width)
        || u64::from(c.y) + u64::from(c.height) > u64::from(src.height)
    {
        return Err(AugError::Params("crop"));
    }
    let need = scratch_len(cfg, src.width, src.height, src.channels)?;
    if scratch.len() < need {
        return Err(AugError::BufferSize {
            what: "scratch",
            expected: need,
            actual: scratch.len(),
        });
    }
    let (tmp, rs) = scratch.split_at_mut(out.data.len());
    resize::resize_box(src, c, cfg.interpolation, out.reborrow(), rs)?;
    if params.flip {
        crop::hflip(out.reborrow());
    }
    // Ping-pong between `out` and `tmp`; `in_out` says where the current view lives.
    let mut in_out = true;
    let (w, h, ch) = (out.width, out.height, out.channels);
    let step = |f: &mut dyn FnMut(ImageRef<'_>, ImageMut<'_>) -> Result<(), AugError>,
                out: &mut [u8],
                tmp: &mut [u8],
                in_out: &mut bool|
     -> Result<(), AugError> {
        let (s, d) = if *in_out {
            (&*out, &mut *tmp)
        } else {
            (&*tmp, &mut *out)
        };
        f(
            ImageRef {
                width: w,
                height: h,
                channels: ch,
                data: s,
            },
            ImageMut {
                width: w,
                height: h,
                channels: ch,
                data: d,
            },
        )?;
        *in_out = !*in_out;
        Ok(())
    };
    if let Some(ra) = &cfg.randaug {
        for s in params.ops.iter().flatten() {
            let arg = randaug::op_arg(s.op, s.magnitude, s.negate, ra);
            step(
                &mut |a, b| randaug::apply_arg(arg, ra.fill, cfg.interpolation, a, b),
                out.data,
                tmp,
                &mut in_out,
            )?;
        }
    }
    if let Some(j) = &params.jitter {
        for &kind in &j.order {
            let factor = j.factors[usize::from(kind) % 3];
            step(
                &mut |a, b| jitter::apply_kind(kind, factor, a, b),
                out.data,
                tmp,
                &mut in_out,
            )?;
        }
    }
    if !in_out {
        out.data.copy_from_slice(tmp);
    }
    if let Some(b) = &params.erase {
        if u64::from(b.x) + u64::from(b.width) > u64::from(w)
            || u64::from(b.y) + u64::from(b.height) > u64::from(h)
        {
            return Err(AugError::Params("erase"));
        }
        erase::erase(out, *b, params.seed, cfg.mean, cfg.std);
    }
    Ok(())
}

/// [`apply`] from a part of the source: `region` holds the source pixels of the rectangle
/// at `(x, y)` of the `params.src_width x params.src_height` source, and must contain the
/// crop. Only the crop's pixels shape the view, so the bytes are those [`apply`] gives from
/// the whole source; a loader that can decode part of an image (a JPEG's crop) decodes the
/// crop only. `scratch` needs [`scratch_len`] bytes for the region's size.
pub fn apply_region(
    cfg: &AugConfig,
    params: &AugParams,
    region: ImageRef<'_>,
    x: u32,
    y: u32,
    out: ImageMut<'_>,
    scratch: &mut [u8],
) -> Result<(), AugError> {
    let c = params.crop;
    let inside = |start: u32, len: u32, at: u32, span: u32, total: u32| {
        u64::from(at) <= u64::from(start)
            && u64::from(start) + u64::from(len) <= u64::from(at) + u64::from(span)
            && u64::from(at) + u64::from(span) <= u64::from(total)
    };
    if !inside(c.x, c.width, x, region.width, params.src_width)
        || !inside(c.y, c.height, y, region.height, params.src_height)
    {
        return Err(AugError::Params("region does not contain the crop"));
    }
    let mut p = *params;
    p.src_width = region.width;
    p.src_height = region.height;
    p.crop.x = c.x - x;
    p.crop.y = c.y - y;
    apply(cfg, &p, region, out, scratch)
}

/// [`decode`] + [`apply`]: rebuilds the view of `seed` and returns its parameters.
pub fn replay(
    cfg: &AugConfig,
    seed: u32,
    src: ImageRef<'_>,
    out: ImageMut<'_>,
    scratch: &mut [u8],
) -> Result<AugParams, AugError> {
    let p = decode(cfg, seed, src.width, src.height)?;
    apply(cfg, &p, src, out, scratch)?;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_is_a_bijection_with_inverse() {
        for n in [1u64, 2, 3, 7, 16, 17, 100, 1000] {
            let mut seen = [false; 1000];
            for p in 0..n {
                let i = epoch_permutation(42, 3, n, p).unwrap();
                assert!(i < n);
                assert!(!seen[i as usize], "n {n}: {i} twice");
                seen[i as usize] = true;
                assert_eq!(epoch_position(42, 3, n, i).unwrap(), p);
            }
        }
        assert!(epoch_permutation(1, 0, 0, 0).is_err());
        assert!(epoch_permutation(1, 0, 5, 5).is_err());
        // Large n works without tables.
        let n = u64::MAX - 3;
        let i = epoch_permutation(9, 1, n, 12345).unwrap();
        assert_eq!(epoch_position(9, 1, n, i).unwrap(), 12345);
    }

    #[test]
    fn epochs_and_runs_shuffle_differently() {
        let a: [u64; 8] =
            core::array::from_fn(|p| epoch_permutation(1, 0, 1000, p as u64).unwrap());
        let b: [u64; 8] =
            core::array::from_fn(|p| epoch_permutation(1, 1, 1000, p as u64).unwrap());
        let c: [u64; 8] =
            core::array::from_fn(|p| epoch_permutation(2, 0, 1000, p as u64).unwrap());
        assert_ne!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn pairs_are_mutual() {
        let n = 11;
        let mut unpaired = 0;
        for i in 0..n {
            match pair_partner(5, 2, n, i).unwrap() {
                Some(j) => {
                    assert_ne!(i, j);
                    assert_eq!(pair_partner(5, 2, n, j).unwrap(), Some(i));
                }
                None => unpaired += 1,
            }
        }
        assert_eq!(unpaired, 1);
        assert_eq!(pair_seed(3, 9), pair_seed(9, 3));
        assert_ne!(pair_seed(3, 9), pair_seed(3, 10));
    }

    #[test]
    fn seeds_depend_on_every_input() {
        let s = sample_seed(1, 2, 3);
        assert_eq!(s, sample_seed(1, 2, 3));
        assert_ne!(s, sample_seed(0, 2, 3));
        assert_ne!(s, sample_seed(1, 1, 3));
        assert_ne!(s, sample_seed(1, 2, 4));
    }

    #[test]
    fn decode_fits_the_image() {
        let cfg = preset::in22k_distill();
        for seed in 0..500 {
            let p = decode(&cfg, seed, 300, 200).unwrap();
            assert!(p.crop.x + p.crop.width <= 300 && p.crop.y + p.crop.height <= 200);
            assert!(p.crop.width >= 1 && p.crop.height >= 1);
            if let Some(e) = p.erase {
                assert!(e.x + e.width <= 224 && e.y + e.height <= 224);
            }
            for s in p.ops.iter().flatten() {
                assert!((0.0..=10.0).contains(&s.magnitude));
            }
        }
    }

    /// A region holding the crop (exactly, or with a margin) gives the whole source's view;
    /// a region that misses part of the crop is refused.
    #[test]
    fn apply_region_equals_apply() {
        let (w, h) = (40u32, 30u32);
        let mut src = [0u8; 40 * 30 * 3];
        test_pattern(w, h, 3, &mut src).unwrap();
        let mut cfg = preset::in22k_distill();
        cfg.size = 24;
        let mut scratch = [0u8; 8192];
        let srcref = ImageRef::new(w, h, 3, &src).unwrap();
        let mut region = [0u8; 40 * 30 * 3];
        for seed in 0..60 {
            let p = decode(&cfg, seed, w, h).unwrap();
            let mut want = [0u8; 24 * 24 * 3];
            apply(
                &cfg,
                &p,
                srcref,
                ImageMut::new(24, 24, 3, &mut want).unwrap(),
                &mut scratch,
            )
            .unwrap();
            let c = p.crop;
            let margin = seed % 3;
            let (x0, y0) = (c.x.saturating_sub(margin), c.y.saturating_sub(margin));
            let (x1, y1) = (
                (c.x + c.width + margin).min(w),
                (c.y + c.height + margin).min(h),
            );
            let (rw, rh) = (x1 - x0, y1 - y0);
            for y in 0..rh {
                for x in 0..rw {
                    for ch in 0..3 {
                        region[((y * rw + x) * 3 + ch) as usize] =
                            src[(((y0 + y) * w + x0 + x) * 3 + ch) as usize];
                    }
                }
            }
            let r = ImageRef::new(rw, rh, 3, &region[..(rw * rh * 3) as usize]).unwrap();
            let mut got = [1u8; 24 * 24 * 3];
            apply_region(
                &cfg,
                &p,
                r,
                x0,
                y0,
                ImageMut::new(24, 24, 3, &mut got).unwrap(),
                &mut scratch,
            )
            .unwrap();
            assert_eq!(got, want, "seed {seed}");
            // Starting one column right of the crop misses its first column.
            let err = apply_region(
                &cfg,
                &p,
                r,
                c.x + 1,
                y0,
                ImageMut::new(24, 24, 3, &mut got).unwrap(),
                &mut scratch,
            );
            assert_eq!(
                err,
                Err(AugError::Params("region does not contain the crop"))
            );
        }
    }

    #[test]
    fn replay_runs_and_is_deterministic() {
        let (w, h) = (40u32, 30u32);
        let src: [u8; 40 * 30 * 3] = core::array::from_fn(|i| (i * 7 % 251) as u8);
        let mut cfg = preset::in22k_distill();
        cfg.size = 24;
        let mut scratch = [0u8; 8192];
        assert!(scratch_len(&cfg, w, h, 3).unwrap() <= scratch.len());
        let srcref = ImageRef::new(w, h, 3, &src).unwrap();
        for seed in 0..50 {
            let mut a = [0u8; 24 * 24 * 3];
            let mut b = [1u8; 24 * 24 * 3];
            replay(
                &cfg,
                seed,
                srcref,
                ImageMut::new(24, 24, 3, &mut a).unwrap(),
                &mut scratch,
            )
            .unwrap();
            replay(
                &cfg,
                seed,
                srcref,
                ImageMut::new(24, 24, 3, &mut b).unwrap(),
                &mut scratch,
            )
            .unwrap();
            assert_eq!(a, b);
        }
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        fn any_preset() -> impl Strategy<Value = AugConfig> {
            (0usize..PRESETS.len(), 1u32..48, any::<bool>()).prop_map(|(p, size, bilinear)| {
                let mut c = preset(PRESETS[p]).unwrap();
                c.size = size;
                if bilinear {
                    c.interpolation = Interpolation::Bilinear;
                }
                c
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(400))]

            /// Every seed on every source size decodes to parameters that fit, and renders.
            #[test]
            fn every_seed_every_size_renders(
                cfg in any_preset(),
                seed in any::<u32>(),
                w in 1u32..70,
                h in 1u32..70,
                grey in any::<bool>(),
            ) {
                let ch = if grey { 1 } else { 3 };
                let p = decode(&cfg, seed, w, h).unwrap();
                prop_assert!(p.crop.width >= 1 && p.crop.height >= 1);
                prop_assert!(p.crop.x + p.crop.width <= w && p.crop.y + p.crop.height <= h);
                if let Some(e) = p.erase {
                    prop_assert!(e.width >= 1 && e.x + e.width <= cfg.size && e.y + e.height <= cfg.size);
                }
                let mut src = std::vec![0u8; (w * h * ch) as usize];
                test_pattern(w, h, ch, &mut src).unwrap();
                let mut out = std::vec![0u8; (cfg.size * cfg.size * ch) as usize];
                let mut scratch = std::vec![0u8; scratch_len(&cfg, w, h, ch).unwrap()];
                apply(
                    &cfg,
                    &p,
                    ImageRef::new(w, h, ch, &src).unwrap(),
                    ImageMut::new(cfg.size, cfg.size, ch, &mut out).unwrap(),
                    &mut scratch,
                ).unwrap();
            }

            /// Large and extreme aspect sources decode to valid parameters.
            #[test]
            fn decode_large_sources(
                cfg in any_preset(),
                seed in any::<u32>(),
                w in 1u32..=MAX_SIDE,
                h in 1u32..=MAX_SIDE,
            ) {
                let p = decode(&cfg, seed, w, h).unwrap();
                prop_assert!(p.crop.width >= 1 && p.crop.height >= 1);
                prop_assert!(p.crop.x + p.crop.width <= w && p.crop.y + p.crop.height <= h);
            }

            /// Mix parameters are valid for every pair seed and size.
            #[test]
            fn mix_params_are_valid(seed in any::<u32>(), w in 1u32..300, h in 1u32..300) {
                let cfg = preset("in1k-scratch").unwrap().mix.unwrap();
                let m = mix_params(&cfg, seed, w, h).unwrap();
                prop_assert!((0.0..=1.0).contains(&m.lam));
                if let MixKind::Cutmix { x0, y0, x1, y1 } = m.kind {
                    prop_assert!(x0 <= x1 && x1 <= w && y0 <= y1 && y1 <= h);
                }
            }

            /// Eval views render for every source size.
            #[test]
            fn eval_every_size(w in 1u32..90, h in 1u32..90, size in 1u32..40, grey in any::<bool>()) {
                let ch = if grey { 1 } else { 3 };
                let mut src = std::vec![0u8; (w * h * ch) as usize];
                test_pattern(w, h, ch, &mut src).unwrap();
                let mut out = std::vec![0u8; (size * size * ch) as usize];
                let mut scratch = std::vec![0u8; eval_scratch_len(w, h, size, EVAL_CROP_PCT, ch).unwrap()];
                eval_transform(
                    ImageRef::new(w, h, ch, &src).unwrap(),
                    ImageMut::new(size, size, ch, &mut out).unwrap(),
                    EVAL_CROP_PCT,
                    Interpolation::Bicubic,
                    &mut scratch,
                ).unwrap();
            }
        }
    }
}
