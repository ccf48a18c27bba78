//! The host side of tinyvit: everything that needs std, files, threads or libtorch.
//! The `tinyvit` binary (`main.rs`) is a thin front over these modules.

pub mod analyze;
pub mod arch;
pub mod augment;
pub mod checkpoint;
pub mod contract;
pub mod contraction;
pub mod data;
pub mod device;
pub mod dist;
pub mod draw;
pub mod eval_cmd;
pub mod exclusions;
pub mod export;
pub mod import;
pub mod infer;
pub mod infer_int8;
pub mod logits_cmd;
pub mod model;
pub mod plot_cmd;
pub mod presets;
pub mod quantize;
pub mod save_logits;
pub mod store;
pub mod teacher;
pub mod train;

/// The libtorch version this crate is built and tested against.
pub const LIBTORCH_VERSION: &str = "2.11.0";
