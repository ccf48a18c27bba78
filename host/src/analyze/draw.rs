//! A small RGB canvas for the analysis pictures: filled rectangles, 8x8 bitmap text (the
//! `font8x8` glyphs, so no font file is needed at run time), images scaled by whole factors,
//! and PNG output through a temporary file renamed into place.

use std::path::Path;

use anyhow::{Context, Result};

use crate::data::Image;

/// Side of one glyph cell at scale 1, in pixels.
pub const GLYPH: u32 = 8;

/// An 8-bit RGB picture being drawn.
///
/// # Shapes
/// `data`: `[height, width, 3]` u8, row-major.
pub struct Canvas {
    pub width: u32,
    pub height: u32,
    data: Vec<u8>,
}

impl Canvas {
    /// A `width` x `height` canvas filled with `bg`.
    pub fn new(width: u32, height: u32, bg: [u8; 3]) -> Canvas {
        let n = width as usize * height as usize;
        let mut data = Vec::with_capacity(n * 3);
        for _ in 0..n {
            data.extend_from_slice(&bg);
        }
        Canvas {
            width,
            height,
            data,
        }
    }

    /// Sets one pixel; pixels outside the canvas are ignored.
    pub fn put(&mut self, x: u32, y: u32, c: [u8; 3]) {
        if x < self.width && y < self.height {
            let o = (y as usize * self.width as usize + x as usize) * 3;
            self.data[o..o + 3].copy_from_slice(&c);
        }
    }

    /// The colour of one pixel (for tests).
    pub fn get(&self, x: u32, y: u32) -> [u8; 3] {
        let o = (y as usize * self.width as usize + x as usize) * 3;
        [self.data[o], self.data[o + 1], self.data[o + 2]]
    }

    /// Fills the rectangle at (`x`, `y`) of `w` x `h` pixels, clipped to the canvas.
    pub fn fill(&mut self, x: u32, y: u32, w: u32, h: u32, c: [u8; 3]) {
        for yy in y..y.saturating_add(h).min(self.height) {
            for xx in x..x.saturating_add(w).min(self.width) {
                self.put(xx, yy, c);
            }
        }
    }

    /// Draws `s` with its top-left corner at (`x`, `y`), each glyph pixel `scale` x `scale`.
    /// Characters outside printable ASCII are drawn as `?`.
    pub fn text(&mut self, x: u32, y: u32, s: &str, scale: u32, c: [u8; 3]) {
        let scale = scale.max(1);
        for (i, ch) in s.chars().enumerate() {
            let code = if (' '..='~').contains(&ch) { ch } else { '?' } as usize;
            let glyph = font8x8::legacy::BASIC_LEGACY[code];
            let gx = x.saturating_add(i as u32 * GLYPH * scale);
            for (row, bits) in glyph.iter().enumerate() {
                for col in 0..GLYPH {
                    if bits >> col & 1 == 1 {
                        self.fill(gx + col * scale, y + row as u32 * scale, scale, scale, c);
                    }
                }
            }
        }
    }

    /// Copies `img` (grey or RGB) with its top-left corner at (`x`, `y`), each source pixel
    /// drawn as a `scale` x `scale` square.
    pub fn image(&mut self, x: u32, y: u32, img: &Image, scale: u32) {
        let ch = img.channels as usize;
        for sy in 0..img.height {
            for sx in 0..img.width {
                let o = (sy as usize * img.width as usize + sx as usize) * ch;
                let c = if ch >= 3 {
                    [img.data[o], img.data[o + 1], img.data[o + 2]]
                } else {
                    [img.data[o]; 3]
                };
                self.fill(x + sx * scale, y + sy * scale, scale, scale, c);
            }
        }
    }

    /// Writes the canvas as an RGB PNG (temporary file, then renamed to `path`).
    pub fn save_png(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("png.tmp");
        image::save_buffer_with_format(
            &tmp,
            &self.data,
            self.width,
            self.height,
            image::ExtendedColorType::Rgb8,
            image::ImageFormat::Png,
        )
        .with_context(|| format!("writing {}", tmp.display()))
        .and_then(|_| {
            std::fs::rename(&tmp, path)
                .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
        })
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
    }
}

/// Width in pixels of `s` drawn at `scale`.
pub fn text_width(s: &str, scale: u32) -> u32 {
    s.chars().count() as u32 * GLYPH * scale.max(1)
}

/// A diverging colour for `v` in [-1, 1]: blue at -1, white at 0, red at +1 (clamped; NaN is
/// grey).
pub fn diverging(v: f64) -> [u8; 3] {
    if v.is_nan() {
        return [128, 128, 128];
    }
    let v = v.clamp(-1.0, 1.0);
    let lerp = |a: f64, b: f64, t: f64| (a + (b - a) * t).round() as u8;
    if v < 0.0 {
        let t = -v;
        [
            lerp(255.0, 33.0, t),
            lerp(255.0, 102.0, t),
            lerp(255.0, 172.0, t),
        ]
    } else {
        [
            lerp(255.0, 178.0, v),
            lerp(255.0, 24.0, v),
            lerp(255.0, 43.0, v),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_sets_the_glyph_pixels() {
        let mut c = Canvas::new(20, 10, [0, 0, 0]);
        c.text(0, 0, "I", 1, [255, 255, 255]);
        // The legacy `I` glyph has a full-width top bar from column 1 to 4 on row 0.
        let lit: Vec<u32> = (0..8).filter(|&x| c.get(x, 0) == [255; 3]).collect();
        assert!(!lit.is_empty(), "no pixel of `I` on its top row");
        // Nothing drawn beyond one glyph cell.
        for x in 8..20 {
            for y in 0..10 {
                assert_eq!(c.get(x, y), [0, 0, 0], "({x}, {y})");
            }
        }
        assert_eq!(text_width("abc", 2), 48);
    }

    #[test]
    fn image_is_scaled_by_whole_factors() {
        let img = Image {
            width: 2,
            height: 1,
            channels: 1,
            data: vec![10, 200],
        };
        let mut c = Canvas::new(6, 3, [0, 0, 0]);
        c.image(1, 0, &img, 2);
        assert_eq!(c.get(1, 0), [10; 3]);
        assert_eq!(c.get(2, 1), [10; 3]);
        assert_eq!(c.get(3, 1), [200; 3]);
        assert_eq!(c.get(4, 1), [200; 3]);
        assert_eq!(c.get(5, 1), [0; 3]);
        assert_eq!(c.get(1, 2), [0; 3]);
    }

    #[test]
    fn diverging_scale_ends() {
        assert_eq!(diverging(0.0), [255, 255, 255]);
        assert_eq!(diverging(1.0), [178, 24, 43]);
        assert_eq!(diverging(-1.0), [33, 102, 172]);
        assert_eq!(diverging(7.0), diverging(1.0));
        assert_eq!(diverging(f64::NAN), [128; 3]);
    }
}
