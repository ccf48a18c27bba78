//! `tinyvit eval` through the binary: on the validation split a trained checkpoint scores what
//! the trainer itself reported for it (libtorch there, the core's fast engine here), its int8
//! file what `quantize --val` reported for it, its JSON says the same, and unusable input is
//! refused with the file named.

mod support;

use std::process::Command;

use support::{fails, ok, tmpdir, BIN};

fn json(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn eval_matches_the_trainers_validation_figure() {
    let d = tmpdir("eval", "matches");
    let train = support::fashion_mnist_subset(&d, "train", 1024);
    let val = support::fashion_mnist_subset(&d, "t10k", 400);
    let run = d.join("run");
    let mut c = support::train_m4(&train);
    c.args([
        "--labels",
        "--img-size",
        "28",
        "--epochs",
        "3",
        "--batch-size",
        "32",
    ])
    .args(["--warmup-epochs", "0", "--aug", "plain"])
    .args(["--val", &val, "--num-classes", "10", "--quiet", "--out"])
    .arg(&run);
    ok(c);
    let summary = json(&run.join("summary.json"));
    let trainer = summary["val_top1"].as_f64().unwrap();

    let js = d.join("eval.json");
    let mut c = Command::new(BIN);
    c.args(["eval", "--model"])
        .arg(run.join("model.safetensors"))
        .args(["--data", &val, "--json"])
        .arg(&js);
    let out = String::from_utf8(ok(c).stdout).unwrap();
    let v = json(&js);
    assert_eq!(v["images"], 400);
    let top1 = v["top1"].as_f64().unwrap();
    let top5 = v["top5"].as_f64().unwrap();
    // Two engines, one model: at most one image of 400 may flip on a near tie.
    assert!(
        (top1 - trainer).abs() <= 0.25 + 1e-9,
        "eval {top1} against the trainer's {trainer}\n{out}"
    );
    assert!(top5 >= top1 && top5 <= 100.0);
    assert!(trainer > 40.0, "three epochs learn something: {trainer}");
    assert!(out.contains("400 images"), "{out}");

    // The int8 file of the same model: `eval` runs it on the integer engine and scores exactly
    // what `quantize --val` reported for it on the same images (one engine, one input path).
    let q8 = d.join("model.q8.tvb");
    let mut c = Command::new(BIN);
    c.args(["quantize", "--model"])
        .arg(run.join("model.safetensors"))
        .args([
            "--calib",
            &train,
            "--calib-images",
            "32",
            "--val",
            &val,
            "--out",
        ])
        .arg(&q8);
    let q = ok(c);
    let text = String::from_utf8_lossy(&q.stdout);
    let r: serde_json::Value = serde_json::from_str(text.trim().lines().last().unwrap()).unwrap();
    let js8 = d.join("eval-q8.json");
    let mut c = Command::new(BIN);
    c.args(["eval", "--model"])
        .arg(&q8)
        .args(["--data", &val, "--json"])
        .arg(&js8);
    let out8 = String::from_utf8(ok(c).stdout).unwrap();
    let v8 = json(&js8);
    assert_eq!(v8["images"], 400);
    assert_eq!(
        v8["top1"].as_f64(),
        r["int8_top1"].as_f64(),
        "eval of the int8 file against quantize's int8 top-1\n{out8}\n{r}"
    );
    assert!((v8["top1"].as_f64().unwrap() - top1).abs() <= 5.0, "{out8}");
}

#[test]
fn eval_refuses_unlabelled_or_missing_input() {
    let d = tmpdir("eval", "refuses");
    let val = support::fashion_mnist_subset(&d, "t10k", 20);
    let missing = d.join("nope.safetensors");
    let mut c = Command::new(BIN);
    c.args(["eval", "--model"])
        .arg(&missing)
        .args(["--data", &val]);
    let err = fails(c);
    assert!(err.contains("nope.safetensors"), "{err}");

    let images_only = val.split(',').next().unwrap().to_string();
    let mut c = Command::new(BIN);
    c.args(["eval", "--model"])
        .arg(&missing)
        .args(["--data", &images_only]);
    let err = fails(c);
    assert!(err.contains("label"), "{err}");
}
