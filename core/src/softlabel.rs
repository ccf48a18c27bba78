//! Sparse soft labels for fast distillation (TinyViT section 3.2, eq. 2): the one definition
//! of the sparse target, of the stored value codes and of the index width. The logit store's
//! record codec (`crate::store`) and the trainer's batch targets (`tinyvit_host::train::loss`)
//! call this module; nothing else defines them.
//!
//! The teacher's softmax is kept as its top-K classes: indices ([`index_width`]: u16 up to
//! 65,535 classes, u32 above; the width's largest value is never a class, so the store can use
//! it to mark a missing record) and probabilities in one of two codes, both rounding to
//! nearest with ties to even:
//!
//! - f16 ([`encode_f16`] / [`decode_f16`]): IEEE binary16 of `clamp(p, 0, 1)`;
//! - 8-bit ([`encode_u8`] / [`decode_u8`]): square-root companding, `q = round(255 * sqrt(p))`,
//!   `p = q^2 / 65025`, which keeps relative precision for the small probabilities that
//!   dominate a top-K tail (smallest non-zero value 1.5e-5; worst relative error at p = 0.01
//!   about 4%).
//!
//! The student's target is eq. 2: the K stored probabilities at their classes and
//! `max(0, (1 - sum topK) / (C - K))` ([`smooth_fill`]) at every other class. The clamp at 0 is
//! this crate's: the reference (`TinyViT/utils.py` of the paper's code) does not clamp, so when
//! f16 rounding makes the stored values sum above 1 its "other" classes get a tiny negative
//! target. Clamping keeps the target a non-negative measure; the difference is at most a few
//! f16 ulps per class.
//!
//! For mixup/cutmix pairs the target is `lam * t_own + (1 - lam) * t_partner`. The trainer
//! takes any target, single or mixed, as a fill plus corrections ([`target_terms`]):
//! `t_c = fill + sum_{j: idx_j = c} delta_j`, at most 2K numbers and one fill per sample,
//! from which the loss is a gather and two sums.
//!
//! The loss is the cross-entropy of the student's logits against that target. The f64
//! reference [`sparse_ce_and_grad_mixed`] computes it with its gradient without building the
//! dense target: one online log-sum-exp pass over the logits (which also sums them), then the
//! sparse terms, then one pass writing the gradient `softmax(s) * sum(t) - t`. It is tested
//! against the dense formula here, and the trainer's tch loss is tested against it.

use half::f16;

/// Why a soft-label computation cannot proceed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SoftLabelError {
    /// `idx` and `val` differ in length, or the output buffers do (`0` names them).
    Length(&'static str),
    /// A class index is not below the number of classes.
    ClassOutOfRange { index: u32, num_classes: usize },
    /// A class index appears twice in one target.
    DuplicateClass(u32),
    /// A probability is negative or not finite, or a logit is not finite (`0` names which).
    BadValue(&'static str),
    /// More stored classes than classes, or no classes at all.
    TooMany,
}

impl core::fmt::Display for SoftLabelError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Length(what) => write!(f, "{what}: lengths disagree"),
            Self::ClassOutOfRange { index, num_classes } => {
                write!(f, "class index {index} not below {num_classes}")
            }
            Self::DuplicateClass(i) => write!(f, "class index {i} appears twice"),
            Self::BadValue(what) => write!(f, "{what}: negative or non-finite value"),
            Self::TooMany => write!(f, "top-K larger than the number of classes (or no classes)"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for SoftLabelError {}

/// Width of stored class indices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexWidth {
    U16,
    U32,
}

impl IndexWidth {
    /// Bytes an index.
    pub const fn bytes(self) -> usize {
        match self {
            IndexWidth::U16 => 2,
            IndexWidth::U32 => 4,
        }
    }

    /// The width's largest value, which is never a class (it marks "no class").
    pub const fn sentinel(self) -> u32 {
        match self {
            IndexWidth::U16 => 0xFFFF,
            IndexWidth::U32 => 0xFFFF_FFFF,
        }
    }
}

/// u16 indices up to 65,535 classes (indices `0..=65534`, so `0xFFFF` stays free as the
/// sentinel), u32 above.
pub const fn index_width(num_classes: u32) -> IndexWidth {
    if num_classes <= 0xFFFF {
        IndexWidth::U16
    } else {
        IndexWidth::U32
    }
}

/// The top `out_idx.len()` entries of `probs`, largest first; equal values keep the lower
/// class index first. Returns how many were written (`min(k, probs.len())`).
///
/// # Shapes
/// `probs`: `[C]`; `out_idx`, `out_val`: `[K]`.
pub fn topk(
    probs: &[f32],
    out_idx: &mut [u32],
    out_val: &mut [f32],
) -> Result<usize, SoftLabelError> {
    if out_idx.len() != out_val.len() {
        return Err(SoftLabelError::Length("topk outputs"));
    }
    if probs.len() > u32::MAX as usize {
        return Err(SoftLabelError::TooMany);
    }
    let k = out_idx.len();
    let mut n = 0usize;
    for (i, &v) in probs.iter().enumerate() {
        if v.is_nan() {
            return Err(SoftLabelError::BadValue("probs"));
        }
        // A later index only enters when strictly larger than the current last.
        if n == k && (k == 0 || v <= out_val[k - 1]) {
            continue;
        }
        let mut pos = if n < k { n } else { k - 1 };
        while pos > 0 && out_val[pos - 1] < v {
            if pos < k {
                out_val[pos] = out_val[pos - 1];
                out_idx[pos] = out_idx[pos - 1];
            }
            pos -= 1;
        }
        out_val[pos] = v;
        out_idx[pos] = i as u32;
        if n < k {
            n += 1;
        }
    }
    Ok(n)
}

/// `p` clamped to `[0, 1]`; NaN becomes 0.
fn clamp_unit(p: f32) -> f32 {
    let p = if p > 0.0 { p } else { 0.0 };
    if p < 1.0 {
        p
    } else {
        1.0
    }
}

/// f32 -> f16 bits, round to nearest even (IEEE 754 binary16; overflow to infinity).
pub fn f16_bits(v: f32) -> u16 {
    f16::from_f32(v).to_bits()
}

/// f16 bits -> f32 (exact).
pub fn f16_value(bits: u16) -> f32 {
    f16::from_bits(bits).to_f32()
}

/// The f16 code of a probability: binary16 of `clamp(p, 0, 1)`, ties to even. NaN encodes
/// as 0.
pub fn encode_f16(p: f32) -> u16 {
    f16_bits(clamp_unit(p))
}

/// The probability of an f16 code (exact).
pub fn decode_f16(bits: u16) -> f32 {
    f16_value(bits)
}

/// The 8-bit code of a probability: `round(255 * sqrt(clamp(p, 0, 1)))`, ties to even.
/// NaN encodes as 0.
pub fn encode_u8(p: f32) -> u8 {
    libm::rintf(libm::sqrtf(clamp_unit(p)) * 255.0) as u8
}

/// Decoding table of the 8-bit code: entry `q` is `q^2 / 65025`.
const U8_TABLE: [f32; 256] = u8_table();

const fn u8_table() -> [f32; 256] {
    let mut t = [0.0f32; 256];
    let mut q = 0;
    while q < 256 {
        t[q] = (q * q) as f32 / 65025.0;
        q += 1;
    }
    t
}

/// The probability of an 8-bit code: `q^2 / 65025` (a table, bit-exact everywhere).
pub fn decode_u8(q: u8) -> f32 {
    U8_TABLE[usize::from(q)]
}

/// Eq. 2's value for every class outside the stored top-K: `max(0, (1 - sum val) / (C - K))`,
/// 0 when `K >= C`. The sum runs in f64 in index order.
pub fn smooth_fill(val: &[f32], num_classes: usize) -> f32 {
    if val.len() >= num_classes {
        return 0.0;
    }
    let s: f64 = val.iter().map(|&v| f64::from(v)).sum();
    let f = (1.0 - s) / (num_classes - val.len()) as f64;
    if f > 0.0 {
        f as f32
    } else {
        0.0
    }
}

fn check_target(idx: &[u32], val: &[f32], c: usize) -> Result<(), SoftLabelError> {
    if idx.len() != val.len() {
        return Err(SoftLabelError::Length("idx/val"));
    }
    if idx.len() > c || c == 0 {
        return Err(SoftLabelError::TooMany);
    }
    for (j, (&i, &v)) in idx.iter().zip(val).enumerate() {
        if i as usize >= c {
            return Err(SoftLabelError::ClassOutOfRange {
                index: i,
                num_classes: c,
            });
        }
        if !(v.is_finite() && v >= 0.0) {
            return Err(SoftLabelError::BadValue("val"));
        }
        if idx[..j].contains(&i) {
            return Err(SoftLabelError::DuplicateClass(i));
        }
    }
    Ok(())
}

/// The dense eq. 2 target (reference and debugging; training uses the sparse form).
///
/// # Shapes
/// `idx`, `val`: `[K]`; `out`: `[C]`.
pub fn smooth_target(idx: &[u32], val: &[f32], out: &mut [f32]) -> Result<(), SoftLabelError> {
    check_target(idx, val, out.len())?;
    let fill = smooth_fill(val, out.len());
    out.fill(fill);
    for (&i, &v) in idx.iter().zip(val) {
        out[i as usize] = v;
    }
    Ok(())
}

/// A sparse target: class indices and their stored values, `[K]` each.
pub type Sparse<'a> = (&'a [u32], &'a [f32]);

/// The eq. 2 target of one sample, single (`b = None`) or a mixed pair, as a fill over every
/// class plus corrections: `t_c = fill + sum_{j: idx_out_j = c} delta_out_j`. This is what
/// the trainer's loss takes (`loss = -(fill * sum_c ls_c + sum_j delta_j ls_{idx_j})`, `ls`
/// the log-softmax), so the trainer never densifies a target and never redefines eq. 2.
///
/// `a = (idx, val)` is the sample's own stored top-K; `b = Some(((idx, val), lam))` mixes in a
/// partner's with the sample's own weight `lam` (`lam = 1` ignores `b`). Entries are written
/// own first, then the partner's; the rest of the outputs is padded with class 0 and delta 0.
/// Returns `(fill, entries written)`. Sums run in f64; fill and deltas are rounded to f32 once.
///
/// # Shapes
/// `a`, `b`: `[K]` each; `idx_out`, `delta_out`: `[W]`, `W >= K_a (+ K_b when mixed)`.
pub fn target_terms(
    a: Sparse<'_>,
    b: Option<(Sparse<'_>, f32)>,
    num_classes: usize,
    idx_out: &mut [u32],
    delta_out: &mut [f32],
) -> Result<(f32, usize), SoftLabelError> {
    if idx_out.len() != delta_out.len() {
        return Err(SoftLabelError::Length("target_terms outputs"));
    }
    check_target(a.0, a.1, num_classes)?;
    let (lam, b) = match b {
        Some((b, lam)) => {
            if !(lam.is_finite() && (0.0..=1.0).contains(&lam)) {
                return Err(SoftLabelError::BadValue("lam"));
            }
            if lam < 1.0 {
                check_target(b.0, b.1, num_classes)?;
                (f64::from(lam), Some(b))
            } else {
                (1.0, None)
            }
        }
        None => (1.0, None),
    };
    let need = a.0.len() + b.map_or(0, |b| b.0.len());
    if idx_out.len() < need {
        return Err(SoftLabelError::Length("target_terms outputs"));
    }
    let fa = f64::from(smooth_fill(a.1, num_classes));
    let fb = b.map_or(0.0, |b| f64::from(smooth_fill(b.1, num_classes)));
    let mut n = 0;
    for (&i, &v) in a.0.iter().zip(a.1) {
        idx_out[n] = i;
        delta_out[n] = (lam * (f64::from(v) - fa)) as f32;
        n += 1;
    }
    if let Some(b) = b {
        for (&i, &v) in b.0.iter().zip(b.1) {
            idx_out[n] = i;
            delta_out[n] = ((1.0 - lam) * (f64::from(v) - fb)) as f32;
            n += 1;
        }
    }
    idx_out[n..].fill(0);
    delta_out[n..].fill(0.0);
    Ok(((lam * fa + (1.0 - lam) * fb) as f32, n))
}

/// Online log-sum-exp and plain sum of `logits` in one pass (f64 accumulators).
fn lse_and_sum(logits: &[f32]) -> Result<(f64, f64), SoftLabelError> {
    let mut m = f64::NEG_INFINITY;
    let mut se = 0.0f64;
    let mut sum = 0.0f64;
    for &s in logits {
        if !s.is_finite() {
            return Err(SoftLabelError::BadValue("logits"));
        }
        let s = f64::from(s);
        sum += s;
        if s > m {
            se = se * libm::exp(m - s) + 1.0;
            m = s;
        } else {
            se += libm::exp(s - m);
        }
    }
    Ok((m + libm::log(se), sum))
}

/// A sparse target's weighted contribution: (sum of t, sum of t * s) and its fill.
fn sparse_terms(logits: &[f32], idx: &[u32], val: &[f32], sum_s: f64) -> (f64, f64, f64) {
    let c = logits.len();
    let fill = f64::from(smooth_fill(val, c));
    let mut t_sum = fill * (c - idx.len()) as f64;
    let mut ts = 0.0f64;
    let mut s_top = 0.0f64;
    for (&i, &v) in idx.iter().zip(val) {
        let s = f64::from(logits[i as usize]);
        t_sum += f64::from(v);
        ts += f64::from(v) * s;
        s_top += s;
    }
    ts += fill * (sum_s - s_top);
    (t_sum, ts, fill)
}

/// Cross-entropy `-sum_c t_c log_softmax(s)_c` of student logits `s` against the eq. 2 target
/// of (`idx`, `val`), and its gradient `d loss / d s` written to `grad_out`.
///
/// # Shapes
/// `logits`, `grad_out`: `[C]`; `idx`, `val`: `[K]`, `K <= C`, distinct indices.
pub fn sparse_ce_and_grad(
    logits: &[f32],
    idx: &[u32],
    val: &[f32],
    grad_out: &mut [f32],
) -> Result<f32, SoftLabelError> {
    sparse_ce_and_grad_mixed(logits, (idx, val), (&[], &[]), 1.0, grad_out)
}

/// Cross-entropy and gradient against the mixed target `lam * t_a + (1 - lam) * t_b` of two
/// sparse eq. 2 targets (mixup/cutmix pairs: `a` = own, `b` = partner). With `lam = 1`, `b` is
/// ignored (it may be empty).
///
/// # Shapes
/// `logits`, `grad_out`: `[C]`; each target `(idx [K], val [K])`.
pub fn sparse_ce_and_grad_mixed(
    logits: &[f32],
    a: (&[u32], &[f32]),
    b: (&[u32], &[f32]),
    lam: f32,
    grad_out: &mut [f32],
) -> Result<f32, SoftLabelError> {
    let c = logits.len();
    if grad_out.len() != c {
        return Err(SoftLabelError::Length("grad_out"));
    }
    if !(lam.is_finite() && (0.0..=1.0).contains(&lam)) {
        return Err(SoftLabelError::BadValue("lam"));
    }
    check_target(a.0, a.1, c)?;
    let use_b = lam < 1.0;
    if use_b {
        check_target(b.0, b.1, c)?;
    }
    let (lse, sum_s) = lse_and_sum(logits)?;
    let la = f64::from(lam);
    let lb = 1.0 - la;
    let (ta, tsa, fa) = sparse_terms(logits, a.0, a.1, sum_s);
    let (tb, tsb, fb) = if use_b {
        sparse_terms(logits, b.0, b.1, sum_s)
    } else {
        (0.0, 0.0, 0.0)
    };
    let t_sum = la * ta + lb * tb;
    let loss = t_sum * lse - (la * tsa + lb * tsb);
    // Gradient: softmax * sum(t) - t, where t = fill everywhere except the stored classes.
    let fill = la * fa + lb * fb;
    for (g, &s) in grad_out.iter_mut().zip(logits) {
        *g = (libm::exp(f64::from(s) - lse) * t_sum - fill) as f32;
    }
    for (&i, &v) in a.0.iter().zip(a.1) {
        let g = &mut grad_out[i as usize];
        *g = (f64::from(*g) + la * (fa - f64::from(v))) as f32;
    }
    if use_b {
        for (&i, &v) in b.0.iter().zip(b.1) {
            let g = &mut grad_out[i as usize];
            *g = (f64::from(*g) + lb * (fb - f64::from(v))) as f32;
        }
    }
    Ok(loss as f32)
}

/// The dense reference: cross-entropy `-sum t log_softmax(s)` and gradient
/// `softmax(s) * sum(t) - t`, two plain passes. Used to test the sparse form.
///
/// # Shapes
/// `logits`, `target`, `grad_out`: `[C]`.
pub fn dense_ce_and_grad(
    logits: &[f32],
    target: &[f32],
    grad_out: &mut [f32],
) -> Result<f32, SoftLabelError> {
    if target.len() != logits.len() || grad_out.len() != logits.len() {
        return Err(SoftLabelError::Length("dense target/grad"));
    }
    let mut m = f64::NEG_INFINITY;
    for &s in logits {
        if !s.is_finite() {
            return Err(SoftLabelError::BadValue("logits"));
        }
        if f64::from(s) > m {
            m = f64::from(s);
        }
    }
    let se: f64 = logits.iter().map(|&s| libm::exp(f64::from(s) - m)).sum();
    let lse = m + libm::log(se);
    let t_sum: f64 = target.iter().map(|&t| f64::from(t)).sum();
    let mut loss = 0.0f64;
    for ((g, &s), &t) in grad_out.iter_mut().zip(logits).zip(target) {
        loss -= f64::from(t) * (f64::from(s) - lse);
        *g = (libm::exp(f64::from(s) - lse) * t_sum - f64::from(t)) as f32;
    }
    Ok(loss as f32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn topk_orders_and_breaks_ties_by_index() {
        let p = [0.1, 0.3, 0.3, 0.05, 0.25, 0.3];
        let mut idx = [0u32; 4];
        let mut val = [0f32; 4];
        assert_eq!(topk(&p, &mut idx, &mut val).unwrap(), 4);
        assert_eq!(idx, [1, 2, 5, 4]);
        assert_eq!(val, [0.3, 0.3, 0.3, 0.25]);
        let mut idx = [0u32; 8];
        let mut val = [0f32; 8];
        assert_eq!(topk(&p[..3], &mut idx, &mut val).unwrap(), 3);
        assert_eq!(&idx[..3], &[1, 2, 0]);
        assert!(topk(&[f32::NAN], &mut idx, &mut val).is_err());
        assert_eq!(topk(&p, &mut [], &mut []).unwrap(), 0);
    }

    #[test]
    fn f16_rounds_to_nearest_even() {
        // 1 + 2^-11 is halfway between 1 and 1 + 2^-10: ties to the even (1.0).
        assert_eq!(f16_bits(1.0 + 1.0 / 2048.0), 0x3c00);
        // 1 + 3 * 2^-11 is halfway between 1 + 2^-10 (odd) and 1 + 2^-9: rounds up.
        assert_eq!(f16_bits(1.0 + 3.0 / 2048.0), 0x3c02);
        assert_eq!(f16_value(0x3c00), 1.0);
    }

    #[test]
    fn u8_code_round_trips_its_levels() {
        for q in 0..=255u8 {
            assert_eq!(encode_u8(decode_u8(q)), q);
        }
        assert_eq!(encode_u8(-1.0), 0);
        assert_eq!(encode_u8(2.0), 255);
        assert_eq!(encode_u8(f32::NAN), 0);
        let p = 0.01f32;
        assert!((decode_u8(encode_u8(p)) - p).abs() / p < 0.05);
    }

    #[test]
    fn index_width_keeps_the_sentinel_free() {
        // 65,535 classes use indices 0..=65534: 0xFFFF is free for the sentinel.
        assert_eq!(index_width(0xFFFF), IndexWidth::U16);
        // 65,536 classes need index 65535, which is the u16 sentinel: u32.
        assert_eq!(index_width(0x1_0000), IndexWidth::U32);
        assert_eq!(IndexWidth::U16.sentinel(), 0xFFFF);
        assert_eq!(IndexWidth::U32.bytes(), 4);
    }

    #[test]
    fn u8_code_rounds_ties_to_even() {
        // sqrt(p) * 255 exactly 2.5 and 3.5 (p = (k / 255)^2 with k / 255 exact enough):
        // find f32 values whose product lands on a tie and check the rule directly.
        let mut ties = 0;
        for k2 in 1..510u32 {
            if k2 % 2 == 0 {
                continue;
            }
            let s = k2 as f32 / 510.0;
            let p = s * s;
            let x = libm::sqrtf(p) * 255.0;
            if x == k2 as f32 / 2.0 {
                ties += 1;
                let want = libm::rintf(x) as u8;
                assert_eq!(encode_u8(p), want, "p {p}");
                assert_eq!(want % 2, 0, "ties go to the even code");
            }
        }
        assert!(ties > 10, "only {ties} exact ties found");
        // Half-up rounding would give 3 here; ties to even gives 2.
        assert_eq!(libm::rintf(2.5f32), 2.0);
    }

    #[test]
    fn f16_code_clamps_like_the_u8_code() {
        assert_eq!(encode_f16(1.0005), 0x3c00);
        assert_eq!(encode_f16(-0.1), 0);
        assert_eq!(encode_f16(f32::NAN), 0);
        assert_eq!(decode_f16(encode_f16(0.25)), 0.25);
    }

    #[test]
    fn fill_is_clamped_at_zero() {
        assert_eq!(smooth_fill(&[0.6, 0.5], 10), 0.0);
        assert!((smooth_fill(&[0.5, 0.3], 12) - 0.02).abs() < 1e-7);
        assert_eq!(smooth_fill(&[0.5, 0.5], 2), 0.0);
    }

    #[test]
    fn rejects_bad_targets() {
        let l = [0.0f32; 4];
        let mut g = [0.0f32; 4];
        assert_eq!(
            sparse_ce_and_grad(&l, &[1, 1], &[0.5, 0.5], &mut g),
            Err(SoftLabelError::DuplicateClass(1))
        );
        assert!(sparse_ce_and_grad(&l, &[4], &[0.5], &mut g).is_err());
        assert!(sparse_ce_and_grad(&l, &[0], &[-0.5], &mut g).is_err());
        assert!(sparse_ce_and_grad(&l, &[0], &[0.5, 0.1], &mut g).is_err());
        assert!(sparse_ce_and_grad(&[f32::NAN; 4], &[0], &[0.5], &mut g).is_err());
    }

    fn case() -> impl Strategy<Value = (Vec<f32>, Vec<u32>, Vec<f32>)> {
        (2usize..60).prop_flat_map(|c| {
            (
                proptest::collection::vec(-20.0f32..20.0, c),
                proptest::sample::subsequence((0..c as u32).collect::<Vec<_>>(), 0..=c.min(10)),
                proptest::collection::vec(0.0f32..0.3, 10),
            )
                .prop_map(|(l, idx, v)| {
                    let k = idx.len();
                    (l, idx, v[..k].to_vec())
                })
        })
    }

    proptest! {
        #[test]
        fn sparse_matches_dense((logits, idx, val) in case()) {
            let c = logits.len();
            let mut t = vec![0.0f32; c];
            smooth_target(&idx, &val, &mut t).unwrap();
            let mut gd = vec![0.0f32; c];
            let mut gs = vec![0.0f32; c];
            let ld = dense_ce_and_grad(&logits, &t, &mut gd).unwrap();
            let ls = sparse_ce_and_grad(&logits, &idx, &val, &mut gs).unwrap();
            prop_assert!((ld - ls).abs() <= 1e-4 * (1.0 + ld.abs()), "{} vs {}", ld, ls);
            for (a, b) in gd.iter().zip(&gs) {
                prop_assert!((a - b).abs() <= 1e-5, "{} vs {}", a, b);
            }
        }

        #[test]
        fn mixed_matches_dense((logits, idx, val) in case(), lam in 0.0f32..1.0, rot in 0usize..60) {
            let c = logits.len();
            let idx_b: Vec<u32> = idx.iter().map(|&i| (i as usize + rot) as u32 % c as u32).collect();
            let mut ta = vec![0.0f32; c];
            let mut tb = vec![0.0f32; c];
            smooth_target(&idx, &val, &mut ta).unwrap();
            smooth_target(&idx_b, &val, &mut tb).unwrap();
            let t: Vec<f32> = ta.iter().zip(&tb).map(|(&a, &b)| lam * a + (1.0 - lam) * b).collect();
            let mut gd = vec![0.0f32; c];
            let mut gs = vec![0.0f32; c];
            let ld = dense_ce_and_grad(&logits, &t, &mut gd).unwrap();
            let ls = sparse_ce_and_grad_mixed(&logits, (&idx, &val), (&idx_b, &val), lam, &mut gs).unwrap();
            prop_assert!((ld - ls).abs() <= 1e-4 * (1.0 + ld.abs()), "{} vs {}", ld, ls);
            for (a, b) in gd.iter().zip(&gs) {
                prop_assert!((a - b).abs() <= 1e-5, "{} vs {}", a, b);
            }
        }

        /// The trainer's form of the target (fill + corrections) is the dense eq. 2 target,
        /// single and mixed, overlapping classes included.
        #[test]
        fn target_terms_equal_the_dense_target((logits, idx, val) in case(), lam in 0.0f32..=1.0, rot in 0usize..60, mixed in any::<bool>()) {
            let c = logits.len();
            let idx_b: Vec<u32> = idx.iter().map(|&i| (i as usize + rot) as u32 % c as u32).collect();
            let mut ta = vec![0.0f32; c];
            let mut tb = vec![0.0f32; c];
            smooth_target(&idx, &val, &mut ta).unwrap();
            smooth_target(&idx_b, &val, &mut tb).unwrap();
            let w = 2 * idx.len() + 1;
            let (mut ti, mut td) = (vec![7u32; w], vec![7.0f32; w]);
            let b = mixed.then_some(((&idx_b[..], &val[..]), lam));
            let (fill, n) = target_terms((&idx, &val), b, c, &mut ti, &mut td).unwrap();
            let lam = if mixed { lam } else { 1.0 };
            prop_assert_eq!(n, if lam < 1.0 { 2 * idx.len() } else { idx.len() });
            prop_assert!(ti[n..].iter().all(|&i| i == 0) && td[n..].iter().all(|&d| d == 0.0));
            let mut t = vec![f64::from(fill); c];
            for (&i, &d) in ti.iter().zip(&td) {
                t[i as usize] += f64::from(d);
            }
            for (j, &x) in t.iter().enumerate() {
                let want = f64::from(lam) * f64::from(ta[j]) + (1.0 - f64::from(lam)) * f64::from(tb[j]);
                prop_assert!((x - want).abs() <= 1e-6, "class {}: {} vs {}", j, x, want);
            }
        }

        #[test]
        fn topk_matches_a_stable_sort(p in proptest::collection::vec(0u8..8, 0..40), k in 0usize..12) {
            let probs: Vec<f32> = p.iter().map(|&v| f32::from(v) / 8.0).collect();
            let mut order: Vec<u32> = (0..probs.len() as u32).collect();
            order.sort_by(|&a, &b| probs[b as usize].partial_cmp(&probs[a as usize]).unwrap());
            let mut idx = vec![0u32; k];
            let mut val = vec![0f32; k];
            let n = topk(&probs, &mut idx, &mut val).unwrap();
            prop_assert_eq!(n, k.min(probs.len()));
            prop_assert_eq!(&idx[..n], &order[..n]);
        }
    }
}
