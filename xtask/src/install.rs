//! `cargo xtask install`: builds the release `tinyvit` and installs it into `~/.cargo/bin`.
//! The binary carries libtorch's folder in its run path, so it runs from any folder with no
//! environment variables set.

use std::process::Command;

use anyhow::Result;

use crate::{setup, util};

pub fn run(args: &[String]) -> Result<()> {
    let mut cmd = util::cargo();
    // Reuse the workspace's release build instead of cargo install's throw-away folder.
    let target = util::target_dir();
    cmd.args([
        "install",
        "--locked",
        "--force",
        "--path",
        "host",
        "--target-dir",
    ])
    .arg(&target)
    .args(args);
    setup::torch_env(&mut cmd)?;
    // The installed binary must not lean on the loader path we set for tests.
    cmd.env_remove("LD_LIBRARY_PATH");
    util::run(&mut cmd)?;
    util::step("checking the installed command with a clean environment");
    util::run(
        Command::new("tinyvit")
            .arg("--version")
            .env_remove("LD_LIBRARY_PATH")
            .env_remove("LIBTORCH"),
    )
}
