//! `tinyvit augment`: renders what the student sees: the replayed training view of a seed, one
//! or more named RandAugment ops at fixed magnitudes, or the evaluation view, as an image file.
//!
//! ```text
//! tinyvit augment --image cat.jpg --seed 42 --preset in22k-distill --out view.png
//! tinyvit augment --image cat.jpg --op Rotate=9 --op=-ShearX=5 --out ops.png
//! tinyvit augment --image digit.png --preset light --set size=28 --seed 7 --out v.png
//! tinyvit augment --image cat.jpg --eval --size 224 --out eval.png
//! ```

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use tinyvit_core::aug::{
    self, apply_op, eval_scratch_len, eval_transform, preset, replay, resize, resize_scratch_len,
    scratch_len, AugConfig, ImageMut, Op, EVAL_CROP_PCT,
};

use crate::data::decode::{load_image, save_image, Image};

/// Arguments of `tinyvit augment`.
#[derive(clap::Args, Debug)]
pub struct AugmentArgs {
    /// Source image (PNG or JPEG). Grey images stay grey; anything else becomes RGB.
    #[arg(long)]
    pub image: PathBuf,
    /// Render the training view this per-sample seed replays.
    #[arg(long, conflicts_with_all = ["op", "eval"])]
    pub seed: Option<u32>,
    /// Apply a RandAugment op at a magnitude (0..10), `NAME=M`; a leading `-` on the name takes
    /// the negative direction (`-Rotate=9`). Repeatable; applied in order to the source (resized
    /// to --size first when given).
    #[arg(long = "op", value_name = "NAME=MAGNITUDE", allow_hyphen_values = true)]
    pub op: Vec<String>,
    /// Render the evaluation view (resize to size/0.875, centre crop: `aug::EVAL_CROP_PCT`).
    #[arg(long, conflicts_with = "op")]
    pub eval: bool,
    /// Augmentation preset (in22k-distill, in1k-scratch, light).
    #[arg(long, default_value = "in22k-distill")]
    pub preset: String,
    /// Output side in pixels (overrides the preset's size).
    #[arg(long)]
    pub size: Option<u32>,
    /// Override a preset knob, `KEY=VALUE` (e.g. `randaug.magnitude=5`, `erase=off`). Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Output image (format from the extension: .png, .jpg).
    #[arg(long)]
    pub out: PathBuf,
}

/// The preset with `--size` and `--set` overrides applied.
pub fn config(preset_name: &str, size: Option<u32>, set: &[String]) -> Result<AugConfig> {
    let mut cfg = preset(preset_name).with_context(|| format!("--preset {preset_name}"))?;
    if let Some(s) = size {
        cfg.set("size", &s.to_string())
            .with_context(|| format!("--size {s}"))?;
    }
    for kv in set {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--set {kv}: expected KEY=VALUE"))?;
        cfg.set(k.trim(), v)
            .with_context(|| format!("--set {kv}"))?;
    }
    Ok(cfg)
}

/// Parses `NAME=M` or `-NAME=M` into (op, magnitude, negate).
pub fn parse_op(spec: &str) -> Result<(Op, f32, bool)> {
    let (name, m) = spec
        .split_once('=')
        .with_context(|| format!("--op {spec}: expected NAME=MAGNITUDE"))?;
    let (name, negate) = match name.strip_prefix('-') {
        Some(n) => (n, true),
        None => (name, false),
    };
    let op = Op::from_name(name.trim()).with_context(|| {
        let names: Vec<&str> = Op::ALL.iter().map(|o| o.name()).collect();
        format!("--op {spec}: ops are {}", names.join(", "))
    })?;
    let m: f32 = m
        .trim()
        .parse()
        .with_context(|| format!("--op {spec}: magnitude is not a number"))?;
    if !(0.0..=30.0).contains(&m) {
        bail!("--op {spec}: magnitude must be in 0..=30 (10 is timm's maximum)");
    }
    Ok((op, m, negate))
}

/// Renders the training view of `seed`.
pub fn render_seed(cfg: &AugConfig, src: &Image, seed: u32) -> Result<(Image, aug::AugParams)> {
    let mut out = vec![0u8; (cfg.size * cfg.size * src.channels) as usize];
    let mut scratch = vec![0u8; scratch_len(cfg, src.width, src.height, src.channels)?];
    let p = replay(
        cfg,
        seed,
        src.as_ref(),
        ImageMut::new(cfg.size, cfg.size, src.channels, &mut out)?,
        &mut scratch,
    )
    .with_context(|| format!("replaying seed {seed}"))?;
    Ok((
        Image {
            width: cfg.size,
            height: cfg.size,
            channels: src.channels,
            data: out,
        },
        p,
    ))
}

/// Resizes `src` to `w x h` (PIL semantics, the config's filter).
pub fn resize_to(cfg: &AugConfig, src: &Image, w: u32, h: u32) -> Result<Image> {
    let mut out = vec![0u8; (w * h * src.channels) as usize];
    let mut scratch = vec![0u8; resize_scratch_len(src.width, src.height, w, h, src.channels)?];
    resize(
        src.as_ref(),
        ImageMut::new(w, h, src.channels, &mut out)?,
        cfg.interpolation,
        &mut scratch,
    )?;
    Ok(Image {
        width: w,
        height: h,
        channels: src.channels,
        data: out,
    })
}

/// Renders the evaluation view at the config's size ([`EVAL_CROP_PCT`]).
pub fn render_eval(cfg: &AugConfig, src: &Image) -> Result<Image> {
    let s = cfg.size;
    let mut out = vec![0u8; (s * s * src.channels) as usize];
    let mut scratch =
        vec![0u8; eval_scratch_len(src.width, src.height, s, EVAL_CROP_PCT, src.channels)?];
    eval_transform(
        src.as_ref(),
        ImageMut::new(s, s, src.channels, &mut out)?,
        EVAL_CROP_PCT,
        cfg.interpolation,
        &mut scratch,
    )?;
    Ok(Image {
        width: s,
        height: s,
        channels: src.channels,
        data: out,
    })
}

/// Runs `tinyvit augment`.
pub fn run(args: &AugmentArgs) -> Result<()> {
    let cfg = config(&args.preset, args.size, &args.set)?;
    let src = load_image(&args.image)?;
    let out = if let Some(seed) = args.seed {
        let (img, p) = render_seed(&cfg, &src, seed)?;
        println!("{}", serde_json::to_string(&p)?);
        img
    } else if args.eval {
        render_eval(&cfg, &src)?
    } else if !args.op.is_empty() {
        let ra = cfg.randaug.unwrap_or(
            preset("in22k-distill")?
                .randaug
                .context("the reference preset has RandAugment")?,
        );
        let mut cur = match args.size {
            Some(s) => resize_to(&cfg, &src, s, s)?,
            None => src,
        };
        for spec in &args.op {
            let (op, m, neg) = parse_op(spec)?;
            let mut next = cur.clone();
            let arg = apply_op(
                op,
                m,
                neg,
                &ra,
                cfg.interpolation,
                cur.as_ref(),
                ImageMut::new(cur.width, cur.height, cur.channels, &mut next.data)?,
            )
            .with_context(|| format!("--op {spec}"))?;
            println!("{spec}: {arg:?}");
            cur = next;
        }
        cur
    } else {
        bail!("give --seed S, --op NAME=M (repeatable) or --eval");
    };
    save_image(&args.out, &out)?;
    println!(
        "wrote {} ({}x{}x{})",
        args.out.display(),
        out.width,
        out.height,
        out.channels
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_specs_parse() {
        assert_eq!(parse_op("Rotate=9").unwrap(), (Op::Rotate, 9.0, false));
        assert_eq!(parse_op("-shearx=2.5").unwrap(), (Op::ShearX, 2.5, true));
        assert!(parse_op("Rotate").is_err());
        assert!(parse_op("Spin=3").is_err());
        assert!(parse_op("Rotate=x").is_err());
        assert!(parse_op("Rotate=-1").is_err());
    }

    #[test]
    fn config_overrides_name_the_flag() {
        let c = config("light", Some(28), &["erase=off".into()]).unwrap();
        assert_eq!(c.size, 28);
        assert!(c.erase.is_none());
        let e = config("light", None, &["nope=1".into()]).unwrap_err();
        assert!(format!("{e:#}").contains("--set nope=1"), "{e:#}");
        assert!(config("huge", None, &[]).is_err());
    }

    #[test]
    fn png_round_trip_and_render() {
        let mut data = vec![0u8; 40 * 30 * 3];
        aug::test_pattern(40, 30, 3, &mut data).unwrap();
        let img = Image {
            width: 40,
            height: 30,
            channels: 3,
            data,
        };
        let dir = std::env::temp_dir().join(format!("tinyvit-augment-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("src.png");
        save_image(&p, &img).unwrap();
        let back = load_image(&p).unwrap();
        assert_eq!(back.data, img.data);
        let cfg = config("in22k-distill", Some(24), &[]).unwrap();
        let (a, pa) = render_seed(&cfg, &back, 5).unwrap();
        let (b, pb) = render_seed(&cfg, &back, 5).unwrap();
        assert_eq!(a.data, b.data);
        assert_eq!(pa, pb);
        assert_eq!(render_eval(&cfg, &back).unwrap().data.len(), 24 * 24 * 3);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
