//! Training losses on tch tensors. Soft-label targets are the core's
//! ([`tinyvit_core::softlabel`], the one definition of eq. 2): the trainer builds each batch's
//! targets there ([`SparseTargets::build`]: per sample a fill plus at most 2K corrections,
//! computed in f64 on the CPU, B x 2K numbers) and tch only computes the loss:
//!
//! ```text
//! loss_b = -( fill_b * sum_c ls_bc + sum_j delta_bj * ls_{b, idx_bj} ),   ls = log_softmax(s)
//! ```
//!
//! which is `sum_c -t_bc ls_bc` for the core's target `t_b` (tested against the core's f64
//! reference [`tinyvit_core::softlabel::sparse_ce_and_grad_mixed`], loss and gradient, on
//! random store records and mixed pairs). Store runs use the stored top-K; `--labels` runs
//! use the label-smoothed one-hot, which is eq. 2 with K = 1 and value `1 - s + s / C` (timm's
//! smoothing), mixed pairs included. Online distillation uses the teacher's dense softmax
//! ([`soft_target_ce`]).

use anyhow::{anyhow, ensure, Result};
use tch::{Device, Kind, Tensor};
use tinyvit_core::softlabel;

/// One sample's target: its own sparse eq. 2 target (class indices, values) and, for a mixed
/// pair, the partner's with the sample's own weight `lam`.
#[derive(Clone, Copy, Debug)]
pub struct TargetRow<'a> {
    pub own: softlabel::Sparse<'a>,
    pub partner: Option<(softlabel::Sparse<'a>, f32)>,
}

/// A batch of sparse targets in the loss's form.
///
/// # Shapes
/// `idx [B, W]` int64, `delta [B, W]` f32, `fill [B, 1]` f32 (`W` the widest row; rows are
/// padded with class 0 and delta 0).
#[derive(Debug)]
pub struct SparseTargets {
    pub idx: Tensor,
    pub delta: Tensor,
    pub fill: Tensor,
}

impl SparseTargets {
    /// The targets of `rows` over `num_classes` classes, each from
    /// [`softlabel::target_terms`].
    pub fn build(rows: &[TargetRow<'_>], num_classes: usize) -> Result<Self> {
        ensure!(!rows.is_empty(), "a batch without samples");
        let width = rows
            .iter()
            .map(|r| r.own.0.len() + r.partner.map_or(0, |p| p.0 .0.len()))
            .max()
            .unwrap_or(0)
            .max(1);
        let b = rows.len();
        let mut idx = vec![0u32; b * width];
        let mut delta = vec![0f32; b * width];
        let mut fill = vec![0f32; b];
        for (k, r) in rows.iter().enumerate() {
            let span = k * width..(k + 1) * width;
            let (f, _) = softlabel::target_terms(
                r.own,
                r.partner,
                num_classes,
                &mut idx[span.clone()],
                &mut delta[span],
            )
            .map_err(|e| anyhow!("target of batch row {k}: {e}"))?;
            fill[k] = f;
        }
        let idx: Vec<i64> = idx.into_iter().map(i64::from).collect();
        let (b, w) = (b as i64, width as i64);
        Ok(Self {
            idx: Tensor::from_slice(&idx).view([b, w]),
            delta: Tensor::from_slice(&delta).view([b, w]),
            fill: Tensor::from_slice(&fill).view([b, 1]),
        })
    }

    /// The stored top-K of a store batch (`idx [B, K]` int64, `probs [B, K]` f32, on the CPU).
    pub fn from_topk(idx: &Tensor, probs: &Tensor, num_classes: usize) -> Result<Self> {
        let (b, k) = idx.size2()?;
        let idx: Vec<i64> = Vec::try_from(idx.to_kind(Kind::Int64).view([-1]))?;
        let probs: Vec<f32> = Vec::try_from(probs.to_kind(Kind::Float).view([-1]))?;
        let idx = idx
            .into_iter()
            .map(|i| u32::try_from(i).map_err(|_| anyhow!("class index {i} out of range")))
            .collect::<Result<Vec<u32>>>()?;
        let k = k as usize;
        let rows: Vec<TargetRow<'_>> = (0..b as usize)
            .map(|r| TargetRow {
                own: (&idx[r * k..(r + 1) * k], &probs[r * k..(r + 1) * k]),
                partner: None,
            })
            .collect();
        Self::build(&rows, num_classes)
    }

    /// Label-smoothed one-hot targets (eq. 2 with K = 1, value `1 - s + s / C`), each mixed
    /// with its partner's when `mix` gives (partner labels, own weights).
    ///
    /// # Shapes
    /// `labels [B]` int64; `mix`: (`[B]` int64, `[B]` f32), on the CPU.
    pub fn from_labels(
        labels: &Tensor,
        mix: Option<(&Tensor, &Tensor)>,
        num_classes: usize,
        smoothing: f64,
    ) -> Result<Self> {
        let as_u32 = |t: &Tensor| -> Result<Vec<u32>> {
            Vec::<i64>::try_from(t.to_kind(Kind::Int64).view([-1]))?
                .into_iter()
                .map(|i| u32::try_from(i).map_err(|_| anyhow!("label {i} out of range")))
                .collect()
        };
        let own = as_u32(labels)?;
        let on = [(1.0 - smoothing + smoothing / num_classes as f64) as f32];
        let (partner, lam) = match mix {
            Some((p, l)) => (as_u32(p)?, Vec::<f32>::try_from(l.to_kind(Kind::Float))?),
            None => (Vec::new(), Vec::new()),
        };
        let rows: Vec<TargetRow<'_>> = own
            .iter()
            .enumerate()
            .map(|(k, l)| TargetRow {
                own: (std::slice::from_ref(l), &on[..]),
                partner: partner
                    .get(k)
                    .map(|p| ((std::slice::from_ref(p), &on[..]), lam[k])),
            })
            .collect();
        Self::build(&rows, num_classes)
    }

    /// The targets on `device`.
    pub fn to_device(&self, device: Device) -> Self {
        Self {
            idx: self.idx.to_device(device),
            delta: self.delta.to_device(device),
            fill: self.fill.to_device(device),
        }
    }
}

/// Mean over the batch of the cross-entropy between student logits and the core's sparse
/// targets (see the module doc).
///
/// # Shapes
/// `logits [B, C]` -> scalar
pub fn sparse_target_ce(logits: &Tensor, t: &SparseTargets) -> Tensor {
    let ls = logits.to_kind(Kind::Float).log_softmax(-1, Kind::Float);
    let all = ls.sum_dim_intlist(1, true, Kind::Float); // [B, 1]
    let picked = ls.gather(1, &t.idx, false); // [B, W]
    let per = -(&t.fill * all + (&t.delta * picked).sum_dim_intlist(1, true, Kind::Float));
    per.mean(Kind::Float)
}

/// Mean over the batch of `sum_c -target_c log_softmax(logits)_c` (dense targets: the online
/// teacher's softmax).
///
/// # Shapes
/// `logits [B, C]`, `target [B, C]` -> scalar
pub fn soft_target_ce(logits: &Tensor, target: &Tensor) -> Tensor {
    let ls = logits.to_kind(Kind::Float).log_softmax(-1, Kind::Float);
    (-(target.to_kind(Kind::Float) * ls))
        .sum_dim_intlist(1, false, Kind::Float)
        .mean(Kind::Float)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tinyvit_core::params::splitmix64;
    use tinyvit_core::store::{RecordLayout, ValueEncoding};

    /// A uniform draw in `[0, 1)` from the seeded generator.
    fn unit(s: &mut u64) -> f64 {
        (splitmix64(s) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A random store record, written and read back through the store's record codec: `k`
    /// distinct classes of `c`, softmax-like values (summing to at most about 1), f16 or
    /// 8-bit.
    fn record(s: &mut u64, c: u32, k: usize, values: ValueEncoding) -> (Vec<u32>, Vec<f32>) {
        let mut idx: Vec<u32> = Vec::new();
        while idx.len() < k {
            let i = (splitmix64(s) % u64::from(c)) as u32;
            if !idx.contains(&i) {
                idx.push(i);
            }
        }
        let mut p: Vec<f32> = (0..k).map(|_| unit(s) as f32).collect();
        let total: f32 = p.iter().sum::<f32>() / (0.5 + unit(s) as f32 * 0.55);
        p.iter_mut()
            .for_each(|v| *v = (*v / total.max(1e-6)).min(1.0));
        let layout = RecordLayout::new(k as u16, c, values).unwrap();
        let mut bytes = vec![0u8; layout.record_len()];
        layout.encode(7, &idx, &p, &mut bytes).unwrap();
        let view = layout.view(&bytes).unwrap();
        let (mut ri, mut rp) = (vec![0u32; k], vec![0f32; k]);
        view.read_into(&mut ri, &mut rp).unwrap();
        (ri, rp)
    }

    /// The tch loss and its autograd gradient equal the core's f64 reference
    /// (`softlabel::sparse_ce_and_grad_mixed`, per sample, averaged over the batch) on random
    /// store records, single and mixed pairs (overlapping classes included), f16 and 8-bit
    /// values, several class counts and K.
    #[test]
    fn tch_loss_and_gradient_equal_the_core_reference() {
        let mut s = 0x5eed_u64;
        for case in 0..120 {
            let c = [2u32, 3, 10, 37, 100, 1000][case % 6];
            let k = 1 + (splitmix64(&mut s) % u64::from(c.min(12))) as usize;
            let b = 1 + (splitmix64(&mut s) % 9) as usize;
            let values = if case % 2 == 0 {
                ValueEncoding::F16
            } else {
                ValueEncoding::Sqrt8
            };
            let own: Vec<_> = (0..b).map(|_| record(&mut s, c, k, values)).collect();
            let partners: Vec<_> = (0..b).map(|_| record(&mut s, c, k, values)).collect();
            let lams: Vec<Option<f32>> = (0..b)
                .map(|_| match splitmix64(&mut s) % 3 {
                    0 => None,
                    1 => Some(1.0),
                    _ => Some(unit(&mut s) as f32),
                })
                .collect();
            let rows: Vec<TargetRow<'_>> = (0..b)
                .map(|r| TargetRow {
                    own: (&own[r].0, &own[r].1),
                    partner: lams[r].map(|l| ((&partners[r].0[..], &partners[r].1[..]), l)),
                })
                .collect();
            let logits: Vec<f32> = (0..b * c as usize)
                .map(|_| (unit(&mut s) * 16.0 - 8.0) as f32)
                .collect();
            let t = SparseTargets::build(&rows, c as usize).unwrap();
            let x = Tensor::from_slice(&logits)
                .view([b as i64, i64::from(c)])
                .set_requires_grad(true);
            let loss = sparse_target_ce(&x, &t);
            let got_loss = loss.double_value(&[]);
            let g = Tensor::run_backward(&[loss], &[&x], false, false);
            let got_grad: Vec<f32> = Vec::try_from(g[0].view([-1])).unwrap();
            let (mut want_loss, mut want_grad) = (0.0f64, vec![0f32; logits.len()]);
            for r in 0..b {
                let span = r * c as usize..(r + 1) * c as usize;
                let (pb, lam) = match lams[r] {
                    Some(l) => ((&partners[r].0[..], &partners[r].1[..]), l),
                    None => ((&[][..], &[][..]), 1.0),
                };
                let l = softlabel::sparse_ce_and_grad_mixed(
                    &logits[span.clone()],
                    (&own[r].0, &own[r].1),
                    pb,
                    lam,
                    &mut want_grad[span],
                )
                .unwrap();
                want_loss += f64::from(l) / b as f64;
            }
            assert!(
                (got_loss - want_loss).abs() <= 1e-5 * (1.0 + want_loss.abs()),
                "case {case}: loss {got_loss} vs {want_loss}"
            );
            for (j, (a, w)) in got_grad.iter().zip(&want_grad).enumerate() {
                let w = w / b as f32;
                assert!(
                    (a - w).abs() <= 2e-6,
                    "case {case} (C {c}, K {k}, B {b}): grad[{j}] {a} vs {w}"
                );
            }
        }
    }

    /// Stored values summing above 1 (f16 rounding) give the other classes 0, not a negative
    /// target: the fill is the core's clamped one.
    #[test]
    fn fill_is_clamped_at_zero() {
        let idx = Tensor::from_slice(&[0i64, 1]).view([1, 2]);
        let p = Tensor::from_slice(&[0.7f32, 0.4]).view([1, 2]);
        let t = SparseTargets::from_topk(&idx, &p, 4).unwrap();
        assert_eq!(t.fill.double_value(&[0, 0]), 0.0);
    }

    /// Label smoothing as eq. 2 with K = 1 is timm's: `1 - s + s/C` on the label, `s/C`
    /// elsewhere; a mixed pair weighs both labels; rows sum to 1.
    #[test]
    fn label_targets_are_smoothed_and_mixed() {
        let dense = |t: &SparseTargets, c: i64| {
            let b = t.fill.size()[0];
            t.fill
                .expand([b, c], false)
                .contiguous()
                .scatter_add(1, &t.idx, &t.delta)
        };
        let labels = Tensor::from_slice(&[2i64]);
        let t = SparseTargets::from_labels(&labels, None, 10, 0.1).unwrap();
        let v: Vec<f32> = Vec::try_from(dense(&t, 10).view([-1])).unwrap();
        assert!(
            (v[2] - 0.91).abs() < 1e-6 && (v[0] - 0.01).abs() < 1e-7,
            "{v:?}"
        );
        let labels = Tensor::from_slice(&[0i64, 1, 2]);
        let partner = Tensor::from_slice(&[3i64, 1, 4]);
        let lam = Tensor::from_slice(&[0.25f32, 0.5, 1.0]);
        let t = SparseTargets::from_labels(&labels, Some((&partner, &lam)), 5, 0.1).unwrap();
        let d = dense(&t, 5);
        let v: Vec<f32> = Vec::try_from(d.view([-1])).unwrap();
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
        for (a, b) in v[5..10].iter().zip([0.02, 0.92, 0.02, 0.02, 0.02]) {
            assert!((a - b).abs() < 1e-6, "{v:?}");
        }
        let s: Vec<f32> = Vec::try_from(d.sum_dim_intlist(1, false, Kind::Float)).unwrap();
        assert!(s.iter().all(|v| (v - 1.0).abs() < 1e-5));
    }
}
