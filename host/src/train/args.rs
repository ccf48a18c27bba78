//! The arguments of `tinyvit train` and the target they select; the data sources
//! ([`super::sources`]) and the run ([`super`]) both read them.

use std::path::PathBuf;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::device::DeviceArg;

/// Command-line arguments of `tinyvit train` (every recipe knob is an optional override).
#[derive(clap::Args, Clone, Debug)]
pub struct TrainArgs {
    /// Architecture: a preset (`tinyvit_core::config::PRESET_NAMES`) or a `ModelConfig` as
    /// TOML (`FILE.toml`, e.g. `tinyvit contract`'s `best.toml`).
    #[arg(long)]
    pub arch: String,
    /// Training data SPEC (`fashion-mnist[:DIR]`, `idx:IMAGES[,LABELS]`, `folder:DIR`, ...);
    /// with `--logits`, default: the data the store records.
    #[arg(long, required_unless_present_any = ["synthetic", "logits"])]
    pub data: Option<String>,
    /// Distil from this sparse logit store.
    #[arg(long, conflicts_with_all = ["labels"])]
    pub logits: Option<PathBuf>,
    /// Train on the dataset's labels (baseline without distillation).
    #[arg(long, conflicts_with_all = ["logits", "teacher"])]
    pub labels: bool,
    /// Leave out the training samples listed in this exclusion list (`tinyvit analyze hard`
    /// writes one: the "cleaned labels" baseline).
    #[arg(long, value_name = "FILE")]
    pub exclude: Option<PathBuf>,
    /// Online distillation from this teacher (TinyViT checkpoint `.safetensors`, or TorchScript
    /// `.pt` taking the student's input). With `--logits DIR`: the store's teacher (its SHA-256
    /// must be the one the store's manifest records), run only on unlabelled `--val`/`--test`
    /// data to measure the student's top-1 agreement with it; the store holds the teacher's
    /// top-K for the augmented training views alone.
    #[arg(long, conflicts_with_all = ["labels"])]
    pub teacher: Option<PathBuf>,
    /// The teacher's input normalisation (`--teacher-norm`, `--teacher-mean`, `--teacher-std`).
    #[command(flatten)]
    pub teacher_norm: crate::teacher::TeacherNorm,
    /// Run folder (created).
    #[arg(long)]
    pub out: PathBuf,
    /// Validation data SPEC (evaluated after each epoch), or `split:N` to hold out N samples
    /// of `--data`.
    #[arg(long)]
    pub val: Option<String>,
    /// Test data SPEC, evaluated once with the final weights (`test_*` in the summary).
    #[arg(long)]
    pub test: Option<String>,
    /// Continue from RUN_DIR/last.safetensors (a fresh start when there is none).
    #[arg(long)]
    pub resume: bool,
    /// Initialise from a checkpoint (fine-tuning): a head of another class count is replaced,
    /// attention biases of another window size are resized.
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Compute device.
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceArg,
    /// Recipe preset (`in22k-distill`, `in1k-scratch`, `finetune`, `finetune-highres`,
    /// `small`); default: `small` for images of 64 px or less, else `in22k-distill` for
    /// distillation and `in1k-scratch` for labels.
    #[arg(long)]
    pub recipe: Option<String>,
    /// TOML file of recipe fields applied over the preset.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Classes of the head (default: the store's, the dataset's, or the preset's).
    #[arg(long)]
    pub num_classes: Option<u32>,
    /// Input channels, 1 or 3 (default: the dataset's).
    #[arg(long)]
    pub in_chans: Option<u32>,
    /// Input size (default: the store's or the preset's).
    #[arg(long)]
    pub img_size: Option<u32>,
    /// Class names recorded in the checkpoints, one per line (default: the dataset's own:
    /// folder names, Fashion-MNIST's).
    #[arg(long, value_name = "FILE")]
    pub class_names: Option<PathBuf>,
    #[arg(long)]
    pub epochs: Option<u64>,
    #[arg(long)]
    pub batch_size: Option<u64>,
    /// Micro-batches per optimizer update.
    #[arg(long)]
    pub accum: Option<u64>,
    /// Peak lr at total batch 512 (scaled by batch*accum/512).
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long)]
    pub min_lr: Option<f64>,
    #[arg(long)]
    pub warmup_lr: Option<f64>,
    #[arg(long)]
    pub warmup_epochs: Option<f64>,
    #[arg(long)]
    pub weight_decay: Option<f64>,
    #[arg(long)]
    pub clip_grad: Option<f64>,
    #[arg(long)]
    pub drop_path: Option<f64>,
    #[arg(long)]
    pub label_smoothing: Option<f64>,
    /// Mixup Beta alpha of `--labels` runs (0 = off), on pairs of samples.
    #[arg(long)]
    pub mixup: Option<f64>,
    /// CutMix Beta alpha of `--labels` runs (0 = off), on pairs of samples.
    #[arg(long)]
    pub cutmix: Option<f64>,
    #[arg(long)]
    pub layer_decay: Option<f64>,
    #[arg(long)]
    pub freeze_bn: Option<bool>,
    /// fp16 autocast + loss scaling on CUDA.
    #[arg(long)]
    pub amp: Option<bool>,
    /// Augmentation preset of the core codec (labels / teacher runs).
    #[arg(long)]
    pub aug: Option<String>,
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long)]
    pub workers: Option<usize>,
    /// Write last.safetensors every N optimizer steps (0: at epoch ends only).
    #[arg(long)]
    pub ckpt_every: Option<u64>,
    #[arg(long)]
    pub log_every: Option<u64>,
    #[arg(long)]
    pub eval_batch_size: Option<u64>,
    /// libtorch intra-op threads (default: libtorch's choice).
    #[arg(long)]
    pub threads: Option<i32>,
    /// Use N synthetic samples instead of `--data` (throughput measurements).
    #[arg(long)]
    pub synthetic: Option<usize>,
    /// K of the synthetic top-K (`--synthetic` with `--logits`).
    #[arg(long, default_value_t = 10)]
    pub synthetic_topk: usize,
    /// Stop after this many optimizer steps (throughput measurements).
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Data-parallel runs (launched by torchrun, srun or `cargo xtask train --nproc`): seconds
    /// a rank waits for a lost or hung peer before it exits with an error naming it.
    #[arg(long, default_value_t = crate::dist::DEFAULT_TIMEOUT.as_secs_f64())]
    pub dist_timeout: f64,
}

/// Which target the run trains on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetKind {
    Logits { store: PathBuf },
    Labels,
    Teacher { file: PathBuf },
}

impl TrainArgs {
    /// The target the flags select (exactly one of `--logits`, `--labels`, `--teacher`).
    pub fn target(&self) -> Result<TargetKind> {
        Ok(match (&self.logits, self.labels, &self.teacher) {
            // A --teacher next to --logits only measures agreement on unlabelled evaluation data.
            (Some(d), false, _) => TargetKind::Logits { store: d.clone() },
            (None, true, None) => TargetKind::Labels,
            (None, false, Some(f)) => TargetKind::Teacher { file: f.clone() },
            _ => bail!("give exactly one of --logits DIR, --labels, --teacher FILE"),
        })
    }
}
