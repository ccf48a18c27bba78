//! Host side of the device replay: the hash of the logits both sides compare, the class rule
//! and the multiply-accumulate count. The vector file itself (format, writer and the parser the
//! firmware uses) is the core's [`tinyvit_core::vectors`].

use tinyvit_core::config::{ModelConfig, STAGES};

/// The canonical quiet NaN every NaN is hashed as.
pub const CANONICAL_NAN: u32 = 0x7fc0_0000;

/// FNV-1a 64 over the little-endian bit patterns of `v`, every NaN hashed as
/// [`CANONICAL_NAN`] (NaN payloads differ between x86 and Arm and mean nothing).
pub fn logits_hash(v: &[f32]) -> u64 {
    let mut bytes = Vec::with_capacity(v.len() * 4);
    for x in v {
        let bits = if x.is_nan() {
            CANONICAL_NAN
        } else {
            x.to_bits()
        };
        bytes.extend_from_slice(&bits.to_le_bytes());
    }
    tinyvit_core::aug::fnv1a64(&bytes)
}

/// Index of the largest logit, the lowest index on ties (the firmware uses the same rule).
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// Nominal multiply-accumulates of one forward pass of the `exact` engine: every conv tap
/// (padding taps included), every Linear, and the two attention products over padded windows
/// (`q k^T` and `p v`). LayerNorm, softmax, GELU and the residual adds are not counted. This is
/// the denominator of `cargo xtask bench`'s instructions per MAC.
pub fn macs(cfg: &ModelConfig) -> u64 {
    let r = cfg.stage_resolutions().map(u64::from);
    let e = cfg.embed_dims.map(u64::from);
    let (cin, half) = (u64::from(cfg.in_chans), e[0] / 2);
    let w1 = u64::from(cfg.img_size).div_ceil(2);
    let mut n = half * cin * 9 * w1 * w1 + e[0] * half * 9 * r[0] * r[0];
    let hid0 = e[0] * u64::from(cfg.mbconv_expand_ratio);
    n += u64::from(cfg.depths[0]) * r[0] * r[0] * (2 * hid0 * e[0] + hid0 * 9);
    for s in 0..STAGES {
        if s > 0 {
            let (c, ws) = (e[s], u64::from(cfg.window_sizes[s]));
            let heads = u64::from(cfg.num_heads[s]);
            let (t, nwin) = (ws * ws, r[s].div_ceil(ws).pow(2));
            let hid = c * u64::from(cfg.mlp_ratio);
            let k = u64::from(cfg.local_conv_size);
            let tokens = r[s] * r[s];
            let block = nwin * t * 3 * c * c // qkv over padded windows
                + 2 * nwin * heads * t * t * (c / heads) // q k^T and p v
                + tokens * c * c // proj
                + tokens * c * k * k // local conv
                + tokens * 2 * c * hid; // MLP
            n += u64::from(cfg.depths[s]) * block;
        }
        if s + 1 < STAGES {
            let (a, b) = (r[s] * r[s], r[s + 1] * r[s + 1]);
            n += a * e[s] * e[s + 1] + b * e[s + 1] * 9 + b * e[s + 1] * e[s + 1];
        }
    }
    n + u64::from(cfg.num_classes) * e[3]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_of_a_tiny_network_by_hand() {
        // 8 px grey, widths 2/2/2/2, one block each, windows 1, one head, 3 classes.
        let cfg = ModelConfig {
            in_chans: 1,
            img_size: 8,
            num_classes: 3,
            embed_dims: [2; 4],
            depths: [1; 4],
            num_heads: [1; 4],
            window_sizes: [1; 4],
            mlp_ratio: 1,
            mbconv_expand_ratio: 1,
            local_conv_size: 1,
            drop_path_rate: 0.0,
        };
        // Resolutions 2, 1, 1, 1; the stem's first conv runs at 4x4.
        let stem = 9 * 16 + 2 * 9 * 4;
        let mbconv = 4 * (2 * 2 * 2 + 2 * 9);
        let merge0 = 4 * 4 + 2 * 9 + 4;
        let merge = 4 + 2 * 9 + 4;
        let block = 12 + 2 * 2 + 4 + 2 + 2 * 4;
        assert_eq!(
            macs(&cfg),
            stem + mbconv + merge0 + 2 * merge + 3 * block + 3 * 2
        );
    }

    #[test]
    fn argmax_takes_the_first_of_ties() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, -1.0]), 1);
        assert_eq!(argmax(&[]), 0);
    }

    #[test]
    fn hash_canonicalises_nan_and_pins_bits() {
        let quiet = f32::from_bits(0x7fc0_0000);
        let other = f32::from_bits(0xffc0_1234);
        assert_eq!(logits_hash(&[quiet, 1.0]), logits_hash(&[other, 1.0]));
        assert_ne!(logits_hash(&[0.0]), logits_hash(&[-0.0]));
        // The firmware pins the same value (firmware/src/hash.rs, TINYVIT_FNV).
        assert_eq!(
            tinyvit_core::aug::fnv1a64(b"tinyvit"),
            0x0a52_9f3e_e27c_ea9a
        );
    }
}
