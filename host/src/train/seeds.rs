//! Where the augmentation seed (and stored target) of each (epoch, sample) comes from: derived
//! from the run seed ([`DerivedSeeds`]) or read from a logit store
//! ([`super::store_seeds::StoreSeeds`]). The training source ([`super::sources::AugSource`])
//! asks a [`SeedSource`] and does not know which.

use anyhow::Result;
use tinyvit_core::aug;

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
