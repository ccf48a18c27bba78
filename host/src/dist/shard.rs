//! How N ranks split the training data: every rank computes the same epoch order (a pure
//! function of the run seed and the epoch), and rank r takes the r-th of `world` equal,
//! consecutive slices of each global batch. The union over the ranks of step s's samples is
//! then exactly the global batch a one-rank run takes at step s, so the averaged gradient is
//! the one-rank gradient up to the order of float summation.

use anyhow::{ensure, Result};

/// Each rank's share of a global batch of `batch`: `batch / world`, which must be whole.
pub fn local_batch(batch: usize, world: usize) -> Result<usize> {
    ensure!(
        world > 0 && batch.is_multiple_of(world) && batch >= world,
        "--batch-size {batch} is the global batch and must split evenly over {world} ranks"
    );
    Ok(batch / world)
}

/// Rank `rank`'s part of `order` (one epoch's sample order), for global batches of `batch`:
/// of each whole global batch, the slice `[rank * b, (rank + 1) * b)` with `b = batch / world`.
/// A trailing partial batch is dropped, as the trainer drops it.
pub fn shard_order(order: &[usize], batch: usize, rank: usize, world: usize) -> Result<Vec<usize>> {
    let b = local_batch(batch, world)?;
    ensure!(rank < world, "rank {rank} of a world of {world}");
    Ok(order
        .chunks_exact(batch)
        .flat_map(|g| &g[rank * b..(rank + 1) * b])
        .copied()
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_tile_each_global_batch() {
        let order: Vec<usize> = (0..23).map(|i| (i * 7) % 23).collect();
        let (batch, world) = (6, 3);
        let shards: Vec<Vec<usize>> = (0..world)
            .map(|r| shard_order(&order, batch, r, world).unwrap())
            .collect();
        for s in &shards {
            assert_eq!(s.len(), 3 * 2, "three whole global batches of two per rank");
        }
        for step in 0..3 {
            let got: Vec<usize> = shards
                .iter()
                .flat_map(|s| s[step * 2..step * 2 + 2].iter().copied())
                .collect();
            let want = &order[step * batch..(step + 1) * batch];
            assert_eq!(got, want, "step {step}: rank slices in rank order");
        }
    }

    #[test]
    fn one_rank_is_the_order() {
        let order: Vec<usize> = (0..10).rev().collect();
        assert_eq!(shard_order(&order, 5, 0, 1).unwrap(), order);
        assert_eq!(shard_order(&order, 4, 0, 1).unwrap(), order[..8]);
    }

    #[test]
    fn uneven_batch_is_refused() {
        let e = local_batch(10, 4).unwrap_err();
        assert!(format!("{e}").contains("--batch-size 10"), "{e}");
        assert!(local_batch(2, 4).is_err());
        assert_eq!(local_batch(12, 4).unwrap(), 3);
    }
}
