//! The int8 TinyViT: integer-only inference, bit-identical on every target.
//!
//! # The API
//! - [`quantize::quantize_tvb`] (std): an f32 `.tvb` file plus calibration images in, an int8
//!   model file out (format: [`file`]).
//! - [`file::parse`]: the int8 file, validated and viewed in place (RAM or flash).
//! - [`arena_len`]: `i32` words of scratch the engine needs, known before running.
//! - [`run`]: one image, `i8` input in, `i32` logits out; [`quantize_input`] and
//!   [`dequantize_logits`] convert from and to real values at the edges (outside the forward).
//!
//! # Modules
//! - [`ops`]: the integer primitives (requantisation, exp/softmax, GELU, LayerNorm), each with
//!   its error bound against f64;
//! - [`engine`]: the forward pass, op by op like [`crate::engine::exact`];
//! - [`layout`]: the order and kinds of the file's items;
//! - [`calib`] (std): the f32 reference forward that records activation ranges;
//! - [`quantize`] (std): ranges and f32 weights to int8 items.
pub mod att;
#[cfg(feature = "std")]
pub mod calib;
pub mod dw;
pub mod engine;
pub mod file;
pub mod layout;
pub mod ops;
#[cfg(feature = "std")]
pub mod quantize;

pub use engine::{arena_len, arena_plan, run};
pub use file::{parse, Model};

/// Quantises a normalised `[C, H, W]` image to the model's `i8` input (round to nearest,
/// saturating). Called before [`run`]; floats never enter the forward pass.
pub fn quantize_input(model: &Model<'_>, x: &[f32], out: &mut [i8]) {
    let inv = 1.0 / model.input_scale();
    for (o, v) in out.iter_mut().zip(x) {
        let q = libm::roundf(*v * inv);
        *o = if q >= 127.0 {
            127
        } else if q <= -127.0 {
            -127
        } else {
            q as i8
        };
    }
}

/// Real logits from [`run`]'s `i32` ones.
pub fn dequantize_logits(model: &Model<'_>, logits: &[i32], out: &mut [f32]) {
    for (o, v) in out.iter_mut().zip(logits) {
        *o = *v as f32 * model.logit_scale();
    }
}
#[cfg(test)]
pub(crate) mod tests;
