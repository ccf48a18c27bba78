//! The region decoder against its oracle, zune-jpeg's full decode, cropped.

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use tinyvit_jpeg::{read_info, Decoder, JpegError};
use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;

/// zune's full decode with the options the `image` crate gives it: (pixels, width, height,
/// channels).
fn zune(bytes: &[u8]) -> (Vec<u8>, usize, usize, usize) {
    let opts = |out| {
        DecoderOptions::default()
            .jpeg_set_out_colorspace(out)
            .set_strict_mode(false)
            .set_max_width(usize::MAX)
            .set_max_height(usize::MAX)
    };
    let mut d =
        zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), opts(ColorSpace::RGB));
    d.decode_headers().unwrap();
    let grey = d.input_colorspace() == Some(ColorSpace::Luma);
    if grey {
        d = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), opts(ColorSpace::Luma));
    }
    let px = d.decode().unwrap();
    let (w, h) = d.dimensions().unwrap();
    (px, w, h, if grey { 1 } else { 3 })
}

fn crop(full: &[u8], fw: usize, ch: usize, [x, y, w, h]: [usize; 4]) -> Vec<u8> {
    let mut out = Vec::with_capacity(w * h * ch);
    for r in y..y + h {
        out.extend_from_slice(&full[(r * fw + x) * ch..(r * fw + x + w) * ch]);
    }
    out
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Full image, 1x1 at the corners, MCU-edge-straddling rectangles and random ones.
fn rects(w: usize, h: usize, seed: u64, random: usize) -> Vec<[usize; 4]> {
    let mut v = vec![
        [0, 0, w, h],
        [0, 0, 1, 1],
        [w - 1, 0, 1, 1],
        [0, h - 1, 1, 1],
        [w - 1, h - 1, 1, 1],
    ];
    for e in [7usize, 8, 15, 16, 17, 31, 32, 33] {
        if e < w && e < h {
            let (x, y) = (e - 1, e - 1);
            v.push([x, y, (w - x).min(3), (h - y).min(3)]);
            v.push([e, e, w - e, h - e]);
            v.push([0, 0, e, e]);
            v.push([x, 0, 1, h]);
            v.push([0, y, w, 1]);
        }
    }
    let mut rng = Rng(seed);
    for _ in 0..random {
        let (x, y) = (rng.below(w), rng.below(h));
        let (rw, rh) = (1 + rng.below(w - x), 1 + rng.below(h - y));
        v.push([x, y, rw, rh]);
    }
    v
}

fn check(name: &str, bytes: &[u8], random: usize) -> usize {
    check_with(Decoder::new(), name, bytes, random)
}

fn check_with(mut dec: Decoder, name: &str, bytes: &[u8], random: usize) -> usize {
    let (full, fw, fh, ch) = zune(bytes);
    let info = read_info(bytes).unwrap();
    assert_eq!(
        (
            info.width as usize,
            info.height as usize,
            usize::from(info.channels)
        ),
        (fw, fh, ch),
        "{name}"
    );
    assert_eq!(info.unsupported, None, "{name}");
    let mut out = Vec::new();
    let list = rects(fw, fh, bytes.len() as u64, random);
    for r in &list {
        let [x, y, w, h] = r.map(|v| v as u32);
        dec.decode_region(bytes, x, y, w, h, &mut out)
            .unwrap_or_else(|e| panic!("{name} {r:?}: {e}"));
        assert!(
            out == crop(&full, fw, ch, *r),
            "{name}: region {r:?} differs from zune"
        );
    }
    list.len()
}

fn fixtures() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    files.sort();
    let host = Path::new(env!("CARGO_MANIFEST_DIR")).join("../host/tests/fixtures/jpeg");
    files.push(host.join("rgb420.jpg"));
    files.push(host.join("grey.jpg"));
    files
        .into_iter()
        .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
        .collect()
}

/// The portable (non-AVX2) IDCT, upsampling and colour code give the same bytes.
#[test]
fn portable_code_equals_zune() {
    for (name, bytes) in &fixtures() {
        check_with(Decoder::without_simd(), name, bytes, 10);
    }
}

#[test]
fn pillow_fixtures_equal_zune() {
    let mut n = 0;
    let files = fixtures();
    assert!(files.len() >= 20);
    for (name, bytes) in &files {
        n += check(name, bytes, 60);
    }
    eprintln!("{} files, {n} rectangles", files.len());
}

/// A test pattern with gradients, edges and noise.
fn pattern(w: u32, h: u32, seed: u64) -> image::RgbImage {
    let mut rng = Rng(seed);
    image::RgbImage::from_fn(w, h, |x, y| {
        let n = rng.below(40) as u32;
        image::Rgb([
            ((x * 3 + y + n) % 256) as u8,
            if (x / 7 + y / 5) % 2 == 0 {
                230
            } else {
                20 + n as u8
            },
            ((x * y / 17 + n) % 256) as u8,
        ])
    })
}

fn encode(img: &image::DynamicImage, q: u8) -> Vec<u8> {
    let mut buf = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, q)
        .encode_image(img)
        .unwrap();
    buf
}

#[test]
fn image_crate_encodes_equal_zune() {
    for (i, &(w, h)) in [
        (1u32, 1u32),
        (8, 8),
        (17, 9),
        (64, 64),
        (333, 251),
        (100, 3),
    ]
    .iter()
    .enumerate()
    {
        let img = image::DynamicImage::ImageRgb8(pattern(w, h, i as u64));
        for q in [50u8, 90, 100] {
            check(&format!("rgb {w}x{h} q{q}"), &encode(&img, q), 20);
            check(
                &format!("grey {w}x{h} q{q}"),
                &encode(&image::DynamicImage::ImageLuma8(img.to_luma8()), q),
                10,
            );
        }
    }
}

/// A real photo (committed fixtures from `make.py`): as Pillow writes it, 4:2:0 and 4:4:4, and
/// re-encoded by `image` at two qualities.
#[test]
fn photos_equal_zune() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    for name in ["photo_420.jpg", "photo_444.jpg"] {
        let bytes = std::fs::read(dir.join(name)).unwrap();
        check(name, &bytes, 30);
        let img = image::load_from_memory(&bytes).unwrap();
        for q in [75, 95] {
            check(&format!("{name} via image q{q}"), &encode(&img, q), 30);
        }
    }
}

#[test]
fn unsupported_kinds_say_so() {
    let host = Path::new(env!("CARGO_MANIFEST_DIR")).join("../host/tests/fixtures/jpeg");
    for name in ["rgb422_progressive.jpg", "cmyk.jpg"] {
        let bytes = std::fs::read(host.join(name)).unwrap();
        let info = read_info(&bytes).unwrap();
        assert!(info.unsupported.is_some(), "{name}");
        let err = Decoder::new()
            .decode_region(&bytes, 0, 0, 1, 1, &mut Vec::new())
            .unwrap_err();
        assert!(matches!(err, JpegError::Unsupported(_)), "{name}: {err}");
    }
}

#[test]
fn out_of_bounds_rectangles_are_errors() {
    let bytes =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/420_17x9.jpg"))
            .unwrap();
    let mut dec = Decoder::new();
    let mut out = Vec::new();
    for [x, y, w, h] in [
        [0, 0, 0, 1],
        [0, 0, 1, 0],
        [17, 0, 1, 1],
        [0, 9, 1, 1],
        [10, 0, 8, 1],
        [u32::MAX, 0, 2, 1],
    ] {
        let e = dec.decode_region(&bytes, x, y, w, h, &mut out).unwrap_err();
        assert!(matches!(e, JpegError::Region { .. }), "{e}");
    }
    dec.decode_region(&bytes, 16, 8, 1, 1, &mut out).unwrap();
}

/// Every truncation of a small file: an answer, never a panic; and when the answer is `Ok`
/// it equals zune.
#[test]
fn truncations_never_panic() {
    for name in ["420_17x9.jpg", "422_rst5.jpg", "grey_rst1.jpg"] {
        let bytes = std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures")
                .join(name),
        )
        .unwrap();
        let (full, fw, _, ch) = zune(&bytes);
        let mut dec = Decoder::new();
        let mut out = Vec::new();
        for len in 0..bytes.len() {
            let _ = read_info(&bytes[..len]);
            let (w, h) = (fw.min(5) as u32, 3);
            if dec
                .decode_region(&bytes[..len], 0, 0, w, h, &mut out)
                .is_ok()
            {
                assert_eq!(
                    out,
                    crop(&full, fw, ch, [0, 0, w as usize, h as usize]),
                    "{name} cut at {len}"
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Random byte corruptions: an answer, never a panic.
    #[test]
    fn corruptions_never_panic(edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
                               rect in (0u32..40, 0u32..40, 1u32..40, 1u32..40)) {
        let mut bytes = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/420_rst3.jpg")).unwrap();
        let n = bytes.len();
        for (at, b) in edits {
            bytes[at % n] = b;
        }
        let _ = read_info(&bytes);
        let _ = Decoder::new().decode_region(&bytes, rect.0, rect.1, rect.2, rect.3, &mut Vec::new());
    }

    /// Hostile headers: random sizes and sampling factors written into a valid file.
    #[test]
    fn hostile_frame_headers_never_panic(w in any::<u16>(), h in any::<u16>(), samp in any::<u8>(),
                                         rect in (0u32..70000, 0u32..70000, 1u32..500, 1u32..500)) {
        let mut bytes = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/420_17x9.jpg")).unwrap();
        let sof = bytes.windows(2).position(|p| p == [0xFF, 0xC0]).unwrap();
        bytes[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
        bytes[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
        bytes[sof + 11] = samp;
        let _ = read_info(&bytes);
        let _ = Decoder::new().decode_region(&bytes, rect.0, rect.1, rect.2, rect.3, &mut Vec::new());
    }
}

/// The fixtures cover what they claim: SOF1 with 16-bit DQT, restart markers.
#[test]
fn fixtures_cover_sof1_dqt16_and_restarts() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let b = std::fs::read(dir.join("422_dqt16_sof1.jpg")).unwrap();
    assert!(b.windows(2).any(|w| w == [0xFF, 0xC1]));
    let dqt = b.windows(2).position(|w| w == [0xFF, 0xDB]).unwrap();
    assert_eq!(b[dqt + 4] >> 4, 1, "16-bit table");
    for name in [
        "420_rst3.jpg",
        "444_rstrow.jpg",
        "grey_rst1.jpg",
        "422_rst5.jpg",
    ] {
        let b = std::fs::read(dir.join(name)).unwrap();
        assert!(b.windows(2).any(|w| w == [0xFF, 0xDD]), "{name}: DRI");
        assert!(
            b.windows(2)
                .filter(|w| w[0] == 0xFF && (0xD0..=0xD7).contains(&w[1]))
                .count()
                > 2,
            "{name}: RSTn"
        );
    }
}

/// A zero quantiser entry (invalid, but zune takes it) is left to zune.
#[test]
fn zero_quantiser_entries_are_unsupported() {
    let mut b =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/444_17x9.jpg"))
            .unwrap();
    let dqt = b.windows(2).position(|w| w == [0xFF, 0xDB]).unwrap();
    b[dqt + 5 + 20] = 0;
    assert_eq!(
        read_info(&b).unwrap().unsupported,
        Some("DQT: zero quantiser entry")
    );
    let e = Decoder::new()
        .decode_region(&b, 0, 0, 1, 1, &mut Vec::new())
        .unwrap_err();
    assert!(matches!(e, JpegError::Unsupported(_)), "{e}");
}

/// Adobe APP14 colour transforms other than YCbCr (1), and components named R, G, B (which
/// zune decodes as RGB), are left to zune; transform 1 decodes as usual.
#[test]
fn adobe_transforms_and_rgb_ids() {
    let clean =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/420_17x9.jpg"))
            .unwrap();
    let with_adobe = |transform: u8| {
        let mut b = clean[..2].to_vec();
        b.extend_from_slice(&[0xFF, 0xEE, 0, 14]);
        b.extend_from_slice(b"Adobe");
        b.extend_from_slice(&[0, 100, 0, 0, 0, 0, transform]);
        b.extend_from_slice(&clean[2..]);
        b
    };
    for t in [0u8, 2] {
        let b = with_adobe(t);
        assert!(
            read_info(&b).unwrap().unsupported.is_some(),
            "transform {t}"
        );
        let e = Decoder::new()
            .decode_region(&b, 0, 0, 1, 1, &mut Vec::new())
            .unwrap_err();
        assert!(matches!(e, JpegError::Unsupported(_)), "{e}");
    }
    check("adobe transform 1", &with_adobe(1), 10);

    let mut rgb = clean.clone();
    let sof = rgb.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    let sos = rgb.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
    for (i, id) in b"RGB".iter().enumerate() {
        rgb[sof + 10 + 3 * i] = *id;
        rgb[sos + 5 + 2 * i] = *id;
    }
    assert_eq!(
        read_info(&rgb).unwrap().unsupported,
        Some("RGB component ids")
    );
}
