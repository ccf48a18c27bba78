//! Times every kernel of the `fast` engine this CPU runs, one image on one core, against the
//! `scalar` kernel (plain Rust, the baseline), with no libtorch: it runs wherever the core
//! builds, including under `qemu-aarch64`, where `cargo xtask bench` runs it to show what
//! `matrixmultiply`'s NEON kernel is worth against the scalar one.
//!
//! ```text
//! cargo run --release -p tinyvit-core --features fast --example fast_kernels -- [PRESET] [RUNS]
//! ```
//!
//! PRESET defaults to `tiny_vit_5m_224`, RUNS (median of, after one warm-up) to 5. Under an
//! emulator the times are emulated times: only their ratio means anything, and only roughly
//! (the emulator translates vector and scalar instructions at different costs than hardware).

use std::time::Instant;

use tinyvit_core::config::ModelConfig;
use tinyvit_core::engine::fast::{FastModel, Kernel};
use tinyvit_core::engine::fold::fold_state_dict;
use tinyvit_core::engine::{input_len, Weights};
use tinyvit_core::params::{splitmix64, synthetic_state_dict};

fn main() {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "tiny_vit_5m_224".into());
    let runs: usize = match args.next().map(|r| r.parse()) {
        None => 5,
        Some(Ok(r)) if r > 0 => r,
        Some(_) => fail("RUNS must be a positive integer"),
    };
    let Some(cfg) = ModelConfig::preset(&name) else {
        fail(&format!("unknown preset `{name}`"))
    };
    let sd = synthetic_state_dict(&cfg, 42);
    let blob = fold_state_dict(&cfg, |n| {
        sd.iter().find(|t| t.name == n).map(|t| &t.values[..])
    })
    .unwrap_or_else(|e| fail(&format!("folding the synthetic weights: {e:?}")));
    let w = Weights::new(&cfg, &blob).unwrap_or_else(|e| fail(&format!("weights: {e:?}")));
    let n = input_len(&cfg).unwrap_or_else(|e| fail(&format!("input size: {e:?}")));
    let mut s = 7u64;
    let x: Vec<f32> = (0..n)
        .map(|_| (splitmix64(&mut s) >> 40) as f32 / (1u64 << 22) as f32 - 2.0)
        .collect();
    let nc = cfg.num_classes as usize;

    let mut results = Vec::new();
    for kernel in Kernel::available() {
        let model = FastModel::with_kernel(&w, kernel)
            .unwrap_or_else(|e| fail(&format!("{}: {e:?}", kernel.name())));
        let mut logits = vec![0.0f32; nc];
        let mut forward = || {
            model
                .forward(&x, &mut logits)
                .unwrap_or_else(|e| fail(&format!("{}: {e:?}", kernel.name())))
        };
        forward();
        let mut t: Vec<f64> = (0..runs)
            .map(|_| {
                let s = Instant::now();
                forward();
                s.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        t.sort_by(f64::total_cmp);
        results.push((kernel, t[t.len() / 2], logits));
    }
    let Some((_, scalar_ms, scalar_l)) = results.iter().find(|r| r.0 == Kernel::Scalar) else {
        fail("the scalar kernel did not run")
    };
    println!(
        "{name}, batch 1, one thread, {} (median of {runs}):",
        std::env::consts::ARCH
    );
    for (kernel, ms, logits) in &results {
        let diff = logits
            .iter()
            .zip(scalar_l)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        println!(
            "  fast, {:<8}: {ms:9.2} ms   {:.2}x the scalar kernel's time   |logits - scalar| {diff:.2e}",
            kernel.name(),
            ms / scalar_ms
        );
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("fast_kernels: {msg}");
    std::process::exit(2)
}
