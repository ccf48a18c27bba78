//! `tinyvit plot`: a line chart from a small JSON description, drawn by the host's own canvas
//! ([`crate::draw::chart`]: axes, ticks, labels, a legend, y auto-scaled). The main job draws
//! its accuracy-against-K figure (`k_sweep.png`) with it, so that every picture of a run comes
//! from one drawing code.
//!
//! The description:
//! ```json
//! {"title": "student top-1 against K", "x_label": "K", "y_label": "top-1 %",
//!  "series": [{"name": "val", "points": [[1, 76.1], [3, 76.6]]}]}
//! ```

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use clap::Args as ClapArgs;
use serde_json::Value;

use crate::draw::{chart, Axes, Canvas, Series};

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// The chart's JSON description (title, x_label, y_label, series of named points).
    pub spec: PathBuf,
    /// PNG to write.
    #[arg(long)]
    pub out: PathBuf,
}

/// Colours of successive series.
const COLORS: [[u8; 3]; 6] = [
    [31, 119, 180],
    [214, 39, 40],
    [44, 160, 44],
    [255, 127, 14],
    [148, 103, 189],
    [140, 86, 75],
];

/// Most series and points a chart takes (a chart, not a data dump).
const MAX_SERIES: usize = COLORS.len();
const MAX_POINTS: usize = 100_000;

/// A parsed chart description.
#[derive(Debug, PartialEq)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<(String, Vec<(f64, f64)>)>,
}

impl Chart {
    /// Parses the description in `text`; errors name `file` and the field.
    pub fn parse(text: &str, file: &Path) -> Result<Chart> {
        let f = file.display();
        let v: Value =
            serde_json::from_str(text).with_context(|| format!("{f}: not a JSON document"))?;
        let s = |k: &str| -> Result<String> {
            Ok(v.get(k)
                .with_context(|| format!("{f}: field `{k}` is missing"))?
                .as_str()
                .with_context(|| format!("{f}: field `{k}` is not a string"))?
                .to_string())
        };
        let list = v
            .get("series")
            .with_context(|| format!("{f}: field `series` is missing"))?
            .as_array()
            .with_context(|| format!("{f}: field `series` is not a list"))?;
        ensure!(!list.is_empty(), "{f}: field `series` is empty");
        ensure!(
            list.len() <= MAX_SERIES,
            "{f}: field `series` has {} entries, at most {MAX_SERIES} are drawn",
            list.len()
        );
        let mut series = Vec::new();
        for (i, e) in list.iter().enumerate() {
            let name = e
                .get("name")
                .and_then(Value::as_str)
                .with_context(|| format!("{f}: `series[{i}].name` is missing or not a string"))?;
            let pts = e
                .get("points")
                .and_then(Value::as_array)
                .with_context(|| format!("{f}: `series[{i}].points` is missing or not a list"))?;
            ensure!(
                pts.len() <= MAX_POINTS,
                "{f}: `series[{i}].points` has {} points, above {MAX_POINTS}",
                pts.len()
            );
            let mut points = Vec::with_capacity(pts.len());
            for (j, p) in pts.iter().enumerate() {
                let xy = p.as_array().filter(|a| a.len() == 2).with_context(|| {
                    format!("{f}: `series[{i}].points[{j}]` is not an [x, y] pair")
                })?;
                let num = |k: usize| {
                    xy[k].as_f64().with_context(|| {
                        format!("{f}: `series[{i}].points[{j}][{k}]` is not a number")
                    })
                };
                points.push((num(0)?, num(1)?));
            }
            series.push((name.to_string(), points));
        }
        if series.iter().all(|(_, p)| p.is_empty()) {
            bail!("{f}: no series has a point");
        }
        Ok(Chart {
            title: s("title")?,
            x_label: s("x_label")?,
            y_label: s("y_label")?,
            series,
        })
    }

    /// Draws the chart on a 640 x 400 canvas and writes it to `out` (through a temporary file).
    pub fn save(&self, out: &Path) -> Result<()> {
        let mut c = Canvas::new(640, 400, [255; 3]);
        let series: Vec<Series<'_>> = self
            .series
            .iter()
            .zip(COLORS)
            .map(|((name, points), color)| Series {
                name,
                color,
                points,
                dots: false,
            })
            .collect();
        chart(
            &mut c,
            0,
            0,
            640,
            400,
            &Axes {
                title: &self.title,
                x_label: &self.x_label,
                y_label: &self.y_label,
            },
            &series,
        );
        c.save_png(out)
    }
}

/// Runs `tinyvit plot`.
pub fn main(a: Args) -> Result<()> {
    let text = std::fs::read_to_string(&a.spec)
        .with_context(|| format!("reading {}", a.spec.display()))?;
    Chart::parse(&text, &a.spec)?.save(&a.out)?;
    eprintln!("wrote {}", a.out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Chart> {
        Chart::parse(s, Path::new("k.json"))
    }

    #[test]
    fn a_description_is_parsed_and_drawn() {
        let c = parse(
            r#"{"title": "t", "x_label": "K", "y_label": "top-1 %",
                "series": [{"name": "val", "points": [[1, 76.1], [3, 76.6], [10, 76.5]]},
                           {"name": "test", "points": [[1, 76.3], [3, 76.9]]}]}"#,
        )
        .unwrap();
        assert_eq!(c.series.len(), 2);
        assert_eq!(c.series[0].1[1], (3.0, 76.6));
        let dir = std::env::temp_dir().join(format!("tinyvit-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let png = dir.join("k.png");
        c.save(&png).unwrap();
        let img = image::open(&png).unwrap().to_rgb8();
        assert_eq!((img.width(), img.height()), (640, 400));
        // Both series' colours are on the picture (lines and legend).
        for col in [COLORS[0], COLORS[1]] {
            assert!(img.pixels().any(|p| p.0 == col), "colour {col:?} not drawn");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn errors_name_the_file_and_the_field() {
        let e = |s: &str| format!("{:#}", parse(s).unwrap_err());
        assert!(e("{").contains("k.json: not a JSON document"));
        let no_title =
            r#"{"x_label": "K", "y_label": "y", "series": [{"name": "a", "points": [[1, 2]]}]}"#;
        assert!(e(no_title).contains("k.json: field `title` is missing"));
        let bad_point = r#"{"title": "t", "x_label": "K", "y_label": "y",
            "series": [{"name": "a", "points": [[1, 2], [3]]}]}"#;
        assert!(e(bad_point).contains("`series[0].points[1]` is not an [x, y] pair"));
        let nan = r#"{"title": "t", "x_label": "K", "y_label": "y",
            "series": [{"name": "a", "points": [[1, "x"]]}]}"#;
        assert!(e(nan).contains("`series[0].points[0][1]` is not a number"));
        let empty = r#"{"title": "t", "x_label": "K", "y_label": "y", "series": []}"#;
        assert!(e(empty).contains("field `series` is empty"));
        let no_points = r#"{"title": "t", "x_label": "K", "y_label": "y",
            "series": [{"name": "a", "points": []}]}"#;
        assert!(e(no_points).contains("no series has a point"));
    }
}
