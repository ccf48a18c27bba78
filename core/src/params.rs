//! The canonical parameter list of a TinyViT: names and shapes exactly as the official
//! state_dict (microsoft/Cream `TinyViT/models/tiny_vit.py`), derived from a [`ModelConfig`].
//!
//! This module is the single definition of tensor names and shapes: importers, the trainer and
//! the `.tvb` writer all walk these lists; nothing else spells a name.
//!
//! Three views of the same network, all in forward order:
//! - [`for_each_tensor`]: every state_dict entry (parameters, BN running statistics and the int64
//!   `num_batches_tracked` counters; 296 entries for the official 4-stage configs). The
//!   non-persistent `attention_bias_idxs` buffer is not part of it.
//! - [`for_each_param`]: learnable parameters only ([`param_count`] sums them).
//! - [`for_each_folded`]: the deployment tensors the engines read, with every Conv2d_BN folded
//!   into one conv weight and bias (`<prefix>.weight`, `<prefix>.bias`, the `.c` / `.bn` level
//!   dropped). Everything else keeps its official name.
//!
//! Names are built in a fixed-capacity [`heapless::String`], so no allocator is needed.
//!
//! Attention head width: like the reference, each attention uses `key_dim = dim / num_heads`
//! (32 for every official preset), `attn_ratio = 1`, so `qkv` is `[3*dim, dim]`.

use core::fmt::Write;

use crate::config::{ModelConfig, STAGES};

/// Capacity of a tensor name. The longest official name is 51 bytes.
pub const NAME_CAP: usize = 96;

/// A tensor name.
pub type Name = heapless::String<NAME_CAP>;

/// What a state_dict entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorKind {
    /// A learnable f32 parameter.
    Param,
    /// A BatchNorm running statistic (`running_mean`, `running_var`), f32.
    BnStat,
    /// A BatchNorm `num_batches_tracked` counter: an int64 scalar (shape `[]`).
    Counter,
}

/// One layer of the network, as the parameter walkers see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layer {
    /// Conv2d without bias followed by BatchNorm (`Conv2d_BN` / timm `ConvNorm`).
    ConvBn {
        out: usize,
        in_per_group: usize,
        k: usize,
    },
    /// `nn.Linear` with bias.
    Linear { out: usize, inp: usize },
    /// `nn.LayerNorm` with affine weight and bias.
    LayerNorm { dim: usize },
    /// The relative-position bias table `attention_biases`, `[heads, ws*ws]`.
    AttnBias { heads: usize, offsets: usize },
}

/// Writes `args` into a fresh name. Names of valid configs always fit; a name that does not fit
/// is truncated (never a panic), which can only happen for absurd depths.
fn name_of(args: core::fmt::Arguments<'_>) -> Name {
    let mut s = Name::new();
    let _ = s.write_fmt(args);
    s
}

/// Calls `f(prefix, layer)` for every layer in forward order, with the official module prefix
/// (no trailing dot). The config should be validated first; an invalid one still never panics.
pub fn for_each_layer(cfg: &ModelConfig, mut f: impl FnMut(&str, Layer)) {
    let e: [usize; STAGES] = cfg.embed_dims.map(|v| v as usize);
    let cin = cfg.in_chans as usize;
    let half = e[0] / 2;
    f(
        "patch_embed.seq.0",
        Layer::ConvBn {
            out: half,
            in_per_group: cin,
            k: 3,
        },
    );
    f(
        "patch_embed.seq.2",
        Layer::ConvBn {
            out: e[0],
            in_per_group: half,
            k: 3,
        },
    );
    let hidden0 = e[0] * cfg.mbconv_expand_ratio as usize;
    for j in 0..cfg.depths[0] {
        let p = |c: &str| name_of(format_args!("layers.0.blocks.{j}.{c}"));
        f(
            &p("conv1"),
            Layer::ConvBn {
                out: hidden0,
                in_per_group: e[0],
                k: 1,
            },
        );
        f(
            &p("conv2"),
            Layer::ConvBn {
                out: hidden0,
                in_per_group: 1,
                k: 3,
            },
        );
        f(
            &p("conv3"),
            Layer::ConvBn {
                out: e[0],
                in_per_group: hidden0,
                k: 1,
            },
        );
    }
    for i in 0..STAGES {
        if i > 0 {
            let dim = e[i];
            let heads = cfg.num_heads[i] as usize;
            let ws = cfg.window_sizes[i] as usize;
            let hidden = dim * cfg.mlp_ratio as usize;
            let lk = cfg.local_conv_size as usize;
            for j in 0..cfg.depths[i] {
                let p = |c: &str| name_of(format_args!("layers.{i}.blocks.{j}.{c}"));
                f(
                    &p("attn"),
                    Layer::AttnBias {
                        heads,
                        offsets: ws * ws,
                    },
                );
                f(&p("attn.norm"), Layer::LayerNorm { dim });
                f(
                    &p("attn.qkv"),
                    Layer::Linear {
                        out: 3 * dim,
                        inp: dim,
                    },
                );
                f(&p("attn.proj"), Layer::Linear { out: dim, inp: dim });
                f(&p("mlp.norm"), Layer::LayerNorm { dim });
                f(
                    &p("mlp.fc1"),
                    Layer::Linear {
                        out: hidden,
                        inp: dim,
                    },
                );
                f(
                    &p("mlp.fc2"),
                    Layer::Linear {
                        out: dim,
                        inp: hidden,
                    },
                );
                f(
                    &p("local_conv"),
                    Layer::ConvBn {
                        out: dim,
                        in_per_group: 1,
                        k: lk,
                    },
                );
            }
        }
        if i + 1 < STAGES {
            let (dim, out) = (e[i], e[i + 1]);
            let p = |c: &str| name_of(format_args!("layers.{i}.downsample.{c}"));
            f(
                &p("conv1"),
                Layer::ConvBn {
                    out,
                    in_per_group: dim,
                    k: 1,
                },
            );
            f(
                &p("conv2"),
                Layer::ConvBn {
                    out,
                    in_per_group: 1,
                    k: 3,
                },
            );
            f(
                &p("conv3"),
                Layer::ConvBn {
                    out,
                    in_per_group: out,
                    k: 1,
                },
            );
        }
    }
    f("norm_head", Layer::LayerNorm { dim: e[3] });
    f(
        "head",
        Layer::Linear {
            out: cfg.num_classes as usize,
            inp: e[3],
        },
    );
}

/// Calls `f(name, shape, kind)` for every official state_dict entry, in state_dict order.
///
/// # Shapes
/// Conv weights `[out, in/groups, k, k]`, Linear weights `[out, in]`, vectors `[n]`,
/// `attention_biases` `[heads, ws*ws]`, `num_batches_tracked` `[]`.
pub fn for_each_tensor(cfg: &ModelConfig, mut f: impl FnMut(&str, &[usize], TensorKind)) {
    for_each_layer(cfg, |prefix, layer| {
        let n = |s: &str| name_of(format_args!("{prefix}.{s}"));
        match layer {
            Layer::ConvBn {
                out,
                in_per_group,
                k,
            } => {
                f(
                    &n("c.weight"),
                    &[out, in_per_group, k, k],
                    TensorKind::Param,
                );
                f(&n("bn.weight"), &[out], TensorKind::Param);
                f(&n("bn.bias"), &[out], TensorKind::Param);
                f(&n("bn.running_mean"), &[out], TensorKind::BnStat);
                f(&n("bn.running_var"), &[out], TensorKind::BnStat);
                f(&n("bn.num_batches_tracked"), &[], TensorKind::Counter);
            }
            Layer::Linear { out, inp } => {
                f(&n("weight"), &[out, inp], TensorKind::Param);
                f(&n("bias"), &[out], TensorKind::Param);
            }
            Layer::LayerNorm { dim } => {
                f(&n("weight"), &[dim], TensorKind::Param);
                f(&n("bias"), &[dim], TensorKind::Param);
            }
            Layer::AttnBias { heads, offsets } => {
                f(&n("attention_biases"), &[heads, offsets], TensorKind::Param);
            }
        }
    });
}

/// Calls `f(name, shape)` for every learnable parameter, in state_dict order.
pub fn for_each_param(cfg: &ModelConfig, mut f: impl FnMut(&str, &[usize])) {
    for_each_tensor(cfg, |name, shape, kind| {
        if kind == TensorKind::Param {
            f(name, shape)
        }
    });
}

/// Calls `f(name, shape)` for every deployment tensor (BatchNorm folded), in forward order.
/// This is the order the engines read tensors in and the order of a `.tvb` file.
pub fn for_each_folded(cfg: &ModelConfig, mut f: impl FnMut(&str, &[usize])) {
    for_each_layer(cfg, |prefix, layer| {
        let n = |s: &str| name_of(format_args!("{prefix}.{s}"));
        match layer {
            Layer::ConvBn {
                out,
                in_per_group,
                k,
            } => {
                f(&n("weight"), &[out, in_per_group, k, k]);
                f(&n("bias"), &[out]);
            }
            Layer::Linear { out, inp } => {
                f(&n("weight"), &[out, inp]);
                f(&n("bias"), &[out]);
            }
            Layer::LayerNorm { dim } => {
                f(&n("weight"), &[dim]);
                f(&n("bias"), &[dim]);
            }
            Layer::AttnBias { heads, offsets } => f(&n("attention_biases"), &[heads, offsets]),
        }
    });
}

/// Number of elements of a shape (1 for a scalar), saturating instead of overflowing.
pub fn numel(shape: &[usize]) -> usize {
    shape.iter().fold(1usize, |a, &d| a.saturating_mul(d))
}

/// Number of elements of a shape counted in `u64` (exact on every target, whatever its `usize`),
/// saturating instead of overflowing.
fn count(shape: &[usize]) -> u64 {
    shape.iter().fold(1u64, |a, &d| a.saturating_mul(d as u64))
}

/// Number of learnable parameters (what the paper's tables count).
///
/// Exact for every config [`ModelConfig::validate`] accepts (its bounds keep the sum below
/// 2^42); for an unvalidated one the arithmetic saturates, it never wraps or panics.
pub fn param_count(cfg: &ModelConfig) -> u64 {
    let mut n = 0u64;
    for_each_param(cfg, |_, s| n = n.saturating_add(count(s)));
    n
}

/// Number of f32 values of the folded deployment tensors, without alignment padding (exact
/// for valid configs, saturating otherwise, as [`param_count`]).
pub fn folded_count(cfg: &ModelConfig) -> u64 {
    let mut n = 0u64;
    for_each_folded(cfg, |_, s| n = n.saturating_add(count(s)));
    n
}

/// Number of folded deployment tensors.
pub fn folded_tensor_count(cfg: &ModelConfig) -> usize {
    let mut n = 0;
    for_each_folded(cfg, |_, _| n += 1);
    n
}

/// Every tensor of the folded blob starts at a multiple of this many f32 values (16 bytes), so
/// a blob in flash can be read with aligned vector loads.
pub const FOLDED_ALIGN: usize = 4;

/// Rounds `n` up to a multiple of [`FOLDED_ALIGN`]; `usize::MAX` when that does not fit (so a
/// saturated size stays saturated).
pub fn align_up(n: usize) -> usize {
    match n.checked_add(FOLDED_ALIGN - 1) {
        Some(v) => v / FOLDED_ALIGN * FOLDED_ALIGN,
        None => usize::MAX,
    }
}

/// Length in f32 values of the packed folded blob: every tensor in [`for_each_folded`] order,
/// each padded with zeros to a multiple of [`FOLDED_ALIGN`] values. `usize::MAX` when the
/// length does not fit this target's `usize`.
pub fn folded_blob_len(cfg: &ModelConfig) -> usize {
    let mut n = 0usize;
    for_each_folded(cfg, |_, s| n = n.saturating_add(align_up(numel(s))));
    n
}

/// SplitMix64 (Steele, Lea and Flood 2014): adds the golden gamma to `state` and returns
/// the mix of the new state. The project's one definition: the augmentation's seed hash
/// (`aug::rng::mix64`, the output for state `z` before the step), synthetic weights, the
/// host's validation split and DropPath seeds all call it.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Uniform value in `[-1, 1)` from the top 24 bits of the next splitmix64 output.
#[cfg(feature = "std")]
fn unit(state: &mut u64) -> f32 {
    ((splitmix64(state) >> 40) as f32) * (2.0 / (1u64 << 24) as f32) - 1.0
}

/// One tensor of a synthetic state_dict.
#[cfg(feature = "std")]
#[derive(Clone, Debug, PartialEq)]
pub struct SyntheticTensor {
    /// Official name.
    pub name: std::string::String,
    /// Official shape.
    pub shape: std::vec::Vec<usize>,
    /// What it is (counters are int64 in a real checkpoint; here they hold `0.0`).
    pub kind: TensorKind,
    /// The values, row-major.
    pub values: std::vec::Vec<f32>,
}

/// A deterministic, well-conditioned state_dict for tests, fixtures and benchmarks.
///
/// Tensor `k` (in [`for_each_tensor`] order) draws from a splitmix64 stream seeded with
/// `seed ^ (k + 1) * 0x9E3779B97F4A7C15`; each value is `u` uniform in `[-1, 1)` mapped by role:
/// conv/linear weights `u * sqrt(3 / fan_in)` (unit-variance outputs), BN weight `1 + 0.2u`,
/// BN bias `0.1u`, running mean `0.1u`, running var `1 + 0.5u`, LayerNorm weight `1 + 0.1u`,
/// LayerNorm and Linear biases `0.05u`, attention biases `0.5u`, counters `0`.
/// Unlike the reference init, nothing is zero, so BN folding and the bias tables are exercised.
#[cfg(feature = "std")]
pub fn synthetic_state_dict(cfg: &ModelConfig, seed: u64) -> std::vec::Vec<SyntheticTensor> {
    let mut out = std::vec::Vec::new();
    let mut k = 0u64;
    for_each_tensor(cfg, |name, shape, kind| {
        k += 1;
        let mut st = seed ^ k.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let n = numel(shape);
        let leaf = name.rsplit('.').next().unwrap_or(name);
        let is_bn = name.contains(".bn.");
        let values: std::vec::Vec<f32> = (0..n)
            .map(|_| {
                let u = unit(&mut st);
                match (kind, leaf) {
                    (TensorKind::Counter, _) => 0.0,
                    (TensorKind::BnStat, "running_mean") => 0.1 * u,
                    (TensorKind::BnStat, _) => 1.0 + 0.5 * u,
                    (_, "attention_biases") => 0.5 * u,
                    (_, "weight") if shape.len() >= 2 => {
                        let fan_in = (n / shape[0]).max(1) as f32;
                        u * libm::sqrtf(3.0 / fan_in)
                    }
                    (_, "weight") if is_bn => 1.0 + 0.2 * u,
                    (_, "weight") => 1.0 + 0.1 * u,
                    (_, _) if is_bn => 0.1 * u,
                    _ => 0.05 * u,
                }
            })
            .collect();
        out.push(SyntheticTensor {
            name: name.into(),
            shape: shape.to_vec(),
            kind,
            values,
        });
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PRESET_NAMES;

    #[test]
    fn official_param_counts_match_the_paper() {
        let expected = [
            ("tiny_vit_5m_224", 5_392_764u64),
            ("tiny_vit_11m_224", 10_996_972),
            ("tiny_vit_21m_224", 21_198_568),
            ("tiny_vit_21m_384", 21_230_488),
            ("tiny_vit_21m_512", 21_268_120),
        ];
        for (name, n) in expected {
            let cfg = ModelConfig::preset(name).unwrap();
            assert_eq!(param_count(&cfg), n, "{name}");
        }
    }

    #[test]
    fn official_state_dict_has_296_keys_with_known_names() {
        let cfg = ModelConfig::tiny_vit_5m_224();
        let mut keys = 0;
        let mut longest = 0;
        let mut first: Option<Name> = None;
        let mut seen_bias = false;
        for_each_tensor(&cfg, |name, shape, kind| {
            keys += 1;
            longest = longest.max(name.len());
            if first.is_none() {
                first = Some(Name::try_from(name).unwrap());
            }
            if name == "layers.2.blocks.5.attn.attention_biases" {
                assert_eq!(shape, &[5, 14 * 14]);
                seen_bias = true;
            }
            if name.ends_with("num_batches_tracked") {
                assert_eq!(kind, TensorKind::Counter);
                assert!(shape.is_empty());
            }
        });
        assert_eq!(keys, 296);
        assert_eq!(
            longest,
            "layers.2.blocks.5.local_conv.bn.num_batches_tracked".len()
        );
        assert_eq!(first.unwrap().as_str(), "patch_embed.seq.0.c.weight");
        assert!(seen_bias);
    }

    #[test]
    fn folded_list_drops_bn_and_keeps_order() {
        let cfg = ModelConfig::tiny_vit_5m_224();
        let mut names: [Name; 3] = Default::default();
        let mut i = 0;
        for_each_folded(&cfg, |name, shape| {
            if i < 3 {
                names[i] = Name::try_from(name).unwrap();
                if i == 0 {
                    assert_eq!(shape, &[32, 3, 3, 3]);
                }
            }
            i += 1;
        });
        assert_eq!(names[0].as_str(), "patch_embed.seq.0.weight");
        assert_eq!(names[1].as_str(), "patch_embed.seq.0.bias");
        assert_eq!(names[2].as_str(), "patch_embed.seq.2.weight");
        // Folding removes the two BN affine vectors and adds one bias per conv.
        let convs = (2 + 2 * 3 + 3 * 3 + 10) as u64;
        let mut conv_out = 0u64;
        for_each_layer(&cfg, |_, l| {
            if let Layer::ConvBn { out, .. } = l {
                conv_out += out as u64;
            }
        });
        assert_eq!(folded_count(&cfg), param_count(&cfg) - conv_out);
        assert_eq!(folded_tensor_count(&cfg) as u64, 296 - convs * 4);
    }

    #[test]
    fn every_preset_has_a_consistent_blob() {
        for name in PRESET_NAMES {
            let cfg = ModelConfig::preset(name).unwrap();
            let blob = folded_blob_len(&cfg) as u64;
            assert!(blob >= folded_count(&cfg));
            assert!(blob < folded_count(&cfg) + 4 * folded_tensor_count(&cfg) as u64);
            assert_eq!(blob % FOLDED_ALIGN as u64, 0);
        }
    }

    #[test]
    fn mcu_presets_fit_their_weight_budgets() {
        let h7 = ModelConfig::tiny_vit_mcu_h7();
        let m4 = ModelConfig::tiny_vit_mcu_m4();
        assert_eq!(folded_count(&h7), 324_290);
        assert_eq!(folded_count(&m4), 184_986);
        assert!(folded_blob_len(&h7) * 4 <= 1_500_000);
        assert!(folded_blob_len(&m4) * 4 <= 800_000);
    }

    #[test]
    fn splitmix64_matches_the_reference_sequence() {
        // First outputs for state 0, as published with the algorithm.
        let mut s = 0u64;
        assert_eq!(splitmix64(&mut s), 0xE220_A839_7B1D_CDAF);
        assert_eq!(splitmix64(&mut s), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn synthetic_state_dict_is_deterministic_and_complete() {
        let cfg = ModelConfig::tiny_vit_mcu_m4();
        let a = synthetic_state_dict(&cfg, 3);
        assert_eq!(a, synthetic_state_dict(&cfg, 3));
        assert_ne!(a, synthetic_state_dict(&cfg, 4));
        let n: u64 = a
            .iter()
            .filter(|t| t.kind == TensorKind::Param)
            .map(|t| t.values.len() as u64)
            .sum();
        assert_eq!(n, param_count(&cfg));
        assert!(a
            .iter()
            .filter(|t| t.name.ends_with("running_var"))
            .all(|t| t.values.iter().all(|v| *v >= 0.5)));
    }
}
