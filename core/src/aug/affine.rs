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
pub(crate) fn affine(
    src: ImageRef<'_>,
    dst: ImageMut<'_>,
    a: [f64; 6],
    f: Interpolation,
    fill: [u8; 3],
) {
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
    for y in 0..dst.height as usize {
        for x in 0..dst.width as usize {
            let o = (y * dst.width as usize + x) * ch;
            let xo = x as f64 + 0.5;
            let yo = y as f64 + 0.5;
            let xin = a[0] * xo + a[1] * yo + a[2];
            let yin = a[3] * xo + a[4] * yo + a[5];
            // `!(..)` so NaN coordinates also take the fill.
            if !(xin >= 0.0 && xin < wf && yin >= 0.0 && yin < hf) {
                dst.data[o..o + ch].copy_from_slice(&fill[..ch]);
                continue;
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
                                dst.data[o + c] = to_u8(v);
                            }
                            continue;
                        }
                        if dx == 0.0 {
                            for c in 0..ch {
                                let at = |r: usize| f64::from(data[base + r * stride + ch + c]);
                                dst.data[o + c] = to_u8(cubic(at(0), at(1), at(2), at(3), dy));
                            }
                            continue;
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
                            dst.data[o + c] = to_u8(cubic(v[0][c], v[1][c], v[2][c], v[3][c], dy));
                        }
                        continue;
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
                        dst.data[o + c] = to_u8(cubic(v1, v2, v3, v4, dy));
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
                        dst.data[o + c] = v as u8;
                    }
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
