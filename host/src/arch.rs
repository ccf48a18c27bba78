//! `--arch`: the one resolver of an architecture named on the command line, a preset name
//! (`tinyvit_core::config::PRESET_NAMES`) or a `ModelConfig` written as TOML (`FILE.toml`,
//! the form `tinyvit contract` writes its `best.toml` in).
//!
//! A TOML file holds the fields of `ModelConfig` at its top level; `drop_path_rate` may be
//! left out (0). Unknown fields are refused by name, and the config must pass
//! `ModelConfig::validate`; every error names the file and the field.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use tinyvit_core::config::{ModelConfig, PRESET_NAMES};

/// Whether `spec` names a TOML file rather than a preset.
pub fn is_file(spec: &str) -> bool {
    spec.ends_with(".toml")
}

/// The network `spec` names: a preset, or a TOML file (see the module doc).
pub fn resolve(spec: &str) -> Result<ModelConfig> {
    if is_file(spec) {
        return load(Path::new(spec));
    }
    ModelConfig::preset(spec).ok_or_else(|| {
        anyhow!(
            "unknown --arch `{spec}`: neither a preset ({}) nor a FILE.toml",
            PRESET_NAMES.join(", ")
        )
    })
}

/// Reads and validates a TOML config file.
pub fn load(path: &Path) -> Result<ModelConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading --arch {}", path.display()))?;
    parse(&text).with_context(|| format!("--arch {}", path.display()))
}

/// The field names of `ModelConfig`, from its own serialisation.
fn field_names() -> Vec<String> {
    match toml::Value::try_from(ModelConfig::tiny_vit_mcu_m4()) {
        Ok(toml::Value::Table(t)) => t.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

/// Parses and validates the text of a TOML config.
pub fn parse(text: &str) -> Result<ModelConfig> {
    let mut table: toml::Table = text.parse().map_err(|e| anyhow!("{e}"))?;
    let known = field_names();
    for key in table.keys() {
        if !known.iter().any(|k| k == key) {
            bail!(
                "unknown config field `{key}` (the fields are {})",
                known.join(", ")
            );
        }
    }
    table
        .entry("drop_path_rate")
        .or_insert(toml::Value::Float(0.0));
    for key in &known {
        if !table.contains_key(key) {
            bail!("missing config field `{key}`");
        }
    }
    let cfg: ModelConfig = toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| anyhow!("{}", e.message().trim()))?;
    cfg.validate().map_err(|e| anyhow!("{e}"))?;
    Ok(cfg)
}

/// `cfg` as TOML text that [`parse`] reads back to the same config.
pub fn to_toml(cfg: &ModelConfig) -> Result<String> {
    toml::to_string(cfg).map_err(|e| anyhow!("writing a config as TOML: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_and_toml_resolve_to_the_same_config() {
        for name in PRESET_NAMES {
            let cfg = resolve(name).unwrap();
            let text = to_toml(&cfg).unwrap();
            assert_eq!(parse(&text).unwrap(), cfg, "{name}");
        }
        let dir = std::env::temp_dir().join(format!("tinyvit-arch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("m4.toml");
        std::fs::write(&file, to_toml(&ModelConfig::tiny_vit_mcu_m4()).unwrap()).unwrap();
        assert_eq!(
            resolve(file.to_str().unwrap()).unwrap(),
            ModelConfig::tiny_vit_mcu_m4()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn errors_name_the_file_and_the_field() {
        let good = to_toml(&ModelConfig::tiny_vit_mcu_m4()).unwrap();
        // drop_path_rate may be left out.
        let without: String = good
            .lines()
            .filter(|l| !l.starts_with("drop_path_rate"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(parse(&without).unwrap(), ModelConfig::tiny_vit_mcu_m4());
        let err = |text: &str| format!("{:#}", parse(text).unwrap_err());
        let e = err(&good.replace("num_heads = [1, 2, 3, 4]", "num_heads = [1, 2, 5, 4]"));
        assert!(
            e.contains("embed_dims[2]") && e.contains("num_heads[2]"),
            "{e}"
        );
        let e = err(&format!("{good}\nwidth = 3\n"));
        assert!(e.contains("unknown config field `width`"), "{e}");
        let e = err(&good.replace("mlp_ratio = 4\n", ""));
        assert!(e.contains("missing config field `mlp_ratio`"), "{e}");
        let e = err(&good.replace("mlp_ratio = 4", "mlp_ratio = \"four\""));
        assert!(e.contains("u32") || e.contains("integer"), "{e}");
        let e = format!("{:#}", resolve("/nonexistent/x.toml").unwrap_err());
        assert!(e.contains("/nonexistent/x.toml"), "{e}");
        let e = format!("{:#}", resolve("tiny_vit_9m").unwrap_err());
        assert!(
            e.contains("tiny_vit_9m") && e.contains("tiny_vit_mcu_m4"),
            "{e}"
        );
    }
}
