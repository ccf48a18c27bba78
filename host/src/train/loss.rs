//! Training losses on tch tensors: the sparse distillation loss (paper eq. 1 with the eq. 2
//! target), soft-target cross-entropy (online distillation, label smoothing, mixup), and the
//! batch mixup / CutMix of the labels baseline.
//!
//! The sparse target follows the core's definition (`tinyvit_core::softlabel`): the K stored
//! probabilities at their classes, and every other class `max(0, (1 - sum topK) / (C - K))`
//! (the reference does not clamp; it only matters when stored values sum above 1 after f16
//! rounding). The loss is computed without building the dense target:
//!
//! ```text
//! loss_b = -( r * (sum_c ls_c - sum_k ls_{i_k}) + sum_k p_k ls_{i_k} ),   ls = log_softmax(s)
//! ```
//!
//! which equals `sum_c -t_c ls_c` for the dense target `t` (tested below).

use rand_core::RngCore;
use tch::{Kind, Tensor};

/// Mean over the batch of the cross-entropy between student logits and the eq. 2 target built
/// from stored top-K probabilities.
///
/// # Shapes
/// `logits [B, C]`, `idx [B, K]` (int64 class indices), `probs [B, K]` -> scalar
pub fn sparse_distill_loss(logits: &Tensor, idx: &Tensor, probs: &Tensor) -> Tensor {
    let (_, c) = logits.size2().expect("logits are [B, C]");
    let k = idx.size()[1];
    let ls = logits.to_kind(Kind::Float).log_softmax(-1, Kind::Float);
    let probs = probs.to_kind(Kind::Float);
    let picked = ls.gather(1, idx, false); // [B, K]
    let rest_classes = (c - k).max(1) as f64;
    let r = if c > k {
        ((-probs.sum_dim_intlist(1, true, Kind::Float) + 1.0) / rest_classes).clamp_min(0.0)
    } else {
        Tensor::zeros([probs.size()[0], 1], (Kind::Float, probs.device()))
    };
    let all = ls.sum_dim_intlist(1, true, Kind::Float);
    let sum_picked = picked.sum_dim_intlist(1, true, Kind::Float);
    let per = -(r * (all - sum_picked) + (probs * picked).sum_dim_intlist(1, true, Kind::Float));
    per.mean(Kind::Float)
}

/// The dense eq. 2 target, for tests and for the online-distillation top-K ablation.
///
/// # Shapes
/// `idx [B, K]`, `probs [B, K]` -> `[B, C]`
pub fn dense_target(idx: &Tensor, probs: &Tensor, num_classes: i64) -> Tensor {
    let (b, k) = idx.size2().expect("idx is [B, K]");
    let probs = probs.to_kind(Kind::Float);
    let rest = if num_classes > k {
        ((-probs.sum_dim_intlist(1, true, Kind::Float) + 1.0) / (num_classes - k) as f64)
            .clamp_min(0.0)
    } else {
        Tensor::zeros([b, 1], (Kind::Float, probs.device()))
    };
    let t = rest.expand([b, num_classes], false).contiguous();
    t.scatter(1, idx, &probs)
}

/// Mean over the batch of `sum_c -target_c log_softmax(logits)_c`.
///
/// # Shapes
/// `logits [B, C]`, `target [B, C]` -> scalar
pub fn soft_target_ce(logits: &Tensor, target: &Tensor) -> Tensor {
    let ls = logits.to_kind(Kind::Float).log_softmax(-1, Kind::Float);
    (-(target.to_kind(Kind::Float) * ls))
        .sum_dim_intlist(1, false, Kind::Float)
        .mean(Kind::Float)
}

/// One-hot targets with label smoothing: `1 - s + s/C` on the label, `s/C` elsewhere (timm).
///
/// # Shapes
/// `labels [B]` (int64) -> `[B, C]`
pub fn smooth_one_hot(labels: &Tensor, num_classes: i64, smoothing: f64) -> Tensor {
    let b = labels.size()[0];
    let off = smoothing / num_classes as f64;
    let on = 1.0 - smoothing + off;
    let t = Tensor::full([b, num_classes], off, (Kind::Float, labels.device()));
    let src = Tensor::full([b, 1], on, (Kind::Float, labels.device()));
    t.scatter(1, &labels.view([b, 1]), &src)
}

/// Mixup / CutMix settings of the labels baseline (timm `Mixup`, batch mode).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MixConfig {
    /// Mixup Beta(alpha, alpha); 0 disables mixup.
    pub mixup_alpha: f64,
    /// CutMix Beta(alpha, alpha); 0 disables CutMix.
    pub cutmix_alpha: f64,
    /// Probability of mixing a batch at all.
    pub prob: f64,
    /// Probability of CutMix rather than mixup when both are enabled.
    pub switch_prob: f64,
}

impl MixConfig {
    /// No mixing.
    pub const OFF: MixConfig = MixConfig {
        mixup_alpha: 0.0,
        cutmix_alpha: 0.0,
        prob: 1.0,
        switch_prob: 0.5,
    };

    /// Whether any mixing can happen.
    pub fn active(&self) -> bool {
        self.prob > 0.0 && (self.mixup_alpha > 0.0 || self.cutmix_alpha > 0.0)
    }
}

fn uniform(rng: &mut impl RngCore) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

fn normal(rng: &mut impl RngCore) -> f64 {
    // Box-Muller; 1 - u keeps the log argument in (0, 1].
    let u1 = 1.0 - uniform(rng);
    let u2 = uniform(rng);
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Gamma(a, 1) by Marsaglia and Tsang (with the a < 1 boost).
fn gamma(rng: &mut impl RngCore, a: f64) -> f64 {
    if a < 1.0 {
        let u = uniform(rng).max(f64::MIN_POSITIVE);
        return gamma(rng, a + 1.0) * u.powf(1.0 / a);
    }
    let d = a - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let x = normal(rng);
        let v = 1.0 + c * x;
        if v <= 0.0 {
            continue;
        }
        let v = v * v * v;
        let u = uniform(rng);
        if u < 1.0 - 0.0331 * x * x * x * x || u.ln() < 0.5 * x * x + d * (1.0 - v + v.ln()) {
            return d * v;
        }
    }
}

/// Beta(a, a) sample.
pub fn beta(rng: &mut impl RngCore, a: f64) -> f64 {
    let x = gamma(rng, a);
    let y = gamma(rng, a);
    if x + y <= 0.0 {
        0.5
    } else {
        x / (x + y)
    }
}

/// Mixes a batch with its reverse (sample i with sample B-1-i), as timm's batch-mode `Mixup`,
/// drawing every decision from `rng` (derived by the caller from run seed, epoch and batch, so
/// a resumed run mixes identically). Returns the mixed images and targets.
///
/// # Shapes
/// `x [B, C, H, W]`, `target [B, N]` -> same shapes
pub fn mix_batch(
    x: &Tensor,
    target: &Tensor,
    cfg: &MixConfig,
    rng: &mut impl RngCore,
) -> (Tensor, Tensor) {
    if !cfg.active() || uniform(rng) >= cfg.prob {
        return (x.shallow_clone(), target.shallow_clone());
    }
    let use_cutmix = if cfg.mixup_alpha > 0.0 && cfg.cutmix_alpha > 0.0 {
        uniform(rng) < cfg.switch_prob
    } else {
        cfg.cutmix_alpha > 0.0
    };
    let flipped = x.flip([0]);
    let (xm, lam) = if use_cutmix {
        let lam = beta(rng, cfg.cutmix_alpha);
        let (_, _, h, w) = x.size4().expect("images are [B, C, H, W]");
        let ratio = (1.0 - lam).sqrt();
        let (ch, cw) = ((h as f64 * ratio) as i64, (w as f64 * ratio) as i64);
        let cy = (uniform(rng) * h as f64) as i64;
        let cx = (uniform(rng) * w as f64) as i64;
        let (y0, y1) = ((cy - ch / 2).clamp(0, h), (cy + ch / 2).clamp(0, h));
        let (x0, x1) = ((cx - cw / 2).clamp(0, w), (cx + cw / 2).clamp(0, w));
        let out = x.copy();
        if y1 > y0 && x1 > x0 {
            let patch = flipped.narrow(2, y0, y1 - y0).narrow(3, x0, x1 - x0);
            out.narrow(2, y0, y1 - y0)
                .narrow(3, x0, x1 - x0)
                .copy_(&patch);
        }
        let lam = 1.0 - ((y1 - y0) * (x1 - x0)) as f64 / (h * w) as f64;
        (out, lam)
    } else {
        let lam = beta(rng, cfg.mixup_alpha);
        (x * lam + flipped * (1.0 - lam), lam)
    };
    let t = target * lam + target.flip([0]) * (1.0 - lam);
    (xm, t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_pcg::Pcg64;
    use tch::Device;

    #[test]
    fn sparse_loss_equals_dense_ce_and_grad() {
        tch::manual_seed(3);
        let c = 12;
        let logits = Tensor::randn([4, c], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let probs_full = Tensor::randn([4, c], (Kind::Float, Device::Cpu)).softmax(-1, Kind::Float);
        let (p, i) = probs_full.topk(3, 1, true, true);
        let sparse = sparse_distill_loss(&logits, &i, &p);
        let dense = soft_target_ce(&logits, &dense_target(&i, &p, c));
        let (a, b) = (sparse.double_value(&[]), dense.double_value(&[]));
        assert!((a - b).abs() < 1e-5 * b.abs(), "{a} vs {b}");
        let gs = Tensor::run_backward(&[sparse], &[&logits], true, false);
        let gd = Tensor::run_backward(&[dense], &[&logits], false, false);
        let diff = (&gs[0] - &gd[0]).abs().max().double_value(&[]);
        assert!(diff < 1e-6, "grad diff {diff}");
        // target rows sum to 1
        let t = dense_target(&i, &p, c);
        let s: Vec<f32> = Vec::try_from(t.sum_dim_intlist(1, false, Kind::Float)).unwrap();
        assert!(s.iter().all(|v| (v - 1.0).abs() < 1e-5));
    }

    #[test]
    fn rest_mass_clamped_at_zero() {
        // stored values that sum above 1 (f16 rounding): other classes get 0, not negative
        let idx = Tensor::from_slice(&[0i64, 1]).view([1, 2]);
        let p = Tensor::from_slice(&[0.7f32, 0.4]).view([1, 2]);
        let t: Vec<f32> = Vec::try_from(dense_target(&idx, &p, 4).view([-1])).unwrap();
        assert_eq!(t, vec![0.7, 0.4, 0.0, 0.0]);
    }

    #[test]
    fn label_smoothing_target() {
        let t = smooth_one_hot(&Tensor::from_slice(&[2i64]), 10, 0.1);
        let v: Vec<f32> = Vec::try_from(t.view([-1])).unwrap();
        assert!((v[2] - 0.91).abs() < 1e-6 && (v[0] - 0.01).abs() < 1e-7);
    }

    #[test]
    fn mixing_keeps_target_mass_and_is_seeded() {
        let x = Tensor::randn([4, 1, 8, 8], (Kind::Float, Device::Cpu));
        let t = smooth_one_hot(&Tensor::from_slice(&[0i64, 1, 2, 3]), 5, 0.1);
        let cfg = MixConfig {
            mixup_alpha: 0.8,
            cutmix_alpha: 1.0,
            prob: 1.0,
            switch_prob: 0.5,
        };
        for seed in 0..8u64 {
            let (xa, ta) = mix_batch(&x, &t, &cfg, &mut Pcg64::new(seed as u128, 7));
            let (xb, tb) = mix_batch(&x, &t, &cfg, &mut Pcg64::new(seed as u128, 7));
            assert!(xa.equal(&xb) && ta.equal(&tb));
            let s: Vec<f32> = Vec::try_from(ta.sum_dim_intlist(1, false, Kind::Float)).unwrap();
            assert!(s.iter().all(|v| (v - 1.0).abs() < 1e-5));
        }
        let mut rng = Pcg64::new(1, 1);
        for _ in 0..1000 {
            let b = beta(&mut rng, 0.8);
            assert!((0.0..=1.0).contains(&b));
        }
    }
}
