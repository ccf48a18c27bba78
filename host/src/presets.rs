//! `tinyvit presets`: what every architecture preset of the core costs, in f32 and in int8.
//!
//! Computed from the core's own definitions, so a preset added there appears here: the f32
//! weights are the folded blob ([`folded_blob_len`]) and the arena the exact engine's
//! ([`arena_len`]); the int8 weights are the data of the int8 file's layout
//! ([`int8::layout::data_len`]: `i8` weights, `i32` biases and multipliers) and its arena the
//! integer engine's ([`int8::arena_len`]). File headers (a few hundred bytes) are not counted.

use anyhow::{anyhow, Result};
use tinyvit_core::config::{ModelConfig, PRESET_NAMES};
use tinyvit_core::engine::arena_len;
use tinyvit_core::int8;
use tinyvit_core::params::{folded_blob_len, param_count};

/// One row of `tinyvit presets`.
#[derive(Clone, Debug, PartialEq)]
pub struct PresetRow {
    pub name: &'static str,
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
}

/// Sizes of every preset.
pub fn preset_rows() -> Result<Vec<PresetRow>> {
    PRESET_NAMES
        .iter()
        .map(|name| {
            let cfg = ModelConfig::preset(name).ok_or_else(|| anyhow!("preset {name}"))?;
            Ok(PresetRow {
                name,
                config: cfg,
                params: param_count(&cfg),
                weight_bytes: folded_blob_len(&cfg) as u64 * 4,
                arena_bytes: arena_len(&cfg).map_err(|e| anyhow!("{name}: {e}"))? as u64 * 4,
                int8_bytes: int8::layout::data_len(&cfg) as u64,
                int8_arena_bytes: int8::arena_len(&cfg).map_err(|e| anyhow!("{name}: int8: {e}"))?
                    as u64
                    * 4,
            })
        })
        .collect()
}

fn bytes(b: u64) -> String {
    if b >= 1 << 20 {
        format!("{b} B ({:.1} MiB)", b as f64 / (1 << 20) as f64)
    } else {
        format!("{b} B ({:.1} KiB)", b as f64 / 1024.0)
    }
}

/// Runs `tinyvit presets`: prints a Markdown table.
pub fn run() -> Result<()> {
    println!(
        "| preset | input | classes | params | weights f32 (folded) | exact arena | weights int8 \
         | int8 arena |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for r in preset_rows()? {
        let cfg = r.config;
        println!(
            "| {} | {}x{}x{} | {} | {} | {} | {} | {} ({:.2}x) | {} |",
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
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
            let cfg = ModelConfig::preset(r.name).unwrap();
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
