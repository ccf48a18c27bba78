//! Data-parallel training over N processes, one per GPU (or per CPU socket), on one machine or
//! many, over PyTorch's c10d collective engine from the libtorch we link.
//!
//! - **Rendezvous**: c10d's `TCPStore`, served by rank 0 at `MASTER_ADDR:MASTER_PORT`; who is
//!   who comes from the launcher's environment ([`Launch`]: torchrun, Slurm's `srun`,
//!   `cargo xtask train --nproc N`).
//! - **Collectives**: c10d's `ProcessGroupGloo` over TCP. CPU tensors go to it directly; CUDA
//!   tensors are staged through host memory (NCCL is not wired).
//! - **Gradients** are flattened into a few contiguous buckets ([`BUCKET_BYTES`]), each summed
//!   over the ranks in one call and divided by the world size: the engine sees a handful of
//!   large messages per step, not one per tensor.
//! - **Failure**: every collective and store wait gives up after `--dist-timeout` (default
//!   [`DEFAULT_TIMEOUT`]); a peer's death is seen at once as a broken connection. Each rank
//!   keeps a heartbeat counter in the store, so the error then says which rank was lost:
//!   one whose heartbeat stopped (dead or frozen), or one still alive but behind in the
//!   sequence of collectives (hung outside them). Rank 0 serves the store, so an unreachable
//!   store names rank 0.
//!
//! Needs the `dist` feature (gloo's headers at build time); without it a multi-process launch
//! is refused with an error that says so.

mod data_parallel;
pub mod launch;
pub mod shard;

#[cfg(feature = "dist")]
mod engine;
#[cfg(feature = "dist")]
mod group;

pub use data_parallel::DataParallel;
pub use launch::Launch;

#[cfg(feature = "dist")]
pub use group::ProcessGroup;

use std::time::Duration;

/// Longest wait for a peer before a rank gives up: well under the 5 minutes a run may hang.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(240);

/// Largest gradient bucket, in bytes (the size PyTorch's DDP uses).
pub const BUCKET_BYTES: usize = 25 << 20;

/// Stand-in when the binary was built without the `dist` feature: refuses to start.
#[cfg(not(feature = "dist"))]
pub struct ProcessGroup(std::convert::Infallible);

#[cfg(not(feature = "dist"))]
impl ProcessGroup {
    pub fn init(launch: &Launch, _timeout: Duration) -> anyhow::Result<ProcessGroup> {
        anyhow::bail!(
            "{} asks for {} processes, but this tinyvit was built without the `dist` feature \
             (build with `--features dist`; it needs gloo's headers: apt-get install libgloo-dev)",
            launch.source,
            launch.world
        )
    }
    pub fn rank(&self) -> usize {
        match self.0 {}
    }
    pub fn world(&self) -> usize {
        match self.0 {}
    }
    pub fn local_rank(&self) -> usize {
        match self.0 {}
    }
    pub fn all_reduce_mean(&self, _: &[tch::Tensor]) -> anyhow::Result<()> {
        match self.0 {}
    }
    pub fn all_reduce_sum_f64(&self, _: &mut [f64]) -> anyhow::Result<()> {
        match self.0 {}
    }
    pub fn broadcast_and_check(&self, _: &[tch::Tensor]) -> anyhow::Result<String> {
        match self.0 {}
    }
    pub fn barrier(&self) -> anyhow::Result<()> {
        match self.0 {}
    }
    pub fn check_same(&self, _: &str, _: &str) -> anyhow::Result<()> {
        match self.0 {}
    }
}
