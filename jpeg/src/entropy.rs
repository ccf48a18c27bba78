//! The Huffman-coded bitstream: a 64-bit bit buffer and the block decoders.
//!
//! The buffer holds the next bits of the stream left-aligned in a `u64`. A refill loads eight
//! bytes at once whenever none of them is `0xFF` (the common case: no byte stuffing and no
//! marker near), and falls back to byte-at-a-time reading that removes stuffed zeros and stops
//! at a marker. Past a marker or the end of the data it feeds zero bytes, as zune-jpeg does, but
//! counts them: a scan that consumes any of those invented bits is reported as truncated
//! rather than decoded, so the caller falls back to zune for damaged files.

use crate::error::JpegError;
use crate::header::ZIGZAG;
use crate::huffman::{extend, Huffman, FAST, LEN_MASK, LUT_BITS};

#[derive(Clone, Copy)]
pub(crate) struct Bits<'a> {
    data: &'a [u8],
    /// Next byte to load.
    pos: usize,
    acc: u64,
    /// Valid bits at the top of `acc`.
    n: u32,
    /// Zero bits appended after a marker or the end of the data.
    invented: u32,
    /// Position of the marker that stopped the reader (its `0xFF`).
    marker_at: Option<usize>,
}

impl<'a> Bits<'a> {
    pub(crate) fn new(data: &'a [u8], pos: usize) -> Self {
        Self {
            data,
            pos,
            acc: 0,
            n: 0,
            invented: 0,
            marker_at: None,
        }
    }

    /// Tops the buffer up to at least 56 valid bits.
    #[inline(always)]
    fn refill(&mut self) {
        if let Some(w) = self.data.get(self.pos..self.pos + 8) {
            let w = u64::from_be_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
            // Bit trick: a byte of !w is zero exactly where w has 0xFF.
            let x = !w;
            let has_ff = (x.wrapping_sub(0x0101_0101_0101_0101) & !x & 0x8080_8080_8080_8080) != 0;
            if !has_ff {
                let bytes = (63 - self.n) >> 3;
                self.acc |= w >> self.n;
                self.pos += bytes as usize;
                self.n += bytes * 8;
                // Bits of `w` beyond the ones counted stay in `acc` but are overwritten by the
                // next refill's OR only where they are equal, since they are the same bytes.
                self.acc &= !(u64::MAX >> self.n);
                return;
            }
        }
        *self = self.refill_slow();
    }

    /// Byte-at-a-time refill. Takes and returns the reader by value so that the hot loops
    /// keep their copy in registers.
    #[cold]
    #[inline(never)]
    fn refill_slow(mut self) -> Self {
        while self.n <= 56 {
            let byte = if self.marker_at.is_some() || self.pos >= self.data.len() {
                self.invented += 8;
                0
            } else {
                let b = self.data[self.pos];
                if b == 0xFF {
                    match self.data.get(self.pos + 1) {
                        Some(0) => {
                            self.pos += 2;
                            0xFF
                        }
                        _ => {
                            self.marker_at = Some(self.pos);
                            continue;
                        }
                    }
                } else {
                    self.pos += 1;
                    b
                }
            };
            self.acc |= u64::from(byte) << (56 - self.n);
            self.n += 8;
        }
        self
    }

    #[inline(always)]
    fn peek(&self, k: u32) -> u32 {
        (self.acc >> (64 - k)) as u32
    }

    #[inline(always)]
    fn drop(&mut self, k: u32) {
        self.acc <<= k;
        self.n -= k;
    }

    /// Reads `k` (1..=16) bits.
    #[inline(always)]
    fn get(&mut self, k: u32) -> u32 {
        let v = self.peek(k);
        self.drop(k);
        v
    }

    /// Whether any invented (zero-fill) bit has been consumed.
    pub(crate) fn overran(&self) -> bool {
        self.invented > self.n
    }

    /// Whether a marker that zune-jpeg does not know (see [`zune_knows`]) stops the
    /// entropy data within `window` bytes of what this reader has loaded. zune's reader fails
    /// on such a marker the moment its read-ahead meets it, and then (in its lenient mode)
    /// leaves the block it was decoding and every later one blank, although the bits before
    /// the marker would have sufficed. Its read-ahead is at most eight bytes beyond what it
    /// has consumed, so a region this reader decoded without meeting such a marker within a
    /// window of 16 bytes is one zune decoded too; otherwise the caller must fall back.
    pub(crate) fn unknown_marker_ahead(&self, window: usize) -> bool {
        let mut p = match self.marker_at {
            Some(at) => at,
            None => {
                let end = self.pos.saturating_add(window).min(self.data.len());
                match self.data[self.pos..end]
                    .windows(2)
                    .position(|w| w[0] == 0xFF && w[1] != 0x00)
                {
                    Some(i) => self.pos + i,
                    None => return false,
                }
            }
        };
        while self.data.get(p) == Some(&0xFF) {
            p += 1;
        }
        match self.data.get(p) {
            // zune reads a zero past the end: a stuffed byte to it, not a marker.
            None | Some(0x00) => false,
            Some(&m) => !zune_knows(m),
        }
    }

    /// Ends a restart interval: drops the padding bits, expects an RSTn marker next, and
    /// restarts the reader after it.
    pub(crate) fn restart(&mut self) -> Result<(), JpegError> {
        if self.overran() {
            return Err(JpegError::Truncated(
                "entropy data ended inside a restart interval",
            ));
        }
        // The reader never loads past a marker, so in a well-formed interval all that is left
        // in the buffer is the padding of the last byte, and the marker comes next.
        if self.n - self.invented >= 8 {
            return Err(JpegError::Format(
                "restart: entropy data left before the RST marker",
            ));
        }
        let at = self.marker_at.unwrap_or(self.pos);
        let mut p = at;
        if self.data.get(p) != Some(&0xFF) {
            return Err(JpegError::Format("restart: RSTn marker missing"));
        }
        while self.data.get(p) == Some(&0xFF) {
            p += 1;
        }
        match self.data.get(p) {
            Some(0xD0..=0xD7) => {}
            _ => return Err(JpegError::Format("restart: RSTn marker missing")),
        }
        *self = Self::new(self.data, p + 1);
        Ok(())
    }

    /// Decodes one Huffman symbol with the slow path for long codes.
    #[inline(always)]
    fn symbol(&mut self, t: &Huffman, entry: u32) -> Result<u32, JpegError> {
        let len = entry & LEN_MASK;
        if len != 0 {
            self.drop(len);
            return Ok((entry >> 8) & 0xFF);
        }
        let (len, sym) = t
            .decode_long(self.peek(16))
            .ok_or(JpegError::Format("bad Huffman code in scan"))?;
        self.drop(len);
        Ok(sym)
    }

    #[inline(always)]
    fn dc_diff(&mut self, dc: &Huffman) -> Result<i32, JpegError> {
        self.refill();
        let entry = dc.lut[self.peek(LUT_BITS) as usize];
        let size = self.symbol(dc, entry)?;
        Ok(if size == 0 {
            0
        } else {
            extend(self.get(size), size)
        })
    }

    /// Decodes one block into `blk` (dequantised, natural order; `blk` must be all zeros on
    /// entry); `qz` is the quantisation table in zig-zag order. Returns whether all AC
    /// coefficients are zero (no AC value was coded: with no zero entry in the table, which
    /// the header parser ensures, a coded value never dequantises to zero).
    #[inline(always)]
    pub(crate) fn decode_block(
        &mut self,
        dc: &Huffman,
        ac: &Huffman,
        qz: &[i32; 64],
        pred: &mut i32,
        blk: &mut [i32; 64],
    ) -> Result<bool, JpegError> {
        let mut s = *self;
        *pred = pred.wrapping_add(s.dc_diff(dc)?);
        blk[0] = pred.wrapping_mul(qz[0]);
        let mut last = 0;
        let mut k = 1usize;
        while k < 64 {
            if s.n < 32 {
                s.refill();
            }
            let entry = ac.lut[s.peek(LUT_BITS) as usize];
            if entry & FAST != 0 {
                k += ((entry >> 8) & 15) as usize;
                s.drop(entry & LEN_MASK);
                if k > 63 {
                    return Err(JpegError::Format("AC run past 63"));
                }
                blk[usize::from(ZIGZAG[k] & 63)] = ((entry as i32) >> 16).wrapping_mul(qz[k]);
                last = k;
                k += 1;
                continue;
            }
            let rs = s.symbol(ac, entry)?;
            let (run, size) = ((rs >> 4) as usize, rs & 15);
            if size == 0 {
                if run != 15 {
                    break;
                }
                k += 16;
                continue;
            }
            k += run;
            if k > 63 {
                return Err(JpegError::Format("AC run past 63"));
            }
            blk[usize::from(ZIGZAG[k] & 63)] = extend(s.get(size), size).wrapping_mul(qz[k]);
            last = k;
            k += 1;
        }
        *self = s;
        Ok(last == 0)
    }

    /// Steps over one block, keeping only the DC prediction.
    #[inline(always)]
    pub(crate) fn skip_block(
        &mut self,
        dc: &Huffman,
        ac: &Huffman,
        pred: &mut i32,
    ) -> Result<(), JpegError> {
        let mut s = *self;
        *pred = pred.wrapping_add(s.dc_diff(dc)?);
        let mut k = 1usize;
        while k < 64 {
            if s.n < 32 {
                s.refill();
            }
            let entry = ac.lut[s.peek(LUT_BITS) as usize];
            if entry & FAST != 0 {
                k += ((entry >> 8) & 15) as usize + 1;
                s.drop(entry & LEN_MASK);
                continue;
            }
            let rs = s.symbol(ac, entry)?;
            let (run, size) = ((rs >> 4) as usize, rs & 15);
            if size == 0 {
                if run != 15 {
                    break;
                }
                k += 16;
                continue;
            }
            k += run + 1;
            s.drop(size);
        }
        if k > 64 {
            return Err(JpegError::Format("AC run past 63"));
        }
        *self = s;
        Ok(())
    }
}

/// The marker codes zune-jpeg 0.5.15 names (`Marker::from_u8`); inside entropy-coded data
/// any other code is an error to it.
pub(crate) fn zune_knows(code: u8) -> bool {
    matches!(
        code,
        0xFE | 0xC0 | 0xC1 | 0xC2 | 0xC4 | 0xCC | 0xD0..=0xDD | 0xE0 | 0xE1 | 0xE2 | 0xED | 0xEE
    )
}
