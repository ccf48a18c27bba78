//! The importer's f32 state_dict: what `.pth` files ([`super::pth`]) and safetensors files
//! ([`crate::checkpoint::read_tensors`]) become before the core folds them.

use std::collections::HashMap;

/// One f32 tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// A state_dict with official names.
pub type StateDict = HashMap<String, Tensor>;
