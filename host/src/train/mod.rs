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

pub mod args;
pub mod loader;
pub mod loss;
pub mod metrics;
pub mod optim;
pub mod recipe;
pub mod seeds;
pub mod sources;
pub mod state;
pub mod store_seeds;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};
use tinyvit_core::config::ModelConfig;
use tinyvit_core::params::splitmix64;

use crate::checkpoint;
use crate::dist::DataParallel;
use crate::model::{self, Mode, TinyVit};
use crate::teacher::{self, Teacher};
use loss::SparseTargets;
use metrics::{Accuracy, MetricsLog, Record};
use optim::{AdamW, LossScaler, Schedule};
use recipe::Recipe;
use sources::DataPlan;
use state::TrainState;

pub use args::{TargetKind, TrainArgs};
pub use loader::{epoch_order, Loader, Source};
pub use sources::validation_source;

/// Version of the sample order of an epoch ([`epoch_order`]). 2: the core's
/// `aug::epoch_permutation` (1 was a PCG64 Fisher-Yates shuffle). A run started under another
/// order is not resumed: its remaining batches would differ.
pub const SAMPLE_ORDER: u32 = 2;

fn sample_order_v1() -> u32 {
    1
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
    /// [`SAMPLE_ORDER`] of the run (files without it were written under order 1).
    #[serde(default = "sample_order_v1")]
    pub sample_order: u32,
}

/// `RUN_DIR/summary.json`, also printed as the final stdout line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub arch: String,
    /// Processes of a data-parallel run (1: a single process).
    pub world_size: usize,
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

/// Evaluates `model` on every sample of `source` (no drop-last). `teacher` adds agreement.
pub fn evaluate(
    model: &TinyVit,
    source: Arc<dyn Source>,
    batch_size: usize,
    device: Device,
    workers: usize,
    teacher: Option<&dyn Teacher>,
) -> Result<Accuracy> {
    let order = Arc::new((0..source.len()).collect::<Vec<_>>());
    let mut acc = Accuracy::default();
    for b in Loader::new(source, 0, order, batch_size, false, 0, workers, 2) {
        let b = b?;
        let x = b.images.to_device(device);
        let labels = b.labels.as_ref();
        ensure!(
            labels.is_some() || teacher.is_some(),
            "the evaluation data has no labels and the run has no online teacher to agree with: \
             nothing to measure (give labelled data, or train with --teacher)"
        );
        let logits = tch::no_grad(|| model.forward(&x, Mode::EVAL));
        let t1 = match teacher {
            Some(t) => Some(t.logits(&x)?.argmax(1, false)),
            None => None,
        };
        acc.add(&logits, labels, t1.as_ref());
    }
    Ok(acc)
}

/// Seed of everything random at optimizer step `step` (DropPath masks): the SplitMix64 output
/// of a state keyed by (seed, step).
fn step_seed(seed: u64, step: u64) -> u64 {
    let mut state = seed
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(step.wrapping_mul(0xbf58_476d_1ce4_e5b9))
        .wrapping_add(0x94d0_49bb_1331_11eb)
        .wrapping_sub(0x9e37_79b9_7f4a_7c15);
    splitmix64(&mut state)
}

/// Resolves the recipe: preset, then `--config`, then flags.
pub fn resolve_recipe(args: &TrainArgs, img_size: u32) -> Result<Recipe> {
    let name = match &args.recipe {
        Some(n) => n.clone(),
        // Fine-tuning: the fine-tune recipes (above 224 px, the high-resolution one).
        None if args.init.is_some() && img_size > 224 => "finetune-highres".to_string(),
        None if args.init.is_some() => "finetune".to_string(),
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

/// `tinyvit train`: runs and prints the summary as one JSON line on stdout.
pub fn main(args: TrainArgs) -> Result<()> {
    let s = run(&args)?;
    // Data-parallel: rank 0 alone prints (and writes) the summary.
    if crate::dist::Launch::from_env()?.is_none_or(|l| l.rank == 0) {
        println!("{}", serde_json::to_string(&s)?);
    }
    Ok(())
}

/// Runs `tinyvit train`; returns the summary (also written to `RUN_DIR/summary.json`). The
/// steps read as the command does: resolve the plan, prepare the run folder (or resume it),
/// build the model and optimizer, loop over the epochs, summarise.
pub fn run(args: &TrainArgs) -> Result<Summary> {
    let plan = resolve(args)?;
    let fresh_dir = !args.out.exists();
    let resuming = prepare_run_dir(args, &plan)?;
    let result = Run::build(args, &plan, resuming).and_then(|mut run| {
        run.epochs(args, &plan)?;
        run.summarise(args, &plan)
    });
    if result.is_err() && !resuming && plan.dp.is_main() {
        remove_unresumable(&args.out, fresh_dir);
    }
    result
}

/// The files a run writes into its folder.
const RUN_FILES: &[&str] = &[
    "run.json",
    "config.toml",
    "metrics.jsonl",
    "best.safetensors",
    "model.safetensors",
    "curves.png",
    "summary.json",
];

/// After a fresh run failed: when it left no checkpoint to `--resume` from, removes what it
/// wrote (the folder too when this run created it and nothing else is in it), so a failed
/// command leaves no half-made run folder behind. A run that saved `last.safetensors` keeps
/// everything: `--resume` continues it.
fn remove_unresumable(out: &std::path::Path, fresh_dir: bool) {
    if out.join("last.safetensors").exists() {
        return;
    }
    for f in RUN_FILES {
        let _ = std::fs::remove_file(out.join(f));
        let _ = std::fs::remove_file(out.join(format!("{f}.tmp")));
    }
    let _ = std::fs::remove_file(out.join("last.safetensors.tmp"));
    if fresh_dir {
        // Fails, as it should, when the folder holds anything else.
        let _ = std::fs::remove_dir(out);
    }
}

/// Everything the arguments, the data and the recipe fix before training starts.
struct Plan {
    device: Device,
    /// Data-parallel: this process's rank among the others (the identity for one process).
    dp: DataParallel,
    target: TargetKind,
    cfg: ModelConfig,
    recipe: Recipe,
    data: DataPlan,
}

/// Resolves the arguments into a plan: device and threads, target, model config (flags, then
/// what the data or store fixes), recipe, data sources; checks they agree.
fn resolve(args: &TrainArgs) -> Result<Plan> {
    // Data-parallel hook: join the other ranks (a single process when no launcher says so);
    // on CUDA each rank takes GPU LOCAL_RANK.
    let dp = DataParallel::from_env(std::time::Duration::from_secs_f64(args.dist_timeout))?;
    let device = dp.device(crate::device::resolve(args.device)?);
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
    let target = args.target()?;
    let mut cfg = crate::arch::resolve(&args.arch)?;
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
    let mut data = sources::plan_data(args, &cfg, &recipe)?;
    // The recipe follows the effective input size (a store's may differ from the preset's):
    // when that picks another recipe, the data is planned again with it.
    if let (None, Some(s)) = (&args.recipe, data.img_size) {
        let r = resolve_recipe(args, s)?;
        if r.name != recipe.name {
            eprintln!(
                "recipe `{}` for the {s} px input (the preset's {} px would pick `{}`)",
                r.name, cfg.img_size, recipe.name
            );
            recipe = r;
            data = sources::plan_data(args, &cfg.with_img_size(s), &recipe)?;
        }
    }
    // The data (or store) fixes what the flags left open; a contradiction is an error.
    for (flag, given, found, field) in [
        (
            "--num-classes",
            args.num_classes,
            data.num_classes,
            &mut cfg.num_classes,
        ),
        (
            "--in-chans",
            args.in_chans,
            data.in_chans,
            &mut cfg.in_chans,
        ),
        (
            "--img-size",
            args.img_size,
            data.img_size,
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
    let (c, h, w) = data.train.shape();
    ensure!(
        c == cfg.in_chans as usize && h == cfg.img_size as usize && w == cfg.img_size as usize,
        "training data gives {c}x{h}x{w} images, the model wants {}x{}x{}",
        cfg.in_chans,
        cfg.img_size,
        cfg.img_size
    );
    ensure!(!data.train.is_empty(), "training data is empty");
    // The class names the checkpoints record: `--class-names`, else the data's own when they
    // fit the head.
    data.input.class_names = match &args.class_names {
        Some(f) => {
            let names = crate::contract::read_class_names(f)?;
            ensure!(
                names.len() == cfg.num_classes as usize,
                "--class-names {}: {} names, the model has {} classes",
                f.display(),
                names.len(),
                cfg.num_classes
            );
            names
        }
        None => crate::contract::fitting_names(
            std::mem::take(&mut data.input.class_names),
            cfg.num_classes,
            args.data.as_deref().unwrap_or("the data"),
        ),
    };
    data.input = std::mem::take(&mut data.input)
        .resolve(&cfg)
        .map_err(|e| anyhow::anyhow!("the run's input contract: {e}"))?;
    if device == Device::Cpu {
        recipe.amp = false;
    }
    Ok(Plan {
        device,
        dp,
        target,
        cfg,
        recipe,
        data,
    })
}

/// Creates the run folder, or checks that a `--resume`d one was started with the same
/// arguments and recipe. Returns whether the run resumes.
fn prepare_run_dir(args: &TrainArgs, plan: &Plan) -> Result<bool> {
    let out = &args.out;
    std::fs::create_dir_all(out).with_context(|| format!("create {}", out.display()))?;
    let last = out.join("last.safetensors");
    let info = RunInfo {
        arch: args.arch.clone(),
        config: plan.cfg,
        target: plan.target.clone(),
        data: args.data.clone(),
        val: args.val.clone(),
        init: args.init.clone(),
        sample_order: SAMPLE_ORDER,
    };
    let resuming = args.resume && last.exists();
    if last.exists() && !args.resume {
        bail!(
            "{} already holds a run (last.safetensors); pass --resume to continue it or choose another --out",
            out.display()
        );
    }
    // Data-parallel hook: rank 0 alone writes the run folder's files.
    if !resuming && !plan.dp.is_main() {
        return Ok(false);
    }
    if !resuming {
        crate::store::write_file(
            &out.join("run.json"),
            serde_json::to_string_pretty(&info)?.as_bytes(),
        )?;
        plan.recipe.save(&out.join("config.toml"))?;
        let _ = std::fs::remove_file(out.join("metrics.jsonl"));
        return Ok(false);
    }
    let prev: RunInfo = serde_json::from_str(
        &std::fs::read_to_string(out.join("run.json"))
            .with_context(|| format!("read {}", out.join("run.json").display()))?,
    )
    .with_context(|| format!("parse {}", out.join("run.json").display()))?;
    ensure!(
        prev.sample_order == SAMPLE_ORDER,
        "--resume: {} was started with sample order {} (this build uses order {SAMPLE_ORDER}: \
         the core's epoch permutation); its remaining batches would differ: start a new run",
        out.display(),
        prev.sample_order
    );
    ensure!(
        prev == info,
        "--resume: {} was started with other arguments: {:?}, now {:?}",
        out.display(),
        prev,
        info
    );
    let saved = out.join("config.toml");
    let prev_recipe = Recipe::preset(&plan.recipe.name)?.merge_toml(&saved)?;
    // Knobs that do not change the result may differ between the segments of a run.
    let same = |r: &Recipe| Recipe {
        workers: 0,
        prefetch: 0,
        log_every: 0,
        ckpt_every: 0,
        eval_batch_size: 0,
        ..r.clone()
    };
    let (before, now) = (same(&prev_recipe), same(&plan.recipe));
    if before != now {
        bail!(
            "--resume: the recipe differs from {} (pass the same flags or --config {}):\n{}",
            saved.display(),
            saved.display(),
            recipe_diff(&before, &now).join("\n")
        );
    }
    Ok(true)
}

/// One line per recipe field a resumed run would change, with both values; the batch size's
/// line says why it is pinned.
fn recipe_diff(before: &Recipe, now: &Recipe) -> Vec<String> {
    let (a, b) = (
        serde_json::to_value(before).unwrap_or_default(),
        serde_json::to_value(now).unwrap_or_default(),
    );
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return Vec::new();
    };
    a.iter()
        .filter(|(k, va)| b.get(*k) != Some(*va))
        .map(|(k, va)| {
            let vb = b.get(k).cloned().unwrap_or_default();
            if k == "batch_size" {
                format!(
                    "  batch_size: the run has {va}, now {vb}. --batch-size is pinned for a \
                     resumed run: its saved position (epoch, batch) counts batches of {va} \
                     samples and its learning-rate schedule counts the steps of those batches, \
                     so another size would skip or repeat samples; pass --batch-size {va}"
                )
            } else {
                format!("  {k}: the run has {va}, now {vb}")
            }
        })
        .collect()
}

/// Data-parallel hook at the start: every rank resumes the same state (a run folder that one
/// rank cannot read would split them) and starts from rank 0's weights and buffers (checked by
/// hash). Returns the trained parameters in one order (by name) on every rank, whose gradients
/// [`Run::update`] averages. For one process: no collective, the parameters only.
fn sync_ranks(
    dp: &DataParallel,
    vs: &nn::VarStore,
    resuming: bool,
    state: &TrainState,
) -> Result<Vec<Tensor>> {
    dp.check_same(
        "resume state (epoch, batch, step)",
        &format!("{resuming} {} {} {}", state.epoch, state.batch, state.step),
    )?;
    let mut named = vs.variables().into_iter().collect::<Vec<_>>();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    dp.sync_start(
        &named
            .iter()
            .map(|(_, t)| t.shallow_clone())
            .collect::<Vec<_>>(),
    )?;
    Ok(named
        .into_iter()
        .filter(|(_, t)| t.requires_grad())
        .map(|(_, t)| t)
        .collect())
}

/// Who unlabelled evaluation data is compared with, for the epoch lines: the online teacher
/// of a `--teacher` run, or the store's teacher that a `--logits` run names with `--teacher`.
fn agreement_source(args: &TrainArgs) -> String {
    match (&args.logits, &args.teacher) {
        (Some(_), Some(f)) => format!(
            "the store's teacher {} (run on the evaluation views)",
            f.display()
        ),
        (None, Some(f)) => format!("the online teacher {}", f.display()),
        _ => "the teacher".to_string(),
    }
}

/// Loads the online teacher of a `--teacher` run, or the store's teacher that a `--logits` run
/// is given with `--teacher` (for agreement on unlabelled evaluation data; checked against the
/// store's manifest by SHA-256), and checks it fits the student.
fn load_teacher(args: &TrainArgs, plan: &Plan) -> Result<Option<Box<dyn Teacher>>> {
    let (file, store) = match (&plan.target, &args.teacher) {
        (TargetKind::Teacher { file }, _) => (file, None),
        (TargetKind::Logits { store }, Some(file)) => (file, Some(store)),
        _ => return Ok(None),
    };
    let t = teacher::load(file, plan.device)?;
    if let Some(dir) = store {
        let m = crate::store::Manifest::load(dir)?;
        let id = t.identity();
        ensure!(
            id.sha256 == m.teacher.sha256,
            "--teacher {} is not the teacher of the store {} (sha256 {}; the store was written \
             by {} with sha256 {}): its agreement would measure another model",
            file.display(),
            dir.display(),
            id.sha256,
            m.teacher.file,
            m.teacher.sha256
        );
    }
    let cfg = &plan.cfg;
    // The class count first, with one blank image of the student's input: a mismatch is an
    // error here, before any step.
    let classes = teacher::probe_classes(&*t, (cfg.in_chans as i64, cfg.img_size as i64))
        .with_context(|| format!("teacher {}", file.display()))?;
    ensure!(
        classes == cfg.num_classes as i64,
        "teacher {} has {classes} classes, the student {} (the data's or --num-classes); \
         distillation needs the same classes",
        file.display(),
        cfg.num_classes
    );
    let student = (plan.data.input.mean, plan.data.input.std);
    let norm = args.teacher_norm.resolve(&*t, student)?;
    if norm != student {
        eprintln!(
            "teacher {}: inputs renormalised from the student's mean {:?} std {:?} to mean \
             {:?} std {:?}",
            file.display(),
            student.0,
            student.1,
            norm.0,
            norm.1
        );
    }
    let t = teacher::Renormalized::wrap(t, student, norm, cfg.in_chans as usize);
    if let Some(tc) = t.config() {
        let cfg = &plan.cfg;
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
    Ok(Some(t))
}

/// A run in progress: the model, its optimizer and schedule, where it stands, and the figures
/// the summary reports.
struct Run {
    vs: nn::VarStore,
    model: TinyVit,
    opt: AdamW,
    sched: Schedule,
    state: TrainState,
    teacher: Option<Box<dyn Teacher>>,
    /// Data-parallel: the log is rank 0's alone (`None` on the other ranks).
    log: Option<MetricsLog>,
    pb: indicatif::ProgressBar,
    /// No progress bar and no epoch lines (`--quiet`, or a rank other than 0).
    quiet: bool,
    /// Data-parallel: the trained parameters, in one order on every rank, whose gradients are
    /// averaged.
    params: Vec<Tensor>,
    /// Micro-batches per epoch actually used (whole optimizer steps).
    micro_used: u64,
    last_val: Option<Accuracy>,
    best: Option<f64>,
    first_loss: Option<f64>,
    final_loss: Option<f64>,
    /// Student top-1 == teacher (or stored) top-1 on training batches, counted on the device
    /// without a synchronisation per step.
    agree_hits: Tensor,
    agree_seen: u64,
    segment_start: Instant,
    seconds_before: f64,
}

/// What one epoch's loop hands to the epoch end.
#[derive(Default)]
struct EpochFigures {
    loss_sum: f64,
    loss_n: u64,
    /// `--max-steps` reached: stop without closing the epoch.
    stop: bool,
}

impl Run {
    /// The seeded model (with `--init` weights), AdamW with its layer scales, the schedule in
    /// optimizer steps, and, when resuming, the weights, moments and state of `last`.
    fn build(args: &TrainArgs, plan: &Plan, resuming: bool) -> Result<Self> {
        let (cfg, recipe, device) = (&plan.cfg, &plan.recipe, plan.device);
        tch::manual_seed(recipe.seed as i64);
        let vs = nn::VarStore::new(device);
        let mut model = TinyVit::new(&vs.root(), cfg)?;
        model.freeze_bn = recipe.freeze_bn;
        if let (Some(init), false) = (&args.init, resuming) {
            init_from(&vs, cfg, init)?;
        }
        let entries = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .map(|(n, t)| {
                let decay = model::decays(&n, &t.size());
                let scale = if recipe.layer_decay != 1.0 {
                    model::layer_lr_scale(&n, cfg, recipe.layer_decay)
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
            let last = args.out.join("last.safetensors");
            let what = last.display().to_string();
            let l = checkpoint::load(&last, None)?;
            ensure!(
                l.config == *cfg,
                "--resume: {what} holds another model config"
            );
            checkpoint::copy_into(&vs, &l.tensors, &what)?;
            state::restore_optimizer(&mut opt, &l.tensors, &what)?;
            state = state::state_of(&l, &what)?
                .with_context(|| format!("{what} has no training state"))?;
            opt.t = state.step;
        }
        let params = sync_ranks(&plan.dp, &vs, resuming, &state)?;
        let teacher = load_teacher(args, plan)?;
        let n = plan.data.train.len();
        let bs = recipe.batch_size as usize;
        ensure!(
            n >= bs,
            "training data has {n} samples, fewer than one batch of {bs}"
        );
        // Data-parallel hook: `--batch-size` is the global batch, split evenly over the ranks.
        plan.dp.local_batch(bs)?;
        let micro_per_epoch = (n / bs).max(1) as u64;
        let steps_per_epoch = (micro_per_epoch / recipe.accum).max(1);
        let total_steps = steps_per_epoch * recipe.epochs;
        let sched = Schedule {
            base_lr: recipe.scaled(recipe.lr),
            warmup_lr: recipe.scaled(recipe.warmup_lr),
            min_lr: recipe.scaled(recipe.min_lr),
            warmup_steps: (recipe.warmup_epochs * steps_per_epoch as f64).round() as u64,
            total_steps,
        };
        // Data-parallel hook: rank 0 alone logs and shows progress.
        let main = plan.dp.is_main();
        let quiet = args.quiet || !main;
        Ok(Run {
            log: match main {
                true => Some(MetricsLog::open(&args.out.join("metrics.jsonl"))?),
                false => None,
            },
            pb: progress(quiet, total_steps, state.step),
            quiet,
            params,
            micro_used: steps_per_epoch * recipe.accum,
            seconds_before: state.train_seconds,
            vs,
            model,
            opt,
            sched,
            state,
            teacher,
            last_val: None,
            best: None,
            first_loss: None,
            final_loss: None,
            agree_hits: Tensor::zeros([], (Kind::Int64, device)),
            agree_seen: 0,
            segment_start: Instant::now(),
        })
    }

    /// Accuracy (and agreement, loss) of the model on an evaluation split, when there is one.
    fn evaluate_on(
        &self,
        plan: &Plan,
        split: &Option<Arc<dyn Source>>,
    ) -> Result<Option<Accuracy>> {
        split
            .as_ref()
            .map(|s| {
                evaluate(
                    &self.model,
                    Arc::clone(s),
                    plan.recipe.eval_batch_size as usize,
                    plan.device,
                    plan.recipe.workers,
                    self.teacher.as_deref(),
                )
            })
            .transpose()
    }

    fn save_last(&self, args: &TrainArgs, plan: &Plan) -> Result<()> {
        let last = args.out.join("last.safetensors");
        state::save(
            &last,
            &self.vs,
            &plan.cfg,
            &plan.data.input,
            &self.opt,
            &self.state,
        )
    }

    /// The epoch loop: each epoch's batches, then its evaluation, checkpoint and log record.
    fn epochs(&mut self, args: &TrainArgs, plan: &Plan) -> Result<()> {
        while self.state.epoch < plan.recipe.epochs {
            let epoch_start = Instant::now();
            let figures = self.epoch(args, plan)?;
            if figures.stop {
                break;
            }
            self.end_epoch(args, plan, &figures, epoch_start)?;
        }
        self.pb.finish_and_clear();
        Ok(())
    }

    /// The batches of the current epoch from `state.batch` on: forward, loss, backward, and an
    /// optimizer update every `accum` micro-batches.
    fn epoch(&mut self, args: &TrainArgs, plan: &Plan) -> Result<EpochFigures> {
        let (recipe, device) = (&plan.recipe, plan.device);
        let epoch = self.state.epoch;
        let bs = recipe.batch_size as usize;
        let dp = &plan.dp;
        // Data-parallel hook: this rank's share of each global batch of the one epoch order.
        let order = epoch_order(plan.data.train.len(), recipe.seed, epoch, true)?;
        let order = Arc::new(dp.shard(order, bs)?);
        let mut ld = Loader::new_pinned(
            Arc::clone(&plan.data.train),
            epoch,
            order,
            dp.local_batch(bs)?,
            true,
            self.state.batch,
            recipe.workers,
            recipe.prefetch,
            device.is_cuda(),
        );
        let mut figures = EpochFigures::default();
        let mut window = Window::new();
        let mut pending_loss = Tensor::zeros([], (Kind::Float, device));
        // One autocast region per epoch (forward ops in fp16 on CUDA; in-place optimizer
        // updates and the fp32 loss are not autocast ops). Entering it per step makes
        // libtorch print deprecation warnings at every step.
        tch::autocast(recipe.amp, || -> Result<()> {
            while self.state.batch < self.micro_used {
                let Some(batch) = ld.next() else { break };
                let batch =
                    batch.with_context(|| format!("epoch {epoch} batch {}", self.state.batch))?;
                let micro = self.state.batch % recipe.accum;
                let seed = step_seed(recipe.seed, self.state.step * recipe.accum + micro);
                tch::manual_seed((seed >> 1) as i64);
                let x = batch
                    .images
                    .to_device_(device, Kind::Float, device.is_cuda(), false);
                let bsz = x.size()[0] as u64;
                let loss = self.loss(plan, &batch, &x)?;
                (&loss * (self.state.scaler.factor() / recipe.accum as f64)).backward();
                pending_loss += loss.detach() / recipe.accum as f64;
                self.state.batch += 1;
                // Data-parallel: images of the global batch (this rank's share times the ranks).
                let images = bsz * dp.world() as u64;
                self.state.images += images;
                window.images += images;
                if micro + 1 < recipe.accum {
                    continue;
                }
                let (l, lr) = self.update(plan, &mut pending_loss)?;
                figures.loss_sum += l;
                figures.loss_n += 1;
                window.add(l);
                self.after_step(args, plan, &mut window, lr)?;
                if args.max_steps.is_some_and(|m| self.state.step >= m) {
                    figures.stop = true;
                    break;
                }
            }
            Ok(())
        })?;
        Ok(figures)
    }

    /// The loss of one batch against the run's target: the core's sparse targets (store
    /// top-K, or smoothed labels with mixed pairs), or the online teacher's softmax.
    fn loss(&mut self, plan: &Plan, batch: &loader::Batch, x: &Tensor) -> Result<Tensor> {
        let (device, nc) = (plan.device, plan.cfg.num_classes as usize);
        Ok(match &plan.target {
            TargetKind::Logits { .. } => {
                let (idx, p) = batch.topk.as_ref().context("store batch without top-K")?;
                let t = SparseTargets::from_topk(idx, p, nc)?.to_device(device);
                let logits = self.model.forward(x, Mode::TRAIN);
                self.agree(&logits, &idx.select(1, 0).to_device(device));
                loss::sparse_target_ce(&logits, &t)
            }
            TargetKind::Labels => {
                let labels = batch
                    .labels
                    .as_ref()
                    .context("--labels: the training data has no labels")?;
                // Mixed pairs come mixed from the source (batch-independent).
                let mix = batch.mix.as_ref().map(|(p, l)| (p, l));
                let smoothing = plan.recipe.label_smoothing;
                let t = SparseTargets::from_labels(labels, mix, nc, smoothing)?.to_device(device);
                let logits = self.model.forward(x, Mode::TRAIN);
                loss::sparse_target_ce(&logits, &t)
            }
            TargetKind::Teacher { .. } => {
                let teacher = self.teacher.as_ref().context("teacher not loaded")?;
                let t = teacher.logits(x)?;
                let probs = teacher::probabilities(&t);
                let logits = self.model.forward(x, Mode::TRAIN);
                self.agree(&logits, &t.argmax(1, false));
                loss::soft_target_ce(&logits, &probs)
            }
        })
    }

    /// Counts the batch's samples whose student top-1 is `top1`.
    fn agree(&mut self, logits: &Tensor, top1: &Tensor) {
        self.agree_hits += logits
            .detach()
            .argmax(1, false)
            .eq_tensor(top1)
            .sum(Kind::Int64);
        self.agree_seen += logits.size()[0] as u64;
    }

    /// One optimizer update (gradients averaged over the ranks, unscale, clip, step unless the
    /// scaler skips it); returns the step's loss (the mean over the ranks) and learning rate.
    fn update(&mut self, plan: &Plan, pending_loss: &mut Tensor) -> Result<(f64, f64)> {
        let (clip, device) = (plan.recipe.clip_grad, plan.device);
        // Data-parallel hook: the mean gradient of the global batch.
        let grads: Vec<Tensor> = self
            .params
            .iter()
            .map(|p| p.grad())
            .filter(|g| g.defined())
            .collect();
        plan.dp.average_grads(&grads)?;
        if self.state.scaler.enabled {
            self.opt.scale_grads(1.0 / self.state.scaler.scale);
        }
        let norm = self.opt.clip_grad_norm(clip);
        let lr = self.sched.lr(self.state.step);
        if self.state.scaler.update(norm.is_finite()) {
            self.opt.step(lr);
        }
        self.opt.zero_grad();
        self.state.step += 1;
        // Data-parallel hook: the logged loss is the mean over the ranks.
        let mut l = [pending_loss.double_value(&[])];
        plan.dp.mean(&mut l)?;
        let l = l[0];
        *pending_loss = Tensor::zeros([], (Kind::Float, device));
        if self.first_loss.is_none() {
            self.first_loss = Some(l);
        }
        self.final_loss = Some(l);
        Ok((l, lr))
    }

    /// After an update: the log record and progress message every `log_every` steps, and a
    /// checkpoint every `ckpt_every` steps.
    fn after_step(
        &mut self,
        args: &TrainArgs,
        plan: &Plan,
        window: &mut Window,
        lr: f64,
    ) -> Result<()> {
        let recipe = &plan.recipe;
        let step = self.state.step;
        if step.is_multiple_of(recipe.log_every.max(1)) {
            let ips = window.images as f64 / window.start.elapsed().as_secs_f64().max(1e-9);
            let loss = window.loss / window.n as f64;
            if let Some(log) = &mut self.log {
                log.write(&Record::Train {
                    epoch: self.state.epoch,
                    step,
                    loss,
                    lr,
                    images_per_s: ips,
                })?;
            }
            self.pb.set_message(format!(
                "epoch {}/{} loss {loss:.4} lr {lr:.2e} {ips:.0} img/s",
                self.state.epoch + 1,
                recipe.epochs,
            ));
            *window = Window::new();
        }
        self.pb.set_position(step);
        // Data-parallel hook: rank 0 alone writes checkpoints.
        if plan.dp.is_main() && recipe.ckpt_every > 0 && step.is_multiple_of(recipe.ckpt_every) {
            self.state.train_seconds = self.seconds_now();
            self.save_last(args, plan)?;
        }
        Ok(())
    }

    fn seconds_now(&self) -> f64 {
        self.seconds_before + self.segment_start.elapsed().as_secs_f64()
    }

    /// Epoch end: evaluate, checkpoint (`last`, and `best` on a better validation top-1), log.
    fn end_epoch(
        &mut self,
        args: &TrainArgs,
        plan: &Plan,
        figures: &EpochFigures,
        epoch_start: Instant,
    ) -> Result<()> {
        let epoch = self.state.epoch;
        self.state.epoch += 1;
        self.state.batch = 0;
        self.state.train_seconds = self.seconds_now();
        let val = self.evaluate_on(plan, &plan.data.val)?;
        let secs = epoch_start.elapsed().as_secs_f64();
        let imgs = (self.micro_used * plan.recipe.batch_size) as f64;
        let train_loss = if figures.loss_n > 0 {
            figures.loss_sum / figures.loss_n as f64
        } else {
            f64::NAN
        };
        // Data-parallel hook: rank 0 alone logs and writes checkpoints (`log` is `None` on
        // the other ranks).
        let Some(log) = &mut self.log else {
            self.last_val = val;
            return Ok(());
        };
        log.write(&Record::Epoch {
            epoch,
            step: self.state.step,
            train_loss,
            val_top1: val.as_ref().and_then(|a| a.top1()),
            val_top5: val.as_ref().and_then(|a| a.top5()),
            val_agreement: val.as_ref().and_then(|a| a.agreement()),
            val_loss: val.as_ref().and_then(|a| a.loss()),
            images_per_s: imgs / secs.max(1e-9),
            seconds: secs,
        })?;
        self.save_last(args, plan)?;
        // The best epoch: by top-1, or on unlabelled data by agreement with the teacher.
        if let Some(a) = val.as_ref().and_then(|a| a.top1().or(a.agreement())) {
            if self.best.is_none_or(|b| a > b) {
                self.best = Some(a);
                let best = args.out.join("best.safetensors");
                checkpoint::save(&best, &self.vs, &plan.cfg, Some(&plan.data.input), None)?;
            }
        }
        if let (false, Some(v), None) = (self.quiet, &val, val.as_ref().and_then(|a| a.top1())) {
            self.pb.println(format!(
                "epoch {}: train loss {:.4}, val (unlabelled) top-1 agreement with {} {:.2}%",
                epoch + 1,
                figures.loss_sum / figures.loss_n.max(1) as f64,
                agreement_source(args),
                v.agreement().unwrap_or(f64::NAN)
            ));
        } else if let (false, Some(v)) = (self.quiet, &val) {
            self.pb.println(format!(
                "epoch {}: train loss {:.4}, val top-1 {:.2}%, top-5 {:.2}%",
                epoch + 1,
                figures.loss_sum / figures.loss_n.max(1) as f64,
                v.top1().unwrap_or(f64::NAN),
                v.top5().unwrap_or(f64::NAN)
            ));
        }
        self.last_val = val;
        Ok(())
    }

    /// The final weights, the test evaluation, the curves and `summary.json`.
    fn summarise(mut self, args: &TrainArgs, plan: &Plan) -> Result<Summary> {
        let out = &args.out;
        self.state.train_seconds = self.seconds_now();
        let model_path = out.join("model.safetensors");
        // Data-parallel hook: rank 0 alone writes the model, the curves and the summary; the
        // other ranks' summary (not written) has no figures from the log.
        let main = plan.dp.is_main();
        if main {
            checkpoint::save(
                &model_path,
                &self.vs,
                &plan.cfg,
                Some(&plan.data.input),
                None,
            )?;
        }
        let test = self.evaluate_on(plan, &plan.data.test)?;
        let records = match main {
            true => MetricsLog::read(&out.join("metrics.jsonl"))?,
            false => Vec::new(),
        };
        if main {
            metrics::plot_curves(&records, &out.join("curves.png"))?;
        }
        // Data-parallel hook: train agreement counted over every rank's share.
        let mut agree = [
            self.agree_hits.int64_value(&[]) as f64,
            self.agree_seen as f64,
        ];
        plan.dp.sum(&mut agree)?;
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
        let (state, last_val) = (&self.state, &self.last_val);
        let summary = Summary {
            arch: args.arch.clone(),
            world_size: plan.dp.world(),
            target: match &plan.target {
                TargetKind::Logits { .. } => "logits",
                TargetKind::Labels => "labels",
                TargetKind::Teacher { .. } => "teacher",
            }
            .to_string(),
            device: format!("{:?}", plan.device),
            params: model::count_params(&self.vs),
            epochs: state.epoch,
            steps: state.step,
            images: state.images,
            train_seconds: state.train_seconds,
            images_per_s: state.images as f64 / state.train_seconds.max(1e-9),
            first_loss: first_logged.or(self.first_loss),
            final_loss: self.final_loss,
            val_top1: last_val.as_ref().and_then(|a| a.top1()),
            val_top5: last_val.as_ref().and_then(|a| a.top5()),
            val_agreement: last_val.as_ref().and_then(|a| a.agreement()),
            best_val_top1: epoch_best,
            train_agreement: (agree[1] > 0.0).then(|| 100.0 * agree[0] / agree[1]),
            test_top1: test.as_ref().and_then(|a| a.top1()),
            test_top5: test.as_ref().and_then(|a| a.top5()),
            test_agreement: test.as_ref().and_then(|a| a.agreement()),
            model: model_path,
            run_dir: out.clone(),
        };
        if main {
            crate::store::write_file(
                &out.join("summary.json"),
                serde_json::to_string_pretty(&summary)?.as_bytes(),
            )?;
        }
        Ok(summary)
    }
}

/// Loss and throughput over the steps since the last log record.
struct Window {
    loss: f64,
    n: u64,
    images: u64,
    start: Instant,
}

impl Window {
    fn new() -> Self {
        Window {
            loss: 0.0,
            n: 0,
            images: 0,
            start: Instant::now(),
        }
    }

    fn add(&mut self, loss: f64) {
        self.loss += loss;
        self.n += 1;
    }
}

/// Fine-tuning init from any file `tinyvit infer` reads ([`crate::import::init_state_dict`]:
/// our checkpoints, official or timm safetensors, `.pth` in both layouts, `.tvb`): copies every
/// tensor whose name and shape fit; attention biases of another window size are resized
/// ([`crate::import::resize_attention_biases`], the one resize); a head of another class count
/// keeps its fresh init, with a one-line notice.
fn init_from(vs: &nn::VarStore, cfg: &ModelConfig, path: &Path) -> Result<()> {
    let sd = crate::import::init_state_dict(path, cfg)?;
    let what = path.display().to_string();
    let mut head_note = None;
    tch::no_grad(|| -> Result<()> {
        for (name, var) in vs.variables() {
            let Some(t) = sd.get(&name) else {
                if name.ends_with("num_batches_tracked") {
                    continue;
                }
                bail!("{what}: tensor `{name}` is missing");
            };
            let dims: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
            let src = Tensor::from_slice(&t.values).view(dims.as_slice());
            let src = if src.size() == var.size() {
                src
            } else if name.ends_with("attention_biases") {
                resize_bias_table(&src, var.size()[1])
                    .with_context(|| format!("{what}: `{name}`"))?
            } else if name.starts_with("head.") {
                head_note = Some((src.size()[0], var.size()[0]));
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
    })?;
    if let Some((from, to)) = head_note {
        eprintln!("--init {what}: head of {from} classes re-initialised for {to} classes");
    }
    Ok(())
}

/// An attention bias table `[heads, from*from]` resized to `[heads, entries]` (a square).
fn resize_bias_table(t: &Tensor, entries: i64) -> Result<Tensor> {
    let (heads, n) = t
        .size2()
        .context("attention_biases must be [heads, ws*ws]")?;
    let side = |n: i64| {
        let s = (n as f64).sqrt().round() as i64;
        (s * s == n).then_some(s as usize)
    };
    let from = side(n).with_context(|| format!("{n} entries is not a square window"))?;
    let to = side(entries).with_context(|| format!("{entries} entries is not a square window"))?;
    let values: Vec<f32> = Vec::try_from(t.to_kind(Kind::Float).view([-1]))?;
    let r = crate::import::resize_attention_biases(&values, heads as usize, from, to);
    Ok(Tensor::from_slice(&r).view([heads, entries]))
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

    /// The DropPath seed keeps its values through the move to the core's SplitMix64.
    #[test]
    fn step_seed_is_pinned() {
        fn reference(seed: u64, step: u64) -> u64 {
            let mut z = seed
                .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                .wrapping_add(step.wrapping_mul(0xbf58_476d_1ce4_e5b9))
                .wrapping_add(0x94d0_49bb_1331_11eb);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        for (seed, step) in [(0, 0), (1, 2), (42, 1_000_000), (u64::MAX, 7)] {
            assert_eq!(step_seed(seed, step), reference(seed, step));
        }
    }

    /// `--init` from a checkpoint with another head and window size: every tensor that fits is
    /// copied, the head keeps its fresh init, and a non-constant attention bias table is
    /// resized as libtorch's antialiased bicubic interpolation (timm's resize, an independent
    /// computation) resizes it.
    #[test]
    fn finetune_init_reads_pth_timm_and_tvb() {
        let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/parity");
        let pth = fx.join("tiny_16.pth");
        let sd = crate::import::read_state_dict(&pth).unwrap();
        let cfg = crate::import::config_from_shapes(&sd)
            .unwrap()
            .with_img_size(16);
        // The official torch pickle and the timm-named safetensors: every tensor copied.
        for path in [pth.clone(), fx.join("tiny_16_timm.safetensors")] {
            let vs = nn::VarStore::new(Device::Cpu);
            let _m = TinyVit::new(&vs.root(), &cfg).unwrap();
            init_from(&vs, &cfg, &path).unwrap();
            for (n, t) in vs.variables() {
                let Some(want) = sd.get(&n) else {
                    assert!(n.ends_with("num_batches_tracked"), "{n}");
                    continue;
                };
                let got: Vec<f32> = Vec::try_from(t.view([-1])).unwrap();
                assert_eq!(got, want.values, "{}: {n}", path.display());
            }
        }
        // A .tvb (BatchNorm folded): the unfolded model computes the same logits in eval mode.
        let dir = std::env::temp_dir().join(format!("tinyvit-init-tvb-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let tvb = dir.join("tiny.tvb");
        let loaded = crate::import::load(&pth, None, None, Some(16)).unwrap();
        crate::import::export_tvb(&loaded, &tvb).unwrap();
        let x = Tensor::randn([2, cfg.in_chans as i64, 16, 16], (Kind::Float, Device::Cpu));
        let (_vs0, m0) =
            crate::infer::tch_model(loaded.state_dict.as_ref().unwrap(), &cfg).unwrap();
        let vs = nn::VarStore::new(Device::Cpu);
        let m = TinyVit::new(&vs.root(), &cfg).unwrap();
        init_from(&vs, &cfg, &tvb).unwrap();
        let (a, b) = tch::no_grad(|| (m0.forward(&x, Mode::EVAL), m.forward(&x, Mode::EVAL)));
        let diff = (&a - &b).abs().max().double_value(&[]);
        let scale = a.abs().max().double_value(&[]);
        assert!(
            diff <= 1e-4 * scale.max(1.0),
            "tvb init: logits differ by {diff}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn finetune_init_new_head_and_windows() {
        let dir = std::env::temp_dir().join(format!("tinyvit-init-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src_cfg = ModelConfig::tiny_vit_mcu_m4();
        tch::manual_seed(5);
        let vs = nn::VarStore::new(Device::Cpu);
        let _m = TinyVit::new(&vs.root(), &src_cfg).unwrap();
        tch::no_grad(|| {
            for (n, t) in vs.variables() {
                if n.ends_with("attention_biases") {
                    t.shallow_clone().copy_(&Tensor::randn_like(&t));
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
        let name = "layers.1.blocks.0.attn.attention_biases";
        let (src, got) = (&a[name], &b[name]);
        assert_eq!(got.size(), [2, 25]);
        let from = (src.size()[1] as f64).sqrt() as i64;
        let want = src
            .view([1, 2, from, from])
            .internal_upsample_bicubic2d_aa([5, 5], false, None, None)
            .view([2, 25]);
        let diff = (got - &want).abs().max().double_value(&[]);
        assert!(
            diff < 1e-5,
            "resized table differs from libtorch's by {diff}"
        );
        assert!(
            want.std(true).double_value(&[]) > 0.1,
            "the table is not constant"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
