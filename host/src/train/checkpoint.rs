//! Checkpoints: one safetensors file holding the weights under their official names, optionally
//! the optimizer moments, and the model config and training state as metadata.
//!
//! # Format
//!
//! A standard safetensors file (readable by `safetensors.torch.load_file`, timm after the
//! documented rename, or `tch::nn::VarStore::load`):
//!
//! - tensors `patch_embed.seq.0.c.weight`, ... : every model variable, f32, with the official
//!   state_dict names and shapes (BN `num_batches_tracked` as int64), so
//!   `model.load_state_dict(load_file(path), strict=False)` works on the official TinyViT;
//! - tensors `optimizer.m.<name>` and `optimizer.v.<name>` (f32): AdamW first and second
//!   moments, only in training checkpoints (`last.safetensors`);
//! - metadata `tinyvit.format` = `tinyvit-checkpoint/1`, `tinyvit.config` = the
//!   [`ModelConfig`] as JSON, and in training checkpoints `tinyvit.state` = [`TrainState`] as
//!   JSON (step, data position, loss scaler, the run's seed).
//!
//! Every random stream of training (shuffling, augmentation, mixup, DropPath) is derived from
//! the run seed and the (epoch, step) position, so the state above is the whole RNG state.
//! Files are written to `NAME.tmp`, fsynced, then renamed over `NAME`: a kill never leaves a
//! half-written checkpoint under the real name.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};
use tinyvit_core::config::ModelConfig;

use super::optim::{AdamW, LossScaler};

/// Value of the `tinyvit.format` metadata entry.
pub const FORMAT: &str = "tinyvit-checkpoint/1";

/// Where a training run stands; enough to continue it exactly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Epoch the next micro-batch belongs to (0-based).
    pub epoch: u64,
    /// Index of the next micro-batch within that epoch.
    pub batch: u64,
    /// Optimizer updates applied so far.
    pub step: u64,
    /// The run seed (all random streams derive from it and the position).
    pub seed: u64,
    /// fp16 loss scaler.
    pub scaler: LossScaler,
    /// Wall seconds spent training so far (summed over resumed segments).
    pub train_seconds: f64,
    /// Images seen so far.
    pub images: u64,
}

/// How inputs were preprocessed for this model (metadata `tinyvit.input`): the evaluation
/// and deployment side normalise the same way.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct InputSpec {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Default for InputSpec {
    fn default() -> Self {
        InputSpec {
            mean: [0.0; 3],
            std: [1.0; 3],
        }
    }
}

/// What a checkpoint file holds, read back.
#[derive(Debug)]
pub struct Loaded {
    pub config: ModelConfig,
    pub input: Option<InputSpec>,
    pub state: Option<TrainState>,
    /// Every tensor in the file, on the CPU.
    pub tensors: HashMap<String, Tensor>,
}

/// A tensor as safetensors stores it: dtype, shape, little-endian bytes.
type RawTensor = (Dtype, Vec<usize>, Vec<u8>);

fn tensor_bytes(t: &Tensor) -> Result<RawTensor> {
    let t = t.detach().to_device(Device::Cpu).contiguous();
    let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
    let flat = t.view([-1]);
    Ok(match t.kind() {
        Kind::Int64 => {
            let v: Vec<i64> = Vec::try_from(&flat)?;
            (
                Dtype::I64,
                shape,
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            )
        }
        _ => {
            let v: Vec<f32> = Vec::try_from(&flat.to_kind(Kind::Float))?;
            (
                Dtype::F32,
                shape,
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            )
        }
    })
}

fn view_tensor(name: &str, view: &TensorView<'_>) -> Result<Tensor> {
    let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
    let data = view.data();
    let t = match view.dtype() {
        Dtype::F32 => {
            let v: Vec<f32> = data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            Tensor::from_slice(&v)
        }
        Dtype::F16 => {
            let v: Vec<f32> = data
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect();
            Tensor::from_slice(&v)
        }
        Dtype::I64 => {
            let v: Vec<i64> = data
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect();
            Tensor::from_slice(&v)
        }
        other => bail!("tensor `{name}`: dtype {other:?} is not supported (f32, f16, i64)"),
    };
    Ok(t.view(shape.as_slice()))
}

/// Writes `path` atomically (temp file, fsync, rename).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("safetensors.tmp");
    {
        let mut f = fs::File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?;
        f.write_all(bytes)
            .with_context(|| format!("write {}", tmp.display()))?;
        f.sync_all()
            .with_context(|| format!("fsync {}", tmp.display()))?;
    }
    fs::rename(&tmp, path)
        .with_context(|| format!("rename {} -> {}", tmp.display(), path.display()))?;
    Ok(())
}

/// Saves the weights of `vs` (and the optimizer moments and state when given) to `path`.
pub fn save(
    path: &Path,
    vs: &nn::VarStore,
    config: &ModelConfig,
    input: Option<&InputSpec>,
    optim: Option<(&AdamW, &TrainState)>,
) -> Result<()> {
    let mut entries: Vec<(String, RawTensor)> = Vec::new();
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, t) in &vars {
        entries.push((name.clone(), tensor_bytes(t)?));
    }
    let mut meta = HashMap::new();
    meta.insert("tinyvit.format".to_string(), FORMAT.to_string());
    meta.insert("tinyvit.config".to_string(), serde_json::to_string(config)?);
    if let Some(i) = input {
        meta.insert("tinyvit.input".to_string(), serde_json::to_string(i)?);
    }
    if let Some((opt, state)) = optim {
        for p in &opt.params {
            entries.push((format!("optimizer.m.{}", p.name), tensor_bytes(&p.m)?));
            entries.push((format!("optimizer.v.{}", p.name), tensor_bytes(&p.v)?));
        }
        meta.insert("tinyvit.state".to_string(), serde_json::to_string(state)?);
    }
    let views: Vec<(String, TensorView<'_>)> = entries
        .iter()
        .map(|(n, (d, s, b))| Ok((n.clone(), TensorView::new(*d, s.clone(), b)?)))
        .collect::<Result<_>>()?;
    let bytes = safetensors::tensor::serialize(views, &Some(meta))
        .with_context(|| format!("serialise checkpoint {}", path.display()))?;
    write_atomic(path, &bytes)
}

/// Reads a checkpoint (ours, or any safetensors file with official TinyViT names; then
/// `fallback` gives the config).
pub fn load(path: &Path, fallback: Option<&ModelConfig>) -> Result<Loaded> {
    let bytes = fs::read(path).with_context(|| format!("read checkpoint {}", path.display()))?;
    let (_, meta) = SafeTensors::read_metadata(&bytes)
        .with_context(|| format!("checkpoint {}: not a safetensors file", path.display()))?;
    let md = meta.metadata().clone().unwrap_or_default();
    let config = match md.get("tinyvit.config") {
        Some(js) => serde_json::from_str(js)
            .with_context(|| format!("checkpoint {}: metadata `tinyvit.config`", path.display()))?,
        None => *fallback.with_context(|| {
            format!(
                "checkpoint {} has no `tinyvit.config` metadata; pass --arch",
                path.display()
            )
        })?,
    };
    let state =
        match md.get("tinyvit.state") {
            Some(js) => Some(serde_json::from_str(js).with_context(|| {
                format!("checkpoint {}: metadata `tinyvit.state`", path.display())
            })?),
            None => None,
        };
    let input =
        match md.get("tinyvit.input") {
            Some(js) => Some(serde_json::from_str(js).with_context(|| {
                format!("checkpoint {}: metadata `tinyvit.input`", path.display())
            })?),
            None => None,
        };
    let st = SafeTensors::deserialize(&bytes)
        .with_context(|| format!("checkpoint {}: tensor table", path.display()))?;
    let mut tensors = HashMap::new();
    for (name, view) in st.tensors() {
        let t =
            view_tensor(&name, &view).with_context(|| format!("checkpoint {}", path.display()))?;
        tensors.insert(name, t);
    }
    Ok(Loaded {
        config,
        input,
        state,
        tensors,
    })
}

/// Copies every variable of `vs` from `tensors`; a missing name or a shape mismatch is an error
/// naming `what` (the file) and the variable.
pub fn copy_into(vs: &nn::VarStore, tensors: &HashMap<String, Tensor>, what: &str) -> Result<()> {
    tch::no_grad(|| -> Result<()> {
        for (name, var) in vs.variables() {
            let src = tensors
                .get(&name)
                .with_context(|| format!("{what}: tensor `{name}` is missing"))?;
            ensure!(
                src.size() == var.size(),
                "{what}: tensor `{name}` has shape {:?}, the model wants {:?}",
                src.size(),
                var.size()
            );
            var.shallow_clone()
                .copy_(&src.to_kind(var.kind()).to_device(var.device()));
        }
        Ok(())
    })
}

/// Restores optimizer moments saved by [`save`].
pub fn restore_optimizer(
    opt: &mut AdamW,
    tensors: &HashMap<String, Tensor>,
    what: &str,
) -> Result<()> {
    tch::no_grad(|| -> Result<()> {
        for p in &mut opt.params {
            for (prefix, dst) in [("optimizer.m.", &mut p.m), ("optimizer.v.", &mut p.v)] {
                let key = format!("{prefix}{}", p.name);
                let src = tensors
                    .get(&key)
                    .with_context(|| format!("{what}: optimizer tensor `{key}` is missing"))?;
                ensure!(
                    src.size() == dst.size(),
                    "{what}: `{key}` has shape {:?}, wanted {:?}",
                    src.size(),
                    dst.size()
                );
                dst.copy_(&src.to_device(dst.device()));
            }
        }
        Ok(())
    })
}

/// Resizes a relative-position bias table `[heads, ws*ws]` to another window size by
/// antialiased bicubic interpolation over the `ws x ws` grid, as timm does when carrying
/// 224 weights to 384/512.
///
/// # Shapes
/// `[heads, from*from] -> [heads, to*to]`
pub fn resize_attention_biases(t: &Tensor, to: i64) -> Result<Tensor> {
    let (h, n) = t
        .size2()
        .context("attention_biases must be [heads, ws*ws]")?;
    let from = (n as f64).sqrt().round() as i64;
    ensure!(
        from * from == n,
        "attention_biases of {n} entries is not a square window"
    );
    if from == to {
        return Ok(t.shallow_clone());
    }
    let grid = t.to_kind(Kind::Float).view([1, h, from, from]);
    let out = grid.internal_upsample_bicubic2d_aa([to, to], false, None, None);
    Ok(out.view([h, to * to]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TinyVit;

    #[test]
    fn round_trip_with_state_and_names() {
        let dir = std::env::temp_dir().join(format!("tinyvit-ckpt-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let cfg = ModelConfig::tiny_vit_5m_224()
            .with_img_size(32)
            .with_num_classes(7);
        let vs = nn::VarStore::new(Device::Cpu);
        let _m = TinyVit::new(&vs.root(), &cfg).unwrap();
        let entries = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .map(|(n, t)| (n, t, true, 1.0))
            .collect();
        let mut opt = AdamW::new(entries, 0.05);
        tch::no_grad(|| {
            for p in &mut opt.params {
                let _ = p.m.g_add_scalar_(0.25);
            }
        });
        let state = TrainState {
            epoch: 3,
            batch: 5,
            step: 41,
            seed: 9,
            scaler: LossScaler::new(false),
            train_seconds: 1.5,
            images: 100,
        };
        let path = dir.join("last.safetensors");
        let input = InputSpec {
            mean: [0.5; 3],
            std: [0.25; 3],
        };
        save(&path, &vs, &cfg, Some(&input), Some((&opt, &state))).unwrap();
        let l = load(&path, None).unwrap();
        assert_eq!(l.config, cfg);
        assert_eq!(l.input, Some(input));
        assert_eq!(l.state.as_ref(), Some(&state));
        assert!(l.tensors.contains_key("patch_embed.seq.0.c.weight"));
        assert_eq!(
            l.tensors["layers.1.blocks.0.attn.qkv.weight"].kind(),
            Kind::Float
        );
        assert!(l.tensors.contains_key("optimizer.v.head.weight"));
        assert_eq!(
            l.tensors["layers.0.blocks.0.conv1.bn.num_batches_tracked"].kind(),
            Kind::Int64
        );
        // restore into a fresh model: bit-identical
        let vs2 = nn::VarStore::new(Device::Cpu);
        let _m2 = TinyVit::new(&vs2.root(), &cfg).unwrap();
        copy_into(&vs2, &l.tensors, "test").unwrap();
        for (n, t) in vs.variables() {
            assert!(t.equal(&vs2.variables()[&n]), "{n}");
        }
        let mut opt2 = AdamW::new(
            vs2.variables()
                .into_iter()
                .filter(|(_, t)| t.requires_grad())
                .map(|(n, t)| (n, t, true, 1.0))
                .collect(),
            0.05,
        );
        restore_optimizer(&mut opt2, &l.tensors, "test").unwrap();
        assert!(opt2.params[0].m.equal(&opt.params[0].m));
        // another class count is refused with the name
        let vs3 = nn::VarStore::new(Device::Cpu);
        let _m3 = TinyVit::new(&vs3.root(), &cfg.with_num_classes(3)).unwrap();
        let err = copy_into(&vs3, &l.tensors, "x.safetensors").unwrap_err();
        assert!(format!("{err:#}").contains("head"), "{err:#}");
        assert!(!dir.join("last.safetensors.tmp").exists());
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn bias_resize_keeps_constant_tables() {
        let t = Tensor::full([2, 49], 0.5, (Kind::Float, Device::Cpu));
        let r = resize_attention_biases(&t, 12).unwrap();
        assert_eq!(r.size(), [2, 144]);
        assert!((r - 0.5).abs().max().double_value(&[]) < 1e-5);
    }
}
