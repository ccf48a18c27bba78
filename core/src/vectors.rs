//! # The replay vector file (`.vec`)
//!
//! Inputs the host prepared for the device, and the hashes the host computed from them: the
//! firmware replays each vector (augmentation, evaluation transform, inference) and compares its
//! own hashes with the stored ones, bit for bit. The host writes the file
//! (`tests/examples/make_replay.rs` through [`write()`]); the firmware embeds it at build time
//! (`TINYVIT_VECTORS`) and parses it here in place, zero-copy ([`Vectors::parse`]).
//!
//! This module is the specification of the bytes and the only code that parses them. It does
//! no I/O and needs no allocator; the writer needs `std`.
//!
//! ## Layout (format version 1; every field little-endian, every record 4-byte aligned)
//!
//! ```text
//! file    +--------+---------+-------+----------+
//!         | "TVRV" | version | count | reserved |  4 x u32 (version = 1, reserved = 0)
//!         +--------+---------+-------+----------+
//!         | record 0 | record 1 | ... | record count-1 |
//!
//! record  offset  field
//!         0       u32 len             bytes of the whole record, a multiple of 4
//!         4       u32 kind            low byte: 1 = augmented view, 2 = view -> normalise ->
//!                                     inference,
//!                                     3 = source (model-sized) -> normalise -> inference,
//!                                     4 = source -> eval transform -> normalise -> inference;
//!                                     bit 8 (PATTERN): the source is `aug::test_pattern(width,
//!                                     height, channels)`, rebuilt on the device, not stored
//!         8       u32 seed            the sample's augmentation seed
//!         12      u32 width           source image
//!         16      u32 height
//!         20      u32 channels        1 or 3
//!         24      u32 cfg_len         bytes of the postcard-encoded `AugConfig`
//!         28      u32 class           expected class (kinds 2, 3), else u32::MAX
//!         32      u64 image_hash      FNV-1a 64 of the u8 image fed on (the view; kind 3: source)
//!         40      u64 logits_hash     FNV-1a 64 of the logits' f32 bits, NaNs canonical (2, 3)
//!         48      cfg_len bytes       postcard `tinyvit_core::aug::AugConfig`, zero-padded to 4
//!                                     (kind 3 uses its mean/std; kind 4 its size, interpolation,
//!                                     mean/std, with crop_pct = EVAL_CROP_PCT)
//!         ..      w*h*c bytes         source pixels, HWC, zero-padded to 4 (none with PATTERN)
//! ```
//!
//! A file that is short, of another version, or whose record lengths disagree with their
//! contents is a [`VectorError`] naming the record and field, never a panic.

use core::fmt;

/// The file magic.
pub const MAGIC: &[u8; 4] = b"TVRV";
/// The format version this code reads and writes.
pub const VERSION: u32 = 1;
/// Bytes of the file header.
pub const HEADER_LEN: usize = 16;
/// Bytes of a record header (the fixed fields before the config).
pub const RECORD_HEADER_LEN: usize = 48;
/// Kind flag: the source is the core's test pattern, rebuilt on the device.
pub const PATTERN: u32 = 0x100;
/// The `crop_pct` of [`Kind::EvalView`]: the core's one evaluation crop fraction.
pub use crate::aug::EVAL_CROP_PCT;

/// What a vector asks the device to do (the low byte of the record's `kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Replay the augmentation from the seed; compare the hash of the u8 view.
    View = 1,
    /// Replay the augmentation, normalise with the config's mean/std, run the model; compare the
    /// view hash, the logits hash and the class.
    Infer = 2,
    /// No augmentation: the source image (already the model's size) is normalised and
    /// classified; compare the logits hash and the class (the image hash is the source's).
    Eval = 3,
    /// The evaluation transform (resize the shorter side to `size / EVAL_CROP_PCT`, centre
    /// crop, the config's interpolation), then normalise and run the model: what a deployed
    /// classifier does to a frame.
    EvalView = 4,
}

impl Kind {
    /// The kind's code in the low byte of the record's `kind` field.
    pub fn code(self) -> u32 {
        self as u32
    }

    /// The kind of a code, if it is one.
    pub fn from_code(code: u32) -> Option<Self> {
        match code {
            1 => Some(Kind::View),
            2 => Some(Kind::Infer),
            3 => Some(Kind::Eval),
            4 => Some(Kind::EvalView),
            _ => None,
        }
    }
}

/// One replay vector, borrowing from the file.
#[derive(Clone, Copy, Debug)]
pub struct Vector<'a> {
    pub kind: Kind,
    pub seed: u32,
    pub width: u32,
    pub height: u32,
    pub channels: u32,
    /// postcard-encoded augmentation config.
    pub cfg: &'a [u8],
    /// Source pixels, HWC (empty when `pattern`).
    pub pixels: &'a [u8],
    /// The source is `aug::test_pattern(width, height, channels)`.
    pub pattern: bool,
    pub class: u32,
    pub image_hash: u64,
    pub logits_hash: u64,
}

/// Why bytes are not a vector file (or records cannot be written as one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VectorError {
    /// The file does not start with `TVRV`.
    Magic,
    /// Another format version.
    Version(u32),
    /// The file or a record ends before `field` of record `record` (u32::MAX: the header).
    Truncated { record: u32, field: &'static str },
    /// A field holds an impossible value (u32::MAX: the header).
    Field { record: u32, field: &'static str },
    /// Bytes are left after the last record.
    Trailing,
}

impl fmt::Display for VectorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VectorError::Magic => write!(f, "vector file: magic is not TVRV"),
            VectorError::Version(v) => {
                write!(f, "vector file: version {v}, this build reads {VERSION}")
            }
            VectorError::Truncated { record, field } if *record == u32::MAX => {
                write!(f, "vector file: truncated in the header at `{field}`")
            }
            VectorError::Truncated { record, field } => {
                write!(f, "vector file: record {record} truncated at `{field}`")
            }
            VectorError::Field { record, field } if *record == u32::MAX => {
                write!(f, "vector file: bad `{field}` in the header")
            }
            VectorError::Field { record, field } => {
                write!(f, "vector file: record {record}: bad `{field}`")
            }
            VectorError::Trailing => write!(f, "vector file: bytes after the last record"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for VectorError {}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    let lo = u32_at(b, at)?;
    let hi = u32_at(b, at.checked_add(4)?)?;
    Some(u64::from(lo) | (u64::from(hi) << 32))
}

fn pad4(n: usize) -> Option<usize> {
    n.checked_add(3).map(|v| v & !3)
}

/// Bytes of a source image's pixels, `None` on overflow.
fn pixel_len(width: u32, height: u32, channels: u32) -> Option<usize> {
    (width as usize)
        .checked_mul(height as usize)?
        .checked_mul(channels as usize)
}

/// A parsed vector file: its header is checked; records are checked as they are iterated.
#[derive(Clone, Copy, Debug)]
pub struct Vectors<'a> {
    count: u32,
    body: &'a [u8],
}

impl<'a> Vectors<'a> {
    /// Checks the header.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, VectorError> {
        let header = |field| VectorError::Truncated {
            record: u32::MAX,
            field,
        };
        if bytes.get(..4).ok_or(header("magic"))? != MAGIC {
            return Err(VectorError::Magic);
        }
        let version = u32_at(bytes, 4).ok_or(header("version"))?;
        if version != VERSION {
            return Err(VectorError::Version(version));
        }
        let count = u32_at(bytes, 8).ok_or(header("count"))?;
        u32_at(bytes, 12).ok_or(header("reserved"))?;
        Ok(Vectors {
            count,
            body: bytes.get(HEADER_LEN..).ok_or(header("reserved"))?,
        })
    }

    /// Number of records the header announces.
    pub fn len(&self) -> u32 {
        self.count
    }

    /// The header announces no records.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The records in order; the iterator yields an error (and then stops) at the first bad one.
    pub fn iter(&self) -> Iter<'a> {
        Iter {
            rest: self.body,
            index: 0,
            count: self.count,
            failed: false,
        }
    }
}

impl<'a> IntoIterator for &Vectors<'a> {
    type Item = Result<Vector<'a>, VectorError>;
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

/// Iterator over the records of a [`Vectors`].
#[derive(Clone, Debug)]
pub struct Iter<'a> {
    rest: &'a [u8],
    index: u32,
    count: u32,
    failed: bool,
}

impl<'a> Iterator for Iter<'a> {
    type Item = Result<Vector<'a>, VectorError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if self.index == self.count {
            if self.rest.is_empty() {
                return None;
            }
            self.failed = true;
            return Some(Err(VectorError::Trailing));
        }
        match record(self.rest, self.index) {
            Ok((v, rest)) => {
                self.rest = rest;
                self.index += 1;
                Some(Ok(v))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// Parses the record at the start of `b`; returns it and the bytes after it.
fn record(b: &[u8], index: u32) -> Result<(Vector<'_>, &[u8]), VectorError> {
    let short = |field| VectorError::Truncated {
        record: index,
        field,
    };
    let bad = |field| VectorError::Field {
        record: index,
        field,
    };
    let len = u32_at(b, 0).ok_or(short("len"))? as usize;
    if !len.is_multiple_of(4) || len < RECORD_HEADER_LEN {
        return Err(bad("len"));
    }
    let rec = b.get(..len).ok_or(short("len"))?;
    let kind_field = u32_at(rec, 4).ok_or(short("kind"))?;
    if kind_field & !(PATTERN | 0xff) != 0 {
        return Err(bad("kind"));
    }
    let pattern = kind_field & PATTERN != 0;
    let kind = Kind::from_code(kind_field & 0xff).ok_or(bad("kind"))?;
    let seed = u32_at(rec, 8).ok_or(short("seed"))?;
    let width = u32_at(rec, 12).ok_or(short("width"))?;
    let height = u32_at(rec, 16).ok_or(short("height"))?;
    let channels = u32_at(rec, 20).ok_or(short("channels"))?;
    let cfg_len = u32_at(rec, 24).ok_or(short("cfg_len"))? as usize;
    let class = u32_at(rec, 28).ok_or(short("class"))?;
    let image_hash = u64_at(rec, 32).ok_or(short("image_hash"))?;
    let logits_hash = u64_at(rec, 40).ok_or(short("logits_hash"))?;
    if channels != 1 && channels != 3 {
        return Err(bad("channels"));
    }
    let n_pixels = pixel_len(width, height, channels).ok_or(bad("width"))?;
    let cfg_end = pad4(cfg_len)
        .and_then(|p| p.checked_add(RECORD_HEADER_LEN))
        .ok_or(bad("cfg_len"))?;
    let cfg = RECORD_HEADER_LEN
        .checked_add(cfg_len)
        .and_then(|end| rec.get(RECORD_HEADER_LEN..end))
        .ok_or(short("cfg"))?;
    let stored = if pattern { 0 } else { n_pixels };
    let pix_end = pad4(stored)
        .and_then(|p| p.checked_add(cfg_end))
        .ok_or(bad("width"))?;
    if pix_end != len {
        return Err(bad("len"));
    }
    let pixels = cfg_end
        .checked_add(stored)
        .and_then(|end| rec.get(cfg_end..end))
        .ok_or(short("pixels"))?;
    let vector = Vector {
        kind,
        seed,
        width,
        height,
        channels,
        cfg,
        pixels,
        pattern,
        class,
        image_hash,
        logits_hash,
    };
    Ok((vector, b.get(len..).ok_or(short("len"))?))
}

/// One vector to write (the owned counterpart of [`Vector`]).
#[cfg(feature = "std")]
#[derive(Clone, Debug)]
pub struct Record {
    pub kind: Kind,
    pub seed: u32,
    pub width: u32,
    pub height: u32,
    pub channels: u32,
    pub cfg: crate::aug::AugConfig,
    /// Source pixels, HWC u8, `width * height * channels` bytes (not written when `pattern`).
    pub pixels: std::vec::Vec<u8>,
    /// The source is `aug::test_pattern(width, height, channels)`: the device rebuilds it, so
    /// the pixels are not stored.
    pub pattern: bool,
    /// Expected class (u32::MAX for [`Kind::View`]).
    pub class: u32,
    /// FNV-1a 64 of the u8 image the device feeds on (the view, or the source for `Eval`).
    pub image_hash: u64,
    /// FNV-1a 64 of the expected logits' f32 bits, NaNs canonical (0 for [`Kind::View`]).
    pub logits_hash: u64,
}

/// Serialises records into a vector file. Records the parser would refuse (channels other than
/// 1 or 3, pixels that do not match the size, lengths beyond u32) are an error naming the
/// record and field.
#[cfg(feature = "std")]
pub fn write(records: &[Record]) -> Result<std::vec::Vec<u8>, VectorError> {
    use std::vec::Vec;

    fn put_pad4(v: &mut Vec<u8>) {
        while !v.len().is_multiple_of(4) {
            v.push(0);
        }
    }
    let as_u32 = |n: usize, record: u32, field| {
        u32::try_from(n).map_err(|_| VectorError::Field { record, field })
    };
    let count = as_u32(records.len(), u32::MAX, "count")?;
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    for (i, r) in (0u32..).zip(records) {
        let bad = |field| VectorError::Field { record: i, field };
        if r.channels != 1 && r.channels != 3 {
            return Err(bad("channels"));
        }
        let n_pixels = pixel_len(r.width, r.height, r.channels).ok_or(bad("width"))?;
        if !r.pattern && r.pixels.len() != n_pixels {
            return Err(bad("pixels"));
        }
        let cfg = postcard::to_allocvec(&r.cfg).map_err(|_| bad("cfg"))?;
        let mut body = Vec::new();
        let flags = if r.pattern { PATTERN } else { 0 };
        body.extend_from_slice(&(r.kind.code() | flags).to_le_bytes());
        for v in [
            r.seed,
            r.width,
            r.height,
            r.channels,
            as_u32(cfg.len(), i, "cfg_len")?,
            r.class,
        ] {
            body.extend_from_slice(&v.to_le_bytes());
        }
        body.extend_from_slice(&r.image_hash.to_le_bytes());
        body.extend_from_slice(&r.logits_hash.to_le_bytes());
        body.extend_from_slice(&cfg);
        put_pad4(&mut body);
        if !r.pattern {
            body.extend_from_slice(&r.pixels);
            put_pad4(&mut body);
        }
        let len = as_u32(body.len() + 4, i, "len")?;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&body);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aug::{self, AugConfig};
    use crate::params::splitmix64;
    use std::vec::Vec;

    fn records() -> Vec<Record> {
        let mut light = aug::preset("light").unwrap();
        light.size = 24;
        vec![
            Record {
                kind: Kind::View,
                seed: 7,
                width: 5,
                height: 3,
                channels: 3,
                cfg: light,
                pixels: (0..45).map(|v| v as u8).collect(),
                pattern: false,
                class: u32::MAX,
                image_hash: 0x0123_4567_89ab_cdef,
                logits_hash: 0,
            },
            Record {
                kind: Kind::Infer,
                seed: u32::MAX,
                width: 61,
                height: 47,
                channels: 3,
                cfg: aug::preset("in22k-distill").unwrap(),
                pixels: Vec::new(),
                pattern: true,
                class: 9,
                image_hash: 1,
                logits_hash: u64::MAX,
            },
            Record {
                kind: Kind::EvalView,
                seed: 0,
                width: 3,
                height: 1,
                channels: 1,
                cfg: light,
                pixels: vec![1, 2, 3],
                pattern: false,
                class: 4,
                image_hash: 2,
                logits_hash: 3,
            },
        ]
    }

    /// Parses and walks every record; returns how many parsed before the first error.
    fn walk(bytes: &[u8]) -> Result<usize, VectorError> {
        let v = Vectors::parse(bytes)?;
        let mut n = 0;
        for r in &v {
            r?;
            n += 1;
        }
        Ok(n)
    }

    #[test]
    fn round_trip() {
        let recs = records();
        let bytes = write(&recs).unwrap();
        let parsed = Vectors::parse(&bytes).unwrap();
        assert_eq!(parsed.len(), 3);
        assert!(!parsed.is_empty());
        let got: Vec<_> = parsed.iter().map(|r| r.unwrap()).collect();
        assert_eq!(got.len(), 3);
        for (r, g) in recs.iter().zip(&got) {
            assert_eq!(g.kind, r.kind);
            assert_eq!(
                (g.seed, g.width, g.height, g.channels),
                (r.seed, r.width, r.height, r.channels)
            );
            assert_eq!(
                (g.class, g.image_hash, g.logits_hash),
                (r.class, r.image_hash, r.logits_hash)
            );
            assert_eq!(g.pattern, r.pattern);
            assert_eq!(g.pixels, if r.pattern { &[][..] } else { &r.pixels[..] });
            let cfg: AugConfig = postcard::from_bytes(g.cfg).unwrap();
            assert_eq!(cfg, r.cfg);
        }
        let empty = write(&[]).unwrap();
        assert_eq!(empty.len(), HEADER_LEN);
        assert!(Vectors::parse(&empty).unwrap().is_empty());
        assert_eq!(walk(&empty), Ok(0));
    }

    #[test]
    fn pins_the_bytes_of_a_record() {
        // A pattern record: header fields, the config, no pixels. Any change here changes the
        // files the firmware embeds.
        let mut r = records().swap_remove(1);
        r.cfg = aug::preset("light").unwrap();
        let cfg = postcard::to_allocvec(&r.cfg).unwrap();
        let b = write(&[r]).unwrap();
        assert_eq!(&b[..16], b"TVRV\x01\0\0\0\x01\0\0\0\0\0\0\0");
        let len = RECORD_HEADER_LEN + cfg.len().div_ceil(4) * 4;
        assert_eq!(b.len(), HEADER_LEN + len);
        let words: Vec<u32> = b[16..48]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(
            words,
            [len as u32, 0x102, u32::MAX, 61, 47, 3, cfg.len() as u32, 9]
        );
        assert_eq!(&b[48..56], &1u64.to_le_bytes());
        assert_eq!(&b[56..64], &u64::MAX.to_le_bytes());
        assert_eq!(&b[64..64 + cfg.len()], &cfg[..]);
        assert!(b[64 + cfg.len()..].iter().all(|&x| x == 0));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = write(&records()).unwrap();
        assert_eq!(walk(&bytes), Ok(3));
        for len in 0..bytes.len() {
            assert!(
                walk(&bytes[..len]).is_err(),
                "prefix of {len} bytes accepted"
            );
        }
        assert_eq!(
            walk(&bytes[..10]),
            Err(VectorError::Truncated {
                record: u32::MAX,
                field: "count"
            })
        );
        assert_eq!(
            walk(&bytes[..HEADER_LEN + 2]),
            Err(VectorError::Truncated {
                record: 0,
                field: "len"
            })
        );
        let mut longer = bytes.clone();
        longer.extend_from_slice(&[0; 4]);
        assert_eq!(walk(&longer), Err(VectorError::Trailing));
    }

    #[test]
    fn corrupt_fields_are_named() {
        let bytes = write(&records()).unwrap();
        let at = |b: &mut Vec<u8>, off: usize, v: u32| {
            b[HEADER_LEN + off..HEADER_LEN + off + 4].copy_from_slice(&v.to_le_bytes())
        };
        let bad = |field| Err(VectorError::Field { record: 0, field });
        let mut b = bytes.clone();
        b[4] = 2;
        assert_eq!(walk(&b), Err(VectorError::Version(2)));
        b = bytes.clone();
        b[0] = b'X';
        assert_eq!(walk(&b), Err(VectorError::Magic));
        for (off, v, field) in [
            (0, 50, "len"),      // not a multiple of 4
            (0, 44, "len"),      // shorter than a record header
            (0, 4, "len"),       // shorter than a record header
            (4, 5, "kind"),      // no such kind
            (4, 0x201, "kind"),  // an unknown flag
            (20, 2, "channels"), // neither grey nor RGB
            (12, 6, "len"),      // more pixels than the record holds
            (24, 12, "len"),     // a config length the record disagrees with
        ] {
            let mut b = bytes.clone();
            at(&mut b, off, v);
            assert_eq!(walk(&b), bad(field), "offset {off} = {v}");
        }
        // A config or an image larger than any file: refused without overflow.
        let mut b = bytes.clone();
        at(&mut b, 24, u32::MAX);
        assert!(walk(&b).is_err());
        let mut b = bytes.clone();
        at(&mut b, 12, u32::MAX);
        at(&mut b, 16, u32::MAX);
        assert!(walk(&b).is_err());
        // A record length beyond the file.
        let mut b = bytes.clone();
        at(&mut b, 0, 1 << 20);
        assert_eq!(
            walk(&b),
            Err(VectorError::Truncated {
                record: 0,
                field: "len"
            })
        );
        // The count promises more records than the file holds.
        let mut b = bytes.clone();
        b[8] = 4;
        assert_eq!(
            walk(&b),
            Err(VectorError::Truncated {
                record: 3,
                field: "len"
            })
        );
    }

    #[test]
    fn flipped_and_random_bytes_never_panic() {
        let bytes = write(&records()).unwrap();
        for i in 0..bytes.len() {
            for bit in [0x01u8, 0x80] {
                let mut b = bytes.clone();
                b[i] ^= bit;
                let _ = walk(&b);
            }
        }
        let mut s = 5u64;
        for len in [0usize, 3, 16, 17, 64, 65, 500] {
            for _ in 0..200 {
                let mut b: Vec<u8> = (0..len).map(|_| splitmix64(&mut s) as u8).collect();
                if b.len() >= 16 {
                    b[..4].copy_from_slice(MAGIC);
                    b[4..8].copy_from_slice(&VERSION.to_le_bytes());
                }
                let _ = walk(&b);
            }
        }
    }

    #[test]
    fn writer_refuses_what_the_parser_would() {
        let field = |record, field| Err(VectorError::Field { record, field });
        let mut r = records();
        r[2].channels = 2;
        assert_eq!(write(&r), field(2, "channels"));
        let mut r = records();
        r[0].pixels.pop();
        assert_eq!(write(&r), field(0, "pixels"));
        // A pattern record's pixels are not stored, whatever they hold.
        let mut r = records();
        r[1].pixels = vec![1; 5];
        assert_eq!(write(&r), write(&records()));
    }

    #[test]
    fn kind_codes() {
        for k in [Kind::View, Kind::Infer, Kind::Eval, Kind::EvalView] {
            assert_eq!(Kind::from_code(k.code()), Some(k));
        }
        assert_eq!(Kind::from_code(0), None);
        assert_eq!(Kind::from_code(5), None);
    }
}
