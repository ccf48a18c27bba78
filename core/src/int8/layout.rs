//! The int8 model's data layout: every item (tensor or parameter vector) in the order the engine
//! reads it. The one definition that the writer ([`super::quantize`]), the parser
//! ([`super::file`]) and the engine ([`super::engine`]) all follow.
//!
//! Each item is one of three [`Kind`]s, stored little-endian and padded with zeros to a
//! multiple of 4 bytes:
//! - `I8`: weights, symmetric per output channel (`[-127, 127]`). Linear and 1x1 conv weights
//!   are `[out, in]`; depthwise ones `[c, k, k]`; the two stem convs are `[out, ky, kx, in]`
//!   so that each tap's input channels are contiguous.
//! - `I32`: biases in accumulator units, LayerNorm biases and eps, attention bias tables (Q10).
//! - `Mul`: [`Multiplier`](super::ops::Multiplier)s, `(m: i32, shift: i32)` pairs, one per
//!   output channel or one per tensor.
//!
//! A GELU (items named after the activation it produces: `.act`, `.act1`, `.act2`) is two
//! multipliers: the layer before it requantises its accumulators to an `i8` pre-activation
//! `p` (`.mult`, one scale per tensor), and the GELU's item holds `p -> Q12` and `Q12 -> i8`
//! for the engine's table of the values of `p` ([`super::ops::gelu_table`]).
//!
//! Item names extend the folded tensor names of [`crate::params::for_each_folded`]:
//! `<layer>.weight`, `<layer>.bias`, `<layer>.mult` (accumulator to the next format), and
//! per-tensor requantisations named after the activation they produce (`.act1`, `.in`, ...).

use core::fmt::Write;

use crate::config::{ModelConfig, STAGES};
use crate::params::Name;

/// Multipliers of a GELU item: pre-activation to Q12, Q12 to the output.
pub const GELU_MULS: usize = 2;

/// How an item is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `i8` values.
    I8,
    /// `i8` matrix weights `[out, k]` of fan-in `k`, even offsets sign-flipped
    /// ([`super::ops::mat_code`]); when `k` is a multiple of 4, rows are stored in pairs
    /// interleaved a word of four at a time (a last odd row alone), where
    /// [`super::ops::mat::row_at`] finds them.
    Mat(usize),
    /// Little-endian `i32` values.
    I32,
    /// Multipliers: `n` little-endian `i32` numerators, then `n` shift bytes.
    Mul,
}

impl Kind {
    /// Bytes of `n` values of this kind, padded to 4 (saturating).
    pub fn bytes(self, n: usize) -> usize {
        let raw = match self {
            Kind::I8 | Kind::Mat(_) => n,
            Kind::I32 => n.saturating_mul(4),
            Kind::Mul => n.saturating_mul(5),
        };
        raw.saturating_add(3) / 4 * 4
    }
}

fn name(args: core::fmt::Arguments<'_>) -> Name {
    let mut s = Name::new();
    let _ = s.write_fmt(args);
    s
}

/// Calls `f(name, kind, len)` for every item in engine order. The config should be
/// validated first; an invalid one never panics.
pub fn for_each_item(cfg: &ModelConfig, mut f: impl FnMut(&str, Kind, usize)) {
    // Opaque to the optimiser, which would otherwise clone `items` for each caller's closure.
    items(cfg, core::hint::black_box(&mut f));
}

/// [`for_each_item`]'s walk, one copy for every caller (the item names' formatting made each
/// monomorphised copy about 20 KB of device flash).
#[inline(never)]
fn items(cfg: &ModelConfig, mut f: &mut dyn FnMut(&str, Kind, usize)) {
    use Kind::{Mat, Mul, I32};
    // The kind of a layer's weights from its fan-in.
    let conv = |_: usize| Kind::I8;
    let e: [usize; STAGES] = cfg.embed_dims.map(|v| v as usize);
    let cin = cfg.in_chans as usize;
    let half = e[0] / 2;
    // A conv of plain `i8` weights (stem, depthwise) or a matrix product (`Mat`).
    let layer = |f: &mut dyn FnMut(&str, Kind, usize),
                 p: &str,
                 kind: &dyn Fn(usize) -> Kind,
                 w: usize,
                 out: usize| {
        f(
            &name(format_args!("{p}.weight")),
            kind(w),
            w.saturating_mul(out),
        );
        f(&name(format_args!("{p}.bias")), I32, out);
        f(&name(format_args!("{p}.mult")), Mul, out);
    };
    layer(&mut f, "patch_embed.seq.0", &conv, cin * 9, half);
    f("patch_embed.seq.1.act", Mul, GELU_MULS);
    layer(&mut f, "patch_embed.seq.2", &Mat, half * 9, e[0]);
    let hid0 = e[0].saturating_mul(cfg.mbconv_expand_ratio as usize);
    for j in 0..cfg.depths[0] {
        let p = |s: &str| name(format_args!("layers.0.blocks.{j}.{s}"));
        f(&p("in"), Mul, 1);
        layer(&mut f, &p("conv1"), &Mat, e[0], hid0);
        f(&p("act1"), Mul, GELU_MULS);
        layer(&mut f, &p("conv2"), &conv, 9, hid0);
        f(&p("act2"), Mul, GELU_MULS);
        layer(&mut f, &p("conv3"), &Mat, hid0, e[0]);
        f(&p("res"), Mul, 1);
        f(&p("out"), Mul, 1);
    }
    for s in 0..STAGES {
        if s > 0 {
            let c = e[s];
            let heads = cfg.num_heads[s] as usize;
            let ws = cfg.window_sizes[s] as usize;
            let hid = c.saturating_mul(cfg.mlp_ratio as usize);
            let k = cfg.local_conv_size as usize;
            for j in 0..cfg.depths[s] {
                let p = |x: &str| name(format_args!("layers.{s}.blocks.{j}.{x}"));
                f(
                    &p("attn.attention_biases"),
                    I32,
                    heads.saturating_mul(ws.saturating_mul(ws)),
                );
                norm(&mut f, &p("attn.norm"), c);
                layer(&mut f, &p("attn.qkv"), &Mat, c, 3 * c);
                f(&p("attn.score"), Mul, 1);
                f(&p("attn.out"), Mul, 1);
                layer(&mut f, &p("attn.proj"), &Mat, c, c);
                norm(&mut f, &p("mlp.norm"), c);
                layer(&mut f, &p("mlp.fc1"), &Mat, c, hid);
                f(&p("mlp.act"), Mul, GELU_MULS);
                layer(&mut f, &p("mlp.fc2"), &Mat, hid, c);
                layer(&mut f, &p("local_conv"), &conv, k * k, c);
            }
        }
        if s + 1 < STAGES {
            let (cin, cout) = (e[s], e[s + 1]);
            let p = |x: &str| name(format_args!("layers.{s}.downsample.{x}"));
            f(&p("in"), Mul, 1);
            layer(&mut f, &p("conv1"), &Mat, cin, cout);
            f(&p("act1"), Mul, GELU_MULS);
            layer(&mut f, &p("conv2"), &conv, 9, cout);
            f(&p("act2"), Mul, GELU_MULS);
            layer(&mut f, &p("conv3"), &Mat, cout, cout);
        }
    }
    norm(&mut f, "norm_head", e[3]);
    layer(&mut f, "head", &Mat, e[3], cfg.num_classes as usize);
}

/// A LayerNorm's items: per-channel weight multipliers, biases and the scaled eps.
fn norm(f: &mut dyn FnMut(&str, Kind, usize), p: &str, c: usize) {
    f(&name(format_args!("{p}.weight")), Kind::Mul, c);
    f(&name(format_args!("{p}.bias")), Kind::I32, c);
    f(&name(format_args!("{p}.eps")), Kind::I32, 1);
}

/// Bytes of the whole data region for `cfg` (saturating; a validated config never saturates
/// on 64-bit hosts).
pub fn data_len(cfg: &ModelConfig) -> usize {
    let mut n = 0usize;
    for_each_item(cfg, |_, k, len| n = n.saturating_add(k.bytes(len)));
    n
}

/// Number of items for `cfg`.
pub fn item_count(cfg: &ModelConfig) -> usize {
    let mut n = 0usize;
    for_each_item(cfg, |_, _, _| n += 1);
    n
}
