//! The input contract of a model: what a caller must do to an image before the network sees
//! it, and what the outputs mean. One owner for every file that carries a model: checkpoints
//! record it as JSON metadata (`tinyvit.input`), `.tvb` files (f32 and int8) in an optional
//! section at the end of their header ([`decode_section`], [`encode_section`]).
//!
//! - input size and channels (always those of the network);
//! - mean and std of the normalisation `(v / 255 - mean) / std` (grey models use channel 0);
//! - interpolation and crop fraction of the evaluation transform
//!   ([`crate::aug::eval_transform`]);
//! - class names, one per output, or none.
//!
//! # Section layout (postcard, inside a header)
//!
//! ```text
//! tag           u8      = 1 (SECTION_TAG)
//! input         InputContract (size u32, channels u32, mean [f32;3], std [f32;3],
//!                              interpolation enum, crop_fraction f32)
//! class_names   str     names joined by '\n'; empty = no names
//! ```
//!
//! # Safety limits
//! Decoding borrows the names from the header (no allocation) and checks everything before use:
//! the tag, finite and positive values, the size and channels against the network, each name
//! (1 to [`MAX_CLASS_NAME`] bytes, no control characters), the total against
//! [`MAX_CLASS_NAMES_BYTES`] and the count against the class count. Every loop is bounded by
//! the section's length; nothing panics on any bytes.

use serde::{Deserialize, Serialize};

use crate::aug::{Interpolation, EVAL_CROP_PCT};
use crate::config::{bounds, ModelConfig};

/// First byte of a contract section; another value is an unknown (newer) section.
pub const SECTION_TAG: u8 = 1;
/// Longest class name, in bytes.
pub const MAX_CLASS_NAME: usize = 256;
/// Most bytes of all class names together (ImageNet-22k's 21,841 names take about 400 KiB).
pub const MAX_CLASS_NAMES_BYTES: usize = 768 * 1024;

/// The preprocessing a model expects (every field is checked by [`InputContract::validate`]).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct InputContract {
    /// Input side in pixels (square inputs); equals the network's `img_size`.
    pub size: u32,
    /// Input channels (1 or 3); equals the network's `in_chans`.
    pub channels: u32,
    /// Normalisation mean per channel (0..1 scale).
    pub mean: [f32; 3],
    /// Normalisation standard deviation per channel (0..1 scale).
    pub std: [f32; 3],
    /// Resampling filter of the evaluation resize.
    pub interpolation: Interpolation,
    /// Centre-crop fraction of the evaluation transform, in (0, 1].
    pub crop_fraction: f32,
}

/// Why a contract is unusable.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum ContractError {
    /// A field is out of range (named, with the reason).
    Field {
        field: &'static str,
        reason: &'static str,
    },
    /// The contract disagrees with the network it comes with.
    Mismatch {
        field: &'static str,
        network: u32,
        contract: u32,
    },
    /// The number of class names is not the class count.
    ClassCount { names: u32, classes: u32 },
    /// Class name `index` is unusable.
    ClassName { index: u32, reason: &'static str },
    /// The section does not decode.
    Decode,
    /// The section starts with an unknown tag.
    Tag { found: u8 },
}

impl core::fmt::Display for ContractError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ContractError::Field { field, reason } => {
                write!(f, "input contract: field `{field}` {reason}")
            }
            ContractError::Mismatch {
                field,
                network,
                contract,
            } => write!(
                f,
                "input contract: `{field}` is {contract}, the network's is {network}"
            ),
            ContractError::ClassCount { names, classes } => write!(
                f,
                "input contract: {names} class names for {classes} classes"
            ),
            ContractError::ClassName { index, reason } => {
                write!(f, "input contract: class name {index} {reason}")
            }
            ContractError::Decode => write!(f, "input contract: section does not decode"),
            ContractError::Tag { found } => write!(
                f,
                "input contract: unknown section tag {found} (this build reads {SECTION_TAG})"
            ),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for ContractError {}

fn field(field: &'static str, reason: &'static str) -> ContractError {
    ContractError::Field { field, reason }
}

impl InputContract {
    /// The contract of `cfg` normalised with `mean` and `std`, viewed by the project's
    /// evaluation transform (bicubic, [`EVAL_CROP_PCT`]).
    pub fn for_model(cfg: &ModelConfig, mean: [f32; 3], std: [f32; 3]) -> Self {
        InputContract {
            size: cfg.img_size,
            channels: cfg.in_chans,
            mean,
            std,
            interpolation: Interpolation::Bicubic,
            crop_fraction: EVAL_CROP_PCT,
        }
    }

    /// Checks every field on its own.
    pub fn validate(&self) -> Result<(), ContractError> {
        if self.size == 0 || self.size > bounds::IMG_SIZE {
            return Err(field("size", "must be 1..=4096"));
        }
        if self.channels != 1 && self.channels != 3 {
            return Err(field("channels", "must be 1 or 3"));
        }
        if !self.mean.iter().all(|m| m.is_finite()) {
            return Err(field("mean", "must be finite"));
        }
        if !self.std.iter().all(|s| s.is_finite() && *s > 0.0) {
            return Err(field("std", "must be finite and positive"));
        }
        if !(self.crop_fraction > 0.0 && self.crop_fraction <= 1.0) {
            return Err(field("crop_fraction", "must be in (0, 1]"));
        }
        Ok(())
    }

    /// [`Self::validate`], and the size and channels are the network's.
    pub fn check_model(&self, cfg: &ModelConfig) -> Result<(), ContractError> {
        self.validate()?;
        if self.size != cfg.img_size {
            return Err(ContractError::Mismatch {
                field: "size",
                network: cfg.img_size,
                contract: self.size,
            });
        }
        if self.channels != cfg.in_chans {
            return Err(ContractError::Mismatch {
                field: "channels",
                network: cfg.in_chans,
                contract: self.channels,
            });
        }
        Ok(())
    }
}

/// Checks one class name: 1 to [`MAX_CLASS_NAME`] bytes, no control characters (so no '\n').
pub fn check_class_name(index: u32, name: &str) -> Result<(), ContractError> {
    if name.is_empty() {
        return Err(ContractError::ClassName {
            index,
            reason: "is empty",
        });
    }
    if name.len() > MAX_CLASS_NAME {
        return Err(ContractError::ClassName {
            index,
            reason: "is longer than 256 bytes",
        });
    }
    if name.chars().any(char::is_control) {
        return Err(ContractError::ClassName {
            index,
            reason: "holds a control character",
        });
    }
    Ok(())
}

/// Class names joined by '\n', borrowed from a file (empty: the file names no classes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassNames<'a> {
    joined: &'a str,
}

impl<'a> ClassNames<'a> {
    /// Checks `joined` as the names of `classes` outputs (or none).
    pub fn parse(joined: &'a str, classes: u32) -> Result<Self, ContractError> {
        if joined.is_empty() {
            return Ok(ClassNames { joined });
        }
        if joined.len() > MAX_CLASS_NAMES_BYTES {
            return Err(field("class_names", "exceed 768 KiB"));
        }
        let mut count = 0u32;
        for name in joined.split('\n') {
            check_class_name(count, name)?;
            count = count.saturating_add(1);
        }
        if count != classes {
            return Err(ContractError::ClassCount {
                names: count,
                classes,
            });
        }
        Ok(ClassNames { joined })
    }

    /// Whether the file names no classes.
    pub fn is_empty(&self) -> bool {
        self.joined.is_empty()
    }

    /// The names, in class order.
    pub fn iter(&self) -> impl Iterator<Item = &'a str> {
        let j = self.joined;
        j.split('\n').filter(move |_| !j.is_empty())
    }

    /// The names joined by '\n'.
    pub fn joined(&self) -> &'a str {
        self.joined
    }
}

/// The section as postcard sees it.
#[derive(Serialize, Deserialize)]
struct Section<'a> {
    tag: u8,
    input: InputContract,
    class_names: &'a str,
}

/// Decodes a contract section at the start of `bytes` for network `cfg`; returns the contract,
/// the class names and the bytes after the section.
pub fn decode_section<'a>(
    bytes: &'a [u8],
    cfg: &ModelConfig,
) -> Result<(InputContract, ClassNames<'a>, &'a [u8]), ContractError> {
    match bytes.first() {
        Some(&SECTION_TAG) => {}
        Some(&found) => return Err(ContractError::Tag { found }),
        None => return Err(ContractError::Decode),
    }
    let (s, rest): (Section<'a>, &'a [u8]) =
        postcard::take_from_bytes(bytes).map_err(|_| ContractError::Decode)?;
    s.input.check_model(cfg)?;
    let names = ClassNames::parse(s.class_names, cfg.num_classes)?;
    Ok((s.input, names, rest))
}

/// Appends the contract section of `input` and `names` (checked as [`decode_section`] will)
/// for network `cfg` to `out`: what every model file calls to carry its contract.
#[cfg(feature = "std")]
pub fn encode_section(
    input: &InputContract,
    names: &[std::string::String],
    cfg: &ModelConfig,
    out: &mut std::vec::Vec<u8>,
) -> Result<(), ContractError> {
    input.check_model(cfg)?;
    let joined = names.join("\n");
    ClassNames::parse(&joined, cfg.num_classes)?;
    let s = Section {
        tag: SECTION_TAG,
        input: *input,
        class_names: &joined,
    };
    let bytes = postcard::to_allocvec(&s).map_err(|_| ContractError::Decode)?;
    out.extend_from_slice(&bytes);
    Ok(())
}

#[cfg(feature = "std")]
fn default_interpolation() -> Interpolation {
    Interpolation::Bicubic
}

#[cfg(feature = "std")]
fn default_crop() -> f32 {
    EVAL_CROP_PCT
}

/// The whole contract, owned: how checkpoints record it (JSON metadata `tinyvit.input`).
///
/// Files written before the contract grew hold only `mean` and `std`; the other fields then
/// take their defaults (size and channels 0, meaning the network's; bicubic; [`EVAL_CROP_PCT`];
/// no names) and [`Contract::resolve`] fills them from the network.
#[cfg(feature = "std")]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Contract {
    #[serde(default)]
    pub size: u32,
    #[serde(default)]
    pub channels: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    #[serde(default = "default_interpolation")]
    pub interpolation: Interpolation,
    #[serde(default = "default_crop")]
    pub crop_fraction: f32,
    #[serde(default)]
    pub class_names: std::vec::Vec<std::string::String>,
}

#[cfg(feature = "std")]
impl Default for Contract {
    /// No normalisation (mean 0, std 1), the project's evaluation transform, the network's
    /// size and channels, no names.
    fn default() -> Self {
        Contract {
            size: 0,
            channels: 0,
            mean: [0.0; 3],
            std: [1.0; 3],
            interpolation: Interpolation::Bicubic,
            crop_fraction: EVAL_CROP_PCT,
            class_names: std::vec::Vec::new(),
        }
    }
}

#[cfg(feature = "std")]
impl Contract {
    /// The owned form of a decoded section.
    pub fn from_parts(input: &InputContract, names: ClassNames<'_>) -> Self {
        Contract {
            size: input.size,
            channels: input.channels,
            mean: input.mean,
            std: input.std,
            interpolation: input.interpolation,
            crop_fraction: input.crop_fraction,
            class_names: names.iter().map(std::string::String::from).collect(),
        }
    }

    /// The fixed-size part.
    pub fn input(&self) -> InputContract {
        InputContract {
            size: self.size,
            channels: self.channels,
            mean: self.mean,
            std: self.std,
            interpolation: self.interpolation,
            crop_fraction: self.crop_fraction,
        }
    }

    /// Fills an unknown (0) size and channels from `cfg`, then checks the whole contract
    /// against it.
    pub fn resolve(mut self, cfg: &ModelConfig) -> Result<Self, ContractError> {
        if self.size == 0 {
            self.size = cfg.img_size;
        }
        if self.channels == 0 {
            self.channels = cfg.in_chans;
        }
        self.input().check_model(cfg)?;
        if !self.class_names.is_empty() {
            let joined = self.class_names.join("\n");
            ClassNames::parse(&joined, cfg.num_classes)?;
        }
        Ok(self)
    }

    /// The name of class `i`, when the contract names classes.
    pub fn class_name(&self, i: usize) -> Option<&str> {
        self.class_names.get(i).map(|s| s.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::{String, ToString};
    use std::vec::Vec;

    fn cfg() -> ModelConfig {
        ModelConfig::preset("tiny_vit_mcu_m4").unwrap()
    }

    fn names(n: u32) -> Vec<String> {
        (0..n).map(|i| std::format!("class {i}")).collect()
    }

    #[test]
    fn section_round_trips_and_leaves_the_rest() {
        let c = cfg();
        let input = InputContract::for_model(&c, [0.5; 3], [0.25; 3]);
        let mut out = Vec::new();
        encode_section(&input, &names(c.num_classes), &c, &mut out).unwrap();
        out.extend_from_slice(b"tail");
        let (got, n, rest) = decode_section(&out, &c).unwrap();
        assert_eq!(got, input);
        assert_eq!(n.iter().count() as u32, c.num_classes);
        assert_eq!(n.iter().nth(3), Some("class 3"));
        assert_eq!(rest, b"tail");
        let mut none = Vec::new();
        encode_section(&input, &[], &c, &mut none).unwrap();
        let (_, n, rest) = decode_section(&none, &c).unwrap();
        assert!(n.is_empty() && n.iter().next().is_none() && rest.is_empty());
    }

    /// Every truncation and every single-byte change of a section is an error or a valid
    /// contract, never a panic.
    #[test]
    fn damaged_sections_never_panic() {
        let c = cfg();
        let input = InputContract::for_model(&c, [0.5; 3], [0.25; 3]);
        let mut out = Vec::new();
        encode_section(&input, &names(c.num_classes), &c, &mut out).unwrap();
        for len in 0..out.len() {
            assert!(decode_section(&out[..len], &c).is_err(), "prefix {len}");
        }
        for i in 0..out.len() {
            for v in [0u8, 0x0a, 0x7f, 0xff] {
                let mut b = out.clone();
                b[i] = v;
                if let Ok((got, _, _)) = decode_section(&b, &c) {
                    assert!(got.check_model(&c).is_ok());
                }
            }
        }
        assert_eq!(
            decode_section(&[2, 0], &c).unwrap_err(),
            ContractError::Tag { found: 2 }
        );
    }

    #[test]
    fn contract_checks_name_the_field() {
        let c = cfg();
        let good = InputContract::for_model(&c, [0.5; 3], [0.25; 3]);
        let mut bad = good;
        bad.size = 224;
        assert_eq!(
            bad.check_model(&c).unwrap_err(),
            ContractError::Mismatch {
                field: "size",
                network: c.img_size,
                contract: 224
            }
        );
        bad = good;
        bad.std[1] = 0.0;
        assert!(bad.validate().unwrap_err().to_string().contains("`std`"));
        bad = good;
        bad.crop_fraction = f32::NAN;
        assert!(bad.validate().is_err());
        bad = good;
        bad.channels = 2;
        assert!(bad.validate().is_err());
        let mut out = Vec::new();
        assert_eq!(
            encode_section(&good, &names(3), &c, &mut out).unwrap_err(),
            ContractError::ClassCount {
                names: 3,
                classes: c.num_classes
            }
        );
        let mut n = names(c.num_classes);
        n[4] = "a\nb".to_string();
        assert!(encode_section(&good, &n, &c, &mut out).is_err());
        n[4] = String::new();
        assert!(encode_section(&good, &n, &c, &mut out).is_err());
        n[4] = "x".repeat(MAX_CLASS_NAME + 1);
        assert!(encode_section(&good, &n, &c, &mut out).is_err());
    }

    #[test]
    fn old_json_resolves_from_the_network() {
        let c = cfg();
        let old: Contract =
            serde_json::from_str(r#"{"mean":[0.5,0.5,0.5],"std":[0.5,0.5,0.5]}"#).unwrap();
        let r = old.resolve(&c).unwrap();
        assert_eq!(r.size, c.img_size);
        assert_eq!(r.channels, c.in_chans);
        assert_eq!(r.crop_fraction, EVAL_CROP_PCT);
        assert_eq!(r.interpolation, Interpolation::Bicubic);
        let full = Contract {
            class_names: names(c.num_classes),
            ..r.clone()
        };
        let js = serde_json::to_string(&full).unwrap();
        let back: Contract = serde_json::from_str(&js).unwrap();
        assert_eq!(back, full);
        assert_eq!(back.class_name(2), Some("class 2"));
        let wrong = Contract { size: 99, ..r };
        assert!(wrong.resolve(&c).is_err());
    }
}
