//! Config validation and every size derived from a config: a config `validate` accepts has
//! exact parameter counts, and its MACs, exact-engine arena and fast-engine memory compute
//! without overflow; a refused one is refused by name and its sizes never panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tinyvit_core::config::{bounds, ModelConfig};
use tinyvit_core::engine::fast::{FastModel, Kernel};
use tinyvit_core::engine::{arena_len, macs, Limits};
use tinyvit_core::params;

/// A field from 4 bytes: mostly near the bound's range (so valid configs are common), the
/// raw value when the top bit is set.
fn field(b: &[u8], i: usize, max: u32) -> u32 {
    let mut w = [0u8; 4];
    for (k, v) in w.iter_mut().enumerate() {
        *v = b.get(i * 4 + k).copied().unwrap_or(1);
    }
    let v = u32::from_le_bytes(w);
    if v >> 31 == 1 {
        v & 0x7FFF_FFFF
    } else {
        v % (max + max / 8 + 1)
    }
}

fuzz_target!(|data: &[u8]| {
    let mut i = 0;
    let mut next = |max: u32| {
        i += 1;
        field(data, i - 1, max)
    };
    let cfg = ModelConfig {
        in_chans: next(4),
        img_size: next(bounds::IMG_SIZE),
        num_classes: next(bounds::NUM_CLASSES),
        embed_dims: [(); 4].map(|_| next(bounds::EMBED_DIM)),
        // Mostly shallow: every walk is linear in the depth, which the bound covers rarely.
        depths: [(); 4].map(|_| {
            let d = next(bounds::DEPTH);
            if d % 16 == 0 {
                d
            } else {
                d % 9
            }
        }),
        num_heads: [(); 4].map(|_| next(64)),
        window_sizes: [(); 4].map(|_| next(bounds::WINDOW)),
        mlp_ratio: next(bounds::RATIO),
        mbconv_expand_ratio: next(bounds::RATIO),
        local_conv_size: next(bounds::LOCAL_CONV),
        drop_path_rate: 0.0,
    };
    match cfg.validate() {
        Ok(()) => {
            let mut wide = 0u128;
            let mut longest = 0;
            params::for_each_param(&cfg, |name, shape| {
                longest = longest.max(name.len());
                wide += shape.iter().map(|d| *d as u128).product::<u128>();
            });
            // Names are never truncated.
            assert!(longest < params::NAME_CAP, "{cfg:?}");
            assert_eq!(params::param_count(&cfg) as u128, wide, "{cfg:?}");
            assert!(params::folded_count(&cfg) <= params::param_count(&cfg));
            let blob = params::folded_blob_len(&cfg) as u64;
            assert!(blob >= params::folded_count(&cfg) && blob < u64::MAX / 4);
            let work = macs(&cfg).expect("MACs of a valid config");
            assert!(work < 1 << 62);
            arena_len(&cfg).expect("arena of a valid config");
            for kernel in [Kernel::Avx512, Kernel::Avx2, Kernel::Portable] {
                FastModel::memory(&cfg, kernel).expect("fast-engine memory of a valid config");
            }
            let _ = Limits::DEFAULT.check_exact(&cfg);
        }
        Err(e) => {
            let _ = e.to_string();
            assert!(macs(&cfg).is_err() && arena_len(&cfg).is_err());
            assert!(FastModel::memory(&cfg, Kernel::Portable).is_err());
            // The walkers accept any config; only bounded depths keep this execution short.
            if cfg.depths.iter().all(|d| *d <= 2 * bounds::DEPTH) {
                let _ = params::param_count(&cfg);
                let _ = params::folded_blob_len(&cfg);
            }
        }
    }
});
