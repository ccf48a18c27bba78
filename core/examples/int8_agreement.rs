//! Measures int8 against f32 on a trained model: quantises an f32 `.tvb` with calibration images
//! and reports both engines' top-1, their agreement and the relative logit error.
//!
//! ```text
//! cargo run -p tinyvit-core --example int8_agreement -- \
//!     MODEL.tvb CAL-IMAGES-idx3-ubyte TEST-IMAGES-idx3-ubyte TEST-LABELS-idx1-ubyte N_CAL N_TEST \
//!     MEAN STD
//! ```
//!
//! The idx files are uncompressed (MNIST format). Every image goes through the evaluation view
//! the host uses (`aug::eval_transform`, crop 0.875, bicubic), then `(v / 255 - MEAN) / STD`
//! (the training run's normalisation: the checkpoint's `tinyvit.input` metadata, 0.5 and 0.5
//! for grey runs).

use std::error::Error;

use tinyvit_core::aug::{
    eval_scratch_len, eval_transform, normalize, ImageMut, ImageRef, Interpolation,
};
use tinyvit_core::config::ModelConfig;
use tinyvit_core::engine::{self, Weights};
use tinyvit_core::int8::{self, quantize};
use tinyvit_core::tvb;

type Res<T> = Result<T, Box<dyn Error>>;

/// The images of an idx3 file: (count, rows, cols, pixels).
fn idx3(bytes: &[u8]) -> Res<(usize, usize, usize, &[u8])> {
    let be = |i: usize| -> Res<usize> {
        let b = bytes.get(i..i + 4).ok_or("idx: truncated header")?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    if be(0)? != 0x0803 {
        return Err("idx3: bad magic".into());
    }
    let (n, r, c) = (be(4)?, be(8)?, be(12)?);
    let px = bytes
        .get(16..16 + n * r * c)
        .ok_or("idx3: truncated data")?;
    Ok((n, r, c, px))
}

/// Normalised evaluation views of images `0..n`.
fn views(
    cfg: &ModelConfig,
    file: &[u8],
    n: usize,
    norm: ([f32; 3], [f32; 3]),
) -> Result<Vec<f32>, Box<dyn Error>> {
    let (count, h, w, px) = idx3(file)?;
    let size = cfg.img_size;
    let mut out = Vec::new();
    let mut scratch = vec![0u8; eval_scratch_len(w as u32, h as u32, size, 0.875, 1)?];
    for i in 0..n.min(count) {
        let src = ImageRef::new(w as u32, h as u32, 1, &px[i * h * w..(i + 1) * h * w])?;
        let mut view = vec![0u8; (size * size) as usize];
        eval_transform(
            src,
            ImageMut::new(size, size, 1, &mut view)?,
            0.875,
            Interpolation::Bicubic,
            &mut scratch,
        )?;
        let mut norm_out = vec![0.0f32; view.len()];
        normalize(
            ImageRef::new(size, size, 1, &view)?,
            norm.0,
            norm.1,
            &mut norm_out,
        )?;
        out.extend_from_slice(&norm_out);
    }
    Ok(out)
}

fn argmax<T: PartialOrd + Copy>(v: &[T]) -> usize {
    let mut b = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[b] {
            b = i;
        }
    }
    b
}

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() != 8 {
        return Err(
            "usage: MODEL.tvb CAL-idx3 TEST-idx3 TEST-LABELS-idx1 N_CAL N_TEST MEAN STD".into(),
        );
    }
    let (mean, std): (f32, f32) = (args[6].parse()?, args[7].parse()?);
    let norm = ([mean; 3], [std; 3]);
    let model = std::fs::read(&args[0])?;
    let (cal_file, test_file, labels) = (
        std::fs::read(&args[1])?,
        std::fs::read(&args[2])?,
        std::fs::read(&args[3])?,
    );
    let (n_cal, n_test): (usize, usize) = (args[4].parse()?, args[5].parse()?);
    let t = tvb::parse(&model)?;
    let cfg = *t.config();
    let blob = t.to_blob();
    let w = Weights::new(&cfg, &blob)?;
    let cal = views(&cfg, &cal_file, n_cal, norm)?;
    let test = views(&cfg, &test_file, n_test, norm)?;
    let q8 = quantize::quantize_tvb(&model, &cal, &quantize::Options::default())?;
    let m = int8::parse(&q8)?;
    let per = engine::input_len(&cfg)?;
    let mut f_arena = vec![0.0f32; engine::arena_len(&cfg)?];
    let mut q_arena = vec![0i32; int8::arena_len(&cfg)?];
    let nc = cfg.num_classes as usize;
    let (mut f_ok, mut q_ok, mut same, mut rel, mut n) = (0, 0, 0, 0.0f64, 0usize);
    for (i, x) in test.chunks_exact(per).enumerate() {
        let label = *labels.get(8 + i).ok_or("labels: truncated")? as usize;
        let mut f = vec![0.0f32; nc];
        engine::forward(&w, x, &mut f_arena, &mut f)?;
        let mut xq = vec![0i8; per];
        int8::quantize_input(&m, x, &mut xq);
        let mut l = vec![0i32; nc];
        int8::run(&m, &xq, &mut q_arena, &mut l)?;
        let mut q = vec![0.0f32; nc];
        int8::dequantize_logits(&m, &l, &mut q);
        f_ok += (argmax(&f) == label) as usize;
        q_ok += (argmax(&l) == label) as usize;
        same += (argmax(&f) == argmax(&l)) as usize;
        let num: f64 = f
            .iter()
            .zip(&q)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum();
        let den: f64 = f.iter().map(|a| (*a as f64).powi(2)).sum();
        rel += (num / den.max(1e-12)).sqrt();
        n += 1;
    }
    let pct = |k: usize| 100.0 * k as f64 / n as f64;
    println!(
        "{n} test images, {} calibration: f32 top-1 {:.2} %, int8 top-1 {:.2} %, \
         agreement {:.2} %, mean relative logit error {:.4}; files: f32 {} B, int8 {} B",
        cal.len() / per,
        pct(f_ok),
        pct(q_ok),
        pct(same),
        rel / n as f64,
        model.len(),
        q8.len()
    );
    Ok(())
}
