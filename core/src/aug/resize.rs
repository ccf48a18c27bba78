//! Resampling with PIL's `Image.resize` semantics (Pillow 13 libImaging/Resample.c): separable
//! convolution in two passes through a u8 intermediate (pass order as Pillow 13 picks it); the
//! filter is
//! widened by the scale factor when shrinking (antialiasing); coefficients are computed in f64,
//! normalised, and quantised to 22-bit fixed point, so the pixel arithmetic is integer and the
//! result matches PIL bit for bit.
//!
//! Filters: bicubic (Keys, a = -0.5, support 2) and bilinear (triangle, support 1).
//!
//! # Scratch layout
//! `[horizontal coefficients: ow * kh * 4][horizontal bounds: ow * 8]`
//! `[vertical coefficients: oh * kv * 4][vertical bounds: oh * 8][intermediate][strip]`, the
//! intermediate being `rows * ow * C` (horizontal first) or `oh * columns * C` (vertical first),
//! the strip `8 * (columns + ow) * C` (the horizontal pass's transposed rows and their
//! output), coefficients as
//! native-endian i32, bounds as (first tap, tap count) u32 pairs.

use super::{image_len, AugError, CropBox, ImageMut, ImageRef, Interpolation};

const PRECISION_BITS: u32 = 32 - 8 - 2;

fn support(f: Interpolation) -> f64 {
    match f {
        Interpolation::Bicubic => 2.0,
        Interpolation::Bilinear => 1.0,
    }
}

fn filter(f: Interpolation, x: f64) -> f64 {
    let x = if x < 0.0 { -x } else { x };
    match f {
        Interpolation::Bilinear => {
            if x < 1.0 {
                1.0 - x
            } else {
                0.0
            }
        }
        Interpolation::Bicubic => {
            const A: f64 = -0.5;
            if x < 1.0 {
                ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
            } else if x < 2.0 {
                (((x - 5.0) * x + 8.0) * x - 4.0) * A
            } else {
                0.0
            }
        }
    }
}

/// Taps per output pixel for an `in_size -> out_size` resample (PIL's `ksize`).
fn ksize(f: Interpolation, in_size: u32, out_size: u32) -> usize {
    let scale = f64::from(in_size) / f64::from(out_size);
    let fs = if scale < 1.0 { 1.0 } else { scale };
    libm::ceil(support(f) * fs) as usize * 2 + 1
}

fn coeff_bytes(f: Interpolation, in_size: u32, out_size: u32, count: u32) -> Option<usize> {
    let k = ksize(f, in_size, out_size);
    (count as usize).checked_mul(k.checked_mul(4)?.checked_add(8)?)
}

/// Scratch bytes for resampling any box of a `src_w x src_h` image to `out_w x out_h`.
pub fn resize_scratch_len(
    src_w: u32,
    src_h: u32,
    out_w: u32,
    out_h: u32,
    channels: u32,
) -> Result<usize, AugError> {
    region_scratch_len(src_w, src_h, out_w, out_h, out_w, out_h, channels)
}

/// Scratch bytes for producing a `region_w x region_h` part of an `out_w x out_h` resample of
/// any box of a `src_w x src_h` image.
pub(crate) fn region_scratch_len(
    src_w: u32,
    src_h: u32,
    out_w: u32,
    out_h: u32,
    region_w: u32,
    region_h: u32,
    channels: u32,
) -> Result<usize, AugError> {
    if out_w == 0 || out_h == 0 {
        return Err(AugError::EmptyImage {
            width: out_w,
            height: out_h,
        });
    }
    // The widest filter comes with the largest box: the whole source.
    let f = Interpolation::Bicubic;
    let too = AugError::TooLarge("resize scratch");
    let h = coeff_bytes(f, src_w, out_w, region_w).ok_or(too)?;
    let v = coeff_bytes(f, src_h, out_h, region_h).ok_or(too)?;
    // Horizontal first: rows x region_w; vertical first: region_h x columns.
    let a = image_len(region_w, src_h, channels)?;
    let b = image_len(src_w, region_h, channels)?;
    let mid = if a > b { a } else { b };
    // The horizontal pass's transposed strip (at most `src_w` columns) and its output.
    let strip = image_len(
        src_w.checked_add(region_w).ok_or(too)?,
        STRIP as u32,
        channels,
    )?;
    h.checked_add(v)
        .and_then(|s| s.checked_add(mid))
        .and_then(|s| s.checked_add(strip))
        .ok_or(too)
}

/// Fixed-point coefficients of output pixels `first .. first + count` of an
/// `in_size -> out_size` resample (PIL `precompute_coeffs` + `normalize_coeffs_8bpc`).
/// Writes `count * k` i32 into `kk` and `count` (first tap, taps) pairs into `bounds`.
fn precompute(
    f: Interpolation,
    in_size: u32,
    out_size: u32,
    first: u32,
    count: u32,
    kk: &mut [u8],
    bounds: &mut [u8],
) -> usize {
    let scale = f64::from(in_size) / f64::from(out_size);
    let fs = if scale < 1.0 { 1.0 } else { scale };
    let sup = support(f) * fs;
    let k = libm::ceil(sup) as usize * 2 + 1;
    let ss = 1.0 / fs;
    let mut w = [0.0f64; 64];
    for i in 0..count as usize {
        let xx = f64::from(first) + i as f64;
        let center = (xx + 0.5) * scale;
        let mut xmin = (center - sup + 0.5) as i64;
        if xmin < 0 {
            xmin = 0;
        }
        let mut xmax = (center + sup + 0.5) as i64;
        if xmax > i64::from(in_size) {
            xmax = i64::from(in_size);
        }
        let n = ((xmax - xmin).max(0) as usize).min(k);
        let row = &mut kk[i * k * 4..(i + 1) * k * 4];
        // Weights in chunks of 64 on the stack: first their sum, then the normalised values.
        let mut ww = 0.0f64;
        for x in 0..n {
            ww += filter(f, ((x as i64 + xmin) as f64 - center + 0.5) * ss);
        }
        let mut x = 0;
        while x < n {
            let m = (n - x).min(64);
            for j in 0..m {
                w[j] = filter(f, (((x + j) as i64 + xmin) as f64 - center + 0.5) * ss);
            }
            for j in 0..m {
                let v = if ww != 0.0 { w[j] / ww } else { w[j] };
                let q = if v < 0.0 {
                    (-0.5 + v * f64::from(1u32 << PRECISION_BITS)) as i32
                } else {
                    (0.5 + v * f64::from(1u32 << PRECISION_BITS)) as i32
                };
                row[(x + j) * 4..(x + j) * 4 + 4].copy_from_slice(&q.to_ne_bytes());
            }
            x += m;
        }
        for j in n..k {
            row[j * 4..j * 4 + 4].copy_from_slice(&0i32.to_ne_bytes());
        }
        bounds[i * 8..i * 8 + 4].copy_from_slice(&(xmin as u32).to_ne_bytes());
        bounds[i * 8 + 4..i * 8 + 8].copy_from_slice(&(n as u32).to_ne_bytes());
    }
    k
}

#[inline(always)]
fn get_u32(b: &[u8], i: usize) -> u32 {
    u32::from_ne_bytes([b[i * 4], b[i * 4 + 1], b[i * 4 + 2], b[i * 4 + 3]])
}

/// Decodes a run of native-endian i32 coefficients into a stack buffer.
#[inline(always)]
fn load_coeffs(src: &[u8], out: &mut [i32]) {
    for (o, c) in out.iter_mut().zip(src.chunks_exact(4)) {
        *o = i32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
    }
}

#[inline(always)]
fn clip8(ss: i32) -> u8 {
    let v = ss >> PRECISION_BITS;
    if v < 0 {
        0
    } else if v > 255 {
        255
    } else {
        v as u8
    }
}

/// Rows the horizontal pass filters together: one vector lane per row and channel.
const STRIP: usize = 8;

/// Transposes `STRIP` rows of `len` bytes into `t`: byte `i` of row `r` goes to
/// `t[i * STRIP + r]`, so each source value's `STRIP` rows are contiguous.
#[inline(always)]
fn transpose_strip(rows: &[&[u8]; STRIP], len: usize, t: &mut [u8]) {
    let t = &mut t[..len * STRIP];
    let rows: [&[u8]; STRIP] = core::array::from_fn(|r| &rows[r][..len]);
    #[cfg(all(feature = "fast", target_arch = "x86_64"))]
    let done = sse2::transpose(&rows, len, t);
    #[cfg(not(all(feature = "fast", target_arch = "x86_64")))]
    let done = 0;
    for (i, o) in t.chunks_exact_mut(STRIP).enumerate().skip(done) {
        for r in 0..STRIP {
            o[r] = rows[r][i];
        }
    }
}

/// The inverse of [`transpose_strip`] for the horizontal pass's output: `tout` holds groups
/// of `STRIP` bytes (group `g` = output column `g / ch`, channel `g % ch`, one byte per strip
/// row); byte `r` of group `g` goes to `out[r * line + g]`, for the first `nrows` rows.
#[inline(always)]
fn scatter_strip(tout: &[u8], nrows: usize, line: usize, out: &mut [u8]) {
    #[cfg(all(feature = "fast", target_arch = "x86_64"))]
    let done = sse2::scatter(tout, nrows, line, out);
    #[cfg(not(all(feature = "fast", target_arch = "x86_64")))]
    let done = 0;
    for (g, lanes) in tout.chunks_exact(STRIP).enumerate().skip(done) {
        for (r, &v) in lanes.iter().enumerate().take(nrows) {
            out[r * line + g] = v;
        }
    }
}

/// Byte transposes of the horizontal pass's strips with SSE2 (part of every x86_64 CPU):
/// 16 columns of the 8 strip rows at a time, through the usual unpack network. Byte moves
/// only, so the results are those of the scalar loops they shorten.
#[cfg(all(feature = "fast", target_arch = "x86_64"))]
#[allow(unsafe_code)]
mod sse2 {
    use super::STRIP;
    use core::arch::x86_64::*;

    #[inline(always)]
    fn load(b: &[u8]) -> __m128i {
        let b = &b[..16];
        // SAFETY: `b` has 16 readable bytes; the load is unaligned.
        unsafe { _mm_loadu_si128(b.as_ptr().cast()) }
    }

    #[inline(always)]
    fn load8(b: &[u8]) -> __m128i {
        let b: [u8; 8] = b[..8].try_into().unwrap_or([0; 8]);
        // SAFETY: SSE2 is part of every x86_64 CPU.
        unsafe { _mm_set_epi64x(0, i64::from_le_bytes(b)) }
    }

    #[inline(always)]
    fn store(b: &mut [u8], v: __m128i) {
        let b = &mut b[..16];
        // SAFETY: `b` has 16 writable bytes; the store is unaligned.
        unsafe { _mm_storeu_si128(b.as_mut_ptr().cast(), v) }
    }

    /// [`super::transpose_strip`]'s first columns, 16 at a time; returns how many it did.
    #[inline(always)]
    pub(super) fn transpose(rows: &[&[u8]; STRIP], len: usize, t: &mut [u8]) -> usize {
        // SAFETY: SSE2 is part of every x86_64 CPU; every load and store goes through a
        // bounds-checked slice of the length it touches.
        unsafe {
            const { assert!(STRIP == 8) };
            let mut i = 0;
            while i + 16 <= len {
                let r: [__m128i; 8] = core::array::from_fn(|k| load(&rows[k][i..]));
                let a: [__m128i; 8] = core::array::from_fn(|k| {
                    let (p, q) = (r[k / 2 * 2], r[k / 2 * 2 + 1]);
                    if k % 2 == 0 {
                        _mm_unpacklo_epi8(p, q)
                    } else {
                        _mm_unpackhi_epi8(p, q)
                    }
                });
                // b[0..4]: rows 0-3 for columns 0-3, 4-7, 8-11, 12-15; b[4..8]: rows 4-7.
                let b: [__m128i; 8] = core::array::from_fn(|k| {
                    let base = if k < 4 { 0 } else { 4 };
                    let (p, q) = (a[base + (k % 4) / 2], a[base + 2 + (k % 4) / 2]);
                    if k % 2 == 0 {
                        _mm_unpacklo_epi16(p, q)
                    } else {
                        _mm_unpackhi_epi16(p, q)
                    }
                });
                let out = &mut t[i * STRIP..(i + 16) * STRIP];
                for k in 0..4 {
                    store(&mut out[k * 32..], _mm_unpacklo_epi32(b[k], b[k + 4]));
                    store(&mut out[k * 32 + 16..], _mm_unpackhi_epi32(b[k], b[k + 4]));
                }
                i += 16;
            }
            i
        }
    }

    /// [`super::scatter_strip`]'s first groups, 16 at a time; returns how many it did.
    #[inline(always)]
    pub(super) fn scatter(tout: &[u8], nrows: usize, line: usize, out: &mut [u8]) -> usize {
        // SAFETY: SSE2 is part of every x86_64 CPU; every load and store goes through a
        // bounds-checked slice of the length it touches.
        unsafe {
            const { assert!(STRIP == 8) };
            let groups = tout.len() / STRIP;
            let mut g = 0;
            while g + 16 <= groups {
                let src = &tout[g * STRIP..(g + 16) * STRIP];
                // u[k]: groups 2k and 2k+1 interleaved, byte pairs in row order.
                let u: [__m128i; 8] = core::array::from_fn(|k| {
                    _mm_unpacklo_epi8(load8(&src[2 * k * 8..]), load8(&src[(2 * k + 1) * 8..]))
                });
                // v[2j]: rows 0-3 of groups 4j..4j+3; v[2j+1]: rows 4-7.
                let v: [__m128i; 8] = core::array::from_fn(|k| {
                    let (p, q) = (u[k / 2 * 2], u[k / 2 * 2 + 1]);
                    if k % 2 == 0 {
                        _mm_unpacklo_epi16(p, q)
                    } else {
                        _mm_unpackhi_epi16(p, q)
                    }
                });
                // w: (row pair, group half): rows 2m, 2m+1 of groups 0-7 or 8-15.
                let rows_of = |half: usize, hi_rows: bool, upper: bool| {
                    let (p, q) = (
                        v[4 * half + usize::from(hi_rows)],
                        v[4 * half + 2 + usize::from(hi_rows)],
                    );
                    if upper {
                        _mm_unpackhi_epi32(p, q)
                    } else {
                        _mm_unpacklo_epi32(p, q)
                    }
                };
                for r in 0..nrows.min(STRIP) {
                    let (hi_rows, upper) = (r >= 4, (r % 4) >= 2);
                    let (lo, hi) = (rows_of(0, hi_rows, upper), rows_of(1, hi_rows, upper));
                    let row = if r % 2 == 0 {
                        _mm_unpacklo_epi64(lo, hi)
                    } else {
                        _mm_unpackhi_epi64(lo, hi)
                    };
                    store(&mut out[r * line + g..], row);
                }
                g += 16;
            }
            g
        }
    }
}

/// Horizontal pass: `rows` rows; `row(r)` is input row `r` starting at input column
/// `x_shift` (the first column any tap reads), `cols` columns wide; output rows are `ow * ch`
/// wide. Rows go through in strips of [`STRIP`]: a strip is transposed into `t` (column
/// `j` becomes the line `t[j * ch * STRIP ..][.. ch * STRIP]`, channel-major), filtered by the
/// vertical kernel into `tout` (`ow` such lines) and scattered back into `out`. Integer sums:
/// the result does not depend on the order. `t` holds `cols * ch * STRIP` bytes and `tout`
/// `ow * ch * STRIP`.
fn horizontal<'a>(
    row: impl Fn(usize) -> &'a [u8],
    rows: usize,
    cols: usize,
    hk: &[u8],
    hb: &[u8],
    kh: usize,
    x_shift: usize,
    ow: usize,
    ch: usize,
    out: &mut [u8],
    t: &mut [u8],
    tout: &mut [u8],
) {
    let line = ow * ch;
    let len = cols * ch;
    let tline = ch * STRIP;
    let tout = &mut tout[..ow * tline];
    let mut y = 0;
    while y < rows {
        let nrows = (rows - y).min(STRIP);
        // A short last strip repeats its last row; only `nrows` outputs are written.
        let strip: [&[u8]; STRIP] = core::array::from_fn(|r| row(y + r.min(nrows - 1)));
        let out = &mut out[y * line..];
        super::wide::run(
            #[inline(always)]
            || {
                transpose_strip(&strip, len, t);
                let t = &*t;
                #[cfg(all(feature = "fast", target_arch = "x86_64"))]
                if tline == 24 && super::wide::avx2_enabled() {
                    #[allow(unsafe_code)]
                    // SAFETY: the CPU has AVX2 (checked just above).
                    unsafe {
                        avx2::strip_taps_rgb(t, hk, hb, kh, x_shift, ow, tout)
                    };
                    scatter_strip(tout, nrows, line, out);
                    return;
                }
                match tline {
                    24 => strip_taps::<24>(t, hk, hb, kh, x_shift, ow, tout),
                    8 => strip_taps::<8>(t, hk, hb, kh, x_shift, ow, tout),
                    _ => vertical_rows(
                        |j| &t[j * tline..(j + 1) * tline],
                        hk,
                        hb,
                        kh,
                        x_shift,
                        ow,
                        tline,
                        tout,
                    ),
                }
                scatter_strip(tout, nrows, line, out);
            },
        );
        y += nrows;
    }
}

/// The horizontal pass's filter over a transposed strip whose lines are `L` bytes (`STRIP`
/// rows times the channels): [`vertical_rows`] with the line held in registers, every tap
/// added to one accumulator per lane (integer sums: the order does not matter).
#[inline(always)]
fn strip_taps<const L: usize>(
    t: &[u8],
    hk: &[u8],
    hb: &[u8],
    kh: usize,
    x_shift: usize,
    ow: usize,
    tout: &mut [u8],
) {
    for (xx, o) in tout[..ow * L].chunks_exact_mut(L).enumerate() {
        let xmin = get_u32(hb, 2 * xx) as usize - x_shift;
        let n = get_u32(hb, 2 * xx + 1) as usize;
        let ks = &hk[xx * kh * 4..(xx * kh + n) * 4];
        let lines = &t[xmin * L..(xmin + n) * L];
        let mut acc = [1i32 << (PRECISION_BITS - 1); L];
        for (kb, line) in ks.chunks_exact(4).zip(lines.chunks_exact(L)) {
            let k = i32::from_ne_bytes([kb[0], kb[1], kb[2], kb[3]]);
            let line: &[u8; L] = line.try_into().unwrap_or(&[0; L]);
            for (a, &p) in acc.iter_mut().zip(line) {
                *a += i32::from(p) * k;
            }
        }
        for (o, &a) in o.iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
}

/// [`strip_taps`] for RGB strips (24-byte lines) with AVX2: the 24 accumulators live in three
/// registers for all of an output column's taps. Integer products and sums: the same values.
#[cfg(all(feature = "fast", target_arch = "x86_64"))]
#[allow(unsafe_code)]
mod avx2 {
    use super::{get_u32, PRECISION_BITS};
    use core::arch::x86_64::*;

    /// `clip8` of 16 sums into `o[..16]`: an arithmetic shift, then the saturating packs
    /// (i32 -> i16 -> u8) clamp to 0..255 exactly as `clip8` does.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn store_clipped(o: &mut [u8], a: __m256i, b: __m256i) {
        let (a, b) = (
            _mm256_srai_epi32::<{ PRECISION_BITS as i32 }>(a),
            _mm256_srai_epi32::<{ PRECISION_BITS as i32 }>(b),
        );
        let pa = _mm_packs_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256::<1>(a));
        let pb = _mm_packs_epi32(_mm256_castsi256_si128(b), _mm256_extracti128_si256::<1>(b));
        let o = &mut o[..16];
        // SAFETY: `o` has 16 writable bytes.
        unsafe { _mm_storeu_si128(o.as_mut_ptr().cast(), _mm_packus_epi16(pa, pb)) };
    }

    /// [`super::vertical_rows`] with AVX2: each output row in chunks of 32 bytes whose
    /// accumulators stay in four registers for all taps; the last `line % 32` bytes scalar.
    ///
    /// # Safety
    /// The CPU supports AVX2.
    #[target_feature(enable = "avx2")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn vertical_rows<'a>(
        row: impl Fn(usize) -> &'a [u8],
        vk: &[u8],
        vb: &[u8],
        kv: usize,
        y_shift: usize,
        oh: usize,
        line: usize,
        out: &mut [u8],
    ) {
        let half = 1i32 << (PRECISION_BITS - 1);
        let mut kbuf = [0i32; 256];
        for yy in 0..oh {
            let ymin = get_u32(vb, 2 * yy) as usize - y_shift;
            let n = get_u32(vb, 2 * yy + 1) as usize;
            let out_row = &mut out[yy * line..(yy + 1) * line];
            if n > kbuf.len() {
                // A shrink by more than 64 times: the portable kernel takes this row.
                let mut bounds = [0u8; 8];
                bounds[..4].copy_from_slice(&(ymin as u32).to_ne_bytes());
                bounds[4..].copy_from_slice(&(n as u32).to_ne_bytes());
                super::vertical_rows(&row, &vk[yy * kv * 4..], &bounds, kv, 0, 1, line, out_row);
                continue;
            }
            for (k, b) in kbuf[..n].iter_mut().zip(vk[yy * kv * 4..].chunks_exact(4)) {
                *k = i32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
            }
            let ks = &kbuf[..n];
            let vhalf = _mm256_set1_epi32(half);
            let mut x0 = 0;
            while x0 + 32 <= line {
                let mut a = [vhalf; 4];
                for (t, &k) in ks.iter().enumerate() {
                    let r = &row(ymin + t)[x0..x0 + 32];
                    let k = _mm256_set1_epi32(k);
                    for (j, a) in a.iter_mut().enumerate() {
                        // SAFETY: `r` has 32 bytes; this reads bytes 8j .. 8j + 8.
                        let v = unsafe { _mm_loadl_epi64(r.as_ptr().add(8 * j).cast()) };
                        *a = _mm256_add_epi32(*a, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(v), k));
                    }
                }
                store_clipped(&mut out_row[x0..x0 + 16], a[0], a[1]);
                store_clipped(&mut out_row[x0 + 16..x0 + 32], a[2], a[3]);
                x0 += 32;
            }
            for x in x0..line {
                let mut acc = half;
                for (t, &k) in ks.iter().enumerate() {
                    acc += i32::from(row(ymin + t)[x]) * k;
                }
                out_row[x] = super::clip8(acc);
            }
        }
    }

    /// # Safety
    /// The CPU supports AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn strip_taps_rgb(
        t: &[u8],
        hk: &[u8],
        hb: &[u8],
        kh: usize,
        x_shift: usize,
        ow: usize,
        tout: &mut [u8],
    ) {
        const L: usize = 24;
        let half = _mm256_set1_epi32(1 << (PRECISION_BITS - 1));
        for (xx, o) in tout[..ow * L].chunks_exact_mut(L).enumerate() {
            let xmin = get_u32(hb, 2 * xx) as usize - x_shift;
            let n = get_u32(hb, 2 * xx + 1) as usize;
            let ks = &hk[xx * kh * 4..(xx * kh + n) * 4];
            let lines = &t[xmin * L..(xmin + n) * L];
            let (mut a0, mut a1, mut a2) = (half, half, half);
            for (kb, line) in ks.chunks_exact(4).zip(lines.chunks_exact(L)) {
                let k = _mm256_set1_epi32(i32::from_ne_bytes([kb[0], kb[1], kb[2], kb[3]]));
                let p = line.as_ptr();
                // SAFETY: `line` has L = 24 bytes: three 8-byte reads at 0, 8 and 16.
                let (v0, v1, v2) = unsafe {
                    (
                        _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.cast())),
                        _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.add(8).cast())),
                        _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.add(16).cast())),
                    )
                };
                a0 = _mm256_add_epi32(a0, _mm256_mullo_epi32(v0, k));
                a1 = _mm256_add_epi32(a1, _mm256_mullo_epi32(v1, k));
                a2 = _mm256_add_epi32(a2, _mm256_mullo_epi32(v2, k));
            }
            store_clipped(&mut o[..16], a0, a1);
            let mut last = [0u8; 16];
            store_clipped(&mut last, a2, a2);
            o[16..].copy_from_slice(&last[..8]);
        }
    }
}

/// Vertical pass: output row `yy` sums input rows `ymin - y_shift ..` given by `row(r)`, each
/// `line` bytes wide.
fn vertical<'a>(
    row: impl Fn(usize) -> &'a [u8],
    vk: &[u8],
    vb: &[u8],
    kv: usize,
    y_shift: usize,
    oh: usize,
    line: usize,
    out: &mut [u8],
) {
    #[cfg(all(feature = "fast", target_arch = "x86_64"))]
    if super::wide::avx2_enabled() {
        #[allow(unsafe_code)]
        // SAFETY: the CPU has AVX2 (checked just above).
        unsafe {
            avx2::vertical_rows(row, vk, vb, kv, y_shift, oh, line, out)
        };
        return;
    }
    vertical_rows(row, vk, vb, kv, y_shift, oh, line, out);
}

/// One output line from `k.len()` taps over lines `ymin ..`: blocks of four taps accumulate
/// in `acc`, the first block starting from the rounding term, and the last pass (the
/// remaining one to three taps, or the last block) writes the clipped bytes directly.
#[inline(always)]
fn fused_taps<'a>(
    row: &impl Fn(usize) -> &'a [u8],
    ymin: usize,
    k: &[i32],
    line: usize,
    acc: &mut [i32],
    out: &mut [u8],
) {
    let half = 1i32 << (PRECISION_BITS - 1);
    let n = k.len();
    let r = |t: usize| &row(ymin + t)[..line];
    // Taps before the last pass, in blocks of four.
    let blocks = if n.is_multiple_of(4) {
        n.saturating_sub(4)
    } else {
        n - n % 4
    };
    let mut t = 0;
    while t < blocks {
        let (k0, k1, k2, k3) = (k[t], k[t + 1], k[t + 2], k[t + 3]);
        let (r0, r1, r2, r3) = (r(t), r(t + 1), r(t + 2), r(t + 3));
        let first = t == 0;
        for ((((a, &p), &q), &u), &v) in acc.iter_mut().zip(r0).zip(r1).zip(r2).zip(r3) {
            let base = if first { half } else { *a };
            *a = base
                + i32::from(p) * k0
                + i32::from(q) * k1
                + i32::from(u) * k2
                + i32::from(v) * k3;
        }
        t += 4;
    }
    let first = t == 0;
    match n - t {
        4 => {
            let (k0, k1, k2, k3) = (k[t], k[t + 1], k[t + 2], k[t + 3]);
            let (r0, r1, r2, r3) = (r(t), r(t + 1), r(t + 2), r(t + 3));
            for (((((o, &a), &p), &q), &u), &v) in out
                .iter_mut()
                .zip(acc.iter())
                .zip(r0)
                .zip(r1)
                .zip(r2)
                .zip(r3)
            {
                let base = if first { half } else { a };
                *o = clip8(
                    base + i32::from(p) * k0
                        + i32::from(q) * k1
                        + i32::from(u) * k2
                        + i32::from(v) * k3,
                );
            }
        }
        3 => {
            let (k0, k1, k2) = (k[t], k[t + 1], k[t + 2]);
            let (r0, r1, r2) = (r(t), r(t + 1), r(t + 2));
            for ((((o, &a), &p), &q), &u) in out.iter_mut().zip(acc.iter()).zip(r0).zip(r1).zip(r2)
            {
                let base = if first { half } else { a };
                *o = clip8(base + i32::from(p) * k0 + i32::from(q) * k1 + i32::from(u) * k2);
            }
        }
        2 => {
            let (k0, k1) = (k[t], k[t + 1]);
            let (r0, r1) = (r(t), r(t + 1));
            for (((o, &a), &p), &q) in out.iter_mut().zip(acc.iter()).zip(r0).zip(r1) {
                let base = if first { half } else { a };
                *o = clip8(base + i32::from(p) * k0 + i32::from(q) * k1);
            }
        }
        1 => {
            let k0 = k[t];
            let r0 = r(t);
            for ((o, &a), &p) in out.iter_mut().zip(acc.iter()).zip(r0) {
                let base = if first { half } else { a };
                *o = clip8(base + i32::from(p) * k0);
            }
        }
        _ => {
            // No taps at all: PIL's sum is the rounding term alone.
            out.fill(clip8(half));
        }
    }
}

#[inline(always)]
fn vertical_rows<'a>(
    row: impl Fn(usize) -> &'a [u8],
    vk: &[u8],
    vb: &[u8],
    kv: usize,
    y_shift: usize,
    oh: usize,
    line: usize,
    out: &mut [u8],
) {
    let mut acc = [0i32; 512];
    let mut kbuf = [0i32; 256];
    for yy in 0..oh {
        let ymin = get_u32(vb, 2 * yy) as usize - y_shift;
        let n = get_u32(vb, 2 * yy + 1) as usize;
        let kbytes = &vk[yy * kv * 4..(yy * kv + n) * 4];
        let m_taps = n.min(kbuf.len());
        load_coeffs(&kbytes[..m_taps * 4], &mut kbuf[..m_taps]);
        let out_row = &mut out[yy * line..(yy + 1) * line];
        if n <= kbuf.len() && line <= acc.len() {
            fused_taps(&row, ymin, &kbuf[..n], line, &mut acc[..line], out_row);
            continue;
        }
        let mut x0 = 0;
        while x0 < line {
            let m = (line - x0).min(acc.len());
            let acc = &mut acc[..m];
            acc.fill(1 << (PRECISION_BITS - 1));
            let mut t = 0;
            while t + 4 <= n && t + 4 <= m_taps {
                let (k0, k1, k2, k3) = (kbuf[t], kbuf[t + 1], kbuf[t + 2], kbuf[t + 3]);
                let r0 = &row(ymin + t)[x0..x0 + m];
                let r1 = &row(ymin + t + 1)[x0..x0 + m];
                let r2 = &row(ymin + t + 2)[x0..x0 + m];
                let r3 = &row(ymin + t + 3)[x0..x0 + m];
                for ((((a, &p), &q), &u), &v) in acc.iter_mut().zip(r0).zip(r1).zip(r2).zip(r3) {
                    *a += i32::from(p) * k0
                        + i32::from(q) * k1
                        + i32::from(u) * k2
                        + i32::from(v) * k3;
                }
                t += 4;
            }
            while t + 2 <= n && t + 2 <= m_taps {
                let (k0, k1) = (kbuf[t], kbuf[t + 1]);
                let r0 = &row(ymin + t)[x0..x0 + m];
                let r1 = &row(ymin + t + 1)[x0..x0 + m];
                for ((a, &p), &q) in acc.iter_mut().zip(r0).zip(r1) {
                    *a += i32::from(p) * k0 + i32::from(q) * k1;
                }
                t += 2;
            }
            for t in t..n {
                let kt = if t < m_taps {
                    kbuf[t]
                } else {
                    get_u32(kbytes, t) as i32
                };
                let r = &row(ymin + t)[x0..x0 + m];
                for (a, &p) in acc.iter_mut().zip(r) {
                    *a += i32::from(p) * kt;
                }
            }
            for (o, &a) in out_row[x0..x0 + m].iter_mut().zip(acc.iter()) {
                *o = clip8(a);
            }
            x0 += m;
        }
    }
}

/// Resamples the `bx` part of `src` to an `out_w x out_h` image and writes the `region` of it
/// into `dst` (`region.width x region.height`, same channels). PIL's resize of the cropped
/// image followed by a crop, without materialising either. The pass order is Pillow 13's:
/// vertical first when the height shrinks by more than twice as many pixels as the width,
/// horizontal first otherwise (the order changes the u8 rounding of the intermediate).
pub(crate) fn resample(
    src: ImageRef<'_>,
    bx: CropBox,
    out_w: u32,
    out_h: u32,
    region: CropBox,
    f: Interpolation,
    dst: &mut [u8],
    scratch: &mut [u8],
) -> Result<(), AugError> {
    let ch = src.channels as usize;
    let (ow, oh) = (region.width as usize, region.height as usize);
    if dst.len() != ow * oh * ch {
        return Err(AugError::BufferSize {
            what: "resize output",
            expected: ow * oh * ch,
            actual: dst.len(),
        });
    }
    let kh = ksize(f, bx.width, out_w);
    let kv = ksize(f, bx.height, out_h);
    let hk_len = ow * kh * 4;
    let vk_len = oh * kv * 4;
    let need_coeffs = hk_len + ow * 8 + vk_len + oh * 8;
    if scratch.len() < need_coeffs {
        return Err(AugError::BufferSize {
            what: "resize scratch",
            expected: need_coeffs,
            actual: scratch.len(),
        });
    }
    let (hk, rest) = scratch.split_at_mut(hk_len);
    let (hb, rest) = rest.split_at_mut(ow * 8);
    let (vk, rest) = rest.split_at_mut(vk_len);
    let (vb, mid) = rest.split_at_mut(oh * 8);
    precompute(f, bx.width, out_w, region.x, region.width, hk, hb);
    precompute(f, bx.height, out_h, region.y, region.height, vk, vb);
    let dh = i64::from(bx.height) - i64::from(out_h);
    let dw = i64::from(bx.width) - i64::from(out_w);
    let horizontal_first = !(dh > 0 && dh > dw * 2);
    let stride = src.stride();
    let data = src.data;
    let (bxx, bxy) = (bx.x as usize, bx.y as usize);
    // Source columns the horizontal pass reads (relative to the box).
    let x_first = get_u32(hb, 0) as usize;
    let x_last = (get_u32(hb, 2 * (ow - 1)) + get_u32(hb, 2 * (ow - 1) + 1)) as usize;
    let cols = x_last.saturating_sub(x_first);
    let strip_len = STRIP * (cols + ow) * ch;
    if horizontal_first {
        // Source rows the vertical pass reads (relative to the box).
        let y_first = get_u32(vb, 0) as usize;
        let y_last = (get_u32(vb, 2 * (oh - 1)) + get_u32(vb, 2 * (oh - 1) + 1)) as usize;
        let rows = y_last.saturating_sub(y_first);
        let mid_len = rows * ow * ch;
        if mid.len() < mid_len + strip_len {
            return Err(AugError::BufferSize {
                what: "resize scratch",
                expected: need_coeffs + mid_len + strip_len,
                actual: need_coeffs + mid.len(),
            });
        }
        let (mid, t) = mid.split_at_mut(mid_len);
        let (t, tout) = t.split_at_mut(STRIP * cols * ch);
        let x0 = (bxx + x_first) * ch;
        horizontal(
            |r| &data[(bxy + y_first + r) * stride + x0..],
            rows,
            cols,
            hk,
            hb,
            kh,
            x_first,
            ow,
            ch,
            mid,
            t,
            tout,
        );
        let mid = &*mid;
        let line = ow * ch;
        vertical(
            |r| &mid[r * line..(r + 1) * line],
            vk,
            vb,
            kv,
            y_first,
            oh,
            line,
            dst,
        );
    } else {
        let line = cols * ch;
        let mid_len = oh * line;
        if mid.len() < mid_len + strip_len {
            return Err(AugError::BufferSize {
                what: "resize scratch",
                expected: need_coeffs + mid_len + strip_len,
                actual: need_coeffs + mid.len(),
            });
        }
        let (mid, t) = mid.split_at_mut(mid_len);
        let (t, tout) = t.split_at_mut(STRIP * cols * ch);
        let x0 = (bxx + x_first) * ch;
        vertical(
            |r| &data[(bxy + r) * stride + x0..(bxy + r) * stride + x0 + line],
            vk,
            vb,
            kv,
            0,
            oh,
            line,
            mid,
        );
        let mid = &*mid;
        horizontal(
            |r| &mid[r * line..(r + 1) * line],
            oh,
            cols,
            hk,
            hb,
            kh,
            x_first,
            ow,
            ch,
            dst,
            t,
            tout,
        );
    }
    Ok(())
}

/// Resamples the `bx` part of `src` to all of `out` (PIL `img.crop(box).resize(size)`).
pub(crate) fn resize_box(
    src: ImageRef<'_>,
    bx: CropBox,
    f: Interpolation,
    out: ImageMut<'_>,
    scratch: &mut [u8],
) -> Result<(), AugError> {
    let region = CropBox {
        x: 0,
        y: 0,
        width: out.width,
        height: out.height,
    };
    resample(src, bx, out.width, out.height, region, f, out.data, scratch)
}

/// Resizes all of `src` to `out`'s size with PIL semantics (bit-exact with
/// `Image.resize(size, BICUBIC | BILINEAR)`). `scratch` needs [`resize_scratch_len`] bytes.
pub fn resize(
    src: ImageRef<'_>,
    out: ImageMut<'_>,
    f: Interpolation,
    scratch: &mut [u8],
) -> Result<(), AugError> {
    src.validate()?;
    out.validate()?;
    if src.channels != out.channels {
        return Err(AugError::Mismatch("channels"));
    }
    let bx = CropBox {
        x: 0,
        y: 0,
        width: src.width,
        height: src.height,
    };
    resize_box(src, bx, f, out, scratch)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The strip transposes (vectorised on x86_64 with `fast`) move every byte where the
    /// definition says, for lengths around the 16-column blocks and short strips.
    #[test]
    fn strip_transposes_match_their_definition() {
        for len in [0usize, 1, 15, 16, 17, 31, 48, 100] {
            let rows: std::vec::Vec<std::vec::Vec<u8>> = (0..STRIP)
                .map(|r| (0..len).map(|i| (r * 131 + i * 7) as u8).collect())
                .collect();
            let refs: [&[u8]; STRIP] = core::array::from_fn(|r| &rows[r][..]);
            let mut t = std::vec![0u8; len * STRIP];
            transpose_strip(&refs, len, &mut t);
            for i in 0..len {
                for r in 0..STRIP {
                    assert_eq!(t[i * STRIP + r], rows[r][i], "len {len} i {i} r {r}");
                }
            }
            for nrows in 1..=STRIP {
                let line = len + 3;
                let mut out = std::vec![0xAAu8; STRIP * line];
                scatter_strip(&t, nrows, line, &mut out);
                for r in 0..STRIP {
                    for g in 0..line {
                        let want = if r < nrows && g < len {
                            rows[r][g]
                        } else {
                            0xAA
                        };
                        assert_eq!(
                            out[r * line + g],
                            want,
                            "len {len} nrows {nrows} r {r} g {g}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn identity_resize_is_exact() {
        let src: [u8; 5 * 4 * 3] = core::array::from_fn(|i| (i * 37 % 256) as u8);
        let mut out = [0u8; 5 * 4 * 3];
        let mut scratch = [0u8; 4096];
        for f in [Interpolation::Bicubic, Interpolation::Bilinear] {
            resize(
                ImageRef::new(5, 4, 3, &src).unwrap(),
                ImageMut::new(5, 4, 3, &mut out).unwrap(),
                f,
                &mut scratch,
            )
            .unwrap();
            assert_eq!(src, out);
        }
    }

    /// The AVX2 kernels give the bits of the portable build, for both pass orders, both
    /// filters, grey and RGB, up- and downscaling, strips of every height, very wide filters.
    #[cfg(all(feature = "fast", target_arch = "x86_64"))]
    #[test]
    fn avx2_kernels_equal_portable_kernels() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |m: u32| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((state >> 33) % u64::from(m)) as u32
        };
        // The last cases shrink by over 64 times: filters wider than the AVX2 kernels' taps.
        let extreme = [(3, 20_000, 2, 5), (20_000, 3, 5, 2), (40, 17_000, 33, 70)];
        for case in 0..300 + extreme.len() {
            let (w, h, ow, oh) = match extreme.get(case.wrapping_sub(300)) {
                Some(&e) => e,
                None => (1 + next(300), 1 + next(300), 1 + next(260), 1 + next(260)),
            };
            let ch = if case % 3 == 0 { 1 } else { 3 };
            let f = if case % 2 == 0 {
                Interpolation::Bicubic
            } else {
                Interpolation::Bilinear
            };
            let src: std::vec::Vec<u8> = (0..w * h * ch).map(|_| next(256) as u8).collect();
            let len = (ow * oh * ch) as usize;
            let (mut a, mut b) = (std::vec![0u8; len], std::vec![1u8; len]);
            let mut scratch = std::vec![0u8; resize_scratch_len(w, h, ow, oh, ch).unwrap()];
            let s = ImageRef::new(w, h, ch, &src).unwrap();
            resize(
                s,
                ImageMut::new(ow, oh, ch, &mut a).unwrap(),
                f,
                &mut scratch,
            )
            .unwrap();
            super::super::wide::portable(|| {
                resize(
                    s,
                    ImageMut::new(ow, oh, ch, &mut b).unwrap(),
                    f,
                    &mut scratch,
                )
                .unwrap()
            });
            assert!(a == b, "case {case}: {w}x{h}x{ch} -> {ow}x{oh} {f:?}");
        }
    }

    #[test]
    fn constant_image_stays_constant() {
        let src = [77u8; 37 * 23];
        let mut scratch = [0u8; 16384];
        for (w, h) in [(1u32, 1u32), (5, 9), (50, 3), (100, 100)] {
            let mut out = [0u8; 100 * 100];
            let n = (w * h) as usize;
            let need = resize_scratch_len(37, 23, w, h, 1).unwrap();
            assert!(need <= scratch.len());
            resize(
                ImageRef::new(37, 23, 1, &src).unwrap(),
                ImageMut::new(w, h, 1, &mut out[..n]).unwrap(),
                Interpolation::Bicubic,
                &mut scratch,
            )
            .unwrap();
            assert!(out[..n].iter().all(|&v| v == 77), "{w}x{h}");
        }
    }
}
