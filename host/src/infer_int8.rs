//! `tinyvit infer` on an int8 model file (`.tvb` format version 4): the core's exact integer
//! engine ([`tinyvit_core::int8::run`]) with the inputs and output of the f32 engines
//! ([`crate::infer`]). `main.rs` sends a `tinyvit infer` here when the model file's first bytes
//! say int8 ([`is_int8`]); the integer engine is the bit-exact reference (`--engine exact`, the
//! default for these files), and the f32 engines are refused by name.

use std::path::Path;
use std::time::Instant;

use anyhow::{anyhow, bail, ensure, Context, Result};
use tinyvit_core::engine;
use tinyvit_core::{int8, tvb};

use crate::infer::{self, Engine, InferArgs};

/// Whether `path` is a readable int8 model file (magic `TINYVITB`, int8 format version); any
/// other file, or none, is left to the f32 loaders and their errors.
pub fn is_int8(path: &Path) -> bool {
    crate::quantize::read_prefix(path)
        .is_ok_and(|head| matches!(tvb::kind(&head), Ok(tvb::Kind::Int8)))
}

/// Int8 logits (dequantised to reals) of `n` normalised inputs `[n, C, S, S]`, and the raw
/// `i32` ones, from the exact integer engine.
pub fn int8_logits(
    model: &int8::Model<'_>,
    input: &[f32],
    n: usize,
) -> Result<(Vec<f32>, Vec<i32>)> {
    let cfg = model.config();
    let per = infer::checked_input(cfg, input, n)?;
    let nc = cfg.num_classes as usize;
    let mut arena = vec![0i32; int8::arena_len(cfg).map_err(|e| anyhow!("{e}"))?];
    let mut qin = vec![0i8; per];
    let mut raw = vec![0i32; n * nc];
    let mut real = vec![0f32; n * nc];
    for i in 0..n {
        int8::quantize_input(model, &input[i * per..(i + 1) * per], &mut qin);
        let out = &mut raw[i * nc..(i + 1) * nc];
        int8::run(model, &qin, &mut arena, out).map_err(|e| anyhow!("int8 engine: {e}"))?;
        int8::dequantize_logits(model, out, &mut real[i * nc..(i + 1) * nc]);
    }
    Ok((real, raw))
}

/// The input contract and class names an int8 file records (`quantize` writes the f32
/// model's), if any.
pub fn recorded_contract(model: &int8::Model<'_>) -> Option<tinyvit_core::contract::Contract> {
    model
        .contract()
        .map(|c| tinyvit_core::contract::Contract::from_parts(c, model.class_names()))
}

/// `tinyvit infer` on an int8 model file: the exact integer engine, the output of the f32
/// engines (one line of top-k per input, the logits as `.npy` with `--out`).
pub fn run(args: &InferArgs) -> Result<()> {
    let path = &args.source.model;
    if let Some(e) = args.engine.filter(|e| *e != Engine::Exact) {
        bail!(
            "{}: an int8 model (format version {}) runs on the `exact` engine only (--engine {} \
             runs f32 models)",
            path.display(),
            int8::file::VERSION,
            format!("{e:?}").to_lowercase()
        );
    }
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let model = int8::parse(&bytes).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let cfg = *model.config();
    if let Some(a) = &args.source.arch {
        let p = crate::arch::resolve(a)?;
        let p = p
            .with_num_classes(cfg.num_classes)
            .with_in_chans(cfg.in_chans)
            .with_img_size(cfg.img_size);
        ensure!(
            p == cfg,
            "{}: --arch {a}, the file holds another architecture",
            path.display()
        );
    }
    if let Some(c) = args.source.num_classes {
        ensure!(
            c == cfg.num_classes,
            "{}: --num-classes {c}, the model has {} classes",
            path.display(),
            cfg.num_classes
        );
    }
    if let Some(s) = args.source.img_size {
        ensure!(
            s == cfg.img_size,
            "{}: --img-size {s}, the model takes {} px",
            path.display(),
            cfg.img_size
        );
    }
    let limits = args.source.limits.get();
    let macs = engine::macs(&cfg).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let arena = int8::arena_len(&cfg).map_err(|e| anyhow!("{}: {e}", path.display()))? as u64 * 4;
    ensure!(
        macs <= limits.max_macs && arena <= limits.max_memory,
        "{}: {macs} multiply-accumulates and {arena} arena bytes exceed the limits{}",
        path.display(),
        infer::LIMIT_HINT
    );
    ensure!(args.topk >= 1, "--topk must be at least 1 (got 0)");
    let what = format!("model {}", path.display());
    // The file's own contract (written by `quantize` from the f32 model's); flags override it,
    // and files without one use ImageNet's normalisation with a note.
    let contract = args
        .contract
        .resolve(recorded_contract(&model), &cfg, &what)?;
    let (input, names) = match (&args.npy, args.images.is_empty()) {
        (Some(p), true) => {
            let (x, n) = infer::read_input_npy(p, &cfg)?;
            ensure!(
                n > 0,
                "{}: the batch holds no inputs (shape [0, ...])",
                p.display()
            );
            (
                x,
                (0..n)
                    .map(|i| format!("{}[{i}]", p.display()))
                    .collect::<Vec<_>>(),
            )
        }
        (None, false) => {
            let files = infer::expand_images(&args.images)?;
            let x = infer::load_images_with(&files, &contract)?;
            (x, files.iter().map(|f| f.display().to_string()).collect())
        }
        (None, true) => bail!("give --npy INPUT.npy or image files"),
        (Some(_), false) => bail!("give either --npy or image files, not both"),
    };
    let n = names.len();
    let t = Instant::now();
    let (logits, _) = int8_logits(&model, &input, n)?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let nc = cfg.num_classes as usize;
    for (i, name) in names.iter().enumerate() {
        let row = &logits[i * nc..(i + 1) * nc];
        println!(
            "{name}\t{}",
            infer::format_row(row, args.topk, args.logits, &contract)
        );
    }
    eprintln!(
        "{n} input(s), int8 Exact engine, {ms:.1} ms ({:.2} ms/input)",
        ms / n as f64
    );
    if let Some(out) = &args.out {
        infer::write_npy(out, &[n, nc], &logits)?;
    }
    Ok(())
}
