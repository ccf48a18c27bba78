//! Float32 `.npy` parsing from bytes already read (any header version, either byte order, C or
//! Fortran order, into C order). Needs only std, `anyhow`, `ndarray` and `ndarray-npy`, so the
//! fuzz crate compiles it in from this file.

use anyhow::{ensure, Context, Result};
use ndarray::ArrayD;
use ndarray_npy::npy::header::Header;
use ndarray_npy::ReadNpyExt;

/// Parses a float32 `.npy` into a C-order array. The shape's element count is computed with
/// checked arithmetic and compared with the input's size before anything is allocated for the
/// data. Errors name the field (the caller adds the file name).
pub fn parse(bytes: &[u8]) -> Result<ArrayD<f32>> {
    let header = Header::from_reader(&mut &bytes[..]).context(".npy header")?;
    let data_bytes = header
        .shape
        .iter()
        .try_fold(4usize, |n, &d| n.checked_mul(d))
        .with_context(|| {
            format!(
                "field `shape` {:?}: the float32 data size overflows",
                header.shape
            )
        })?;
    ensure!(
        data_bytes <= bytes.len(),
        "field `shape` {:?} needs {data_bytes} data bytes, the file holds {} in all",
        header.shape,
        bytes.len()
    );
    let a = ArrayD::<f32>::read_npy(bytes).with_context(|| {
        format!(
            ".npy float32 data (field `descr` {})",
            header.type_descriptor
        )
    })?;
    Ok(a.as_standard_layout().into_owned())
}
