//! PIL `Image.transform(size, AFFINE, data, resample, fillcolor)` (libImaging/Geometry.c): each
//! output pixel centre `(x + 0.5, y + 0.5)` maps through `(a0 x + a1 y + a2, a3 x + a4 y + a5)`
//! to the source; points outside the source take the fill colour; inside, PIL's bicubic
//! (a = -1, neighbours clamped to the edge) or bilinear interpolation in f64, truncated to u8.
//! Rotation builds its matrix as `Image.rotate` does (about the centre, no expansion).

use super::{ImageMut, ImageRef, Interpolation};

#[inline(always)]
fn cubic(v1: f64, v2: f64, v3: f64, v4: f64, d: f64) -> f64 {
    let p1 = v2;
    let p2 = -v1 + v3;
    let p3 = 2.0 * (v1 - v2) + v3 - v4;
    let p4 = -v1 + v2 - v3 + v4;
    p1 + d * (p2 + d * (p3 + d * p4))
}

/// Applies the inverse affine map `a` (output -> source coordinates) from `src` into `dst`.
///
/// With `fast` on x86_64 and AVX2, 3-channel images go through [`x86::affine_rgb`], which
/// computes the interior pixels with the channels in f64 vector lanes: the same IEEE operations
/// in the same order on each lane (no FMA), so the same bits; a test compares the two.
pub(crate) fn affine(
    src: ImageRef<'_>,
    dst: ImageMut<'_>,
    a: [f64; 6],
    f: Interpolation,
    fill: [u8; 3],
) {
    #[cfg(all(feature = "fast", target_arch = "x86_64"))]
    if src.channels == 3 && super::wide::avx2_enabled() {
        #[allow(unsafe_code)]
        // SAFETY: the CPU has AVX2 (checked by `avx2_enabled`); `affine_rgb` is otherwise safe.
        unsafe {
            x86::affine_rgb(src, dst, a, f, fill)
        };
        return;
    }
    let ch = src.channels as usize;
    for y in 0..dst.height as usize {
        for x in 0..dst.width as usize {
            let o = (y * dst.width as usize + x) * ch;
            let (xin, yin) = map(&a, x, y);
            pixel(&src, xin, yin, f, fill, &mut dst.data[o..o + ch]);
        }
    }
}

/// The source point of output pixel `(x, y)`'s centre.
#[inline(always)]
fn map(a: &[f64; 6], x: usize, y: usize) -> (f64, f64) {
    let xo = x as f64 + 0.5;
    let yo = y as f64 + 0.5;
    (a[0] * xo + a[1] * yo + a[2], a[3] * xo + a[4] * yo + a[5])
}

/// One output pixel (`out`: its `channels` bytes) from source point `(xin, yin)`.
#[inline(always)]
fn pixel(src: &ImageRef<'_>, xin: f64, yin: f64, f: Interpolation, fill: [u8; 3], out: &mut [u8]) {
    let ch = src.channels as usize;
    let (w, h) = (src.width as i64, src.height as i64);
    let (wf, hf) = (src.width as f64, src.height as f64);
    let stride = w as usize * ch;
    let xclip = |x: i64| -> usize {
        if x < 0 {
            0
        } else if x >= w {
            (w - 1) as usize
        } else {
            x as usize
        }
    };
    let data = src.data;
    // `!(..)` so NaN coordinates also take the fill.
    if !(xin >= 0.0 && xin < wf && yin >= 0.0 && yin < hf) {
        out.copy_from_slice(&fill[..ch]);
        return;
    }
    let xs = xin - 0.5;
    let ys = yin - 0.5;
    let (xi, yi) = (floor_i64(xs), floor_i64(ys));
    let (dx, dy) = (xs - xi as f64, ys - yi as f64);
    match f {
        Interpolation::Bicubic => {
            let (xb, yb) = (xi - 1, yi - 1);
            if xb >= 0 && xb + 3 < w && yb >= 0 && yb + 3 < h {
                // Interior: all 16 taps inside, no clamping (same values as below).
                let base = yb as usize * stride + xb as usize * ch;
                // `cubic(v1, v2, v3, v4, 0.0) == v2` exactly for finite inputs, so a
                // zero fraction needs only the middle tap (shears and translations
                // have one axis with a zero fraction everywhere).
                if dy == 0.0 {
                    let row = &data[base + stride..base + stride + 4 * ch];
                    for c in 0..ch {
                        let v = if dx == 0.0 {
                            f64::from(row[ch + c])
                        } else {
                            cubic(
                                f64::from(row[c]),
                                f64::from(row[ch + c]),
                                f64::from(row[2 * ch + c]),
                                f64::from(row[3 * ch + c]),
                                dx,
                            )
                        };
                        out[c] = to_u8(v);
                    }
                    return;
                }
                if dx == 0.0 {
                    for c in 0..ch {
                        let at = |r: usize| f64::from(data[base + r * stride + ch + c]);
                        out[c] = to_u8(cubic(at(0), at(1), at(2), at(3), dy));
                    }
                    return;
                }
                let mut v = [[0.0f64; 3]; 4];
                for (r, vr) in v.iter_mut().enumerate() {
                    let row = &data[base + r * stride..base + r * stride + 4 * ch];
                    for c in 0..ch {
                        vr[c] = cubic(
                            f64::from(row[c]),
                            f64::from(row[ch + c]),
                            f64::from(row[2 * ch + c]),
                            f64::from(row[3 * ch + c]),
                            dx,
                        );
                    }
                }
                for c in 0..ch {
                    out[c] = to_u8(cubic(v[0][c], v[1][c], v[2][c], v[3][c], dy));
                }
                return;
            }
            let xs4 = [xclip(xb), xclip(xb + 1), xclip(xb + 2), xclip(xb + 3)];
            for c in 0..ch {
                let row = |yy: usize| {
                    let r = &data[yy * stride..];
                    cubic(
                        f64::from(r[xs4[0] * ch + c]),
                        f64::from(r[xs4[1] * ch + c]),
                        f64::from(r[xs4[2] * ch + c]),
                        f64::from(r[xs4[3] * ch + c]),
                        dx,
                    )
                };
                let v1 = row(xclip_y(yb, h));
                let v2 = if yb + 1 >= 0 && yb + 1 < h {
                    row((yb + 1) as usize)
                } else {
                    v1
                };
                let v3 = if yb + 2 >= 0 && yb + 2 < h {
                    row((yb + 2) as usize)
                } else {
                    v2
                };
                let v4 = if yb + 3 >= 0 && yb + 3 < h {
                    row((yb + 3) as usize)
                } else {
                    v3
                };
                out[c] = to_u8(cubic(v1, v2, v3, v4, dy));
            }
        }
        Interpolation::Bilinear => {
            let (x0, x1) = (xclip(xi), xclip(xi + 1));
            for c in 0..ch {
                let row = |yy: usize| {
                    let r = &data[yy * stride..];
                    let (p, q) = (f64::from(r[x0 * ch + c]), f64::from(r[x1 * ch + c]));
                    p + (q - p) * dx
                };
                let v1 = row(xclip_y(yi, h));
                let v2 = if yi + 1 >= 0 && yi + 1 < h {
                    row((yi + 1) as usize)
                } else {
                    v1
                };
                let v = v1 + (v2 - v1) * dy;
                out[c] = v as u8;
            }
        }
    }
}

/// The AVX2 path for 3-channel images: interior pixels with the channels in f64 lanes.
#[cfg(all(feature = "fast", target_arch = "x86_64"))]
#[allow(unsafe_code)]
mod x86 {
    use super::{pixel, ImageMut, ImageRef, Interpolation};
    use core::arch::x86_64::*;

    /// Four taps' `[R, G, B, 0]` as i32 lanes from 12 bytes `RGBRGBRGBRGB` at `p`.
    ///
    /// # Safety
    /// AVX2; 12 bytes readable at `p`.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn taps4(p: *const u8) -> [__m128i; 4] {
        // SAFETY: the caller guarantees 12 readable bytes at `p`; the 16-byte vector is
        // assembled from an 8-byte and a 4-byte read.
        unsafe {
            let lo = (p as *const u64).read_unaligned();
            let hi = (p.add(8) as *const u32).read_unaligned();
            let v = _mm_set_epi64x(i64::from(hi), lo as i64);
            let z = -1i8;
            [
                _mm_shuffle_epi8(
                    v,
                    _mm_setr_epi8(0, z, z, z, 1, z, z, z, 2, z, z, z, z, z, z, z),
                ),
                _mm_shuffle_epi8(
                    v,
                    _mm_setr_epi8(3, z, z, z, 4, z, z, z, 5, z, z, z, z, z, z, z),
                ),
                _mm_shuffle_epi8(
                    v,
                    _mm_setr_epi8(6, z, z, z, 7, z, z, z, 8, z, z, z, z, z, z, z),
                ),
                _mm_shuffle_epi8(
                    v,
                    _mm_setr_epi8(9, z, z, z, 10, z, z, z, 11, z, z, z, z, z, z, z),
                ),
            ]
        }
    }

    /// `cubic` of four integer taps: its `p2, p3, p4` are exact integers, so they are formed
    /// in i32 and converted (exactly); the Horner steps are the scalar's f64 operations.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn cubic_int(t: [__m128i; 4], d: __m256d) -> __m256d {
        let [v1, v2, v3, v4] = t;
        let p2 = _mm_sub_epi32(v3, v1);
        let p3 = _mm_sub_epi32(
            _mm_add_epi32(_mm_slli_epi32(_mm_sub_epi32(v1, v2), 1), v3),
            v4,
        );
        let p4 = _mm_add_epi32(_mm_sub_epi32(_mm_sub_epi32(v2, v1), v3), v4);
        let p1 = _mm256_cvtepi32_pd(v2);
        let (p2, p3, p4) = (
            _mm256_cvtepi32_pd(p2),
            _mm256_cvtepi32_pd(p3),
            _mm256_cvtepi32_pd(p4),
        );
        let inner = _mm256_add_pd(p3, _mm256_mul_pd(d, p4));
        let mid = _mm256_add_pd(p2, _mm256_mul_pd(d, inner));
        _mm256_add_pd(p1, _mm256_mul_pd(d, mid))
    }

    /// `cubic` of four f64 taps, operation for operation as the scalar.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn cubic_f64(v1: __m256d, v2: __m256d, v3: __m256d, v4: __m256d, d: __m256d) -> __m256d {
        let neg = |v: __m256d| _mm256_xor_pd(v, _mm256_set1_pd(-0.0));
        let p1 = v2;
        let p2 = _mm256_add_pd(neg(v1), v3);
        let p3 = _mm256_sub_pd(
            _mm256_add_pd(
                _mm256_mul_pd(_mm256_set1_pd(2.0), _mm256_sub_pd(v1, v2)),
                v3,
            ),
            v4,
        );
        let p4 = _mm256_add_pd(_mm256_sub_pd(_mm256_add_pd(neg(v1), v2), v3), v4);
        let inner = _mm256_add_pd(p3, _mm256_mul_pd(d, p4));
        let mid = _mm256_add_pd(p2, _mm256_mul_pd(d, inner));
        _mm256_add_pd(p1, _mm256_mul_pd(d, mid))
    }

    /// Clip to 0..255 and truncate (`to_u8`, and `as u8` of a finite value), 3 bytes to `out`.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn store3(v: __m256d, out: &mut [u8]) {
        let c = _mm256_min_pd(_mm256_max_pd(v, _mm256_setzero_pd()), _mm256_set1_pd(255.0));
        let i = _mm256_cvttpd_epi32(c);
        let b = _mm_shuffle_epi8(
            i,
            _mm_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1),
        );
        let bytes = (_mm_cvtsi128_si32(b) as u32).to_le_bytes();
        out[..3].copy_from_slice(&bytes[..3]);
    }

    /// [`super::affine`] for 3-channel images.
    ///
    /// # Safety
    /// The CPU supports AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn affine_rgb(
        src: ImageRef<'_>,
        dst: ImageMut<'_>,
        a: [f64; 6],
        f: Interpolation,
        fill: [u8; 3],
    ) {
        let (w, h) = (src.width as i64, src.height as i64);
        let (wf, hf) = (src.width as f64, src.height as f64);
        let stride = src.width as usize * 3;
        let data = src.data;
        let dw = dst.width as usize;
        // Per chunk of 8 pixels, their source points, floors and fractions, computed 4 lanes
        // at a time with the scalar's operations (`map`, `xs - xi`; the floor is exact).
        const CHUNK: usize = 8;
        let (xin8, yin8) = (&mut [0.0f64; CHUNK], &mut [0.0f64; CHUNK]);
        let (fx8, fy8) = (&mut [0.0f64; CHUNK], &mut [0.0f64; CHUNK]);
        let (dx8, dy8) = (&mut [0.0f64; CHUNK], &mut [0.0f64; CHUNK]);
        let (a0, a1, a2) = (
            _mm256_set1_pd(a[0]),
            _mm256_set1_pd(a[1]),
            _mm256_set1_pd(a[2]),
        );
        let (a3, a4, a5) = (
            _mm256_set1_pd(a[3]),
            _mm256_set1_pd(a[4]),
            _mm256_set1_pd(a[5]),
        );
        let half = _mm256_set1_pd(0.5);
        for y in 0..dst.height as usize {
            let yo = _mm256_set1_pd(y as f64 + 0.5);
            for x0 in (0..dw).step_by(CHUNK) {
                for q in 0..CHUNK / 4 {
                    let b = (x0 + 4 * q) as f64 + 0.5;
                    let xo = _mm256_setr_pd(b, b + 1.0, b + 2.0, b + 3.0);
                    let xin = _mm256_add_pd(
                        _mm256_add_pd(_mm256_mul_pd(a0, xo), _mm256_mul_pd(a1, yo)),
                        a2,
                    );
                    let yin = _mm256_add_pd(
                        _mm256_add_pd(_mm256_mul_pd(a3, xo), _mm256_mul_pd(a4, yo)),
                        a5,
                    );
                    let xs = _mm256_sub_pd(xin, half);
                    let ys = _mm256_sub_pd(yin, half);
                    let (fx, fy) = (_mm256_floor_pd(xs), _mm256_floor_pd(ys));
                    let l = 4 * q;
                    // SAFETY: each array has CHUNK >= l + 4 elements.
                    unsafe {
                        _mm256_storeu_pd(xin8.as_mut_ptr().add(l), xin);
                        _mm256_storeu_pd(yin8.as_mut_ptr().add(l), yin);
                        _mm256_storeu_pd(fx8.as_mut_ptr().add(l), fx);
                        _mm256_storeu_pd(fy8.as_mut_ptr().add(l), fy);
                        _mm256_storeu_pd(dx8.as_mut_ptr().add(l), _mm256_sub_pd(xs, fx));
                        _mm256_storeu_pd(dy8.as_mut_ptr().add(l), _mm256_sub_pd(ys, fy));
                    }
                }
                for l in 0..CHUNK.min(dw - x0) {
                    let x = x0 + l;
                    let o = (y * dw + x) * 3;
                    let out = &mut dst.data[o..o + 3];
                    let (xin, yin) = (xin8[l], yin8[l]);
                    if xin >= 0.0 && xin < wf && yin >= 0.0 && yin < hf {
                        // In range, so the floors convert exactly.
                        let (xi, yi) = (fx8[l] as i64, fy8[l] as i64);
                        let (dx, dy) = (dx8[l], dy8[l]);
                        match f {
                            Interpolation::Bicubic => {
                                let (xb, yb) = (xi - 1, yi - 1);
                                if xb >= 0 && xb + 3 < w && yb >= 0 && yb + 3 < h {
                                    let base = yb as usize * stride + xb as usize * 3;
                                    // Bounds: the last tap row ends inside `data`.
                                    let rows = &data[base..base + 3 * stride + 12];
                                    // SAFETY (each `taps4`): `r * stride + 12 <= rows.len()` for
                                    // r <= 3; AVX2 is enabled for this function.
                                    let taps =
                                        |r: usize| unsafe { taps4(rows.as_ptr().add(r * stride)) };
                                    // As the scalar: a zero fraction needs one tap line only
                                    // (`cubic(.., 0.0)` is its second tap).
                                    let v = if dy == 0.0 {
                                        let t = taps(1);
                                        if dx == 0.0 {
                                            _mm256_cvtepi32_pd(t[1])
                                        } else {
                                            cubic_int(t, _mm256_set1_pd(dx))
                                        }
                                    } else if dx == 0.0 {
                                        cubic_int(
                                            [taps(0)[1], taps(1)[1], taps(2)[1], taps(3)[1]],
                                            _mm256_set1_pd(dy),
                                        )
                                    } else {
                                        let d = _mm256_set1_pd(dx);
                                        let row = |r: usize| cubic_int(taps(r), d);
                                        cubic_f64(
                                            row(0),
                                            row(1),
                                            row(2),
                                            row(3),
                                            _mm256_set1_pd(dy),
                                        )
                                    };
                                    store3(v, out);
                                    continue;
                                }
                            }
                            Interpolation::Bilinear => {
                                if xi >= 0 && xi + 1 < w && yi >= 0 && yi + 1 < h {
                                    let base = yi as usize * stride + xi as usize * 3;
                                    let rows = &data[base..base + stride + 6];
                                    let d = _mm256_set1_pd(dx);
                                    let row = |r: usize| {
                                        let p = &rows[r * stride..r * stride + 6];
                                        let pv = _mm_setr_epi32(
                                            i32::from(p[0]),
                                            i32::from(p[1]),
                                            i32::from(p[2]),
                                            0,
                                        );
                                        let qv = _mm_setr_epi32(
                                            i32::from(p[3]),
                                            i32::from(p[4]),
                                            i32::from(p[5]),
                                            0,
                                        );
                                        // p + (q - p) * dx, with q - p exact.
                                        _mm256_add_pd(
                                            _mm256_cvtepi32_pd(pv),
                                            _mm256_mul_pd(
                                                _mm256_cvtepi32_pd(_mm_sub_epi32(qv, pv)),
                                                d,
                                            ),
                                        )
                                    };
                                    let (v1, v2) = (row(0), row(1));
                                    let v = _mm256_add_pd(
                                        v1,
                                        _mm256_mul_pd(_mm256_sub_pd(v2, v1), _mm256_set1_pd(dy)),
                                    );
                                    store3(v, out);
                                    continue;
                                }
                            }
                        }
                    }
                    pixel(&src, xin, yin, f, fill, out);
                }
            }
        }
    }
}

/// PIL's bicubic output: clipped to 0..255, then truncated.
#[inline(always)]
fn to_u8(v: f64) -> u8 {
    if v <= 0.0 {
        0
    } else if v >= 255.0 {
        255
    } else {
        v as u8
    }
}

/// `floor` for the coordinate range of an image (|x| far below 2^63), without a libm call.
#[inline(always)]
fn floor_i64(x: f64) -> i64 {
    let t = x as i64;
    if (t as f64) > x {
        t - 1
    } else {
        t
    }
}

fn xclip_y(y: i64, h: i64) -> usize {
    if y < 0 {
        0
    } else if y >= h {
        (h - 1) as usize
    } else {
        y as usize
    }
}

/// Python's `round(x, 15)` closely enough for rotation matrices (differences below 1e-15).
fn round15(x: f64) -> f64 {
    libm::round(x * 1e15) / 1e15
}

/// The inverse matrix `Image.rotate(degrees)` uses: about the centre, counter-clockwise.
pub(crate) fn rotate_matrix(degrees: f64, w: u32, h: u32) -> [f64; 6] {
    let deg = degrees - 360.0 * libm::floor(degrees / 360.0); // Python's `%` for floats
    let angle = -(deg * (core::f64::consts::PI / 180.0));
    let (s, c) = (libm::sin(angle), libm::cos(angle));
    let mut m = [round15(c), round15(s), 0.0, round15(-s), round15(c), 0.0];
    let (cx, cy) = (f64::from(w) / 2.0, f64::from(h) / 2.0);
    let tx = m[0] * -cx + m[1] * -cy + m[2];
    let ty = m[3] * -cx + m[4] * -cy + m[5];
    m[2] = tx + cx;
    m[5] = ty + cy;
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX2 path gives the portable path's bytes: rotations, shears, translations and
    /// arbitrary maps (many points on the border and outside), both filters, many sizes.
    #[cfg(all(feature = "fast", target_arch = "x86_64"))]
    #[test]
    fn avx2_matches_portable() {
        // Without AVX2 both calls below take the portable path: the cases still run (no
        // panic, every byte written), and the skip of the comparison is said out loud.
        let has_avx2 = std::is_x86_feature_detected!("avx2");
        if has_avx2 {
            assert!(
                super::super::wide::avx2_enabled(),
                "AVX2 present but not taken"
            );
        } else {
            std::eprintln!(
                "SKIPPED avx2_matches_portable: this CPU has no AVX2, only the portable path ran"
            );
        }
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut unit = || (next() >> 11) as f64 / (1u64 << 53) as f64;
        for case in 0..400 {
            let (w, h) = match case % 5 {
                0 => (1 + case % 4, 1 + case % 3),
                1 => (5, 7),
                _ => (8 + case * 7 % 50, 8 + case * 11 % 40),
            };
            let src: std::vec::Vec<u8> =
                (0..w * h * 3).map(|i| (i * 97 + case * 13) as u8).collect();
            let a = match case % 4 {
                0 => rotate_matrix(unit() * 720.0 - 360.0, w, h),
                1 => [1.0, unit() - 0.5, 0.0, 0.0, 1.0, 0.0],
                2 => [
                    1.0,
                    0.0,
                    (unit() - 0.5) * f64::from(w),
                    0.0,
                    1.0,
                    (unit() - 0.5) * 3.0,
                ],
                _ => core::array::from_fn(|_| (unit() - 0.5) * 4.0),
            };
            for f in [Interpolation::Bicubic, Interpolation::Bilinear] {
                let mut fast = std::vec![0u8; (w * h * 3) as usize];
                let mut slow = fast.clone();
                let s = ImageRef::new(w, h, 3, &src).unwrap();
                affine(
                    s,
                    ImageMut::new(w, h, 3, &mut fast).unwrap(),
                    a,
                    f,
                    [7, 8, 9],
                );
                super::super::wide::portable(|| {
                    affine(
                        s,
                        ImageMut::new(w, h, 3, &mut slow).unwrap(),
                        a,
                        f,
                        [7, 8, 9],
                    )
                });
                if has_avx2 {
                    assert_eq!(fast, slow, "case {case} {w}x{h} {f:?} {a:?}");
                }
            }
        }
    }

    #[test]
    fn identity_and_integer_shift_are_exact() {
        let src: [u8; 6 * 5 * 3] = core::array::from_fn(|i| (i * 11 % 256) as u8);
        for f in [Interpolation::Bicubic, Interpolation::Bilinear] {
            let mut out = [0u8; 90];
            affine(
                ImageRef::new(6, 5, 3, &src).unwrap(),
                ImageMut::new(6, 5, 3, &mut out).unwrap(),
                rotate_matrix(0.0, 6, 5),
                f,
                [1, 2, 3],
            );
            assert_eq!(out, src);
            // Shift left by 2: output x reads source x + 2; the right 2 columns are fill.
            affine(
                ImageRef::new(6, 5, 3, &src).unwrap(),
                ImageMut::new(6, 5, 3, &mut out).unwrap(),
                [1.0, 0.0, 2.0, 0.0, 1.0, 0.0],
                f,
                [1, 2, 3],
            );
            for y in 0..5 {
                for x in 0..6 {
                    let o = &out[(y * 6 + x) * 3..(y * 6 + x) * 3 + 3];
                    if x < 4 {
                        assert_eq!(o, &src[(y * 6 + x + 2) * 3..(y * 6 + x + 2) * 3 + 3]);
                    } else {
                        assert_eq!(o, &[1, 2, 3]);
                    }
                }
            }
        }
    }
}
