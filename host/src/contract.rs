//! The host side of a model's input contract ([`tinyvit_core::contract`]): the flags that
//! override what a model file records, class-name files, and the contract a command uses when
//! the file records none (ImageNet's normalisation, said once on stderr).
//!
//! Precedence: an explicit flag, then the file's contract, then the defaults.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, ValueEnum};
use tinyvit_core::aug::{self, AugConfig, Interpolation, IMAGENET_MEAN, IMAGENET_STD};
use tinyvit_core::config::ModelConfig;
use tinyvit_core::contract::{check_class_name, Contract};

/// Resampling filter of the evaluation resize.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum InterpolationArg {
    Bilinear,
    Bicubic,
}

impl From<InterpolationArg> for Interpolation {
    fn from(a: InterpolationArg) -> Self {
        match a {
            InterpolationArg::Bilinear => Interpolation::Bilinear,
            InterpolationArg::Bicubic => Interpolation::Bicubic,
        }
    }
}

/// Flags that override a model's recorded input contract.
#[derive(Args, Clone, Debug, Default)]
pub struct ContractArgs {
    /// Named normalisation (`imagenet`, `clip`, `half` = 0.5/0.5); overrides the model's own.
    #[arg(long)]
    pub norm: Option<String>,
    /// Normalisation mean `r,g,b` (0..1 scale); overrides the model's own.
    #[arg(long)]
    pub mean: Option<String>,
    /// Normalisation std `r,g,b` (0..1 scale); overrides the model's own.
    #[arg(long)]
    pub std: Option<String>,
    /// Filter of the evaluation resize; overrides the model's own.
    #[arg(long, value_enum)]
    pub interpolation: Option<InterpolationArg>,
    /// Centre-crop fraction of the evaluation transform, in (0, 1]; overrides the model's own.
    #[arg(long)]
    pub crop_fraction: Option<f32>,
    /// Class names, one per line in class order; overrides the model's own.
    #[arg(long)]
    pub class_names: Option<PathBuf>,
}

impl ContractArgs {
    /// Whether any normalisation flag is given.
    pub fn sets_norm(&self) -> bool {
        self.norm.is_some() || self.mean.is_some() || self.std.is_some()
    }

    /// The contract for `cfg`: `recorded` (the model file's) or, when it has none, ImageNet's
    /// normalisation and the project's evaluation transform (a notice naming `what` says so
    /// unless flags set the normalisation); then every flag given.
    pub fn resolve(
        &self,
        recorded: Option<Contract>,
        cfg: &ModelConfig,
        what: &str,
    ) -> Result<Contract> {
        let mut c = match recorded {
            Some(c) => c,
            None => {
                if !self.sets_norm() {
                    eprintln!(
                        "note: {what} records no input contract; using ImageNet mean/std \
                         (--norm, --mean, --std override)"
                    );
                }
                Contract {
                    mean: IMAGENET_MEAN,
                    std: IMAGENET_STD,
                    ..Contract::default()
                }
            }
        };
        let (mean, std) = parse_norm(
            (c.mean, c.std),
            self.norm.as_deref(),
            self.mean.as_deref(),
            self.std.as_deref(),
            NORM_FLAGS,
        )?;
        c.mean = mean;
        c.std = std;
        if let Some(i) = self.interpolation {
            c.interpolation = i.into();
        }
        if let Some(f) = self.crop_fraction {
            c.crop_fraction = f;
        }
        if let Some(p) = &self.class_names {
            c.class_names = read_class_names(p)?;
            if c.class_names.len() != cfg.num_classes as usize {
                bail!(
                    "--class-names {}: {} names, the model has {} classes",
                    p.display(),
                    c.class_names.len(),
                    cfg.num_classes
                );
            }
        }
        c.resolve(cfg).map_err(|e| anyhow!("{what}: {e}"))
    }
}

/// Names of the normalisation flags of a model's own input.
pub const NORM_FLAGS: [&str; 3] = ["--norm", "--mean", "--std"];

/// `base` normalisation with a named preset (`imagenet`, `clip`, `half`), then `mean` and
/// `std` (`r,g,b` on the 0..1 scale) applied; errors name the flag (`flags`: the names of
/// the three).
pub fn parse_norm(
    base: ([f32; 3], [f32; 3]),
    norm: Option<&str>,
    mean: Option<&str>,
    std: Option<&str>,
    flags: [&str; 3],
) -> Result<([f32; 3], [f32; 3])> {
    // The augmentation config parses the names and `r,g,b` lists; only its mean and std are used.
    let mut a: AugConfig = aug::preset("light").map_err(|e| anyhow!("{e}"))?;
    a.mean = base.0;
    a.std = base.1;
    for ((key, v), flag) in [("norm", norm), ("mean", mean), ("std", std)]
        .into_iter()
        .zip(flags)
    {
        if let Some(v) = v {
            a.set(key, v).map_err(|e| anyhow!("{flag} {v}: {e}"))?;
        }
    }
    Ok((a.mean, a.std))
}

/// Reads a class-name file: one name per line, in class order (a final newline and `\r` line
/// ends are allowed). Every name is checked ([`check_class_name`]); errors name the file and
/// the line.
pub fn read_class_names(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading class names {}", path.display()))?;
    let body = text.strip_suffix('\n').unwrap_or(&text);
    let mut names = Vec::new();
    for (i, line) in body.split('\n').enumerate() {
        let name = line.strip_suffix('\r').unwrap_or(line);
        check_class_name(i as u32, name)
            .map_err(|e| anyhow!("{} line {}: {e}", path.display(), i + 1))?;
        names.push(name.to_string());
    }
    Ok(names)
}

/// The class names of `contract` that fit `classes` outputs; names of another count are
/// dropped with a one-line notice naming `source`.
pub fn fitting_names(names: Vec<String>, classes: u32, source: &str) -> Vec<String> {
    if names.is_empty() {
        return names;
    }
    if let Some((i, e)) = names
        .iter()
        .enumerate()
        .find_map(|(i, n)| check_class_name(i as u32, n).err().map(|e| (i, e)))
    {
        eprintln!("note: {source}: class {i}: {e}; no class names recorded");
        return Vec::new();
    }
    if names.len() == classes as usize {
        return names;
    }
    eprintln!(
        "note: {source} names {} classes, the model has {classes}; no class names recorded",
        names.len()
    );
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_recorded_contract() {
        let cfg = ModelConfig::tiny_vit_mcu_m4();
        let recorded = Contract {
            mean: [0.5; 3],
            std: [0.5; 3],
            ..Contract::default()
        };
        let none = ContractArgs::default();
        let c = none.resolve(Some(recorded.clone()), &cfg, "m").unwrap();
        assert_eq!(
            (c.mean, c.size, c.channels),
            ([0.5; 3], cfg.img_size, cfg.in_chans)
        );
        let c = none.resolve(None, &cfg, "m").unwrap();
        assert_eq!(c.mean, IMAGENET_MEAN);
        let flags = ContractArgs {
            norm: Some("imagenet".into()),
            std: Some("0.2,0.2,0.2".into()),
            crop_fraction: Some(1.0),
            interpolation: Some(InterpolationArg::Bilinear),
            ..ContractArgs::default()
        };
        let c = flags.resolve(Some(recorded), &cfg, "m").unwrap();
        assert_eq!((c.mean, c.std), (IMAGENET_MEAN, [0.2; 3]));
        assert_eq!(c.crop_fraction, 1.0);
        assert_eq!(c.interpolation, Interpolation::Bilinear);
        let bad = ContractArgs {
            crop_fraction: Some(1.5),
            ..ContractArgs::default()
        };
        let e = format!("{:#}", bad.resolve(None, &cfg, "m").unwrap_err());
        assert!(e.contains("crop_fraction"), "{e}");
    }

    #[test]
    fn class_name_files_are_checked_by_line() {
        let p = std::env::temp_dir().join(format!("tinyvit-names-{}.txt", std::process::id()));
        std::fs::write(&p, "cat\r\ndog\n").unwrap();
        assert_eq!(read_class_names(&p).unwrap(), ["cat", "dog"]);
        let cfg = ModelConfig::tiny_vit_mcu_m4();
        let args = ContractArgs {
            class_names: Some(p.clone()),
            ..ContractArgs::default()
        };
        let e = format!("{:#}", args.resolve(None, &cfg, "m").unwrap_err());
        assert!(e.contains("2 names") && e.contains("10 classes"), "{e}");
        std::fs::write(&p, "cat\n\ndog\n").unwrap();
        let e = format!("{:#}", read_class_names(&p).unwrap_err());
        assert!(e.contains("line 2") && e.contains("empty"), "{e}");
        std::fs::remove_file(&p).unwrap();
    }
}
