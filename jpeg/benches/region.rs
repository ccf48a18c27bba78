//! Region decoding against zune-jpeg's full decode, side by side in one run.
//!
//! The six photos scikit-image ships, decoded with `image` and re-encoded as JPEG q90 with
//! `image`'s encoder (4:4:4, as the augment bench does), plus a 4:2:0 q90 variant made with
//! the reference Python's Pillow. For each set: ms/image for zune's full decode (`decode_into`
//! a reused buffer), ours on the full image, and ours on RandomResizedCrop rectangles (scale
//! 0.08-1 of the area, log-ratio uniform in ln(3/4)..ln(4/3), 10 tries then the whole image).
//! Each side is timed in several interleaved rounds and the best round is reported, since the
//! machine is shared.
//!
//! `cargo bench -p tinyvit-jpeg`; `TINYVIT_PYREF` points at the reference environment,
//! `TINYVIT_BENCH_SECONDS` sets the time per side and round (default 1).

use std::path::PathBuf;
use std::time::Instant;

use tinyvit_jpeg::Decoder;
use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;

const PHOTOS: [&str; 6] = [
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "hubble_deep_field.jpg",
];

struct Rng(u64);
impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// RandomResizedCrop's box (timm's `get_params`, as core/src/aug/crop.rs draws it).
fn crop(rng: &mut Rng, w: u32, h: u32) -> [u32; 4] {
    let area = f64::from(w) * f64::from(h);
    let (lo, hi) = ((3.0f64 / 4.0).ln(), (4.0f64 / 3.0).ln());
    for _ in 0..10 {
        let target = (0.08 + 0.92 * rng.unit()) * area;
        let aspect = (lo + (hi - lo) * rng.unit()).exp();
        let tw = (target * aspect).sqrt().round();
        let th = (target / aspect).sqrt().round();
        if tw >= 1.0 && th >= 1.0 && tw <= f64::from(w) && th <= f64::from(h) {
            let (tw, th) = (tw as u32, th as u32);
            let y = (rng.unit() * f64::from(h - th + 1)) as u32;
            let x = (rng.unit() * f64::from(w - tw + 1)) as u32;
            return [x.min(w - tw), y.min(h - th), tw, th];
        }
    }
    [0, 0, w, h]
}

fn zune_into(bytes: &[u8], out: &mut Vec<u8>) {
    let opts = DecoderOptions::default()
        .jpeg_set_out_colorspace(ColorSpace::RGB)
        .set_strict_mode(false)
        .set_max_width(usize::MAX)
        .set_max_height(usize::MAX);
    let mut d = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), opts);
    d.decode_headers().unwrap();
    let (w, h) = d.dimensions().unwrap();
    out.resize(w * h * 3, 0);
    d.decode_into(out).unwrap();
}

/// Seconds per call of `f(i)` for i = 0, 1, 2, ... over about `secs` seconds.
fn time(secs: f64, mut f: impl FnMut(usize)) -> f64 {
    let start = Instant::now();
    let mut n = 0;
    while n < 6 || start.elapsed().as_secs_f64() < secs {
        f(n);
        n += 1;
    }
    start.elapsed().as_secs_f64() / n as f64
}

fn run_set(label: &str, jpegs: &[(String, Vec<u8>)], secs: f64) {
    let mut dec = Decoder::new();
    let mut out = Vec::new();
    let mut rng = Rng(0x5EED);
    let mut crops = Vec::new();
    for (_, b) in jpegs {
        let info = tinyvit_jpeg::read_info(b).unwrap();
        assert_eq!(info.unsupported, None);
        crops.push(
            (0..256)
                .map(|_| crop(&mut rng, info.width, info.height))
                .collect::<Vec<_>>(),
        );
    }
    // Sanity: ours equals zune on the full image.
    for (name, b) in jpegs {
        let info = tinyvit_jpeg::read_info(b).unwrap();
        zune_into(b, &mut out);
        let z = out.clone();
        dec.decode_region(b, 0, 0, info.width, info.height, &mut out)
            .unwrap();
        assert!(z == out, "{name}: full decode differs from zune");
    }
    println!("\n{label}: ms/image (best of 3 interleaved rounds)");
    println!(
        "{:<24} {:>9} {:>9} {:>9} {:>7} {:>7}",
        "photo", "zune", "ours", "crops", "full", "crops"
    );
    let (mut tz, mut tf, mut tc) = (0.0, 0.0, 0.0);
    for (i, (name, b)) in jpegs.iter().enumerate() {
        let info = tinyvit_jpeg::read_info(b).unwrap();
        let (mut z, mut f, mut c) = (f64::MAX, f64::MAX, f64::MAX);
        for _ in 0..3 {
            z = z.min(time(secs, |_| zune_into(b, &mut out)));
            f = f.min(time(secs, |_| {
                dec.decode_region(b, 0, 0, info.width, info.height, &mut out)
                    .unwrap();
            }));
            c = c.min(time(secs, |n| {
                let [x, y, w, h] = crops[i][n % crops[i].len()];
                dec.decode_region(b, x, y, w, h, &mut out).unwrap();
            }));
        }
        println!(
            "{:<24} {:>9.3} {:>9.3} {:>9.3} {:>6.2}x {:>6.2}x",
            format!("{name} {}x{}", info.width, info.height),
            z * 1e3,
            f * 1e3,
            c * 1e3,
            f / z,
            c / z
        );
        tz += z;
        tf += f;
        tc += c;
    }
    let n = jpegs.len() as f64;
    println!(
        "{:<24} {:>9.3} {:>9.3} {:>9.3} {:>6.2}x {:>6.2}x",
        "mean",
        tz / n * 1e3,
        tf / n * 1e3,
        tc / n * 1e3,
        tf / tz,
        tc / tz
    );
}

fn profile(side: &str, jpegs: &[(String, Vec<u8>)], secs: f64) {
    let mut dec = Decoder::new();
    let mut out = Vec::new();
    let mut rng = Rng(1);
    let infos: Vec<_> = jpegs
        .iter()
        .map(|(_, b)| tinyvit_jpeg::read_info(b).unwrap())
        .collect();
    let t = time(secs, |n| {
        let (b, info) = (&jpegs[n % jpegs.len()].1, infos[n % jpegs.len()]);
        match side {
            "zune" => zune_into(b, &mut out),
            "full" => {
                dec.decode_region(b, 0, 0, info.width, info.height, &mut out)
                    .unwrap();
            }
            _ => {
                let [x, y, w, h] = crop(&mut rng, info.width, info.height);
                dec.decode_region(b, x, y, w, h, &mut out).unwrap();
            }
        }
    });
    println!("{side}: {:.3} ms/image", t * 1e3);
}

fn main() {
    let pyref = PathBuf::from(
        std::env::var("TINYVIT_PYREF").unwrap_or_else(|_| "/root/.cache/tinyvit/pyref".into()),
    );
    let secs: f64 = std::env::var("TINYVIT_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    // The venv's site-packages under lib/pythonX.Y/, whatever Python version created it.
    let data = std::fs::read_dir(pyref.join("lib"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("site-packages/skimage/data"))
        .find(|d| d.is_dir())
        .unwrap_or_else(|| pyref.join("lib/python3/site-packages/skimage/data"));
    if !data.exists() {
        println!(
            "region bench: no photos at {} (set TINYVIT_PYREF); nothing to do",
            data.display()
        );
        return;
    }
    let dir = std::env::temp_dir().join(format!("tinyvit-jpegbench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut q90 = Vec::new();
    let mut q90_420 = Vec::new();
    for name in PHOTOS {
        let img = image::open(data.join(name)).unwrap().into_rgb8();
        let mut buf = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, 90)
            .encode_image(&img)
            .unwrap();
        let png = dir.join(format!("{name}.png"));
        img.save(&png).unwrap();
        let jpg = dir.join(format!("{name}.420.jpg"));
        let ok = std::process::Command::new(pyref.join("bin/python"))
            .args([
                "-c",
                "import sys; from PIL import Image; Image.open(sys.argv[1]).save(sys.argv[2], quality=90, subsampling=2)",
            ])
            .arg(&png)
            .arg(&jpg)
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            q90_420.push((name.to_string(), std::fs::read(&jpg).unwrap()));
        }
        q90.push((name.to_string(), buf));
    }
    let _ = std::fs::remove_dir_all(&dir);
    // TINYVIT_BENCH_PROFILE=zune|full|crops: run only that side (for `perf record`).
    if let Ok(side) = std::env::var("TINYVIT_BENCH_PROFILE") {
        profile(&side, &q90, secs * 5.0);
        return;
    }
    run_set("image q90 (4:4:4)", &q90, secs);
    if q90_420.len() == PHOTOS.len() {
        run_set("Pillow q90 4:2:0", &q90_420, secs);
    } else {
        println!("\n(no 4:2:0 set: the reference Python's Pillow did not run)");
    }
}
