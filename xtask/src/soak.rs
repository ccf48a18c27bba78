//! `cargo xtask soak [--kills N] [--seed S] [--out DIR]`: crash tests of the two long-running
//! commands. `tinyvit save-logits` and `tinyvit train` run on a tiny synthetic dataset (each
//! run takes seconds); each case SIGKILLs one run one to three times at random points chosen
//! by progress on disk (the bytes of its output folder: shard files and checkpoint files
//! appearing or growing, never wall time), resumes it with `--resume` after each kill, lets the
//! last resume finish, and compares its outputs with an uninterrupted run's:
//!
//! - save-logits: every file of the store (manifest and every closed part), byte for byte, and
//!   no file more or less (no `.tmp` left);
//! - train: `run.json`, `config.toml` and `model.safetensors` byte for byte, and
//!   `last.safetensors` byte for byte but for the wall-clock seconds in its `tinyvit.state`
//!   (set to zero on both sides before comparing; weights, moments, step and data position
//!   are compared as they are).
//!
//! Kinds alternate case by case. A kill point the run passed before the poll saw it (the run
//! finished first) counts as an attempt without a kill; the figures are kills survived
//! (byte-identical results after that kill) out of kills made, and the cases.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use tinyvit_core::params::splitmix64;

use crate::{setup, util};

/// Samples of the synthetic dataset (28x28 grey, 10 classes).
const SAMPLES: u32 = 160;

pub fn run(args: &[String]) -> Result<()> {
    let mut kills = 10u64;
    let mut seed = 1u64;
    let mut out = util::target_dir().join("soak");
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match a.as_str() {
            "--kills" => kills = value("--kills")?.parse().context("--kills")?,
            "--seed" => seed = value("--seed")?.parse().context("--seed")?,
            "--out" => out = PathBuf::from(value("--out")?),
            other => bail!(
                "unknown argument `{other}`; usage: cargo xtask soak [--kills N] [--seed S] \
                 [--out DIR]"
            ),
        }
    }
    ensure!(kills > 0, "--kills must be at least 1");
    let bin = tinyvit_bin()?;
    if out.exists() {
        std::fs::remove_dir_all(&out).with_context(|| format!("clearing {}", out.display()))?;
    }
    std::fs::create_dir_all(&out)?;
    let data = write_data(&out)?;
    let soak = Soak {
        bin,
        data,
        teacher: util::root().join("tests/fixtures/teacher/tiny_cnn.pt"),
        dir: out.clone(),
    };
    util::step("soak: the uninterrupted reference runs");
    let mut reference = BTreeMap::new();
    for kind in [Kind::SaveLogits, Kind::Train] {
        let dir = out.join(format!("reference-{}", kind.name()));
        let t = Instant::now();
        soak.finish(kind, &dir, false)?;
        let bytes = folder_bytes(&dir);
        eprintln!(
            "    {}: {:.1} s, {bytes} bytes on disk",
            kind.name(),
            t.elapsed().as_secs_f64()
        );
        reference.insert(kind.name(), (dir, bytes));
    }
    util::step(&format!(
        "soak: {kills} kills at random points of progress on disk"
    ));
    let mut rng = seed;
    let (mut made, mut survived, mut missed, mut cases) = (0u64, 0u64, 0u64, 0u64);
    let mut per_kind: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    while made < kills {
        let kind = if cases % 2 == 0 {
            Kind::SaveLogits
        } else {
            Kind::Train
        };
        let (ref_dir, ref_bytes) = &reference[kind.name()];
        let dir = out.join(format!("case-{cases:04}-{}", kind.name()));
        let want = (1 + splitmix64(&mut rng) % 3).min(kills - made);
        let mut points = Vec::new();
        let mut floor = 0u64;
        let top = *ref_bytes * 95 / 100;
        for k in 0..want {
            // A point in (bytes seen at the last kill, 95 % of the finished folder's bytes]:
            // each resumed run must make progress past what the last one left.
            if floor + 1 >= top {
                break;
            }
            let at = floor + 1 + splitmix64(&mut rng) % (top - floor);
            match soak.kill_at(kind, &dir, k > 0, at)? {
                Some(seen) => {
                    made += 1;
                    points.push(seen);
                    floor = floor.max(seen);
                }
                None => missed += 1,
            }
        }
        soak.finish(kind, &dir, true)
            .with_context(|| format!("{}: the final --resume", dir.display()))?;
        let same = compare(kind, ref_dir, &dir);
        let e = per_kind.entry(kind.name()).or_default();
        e.0 += points.len() as u64;
        match same {
            Ok(()) => {
                survived += points.len() as u64;
                e.1 += points.len() as u64;
                eprintln!(
                    "    case {cases} {}: killed at {points:?} bytes, resumed: identical",
                    kind.name()
                );
                std::fs::remove_dir_all(&dir).ok();
            }
            Err(err) => eprintln!(
                "    case {cases} {}: killed at {points:?} bytes: DIFFERS: {err:#} (kept in {})",
                kind.name(),
                dir.display()
            ),
        }
        cases += 1;
    }
    eprintln!("\n| command | kills | survived (byte-identical) |\n|---|---:|---:|");
    for (k, (m, s)) in &per_kind {
        eprintln!("| {k} | {m} | {s} |");
    }
    eprintln!(
        "| total | {made} | {survived} |\n{cases} cases; {missed} kill point(s) passed before \
         the poll saw them (run finished first, not counted)"
    );
    ensure!(
        survived == made,
        "{} of {made} kills gave results that differ from the uninterrupted run",
        made - survived
    );
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    SaveLogits,
    Train,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::SaveLogits => "save-logits",
            Kind::Train => "train",
        }
    }
}

struct Soak {
    bin: PathBuf,
    data: String,
    teacher: PathBuf,
    dir: PathBuf,
}

impl Soak {
    /// The command of one run of `kind` into `out`.
    fn command(&self, kind: Kind, out: &Path, resume: bool) -> Result<Command> {
        let mut c = Command::new(&self.bin);
        setup::torch_env(&mut c)?;
        c.current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        match kind {
            Kind::SaveLogits => {
                c.args(["save-logits", "--teacher"])
                    .arg(&self.teacher)
                    .args(["--data", &self.data, "--epochs", "3", "--topk", "3"])
                    .args(["--preset", "light", "--input-size", "28", "--device", "cpu"])
                    .args(["--batch-size", "8", "--block-records", "8", "--seed", "5"])
                    .args(["--workers", "1", "--quiet", "--out"])
                    .arg(out);
            }
            Kind::Train => {
                c.args(["train", "--arch", "tiny_vit_mcu_m4", "--data", &self.data])
                    .args(["--labels", "--epochs", "2", "--batch-size", "16"])
                    .args(["--img-size", "28", "--ckpt-every", "2", "--threads", "1"])
                    .args(["--workers", "1", "--device", "cpu", "--seed", "11"])
                    .args(["--quiet", "--out"])
                    .arg(out);
            }
        }
        if resume {
            c.arg("--resume");
        }
        Ok(c)
    }

    /// Runs `kind` into `out` to its end (resuming what is there when `resume`).
    fn finish(&self, kind: Kind, out: &Path, resume: bool) -> Result<()> {
        let o = self.command(kind, out, resume)?.output()?;
        if !o.status.success() {
            bail!(
                "tinyvit {} into {} failed:\n{}",
                kind.name(),
                out.display(),
                String::from_utf8_lossy(&o.stderr)
            );
        }
        Ok(())
    }

    /// Starts `kind` into `out` and SIGKILLs it once its folder holds at least `at` bytes;
    /// returns the bytes seen at the kill, or `None` when the run finished first.
    fn kill_at(&self, kind: Kind, out: &Path, resume: bool, at: u64) -> Result<Option<u64>> {
        let mut child = self.command(kind, out, resume)?.spawn()?;
        let t0 = Instant::now();
        loop {
            let seen = folder_bytes(out);
            if seen >= at {
                // SIGKILL: no destructor, no cleanup, whatever was half-written stays.
                child.kill().ok();
                let status = child.wait()?;
                if status.success() {
                    return Ok(None);
                }
                return Ok(Some(seen));
            }
            if let Some(status) = child.try_wait()? {
                if !status.success() {
                    let mut err = String::new();
                    if let Some(mut e) = child.stderr.take() {
                        std::io::Read::read_to_string(&mut e, &mut err).ok();
                    }
                    bail!("tinyvit {} failed before the kill:\n{err}", kind.name());
                }
                return Ok(None);
            }
            ensure!(
                t0.elapsed() < Duration::from_secs(600),
                "tinyvit {} into {}: no progress for 600 s",
                kind.name(),
                out.display()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// Total bytes of the regular files under `dir` (0 when it does not exist yet).
fn folder_bytes(dir: &Path) -> u64 {
    let mut n = 0;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => todo.push(e.path()),
                Ok(m) => n += m.len(),
                Err(_) => {}
            }
        }
    }
    n
}

/// Every file under `dir`, relative, sorted.
fn files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let p = e?.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p.strip_prefix(dir)?.to_path_buf());
            }
        }
    }
    out.sort();
    Ok(out)
}

fn read(p: &Path) -> Result<Vec<u8>> {
    std::fs::read(p).with_context(|| format!("reading {}", p.display()))
}

/// Compares a resumed run's outputs with the reference (see the module doc).
fn compare(kind: Kind, reference: &Path, got: &Path) -> Result<()> {
    match kind {
        Kind::SaveLogits => {
            let (a, b) = (files(reference)?, files(got)?);
            ensure!(a == b, "files differ: reference {a:?}, resumed {b:?}");
            for f in &a {
                ensure!(
                    read(&reference.join(f))? == read(&got.join(f))?,
                    "{} differs",
                    f.display()
                );
            }
        }
        Kind::Train => {
            for f in ["run.json", "config.toml", "model.safetensors"] {
                ensure!(
                    read(&reference.join(f))? == read(&got.join(f))?,
                    "{f} differs"
                );
            }
            ensure!(
                without_seconds(&read(&reference.join("last.safetensors"))?)?
                    == without_seconds(&read(&got.join("last.safetensors"))?)?,
                "last.safetensors differs (beyond the wall-clock seconds of its state)"
            );
            let tmp: Vec<PathBuf> = files(got)?
                .into_iter()
                .filter(|f| f.extension().is_some_and(|e| e == "tmp"))
                .collect();
            ensure!(tmp.is_empty(), "temporary files left: {tmp:?}");
        }
    }
    Ok(())
}

/// A training checkpoint's bytes with `train_seconds` of its `tinyvit.state` set to 0: the
/// header re-serialised with sorted keys, then the tensor data as it is.
fn without_seconds(bytes: &[u8]) -> Result<Vec<u8>> {
    ensure!(
        bytes.len() >= 8,
        "checkpoint shorter than its header length"
    );
    let n = u64::from_le_bytes(bytes[..8].try_into()?) as usize;
    let header = bytes.get(8..8 + n).context("header past the end")?;
    let mut h: serde_json::Value = serde_json::from_slice(header)?;
    let meta = h
        .get_mut("__metadata__")
        .and_then(|m| m.as_object_mut())
        .context("no __metadata__")?;
    let state = meta
        .get("tinyvit.state")
        .and_then(|s| s.as_str())
        .context("no tinyvit.state")?;
    let mut state: serde_json::Value = serde_json::from_str(state)?;
    state["train_seconds"] = serde_json::json!(0.0);
    meta.insert(
        "tinyvit.state".into(),
        serde_json::Value::String(state.to_string()),
    );
    let mut out = serde_json::to_vec(&h)?;
    out.extend_from_slice(&bytes[8 + n..]);
    Ok(out)
}

/// The synthetic dataset: IDX images and labels, a pattern that depends on the index.
fn write_data(dir: &Path) -> Result<String> {
    let mut img = Vec::new();
    for v in [0x0803u32, SAMPLES, 28, 28] {
        img.extend_from_slice(&v.to_be_bytes());
    }
    let mut lab = Vec::new();
    for v in [0x0801u32, SAMPLES] {
        lab.extend_from_slice(&v.to_be_bytes());
    }
    for i in 0..SAMPLES {
        let c = i % 10;
        for y in 0..28u32 {
            for x in 0..28u32 {
                let on = (x / 4 + y / 4 + c) % 3 == 0;
                img.push(if on {
                    200
                } else {
                    ((x * 3 + y * 5 + i) % 60) as u8
                });
            }
        }
        lab.push(c as u8);
    }
    let (ip, lp) = (dir.join("images.idx"), dir.join("labels.idx"));
    std::fs::write(&ip, img)?;
    std::fs::write(&lp, lab)?;
    Ok(format!("idx:{},{}", ip.display(), lp.display()))
}

/// `$TINYVIT_BIN`, else the workspace's debug `tinyvit` (built here; the host's dependencies
/// are optimised in the dev profile).
fn tinyvit_bin() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("TINYVIT_BIN") {
        let bin = PathBuf::from(bin);
        ensure!(
            bin.is_file(),
            "$TINYVIT_BIN: {} is not a file",
            bin.display()
        );
        return Ok(bin);
    }
    util::step("soak: building `tinyvit`");
    let mut cmd = util::cargo();
    cmd.args(["build", "--quiet", "-p", "tinyvit-host", "--bin", "tinyvit"]);
    setup::torch_env(&mut cmd)?;
    util::run(&mut cmd)?;
    Ok(util::target_dir().join("debug").join("tinyvit"))
}
