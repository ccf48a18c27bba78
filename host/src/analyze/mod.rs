//! `tinyvit analyze`: the paper's two analyses of what distillation transfers, as tools for a
//! user's own data.
//!
//! - [`hard`]: samples whose label lies outside the teacher's top-k (mostly label noise in the
//!   paper's ImageNet-21k study), with counts per class, a contact sheet, and an exclusion list
//!   that `tinyvit train --exclude` reads (the "cleaned labels" baseline).
//! - [`correlation`]: the class-by-class Pearson correlation of each model's logits, drawn as
//!   heatmaps, and how close each model's class structure is to the teacher's.
//!
//! Pictures are drawn by [`crate::draw`] (8x8 bitmap text, PNG).

pub mod correlation;
pub mod hard;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use tinyvit_core::config::ModelConfig;

use crate::data::Dataset;
use crate::train::loader::Source;
use crate::train::sources::EvalSource;

/// `tinyvit analyze` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum Args {
    /// Samples whose label is outside the teacher's top-k: list, per-class counts, contact
    /// sheet, exclusion list for `train --exclude`.
    Hard(hard::Args),
    /// Class-by-class correlation of model logits, heatmaps and similarity to the first model.
    Correlation(correlation::Args),
}

/// Runs `tinyvit analyze`.
pub fn main(a: Args) -> Result<()> {
    match a {
        Args::Hard(a) => hard::run(&a).map(|_| ()),
        Args::Correlation(a) => correlation::run(&a).map(|_| ()),
    }
}

/// Every sample's label; an error when the dataset is unlabelled.
pub fn labels(ds: &dyn Dataset) -> Result<Vec<u32>> {
    ensure!(
        ds.num_classes().is_some(),
        "{}: the analysis needs labelled data",
        ds.spec()
    );
    (0..ds.len())
        .map(|i| {
            ds.get(i)?
                .label
                .with_context(|| format!("{}: has no label", ds.name(i)))
        })
        .collect()
}

/// Class names shown in lists and pictures: from `--class-names` (a file with one name per
/// line, or `fashion-mnist` for that dataset's names), else the dataset's own, else the class
/// indices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassNames(pub Vec<String>);

impl ClassNames {
    /// Resolves the names of `classes` classes (see the type doc).
    pub fn resolve(file: Option<&Path>, ds: &dyn Dataset, classes: usize) -> Result<ClassNames> {
        let names = match file {
            Some(f) if f == Path::new("fashion-mnist") && !f.exists() => {
                ensure!(
                    classes == crate::data::FASHION_MNIST_CLASSES.len(),
                    "--class-names fashion-mnist: the data has {classes} classes, not 10"
                );
                crate::data::FASHION_MNIST_CLASSES
                    .iter()
                    .map(|s| s.to_string())
                    .collect()
            }
            Some(f) => {
                let text = std::fs::read_to_string(f)
                    .with_context(|| format!("reading class names {}", f.display()))?;
                let names: Vec<String> = text
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(String::from)
                    .collect();
                ensure!(
                    names.len() == classes,
                    "{}: {} class names, the data has {classes} classes",
                    f.display(),
                    names.len()
                );
                names
            }
            None => match ds.class_names() {
                Some(n) if n.len() == classes => n,
                _ => (0..classes).map(|c| c.to_string()).collect(),
            },
        };
        Ok(ClassNames(names))
    }

    /// The name of class `c` (its index when out of range).
    pub fn name(&self, c: usize) -> String {
        self.0.get(c).cloned().unwrap_or_else(|| c.to_string())
    }
}

/// A model file ready for the core's engines, with the input contract it was trained with: an
/// f32 model runs on the `fast` engine, an int8 file (`tinyvit quantize`) on the exact integer
/// engine, as `tinyvit infer` runs them.
pub struct EvalModel {
    pub config: ModelConfig,
    /// The weights.
    pub weights: EvalWeights,
    /// The model's input contract (its file's, with the `--mean`/`--std` overrides).
    pub contract: tinyvit_core::contract::Contract,
}

/// The weights of an [`EvalModel`].
pub enum EvalWeights {
    /// Folded f32 weights ([`tinyvit_core::engine::Weights::new`]).
    F32(Vec<f32>),
    /// The bytes of an int8 model file (parsed when loaded, so known to be valid).
    Int8(Vec<u8>),
}

impl EvalModel {
    /// Loads any file `tinyvit infer` reads, with its recorded config (the true input size)
    /// and input contract; `mean`/`std` (`r,g,b` on the 0..1 scale) override the file's
    /// normalisation, and files that record none use them or ImageNet's.
    pub fn load(path: &Path, mean: Option<&str>, std: Option<&str>) -> Result<EvalModel> {
        let flags = crate::contract::ContractArgs {
            mean: mean.map(String::from),
            std: std.map(String::from),
            ..Default::default()
        };
        let what = format!("model {}", path.display());
        if crate::infer_int8::is_int8(path) {
            let bytes =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let m = tinyvit_core::int8::parse(&bytes)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            let config = *m.config();
            let recorded = crate::infer_int8::recorded_contract(&m);
            let contract = flags.resolve(recorded, &config, &what)?;
            return Ok(EvalModel {
                config,
                weights: EvalWeights::Int8(bytes),
                contract,
            });
        }
        let l = crate::import::load(path, None, None, None)?;
        let contract = flags.resolve(l.contract, &l.config, &what)?;
        Ok(EvalModel {
            config: l.config,
            weights: EvalWeights::F32(l.blob),
            contract,
        })
    }

    /// The logits `[n, classes]` of `n` normalised inputs (from [`Self::inputs`]): the f32
    /// `fast` engine, or the int8 engine's logits dequantised to reals.
    pub fn logits(&self, input: &[f32], n: usize) -> Result<Vec<f32>> {
        match &self.weights {
            EvalWeights::F32(blob) => {
                crate::infer::run_engine(crate::infer::Engine::Fast, &self.config, blob, input, n)
            }
            EvalWeights::Int8(bytes) => {
                let m = tinyvit_core::int8::parse(bytes).map_err(|e| anyhow::anyhow!("{e}"))?;
                Ok(crate::infer_int8::int8_logits(&m, input, n)?.0)
            }
        }
    }

    /// The evaluation views of samples `picked` of `ds`, normalised: `[n, C, S, S]` f32.
    pub fn inputs(&self, ds: &Arc<dyn Dataset>, picked: &[usize]) -> Result<Vec<f32>> {
        let src = EvalSource {
            ds: Arc::clone(ds),
            indices: picked.to_vec(),
            size: self.config.img_size,
            channels: self.config.in_chans as usize,
            mean: self.contract.mean,
            std: self.contract.std,
            crop_fraction: self.contract.crop_fraction,
            interpolation: self.contract.interpolation,
        };
        let (c, h, w) = src.shape();
        let per = c * h * w;
        let mut out = vec![0.0f32; per * picked.len()];
        for (j, chunk) in out.chunks_exact_mut(per).enumerate() {
            src.sample(0, j, chunk)?;
        }
        Ok(out)
    }
}

/// Where an analysis writes its files: `dir`, created when missing.
pub fn out_dir(dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir.to_path_buf())
}
