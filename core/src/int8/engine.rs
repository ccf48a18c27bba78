//! The int8 engine: the `exact` engine's graph, op by op, in integer arithmetic only.
//!
//! # Numerics
//! - Weights `i8`, symmetric per output channel; biases `i32` in accumulator units;
//!   accumulators `i32` ([`dot_i8`]).
//! - The residual stream of each stage (the `A`/`B` arena regions) is `i16` with one scale per
//!   stage, bounded by the file's `res_max` (32767; 127 makes it an int8 stream). Branches read
//!   it through LayerNorm and the local conv (which take `i16`) or through a per-tensor
//!   requantisation to `i8` (MBConv and PatchMerging inputs).
//! - Everything a matrix product reads is `i8`: LayerNorm and GELU outputs, q/k/v, attention
//!   outputs, MBConv and PatchMerging intermediates.
//! - GELU reads a table: the accumulator is requantised to an `i8` pre-activation (one scale
//!   per tensor) that indexes the layer's 256-entry table of `i8` outputs ([`gelu_table`],
//!   built in the arena from the file's two multipliers before the layer runs); MBConv's last
//!   GELU, on the residual sum, runs [`gelu_q12`] on Q12 per value. Scores are Q10
//!   (`q.k` requantised plus the Q10 bias table) and the softmax gives Q15 probabilities that
//!   weight `v` in an `i32` sum (`sum p_j <= 2^15 + T/2`, so `|sum p_j v_j| < 2^23`).
//! - Logits are `i32` in units of the file's logit scale.
//!
//! No float type appears in this module and it is compiled under
//! `deny(clippy::float_arithmetic)`; a test also checks the source names no float type.
//!
//! # Arena
//! `i32` words: regions `A` and `B` hold the `i16` stage activations (alternating as in
//! `exact`), then one scratch region sized for the hungriest layer, then the matrix kernels'
//! prepared activations, then two GELU tables of 256 bytes ([`arena_plan`]).
//!
//! # Matrix products two tokens at a time
//! Wherever two tokens go through the same matrix (the stem's second conv, MBConv and
//! PatchMerging 1x1s, qkv, proj, the MLP) they are prepared as a [`Pair`] and each weight
//! word read serves both ([`mat::pair_rows`]); a last odd token takes the one-vector kernels.
//! Integer sums: the grouping changes no bit.
#![deny(clippy::float_arithmetic)]

use super::att;
use super::dw;
use super::file::Model;
use super::ops::{
    dot_i8, gelu_q12, gelu_table, layer_norm, mat, requant, sat_i16, sat_i8, softmax_q15, I32s,
    Multiplier, Multipliers, GELU_TABLE,
};
use crate::config::{ModelConfig, STAGES};
use crate::engine::layers::stem_dims;
use crate::engine::{check_buffers, EngineError};
use mat::{Pair, Prepared};

/// Largest fan-in of any dot product: `2^16 * 2^14` plus a bias of at most `2^30` stays in
/// `i32`.
pub const MAX_FAN_IN: usize = 1 << 16;
/// Largest attention window (tokens): bounds the softmax's sums.
pub const MAX_WINDOW: usize = 1 << 14;
/// Largest local conv kernel area: it reads the `i16` stream, `|x w| < 2^22`, so 256 taps plus
/// the bias stay in `i32`.
pub const MAX_I16_TAPS: usize = 256;

/// Where the int8 engine keeps what, in `i32` words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArenaPlan {
    /// Words of region A (stages 0 and 2, `i16`).
    pub a: usize,
    /// Words of region B (stages 1 and 3, `i16`).
    pub b: usize,
    /// Words of the scratch region.
    pub scratch: usize,
    /// Words of the matrix kernels' prepared activations ([`mat::pair_words`] of the widest
    /// matrix fan-in).
    pub prep: usize,
    /// Words of the two GELU tables.
    pub gelu: usize,
}

impl ArenaPlan {
    /// Total words.
    pub fn total(&self) -> usize {
        self.a + self.b + self.scratch + self.prep + self.gelu
    }
}

fn mul(a: usize, b: usize) -> Result<usize, EngineError> {
    a.checked_mul(b).ok_or(EngineError::TooLarge)
}

fn add(a: usize, b: usize) -> Result<usize, EngineError> {
    a.checked_add(b).ok_or(EngineError::TooLarge)
}

fn w8(n: usize) -> usize {
    n.div_ceil(4)
}

fn w16(n: usize) -> usize {
    n.div_ceil(2)
}

/// Scratch words of one attention block: the normalised window `i8 [T, C]`, one head's qkv
/// `i8 [T, 3 hd]`, a score row `i32 [T]`, the head outputs `i8 [T, C]`, a zero token
/// `i16 [C]`, then for the lane forms ([`att`]) the head's values transposed `i8 [hd, T4]`
/// (`T4`: `T` rounded up to a multiple of 4), the lanes of one query (`hd / 2` words) and
/// of two probability rows (`T4 / 2` words each), the head's keys as matrix weights `i8 [T, hd]`
/// and a second score row `i32 [T]` (two queries a pass).
fn attention_words(t: usize, c: usize, hd: usize) -> Result<usize, EngineError> {
    let tc = mul(t, c)?;
    let t4 = mul(t.div_ceil(4), 4)?;
    let mut s = add(w8(tc), w8(mul(mul(t, 3)?, hd)?))?;
    s = add(s, t)?;
    s = add(s, w8(tc))?;
    s = add(s, w16(c))?;
    s = add(s, w8(mul(hd, t4)?))?;
    s = add(add(s, hd / 2)?, t4)?;
    add(add(s, w8(mul(t, hd)?))?, t)
}

/// The arena layout for `cfg`, after checking the engine's limits ([`MAX_FAN_IN`],
/// [`MAX_WINDOW`]).
pub fn arena_plan(cfg: &ModelConfig) -> Result<ArenaPlan, EngineError> {
    cfg.validate()?;
    let r = cfg.stage_resolutions().map(|v| v as usize);
    let e = cfg.embed_dims.map(|v| v as usize);
    let hid0 = mul(e[0], cfg.mbconv_expand_ratio as usize)?;
    let k = cfg.local_conv_size as usize;
    let mut fan_in = mul(e[0] / 2, 9)?.max(mul(cfg.in_chans as usize, 9)?);
    fan_in = fan_in.max(hid0).max(mul(k, k)?);
    let mut act = [0usize; STAGES];
    for s in 0..STAGES {
        act[s] = mul(mul(r[s], r[s])?, e[s])?;
        fan_in = fan_in.max(mul(e[s], cfg.mlp_ratio as usize)?).max(e[s]);
        if s > 0 {
            let ws = cfg.window_sizes[s] as usize;
            if mul(ws, ws)? > MAX_WINDOW {
                return Err(EngineError::TooLarge);
            }
        }
    }
    if fan_in > MAX_FAN_IN || mul(k, k)? > MAX_I16_TAPS {
        return Err(EngineError::TooLarge);
    }
    let a = w16(act[0].max(act[2]));
    let b = w16(act[1].max(act[3]));
    let (cin, _, e0, half, w1, _) = stem_dims(cfg);
    // Pairs of tokens (module doc): two stem patches, two MBConv and PatchMerging inputs and
    // intermediates, two MLP rows.
    let mut scratch = add(w8(mul(mul(3, w1)?, half)?), w8(mul(18, half)?))?;
    scratch = add(scratch, w8(mul(9, cin)?))?;
    scratch = scratch.max(add(
        add(w8(mul(2, e0)?), w8(ring_len(r[0], hid0)?))?,
        w8(mul(2, hid0)?),
    )?);
    for s in 0..STAGES {
        if s > 0 {
            let ws = cfg.window_sizes[s] as usize;
            let hd = e[s] / cfg.num_heads[s] as usize;
            scratch = scratch.max(attention_words(mul(ws, ws)?, e[s], hd)?);
            scratch = scratch.max(w16(local_ring_len(k, r[s], e[s])?));
            let hid = mul(e[s], cfg.mlp_ratio as usize)?;
            scratch = scratch.max(add(w8(mul(2, e[s])?), w8(mul(2, hid)?))?);
        }
        if s + 1 < STAGES {
            let pm = add(w8(mul(2, e[s])?), w8(ring_len(r[s], e[s + 1])?))?;
            scratch = scratch.max(add(pm, w8(mul(2, e[s + 1])?))?);
        }
    }
    scratch = scratch.max(add(w16(e[3]), w8(e[3]))?);
    // Fan-ins of the matrix products: the stem's second conv, token widths, MLP and MBConv
    // hidden widths.
    let mut mat_k = hid0.max(mul(9, half)?);
    for s in 0..STAGES {
        mat_k = mat_k.max(e[s]).max(mul(e[s], cfg.mlp_ratio as usize)?);
    }
    let prep = mat::pair_words(mat_k);
    let gelu = 2 * w8(GELU_TABLE);
    let plan = ArenaPlan {
        a,
        b,
        scratch,
        prep,
        gelu,
    };
    add(add(add(add(a, b)?, scratch)?, prep)?, gelu)?;
    Ok(plan)
}

/// `i32` words of arena the int8 engine needs for `cfg` (times 4 for bytes).
pub fn arena_len(cfg: &ModelConfig) -> Result<usize, EngineError> {
    Ok(arena_plan(cfg)?.total())
}

/// Hands out typed pieces of a word buffer, front to back.
struct Carver<'a> {
    rest: &'a mut [i32],
}

impl<'a> Carver<'a> {
    fn words(&mut self, n: usize) -> Result<&'a mut [i32], EngineError> {
        let rest = core::mem::take(&mut self.rest);
        if n > rest.len() {
            return Err(EngineError::ArenaTooSmall {
                needed: n,
                got: rest.len(),
            });
        }
        let (a, b) = rest.split_at_mut(n);
        self.rest = b;
        Ok(a)
    }

    fn i8s(&mut self, n: usize) -> Result<&'a mut [i8], EngineError> {
        Ok(&mut bytemuck::cast_slice_mut::<i32, i8>(self.words(w8(n))?)[..n])
    }

    fn table(&mut self) -> Result<&'a mut [i8; GELU_TABLE], EngineError> {
        let t = self.i8s(GELU_TABLE)?;
        t.try_into().map_err(|_| EngineError::TooLarge)
    }

    fn i16s(&mut self, n: usize) -> Result<&'a mut [i16], EngineError> {
        Ok(&mut bytemuck::cast_slice_mut::<i32, i16>(self.words(w16(n))?)[..n])
    }
}

/// Sequential access to the items, in [`super::layout::for_each_item`] order.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], EngineError> {
        let end = self.pos.checked_add(n).ok_or(EngineError::TooLarge)?;
        let b = self
            .data
            .get(self.pos..end)
            .ok_or(EngineError::WeightsLen {
                expected: end,
                got: self.data.len(),
            })?;
        self.pos = end.div_ceil(4) * 4;
        Ok(b)
    }

    fn i8s(&mut self, n: usize) -> Result<&'a [i8], EngineError> {
        Ok(bytemuck::cast_slice(self.bytes(n)?))
    }

    fn i32s(&mut self, n: usize) -> Result<I32s<'a>, EngineError> {
        Ok(I32s(self.bytes(mul(n, 4)?)?))
    }

    fn muls(&mut self, n: usize) -> Result<Multipliers<'a>, EngineError> {
        Ok(Multipliers::new(self.bytes(mul(n, 5)?)?, n))
    }

    fn mul1(&mut self) -> Result<Multiplier, EngineError> {
        Ok(self.muls(1)?.get(0))
    }

    /// Reads a GELU's two multipliers and builds its table in `table`.
    fn gelu<'t>(&mut self, table: &'t mut [i8; GELU_TABLE]) -> Result<Gelu<'t>, EngineError> {
        let m = self.muls(2)?;
        gelu_table(m.get(0), m.get(1), table);
        Ok(Gelu(table))
    }
}

/// A conv or linear layer: weights, biases, and the multipliers from its accumulators.
#[derive(Clone, Copy)]
struct Layer<'a> {
    w: &'a [i8],
    b: I32s<'a>,
    m: Multipliers<'a>,
}

impl<'a> Layer<'a> {
    fn read(rd: &mut Reader<'a>, fan_in: usize, out: usize) -> Result<Self, EngineError> {
        Ok(Layer {
            w: rd.i8s(mul(fan_in, out)?)?,
            b: rd.i32s(out)?,
            m: rd.muls(out)?,
        })
    }

    /// `f(o, accumulator)` for the outputs `o` in `outs`, in order, over the prepared input `x`
    /// (a matrix product: `[out, in]` weights stored as `layout::Kind::Mat`); four outputs per
    /// kernel pass.
    #[inline]
    fn each(&self, x: &Prepared<'_>, outs: core::ops::Range<usize>, mut f: impl FnMut(usize, i32)) {
        let mut o = outs.start;
        if o % 2 == 1 && o < outs.end {
            // Four-row passes start on a stored pair.
            f(o, mat::acc::<1>(self.b, x, self.w, o)[0]);
            o += 1;
        }
        while o + 4 <= outs.end {
            let a = mat::acc::<4>(self.b, x, self.w, o);
            for (i, v) in a.into_iter().enumerate() {
                f(o + i, v);
            }
            o += 4;
        }
        while o < outs.end {
            f(o, mat::acc::<1>(self.b, x, self.w, o)[0]);
            o += 1;
        }
    }

    /// `f([accumulator of x, accumulator of y], multiplier, d0[i], d1[i])` for the outputs
    /// `o = outs.start + i` in `outs`, in order, over the pair `p` (`d0`, `d1`: the two tokens'
    /// destinations, indexed from `outs.start`); two outputs by two vectors per kernel pass, a
    /// block of passes per kernel call ([`mat::pair_rows`]), each block's multipliers and
    /// destinations walked by iterator.
    #[inline]
    fn each_pair<T>(
        &self,
        p: &Pair<'_>,
        outs: core::ops::Range<usize>,
        d0: &mut [T],
        d1: &mut [T],
        f: impl Fn([i32; 2], Multiplier, &mut T, &mut T) + Copy,
    ) {
        let first = outs.start;
        mat::pair_rows(self.b, p, self.w, outs, |os, acc| {
            // A copy per block: what `f` captures (a GELU table, the stream's bound) then
            // stays in registers instead of being reloaded after every store (measured: 0.2 %
            // of an inference, which the lint cannot see).
            #[allow(clippy::redundant_locals)]
            let f = f;
            let m = self.m.range(os.clone());
            let r = os.start - first..os.end - first;
            let (x, y) = (&mut d0[r.clone()], &mut d1[r]);
            for (((a, m), x), y) in acc.iter().zip(m.iter()).zip(x).zip(y) {
                f(*a, m, x, y);
            }
        });
    }
}

/// Two disjoint mutable tokens `[a*c, (a+1)*c)` and `[b*c, (b+1)*c)` of `x`, `a < b`.
fn two_tokens<T>(x: &mut [T], c: usize, a: usize, b: usize) -> (&mut [T], &mut [T]) {
    let (lo, hi) = x.split_at_mut(b * c);
    (&mut lo[a * c..(a + 1) * c], &mut hi[..c])
}

/// A GELU layer's table: the `i8` output for each `i8` pre-activation (index `pre + 128`),
/// built in the arena from the layer's two multipliers ([`gelu_table`]) before
/// the layer runs.
#[derive(Clone, Copy)]
struct Gelu<'a>(&'a [i8; GELU_TABLE]);

/// The arena's two GELU tables (MBConv and PatchMerging interleave two GELU layers row by row).
struct Tables<'a>([&'a mut [i8; GELU_TABLE]; 2]);

/// `acc -> i8 pre-activation -> table -> i8`: one [`requant`], one `SSAT` and one load (the
/// table's entry for -128 is its entry for -127, so this is `sat_i8` of the pre-activation).
#[inline]
fn gelu_i8(acc: i32, to_pre: Multiplier, table: Gelu<'_>) -> i8 {
    table.0[(requant(acc, to_pre).clamp(-128, 127) + 128) as usize]
}

/// A LayerNorm's parameters.
#[derive(Clone, Copy)]
struct Norm<'a> {
    gamma: Multipliers<'a>,
    beta: I32s<'a>,
    eps: i32,
}

impl<'a> Norm<'a> {
    fn read(rd: &mut Reader<'a>, c: usize) -> Result<Self, EngineError> {
        Ok(Norm {
            gamma: rd.muls(c)?,
            beta: rd.i32s(c)?,
            eps: rd.i32s(1)?.get(0),
        })
    }

    fn apply(&self, x: &[i16], out: &mut [i8]) {
        layer_norm(x, self.gamma, self.beta, self.eps, out);
    }
}

/// Runs one image through the int8 network.
///
/// # Shapes
/// `input: [in_chans, img_size, img_size]` quantised with the model's input scale
/// (see `quantize_input`), `arena: [>= arena_len(cfg)]` words, `logits: [num_classes]` in
/// units of the model's logit scale.
///
/// # Errors
/// Wrong input, arena or logits sizes ([`EngineError`]); `logits` is unspecified then.
pub fn run(
    model: &Model<'_>,
    input: &[i8],
    arena: &mut [i32],
    logits: &mut [i32],
) -> Result<(), EngineError> {
    let cfg = model.config();
    let plan = arena_plan(cfg)?;
    check_buffers(cfg, input.len(), logits.len(), arena.len(), plan.total())?;
    let mut carve = Carver { rest: arena };
    let a = carve.i16s(plan.a * 2)?;
    let b = carve.i16s(plan.b * 2)?;
    let scratch = carve.words(plan.scratch)?;
    let prep: &mut [u32] = bytemuck::cast_slice_mut(carve.words(plan.prep)?);
    let tables = &mut Tables([carve.table()?, carve.table()?]);
    let mut rd = Reader {
        data: model.data(),
        pos: 0,
    };
    let lim = model.res_max();
    let r = cfg.stage_resolutions().map(|v| v as usize);
    let e = cfg.embed_dims.map(|v| v as usize);
    let act = |s: usize| r[s] * r[s] * e[s];

    stem(
        cfg,
        &mut rd,
        input,
        &mut a[..act(0)],
        lim,
        scratch,
        prep,
        tables,
    )?;
    let hid0 = e[0] * cfg.mbconv_expand_ratio as usize;
    for _ in 0..cfg.depths[0] {
        mbconv(
            &mut rd,
            &mut a[..act(0)],
            r[0],
            e[0],
            hid0,
            lim,
            scratch,
            prep,
            tables,
        )?;
    }
    for s in 0..STAGES {
        if s > 0 {
            let x = if s.is_multiple_of(2) {
                &mut a[..act(s)]
            } else {
                &mut b[..act(s)]
            };
            for _ in 0..cfg.depths[s] {
                tinyvit_block(cfg, s, &mut rd, x, lim, scratch, prep, tables)?;
            }
        }
        if s + 1 < STAGES {
            let (src, dst) = if s.is_multiple_of(2) {
                (&a[..act(s)], &mut b[..act(s + 1)])
            } else {
                (&b[..act(s)], &mut a[..act(s + 1)])
            };
            patch_merging(
                &mut rd,
                src,
                r[s],
                e[s],
                dst,
                e[s + 1],
                lim,
                scratch,
                prep,
                tables,
            )?;
        }
    }
    let last = if (STAGES - 1).is_multiple_of(2) {
        &a[..act(3)]
    } else {
        &b[..act(3)]
    };
    head(&mut rd, last, e[3], scratch, prep, logits)?;
    if rd.pos != rd.data.len() {
        return Err(EngineError::WeightsLen {
            expected: rd.pos,
            got: rd.data.len(),
        });
    }
    Ok(())
}

/// The taps `k` in `[k0, k1)` (of `0..taps`) whose input index `o * stride + k - pad` lies inside
/// `0..n`: the taps [`tap`] accepts, found once per output instead of once per tap.
#[inline]
fn tap_range(o: usize, stride: usize, taps: usize, pad: usize, n: usize) -> (usize, usize) {
    let base = o * stride;
    let k0 = pad.saturating_sub(base).min(taps);
    let k1 = (n + pad).saturating_sub(base).min(taps);
    (k0, k1.max(k0))
}

/// Input index of a conv tap: `o * stride + k - pad`, if inside `0..n`.
#[inline]
fn tap(o: usize, stride: usize, k: usize, pad: usize, n: usize) -> Option<usize> {
    let i = (o * stride + k).checked_sub(pad)?;
    (i < n).then_some(i)
}

/// Values of a 3x3 ring ([`ring_taps`]) of `w`-pixel rows of `c` values: three rows of
/// `w + 2` pixels (a zero pixel each side), then three zero pixels for rows outside the map.
fn ring_len(w: usize, c: usize) -> Result<usize, EngineError> {
    mul(add(mul(3, add(w, 2)?)?, 3)?, c)
}

/// Values of the local conv's ring of `k` rows of `w` pixels (`c` values), each between `k / 2`
/// zero pixels, then three zero pixels ([`ring_taps`] for `k = 3`).
fn local_ring_len(k: usize, w: usize, c: usize) -> Result<usize, EngineError> {
    add(mul(mul(k, add(w, 2 * (k / 2))?)?, c)?, mul(3, c)?)
}

/// Row `y`'s pixels `0..w` in its ring slot `y % slots` (rows of `w + 2 pad` pixels of `c`
/// values, `pad` zero pixels each side).
fn ring_row<T>(ring: &mut [T], y: usize, slots: usize, w: usize, pad: usize, c: usize) -> &mut [T] {
    let at = ((y % slots) * (w + 2 * pad) + pad) * c;
    &mut ring[at..at + w * c]
}

/// The three row pointers of the 3x3 taps at input row `y0 + ky - 1` and column `x0 + kx - 1`
/// over a ring of [`ring_len`] (`h` rows of `w` pixels of `c` values, row `y` in slot `y % 3`):
/// tap `(ky, kx)` of channel `ch` is `rows[ky][kx * c + ch]` ([`super::dw`]), rows outside the
/// map read the ring's zero pixels, columns outside it the zero pixel beside each row.
fn ring_taps<T>(ring: &[T], h: usize, w: usize, c: usize, y0: usize, x0: usize) -> [&[T]; 3] {
    let zero = 3 * (w + 2) * c;
    core::array::from_fn(|ky| {
        let at = match tap(y0, 1, ky, 1, h) {
            Some(iy) => ((iy % 3) * (w + 2) + x0) * c,
            None => zero,
        };
        &ring[at..]
    })
}

/// Zero biases for the attention scores through the matrix kernels (windows of up to 256
/// tokens; larger ones take one query at a time).
const ZERO_BIASES: [u8; 1024] = [0; 1024];

/// Channels a depthwise pixel sums at a time (a stack buffer of `i32`).
const DW_CHUNK: usize = 64;

/// Requantises `i16` tokens to `i8`.
fn narrow(src: &[i16], k: Multiplier, dst: &mut [i8]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = sat_i8(requant(*s as i32, k));
    }
}

/// PatchEmbed: 3x3 stride-2 conv -> GELU -> 3x3 stride-2 conv, from the `i8 [C, H, W]` input
/// to `i16` tokens `[r0*r0, E0]`; the first conv's output streams through a ring of 3 rows. The
/// second conv is a matrix product: each output pixel's 3x3 patch is gathered (taps outside
/// the map as zeros, which add nothing) into one `[9 * half]` vector, the layout of its
/// `[out, ky, kx, in]` weights.
fn stem(
    cfg: &ModelConfig,
    rd: &mut Reader<'_>,
    input: &[i8],
    out: &mut [i16],
    lim: i16,
    scratch: &mut [i32],
    prep: &mut [u32],
    tables: &mut Tables<'_>,
) -> Result<(), EngineError> {
    let (cin, img, e0, half, w1, r0) = stem_dims(cfg);
    let c1 = Layer::read(rd, cin * 9, half)?;
    let act1 = rd.gelu(tables.0[0])?;
    let c2 = Layer::read(rd, half * 9, e0)?;
    let mut carve = Carver { rest: scratch };
    let ring = carve.i8s(3 * w1 * half)?;
    let patch_in = carve.i8s(9 * cin)?;
    let patches = carve.i8s(18 * half)?;
    let (patch0, patch1) = patches.split_at_mut(9 * half);
    // Output pixel `ox`'s 3x3 patch of the ring's first-conv outputs.
    let gather = |ring: &[i8], oy: usize, ox: usize, patch: &mut [i8]| {
        for ky in 0..3 {
            for kx in 0..3 {
                let dst = &mut patch[(ky * 3 + kx) * half..(ky * 3 + kx + 1) * half];
                match (tap(oy, 2, ky, 1, w1), tap(ox, 2, kx, 1, w1)) {
                    (Some(iy), Some(ix)) => {
                        let px = ((iy % 3) * w1 + ix) * half;
                        dst.copy_from_slice(&ring[px..px + half]);
                    }
                    _ => dst.fill(0),
                }
            }
        }
    };
    let mut filled = 0;
    for oy in 0..r0 {
        let last = (2 * oy + 1).min(w1 - 1);
        while filled <= last {
            let y1 = filled;
            let row = &mut ring[(y1 % 3) * w1 * half..(y1 % 3 + 1) * w1 * half];
            for x1 in 0..w1 {
                // The input patch in the weights' `[ky, kx, in]` order, taps outside the image
                // as zeros (they add nothing), gathered once for every output channel.
                for ky in 0..3 {
                    for kx in 0..3 {
                        let dst = &mut patch_in[(ky * 3 + kx) * cin..(ky * 3 + kx + 1) * cin];
                        match (tap(y1, 2, ky, 1, img), tap(x1, 2, kx, 1, img)) {
                            (Some(iy), Some(ix)) => {
                                for (i, d) in dst.iter_mut().enumerate() {
                                    *d = input[(i * img + iy) * img + ix];
                                }
                            }
                            _ => dst.fill(0),
                        }
                    }
                }
                let dst = &mut row[x1 * half..(x1 + 1) * half];
                for (o, (d, w)) in dst.iter_mut().zip(c1.w.chunks_exact(9 * cin)).enumerate() {
                    let acc = dot_i8(c1.b.get(o), w, patch_in);
                    *d = gelu_i8(acc, c1.m.get(o), act1);
                }
            }
            filled += 1;
        }
        let mut ox = 0;
        while ox + 2 <= r0 {
            gather(ring, oy, ox, patch0);
            gather(ring, oy, ox + 1, patch1);
            let p = mat::prepare_pair(patch0, patch1, prep);
            let at = oy * r0 + ox;
            let (t0, t1) = two_tokens(out, e0, at, at + 1);
            c2.each_pair(&p, 0..e0, t0, t1, move |[a0, a1], m, v0, v1| {
                *v0 = sat_i16(requant(a0, m), lim);
                *v1 = sat_i16(requant(a1, m), lim);
            });
            ox += 2;
        }
        if ox < r0 {
            gather(ring, oy, ox, patch0);
            let p = mat::prepare(patch0, prep);
            let t = &mut out[(oy * r0 + ox) * e0..(oy * r0 + ox + 1) * e0];
            c2.each(&p, 0..e0, |o, acc| {
                t[o] = sat_i16(requant(acc, c2.m.get(o)), lim);
            });
        }
    }
    Ok(())
}

/// 1x1 conv + GELU of token row `y` of the stream `src` (`[h*w, cin]`, narrowed to `i8`
/// through `tok`, `[2, cin]`, two tokens at a time) into slot `y % 3` of `ring`
/// (`[3, w, cout]`).
fn pointwise_row(
    src: &[i16],
    y: usize,
    w: usize,
    cin: usize,
    narrow_in: Multiplier,
    layer: &Layer<'_>,
    act: Gelu<'_>,
    cout: usize,
    tok: &mut [i8],
    ring: &mut [i8],
    prep: &mut [u32],
) {
    let (t0, t1) = tok.split_at_mut(cin);
    let row = ring_row(ring, y, 3, w, 1, cout);
    let token = |x: usize| &src[(y * w + x) * cin..(y * w + x + 1) * cin];
    let mut x = 0;
    while x + 2 <= w {
        narrow(token(x), narrow_in, t0);
        narrow(token(x + 1), narrow_in, t1);
        let (d0, d1) = two_tokens(row, cout, x, x + 1);
        let p = mat::prepare_pair(t0, t1, prep);
        layer.each_pair(&p, 0..cout, d0, d1, move |[a0, a1], m, v0, v1| {
            *v0 = gelu_i8(a0, m, act);
            *v1 = gelu_i8(a1, m, act);
        });
        x += 2;
    }
    if x < w {
        narrow(token(x), narrow_in, t0);
        let dst = &mut row[x * cout..(x + 1) * cout];
        let p = mat::prepare(t0, prep);
        layer.each(&p, 0..cout, |o, acc| {
            dst[o] = gelu_i8(acc, layer.m.get(o), act);
        });
    }
}

/// A depthwise 3x3 conv (padding 1) at output pixel `(oy, ox)`, every channel, then GELU to
/// `i8` into `mid` (`[c]`), over a ring of 3 input rows ([`ring_len`], row `y` in slot
/// `y % 3`): [`dw::sums3x3`] a chunk of channels at a time, then bias, requantisation and the
/// GELU table.
fn depthwise_pixel(
    ring: &[i8],
    h_in: usize,
    w_in: usize,
    c: usize,
    stride: usize,
    oy: usize,
    ox: usize,
    layer: &Layer<'_>,
    act: Gelu<'_>,
    mid: &mut [i8],
    acc: &mut [i32; DW_CHUNK],
) {
    let rows = ring_taps(ring, h_in, w_in, c, oy * stride, ox * stride);
    depthwise_channels(rows, c, layer, acc, mid, |o, a, m| *o = gelu_i8(a, m, act));
}

/// `put(&mut out[ch], sum + bias, multiplier)` for every channel `ch` of the 3x3 depthwise
/// pixel whose tap rows are `rows` ([`ring_taps`], `c` values a pixel): [`dw::sums3x3`] a chunk
/// of [`DW_CHUNK`] channels at a time into `acc`, then the layer's biases and multipliers
/// walked alongside.
#[inline(always)]
fn depthwise_channels<T: dw::Px, O>(
    rows: [&[T]; 3],
    c: usize,
    layer: &Layer<'_>,
    acc: &mut [i32; DW_CHUNK],
    out: &mut [O],
    put: impl Fn(&mut O, i32, Multiplier),
) {
    let mut start = 0;
    while start < c {
        let n = (c - start).min(DW_CHUNK);
        let acc = &mut acc[..n];
        let w = &layer.w[9 * start..9 * (start + n)];
        dw::sums3x3(rows.map(|r| &r[start..]), c, w, acc);
        let (b, m) = (
            layer.b.range(start..start + n),
            layer.m.range(start..start + n),
        );
        let walk = acc
            .iter()
            .zip(&mut out[start..])
            .zip(b.iter())
            .zip(m.iter());
        for (((a, o), b), m) in walk {
            put(o, a.wrapping_add(b), m);
        }
        start += n;
    }
}

/// Output row `oy` of a 3x3 depthwise conv + GELU ([`depthwise_pixel`], over `ring` of
/// `c`-channel pixels) followed by the 1x1 `pw` to `cout` channels, two pixels at a time
/// (`mid`: `[2, c]`); `f.put(&mut value, accumulator, multiplier)` stores each output channel
/// of a pixel into `row` (`[w_out, cout]`, the row's tokens).
#[allow(clippy::too_many_arguments)]
fn depthwise_pointwise_row(
    ring: &[i8],
    h_in: usize,
    c: usize,
    stride: usize,
    oy: usize,
    dw: &Layer<'_>,
    act: Gelu<'_>,
    pw: &Layer<'_>,
    mid: &mut [i8],
    prep: &mut [u32],
    row: &mut [i16],
    cout: usize,
    f: impl RowOut,
) {
    let w_out = row.len() / cout;
    let (m0, m1) = mid.split_at_mut(c);
    let acc = &mut [0i32; DW_CHUNK];
    let mut ox = 0;
    while ox + 2 <= w_out {
        depthwise_pixel(ring, h_in, h_in, c, stride, oy, ox, dw, act, m0, acc);
        depthwise_pixel(ring, h_in, h_in, c, stride, oy, ox + 1, dw, act, m1, acc);
        let (t0, t1) = two_tokens(row, cout, ox, ox + 1);
        let p = mat::prepare_pair(m0, m1, prep);
        pw.each_pair(&p, 0..cout, t0, t1, move |[a0, a1], m, v0, v1| {
            f.put(v0, a0, m);
            f.put(v1, a1, m);
        });
        ox += 2;
    }
    if ox < w_out {
        depthwise_pixel(ring, h_in, h_in, c, stride, oy, ox, dw, act, m0, acc);
        let t = &mut row[ox * cout..(ox + 1) * cout];
        let p = mat::prepare(m0, prep);
        pw.each(&p, 0..cout, |o, acc| f.put(&mut t[o], acc, pw.m.get(o)));
    }
}

/// MBConv in place on the stream `x: [r*r, c]`: 1x1 GELU, 3x3 depthwise GELU, 1x1, add the
/// input, GELU (the sum and the GELU in Q12).
fn mbconv(
    rd: &mut Reader<'_>,
    x: &mut [i16],
    r: usize,
    c: usize,
    hid: usize,
    lim: i16,
    scratch: &mut [i32],
    prep: &mut [u32],
    tables: &mut Tables<'_>,
) -> Result<(), EngineError> {
    let narrow_in = rd.mul1()?;
    let c1 = Layer::read(rd, c, hid)?;
    let [t1, t2] = &mut tables.0;
    let act1 = rd.gelu(t1)?;
    let c2 = Layer::read(rd, 9, hid)?;
    let act2 = rd.gelu(t2)?;
    let c3 = Layer::read(rd, hid, c)?;
    let res = rd.mul1()?;
    let out = rd.mul1()?;
    let mut carve = Carver { rest: scratch };
    let tok = carve.i8s(2 * c)?;
    let ring = carve.i8s(ring_len(r, hid)?)?;
    ring.fill(0);
    let mid = carve.i8s(2 * hid)?;
    let mut filled = 0;
    for oy in 0..r {
        let last = (oy + 1).min(r - 1);
        while filled <= last {
            pointwise_row(x, filled, r, c, narrow_in, &c1, act1, hid, tok, ring, prep);
            filled += 1;
        }
        let row = &mut x[oy * r * c..(oy + 1) * r * c];
        depthwise_pointwise_row(
            ring,
            r,
            hid,
            1,
            oy,
            &c2,
            act2,
            &c3,
            mid,
            prep,
            row,
            c,
            MbconvOut { res, out, lim },
        );
    }
    Ok(())
}

/// How [`depthwise_pointwise_row`] stores an output channel: always inlined into the kernel's
/// walk (a call per value cost MBConv a third of its epilogue).
trait RowOut: Copy {
    /// Stores the channel whose accumulator is `acc` (multiplier `m`) into the stream value `v`.
    fn put(self, v: &mut i16, acc: i32, m: Multiplier);
}

/// MBConv's output: `v` (the block's input) plus the last 1x1's accumulator, both in Q12 (`m`,
/// `res`), through [`gelu_q12`] back to the stream (`out`, saturated to `lim`).
#[derive(Clone, Copy)]
struct MbconvOut {
    res: Multiplier,
    out: Multiplier,
    lim: i16,
}

impl RowOut for MbconvOut {
    #[inline(always)]
    fn put(self, v: &mut i16, acc: i32, m: Multiplier) {
        let sum = requant(acc, m).saturating_add(requant(*v as i32, self.res));
        *v = sat_i16(requant(gelu_q12(sum), self.out), self.lim);
    }
}

/// PatchMerging's output: the accumulator to the next stage's stream, saturated to `lim`.
#[derive(Clone, Copy)]
struct MergeOut {
    lim: i16,
}

impl RowOut for MergeOut {
    #[inline(always)]
    fn put(self, v: &mut i16, acc: i32, m: Multiplier) {
        *v = sat_i16(requant(acc, m), self.lim);
    }
}

/// PatchMerging: 1x1 GELU, 3x3 depthwise stride 2 GELU, 1x1, from the stream `src:
/// [r*r, cin]` to the next stage's stream `dst: [r2*r2, cout]`, `r2 = ceil(r / 2)`.
fn patch_merging(
    rd: &mut Reader<'_>,
    src: &[i16],
    r: usize,
    cin: usize,
    dst: &mut [i16],
    cout: usize,
    lim: i16,
    scratch: &mut [i32],
    prep: &mut [u32],
    tables: &mut Tables<'_>,
) -> Result<(), EngineError> {
    let narrow_in = rd.mul1()?;
    let c1 = Layer::read(rd, cin, cout)?;
    let [t1, t2] = &mut tables.0;
    let act1 = rd.gelu(t1)?;
    let c2 = Layer::read(rd, 9, cout)?;
    let act2 = rd.gelu(t2)?;
    let c3 = Layer::read(rd, cout, cout)?;
    let r2 = r.div_ceil(2);
    let mut carve = Carver { rest: scratch };
    let tok = carve.i8s(2 * cin)?;
    let ring = carve.i8s(ring_len(r, cout)?)?;
    ring.fill(0);
    let mid = carve.i8s(2 * cout)?;
    let mut filled = 0;
    for oy in 0..r2 {
        let last = (2 * oy + 1).min(r - 1);
        while filled <= last {
            pointwise_row(
                src, filled, r, cin, narrow_in, &c1, act1, cout, tok, ring, prep,
            );
            filled += 1;
        }
        let row = &mut dst[oy * r2 * cout..(oy + 1) * r2 * cout];
        depthwise_pointwise_row(
            ring,
            r,
            cout,
            2,
            oy,
            &c2,
            act2,
            &c3,
            mid,
            prep,
            row,
            cout,
            MergeOut { lim },
        );
    }
    Ok(())
}

/// A residual add into the stream (attention's proj, the MLP's fc2): `t + requant(acc, m)`,
/// saturated to `lim`.
#[inline(always)]
fn residual(t: &mut i16, acc: i32, m: Multiplier, lim: i16) {
    *t = sat_i16((*t as i32).saturating_add(requant(acc, m)), lim);
}

/// The attention items of one block.
struct Attn<'a> {
    /// Q10 `[heads, ws*ws]`.
    biases: I32s<'a>,
    norm: Norm<'a>,
    /// `[3c, c]`, output channels interleaved per head `[q_h k_h v_h]`; the multipliers go to
    /// the q, k and v scales.
    qkv: Layer<'a>,
    /// `q.k` accumulator to Q10 (with `1/sqrt(hd)`).
    score: Multiplier,
    /// `sum p_j v_j` (Q15 times v's scale) to `i8`.
    out: Multiplier,
    proj: Layer<'a>,
}

/// One TinyViT block in place on the stream `x: [r*r, c]` of stage `s`: windowed attention
/// with residual, depthwise local conv (no residual, no activation), MLP with residual.
fn tinyvit_block(
    cfg: &ModelConfig,
    s: usize,
    rd: &mut Reader<'_>,
    x: &mut [i16],
    lim: i16,
    scratch: &mut [i32],
    prep: &mut [u32],
    tables: &mut Tables<'_>,
) -> Result<(), EngineError> {
    let r = cfg.stage_resolutions()[s] as usize;
    let c = cfg.embed_dims[s] as usize;
    let heads = cfg.num_heads[s] as usize;
    let ws = cfg.window_sizes[s] as usize;
    let hid = c * cfg.mlp_ratio as usize;
    let k = cfg.local_conv_size as usize;

    let attn = Attn {
        biases: rd.i32s(heads * ws * ws)?,
        norm: Norm::read(rd, c)?,
        qkv: Layer::read(rd, c, 3 * c)?,
        score: rd.mul1()?,
        out: rd.mul1()?,
        proj: Layer::read(rd, c, c)?,
    };
    let mlp_norm = Norm::read(rd, c)?;
    let fc1 = Layer::read(rd, c, hid)?;
    let mlp_act = rd.gelu(tables.0[0])?;
    let fc2 = Layer::read(rd, hid, c)?;
    let lc = Layer::read(rd, k * k, c)?;

    attention(&attn, x, r, c, heads, ws, lim, scratch, prep)?;
    local_conv(x, r, c, k, &lc, lim, scratch)?;

    let mut carve = Carver { rest: scratch };
    let (n0, n1) = carve.i8s(2 * c)?.split_at_mut(c);
    let (h0, h1) = carve.i8s(2 * hid)?.split_at_mut(hid);
    let mut pairs = x.chunks_exact_mut(2 * c);
    for pair in &mut pairs {
        let (t0, t1) = pair.split_at_mut(c);
        mlp_norm.apply(t0, n0);
        mlp_norm.apply(t1, n1);
        let p = mat::prepare_pair(n0, n1, prep);
        fc1.each_pair(&p, 0..hid, h0, h1, move |[a0, a1], m, v0, v1| {
            *v0 = gelu_i8(a0, m, mlp_act);
            *v1 = gelu_i8(a1, m, mlp_act);
        });
        let p = mat::prepare_pair(h0, h1, prep);
        fc2.each_pair(&p, 0..c, t0, t1, move |[a0, a1], m, v0, v1| {
            residual(v0, a0, m, lim);
            residual(v1, a1, m, lim);
        });
    }
    for tok in pairs.into_remainder().chunks_exact_mut(c) {
        mlp_norm.apply(tok, n0);
        let p = mat::prepare(n0, prep);
        fc1.each(&p, 0..hid, |o, acc| {
            h0[o] = gelu_i8(acc, fc1.m.get(o), mlp_act);
        });
        let p = mat::prepare(h0, prep);
        fc2.each(&p, 0..c, |o, acc| {
            residual(&mut tok[o], acc, fc2.m.get(o), lim)
        });
    }
    Ok(())
}

/// `x += proj(attention(norm(window)))` for every `ws x ws` window of `x: [r*r, c]`, windows
/// zero-padded right and bottom, padded tokens attended to unmasked (as in `exact`).
fn attention(
    wt: &Attn<'_>,
    x: &mut [i16],
    r: usize,
    c: usize,
    heads: usize,
    ws: usize,
    lim: i16,
    scratch: &mut [i32],
    prep: &mut [u32],
) -> Result<(), EngineError> {
    let t = ws * ws;
    let hd = c / heads;
    let mut carve = Carver { rest: scratch };
    let win = carve.i8s(t * c)?;
    let qkv = carve.i8s(t * 3 * hd)?;
    let scores = carve.words(t)?;
    let out = carve.i8s(t * c)?;
    let zero = carve.i16s(c)?;
    zero.fill(0);
    let t4 = t.div_ceil(4) * 4;
    let vt = carve.i8s(hd * t4)?;
    let q_lanes: &mut [u32] = bytemuck::cast_slice_mut(carve.words(hd / 2)?);
    let p_lanes: &mut [u32] = bytemuck::cast_slice_mut(carve.words(t4 / 2)?);
    let p_lanes1: &mut [u32] = bytemuck::cast_slice_mut(carve.words(t4 / 2)?);
    let kmat = carve.i8s(t * hd)?;
    let scores1 = carve.words(t)?;
    // The lane forms ([`att`]) where they apply: queries of a multiple of 4 values.
    let lanes = att::ENABLED && hd.is_multiple_of(4);
    // Two queries a pass through the matrix kernels (`q_i . k_j` with the keys as weights):
    // where the lane forms apply and the zero biases cover the window.
    let pairs = lanes && t <= ZERO_BIASES.len() / 4;
    let nwin = r.div_ceil(ws);
    for wy in 0..nwin {
        for wx in 0..nwin {
            for i in 0..t {
                let (y, xx) = (wy * ws + i / ws, wx * ws + i % ws);
                let src = if y < r && xx < r {
                    &x[(y * r + xx) * c..(y * r + xx + 1) * c]
                } else {
                    &zero[..]
                };
                wt.norm.apply(src, &mut win[i * c..(i + 1) * c]);
            }
            for h in 0..heads {
                let first = h * 3 * hd;
                let outs = first..first + 3 * hd;
                let mut i = 0;
                while i + 2 <= t {
                    let p = mat::prepare_pair(
                        &win[i * c..(i + 1) * c],
                        &win[(i + 1) * c..(i + 2) * c],
                        prep,
                    );
                    let (r0, r1) = two_tokens(qkv, 3 * hd, i, i + 1);
                    wt.qkv
                        .each_pair(&p, outs.clone(), r0, r1, move |[a0, a1], m, v0, v1| {
                            *v0 = sat_i8(requant(a0, m));
                            *v1 = sat_i8(requant(a1, m));
                        });
                    i += 2;
                }
                if i < t {
                    let p = mat::prepare(&win[i * c..(i + 1) * c], prep);
                    let row = &mut qkv[i * 3 * hd..(i + 1) * 3 * hd];
                    wt.qkv.each(&p, outs.clone(), |ch, acc| {
                        row[ch - first] = sat_i8(requant(acc, wt.qkv.m.get(ch)));
                    });
                }
                if lanes {
                    att::transpose(qkv, 3 * hd, 2 * hd, t, hd, vt, t4);
                }
                if pairs {
                    // The keys as `Kind::Mat` weights `[t, hd]`, so that the block kernel takes
                    // two queries at once.
                    for j in 0..t {
                        let kj = &qkv[j * 3 * hd + hd..j * 3 * hd + 2 * hd];
                        mat::store_row(kmat, hd, j, kj);
                    }
                }
                let mut i = 0;
                while i < t {
                    let q = &qkv[i * 3 * hd..i * 3 * hd + hd];
                    let two = pairs && i + 1 < t;
                    if two {
                        let q1 = &qkv[(i + 1) * 3 * hd..(i + 1) * 3 * hd + hd];
                        let p = mat::prepare_pair(q, q1, prep);
                        let zero = I32s(&ZERO_BIASES[..4 * t]);
                        mat::pair_rows(zero, &p, kmat, 0..t, |js, acc| {
                            for (j, a) in js.zip(acc) {
                                scores[j] = a[0];
                                scores1[j] = a[1];
                            }
                        });
                    } else {
                        let ql = if lanes {
                            att::lanes_i8(q, q_lanes)
                        } else {
                            None
                        };
                        for (j, s) in scores.iter_mut().enumerate() {
                            let kj = &qkv[j * 3 * hd + hd..j * 3 * hd + 2 * hd];
                            *s = match ql {
                                Some(l) => att::dot(0, l, kj),
                                None => dot_i8(0, q, kj),
                            };
                        }
                    }
                    let n_rows = 1 + two as usize;
                    for (r, sc) in [&mut *scores, &mut *scores1]
                        .into_iter()
                        .take(n_rows)
                        .enumerate()
                    {
                        let i = i + r;
                        // `layers::bias_index(i, j, ws)` (|dy| ws + |dx|), walked row by row:
                        // no division per score.
                        let (yi, xi) = (i / ws, i % ws);
                        for (yj, srow) in sc.chunks_exact_mut(ws).enumerate() {
                            let row = h * t + yi.abs_diff(yj) * ws;
                            for (xj, s) in srow.iter_mut().enumerate() {
                                let b = wt.biases.get(row + xi.abs_diff(xj));
                                *s = requant(*s, wt.score).saturating_add(b);
                            }
                        }
                        softmax_q15(sc);
                    }
                    // `p v`: both rows' probabilities as lanes against each transposed value
                    // word when they fit, else one row at a time.
                    let (pl0, pl1) = if lanes {
                        (
                            att::lanes_prob(scores, p_lanes),
                            if two {
                                att::lanes_prob(scores1, p_lanes1)
                            } else {
                                None
                            },
                        )
                    } else {
                        (None, None)
                    };
                    let (o0, o1) = out.split_at_mut((i + 1) * c);
                    let dst0 = &mut o0[i * c + h * hd..i * c + (h + 1) * hd];
                    let dst1 = o1.get_mut(h * hd..(h + 1) * hd).filter(|_| two);
                    match (pl0, pl1, dst1) {
                        (Some(l0), Some(l1), Some(dst1)) => {
                            let dst = dst0.iter_mut().zip(dst1.iter_mut());
                            for ((d0, d1), v) in dst.zip(vt.chunks_exact(t4)) {
                                let [a0, a1] = att::dot2(l0, l1, v);
                                *d0 = sat_i8(requant(a0, wt.out));
                                *d1 = sat_i8(requant(a1, wt.out));
                            }
                        }
                        (pl0, pl1, dst1) => {
                            let rows = [(pl0, &*scores, Some(dst0)), (pl1, &*scores1, dst1)];
                            for (pl, sc, dst) in rows.into_iter().take(n_rows) {
                                let Some(dst) = dst else { continue };
                                match pl {
                                    Some(pl) => {
                                        for (d, v) in dst.iter_mut().zip(vt.chunks_exact(t4)) {
                                            *d = sat_i8(requant(att::dot(0, pl, v), wt.out));
                                        }
                                    }
                                    None => weighted_sum(sc, qkv, 3 * hd, 2 * hd, hd, |d, acc| {
                                        dst[d] = sat_i8(requant(acc, wt.out));
                                    }),
                                }
                            }
                        }
                    }
                    i += 1 + two as usize;
                }
            }
            // The window's tokens inside the map, two at a time.
            let mut pending: Option<(usize, usize)> = None;
            for i in 0..t {
                let (y, xx) = (wy * ws + i / ws, wx * ws + i % ws);
                if y >= r || xx >= r {
                    continue;
                }
                let Some((i0, at0)) = pending.take() else {
                    pending = Some((i, y * r + xx));
                    continue;
                };
                let p =
                    mat::prepare_pair(&out[i0 * c..(i0 + 1) * c], &out[i * c..(i + 1) * c], prep);
                let (d0, d1) = two_tokens(x, c, at0, y * r + xx);
                wt.proj
                    .each_pair(&p, 0..c, d0, d1, move |[a0, a1], m, v0, v1| {
                        residual(v0, a0, m, lim);
                        residual(v1, a1, m, lim);
                    });
            }
            if let Some((i, at)) = pending {
                let p = mat::prepare(&out[i * c..(i + 1) * c], prep);
                let dst = &mut x[at * c..(at + 1) * c];
                wt.proj.each(&p, 0..c, |o, acc| {
                    residual(&mut dst[o], acc, wt.proj.m.get(o), lim)
                });
            }
        }
    }
    Ok(())
}

/// `f(d, sum_j p[j] v_j[d])` for the `n` columns `d` of the vectors `v_j` at offset `off` of
/// the rows of `rows` (`[p.len(), stride]`; attention's `p v` with the value vectors inside the
/// qkv rows), in column order; columns past a row's end are left out. Four columns a pass:
/// one word of four `i8` values per row, each value sign-extended by a shift pair (`SXTB` or
/// `SBFX` on Armv7E-M), four sums in registers; the same wrapping `i32` sums in row order as
/// one column at a time.
fn weighted_sum(
    p: &[i32],
    rows: &[i8],
    stride: usize,
    off: usize,
    n: usize,
    mut f: impl FnMut(usize, i32),
) {
    let n = n.min(stride.saturating_sub(off));
    let from = |d: usize| rows.get(off + d..).unwrap_or(&[]).chunks(stride.max(1));
    let mut d = 0;
    while d + 4 <= n {
        let mut acc = [0i32; 4];
        for (p, row) in p.iter().zip(from(d)) {
            let Some(w) = super::ops::words4(row).next() else {
                break;
            };
            let w = w as i32;
            acc[0] = acc[0].wrapping_add(p.wrapping_mul((w << 24) >> 24));
            acc[1] = acc[1].wrapping_add(p.wrapping_mul((w << 16) >> 24));
            acc[2] = acc[2].wrapping_add(p.wrapping_mul((w << 8) >> 24));
            acc[3] = acc[3].wrapping_add(p.wrapping_mul(w >> 24));
        }
        for (k, a) in acc.into_iter().enumerate() {
            f(d + k, a);
        }
        d += 4;
    }
    for d in d..n {
        let mut acc = 0i32;
        for (p, row) in p.iter().zip(from(d)) {
            acc = acc.wrapping_add(p.wrapping_mul(row[0] as i32));
        }
        f(d, acc);
    }
}

/// Depthwise `k x k` conv (padding `k/2`) in place on the stream `x: [r*r, c]`, reading the
/// `i16` values themselves (the conv has no residual: an `i8` input would cap the stream's
/// precision at 8 bits every block); the last `k` input rows wait in a ring of zero-bordered
/// rows ([`local_ring_len`]). The official `k = 3` runs [`dw::sums3x3`].
fn local_conv(
    x: &mut [i16],
    r: usize,
    c: usize,
    k: usize,
    layer: &Layer<'_>,
    lim: i16,
    scratch: &mut [i32],
) -> Result<(), EngineError> {
    let ring = Carver { rest: scratch }.i16s(local_ring_len(k, r, c)?)?;
    ring.fill(0);
    let pad = k / 2;
    let wp = r + 2 * pad;
    let mut filled = 0;
    let mut acc = [0i32; DW_CHUNK];
    for oy in 0..r {
        let last = (oy + pad).min(r - 1);
        while filled <= last {
            ring_row(ring, filled, k, r, pad, c)
                .copy_from_slice(&x[filled * r * c..(filled + 1) * r * c]);
            filled += 1;
        }
        let (ky0, ky1) = tap_range(oy, 1, k, pad, r);
        for ox in 0..r {
            let t = &mut x[(oy * r + ox) * c..(oy * r + ox + 1) * c];
            if k == 3 {
                let rows = ring_taps(ring, r, r, c, oy, ox);
                depthwise_channels(rows, c, layer, &mut acc, t, |v, a, m| {
                    *v = sat_i16(requant(a, m), lim);
                });
                continue;
            }
            // Any other kernel size: the rows inside the map, every column of the padded row
            // (the zero pixels add nothing).
            for (ch, v) in t.iter_mut().enumerate() {
                let mut acc = layer.b.get(ch);
                let w = &layer.w[ch * k * k..(ch + 1) * k * k];
                for ky in ky0..ky1 {
                    let iy = oy + ky - pad;
                    let row = &ring[(iy % k) * wp * c..(iy % k + 1) * wp * c];
                    let wr = &w[ky * k..(ky + 1) * k];
                    for (wv, px) in wr.iter().zip(row[ox * c + ch..].iter().step_by(c)) {
                        acc = acc.wrapping_add(*wv as i32 * *px as i32);
                    }
                }
                *v = sat_i16(requant(acc, layer.m.get(ch)), lim);
            }
        }
    }
    Ok(())
}

/// Head: token mean (rounded, in the stream's `i16`) -> LayerNorm -> Linear to `i32` logits.
fn head(
    rd: &mut Reader<'_>,
    x: &[i16],
    c: usize,
    scratch: &mut [i32],
    prep: &mut [u32],
    logits: &mut [i32],
) -> Result<(), EngineError> {
    let norm = Norm::read(rd, c)?;
    let fc = Layer::read(rd, c, logits.len())?;
    let mut carve = Carver { rest: scratch };
    let pooled = carve.i16s(c)?;
    let normed = carve.i8s(c)?;
    let n = (x.len() / c) as i64;
    for (ch, p) in pooled.iter_mut().enumerate() {
        let mut sum = 0i64;
        for tok in x.chunks_exact(c) {
            sum += tok[ch] as i64;
        }
        *p = (2 * sum + n).div_euclid(2 * n.max(1)) as i16;
    }
    norm.apply(pooled, normed);
    let p = mat::prepare(normed, prep);
    fc.each(&p, 0..logits.len(), |o, acc| {
        logits[o] = requant(acc, fc.m.get(o));
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::weighted_sum;
    use crate::params::splitmix64;
    use std::vec::Vec;

    /// Four columns a pass gives every column's one-at-a-time sum, for every width (a tail of
    /// 0 to 3 columns), offsets, value extremes and probabilities up to 2^15.
    #[test]
    fn weighted_sum_is_the_column_sum() {
        let mut s = 7u64;
        for hd in 1..=19 {
            for t in [1usize, 2, 5, 16] {
                let stride = 3 * hd;
                let rows: Vec<i8> = (0..t * stride)
                    .map(|i| match i % 7 {
                        0 => -128,
                        1 => 127,
                        _ => splitmix64(&mut s) as i8,
                    })
                    .collect();
                let p: Vec<i32> = (0..t)
                    .map(|j| {
                        if j == 0 {
                            1 << 15
                        } else {
                            (splitmix64(&mut s) % 32769) as i32
                        }
                    })
                    .collect();
                for off in [0, hd, 2 * hd] {
                    let mut got = std::vec![None; hd];
                    weighted_sum(&p, &rows, stride, off, hd, |d, a| {
                        assert!(got[d].is_none(), "column {d} twice");
                        got[d] = Some(a);
                    });
                    for d in 0..hd {
                        let want = (0..t).fold(0i32, |a, j| {
                            a.wrapping_add(p[j] * rows[j * stride + off + d] as i32)
                        });
                        assert_eq!(got[d], Some(want), "hd {hd} t {t} off {off} column {d}");
                    }
                }
            }
        }
    }
}
