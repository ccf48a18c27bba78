//! The IDX file format (MNIST-style u8 images `0x00000803 [n, h, w]` and labels
//! `0x00000801 [n]`, big-endian header), parsed from bytes already read (and gunzipped). Needs
//! only std and `anyhow`, so the fuzz crate compiles it in from this file.

use anyhow::{ensure, Result};

/// A parsed IDX image file: `count` images of `height x width` u8 pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdxImages<'a> {
    pub count: u32,
    pub height: u32,
    pub width: u32,
    /// `[count, height, width]`, exactly `count * height * width` bytes.
    pub pixels: &'a [u8],
}

/// Most pixels of one image (so that every per-image size fits in `u32` and `usize`).
pub const MAX_PIXELS: u64 = 1 << 26;

fn be32(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

/// Parses an image file; errors name what is wrong (the caller adds the file name).
pub fn parse_images(bytes: &[u8]) -> Result<IdxImages<'_>> {
    ensure!(
        bytes.len() >= 16,
        "not an IDX u8 image file: too short ({} bytes)",
        bytes.len()
    );
    ensure!(
        be32(bytes, 0) == 0x0803,
        "not an IDX u8 image file (magic {:#010x})",
        be32(bytes, 0)
    );
    let (n, h, w) = (be32(bytes, 4), be32(bytes, 8), be32(bytes, 12));
    ensure!(h > 0 && w > 0, "empty image size {w}x{h}");
    ensure!(
        u64::from(h) * u64::from(w) <= MAX_PIXELS,
        "image size {w}x{h} exceeds {MAX_PIXELS} pixels"
    );
    // Three u32 factors can exceed u64: checked, never wrapped.
    let need = u64::from(n)
        .checked_mul(u64::from(h))
        .and_then(|v| v.checked_mul(u64::from(w)));
    let held = bytes.len() as u64 - 16;
    ensure!(
        need == Some(held),
        "header says {n} images of {w}x{h} ({} bytes), the file holds {held}",
        need.map_or("more than 2^64".to_string(), |v| v.to_string())
    );
    Ok(IdxImages {
        count: n,
        height: h,
        width: w,
        pixels: &bytes[16..],
    })
}

/// Parses a label file that must hold `count` labels.
pub fn parse_labels(bytes: &[u8], count: u32) -> Result<&[u8]> {
    ensure!(
        bytes.len() >= 8 && be32(bytes, 0) == 0x0801,
        "not an IDX u8 label file"
    );
    let n = be32(bytes, 4);
    ensure!(
        n == count && bytes.len() as u64 == 8 + u64::from(count),
        "{n} labels in a file of {} bytes for {count} images",
        bytes.len()
    );
    Ok(&bytes[8..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(magic: u32, dims: &[u32]) -> Vec<u8> {
        let mut b = magic.to_be_bytes().to_vec();
        for d in dims {
            b.extend_from_slice(&d.to_be_bytes());
        }
        b
    }

    #[test]
    fn images_and_labels_parse() {
        let mut b = header(0x0803, &[2, 3, 4]);
        b.extend((0..24).map(|i| i as u8));
        let p = parse_images(&b).unwrap();
        assert_eq!((p.count, p.height, p.width, p.pixels.len()), (2, 3, 4, 24));
        let mut l = header(0x0801, &[2]);
        l.extend([7, 9]);
        assert_eq!(parse_labels(&l, 2).unwrap(), &[7, 9]);
        assert!(parse_labels(&l, 3).is_err());
    }

    /// A header whose `n * h * w` exceeds u64 (it wrapped before: a debug-build panic) and
    /// sizes past the pixel bound are named errors.
    #[test]
    fn huge_headers_are_errors_not_overflows() {
        for dims in [
            [u32::MAX, u32::MAX, u32::MAX],
            [0, 1 << 16, 1 << 16],
            [u32::MAX, 1, 1],
        ] {
            let e = format!("{:#}", parse_images(&header(0x0803, &dims)).unwrap_err());
            assert!(e.contains("exceeds") || e.contains("the file holds"), "{e}");
        }
        assert!(parse_images(&header(0x0803, &[1, 0, 4])).is_err());
        assert!(parse_images(&header(0x0801, &[1, 1, 1])).is_err());
        assert!(parse_images(&[0, 0, 8]).is_err());
    }
}
