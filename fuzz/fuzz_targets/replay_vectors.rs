//! Replay vector files, then what the firmware does with each vector: decode its augmentation
//! config and replay the view (or the evaluation transform) into buffers sized by the core.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tinyvit_core::aug::{self, AugConfig, ImageMut, ImageRef};
use tinyvit_core::vectors::{self, Kind, Vectors};

/// Largest source and view replayed per vector (bytes), so one execution stays fast.
const MAX_IMAGE: usize = 1 << 16;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = Vectors::parse(data) else {
        return;
    };
    for v in file.iter().take(8) {
        let Ok(v) = v else {
            return;
        };
        let Ok(cfg) = postcard::from_bytes::<AugConfig>(v.cfg) else {
            continue;
        };
        let Ok(n) = aug::image_len(v.width, v.height, v.channels) else {
            continue;
        };
        let view_len = aug::image_len(cfg.size, cfg.size, v.channels).unwrap_or(usize::MAX);
        if n > MAX_IMAGE || view_len > MAX_IMAGE {
            continue;
        }
        let mut source = vec![0u8; n];
        let pixels: &[u8] = if v.pattern {
            if aug::test_pattern(v.width, v.height, v.channels, &mut source).is_err() {
                continue;
            }
            &source
        } else {
            v.pixels
        };
        let Ok(src) = ImageRef::new(v.width, v.height, v.channels, pixels) else {
            continue;
        };
        let mut view = vec![0u8; view_len];
        let Ok(out) = ImageMut::new(cfg.size, cfg.size, v.channels, &mut view) else {
            continue;
        };
        match v.kind {
            Kind::View | Kind::Infer => {
                let Ok(len) = aug::scratch_len(&cfg, v.width, v.height, v.channels) else {
                    continue;
                };
                if len <= 1 << 24 {
                    let _ = aug::replay(&cfg, v.seed, src, out, &mut vec![0u8; len]);
                }
            }
            Kind::EvalView => {
                let crop = vectors::EVAL_CROP_PCT;
                let Ok(len) = aug::eval_scratch_len(v.width, v.height, cfg.size, crop, v.channels)
                else {
                    continue;
                };
                if len <= 1 << 24 {
                    let _ =
                        aug::eval_transform(src, out, crop, cfg.interpolation, &mut vec![0u8; len]);
                }
            }
            Kind::Eval => {}
        }
    }
});
