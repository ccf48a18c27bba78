//! Images/s on one core of the full 224 training pipeline (RandomResizedCrop bicubic, flip,
//! RandAugment rand-m9-mstd0.5-inc1, random erasing 0.25, normalisation to f32 CHW), decode
//! excluded and included, against timm's `create_transform(224, is_training=True,
//! auto_augment='rand-m9-mstd0.5-inc1', re_prob=0.25, interpolation='bicubic')` on the same
//! JPEG files in the same run (`augment_timm.py`, run with the reference Python).
//!
//! Photos: scikit-image's bundled samples, re-encoded as JPEG quality 90 (ImageNet is JPEG), by
//! default with the `image` crate's encoder (4:4:4 chroma), with `TINYVIT_BENCH_JPEG=pillow420`
//! by Pillow's (4:2:0, as most photo JPEGs).
//! `TINYVIT_PYREF` names the reference environment (`cargo xtask bench` creates it and sets
//! this; default `/root/.cache/tinyvit/pyref`);
//! `TINYVIT_BENCH_SECONDS` the time per measurement (default 4), `TINYVIT_BENCH_ROUNDS` the
//! rounds (default 3): each round measures our side, then runs the timm peer, so the two sides
//! alternate; the summary gives medians over the rounds, each ratio taken within its round
//! (the machine's speed drifts between rounds).
//!
//! Both sides report images per second of wall time and per second of the measuring thread's
//! CPU time (`CLOCK_THREAD_CPUTIME_ID` here, `time.thread_time()` in Python). On a shared
//! machine the CPU-time figures are the fair comparison: wall time also measures how much of
//! a core the scheduler happened to give each side.
//!
//! Decode included: we render each view straight from the JPEG bytes with
//! [`ViewDecoder`]: the header gives the size, the seed gives the crop, and the region decoder
//! (`tinyvit-jpeg`) decodes only the crop, with zune-jpeg's pixels; before timing, the bench
//! checks that these views equal the views of the whole decoded photos. timm opens each file
//! with Pillow (libjpeg-turbo), converts it to RGB and transforms the whole image, as its
//! loaders do. Both sides do the whole augmentation on every image. A third line times our
//! side decoding every whole image (zune-jpeg into one reused buffer), to show what the crop
//! decoding is worth.
//!
//! Figures: see `cargo xtask bench` and the README; each run prints its rounds and medians.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

/// CPU seconds consumed by the calling thread.
fn thread_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant Linux supports.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return f64::NAN;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

use anyhow::{bail, Context, Result};
use tinyvit_core::aug::{normalize, preset, replay, scratch_len, ImageMut};
use tinyvit_host::data::decode::{decode_image, decode_image_into, Image, ViewDecoder};

const PHOTOS: [&str; 6] = [
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "hubble_deep_field.jpg",
];

fn main() -> Result<()> {
    let pyref = PathBuf::from(
        std::env::var("TINYVIT_PYREF").unwrap_or_else(|_| "/root/.cache/tinyvit/pyref".into()),
    );
    let seconds: f64 = std::env::var("TINYVIT_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4.0);
    let rounds: u32 = std::env::var("TINYVIT_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&r| r > 0)
        .unwrap_or(3);
    let python = pyref.join("bin/python");
    // The venv's site-packages under lib/pythonX.Y/, whatever Python version created it.
    let data = std::fs::read_dir(pyref.join("lib"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("site-packages/skimage/data"))
        .find(|d| d.is_dir())
        .unwrap_or_else(|| pyref.join("lib/python3/site-packages/skimage/data"));
    if !python.exists() || !data.exists() {
        bail!(
            "augment bench needs the reference environment at {} (set TINYVIT_PYREF)",
            pyref.display()
        );
    }
    // Re-encode every photo as JPEG q90 into a temp folder both sides read: with `image`'s
    // encoder (4:4:4), or with Pillow's (4:2:0) when TINYVIT_BENCH_JPEG=pillow420.
    let pillow420 = match std::env::var("TINYVIT_BENCH_JPEG").as_deref() {
        Ok("pillow420") => true,
        Ok("image444") | Err(_) => false,
        Ok(other) => bail!("TINYVIT_BENCH_JPEG={other}: expected image444 or pillow420"),
    };
    let dir = std::env::temp_dir().join(format!("tinyvit-augbench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut files = Vec::new();
    let mut jpegs = Vec::new();
    for name in PHOTOS {
        let p = data.join(name);
        let img = image::open(&p)
            .with_context(|| format!("decoding {}", p.display()))?
            .into_rgb8();
        let out = dir.join(format!("{name}.jpg"));
        let buf = if pillow420 {
            // Pillow's encoder at quality 90 subsamples chroma 4:2:0, as most photo JPEGs are.
            let script = "import sys; from PIL import Image; \
                          Image.open(sys.argv[1]).convert('RGB').save(sys.argv[2], quality=90)";
            let st = Command::new(&python)
                .args(["-c", script])
                .arg(&p)
                .arg(&out)
                .status()
                .with_context(|| format!("running {}", python.display()))?;
            if !st.success() {
                bail!("Pillow could not encode {name}");
            }
            std::fs::read(&out)?
        } else {
            let mut buf = Vec::new();
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, 90)
                .encode_image(&img)
                .with_context(|| format!("encoding {name}"))?;
            std::fs::write(&out, &buf)?;
            buf
        };
        println!("photo {name}: {}x{}", img.width(), img.height());
        files.push(out);
        jpegs.push(buf);
    }
    let decoded: Vec<Image> = jpegs
        .iter()
        .map(|b| decode_image(b))
        .collect::<Result<_>>()?;

    let cfg = preset("in22k-distill")?;
    let size = cfg.size;
    let max_scratch = decoded
        .iter()
        .map(|i| scratch_len(&cfg, i.width, i.height, 3))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .max()
        .unwrap_or(0);
    let mut scratch = vec![0u8; max_scratch];
    let mut view = vec![0u8; (size * size * 3) as usize];
    let mut tensor = vec![0f32; (size * size * 3) as usize];
    // A loader renders views straight from the files, image after image, decoding only
    // each view's crop.
    let mut views = ViewDecoder::new();
    let mut region_view = Vec::new();
    let mut tensor_inc = vec![0f32; (size * size * 3) as usize];
    // For comparison, a loader that decodes every whole image into one buffer.
    let mut whole = Image {
        width: 0,
        height: 0,
        channels: 3,
        data: Vec::new(),
    };
    // Both sides render the same views: the crop-only decode changes no byte.
    for (i, img) in decoded.iter().enumerate() {
        for s in 0..8 {
            let mut want = vec![0u8; (size * size * 3) as usize];
            replay(
                &cfg,
                s,
                img.as_ref(),
                ImageMut::new(size, size, 3, &mut want)?,
                &mut scratch,
            )?;
            views.render(&jpegs[i], 3, &cfg, s, &mut region_view)?;
            if region_view != want {
                bail!("{}: seed {s}: the crop-decoded view differs", PHOTOS[i]);
            }
        }
    }
    println!(
        "views from decoded crops equal views from whole images ({} of {} checks decoded only the crop)",
        views.region_views(),
        decoded.len() * 8
    );
    let mut seed = 0u32;
    let mut one = |img: &Image, seed: u32| -> Result<()> {
        replay(
            &cfg,
            seed,
            img.as_ref(),
            ImageMut::new(size, size, 3, &mut view)?,
            &mut scratch,
        )?;
        normalize(
            ImageMut::new(size, size, 3, &mut view)?.as_ref(),
            cfg.mean,
            cfg.std,
            &mut tensor,
        )?;
        Ok(())
    };
    // Warm-up.
    for img in &decoded {
        one(img, 0)?;
    }
    // (images per wall second, images per CPU second)
    let mut rate = |f: &mut dyn FnMut(usize, u32) -> Result<()>| -> Result<(f64, f64)> {
        let start = Instant::now();
        let c0 = thread_cpu();
        let mut n = 0u64;
        loop {
            for i in 0..decoded.len() {
                seed = seed.wrapping_add(1);
                f(i, seed)?;
                n += 1;
            }
            let el = start.elapsed().as_secs_f64();
            if el >= seconds {
                return Ok((n as f64 / el, n as f64 / (thread_cpu() - c0)));
            }
        }
    };
    let timm_round = || -> Result<serde_json::Value> {
        let out = Command::new(&python)
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/benches/augment_timm.py"
            ))
            .arg(seconds.to_string())
            .args(&files)
            .env("OMP_NUM_THREADS", "1")
            .env("MKL_NUM_THREADS", "1")
            .output()
            .with_context(|| format!("running {}", python.display()))?;
        if !out.status.success() {
            bail!("timm peer failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let line = String::from_utf8(out.stdout)?;
        serde_json::from_str(line.trim()).context("timm peer output")
    };
    // Rounds alternate the two sides so that both meet about the same machine conditions; the
    // summary gives each figure's median over the rounds, rates and ratios (a ratio is taken
    // within its round).
    // Per round: (wall, CPU) rates of ours excluded, ours included, timm excluded, included.
    // The fifth: ours with decode included but the whole image decoded (no crop decoding).
    type Round = [(f64, f64); 5];
    let mut rows: Vec<Round> = Vec::new();
    let (mut tv, mut retries) = (String::from("?"), 0u64);
    for round in 1..=rounds {
        let ex = rate(&mut |i, s| one(&decoded[i], s))?;
        let inc = rate(&mut |i, s| {
            views.render(&jpegs[i], 3, &cfg, s, &mut region_view)?;
            normalize(
                ImageMut::new(size, size, 3, &mut region_view)?.as_ref(),
                cfg.mean,
                cfg.std,
                &mut tensor_inc,
            )?;
            Ok(())
        })?;
        let inc_whole = rate(&mut |i, s| {
            decode_image_into(&jpegs[i], &mut whole)?;
            one(&whole, s)
        })?;
        let v = timm_round()?;
        let num = |k: &str| {
            v[k].as_f64()
                .with_context(|| format!("timm peer output: {k}"))
        };
        let t_ex = (num("decode_excluded")?, num("decode_excluded_cpu")?);
        let t_in = (num("decode_included")?, num("decode_included_cpu")?);
        tv = v["timm"].as_str().unwrap_or("?").to_string();
        retries += v["retries"].as_u64().unwrap_or(0);
        println!(
            "round {round}: CPU-second rates, decode excluded tinyvit {:.1} timm {:.1} ({:.2}x), included tinyvit {:.1} timm {:.1} ({:.2}x)",
            ex.1,
            t_ex.1,
            ex.1 / t_ex.1,
            inc.1,
            t_in.1,
            inc.1 / t_in.1
        );
        rows.push([ex, inc, t_ex, t_in, inc_whole]);
    }
    let median = |f: &dyn Fn(&Round) -> f64| {
        let mut v: Vec<f64> = rows.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        let m = v.len() / 2;
        if v.len() % 2 == 1 {
            v[m]
        } else {
            (v[m - 1] + v[m]) / 2.0
        }
    };
    std::fs::remove_dir_all(&dir).ok();
    println!(
        "augment 224 training pipeline, one core, {} photos, {seconds} s each, medians of {rounds} rounds (images/s):",
        PHOTOS.len()
    );
    if retries > 0 {
        println!("  (timm raised on Pillow 13's posterize(bits=0) {retries} times; those calls were retried)");
    }
    for (what, o, t) in [
        ("decode excluded", 0, 2),
        ("decode included", 1, 3),
        ("decode included, whole image decoded", 4, 3),
    ] {
        println!(
            "  {what}: per CPU-second tinyvit {:7.1}  timm {tv} {:7.1}  ratio {:.2}x | per wall-second tinyvit {:7.1}  timm {:7.1}  ratio {:.2}x",
            median(&|r| r[o].1),
            median(&|r| r[t].1),
            median(&|r| r[o].1 / r[t].1),
            median(&|r| r[o].0),
            median(&|r| r[t].0),
            median(&|r| r[o].0 / r[t].0),
        );
    }
    Ok(())
}
