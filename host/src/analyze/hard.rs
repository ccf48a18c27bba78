//! `tinyvit analyze hard`: the samples whose given label lies outside the teacher's top-k.
//!
//! The teacher's opinion of a sample comes from one of two places:
//! - a logit store (`--logits DIR`, no teacher forward at all): the eq. 2 target of every
//!   stored epoch (`softlabel::smooth_target`, the K stored probabilities with the remainder
//!   spread over the other classes), averaged over the epochs; the views are the augmented
//!   ones the store was written from;
//! - a teacher file (`--teacher FILE`): its softmax on the evaluation view (resize to
//!   `size / 0.875`, centre crop), as `tinyvit infer` would see the image.
//!
//! A sample is hard when its label is not among the k most probable classes. Hard samples are
//! ranked by the probability the teacher gives their label, lowest first: the likeliest label
//! errors lead the list.
//!
//! Outputs in `--out DIR`: `hard.tsv` (the ranked list), `exclude.txt` (an exclusion list for
//! `tinyvit train --exclude`), `contact.png` (the first `--sheet` samples with the given and
//! the teacher's class), `summary.json` (the counts, overall and per class).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use tinyvit_core::softlabel;

use super::ClassNames;
use crate::data::{self, Dataset, Image};
use crate::draw::{self, Canvas};
use crate::store::LogitStore;
use crate::train::loader::Source;
use crate::train::sources::EvalSource;

/// Arguments of `tinyvit analyze hard`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Labelled data SPEC to examine.
    #[arg(long)]
    pub data: String,
    /// Logit store written over `--data` by `tinyvit save-logits`.
    #[arg(long, conflicts_with = "teacher", required_unless_present = "teacher")]
    pub logits: Option<PathBuf>,
    /// Teacher file (TorchScript `.pt` or TinyViT checkpoint), run on the evaluation views.
    #[arg(long)]
    pub teacher: Option<PathBuf>,
    /// A label outside the teacher's top-k makes a sample hard.
    #[arg(long, default_value_t = 5)]
    pub topk: usize,
    /// Folder for `hard.tsv`, `exclude.txt` and `contact.png`.
    #[arg(long, default_value = "hard-samples")]
    pub out: PathBuf,
    /// Samples on the contact sheet (hardest first).
    #[arg(long, default_value_t = 48)]
    pub sheet: usize,
    /// Class names: a file with one per line, or `fashion-mnist` (default: the dataset's own
    /// when known).
    #[arg(long)]
    pub class_names: Option<PathBuf>,
    /// Teacher input side (default: the checkpoint's, else 224).
    #[arg(long)]
    pub input_size: Option<u32>,
    /// Teacher normalisation: imagenet, clip or half.
    #[arg(long)]
    pub norm: Option<String>,
    /// Teacher normalisation mean `r,g,b` (0..1).
    #[arg(long)]
    pub mean: Option<String>,
    /// Teacher normalisation standard deviation `r,g,b`.
    #[arg(long)]
    pub std: Option<String>,
    /// Teacher input channels (default: the data's).
    #[arg(long)]
    pub channels: Option<u32>,
    #[arg(long, value_enum, default_value = "auto")]
    pub device: crate::device::DeviceArg,
    /// Images per teacher forward.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
}

/// One hard sample.
#[derive(Clone, Debug, PartialEq)]
pub struct HardSample {
    /// Index in the dataset.
    pub index: usize,
    pub label: u32,
    /// The teacher's probability of `label`.
    pub label_prob: f32,
    /// The teacher's most probable class and its probability.
    pub top1: (u32, f32),
}

/// What `analyze hard` found.
#[derive(Debug)]
pub struct HardReport {
    /// Samples examined (those the teacher has an opinion of).
    pub examined: usize,
    /// Hard samples, hardest first.
    pub hard: Vec<HardSample>,
    /// Per class: (samples examined, hard samples).
    pub per_class: Vec<(usize, usize)>,
}

/// Judges one sample from the teacher's class probabilities `p`.
pub fn judge(index: usize, label: u32, p: &[f32], k: usize) -> Option<HardSample> {
    // Rank: probability descending, class index ascending on ties (a fixed order).
    let mut order: Vec<usize> = (0..p.len()).collect();
    order.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
    let inside = order.iter().take(k).any(|&c| c == label as usize);
    (!inside).then(|| HardSample {
        index,
        label,
        label_prob: p.get(label as usize).copied().unwrap_or(0.0),
        top1: (order[0] as u32, p[order[0]]),
    })
}

/// Collects the verdicts: `probs(i)` gives the teacher's probabilities of sample `i`, or
/// `None` when the teacher has none (a missing store record).
fn collect(
    labels: &[u32],
    classes: usize,
    k: usize,
    mut probs: impl FnMut(usize) -> Result<Option<Vec<f32>>>,
) -> Result<HardReport> {
    let mut r = HardReport {
        examined: 0,
        hard: Vec::new(),
        per_class: vec![(0, 0); classes],
    };
    for (i, &label) in labels.iter().enumerate() {
        let Some(p) = probs(i)? else { continue };
        r.examined += 1;
        let c = label as usize;
        if c >= classes {
            bail!("sample {i}: label {label} but the teacher has {classes} classes");
        }
        r.per_class[c].0 += 1;
        if let Some(h) = judge(i, label, &p, k) {
            r.per_class[c].1 += 1;
            r.hard.push(h);
        }
    }
    r.hard.sort_by(|a, b| {
        a.label_prob
            .total_cmp(&b.label_prob)
            .then(a.index.cmp(&b.index))
    });
    Ok(r)
}

/// The teacher's mean eq. 2 target of every sample over the store's epochs.
fn from_store(dir: &Path, ds: &dyn Dataset, labels: &[u32], k: usize) -> Result<HardReport> {
    let store = LogitStore::open_for(dir, &ds.fingerprint(), None, None)?;
    let classes = store.manifest().num_classes as usize;
    let epochs = store.epochs();
    if epochs.is_empty() {
        bail!("logit store {}: holds no complete epoch", dir.display());
    }
    let kk = store.manifest().topk as usize;
    let (mut idx, mut val) = (vec![0u32; kk], vec![0f32; kk]);
    let mut dense = vec![0f32; classes];
    collect(labels, classes, k, |i| {
        let mut sum = vec![0f32; classes];
        let mut seen = 0u32;
        for &e in &epochs {
            let rec = store.record(e, i as u64)?;
            if rec.is_missing() {
                continue;
            }
            let n = rec.read_into(&mut idx, &mut val).map_err(|err| {
                anyhow::anyhow!("{}: epoch {e}, sample {i}: {err}", dir.display())
            })?;
            softlabel::smooth_target(&idx[..n], &val[..n], &mut dense).map_err(|err| {
                anyhow::anyhow!("{}: epoch {e}, sample {i}: {err}", dir.display())
            })?;
            for (s, d) in sum.iter_mut().zip(&dense) {
                *s += d;
            }
            seen += 1;
        }
        Ok((seen > 0).then(|| sum.iter().map(|s| s / seen as f32).collect()))
    })
}

/// The teacher's softmax on every sample's evaluation view.
fn from_teacher(
    a: &Args,
    path: &Path,
    ds: &Arc<dyn Dataset>,
    labels: &[u32],
) -> Result<HardReport> {
    let device = crate::device::resolve(a.device)?;
    let teacher = crate::teacher::load(path, device)?;
    let mut norm = tinyvit_core::aug::preset("light").map_err(|e| anyhow::anyhow!("{e}"))?;
    for (key, v) in [("norm", &a.norm), ("mean", &a.mean), ("std", &a.std)] {
        if let Some(v) = v {
            norm.set(key, v)
                .map_err(|e| anyhow::anyhow!("--{key} {v}: {e}"))?;
        }
    }
    let channels = match a.channels {
        Some(c) => c,
        None => crate::train::sources::channels_of(ds.as_ref())?,
    };
    let size = a
        .input_size
        .or(teacher.config().map(|c| c.img_size))
        .unwrap_or(224);
    let src = EvalSource {
        ds: Arc::clone(ds),
        indices: (0..ds.len()).collect(),
        size,
        channels: channels as usize,
        mean: norm.mean,
        std: norm.std,
        crop_fraction: tinyvit_core::aug::EVAL_CROP_PCT,
        interpolation: tinyvit_core::aug::Interpolation::Bicubic,
    };
    let per = (channels * size * size) as usize;
    let bs = a.batch_size.max(1);
    let mut probs: Vec<f32> = Vec::with_capacity(labels.len() * 16);
    let mut classes = 0usize;
    for start in (0..ds.len()).step_by(bs) {
        let n = bs.min(ds.len() - start);
        let mut x = vec![0f32; n * per];
        for (j, chunk) in x.chunks_exact_mut(per).enumerate() {
            src.sample(0, start + j, chunk)?;
        }
        let t = tch::Tensor::from_slice(&x).reshape([
            n as i64,
            i64::from(channels),
            i64::from(size),
            i64::from(size),
        ]);
        let p = teacher.probs(&t)?.to_device(tch::Device::Cpu);
        classes = p.size()[1] as usize;
        probs.extend(Vec::<f32>::try_from(p.flatten(0, -1))?);
    }
    collect(labels, classes, a.topk, |i| {
        Ok(Some(probs[i * classes..(i + 1) * classes].to_vec()))
    })
}

/// Runs `tinyvit analyze hard`.
pub fn run(a: &Args) -> Result<HardReport> {
    if a.topk == 0 {
        bail!("--topk must be at least 1");
    }
    let ds = data::open(&a.data).with_context(|| format!("--data {}", a.data))?;
    let labels = super::labels(ds.as_ref())?;
    let report = match (&a.logits, &a.teacher) {
        (Some(dir), _) => from_store(dir, ds.as_ref(), &labels, a.topk)?,
        (None, Some(t)) => from_teacher(a, t, &ds, &labels)?,
        (None, None) => bail!("give --logits DIR or --teacher FILE"),
    };
    let classes = report.per_class.len();
    let names = ClassNames::resolve(a.class_names.as_deref(), ds.as_ref(), classes)?;
    let out = super::out_dir(&a.out)?;
    write_list(&out.join("hard.tsv"), ds.as_ref(), &report, &names)?;
    let excluded: Vec<usize> = {
        let mut v: Vec<usize> = report.hard.iter().map(|h| h.index).collect();
        v.sort_unstable();
        v
    };
    crate::exclusions::write(
        &out.join("exclude.txt"),
        ds.as_ref(),
        &excluded,
        &[format!(
            "samples of {} whose label is outside the teacher's top-{} ({})",
            a.data,
            a.topk,
            match (&a.logits, &a.teacher) {
                (Some(d), _) => format!("logit store {}", d.display()),
                (_, Some(t)) => format!("teacher {}", t.display()),
                _ => String::new(),
            }
        )],
    )?;
    contact_sheet(
        &out.join("contact.png"),
        &ds,
        &report.hard[..report.hard.len().min(a.sheet)],
        &names,
    )?;
    let js = serde_json::json!({
        "examined": report.examined,
        "hard": report.hard.len(),
        "topk": a.topk,
        "per_class": report.per_class.iter().enumerate().map(|(c, &(n, h))| serde_json::json!({
            "class": names.name(c), "samples": n, "hard": h,
        })).collect::<Vec<_>>(),
    });
    let js_path = out.join("summary.json");
    crate::store::write_file(&js_path, serde_json::to_string_pretty(&js)?.as_bytes())?;
    print!("{}", summary(&report, &names, a.topk, ds.as_ref()));
    eprintln!(
        "list: {}; exclusion list: {}; contact sheet: {}",
        out.join("hard.tsv").display(),
        out.join("exclude.txt").display(),
        out.join("contact.png").display()
    );
    Ok(report)
}

/// The printed summary: the count, the per-class table and the first rows of the list.
pub fn summary(r: &HardReport, names: &ClassNames, k: usize, ds: &dyn Dataset) -> String {
    let mut s = String::new();
    let pct = |a: usize, b: usize| 100.0 * a as f64 / b.max(1) as f64;
    let _ = writeln!(
        s,
        "{} of {} samples ({:.2} %) have their label outside the teacher's top-{k}",
        r.hard.len(),
        r.examined,
        pct(r.hard.len(), r.examined)
    );
    let _ = writeln!(s, "\nclass\tsamples\thard\t%");
    for (c, &(n, h)) in r.per_class.iter().enumerate() {
        let _ = writeln!(s, "{}\t{n}\t{h}\t{:.2}", names.name(c), pct(h, n));
    }
    if !r.hard.is_empty() {
        let _ = writeln!(
            s,
            "\nhardest first:\nrank\tsample\tgiven (p)\tteacher top-1 (p)\tname"
        );
        for (rank, h) in r.hard.iter().take(10).enumerate() {
            let _ = writeln!(
                s,
                "{}\t{}\t{} ({:.3})\t{} ({:.3})\t{}",
                rank + 1,
                h.index,
                names.name(h.label as usize),
                h.label_prob,
                names.name(h.top1.0 as usize),
                h.top1.1,
                ds.name(h.index)
            );
        }
    }
    s
}

fn write_list(path: &Path, ds: &dyn Dataset, r: &HardReport, names: &ClassNames) -> Result<()> {
    let mut s = String::from("rank\tsample\tgiven\tgiven_prob\tteacher_top1\tteacher_prob\tname\n");
    for (rank, h) in r.hard.iter().enumerate() {
        writeln!(
            s,
            "{}\t{}\t{}\t{:.5}\t{}\t{:.5}\t{}",
            rank + 1,
            h.index,
            names.name(h.label as usize),
            h.label_prob,
            names.name(h.top1.0 as usize),
            h.top1.1,
            ds.name(h.index)
        )?;
    }
    crate::store::write_file(path, s.as_bytes())
}

/// Side of a contact-sheet thumbnail, in pixels.
const THUMB: u32 = 96;

/// Draws `hard` as a grid of evaluation-view thumbnails, each captioned with its sample index,
/// the given class and the teacher's top-1.
pub fn contact_sheet(
    path: &Path,
    ds: &Arc<dyn Dataset>,
    hard: &[HardSample],
    names: &ClassNames,
) -> Result<()> {
    let channels = crate::train::sources::channels_of(ds.as_ref())?;
    // The evaluation view at the thumbnail size (normalisation unused: only `view` is called).
    let views = EvalSource {
        ds: Arc::clone(ds),
        indices: Vec::new(),
        size: THUMB,
        channels: channels as usize,
        mean: [0.0; 3],
        std: [1.0; 3],
        crop_fraction: tinyvit_core::aug::EVAL_CROP_PCT,
        interpolation: tinyvit_core::aug::Interpolation::Bicubic,
    };
    let cols = 8u32;
    let rows = (hard.len() as u32).div_ceil(cols).max(1);
    let (cell_w, cell_h) = (THUMB + 8, THUMB + 40);
    let mut c = Canvas::new(cols * cell_w + 8, rows * cell_h + 28, [255, 255, 255]);
    let black = [0, 0, 0];
    c.text(
        8,
        8,
        &format!("{} hardest: given label / teacher's top-1", hard.len()),
        1,
        black,
    );
    let chars = (THUMB / draw::GLYPH) as usize;
    for (n, h) in hard.iter().enumerate() {
        let (x, y) = (
            8 + (n as u32 % cols) * cell_w,
            24 + (n as u32 / cols) * cell_h,
        );
        let thumb = Image {
            width: THUMB,
            height: THUMB,
            channels,
            data: views.view(h.index)?.0,
        };
        c.image(x, y, &thumb, 1);
        let cap = |s: String| s.chars().take(chars).collect::<String>();
        c.text(x, y + THUMB + 2, &cap(format!("#{}", h.index)), 1, black);
        c.text(
            x,
            y + THUMB + 12,
            &cap(names.name(h.label as usize)),
            1,
            [178, 24, 43],
        );
        c.text(
            x,
            y + THUMB + 22,
            &cap(names.name(h.top1.0 as usize)),
            1,
            [33, 102, 172],
        );
    }
    c.save_png(path)
}
