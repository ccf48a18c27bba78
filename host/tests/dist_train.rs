//! `tinyvit train` data-parallel over two processes on 127.0.0.1 against one process, with the
//! same global batch, seed and data (the first 256 Fashion-MNIST training images, 32 px, a tiny
//! MCU student on the CPU, one epoch of 8 steps):
//! - the logged loss of every step agrees within 1e-4 relative;
//! - the final validation top-1 within 0.3 pt;
//! - the final weights within 1e-4 relative (largest difference over the largest value);
//! - a resumed two-rank run continues where it stopped;
//! - killing one rank makes the other exit non-zero within its timeout, naming the lost rank.
//!
//! BatchNorm statistics are per rank (a share of the batch), so the comparison runs with
//! BatchNorm frozen (`--freeze-bn true`) and no drop path, whose random draws depend on the
//! batch shape. README ("Many GPUs") gives the measured effect of per-rank BatchNorm.

mod support;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use support::{fashion_mnist_subset, tmpdir, BIN};
use tch::Tensor;

struct Data {
    train: String,
    val: String,
}

fn data() -> &'static Data {
    static D: OnceLock<Data> = OnceLock::new();
    D.get_or_init(|| {
        let dir = tmpdir("dist-train", "data");
        Data {
            train: fashion_mnist_subset(&dir, "train", 256),
            val: fashion_mnist_subset(&dir, "t10k", 128),
        }
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `tinyvit train` with the comparison's settings.
fn train(out: &Path, epochs: u32, extra: &[&str]) -> Command {
    let d = data();
    let mut c = Command::new(BIN);
    c.args([
        "train",
        "--arch",
        "tiny_vit_mcu_m4",
        "--labels",
        "--data",
        &d.train,
    ])
    .args(["--val", &d.val, "--img-size", "32"])
    .args(["--epochs", &epochs.to_string()])
    .args(["--batch-size", "32", "--log-every", "1", "--seed", "7"])
    // No warmup: the weights move from the first step, so their agreement means something.
    .args(["--warmup-epochs", "0"])
    .args([
        "--freeze-bn",
        "true",
        "--drop-path",
        "0",
        "--mixup",
        "0",
        "--cutmix",
        "0",
    ])
    .args(support::CPU_QUIET)
    .arg("--out")
    .arg(out)
    .args(extra)
    .env_remove("RUST_BACKTRACE");
    if !extra.contains(&"--lr") {
        c.args(["--lr", "0.02"]);
    }
    c
}

/// Starts `world` ranks of `cmd(rank)`.
fn spawn(world: usize, timeout: &str, cmd: impl Fn(usize) -> Command) -> Vec<Child> {
    let port = free_port();
    (0..world)
        .map(|r| {
            let mut c = cmd(r);
            c.env("RANK", r.to_string())
                .env("WORLD_SIZE", world.to_string())
                .env("LOCAL_RANK", r.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", port.to_string())
                .args(["--dist-timeout", timeout])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            c.spawn().unwrap()
        })
        .collect()
}

fn finish(children: Vec<Child>) -> Vec<Output> {
    children
        .into_iter()
        .enumerate()
        .map(|(r, c)| {
            let o = c.wait_with_output().unwrap();
            if !o.status.success() {
                panic!(
                    "rank {r} failed ({:?}):\n{}{}",
                    o.status,
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                );
            }
            o
        })
        .collect()
}

fn summary(o: &Output) -> serde_json::Value {
    let s = String::from_utf8_lossy(&o.stdout);
    serde_json::from_str(s.lines().last().expect("summary line")).unwrap()
}

/// The per-step training losses of a run's `metrics.jsonl`.
fn step_losses(run: &Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.get("loss").and_then(|x| x.as_f64())
        })
        .collect()
}

fn weights(file: &Path) -> Vec<(String, Tensor)> {
    let mut v = Tensor::read_safetensors(file).unwrap();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Largest |a - b| over the largest |a|, over all float tensors.
fn max_rel_diff(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> f64 {
    assert_eq!(a.len(), b.len());
    let (mut diff, mut scale) = (0f64, 0f64);
    for ((na, ta), (nb, tb)) in a.iter().zip(b) {
        assert_eq!(na, nb);
        if !ta.is_floating_point() {
            assert!(ta.equal(tb), "{na} differs");
            continue;
        }
        let d = (ta - tb).abs().max().double_value(&[]);
        diff = diff.max(d);
        scale = scale.max(ta.abs().max().double_value(&[]));
    }
    diff / scale
}

struct Runs {
    one: PathBuf,
    two: PathBuf,
    one_summary: serde_json::Value,
    two_summary: serde_json::Value,
}

fn runs() -> &'static Runs {
    static R: OnceLock<Runs> = OnceLock::new();
    R.get_or_init(|| {
        let dir = tmpdir("dist-train", "runs");
        let (one, two) = (dir.join("one"), dir.join("two"));
        let t = Instant::now();
        let o1 = train(&one, 1, &[]).output().unwrap();
        assert!(
            o1.status.success(),
            "{}",
            String::from_utf8_lossy(&o1.stderr)
        );
        let t1 = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let o2 = finish(spawn(2, "60", |_| train(&two, 1, &[])));
        eprintln!(
            "one rank {t1:.1} s, two ranks {:.1} s (wall, start-up and evaluation included)",
            t.elapsed().as_secs_f64()
        );
        Runs {
            one_summary: summary(&o1),
            two_summary: summary(&o2[0]),
            one,
            two,
        }
    })
}

#[test]
fn two_ranks_match_one_rank() {
    let r = runs();
    let (a, b) = (step_losses(&r.one), step_losses(&r.two));
    assert_eq!(a.len(), 8, "one logged loss per step of the epoch: {a:?}");
    assert_eq!(a.len(), b.len());
    for (s, (x, y)) in a.iter().zip(&b).enumerate() {
        let rel = (x - y).abs() / x.abs();
        eprintln!("step {}: loss {x:.6} vs {y:.6}, relative {rel:.1e}", s + 1);
        assert!(rel <= 1e-4, "step {}: {x} vs {y}", s + 1);
    }
    let (v1, v2) = (
        r.one_summary["val_top1"].as_f64().unwrap(),
        r.two_summary["val_top1"].as_f64().unwrap(),
    );
    eprintln!("val top-1 {v1:.2} % vs {v2:.2} %");
    assert!((v1 - v2).abs() <= 0.3, "val top-1 {v1} vs {v2}");
    let d = max_rel_diff(
        &weights(&r.one.join("model.safetensors")),
        &weights(&r.two.join("model.safetensors")),
    );
    eprintln!("final weights: largest difference {d:.1e} of the largest weight");
    assert!(d <= 1e-4, "final weights differ by {d:e}");
    // The agreement means something only if training moved the weights well beyond the
    // tolerance: a run with a learning rate of 1e-12 keeps the initial weights.
    let init = tmpdir("dist-train", "init");
    let o = train(
        &init,
        1,
        &["--lr", "1e-12", "--min-lr", "0", "--max-steps", "1"],
    )
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let moved = max_rel_diff(
        &weights(&r.one.join("model.safetensors")),
        &weights(&init.join("model.safetensors")),
    );
    eprintln!("training moved the weights by {moved:.1e} of the largest weight");
    assert!(moved > 1e-3, "the weights barely moved ({moved:e})");
}

#[test]
fn only_rank_0_writes() {
    let r = runs();
    let files: Vec<String> = std::fs::read_dir(&r.two)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for f in [
        "model.safetensors",
        "metrics.jsonl",
        "summary.json",
        "curves.png",
    ] {
        assert!(files.iter().any(|x| x == f), "{f} missing: {files:?}");
    }
    let lines = std::fs::read_to_string(r.two.join("metrics.jsonl")).unwrap();
    let steps = lines.lines().filter(|l| l.contains("\"loss\"")).count();
    assert_eq!(steps, 8, "one writer: each step logged once");
    assert_eq!(r.two_summary["world_size"], 2);
}

#[test]
fn resume_with_two_ranks() {
    // Stop after 5 of 8 steps, then resume for the rest: the same weights as one go.
    let r = runs();
    let dir = tmpdir("dist-train", "resume");
    finish(spawn(2, "60", |_| {
        train(&dir, 1, &["--max-steps", "5", "--ckpt-every", "1"])
    }));
    finish(spawn(2, "60", |_| train(&dir, 1, &["--resume"])));
    let d = max_rel_diff(
        &weights(&r.two.join("model.safetensors")),
        &weights(&dir.join("model.safetensors")),
    );
    eprintln!("resumed two-rank run: weights within {d:.1e} of the run in one go");
    assert!(d <= 1e-4, "resumed weights differ by {d:e}");
}

#[test]
fn killed_rank_is_named() {
    let dir = tmpdir("dist-train", "killed");
    // Longer than the test: the killed rank cannot finish on its own.
    let mut kids = spawn(2, "5", |_| train(&dir, 50, &[]));
    // Wait until training runs (rank 0 logged a step), then kill rank 1.
    let start = Instant::now();
    while !std::fs::read_to_string(dir.join("metrics.jsonl")).is_ok_and(|s| s.contains("loss")) {
        for (r, k) in kids.iter_mut().enumerate() {
            assert!(
                k.try_wait().unwrap().is_none(),
                "rank {r} ended before the kill"
            );
        }
        assert!(start.elapsed() < Duration::from_secs(120), "no step logged");
        std::thread::sleep(Duration::from_millis(100));
    }
    kids[1].kill().unwrap();
    let killed = Instant::now();
    let rank0 = kids.remove(0);
    let _ = kids[0].wait();
    let o = rank0.wait_with_output().unwrap();
    let secs = killed.elapsed().as_secs_f64();
    let err = String::from_utf8_lossy(&o.stderr);
    eprintln!(
        "rank 0 ended {secs:.1} s after the kill ({:?}):\n{err}",
        o.status
    );
    assert!(!o.status.success(), "rank 0 exited 0");
    assert!(
        err.contains("lost rank 1"),
        "rank 0 does not name rank 1:\n{err}"
    );
    // Timeout 5 s and the 3 s diagnosis, with room for a loaded machine.
    assert!(secs < 30.0, "rank 0 took {secs:.1} s");
}
