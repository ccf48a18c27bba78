//! Setup shared by the host's integration tests (`mod support;`) and benches
//! (`#[path = "../tests/support/mod.rs"] mod support;`): scratch folders, small IDX datasets,
//! running the `tinyvit` binary, and the teacher pass the tests and benches write stores with.
#![allow(
    dead_code,
    reason = "each test and bench compiles its own copy and uses only part of it"
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tinyvit_host::data::read_maybe_gz;
use tinyvit_host::save_logits::PassConfig;

/// The `tinyvit` binary cargo built for this test or bench.
pub const BIN: &str = env!("CARGO_BIN_EXE_tinyvit");
/// Where the Debian package `dataset-fashion-mnist` puts the Fashion-MNIST files.
pub const FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";

/// A fresh, empty folder `tinyvit-{group}-{name}-{pid}` in the system's temporary folder.
pub fn tmpdir(group: &str, name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tinyvit-{group}-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Writes the first `n` images and labels of a Fashion-MNIST split (`train` or `t10k`) as raw
/// IDX files `{split}-img` and `{split}-lab` in `dir`; returns their data SPEC.
pub fn fashion_mnist_subset(dir: &Path, split: &str, n: usize) -> String {
    let fm = Path::new(FASHION_MNIST);
    let img = read_maybe_gz(&fm.join(format!("{split}-images-idx3-ubyte.gz")))
        .expect("Fashion-MNIST (Debian package dataset-fashion-mnist) is needed");
    let lab = read_maybe_gz(&fm.join(format!("{split}-labels-idx1-ubyte.gz"))).unwrap();
    let mut i = img[..4].to_vec();
    i.extend((n as u32).to_be_bytes());
    i.extend(&img[8..16]);
    i.extend(&img[16..16 + n * 784]);
    let mut l = lab[..4].to_vec();
    l.extend((n as u32).to_be_bytes());
    l.extend(&lab[8..8 + n]);
    let (ip, lp) = (
        dir.join(format!("{split}-img")),
        dir.join(format!("{split}-lab")),
    );
    std::fs::write(&ip, i).unwrap();
    std::fs::write(&lp, l).unwrap();
    format!("idx:{},{}", ip.display(), lp.display())
}

/// Writes a synthetic IDX image file `images.idx` of `n` 28x28 grey images (smooth patterns
/// that differ per image) in `dir`; returns its data SPEC.
pub fn synthetic_idx(dir: &Path, n: u32) -> std::io::Result<String> {
    let mut b = vec![0, 0, 8, 3];
    for v in [n, 28, 28] {
        b.extend(v.to_be_bytes());
    }
    for i in 0..n {
        for y in 0..28u32 {
            for x in 0..28u32 {
                b.push(((x * (i % 7 + 1) + y * (i % 5 + 2) + i * 3) % 256) as u8);
            }
        }
    }
    let path = dir.join("images.idx");
    std::fs::write(&path, b)?;
    Ok(format!("idx:{}", path.display()))
}

/// Runs `c`, asserts that it succeeds (printing its output if not) and returns its output.
pub fn ok(mut c: Command) -> Output {
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "{:?} failed:\n{}{}",
        c,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// Runs `c`, asserts that it fails and returns its stderr followed by its stdout.
pub fn fails(mut c: Command) -> String {
    let o = c.output().unwrap();
    assert!(!o.status.success(), "{c:?} succeeded but should fail");
    String::from_utf8_lossy(&o.stderr).into_owned() + &String::from_utf8_lossy(&o.stdout)
}

/// One CPU thread, one loader worker, no progress output: how the tests run the trainer.
pub const CPU_QUIET: [&str; 7] = [
    "--device",
    "cpu",
    "--threads",
    "1",
    "--workers",
    "1",
    "--quiet",
];

/// `tinyvit train --arch tiny_vit_mcu_m4 --data DATA`: the small student the tests and benches
/// train; the caller adds the target and the settings.
pub fn train_m4(data: &str) -> Command {
    let mut c = Command::new(BIN);
    c.args(["train", "--arch", "tiny_vit_mcu_m4", "--data", data]);
    c
}

/// A teacher pass of `epochs` epochs and top-`topk` over `data` into `out`, with the `light`
/// augmentation at `size` px and no progress bar; every other setting is the default.
pub fn light_pass(data: &str, out: &Path, epochs: u32, topk: u16, size: u32) -> PassConfig {
    let mut cfg = PassConfig::new(data, out, epochs, topk);
    cfg.aug_preset = "light".into();
    cfg.aug = tinyvit_core::aug::preset("light").unwrap();
    cfg.aug.size = size;
    cfg.progress = false;
    cfg
}
