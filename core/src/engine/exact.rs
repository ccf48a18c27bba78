//! The `exact` engine: scalar, allocation-free, bit-reproducible across targets.
//!
//! Activations are kept token-major (`[H*W, C]`, row-major pixels), the layout the attention
//! stages use, so no transposes are needed. The convolutional layers stream rows through small
//! rings instead of materialising whole expanded maps: an MBConv never holds more than three
//! expanded rows and works in place, which is what lets the microcontroller presets fit their
//! arenas (see [`super::arena_plan`]).
//!
//! Every accumulation starts at the bias and adds terms in a fixed index order; transcendentals
//! come from `libm`; there is no `mul_add`, no `f32::max/min` and no target-specific kernel.

use super::layers::{
    bias_index, dot, gelu, gelu_inplace, layer_norm, layer_norm_into, linear, stem_dims,
};
use super::{check_buffers, EngineError, Reader, Weights};
use crate::config::{ModelConfig, STAGES};

/// Runs one image through the network.
///
/// # Shapes
/// `input: [in_chans, img_size, img_size]` (normalised), `arena: [>= arena_len(cfg)]`,
/// `logits: [num_classes]`.
///
/// # Errors
/// Wrong input, arena or logits sizes, or a network whose work or arena exceeds the weights'
/// [`Limits`](super::Limits) ([`EngineError`]); nothing is written to `logits` then, and
/// nothing is computed.
pub fn forward(
    weights: &Weights<'_>,
    input: &[f32],
    arena: &mut [f32],
    logits: &mut [f32],
) -> Result<(), EngineError> {
    let cfg = weights.config();
    let plan = weights.limits().check_exact(cfg)?;
    check_buffers(cfg, input.len(), logits.len(), arena.len(), plan.total())?;
    let (a, rest) = arena.split_at_mut(plan.a);
    let (b, rest) = rest.split_at_mut(plan.b);
    let scratch = &mut rest[..plan.scratch];
    let mut rd = weights.reader();

    let r = cfg.stage_resolutions().map(|v| v as usize);
    let e = cfg.embed_dims.map(|v| v as usize);
    let act = |s: usize| r[s] * r[s] * e[s];

    stem(cfg, &mut rd, input, &mut a[..act(0)], scratch)?;
    let hid0 = e[0] * cfg.mbconv_expand_ratio as usize;
    for _ in 0..cfg.depths[0] {
        mbconv(&mut rd, &mut a[..act(0)], r[0], e[0], hid0, scratch)?;
    }
    for s in 0..STAGES {
        if s > 0 {
            let x = if s.is_multiple_of(2) {
                &mut a[..act(s)]
            } else {
                &mut b[..act(s)]
            };
            for _ in 0..cfg.depths[s] {
                tinyvit_block(cfg, s, &mut rd, x, scratch)?;
            }
        }
        if s + 1 < STAGES {
            let (src, dst) = if s.is_multiple_of(2) {
                (&a[..act(s)], &mut b[..act(s + 1)])
            } else {
                (&b[..act(s)], &mut a[..act(s + 1)])
            };
            patch_merging(&mut rd, src, r[s], e[s], dst, e[s + 1], scratch)?;
        }
    }
    let last = if (STAGES - 1).is_multiple_of(2) {
        &a[..act(3)]
    } else {
        &b[..act(3)]
    };
    head(&mut rd, last, e[3], scratch, logits)
}

/// Output index of a stride-`stride` conv tap: `o * stride + k - pad`, if inside `0..n`.
#[inline]
fn tap(o: usize, stride: usize, k: usize, pad: usize, n: usize) -> Option<usize> {
    let i = (o * stride + k).checked_sub(pad)?;
    (i < n).then_some(i)
}

/// PatchEmbed: 3x3 stride-2 conv -> GELU -> 3x3 stride-2 conv, reading the `[C, H, W]` input and
/// writing tokens `[r0*r0, E0]`. The first conv's output streams through a ring of three rows.
fn stem(
    cfg: &ModelConfig,
    rd: &mut Reader<'_>,
    input: &[f32],
    out: &mut [f32],
    scratch: &mut [f32],
) -> Result<(), EngineError> {
    let (cin, img, e0, half, w1, r0) = stem_dims(cfg);
    let k1 = rd.take(half * cin * 9)?;
    let b1 = rd.take(half)?;
    let k2 = rd.take(e0 * half * 9)?;
    let b2 = rd.take(e0)?;
    let ring = &mut scratch[..3 * w1 * half];
    let mut filled = 0;
    for oy in 0..r0 {
        let last = (2 * oy + 1).min(w1 - 1);
        while filled <= last {
            let y1 = filled;
            let row = &mut ring[(y1 % 3) * w1 * half..(y1 % 3 + 1) * w1 * half];
            for x1 in 0..w1 {
                for o in 0..half {
                    let mut acc = b1[o];
                    for i in 0..cin {
                        for ky in 0..3 {
                            let Some(iy) = tap(y1, 2, ky, 1, img) else {
                                continue;
                            };
                            for kx in 0..3 {
                                let Some(ix) = tap(x1, 2, kx, 1, img) else {
                                    continue;
                                };
                                acc += k1[((o * cin + i) * 3 + ky) * 3 + kx]
                                    * input[(i * img + iy) * img + ix];
                            }
                        }
                    }
                    row[x1 * half + o] = gelu(acc);
                }
            }
            filled += 1;
        }
        for ox in 0..r0 {
            for o in 0..e0 {
                let mut acc = b2[o];
                for ky in 0..3 {
                    let Some(iy) = tap(oy, 2, ky, 1, w1) else {
                        continue;
                    };
                    for kx in 0..3 {
                        let Some(ix) = tap(ox, 2, kx, 1, w1) else {
                            continue;
                        };
                        let px =
                            &ring[((iy % 3) * w1 + ix) * half..((iy % 3) * w1 + ix + 1) * half];
                        for i in 0..half {
                            acc += k2[((o * half + i) * 3 + ky) * 3 + kx] * px[i];
                        }
                    }
                }
                out[(oy * r0 + ox) * e0 + o] = acc;
            }
        }
    }
    Ok(())
}

/// 1x1 conv + GELU of token row `y` of `src` (`[h*w, cin]`) into slot `y % slots` of `ring`
/// (`[slots, w, cout]`).
fn pointwise_row(
    src: &[f32],
    y: usize,
    w: usize,
    cin: usize,
    weight: &[f32],
    bias: &[f32],
    cout: usize,
    ring: &mut [f32],
    slots: usize,
) {
    let slot = y % slots;
    for x in 0..w {
        let t = &src[(y * w + x) * cin..(y * w + x + 1) * cin];
        let dst = &mut ring[(slot * w + x) * cout..(slot * w + x + 1) * cout];
        linear(t, weight, bias, dst);
        gelu_inplace(dst);
    }
}

/// Depthwise `k x k` conv (padding `k/2`) of output pixel `(oy, ox)` over a ring of `k` input
/// rows (`[k, w_in, c]`, row `y` in slot `y % k`), written to `out: [c]`.
fn depthwise_pixel(
    ring: &[f32],
    h_in: usize,
    w_in: usize,
    c: usize,
    k: usize,
    stride: usize,
    oy: usize,
    ox: usize,
    weight: &[f32],
    bias: &[f32],
    out: &mut [f32],
) {
    let pad = k / 2;
    for ch in 0..c {
        let mut acc = bias[ch];
        for ky in 0..k {
            let Some(iy) = tap(oy, stride, ky, pad, h_in) else {
                continue;
            };
            for kx in 0..k {
                let Some(ix) = tap(ox, stride, kx, pad, w_in) else {
                    continue;
                };
                acc += weight[(ch * k + ky) * k + kx] * ring[((iy % k) * w_in + ix) * c + ch];
            }
        }
        out[ch] = acc;
    }
}

/// MBConv in place on `x: [r*r, c]`: 1x1 (c -> hid) GELU, 3x3 depthwise GELU, 1x1 (hid -> c),
/// add the input, GELU. Expanded rows stream through a ring of three; row `y` of `x` is
/// overwritten only after the expanded rows up to `y + 1` have been computed from it.
fn mbconv(
    rd: &mut Reader<'_>,
    x: &mut [f32],
    r: usize,
    c: usize,
    hid: usize,
    scratch: &mut [f32],
) -> Result<(), EngineError> {
    let w1 = rd.take(hid * c)?;
    let b1 = rd.take(hid)?;
    let w2 = rd.take(hid * 9)?;
    let b2 = rd.take(hid)?;
    let w3 = rd.take(c * hid)?;
    let b3 = rd.take(c)?;
    let (ring, rest) = scratch.split_at_mut(3 * r * hid);
    let (mid, rest) = rest.split_at_mut(hid);
    let out = &mut rest[..c];
    let mut filled = 0;
    for oy in 0..r {
        let last = (oy + 1).min(r - 1);
        while filled <= last {
            pointwise_row(x, filled, r, c, w1, b1, hid, ring, 3);
            filled += 1;
        }
        for ox in 0..r {
            depthwise_pixel(ring, r, r, hid, 3, 1, oy, ox, w2, b2, mid);
            gelu_inplace(mid);
            linear(mid, w3, b3, out);
            let t = &mut x[(oy * r + ox) * c..(oy * r + ox + 1) * c];
            for (v, o) in t.iter_mut().zip(out.iter()) {
                *v = gelu(*v + *o);
            }
        }
    }
    Ok(())
}

/// PatchMerging: 1x1 (cin -> cout) GELU, 3x3 depthwise stride 2 GELU, 1x1 (cout -> cout), from
/// `src: [r*r, cin]` to `dst: [r2*r2, cout]` with `r2 = ceil(r / 2)`.
fn patch_merging(
    rd: &mut Reader<'_>,
    src: &[f32],
    r: usize,
    cin: usize,
    dst: &mut [f32],
    cout: usize,
    scratch: &mut [f32],
) -> Result<(), EngineError> {
    let w1 = rd.take(cout * cin)?;
    let b1 = rd.take(cout)?;
    let w2 = rd.take(cout * 9)?;
    let b2 = rd.take(cout)?;
    let w3 = rd.take(cout * cout)?;
    let b3 = rd.take(cout)?;
    let r2 = r.div_ceil(2);
    let (ring, rest) = scratch.split_at_mut(3 * r * cout);
    let mid = &mut rest[..cout];
    let mut filled = 0;
    for oy in 0..r2 {
        let last = (2 * oy + 1).min(r - 1);
        while filled <= last {
            pointwise_row(src, filled, r, cin, w1, b1, cout, ring, 3);
            filled += 1;
        }
        for ox in 0..r2 {
            depthwise_pixel(ring, r, r, cout, 3, 2, oy, ox, w2, b2, mid);
            gelu_inplace(mid);
            linear(
                mid,
                w3,
                b3,
                &mut dst[(oy * r2 + ox) * cout..(oy * r2 + ox + 1) * cout],
            );
        }
    }
    Ok(())
}

/// One TinyViT block in place on `x: [r*r, c]` of stage `s`: windowed attention with residual,
/// depthwise local conv (no residual, no activation), MLP with residual.
fn tinyvit_block(
    cfg: &ModelConfig,
    s: usize,
    rd: &mut Reader<'_>,
    x: &mut [f32],
    scratch: &mut [f32],
) -> Result<(), EngineError> {
    let r = cfg.stage_resolutions()[s] as usize;
    let c = cfg.embed_dims[s] as usize;
    let heads = cfg.num_heads[s] as usize;
    let ws = cfg.window_sizes[s] as usize;
    let hid = c * cfg.mlp_ratio as usize;
    let k = cfg.local_conv_size as usize;
    let t = ws * ws;

    let biases = rd.take(heads * t)?;
    let an_w = rd.take(c)?;
    let an_b = rd.take(c)?;
    let qkv_w = rd.take(3 * c * c)?;
    let qkv_b = rd.take(3 * c)?;
    let proj_w = rd.take(c * c)?;
    let proj_b = rd.take(c)?;
    let mn_w = rd.take(c)?;
    let mn_b = rd.take(c)?;
    let fc1_w = rd.take(hid * c)?;
    let fc1_b = rd.take(hid)?;
    let fc2_w = rd.take(c * hid)?;
    let fc2_b = rd.take(c)?;
    let lc_w = rd.take(c * k * k)?;
    let lc_b = rd.take(c)?;

    let attn = AttnWeights {
        biases,
        norm_w: an_w,
        norm_b: an_b,
        qkv_w,
        qkv_b,
        proj_w,
        proj_b,
    };
    attention(&attn, x, r, c, heads, ws, scratch);
    local_conv(x, r, c, k, lc_w, lc_b, scratch);

    let (norm, rest) = scratch.split_at_mut(c);
    let hidden = &mut rest[..hid];
    for tok in x.chunks_exact_mut(c) {
        layer_norm_into(tok, mn_w, mn_b, norm);
        linear(norm, fc1_w, fc1_b, hidden);
        gelu_inplace(hidden);
        linear(hidden, fc2_w, fc2_b, norm);
        for (v, y) in tok.iter_mut().zip(norm.iter()) {
            *v += *y;
        }
    }
    Ok(())
}

/// The attention tensors of one block.
struct AttnWeights<'a> {
    /// `[heads, ws*ws]`
    biases: &'a [f32],
    norm_w: &'a [f32],
    norm_b: &'a [f32],
    /// `[3*c, c]`, output channels interleaved per head `[q_h k_h v_h]`.
    qkv_w: &'a [f32],
    qkv_b: &'a [f32],
    /// `[c, c]`
    proj_w: &'a [f32],
    proj_b: &'a [f32],
}

/// `x += proj(attention(norm(window)))` for every `ws x ws` window of `x: [r*r, c]`. The map
/// is zero-padded right and bottom to a multiple of `ws`; padded tokens take part in the
/// attention unmasked (as in the reference) and their outputs are dropped. When `r == ws`
/// this is exactly whole-map attention.
fn attention(
    wt: &AttnWeights<'_>,
    x: &mut [f32],
    r: usize,
    c: usize,
    heads: usize,
    ws: usize,
    scratch: &mut [f32],
) {
    let t = ws * ws;
    let hd = c / heads;
    let scale = 1.0 / libm::sqrtf(hd as f32);
    let (win, rest) = scratch.split_at_mut(t * c);
    let (qkv, rest) = rest.split_at_mut(t * 3 * hd);
    let (scores, rest) = rest.split_at_mut(t);
    let (out, rest) = rest.split_at_mut(t * c);
    let tmp = &mut rest[..c];
    let nwin = r.div_ceil(ws);
    for wy in 0..nwin {
        for wx in 0..nwin {
            // Gather the window (zeros outside the map) and normalise every token.
            for i in 0..t {
                let (y, xx) = (wy * ws + i / ws, wx * ws + i % ws);
                let dst = &mut win[i * c..(i + 1) * c];
                if y < r && xx < r {
                    dst.copy_from_slice(&x[(y * r + xx) * c..(y * r + xx + 1) * c]);
                } else {
                    dst.fill(0.0);
                }
                layer_norm(dst, wt.norm_w, wt.norm_b);
            }
            for h in 0..heads {
                // This head's q, k, v: output channels [h*3hd, (h+1)*3hd) of qkv.
                let w = &wt.qkv_w[h * 3 * hd * c..(h + 1) * 3 * hd * c];
                let b = &wt.qkv_b[h * 3 * hd..(h + 1) * 3 * hd];
                for i in 0..t {
                    linear(
                        &win[i * c..(i + 1) * c],
                        w,
                        b,
                        &mut qkv[i * 3 * hd..(i + 1) * 3 * hd],
                    );
                }
                let bias = &wt.biases[h * t..(h + 1) * t];
                for i in 0..t {
                    let q = &qkv[i * 3 * hd..i * 3 * hd + hd];
                    for j in 0..t {
                        let kj = &qkv[j * 3 * hd + hd..j * 3 * hd + 2 * hd];
                        scores[j] = dot(0.0, q, kj) * scale + bias[bias_index(i, j, ws)];
                    }
                    super::layers::softmax(scores);
                    let o = &mut out[i * c + h * hd..i * c + (h + 1) * hd];
                    o.fill(0.0);
                    for j in 0..t {
                        let vj = &qkv[j * 3 * hd + 2 * hd..(j + 1) * 3 * hd];
                        let p = scores[j];
                        for (od, vd) in o.iter_mut().zip(vj) {
                            *od += p * *vd;
                        }
                    }
                }
            }
            for i in 0..t {
                let (y, xx) = (wy * ws + i / ws, wx * ws + i % ws);
                if y < r && xx < r {
                    linear(&out[i * c..(i + 1) * c], wt.proj_w, wt.proj_b, tmp);
                    let dst = &mut x[(y * r + xx) * c..(y * r + xx + 1) * c];
                    for (v, p) in dst.iter_mut().zip(tmp.iter()) {
                        *v += *p;
                    }
                }
            }
        }
    }
}

/// Depthwise `k x k` conv (padding `k/2`) in place on `x: [r*r, c]`, keeping copies of the last
/// `k` input rows in a ring so rows can be overwritten as soon as they are finished.
fn local_conv(
    x: &mut [f32],
    r: usize,
    c: usize,
    k: usize,
    weight: &[f32],
    bias: &[f32],
    scratch: &mut [f32],
) {
    let (ring, rest) = scratch.split_at_mut(k * r * c);
    let tok = &mut rest[..c];
    let pad = k / 2;
    let mut filled = 0;
    for oy in 0..r {
        let last = (oy + pad).min(r - 1);
        while filled <= last {
            let slot = filled % k;
            ring[slot * r * c..(slot + 1) * r * c]
                .copy_from_slice(&x[filled * r * c..(filled + 1) * r * c]);
            filled += 1;
        }
        for ox in 0..r {
            depthwise_pixel(ring, r, r, c, k, 1, oy, ox, weight, bias, tok);
            x[(oy * r + ox) * c..(oy * r + ox + 1) * c].copy_from_slice(tok);
        }
    }
}

/// Head: mean over tokens -> LayerNorm -> Linear.
fn head(
    rd: &mut Reader<'_>,
    x: &[f32],
    c: usize,
    scratch: &mut [f32],
    logits: &mut [f32],
) -> Result<(), EngineError> {
    let nw = rd.take(c)?;
    let nb = rd.take(c)?;
    let hw = rd.take(logits.len() * c)?;
    let hb = rd.take(logits.len())?;
    let pooled = &mut scratch[..c];
    pooled.fill(0.0);
    let n = x.len() / c;
    for tok in x.chunks_exact(c) {
        for (p, v) in pooled.iter_mut().zip(tok) {
            *p += *v;
        }
    }
    for p in pooled.iter_mut() {
        *p /= n as f32;
    }
    layer_norm(pooled, nw, nb);
    linear(pooled, hw, hb, logits);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{arena_len, fold::synthetic_blob, input_len};
    use std::vec;
    use std::vec::Vec;

    fn blob(cfg: &ModelConfig, seed: u64) -> Vec<f32> {
        synthetic_blob(cfg, seed).unwrap()
    }

    fn image(cfg: &ModelConfig) -> Vec<f32> {
        let n = input_len(cfg).unwrap();
        let mut s = 11u64;
        (0..n)
            .map(|_| (crate::params::splitmix64(&mut s) >> 40) as f32 / (1u64 << 23) as f32 - 1.0)
            .collect()
    }

    #[test]
    fn forward_is_deterministic_and_finite() {
        for cfg in [
            ModelConfig::tiny_vit_mcu_m4(),
            ModelConfig::tiny_vit_mcu_h7(),
        ] {
            let b = blob(&cfg, 1);
            let w = Weights::new(&cfg, &b).unwrap();
            let x = image(&cfg);
            let mut arena = vec![f32::NAN; arena_len(&cfg).unwrap()];
            let mut l1 = vec![0.0; cfg.num_classes as usize];
            let mut l2 = l1.clone();
            forward(&w, &x, &mut arena, &mut l1).unwrap();
            // A dirty arena must not matter.
            forward(&w, &x, &mut arena, &mut l2).unwrap();
            assert!(l1.iter().all(|v| v.is_finite()), "{l1:?}");
            assert_eq!(
                l1.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                l2.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
            assert!(l1.iter().any(|v| *v != l1[0]));
        }
    }

    #[test]
    fn wrong_sizes_are_errors() {
        let cfg = ModelConfig::tiny_vit_mcu_m4();
        let b = blob(&cfg, 1);
        let w = Weights::new(&cfg, &b).unwrap();
        let x = image(&cfg);
        let need = arena_len(&cfg).unwrap();
        let mut arena = vec![0.0; need];
        let mut logits = vec![0.0; 10];
        assert_eq!(
            forward(&w, &x, &mut arena[..need - 1], &mut logits),
            Err(EngineError::ArenaTooSmall {
                needed: need,
                got: need - 1
            })
        );
        assert!(matches!(
            forward(&w, &x[1..], &mut arena, &mut logits),
            Err(EngineError::InputLen { .. })
        ));
        assert!(matches!(
            forward(&w, &x, &mut arena, &mut logits[..9]),
            Err(EngineError::LogitsLen { .. })
        ));
    }
}
