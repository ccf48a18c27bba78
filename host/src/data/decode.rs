//! Images and their decoders: the 8-bit [`Image`], file decoding ([`decode_image`], zune-jpeg
//! for JPEGs with `image`'s settings, `image` for the rest), channel conversion
//! ([`to_channels`]) and the [`ViewDecoder`], which renders a training view straight from a
//! file and, for baseline JPEGs, decodes only the view's crop (`tinyvit-jpeg`).
//!
//! Datasets ([`crate::data`]) and the `tinyvit augment` command both call this module; it
//! calls only the core and the decoders.

use std::path::Path;

use anyhow::{Context, Result};
use tinyvit_core::aug::{self, replay, scratch_len, AugConfig, ImageMut, ImageRef};

/// An 8-bit image.
///
/// # Shapes
/// `data`: `[height, width, channels]` u8, row-major, channels interleaved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Image {
    pub width: u32,
    pub height: u32,
    /// 1 (grey) or 3 (RGB).
    pub channels: u32,
    pub data: Vec<u8>,
}

impl Image {
    /// The core's view of these pixels.
    pub fn as_ref(&self) -> aug::ImageRef<'_> {
        aug::ImageRef {
            width: self.width,
            height: self.height,
            channels: self.channels,
            data: &self.data,
        }
    }
}

/// Converts an image to `channels` (grey -> RGB by replication, RGB -> grey by ITU-R 601 luma
/// in integers).
pub fn to_channels(img: Image, channels: u32) -> Image {
    if img.channels == channels {
        return img;
    }
    let mut data = Vec::new();
    convert_pixels(&img.data, channels, &mut data);
    Image {
        channels,
        data,
        ..img
    }
}

/// [`to_channels`] on pixel bytes: `src` holds pixels of the other channel count (1 or 3)
/// than `channels`; the converted pixels replace `out`'s content.
pub fn convert_pixels(src: &[u8], channels: u32, out: &mut Vec<u8>) {
    out.clear();
    if channels == 3 {
        out.extend(src.iter().flat_map(|&v| [v, v, v]));
    } else {
        out.extend(src.chunks_exact(3).map(|p| {
            ((299 * u32::from(p[0]) + 587 * u32::from(p[1]) + 114 * u32::from(p[2]) + 500) / 1000)
                as u8
        }));
    }
}

/// Decodes an image file; grey stays 1 channel, everything else becomes RGB.
pub fn load_image(path: &Path) -> Result<Image> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    decode_image(&bytes).with_context(|| format!("decoding {}", path.display()))
}

/// Decodes encoded image bytes (PNG, JPEG, WebP); grey stays 1 channel, the rest becomes RGB.
pub fn decode_image(bytes: &[u8]) -> Result<Image> {
    let mut img = Image {
        width: 0,
        height: 0,
        channels: 3,
        data: Vec::new(),
    };
    decode_image_into(bytes, &mut img)?;
    Ok(img)
}

/// [`decode_image`] into `img`, reusing its pixel buffer (a loader decoding image after image
/// allocates once). Baseline and progressive JPEGs in YCbCr, RGB, CMYK, YCCK or grey go
/// straight to zune-jpeg, the decoder `image` runs for JPEG, with the options `image` gives it
/// (so the pixels are identical); anything else goes through `image`.
pub fn decode_image_into(bytes: &[u8], img: &mut Image) -> Result<()> {
    let jpeg = bytes.starts_with(&[0xFF, 0xD8, 0xFF]);
    anyhow::ensure!(
        !jpeg || jpeg_is_complete(bytes),
        "truncated JPEG: no end-of-image marker after its last scan"
    );
    if jpeg && decode_jpeg_into(bytes, img)? {
        return Ok(());
    }
    *img = decode_with_image(bytes)?;
    Ok(())
}

/// Whether a JPEG's data ends: an end-of-image marker (`FF D9`) follows the start of its last
/// scan (`FF DA`). Inside entropy-coded data every `FF` is followed by `00` or a restart
/// marker, so the marker found there is the image's own (a thumbnail's EOI sits in a segment
/// before the scans). The decoders fill a truncated scan with grey silently; this check makes
/// it an error instead.
pub fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let Some(sos) = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]) else {
        return false;
    };
    bytes[sos..].windows(2).any(|w| w == [0xFF, 0xD9])
}

/// The JPEG fast path; `Ok(false)` leaves the image to the `image` crate.
fn decode_jpeg_into(bytes: &[u8], img: &mut Image) -> Result<bool> {
    use zune_core::bytestream::ZCursor;
    use zune_core::colorspace::ColorSpace;
    use zune_core::options::DecoderOptions;
    // `image`'s own settings for zune-jpeg (image 0.25 codecs/jpeg/decoder.rs), no limits.
    let opts = |out: ColorSpace| {
        DecoderOptions::default()
            .jpeg_set_out_colorspace(out)
            .set_strict_mode(false)
            .set_max_width(usize::MAX)
            .set_max_height(usize::MAX)
    };
    let mut dec =
        zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), opts(ColorSpace::RGB));
    dec.decode_headers().context("decoding JPEG headers")?;
    let (out, channels) = match dec.input_colorspace() {
        Some(ColorSpace::Luma) => (ColorSpace::Luma, 1u32),
        Some(ColorSpace::YCbCr | ColorSpace::RGB | ColorSpace::CMYK | ColorSpace::YCCK) => {
            (ColorSpace::RGB, 3)
        }
        _ => return Ok(false),
    };
    let Some((w, h)) = dec.dimensions() else {
        return Ok(false);
    };
    let len = w * h * channels as usize;
    // `image` refuses decodes over its default 512 MiB allocation limit; keep its answer.
    if len == 0 || len > 512 * 1024 * 1024 {
        return Ok(false);
    }
    if out != ColorSpace::RGB {
        // As `image` does: a fresh decoder asked for the grey output from the start.
        dec = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), opts(out));
    }
    img.data.resize(len, 0);
    dec.decode_into(&mut img.data).context("decoding JPEG")?;
    img.width = u32::try_from(w)?;
    img.height = u32::try_from(h)?;
    img.channels = channels;
    Ok(true)
}

/// Renders training views straight from encoded image files, decoding only what a view needs.
///
/// RandomResizedCrop draws its crop from the image size and the seed alone, so for a baseline
/// JPEG the size comes from the header, the crop is drawn, and the region decoder
/// (`tinyvit-jpeg`) decodes just the crop's pixels: it stops after the crop's last MCU row and
/// transforms only the blocks the crop covers. Its pixels are zune-jpeg's (the decoder behind
/// [`decode_image`]) and [`aug::apply_region`] gives [`aug::apply`]'s bytes, so the view is
/// the one the full decode gives. Any other file (PNG, progressive JPEG, CMYK, damaged) is
/// decoded whole. Holds its buffers between calls; one per thread ([`with_view_decoder`]).
#[derive(Debug, Default)]
pub struct ViewDecoder {
    jpeg: tinyvit_jpeg::Decoder,
    /// The decoded crop (or the whole image) before and after the channel conversion.
    pixels: Vec<u8>,
    converted: Vec<u8>,
    full: Image,
    scratch: Vec<u8>,
    /// Views rendered from a decoded crop (the rest decoded the whole image).
    region_views: u64,
}

impl ViewDecoder {
    /// A decoder with empty buffers.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many views so far were rendered from a decoded crop alone.
    pub fn region_views(&self) -> u64 {
        self.region_views
    }

    /// The training view of `seed` of the image in `bytes` (PNG or JPEG), converted to
    /// `channels` first ([`to_channels`]), into `out` (resized to `cfg.size`² x
    /// `channels`). Returns the view's parameters.
    pub fn render(
        &mut self,
        bytes: &[u8],
        channels: u32,
        cfg: &AugConfig,
        seed: u32,
        out: &mut Vec<u8>,
    ) -> Result<aug::AugParams> {
        if let Some(p) = self.render_jpeg_region(bytes, channels, cfg, seed, out)? {
            return Ok(p);
        }
        decode_image_into(bytes, &mut self.full)?;
        let src = convert(self.full.as_ref(), channels, &mut self.converted)?;
        render_into(src, cfg, seed, out, &mut self.scratch)
    }

    /// [`render`](Self::render) of an already decoded image (its own channels).
    pub fn render_decoded(
        &mut self,
        src: ImageRef<'_>,
        cfg: &AugConfig,
        seed: u32,
        out: &mut Vec<u8>,
    ) -> Result<aug::AugParams> {
        render_into(src, cfg, seed, out, &mut self.scratch)
    }

    /// The region path; `Ok(None)` when the file is not one the region decoder reads (or it
    /// fails on it: the whole-image decoder then decides, and names any error).
    fn render_jpeg_region(
        &mut self,
        bytes: &[u8],
        channels: u32,
        cfg: &AugConfig,
        seed: u32,
        out: &mut Vec<u8>,
    ) -> Result<Option<aug::AugParams>> {
        if !bytes.starts_with(&[0xFF, 0xD8, 0xFF]) || !jpeg_is_complete(bytes) {
            return Ok(None);
        }
        let Ok(info) = tinyvit_jpeg::read_info(bytes) else {
            return Ok(None);
        };
        if info.unsupported.is_some() {
            return Ok(None);
        }
        let p = aug::decode(cfg, seed, info.width, info.height)?;
        let c = p.crop;
        let got = self
            .jpeg
            .decode_region(bytes, c.x, c.y, c.width, c.height, &mut self.pixels);
        let Ok(info) = got else {
            return Ok(None);
        };
        let region = ImageRef::new(c.width, c.height, u32::from(info.channels), &self.pixels)?;
        let src = convert(region, channels, &mut self.converted)?;
        let out = view_buffers(cfg, &src, out, &mut self.scratch)?;
        aug::apply_region(cfg, &p, src, c.x, c.y, out, &mut self.scratch)?;
        self.region_views += 1;
        Ok(Some(p))
    }
}

/// `src` converted to `channels` (as [`to_channels`], into `buf`), or `src`
/// itself when it already has them.
fn convert<'a>(src: ImageRef<'a>, channels: u32, buf: &'a mut Vec<u8>) -> Result<ImageRef<'a>> {
    if src.channels == channels {
        return Ok(src);
    }
    convert_pixels(src.data, channels, buf);
    Ok(ImageRef::new(src.width, src.height, channels, buf)?)
}

/// Sizes `scratch` for a view of `src` and `out` for the view; returns the view's image.
fn view_buffers<'o>(
    cfg: &AugConfig,
    src: &ImageRef<'_>,
    out: &'o mut Vec<u8>,
    scratch: &mut Vec<u8>,
) -> Result<ImageMut<'o>> {
    scratch.resize(scratch_len(cfg, src.width, src.height, src.channels)?, 0);
    out.resize((cfg.size * cfg.size * src.channels) as usize, 0);
    Ok(ImageMut::new(cfg.size, cfg.size, src.channels, out)?)
}

/// [`replay`] into `out` (resized to the view's size), with `scratch` grown as needed.
fn render_into(
    src: ImageRef<'_>,
    cfg: &AugConfig,
    seed: u32,
    out: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
) -> Result<aug::AugParams> {
    let out = view_buffers(cfg, &src, out, scratch)?;
    Ok(replay(cfg, seed, src, out, scratch)?)
}

std::thread_local! {
    static VIEW_DECODER: std::cell::RefCell<ViewDecoder> = std::cell::RefCell::new(ViewDecoder::new());
}

/// Runs `f` with this thread's [`ViewDecoder`] (its buffers live as long as the thread).
pub fn with_view_decoder<R>(f: impl FnOnce(&mut ViewDecoder) -> R) -> R {
    VIEW_DECODER.with(|v| match v.try_borrow_mut() {
        Ok(mut v) => f(&mut v),
        // Re-entered on this thread (not done today): a fresh decoder keeps it correct.
        Err(_) => f(&mut ViewDecoder::new()),
    })
}

fn decode_with_image(bytes: &[u8]) -> Result<Image> {
    let img = image::load_from_memory(bytes)?;
    let grey = !img.color().has_color();
    Ok(if grey {
        let g = img.into_luma8();
        Image {
            width: g.width(),
            height: g.height(),
            channels: 1,
            data: g.into_raw(),
        }
    } else {
        let c = img.into_rgb8();
        Image {
            width: c.width(),
            height: c.height(),
            channels: 3,
            data: c.into_raw(),
        }
    })
}

/// Writes an 8-bit HWC image; the format follows the extension.
pub fn save_image(path: &Path, img: &Image) -> Result<()> {
    let color = if img.channels == 1 {
        image::ExtendedColorType::L8
    } else {
        image::ExtendedColorType::Rgb8
    };
    image::save_buffer(path, &img.data, img.width, img.height, color)
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The training view of a decoded image by the core's `replay` alone (the reference).
    fn whole_view(cfg: &AugConfig, src: &Image, seed: u32) -> (Vec<u8>, aug::AugParams) {
        let mut out = vec![0u8; (cfg.size * cfg.size * src.channels) as usize];
        let mut scratch = vec![0u8; scratch_len(cfg, src.width, src.height, src.channels).unwrap()];
        let dst = ImageMut::new(cfg.size, cfg.size, src.channels, &mut out).unwrap();
        let p = replay(cfg, seed, src.as_ref(), dst, &mut scratch).unwrap();
        (out, p)
    }

    #[test]
    fn channel_conversion() {
        let grey = Image {
            width: 2,
            height: 1,
            channels: 1,
            data: vec![10, 200],
        };
        let rgb = to_channels(grey.clone(), 3);
        assert_eq!(rgb.data, vec![10, 10, 10, 200, 200, 200]);
        assert_eq!(to_channels(rgb, 1).data, grey.data);
        let c = Image {
            width: 1,
            height: 1,
            channels: 3,
            data: vec![255, 0, 0],
        };
        // ITU-R 601 luma of pure red: 0.299 * 255 = 76.2.
        assert_eq!(to_channels(c, 1).data, vec![76]);
    }

    /// The committed JPEG fixtures (4:2:0, progressive 4:2:2, grey, CMYK, made by Pillow) and
    /// a `w x h` test pattern encoded by `image` at quality 90 (4:4:4), which is also returned.
    fn jpeg_files(w: u32, h: u32) -> (Vec<Vec<u8>>, image::RgbImage) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jpeg");
        let mut files = Vec::new();
        for name in [
            "rgb420.jpg",
            "rgb422_progressive.jpg",
            "grey.jpg",
            "cmyk.jpg",
        ] {
            files.push(std::fs::read(dir.join(name)).unwrap());
        }
        let mut data = vec![0u8; (w * h * 3) as usize];
        aug::test_pattern(w, h, 3, &mut data).unwrap();
        let rgb = image::RgbImage::from_raw(w, h, data).unwrap();
        let mut buf = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, 90)
            .encode_image(&rgb)
            .unwrap();
        files.push(buf);
        (files, rgb)
    }

    /// A JPEG cut short is an error on every path (whole decode, training view), never a
    /// grey-filled image; a damaged PNG too.
    #[test]
    fn truncated_images_are_errors() {
        let (files, _) = jpeg_files(40, 24);
        let cfg = tinyvit_core::aug::preset("light").unwrap();
        for f in &files {
            assert!(jpeg_is_complete(f));
            decode_image(f).unwrap();
            for cut in [f.len() * 3 / 4, f.len() - 2] {
                let e = format!("{:#}", decode_image(&f[..cut]).unwrap_err());
                assert!(e.contains("truncated JPEG"), "{e}");
                let mut out = Vec::new();
                let e = ViewDecoder::new()
                    .render(&f[..cut], 3, &cfg, 7, &mut out)
                    .unwrap_err();
                assert!(format!("{e:#}").contains("truncated JPEG"), "{e:#}");
            }
        }
        let img = Image {
            width: 16,
            height: 16,
            channels: 3,
            data: vec![90; 16 * 16 * 3],
        };
        let p = std::env::temp_dir().join(format!("tinyvit-trunc-{}.png", std::process::id()));
        save_image(&p, &img).unwrap();
        let png = std::fs::read(&p).unwrap();
        std::fs::write(&p, &png[..png.len() / 2]).unwrap();
        let e = format!("{:#}", load_image(&p).unwrap_err());
        assert!(e.contains(&p.display().to_string()), "{e}");
        std::fs::remove_file(&p).unwrap();
    }

    /// The zune-jpeg fast path gives exactly what `image` decodes, for every JPEG kind it
    /// takes (4:4:4 from `image`'s encoder; 4:2:0, progressive 4:2:2, grey and CMYK made by
    /// Pillow), reusing one buffer across sizes and channel counts.
    #[test]
    fn jpeg_fast_path_equals_image_crate() {
        let (files, _) = jpeg_files(61, 47);
        let mut reused = Image {
            width: 0,
            height: 0,
            channels: 3,
            data: Vec::new(),
        };
        for (i, bytes) in files.iter().chain(files.iter().rev()).enumerate() {
            let want = decode_with_image(bytes).unwrap();
            assert!(decode_jpeg_into(bytes, &mut reused).unwrap(), "file {i}");
            assert_eq!(
                (reused.width, reused.height, reused.channels),
                (want.width, want.height, want.channels),
                "file {i}"
            );
            assert!(reused.data == want.data, "file {i}: pixels differ");
            let again = decode_image(bytes).unwrap();
            assert!(again.data == want.data, "file {i}");
        }
        assert_eq!(decode_image(&files[2]).unwrap().channels, 1);
        assert!(decode_image(&files[0][..100]).is_err());
    }

    /// The views [`ViewDecoder::render`] makes from encoded files (the crop decoded alone for
    /// baseline JPEGs) are the views of the whole decoded image, as the folder dataset decodes
    /// it (`image`, RGB) and converts it, for grey and RGB runs, every JPEG kind, a PNG, a
    /// damaged file's error, and across reuse of one decoder.
    #[test]
    fn views_from_files_equal_views_of_whole_images() {
        let (mut files, rgb) = jpeg_files(161, 97);
        assert!(tinyvit_jpeg::read_info(&files[4])
            .unwrap()
            .unsupported
            .is_none());
        let mut png = std::io::Cursor::new(Vec::new());
        rgb.write_to(&mut png, image::ImageFormat::Png).unwrap();
        files.push(png.into_inner());
        let mut cfg = aug::preset("in22k-distill").unwrap();
        cfg.size = 40;
        let mut v = ViewDecoder::new();
        let mut got = Vec::new();
        for (f, bytes) in files.iter().enumerate() {
            let whole = image::load_from_memory(bytes).unwrap().to_rgb8();
            let whole = Image {
                width: whole.width(),
                height: whole.height(),
                channels: 3,
                data: whole.into_raw(),
            };
            for channels in [3, 1] {
                let src = to_channels(whole.clone(), channels);
                for seed in 0..25 {
                    let (want, wp) = whole_view(&cfg, &src, seed);
                    let p = v.render(bytes, channels, &cfg, seed, &mut got).unwrap();
                    assert_eq!(p, wp, "file {f} channels {channels} seed {seed}");
                    assert!(got == want, "file {f} channels {channels} seed {seed}");
                }
            }
        }
        // The 4:2:0, grey and q90 4:4:4 files went through the crop decoder every time.
        assert_eq!(v.region_views(), 3 * 2 * 25);
        let err = v
            .render(&files[4][..300], 3, &cfg, 1, &mut got)
            .unwrap_err();
        assert!(format!("{err:#}").contains("JPEG"), "{err:#}");
    }
}
