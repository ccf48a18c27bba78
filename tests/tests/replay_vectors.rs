//! The logits hash, host against the firmware's own hasher (compiled here from
//! `firmware/src/hash.rs`, which is plain `core` code): the same bits, NaNs canonical. The
//! vector file's format tests (round trip, truncation, corruption) live with the format in
//! `tinyvit_core::vectors`, the one parser the firmware uses.

#[allow(dead_code, reason = "the firmware's module; this test uses part of it")]
#[path = "../../firmware/src/hash.rs"]
mod fw_hash;

use tinyvit_core::aug;
use tinyvit_core::params::splitmix64;
use tinyvit_tests::replay;

#[test]
fn device_and_host_hash_the_same_bits() {
    let mut s = 9u64;
    let mut v: Vec<f32> = (0..257)
        .map(|_| f32::from_bits(splitmix64(&mut s) as u32))
        .collect();
    v.extend([f32::NAN, -f32::NAN, f32::from_bits(0x7f80_0001), 0.0, -0.0]);
    assert_eq!(
        fw_hash::Fnv::new().f32s(&v).finish(),
        replay::logits_hash(&v)
    );
    assert_eq!(
        fw_hash::Fnv::new().bytes(b"tinyvit").finish(),
        fw_hash::TINYVIT_FNV
    );
    assert_eq!(aug::fnv1a64(b"tinyvit"), fw_hash::TINYVIT_FNV);
}
