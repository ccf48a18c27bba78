//! # tinyvit-core
//!
//! The part of tinyvit that runs everywhere, from x86 servers to Cortex-M boards, with no
//! allocator and no I/O:
//!
//! - the TinyViT model definition ([`config`], [`params`]) and its inference engines ([`engine`]),
//! - the integer-only int8 engine, its quantiser and its file ([`int8`]),
//! - the deployable model file format ([`tvb`]),
//! - replayable data augmentation driven by one seed per sample ([`aug`]),
//! - sparse soft-label math for fast distillation ([`softlabel`]),
//! - the on-disk record format of the sparse logit store ([`store`]),
//! - the replay vector file the firmware checks itself against ([`vectors`]).
//!
//! TinyViT: Wu et al., "TinyViT: Fast Pretraining Distillation for Small Vision Transformers",
//! ECCV 2022 (arXiv 2207.10666).
//!
//! Nothing in this crate panics on user data: every parser and every entry point that takes
//! shapes, bytes or sizes from outside returns an error instead.
#![cfg_attr(not(feature = "std"), no_std)]
// The exceptions, with `fast` only: the `fast` engine's x86 GEMM kernels, its call of
// `matrixmultiply::sgemm` (raw pointers, bounds asserted before), its dispatch to
// code compiled for AVX-512 / AVX2 (engine/fast/), behind bounds- and CPU-checked wrappers with
// SAFETY arguments, and `aug::wide`'s call of integer kernels compiled for AVX2 after a CPU
// check. With `arm-dsp` only: the int8 dot product's `SXTB16`/`SMLAD` inline assembly on
// Cortex-M (int8::ops::dsp), register-only instructions on values already loaded. Without either
// feature unsafe is forbidden.
#![cfg_attr(not(any(feature = "fast", feature = "arm-dsp")), forbid(unsafe_code))]
#![cfg_attr(any(feature = "fast", feature = "arm-dsp"), deny(unsafe_code))]

pub mod aug;
pub mod config;
pub mod contract;
pub mod contraction;
pub mod cost;
pub mod engine;
pub mod int8;
pub mod params;
pub mod softlabel;
pub mod store;
pub mod tvb;
pub mod vectors;
