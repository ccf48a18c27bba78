//! Known-answer vectors of the augmentation: seed derivation, epoch order, seed -> parameters,
//! seed + image -> hash of the rendered view, pair mix parameters and evaluation views.
//!
//! `tests/fixtures/aug/golden.txt` holds them; `cargo run -p tinyvit-tests --example bless_aug`
//! rewrites it (only after a deliberate change, with an `AUG_VERSION` bump) and
//! `tests/tests/aug_golden.rs` checks the code against it.
//!
//! # Format
//! Text, one vector a line, fields separated by one space, `#` lines are comments:
//! ```text
//! version AUG_VERSION
//! seed RUN_SEED EPOCH INDEX SAMPLE_SEED
//! perm RUN_SEED EPOCH N POSITION INDEX
//! view PRESET SIZE IMAGE SEED FNV64_HEX PARAMS_JSON
//! mix PAIR_SEED W H PARAMS_JSON
//! eval IMAGE SIZE CROP_PCT FNV64_HEX
//! ```
//! `IMAGE` is `pattern:WxHxC` ([`tinyvit_core::aug::test_pattern`], so a device can rebuild
//! it) or `photo:NAME` (a source of `tests/fixtures/aug/sources.bin`, see `cases.txt`).
//! `FNV64_HEX` is [`tinyvit_core::aug::fnv1a64`] of the u8 HWC view, 16 lower-case hex digits.

use std::path::{Path, PathBuf};

use tinyvit_core::aug::{
    self, decode, epoch_permutation, eval_scratch_len, eval_transform, fnv1a64, mix_params,
    pair_seed, preset, replay, sample_seed, scratch_len, test_pattern, ImageMut, ImageRef,
    Interpolation, AUG_VERSION,
};

/// The fixture folder of the augmentation tests.
pub fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/aug")
}

/// An 8-bit source image.
pub struct Image {
    pub width: u32,
    pub height: u32,
    pub channels: u32,
    pub data: Vec<u8>,
}

/// Loads `photo:NAME` from the PIL fixtures or builds `pattern:WxHxC`.
pub fn load_image(spec: &str) -> Image {
    if let Some(dims) = spec.strip_prefix("pattern:") {
        let v: Vec<u32> = dims
            .split('x')
            .map(|s| s.parse().expect("pattern dims"))
            .collect();
        let (w, h, c) = (v[0], v[1], v[2]);
        let mut data = vec![0u8; (w * h * c) as usize];
        test_pattern(w, h, c, &mut data).expect("pattern");
        return Image {
            width: w,
            height: h,
            channels: c,
            data,
        };
    }
    let name = spec
        .strip_prefix("photo:")
        .expect("image spec is pattern: or photo:");
    let dir = fixture_dir();
    let cases = std::fs::read_to_string(dir.join("cases.txt")).expect("cases.txt");
    let blob = std::fs::read(dir.join("sources.bin")).expect("sources.bin");
    for line in cases.lines() {
        let t: Vec<&str> = line.split_whitespace().collect();
        if t.first() == Some(&"source") && t[1] == name {
            let (w, h, c): (u32, u32, u32) = (
                t[2].parse().unwrap(),
                t[3].parse().unwrap(),
                t[4].parse().unwrap(),
            );
            let off: usize = t[5].parse().unwrap();
            return Image {
                width: w,
                height: h,
                channels: c,
                data: blob[off..off + (w * h * c) as usize].to_vec(),
            };
        }
    }
    panic!("no source {name} in cases.txt");
}

/// Renders the training view of `seed` under `preset_name` with the output side `size`.
pub fn render_view(
    preset_name: &str,
    size: u32,
    img: &Image,
    seed: u32,
) -> (Vec<u8>, aug::AugParams) {
    let mut cfg = preset(preset_name).expect("preset");
    cfg.size = size;
    let mut out = vec![0u8; (size * size * img.channels) as usize];
    let mut scratch = vec![0u8; scratch_len(&cfg, img.width, img.height, img.channels).unwrap()];
    let p = replay(
        &cfg,
        seed,
        ImageRef::new(img.width, img.height, img.channels, &img.data).unwrap(),
        ImageMut::new(size, size, img.channels, &mut out).unwrap(),
        &mut scratch,
    )
    .expect("replay");
    (out, p)
}

const VIEW_IMAGES: [&str; 5] = [
    "pattern:61x47x3",
    "pattern:20x24x1",
    "pattern:1x1x3",
    "pattern:300x200x3",
    "photo:astronaut",
];
const VIEW_PRESETS: [(&str, u32); 3] = [("in22k-distill", 32), ("in1k-scratch", 48), ("light", 32)];

/// Every known-answer line, in file order (without the header comment).
pub fn golden_lines() -> Vec<String> {
    let mut out = vec![format!("version {AUG_VERSION}")];
    for (run, epoch, index) in [
        (0u64, 0u32, 0u64),
        (1, 0, 0),
        (1, 1, 0),
        (1, 0, 1),
        (u64::MAX, 89, 14_197_121),
    ] {
        out.push(format!(
            "seed {run} {epoch} {index} {}",
            sample_seed(run, epoch, index)
        ));
    }
    for (run, epoch, n) in [
        (7u64, 0u32, 1u64),
        (7, 0, 10),
        (7, 1, 10),
        (7, 0, 1_281_167),
    ] {
        let mut positions = vec![0u64, 1, n / 2, n - 1];
        positions.retain(|&p| p < n);
        positions.sort_unstable();
        positions.dedup();
        for pos in positions {
            out.push(format!(
                "perm {run} {epoch} {n} {pos} {}",
                epoch_permutation(run, epoch, n, pos).unwrap()
            ));
        }
    }
    for (name, size) in VIEW_PRESETS {
        for spec in VIEW_IMAGES {
            let img = load_image(spec);
            for seed in [0u32, 1, 2, 3, 0xdead_beef, u32::MAX] {
                let (view, p) = render_view(name, size, &img, seed);
                // The decoded parameters must equal what apply used.
                let mut cfg = preset(name).unwrap();
                cfg.size = size;
                assert_eq!(p, decode(&cfg, seed, img.width, img.height).unwrap());
                out.push(format!(
                    "view {name} {size} {spec} {seed} {:016x} {}",
                    fnv1a64(&view),
                    serde_json::to_string(&p).unwrap()
                ));
            }
        }
    }
    let mix = preset("in1k-scratch").unwrap().mix.unwrap();
    for (a, b) in [(0u32, 1u32), (5, 9), (123_456, 654_321), (u32::MAX, 0)] {
        let s = pair_seed(a, b);
        for (w, h) in [(224u32, 224u32), (7, 5)] {
            out.push(format!(
                "mix {s} {w} {h} {}",
                serde_json::to_string(&mix_params(&mix, s, w, h).unwrap()).unwrap()
            ));
        }
    }
    for spec in ["pattern:61x47x3", "pattern:20x24x1", "photo:coffee"] {
        let img = load_image(spec);
        for (size, pct) in [(32u32, 0.875f32), (16, 1.0)] {
            let mut v = vec![0u8; (size * size * img.channels) as usize];
            let mut scratch = vec![
                0u8;
                eval_scratch_len(img.width, img.height, size, pct, img.channels)
                    .unwrap()
            ];
            eval_transform(
                ImageRef::new(img.width, img.height, img.channels, &img.data).unwrap(),
                ImageMut::new(size, size, img.channels, &mut v).unwrap(),
                pct,
                Interpolation::Bicubic,
                &mut scratch,
            )
            .unwrap();
            out.push(format!("eval {spec} {size} {pct} {:016x}", fnv1a64(&v)));
        }
    }
    out
}

/// The golden file's header comment.
pub const HEADER: &str = "# Augmentation known-answer vectors; format: tests/src/aug_golden.rs.\n\
# Written by `cargo run -p tinyvit-tests --example bless_aug`; never edit by hand.\n";
