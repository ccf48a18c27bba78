//! `tinyvit export`: a trained checkpoint to a deployable `.tvb` (BatchNorm folded), verified
//! against libtorch.
//!
//! The checkpoint's official-name tensors are folded by the core
//! ([`tinyvit_core::engine::fold::fold_state_dict`], through the one host call of it,
//! [`crate::import::fold`]) and written with
//! [`tinyvit_core::tvb::write_with_contract`], with the checkpoint's input contract
//! (`tinyvit.input`; flags override it, files without one get ImageNet's normalisation and a
//! notice). With `--val SPEC` the written file is parsed back and run by a
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
    /// Architecture preset or FILE.toml: needed for checkpoints without `tinyvit.config`
    /// metadata; one that contradicts the recorded network is an error.
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
    /// The microcontroller preset whose board budget the model must fit (`tiny_vit_mcu_m4`,
    /// `tiny_vit_mcu_h7`, or `m4`, `h7`): the export fails when the file or the arena exceeds
    /// it. Without it, a network of an MCU preset's shape is compared with that preset's
    /// budget and a warning gives the numbers.
    #[arg(long)]
    pub mcu: Option<String>,
    /// Overrides of the checkpoint's input contract (written into the `.tvb`).
    #[command(flatten)]
    pub contract: crate::contract::ContractArgs,
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
    /// Whether the file was checked against libtorch (`--val` given, at least one image).
    pub checked: bool,
    /// Top-1 agreement of the core engine with libtorch, in percent (the check on unlabelled
    /// data, where there is no accuracy).
    pub agreement: Option<f64>,
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
        Some(a) => Some(crate::arch::resolve(a)?),
        None => None,
    };
    let ck = checkpoint::load(&args.checkpoint, fallback.as_ref())?;
    let cfg = ck.config;
    if let (Some(a), Some(p)) = (&args.arch, &fallback) {
        ensure!(
            import::same_network(p, &cfg),
            "--arch {a} (widths {:?}, depths {:?}) contradicts checkpoint {}, which records \
             widths {:?}, depths {:?}",
            p.embed_dims,
            p.depths,
            args.checkpoint.display(),
            cfg.embed_dims,
            cfg.depths
        );
    }
    let contract = args.contract.resolve(
        ck.input.clone(),
        &cfg,
        &format!("checkpoint {}", args.checkpoint.display()),
    )?;
    let blob = import::state_dict_of(&ck.tensors)
        .and_then(|sd| {
            import::check_finite_state_dict(&sd)?;
            let blob = import::fold(&sd, &cfg)?;
            import::check_finite(&cfg, &blob)?;
            Ok(blob)
        })
        .with_context(|| format!("checkpoint {}", args.checkpoint.display()))?;
    let bytes = import::tvb_bytes(&cfg, &blob, Some(&contract))?;
    check_budget(&cfg, bytes.len() as u64, args.mcu.as_deref())?;
    let tmp = args.out.with_extension("tvb.tmp");
    // Any failure from here on (a full disk, the check) removes the temporary file.
    std::fs::write(&tmp, &bytes)
        .with_context(|| format!("write {}", tmp.display()))
        .and_then(|_| check_then_rename(args, &ck, &contract, &bytes, &tmp))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
}

/// Runs the check when `--val` is given, then renames `tmp` to the output.
fn check_then_rename(
    args: &ExportArgs,
    ck: &checkpoint::Loaded,
    contract: &tinyvit_core::contract::Contract,
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
        checked: false,
        agreement: None,
    };
    if let Some(val) = &args.val {
        let src = val_source(ck, contract, val, args.data.as_deref(), args.limit)?;
        let check = verify(&args.checkpoint, bytes, src, args.engine, args.limits.get())?;
        report.images = check.images;
        report.tch_top1 = check.tch_top1;
        report.core_top1 = check.core_top1;
        report.disagreements = check.disagreements;
        report.max_rel_logit_diff = Some(check.max_rel);
        report.agreement = Some(check.agreement);
        report.checked = true;
        let failed = match (check.tch_top1, check.core_top1) {
            (Some(t), Some(c)) => ((t - c).abs() > args.tolerance).then(|| {
                format!(
                    "tch top-1 {t:.3}% vs core {:?} top-1 {c:.3}% on {} images (difference \
                     {:.3} > {} points)",
                    args.engine,
                    check.images,
                    (t - c).abs(),
                    args.tolerance
                )
            }),
            // Unlabelled data: the core engine must agree with libtorch's top-1.
            _ => (100.0 - check.agreement > args.tolerance).then(|| {
                format!(
                    "core {:?} top-1 agrees with tch on {:.3}% of {} unlabelled images \
                     ({:.3} > {} points apart)",
                    args.engine,
                    check.agreement,
                    check.images,
                    100.0 - check.agreement,
                    args.tolerance
                )
            }),
        };
        if let Some(why) = failed {
            anyhow::bail!("export check failed: {why}");
        }
        if check.tch_top1.is_none() {
            eprintln!(
                "export: {} has no labels; checked by top-1 agreement with tch: {:.2}% of {} \
                 images",
                val, check.agreement, check.images
            );
        }
    } else {
        eprintln!(
            "export: {} is not checked (give --val SPEC to compare the core engine with \
             libtorch)",
            args.out.display()
        );
    }
    std::fs::rename(tmp, &args.out)
        .with_context(|| format!("rename {} -> {}", tmp.display(), args.out.display()))?;
    Ok(report)
}

/// Compares the model with a microcontroller budget: `mcu` (a preset name) names the budget
/// and exceeding it is an error; without it, a network shaped as an MCU preset is compared with
/// that preset's budget and only warned about. Both messages give the numbers.
pub fn check_budget(cfg: &ModelConfig, model_bytes: u64, mcu: Option<&str>) -> Result<()> {
    let arena = engine::arena_len(cfg).map_err(|e| anyhow::anyhow!("{e}"))? as u64 * 4;
    check_budget_with(cfg, model_bytes, arena, mcu)
}

/// [`check_budget`] for a model whose engine needs `arena` bytes (the int8 engine's differ
/// from the f32 `exact` engine's).
pub fn check_budget_with(
    cfg: &ModelConfig,
    model_bytes: u64,
    arena: u64,
    mcu: Option<&str>,
) -> Result<()> {
    use tinyvit_core::config::{mcu_budget, PRESET_NAMES};
    let (name, strict) = match mcu {
        Some(m) => (m.to_string(), true),
        None => match PRESET_NAMES.iter().find(|n| {
            mcu_budget(n).is_some()
                && ModelConfig::preset(n).is_some_and(|p| import::same_network(&p, cfg))
        }) {
            Some(n) => (n.to_string(), false),
            None => return Ok(()),
        },
    };
    let budget = mcu_budget(&name)
        .with_context(|| format!("--mcu {name}: not a microcontroller preset (m4, h7)"))?;
    let mut over = Vec::new();
    if model_bytes > budget.model_bytes {
        over.push(format!(
            "model {model_bytes} B > {} B of flash",
            budget.model_bytes
        ));
    }
    if arena > budget.arena_bytes {
        over.push(format!("arena {arena} B > {} B of RAM", budget.arena_bytes));
    }
    if over.is_empty() {
        return Ok(());
    }
    let what = format!(
        "{}x{}px, {} classes: {} (budget of {name})",
        cfg.in_chans,
        cfg.img_size,
        cfg.num_classes,
        over.join(", ")
    );
    ensure!(!strict, "the model exceeds its board: {what}");
    eprintln!(
        "warning: the model exceeds the board of its preset: {what}; --mcu makes this an error"
    );
    Ok(())
}

/// Evaluation data for the check, preprocessed as the training run's evaluation was
/// (the input contract: the checkpoint's `tinyvit.input` metadata and the flags).
fn val_source(
    ck: &checkpoint::Loaded,
    contract: &tinyvit_core::contract::Contract,
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
        contract,
    )
}

/// Result of running tch and a core engine over the same images.
#[derive(Clone, Debug, PartialEq)]
pub struct Check {
    pub images: u64,
    /// Accuracies, on labelled data.
    pub tch_top1: Option<f64>,
    pub core_top1: Option<f64>,
    /// Images where both top-1 classes agree, in percent.
    pub agreement: f64,
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
    let mut labelled = true;
    for b in Loader::new(src, 0, order, 64, false, 0, 2, 2) {
        let b = b?;
        let labels: Option<Vec<i64>> = b.labels.as_ref().map(Vec::try_from).transpose()?;
        labelled &= labels.is_some();
        let t_logits = tch::no_grad(|| model.forward(&b.images, Mode::EVAL));
        let t_logits: Vec<f32> = Vec::try_from(t_logits.view([-1]))?;
        let input: Vec<f32> = Vec::try_from(b.images.view([-1]))?;
        let mut c_logits = vec![0f32; t_logits.len()];
        match &fast {
            Some(f) => f
                .forward(&input, &mut c_logits)
                .map_err(|e| anyhow::anyhow!("fast engine: {e}"))?,
            None => {
                let per = input.len() / (t_logits.len() / nc);
                for (k, out) in c_logits.chunks_exact_mut(nc).enumerate() {
                    engine::forward(&weights, &input[k * per..(k + 1) * per], &mut arena, out)
                        .map_err(|e| anyhow::anyhow!("exact engine: {e}"))?;
                }
            }
        }
        for k in 0..t_logits.len() / nc {
            let t = &t_logits[k * nc..(k + 1) * nc];
            let c = &c_logits[k * nc..(k + 1) * nc];
            let (at, ac) = (vectors::argmax(t), vectors::argmax(c));
            if let Some(y) = labels.as_ref().map(|l| l[k]) {
                hit_t += (at as i64 == y) as u64;
                hit_c += (ac as i64 == y) as u64;
            }
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
    ensure!(
        n > 0,
        "the validation data holds no images: the export cannot be checked"
    );
    let pct = |v: u64| 100.0 * v as f64 / n as f64;
    Ok(Check {
        images: n,
        tch_top1: labelled.then(|| pct(hit_t)),
        core_top1: labelled.then(|| pct(hit_c)),
        agreement: pct(n - dis),
        disagreements: dis,
        max_rel,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn board_budgets_fail_under_mcu_and_warn_otherwise() {
        let m4 = ModelConfig::tiny_vit_mcu_m4();
        let bytes = tinyvit_core::params::folded_blob_len(&m4) as u64 * 4 + 400;
        check_budget(&m4, bytes, Some("m4")).unwrap();
        // The case: the M4 body at 224 px with 1000 classes.
        let big = m4.with_img_size(224).with_num_classes(1000);
        let big_bytes = tinyvit_core::params::folded_blob_len(&big) as u64 * 4 + 400;
        let e = format!(
            "{:#}",
            check_budget(&big, big_bytes, Some("m4")).unwrap_err()
        );
        assert!(e.contains("arena") && e.contains("196608 B of RAM"), "{e}");
        assert!(
            e.contains("model") && e.contains("800000 B of flash"),
            "{e}"
        );
        // Without --mcu: a warning only.
        check_budget(&big, big_bytes, None).unwrap();
        assert!(check_budget(&m4, bytes, Some("tiny_vit_5m_224")).is_err());
        let h7 = ModelConfig::tiny_vit_mcu_h7();
        let h7_bytes = tinyvit_core::params::folded_blob_len(&h7) as u64 * 4;
        assert!(check_budget(&h7, h7_bytes, Some("m4")).is_err());
        check_budget(&h7, h7_bytes, Some("tiny_vit_mcu_h7")).unwrap();
    }
}
