//! The int8 TinyViT: integer-only inference, bit-identical on every target.
//!
//! - [`ops`]: the integer primitives (requantisation, exp/softmax, GELU, LayerNorm).
pub mod ops;
#[cfg(feature = "std")]
pub mod quantize;
