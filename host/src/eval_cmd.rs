//! `tinyvit eval`: top-1 and top-5 of a model on every sample of a labelled data SPEC, through
//! the model's own evaluation view and normalisation, on the core's `fast` engine (an int8
//! file on the exact integer engine).
//!
//! This is how a model trained elsewhere (or committed, like the main job's teacher) is
//! measured with no training run: the figures are those the trainer's `--val`/`--test` report
//! for the same model and data, up to float summation order.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;

use crate::analyze::{labels, EvalModel};
use crate::data;
use crate::infer::topk;

/// Images run through the engine at once (bounds the input buffer).
const CHUNK: usize = 256;

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Model: a tinyvit checkpoint (its config and normalisation are used), or any file
    /// `tinyvit infer` reads.
    #[arg(long)]
    pub model: PathBuf,
    /// Labelled data SPEC (idx:IMAGES,LABELS, folder:DIR, ...).
    #[arg(long)]
    pub data: String,
    /// Input mean `r,g,b` (0..1 scale) for files that record none, or to override.
    #[arg(long)]
    pub mean: Option<String>,
    /// Input std `r,g,b` (0..1 scale), as `--mean`.
    #[arg(long)]
    pub std: Option<String>,
    /// Also write the figures as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Accuracy of one model on one split.
#[derive(Clone, Debug, PartialEq)]
pub struct Figures {
    pub images: usize,
    pub top1: f64,
    pub top5: f64,
}

/// Runs `tinyvit eval`.
pub fn run(a: &Args) -> Result<Figures> {
    let ds = data::open(&a.data).with_context(|| format!("--data {}", a.data))?;
    let labels = labels(ds.as_ref()).with_context(|| format!("--data {}", a.data))?;
    if labels.is_empty() {
        bail!("--data {}: no samples", a.data);
    }
    let m = EvalModel::load(&a.model, a.mean.as_deref(), a.std.as_deref())?;
    let nc = m.config.num_classes as usize;
    let (mut top1, mut top5) = (0usize, 0usize);
    let all: Vec<usize> = (0..labels.len()).collect();
    for picked in all.chunks(CHUNK) {
        let input = m.inputs(&ds, picked)?;
        let logits = m
            .logits(&input, picked.len())
            .with_context(|| format!("running {}", a.model.display()))?;
        for (row, &i) in logits.chunks_exact(nc).zip(picked) {
            let label = labels[i] as usize;
            if label >= nc {
                bail!(
                    "--data {}: sample {i} has label {label}, the model has {nc} classes",
                    a.data
                );
            }
            let best = topk(row, 5.min(nc));
            top1 += usize::from(best[0].0 == label);
            top5 += usize::from(best.iter().any(|(c, _)| *c == label));
        }
    }
    let n = labels.len();
    let f = Figures {
        images: n,
        top1: 100.0 * top1 as f64 / n as f64,
        top5: 100.0 * top5 as f64 / n as f64,
    };
    println!(
        "{}: {} images, top-1 {:.2} %, top-5 {:.2} %",
        a.model.display(),
        f.images,
        f.top1,
        f.top5
    );
    if let Some(j) = &a.json {
        let v = serde_json::json!({
            "model": a.model.display().to_string(),
            "data": a.data,
            "images": f.images,
            "top1": f.top1,
            "top5": f.top5,
        });
        let tmp = j.with_extension("json.tmp");
        crate::store::write_atomic(&tmp, j, serde_json::to_string_pretty(&v)?.as_bytes())
            .with_context(|| format!("writing {}", j.display()))?;
    }
    Ok(f)
}

/// The CLI entry point.
pub fn main(a: Args) -> Result<()> {
    run(&a).map(|_| ())
}
