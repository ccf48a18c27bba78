//! The int8 model file: `int8::parse`, then `int8::run` on whatever parses, under small
//! limits (work and arena checked before anything is allocated): a file the parser accepts
//! must either run or be refused by the engine with a named error, never panic, hang or
//! allocate beyond the limits.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tinyvit_core::engine::{input_len, macs, Limits};
use tinyvit_core::int8;

/// About 20 ms of work and 64 MiB per execution.
const LIMITS: Limits = Limits {
    max_macs: 20_000_000,
    max_memory: 64 << 20,
};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let file = if flags & 1 == 1 {
        tinyvit_fuzz::repair_int8(rest)
    } else {
        rest.to_vec()
    };
    let Ok(model) = int8::parse(&file) else {
        return;
    };
    let cfg = *model.config();
    // parse validated the config: its sizes are defined.
    let work = macs(&cfg).expect("a parsed int8 model has a MAC count");
    let Ok(plan) = int8::arena_plan(&cfg) else {
        // Beyond the engine's fan-in or window bounds: run must refuse it the same way.
        let n = input_len(&cfg).expect("input length");
        if n <= 1 << 20 {
            let mut logits = vec![0i32; cfg.num_classes as usize];
            assert!(int8::run(&model, &vec![0i8; n], &mut [], &mut logits).is_err());
        }
        return;
    };
    if LIMITS.check_macs(&cfg).is_err()
        || LIMITS
            .check_memory((plan.total() as u64).saturating_mul(4))
            .is_err()
    {
        assert!(work > LIMITS.max_macs || plan.total() as u64 * 4 > LIMITS.max_memory);
        return;
    }
    let n = input_len(&cfg).expect("input length");
    if n > 1 << 20 {
        return;
    }
    let x: Vec<f32> = (0..n)
        .map(|i| ((i * 5 + flags as usize) % 11) as f32 * 0.3 - 1.5)
        .collect();
    let mut input = vec![0i8; n];
    int8::quantize_input(&model, &x, &mut input);
    let mut arena = vec![0i32; plan.total()];
    let mut logits = vec![0i32; cfg.num_classes as usize];
    int8::run(&model, &input, &mut arena, &mut logits).expect("a parsed model runs in its arena");
    let mut real = vec![0.0f32; logits.len()];
    int8::dequantize_logits(&model, &logits, &mut real);
    // A second run in a dirty arena gives the same logits (the engine reads nothing stale).
    let mut again = vec![0i32; logits.len()];
    int8::run(&model, &input, &mut arena, &mut again).expect("second run");
    assert_eq!(logits, again, "{cfg:?}: the arena's previous contents changed the logits");
});
