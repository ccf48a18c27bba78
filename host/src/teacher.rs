//! Teachers: a frozen model that turns a batch of normalised images into class scores, for
//! the teacher pass (`tinyvit save-logits`) and for online distillation (`tinyvit train
//! --teacher`).
//!
//! One trait ([`Teacher`]), one table of file kinds ([`load`]: `.safetensors` is a TinyViT
//! checkpoint, `.pt`, `.pth`, `.jit`, `.ts` and `.torchscript` are TorchScript modules taking
//! the student's input) and one normalisation of the output ([`probabilities`]: the f32
//! softmax of the logits). The store pass runs [`Teacher::probs`] (fp16 autocast on CUDA, as
//! the reference's teacher pass); the trainer runs [`Teacher::logits`] inside its own autocast
//! region.

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use tch::{nn, Device, Kind, Tensor};
use tinyvit_core::config::ModelConfig;

use crate::checkpoint;
use crate::data::sha256_file;
use crate::model::{Mode, TinyVit};

/// What identifies a teacher in a store's manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// `tinyvit` or `torchscript`.
    pub kind: String,
    /// File name (no folder).
    pub file: String,
    /// SHA-256 of the file, lower-case hex.
    pub sha256: String,
}

/// A frozen model: eval mode, no gradient.
pub trait Teacher {
    /// Logits `[B, classes]` on [`device`](Self::device), in eval mode, without gradient.
    ///
    /// # Shapes
    /// `batch`: `[B, C, H, W]` f32 normalised, on any device.
    fn logits(&self, batch: &Tensor) -> Result<Tensor>;
    /// Where the teacher runs.
    fn device(&self) -> Device;
    /// Kind, file name and SHA-256 of the teacher (for the manifest).
    fn identity(&self) -> Identity;
    /// The architecture, when the file says (a TinyViT checkpoint does; a TorchScript module
    /// does not). Input size and channels default to it; the trainer checks it against the
    /// student.
    fn config(&self) -> Option<&ModelConfig> {
        None
    }
    /// Class probabilities `[B, classes]` f32: [`logits`](Self::logits) under fp16 autocast
    /// on CUDA, then [`probabilities`].
    fn probs(&self, batch: &Tensor) -> Result<Tensor> {
        let cuda = self.device().is_cuda();
        let logits = tch::autocast(cuda, || self.logits(batch))?;
        Ok(probabilities(&logits))
    }
}

/// The one normalisation of teacher outputs: softmax over classes in f32.
///
/// # Shapes
/// `[B, classes] -> [B, classes]`
pub fn probabilities(logits: &Tensor) -> Tensor {
    tch::no_grad(|| logits.to_kind(Kind::Float).softmax(-1, Kind::Float))
}

/// What kind of teacher a file is, from its extension (the one table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// A TinyViT checkpoint (`.safetensors`, config in the metadata).
    TinyVit,
    /// A TorchScript module (`torch.jit.script` / `torch.jit.trace` output).
    TorchScript,
}

/// Extensions of TorchScript teachers.
pub const TORCHSCRIPT_EXTENSIONS: [&str; 5] = ["pt", "pth", "jit", "ts", "torchscript"];

/// The kind of teacher file `path` is; an unknown extension is an error naming the known ones.
pub fn file_kind(path: &Path) -> Result<FileKind> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    if ext == "safetensors" {
        return Ok(FileKind::TinyVit);
    }
    if TORCHSCRIPT_EXTENSIONS.contains(&ext.as_str()) {
        return Ok(FileKind::TorchScript);
    }
    bail!(
        "{}: unknown teacher kind (expected a TinyViT checkpoint .safetensors or a TorchScript \
         file .{})",
        path.display(),
        TORCHSCRIPT_EXTENSIONS.join(", .")
    )
}

/// Loads the teacher in `path` onto `device` ([`file_kind`] decides which kind).
pub fn load(path: &Path, device: Device) -> Result<Box<dyn Teacher>> {
    Ok(match file_kind(path)? {
        FileKind::TinyVit => Box::new(TinyVitTeacher::load(path, device)?),
        FileKind::TorchScript => Box::new(TorchScriptTeacher::load(path, device)?),
    })
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A TinyViT checkpoint as a teacher (config from its metadata).
pub struct TinyVitTeacher {
    _vs: nn::VarStore,
    model: TinyVit,
    device: Device,
    file: String,
    sha256: String,
}

impl TinyVitTeacher {
    /// Loads a TinyViT checkpoint onto `device`.
    pub fn load(path: &Path, device: Device) -> Result<Self> {
        let (vs, model) = checkpoint::load_model(path, None, device)?;
        Ok(Self {
            _vs: vs,
            model,
            device,
            file: file_name(path),
            sha256: sha256_file(path)?,
        })
    }
}

impl Teacher for TinyVitTeacher {
    fn logits(&self, batch: &Tensor) -> Result<Tensor> {
        let x = batch.to_device(self.device);
        let cfg = self.model.config();
        ensure!(
            x.dim() == 4
                && x.size()[1] == cfg.in_chans as i64
                && x.size()[2] == cfg.img_size as i64
                && x.size()[3] == cfg.img_size as i64,
            "teacher {}: input {:?}, the checkpoint wants [B, {}, {}, {}]",
            self.file,
            x.size(),
            cfg.in_chans,
            cfg.img_size,
            cfg.img_size
        );
        Ok(tch::no_grad(|| self.model.forward(&x, Mode::EVAL)))
    }

    fn device(&self) -> Device {
        self.device
    }

    fn identity(&self) -> Identity {
        Identity {
            kind: "tinyvit".into(),
            file: self.file.clone(),
            sha256: self.sha256.clone(),
        }
    }

    fn config(&self) -> Option<&ModelConfig> {
        Some(self.model.config())
    }
}

/// A TorchScript module used as a teacher.
pub struct TorchScriptTeacher {
    module: tch::CModule,
    device: Device,
    file: String,
    sha256: String,
}

impl TorchScriptTeacher {
    /// Loads `path` onto `device` in eval mode.
    pub fn load(path: &Path, device: Device) -> Result<Self> {
        let sha256 = sha256_file(path)?;
        let mut module = tch::CModule::load_on_device(path, device)
            .with_context(|| format!("{}: cannot load as a TorchScript module", path.display()))?;
        module.set_eval();
        Ok(Self {
            module,
            device,
            file: file_name(path),
            sha256,
        })
    }
}

impl Teacher for TorchScriptTeacher {
    fn logits(&self, batch: &Tensor) -> Result<Tensor> {
        let x = batch.to_device(self.device);
        let out = tch::no_grad(|| self.module.forward_ts(&[&x]))
            .with_context(|| format!("teacher {}: forward failed", self.file))?;
        ensure!(
            out.dim() == 2,
            "teacher {}: output has shape {:?}, expected [batch, classes]",
            self.file,
            out.size()
        );
        Ok(out)
    }

    fn device(&self) -> Device {
        self.device
    }

    fn identity(&self) -> Identity {
        Identity {
            kind: "torchscript".into(),
            file: self.file.clone(),
            sha256: self.sha256.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_extension_table() {
        for (name, kind) in [
            ("t.safetensors", Some(FileKind::TinyVit)),
            ("t.SafeTensors", Some(FileKind::TinyVit)),
            ("t.pt", Some(FileKind::TorchScript)),
            ("t.pth", Some(FileKind::TorchScript)),
            ("t.jit", Some(FileKind::TorchScript)),
            ("t.ts", Some(FileKind::TorchScript)),
            ("t.torchscript", Some(FileKind::TorchScript)),
            ("t.onnx", None),
            ("t", None),
        ] {
            assert_eq!(file_kind(Path::new(name)).ok(), kind, "{name}");
        }
        let e = file_kind(Path::new("m.onnx")).unwrap_err();
        assert!(format!("{e}").contains(".torchscript"), "{e}");
    }

    #[test]
    fn probabilities_are_an_f32_softmax() {
        let l = Tensor::from_slice(&[0.0f32, 1.0, 2.0, 0.5, 0.5, 0.5]).view([2, 3]);
        let p: Vec<f32> = Vec::try_from(probabilities(&l.to_kind(Kind::Half)).view([-1])).unwrap();
        let e = [1.0f32, std::f32::consts::E, std::f32::consts::E.powi(2)];
        let s: f32 = e.iter().sum();
        for (a, b) in p[..3].iter().zip(e.iter().map(|v| v / s)) {
            assert!((a - b).abs() < 1e-6, "{p:?}");
        }
        assert!(p[3..].iter().all(|&v| (v - 1.0 / 3.0).abs() < 1e-6));
    }
}
