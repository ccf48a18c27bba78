//! Setup shared by the host's integration tests (`mod support;`) and benches
//! (`#[path = "../tests/support/mod.rs"] mod support;`): scratch folders, small IDX datasets,
//! running the `tinyvit` binary, and the teacher pass the tests and benches write stores with.
#![allow(
    dead_code,
    reason = "each test and bench compiles its own copy and uses only part of it"
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tch::{Device, Kind, Tensor};
use tinyvit_host::data::read_maybe_gz;
use tinyvit_host::save_logits::{self, PassConfig};
use tinyvit_host::teacher::{Identity, Teacher};

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

/// A teacher that reads the class from an image's brightness (class `c` images are the grey
/// level `20 c + 10`) and answers a peaked distribution around it: logits fall with the distance
/// from the class, so the top-5 are the class and its nearest neighbours, never a class 5 away.
pub struct BrightnessTeacher {
    /// The normalisation the pass applies, undone to recover the grey level.
    pub mean: f32,
    pub std: f32,
}

impl Teacher for BrightnessTeacher {
    fn logits(&self, batch: &Tensor) -> anyhow::Result<Tensor> {
        let m = batch.mean_dim([1i64, 2, 3].as_slice(), false, Kind::Float);
        let level = (m * f64::from(self.std) + f64::from(self.mean)) * 255.0;
        let class = ((level - 10.0) / 20.0).round().clamp(0.0, 9.0);
        let classes = Tensor::arange(10, (Kind::Float, Device::Cpu)).view([1, 10]);
        Ok((classes - class.view([-1, 1])).abs() * -2.0)
    }
    fn device(&self) -> Device {
        Device::Cpu
    }
    fn identity(&self) -> Identity {
        Identity {
            kind: "test".into(),
            file: "brightness".into(),
            sha256: "0".repeat(64),
        }
    }
}

/// A [`BrightnessTeacher`] pass of `epochs` epochs and top-`topk` over the 28 px grey `data`
/// into `out`: the `plain` augmentation at 28 px, one worker, no progress bar.
pub fn brightness_pass(data: &str, out: &Path, epochs: u32, topk: u16) {
    let mut cfg = PassConfig::new(data, out, epochs, topk);
    cfg.aug_preset = "plain".into();
    cfg.aug = tinyvit_core::aug::preset("plain").unwrap();
    cfg.aug.size = 28;
    cfg.progress = false;
    cfg.workers = 1;
    let teacher = BrightnessTeacher {
        mean: cfg.aug.mean[0],
        std: cfg.aug.std[0],
    };
    save_logits::run(&cfg, &teacher).unwrap();
}
