//! A small RGB canvas for every picture the host draws (the analyses' contact sheets and
//! heatmaps, the trainer's curves): filled rectangles, lines, 8x8 bitmap text (the `font8x8`
//! glyphs, so no font file is needed at run time), images scaled by whole factors, line charts
//! with axes, ticks, labels and a legend, and PNG output through a temporary file renamed into
//! place.

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

    /// A one-pixel line from (`x0`, `y0`) to (`x1`, `y1`) (Bresenham), clipped to the canvas.
    pub fn line(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: [u8; 3]) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        loop {
            if x >= 0 && y >= 0 && x <= u32::MAX as i64 && y <= u32::MAX as i64 {
                self.put(x as u32, y as u32, c);
            }
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
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

/// One named line of a [`chart`].
pub struct Series<'a> {
    pub name: &'a str,
    pub color: [u8; 3],
    /// (x, y) points in drawing order; non-finite points are left out.
    pub points: &'a [(f64, f64)],
    /// Each point a dot, unconnected (a scatter), instead of a line through them.
    pub dots: bool,
}

/// Titles of a [`chart`].
pub struct Axes<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
}

/// Tick positions for the range `lo..=hi`: about `target` round values (1, 2 or 5 times a
/// power of ten apart) inside the range, and their step.
pub fn ticks(lo: f64, hi: f64, target: usize) -> (Vec<f64>, f64) {
    let span = (hi - lo).abs().max(f64::EPSILON);
    let raw = span / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| span / s <= target as f64)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() * step;
    let mut out = Vec::new();
    let mut v = first;
    while v <= hi + step * 1e-9 && out.len() < 64 {
        out.push(if v.abs() < step * 1e-9 { 0.0 } else { v });
        v += step;
    }
    (out, step)
}

/// A tick value with as many decimals as its step needs.
pub fn tick_label(v: f64, step: f64) -> String {
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10().floor()) as usize
    };
    format!("{v:.decimals$}")
}

/// Draws a line chart in the `w` x `h` rectangle at (`x`, `y`): the title, a frame, ticks with
/// their values on both axes, the axis labels and a legend. Both axes are scaled to the data
/// (y with a 5 % margin, and headroom so that no point lies under the legend; x with a 4 %
/// margin when a series is drawn as dots, so that no dot is cut by the frame), so small changes
/// stay visible. The title sits above the y axis's label, which reads along the top of the axis.
pub fn chart(
    c: &mut Canvas,
    x: u32,
    y: u32,
    w: u32,
    h: u32,
    axes: &Axes<'_>,
    series: &[Series<'_>],
) {
    const INK: [u8; 3] = [0, 0, 0];
    const GRID: [u8; 3] = [225, 225, 225];
    let pts = || {
        series
            .iter()
            .flat_map(|s| s.points.iter())
            .filter(|p| p.0.is_finite() && p.1.is_finite())
    };
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for p in pts() {
        x0 = x0.min(p.0);
        x1 = x1.max(p.0);
        y0 = y0.min(p.1);
        y1 = y1.max(p.1);
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 - x0 < 1e-12 {
        (x0, x1) = (x0 - 0.5, x0 + 0.5);
    }
    if series.iter().any(|s| s.dots) {
        let pad = (x1 - x0) * 0.04;
        (x0, x1) = (x0 - pad, x1 + pad);
    }
    let pad = ((y1 - y0) * 0.05).max(1e-6);
    (y0, y1) = (y0 - pad, y1 + pad);
    // Plot area inside the rectangle: room for tick values (left), labels (bottom), the title
    // and the y label above it (top).
    let (left, right, top, bottom) = (x + 64, x + w - 12, y + 36, y + h - 40);
    let (pw, ph) = ((right - left) as f64, (bottom - top) as f64);
    // Headroom for the legend (top right, one row a series): the data stays below it.
    let legend = (8 + 12 * series.len() as u32) as f64;
    if legend < ph * 0.5 {
        y1 += (y1 - y0) * legend / (ph - legend);
    }
    let px = |v: f64| left as f64 + (v - x0) / (x1 - x0) * pw;
    let py = |v: f64| bottom as f64 - (v - y0) / (y1 - y0) * ph;
    c.text(left, y + 6, axes.title, 1, INK);
    let (yt, ys) = ticks(y0, y1, 6);
    for v in &yt {
        let yy = py(*v).round() as u32;
        c.fill(left, yy, right - left, 1, GRID);
        c.fill(left - 4, yy, 4, 1, INK);
        let s = tick_label(*v, ys);
        c.text(
            left.saturating_sub(8 + text_width(&s, 1)),
            yy.saturating_sub(4),
            &s,
            1,
            INK,
        );
    }
    let (xt, xs) = ticks(x0, x1, 6);
    for v in &xt {
        let xx = px(*v).round() as u32;
        c.fill(xx, bottom, 1, 4, INK);
        let s = tick_label(*v, xs);
        c.text(
            xx.saturating_sub(text_width(&s, 1) / 2),
            bottom + 8,
            &s,
            1,
            INK,
        );
    }
    // Frame.
    c.fill(left, top, right - left, 1, INK);
    c.fill(left, bottom, right - left + 1, 1, INK);
    c.fill(left, top, 1, bottom - top, INK);
    c.fill(right, top, 1, bottom - top, INK);
    c.text(
        left + (right - left).saturating_sub(text_width(axes.x_label, 1)) / 2,
        bottom + 24,
        axes.x_label,
        1,
        INK,
    );
    // The y label reads along the top of the axis (8x8 glyphs are not rotated).
    c.text(x + 4, top.saturating_sub(12), axes.y_label, 1, INK);
    for s in series {
        let mut prev: Option<(i64, i64)> = None;
        for p in s
            .points
            .iter()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
        {
            let q = (px(p.0).round() as i64, py(p.1).round() as i64);
            if s.dots {
                c.fill(
                    (q.0 - 2).max(0) as u32,
                    (q.1 - 2).max(0) as u32,
                    5,
                    5,
                    s.color,
                );
                continue;
            }
            match prev {
                Some(a) => {
                    c.line(a.0, a.1, q.0, q.1, s.color);
                    c.line(a.0, a.1 + 1, q.0, q.1 + 1, s.color);
                }
                None => c.fill(q.0 as u32, q.1 as u32, 2, 2, s.color),
            }
            prev = Some(q);
        }
    }
    // Legend, top right inside the frame.
    let mut ly = top + 6;
    for s in series {
        let tw = text_width(s.name, 1);
        let lx = right.saturating_sub(tw + 28);
        c.fill(lx, ly + 3, 16, 2, s.color);
        c.text(lx + 20, ly, s.name, 1, INK);
        ly += 12;
    }
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
    fn ticks_are_round_and_inside_the_range() {
        let (t, s) = ticks(74.2, 77.9, 6);
        assert_eq!(s, 1.0);
        assert_eq!(t, vec![75.0, 76.0, 77.0]);
        let (t, s) = ticks(0.0, 2.3, 6);
        assert_eq!(s, 0.5);
        assert_eq!(t.first(), Some(&0.0));
        assert_eq!(t.last(), Some(&2.0));
        assert_eq!(tick_label(0.5, 0.5), "0.5");
        assert_eq!(tick_label(120.0, 20.0), "120");
        let (t, _) = ticks(1000.0, 5400.0, 5);
        assert_eq!(t, vec![1000.0, 2000.0, 3000.0, 4000.0, 5000.0]);
    }

    #[test]
    fn chart_draws_series_frame_and_legend() {
        let mut c = Canvas::new(480, 400, [255; 3]);
        let a = [(0.0, 74.0), (1.0, 76.0), (2.0, 77.0)];
        chart(
            &mut c,
            0,
            0,
            480,
            400,
            &Axes {
                title: "t",
                x_label: "epoch",
                y_label: "%",
            },
            &[Series {
                name: "val",
                color: [200, 0, 0],
                points: &a,
                dots: false,
            }],
        );
        let red = (0..480)
            .flat_map(|x| (0..400).map(move |y| (x, y)))
            .filter(|&(x, y)| c.get(x, y) == [200, 0, 0])
            .count();
        assert!(red > 200, "the series and its legend swatch: {red} pixels");
        // The frame's bottom-left corner.
        assert_eq!(c.get(64, 360), [0, 0, 0]);
        // Auto-scaled: the lowest point sits near the bottom, the highest near the top.
        let lowest_y = (0..400).find(|&y| c.get(65, 399 - y) == [200, 0, 0]);
        assert!(lowest_y.is_some());
    }

    #[test]
    fn dots_at_the_extremes_stay_inside_the_frame_and_below_the_legend() {
        let mut c = Canvas::new(480, 400, [255; 3]);
        let pts = [(0.0, 0.0), (10.0, 1.0), (5.0, 0.5)];
        chart(
            &mut c,
            0,
            0,
            480,
            400,
            &Axes {
                title: "a title as long as the plot is wide",
                x_label: "x",
                y_label: "a long y label",
            },
            &[Series {
                name: "points",
                color: [0, 0, 200],
                points: &pts,
                dots: true,
            }],
        );
        // Frame: left 64, right 468, top 36, bottom 360; the legend swatch is the row pair at
        // top + 6 + 3.
        let swatch = 45..47;
        let dots: Vec<(u32, u32)> = (0..480)
            .flat_map(|x| (0..400).map(move |y| (x, y)))
            .filter(|&(x, y)| c.get(x, y) == [0, 0, 200] && !swatch.contains(&y))
            .collect();
        assert_eq!(dots.len(), 3 * 25, "three whole 5x5 dots");
        for &(x, y) in &dots {
            assert!(
                x > 64 && x < 468 && y < 360,
                "({x}, {y}) on or outside the frame"
            );
            assert!(y >= 36 + 6 + 12, "({x}, {y}) under the legend");
        }
    }

    #[test]
    fn line_covers_both_ends() {
        let mut c = Canvas::new(10, 10, [0; 3]);
        c.line(1, 8, 7, 2, [9, 9, 9]);
        assert_eq!(c.get(1, 8), [9; 3]);
        assert_eq!(c.get(7, 2), [9; 3]);
        c.line(-5, -5, 20, 20, [1, 1, 1]);
        assert_eq!(c.get(9, 9), [1; 3]);
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
