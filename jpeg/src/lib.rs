//! A baseline JPEG decoder that decodes only a rectangle of the image, with pixels
//! bit-identical to zune-jpeg 0.5.15's full decode (the decoder the `image` crate runs)
//! cropped to that rectangle.
//!
//! # Why
//! The training augmentation's RandomResizedCrop draws its crop rectangle from the image size
//! (in the header) and a seed before any pixel is decoded. Decoding only what the crop needs
//! makes the "decode included" data path cheaper without changing a single output byte.
//!
//! # What is decoded and what is skipped
//! A baseline JPEG is one serial Huffman-coded stream of MCUs (minimum coded units, 8x8 to
//! 16x16 pixels), row after row, and each block's DC coefficient is coded relative to the
//! previous block of its component. So every MCU up to the last MCU row the crop touches is
//! entropy-decoded (the stream cannot be entered in the middle; restart intervals could allow
//! it, and are only honoured, not exploited). The decoder stops after that row. Blocks above
//! the crop's first MCU row or outside its MCU columns are only stepped over: their
//! coefficients are not stored, dequantised, transformed or colour-converted. Inside the crop's
//! MCUs each block is dequantised and inverse-transformed into per-component planes that cover
//! just those MCUs, then only the crop's pixels are upsampled and converted to RGB.
//!
//! Chroma upsampling (4:2:2 and 4:2:0) looks one chroma sample to each side, so the decoded
//! MCU range is widened by one chroma row or column where the crop's edge needs that context;
//! at the edges of the whole (MCU-padded) plane the sample itself is used, as zune does.
//!
//! # Why bit-exact with zune
//! Every stage repeats zune's integer arithmetic (the private modules' docs give the details):
//! the same Huffman decoding and DC prediction (wrapping `i32`), the same dequantisation
//! (coefficient times table entry, wrapping `i32`), the same fixed-point IDCT (zune's scalar,
//! AVX2, 4x4 and DC-only variants are all one function; ours is that function, in AVX2 where
//! the CPU has it), zune's separable "fancy" upsampling (3:1 vertical, then 3:1 horizontal,
//! each rounded with +2 and shifted by 2, on the MCU-padded planes, the plane's edge samples
//! blending with themselves), and its 14-bit fixed-point YCbCr to RGB conversion. Because
//! each output pixel depends only on a fixed neighbourhood of samples, decoding a region with
//! that neighbourhood gives the same bytes as decoding everything. The tests compare against
//! zune itself on many files and rectangles.
//!
//! # Speed
//! Entropy decoding uses a 64-bit bit buffer refilled eight bytes at a time when no `0xFF`
//! is near, and 10-bit lookup tables that resolve the code length and, for short codes, the
//! run and the sign-extended coefficient at once. On the benchmark photos (`benches/region.rs`)
//! a full-image decode takes about 0.85x zune's time and a RandomResizedCrop region about 0.6x
//! (4:4:4 and 4:2:0 alike; 2-core machine, both measured in the same run).
//!
//! # Scope
//! SOF0/SOF1 (8-bit Huffman), one interleaved scan with all components, grey or YCbCr with
//! 4:4:4, 4:2:2 (Y 2x1) or 4:2:0 (Y 2x2) sampling, 8- and 16-bit DQT, DRI restarts. Anything
//! else (progressive, arithmetic, 12-bit, CMYK/YCCK/Adobe-RGB, several scans, other sampling
//! factors, RGB component ids) is [`JpegError::Unsupported`]: the caller decodes those with
//! zune-jpeg. Damaged files (truncated scans, bad codes, stray bytes) are errors, never panics,
//! and also go to zune, which may salvage part of them.

//!
//! # Example
//! ```
//! use tinyvit_jpeg::{read_info, Decoder, JpegError};
//!
//! let bytes = include_bytes!("../tests/fixtures/420_91x53.jpg");
//! let info = read_info(bytes)?;
//! assert_eq!((info.width, info.height, info.channels), (91, 53, 3));
//! let mut decoder = Decoder::new(); // keep it: its buffers are reused
//! let mut rgb = Vec::new();
//! match decoder.decode_region(bytes, 10, 20, 30, 16, &mut rgb) {
//!     Ok(_) => assert_eq!(rgb.len(), 30 * 16 * 3),
//!     // Progressive, CMYK, damaged, ...: decode with zune-jpeg (or `image`) and crop.
//!     Err(e) => panic!("fall back to the full decoder: {e}"),
//! }
//! # Ok::<(), JpegError>(())
//! ```

mod color;
mod entropy;
mod error;
mod header;
mod huffman;
mod idct;
mod simd;

pub use error::JpegError;

use entropy::Bits;
use header::Frame;
use simd::Simd;

/// What the headers say about an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Info {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Output channels: 1 for grey, 3 (RGB) for colour (exact for supported files).
    pub channels: u8,
    /// `None` when [`Decoder::decode_region`] takes the file, else why it does not.
    pub unsupported: Option<&'static str>,
}

impl Info {
    fn of(f: &Frame) -> Self {
        Self {
            width: u32::from(f.width),
            height: u32::from(f.height),
            channels: if f.ncomp == 1 { 1 } else { 3 },
            unsupported: f.unsupported,
        }
    }
}

/// Reads the headers (up to the first scan) and reports the size and whether
/// [`Decoder::decode_region`] supports the file. DHT tables are checked but not built.
pub fn read_info(bytes: &[u8]) -> Result<Info, JpegError> {
    let mut f = Box::new(Frame::new());
    f.parse(bytes, false)?;
    Ok(Info::of(&f))
}

/// A region decoder with its scratch buffers; reuse one for many images.
pub struct Decoder {
    frame: Box<Frame>,
    planes: [Vec<u8>; 3],
    rows: [Vec<u8>; 3],
    simd: Simd,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl core::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Decoder")
            .field("simd", &self.simd)
            .finish_non_exhaustive()
    }
}

/// Geometry of one decode: the MCU grid and the MCU range the region needs.
struct Plan {
    /// Luma sampling factors (1 or 2 each); 1x1 for grey.
    hs: usize,
    vs: usize,
    mcu_x: usize,
    /// Padded chroma plane size in samples.
    cw: usize,
    ch: usize,
    /// Inclusive MCU column and row ranges to reconstruct.
    c0: usize,
    c1: usize,
    r0: usize,
    r1: usize,
}

impl Decoder {
    /// A decoder with empty scratch buffers.
    pub fn new() -> Self {
        Self {
            frame: Box::new(Frame::new()),
            planes: Default::default(),
            rows: Default::default(),
            simd: Simd::detect(),
        }
    }

    /// A decoder that never uses the AVX2 code paths (for tests of the portable code).
    #[doc(hidden)]
    pub fn without_simd() -> Self {
        Self {
            simd: Simd::none(),
            ..Self::new()
        }
    }

    /// Decodes the `w` x `h` rectangle at (`x`, `y`) into `out` (resized to `w * h *
    /// channels` bytes: RGB interleaved for colour images, one byte per pixel for grey,
    /// row-major), exactly as zune-jpeg's full decode cropped to that rectangle.
    pub fn decode_region(
        &mut self,
        bytes: &[u8],
        x: u32,
        y: u32,
        w: u32,
        h: u32,
        out: &mut Vec<u8>,
    ) -> Result<Info, JpegError> {
        self.frame.parse(bytes, true)?;
        let info = Info::of(&self.frame);
        if let Some(why) = info.unsupported {
            return Err(JpegError::Unsupported(why));
        }
        let in_range =
            |o: u32, l: u32, size: u32| l > 0 && u64::from(o) + u64::from(l) <= u64::from(size);
        if !in_range(x, w, info.width) || !in_range(y, h, info.height) {
            return Err(JpegError::Region {
                rect: [x, y, w, h],
                size: [info.width, info.height],
            });
        }
        let plan = self.plan(x as usize, y as usize, w as usize, h as usize);
        self.check_data_size(bytes.len(), &plan)?;
        self.decode_mcus(bytes, &plan)?;
        // Every byte is written below; keep what is there and only fill growth.
        out.resize(w as usize * h as usize * usize::from(info.channels), 0);
        self.write_pixels(&plan, [x, y, w].map(|v| v as usize), out);
        Ok(info)
    }

    fn plan(&self, x: usize, y: usize, w: usize, h: usize) -> Plan {
        let f = &self.frame;
        let (hs, vs) = (usize::from(f.comps[0].h), usize::from(f.comps[0].v));
        let (mw, mh) = (8 * hs, 8 * vs);
        let mcu_x = usize::from(f.width).div_ceil(mw);
        let mcu_y = usize::from(f.height).div_ceil(mh);
        let (cw, ch) = (8 * mcu_x, 8 * mcu_y);
        // Chroma samples the region's pixels read, with the upsampler's one-sample context.
        let span = |lo: usize, last: usize, sub: usize, size: usize| {
            if sub == 2 {
                ((lo / 2).saturating_sub(1), (last / 2 + 1).min(size - 1))
            } else {
                (lo, last)
            }
        };
        let (ccl, cch) = span(x, x + w - 1, hs, cw);
        let (crl, crh) = span(y, y + h - 1, vs, ch);
        Plan {
            hs,
            vs,
            mcu_x,
            cw,
            ch,
            c0: (x / mw).min(ccl / 8),
            c1: ((x + w - 1) / mw).max(cch / 8),
            r0: (y / mh).min(crl / 8),
            r1: ((y + h - 1) / mh).max(crh / 8),
        }
    }

    /// Every block takes at least two bits (a DC code and an EOB). Refusing a file whose
    /// entropy data is too short for the blocks asked of it bounds every allocation by the
    /// input size, whatever the header claims.
    fn check_data_size(&self, len: usize, p: &Plan) -> Result<(), JpegError> {
        let f = &self.frame;
        let blocks_per_mcu: usize = f.comps[..f.ncomp]
            .iter()
            .map(|c| usize::from(c.h) * usize::from(c.v))
            .sum();
        let blocks = (p.r1 + 1) * p.mcu_x * blocks_per_mcu;
        let avail_bits = len.saturating_sub(f.data_start).saturating_mul(8);
        if blocks.saturating_mul(2) > avail_bits {
            return Err(JpegError::Truncated(
                "entropy data too short for the image size",
            ));
        }
        Ok(())
    }

    /// Entropy-decodes MCU rows `0..=r1`, reconstructing the blocks of MCU rows `r0..=r1`,
    /// columns `c0..=c1` into `planes`.
    fn decode_mcus(&mut self, bytes: &[u8], p: &Plan) -> Result<(), JpegError> {
        let f = &*self.frame;
        let ncomp = f.ncomp;
        let (ncols, nrows) = (p.c1 - p.c0 + 1, p.r1 - p.r0 + 1);
        let mut strides = [0usize; 3];
        for k in 0..ncomp {
            let c = f.comps[k];
            strides[k] = ncols * usize::from(c.h) * 8;
            let len = strides[k] * nrows * usize::from(c.v) * 8;
            // Every byte of the used part is written by the IDCT; only growth is filled.
            if self.planes[k].len() < len {
                self.planes[k].resize(len, 0);
            }
        }
        let ri = usize::from(f.restart_interval);
        let mut bits = Bits::new(bytes, f.data_start);
        let mut preds = [0i32; 3];
        let mut blk = [0i32; 64];
        let mut mcu = 0usize;
        for mr in 0..=p.r1 {
            for mc in 0..p.mcu_x {
                if ri != 0 && mcu != 0 && mcu.is_multiple_of(ri) {
                    bits.restart()?;
                    preds = [0; 3];
                }
                mcu += 1;
                let store = mr >= p.r0 && (p.c0..=p.c1).contains(&mc);
                for &k in &f.scan[..ncomp] {
                    let c = f.comps[k];
                    let (dc, ac) = (&f.dc[usize::from(c.td)], &f.ac[usize::from(c.ta)]);
                    let (bh, bv) = (usize::from(c.h), usize::from(c.v));
                    for by in 0..bv {
                        for bx in 0..bh {
                            if !store {
                                bits.skip_block(dc, ac, &mut preds[k])?;
                                continue;
                            }
                            let q = &f.qt[usize::from(c.tq)];
                            let ac_zero = bits.decode_block(dc, ac, q, &mut preds[k], &mut blk)?;
                            let px = ((mc - p.c0) * bh + bx) * 8;
                            let py = ((mr - p.r0) * bv + by) * 8;
                            let at = py * strides[k] + px;
                            idct::idct_block(
                                &blk,
                                &mut self.planes[k][at..],
                                strides[k],
                                ac_zero,
                                self.simd,
                            );
                            blk = [0; 64];
                        }
                    }
                }
            }
            if bits.overran() {
                return Err(JpegError::Truncated("entropy data ended inside the scan"));
            }
        }
        if bits.unknown_marker_ahead(16) {
            return Err(JpegError::Format(
                "a marker zune-jpeg does not know inside the entropy-coded data",
            ));
        }
        Ok(())
    }

    /// Upsamples and colour-converts the region's pixels from the planes.
    fn write_pixels(&mut self, p: &Plan, xyw: [usize; 3], out: &mut [u8]) {
        #[cfg(target_arch = "x86_64")]
        if self.simd.avx2() {
            // SAFETY: `Simd::avx2` is only true when the running CPU reported AVX2.
            unsafe { self.write_pixels_avx2(p, xyw, out) };
            return;
        }
        self.write_pixels_impl(p, xyw, out);
    }

    /// [`Self::write_pixels_impl`] compiled for AVX2, so that its row loops vectorise wider.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn write_pixels_avx2(&mut self, p: &Plan, xyw: [usize; 3], out: &mut [u8]) {
        self.write_pixels_impl(p, xyw, out);
    }

    #[inline(always)]
    fn write_pixels_impl(&mut self, p: &Plan, [x, y, w]: [usize; 3], out: &mut [u8]) {
        let f = &*self.frame;
        let ystride = (p.c1 - p.c0 + 1) * p.hs * 8;
        let (yx0, yy0) = (p.c0 * p.hs * 8, p.r0 * p.vs * 8);
        if f.ncomp == 1 {
            for (r, o) in out.chunks_exact_mut(w).enumerate() {
                let at = (y + r - yy0) * ystride + x - yx0;
                o.copy_from_slice(&self.planes[0][at..at + w]);
            }
            return;
        }
        let cstride = (p.c1 - p.c0 + 1) * 8;
        let (cx0, cy0) = (p.c0 * 8, p.r0 * 8);
        // Chroma columns the row's pixels read (with the upsampler's context).
        let (lo, hi) = if p.hs == 2 {
            (
                (x / 2).saturating_sub(1),
                ((x + w - 1) / 2 + 1).min(p.cw - 1),
            )
        } else {
            (x, x + w - 1)
        };
        let [rcb, rcr, vext] = &mut self.rows;
        for (r, o) in out.chunks_exact_mut(3 * w).enumerate() {
            let py = y + r;
            let yrow = &self.planes[0][(py - yy0) * ystride + x - yx0..][..w];
            // Chroma row `cy` of the padded plane and the row it blends with vertically
            // (zune's `upsample_vertical`; the plane's first and last rows blend with themselves).
            let (cy, other) = if p.vs == 2 {
                let cy = py / 2;
                let other = if py % 2 == 0 {
                    cy.saturating_sub(1)
                } else {
                    (cy + 1).min(p.ch - 1)
                };
                (cy, other)
            } else {
                (py, py)
            };
            let mut chroma = |plane: &[u8], dst: &mut Vec<u8>| -> usize {
                let row = &plane[(cy - cy0) * cstride + lo - cx0..][..hi - lo + 1];
                if p.hs == 1 {
                    dst.clear();
                    dst.extend_from_slice(row);
                    return 0;
                }
                // vext[k] is the (vertically blended) chroma column lo - 1 + k; the two ends
                // repeat their neighbour, which is exact at the plane's edges and never read
                // for a region pixel elsewhere.
                vext.clear();
                vext.push(0);
                if p.vs == 2 {
                    let orow = &plane[(other - cy0) * cstride + lo - cx0..][..hi - lo + 1];
                    vext.extend(
                        row.iter()
                            .zip(orow)
                            .map(|(&a, &b)| ((3 * u16::from(a) + u16::from(b) + 2) >> 2) as u8),
                    );
                } else {
                    vext.extend_from_slice(row);
                }
                vext.push(vext[vext.len() - 1]);
                vext[0] = vext[1];
                // zune's `upsample_horizontal`: each sample becomes two, each blended 3:1
                // with the neighbour on its side.
                dst.clear();
                dst.resize(2 * (hi - lo + 1), 0);
                for (d, win) in dst.chunks_exact_mut(2).zip(vext.windows(3)) {
                    let c = 3 * u16::from(win[1]) + 2;
                    d[0] = ((c + u16::from(win[0])) >> 2) as u8;
                    d[1] = ((c + u16::from(win[2])) >> 2) as u8;
                }
                x - 2 * lo
            };
            let off = chroma(&self.planes[1], rcb);
            chroma(&self.planes[2], rcr);
            let (cb, cr) = (&rcb[off..off + w], &rcr[off..off + w]);
            color::ycc_row(yrow, cb, cr, o, self.simd);
        }
    }
}
