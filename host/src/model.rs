//! TinyViT for training and evaluation on libtorch (CPU or CUDA).
//!
//! Port of the classification TinyViT of Wu et al., ECCV 2022 (official `TinyViT/models/tiny_vit.py`
//! in microsoft/Cream; timm `timm/models/tiny_vit.py`), built from a core
//! [`ModelConfig`]. Every variable lives in a [`tch::nn::VarStore`] under the official
//! state_dict name (`patch_embed.seq.0.c.weight`, `layers.1.blocks.0.attn.qkv.weight`, ...), so a
//! checkpoint written here moves between tch, the core engines, timm and the official code
//! without renaming. BatchNorm buffers (`running_mean`, `running_var`, `num_batches_tracked`)
//! are stored too, as in the official state_dict (296 entries for the official presets).
//!
//! Behaviour that matters for parity with the official `TinyViT/models/tiny_vit.py`
//! (microsoft/Cream) and timm's `timm/models/tiny_vit.py`, pinned by `tests/tests/parity.rs`:
//! exact-erf GELU; LayerNorm and BatchNorm eps 1e-5, BN momentum 0.1; attention `qkv` laid out
//! per head interleaved `[q_h0 k_h0 v_h0 q_h1 ...]`; relative bias index
//! `|dy| * ws + |dx|`; windows zero-padded right and bottom with no mask; local conv with no
//! residual and no activation; GELU after the MBConv residual add; per-sample DropPath with rates
//! `linspace(0, drop_path_rate, total_blocks)`.
//!
//! Head dimension: `embed_dim / num_heads` as the official block computes it (32 in every
//! official preset, i.e. [`tinyvit_core::config::KEY_DIM`]).

use anyhow::{ensure, Result};
use tch::nn::{self, Init};
use tch::{Kind, Tensor};
use tinyvit_core::config::ModelConfig;

/// LayerNorm and BatchNorm epsilon of the reference.
pub const NORM_EPS: f64 = 1e-5;
/// BatchNorm running-statistics momentum of the reference.
pub const BN_MOMENTUM: f64 = 0.1;

/// Exact GELU (erf form), as `nn.GELU()` defaults to.
fn gelu(x: &Tensor) -> Tensor {
    x.gelu("none")
}

/// Per-sample stochastic depth: each sample's branch is kept with probability `1 - p` and
/// scaled by `1 / (1 - p)`; identity outside training or when `p == 0`.
fn drop_path(x: &Tensor, p: f64, train: bool) -> Tensor {
    if !train || p <= 0.0 {
        return x.shallow_clone();
    }
    let keep = 1.0 - p;
    let mut shape = vec![1i64; x.dim()];
    shape[0] = x.size()[0];
    let mask = Tensor::empty(shape.as_slice(), (x.kind(), x.device())).bernoulli_float_(keep);
    x * mask / keep
}

/// Truncated-normal Linear init of the reference: `trunc_normal_(std=0.02)` (truncation at
/// absolute +-2, as timm's default bounds are).
fn trunc_normal(p: &nn::Path, name: &str, dims: &[i64], std: f64) -> Tensor {
    let w = p.var(name, dims, Init::Const(0.0));
    tch::no_grad(|| {
        let v = (Tensor::randn(dims, (Kind::Float, p.device())) * std).clamp(-2.0, 2.0);
        w.shallow_clone().copy_(&v);
    });
    w
}

/// BatchNorm2d with the official parameter and buffer names.
#[derive(Debug)]
pub struct BatchNorm {
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    num_batches_tracked: Tensor,
}

impl BatchNorm {
    fn new(p: &nn::Path, c: i64, weight_init: f64) -> Self {
        let weight = p.var("weight", &[c], Init::Const(weight_init));
        let bias = p.var("bias", &[c], Init::Const(0.0));
        let running_mean = p.zeros_no_train("running_mean", &[c]);
        let running_var = p.ones_no_train("running_var", &[c]);
        let nbt = Tensor::zeros([], (Kind::Int64, p.device()));
        let num_batches_tracked = p.add("num_batches_tracked", nbt, false);
        BatchNorm {
            weight,
            bias,
            running_mean,
            running_var,
            num_batches_tracked,
        }
    }

    /// Batch statistics (and running-stat update) when `train`, running statistics otherwise.
    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        if train {
            tch::no_grad(|| {
                let _ = self.num_batches_tracked.shallow_clone().g_add_scalar_(1);
            });
        }
        x.batch_norm(
            Some(&self.weight),
            Some(&self.bias),
            Some(&self.running_mean),
            Some(&self.running_var),
            train,
            BN_MOMENTUM,
            NORM_EPS,
            true,
        )
    }
}

/// `Conv2d_BN`: a bias-free conv (`c`) followed by BatchNorm (`bn`).
#[derive(Debug)]
pub struct Conv2dBn {
    weight: Tensor,
    bn: BatchNorm,
    stride: i64,
    pad: i64,
    groups: i64,
}

impl Conv2dBn {
    #[allow(clippy::too_many_arguments)]
    fn new(
        p: &nn::Path,
        cin: i64,
        cout: i64,
        k: i64,
        stride: i64,
        pad: i64,
        groups: i64,
        bn_weight_init: f64,
    ) -> Self {
        // PyTorch's default conv init: kaiming_uniform(a = sqrt 5) = U(-1/sqrt(fan_in), +).
        let fan_in = (cin / groups) * k * k;
        let bound = 1.0 / (fan_in as f64).sqrt();
        let weight = p.sub("c").var(
            "weight",
            &[cout, cin / groups, k, k],
            Init::Uniform {
                lo: -bound,
                up: bound,
            },
        );
        let bn = BatchNorm::new(&p.sub("bn"), cout, bn_weight_init);
        Conv2dBn {
            weight,
            bn,
            stride,
            pad,
            groups,
        }
    }

    /// # Shapes
    /// `[B, cin, H, W] -> [B, cout, H', W']`
    fn forward(&self, x: &Tensor, bn_train: bool) -> Tensor {
        let y = x.conv2d(
            &self.weight,
            None::<Tensor>,
            [self.stride, self.stride],
            [self.pad, self.pad],
            [1, 1],
            self.groups,
        );
        self.bn.forward(&y, bn_train)
    }
}

/// LayerNorm over the last dimension.
#[derive(Debug)]
struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    dim: i64,
}

impl LayerNorm {
    fn new(p: &nn::Path, dim: i64) -> Self {
        LayerNorm {
            weight: p.var("weight", &[dim], Init::Const(1.0)),
            bias: p.var("bias", &[dim], Init::Const(0.0)),
            dim,
        }
    }
    fn forward(&self, x: &Tensor) -> Tensor {
        x.layer_norm(
            [self.dim],
            Some(&self.weight),
            Some(&self.bias),
            NORM_EPS,
            true,
        )
    }
}

/// Linear layer with the reference init (trunc normal 0.02, zero bias).
#[derive(Debug)]
struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    fn new(p: &nn::Path, cin: i64, cout: i64) -> Self {
        Linear {
            weight: trunc_normal(p, "weight", &[cout, cin], 0.02),
            bias: p.var("bias", &[cout], Init::Const(0.0)),
        }
    }
    fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, Some(&self.bias))
    }
}

/// Forward-time switches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mode {
    /// DropPath active.
    pub train: bool,
    /// BatchNorm uses batch statistics and updates its running statistics.
    pub bn_train: bool,
}

impl Mode {
    /// Training (DropPath on, BN in batch-statistics mode).
    pub const TRAIN: Mode = Mode {
        train: true,
        bn_train: true,
    };
    /// Evaluation.
    pub const EVAL: Mode = Mode {
        train: false,
        bn_train: false,
    };
    /// Training with frozen BatchNorm (fine-tuning recipes).
    pub const TRAIN_FROZEN_BN: Mode = Mode {
        train: true,
        bn_train: false,
    };
}

/// Stage-0 block: 1x1 expand, 3x3 depthwise, 1x1 project, residual, GELU after the add.
#[derive(Debug)]
struct MbConv {
    conv1: Conv2dBn,
    conv2: Conv2dBn,
    conv3: Conv2dBn,
    drop_path: f64,
}

impl MbConv {
    fn new(p: &nn::Path, dim: i64, expand: i64, drop_path: f64) -> Self {
        let hidden = dim * expand;
        MbConv {
            conv1: Conv2dBn::new(&p.sub("conv1"), dim, hidden, 1, 1, 0, 1, 1.0),
            conv2: Conv2dBn::new(&p.sub("conv2"), hidden, hidden, 3, 1, 1, hidden, 1.0),
            conv3: Conv2dBn::new(&p.sub("conv3"), hidden, dim, 1, 1, 0, 1, 0.0),
            drop_path,
        }
    }
    /// # Shapes
    /// `[B, C, H, W] -> [B, C, H, W]`
    fn forward(&self, x: &Tensor, m: Mode) -> Tensor {
        let y = gelu(&self.conv1.forward(x, m.bn_train));
        let y = gelu(&self.conv2.forward(&y, m.bn_train));
        let y = self.conv3.forward(&y, m.bn_train);
        gelu(&(drop_path(&y, self.drop_path, m.train) + x))
    }
}

/// Downsample at the end of stages 0..2: 1x1, GELU, 3x3 depthwise stride 2, GELU, 1x1.
#[derive(Debug)]
struct PatchMerging {
    conv1: Conv2dBn,
    conv2: Conv2dBn,
    conv3: Conv2dBn,
}

impl PatchMerging {
    fn new(p: &nn::Path, dim: i64, out: i64) -> Self {
        PatchMerging {
            conv1: Conv2dBn::new(&p.sub("conv1"), dim, out, 1, 1, 0, 1, 1.0),
            conv2: Conv2dBn::new(&p.sub("conv2"), out, out, 3, 2, 1, out, 1.0),
            conv3: Conv2dBn::new(&p.sub("conv3"), out, out, 1, 1, 0, 1, 1.0),
        }
    }
    /// # Shapes
    /// `[B, dim, H, W] -> [B, ceil(H/2) * ceil(W/2), out]` (tokens, row-major)
    fn forward(&self, x: &Tensor, m: Mode) -> Tensor {
        let y = gelu(&self.conv1.forward(x, m.bn_train));
        let y = gelu(&self.conv2.forward(&y, m.bn_train));
        let y = self.conv3.forward(&y, m.bn_train);
        y.flatten(2, -1).transpose(1, 2)
    }
}

/// The relative-position index of a `ws x ws` window: `idx[i][j] = |dy| * ws + |dx|` over
/// points in row-major order. Returned flat, `ws^4` entries.
pub fn bias_index(ws: usize) -> Vec<i64> {
    let n = ws * ws;
    let mut idx = Vec::with_capacity(n * n);
    for i in 0..n {
        let (yi, xi) = (i / ws, i % ws);
        for j in 0..n {
            let (yj, xj) = (j / ws, j % ws);
            idx.push((yi.abs_diff(yj) * ws + xi.abs_diff(xj)) as i64);
        }
    }
    idx
}

/// Windowed multi-head self-attention with a learned relative bias per head.
#[derive(Debug)]
struct Attention {
    norm: LayerNorm,
    qkv: Linear,
    proj: Linear,
    attention_biases: Tensor,
    bias_idx: Tensor,
    heads: i64,
    head_dim: i64,
    n: i64,
}

impl Attention {
    fn new(p: &nn::Path, dim: i64, heads: i64, ws: i64) -> Self {
        let head_dim = dim / heads;
        let n = ws * ws;
        let idx = bias_index(ws as usize);
        Attention {
            norm: LayerNorm::new(&p.sub("norm"), dim),
            qkv: Linear::new(&p.sub("qkv"), dim, 3 * head_dim * heads),
            proj: Linear::new(&p.sub("proj"), head_dim * heads, dim),
            attention_biases: p.var("attention_biases", &[heads, n], Init::Const(0.0)),
            bias_idx: Tensor::from_slice(&idx).view([n, n]).to_device(p.device()),
            heads,
            head_dim,
            n,
        }
    }

    /// # Shapes
    /// `[B', N, dim] -> [B', N, dim]` with `N = ws * ws`
    fn forward(&self, x: &Tensor) -> Tensor {
        let (b, n, _) = x.size3().expect("attention input is [B, N, C]");
        let x = self.norm.forward(x);
        // [B, N, heads, 3 * hd]: per head interleaved q, k, v.
        let qkv = self
            .qkv
            .forward(&x)
            .view([b, n, self.heads, 3 * self.head_dim]);
        let parts = qkv.split(self.head_dim, 3);
        let q = parts[0].permute([0, 2, 1, 3]); // [B, h, N, hd]
        let k = parts[1].permute([0, 2, 1, 3]);
        let v = parts[2].permute([0, 2, 1, 3]);
        let scale = (self.head_dim as f64).powf(-0.5);
        // [h, N, N]
        let bias = self
            .attention_biases
            .index_select(1, &self.bias_idx.view([-1]))
            .view([self.heads, self.n, self.n]);
        let attn = q.matmul(&k.transpose(-2, -1)) * scale + bias.to_kind(q.kind());
        let attn = attn.softmax(-1, attn.kind());
        let y = attn
            .matmul(&v)
            .transpose(1, 2)
            .reshape([b, n, self.heads * self.head_dim]);
        self.proj.forward(&y)
    }
}

/// MLP of a TinyViT block: LayerNorm, fc1, GELU, fc2.
#[derive(Debug)]
struct Mlp {
    norm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    fn new(p: &nn::Path, dim: i64, hidden: i64) -> Self {
        Mlp {
            norm: LayerNorm::new(&p.sub("norm"), dim),
            fc1: Linear::new(&p.sub("fc1"), dim, hidden),
            fc2: Linear::new(&p.sub("fc2"), hidden, dim),
        }
    }
    fn forward(&self, x: &Tensor) -> Tensor {
        self.fc2
            .forward(&gelu(&self.fc1.forward(&self.norm.forward(x))))
    }
}

/// TinyViT block: windowed attention + residual, local depthwise conv, MLP + residual.
#[derive(Debug)]
struct Block {
    attn: Attention,
    local_conv: Conv2dBn,
    mlp: Mlp,
    ws: i64,
    res: i64,
    drop_path: f64,
}

impl Block {
    fn new(
        p: &nn::Path,
        dim: i64,
        heads: i64,
        ws: i64,
        res: i64,
        cfg: &ModelConfig,
        dp: f64,
    ) -> Self {
        let lk = cfg.local_conv_size as i64;
        Block {
            attn: Attention::new(&p.sub("attn"), dim, heads, ws),
            local_conv: Conv2dBn::new(&p.sub("local_conv"), dim, dim, lk, 1, lk / 2, dim, 1.0),
            mlp: Mlp::new(&p.sub("mlp"), dim, dim * cfg.mlp_ratio as i64),
            ws,
            res,
            drop_path: dp,
        }
    }

    /// # Shapes
    /// `[B, res * res, C] -> [B, res * res, C]`
    fn forward(&self, x: &Tensor, m: Mode) -> Tensor {
        let (b, l, c) = x.size3().expect("block input is [B, L, C]");
        let (h, w, ws) = (self.res, self.res, self.ws);
        let a = if h == ws && w == ws {
            self.attn.forward(x)
        } else {
            let xs = x.view([b, h, w, c]);
            let pad_b = (ws - h % ws) % ws;
            let pad_r = (ws - w % ws) % ws;
            let xs = if pad_b > 0 || pad_r > 0 {
                // pad spec runs from the last dim: (C: 0, 0), (W: 0, pad_r), (H: 0, pad_b)
                xs.constant_pad_nd([0, 0, 0, pad_r, 0, pad_b])
            } else {
                xs
            };
            let (ph, pw) = (h + pad_b, w + pad_r);
            let (nh, nw) = (ph / ws, pw / ws);
            // [B, nH, ws, nW, ws, C] -> windows [B * nH * nW, ws * ws, C]
            let win =
                xs.view([b, nh, ws, nw, ws, c])
                    .transpose(2, 3)
                    .reshape([b * nh * nw, ws * ws, c]);
            let y = self.attn.forward(&win);
            let y = y
                .view([b, nh, nw, ws, ws, c])
                .transpose(2, 3)
                .reshape([b, ph, pw, c]);
            let y = if pad_b > 0 || pad_r > 0 {
                y.narrow(1, 0, h).narrow(2, 0, w).contiguous()
            } else {
                y
            };
            y.view([b, l, c])
        };
        let x = x + drop_path(&a, self.drop_path, m.train);
        // local conv in BCHW, no residual, no activation
        let xc = x.transpose(1, 2).reshape([b, c, h, w]);
        let xc = self.local_conv.forward(&xc, m.bn_train);
        let x = xc.view([b, c, l]).transpose(1, 2);
        let y = self.mlp.forward(&x);
        &x + drop_path(&y, self.drop_path, m.train)
    }
}

#[derive(Debug)]
enum Stage {
    Conv(Vec<MbConv>),
    Attn(Vec<Block>),
}

/// TinyViT classifier whose variables live in a [`nn::VarStore`].
#[derive(Debug)]
pub struct TinyVit {
    cfg: ModelConfig,
    pe0: Conv2dBn,
    pe2: Conv2dBn,
    stages: Vec<Stage>,
    downsamples: Vec<PatchMerging>,
    norm_head: LayerNorm,
    head: Linear,
    res: [i64; 4],
    /// Replaces the mode's `bn_train` by `false` (frozen BatchNorm for fine-tuning).
    pub freeze_bn: bool,
}

impl TinyVit {
    /// Builds the network under `p` (normally `vs.root()`), initialised as the reference does.
    pub fn new(p: &nn::Path, cfg: &ModelConfig) -> Result<Self> {
        cfg.validate()
            .map_err(|e| anyhow::anyhow!("model config: {e}"))?;
        let e: Vec<i64> = cfg.embed_dims.iter().map(|&d| d as i64).collect();
        let res_u = cfg.stage_resolutions();
        let res = [
            res_u[0] as i64,
            res_u[1] as i64,
            res_u[2] as i64,
            res_u[3] as i64,
        ];
        let total = cfg.total_blocks() as usize;
        let dpr: Vec<f64> = (0..total)
            .map(|i| {
                if total <= 1 {
                    0.0
                } else {
                    cfg.drop_path_rate as f64 * i as f64 / (total - 1) as f64
                }
            })
            .collect();
        let pe = p.sub("patch_embed").sub("seq");
        let cin = cfg.in_chans as i64;
        let pe0 = Conv2dBn::new(&pe.sub("0"), cin, e[0] / 2, 3, 2, 1, 1, 1.0);
        let pe2 = Conv2dBn::new(&pe.sub("2"), e[0] / 2, e[0], 3, 2, 1, 1, 1.0);
        let mut stages = Vec::new();
        let mut downsamples = Vec::new();
        let mut k = 0;
        for s in 0..4 {
            let lp = p.sub("layers").sub(s.to_string());
            let bp = lp.sub("blocks");
            let depth = cfg.depths[s] as usize;
            if s == 0 {
                let blocks = (0..depth)
                    .map(|j| {
                        let b = MbConv::new(
                            &bp.sub(j.to_string()),
                            e[0],
                            cfg.mbconv_expand_ratio as i64,
                            dpr[k + j],
                        );
                        b
                    })
                    .collect();
                stages.push(Stage::Conv(blocks));
            } else {
                let heads = cfg.num_heads[s] as i64;
                ensure!(
                    e[s] % heads == 0,
                    "embed_dims[{s}] not divisible by num_heads[{s}]"
                );
                let ws = cfg.window_sizes[s] as i64;
                let blocks = (0..depth)
                    .map(|j| {
                        Block::new(
                            &bp.sub(j.to_string()),
                            e[s],
                            heads,
                            ws,
                            res[s],
                            cfg,
                            dpr[k + j],
                        )
                    })
                    .collect();
                stages.push(Stage::Attn(blocks));
            }
            k += depth;
            if s < 3 {
                downsamples.push(PatchMerging::new(&lp.sub("downsample"), e[s], e[s + 1]));
            }
        }
        let nc = cfg.num_classes as i64;
        Ok(TinyVit {
            cfg: *cfg,
            pe0,
            pe2,
            stages,
            downsamples,
            norm_head: LayerNorm::new(&p.sub("norm_head"), e[3]),
            head: Linear::new(&p.sub("head"), e[3], nc),
            res,
            freeze_bn: false,
        })
    }

    /// The configuration this network was built from.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Pooled, normalised features before the head.
    ///
    /// # Shapes
    /// `[B, in_chans, img, img] -> [B, embed_dims[3]]`
    pub fn features(&self, x: &Tensor, mode: Mode) -> Tensor {
        let m = Mode {
            train: mode.train,
            bn_train: mode.bn_train && !self.freeze_bn,
        };
        let x = gelu(&self.pe0.forward(x, m.bn_train));
        let mut x = self.pe2.forward(&x, m.bn_train); // [B, E0, r0, r0]
        for (s, stage) in self.stages.iter().enumerate() {
            match stage {
                Stage::Conv(blocks) => {
                    for b in blocks {
                        x = b.forward(&x, m);
                    }
                }
                Stage::Attn(blocks) => {
                    for b in blocks {
                        x = b.forward(&x, m);
                    }
                }
            }
            if s < 3 {
                // PatchMerging takes BCHW; stages 1..2 hold tokens [B, L, C].
                let xi = if x.dim() == 3 {
                    let (b, _, c) = x.size3().expect("tokens");
                    x.view([b, self.res[s], self.res[s], c])
                        .permute([0, 3, 1, 2])
                } else {
                    x
                };
                x = self.downsamples[s].forward(&xi, m); // [B, L', C']
            }
        }
        self.norm_head.forward(&x.mean_dim(1, false, x.kind()))
    }

    /// Class logits.
    ///
    /// # Shapes
    /// `[B, in_chans, img, img] -> [B, num_classes]`
    pub fn forward(&self, x: &Tensor, mode: Mode) -> Tensor {
        self.head.forward(&self.features(x, mode))
    }
}

/// Number of trainable parameters (BN buffers excluded), the figure the paper reports.
pub fn count_params(vs: &nn::VarStore) -> i64 {
    vs.trainable_variables()
        .iter()
        .map(|t| t.numel() as i64)
        .sum()
}

/// Whether the optimizer applies weight decay to this variable: not to 1-D parameters, biases
/// or attention biases (reference recipe).
pub fn decays(name: &str, shape: &[i64]) -> bool {
    !(shape.len() <= 1 || name.ends_with(".bias") || name.ends_with("attention_biases"))
}

/// Layer-wise lr scale of a variable for fine-tuning: block `i` of all blocks (MBConv included)
/// gets `decay^(total - 1 - i)`; `patch_embed` block 0's scale; each downsample the scale of its
/// stage's last block; `norm_head` and `head` 1.0.
pub fn layer_lr_scale(name: &str, cfg: &ModelConfig, decay: f64) -> f64 {
    let total = cfg.total_blocks() as i64;
    let scale = |i: i64| decay.powi((total - 1 - i) as i32);
    if name.starts_with("patch_embed.") {
        return scale(0);
    }
    let parts: Vec<&str> = name.split('.').collect();
    if parts.len() > 3 && parts[0] == "layers" {
        let s: usize = parts[1].parse().unwrap_or(0).min(3);
        let before: i64 = cfg.depths[..s].iter().map(|&d| d as i64).sum();
        if parts[2] == "blocks" {
            let j: i64 = parts[3].parse().unwrap_or(0);
            return scale(before + j);
        }
        if parts[2] == "downsample" {
            return scale(before + cfg.depths[s] as i64 - 1);
        }
    }
    1.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn build(cfg: &ModelConfig) -> (nn::VarStore, TinyVit) {
        let vs = nn::VarStore::new(Device::Cpu);
        let m = TinyVit::new(&vs.root(), cfg).unwrap();
        (vs, m)
    }

    #[test]
    fn official_param_counts_and_key_count() {
        for (name, params) in [
            ("tiny_vit_5m_224", 5_392_764i64),
            ("tiny_vit_11m_224", 10_996_972),
            ("tiny_vit_21m_224", 21_198_568),
            ("tiny_vit_21m_384", 21_230_488),
        ] {
            let cfg = ModelConfig::preset(name).unwrap();
            let (vs, _) = build(&cfg);
            assert_eq!(count_params(&vs), params, "{name}");
            assert_eq!(vs.variables().len(), 296, "{name}");
        }
    }

    /// The VarStore holds exactly the core's canonical state_dict: same names, same shapes,
    /// int64 only for `num_batches_tracked`, for every preset.
    #[test]
    fn varstore_matches_core_param_list() {
        for name in tinyvit_core::config::PRESET_NAMES {
            let cfg = ModelConfig::preset(name).unwrap();
            let (vs, _) = build(&cfg);
            let vars = vs.variables();
            let mut n = 0;
            tinyvit_core::params::for_each_tensor(&cfg, |tname, shape, _kind| {
                n += 1;
                let t = vars
                    .get(tname)
                    .unwrap_or_else(|| panic!("{name}: `{tname}` missing"));
                let want: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
                assert_eq!(t.size(), want, "{name}: `{tname}`");
                let int = tname.ends_with("num_batches_tracked");
                assert_eq!(t.kind() == Kind::Int64, int, "{name}: `{tname}` dtype");
            });
            assert_eq!(n, vars.len(), "{name}: extra variables in the VarStore");
            assert_eq!(
                count_params(&vs) as u64,
                tinyvit_core::params::param_count(&cfg),
                "{name}"
            );
        }
    }

    #[test]
    fn official_names_present() {
        let (vs, _) = build(&ModelConfig::tiny_vit_5m_224());
        let v = vs.variables();
        for k in [
            "patch_embed.seq.0.c.weight",
            "patch_embed.seq.2.bn.running_var",
            "layers.0.blocks.1.conv3.bn.weight",
            "layers.0.downsample.conv2.c.weight",
            "layers.2.blocks.5.attn.attention_biases",
            "layers.1.blocks.0.attn.qkv.weight",
            "layers.3.blocks.1.mlp.fc2.bias",
            "layers.3.blocks.1.local_conv.bn.num_batches_tracked",
            "norm_head.weight",
            "head.bias",
        ] {
            assert!(v.contains_key(k), "missing {k}");
        }
        assert_eq!(
            v["layers.2.blocks.0.attn.attention_biases"].size(),
            [5, 196]
        );
        assert_eq!(v["layers.1.blocks.0.attn.qkv.weight"].size(), [384, 128]);
        assert!(!v.contains_key("layers.3.downsample.conv1.c.weight"));
        // reference init: MBConv conv3 BN weight 0, attention biases 0
        assert_eq!(
            v["layers.0.blocks.0.conv3.bn.weight"]
                .abs()
                .sum(Kind::Float)
                .double_value(&[]),
            0.0
        );
        let std = v["head.weight"].std(true).double_value(&[]);
        assert!((std - 0.02).abs() < 0.002, "head init std {std}");
    }

    #[test]
    fn forward_shapes_with_window_padding() {
        // 32 px: stage resolutions 8, 4, 2, 1; windows 7 force padding in stages 1..3.
        let cfg = ModelConfig::tiny_vit_5m_224()
            .with_img_size(32)
            .with_num_classes(10)
            .with_in_chans(1);
        let (_vs, m) = build(&cfg);
        let x = Tensor::randn([3, 1, 32, 32], (Kind::Float, Device::Cpu));
        let y = m.forward(&x, Mode::TRAIN);
        assert_eq!(y.size(), [3, 10]);
        let y = m.forward(&x, Mode::EVAL);
        assert_eq!(y.size(), [3, 10]);
        assert!(bool::try_from(y.isfinite().all()).unwrap());
    }

    #[test]
    fn bias_index_rule() {
        let idx = bias_index(3);
        // point 0 = (0,0), point 5 = (1,2): |1|*3 + |2| = 5; point 7 = (2,1) vs point 3 = (1,0): 1*3+1
        assert_eq!(idx[5], 5);
        assert_eq!(idx[7 * 9 + 3], 4);
        assert_eq!(idx.iter().copied().max(), Some(8));
    }

    #[test]
    fn layer_decay_rule() {
        let cfg = ModelConfig::tiny_vit_5m_224();
        let d = 0.8f64;
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        assert_eq!(layer_lr_scale("head.weight", &cfg, d), 1.0);
        assert_eq!(layer_lr_scale("norm_head.bias", &cfg, d), 1.0);
        assert!(close(
            layer_lr_scale("patch_embed.seq.0.c.weight", &cfg, d),
            d.powi(11)
        ));
        assert!(close(
            layer_lr_scale("layers.0.blocks.1.conv1.c.weight", &cfg, d),
            d.powi(10)
        ));
        assert!(close(
            layer_lr_scale("layers.0.downsample.conv1.c.weight", &cfg, d),
            d.powi(10)
        ));
        assert!(close(
            layer_lr_scale("layers.2.blocks.5.attn.qkv.weight", &cfg, d),
            d.powi(2)
        ));
        assert_eq!(
            layer_lr_scale("layers.3.blocks.1.mlp.fc1.weight", &cfg, d),
            1.0
        );
        assert!(!decays("layers.1.blocks.0.attn.attention_biases", &[4, 49]));
        assert!(!decays("head.bias", &[10]));
        assert!(decays("head.weight", &[10, 320]));
    }
}
