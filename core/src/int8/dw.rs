//! The 3x3 depthwise sums of the int8 engine (MBConv and PatchMerging on `i8` pixels, the local
//! conv on the `i16` stream), every channel of one output pixel in one pass.
//!
//! # Where the taps are
//! The caller hands three row pointers, one per kernel row `ky`, each at the pixel of tap
//! `kx = 0`: tap `(ky, kx)` of channel `ch` is `rows[ky][kx * c + ch]` (`c` the pixel stride
//! in values). The engine's rings keep a zero pixel left and right of every row and three zero
//! pixels for rows outside the map, so that border pixels run the same loop as interior ones
//! (a zero tap adds nothing).
//!
//! # The DSP form (Armv7E-M, feature `arm-dsp`)
//! Per channel: the nine taps are loaded sign-extended (`LDRSB` / `LDRSH`, two of them through a
//! register offset `c` and `2c`), packed in pairs into two `i16` lanes (`PKHBT`), and each pair
//! meets the matching lanes of one stored weight word: `SXTB16` of the word `w0..w3` gives
//! `(w0, w2)`, rotated by 8 `(w1, w3)`, so the pairs are `(x00, x02)`, `(x01, x10)`,
//! `(x11, x20)`, `(x12, x21)`, two products a `SMLAD`, and `w8 x22` one `MUL`. 28 instructions
//! for 9 multiply-accumulates, where the portable loop spends about 40. Wrapping `i32` sums:
//! the grouping gives [`sums3x3_portable`]'s result, bit for bit (tested on the device by
//! [`self_check`], and by every golden vector replayed there).

/// A pixel value type the kernels read: `i8` (MBConv, PatchMerging) or `i16` (local conv).
pub trait Px: Copy + Into<i32> + 'static {
    /// [`sums3x3`] in this type's assembly (`rows`, `w` and `out` checked by the caller: every
    /// row holds `2 c + out.len()` values, `w` `9 out.len()` bytes, `out` at least one).
    #[cfg(all(feature = "arm-dsp", target_arch = "arm"))]
    fn sums_asm(rows: [&[Self]; 3], c: usize, w: &[i8], out: &mut [i32]);
}

impl Px for i8 {
    #[cfg(all(feature = "arm-dsp", target_arch = "arm"))]
    #[inline(always)]
    fn sums_asm(rows: [&[Self]; 3], c: usize, w: &[i8], out: &mut [i32]) {
        asm::sums_i8(rows, c, w, out);
    }
}

impl Px for i16 {
    #[cfg(all(feature = "arm-dsp", target_arch = "arm"))]
    #[inline(always)]
    fn sums_asm(rows: [&[Self]; 3], c: usize, w: &[i8], out: &mut [i32]) {
        asm::sums_i16(rows, c, w, out);
    }
}

/// Channels the kernels can sum for these buffers: `out.len()`, cut to what `w` (`9` per
/// channel) and every row (`2 c` plus one per channel) hold.
fn channels<T>(rows: &[&[T]; 3], c: usize, w: &[i8], out: &[i32]) -> usize {
    let mut n = out.len().min(w.len() / 9);
    for r in rows {
        n = n.min(r.len().saturating_sub(2 * c));
    }
    n
}

/// `out[ch] = sum_{ky, kx} w[9 ch + 3 ky + kx] rows[ky][kx c + ch]` (wrapping `i32`) for the
/// channels `ch < out.len()` (module doc). Channels the buffers do not hold (see the module
/// doc's layout) are left as they are; the engine always passes full buffers.
#[inline]
pub fn sums3x3<T: Px>(rows: [&[T]; 3], c: usize, w: &[i8], out: &mut [i32]) {
    #[cfg(all(feature = "arm-dsp", target_arch = "arm"))]
    {
        let n = channels(&rows, c, w, out);
        if n > 0 {
            T::sums_asm(rows, c, &w[..9 * n], &mut out[..n]);
        }
    }
    #[cfg(not(all(feature = "arm-dsp", target_arch = "arm")))]
    {
        sums3x3_portable(rows, c, w, out);
    }
}

/// [`sums3x3`] in Rust, nine products a channel in tap order: the reference and the form every
/// target without the DSP extension runs.
pub fn sums3x3_portable<T: Px>(rows: [&[T]; 3], c: usize, w: &[i8], out: &mut [i32]) {
    let n = channels(&rows, c, w, out);
    for (ch, (o, w)) in out[..n].iter_mut().zip(w.chunks_exact(9)).enumerate() {
        let mut acc = 0i32;
        for (ky, row) in rows.iter().enumerate() {
            for kx in 0..3 {
                acc = acc.wrapping_add(w[3 * ky + kx] as i32 * row[kx * c + ch].into());
            }
        }
        *o = acc;
    }
}

/// The device's check of [`sums3x3`] against [`sums3x3_portable`] on pixels made from the
/// bytes of `data` (any bytes, at least 1024): `i8` and `i16` pixels, strides 1 to 9 and 40,
/// every channel count up to the stride. Returns the first stride that disagrees.
pub fn self_check(data: &[u8]) -> Result<(), usize> {
    const MAX_C: usize = 40;
    let mut x8 = [0i8; 3 * MAX_C + MAX_C];
    let mut x16 = [0i16; 3 * MAX_C + MAX_C];
    let mut w = [0i8; 9 * MAX_C];
    if data.len() < x8.len() + w.len() + 2 * x16.len() {
        return Err(0);
    }
    for (i, v) in x8.iter_mut().enumerate() {
        *v = data[i] as i8;
    }
    for (i, v) in w.iter_mut().enumerate() {
        *v = data[x8.len() + i] as i8;
    }
    for (i, v) in x16.iter_mut().enumerate() {
        let at = x8.len() + w.len() + 2 * i;
        *v = i16::from_le_bytes([data[at], data[at + 1]]);
    }
    for c in (1..=9).chain(core::iter::once(MAX_C)) {
        for n in 1..=c {
            let (mut got, mut want) = ([0i32; MAX_C], [0i32; MAX_C]);
            let r8 = [&x8[..], &x8[c..], &x8[MAX_C / 2..]];
            sums3x3(r8, c, &w, &mut got[..n]);
            sums3x3_portable(r8, c, &w, &mut want[..n]);
            let r16 = [&x16[..], &x16[c..], &x16[MAX_C / 2..]];
            let (mut got16, mut want16) = ([0i32; MAX_C], [0i32; MAX_C]);
            sums3x3(r16, c, &w, &mut got16[..n]);
            sums3x3_portable(r16, c, &w, &mut want16[..n]);
            if got != want || got16 != want16 {
                return Err(c);
            }
        }
    }
    Ok(())
}

/// The assembly (module doc). Twelve registers: the three row pointers, `c` (in bytes), the
/// weight pointer, the out pointer and its end, the accumulator, the weight word, its lanes and
/// two taps.
#[cfg(all(feature = "arm-dsp", target_arch = "arm"))]
#[allow(unsafe_code)]
mod asm {
    use core::arch::asm;

    macro_rules! kernel {
        ($name:ident, $t:ty, $ld:literal, $step:literal) => {
            /// The channels of `out` (`rows`, `w` and `out` checked by the caller: every row
            /// holds `2 c + out.len()` values, `w` `9 out.len()` bytes, `out` at least one).
            #[inline(always)]
            pub(super) fn $name(rows: [&[$t]; 3], c: usize, w: &[i8], out: &mut [i32]) {
                let cb = c * core::mem::size_of::<$t>();
                let [r0, r1, r2] = rows.map(|r| r.as_ptr());
                let po = out.as_mut_ptr();
                // SAFETY: `out` holds at least one `i32` (the caller checks), so the loop runs
                // `out.len()` times until `po == pend`.
                let pend = unsafe { po.add(out.len()) };
                // SAFETY: per channel `ch < out.len()` the block reads rows `r` at
                // `ch`, `c + ch` and `2 c + ch` values (inside each row: `2 c + out.len()`
                // values, as the caller checked), `w` at `9 ch .. 9 ch + 9` (inside `w`,
                // `9 out.len()` bytes; unaligned `LDR` is architectural on Armv7-M), and stores
                // one `i32` at `out[ch]` (word-aligned). Registers only otherwise; no stack;
                // the APSR flags it changes (CMP, the Q flag SMLAD may set) are not read after.
                unsafe {
                    asm!(
                        "1:",
                        concat!($ld, " {xa}, [{p2}, {cb}, lsl #1]"),
                        "ldrsb {xb}, [{pw}, #8]",
                        "mul {acc}, {xa}, {xb}",
                        "ldr {wa}, [{pw}, #4]",
                        concat!($ld, " {xa}, [{p1}, {cb}, lsl #1]"),
                        concat!($ld, " {xb}, [{p2}, {cb}]"),
                        "pkhbt {xa}, {xa}, {xb}, lsl #16",
                        "sxtb16 {t}, {wa}, ror #8",
                        "smlad {acc}, {t}, {xa}, {acc}",
                        concat!($ld, " {xa}, [{p1}, {cb}]"),
                        concat!($ld, " {xb}, [{p2}], #", $step),
                        "pkhbt {xa}, {xa}, {xb}, lsl #16",
                        "sxtb16 {t}, {wa}",
                        "smlad {acc}, {t}, {xa}, {acc}",
                        "ldr {wa}, [{pw}], #9",
                        concat!($ld, " {xa}, [{p0}, {cb}]"),
                        concat!($ld, " {xb}, [{p1}], #", $step),
                        "pkhbt {xa}, {xa}, {xb}, lsl #16",
                        "sxtb16 {t}, {wa}, ror #8",
                        "smlad {acc}, {t}, {xa}, {acc}",
                        concat!($ld, " {xb}, [{p0}, {cb}, lsl #1]"),
                        concat!($ld, " {xa}, [{p0}], #", $step),
                        "pkhbt {xa}, {xa}, {xb}, lsl #16",
                        "sxtb16 {t}, {wa}",
                        "smlad {acc}, {t}, {xa}, {acc}",
                        "str {acc}, [{po}], #4",
                        "cmp {po}, {pend}",
                        "bne 1b",
                        p0 = inout(reg) r0 => _,
                        p1 = inout(reg) r1 => _,
                        p2 = inout(reg) r2 => _,
                        cb = in(reg) cb,
                        pw = inout(reg) w.as_ptr() => _,
                        po = inout(reg) po => _,
                        pend = in(reg) pend,
                        acc = out(reg) _,
                        wa = out(reg) _,
                        t = out(reg) _,
                        xa = out(reg) _,
                        xb = out(reg) _,
                        options(nostack),
                    );
                }
            }
        };
    }

    kernel!(sums_i8, i8, "ldrsb", "1");
    kernel!(sums_i16, i16, "ldrsh", "2");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The portable sums are the nine products of each channel, taps as the module doc places
    /// them, for both pixel types and partial channel counts; short buffers cut the count.
    #[test]
    fn portable_sums_are_the_taps() {
        let c = 5;
        let x: std::vec::Vec<i16> = (0..40).map(|i| (i * 977 % 65536) as i16).collect();
        let w: std::vec::Vec<i8> = (0..45).map(|i| (i * 37 % 255) as u8 as i8).collect();
        let rows = [&x[..], &x[7..], &x[19..]];
        let mut out = [0i32; 5];
        sums3x3_portable(rows, c, &w, &mut out);
        for ch in 0..c {
            let mut want = 0i32;
            for ky in 0..3 {
                for kx in 0..3 {
                    want += w[9 * ch + 3 * ky + kx] as i32 * rows[ky][kx * c + ch] as i32;
                }
            }
            assert_eq!(out[ch], want, "channel {ch}");
        }
        // A row holding only 2c + 2 values: two channels, the rest untouched.
        let mut out = [i32::MIN; 5];
        sums3x3_portable([&x[..12], &x[..], &x[..]], c, &w, &mut out);
        assert!(out[..2].iter().all(|v| *v != i32::MIN));
        assert!(out[2..].iter().all(|v| *v == i32::MIN));
        assert_eq!(super::self_check(&[7u8; 2048]), Ok(()));
        assert_eq!(super::self_check(&[7u8; 16]), Err(0));
    }
}
