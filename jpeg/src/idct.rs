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
//! AC coefficients are zero, by zune's 1x1 path and inside its full IDCTs alike, and here under
//! the same condition. (zune's 4x4 path does not test for zeros, but it only runs when some AC
//! coefficient was coded, and a coded coefficient dequantises to a non-zero value unless the
//! quantisation table has a zero entry; files with such tables are left to zune.)
//!
//! The portable code works on eight lanes at a time (`[i32; 8]` rows) so that the compiler can
//! vectorise it; on x86-64 CPUs with AVX2 [`idct_block`] runs an intrinsics copy of the same
//! butterfly instead (module `avx2`; the unit test checks both against a lane-by-lane form).

use crate::simd::Simd;

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
mod avx2 {
    //! The same butterfly with AVX2 intrinsics: eight `i32` lanes per register, two 8x8
    //! transposes, and saturating packs for the final clamp.
    use core::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2")]
    fn transpose(r: &mut [__m256i; 8]) {
        let t0 = _mm256_unpacklo_epi32(r[0], r[1]);
        let t1 = _mm256_unpackhi_epi32(r[0], r[1]);
        let t2 = _mm256_unpacklo_epi32(r[2], r[3]);
        let t3 = _mm256_unpackhi_epi32(r[2], r[3]);
        let t4 = _mm256_unpacklo_epi32(r[4], r[5]);
        let t5 = _mm256_unpackhi_epi32(r[4], r[5]);
        let t6 = _mm256_unpacklo_epi32(r[6], r[7]);
        let t7 = _mm256_unpackhi_epi32(r[6], r[7]);
        let u0 = _mm256_unpacklo_epi64(t0, t2);
        let u1 = _mm256_unpackhi_epi64(t0, t2);
        let u2 = _mm256_unpacklo_epi64(t1, t3);
        let u3 = _mm256_unpackhi_epi64(t1, t3);
        let u4 = _mm256_unpacklo_epi64(t4, t6);
        let u5 = _mm256_unpackhi_epi64(t4, t6);
        let u6 = _mm256_unpacklo_epi64(t5, t7);
        let u7 = _mm256_unpackhi_epi64(t5, t7);
        r[0] = _mm256_permute2x128_si256::<0x20>(u0, u4);
        r[1] = _mm256_permute2x128_si256::<0x20>(u1, u5);
        r[2] = _mm256_permute2x128_si256::<0x20>(u2, u6);
        r[3] = _mm256_permute2x128_si256::<0x20>(u3, u7);
        r[4] = _mm256_permute2x128_si256::<0x31>(u0, u4);
        r[5] = _mm256_permute2x128_si256::<0x31>(u1, u5);
        r[6] = _mm256_permute2x128_si256::<0x31>(u2, u6);
        r[7] = _mm256_permute2x128_si256::<0x31>(u3, u7);
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn add(a: __m256i, b: __m256i) -> __m256i {
        _mm256_add_epi32(a, b)
    }
    #[inline]
    #[target_feature(enable = "avx2")]
    fn sub(a: __m256i, b: __m256i) -> __m256i {
        _mm256_sub_epi32(a, b)
    }
    #[inline]
    #[target_feature(enable = "avx2")]
    fn mul(a: __m256i, c: i32) -> __m256i {
        _mm256_mullo_epi32(a, _mm256_set1_epi32(c))
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn pass<const S: i32>(r: &mut [__m256i; 8], bias: i32) {
        let bias = _mm256_set1_epi32(bias);
        let p1 = mul(add(r[2], r[6]), 2217);
        let t2 = add(p1, mul(r[6], -7567));
        let t3 = add(p1, mul(r[2], 3135));
        let t0 = _mm256_slli_epi32::<12>(add(r[0], r[4]));
        let t1 = _mm256_slli_epi32::<12>(sub(r[0], r[4]));
        let x0 = add(add(t0, t3), bias);
        let x3 = add(sub(t0, t3), bias);
        let x1 = add(add(t1, t2), bias);
        let x2 = add(sub(t1, t2), bias);
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
        r[0] = _mm256_srai_epi32::<S>(add(x0, b3));
        r[1] = _mm256_srai_epi32::<S>(add(x1, b2));
        r[2] = _mm256_srai_epi32::<S>(add(x2, b1));
        r[3] = _mm256_srai_epi32::<S>(add(x3, b0));
        r[4] = _mm256_srai_epi32::<S>(sub(x3, b0));
        r[5] = _mm256_srai_epi32::<S>(sub(x2, b1));
        r[6] = _mm256_srai_epi32::<S>(sub(x1, b2));
        r[7] = _mm256_srai_epi32::<S>(sub(x0, b3));
    }

    #[target_feature(enable = "avx2")]
    pub(super) fn idct(coef: &[i32; 64], out: &mut [u8], stride: usize) {
        let mut r = [_mm256_setzero_si256(); 8];
        for (v, c) in r.iter_mut().zip(coef.chunks_exact(8)) {
            *v = _mm256_setr_epi32(c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]);
        }
        pass::<10>(&mut r, 512);
        transpose(&mut r);
        pass::<17>(&mut r, 512 + 65536 + (128 << 17));
        transpose(&mut r);
        // i32 -> i16 (saturating) -> u8 (saturating): the clamp to 0..=255. Per 128-bit lane the
        // packs interleave; the permute puts each row's eight values together again.
        let r01 = _mm256_permute4x64_epi64::<0xD8>(_mm256_packs_epi32(r[0], r[1]));
        let r23 = _mm256_permute4x64_epi64::<0xD8>(_mm256_packs_epi32(r[2], r[3]));
        let r45 = _mm256_permute4x64_epi64::<0xD8>(_mm256_packs_epi32(r[4], r[5]));
        let r67 = _mm256_permute4x64_epi64::<0xD8>(_mm256_packs_epi32(r[6], r[7]));
        // Lane 0 holds rows 0 and 2 (or 4 and 6), lane 1 rows 1 and 3 (5 and 7).
        let b0 = _mm256_packus_epi16(r01, r23);
        let b1 = _mm256_packus_epi16(r45, r67);
        let rows = [
            _mm256_extract_epi64::<0>(b0),
            _mm256_extract_epi64::<2>(b0),
            _mm256_extract_epi64::<1>(b0),
            _mm256_extract_epi64::<3>(b0),
            _mm256_extract_epi64::<0>(b1),
            _mm256_extract_epi64::<2>(b1),
            _mm256_extract_epi64::<1>(b1),
            _mm256_extract_epi64::<3>(b1),
        ];
        for (row, v) in out.chunks_mut(stride).zip(rows) {
            row[..8].copy_from_slice(&v.to_le_bytes());
        }
    }
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
    simd: Simd,
) {
    #[cfg(target_arch = "x86_64")]
    if simd.avx2() && !ac_zero {
        // SAFETY: `Simd::avx2` is only true when the running CPU reported AVX2.
        unsafe { avx2::idct(coef, out, stride) };
        return;
    }
    let _ = simd;
    idct_generic(coef, out, stride, ac_zero);
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
            idct_block(&c, &mut out, 8, ac_zero, Simd::detect());
            assert_eq!(out, reference(&c));
            idct_block(&c, &mut out, 8, ac_zero, Simd::none());
            assert_eq!(out, reference(&c));
        }
    }
}
