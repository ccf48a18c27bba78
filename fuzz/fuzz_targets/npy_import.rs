//! The host's float32 `.npy` parser (`host/src/import/npy.rs`, compiled in): any input is a
//! C-order array whose values fill its shape, or a named error; never a panic, and no
//! allocation sized by a shape the bytes cannot hold.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tinyvit_fuzz::npy;

fuzz_target!(|data: &[u8]| {
    if let Ok(a) = npy::parse(data) {
        let n = a.shape().iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        assert_eq!(n, Some(a.len()), "the values fill the shape");
        assert!(a.len() * 4 <= data.len(), "no more values than the bytes hold");
        assert!(a.is_standard_layout());
    }
});
