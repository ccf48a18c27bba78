//! Online distillation (issue 15, item 4): a teacher whose class count differs from the
//! student's is a clear error before any step, never a panic; a teacher with its own
//! normalisation (`--teacher-norm`) trains; unlabelled validation data is measured by agreement
//! with the teacher.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::{fails, fashion_mnist_subset, ok, tmpdir, BIN};

fn cnn() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/teacher/tiny_cnn.pt")
}

/// A one-epoch online-distillation run of the M4 student on 64 synthetic grey 32 px images.
fn online(out: &Path, classes: &str, extra: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(["train", "--arch", "tiny_vit_mcu_m4", "--synthetic", "64"])
        .args([
            "--num-classes",
            classes,
            "--in-chans",
            "1",
            "--img-size",
            "32",
        ])
        .arg("--teacher")
        .arg(cnn())
        .args([
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--device",
            "cpu",
            "--quiet",
        ])
        .args(["--threads", "1", "--workers", "1", "--out"])
        .arg(out)
        .args(extra)
        .env_remove("RUST_BACKTRACE");
    c
}

#[test]
fn a_teacher_of_other_classes_is_an_error_before_any_step() {
    let dir = tmpdir("teacher-classes", "mismatch");
    let e = fails(online(&dir.join("run"), "7", &[]));
    assert!(!e.contains("panicked"), "{e}");
    assert!(
        e.contains("tiny_cnn.pt") && e.contains("10 classes") && e.contains("the student 7"),
        "{e}"
    );
    assert!(
        !dir.join("run/last.safetensors").exists(),
        "no step was taken"
    );
    let run = dir.join("norm");
    ok(online(&run, "10", &["--teacher-norm", "half"]));
    assert!(run.join("model.safetensors").exists());
    let e = fails(online(
        &dir.join("bad"),
        "10",
        &["--teacher-mean", "0.5,0.5"],
    ));
    assert!(e.contains("--teacher-mean"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--val` on a folder of unlabelled images, online teacher: the summary reports the student's
/// top-1 agreement with the teacher and no accuracy.
#[test]
fn unlabelled_validation_reports_agreement_with_the_teacher() {
    let dir = tmpdir("teacher-classes", "unlabelled");
    let train = fashion_mnist_subset(&dir, "train", 64);
    let pngs = dir.join("val");
    std::fs::create_dir_all(&pngs).unwrap();
    for i in 0..16u8 {
        let px: Vec<u8> = (0..28 * 28)
            .map(|j| (j as u8).wrapping_mul(i + 1))
            .collect();
        image::GrayImage::from_raw(28, 28, px)
            .unwrap()
            .save(pngs.join(format!("v{i:02}.png")))
            .unwrap();
    }
    let mut c = Command::new(BIN);
    c.args(["train", "--arch", "tiny_vit_mcu_m4", "--data", &train])
        .args(["--img-size", "32", "--teacher"])
        .arg(cnn())
        .arg("--val")
        .arg(format!("folder:{}", pngs.display()))
        .args([
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--device",
            "cpu",
            "--quiet",
        ])
        .args(["--threads", "1", "--workers", "1", "--out"])
        .arg(dir.join("run"));
    let o = ok(c);
    let s = String::from_utf8_lossy(&o.stdout);
    let summary: serde_json::Value = serde_json::from_str(s.lines().last().unwrap()).unwrap();
    assert!(summary["val_top1"].is_null(), "{summary}");
    let agree = summary["val_agreement"]
        .as_f64()
        .expect("agreement on unlabelled data");
    assert!((0.0..=100.0).contains(&agree), "{summary}");
    std::fs::remove_dir_all(&dir).unwrap();
}
