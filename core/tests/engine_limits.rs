//! The engines allocate and compute only what a network declares, and refuse networks beyond
//! their limits before allocating (issue 16, defect 1 and the bounds it asked for).
//!
//! A counting global allocator measures every byte the engines ask for, on the measuring
//! thread only (the test harness allocates on its own threads meanwhile).

#![cfg(feature = "fast")]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use tinyvit_core::config::{ConfigError, ModelConfig};
use tinyvit_core::engine::fast::{FastModel, Kernel};
use tinyvit_core::engine::{self, arena_len, exact, input_len, EngineError, Limits, Weights};
use tinyvit_core::params::{self, folded_blob_len};
use tinyvit_core::tvb::{self, TvbError};

struct Counting;

thread_local! {
    static MEASURING: Cell<bool> = const { Cell::new(false) };
    /// Bytes held by this thread since the measurement started, and their maximum.
    static HELD: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn count(delta: isize) {
    let _ = MEASURING.try_with(|on| {
        if on.get() {
            let now = HELD.get() + delta;
            HELD.set(now);
            PEAK.set(PEAK.get().max(now));
        }
    });
}

// SAFETY: every call is forwarded unchanged to the system allocator; the counters only
// observe the sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is the system allocator's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as above.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) };
        count(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as above.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            // Counted as a fresh block while both may exist.
            count(new_size as isize);
            count(-(layout.size() as isize));
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f` and returns its result with the most bytes it held at once.
fn peak_of<R>(f: impl FnOnce() -> R) -> (R, usize) {
    HELD.set(0);
    PEAK.set(0);
    MEASURING.set(true);
    let r = f();
    MEASURING.set(false);
    (r, PEAK.get() as usize)
}

/// A tiny deterministic generator for the test configs (the values only need variety).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u32) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as u32
    }
}

/// Small networks of every shape the engines handle: windows larger or smaller than the maps,
/// padded or whole, local conv 1/3/5, one or three channels.
fn small_configs(count: usize) -> Vec<ModelConfig> {
    let mut g = Lcg(16);
    (0..count)
        .map(|_| {
            let mut c = ModelConfig::tiny_vit_mcu_m4();
            c.in_chans = if g.below(2) == 0 { 1 } else { 3 };
            c.img_size = 4 + g.below(37);
            c.num_classes = 1 + g.below(12);
            let heads = [1, 1 + g.below(3), 1 + g.below(3), 1 + g.below(2)];
            let hd = 4 * (1 + g.below(4));
            c.num_heads = heads;
            c.embed_dims = [
                2 + 2 * g.below(4),
                heads[1] * hd,
                heads[2] * hd,
                heads[3] * hd,
            ];
            c.depths = [1 + g.below(2), 1, 1 + g.below(2), 1];
            c.window_sizes = [1, 1 + g.below(5), 1 + g.below(5), 1 + g.below(3)];
            c.mlp_ratio = 1 + g.below(4);
            c.mbconv_expand_ratio = 1 + g.below(4);
            c.local_conv_size = [1, 3, 5][g.below(3) as usize];
            c.validate().unwrap();
            c
        })
        .collect()
}

/// The most `matrixmultiply`'s sgemm holds for its packed panels in one call: `mc x kc` of `A`
/// plus `kc x nc` of `B` for its largest kernel's block sizes (64, 256 and 1024 at most), in
/// f32, with its alignment slack.
const MATRIXMULTIPLY_PACKING: usize = (64 * 256 + 256 * 1024) * 4 + 4096;

#[test]
fn the_fast_engine_allocates_at_most_what_it_declares_and_nothing_per_batch() {
    let mut cfgs = small_configs(40);
    cfgs.push(ModelConfig::tiny_vit_mcu_m4());
    cfgs.push(ModelConfig::tiny_vit_mcu_h7());
    for cfg in cfgs {
        let blob = vec![0.0f32; folded_blob_len(&cfg)];
        let w = Weights::new(&cfg, &blob).unwrap();
        let input = vec![0.5f32; 2 * input_len(&cfg).unwrap()];
        let mut logits = vec![0.0f32; 2 * cfg.num_classes as usize];
        for kernel in Kernel::available() {
            let declared = FastModel::memory(&cfg, kernel).unwrap() as usize;
            let (model, built) = peak_of(|| FastModel::with_kernel(&w, kernel).unwrap());
            assert!(
                built <= declared,
                "{kernel:?} {cfg:?}: allocated {built} > declared {declared}"
            );
            // Declared, not vastly over-declared: the estimate is the allocation.
            assert!(built * 10 >= declared * 9, "{cfg:?}: {built} vs {declared}");
            let (r, run) = peak_of(|| model.forward(&input, &mut logits));
            r.unwrap();
            if kernel == Kernel::Portable {
                // `matrixmultiply` packs its operands into a buffer it allocates and frees in
                // each call; its size is set by its block sizes, not by the network.
                assert!(
                    run <= MATRIXMULTIPLY_PACKING,
                    "{kernel:?} {cfg:?}: forward held {run} bytes at once"
                );
            } else {
                assert_eq!(run, 0, "{kernel:?} {cfg:?}: forward allocated {run} bytes");
            }
        }
    }
}

#[test]
fn the_exact_engine_allocates_nothing() {
    for cfg in small_configs(8) {
        let blob = vec![0.0f32; folded_blob_len(&cfg)];
        let w = Weights::new(&cfg, &blob).unwrap();
        let input = vec![0.5f32; input_len(&cfg).unwrap()];
        let mut arena = vec![0.0f32; arena_len(&cfg).unwrap()];
        let mut logits = vec![0.0f32; cfg.num_classes as usize];
        let (r, bytes) = peak_of(|| exact::forward(&w, &input, &mut arena, &mut logits));
        r.unwrap();
        assert_eq!(bytes, 0, "{cfg:?}");
    }
}

/// Writes a `.tvb` for any config, valid or not, exactly as `tvb::write` lays one out
/// (checked against it below): how a crafted file that the parser once accepted looks.
fn write_unchecked(cfg: &ModelConfig, blob: &[f32]) -> Vec<u8> {
    let data: Vec<u8> = blob.iter().flat_map(|v| v.to_le_bytes()).collect();
    let count = params::folded_tensor_count(cfg) as u32;
    let mut header = postcard::to_allocvec(&(cfg, count, data.len() as u64, crc32(&data))).unwrap();
    let mut offset = 0u64;
    params::for_each_folded(cfg, |name, shape| {
        let mut dims = [0u32; 4];
        for (d, s) in dims.iter_mut().zip(shape) {
            *d = *s as u32;
        }
        let entry = (name, shape.len() as u8, dims, offset);
        header.extend_from_slice(&postcard::to_allocvec(&entry).unwrap());
        offset += params::align_up(params::numel(shape)) as u64 * 4;
    });
    let mut out = tvb::MAGIC.to_vec();
    out.extend_from_slice(&tvb::VERSION.to_le_bytes());
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32(&header).to_le_bytes());
    out.extend_from_slice(&header);
    out.resize(out.len().div_ceil(16) * 16, 0);
    out.extend_from_slice(&data);
    out
}

/// crc32 (IEEE), bit by bit: the `.tvb` checksums.
fn crc32(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for b in bytes {
        c ^= *b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// A narrow M4-shaped network at 8 px: every map is 2x2 or smaller.
fn narrow() -> ModelConfig {
    let mut c = ModelConfig::tiny_vit_mcu_m4().with_img_size(8);
    c.embed_dims = [8, 16, 16, 16];
    c.num_heads = [1, 1, 1, 1];
    c.depths = [1, 1, 1, 1];
    c
}

/// Defect 1 of issue 16: a 1 MB `.tvb` with window 514 parsed, and then the fast engine asked
/// for 837 GB while the exact engine ran for minutes on one 8x8 image. The same file now
/// fails to parse with the field named, and no engine can be handed its weights.
#[test]
fn a_tvb_with_window_514_fails_cleanly_by_name() {
    let valid = narrow();
    let blob: Vec<f32> = (0..folded_blob_len(&valid))
        .map(|i| (i % 7) as f32 * 0.1)
        .collect();
    assert_eq!(
        write_unchecked(&valid, &blob),
        tvb::write(&valid, &blob).unwrap()
    );
    // The valid blob with stage 1's bias table grown to 514 x 514 offsets.
    let mut cfg = valid;
    cfg.window_sizes[1] = 514;
    let mut big = Vec::new();
    let mut at = 0;
    params::for_each_folded(&valid, |name, shape| {
        let n = params::align_up(params::numel(shape));
        if name == "layers.1.blocks.0.attn.attention_biases" {
            big.extend(std::iter::repeat_n(0.01f32, params::align_up(514 * 514)));
        } else {
            big.extend_from_slice(&blob[at..at + n]);
        }
        at += n;
    });
    assert_eq!(big.len(), folded_blob_len(&cfg));
    let bytes = write_unchecked(&cfg, &big);
    assert!(bytes.len() > 1 << 20);

    let expected = ConfigError::TooLarge {
        field: "window_sizes[1]",
        value: 514,
        max: 128,
    };
    let (parsed, held) = peak_of(|| tvb::parse(&bytes).map(|_| ()));
    assert_eq!(parsed, Err(TvbError::Config(expected)));
    assert_eq!(held, 0);
    assert_eq!(
        parsed.unwrap_err().to_string(),
        "tvb: config field `window_sizes[1]` is 514, above the largest supported value 128"
    );
    // Neither engine can be given these weights.
    assert_eq!(
        Weights::new(&cfg, &big).unwrap_err(),
        EngineError::Config(expected)
    );
    assert_eq!(
        FastModel::memory(&cfg, Kernel::Portable),
        Err(EngineError::Config(expected))
    );
}

/// The largest window the bounds allow over a tiny map is still a network no host should run
/// by accident (16,384-token windows). Both engines refuse it under the default limits before
/// allocating or computing, and run it when the limits are raised far enough.
#[test]
fn both_engines_refuse_work_beyond_their_limits_before_allocating() {
    let mut cfg = narrow();
    cfg.window_sizes = [1, 128, 128, 128];
    cfg.embed_dims = [8, 64, 128, 128];
    cfg.num_heads = [1, 2, 4, 4];
    cfg.depths = [1, 2, 3, 1];
    let blob = vec![0.0f32; folded_blob_len(&cfg)];
    let bytes = tvb::write(&cfg, &blob).unwrap();
    let file = tvb::parse(&bytes).unwrap();
    let floats = file.to_blob();
    let w = Weights::new(file.config(), &floats).unwrap();
    let work = engine::macs(&cfg).unwrap();
    assert!(work > Limits::DEFAULT.max_macs, "{work}");

    let input = vec![0.0f32; input_len(&cfg).unwrap()];
    let mut logits = vec![0.0f32; cfg.num_classes as usize];
    // The exact engine refuses before looking at its (empty) arena.
    let (r, held) = peak_of(|| exact::forward(&w, &input, &mut [], &mut logits));
    assert_eq!(
        r,
        Err(EngineError::OverLimit {
            what: "multiply-accumulates per image",
            needed: work,
            limit: Limits::DEFAULT.max_macs
        })
    );
    assert_eq!(held, 0);
    let (r, held) = peak_of(|| FastModel::new(&w).map(|_| ()));
    assert!(
        matches!(r, Err(EngineError::OverLimit { needed, .. }) if needed == work),
        "{r:?}"
    );
    assert_eq!(held, 0);

    // With the work allowed, the fast engine's memory (20 heads' gathered biases of 1 GiB each) is
    // what stops it.
    let memory = FastModel::memory(&cfg, Kernel::Portable).unwrap();
    assert!(memory > 16 << 30, "{memory}");
    let more_work = w.with_limits(Limits {
        max_macs: work,
        ..Limits::DEFAULT
    });
    let (r, held) = peak_of(|| FastModel::with_kernel(&more_work, Kernel::Portable).map(|_| ()));
    assert_eq!(
        r,
        Err(EngineError::OverLimit {
            what: "bytes of engine memory",
            needed: memory,
            limit: Limits::DEFAULT.max_memory
        })
    );
    assert_eq!(held, 0);
    // The exact engine's arena for it is small: the limit on work is what protects it.
    assert!(Limits::DEFAULT
        .check_memory(arena_len(&cfg).unwrap() as u64 * 4)
        .is_ok());
}
