//! Online distillation (issue 15, item 4): a teacher whose class count differs from the
//! student's is a clear error before any step, never a panic; a teacher with its own
//! normalisation (`--teacher-norm`) trains.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::{fails, ok, tmpdir, BIN};

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
