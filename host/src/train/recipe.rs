//! Training recipes: every optimisation and augmentation knob in one serialisable struct, with
//! presets from the reference (the official `TinyViT/configs/` YAML files of microsoft/Cream)
//! and a small-data preset
//! for 28-64 px CPU runs.
//!
//! Precedence: preset (`--recipe`), then a TOML file (`--config FILE.toml`, any subset of the
//! fields below), then command-line flags. The resolved recipe is written to
//! `RUN_DIR/config.toml`, and `--config RUN_DIR/config.toml` reproduces the run.
//!
//! Learning rates (`lr`, `warmup_lr`, `min_lr`) are stated for a total batch of 512, as the
//! reference states them; the run uses `lr * batch_size * accum / 512`.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use tinyvit_core::aug::MixConfig;

/// Names of the presets, for `--help` and errors.
pub const RECIPES: &[&str] = &[
    "in22k-distill",
    "in1k-scratch",
    "finetune",
    "finetune-highres",
    "small",
];

/// Every knob of a training run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Recipe {
    /// Preset this recipe started from.
    pub name: String,
    pub epochs: u64,
    /// Linear warmup length in epochs (fractions allowed).
    pub warmup_epochs: f64,
    /// Micro-batch size per step.
    pub batch_size: u64,
    /// Gradient accumulation: micro-batches per optimizer update.
    pub accum: u64,
    /// Peak learning rate at total batch 512.
    pub lr: f64,
    /// Warmup start learning rate at total batch 512.
    pub warmup_lr: f64,
    /// Final learning rate at total batch 512.
    pub min_lr: f64,
    pub weight_decay: f64,
    /// Max global gradient norm (0 = no clipping).
    pub clip_grad: f64,
    /// Label smoothing of the labels baseline.
    pub label_smoothing: f64,
    /// Stochastic depth of the last block; `None` keeps the architecture's default.
    pub drop_path: Option<f64>,
    pub mixup: f64,
    pub cutmix: f64,
    pub mix_prob: f64,
    pub mix_switch_prob: f64,
    /// Layer-wise lr decay (1.0 = off).
    pub layer_decay: f64,
    /// BatchNorm in eval mode during training (fine-tuning recipes).
    pub freeze_bn: bool,
    /// fp16 autocast with loss scaling (CUDA only; ignored on CPU).
    pub amp: bool,
    /// Augmentation preset name of the core codec (`--labels` and `--teacher` runs; a store
    /// carries its own).
    pub aug: String,
    /// Data loading threads.
    pub workers: usize,
    /// Batches queued ahead of the compute.
    pub prefetch: usize,
    /// Log a training record every this many optimizer steps.
    pub log_every: u64,
    /// Write `last.safetensors` every this many optimizer steps (0 = only at epoch ends).
    pub ckpt_every: u64,
    /// Run seed (shuffling, augmentation seeds of non-store runs, mixup, DropPath, init).
    pub seed: u64,
    /// Batch size of evaluation.
    pub eval_batch_size: u64,
}

impl Default for Recipe {
    fn default() -> Self {
        Recipe::preset("in1k-scratch").expect("built-in preset")
    }
}

impl Recipe {
    /// A named preset.
    pub fn preset(name: &str) -> Result<Self> {
        let base = Recipe {
            name: name.to_string(),
            epochs: 300,
            warmup_epochs: 20.0,
            batch_size: 128,
            accum: 1,
            lr: 5e-4,
            warmup_lr: 5e-7,
            min_lr: 5e-6,
            weight_decay: 0.05,
            clip_grad: 5.0,
            label_smoothing: 0.1,
            drop_path: None,
            mixup: 0.8,
            cutmix: 1.0,
            mix_prob: 1.0,
            mix_switch_prob: 0.5,
            layer_decay: 1.0,
            freeze_bn: false,
            amp: true,
            aug: "in1k-scratch".to_string(),
            workers: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
                .min(8),
            prefetch: 4,
            log_every: 10,
            ckpt_every: 0,
            seed: 0,
            eval_batch_size: 256,
        };
        Ok(match name {
            // 1k from scratch: 300 (20) epochs, 1e-3 at 1024, wd 0.05, mixup 0.8 / cutmix 1.0.
            "in1k-scratch" => base,
            // 22k distillation: 90 (5) epochs, ~2e-3 at 4096, wd 0.01, no mixup/cutmix.
            "in22k-distill" => Recipe {
                epochs: 90,
                warmup_epochs: 5.0,
                lr: 2.5e-4,
                warmup_lr: 2.5e-7,
                min_lr: 2.5e-6,
                weight_decay: 0.01,
                mixup: 0.0,
                cutmix: 0.0,
                aug: "in22k-distill".to_string(),
                ..base
            },
            // 22k -> 1k fine-tune: 30 (5) epochs, 5e-4 at 1024, wd 1e-8, layer decay 0.8, BN
            // frozen, min lr 1e-5 at 1024.
            "finetune" => Recipe {
                epochs: 30,
                warmup_epochs: 5.0,
                lr: 2.5e-4,
                warmup_lr: 2.5e-7,
                min_lr: 5e-6,
                weight_decay: 1e-8,
                layer_decay: 0.8,
                freeze_bn: true,
                ..base
            },
            // 224 -> 384 -> 512: 30 (5) epochs, 2e-5 with accum 4, wd 1e-8, drop path 0.1, BN
            // frozen.
            "finetune-highres" => Recipe {
                epochs: 30,
                warmup_epochs: 5.0,
                accum: 4,
                lr: 2e-5 * 512.0 / (128.0 * 4.0),
                warmup_lr: 2e-8,
                min_lr: 2e-7,
                weight_decay: 1e-8,
                drop_path: Some(0.1),
                freeze_bn: true,
                ..base
            },
            // Small images (28-64 px) on a CPU: short, no mixup, light augmentation.
            "small" => Recipe {
                epochs: 10,
                warmup_epochs: 1.0,
                batch_size: 64,
                lr: 8e-3,
                warmup_lr: 8e-5,
                min_lr: 8e-5,
                weight_decay: 0.05,
                drop_path: Some(0.0),
                mixup: 0.0,
                cutmix: 0.0,
                aug: "light".to_string(),
                amp: false,
                log_every: 5,
                eval_batch_size: 256,
                ..base
            },
            other => bail!("unknown recipe `{other}` (known: {})", RECIPES.join(", ")),
        })
    }

    /// Applies a TOML file's fields over this recipe (fields absent from the file keep their
    /// value).
    pub fn merge_toml(self, path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        let over: toml::Table =
            toml::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
        let mut base = toml::Table::try_from(&self)?;
        for (k, v) in over {
            base.insert(k, v);
        }
        base.try_into().with_context(|| {
            format!(
                "{}: a field has the wrong type or an unknown name",
                path.display()
            )
        })
    }

    /// Writes the recipe as TOML.
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = toml::to_string_pretty(self)?;
        crate::store::write_file(path, text.as_bytes())
    }

    /// Total images per optimizer update.
    pub fn total_batch(&self) -> u64 {
        self.batch_size * self.accum
    }

    /// A learning rate stated at batch 512, scaled to this run's total batch.
    pub fn scaled(&self, lr_at_512: f64) -> f64 {
        lr_at_512 * self.total_batch() as f64 / 512.0
    }

    /// The mixup / CutMix settings of `--labels` runs; `None` when they mix nothing.
    pub fn mix(&self) -> Option<MixConfig> {
        let active = self.mix_prob > 0.0 && (self.mixup > 0.0 || self.cutmix > 0.0);
        active.then_some(MixConfig {
            mixup_alpha: self.mixup as f32,
            cutmix_alpha: self.cutmix as f32,
            prob: self.mix_prob as f32,
            switch_prob: self.mix_switch_prob as f32,
        })
    }

    /// Rejects values no run can use.
    pub fn validate(&self) -> Result<()> {
        if self.epochs == 0 || self.batch_size == 0 || self.accum == 0 {
            bail!("recipe: epochs, batch_size and accum must be positive");
        }
        if self.lr.is_nan() || self.lr <= 0.0 || self.min_lr < 0.0 || self.warmup_lr < 0.0 {
            bail!("recipe: lr must be positive, min_lr and warmup_lr non-negative");
        }
        if !(0.0..1.0).contains(&self.drop_path.unwrap_or(0.0)) {
            bail!("recipe: drop_path must be in [0, 1)");
        }
        if !(0.0..=1.0).contains(&self.label_smoothing) {
            bail!("recipe: label_smoothing must be in [0, 1]");
        }
        for (name, v) in [("mixup", self.mixup), ("cutmix", self.cutmix)] {
            if !(0.0..=100.0).contains(&v) {
                bail!("recipe: {name} (a Beta alpha) must be in [0, 100], got {v}");
            }
        }
        for (name, v) in [
            ("mix_prob", self.mix_prob),
            ("mix_switch_prob", self.mix_switch_prob),
        ] {
            if !(0.0..=1.0).contains(&v) {
                bail!("recipe: {name} must be in [0, 1], got {v}");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_match_reference_table() {
        let d = Recipe::preset("in22k-distill").unwrap();
        let d = Recipe {
            batch_size: 4096,
            ..d
        };
        assert!((d.scaled(d.lr) - 2e-3).abs() < 1e-12);
        assert_eq!((d.epochs, d.warmup_epochs, d.weight_decay), (90, 5.0, 0.01));
        assert_eq!((d.mixup, d.cutmix), (0.0, 0.0));
        let s = Recipe {
            batch_size: 1024,
            ..Recipe::preset("in1k-scratch").unwrap()
        };
        assert!((s.scaled(s.lr) - 1e-3).abs() < 1e-12);
        let f = Recipe {
            batch_size: 1024,
            ..Recipe::preset("finetune").unwrap()
        };
        assert!((f.scaled(f.lr) - 5e-4).abs() < 1e-12);
        assert!((f.scaled(f.min_lr) - 1e-5).abs() < 1e-12);
        assert!(f.freeze_bn && f.layer_decay == 0.8);
        assert!(Recipe::preset("nope").is_err());
        for n in RECIPES {
            Recipe::preset(n).unwrap().validate().unwrap();
        }
    }

    #[test]
    fn toml_overrides_and_round_trip() {
        let dir = std::env::temp_dir().join(format!("tinyvit-recipe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("over.toml");
        std::fs::write(&p, "epochs = 3\nlr = 0.01\ndrop_path = 0.05\n").unwrap();
        let r = Recipe::preset("small").unwrap().merge_toml(&p).unwrap();
        assert_eq!((r.epochs, r.lr, r.drop_path), (3, 0.01, Some(0.05)));
        assert_eq!(r.batch_size, 64);
        let saved = dir.join("config.toml");
        r.save(&saved).unwrap();
        let back = Recipe::preset("in1k-scratch")
            .unwrap()
            .merge_toml(&saved)
            .unwrap();
        assert_eq!(back, r);
        std::fs::write(&p, "epochz = 3\n").unwrap();
        let err = Recipe::preset("small").unwrap().merge_toml(&p).unwrap_err();
        assert!(format!("{err:#}").contains("epochz"), "{err:#}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
