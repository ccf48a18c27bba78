//! `tinyvit presets`: what every architecture preset of the core costs, in f32 and in int8.
//!
//! Computed from the core's own definitions ([`cost::cost`]), so a preset added there appears
//! here: the f32 weights are the folded blob and the arena the exact engine's; the int8 weights
//! are the data of the int8 file's layout (`i8` weights, `i32` biases and multipliers) and its
//! arena the integer engine's; instructions per inference are the core's model, fitted to QEMU
//! counts of the firmware. File headers (a few hundred bytes) are not counted.

use anyhow::{anyhow, Result};
use tinyvit_core::config::{ModelConfig, PRESET_NAMES};
use tinyvit_core::cost;

/// One row of `tinyvit presets`.
#[derive(Clone, Debug, PartialEq)]
pub struct PresetRow {
    pub name: String,
    pub config: ModelConfig,
    pub params: u64,
    /// Folded f32 weight bytes (what a `.tvb` carries, without its header).
    pub weight_bytes: u64,
    /// Exact-engine arena bytes for one image.
    pub arena_bytes: u64,
    /// Int8 model data bytes (what an int8 `.tvb` carries, without its header).
    pub int8_bytes: u64,
    /// Int8-engine arena bytes for one image.
    pub int8_arena_bytes: u64,
    /// Multiply-accumulates of one inference.
    pub macs: u64,
    /// Modelled instructions per inference on Cortex-M4 (`tinyvit_core::cost`): f32, int8.
    pub m4_instructions: [u64; 2],
}

/// Sizes of one network, shown as `name`.
pub fn row(name: &str, cfg: &ModelConfig) -> Result<PresetRow> {
    let c = cost::cost(cfg).map_err(|e| anyhow!("{name}: {e}"))?;
    Ok(PresetRow {
        name: name.to_string(),
        config: *cfg,
        params: c.params,
        weight_bytes: c.f32_bytes,
        arena_bytes: c.f32_arena_bytes,
        int8_bytes: c.int8_bytes,
        int8_arena_bytes: c.int8_arena_bytes,
        macs: c.macs,
        m4_instructions: [c.f32_instructions[0], c.int8_instructions[0]],
    })
}

/// Sizes of every preset.
pub fn preset_rows() -> Result<Vec<PresetRow>> {
    PRESET_NAMES
        .iter()
        .map(|name| {
            let cfg = ModelConfig::preset(name).ok_or_else(|| anyhow!("preset {name}"))?;
            row(name, &cfg)
        })
        .collect()
}

/// `tinyvit presets`' options.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct PresetsArgs {
    /// Show only this architecture: a preset or a FILE.toml (`ModelConfig` as TOML).
    #[arg(long)]
    pub arch: Option<String>,
}

fn bytes(b: u64) -> String {
    if b >= 1 << 20 {
        format!("{b} B ({:.1} MiB)", b as f64 / (1 << 20) as f64)
    } else {
        format!("{b} B ({:.1} KiB)", b as f64 / 1024.0)
    }
}

/// Runs `tinyvit presets`: prints a Markdown table of every preset, or of `--arch` alone.
pub fn run(args: &PresetsArgs) -> Result<()> {
    let rows = match &args.arch {
        Some(a) => vec![row(a, &crate::arch::resolve(a)?)?],
        None => preset_rows()?,
    };
    println!(
        "| preset | input | classes | params | weights f32 (folded) | exact arena | weights int8 \
         | int8 arena | MACs | instructions M4 f32 / int8 (modelled) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let cfg = r.config;
        println!(
            "| {} | {}x{}x{} | {} | {} | {} | {} | {} ({:.2}x) | {} | {} | {} / {} |",
            r.name,
            cfg.in_chans,
            cfg.img_size,
            cfg.img_size,
            cfg.num_classes,
            r.params,
            bytes(r.weight_bytes),
            bytes(r.arena_bytes),
            bytes(r.int8_bytes),
            r.int8_bytes as f64 / r.weight_bytes as f64,
            bytes(r.int8_arena_bytes),
            r.macs,
            r.m4_instructions[0],
            r.m4_instructions[1],
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tinyvit_core::int8;

    #[test]
    fn mcu_presets_are_within_budget_in_the_table() {
        let rows = preset_rows().unwrap();
        let h7 = rows.iter().find(|r| r.name == "tiny_vit_mcu_h7").unwrap();
        let m4 = rows.iter().find(|r| r.name == "tiny_vit_mcu_m4").unwrap();
        assert!(h7.weight_bytes <= 1_500_000 && h7.arena_bytes <= 384 * 1024);
        assert!(m4.weight_bytes <= 800_000 && m4.arena_bytes <= 192 * 1024);
    }

    /// Every preset has a row, and its int8 figures are the core's: the int8 weights at most
    /// 0.30x the f32 ones (5-byte multipliers and `i32` biases per output channel come on top
    /// of the `i8` weights), the arena the integer engine's.
    #[test]
    fn every_preset_has_its_int8_sizes() {
        let rows = preset_rows().unwrap();
        assert_eq!(rows.len(), PRESET_NAMES.len());
        for r in &rows {
            let cfg = ModelConfig::preset(&r.name).unwrap();
            assert_eq!(r.int8_bytes, int8::layout::data_len(&cfg) as u64);
            assert_eq!(
                r.int8_arena_bytes,
                int8::arena_len(&cfg).unwrap() as u64 * 4
            );
            assert!(
                r.int8_bytes * 100 <= r.weight_bytes * 30,
                "{}: int8 {} B against f32 {} B",
                r.name,
                r.int8_bytes,
                r.weight_bytes
            );
            assert!(r.int8_arena_bytes > 0 && r.int8_bytes > r.params / 2);
        }
    }
}
