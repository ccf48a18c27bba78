//! The deployable model file, `.tvb`: one TinyViT with BatchNorm folded, readable in place from
//! flash with no allocator.
//!
//! # Layout (format version 1; all integers little-endian)
//!
//! ```text
//! +----------------------------+ 0
//! | magic  "TINYVITB"  8 bytes |
//! | version          u32       |   = 1
//! | header length H  u32       |   <= 1 MiB
//! | header crc32     u32       |   crc32 (IEEE) of the H header bytes
//! +----------------------------+ 20
//! | header, postcard, H bytes: |
//! |   config     ModelConfig   |
//! |   tensors    u32 (count)   |
//! |   data_len   u64 (bytes)   |
//! |   data_crc32 u32           |
//! |   then `tensors` entries:  |
//! |     name   str             |
//! |     ndim   u8, dims [u32;4]|   unused dims are 0
//! |     offset u64 (bytes from |
//! |            the data start) |
//! |   optional: input contract |   [`crate::contract`] section (size, channels, mean,
//! |   section                  |   std, interpolation, crop, class names)
//! +----------------------------+ 20 + H
//! | zero padding to 16 bytes   |
//! +----------------------------+ D = align16(20 + H)
//! | data: data_len bytes of    |   f32 little-endian; every tensor starts 16-byte aligned,
//! | f32 tensors                |   padded with zeros to a multiple of 4 values
//! +----------------------------+ D + data_len = end of file (nothing may follow)
//! ```
//!
//! Files without the contract section (written before it existed, or with no contract) still
//! load; [`Tvb::contract`] is then `None`.
//!
//! The tensors are exactly [`params::for_each_folded`] of the
//! config, in that order, and the data is exactly the packed blob [`Weights`] reads: a reader
//! checks every name, shape and offset against the canonical list, so a file can never feed
//! the engine a tensor it does not expect.
//!
//! # Safety limits
//! Everything is checked before it is used: the header length against a 1 MiB cap and the file
//! length, the header crc, the config ([`ModelConfig::validate`]), the tensor count, every
//! entry, the data length (with overflow checks), zero padding, the data crc and that nothing
//! trails. Any failure is a [`TvbError`]; parsing never panics and never reads out of bounds.
//!
//! # Alignment
//! [`Tvb::weights`] views the data as `&[f32]` without copying (via `bytemuck`, no unsafe
//! here). That needs the data start to be 4-byte aligned in memory, i.e. the file buffer
//! itself 4-byte aligned (16 for the documented guarantee); a misaligned buffer is
//! [`TvbError::Misaligned`], never undefined behaviour. On the host, [`Tvb::to_blob`] copies
//! the data into an owned, aligned vector instead. Big-endian targets are refused.

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, ModelConfig};
use crate::contract::{self, ClassNames, ContractError, InputContract};
use crate::engine::{EngineError, Weights};
use crate::params::{self, Name};

/// File magic.
pub const MAGIC: [u8; 8] = *b"TINYVITB";
/// The format version this code reads and writes.
pub const VERSION: u32 = 1;
/// Largest header accepted, in bytes.
pub const MAX_HEADER: u32 = 1 << 20;
/// Bytes before the header.
pub const PREFIX_LEN: usize = 20;

/// Why bytes are not a usable `.tvb` file.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum TvbError {
    /// The file ends before a field it must hold.
    Truncated {
        field: &'static str,
        needed: u64,
        got: u64,
    },
    /// The first 8 bytes are not `TINYVITB`.
    BadMagic,
    /// A format version this code does not read.
    Version { found: u32 },
    /// The header length exceeds [`MAX_HEADER`].
    HeaderTooLarge { len: u32 },
    /// The header bytes do not match their crc32.
    HeaderCrc,
    /// A header field does not decode (the field is named).
    Decode { field: &'static str },
    /// The config in the header is invalid.
    Config(ConfigError),
    /// The tensor table has the wrong number of entries.
    TensorCount { expected: u32, got: u32 },
    /// Entry `index` has the wrong name.
    TensorName { index: u32, expected: Name },
    /// Entry `index` (named) has the wrong shape.
    TensorShape { index: u32, name: Name },
    /// Entry `index` (named) has the wrong data offset.
    TensorOffset { index: u32, name: Name },
    /// Bytes follow the last tensor entry inside the header.
    TrailingHeader,
    /// The data length disagrees with the config or the file length.
    DataLen { expected: u64, got: u64 },
    /// Padding bytes that must be zero are not.
    Padding,
    /// The data does not match its crc32.
    DataCrc,
    /// The data is not 4-byte aligned in memory: zero-copy access is impossible.
    Misaligned,
    /// Big-endian targets cannot view little-endian f32 data in place.
    BigEndian,
    /// The engine rejects the weights (should not happen after the checks above).
    Engine(EngineError),
    /// The input contract section is unusable.
    Contract(ContractError),
}

impl core::fmt::Display for TvbError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            TvbError::Truncated { field, needed, got } => write!(
                f,
                "tvb: file too short for `{field}`: needs {needed} bytes, has {got}"
            ),
            TvbError::BadMagic => write!(f, "tvb: bad magic (not a .tvb file)"),
            TvbError::Version { found } => write!(
                f,
                "tvb: format version {found} is not an f32 model (version {VERSION}; version {} \
                 is int8)",
                crate::int8::file::VERSION
            ),
            TvbError::HeaderTooLarge { len } => {
                write!(f, "tvb: header length {len} exceeds {MAX_HEADER}")
            }
            TvbError::HeaderCrc => write!(f, "tvb: header crc32 mismatch (corrupted header)"),
            TvbError::Decode { field } => write!(f, "tvb: header field `{field}` does not decode"),
            TvbError::Config(e) => write!(f, "tvb: {e}"),
            TvbError::TensorCount { expected, got } => write!(
                f,
                "tvb: header lists {got} tensors, the config needs {expected}"
            ),
            TvbError::TensorName { index, expected } => {
                write!(f, "tvb: tensor {index} should be `{expected}`")
            }
            TvbError::TensorShape { index, name } => {
                write!(f, "tvb: tensor {index} `{name}` has the wrong shape")
            }
            TvbError::TensorOffset { index, name } => {
                write!(f, "tvb: tensor {index} `{name}` has the wrong offset")
            }
            TvbError::TrailingHeader => write!(f, "tvb: bytes after the last tensor entry"),
            TvbError::DataLen { expected, got } => {
                write!(f, "tvb: data length {got} bytes, expected {expected}")
            }
            TvbError::Padding => write!(f, "tvb: non-zero padding"),
            TvbError::DataCrc => write!(f, "tvb: data crc32 mismatch (corrupted weights)"),
            TvbError::Misaligned => write!(
                f,
                "tvb: data is not 4-byte aligned in memory; copy the file to an aligned buffer"
            ),
            TvbError::BigEndian => write!(f, "tvb: big-endian targets are not supported"),
            TvbError::Engine(e) => write!(f, "tvb: {e}"),
            TvbError::Contract(e) => write!(f, "tvb: {e}"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for TvbError {}

/// The fixed part of the postcard header.
#[derive(Serialize, Deserialize)]
struct Header {
    config: ModelConfig,
    tensors: u32,
    data_len: u64,
    data_crc32: u32,
}

/// One tensor table entry.
#[derive(Serialize, Deserialize)]
struct Entry<'a> {
    name: &'a str,
    ndim: u8,
    dims: [u32; 4],
    offset: u64,
}

/// A parsed `.tvb` file, borrowing its bytes.
#[derive(Clone, Copy, Debug)]
pub struct Tvb<'a> {
    config: ModelConfig,
    data: &'a [u8],
    contract: Option<InputContract>,
    class_names: ClassNames<'a>,
}

/// What can be wrong with the prefix both formats share (magic, version, header length and
/// crc32, then the header itself): each parser turns it into its own error.
pub(crate) enum Prefix {
    Truncated { field: &'static str, needed: u64 },
    BadMagic,
    Version { found: u32 },
    HeaderTooLarge { len: u32 },
    HeaderCrc,
}

/// Checks the shared prefix of a file of format `version` whose header may hold up to
/// `max_header` bytes; returns the header bytes and the offset where they end.
pub(crate) fn read_prefix(
    bytes: &[u8],
    version: u32,
    max_header: u32,
) -> Result<(&[u8], usize), Prefix> {
    if bytes.len() < PREFIX_LEN {
        return Err(Prefix::Truncated {
            field: "prefix",
            needed: PREFIX_LEN as u64,
        });
    }
    if bytes[..8] != MAGIC {
        return Err(Prefix::BadMagic);
    }
    let found = u32_at(bytes, 8);
    if found != version {
        return Err(Prefix::Version { found });
    }
    let hlen = u32_at(bytes, 12);
    if hlen > max_header {
        return Err(Prefix::HeaderTooLarge { len: hlen });
    }
    let hend = PREFIX_LEN + hlen as usize;
    let header = bytes.get(PREFIX_LEN..hend).ok_or(Prefix::Truncated {
        field: "header",
        needed: hend as u64,
    })?;
    if crc32fast::hash(header) != u32_at(bytes, 16) {
        return Err(Prefix::HeaderCrc);
    }
    Ok((header, hend))
}

/// The little-endian u32 at `at` (the caller has checked the length).
pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

/// `n` rounded up to a multiple of 16 (where both formats start their data region).
pub(crate) fn align16(n: u64) -> u64 {
    n.div_ceil(16) * 16
}

/// What can be wrong after the header's fixed fields, in both formats: the optional input
/// contract section, bytes after it, and the data region's framing. Each parser turns it into
/// its own error.
pub(crate) enum Tail {
    Contract(ContractError),
    TrailingHeader,
    Truncated { needed: u64, got: u64 },
    DataLen { expected: u64, got: u64 },
    Padding,
    DataCrc,
}

/// The end of a header, `rest`: nothing, or one input-contract section ([`contract`]) and
/// nothing after it.
pub(crate) fn contract_tail<'a>(
    rest: &'a [u8],
    cfg: &ModelConfig,
) -> Result<(Option<InputContract>, ClassNames<'a>), Tail> {
    if rest.is_empty() {
        return Ok((None, ClassNames::default()));
    }
    let (c, names, rest) = contract::decode_section(rest, cfg).map_err(Tail::Contract)?;
    if !rest.is_empty() {
        return Err(Tail::TrailingHeader);
    }
    Ok((Some(c), names))
}

/// The data region of a file whose header ends at `hend`: it starts at the next multiple of
/// 16 after zero padding, holds exactly `data_len` bytes up to the end of the file, and its
/// crc32 is `crc`.
pub(crate) fn data_region(
    bytes: &[u8],
    hend: usize,
    data_len: u64,
    crc: u32,
) -> Result<&[u8], Tail> {
    let got = bytes.len() as u64;
    let dstart = align16(hend as u64);
    let end = dstart.saturating_add(data_len);
    if got != end {
        return Err(if got < end {
            Tail::Truncated { needed: end, got }
        } else {
            Tail::DataLen {
                expected: end - dstart,
                got: got - dstart,
            }
        });
    }
    if bytes[hend..dstart as usize].iter().any(|b| *b != 0) {
        return Err(Tail::Padding);
    }
    let data = &bytes[dstart as usize..];
    if crc32fast::hash(data) != crc {
        return Err(Tail::DataCrc);
    }
    Ok(data)
}

impl From<Tail> for TvbError {
    fn from(t: Tail) -> Self {
        match t {
            Tail::Contract(e) => TvbError::Contract(e),
            Tail::TrailingHeader => TvbError::TrailingHeader,
            Tail::Truncated { needed, got } => TvbError::Truncated {
                field: "data",
                needed,
                got,
            },
            Tail::DataLen { expected, got } => TvbError::DataLen { expected, got },
            Tail::Padding => TvbError::Padding,
            Tail::DataCrc => TvbError::DataCrc,
        }
    }
}

/// What a `.tvb` file holds, by its format version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Version 1: an f32 model, read by [`parse`].
    F32,
    /// Version 4 (or an earlier int8 version): an int8 model, read by [`crate::int8::parse`].
    Int8,
}

/// The kind of a `.tvb` file from its first 12 bytes (magic and version), before parsing it.
pub fn kind(bytes: &[u8]) -> Result<Kind, TvbError> {
    if bytes.len() < 12 {
        return Err(TvbError::Truncated {
            field: "prefix",
            needed: 12,
            got: bytes.len() as u64,
        });
    }
    if bytes[..8] != MAGIC {
        return Err(TvbError::BadMagic);
    }
    match u32_at(bytes, 8) {
        VERSION => Ok(Kind::F32),
        crate::int8::file::VERSION => Ok(Kind::Int8),
        // Earlier int8 layouts: the int8 parser names them (`FileError::Outdated`).
        v if crate::int8::file::OUTDATED_VERSIONS.contains(&v) => Ok(Kind::Int8),
        found => Err(TvbError::Version { found }),
    }
}

/// Parses and fully validates a `.tvb` file (see the module doc for every check).
pub fn parse(bytes: &[u8]) -> Result<Tvb<'_>, TvbError> {
    let got = bytes.len() as u64;
    let (header, hend) = read_prefix(bytes, VERSION, MAX_HEADER).map_err(|e| match e {
        Prefix::Truncated { field, needed } => TvbError::Truncated { field, needed, got },
        Prefix::BadMagic => TvbError::BadMagic,
        Prefix::Version { found } => TvbError::Version { found },
        Prefix::HeaderTooLarge { len } => TvbError::HeaderTooLarge { len },
        Prefix::HeaderCrc => TvbError::HeaderCrc,
    })?;
    let (h, mut rest): (Header, &[u8]) =
        postcard::take_from_bytes(header).map_err(|_| TvbError::Decode { field: "header" })?;
    h.config.validate().map_err(TvbError::Config)?;
    let cfg = h.config;
    let expected_count = params::folded_tensor_count(&cfg) as u32;
    if h.tensors != expected_count {
        return Err(TvbError::TensorCount {
            expected: expected_count,
            got: h.tensors,
        });
    }
    // Walk the canonical list and the table together.
    let mut err: Option<TvbError> = None;
    let mut index = 0u32;
    let mut offset = 0u64;
    params::for_each_folded(&cfg, |name, shape| {
        if err.is_some() {
            return;
        }
        let named = || Name::try_from(name).unwrap_or_default();
        let entry: Entry<'_> = match postcard::take_from_bytes(rest) {
            Ok((e, r)) => {
                rest = r;
                e
            }
            Err(_) => {
                err = Some(TvbError::Decode {
                    field: "tensor entry",
                });
                return;
            }
        };
        if entry.name != name {
            err = Some(TvbError::TensorName {
                index,
                expected: named(),
            });
            return;
        }
        let ndim = entry.ndim as usize;
        let dims_ok = ndim == shape.len()
            && ndim <= 4
            && entry.dims[..ndim]
                .iter()
                .zip(shape)
                .all(|(a, b)| *a as u64 == *b as u64)
            && entry.dims[ndim..].iter().all(|d| *d == 0);
        if !dims_ok {
            err = Some(TvbError::TensorShape {
                index,
                name: named(),
            });
            return;
        }
        if entry.offset != offset {
            err = Some(TvbError::TensorOffset {
                index,
                name: named(),
            });
            return;
        }
        offset = offset
            .saturating_add((params::align_up(params::numel(shape)) as u64).saturating_mul(4));
        index += 1;
    });
    if let Some(e) = err {
        return Err(e);
    }
    let (input, class_names) = contract_tail(rest, &cfg)?;
    let expected_data = (params::folded_blob_len(&cfg) as u64).saturating_mul(4);
    if h.data_len != expected_data || offset != expected_data {
        return Err(TvbError::DataLen {
            expected: expected_data,
            got: h.data_len,
        });
    }
    let data = data_region(bytes, hend, h.data_len, h.data_crc32)?;
    Ok(Tvb {
        config: cfg,
        data,
        contract: input,
        class_names,
    })
}

impl<'a> Tvb<'a> {
    /// The network of this file.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The input contract, when the file carries one.
    pub fn contract(&self) -> Option<&InputContract> {
        self.contract.as_ref()
    }

    /// The class names (empty when the file names none).
    pub fn class_names(&self) -> ClassNames<'a> {
        self.class_names
    }

    /// The raw little-endian tensor data.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// The weights, viewed in place (no copy). Fails with [`TvbError::Misaligned`] if the file
    /// buffer is not 4-byte aligned, and on big-endian targets.
    pub fn weights(&self) -> Result<Weights<'a>, TvbError> {
        if cfg!(target_endian = "big") {
            return Err(TvbError::BigEndian);
        }
        let floats: &'a [f32] =
            bytemuck::try_cast_slice(self.data).map_err(|_| TvbError::Misaligned)?;
        Weights::new(&self.config, floats).map_err(TvbError::Engine)
    }

    /// The weights copied into an owned blob (any alignment, any endianness).
    #[cfg(feature = "std")]
    pub fn to_blob(&self) -> std::vec::Vec<f32> {
        self.data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }
}

/// Writes a `.tvb` file for `cfg` and its packed folded blob (as [`Weights::new`] takes it),
/// with no contract section.
#[cfg(feature = "std")]
pub fn write(cfg: &ModelConfig, blob: &[f32]) -> Result<std::vec::Vec<u8>, TvbError> {
    write_with_contract(cfg, blob, None)
}

/// [`write`], with the input contract and class names of the model when given.
#[cfg(feature = "std")]
pub fn write_with_contract(
    cfg: &ModelConfig,
    blob: &[f32],
    contract: Option<(&InputContract, &[std::string::String])>,
) -> Result<std::vec::Vec<u8>, TvbError> {
    Weights::new(cfg, blob).map_err(TvbError::Engine)?;
    let data: std::vec::Vec<u8> = blob.iter().flat_map(|v| v.to_le_bytes()).collect();
    let h = Header {
        config: *cfg,
        tensors: params::folded_tensor_count(cfg) as u32,
        data_len: data.len() as u64,
        data_crc32: crc32fast::hash(&data),
    };
    let mut header = postcard::to_allocvec(&h).map_err(|_| TvbError::Decode { field: "header" })?;
    let mut offset = 0u64;
    let mut failed = false;
    params::for_each_folded(cfg, |name, shape| {
        let mut dims = [0u32; 4];
        for (d, s) in dims.iter_mut().zip(shape) {
            *d = *s as u32;
        }
        let e = Entry {
            name,
            ndim: shape.len() as u8,
            dims,
            offset,
        };
        match postcard::to_allocvec(&e) {
            Ok(b) => header.extend_from_slice(&b),
            Err(_) => failed = true,
        }
        offset += params::align_up(params::numel(shape)) as u64 * 4;
    });
    if let Some((input, names)) = contract {
        contract::encode_section(input, names, cfg, &mut header).map_err(TvbError::Contract)?;
    }
    if failed || header.len() > MAX_HEADER as usize {
        return Err(TvbError::HeaderTooLarge {
            len: header.len() as u32,
        });
    }
    let mut out = std::vec::Vec::with_capacity(PREFIX_LEN + header.len() + 16 + data.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&header).to_le_bytes());
    out.extend_from_slice(&header);
    out.resize(align16(out.len() as u64) as usize, 0);
    out.extend_from_slice(&data);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::fold::fold_state_dict;
    use crate::params::synthetic_state_dict;
    use proptest::prelude::*;
    use std::vec::Vec;

    /// A small valid network (the M4 preset at 16 px, narrow) keeps property tests fast.
    fn small() -> ModelConfig {
        let mut c = ModelConfig::tiny_vit_mcu_m4().with_img_size(16);
        c.embed_dims = [8, 8, 16, 16];
        c.num_heads = [1, 1, 2, 2];
        c.depths = [1, 1, 1, 1];
        c
    }

    fn file(cfg: &ModelConfig) -> (Vec<f32>, Vec<u8>) {
        let sd = synthetic_state_dict(cfg, 9);
        let blob = fold_state_dict(cfg, |n| {
            sd.iter().find(|t| t.name == n).map(|t| &t.values[..])
        })
        .unwrap();
        let bytes = write(cfg, &blob).unwrap();
        (blob, bytes)
    }

    /// Copies bytes into a 16-byte aligned buffer and returns the buffer and the byte view.
    fn aligned(bytes: &[u8]) -> Vec<u128> {
        let mut v = std::vec![0u128; bytes.len().div_ceil(16)];
        bytemuck::cast_slice_mut::<u128, u8>(&mut v)[..bytes.len()].copy_from_slice(bytes);
        v
    }

    #[test]
    fn round_trip_is_zero_copy_and_exact() {
        let cfg = ModelConfig::tiny_vit_mcu_m4();
        let (blob, bytes) = file(&cfg);
        let buf = aligned(&bytes);
        let view = &bytemuck::cast_slice::<u128, u8>(&buf)[..bytes.len()];
        let t = parse(view).unwrap();
        assert_eq!(t.config(), &cfg);
        let w = t.weights().unwrap();
        assert_eq!(w.blob(), &blob[..]);
        assert_eq!(t.to_blob(), blob);
        // The data region starts 16-byte aligned within the file.
        assert_eq!(
            (t.data().as_ptr() as usize - view.as_ptr() as usize) % 16,
            0
        );
    }

    /// The contract section round-trips; a file without it (as written before it existed)
    /// still loads with no contract; the data bytes are the same either way.
    #[test]
    fn contract_section_is_optional_and_round_trips() {
        let cfg = small();
        let (blob, plain) = file(&cfg);
        let t = parse(&plain).unwrap();
        assert!(t.contract().is_none() && t.class_names().is_empty());
        let input = InputContract::for_model(&cfg, [0.5; 3], [0.5; 3]);
        let names: Vec<std::string::String> =
            (0..cfg.num_classes).map(|i| std::format!("c{i}")).collect();
        let with = write_with_contract(&cfg, &blob, Some((&input, &names))).unwrap();
        let t = parse(&with).unwrap();
        assert_eq!(t.contract(), Some(&input));
        assert_eq!(t.class_names().iter().collect::<Vec<_>>(), names);
        assert_eq!(t.to_blob(), blob);
        // Every truncation of the header inside the section is an error, never a panic.
        let hlen = u32_at(&with, 12) as usize;
        let plain_hlen = u32_at(&plain, 12) as usize;
        for cut in plain_hlen + 1..hlen {
            let header = &with[PREFIX_LEN..PREFIX_LEN + cut];
            let mut b = Vec::new();
            b.extend_from_slice(&with[..12]);
            b.extend_from_slice(&(cut as u32).to_le_bytes());
            b.extend_from_slice(&crc32fast::hash(header).to_le_bytes());
            b.extend_from_slice(header);
            b.resize(align16(b.len() as u64) as usize, 0);
            b.extend_from_slice(t.data());
            assert!(parse(&b).is_err(), "header cut at {cut}");
        }
        // A contract that contradicts the network is refused when writing.
        let mut wrong = input;
        wrong.size += 1;
        assert!(matches!(
            write_with_contract(&cfg, &blob, Some((&wrong, &names))).unwrap_err(),
            TvbError::Contract(ContractError::Mismatch { field: "size", .. })
        ));
    }

    #[test]
    fn misaligned_buffers_are_an_error_not_ub() {
        let (blob, bytes) = file(&small());
        let buf = aligned(&[&[0u8][..], &bytes[..]].concat());
        let view = &bytemuck::cast_slice::<u128, u8>(&buf)[1..bytes.len() + 1];
        let t = parse(view).unwrap();
        assert_eq!(t.weights().unwrap_err(), TvbError::Misaligned);
        assert_eq!(t.to_blob(), blob);
    }

    #[test]
    fn header_errors_are_specific() {
        let (_, bytes) = file(&small());
        let mut b = bytes.clone();
        b[0] = b'X';
        assert_eq!(parse(&b).unwrap_err(), TvbError::BadMagic);
        let mut b = bytes.clone();
        b[8] = 2;
        assert_eq!(parse(&b).unwrap_err(), TvbError::Version { found: 2 });
        let mut b = bytes.clone();
        b[12..16].copy_from_slice(&(MAX_HEADER + 1).to_le_bytes());
        assert!(matches!(
            parse(&b).unwrap_err(),
            TvbError::HeaderTooLarge { .. }
        ));
        let mut b = bytes.clone();
        b.push(0);
        assert!(matches!(parse(&b).unwrap_err(), TvbError::DataLen { .. }));
        let mut b = bytes.clone();
        let last = b.len() - 1;
        b[last] ^= 1;
        assert_eq!(parse(&b).unwrap_err(), TvbError::DataCrc);
        assert!(matches!(
            parse(&bytes[..bytes.len() - 4]).unwrap_err(),
            TvbError::Truncated { field: "data", .. }
        ));
    }

    #[test]
    fn a_table_that_disagrees_with_the_config_is_refused() {
        // Same bytes, but rewrite the header's class count: the head shape no longer matches.
        let cfg = small();
        let (blob, _) = file(&cfg);
        let other = cfg.with_num_classes(11);
        let mut h: Vec<u8> = postcard::to_allocvec(&Header {
            config: other,
            tensors: params::folded_tensor_count(&other) as u32,
            data_len: blob.len() as u64 * 4,
            data_crc32: 0,
        })
        .unwrap();
        let mut offset = 0u64;
        params::for_each_folded(&cfg, |name, shape| {
            let mut dims = [0u32; 4];
            for (d, s) in dims.iter_mut().zip(shape) {
                *d = *s as u32;
            }
            h.extend(
                postcard::to_allocvec(&Entry {
                    name,
                    ndim: shape.len() as u8,
                    dims,
                    offset,
                })
                .unwrap(),
            );
            offset += params::align_up(params::numel(shape)) as u64 * 4;
        });
        let mut b = Vec::new();
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.extend_from_slice(&(h.len() as u32).to_le_bytes());
        b.extend_from_slice(&crc32fast::hash(&h).to_le_bytes());
        b.extend_from_slice(&h);
        let err = parse(&b).unwrap_err();
        assert!(
            matches!(err, TvbError::TensorShape { ref name, .. } if name.as_str() == "head.weight"),
            "{err:?}"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let _ = parse(&bytes);
            let mut with_magic = MAGIC.to_vec();
            with_magic.extend_from_slice(&VERSION.to_le_bytes());
            with_magic.extend_from_slice(&bytes);
            prop_assert!(parse(&with_magic).is_err());
        }

        /// Mutated headers with a recomputed crc reach the postcard decoder and the table
        /// checks: never a panic, and whatever parses is internally consistent.
        #[test]
        fn mutated_headers_with_valid_crc_never_panic(
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
            cut in any::<usize>(),
        ) {
            let (_, bytes) = file(&small());
            let hlen = u32_at(&bytes, 12) as usize;
            let mut header = bytes[PREFIX_LEN..PREFIX_LEN + hlen].to_vec();
            for (pos, val) in &edits {
                let i = pos % header.len();
                header[i] = *val;
            }
            // Sometimes also shorten the header.
            if cut % 3 == 0 {
                header.truncate(cut % (header.len() + 1));
            }
            let mut b = Vec::new();
            b.extend_from_slice(&bytes[..12]);
            b.extend_from_slice(&(header.len() as u32).to_le_bytes());
            b.extend_from_slice(&crc32fast::hash(&header).to_le_bytes());
            b.extend_from_slice(&header);
            b.resize(align16(b.len() as u64) as usize, 0);
            b.extend_from_slice(&bytes[bytes.len() - (bytes.len() - align16((PREFIX_LEN + hlen) as u64) as usize)..]);
            if let Ok(t) = parse(&b) {
                prop_assert_eq!(t.data().len(), params::folded_blob_len(t.config()) * 4);
                prop_assert_eq!(t.to_blob().len(), params::folded_blob_len(t.config()));
            }
        }

        #[test]
        fn every_truncation_is_an_error(cut in 0usize..1_000_000) {
            let (_, bytes) = file(&small());
            let cut = cut % bytes.len();
            prop_assert!(parse(&bytes[..cut]).is_err());
        }

        #[test]
        fn every_single_bit_flip_is_an_error(pos in 0usize..1_000_000, bit in 0u8..8) {
            let (_, mut bytes) = file(&small());
            let pos = pos % bytes.len();
            bytes[pos] ^= 1 << bit;
            prop_assert!(parse(&bytes).is_err());
        }
    }
}
