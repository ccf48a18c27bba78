//! Parity with the reference implementation: logits of timm's TinyVit on the same synthetic
//! weights and inputs (fixtures written by `tests/fixtures/parity/gen_parity.py`) must match
//! ours within `1e-4 * max|logit|`.

use std::time::Instant;

use tinyvit_core::engine::{arena_len, exact, Weights};
use tinyvit_tests::parity::{cases, Case};

fn reference(case: &Case) -> Vec<f32> {
    let path = format!(
        "{}/fixtures/parity/{}.json",
        env!("CARGO_MANIFEST_DIR"),
        case.name
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["case"], case.name);
    v["logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn run_exact(case: &Case) -> Vec<f32> {
    let blob = case.folded();
    let w = Weights::new(&case.cfg, &blob).unwrap();
    let mut arena = vec![0.0; arena_len(&case.cfg).unwrap()];
    let mut logits = vec![0.0; case.cfg.num_classes as usize];
    exact::forward(&w, &case.input(), &mut arena, &mut logits).unwrap();
    logits
}

/// Asserts max abs difference <= `1e-4 * max|reference|` and prints both.
fn check(case: &Case, engine: &str, ours: &[f32]) {
    let want = reference(case);
    assert_eq!(ours.len(), want.len(), "{}", case.name);
    let scale = want
        .iter()
        .fold(0.0f32, |m, v| if v.abs() > m { v.abs() } else { m });
    let diff = ours.iter().zip(&want).fold(0.0f32, |m, (a, b)| {
        if (a - b).abs() > m {
            (a - b).abs()
        } else {
            m
        }
    });
    println!(
        "parity {} [{engine}]: max|logit| {scale:.4}, max abs diff {diff:.3e} ({:.3e} of max)",
        case.name,
        diff / scale
    );
    assert!(
        diff <= 1e-4 * scale,
        "{}: {diff} > 1e-4 * {scale}",
        case.name
    );
}

fn case(name: &str) -> Case {
    cases().into_iter().find(|c| c.name == name).unwrap()
}

#[test]
fn exact_matches_timm_tiny_vit_5m_224() {
    let c = case("tiny_vit_5m_224");
    let t = Instant::now();
    let l = run_exact(&c);
    println!("exact 5m_224: {:?}", t.elapsed());
    check(&c, "exact", &l);
}

#[test]
fn exact_matches_timm_with_padded_windows() {
    let c = case("padded_5m_160");
    check(&c, "exact", &run_exact(&c));
}

#[test]
fn exact_matches_timm_mcu_h7() {
    let c = case("tiny_vit_mcu_h7");
    check(&c, "exact", &run_exact(&c));
}

#[test]
fn exact_matches_timm_mcu_m4() {
    let c = case("tiny_vit_mcu_m4");
    check(&c, "exact", &run_exact(&c));
}

#[test]
fn exact_matches_timm_tiny_vit_21m_384() {
    let c = case("tiny_vit_21m_384");
    let t = Instant::now();
    let l = run_exact(&c);
    println!("exact 21m_384: {:?}", t.elapsed());
    check(&c, "exact", &l);
}
