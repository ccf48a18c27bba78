//! The `fast` engine (feature `fast`, host only): the same network as [`super::exact`] over the
//! same [`Weights`], built for speed on one core.
//!
//! Every Linear, 1x1 conv, both stem convs (via im2col) and both attention products run
//! through `gemm`: weights packed once into column panels, register-tiled kernels for
//! AVX-512, AVX2 + FMA or `matrixmultiply` (picked at run time, [`Kernel`]), bias, residual and
//! GELU applied to each tile while it is in L1. Depthwise convs run channel-innermost over
//! pre-transposed `[k*k, C]` kernels; GELU and the softmax exponential use vectorisable
//! polynomial approximations (a few ulp from `libm`); the rest of the engine is compiled once
//! per kernel's vector width. The gathered attention bias is precomputed per block, like the
//! reference's eval cache. Results differ from `exact` only by summation order and those
//! approximations: about 1e-6 relative on the logits (tests require 1e-5).
//!
//! Unlike `exact`, this engine allocates: it is for hosts. Everything it allocates is declared
//! up front ([`FastModel::memory`]: packed weights, gathered attention biases and a workspace
//! sized for the hungriest layer) and checked against the weights' [`Limits`](super::Limits)
//! before the first allocation; running a batch allocates nothing of ours. On the `portable`
//! kernel `matrixmultiply` allocates and frees its own packing buffer in each GEMM call, at
//! most about 1 MiB, set by its block sizes rather than by the network.

mod gemm;

use std::vec;
use std::vec::Vec;

pub use gemm::Kernel;
use gemm::{gemm, Packed, ADD, ADD_GELU, SET, SET_GELU};

use super::layers::{bias_index, stem_dims, LN_EPS};
use super::{add, input_len, mul, EngineError, Reader, Weights};
use crate::config::{ModelConfig, STAGES};

/// erf as a rational polynomial on `[-4, 4]` (the form Eigen and XLA use for f32); a few ulp
/// from `libm::erff`, and it vectorises.
#[inline(always)]
fn erf_fast(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10f32;
    p = p * x2 + 2.770_681_4e-8;
    p = p * x2 + -2.101_024e-6;
    p = p * x2 + -5.692_506_4e-5;
    p = p * x2 + -7.349_906_3e-4;
    p = p * x2 + -2.954_600_1e-3;
    p = p * x2 + -1.609_603_3e-2;
    p *= x;
    let mut q = -1.456_607_2e-5f32;
    q = q * x2 + -2.133_740_6e-4;
    q = q * x2 + -1.682_827e-3;
    q = q * x2 + -7.373_329e-3;
    q = q * x2 + -1.426_473_9e-2;
    p / q
}

#[inline(always)]
fn gelu_fast(x: f32) -> f32 {
    0.5 * x * (1.0 + erf_fast(x * core::f32::consts::FRAC_1_SQRT_2))
}

#[inline(always)]
fn gelu_all(x: &mut [f32]) {
    for v in x {
        *v = gelu_fast(*v);
    }
}

/// exp by range reduction to `2^n * e^r`, `|r| <= ln2/2`, and a degree-6 polynomial (Cephes
/// coefficients); inputs below -87 flush to about 1e-38. `n` is rounded with the 1.5 * 2^23
/// trick instead of `floor`, and `2^n` is built from the integer that trick leaves in the low
/// mantissa bits (no float-to-int conversion), which keeps the loop free of calls and
/// saturating casts so it vectorises.
#[inline(always)]
fn exp_fast(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * core::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // |n| <= 127, so the low bits of `shifted` hold n + 2^22 + 2^23 exactly.
    let biased = shifted
        .to_bits()
        .wrapping_sub(ROUND.to_bits())
        .wrapping_add(127);
    y * f32::from_bits(biased << 23)
}

/// Sum with sixteen independent accumulators (vectorisable; the order differs from `exact`).
#[inline(always)]
fn sum16(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let chunks = x.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Maximum with sixteen independent lanes (vectorisable; `f32::max` is fine here: this engine
/// is not bit-exact by design).
#[inline(always)]
fn max16(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let chunks = x.chunks_exact(16);
    let tail = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, v| m.max(*v));
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a = a.max(*v);
        }
    }
    acc.iter().fold(tail, |m, v| m.max(*v))
}

#[inline(always)]
fn softmax_fast(x: &mut [f32]) {
    let m = max16(x);
    for v in x.iter_mut() {
        *v = exp_fast(*v - m);
    }
    let inv = 1.0 / sum16(x);
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// LayerNorm of one token `x` into `y` (two passes: mean, then centred variance).
#[inline(always)]
fn layer_norm_into(x: &[f32], y: &mut [f32], w: &[f32], b: &[f32]) {
    let n = x.len() as f32;
    let mean = sum16(x) / n;
    for (o, v) in y.iter_mut().zip(x) {
        *o = v - mean;
    }
    let mut acc = [0.0f32; 16];
    let chunks = y.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().map(|d| d * d).sum();
    for c in chunks {
        for (a, d) in acc.iter_mut().zip(c) {
            *a += d * d;
        }
    }
    let var = (acc.iter().sum::<f32>() + tail) / n;
    let inv = 1.0 / (var + LN_EPS).sqrt();
    for ((o, wi), bi) in y.iter_mut().zip(w).zip(b) {
        *o = *o * inv * wi + bi;
    }
}

/// LayerNorm of every `c`-channel row of `x` into the same row of `y`.
#[inline(always)]
fn layer_norm_rows_into(x: &[f32], y: &mut [f32], c: usize, w: &[f32], b: &[f32]) {
    for (xr, yr) in x.chunks_exact(c).zip(y.chunks_exact_mut(c)) {
        layer_norm_into(xr, yr, w, b);
    }
}

/// Depthwise conv weights transposed to `[k*k, C]` so the channel loop is contiguous.
fn transpose_dw(w: &[f32], c: usize, k: usize) -> Vec<f32> {
    let mut t = vec![0.0; c * k * k];
    for ch in 0..c {
        for tap in 0..k * k {
            t[tap * c + ch] = w[ch * k * k + tap];
        }
    }
    t
}

/// Depthwise `k x k` conv, padding `k/2`, stride `s`: `x: [h*h, c]` -> `y: [ho*ho, c]`, then
/// GELU on each output pixel while it is in L1 when `gelu` is set.
#[inline(always)]
fn depthwise(
    x: &[f32],
    h: usize,
    c: usize,
    k: usize,
    s: usize,
    wt: &[f32],
    b: &[f32],
    y: &mut [f32],
    gelu: bool,
) {
    let ho = (h + 2 * (k / 2) - k) / s + 1;
    let pad = k / 2;
    for oy in 0..ho {
        for ox in 0..ho {
            let out = &mut y[(oy * ho + ox) * c..(oy * ho + ox + 1) * c];
            out.copy_from_slice(b);
            for ky in 0..k {
                let Some(iy) = (oy * s + ky).checked_sub(pad).filter(|v| *v < h) else {
                    continue;
                };
                for kx in 0..k {
                    let Some(ix) = (ox * s + kx).checked_sub(pad).filter(|v| *v < h) else {
                        continue;
                    };
                    let src = &x[(iy * h + ix) * c..(iy * h + ix + 1) * c];
                    let w = &wt[(ky * k + kx) * c..(ky * k + kx + 1) * c];
                    for ((o, xv), wv) in out.iter_mut().zip(src).zip(w) {
                        *o += xv * wv;
                    }
                }
            }
            if gelu {
                gelu_all(out);
            }
        }
    }
}

/// Pointwise -> depthwise -> pointwise, the shape of MBConv and PatchMerging.
struct ConvTriple {
    pw1: Packed,
    dw: Vec<f32>,
    dw_b: Vec<f32>,
    pw3: Packed,
}

impl ConvTriple {
    fn read(
        rd: &mut Reader<'_>,
        kernel: Kernel,
        cin: usize,
        mid: usize,
        cout: usize,
    ) -> Result<Self, EngineError> {
        let w1 = rd.take(mid * cin)?;
        let pw1 = Packed::linear(kernel, w1, rd.take(mid)?);
        let dw = transpose_dw(rd.take(mid * 9)?, mid, 3);
        let dw_b = rd.take(mid)?.to_vec();
        let w3 = rd.take(cout * mid)?;
        let pw3 = Packed::linear(kernel, w3, rd.take(cout)?);
        Ok(ConvTriple { pw1, dw, dw_b, pw3 })
    }
}

struct Block<'a> {
    /// Gathered bias `[heads, T, T]`.
    bias: Vec<f32>,
    an_w: &'a [f32],
    an_b: &'a [f32],
    qkv: Packed,
    proj: Packed,
    mn_w: &'a [f32],
    mn_b: &'a [f32],
    fc1: Packed,
    fc2: Packed,
    lc: Vec<f32>,
    lc_b: &'a [f32],
}

/// A network prepared for the fast engine (packed GEMM weights, transposed depthwise kernels,
/// gathered attention biases).
pub struct FastModel<'a> {
    cfg: ModelConfig,
    kernel: Kernel,
    stem1: Packed,
    stem2: Packed,
    mbconv: Vec<ConvTriple>,
    blocks: [Vec<Block<'a>>; STAGES],
    merges: Vec<ConvTriple>,
    head_norm: [&'a [f32]; 2],
    head: Packed,
    work: std::cell::RefCell<Work>,
}

impl core::fmt::Debug for FastModel<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FastModel")
            .field("cfg", &self.cfg)
            .field("kernel", &self.kernel)
            .finish()
    }
}

impl<'a> FastModel<'a> {
    /// Prepares `weights` for the widest kernel this CPU runs ([`Kernel::detect`]).
    pub fn new(weights: &Weights<'a>) -> Result<Self, EngineError> {
        Self::with_kernel(weights, Kernel::detect())
    }

    /// Bytes this engine allocates for `cfg` on `kernel`: packed weights, gathered attention
    /// biases, transposed depthwise kernels and the workspace (all of it, once).
    pub fn memory(cfg: &ModelConfig, kernel: Kernel) -> Result<u64, EngineError> {
        Ok(Plan::new(cfg, kernel)?.bytes)
    }

    /// Prepares `weights` for `kernel` (reads every tensor once, in
    /// [`crate::params::for_each_folded`] order); an error if this CPU cannot run it, or if the
    /// network's work ([`super::macs`]) or this engine's memory ([`FastModel::memory`])
    /// exceeds the weights' limits, checked before anything is allocated.
    pub fn with_kernel(weights: &Weights<'a>, kernel: Kernel) -> Result<Self, EngineError> {
        if !kernel.supported() {
            return Err(EngineError::KernelUnsupported(kernel.name()));
        }
        let cfg = *weights.config();
        let limits = weights.limits();
        limits.check_macs(&cfg)?;
        let plan = Plan::new(&cfg, kernel)?;
        limits.check_memory(plan.bytes)?;
        let mut rd = weights.reader();
        let e = cfg.embed_dims.map(|v| v as usize);
        let cin = cfg.in_chans as usize;
        let half = e[0] / 2;
        let w = rd.take(half * cin * 9)?;
        let stem1 = Packed::linear(kernel, w, rd.take(half)?);
        let w = rd.take(e[0] * half * 9)?;
        let stem2 = Packed::linear(kernel, w, rd.take(e[0])?);
        let hid0 = e[0] * cfg.mbconv_expand_ratio as usize;
        let mut mbconv = Vec::with_capacity(cfg.depths[0] as usize);
        for _ in 0..cfg.depths[0] {
            mbconv.push(ConvTriple::read(&mut rd, kernel, e[0], hid0, e[0])?);
        }
        let mut blocks: [Vec<Block<'a>>; STAGES] = core::array::from_fn(|s| {
            Vec::with_capacity(if s > 0 { cfg.depths[s] as usize } else { 0 })
        });
        let mut merges = Vec::with_capacity(STAGES - 1);
        for s in 0..STAGES {
            if s > 0 {
                let c = e[s];
                let heads = cfg.num_heads[s] as usize;
                let ws = cfg.window_sizes[s] as usize;
                let t = ws * ws;
                let hid = c * cfg.mlp_ratio as usize;
                let k = cfg.local_conv_size as usize;
                for _ in 0..cfg.depths[s] {
                    let table = rd.take(heads * t)?;
                    let mut bias = vec![0.0; heads * t * t];
                    for h in 0..heads {
                        for i in 0..t {
                            for j in 0..t {
                                bias[(h * t + i) * t + j] = table[h * t + bias_index(i, j, ws)];
                            }
                        }
                    }
                    let an_w = rd.take(c)?;
                    let an_b = rd.take(c)?;
                    let w = rd.take(3 * c * c)?;
                    let qkv = Packed::linear(kernel, w, rd.take(3 * c)?);
                    let w = rd.take(c * c)?;
                    let proj = Packed::linear(kernel, w, rd.take(c)?);
                    let mn_w = rd.take(c)?;
                    let mn_b = rd.take(c)?;
                    let w = rd.take(hid * c)?;
                    let fc1 = Packed::linear(kernel, w, rd.take(hid)?);
                    let w = rd.take(c * hid)?;
                    let fc2 = Packed::linear(kernel, w, rd.take(c)?);
                    blocks[s].push(Block {
                        bias,
                        an_w,
                        an_b,
                        qkv,
                        proj,
                        mn_w,
                        mn_b,
                        fc1,
                        fc2,
                        lc: transpose_dw(rd.take(c * k * k)?, c, k),
                        lc_b: rd.take(c)?,
                    });
                }
            }
            if s + 1 < STAGES {
                merges.push(ConvTriple::read(&mut rd, kernel, e[s], e[s + 1], e[s + 1])?);
            }
        }
        let nc = cfg.num_classes as usize;
        let head_norm = [rd.take(e[3])?, rd.take(e[3])?];
        let w = rd.take(nc * e[3])?;
        let head = Packed::linear(kernel, w, rd.take(nc)?);
        Ok(FastModel {
            cfg,
            kernel,
            stem1,
            stem2,
            mbconv,
            blocks,
            merges,
            head_norm,
            head,
            work: std::cell::RefCell::new(Work::new(kernel, &plan.work)),
        })
    }

    /// The network.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// The kernel this model runs on.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// Runs a batch: `input: [B, C, H, W]` normalised, `logits: [B, num_classes]`.
    ///
    /// Intermediate buffers live in a workspace kept by the model and only grow, so repeated
    /// calls do not allocate (or page-fault) after the first.
    pub fn forward(&self, input: &[f32], logits: &mut [f32]) -> Result<(), EngineError> {
        let n_in = input_len(&self.cfg)?;
        let nc = self.cfg.num_classes as usize;
        if n_in == 0 || !input.len().is_multiple_of(n_in) {
            return Err(EngineError::InputLen {
                expected: n_in,
                got: input.len(),
            });
        }
        let b = input.len() / n_in;
        if logits.len() != b * nc {
            return Err(EngineError::LogitsLen {
                expected: b * nc,
                got: logits.len(),
            });
        }
        let mut ws = self.work.borrow_mut();
        for (img, out) in input.chunks_exact(n_in).zip(logits.chunks_exact_mut(nc)) {
            self.forward_one(img, out, &mut ws);
        }
        Ok(())
    }

    /// Runs the body compiled for the kernel's vector width: the same Rust, with AVX-512 or
    /// AVX2 + FMA enabled (only vector width changes; LLVM does not contract multiply-adds
    /// outside the GEMM kernels), else the baseline build.
    #[allow(unsafe_code)]
    fn forward_one(&self, input: &[f32], logits: &mut [f32], ws: &mut Work) {
        match self.kernel {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `with_kernel` checked that the CPU supports the kernel's features.
            Kernel::Avx512 => unsafe { self.forward_one_avx512(input, logits, ws) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Kernel::Avx2 => unsafe { self.forward_one_avx2(input, logits, ws) },
            _ => self.forward_one_body(input, logits, ws),
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma")]
    #[allow(unsafe_code)]
    unsafe fn forward_one_avx512(&self, input: &[f32], logits: &mut [f32], ws: &mut Work) {
        self.forward_one_body(input, logits, ws);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    #[allow(unsafe_code)]
    unsafe fn forward_one_avx2(&self, input: &[f32], logits: &mut [f32], ws: &mut Work) {
        self.forward_one_body(input, logits, ws);
    }

    #[inline(always)]
    fn forward_one_body(&self, input: &[f32], logits: &mut [f32], ws: &mut Work) {
        let cfg = &self.cfg;
        let e = cfg.embed_dims.map(|v| v as usize);
        let r = cfg.stage_resolutions().map(|v| v as usize);
        self.stem(input, ws);
        let hid0 = cfg.mbconv_expand_ratio as usize * e[0];
        for m in &self.mbconv {
            mbconv(m, r[0], e[0], hid0, ws);
        }
        for s in 0..STAGES {
            if s > 0 {
                for b in &self.blocks[s] {
                    self.block(b, s, ws);
                }
            }
            if s + 1 < STAGES {
                merge(&self.merges[s], r[s], e[s], e[s + 1], ws);
            }
        }
        let c = e[3];
        let n = r[3] * r[3];
        let x = &ws.x[..n * c];
        let [t0, t1, ..] = &mut ws.t;
        let pooled = grow(t0, c);
        pooled.fill(0.0);
        for t in x.chunks_exact(c) {
            for (p, v) in pooled.iter_mut().zip(t) {
                *p += v;
            }
        }
        for p in pooled.iter_mut() {
            *p /= n as f32;
        }
        let [nw, nb] = self.head_norm;
        let normed = grow(t1, c);
        layer_norm_into(pooled, normed, nw, nb);
        gemm(1, normed, c, &self.head, SET, logits, logits.len());
    }

    /// Both stem convs through im2col + GEMM; the result goes to `ws.x`.
    #[inline(always)]
    fn stem(&self, input: &[f32], ws: &mut Work) {
        let (cin, img, e0, half, w1, r0) = stem_dims(&self.cfg);
        let [t0, t1, ..] = &mut ws.t;
        // im2col of the CHW input: rows = output pixels, cols = (i, ky, kx).
        let kk = cin * 9;
        let cols = grow(t0, w1 * w1 * kk);
        im2col_3x3_s2(cols, img, w1, cin, |i, iy, ix| {
            input[(i * img + iy) * img + ix]
        });
        let y1 = grow(t1, w1 * w1 * half);
        gemm(w1 * w1, cols, kk, &self.stem1, SET_GELU, y1, half);
        // im2col of the token-major map: cols = (i, ky, kx) to match [o, i, ky, kx].
        let kk2 = half * 9;
        let cols2 = grow(t0, r0 * r0 * kk2);
        im2col_3x3_s2(cols2, w1, r0, half, |i, iy, ix| {
            y1[(iy * w1 + ix) * half + i]
        });
        let out = grow(&mut ws.x, r0 * r0 * e0);
        gemm(r0 * r0, cols2, kk2, &self.stem2, SET, out, e0);
    }

    /// One TinyViT block in place on `ws.x: [r*r, c]`.
    #[inline(always)]
    fn block(&self, b: &Block<'_>, s: usize, ws: &mut Work) {
        let cfg = &self.cfg;
        let r = cfg.stage_resolutions()[s] as usize;
        let c = cfg.embed_dims[s] as usize;
        let heads = cfg.num_heads[s] as usize;
        let wsz = cfg.window_sizes[s] as usize;
        let k = cfg.local_conv_size as usize;
        let hd = c / heads;
        let t = wsz * wsz;
        let nw = r.div_ceil(wsz);
        let m = nw * nw * t;
        // One window covering the whole map: tokens are already in window order.
        let whole = nw == 1 && wsz == r;
        let x = &mut ws.x[..r * r * c];
        let [t0, t1, t2, t3] = &mut ws.t;
        // The attention LayerNorm of every token, written in window order. Padding tokens are
        // zeros normalised like the others, which gives the LayerNorm's bias.
        let win = grow(t0, m * c);
        if whole {
            layer_norm_rows_into(x, win, c, b.an_w, b.an_b);
        } else {
            for wy in 0..nw {
                for wx in 0..nw {
                    for i in 0..t {
                        let (y, xx) = (wy * wsz + i / wsz, wx * wsz + i % wsz);
                        let row = &mut win[((wy * nw + wx) * t + i) * c..][..c];
                        if y < r && xx < r {
                            let src = &x[(y * r + xx) * c..(y * r + xx + 1) * c];
                            layer_norm_into(src, row, b.an_w, b.an_b);
                        } else {
                            row.copy_from_slice(b.an_b);
                        }
                    }
                }
            }
        }
        let qkv = grow(t1, m * 3 * c);
        gemm(m, win, c, &b.qkv, SET, qkv, 3 * c);
        let scale = 1.0 / (hd as f32).sqrt();
        let scores = grow(t2, t * t);
        let (kp, vp) = (&mut ws.keys, &mut ws.values);
        // `win` now receives the head outputs.
        for w in 0..nw * nw {
            let base = w * t * 3 * c;
            for h in 0..heads {
                let q = &qkv[base + h * 3 * hd..];
                kp.set_nk(&qkv[base + h * 3 * hd + hd..], 3 * c, t, hd, scale);
                vp.set_kn(&qkv[base + h * 3 * hd + 2 * hd..], 3 * c, t, hd);
                scores.copy_from_slice(&b.bias[h * t * t..(h + 1) * t * t]);
                gemm(t, q, 3 * c, kp, ADD, scores, t);
                for row in scores.chunks_exact_mut(t) {
                    softmax_fast(row);
                }
                gemm(t, scores, t, vp, SET, &mut win[w * t * c + h * hd..], c);
            }
        }
        if whole {
            gemm(m, win, c, &b.proj, ADD, x, c);
        } else {
            let proj = grow(t3, m * c);
            gemm(m, win, c, &b.proj, SET, proj, c);
            for wy in 0..nw {
                for wx in 0..nw {
                    for i in 0..t {
                        let (y, xx) = (wy * wsz + i / wsz, wx * wsz + i % wsz);
                        if y < r && xx < r {
                            let row = ((wy * nw + wx) * t + i) * c;
                            for (d, p) in x[(y * r + xx) * c..(y * r + xx + 1) * c]
                                .iter_mut()
                                .zip(&proj[row..row + c])
                            {
                                *d += p;
                            }
                        }
                    }
                }
            }
        }
        // Local conv, no residual: its output becomes `x`.
        let n = r * r;
        depthwise(x, r, c, k, 1, &b.lc, b.lc_b, grow(t0, n * c), false);
        core::mem::swap(&mut ws.x, t0);
        let x = &mut ws.x[..n * c];
        // MLP with residual, accumulated straight into `x`.
        let hid = b.fc1.n();
        let normed = grow(t2, n * c);
        layer_norm_rows_into(x, normed, c, b.mn_w, b.mn_b);
        let hmat = grow(t1, n * hid);
        gemm(n, normed, c, &b.fc1, SET_GELU, hmat, hid);
        gemm(n, hmat, hid, &b.fc2, ADD, x, c);
    }
}

/// Reusable buffers of the fast engine: the activation `x`, temporaries, and the packed keys
/// and values of one attention head. Allocated once at their [`WorkSizes`], so no layer grows
/// them.
struct Work {
    x: Vec<f32>,
    t: [Vec<f32>; 4],
    keys: Packed,
    values: Packed,
}

impl Work {
    fn new(kernel: Kernel, sizes: &WorkSizes) -> Self {
        let presized = |len: usize| {
            let mut p = Packed::empty(kernel);
            // One panel of `len / nr` rows, every row copied from the same `nr` zeros: sizes the
            // panel storage once; later packings of at most `len` values reuse it. `nr(1)` is
            // the tile width, of which `len` is a multiple, or 1 for `matrixmultiply`, whose
            // panels are unpadded: `len` values exactly, as the plan counts them.
            let nr = kernel.nr(1);
            if len > 0 {
                p.set_kn(&[0.0; 32][..nr], 0, len.div_ceil(nr), nr);
            }
            p
        };
        Work {
            // `x` and `t[0]` trade places after each local conv: both get the larger size.
            x: vec![0.0; sizes.x],
            t: [
                vec![0.0; sizes.x],
                vec![0.0; sizes.t1],
                vec![0.0; sizes.t2],
                vec![0.0; sizes.t3],
            ],
            keys: presized(sizes.keys),
            values: presized(sizes.values),
        }
    }
}

/// f32 values each workspace buffer needs: the largest any layer asks of it.
#[derive(Clone, Copy, Debug, Default)]
struct WorkSizes {
    /// `x` and `t[0]`.
    x: usize,
    t1: usize,
    t2: usize,
    t3: usize,
    /// Packed keys `[hd, T]` and values `[T, hd]` of one head.
    keys: usize,
    values: usize,
}

/// What [`FastModel::with_kernel`] will allocate for a config, computed with checked
/// arithmetic by walking the layers as `with_kernel` and `forward_one_body` do.
struct Plan {
    work: WorkSizes,
    /// Every byte: the work buffers, the packed weights, gathered biases, depthwise kernels
    /// and the per-layer structs.
    bytes: u64,
}

impl Plan {
    fn new(cfg: &ModelConfig, kernel: Kernel) -> Result<Plan, EngineError> {
        cfg.validate()?;
        // Panel storage of `B: [k, n]`: `ceil(n / nr)` panels of `k` rows of `nr`.
        let panels = |n: usize, k: usize| {
            let nr = kernel.nr(n);
            mul(mul(n.div_ceil(nr), nr)?, k)
        };
        // A packed Linear `[n, k]` with its bias.
        let linear = |n: usize, k: usize| add(panels(n, k)?, panels(n, 1)?);
        // Pointwise -> 3x3 depthwise -> pointwise.
        let triple = |cin: usize, mid: usize, cout: usize| {
            add(add(linear(mid, cin)?, mul(mid, 10)?)?, linear(cout, mid)?)
        };
        let mut w = WorkSizes::default();
        let grow = |v: &mut usize, n: usize| *v = (*v).max(n);
        let (cin, _, e0, half, w1, r0) = stem_dims(cfg);
        let e = cfg.embed_dims.map(|v| v as usize);
        let r = cfg.stage_resolutions().map(|v| v as usize);
        let mut values = 0usize;

        grow(&mut w.x, mul(mul(w1, w1)?, mul(cin, 9)?)?);
        grow(&mut w.t1, mul(mul(w1, w1)?, half)?);
        grow(&mut w.x, mul(mul(r0, r0)?, mul(half, 9)?)?);
        grow(&mut w.x, mul(mul(r0, r0)?, e0)?);
        values = add(
            values,
            add(linear(half, mul(cin, 9)?)?, linear(e0, mul(half, 9)?)?)?,
        )?;

        let hid0 = mul(e0, cfg.mbconv_expand_ratio as usize)?;
        let n0 = mul(r0, r0)?;
        grow(&mut w.x, mul(n0, hid0)?);
        grow(&mut w.t1, mul(n0, hid0)?);
        values = add(values, mul(cfg.depths[0] as usize, triple(e0, hid0, e0)?)?)?;

        let mut block_structs = 0usize;
        for s in 0..STAGES {
            if s > 0 {
                let c = e[s];
                let heads = cfg.num_heads[s] as usize;
                let ws = cfg.window_sizes[s] as usize;
                let hd = c / heads;
                let t = mul(ws, ws)?;
                let nw = r[s].div_ceil(ws);
                let m = mul(mul(nw, nw)?, t)?;
                let hid = mul(c, cfg.mlp_ratio as usize)?;
                let k = cfg.local_conv_size as usize;
                let n = mul(r[s], r[s])?;
                grow(&mut w.x, mul(m, c)?);
                grow(&mut w.t1, mul(m, mul(3, c)?)?);
                grow(&mut w.t2, mul(t, t)?);
                if !(nw == 1 && ws == r[s]) {
                    grow(&mut w.t3, mul(m, c)?);
                }
                grow(&mut w.keys, panels(t, hd)?);
                grow(&mut w.values, panels(hd, t)?);
                grow(&mut w.x, mul(n, c)?);
                grow(&mut w.t2, mul(n, c)?);
                grow(&mut w.t1, mul(n, hid)?);
                let block = [
                    mul(heads, mul(t, t)?)?, // gathered bias
                    linear(mul(3, c)?, c)?,
                    linear(c, c)?,
                    linear(hid, c)?,
                    linear(c, hid)?,
                    mul(c, mul(k, k)?)?, // transposed local conv
                ]
                .into_iter()
                .try_fold(0usize, add)?;
                let depth = cfg.depths[s] as usize;
                values = add(values, mul(depth, block)?)?;
                block_structs = add(block_structs, depth)?;
            }
            if s + 1 < STAGES {
                let (cout, r2) = (e[s + 1], r[s].div_ceil(2));
                grow(&mut w.x, mul(mul(r[s], r[s])?, cout)?);
                grow(&mut w.t1, mul(mul(r2, r2)?, cout)?);
                grow(&mut w.x, mul(mul(r2, r2)?, cout)?);
                values = add(values, triple(e[s], cout, cout)?)?;
            }
        }
        grow(&mut w.x, e[3]);
        grow(&mut w.t1, e[3]);
        values = add(values, linear(cfg.num_classes as usize, e[3])?)?;

        let work = [w.x, w.x, w.t1, w.t2, w.t3, w.keys, w.values]
            .into_iter()
            .try_fold(0usize, add)?;
        let structs = add(
            mul(size_of::<ConvTriple>(), cfg.depths[0] as usize + STAGES - 1)?,
            mul(size_of::<Block<'_>>(), block_structs)?,
        )?;
        let bytes = add(mul(add(values, work)?, size_of::<f32>())?, structs)?;
        Ok(Plan {
            work: w,
            bytes: bytes as u64,
        })
    }
}

/// im2col of a 3x3, stride-2, padding-1 convolution over a `side x side` map of `cin`
/// channels read through `at(channel, y, x)`: row `oy * out + ox` of `cols` holds the
/// `(i, ky, kx)` window of output pixel `(oy, ox)`, zeros where the window leaves the map.
#[inline(always)]
fn im2col_3x3_s2(
    cols: &mut [f32],
    side: usize,
    out: usize,
    cin: usize,
    at: impl Fn(usize, usize, usize) -> f32,
) {
    let kk = cin * 9;
    cols.fill(0.0);
    for oy in 0..out {
        for ox in 0..out {
            let row = &mut cols[(oy * out + ox) * kk..(oy * out + ox + 1) * kk];
            for ky in 0..3 {
                let Some(iy) = (2 * oy + ky).checked_sub(1).filter(|v| *v < side) else {
                    continue;
                };
                for kx in 0..3 {
                    let Some(ix) = (2 * ox + kx).checked_sub(1).filter(|v| *v < side) else {
                        continue;
                    };
                    for i in 0..cin {
                        row[(i * 3 + ky) * 3 + kx] = at(i, iy, ix);
                    }
                }
            }
        }
    }
}

/// The first `n` values of `v` (contents are stale). [`Plan`] sized every buffer for the
/// largest layer, so this never grows one; if it had to (a planning bug), it grows rather than
/// fail, and debug builds (tests, fuzzing) stop on it.
#[inline(always)]
fn grow(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    debug_assert!(
        n <= v.len(),
        "fast engine workspace under-planned: {n} > {}",
        v.len()
    );
    if v.len() < n {
        v.resize(n, 0.0);
    }
    &mut v[..n]
}

/// MBConv on `ws.x: [r*r, c]`: `x = GELU(x + pw3(GELU(dw(GELU(pw1(x))))))`.
#[inline(always)]
fn mbconv(m: &ConvTriple, r: usize, c: usize, hid: usize, ws: &mut Work) {
    let n = r * r;
    let x = &mut ws.x[..n * c];
    let [t0, t1, ..] = &mut ws.t;
    let a = grow(t0, n * hid);
    gemm(n, x, c, &m.pw1, SET_GELU, a, hid);
    let d = grow(t1, n * hid);
    depthwise(a, r, hid, 3, 1, &m.dw, &m.dw_b, d, true);
    gemm(n, d, hid, &m.pw3, ADD_GELU, x, c);
}

/// PatchMerging from `ws.x: [r*r, cin]` to `ws.x: [r2*r2, cout]`.
#[inline(always)]
fn merge(m: &ConvTriple, r: usize, cin: usize, cout: usize, ws: &mut Work) {
    let n = r * r;
    let r2 = r.div_ceil(2);
    let [t0, t1, ..] = &mut ws.t;
    let a = grow(t0, n * cout);
    gemm(n, &ws.x[..n * cin], cin, &m.pw1, SET_GELU, a, cout);
    let d = grow(t1, r2 * r2 * cout);
    depthwise(a, r, cout, 3, 2, &m.dw, &m.dw_b, d, true);
    let out = grow(&mut ws.x, r2 * r2 * cout);
    gemm(r2 * r2, d, cout, &m.pw3, SET, out, cout);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_fast_is_within_a_few_ulp_of_libm() {
        let mut worst = 0.0f32;
        let mut x = -6.0f32;
        while x < 6.0 {
            let d = (erf_fast(x) - libm::erff(x)).abs();
            if d > worst {
                worst = d;
            }
            x += 1e-3;
        }
        assert!(worst < 5e-7, "{worst}");
    }

    #[test]
    fn exp_fast_is_within_a_few_ulp_of_libm() {
        let mut x = -80.0f32;
        while x < 0.5 {
            let (a, b) = (exp_fast(x), libm::expf(x));
            assert!(((a - b) / b).abs() < 5e-7, "{x}: {a} vs {b}");
            x += 1e-2;
        }
        assert!(exp_fast(-1000.0) < 1e-37);
    }

    #[test]
    fn depthwise_stride_two_has_ceil_output() {
        // 5x5 single channel, all ones, kernel all ones: corner output sums a 2x2 patch.
        let x = vec![1.0f32; 25];
        let w = vec![1.0f32; 9];
        let mut y = vec![0.0f32; 9];
        depthwise(&x, 5, 1, 3, 2, &w, &[0.0], &mut y, false);
        assert_eq!(y, [4.0, 6.0, 4.0, 6.0, 9.0, 6.0, 4.0, 6.0, 4.0]);
    }
}

/// Synthetic networks and inputs shared by the agreement and property tests.
#[cfg(test)]
mod testnet {
    use super::*;
    use crate::engine::{arena_len, exact, fold::fold_state_dict};
    use crate::params::{splitmix64, synthetic_state_dict};

    /// The folded weights of a synthetic network (from `weight_seed`) and `images` inputs in
    /// [-2, 2) (from `input_seed`).
    pub(super) fn network(
        cfg: &ModelConfig,
        weight_seed: u64,
        input_seed: u64,
        images: usize,
    ) -> (Vec<f32>, Vec<f32>) {
        let sd = synthetic_state_dict(cfg, weight_seed);
        let blob = fold_state_dict(cfg, |n| {
            sd.iter().find(|t| t.name == n).map(|t| &t.values[..])
        })
        .unwrap();
        let mut s = input_seed;
        let x = (0..images * input_len(cfg).unwrap())
            .map(|_| (splitmix64(&mut s) >> 40) as f32 / (1u64 << 22) as f32 - 2.0)
            .collect();
        (blob, x)
    }

    /// The exact engine's logits of every image in `x`.
    pub(super) fn exact_logits(w: &Weights<'_>, x: &[f32]) -> Vec<f32> {
        let cfg = w.config();
        let (n, nc) = (input_len(cfg).unwrap(), cfg.num_classes as usize);
        let mut arena = vec![0.0; arena_len(cfg).unwrap()];
        let mut out = vec![0.0; x.len() / n * nc];
        for (img, l) in x.chunks_exact(n).zip(out.chunks_exact_mut(nc)) {
            exact::forward(w, img, &mut arena, l).unwrap();
        }
        out
    }
}

#[cfg(test)]
mod agreement {
    use super::testnet::{exact_logits, network};
    use super::*;
    use crate::params::splitmix64;

    /// Max |exact - fast| / max|exact| over the logits of a batch of two images.
    fn rel_diff(cfg: &ModelConfig) -> f32 {
        let (blob, x) = network(cfg, 21, 5, 2);
        let w = Weights::new(cfg, &blob).unwrap();
        let exact_l = exact_logits(&w, &x);
        let nc = cfg.num_classes as usize;
        let scale = exact_l.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let mut worst = 0.0f32;
        for kernel in Kernel::available() {
            let mut fast_l = vec![0.0; 2 * nc];
            FastModel::with_kernel(&w, kernel)
                .unwrap()
                .forward(&x, &mut fast_l)
                .unwrap();
            let diff = exact_l
                .iter()
                .zip(&fast_l)
                .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            worst = worst.max(diff / scale);
        }
        worst
    }

    #[test]
    fn fast_agrees_with_exact_on_the_mcu_presets_and_padded_windows() {
        for cfg in [
            ModelConfig::tiny_vit_mcu_h7(),
            ModelConfig::tiny_vit_mcu_m4(),
            ModelConfig::tiny_vit_mcu_h7()
                .with_img_size(40)
                .with_in_chans(3),
        ] {
            let d = rel_diff(&cfg);
            assert!(d < 1e-5, "{cfg:?}: {d}");
        }
    }

    /// Networks whose LayerNorms span 4 channels (pinned in proptest-regressions/ when the
    /// property test still drew them) miss the 1e-5 bound. That is the networks' conditioning,
    /// not an engine fault: moving every input by one ulp moves the `exact` engine's own logits
    /// by as much as `fast` differs from it. On a preset the same probe stays near 1e-6.
    #[test]
    fn disagreement_on_tiny_layernorms_is_within_one_ulp_sensitivity() {
        let mut a = ModelConfig::tiny_vit_mcu_m4();
        (a.in_chans, a.img_size, a.num_classes) = (1, 35, 1);
        (a.embed_dims, a.num_heads, a.window_sizes) = ([4, 8, 8, 8], [1, 2, 2, 2], [3, 3, 2, 2]);
        (
            a.depths,
            a.mlp_ratio,
            a.mbconv_expand_ratio,
            a.local_conv_size,
        ) = ([1, 1, 2, 1], 2, 1, 5);
        let mut b = a;
        (b.img_size, b.embed_dims, b.num_heads) = (27, [4, 12, 4, 4], [1, 3, 1, 1]);
        (b.window_sizes, b.mbconv_expand_ratio, b.local_conv_size) = ([1, 1, 3, 1], 4, 1);
        for (cfg, seed, preset) in [
            (a, 892, false),
            (b, 456, false),
            (ModelConfig::tiny_vit_mcu_m4(), 3, true),
        ] {
            let (blob, x) = network(&cfg, seed, seed, 1);
            let w = Weights::new(&cfg, &blob).unwrap();
            let nc = cfg.num_classes as usize;
            let e = exact_logits(&w, &x);
            let scale = e.iter().fold(0.1f32, |m, v| m.max(v.abs()));
            let max_diff = |a: &[f32], b: &[f32]| {
                a.iter()
                    .zip(b)
                    .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
                    / scale
            };
            // The exact engine's spread over 20 inputs each one ulp away, in random directions.
            let mut spread = 0.0f32;
            for t in 0..20u64 {
                let mut s2 = 1000 + t;
                let xp: Vec<f32> = x
                    .iter()
                    .map(|v| {
                        let bits = v.to_bits();
                        let up = splitmix64(&mut s2) & 1 == 0;
                        f32::from_bits(if up || bits == 0 { bits + 1 } else { bits - 1 })
                    })
                    .collect();
                spread = spread.max(max_diff(&e, &exact_logits(&w, &xp)));
            }
            if preset {
                assert!(spread < 1e-5, "preset spread {spread}");
            }
            for kernel in Kernel::available() {
                let mut f = vec![0.0; nc];
                FastModel::with_kernel(&w, kernel)
                    .unwrap()
                    .forward(&x, &mut f)
                    .unwrap();
                let d = max_diff(&e, &f);
                assert!(
                    d <= 2.0 * spread,
                    "{kernel:?} {cfg:?}: |fast-exact| {d:.2e} vs one-ulp spread {spread:.2e}"
                );
            }
        }
    }

    #[test]
    fn every_kernel_runs_or_is_refused_by_name() {
        // A synthetic network at a small input: each kernel this CPU has runs a forward pass
        // and matches the exact engine; the others are refused by name, and say so.
        let cfg = ModelConfig::tiny_vit_mcu_m4().with_img_size(64);
        let (blob, x) = super::testnet::network(&cfg, 3, 4, 1);
        let w = Weights::new(&cfg, &blob).unwrap();
        let want = super::testnet::exact_logits(&w, &x);
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(scale > 0.0);
        for kernel in Kernel::ALL {
            match FastModel::with_kernel(&w, kernel) {
                Ok(m) => {
                    assert_eq!(m.kernel(), kernel);
                    let mut got = vec![0.0; want.len()];
                    m.forward(&x, &mut got).unwrap();
                    let diff = got
                        .iter()
                        .zip(&want)
                        .fold(0.0f32, |d, (a, b)| d.max((a - b).abs()));
                    assert!(diff <= 1e-4 * scale, "{}: {diff} vs {scale}", kernel.name());
                }
                Err(e) => {
                    assert!(!kernel.supported());
                    assert_eq!(e, EngineError::KernelUnsupported(kernel.name()));
                    std::eprintln!(
                        "SKIPPED kernel {}: not supported by this CPU",
                        kernel.name()
                    );
                }
            }
        }
        assert_eq!(FastModel::new(&w).unwrap().kernel(), Kernel::detect());
    }

    #[test]
    fn fast_rejects_bad_batches() {
        let cfg = ModelConfig::tiny_vit_mcu_m4();
        let blob = vec![0.0; crate::params::folded_blob_len(&cfg)];
        let w = Weights::new(&cfg, &blob).unwrap();
        let m = FastModel::new(&w).unwrap();
        let n = input_len(&cfg).unwrap();
        let mut l = vec![0.0; 10];
        assert!(matches!(
            m.forward(&vec![0.0; n + 1], &mut l),
            Err(EngineError::InputLen { .. })
        ));
        assert!(matches!(
            m.forward(&vec![0.0; 2 * n], &mut l),
            Err(EngineError::LogitsLen { .. })
        ));
    }
}

#[cfg(test)]
mod properties {
    use super::testnet::{exact_logits, network};
    use super::*;
    use proptest::prelude::*;

    fn config() -> impl Strategy<Value = ModelConfig> {
        (
            (1u32..=2, 4u32..=40, 1u32..=12),
            (1u32..=3, 1u32..=3, 1u32..=2, 1u32..=2),
            (1u32..=3, 1u32..=4, 1u32..=5),
            (
                1u32..=3,
                1u32..=4,
                prop_oneof![Just(1u32), Just(3), Just(5)],
            ),
        )
            .prop_map(
                |((ch, img, nc), (h1, h2, h3, unit), (w1, w2, w3), (mlp, ex, k))| {
                    let mut c = ModelConfig::tiny_vit_mcu_m4();
                    c.in_chans = if ch == 1 { 1 } else { 3 };
                    c.img_size = img;
                    c.num_classes = nc;
                    // Heads of 16 or 32 channels, so every LayerNorm spans at least 16 (the
                    // presets use 16-32): over 4 near-equal channels it amplifies rounding
                    // by orders of magnitude, which is conditioning, not an engine property.
                    let hd = 16 * unit;
                    c.num_heads = [1, h1, h2, h3];
                    c.embed_dims = [2 * unit * 2, h1 * hd, h2 * hd, h3 * hd];
                    c.depths = [1, 1, 2, 1];
                    c.window_sizes = [w1, w1, w2, w3];
                    c.mlp_ratio = mlp;
                    c.mbconv_expand_ratio = ex;
                    c.local_conv_size = k;
                    c
                },
            )
    }

    proptest! {
        // A fixed seed: these 64 random networks are the same on every machine; cases that
        // once failed stay pinned in proptest-regressions/.
        #![proptest_config(ProptestConfig {
            cases: 64,
            rng_seed: proptest::test_runner::RngSeed::Fixed(0x7417_0001),
            ..ProptestConfig::default()
        })]

        /// Arbitrary small networks (any input size, windows larger or smaller than the maps,
        /// padded or not, local conv 1/3/5): the exact engine runs in exactly `arena_len`
        /// values and the fast engine agrees with it.
        #[test]
        fn exact_fits_its_arena_and_fast_agrees(cfg in config(), seed in 0u64..1000) {
            prop_assert!(cfg.validate().is_ok(), "{:?}", cfg);
            let (blob, x) = network(&cfg, seed, seed, 1);
            let w = Weights::new(&cfg, &blob).unwrap();
            let nc = cfg.num_classes as usize;
            // Runs in exactly `arena_len` values (it errors on a smaller arena).
            let e = exact_logits(&w, &x);
            // Relative to the logits' scale, but never below 0.1: a logit near zero is the
            // cancellation of O(1) terms, whose rounding error is absolute, not relative (a
            // one-class head at -0.017 differed by 2.6e-7, 1.5e-5 of itself).
            let scale = e.iter().fold(0.1f32, |m, v| m.max(v.abs()));
            for kernel in Kernel::available() {
                let mut f = vec![0.0; nc];
                FastModel::with_kernel(&w, kernel).unwrap().forward(&x, &mut f).unwrap();
                for (a, b) in e.iter().zip(&f) {
                    prop_assert!(
                        (a - b).abs() <= 1e-5 * scale,
                        "{:?} {:?}: {} vs {}", kernel, cfg, a, b
                    );
                }
            }
        }
    }
}
