//! The parity cases: which networks are compared with timm, on which deterministic weights and
//! inputs. Shared by the fixture writer (`examples/parity_weights.rs`, driven by
//! `fixtures/parity/gen_parity.py`) and the test (`tests/parity.rs`), so both sides see the same
//! numbers without committing any weights.

use tinyvit_core::config::ModelConfig;
use tinyvit_core::engine::{fold::fold_state_dict, input_len};
use tinyvit_core::params::{splitmix64, synthetic_state_dict, SyntheticTensor};

/// One parity case.
#[derive(Clone, Copy, Debug)]
pub struct Case {
    /// File stem of the fixture (`fixtures/parity/<name>.json`).
    pub name: &'static str,
    /// The network.
    pub cfg: ModelConfig,
    /// Seed of the synthetic state_dict and of the input.
    pub seed: u64,
}

/// Every case: two official configs, one whose windows need padding at every attention stage
/// (160 px: maps 20/10/5 against windows 7/14/7), the two microcontroller presets, and a tiny
/// network whose checkpoint is also committed as `.pth` and timm-named `.safetensors` for the
/// import tests (see [`tiny_config`]).
pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "tiny_vit_5m_224",
            cfg: ModelConfig::tiny_vit_5m_224(),
            seed: 1,
        },
        Case {
            name: "tiny_vit_21m_384",
            cfg: ModelConfig::tiny_vit_21m_384(),
            seed: 2,
        },
        Case {
            name: "padded_5m_160",
            cfg: ModelConfig::tiny_vit_5m_224()
                .with_img_size(160)
                .with_num_classes(100),
            seed: 3,
        },
        Case {
            name: "tiny_vit_mcu_h7",
            cfg: ModelConfig::tiny_vit_mcu_h7(),
            seed: 4,
        },
        Case {
            name: "tiny_vit_mcu_m4",
            cfg: ModelConfig::tiny_vit_mcu_m4(),
            seed: 5,
        },
        Case {
            name: "tiny_16",
            cfg: tiny_config(),
            seed: 6,
        },
    ]
}

/// A tiny TinyViT (16 px grey, widths 8/8/16/16, one block a stage, 10 classes, 43 KB of
/// weights): stage 1 attends over its whole 2x2 map, stage 2 pads its 1x1 map to a 2x2 window.
pub fn tiny_config() -> ModelConfig {
    let mut c = ModelConfig::tiny_vit_mcu_m4().with_img_size(16);
    c.embed_dims = [8, 8, 16, 16];
    c.num_heads = [1, 1, 2, 2];
    c.depths = [1, 1, 1, 1];
    c.window_sizes = [2, 2, 2, 1];
    c
}

impl Case {
    /// The official (unfolded) synthetic state_dict of this case.
    pub fn state_dict(&self) -> Vec<SyntheticTensor> {
        synthetic_state_dict(&self.cfg, self.seed)
    }

    /// The folded blob of [`Case::state_dict`].
    pub fn folded(&self) -> Vec<f32> {
        let sd = self.state_dict();
        fold_state_dict(&self.cfg, |n| {
            sd.iter().find(|t| t.name == n).map(|t| &t.values[..])
        })
        .expect("synthetic state_dicts are complete")
    }

    /// The input image `[C, H, W]`: uniform in `[-2, 2)` from splitmix64 seeded `seed + 1000`.
    pub fn input(&self) -> Vec<f32> {
        let n = input_len(&self.cfg).expect("cases are small");
        let mut s = self.seed + 1000;
        (0..n)
            .map(|_| (splitmix64(&mut s) >> 40) as f32 * (4.0 / (1u64 << 24) as f32) - 2.0)
            .collect()
    }
}
