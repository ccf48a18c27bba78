//! Huffman tables (DHT) and the lookup tables the entropy decoder indexes.
//!
//! Every table gets a `LUT_BITS`-bit lookup indexed by the next bits of the stream. An entry
//! either resolves a code of at most `LUT_BITS` bits, or is zero and sends the decoder to the
//! canonical slow path (codes of up to 16 bits). For AC tables an entry whose code and magnitude
//! bits together fit in `LUT_BITS` is "fast": it also carries the run and the sign-extended
//! coefficient, so the common coefficient costs one lookup and one shift.

use crate::error::JpegError;

/// Bits of look-ahead resolved by one table lookup.
pub(crate) const LUT_BITS: u32 = 10;
/// Entry flag: the entry carries run and value (AC tables only).
pub(crate) const FAST: u32 = 0x20;
/// Entry mask of the number of bits to drop.
pub(crate) const LEN_MASK: u32 = 0x1F;

/// One decoded Huffman table.
///
/// Entry layout of `lut`: bits 0..5 the bits to drop (0: code longer than `LUT_BITS`), bit 5
/// [`FAST`]; a plain entry has the symbol in bits 8..16; a fast entry has the run in bits 8..12
/// and the coefficient value as an `i16` in bits 16..32.
pub(crate) struct Huffman {
    pub(crate) lut: [u32; 1 << LUT_BITS],
    /// One past the largest code of each length, left-justified to 16 bits; 0 when none.
    maxcode: [u32; 17],
    /// Index in `values` of the first code of each length, minus that code.
    valoff: [i32; 17],
    values: [u8; 256],
}

impl Huffman {
    pub(crate) fn empty() -> Self {
        Self {
            lut: [0; 1 << LUT_BITS],
            maxcode: [0; 17],
            valoff: [0; 17],
            values: [0; 256],
        }
    }

    /// Builds the table from a DHT's 16 code counts and its symbols (`values.len()` is the sum
    /// of the counts, checked by the caller). Rejects what zune-jpeg rejects: code sets that use
    /// the all-ones code or do not fit, and DC symbols over 15.
    pub(crate) fn build(
        &mut self,
        counts: &[u8; 16],
        values: &[u8],
        is_dc: bool,
    ) -> Result<(), JpegError> {
        let mut codes = [0u16; 256];
        let mut lens = [0u8; 256];
        let mut code: u32 = 0;
        let mut k = 0usize;
        self.maxcode = [0; 17];
        self.valoff = [0; 17];
        for l in 1..=16usize {
            let n = usize::from(counts[l - 1]);
            self.valoff[l] = k as i32 - code as i32;
            for _ in 0..n {
                codes[k] = code as u16;
                lens[k] = l as u8;
                code += 1;
                k += 1;
            }
            if n > 0 {
                if code >= 1 << l {
                    return Err(JpegError::Format("DHT: code lengths over-subscribed"));
                }
                self.maxcode[l] = code << (16 - l);
            }
            code <<= 1;
        }
        debug_assert_eq!(k, values.len());
        self.values = [0; 256];
        self.values[..k].copy_from_slice(values);
        if is_dc && values.iter().any(|&s| s > 15) {
            return Err(JpegError::Format("DHT: DC symbol over 15"));
        }
        self.lut = [0; 1 << LUT_BITS];
        for i in 0..k {
            let l = u32::from(lens[i]);
            if l > LUT_BITS {
                continue;
            }
            let sym = u32::from(values[i]);
            let first = usize::from(codes[i]) << (LUT_BITS - l);
            for j in 0..1usize << (LUT_BITS - l) {
                let idx = first + j;
                let mut entry = l | (sym << 8);
                let size = sym & 15;
                if !is_dc && size != 0 && l + size <= LUT_BITS {
                    // The magnitude bits follow the code inside the same look-ahead.
                    let raw = (idx as u32 >> (LUT_BITS - l - size)) & ((1 << size) - 1);
                    let value = extend(raw, size);
                    entry = (l + size) | FAST | ((sym >> 4) << 8) | ((value as u16 as u32) << 16);
                }
                self.lut[idx] = entry;
            }
        }
        Ok(())
    }

    /// Resolves a code longer than `LUT_BITS` from the next 16 bits of the stream: the code
    /// length and the symbol, or `None` for a bit pattern that is no code.
    #[cold]
    pub(crate) fn decode_long(&self, next16: u32) -> Option<(u32, u32)> {
        for l in LUT_BITS as usize + 1..=16 {
            if next16 < self.maxcode[l] {
                let idx = (next16 >> (16 - l)) as i32 + self.valoff[l];
                return Some((l as u32, u32::from(self.values[(idx & 0xFF) as usize])));
            }
        }
        None
    }
}

/// JPEG's EXTEND: the `size`-bit magnitude category `raw` to its signed value.
#[inline(always)]
pub(crate) fn extend(raw: u32, size: u32) -> i32 {
    let raw = raw as i32;
    if size == 0 {
        0
    } else if raw < 1 << (size - 1) {
        raw - (1 << size) + 1
    } else {
        raw
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extend_matches_the_standard() {
        assert_eq!(extend(0, 1), -1);
        assert_eq!(extend(1, 1), 1);
        assert_eq!(extend(0, 3), -7);
        assert_eq!(extend(3, 3), -4);
        assert_eq!(extend(4, 3), 4);
        assert_eq!(extend(0x7FFF, 15), 0x7FFF);
        assert_eq!(extend(0, 15), -0x7FFF);
    }

    #[test]
    fn all_ones_code_is_rejected() {
        let mut t = Huffman::empty();
        let mut counts = [0u8; 16];
        counts[0] = 2;
        assert!(t.build(&counts, &[0, 1], true).is_err());
        counts[0] = 1;
        assert!(t.build(&counts, &[0], true).is_ok());
    }
}
