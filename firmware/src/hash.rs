//! The bit-pattern hash that host and device compare: 64-bit FNV-1a over little-endian bytes.
//!
//! Floats are hashed by their IEEE-754 bit patterns, so two runs agree only when every value is
//! bit-identical. The one exception is NaN: its payload is not meant to be portable (x86 and Arm
//! produce different default NaNs), so every NaN is hashed as the canonical quiet NaN 0x7fc00000.
//! The host side (`tinyvit_tests::replay::logits_hash`, over the core's `aug::fnv1a64`) computes
//! the same function: `tests/tests/replay_vectors.rs` compiles this file and compares both on
//! random bit patterns and NaNs, and the firmware checks [`TINYVIT_FNV`] against the core at boot.

/// FNV-1a 64 offset basis.
const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a 64 prime.
const PRIME: u64 = 0x0000_0100_0000_01b3;
/// The canonical quiet NaN every NaN is hashed as.
pub const CANONICAL_NAN: u32 = 0x7fc0_0000;
/// `Fnv::new().bytes(b"tinyvit").finish()`, pinned on both sides.
pub const TINYVIT_FNV: u64 = 0x0a52_9f3e_e27c_ea9a;

/// An FNV-1a 64 hasher.
#[derive(Clone, Copy)]
pub struct Fnv(u64);

impl Fnv {
    pub const fn new() -> Self {
        Fnv(OFFSET)
    }

    /// Feeds raw bytes.
    pub fn bytes(mut self, data: &[u8]) -> Self {
        for &b in data {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(PRIME);
        }
        self
    }

    /// Feeds f32 values by bit pattern, little-endian, NaNs canonicalised.
    pub fn f32s(mut self, data: &[f32]) -> Self {
        for &v in data {
            let bits = if v.is_nan() {
                CANONICAL_NAN
            } else {
                v.to_bits()
            };
            self = self.bytes(&bits.to_le_bytes());
        }
        self
    }

    pub fn finish(self) -> u64 {
        self.0
    }
}
