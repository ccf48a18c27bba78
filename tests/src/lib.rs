//! Cross-crate tests of tinyvit live in `tests/tests/`; this library holds their shared helpers.
pub mod parity;
pub mod replay;
pub mod aug_golden;
