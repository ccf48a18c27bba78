//! The host's safetensors parser (`host/src/import/safetensors_file.rs`, compiled in): every
//! tensor it returns has values that fill its shape; anything else is a named error.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tinyvit_fuzz::safetensors_file;

fuzz_target!(|data: &[u8]| {
    if let Ok((_, tensors)) = safetensors_file::parse(data) {
        for t in &tensors {
            let n = t.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            assert_eq!(n, Some(t.values.len()), "{}: values fill the shape", t.name);
        }
    }
});
