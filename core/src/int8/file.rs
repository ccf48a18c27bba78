//! The int8 model file: a `.tvb` whose format version is [`VERSION`] (5), parsed in place with
//! no allocator. Version-1 files are f32 models ([`crate::tvb`]); [`crate::tvb::kind`] tells
//! the two apart from the first 12 bytes. Versions 2 to 4 were earlier int8 layouts (2:
//! multipliers as two `i32`, matrix weights unflipped; 3: GELU on Q12 through a multiplier
//! where version 4 has a table; 4: matrix rows one after the other, where version 5 stores
//! them in word-interleaved pairs): such files are refused with [`FileError::Outdated`], which
//! says to quantise the model again.
//!
//! # Layout (all integers little-endian)
//!
//! ```text
//! +----------------------------+ 0
//! | magic  "TINYVITB"  8 bytes |
//! | version          u32       |   = 4 (int8)
//! | header length H  u32       |   <= 64 KiB
//! | header crc32     u32       |   crc32 (IEEE) of the H header bytes
//! +----------------------------+ 20
//! | header, postcard, H bytes: |
//! |   config      ModelConfig  |
//! |   input_scale f32          |   real = i8 input * input_scale (host helpers only)
//! |   logit_scale f32          |   real = i32 logit * logit_scale (host helpers only)
//! |   res_max     u16          |   residual stream bound, 127 or 32767 (1..=32767)
//! |   items       u32          |   = layout::item_count(config)
//! |   data_len    u64 (bytes)  |   = layout::data_len(config)
//! |   data_crc32  u32          |
//! |   optional: input contract |   [`crate::contract`] section (size, channels, mean, std,
//! |                            |   interpolation, crop, class names), as in f32 files
//! +----------------------------+ 20 + H (nothing else in the header)
//! | zero padding to 16 bytes   |
//! +----------------------------+ D = align16(20 + H)
//! | data: the items of         |   each padded to 4 bytes, see `layout`
//! | layout::for_each_item      |
//! +----------------------------+ D + data_len = end of file (nothing may follow)
//! ```
//!
//! There is no tensor table: the layout is a function of the config, so a file cannot name a
//! tensor the engine does not expect.
//!
//! # Safety limits
//! Checked before use, in this order: the prefix, the header length (64 KiB cap) against the
//! file, the header crc, the header decode, the config
//! ([`ModelConfig::validate`]), the optional contract section with nothing trailing and the engine's own size limits ([`super::engine::arena_plan`]),
//! `res_max`, the scales, the item count, the data length (overflow-checked) against the file
//! length, zero padding, the data crc, and every multiplier's shift (`1..=62`). Any failure is a
//! [`FileError`]; parsing never panics and never reads out of bounds. No alignment is needed:
//! `i32` values are read with `from_le_bytes`.

use serde::{Deserialize, Serialize};

use super::layout::{self, Kind};
use super::ops::{Multipliers, MAX_SHIFT, MIN_SHIFT};
use crate::config::{ConfigError, ModelConfig};
#[cfg(feature = "std")]
use crate::contract;
use crate::contract::{ClassNames, ContractError, InputContract};
use crate::engine::EngineError;
use crate::params::Name;
#[cfg(feature = "std")]
use crate::tvb::{align16, MAGIC, PREFIX_LEN};
use crate::tvb::{contract_tail, data_region, read_prefix, Prefix, Tail};

/// The format version of int8 files.
pub const VERSION: u32 = 5;
/// Earlier int8 format versions: recognised as int8 files ([`crate::tvb::kind`]) and refused
/// by [`parse`] with [`FileError::Outdated`]. Version 2 stored each multiplier as two `i32`
/// (8 bytes; now 5) and matrix weights without the sign flip of `layout::Kind::Mat`; version 3
/// requantised GELU inputs per channel to Q12 and outputs by a multiplier (the items that are
/// GELU tables now, see `layout`); version 4 stored matrix rows one after the other (version 5
/// interleaves them in pairs, `layout::Kind::Mat`).
pub const OUTDATED_VERSIONS: [u32; 3] = [2, 3, 4];
/// Largest header accepted, in bytes.
pub const MAX_HEADER: u32 = 1 << 16;

/// Why bytes are not a usable int8 model file.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum FileError {
    /// The file ends before a field it must hold.
    Truncated {
        field: &'static str,
        needed: u64,
        got: u64,
    },
    /// The first 8 bytes are not `TINYVITB`.
    BadMagic,
    /// Not version 4 (version 1 is an f32 file: [`crate::tvb::parse`]).
    Version { found: u32 },
    /// An earlier int8 layout ([`OUTDATED_VERSIONS`]): quantise the f32 model again.
    Outdated { found: u32 },
    /// The header length exceeds [`MAX_HEADER`].
    HeaderTooLarge { len: u32 },
    /// The header bytes do not match their crc32.
    HeaderCrc,
    /// The header does not decode.
    Decode,
    /// Bytes follow the header's last field.
    TrailingHeader,
    /// The input contract section is unusable.
    Contract(ContractError),
    /// The config in the header is invalid.
    Config(ConfigError),
    /// The engine cannot run this config (sizes beyond its limits).
    Engine(EngineError),
    /// `res_max` is outside `1..=32767`.
    ResMax { found: u16 },
    /// A scale (named) is not a positive finite number.
    Scale { field: &'static str },
    /// The header's item count disagrees with the config.
    ItemCount { expected: u32, got: u32 },
    /// The data length disagrees with the config or the file length.
    DataLen { expected: u64, got: u64 },
    /// Padding bytes that must be zero are not.
    Padding,
    /// The data does not match its crc32.
    DataCrc,
    /// Multiplier `index` of item `item` has a shift outside `1..=62`.
    Shift { item: Name, index: u32 },
}

impl From<Tail> for FileError {
    fn from(t: Tail) -> Self {
        match t {
            Tail::Contract(e) => FileError::Contract(e),
            Tail::TrailingHeader => FileError::TrailingHeader,
            Tail::Truncated { needed, got } => FileError::Truncated {
                field: "data",
                needed,
                got,
            },
            Tail::DataLen { expected, got } => FileError::DataLen { expected, got },
            Tail::Padding => FileError::Padding,
            Tail::DataCrc => FileError::DataCrc,
        }
    }
}

impl core::fmt::Display for FileError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            FileError::Truncated { field, needed, got } => write!(
                f,
                "int8 tvb: file too short for `{field}`: needs {needed} bytes, has {got}"
            ),
            FileError::BadMagic => write!(f, "int8 tvb: bad magic (not a .tvb file)"),
            FileError::Version { found } => write!(
                f,
                "int8 tvb: format version {found} is not an int8 model (version {VERSION}); \
                 version 1 files are f32 models"
            ),
            FileError::Outdated { found } => write!(
                f,
                "int8 tvb: format version {found} is an earlier int8 layout that this build no \
                 longer reads (it reads version {VERSION}); quantise the f32 model again with \
                 `tinyvit quantize`"
            ),
            FileError::HeaderTooLarge { len } => {
                write!(f, "int8 tvb: header length {len} exceeds {MAX_HEADER}")
            }
            FileError::HeaderCrc => write!(f, "int8 tvb: header crc32 mismatch"),
            FileError::Decode => write!(f, "int8 tvb: header does not decode"),
            FileError::TrailingHeader => write!(f, "int8 tvb: bytes after the header fields"),
            FileError::Contract(e) => write!(f, "int8 tvb: input contract: {e}"),
            FileError::Config(e) => write!(f, "int8 tvb: {e}"),
            FileError::Engine(e) => write!(f, "int8 tvb: {e}"),
            FileError::ResMax { found } => {
                write!(f, "int8 tvb: header field `res_max` is {found}, not 1..=32767")
            }
            FileError::Scale { field } => {
                write!(f, "int8 tvb: header field `{field}` is not a positive number")
            }
            FileError::ItemCount { expected, got } => write!(
                f,
                "int8 tvb: header field `items` is {got}, the config needs {expected}"
            ),
            FileError::DataLen { expected, got } => {
                write!(f, "int8 tvb: data length {got} bytes, expected {expected}")
            }
            FileError::Padding => write!(f, "int8 tvb: non-zero padding"),
            FileError::DataCrc => write!(f, "int8 tvb: data crc32 mismatch (corrupted weights)"),
            FileError::Shift { item, index } => write!(
                f,
                "int8 tvb: item `{item}` multiplier {index} has a shift outside {MIN_SHIFT}..={MAX_SHIFT}"
            ),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for FileError {}

/// The postcard header.
#[derive(Serialize, Deserialize)]
struct Header {
    config: ModelConfig,
    input_scale: f32,
    logit_scale: f32,
    res_max: u16,
    items: u32,
    data_len: u64,
    data_crc32: u32,
}

/// A parsed int8 model, borrowing its bytes (RAM or flash).
#[derive(Clone, Copy, Debug)]
pub struct Model<'a> {
    config: ModelConfig,
    contract: Option<InputContract>,
    class_names: ClassNames<'a>,
    input_scale: f32,
    logit_scale: f32,
    res_max: i16,
    data: &'a [u8],
}

impl<'a> Model<'a> {
    /// The network.
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

    /// Real value of one unit of the `i8` input.
    pub fn input_scale(&self) -> f32 {
        self.input_scale
    }

    /// Real value of one unit of the `i32` logits.
    pub fn logit_scale(&self) -> f32 {
        self.logit_scale
    }

    /// Bound of the `i16` residual stream (127 emulates an int8 stream).
    pub fn res_max(&self) -> i16 {
        self.res_max
    }

    /// The data region (the items of [`layout::for_each_item`]).
    pub fn data(&self) -> &'a [u8] {
        self.data
    }
}

/// Parses and fully validates an int8 model file (see the module doc for every check).
pub fn parse(bytes: &[u8]) -> Result<Model<'_>, FileError> {
    let got = bytes.len() as u64;
    let (header, hend) = read_prefix(bytes, VERSION, MAX_HEADER).map_err(|e| match e {
        Prefix::Truncated { field, needed } => FileError::Truncated { field, needed, got },
        Prefix::BadMagic => FileError::BadMagic,
        Prefix::Version { found } if OUTDATED_VERSIONS.contains(&found) => {
            FileError::Outdated { found }
        }
        Prefix::Version { found } => FileError::Version { found },
        Prefix::HeaderTooLarge { len } => FileError::HeaderTooLarge { len },
        Prefix::HeaderCrc => FileError::HeaderCrc,
    })?;
    let (h, rest): (Header, &[u8]) =
        postcard::take_from_bytes(header).map_err(|_| FileError::Decode)?;
    let cfg = h.config;
    cfg.validate().map_err(FileError::Config)?;
    let (input, class_names) = contract_tail(rest, &cfg)?;
    super::engine::arena_plan(&cfg).map_err(FileError::Engine)?;
    if h.res_max == 0 || h.res_max > i16::MAX as u16 {
        return Err(FileError::ResMax { found: h.res_max });
    }
    for (field, v) in [
        ("input_scale", h.input_scale),
        ("logit_scale", h.logit_scale),
    ] {
        if !(v.is_finite() && v > 0.0) {
            return Err(FileError::Scale { field });
        }
    }
    let items = layout::item_count(&cfg) as u32;
    if h.items != items {
        return Err(FileError::ItemCount {
            expected: items,
            got: h.items,
        });
    }
    let expected = layout::data_len(&cfg) as u64;
    if h.data_len != expected {
        return Err(FileError::DataLen {
            expected,
            got: h.data_len,
        });
    }
    let data = data_region(bytes, hend, h.data_len, h.data_crc32)?;
    check_items(&cfg, data)?;
    Ok(Model {
        config: cfg,
        contract: input,
        class_names,
        input_scale: h.input_scale,
        logit_scale: h.logit_scale,
        res_max: h.res_max as i16,
        data,
    })
}

/// Checks every multiplier's shift and every item's padding (the data length is already
/// known to be exactly the layout's).
fn check_items(cfg: &ModelConfig, data: &[u8]) -> Result<(), FileError> {
    let mut pos = 0usize;
    let mut err = None;
    layout::for_each_item(cfg, |name, kind, len| {
        if err.is_some() {
            return;
        }
        let n = kind.bytes(len);
        let item = &data[pos..pos + n];
        let raw = match kind {
            Kind::I8 | Kind::Mat(_) => len,
            Kind::I32 => 4 * len,
            Kind::Mul => 5 * len,
        };
        if item[raw..].iter().any(|b| *b != 0) {
            err = Some(FileError::Padding);
        } else if kind == Kind::Mul {
            let m = Multipliers::new(item, len);
            for i in 0..len {
                let s = m.get(i).shift;
                if !(MIN_SHIFT..=MAX_SHIFT).contains(&s) {
                    err = Some(FileError::Shift {
                        item: Name::try_from(name).unwrap_or_default(),
                        index: i as u32,
                    });
                    break;
                }
            }
        }
        pos += n;
    });
    err.map_or(Ok(()), Err)
}

/// Writes an int8 model file with no contract section. `data` must be the items of
/// [`layout::for_each_item`] for `cfg`, as [`super::quantize`] produces them.
#[cfg(feature = "std")]
pub fn write(
    cfg: &ModelConfig,
    input_scale: f32,
    logit_scale: f32,
    res_max: u16,
    data: &[u8],
) -> Result<std::vec::Vec<u8>, FileError> {
    write_with_contract(cfg, input_scale, logit_scale, res_max, data, None)
}

/// [`write`], with the model's input contract and class names when given (the section f32
/// files carry, [`contract::encode_section`]).
#[cfg(feature = "std")]
pub fn write_with_contract(
    cfg: &ModelConfig,
    input_scale: f32,
    logit_scale: f32,
    res_max: u16,
    data: &[u8],
    contract: Option<(&InputContract, &[std::string::String])>,
) -> Result<std::vec::Vec<u8>, FileError> {
    let h = Header {
        config: *cfg,
        input_scale,
        logit_scale,
        res_max,
        items: layout::item_count(cfg) as u32,
        data_len: data.len() as u64,
        data_crc32: crc32fast::hash(data),
    };
    let mut header = postcard::to_allocvec(&h).map_err(|_| FileError::Decode)?;
    if let Some((input, names)) = contract {
        contract::encode_section(input, names, cfg, &mut header).map_err(FileError::Contract)?;
    }
    let mut out = std::vec::Vec::with_capacity(PREFIX_LEN + header.len() + 16 + data.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&header).to_le_bytes());
    out.extend_from_slice(&header);
    out.resize(align16(out.len() as u64) as usize, 0);
    out.extend_from_slice(data);
    // What is written must parse: the caller's data is checked like any file's.
    parse(&out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::int8::tests::small_file;
    use proptest::prelude::*;
    use std::vec::Vec;

    /// Rewrites the header of `bytes` (crc recomputed, data kept).
    fn with_header(bytes: &[u8], edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let hlen = crate::tvb::u32_at(bytes, 12) as usize;
        let mut header = bytes[PREFIX_LEN..PREFIX_LEN + hlen].to_vec();
        edit(&mut header);
        let dstart = align16((PREFIX_LEN + hlen) as u64) as usize;
        let mut b = Vec::new();
        b.extend_from_slice(&bytes[..12]);
        b.extend_from_slice(&(header.len() as u32).to_le_bytes());
        b.extend_from_slice(&crc32fast::hash(&header).to_le_bytes());
        b.extend_from_slice(&header);
        b.resize(align16(b.len() as u64) as usize, 0);
        b.extend_from_slice(&bytes[dstart..]);
        b
    }

    #[test]
    fn kinds_are_told_apart_and_the_f32_parser_refuses_int8() {
        let b = small_file();
        assert_eq!(crate::tvb::kind(&b), Ok(crate::tvb::Kind::Int8));
        assert_eq!(
            crate::tvb::parse(&b).unwrap_err(),
            crate::tvb::TvbError::Version { found: VERSION }
        );
        let mut f = b.clone();
        f[8] = 1;
        assert_eq!(crate::tvb::kind(&f), Ok(crate::tvb::Kind::F32));
        assert_eq!(parse(&f).unwrap_err(), FileError::Version { found: 1 });
        // An earlier int8 layout is still told to be int8, and refused by name.
        let mut old = b.clone();
        old[8..12].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(crate::tvb::kind(&old), Ok(crate::tvb::Kind::Int8));
        for v in OUTDATED_VERSIONS {
            old[8..12].copy_from_slice(&v.to_le_bytes());
            assert_eq!(crate::tvb::kind(&old), Ok(crate::tvb::Kind::Int8));
            let e = parse(&old).unwrap_err();
            assert_eq!(e, FileError::Outdated { found: v });
            assert!(
                e.to_string().contains("quantise the f32 model again"),
                "{e}"
            );
        }
        let mut newer = b.clone();
        newer[8..12].copy_from_slice(&(VERSION + 1).to_le_bytes());
        assert_eq!(
            parse(&newer).unwrap_err(),
            FileError::Version { found: VERSION + 1 }
        );
    }

    #[test]
    fn header_errors_are_specific() {
        let b = small_file();
        let m = parse(&b).unwrap();
        assert_eq!(m.data().len(), layout::data_len(m.config()));
        let mut x = b.clone();
        x[0] = b'X';
        assert_eq!(parse(&x).unwrap_err(), FileError::BadMagic);
        let mut x = b.clone();
        x[16] ^= 1;
        assert_eq!(parse(&x).unwrap_err(), FileError::HeaderCrc);
        let mut x = b.clone();
        x.push(0);
        assert!(matches!(parse(&x).unwrap_err(), FileError::DataLen { .. }));
        // A byte after the fields is read as a contract section, and refused by its tag.
        let x = with_header(&b, |h| h.push(0));
        assert_eq!(
            parse(&x).unwrap_err(),
            FileError::Contract(ContractError::Tag { found: 0 })
        );
        let mut x = b.clone();
        let last = x.len() - 1;
        x[last] ^= 1;
        assert_eq!(parse(&x).unwrap_err(), FileError::DataCrc);
    }

    #[test]
    fn a_bad_shift_is_named() {
        let b = small_file();
        let m = parse(&b).unwrap();
        // The first multiplier item is `patch_embed.seq.0.mult`, after the conv's weight and
        // bias; give its channel 2 the shift 63 and fix the data crc.
        let cfg = *m.config();
        let mut pos = 0;
        let mut at = None;
        layout::for_each_item(&cfg, |name, kind, len| {
            if at.is_none() && kind == Kind::Mul {
                at = Some((Name::try_from(name).unwrap(), pos));
            }
            pos += kind.bytes(len);
        });
        let (name, off) = at.unwrap();
        assert_eq!(name.as_str(), "patch_embed.seq.0.mult");
        let dstart = b.len() - m.data().len();
        let mut x = b.clone();
        // The multipliers' shifts follow their numerators: half = embed_dims[0] / 2 of each.
        let half = cfg.embed_dims[0] as usize / 2;
        let s = dstart + off + 4 * half + 2;
        x[s] = 63;
        let crc = crc32fast::hash(&x[dstart..]);
        let x = with_header(&x, |h| {
            let n = h.len();
            // data_crc32 is the header's last field, a postcard varint: re-encode the header.
            let (mut hd, _): (Header, _) = postcard::take_from_bytes(&h[..n]).unwrap();
            hd.data_crc32 = crc;
            *h = postcard::to_allocvec(&hd).unwrap();
        });
        assert_eq!(
            parse(&x).unwrap_err(),
            FileError::Shift {
                item: name,
                index: 2
            }
        );
    }

    #[test]
    fn every_truncation_and_every_byte_flip_is_an_error() {
        let b = small_file();
        for cut in 0..b.len() {
            assert!(parse(&b[..cut]).is_err(), "cut {cut}");
        }
        let mut x = b.clone();
        for i in 0..b.len() {
            for bit in [0u8, 3, 7] {
                x[i] ^= 1 << bit;
                assert!(parse(&x).is_err(), "flip {i}.{bit}");
                x[i] ^= 1 << bit;
            }
        }
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

        /// Mutated headers with a valid crc reach the decoder and every later check: never a
        /// panic, and whatever parses runs or is refused by the engine without panicking.
        #[test]
        fn mutated_headers_with_valid_crc_never_panic(
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        ) {
            let b = small_file();
            let x = with_header(&b, |h| {
                for (pos, val) in &edits {
                    let i = pos % h.len();
                    h[i] = *val;
                }
            });
            if let Ok(m) = parse(&x) {
                let cfg = m.config();
                let n = crate::engine::input_len(cfg).unwrap_or(0).min(1 << 16);
                let words = super::super::arena_len(cfg).unwrap_or(0).min(1 << 20);
                let mut arena = std::vec![0i32; words];
                let mut l = std::vec![0i32; (cfg.num_classes as usize).min(1 << 16)];
                let _ = super::super::run(&m, &std::vec![1i8; n], &mut arena, &mut l);
            }
        }
    }

    /// The contract section round-trips through an int8 file; a valid section followed by one
    /// more byte is refused as trailing; a file without it has the same bytes as before.
    #[test]
    fn contract_section_round_trips() {
        let b = small_file();
        let m = parse(&b).unwrap();
        let cfg = *m.config();
        assert!(m.contract().is_none() && m.class_names().is_empty());
        let dstart = align16((PREFIX_LEN + crate::tvb::u32_at(&b, 12) as usize) as u64) as usize;
        let data = &b[dstart..];
        let again = write(&cfg, m.input_scale(), m.logit_scale(), 32767, data).unwrap();
        let input = InputContract::for_model(&cfg, [0.5; 3], [0.25; 3]);
        let names: Vec<std::string::String> = (0..cfg.num_classes)
            .map(|i| std::format!("class {i}"))
            .collect();
        let with = write_with_contract(
            &cfg,
            m.input_scale(),
            m.logit_scale(),
            m.res_max() as u16,
            data,
            Some((&input, &names)),
        )
        .unwrap();
        let w = parse(&with).unwrap();
        assert_eq!(w.contract(), Some(&input));
        assert_eq!(w.class_names().iter().count(), names.len());
        assert_eq!(w.class_names().iter().nth(1), Some("class 1"));
        assert_eq!(w.data(), m.data());
        let mut section = Vec::new();
        contract::encode_section(&input, &names, &cfg, &mut section).unwrap();
        let x = with_header(&b, |h| {
            h.extend_from_slice(&section);
            h.push(0);
        });
        assert_eq!(parse(&x).unwrap_err(), FileError::TrailingHeader);
        if m.res_max() == 32767 {
            assert_eq!(again, b);
        }
    }
}
