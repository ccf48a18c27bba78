//! Integer primitives of the int8 engine: requantisation, exp and softmax, GELU, integer square
//! root and LayerNorm. Integer arithmetic only (this module is compiled under
//! `deny(clippy::float_arithmetic)` and names no float type), so every target computes the same
//! bits.
//!
//! # Fixed-point formats
//!
//! - A [`Multiplier`] `(m, s)` stands for the real `m / 2^s`; [`requant`] is the one rounding
//!   rule of the engine.
//! - `Q12`: GELU works on `i32` values with 12 fraction bits (real = v / 4096).
//! - `Q10`: attention scores (real = v / 1024) enter the softmax; probabilities leave it in
//!   `Q15` (1.0 = 32768).
//!
//! # Error bounds (tests below check each against an f64 reference over its input range)
//!
//! | op               | input range                  | bound (worst seen)            |
//! |------------------|------------------------------|-------------------------------|
//! | [`requant`]      | every `i32`, every multiplier| exact (0 LSB)                 |
//! | [`isqrt_u64`]    | every `u64`                  | exact floor                   |
//! | [`exp_q10`]      | `[-2^31, 0]` (Q10)           | 2 LSB of Q16 (1.57)           |
//! | [`softmax_q15`]  | rows of Q10 scores           | 2 LSB of Q15 per prob. (0.71) |
//! | [`gelu_q12`]     | `[-2^20, 2^20]` (Q12)        | 1.5 LSB of Q12 (1.08)         |
//! | [`gelu_table`]   | `i8` pre-activations         | 1/2 LSB + 2.07 Q12 LSB (0.5 + 0.20 of the `i8` output) |
//! | [`layer_norm`]   | `i16` tokens, `C <= 2^16`    | 1 LSB of the `i8` output (0.99)|
//!
//! The worst-seen figures are printed by
//! `cargo test -p tinyvit-core --all-features --lib int8::ops -- --nocapture`.
#![deny(clippy::float_arithmetic)]

/// A real multiplier `m / 2^shift`, `shift` in `1..=62`, `m` any `i32` (negative for a
/// negative LayerNorm weight). Files are checked for the shift range when parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Multiplier {
    /// Numerator.
    pub m: i32,
    /// Power-of-two denominator, `1..=62`.
    pub shift: u32,
}

/// Smallest valid shift.
pub const MIN_SHIFT: u32 = 1;
/// Largest valid shift.
pub const MAX_SHIFT: u32 = 62;

/// `round(x * m / 2^shift)`, ties toward +infinity, saturated to `i32`: computed exactly as
/// `floor((x * m + 2^(shift-1)) / 2^shift)` in `i64`. This is the engine's only rounding rule.
///
/// Overflow: `|x * m| <= 2^62`, plus `2^61`, stays below `2^63`.
#[inline]
pub fn requant(x: i32, k: Multiplier) -> i32 {
    // The common case first (accumulators to a coarser scale: shifts 33..=62), tested without
    // clamping the shift.
    let t = k.shift.wrapping_sub(33);
    if t < 30 {
        // The rounding constant 2^(s-1) lies wholly in the high word, and the low word of
        // x * m adds less than one unit of it: floor((x m + 2^(s-1)) / 2^s) =
        // floor((hi + 2^(t-1+1)) / 2^(t+1)) with hi = floor(x m / 2^32), t = s - 33. That is
        // floor((floor(hi / 2^t) + 1) / 2): with hi = q 2^t + r (0 <= r < 2^t) the sum is
        // (q + 1) / 2 + r / 2^(t+1), whose fraction part stays below one either way q's
        // parity goes. One multiply-high, two shifts and an add.
        return requant_high(x, k.m, t);
    }
    // Shifts 2..=32 (multipliers from about 1/4 up: residual and per-tensor scales): with
    // `j = 33 - s`, `floor((x m + 2^(s-1)) / 2^s) = floor((x 2^j m + 2^32) / 2^33)`, which is
    // the shift-33 path on `x 2^j` whenever that fits `i32` (then `|x 2^j m| < 2^62` and the
    // result needs no saturation).
    let j = 33u32.wrapping_sub(k.shift);
    if j.wrapping_sub(1) < 31 {
        let xs = x << j;
        if xs >> j == x {
            return requant_high(xs, k.m, 0);
        }
    }
    let s = k.shift.clamp(MIN_SHIFT, MAX_SHIFT);
    if s >= 33 {
        // A shift above 62, clamped to 62.
        return requant_high(x, k.m, s - 33);
    }
    // s <= 32: the rounding constant fits 32 bits; p = hi 2^32 + lo.
    let p = (x as i64 * k.m as i64) + (1u32 << (s - 1)) as i64;
    let hi = (p >> 32) as i32;
    if s == 32 {
        // `|p| < 2^63`: `p >> 32` fits `i32` exactly and needs no saturation.
        return hi;
    }
    // s <= 31 without a 64-bit variable shift (a call-sized sequence on a 32-bit core):
    // p >> s = hi 2^(32-s) + (lo >> s), which fits `i32` exactly when
    // hi is in [-2^(s-1), 2^(s-1)), i.e. hi >> (s-1) is hi's sign; else it saturates.
    if hi >> (s - 1) != hi >> 31 {
        return if hi < 0 { i32::MIN } else { i32::MAX };
    }
    (((hi as u32) << (32 - s)) | ((p as u32) >> s)) as i32
}

/// [`requant`] for shifts `t + 33` (`t < 30`): `((floor(x m / 2^32) >> t) + 1) >> 1`.
#[inline(always)]
fn requant_high(x: i32, m: i32, t: u32) -> i32 {
    let hi = ((x as i64 * m as i64) >> 32) as i32;
    ((hi >> t) + 1) >> 1
}

/// [`requant`] as first written (one 64-bit shift, then saturation): the reference the test
/// `requant_fast_path_is_the_reference` holds the split version to.
#[cfg(test)]
pub(crate) fn requant_reference(x: i32, k: Multiplier) -> i32 {
    let s = k.shift.clamp(MIN_SHIFT, MAX_SHIFT);
    let v = ((x as i64 * k.m as i64) + (1i64 << (s - 1))) >> s;
    v.clamp(i32::MIN as i64, i32::MAX as i64) as i32
}

/// Saturates to `[-127, 127]` (`i8` without -128): to `[-128, 127]` first, one `SSAT` on
/// Armv7E-M.
#[inline]
pub fn sat_i8(v: i32) -> i8 {
    ssat8(v).max(-127) as i8
}

/// `v` saturated to `[-128, 127]`: one `SSAT` on Armv7E-M with `arm-dsp`, written as an
/// instruction there so that the compiler does not fold the `max(-127)` that follows into two
/// compare-and-move pairs (six instructions where these are four).
#[inline(always)]
fn ssat8(v: i32) -> i32 {
    #[cfg(all(feature = "arm-dsp", target_arch = "arm"))]
    {
        let out: i32;
        // SAFETY: one register-only Armv7-M instruction; no memory, no stack; the APSR Q flag
        // it may set is never read.
        #[allow(unsafe_code)]
        unsafe {
            core::arch::asm!("ssat {o}, #8, {v}", o = lateout(reg) out, v = in(reg) v,
                             options(pure, nomem, nostack));
        }
        out
    }
    #[cfg(not(all(feature = "arm-dsp", target_arch = "arm")))]
    {
        v.clamp(-128, 127)
    }
}

/// Saturates to `[-max, max]` as `i16` (`max` = the residual stream's bound, at most 32767).
#[inline]
pub fn sat_i16(v: i32, max: i16) -> i16 {
    let m = max as i32;
    v.clamp(-m, m) as i16
}

/// The `i8` values of `x` as little-endian words of four, in order (one `LDR` each on
/// Armv7E-M, where reading the bytes one by one costs seven instructions); a tail of fewer than
/// four is left out.
#[inline(always)]
pub(crate) fn words4(x: &[i8]) -> impl Iterator<Item = u32> + '_ {
    bytemuck::cast_slice::<i8, u8>(x)
        .as_chunks::<4>()
        .0
        .iter()
        .map(|b| u32::from_le_bytes(*b))
}

/// Two `i16` lanes of a DSP word (each value modulo `2^16`), `lo` in the low half.
#[inline(always)]
pub(crate) fn lanes16(lo: i32, hi: i32) -> u32 {
    (lo as u16 as u32) | ((hi as u16 as u32) << 16)
}

/// The first four `i8` of `g` as one little-endian word (0 when `g` holds fewer).
#[inline(always)]
pub(crate) fn word4(g: &[i8]) -> u32 {
    words4(g).next().unwrap_or(0)
}

/// The int8 dot product, `init + sum a[i] * b[i]` in index order with wrapping `i32`
/// additions. Every matrix product of the engine goes through here, so a DSP version
/// (`SXTB16` + `SMLAD`) replaces this one function. Valid files never wrap: biases are clamped
/// to `2^30` and fan-ins are at most `2^16` (`|a*b| <= 2^14`).
///
/// With the `arm-dsp` feature on a 32-bit Arm target the body is [`dsp::dot_i8`]: four pairs
/// per `SXTB16`/`SMLAD` group. Wrapping addition is associative and commutative, so the
/// grouping gives the same `i32` as this loop, bit for bit.
#[inline]
pub fn dot_i8(init: i32, a: &[i8], b: &[i8]) -> i32 {
    #[cfg(all(feature = "arm-dsp", target_arch = "arm"))]
    {
        dsp::dot_i8(init, a, b)
    }
    #[cfg(not(all(feature = "arm-dsp", target_arch = "arm")))]
    {
        dot_i8_scalar(init, a, b)
    }
}

/// The portable reference of [`dot_i8`], one product at a time in index order.
#[inline]
pub fn dot_i8_scalar(init: i32, a: &[i8], b: &[i8]) -> i32 {
    let mut acc = init;
    for (x, y) in a.iter().zip(b) {
        acc = acc.wrapping_add(*x as i32 * *y as i32);
    }
    acc
}

/// The Armv7E-M DSP dot product (Cortex-M4/M7).
#[cfg(all(feature = "arm-dsp", target_arch = "arm"))]
#[allow(unsafe_code)]
pub mod dsp {
    use core::arch::asm;

    /// `acc + sum_{k<4} x_k y_k` over the bytes of `x` and `y`: `SXTB16` sign-extends bytes 0
    /// and 2 (and, rotated by 8, bytes 1 and 3) into two `i16` lanes; `SMLAD` adds both lane
    /// products to the accumulator (wrapping, as `wrapping_add`; the Q flag it may set is never
    /// read).
    #[inline(always)]
    fn mac4(acc: i32, x: u32, y: u32) -> i32 {
        let out: i32;
        // SAFETY: register-only Armv7E-M instructions (SXTB16, SMLAD) on operands already in
        // registers: no memory access, no stack; the APSR Q flag SMLAD may set is not declared
        // preserved (no `preserves_flags`).
        unsafe {
            asm!(
                "sxtb16 {xe}, {x}",
                "sxtb16 {xo}, {x}, ror #8",
                "sxtb16 {ye}, {y}",
                "sxtb16 {yo}, {y}, ror #8",
                "smlad {acc}, {xe}, {ye}, {acc}",
                "smlad {acc}, {xo}, {yo}, {acc}",
                x = in(reg) x,
                y = in(reg) y,
                xe = out(reg) _,
                xo = out(reg) _,
                ye = out(reg) _,
                yo = out(reg) _,
                acc = inout(reg) acc => out,
                options(pure, nomem, nostack),
            );
        }
        out
    }

    /// [`super::dot_i8`] on the DSP extension: 4 pairs per step, the rest one by one.
    #[inline]
    pub fn dot_i8(init: i32, a: &[i8], b: &[i8]) -> i32 {
        let n = a.len().min(b.len());
        let (a, b) = (&a[..n], &b[..n]);
        let mut acc = init;
        for (x, y) in super::words4(a).zip(super::words4(b)) {
            acc = mac4(acc, x, y);
        }
        let done = n & !3;
        super::dot_i8_scalar(acc, &a[done..], &b[done..])
    }
}

/// The DSP instructions the kernels use (`SMLAD`, `SXTB16`, `SSUB16`): the instructions on
/// Armv7E-M with `arm-dsp`, their exact emulation elsewhere (what the tests run).
#[allow(dead_code)]
pub(crate) mod insn {
    #[cfg(all(feature = "arm-dsp", target_arch = "arm"))]
    #[allow(unsafe_code)]
    mod imp {
        use core::arch::asm;

        /// `acc + lo(a) lo(b) + hi(a) hi(b)` on signed `i16` lanes, wrapping.
        #[inline(always)]
        pub fn smlad(a: u32, b: u32, acc: i32) -> i32 {
            let out: i32;
            // SAFETY: one register-only Armv7E-M instruction; no memory, no stack; the
            // APSR Q flag it may set is never read.
            unsafe {
                asm!("smlad {o}, {a}, {b}, {c}", o = lateout(reg) out, a = in(reg) a,
                     b = in(reg) b, c = in(reg) acc, options(pure, nomem, nostack));
            }
            out
        }

        /// Bytes 1 and 3 of `x` sign-extended into two `i16` lanes.
        #[inline(always)]
        pub fn sxtb16_ror8(x: u32) -> u32 {
            let out: u32;
            // SAFETY: one register-only Armv7E-M instruction; no memory, no stack, no flags.
            unsafe {
                asm!("sxtb16 {o}, {x}, ror #8", o = lateout(reg) out, x = in(reg) x,
                     options(pure, nomem, nostack, preserves_flags));
            }
            out
        }

        /// Bytes 0 and 2 of `x` sign-extended into two `i16` lanes.
        #[inline(always)]
        pub fn sxtb16(x: u32) -> u32 {
            let out: u32;
            // SAFETY: one register-only Armv7E-M instruction; no memory, no stack, no flags.
            unsafe {
                asm!("sxtb16 {o}, {x}", o = lateout(reg) out, x = in(reg) x,
                     options(pure, nomem, nostack, preserves_flags));
            }
            out
        }

        /// `a - b` on each unsigned byte, saturated at 0.
        #[inline(always)]
        pub fn uqsub8(a: u32, b: u32) -> u32 {
            let out: u32;
            // SAFETY: one register-only Armv7E-M instruction; no memory, no stack; the APSR GE
            // flags it sets are never read.
            unsafe {
                asm!("uqsub8 {o}, {a}, {b}", o = lateout(reg) out, a = in(reg) a,
                     b = in(reg) b, options(pure, nomem, nostack));
            }
            out
        }

        /// `a - b` on each `i16` lane, modulo `2^16`.
        #[inline(always)]
        pub fn ssub16(a: u32, b: u32) -> u32 {
            let out: u32;
            // SAFETY: one register-only Armv7E-M instruction; no memory, no stack; the
            // APSR GE flags it sets are never read.
            unsafe {
                asm!("ssub16 {o}, {a}, {b}", o = lateout(reg) out, a = in(reg) a,
                     b = in(reg) b, options(pure, nomem, nostack));
            }
            out
        }
    }

    #[cfg(not(all(feature = "arm-dsp", target_arch = "arm")))]
    mod imp {
        #[inline(always)]
        pub fn smlad(a: u32, b: u32, acc: i32) -> i32 {
            let p0 = (a as i16 as i32) * (b as i16 as i32);
            let p1 = ((a >> 16) as i16 as i32) * ((b >> 16) as i16 as i32);
            acc.wrapping_add(p0).wrapping_add(p1)
        }

        #[inline(always)]
        pub fn sxtb16_ror8(x: u32) -> u32 {
            sxtb16(x >> 8)
        }

        #[inline(always)]
        pub fn sxtb16(x: u32) -> u32 {
            let lo = x as u8 as i8 as i16 as u16 as u32;
            let hi = (x >> 16) as u8 as i8 as i16 as u16 as u32;
            lo | (hi << 16)
        }

        #[inline(always)]
        pub fn uqsub8(a: u32, b: u32) -> u32 {
            let (a, b) = (a.to_le_bytes(), b.to_le_bytes());
            u32::from_le_bytes(core::array::from_fn(|i| a[i].saturating_sub(b[i])))
        }

        #[inline(always)]
        pub fn ssub16(a: u32, b: u32) -> u32 {
            let lo = (a as u16).wrapping_sub(b as u16) as u32;
            let hi = ((a >> 16) as u16).wrapping_sub((b >> 16) as u16) as u32;
            lo | (hi << 16)
        }
    }

    pub use imp::{smlad, ssub16, sxtb16, sxtb16_ror8, uqsub8};
}

/// The matrix kernels: `i8` activations times `Kind::Mat` weight rows, several output
/// channels per pass.
///
/// # The DSP form (Armv7E-M, feature `arm-dsp`)
///
/// A stored word of four weights `B0..B3` (`B0`, `B2` sign-flipped, [`mat_code`]) read as two
/// `i16` lanes is `(w0 + 128 + 256 w1, w2 + 128 + 256 w3)`, and `SXTB16` of it rotated by 8 is
/// `(w1, w3)`. [`prepare`] turns each group of four activations into the lanes `(x0, x2)` and
/// `(x1 - 256 x0, x3 - 256 x2)` once per vector, so that
///
/// `SMLAD(word, (x0, x2)) + SMLAD(SXTB16(word ror 8), (x1 - 256 x0, x3 - 256 x2))`
/// ` = w0 x0 + w1 x1 + w2 x2 + w3 x3 + 128 (x0 + x2)`,
///
/// and the last term, summed over the vector, is removed once per output (`corr`). One weight
/// word costs one load, one `SXTB16` and two `SMLAD`s, and the prepared activations are reused
/// by every output channel. `x1 - 256 x0` fits `i16` when `|x| <= 127`; a vector holding
/// `-128` (which no engine op produces: [`sat_i8`] clamps to 127) takes the scalar path.
/// Every sum is wrapping `i32` arithmetic, so the result is [`dot_mat_scalar`]'s, bit for bit;
/// the tests run this form with the instructions emulated against the scalar loop.
pub mod mat {
    use super::{dot_mat_scalar, I32s};

    /// `u32` words of preparation buffer for a fan-in of `k`: two per group of four inputs, or
    /// none when `k` is not a multiple of 4 (the scalar loop runs then).
    pub const fn prep_words(k: usize) -> usize {
        if k.is_multiple_of(4) {
            k / 2
        } else {
            0
        }
    }

    /// An activation vector and, when the DSP form applies, its prepared lanes.
    #[derive(Clone, Copy, Debug)]
    pub struct Prepared<'a> {
        x: &'a [i8],
        words: &'a [u32],
        corr: i32,
    }

    impl Prepared<'_> {
        /// The activations.
        pub fn x(&self) -> &[i8] {
            self.x
        }
    }

    /// Prepares `x` for the kernels in `buf` (at least [`prep_words`] words, else the scalar
    /// loop runs). On targets without the DSP form it only wraps `x`.
    pub fn prepare<'a>(x: &'a [i8], buf: &'a mut [u32]) -> Prepared<'a> {
        let plain = Prepared {
            x,
            words: &[],
            corr: 0,
        };
        if !cfg!(any(test, all(feature = "arm-dsp", target_arch = "arm"))) {
            return plain;
        }
        prepare_dsp(x, buf).unwrap_or(plain)
    }

    /// The prepared lanes of `x` ([`mat`](self)'s DSP form); `None` when `x` does not allow it.
    pub(crate) fn prepare_dsp<'a>(x: &'a [i8], buf: &'a mut [u32]) -> Option<Prepared<'a>> {
        let n = prep_words(x.len());
        if n == 0 || buf.len() < n {
            return None;
        }
        let words = &mut buf[..n];
        let (mut even, mut bad) = (0i32, 0u32);
        for (v, w) in super::words4(x).zip(words.chunks_exact_mut(2)) {
            bad |= has_min(v);
            let (e, o) = word_lanes(v);
            even = smlad(e, EVEN_SUM, even);
            w[0] = e;
            w[1] = o;
        }
        if bad != 0 {
            return None;
        }
        Some(Prepared {
            x,
            words,
            corr: even.wrapping_mul(-128),
        })
    }

    /// The lanes `(x0, x2)` and `(x1 - 256 x0, x3 - 256 x2)` of a group of four inputs, from
    /// scalars: the reference [`word_lanes`] is tested against.
    #[cfg(test)]
    pub(crate) fn group_lanes(g: &[i8]) -> (u32, u32) {
        let (x0, x1, x2, x3) = (g[0] as i32, g[1] as i32, g[2] as i32, g[3] as i32);
        (
            super::lanes16(x0, x2),
            super::lanes16(x1 - 256 * x0, x3 - 256 * x2),
        )
    }

    /// Non-zero when a byte of `v` is `0x80` (-128): `UQSUB8(0x01010101, v ^ 0x80808080)` is 1
    /// in each byte that is 0 after the flip and 0 elsewhere (two instructions on Armv7E-M).
    #[inline(always)]
    pub(crate) fn has_min(v: u32) -> u32 {
        uqsub8(0x0101_0101, v ^ 0x8080_8080)
    }

    /// `SMLAD` with these lanes `(1, 1)` adds `x0 + x2` of the even lanes to the sum the
    /// correction removes.
    const EVEN_SUM: u32 = 0x0001_0001;

    /// [`word_lanes`] for the tests.
    #[cfg(test)]
    pub(crate) fn word_lanes_for_test(v: u32) -> (u32, u32) {
        word_lanes(v)
    }

    /// [`group_lanes`] of the word `v` (bytes `x0..x3`) in four DSP instructions: `SXTB16`
    /// gives `e = (x0, x2)`; `(e << 8) & 0xff00ff00` is `(256 x0, 256 x2)` modulo `2^16` a lane
    /// (each lane's low byte moved up; the sign bits lane 0 shifts into lane 1 fall in the
    /// masked byte); `SSUB16` of it from `SXTB16(v ror 8) = (x1, x3)` is
    /// `(x1 - 256 x0, x3 - 256 x2)` modulo `2^16` a lane, which is what [`lanes`] stores.
    #[inline(always)]
    fn word_lanes(v: u32) -> (u32, u32) {
        let e = sxtb16(v);
        (e, ssub16(sxtb16_ror8(v), (e << 8) & 0xff00_ff00))
    }

    /// `u32` words of preparation buffer for a pair of vectors of fan-in `k` (the two-column
    /// kernels): twice [`prep_words`].
    pub const fn pair_words(k: usize) -> usize {
        2 * prep_words(k)
    }

    /// Two activation vectors of one fan-in and, when the DSP form applies to both, their
    /// lanes interleaved per group of four inputs as `[e(x), e(y), o(x), o(y)]` (`e`, `o` the
    /// two lane words [`prepare`] makes), so that one `LDRD` feeds both columns.
    #[derive(Clone, Copy, Debug)]
    pub struct Pair<'a> {
        x: [&'a [i8]; 2],
        words: &'a [u32],
        corr: [i32; 2],
    }

    /// Prepares `x` and `y` (same length) for the two-column kernels in `buf` (at least
    /// [`pair_words`] words, else the scalar loop runs). On targets without the DSP form it
    /// only wraps them.
    pub fn prepare_pair<'a>(x: &'a [i8], y: &'a [i8], buf: &'a mut [u32]) -> Pair<'a> {
        let plain = Pair {
            x: [x, y],
            words: &[],
            corr: [0; 2],
        };
        if !cfg!(any(test, all(feature = "arm-dsp", target_arch = "arm"))) {
            return plain;
        }
        prepare_pair_dsp(x, y, buf).unwrap_or(plain)
    }

    /// The interleaved lanes of `x` and `y`; `None` when either does not allow the DSP form.
    pub(crate) fn prepare_pair_dsp<'a>(
        x: &'a [i8],
        y: &'a [i8],
        buf: &'a mut [u32],
    ) -> Option<Pair<'a>> {
        let n = pair_words(x.len());
        if n == 0 || x.len() != y.len() || buf.len() < n {
            return None;
        }
        let words = &mut buf[..n];
        let (mut even, mut bad) = ([0i32; 2], 0u32);
        for ((vx, vy), w) in super::words4(x)
            .zip(super::words4(y))
            .zip(words.chunks_exact_mut(4))
        {
            bad |= has_min(vx) | has_min(vy);
            let (ex, ox) = word_lanes(vx);
            let (ey, oy) = word_lanes(vy);
            even[0] = smlad(ex, EVEN_SUM, even[0]);
            even[1] = smlad(ey, EVEN_SUM, even[1]);
            w.copy_from_slice(&[ex, ey, ox, oy]);
        }
        if bad != 0 {
            return None;
        }
        Some(Pair {
            x: [x, y],
            words,
            corr: even.map(|e| e.wrapping_mul(-128)),
        })
    }

    use super::insn::{smlad, ssub16, sxtb16, sxtb16_ror8, uqsub8};

    /// One weight word into an accumulator (see the module doc).
    #[cfg_attr(all(feature = "arm-dsp", target_arch = "arm"), allow(dead_code))]
    #[inline(always)]
    fn step(acc: i32, w: u32, e: u32, o: u32) -> i32 {
        smlad(sxtb16_ror8(w), o, smlad(w, e, acc))
    }

    /// Where row `o` of the `[len / k, k]` matrix weights `w` is stored ("Row pairs" in the
    /// module doc): its first byte, and the bytes from one group of four to the next (8 inside
    /// a stored pair, 4 for a row stored alone, whose bytes are then contiguous).
    #[inline(always)]
    pub fn row_at(len: usize, k: usize, o: usize) -> (usize, usize) {
        if k > 0 && k.is_multiple_of(4) && (o | 1) < len / k {
            ((o & !1) * k + (o & 1) * 4, 8)
        } else {
            (o * k, 4)
        }
    }

    /// The stored position of weight `j` of row `o` in `[len / k, k]` matrix weights
    /// ([`row_at`]): the writer's permutation.
    pub fn stored_index(len: usize, k: usize, o: usize, j: usize) -> usize {
        let (at, step) = row_at(len, k, o);
        at + (j / 4) * step + j % 4
    }

    /// Writes the plain weights `row` (`k` values) as row `o` of the stored matrix `w`
    /// (`[w.len() / k, k]`): each byte coded by [`super::mat_code`] at its stored offset and
    /// placed by [`stored_index`]. The one writer of the layout (the quantiser's files, the
    /// attention keys the engine runs as weights); rows inside a stored pair go a word at a
    /// time (`mat_code` then flips bytes 0 and 2, since the pair starts on an even offset and
    /// its words 4 bytes apart).
    pub fn store_row(w: &mut [i8], k: usize, o: usize, row: &[i8]) {
        let (at, step) = row_at(w.len(), k, o);
        if step == 8 {
            let w: &mut [u8] = bytemuck::cast_slice_mut(w);
            for (g, v) in super::words4(&row[..k]).enumerate() {
                let b = (v ^ 0x0080_0080).to_le_bytes();
                w[at + 8 * g..at + 8 * g + 4].copy_from_slice(&b);
            }
            return;
        }
        for (j, v) in row[..k].iter().enumerate() {
            w[at + j] = super::mat_code(*v, at + j);
        }
    }

    /// `init + sum_j x_j w[o, j]` for row `o` of the matrix weights `w` (`[len / k, k]`, stored
    /// as [`row_at`] says), decoded by [`super::mat_code`], in fan-in order: the scalar
    /// reference every kernel equals.
    pub fn dot_row(init: i32, x: &[i8], w: &[i8], k: usize, o: usize) -> i32 {
        let (at, step) = row_at(w.len(), k, o);
        if step == 4 {
            return dot_mat_scalar(init, x, &w[at..at + k], o * k);
        }
        // Inside a pair the stored offset of byte `j` has `j`'s parity (`at` is even and groups
        // sit 8 bytes apart), so `mat_code` decodes with `j % 4`.
        let mut acc = init;
        for (g, xs) in x[..k].chunks_exact(4).enumerate() {
            let b = &w[at + 8 * g..at + 8 * g + 4];
            for (i, (a, b)) in xs.iter().zip(b).enumerate() {
                acc = acc.wrapping_add(*a as i32 * super::mat_code(*b, i) as i32);
            }
        }
        acc
    }

    /// Stored word `j` (weights `4 j .. 4 j + 4`) of row `o` of `w` (`[len / k, k]`).
    #[cfg_attr(all(feature = "arm-dsp", target_arch = "arm"), allow(dead_code))]
    #[inline(always)]
    fn row_word(w: &[i8], k: usize, o: usize, j: usize) -> u32 {
        let (at, step) = row_at(w.len(), k, o);
        super::word4(&w[at + step * j..at + step * j + 4])
    }

    /// The DSP form in Rust over rows `o..o + R` of `w` (`[rows, 4 g]`, `g` the prepared
    /// groups), one group a step.
    #[cfg_attr(all(feature = "arm-dsp", target_arch = "arm"), allow(dead_code))]
    pub(crate) fn dsp<const R: usize>(
        init: [i32; R],
        p: &Prepared<'_>,
        w: &[i8],
        o: usize,
    ) -> [i32; R] {
        let k = p.words.len() * 2;
        let mut a = init.map(|v| v.wrapping_add(p.corr));
        for (j, act) in p.words.chunks_exact(2).enumerate() {
            for (i, acc) in a.iter_mut().enumerate() {
                *acc = step(*acc, row_word(w, k, o + i, j), act[0], act[1]);
            }
        }
        a
    }

    /// Rows `o..o + 4` (`o` even: two stored pairs) of the DSP form over `w` (`[rows, k]`,
    /// `k = 4 g`, `g` the prepared groups). On Armv7E-M with `arm-dsp`: [`rows4_asm`];
    /// elsewhere the same steps in Rust (what the tests run).
    #[inline(always)]
    pub(crate) fn rows4(init: [i32; 4], p: &Prepared<'_>, w: &[i8], o: usize) -> [i32; 4] {
        let g = p.words.len() / 2;
        assert!(o.is_multiple_of(2) && w.len() >= (o + 4) * 4 * g);
        #[cfg(all(feature = "arm-dsp", target_arch = "arm"))]
        {
            rows4_asm(init, p, &w[o * 4 * g..(o + 4) * 4 * g], g)
        }
        #[cfg(not(all(feature = "arm-dsp", target_arch = "arm")))]
        {
            dsp(init, p, w, o)
        }
    }

    /// [`rows4`] in assembly, one block: per group of four inputs one `LDRD` of the prepared
    /// lanes and, per stored pair, one `LDRD` of both rows' weight words, then per row
    /// `SMLAD`, `SXTB16`, `SMLAD`: 15 instructions for 16 multiply-accumulates; two groups a
    /// loop step (an odd group first). Twelve registers: four accumulators, the lanes, two
    /// weight words, the lane pointer and its end, and one pointer per stored pair.
    #[cfg(all(feature = "arm-dsp", target_arch = "arm"))]
    #[allow(unsafe_code)]
    #[inline(always)]
    fn rows4_asm(init: [i32; 4], p: &Prepared<'_>, rows: &[i8], g: usize) -> [i32; 4] {
        use core::arch::asm;
        let [mut a0, mut a1, mut a2, mut a3] = init.map(|v| v.wrapping_add(p.corr));
        if g == 0 {
            return [a0, a1, a2, a3];
        }
        let k = 4 * g;
        let mut pa = p.words.as_ptr();
        let mut r0 = rows.as_ptr();
        // SAFETY: `rows` holds 4 k bytes (asserted by the caller), so the second pair starts
        // inside it.
        let mut r2 = unsafe { r0.add(2 * k) };
        macro_rules! group {
            () => {
                concat!(
                    "ldrd {e}, {o}, [{pa}], #8\n",
                    "ldrd {wa}, {wb}, [{r0}], #8\n",
                    "smlad {a0}, {wa}, {e}, {a0}\n",
                    "sxtb16 {wa}, {wa}, ror #8\n",
                    "smlad {a0}, {wa}, {o}, {a0}\n",
                    "smlad {a1}, {wb}, {e}, {a1}\n",
                    "sxtb16 {wb}, {wb}, ror #8\n",
                    "smlad {a1}, {wb}, {o}, {a1}\n",
                    "ldrd {wa}, {wb}, [{r2}], #8\n",
                    "smlad {a2}, {wa}, {e}, {a2}\n",
                    "sxtb16 {wa}, {wa}, ror #8\n",
                    "smlad {a2}, {wa}, {o}, {a2}\n",
                    "smlad {a3}, {wb}, {e}, {a3}\n",
                    "sxtb16 {wb}, {wb}, ror #8\n",
                    "smlad {a3}, {wb}, {o}, {a3}\n",
                )
            };
        }
        // SAFETY: `pend` is the end of `p.words` (`2 g` words). The block runs one group when
        // `g` is odd, then two groups a step until `pa == pend`; each group reads 2 lane words
        // at `pa` (inside `p.words`, word-aligned as `u32`s, so `LDRD` may read them) and
        // 8 bytes at `r0` and at `r2` (the two stored pairs, `2 k` bytes each, inside `rows`,
        // which holds `4 k` bytes as the caller asserted; `LDRD` needs word alignment, which
        // the file's items and the `i32` arena give every row pair: `k` is a multiple of 4).
        // Registers only otherwise; no stack.
        let pend = unsafe { p.words.as_ptr().add(2 * g) };
        unsafe {
            asm!(
                "sub {wa}, {pend}, {pa}",
                "tst {wa}, #8",
                "beq 1f",
                group!(),
                "1:",
                "cmp {pa}, {pend}",
                "beq 3f",
                "2:",
                group!(),
                group!(),
                "cmp {pa}, {pend}",
                "bne 2b",
                "3:",
                pa = inout(reg) pa, pend = in(reg) pend, r0 = inout(reg) r0,
                r2 = inout(reg) r2, a0 = inout(reg) a0, a1 = inout(reg) a1,
                a2 = inout(reg) a2, a3 = inout(reg) a3, e = out(reg) _, o = out(reg) _,
                wa = out(reg) _, wb = out(reg) _,
                options(readonly, nostack),
            );
        }
        let _ = (pa, r0, r2);
        [a0, a1, a2, a3]
    }

    /// Accumulators of the outputs `o..o + R` of `w` (`[out, k]`, `Kind::Mat`, `k = x.len()`),
    /// each starting from its bias `b`: four rows from an even `o` by [`rows4`] when `x` is
    /// prepared, else [`dot_row`] a row.
    #[inline(always)]
    pub fn acc<const R: usize>(b: I32s<'_>, p: &Prepared<'_>, w: &[i8], o: usize) -> [i32; R] {
        let k = p.x.len();
        let init: [i32; R] = core::array::from_fn(|i| b.get(o + i));
        if cfg!(all(feature = "arm-dsp", target_arch = "arm"))
            && R == 4
            && o.is_multiple_of(2)
            && !p.words.is_empty()
        {
            let mut i4 = [0i32; 4];
            for (d, v) in i4.iter_mut().zip(init) {
                *d = v;
            }
            let a = rows4(i4, p, w, o);
            return core::array::from_fn(|i| a[i]);
        }
        core::array::from_fn(|i| dot_row(init[i], p.x, w, k, o + i))
    }

    /// The two-column DSP form in Rust over rows `o..o + R` of `w` (`[rows, 4 g]`):
    /// `[row][column]` accumulators, one group a step.
    #[cfg_attr(all(feature = "arm-dsp", target_arch = "arm"), allow(dead_code))]
    pub(crate) fn dsp_pair<const R: usize>(
        init: [[i32; 2]; R],
        p: &Pair<'_>,
        w: &[i8],
        o: usize,
    ) -> [[i32; 2]; R] {
        let k = p.words.len();
        let mut a = init.map(|r| [0, 1].map(|c| r[c].wrapping_add(p.corr[c])));
        for (j, l) in p.words.chunks_exact(4).enumerate() {
            for (i, acc) in a.iter_mut().enumerate() {
                let word = row_word(w, k, o + i, j);
                for (c, v) in acc.iter_mut().enumerate() {
                    *v = step(*v, word, l[c], l[2 + c]);
                }
            }
        }
        a
    }

    /// Accumulators of outputs `o` and `o + 1` of `w` (`[out, k]`, `Kind::Mat`) for both
    /// vectors of `p` (`[row][column]`), each from its bias `b`, without the DSP assembly:
    /// [`dsp_pair`] when `p` is prepared, else the scalar loop.
    #[inline(always)]
    fn acc_pair_portable(b: I32s<'_>, p: &Pair<'_>, w: &[i8], o: usize) -> [[i32; 2]; 2] {
        let k = p.x[0].len();
        let (b0, b1) = (b.get(o), b.get(o + 1));
        let init = [[b0, b0], [b1, b1]];
        if !p.words.is_empty() {
            return dsp_pair(init, p, w, o);
        }
        [0, 1].map(|i| [0, 1].map(|c| dot_row(init[i][c], p.x[c], w, k, o + i)))
    }

    /// Rows a [`pair_rows`] block holds at most: 512 bytes of stack. Measured on
    /// `tiny_vit_mcu_h7_q8` (M7): 16 rows 42,541,000 instructions, 32 42,033,520, 64
    /// 41,893,560, 128 42,110,880 (the buffer's zeroing then costs more than the fewer
    /// per-block walks save).
    pub const BLOCK_ROWS: usize = 64;

    /// `f(block, accumulators)` for the outputs in `outs` of `w` (`[out, k]`, `Kind::Mat`), in
    /// order, over the pair `p`: `accumulators[i]` holds `[x, y]`'s sums of output
    /// `block.start + i`. An odd first row alone ([`acc_pair1`], a block of one), then up to
    /// [`BLOCK_ROWS`] rows (whole stored pairs) a kernel call ([`acc_pair_block`]), a last odd
    /// row alone, so that callers walk each block's multipliers and destinations by iterator.
    #[inline(always)]
    pub fn pair_rows(
        b: I32s<'_>,
        p: &Pair<'_>,
        w: &[i8],
        outs: core::ops::Range<usize>,
        mut f: impl FnMut(core::ops::Range<usize>, &[[i32; 2]]),
    ) {
        let mut buf = [[0i32; 2]; BLOCK_ROWS];
        let mut o = outs.start;
        if o % 2 == 1 && o < outs.end {
            f(o..o + 1, &[acc_pair1(b, p, w, o)]);
            o += 1;
        }
        while o + 2 <= outs.end {
            let n = (outs.end - o).min(BLOCK_ROWS) & !1;
            acc_pair_block(b, p, w, o, &mut buf[..n]);
            f(o..o + n, &buf[..n]);
            o += n;
        }
        if o < outs.end {
            f(o..o + 1, &[acc_pair1(b, p, w, o)]);
        }
    }

    /// Accumulators of outputs `o..o + out.len()` of `w` (`o` and the count even: whole
    /// stored pairs; `[out, k]`, `Kind::Mat`) for both vectors of `p` into `out`
    /// (`[row][column]`), each from its bias `b`: two rows a pass, all passes in one
    /// [`block_asm`] call on Armv7E-M with `arm-dsp`, else [`dsp_pair`] a pass (what the tests
    /// run).
    #[inline(always)]
    pub fn acc_pair_block(b: I32s<'_>, p: &Pair<'_>, w: &[i8], o: usize, out: &mut [[i32; 2]]) {
        let rows = out.len() & !1;
        let k = p.x[0].len();
        let wr = &w[o * k..(o + rows) * k];
        let br = &b.0[4 * o..4 * (o + rows)];
        #[cfg(all(feature = "arm-dsp", target_arch = "arm"))]
        {
            let g = p.words.len() / 4;
            if g > 0 && rows > 0 && o.is_multiple_of(2) {
                assert!(wr.len() >= rows * 4 * g);
                block_asm(p, wr, br, g, &mut out[..rows]);
                return;
            }
        }
        let _ = (wr, br);
        for i in (0..rows).step_by(2) {
            let [r0, r1] = acc_pair_portable(b, p, w, o + i);
            out[i] = r0;
            out[i + 1] = r1;
        }
    }

    /// [`acc_pair_block`] in assembly over whole stored pairs. Per group of four inputs one
    /// `LDRD` of both rows' weight words, two `LDRD`s of the interleaved lanes (the even lanes
    /// of both columns, then the odd ones), two `SXTB16` and eight `SMLAD`s: 13 instructions
    /// for 16 multiply-accumulates, every weight word used by both columns; eight groups a loop
    /// step, entered through a `TBB` table at the group that leaves a multiple of eight
    /// (`g mod 8` groups first; `g mod 8` is found once a block and kept on the stack).
    /// Between pairs, in the block itself:
    /// the next two biases plus the columns' corrections into the accumulators, the four sums
    /// stored, the lanes rewound; the weights run on into the next pair. The bias pointer, the
    /// corrections, `g mod 8`, the lanes' start and the out end wait in 24 bytes of stack.
    /// Twelve registers: four accumulators, two weight words, two lane words, the lane pointer
    /// and its end, the row pointer and the out pointer.
    #[cfg(all(feature = "arm-dsp", target_arch = "arm"))]
    #[allow(unsafe_code)]
    #[inline(always)]
    fn block_asm(p: &Pair<'_>, rows: &[i8], bias: &[u8], g: usize, out: &mut [[i32; 2]]) {
        use core::arch::asm;
        let pa = p.words.as_ptr();
        let r0 = rows.as_ptr();
        let po = out.as_mut_ptr();
        macro_rules! group {
            () => {
                concat!(
                    "ldrd {wa}, {wb}, [{r0}], #8\n",
                    "ldrd {e0}, {e1}, [{pa}], #8\n",
                    "smlad {a00}, {wa}, {e0}, {a00}\n",
                    "smlad {a01}, {wa}, {e1}, {a01}\n",
                    "smlad {a10}, {wb}, {e0}, {a10}\n",
                    "smlad {a11}, {wb}, {e1}, {a11}\n",
                    "ldrd {e0}, {e1}, [{pa}], #8\n",
                    "sxtb16 {wa}, {wa}, ror #8\n",
                    "sxtb16 {wb}, {wb}, ror #8\n",
                    "smlad {a00}, {wa}, {e0}, {a00}\n",
                    "smlad {a01}, {wa}, {e1}, {a01}\n",
                    "smlad {a10}, {wb}, {e0}, {a10}\n",
                    "smlad {a11}, {wb}, {e1}, {a11}\n",
                )
            };
        }
        // SAFETY: `pend` is the end of `p.words` (`4 g` words, word-aligned as `u32`s, so
        // `LDRD` may read them; `pend - pa = 16 g` bytes). The block keeps 24 bytes of stack
        // (word-aligned, released before it ends). For each of the `out.len() / 2` row pairs
        // (at least one) it reads two biases at the bias pointer (inside `bias`, 8 bytes a
        // pair), runs `g` groups (`g mod 8` through the `TBB` entry, whose table of byte
        // offsets follows it and lands on a group inside the loop body, then eight a step until
        // `pa == pend`), each reading 4 lane words at `pa` and 8 bytes at `r0` (inside `rows`,
        // `2 k` bytes a pair as the caller asserted; word-aligned: the file's items and the
        // `i32` arena are, and `k` is a multiple of 4), stores four `i32` at the out pointer
        // (inside `out`, two entries a pair, word-aligned) and rewinds `pa` to the lanes'
        // start. Registers only otherwise.
        let pend = unsafe { pa.add(4 * g) };
        let oend = unsafe { po.add(out.len()) };
        unsafe {
            asm!(
                "sub sp, sp, #24",
                "str {a00}, [sp]",
                "strd {a01}, {a10}, [sp, #4]",
                "str {pa}, [sp, #16]",
                "str {a11}, [sp, #20]",
                "sub {wa}, {pend}, {pa}",
                "ubfx {wa}, {wa}, #4, #3",
                "str {wa}, [sp, #12]",
                "5:",
                "ldr {wb}, [sp]",
                "ldr {a00}, [{wb}], #4",
                "ldr {a10}, [{wb}], #4",
                "str {wb}, [sp]",
                "ldrd {e0}, {e1}, [sp, #4]",
                "add {a01}, {a00}, {e1}",
                "add {a00}, {a00}, {e0}",
                "add {a11}, {a10}, {e1}",
                "add {a10}, {a10}, {e0}",
                "ldr {wa}, [sp, #12]",
                "tbb [pc, {wa}]",
                "9:",
                ".byte (30f - 9b) / 2",
                ".byte (37f - 9b) / 2",
                ".byte (36f - 9b) / 2",
                ".byte (35f - 9b) / 2",
                ".byte (34f - 9b) / 2",
                ".byte (33f - 9b) / 2",
                ".byte (32f - 9b) / 2",
                ".byte (31f - 9b) / 2",
                "30:",
                group!(),
                "31:",
                group!(),
                "32:",
                group!(),
                "33:",
                group!(),
                "34:",
                group!(),
                "35:",
                group!(),
                "36:",
                group!(),
                "37:",
                group!(),
                "cmp {pa}, {pend}",
                "bne 30b",
                "strd {a00}, {a01}, [{po}], #8",
                "strd {a10}, {a11}, [{po}], #8",
                "ldr {pa}, [sp, #16]",
                "ldr {wa}, [sp, #20]",
                "cmp {po}, {wa}",
                "bne 5b",
                "add sp, sp, #24",
                pa = inout(reg) pa => _, pend = in(reg) pend, r0 = inout(reg) r0 => _,
                po = inout(reg) po => _,
                a00 = inout(reg) bias.as_ptr() => _, a01 = inout(reg) p.corr[0] => _,
                a10 = inout(reg) p.corr[1] => _, a11 = inout(reg) oend => _,
                wa = out(reg) _, wb = out(reg) _, e0 = out(reg) _, e1 = out(reg) _,
            );
        }
    }

    /// Accumulators of output `o` of `w` for both vectors of `p`, from its bias `b`.
    #[inline(always)]
    pub fn acc_pair1(b: I32s<'_>, p: &Pair<'_>, w: &[i8], o: usize) -> [i32; 2] {
        let k = p.x[0].len();
        let init = [b.get(o); 2];
        if !p.words.is_empty() {
            return dsp_pair::<1>([init], p, w, o)[0];
        }
        [0, 1].map(|c| dot_row(init[c], p.x[c], w, k, o))
    }

    /// The matrix kernel as the engine calls it, alone, for the device's kernel benchmark:
    /// the `[rows, k]` weights `w` (any bytes; `rows` even) times the two vectors prepared in
    /// `p` ([`prepare_pair`], timed apart by the caller), by [`acc_pair_block`] over blocks of
    /// [`BLOCK_ROWS`] rows (accumulators from the biases in `b`, `4 rows` bytes, stored to
    /// memory). Returns a checksum of the last block.
    pub fn probe_pair(w: &[u8], b: &[u8], p: &Pair<'_>) -> i32 {
        let w: &[i8] = bytemuck::cast_slice(w);
        let k = p.x[0].len();
        let rows = w.len().checked_div(k).unwrap_or(0);
        let mut buf = [[0i32; 2]; BLOCK_ROWS];
        let mut sum = 0i32;
        let mut o = 0;
        while o + 2 <= rows {
            let n = (rows - o).min(BLOCK_ROWS) & !1;
            acc_pair_block(I32s(b), p, w, o, &mut buf[..n]);
            o += n;
        }
        // The last block's sums (every block is a kernel call with its stores; reading all of
        // them back would time the consumer, not the kernel).
        for r in buf {
            sum = sum.wrapping_add(r[0]).wrapping_add(r[1]);
        }
        sum
    }

    /// The device's check of its own kernels: for fan-ins `4, 8, ..., 64` (every group count
    /// modulo 8, which the assembly treats apart) and `x.len()`, the one-vector kernel over
    /// `4` rows of `w` and the two-vector one over `5` (a block of three row pairs, then an odd
    /// row) against [`dot_mat_scalar`] (`w`: any bytes, at least `6 x.len()`). Returns the
    /// first fan-in that disagrees. `x`, `y`: equal lengths, a multiple of 4, no `-128`; `b`:
    /// at least 24 bytes.
    pub fn self_check(
        w: &[u8],
        b: &[u8],
        x: &[i8],
        y: &[i8],
        prep: &mut [u32],
    ) -> Result<(), usize> {
        let w: &[i8] = bytemuck::cast_slice(w);
        let b = I32s(b);
        let n = x.len().min(y.len());
        for k in (4..=64.min(n)).step_by(4).chain(core::iter::once(n)) {
            if w.len() < 6 * k || b.0.len() < 24 {
                return Err(k);
            }
            let (x, y) = (&x[..k], &y[..k]);
            let want = |v: &[i8], o: usize| dot_row(b.get(o), v, &w[..6 * k], k, o);
            let single = acc::<4>(b, &prepare(x, prep), w, 0);
            if (0..4).any(|o| single[o] != want(x, o)) {
                return Err(k);
            }
            let p = prepare_pair(x, y, prep);
            let mut bad = false;
            // Three row pairs in one block, then a last odd row.
            pair_rows(b, &p, w, 0..5, |os, acc| {
                for (o, r) in os.zip(acc) {
                    bad |= r[0] != want(x, o) || r[1] != want(y, o);
                }
            });
            if bad {
                return Err(k);
            }
        }
        Ok(())
    }

    /// [`probe_pair`] for the one-vector kernel ([`prepare`], four rows per [`acc`]).
    pub fn probe_single(w: &[u8], b: &[u8], x: &[i8], prep: &mut [u32]) -> i32 {
        let w: &[i8] = bytemuck::cast_slice(w);
        let k = x.len();
        let rows = w.len().checked_div(k).unwrap_or(0);
        let p = prepare(x, prep);
        let mut sum = 0i32;
        let mut o = 0;
        while o + 4 <= rows {
            for v in acc::<4>(I32s(b), &p, w, o) {
                sum = sum.wrapping_add(v);
            }
            o += 4;
        }
        sum
    }
}

/// `2^(-k/64)` in Q30 for `k = 0..=64`.
const EXP2_Q30: [i32; 65] = [
    1073741824, 1062175491, 1050733751, 1039415261, 1028218693, 1017142735, 1006186087, 995347464,
    984625594, 974019220, 963527098, 953147997, 942880699, 932724001, 922676710, 912737649,
    902905651, 893179563, 883558244, 874040567, 864625413, 855311680, 846098274, 836984114,
    827968132, 819049271, 810226483, 801498734, 792865000, 784324269, 775875538, 767517817,
    759250125, 751071493, 742980960, 734977579, 727060411, 719228525, 711481005, 703816941,
    696235434, 688735596, 681316545, 673977412, 666717336, 659535466, 652430958, 645402981,
    638450708, 631573326, 624770026, 618040012, 611382493, 604796689, 598281827, 591837143,
    585461881, 579155293, 572916640, 566745190, 560640218, 554601009, 548626854, 542717053,
    536870912,
];

/// `log2(e)` in Q16.
const LOG2E_Q16: i64 = 94548;

/// `exp(x / 1024)` in Q16 for `x <= 0` (positive inputs count as 0): range reduction to
/// `2^-(q + f)` with integer `q` and `f` in `[0, 1)` (as I-BERT reduces by `ln 2`), `2^-f`
/// from a 65-entry Q30 table with linear interpolation, then a rounding right shift by `q`.
/// `exp_q10(0) == 65536` exactly.
///
/// Error: table rounding 2^-31, interpolation `(ln 2)^2 / 8 / 64^2 < 1.5e-5` relative, the
/// Q16 exponent's rounding `2^-17` absolute in the exponent: at most 2 LSB of Q16.
pub fn exp_q10(x: i32) -> i32 {
    // In 32-bit words, the same bits as [`exp_q10_reference`] (tested over every input that
    // can give a non-zero result): from `-x >= 2^15` the Q16 exponent `n` is at least
    // `21 * 2^16`, where the reference returns 0; below it `-x * LOG2E_Q16 + 512 < 2^32`. For
    // `q` in `18..=20` the reference's `(m + 2^(13+q)) >> (14+q)` is 0 since `m <= 2^30`, and for
    // `q <= 17` the sum stays below `2^31 + 2^30`, inside `u32`.
    let neg = x.min(0).unsigned_abs();
    if neg >= 1 << 15 {
        return 0;
    }
    let n = (neg * LOG2E_Q16 as u32 + 512) >> 10;
    let q = n >> 16;
    if q > 17 {
        return 0;
    }
    let f = n & 0xFFFF;
    let k = (f >> 10) as usize;
    let w = f & 1023;
    let (t0, t1) = (EXP2_Q30[k & 63] as u32, EXP2_Q30[(k & 63) + 1] as u32);
    // `(t0 - t1) w < 2^24 2^10`: one `UMULL`.
    let m = t0 - ((((t0 - t1) as u64 * w as u64) + 512) >> 10) as u32;
    ((m + (1u32 << (13 + q))) >> (14 + q)) as i32
}

/// [`exp_q10`] as first written, in `i64`: the reference the 32-bit form is tested against.
#[cfg(test)]
pub(crate) fn exp_q10_reference(x: i32) -> i32 {
    let neg = -(x.min(0) as i64);
    // -x * log2(e) in Q16, rounded.
    let n = (neg * LOG2E_Q16 + 512) >> 10;
    let q = n >> 16;
    if q > 20 {
        return 0;
    }
    let f = n & 0xFFFF;
    let k = (f >> 10) as usize;
    let w = f & 1023;
    let (t0, t1) = (EXP2_Q30[k] as i64, EXP2_Q30[k + 1] as i64);
    let m = t0 - (((t0 - t1) * w + 512) >> 10);
    ((m + (1i64 << (13 + q))) >> (14 + q)) as i32
}

/// Softmax of Q10 scores in place, probabilities out in Q15 (each in `[0, 32768]`).
///
/// `e_j = exp_q10(x_j - max)` (so the largest is exactly 65536), `sum = sum e_j` (`u64`),
/// `p_j = round(e_j * floor(2^47 / sum) / 2^32)` (I-BERT's normalisation by one integer
/// division per row). Overflow: `e_j <= 2^16` and `floor(2^47 / sum) <= 2^31`, so the products
/// stay below `2^47`; rows of up to `2^32` entries cannot overflow the sum.
pub fn softmax_q15(x: &mut [i32]) {
    let mut max = i32::MIN;
    for v in x.iter() {
        if *v > max {
            max = *v;
        }
    }
    let mut sum = 0u64;
    for v in x.iter_mut() {
        *v = exp_q10(v.saturating_sub(max));
        sum += *v as u64;
    }
    let factor = div_u64(1u64 << 47, sum.max(1));
    for v in x.iter_mut() {
        *v = ((*v as u64 * factor + (1u64 << 31)) >> 32) as i32;
    }
}

/// The standard normal CDF `Phi(k / 16)` in Q20 for `k = 0..=96`.
const PHI_Q20: [i32; 97] = [
    524288, 550416, 576442, 602266, 627789, 652917, 677558, 701629, 725051, 747752, 769670, 790748,
    810940, 830208, 848521, 865861, 882214, 897576, 911952, 925352, 937794, 949301, 959902, 969631,
    978524, 986621, 993965, 1000600, 1006571, 1011924, 1016703, 1020954, 1024721, 1028045, 1030967,
    1033526, 1035758, 1037697, 1039375, 1040822, 1042065, 1043128, 1044033, 1044802, 1045451,
    1045999, 1046458, 1046841, 1047161, 1047425, 1047644, 1047824, 1047971, 1048091, 1048189,
    1048268, 1048332, 1048383, 1048425, 1048457, 1048483, 1048504, 1048520, 1048533, 1048543,
    1048551, 1048557, 1048561, 1048565, 1048568, 1048570, 1048571, 1048572, 1048573, 1048574,
    1048575, 1048575, 1048575, 1048575, 1048576, 1048576, 1048576, 1048576, 1048576, 1048576,
    1048576, 1048576, 1048576, 1048576, 1048576, 1048576, 1048576, 1048576, 1048576, 1048576,
    1048576, 1048576,
];

/// Exact (erf) GELU `x * Phi(x)` on Q12 values: `Phi(|x|)` from a Q20 table over `[0, 6)` in
/// steps of 1/16 with linear interpolation (`Phi = 1` beyond 6, `Phi(-x) = 1 - Phi(x)`), then
/// `round(x * Phi / 2^20)`. I-BERT writes GELU in the same `x * gate(x)` form with a quadratic
/// erf; the interpolated table is as cheap and about a hundred times more accurate.
///
/// Error: interpolation `|x Phi''(x)| / 8 / 16^2 <= 1.1e-4`, table rounding `|x| 2^-21`,
/// output rounding 1/2 LSB: at most 1.5 LSB of Q12 for `|x| <= 2^20` (256.0; the test sees
/// 1.08). Overflow:
/// `|x| * 2^20 < 2^52`.
pub fn gelu_q12(x: i32) -> i32 {
    // The same integers as `gelu_q12_reference`, in `i32` wherever they fit (a 32-bit core
    // then needs one 64-bit multiply): `|t1 - t0| < 2^15` and `w < 2^8`.
    let a = x.unsigned_abs();
    let mut phi = if a >= 96 << 8 {
        1i32 << 20
    } else {
        let k = (a >> 8) as usize;
        let w = (a & 255) as i32;
        let (t0, t1) = (PHI_Q20[k], PHI_Q20[k + 1]);
        t0 + (((t1 - t0) * w + 128) >> 8)
    };
    if x < 0 {
        phi = (1i32 << 20) - phi;
    }
    ((x as i64 * phi as i64 + (1i64 << 19)) >> 20) as i32
}

/// Entries of a GELU table: one per `i8` value `-128..=127`.
pub const GELU_TABLE: usize = 256;

/// A GELU layer's table: entry `i` is the `i8` output for the pre-activation
/// `p = max(i - 128, -127)` (pre-activations are saturated to `[-127, 127]` like every `i8`
/// value; entry 0 repeats entry 1 so that a saturation to `[-128, 127]`, one `SSAT`, can index
/// it), `sat_i8(requant(gelu_q12(requant(p, to_q12)), act))`: the one integer GELU,
/// [`gelu_q12`], on Q12; the table only saves evaluating it per value.
///
/// Error against `GELU(p s_pre) / s_act` (exact erf GELU, `to_q12 = s_pre 2^12` and
/// `act = 2^-12 / s_act` as reals): the first rounding moves the Q12 input by at most 1/2 LSB,
/// which GELU's slope (at most 1.13) passes on, and [`gelu_q12`] adds at most 1.5 LSB, so at
/// most `2.07 * 2^-12 / s_act` output LSB before the final rounding's 1/2 LSB (tested over
/// scales from `2^-9` to 1).
pub fn gelu_table(to_q12: Multiplier, act: Multiplier, out: &mut [i8; GELU_TABLE]) {
    for (i, v) in out.iter_mut().enumerate() {
        let p = (i as i32 - 128).max(-127);
        *v = sat_i8(requant(gelu_q12(requant(p, to_q12)), act));
    }
}

/// [`gelu_q12`] as first written, all in `i64`: the reference the test
/// `gelu_is_its_reference` holds the `i32` version to.
#[cfg(test)]
pub(crate) fn gelu_q12_reference(x: i32) -> i32 {
    let a = (x as i64).abs();
    let mut phi = if a >= 96 << 8 {
        1i64 << 20
    } else {
        let k = (a >> 8) as usize;
        let w = a & 255;
        let (t0, t1) = (PHI_Q20[k] as i64, PHI_Q20[k + 1] as i64);
        t0 + (((t1 - t0) * w + 128) >> 8)
    };
    if x < 0 {
        phi = (1i64 << 20) - phi;
    }
    ((x as i64 * phi + (1i64 << 19)) >> 20) as i32
}

/// `floor(sqrt(n))`, exactly.
///
/// Below `2^62` (LayerNorm's range) without a 64-bit division or a 64-bit loop: `n` is scaled
/// by `4^k` into `v` in `[2^60, 2^62)`; `s = floor(sqrt(v / 2^32))` (16 steps in `u32`) gives
/// `a = s 2^16` with `a^2 <= v < (a + 2^16)^2`, one `u32` division gives the Newton step
/// `r = a + floor((v - a^2) / 2^16 / 2s)`, within a few units of the root (its error is at
/// most `2^31 / a <= 2`, plus the floors), and the root is then stepped to the exact floor
/// (`r^2 <= v < (r + 1)^2`) and scaled back by `2^k`
/// (`floor(floor(sqrt(v)) / 2^k) = floor(sqrt(n))`). From `2^62` up: the bit-by-bit method.
pub fn isqrt_u64(n: u64) -> u32 {
    if n == 0 {
        return 0;
    }
    if n >= 1 << 62 {
        return isqrt_bits(n);
    }
    let k = (62 - (64 - n.leading_zeros())) / 2;
    let v = n << (2 * k);
    let s = isqrt_u32((v >> 32) as u32);
    let a = s << 16;
    // `v - a^2 < (2s + 1) 2^32`, so the shifted remainder fits `u32` (`s < 2^15`).
    let rem = ((v - (a as u64) * (a as u64)) >> 16) as u32;
    let mut r = a + rem / (2 * s);
    while (r as u64) * (r as u64) > v {
        r -= 1;
    }
    while ((r + 1) as u64) * ((r + 1) as u64) <= v {
        r += 1;
    }
    r >> k
}

/// `floor(sqrt(n))` of a `u32` by the bit-by-bit method (16 steps).
fn isqrt_u32(n: u32) -> u32 {
    let mut rem = n;
    let mut root = 0u32;
    let mut bit = 1u32 << 30;
    for _ in 0..16 {
        if rem >= root + bit {
            rem -= root + bit;
            root = (root >> 1) + bit;
        } else {
            root >>= 1;
        }
        bit >>= 2;
    }
    root
}

/// `floor(sqrt(n))` by the bit-by-bit method: exactly 32 iterations whatever `n`.
fn isqrt_bits(n: u64) -> u32 {
    let mut rem = n;
    let mut root = 0u64;
    let mut bit = 1u64 << 62;
    for _ in 0..32 {
        if rem >= root + bit {
            rem -= root + bit;
            root = (root >> 1) + bit;
        } else {
            root >>= 1;
        }
        bit >>= 2;
    }
    root as u32
}

/// Little-endian `i32` values viewed in place (a file's bias and parameter vectors).
#[derive(Clone, Copy, Debug)]
pub struct I32s<'a>(pub(crate) &'a [u8]);

impl<'a> I32s<'a> {
    /// Value `i` (the caller stays below the length it asked the file for).
    #[inline]
    pub fn get(&self, i: usize) -> i32 {
        i32::from_le_bytes(self.0.as_chunks::<4>().0[i])
    }

    /// Values `r` (empty past the end).
    #[inline]
    pub fn range(&self, r: core::ops::Range<usize>) -> I32s<'a> {
        I32s(self.0.get(4 * r.start..4 * r.end).unwrap_or(&[]))
    }

    /// The values in order (no index checks).
    #[inline]
    pub fn iter(&self) -> impl Iterator<Item = i32> + 'a {
        // Whole 4-byte arrays: one (unaligned-capable) `LDR` each on Armv7E-M.
        self.0
            .as_chunks::<4>()
            .0
            .iter()
            .map(|b| i32::from_le_bytes(*b))
    }
}

/// [`Multiplier`]s viewed in place: the `n` numerators as little-endian `i32`, then the `n`
/// shifts as bytes (5 bytes a multiplier).
#[derive(Clone, Copy, Debug)]
pub struct Multipliers<'a> {
    m: &'a [u8],
    shift: &'a [u8],
}

impl<'a> Multipliers<'a> {
    /// The view of an item of `n` multipliers (`bytes` holds at least `5 n` bytes; the caller
    /// has checked the length).
    pub(crate) fn new(bytes: &'a [u8], n: usize) -> Self {
        let (m, rest) = bytes.split_at(4 * n);
        Multipliers {
            m,
            shift: &rest[..n],
        }
    }

    /// Multiplier `i`.
    #[inline]
    pub fn get(&self, i: usize) -> Multiplier {
        Multiplier {
            m: I32s(self.m).get(i),
            shift: self.shift[i] as u32,
        }
    }

    /// Multipliers `r` (empty past the end).
    #[inline]
    pub fn range(&self, r: core::ops::Range<usize>) -> Multipliers<'a> {
        match (self.m.get(4 * r.start..4 * r.end), self.shift.get(r)) {
            (Some(m), Some(shift)) => Multipliers { m, shift },
            _ => Multipliers { m: &[], shift: &[] },
        }
    }

    /// The multipliers in order (no index checks).
    #[inline]
    pub fn iter(&self) -> impl Iterator<Item = Multiplier> + 'a {
        I32s(self.m)
            .iter()
            .zip(self.shift)
            .map(|(m, s)| Multiplier {
                m,
                shift: *s as u32,
            })
    }
}

/// The stored byte of a matrix weight (item kind `Mat`): at an even offset within the item the
/// weight's sign bit is flipped (offset binary, `w + 128` as `u8`), at an odd one it is stored
/// as is. The flip is its own inverse, so this also decodes.
#[inline]
pub fn mat_code(b: i8, offset: usize) -> i8 {
    if offset.is_multiple_of(2) {
        b ^ i8::MIN
    } else {
        b
    }
}

/// `init + sum x[i] * w[i]` over a stored matrix row `row` that starts at item offset `base`
/// ([`mat_code`] decodes each weight), in index order with wrapping `i32` additions: the
/// portable reference of the matrix kernels.
#[inline]
pub fn dot_mat_scalar(init: i32, x: &[i8], row: &[i8], base: usize) -> i32 {
    let mut acc = init;
    for (i, (a, b)) in x.iter().zip(row).enumerate() {
        acc = acc.wrapping_add(*a as i32 * mat_code(*b, base + i) as i32);
    }
    acc
}

/// LayerNorm of one `i16` token to `i8`.
///
/// With `d_i = x_i - mean` and `V = sum d_i^2 + eps` (`eps` = the real epsilon times
/// `C / s_in^2`, computed by the quantiser), the normalised value is `d_i / sqrt(V / C)`. The
/// mean is kept exactly as a rounded integer `m` plus a remainder `t / C`, and
/// `sum d_i^2 = sum (x_i - m)^2 - t^2 / C`. `z_i = d_i * 2^30 / sqrt(V)` is computed by scaling
/// `V` by `4^p` into `[2^60, 2^62)`, `r = isqrt(V 4^p)` in `[2^30, 2^31)`, one division
/// `inv = 2^60 / r` and then `z_i = round(d_i 2^p * inv / 2^30)`. The integer `V` (the
/// `t^2 / C` term rounded, at least 1) is at most 1/2 below the exact one, so
/// `d_i^2 <= 1.5 V`, `|d_i 2^p| <= 1.23 (r + 1)` and `|z_i| <= 1.23 * 2^30 + 2 < 2^31`: `z_i`
/// fits `i32` without a clamp. The output is
/// `sat_i8(requant(z_i, gamma_i) + beta_i)`, where `gamma_i` holds
/// `weight_i sqrt(C) / (2^30 s_out)` and `beta_i = round(bias_i / s_out)`.
///
/// Overflow: `|x_i - m| < 2^16`, `C <= 2^16`, so `V < 2^49`; `|d_i 2^p| * inv < 2^32 * 2^30`.
///
/// # Shapes
/// `x: [C]`, `out: [C]`, `gamma`, `beta`: `C` entries.
pub fn layer_norm(x: &[i16], gamma: Multipliers<'_>, beta: I32s<'_>, eps: i32, out: &mut [i8]) {
    let n = x.len() as i64;
    if n == 0 {
        return;
    }
    // `|x| <= 2^15` and (as documented) `C <= 2^16`: the sum fits `i32`; longer tokens sum in
    // `i64`.
    let sum = if x.len() <= 1 << 16 {
        x.iter().fold(0i32, |a, v| a + *v as i32) as i64
    } else {
        x.iter().fold(0i64, |a, v| a + *v as i64)
    };
    // The rounded mean m, its remainder t = sum - n m (|t| <= n / 2), and the exactly centred
    // sum of squares sum (x - mean)^2 = sum (x - m)^2 - t^2 / n.
    let m = floor_div(2 * sum + n, 2 * n);
    let t = sum - n * m;
    // `|m| <= 2^15`, so `|x - m| < 2^16` and its square fits `u32` (one multiply-accumulate
    // into the `u64` sum on a 32-bit core).
    let m32 = m as i32;
    let mut sq = 0u64;
    for v in x {
        let d = (*v as i32 - m32).unsigned_abs();
        sq += d as u64 * d as u64;
    }
    let var = sq as i64 - floor_div(2 * t * t + n, 2 * n);
    let v = (var.max(0) + eps.max(0) as i64).max(1) as u64;
    let bits = 64 - v.leading_zeros();
    let p = (62 - bits) / 2;
    let r = isqrt_u64(v << (2 * p)) as i64;
    // `r` in `[2^30, 2^31)`.
    let inv = div_u64(1u64 << 60, r as u64) as i64;
    // (mean - m) 2^p, rounded.
    let c = floor_div(2 * (t << p) + n, 2 * n);
    // `z = (u inv + 2^29) >> 30` with `u = (x - m) 2^p - c` is `(x k + b) >> 30` with
    // `k = 2^p inv` (`<= 2^60`) and `b = 2^29 - (m 2^p + c) inv`, all modulo `2^64`: the true
    // `u inv + 2^29` fits `i64` (`|u inv| < 2^62`), so the wrapping sum is it exactly, and each
    // value costs one `i16 x i64` product instead of a shift, a subtraction and an `i64 x i64`
    // one.
    let pow = 1i64 << p;
    let k = pow * inv;
    let b0 = (1i64 << 29).wrapping_sub((m * pow + c).wrapping_mul(inv));
    let params = gamma.iter().zip(beta.iter());
    for ((o, xv), (g, b)) in out.iter_mut().zip(x).zip(params) {
        // `|z| < 2^31` (doc above), so the cast keeps the value.
        let z = ((*xv as i64).wrapping_mul(k).wrapping_add(b0) >> 30) as i32;
        *o = sat_i8(requant(z, g).saturating_add(b));
    }
}

/// `floor(n / d)` for `d > 0`: by two 16-bit quotient digits from 32-bit divisions (one
/// `UDIV` each on Cortex-M4/M7, where a 64-bit division is a library call of about 200
/// instructions) when `d` fits 32 bits and the quotient does (`n < d 2^32`), else in `u64`.
/// Softmax's and LayerNorm's normalisations are always the first case.
#[inline]
fn div_u64(n: u64, d: u64) -> u64 {
    match u32::try_from(d) {
        Ok(d32) if d32 > 0 && (n >> 32) < d => div_u64_u32(n, d32) as u64,
        _ => n / d.max(1),
    }
}

/// `floor(n / d)` for `d > 0` and `n < d 2^32` (the quotient fits `u32`): the long division of
/// *Hacker's Delight* (2nd ed., fig. 9-3) in base `2^16`, the divisor normalised so that each
/// estimated digit is at most 2 too large; each correction loop runs at most twice.
fn div_u64_u32(n: u64, d: u32) -> u32 {
    const B: u32 = 1 << 16;
    let s = d.leading_zeros();
    let v = d << s;
    let (vn1, vn0) = (v >> 16, v & 0xFFFF);
    let (u1, u0) = ((n >> 32) as u32, n as u32);
    let un32 = if s == 0 {
        u1
    } else {
        (u1 << s) | (u0 >> (32 - s))
    };
    let un10 = u0 << s;
    let (un1, un0) = (un10 >> 16, un10 & 0xFFFF);
    let mut q1 = un32 / vn1;
    let mut rhat = un32 - q1 * vn1;
    while q1 >= B || q1 * vn0 > (rhat << 16) + un1 {
        q1 -= 1;
        rhat += vn1;
        if rhat >= B {
            break;
        }
    }
    let un21 = (un32 << 16)
        .wrapping_add(un1)
        .wrapping_sub(q1.wrapping_mul(v));
    let mut q0 = un21 / vn1;
    rhat = un21 - q0 * vn1;
    while q0 >= B || q0 * vn0 > (rhat << 16) + un0 {
        q0 -= 1;
        rhat += vn1;
        if rhat >= B {
            break;
        }
    }
    (q1 << 16) + q0
}

/// `floor(a / b)` for `b > 0`, by a 32-bit division when both fit (one instruction on
/// Cortex-M4/M7, where a 64-bit one is a library call).
#[inline]
fn floor_div(a: i64, b: i64) -> i64 {
    match (i32::try_from(a), i32::try_from(b)) {
        (Ok(a), Ok(b)) => a.div_euclid(b) as i64,
        _ => a.div_euclid(b),
    }
}

#[cfg(test)]
#[allow(clippy::float_arithmetic)]
mod tests {
    use super::*;
    use crate::params::splitmix64;
    use std::vec::Vec;

    /// Multiplier nearest a positive or negative real (test helper, same rule as the quantiser).
    fn mult(x: f64) -> Multiplier {
        crate::int8::quantize::multiplier(x).unwrap()
    }

    #[test]
    fn requant_is_exact_rounding_half_up() {
        let mut s = 1u64;
        for i in 0..200_000 {
            let x = splitmix64(&mut s) as i32;
            let m = splitmix64(&mut s) as i32;
            let shift = 1 + (splitmix64(&mut s) % 62) as u32;
            let k = Multiplier { m, shift };
            let exact = (x as i128 * m as i128 + (1i128 << (shift - 1))) >> shift;
            let want = exact.clamp(i32::MIN as i128, i32::MAX as i128) as i32;
            assert_eq!(requant(x, k), want, "{i}: {x} {k:?}");
        }
        let half = Multiplier { m: 1, shift: 1 };
        assert_eq!(requant(1, half), 1);
        assert_eq!(requant(-1, half), 0);
        assert_eq!(requant(3, half), 2);
        assert_eq!(
            requant(
                i32::MAX,
                Multiplier {
                    m: i32::MAX,
                    shift: 1
                }
            ),
            i32::MAX
        );
        assert_eq!(
            requant(
                i32::MIN,
                Multiplier {
                    m: i32::MAX,
                    shift: 1
                }
            ),
            i32::MIN
        );
    }

    #[test]
    fn isqrt_is_the_exact_floor() {
        let check = |n: u64| {
            let r = isqrt_u64(n) as u128;
            assert!(r * r <= n as u128 && (r + 1) * (r + 1) > n as u128, "{n}");
        };
        for n in 0..100_000u64 {
            check(n);
        }
        for k in 0..64 {
            let p = 1u64 << k;
            for n in [p - 1, p, p + 1] {
                check(n);
            }
        }
        check(u64::MAX);
        let mut s = 2u64;
        for _ in 0..100_000 {
            check(splitmix64(&mut s) >> (splitmix64(&mut s) % 64));
            // Around exact squares, where a root one too high or low shows.
            let r = splitmix64(&mut s) >> (32 + splitmix64(&mut s) % 32);
            for n in [
                r * r,
                (r * r).saturating_sub(1),
                r * r + 1,
                (r + 1) * (r + 1) - 1,
            ] {
                check(n);
            }
        }
        for n in [1u64 << 60, (1 << 60) - 1, (1 << 62) - 1, 1 << 62, 3 << 60] {
            check(n);
            assert_eq!(isqrt_u64(n), isqrt_bits(n));
        }
    }

    /// [`layer_norm`] as first written (64-bit divisions and products throughout): the fast
    /// version must give the same bytes.
    fn layer_norm_reference(
        x: &[i16],
        gamma: Multipliers<'_>,
        beta: I32s<'_>,
        eps: i32,
        out: &mut [i8],
    ) {
        let n = x.len() as i64;
        let mut sum = 0i64;
        for v in x {
            sum += *v as i64;
        }
        let m = (2 * sum + n).div_euclid(2 * n);
        let t = sum - n * m;
        let mut sq = 0i64;
        for v in x {
            let d = *v as i64 - m;
            sq += d * d;
        }
        let var = sq - (2 * t * t + n).div_euclid(2 * n);
        let v = (var.max(0) + eps.max(0) as i64).max(1) as u64;
        let bits = 64 - v.leading_zeros();
        let p = (62 - bits) / 2;
        let r = isqrt_bits(v << (2 * p)) as i64;
        let inv = (1i64 << 60) / r;
        let c = (2 * (t << p) + n).div_euclid(2 * n);
        for (i, (o, xv)) in out.iter_mut().zip(x).enumerate() {
            let u = ((*xv as i64 - m) << p) - c;
            let z = ((u * inv + (1i64 << 29)) >> 30).clamp(i32::MIN as i64, i32::MAX as i64) as i32;
            *o = sat_i8(requant(z, gamma.get(i)).saturating_add(beta.get(i)));
        }
    }

    #[test]
    fn layer_norm_is_its_reference_bit_for_bit() {
        let mut s = 21u64;
        for case in 0..4000 {
            let c = 1 + (splitmix64(&mut s) % 300) as usize;
            let scale = 1i64 << (splitmix64(&mut s) % 16);
            let centre = (splitmix64(&mut s) % 65536) as i64 - 32768;
            let x: Vec<i16> = (0..c)
                .map(|_| {
                    let v = centre + (splitmix64(&mut s) % (2 * scale as u64 + 1)) as i64 - scale;
                    if case % 9 == 0 {
                        [i16::MIN, i16::MAX][(splitmix64(&mut s) % 2) as usize]
                    } else {
                        v.clamp(i16::MIN as i64, i16::MAX as i64) as i16
                    }
                })
                .collect();
            let mut g = le(&(0..c)
                .map(|_| (splitmix64(&mut s) as i32) >> 1)
                .collect::<Vec<_>>());
            g.extend((0..c).map(|_| 20 + (splitmix64(&mut s) % 40) as u8));
            let b = le(&(0..c)
                .map(|_| (splitmix64(&mut s) % 61) as i32 - 30)
                .collect::<Vec<_>>());
            let eps = [0, 1, 1000, i32::MAX][case % 4];
            let (gamma, beta) = (Multipliers::new(&g, c), I32s(&b));
            let (mut got, mut want) = (std::vec![0i8; c], std::vec![0i8; c]);
            layer_norm(&x, gamma, beta, eps, &mut got);
            layer_norm_reference(&x, gamma, beta, eps, &mut want);
            assert_eq!(got, want, "case {case} c {c}");
        }
    }

    /// The 32-bit exp is the `i64` reference for every input down to `-2^16` (the reference is
    /// 0 from about `-14906`) and a sweep of the rest of the range.
    /// The two-digit division is `u64` division wherever it applies: random operands, divisors
    /// at every normalisation shift, quotients at the top of the range, and the normalisations'
    /// own operands.
    #[test]
    fn div_u64_is_the_u64_division() {
        let mut s = 77u64;
        let check = |n: u64, d: u64| assert_eq!(div_u64(n, d), n / d, "{n} / {d}");
        for _ in 0..200_000 {
            let d = (splitmix64(&mut s) >> (splitmix64(&mut s) % 64)).max(1);
            let n = splitmix64(&mut s) >> (splitmix64(&mut s) % 64);
            check(n, d);
            let d32 = d as u32 as u64;
            if d32 > 0 {
                // Quotients near 2^32 - 1: n just below d 2^32.
                check((d32 << 32) - 1 - (n % d32), d32);
                check(n % (d32 << 32), d32);
            }
        }
        for sh in 0..32 {
            let d = (1u64 << sh) | (splitmix64(&mut s) & ((1 << sh) - 1));
            check((d << 32) - 1, d);
            check(1 << 47, d.max(1 << 16));
        }
        for r in [1u64 << 30, (1 << 30) + 1, (1 << 31) - 1] {
            check(1 << 60, r);
        }
        check(1 << 47, 1);
        check(5, 1);
    }

    #[test]
    fn exp_q10_is_its_reference() {
        for x in -(1i32 << 16)..=16 {
            assert_eq!(exp_q10(x), exp_q10_reference(x), "x {x}");
        }
        let mut x = i32::MIN as i64;
        while x < 0 {
            assert_eq!(exp_q10(x as i32), exp_q10_reference(x as i32), "x {x}");
            x += 65_537;
        }
        assert_eq!(exp_q10(i32::MIN), 0);
    }

    #[test]
    fn exp_within_2_lsb_of_q16_over_its_whole_range() {
        assert_eq!(exp_q10(0), 65536);
        assert_eq!(exp_q10(5), 65536);
        let mut worst = 0.0f64;
        let mut x = 0i64;
        while x >= i32::MIN as i64 {
            let got = exp_q10(x as i32) as f64;
            let want = (x as f64 / 1024.0).exp() * 65536.0;
            worst = worst.max((got - want).abs());
            // Every input near zero, then sparser.
            x -= if x > -40_000 { 1 } else { 1 + (-x) / 1000 };
        }
        std::println!("exp worst error {worst} LSB");
        assert!(worst <= 2.0, "exp worst error {worst} LSB");
    }

    #[test]
    fn softmax_within_2_lsb_of_q15() {
        let mut s = 3u64;
        let mut worst = 0.0f64;
        for row in 0..3000 {
            let n = 1 + (splitmix64(&mut s) % 300) as usize;
            let spread = 1 + (splitmix64(&mut s) % (1 << (4 + row % 14))) as i64;
            let base = (splitmix64(&mut s) % 2_000_000) as i64 - 1_000_000;
            let x: Vec<i32> = (0..n)
                .map(|_| (base + (splitmix64(&mut s) % spread as u64) as i64) as i32)
                .collect();
            let m = *x.iter().max().unwrap() as f64;
            let e: Vec<f64> = x.iter().map(|v| ((*v as f64 - m) / 1024.0).exp()).collect();
            let sum: f64 = e.iter().sum();
            let mut p = x.clone();
            softmax_q15(&mut p);
            let mut total = 0i64;
            for (got, e) in p.iter().zip(&e) {
                worst = worst.max((*got as f64 - e / sum * 32768.0).abs());
                total += *got as i64;
            }
            assert!((total - 32768).abs() <= n as i64, "row sums to {total}");
        }
        std::println!("softmax worst error {worst} LSB");
        assert!(worst <= 2.0, "softmax worst error {worst} LSB");
    }

    #[test]
    fn gelu_table_within_its_bound_of_f64() {
        let gelu = |x: f64| 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2));
        let mut worst = 0.0f64;
        let mut t = [0i8; GELU_TABLE];
        // Pre-activation ranges 1/4 to 64, output ranges 1/8 to 64 (scales = range / 127).
        for pre in [0.25, 1.0, 3.0, 7.5, 16.0, 64.0] {
            for out in [0.125, 0.9, 4.0, 7.3, 64.0] {
                let (s_pre, s_act) = (pre / 127.0, out / 127.0);
                gelu_table(mult(s_pre * 4096.0), mult(1.0 / 4096.0 / s_act), &mut t);
                let bound = 0.5 + 2.07 / 4096.0 / s_act;
                for (i, v) in t.iter().enumerate() {
                    let p = (i as f64 - 128.0).max(-127.0);
                    let want = (gelu(p * s_pre) / s_act).clamp(-127.0, 127.0);
                    let err = (*v as f64 - want).abs();
                    assert!(err <= bound, "pre {pre} out {out} entry {i}: {v} vs {want}");
                    worst = worst.max(err - 0.5);
                }
            }
        }
        std::println!("gelu table worst error 0.5 + {worst} LSB");
    }

    #[test]
    fn gelu_within_1_5_lsb_of_q12() {
        let gelu = |x: f64| 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2));
        let mut worst = 0.0f64;
        for x in -(1i32 << 20)..=(1 << 20) {
            let want = gelu(x as f64 / 4096.0) * 4096.0;
            worst = worst.max((gelu_q12(x) as f64 - want).abs());
        }
        std::println!("gelu worst error {worst} LSB");
        assert!(worst <= 1.5, "gelu worst error {worst} LSB");
        for x in [i32::MIN, i32::MAX, -(1 << 30), 1 << 30] {
            // Far out GELU is the identity or zero, and never overflows.
            let g = gelu_q12(x);
            assert!(if x > 0 { g == x } else { g == 0 }, "{x} -> {g}");
        }
    }

    fn le(v: &[i32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn layer_norm_within_1_lsb_of_int8_output() {
        let mut s = 4u64;
        let mut worst = 0.0f64;
        for case in 0..3000 {
            let c = 1 + (splitmix64(&mut s) % 200) as usize;
            let amp = 1 + (splitmix64(&mut s) % (1 << (3 + case % 12))) as i64;
            let off = (splitmix64(&mut s) % 2000) as i64 - 1000;
            let x: Vec<i16> = (0..c)
                .map(|_| {
                    let v = off + (splitmix64(&mut s) % (2 * amp as u64 + 1)) as i64 - amp;
                    v.clamp(-32767, 32767) as i16
                })
                .collect();
            let s_in = 1e-3;
            let s_out = 4.0 / 127.0;
            let w: Vec<f64> = (0..c)
                .map(|_| (splitmix64(&mut s) % 2000) as f64 / 1000.0 - 1.0)
                .collect();
            let b: Vec<f64> = (0..c)
                .map(|_| (splitmix64(&mut s) % 2000) as f64 / 1000.0 - 1.0)
                .collect();
            let eps_real = 1e-5;
            let mut gm = Vec::new();
            let mut gs = Vec::new();
            for wi in &w {
                let k = mult(wi * (c as f64).sqrt() / (s_out * (1u64 << 30) as f64));
                gm.push(k.m);
                gs.push(k.shift as u8);
            }
            let beta: Vec<i32> = b.iter().map(|v| (v / s_out).round() as i32).collect();
            let eps = (eps_real * c as f64 / (s_in * s_in)).round().max(1.0) as i32;
            let (mut gm, bb) = (le(&gm), le(&beta));
            gm.extend(gs);
            let mut out = std::vec![0i8; c];
            layer_norm(&x, Multipliers::new(&gm, c), I32s(&bb), eps, &mut out);
            // f64 LayerNorm of the real inputs.
            let xr: Vec<f64> = x.iter().map(|v| *v as f64 * s_in).collect();
            let mean = xr.iter().sum::<f64>() / c as f64;
            let var = xr.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / c as f64;
            for i in 0..c {
                let y = (xr[i] - mean) / (var + eps_real).sqrt() * w[i] + b[i];
                let want = (y / s_out).clamp(-127.0, 127.0);
                worst = worst.max((out[i] as f64 - want).abs());
            }
        }
        std::println!("layer norm worst error {worst} LSB");
        assert!(worst <= 1.0, "layer norm worst error {worst} LSB");
    }

    #[test]
    fn layer_norm_of_a_zero_token_is_the_bias() {
        let mut g = le(&[1 << 30, 1 << 30]);
        g.extend([40, 40]);
        let b = le(&[5, -7]);
        let mut out = [0i8; 2];
        layer_norm(&[0, 0], Multipliers::new(&g, 2), I32s(&b), 3, &mut out);
        assert_eq!(out, [5, -7]);
    }

    /// The matrix kernels' DSP form, its instructions emulated, gives the scalar loop's `i32`
    /// for every fan-in, row count and value, including the extremes; a `-128` activation
    /// takes the scalar path.
    #[test]
    fn matrix_dsp_form_is_the_scalar_sum() {
        let mut s = 9u64;
        let mut buf = std::vec![0u32; 1024];
        for case in 0..3000 {
            let k = 4 * (1 + (splitmix64(&mut s) % 40) as usize);
            let extreme = case % 5 == 0;
            let x: Vec<i8> = (0..k)
                .map(|_| {
                    let v = splitmix64(&mut s);
                    if extreme {
                        if v.is_multiple_of(2) {
                            127
                        } else {
                            -127
                        }
                    } else {
                        (v % 255) as i8 / if v.is_multiple_of(3) { 1 } else { 8 }
                    }
                })
                .collect();
            let w: Vec<i8> = (0..4 * k)
                .map(|i| mat_code(splitmix64(&mut s) as i8, i))
                .collect();
            let init: [i32; 4] =
                core::array::from_fn(|_| (splitmix64(&mut s) as i32) >> (case % 3));
            let p = mat::prepare_dsp(&x, &mut buf).unwrap();
            let got = mat::dsp::<4>(init, &p, &w, 0);
            assert_eq!(mat::rows4(init, &p, &w, 0), got, "case {case}");
            for r in 0..4 {
                let want = mat::dot_row(init[r], &x, &w, k, r);
                assert_eq!(got[r], want, "case {case} k {k} row {r}");
            }
            let one = mat::dsp::<1>([init[1]], &p, &w, 1);
            assert_eq!(one[0], mat::dot_row(init[1], &x, &w, k, 1));
        }
        assert!(mat::prepare_dsp(&[1, i8::MIN, 3, 4], &mut buf).is_none());
        assert!(mat::prepare_dsp(&[1, 2, 3], &mut buf).is_none());
        assert!(mat::prepare_dsp(&[1, 2, 3, 4], &mut []).is_none());
        // The public kernel agrees too, whatever path it takes.
        let x = [5i8, -7, 127, -127, 1, 2, 3, 4];
        let w: Vec<i8> = (0..16)
            .map(|i| mat_code((i as i32 * 15 - 120) as i8, i))
            .collect();
        let p = mat::prepare(&x, &mut buf);
        let b = le(&[10, -20]);
        let got = mat::acc::<2>(I32s(&b), &p, &w, 0);
        assert_eq!(got[0], mat::dot_row(10, &x, &w, 8, 0));
        assert_eq!(got[1], mat::dot_row(-20, &x, &w, 8, 1));
    }

    /// The stored row pairs: `stored_index` is a permutation that keeps each byte's offset
    /// parity (so `mat_code` reads the same), and `dot_row` over the stored bytes is the plain
    /// row's sum, for fan-ins that pair (multiples of 4) and that do not, odd and even row
    /// counts; the pair / block / single kernels agree from odd and even first rows.
    #[test]
    fn stored_row_pairs_are_the_plain_rows() {
        let mut s = 21u64;
        let mut buf = std::vec![0u32; 1024];
        for (k, rows) in [(8usize, 5usize), (12, 4), (4, 1), (6, 3), (16, 7), (3, 2)] {
            let len = k * rows;
            let plain: Vec<i8> = (0..len).map(|_| splitmix64(&mut s) as i8).collect();
            let mut stored = std::vec![0i8; len];
            let mut seen = std::vec![false; len];
            for o in 0..rows {
                for j in 0..k {
                    let at = mat::stored_index(len, k, o, j);
                    assert!(!seen[at], "k {k} rows {rows}: {o},{j} lands twice");
                    assert_eq!(at % 2, (o * k + j) % 2, "parity of {o},{j}");
                    seen[at] = true;
                    stored[at] = mat_code(plain[o * k + j], o * k + j);
                }
            }
            // The layout's writer puts every row where the permutation says.
            let mut written = std::vec![0i8; len];
            for (o, row) in plain.chunks_exact(k).enumerate() {
                mat::store_row(&mut written, k, o, row);
            }
            assert_eq!(written, stored, "k {k} rows {rows}");
            let x: Vec<i8> = (0..k).map(|_| (splitmix64(&mut s) % 255) as i8).collect();
            let y: Vec<i8> = (0..k).map(|_| (splitmix64(&mut s) % 255) as i8).collect();
            let bias: Vec<i32> = (0..rows as i32).map(|i| 7 * i - 9).collect();
            let b = le(&bias);
            let want = |v: &[i8], o: usize| {
                (0..k).fold(bias[o], |a, j| {
                    a.wrapping_add(v[j] as i32 * plain[o * k + j] as i32)
                })
            };
            for o in 0..rows {
                assert_eq!(
                    mat::dot_row(bias[o], &x, &stored, k, o),
                    want(&x, o),
                    "k {k} row {o}"
                );
            }
            let p = mat::prepare_pair(&x, &y, &mut buf);
            for first in 0..rows {
                let mut next = first;
                mat::pair_rows(I32s(&b), &p, &stored, first..rows, |os, acc| {
                    assert_eq!(os.start, next);
                    for (o, a) in os.clone().zip(acc) {
                        assert_eq!(*a, [want(&x, o), want(&y, o)], "k {k} row {o} from {first}");
                    }
                    next = os.end;
                });
                assert_eq!(next, rows);
            }
        }
    }

    /// The -128 test sees a 0x80 byte in every position among any other bytes, and nothing else.
    #[test]
    fn has_min_finds_exactly_the_minus_128_bytes() {
        let mut s = 13u64;
        for pos in 0..4 {
            for b in 0..=255u32 {
                for _ in 0..8 {
                    let mut v = splitmix64(&mut s) as u32;
                    for k in 0..4 {
                        if (v >> (8 * k)) & 0xFF == 0x80 {
                            v ^= 1 << (8 * k);
                        }
                    }
                    let v = (v & !(0xFF << (8 * pos))) | (b << (8 * pos));
                    assert_eq!(mat::has_min(v) != 0, b == 0x80, "{v:#010x}");
                }
            }
        }
    }

    #[test]
    fn word_lanes_are_the_scalar_lanes() {
        // Every value of bytes 0 and 1 (lane 0), with bytes 2 and 3 drawn at random.
        let mut s = 5u64;
        for lo in 0..=u16::MAX as u32 {
            let v = lo | ((splitmix64(&mut s) as u32) << 16);
            let g = v.to_le_bytes().map(|b| b as i8);
            assert_eq!(
                mat::word_lanes_for_test(v),
                mat::group_lanes(&g),
                "{v:#010x}"
            );
        }
    }

    #[test]
    fn two_column_dsp_form_is_the_scalar_sum() {
        let mut s = 11u64;
        let mut buf = std::vec![0u32; 1024];
        let vector = |s: &mut u64, k: usize, extreme: bool| -> Vec<i8> {
            (0..k)
                .map(|_| {
                    let v = splitmix64(s);
                    if extreme {
                        if v.is_multiple_of(2) {
                            127
                        } else {
                            -127
                        }
                    } else {
                        (v % 255) as i8 / if v.is_multiple_of(3) { 1 } else { 8 }
                    }
                })
                .collect()
        };
        for case in 0..3000 {
            // Odd and even group counts: the assembly runs an odd group before its loop.
            let k = 4 * (1 + (splitmix64(&mut s) % 40) as usize);
            let x = vector(&mut s, k, case % 5 == 0);
            let y = vector(&mut s, k, case % 7 == 0);
            let w: Vec<i8> = (0..2 * k)
                .map(|i| mat_code(splitmix64(&mut s) as i8, i))
                .collect();
            let init: [[i32; 2]; 2] = core::array::from_fn(|_| {
                core::array::from_fn(|_| (splitmix64(&mut s) as i32) >> (case % 3))
            });
            let p = mat::prepare_pair_dsp(&x, &y, &mut buf).unwrap();
            let got = mat::dsp_pair::<2>(init, &p, &w, 0);
            for r in 0..2 {
                for (c, v) in [&x, &y].into_iter().enumerate() {
                    let want = mat::dot_row(init[r][c], v, &w, k, r);
                    assert_eq!(got[r][c], want, "case {case} k {k} row {r} column {c}");
                }
            }
        }
        assert!(mat::prepare_pair_dsp(&[1, 2, 3, 4], &[1, i8::MIN, 3, 4], &mut buf).is_none());
        assert!(mat::prepare_pair_dsp(&[1, i8::MIN, 3, 4], &[1, 2, 3, 4], &mut buf).is_none());
        assert!(mat::prepare_pair_dsp(&[1, 2, 3], &[1, 2, 3], &mut buf).is_none());
        assert!(mat::prepare_pair_dsp(&[1, 2, 3, 4], &[1, 2, 3, 4], &mut buf[..3]).is_none());
        // The device benchmark's entry points compute the same sums.
        let (k, rows) = (64, 8);
        let x = vector(&mut s, k, false);
        let y = vector(&mut s, k, false);
        let w: Vec<i8> = (0..rows * k)
            .map(|i| mat_code(splitmix64(&mut s) as i8, i))
            .collect();
        let bias: Vec<i32> = (0..rows as i32).map(|i| 100 * i - 300).collect();
        let (mut want_pair, mut want_single) = (0i32, 0i32);
        for r in 0..rows {
            let (dx, dy) = (
                mat::dot_row(bias[r], &x, &w, k, r),
                mat::dot_row(bias[r], &y, &w, k, r),
            );
            want_pair = want_pair.wrapping_add(dx).wrapping_add(dy);
            want_single = want_single.wrapping_add(dx);
        }
        let wb: &[u8] = bytemuck::cast_slice(&w);
        let p = mat::prepare_pair(&x, &y, &mut buf);
        assert_eq!(mat::probe_pair(wb, &le(&bias), &p), want_pair);
        assert_eq!(mat::probe_single(wb, &le(&bias), &x, &mut buf), want_single);
        assert_eq!(mat::self_check(wb, &le(&bias), &x, &y, &mut buf), Ok(()));
        // The public kernels agree on every path: prepared, and scalar (a -128 input).
        let b = le(&[10, -20, 30]);
        for y in [
            [9i8, 8, -7, 6, 5, 4, 3, 2],
            [9i8, 8, -7, 6, 5, i8::MIN, 3, 2],
        ] {
            let x = [5i8, -7, 127, -127, 1, 2, 3, 4];
            let w: Vec<i8> = (0..24)
                .map(|i| mat_code((i as i32 * 11 - 120) as i8, i))
                .collect();
            let p = mat::prepare_pair(&x, &y, &mut buf);
            let mut got = [[0i32; 2]; 2];
            mat::acc_pair_block(I32s(&b), &p, &w, 0, &mut got);
            let last = mat::acc_pair1(I32s(&b), &p, &w, 2);
            for (c, v) in [&x[..], &y[..]].into_iter().enumerate() {
                assert_eq!(got[0][c], mat::dot_row(10, v, &w, 8, 0));
                assert_eq!(got[1][c], mat::dot_row(-20, v, &w, 8, 1));
                // The third row of three is stored alone, contiguous.
                assert_eq!(last[c], dot_mat_scalar(30, v, &w[16..], 16));
            }
        }
    }

    #[test]
    fn gelu_is_its_reference() {
        for x in -(1i32 << 22)..=(1 << 22) {
            assert_eq!(gelu_q12(x), gelu_q12_reference(x), "{x}");
        }
        let mut s = 11u64;
        for _ in 0..1_000_000 {
            let x = splitmix64(&mut s) as i32;
            assert_eq!(gelu_q12(x), gelu_q12_reference(x), "{x}");
        }
        for x in [i32::MIN, i32::MIN + 1, -1, 0, 1, i32::MAX] {
            assert_eq!(gelu_q12(x), gelu_q12_reference(x), "{x}");
        }
    }

    #[test]
    fn dot_wraps_instead_of_panicking() {
        assert_eq!(dot_i8(7, &[1, -2, 3], &[4, 5, -6]), 7 + 4 - 10 - 18);
        assert_eq!(dot_i8(i32::MAX, &[1], &[1]), i32::MIN);
    }
}
