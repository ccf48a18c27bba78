//! `tinyvit analyze correlation`: the class-by-class Pearson correlation of each model's logits
//! over a few evaluation images per class (the paper's class-correlation analysis), drawn as
//! heatmaps on one colour scale, with a score per model: the Pearson correlation of its
//! off-diagonal entries with those of the first model (the teacher).
//!
//! Entry `(i, j)` of a model's matrix is the correlation, across the chosen images, of its
//! logit for class `i` with its logit for class `j`. A teacher that has learned which classes
//! look alike gives those pairs positive entries; the score says how much of that structure a
//! student shares (1 = the same structure).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, ensure, Context, Result};

use super::ClassNames;
use crate::data::{self, Dataset};
use crate::draw::{self, Canvas};

/// Arguments of `tinyvit analyze correlation`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model files: the first is the reference (the teacher); `.safetensors` checkpoints carry
    /// their input normalisation, `.tvb` and foreign files use `--mean/--std`.
    #[arg(long = "model", required = true)]
    pub models: Vec<PathBuf>,
    /// Labelled data SPEC the images are taken from (the first `--per-class` of each class).
    #[arg(long)]
    pub data: String,
    /// Images per class.
    #[arg(long, default_value_t = 8)]
    pub per_class: usize,
    /// Normalisation mean `r,g,b` (0..1) for models that do not record theirs.
    #[arg(long)]
    pub mean: Option<String>,
    /// Normalisation standard deviation `r,g,b` for models that do not record theirs.
    #[arg(long)]
    pub std: Option<String>,
    /// Class names: a file with one per line, or `fashion-mnist` (default: the dataset's own
    /// when known).
    #[arg(long)]
    pub class_names: Option<PathBuf>,
    /// Heatmap picture to write (PNG).
    #[arg(long, default_value = "correlation.png")]
    pub out: PathBuf,
    /// Also write the matrices and scores as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Pearson correlation of `a` and `b`; `None` when either has no variance.
pub fn pearson(a: &[f64], b: &[f64]) -> Option<f64> {
    assert_eq!(a.len(), b.len(), "pearson: lengths differ");
    let n = a.len() as f64;
    if a.len() < 2 {
        return None;
    }
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        let (dx, dy) = (x - ma, y - mb);
        sab += dx * dy;
        saa += dx * dx;
        sbb += dy * dy;
    }
    if saa <= 0.0 || sbb <= 0.0 {
        return None;
    }
    Some((sab / (saa.sqrt() * sbb.sqrt())).clamp(-1.0, 1.0))
}

/// The `classes x classes` correlation matrix of `logits` (`[n, classes]`, row-major): entry
/// `(i, j)` correlates column `i` with column `j` across the `n` rows. A constant column
/// correlates with nothing: its entries are NaN, except 1 on the diagonal.
pub fn class_correlation(logits: &[f32], n: usize, classes: usize) -> Vec<f64> {
    assert_eq!(logits.len(), n * classes, "class_correlation: shape");
    let cols: Vec<Vec<f64>> = (0..classes)
        .map(|c| (0..n).map(|r| f64::from(logits[r * classes + c])).collect())
        .collect();
    let mut m = vec![f64::NAN; classes * classes];
    for i in 0..classes {
        m[i * classes + i] = 1.0;
        for j in i + 1..classes {
            let r = pearson(&cols[i], &cols[j]).unwrap_or(f64::NAN);
            m[i * classes + j] = r;
            m[j * classes + i] = r;
        }
    }
    m
}

/// How alike two correlation matrices are: the Pearson correlation of their off-diagonal
/// entries (pairs where either is NaN are left out); `None` when fewer than two pairs remain or
/// one side is constant.
pub fn similarity(a: &[f64], b: &[f64], classes: usize) -> Option<f64> {
    let (mut xa, mut xb) = (Vec::new(), Vec::new());
    for i in 0..classes {
        for j in 0..classes {
            let (u, v) = (a[i * classes + j], b[i * classes + j]);
            if i != j && !u.is_nan() && !v.is_nan() {
                xa.push(u);
                xb.push(v);
            }
        }
    }
    pearson(&xa, &xb)
}

/// The first `per_class` samples of each class, in dataset order; errors name classes with
/// none.
pub fn pick_per_class(ds: &dyn Dataset, per_class: usize) -> Result<(Vec<usize>, usize)> {
    ensure!(per_class > 0, "--per-class must be at least 1");
    let classes = ds
        .num_classes()
        .with_context(|| format!("{}: the correlation needs labelled data", ds.spec()))?
        as usize;
    let labels = super::labels(ds)?;
    let mut taken = vec![0usize; classes];
    let mut picked = Vec::new();
    for (i, &l) in labels.iter().enumerate() {
        let l = l as usize;
        if l < classes && taken[l] < per_class {
            taken[l] += 1;
            picked.push(i);
        }
    }
    let empty: Vec<usize> = (0..classes).filter(|&c| taken[c] == 0).collect();
    ensure!(
        empty.is_empty(),
        "{}: no sample of class(es) {empty:?}",
        ds.spec()
    );
    Ok((picked, classes))
}

/// One model's result.
pub struct ModelCorrelation {
    pub name: String,
    pub matrix: Vec<f64>,
    /// Similarity to the first model's matrix (1 for the first itself).
    pub score: Option<f64>,
    /// Top-1 accuracy on the chosen images, percent.
    pub top1: f64,
}

/// Logits of `model` on samples `picked` of `ds` (its evaluation view and normalisation).
fn model_logits(
    model: &Path,
    ds: &Arc<dyn Dataset>,
    picked: &[usize],
    mean: Option<&str>,
    std: Option<&str>,
) -> Result<(Vec<f32>, usize)> {
    let m = super::EvalModel::load(model, mean, std)?;
    let input = m.inputs(ds, picked)?;
    let logits = m
        .logits(&input, picked.len())
        .with_context(|| format!("running {}", model.display()))?;
    Ok((logits, m.config.num_classes as usize))
}

/// Runs `tinyvit analyze correlation`.
pub fn run(a: &Args) -> Result<Vec<ModelCorrelation>> {
    let ds = data::open(&a.data).with_context(|| format!("--data {}", a.data))?;
    let (picked, classes) = pick_per_class(ds.as_ref(), a.per_class)?;
    let labels = super::labels(ds.as_ref())?;
    let names = ClassNames::resolve(a.class_names.as_deref(), ds.as_ref(), classes)?;
    let mut out: Vec<ModelCorrelation> = Vec::new();
    for path in &a.models {
        let (logits, nc) = model_logits(path, &ds, &picked, a.mean.as_deref(), a.std.as_deref())?;
        if nc != classes {
            bail!(
                "{}: the model has {nc} classes, {} has {classes} classes",
                path.display(),
                a.data
            );
        }
        let n = picked.len();
        let correct = (0..n)
            .filter(|&r| {
                let row = &logits[r * nc..(r + 1) * nc];
                crate::infer::topk(row, 1)[0].0 == labels[picked[r]] as usize
            })
            .count();
        let matrix = class_correlation(&logits, n, nc);
        let score = match out.first() {
            Some(first) => similarity(&first.matrix, &matrix, classes),
            None => similarity(&matrix, &matrix, classes),
        };
        out.push(ModelCorrelation {
            name: display_name(path, &a.models),
            matrix,
            score,
            top1: 100.0 * correct as f64 / n as f64,
        });
    }
    draw_heatmaps(&out, &names, &a.out)?;
    println!(
        "{} images ({} per class), {classes} classes; similarity of each model's class \
         correlation to the first's (Pearson of off-diagonal entries):",
        picked.len(),
        a.per_class
    );
    for (i, m) in out.iter().enumerate() {
        let s = m.score.map_or("-".to_string(), |s| format!("{s:.3}"));
        println!(
            "{}\t{s}\ttop-1 on these images {:.1} %{}",
            m.name,
            m.top1,
            if i == 0 { "\t(reference)" } else { "" }
        );
    }
    eprintln!("heatmaps: {}", a.out.display());
    if let Some(j) = &a.json {
        let v = serde_json::json!({
            "classes": names.0,
            "images": picked.len(),
            "models": out.iter().map(|m| serde_json::json!({
                "name": m.name,
                "score": m.score,
                "top1": m.top1,
                "matrix": m.matrix.iter().map(|v| if v.is_nan() { None } else { Some(*v) }).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        });
        crate::store::write_file(j, serde_json::to_string_pretty(&v)?.as_bytes())?;
    }
    Ok(out)
}

/// Draws the matrices side by side on one colour scale (-1 blue, 0 white, +1 red), each under
/// a title with its score, class names on the first panel's rows and a colour bar.
pub fn draw_heatmaps(models: &[ModelCorrelation], names: &ClassNames, path: &Path) -> Result<()> {
    let classes = names.0.len();
    let cell = (320 / classes.max(1) as u32).clamp(4, 32);
    let side = cell * classes as u32;
    let label_w = names
        .0
        .iter()
        .map(|n| draw::text_width(&short(n), 1))
        .max()
        .unwrap_or(0)
        + 6;
    let (top, gap, bar_w) = (34u32, 24u32, 16u32);
    let width = label_w + models.len() as u32 * (side + gap) + bar_w + 60;
    let height = top + side + 40;
    let mut c = Canvas::new(width, height, [255, 255, 255]);
    let black = [0, 0, 0];
    for (k, m) in models.iter().enumerate() {
        let x0 = label_w + k as u32 * (side + gap);
        c.text(x0, 4, &truncate(&m.name, (side / 8) as usize), 1, black);
        let score = match (k, m.score) {
            (0, _) => "reference".to_string(),
            (_, Some(s)) => format!("score {s:.3}"),
            (_, None) => "score -".to_string(),
        };
        c.text(x0, 16, &score, 1, black);
        for i in 0..classes {
            for j in 0..classes {
                let v = m.matrix[i * classes + j];
                c.fill(
                    x0 + j as u32 * cell,
                    top + i as u32 * cell,
                    cell,
                    cell,
                    draw::diverging(v),
                );
            }
        }
        // Column indices under the panel when the cells are wide enough.
        if cell >= 16 {
            for j in 0..classes {
                c.text(
                    x0 + j as u32 * cell + (cell - 8) / 2,
                    top + side + 4,
                    &(j % 10).to_string(),
                    1,
                    black,
                );
            }
        }
    }
    if cell >= 8 {
        for (i, n) in names.0.iter().enumerate() {
            c.text(
                2,
                top + i as u32 * cell + (cell - 8) / 2,
                &short(n),
                1,
                black,
            );
        }
    }
    // Colour bar from +1 (top) to -1 (bottom).
    let bx = label_w + models.len() as u32 * (side + gap);
    for y in 0..side {
        let v = 1.0 - 2.0 * f64::from(y) / f64::from(side.max(2) - 1);
        c.fill(bx, top + y, bar_w, 1, draw::diverging(v));
    }
    c.text(bx + bar_w + 4, top, "+1", 1, black);
    c.text(bx + bar_w + 4, top + side / 2 - 4, "0", 1, black);
    c.text(bx + bar_w + 4, top + side - 8, "-1", 1, black);
    c.text(
        label_w,
        height - 14,
        "Pearson correlation of class logits",
        1,
        black,
    );
    c.save_png(path)
}

/// How a model is named in the output: its file name, or its folder and file name when another
/// model has the same file name (run folders all hold `model.safetensors`).
fn display_name(path: &Path, all: &[PathBuf]) -> String {
    let file = |p: &Path| p.file_name().map(|f| f.to_string_lossy().into_owned());
    let twins = all.iter().filter(|p| file(p) == file(path)).count();
    match (file(path), path.parent().and_then(|d| d.file_name())) {
        (Some(f), Some(d)) if twins > 1 => format!("{}/{f}", d.to_string_lossy()),
        (Some(f), _) => f,
        (None, _) => path.display().to_string(),
    }
}

/// A class name shortened for a row label (index and the first 12 characters).
fn short(name: &str) -> String {
    truncate(name, 14)
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n.saturating_sub(1)).collect::<String>() + "~"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pearson_of_known_series() {
        let a = [1.0, 2.0, 3.0, 4.0];
        assert!((pearson(&a, &a).unwrap() - 1.0).abs() < 1e-12);
        let b = [4.0, 3.0, 2.0, 1.0];
        assert!((pearson(&a, &b).unwrap() + 1.0).abs() < 1e-12);
        // Hand-computed: x = 1..4, y = (1, 3, 2, 4): r = 0.8.
        assert!((pearson(&a, &[1.0, 3.0, 2.0, 4.0]).unwrap() - 0.8).abs() < 1e-12);
        assert_eq!(pearson(&a, &[2.0; 4]), None);
    }

    #[test]
    fn matrix_is_symmetric_with_unit_diagonal() {
        // 5 images x 3 classes; class 2 = -class 0, class 1 unrelated.
        let logits = [
            1.0, 0.3, -1.0, 2.0, -0.1, -2.0, 0.5, 0.9, -0.5, -1.0, 0.2, 1.0, 3.0, -0.4, -3.0,
        ];
        let m = class_correlation(&logits, 5, 3);
        for i in 0..3 {
            assert_eq!(m[i * 3 + i], 1.0);
            for j in 0..3 {
                assert_eq!(m[i * 3 + j], m[j * 3 + i]);
            }
        }
        assert!((m[2] + 1.0).abs() < 1e-9, "{}", m[2]);
        // A model's matrix is most similar to itself; a scrambled copy is not.
        assert!((similarity(&m, &m, 3).unwrap() - 1.0).abs() < 1e-12);
        let other = class_correlation(
            &[
                1.0, 0.3, 1.1, 2.0, -0.1, 2.2, 0.5, 0.9, 0.4, -1.0, 0.2, -0.9, 3.0, -0.4, 2.9,
            ],
            5,
            3,
        );
        assert!(similarity(&m, &other, 3).unwrap() < 0.9);
    }

    #[test]
    fn constant_logit_column_gives_nan_entries() {
        let logits = [1.0, 5.0, 2.0, 5.0, 3.0, 5.0];
        let m = class_correlation(&logits, 3, 2);
        assert_eq!(m[0], 1.0);
        assert!(m[1].is_nan() && m[2].is_nan());
        assert_eq!(m[3], 1.0);
        assert_eq!(similarity(&m, &m, 2), None);
    }
}
