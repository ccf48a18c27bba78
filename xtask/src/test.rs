//! `cargo xtask test`: every check the project has, in the order that fails fastest.

use anyhow::Result;

use crate::{setup, util};

/// The embedded target that the core must always build for.
pub const DEVICE_TARGET: &str = "thumbv7em-none-eabihf";

pub fn run(_args: &[String]) -> Result<()> {
    setup::rust_target(DEVICE_TARGET)?;
    util::step("rustfmt (host workspace and firmware)");
    util::run(util::cargo().args(["fmt", "--all", "--check"]))?;
    util::run(util::cargo().args(["fmt", "--check", "--manifest-path", "firmware/Cargo.toml"]))?;

    util::step("core: no_std build for the device");
    util::run(util::cargo().args([
        "build",
        "-p",
        "tinyvit-core",
        "--no-default-features",
        "--target",
        DEVICE_TARGET,
    ]))?;
    // The device build's own lints: imports and code that only the std build uses show up
    // here, and nowhere else.
    util::run(util::cargo().args([
        "clippy",
        "-p",
        "tinyvit-core",
        "--no-default-features",
        "--features",
        "arm-dsp",
        "--target",
        DEVICE_TARGET,
        "--",
        "-D",
        "warnings",
    ]))?;

    util::step("core: tests (no libtorch involved)");
    util::run(util::cargo().args(["test", "-p", "tinyvit-core", "--all-features"]))?;
    // Five seconds of every fuzz target, so that a regression fails CI.
    util::step("fuzz: 5 s of each target");
    let mut fuzz: Vec<String> = vec!["--seconds".into(), "5".into()];
    fuzz.extend(crate::fuzz::TARGETS.iter().map(|t| t.to_string()));
    crate::fuzz::run(&fuzz)?;

    // The host's `dist` feature (multi-process training) compiles against gloo's headers.
    setup::gloo_headers()?;

    util::step("core: tests with the fast engine on aarch64 under qemu-aarch64 (NEON kernel)");
    let arm = setup::aarch64()?;
    let mut test = util::cargo();
    test.args([
        "test",
        "-p",
        "tinyvit-core",
        "--features",
        "fast",
        "--target",
        setup::AARCH64_TARGET,
    ]);
    arm.env(&mut test);
    util::run(&mut test)?;

    util::step("clippy -D warnings (whole workspace, all targets)");
    let mut clippy = util::cargo();
    clippy.args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--all-features",
        "--",
        "-D",
        "warnings",
    ]);
    setup::torch_env(&mut clippy)?;
    util::run(&mut clippy)?;

    util::step("workspace tests (host links libtorch)");
    let mut test = util::cargo();
    test.args(["test", "--workspace", "--features", "tinyvit-host/dist"]);
    setup::torch_env(&mut test)?;
    util::run(&mut test)?;

    util::step("soak, short: 4 kills of save-logits and train, resumed, compared byte for byte");
    // The `tinyvit` the workspace tests just built: no other build.
    std::env::set_var(
        "TINYVIT_BIN",
        util::target_dir().join("debug").join("tinyvit"),
    );
    crate::soak::run(&["--kills".to_string(), "4".to_string()])?;

    util::step("firmware: bit-exact replay on QEMU Cortex-M4F and Cortex-M7");
    crate::replay::run(&[])?;

    util::step("the main job, smoke run: cargo xtask train --quick");
    let out = util::target_dir().join("xtask-train-quick");
    // The `tinyvit` the workspace tests just built (optimised dependencies): no release build.
    std::env::set_var(
        "TINYVIT_BIN",
        util::target_dir().join("debug").join("tinyvit"),
    );
    crate::train::run(&[
        "--quick".to_string(),
        "--force".to_string(),
        "--out".to_string(),
        out.display().to_string(),
    ])?;

    eprintln!("\nall checks passed");
    Ok(())
}
