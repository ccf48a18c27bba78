//! Tests of the int8 engine against the f32 `exact` engine, its arena, and its file.
#![allow(clippy::float_arithmetic)]

use std::vec;
use std::vec::Vec;

use super::quantize::{quantize, Options, RangeMethod, Ranges};
use super::*;
use crate::config::ModelConfig;
use crate::engine::fold::synthetic_blob;
use crate::engine::{self as f32engine, Weights};
use crate::params::splitmix64;
use proptest::prelude::*;

pub(crate) fn blob(cfg: &ModelConfig, seed: u64) -> Vec<f32> {
    synthetic_blob(cfg, seed).unwrap()
}

/// `n` images of uniform noise, each with its own contrast and offset.
pub(crate) fn images(cfg: &ModelConfig, n: usize, seed: u64) -> Vec<f32> {
    let per = f32engine::input_len(cfg).unwrap();
    let mut s = seed;
    let mut u = move || (splitmix64(&mut s) >> 40) as f32 / (1u64 << 23) as f32 - 1.0;
    let mut out = Vec::with_capacity(n * per);
    for _ in 0..n {
        let (a, b) = (1.0 + 0.5 * u(), 0.5 * u());
        out.extend((0..per).map(|_| a * u() + b));
    }
    out
}

pub(crate) fn exact_logits(w: &Weights<'_>, x: &[f32]) -> Vec<f32> {
    let mut arena = vec![0.0; f32engine::arena_len(w.config()).unwrap()];
    let mut l = vec![0.0; w.config().num_classes as usize];
    f32engine::forward(w, x, &mut arena, &mut l).unwrap();
    l
}

pub(crate) fn int8_logits(m: &Model<'_>, x: &[f32]) -> Vec<f32> {
    let cfg = m.config();
    let mut q = vec![0i8; x.len()];
    quantize_input(m, x, &mut q);
    let mut arena = vec![0i32; arena_len(cfg).unwrap()];
    let mut l = vec![0i32; cfg.num_classes as usize];
    run(m, &q, &mut arena, &mut l).unwrap();
    let mut f = vec![0.0; l.len()];
    dequantize_logits(m, &l, &mut f);
    f
}

fn argmax(v: &[f32]) -> usize {
    let mut b = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[b] {
            b = i;
        }
    }
    b
}

/// Agreement of int8 with f32 on `test` images: (top-1 agreement, mean relative logit error
/// `|q - f|_2 / |f|_2`).
pub(crate) fn agreement(w: &Weights<'_>, file: &[u8], test: &[f32]) -> (f64, f64) {
    let m = parse(file).unwrap();
    let per = f32engine::input_len(w.config()).unwrap();
    let (mut same, mut rel, mut n) = (0usize, 0.0f64, 0usize);
    for x in test.chunks_exact(per) {
        let f = exact_logits(w, x);
        let q = int8_logits(&m, x);
        same += (argmax(&f) == argmax(&q)) as usize;
        let num: f64 = f
            .iter()
            .zip(&q)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum();
        let den: f64 = f.iter().map(|a| (*a as f64).powi(2)).sum();
        rel += (num / den.max(1e-12)).sqrt();
        n += 1;
    }
    (same as f64 / n as f64, rel / n as f64)
}

#[test]
fn reference_forward_matches_exact() {
    for cfg in [
        ModelConfig::tiny_vit_mcu_m4(),
        ModelConfig::tiny_vit_mcu_h7()
            .with_img_size(40)
            .with_in_chans(3),
    ] {
        let b = blob(&cfg, 1);
        let w = Weights::new(&cfg, &b).unwrap();
        let x = images(&cfg, 1, 5);
        let e = exact_logits(&w, &x);
        let r = calib::forward(&w, &x, &mut |_, _, _| {}).unwrap();
        let scale = e.iter().fold(0.1f32, |m, v| m.max(v.abs()));
        for (a, b) in e.iter().zip(&r) {
            assert!((a - b).abs() <= 1e-5 * scale, "{a} vs {b}");
        }
    }
}

/// Measured choice of range method and residual width (the figures in [`Options::default`]
/// come from this test's output, `cargo test -p tinyvit-core --all-features --lib
/// int8::tests::range_methods -- --nocapture`): on both MCU presets with synthetic weights,
/// an int8 residual stream (`res_max` 127) roughly doubles the logit error of the int16 one.
#[test]
fn range_methods_and_residual_width() {
    for cfg in [
        ModelConfig::tiny_vit_mcu_m4(),
        ModelConfig::tiny_vit_mcu_h7(),
    ] {
        let b = blob(&cfg, 1);
        let w = Weights::new(&cfg, &b).unwrap();
        let cal = images(&cfg, 16, 100);
        let test = images(&cfg, 64, 200);
        let ranges = Ranges::observe(&w, &cal).unwrap();
        // The network's own sensitivity: f32 logits of the input rounded to int8 and back.
        let s_in = ranges.range("input", RangeMethod::Max) / 127.0;
        let per = f32engine::input_len(&cfg).unwrap();
        let mut in_rel = 0.0;
        for x in test.chunks_exact(per) {
            let xq: Vec<f32> = x
                .iter()
                .map(|v| ((*v as f64 / s_in).round().clamp(-127.0, 127.0) * s_in) as f32)
                .collect();
            let (f, g) = (exact_logits(&w, x), exact_logits(&w, &xq));
            let num: f64 = f
                .iter()
                .zip(&g)
                .map(|(a, b)| ((a - b) as f64).powi(2))
                .sum();
            let den: f64 = f.iter().map(|a| (*a as f64).powi(2)).sum();
            in_rel += (num / den).sqrt() / (test.len() / per) as f64;
        }
        std::println!("{} px: f32 logits move by {in_rel:.4} (relative) when only the input is rounded to int8", cfg.img_size);
        let mut rel16 = 0.0;
        for (method, res_max) in [
            (RangeMethod::Max, 32767u16),
            (RangeMethod::Percentile(99.99), 32767),
            (RangeMethod::Percentile(99.9), 32767),
            (RangeMethod::Mse, 32767),
            (RangeMethod::Max, 127),
            (RangeMethod::Percentile(99.99), 127),
        ] {
            let opts = Options { method, res_max };
            let file = quantize::quantize_with(&w, &ranges, &opts).unwrap();
            let (top1, rel) = agreement(&w, &file, &test);
            std::println!(
                "{} px, widths {:?}: {method:?} res_max {res_max}: top-1 agreement {top1:.3}, \
                 relative logit error {rel:.4}, {} bytes",
                cfg.img_size,
                cfg.embed_dims,
                file.len()
            );
            if opts == Options::default() {
                rel16 = rel;
                assert!(top1 >= 0.75 && rel <= 0.12, "default options: {top1} {rel}");
            }
            if res_max == 127 && method == Options::default().method {
                assert!(rel > rel16, "int8 stream {rel} vs int16 {rel16}");
            }
        }
    }
}

#[test]
fn runs_in_exactly_its_arena_and_a_dirty_arena_does_not_matter() {
    let cfg = ModelConfig::tiny_vit_mcu_m4();
    let b = blob(&cfg, 3);
    let w = Weights::new(&cfg, &b).unwrap();
    let file = quantize(&w, &images(&cfg, 2, 1), &Options::default()).unwrap();
    let m = parse(&file).unwrap();
    let x = vec![3i8; f32engine::input_len(&cfg).unwrap()];
    let need = arena_len(&cfg).unwrap();
    let mut arena = vec![-1i32; need];
    let mut l1 = vec![0i32; 10];
    let mut l2 = vec![0i32; 10];
    run(&m, &x, &mut arena, &mut l1).unwrap();
    run(&m, &x, &mut arena, &mut l2).unwrap();
    assert_eq!(l1, l2);
    assert!(l1.iter().any(|v| *v != l1[0]));
    assert_eq!(
        run(&m, &x, &mut arena[..need - 1], &mut l2),
        Err(f32engine::EngineError::ArenaTooSmall {
            needed: need,
            got: need - 1
        })
    );
    assert!(matches!(
        run(&m, &x[1..], &mut arena, &mut l2),
        Err(f32engine::EngineError::InputLen { .. })
    ));
    assert!(matches!(
        run(&m, &x, &mut arena, &mut l2[..9]),
        Err(f32engine::EngineError::LogitsLen { .. })
    ));
    // Arena bytes of the MCU presets, against their f32 budgets (192 and 384 KiB).
    let m4 = arena_len(&ModelConfig::tiny_vit_mcu_m4()).unwrap() * 4;
    let h7 = arena_len(&ModelConfig::tiny_vit_mcu_h7()).unwrap() * 4;
    std::println!("int8 arena bytes: m4 {m4}, h7 {h7}");
    assert!(m4 <= 192 * 1024 / 2 && h7 <= 384 * 1024 / 2, "{m4} {h7}");
}

/// The bounds of the property test separate a working engine from a broken one: the same
/// network quantised from other weights (what a mis-ordered or mis-scaled file amounts to)
/// fails them by far.
#[test]
fn agreement_bounds_catch_a_wrong_model() {
    let cfg = ModelConfig::tiny_vit_mcu_m4();
    let b1 = blob(&cfg, 1);
    let b2 = blob(&cfg, 2);
    let w1 = Weights::new(&cfg, &b1).unwrap();
    let w2 = Weights::new(&cfg, &b2).unwrap();
    let cal = images(&cfg, 4, 100);
    let wrong = quantize(&w2, &cal, &Options::default()).unwrap();
    let (_, rel) = agreement(&w1, &wrong, &images(&cfg, 16, 200));
    assert!(rel > 2.0 * PROP_MAX_REL, "{rel}");
}

/// Mean relative logit error bound of the property test.
const PROP_MAX_REL: f64 = 0.3;
/// Top-1 agreement bound of the property test.
const PROP_MIN_TOP1: f64 = 0.5;

fn config() -> impl Strategy<Value = ModelConfig> {
    (
        (1u32..=2, 8u32..=40, 2u32..=12),
        (1u32..=3, 1u32..=3, 1u32..=2, 1u32..=2),
        (1u32..=3, 1u32..=4, 1u32..=5),
        (
            1u32..=3,
            1u32..=4,
            prop_oneof![Just(1u32), Just(3), Just(5)],
        ),
    )
        .prop_map(
            |((ch, img, nc), (h1, h2, h3, unit), (w1, w2, w3), (mlp, ex, k))| {
                let mut c = ModelConfig::tiny_vit_mcu_m4();
                c.in_chans = if ch == 1 { 1 } else { 3 };
                c.img_size = img;
                c.num_classes = nc;
                let hd = 16 * unit;
                c.num_heads = [1, h1, h2, h3];
                c.embed_dims = [8 * unit, h1 * hd, h2 * hd, h3 * hd];
                c.depths = [1, 1, 2, 1];
                c.window_sizes = [w1, w1, w2, w3];
                c.mlp_ratio = mlp;
                c.mbconv_expand_ratio = ex;
                c.local_conv_size = k;
                c
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 32,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x7417_0008),
        ..ProptestConfig::default()
    })]

    /// Arbitrary small networks (windows larger or smaller than the maps, padded or not,
    /// local conv 1/3/5), calibrated on 8 images and tested on 16 others: the int8 logits
    /// agree with the f32 `exact` engine's within the bounds above, and the engine runs in
    /// exactly `arena_len` words.
    #[test]
    fn int8_agrees_with_exact(cfg in config(), seed in 0u64..1000) {
        prop_assert!(cfg.validate().is_ok());
        let b = blob(&cfg, seed);
        let w = Weights::new(&cfg, &b).unwrap();
        let file = quantize(&w, &images(&cfg, 8, seed + 1), &Options::default()).unwrap();
        let (top1, rel) = agreement(&w, &file, &images(&cfg, 16, seed + 2));
        std::println!("prop: top-1 {top1:.3} rel {rel:.4} {cfg:?}");
        prop_assert!(top1 >= PROP_MIN_TOP1 && rel <= PROP_MAX_REL, "top-1 {} rel {} {:?}", top1, rel, cfg);
    }
}

/// The forward pass has no float: the code of the engine and of the primitives (comments and
/// tests aside) names no float type, on top of the `deny(clippy::float_arithmetic)` they
/// compile under.
#[test]
fn the_integer_modules_name_no_float_type() {
    for (name, src) in [
        ("engine.rs", include_str!("engine.rs")),
        ("ops.rs", include_str!("ops.rs")),
    ] {
        let code = src.split("#[cfg(test)]").next().unwrap();
        assert!(
            code.contains("#![deny(clippy::float_arithmetic)]"),
            "{name}"
        );
        for (i, line) in code.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for word in ["f32", "f64", "libm"] {
                assert!(!line.contains(word), "{name}:{}: {line}", i + 1);
            }
        }
    }
}

/// The small network of the golden vectors and the parser tests.
pub(crate) fn small() -> ModelConfig {
    let mut c = ModelConfig::tiny_vit_mcu_m4().with_img_size(16);
    c.embed_dims = [8, 16, 16, 32];
    c.num_heads = [1, 1, 1, 2];
    c.depths = [1, 1, 1, 1];
    c
}

/// The small network's int8 file: synthetic weights (seed 9), calibrated on 4 images.
pub(crate) fn small_file() -> Vec<u8> {
    let cfg = small();
    let b = blob(&cfg, 9);
    let w = Weights::new(&cfg, &b).unwrap();
    quantize(&w, &images(&cfg, 4, 1), &Options::default()).unwrap()
}

/// Golden vectors: an int8 file, an input and its logits, committed under
/// `core/tests/fixtures/int8/`. The committed file must run to the committed logits bit for
/// bit (what the firmware will replay), and today's quantiser must still write that file.
/// Re-bless explicitly with `TINYVIT_BLESS=1 cargo test -p tinyvit-core --all-features --lib
/// int8::tests::golden`, which writes the three files and then fails.
#[test]
fn golden_vectors() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/int8");
    let file = small_file();
    let m = parse(&file).unwrap();
    let x = images(&small(), 1, 7);
    let mut q = vec![0i8; x.len()];
    quantize_input(&m, &x, &mut q);
    let run_logits = |m: &Model<'_>, q: &[i8]| -> Vec<u8> {
        let mut arena = vec![0i32; arena_len(m.config()).unwrap()];
        let mut l = vec![0i32; m.config().num_classes as usize];
        run(m, q, &mut arena, &mut l).unwrap();
        l.iter().flat_map(|v| v.to_le_bytes()).collect()
    };
    let logits = run_logits(&m, &q);
    let input: Vec<u8> = q.iter().map(|v| *v as u8).collect();
    let paths = ["small.q8.tvb", "input.i8", "logits.i32"].map(|n| std::format!("{dir}/{n}"));
    if std::env::var_os("TINYVIT_BLESS").is_some() {
        std::fs::create_dir_all(dir).unwrap();
        for (p, bytes) in paths.iter().zip([&file, &input, &logits]) {
            std::fs::write(p, bytes).unwrap();
        }
        panic!("blessed {dir}; run again without TINYVIT_BLESS");
    }
    let read = |p: &str| std::fs::read(p).unwrap_or_else(|e| panic!("{p}: {e}"));
    let (g_file, g_input, g_logits) = (read(&paths[0]), read(&paths[1]), read(&paths[2]));
    let gm = parse(&g_file).unwrap();
    let gq: Vec<i8> = g_input.iter().map(|v| *v as i8).collect();
    assert_eq!(run_logits(&gm, &gq), g_logits, "the engine's bits changed");
    assert_eq!(file, g_file, "the quantiser's output changed");
    assert_eq!(input, g_input, "input quantisation changed");
}

/// Where the int8 error comes from: the f32 reference with only one group of points rounded to
/// its grid (`i8`, or `i16` for the stream), against the int8 engine itself. With every point
/// rounded, the f32 reference must land near the engine: the integer approximations (exp,
/// GELU, LayerNorm) add little, and a mis-scaled engine would not match. Prints the table in
/// the report (`... int8::tests::fake_quantisation -- --nocapture`).
#[test]
fn fake_quantisation_by_point_explains_the_engine_error() {
    let cfg = ModelConfig::tiny_vit_mcu_m4();
    let b = blob(&cfg, 1);
    let w = Weights::new(&cfg, &b).unwrap();
    let cal = images(&cfg, 16, 100);
    let test = images(&cfg, 32, 200);
    let opts = Options::default();
    let ranges = Ranges::observe(&w, &cal).unwrap();
    let per = f32engine::input_len(&cfg).unwrap();
    let rel = |a: &[f32], b: &[f32]| -> f64 {
        let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
        let den: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum();
        (num / den).sqrt()
    };
    let groups = [
        "input",
        "seq.1.act",
        "stream.",
        ".in",
        ".act1",
        ".act2",
        "attn.norm",
        "attn.q",
        "attn.k",
        "attn.v",
        "attn.out",
        "mlp.norm",
        "mlp.act",
        ".pre",
        "norm_head",
        "",
    ];
    let mut all = 0.0;
    for g in groups {
        let mut err = 0.0;
        for x in test.chunks_exact(per) {
            let f = exact_logits(&w, x);
            let fq = calib::forward(&w, x, &mut |key: &str, c: usize, v: &mut [f32]| {
                let hit = if g == "stream." || g == "input" {
                    key.starts_with(g)
                } else {
                    key.ends_with(g) && !key.starts_with("stream.") && key != "input"
                };
                if key == "logits" || !(hit || g.is_empty()) {
                    return;
                }
                // The engine's grids: the stream i16 at its maximum, every other point i8.
                let stream = key.starts_with("stream.");
                let q = if stream { opts.res_max as f64 } else { 127.0 };
                let method = if stream {
                    RangeMethod::Max
                } else {
                    opts.method
                };
                let scales = vec![ranges.range(key, method) / q; c];
                for (i, e) in v.iter_mut().enumerate() {
                    let s = scales[i % c];
                    *e = ((*e as f64 / s).round().clamp(-q, q) * s) as f32;
                }
            })
            .unwrap();
            err += rel(&f, &fq) / (test.len() / per) as f64;
        }
        std::println!(
            "fake-quantised {:>10}: relative logit error {err:.4}",
            if g.is_empty() { "all" } else { g }
        );
        if g.is_empty() {
            all = err;
        }
    }
    let file = quantize::quantize_with(&w, &ranges, &opts).unwrap();
    let (_, engine) = agreement(&w, &file, &test);
    std::println!("int8 engine: relative logit error {engine:.4}");
    assert!(
        engine <= 1.5 * all + 0.01 && all <= 1.5 * engine + 0.01,
        "{engine} vs {all}"
    );
}

#[test]
fn requant_fast_path_is_the_reference() {
    use super::ops::{requant, requant_reference, Multiplier, MAX_SHIFT, MIN_SHIFT};
    let mut s = 0x5eed_u64;
    let edges = [i32::MIN, i32::MIN + 1, -1, 0, 1, i32::MAX - 1, i32::MAX];
    let mut checked = 0u64;
    for shift in MIN_SHIFT..=MAX_SHIFT {
        for &m in &edges {
            for &x in &edges {
                let k = Multiplier { m, shift };
                assert_eq!(requant(x, k), requant_reference(x, k), "x={x} {k:?}");
                checked += 1;
            }
        }
        for _ in 0..20_000 {
            let x = splitmix64(&mut s) as i32 >> (splitmix64(&mut s) % 32);
            let m = splitmix64(&mut s) as i32 >> (splitmix64(&mut s) % 32);
            let k = Multiplier { m, shift };
            assert_eq!(requant(x, k), requant_reference(x, k), "x={x} {k:?}");
            checked += 1;
        }
    }
    // Shifts outside `1..=62` (no valid file has one) are clamped, by both forms alike.
    for shift in [0, 63, 64, 95, 255, u32::MAX] {
        for &m in &edges {
            for &x in &edges {
                let k = Multiplier { m, shift };
                assert_eq!(requant(x, k), requant_reference(x, k), "x={x} {k:?}");
            }
        }
    }
    assert!(checked > 1_000_000);
}

/// The int8 presets in their boards' budgets: int8 data plus a code reserve within the flash
/// budget, the int8 arena plus the firmware's other statics and stack within the RAM budget,
/// and three to four times the f32 preset's parameters. (The firmware's ELF is checked against
/// the same budgets by `cargo xtask replay`.)
/// Every preset's int8 data is at most 0.30x its folded f32 weights (issue 13's bound): `i8`
/// weights plus `i32` biases and 5-byte multipliers per output channel.
#[test]
fn int8_data_is_at_most_0_30_of_f32() {
    for name in crate::config::PRESET_NAMES {
        let cfg = ModelConfig::preset(name).unwrap();
        let int8 = super::layout::data_len(&cfg) as f64;
        let f32_bytes = 4.0 * crate::params::folded_blob_len(&cfg) as f64;
        assert!(
            int8 <= 0.30 * f32_bytes,
            "{name}: int8 {int8} B is {:.4}x the f32 {f32_bytes} B",
            int8 / f32_bytes
        );
    }
}

#[test]
fn int8_presets_fit_their_budgets() {
    const K: usize = 1024;
    // Firmware code and constants besides the model (about 171 KB measured), rounded up.
    const CODE: usize = 176 * K;
    for (q8, f32_preset, flash, ram) in [
        ("tiny_vit_mcu_m4_q8", "tiny_vit_mcu_m4", 800 * K, 192 * K),
        ("tiny_vit_mcu_h7_q8", "tiny_vit_mcu_h7", 1536 * K, 384 * K),
    ] {
        let cfg = ModelConfig::preset(q8).unwrap();
        let data = super::layout::data_len(&cfg);
        let arena = arena_len(&cfg).unwrap() * 4;
        assert!(data + CODE <= flash, "{q8}: {data} B of int8 data");
        assert!(arena + 64 * K <= ram, "{q8}: {arena} B of arena");
        let ratio = crate::params::folded_count(&cfg) as f64
            / crate::params::folded_count(&ModelConfig::preset(f32_preset).unwrap()) as f64;
        assert!(
            (3.0..=4.0).contains(&ratio),
            "{q8}: {ratio:.2}x {f32_preset}"
        );
    }
}
