//! Evaluation metrics, the `metrics.jsonl` log and the training curves.
//!
//! # `metrics.jsonl`
//!
//! One JSON object a line, appended (and flushed) as training goes:
//!
//! - `{"kind":"train","epoch":E,"step":S,"loss":L,"lr":LR,"images_per_s":R}` every logged step;
//! - `{"kind":"epoch","epoch":E,"step":S,"train_loss":L,"val_top1":..,"val_top5":..,
//!   "val_agreement":..,"val_loss":..,"images_per_s":R,"seconds":T}` after each epoch
//!   (`val_*` are `null` without `--val`; `val_agreement` is `null` without a teacher).
//!
//! Accuracies are percentages. Teacher agreement = how often the student's top-1 class equals
//! the teacher's (online teacher) or the store's first stored class.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::draw::{chart, Axes, Canvas, Series};

/// Running counts for top-1, top-5 and teacher agreement.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Accuracy {
    pub seen: u64,
    pub top1: u64,
    pub top5: u64,
    pub agree: u64,
    pub agree_seen: u64,
    pub loss_sum: f64,
}

impl Accuracy {
    /// Adds a batch: `logits [B, C]`, `labels [B]` (int64; `None` for unlabelled data, which
    /// counts only towards the agreement), optional `teacher_top1 [B]`.
    pub fn add(&mut self, logits: &Tensor, labels: Option<&Tensor>, teacher_top1: Option<&Tensor>) {
        let b = logits.size()[0];
        let c = logits.size()[1];
        let k = c.min(5);
        let (_, top) = logits.topk(k, 1, true, true);
        if let Some(labels) = labels {
            let labels = labels.to_device(logits.device()).view([b, 1]);
            let hit = top.eq_tensor(&labels);
            self.top1 += hit.narrow(1, 0, 1).sum(Kind::Int64).int64_value(&[]) as u64;
            self.top5 += hit.sum(Kind::Int64).int64_value(&[]) as u64;
            let ce = logits
                .to_kind(Kind::Float)
                .cross_entropy_for_logits(&labels.view([b]));
            self.loss_sum += ce.double_value(&[]) * b as f64;
            self.seen += b as u64;
        }
        if let Some(t) = teacher_top1 {
            let t = t.to_device(logits.device()).view([b]);
            self.agree += top
                .select(1, 0)
                .eq_tensor(&t)
                .sum(Kind::Int64)
                .int64_value(&[]) as u64;
            self.agree_seen += b as u64;
        }
    }

    fn pct(n: u64, d: u64) -> Option<f64> {
        (d > 0).then(|| 100.0 * n as f64 / d as f64)
    }
    /// Top-1 accuracy in percent.
    pub fn top1(&self) -> Option<f64> {
        Self::pct(self.top1, self.seen)
    }
    /// Top-5 accuracy in percent (top-C when there are fewer than 5 classes).
    pub fn top5(&self) -> Option<f64> {
        Self::pct(self.top5, self.seen)
    }
    /// Agreement with the teacher's top-1 in percent.
    pub fn agreement(&self) -> Option<f64> {
        Self::pct(self.agree, self.agree_seen)
    }
    /// Mean cross-entropy against the labels.
    pub fn loss(&self) -> Option<f64> {
        (self.seen > 0).then(|| self.loss_sum / self.seen as f64)
    }
}

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    Train {
        epoch: u64,
        step: u64,
        loss: f64,
        lr: f64,
        images_per_s: f64,
    },
    Epoch {
        epoch: u64,
        step: u64,
        train_loss: f64,
        val_top1: Option<f64>,
        val_top5: Option<f64>,
        val_agreement: Option<f64>,
        val_loss: Option<f64>,
        images_per_s: f64,
        seconds: f64,
    },
}

/// Appends records to `metrics.jsonl`.
#[derive(Debug)]
pub struct MetricsLog {
    path: PathBuf,
    file: File,
}

impl MetricsLog {
    /// Opens (creating or appending) `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("open {}", path.display()))?;
        Ok(MetricsLog {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Appends one record and flushes.
    pub fn write(&mut self, r: &Record) -> Result<()> {
        let line = serde_json::to_string(r)?;
        writeln!(self.file, "{line}").with_context(|| format!("write {}", self.path.display()))?;
        self.file.flush()?;
        Ok(())
    }

    /// Reads every record of a `metrics.jsonl` (a torn last line after a kill is skipped).
    pub fn read(path: &Path) -> Result<Vec<Record>> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let mut out = Vec::new();
        for (i, l) in lines.iter().enumerate() {
            match serde_json::from_str(l) {
                Ok(r) => out.push(r),
                Err(_) if i + 1 == lines.len() => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("{} line {}", path.display(), i + 1))
                }
            }
        }
        Ok(out)
    }
}

/// Draws `curves.png`: training loss per logged step (left, blue) and validation top-1 per
/// epoch (right, red), each with a title, ticks, axis labels and a legend; both axes are
/// scaled to the data so that a change of a point or two stays visible.
pub fn plot_curves(records: &[Record], out: &Path) -> Result<()> {
    let mut loss: Vec<(f64, f64)> = Vec::new();
    let mut acc: Vec<(f64, f64)> = Vec::new();
    for r in records {
        match r {
            Record::Train { step, loss: l, .. } if l.is_finite() => loss.push((*step as f64, *l)),
            Record::Epoch {
                epoch,
                val_top1: Some(a),
                ..
            } => acc.push(((*epoch + 1) as f64, *a)),
            _ => {}
        }
    }
    let mut c = Canvas::new(960, 400, [255; 3]);
    chart(
        &mut c,
        0,
        0,
        480,
        400,
        &Axes {
            title: "training loss",
            x_label: "optimizer step",
            y_label: "loss",
        },
        &[Series {
            name: "train loss",
            color: [31, 119, 180],
            points: &loss,
            dots: false,
        }],
    );
    if acc.is_empty() {
        c.text(560, 190, "no validation data (--val)", 1, [0; 3]);
    } else {
        chart(
            &mut c,
            480,
            0,
            480,
            400,
            &Axes {
                title: "validation top-1",
                x_label: "epoch",
                y_label: "top-1 %",
            },
            &[Series {
                name: "val top-1",
                color: [214, 39, 40],
                points: &acc,
                dots: false,
            }],
        );
    }
    c.save_png(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accuracy_counts() {
        let logits = Tensor::from_slice(&[
            0.9f32, 0.1, 0.0, 0.0, 0.0, 0.0, //
            0.0, 0.1, 0.9, 0.0, 0.0, 0.0,
        ])
        .view([2, 6]);
        let labels = Tensor::from_slice(&[0i64, 1]);
        let teacher = Tensor::from_slice(&[0i64, 0]);
        let mut a = Accuracy::default();
        a.add(&logits, Some(&labels), Some(&teacher));
        let mut u = Accuracy::default();
        u.add(&logits, None, Some(&teacher));
        assert_eq!(
            (u.top1(), u.loss(), u.agreement()),
            (None, None, Some(50.0))
        );
        assert_eq!(a.top1(), Some(50.0));
        assert_eq!(a.top5(), Some(100.0));
        assert_eq!(a.agreement(), Some(50.0));
        assert!(a.loss().unwrap() > 0.0);
    }

    #[test]
    fn log_round_trip_and_plot() {
        let dir = std::env::temp_dir().join(format!("tinyvit-metrics-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("metrics.jsonl");
        let _ = std::fs::remove_file(&p);
        let mut log = MetricsLog::open(&p).unwrap();
        let mut recs = Vec::new();
        for s in 0..20u64 {
            recs.push(Record::Train {
                epoch: s / 10,
                step: s,
                loss: 2.0 - s as f64 * 0.0625,
                lr: 1e-3,
                images_per_s: 100.0,
            });
        }
        recs.push(Record::Epoch {
            epoch: 0,
            step: 10,
            train_loss: 1.0,
            val_top1: Some(40.0),
            val_top5: Some(90.0),
            val_agreement: None,
            val_loss: Some(1.2),
            images_per_s: 100.0,
            seconds: 1.0,
        });
        for r in &recs {
            log.write(r).unwrap();
        }
        // a torn last line (kill mid-write) is ignored
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(b"{\"kind\":\"tra")
            .unwrap();
        assert_eq!(MetricsLog::read(&p).unwrap(), recs);
        let png = dir.join("curves.png");
        plot_curves(&recs, &png).unwrap();
        let bytes = std::fs::read(&png).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        std::fs::remove_dir_all(&dir).ok();
    }
}
