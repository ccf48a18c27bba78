//! Writes the device replay vectors: `cargo run --release -p tinyvit-tests --example make_replay
//! -- --out DIR` (run by `cargo xtask replay`; nothing it writes is committed).
//!
//! Every expected value is computed here, on the host, by the very function the firmware runs,
//! `tinyvit_core::vectors::replay` (through `replay_alloc`, which allocates its buffers):
//! - `golden.vec`: every `view` line of the augmentation known-answer file
//!   `tests/fixtures/aug/golden.txt` (three presets, test patterns rebuilt on the device and a
//!   photo crop), with the hash committed there; the host first checks that it still renders
//!   that hash through `vectors::replay`.
//! - `aug.vec`: more augmentation views. Deterministic synthetic source images (RGB and grey, odd
//!   sizes) and seeds go through `aug::replay` under the `light` and `in22k-distill` presets;
//!   the FNV-1a 64 of each u8 view is stored.
//! - for each MCU preset `P`: `P.tvb`, the preset with seeded synthetic weights
//!   (`engine::fold::synthetic_blob`: synthetic weights, BN folded), and `P.vec`: grey sources and seeds ->
//!   the augmentation (`light`, output at the model's input size) -> normalisation -> the core
//!   `exact` engine -> logits hash and class (`infer` vectors); `evalview` vectors (the
//!   evaluation transform of a 28x28 source) and `eval` vectors (model-sized sources, no
//!   transform).
//! - for each preset `P` of [`INT8_PRESETS`] (the MCU presets and the int8 ones): `P-int8.tvb`,
//!   the preset's seeded weights quantised by `int8::quantize::quantize_tvb` (default options,
//!   [`CALIB_IMAGES`] synthetic calibration images), and `P-int8.vec`: the same kinds of vectors
//!   through the int8 engine (`vectors::Int8`, whose hash is that of the `i32` logits) plus
//!   more `eval` images: 32 inference vectors per int8 model.
//! - `cases.txt`: one line per vector set, `name vectors [model]`, and `macs.txt`: one line per
//!   preset, `name multiply-accumulates-per-inference`.
//! - `matmul_probe.tvb` / `.vec` (and `matmul_probe-int8.*`, the same network quantised): the
//!   first preset of [`PROBE`] with [`PROBE_EXTRA_CLASSES`] more
//!   classes and otherwise identical weights, and `probe.txt`: `probe vectors model base
//!   extra_macs` (one line per probe). Only the head Linear differs, so the instruction difference between the two
//!   models on the same image is the core's matmul kernel (`layers::linear`) alone: `cargo xtask
//!   bench` divides it by `extra_macs`.
//!
//! With `--eval MODEL.tvb --data idx:IMAGES[,LABELS] --count N [--aug-preset NAME]` it writes
//! instead `eval.vec`: the first `N` images of an IDX file (gzipped or not) as `evalview`
//! vectors for that model (normalised with the preset's mean/std, `light` by default), with the
//! host's logits hash and class, and `eval.txt`: `index label class` per image (label `-` when
//! there are no labels). The model's format version picks the engine (f32 `exact` or int8, as
//! on the device). `cargo xtask train` uses it to run its student on the device.

use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};

use tinyvit_core::aug;
use tinyvit_core::config::ModelConfig;
use tinyvit_core::engine::{self, fold::synthetic_blob, Weights};
use tinyvit_core::int8;
use tinyvit_core::params::splitmix64;
use tinyvit_core::vectors::{self, Classifier, Exact, Int8, Kind, Record};
use tinyvit_tests::aug_golden;

/// The MCU presets replayed on the device, with the seed of their synthetic weights.
const PRESETS: [(&str, u64); 2] = [("tiny_vit_mcu_m4", 41), ("tiny_vit_mcu_h7", 47)];
/// The presets replayed in int8, with the seed of their synthetic weights and their extra `eval`
/// images (32 inference vectors each): the f32 MCU presets quantised, and the int8 presets
/// (whose f32 files exceed the boards, so replayed in int8 only).
const INT8_PRESETS: [(&str, u64, u64); 4] = [
    ("tiny_vit_mcu_m4", 41, INT8_EVAL_IMAGES),
    ("tiny_vit_mcu_h7", 47, INT8_EVAL_IMAGES),
    ("tiny_vit_mcu_m4_q8", 43, INT8_EVAL_IMAGES),
    ("tiny_vit_mcu_h7_q8", 53, INT8_EVAL_IMAGES),
];
/// Synthetic calibration images of each int8 model.
const CALIB_IMAGES: u64 = 16;
/// `eval` images replayed per int8 model on top of the f32 sets' 12 inference vectors: 32 in
/// all.
const INT8_EVAL_IMAGES: u64 = 20;
/// The preset (and weight seed) the matmul probe widens.
const PROBE: (&str, u64) = ("tiny_vit_mcu_h7", 47);
/// Classes the matmul probe adds to the head.
const PROBE_EXTRA_CLASSES: u32 = 2000;

const USAGE: &str = "usage: make_replay --out DIR
       make_replay --eval MODEL.tvb --data idx:IMAGES[,LABELS] --count N [--aug-preset NAME] --out DIR";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut opts = std::collections::HashMap::new();
    let mut it = args.iter();
    while let Some(k) = it.next() {
        let Some(v) = it.next() else {
            eprintln!("{k} needs a value\n{USAGE}");
            std::process::exit(2);
        };
        opts.insert(k.as_str(), v.clone());
    }
    let Some(out) = opts.get("--out").map(PathBuf::from) else {
        eprintln!("{USAGE}");
        std::process::exit(2);
    };
    let result = match opts.get("--eval") {
        None => run(&out),
        Some(model) => eval_set(
            Path::new(model),
            opts.get("--data").map_or("", |s| s.as_str()),
            opts.get("--count").map_or("", |s| s.as_str()),
            opts.get("--aug-preset").map_or("light", |s| s.as_str()),
            &out,
        ),
    };
    if let Err(e) = result {
        eprintln!("make_replay: {e}");
        std::process::exit(1);
    }
}

/// `r` with the expected values filled in by the core's replay (`vectors::replay`, what the
/// device runs): the image hash, and for inference kinds the class and the logits hash.
fn expect(mut r: Record, model: Option<&mut dyn Classifier>) -> Result<Record, String> {
    let o = vectors::replay_alloc(&r.input(), model).map_err(|e| e.to_string())?;
    r.image_hash = o.image_hash.ok_or("replay computed no image")?;
    if r.kind != Kind::View {
        r.class = o.class.ok_or("replay computed no class")?;
        r.logits_hash = o.logits_hash.ok_or("replay computed no logits")?;
    }
    Ok(r)
}

/// The vector file of `records`.
fn encode(records: &[Record]) -> Result<Vec<u8>, String> {
    vectors::write(records).map_err(|e| e.to_string())
}

fn run(out: &Path) -> Result<(), String> {
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let write = |name: &str, bytes: &[u8]| {
        let p = out.join(name);
        std::fs::write(&p, bytes).map_err(|e| format!("{}: {e}", p.display()))
    };
    let mut cases = String::new();
    let mut macs = String::new();

    write("golden.vec", &encode(&golden_view_vectors()?)?)?;
    cases.push_str("aug-golden golden.vec\n");
    write("aug.vec", &encode(&view_vectors()?)?)?;
    cases.push_str("aug aug.vec\n");

    for (name, seed) in PRESETS {
        let cfg = ModelConfig::preset(name).ok_or(format!("no preset {name}"))?;
        let blob = seeded_blob(&cfg, seed)?;
        write(
            &format!("{name}.tvb"),
            &tinyvit_core::tvb::write(&cfg, &blob).map_err(|e| format!("{name}: {e}"))?,
        )?;
        write(
            &format!("{name}.vec"),
            &encode(&inference_vectors(&cfg, &blob)?)?,
        )?;
        writeln!(cases, "{name} {name}.vec {name}.tvb").unwrap();
        writeln!(macs, "{name} {}", count_macs(&cfg)?).unwrap();
    }
    for (name, seed, extra_eval) in INT8_PRESETS {
        let cfg = ModelConfig::preset(name).ok_or(format!("no preset {name}"))?;
        let q8 = quantized(&cfg, &seeded_blob(&cfg, seed)?)?;
        let case = format!("{name}-int8");
        write(&format!("{case}.tvb"), &q8)?;
        write(
            &format!("{case}.vec"),
            &encode(&int8_vectors(&q8, extra_eval)?)?,
        )?;
        writeln!(cases, "{case} {case}.vec {case}.tvb").unwrap();
        writeln!(macs, "{case} {}", count_macs(&cfg)?).unwrap();
    }
    let mut probes = String::new();
    let (name, seed) = PROBE;
    let base = ModelConfig::preset(name).ok_or(format!("no preset {name}"))?;
    let probe = base.with_num_classes(base.num_classes + PROBE_EXTRA_CLASSES);
    let blob = seeded_blob(&probe, seed)?;
    write(
        "matmul_probe.tvb",
        &tinyvit_core::tvb::write(&probe, &blob).map_err(|e| format!("probe: {e}"))?,
    )?;
    write(
        "matmul_probe.vec",
        &encode(&inference_vectors(&probe, &blob)?)?,
    )?;
    let extra = count_macs(&probe)? - count_macs(&base)?;
    writeln!(
        probes,
        "matmul_probe matmul_probe.vec matmul_probe.tvb {name} {extra}"
    )
    .unwrap();
    let q8 = quantized(&probe, &blob)?;
    write("matmul_probe-int8.tvb", &q8)?;
    write("matmul_probe-int8.vec", &encode(&int8_vectors(&q8, 0)?)?)?;
    writeln!(
        probes,
        "matmul_probe-int8 matmul_probe-int8.vec matmul_probe-int8.tvb {name}-int8 {extra}"
    )
    .unwrap();
    write("probe.txt", probes.as_bytes())?;
    write("cases.txt", cases.as_bytes())?;
    write("macs.txt", macs.as_bytes())?;
    Ok(())
}

/// The preset with deterministic synthetic weights, BN folded: the packed blob.
fn seeded_blob(cfg: &ModelConfig, seed: u64) -> Result<Vec<f32>, String> {
    synthetic_blob(cfg, seed).map_err(|e| e.to_string())
}

/// A deterministic image with structure (a gradient, a bright disc, a dark bar) and noise, so
/// that contrast, equalisation, resampling and geometric ops all have something to act on.
fn synthetic_image(width: u32, height: u32, channels: u32, seed: u64) -> Vec<u8> {
    let mut s = seed;
    let (cx, cy) = (
        (splitmix64(&mut s) % u64::from(width)) as i64,
        (splitmix64(&mut s) % u64::from(height)) as i64,
    );
    let r2 = i64::from(width.min(height) / 3).pow(2).max(1);
    let bar = (splitmix64(&mut s) % u64::from(height)) as u32;
    let mut v = Vec::with_capacity((width * height * channels) as usize);
    for y in 0..height {
        for x in 0..width {
            for c in 0..channels {
                let mut p = (x * 160 / width + y * 60 / height + c * 20) as i64;
                if (i64::from(x) - cx).pow(2) + (i64::from(y) - cy).pow(2) < r2 {
                    p += 70;
                }
                if y.abs_diff(bar) < 2 {
                    p -= 90;
                }
                p += (splitmix64(&mut s) % 25) as i64 - 12;
                v.push(p.clamp(0, 255) as u8);
            }
        }
    }
    v
}

/// The `view` lines of the augmentation known-answer file (`view PRESET SIZE IMAGE SEED HASH
/// PARAMS`), checked on the host before they are handed to the device.
fn golden_view_vectors() -> Result<Vec<Record>, String> {
    let path = aug_golden::fixture_dir().join("golden.txt");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut records = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let t: Vec<&str> = line.split(' ').collect();
        if t.first() != Some(&"view") {
            continue;
        }
        let bad = || format!("{}:{}: malformed view line", path.display(), n + 1);
        let [_, preset, size, image, seed, hash, ..] = t.as_slice() else {
            return Err(bad());
        };
        let size: u32 = size.parse().map_err(|_| bad())?;
        let seed: u32 = seed.parse().map_err(|_| bad())?;
        let hash = u64::from_str_radix(hash, 16).map_err(|_| bad())?;
        let img = aug_golden::load_image(image);
        let mut cfg = aug::preset(preset).map_err(|e| format!("{}: {e}", bad()))?;
        cfg.size = size;
        let r = expect(
            Record {
                kind: Kind::View,
                seed,
                width: img.width,
                height: img.height,
                channels: img.channels,
                cfg,
                pixels: img.data,
                pattern: image.starts_with("pattern:"),
                class: u32::MAX,
                image_hash: 0,
                logits_hash: 0,
            },
            None,
        )?;
        if r.image_hash != hash {
            return Err(format!(
                "{}:{}: the host no longer renders this view (hash {:016x}); the \
                 augmentation changed without re-blessing its known answers",
                path.display(),
                n + 1,
                r.image_hash
            ));
        }
        records.push(r);
    }
    if records.is_empty() {
        return Err(format!("{}: no view lines", path.display()));
    }
    Ok(records)
}

/// Augmentation-only vectors: two presets, grey and RGB sources of odd sizes, several seeds.
fn view_vectors() -> Result<Vec<Record>, String> {
    let mut light = aug::preset("light").map_err(|e| e.to_string())?;
    light.size = 32;
    let mut big = aug::preset("in22k-distill").map_err(|e| e.to_string())?;
    big.size = 48;
    let sources: [(u32, u32, u32); 4] = [(28, 28, 1), (37, 29, 3), (64, 48, 3), (20, 45, 1)];
    let mut records = Vec::new();
    for (k, &(w, h, c)) in sources.iter().enumerate() {
        let pixels = synthetic_image(w, h, c, 1000 + k as u64);
        for cfg in [light, big] {
            for j in 0..3u32 {
                records.push(expect(
                    Record {
                        kind: Kind::View,
                        seed: aug::sample_seed(7, j, k as u64),
                        width: w,
                        height: h,
                        channels: c,
                        cfg,
                        pixels: pixels.clone(),
                        pattern: false,
                        class: u32::MAX,
                        image_hash: 0,
                        logits_hash: 0,
                    },
                    None,
                )?);
            }
        }
    }
    Ok(records)
}

/// Inference vectors for one preset: augmented views of 28x28 grey sources, and eval images.
fn inference_vectors(cfg: &ModelConfig, blob: &[f32]) -> Result<Vec<Record>, String> {
    let weights = Weights::new(cfg, blob).map_err(|e| e.to_string())?;
    let mut arena = vec![0.0f32; engine::arena_len(cfg).map_err(|e| e.to_string())?];
    let mut logits = vec![0.0f32; cfg.num_classes as usize];
    let mut model = Exact::new(&weights, &mut arena, &mut logits).map_err(|e| e.to_string())?;
    model_vectors(cfg, &mut model, 0)
}

/// `blob` (folded f32 weights of `cfg`) quantised to an int8 file with synthetic calibration
/// images, normalised as the `light` preset does.
fn quantized(cfg: &ModelConfig, blob: &[f32]) -> Result<Vec<u8>, String> {
    let f32_tvb = tinyvit_core::tvb::write(cfg, blob).map_err(|e| e.to_string())?;
    let acfg = aug::preset("light").map_err(|e| e.to_string())?;
    let (s, c) = (cfg.img_size, cfg.in_chans);
    let n = aug::image_len(s, s, c).map_err(|e| e.to_string())?;
    let mut images = vec![0.0f32; n * CALIB_IMAGES as usize];
    for (k, out) in images.chunks_exact_mut(n).enumerate() {
        let pixels = synthetic_image(s, s, c, 5000 + k as u64);
        let img = aug::ImageRef::new(s, s, c, &pixels).map_err(|e| e.to_string())?;
        aug::normalize(img, acfg.mean, acfg.std, out).map_err(|e| e.to_string())?;
    }
    int8::quantize::quantize_tvb(&f32_tvb, &images, &int8::quantize::Options::default())
        .map_err(|e| format!("quantising {}: {e}", cfg.img_size))
}

/// The int8 model's vectors: those of [`inference_vectors`] and `extra_eval` more `eval` images.
fn int8_vectors(q8: &[u8], extra_eval: u64) -> Result<Vec<Record>, String> {
    let m = int8::parse(q8).map_err(|e| e.to_string())?;
    let cfg = *m.config();
    let mut input = vec![0i8; engine::input_len(&cfg).map_err(|e| e.to_string())?];
    let mut arena = vec![0i32; int8::arena_len(&cfg).map_err(|e| e.to_string())?];
    let mut logits = vec![0i32; cfg.num_classes as usize];
    let mut real = vec![0.0f32; cfg.num_classes as usize];
    let mut model =
        Int8::new(&m, &mut input, &mut arena, &mut logits, &mut real).map_err(|e| e.to_string())?;
    model_vectors(&cfg, &mut model, extra_eval)
}

/// Inference vectors of `model` (`cfg`'s shapes): 8 `infer`, 2 `evalview` and `2 + extra_eval`
/// `eval` vectors.
fn model_vectors(
    cfg: &ModelConfig,
    model: &mut dyn Classifier,
    extra_eval: u64,
) -> Result<Vec<Record>, String> {
    let mut acfg = aug::preset("light").map_err(|e| e.to_string())?;
    acfg.size = cfg.img_size;
    let c = cfg.in_chans;
    let record = |kind, seed, side, pixels| Record {
        kind,
        seed,
        width: side,
        height: side,
        channels: c,
        cfg: acfg,
        pixels,
        pattern: false,
        class: 0,
        image_hash: 0,
        logits_hash: 0,
    };
    let mut records = Vec::new();
    for k in 0..4u64 {
        let pixels = synthetic_image(28, 28, c, 2000 + k);
        for epoch in 0..2u32 {
            let seed = aug::sample_seed(11, epoch, k);
            let r = record(Kind::Infer, seed, 28, pixels.clone());
            records.push(expect(r, Some(&mut *model))?);
        }
    }
    for k in 0..2u64 {
        let r = record(Kind::EvalView, 0, 28, synthetic_image(28, 28, c, 4000 + k));
        records.push(expect(r, Some(&mut *model))?);
    }
    for k in 0..2 + extra_eval {
        let s = cfg.img_size;
        let r = record(Kind::Eval, 0, s, synthetic_image(s, s, c, 3000 + k));
        records.push(expect(r, Some(&mut *model))?);
    }
    Ok(records)
}

/// Reads a file, gunzipping it when it starts with the gzip magic.
fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, String> {
    let raw = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| format!("{}: gunzip: {e}", path.display()))?;
        return Ok(out);
    }
    Ok(raw)
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// `--eval`: the first `count` images of an IDX data SPEC as evaluation-view vectors for the model.
fn eval_set(model: &Path, data: &str, count: &str, preset: &str, out: &Path) -> Result<(), String> {
    let count: usize = count
        .parse()
        .map_err(|_| format!("--count: `{count}` is not a number\n{USAGE}"))?;
    let spec = data.strip_prefix("idx:").ok_or(format!(
        "--data: `{data}` is not idx:IMAGES[,LABELS]\n{USAGE}"
    ))?;
    let (images_path, labels_path) = match spec.split_once(',') {
        Some((i, l)) => (Path::new(i), Some(Path::new(l))),
        None => (Path::new(spec), None),
    };
    let images = read_maybe_gz(images_path)?;
    let bad = |what: &str| format!("{}: {what}", images_path.display());
    if images.len() < 16 || be32(&images, 0) != 0x0803 {
        return Err(bad("not an IDX u8 image file (magic 0x00000803)"));
    }
    let (n, h, w) = (
        be32(&images, 4) as usize,
        be32(&images, 8),
        be32(&images, 12),
    );
    let plane = h as usize * w as usize;
    if images.len() != 16 + n * plane {
        return Err(bad("length does not match its header"));
    }
    let labels = match labels_path {
        Some(p) => {
            let l = read_maybe_gz(p)?;
            if l.len() != 8 + n || be32(&l, 0) != 0x0801 {
                return Err(format!(
                    "{}: not an IDX label file for {n} images",
                    p.display()
                ));
            }
            Some(l[8..].to_vec())
        }
        None => None,
    };
    let bytes = std::fs::read(model).map_err(|e| format!("{}: {e}", model.display()))?;
    let named = |e: &dyn std::fmt::Display| format!("{}: {e}", model.display());
    // The engine the firmware will pick from the file's format version: f32 exact or int8.
    let kind = tinyvit_core::tvb::kind(&bytes).map_err(|e| named(&e))?;
    let (cfg, blob, q8) = match kind {
        tinyvit_core::tvb::Kind::F32 => {
            let tvb = tinyvit_core::tvb::parse(&bytes).map_err(|e| named(&e))?;
            (*tvb.config(), tvb.to_blob(), None)
        }
        tinyvit_core::tvb::Kind::Int8 => {
            let m = int8::parse(&bytes).map_err(|e| named(&e))?;
            (*m.config(), Vec::new(), Some(m))
        }
    };
    if cfg.in_chans != 1 {
        return Err(format!(
            "{}: the model takes {} channels, IDX images are grey",
            model.display(),
            cfg.in_chans
        ));
    }
    let mut acfg = aug::preset(preset).map_err(|e| format!("--aug-preset {preset}: {e}"))?;
    acfg.size = cfg.img_size;
    let mut arena = vec![0.0f32; 0];
    let mut arena_i32 = vec![0i32; 0];
    let mut input_i8 = vec![0i8; 0];
    let mut logits_i32 = vec![0i32; cfg.num_classes as usize];
    let mut logits = vec![0.0f32; cfg.num_classes as usize];
    let weights;
    let (mut exact, mut quant) = (None, None);
    match &q8 {
        None => {
            weights = Weights::new(&cfg, &blob).map_err(|e| e.to_string())?;
            arena.resize(engine::arena_len(&cfg).map_err(|e| e.to_string())?, 0.0);
            exact = Some(Exact::new(&weights, &mut arena, &mut logits).map_err(|e| e.to_string())?);
        }
        Some(m) => {
            arena_i32.resize(int8::arena_len(&cfg).map_err(|e| e.to_string())?, 0);
            input_i8.resize(engine::input_len(&cfg).map_err(|e| e.to_string())?, 0);
            let i = Int8::new(
                m,
                &mut input_i8,
                &mut arena_i32,
                &mut logits_i32,
                &mut logits,
            )
            .map_err(|e| e.to_string())?;
            quant = Some(i);
        }
    }
    let model: &mut dyn Classifier = match (&mut exact, &mut quant) {
        (Some(m), _) => m,
        (None, Some(m)) => m,
        (None, None) => return Err(named(&"no engine opened")),
    };
    let mut records = Vec::new();
    let mut table = String::new();
    for i in 0..count.min(n) {
        let pixels = images[16 + i * plane..16 + (i + 1) * plane].to_vec();
        let r = expect(
            Record {
                kind: Kind::EvalView,
                seed: 0,
                width: w,
                height: h,
                channels: 1,
                cfg: acfg,
                pixels,
                pattern: false,
                class: 0,
                image_hash: 0,
                logits_hash: 0,
            },
            Some(&mut *model),
        )?;
        let label = labels
            .as_ref()
            .map_or("-".to_string(), |l| l[i].to_string());
        writeln!(table, "{i} {label} {}", r.class).unwrap();
        records.push(r);
    }
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let write = |name: &str, bytes: &[u8]| {
        let p = out.join(name);
        std::fs::write(&p, bytes).map_err(|e| format!("{}: {e}", p.display()))
    };
    write("eval.vec", &encode(&records)?)?;
    write("eval.txt", table.as_bytes())
}

/// The core's multiply-accumulate count of one inference (`engine::macs`), the denominator of
/// the bench's instructions per MAC.
fn count_macs(cfg: &ModelConfig) -> Result<u64, String> {
    tinyvit_core::engine::macs(cfg).map_err(|e| format!("MAC count: {e}"))
}
