//! The data stage of the main job: Fashion-MNIST split into train / validation / test IDX files.
//!
//! The validation split is held out of the official training set, so that every choice (K,
//! epochs, learning rate) is made without looking at the test split; the test split is used
//! only for the final report. The split is deterministic: sample `i` of the training file goes
//! to validation when `i % stride == stride - 1`, which keeps the class balance of the file.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};

use crate::util;

/// Where the Debian package `dataset-fashion-mnist` puts the files.
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";
const FILES: [&str; 4] = [
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
];

/// Sizes of the splits the pipeline uses.
#[derive(Clone, Copy, Debug)]
pub struct SplitSizes {
    /// Training samples kept (from the part of the training file that is not validation).
    pub train: usize,
    /// Validation samples (held out of the training file).
    pub val: usize,
    /// Test samples (from the official test file).
    pub test: usize,
}

/// The IDX files of each split, as data SPECs for the `tinyvit` command.
#[derive(Clone, Debug)]
pub struct Splits {
    pub train: String,
    pub val: String,
    pub test: String,
}

/// Finds the Fashion-MNIST folder: `dir` if given, else the Debian package's, installing the
/// package with apt-get when running as root.
pub fn locate(dir: Option<&Path>) -> Result<PathBuf> {
    let dir = dir.map_or_else(|| PathBuf::from(FASHION_MNIST_DIR), Path::to_path_buf);
    let complete = |d: &Path| FILES.iter().all(|f| d.join(f).is_file());
    if complete(&dir) {
        return Ok(dir);
    }
    if dir == Path::new(FASHION_MNIST_DIR) && util::is_root() {
        util::step("installing Fashion-MNIST (Debian package dataset-fashion-mnist)");
        util::run(Command::new("apt-get").args(["update", "-qq"]))?;
        util::run(
            Command::new("apt-get")
                .args(["install", "-y", "-qq", "dataset-fashion-mnist"])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
        if complete(&dir) {
            return Ok(dir);
        }
    }
    bail!(
        "Fashion-MNIST not found in {}: install it with `sudo apt-get install dataset-fashion-mnist`, \
         or put {} there (or pass --fashion-mnist DIR)",
        dir.display(),
        FILES.join(", ")
    )
}

/// Writes the three splits as uncompressed IDX files into `out`.
pub fn write(src: &Path, sizes: SplitSizes, out: &Path) -> Result<Splits> {
    let (train_x, rows, cols) = read_images(&src.join(FILES[0]))?;
    let train_y = read_labels(&src.join(FILES[1]))?;
    let (test_x, trows, tcols) = read_images(&src.join(FILES[2]))?;
    let test_y = read_labels(&src.join(FILES[3]))?;
    ensure!(
        train_x.len() == train_y.len() && test_x.len() == test_y.len(),
        "Fashion-MNIST image and label counts differ in {}",
        src.display()
    );
    ensure!(
        (rows, cols) == (trows, tcols),
        "train and test image sizes differ"
    );
    let n = train_x.len();
    ensure!(
        sizes.val > 0 && sizes.val <= n / 2,
        "validation split of {} from {n} samples",
        sizes.val
    );
    let stride = n / sizes.val;
    let is_val = |i: usize| i % stride == stride - 1;
    let val: Vec<usize> = (0..n).filter(|&i| is_val(i)).take(sizes.val).collect();
    let train: Vec<usize> = (0..n).filter(|&i| !is_val(i)).take(sizes.train).collect();
    ensure!(
        train.len() == sizes.train,
        "asked for {} training samples, only {} are left after the validation split",
        sizes.train,
        train.len()
    );
    ensure!(
        sizes.test <= test_x.len(),
        "asked for {} test samples",
        sizes.test
    );
    let test: Vec<usize> = (0..sizes.test).collect();

    let spec = |name: &str, x: &[Vec<u8>], y: &[u8], idx: &[usize]| -> Result<String> {
        let images = out.join(format!("{name}-images-idx3-ubyte"));
        let labels = out.join(format!("{name}-labels-idx1-ubyte"));
        write_images(
            &images,
            idx.iter().map(|&i| x[i].as_slice()),
            idx.len(),
            rows,
            cols,
        )?;
        write_labels(&labels, idx.iter().map(|&i| y[i]), idx.len())?;
        Ok(format!("idx:{},{}", images.display(), labels.display()))
    };
    Ok(Splits {
        train: spec("train", &train_x, &train_y, &train)?,
        val: spec("val", &train_x, &train_y, &val)?,
        test: spec("test", &test_x, &test_y, &test)?,
    })
}

fn gunzip(path: &Path) -> Result<Vec<u8>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(file)
        .read_to_end(&mut out)
        .with_context(|| format!("decompressing {}", path.display()))?;
    Ok(out)
}

fn be_u32(b: &[u8], at: usize, path: &Path, field: &str) -> Result<u32> {
    let s = b
        .get(at..at + 4)
        .with_context(|| format!("{}: truncated before `{field}`", path.display()))?;
    Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

fn read_images(path: &Path) -> Result<(Vec<Vec<u8>>, usize, usize)> {
    let b = gunzip(path)?;
    ensure!(
        be_u32(&b, 0, path, "magic")? == 0x803,
        "{}: not an IDX image file (field `magic`)",
        path.display()
    );
    let n = be_u32(&b, 4, path, "count")? as usize;
    let rows = be_u32(&b, 8, path, "rows")? as usize;
    let cols = be_u32(&b, 12, path, "cols")? as usize;
    let px = rows * cols;
    ensure!(
        b.len() == 16 + n * px,
        "{}: {} bytes, the header promises {}",
        path.display(),
        b.len(),
        16 + n * px
    );
    Ok((b[16..].chunks(px).map(<[u8]>::to_vec).collect(), rows, cols))
}

fn read_labels(path: &Path) -> Result<Vec<u8>> {
    let b = gunzip(path)?;
    ensure!(
        be_u32(&b, 0, path, "magic")? == 0x801,
        "{}: not an IDX label file (field `magic`)",
        path.display()
    );
    let n = be_u32(&b, 4, path, "count")? as usize;
    ensure!(b.len() == 8 + n, "{}: truncated labels", path.display());
    Ok(b[8..].to_vec())
}

fn write_images<'a>(
    path: &Path,
    images: impl Iterator<Item = &'a [u8]>,
    n: usize,
    rows: usize,
    cols: usize,
) -> Result<()> {
    let mut buf = Vec::with_capacity(16 + n * rows * cols);
    for v in [0x803, n, rows, cols] {
        buf.extend_from_slice(&(v as u32).to_be_bytes());
    }
    for img in images {
        buf.extend_from_slice(img);
    }
    write_file(path, &buf)
}

fn write_labels(path: &Path, labels: impl Iterator<Item = u8>, n: usize) -> Result<()> {
    let mut buf = Vec::with_capacity(8 + n);
    for v in [0x801, n] {
        buf.extend_from_slice(&(v as u32).to_be_bytes());
    }
    buf.extend(labels);
    write_file(path, &buf)
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))
}

/// The SPECs of splits written earlier into `dir` by [`write`].
pub fn specs_in(dir: &Path) -> Splits {
    let spec = |name: &str| {
        format!(
            "idx:{},{}",
            dir.join(format!("{name}-images-idx3-ubyte")).display(),
            dir.join(format!("{name}-labels-idx1-ubyte")).display()
        )
    };
    Splits {
        train: spec("train"),
        val: spec("val"),
        test: spec("test"),
    }
}
