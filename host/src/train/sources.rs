//! Real-data [`Source`]s of a training run: dataset samples replayed through the core
//! augmentation codec, the stored top-K of a logit store, and the evaluation view.
//!
//! - Training view of sample `i` in epoch `e`: decode from the [`Dataset`], replay the core
//!   codec with the seed stored in the logit store (`--logits`) or
//!   `sample_seed(run_seed, e, i)` (`--labels`, `--teacher`), normalise with the augmentation
//!   config's mean/std to CHW f32.
//! - Evaluation view: resize to `size / aug::EVAL_CROP_PCT` (PIL bicubic, core resampler) and
//!   centre crop,
//!   normalised the same way (`--val`).
//!
//! `--val split:N` holds `N` samples of `--data` out for validation (chosen by
//! [`data::split`] with seed 0), so the training sees the rest; sample indices given to the
//! store are always indices into `--data`.

use std::sync::Arc;

use anyhow::{bail, ensure, Context, Result};
use tinyvit_core::aug::{self, AugConfig, ImageMut, ImageRef, Interpolation, EVAL_CROP_PCT};
use tinyvit_core::config::ModelConfig;

use super::args::TrainArgs;
use super::loader::{SampleMeta, Source, Synthetic};
use super::recipe::Recipe;
use super::seeds::{DerivedSeeds, SeedSource};
use super::store_seeds;
use crate::checkpoint::Contract;
use crate::data::{self, Dataset};

/// The data side of a run, resolved from the arguments.
pub struct DataPlan {
    pub train: Arc<dyn Source>,
    pub val: Option<Arc<dyn Source>>,
    pub test: Option<Arc<dyn Source>>,
    /// Classes the data or store defines, if it does.
    pub num_classes: Option<u32>,
    pub in_chans: Option<u32>,
    pub img_size: Option<u32>,
    /// The input contract of the run: normalisation of the training and evaluation views,
    /// the evaluation transform, the data's class names (size and channels left 0: the
    /// model's).
    pub input: Contract,
}

/// Resolves `--data`, `--val`, `--test` and `--logits` (or `--synthetic N`) into sources.
pub fn plan_data(args: &TrainArgs, cfg: &ModelConfig, recipe: &Recipe) -> Result<DataPlan> {
    let Some(n) = args.synthetic else {
        return plan(args, cfg, recipe);
    };
    let (c, s) = (cfg.in_chans as usize, cfg.img_size as usize);
    let k = if args.logits.is_some() {
        args.synthetic_topk
    } else {
        0
    };
    let synthetic = |n: usize, k: usize| Synthetic {
        n,
        shape: (c, s, s),
        classes: cfg.num_classes as usize,
        k,
    };
    Ok(DataPlan {
        train: Arc::new(synthetic(n, k)),
        val: args
            .val
            .as_ref()
            .map(|_| Arc::new(synthetic(n.min(256), 0)) as Arc<dyn Source>),
        test: None,
        num_classes: None,
        in_chans: None,
        img_size: None,
        input: Contract::default(),
    })
}

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

/// Training views: dataset + augmentation replay + normalisation.
pub struct AugSource {
    pub ds: Arc<dyn Dataset>,
    /// Dataset index of each training sample (identity, or one side of a split).
    pub indices: Vec<usize>,
    pub aug: AugConfig,
    pub seeds: Arc<dyn SeedSource>,
    pub channels: usize,
    /// Mixup / CutMix on pairs (`--labels` runs whose recipe mixes).
    pub mix: Option<PairMix>,
}

/// Pair mixing of a source: each sample is mixed with its neighbour in the epoch permutation
/// of (`run_seed`, epoch) over the source's samples ([`aug::pair_partner`]), with the pair's
/// parameters drawn from both samples' seeds ([`aug::pair_seed`], [`aug::mix_params`]). A
/// sample's input is thus a function of the data, the epoch, its index and the seeds only:
/// batch size, workers and sample order change nothing.
#[derive(Clone, Copy, Debug)]
pub struct PairMix {
    pub cfg: aug::MixConfig,
    pub run_seed: u64,
}

impl AugSource {
    /// The normalised view of source sample `j` for `seed` into `out`; returns its label.
    fn render(&self, j: usize, seed: u32, out: &mut [f32]) -> Result<Option<u32>> {
        let mut view = Vec::new();
        let label = self.ds.view(
            self.indices[j],
            &self.aug,
            seed,
            self.channels as u32,
            &mut view,
        )?;
        normalize_into(&view, self.channels, &self.aug.mean, &self.aug.std, out)?;
        Ok(label)
    }

    /// Mixes sample `j`'s normalised view `out` with its pair partner's; returns the
    /// partner's label and `j`'s own weight.
    fn mix_in(
        &self,
        m: &PairMix,
        epoch: u64,
        j: usize,
        seed: u32,
        label: Option<u32>,
        out: &mut [f32],
    ) -> Result<(Option<u32>, f32)> {
        let n = self.indices.len() as u64;
        let e = u32::try_from(epoch).context("epoch beyond the seed codec's range")?;
        let partner = aug::pair_partner(m.run_seed, e, n, j as u64)
            .map_err(|err| anyhow::anyhow!("pair of sample {j}: {err}"))?;
        let Some(k) = partner else {
            // The unpaired last sample of an odd epoch stays as it is.
            return Ok((label, 1.0));
        };
        let k = k as usize;
        let (other_seed, _) = self.seeds.seed(epoch, self.indices[k])?;
        let mut other = vec![0f32; out.len()];
        let other_label = self.render(k, other_seed, &mut other)?;
        let size = self.aug.size;
        let p = aug::mix_params(&m.cfg, aug::pair_seed(seed, other_seed), size, size)
            .map_err(|err| anyhow::anyhow!("mix parameters: {err}"))?;
        aug::apply_mix(&p, out, &other, self.channels as u32, size, size)
            .map_err(|err| anyhow::anyhow!("mixing sample {j} with {k}: {err}"))?;
        Ok((other_label, p.lam))
    }
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
        let label = self.render(j, seed, out)?;
        let mix = match &self.mix {
            None => None,
            Some(m) => Some(self.mix_in(m, epoch, j, seed, label, out)?),
        };
        Ok(SampleMeta { label, topk, mix })
    }
}

/// Evaluation views: resize to `size / EVAL_CROP_PCT` (bicubic) and centre crop `size`,
/// normalised.
pub struct EvalSource {
    pub ds: Arc<dyn Dataset>,
    pub indices: Vec<usize>,
    pub size: u32,
    pub channels: usize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// Centre-crop fraction and filter of the evaluation transform (the model's contract).
    pub crop_fraction: f32,
    pub interpolation: Interpolation,
}

impl EvalSource {
    /// The 8-bit evaluation view of dataset sample `i` (`size x size`, HWC) and its label.
    pub fn view(&self, i: usize) -> Result<(Vec<u8>, Option<u32>)> {
        let s = self
            .ds
            .get(i)
            .with_context(|| format!("sample {}", self.ds.name(i)))?;
        // Converted to the model's channels as training views are (folder images decode to
        // RGB; a grey model sees their luma).
        let img = crate::data::decode::to_channels(s.image, self.channels as u32);
        let im = &img;
        let c = im.channels;
        // The core's evaluation transform (resize to size / crop fraction, centre crop): the
        // same bytes the exported model sees in `tinyvit infer` and on the device.
        let src = ImageRef::new(im.width, im.height, c, &im.data)
            .map_err(|e| anyhow::anyhow!("sample {}: {e}", self.ds.name(i)))?;
        let need = aug::eval_scratch_len(im.width, im.height, self.size, self.crop_fraction, c)
            .map_err(|e| anyhow::anyhow!("evaluation view of {}: {e}", self.ds.name(i)))?;
        let mut scratch = vec![0u8; need];
        let mut crop = vec![0u8; (self.size * self.size * c) as usize];
        let dst = ImageMut::new(self.size, self.size, c, &mut crop)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        aug::eval_transform(
            src,
            dst,
            self.crop_fraction,
            self.interpolation,
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
        Ok(SampleMeta {
            label,
            topk: None,
            mix: None,
        })
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

/// The training data SPEC: `--data`, else the one the `--logits` store's manifest records
/// (then with the store's folder).
pub fn data_spec(args: &TrainArgs) -> Result<(String, Option<std::path::PathBuf>)> {
    if let Some(d) = &args.data {
        return Ok((d.clone(), None));
    }
    let dir = args
        .logits
        .as_ref()
        .context("--data is required (or --logits DIR, whose store records its data)")?;
    let m = crate::store::manifest::Manifest::load(dir)?;
    Ok((m.data_spec, Some(dir.clone())))
}

/// Builds the sources of a real-data run.
fn plan(args: &TrainArgs, cfg: &ModelConfig, recipe: &Recipe) -> Result<DataPlan> {
    let (spec, from_store) = data_spec(args)?;
    let spec = spec.as_str();
    let ds = data::open(spec).with_context(|| match &from_store {
        Some(dir) => format!(
            "the data the store {} records, {spec} (moved? give --data)",
            dir.display()
        ),
        None => format!("--data {spec}"),
    })?;
    let channels = channels_of(ds.as_ref())?;
    let (mut train_idx, val) = split_val(&ds, args.val.as_deref())?;
    if let Some(f) = &args.exclude {
        let excluded = crate::exclusions::read(f, ds.as_ref())?;
        let before = train_idx.len();
        train_idx = crate::exclusions::remove(&train_idx, &excluded);
        eprintln!(
            "--exclude {}: {} of {before} training samples left out",
            f.display(),
            before - train_idx.len()
        );
        ensure!(
            !train_idx.is_empty(),
            "--exclude {}: no training sample left",
            f.display()
        );
    }
    let (aug_cfg, seeds, num_classes): (AugConfig, Arc<dyn SeedSource>, Option<u32>) =
        match &args.logits {
            Some(dir) => {
                let given = store_seeds::Given {
                    num_classes: args.num_classes.is_some(),
                    img_size: args.img_size.is_some(),
                    in_chans: args.in_chans.is_some(),
                };
                let st = store_seeds::open(dir, ds.as_ref(), cfg, given)?;
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
        mix: recipe.mix().filter(|_| args.labels).map(|cfg| PairMix {
            cfg,
            run_seed: recipe.seed,
        }),
    });
    // The evaluation view of `ds` (`flag` names it in errors), converted to `--data`'s
    // channels as the training views are.
    let eval_source = |flag: &str, ds: Arc<dyn Dataset>, indices: Vec<usize>| {
        ensure!(!indices.is_empty(), "{flag} data holds no images");
        Ok(Arc::new(EvalSource {
            ds,
            indices,
            size: aug_cfg.size,
            channels: channels as usize,
            mean: aug_cfg.mean,
            std: aug_cfg.std,
            crop_fraction: EVAL_CROP_PCT,
            interpolation: Interpolation::Bicubic,
        }) as Arc<dyn Source>)
    };
    // Unlabelled evaluation data measures agreement with an online teacher; without one there
    // is nothing to measure, said before any training step.
    // A store holds the teacher's top-K for the augmented training views only, so a --logits
    // run measures agreement with the store's teacher run on the evaluation views (--teacher).
    let measurable = |flag: &str, ds: &Arc<dyn Dataset>| {
        if ds.num_classes().is_some() {
            return Ok(());
        }
        if let Some(dir) = &args.logits {
            ensure!(
                args.teacher.is_some(),
                "{flag} {}: the data has no labels, and the store {} holds its teacher's top-K \
                 for the augmented training views only, not for this data: give --teacher FILE \
                 (the store's teacher, {}) to measure the student's top-1 agreement with it",
                ds.spec(),
                dir.display(),
                crate::store::Manifest::load(dir)
                    .map(|m| m.teacher.file)
                    .unwrap_or_else(|_| "see its manifest.json".into())
            );
            eprintln!(
                "{flag} {}: no labels; reporting top-1 agreement with the store's teacher \
                 (--teacher, run on the evaluation views)",
                ds.spec()
            );
            return Ok(());
        }
        ensure!(
            args.teacher.is_some(),
            "{flag} {}: the data has no labels and the run has no online teacher (--teacher) to \
             agree with: nothing to measure",
            ds.spec()
        );
        eprintln!(
            "{flag} {}: no labels; reporting top-1 agreement with the online teacher",
            ds.spec()
        );
        Ok(())
    };
    if let Some((vd, _)) = &val {
        measurable("--val", vd)?;
    }
    let val = val
        .map(|(vd, idx)| eval_source("--val", vd, idx))
        .transpose()?;
    let test = match &args.test {
        Some(spec) => {
            let td = data::open(spec).with_context(|| format!("--test {spec}"))?;
            measurable("--test", &td)?;
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
        input: Contract {
            mean: aug_cfg.mean,
            std: aug_cfg.std,
            class_names: ds.class_names().unwrap_or_default(),
            ..Contract::default()
        },
    })
}

/// Evaluation data outside a run (`tinyvit export --val`): `--val SPEC`, or `split:N` of
/// `data`, at most `limit` samples, viewed as the run's evaluation was (`size`, `input`);
/// the data must have `channels` channels.
pub fn validation_source(
    val: &str,
    data: Option<&str>,
    limit: Option<usize>,
    channels: u32,
    size: u32,
    input: &Contract,
) -> Result<Arc<dyn Source>> {
    let ds_spec = if val.starts_with("split:") {
        data.context("--val split:N needs --data")?
    } else {
        val
    };
    let ds = data::open(ds_spec).with_context(|| format!("open {ds_spec}"))?;
    let (_, v) = split_val(&ds, Some(val))?;
    let (vd, mut idx) = v.context("no validation data")?;
    if let Some(l) = limit {
        idx.truncate(l);
    }
    ensure!(!idx.is_empty(), "validation data {val} holds no images");
    Ok(Arc::new(EvalSource {
        ds: vd,
        indices: idx,
        size,
        channels: channels as usize,
        mean: input.mean,
        std: input.std,
        crop_fraction: input.crop_fraction,
        interpolation: input.interpolation,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Fingerprint, Image, Sample};

    /// Seven labelled 20x16 RGB images held in memory.
    struct Mem;

    impl Dataset for Mem {
        fn len(&self) -> usize {
            7
        }
        fn get(&self, i: usize) -> Result<Sample> {
            let data = (0..20 * 16 * 3).map(|p| (p * 7 + i * 53) as u8).collect();
            Ok(Sample {
                image: Image {
                    width: 20,
                    height: 16,
                    channels: 3,
                    data,
                },
                label: Some(i as u32 % 3),
            })
        }
        fn name(&self, i: usize) -> String {
            format!("mem[{i}]")
        }
        fn num_classes(&self) -> Option<u32> {
            Some(3)
        }
        fn fingerprint(&self) -> Fingerprint {
            Fingerprint {
                len: 7,
                sha256: String::new(),
            }
        }
        fn spec(&self) -> &str {
            "mem"
        }
    }

    /// Each sample is mixed with its neighbour in the epoch permutation, both members with the
    /// same weight and each other's label, whatever order the samples are asked in; the odd one
    /// out stays unmixed; a mixup sample is exactly the blend of the two plain views.
    #[test]
    fn pair_mixing_is_per_sample_and_symmetric() {
        let mut cfg = aug::preset("light").unwrap();
        cfg.size = 8;
        let mix = aug::MixConfig {
            mixup_alpha: 0.8,
            cutmix_alpha: 1.0,
            switch_prob: 0.5,
            prob: 1.0,
        };
        let source = |mix: Option<PairMix>| AugSource {
            ds: Arc::new(Mem),
            indices: (0..7).collect(),
            aug: cfg,
            seeds: Arc::new(DerivedSeeds(5)),
            channels: 3,
            mix,
        };
        let (mixed, plain) = (
            source(Some(PairMix {
                cfg: mix,
                run_seed: 5,
            })),
            source(None),
        );
        let per = 3 * 8 * 8;
        let (mut kinds, mut unpaired) = (std::collections::BTreeSet::new(), 0);
        for epoch in 0..6u64 {
            let run = |s: &AugSource, j: usize| {
                let mut x = vec![0f32; per];
                let m = s.sample(epoch, j, &mut x).unwrap();
                (x, m.label, m.mix)
            };
            let fwd: Vec<_> = (0..7).map(|j| run(&mixed, j)).collect();
            let mut rev: Vec<_> = (0..7).rev().map(|j| run(&mixed, j)).collect();
            rev.reverse();
            let base: Vec<_> = (0..7).map(|j| run(&plain, j)).collect();
            for j in 0..7 {
                let (x, label, m) = &fwd[j];
                assert!(*x == rev[j].0 && m == &rev[j].2, "epoch {epoch} sample {j}");
                match aug::pair_partner(5, epoch as u32, 7, j as u64).unwrap() {
                    None => {
                        unpaired += 1;
                        assert_eq!(*m, Some((*label, 1.0)));
                        assert!(*x == base[j].0);
                    }
                    Some(k) => {
                        let k = k as usize;
                        let (lam, other) = (m.unwrap().1, fwd[k].2.unwrap());
                        assert_eq!(m.unwrap().0, fwd[k].1);
                        assert_eq!(other, (*label, lam));
                        let seed = |i| DerivedSeeds(5).seed(epoch, i).unwrap().0;
                        let p =
                            aug::mix_params(&mix, aug::pair_seed(seed(j), seed(k)), 8, 8).unwrap();
                        assert_eq!(p.lam, lam);
                        kinds.insert(format!("{:?}", p.kind).chars().take(5).collect::<String>());
                        if p.kind == aug::MixKind::Mixup {
                            for ((&o, &a), &b) in x.iter().zip(&base[j].0).zip(&base[k].0) {
                                assert_eq!(o, a * lam + b * (1.0 - lam));
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(unpaired, 6);
        assert!(
            kinds.contains("Mixup") && kinds.contains("Cutmi"),
            "{kinds:?}"
        );
    }
}
