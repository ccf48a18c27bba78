//! Datasets named by a SPEC string, decoded to 8-bit HWC images on any thread.
//!
//! # SPEC
//!
//! | spec | what |
//! |---|---|
//! | `folder:DIR` | `DIR/<class>/**/*.{png,jpg,jpeg}`: one class per sub-folder, labels = sorted sub-folder index; or, when `DIR` holds images directly and no sub-folder holds any, a flat folder of unlabeled images |
//! | `idx:IMAGES[,LABELS]` | MNIST-style IDX files (magic `0x00000803` images, `0x00000801` labels), gzipped or not (detected from the bytes) |
//! | `fashion-mnist[:DIR]`, `fashion-mnist-test[:DIR]` | the train / t10k IDX files in `DIR` (default `/usr/share/datasets/fashion-mnist`) |
//! | `mnist[:DIR]`, `mnist-test[:DIR]` | the same file names in `DIR` (default `/usr/share/datasets/mnist`) |
//!
//! Sample order is stable: folder samples are sorted by their path relative to `DIR` (byte
//! order), IDX samples keep file order. Folder images decode to RGB (3 channels), IDX images are
//! grey (1 channel).
//!
//! # Fingerprint
//!
//! [`Fingerprint`] = sample count + SHA-256 (hex). For IDX data the hash covers the decoded
//! image and label bytes (the content). For folders it covers, per sample in order, the relative
//! path, a NUL, the file size (u64 LE) and the label (u32 LE, `u32::MAX` when unlabeled):
//! renaming, adding, removing, relabelling or resizing any file changes it, without reading
//! every image of a large folder. A store pins this fingerprint.
//!
//! # API
//!
//! - [`open`]`(spec) -> Arc<dyn Dataset>`; [`Dataset::len`], [`Dataset::get`]`(i) -> Sample`
//!   (image + optional label), [`Dataset::view`]`(i, aug, seed, channels, out)` (the
//!   training view; folders decode only its crop of baseline JPEGs), [`Dataset::name`]`(i)`
//!   (the path, for error messages), [`Dataset::num_classes`], [`Dataset::fingerprint`].
//!   `Dataset: Send + Sync`, so one `Arc` serves every worker thread.
//! - [`split`]`(len, val, seed)`: a deterministic train / validation split of indices;
//!   [`Subset`] views a dataset through an index list.
//! - A sample that cannot be read or decoded is an error naming its path (or IDX file and
//!   index); callers decide whether to stop or to skip it.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, ensure, Context, Result};
use sha2::{Digest, Sha256};
use tinyvit_core::aug::AugConfig;

pub mod decode;
pub mod idx;

pub use decode::Image;

/// Default folder of the Fashion-MNIST IDX files.
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";
/// Default folder of the MNIST IDX files.
pub const MNIST_DIR: &str = "/usr/share/datasets/mnist";

/// One decoded sample.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    pub image: Image,
    /// Class index when the dataset is labelled.
    pub label: Option<u32>,
}

/// What identifies a dataset's content and order (see the module doc).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Fingerprint {
    /// Number of samples.
    pub len: u64,
    /// SHA-256 of the sample list or content, lower-case hex.
    pub sha256: String,
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} samples, sha256 {}", self.len, self.sha256)
    }
}

/// A random-access dataset usable from many threads.
pub trait Dataset: Send + Sync {
    /// Number of samples.
    fn len(&self) -> usize;
    /// True when there is no sample.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Decodes sample `i`; errors name the sample ([`name`](Self::name)).
    fn get(&self, i: usize) -> Result<Sample>;
    /// The training view of sample `i` for `seed`: the sample converted to `channels`
    /// ([`decode::to_channels`]) and augmented by `cfg` into `out` (resized to `cfg.size`² x
    /// `channels` bytes). Returns the sample's label. The default decodes the whole sample
    /// with [`get`](Self::get); folder datasets decode only the crop of the JPEGs the region
    /// decoder reads, which gives the same bytes.
    fn view(
        &self,
        i: usize,
        cfg: &AugConfig,
        seed: u32,
        channels: u32,
        out: &mut Vec<u8>,
    ) -> Result<Option<u32>> {
        let s = self.get(i)?;
        let img = decode::to_channels(s.image, channels);
        decode::with_view_decoder(|v| v.render_decoded(img.as_ref(), cfg, seed, out))
            .with_context(|| format!("{}: augmentation, seed {seed}", self.name(i)))?;
        Ok(s.label)
    }
    /// Human-readable name of sample `i` (its path, or `FILE[i]`).
    fn name(&self, i: usize) -> String;
    /// Number of classes when labelled.
    fn num_classes(&self) -> Option<u32>;
    /// Content / order fingerprint.
    fn fingerprint(&self) -> Fingerprint;
    /// The spec the dataset was opened from.
    fn spec(&self) -> &str;
    /// Class names by label, when the dataset knows them (folder names, Fashion-MNIST's).
    fn class_names(&self) -> Option<Vec<String>> {
        None
    }
}

/// The ten Fashion-MNIST classes by label, as the dataset's README names them.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Opens a dataset from its SPEC (see the module doc).
pub fn open(spec: &str) -> Result<Arc<dyn Dataset>> {
    let (kind, arg) = match spec.split_once(':') {
        Some((k, a)) => (k, Some(a)),
        None => (spec, None),
    };
    let ds: Arc<dyn Dataset> = match kind {
        "folder" => {
            let dir = arg
                .filter(|a| !a.is_empty())
                .context("folder:DIR needs a folder")?;
            Arc::new(FolderDataset::open(spec, Path::new(dir))?)
        }
        "idx" => {
            let arg = arg
                .filter(|a| !a.is_empty())
                .context("idx:IMAGES[,LABELS] needs a file")?;
            let (images, labels) = match arg.split_once(',') {
                Some((i, l)) => (i, Some(Path::new(l))),
                None => (arg, None),
            };
            Arc::new(IdxDataset::open(spec, Path::new(images), labels)?)
        }
        "fashion-mnist" | "fashion-mnist-test" | "mnist" | "mnist-test" => {
            let default = if kind.starts_with("fashion") {
                FASHION_MNIST_DIR
            } else {
                MNIST_DIR
            };
            let dir = Path::new(arg.filter(|a| !a.is_empty()).unwrap_or(default));
            let prefix = if kind.ends_with("-test") {
                "t10k"
            } else {
                "train"
            };
            let images = dir.join(format!("{prefix}-images-idx3-ubyte.gz"));
            let labels = dir.join(format!("{prefix}-labels-idx1-ubyte.gz"));
            Arc::new(IdxDataset::open(spec, &images, Some(&labels))?)
        }
        _ => bail!(
            "unknown data spec `{spec}` (expected folder:DIR, idx:IMAGES[,LABELS], \
             fashion-mnist[:DIR], fashion-mnist-test[:DIR], mnist[:DIR] or mnist-test[:DIR])"
        ),
    };
    Ok(ds)
}

/// Reads a whole file, gunzipping it when it starts with the gzip magic `1f 8b`.
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .with_context(|| format!("{}: corrupt gzip stream", path.display()))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// MNIST-style IDX images (and labels) held in memory.
pub struct IdxDataset {
    spec: String,
    path: PathBuf,
    width: u32,
    height: u32,
    count: usize,
    /// `[count, height, width]` u8.
    pixels: Vec<u8>,
    labels: Option<Vec<u8>>,
    fingerprint: Fingerprint,
}

impl IdxDataset {
    /// Parses an IDX image file (`0x00000803`, u8, `[n, h, w]`) and an optional label file
    /// (`0x00000801`, u8, `[n]`).
    pub fn open(spec: &str, images: &Path, labels: Option<&Path>) -> Result<Self> {
        let bytes = read_maybe_gz(images)?;
        let parsed = idx::parse_images(&bytes).with_context(|| format!("{}", images.display()))?;
        let (n, h, w) = (parsed.count, parsed.height, parsed.width);
        let pixels = parsed.pixels.to_vec();
        let labels = match labels {
            Some(lp) => {
                let lb = read_maybe_gz(lp)?;
                let l = idx::parse_labels(&lb, n).with_context(|| {
                    format!("{} (labels of {})", lp.display(), images.display())
                })?;
                Some(l.to_vec())
            }
            None => None,
        };
        let mut hasher = Sha256::new();
        hasher.update(b"idx\0");
        hasher.update((n as u64).to_le_bytes());
        hasher.update(h.to_le_bytes());
        hasher.update(w.to_le_bytes());
        hasher.update(&pixels);
        if let Some(l) = &labels {
            hasher.update(b"labels\0");
            hasher.update(l);
        }
        Ok(Self {
            spec: spec.to_string(),
            path: images.to_path_buf(),
            width: w,
            height: h,
            count: n as usize,
            pixels,
            labels,
            fingerprint: Fingerprint {
                len: n as u64,
                sha256: hex(&hasher.finalize()),
            },
        })
    }
}

impl Dataset for IdxDataset {
    fn len(&self) -> usize {
        self.count
    }

    fn get(&self, i: usize) -> Result<Sample> {
        ensure!(
            i < self.count,
            "{}: index out of range ({} samples)",
            self.name(i),
            self.count
        );
        let n = (self.width * self.height) as usize;
        Ok(Sample {
            image: Image {
                width: self.width,
                height: self.height,
                channels: 1,
                data: self.pixels[i * n..(i + 1) * n].to_vec(),
            },
            label: self.labels.as_ref().map(|l| u32::from(l[i])),
        })
    }

    fn name(&self, i: usize) -> String {
        format!("{}[{i}]", self.path.display())
    }

    fn num_classes(&self) -> Option<u32> {
        self.labels
            .as_ref()
            .map(|l| l.iter().copied().max().map_or(0, |m| u32::from(m) + 1))
    }

    fn fingerprint(&self) -> Fingerprint {
        self.fingerprint.clone()
    }

    fn spec(&self) -> &str {
        &self.spec
    }

    fn class_names(&self) -> Option<Vec<String>> {
        (self.spec.starts_with("fashion-mnist") && self.labels.is_some()).then(|| {
            FASHION_MNIST_CLASSES
                .iter()
                .map(|s| s.to_string())
                .collect()
        })
    }
}

/// Image files in a folder, decoded on demand with the `image` crate (PNG, JPEG, WebP).
pub struct FolderDataset {
    spec: String,
    root: PathBuf,
    /// `(path relative to root, label)`, sorted by path.
    samples: Vec<(PathBuf, Option<u32>)>,
    classes: Vec<String>,
    fingerprint: Fingerprint,
}

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .map(|e| {
            matches!(
                e.to_ascii_lowercase().as_str(),
                "png" | "jpg" | "jpeg" | "webp"
            )
        })
        .unwrap_or(false)
}

/// Image formats this build does not decode: a folder's files of these are left out and
/// counted (said once on stderr), never silently.
const UNDECODED: &[&str] = &["gif", "bmp", "tif", "tiff", "avif", "heic"];

fn is_undecoded_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| UNDECODED.contains(&e.to_ascii_lowercase().as_str()))
}

/// Every image file under `dir`, recursively, as paths relative to `root`; files of an
/// [`UNDECODED`] format are counted in `skipped`.
fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>, skipped: &mut u64) -> Result<()> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))?;
    for e in entries {
        let e = e.with_context(|| format!("listing {}", dir.display()))?;
        let p = e.path();
        let ft = e
            .file_type()
            .with_context(|| format!("reading {}", p.display()))?;
        if ft.is_dir() {
            walk(root, &p, out, skipped)?;
        } else if is_image(&p) {
            out.push(p.strip_prefix(root).unwrap_or(&p).to_path_buf());
        } else if is_undecoded_image(&p) {
            *skipped += 1;
        }
    }
    Ok(())
}

impl FolderDataset {
    /// Lists `dir` (see the module doc for the two layouts).
    pub fn open(spec: &str, dir: &Path) -> Result<Self> {
        ensure!(dir.is_dir(), "{}: not a folder", dir.display());
        let mut subdirs = Vec::new();
        let mut flat = Vec::new();
        let mut skipped = 0u64;
        for e in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
            let e = e.with_context(|| format!("listing {}", dir.display()))?;
            let p = e.path();
            if p.is_dir() {
                subdirs.push(e.file_name().to_string_lossy().into_owned());
            } else if is_image(&p) {
                flat.push(PathBuf::from(e.file_name()));
            } else if is_undecoded_image(&p) {
                skipped += 1;
            }
        }
        subdirs.sort();
        let mut classes = Vec::new();
        let mut samples = Vec::new();
        for name in &subdirs {
            let mut files = Vec::new();
            walk(dir, &dir.join(name), &mut files, &mut skipped)?;
            if files.is_empty() {
                continue;
            }
            let label = classes.len() as u32;
            classes.push(name.clone());
            samples.extend(files.into_iter().map(|f| (f, Some(label))));
        }
        if classes.is_empty() {
            samples = flat.into_iter().map(|f| (f, None)).collect();
        } else {
            ensure!(
                flat.is_empty(),
                "{}: holds both class sub-folders and loose images (e.g. {}); use one layout",
                dir.display(),
                flat[0].display()
            );
        }
        if skipped > 0 {
            eprintln!(
                "{}: {skipped} image file(s) left out: this build decodes .png/.jpg/.jpeg/.webp, not \
                 .{}",
                dir.display(),
                UNDECODED.join("/.")
            );
        }
        ensure!(
            !samples.is_empty(),
            "{}: no .png/.jpg/.jpeg/.webp images found",
            dir.display()
        );
        samples.sort_by(|a, b| {
            a.0.as_os_str()
                .as_encoded_bytes()
                .cmp(b.0.as_os_str().as_encoded_bytes())
        });
        let mut hasher = Sha256::new();
        hasher.update(b"folder\0");
        for (rel, label) in &samples {
            let full = dir.join(rel);
            let size = std::fs::metadata(&full)
                .with_context(|| format!("reading {}", full.display()))?
                .len();
            hasher.update(rel.as_os_str().as_encoded_bytes());
            hasher.update([0u8]);
            hasher.update(size.to_le_bytes());
            hasher.update(label.unwrap_or(u32::MAX).to_le_bytes());
        }
        Ok(Self {
            spec: spec.to_string(),
            root: dir.to_path_buf(),
            fingerprint: Fingerprint {
                len: samples.len() as u64,
                sha256: hex(&hasher.finalize()),
            },
            samples,
            classes,
        })
    }

    /// Class names (sorted sub-folder names); empty for a flat folder.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }
}

impl FolderDataset {
    /// Sample `i`'s path, file bytes and label.
    fn read(&self, i: usize) -> Result<(PathBuf, Vec<u8>, Option<u32>)> {
        let (rel, label) = self
            .samples
            .get(i)
            .with_context(|| format!("{}: sample {i} out of range", self.root.display()))?;
        let path = self.root.join(rel);
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        Ok((path, bytes, *label))
    }
}

impl Dataset for FolderDataset {
    fn len(&self) -> usize {
        self.samples.len()
    }

    fn view(
        &self,
        i: usize,
        cfg: &AugConfig,
        seed: u32,
        channels: u32,
        out: &mut Vec<u8>,
    ) -> Result<Option<u32>> {
        let (path, bytes, label) = self.read(i)?;
        decode::with_view_decoder(|v| v.render(&bytes, channels, cfg, seed, out))
            .with_context(|| format!("{}: training view, seed {seed}", path.display()))?;
        Ok(label)
    }

    fn get(&self, i: usize) -> Result<Sample> {
        let (path, bytes, label) = self.read(i)?;
        let img = decode::decode_image(&bytes)
            .with_context(|| format!("{}: cannot decode image", path.display()))?;
        Ok(Sample {
            image: decode::to_channels(img, 3),
            label,
        })
    }

    fn name(&self, i: usize) -> String {
        match self.samples.get(i) {
            Some((rel, _)) => self.root.join(rel).display().to_string(),
            None => format!("{}[{i}]", self.root.display()),
        }
    }

    fn num_classes(&self) -> Option<u32> {
        (!self.classes.is_empty()).then_some(self.classes.len() as u32)
    }

    fn fingerprint(&self) -> Fingerprint {
        self.fingerprint.clone()
    }

    fn spec(&self) -> &str {
        &self.spec
    }

    fn class_names(&self) -> Option<Vec<String>> {
        (!self.classes.is_empty()).then(|| self.classes.clone())
    }
}

/// A dataset seen through a list of indices (e.g. one side of [`split`]).
pub struct Subset {
    inner: Arc<dyn Dataset>,
    indices: Vec<usize>,
    spec: String,
}

impl Subset {
    /// Sample `j` of the subset is sample `indices[j]` of `inner`; every index must be in range.
    pub fn new(inner: Arc<dyn Dataset>, indices: Vec<usize>) -> Result<Self> {
        if let Some(&bad) = indices.iter().find(|&&i| i >= inner.len()) {
            bail!(
                "subset index {bad} out of range for {} ({} samples)",
                inner.spec(),
                inner.len()
            );
        }
        let spec = format!("{} (subset of {})", inner.spec(), indices.len());
        Ok(Self {
            inner,
            indices,
            spec,
        })
    }

    /// The index into the underlying dataset of subset sample `j`.
    pub fn source_index(&self, j: usize) -> Option<usize> {
        self.indices.get(j).copied()
    }
}

impl Dataset for Subset {
    fn len(&self) -> usize {
        self.indices.len()
    }
    fn get(&self, i: usize) -> Result<Sample> {
        let j = self
            .source_index(i)
            .with_context(|| format!("{}: sample {i} out of range", self.spec))?;
        self.inner.get(j)
    }
    fn view(
        &self,
        i: usize,
        cfg: &AugConfig,
        seed: u32,
        channels: u32,
        out: &mut Vec<u8>,
    ) -> Result<Option<u32>> {
        let j = self
            .source_index(i)
            .with_context(|| format!("{}: sample {i} out of range", self.spec))?;
        self.inner.view(j, cfg, seed, channels, out)
    }
    fn name(&self, i: usize) -> String {
        match self.source_index(i) {
            Some(j) => self.inner.name(j),
            None => format!("{}[{i}]", self.spec),
        }
    }
    fn num_classes(&self) -> Option<u32> {
        self.inner.num_classes()
    }
    fn fingerprint(&self) -> Fingerprint {
        let base = self.inner.fingerprint();
        let mut h = Sha256::new();
        h.update(b"subset\0");
        h.update(base.sha256.as_bytes());
        for &i in &self.indices {
            h.update((i as u64).to_le_bytes());
        }
        Fingerprint {
            len: self.indices.len() as u64,
            sha256: hex(&h.finalize()),
        }
    }
    fn spec(&self) -> &str {
        &self.spec
    }
    fn class_names(&self) -> Option<Vec<String>> {
        self.inner.class_names()
    }
}

/// Splits `0..len` into `(train, val)` with `val` validation indices chosen by `seed`,
/// deterministically on every machine: indices are ranked by a SplitMix64 hash of
/// `(seed, index)` and the `val` lowest go to validation. Both lists come back sorted.
pub fn split(len: usize, val: usize, seed: u64) -> Result<(Vec<usize>, Vec<usize>)> {
    ensure!(
        val <= len,
        "validation split of {val} samples from a dataset of {len}"
    );
    let mut ranked: Vec<(u64, usize)> = (0..len)
        .map(|i| (splitmix(splitmix(seed) ^ i as u64), i))
        .collect();
    ranked.sort_unstable();
    let mut valid: Vec<usize> = ranked[..val].iter().map(|&(_, i)| i).collect();
    let mut train: Vec<usize> = ranked[val..].iter().map(|&(_, i)| i).collect();
    valid.sort_unstable();
    train.sort_unstable();
    Ok((train, valid))
}

/// The SplitMix64 output from state `x` (the core's one definition).
fn splitmix(x: u64) -> u64 {
    let mut state = x;
    tinyvit_core::params::splitmix64(&mut state)
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of a file, lower-case hex (the same string `sha256sum` prints).
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tinyvit-data-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn write_png(path: &Path, w: u32, h: u32, v: u8) {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([v, x as u8, y as u8]));
        img.save(path).unwrap();
    }

    fn idx_bytes(n: u32, h: u32, w: u32) -> (Vec<u8>, Vec<u8>) {
        let mut img = vec![0, 0, 8, 3];
        for v in [n, h, w] {
            img.extend(v.to_be_bytes());
        }
        img.extend((0..n * h * w).map(|i| (i % 251) as u8));
        let mut lab = vec![0, 0, 8, 1];
        lab.extend(n.to_be_bytes());
        lab.extend((0..n).map(|i| (i % 3) as u8));
        (img, lab)
    }

    #[test]
    fn idx_plain_and_gzipped_agree() {
        let d = tmpdir("idx");
        let (img, lab) = idx_bytes(5, 3, 4);
        std::fs::write(d.join("i"), &img).unwrap();
        std::fs::write(d.join("l"), &lab).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &img).unwrap();
        std::fs::write(d.join("i.gz"), gz.finish().unwrap()).unwrap();
        let a = open(&format!(
            "idx:{},{}",
            d.join("i").display(),
            d.join("l").display()
        ))
        .unwrap();
        let b = open(&format!(
            "idx:{},{}",
            d.join("i.gz").display(),
            d.join("l").display()
        ))
        .unwrap();
        assert_eq!(a.len(), 5);
        assert_eq!(a.fingerprint(), b.fingerprint());
        let s = a.get(2).unwrap();
        assert_eq!((s.image.width, s.image.height, s.image.channels), (4, 3, 1));
        assert_eq!(s.image.data[0], 24);
        assert_eq!(s.label, Some(2));
        assert_eq!(a.num_classes(), Some(3));
        let unl = open(&format!("idx:{}", d.join("i").display())).unwrap();
        assert_eq!(unl.get(0).unwrap().label, None);
        assert_ne!(unl.fingerprint(), a.fingerprint());
        // A truncated file is an error naming it.
        std::fs::write(d.join("short"), &img[..img.len() - 1]).unwrap();
        let e = open(&format!("idx:{}", d.join("short").display()))
            .err()
            .unwrap();
        assert!(format!("{e:#}").contains("short"), "{e:#}");
    }

    #[test]
    fn folder_layouts_order_and_bad_images() {
        let d = tmpdir("folder");
        for (c, names) in [("cat", ["b.png", "a.png"]), ("ant", ["z.png", "y.png"])] {
            std::fs::create_dir_all(d.join(c)).unwrap();
            for (k, n) in names.iter().enumerate() {
                write_png(&d.join(c).join(n), 5 + k as u32, 4, 9);
            }
        }
        let ds = open(&format!("folder:{}", d.display())).unwrap();
        assert_eq!(ds.len(), 4);
        assert_eq!(ds.num_classes(), Some(2));
        let names: Vec<String> = (0..4).map(|i| ds.name(i)).collect();
        assert!(
            names[0].ends_with("ant/y.png") && names[3].ends_with("cat/b.png"),
            "{names:?}"
        );
        let s = ds.get(0).unwrap();
        assert_eq!((s.image.width, s.image.channels, s.label), (6, 3, Some(0)));
        let fp = ds.fingerprint();
        std::fs::write(d.join("cat").join("c.png"), b"not a png").unwrap();
        let ds2 = open(&format!("folder:{}", d.display())).unwrap();
        assert_ne!(ds2.fingerprint(), fp);
        let e = ds2.get(4).err().unwrap();
        assert!(format!("{e:#}").contains("cat/c.png"), "{e:#}");

        let flat = tmpdir("flat");
        write_png(&flat.join("1.png"), 2, 2, 0);
        write_png(&flat.join("0.jpg.png"), 2, 2, 0);
        let ds = open(&format!("folder:{}", flat.display())).unwrap();
        assert_eq!((ds.len(), ds.num_classes()), (2, None));
        assert_eq!(ds.get(0).unwrap().label, None);
    }

    /// WebP files of a folder dataset are decoded (lossless here: the pixels come back as
    /// written); formats this build does not decode are still left out and counted.
    #[test]
    fn folder_datasets_decode_webp() {
        let d = tmpdir("webp");
        std::fs::create_dir_all(d.join("a")).unwrap();
        std::fs::create_dir_all(d.join("b")).unwrap();
        write_png(&d.join("a").join("0.png"), 6, 5, 3);
        let img =
            image::RgbImage::from_fn(7, 5, |x, y| image::Rgb([40, 10 * x as u8, 20 * y as u8]));
        let mut bytes = Vec::new();
        image::codecs::webp::WebPEncoder::new_lossless(&mut bytes)
            .encode(img.as_raw(), 7, 5, image::ExtendedColorType::Rgb8)
            .unwrap();
        assert!(bytes.starts_with(b"RIFF") && &bytes[8..12] == b"WEBP");
        std::fs::write(d.join("b").join("1.webp"), &bytes).unwrap();
        std::fs::write(d.join("b").join("2.gif"), b"GIF89a").unwrap();
        let ds = open(&format!("folder:{}", d.display())).unwrap();
        assert_eq!((ds.len(), ds.num_classes()), (2, Some(2)));
        let s = ds.get(1).unwrap();
        assert!(ds.name(1).ends_with("b/1.webp"), "{}", ds.name(1));
        assert_eq!((s.image.width, s.image.height, s.image.channels), (7, 5, 3));
        assert_eq!(s.image.data, img.into_raw());
        assert_eq!(s.label, Some(1));
    }

    #[test]
    /// The split keeps its indices through the move to the core's SplitMix64.
    fn split_hash_is_pinned() {
        fn reference(x: u64) -> u64 {
            let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        for x in [0u64, 1, 7, 0xdead_beef, u64::MAX] {
            assert_eq!(splitmix(x), reference(x));
        }
    }

    #[test]
    fn split_is_deterministic_and_disjoint() {
        let (t, v) = split(100, 10, 7).unwrap();
        assert_eq!((t.len(), v.len()), (90, 10));
        let (t2, v2) = split(100, 10, 7).unwrap();
        assert_eq!((&t, &v), (&t2, &v2));
        assert!(v.iter().all(|i| !t.contains(i)));
        assert_ne!(split(100, 10, 8).unwrap().1, v);
        assert!(split(3, 4, 0).is_err());
    }

    #[test]
    fn bad_specs_are_clear_errors() {
        for spec in ["nope:x", "folder:", "idx:", "folder:/nonexistent/tinyvit"] {
            assert!(open(spec).is_err(), "{spec}");
        }
    }
}
