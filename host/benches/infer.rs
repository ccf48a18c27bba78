//! Single-thread latency of `tiny_vit_5m_224` at batch 1: the core `exact` and `fast` engines
//! against libtorch on the CPU (one intra-op thread, eval mode, no autograd), all three on the
//! same synthetic weights and input, timed in one run and printed with their ratios.
//!
//! `cargo xtask bench` runs it (or `cargo bench -p tinyvit-host --bench infer`).
//! Each engine: one warm-up run, then the median of `RUNS` timed runs (fewer for `exact` and
//! the scalar kernel); libtorch and every other kernel of `fast` alternate run by run.
//! Kernels: `avx512` and `avx2` (ours), `portable` (`matrixmultiply`, what every CPU without
//! AVX2 + FMA runs; on this CPU with its FMA kernel) and `scalar` (the plain-Rust tile that was
//! the portable kernel before `matrixmultiply`).
//!
//! Recorded (2-vCPU Xeon @ 2.5 GHz VM with AVX-512, two other agents' builds running, load
//! average 4-5; libtorch 2.11.0 uses MKL's AVX-512 SGEMM), three runs, fast / libtorch:
//! avx512 kernel 0.54 (46.8 / 86.0 ms), 0.54 (76.2 / 141.5), 0.59 (71.7 / 121.3); avx2 kernel
//! 0.91, 0.87, 0.91; portable 3.8-3.9; exact 21-29x. Logits: |fast - exact| 1.7e-6 (avx512,
//! avx2) and 2.2e-6 (portable), |libtorch - exact| 1.9e-6. Two more runs on a quieter machine
//! (load under 1): avx512 0.56 (53.6 / 95.1 ms) and 0.70 (44.4 / 63.4, inside `cargo xtask
//! bench`); avx2 0.81 and 1.05; portable 3.25 and 4.59; exact 20-26x. Before the packed kernels
//! (on matrixmultiply) fast / libtorch was 0.98-1.18.

use std::time::Instant;

use tinyvit_core::config::ModelConfig;
use tinyvit_core::engine::fast::{FastModel, Kernel};
use tinyvit_core::engine::{arena_len, exact, input_len, Weights};
use tinyvit_core::params::{splitmix64, synthetic_state_dict, TensorKind};
use tinyvit_host::import::{self, StateDict, Tensor};
use tinyvit_host::infer::tch_model;

const RUNS: usize = 21;
const EXACT_RUNS: usize = 5;

/// Median wall time of `runs` calls of `f`, after one warm-up call, in milliseconds.
fn median_ms(runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..runs)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; filters other than ours skip this benchmark.
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if !filter.is_empty() && !filter.iter().any(|f| "infer".contains(f.as_str())) {
        return;
    }
    tch::set_num_threads(1);
    tch::set_num_interop_threads(1);

    let cfg = ModelConfig::tiny_vit_5m_224();
    let sd: StateDict = synthetic_state_dict(&cfg, 42)
        .into_iter()
        .filter(|t| t.kind != TensorKind::Counter)
        .map(|t| {
            (
                t.name,
                Tensor {
                    shape: t.shape,
                    values: t.values,
                },
            )
        })
        .collect();
    let blob = import::fold(&sd, &cfg).expect("fold");
    let w = Weights::new(&cfg, &blob).expect("weights");
    let n = input_len(&cfg).expect("input");
    let mut s = 7u64;
    let x: Vec<f32> = (0..n)
        .map(|_| (splitmix64(&mut s) >> 40) as f32 / (1u64 << 22) as f32 - 2.0)
        .collect();
    let nc = cfg.num_classes as usize;

    let mut arena = vec![0.0f32; arena_len(&cfg).expect("arena")];
    let mut l_exact = vec![0.0f32; nc];
    let exact_ms = median_ms(EXACT_RUNS, || {
        exact::forward(&w, &x, &mut arena, &mut l_exact).expect("exact");
    });

    // Every fast kernel this CPU runs; they alternate with libtorch run by run, so load from
    // other processes hits them alike. The scalar kernel is timed like `exact`.
    let kernels = Kernel::available();
    let models: Vec<FastModel> = kernels
        .iter()
        .map(|k| FastModel::with_kernel(&w, *k).expect("fast"))
        .collect();
    let mut l_fast = vec![vec![0.0f32; nc]; kernels.len()];
    let (_vs, tmodel) = tch_model(&sd, &cfg).expect("tch model");
    let xt = tch::Tensor::from_slice(&x).reshape([1, 3, 224, 224]);
    let mut l_tch = vec![0.0f32; nc];
    let mut fast_t = vec![Vec::new(); kernels.len()];
    let mut tch_t = Vec::new();
    for i in 0..=RUNS {
        let s = Instant::now();
        let y = tch::no_grad(|| tmodel.forward(&xt, tinyvit_host::model::Mode::EVAL));
        l_tch = Vec::<f32>::try_from(y.flatten(0, -1)).expect("logits");
        let t = s.elapsed().as_secs_f64() * 1e3;
        if i > 0 {
            tch_t.push(t);
        }
        for (j, m) in models.iter().enumerate() {
            if kernels[j] == Kernel::Scalar && i > EXACT_RUNS {
                continue;
            }
            let s = Instant::now();
            m.forward(&x, &mut l_fast[j]).expect("fast");
            if i > 0 {
                fast_t[j].push(s.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let tch_ms = median(&mut tch_t);

    let max_abs = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
    };
    println!(
        "tiny_vit_5m_224, batch 1, one thread (median of {RUNS}; exact, scalar {EXACT_RUNS}):"
    );
    println!(
        "  {:<22}: {tch_ms:8.2} ms",
        format!("libtorch {} CPU", tinyvit_host::LIBTORCH_VERSION)
    );
    let mut ms_of = Vec::new();
    for (j, k) in kernels.iter().enumerate() {
        let ms = median(&mut fast_t[j]);
        ms_of.push((*k, ms));
        println!(
            "  {:<22}: {ms:8.2} ms   {:.2}x libtorch time   |fast-exact| {:.2e}",
            format!("core fast, {}", k.name()),
            ms / tch_ms,
            max_abs(&l_fast[j], &l_exact)
        );
    }
    println!(
        "  {:<22}: {exact_ms:8.2} ms   {:.2}x libtorch time",
        "core exact",
        exact_ms / tch_ms
    );
    let ms = |k: Kernel| ms_of.iter().find(|m| m.0 == k).map(|m| m.1);
    if let (Some(p), Some(sc)) = (ms(Kernel::Portable), ms(Kernel::Scalar)) {
        println!(
            "  portable kernel, matrixmultiply (now) / scalar tile (before): {:.2}x the time",
            p / sc
        );
    }
    println!(
        "  agreement: |tch-exact| {:.2e} (max abs logit diff)",
        max_abs(&l_tch, &l_exact)
    );
}
