//! Marker parsing: everything from SOI up to the first SOS.
//!
//! The parser is strict where zune-jpeg is lenient (stray bytes between segments, odd APP14
//! transforms, RGB component ids, MJPEG without tables): such files are reported as
//! unsupported so that the caller decodes them with zune-jpeg itself, which keeps every
//! `Ok` answer of this crate equal to zune's.

use crate::error::JpegError;
use crate::huffman::Huffman;

/// Natural (row-major) index of each zig-zag position.
pub(crate) const ZIGZAG: [u8; 64] = zigzag();

const fn zigzag() -> [u8; 64] {
    let mut out = [0u8; 64];
    let mut k = 0;
    let mut s = 0; // anti-diagonal: row + column
    while s < 15 {
        // Even diagonals run up-right (row falling), odd ones down-left (row rising).
        let lo = if s > 7 { s - 7 } else { 0 };
        let hi = if s < 7 { s } else { 7 };
        let mut i = 0;
        while i <= hi - lo {
            let row = if s % 2 == 0 { hi - i } else { lo + i };
            let col = s - row;
            out[k] = (row * 8 + col) as u8;
            k += 1;
            i += 1;
        }
        s += 1;
    }
    out
}

/// One frame component as SOF and SOS describe it.
#[derive(Clone, Copy, Default, Debug)]
pub(crate) struct Component {
    pub(crate) id: u8,
    pub(crate) h: u8,
    pub(crate) v: u8,
    pub(crate) tq: u8,
    pub(crate) td: u8,
    pub(crate) ta: u8,
}

/// What the headers say, with the tables in force at the first SOS.
pub(crate) struct Frame {
    pub(crate) width: u16,
    pub(crate) height: u16,
    pub(crate) ncomp: usize,
    pub(crate) comps: [Component; 3],
    /// Frame indices of the scan's components, in bitstream order.
    pub(crate) scan: [usize; 3],
    pub(crate) restart_interval: u16,
    /// Quantisation tables in zig-zag (file) order.
    pub(crate) qt: [[i32; 64]; 4],
    pub(crate) dc: [Huffman; 4],
    pub(crate) ac: [Huffman; 4],
    /// Offset of the first entropy-coded byte.
    pub(crate) data_start: usize,
    /// Why the region decoder cannot take this file, if it cannot.
    pub(crate) unsupported: Option<&'static str>,
}

impl Frame {
    pub(crate) fn new() -> Self {
        Self {
            width: 0,
            height: 0,
            ncomp: 0,
            comps: [Component::default(); 3],
            scan: [0; 3],
            restart_interval: 0,
            qt: [[0; 64]; 4],
            dc: core::array::from_fn(|_| Huffman::empty()),
            ac: core::array::from_fn(|_| Huffman::empty()),
            data_start: 0,
            unsupported: None,
        }
    }

    /// Parses the headers of `bytes` into `self`. With `tables == false` the DHT segments are
    /// only skipped (enough for [`crate::read_info`]). Errors are for malformed headers; a
    /// well-formed file of a kind the decoder does not take comes back `Ok` with
    /// `unsupported` set, as long as its size could be read.
    pub(crate) fn parse(&mut self, bytes: &[u8], tables: bool) -> Result<(), JpegError> {
        let mut r = Reader { bytes, pos: 0 };
        if r.u16("SOI: missing")? != 0xFFD8 {
            return Err(JpegError::Format("SOI: not a JPEG (no FFD8)"));
        }
        self.unsupported = None;
        self.restart_interval = 0;
        self.ncomp = 0;
        let mut qt_set = [false; 4];
        let mut dc_set = [false; 4];
        let mut ac_set = [false; 4];
        let mut seen_sof = false;
        let mut adobe_transform: Option<u8> = None;
        let mut avi1 = false;
        loop {
            if r.u8("marker: data ended before SOS")? != 0xFF {
                return self.unsupported_or("bytes between marker segments");
            }
            let mut m = r.u8("marker: data ended before SOS")?;
            while m == 0xFF {
                m = r.u8("marker: data ended before SOS")?;
            }
            match m {
                0xC0 | 0xC1 => {
                    if seen_sof {
                        return Err(JpegError::Format("SOF: second frame header"));
                    }
                    seen_sof = true;
                    self.parse_sof(&mut r, m)?;
                }
                0xC2 => {
                    self.unsupported.get_or_insert("progressive (SOF2)");
                    self.parse_sof(&mut r, m)?;
                    return Ok(());
                }
                0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => {
                    return Err(JpegError::Unsupported(
                        "lossless, hierarchical or arithmetic-coded frame",
                    ))
                }
                0xC4 => {
                    let seg = r.segment("DHT: length")?;
                    self.parse_dht(seg, tables, &mut dc_set, &mut ac_set)?;
                }
                0xDB => {
                    let seg = r.segment("DQT: length")?;
                    parse_dqt(seg, &mut self.qt, &mut qt_set)?;
                }
                0xDD => {
                    let seg = r.segment("DRI: length")?;
                    if seg.len() != 2 {
                        return Err(JpegError::Format("DRI: length not 4"));
                    }
                    self.restart_interval = u16::from_be_bytes([seg[0], seg[1]]);
                }
                0xE0 => {
                    let seg = r.segment("APP0: length")?;
                    avi1 |= seg.len() >= 5 && &seg[..5] == b"AVI1\0";
                }
                0xEE => {
                    let start = r.pos + 2;
                    let seg = r.segment("APP14: length")?;
                    // zune looks for "Adobe" even past a short segment; so do we.
                    if bytes.get(start..start + 5) == Some(b"Adobe") {
                        adobe_transform = Some(if seg.len() >= 12 { seg[11] } else { 0xFF });
                    }
                }
                0xE1..=0xED | 0xEF | 0xFE | 0xF0..=0xFD | 0x02..=0xBF => {
                    r.segment("APPn/COM: length")?;
                }
                0xDA => {
                    if !seen_sof {
                        return Err(JpegError::Format("SOS: before any SOF"));
                    }
                    let seg = r.segment("SOS: length")?;
                    self.parse_sos(seg)?;
                    self.data_start = r.pos;
                    break;
                }
                0xD9 => return Err(JpegError::Format("EOI: before SOS")),
                0xCC => return Err(JpegError::Unsupported("arithmetic coding (DAC)")),
                0xC8 => return Err(JpegError::Unsupported("JPG extension marker")),
                0xDC => return Err(JpegError::Unsupported("DNL marker")),
                _ => return Err(JpegError::Format("marker: stray RSTn/TEM before SOS")),
            }
        }
        if avi1 {
            self.unsupported
                .get_or_insert("MJPEG (AVI1) with implied tables");
        }
        match adobe_transform {
            None | Some(1) => {}
            Some(_) => {
                self.unsupported
                    .get_or_insert("Adobe APP14 colour transform other than YCbCr");
            }
        }
        if self.ncomp == 3 && self.comps.iter().map(|c| c.id).eq(*b"RGB") {
            self.unsupported.get_or_insert("RGB component ids");
        }
        for &k in &self.scan[..self.ncomp] {
            let tq = usize::from(self.comps[k].tq);
            if self.unsupported.is_none() && qt_set[tq] && self.qt[tq].contains(&0) {
                // Invalid per the standard, accepted by zune. With a zero entry a coded AC
                // coefficient can dequantise to 0, and zune's 4x4 IDCT variant then skips the
                // DC-only shortcut; such files are left to zune rather than reasoned about.
                self.unsupported = Some("DQT: zero quantiser entry");
            }
        }
        if self.unsupported.is_none() && tables {
            for &k in &self.scan[..self.ncomp] {
                let c = self.comps[k];
                if !qt_set[usize::from(c.tq)] {
                    return Err(JpegError::Format(
                        "SOF: component names an undefined DQT table",
                    ));
                }
                if !dc_set[usize::from(c.td)] || !ac_set[usize::from(c.ta)] {
                    return Err(JpegError::Format(
                        "SOS: component names an undefined DHT table",
                    ));
                }
            }
        }
        Ok(())
    }

    fn unsupported_or(&mut self, why: &'static str) -> Result<(), JpegError> {
        if self.width == 0 {
            Err(JpegError::Unsupported(why))
        } else {
            self.unsupported.get_or_insert(why);
            Ok(())
        }
    }

    fn parse_sof(&mut self, r: &mut Reader<'_>, m: u8) -> Result<(), JpegError> {
        let seg = r.segment("SOF: length")?;
        if seg.len() < 6 {
            return Err(JpegError::Format("SOF: segment too short"));
        }
        if seg[0] != 8 {
            self.unsupported
                .get_or_insert("precision other than 8 bits");
        }
        self.height = u16::from_be_bytes([seg[1], seg[2]]);
        self.width = u16::from_be_bytes([seg[3], seg[4]]);
        let n = usize::from(seg[5]);
        if self.height == 0 {
            return Err(JpegError::Format("SOF: height 0"));
        }
        if self.width == 0 {
            return Err(JpegError::Format("SOF: width 0"));
        }
        if n == 0 {
            return Err(JpegError::Format("SOF: no components"));
        }
        if seg.len() != 6 + 3 * n {
            return Err(JpegError::Format(
                "SOF: length does not match the component count",
            ));
        }
        if n != 1 && n != 3 {
            self.ncomp = n.min(3);
            self.unsupported
                .get_or_insert("component count other than 1 or 3");
            return Ok(());
        }
        self.ncomp = n;
        for i in 0..n {
            let c = &seg[6 + 3 * i..9 + 3 * i];
            let (h, v) = (c[1] >> 4, c[1] & 15);
            if h == 0 || v == 0 || h > 4 || v > 4 || !h.is_power_of_two() {
                return Err(JpegError::Format("SOF: bad sampling factor"));
            }
            if c[2] > 3 {
                return Err(JpegError::Format("SOF: quantisation table index over 3"));
            }
            self.comps[i] = Component {
                id: c[0],
                h,
                v,
                tq: c[2],
                td: 0,
                ta: 0,
            };
        }
        let _ = m;
        let f = |i: usize| (self.comps[i].h, self.comps[i].v);
        let ok = if n == 1 {
            f(0) == (1, 1)
        } else {
            matches!(f(0), (1, 1) | (2, 1) | (2, 2)) && f(1) == (1, 1) && f(2) == (1, 1)
        };
        if !ok {
            self.unsupported
                .get_or_insert("sampling factors other than 4:4:4, 4:2:2, 4:2:0");
        }
        Ok(())
    }

    fn parse_dht(
        &mut self,
        mut seg: &[u8],
        tables: bool,
        dc_set: &mut [bool; 4],
        ac_set: &mut [bool; 4],
    ) -> Result<(), JpegError> {
        while seg.len() > 16 {
            let info = seg[0];
            let (class, index) = (info >> 4, usize::from(info & 15));
            if class > 1 {
                return Err(JpegError::Format("DHT: table class over 1"));
            }
            if index > 3 {
                return Err(JpegError::Format("DHT: table index over 3"));
            }
            let mut counts = [0u8; 16];
            counts.copy_from_slice(&seg[1..17]);
            let total: usize = counts.iter().map(|&c| usize::from(c)).sum();
            if total > 256 {
                return Err(JpegError::Format("DHT: more than 256 codes"));
            }
            let values = seg
                .get(17..17 + total)
                .ok_or(JpegError::Format("DHT: symbols run past the segment"))?;
            if tables {
                let table = if class == 0 {
                    &mut self.dc[index]
                } else {
                    &mut self.ac[index]
                };
                table.build(&counts, values, class == 0)?;
            }
            if class == 0 {
                dc_set[index] = true;
            } else {
                ac_set[index] = true;
            }
            seg = &seg[17 + total..];
        }
        if !seg.is_empty() {
            return Err(JpegError::Format("DHT: trailing bytes"));
        }
        Ok(())
    }

    fn parse_sos(&mut self, seg: &[u8]) -> Result<(), JpegError> {
        let ns = usize::from(*seg.first().ok_or(JpegError::Format("SOS: empty"))?);
        if seg.len() != 4 + 2 * ns {
            return Err(JpegError::Format(
                "SOS: length does not match the component count",
            ));
        }
        if ns == 0 || ns > 4 {
            return Err(JpegError::Format("SOS: component count not in 1..=4"));
        }
        // Spectral selection and successive approximation: a baseline decode ignores them, but
        // zune refuses values out of their ranges, and so must we.
        let (ss, se, a) = (seg[1 + 2 * ns], seg[2 + 2 * ns], seg[3 + 2 * ns]);
        if ss > 63 || se > 63 || a >> 4 > 13 || a & 15 > 13 {
            return Err(JpegError::Format(
                "SOS: spectral selection or approximation out of range",
            ));
        }
        if self.unsupported.is_some() {
            return Ok(());
        }
        if ns != self.ncomp {
            self.unsupported
                .get_or_insert("several scans (non-interleaved)");
            return Ok(());
        }
        let mut used = [false; 3];
        for i in 0..ns {
            let (id, tables) = (seg[1 + 2 * i], seg[2 + 2 * i]);
            let k = (0..self.ncomp)
                .find(|&k| self.comps[k].id == id)
                .ok_or(JpegError::Format("SOS: component id not in SOF"))?;
            if used[k] {
                return Err(JpegError::Format("SOS: component listed twice"));
            }
            used[k] = true;
            let (td, ta) = (tables >> 4, tables & 15);
            if td > 3 || ta > 3 {
                return Err(JpegError::Format("SOS: Huffman table index over 3"));
            }
            self.comps[k].td = td;
            self.comps[k].ta = ta;
            self.scan[i] = k;
        }
        Ok(())
    }
}

fn parse_dqt(
    mut seg: &[u8],
    qt: &mut [[i32; 64]; 4],
    set: &mut [bool; 4],
) -> Result<(), JpegError> {
    while let Some((&info, rest)) = seg.split_first() {
        let (precision, index) = (info >> 4, usize::from(info & 15));
        if precision > 1 {
            return Err(JpegError::Format("DQT: precision over 1"));
        }
        let n = 64 << precision;
        let body = rest
            .get(..n)
            .ok_or(JpegError::Format("DQT: table runs past the segment"))?;
        if index > 3 {
            return Err(JpegError::Format("DQT: table index over 3"));
        }
        for (k, q) in qt[index].iter_mut().enumerate() {
            *q = if precision == 0 {
                i32::from(body[k])
            } else {
                i32::from(u16::from_be_bytes([body[2 * k], body[2 * k + 1]]))
            };
        }
        set[index] = true;
        seg = &rest[n..];
    }
    Ok(())
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn u8(&mut self, what: &'static str) -> Result<u8, JpegError> {
        let b = *self.bytes.get(self.pos).ok_or(JpegError::Truncated(what))?;
        self.pos += 1;
        Ok(b)
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, JpegError> {
        Ok(u16::from_be_bytes([self.u8(what)?, self.u8(what)?]))
    }

    /// A length-prefixed segment body (without the length field).
    fn segment(&mut self, what: &'static str) -> Result<&'a [u8], JpegError> {
        let len = usize::from(self.u16(what)?);
        if len < 2 {
            return Err(JpegError::Format(what));
        }
        let body = self
            .bytes
            .get(self.pos..self.pos + len - 2)
            .ok_or(JpegError::Truncated(what))?;
        self.pos += len - 2;
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::ZIGZAG;

    #[test]
    fn zigzag_starts_and_ends_right() {
        assert_eq!(&ZIGZAG[..10], &[0, 1, 8, 16, 9, 2, 3, 10, 17, 24]);
        assert_eq!(&ZIGZAG[56..], &[53, 60, 61, 54, 47, 55, 62, 63]);
        let mut seen = [false; 64];
        for &z in &ZIGZAG {
            seen[usize::from(z)] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }
}
