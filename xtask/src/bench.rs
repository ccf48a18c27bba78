//! `cargo xtask bench`: runs the project's benchmarks; each prints its figure and the ratio to
//! the peer it is compared with.

use anyhow::Result;

use crate::{setup, util};

pub fn run(_args: &[String]) -> Result<()> {
    util::step("host benchmarks");
    let mut cmd = util::cargo();
    cmd.args(["bench", "-p", "tinyvit-host"]);
    setup::torch_env(&mut cmd)?;
    util::run(&mut cmd)?;

    util::step("JPEG region decoder against zune-jpeg");
    util::run(util::cargo().args(["bench", "-p", "tinyvit-jpeg", "--bench", "region"]))?;

    util::step("firmware: instructions per inference on QEMU Cortex-M4F / M7, per MAC, sizes");
    crate::replay::bench()
}
