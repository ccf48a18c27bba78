//! The region JPEG decoder: headers, then a rectangle chosen by the input. Whatever both it and
//! zune-jpeg decode must agree: the region equals zune's full decode cropped to it (the crate's
//! promise).

#![no_main]

use libfuzzer_sys::fuzz_target;
use tinyvit_jpeg::{read_info, Decoder};
use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let (rect, jpeg) = data.split_at(8);
    let Ok(info) = read_info(jpeg) else {
        return;
    };
    if info.unsupported.is_some() || u64::from(info.width) * u64::from(info.height) > 1 << 20 {
        return;
    }
    let pick =
        |i: usize, size: u32| u32::from(u16::from_le_bytes([rect[i], rect[i + 1]])) % size.max(1);
    let (x, y) = (pick(0, info.width), pick(2, info.height));
    let w = 1 + pick(4, info.width - x);
    let h = 1 + pick(6, info.height - y);
    let mut out = Vec::new();
    let Ok(got) = Decoder::new().decode_region(jpeg, x, y, w, h, &mut out) else {
        return;
    };
    assert_eq!((got.width, got.height), (info.width, info.height));
    let colour = if got.channels == 1 {
        ColorSpace::Luma
    } else {
        ColorSpace::RGB
    };
    let options = DecoderOptions::default()
        .jpeg_set_out_colorspace(colour)
        .set_strict_mode(false)
        .set_max_width(usize::MAX)
        .set_max_height(usize::MAX);
    let mut zune = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(jpeg), options);
    // Damage after the last MCU row the rectangle needs (a second, broken SOS after the scan,
    // found by this target) is never read by a region decoder, by design, while zune's full
    // decode refuses the file: only pixels both produce are compared. Header damage before
    // the scan is pinned by jpeg/tests/fuzz_regressions.rs.
    let Ok(full) = zune.decode() else {
        return;
    };
    let c = usize::from(got.channels);
    let width = info.width as usize;
    for row in 0..h as usize {
        let at = ((y as usize + row) * width + x as usize) * c;
        assert_eq!(
            &out[row * w as usize * c..(row + 1) * w as usize * c],
            &full[at..at + w as usize * c],
            "row {row} of the {w}x{h} region at ({x}, {y})"
        );
    }
});
