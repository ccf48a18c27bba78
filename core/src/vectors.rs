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
//!         40      u64 logits_hash     FNV-1a 64 of the logits' f32 bits, NaNs canonical (2, 3);
//!                                     for an int8 model, of its `i32` logits ([`Int8`])
//!         48      cfg_len bytes       postcard `tinyvit_core::aug::AugConfig`, zero-padded to 4
//!                                     (kind 3 uses its mean/std; kind 4 its size, interpolation,
//!                                     mean/std, with crop_pct = EVAL_CROP_PCT)
//!         ..      w*h*c bytes         source pixels, HWC, zero-padded to 4 (none with PATTERN)
//! ```
//!
//! A file that is short, of another version, or whose record lengths disagree with their
//! contents is a [`VectorError`] naming the record and field, never a panic.

use core::fmt;

use crate::aug::{self, AugConfig, Fnv64, ImageMut, ImageRef};
use crate::engine::{self, EngineError, Weights};

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

// ---------------------------------------------------------------------------------------------
// What a vector means: the one definition of replay, run by the firmware on the device and by
// the vector maker on the host (which stores what it computes as the expected values).
// ---------------------------------------------------------------------------------------------

/// The bit pattern every NaN is hashed as in [`logits_hash`]: NaN payloads differ between x86
/// and Arm and mean nothing.
pub const CANONICAL_NAN: u32 = 0x7fc0_0000;

/// FNV-1a 64 over the little-endian bit patterns of `logits`, every NaN hashed as
/// [`CANONICAL_NAN`]: two runs agree only when every other value is bit-identical.
pub fn logits_hash(logits: &[f32]) -> u64 {
    let mut h = Fnv64::new();
    for &v in logits {
        let bits = if v.is_nan() {
            CANONICAL_NAN
        } else {
            v.to_bits()
        };
        h = h.bytes(&bits.to_le_bytes());
    }
    h.finish()
}

/// Index of the largest logit, the lowest index on ties. Plain `>` comparisons, which are false
/// with a NaN on either side: a NaN later in the slice is skipped, one that leads stays (the
/// device and the host agree either way). An empty slice gives 0.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in logits.iter().enumerate() {
        if *x > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// A model a replay runs: the one place an engine is called. [`Exact`] is the bit-exact f32
/// engine; another engine (int8) is another implementation.
pub trait Classifier {
    /// The input the model takes: `(img_size, in_chans)`.
    fn input_shape(&self) -> (u32, u32);
    /// Runs the model on a normalised `[C, H, W]` input and returns its logits.
    fn classify(&mut self, input: &[f32]) -> Result<&[f32], EngineError>;
    /// The hash a replay stores for the last [`Classifier::classify`]: by default `None`, and
    /// the replay hashes the returned f32 logits ([`logits_hash`]); an engine whose own output
    /// is not f32 hashes that instead ([`Int8`]: its `i32` logits).
    fn native_hash(&self) -> Option<u64> {
        None
    }
}

/// FNV-1a 64 over the little-endian bytes of `i32` logits (the int8 engine's output).
pub fn int_logits_hash(logits: &[i32]) -> u64 {
    let mut h = Fnv64::new();
    for v in logits {
        h = h.bytes(&v.to_le_bytes());
    }
    h.finish()
}

/// The int8 engine ([`crate::int8::run`]) over a parsed model and borrowed buffers. The
/// normalised input is quantised with the model's input scale ([`crate::int8::quantize_input`],
/// before the integer forward pass); the replay hashes the `i32` logits themselves
/// ([`int_logits_hash`]), so host and device agree only when every logit is the same integer.
/// The f32 logits it returns (for the class) are the `i32` ones times the logit scale.
#[derive(Debug)]
pub struct Int8<'w, 'b> {
    model: &'b crate::int8::Model<'w>,
    input: &'b mut [i8],
    arena: &'b mut [i32],
    logits: &'b mut [i32],
    real: &'b mut [f32],
}

impl<'w, 'b> Int8<'w, 'b> {
    /// Checks that the buffers fit the model: `input` of the input's length, `arena` of at least
    /// [`crate::int8::arena_len`] words, `logits` and `real` of the class count.
    pub fn new(
        model: &'b crate::int8::Model<'w>,
        input: &'b mut [i8],
        arena: &'b mut [i32],
        logits: &'b mut [i32],
        real: &'b mut [f32],
    ) -> Result<Self, EngineError> {
        let cfg = model.config();
        let needed = crate::int8::arena_len(cfg)?;
        if arena.len() < needed {
            return Err(EngineError::ArenaTooSmall {
                needed,
                got: arena.len(),
            });
        }
        let n_in = engine::input_len(cfg)?;
        if input.len() != n_in {
            return Err(EngineError::InputLen {
                expected: n_in,
                got: input.len(),
            });
        }
        let classes = cfg.num_classes as usize;
        for got in [logits.len(), real.len()] {
            if got != classes {
                return Err(EngineError::LogitsLen {
                    expected: classes,
                    got,
                });
            }
        }
        Ok(Int8 {
            model,
            input,
            arena,
            logits,
            real,
        })
    }
}

impl Classifier for Int8<'_, '_> {
    fn input_shape(&self) -> (u32, u32) {
        let c = self.model.config();
        (c.img_size, c.in_chans)
    }

    fn classify(&mut self, input: &[f32]) -> Result<&[f32], EngineError> {
        if input.len() != self.input.len() {
            return Err(EngineError::InputLen {
                expected: self.input.len(),
                got: input.len(),
            });
        }
        crate::int8::quantize_input(self.model, input, self.input);
        crate::int8::run(self.model, self.input, self.arena, self.logits)?;
        crate::int8::dequantize_logits(self.model, self.logits, self.real);
        Ok(self.real)
    }

    fn native_hash(&self) -> Option<u64> {
        Some(int_logits_hash(self.logits))
    }
}

/// The `exact` engine over borrowed weights, arena and logits buffer.
#[derive(Debug)]
pub struct Exact<'w, 'b> {
    weights: &'b Weights<'w>,
    arena: &'b mut [f32],
    logits: &'b mut [f32],
}

impl<'w, 'b> Exact<'w, 'b> {
    /// Checks that the arena and the logits buffer fit the model.
    pub fn new(
        weights: &'b Weights<'w>,
        arena: &'b mut [f32],
        logits: &'b mut [f32],
    ) -> Result<Self, EngineError> {
        let cfg = weights.config();
        let needed = engine::arena_len(cfg)?;
        if arena.len() < needed {
            return Err(EngineError::ArenaTooSmall {
                needed,
                got: arena.len(),
            });
        }
        if logits.len() != cfg.num_classes as usize {
            return Err(EngineError::LogitsLen {
                expected: cfg.num_classes as usize,
                got: logits.len(),
            });
        }
        Ok(Exact {
            weights,
            arena,
            logits,
        })
    }
}

impl Classifier for Exact<'_, '_> {
    fn input_shape(&self) -> (u32, u32) {
        let c = self.weights.config();
        (c.img_size, c.in_chans)
    }

    fn classify(&mut self, input: &[f32]) -> Result<&[f32], EngineError> {
        engine::forward(self.weights, input, self.arena, self.logits)?;
        Ok(self.logits)
    }
}

/// A stage of a replay, for a [`Meter`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// The augmentation or the evaluation transform.
    Transform,
    /// The model's forward pass.
    Inference,
}

/// Measures the stages of a replay (the device counts instructions or cycles around them).
pub trait Meter {
    /// Runs `f`, the work of `stage`, and returns its result.
    fn measure<R>(&mut self, stage: Stage, f: impl FnOnce() -> R) -> R;
}

/// A [`Meter`] that measures nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoMeter;

impl Meter for NoMeter {
    fn measure<R>(&mut self, _stage: Stage, f: impl FnOnce() -> R) -> R {
        f()
    }
}

/// The inputs of one vector, with its config decoded: from a parsed [`Vector`] on the device,
/// from a [`Record`] being written on the host.
#[derive(Clone, Copy, Debug)]
pub struct Input<'a> {
    pub kind: Kind,
    pub seed: u32,
    pub width: u32,
    pub height: u32,
    pub channels: u32,
    pub cfg: AugConfig,
    /// Source pixels, HWC; ignored when `pattern`.
    pub pixels: &'a [u8],
    /// The source is `aug::test_pattern(width, height, channels)`, rebuilt into the source buffer.
    pub pattern: bool,
}

impl<'a> Vector<'a> {
    /// The vector's inputs; the config must decode.
    pub fn input(&self) -> Result<Input<'a>, ReplayError> {
        let cfg: AugConfig = postcard::from_bytes(self.cfg).map_err(|_| ReplayError::Cfg)?;
        Ok(Input {
            kind: self.kind,
            seed: self.seed,
            width: self.width,
            height: self.height,
            channels: self.channels,
            cfg,
            pixels: self.pixels,
            pattern: self.pattern,
        })
    }

    /// Whether `o`, the device's replay of this vector, equals what the host stored: the image
    /// hash always, the logits hash and the class for every kind but [`Kind::View`].
    pub fn matches(&self, o: &Outcome) -> bool {
        o.image_hash == Some(self.image_hash)
            && (self.kind == Kind::View
                || (o.logits_hash == Some(self.logits_hash) && o.class == Some(self.class)))
    }
}

/// Bytes of the buffers a replay needs besides the model's: the largest view, augmentation
/// scratch and rebuilt test-pattern source.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BufferSizes {
    pub view: usize,
    pub scratch: usize,
    pub source: usize,
}

impl BufferSizes {
    /// Each size the larger of the two.
    pub fn max(self, o: BufferSizes) -> BufferSizes {
        BufferSizes {
            view: self.view.max(o.view),
            scratch: self.scratch.max(o.scratch),
            source: self.source.max(o.source),
        }
    }

    /// The largest of every vector in `v`; the first bad record is an error.
    pub fn of(v: &Vectors<'_>) -> Result<BufferSizes, ReplayError> {
        let mut all = BufferSizes::default();
        for r in v {
            all = all.max(r.map_err(ReplayError::Vector)?.input()?.buffer_sizes()?);
        }
        Ok(all)
    }
}

impl Input<'_> {
    /// The buffers this vector's replay needs.
    pub fn buffer_sizes(&self) -> Result<BufferSizes, ReplayError> {
        let len = |w, h| aug::image_len(w, h, self.channels).map_err(ReplayError::Aug);
        let mut s = BufferSizes::default();
        if self.pattern {
            s.source = len(self.width, self.height)?;
        }
        match self.kind {
            Kind::View | Kind::Infer => {
                s.view = len(self.cfg.size, self.cfg.size)?;
                s.scratch = aug::scratch_len(&self.cfg, self.width, self.height, self.channels)
                    .map_err(ReplayError::Aug)?;
            }
            // The source is normalised in place: no view, no scratch.
            Kind::Eval => {}
            Kind::EvalView => {
                s.view = len(self.cfg.size, self.cfg.size)?;
                s.scratch = aug::eval_scratch_len(
                    self.width,
                    self.height,
                    self.cfg.size,
                    EVAL_CROP_PCT,
                    self.channels,
                )
                .map_err(ReplayError::Aug)?;
            }
        }
        Ok(s)
    }
}

/// The caller's buffers for a replay (nothing is allocated): sized by [`BufferSizes`], and
/// `input` by the model's input length.
#[derive(Debug)]
pub struct Buffers<'a> {
    pub view: &'a mut [u8],
    pub scratch: &'a mut [u8],
    pub source: &'a mut [u8],
    /// The normalised model input.
    pub input: &'a mut [f32],
}

/// What one replay produced; a field stays `None` when the replay stopped before it (or, for
/// the logits and class, when the kind runs no model).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The view's side (every kind but [`Kind::Eval`]).
    pub size: Option<u32>,
    /// FNV-1a 64 of the u8 image fed on: the view, or the source for [`Kind::Eval`].
    pub image_hash: Option<u64>,
    /// [`argmax`] of the logits.
    pub class: Option<u32>,
    /// [`logits_hash`] of the logits.
    pub logits_hash: Option<u64>,
}

/// Why a vector could not be replayed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplayError {
    /// The record itself does not parse.
    Vector(VectorError),
    /// The augmentation config does not decode.
    Cfg,
    Aug(aug::AugError),
    Engine(EngineError),
    /// An inference vector and no model.
    NoModel,
    /// The image does not match the model's input.
    Shape,
    /// A buffer is smaller than [`BufferSizes`] asks for.
    Buffer,
}

impl fmt::Display for ReplayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplayError::Vector(e) => write!(f, "{e}"),
            ReplayError::Cfg => write!(f, "augmentation config does not decode"),
            ReplayError::Aug(e) => write!(f, "augmentation: {e}"),
            ReplayError::Engine(e) => write!(f, "engine: {e}"),
            ReplayError::NoModel => write!(f, "an inference vector needs a model"),
            ReplayError::Shape => write!(f, "image does not match the model's input"),
            ReplayError::Buffer => write!(f, "static buffers too small (rebuild)"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for ReplayError {}

/// Replays one vector: the source (stored, or the test pattern rebuilt), the augmentation from
/// the seed ([`Kind::View`], [`Kind::Infer`]) or the evaluation transform ([`Kind::EvalView`])
/// or nothing ([`Kind::Eval`]); the hash of the u8 image; then, but for views, the config's
/// normalisation, the model, the logits hash and the class. `out` holds what was computed
/// before any error.
pub fn replay<M: Meter>(
    v: &Input<'_>,
    model: Option<&mut dyn Classifier>,
    b: &mut Buffers<'_>,
    meter: &mut M,
    out: &mut Outcome,
) -> Result<(), ReplayError> {
    let cfg = v.cfg;
    let aug_err = ReplayError::Aug;
    if v.kind != Kind::Eval {
        out.size = Some(cfg.size);
    }
    let pixels: &[u8] = if v.pattern {
        let n = aug::image_len(v.width, v.height, v.channels).map_err(aug_err)?;
        let buf = b.source.get_mut(..n).ok_or(ReplayError::Buffer)?;
        aug::test_pattern(v.width, v.height, v.channels, buf).map_err(aug_err)?;
        &b.source[..n]
    } else {
        v.pixels
    };
    let src = ImageRef::new(v.width, v.height, v.channels, pixels).map_err(aug_err)?;
    // The u8 image the model sees: the replayed view, or the source itself.
    let image = match v.kind {
        Kind::Eval => src,
        Kind::View | Kind::Infer | Kind::EvalView => {
            let n = aug::image_len(cfg.size, cfg.size, v.channels).map_err(aug_err)?;
            let view = b.view.get_mut(..n).ok_or(ReplayError::Buffer)?;
            let scratch = &mut *b.scratch;
            meter
                .measure(Stage::Transform, || {
                    let dst = ImageMut::new(cfg.size, cfg.size, v.channels, view)?;
                    if v.kind == Kind::EvalView {
                        aug::eval_transform(src, dst, EVAL_CROP_PCT, cfg.interpolation, scratch)
                    } else {
                        aug::replay(&cfg, v.seed, src, dst, scratch).map(|_| ())
                    }
                })
                .map_err(aug_err)?;
            ImageRef::new(cfg.size, cfg.size, v.channels, &b.view[..n]).map_err(aug_err)?
        }
    };
    out.image_hash = Some(aug::fnv1a64(image.data));
    if v.kind == Kind::View {
        return Ok(());
    }
    let model = model.ok_or(ReplayError::NoModel)?;
    if model.input_shape() != (image.width, image.channels) || image.height != image.width {
        return Err(ReplayError::Shape);
    }
    let n = image.data.len();
    let input = b.input.get_mut(..n).ok_or(ReplayError::Buffer)?;
    aug::normalize(image, cfg.mean, cfg.std, input).map_err(aug_err)?;
    let logits = meter
        .measure(Stage::Inference, || model.classify(input))
        .map_err(ReplayError::Engine)?;
    let (hash, class) = (logits_hash(logits), argmax(logits));
    out.logits_hash = Some(model.native_hash().unwrap_or(hash));
    out.class = Some(class);
    Ok(())
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

#[cfg(feature = "std")]
impl Record {
    /// The record's inputs, for [`replay`].
    pub fn input(&self) -> Input<'_> {
        Input {
            kind: self.kind,
            seed: self.seed,
            width: self.width,
            height: self.height,
            channels: self.channels,
            cfg: self.cfg,
            pixels: &self.pixels,
            pattern: self.pattern,
        }
    }
}

/// [`replay`] with buffers allocated to fit: how the host computes the expected values it
/// stores.
#[cfg(feature = "std")]
pub fn replay_alloc(
    v: &Input<'_>,
    model: Option<&mut dyn Classifier>,
) -> Result<Outcome, ReplayError> {
    use std::vec;
    let s = v.buffer_sizes()?;
    let (mut view, mut scratch, mut source) =
        (vec![0; s.view], vec![0; s.scratch], vec![0; s.source]);
    let side = if v.kind == Kind::Eval {
        v.width.max(v.height)
    } else {
        v.cfg.size
    };
    let mut input = vec![0.0; aug::image_len(side, side, v.channels).map_err(ReplayError::Aug)?];
    let mut b = Buffers {
        view: &mut view,
        scratch: &mut scratch,
        source: &mut source,
        input: &mut input,
    };
    let mut out = Outcome::default();
    replay(v, model, &mut b, &mut NoMeter, &mut out)?;
    Ok(out)
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
    fn logits_hash_and_argmax() {
        let quiet = f32::from_bits(CANONICAL_NAN);
        let other = f32::from_bits(0xffc0_1234);
        assert_eq!(logits_hash(&[quiet, 1.0]), logits_hash(&[other, 1.0]));
        assert_ne!(logits_hash(&[0.0]), logits_hash(&[-0.0]));
        // The hash of the bit patterns, little-endian, with the image hash's FNV-1a.
        let v = [1.5f32, -0.0, f32::INFINITY];
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_bits().to_le_bytes()).collect();
        assert_eq!(logits_hash(&v), aug::fnv1a64(&bytes));
        assert_eq!(logits_hash(&[]), aug::fnv1a64(&[]));
        assert_eq!(argmax(&[1.0, 3.0, 3.0, -1.0]), 1);
        assert_eq!(argmax(&[1.0, f32::NAN, 2.0]), 2);
        assert_eq!(argmax(&[f32::NAN, 2.0, 1.0]), 0);
        assert_eq!(argmax(&[]), 0);
    }

    /// A small network with seeded weights.
    fn tiny_model() -> (crate::config::ModelConfig, Vec<f32>) {
        let cfg = crate::config::ModelConfig {
            in_chans: 1,
            img_size: 16,
            num_classes: 5,
            embed_dims: [4, 8, 8, 8],
            depths: [1; 4],
            num_heads: [1, 2, 2, 2],
            window_sizes: [2; 4],
            mlp_ratio: 2,
            mbconv_expand_ratio: 2,
            local_conv_size: 3,
            drop_path_rate: 0.0,
        };
        let sd = crate::params::synthetic_state_dict(&cfg, 3);
        let blob = crate::engine::fold::fold_state_dict(&cfg, |n| {
            sd.iter().find(|t| t.name == n).map(|t| &t.values[..])
        })
        .unwrap();
        (cfg, blob)
    }

    #[test]
    fn replay_is_the_codec_then_the_engine() {
        let (cfg, blob) = tiny_model();
        let weights = Weights::new(&cfg, &blob).unwrap();
        let mut arena = vec![0.0; engine::arena_len(&cfg).unwrap()];
        let mut logits = vec![0.0; 5];
        let mut acfg = aug::preset("light").unwrap();
        acfg.size = 16;
        let input = |kind, pattern| Input {
            kind,
            seed: 77,
            width: 21,
            height: 19,
            channels: 1,
            cfg: acfg,
            pixels: &[],
            pattern,
        };
        // By hand: the pattern, the augmentation, the normalisation, the engine.
        let mut src = vec![0u8; 21 * 19];
        aug::test_pattern(21, 19, 1, &mut src).unwrap();
        let mut view = vec![0u8; 256];
        let mut scratch = vec![0u8; aug::scratch_len(&acfg, 21, 19, 1).unwrap()];
        aug::replay(
            &acfg,
            77,
            ImageRef::new(21, 19, 1, &src).unwrap(),
            ImageMut::new(16, 16, 1, &mut view).unwrap(),
            &mut scratch,
        )
        .unwrap();
        let mut x = vec![0.0; 256];
        aug::normalize(
            ImageRef::new(16, 16, 1, &view).unwrap(),
            acfg.mean,
            acfg.std,
            &mut x,
        )
        .unwrap();
        let mut want = vec![0.0; 5];
        engine::forward(&weights, &x, &mut arena, &mut want).unwrap();

        let mut exact = Exact::new(&weights, &mut arena, &mut logits).unwrap();
        let got = replay_alloc(&input(Kind::Infer, true), Some(&mut exact)).unwrap();
        assert_eq!(
            got,
            Outcome {
                size: Some(16),
                image_hash: Some(aug::fnv1a64(&view)),
                class: Some(argmax(&want)),
                logits_hash: Some(logits_hash(&want)),
            }
        );
        // A view runs no model; an inference without one, or of the wrong size, is refused.
        let v = replay_alloc(&input(Kind::View, true), None).unwrap();
        assert_eq!((v.image_hash, v.class), (got.image_hash, None));
        assert_eq!(
            replay_alloc(&input(Kind::Infer, true), None),
            Err(ReplayError::NoModel)
        );
        let mut eval = input(Kind::Eval, true);
        assert_eq!(
            replay_alloc(&eval, Some(&mut exact)),
            Err(ReplayError::Shape)
        );
        eval.width = 16;
        eval.height = 16;
        assert!(replay_alloc(&eval, Some(&mut exact))
            .unwrap()
            .class
            .is_some());
        // Buffers too small: an error, and what was computed before it.
        let mut out = Outcome::default();
        let (mut a, mut b, mut c, mut d) = ([0u8; 4], [0u8; 4], vec![0u8; 21 * 19], [0.0; 4]);
        let mut bufs = Buffers {
            view: &mut a,
            scratch: &mut b,
            source: &mut c,
            input: &mut d,
        };
        let r = replay(
            &input(Kind::Infer, true),
            None,
            &mut bufs,
            &mut NoMeter,
            &mut out,
        );
        assert_eq!(r, Err(ReplayError::Buffer));
        assert_eq!(out.size, Some(16));
        assert_eq!(out.image_hash, None);
    }

    #[test]
    fn exact_checks_its_buffers_and_a_vector_its_outcome() {
        let (cfg, blob) = tiny_model();
        let weights = Weights::new(&cfg, &blob).unwrap();
        let mut small = vec![0.0; engine::arena_len(&cfg).unwrap() - 1];
        let mut logits = vec![0.0; 5];
        assert!(matches!(
            Exact::new(&weights, &mut small, &mut logits),
            Err(EngineError::ArenaTooSmall { .. })
        ));
        let bytes = write(&records()).unwrap();
        let parsed = Vectors::parse(&bytes).unwrap();
        let recs: Vec<_> = parsed.iter().map(|r| r.unwrap()).collect();
        let view = Outcome {
            size: Some(24),
            image_hash: Some(0x0123_4567_89ab_cdef),
            ..Outcome::default()
        };
        assert!(recs[0].matches(&view));
        assert!(!recs[0].matches(&Outcome::default()));
        let mut infer = Outcome {
            image_hash: Some(2),
            class: Some(4),
            logits_hash: Some(3),
            ..Outcome::default()
        };
        assert!(recs[2].matches(&infer));
        infer.class = Some(5);
        assert!(!recs[2].matches(&infer));
        // Buffer sizes: the largest of every record.
        let s = BufferSizes::of(&parsed).unwrap();
        assert_eq!(s.source, 61 * 47 * 3);
        assert!(s.view >= 224 * 224 * 3 && s.scratch > 0);
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
