//! The TinyViT model configuration: the one place that says what a model looks like.
//!
//! A [`ModelConfig`] fixes every dimension of the network. The official presets
//! (`tiny_vit_5m_224` ... `tiny_vit_21m_512`) match the reference implementation; the
//! microcontroller presets are this project's own and are documented where they are defined.
//!
//! The network always has four stages: stage 0 is a stack of MBConv blocks, stages 1..3 are
//! TinyViT blocks (windowed attention + local conv + MLP). A PatchMerging downsample ends each of
//! stages 0..2. Stage resolutions are img/4, /8, /16, /32 (each rounded up, as a stride-2 conv
//! with padding 1 does).

use serde::{Deserialize, Serialize};

/// Number of stages in every TinyViT.
pub const STAGES: usize = 4;

/// Everything that fixes the shape of a TinyViT network.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Input channels: 3 for RGB, 1 for grey images.
    pub in_chans: u32,
    /// Input height and width in pixels (square inputs).
    pub img_size: u32,
    /// Output classes of the head.
    pub num_classes: u32,
    /// Channels of each stage.
    pub embed_dims: [u32; STAGES],
    /// Blocks in each stage (stage 0: MBConv blocks).
    pub depths: [u32; STAGES],
    /// Attention heads of each stage (stage 0 has no attention; its value is ignored).
    pub num_heads: [u32; STAGES],
    /// Attention window size of each stage (stage 0's value is ignored).
    pub window_sizes: [u32; STAGES],
    /// MLP hidden width as a multiple of the stage width.
    pub mlp_ratio: u32,
    /// MBConv expansion ratio (stage 0).
    pub mbconv_expand_ratio: u32,
    /// Kernel size of the depthwise local conv inside each TinyViT block.
    pub local_conv_size: u32,
    /// Stochastic depth rate of the last block (training only).
    pub drop_path_rate: f32,
}

/// Key dimension per attention head in every official TinyViT. The reference computes it as
/// `embed_dim / num_heads` (which is 32 in all official presets); the engines do the same, so
/// the microcontroller presets use 16-channel heads.
pub const KEY_DIM: u32 = 32;

/// Upper bounds [`ModelConfig::validate`] puts on every field.
///
/// They are far above any TinyViT (the largest official preset is 576 wide, 6 blocks deep,
/// 512 px with 32-token windows) and chosen so that every size derived from a valid config
/// fits in a `u64` with room to spare: parameter counts below 2^42, multiply-accumulates of one
/// forward pass below 2^62, the fast engine's gathered attention biases below 2^53 bytes.
/// Whether a config is affordable is a separate question, answered by
/// [`crate::engine::Limits`] before an engine allocates or loops.
pub mod bounds {
    /// Largest input side in pixels.
    pub const IMG_SIZE: u32 = 4096;
    /// Largest class count (ImageNet-22k has 21,841).
    pub const NUM_CLASSES: u32 = 1 << 24;
    /// Largest stage width.
    pub const EMBED_DIM: u32 = 8192;
    /// Most blocks in one stage.
    pub const DEPTH: u32 = 256;
    /// Largest attention window side (tokens per window: its square).
    pub const WINDOW: u32 = 128;
    /// Largest MLP ratio and MBConv expansion ratio.
    pub const RATIO: u32 = 16;
    /// Largest local conv kernel side.
    pub const LOCAL_CONV: u32 = 31;
}

/// Why a configuration cannot describe a network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// A dimension that must be positive is zero (the field is named).
    Zero(&'static str),
    /// `in_chans` must be 1 or 3.
    InChans,
    /// A stage width is not divisible by its head count.
    HeadsDoNotDivide { stage: usize },
    /// `local_conv_size` must be odd (the conv keeps the map size with padding `k / 2`).
    EvenLocalConv,
    /// A field exceeds its bound in [`bounds`].
    TooLarge {
        field: &'static str,
        value: u32,
        max: u32,
    },
}

impl core::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ConfigError::Zero(field) => write!(f, "config field `{field}` must be positive"),
            ConfigError::InChans => write!(f, "config field `in_chans` must be 1 or 3"),
            ConfigError::HeadsDoNotDivide { stage } => write!(
                f,
                "config field `embed_dims[{stage}]` is not divisible by `num_heads[{stage}]`"
            ),
            ConfigError::EvenLocalConv => {
                write!(f, "config field `local_conv_size` must be odd")
            }
            ConfigError::TooLarge { field, value, max } => write!(
                f,
                "config field `{field}` is {value}, above the largest supported value {max}"
            ),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for ConfigError {}

/// What a microcontroller preset's board class affords: the `.tvb` file in flash and the
/// exact engine's arena in RAM, in bytes (the budgets the presets are documented with).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct McuBudget {
    /// Most bytes of the model file (flash).
    pub model_bytes: u64,
    /// Most bytes of the exact engine's arena (RAM).
    pub arena_bytes: u64,
}

/// The budget of a microcontroller preset (`tiny_vit_mcu_m4`, `tiny_vit_mcu_h7`, or `m4`,
/// `h7`); `None` for any other name.
pub fn mcu_budget(name: &str) -> Option<McuBudget> {
    match name {
        "tiny_vit_mcu_m4" | "m4" | "tiny_vit_mcu_m4_q8" => Some(McuBudget {
            model_bytes: 800_000,
            arena_bytes: 192 * 1024,
        }),
        "tiny_vit_mcu_h7" | "h7" | "tiny_vit_mcu_h7_q8" => Some(McuBudget {
            model_bytes: 1_500_000,
            arena_bytes: 384 * 1024,
        }),
        _ => None,
    }
}

/// Names of every preset, official ones first.
pub const PRESET_NAMES: &[&str] = &[
    "tiny_vit_5m_224",
    "tiny_vit_11m_224",
    "tiny_vit_21m_224",
    "tiny_vit_21m_384",
    "tiny_vit_21m_512",
    "tiny_vit_mcu_h7",
    "tiny_vit_mcu_m4",
    "tiny_vit_mcu_h7_q8",
    "tiny_vit_mcu_m4_q8",
];

impl ModelConfig {
    fn official(embed_dims: [u32; 4], num_heads: [u32; 4], ws: u32, img: u32, dpr: f32) -> Self {
        ModelConfig {
            in_chans: 3,
            img_size: img,
            num_classes: 1000,
            embed_dims,
            depths: [2, 2, 6, 2],
            num_heads,
            window_sizes: [ws, ws, 2 * ws, ws],
            mlp_ratio: 4,
            mbconv_expand_ratio: 4,
            local_conv_size: 3,
            drop_path_rate: dpr,
        }
    }

    /// TinyViT-5M at 224 px (5,392,764 parameters with a 1000-class head).
    pub fn tiny_vit_5m_224() -> Self {
        Self::official([64, 128, 160, 320], [2, 4, 5, 10], 7, 224, 0.0)
    }

    /// TinyViT-11M at 224 px (10,996,972 parameters).
    pub fn tiny_vit_11m_224() -> Self {
        Self::official([64, 128, 256, 448], [2, 4, 8, 14], 7, 224, 0.1)
    }

    /// TinyViT-21M at 224 px (21,198,568 parameters).
    pub fn tiny_vit_21m_224() -> Self {
        Self::official([96, 192, 384, 576], [3, 6, 12, 18], 7, 224, 0.2)
    }

    /// TinyViT-21M at 384 px, windows 12/12/24/12 (21,230,488 parameters).
    pub fn tiny_vit_21m_384() -> Self {
        Self::official([96, 192, 384, 576], [3, 6, 12, 18], 12, 384, 0.1)
    }

    /// TinyViT-21M at 512 px, windows 16/16/32/16 (21,268,120 parameters).
    pub fn tiny_vit_21m_512() -> Self {
        Self::official([96, 192, 384, 576], [3, 6, 12, 18], 16, 512, 0.1)
    }

    /// Microcontroller preset for STM32H743-class boards (Cortex-M7, 2 MB flash, 1 MB RAM):
    /// 64x64 grey input, 10 classes, widths 16/32/64/96, depths 2/2/3/1, heads -/2/4/6 (16
    /// channels each), windows -/4/4/2 (stage 1 runs four 4x4 windows on its 8x8 map, stages 2
    /// and 3 attend over the whole map).
    ///
    /// Budget: folded f32 weights <= 1.5 MB, exact-engine arena <= 384 KB. 324,290 folded
    /// values (1,297,160 bytes); `tinyvit presets` prints the weight and arena bytes and tests in
    /// `params` and `engine` check both budgets.
    pub fn tiny_vit_mcu_h7() -> Self {
        ModelConfig {
            in_chans: 1,
            img_size: 64,
            num_classes: 10,
            embed_dims: [16, 32, 64, 96],
            depths: [2, 2, 3, 1],
            num_heads: [1, 2, 4, 6],
            window_sizes: [4, 4, 4, 2],
            mlp_ratio: 4,
            mbconv_expand_ratio: 4,
            local_conv_size: 3,
            drop_path_rate: 0.0,
        }
    }

    /// Microcontroller preset for STM32F746 / Cortex-M4F-class boards (320 KB RAM, 1 MB flash):
    /// 56x56 grey input, 10 classes, widths 16/32/48/64, depths 2/2/3/1, heads -/2/3/4 (16
    /// channels each), windows -/4/4/2. Stage 1's 7x7 map is zero-padded to 8x8 and split into
    /// four 4x4 windows, as the reference does; stages 2 and 3 attend over the whole map.
    ///
    /// Budget: folded f32 weights <= 800 KB, exact-engine arena <= 192 KB. 184,986 folded values
    /// (739,944 bytes); tests in `params` and `engine` check both budgets.
    pub fn tiny_vit_mcu_m4() -> Self {
        ModelConfig {
            in_chans: 1,
            img_size: 56,
            num_classes: 10,
            embed_dims: [16, 32, 48, 64],
            depths: [2, 2, 3, 1],
            num_heads: [1, 2, 3, 4],
            window_sizes: [4, 4, 4, 2],
            mlp_ratio: 4,
            mbconv_expand_ratio: 4,
            local_conv_size: 3,
            drop_path_rate: 0.0,
        }
    }

    /// Int8 microcontroller preset for STM32H743-class boards: the budgets of
    /// [`Self::tiny_vit_mcu_h7`] (1.5 MB of flash for code and model, 384 KB of RAM) spent on an
    /// int8 model (`crate::int8`). 64x64 grey input, 10 classes, widths 32/64/128/160, depths
    /// 2/2/3/1, heads -/4/8/10 (16 channels each), windows -/4/4/2.
    ///
    /// 1,118,354 folded values (3.4x `tiny_vit_mcu_h7`); int8 data 1,198,244 bytes, int8 arena
    /// 35,264 bytes. Its f32 file (4.5 MB) fits no board: it is meant to be quantised.
    pub fn tiny_vit_mcu_h7_q8() -> Self {
        ModelConfig {
            embed_dims: [32, 64, 128, 160],
            num_heads: [1, 4, 8, 10],
            ..Self::tiny_vit_mcu_h7()
        }
    }

    /// Int8 microcontroller preset for STM32F746 / Cortex-M4F-class boards: the budgets of
    /// [`Self::tiny_vit_mcu_m4`] (800 KB of flash for code and model, 192 KB of RAM) spent on
    /// an int8 model. 56x56 grey input, 10 classes, widths 32/64/80/112, depths 2/2/3/1, heads
    /// -/4/5/7 (16 channels each), windows -/4/4/2.
    ///
    /// 558,326 folded values (3.0x `tiny_vit_mcu_m4`); int8 data 617,060 bytes, int8 arena
    /// 27,968 bytes.
    pub fn tiny_vit_mcu_m4_q8() -> Self {
        ModelConfig {
            embed_dims: [32, 64, 80, 112],
            num_heads: [1, 4, 5, 7],
            ..Self::tiny_vit_mcu_m4()
        }
    }

    /// The preset of that name, if there is one.
    pub fn preset(name: &str) -> Option<Self> {
        Some(match name {
            "tiny_vit_5m_224" => Self::tiny_vit_5m_224(),
            "tiny_vit_11m_224" => Self::tiny_vit_11m_224(),
            "tiny_vit_21m_224" => Self::tiny_vit_21m_224(),
            "tiny_vit_21m_384" => Self::tiny_vit_21m_384(),
            "tiny_vit_21m_512" => Self::tiny_vit_21m_512(),
            "tiny_vit_mcu_h7" => Self::tiny_vit_mcu_h7(),
            "tiny_vit_mcu_m4" => Self::tiny_vit_mcu_m4(),
            "tiny_vit_mcu_h7_q8" => Self::tiny_vit_mcu_h7_q8(),
            "tiny_vit_mcu_m4_q8" => Self::tiny_vit_mcu_m4_q8(),
            _ => return None,
        })
    }

    /// The same network with another class count.
    pub fn with_num_classes(mut self, n: u32) -> Self {
        self.num_classes = n;
        self
    }

    /// The same network for another input channel count (1 or 3).
    pub fn with_in_chans(mut self, c: u32) -> Self {
        self.in_chans = c;
        self
    }

    /// The same network at another input size.
    pub fn with_img_size(mut self, s: u32) -> Self {
        self.img_size = s;
        self
    }

    /// Checks that the configuration describes a buildable network whose sizes are all
    /// representable: every field positive where it must be and within [`bounds`].
    pub fn validate(&self) -> Result<(), ConfigError> {
        const EMBED: [&str; STAGES] = [
            "embed_dims[0]",
            "embed_dims[1]",
            "embed_dims[2]",
            "embed_dims[3]",
        ];
        const DEPTHS: [&str; STAGES] = ["depths[0]", "depths[1]", "depths[2]", "depths[3]"];
        const HEADS: [&str; STAGES] = [
            "num_heads[0]",
            "num_heads[1]",
            "num_heads[2]",
            "num_heads[3]",
        ];
        const WINDOWS: [&str; STAGES] = [
            "window_sizes[0]",
            "window_sizes[1]",
            "window_sizes[2]",
            "window_sizes[3]",
        ];
        if self.in_chans != 1 && self.in_chans != 3 {
            return Err(ConfigError::InChans);
        }
        let mut fields: heapless::Vec<(&'static str, u32, u32), 24> = heapless::Vec::new();
        let mut push = |field, value, max| {
            // 5 scalar fields and 4 per stage: always within capacity.
            let _ = fields.push((field, value, max));
        };
        push("img_size", self.img_size, bounds::IMG_SIZE);
        push("num_classes", self.num_classes, bounds::NUM_CLASSES);
        push("mlp_ratio", self.mlp_ratio, bounds::RATIO);
        push(
            "mbconv_expand_ratio",
            self.mbconv_expand_ratio,
            bounds::RATIO,
        );
        push("local_conv_size", self.local_conv_size, bounds::LOCAL_CONV);
        for s in 0..STAGES {
            push(EMBED[s], self.embed_dims[s], bounds::EMBED_DIM);
            push(DEPTHS[s], self.depths[s], bounds::DEPTH);
            // Stage 0 has no attention: its head count and window are ignored.
            if s > 0 {
                push(HEADS[s], self.num_heads[s], bounds::EMBED_DIM);
                push(WINDOWS[s], self.window_sizes[s], bounds::WINDOW);
            }
        }
        for &(field, value, max) in &fields {
            if value == 0 {
                return Err(ConfigError::Zero(field));
            }
            if value > max {
                return Err(ConfigError::TooLarge { field, value, max });
            }
        }
        if self.local_conv_size.is_multiple_of(2) {
            return Err(ConfigError::EvenLocalConv);
        }
        for s in 1..STAGES {
            if !self.embed_dims[s].is_multiple_of(self.num_heads[s]) {
                return Err(ConfigError::HeadsDoNotDivide { stage: s });
            }
        }
        Ok(())
    }

    /// Spatial side of each stage's feature map: img/4, /8, /16, /32, rounded up.
    pub fn stage_resolutions(&self) -> [u32; STAGES] {
        let mut r = [0; STAGES];
        // Two stride-2 convs with padding 1: ceil twice.
        let mut side = self.img_size.div_ceil(2).div_ceil(2);
        for (s, out) in r.iter_mut().enumerate() {
            if s > 0 {
                side = side.div_ceil(2);
            }
            *out = side;
        }
        r
    }

    /// Total number of blocks over all stages (MBConv included).
    pub fn total_blocks(&self) -> u32 {
        self.depths.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn official_presets_validate() {
        for name in PRESET_NAMES {
            let c = ModelConfig::preset(name).unwrap();
            c.validate().unwrap();
        }
    }

    #[test]
    fn stage_resolutions_round_up() {
        assert_eq!(
            ModelConfig::tiny_vit_5m_224().stage_resolutions(),
            [56, 28, 14, 7]
        );
        assert_eq!(
            ModelConfig::tiny_vit_5m_224()
                .with_img_size(28)
                .stage_resolutions(),
            [7, 4, 2, 1]
        );
    }

    #[test]
    fn bad_configs_are_errors() {
        let mut c = ModelConfig::tiny_vit_5m_224();
        c.in_chans = 2;
        assert_eq!(c.validate(), Err(ConfigError::InChans));
        let mut c = ModelConfig::tiny_vit_5m_224();
        c.num_heads[2] = 3;
        assert_eq!(
            c.validate(),
            Err(ConfigError::HeadsDoNotDivide { stage: 2 })
        );
        let mut c = ModelConfig::tiny_vit_5m_224();
        c.local_conv_size = 4;
        assert_eq!(c.validate(), Err(ConfigError::EvenLocalConv));
        let mut c = ModelConfig::tiny_vit_5m_224();
        c.depths[3] = 0;
        assert_eq!(c.validate(), Err(ConfigError::Zero("depths[3]")));
    }

    /// The largest value of every field validates; one more is refused, naming the field.
    #[test]
    fn every_bound_is_inclusive_and_named() {
        let base = ModelConfig::tiny_vit_mcu_m4();
        type Set = fn(&mut ModelConfig, u32);
        let cases: [(&str, u32, Set); 11] = [
            ("img_size", bounds::IMG_SIZE, |c, v| c.img_size = v),
            ("num_classes", bounds::NUM_CLASSES, |c, v| c.num_classes = v),
            ("mlp_ratio", bounds::RATIO, |c, v| c.mlp_ratio = v),
            ("mbconv_expand_ratio", bounds::RATIO, |c, v| {
                c.mbconv_expand_ratio = v
            }),
            ("embed_dims[0]", bounds::EMBED_DIM, |c, v| {
                c.embed_dims[0] = v
            }),
            ("embed_dims[3]", bounds::EMBED_DIM, |c, v| {
                c.embed_dims[3] = v
            }),
            ("depths[2]", bounds::DEPTH, |c, v| c.depths[2] = v),
            ("window_sizes[1]", bounds::WINDOW, |c, v| {
                c.window_sizes[1] = v
            }),
            ("window_sizes[3]", bounds::WINDOW, |c, v| {
                c.window_sizes[3] = v
            }),
            ("num_heads[3]", bounds::EMBED_DIM, |c, v| {
                c.num_heads[3] = v;
                c.embed_dims[3] = v;
            }),
            ("local_conv_size", bounds::LOCAL_CONV, |c, v| {
                c.local_conv_size = v
            }),
        ];
        for (field, max, set) in cases {
            let mut c = base;
            set(&mut c, max);
            assert_eq!(c.validate(), Ok(()), "{field} = {max}");
            let mut c = base;
            set(&mut c, max + 1 + (field == "local_conv_size") as u32);
            let err = c.validate().unwrap_err();
            match err {
                ConfigError::TooLarge {
                    field: f, max: m, ..
                } => {
                    // Setting the heads also sets the width, which is checked first.
                    let expected = if field == "num_heads[3]" {
                        "embed_dims[3]"
                    } else {
                        field
                    };
                    assert_eq!((f, m), (expected, max), "{field}");
                }
                e => panic!("{field}: {e:?}"),
            }
        }
        // Stage 0 has no attention: its head count and window are not checked.
        let mut c = base;
        c.window_sizes[0] = u32::MAX;
        c.num_heads[0] = 0;
        assert_eq!(c.validate(), Ok(()));
    }

    /// Defect 1 of issue 16: a window of 514 made the fast engine ask for 837 GB.
    #[test]
    fn a_window_of_514_is_refused_by_name() {
        let mut c = ModelConfig::tiny_vit_mcu_m4();
        c.window_sizes[2] = 514;
        let err = c.validate().unwrap_err();
        assert_eq!(
            err,
            ConfigError::TooLarge {
                field: "window_sizes[2]",
                value: 514,
                max: bounds::WINDOW
            }
        );
        assert_eq!(
            std::format!("{err}"),
            "config field `window_sizes[2]` is 514, above the largest supported value 128"
        );
    }

    /// Every preset stays inside the bounds, and so do the larger models users build from
    /// them: 21m at 1024 px with ImageNet-22k's 21,841 classes.
    #[test]
    fn presets_and_large_user_models_are_within_bounds() {
        let big = ModelConfig::tiny_vit_21m_512()
            .with_img_size(1024)
            .with_num_classes(21_841);
        assert_eq!(big.validate(), Ok(()));
        for name in PRESET_NAMES {
            ModelConfig::preset(name).unwrap().validate().unwrap();
        }
    }
}
