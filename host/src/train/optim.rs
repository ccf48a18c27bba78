//! The reference optimisation: AdamW with decoupled weight decay, a per-step cosine schedule
//! with linear warmup, gradient clipping by global norm, and a dynamic loss scaler for fp16.
//!
//! AdamW is written here on tensors (not libtorch's optimizer object) so its moments can be
//! saved in a checkpoint and restored bit for bit; the update is PyTorch's `AdamW` exactly:
//!
//! ```text
//! p <- p * (1 - lr * wd)                        (only for decayed parameters)
//! m <- b1 m + (1 - b1) g ;  v <- b2 v + (1 - b2) g^2
//! p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
//! ```
//!
//! Each parameter carries its own lr scale (layer-wise lr decay in fine-tuning; 1.0 otherwise).

use tch::{Kind, Tensor};

/// One optimised tensor and its AdamW state.
#[derive(Debug)]
pub struct Param {
    /// Official state_dict name.
    pub name: String,
    /// The variable (shares storage with the model's VarStore).
    pub tensor: Tensor,
    /// First moment.
    pub m: Tensor,
    /// Second moment.
    pub v: Tensor,
    /// Whether weight decay applies (not to 1-D params, biases, attention biases).
    pub decay: bool,
    /// Multiplier on the learning rate (layer-wise decay).
    pub lr_scale: f64,
}

/// AdamW over named parameters.
#[derive(Debug)]
pub struct AdamW {
    /// Parameters in a stable order (sorted by name).
    pub params: Vec<Param>,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Number of updates applied so far (AdamW's `t`).
    pub t: u64,
}

impl AdamW {
    /// AdamW (0.9, 0.999, 1e-8) over `(name, tensor, decay, lr_scale)` entries.
    pub fn new(entries: Vec<(String, Tensor, bool, f64)>, weight_decay: f64) -> Self {
        let mut params: Vec<Param> = entries
            .into_iter()
            .map(|(name, tensor, decay, lr_scale)| {
                let m = tensor.zeros_like().set_requires_grad(false);
                let v = tensor.zeros_like().set_requires_grad(false);
                Param {
                    name,
                    tensor,
                    m,
                    v,
                    decay,
                    lr_scale,
                }
            })
            .collect();
        params.sort_by(|a, b| a.name.cmp(&b.name));
        AdamW {
            params,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            t: 0,
        }
    }

    /// Clears every gradient.
    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            let mut g = p.tensor.grad();
            if g.defined() {
                let _ = g.detach_().zero_();
            }
        }
    }

    /// Multiplies every gradient by `s` (loss-scale removal, accumulation averaging).
    pub fn scale_grads(&mut self, s: f64) {
        tch::no_grad(|| {
            for p in &self.params {
                let mut g = p.tensor.grad();
                if g.defined() {
                    let _ = g.g_mul_scalar_(s);
                }
            }
        });
    }

    /// Global L2 norm of all gradients (f64; NaN or inf when some gradient is not finite).
    pub fn grad_norm(&self) -> f64 {
        tch::no_grad(|| {
            let mut total: Option<Tensor> = None;
            for p in &self.params {
                let g = p.tensor.grad();
                if g.defined() {
                    let s = g.to_kind(Kind::Float).square().sum(Kind::Float);
                    total = Some(match total {
                        None => s,
                        Some(t) => t + s,
                    });
                }
            }
            total.map(|t| t.sqrt().double_value(&[])).unwrap_or(0.0)
        })
    }

    /// Clips gradients to `max_norm` by global norm (as `clip_grad_norm_`); returns the norm
    /// before clipping.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> f64 {
        let norm = self.grad_norm();
        if max_norm > 0.0 && norm.is_finite() {
            let coef = max_norm / (norm + 1e-6);
            if coef < 1.0 {
                self.scale_grads(coef);
            }
        }
        norm
    }

    /// Applies one AdamW update at learning rate `lr` (times each parameter's scale).
    pub fn step(&mut self, lr: f64) {
        self.t += 1;
        let t = self.t as i32;
        let bc1 = 1.0 - self.beta1.powi(t);
        let bc2 = 1.0 - self.beta2.powi(t);
        let (b1, b2, eps, wd) = (self.beta1, self.beta2, self.eps, self.weight_decay);
        tch::no_grad(|| {
            for p in &mut self.params {
                let g = p.tensor.grad();
                if !g.defined() {
                    continue;
                }
                let lr_p = lr * p.lr_scale;
                let mut w = p.tensor.shallow_clone();
                if p.decay && wd != 0.0 {
                    let _ = w.g_mul_scalar_(1.0 - lr_p * wd);
                }
                let _ = p.m.g_mul_scalar_(b1);
                let _ = p.m.g_add_(&(&g * (1.0 - b1)));
                let _ = p.v.g_mul_scalar_(b2);
                let _ = p.v.addcmul_(&g, &(&g * (1.0 - b2)));
                let denom = p.v.sqrt() / bc2.sqrt() + eps;
                let _ = w.addcdiv_(&(&p.m * (-lr_p / bc1)), &denom);
            }
        });
    }
}

/// Per-step learning rate: linear warmup from `warmup_lr` to `base_lr` over `warmup_steps`, then
/// cosine from `base_lr` down to `min_lr` at `total_steps` (timm `CosineLRScheduler` stepped per
/// iteration, as the reference does).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    pub base_lr: f64,
    pub warmup_lr: f64,
    pub min_lr: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
}

impl Schedule {
    /// Learning rate for update number `step` (0-based).
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            let f = step as f64 / self.warmup_steps as f64;
            return self.warmup_lr + (self.base_lr - self.warmup_lr) * f;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let t = (step - self.warmup_steps).min(span) as f64 / span as f64;
        self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1.0 + (std::f64::consts::PI * t).cos())
    }
}

/// Dynamic loss scaling for fp16 training (PyTorch `GradScaler` defaults: init 2^16, growth 2
/// after 2000 finite steps, backoff 0.5). Disabled it is the identity.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LossScaler {
    pub enabled: bool,
    pub scale: f64,
    pub growth_tracker: u64,
}

impl LossScaler {
    pub fn new(enabled: bool) -> Self {
        LossScaler {
            enabled,
            scale: if enabled { 65536.0 } else { 1.0 },
            growth_tracker: 0,
        }
    }

    /// Factor the loss is multiplied by before backward.
    pub fn factor(&self) -> f64 {
        if self.enabled {
            self.scale
        } else {
            1.0
        }
    }

    /// Records whether the step's gradients were finite; returns whether to apply the step.
    pub fn update(&mut self, finite: bool) -> bool {
        if !self.enabled {
            return finite;
        }
        if finite {
            self.growth_tracker += 1;
            if self.growth_tracker >= 2000 {
                self.scale *= 2.0;
                self.growth_tracker = 0;
            }
        } else {
            self.scale *= 0.5;
            self.growth_tracker = 0;
        }
        finite
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn schedule_warmup_then_cosine() {
        let s = Schedule {
            base_lr: 1e-3,
            warmup_lr: 1e-6,
            min_lr: 1e-5,
            warmup_steps: 10,
            total_steps: 110,
        };
        assert_eq!(s.lr(0), 1e-6);
        assert!((s.lr(5) - (1e-6 + (1e-3 - 1e-6) * 0.5)).abs() < 1e-15);
        assert_eq!(s.lr(10), 1e-3);
        assert!((s.lr(60) - (1e-5 + 0.5 * (1e-3 - 1e-5))).abs() < 1e-12);
        assert!((s.lr(110) - 1e-5).abs() < 1e-15);
        assert!((s.lr(500) - 1e-5).abs() < 1e-15);
    }

    /// Two steps of our AdamW against the closed form computed by hand in f64.
    #[test]
    fn adamw_matches_closed_form() {
        let w = Tensor::from_slice(&[1.0f32, -2.0]).set_requires_grad(true);
        let b = Tensor::from_slice(&[0.5f32]).set_requires_grad(true);
        let mut opt = AdamW::new(
            vec![
                ("w".into(), w.shallow_clone(), true, 1.0),
                ("b".into(), b.shallow_clone(), false, 0.5),
            ],
            0.1,
        );
        let (lr, b1, b2, eps, wd) = (0.01f64, 0.9f64, 0.999f64, 1e-8f64, 0.1f64);
        let mut wr = [1.0f64, -2.0];
        let mut br = 0.5f64;
        let (mut mw, mut vw, mut mb, mut vb) = ([0.0f64; 2], [0.0f64; 2], 0.0f64, 0.0f64);
        for t in 1..=2 {
            opt.zero_grad();
            // loss = sum(w^2) + 3 b  -> grad w = 2w, grad b = 3
            let loss = (&w * &w).sum(Kind::Float) + &b * 3.0;
            loss.sum(Kind::Float).backward();
            opt.step(lr);
            let bc1 = 1.0 - b1.powi(t);
            let bc2 = 1.0 - b2.powi(t);
            for i in 0..2 {
                let g = 2.0 * wr[i];
                wr[i] *= 1.0 - lr * wd;
                mw[i] = b1 * mw[i] + (1.0 - b1) * g;
                vw[i] = b2 * vw[i] + (1.0 - b2) * g * g;
                wr[i] -= lr / bc1 * mw[i] / ((vw[i]).sqrt() / bc2.sqrt() + eps);
            }
            let g = 3.0;
            mb = b1 * mb + (1.0 - b1) * g;
            vb = b2 * vb + (1.0 - b2) * g * g;
            br -= lr * 0.5 / bc1 * mb / (vb.sqrt() / bc2.sqrt() + eps);
        }
        let got: Vec<f32> = Vec::try_from(&w).unwrap();
        for i in 0..2 {
            assert!(
                (got[i] as f64 - wr[i]).abs() < 1e-6,
                "{} vs {}",
                got[i],
                wr[i]
            );
        }
        assert!((b.double_value(&[0]) - br).abs() < 1e-6);
        assert_eq!(opt.t, 2);
    }

    #[test]
    fn clipping_by_global_norm() {
        let w = Tensor::zeros([2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let mut opt = AdamW::new(vec![("w".into(), w.shallow_clone(), true, 1.0)], 0.0);
        // grad = (3, 4): norm 5
        (&w * Tensor::from_slice(&[3.0f32, 4.0]))
            .sum(Kind::Float)
            .backward();
        let n = opt.clip_grad_norm(1.0);
        assert!((n - 5.0).abs() < 1e-6);
        let g: Vec<f32> = Vec::try_from(&w.grad()).unwrap();
        assert!((g[0] - 0.6).abs() < 1e-5 && (g[1] - 0.8).abs() < 1e-5);
        // below the limit: untouched
        let n2 = opt.clip_grad_norm(5.0);
        assert!((n2 - 1.0).abs() < 1e-5);
    }

    #[test]
    fn scaler_backs_off_and_grows() {
        let mut s = LossScaler::new(true);
        assert!(!s.update(false));
        assert_eq!(s.scale, 32768.0);
        for _ in 0..2000 {
            assert!(s.update(true));
        }
        assert_eq!(s.scale, 65536.0);
        let mut off = LossScaler::new(false);
        assert_eq!(off.factor(), 1.0);
        assert!(off.update(true));
    }
}
