//! `.tvb` parsing, then both engines on whatever parses, under small limits (so one execution
//! stays fast): a file the parser accepts must give weights, and each engine must either run
//! it or refuse it by a named limit, never panic, hang or allocate beyond the limits.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tinyvit_core::engine::fast::{FastModel, Kernel};
use tinyvit_core::engine::{exact, input_len, EngineError, Limits, Weights};
use tinyvit_core::tvb;

/// About 20 ms of the exact engine and 64 MiB per execution.
const LIMITS: Limits = Limits {
    max_macs: 20_000_000,
    max_memory: 64 << 20,
};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let file = if flags & 1 == 1 {
        tinyvit_fuzz::repair_tvb(rest)
    } else {
        rest.to_vec()
    };
    let Ok(parsed) = tvb::parse(&file) else {
        return;
    };
    // Zero-copy view: refused on a misaligned buffer, never undefined behaviour.
    let _ = parsed.weights();
    let cfg = *parsed.config();
    let blob = parsed.to_blob();
    let weights = Weights::new(&cfg, &blob)
        .expect("a parsed .tvb gives weights")
        .with_limits(LIMITS);
    let n = input_len(&cfg).expect("a valid config has an input length");
    // The input is the caller's memory, not the engine's: keep it small here.
    if n > 1 << 20 {
        return;
    }
    let input: Vec<f32> = (0..n)
        .map(|i| ((i * 7 + flags as usize) % 13) as f32 * 0.25 - 1.5)
        .collect();
    let nc = cfg.num_classes as usize;
    let mut logits = vec![0.0f32; nc];
    let refused = |e: EngineError| {
        assert!(
            matches!(e, EngineError::OverLimit { .. }),
            "{cfg:?}: unexpected engine error {e}"
        )
    };
    match LIMITS.check_exact(&cfg) {
        Ok(plan) => {
            let mut arena = vec![0.0f32; plan.total()];
            exact::forward(&weights, &input, &mut arena, &mut logits)
                .expect("the exact engine runs what the limits admit");
        }
        Err(e) => {
            refused(e);
            let r = exact::forward(&weights, &input, &mut [], &mut logits);
            assert_eq!(r, Err(e));
        }
    }
    match FastModel::with_kernel(&weights, Kernel::detect()) {
        Ok(model) => model
            .forward(&input, &mut logits)
            .expect("the fast engine runs what it admitted"),
        Err(e) => refused(e),
    }
});
