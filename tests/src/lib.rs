//! Cross-crate tests of tinyvit live in `tests/tests/`; this library holds their shared helpers.
pub mod aug_golden;
pub mod parity;
