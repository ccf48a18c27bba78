//! The replay vector file: inputs the host prepared, and the hashes the host computed from them.
//!
//! Written by `tests/examples/make_replay.rs`, embedded in the firmware at build time
//! (`TINYVIT_VECTORS`), parsed here in place, zero-copy. Every field is little-endian and every
//! record starts 4-byte aligned.
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
//! A file that is short, misaligned, of another version, or whose record lengths disagree with
//! their contents is an error naming the record and field, never a panic.

use core::fmt;

/// The file magic.
pub const MAGIC: &[u8; 4] = b"TVRV";
/// The format version this parser reads.
pub const VERSION: u32 = 1;
/// Bytes of the file header.
const HEADER: usize = 16;
/// Bytes of a record header.
const RECORD_HEADER: usize = 48;
/// Kind flag: the source is the core's test pattern, rebuilt on the device.
pub const PATTERN: u32 = 0x100;

/// What a vector asks the device to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Replay the augmentation and hash the u8 view.
    View,
    /// Replay the augmentation, normalise, run the model, hash the logits.
    Infer,
    /// No augmentation: normalise the (model-sized) source image, run the model.
    Eval,
    /// The evaluation transform (resize the shorter side to `size / EVAL_CROP_PCT`, centre
    /// crop), then normalise and run the model: what a deployed classifier does to a frame.
    EvalView,
}

/// The `crop_pct` of [`Kind::EvalView`] (timm's default eval crop).
pub const EVAL_CROP_PCT: f32 = 0.875;

/// One replay vector, borrowing from the embedded file.
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

/// Why the vector file cannot be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VectorError {
    /// The file does not start with `TVRV`.
    Magic,
    /// Another format version.
    Version(u32),
    /// The file or a record ends before `field` of record `record` (u32::MAX: the header).
    Truncated { record: u32, field: &'static str },
    /// A field holds an impossible value.
    Field { record: u32, field: &'static str },
    /// Bytes are left after the last record.
    Trailing,
}

impl fmt::Display for VectorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VectorError::Magic => write!(f, "vector file: magic is not TVRV"),
            VectorError::Version(v) => {
                write!(f, "vector file: version {v}, this firmware reads {VERSION}")
            }
            VectorError::Truncated { record, field } if *record == u32::MAX => {
                write!(f, "vector file: truncated in the header at `{field}`")
            }
            VectorError::Truncated { record, field } => {
                write!(f, "vector file: record {record} truncated at `{field}`")
            }
            VectorError::Field { record, field } => {
                write!(f, "vector file: record {record}: bad `{field}`")
            }
            VectorError::Trailing => write!(f, "vector file: bytes after the last record"),
        }
    }
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    let lo = u32_at(b, at)?;
    let hi = u32_at(b, at + 4)?;
    Some(u64::from(lo) | (u64::from(hi) << 32))
}

fn pad4(n: usize) -> Option<usize> {
    n.checked_add(3).map(|v| v & !3)
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
            body: &bytes[HEADER..],
        })
    }

    /// Number of records the header announces.
    pub fn len(&self) -> u32 {
        self.count
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

/// Iterator over the records of a [`Vectors`].
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
        let r = record(self.rest, self.index);
        match r {
            Ok((v, len)) => {
                self.rest = &self.rest[len..];
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

fn record(b: &[u8], index: u32) -> Result<(Vector<'_>, usize), VectorError> {
    let short = |field| VectorError::Truncated {
        record: index,
        field,
    };
    let bad = |field| VectorError::Field {
        record: index,
        field,
    };
    let len = u32_at(b, 0).ok_or(short("len"))? as usize;
    if !len.is_multiple_of(4) || len < RECORD_HEADER {
        return Err(bad("len"));
    }
    let rec = b.get(..len).ok_or(short("len"))?;
    let kind_field = u32_at(rec, 4).ok_or(short("kind"))?;
    if kind_field & !(PATTERN | 0xff) != 0 {
        return Err(bad("kind"));
    }
    let pattern = kind_field & PATTERN != 0;
    let kind = match kind_field & 0xff {
        1 => Kind::View,
        2 => Kind::Infer,
        3 => Kind::Eval,
        4 => Kind::EvalView,
        _ => return Err(bad("kind")),
    };
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
    let n_pixels = (width as usize)
        .checked_mul(height as usize)
        .and_then(|n| n.checked_mul(channels as usize))
        .ok_or(bad("width"))?;
    let cfg_end = pad4(cfg_len)
        .and_then(|p| p.checked_add(RECORD_HEADER))
        .ok_or(bad("cfg_len"))?;
    let cfg = rec
        .get(RECORD_HEADER..RECORD_HEADER + cfg_len)
        .ok_or(short("cfg"))?;
    let stored = if pattern { 0 } else { n_pixels };
    let pix_end = pad4(stored)
        .and_then(|p| p.checked_add(cfg_end))
        .ok_or(bad("width"))?;
    if pix_end != len {
        return Err(bad("len"));
    }
    let pixels = rec.get(cfg_end..cfg_end + stored).ok_or(short("pixels"))?;
    Ok((
        Vector {
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
        },
        len,
    ))
}
