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
