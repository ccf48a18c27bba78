//! The inverse DCT, bit-exact with zune-jpeg's integer IDCT.
//!
//! zune-jpeg (0.5.15) has a scalar IDCT, an AVX2 one, a "4x4" variant for blocks whose
//! coefficients all lie in the top-left 4x4 corner, and a DC-only shortcut. All are the same
//! function of the dequantised coefficients: the stb_image-style fixed-point butterfly (constants
//! scaled by 4096) in wrapping 32-bit arithmetic, a first pass over columns rounded with +512 and
//! shifted right by 10, a second pass over rows with the bias 512 + 65536 + (128 << 17) and a
//! shift by 17, then a clamp to 0..=255. The 4x4 variant only folds known zeros, which does not
//! change any wrapping sum; the AVX2 variant saturates to i16 before the same clamp, which gives
//! the same byte. The DC-only shortcut, `(dc + 4 + 1024) >> 3` clamped, is taken whenever all 63
//! AC coefficients are zero (and agrees with the full butterfly on every DC value a real file
//! can produce); this module takes it under the same condition.
//!
//! The code works on eight lanes at a time (`[i32; 8]` rows), so the compiler vectorises both
//! passes; [`idct_block`] compiles it once for AVX2 and picks that copy at run time.

type V = [i32; 8];

#[inline(always)]
fn add(a: V, b: V) -> V {
    core::array::from_fn(|i| a[i].wrapping_add(b[i]))
}
#[inline(always)]
fn sub(a: V, b: V) -> V {
    core::array::from_fn(|i| a[i].wrapping_sub(b[i]))
}
#[inline(always)]
fn mul(a: V, c: i32) -> V {
    core::array::from_fn(|i| a[i].wrapping_mul(c))
}
#[inline(always)]
fn addc(a: V, c: i32) -> V {
    core::array::from_fn(|i| a[i].wrapping_add(c))
}
#[inline(always)]
fn shl12(a: V) -> V {
    core::array::from_fn(|i| a[i].wrapping_shl(12))
}
#[inline(always)]
fn shr<const S: u32>(a: V) -> V {
    core::array::from_fn(|i| a[i] >> S)
}

/// One 1-D pass of the butterfly on eight lanes: `r[k]` holds frequency `k` of each lane.
#[inline(always)]
fn pass<const S: u32>(r: &[V; 8], bias: i32) -> [V; 8] {
    let p1 = mul(add(r[2], r[6]), 2217);
    let t2 = add(p1, mul(r[6], -7567));
    let t3 = add(p1, mul(r[2], 3135));
    let t0 = shl12(add(r[0], r[4]));
    let t1 = shl12(sub(r[0], r[4]));
    let x0 = addc(add(t0, t3), bias);
    let x3 = addc(sub(t0, t3), bias);
    let x1 = addc(add(t1, t2), bias);
    let x2 = addc(sub(t1, t2), bias);

    let (a0, a1, a2, a3) = (r[7], r[5], r[3], r[1]);
    let q3 = add(a0, a2);
    let q4 = add(a1, a3);
    let q1 = add(a0, a3);
    let q2 = add(a1, a2);
    let p5 = mul(add(q3, q4), 4816);
    let q1 = add(p5, mul(q1, -3685));
    let q2 = add(p5, mul(q2, -10497));
    let q3 = mul(q3, -8034);
    let q4 = mul(q4, -1597);
    let b3 = add(mul(a3, 6149), add(q1, q4));
    let b2 = add(mul(a2, 12586), add(q2, q3));
    let b1 = add(mul(a1, 8410), add(q2, q4));
    let b0 = add(mul(a0, 1223), add(q1, q3));
    [
        shr::<S>(add(x0, b3)),
        shr::<S>(add(x1, b2)),
        shr::<S>(add(x2, b1)),
        shr::<S>(add(x3, b0)),
        shr::<S>(sub(x3, b0)),
        shr::<S>(sub(x2, b1)),
        shr::<S>(sub(x1, b2)),
        shr::<S>(sub(x0, b3)),
    ]
}

#[inline(always)]
fn transpose(m: &[V; 8]) -> [V; 8] {
    core::array::from_fn(|c| core::array::from_fn(|r| m[r][c]))
}

#[inline(always)]
fn idct_generic(coef: &[i32; 64], out: &mut [u8], stride: usize, ac_zero: bool) {
    if ac_zero {
        let v = (coef[0].wrapping_add(4).wrapping_add(1024) >> 3).clamp(0, 255) as u8;
        for row in out.chunks_mut(stride).take(8) {
            row[..8].fill(v);
        }
        return;
    }
    let rows: [V; 8] = core::array::from_fn(|r| core::array::from_fn(|c| coef[r * 8 + c]));
    // Columns: each lane is a column, `rows[k]` its frequency k.
    let cols = pass::<10>(&rows, 512);
    // Rows: transpose so that each lane is an image row and the vector index its frequency.
    let res = pass::<17>(&transpose(&cols), 512 + 65536 + (128 << 17));
    let res = transpose(&res);
    for (r, row) in out.chunks_mut(stride).take(8).enumerate() {
        for (o, &v) in row[..8].iter_mut().zip(&res[r]) {
            *o = v.clamp(0, 255) as u8;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn idct_avx2(coef: &[i32; 64], out: &mut [u8], stride: usize, ac_zero: bool) {
    idct_generic(coef, out, stride, ac_zero);
}

/// Inverse DCT of one block of dequantised coefficients (natural order) into eight rows of
/// eight bytes, `stride` apart, at the start of `out`. `ac_zero` tells that all 63 AC
/// coefficients are zero (the DC-only shortcut).
///
/// # Panics
/// If `out` is shorter than `7 * stride + 8` (callers size their planes for whole blocks).
#[inline]
pub(crate) fn idct_block(
    coef: &[i32; 64],
    out: &mut [u8],
    stride: usize,
    ac_zero: bool,
    avx2: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: `avx2` is only true when the running CPU reported AVX2
        // (`is_x86_feature_detected!` in `Decoder::new`).
        unsafe { idct_avx2(coef, out, stride, ac_zero) };
        return;
    }
    let _ = avx2;
    idct_generic(coef, out, stride, ac_zero);
}

/// Whether the AVX2 copy of the IDCT may run here.
pub(crate) fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The textbook two-pass form, written out as zune's scalar code does it.
    fn reference(coef: &[i32; 64]) -> [u8; 64] {
        let mut v = *coef;
        let mut out = [0u8; 64];
        let mut tmp = [0i32; 64];
        for c in 0..8 {
            let col: V = core::array::from_fn(|k| v[c + 8 * k]);
            let r = pass::<10>(&core::array::from_fn(|k| [col[k]; 8]), 512);
            for k in 0..8 {
                tmp[c + 8 * k] = r[k][0];
            }
        }
        v = tmp;
        for r in 0..8 {
            let row: V = core::array::from_fn(|k| v[r * 8 + k]);
            let o = pass::<17>(
                &core::array::from_fn(|k| [row[k]; 8]),
                512 + 65536 + (128 << 17),
            );
            for k in 0..8 {
                out[r * 8 + k] = o[k][0].clamp(0, 255) as u8;
            }
        }
        out
    }

    #[test]
    fn vector_form_equals_lane_by_lane() {
        let mut seed = 1u64;
        for _ in 0..2000 {
            let mut c = [0i32; 64];
            for (i, x) in c.iter_mut().enumerate() {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let r = (seed >> 33) as i32;
                *x = if i < 20 || r % 3 == 0 {
                    (r % 2048) - 1024
                } else {
                    0
                };
            }
            let mut out = [0u8; 64];
            let ac_zero = c[1..].iter().all(|&v| v == 0);
            idct_block(&c, &mut out, 8, ac_zero, has_avx2());
            assert_eq!(out, reference(&c));
            idct_block(&c, &mut out, 8, ac_zero, false);
            assert_eq!(out, reference(&c));
        }
    }
}
