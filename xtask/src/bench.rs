//! `cargo xtask bench`: runs the project's benchmarks; each prints its figure and the ratio to
//! the peer it is compared with.

use anyhow::Result;

use crate::{setup, util};

pub fn run(_args: &[String]) -> Result<()> {
    setup::rust_target(crate::test::DEVICE_TARGET)?;
    let pyref = setup::pyref()?;

    util::step("host benchmarks");
    let mut cmd = util::cargo();
    cmd.args(["bench", "-p", "tinyvit-host"])
        .env("TINYVIT_PYREF", &pyref);
    setup::torch_env(&mut cmd)?;
    util::run(&mut cmd)?;

    util::step(
        "fast engine on aarch64, EMULATED by qemu-aarch64: matrixmultiply's NEON kernel \
         (portable) against the scalar one; emulated times, only the ratio is meaningful",
    );
    let arm = setup::aarch64()?;
    let mut probe = util::cargo();
    probe.args([
        "run",
        "--release",
        "-p",
        "tinyvit-core",
        "--features",
        "fast",
        "--example",
        "fast_kernels",
        "--target",
        setup::AARCH64_TARGET,
        "--",
        // One timed run after the warm-up: an emulated forward took 51-90 s on this (loaded) machine.
        "tiny_vit_5m_224",
        "1",
    ]);
    arm.env(&mut probe);
    util::run(&mut probe)?;

    util::step("JPEG region decoder against zune-jpeg");
    util::run(
        util::cargo()
            .args(["bench", "-p", "tinyvit-jpeg", "--bench", "region"])
            .env("TINYVIT_PYREF", &pyref),
    )?;

    util::step("firmware: instructions per inference on QEMU Cortex-M4F / M7, per MAC, sizes");
    crate::replay::bench(&[])
}
