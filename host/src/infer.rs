//! `tinyvit infer`: logits of a TinyViT for images or a normalised `.npy` batch, on the core
//! engines; `tinyvit convert`: any model file to `.tvb`; `tinyvit presets`: weight and arena
//! sizes of every preset.
//!
//! Images go through the reference evaluation transform (resize the short side to
//! `size / 0.875` bicubic, centre crop `size`, ImageNet mean/std), implemented by
//! [`tinyvit_core::aug::eval_transform`] and [`tinyvit_core::aug::normalize`]; grey models
//! (`in_chans = 1`) read images as luma and normalise with the first channel's mean/std.
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
use tinyvit_core::aug::{
    eval_scratch_len, eval_transform, normalize, ImageMut, ImageRef, Interpolation, EVAL_CROP_PCT,
    IMAGENET_MEAN, IMAGENET_STD,
};
use tinyvit_core::config::{ModelConfig, PRESET_NAMES};
use tinyvit_core::engine::{arena_len, exact, fast::FastModel, input_len, Limits, Weights};
use tinyvit_core::params::{folded_blob_len, param_count};

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
    /// Preset name; detected from the weight shapes when omitted.
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
    /// Inference engine.
    #[arg(long, value_enum, default_value_t = Engine::Fast)]
    pub engine: Engine,
    /// Normalised float32 NCHW input batch.
    #[arg(long, conflicts_with = "images")]
    pub npy: Option<PathBuf>,
    /// Image files (PNG, JPEG), run through the evaluation transform.
    pub images: Vec<PathBuf>,
    /// Write the logits as float32 [N, classes] .npy.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print the top-k classes of each input.
    #[arg(long, default_value_t = 5)]
    pub topk: usize,
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
    let model = args.source.load()?;
    let cfg = model.config;
    let (input, n) = match (&args.npy, args.images.is_empty()) {
        (Some(p), true) => read_input_npy(p, &cfg)?,
        (None, false) => (load_images(&args.images, &cfg)?, args.images.len()),
        (None, true) => bail!("give --npy INPUT.npy or image files"),
        (Some(_), false) => bail!("give either --npy or image files, not both"),
    };
    let t = Instant::now();
    let logits = match args.engine {
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
    for i in 0..n {
        let name = match &args.npy {
            Some(p) => format!("{}[{i}]", p.display()),
            None => args.images[i].display().to_string(),
        };
        let row = &logits[i * nc..(i + 1) * nc];
        let top: Vec<String> = topk(row, args.topk)
            .into_iter()
            .map(|(c, p)| format!("{c}:{p:.4}"))
            .collect();
        println!("{name}\t{}", top.join(" "));
    }
    eprintln!(
        "{n} input(s), {:?} engine, {ms:.1} ms ({:.2} ms/input)",
        args.engine,
        ms / n as f64
    );
    if let Some(out) = &args.out {
        write_npy(out, &[n, nc], &logits)?;
    }
    Ok(())
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
    let per = input_len(cfg).map_err(|e| anyhow!("{e}"))?;
    ensure!(
        input.len() == n * per,
        "input holds {} values, expected {}",
        input.len(),
        n * per
    );
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

/// Decodes and transforms images into one `[N, C, S, S]` batch.
pub fn load_images(paths: &[PathBuf], cfg: &ModelConfig) -> Result<Vec<f32>> {
    let size = cfg.img_size;
    let ch = cfg.in_chans;
    let mut out = Vec::with_capacity(paths.len() * input_len(cfg).map_err(|e| anyhow!("{e}"))?);
    for p in paths {
        let img = image::open(p).with_context(|| format!("decoding {}", p.display()))?;
        let (w, h, data) = if ch == 1 {
            let g = img.to_luma8();
            (g.width(), g.height(), g.into_raw())
        } else {
            let c = img.to_rgb8();
            (c.width(), c.height(), c.into_raw())
        };
        let src = ImageRef::new(w, h, ch, &data).map_err(|e| anyhow!("{}: {e:?}", p.display()))?;
        let mut view = vec![0u8; (size * size * ch) as usize];
        let mut scratch = vec![
            0u8;
            eval_scratch_len(w, h, size, EVAL_CROP_PCT, ch)
                .map_err(|e| anyhow!("{}: {e:?}", p.display()))?
        ];
        eval_transform(
            src,
            ImageMut::new(size, size, ch, &mut view).map_err(|e| anyhow!("{e:?}"))?,
            EVAL_CROP_PCT,
            Interpolation::Bicubic,
            &mut scratch,
        )
        .map_err(|e| anyhow!("{}: eval transform: {e:?}", p.display()))?;
        let mut norm = vec![0.0f32; view.len()];
        normalize(
            ImageRef::new(size, size, ch, &view).map_err(|e| anyhow!("{e:?}"))?,
            IMAGENET_MEAN,
            IMAGENET_STD,
            &mut norm,
        )
        .map_err(|e| anyhow!("{e:?}"))?;
        out.extend_from_slice(&norm);
    }
    Ok(out)
}

fn read_input_npy(path: &Path, cfg: &ModelConfig) -> Result<(Vec<f32>, usize)> {
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

/// One row of `tinyvit presets`.
#[derive(Clone, Debug, PartialEq)]
pub struct PresetRow {
    pub name: &'static str,
    pub img_size: u32,
    pub params: u64,
    /// Folded f32 weight bytes (what a `.tvb` carries, without its header).
    pub weight_bytes: u64,
    /// Exact-engine arena bytes for one image.
    pub arena_bytes: u64,
}

/// Sizes of every preset.
pub fn preset_rows() -> Result<Vec<PresetRow>> {
    PRESET_NAMES
        .iter()
        .map(|name| {
            let cfg = ModelConfig::preset(name).ok_or_else(|| anyhow!("preset {name}"))?;
            Ok(PresetRow {
                name,
                img_size: cfg.img_size,
                params: param_count(&cfg),
                weight_bytes: folded_blob_len(&cfg) as u64 * 4,
                arena_bytes: arena_len(&cfg).map_err(|e| anyhow!("{name}: {e}"))? as u64 * 4,
            })
        })
        .collect()
}

/// Runs `tinyvit presets`: prints a Markdown table.
pub fn presets() -> Result<()> {
    println!("| preset | input | classes | params | weights (f32, folded) | exact arena |");
    println!("|---|---|---|---|---|---|");
    for r in preset_rows()? {
        let cfg = ModelConfig::preset(r.name).ok_or_else(|| anyhow!("preset"))?;
        println!(
            "| {} | {}x{}x{} | {} | {} | {} B ({:.1} KiB) | {} B ({:.1} KiB) |",
            r.name,
            cfg.in_chans,
            r.img_size,
            r.img_size,
            cfg.num_classes,
            r.params,
            r.weight_bytes,
            r.weight_bytes as f64 / 1024.0,
            r.arena_bytes,
            r.arena_bytes as f64 / 1024.0
        );
    }
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
    fn topk_orders_by_probability() {
        let t = topk(&[0.0, 2.0, 1.0], 2);
        assert_eq!(t[0].0, 1);
        assert_eq!(t[1].0, 2);
        assert!(t[0].1 > t[1].1);
    }

    #[test]
    fn mcu_presets_are_within_budget_in_the_table() {
        let rows = preset_rows().unwrap();
        let h7 = rows.iter().find(|r| r.name == "tiny_vit_mcu_h7").unwrap();
        let m4 = rows.iter().find(|r| r.name == "tiny_vit_mcu_m4").unwrap();
        assert!(h7.weight_bytes <= 1_500_000 && h7.arena_bytes <= 384 * 1024);
        assert!(m4.weight_bytes <= 800_000 && m4.arena_bytes <= 192 * 1024);
    }
}
