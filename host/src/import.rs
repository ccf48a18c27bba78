//! Checkpoint import: official or timm TinyViT weights -> a config and a folded blob for the
//! core engines, and the `.tvb` export.
//!
//! Accepted files (by extension, then checked by content):
//! - `.safetensors` with official names (`patch_embed.seq.0.c.weight`, `layers.i...`,
//!   `norm_head`, `head`) or timm names (`patch_embed.conv1.conv.weight`, `stages.i...`,
//!   `head.norm`, `head.fc`), detected from the keys; F32, F16 and BF16 tensors.
//! - `.pth` / `.pt`: a torch zip pickle holding a state_dict, or `{'model': state_dict, ...}`
//!   as the official checkpoints do (read without Python, see [`pth`]).
//! - `.tvb`: the deployable file ([`tinyvit_core::tvb`]), already folded.
//!
//! Whatever the source, tensors are renamed to the official names, `attention_bias_idxs` is
//! dropped, `num_batches_tracked` is ignored, and `attention_biases` whose window differs from
//! the target config's are resized per head by antialiased bicubic interpolation over the
//! `ws x ws` grid, exactly as timm's `checkpoint_filter_fn` does (so 224 weights run at 384).
//! The config is the one our checkpoints and `.tvb` files record (`--arch`, `--img-size` or
//! `--num-classes` that contradict it are errors naming both values); for other files it comes
//! from `--arch` (a preset name) or is read from the tensor shapes ([`config_from_shapes`]),
//! with the matching preset's input size or `--img-size`. The input contract comes with it
//! when the file records one ([`Loaded::contract`]).

pub mod npy;
pub mod pth;
pub mod safetensors_file;
pub mod state_dict;

use std::collections::HashMap;
use std::path::Path;

use anyhow::{anyhow, bail, ensure, Context, Result};
use tinyvit_core::config::{ModelConfig, PRESET_NAMES};
use tinyvit_core::engine::fold::fold_state_dict;
use tinyvit_core::params::{for_each_tensor, numel, TensorKind};
use tinyvit_core::tvb;

use crate::checkpoint::{self, detect_naming, timm_to_official, Contract, Naming};
pub use state_dict::{StateDict, Tensor};

/// A model ready for the core engines.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub config: ModelConfig,
    /// The packed folded blob ([`tinyvit_core::engine::Weights::new`]).
    pub blob: Vec<f32>,
    /// The unfolded official state_dict, when the source had one (not for `.tvb`).
    pub state_dict: Option<StateDict>,
    /// The input contract the file records (our checkpoints and `.tvb` files), if any.
    pub contract: Option<Contract>,
}

/// Keys every importer ignores: the non-persistent bias index buffer and BN counters.
fn ignored(name: &str) -> bool {
    name.ends_with("attention_bias_idxs") || name.ends_with("num_batches_tracked")
}

/// Reads a safetensors checkpoint (official or timm names) into official names, through the
/// one checkpoint reader ([`checkpoint::read_tensors`]).
pub fn read_safetensors(path: &Path) -> Result<StateDict> {
    let (_, tensors) = checkpoint::read_tensors(path)?;
    state_dict_of(&tensors).with_context(|| format!("{}", path.display()))
}

/// The f32 state_dict of checkpoint tensors: counters, bias indices, the trainer's
/// `optimizer.*` tensors and a stray `input` are left out.
pub fn state_dict_of(tensors: &HashMap<String, tch::Tensor>) -> Result<StateDict> {
    let mut out = StateDict::new();
    for (name, t) in tensors {
        if ignored(name) || name == "input" || name.starts_with("optimizer.") {
            continue;
        }
        let values: Vec<f32> = Vec::try_from(&t.to_kind(tch::Kind::Float).view([-1]))
            .with_context(|| format!("tensor `{name}`"))?;
        let shape = t.size().iter().map(|&d| d as usize).collect();
        out.insert(name.clone(), Tensor { shape, values });
    }
    Ok(out)
}

/// Reads any supported state_dict file (`.safetensors`, `.pth`, `.pt`, `.bin`) into official
/// names.
pub fn read_state_dict(path: &Path) -> Result<StateDict> {
    match extension(path).as_str() {
        "safetensors" => read_safetensors(path),
        "pth" | "pt" | "bin" | "ckpt" => {
            let raw = pth::read(path)?;
            let naming = detect_naming(raw.keys().map(|s| s.as_str()))
                .with_context(|| format!("{}", path.display()))?;
            Ok(raw
                .into_iter()
                .filter(|(k, _)| !ignored(k))
                .map(|(k, t)| match naming {
                    Naming::Official => (k, t),
                    Naming::Timm => (timm_to_official(&k), t),
                })
                .collect())
        }
        other => bail!(
            "{}: unknown model file extension `{other}` (expected .safetensors, .pth, .pt or .tvb)",
            path.display()
        ),
    }
}

fn extension(path: &Path) -> String {
    path.extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase()
}

/// Window side of an `attention_biases` table `[heads, ws*ws]`.
fn table_window(shape: &[usize]) -> Option<usize> {
    let l = *shape.get(1)?;
    let s = (l as f64).sqrt().round() as usize;
    (s * s == l).then_some(s)
}

/// Whether the state_dict has every tensor of `cfg` with the right shape; attention bias
/// tables only need the right head count and a square size when `any_window` is set.
fn matches(sd: &StateDict, cfg: &ModelConfig, any_window: bool) -> Result<(), String> {
    let mut err = None;
    for_each_tensor(cfg, |name, shape, kind| {
        if err.is_some() || kind == TensorKind::Counter {
            return;
        }
        let Some(t) = sd.get(name) else {
            err = Some(format!("missing `{name}`"));
            return;
        };
        let ok = if any_window && name.ends_with("attention_biases") {
            t.shape.len() == 2 && t.shape[0] == shape[0] && table_window(&t.shape).is_some()
        } else {
            t.shape == shape
        };
        if !ok {
            err = Some(format!(
                "`{name}` has shape {:?}, expected {shape:?}",
                t.shape
            ));
        }
    });
    err.map_or(Ok(()), Err)
}

/// The architecture a state_dict describes, read from its shapes: widths, depths, heads and
/// windows (from `attention_biases`), MLP and MBConv ratios, local conv size, input channels
/// and classes. `img_size` is left 0: shapes do not tell it.
pub fn config_from_shapes(sd: &StateDict) -> Result<ModelConfig> {
    let shape = |name: &str| -> Result<&[usize]> {
        sd.get(name)
            .map(|t| &t.shape[..])
            .ok_or_else(|| anyhow!("checkpoint has no `{name}`"))
    };
    let dim = |name: &str, d: usize| -> Result<u32> {
        shape(name)?
            .get(d)
            .map(|v| *v as u32)
            .ok_or_else(|| anyhow!("`{name}` has too few dimensions"))
    };
    let count = |prefix: &str, leaf: &str| {
        (0..)
            .take_while(|j| sd.contains_key(&format!("{prefix}.{j}.{leaf}")))
            .count() as u32
    };
    let mut cfg = ModelConfig::tiny_vit_5m_224();
    cfg.img_size = 0;
    cfg.in_chans = dim("patch_embed.seq.0.c.weight", 1)?;
    cfg.num_classes = dim("head.weight", 0)?;
    cfg.embed_dims[0] = dim("patch_embed.seq.2.c.weight", 0)?;
    cfg.depths[0] = count("layers.0.blocks", "conv1.c.weight");
    ensure!(cfg.depths[0] > 0, "checkpoint has no stage-0 MBConv blocks");
    cfg.mbconv_expand_ratio = dim("layers.0.blocks.0.conv1.c.weight", 0)? / cfg.embed_dims[0];
    for i in 1..4 {
        cfg.embed_dims[i] = dim(&format!("layers.{}.downsample.conv1.c.weight", i - 1), 0)?;
        let blocks = format!("layers.{i}.blocks");
        cfg.depths[i] = count(&blocks, "attn.qkv.weight");
        ensure!(cfg.depths[i] > 0, "checkpoint has no blocks in stage {i}");
        let bias = shape(&format!("{blocks}.0.attn.attention_biases"))?;
        cfg.num_heads[i] = *bias.first().unwrap_or(&0) as u32;
        cfg.window_sizes[i] = table_window(bias)
            .ok_or_else(|| anyhow!("stage {i}: attention_biases {bias:?} is not [heads, ws*ws]"))?
            as u32;
        cfg.mlp_ratio = dim(&format!("{blocks}.0.mlp.fc1.weight"), 0)? / cfg.embed_dims[i];
        cfg.local_conv_size = dim(&format!("{blocks}.0.local_conv.c.weight"), 2)?;
    }
    // Stage 0 has no attention: its head count and window are placeholders.
    cfg.num_heads[0] = 1;
    cfg.window_sizes[0] = cfg.window_sizes[1];
    cfg.drop_path_rate = 0.0;
    Ok(cfg)
}

/// Picks the config. With `arch` (a preset): that network, with the class count and input
/// channels of the weights (bias tables of another window size are resized later). Without:
/// the preset with the same architecture, else the architecture read from the shapes
/// ([`config_from_shapes`]) at `img_size`. `img_size`, when given, always sets the input size. `num_classes` must agree with the head.
pub fn resolve_config(
    sd: &StateDict,
    arch: Option<&str>,
    num_classes: Option<u32>,
    img_size: Option<u32>,
) -> Result<ModelConfig> {
    let found = config_from_shapes(sd)?;
    if let Some(n) = num_classes {
        ensure!(
            n == found.num_classes,
            "the head has {} classes, --num-classes says {n}",
            found.num_classes
        );
    }
    let mut cfg = if let Some(a) = arch {
        let p = crate::arch::resolve(a)?;
        p.with_num_classes(found.num_classes)
            .with_in_chans(found.in_chans)
    } else {
        let same = PRESET_NAMES
            .iter()
            .filter_map(|n| ModelConfig::preset(n))
            .find(|p| {
                p.embed_dims == found.embed_dims
                    && p.depths == found.depths
                    && p.num_heads[1..] == found.num_heads[1..]
                    && p.window_sizes[1..] == found.window_sizes[1..]
            });
        match (same, img_size) {
            (Some(p), _) => p
                .with_num_classes(found.num_classes)
                .with_in_chans(found.in_chans),
            (None, Some(s)) => found.with_img_size(s),
            (None, None) => {
                bail!("the weights are no preset architecture; pass --img-size (or --arch)")
            }
        }
    };
    if let Some(s) = img_size {
        cfg.img_size = s;
    }
    cfg.validate().map_err(|e| anyhow!("{e}"))?;
    matches(sd, &cfg, arch.is_some()).map_err(|e| match arch {
        Some(a) => anyhow!("weights do not fit --arch {a}: {e}"),
        None => anyhow!("weights are inconsistent: {e}"),
    })?;
    Ok(cfg)
}

/// PIL / PyTorch-antialias bicubic kernel (Keys, a = -0.5).
fn cubic(x: f64) -> f64 {
    let a = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * a
    } else {
        0.0
    }
}

/// Resampling weights from `n_in` to `n_out` samples, as PyTorch's antialiased interpolation
/// (`align_corners=False`) computes them: support widened by the scale when shrinking, window
/// clipped to the input, weights normalised to sum 1.
fn aa_weights(n_in: usize, n_out: usize) -> Vec<(usize, Vec<f64>)> {
    let scale = n_in as f64 / n_out as f64;
    let support_scale = if scale > 1.0 { scale } else { 1.0 };
    let support = 2.0 * support_scale;
    (0..n_out)
        .map(|i| {
            let center = scale * (i as f64 + 0.5);
            let xmin = ((center - support + 0.5).floor() as i64).max(0) as usize;
            let xmax = ((center + support + 0.5).floor() as i64).min(n_in as i64) as usize;
            let mut w: Vec<f64> = (xmin..xmax)
                .map(|j| cubic((j as f64 - center + 0.5) / support_scale))
                .collect();
            let total: f64 = w.iter().sum();
            if total != 0.0 {
                for v in &mut w {
                    *v /= total;
                }
            }
            (xmin, w)
        })
        .collect()
}

/// Resizes an `attention_biases` table `[heads, from*from]` to `[heads, to*to]` with
/// antialiased bicubic interpolation per head (timm `resize_rel_pos_bias_table_levit`).
pub fn resize_attention_biases(table: &[f32], heads: usize, from: usize, to: usize) -> Vec<f32> {
    if from == to {
        return table.to_vec();
    }
    let wts = aa_weights(from, to);
    let mut out = vec![0.0f32; heads * to * to];
    for h in 0..heads {
        let src = &table[h * from * from..(h + 1) * from * from];
        // Horizontal pass: [from, to].
        let mut tmp = vec![0.0f64; from * to];
        for y in 0..from {
            for (x, (x0, w)) in wts.iter().enumerate() {
                tmp[y * to + x] = w
                    .iter()
                    .enumerate()
                    .map(|(k, wk)| wk * src[y * from + x0 + k] as f64)
                    .sum();
            }
        }
        // Vertical pass: [to, to].
        for (y, (y0, w)) in wts.iter().enumerate() {
            for x in 0..to {
                let v: f64 = w
                    .iter()
                    .enumerate()
                    .map(|(k, wk)| wk * tmp[(y0 + k) * to + x])
                    .sum();
                out[h * to * to + y * to + x] = v as f32;
            }
        }
    }
    out
}

/// Resizes every attention bias table of `sd` to the windows of `cfg`.
pub fn adapt_attention_biases(sd: &mut StateDict, cfg: &ModelConfig) -> Result<()> {
    let mut targets = Vec::new();
    for_each_tensor(cfg, |name, shape, _| {
        if name.ends_with("attention_biases") {
            targets.push((name.to_string(), shape.to_vec()));
        }
    });
    for (name, shape) in targets {
        let t = sd
            .get_mut(&name)
            .ok_or_else(|| anyhow!("missing `{name}`"))?;
        if t.shape == shape {
            continue;
        }
        let from = table_window(&t.shape)
            .ok_or_else(|| anyhow!("`{name}` shape {:?} is not [heads, ws*ws]", t.shape))?;
        let to = table_window(&shape).unwrap_or(0);
        ensure!(t.shape[0] == shape[0], "`{name}`: head count differs");
        t.values = resize_attention_biases(&t.values, shape[0], from, to);
        t.shape = shape;
    }
    Ok(())
}

/// Folds a (resized) official state_dict into the engine blob.
pub fn fold(sd: &StateDict, cfg: &ModelConfig) -> Result<Vec<f32>> {
    fold_state_dict(cfg, |name| sd.get(name).map(|t| &t.values[..]))
        .map_err(|e| anyhow!("folding BatchNorm: {e}"))
}

/// Loads any supported model file for the core engines.
pub fn load(
    path: &Path,
    arch: Option<&str>,
    num_classes: Option<u32>,
    img_size: Option<u32>,
) -> Result<Loaded> {
    if extension(path) == "tvb" {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let file = tvb::parse(&bytes).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        let cfg = *file.config();
        if let Some(a) = arch {
            let p = crate::arch::resolve(a)?;
            ensure!(
                p.embed_dims == cfg.embed_dims
                    && p.depths == cfg.depths
                    && p.window_sizes == cfg.window_sizes,
                "{}: the file holds a different network than --arch {a}",
                path.display()
            );
        }
        if let Some(n) = num_classes {
            ensure!(
                n == cfg.num_classes,
                "{}: the file has {} classes, --num-classes says {n}",
                path.display(),
                cfg.num_classes
            );
        }
        if let Some(s) = img_size {
            ensure!(
                s == cfg.img_size,
                "{}: the file is for {} px inputs, --img-size says {s}",
                path.display(),
                cfg.img_size
            );
        }
        let contract = file
            .contract()
            .map(|c| Contract::from_parts(c, file.class_names()));
        return Ok(Loaded {
            config: cfg,
            blob: file.to_blob(),
            state_dict: None,
            contract,
        });
    }
    let (mut sd, md) = if extension(path) == "safetensors" {
        let (md, tensors) = checkpoint::read_tensors(path)?;
        let sd = state_dict_of(&tensors).with_context(|| format!("{}", path.display()))?;
        (sd, md)
    } else {
        (read_state_dict(path)?, HashMap::new())
    };
    let cfg = match md.get("tinyvit.config") {
        Some(js) => {
            let recorded: ModelConfig = serde_json::from_str(js)
                .with_context(|| format!("{}: metadata `tinyvit.config`", path.display()))?;
            check_recorded(&sd, &recorded, arch, num_classes, img_size)
                .with_context(|| format!("{}", path.display()))?;
            recorded
        }
        None => resolve_config(&sd, arch, num_classes, img_size)
            .with_context(|| format!("{}", path.display()))?,
    };
    let contract = checkpoint::contract_of(&md, &cfg)
        .with_context(|| format!("{}: metadata `tinyvit.input`", path.display()))?;
    adapt_attention_biases(&mut sd, &cfg).with_context(|| format!("{}", path.display()))?;
    let blob = fold(&sd, &cfg).with_context(|| format!("{}", path.display()))?;
    Ok(Loaded {
        config: cfg,
        blob,
        state_dict: Some(sd),
        contract,
    })
}

/// The unfolded official state_dict of any model file, for fine-tuning a network of `cfg`:
/// safetensors (ours, official or timm names), `.pth` / `.pt` (either layout), or `.tvb`
/// (BatchNorm already folded: each conv takes the folded weight and its BatchNorm becomes the
/// identity plus the folded bias, [`unfold_tvb`]).
pub fn init_state_dict(path: &Path, cfg: &ModelConfig) -> Result<StateDict> {
    if extension(path) != "tvb" {
        return read_state_dict(path);
    }
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let file = tvb::parse(&bytes).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let src = *file.config();
    ensure!(
        same_network(&src, cfg) && src.in_chans == cfg.in_chans,
        "{}: the file holds another network (widths {:?}, depths {:?}, {} channels) than the \
         model (widths {:?}, depths {:?}, {} channels)",
        path.display(),
        src.embed_dims,
        src.depths,
        src.in_chans,
        cfg.embed_dims,
        cfg.depths,
        cfg.in_chans
    );
    Ok(unfold_tvb(&src, &file.to_blob()))
}

/// A folded blob as an unfolded state_dict: every conv weight `P.weight` (4-D) becomes
/// `P.c.weight`, its bias `P.bn.bias`, with `P.bn.weight` = 1, `P.bn.running_mean` = 0 and
/// `P.bn.running_var` = 1 - eps (so the BatchNorm is the identity); other tensors keep their
/// names.
pub fn unfold_tvb(cfg: &ModelConfig, blob: &[f32]) -> StateDict {
    let eps = tinyvit_core::engine::fold::BN_EPS;
    let mut sd = StateDict::new();
    let mut offset = 0usize;
    let mut conv: Option<String> = None;
    tinyvit_core::params::for_each_folded(cfg, |name, shape| {
        let n = numel(shape);
        let values = blob[offset..offset + n].to_vec();
        offset += tinyvit_core::params::align_up(n);
        let t = |values: Vec<f32>| Tensor {
            shape: shape.to_vec(),
            values,
        };
        if shape.len() == 4 {
            let prefix = name.trim_end_matches(".weight").to_string();
            sd.insert(format!("{prefix}.c.weight"), t(values));
            conv = Some(prefix);
        } else if let Some(prefix) = conv.take().filter(|_| name.ends_with(".bias")) {
            sd.insert(format!("{prefix}.bn.bias"), t(values));
            sd.insert(format!("{prefix}.bn.weight"), t(vec![1.0; n]));
            sd.insert(format!("{prefix}.bn.running_mean"), t(vec![0.0; n]));
            sd.insert(format!("{prefix}.bn.running_var"), t(vec![1.0 - eps; n]));
        } else {
            sd.insert(name.to_string(), t(values));
        }
    });
    sd
}

/// Checks a checkpoint's recorded config against the weights and the flags: a flag that
/// contradicts it is an error naming both values.
fn check_recorded(
    sd: &StateDict,
    recorded: &ModelConfig,
    arch: Option<&str>,
    num_classes: Option<u32>,
    img_size: Option<u32>,
) -> Result<()> {
    recorded.validate().map_err(|e| anyhow!("{e}"))?;
    if let Some(a) = arch {
        let p = crate::arch::resolve(a)?;
        ensure!(
            same_network(&p, recorded),
            "--arch {a} (widths {:?}, depths {:?}) contradicts the recorded network (widths \
             {:?}, depths {:?})",
            p.embed_dims,
            p.depths,
            recorded.embed_dims,
            recorded.depths
        );
    }
    if let Some(n) = num_classes {
        ensure!(
            n == recorded.num_classes,
            "--num-classes {n} contradicts the recorded {} classes",
            recorded.num_classes
        );
    }
    if let Some(s) = img_size {
        ensure!(
            s == recorded.img_size,
            "--img-size {s} contradicts the recorded input size {}",
            recorded.img_size
        );
    }
    matches(sd, recorded, false)
        .map_err(|e| anyhow!("weights disagree with the recorded config: {e}"))
}

/// Whether two configs describe the same network body (widths, depths, heads, windows).
pub fn same_network(a: &ModelConfig, b: &ModelConfig) -> bool {
    a.embed_dims == b.embed_dims
        && a.depths == b.depths
        && a.num_heads[1..] == b.num_heads[1..]
        && a.window_sizes[1..] == b.window_sizes[1..]
}

/// Writes `.tvb` bytes for a loaded model (every weight finite, see [`check_finite`]; with
/// its input contract when it has one) to a temporary name renamed into place: a failure leaves
/// no file behind.
pub fn export_tvb(model: &Loaded, out: &Path) -> Result<()> {
    if let Some(sd) = &model.state_dict {
        check_finite_state_dict(sd)?;
    }
    check_finite(&model.config, &model.blob)?;
    let bytes = tvb_bytes(&model.config, &model.blob, model.contract.as_ref())?;
    let tmp = out.with_extension("tvb.tmp");
    crate::store::write_atomic(&tmp, out, &bytes)
}

/// Refuses a NaN or infinite value in a state_dict, naming the tensor and the element
/// (tensors checked in name order, so the first one named is always the same).
pub fn check_finite_state_dict(sd: &StateDict) -> Result<()> {
    let mut names: Vec<&String> = sd.keys().collect();
    names.sort();
    for name in names {
        if let Some((i, v)) = sd[name]
            .values
            .iter()
            .enumerate()
            .find(|(_, v)| !v.is_finite())
        {
            bail!("tensor `{name}`: element {i} is {v}; the weights are not finite");
        }
    }
    Ok(())
}

/// Refuses a NaN or infinite value in a folded blob, naming the folded tensor (in
/// [`tinyvit_core::params::for_each_folded`] order) and the element.
pub fn check_finite(cfg: &ModelConfig, blob: &[f32]) -> Result<()> {
    let mut at = 0usize;
    let mut bad: Option<String> = None;
    tinyvit_core::params::for_each_folded(cfg, |name, shape| {
        let n = tinyvit_core::params::numel(shape);
        if bad.is_none() {
            let end = at.saturating_add(n).min(blob.len());
            let start = at.min(end);
            if let Some((i, v)) = blob[start..end]
                .iter()
                .enumerate()
                .find(|(_, v)| !v.is_finite())
            {
                bad = Some(format!(
                    "folded tensor `{name}`: element {i} is {v}; the weights are not finite"
                ));
            }
        }
        at = at.saturating_add(tinyvit_core::params::align_up(n));
    });
    match bad {
        Some(msg) => bail!("{msg}"),
        None => Ok(()),
    }
}

/// The `.tvb` bytes of a folded model and its contract (checked against `cfg`).
pub fn tvb_bytes(cfg: &ModelConfig, blob: &[f32], contract: Option<&Contract>) -> Result<Vec<u8>> {
    let input = contract.map(|c| c.input());
    let with = match (&input, contract) {
        (Some(i), Some(c)) => Some((i, &c.class_names[..])),
        _ => None,
    };
    tvb::write_with_contract(cfg, blob, with).map_err(|e| anyhow!("write .tvb: {e}"))
}

/// Total f32 values of a state_dict's tensors (for messages).
pub fn value_count(sd: &StateDict) -> usize {
    sd.values().map(|t| numel(&t.shape)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tinyvit_core::params::synthetic_state_dict;

    fn synthetic(cfg: &ModelConfig) -> StateDict {
        synthetic_state_dict(cfg, 3)
            .into_iter()
            .filter(|t| t.kind != TensorKind::Counter)
            .map(|t| {
                (
                    t.name,
                    Tensor {
                        shape: t.shape,
                        values: t.values,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn timm_names_map_to_official_ones() {
        let pairs = [
            (
                "patch_embed.conv1.conv.weight",
                "patch_embed.seq.0.c.weight",
            ),
            (
                "patch_embed.conv2.bn.running_var",
                "patch_embed.seq.2.bn.running_var",
            ),
            (
                "stages.0.blocks.1.conv3.conv.weight",
                "layers.0.blocks.1.conv3.c.weight",
            ),
            (
                "stages.1.downsample.conv2.bn.bias",
                "layers.0.downsample.conv2.bn.bias",
            ),
            (
                "stages.3.downsample.conv1.conv.weight",
                "layers.2.downsample.conv1.c.weight",
            ),
            (
                "stages.2.blocks.5.attn.attention_biases",
                "layers.2.blocks.5.attn.attention_biases",
            ),
            (
                "stages.2.blocks.5.local_conv.conv.weight",
                "layers.2.blocks.5.local_conv.c.weight",
            ),
            (
                "stages.1.blocks.0.mlp.fc1.weight",
                "layers.1.blocks.0.mlp.fc1.weight",
            ),
            ("head.norm.weight", "norm_head.weight"),
            ("head.fc.bias", "head.bias"),
        ];
        for (t, o) in pairs {
            assert_eq!(timm_to_official(t), o, "{t}");
        }
    }

    #[test]
    fn presets_are_detected_from_shapes() {
        for name in ["tiny_vit_5m_224", "tiny_vit_21m_384", "tiny_vit_mcu_m4"] {
            let cfg = ModelConfig::preset(name).unwrap().with_num_classes(7);
            let sd = synthetic(&cfg);
            assert_eq!(
                resolve_config(&sd, None, None, None).unwrap(),
                cfg,
                "{name}"
            );
        }
        // 224 weights asked to run at 384: accepted, then the bias tables are resized.
        let sd224 = synthetic(&ModelConfig::tiny_vit_21m_224());
        let cfg = resolve_config(&sd224, Some("tiny_vit_21m_384"), None, None).unwrap();
        assert_eq!(cfg.window_sizes, [12, 12, 24, 12]);
        let mut sd = sd224.clone();
        adapt_attention_biases(&mut sd, &cfg).unwrap();
        assert_eq!(
            sd["layers.2.blocks.0.attn.attention_biases"].shape,
            [12, 576]
        );
        assert!(fold(&sd, &cfg).is_ok());
    }

    #[test]
    fn resizing_a_constant_table_keeps_it_constant() {
        let t = vec![0.25f32; 2 * 49];
        for to in [4, 7, 12, 16] {
            let r = resize_attention_biases(&t, 2, 7, to);
            assert_eq!(r.len(), 2 * to * to);
            assert!(r.iter().all(|v| (v - 0.25).abs() < 1e-6), "{to}");
        }
    }

    /// Non-constant tables, shrunk and grown, against libtorch's antialiased bicubic
    /// interpolation (`F.interpolate(mode="bicubic", antialias=True)`, what timm's resize
    /// calls): an independent computation of the same resize.
    #[test]
    fn resized_tables_equal_libtorch() {
        let mut s = 0x7ab1e_u64;
        for (heads, from, to) in [(2, 7, 12), (3, 7, 4), (1, 5, 5), (4, 14, 7), (2, 2, 9)] {
            let t: Vec<f32> = (0..heads * from * from)
                .map(|_| {
                    (tinyvit_core::params::splitmix64(&mut s) >> 40) as f32 / (1 << 20) as f32 - 8.0
                })
                .collect();
            let got = resize_attention_biases(&t, heads, from, to);
            let (h, f, o) = (heads as i64, from as i64, to as i64);
            let want: Vec<f32> = Vec::try_from(
                tch::Tensor::from_slice(&t)
                    .view([1, h, f, f])
                    .internal_upsample_bicubic2d_aa([o, o], false, None, None)
                    .view([-1]),
            )
            .unwrap();
            assert_eq!(got.len(), want.len());
            let spread = t.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (k, (a, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (a - w).abs() <= 1e-5 * spread,
                    "{heads}x{from}->{to} entry {k}: {a} vs {w}"
                );
            }
        }
    }

    #[test]
    fn a_wrong_arch_is_an_error_naming_the_tensor() {
        let sd = synthetic(&ModelConfig::tiny_vit_5m_224());
        let e = resolve_config(&sd, Some("tiny_vit_11m_224"), None, None).unwrap_err();
        assert!(format!("{e:#}").contains("has shape"), "{e:#}");
    }

    #[test]
    fn custom_architectures_need_an_input_size() {
        let mut cfg = ModelConfig::tiny_vit_mcu_m4().with_img_size(40);
        cfg.depths = [1, 3, 1, 2];
        cfg.mlp_ratio = 2;
        let sd = synthetic(&cfg);
        let e = resolve_config(&sd, None, None, None).unwrap_err();
        assert!(format!("{e}").contains("--img-size"), "{e}");
        assert_eq!(resolve_config(&sd, None, None, Some(40)).unwrap(), cfg);
        assert!(resolve_config(&sd, None, Some(9), Some(40)).is_err());
    }
}
