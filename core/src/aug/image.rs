//! Borrowed 8-bit images: `height x width x channels` bytes, row-major, channels interleaved
//! (HWC), 1 (grey) or 3 (RGB) channels, no padding between rows.

use super::AugError;

/// A read-only 8-bit image.
///
/// # Shapes
/// `data`: `[height, width, channels]` u8, exactly `width * height * channels` bytes.
#[derive(Clone, Copy, Debug)]
pub struct ImageRef<'a> {
    pub width: u32,
    pub height: u32,
    /// 1 (grey) or 3 (RGB).
    pub channels: u32,
    pub data: &'a [u8],
}

/// A writable 8-bit image, laid out as [`ImageRef`].
#[derive(Debug)]
pub struct ImageMut<'a> {
    pub width: u32,
    pub height: u32,
    /// 1 (grey) or 3 (RGB).
    pub channels: u32,
    pub data: &'a mut [u8],
}

/// Bytes of a `width x height x channels` image, or an error when that does not fit `usize`.
pub fn image_len(width: u32, height: u32, channels: u32) -> Result<usize, AugError> {
    (width as usize)
        .checked_mul(height as usize)
        .and_then(|n| n.checked_mul(channels as usize))
        .ok_or(AugError::TooLarge("image"))
}

fn check(width: u32, height: u32, channels: u32, len: usize) -> Result<(), AugError> {
    if width == 0 || height == 0 {
        return Err(AugError::EmptyImage { width, height });
    }
    if channels != 1 && channels != 3 {
        return Err(AugError::Channels(channels));
    }
    let expected = image_len(width, height, channels)?;
    if len != expected {
        return Err(AugError::BufferSize {
            what: "image data",
            expected,
            actual: len,
        });
    }
    Ok(())
}

impl<'a> ImageRef<'a> {
    /// Checks the dimensions against the buffer (non-zero sides, 1 or 3 channels, exact length).
    pub fn new(width: u32, height: u32, channels: u32, data: &'a [u8]) -> Result<Self, AugError> {
        check(width, height, channels, data.len())?;
        Ok(Self {
            width,
            height,
            channels,
            data,
        })
    }

    /// Re-checks an image built field by field.
    pub fn validate(&self) -> Result<(), AugError> {
        check(self.width, self.height, self.channels, self.data.len())
    }

    pub(crate) fn stride(&self) -> usize {
        self.width as usize * self.channels as usize
    }
}

impl<'a> ImageMut<'a> {
    /// Checks the dimensions against the buffer (non-zero sides, 1 or 3 channels, exact length).
    pub fn new(
        width: u32,
        height: u32,
        channels: u32,
        data: &'a mut [u8],
    ) -> Result<Self, AugError> {
        check(width, height, channels, data.len())?;
        Ok(Self {
            width,
            height,
            channels,
            data,
        })
    }

    /// Re-checks an image built field by field.
    pub fn validate(&self) -> Result<(), AugError> {
        check(self.width, self.height, self.channels, self.data.len())
    }

    /// A read-only view of the same pixels.
    pub fn as_ref(&self) -> ImageRef<'_> {
        ImageRef {
            width: self.width,
            height: self.height,
            channels: self.channels,
            data: self.data,
        }
    }

    /// Reborrows the image for a shorter lifetime.
    pub fn reborrow(&mut self) -> ImageMut<'_> {
        ImageMut {
            width: self.width,
            height: self.height,
            channels: self.channels,
            data: self.data,
        }
    }
}

/// FNV-1a 64, fed in pieces: the one hash that host and device compare (images by their bytes,
/// logits by their bit patterns through [`crate::vectors::logits_hash`]).
#[derive(Clone, Copy, Debug)]
pub struct Fnv64(u64);

impl Fnv64 {
    /// FNV-1a 64 offset basis.
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    /// FNV-1a 64 prime.
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    /// The hash of nothing.
    pub const fn new() -> Self {
        Fnv64(Self::OFFSET)
    }

    /// Feeds bytes in order.
    pub fn bytes(mut self, data: &[u8]) -> Self {
        for &b in data {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(Self::PRIME);
        }
        self
    }

    /// The hash of everything fed so far.
    pub const fn finish(self) -> u64 {
        self.0
    }
}

impl Default for Fnv64 {
    fn default() -> Self {
        Self::new()
    }
}

/// FNV-1a over bytes, 64-bit: the hash the known-answer vectors use for output images.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    Fnv64::new().bytes(bytes).finish()
}

/// The synthetic test image of the known-answer vectors, so that a device can rebuild its
/// inputs without files: `v(x, y, c) = ((7x + 13y + 85c) ^ (x * y)) mod 256`.
///
/// # Shapes
/// `out`: `[height, width, channels]`.
pub fn test_pattern(
    width: u32,
    height: u32,
    channels: u32,
    out: &mut [u8],
) -> Result<(), AugError> {
    check(width, height, channels, out.len())?;
    let ch = channels as usize;
    for (i, v) in out.iter_mut().enumerate() {
        let c = (i % ch) as u32;
        let p = (i / ch) as u32;
        let (x, y) = (p % width, p / width);
        *v = (x
            .wrapping_mul(7)
            .wrapping_add(y.wrapping_mul(13))
            .wrapping_add(c * 85)
            ^ x.wrapping_mul(y)) as u8;
    }
    Ok(())
}

/// ITU-R 601-2 luma with PIL's fixed-point weights: `(r*19595 + g*38470 + b*7471 + 0x8000) >> 16`.
pub(crate) fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((u32::from(r) * 19595 + u32::from(g) * 38470 + u32::from(b) * 7471 + 0x8000) >> 16) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_shapes() {
        let buf = [0u8; 12];
        assert!(ImageRef::new(2, 2, 3, &buf).is_ok());
        assert_eq!(
            ImageRef::new(0, 2, 3, &buf).unwrap_err(),
            AugError::EmptyImage {
                width: 0,
                height: 2
            }
        );
        assert_eq!(
            ImageRef::new(2, 2, 2, &buf).unwrap_err(),
            AugError::Channels(2)
        );
        assert!(matches!(
            ImageRef::new(3, 2, 3, &buf).unwrap_err(),
            AugError::BufferSize { expected: 18, .. }
        ));
    }

    #[test]
    fn fnv_known_answer() {
        // FNV-1a 64 of "a" from the reference tables.
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        // Fed in pieces, the same hash; pinned on a known string (the firmware checks it at boot).
        assert_eq!(
            Fnv64::new().bytes(b"tiny").bytes(b"vit").finish(),
            fnv1a64(b"tinyvit")
        );
        assert_eq!(fnv1a64(b"tinyvit"), 0x0a52_9f3e_e27c_ea9a);
    }

    #[test]
    fn luma_matches_pil_weights() {
        assert_eq!(luma(255, 255, 255), 255);
        assert_eq!(luma(0, 0, 0), 0);
        assert_eq!(luma(255, 0, 0), 76);
    }
}
