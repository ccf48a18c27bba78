//! Attention's short dot products on DSP lanes: `q . k` over a head's width and `p . v` over a
//! window's tokens.
//!
//! A vector used against many others is turned once into `i16` lane words: per group of four
//! values `(x0, x2)` and `(x1, x3)` ([`lanes_i8`] for `i8` queries, [`lanes_prob`] for the
//! softmax's probabilities). Each word of four `i8` of the other vector then costs one load,
//! two `SXTB16` (`(y0, y2)`, `(y1, y3)`) and two `SMLAD`s ([`dot`]): 1.25 instructions a
//! multiply-accumulate where [`super::ops::dot_i8`] spends two. For `p . v` the engine
//! transposes each head's values once, so that the four `i8` of a word are four tokens of one
//! value channel. Wrapping `i32` sums: the grouping gives the scalar result bit for bit (the
//! engine's golden vectors run this form on the host, its instructions emulated).

use super::ops::insn::{smlad, sxtb16, sxtb16_ror8};
use super::ops::{lanes16, words4};

/// Whether the engine takes these forms: on Armv7E-M with `arm-dsp`, and in the tests (which
/// emulate the instructions). Elsewhere the scalar loops run, with the same results.
pub const ENABLED: bool = cfg!(any(test, all(feature = "arm-dsp", target_arch = "arm")));

/// The lanes of `x` (`len` a multiple of 4) into `out` (`len / 2` words): `None` when the
/// length is not a multiple of 4 or `out` is short.
pub fn lanes_i8<'a>(x: &[i8], out: &'a mut [u32]) -> Option<&'a [u32]> {
    let n = x.len() / 2;
    if !x.len().is_multiple_of(4) || out.len() < n {
        return None;
    }
    for (v, w) in words4(x).zip(out.chunks_exact_mut(2)) {
        w[0] = sxtb16(v);
        w[1] = sxtb16_ror8(v);
    }
    Some(&out[..n])
}

/// The lanes of the probabilities `p`, zero-padded to a multiple of 4 values, into `out`
/// (`ceil(len / 4) * 2` words): `None` when a value does not fit `i16` (a probability of
/// exactly `2^15`, one token taking all the weight) or `out` is short.
pub fn lanes_prob<'a>(p: &[i32], out: &'a mut [u32]) -> Option<&'a [u32]> {
    let n = p.len().div_ceil(4) * 2;
    if out.len() < n || p.iter().any(|v| !(0..=i16::MAX as i32).contains(v)) {
        return None;
    }
    let mut groups = p.chunks_exact(4);
    let mut w = out.chunks_exact_mut(2);
    for (g, w) in (&mut groups).zip(&mut w) {
        w[0] = lanes16(g[0], g[2]);
        w[1] = lanes16(g[1], g[3]);
    }
    let r = groups.remainder();
    if let Some(w) = w.next().filter(|_| !r.is_empty()) {
        let v = |i: usize| r.get(i).copied().unwrap_or(0);
        w[0] = lanes16(v(0), v(2));
        w[1] = lanes16(v(1), v(3));
    }
    Some(&out[..n])
}

/// `init + sum_i x_i y_i` (wrapping) for the lanes of `x` ([`lanes_i8`], [`lanes_prob`]) and
/// the `i8` values `y`, one group of four per two lane words; groups past either end are left
/// out.
#[inline]
pub fn dot(init: i32, lanes: &[u32], y: &[i8]) -> i32 {
    let mut acc = init;
    for (l, v) in lanes.chunks_exact(2).zip(words4(y)) {
        acc = smlad(sxtb16(v), l[0], acc);
        acc = smlad(sxtb16_ror8(v), l[1], acc);
    }
    acc
}

/// [`dot`] of two lane sets against the same `y` (two probability rows against one transposed
/// value channel): each word of `y` loaded and sign-extended once for both.
#[inline]
pub fn dot2(l0: &[u32], l1: &[u32], y: &[i8]) -> [i32; 2] {
    let (mut a0, mut a1) = (0i32, 0i32);
    for ((p, q), v) in l0.chunks_exact(2).zip(l1.chunks_exact(2)).zip(words4(y)) {
        let (e, o) = (sxtb16(v), sxtb16_ror8(v));
        a0 = smlad(o, p[1], smlad(e, p[0], a0));
        a1 = smlad(o, q[1], smlad(e, q[0], a1));
    }
    [a0, a1]
}

/// `vt` (`[n, stride]`, `stride >= t`) gets the transpose of the `n` value channels at offset
/// `off` of the `t` rows of `rows` (`[t, row]`), columns `t..stride` zero.
pub fn transpose(
    rows: &[i8],
    row: usize,
    off: usize,
    t: usize,
    n: usize,
    vt: &mut [i8],
    stride: usize,
) {
    for (d, out) in vt.chunks_exact_mut(stride).take(n).enumerate() {
        for (j, o) in out.iter_mut().enumerate() {
            *o = if j < t {
                rows.get(j * row + off + d).copied().unwrap_or(0)
            } else {
                0
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::splitmix64;

    /// Both dot products equal the scalar sums for every length, extremes included; a
    /// probability of 2^15 or a length not a multiple of 4 is refused.
    #[test]
    fn lane_dots_are_the_scalar_sums() {
        let mut s = 3u64;
        let mut buf = [0u32; 64];
        for n in 1..=40usize {
            let x: std::vec::Vec<i8> = (0..n)
                .map(|i| {
                    if i % 5 == 0 {
                        -128
                    } else {
                        splitmix64(&mut s) as i8
                    }
                })
                .collect();
            let y: std::vec::Vec<i8> = (0..n.div_ceil(4) * 4)
                .map(|i| {
                    if i % 3 == 0 {
                        127
                    } else {
                        splitmix64(&mut s) as i8
                    }
                })
                .collect();
            let p: std::vec::Vec<i32> = (0..n)
                .map(|i| {
                    if i == 0 {
                        32767
                    } else {
                        (splitmix64(&mut s) % 32768) as i32
                    }
                })
                .collect();
            let want_p = (0..n).fold(0i32, |a, i| a.wrapping_add(p[i] * y[i] as i32));
            let l = lanes_prob(&p, &mut buf).expect("probabilities fit");
            assert_eq!(dot(0, l, &y), want_p, "p . v, n {n}");
            let l = l.to_vec();
            let p1: std::vec::Vec<i32> = p.iter().rev().copied().collect();
            let mut buf1 = [0u32; 64];
            let l1 = lanes_prob(&p1, &mut buf1).expect("probabilities fit");
            let want_p1 = (0..n).fold(0i32, |a, i| a.wrapping_add(p1[i] * y[i] as i32));
            assert_eq!(dot2(&l, l1, &y), [want_p, want_p1], "two rows, n {n}");
            match lanes_i8(&x, &mut buf) {
                Some(l) => {
                    let want = (0..n).fold(5i32, |a, i| a.wrapping_add(x[i] as i32 * y[i] as i32));
                    assert_eq!(dot(5, l, &y), want, "q . k, n {n}");
                }
                None => assert!(n % 4 != 0, "n {n}"),
            }
        }
        assert!(lanes_prob(&[1, 32768, 0], &mut buf).is_none());
        assert!(lanes_prob(&[1, -1], &mut buf).is_none());
        assert!(lanes_i8(&[0; 8], &mut buf[..3]).is_none());
    }

    /// The transpose puts token `j`'s channel `d` at `[d, j]` and zeros past `t`.
    #[test]
    fn transpose_moves_each_value() {
        let rows: std::vec::Vec<i8> = (0..5 * 9).map(|i| i as i8).collect();
        let mut vt = [99i8; 3 * 8];
        transpose(&rows, 9, 6, 5, 3, &mut vt, 8);
        for d in 0..3 {
            for j in 0..8 {
                let want = if j < 5 { rows[j * 9 + 6 + d] } else { 0 };
                assert_eq!(vt[d * 8 + j], want);
            }
        }
    }
}
