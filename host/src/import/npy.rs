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
    check_header_len(bytes)?;
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

/// Checks the header length field against the input's size before the header is read: the
/// reader allocates the length it is given (up to 4 GiB in a version 2 or 3 file).
fn check_header_len(bytes: &[u8]) -> Result<()> {
    ensure!(
        bytes.len() >= 10 && bytes.starts_with(b"\x93NUMPY"),
        "not a .npy file (magic)"
    );
    let (len, start) = match bytes[6] {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        2 | 3 => {
            ensure!(
                bytes.len() >= 12,
                ".npy header: field `header_len` truncated"
            );
            let n = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
            (usize::try_from(n).unwrap_or(usize::MAX), 12)
        }
        v => anyhow::bail!(
            ".npy header: field `version` {v}.{} is not 1, 2 or 3",
            bytes[7]
        ),
    };
    ensure!(
        len <= bytes.len() - start,
        ".npy header: field `header_len` {len} exceeds the {} bytes after it",
        bytes.len() - start
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A version 3 header claiming 4 GiB (found by the `npy_import` fuzz target: the reader
    /// allocated it) and other bad length fields are named errors.
    #[test]
    fn header_lengths_beyond_the_file_are_refused() {
        let oom = [
            147u8, 78, 85, 77, 80, 89, 3, 0, 118, 0, 254, 255, 255, 255, 100, 101, 115, 1, 17, 0,
            0, 32, 32, 32, 102, 53, 39, 44, 147, 78, 85,
        ];
        let e = format!("{:#}", parse(&oom).unwrap_err());
        assert!(e.contains("header_len"), "{e}");
        let mut v1 = b"\x93NUMPY\x01\x00".to_vec();
        v1.extend_from_slice(&200u16.to_le_bytes());
        v1.extend_from_slice(b"{'descr': '<f4'");
        assert!(format!("{:#}", parse(&v1).unwrap_err()).contains("header_len"));
        let e = format!("{:#}", parse(b"\x93NUMPY\x09\x00\x00\x00").unwrap_err());
        assert!(e.contains("version"), "{e}");
        assert!(parse(b"NUMPY").is_err());
    }
}
