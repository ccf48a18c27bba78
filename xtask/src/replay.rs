//! `cargo xtask replay [--bless]`: bit-exact replay of host vectors on the emulated Cortex-M4F and
//! Cortex-M7, diffed against the committed expected output.
//!
//! 1. The host writes the vectors (`tests/examples/make_replay.rs`): for the augmentation
//!    known-answer vectors and for each MCU preset with seeded weights, source images and seeds
//!    go through the core's augmentation codec and the core's `exact` engine; the resulting image
//!    hashes and logits hashes are stored in the vector files next to the inputs.
//! 2. The firmware is built with each vector file (and the preset's `.tvb`) embedded and run under
//!    QEMU on `mps2-an386` (M4F) and `mps2-an500` (M7). It replays every vector, compares each
//!    hash with the host's on the device, prints one line per vector and exits non-zero on any
//!    mismatch.
//! 3. Its output, with the instruction counts and stack depths masked (they change with every
//!    compiler or core change; `cargo xtask bench` reports them), is diffed against
//!    `firmware/expected/<board>-<vectors>.txt`. `--bless` rewrites those files instead.
//! 4. Each preset is also built (not run) for the Nucleo-H743ZI, whose memory map is the real
//!    chip's: it must link.
//! 5. Broken model blobs (a flipped byte, a truncated file, a newer format version) must give an `error: model:` line and
//!    exit status 1, never a panic or a hard fault; their output is diffed against
//!    `firmware/expected/corrupt-*.txt`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::firmware::{self, Board, Payload, RunOutput};
use crate::{setup, util};

/// One firmware configuration to replay: a vector file and, for inference, its model.
#[derive(Clone, Debug)]
pub struct Case {
    /// Short name (`aug`, or the preset name), used for the expected file.
    pub name: String,
    pub payload: Payload,
}

/// The folder the host vectors are written to.
pub fn vectors_dir() -> PathBuf {
    firmware::target_dir().join("replay")
}

/// The folder of committed expected outputs.
fn expected_dir() -> PathBuf {
    firmware::dir().join("expected")
}

pub fn run(args: &[String]) -> Result<()> {
    let mut bless = false;
    for a in args {
        match a.as_str() {
            "--bless" => bless = true,
            other => bail!("unknown argument `{other}`\nusage: cargo xtask replay [--bless]"),
        }
    }
    let cases = make_vectors()?;
    let mut failures = Vec::new();
    for case in &cases {
        let elf = firmware::build(Board::QemuM4, &case.payload)?;
        for board in Board::QEMU {
            let out = firmware::run_qemu(board, &elf)?;
            let name = format!("{}-{}", board.name(), case.name);
            if out.code != Some(0) {
                print!("{}", out.stdout);
                failures.push(format!("{name}: the firmware exited with {:?}", out.code));
                continue;
            }
            if let Err(e) = check(&name, &out, bless) {
                failures.push(format!("{e:#}"));
            }
        }
    }
    // The real board: each preset with its vectors must link into the STM32H743's 2 MB flash
    // and 512 KB AXI SRAM (it cannot run here; `cargo xtask flash` runs it on a board).
    for case in cases.iter().filter(|c| c.payload.model.is_some()) {
        if let Err(e) = firmware::build(Board::NucleoH743, &case.payload) {
            failures.push(format!(
                "{} does not build for the nucleo-h743: {e:#}",
                case.name
            ));
        }
    }
    for case in corrupt_cases(&cases)? {
        let elf = firmware::build(Board::QemuM4, &case.payload)?;
        let out = firmware::run_qemu(Board::QemuM4, &elf)?;
        let name = format!("corrupt-{}", case.name);
        if out.code != Some(1) || !out.stdout.lines().any(|l| l.starts_with("error: model: ")) {
            print!("{}", out.stdout);
            failures.push(format!(
                "{name}: a broken model must print `error: model: ...` and exit 1 (not panic or \
                 fault), got exit {:?}",
                out.code
            ));
            continue;
        }
        if let Err(e) = check(&name, &out, bless) {
            failures.push(format!("{e:#}"));
        }
    }
    if !failures.is_empty() {
        bail!("replay failed:\n  {}", failures.join("\n  "));
    }
    eprintln!(
        "replay: {} vector sets on {} boards and the broken-blob checks {}",
        cases.len(),
        Board::QEMU.len(),
        if bless { "blessed" } else { "match" }
    );
    Ok(())
}

/// Runs the host generator and returns the cases it wrote (`aug`, then one per MCU preset).
pub fn make_vectors() -> Result<Vec<Case>> {
    let dir = vectors_dir();
    util::step("host: replay vectors (core codec + exact engine)");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut cmd = util::cargo();
    cmd.args([
        "run",
        "--quiet",
        "--release",
        "-p",
        "tinyvit-tests",
        "--example",
        "make_replay",
        "--",
        "--out",
    ])
    .arg(&dir);
    setup::torch_env(&mut cmd)?;
    util::run(&mut cmd)?;
    let list = dir.join("cases.txt");
    let text =
        std::fs::read_to_string(&list).with_context(|| format!("reading {}", list.display()))?;
    let mut cases = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut f = line.split_whitespace();
        let (Some(name), Some(vectors)) = (f.next(), f.next()) else {
            bail!("{}: bad line `{line}`", list.display());
        };
        cases.push(Case {
            name: name.to_string(),
            payload: Payload {
                vectors: Some(dir.join(vectors)),
                model: f.next().map(|m| dir.join(m)),
            },
        });
    }
    if cases.is_empty() {
        bail!("{} lists no vector sets", list.display());
    }
    Ok(cases)
}

/// Broken copies of the first preset's model: one byte flipped in the middle, cut in half, and
/// marked with the next format version.
fn corrupt_cases(cases: &[Case]) -> Result<Vec<Case>> {
    let Some(case) = cases.iter().find(|c| c.payload.model.is_some()) else {
        bail!("no vector set has a model, so the broken-blob checks cannot run");
    };
    let model = case.payload.model.as_ref().expect("found with a model");
    let bytes = std::fs::read(model).with_context(|| format!("reading {}", model.display()))?;
    let mut flipped = bytes.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x40;
    let truncated = bytes[..bytes.len() / 2].to_vec();
    // The format version (u32 after the 8-byte magic) of a future file.
    let mut newer = bytes.clone();
    newer[8] = newer[8].wrapping_add(1);
    let mut out = Vec::new();
    for (name, data) in [
        ("flipped", flipped),
        ("truncated", truncated),
        ("version", newer),
    ] {
        let path = vectors_dir().join(format!("{name}.tvb"));
        std::fs::write(&path, data)?;
        out.push(Case {
            name: name.to_string(),
            payload: Payload {
                model: Some(path),
                vectors: case.payload.vectors.clone(),
            },
        });
    }
    Ok(out)
}

/// Replaces the figures that change with every build (instruction counts, stack depths) by `*`.
pub fn mask(stdout: &str) -> String {
    let mut out = String::new();
    for line in stdout.lines() {
        let words: Vec<String> = line
            .split(' ')
            .map(|w| match w.split_once('=') {
                Some((k, _))
                    if MASKED
                        .iter()
                        .any(|m| k == *m || k.ends_with(&format!("_{m}"))) =>
                {
                    format!("{k}=*")
                }
                _ => w.to_string(),
            })
            .collect();
        out.push_str(&words.join(" "));
        out.push('\n');
    }
    out
}

/// Keys whose values depend on the build rather than on the computation.
const MASKED: &[&str] = &["instr", "cycles", "hwm", "stack"];

fn check(name: &str, out: &RunOutput, bless: bool) -> Result<()> {
    let path = expected_dir().join(format!("{name}.txt"));
    let got = mask(&out.stdout);
    if bless {
        std::fs::create_dir_all(expected_dir())?;
        std::fs::write(&path, &got)?;
        eprintln!("blessed {}", path.display());
        return Ok(());
    }
    let want = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{} is missing: run `cargo xtask replay --bless` once",
            path.display()
        )
    })?;
    if want != got {
        eprintln!("--- {} (expected)\n+++ {name} (this run)", path.display());
        print_diff(&want, &got);
        bail!(
            "{name}: output differs from {} (the device still compared itself with the host: \
             if every line ends in `ok` and the core changed on purpose, rerun with \
             `cargo xtask replay --bless` and commit the new expected files)",
            rel(&path)
        );
    }
    eprintln!("{name}: matches {}", rel(&path));
    Ok(())
}

fn rel(p: &Path) -> String {
    p.strip_prefix(util::root())
        .unwrap_or(p)
        .display()
        .to_string()
}

/// A plain line diff: lines only in one side, in order (enough for short outputs).
fn print_diff(want: &str, got: &str) {
    let w: Vec<&str> = want.lines().collect();
    let g: Vec<&str> = got.lines().collect();
    for i in 0..w.len().max(g.len()) {
        match (w.get(i), g.get(i)) {
            (Some(a), Some(b)) if a == b => {}
            (a, b) => {
                if let Some(a) = a {
                    eprintln!("-{a}");
                }
                if let Some(b) = b {
                    eprintln!("+{b}");
                }
            }
        }
    }
}

/// One preset's figures on the device.
#[derive(Clone, Debug, Default)]
struct Cost {
    name: String,
    size: firmware::Size,
    /// Stack depth of the engine alone (the firmware's `cost:` line), bytes.
    stack: u64,
    /// Instructions of one inference (the first `eval` vector) on M4 and M7.
    instr: [Option<u64>; 2],
    macs: u64,
}

/// The value of `key=` in a firmware line.
fn field(line: &str, key: &str) -> Option<u64> {
    line.split(' ')
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

/// Builds a model + vectors, runs it on both QEMU boards, and collects its figures.
fn measure(name: &str, payload: &Payload, macs: u64) -> Result<Cost> {
    let elf = firmware::build(Board::QemuM4, payload)?;
    let mut cost = Cost {
        name: name.to_string(),
        size: firmware::elf_size(&elf)?,
        macs,
        ..Cost::default()
    };
    for (k, board) in Board::QEMU.into_iter().enumerate() {
        let out = firmware::run_qemu(board, &elf)?;
        if out.code != Some(0) {
            print!("{}", out.stdout);
            bail!("{name} failed on {}", board.name());
        }
        for line in out.stdout.lines() {
            if line.starts_with("cost: ") {
                cost.stack = cost.stack.max(field(line, "stack").unwrap_or(0));
            }
            if line.starts_with("eval ") && cost.instr[k].is_none() {
                cost.instr[k] = field(line, "instr");
            }
        }
        if cost.stack == 0 {
            bail!("{name} printed no `cost:` line on {}", board.name());
        }
        if cost.instr[k].is_none() {
            bail!("{name} printed no `eval` line on {}", board.name());
        }
    }
    Ok(cost)
}

/// `cargo xtask bench`'s device part: instructions per inference of every MCU preset on the
/// emulated M4 and M7, instructions per multiply-accumulate (whole network, and the core's
/// matmul kernel alone), and the size table for the README.
pub fn bench() -> Result<()> {
    let cases = make_vectors()?;
    let dir = vectors_dir();
    let read = |name: &str| {
        let p = dir.join(name);
        std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
    };
    let macs_text = read("macs.txt")?;
    let mut costs = Vec::new();
    for case in cases.iter().filter(|c| c.payload.model.is_some()) {
        let macs = macs_text
            .lines()
            .find_map(|l| {
                l.strip_prefix(&format!("{} ", case.name))?
                    .trim()
                    .parse()
                    .ok()
            })
            .with_context(|| format!("{} has no MAC count", case.name))?;
        costs.push(measure(&case.name, &case.payload, macs)?);
    }
    // The matmul probe: the same network with a wider head, run on the same image.
    let probe_text = read("probe.txt")?;
    let p: Vec<&str> = probe_text.split_whitespace().collect();
    let [name, vectors, model, base, extra] = p.as_slice() else {
        bail!("probe.txt: expected `name vectors model base extra_macs`");
    };
    let extra: u64 = extra.parse().context("probe.txt: extra_macs")?;
    let probe = measure(
        name,
        &Payload {
            vectors: Some(dir.join(vectors)),
            model: Some(dir.join(model)),
        },
        0,
    )?;
    let base = costs
        .iter()
        .find(|c| c.name == *base)
        .with_context(|| format!("probe base {base} was not measured"))?;

    println!("\nfirmware on QEMU (instructions counted exactly with -icount shift=0; one ELF per");
    println!("preset runs on both boards; sizes in bytes):\n");
    println!(
        "| preset | code (text) | rodata (model, vectors, constants) | flash | static RAM (arena, buffers) \
         | stack high-water (inference) | RAM total | instr/inference M4 | instr/inference M7 | \
         MACs/inference | instr/MAC M7 |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let show = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    for c in &costs {
        let per_mac = c.instr[1].map_or("-".to_string(), |i| {
            format!("{:.2}", i as f64 / c.macs.max(1) as f64)
        });
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            c.name,
            c.size.text,
            c.size.rodata,
            c.size.flash(),
            c.size.ram(),
            c.stack,
            c.size.ram() + c.stack,
            show(c.instr[0]),
            show(c.instr[1]),
            c.macs,
            per_mac
        );
    }
    println!();
    for (k, board) in ["Cortex-M4F", "Cortex-M7"].into_iter().enumerate() {
        let (Some(a), Some(b)) = (probe.instr[k], base.instr[k]) else {
            continue;
        };
        println!(
            "core matmul kernel (layers::linear, {} head with {extra} extra MACs, same image) on \
             {board}: {} instructions -> {:.3} instructions per MAC (the reference probe's naive \
             loop: about 6)",
            base.name,
            a.saturating_sub(b),
            a.saturating_sub(b) as f64 / extra.max(1) as f64
        );
    }
    Ok(())
}
