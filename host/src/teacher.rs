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
//!
//! A teacher's input normalisation ([`TeacherNorm`]: `--teacher-norm`, `--teacher-mean`,
//! `--teacher-std`, the same flags in `train` and `save-logits`) defaults to the input contract
//! a TinyViT checkpoint records. When it differs from the student's, the online teacher sees
//! the student's batch renormalised ([`Renormalized`]). [`probe_classes`] asks any teacher its
//! class count with one blank image, so a mismatch is an error before the first step.

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use tch::{nn, Device, Kind, Tensor};
use tinyvit_core::config::ModelConfig;

use crate::checkpoint::{self, Contract};
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
    /// The input contract the file records (a TinyViT checkpoint does).
    fn contract(&self) -> Option<&Contract> {
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
    contract: Option<Contract>,
    device: Device,
    file: String,
    sha256: String,
}

impl TinyVitTeacher {
    /// Loads a TinyViT checkpoint onto `device`.
    pub fn load(path: &Path, device: Device) -> Result<Self> {
        let l = checkpoint::load(path, None)?;
        let vs = nn::VarStore::new(device);
        let model = TinyVit::new(&vs.root(), &l.config)?;
        checkpoint::copy_into(&vs, &l.tensors, &path.display().to_string())?;
        Ok(Self {
            _vs: vs,
            model,
            contract: l.input,
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

    fn contract(&self) -> Option<&Contract> {
        self.contract.as_ref()
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

/// A teacher's input normalisation, the same flags in `train --teacher` and `save-logits`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct TeacherNorm {
    /// Teacher normalisation preset: imagenet, clip or half (0.5); default: the mean/std a
    /// TinyViT checkpoint records, else the student's (train) or the preset's (save-logits).
    #[arg(long = "teacher-norm", alias = "norm")]
    pub norm: Option<String>,
    /// Teacher normalisation mean, `r,g,b` on the 0..1 scale.
    #[arg(long = "teacher-mean", alias = "mean")]
    pub mean: Option<String>,
    /// Teacher normalisation std, `r,g,b` on the 0..1 scale.
    #[arg(long = "teacher-std", alias = "std")]
    pub std: Option<String>,
}

impl TeacherNorm {
    /// The teacher's mean and std: the flags over the teacher's recorded contract, else over
    /// `fallback`.
    pub fn resolve(
        &self,
        teacher: &dyn Teacher,
        fallback: ([f32; 3], [f32; 3]),
    ) -> Result<([f32; 3], [f32; 3])> {
        let base = teacher.contract().map_or(fallback, |c| (c.mean, c.std));
        crate::contract::parse_norm(
            base,
            self.norm.as_deref(),
            self.mean.as_deref(),
            self.std.as_deref(),
            ["--teacher-norm", "--teacher-mean", "--teacher-std"],
        )
    }
}

/// A teacher fed the student's batch renormalised to its own mean and std: per channel
/// `x_t = (x_s * std_s + mean_s - mean_t) / std_t`.
pub struct Renormalized {
    inner: Box<dyn Teacher>,
    /// Per channel `(scale, shift)`: `x_t = x_s * scale + shift`.
    affine: Vec<(f64, f64)>,
}

impl Renormalized {
    /// Wraps `inner` unless both normalisations agree on the first `channels` channels.
    pub fn wrap(
        inner: Box<dyn Teacher>,
        student: ([f32; 3], [f32; 3]),
        teacher: ([f32; 3], [f32; 3]),
        channels: usize,
    ) -> Box<dyn Teacher> {
        let same =
            (0..channels).all(|c| student.0[c] == teacher.0[c] && student.1[c] == teacher.1[c]);
        if same {
            return inner;
        }
        let affine = (0..channels)
            .map(|c| {
                let (ms, ss) = (f64::from(student.0[c]), f64::from(student.1[c]));
                let (mt, st) = (f64::from(teacher.0[c]), f64::from(teacher.1[c]));
                (ss / st, (ms - mt) / st)
            })
            .collect();
        Box::new(Renormalized { inner, affine })
    }
}

impl Teacher for Renormalized {
    fn logits(&self, batch: &Tensor) -> Result<Tensor> {
        ensure!(
            batch.dim() == 4 && batch.size()[1] == self.affine.len() as i64,
            "teacher input {:?}: expected [B, {}, H, W]",
            batch.size(),
            self.affine.len()
        );
        let x = tch::no_grad(|| {
            let planes: Vec<Tensor> = self
                .affine
                .iter()
                .enumerate()
                .map(|(c, (a, b))| batch.narrow(1, c as i64, 1) * *a + *b)
                .collect();
            Tensor::cat(&planes, 1)
        });
        self.inner.logits(&x)
    }
    fn device(&self) -> Device {
        self.inner.device()
    }
    fn identity(&self) -> Identity {
        self.inner.identity()
    }
    fn config(&self) -> Option<&ModelConfig> {
        self.inner.config()
    }
    fn contract(&self) -> Option<&Contract> {
        self.inner.contract()
    }
}

/// The class count of `teacher`, from one blank `[1, C, S, S]` image (`shape` = (C, S)).
pub fn probe_classes(teacher: &dyn Teacher, shape: (i64, i64)) -> Result<i64> {
    let (c, s) = shape;
    let x = Tensor::zeros([1, c, s, s], (Kind::Float, Device::Cpu));
    let y = teacher
        .logits(&x)
        .context("probing the teacher with one blank image")?;
    ensure!(
        y.dim() == 2 && y.size()[0] == 1,
        "teacher output has shape {:?} for one image, expected [1, classes]",
        y.size()
    );
    Ok(y.size()[1])
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
