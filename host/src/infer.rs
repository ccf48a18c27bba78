//! `tinyvit infer`: logits of a TinyViT for images or a normalised `.npy` batch, on the core
//! engines (int8 model files run in [`crate::infer_int8`]); `tinyvit convert`: any model file
//! to `.tvb`.
//!
//! Images go through the model's input contract ([`tinyvit_core::contract`], recorded by our
//! checkpoints and `.tvb` files): the evaluation transform (resize the short side to
//! `size / crop_fraction` with its interpolation, centre crop `size`), then its mean and std,
//! implemented by [`tinyvit_core::aug::eval_transform`] and [`tinyvit_core::aug::normalize`];
//! grey models (`in_chans = 1`) read images as luma and normalise with the first channel's
//! mean/std. Files that record no contract use ImageNet's mean/std (said on stderr); flags
//! override any field ([`crate::contract::ContractArgs`]).
//!
//! Output: one line per input, the top-k classes with their names (when the model names its
//! classes) and softmax probabilities, or raw logits with `--logits`; values keep three
//! significant digits however small ([`fmt_value`]). `--out` writes the full `[N, classes]`
//! logits.
//!
//! `.npy` files: through `ndarray-npy` (float32, any header version, byte order and memory order
//! in; version 1.0, `<f4`, C order out), shape products checked before any allocation.

use std::path::{Path, PathBuf};
use std::time::Instant;

use std::io::Write as _;

use anyhow::{anyhow, bail, ensure, Context, Result};
use clap::{Args, ValueEnum};
use ndarray::{ArrayD, ArrayViewD};
use ndarray_npy::WriteNpyExt;
use tinyvit_core::aug::{eval_scratch_len, eval_transform, normalize, ImageMut, ImageRef};
use tinyvit_core::config::ModelConfig;
use tinyvit_core::contract::Contract;
use tinyvit_core::engine::{exact, fast::FastModel, input_len, Limits, Weights};

use crate::contract::ContractArgs;
use crate::import;

/// Which engine runs the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Engine {
    /// Scalar, allocation-free, bit-reproducible across targets.
    Exact,
    /// GEMM-based host engine.
    Fast,
    /// libtorch on the CPU, through the trainer's tch model (needs an unfolded checkpoint).
    Tch,
}

/// The model a command reads and how to build it: shared by `tinyvit infer` and
/// `tinyvit convert`.
#[derive(Args, Debug)]
pub struct ModelArgs {
    /// Model file: .safetensors (official or timm names), .pth/.pt, or .tvb.
    #[arg(long)]
    pub model: PathBuf,
    /// Preset name or FILE.toml; detected from the weight shapes when omitted.
    #[arg(long)]
    pub arch: Option<String>,
    /// Class count (checked against the head).
    #[arg(long)]
    pub num_classes: Option<u32>,
    /// Input size, for networks that are no preset (presets know theirs).
    #[arg(long)]
    pub img_size: Option<u32>,
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// What a model may ask of the core engines, checked before they allocate or compute
/// ([`Limits`]); raise them for models larger than the defaults allow.
#[derive(Args, Clone, Copy, Debug)]
pub struct LimitArgs {
    /// Most multiply-accumulates one image may take.
    #[arg(long, default_value_t = Limits::DEFAULT.max_macs)]
    pub max_macs: u64,
    /// Most bytes of engine memory (the exact engine's arena; the fast engine's packed
    /// weights, attention biases and workspace).
    #[arg(long, default_value_t = Limits::DEFAULT.max_memory)]
    pub max_memory: u64,
}

impl LimitArgs {
    /// The core's limits.
    pub fn get(&self) -> Limits {
        Limits {
            max_macs: self.max_macs,
            max_memory: self.max_memory,
        }
    }
}

impl ModelArgs {
    /// Loads the model file ([`import::load`]) with the given architecture hints.
    pub fn load(&self) -> Result<import::Loaded> {
        import::load(
            &self.model,
            self.arch.as_deref(),
            self.num_classes,
            self.img_size,
        )
    }
}

/// Arguments of `tinyvit infer`.
#[derive(Args, Debug)]
pub struct InferArgs {
    #[command(flatten)]
    pub source: ModelArgs,
    /// Inference engine (default: fast for f32 models; int8 models run on exact only).
    #[arg(long, value_enum)]
    pub engine: Option<Engine>,
    /// Normalised float32 NCHW input batch.
    #[arg(long, conflicts_with = "images")]
    pub npy: Option<PathBuf>,
    /// Image files (PNG, JPEG, WebP) or folders of them, run through the evaluation
    /// transform of the model's input contract.
    pub images: Vec<PathBuf>,
    /// Write the full logits as float32 [N, classes] .npy.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print the k most probable classes of each input (at least 1).
    #[arg(long, default_value_t = 5)]
    pub topk: usize,
    /// Print raw logits instead of softmax probabilities.
    #[arg(long)]
    pub logits: bool,
    #[command(flatten)]
    pub contract: ContractArgs,
}

/// Image file extensions a folder argument expands to.
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "webp"];

/// The image files of `args`: files as given, folders expanded to their image files (sorted by
/// name, not recursive). An empty result or a folder without images is an error.
pub fn expand_images(args: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in args {
        if !p.is_dir() {
            out.push(p.clone());
            continue;
        }
        let mut found: Vec<PathBuf> = std::fs::read_dir(p)
            .with_context(|| format!("listing {}", p.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|f| {
                f.is_file()
                    && f.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                        IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str())
                    })
            })
            .collect();
        ensure!(
            !found.is_empty(),
            "folder {} holds no image files ({})",
            p.display(),
            IMAGE_EXTENSIONS.join(", ")
        );
        found.sort();
        out.append(&mut found);
    }
    Ok(out)
}

/// A probability or logit with three significant digits however small (at least three
/// decimals; scientific notation below 1e-4), so no row of a large model reads as all zeros.
pub fn fmt_value(v: f32) -> String {
    let a = v.abs();
    if a == 0.0 || !a.is_finite() {
        return format!("{v:.3}");
    }
    if a < 1e-4 {
        return format!("{v:.2e}");
    }
    let decimals = (2 - a.log10().floor() as i32).clamp(3, 6) as usize;
    format!("{v:.decimals$}")
}

/// Arguments of `tinyvit convert`.
#[derive(Args, Debug)]
pub struct ConvertArgs {
    #[command(flatten)]
    pub source: ModelArgs,
    /// Output .tvb file.
    #[arg(long)]
    pub out: PathBuf,
}

/// Runs `tinyvit infer`.
pub fn run(args: &InferArgs) -> Result<()> {
    ensure!(args.topk >= 1, "--topk must be at least 1 (got 0)");
    let engine = args.engine.unwrap_or(Engine::Fast);
    let model = args.source.load()?;
    let cfg = model.config;
    let what = format!("model {}", args.source.model.display());
    let contract = args.contract.resolve(model.contract.clone(), &cfg, &what)?;
    let (input, names) = match (&args.npy, args.images.is_empty()) {
        (Some(p), true) => {
            let (x, n) = read_input_npy(p, &cfg)?;
            ensure!(
                n > 0,
                "{}: the batch holds no inputs (shape [0, ...])",
                p.display()
            );
            (x, (0..n).map(|i| format!("{}[{i}]", p.display())).collect())
        }
        (None, false) => {
            let files = expand_images(&args.images)?;
            let x = load_images_with(&files, &contract)?;
            (x, files.iter().map(|f| f.display().to_string()).collect())
        }
        (None, true) => bail!("give --npy INPUT.npy or image files"),
        (Some(_), false) => bail!("give either --npy or image files, not both"),
    };
    let names: Vec<String> = names;
    let n = names.len();
    let t = Instant::now();
    let logits = match engine {
        Engine::Tch => {
            let sd = model.state_dict.as_ref().ok_or_else(|| {
                anyhow!("--engine tch needs an unfolded checkpoint (.safetensors/.pth), not .tvb")
            })?;
            tch_logits(sd, &cfg, &input, n)?
        }
        e => run_engine_limited(e, &cfg, &model.blob, &input, n, args.source.limits.get())?,
    };
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let nc = cfg.num_classes as usize;
    let mut out = std::io::stdout().lock();
    for (i, name) in names.iter().enumerate() {
        let row = &logits[i * nc..(i + 1) * nc];
        writeln!(
            out,
            "{name}\t{}",
            format_row(row, args.topk, args.logits, &contract)
        )?;
    }
    eprintln!(
        "{n} input(s), {:?} engine, {ms:.1} ms ({:.2} ms/input); top-{} {}",
        engine,
        ms / n as f64,
        args.topk.min(nc),
        if args.logits {
            "raw logits"
        } else {
            "softmax probabilities"
        }
    );
    if let Some(out) = &args.out {
        write_npy(out, &[n, nc], &logits)?;
    }
    Ok(())
}

/// One output line: the top-k as `class name value` fields separated by tabs (`class value`
/// when the model names no classes); probabilities, or raw logits when `raw`.
pub fn format_row(row: &[f32], k: usize, raw: bool, contract: &Contract) -> String {
    topk(row, k)
        .into_iter()
        .map(|(c, p)| {
            let v = fmt_value(if raw { row[c] } else { p });
            match contract.class_name(c) {
                Some(name) => format!("{c} {name} {v}"),
                None => format!("{c} {v}"),
            }
        })
        .collect::<Vec<_>>()
        .join("\t")
}

/// The values of one input of `cfg`, after checking that `input` holds `n` of them.
pub(crate) fn checked_input(cfg: &ModelConfig, input: &[f32], n: usize) -> Result<usize> {
    let per = input_len(cfg).map_err(|e| anyhow!("{e}"))?;
    ensure!(
        Some(input.len()) == n.checked_mul(per),
        "input holds {} values, expected {n} x {per}",
        input.len()
    );
    Ok(per)
}

/// Runs `n` inputs through an engine, returning `[n, num_classes]` logits.
pub fn run_engine(
    engine: Engine,
    cfg: &ModelConfig,
    blob: &[f32],
    input: &[f32],
    n: usize,
) -> Result<Vec<f32>> {
    run_engine_limited(engine, cfg, blob, input, n, Limits::DEFAULT)
}

/// [`run_engine`] under other [`Limits`].
pub fn run_engine_limited(
    engine: Engine,
    cfg: &ModelConfig,
    blob: &[f32],
    input: &[f32],
    n: usize,
    limits: Limits,
) -> Result<Vec<f32>> {
    let w = Weights::new(cfg, blob)
        .map_err(|e| anyhow!("{e}"))?
        .with_limits(limits);
    let nc = cfg.num_classes as usize;
    let per = checked_input(cfg, input, n)?;
    let mut logits = vec![0.0f32; n * nc];
    match engine {
        Engine::Exact => {
            let plan = limits
                .check_exact(cfg)
                .map_err(|e| anyhow!("{e}{LIMIT_HINT}"))?;
            let mut arena = vec![0.0f32; plan.total()];
            for i in 0..n {
                exact::forward(
                    &w,
                    &input[i * per..(i + 1) * per],
                    &mut arena,
                    &mut logits[i * nc..(i + 1) * nc],
                )
                .map_err(|e| anyhow!("{e}"))?;
            }
        }
        Engine::Fast => FastModel::new(&w)
            .and_then(|m| m.forward(input, &mut logits))
            .map_err(|e| anyhow!("{e}{LIMIT_HINT}"))?,
        Engine::Tch => bail!("the tch engine runs from an unfolded state_dict (tch_logits)"),
    }
    Ok(logits)
}

/// Builds the trainer's libtorch TinyViT (CPU) with the weights of an official state_dict.
pub fn tch_model(
    sd: &import::StateDict,
    cfg: &ModelConfig,
) -> Result<(tch::nn::VarStore, crate::model::TinyVit)> {
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let model = crate::model::TinyVit::new(&vs.root(), cfg)?;
    tch::no_grad(|| -> Result<()> {
        for (name, mut var) in vs.variables() {
            if name.ends_with("num_batches_tracked") {
                continue;
            }
            let t = sd
                .get(&name)
                .ok_or_else(|| anyhow!("checkpoint lacks `{name}` for the tch model"))?;
            let src = tch::Tensor::from_slice(&t.values).reshape(var.size());
            var.copy_(&src);
        }
        Ok(())
    })?;
    Ok((vs, model))
}

/// Logits of the libtorch model (eval mode, CPU) for `n` inputs `[n, C, S, S]`.
pub fn tch_logits(
    sd: &import::StateDict,
    cfg: &ModelConfig,
    input: &[f32],
    n: usize,
) -> Result<Vec<f32>> {
    let (_vs, model) = tch_model(sd, cfg)?;
    let s = cfg.img_size as i64;
    let x = tch::Tensor::from_slice(input).reshape([n as i64, cfg.in_chans as i64, s, s]);
    let y = tch::no_grad(|| model.forward(&x, crate::model::Mode::EVAL));
    Ok(Vec::<f32>::try_from(y.flatten(0, -1))?)
}

/// Softmax probabilities of the `k` best classes, best first.
pub fn topk(logits: &[f32], k: usize) -> Vec<(usize, f32)> {
    let m = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|v| (v - m).exp()).collect();
    let sum: f32 = exps.iter().sum();
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_by(|a, b| logits[*b].total_cmp(&logits[*a]));
    idx.into_iter()
        .take(k)
        .map(|i| (i, exps[i] / sum))
        .collect()
}

/// Decodes and transforms images into one `[N, C, S, S]` batch with the project's evaluation
/// transform and ImageNet's normalisation (a model that records no contract).
pub fn load_images(paths: &[PathBuf], cfg: &ModelConfig) -> Result<Vec<f32>> {
    let c = Contract {
        mean: tinyvit_core::aug::IMAGENET_MEAN,
        std: tinyvit_core::aug::IMAGENET_STD,
        ..Contract::default()
    }
    .resolve(cfg)
    .map_err(|e| anyhow!("{e}"))?;
    load_images_with(paths, &c)
}

/// Decodes and transforms images into one `[N, C, S, S]` batch as `contract` says (size,
/// channels, evaluation transform, normalisation). A file that does not decode completely is
/// an error naming it.
pub fn load_images_with(paths: &[PathBuf], contract: &Contract) -> Result<Vec<f32>> {
    let size = contract.size;
    let ch = contract.channels;
    ensure!(!paths.is_empty(), "no images given");
    let per = (size as usize) * (size as usize) * (ch as usize);
    let mut out = Vec::with_capacity(paths.len() * per);
    for p in paths {
        let img =
            image::open(p).map_err(|e| anyhow!("{}: not a readable image: {e}", p.display()))?;
        let (w, h, data) = if ch == 1 {
            let g = img.to_luma8();
            (g.width(), g.height(), g.into_raw())
        } else {
            let c = img.to_rgb8();
            (c.width(), c.height(), c.into_raw())
        };
        let src = ImageRef::new(w, h, ch, &data).map_err(|e| anyhow!("{}: {e:?}", p.display()))?;
        let mut view = vec![0u8; per];
        let mut scratch = vec![
            0u8;
            eval_scratch_len(w, h, size, contract.crop_fraction, ch)
                .map_err(|e| anyhow!("{}: {e:?}", p.display()))?
        ];
        eval_transform(
            src,
            ImageMut::new(size, size, ch, &mut view).map_err(|e| anyhow!("{e:?}"))?,
            contract.crop_fraction,
            contract.interpolation,
            &mut scratch,
        )
        .map_err(|e| anyhow!("{}: eval transform: {e:?}", p.display()))?;
        let mut norm = vec![0.0f32; view.len()];
        normalize(
            ImageRef::new(size, size, ch, &view).map_err(|e| anyhow!("{e:?}"))?,
            contract.mean,
            contract.std,
            &mut norm,
        )
        .map_err(|e| anyhow!("{e:?}"))?;
        out.extend_from_slice(&norm);
    }
    Ok(out)
}

pub(crate) fn read_input_npy(path: &Path, cfg: &ModelConfig) -> Result<(Vec<f32>, usize)> {
    let a = read_npy(path)?;
    let s = cfg.img_size as usize;
    let c = cfg.in_chans as usize;
    let shape = a.shape().to_vec();
    ensure!(
        shape.len() == 4 && shape[1] == c && shape[2] == s && shape[3] == s,
        "{}: field `shape` {shape:?}, the model takes [N, {c}, {s}, {s}]",
        path.display()
    );
    Ok((a.into_raw_vec_and_offset().0, shape[0]))
}

/// Reads a float32 `.npy` file (any header version, either byte order, C or Fortran order) into
/// a C-order array. The shape's element count is computed with checked arithmetic and compared
/// with the file's size before anything is allocated for the data.
pub fn read_npy(path: &Path) -> Result<ArrayD<f32>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    crate::import::npy::parse(&bytes).with_context(|| path.display().to_string())
}

/// Writes a float32 C-order `.npy`.
pub fn write_npy(path: &Path, shape: &[usize], values: &[f32]) -> Result<()> {
    let a = ArrayViewD::from_shape(shape, values).with_context(|| {
        format!(
            "{}: {} values for shape {shape:?}",
            path.display(),
            values.len()
        )
    })?;
    let file =
        std::fs::File::create(path).with_context(|| format!("writing {}", path.display()))?;
    let mut w = std::io::BufWriter::new(file);
    a.write_npy(&mut w)
        .with_context(|| format!("writing {}", path.display()))?;
    w.flush()
        .with_context(|| format!("writing {}", path.display()))
}

/// Added to engine errors: how to allow a larger model.
pub const LIMIT_HINT: &str = " (--max-macs / --max-memory raise the limits)";

/// Runs `tinyvit convert`: refuses a model the engines would refuse under the same limits.
pub fn convert(args: &ConvertArgs) -> Result<()> {
    let model = args.source.load()?;
    args.source
        .limits
        .get()
        .check_exact(&model.config)
        .map_err(|e| anyhow!("{}: {e}{LIMIT_HINT}", args.source.model.display()))?;
    import::export_tvb(&model, &args.out)?;
    eprintln!(
        "{} -> {} ({} classes, {} folded values)",
        args.source.model.display(),
        args.out.display(),
        model.config.num_classes,
        model.blob.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("tinyvit-infer-{}-{name}", std::process::id()))
    }

    /// A hand-made version 1.0 `.npy`: magic, header padded to 64 bytes, then `data`.
    fn npy_with_header(dict: &str, data: &[u8]) -> Vec<u8> {
        let mut h = dict.to_string();
        while !(10 + h.len() + 1).is_multiple_of(64) {
            h.push(' ');
        }
        h.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(h.len() as u16).to_le_bytes());
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn npy_round_trips() {
        let v: Vec<f32> = (0..24).map(|i| i as f32 * 0.5 - 3.0).collect();
        let p = scratch("round.npy");
        write_npy(&p, &[2, 3, 4], &v).unwrap();
        let b = std::fs::read(&p).unwrap();
        assert_eq!(b.len() % 64, 24 * 4 % 64);
        let a = read_npy(&p).unwrap();
        assert_eq!(a.shape(), &[2, 3, 4]);
        assert_eq!(a.into_raw_vec_and_offset().0, v);
        write_npy(&p, &[24], &v).unwrap();
        assert_eq!(read_npy(&p).unwrap().shape(), &[24]);
        assert!(write_npy(&p, &[5, 5], &v).is_err());
        std::fs::write(&p, &b[..b.len() - 1]).unwrap();
        assert!(read_npy(&p).is_err());
        std::fs::write(&p, b"not numpy").unwrap();
        assert!(read_npy(&p).is_err());
        std::fs::remove_file(&p).unwrap();
    }

    /// Fortran order and big-endian data come back as the same C-order values.
    #[test]
    fn npy_memory_and_byte_order_are_normalised() {
        let p = scratch("orders.npy");
        let f: Vec<u8> = [0.0f32, 3.0, 1.0, 4.0, 2.0, 5.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let dict = "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }";
        std::fs::write(&p, npy_with_header(dict, &f)).unwrap();
        let a = read_npy(&p).unwrap();
        assert_eq!(
            a.into_raw_vec_and_offset().0,
            [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
        );
        let be: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|v| v.to_be_bytes())
            .collect();
        let dict = "{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }";
        std::fs::write(&p, npy_with_header(dict, &be)).unwrap();
        assert_eq!(
            read_npy(&p).unwrap().into_raw_vec_and_offset().0,
            [1.5, -2.0]
        );
        std::fs::remove_file(&p).unwrap();
    }

    /// A shape whose product wraps (to 0 in 64 bits), one larger than the file, and another
    /// dtype: named errors, nothing allocated for the data.
    #[test]
    fn npy_bad_shapes_and_dtypes_are_named_errors() {
        let p = scratch("bad.npy");
        let cases = [
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 3, 224, 224), }",
                "overflows",
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000, 3, 224, 224), }",
                "the file holds",
            ),
            ("{'descr': '<f8', 'fortran_order': False, 'shape': (1,), }", "descr"),
        ];
        for (dict, want) in cases {
            std::fs::write(&p, npy_with_header(dict, &[0; 8])).unwrap();
            let e = format!("{:#}", read_npy(&p).unwrap_err());
            assert!(e.contains(&p.display().to_string()), "{e}");
            assert!(e.contains(want), "{dict}: {e}");
        }
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn values_keep_three_significant_digits() {
        assert_eq!(fmt_value(0.3412), "0.341");
        assert_eq!(fmt_value(0.000_234_5), "0.000234");
        assert_eq!(fmt_value(0.004_58), "0.00458");
        assert_eq!(fmt_value(4.6e-5), "4.60e-5");
        assert_eq!(fmt_value(-12.345), "-12.345");
        assert_eq!(fmt_value(0.0), "0.000");
    }

    #[test]
    fn rows_name_their_classes() {
        let named = Contract {
            class_names: vec!["cat".into(), "dog".into(), "emu".into()],
            ..Contract::default()
        };
        let row = [0.0f32, 2.0, 1.0];
        assert_eq!(
            format_row(&row, 2, false, &named),
            "1 dog 0.665\t2 emu 0.245"
        );
        assert_eq!(format_row(&row, 1, true, &named), "1 dog 2.000");
        assert_eq!(
            format_row(&row, 9, true, &Contract::default())
                .split('\t')
                .count(),
            3
        );
    }

    #[test]
    fn folders_expand_to_their_images_or_are_refused() {
        let d = scratch("folder");
        std::fs::create_dir_all(&d).unwrap();
        let e = format!("{:#}", expand_images(std::slice::from_ref(&d)).unwrap_err());
        assert!(e.contains("holds no image files"), "{e}");
        std::fs::write(d.join("b.PNG"), b"x").unwrap();
        std::fs::write(d.join("a.jpg"), b"x").unwrap();
        std::fs::write(d.join("notes.txt"), b"x").unwrap();
        let got = expand_images(std::slice::from_ref(&d)).unwrap();
        assert_eq!(got, [d.join("a.jpg"), d.join("b.PNG")]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn topk_orders_by_probability() {
        let t = topk(&[0.0, 2.0, 1.0], 2);
        assert_eq!(t[0].0, 1);
        assert_eq!(t[1].0, 2);
        assert!(t[0].1 > t[1].1);
    }
}
