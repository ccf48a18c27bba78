//! `tinyvit infer --npy IN --out OUT` end to end: `.npy` batches in, logits `.npy` out, on every
//! engine; and a crafted `.npy` whose shape product wraps to 0 in 64 bits (issue 16, defect 3:
//! it used to panic the tch engine and give the core engines a nonsense size) is refused with an
//! error naming the file and the field, by every engine.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::{fails, ok, tmpdir, BIN};
use tinyvit_core::params::splitmix64;
use tinyvit_host::import;
use tinyvit_host::infer::{read_npy, run_engine, tch_logits, write_npy, Engine};

/// The committed parity checkpoint: 1 x 16 x 16 input, 10 classes.
fn model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/parity/tiny_16.pth")
}

fn infer(npy: &Path, engine: &str) -> Command {
    let mut c = Command::new(BIN);
    c.arg("infer")
        .arg("--model")
        .arg(model())
        .args(["--img-size", "16", "--engine", engine, "--npy"])
        .arg(npy);
    c
}

#[test]
fn npy_batches_round_trip_through_infer_on_every_engine() {
    let dir = tmpdir("infer-npy", "round-trip");
    let loaded = import::load(&model(), None, None, Some(16)).unwrap();
    let cfg = loaded.config;
    let n = 3;
    let mut s = 11u64;
    let x: Vec<f32> = (0..n * 16 * 16)
        .map(|_| (splitmix64(&mut s) >> 40) as f32 / (1u64 << 22) as f32 - 2.0)
        .collect();
    let input = dir.join("batch.npy");
    write_npy(&input, &[n, 1, 16, 16], &x).unwrap();
    for (name, engine) in [
        ("exact", Engine::Exact),
        ("fast", Engine::Fast),
        ("tch", Engine::Tch),
    ] {
        let out = dir.join(format!("logits-{name}.npy"));
        let mut c = infer(&input, name);
        c.arg("--out").arg(&out);
        let o = ok(c);
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert_eq!(stdout.lines().count(), n, "one line per input:\n{stdout}");
        let got = read_npy(&out).unwrap();
        assert_eq!(got.shape(), &[n, 10], "{name}");
        let want = match engine {
            Engine::Tch => tch_logits(loaded.state_dict.as_ref().unwrap(), &cfg, &x, n).unwrap(),
            e => run_engine(e, &cfg, &loaded.blob, &x, n).unwrap(),
        };
        let got = got.into_raw_vec_and_offset().0;
        if engine == Engine::Tch {
            // libtorch may pick other thread counts in the binary: the same up to rounding.
            let diff = got
                .iter()
                .zip(&want)
                .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(diff < 1e-5, "{name}: {diff}");
        } else {
            assert_eq!(got, want, "{name}: the core engines are deterministic");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_shape_whose_product_wraps_is_a_named_error_on_every_engine() {
    let dir = tmpdir("infer-npy", "wrap");
    // 2^62 * 1 * 16 * 16 = 2^70, which wraps to 0 elements (and 0 bytes) in 64 bits: with no
    // data after the header, an unchecked reader sees a consistent, empty file.
    let dict =
        "{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904, 1, 16, 16), }";
    let mut h = dict.to_string();
    while !(10 + h.len() + 1).is_multiple_of(64) {
        h.push(' ');
    }
    h.push('\n');
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend_from_slice(&(h.len() as u16).to_le_bytes());
    b.extend_from_slice(h.as_bytes());
    let crafted = dir.join("wrapping-shape.npy");
    std::fs::write(&crafted, &b).unwrap();
    for engine in ["exact", "fast", "tch"] {
        let mut c = infer(&crafted, engine);
        c.env_remove("RUST_BACKTRACE");
        let err = fails(c);
        assert!(!err.contains("panicked"), "{engine}: {err}");
        assert!(
            err.contains(&crafted.display().to_string()) && err.contains("field `shape`"),
            "{engine}: the error names neither the file nor the field:\n{err}"
        );
        assert!(err.contains("overflows"), "{engine}: {err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
