//! `cargo xtask train`: the main job.

use anyhow::Result;

pub fn run(_args: &[String]) -> Result<()> {
    anyhow::bail!("the training pipeline is not built yet")
}
