//! # The sparse logit store: the on-disk format
//!
//! A teacher runs once over `E` epochs of augmented data; for every `(epoch, sample)` the store
//! keeps the teacher's top-K probabilities and the one seed that replays the augmentation the
//! teacher saw. This module is the specification of the bytes and the only code that parses
//! them; it does no I/O, needs no allocator and never panics on bad bytes (every parser returns
//! a [`StoreError`]).
//!
//! ## A store is a folder
//!
//! ```text
//! DIR/
//!   manifest.json                     what the records mean (JSON; `tinyvit_host::store::manifest`)
//!   epoch-0000/
//!     part-0000-of-0001.tvl           one shard file per (epoch, part)
//!   epoch-0001/
//!     part-0000-of-0001.tvl
//!   ...
//! ```
//!
//! The manifest is JSON, written and parsed on the host (it never reaches a device); this
//! module specifies and parses the shard files. `--shard I/N` writes part `I` of `N`. The
//! sample range `0..len` is cut on block boundaries: with `B = ceil(ceil(len / R) / N)` blocks
//! a part (`R` = records per block), part `I` holds
//! samples `min(I*B*R, len) .. min((I+1)*B*R, len)` ([`part_range`]). Cutting on blocks makes a
//! part's blocks byte-identical, checksums included, to the same blocks of an unsharded store.
//! Files being written carry the suffix `.tmp` and are renamed when closed.
//!
//! ## Shard file
//!
//! All integers little-endian. Records have a fixed size and sit in sample order, so record
//! `(epoch, i)` is one multiplication away: no key file, no index to scan.
//!
//! ```text
//! offset 0        +-----------------------------------------------+
//!                 | header, 80 bytes (ShardHeader)                |
//! 80              +-----------------------------------------------+
//!                 | block 0: R records  | crc32 (4)               |
//! 80 + S          +-----------------------------------------------+
//!                 | block 1: R records  | crc32 (4)               |
//!                 +-----------------------------------------------+
//!                 | ...                                           |
//!                 | last block: 1..=R records | crc32 (4)         |
//! file_len - 32   +-----------------------------------------------+
//!                 | footer, 32 bytes (ShardFooter)                |
//! file_len        +-----------------------------------------------+
//!
//!   S (block stride) = R * record_len + 4
//!   offset of sample i = 80 + (j / R) * S + (j % R) * record_len,   j = i - first_sample
//!   file_len = 80 + count * record_len + ceil(count / R) * 4 + 32
//! ```
//!
//! Header (80 bytes):
//!
//! ```text
//!  0  [u8; 8]  magic "TVLSHARD"
//!  8  u16      format version (FORMAT_VERSION = 2)
//! 10  u16      header length (80)
//! 12  u8       value encoding: 0 = f16, 1 = sqrt8 (see ValueEncoding)
//! 13  u8       index width in bytes: 2 when classes <= 65535, else 4
//!              (crate::softlabel::index_width)
//! 14  u16      K (top-K kept per record), 1 <= K <= classes
//! 16  u32      number of classes C >= 1
//! 20  u32      records per block R, 1 ..= 1 << 20
//! 24  u32      epoch
//! 28  u32      part I
//! 32  u32      parts N (I < N)
//! 36  u32      reserved, 0
//! 40  u64      dataset length (samples in the whole epoch)
//! 48  u64      first sample of this part
//! 56  u64      samples in this part (must equal part_range(...))
//! 64  u64      store key: ties the file to its manifest (the host derives it from the
//!              manifest, `parts` and `epochs` excluded, so that sharding a store or
//!              extending it by more epochs leaves every block's bytes as they are; the
//!              format only compares it)
//! 72  u32      reserved, 0
//! 76  u32      crc32 (IEEE) of bytes 0..76
//! ```
//!
//! Record (`4 + K * (index width + value width)` bytes; 44 bytes at K = 10, f16, as the
//! reference's `int32 seed + K int16 + K float16`):
//!
//! ```text
//!  u32                seed that replays the augmentation of this (epoch, sample)
//!  [u16 or u32; K]    class indices, in the teacher's top-K order (largest first)
//!  [f16 or u8; K]     probabilities (softmax of the teacher output), same order
//! ```
//!
//! A *missing* record (an image that could not be decoded, skipped on request) keeps its seed,
//! has every index byte `0xFF` (an index equal to the width's maximum is never a class) and every
//! value byte `0`. It takes its normal slot, so no other record moves.
//!
//! Block checksum: crc32 (IEEE) over `store_key u64 ++ epoch u32 ++ first sample of the block u64
//! ++ the block's record bytes`. Mixing in the position means a block copied to the wrong place,
//! epoch or store fails its check.
//!
//! Footer (32 bytes), written last, before the file is renamed into place:
//!
//! ```text
//!  0  [u8; 8]  magic "TVLCLOSE"
//!  8  u64      records written (must equal the header's sample count)
//! 16  u64      missing records
//! 24  u32      crc32 over the 4-byte block checksums, in block order
//! 28  u32      crc32 of bytes 0..28
//! ```
//!
//! Overhead over the bare records is `112 + 4 * ceil(count / R)` bytes a file: with the default
//! `R = 1024` at K = 10 that is 0.009% of a full block plus 112 bytes per file.
//!
//! ## Value encodings
//!
//! The codes are [`crate::softlabel`]'s; this module only picks one per store and places the
//! bytes. Both round to nearest, ties to even.
//!
//! - [`ValueEncoding::F16`]: IEEE binary16 ([`softlabel::encode_f16`], the reference's choice).
//! - [`ValueEncoding::Sqrt8`]: one byte, square-root companded ([`softlabel::encode_u8`]):
//!   `q = round(255 * sqrt(p))`, `p = (q / 255)^2`. The smallest non-zero value is 1.5e-5 and
//!   the absolute error is below `sqrt(p) / 255 + 4e-6`, so small probabilities keep a few
//!   percent of relative precision where a linear byte would round them to zero. Decoding is a
//!   256-entry table, bit-exact everywhere.
//!
//! ## Versions
//!
//! - 2: 8-bit values round ties to even (the core's one rounding rule).
//! - 1: 8-bit values rounded ties up. Only a value whose `255 * sqrt(p)` is exactly `n + 0.5`
//!   differs, but this build refuses version 1 files ([`StoreError::UnsupportedVersion`]) rather
//!   than mix two rules in one store: write the store again.

use core::fmt;

use serde::{Deserialize, Serialize};

use crate::softlabel::{self, IndexWidth};

/// Version of the shard file layout described in this module.
pub const FORMAT_VERSION: u16 = 2;
/// First 8 bytes of every shard file.
pub const HEADER_MAGIC: [u8; 8] = *b"TVLSHARD";
/// First 8 bytes of every shard footer.
pub const FOOTER_MAGIC: [u8; 8] = *b"TVLCLOSE";
/// Bytes in a shard header.
pub const HEADER_LEN: usize = 80;
/// Bytes in a shard footer.
pub const FOOTER_LEN: usize = 32;
/// Bytes of checksum after each block.
pub const BLOCK_TRAILER_LEN: usize = 4;
/// Records per block unless the writer is told otherwise.
pub const DEFAULT_RECORDS_PER_BLOCK: u32 = 1024;
/// Largest records-per-block value a header may carry.
pub const MAX_RECORDS_PER_BLOCK: u32 = 1 << 20;

/// Why bytes are not a valid store file, record or value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreError {
    /// Fewer bytes than the structure needs.
    TooShort {
        what: &'static str,
        need: u64,
        got: u64,
    },
    /// The magic bytes are wrong: this is not that kind of structure.
    BadMagic { what: &'static str },
    /// A format version this build cannot read.
    UnsupportedVersion { found: u16 },
    /// The crc32 of a header or footer does not match its bytes.
    Checksum { what: &'static str },
    /// A field holds a value that is impossible (named).
    Invalid { field: &'static str },
    /// A length differs from what the header implies.
    Length {
        what: &'static str,
        expected: u64,
        got: u64,
    },
    /// A class index is not below the number of classes.
    IndexOutOfRange { k: usize, index: u32, classes: u32 },
    /// A probability handed to the encoder is not finite or not in [0, 1].
    ProbabilityOutOfRange { k: usize },
    /// A record is half missing (some sentinel indices, some real ones, or non-zero values).
    MixedMissing,
    /// A block's records do not match its checksum.
    BlockChecksum {
        block: u64,
        first_sample: u64,
        records: u64,
    },
    /// A sample index outside the range a shard holds.
    SampleOutOfRange { sample: u64, first: u64, end: u64 },
    /// The footer disagrees with the header or the blocks (field named).
    FooterMismatch { field: &'static str },
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            StoreError::TooShort { what, need, got } => {
                write!(f, "{what}: need {need} bytes, got {got} (truncated?)")
            }
            StoreError::BadMagic { what } => write!(f, "{what}: bad magic bytes"),
            StoreError::UnsupportedVersion { found } => write!(
                f,
                "shard format version {found}, this build reads version {FORMAT_VERSION} only \
                 (version 2 rounds 8-bit values ties to even); write the store again with this build"
            ),
            StoreError::Checksum { what } => write!(f, "{what}: checksum mismatch"),
            StoreError::Invalid { field } => write!(f, "invalid value in field `{field}`"),
            StoreError::Length {
                what,
                expected,
                got,
            } => write!(f, "{what}: expected {expected} bytes, got {got}"),
            StoreError::IndexOutOfRange { k, index, classes } => write!(
                f,
                "class index {index} at top-{k} position is not below the class count {classes}"
            ),
            StoreError::ProbabilityOutOfRange { k } => {
                write!(
                    f,
                    "probability at top-K position {k} is not finite or not in [0, 1]"
                )
            }
            StoreError::MixedMissing => {
                write!(f, "record is partly marked missing (corrupt record)")
            }
            StoreError::BlockChecksum {
                block,
                first_sample,
                records,
            } => write!(
                f,
                "block {block} (samples {first_sample}..{}) fails its checksum",
                first_sample + records
            ),
            StoreError::SampleOutOfRange { sample, first, end } => {
                write!(
                    f,
                    "sample {sample} is not in this shard's range {first}..{end}"
                )
            }
            StoreError::FooterMismatch { field } => {
                write!(f, "footer field `{field}` disagrees with the shard")
            }
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for StoreError {}

/// How the K probabilities of a record are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueEncoding {
    /// IEEE binary16, 2 bytes a value.
    F16,
    /// Square-root companded byte: `p = (q / 255)^2`, 1 byte a value.
    Sqrt8,
}

impl ValueEncoding {
    /// Bytes a value.
    pub const fn width(self) -> usize {
        match self {
            ValueEncoding::F16 => 2,
            ValueEncoding::Sqrt8 => 1,
        }
    }

    /// The header code of this encoding.
    pub const fn code(self) -> u8 {
        match self {
            ValueEncoding::F16 => 0,
            ValueEncoding::Sqrt8 => 1,
        }
    }

    /// The encoding of a header code.
    pub fn from_code(code: u8) -> Result<Self, StoreError> {
        match code {
            0 => Ok(ValueEncoding::F16),
            1 => Ok(ValueEncoding::Sqrt8),
            _ => Err(StoreError::Invalid {
                field: "value_encoding",
            }),
        }
    }

    /// The value bits as the command line spells them (16 or 8).
    pub const fn bits(self) -> u32 {
        match self {
            ValueEncoding::F16 => 16,
            ValueEncoding::Sqrt8 => 8,
        }
    }
}

/// What one record holds and how wide it is: the part of a header that fixes the record bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RecordLayout {
    topk: u16,
    num_classes: u32,
    values: ValueEncoding,
}

impl RecordLayout {
    /// A layout for `topk` of `num_classes` classes; `1 <= topk <= num_classes`.
    pub fn new(topk: u16, num_classes: u32, values: ValueEncoding) -> Result<Self, StoreError> {
        if num_classes == 0 {
            return Err(StoreError::Invalid {
                field: "num_classes",
            });
        }
        if topk == 0 || u32::from(topk) > num_classes {
            return Err(StoreError::Invalid { field: "topk" });
        }
        Ok(Self {
            topk,
            num_classes,
            values,
        })
    }

    /// K, the probabilities kept per record.
    pub fn topk(&self) -> usize {
        usize::from(self.topk)
    }

    /// The number of classes C of the teacher.
    pub fn num_classes(&self) -> u32 {
        self.num_classes
    }

    /// The value encoding.
    pub fn values(&self) -> ValueEncoding {
        self.values
    }

    /// Bytes a class index ([`softlabel::index_width`]).
    pub fn index_width(&self) -> usize {
        self.width().bytes()
    }

    fn width(&self) -> IndexWidth {
        softlabel::index_width(self.num_classes)
    }

    /// Bytes a record: `4 + K * (index width + value width)`.
    pub fn record_len(&self) -> usize {
        4 + self.topk() * (self.index_width() + self.values.width())
    }

    fn sentinel(&self) -> u32 {
        self.width().sentinel()
    }

    /// Writes one record. `indices` and `probs` hold K entries each (top-K order); `out` is
    /// exactly [`record_len`](Self::record_len) bytes.
    pub fn encode(
        &self,
        seed: u32,
        indices: &[u32],
        probs: &[f32],
        out: &mut [u8],
    ) -> Result<(), StoreError> {
        let k = self.topk();
        self.check_out(out)?;
        if indices.len() != k {
            return Err(StoreError::Length {
                what: "record indices",
                expected: k as u64,
                got: indices.len() as u64,
            });
        }
        if probs.len() != k {
            return Err(StoreError::Length {
                what: "record probabilities",
                expected: k as u64,
                got: probs.len() as u64,
            });
        }
        for (j, &p) in probs.iter().enumerate() {
            // NaN fails both comparisons.
            if !(0.0..=1.001).contains(&p) {
                return Err(StoreError::ProbabilityOutOfRange { k: j });
            }
        }
        for (j, &index) in indices.iter().enumerate() {
            if index >= self.num_classes {
                return Err(StoreError::IndexOutOfRange {
                    k: j,
                    index,
                    classes: self.num_classes,
                });
            }
        }
        out[..4].copy_from_slice(&seed.to_le_bytes());
        let iw = self.index_width();
        let (idx_bytes, val_bytes) = out[4..].split_at_mut(k * iw);
        for (j, &index) in indices.iter().enumerate() {
            if iw == 2 {
                idx_bytes[2 * j..2 * j + 2].copy_from_slice(&(index as u16).to_le_bytes());
            } else {
                idx_bytes[4 * j..4 * j + 4].copy_from_slice(&index.to_le_bytes());
            }
        }
        for (j, &p) in probs.iter().enumerate() {
            match self.values {
                ValueEncoding::F16 => val_bytes[2 * j..2 * j + 2]
                    .copy_from_slice(&softlabel::encode_f16(p).to_le_bytes()),
                ValueEncoding::Sqrt8 => val_bytes[j] = softlabel::encode_u8(p),
            }
        }
        Ok(())
    }

    /// Writes a missing record that keeps `seed` (see the module doc).
    pub fn encode_missing(&self, seed: u32, out: &mut [u8]) -> Result<(), StoreError> {
        self.check_out(out)?;
        out[..4].copy_from_slice(&seed.to_le_bytes());
        let idx_end = 4 + self.topk() * self.index_width();
        out[4..idx_end].fill(0xFF);
        out[idx_end..].fill(0);
        Ok(())
    }

    fn check_out(&self, out: &[u8]) -> Result<(), StoreError> {
        if out.len() != self.record_len() {
            return Err(StoreError::Length {
                what: "record buffer",
                expected: self.record_len() as u64,
                got: out.len() as u64,
            });
        }
        Ok(())
    }

    /// A checked, zero-copy view of one record's bytes: every index is below the class count,
    /// or the record is a well-formed missing record.
    pub fn view<'a>(&self, bytes: &'a [u8]) -> Result<RecordView<'a>, StoreError> {
        if bytes.len() != self.record_len() {
            return Err(StoreError::Length {
                what: "record",
                expected: self.record_len() as u64,
                got: bytes.len() as u64,
            });
        }
        let view = RecordView {
            layout: *self,
            bytes,
        };
        let sentinel = self.sentinel();
        let mut missing = 0usize;
        for j in 0..self.topk() {
            let index = view.index(j);
            if index == sentinel {
                missing += 1;
            } else if index >= self.num_classes {
                return Err(StoreError::IndexOutOfRange {
                    k: j,
                    index,
                    classes: self.num_classes,
                });
            }
        }
        if missing != 0 {
            let idx_end = 4 + self.topk() * self.index_width();
            if missing != self.topk() || bytes[idx_end..].iter().any(|&b| b != 0) {
                return Err(StoreError::MixedMissing);
            }
        }
        Ok(view)
    }
}

/// One record, borrowed from a shard's bytes; built by [`RecordLayout::view`], which has
/// checked its indices.
#[derive(Clone, Copy, Debug)]
pub struct RecordView<'a> {
    layout: RecordLayout,
    bytes: &'a [u8],
}

impl<'a> RecordView<'a> {
    /// The seed that replays this record's augmentation.
    pub fn seed(&self) -> u32 {
        u32::from_le_bytes([self.bytes[0], self.bytes[1], self.bytes[2], self.bytes[3]])
    }

    /// K.
    pub fn topk(&self) -> usize {
        self.layout.topk()
    }

    /// True when the image of this record could not be read and was skipped.
    pub fn is_missing(&self) -> bool {
        self.index(0) == self.layout.sentinel()
    }

    /// Class index at top-K position `k` (`k < K`; larger `k` reads as the sentinel).
    pub fn index(&self, k: usize) -> u32 {
        if k >= self.topk() {
            return self.layout.sentinel();
        }
        let b = self.bytes;
        if self.layout.index_width() == 2 {
            let o = 4 + 2 * k;
            u32::from(u16::from_le_bytes([b[o], b[o + 1]]))
        } else {
            let o = 4 + 4 * k;
            u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
        }
    }

    /// Probability at top-K position `k` (`k < K`; larger `k` reads as 0).
    pub fn prob(&self, k: usize) -> f32 {
        if k >= self.topk() {
            return 0.0;
        }
        let o = 4 + self.topk() * self.layout.index_width();
        match self.layout.values {
            ValueEncoding::F16 => {
                let o = o + 2 * k;
                softlabel::decode_f16(u16::from_le_bytes([self.bytes[o], self.bytes[o + 1]]))
            }
            ValueEncoding::Sqrt8 => softlabel::decode_u8(self.bytes[o + k]),
        }
    }

    /// Copies the K indices and probabilities out. Both slices must hold at least K entries;
    /// only the first K are written. Returns K.
    pub fn read_into(&self, indices: &mut [u32], probs: &mut [f32]) -> Result<usize, StoreError> {
        let k = self.topk();
        if indices.len() < k || probs.len() < k {
            return Err(StoreError::Length {
                what: "output slices",
                expected: k as u64,
                got: indices.len().min(probs.len()) as u64,
            });
        }
        for j in 0..k {
            indices[j] = self.index(j);
            probs[j] = self.prob(j);
        }
        Ok(k)
    }

    /// The raw record bytes.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }
}

/// The samples part `part` of `parts` holds, cut on block boundaries (see the module doc).
/// Returns `None` when `parts == 0`, `part >= parts` or `records_per_block == 0`.
pub fn part_range(
    dataset_len: u64,
    parts: u32,
    part: u32,
    records_per_block: u32,
) -> Option<core::ops::Range<u64>> {
    if parts == 0 || part >= parts || records_per_block == 0 {
        return None;
    }
    let span = part_span(dataset_len, parts, records_per_block);
    let start = u64::from(part).saturating_mul(span).min(dataset_len);
    let end = u64::from(part)
        .saturating_add(1)
        .saturating_mul(span)
        .min(dataset_len);
    Some(start..end)
}

/// Samples each part spans (a whole number of blocks, at least one block).
fn part_span(dataset_len: u64, parts: u32, records_per_block: u32) -> u64 {
    let r = u64::from(records_per_block);
    let blocks = dataset_len.div_ceil(r);
    let per_part = blocks.div_ceil(u64::from(parts)).max(1);
    per_part.saturating_mul(r)
}

/// The part that holds `sample`, or `None` when `sample >= dataset_len` or the arguments are
/// invalid (as for [`part_range`]).
pub fn part_of(sample: u64, dataset_len: u64, parts: u32, records_per_block: u32) -> Option<u32> {
    if parts == 0 || records_per_block == 0 || sample >= dataset_len {
        return None;
    }
    let p = sample / part_span(dataset_len, parts, records_per_block);
    u32::try_from(p).ok().filter(|&p| p < parts)
}

/// The checksum of one block (see the module doc).
pub fn block_checksum(store_key: u64, epoch: u32, first_sample: u64, records: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&store_key.to_le_bytes());
    h.update(&epoch.to_le_bytes());
    h.update(&first_sample.to_le_bytes());
    h.update(records);
    h.finalize()
}

/// Where one block sits in a shard file and what it covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockSpan {
    /// Block number inside the shard.
    pub block: u64,
    /// Byte offset of its first record in the file.
    pub offset: u64,
    /// Records in the block.
    pub records: u64,
    /// Global sample index of its first record.
    pub first_sample: u64,
    /// Bytes of records (the 4-byte checksum follows them).
    pub len: u64,
}

/// The header of a shard file: everything needed to find any record in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardHeader {
    /// Record layout (K, classes, value encoding).
    pub layout: RecordLayout,
    /// Records per checksummed block.
    pub records_per_block: u32,
    /// Epoch of the records.
    pub epoch: u32,
    /// Part number of this file.
    pub part: u32,
    /// Number of parts the epoch is cut into.
    pub parts: u32,
    /// Samples in the whole epoch.
    pub dataset_len: u64,
    /// Global index of the first sample of this part.
    pub first_sample: u64,
    /// Samples in this part.
    pub sample_count: u64,
    /// Ties the file to its manifest.
    pub store_key: u64,
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}

impl ShardHeader {
    /// A header for part `part` of `parts` of an epoch of `dataset_len` samples; the sample
    /// range is [`part_range`]. Checks every field and that the file size fits in `u64`.
    pub fn new(
        layout: RecordLayout,
        records_per_block: u32,
        epoch: u32,
        part: u32,
        parts: u32,
        dataset_len: u64,
        store_key: u64,
    ) -> Result<Self, StoreError> {
        if records_per_block == 0 || records_per_block > MAX_RECORDS_PER_BLOCK {
            return Err(StoreError::Invalid {
                field: "records_per_block",
            });
        }
        let range = part_range(dataset_len, parts, part, records_per_block)
            .ok_or(StoreError::Invalid { field: "part" })?;
        let h = Self {
            layout,
            records_per_block,
            epoch,
            part,
            parts,
            dataset_len,
            first_sample: range.start,
            sample_count: range.end - range.start,
            store_key,
        };
        h.checked_file_len().ok_or(StoreError::Invalid {
            field: "sample_count",
        })?;
        Ok(h)
    }

    /// The 80 header bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&HEADER_MAGIC);
        b[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[10..12].copy_from_slice(&(HEADER_LEN as u16).to_le_bytes());
        b[12] = self.layout.values.code();
        b[13] = self.layout.index_width() as u8;
        b[14..16].copy_from_slice(&self.layout.topk.to_le_bytes());
        b[16..20].copy_from_slice(&self.layout.num_classes.to_le_bytes());
        b[20..24].copy_from_slice(&self.records_per_block.to_le_bytes());
        b[24..28].copy_from_slice(&self.epoch.to_le_bytes());
        b[28..32].copy_from_slice(&self.part.to_le_bytes());
        b[32..36].copy_from_slice(&self.parts.to_le_bytes());
        b[40..48].copy_from_slice(&self.dataset_len.to_le_bytes());
        b[48..56].copy_from_slice(&self.first_sample.to_le_bytes());
        b[56..64].copy_from_slice(&self.sample_count.to_le_bytes());
        b[64..72].copy_from_slice(&self.store_key.to_le_bytes());
        let crc = crc32fast::hash(&b[..76]);
        b[76..80].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parses and checks a header from the first [`HEADER_LEN`] bytes of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        if bytes.len() < HEADER_LEN {
            return Err(StoreError::TooShort {
                what: "shard header",
                need: HEADER_LEN as u64,
                got: bytes.len() as u64,
            });
        }
        let b = &bytes[..HEADER_LEN];
        if b[0..8] != HEADER_MAGIC {
            return Err(StoreError::BadMagic {
                what: "shard header",
            });
        }
        let version = u16_at(b, 8);
        if version != FORMAT_VERSION {
            return Err(StoreError::UnsupportedVersion { found: version });
        }
        if usize::from(u16_at(b, 10)) != HEADER_LEN {
            return Err(StoreError::Invalid {
                field: "header_len",
            });
        }
        if crc32fast::hash(&b[..76]) != u32_at(b, 76) {
            return Err(StoreError::Checksum {
                what: "shard header",
            });
        }
        let values = ValueEncoding::from_code(b[12])?;
        let layout = RecordLayout::new(u16_at(b, 14), u32_at(b, 16), values)?;
        if usize::from(b[13]) != layout.index_width() {
            return Err(StoreError::Invalid {
                field: "index_width",
            });
        }
        if u32_at(b, 36) != 0 || u32_at(b, 72) != 0 {
            return Err(StoreError::Invalid { field: "reserved" });
        }
        let h = Self::new(
            layout,
            u32_at(b, 20),
            u32_at(b, 24),
            u32_at(b, 28),
            u32_at(b, 32),
            u64_at(b, 40),
            u64_at(b, 64),
        )?;
        if h.first_sample != u64_at(b, 48) {
            return Err(StoreError::Invalid {
                field: "first_sample",
            });
        }
        if h.sample_count != u64_at(b, 56) {
            return Err(StoreError::Invalid {
                field: "sample_count",
            });
        }
        Ok(h)
    }

    /// Bytes a record.
    pub fn record_len(&self) -> u64 {
        self.layout.record_len() as u64
    }

    /// Blocks in the file.
    pub fn block_count(&self) -> u64 {
        self.sample_count
            .div_ceil(u64::from(self.records_per_block))
    }

    /// Bytes from one block's start to the next one's.
    pub fn block_stride(&self) -> u64 {
        u64::from(self.records_per_block) * self.record_len() + BLOCK_TRAILER_LEN as u64
    }

    fn checked_file_len(&self) -> Option<u64> {
        let records = self.sample_count.checked_mul(self.record_len())?;
        let trailers = self.block_count().checked_mul(BLOCK_TRAILER_LEN as u64)?;
        records
            .checked_add(trailers)?
            .checked_add((HEADER_LEN + FOOTER_LEN) as u64)
    }

    /// Exact size of the closed file (checked not to overflow when the header was built).
    pub fn file_len(&self) -> u64 {
        self.checked_file_len().unwrap_or(u64::MAX)
    }

    /// One past the last sample of this part.
    pub fn end_sample(&self) -> u64 {
        self.first_sample + self.sample_count
    }

    /// Block `block` of this file, or `None` past the last block.
    pub fn block(&self, block: u64) -> Option<BlockSpan> {
        if block >= self.block_count() {
            return None;
        }
        let r = u64::from(self.records_per_block);
        let first = block * r;
        let records = (self.sample_count - first).min(r);
        Some(BlockSpan {
            block,
            offset: HEADER_LEN as u64 + block * self.block_stride(),
            records,
            first_sample: self.first_sample + first,
            len: records * self.record_len(),
        })
    }

    /// The block holding global sample `sample`.
    pub fn block_of(&self, sample: u64) -> Result<BlockSpan, StoreError> {
        self.check_sample(sample)?;
        let j = sample - self.first_sample;
        self.block(j / u64::from(self.records_per_block))
            .ok_or(StoreError::SampleOutOfRange {
                sample,
                first: self.first_sample,
                end: self.end_sample(),
            })
    }

    /// Byte offset of global sample `sample`'s record.
    pub fn record_offset(&self, sample: u64) -> Result<u64, StoreError> {
        self.check_sample(sample)?;
        let j = sample - self.first_sample;
        let r = u64::from(self.records_per_block);
        Ok(HEADER_LEN as u64 + (j / r) * self.block_stride() + (j % r) * self.record_len())
    }

    fn check_sample(&self, sample: u64) -> Result<(), StoreError> {
        if sample < self.first_sample || sample >= self.end_sample() {
            return Err(StoreError::SampleOutOfRange {
                sample,
                first: self.first_sample,
                end: self.end_sample(),
            });
        }
        Ok(())
    }

    /// Checks one block's records against its trailer. `file` is the whole shard file (or at
    /// least everything up to the block's checksum).
    pub fn check_block(&self, file: &[u8], span: &BlockSpan) -> Result<u32, StoreError> {
        let start = span.offset;
        let end = start + span.len;
        if (file.len() as u64) < end + BLOCK_TRAILER_LEN as u64 {
            return Err(StoreError::TooShort {
                what: "shard block",
                need: end + BLOCK_TRAILER_LEN as u64,
                got: file.len() as u64,
            });
        }
        let (start, end) = (start as usize, end as usize);
        let stored = u32_at(file, end);
        let actual = block_checksum(
            self.store_key,
            self.epoch,
            span.first_sample,
            &file[start..end],
        );
        if stored != actual {
            return Err(StoreError::BlockChecksum {
                block: span.block,
                first_sample: span.first_sample,
                records: span.records,
            });
        }
        Ok(stored)
    }
}

/// The footer that closes a shard file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardFooter {
    /// Records written.
    pub record_count: u64,
    /// Records marked missing.
    pub missing_count: u64,
    /// crc32 over the block checksums in order ([`FooterCrc`]).
    pub blocks_crc: u32,
}

impl ShardFooter {
    /// The 32 footer bytes.
    pub fn encode(&self) -> [u8; FOOTER_LEN] {
        let mut b = [0u8; FOOTER_LEN];
        b[0..8].copy_from_slice(&FOOTER_MAGIC);
        b[8..16].copy_from_slice(&self.record_count.to_le_bytes());
        b[16..24].copy_from_slice(&self.missing_count.to_le_bytes());
        b[24..28].copy_from_slice(&self.blocks_crc.to_le_bytes());
        let crc = crc32fast::hash(&b[..28]);
        b[28..32].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parses a footer from exactly its 32 bytes.
    pub fn decode(b: &[u8]) -> Result<Self, StoreError> {
        if b.len() != FOOTER_LEN {
            return Err(StoreError::Length {
                what: "shard footer",
                expected: FOOTER_LEN as u64,
                got: b.len() as u64,
            });
        }
        if b[0..8] != FOOTER_MAGIC {
            return Err(StoreError::BadMagic {
                what: "shard footer",
            });
        }
        if crc32fast::hash(&b[..28]) != u32_at(b, 28) {
            return Err(StoreError::Checksum {
                what: "shard footer",
            });
        }
        Ok(Self {
            record_count: u64_at(b, 8),
            missing_count: u64_at(b, 16),
            blocks_crc: u32_at(b, 24),
        })
    }
}

/// Accumulates the footer's crc over block checksums, block by block.
#[derive(Clone, Debug, Default)]
pub struct FooterCrc(crc32fast::Hasher);

impl FooterCrc {
    /// Starts an empty accumulation.
    pub fn new() -> Self {
        Self(crc32fast::Hasher::new())
    }
    /// Adds the next block's checksum.
    pub fn push(&mut self, block_crc: u32) {
        self.0.update(&block_crc.to_le_bytes());
    }
    /// The crc over every checksum pushed so far.
    pub fn value(&self) -> u32 {
        self.0.clone().finalize()
    }
}

/// A whole closed shard file in memory (or mapped): header, size and footer checked on open;
/// blocks checked on request.
#[derive(Clone, Copy, Debug)]
pub struct ShardView<'a> {
    header: ShardHeader,
    footer: ShardFooter,
    bytes: &'a [u8],
}

impl<'a> ShardView<'a> {
    /// Checks the header, the exact file length and the footer's record count. Does not read
    /// the blocks: call [`check_block`](Self::check_block) or [`verify`](Self::verify).
    pub fn open(bytes: &'a [u8]) -> Result<Self, StoreError> {
        let header = ShardHeader::decode(bytes)?;
        let expected = header.file_len();
        if bytes.len() as u64 != expected {
            return Err(StoreError::Length {
                what: "shard file",
                expected,
                got: bytes.len() as u64,
            });
        }
        let footer = ShardFooter::decode(&bytes[bytes.len() - FOOTER_LEN..])?;
        if footer.record_count != header.sample_count {
            return Err(StoreError::FooterMismatch {
                field: "record_count",
            });
        }
        if footer.missing_count > footer.record_count {
            return Err(StoreError::FooterMismatch {
                field: "missing_count",
            });
        }
        Ok(Self {
            header,
            footer,
            bytes,
        })
    }

    /// The header.
    pub fn header(&self) -> &ShardHeader {
        &self.header
    }

    /// The footer.
    pub fn footer(&self) -> &ShardFooter {
        &self.footer
    }

    /// The raw file bytes.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Checks block `block`'s checksum.
    pub fn check_block(&self, block: u64) -> Result<(), StoreError> {
        let span = self
            .header
            .block(block)
            .ok_or(StoreError::Invalid { field: "block" })?;
        self.header.check_block(self.bytes, &span).map(|_| ())
    }

    /// The bytes of global sample `sample`'s record, unchecked against its block checksum.
    pub fn record_bytes(&self, sample: u64) -> Result<&'a [u8], StoreError> {
        let o = self.header.record_offset(sample)? as usize;
        Ok(&self.bytes[o..o + self.header.layout.record_len()])
    }

    /// Global sample `sample`'s record (indices checked, block checksum not).
    pub fn record(&self, sample: u64) -> Result<RecordView<'a>, StoreError> {
        self.header.layout.view(self.record_bytes(sample)?)
    }

    /// Checks every block, the footer's checksum of checksums and its missing count. Returns
    /// the first fault found.
    pub fn verify(&self) -> Result<(), StoreError> {
        let mut acc = FooterCrc::new();
        let mut missing = 0u64;
        for b in 0..self.header.block_count() {
            let span = self
                .header
                .block(b)
                .ok_or(StoreError::Invalid { field: "block" })?;
            acc.push(self.header.check_block(self.bytes, &span)?);
            for s in span.first_sample..span.first_sample + span.records {
                if self.record(s)?.is_missing() {
                    missing += 1;
                }
            }
        }
        if acc.value() != self.footer.blocks_crc {
            return Err(StoreError::FooterMismatch {
                field: "blocks_crc",
            });
        }
        if missing != self.footer.missing_count {
            return Err(StoreError::FooterMismatch {
                field: "missing_count",
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> RecordLayout {
        RecordLayout::new(3, 10, ValueEncoding::F16).unwrap()
    }

    #[test]
    fn record_bytes_are_pinned() {
        let l = layout();
        assert_eq!(l.record_len(), 4 + 3 * 4);
        let mut out = [0u8; 16];
        l.encode(0x0102_0304, &[7, 0, 9], &[0.5, 0.25, 1.0], &mut out)
            .unwrap();
        assert_eq!(
            out,
            [
                0x04, 0x03, 0x02, 0x01, // seed
                7, 0, 0, 0, 9, 0, // indices
                0x00, 0x38, 0x00, 0x34, 0x00, 0x3C, // f16 0.5, 0.25, 1.0
            ]
        );
        let v = l.view(&out).unwrap();
        assert_eq!(v.seed(), 0x0102_0304);
        assert!(!v.is_missing());
        assert_eq!((v.index(0), v.index(1), v.index(2)), (7, 0, 9));
        assert_eq!((v.prob(0), v.prob(1), v.prob(2)), (0.5, 0.25, 1.0));
    }

    #[test]
    fn reference_sizes() {
        let k10 = RecordLayout::new(10, 1000, ValueEncoding::F16).unwrap();
        assert_eq!(k10.record_len(), 44);
        let k100 = RecordLayout::new(100, 21841, ValueEncoding::F16).unwrap();
        assert_eq!(k100.record_len(), 404);
        let k10_8 = RecordLayout::new(10, 1000, ValueEncoding::Sqrt8).unwrap();
        assert_eq!(k10_8.record_len(), 34);
        let wide = RecordLayout::new(10, 70_000, ValueEncoding::F16).unwrap();
        assert_eq!(wide.record_len(), 64);
    }

    #[test]
    fn wide_indices_round_trip() {
        let l = RecordLayout::new(2, 100_000, ValueEncoding::Sqrt8).unwrap();
        let mut out = [0u8; 14];
        l.encode(9, &[99_999, 65_535], &[0.9, 0.01], &mut out)
            .unwrap();
        let v = l.view(&out).unwrap();
        assert_eq!((v.index(0), v.index(1)), (99_999, 65_535));
        assert!((v.prob(0) - 0.9).abs() < 0.004);
        assert!((v.prob(1) - 0.01).abs() < 0.0005);
    }

    #[test]
    fn missing_records() {
        let l = layout();
        let mut out = [0u8; 16];
        l.encode_missing(42, &mut out).unwrap();
        let v = l.view(&out).unwrap();
        assert!(v.is_missing());
        assert_eq!(v.seed(), 42);
        out[5] = 0; // index 0 becomes 0x00FF: out of range
        assert_eq!(
            l.view(&out).unwrap_err(),
            StoreError::IndexOutOfRange {
                k: 0,
                index: 0x00FF,
                classes: 10
            }
        );
        l.encode_missing(42, &mut out).unwrap();
        out[15] = 1;
        assert_eq!(l.view(&out).unwrap_err(), StoreError::MixedMissing);
    }

    #[test]
    fn encoder_rejects_bad_input() {
        let l = layout();
        let mut out = [0u8; 16];
        assert!(matches!(
            l.encode(0, &[1, 2, 10], &[0.1; 3], &mut out),
            Err(StoreError::IndexOutOfRange { k: 2, .. })
        ));
        assert!(matches!(
            l.encode(0, &[1, 2, 3], &[0.1, f32::NAN, 0.1], &mut out),
            Err(StoreError::ProbabilityOutOfRange { k: 1 })
        ));
        assert!(matches!(
            l.encode(0, &[1, 2], &[0.1; 3], &mut out),
            Err(StoreError::Length { .. })
        ));
        assert!(matches!(
            l.encode(0, &[1, 2, 3], &[0.1; 3], &mut out[..15]),
            Err(StoreError::Length { .. })
        ));
        assert!(RecordLayout::new(0, 10, ValueEncoding::F16).is_err());
        assert!(RecordLayout::new(11, 10, ValueEncoding::F16).is_err());
        assert!(RecordLayout::new(1, 0, ValueEncoding::F16).is_err());
    }

    /// The store's 8-bit values are the core's code (ties to even), read back through the
    /// record view; the accuracy bound of the module doc holds.
    #[test]
    fn sqrt8_values_are_the_softlabel_code() {
        let l = RecordLayout::new(1, 10, ValueEncoding::Sqrt8).unwrap();
        let mut out = [0u8; 7];
        let mut p = 1e-6f32;
        while p < 1.0 {
            l.encode(0, &[3], &[p], &mut out).unwrap();
            assert_eq!(out[6], softlabel::encode_u8(p), "p={p}");
            let d = l.view(&out).unwrap().prob(0);
            assert_eq!(d, softlabel::decode_u8(out[6]));
            assert!(
                (d - p).abs() <= libm::sqrtf(p) / 255.0 + 4e-6,
                "p={p} d={d}"
            );
            p *= 1.1;
        }
        // A tie: 255 * sqrt(p) == 2.5 exactly rounds to the even code 2 (version 2).
        let p = (2.5f32 / 255.0) * (2.5f32 / 255.0);
        if libm::sqrtf(p) * 255.0 == 2.5 {
            l.encode(0, &[3], &[p], &mut out).unwrap();
            assert_eq!(out[6], 2);
        }
        l.encode(0, &[3], &[1.0005], &mut out).unwrap();
        assert_eq!(out[6], 255);
    }

    /// The index width switches where the u16 sentinel would become a class.
    #[test]
    fn index_width_boundary() {
        let narrow = RecordLayout::new(1, 65_535, ValueEncoding::F16).unwrap();
        assert_eq!(narrow.index_width(), 2);
        let mut out = [0u8; 8];
        narrow.encode(1, &[65_534], &[0.5], &mut out).unwrap();
        assert_eq!(narrow.view(&out).unwrap().index(0), 65_534);
        let wide = RecordLayout::new(1, 65_536, ValueEncoding::F16).unwrap();
        assert_eq!(wide.index_width(), 4);
        let mut out = [0u8; 10];
        wide.encode(1, &[65_535], &[0.5], &mut out).unwrap();
        let v = wide.view(&out).unwrap();
        assert_eq!(v.index(0), 65_535);
        assert!(!v.is_missing());
    }

    #[test]
    fn parts_cut_on_blocks_and_cover_everything() {
        for len in [0u64, 1, 5, 1000, 1023, 1024, 1025, 10_000] {
            for parts in 1..9u32 {
                for r in [1u32, 7, 1024] {
                    let mut next = 0;
                    for p in 0..parts {
                        let range = part_range(len, parts, p, r).unwrap();
                        assert_eq!(range.start, next);
                        if range.start < len {
                            assert_eq!(range.start % u64::from(r), 0);
                        }
                        for s in range.clone() {
                            assert_eq!(part_of(s, len, parts, r), Some(p));
                        }
                        next = range.end;
                    }
                    assert_eq!(next, len);
                }
            }
        }
        assert_eq!(part_range(10, 0, 0, 4), None);
        assert_eq!(part_range(10, 2, 2, 4), None);
        assert_eq!(part_of(10, 10, 2, 4), None);
    }

    fn build_shard(parts: u32, part: u32) -> std::vec::Vec<u8> {
        let l = layout();
        let h = ShardHeader::new(l, 4, 3, part, parts, 10, 0xABCD).unwrap();
        let mut file = std::vec::Vec::from(h.encode());
        let mut acc = FooterCrc::new();
        let mut rec = [0u8; 16];
        let mut missing = 0;
        for b in 0..h.block_count() {
            let span = h.block(b).unwrap();
            let start = file.len();
            for s in span.first_sample..span.first_sample + span.records {
                if s == 6 {
                    l.encode_missing(s as u32, &mut rec).unwrap();
                    missing += 1;
                } else {
                    let i = s as u32 % 10;
                    l.encode(
                        s as u32 * 3,
                        &[i, (i + 1) % 10, (i + 2) % 10],
                        &[0.5, 0.3, 0.1],
                        &mut rec,
                    )
                    .unwrap();
                }
                file.extend_from_slice(&rec);
            }
            let crc = block_checksum(h.store_key, h.epoch, span.first_sample, &file[start..]);
            file.extend_from_slice(&crc.to_le_bytes());
            acc.push(crc);
        }
        let f = ShardFooter {
            record_count: h.sample_count,
            missing_count: missing,
            blocks_crc: acc.value(),
        };
        file.extend_from_slice(&f.encode());
        assert_eq!(file.len() as u64, h.file_len());
        file
    }

    #[test]
    fn shard_round_trip_and_random_access() {
        let file = build_shard(1, 0);
        let v = ShardView::open(&file).unwrap();
        v.verify().unwrap();
        assert_eq!(v.header().block_count(), 3);
        assert_eq!(v.footer().missing_count, 1);
        for s in (0..10u64).rev() {
            let r = v.record(s).unwrap();
            assert_eq!(r.seed() as u64, if s == 6 { 6 } else { s * 3 });
            assert_eq!(r.is_missing(), s == 6);
            if s != 6 {
                assert_eq!(r.index(0) as u64, s % 10);
            }
        }
        assert!(matches!(
            v.record(10),
            Err(StoreError::SampleOutOfRange { sample: 10, .. })
        ));
    }

    #[test]
    fn sharded_blocks_equal_unsharded_blocks() {
        let whole = build_shard(1, 0);
        let a = build_shard(2, 0);
        let b = build_shard(2, 1);
        let body = |f: &[u8]| f[HEADER_LEN..f.len() - FOOTER_LEN].to_vec();
        let mut joined = body(&a);
        joined.extend(body(&b));
        assert_eq!(joined, body(&whole));
    }

    #[test]
    fn every_flipped_byte_is_caught() {
        let file = build_shard(1, 0);
        for i in 0..file.len() {
            let mut bad = file.clone();
            bad[i] ^= 0x10;
            let result = ShardView::open(&bad).and_then(|v| v.verify());
            assert!(result.is_err(), "flip at byte {i} went unnoticed");
        }
        // A flip inside block 1 names block 1 and its samples.
        let mut bad = file.clone();
        let o = ShardHeader::decode(&file)
            .unwrap()
            .record_offset(5)
            .unwrap() as usize;
        bad[o] ^= 1;
        assert_eq!(
            ShardView::open(&bad).unwrap().verify().unwrap_err(),
            StoreError::BlockChecksum {
                block: 1,
                first_sample: 4,
                records: 4
            }
        );
    }

    #[test]
    fn truncated_files_are_errors_not_panics() {
        let file = build_shard(1, 0);
        for n in 0..file.len() {
            assert!(ShardView::open(&file[..n]).is_err());
        }
        let mut longer = file.clone();
        longer.push(0);
        assert!(matches!(
            ShardView::open(&longer),
            Err(StoreError::Length { .. })
        ));
    }

    #[test]
    fn header_fields_are_checked() {
        let h = ShardHeader::new(layout(), 4, 0, 0, 1, 10, 1).unwrap();
        assert_eq!(ShardHeader::decode(&h.encode()).unwrap(), h);
        assert!(ShardHeader::new(layout(), 0, 0, 0, 1, 10, 1).is_err());
        assert!(ShardHeader::new(layout(), 4, 0, 1, 1, 10, 1).is_err());
        assert!(ShardHeader::new(layout(), 4, 0, 0, 1, u64::MAX, 1).is_err());
        for old in [1u8, 3] {
            let mut b = h.encode();
            b[8] = old;
            let crc = crc32fast::hash(&b[..76]);
            b[76..80].copy_from_slice(&crc.to_le_bytes());
            let err = ShardHeader::decode(&b).unwrap_err();
            assert_eq!(
                err,
                StoreError::UnsupportedVersion {
                    found: u16::from(old)
                }
            );
            assert!(
                std::format!("{err}").contains("write the store again"),
                "{err}"
            );
        }
    }

    /// [`build_shard`] with bytes of the record area xor-ed (`(position, value)` pairs), then
    /// every block checksum and the footer recomputed so only the record checks can object.
    /// Also returns how many records the layout now refuses (counted independently of
    /// [`RecordLayout::view`]: an index >= classes that is not the sentinel, or a partial
    /// missing record).
    fn mutate_records_fixing_checksums(muts: &[(usize, u8)]) -> (std::vec::Vec<u8>, usize) {
        let mut file = build_shard(1, 0);
        let h = ShardHeader::decode(&file).unwrap();
        let l = h.layout;
        let rl = l.record_len();
        for &(pos, x) in muts {
            // Skip the seeds: they are not checked.
            let s = (pos / rl) as u64 % h.sample_count;
            let b = 4 + pos % (rl - 4);
            let o = h.record_offset(s).unwrap() as usize + b;
            file[o] ^= x;
        }
        let mut acc = FooterCrc::new();
        for b in 0..h.block_count() {
            let span = h.block(b).unwrap();
            let (start, end) = (span.offset as usize, (span.offset + span.len) as usize);
            let crc = block_checksum(h.store_key, h.epoch, span.first_sample, &file[start..end]);
            file[end..end + 4].copy_from_slice(&crc.to_le_bytes());
            acc.push(crc);
        }
        let n = file.len();
        let old = ShardFooter::decode(&file[n - FOOTER_LEN..]).unwrap();
        let f = ShardFooter {
            blocks_crc: acc.value(),
            ..old
        };
        file[n - FOOTER_LEN..].copy_from_slice(&f.encode());
        let mut bad = 0;
        for s in 0..h.sample_count {
            let o = h.record_offset(s).unwrap() as usize;
            let r = &file[o..o + rl];
            let idx: std::vec::Vec<u32> = (0..l.topk())
                .map(|j| u32::from(u16::from_le_bytes([r[4 + 2 * j], r[5 + 2 * j]])))
                .collect();
            let sentinels = idx.iter().filter(|&&i| i == 0xFFFF).count();
            let out_of_range = idx.iter().any(|&i| i != 0xFFFF && i >= l.num_classes());
            let values_zero = r[4 + 2 * l.topk()..].iter().all(|&v| v == 0);
            let partial = sentinels > 0 && (sentinels < l.topk() || !values_zero);
            if out_of_range || partial {
                bad += 1;
            }
        }
        (file, bad)
    }

    /// The mutation helper does reach both outcomes: a record refused by its indices and a
    /// shard whose deeper checks pass.
    #[test]
    fn record_mutations_reach_the_record_checks() {
        let (file, bad) = mutate_records_fixing_checksums(&[(0, 0xF0)]);
        assert_eq!(bad, 1);
        let v = ShardView::open(&file).unwrap();
        assert!(matches!(
            v.verify(),
            Err(StoreError::IndexOutOfRange { k: 0, .. })
        ));
        let (file, bad) = mutate_records_fixing_checksums(&[(0, 0x01)]);
        assert_eq!(bad, 0);
        ShardView::open(&file).unwrap().verify().unwrap();
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Any bytes: parsing returns an error or a view, never panics; a view's records
            /// and blocks can all be read without panicking.
            #[test]
            fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
                let _ = ShardHeader::decode(&bytes);
                let _ = ShardFooter::decode(&bytes);
                if let Ok(v) = ShardView::open(&bytes) {
                    let _ = v.verify();
                    let h = *v.header();
                    for s in h.first_sample..h.end_sample() {
                        let _ = v.record(s);
                    }
                }
                let l = RecordLayout::new(3, 10, ValueEncoding::F16).unwrap();
                if bytes.len() >= l.record_len() {
                    let _ = l.view(&bytes[..l.record_len()]);
                }
            }

            /// Random record bytes in a valid shard whose checksums are fixed up after the
            /// mutation: header, length, footer and block checks pass, so the record and verify
            /// branches run. Each record either reads (and its indices are in range) or fails
            /// with a record-level error; `verify` agrees with the records, and never panics.
            #[test]
            fn mutated_records_reach_record_and_verify_checks(
                muts in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..12),
            ) {
                let (file, bad_records) = mutate_records_fixing_checksums(&muts);
                let v = ShardView::open(&file).expect("checksums were fixed: the shard opens");
                let h = *v.header();
                let mut record_errors = 0;
                let mut missing = 0;
                for s in h.first_sample..h.end_sample() {
                    match v.record(s) {
                        Ok(r) => {
                            if r.is_missing() {
                                missing += 1;
                            } else {
                                for j in 0..r.topk() {
                                    prop_assert!(r.index(j) < h.layout.num_classes());
                                }
                            }
                        }
                        Err(StoreError::IndexOutOfRange { .. }) | Err(StoreError::MixedMissing) => {
                            record_errors += 1;
                        }
                        Err(e) => prop_assert!(false, "sample {}: unexpected {:?}", s, e),
                    }
                }
                prop_assert_eq!(record_errors, bad_records);
                match v.verify() {
                    Ok(()) => prop_assert!(record_errors == 0 && missing == v.footer().missing_count),
                    Err(StoreError::IndexOutOfRange { .. }) | Err(StoreError::MixedMissing) => {
                        prop_assert!(record_errors > 0)
                    }
                    Err(StoreError::FooterMismatch { field: "missing_count" }) => {
                        prop_assert!(record_errors == 0 && missing != v.footer().missing_count)
                    }
                    Err(e) => prop_assert!(false, "verify: unexpected {:?}", e),
                }
            }

            /// A mutated valid header is rejected or decodes to a header that re-encodes to
            /// the same bytes.
            #[test]
            fn header_mutations(i in 0usize..HEADER_LEN, x in 1u8..=255) {
                let h = ShardHeader::new(RecordLayout::new(5, 300, ValueEncoding::Sqrt8).unwrap(), 8, 2, 1, 3, 100, 9).unwrap();
                let mut b = h.encode();
                b[i] ^= x;
                if let Ok(d) = ShardHeader::decode(&b) {
                    prop_assert_eq!(d.encode(), b);
                }
            }

            /// Records round trip: indices exactly, values within the encoding's bound.
            #[test]
            fn records_round_trip(
                classes in 1u32..200_000,
                seed in any::<u32>(),
                raw in proptest::collection::vec((any::<u32>(), 0.0f32..=1.0), 1..20),
                sqrt8 in any::<bool>(),
            ) {
                let k = raw.len().min(classes as usize);
                let values = if sqrt8 { ValueEncoding::Sqrt8 } else { ValueEncoding::F16 };
                let l = RecordLayout::new(k as u16, classes, values).unwrap();
                let idx: std::vec::Vec<u32> = raw[..k].iter().map(|&(i, _)| i % classes).collect();
                let p: std::vec::Vec<f32> = raw[..k].iter().map(|&(_, p)| p).collect();
                let mut out = std::vec![0u8; l.record_len()];
                l.encode(seed, &idx, &p, &mut out).unwrap();
                let v = l.view(&out).unwrap();
                prop_assert_eq!(v.seed(), seed);
                prop_assert!(!v.is_missing());
                for j in 0..k {
                    prop_assert_eq!(v.index(j), idx[j]);
                    let bound = if sqrt8 { libm::sqrtf(p[j]) / 255.0 + 4e-6 } else { p[j] / 2048.0 + 3e-8 };
                    prop_assert!((v.prob(j) - p[j]).abs() <= bound, "{} vs {}", v.prob(j), p[j]);
                }
            }
        }
    }
}
