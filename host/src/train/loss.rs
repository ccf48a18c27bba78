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

/// Targets of mixed pairs (timm's `mixup_target`): each row `lam * smooth(own) + (1 - lam) *
/// smooth(partner)`, with [`smooth_one_hot`]'s smoothing.
///
/// # Shapes
/// `labels`, `partner`: `[B]` int64; `lam`: `[B]` f32 -> `[B, num_classes]`
pub fn mixed_one_hot(
    labels: &Tensor,
    partner: &Tensor,
    lam: &Tensor,
    num_classes: i64,
    smoothing: f64,
) -> Tensor {
    let own = smooth_one_hot(labels, num_classes, smoothing);
    let other = smooth_one_hot(partner, num_classes, smoothing);
    let lam = lam.to_kind(own.kind()).unsqueeze(1);
    &own * &lam + other * (lam.ones_like() - &lam)
}

#[cfg(test)]
mod tests {
    use super::*;
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
    fn mixed_targets_weigh_both_labels() {
        let labels = Tensor::from_slice(&[0i64, 1, 2]);
        let partner = Tensor::from_slice(&[3i64, 1, 4]);
        let lam = Tensor::from_slice(&[0.25f32, 0.5, 1.0]);
        let t = mixed_one_hot(&labels, &partner, &lam, 5, 0.1);
        let v: Vec<f32> = Vec::try_from(t.view([-1])).unwrap();
        // Row 0: 0.25 of class 0 and 0.75 of class 3, each smoothed (0.92 on, 0.02 off).
        let want0 = [
            0.25 * 0.92 + 0.75 * 0.02,
            0.02,
            0.02,
            0.25 * 0.02 + 0.75 * 0.92,
            0.02,
        ];
        for (a, b) in v[..5].iter().zip(want0) {
            assert!((a - b).abs() < 1e-6, "{v:?}");
        }
        // Same class on both sides, or lam 1: the plain smoothed target.
        let plain: Vec<f32> =
            Vec::try_from(smooth_one_hot(&Tensor::from_slice(&[1i64, 2]), 5, 0.1).view([-1]))
                .unwrap();
        for (a, b) in v[5..].iter().zip(plain) {
            assert!((a - b).abs() < 1e-6, "{v:?}");
        }
        let s: Vec<f32> = Vec::try_from(t.sum_dim_intlist(1, false, Kind::Float)).unwrap();
        assert!(s.iter().all(|v| (v - 1.0).abs() < 1e-5));
    }
}
