//! A safetensors file parsed from bytes already read: its metadata and every tensor decoded to
//! f32 (f32, f16, bf16, f64) or i64 (counters), shapes checked against the data. Needs only
//! std, `anyhow`, `half` and `safetensors`, so the fuzz crate compiles it in from this file;
//! [`crate::checkpoint::read_tensors`] turns the result into tch tensors.

use std::collections::HashMap;

use anyhow::{bail, ensure, Context, Result};
use safetensors::tensor::{Dtype, SafeTensors};

/// A tensor's values, widened.
#[derive(Clone, Debug, PartialEq)]
pub enum Values {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

impl Values {
    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            Values::F32(v) => v.len(),
            Values::I64(v) => v.len(),
        }
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One tensor of the file.
#[derive(Clone, Debug, PartialEq)]
pub struct RawTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Values,
}

/// Parses the file: the metadata map (empty when absent) and every tensor in the file's
/// order. Errors name the tensor or the part of the file (the caller adds the file name).
pub fn parse(bytes: &[u8]) -> Result<(HashMap<String, String>, Vec<RawTensor>)> {
    let (_, meta) = SafeTensors::read_metadata(bytes).context("not a safetensors file")?;
    let md = meta.metadata().clone().unwrap_or_default();
    let st = SafeTensors::deserialize(bytes).context("tensor table")?;
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        let shape = view.shape().to_vec();
        let values = decode(&name, view.dtype(), view.data())?;
        let n = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .with_context(|| format!("tensor `{name}`: shape {shape:?} overflows"))?;
        ensure!(
            n == values.len(),
            "tensor `{name}`: shape {shape:?} holds {n} values, the data {}",
            values.len()
        );
        out.push(RawTensor {
            name,
            shape,
            values,
        });
    }
    Ok((md, out))
}

/// Little-endian values of `dtype` widened to f32 (floats) or i64.
pub fn decode(name: &str, dtype: Dtype, data: &[u8]) -> Result<Values> {
    Ok(match dtype {
        Dtype::F32 => Values::F32(
            data.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        Dtype::F16 => Values::F32(
            data.chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        ),
        Dtype::BF16 => Values::F32(
            data.chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        ),
        Dtype::F64 => Values::F32(
            data.chunks_exact(8)
                .map(|c| {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(c);
                    f64::from_le_bytes(b) as f32
                })
                .collect(),
        ),
        Dtype::I64 => Values::I64(
            data.chunks_exact(8)
                .map(|c| {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(c);
                    i64::from_le_bytes(b)
                })
                .collect(),
        ),
        other => {
            bail!("tensor `{name}`: dtype {other:?} is not supported (f32, f16, bf16, f64, i64)")
        }
    })
}
