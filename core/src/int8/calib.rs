//! The f32 reference forward that calibration runs: the `exact` engine's graph over whole
//! maps (host only, allocating), reporting every activation at exactly the points where the
//! int8 graph quantises it.
//!
//! Points, by key (`<block>` is a layer prefix such as `layers.1.blocks.0`):
//! - `input`; `stream.<s>`: every state of stage `s`'s residual stream (stem and MBConv
//!   outputs, each attention / local conv / MLP result, the PatchMerging output);
//! - `patch_embed.seq.1.act`: the stem's GELU;
//! - `<gelu>.pre` for each GELU key below and above (`.act`, `.act1`, `.act2`, `.mlp.act`):
//!   that GELU's input;
//! - `<mbconv>.in`, `.act1`, `.act2`; `<downsample>.in`, `.act1`, `.act2`: the `i8` inputs and
//!   GELU outputs of MBConvs and PatchMergings;
//! - `<block>.attn.norm`, `.attn.q`, `.attn.k`, `.attn.v`, `.attn.out` (softmax-weighted v),
//!   `.mlp.norm`, `.mlp.act`;
//! - `norm_head`, `logits`.

use std::string::String;
use std::vec;
use std::vec::Vec;

use crate::config::{ModelConfig, STAGES};
use crate::engine::layers::{bias_index, gelu, layer_norm, linear, softmax, stem_dims};
use crate::engine::{EngineError, Weights};

/// `f(key, channels, values)` at each quantisation point; values are token-major, channel
/// `i % channels` for value `i`. They are the very buffer the forward continues with, so an
/// observer may also round them (fake quantisation, for diagnosis).
pub type Observer<'o> = dyn FnMut(&str, usize, &mut [f32]) + 'o;

/// A `k x k` conv (padding `k/2`) over a square token map `src: [h*h, cin]`, full or
/// depthwise; weights `[out, cin or 1, k, k]`. Returns `[ho*ho, out]` and `ho`.
fn conv(
    src: &[f32],
    h: usize,
    cin: usize,
    w: &[f32],
    b: &[f32],
    k: usize,
    stride: usize,
    depthwise: bool,
) -> (Vec<f32>, usize) {
    let cout = b.len();
    let pad = k / 2;
    let ho = (h + 2 * pad - k) / stride + 1;
    let mut out = vec![0.0; ho * ho * cout];
    for oy in 0..ho {
        for ox in 0..ho {
            for o in 0..cout {
                let mut acc = b[o];
                for ky in 0..k {
                    let Some(iy) = (oy * stride + ky).checked_sub(pad).filter(|v| *v < h) else {
                        continue;
                    };
                    for kx in 0..k {
                        let Some(ix) = (ox * stride + kx).checked_sub(pad).filter(|v| *v < h)
                        else {
                            continue;
                        };
                        let px = (iy * h + ix) * cin;
                        if depthwise {
                            acc += w[(o * k + ky) * k + kx] * src[px + o];
                        } else {
                            for i in 0..cin {
                                acc += w[((o * cin + i) * k + ky) * k + kx] * src[px + i];
                            }
                        }
                    }
                }
                out[(oy * ho + ox) * cout + o] = acc;
            }
        }
    }
    (out, ho)
}

/// GELU over `x` (`[.., channels]`), reporting its input as `<key>.pre` and its output as
/// `key`: the int8 graph quantises both (the table's index and its entries). A symmetric
/// range at the largest input magnitude measured best on the synthetic presets (relative
/// logit error of the int8 engine 0.100 / 0.054 on M4 / H7) against flooring the reported
/// inputs at -3, -4 or -6, where GELU is near zero (0.108 / 0.057, 0.104 / 0.056,
/// 0.103 / 0.057).
fn gelu_point(obs: &mut Observer<'_>, key: &str, channels: usize, x: &mut [f32]) {
    obs(&std::format!("{key}.pre"), channels, x);
    for v in x.iter_mut() {
        *v = gelu(*v);
    }
    obs(key, channels, x);
}

/// Runs one image (`[C, H, W]`, normalised) and reports every quantisation point to `obs`.
/// Returns the logits (within rounding of [`crate::engine::forward`]'s).
pub fn forward(
    weights: &Weights<'_>,
    input: &[f32],
    obs: &mut Observer<'_>,
) -> Result<Vec<f32>, EngineError> {
    let cfg: &ModelConfig = weights.config();
    let n_in = crate::engine::input_len(cfg)?;
    if input.len() != n_in {
        return Err(EngineError::InputLen {
            expected: n_in,
            got: input.len(),
        });
    }
    let mut rd = weights.reader();
    let r = cfg.stage_resolutions().map(|v| v as usize);
    let e = cfg.embed_dims.map(|v| v as usize);
    let (cin, img, e0, half, _, _) = stem_dims(cfg);
    // Token-major input.
    let mut tokens = vec![0.0; n_in];
    for i in 0..cin {
        for p in 0..img * img {
            tokens[p * cin + i] = input[i * img * img + p];
        }
    }
    obs("input", cin, &mut tokens);
    let (k1, b1) = (rd.take(half * cin * 9)?, rd.take(half)?);
    let (k2, b2) = (rd.take(e0 * half * 9)?, rd.take(e0)?);
    let (mut h1, w1) = conv(&tokens, img, cin, k1, b1, 3, 2, false);
    gelu_point(obs, "patch_embed.seq.1.act", half, &mut h1);
    let (mut x, _) = conv(&h1, w1, half, k2, b2, 3, 2, false);
    obs("stream.0", e0, &mut x);

    let hid0 = e0 * cfg.mbconv_expand_ratio as usize;
    for j in 0..cfg.depths[0] {
        let p = |s: &str| std::format!("layers.0.blocks.{j}.{s}");
        let (w1, b1) = (rd.take(hid0 * e0)?, rd.take(hid0)?);
        let (w2, b2) = (rd.take(hid0 * 9)?, rd.take(hid0)?);
        let (w3, b3) = (rd.take(e0 * hid0)?, rd.take(e0)?);
        let mut xin = x.clone();
        obs(&p("in"), e0, &mut xin);
        let (mut a, _) = conv(&xin, r[0], e0, w1, b1, 1, 1, false);
        gelu_point(obs, &p("act1"), hid0, &mut a);
        let (mut m, _) = conv(&a, r[0], hid0, w2, b2, 3, 1, true);
        gelu_point(obs, &p("act2"), hid0, &mut m);
        let (y, _) = conv(&m, r[0], hid0, w3, b3, 1, 1, false);
        for (v, y) in x.iter_mut().zip(&y) {
            *v = gelu(*v + *y);
        }
        obs("stream.0", e0, &mut x);
    }
    for s in 0..STAGES {
        if s > 0 {
            for j in 0..cfg.depths[s] {
                block(cfg, s, j, &mut rd, &mut x, obs)?;
            }
        }
        if s + 1 < STAGES {
            let (ci, co) = (e[s], e[s + 1]);
            let p = |x: &str| std::format!("layers.{s}.downsample.{x}");
            let (w1, b1) = (rd.take(co * ci)?, rd.take(co)?);
            let (w2, b2) = (rd.take(co * 9)?, rd.take(co)?);
            let (w3, b3) = (rd.take(co * co)?, rd.take(co)?);
            let mut xin = x.clone();
            obs(&p("in"), ci, &mut xin);
            let (mut a, _) = conv(&xin, r[s], ci, w1, b1, 1, 1, false);
            gelu_point(obs, &p("act1"), co, &mut a);
            let (mut m, r2) = conv(&a, r[s], co, w2, b2, 3, 2, true);
            gelu_point(obs, &p("act2"), co, &mut m);
            x = conv(&m, r2, co, w3, b3, 1, 1, false).0;
            obs(&std::format!("stream.{}", s + 1), co, &mut x);
        }
    }
    let c = e[3];
    let (nw, nb) = (rd.take(c)?, rd.take(c)?);
    let nc = cfg.num_classes as usize;
    let (hw, hb) = (rd.take(nc * c)?, rd.take(nc)?);
    let mut pooled = vec![0.0f32; c];
    for tok in x.chunks_exact(c) {
        for (p, v) in pooled.iter_mut().zip(tok) {
            *p += *v;
        }
    }
    let n = (x.len() / c) as f32;
    for p in pooled.iter_mut() {
        *p /= n;
    }
    layer_norm(&mut pooled, nw, nb);
    obs("norm_head", c, &mut pooled);
    let mut logits = vec![0.0; nc];
    linear(&pooled, hw, hb, &mut logits);
    obs("logits", nc, &mut logits);
    Ok(logits)
}

/// One TinyViT block over the whole map `x: [r*r, c]`.
fn block(
    cfg: &ModelConfig,
    s: usize,
    j: u32,
    rd: &mut crate::engine::Reader<'_>,
    x: &mut [f32],
    obs: &mut Observer<'_>,
) -> Result<(), EngineError> {
    let key = |k: &str| -> String { std::format!("layers.{s}.blocks.{j}.{k}") };
    let stream = std::format!("stream.{s}");
    let r = cfg.stage_resolutions()[s] as usize;
    let c = cfg.embed_dims[s] as usize;
    let heads = cfg.num_heads[s] as usize;
    let ws = cfg.window_sizes[s] as usize;
    let hid = c * cfg.mlp_ratio as usize;
    let k = cfg.local_conv_size as usize;
    let t = ws * ws;
    let hd = c / heads;
    let biases = rd.take(heads * t)?;
    let (an_w, an_b) = (rd.take(c)?, rd.take(c)?);
    let (qkv_w, qkv_b) = (rd.take(3 * c * c)?, rd.take(3 * c)?);
    let (proj_w, proj_b) = (rd.take(c * c)?, rd.take(c)?);
    let (mn_w, mn_b) = (rd.take(c)?, rd.take(c)?);
    let (fc1_w, fc1_b) = (rd.take(hid * c)?, rd.take(hid)?);
    let (fc2_w, fc2_b) = (rd.take(c * hid)?, rd.take(c)?);
    let (lc_w, lc_b) = (rd.take(c * k * k)?, rd.take(c)?);

    let scale = 1.0 / libm::sqrtf(hd as f32);
    let nwin = r.div_ceil(ws);
    let mut win = vec![0.0f32; t * c];
    let mut qkv = vec![0.0f32; t * 3 * c];
    let mut out = vec![0.0f32; t * c];
    let mut tmp = vec![0.0f32; c];
    let (mut qs, mut ks, mut vs) = (Vec::new(), Vec::new(), Vec::new());
    for wy in 0..nwin {
        for wx in 0..nwin {
            for i in 0..t {
                let (y, xx) = (wy * ws + i / ws, wx * ws + i % ws);
                let dst = &mut win[i * c..(i + 1) * c];
                if y < r && xx < r {
                    dst.copy_from_slice(&x[(y * r + xx) * c..(y * r + xx + 1) * c]);
                } else {
                    dst.fill(0.0);
                }
                layer_norm(dst, an_w, an_b);
            }
            obs(&key("attn.norm"), c, &mut win);
            for i in 0..t {
                linear(
                    &win[i * c..(i + 1) * c],
                    qkv_w,
                    qkv_b,
                    &mut qkv[i * 3 * c..(i + 1) * 3 * c],
                );
            }
            qs.clear();
            ks.clear();
            vs.clear();
            for i in 0..t {
                for h in 0..heads {
                    let base = i * 3 * c + h * 3 * hd;
                    qs.extend_from_slice(&qkv[base..base + hd]);
                    ks.extend_from_slice(&qkv[base + hd..base + 2 * hd]);
                    vs.extend_from_slice(&qkv[base + 2 * hd..base + 3 * hd]);
                }
            }
            obs(&key("attn.q"), hd, &mut qs);
            obs(&key("attn.k"), hd, &mut ks);
            obs(&key("attn.v"), hd, &mut vs);
            for i in 0..t {
                for h in 0..heads {
                    let base = i * 3 * c + h * 3 * hd;
                    let at = (i * heads + h) * hd;
                    qkv[base..base + hd].copy_from_slice(&qs[at..at + hd]);
                    qkv[base + hd..base + 2 * hd].copy_from_slice(&ks[at..at + hd]);
                    qkv[base + 2 * hd..base + 3 * hd].copy_from_slice(&vs[at..at + hd]);
                }
            }
            let mut scores = vec![0.0f32; t];
            for h in 0..heads {
                for i in 0..t {
                    let q = &qkv[i * 3 * c + h * 3 * hd..][..hd];
                    for j2 in 0..t {
                        let kj = &qkv[j2 * 3 * c + h * 3 * hd + hd..][..hd];
                        let mut d = 0.0f32;
                        for (a, b) in q.iter().zip(kj) {
                            d += a * b;
                        }
                        scores[j2] = d * scale + biases[h * t + bias_index(i, j2, ws)];
                    }
                    softmax(&mut scores);
                    let o = &mut out[i * c + h * hd..i * c + (h + 1) * hd];
                    o.fill(0.0);
                    for j2 in 0..t {
                        let vj = &qkv[j2 * 3 * c + h * 3 * hd + 2 * hd..][..hd];
                        for (od, vd) in o.iter_mut().zip(vj) {
                            *od += scores[j2] * *vd;
                        }
                    }
                }
            }
            obs(&key("attn.out"), c, &mut out);
            for i in 0..t {
                let (y, xx) = (wy * ws + i / ws, wx * ws + i % ws);
                if y < r && xx < r {
                    linear(&out[i * c..(i + 1) * c], proj_w, proj_b, &mut tmp);
                    for (v, p) in x[(y * r + xx) * c..(y * r + xx + 1) * c]
                        .iter_mut()
                        .zip(&tmp)
                    {
                        *v += *p;
                    }
                }
            }
        }
    }
    obs(&stream, c, x);
    let (y, _) = conv(x, r, c, lc_w, lc_b, k, 1, true);
    x.copy_from_slice(&y);
    obs(&stream, c, x);
    let n = x.len() / c;
    let mut norms = x.to_vec();
    for tok in norms.chunks_exact_mut(c) {
        layer_norm(tok, mn_w, mn_b);
    }
    obs(&key("mlp.norm"), c, &mut norms);
    let mut acts = vec![0.0f32; n * hid];
    for (tok, h) in norms.chunks_exact(c).zip(acts.chunks_exact_mut(hid)) {
        linear(tok, fc1_w, fc1_b, h);
    }
    gelu_point(obs, &key("mlp.act"), hid, &mut acts);
    let mut y = vec![0.0f32; c];
    for (tok, h) in x.chunks_exact_mut(c).zip(acts.chunks_exact(hid)) {
        linear(h, fc2_w, fc2_b, &mut y);
        for (v, d) in tok.iter_mut().zip(&y) {
            *v += *d;
        }
    }
    obs(&stream, c, x);
    Ok(())
}
