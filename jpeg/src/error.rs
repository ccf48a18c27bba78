//! The one error type of the crate.

use core::fmt;

/// Why a JPEG could not be decoded.
///
/// `Unsupported` means the file may well be a valid JPEG, only not of a kind this decoder
/// handles (progressive, CMYK, 12-bit, ...); the caller should hand it to a full decoder. The
/// other variants mean the bytes are malformed, truncated, or the request was out of range; a
/// full decoder may still salvage something from a damaged file, so callers usually fall back on
/// any error.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum JpegError {
    /// A valid JPEG feature this decoder does not implement.
    Unsupported(&'static str),
    /// A malformed marker segment; the message names the marker and the field.
    Format(&'static str),
    /// The data ended (or hit a marker) before the decoder had all it needed.
    Truncated(&'static str),
    /// The requested rectangle is empty or does not lie inside the image.
    Region {
        /// Requested rectangle: left, top, width, height.
        rect: [u32; 4],
        /// Image size: width, height.
        size: [u32; 2],
    },
}

impl fmt::Display for JpegError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unsupported(what) => write!(f, "unsupported JPEG: {what}"),
            Self::Format(what) => write!(f, "malformed JPEG: {what}"),
            Self::Truncated(what) => write!(f, "truncated JPEG: {what}"),
            Self::Region {
                rect: [x, y, w, h],
                size: [iw, ih],
            } => write!(
                f,
                "region {w}x{h} at ({x}, {y}) is empty or outside the {iw}x{ih} image"
            ),
        }
    }
}

impl std::error::Error for JpegError {}
