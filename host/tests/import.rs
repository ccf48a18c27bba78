//! Import end to end: the tiny parity checkpoint committed as an official `.pth` and as
//! timm-named `.safetensors` (both written by `tests/fixtures/parity/gen_parity.py`) must load
//! to the same folded weights and reproduce timm's logits on every engine; `.tvb` export
//! round-trips; attention bias resizing matches timm's antialiased bicubic.

use std::path::PathBuf;

use tinyvit_core::params::splitmix64;
use tinyvit_host::import;
use tinyvit_host::infer::{run_engine, tch_logits, Engine};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/parity")
        .join(name)
}

fn json(name: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name)).unwrap()).unwrap()
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// The input of parity case `tiny_16` (seed 6), as `tinyvit_tests::parity::Case::input`.
fn tiny_input(n: usize) -> Vec<f32> {
    let mut s = 6 + 1000u64;
    (0..n)
        .map(|_| (splitmix64(&mut s) >> 40) as f32 * (4.0 / (1u64 << 24) as f32) - 2.0)
        .collect()
}

fn assert_close(ours: &[f32], want: &[f32], what: &str) {
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let diff = ours
        .iter()
        .zip(want)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    println!("{what}: max abs diff {diff:.3e} (max|logit| {scale:.3})");
    assert!(diff <= 1e-4 * scale, "{what}: {diff}");
}

#[test]
fn pth_and_timm_safetensors_reproduce_timm_logits() {
    let want = floats(&json("tiny_16.json")["logits"]);
    let pth = import::load(&fixture("tiny_16.pth"), None, None, Some(16)).unwrap();
    let st = import::load(&fixture("tiny_16_timm.safetensors"), None, None, Some(16)).unwrap();
    assert_eq!(pth.config, st.config);
    assert_eq!(pth.blob, st.blob, "both files hold the same weights");
    let cfg = pth.config;
    assert_eq!((cfg.in_chans, cfg.img_size, cfg.num_classes), (1, 16, 10));
    let x = tiny_input(16 * 16);
    for engine in [Engine::Exact, Engine::Fast] {
        let l = run_engine(engine, &cfg, &pth.blob, &x, 1).unwrap();
        assert_close(&l, &want, &format!("{engine:?} from .pth"));
    }
    let l = tch_logits(pth.state_dict.as_ref().unwrap(), &cfg, &x, 1).unwrap();
    assert_close(&l, &want, "tch from .pth");
}

#[test]
fn tvb_export_round_trips() {
    let m = import::load(&fixture("tiny_16.pth"), None, None, Some(16)).unwrap();
    let dir = std::env::temp_dir().join(format!("tinyvit-import-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("tiny.tvb");
    import::export_tvb(&m, &out).unwrap();
    let back = import::load(&out, None, Some(10), None).unwrap();
    assert_eq!(back.config, m.config);
    assert_eq!(back.blob, m.blob);
    assert!(import::load(&out, None, Some(11), None).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn attention_bias_resize_matches_timm() {
    for case in json("bias_resize.json").as_array().unwrap() {
        let heads = case["heads"].as_u64().unwrap() as usize;
        let from = case["from"].as_u64().unwrap() as usize;
        let to = case["to"].as_u64().unwrap() as usize;
        let table: Vec<f32> = (0..heads)
            .flat_map(|h| {
                (0..from * from).map(move |i| (0.37 * i as f64 + 1.3 * h as f64).sin() as f32)
            })
            .collect();
        let ours = import::resize_attention_biases(&table, heads, from, to);
        let want = floats(&case["resized"]);
        let diff = ours
            .iter()
            .zip(&want)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        println!("resize {from}->{to} x{heads}: max abs diff {diff:.3e}");
        assert!(diff < 1e-5, "{from}->{to}: {diff}");
    }
}
