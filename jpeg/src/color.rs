//! YCbCr to RGB, bit-exact with zune-jpeg.
//!
//! zune converts with 14-bit fixed point: `y * 16384 + 8191` plus the chroma terms
//! (`22970 * cr` for red, `-11700 * cr - 5638 * cb` for green, `29032 * cb` for blue, with
//! `cb` and `cr` centred on 128), shifted right by 14 and clamped to 0..=255. Its AVX2 and
//! scalar versions agree (the AVX2 one saturates through i16 and u8 packs, which is the same
//! clamp); so do the two here.

use crate::simd::Simd;

/// One pixel.
#[inline(always)]
pub(crate) fn ycc_to_rgb(y: u8, cb: u8, cr: u8) -> [u8; 3] {
    let y0 = i32::from(y) * 16384 + 8191;
    let (cb, cr) = (i32::from(cb) - 128, i32::from(cr) - 128);
    let r = (y0 + cr * 22970) >> 14;
    let g = (y0 - cr * 11700 - cb * 5638) >> 14;
    let b = (y0 + cb * 29032) >> 14;
    [r, g, b].map(|v| v.clamp(0, 255) as u8)
}

/// A row: `out` holds `3 * y.len()` bytes of RGB; `cb` and `cr` are as long as `y`.
#[inline(always)]
pub(crate) fn ycc_row(y: &[u8], cb: &[u8], cr: &[u8], out: &mut [u8], simd: Simd) {
    #[cfg(target_arch = "x86_64")]
    let done = if simd.avx2() {
        // SAFETY: `Simd::avx2` is only true when the running CPU reported AVX2.
        unsafe { avx2::ycc_row16(y, cb, cr, out) }
    } else {
        0
    };
    #[cfg(not(target_arch = "x86_64"))]
    let done = {
        let _ = simd;
        0
    };
    for (((o, &y), &cb), &cr) in out[3 * done..]
        .chunks_exact_mut(3)
        .zip(&y[done..])
        .zip(&cb[done..])
        .zip(&cr[done..])
    {
        o.copy_from_slice(&ycc_to_rgb(y, cb, cr));
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use core::arch::x86_64::*;

    /// pshufb masks that spread 16 bytes of one channel over the 48 bytes of RGB: for output
    /// block `t` (16 bytes) and channel `c`, byte `i` takes pixel `(16t + i) / 3` when
    /// `(16t + i) % 3 == c`, else zero (0x80).
    const fn masks() -> [[[u8; 16]; 3]; 3] {
        let mut m = [[[0x80u8; 16]; 3]; 3];
        let mut t = 0;
        while t < 3 {
            let mut i = 0;
            while i < 16 {
                let j = 16 * t + i;
                m[t][j % 3][i] = (j / 3) as u8;
                i += 1;
            }
            t += 1;
        }
        m
    }
    const MASKS: [[[u8; 16]; 3]; 3] = masks();

    #[inline]
    #[target_feature(enable = "avx2")]
    fn load16(s: &[u8]) -> __m128i {
        let a: &[u8; 16] = s[..16].try_into().unwrap();
        // SAFETY: `a` is 16 readable bytes; the load is unaligned.
        unsafe { _mm_loadu_si128(a.as_ptr().cast()) }
    }

    /// Converts the first multiple of 16 pixels; returns how many.
    #[target_feature(enable = "avx2")]
    pub(super) fn ycc_row16(y: &[u8], cb: &[u8], cr: &[u8], out: &mut [u8]) -> usize {
        let n = y.len().min(cb.len()).min(cr.len()).min(out.len() / 3) / 16 * 16;
        let c128 = _mm256_set1_epi16(128);
        let rnd = _mm256_set1_epi32(8191);
        // madd pairs (cr, cb) per 32-bit lane.
        let kr = _mm256_set1_epi32(22970);
        let kg = _mm256_set1_epi32(((-5638i32) << 16) | (-11700i32 & 0xFFFF));
        let kb = _mm256_set1_epi32(29032 << 16);
        let masks: [[__m128i; 3]; 3] = core::array::from_fn(|t| {
            core::array::from_fn(|c| {
                let m = &MASKS[t][c];
                // SAFETY: `m` is 16 readable bytes.
                unsafe { _mm_loadu_si128(m.as_ptr().cast()) }
            })
        });
        let mut i = 0;
        while i < n {
            let yv = _mm256_cvtepu8_epi16(load16(&y[i..]));
            let cbv = _mm256_sub_epi16(_mm256_cvtepu8_epi16(load16(&cb[i..])), c128);
            let crv = _mm256_sub_epi16(_mm256_cvtepu8_epi16(load16(&cr[i..])), c128);
            let zero = _mm256_setzero_si256();
            // Per 128-bit lane the unpacks take pixels 0-3 (lo) and 4-7 (hi) of the lane.
            let ylo = _mm256_add_epi32(
                _mm256_slli_epi32::<14>(_mm256_unpacklo_epi16(yv, zero)),
                rnd,
            );
            let yhi = _mm256_add_epi32(
                _mm256_slli_epi32::<14>(_mm256_unpackhi_epi16(yv, zero)),
                rnd,
            );
            let clo = _mm256_unpacklo_epi16(crv, cbv);
            let chi = _mm256_unpackhi_epi16(crv, cbv);
            let chan = |k: __m256i| {
                let lo = _mm256_srai_epi32::<14>(_mm256_add_epi32(ylo, _mm256_madd_epi16(clo, k)));
                let hi = _mm256_srai_epi32::<14>(_mm256_add_epi32(yhi, _mm256_madd_epi16(chi, k)));
                // Back in pixel order as i16 (the packs undo the unpacks lane by lane).
                _mm256_packs_epi32(lo, hi)
            };
            let (r, g, b) = (chan(kr), chan(kg), chan(kb));
            // u8 with saturation; qwords [r0-7, g0-7, r8-15, g8-15] -> [r0-15, g0-15].
            let rg = _mm256_permute4x64_epi64::<0xD8>(_mm256_packus_epi16(r, g));
            let bb = _mm256_permute4x64_epi64::<0xD8>(_mm256_packus_epi16(b, b));
            let ch = [
                _mm256_castsi256_si128(rg),
                _mm256_extracti128_si256::<1>(rg),
                _mm256_castsi256_si128(bb),
            ];
            let o: &mut [u8; 48] = (&mut out[3 * i..3 * i + 48]).try_into().unwrap();
            for (t, m) in masks.iter().enumerate() {
                let v = _mm_or_si128(
                    _mm_or_si128(_mm_shuffle_epi8(ch[0], m[0]), _mm_shuffle_epi8(ch[1], m[1])),
                    _mm_shuffle_epi8(ch[2], m[2]),
                );
                // SAFETY: `o[16 * t..]` has 16 writable bytes (t < 3, `o` is 48 bytes).
                unsafe { _mm_storeu_si128(o[16 * t..].as_mut_ptr().cast(), v) };
            }
            i += 16;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector row equals the pixel formula on every (cb, cr) pair, with varied luma.
    #[test]
    fn row_equals_pixel_formula() {
        let n = 256 * 256;
        let cb: Vec<u8> = (0..n).map(|i| (i % 256) as u8).collect();
        let cr: Vec<u8> = (0..n).map(|i| (i / 256) as u8).collect();
        let y: Vec<u8> = (0..n).map(|i| (i * 37 % 256) as u8).collect();
        for len in [n, n - 5, 15, 17] {
            let mut out = vec![0u8; 3 * len];
            ycc_row(&y[..len], &cb[..len], &cr[..len], &mut out, Simd::detect());
            for i in 0..len {
                assert_eq!(
                    out[3 * i..3 * i + 3],
                    ycc_to_rgb(y[i], cb[i], cr[i]),
                    "pixel {i}"
                );
            }
        }
    }
}
