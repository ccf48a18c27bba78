//! Host side of the device replay: the multiply-accumulate count of an inference. What a vector
//! means (replay, the logits hash, the class rule) and the file format are the core's
//! [`tinyvit_core::vectors`], the code the firmware runs.

use tinyvit_core::config::{ModelConfig, STAGES};

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
}
