//! Kill -9 during training, then `--resume`: the final weights equal those of an uninterrupted
//! run bit for bit on the CPU (same thread count), because every random stream (epoch order,
//! augmentation seeds, mixup draws, DropPath masks) is derived from the run seed and the
//! position, and the checkpoint holds weights, BN statistics, AdamW moments and that position.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::{fashion_mnist_subset, tmpdir, train_m4};
use tinyvit_host::checkpoint;
use tinyvit_host::train::state::{state_of, TrainState};

fn train(data: &str, out: &Path, resume: bool) -> Command {
    train_batch(data, out, resume, "16")
}

fn train_batch(data: &str, out: &Path, resume: bool, batch: &str) -> Command {
    let mut c = train_m4(data);
    c.arg("--labels")
        .args([
            "--val",
            "split:64",
            "--epochs",
            "3",
            "--batch-size",
            batch,
            "--img-size",
            "32",
        ])
        // exercise every random stream: DropPath, mixup and CutMix, augmentation
        .args(["--drop-path", "0.1", "--mixup", "0.8", "--cutmix", "1.0"])
        .args([
            "--ckpt-every",
            "3",
            "--threads",
            "1",
            "--workers",
            "2",
            "--device",
            "cpu",
        ])
        .args(["--seed", "11", "--quiet", "--out"])
        .arg(out);
    if resume {
        c.arg("--resume");
    }
    c
}

fn step_of(path: &Path) -> Option<u64> {
    let l = checkpoint::load(path, None).ok()?;
    state_of(&l, "last").ok()?.map(|s| s.step)
}

#[test]
fn kill_then_resume_equals_uninterrupted() {
    let dir = tmpdir("resume", "data");
    let data = fashion_mnist_subset(&dir, "train", 384);
    let whole = dir.join("whole");
    let o = train(&data, &whole, false).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let cut = dir.join("cut");
    let mut child = train(&data, &cut, false).spawn().unwrap();
    let last = cut.join("last.safetensors");
    let t0 = Instant::now();
    let killed_at = loop {
        if let Some(s) = step_of(&last) {
            if s >= 6 {
                break s;
            }
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "run ended before it could be killed"
        );
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no checkpoint appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!cut.join("model.safetensors").exists());
    let total = 3 * ((384 - 64) / 16) as u64;
    eprintln!("killed after checkpoint at step {killed_at} of {total}");
    assert!(killed_at < total);

    let o = train(&data, &cut, true).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let a = checkpoint::load(&whole.join("last.safetensors"), None).unwrap();
    let b = checkpoint::load(&cut.join("last.safetensors"), None).unwrap();
    let step = |l: &checkpoint::Loaded| -> TrainState { state_of(l, "last").unwrap().unwrap() };
    assert_eq!(step(&a).step, total);
    assert_eq!(step(&b).step, total);
    let mut names: Vec<&String> = a.tensors.keys().collect();
    names.sort();
    assert_eq!(a.tensors.len(), b.tensors.len());
    let mut differing = Vec::new();
    for n in names {
        // weights, BN statistics and AdamW moments
        if !a.tensors[n].equal(&b.tensors[n]) {
            differing.push(n.clone());
        }
    }
    assert!(differing.is_empty(), "not bit-identical: {differing:?}");

    // a resumed run with other settings is refused
    let mut c = train(&data, &cut, true);
    c.args(["--lr", "0.1"]);
    let o = c.output().unwrap();
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("recipe differs") && e.contains("lr: the run has"),
        "{e}"
    );
    // Another batch size is refused in one sentence naming the flag, both values and why.
    let o = train_batch(&data, &cut, true, "32")
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("batch_size: the run has 16, now 32. --batch-size is pinned for a resumed run")
            && e.contains("pass --batch-size 16"),
        "{e}"
    );
}
