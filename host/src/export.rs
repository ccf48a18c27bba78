//! `tinyvit export`: a trained checkpoint to a deployable `.tvb` (BatchNorm folded), verified
//! against libtorch.
//!
//! The checkpoint's official-name tensors are folded by the core
//! ([`tinyvit_core::engine::fold::fold_state_dict`], through the one host call of it,
//! [`crate::import::fold`]) and written with
//! [`tinyvit_core::tvb::write`]. With `--val SPEC` the written file is parsed back and run by a
//! core engine over every validation image; its top-1 accuracy must match the tch model's
//! (eval mode, unfolded BN) to `--tolerance` points (0.1 by default), else the export fails and
//! no file is left under the output name.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};
use tch::Device;
use tinyvit_core::config::ModelConfig;
use tinyvit_core::engine::{self, fast::FastModel, Weights};
use tinyvit_core::{tvb, vectors};

use crate::checkpoint;
use crate::import;
use crate::model::Mode;
use crate::train::{self, Loader, Source};

/// Command-line arguments of `tinyvit export`.
#[derive(clap::Args, Clone, Debug)]
pub struct ExportArgs {
    /// Checkpoint (`model.safetensors`, `best.safetensors` or `last.safetensors` of a run).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Output `.tvb` file.
    #[arg(long)]
    pub out: PathBuf,
    /// Architecture preset, only for checkpoints without `tinyvit.config` metadata.
    #[arg(long)]
    pub arch: Option<String>,
    /// Verify on this data (SPEC, or `split:N` of `--data`): core engine vs tch accuracy.
    #[arg(long)]
    pub val: Option<String>,
    /// The data `--val split:N` is taken from.
    #[arg(long)]
    pub data: Option<String>,
    /// Engine used for the check.
    #[arg(long, value_enum, default_value = "fast")]
    pub engine: EngineArg,
    /// Largest allowed accuracy difference, in points.
    #[arg(long, default_value_t = 0.1)]
    pub tolerance: f64,
    /// Check at most this many validation images.
    #[arg(long)]
    pub limit: Option<usize>,
    #[command(flatten)]
    pub limits: crate::infer::LimitArgs,
}

/// Which core engine runs the check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EngineArg {
    /// Bit-exact scalar engine (what the device runs).
    Exact,
    /// Host GEMM engine.
    Fast,
}

/// What the check found.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExportReport {
    pub out: PathBuf,
    pub bytes: u64,
    pub images: u64,
    pub engine: EngineArg,
    pub tch_top1: Option<f64>,
    pub core_top1: Option<f64>,
    /// Images where the two top-1 classes differ.
    pub disagreements: u64,
    /// Largest |core - tch| / max(|tch|_inf, 1e-6) over each image's logits.
    pub max_rel_logit_diff: Option<f64>,
}

/// `tinyvit export`: runs and prints the report as one JSON line on stdout.
pub fn main(args: ExportArgs) -> Result<()> {
    let r = run(&args)?;
    println!("{}", serde_json::to_string(&r)?);
    Ok(())
}

/// Runs the export (and the check, when `--val` is given).
pub fn run(args: &ExportArgs) -> Result<ExportReport> {
    let fallback = match &args.arch {
        Some(a) => Some(ModelConfig::preset(a).with_context(|| format!("unknown --arch `{a}`"))?),
        None => None,
    };
    let ck = checkpoint::load(&args.checkpoint, fallback.as_ref())?;
    let cfg = ck.config;
    let blob = import::state_dict_of(&ck.tensors)
        .and_then(|sd| {
            import::check_finite_state_dict(&sd)?;
            let blob = import::fold(&sd, &cfg)?;
            import::check_finite(&cfg, &blob)?;
            Ok(blob)
        })
        .with_context(|| format!("checkpoint {}", args.checkpoint.display()))?;
    let bytes = tvb::write(&cfg, &blob).map_err(|e| anyhow::anyhow!("write .tvb: {e}"))?;
    let tmp = args.out.with_extension("tvb.tmp");
    // Any failure from here on (a full disk, the check) removes the temporary file.
    std::fs::write(&tmp, &bytes)
        .with_context(|| format!("write {}", tmp.display()))
        .and_then(|_| check_then_rename(args, &ck, &bytes, &tmp))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
}

/// Runs the check when `--val` is given, then renames `tmp` to the output.
fn check_then_rename(
    args: &ExportArgs,
    ck: &checkpoint::Loaded,
    bytes: &[u8],
    tmp: &std::path::Path,
) -> Result<ExportReport> {
    let mut report = ExportReport {
        out: args.out.clone(),
        bytes: bytes.len() as u64,
        images: 0,
        engine: args.engine,
        tch_top1: None,
        core_top1: None,
        disagreements: 0,
        max_rel_logit_diff: None,
    };
    if let Some(val) = &args.val {
        let src = val_source(ck, val, args.data.as_deref(), args.limit)?;
        let check = verify(&args.checkpoint, bytes, src, args.engine, args.limits.get())?;
        report.images = check.images;
        report.tch_top1 = Some(check.tch_top1);
        report.core_top1 = Some(check.core_top1);
        report.disagreements = check.disagreements;
        report.max_rel_logit_diff = Some(check.max_rel);
        let diff = (check.tch_top1 - check.core_top1).abs();
        if diff > args.tolerance {
            anyhow::bail!(
                "export check failed: tch top-1 {:.3}% vs core {:?} top-1 {:.3}% on {} images (difference {:.3} > {} points)",
                check.tch_top1,
                args.engine,
                check.core_top1,
                check.images,
                diff,
                args.tolerance
            );
        }
    }
    std::fs::rename(tmp, &args.out)
        .with_context(|| format!("rename {} -> {}", tmp.display(), args.out.display()))?;
    Ok(report)
}

/// Evaluation data for the check, preprocessed as the training run's evaluation was
/// (normalisation from the checkpoint's `tinyvit.input` metadata).
fn val_source(
    ck: &checkpoint::Loaded,
    val: &str,
    data: Option<&str>,
    limit: Option<usize>,
) -> Result<Arc<dyn Source>> {
    train::validation_source(
        val,
        data,
        limit,
        ck.config.in_chans,
        ck.config.img_size,
        ck.input.unwrap_or_default(),
    )
}

/// Result of running tch and a core engine over the same images.
#[derive(Clone, Debug, PartialEq)]
pub struct Check {
    pub images: u64,
    pub tch_top1: f64,
    pub core_top1: f64,
    pub disagreements: u64,
    pub max_rel: f64,
}

/// Runs the checkpoint in tch (eval) and the `.tvb` bytes in a core engine over `src`.
pub fn verify(
    ckpt: &Path,
    tvb_bytes: &[u8],
    src: Arc<dyn Source>,
    which: EngineArg,
    limits: engine::Limits,
) -> Result<Check> {
    let (_vs, model) = checkpoint::load_model(ckpt, None, Device::Cpu)?;
    let parsed = tvb::parse(tvb_bytes).map_err(|e| anyhow::anyhow!("parse written .tvb: {e}"))?;
    let blob = parsed.to_blob();
    let cfg = *parsed.config();
    let weights = Weights::new(&cfg, &blob)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .with_limits(limits);
    let hint = crate::infer::LIMIT_HINT;
    let (fast, arena_len) = match which {
        EngineArg::Fast => (
            Some(FastModel::new(&weights).map_err(|e| anyhow::anyhow!("{e}{hint}"))?),
            0,
        ),
        EngineArg::Exact => {
            let plan = limits
                .check_exact(&cfg)
                .map_err(|e| anyhow::anyhow!("{e}{hint}"))?;
            (None, plan.total())
        }
    };
    let mut arena = vec![0f32; arena_len];
    let nc = cfg.num_classes as usize;
    let order = Arc::new((0..src.len()).collect::<Vec<_>>());
    let (mut n, mut hit_t, mut hit_c, mut dis, mut max_rel) = (0u64, 0u64, 0u64, 0u64, 0f64);
    for b in Loader::new(src, 0, order, 64, false, 0, 2, 2) {
        let b = b?;
        let labels: Vec<i64> =
            Vec::try_from(b.labels.as_ref().context("validation data has no labels")?)?;
        let t_logits = tch::no_grad(|| model.forward(&b.images, Mode::EVAL));
        let t_logits: Vec<f32> = Vec::try_from(t_logits.view([-1]))?;
        let input: Vec<f32> = Vec::try_from(b.images.view([-1]))?;
        let mut c_logits = vec![0f32; t_logits.len()];
        match &fast {
            Some(f) => f
                .forward(&input, &mut c_logits)
                .map_err(|e| anyhow::anyhow!("fast engine: {e}"))?,
            None => {
                let per = input.len() / labels.len();
                for (k, out) in c_logits.chunks_exact_mut(nc).enumerate() {
                    engine::forward(&weights, &input[k * per..(k + 1) * per], &mut arena, out)
                        .map_err(|e| anyhow::anyhow!("exact engine: {e}"))?;
                }
            }
        }
        for (k, &y) in labels.iter().enumerate() {
            let t = &t_logits[k * nc..(k + 1) * nc];
            let c = &c_logits[k * nc..(k + 1) * nc];
            let (at, ac) = (vectors::argmax(t), vectors::argmax(c));
            hit_t += (at as i64 == y) as u64;
            hit_c += (ac as i64 == y) as u64;
            dis += (at != ac) as u64;
            let scale = t
                .iter()
                .fold(1e-6f32, |m, v| if v.abs() > m { v.abs() } else { m });
            for (a, b) in t.iter().zip(c) {
                let r = ((a - b).abs() / scale) as f64;
                if r > max_rel {
                    max_rel = r;
                }
            }
            n += 1;
        }
    }
    ensure!(n > 0, "no validation images");
    Ok(Check {
        images: n,
        tch_top1: 100.0 * hit_t as f64 / n as f64,
        core_top1: 100.0 * hit_c as f64 / n as f64,
        disagreements: dis,
        max_rel,
    })
}
