//! Finds or installs what the project needs outside the Rust workspace: the pinned toolchain's
//! targets, libtorch 2.11, qemu-system-arm, the aarch64 cross tools and qemu-aarch64, gloo's C++
//! headers for the host's `dist` feature, and the benches' reference Python environment.
//!
//! Targets (`thumbv7em-none-eabihf`, `aarch64-unknown-linux-gnu`): looked up in the sysroot of
//! the toolchain `rust-toolchain.toml` pins and added with `rustup target add --toolchain` when
//! missing (rustup installs a pinned toolchain's targets only when it installs the toolchain).
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

/// The Linux target whose tests run under qemu-aarch64 (the fast engine's NEON path).
pub const AARCH64_TARGET: &str = "aarch64-unknown-linux-gnu";

/// The reference environment of the benches' peers (timm's augmentation, Pillow's JPEG encoder,
/// scikit-image's sample photos), pinned. torch comes from PyPI, whose Linux wheels pull in the
/// CUDA libraries that `import torch` loads (about 5 GB in all, once); nothing here uses a GPU.
const PYREF_PACKAGES: &[&str] = &[
    "torch==2.11.0",
    "torchvision==0.26.0",
    "timm==1.0.31",
    "pillow==13.0.0",
    "scikit-image==0.26.0",
];

/// Runs `cargo xtask setup`: finds everything and says what was found.
pub fn run(_args: &[String]) -> Result<()> {
    rust_target(crate::test::DEVICE_TARGET)?;
    eprintln!("target {}: installed", crate::test::DEVICE_TARGET);
    let lt = libtorch()?;
    eprintln!("libtorch: {}", lt.display());
    let q = qemu()?;
    eprintln!("qemu-system-arm: {}", q.display());
    let g = gloo_headers()?;
    eprintln!("gloo headers: {}", g.display());
    let a = aarch64()?;
    eprintln!(
        "aarch64: {}, {}, target installed",
        a.qemu.display(),
        a.linker.display()
    );
    Ok(())
}

/// The toolchain `rust-toolchain.toml` pins (its `channel`).
pub fn pinned_toolchain() -> Result<String> {
    let path = util::root().join("rust-toolchain.toml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    parse_channel(&text).with_context(|| format!("{}: no `channel = \"...\"`", path.display()))
}

fn parse_channel(toml: &str) -> Option<String> {
    toml.lines().find_map(|l| {
        let v = l
            .trim()
            .strip_prefix("channel")?
            .trim_start()
            .strip_prefix('=')?;
        let v = v.trim().strip_prefix('"')?;
        Some(v[..v.find('"')?].to_string()).filter(|c| !c.is_empty())
    })
}

/// Whether the toolchain at `sysroot` has the standard library for `target` (its `libcore`).
fn target_installed(sysroot: &Path, target: &str) -> bool {
    let lib = sysroot.join("lib/rustlib").join(target).join("lib");
    std::fs::read_dir(lib).is_ok_and(|d| {
        d.flatten().any(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with("libcore-") && name.ends_with(".rlib")
        })
    })
}

/// Makes sure the pinned toolchain has `target`, adding it with rustup when missing.
pub fn rust_target(target: &str) -> Result<()> {
    let toolchain = pinned_toolchain()?;
    let sysroot = || -> Result<PathBuf> {
        let out = util::output(
            Command::new("rustup")
                .args(["run", &toolchain, "rustc", "--print", "sysroot"])
                .current_dir(util::root()),
        )
        .with_context(|| format!("`rustup run {toolchain} rustc` failed: is rustup installed?"))?;
        Ok(PathBuf::from(out.trim()))
    };
    if target_installed(&sysroot()?, target) {
        return Ok(());
    }
    util::step(&format!(
        "adding the {target} target to toolchain {toolchain}"
    ));
    util::run(Command::new("rustup").args(["target", "add", "--toolchain", &toolchain, target]))?;
    if !target_installed(&sysroot()?, target) {
        bail!("rustup added {target} to {toolchain}, but its sysroot still lacks libcore");
    }
    Ok(())
}

/// What building and running aarch64 Linux binaries takes.
#[derive(Debug)]
pub struct Aarch64 {
    /// `qemu-aarch64` (user-mode emulation).
    pub qemu: PathBuf,
    /// `aarch64-linux-gnu-gcc`, the linker.
    pub linker: PathBuf,
    /// The target's C library root, for `qemu-aarch64 -L`.
    pub sysroot: PathBuf,
}

impl Aarch64 {
    /// Points cargo at the cross linker and runs test binaries under the emulator.
    pub fn env(&self, cmd: &mut Command) {
        let t = AARCH64_TARGET.to_uppercase().replace('-', "_");
        cmd.env(format!("CARGO_TARGET_{t}_LINKER"), &self.linker)
            .env(
                format!("CARGO_TARGET_{t}_RUNNER"),
                format!("{} -L {}", self.qemu.display(), self.sysroot.display()),
            );
    }
}

/// The aarch64 target, cross linker and qemu-aarch64, installed when missing (apt-get, as root).
pub fn aarch64() -> Result<Aarch64> {
    rust_target(AARCH64_TARGET)?;
    let qemu = apt_tool("qemu-aarch64", "qemu-user")?;
    let linker = apt_tool("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu")?;
    let sysroot = PathBuf::from("/usr/aarch64-linux-gnu");
    if !sysroot.join("lib").is_dir() {
        bail!(
            "{} is missing (the aarch64 C library that gcc-aarch64-linux-gnu brings)",
            sysroot.display()
        );
    }
    Ok(Aarch64 {
        qemu,
        linker,
        sysroot,
    })
}

/// The reference Python environment of the benches' peers: `$TINYVIT_PYREF` when set, else a
/// venv in the cache folder (`pyref-torch2.11.0`), created once with [`PYREF_PACKAGES`] by
/// whichever `python3` is on PATH and found afterwards by its path and the pins it records.
pub fn pyref() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("TINYVIT_PYREF") {
        let dir = PathBuf::from(dir);
        if !dir.join("bin/python").is_file() {
            bail!("$TINYVIT_PYREF={} holds no bin/python", dir.display());
        }
        return Ok(dir);
    }
    let venv = cache_dir().join(format!("pyref-torch{TORCH_VERSION}"));
    if pyref_ready(&venv) {
        return Ok(venv);
    }
    util::step(&format!(
        "creating the benches' reference environment in {} (once, about 5 GB): {}",
        venv.display(),
        PYREF_PACKAGES.join(" ")
    ));
    let _ = std::fs::remove_dir_all(&venv);
    std::fs::create_dir_all(venv.parent().unwrap())?;
    util::run(Command::new("python3").args(["-m", "venv"]).arg(&venv))
        .context("creating the reference venv needs python3 with the venv module")?;
    util::run(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(PYREF_PACKAGES),
    )?;
    // The peers' imports, checked once; the stamp marks a complete install.
    util::run(Command::new(venv.join("bin/python")).args([
        "-c",
        "import torch, torchvision, timm, PIL, skimage, skimage.data",
    ]))
    .context("the reference environment was installed but its imports fail")?;
    std::fs::write(venv.join(PYREF_STAMP), pyref_stamp())?;
    Ok(venv)
}

/// File in the reference venv that lists the pins it was completed with.
const PYREF_STAMP: &str = "tinyvit-pyref.txt";

fn pyref_stamp() -> String {
    PYREF_PACKAGES.join("\n") + "\n"
}

/// Whether `venv` is a completed reference environment with the current pins.
fn pyref_ready(venv: &Path) -> bool {
    venv.join("bin/python").is_file()
        && std::fs::read_to_string(venv.join(PYREF_STAMP)).is_ok_and(|s| s == pyref_stamp())
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
    apt_tool("qemu-system-arm", "qemu-system-arm")
}

/// The program `bin` on PATH, else installed from the Debian package `package` with apt-get
/// (when running as root).
fn apt_tool(bin: &str, package: &str) -> Result<PathBuf> {
    if let Some(p) = which(bin) {
        return Ok(p);
    }
    apt_install(package)?;
    which(bin)
        .with_context(|| format!("{bin} is not installed; run: sudo apt-get install {package}"))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh folder under the system temp dir, removed first if a previous run left it.
    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("xtask-setup-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn the_pinned_channel_is_read_from_rust_toolchain_toml() {
        let t = "[toolchain]\nchannel = \"1.95.0\"\ntargets = [\"thumbv7em-none-eabihf\"]\n";
        assert_eq!(parse_channel(t).as_deref(), Some("1.95.0"));
        assert_eq!(
            parse_channel("[toolchain]\nchannel=\"nightly\""),
            Some("nightly".into())
        );
        assert_eq!(parse_channel("[toolchain]\ncomponents = []\n"), None);
        assert_eq!(parse_channel("channel = \"\"\n"), None);
        // The repository's own file names a toolchain.
        assert!(!pinned_toolchain().unwrap().is_empty());
    }

    /// A toolchain folder without the target's libcore counts as missing, whatever else of
    /// the target is there; adding the rlib makes it present.
    #[test]
    fn a_target_is_installed_only_with_its_libcore() {
        let sysroot = scratch("toolchain");
        let lib = sysroot.join("lib/rustlib/thumbv7em-none-eabihf/lib");
        assert!(!target_installed(&sysroot, "thumbv7em-none-eabihf"));
        std::fs::create_dir_all(&lib).unwrap();
        std::fs::write(lib.join("liballoc-0123.rlib"), b"").unwrap();
        assert!(!target_installed(&sysroot, "thumbv7em-none-eabihf"));
        std::fs::write(lib.join("libcore-0123.rlib"), b"").unwrap();
        assert!(target_installed(&sysroot, "thumbv7em-none-eabihf"));
        assert!(!target_installed(&sysroot, "aarch64-unknown-linux-gnu"));
        std::fs::remove_dir_all(&sysroot).unwrap();
    }

    /// The reference venv is reused only when complete with the current pins: a venv without
    /// the stamp (an interrupted install) or with other pins is rebuilt.
    #[test]
    fn the_reference_venv_is_found_by_path_and_pins() {
        let venv = scratch("pyref");
        assert!(!pyref_ready(&venv));
        std::fs::create_dir_all(venv.join("bin")).unwrap();
        std::fs::write(venv.join("bin/python"), b"").unwrap();
        assert!(!pyref_ready(&venv), "no stamp: the install did not finish");
        std::fs::write(venv.join(PYREF_STAMP), "torch==2.10.0\n").unwrap();
        assert!(!pyref_ready(&venv), "other pins");
        std::fs::write(venv.join(PYREF_STAMP), pyref_stamp()).unwrap();
        assert!(pyref_ready(&venv));
        std::fs::remove_dir_all(&venv).unwrap();
    }
}
