//! The trainer end to end on real Fashion-MNIST images (the first 640 training and 320 test
//! images, written as small IDX files), with a tiny MCU student at 32 px on the CPU:
//! a labels run trains the teacher; the teacher pass (`save-logits`) writes a store from that
//! TinyViT checkpoint; the student learns from the store, and online from the teacher; a
//! mismatched store is refused; `tinyvit export` matches the tch accuracy.
//!
//! "Learning" = the logged training loss falls and held-out top-1 is well above chance (10%).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use support::{fails, fashion_mnist_subset, ok, tmpdir, train_m4, BIN};

struct Data {
    dir: PathBuf,
    train: String,
    val: String,
}

fn data() -> &'static Data {
    static D: OnceLock<Data> = OnceLock::new();
    D.get_or_init(|| {
        let dir = tmpdir("train", "data");
        Data {
            train: fashion_mnist_subset(&dir, "train", 640),
            val: fashion_mnist_subset(&dir, "t10k", 320),
            dir,
        }
    })
}

/// `tinyvit train` with the common small settings.
fn train(out: &Path, target: &[&str], epochs: u32, extra: &[&str]) -> Command {
    let d = data();
    let mut c = train_m4(&d.train);
    c.args(["--val", &d.val])
        .args(target)
        .args(["--epochs", &epochs.to_string(), "--out"])
        .arg(out)
        .args([
            "--batch-size",
            "32",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--workers",
            "1",
            "--log-every",
            "4",
            "--quiet",
        ])
        .args(extra);
    if !extra.contains(&"--img-size") && !target.contains(&"--logits") {
        c.args(["--img-size", "32"]);
    }
    c
}

/// The summary line `tinyvit train` prints last.
fn summary(o: &Output) -> serde_json::Value {
    let s = String::from_utf8_lossy(&o.stdout);
    serde_json::from_str(s.lines().last().expect("summary line")).unwrap()
}

fn assert_learns(s: &serde_json::Value, what: &str) {
    let first = s["first_loss"].as_f64().unwrap();
    let last = s["final_loss"].as_f64().unwrap();
    let top1 = s["val_top1"].as_f64().unwrap();
    eprintln!(
        "{what}: loss {first:.4} -> {last:.4}, val top-1 {top1:.2}%, top-5 {:.2}%",
        s["val_top5"]
    );
    // Soft targets of a weak teacher have high entropy, which bounds the distillation loss
    // from below: it falls by less than a labels loss does.
    assert!(
        last < first - 0.01,
        "{what}: loss did not fall ({first} -> {last})"
    );
    assert!(
        top1 > 25.0,
        "{what}: val top-1 {top1}% is not well above chance (10%)"
    );
}

/// The teacher: the same tiny student architecture trained on labels for 5 epochs.
fn teacher() -> &'static (PathBuf, serde_json::Value) {
    static T: OnceLock<(PathBuf, serde_json::Value)> = OnceLock::new();
    T.get_or_init(|| {
        let out = data().dir.join("teacher");
        let _ = std::fs::remove_dir_all(&out);
        let o = ok(train(&out, &["--labels"], 5, &[]));
        (out.join("model.safetensors"), summary(&o))
    })
}

/// A store of 3 epochs, top-3, written by the teacher pass from the TinyViT teacher.
fn store() -> &'static PathBuf {
    static S: OnceLock<PathBuf> = OnceLock::new();
    S.get_or_init(|| {
        let (ckpt, _) = teacher();
        let out = data().dir.join("store");
        let _ = std::fs::remove_dir_all(&out);
        let t = tinyvit_host::teacher::TinyVitTeacher::load(ckpt, tch::Device::Cpu).unwrap();
        let mut cfg = support::light_pass(&data().train, &out, 3, 3, 32);
        cfg.batch_size = 64;
        cfg.workers = 1;
        tinyvit_host::save_logits::run(&cfg, &t).unwrap();
        out
    })
}

#[test]
fn labels_run_learns_and_writes_the_run_folder() {
    let (ckpt, s) = teacher();
    assert_learns(s, "labels");
    let dir = ckpt.parent().unwrap();
    for f in [
        "config.toml",
        "run.json",
        "last.safetensors",
        "best.safetensors",
        "model.safetensors",
        "metrics.jsonl",
        "curves.png",
        "summary.json",
    ] {
        assert!(dir.join(f).exists(), "run folder lacks {f}");
    }
    let epochs = std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"kind\":\"epoch\""))
        .count();
    assert_eq!(epochs, 5);
    // the run refuses to overwrite itself without --resume
    let err = fails(train(dir, &["--labels"], 5, &[]));
    assert!(err.contains("--resume"), "{err}");
}

#[test]
fn distillation_from_the_store_learns() {
    let store = store();
    let out = tmpdir("train", "distill");
    let o = ok(train(&out, &["--logits", store.to_str().unwrap()], 4, &[]));
    let s = summary(&o);
    assert_learns(&s, "store distillation");
    let agree = s["train_agreement"].as_f64().unwrap();
    eprintln!("store distillation: agreement with the stored teacher top-1 {agree:.2}%");
    assert!(agree > 20.0);
}

#[test]
fn online_distillation_learns() {
    let (ckpt, _) = teacher();
    let out = tmpdir("train", "online");
    let o = ok(train(&out, &["--teacher", ckpt.to_str().unwrap()], 4, &[]));
    let s = summary(&o);
    assert_learns(&s, "online distillation");
    let agree = s["val_agreement"].as_f64().unwrap();
    eprintln!("online distillation: val agreement with the teacher {agree:.2}%");
    assert!(agree > 25.0);
}

#[test]
fn mismatched_store_is_refused() {
    let store = store();
    let d = data();
    // another dataset: the validation images instead of the training images
    let out = tmpdir("train", "mismatch");
    let mut c = train_m4(&d.val);
    c.arg("--logits")
        .arg(store)
        .args(["--epochs", "1", "--device", "cpu", "--quiet", "--out"])
        .arg(&out);
    let err = fails(c);
    assert!(
        err.contains("fingerprint") || err.contains("dataset"),
        "{err}"
    );
    // another class count
    let err = fails(train(
        &out,
        &["--logits", store.to_str().unwrap()],
        1,
        &["--num-classes", "7"],
    ));
    assert!(err.contains("classes"), "{err}");
    // another input size than the views the teacher saw
    let err = fails(train(
        &out,
        &["--logits", store.to_str().unwrap()],
        1,
        &["--img-size", "40"],
    ));
    assert!(err.contains("32px") || err.contains("img-size"), "{err}");
}

#[test]
fn export_matches_tch_accuracy() {
    let (ckpt, s) = teacher();
    let d = data();
    let out = d.dir.join("teacher.tvb");
    let mut c = Command::new(BIN);
    c.args(["export", "--checkpoint"])
        .arg(ckpt)
        .arg("--out")
        .arg(&out)
        .args(["--val", &d.val, "--engine", "exact"]);
    let o = ok(c);
    let r: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&o.stdout).lines().last().unwrap()).unwrap();
    let (t, e) = (
        r["tch_top1"].as_f64().unwrap(),
        r["core_top1"].as_f64().unwrap(),
    );
    eprintln!(
        "export: tch top-1 {t:.3}%, core exact top-1 {e:.3}%, {} disagreements on {} images, max rel logit diff {:.2e}, {} bytes",
        r["disagreements"], r["images"], r["max_rel_logit_diff"].as_f64().unwrap(), r["bytes"]
    );
    assert!((t - e).abs() <= 0.1, "tch {t} vs core {e}");
    assert!(r["max_rel_logit_diff"].as_f64().unwrap() <= 1e-4);
    // the trainer's own evaluation used the same views
    assert!((t - s["val_top1"].as_f64().unwrap()).abs() <= 0.32);
    assert!(out.exists());
}

/// `--logits DIR` without `--data` trains on the data the store's manifest records; when that
/// data has moved, the error names its path and says what to give.
#[test]
fn a_store_run_takes_its_data_from_the_manifest() {
    let (ckpt, _) = teacher();
    let dir = tmpdir("train", "store-data");
    let spec = fashion_mnist_subset(&dir, "train", 96);
    let st = dir.join("store");
    let t = tinyvit_host::teacher::TinyVitTeacher::load(ckpt, tch::Device::Cpu).unwrap();
    let mut cfg = support::light_pass(&spec, &st, 1, 3, 32);
    cfg.workers = 1;
    tinyvit_host::save_logits::run(&cfg, &t).unwrap();
    let run = |out: &Path| {
        let mut c = Command::new(BIN);
        c.args(["train", "--arch", "tiny_vit_mcu_m4", "--logits"])
            .arg(&st)
            .args([
                "--epochs",
                "1",
                "--batch-size",
                "32",
                "--device",
                "cpu",
                "--quiet",
            ])
            .args(["--threads", "1", "--workers", "1", "--out"])
            .arg(out)
            .env_remove("RUST_BACKTRACE");
        c
    };
    let s = summary(&ok(run(&dir.join("run"))));
    assert_eq!(s["steps"].as_u64(), Some(3), "{s}");
    std::fs::remove_file(dir.join("train-img")).unwrap();
    let e = fails(run(&dir.join("moved")));
    assert!(
        e.contains(&st.display().to_string()) && e.contains("train-img") && e.contains("--data"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Unlabelled `--val` data in a `--logits` run (issue 15, item 5): the store holds its
/// teacher's top-K for the augmented training views only, so the run asks for the store's
/// teacher (`--teacher`, checked against the manifest by SHA-256) and reports the student's
/// top-1 agreement with it on the evaluation views, saying which teacher it compared with.
#[test]
fn a_store_run_measures_unlabelled_validation_against_the_stores_teacher() {
    let (ckpt, _) = teacher();
    let dir = tmpdir("train", "store-unlabelled");
    let spec = fashion_mnist_subset(&dir, "train", 96);
    let st = dir.join("store");
    let t = tinyvit_host::teacher::TinyVitTeacher::load(ckpt, tch::Device::Cpu).unwrap();
    let mut cfg = support::light_pass(&spec, &st, 1, 3, 32);
    cfg.workers = 1;
    tinyvit_host::save_logits::run(&cfg, &t).unwrap();
    let pngs = dir.join("unlabelled");
    std::fs::create_dir_all(&pngs).unwrap();
    for i in 0..16u8 {
        let px: Vec<u8> = (0..28 * 28)
            .map(|j| ((j % 28) as u8).wrapping_mul(i + 3))
            .collect();
        image::GrayImage::from_raw(28, 28, px)
            .unwrap()
            .save(pngs.join(format!("u{i:02}.png")))
            .unwrap();
    }
    let run = |out: &Path, teacher: Option<&Path>| {
        let mut c = Command::new(BIN);
        c.args(["train", "--arch", "tiny_vit_mcu_m4", "--logits"])
            .arg(&st)
            .arg("--val")
            .arg(format!("folder:{}", pngs.display()))
            .args([
                "--epochs",
                "1",
                "--batch-size",
                "32",
                "--device",
                "cpu",
                "--quiet",
            ])
            .args(["--threads", "1", "--workers", "1", "--out"])
            .arg(out)
            .env_remove("RUST_BACKTRACE");
        if let Some(t) = teacher {
            c.arg("--teacher").arg(t);
        }
        c
    };
    let e = fails(run(&dir.join("none"), None));
    assert!(
        e.contains("augmented training views only")
            && e.contains("--teacher FILE (the store's teacher, model.safetensors)"),
        "{e}"
    );
    let other = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/teacher/tiny_cnn.pt");
    let e = fails(run(&dir.join("other"), Some(&other)));
    assert!(
        e.contains("tiny_cnn.pt is not the teacher of the store") && e.contains("sha256"),
        "{e}"
    );
    assert!(
        !dir.join("other/last.safetensors").exists(),
        "no step was taken"
    );
    let o = ok(run(&dir.join("run"), Some(ckpt)));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("no labels; reporting top-1 agreement with the store's teacher"),
        "{err}"
    );
    let s = summary(&o);
    assert!(s["val_top1"].is_null(), "{s}");
    let agree = s["val_agreement"]
        .as_f64()
        .expect("agreement on unlabelled data");
    eprintln!("store run, unlabelled val: top-1 agreement with the store's teacher {agree:.2}%");
    assert!((0.0..=100.0).contains(&agree), "{s}");
    assert_eq!(s["target"], "logits", "{s}");
    // `export --val` on the same unlabelled folder: checked by agreement (core engine with
    // libtorch) and said so; after 0 images it is an error, never "checked".
    let export = |limit: &str| {
        let mut c = Command::new(BIN);
        c.args(["export", "--checkpoint"])
            .arg(dir.join("run/model.safetensors"))
            .arg("--out")
            .arg(dir.join(format!("m{limit}.tvb")))
            .arg("--val")
            .arg(format!("folder:{}", pngs.display()))
            .args(["--limit", limit])
            .env_remove("RUST_BACKTRACE");
        c
    };
    let e = fails(export("0"));
    assert!(
        e.contains("holds no images") && !e.contains("\"checked\""),
        "{e}"
    );
    let o = ok(export("5"));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (r["checked"].as_bool(), r["images"].as_u64()),
        (Some(true), Some(5)),
        "{r}"
    );
    assert!(
        r["agreement"].as_f64().is_some() && r["tch_top1"].is_null(),
        "{r}"
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("has no labels; checked by top-1 agreement")
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
