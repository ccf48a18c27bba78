//! Corrupted entropy data: whenever the region decoder answers `Ok`, zune agrees.

use std::path::Path;

use tinyvit_jpeg::Decoder;
use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;

fn zune(bytes: &[u8], grey: bool) -> Option<Vec<u8>> {
    let out = if grey {
        ColorSpace::Luma
    } else {
        ColorSpace::RGB
    };
    let opts = DecoderOptions::default()
        .jpeg_set_out_colorspace(out)
        .set_strict_mode(false)
        .set_max_width(usize::MAX)
        .set_max_height(usize::MAX);
    let bytes = bytes.to_vec();
    std::panic::catch_unwind(move || {
        zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(&bytes[..]), opts)
            .decode()
            .ok()
    })
    .ok()
    .flatten()
}

#[test]
fn ok_answers_on_corrupt_scans_equal_zune() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut seed = 7u64;
    let mut next = || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) as usize
    };
    let (mut oks, mut total) = (0, 0);
    for name in [
        "420_64x48.jpg",
        "444_64x48.jpg",
        "422_rst5.jpg",
        "grey_64x48.jpg",
        "420_rst3.jpg",
    ] {
        let clean = std::fs::read(dir.join(name)).unwrap();
        let info = tinyvit_jpeg::read_info(&clean).unwrap();
        let sos = clean.windows(2).rposition(|w| w == [0xFF, 0xDA]).unwrap() + 14;
        let mut dec = Decoder::new();
        let mut out = Vec::new();
        for _ in 0..300 {
            let mut b = clean.clone();
            for _ in 0..1 + next() % 3 {
                let at = sos + next() % (b.len() - sos - 2);
                b[at] = next() as u8;
            }
            total += 1;
            if dec
                .decode_region(&b, 0, 0, info.width, info.height, &mut out)
                .is_ok()
            {
                oks += 1;
                let z = zune(&b, info.channels == 1);
                assert!(
                    z.as_deref() == Some(&out[..]),
                    "{name}: ours Ok but zune differs ({})",
                    z.is_some()
                );
            }
        }
    }
    eprintln!("{oks} of {total} corrupted files decoded, all equal to zune");
}
