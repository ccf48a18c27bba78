//! `tinyvit save-logits`: the teacher pass of fast pretraining distillation.
//!
//! For every epoch `e` and sample `i` of this process's part: derive the seed
//! `aug::sample_seed(run_seed, e, i)`, replay the augmentation into the teacher's input, run the
//! teacher (eval, no grad, fp16 autocast on CUDA), take softmax and top-K on the device, and
//! append `(seed, K indices, K probabilities)` to the part's shard file.
//!
//! Pipeline: worker threads decode, augment and normalise whole batches and hand them through a
//! bounded queue (`sync_channel`, `prefetch` batches deep) to the thread that owns the teacher;
//! it reorders them, runs the teacher and writes. Batches never straddle a store block, so a
//! `--resume`d run (which restarts at a block boundary) and a `--shard`ed run see exactly the
//! batches an uninterrupted run sees: the stores are byte-identical.
//!
//! Teachers are [`crate::teacher`]'s: a TorchScript module or a TinyViT checkpoint, through one
//! trait; the pass calls [`Teacher::probs`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use tch::{Device, Kind, Tensor};
use tinyvit_core::aug::{self, AugConfig, ImageRef};
use tinyvit_core::store::{ValueEncoding, DEFAULT_RECORDS_PER_BLOCK, FORMAT_VERSION};

use crate::data::{self, Dataset, Image};
use crate::store::{self, Manifest, Opened, ShardWriter, TeacherInfo};
use crate::teacher::{self, Teacher};

/// What to do with an image that cannot be read or decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OnBadImage {
    /// Stop with an error naming the file.
    Error,
    /// Store a missing record (seed kept, no probabilities) and go on.
    Skip,
}

/// Everything `save-logits` needs besides the teacher.
#[derive(Clone, Debug)]
pub struct PassConfig {
    pub data: String,
    pub out: PathBuf,
    pub epochs: u32,
    pub topk: u16,
    pub part: u32,
    pub parts: u32,
    pub resume: bool,
    pub batch_size: usize,
    pub aug_preset: String,
    pub aug: AugConfig,
    pub channels: Option<u32>,
    pub run_seed: u64,
    pub values: ValueEncoding,
    pub records_per_block: u32,
    pub on_bad_image: OnBadImage,
    pub workers: usize,
    pub prefetch: usize,
    pub progress: bool,
}

impl PassConfig {
    /// Defaults for everything but the data, output, epochs and K.
    pub fn new(data: &str, out: &Path, epochs: u32, topk: u16) -> Self {
        Self {
            data: data.to_string(),
            out: out.to_path_buf(),
            epochs,
            topk,
            part: 0,
            parts: 1,
            resume: false,
            batch_size: 128,
            aug_preset: "in22k-distill".into(),
            aug: aug::preset("in22k-distill").unwrap_or_else(|_| aug::preset::light()),
            channels: None,
            run_seed: 0,
            values: ValueEncoding::F16,
            records_per_block: DEFAULT_RECORDS_PER_BLOCK,
            on_bad_image: OnBadImage::Error,
            workers: default_workers(),
            prefetch: 4,
            progress: true,
        }
    }
}

/// Worker threads by default: all cores but the one that feeds the teacher, at least one.
pub fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get().saturating_sub(1))
        .unwrap_or(1)
        .max(1)
}

/// Parses `I/N`.
pub fn parse_shard(s: &str) -> Result<(u32, u32)> {
    let (i, n) = s.split_once('/').context("--shard wants I/N, e.g. 0/4")?;
    let (i, n): (u32, u32) = (
        i.trim().parse().context("--shard I/N: I is not a number")?,
        n.trim().parse().context("--shard I/N: N is not a number")?,
    );
    ensure!(n > 0 && i < n, "--shard {i}/{n}: need 0 <= I < N");
    Ok((i, n))
}

/// What a pass did.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// Samples per epoch in this part.
    pub part_samples: u64,
    pub epochs: u32,
    /// Samples run through the teacher in this invocation.
    pub computed: u64,
    /// Samples found already on disk (resume).
    pub reused: u64,
    pub missing: u64,
    pub bytes_per_sample: usize,
    /// Bytes of the closed part files of this part.
    pub total_bytes: u64,
    /// Seconds spent in teacher forward + top-K + copy back.
    pub teacher_seconds: f64,
    pub wall_seconds: f64,
    pub files: Vec<PathBuf>,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rate = |n: u64, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
        writeln!(
            f,
            "samples: {} per epoch x {} epochs ({} computed, {} reused from disk, {} missing)",
            self.part_samples, self.epochs, self.computed, self.reused, self.missing
        )?;
        let records = self.part_samples * u64::from(self.epochs);
        writeln!(
            f,
            "size: {} bytes/sample, {} bytes total ({:.3}% over bare records)",
            self.bytes_per_sample,
            self.total_bytes,
            if records > 0 {
                100.0
                    * (self.total_bytes as f64 / (records as f64 * self.bytes_per_sample as f64)
                        - 1.0)
            } else {
                0.0
            }
        )?;
        write!(
            f,
            "throughput: teacher {:.1} images/s, end to end {:.1} images/s ({:.2} s)",
            rate(self.computed, self.teacher_seconds),
            rate(self.computed, self.wall_seconds),
            self.wall_seconds
        )
    }
}

/// One batch of work: samples `start..start+len` of `epoch`, inside one block.
#[derive(Clone, Copy, Debug)]
struct Unit {
    epoch: u32,
    start: u64,
    len: usize,
}

/// A batch ready for the teacher.
struct Prepared {
    seeds: Vec<u32>,
    missing: Vec<bool>,
    /// `[len, C, S, S]` f32.
    pixels: Vec<f32>,
}

/// Sample `i` as the teacher saw it for `seed`: decoded, converted to `channels`, augmented
/// (`cfg.size` square, u8 HWC). `tinyvit logits show --image-out` writes this view.
pub fn replay_view(
    ds: &dyn Dataset,
    cfg: &AugConfig,
    channels: u32,
    i: usize,
    seed: u32,
) -> Result<Image> {
    let mut view = Vec::new();
    ds.view(i, cfg, seed, channels, &mut view)?;
    Ok(Image {
        width: cfg.size,
        height: cfg.size,
        channels,
        data: view,
    })
}

/// Replays one sample and normalises it into `out` (`[C, S, S]` f32).
fn prepare_one(
    ds: &dyn Dataset,
    cfg: &AugConfig,
    channels: u32,
    i: usize,
    seed: u32,
    out: &mut [f32],
    view: &mut Vec<u8>,
) -> Result<()> {
    ds.view(i, cfg, seed, channels, view)?;
    let v =
        ImageRef::new(cfg.size, cfg.size, channels, view).map_err(|e| anyhow::anyhow!("{e}"))?;
    aug::normalize(v, cfg.mean, cfg.std, out)
        .map_err(|e| anyhow::anyhow!("{}: {e}", ds.name(i)))?;
    Ok(())
}

fn prepare(
    ds: &dyn Dataset,
    cfg: &AugConfig,
    channels: u32,
    run_seed: u64,
    on_bad: OnBadImage,
    unit: Unit,
) -> Result<Prepared> {
    let per = (cfg.size * cfg.size * channels) as usize;
    let mut p = Prepared {
        seeds: Vec::with_capacity(unit.len),
        missing: vec![false; unit.len],
        pixels: vec![0.0; per * unit.len],
    };
    let mut view = Vec::new();
    for j in 0..unit.len {
        let i = unit.start + j as u64;
        let seed = aug::sample_seed(run_seed, unit.epoch, i);
        p.seeds.push(seed);
        let out = &mut p.pixels[j * per..(j + 1) * per];
        if let Err(e) = prepare_one(ds, cfg, channels, i as usize, seed, out, &mut view) {
            match on_bad {
                OnBadImage::Error => {
                    return Err(e.context(format!(
                        "epoch {}, sample {i} (use --on-bad-image skip to store it as missing)",
                        unit.epoch
                    )))
                }
                OnBadImage::Skip => {
                    p.missing[j] = true;
                    out.fill(0.0);
                }
            }
        }
    }
    Ok(p)
}

/// The normalised pixels of samples `start..start+len` of `epoch`, exactly as the pass hands
/// them to the teacher (`[len, C, S, S]` f32). For benchmarks and tests that compare the pass
/// with a bare forward on the same batches.
pub fn batch_pixels(
    ds: &dyn Dataset,
    cfg: &AugConfig,
    channels: u32,
    run_seed: u64,
    epoch: u32,
    start: u64,
    len: usize,
) -> Result<Vec<f32>> {
    let unit = Unit { epoch, start, len };
    Ok(prepare(ds, cfg, channels, run_seed, OnBadImage::Error, unit)?.pixels)
}

/// Runs the teacher pass for one part of a store; returns its summary. The steps: open the
/// data, probe the teacher and agree on the manifest, open every epoch's writer (resuming
/// at a block boundary) and plan the batches still to compute, then run the pipeline.
pub fn run(cfg: &PassConfig, teacher: &dyn Teacher) -> Result<Summary> {
    let t0 = Instant::now();
    let (ds, channels) = open_data(cfg)?;
    let manifest = agree_manifest(cfg, teacher, &*ds, channels)?;
    let mut summary = Summary {
        epochs: cfg.epochs,
        bytes_per_sample: manifest.layout()?.record_len(),
        ..Summary::default()
    };
    let (writers, units) = open_writers(cfg, &manifest, &mut summary)?;
    let pipeline = Pipeline {
        cfg,
        teacher,
        channels,
    };
    pipeline.run(ds, writers, units, &mut summary)?;
    summary.wall_seconds = t0.elapsed().as_secs_f64();
    Ok(summary)
}

/// Checks the pass configuration, opens the data and settles the teacher's channels (the
/// data's by default: those of the first readable sample).
fn open_data(cfg: &PassConfig) -> Result<(Arc<dyn Dataset>, u32)> {
    ensure!(cfg.epochs > 0, "--epochs must be at least 1");
    ensure!(cfg.batch_size > 0, "--batch-size must be at least 1");
    ensure!(
        cfg.aug.mix.is_none(),
        "augmentation preset `{}` mixes pairs of images; the teacher pass stores targets of \
         unmixed views (the trainer mixes stored targets): turn mixing off (--aug mix=off)",
        cfg.aug_preset
    );
    cfg.aug
        .validate()
        .map_err(|e| anyhow::anyhow!("augmentation: {e}"))?;
    let ds = data::open(&cfg.data)?;
    ensure!(!ds.is_empty(), "{}: the dataset is empty", cfg.data);
    let channels = match cfg.channels {
        Some(c) => c,
        None => {
            let mut found = None;
            for i in 0..ds.len() {
                match ds.get(i) {
                    Ok(s) => {
                        found = Some(s.image.channels);
                        break;
                    }
                    Err(e) if cfg.on_bad_image == OnBadImage::Error => {
                        return Err(e.context(format!("{}: reading sample {i}", cfg.data)))
                    }
                    Err(_) => {}
                }
            }
            found.with_context(|| format!("{}: no sample could be read", cfg.data))?
        }
    };
    ensure!(channels == 1 || channels == 3, "--channels must be 1 or 3");
    Ok((ds, channels))
}

/// Probes the teacher for its class count with one blank image, builds the manifest and
/// creates it, or checks it against the one on disk.
fn agree_manifest(
    cfg: &PassConfig,
    teacher: &dyn Teacher,
    ds: &dyn Dataset,
    channels: u32,
) -> Result<Manifest> {
    let size = cfg.aug.size;
    let probe = Tensor::zeros(
        [1, channels as i64, size as i64, size as i64],
        (Kind::Float, Device::Cpu),
    );
    let probe = teacher
        .probs(&probe)
        .context("probing the teacher with one blank image")?;
    let num_classes = probe.size()[1] as u32;
    ensure!(
        u32::from(cfg.topk) <= num_classes,
        "--topk {} exceeds the teacher's {num_classes} classes",
        cfg.topk
    );
    let id = teacher.identity();
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        key_version: store::manifest::KEY_VERSION,
        aug_version: aug::AUG_VERSION,
        aug_preset: cfg.aug_preset.clone(),
        aug: cfg.aug,
        run_seed: cfg.run_seed,
        topk: cfg.topk,
        num_classes,
        values: cfg.values,
        records_per_block: cfg.records_per_block,
        epochs: cfg.epochs,
        parts: cfg.parts,
        batch_size: cfg.batch_size as u32,
        teacher: TeacherInfo {
            kind: id.kind,
            file: id.file,
            sha256: id.sha256,
            input_size: size,
            channels,
            mean: cfg.aug.mean,
            std: cfg.aug.std,
        },
        dataset: ds.fingerprint(),
        data_spec: cfg.data.clone(),
    };
    manifest.layout()?;
    // With --resume and more --epochs, the store is extended (or, written by an earlier build,
    // refused in a sentence saying why); the writers use the manifest on disk.
    store::manifest::open_for_writing(&cfg.out, &manifest, cfg.part, cfg.resume)
}

/// Opens every epoch's writer for this part (closed parts are counted as reused) and cuts the
/// samples still to compute into batches that never straddle a block.
#[allow(clippy::type_complexity)]
fn open_writers(
    cfg: &PassConfig,
    manifest: &Manifest,
    summary: &mut Summary,
) -> Result<(Vec<Option<ShardWriter>>, Vec<Unit>)> {
    let mut writers: Vec<Option<ShardWriter>> = Vec::new();
    let mut units = Vec::new();
    let rpb = u64::from(cfg.records_per_block);
    for e in 0..cfg.epochs {
        match ShardWriter::open(&cfg.out, manifest, e, cfg.part, cfg.resume)? {
            Opened::Done(p) => {
                summary.part_samples = p.records;
                summary.reused += p.records;
                summary.missing += p.missing;
                summary.total_bytes += p.bytes;
                summary.files.push(p.path);
                writers.push(None);
            }
            Opened::Writer(w) => {
                let h = *w.header();
                summary.part_samples = h.sample_count;
                summary.reused += w.resumed();
                let mut s = w.next_sample();
                while s < h.end_sample() {
                    let block_end = (h.first_sample + ((s - h.first_sample) / rpb + 1) * rpb)
                        .min(h.end_sample());
                    let len = (block_end - s).min(cfg.batch_size as u64) as usize;
                    units.push(Unit {
                        epoch: e,
                        start: s,
                        len,
                    });
                    s += len as u64;
                }
                writers.push(Some(w));
            }
        }
    }
    Ok((writers, units))
}

/// The pass's pipeline: data workers prepare batches, the calling thread runs the teacher
/// and writes.
struct Pipeline<'a> {
    cfg: &'a PassConfig,
    teacher: &'a dyn Teacher,
    channels: u32,
}

impl Pipeline<'_> {
    /// Workers claim units in order and send prepared batches through a bounded queue; this
    /// thread takes them back in order, runs the teacher and writes.
    fn run(
        &self,
        ds: Arc<dyn Dataset>,
        mut writers: Vec<Option<ShardWriter>>,
        units: Vec<Unit>,
        summary: &mut Summary,
    ) -> Result<()> {
        let cfg = self.cfg;
        let todo: u64 = units.iter().map(|u| u.len as u64).sum();
        let bar = progress_bar(cfg.progress, todo);
        let units = Arc::new(units);
        let next = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::sync_channel::<(usize, Result<Prepared>)>(cfg.prefetch.max(1));
        let mut handles = Vec::new();
        for _ in 0..cfg.workers.max(1) {
            let (units, next, stop, tx, ds) = (
                units.clone(),
                next.clone(),
                stop.clone(),
                tx.clone(),
                ds.clone(),
            );
            let (aug_cfg, run_seed, on_bad) = (cfg.aug, cfg.run_seed, cfg.on_bad_image);
            let channels = self.channels;
            handles.push(std::thread::spawn(move || loop {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let u = next.fetch_add(1, Ordering::Relaxed);
                let Some(&unit) = units.get(u) else { break };
                let r = prepare(&*ds, &aug_cfg, channels, run_seed, on_bad, unit);
                if tx.send((u, r)).is_err() {
                    break;
                }
            }));
        }
        drop(tx);
        let result = self.consume(&units, &rx, &mut writers, &bar, summary);
        stop.store(true, Ordering::Relaxed);
        drop(rx);
        for h in handles {
            let _ = h.join();
        }
        bar.finish_and_clear();
        result
    }

    /// Takes the prepared batches in unit order, runs the teacher (softmax, top-K on its
    /// device) and appends the records; closes each part when its last sample is written.
    fn consume(
        &self,
        units: &[Unit],
        rx: &mpsc::Receiver<(usize, Result<Prepared>)>,
        writers: &mut [Option<ShardWriter>],
        bar: &indicatif::ProgressBar,
        summary: &mut Summary,
    ) -> Result<()> {
        let cfg = self.cfg;
        let size = i64::from(cfg.aug.size);
        let k = usize::from(cfg.topk);
        let mut pending: BTreeMap<usize, Result<Prepared>> = BTreeMap::new();
        let mut teacher_time = Duration::ZERO;
        let (mut idx, mut prob, mut idx_u32) = (Vec::new(), Vec::new(), Vec::new());
        for (u, unit) in units.iter().enumerate() {
            let prepared = loop {
                if let Some(p) = pending.remove(&u) {
                    break p;
                }
                let (k, p) = rx.recv().context("data workers stopped unexpectedly")?;
                pending.insert(k, p);
            }?;
            let t = Instant::now();
            let batch = Tensor::from_slice(&prepared.pixels).view([
                unit.len as i64,
                i64::from(self.channels),
                size,
                size,
            ]);
            let probs = self.teacher.probs(&batch)?;
            let (values, indices) =
                tch::no_grad(|| probs.topk(i64::from(cfg.topk), -1, true, true));
            let values = values.to_device(Device::Cpu).contiguous();
            let indices = indices
                .to_kind(Kind::Int)
                .to_device(Device::Cpu)
                .contiguous();
            prob.resize(unit.len * k, 0.0);
            idx.resize(unit.len * k, 0);
            values.f_copy_data(&mut prob, unit.len * k)?;
            indices.f_copy_data(&mut idx, unit.len * k)?;
            // Indices from topk are in 0..classes; a negative one would wrap and be refused by
            // the record encoder as out of range.
            idx_u32.clear();
            idx_u32.extend(idx.iter().map(|&v: &i32| v as u32));
            teacher_time += t.elapsed();
            let w = writers[unit.epoch as usize]
                .as_mut()
                .context("internal: no writer for a planned batch")?;
            for j in 0..unit.len {
                if prepared.missing[j] {
                    w.push_missing(prepared.seeds[j])?;
                    summary.missing += 1;
                } else {
                    w.push(
                        prepared.seeds[j],
                        &idx_u32[j * k..(j + 1) * k],
                        &prob[j * k..(j + 1) * k],
                    )?;
                }
            }
            summary.computed += unit.len as u64;
            bar.inc(unit.len as u64);
            if w.next_sample() == w.end_sample() {
                if let Some(w) = writers[unit.epoch as usize].take() {
                    let p = w.finish()?;
                    summary.total_bytes += p.bytes;
                    summary.files.push(p.path);
                }
            }
        }
        // Parts with nothing left to compute (resumed exactly at their end) are closed here.
        for w in writers.iter_mut() {
            if let Some(w) = w.take() {
                let p = w.finish()?;
                summary.total_bytes += p.bytes;
                summary.files.push(p.path);
            }
        }
        summary.teacher_seconds = teacher_time.as_secs_f64();
        Ok(())
    }
}

fn progress_bar(show: bool, todo: u64) -> indicatif::ProgressBar {
    let bar = if show {
        indicatif::ProgressBar::new(todo)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} images  {per_sec}  ETA {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// `tinyvit save-logits` arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Teacher: a TorchScript file (`.pt`, exported with torch.jit) or a TinyViT checkpoint (`.safetensors`).
    #[arg(long)]
    pub teacher: PathBuf,
    /// Data SPEC: `folder:DIR`, `idx:IMAGES[,LABELS]`, `fashion-mnist[:DIR]`, `mnist[:DIR]`.
    #[arg(long)]
    pub data: String,
    /// Epochs of augmented views to store (with `--resume`, more than the store has appends
    /// the missing epochs: the store then has the bytes of one written with them all at once).
    #[arg(long)]
    pub epochs: u32,
    /// Probabilities kept per sample.
    #[arg(long)]
    pub topk: u16,
    /// Store folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Write part I of N (0-based), e.g. from a job array index.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<String>,
    /// Continue an interrupted run from its last complete block, or extend a store by more
    /// `--epochs`.
    #[arg(long)]
    pub resume: bool,
    #[arg(long, value_enum, default_value = "auto")]
    pub device: crate::device::DeviceArg,
    /// Images per teacher forward (batches never cross a store block). Pinned for a store:
    /// `--resume` takes the size the store was written with.
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// Augmentation preset (in22k-distill, in1k-scratch without mixing, light).
    #[arg(long, default_value = "in22k-distill")]
    pub preset: String,
    /// Run seed: sample seeds are derived from (seed, epoch, index).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Teacher input side in pixels (default: the TinyViT checkpoint's, else the preset's).
    #[arg(long)]
    pub input_size: Option<u32>,
    /// The teacher's normalisation (`--teacher-norm`/`--norm`, `--teacher-mean`/`--mean`,
    /// `--teacher-std`/`--std`); default: a TinyViT checkpoint's recorded contract, else the
    /// preset's.
    #[command(flatten)]
    pub teacher_norm: crate::teacher::TeacherNorm,
    /// Augmentation override KEY=VALUE (repeatable; keys as `tinyvit augment` lists them).
    #[arg(long = "aug", value_name = "KEY=VALUE")]
    pub aug: Vec<String>,
    /// Teacher input channels (grey images are replicated to 3, RGB reduced to 1).
    #[arg(long)]
    pub channels: Option<u32>,
    #[arg(long, value_enum, default_value = "error")]
    pub on_bad_image: OnBadImage,
    /// Bits per stored probability: 16 (f16) or 8 (sqrt-companded byte).
    #[arg(long, default_value_t = 16)]
    pub value_bits: u32,
    /// Records per checksummed block (the resume granularity).
    #[arg(long, default_value_t = DEFAULT_RECORDS_PER_BLOCK)]
    pub block_records: u32,
    /// Decoding / augmentation threads (default: cores - 1).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Prepared batches queued ahead of the teacher.
    #[arg(long, default_value_t = 4)]
    pub prefetch: usize,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// Builds the augmentation config from the preset and the overriding flags (the teacher's
/// normalisation is set after, by [`crate::teacher::TeacherNorm::resolve`]).
pub fn aug_config(a: &Args) -> Result<AugConfig> {
    let mut cfg =
        aug::preset(&a.preset).map_err(|e| anyhow::anyhow!("--preset {}: {e}", a.preset))?;
    if cfg.mix.is_some() {
        cfg.mix = None;
    }
    let mut sets: Vec<(String, String)> = Vec::new();
    if let Some(n) = a.input_size {
        sets.push(("size".into(), n.to_string()));
    }
    for kv in &a.aug {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--aug {kv}: expected KEY=VALUE"))?;
        sets.push((k.trim().to_string(), v.trim().to_string()));
    }
    for (k, v) in sets {
        cfg.set(&k, &v)
            .map_err(|e| anyhow::anyhow!("augmentation `{k}={v}`: {e}"))?;
    }
    Ok(cfg)
}

/// `tinyvit save-logits`.
pub fn main(a: Args) -> Result<()> {
    let (part, parts) = match &a.shard {
        Some(s) => parse_shard(s)?,
        None => (0, 1),
    };
    let values = match a.value_bits {
        16 => ValueEncoding::F16,
        8 => ValueEncoding::Sqrt8,
        b => anyhow::bail!("--value-bits {b}: expected 16 or 8"),
    };
    let device = crate::device::resolve(a.device)?;
    let teacher = teacher::load(&a.teacher, device)?;
    let mut cfg = PassConfig::new(&a.data, &a.out, a.epochs, a.topk);
    cfg.part = part;
    cfg.parts = parts;
    cfg.resume = a.resume;
    cfg.batch_size = a.batch_size;
    cfg.aug_preset = a.preset.clone();
    cfg.aug = aug_config(&a)?;
    (cfg.aug.mean, cfg.aug.std) = a
        .teacher_norm
        .resolve(&*teacher, (cfg.aug.mean, cfg.aug.std))?;
    if a.input_size.is_none() {
        if let Some(c) = teacher.config() {
            cfg.aug.size = c.img_size;
        }
    }
    cfg.channels = a.channels;
    cfg.run_seed = a.seed;
    cfg.values = values;
    cfg.records_per_block = a.block_records;
    cfg.on_bad_image = a.on_bad_image;
    cfg.workers = a.workers.unwrap_or_else(default_workers);
    cfg.prefetch = a.prefetch;
    cfg.progress = !a.quiet;
    eprintln!(
        "teacher pass: {} on {:?}, data {}, epochs {}, top-{}, part {part}/{parts}, store {}",
        a.teacher.display(),
        device,
        a.data,
        a.epochs,
        a.topk,
        a.out.display()
    );
    let summary = run(&cfg, &*teacher)?;
    println!("{summary}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_specs() {
        assert_eq!(parse_shard("0/1").unwrap(), (0, 1));
        assert_eq!(parse_shard(" 3 / 8 ").unwrap(), (3, 8));
        for bad in ["1/1", "0/0", "x/2", "2", "1/-2"] {
            assert!(parse_shard(bad).is_err(), "{bad}");
        }
    }
}
