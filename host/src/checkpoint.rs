//! Checkpoints: one safetensors file holding the weights under their official names, optionally
//! the trainer's extra tensors (optimizer moments), and the model config and training state as
//! metadata. The one reader of safetensors model files: the trainer (`--init`, `--resume`,
//! teachers), `tinyvit export` and the importer ([`crate::import`]) all read through
//! [`read_tensors`], which also takes timm names ([`Naming`]).
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
//!   moments, only in training checkpoints (`last.safetensors`; written by
//!   `crate::train::state`);
//! - metadata `tinyvit.format` = `tinyvit-checkpoint/1`, `tinyvit.config` = the
//!   [`ModelConfig`] as JSON, `tinyvit.input` = the input [`Contract`] (size, channels,
//!   mean, std, interpolation, crop fraction, class names), and in training checkpoints
//!   `tinyvit.state` = the trainer's state as JSON (`crate::train::state::TrainState`: step,
//!   data position, loss scaler, the run's seed).
//!
//! Files are written to `NAME.tmp`, fsynced, then renamed over `NAME`
//! ([`crate::store::write_atomic`]): a kill never leaves a half-written checkpoint under the
//! real name.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use safetensors::tensor::{Dtype, TensorView};
use tch::{nn, Device, Kind, Tensor};
use tinyvit_core::config::ModelConfig;

use crate::import::safetensors_file::{self, Values};
use crate::model::TinyVit;
use crate::store::write_atomic;

/// Value of the `tinyvit.format` metadata entry.
pub const FORMAT: &str = "tinyvit-checkpoint/1";

/// How inputs were preprocessed for this model and what its outputs are called (metadata
/// `tinyvit.input`, the core's [`Contract`] as JSON): the evaluation and deployment side
/// preprocess the same way. Older files hold only `mean` and `std`; the rest then comes from the
/// config ([`Contract::resolve`]).
pub use tinyvit_core::contract::Contract;

/// What a checkpoint file holds, read back.
#[derive(Debug)]
pub struct Loaded {
    pub config: ModelConfig,
    /// The input contract (resolved against `config`), when the file records one.
    pub input: Option<Contract>,
    /// The trainer's state (metadata `tinyvit.state`, JSON), in training checkpoints.
    pub state: Option<String>,
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

/// A decoded tensor as a tch tensor of its shape.
fn to_tensor(r: safetensors_file::RawTensor) -> Tensor {
    let shape: Vec<i64> = r.shape.iter().map(|&d| d as i64).collect();
    let t = match r.values {
        Values::F32(v) => Tensor::from_slice(&v),
        Values::I64(v) => Tensor::from_slice(&v),
    };
    t.view(shape.as_slice())
}

/// The trainer's part of a training checkpoint: extra tensors (names outside the model's,
/// e.g. `optimizer.m.<name>`) and its state as JSON.
pub struct Training<'a> {
    pub tensors: Vec<(String, &'a Tensor)>,
    pub state_json: String,
}

/// Saves the weights of `vs` (and the trainer's part when given) to `path`.
pub fn save(
    path: &Path,
    vs: &nn::VarStore,
    config: &ModelConfig,
    input: Option<&Contract>,
    training: Option<Training<'_>>,
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
        // Recorded complete: size and channels filled from the config, every field checked.
        let c = i
            .clone()
            .resolve(config)
            .map_err(|e| anyhow::anyhow!("checkpoint {}: {e}", path.display()))?;
        meta.insert("tinyvit.input".to_string(), serde_json::to_string(&c)?);
    }
    if let Some(t) = training {
        for (name, tensor) in t.tensors {
            entries.push((name, tensor_bytes(tensor)?));
        }
        meta.insert("tinyvit.state".to_string(), t.state_json);
    }
    let views: Vec<(String, TensorView<'_>)> = entries
        .iter()
        .map(|(n, (d, s, b))| Ok((n.clone(), TensorView::new(*d, s.clone(), b)?)))
        .collect::<Result<_>>()?;
    let bytes = safetensors::tensor::serialize(views, &Some(meta))
        .with_context(|| format!("serialise checkpoint {}", path.display()))?;
    let bytes = canonical_header(bytes)
        .with_context(|| format!("serialise checkpoint {}", path.display()))?;
    write_atomic(&path.with_extension("safetensors.tmp"), path, &bytes)
}

/// Rewrites the JSON header of a serialised safetensors file with every object's keys in
/// sorted order (the serialiser writes the metadata map in hash order, which differs from run
/// to run), so that equal checkpoints are equal files byte for byte. The compact JSON of the
/// same entries has the same length in any key order: the header keeps its size and padding,
/// and the tensor data after it is untouched.
fn canonical_header(mut bytes: Vec<u8>) -> Result<Vec<u8>> {
    ensure!(
        bytes.len() >= 8,
        "safetensors file shorter than its header length"
    );
    let mut n = [0u8; 8];
    n.copy_from_slice(&bytes[..8]);
    let n = usize::try_from(u64::from_le_bytes(n))?;
    let header = bytes
        .get(8..8 + n)
        .context("safetensors header past the end")?;
    let text = std::str::from_utf8(header)?.trim_end_matches(' ');
    let value: serde_json::Value = serde_json::from_str(text)?;
    let sorted = serde_json::to_string(&sort_keys(value))?;
    ensure!(
        sorted.len() == text.len(),
        "safetensors header changed length when its keys were sorted"
    );
    bytes[8..8 + sorted.len()].copy_from_slice(sorted.as_bytes());
    Ok(bytes)
}

/// `v` with the keys of every object in sorted order (inserted in order, so the result is
/// sorted whether or not serde_json keeps insertion order).
fn sort_keys(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(m) => {
            let mut entries: Vec<(String, Value)> = m.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, sort_keys(v)))
                    .collect(),
            )
        }
        Value::Array(a) => Value::Array(a.into_iter().map(sort_keys).collect()),
        other => other,
    }
}

/// Reads a checkpoint: ours, or any safetensors file with official or timm TinyViT names (then
/// `fallback` gives the config).
pub fn load(path: &Path, fallback: Option<&ModelConfig>) -> Result<Loaded> {
    let (md, tensors) = read_tensors(path)?;
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
    let input = contract_of(&md, &config)
        .with_context(|| format!("checkpoint {}: metadata `tinyvit.input`", path.display()))?;
    Ok(Loaded {
        config,
        input,
        state: md.get("tinyvit.state").cloned(),
        tensors,
    })
}

/// The input contract in checkpoint metadata (`tinyvit.input`), resolved against `config`.
pub fn contract_of(md: &HashMap<String, String>, config: &ModelConfig) -> Result<Option<Contract>> {
    let Some(js) = md.get("tinyvit.input") else {
        return Ok(None);
    };
    let c: Contract = serde_json::from_str(js)?;
    Ok(Some(c.resolve(config).map_err(|e| anyhow::anyhow!("{e}"))?))
}

/// Every tensor of a safetensors file on the CPU (f32, or i64 for counters), under official
/// TinyViT names (timm names are renamed by [`timm_to_official`]; the trainer's own
/// `optimizer.*` tensors keep theirs), with the file's metadata.
#[allow(clippy::type_complexity)]
pub fn read_tensors(path: &Path) -> Result<(HashMap<String, String>, HashMap<String, Tensor>)> {
    let bytes = fs::read(path).with_context(|| format!("read checkpoint {}", path.display()))?;
    if let Ok(kind) = tinyvit_core::tvb::kind(&bytes) {
        let what = match kind {
            tinyvit_core::tvb::Kind::F32 => "an exported f32 model (BatchNorm folded)",
            tinyvit_core::tvb::Kind::Int8 => "an int8 model",
        };
        bail!(
            "checkpoint {}: this is a .tvb file, {what}, not a training checkpoint: `tinyvit \
             infer` and `eval` run it; this command needs the trained weights (a run's \
             model.safetensors, or a .pth)",
            path.display()
        );
    }
    let (md, raw) = crate::import::safetensors_file::parse(&bytes)
        .with_context(|| format!("checkpoint {}", path.display()))?;
    let naming = detect_naming(
        raw.iter()
            .map(|r| r.name.as_str())
            .filter(|n| !n.starts_with("optimizer.")),
    )
    .with_context(|| format!("checkpoint {}", path.display()))?;
    let mut tensors = HashMap::new();
    for r in raw {
        let name = match naming {
            Naming::Timm if !r.name.starts_with("optimizer.") => timm_to_official(&r.name),
            _ => r.name.clone(),
        };
        tensors.insert(name, to_tensor(r));
    }
    Ok((md, tensors))
}

/// Builds a TinyViT and loads a checkpoint into it (config from the checkpoint's metadata, else
/// `fallback`).
pub fn load_model(
    path: &Path,
    fallback: Option<&ModelConfig>,
    device: Device,
) -> Result<(nn::VarStore, TinyVit)> {
    let l = load(path, fallback)?;
    let vs = nn::VarStore::new(device);
    let model = TinyVit::new(&vs.root(), &l.config)?;
    copy_into(&vs, &l.tensors, &path.display().to_string())?;
    Ok((vs, model))
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

/// Which naming scheme a checkpoint uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Naming {
    Official,
    Timm,
}

/// Detects the naming scheme from the keys.
pub fn detect_naming<'a>(mut keys: impl Iterator<Item = &'a str>) -> Result<Naming> {
    let mut official = false;
    let mut timm = false;
    for k in keys.by_ref() {
        if k.starts_with("layers.") || k.starts_with("patch_embed.seq.") || k == "norm_head.weight"
        {
            official = true;
        }
        if k.starts_with("stages.") || k.starts_with("patch_embed.conv1.") || k == "head.fc.weight"
        {
            timm = true;
        }
    }
    match (official, timm) {
        (true, false) => Ok(Naming::Official),
        (false, true) => Ok(Naming::Timm),
        (true, true) => bail!("keys mix official (`layers.*`) and timm (`stages.*`) names"),
        (false, false) => bail!("no TinyViT keys found (expected `layers.*` or `stages.*`)"),
    }
}

/// The official name of a timm key (the inverse of the renaming in timm's
/// `checkpoint_filter_fn`, `timm/models/tiny_vit.py`).
pub fn timm_to_official(name: &str) -> String {
    let mut n = name.to_string();
    if let Some(rest) = n.strip_prefix("patch_embed.conv1.") {
        n = format!("patch_embed.seq.0.{rest}");
    } else if let Some(rest) = n.strip_prefix("patch_embed.conv2.") {
        n = format!("patch_embed.seq.2.{rest}");
    } else if let Some(rest) = n.strip_prefix("stages.") {
        let (idx, tail) = rest.split_once('.').unwrap_or((rest, ""));
        if let (Ok(i), Some(ds)) = (idx.parse::<usize>(), tail.strip_prefix("downsample.")) {
            n = format!("layers.{}.downsample.{ds}", i.saturating_sub(1));
        } else {
            n = format!("layers.{idx}.{tail}");
        }
    } else if let Some(rest) = n.strip_prefix("head.norm.") {
        n = format!("norm_head.{rest}");
    } else if let Some(rest) = n.strip_prefix("head.fc.") {
        n = format!("head.{rest}");
    }
    if let Some(stem) = n.strip_suffix(".conv.weight") {
        n = format!("{stem}.c.weight");
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("tinyvit-ckpt-{name}-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Weights, input spec, extra tensors and state JSON come back as written; the file is
    /// renamed into place (no `.tmp` left); another class count is refused by name.
    #[test]
    fn round_trip_with_training_part() {
        let dir = tmp("rt");
        let cfg = ModelConfig::tiny_vit_5m_224()
            .with_img_size(32)
            .with_num_classes(7);
        let vs = nn::VarStore::new(Device::Cpu);
        let _m = TinyVit::new(&vs.root(), &cfg).unwrap();
        let path = dir.join("last.safetensors");
        let input = Contract {
            mean: [0.5; 3],
            std: [0.25; 3],
            class_names: (0..7).map(|i| format!("k{i}")).collect(),
            ..Contract::default()
        };
        let extra = Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
        let training = Training {
            tensors: vec![("optimizer.m.head.bias".into(), &extra)],
            state_json: "{\"step\":41}".into(),
        };
        save(&path, &vs, &cfg, Some(&input), Some(training)).unwrap();
        assert!(!dir.join("last.safetensors.tmp").exists());
        let l = load(&path, None).unwrap();
        assert_eq!(l.config, cfg);
        // Recorded complete: the size and channels come from the config.
        let want = Contract {
            size: 32,
            channels: 3,
            ..input.clone()
        };
        assert_eq!(l.input, Some(want));
        // A file of the former format (mean and std only) still loads, completed.
        let mut md = HashMap::new();
        md.insert(
            "tinyvit.input".to_string(),
            r#"{"mean":[0.5,0.5,0.5],"std":[0.5,0.5,0.5]}"#.to_string(),
        );
        let old = contract_of(&md, &cfg).unwrap().unwrap();
        assert_eq!((old.size, old.channels, old.std), (32, 3, [0.5; 3]));
        assert!(old.class_names.is_empty());
        assert_eq!(l.state.as_deref(), Some("{\"step\":41}"));
        assert!(l.tensors["optimizer.m.head.bias"].equal(&extra));
        assert_eq!(
            l.tensors["layers.0.blocks.0.conv1.bn.num_batches_tracked"].kind(),
            Kind::Int64
        );
        let vs2 = nn::VarStore::new(Device::Cpu);
        let _m2 = TinyVit::new(&vs2.root(), &cfg).unwrap();
        copy_into(&vs2, &l.tensors, "test").unwrap();
        for (n, t) in vs.variables() {
            assert!(t.equal(&vs2.variables()[&n]), "{n}");
        }
        let vs3 = nn::VarStore::new(Device::Cpu);
        let _m3 = TinyVit::new(&vs3.root(), &cfg.with_num_classes(3)).unwrap();
        let err = copy_into(&vs3, &l.tensors, "x.safetensors").unwrap_err();
        assert!(format!("{err:#}").contains("head"), "{err:#}");
        fs::remove_dir_all(&dir).ok();
    }

    /// Equal checkpoints are equal files: the header's keys (metadata included) come out
    /// sorted, whatever order the serialiser's hash map gave them.
    #[test]
    fn checkpoints_are_byte_reproducible() {
        let dir = tmp("repro");
        let cfg = ModelConfig::tiny_vit_5m_224()
            .with_img_size(32)
            .with_num_classes(5);
        tch::manual_seed(3);
        let vs = nn::VarStore::new(Device::Cpu);
        let _m = TinyVit::new(&vs.root(), &cfg).unwrap();
        let input = Contract::from_parts(
            &tinyvit_core::contract::InputContract::for_model(&cfg, [0.5; 3], [0.5; 3]),
            tinyvit_core::contract::ClassNames::default(),
        );
        let extra = Tensor::from_slice(&[0.5f32, -1.0]);
        let mut first: Option<Vec<u8>> = None;
        for i in 0..12 {
            let path = dir.join(format!("c{i}.safetensors"));
            let training = Training {
                tensors: vec![("optimizer.v.head.bias".into(), &extra)],
                state_json: "{\"step\":9}".into(),
            };
            save(&path, &vs, &cfg, Some(&input), Some(training)).unwrap();
            let bytes = fs::read(&path).unwrap();
            let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
            let header = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
            let keys: Vec<usize> = [
                "tinyvit.config",
                "tinyvit.format",
                "tinyvit.input",
                "tinyvit.state",
            ]
            .iter()
            .map(|k| header.find(&format!("\"{k}\"")).unwrap())
            .collect();
            assert!(
                keys.windows(2).all(|w| w[0] < w[1]),
                "metadata not sorted: {header}"
            );
            match &first {
                None => first = Some(bytes),
                Some(f) => assert!(*f == bytes, "save {i} differs from save 0"),
            }
            // The file still reads back as it was written.
            let l = load(&path, None).unwrap();
            assert_eq!(l.state.as_deref(), Some("{\"step\":9}"));
        }
        fs::remove_dir_all(&dir).ok();
    }

    /// A safetensors file with timm names loads into the model: the one reader renames.
    #[test]
    fn timm_names_are_read() {
        let dir = tmp("timm");
        let cfg = ModelConfig::tiny_vit_mcu_m4();
        let vs = nn::VarStore::new(Device::Cpu);
        let _m = TinyVit::new(&vs.root(), &cfg).unwrap();
        let official = vs.variables();
        let timm: Vec<(String, RawTensor)> = official
            .iter()
            .map(|(n, t)| (official_to_timm(n), tensor_bytes(t).unwrap()))
            .collect();
        let views: Vec<(String, TensorView<'_>)> = timm
            .iter()
            .map(|(n, (d, s, b))| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        assert!(views.iter().any(|(n, _)| n.starts_with("stages.")));
        let path = dir.join("timm.safetensors");
        safetensors::tensor::serialize_to_file(views, &None, &path).unwrap();
        let l = load(&path, Some(&cfg)).unwrap();
        let vs2 = nn::VarStore::new(Device::Cpu);
        let _m2 = TinyVit::new(&vs2.root(), &cfg).unwrap();
        copy_into(&vs2, &l.tensors, "timm").unwrap();
        for (n, t) in &official {
            assert!(t.equal(&vs2.variables()[n]), "{n}");
        }
        fs::remove_dir_all(&dir).ok();
    }

    /// The timm name of an official one (the inverse of [`timm_to_official`] on the names a
    /// TinyViT has), written here independently for the test.
    fn official_to_timm(name: &str) -> String {
        let mut n = name.to_string();
        if let Some(stem) = n.strip_suffix(".c.weight") {
            n = format!("{stem}.conv.weight");
        }
        if let Some(rest) = n.strip_prefix("patch_embed.seq.0.") {
            return format!("patch_embed.conv1.{rest}");
        }
        if let Some(rest) = n.strip_prefix("patch_embed.seq.2.") {
            return format!("patch_embed.conv2.{rest}");
        }
        if let Some(rest) = n.strip_prefix("norm_head.") {
            return format!("head.norm.{rest}");
        }
        if let Some(rest) = n.strip_prefix("head.") {
            return format!("head.fc.{rest}");
        }
        if let Some(rest) = n.strip_prefix("layers.") {
            let (idx, tail) = rest.split_once('.').unwrap();
            let i: usize = idx.parse().unwrap();
            if let Some(ds) = tail.strip_prefix("downsample.") {
                return format!("stages.{}.downsample.{ds}", i + 1);
            }
            return format!("stages.{i}.{tail}");
        }
        n
    }
}
