//! Finds or installs what the project needs outside Rust: libtorch 2.11, qemu-system-arm, and
//! gloo's C++ headers for the host's `dist` feature.
//!
//! libtorch, in order of preference:
//! 1. `$LIBTORCH`, when set (it must hold `lib/libtorch_cpu.so`);
//! 2. a `python3` whose `torch` is exactly 2.11.x (a GPU host, a data-science venv);
//! 3. a venv in the user's cache folder (`$XDG_CACHE_HOME/tinyvit/libtorch-2.11.0`, else
//!    `~/.cache/...`), created once with the slim CPU libtorch from PyPI and reused afterwards.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::util;

/// The libtorch release that tch 0.24.0 pairs with.
pub const TORCH_VERSION: &str = "2.11.0";
/// Packages of the slim CPU install: the torch wheel without its CUDA dependencies, plus the two
/// CUDA runtime wheels that the CPU libraries still link against.
const PIP_PACKAGES: &[&str] = &[
    "torch==2.11.0",
    "nvidia-cuda-runtime==13.0.96",
    "nvidia-cuda-cupti==13.0.85",
];

/// Runs `cargo xtask setup`: finds everything and says what was found.
pub fn run(_args: &[String]) -> Result<()> {
    let lt = libtorch()?;
    eprintln!("libtorch: {}", lt.display());
    let q = qemu()?;
    eprintln!("qemu-system-arm: {}", q.display());
    let g = gloo_headers()?;
    eprintln!("gloo headers: {}", g.display());
    Ok(())
}

/// The folder holding libtorch (`include/`, `lib/`), found or installed.
pub fn libtorch() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("LIBTORCH") {
        let dir = PathBuf::from(dir);
        check_libtorch(&dir).context("$LIBTORCH is set but does not hold libtorch")?;
        return Ok(dir);
    }
    if let Some(dir) = python_torch() {
        return Ok(dir);
    }
    let venv = cache_dir().join(format!("libtorch-{TORCH_VERSION}"));
    if let Some(dir) = venv_torch(&venv) {
        return Ok(dir);
    }
    util::step(&format!(
        "installing the CPU libtorch {TORCH_VERSION} into {} (once, about 1.3 GB)",
        venv.display()
    ));
    let _ = std::fs::remove_dir_all(&venv);
    std::fs::create_dir_all(venv.parent().unwrap())?;
    util::run(Command::new("python3").args(["-m", "venv"]).arg(&venv))
        .context("creating the libtorch venv needs python3 with the venv module")?;
    util::run(
        Command::new(venv.join("bin/pip"))
            .args([
                "install",
                "--quiet",
                "--no-deps",
                "--disable-pip-version-check",
            ])
            .args(PIP_PACKAGES),
    )?;
    venv_torch(&venv).with_context(|| {
        format!(
            "pip finished but {} holds no usable libtorch",
            venv.display()
        )
    })
}

fn check_libtorch(dir: &Path) -> Result<()> {
    let lib = dir.join("lib").join("libtorch_cpu.so");
    if !lib.is_file() {
        bail!("{} is missing", lib.display());
    }
    Ok(())
}

/// A `python3` on PATH whose torch is exactly 2.11.x.
fn python_torch() -> Option<PathBuf> {
    let out = util::output(Command::new("python3").args([
        "-c",
        "import os, torch; print(torch.__version__); print(os.path.dirname(torch.__file__))",
    ]))?;
    let mut lines = out.lines();
    let version = lines.next()?.trim();
    let dir = PathBuf::from(lines.next()?.trim());
    (version.starts_with("2.11.") && check_libtorch(&dir).is_ok()).then_some(dir)
}

/// The torch folder inside our cache venv, when a previous install completed.
fn venv_torch(venv: &Path) -> Option<PathBuf> {
    let lib = venv.join("lib");
    for entry in std::fs::read_dir(&lib).ok()?.flatten() {
        let dir = entry.path().join("site-packages").join("torch");
        let version = std::fs::read_to_string(dir.join("version.py")).unwrap_or_default();
        if check_libtorch(&dir).is_ok() && version.contains(&format!("'{TORCH_VERSION}")) {
            return Some(dir);
        }
    }
    None
}

fn cache_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(x).join("tinyvit");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
    PathBuf::from(home).join(".cache").join("tinyvit")
}

/// Sets the environment that a cargo command building or running the host crate needs.
pub fn torch_env(cmd: &mut Command) -> Result<()> {
    let dir = libtorch()?;
    let lib = dir.join("lib");
    let ld = match std::env::var_os("LD_LIBRARY_PATH") {
        Some(old) if !old.is_empty() => {
            let mut v = lib.clone().into_os_string();
            v.push(":");
            v.push(old);
            v
        }
        _ => lib.into_os_string(),
    };
    cmd.env("LIBTORCH", &dir)
        // The pip wheel carries no `build-version` file; the version is checked above instead.
        .env("LIBTORCH_BYPASS_VERSION_CHECK", "1")
        // Test binaries of crates other than the host get no baked run path.
        .env("LD_LIBRARY_PATH", ld);
    Ok(())
}

/// `qemu-system-arm`, installed with apt-get when missing and running as root.
pub fn qemu() -> Result<PathBuf> {
    if let Some(p) = which("qemu-system-arm") {
        return Ok(p);
    }
    apt_install("qemu-system-arm")?;
    which("qemu-system-arm").with_context(|| {
        "qemu-system-arm is not installed; run: sudo apt-get install qemu-system-arm"
    })
}

/// The folder holding gloo's C++ headers, which the host's `dist` feature compiles against
/// (`$GLOO_INCLUDE`, else the system's); Debian's `libgloo-dev` is installed when missing.
pub fn gloo_headers() -> Result<PathBuf> {
    let dir = std::env::var_os("GLOO_INCLUDE").map_or_else(|| "/usr/include".into(), PathBuf::from);
    let has = |d: &Path| d.join("gloo").join("algorithm.h").is_file();
    if !has(&dir) {
        apt_install("libgloo-dev")?;
    }
    anyhow::ensure!(
        has(&dir),
        "gloo's headers are not in {}; run: sudo apt-get install libgloo-dev",
        dir.display()
    );
    Ok(dir)
}

/// `apt-get install PACKAGE` when running as root on a host with apt-get; otherwise nothing
/// (the caller says what to install).
fn apt_install(package: &str) -> Result<()> {
    if !(util::is_root() && which("apt-get").is_some()) {
        return Ok(());
    }
    util::step(&format!("installing {package} with apt-get"));
    util::run(Command::new("apt-get").args(["update", "-qq"]))?;
    util::run(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", package])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
