//! Post-training quantisation (host side, floats allowed): real scales to integer parameters.

use std::collections::BTreeMap;
use std::string::String;
use std::vec;
use std::vec::Vec;

use super::calib;
use super::file::{self, FileError};
use super::layout::{self, Kind};
use super::ops::{self, Multiplier, MAX_SHIFT, MIN_SHIFT};
use crate::config::{ModelConfig, STAGES};
use crate::engine::layers::LN_EPS;
use crate::engine::{EngineError, Weights};
use crate::params;

/// The [`Multiplier`] nearest to the real `x`: `|m|` in `[2^30, 2^31)` when the shift allows,
/// `m = round(x 2^62)` (possibly 0) for reals below `2^-32`. `None` for reals of `2^30` or
/// more and for non-finite ones, which no sensible scale ratio reaches.
pub fn multiplier(x: f64) -> Option<Multiplier> {
    if !x.is_finite() || x.abs() >= (1u64 << 30) as f64 {
        return None;
    }
    if x == 0.0 {
        return Some(Multiplier { m: 0, shift: 1 });
    }
    // |x| = f 2^e with f in [0.5, 1): shift = 31 - e puts |m| in [2^30, 2^31).
    let e = libm::ilogb(x.abs()) + 1;
    let mut shift = (31 - e).clamp(MIN_SHIFT as i32, MAX_SHIFT as i32);
    let mut m = libm::round(libm::ldexp(x, shift));
    if m.abs() >= 2147483648.0 {
        m = libm::round(libm::ldexp(x, shift - 1));
        shift -= 1;
    }
    if shift < MIN_SHIFT as i32 || m.abs() >= 2147483648.0 {
        return None;
    }
    Some(Multiplier {
        m: m as i32,
        shift: shift as u32,
    })
}

/// How a calibrated range is chosen from the absolute values seen at a point.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RangeMethod {
    /// The largest absolute value.
    Max,
    /// This percentile of the absolute values (e.g. 99.99); larger values saturate.
    Percentile(f64),
    /// The clip, among 1/64 steps from 1/4 of the maximum to the maximum, whose 127-level
    /// grid has the least squared error over the values seen (at most 65,536 of them, evenly
    /// strided).
    Mse,
}

/// Quantisation choices.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Options {
    /// How activation ranges are chosen.
    pub method: RangeMethod,
    /// Bound of the residual stream: 32767 (int16, the default) or 127 (an int8 stream).
    pub res_max: u16,
}

impl Default for Options {
    /// Max ranges and an int16 residual stream: the choice measured by the test
    /// `int8::tests::range_methods_and_residual_width` (synthetic-weight MCU presets, 16
    /// calibration and 64 test images; relative logit error M4 / H7, format version 4 with its
    /// GELU tables): max 0.100 / 0.054, 99.99th percentile 0.101 / 0.049, 99.9th 0.140 / 0.062,
    /// MSE 0.123 / 0.056; an int8 stream (`res_max` 127) 0.170 / 0.091. (Version 3, GELU on
    /// Q12 per channel: max 0.086 / 0.052.) On the main job's Fashion-MNIST student max ranges
    /// lose 0.02 points of test top-1 (README).
    fn default() -> Self {
        Options {
            method: RangeMethod::Max,
            res_max: i16::MAX as u16,
        }
    }
}

/// Why a model could not be quantised.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum QuantError {
    /// The f32 model file does not parse.
    Tvb(crate::tvb::TvbError),
    /// The config or sizes are unusable.
    Engine(EngineError),
    /// The calibration inputs are not a whole number of images, or none.
    Calibration { values: usize, per_image: usize },
    /// A scale ratio (named item) has no multiplier (not finite or `>= 2^30`).
    Multiplier(String),
    /// The int8 file could not be written.
    File(FileError),
}

impl core::fmt::Display for QuantError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            QuantError::Tvb(e) => write!(f, "{e}"),
            QuantError::Engine(e) => write!(f, "{e}"),
            QuantError::Calibration { values, per_image } => write!(
                f,
                "calibration: {values} values is not a positive multiple of {per_image} per image"
            ),
            QuantError::Multiplier(n) => write!(f, "quantise: `{n}` has an unusable scale ratio"),
            QuantError::File(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for QuantError {}

impl From<EngineError> for QuantError {
    fn from(e: EngineError) -> Self {
        QuantError::Engine(e)
    }
}

/// The absolute values seen at every quantisation point (see [`super::calib`]).
#[derive(Clone, Debug, Default)]
pub struct Ranges {
    abs: BTreeMap<String, Vec<f32>>,
}

impl Ranges {
    /// Runs the f32 reference over `images` (`n * C*H*W` values) and records every point.
    pub fn observe(weights: &Weights<'_>, images: &[f32]) -> Result<Self, QuantError> {
        let per = crate::engine::input_len(weights.config())?;
        if images.is_empty() || !images.len().is_multiple_of(per) {
            return Err(QuantError::Calibration {
                values: images.len(),
                per_image: per,
            });
        }
        let mut abs: BTreeMap<String, Vec<f32>> = BTreeMap::new();
        for img in images.chunks_exact(per) {
            calib::forward(weights, img, &mut |key: &str, _: usize, v: &mut [f32]| {
                abs.entry(key.into())
                    .or_default()
                    .extend(v.iter().map(|x| x.abs()));
            })?;
        }
        Ok(Ranges { abs })
    }

    /// The range of point `key` (never below `1e-6`; an unseen point is `1e-6`).
    pub fn range(&self, key: &str, method: RangeMethod) -> f64 {
        let r = match self.abs.get(key) {
            None => 0.0,
            Some(v) => match method {
                RangeMethod::Max => {
                    v.iter().fold(0.0f32, |m, x| if *x > m { *x } else { m }) as f64
                }
                RangeMethod::Mse => {
                    let max = v.iter().fold(0.0f32, |m, x| if *x > m { *x } else { m }) as f64;
                    let step = v.len().div_ceil(1 << 16).max(1);
                    let mut best = (f64::INFINITY, max);
                    for k in (16..=64).filter(|_| max > 0.0) {
                        let c = max * k as f64 / 64.0;
                        let s = c / 127.0;
                        let err: f64 = v
                            .iter()
                            .step_by(step)
                            .map(|x| {
                                let x = *x as f64;
                                let d = x - (x / s).round().min(127.0) * s;
                                d * d
                            })
                            .sum();
                        if err < best.0 {
                            best = (err, c);
                        }
                    }
                    best.1
                }
                RangeMethod::Percentile(p) => {
                    let mut s = v.clone();
                    let k = (((p / 100.0) * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1;
                    let (_, x, _) = s.select_nth_unstable_by(k, |a, b| a.total_cmp(b));
                    *x as f64
                }
            },
        };
        if r > 1e-6 {
            r
        } else {
            1e-6
        }
    }
}

/// Quantises an f32 `.tvb` file with calibration images (`n * C*H*W` normalised values) into
/// an int8 model file: the one entry point for the host's `quantize` command.
pub fn quantize_tvb(f32_tvb: &[u8], images: &[f32], opts: &Options) -> Result<Vec<u8>, QuantError> {
    let t = crate::tvb::parse(f32_tvb).map_err(QuantError::Tvb)?;
    let blob = t.to_blob();
    let w = Weights::new(t.config(), &blob)?;
    let bytes = quantize(&w, images, opts)?;
    // The f32 file's input contract and class names travel into the int8 file.
    match t.contract() {
        None => Ok(bytes),
        Some(c) => {
            let names: Vec<String> = t.class_names().iter().map(String::from).collect();
            let m = file::parse(&bytes).map_err(QuantError::File)?;
            file::write_with_contract(
                m.config(),
                m.input_scale(),
                m.logit_scale(),
                m.res_max() as u16,
                m.data(),
                Some((c, &names)),
            )
            .map_err(QuantError::File)
        }
    }
}

/// Quantises folded f32 weights with calibration images into an int8 model file.
pub fn quantize(w: &Weights<'_>, images: &[f32], opts: &Options) -> Result<Vec<u8>, QuantError> {
    let ranges = Ranges::observe(w, images)?;
    quantize_with(w, &ranges, opts)
}

/// Quantises with ranges already observed.
pub fn quantize_with(
    w: &Weights<'_>,
    ranges: &Ranges,
    opts: &Options,
) -> Result<Vec<u8>, QuantError> {
    let cfg = *w.config();
    super::engine::arena_plan(&cfg)?;
    let mut q = Builder {
        ranges,
        opts: *opts,
        items: BTreeMap::new(),
        folded: BTreeMap::new(),
    };
    let mut pos = 0usize;
    let blob = w.blob();
    params::for_each_folded(&cfg, |name, shape| {
        let n = params::numel(shape);
        q.folded.insert(name.into(), blob[pos..pos + n].to_vec());
        pos = params::align_up(pos + n);
    });
    q.build(&cfg)?;
    let mut data = Vec::new();
    let mut missing = None;
    layout::for_each_item(&cfg, |name, kind, len| match q.items.get(name) {
        Some((k, n, bytes)) if *k == kind && *n == len => {
            data.extend_from_slice(bytes);
            data.resize(data.len().div_ceil(4) * 4, 0);
        }
        // The weights of a matrix product, stored as `ops::mat::store_row` writes them.
        Some((Kind::I8, n, bytes)) if *n == len && matches!(kind, Kind::Mat(_)) => {
            let Kind::Mat(k) = kind else { return };
            let plain: &[i8] = bytemuck::cast_slice(bytes);
            let mut stored = std::vec![0i8; len];
            for (o, row) in plain.chunks_exact(k.max(1)).enumerate() {
                ops::mat::store_row(&mut stored, k, o, row);
            }
            data.extend_from_slice(bytemuck::cast_slice(&stored));
            data.resize(data.len().div_ceil(4) * 4, 0);
        }
        _ => {
            if missing.is_none() {
                missing = Some(String::from(name));
            }
        }
    });
    if let Some(name) = missing {
        // A quantiser bug, named rather than written into a file.
        return Err(QuantError::Multiplier(name));
    }
    let input_scale = q.act("input") as f32;
    let logit_scale = (ranges.range("logits", opts.method) / LOGIT_UNITS) as f32;
    file::write(&cfg, input_scale, logit_scale, opts.res_max, &data).map_err(QuantError::File)
}

/// `round(x)` clamped to `[-2^30, 2^30]`: biases stay far enough from `i32`'s ends that
/// `bias + fan_in * 2^14` cannot wrap.
fn i30(x: f64) -> i32 {
    let l = (1u64 << 30) as f64;
    x.round().clamp(-l, l) as i32
}

/// Logits are scaled so that the calibrated range is this many units.
const LOGIT_UNITS: f64 = 32768.0;
/// Real value of one Q12 unit.
const Q12: f64 = 1.0 / 4096.0;

/// What a layer's accumulators are requantised to.
enum Target<'t> {
    /// Q12 (MBConv's residual sum, which its last GELU reads).
    Q12,
    /// One scale for every output channel.
    Scale(f64),
    /// A scale per output channel.
    PerChannel(&'t dyn Fn(usize) -> f64),
}

struct Builder<'r> {
    ranges: &'r Ranges,
    opts: Options,
    items: BTreeMap<String, (Kind, usize, Vec<u8>)>,
    folded: BTreeMap<String, Vec<f32>>,
}

impl Builder<'_> {
    fn act(&self, key: &str) -> f64 {
        self.ranges.range(key, self.opts.method) / 127.0
    }

    /// The residual stream's scale: always its maximum (clipping the stream costs more than
    /// the coarser grid; the fake-quantisation test measured 1.4 % logit error from clipping
    /// at the 99.99th percentile against 0.2 % at the maximum).
    fn stream(&self, s: usize) -> f64 {
        self.ranges
            .range(&std::format!("stream.{s}"), RangeMethod::Max)
            / self.opts.res_max as f64
    }

    fn tensor(&self, name: &str) -> Vec<f32> {
        self.folded.get(name).cloned().unwrap_or_default()
    }

    fn put_i32(&mut self, name: &str, v: &[i32]) {
        let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.items.insert(name.into(), (Kind::I32, v.len(), bytes));
    }

    /// Multipliers of the reals: the numerators (`i32`), then the shifts (bytes).
    fn mul(&mut self, name: &str, reals: &[f64]) -> Result<(), QuantError> {
        let mut bytes = Vec::with_capacity(5 * reals.len());
        let mut shifts = Vec::with_capacity(reals.len());
        for r in reals {
            let k = multiplier(*r).ok_or_else(|| QuantError::Multiplier(name.into()))?;
            bytes.extend(k.m.to_le_bytes());
            shifts.push(k.shift as u8);
        }
        bytes.extend(shifts);
        self.items
            .insert(name.into(), (Kind::Mul, reals.len(), bytes));
        Ok(())
    }

    /// A conv or linear layer `p` (folded `p.weight`, `p.bias`) reading `i8` values of scale
    /// `s_in`; `stem` permutes `[o, i, ky, kx]` weights to `[o, ky, kx, i]`.
    fn layer(
        &mut self,
        p: &str,
        s_in: f64,
        target: Target<'_>,
        stem: bool,
    ) -> Result<(), QuantError> {
        let w = self.tensor(&std::format!("{p}.weight"));
        let b = self.tensor(&std::format!("{p}.bias"));
        let out = b.len();
        let per = w.len() / out.max(1);
        let mut wq = vec![0i8; w.len()];
        let mut bq = vec![0i32; out];
        let mut mults = vec![0.0f64; out];
        for o in 0..out {
            let row = &w[o * per..(o + 1) * per];
            let amax = row
                .iter()
                .fold(0.0f32, |m, x| if x.abs() > m { x.abs() } else { m })
                as f64;
            let sw = if amax > 0.0 { amax / 127.0 } else { 1.0 };
            for (i, v) in row.iter().enumerate() {
                let dst = if stem {
                    // per = cin * 9: i = (ci * 3 + ky) * 3 + kx -> (ky * 3 + kx) * cin + ci.
                    let cin = per / 9;
                    let (ci, tap) = (i / 9, i % 9);
                    o * per + tap * cin + ci
                } else {
                    o * per + i
                };
                wq[dst] = (*v as f64 / sw).round().clamp(-127.0, 127.0) as i8;
            }
            let sa = s_in * sw;
            bq[o] = i30(b[o] as f64 / sa);
            mults[o] = sa
                / match &target {
                    Target::Q12 => Q12,
                    Target::Scale(s) => *s,
                    Target::PerChannel(f) => f(o),
                };
        }
        self.items.insert(
            std::format!("{p}.weight"),
            (Kind::I8, wq.len(), bytemuck::cast_slice(&wq).to_vec()),
        );
        self.put_i32(&std::format!("{p}.bias"), &bq);
        self.mul(&std::format!("{p}.mult"), &mults)
    }

    /// The GELU `key` after the layer `p`: `p` requantises to the `i8` pre-activation (the
    /// scale of the calibrated point `<key>.pre`), and `key` holds that scale to Q12 and Q12
    /// to `key`'s own scale (the engine's table, [`ops::gelu_table`]). Returns `key`'s scale,
    /// the input scale of the layer that reads the GELU.
    fn gelu_layer(&mut self, p: &str, s_in: f64, key: &str, stem: bool) -> Result<f64, QuantError> {
        let s_pre = self.act(&std::format!("{key}.pre"));
        self.layer(p, s_in, Target::Scale(s_pre), stem)?;
        let s_act = self.act(key);
        self.mul(key, &[s_pre / Q12, Q12 / s_act])?;
        Ok(s_act)
    }

    /// A LayerNorm `p` over `i16` values of scale `s_in`, output `i8` of scale `s_out`.
    fn norm(&mut self, p: &str, s_in: f64, s_out: f64) -> Result<(), QuantError> {
        let w = self.tensor(&std::format!("{p}.weight"));
        let b = self.tensor(&std::format!("{p}.bias"));
        let c = w.len() as f64;
        let g: Vec<f64> = w
            .iter()
            .map(|v| *v as f64 * c.sqrt() / (s_out * (1u64 << 30) as f64))
            .collect();
        self.mul(&std::format!("{p}.weight"), &g)?;
        let bq: Vec<i32> = b.iter().map(|v| i30(*v as f64 / s_out)).collect();
        self.put_i32(&std::format!("{p}.bias"), &bq);
        let eps = (LN_EPS as f64 * c / (s_in * s_in))
            .round()
            .clamp(1.0, i32::MAX as f64) as i32;
        self.put_i32(&std::format!("{p}.eps"), &[eps]);
        Ok(())
    }

    fn build(&mut self, cfg: &ModelConfig) -> Result<(), QuantError> {
        let e = cfg.embed_dims.map(|v| v as usize);
        let s_in = self.act("input");
        let s_g = self.gelu_layer("patch_embed.seq.0", s_in, "patch_embed.seq.1.act", true)?;
        let ss0 = self.stream(0);
        self.layer("patch_embed.seq.2", s_g, Target::Scale(ss0), true)?;
        for j in 0..cfg.depths[0] {
            let p = |s: &str| std::format!("layers.0.blocks.{j}.{s}");
            let s_x = self.act(&p("in"));
            self.mul(&p("in"), &[ss0 / s_x])?;
            let s_1 = self.gelu_layer(&p("conv1"), s_x, &p("act1"), false)?;
            let s_2 = self.gelu_layer(&p("conv2"), s_1, &p("act2"), false)?;
            self.layer(&p("conv3"), s_2, Target::Q12, false)?;
            self.mul(&p("res"), &[ss0 / Q12])?;
            self.mul(&p("out"), &[Q12 / ss0])?;
        }
        for s in 0..STAGES {
            let ss = self.stream(s);
            if s > 0 {
                let c = e[s];
                let hd = c / cfg.num_heads[s] as usize;
                for j in 0..cfg.depths[s] {
                    let p = |x: &str| std::format!("layers.{s}.blocks.{j}.{x}");
                    let bias = self.tensor(&p("attn.attention_biases"));
                    let bq: Vec<i32> = bias.iter().map(|v| i30(*v as f64 * 1024.0)).collect();
                    self.put_i32(&p("attn.attention_biases"), &bq);
                    let s_n = self.act(&p("attn.norm"));
                    self.norm(&p("attn.norm"), ss, s_n)?;
                    let sc = [
                        self.act(&p("attn.q")),
                        self.act(&p("attn.k")),
                        self.act(&p("attn.v")),
                    ];
                    let role = move |o: usize| sc[(o % (3 * hd)) / hd];
                    self.layer(&p("attn.qkv"), s_n, Target::PerChannel(&role), false)?;
                    self.mul(
                        &p("attn.score"),
                        &[sc[0] * sc[1] / (hd as f64).sqrt() * 1024.0],
                    )?;
                    let s_o = self.act(&p("attn.out"));
                    self.mul(&p("attn.out"), &[sc[2] / 32768.0 / s_o])?;
                    self.layer(&p("attn.proj"), s_o, Target::Scale(ss), false)?;
                    let s_m = self.act(&p("mlp.norm"));
                    self.norm(&p("mlp.norm"), ss, s_m)?;
                    let s_h = self.gelu_layer(&p("mlp.fc1"), s_m, &p("mlp.act"), false)?;
                    self.layer(&p("mlp.fc2"), s_h, Target::Scale(ss), false)?;
                    self.layer(&p("local_conv"), ss, Target::Scale(ss), false)?;
                }
            }
            if s + 1 < STAGES {
                let p = |x: &str| std::format!("layers.{s}.downsample.{x}");
                let s_x = self.act(&p("in"));
                self.mul(&p("in"), &[ss / s_x])?;
                let s_1 = self.gelu_layer(&p("conv1"), s_x, &p("act1"), false)?;
                let s_2 = self.gelu_layer(&p("conv2"), s_1, &p("act2"), false)?;
                let next = self.stream(s + 1);
                self.layer(&p("conv3"), s_2, Target::Scale(next), false)?;
            }
        }
        let s_h = self.act("norm_head");
        self.norm("norm_head", self.stream(3), s_h)?;
        let s_logit = self.ranges.range("logits", self.opts.method) / LOGIT_UNITS;
        self.layer("head", s_h, Target::Scale(s_logit), false)
    }
}
