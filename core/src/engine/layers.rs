//! Scalar building blocks shared by the engines. Every function has a fixed summation order
//! (index order, accumulator starting at the bias), uses `libm` for transcendentals and never
//! fuses a multiply-add, so results are identical on every IEEE-754 target.

/// LayerNorm epsilon of every norm in TinyViT.
pub(crate) const LN_EPS: f32 = 1e-5;

/// Sizes of the patch-embedding stem, `(cin, img, e0, half, w1, r0)`: `cin` input channels of
/// `img x img`, a 3x3 stride-2 conv to `half = e0 / 2` channels of `w1 x w1`, then one to `e0`
/// channels of `r0 x r0`.
pub(crate) fn stem_dims(
    cfg: &crate::config::ModelConfig,
) -> (usize, usize, usize, usize, usize, usize) {
    let e0 = cfg.embed_dims[0] as usize;
    let img = cfg.img_size as usize;
    let w1 = img.div_ceil(2);
    (cfg.in_chans as usize, img, e0, e0 / 2, w1, w1.div_ceil(2))
}

/// Exact (erf) GELU: `0.5 * x * (1 + erf(x / sqrt(2)))`.
#[inline]
pub(crate) fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + libm::erff(x * core::f32::consts::FRAC_1_SQRT_2))
}

/// Applies [`gelu`] in place.
pub(crate) fn gelu_inplace(x: &mut [f32]) {
    for v in x {
        *v = gelu(*v);
    }
}

/// Dot product summed in index order, starting from `init`.
#[inline]
pub(crate) fn dot(init: f32, a: &[f32], b: &[f32]) -> f32 {
    let mut acc = init;
    for (x, y) in a.iter().zip(b) {
        acc += x * y;
    }
    acc
}

/// `y = W x + b` for one token.
///
/// # Shapes
/// `x: [inp]`, `w: [out, inp]` (row-major, PyTorch Linear / 1x1 conv layout), `b: [out]`,
/// `y: [out]`.
pub(crate) fn linear(x: &[f32], w: &[f32], b: &[f32], y: &mut [f32]) {
    let inp = x.len();
    for (o, (yo, bo)) in y.iter_mut().zip(b).enumerate() {
        *yo = dot(*bo, x, &w[o * inp..(o + 1) * inp]);
    }
}

/// LayerNorm over one token, in place (biased variance, eps 1e-5, like PyTorch).
///
/// # Shapes
/// `x, weight, bias: [C]`.
pub(crate) fn layer_norm(x: &mut [f32], weight: &[f32], bias: &[f32]) {
    let n = x.len() as f32;
    let mut sum = 0.0f32;
    for v in x.iter() {
        sum += *v;
    }
    let mean = sum / n;
    let mut sq = 0.0f32;
    for v in x.iter() {
        let d = *v - mean;
        sq += d * d;
    }
    let inv = 1.0 / libm::sqrtf(sq / n + LN_EPS);
    for ((v, w), b) in x.iter_mut().zip(weight).zip(bias) {
        *v = (*v - mean) * inv * *w + *b;
    }
}

/// LayerNorm of `src` written to `dst`.
pub(crate) fn layer_norm_into(src: &[f32], weight: &[f32], bias: &[f32], dst: &mut [f32]) {
    dst.copy_from_slice(src);
    layer_norm(dst, weight, bias);
}

/// Softmax in place; the maximum is found with plain comparisons (no `f32::max`).
pub(crate) fn softmax(x: &mut [f32]) {
    let mut m = f32::NEG_INFINITY;
    for v in x.iter() {
        if *v > m {
            m = *v;
        }
    }
    let mut sum = 0.0f32;
    for v in x.iter_mut() {
        *v = libm::expf(*v - m);
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// Relative-position bias index of tokens `i` and `j` of a `ws x ws` window (row-major):
/// `|y_i - y_j| * ws + |x_i - x_j|`.
#[inline]
pub(crate) fn bias_index(i: usize, j: usize, ws: usize) -> usize {
    let (yi, xi) = (i / ws, i % ws);
    let (yj, xj) = (j / ws, j % ws);
    yi.abs_diff(yj) * ws + xi.abs_diff(xj)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gelu_matches_known_values() {
        assert_eq!(gelu(0.0), 0.0);
        // torch.nn.functional.gelu(torch.tensor([1.0, -1.0, 3.0]))
        assert!((gelu(1.0) - 0.841_344_7).abs() < 1e-6);
        assert!((gelu(-1.0) + 0.158_655_26).abs() < 1e-6);
        assert!((gelu(3.0) - 2.995_950_5).abs() < 1e-6);
    }

    #[test]
    fn softmax_sums_to_one_and_handles_large_values() {
        let mut x = [1000.0, 999.0, -1000.0];
        softmax(&mut x);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(x[0] > x[1] && x[2] == 0.0);
    }

    #[test]
    fn layer_norm_of_zeros_is_the_bias() {
        // Padded window tokens are zeros; after the attention norm they equal its bias.
        let mut x = [0.0; 4];
        layer_norm(&mut x, &[2.0; 4], &[0.5, 1.0, 1.5, 2.0]);
        assert_eq!(x, [0.5, 1.0, 1.5, 2.0]);
    }

    #[test]
    fn bias_index_follows_the_reference_rule() {
        // 3x3 window: token 0 = (0,0), token 8 = (2,2), token 5 = (1,2).
        assert_eq!(bias_index(0, 8, 3), 2 * 3 + 2);
        assert_eq!(bias_index(8, 0, 3), 2 * 3 + 2);
        assert_eq!(bias_index(5, 3, 3), 2);
        assert_eq!(bias_index(4, 4, 3), 0);
    }
}
