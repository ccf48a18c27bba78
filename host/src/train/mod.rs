//! `tinyvit train`: trains a TinyViT student on libtorch (CPU or CUDA).
//!
//! Three targets, one loop:
//! - `--logits DIR`: fast pretraining distillation from the sparse logit store. Each sample's
//!   input is replayed from its stored seed with the core codec; the target is the eq. 2 soft
//!   label over the stored top-K; no labels are read.
//! - `--labels`: the baseline without distillation: label smoothing and mixup/CutMix as the
//!   recipe says, on pairs of neighbours in the epoch permutation (the core's pair mixing,
//!   done by the data source: a sample's input does not depend on the batch it lands in).
//! - `--teacher FILE`: online distillation: a teacher forward every step (dense softmax target).
//!
//! # Run folder
//!
//! ```text
//! RUN_DIR/
//!   config.toml        the resolved recipe (every knob); `--config` it to reproduce the run
//!   run.json           arch config, target, data specs, store, device (checked on --resume)
//!   last.safetensors   training checkpoint: weights + AdamW moments + state (see checkpoint)
//!   best.safetensors   weights of the epoch with the best validation top-1 (with --val)
//!   model.safetensors  final weights (official state_dict names, config in the metadata)
//!   metrics.jsonl      one JSON record per logged step and per epoch (see metrics)
//!   curves.png         training loss (left) and validation top-1 (right)
//!   summary.json       final figures (also printed as the last stdout line)
//! ```
//!
//! # Determinism
//!
//! Model init is seeded by the run seed; the epoch order and the augmentation seeds of
//! non-store runs are derived from (seed, epoch), mixup pairs and draws from (seed, epoch) and
//! the pair's sample seeds, DropPath masks from (seed, step). A checkpoint therefore
//! holds all the state there is, and on the CPU with the same thread count a resumed run
//! reproduces the uninterrupted one bit for bit (libtorch CPU kernels are deterministic for a
//! fixed thread count). On CUDA, atomics in some kernels make the results equal only within
//! float noise.

pub mod checkpoint;
pub mod loader;
pub mod loss;
pub mod metrics;
pub mod optim;
pub mod recipe;
pub mod sources;
pub mod store_seeds;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};
use tinyvit_core::config::ModelConfig;

use crate::device::DeviceArg;
use crate::model::{self, Mode, TinyVit};
use checkpoint::TrainState;
use loader::{epoch_order, Loader, Source};
use metrics::{Accuracy, MetricsLog, Record};
use optim::{AdamW, LossScaler, Schedule};
use recipe::Recipe;

/// Command-line arguments of `tinyvit train` (every recipe knob is an optional override).
#[derive(clap::Args, Clone, Debug)]
pub struct TrainArgs {
    /// Architecture preset (`tinyvit_core::config::PRESET_NAMES`).
    #[arg(long)]
    pub arch: String,
    /// Training data SPEC (`fashion-mnist[:DIR]`, `idx:IMAGES[,LABELS]`, `folder:DIR`, ...).
    #[arg(long, required_unless_present = "synthetic")]
    pub data: Option<String>,
    /// Distil from this sparse logit store.
    #[arg(long, conflicts_with_all = ["labels", "teacher"])]
    pub logits: Option<PathBuf>,
    /// Train on the dataset's labels (baseline without distillation).
    #[arg(long, conflicts_with_all = ["logits", "teacher"])]
    pub labels: bool,
    /// Leave out the training samples listed in this exclusion list (`tinyvit analyze hard`
    /// writes one: the "cleaned labels" baseline).
    #[arg(long, value_name = "FILE")]
    pub exclude: Option<PathBuf>,
    /// Online distillation from this teacher (TinyViT checkpoint `.safetensors`, or TorchScript
    /// `.pt` taking the student's input).
    #[arg(long, conflicts_with_all = ["logits", "labels"])]
    pub teacher: Option<PathBuf>,
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
}

/// Which target the run trains on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetKind {
    Logits { store: PathBuf },
    Labels,
    Teacher { file: PathBuf },
}

/// `RUN_DIR/run.json`: what a resumed run must agree with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    pub arch: String,
    pub config: ModelConfig,
    pub target: TargetKind,
    pub data: Option<String>,
    pub val: Option<String>,
    pub init: Option<PathBuf>,
}

/// `RUN_DIR/summary.json`, also printed as the final stdout line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub arch: String,
    pub target: String,
    pub device: String,
    pub params: i64,
    pub epochs: u64,
    pub steps: u64,
    pub images: u64,
    pub train_seconds: f64,
    pub images_per_s: f64,
    pub first_loss: Option<f64>,
    pub final_loss: Option<f64>,
    pub val_top1: Option<f64>,
    pub val_top5: Option<f64>,
    pub val_agreement: Option<f64>,
    pub best_val_top1: Option<f64>,
    /// Agreement of the student's top-1 with the teacher's (online) or the stored top-1
    /// (store) on the training batches of the last run segment, in percent.
    pub train_agreement: Option<f64>,
    /// Final weights on `--test`.
    pub test_top1: Option<f64>,
    pub test_top5: Option<f64>,
    /// Agreement with the online teacher on `--test`.
    pub test_agreement: Option<f64>,
    pub model: PathBuf,
    pub run_dir: PathBuf,
}

/// A frozen teacher for online distillation.
pub enum Teacher {
    /// A TinyViT checkpoint.
    TinyVit {
        _vs: nn::VarStore,
        model: Box<TinyVit>,
    },
    /// A TorchScript module taking the student's input.
    Script(tch::CModule),
}

impl std::fmt::Debug for Teacher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Teacher::TinyVit { model, .. } => write!(f, "Teacher::TinyVit({:?})", model.config()),
            Teacher::Script(_) => write!(f, "Teacher::Script"),
        }
    }
}

impl Teacher {
    /// Loads a teacher: `.pt`/`.ts`/`.jit` as TorchScript, anything else as a TinyViT
    /// checkpoint.
    pub fn load(path: &Path, device: Device) -> Result<Self> {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if matches!(ext, "pt" | "ts" | "jit" | "pth") {
            let mut m = tch::CModule::load_on_device(path, device)
                .with_context(|| format!("load TorchScript teacher {}", path.display()))?;
            m.set_eval();
            return Ok(Teacher::Script(m));
        }
        let (vs, model) = load_model(path, None, device)?;
        Ok(Teacher::TinyVit {
            _vs: vs,
            model: Box::new(model),
        })
    }

    /// Teacher logits in eval mode, no gradient.
    ///
    /// # Shapes
    /// `[B, C, H, W] -> [B, classes]`
    pub fn logits(&self, x: &Tensor) -> Result<Tensor> {
        tch::no_grad(|| match self {
            Teacher::TinyVit { model, .. } => Ok(model.forward(x, Mode::EVAL)),
            Teacher::Script(m) => m.forward_ts(&[x]).context("TorchScript teacher forward"),
        })
    }
}

/// A TinyViT checkpoint as the teacher of `tinyvit save-logits` (softmax of its eval-mode
/// logits; fp16 autocast on CUDA, as the reference's teacher pass).
pub struct StoreTeacher {
    _vs: nn::VarStore,
    model: TinyVit,
    device: Device,
    file: String,
    sha256: String,
}

impl StoreTeacher {
    /// Loads a TinyViT checkpoint (config from its metadata).
    pub fn load(path: &Path, device: Device) -> Result<Self> {
        let (vs, model) = load_model(path, None, device)?;
        Ok(StoreTeacher {
            _vs: vs,
            model,
            device,
            file: path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default(),
            sha256: crate::data::sha256_file(path)?,
        })
    }

    /// The teacher's configuration.
    pub fn config(&self) -> &ModelConfig {
        self.model.config()
    }
}

impl crate::save_logits::Teacher for StoreTeacher {
    fn input_size(&self) -> Option<u32> {
        Some(self.model.config().img_size)
    }
    fn probs(&self, batch: &Tensor) -> Result<Tensor> {
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
        let cuda = self.device.is_cuda();
        Ok(tch::no_grad(|| {
            tch::autocast(cuda, || self.model.forward(&x, Mode::EVAL))
                .to_kind(Kind::Float)
                .softmax(-1, Kind::Float)
        }))
    }

    fn device(&self) -> Device {
        self.device
    }

    fn identity(&self) -> (String, String, String) {
        ("tinyvit".into(), self.file.clone(), self.sha256.clone())
    }
}

/// Builds a TinyViT and loads a checkpoint into it (config from the checkpoint's metadata, else
/// `fallback`).
pub fn load_model(
    path: &Path,
    fallback: Option<&ModelConfig>,
    device: Device,
) -> Result<(nn::VarStore, TinyVit)> {
    let l = checkpoint::load(path, fallback)?;
    let vs = nn::VarStore::new(device);
    let model = TinyVit::new(&vs.root(), &l.config)?;
    checkpoint::copy_into(&vs, &l.tensors, &path.display().to_string())?;
    Ok((vs, model))
}

/// Evaluates `model` on every sample of `source` (no drop-last). `teacher` adds agreement.
pub fn evaluate(
    model: &TinyVit,
    source: Arc<dyn Source>,
    batch_size: usize,
    device: Device,
    workers: usize,
    teacher: Option<&Teacher>,
) -> Result<Accuracy> {
    let order = Arc::new((0..source.len()).collect::<Vec<_>>());
    let mut acc = Accuracy::default();
    for b in Loader::new(source, 0, order, batch_size, false, 0, workers, 2) {
        let b = b?;
        let x = b.images.to_device(device);
        let labels = b.labels.as_ref().context("evaluation data has no labels")?;
        let logits = tch::no_grad(|| model.forward(&x, Mode::EVAL));
        let t1 = match teacher {
            Some(t) => Some(t.logits(&x)?.argmax(1, false)),
            None => None,
        };
        acc.add(&logits, labels, t1.as_ref());
    }
    Ok(acc)
}

/// Seed of everything random at optimizer step `step` (DropPath masks).
fn step_seed(seed: u64, step: u64) -> u64 {
    // splitmix64 of (seed, step)
    let mut z = seed
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(step.wrapping_mul(0xbf58_476d_1ce4_e5b9))
        .wrapping_add(0x94d0_49bb_1331_11eb);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Resolves the recipe: preset, then `--config`, then flags.
pub fn resolve_recipe(args: &TrainArgs, img_size: u32) -> Result<Recipe> {
    let name = match &args.recipe {
        Some(n) => n.clone(),
        None if img_size <= 64 => "small".to_string(),
        None if args.labels => "in1k-scratch".to_string(),
        None => "in22k-distill".to_string(),
    };
    let mut r = Recipe::preset(&name)?;
    if let Some(p) = &args.config {
        r = r.merge_toml(p)?;
    }
    macro_rules! over {
        ($($f:ident),*) => { $( if let Some(v) = args.$f.clone() { r.$f = v; } )* };
    }
    over!(
        epochs,
        batch_size,
        accum,
        lr,
        min_lr,
        warmup_lr,
        warmup_epochs,
        weight_decay,
        clip_grad,
        label_smoothing,
        mixup,
        cutmix,
        layer_decay,
        freeze_bn,
        amp,
        aug,
        seed,
        workers,
        ckpt_every,
        log_every,
        eval_batch_size
    );
    if let Some(d) = args.drop_path {
        r.drop_path = Some(d);
    }
    r.validate()?;
    Ok(r)
}

/// The data side of a run, resolved from the arguments.
pub struct DataPlan {
    pub train: Arc<dyn Source>,
    pub val: Option<Arc<dyn Source>>,
    pub test: Option<Arc<dyn Source>>,
    /// Classes the data or store defines, if it does.
    pub num_classes: Option<u32>,
    pub in_chans: Option<u32>,
    pub img_size: Option<u32>,
    /// Input normalisation of the training and evaluation views.
    pub input: checkpoint::InputSpec,
}

/// Resolves `--data`, `--val` and `--logits` into sources (see [`crate::train::data_sources`]).
fn plan_data(args: &TrainArgs, cfg: &ModelConfig, recipe: &Recipe) -> Result<DataPlan> {
    if let Some(n) = args.synthetic {
        let (c, s) = (cfg.in_chans as usize, cfg.img_size as usize);
        let k = if args.logits.is_some() {
            args.synthetic_topk
        } else {
            0
        };
        let src = Arc::new(loader::Synthetic {
            n,
            shape: (c, s, s),
            classes: cfg.num_classes as usize,
            k,
        });
        let val: Option<Arc<dyn Source>> = args.val.as_ref().map(|_| {
            Arc::new(loader::Synthetic {
                n: n.min(256),
                shape: (c, s, s),
                classes: cfg.num_classes as usize,
                k: 0,
            }) as Arc<dyn Source>
        });
        return Ok(DataPlan {
            train: src,
            val,
            test: None,
            num_classes: None,
            in_chans: None,
            img_size: None,
            input: checkpoint::InputSpec::default(),
        });
    }
    data_sources(args, cfg, recipe)
}

/// The real-data sources of a run. Implemented in [`sources`].
fn data_sources(args: &TrainArgs, cfg: &ModelConfig, recipe: &Recipe) -> Result<DataPlan> {
    sources::plan(args, cfg, recipe)
}

/// `tinyvit train`: runs and prints the summary as one JSON line on stdout.
pub fn main(args: TrainArgs) -> Result<()> {
    let s = run(&args)?;
    println!("{}", serde_json::to_string(&s)?);
    Ok(())
}

/// Runs `tinyvit train`; returns the summary (also written to `RUN_DIR/summary.json`).
pub fn run(args: &TrainArgs) -> Result<Summary> {
    let device = crate::device::resolve(args.device)?;
    match args.threads {
        Some(t) => tch::set_num_threads(t),
        // On the CPU the data workers need cores too, and libtorch's spinning OpenMP threads
        // slow small ops by 10x or more on an oversubscribed machine: half the cores.
        None if device == Device::Cpu => {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            tch::set_num_threads((cores / 2).max(1) as i32);
        }
        None => {}
    }
    let target = match (&args.logits, args.labels, &args.teacher) {
        (Some(d), false, None) => TargetKind::Logits { store: d.clone() },
        (None, true, None) => TargetKind::Labels,
        (None, false, Some(f)) => TargetKind::Teacher { file: f.clone() },
        _ => bail!("give exactly one of --logits DIR, --labels, --teacher FILE"),
    };
    let mut cfg = ModelConfig::preset(&args.arch).with_context(|| {
        format!(
            "unknown --arch `{}` (known: {})",
            args.arch,
            tinyvit_core::config::PRESET_NAMES.join(", ")
        )
    })?;
    // Shape overrides known before the data is opened.
    if let Some(n) = args.num_classes {
        cfg.num_classes = n;
    }
    if let Some(c) = args.in_chans {
        cfg.in_chans = c;
    }
    if let Some(s) = args.img_size {
        cfg.img_size = s;
    }
    let mut recipe = resolve_recipe(args, cfg.img_size)?;
    let plan = plan_data(args, &cfg, &recipe)?;
    // The data (or store) fixes what the flags left open; a contradiction is an error.
    for (flag, given, found, field) in [
        (
            "--num-classes",
            args.num_classes,
            plan.num_classes,
            &mut cfg.num_classes,
        ),
        (
            "--in-chans",
            args.in_chans,
            plan.in_chans,
            &mut cfg.in_chans,
        ),
        (
            "--img-size",
            args.img_size,
            plan.img_size,
            &mut cfg.img_size,
        ),
    ] {
        if let Some(f) = found {
            if let Some(g) = given {
                ensure!(
                    g == f,
                    "{flag} {g} contradicts the data/store, which has {f}"
                );
            }
            *field = f;
        }
    }
    if let Some(dp) = recipe.drop_path {
        cfg.drop_path_rate = dp as f32;
    }
    cfg.validate()
        .map_err(|e| anyhow::anyhow!("model config: {e}"))?;
    let (c, h, w) = plan.train.shape();
    ensure!(
        c == cfg.in_chans as usize && h == cfg.img_size as usize && w == cfg.img_size as usize,
        "training data gives {c}x{h}x{w} images, the model wants {}x{}x{}",
        cfg.in_chans,
        cfg.img_size,
        cfg.img_size
    );
    ensure!(!plan.train.is_empty(), "training data is empty");
    if device == Device::Cpu {
        recipe.amp = false;
    }

    let out = &args.out;
    std::fs::create_dir_all(out).with_context(|| format!("create {}", out.display()))?;
    let last = out.join("last.safetensors");
    let info = RunInfo {
        arch: args.arch.clone(),
        config: cfg,
        target: target.clone(),
        data: args.data.clone(),
        val: args.val.clone(),
        init: args.init.clone(),
    };
    let resuming = args.resume && last.exists();
    if last.exists() && !args.resume {
        bail!(
            "{} already holds a run (last.safetensors); pass --resume to continue it or choose another --out",
            out.display()
        );
    }
    if resuming {
        let prev: RunInfo = serde_json::from_str(
            &std::fs::read_to_string(out.join("run.json"))
                .with_context(|| format!("read {}", out.join("run.json").display()))?,
        )
        .with_context(|| format!("parse {}", out.join("run.json").display()))?;
        ensure!(
            prev == info,
            "--resume: {} was started with other arguments: {:?}, now {:?}",
            out.display(),
            prev,
            info
        );
        let saved = out.join("config.toml");
        let prev_recipe = Recipe::preset(&recipe.name)?.merge_toml(&saved)?;
        // Knobs that do not change the result may differ between the segments of a run.
        let same = |r: &Recipe| Recipe {
            workers: 0,
            prefetch: 0,
            log_every: 0,
            ckpt_every: 0,
            eval_batch_size: 0,
            ..r.clone()
        };
        ensure!(
            same(&prev_recipe) == same(&recipe),
            "--resume: the recipe differs from {} (pass the same flags or --config {})",
            saved.display(),
            saved.display()
        );
    } else {
        std::fs::write(out.join("run.json"), serde_json::to_string_pretty(&info)?)?;
        recipe.save(&out.join("config.toml"))?;
        let _ = std::fs::remove_file(out.join("metrics.jsonl"));
    }

    // Model, seeded init, optional fine-tuning init.
    tch::manual_seed(recipe.seed as i64);
    let vs = nn::VarStore::new(device);
    let mut model = TinyVit::new(&vs.root(), &cfg)?;
    model.freeze_bn = recipe.freeze_bn;
    if let Some(init) = &args.init {
        if !resuming {
            init_from(&vs, &cfg, init)?;
        }
    }
    let entries = vs
        .variables()
        .into_iter()
        .filter(|(_, t)| t.requires_grad())
        .map(|(n, t)| {
            let decay = model::decays(&n, &t.size());
            let scale = if recipe.layer_decay != 1.0 {
                model::layer_lr_scale(&n, &cfg, recipe.layer_decay)
            } else {
                1.0
            };
            (n, t, decay, scale)
        })
        .collect();
    let mut opt = AdamW::new(entries, recipe.weight_decay);
    let mut state = TrainState {
        epoch: 0,
        batch: 0,
        step: 0,
        seed: recipe.seed,
        scaler: LossScaler::new(recipe.amp),
        train_seconds: 0.0,
        images: 0,
    };
    if resuming {
        let l = checkpoint::load(&last, None)?;
        ensure!(
            l.config == cfg,
            "--resume: {} holds another model config",
            last.display()
        );
        checkpoint::copy_into(&vs, &l.tensors, &last.display().to_string())?;
        checkpoint::restore_optimizer(&mut opt, &l.tensors, &last.display().to_string())?;
        state = l
            .state
            .with_context(|| format!("{} has no training state", last.display()))?;
        opt.t = state.step;
    }

    let teacher = match &target {
        TargetKind::Teacher { file } => {
            let t = Teacher::load(file, device)?;
            if let Teacher::TinyVit { model: tm, .. } = &t {
                let tc = tm.config();
                ensure!(
                    tc.num_classes == cfg.num_classes
                        && tc.in_chans == cfg.in_chans
                        && tc.img_size == cfg.img_size,
                    "teacher {} is {}x{}px with {} classes; the student is {}x{}px with {} classes",
                    file.display(),
                    tc.in_chans,
                    tc.img_size,
                    tc.num_classes,
                    cfg.in_chans,
                    cfg.img_size,
                    cfg.num_classes
                );
            }
            Some(t)
        }
        _ => None,
    };

    // Schedule in optimizer steps.
    let n = plan.train.len();
    let bs = recipe.batch_size as usize;
    let micro_per_epoch = (n / bs).max(1) as u64;
    ensure!(
        n >= bs,
        "training data has {n} samples, fewer than one batch of {bs}"
    );
    let steps_per_epoch = (micro_per_epoch / recipe.accum).max(1);
    let micro_used = steps_per_epoch * recipe.accum;
    let total_steps = steps_per_epoch * recipe.epochs;
    let sched = Schedule {
        base_lr: recipe.scaled(recipe.lr),
        warmup_lr: recipe.scaled(recipe.warmup_lr),
        min_lr: recipe.scaled(recipe.min_lr),
        warmup_steps: (recipe.warmup_epochs * steps_per_epoch as f64).round() as u64,
        total_steps,
    };
    let mut log = MetricsLog::open(&out.join("metrics.jsonl"))?;
    let nc = cfg.num_classes as i64;
    let pb = progress(args.quiet, total_steps, state.step);
    let mut last_val: Option<Accuracy> = None;
    let mut best: Option<f64> = None;
    let mut first_loss: Option<f64> = None;
    let mut final_loss: Option<f64> = None;
    // Student top-1 == teacher (or stored) top-1 on training batches, counted on the device
    // without a synchronisation per step.
    let mut agree_hits = Tensor::zeros([], (Kind::Int64, device));
    let mut agree_seen = 0u64;
    let segment_start = Instant::now();
    let seconds_before = state.train_seconds;
    let mut stop = false;
    // Accuracy (and agreement, loss) of the model on an evaluation split, when there is one.
    let evaluate_on = |split: &Option<Arc<dyn Source>>| {
        split
            .as_ref()
            .map(|s| {
                evaluate(
                    &model,
                    Arc::clone(s),
                    recipe.eval_batch_size as usize,
                    device,
                    recipe.workers,
                    teacher.as_ref(),
                )
            })
            .transpose()
    };

    while state.epoch < recipe.epochs && !stop {
        let epoch = state.epoch;
        let epoch_start = Instant::now();
        let order = Arc::new(epoch_order(n, recipe.seed, epoch, true));
        let mut ld = Loader::new_pinned(
            Arc::clone(&plan.train),
            epoch,
            order,
            bs,
            true,
            state.batch,
            recipe.workers,
            recipe.prefetch,
            device.is_cuda(),
        );
        let mut loss_sum = 0.0;
        let mut loss_n = 0u64;
        let mut window_loss = 0.0;
        let mut window_n = 0u64;
        let mut window_start = Instant::now();
        let mut window_images = 0u64;
        let mut pending_loss = Tensor::zeros([], (Kind::Float, device));
        // One autocast region per epoch (forward ops in fp16 on CUDA; in-place optimizer
        // updates and the fp32 loss are not autocast ops). Entering it per step makes
        // libtorch print deprecation warnings at every step.
        tch::autocast(recipe.amp, || -> Result<()> {
            while state.batch < micro_used {
                let Some(batch) = ld.next() else { break };
                let batch =
                    batch.with_context(|| format!("epoch {epoch} batch {}", state.batch))?;
                let micro = state.batch % recipe.accum;
                let seed = step_seed(recipe.seed, state.step * recipe.accum + micro);
                tch::manual_seed((seed >> 1) as i64);
                let x = batch
                    .images
                    .to_device_(device, Kind::Float, device.is_cuda(), false);
                let bsz = x.size()[0] as u64;
                let loss = (|| -> Result<Tensor> {
                    Ok(match &target {
                        TargetKind::Logits { .. } => {
                            let (idx, p) =
                                batch.topk.as_ref().context("store batch without top-K")?;
                            let idx = idx.to_device(device);
                            let logits = model.forward(&x, Mode::TRAIN);
                            agree_hits += logits
                                .detach()
                                .argmax(1, false)
                                .eq_tensor(&idx.select(1, 0))
                                .sum(Kind::Int64);
                            agree_seen += bsz;
                            loss::sparse_distill_loss(&logits, &idx, &p.to_device(device))
                        }
                        TargetKind::Labels => {
                            let labels = batch
                                .labels
                                .as_ref()
                                .context("--labels: the training data has no labels")?
                                .to_device(device);
                            // Mixed pairs come mixed from the source (batch-independent).
                            let t = match &batch.mix {
                                Some((partner, lam)) => loss::mixed_one_hot(
                                    &labels,
                                    &partner.to_device(device),
                                    &lam.to_device(device),
                                    nc,
                                    recipe.label_smoothing,
                                ),
                                None => loss::smooth_one_hot(&labels, nc, recipe.label_smoothing),
                            };
                            let logits = model.forward(&x, Mode::TRAIN);
                            loss::soft_target_ce(&logits, &t)
                        }
                        TargetKind::Teacher { .. } => {
                            let t = teacher.as_ref().expect("teacher loaded").logits(&x)?;
                            let probs = t.to_kind(Kind::Float).softmax(-1, Kind::Float);
                            let logits = model.forward(&x, Mode::TRAIN);
                            agree_hits += logits
                                .detach()
                                .argmax(1, false)
                                .eq_tensor(&t.argmax(1, false))
                                .sum(Kind::Int64);
                            agree_seen += bsz;
                            loss::soft_target_ce(&logits, &probs)
                        }
                    })
                })()?;
                (&loss * (state.scaler.factor() / recipe.accum as f64)).backward();
                pending_loss += loss.detach() / recipe.accum as f64;
                state.batch += 1;
                state.images += bsz;
                window_images += bsz;
                if micro + 1 < recipe.accum {
                    continue;
                }
                // Optimizer update.
                if state.scaler.enabled {
                    opt.scale_grads(1.0 / state.scaler.scale);
                }
                let norm = opt.clip_grad_norm(recipe.clip_grad);
                let lr = sched.lr(state.step);
                if state.scaler.update(norm.is_finite()) {
                    opt.step(lr);
                }
                opt.zero_grad();
                state.step += 1;
                let l = pending_loss.double_value(&[]);
                pending_loss = Tensor::zeros([], (Kind::Float, device));
                if first_loss.is_none() {
                    first_loss = Some(l);
                }
                final_loss = Some(l);
                loss_sum += l;
                loss_n += 1;
                window_loss += l;
                window_n += 1;
                if state.step.is_multiple_of(recipe.log_every.max(1)) {
                    let ips = window_images as f64 / window_start.elapsed().as_secs_f64().max(1e-9);
                    log.write(&Record::Train {
                        epoch,
                        step: state.step,
                        loss: window_loss / window_n as f64,
                        lr,
                        images_per_s: ips,
                    })?;
                    pb.set_message(format!(
                        "epoch {}/{} loss {:.4} lr {:.2e} {:.0} img/s",
                        epoch + 1,
                        recipe.epochs,
                        window_loss / window_n as f64,
                        lr,
                        ips
                    ));
                    window_loss = 0.0;
                    window_n = 0;
                    window_images = 0;
                    window_start = Instant::now();
                }
                pb.set_position(state.step);
                if recipe.ckpt_every > 0 && state.step.is_multiple_of(recipe.ckpt_every) {
                    state.train_seconds = seconds_before + segment_start.elapsed().as_secs_f64();
                    checkpoint::save(&last, &vs, &cfg, Some(&plan.input), Some((&opt, &state)))?;
                }
                if args.max_steps.is_some_and(|m| state.step >= m) {
                    stop = true;
                    break;
                }
            }
            Ok(())
        })?;
        drop(ld);
        if stop {
            break;
        }
        // Epoch end: evaluate, checkpoint, log.
        state.epoch += 1;
        state.batch = 0;
        state.train_seconds = seconds_before + segment_start.elapsed().as_secs_f64();
        let val = evaluate_on(&plan.val)?;
        let secs = epoch_start.elapsed().as_secs_f64();
        let imgs = (micro_used * bs as u64) as f64;
        log.write(&Record::Epoch {
            epoch,
            step: state.step,
            train_loss: if loss_n > 0 {
                loss_sum / loss_n as f64
            } else {
                f64::NAN
            },
            val_top1: val.as_ref().and_then(|a| a.top1()),
            val_top5: val.as_ref().and_then(|a| a.top5()),
            val_agreement: val.as_ref().and_then(|a| a.agreement()),
            val_loss: val.as_ref().and_then(|a| a.loss()),
            images_per_s: imgs / secs.max(1e-9),
            seconds: secs,
        })?;
        checkpoint::save(&last, &vs, &cfg, Some(&plan.input), Some((&opt, &state)))?;
        if let Some(a) = val.as_ref().and_then(|a| a.top1()) {
            if best.is_none_or(|b| a > b) {
                best = Some(a);
                checkpoint::save(
                    &out.join("best.safetensors"),
                    &vs,
                    &cfg,
                    Some(&plan.input),
                    None,
                )?;
            }
        }
        if !args.quiet {
            if let Some(v) = &val {
                pb.println(format!(
                    "epoch {}: train loss {:.4}, val top-1 {:.2}%, top-5 {:.2}%",
                    epoch + 1,
                    loss_sum / loss_n.max(1) as f64,
                    v.top1().unwrap_or(f64::NAN),
                    v.top5().unwrap_or(f64::NAN)
                ));
            }
        }
        last_val = val;
    }
    pb.finish_and_clear();
    state.train_seconds = seconds_before + segment_start.elapsed().as_secs_f64();
    let model_path = out.join("model.safetensors");
    checkpoint::save(&model_path, &vs, &cfg, Some(&plan.input), None)?;
    let test = evaluate_on(&plan.test)?;
    let records = MetricsLog::read(&out.join("metrics.jsonl"))?;
    metrics::plot_curves(&records, &out.join("curves.png"))?;
    // Figures over the whole run (resumed segments included) come from the log.
    let epoch_best = records
        .iter()
        .filter_map(|r| match r {
            Record::Epoch { val_top1, .. } => *val_top1,
            _ => None,
        })
        .fold(None, |b: Option<f64>, a| Some(b.map_or(a, |b| b.max(a))));
    let first_logged = records.iter().find_map(|r| match r {
        Record::Train { loss, .. } => Some(*loss),
        _ => None,
    });
    let summary = Summary {
        arch: args.arch.clone(),
        target: match &target {
            TargetKind::Logits { .. } => "logits",
            TargetKind::Labels => "labels",
            TargetKind::Teacher { .. } => "teacher",
        }
        .to_string(),
        device: format!("{device:?}"),
        params: model::count_params(&vs),
        epochs: state.epoch,
        steps: state.step,
        images: state.images,
        train_seconds: state.train_seconds,
        images_per_s: state.images as f64 / state.train_seconds.max(1e-9),
        first_loss: first_logged.or(first_loss),
        final_loss,
        val_top1: last_val.as_ref().and_then(|a| a.top1()),
        val_top5: last_val.as_ref().and_then(|a| a.top5()),
        val_agreement: last_val.as_ref().and_then(|a| a.agreement()),
        best_val_top1: epoch_best,
        train_agreement: (agree_seen > 0)
            .then(|| 100.0 * agree_hits.int64_value(&[]) as f64 / agree_seen as f64),
        test_top1: test.as_ref().and_then(|a| a.top1()),
        test_top5: test.as_ref().and_then(|a| a.top5()),
        test_agreement: test.as_ref().and_then(|a| a.agreement()),
        model: model_path,
        run_dir: out.clone(),
    };
    std::fs::write(
        out.join("summary.json"),
        serde_json::to_string_pretty(&summary)?,
    )?;
    Ok(summary)
}

/// Fine-tuning init: copies every tensor of `path` whose name and shape fit; a head of another
/// class count is left at its fresh init; attention biases of another window size are resized.
fn init_from(vs: &nn::VarStore, cfg: &ModelConfig, path: &Path) -> Result<()> {
    let l = checkpoint::load(path, Some(cfg))?;
    let what = path.display().to_string();
    tch::no_grad(|| -> Result<()> {
        for (name, var) in vs.variables() {
            let Some(src) = l.tensors.get(&name) else {
                bail!("{what}: tensor `{name}` is missing");
            };
            let src = if src.size() == var.size() {
                src.shallow_clone()
            } else if name.ends_with("attention_biases") {
                let ws = (var.size()[1] as f64).sqrt().round() as i64;
                checkpoint::resize_attention_biases(src, ws)
                    .with_context(|| format!("{what}: `{name}`"))?
            } else if name.starts_with("head.") {
                continue;
            } else {
                bail!(
                    "{what}: tensor `{name}` has shape {:?}, the model wants {:?}",
                    src.size(),
                    var.size()
                );
            };
            var.shallow_clone()
                .copy_(&src.to_kind(var.kind()).to_device(var.device()));
        }
        Ok(())
    })
}

fn progress(quiet: bool, total: u64, pos: u64) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(total);
    pb.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} steps {msg} ETA {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    pb.set_position(pos);
    pb
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--init` from a checkpoint with another head and window size: every tensor that fits is
    /// copied, the head keeps its fresh init, attention biases are resized (a constant table
    /// stays constant).
    #[test]
    fn finetune_init_new_head_and_windows() {
        let dir = std::env::temp_dir().join(format!("tinyvit-init-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src_cfg = ModelConfig::tiny_vit_mcu_m4();
        let vs = nn::VarStore::new(Device::Cpu);
        let _m = TinyVit::new(&vs.root(), &src_cfg).unwrap();
        tch::no_grad(|| {
            for (n, t) in vs.variables() {
                if n.ends_with("attention_biases") {
                    let _ = t.shallow_clone().fill_(0.25);
                }
            }
        });
        let path = dir.join("src.safetensors");
        checkpoint::save(&path, &vs, &src_cfg, None, None).unwrap();

        let mut dst_cfg = src_cfg.with_num_classes(3);
        dst_cfg.window_sizes = [4, 5, 5, 2];
        let vs2 = nn::VarStore::new(Device::Cpu);
        let _m2 = TinyVit::new(&vs2.root(), &dst_cfg).unwrap();
        let head_before = vs2.variables()["head.weight"].copy();
        init_from(&vs2, &dst_cfg, &path).unwrap();
        let (a, b) = (vs.variables(), vs2.variables());
        assert!(a["patch_embed.seq.0.c.weight"].equal(&b["patch_embed.seq.0.c.weight"]));
        assert!(b["head.weight"].equal(&head_before));
        let ab = &b["layers.1.blocks.0.attn.attention_biases"];
        assert_eq!(ab.size(), [2, 25]);
        assert!((ab - 0.25).abs().max().double_value(&[]) < 1e-5);
        std::fs::remove_dir_all(&dir).ok();
    }
}
