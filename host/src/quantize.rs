//! `tinyvit quantize`: an f32 model to the int8 `.tvb` (format version 4) of
//! [`tinyvit_core::int8`].
//!
//! Steps of the command, in order:
//! 1. **Model**: a `.tvb` (version 1) is read as it is; a checkpoint goes through the fold that
//!    `tinyvit export` uses ([`crate::import::fold`], [`tinyvit_core::tvb::write`]). The input
//!    normalisation comes from the checkpoint's `tinyvit.input`; a `.tvb` does not record it, so
//!    `--norm` names it.
//! 2. **Calibration images**: `--calib-images N` evaluation views (the transform of
//!    `tinyvit infer` and of the device) of the data SPEC, spread evenly over it; or, with
//!    `--logits DIR`, the augmented views the teacher saw, replayed from the store (sample
//!    `k` of the calibration set is view `k mod epochs` of an evenly spread sample).
//! 3. **Quantisation** by the core ([`quantize::quantize_tvb`]): activation ranges by
//!    `--method` (default `max`, the core's measured choice; `mse` and `pP` percentiles too).
//! 4. **Comparison** on `--val SPEC` (optional): the f32 model (fast engine) and the int8 model
//!    (exact integer engine) over every image: top-1 of each when the data has labels, and
//!    their agreement (same top-1 class) in every case.
//! 5. **Output**: written to `OUT.tmp`, fsynced, renamed over `OUT` only when every step
//!    succeeded, so a failure never leaves a half-written or unchecked file under `OUT`.
//!
//! Int8 files run in `tinyvit infer` through [`crate::infer_int8`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use tinyvit_core::aug::{IMAGENET_MEAN, IMAGENET_STD};
use tinyvit_core::config::ModelConfig;
use tinyvit_core::engine::{fast::FastModel, input_len, Weights};
use tinyvit_core::int8::{self, quantize};
use tinyvit_core::{tvb, vectors};

use crate::checkpoint;
use crate::data;
use crate::train::sources::{channels_of, AugSource, EvalSource};
use crate::train::store_seeds::{self, Given};
use crate::train::Source;
use tinyvit_core::contract::{ClassNames, Contract, InputContract};

/// Command-line arguments of `tinyvit quantize`.
#[derive(clap::Args, Clone, Debug)]
pub struct QuantizeArgs {
    /// f32 model: a `.tvb` (version 1) or a tinyvit checkpoint (`model.safetensors`).
    #[arg(long)]
    pub model: PathBuf,
    /// Calibration data SPEC (with `--logits`: the data the store was made from).
    #[arg(long)]
    pub calib: String,
    /// Calibration images.
    #[arg(long, default_value_t = 256)]
    pub calib_images: usize,
    /// Calibrate on the augmented views replayed from this logit store instead of evaluation
    /// views.
    #[arg(long)]
    pub logits: Option<PathBuf>,
    /// Output int8 `.tvb`.
    #[arg(long)]
    pub out: PathBuf,
    /// Compare f32 and int8 on this data (SPEC, or `split:N` of `--calib`).
    #[arg(long)]
    pub val: Option<String>,
    /// Compare on at most this many `--val` images.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Input normalisation of a `.tvb` model: `imagenet`, `clip` or `half` (mean = std = 0.5).
    /// Checkpoints carry theirs.
    #[arg(long)]
    pub norm: Option<String>,
    /// Architecture preset or FILE.toml, only for checkpoints without `tinyvit.config`
    /// metadata.
    #[arg(long)]
    pub arch: Option<String>,
    /// Activation ranges: `max`, `mse`, or a percentile of the absolute values (`p99.99`).
    #[arg(long, default_value = "max")]
    pub method: String,
    /// The microcontroller preset whose board budget the int8 model must fit (`m4`, `h7`, or
    /// a preset name): quantize fails when the file or the int8 arena exceeds it; without it a
    /// network of an MCU preset's shape is compared with that preset's budget, with a warning.
    #[arg(long)]
    pub mcu: Option<String>,
}

/// What `tinyvit quantize` did and measured (one JSON line on stdout).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuantizeReport {
    pub out: PathBuf,
    /// Bytes of the f32 `.tvb` (written by the fold for a checkpoint).
    pub f32_bytes: u64,
    /// Bytes of the int8 `.tvb`.
    pub int8_bytes: u64,
    /// Int8 engine arena, bytes.
    pub int8_arena_bytes: u64,
    pub calib_images: u64,
    /// `eval` (evaluation views) or `store` (replayed training views).
    pub calib_views: String,
    pub method: String,
    /// Images compared (0 without `--val`).
    pub val_images: u64,
    /// Whether the comparison data had labels (top-1 figures are absent otherwise).
    pub labelled: bool,
    pub f32_top1: Option<f64>,
    pub int8_top1: Option<f64>,
    /// Images whose f32 and int8 top-1 classes agree, percent.
    pub agreement: Option<f64>,
    pub seconds: f64,
}

/// `tinyvit quantize`: runs, prints a summary on stderr and the report as one JSON line on
/// stdout.
pub fn main(args: QuantizeArgs) -> Result<()> {
    let r = run(&args)?;
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2} %"));
    eprintln!(
        "{} -> {}: {} -> {} bytes ({:.2}x), int8 arena {} bytes; {} calibration images \
         ({} views), ranges `{}`",
        args.model.display(),
        r.out.display(),
        r.f32_bytes,
        r.int8_bytes,
        r.int8_bytes as f64 / r.f32_bytes as f64,
        r.int8_arena_bytes,
        r.calib_images,
        r.calib_views,
        r.method
    );
    if r.val_images > 0 {
        eprintln!(
            "--val {}: {} images, f32 top-1 {}, int8 top-1 {}, agreement {}{}",
            args.val.as_deref().unwrap_or_default(),
            r.val_images,
            pct(r.f32_top1),
            pct(r.int8_top1),
            pct(r.agreement),
            if r.labelled {
                ""
            } else {
                " (the data has no labels: agreement only)"
            }
        );
    }
    println!("{}", serde_json::to_string(&r)?);
    Ok(())
}

/// The range method named on the command line.
pub fn parse_method(s: &str) -> Result<quantize::RangeMethod> {
    use quantize::RangeMethod;
    match s {
        "max" => Ok(RangeMethod::Max),
        "mse" => Ok(RangeMethod::Mse),
        _ => {
            let p: f64 = s
                .strip_prefix('p')
                .and_then(|p| p.parse().ok())
                .with_context(|| {
                    format!("--method `{s}`: expected max, mse or a percentile like p99.99")
                })?;
            ensure!(
                p > 50.0 && p <= 100.0,
                "--method `{s}`: the percentile must be in (50, 100]"
            );
            Ok(RangeMethod::Percentile(p))
        }
    }
}

/// A named input normalisation (`--norm`): mean and std.
pub fn parse_norm(s: &str) -> Result<([f32; 3], [f32; 3])> {
    // The one table of named normalisations (the augmentation config's), as `infer` reads it.
    crate::contract::parse_norm(
        (IMAGENET_MEAN, IMAGENET_STD),
        Some(s),
        None,
        None,
        crate::contract::NORM_FLAGS,
    )
}

/// The contract of `cfg` normalised with `norm` (mean, std), with the project's evaluation
/// transform and no class names: what a model without a recorded contract gets from `--norm`.
fn contract_from_norm(cfg: &ModelConfig, (mean, std): ([f32; 3], [f32; 3])) -> Contract {
    Contract::from_parts(
        &InputContract::for_model(cfg, mean, std),
        ClassNames::default(),
    )
}

/// An f32 model ready to quantise.
pub struct F32Model {
    pub config: ModelConfig,
    /// The f32 `.tvb` bytes.
    pub tvb: Vec<u8>,
    /// Its folded weights.
    pub blob: Vec<f32>,
    /// Its input contract (size, normalisation, evaluation view, class names).
    pub input: Contract,
}

/// Reads `--model` (a `.tvb` or a checkpoint) with its normalisation.
pub fn load_f32(path: &Path, norm: Option<&str>, arch: Option<&str>) -> Result<F32Model> {
    let given = norm.map(parse_norm).transpose()?;
    if read_prefix(path)?.starts_with(&tvb::MAGIC) {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        match tvb::kind(&bytes).map_err(|e| anyhow!("{}: {e}", path.display()))? {
            tvb::Kind::Int8 => bail!(
                "{}: already an int8 model (format version {}); quantize takes an f32 .tvb or a \
                 checkpoint",
                path.display(),
                int8::file::VERSION
            ),
            tvb::Kind::F32 => {}
        }
        let t = tvb::parse(&bytes).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        let cfg = *t.config();
        let input = match (t.contract(), given) {
            (Some(c), Some((mean, std))) if c.mean != mean || c.std != std => bail!(
                "{}: the file's input contract (mean {:?}, std {:?}) disagrees with --norm {}",
                path.display(),
                c.mean,
                c.std,
                norm.unwrap_or_default()
            ),
            (Some(c), _) => Contract::from_parts(c, t.class_names()),
            (None, Some(norm)) => contract_from_norm(&cfg, norm),
            (None, None) => bail!(
                "{}: a .tvb without an input contract does not record its normalisation; give \
                 --norm imagenet|clip|half (what the model was trained with)",
                path.display()
            ),
        };
        let blob = t.to_blob();
        // A contract given by --norm is written into the model, so that the int8 file records
        // it as a checkpoint's would.
        let tvb = if t.contract().is_some() {
            bytes
        } else {
            tvb::write_with_contract(&cfg, &blob, Some((&input.input(), &input.class_names)))
                .map_err(|e| anyhow!("{}: write .tvb: {e}", path.display()))?
        };
        return Ok(F32Model {
            config: cfg,
            blob,
            tvb,
            input,
        });
    }
    let fallback = match arch {
        Some(a) => Some(crate::arch::resolve(a)?),
        None => None,
    };
    let ck = checkpoint::load(path, fallback.as_ref())?;
    let input = match (ck.input, given) {
        (Some(c), Some((mean, std))) if c.mean != mean || c.std != std => bail!(
            "{}: metadata `tinyvit.input` (mean {:?}, std {:?}) disagrees with --norm {}",
            path.display(),
            c.mean,
            c.std,
            norm.unwrap_or_default()
        ),
        (Some(c), _) => c,
        (None, Some(norm)) => contract_from_norm(&ck.config, norm),
        (None, None) => bail!(
            "{}: no metadata `tinyvit.input` (input normalisation); give --norm \
             imagenet|clip|half",
            path.display()
        ),
    };
    let cfg = ck.config;
    let blob = crate::import::state_dict_of(&ck.tensors)
        .and_then(|sd| crate::import::fold(&sd, &cfg))
        .with_context(|| format!("checkpoint {}", path.display()))?;
    // The contract travels into the f32 .tvb and from there into the int8 file.
    let ic = input.input();
    let bytes = tvb::write_with_contract(&cfg, &blob, Some((&ic, &input.class_names)))
        .map_err(|e| anyhow!("{}: write .tvb: {e}", path.display()))?;
    Ok(F32Model {
        config: cfg,
        tvb: bytes,
        blob,
        input,
    })
}

/// The first 12 bytes of a file (fewer when it is shorter).
pub(crate) fn read_prefix(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read as _;
    let f = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut head = Vec::with_capacity(12);
    f.take(12)
        .read_to_end(&mut head)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(head)
}

/// `n` indices spread evenly over `0..len` (all of them when `n >= len`).
fn spread(len: usize, n: usize) -> Vec<usize> {
    if n >= len {
        return (0..len).collect();
    }
    (0..n).map(|k| k * len / n).collect()
}

/// The calibration images (`[n, C, S, S]` normalised) and how they were viewed.
fn calibration(args: &QuantizeArgs, m: &F32Model) -> Result<(Vec<f32>, &'static str)> {
    ensure!(args.calib_images > 0, "--calib-images must be at least 1");
    let cfg = &m.config;
    let ds = data::open(&args.calib).with_context(|| format!("--calib {}", args.calib))?;
    let c = channels_of(ds.as_ref()).with_context(|| format!("--calib {}", args.calib))?;
    ensure!(
        c == cfg.in_chans,
        "--calib {}: the images have {c} channels, the model takes {}",
        args.calib,
        cfg.in_chans
    );
    let picks = spread(ds.len(), args.calib_images);
    let (source, views): (Arc<dyn Source>, _) = match &args.logits {
        None => (
            Arc::new(EvalSource {
                ds,
                indices: picks.clone(),
                size: cfg.img_size,
                channels: c as usize,
                mean: m.input.mean,
                std: m.input.std,
                crop_fraction: m.input.crop_fraction,
                interpolation: m.input.interpolation,
            }),
            "eval",
        ),
        Some(dir) => {
            let given = Given {
                num_classes: true,
                img_size: true,
                in_chans: true,
            };
            let st = store_seeds::open(dir, ds.as_ref(), cfg, given)?;
            ensure!(
                st.aug.mean == m.input.mean && st.aug.std == m.input.std,
                "--logits {}: the store's views are normalised with mean {:?} std {:?}, the \
                 model's inputs with mean {:?} std {:?}",
                dir.display(),
                st.aug.mean,
                st.aug.std,
                m.input.mean,
                m.input.std
            );
            (
                Arc::new(AugSource {
                    ds,
                    indices: picks.clone(),
                    aug: st.aug,
                    seeds: Arc::new(st.seeds),
                    channels: c as usize,
                    mix: None,
                }),
                "store",
            )
        }
    };
    let per = input_len(cfg).map_err(|e| anyhow!("{e}"))?;
    let mut images = vec![0f32; per * picks.len()];
    for (k, out) in images.chunks_exact_mut(per).enumerate() {
        // Store views cycle over the stored epochs; an evaluation view has no epoch.
        let epoch = if views == "store" { k as u64 } else { 0 };
        source
            .sample(epoch, k, out)
            .with_context(|| format!("--calib {}: calibration image {k}", args.calib))?;
    }
    Ok((images, views))
}

/// f32 against int8 over a data source.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Comparison {
    pub images: u64,
    /// Images with a label (top-1 is over these).
    pub labelled: u64,
    pub f32_hits: u64,
    pub int8_hits: u64,
    /// Images whose two top-1 classes agree.
    pub agree: u64,
}

impl Comparison {
    fn add(&mut self, o: &Comparison) {
        self.images += o.images;
        self.labelled += o.labelled;
        self.f32_hits += o.f32_hits;
        self.int8_hits += o.int8_hits;
        self.agree += o.agree;
    }
}

/// Runs the f32 weights (fast engine) and the int8 model (exact engine) over every image of
/// `src`, on all CPUs.
pub fn compare(
    cfg: &ModelConfig,
    blob: &[f32],
    q8: &int8::Model<'_>,
    src: Arc<dyn Source>,
) -> Result<Comparison> {
    let n = src.len();
    let threads = std::thread::available_parallelism()
        .map(|v| v.get())
        .unwrap_or(1)
        .clamp(1, n.max(1));
    let chunk = n.div_ceil(threads).max(1);
    let parts: Vec<Result<Comparison>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .step_by(chunk)
            .map(|start| {
                let src = Arc::clone(&src);
                s.spawn(move || {
                    compare_range(cfg, blob, q8, src.as_ref(), start..n.min(start + chunk))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow!("a comparison thread panicked")))
            })
            .collect()
    });
    let mut total = Comparison::default();
    for p in parts {
        total.add(&p?);
    }
    Ok(total)
}

fn compare_range(
    cfg: &ModelConfig,
    blob: &[f32],
    q8: &int8::Model<'_>,
    src: &dyn Source,
    range: std::ops::Range<usize>,
) -> Result<Comparison> {
    let w = Weights::new(cfg, blob).map_err(|e| anyhow!("{e}"))?;
    let fast = FastModel::new(&w).map_err(|e| anyhow!("fast engine: {e}"))?;
    let per = input_len(cfg).map_err(|e| anyhow!("{e}"))?;
    let nc = cfg.num_classes as usize;
    let mut arena = vec![0i32; int8::arena_len(cfg).map_err(|e| anyhow!("{e}"))?];
    let (mut qin, mut qout) = (vec![0i8; per], vec![0i32; nc]);
    let mut c = Comparison::default();
    const BATCH: usize = 32;
    let ids: Vec<usize> = range.collect();
    for b in ids.chunks(BATCH) {
        let mut x = vec![0f32; per * b.len()];
        let mut labels = Vec::with_capacity(b.len());
        for (k, &i) in b.iter().enumerate() {
            labels.push(src.sample(0, i, &mut x[k * per..(k + 1) * per])?.label);
        }
        let mut y = vec![0f32; nc * b.len()];
        fast.forward(&x, &mut y)
            .map_err(|e| anyhow!("fast engine: {e}"))?;
        for (k, label) in labels.iter().enumerate() {
            int8::quantize_input(q8, &x[k * per..(k + 1) * per], &mut qin);
            int8::run(q8, &qin, &mut arena, &mut qout).map_err(|e| anyhow!("int8 engine: {e}"))?;
            let a = vectors::argmax(&y[k * nc..(k + 1) * nc]) as usize;
            let q = argmax_i32(&qout);
            c.images += 1;
            c.agree += (a == q) as u64;
            if let Some(l) = label {
                c.labelled += 1;
                c.f32_hits += (a == *l as usize) as u64;
                c.int8_hits += (q == *l as usize) as u64;
            }
        }
    }
    Ok(c)
}

/// Index of the largest value (the first on ties), as [`vectors::argmax`] does for floats.
pub fn argmax_i32(v: &[i32]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

/// Runs `tinyvit quantize`.
pub fn run(args: &QuantizeArgs) -> Result<QuantizeReport> {
    let start = Instant::now();
    let method = parse_method(&args.method)?;
    let m = load_f32(&args.model, args.norm.as_deref(), args.arch.as_deref())?;
    let (images, views) = calibration(args, &m)?;
    let calib_images = (images.len() / input_len(&m.config).map_err(|e| anyhow!("{e}"))?) as u64;
    let opts = quantize::Options {
        method,
        ..quantize::Options::default()
    };
    let q8 = quantize::quantize_tvb(&m.tvb, &images, &opts)
        .map_err(|e| anyhow!("quantising {}: {e}", args.model.display()))?;
    let model = int8::parse(&q8).map_err(|e| anyhow!("the quantised model does not parse: {e}"))?;
    let arena = int8::arena_len(&m.config).map_err(|e| anyhow!("{e}"))? as u64 * 4;
    crate::export::check_budget_with(&m.config, q8.len() as u64, arena, args.mcu.as_deref())?;
    let mut report = QuantizeReport {
        out: args.out.clone(),
        f32_bytes: m.tvb.len() as u64,
        int8_bytes: q8.len() as u64,
        int8_arena_bytes: arena,
        calib_images,
        calib_views: views.into(),
        method: args.method.clone(),
        val_images: 0,
        labelled: false,
        f32_top1: None,
        int8_top1: None,
        agreement: None,
        seconds: 0.0,
    };
    if let Some(val) = &args.val {
        let src = crate::train::validation_source(
            val,
            Some(args.calib.as_str()),
            args.limit,
            m.config.in_chans,
            m.config.img_size,
            &m.input,
        )
        .with_context(|| format!("--val {val}"))?;
        ensure!(!src.is_empty(), "--val {val}: no images");
        let c = compare(&m.config, &m.blob, &model, src).with_context(|| format!("--val {val}"))?;
        let pct = |a: u64, n: u64| 100.0 * a as f64 / n as f64;
        report.val_images = c.images;
        report.agreement = Some(pct(c.agree, c.images));
        // Top-1 only when every image has its label.
        report.labelled = c.labelled == c.images;
        if report.labelled {
            report.f32_top1 = Some(pct(c.f32_hits, c.labelled));
            report.int8_top1 = Some(pct(c.int8_hits, c.labelled));
        }
    }
    let mut tmp = args.out.clone().into_os_string();
    tmp.push(".tmp");
    crate::store::write_atomic(Path::new(&tmp), &args.out, &q8)?;
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_and_norms_parse_or_name_the_flag() {
        use quantize::RangeMethod;
        assert_eq!(parse_method("max").unwrap(), RangeMethod::Max);
        assert_eq!(parse_method("mse").unwrap(), RangeMethod::Mse);
        assert_eq!(
            parse_method("p99.99").unwrap(),
            RangeMethod::Percentile(99.99)
        );
        for bad in ["p", "p20", "p100.5", "median"] {
            let e = parse_method(bad).unwrap_err().to_string();
            assert!(e.contains("--method"), "{bad}: {e}");
        }
        assert_eq!(parse_norm("half").unwrap().0, [0.5; 3]);
        assert_eq!(parse_norm("imagenet").unwrap().1, IMAGENET_STD);
        assert!(parse_norm("none")
            .unwrap_err()
            .to_string()
            .contains("--norm"));
    }

    #[test]
    fn spread_covers_the_data_evenly() {
        assert_eq!(spread(10, 4), [0, 2, 5, 7]);
        assert_eq!(spread(3, 8), [0, 1, 2]);
        assert!(spread(0, 8).is_empty());
    }

    #[test]
    fn argmax_takes_the_first_of_ties() {
        assert_eq!(argmax_i32(&[1, 5, 5, -2]), 1);
        assert_eq!(argmax_i32(&[-3]), 0);
    }
}
