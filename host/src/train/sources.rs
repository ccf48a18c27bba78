//! Real-data [`Source`]s of a training run: dataset samples replayed through the core
//! augmentation codec, the stored top-K of a logit store, and the evaluation view.
//!
//! - Training view of sample `i` in epoch `e`: decode from the [`Dataset`], replay the core
//!   codec with the seed stored in the logit store (`--logits`) or
//!   `sample_seed(run_seed, e, i)` (`--labels`, `--teacher`), normalise with the augmentation
//!   config's mean/std to CHW f32.
//! - Evaluation view: resize to `size / 0.875` (PIL bicubic, core resampler) and centre crop,
//!   normalised the same way (`--val`).
//!
//! `--val split:N` holds `N` samples of `--data` out for validation (chosen by
//! [`data::split`] with seed 0), so the training sees the rest; sample indices given to the
//! store are always indices into `--data`.

use std::sync::Arc;

use anyhow::{bail, ensure, Context, Result};
use tinyvit_core::aug::{self, AugConfig, ImageMut, ImageRef, Interpolation};
use tinyvit_core::config::ModelConfig;

use super::loader::{SampleMeta, Source};
use super::recipe::Recipe;
use super::{DataPlan, TrainArgs};
use crate::data::{self, Dataset};

/// Normalises an 8-bit HWC image into CHW f32 with the core's [`aug::normalize`]:
/// `(v / 255 - mean[c]) / std[c]`, the values the device computes from the same bytes.
pub fn normalize_into(
    img: &[u8],
    channels: usize,
    mean: &[f32; 3],
    std: &[f32; 3],
    out: &mut [f32],
) -> Result<()> {
    // The layout only matters as pixels x channels, so one row of `hw` pixels will do.
    let hw = (img.len() / channels.max(1)) as u32;
    let view = ImageRef::new(hw, 1, channels as u32, img).map_err(|e| anyhow::anyhow!("{e}"))?;
    aug::normalize(view, *mean, *std, out).map_err(|e| anyhow::anyhow!("normalise: {e}"))
}

/// Where the augmentation seed of each (epoch, sample) comes from.
pub trait SeedSource: Send + Sync {
    /// Seed and optional stored top-K of sample `index` (an index into the full dataset) in
    /// `epoch`.
    fn seed(&self, epoch: u64, index: usize) -> Result<(u32, Option<TopK>)>;
}

/// Stored top-K of one sample: class indices and probabilities.
pub type TopK = (Vec<i64>, Vec<f32>);

/// `sample_seed(run_seed, epoch, index)`: the seeds of runs without a store.
#[derive(Debug)]
pub struct DerivedSeeds(pub u64);

impl SeedSource for DerivedSeeds {
    fn seed(&self, epoch: u64, index: usize) -> Result<(u32, Option<TopK>)> {
        Ok((aug::sample_seed(self.0, epoch as u32, index as u64), None))
    }
}

/// Training views: dataset + augmentation replay + normalisation.
pub struct AugSource {
    pub ds: Arc<dyn Dataset>,
    /// Dataset index of each training sample (identity, or one side of a split).
    pub indices: Vec<usize>,
    pub aug: AugConfig,
    pub seeds: Arc<dyn SeedSource>,
    pub channels: usize,
}

impl Source for AugSource {
    fn len(&self) -> usize {
        self.indices.len()
    }
    fn shape(&self) -> (usize, usize, usize) {
        let s = self.aug.size as usize;
        (self.channels, s, s)
    }
    fn sample(&self, epoch: u64, j: usize, out: &mut [f32]) -> Result<SampleMeta> {
        let i = self.indices[j];
        let (seed, topk) = self.seeds.seed(epoch, i)?;
        let mut view = Vec::new();
        let label = self
            .ds
            .view(i, &self.aug, seed, self.channels as u32, &mut view)?;
        normalize_into(&view, self.channels, &self.aug.mean, &self.aug.std, out)?;
        Ok(SampleMeta { label, topk })
    }
}

/// Centre-crop fraction of the evaluation view (timm's default `crop_pct`).
pub const EVAL_CROP_PCT: f32 = 0.875;

/// Evaluation views: resize to `size / 0.875` (bicubic) and centre crop `size`, normalised.
pub struct EvalSource {
    pub ds: Arc<dyn Dataset>,
    pub indices: Vec<usize>,
    pub size: u32,
    pub channels: usize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl EvalSource {
    /// The 8-bit evaluation view of dataset sample `i` (`size x size`, HWC) and its label.
    pub fn view(&self, i: usize) -> Result<(Vec<u8>, Option<u32>)> {
        let s = self
            .ds
            .get(i)
            .with_context(|| format!("sample {}", self.ds.name(i)))?;
        let im = &s.image;
        let c = im.channels;
        ensure!(
            c as usize == self.channels,
            "sample {} has {c} channels, the run uses {}",
            self.ds.name(i),
            self.channels
        );
        // The core's evaluation transform (resize to size / 0.875 bicubic, centre crop): the
        // same bytes the exported model sees in `tinyvit infer` and on the device.
        let src = ImageRef::new(im.width, im.height, c, &im.data)
            .map_err(|e| anyhow::anyhow!("sample {}: {e}", self.ds.name(i)))?;
        let need = aug::eval_scratch_len(im.width, im.height, self.size, EVAL_CROP_PCT, c)
            .map_err(|e| anyhow::anyhow!("evaluation view of {}: {e}", self.ds.name(i)))?;
        let mut scratch = vec![0u8; need];
        let mut crop = vec![0u8; (self.size * self.size * c) as usize];
        let dst = ImageMut::new(self.size, self.size, c, &mut crop)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        aug::eval_transform(
            src,
            dst,
            EVAL_CROP_PCT,
            Interpolation::Bicubic,
            &mut scratch,
        )
        .map_err(|e| anyhow::anyhow!("evaluation view of {}: {e}", self.ds.name(i)))?;
        Ok((crop, s.label))
    }
}

impl Source for EvalSource {
    fn len(&self) -> usize {
        self.indices.len()
    }
    fn shape(&self) -> (usize, usize, usize) {
        let s = self.size as usize;
        (self.channels, s, s)
    }
    fn sample(&self, _epoch: u64, j: usize, out: &mut [f32]) -> Result<SampleMeta> {
        let (view, label) = self.view(self.indices[j])?;
        normalize_into(&view, self.channels, &self.mean, &self.std, out)?;
        Ok(SampleMeta { label, topk: None })
    }
}

/// The augmentation config of a run without a store: the recipe's preset at the model's size.
pub fn aug_config(recipe: &Recipe, size: u32) -> Result<AugConfig> {
    let mut a = aug::preset(&recipe.aug)
        .map_err(|e| anyhow::anyhow!("augmentation preset `{}`: {e}", recipe.aug))?;
    a.size = size;
    a.validate()
        .map_err(|e| anyhow::anyhow!("augmentation config: {e}"))?;
    Ok(a)
}

/// Channels of a dataset, from its first sample.
pub fn channels_of(ds: &dyn Dataset) -> Result<u32> {
    ensure!(!ds.is_empty(), "dataset {} is empty", ds.spec());
    Ok(ds.get(0)?.image.channels)
}

/// Splits `--data` by `--val split:N` or opens `--val SPEC`: returns (train indices, val
/// dataset and indices).
#[allow(clippy::type_complexity)]
pub fn split_val(
    ds: &Arc<dyn Dataset>,
    val: Option<&str>,
) -> Result<(Vec<usize>, Option<(Arc<dyn Dataset>, Vec<usize>)>)> {
    match val {
        None => Ok(((0..ds.len()).collect(), None)),
        Some(v) => {
            if let Some(n) = v.strip_prefix("split:") {
                let n: usize = n
                    .parse()
                    .with_context(|| format!("--val split:N: `{n}` is not a count"))?;
                let (train, valid) = data::split(ds.len(), n, 0)?;
                Ok((train, Some((Arc::clone(ds), valid))))
            } else {
                let vd = data::open(v).with_context(|| format!("--val {v}"))?;
                let idx = (0..vd.len()).collect();
                Ok(((0..ds.len()).collect(), Some((vd, idx))))
            }
        }
    }
}

/// Builds the sources of a real-data run.
pub fn plan(args: &TrainArgs, cfg: &ModelConfig, recipe: &Recipe) -> Result<DataPlan> {
    let spec = args.data.as_deref().context("--data is required")?;
    let ds = data::open(spec).with_context(|| format!("--data {spec}"))?;
    let channels = channels_of(ds.as_ref())?;
    let (train_idx, val) = split_val(&ds, args.val.as_deref())?;
    let (aug_cfg, seeds, num_classes): (AugConfig, Arc<dyn SeedSource>, Option<u32>) =
        match &args.logits {
            Some(dir) => {
                let given = super::store_seeds::Given {
                    num_classes: args.num_classes.is_some(),
                    img_size: args.img_size.is_some(),
                    in_chans: args.in_chans.is_some(),
                };
                let st = super::store_seeds::open(dir, ds.as_ref(), cfg, given)?;
                (st.aug, Arc::new(st.seeds), Some(st.num_classes))
            }
            None => {
                let size = args.img_size.unwrap_or(cfg.img_size);
                (
                    aug_config(recipe, size)?,
                    Arc::new(DerivedSeeds(recipe.seed)),
                    ds.num_classes(),
                )
            }
        };
    if args.labels && ds.num_classes().is_none() {
        bail!("--labels: {spec} has no labels");
    }
    let train = Arc::new(AugSource {
        ds: Arc::clone(&ds),
        indices: train_idx,
        aug: aug_cfg,
        seeds,
        channels: channels as usize,
    });
    // The evaluation view of `ds` (`flag` names it in errors): same channels as `--data`.
    let eval_source = |flag: &str, ds: Arc<dyn Dataset>, indices: Vec<usize>| {
        let c = channels_of(ds.as_ref())?;
        ensure!(
            c == channels,
            "{flag} data has {c} channels, --data has {channels}"
        );
        Ok(Arc::new(EvalSource {
            ds,
            indices,
            size: aug_cfg.size,
            channels: channels as usize,
            mean: aug_cfg.mean,
            std: aug_cfg.std,
        }) as Arc<dyn Source>)
    };
    let val = val
        .map(|(vd, idx)| eval_source("--val", vd, idx))
        .transpose()?;
    let test = match &args.test {
        Some(spec) => {
            let td = data::open(spec).with_context(|| format!("--test {spec}"))?;
            Some(eval_source(
                "--test",
                Arc::clone(&td),
                (0..td.len()).collect(),
            )?)
        }
        None => None,
    };
    Ok(DataPlan {
        train,
        val,
        test,
        num_classes: num_classes.or(ds.num_classes()),
        in_chans: Some(channels),
        img_size: Some(aug_cfg.size),
        input: super::checkpoint::InputSpec {
            mean: aug_cfg.mean,
            std: aug_cfg.std,
        },
    })
}
