//! Inputs `cargo xtask fuzz` found (target `jpeg_region`), pinned: the region decoder must
//! never answer `Ok` where zune-jpeg, whose output it promises, refuses the file.

use std::path::Path;

use tinyvit_jpeg::{Decoder, JpegError};
use zune_core::bytestream::ZCursor;
use zune_jpeg::JpegDecoder;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name),
    )
    .unwrap()
}

/// The three bytes after an SOS segment's component list (Ss, Se, Ah/Al).
fn sos_tail(bytes: &[u8]) -> usize {
    let at = bytes.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
    let ns = usize::from(bytes[at + 4]);
    at + 5 + 2 * ns
}

#[test]
fn out_of_range_spectral_selection_is_refused_like_zune() {
    let good = fixture("420_17x9.jpg");
    let tail = sos_tail(&good);
    // Se = 154 was the fuzzer's find; the others are the sibling checks zune makes.
    for (offset, value) in [(1, 154u8), (0, 64), (2, 14 << 4), (2, 14)] {
        let mut bad = good.clone();
        bad[tail + offset] = value;
        let mut out = Vec::new();
        assert_eq!(
            Decoder::new().decode_region(&bad, 0, 0, 17, 9, &mut out),
            Err(JpegError::Format(
                "SOS: spectral selection or approximation out of range"
            )),
            "byte {offset} = {value}"
        );
        assert!(JpegDecoder::new(ZCursor::new(&bad[..])).decode().is_err());
    }
    let mut out = Vec::new();
    Decoder::new()
        .decode_region(&good, 0, 0, 17, 9, &mut out)
        .unwrap();
}

/// A damaged scan (a stray `FF FF AA` inside the entropy data, then a second SOI, no EOI),
/// found by `jpeg_region` after 166 s; the input (8 rectangle bytes, then the JPEG) is
/// `fuzz/regressions/jpeg_region/`. zune's reader fails on the unknown marker `AA` as soon as
/// its read-ahead meets it and, lenient, leaves the block it was decoding blank (the last
/// pixel of the 16x1 region at (0, 0) came out `[0, 46, 0]`), although the bits before the
/// marker decode that block (ours gave `[14, 11, 30]`). The region decoder now refuses a scan
/// with such a marker within zune's read-ahead of what it decoded: the caller falls back to
/// zune, whose output is then the answer by definition.
#[test]
fn damaged_scan_with_an_unknown_marker_is_refused() {
    let input = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/regressions/jpeg_region/crash-f560ced3f27b7b24a12fa39d66d7a8450650a057"),
    )
    .unwrap();
    let jpeg = &input[8..];
    let mut out = Vec::new();
    assert_eq!(
        Decoder::new().decode_region(jpeg, 0, 0, 16, 1, &mut out),
        Err(JpegError::Format(
            "a marker zune-jpeg does not know inside the entropy-coded data"
        ))
    );
    // The fallback: zune, lenient, decodes the file (with the blank block).
    let opts = zune_core::options::DecoderOptions::default()
        .jpeg_set_out_colorspace(zune_core::colorspace::ColorSpace::RGB)
        .set_strict_mode(false);
    let full = JpegDecoder::new_with_options(ZCursor::new(jpeg), opts)
        .decode()
        .unwrap();
    assert_eq!(full[15 * 3..16 * 3], [0, 46, 0]);
}
