//! Distillation targets and replay seeds from a sparse logit store (`--logits DIR`).
//!
//! The store is opened through [`LogitStore::open_for`], which refuses a store made for another
//! dataset (fingerprint), K or class count; this module adds the trainer's own checks: the
//! augmentation version of the core codec, the model's input size and channels against the
//! store's augmentation and teacher input, and, when `--num-classes` was given, the class count.
//!
//! Epoch `e` of training reads store epoch `epochs[e % epochs.len()]` (the complete epochs of
//! the store, ascending), so a run longer than the teacher pass cycles over the stored epochs
//! instead of failing, as users of the reference ask for.

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use tinyvit_core::aug::{AugConfig, AUG_VERSION};
use tinyvit_core::config::ModelConfig;

use super::seeds::{SeedSource, TopK};
use crate::data::Dataset;
use crate::store::LogitStore;

/// A store opened for training.
pub struct StoreSeeds {
    store: LogitStore,
    epochs: Vec<u32>,
    k: usize,
}

/// What the trainer takes from the store.
pub struct Opened {
    pub seeds: StoreSeeds,
    /// The augmentation the teacher saw (replayed exactly).
    pub aug: AugConfig,
    pub num_classes: u32,
}

/// Opens `dir` for training on `ds` with a model built from `cfg` (whose `num_classes`,
/// `img_size` and `in_chans` are only checked when `given` says the user fixed them).
pub fn open(dir: &Path, ds: &dyn Dataset, cfg: &ModelConfig, given: Given) -> Result<Opened> {
    let classes = given.num_classes.then_some(cfg.num_classes);
    let store = LogitStore::open_for(dir, &ds.fingerprint(), None, classes)
        .with_context(|| format!("--logits {}", dir.display()))?;
    let m = store.manifest().clone();
    ensure!(
        m.aug_version == AUG_VERSION,
        "--logits {}: records replay augmentation version {}, this build has version {AUG_VERSION}",
        dir.display(),
        m.aug_version
    );
    if given.img_size {
        ensure!(
            m.aug.size == cfg.img_size,
            "--logits {}: the teacher saw {}px views, --img-size is {}",
            dir.display(),
            m.aug.size,
            cfg.img_size
        );
    }
    if given.in_chans {
        ensure!(
            m.teacher.channels == cfg.in_chans,
            "--logits {}: the teacher saw {}-channel images, --in-chans is {}",
            dir.display(),
            m.teacher.channels,
            cfg.in_chans
        );
    }
    let epochs = store.epochs();
    if epochs.is_empty() {
        bail!(
            "--logits {}: no complete epoch ({})",
            dir.display(),
            store.incomplete().join("; ")
        );
    }
    let k = m.topk as usize;
    Ok(Opened {
        aug: m.aug,
        num_classes: m.num_classes,
        seeds: StoreSeeds { store, epochs, k },
    })
}

/// Which model dimensions the user fixed on the command line.
#[derive(Clone, Copy, Debug, Default)]
pub struct Given {
    pub num_classes: bool,
    pub img_size: bool,
    pub in_chans: bool,
}

impl StoreSeeds {
    /// The store epoch that training epoch `epoch` reads.
    pub fn store_epoch(&self, epoch: u64) -> u32 {
        self.epochs[(epoch % self.epochs.len() as u64) as usize]
    }
}

impl SeedSource for StoreSeeds {
    fn seed(&self, epoch: u64, index: usize) -> Result<(u32, Option<TopK>)> {
        let e = self.store_epoch(epoch);
        let r = self.store.record(e, index as u64)?;
        if r.is_missing() {
            bail!(
                "logit store {}: epoch {e}, sample {index} is marked missing (the teacher pass skipped a bad image)",
                self.store.dir().display()
            );
        }
        let mut idx = vec![0u32; self.k];
        let mut p = vec![0f32; self.k];
        r.read_into(&mut idx, &mut p).map_err(|err| {
            anyhow::anyhow!(
                "logit store {}: epoch {e}, sample {index}: {err}",
                self.store.dir().display()
            )
        })?;
        Ok((
            r.seed(),
            Some((idx.into_iter().map(i64::from).collect(), p)),
        ))
    }
}
