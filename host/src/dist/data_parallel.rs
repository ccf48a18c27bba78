//! The trainer's view of a multi-process run: one value that every hook of the training loop
//! calls, the identity when the run is a single process.

use std::time::Duration;

use anyhow::Result;
use tch::{Device, Tensor};

use super::{shard, Launch, ProcessGroup};

/// This process's part in a data-parallel run (or the whole of a single-process one).
pub struct DataParallel {
    group: Option<ProcessGroup>,
}

impl DataParallel {
    /// A single-process run.
    pub fn single() -> DataParallel {
        DataParallel { group: None }
    }

    /// Joins the run the launcher's environment describes ([`Launch`]), or runs alone when
    /// it describes none; every wait for a peer gives up after `timeout`.
    pub fn from_env(timeout: Duration) -> Result<DataParallel> {
        let group = match Launch::from_env()? {
            Some(l) => Some(ProcessGroup::init(&l, timeout)?),
            None => None,
        };
        Ok(DataParallel { group })
    }

    pub fn rank(&self) -> usize {
        self.group.as_ref().map_or(0, |g| g.rank())
    }

    pub fn world(&self) -> usize {
        self.group.as_ref().map_or(1, |g| g.world())
    }

    /// Rank 0 (or the only process): the one that writes files and prints progress.
    pub fn is_main(&self) -> bool {
        self.rank() == 0
    }

    /// The device of this rank: CUDA device `LOCAL_RANK` when training on CUDA.
    pub fn device(&self, d: Device) -> Device {
        match (&self.group, d) {
            (Some(g), Device::Cuda(_)) => Device::Cuda(g.local_rank()),
            _ => d,
        }
    }

    /// This rank's batch: its share of the global `--batch-size`.
    pub fn local_batch(&self, global: usize) -> Result<usize> {
        shard::local_batch(global, self.world())
    }

    /// This rank's part of an epoch's sample order (see [`shard`]).
    pub fn shard(&self, order: Vec<usize>, global_batch: usize) -> Result<Vec<usize>> {
        if self.group.is_none() {
            return Ok(order);
        }
        shard::shard_order(&order, global_batch, self.rank(), self.world())
    }

    /// Makes every rank start from rank 0's values of `vars` (weights and buffers, also after
    /// a resume) and checks that they now agree byte for byte.
    pub fn sync_start(&self, vars: &[Tensor]) -> Result<()> {
        if let Some(g) = &self.group {
            g.broadcast_and_check(vars)?;
        }
        Ok(())
    }

    /// Fails unless every rank passes the same `value` for `what` (e.g. the resumed step).
    pub fn check_same(&self, what: &str, value: &str) -> Result<()> {
        match &self.group {
            Some(g) => g.check_same(what, value),
            None => Ok(()),
        }
    }

    /// Averages the gradients over the ranks, in place.
    pub fn average_grads(&self, grads: &[Tensor]) -> Result<()> {
        match &self.group {
            Some(g) => g.all_reduce_mean(grads),
            None => Ok(()),
        }
    }

    /// The mean of `values` over the ranks, element-wise (losses of equal shares).
    pub fn mean(&self, values: &mut [f64]) -> Result<()> {
        if let Some(g) = &self.group {
            g.all_reduce_sum_f64(values)?;
            let n = g.world() as f64;
            values.iter_mut().for_each(|v| *v /= n);
        }
        Ok(())
    }

    /// The sum of `values` over the ranks, element-wise (counts).
    pub fn sum(&self, values: &mut [f64]) -> Result<()> {
        match &self.group {
            Some(g) => g.all_reduce_sum_f64(values),
            None => Ok(()),
        }
    }

    /// Waits until every rank gets here (rank 0 has written what the others read next).
    pub fn barrier(&self) -> Result<()> {
        match &self.group {
            Some(g) => g.barrier(),
            None => Ok(()),
        }
    }
}
