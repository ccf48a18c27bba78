//! `tinyvit quantize` and `tinyvit infer` on int8 files, end to end through the binary: the
//! written file is the core's, `infer` gives the core's `int8::run` logits bit for bit, a
//! checkpoint and its `.tvb` quantise to the same bytes, and bad inputs are named errors that
//! leave no output file behind.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use support::{fails, fashion_mnist_subset, ok, tmpdir, BIN};
use tinyvit_core::contract::{ClassNames, Contract, InputContract};
use tinyvit_core::int8;
use tinyvit_core::params::splitmix64;
use tinyvit_host::checkpoint;
use tinyvit_host::infer::{read_npy, tch_model, write_npy};
use tinyvit_host::{import, presets};

/// The committed parity checkpoint: 1 x 16 x 16 input, 10 classes.
fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/parity/tiny_16.pth")
}

/// The fixture as an f32 `.tvb` in `dir`.
fn f32_tvb(dir: &Path) -> PathBuf {
    let out = dir.join("f32.tvb");
    let mut c = Command::new(BIN);
    c.arg("convert")
        .arg("--model")
        .arg(fixture())
        .args(["--img-size", "16", "--out"])
        .arg(&out);
    ok(c);
    out
}

fn quantize(model: &Path, calib: &str, out: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.arg("quantize")
        .arg("--model")
        .arg(model)
        .args(["--calib", calib, "--calib-images", "24", "--out"])
        .arg(out);
    c
}

fn json(stdout: &[u8]) -> Value {
    let text = String::from_utf8_lossy(stdout);
    serde_json::from_str(text.trim().lines().last().unwrap()).unwrap()
}

/// Nothing under `out` nor its temporary name.
fn assert_no_output(out: &Path) {
    let mut tmp = out.as_os_str().to_owned();
    tmp.push(".tmp");
    assert!(!out.exists(), "{} was written", out.display());
    assert!(!Path::new(&tmp).exists(), "{tmp:?} was left behind");
}

#[test]
fn quantized_file_runs_in_infer_bit_for_bit_like_the_core() {
    let dir = tmpdir("quantize", "infer");
    let calib = fashion_mnist_subset(&dir, "train", 48);
    let val = fashion_mnist_subset(&dir, "t10k", 40);
    let tvb = f32_tvb(&dir);
    let q8 = dir.join("m.q8.tvb");
    let mut c = quantize(&tvb, &calib, &q8);
    c.args(["--norm", "half", "--val", &val]);
    let o = ok(c);
    let r = json(&o.stdout);
    let bytes = std::fs::read(&q8).unwrap();
    assert_eq!(r["int8_bytes"], bytes.len() as u64);
    // The f32 model as quantized: the converted file with the --norm contract written in.
    let f32_bytes = std::fs::read(&tvb).unwrap();
    let t = tinyvit_core::tvb::parse(&f32_bytes).unwrap();
    let with = tinyvit_core::tvb::write_with_contract(
        t.config(),
        &t.to_blob(),
        Some((
            &InputContract::for_model(t.config(), [0.5; 3], [0.5; 3]),
            &[],
        )),
    )
    .unwrap();
    assert_eq!(r["f32_bytes"], with.len() as u64);
    assert_eq!(
        int8::parse(&bytes).unwrap().contract().map(|c| c.mean),
        Some([0.5; 3])
    );
    assert_eq!(r["calib_images"], 24);
    assert_eq!(r["calib_views"], "eval");
    assert_eq!(r["val_images"], 40);
    assert_eq!(r["labelled"], true);
    for k in ["f32_top1", "int8_top1", "agreement"] {
        let v = r[k].as_f64().unwrap_or(-1.0);
        assert!((0.0..=100.0).contains(&v), "{k}: {r}");
    }
    let model = int8::parse(&bytes).unwrap();
    let cfg = *model.config();
    assert_eq!(
        r["int8_arena_bytes"],
        int8::arena_len(&cfg).unwrap() as u64 * 4
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("f32 top-1") && stderr.contains("agreement"),
        "{stderr}"
    );

    // infer on the int8 file: the core's integer logits, dequantised, bit for bit.
    let n = 5;
    let mut s = 7u64;
    let x: Vec<f32> = (0..n * 16 * 16)
        .map(|_| (splitmix64(&mut s) >> 40) as f32 / (1u64 << 22) as f32 - 2.0)
        .collect();
    let npy = dir.join("x.npy");
    write_npy(&npy, &[n, 1, 16, 16], &x).unwrap();
    let logits = dir.join("logits.npy");
    for engine in [None, Some("exact")] {
        let mut c = Command::new(BIN);
        c.arg("infer")
            .arg("--model")
            .arg(&q8)
            .arg("--npy")
            .arg(&npy);
        c.arg("--out").arg(&logits);
        if let Some(e) = engine {
            c.args(["--engine", e]);
        }
        let o = ok(c);
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert_eq!(stdout.lines().count(), n, "{stdout}");
        for (i, l) in stdout.lines().enumerate() {
            // `name<TAB>class prob<TAB>...`: the five best classes, as for f32 models.
            let (name, top) = l.split_once('\t').unwrap();
            assert_eq!(name, format!("{}[{i}]", npy.display()));
            assert_eq!(top.split('\t').count(), 5, "{l}");
            assert!(top.split('\t').all(|f| f.split(' ').count() == 2), "{l}");
        }
        let got = read_npy(&logits).unwrap();
        assert_eq!(got.shape(), &[n, 10]);
        let got = got.into_raw_vec_and_offset().0;
        let mut arena = vec![0i32; int8::arena_len(&cfg).unwrap()];
        let (mut qin, mut qout, mut real) = (vec![0i8; 256], vec![0i32; 10], vec![0f32; 10]);
        for i in 0..n {
            int8::quantize_input(&model, &x[i * 256..(i + 1) * 256], &mut qin);
            int8::run(&model, &qin, &mut arena, &mut qout).unwrap();
            int8::dequantize_logits(&model, &qout, &mut real);
            for (a, b) in got[i * 10..(i + 1) * 10].iter().zip(&real) {
                assert_eq!(a.to_bits(), b.to_bits(), "input {i}: {a} vs {b}");
            }
        }
    }

    // Hints that contradict the file are refused.
    for (flag, v) in [
        ("--arch", "tiny_vit_mcu_m4"),
        ("--num-classes", "7"),
        ("--img-size", "32"),
    ] {
        let mut c = Command::new(BIN);
        c.arg("infer")
            .arg("--model")
            .arg(&q8)
            .arg("--npy")
            .arg(&npy);
        c.args([flag, v]);
        let err = fails(c);
        assert!(
            err.contains(&q8.display().to_string()) && err.contains(flag),
            "{flag}: {err}"
        );
    }

    // Other engines are refused on an int8 file, by name.
    for e in ["fast", "tch"] {
        let mut c = Command::new(BIN);
        c.arg("infer")
            .arg("--model")
            .arg(&q8)
            .arg("--npy")
            .arg(&npy);
        c.args(["--engine", e]);
        let err = fails(c);
        assert!(
            err.contains(&q8.display().to_string()) && err.contains("`exact` engine only"),
            "{e}: {err}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A checkpoint goes through export's fold: the same weights as a checkpoint (normalisation
/// in its metadata) and as a `.tvb` (normalisation by `--norm`) quantise to the same bytes;
/// store views calibrate too.
#[test]
fn checkpoint_and_tvb_quantize_to_the_same_file() {
    let dir = tmpdir("quantize", "checkpoint");
    let calib = fashion_mnist_subset(&dir, "train", 32);
    let tvb = f32_tvb(&dir);
    let loaded = import::load(&fixture(), None, None, Some(16)).unwrap();
    let (vs, _) = tch_model(loaded.state_dict.as_ref().unwrap(), &loaded.config).unwrap();
    let ck = dir.join("model.safetensors");
    let half = Contract::from_parts(
        &InputContract::for_model(&loaded.config, [0.5; 3], [0.5; 3]),
        ClassNames::default(),
    );
    checkpoint::save(&ck, &vs, &loaded.config, Some(&half), None).unwrap();

    let (a, b) = (dir.join("a.q8.tvb"), dir.join("b.q8.tvb"));
    let mut c = quantize(&tvb, &calib, &a);
    c.args(["--norm", "half"]);
    ok(c);
    // Unlabelled comparison data: agreement only, and the summary says so.
    let unlabelled = support::synthetic_idx(&dir, 12).unwrap();
    let mut c = quantize(&ck, &calib, &b);
    c.args(["--val", &unlabelled]);
    let o = ok(c);
    let r = json(&o.stdout);
    assert_eq!(r["val_images"], 12);
    assert_eq!(r["labelled"], false);
    assert!(r["f32_top1"].is_null() && r["int8_top1"].is_null(), "{r}");
    assert!(r["agreement"].as_f64().is_some(), "{r}");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("no labels: agreement only"), "{stderr}");
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());

    // The checkpoint's own normalisation wins over a contradicting --norm: an error.
    let bad = dir.join("bad.q8.tvb");
    let mut c = quantize(&ck, &calib, &bad);
    c.args(["--norm", "imagenet"]);
    let err = fails(c);
    assert!(
        err.contains("tinyvit.input") && err.contains(&ck.display().to_string()),
        "{err}"
    );
    assert_no_output(&bad);

    // Views replayed from a store of the teacher pass (`light`, mean = std = 0.5 like the
    // checkpoint's normalisation) calibrate too.
    let store = dir.join("store");
    let teacher = tinyvit_host::teacher::TinyVitTeacher::load(&ck, tch::Device::Cpu).unwrap();
    let mut pass = support::light_pass(&calib, &store, 2, 3, 16);
    pass.workers = 1;
    tinyvit_host::save_logits::run(&pass, &teacher).unwrap();
    assert_eq!(tinyvit_core::aug::preset("light").unwrap().mean, half.mean);
    let sv = dir.join("store.q8.tvb");
    let mut c = quantize(&ck, &calib, &sv);
    c.arg("--logits").arg(&store);
    let r = json(&ok(c).stdout);
    assert_eq!(r["calib_views"], "store");
    let from_store = std::fs::read(&sv).unwrap();
    int8::parse(&from_store).unwrap();
    assert_ne!(
        from_store,
        std::fs::read(&a).unwrap(),
        "augmented views, other ranges"
    );

    // Another range method gives another, valid file (here under a bare relative name).
    let mut c = quantize(&ck, &calib, Path::new("mse.q8.tvb"));
    c.args(["--method", "mse"]).current_dir(&dir);
    let r = json(&ok(c).stdout);
    assert_eq!(r["method"], "mse");
    int8::parse(&std::fs::read(dir.join("mse.q8.tvb")).unwrap()).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Bad inputs: each a named error, and neither the output nor its temporary file is left
/// (an existing output stays as it was).
#[test]
fn bad_inputs_are_named_errors_and_leave_no_output() {
    let dir = tmpdir("quantize", "errors");
    let calib = fashion_mnist_subset(&dir, "train", 16);
    let tvb = f32_tvb(&dir);
    let out = dir.join("out.q8.tvb");
    let tvb_s = tvb.display().to_string();

    // A .tvb without --norm.
    let err = fails(quantize(&tvb, &calib, &out));
    assert!(err.contains(&tvb_s) && err.contains("--norm"), "{err}");
    assert_no_output(&out);

    let run = |model: &Path, extra: &[&str], calib: &str| {
        let mut c = quantize(model, calib, &out);
        c.args(["--norm", "half"]).args(extra);
        let e = fails(c);
        assert_no_output(&out);
        e
    };
    // A truncated f32 file names the file and the field.
    let cut = dir.join("cut.tvb");
    let bytes = std::fs::read(&tvb).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = run(&cut, &[], &calib);
    assert!(e.contains(&cut.display().to_string()), "{e}");
    // A corrupted weight byte.
    let bad = dir.join("flip.tvb");
    let mut b = bytes.clone();
    let last = b.len() - 5;
    b[last] ^= 0x40;
    std::fs::write(&bad, &b).unwrap();
    let e = run(&bad, &[], &calib);
    assert!(
        e.contains(&bad.display().to_string()) && e.contains("crc"),
        "{e}"
    );
    // Missing calibration data, a bad method, zero images.
    let e = run(&tvb, &[], "idx:/nonexistent/images");
    assert!(e.contains("--calib idx:/nonexistent/images"), "{e}");
    let e = run(&tvb, &["--method", "p20"], &calib);
    assert!(e.contains("--method"), "{e}");
    let e = run(&tvb, &["--calib-images", "0"], &calib);
    assert!(e.contains("--calib-images"), "{e}");
    // A failure after quantisation (the comparison data is missing): still nothing written.
    let e = run(&tvb, &["--val", "idx:/nonexistent/val"], &calib);
    assert!(e.contains("--val idx:/nonexistent/val"), "{e}");
    // An int8 file is not quantised again.
    let q8 = dir.join("good.q8.tvb");
    let mut c = quantize(&tvb, &calib, &q8);
    c.args(["--norm", "half"]);
    ok(c);
    let e = run(&q8, &[], &calib);
    assert!(e.contains("already an int8 model"), "{e}");

    // An existing output survives a failed run unchanged.
    std::fs::write(&out, b"earlier").unwrap();
    let mut c = quantize(&cut, &calib, &out);
    c.args(["--norm", "half"]);
    fails(c);
    assert_eq!(std::fs::read(&out).unwrap(), b"earlier");

    // A damaged int8 file in infer: the file and what is wrong.
    let mut d = std::fs::read(&q8).unwrap();
    let k = d.len() - 3;
    d[k] ^= 1;
    let dq = dir.join("damaged.q8.tvb");
    std::fs::write(&dq, &d).unwrap();
    let npy = dir.join("x.npy");
    write_npy(&npy, &[1, 1, 16, 16], &[0.0; 256]).unwrap();
    let mut c = Command::new(BIN);
    c.arg("infer")
        .arg("--model")
        .arg(&dq)
        .arg("--npy")
        .arg(&npy);
    let e = fails(c);
    assert!(
        e.contains(&dq.display().to_string()) && e.contains("crc"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `tinyvit presets` prints every preset with its f32 and int8 sizes, the library's figures.
#[test]
fn presets_lists_f32_and_int8_sizes() {
    let mut c = Command::new(BIN);
    c.arg("presets");
    let o = ok(c);
    let stdout = String::from_utf8_lossy(&o.stdout);
    let header = stdout.lines().next().unwrap();
    assert!(
        header.contains("weights int8") && header.contains("int8 arena"),
        "{header}"
    );
    let rows = presets::preset_rows().unwrap();
    assert_eq!(stdout.lines().count(), rows.len() + 2, "{stdout}");
    for r in rows {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("| {} |", r.name)))
            .unwrap_or_else(|| panic!("{} missing:\n{stdout}", r.name));
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        assert!(
            cells[7].starts_with(&format!("{} B", r.int8_bytes)),
            "{line}"
        );
        assert!(
            cells[8].starts_with(&format!("{} B", r.int8_arena_bytes)),
            "{line}"
        );
        assert!(
            cells[5].starts_with(&format!("{} B", r.weight_bytes)),
            "{line}"
        );
    }
}

/// `--mcu` holds the int8 model to a board's budget: `tiny_vit_mcu_h7_q8` (about 1.2 MB as
/// int8) is refused for the M4 board with the numbers named and nothing written, and fits the
/// H743's.
#[test]
fn mcu_budget_refuses_a_model_too_large_for_the_board() {
    use tinyvit_core::config::ModelConfig;
    use tinyvit_core::engine::fold::fold_state_dict;
    use tinyvit_core::params::synthetic_state_dict;
    let dir = tmpdir("quantize", "mcu");
    let cfg = ModelConfig::preset("tiny_vit_mcu_h7_q8").unwrap();
    let sd = synthetic_state_dict(&cfg, 3);
    let blob = fold_state_dict(&cfg, |name| {
        sd.iter()
            .find(|t| t.name == name)
            .map(|t| t.values.as_slice())
    })
    .unwrap();
    let model = dir.join("h7q8.tvb");
    std::fs::write(&model, tinyvit_core::tvb::write(&cfg, &blob).unwrap()).unwrap();
    let calib = fashion_mnist_subset(&dir, "t10k", 8);
    let out = dir.join("h7q8.q8.tvb");
    let run = |mcu: &str| {
        let mut c = Command::new(BIN);
        c.arg("quantize")
            .arg("--model")
            .arg(&model)
            .args(["--calib", &calib, "--calib-images", "4", "--norm", "half"])
            .args(["--mcu", mcu, "--out"])
            .arg(&out);
        c
    };
    let err = fails(run("m4"));
    assert!(
        err.contains("exceeds its board") && err.contains("800000 B of flash"),
        "{err}"
    );
    assert_no_output(&out);
    ok(run("h7"));
    assert!(out.exists());
}
