//! The trainer's part of a training checkpoint: where the run stands ([`TrainState`]) and the
//! AdamW moments, saved with the weights by [`crate::checkpoint`] and restored on `--resume`.
//!
//! Every random stream of training (shuffling, augmentation, mixup, DropPath) is derived from
//! the run seed and the (epoch, step) position, so the state below is the whole RNG state.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};
use tinyvit_core::config::ModelConfig;

use super::optim::{AdamW, LossScaler};
use crate::checkpoint::{self, Contract, Loaded};

/// Where a training run stands; enough to continue it exactly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Epoch the next micro-batch belongs to (0-based).
    pub epoch: u64,
    /// Index of the next micro-batch within that epoch.
    pub batch: u64,
    /// Optimizer updates applied so far.
    pub step: u64,
    /// The run seed (all random streams derive from it and the position).
    pub seed: u64,
    /// fp16 loss scaler.
    pub scaler: LossScaler,
    /// Wall seconds spent training so far (summed over resumed segments).
    pub train_seconds: f64,
    /// Images seen so far.
    pub images: u64,
}

/// Saves a training checkpoint: weights, AdamW moments (`optimizer.m.<name>`,
/// `optimizer.v.<name>`) and `state`.
pub fn save(
    path: &Path,
    vs: &nn::VarStore,
    config: &ModelConfig,
    input: &Contract,
    opt: &AdamW,
    state: &TrainState,
) -> Result<()> {
    let mut tensors = Vec::with_capacity(2 * opt.params.len());
    for p in &opt.params {
        tensors.push((format!("optimizer.m.{}", p.name), &p.m));
        tensors.push((format!("optimizer.v.{}", p.name), &p.v));
    }
    let training = checkpoint::Training {
        tensors,
        state_json: serde_json::to_string(state)?,
    };
    checkpoint::save(path, vs, config, Some(input), Some(training))
}

/// The training state of a loaded checkpoint (`None` for a weights-only file).
pub fn state_of(l: &Loaded, what: &str) -> Result<Option<TrainState>> {
    l.state
        .as_deref()
        .map(serde_json::from_str)
        .transpose()
        .with_context(|| format!("{what}: metadata `tinyvit.state`"))
}

/// Restores optimizer moments saved by [`save`].
pub fn restore_optimizer(
    opt: &mut AdamW,
    tensors: &HashMap<String, Tensor>,
    what: &str,
) -> Result<()> {
    tch::no_grad(|| -> Result<()> {
        for p in &mut opt.params {
            for (prefix, dst) in [("optimizer.m.", &mut p.m), ("optimizer.v.", &mut p.v)] {
                let key = format!("{prefix}{}", p.name);
                let src = tensors
                    .get(&key)
                    .with_context(|| format!("{what}: optimizer tensor `{key}` is missing"))?;
                ensure!(
                    src.size() == dst.size(),
                    "{what}: `{key}` has shape {:?}, wanted {:?}",
                    src.size(),
                    dst.size()
                );
                dst.copy_(&src.to_device(dst.device()));
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TinyVit;
    use tch::{Device, Kind};

    #[test]
    fn round_trip_with_state_and_moments() {
        let dir = std::env::temp_dir().join(format!("tinyvit-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = ModelConfig::tiny_vit_5m_224()
            .with_img_size(32)
            .with_num_classes(7);
        let vs = nn::VarStore::new(Device::Cpu);
        let _m = TinyVit::new(&vs.root(), &cfg).unwrap();
        let entries = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .map(|(n, t)| (n, t, true, 1.0))
            .collect();
        let mut opt = AdamW::new(entries, 0.05);
        tch::no_grad(|| {
            for p in &mut opt.params {
                let _ = p.m.g_add_scalar_(0.25);
            }
        });
        let state = TrainState {
            epoch: 3,
            batch: 5,
            step: 41,
            seed: 9,
            scaler: LossScaler::new(false),
            train_seconds: 1.5,
            images: 100,
        };
        let path = dir.join("last.safetensors");
        let input = Contract {
            mean: [0.5; 3],
            std: [0.25; 3],
            ..Contract::default()
        };
        save(&path, &vs, &cfg, &input, &opt, &state).unwrap();
        let l = checkpoint::load(&path, None).unwrap();
        assert_eq!(state_of(&l, "test").unwrap().as_ref(), Some(&state));
        assert!(l.tensors.contains_key("optimizer.v.head.weight"));
        assert_eq!(l.tensors["optimizer.v.head.weight"].kind(), Kind::Float);
        let mut opt2 = AdamW::new(
            vs.variables()
                .into_iter()
                .filter(|(_, t)| t.requires_grad())
                .map(|(n, t)| (n, t, true, 1.0))
                .collect(),
            0.05,
        );
        restore_optimizer(&mut opt2, &l.tensors, "test").unwrap();
        for (a, b) in opt.params.iter().zip(&opt2.params) {
            assert!(a.m.equal(&b.m) && a.v.equal(&b.v), "{}", a.name);
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}
