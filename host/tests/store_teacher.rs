//! The teacher pass end to end through the `tinyvit` binary, with the TorchScript fixture
//! teacher (`tests/fixtures/teacher/tiny_cnn.pt`, made by the committed script next to it):
//! sharded == unsharded, kill -9 + --resume == uninterrupted, bad images, mismatches, verify.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::{fails, ok, synthetic_idx, tmpdir, BIN};
use tinyvit_core::store::{FOOTER_LEN, HEADER_LEN};

fn teacher() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/teacher/tiny_cnn.pt")
}

fn save_logits(data: &str, out: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(["save-logits", "--teacher"])
        .arg(teacher())
        .args(["--data", data, "--out"])
        .arg(out)
        .args([
            "--preset",
            "light",
            "--input-size",
            "28",
            "--device",
            "cpu",
            "--seed",
            "5",
            "--quiet",
        ])
        .args(extra);
    if !extra.contains(&"--batch-size") {
        c.args(["--batch-size", "16"]);
    }
    if !extra.contains(&"--epochs") {
        c.args(["--epochs", "2"]);
    }
    if !extra.contains(&"--topk") {
        c.args(["--topk", "3"]);
    }
    if !extra.contains(&"--block-records") {
        c.args(["--block-records", "32"]);
    }
    c
}

fn logits(args: &[&str], dir: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.arg("logits").arg(args[0]).arg(dir).args(&args[1..]);
    c
}

fn part(dir: &Path, e: u32, p: u32, n: u32) -> PathBuf {
    dir.join(format!("epoch-{e:04}"))
        .join(format!("part-{p:04}-of-{n:04}.tvl"))
}

#[test]
fn sharded_equals_unsharded_and_verifies() {
    let d = tmpdir("teacher", "shard");
    let data = synthetic_idx(&d, 150).unwrap();
    let (whole, sharded) = (d.join("whole"), d.join("sharded"));
    ok(save_logits(&data, &whole, &[]));
    for s in ["2/3", "0/3", "1/3"] {
        ok(save_logits(&data, &sharded, &["--shard", s]));
    }
    for e in 0..2 {
        let w = std::fs::read(part(&whole, e, 0, 1)).unwrap();
        let mut joined = Vec::new();
        for p in 0..3 {
            let f = std::fs::read(part(&sharded, e, p, 3)).unwrap();
            joined.extend_from_slice(&f[HEADER_LEN..f.len() - FOOTER_LEN]);
        }
        assert!(
            joined == w[HEADER_LEN..w.len() - FOOTER_LEN],
            "epoch {e} differs"
        );
    }
    for dir in [&whole, &sharded] {
        let out = String::from_utf8(ok(logits(&["verify"], dir)).stdout).unwrap();
        assert!(out.starts_with("OK: 2 epochs x 150 samples"), "{out}");
    }
    let stats = String::from_utf8(ok(logits(&["stats"], &whole)).stdout).unwrap();
    assert!(
        stats.contains("top-3 of 10 classes") && stats.contains("16 bytes/sample"),
        "{stats}"
    );
    let mut show = logits(
        &[
            "show",
            "--epoch",
            "1",
            "--index",
            "77",
            "--data",
            &data,
            "--image-out",
        ],
        &whole,
    );
    show.arg(d.join("view.png"));
    let show = String::from_utf8(ok(show).stdout).unwrap();
    assert!(
        show.contains("top-3") && show.contains("images.idx[77]"),
        "{show}"
    );
    let png = image::open(d.join("view.png")).unwrap();
    assert_eq!((png.width(), png.height()), (28, 28));
    // Class names: the dataset's own when it has them, here Fashion-MNIST's by flag; a name
    // follows every class index.
    let named = String::from_utf8(
        ok(logits(
            &[
                "show",
                "--epoch",
                "1",
                "--index",
                "77",
                "--class-names",
                "fashion-mnist",
            ],
            &whole,
        ))
        .stdout,
    )
    .unwrap();
    let tops: Vec<&str> = named.lines().filter(|l| l.contains("top-")).collect();
    assert_eq!(tops.len(), 3, "{named}");
    for l in tops {
        let c: usize = l.split_whitespace().nth(2).unwrap().parse().unwrap();
        let name = tinyvit_host::data::FASHION_MNIST_CLASSES[c];
        assert!(l.contains(&format!(" {c} {name}  p = ")), "{l}");
    }

    // One flipped byte: verify fails and names the file, epoch and samples.
    let path = part(&sharded, 1, 1, 3);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[HEADER_LEN + 40] ^= 0x20;
    std::fs::write(&path, bytes).unwrap();
    let msg = fails(logits(&["verify"], &sharded));
    assert!(
        msg.contains("epoch-0001/part-0001-of-0003.tvl") && msg.contains("epoch 1, samples 64..96"),
        "{msg}"
    );
}

#[test]
fn kill_then_resume_equals_uninterrupted() {
    let d = tmpdir("teacher", "kill");
    let data = synthetic_idx(&d, 600).unwrap();
    let (clean, killed) = (d.join("clean"), d.join("killed"));
    ok(save_logits(&data, &clean, &[]));

    let mut child = save_logits(&data, &killed, &["--workers", "1"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let tmp = part(&killed, 0, 0, 1).with_extension("tvl.tmp");
    let block = 32 * (4 + 3 * 4) + 4;
    let t0 = Instant::now();
    loop {
        let len = std::fs::metadata(&tmp).map(|m| m.len()).unwrap_or(0);
        if len >= (HEADER_LEN + 2 * block) as u64 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "run ended before it could be killed"
        );
        assert!(t0.elapsed() < Duration::from_secs(60), "no progress");
        std::thread::sleep(Duration::from_millis(1));
    }
    // SIGKILL: no destructor, no footer, possibly half a block on disk.
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !part(&killed, 0, 0, 1).exists(),
        "killed run must not leave a closed part"
    );
    assert!(tmp.exists());

    // Without --resume nothing is overwritten; a reader does not see the epoch.
    let msg = fails(save_logits(&data, &killed, &[]));
    assert!(msg.contains("--resume"), "{msg}");
    let msg = fails(logits(&["verify"], &killed));
    assert!(msg.contains("incomplete"), "{msg}");
    // Resuming with another K or other data is refused, naming what differs.
    let msg = fails(save_logits(&data, &killed, &["--resume", "--topk", "4"]));
    assert!(msg.contains("topk: store has 3, now 4"), "{msg}");
    let other = tmpdir("teacher", "kill-other");
    let msg = fails(save_logits(
        &synthetic_idx(&other, 601).unwrap(),
        &killed,
        &["--resume"],
    ));
    assert!(msg.contains("dataset.len: store has 600, now 601"), "{msg}");

    let out = String::from_utf8(ok(save_logits(&data, &killed, &["--resume"])).stdout).unwrap();
    assert!(out.contains("reused from disk"), "{out}");
    for e in 0..2 {
        assert!(
            std::fs::read(part(&killed, e, 0, 1)).unwrap()
                == std::fs::read(part(&clean, e, 0, 1)).unwrap(),
            "epoch {e}: resumed store differs from the uninterrupted one"
        );
    }
    ok(logits(&["verify"], &killed));
    // Resuming a finished store computes nothing and changes nothing.
    let out = String::from_utf8(ok(save_logits(&data, &killed, &["--resume"])).stdout).unwrap();
    assert!(out.contains("0 computed"), "{out}");
}

#[test]
fn bad_images_error_or_missing_records() {
    let d = tmpdir("teacher", "bad");
    let root = d.join("imgs");
    for (c, n) in [("a", 5u8), ("b", 4)] {
        std::fs::create_dir_all(root.join(c)).unwrap();
        for i in 0..n {
            let img = image::RgbImage::from_fn(20 + u32::from(i), 24, |x, y| {
                image::Rgb([(x * 9) as u8, (y * 7) as u8, i * 40])
            });
            img.save(root.join(c).join(format!("{i}.png"))).unwrap();
        }
    }
    std::fs::write(root.join("a").join("2.png"), b"\x89PNG broken").unwrap();
    let data = format!("folder:{}", root.display());
    let msg = fails(save_logits(&data, &d.join("s1"), &["--channels", "1"]));
    assert!(
        msg.contains("a/2.png") && msg.contains("--on-bad-image skip"),
        "{msg}"
    );

    let store = d.join("s2");
    let out = String::from_utf8(
        ok(save_logits(
            &data,
            &store,
            &["--channels", "1", "--on-bad-image", "skip"],
        ))
        .stdout,
    )
    .unwrap();
    assert!(out.contains("2 missing"), "{out}");
    ok(logits(&["verify"], &store));
    let show =
        String::from_utf8(ok(logits(&["show", "--epoch", "0", "--index", "2"], &store)).stdout)
            .unwrap();
    assert!(show.contains("missing"), "{show}");
    let show =
        String::from_utf8(ok(logits(&["show", "--epoch", "0", "--index", "3"], &store)).stdout)
            .unwrap();
    assert!(
        show.contains("top-1") && !show.contains("missing"),
        "{show}"
    );
}

/// A truncated JPEG and a truncated PNG in a folder dataset: each is an error naming the file,
/// and under `--on-bad-image skip` a counted missing record (per epoch), never a grey-filled
/// image with the teacher's guess on it.
#[test]
fn truncated_jpeg_and_png_are_counted_missing_under_skip() {
    let d = tmpdir("teacher", "truncated");
    let root = d.join("imgs");
    for c in ["a", "b"] {
        std::fs::create_dir_all(root.join(c)).unwrap();
        for i in 0..4u8 {
            let img = image::RgbImage::from_fn(24, 24, |x, y| {
                image::Rgb([(x * 9) as u8, (y * 7) as u8, i * 50])
            });
            let ext = if i == 1 { "jpg" } else { "png" };
            img.save(root.join(c).join(format!("{i}.{ext}"))).unwrap();
        }
    }
    // Cut a JPEG inside its scan and a PNG inside its image data.
    for f in ["a/1.jpg", "b/2.png"] {
        let p = root.join(f);
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() * 3 / 5]).unwrap();
    }
    let data = format!("folder:{}", root.display());
    let msg = fails(save_logits(&data, &d.join("s1"), &["--channels", "1"]));
    assert!(
        msg.contains("a/1.jpg")
            && msg.contains("truncated JPEG")
            && msg.contains("--on-bad-image skip"),
        "{msg}"
    );
    let store = d.join("s2");
    let out = String::from_utf8(
        ok(save_logits(
            &data,
            &store,
            &["--channels", "1", "--on-bad-image", "skip"],
        ))
        .stdout,
    )
    .unwrap();
    // 2 bad files x 2 epochs, out of 8 samples a epoch.
    assert!(
        out.contains("samples: 8 per epoch x 2 epochs") && out.contains(", 4 missing)"),
        "{out}"
    );
    ok(logits(&["verify"], &store));
    // Samples in path order: a/0.png a/1.jpg a/2.png a/3.png b/0.png b/1.jpg b/2.png b/3.png.
    for (i, missing) in [(1, true), (6, true), (2, false), (5, false)] {
        for e in ["0", "1"] {
            let show = String::from_utf8(
                ok(logits(
                    &["show", "--epoch", e, "--index", &i.to_string()],
                    &store,
                ))
                .stdout,
            )
            .unwrap();
            assert_eq!(
                show.contains("missing"),
                missing,
                "sample {i}, epoch {e}: {show}"
            );
        }
    }
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn eight_bit_values_round_trip_through_the_pass() {
    let d = tmpdir("teacher", "bits8");
    let data = synthetic_idx(&d, 40).unwrap();
    let (s16, s8) = (d.join("s16"), d.join("s8"));
    ok(save_logits(&data, &s16, &[]));
    ok(save_logits(&data, &s8, &["--value-bits", "8"]));
    let stats = String::from_utf8(ok(logits(&["stats"], &s8)).stdout).unwrap();
    assert!(stats.contains("Sqrt8 values, 13 bytes/sample"), "{stats}");
    ok(logits(&["verify"], &s8));
    // Same teacher, same seeds: same classes; probabilities within the 8-bit bound.
    let (a, b) = (
        tinyvit_host::store::LogitStore::open(&s16).unwrap(),
        tinyvit_host::store::LogitStore::open(&s8).unwrap(),
    );
    for e in 0..2 {
        for i in 0..40 {
            let (x, y) = (a.record(e, i).unwrap(), b.record(e, i).unwrap());
            assert_eq!(x.seed(), y.seed());
            for k in 0..3 {
                assert_eq!(x.index(k), y.index(k));
                let p = x.prob(k);
                assert!((p - y.prob(k)).abs() <= p.sqrt() / 255.0 + p / 1024.0 + 1e-5);
            }
        }
    }
}

#[test]
fn refused_arguments_leave_the_store_as_it_was() {
    let d = tmpdir("teacher", "refused");
    let data = synthetic_idx(&d, 100).unwrap();
    let out = d.join("store");
    // Nothing exists yet: a refused run creates nothing.
    for bad in ["0", "2000000"] {
        let msg = fails(save_logits(&data, &out, &["--block-records", bad]));
        assert!(
            msg.contains("--block-records") && msg.contains(bad),
            "{msg}"
        );
        assert!(
            !out.exists(),
            "--block-records {bad} created {}",
            out.display()
        );
    }
    for bad in [
        &["--topk", "0"][..],
        &["--topk", "11"],
        &["--value-bits", "4"],
        &["--shard", "3/3"],
        &["--batch-size", "0"],
        &["--channels", "2"],
    ] {
        fails(save_logits(&data, &out, bad));
        assert!(!out.exists(), "{bad:?} created {}", out.display());
    }
    // An interrupted store: a refused run changes none of its files, and --resume then
    // completes it into the store an uninterrupted run writes.
    let clean = d.join("clean");
    ok(save_logits(&data, &clean, &[]));
    ok(save_logits(&data, &out, &[]));
    std::fs::remove_file(part(&out, 1, 0, 1)).unwrap();
    let snapshot = |dir: &Path| {
        let mut files = Vec::new();
        for e in walk(dir) {
            files.push((e.clone(), std::fs::read(&e).unwrap()));
        }
        files
    };
    let before = snapshot(&out);
    for bad in ["0", "2000000"] {
        fails(save_logits(
            &data,
            &out,
            &["--resume", "--block-records", bad],
        ));
        assert!(
            snapshot(&out) == before,
            "--block-records {bad} changed the store"
        );
    }
    ok(save_logits(&data, &out, &["--resume"]));
    for e in 0..2 {
        assert!(
            std::fs::read(part(&out, e, 0, 1)).unwrap()
                == std::fs::read(part(&clean, e, 0, 1)).unwrap(),
            "epoch {e} differs after the resume"
        );
    }
    ok(logits(&["verify"], &out));
}

/// `save-logits --resume` with more `--epochs` appends epochs to a store: the result is, file
/// for file and byte for byte, the store written with all its epochs at once, sharded or not.
/// Fewer epochs, more epochs without `--resume`, and another batch size are refused, each in a
/// sentence that says what to pass.
#[test]
fn more_epochs_with_resume_extend_a_store_to_the_bytes_of_one_written_at_once() {
    let d = tmpdir("teacher", "extend");
    let data = synthetic_idx(&d, 150).unwrap();
    let (once, grown, sharded) = (d.join("once"), d.join("grown"), d.join("sharded"));
    ok(save_logits(&data, &once, &["--epochs", "3"]));
    ok(save_logits(&data, &grown, &["--epochs", "1"]));
    for s in ["0/2", "1/2"] {
        ok(save_logits(
            &data,
            &sharded,
            &["--epochs", "2", "--shard", s],
        ));
    }
    let files = |dir: &Path| -> Vec<(PathBuf, Vec<u8>)> {
        walk(dir)
            .into_iter()
            .map(|p| {
                (
                    p.strip_prefix(dir).unwrap().to_path_buf(),
                    std::fs::read(&p).unwrap(),
                )
            })
            .collect()
    };
    let before = files(&grown);
    let msg = fails(save_logits(&data, &grown, &["--epochs", "3"]));
    assert!(
        msg.contains("the store has 1 epochs; pass --resume to extend it to 3"),
        "{msg}"
    );
    let msg = fails(save_logits(
        &data,
        &grown,
        &["--epochs", "3", "--resume", "--batch-size", "32"],
    ));
    assert!(
        msg.contains("batch_size: store has 16, now 32. --batch-size is pinned for a store")
            && msg.contains("pass --batch-size 16"),
        "{msg}"
    );
    assert!(
        files(&grown) == before,
        "a refused extension changed the store"
    );
    // One epoch, then two more in two steps.
    let out =
        String::from_utf8(ok(save_logits(&data, &grown, &["--epochs", "2", "--resume"])).stdout)
            .unwrap();
    assert!(out.contains("150 reused from disk"), "{out}");
    ok(save_logits(&data, &grown, &["--epochs", "3", "--resume"]));
    let msg = fails(save_logits(&data, &grown, &["--epochs", "2", "--resume"]));
    assert!(
        msg.contains("the store has 3 epochs, --epochs 2 asks for fewer"),
        "{msg}"
    );
    // Every part of the sharded store, extended part by part.
    for s in ["1/2", "0/2"] {
        ok(save_logits(
            &data,
            &sharded,
            &["--epochs", "3", "--shard", s, "--resume"],
        ));
    }
    let reference = files(&once);
    assert_eq!(reference.len(), 4, "manifest and 3 parts");
    let got = files(&grown);
    assert_eq!(
        got.iter().map(|f| &f.0).collect::<Vec<_>>(),
        reference.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    for ((name, a), (_, b)) in reference.iter().zip(&got) {
        assert!(
            a == b,
            "{} differs from the store written at once",
            name.display()
        );
    }
    for e in 0..3 {
        let w = std::fs::read(part(&once, e, 0, 1)).unwrap();
        let mut joined = Vec::new();
        for p in 0..2 {
            let f = std::fs::read(part(&sharded, e, p, 2)).unwrap();
            joined.extend_from_slice(&f[HEADER_LEN..f.len() - FOOTER_LEN]);
        }
        assert!(
            joined == w[HEADER_LEN..w.len() - FOOTER_LEN],
            "sharded epoch {e} differs"
        );
    }
    for dir in [&grown, &sharded] {
        let out = String::from_utf8(ok(logits(&["verify"], dir)).stdout).unwrap();
        assert!(out.starts_with("OK: 3 epochs x 150 samples"), "{out}");
    }
    std::fs::remove_dir_all(&d).unwrap();
}

/// Every file under `dir`, sorted.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}
