//! The device's path through a vector file against the host's: records whose expected values
//! the host computed with `vectors::replay_alloc` are written, parsed back in place (as the
//! firmware does from flash), replayed into buffers sized by `BufferSizes::of` (as the
//! firmware's build script sizes its statics) and must match. The format's own tests (round
//! trip, truncation, corruption) live with the format in `tinyvit_core::vectors`.

use tinyvit_core::aug;
use tinyvit_core::config::ModelConfig;
use tinyvit_core::engine::{self, fold::fold_state_dict, Weights};
use tinyvit_core::params::synthetic_state_dict;
use tinyvit_core::vectors::{self, BufferSizes, Buffers, Exact, Kind, NoMeter, Outcome, Record};

#[test]
fn device_path_matches_the_host_path() {
    let cfg = ModelConfig::preset("tiny_vit_mcu_m4").unwrap();
    let sd = synthetic_state_dict(&cfg, 5);
    let blob = fold_state_dict(&cfg, |n| {
        sd.iter().find(|t| t.name == n).map(|t| &t.values[..])
    })
    .unwrap();
    let weights = Weights::new(&cfg, &blob).unwrap();
    let mut arena = vec![0.0f32; engine::arena_len(&cfg).unwrap()];
    let mut logits = vec![0.0f32; cfg.num_classes as usize];
    let mut model = Exact::new(&weights, &mut arena, &mut logits).unwrap();
    let mut acfg = aug::preset("light").unwrap();
    acfg.size = cfg.img_size;
    let s = cfg.img_size;
    let grey: Vec<u8> = (0..s * s).map(|i| (i * 37 % 251) as u8).collect();
    let mut records = Vec::new();
    for (kind, seed, (w, h), pattern) in [
        (Kind::View, 3, (33, 29), true),
        (Kind::Infer, 4, (28, 28), true),
        (Kind::EvalView, 0, (30, 26), true),
        (Kind::Eval, 0, (s, s), false),
    ] {
        let mut r = Record {
            kind,
            seed,
            width: w,
            height: h,
            channels: 1,
            cfg: acfg,
            pixels: if pattern { Vec::new() } else { grey.clone() },
            pattern,
            class: u32::MAX,
            image_hash: 0,
            logits_hash: 0,
        };
        let o = vectors::replay_alloc(&r.input(), Some(&mut model)).unwrap();
        r.image_hash = o.image_hash.unwrap();
        if kind != Kind::View {
            r.class = o.class.unwrap();
            r.logits_hash = o.logits_hash.unwrap();
        }
        records.push(r);
    }
    let bytes = vectors::write(&records).unwrap();
    let file = vectors::Vectors::parse(&bytes).unwrap();
    let sizes = BufferSizes::of(&file).unwrap();
    let (mut view, mut scratch, mut source) = (
        vec![0u8; sizes.view],
        vec![0u8; sizes.scratch],
        vec![0u8; sizes.source],
    );
    let mut input = vec![0.0f32; engine::input_len(&cfg).unwrap()];
    let mut matched = 0;
    for v in &file {
        let v = v.unwrap();
        let mut b = Buffers {
            view: &mut view,
            scratch: &mut scratch,
            source: &mut source,
            input: &mut input,
        };
        let mut o = Outcome::default();
        vectors::replay(
            &v.input().unwrap(),
            Some(&mut model),
            &mut b,
            &mut NoMeter,
            &mut o,
        )
        .unwrap();
        assert!(v.matches(&o), "{:?}: {o:?}", v.kind);
        // One flipped bit of the stored logits hash is a mismatch.
        let mut wrong = v;
        wrong.logits_hash ^= 1;
        assert_eq!(wrong.matches(&o), v.kind == Kind::View);
        matched += 1;
    }
    assert_eq!(matched, 4);
}
