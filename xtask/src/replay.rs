//! `cargo xtask replay [--bless]`: bit-exact replay of host vectors on the emulated Cortex-M4F,
//! Cortex-M7 and STM32F405, diffed against the committed expected output, and the layout of
//! every board's ELF.
//!
//! 1. The host writes the vectors (`tests/examples/make_replay.rs`): for the augmentation
//!    known-answer vectors and for each MCU preset with seeded weights, the core's
//!    `vectors::replay` (the function the firmware runs) computes each expected image hash,
//!    logits hash and class, stored in the vector files next to the inputs.
//! 2. The firmware is built with each vector file (and the preset's `.tvb`) embedded and run under
//!    QEMU on `mps2-an386` (M4F) and `mps2-an500` (M7), one ELF for both, and on
//!    `netduinoplus2` (the STM32F405's memory map, its own ELF). It replays every vector, compares
//!    each hash with the host's on the device, prints one line per vector and exits non-zero on
//!    any mismatch.
//! 3. Its output, with the instruction counts and stack depths masked (they change with every
//!    compiler or core change; `cargo xtask bench` reports them), is diffed against
//!    `firmware/expected/<board>-<vectors>.txt`. `--bless` rewrites those files instead.
//! 4. Every ELF built for a board with its own memory map (netduinoplus2, and each vector set for
//!    the real boards nucleo-h743 and feather-f405, which cannot run here) goes through
//!    `firmware::check_layout`: vector table at the flash origin, flash within budget, statics,
//!    arena and stack in the RAM the build chose. A payload too large for a board must be refused
//!    by the build with a sentence saying so, and exactly the pairs in [`DOES_NOT_FIT`] are.
//! 5. Broken model blobs (a flipped byte, a truncated file, a newer format version) must give an
//!    `error: model:` line and exit status 1, never a panic or a hard fault; their output is
//!    diffed against `firmware/expected/corrupt-*.txt`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::firmware::{self, Board, Payload, RunOutput};
use crate::util;

/// The (vector set, board) pairs that do not fit the board: `tiny_vit_mcu_h7`'s 1.3 MB of
/// weights exceed the STM32F405's 1 MB of flash, and the augmentation known answers (views up to
/// 224x224 RGB) need 257 KB of view and scratch buffers, twice its 128 KB of SRAM. (On the
/// STM32H743 those 257 KB exceed the 128 KB DTCM, so that build puts them in AXI SRAM.)
/// `tiny_vit_mcu_h7_q8`'s 1.2 MB of int8 data exceed it too.
pub const DOES_NOT_FIT: [(&str, Board); 6] = [
    ("aug-golden", Board::Netduinoplus2),
    ("aug-golden", Board::FeatherF405),
    ("tiny_vit_mcu_h7", Board::Netduinoplus2),
    ("tiny_vit_mcu_h7", Board::FeatherF405),
    ("tiny_vit_mcu_h7_q8-int8", Board::Netduinoplus2),
    ("tiny_vit_mcu_h7_q8-int8", Board::FeatherF405),
];

/// The int8 presets' budgets, `(case, flash for code and model, RAM for statics and stack)`:
/// the ELF of the firmware with the model alone (no replay vectors) must fit them (checked on
/// the emulated build, whose engine code is the boards').
pub const INT8_BUDGETS: [(&str, u64, u64); 2] = [
    ("tiny_vit_mcu_m4_q8-int8", 800 * 1024, 192 * 1024),
    ("tiny_vit_mcu_h7_q8-int8", 1536 * 1024, 384 * 1024),
];

/// Whether a vector set is an int8 model's (named `<preset>-int8` by the vector maker).
fn is_int8(case: &Case) -> bool {
    case.name.ends_with("-int8")
}

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
    let mut layouts = Vec::new();
    for case in &cases {
        let elf = firmware::build(Board::QemuM4, &case.payload)?;
        if let Some(&(_, flash, ram)) = INT8_BUDGETS.iter().find(|b| b.0 == case.name) {
            // What a device carries: the firmware and the model, no replay vectors.
            let deployed = Payload {
                model: case.payload.model.clone(),
                vectors: None,
            };
            let size = firmware::elf_size(&firmware::build(Board::QemuM4, &deployed)?)?;
            let need_ram = size.ram() + firmware::STACK_RESERVE;
            let line = format!(
                "{}: flash {} of {flash} B, RAM {need_ram} (statics and a {} B stack) of {ram} B",
                case.name,
                size.flash(),
                firmware::STACK_RESERVE
            );
            if size.flash() > flash || need_ram > ram {
                failures.push(format!("{line}: over the int8 preset's budget"));
            }
            layouts.push(format!("{line}: within the int8 preset's budget"));
        }
        for board in Board::MPS2 {
            let out = firmware::run_qemu(board, &elf)?;
            check_run(board, case, &out, bless, &mut failures);
        }
        // The int8 sets run on the two MPS2 machines only (an inference is 10^7 to 10^8
        // emulated instructions); on the STM32F405 map they are built and laid out below.
        if is_int8(case) {
            continue;
        }
        let board = Board::Netduinoplus2;
        if let Some(elf) = build_checked(board, case, &mut layouts, &mut failures) {
            let out = firmware::run_qemu(board, &elf)?;
            check_run(board, case, &out, bless, &mut failures);
        }
    }
    // The real boards cannot run here: each vector set must build and lay out as its board
    // needs (or be refused, as listed in DOES_NOT_FIT).
    for case in &cases {
        let boards = if is_int8(case) {
            &[Board::Netduinoplus2, Board::NucleoH743, Board::FeatherF405][..]
        } else {
            &Board::REAL[..]
        };
        for &board in boards {
            build_checked(board, case, &mut layouts, &mut failures);
        }
    }
    eprintln!("\nboard ELFs:\n  {}", layouts.join("\n  "));
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
        "replay: {} vector sets on {} emulated boards ({} pairs too large for the board, \
         refused as expected), board ELF layouts and the broken-blob checks {}",
        cases.len(),
        Board::QEMU.len(),
        DOES_NOT_FIT.len(),
        if bless { "blessed" } else { "match" }
    );
    Ok(())
}

/// Diffs one emulated run with its expected file.
fn check_run(board: Board, case: &Case, out: &RunOutput, bless: bool, failures: &mut Vec<String>) {
    let name = format!("{}-{}", board.name(), case.name);
    if out.code != Some(0) {
        print!("{}", out.stdout);
        failures.push(format!("{name}: the firmware exited with {:?}", out.code));
    } else if let Err(e) = check(&name, out, bless) {
        failures.push(format!("{e:#}"));
    }
}

/// Builds `case` for a board with its own memory map and checks the ELF's layout; a case in
/// [`DOES_NOT_FIT`] must instead be refused with the build's does-not-fit sentence. Returns the
/// ELF when there is one to run.
fn build_checked(
    board: Board,
    case: &Case,
    layouts: &mut Vec<String>,
    failures: &mut Vec<String>,
) -> Option<PathBuf> {
    let too_big = DOES_NOT_FIT.contains(&(case.name.as_str(), board));
    match (firmware::build(board, &case.payload), too_big) {
        (Ok(elf), false) => {
            match firmware::check_layout(board, &elf, case.payload.model.is_some()) {
                Ok(l) => layouts.push(format!("{}: {}", case.name, l.summary())),
                Err(e) => failures.push(format!("{}: {e:#}", case.name)),
            }
            Some(elf)
        }
        (Ok(_), true) => {
            failures.push(format!(
                "{} now fits the {}: take it off replay::DOES_NOT_FIT and the README",
                case.name,
                board.name()
            ));
            None
        }
        (Err(e), true) if format!("{e:#}").contains(firmware::DOES_NOT_FIT) => {
            layouts.push(format!("{}: refused as expected: {e:#}", case.name));
            None
        }
        (Err(e), _) => {
            failures.push(format!(
                "{} does not build for the {}: {e:#}",
                case.name,
                board.name()
            ));
            None
        }
    }
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
    // tinyvit-tests links the core only: no libtorch needed.
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

/// Broken copies of the first f32 preset's model and of the first int8 model: one byte flipped
/// in the middle, cut in half, and marked with the next format version.
fn corrupt_cases(cases: &[Case]) -> Result<Vec<Case>> {
    let Some(case) = cases
        .iter()
        .find(|c| c.payload.model.is_some() && !is_int8(c))
    else {
        bail!("no vector set has an f32 model, so the broken-blob checks cannot run");
    };
    let Some(q8) = cases
        .iter()
        .find(|c| c.payload.model.is_some() && is_int8(c))
    else {
        bail!("no vector set has an int8 model, so the broken int8 blob checks cannot run");
    };
    let mut out = corrupt_copies(case, "")?;
    out.extend(corrupt_copies(q8, "int8-")?);
    Ok(out)
}

/// The three broken copies of `case`'s model, named `<prefix>flipped` and so on.
fn corrupt_copies(case: &Case, prefix: &str) -> Result<Vec<Case>> {
    let model = case.payload.model.as_ref().context("a case with a model")?;
    let bytes = std::fs::read(model).with_context(|| format!("reading {}", model.display()))?;
    let mut flipped = bytes.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x40;
    let truncated = bytes[..bytes.len() / 2].to_vec();
    // The format version (u32 after the 8-byte magic) of a future file: past the newest the
    // core knows (int8::file::VERSION).
    let mut newer = bytes.clone();
    newer[8..12].copy_from_slice(&(tinyvit_core::int8::file::VERSION + 1).to_le_bytes());
    let mut out = Vec::new();
    for (name, data) in [
        ("flipped", flipped),
        ("truncated", truncated),
        ("version", newer),
    ] {
        let name = format!("{prefix}{name}");
        let path = vectors_dir().join(format!("{name}.tvb"));
        std::fs::write(&path, data)?;
        out.push(Case {
            name,
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
    /// The firmware's int8 matrix kernel benchmark (`kernel:` lines): per kernel form
    /// (`pair`, `single`, and `pair-kernel`: the pair's blocks without its lane preparation)
    /// its MACs and its instructions on M4 and M7.
    kernel: Vec<(String, u64, [Option<u64>; 2])>,
}

/// The value of `key=` in a firmware line.
fn field(line: &str, key: &str) -> Option<u64> {
    line.split(' ')
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

/// Adds a firmware `kernel: int8 FORM macs=N instr=N [kernel_instr=N ...]` line of board `k`
/// (0: M4, 1: M7) to `kernels`: the form's total, and `FORM-kernel` when the line times the
/// blocks apart from their preparation. Other lines are left alone.
fn kernel_line(line: &str, k: usize, kernels: &mut Vec<(String, u64, [Option<u64>; 2])>) {
    let Some(rest) = line.strip_prefix("kernel: int8 ") else {
        return;
    };
    let form = rest.split(' ').next().unwrap_or("");
    let macs = field(line, "macs");
    for (name, key) in [
        (form.to_string(), "instr"),
        (format!("{form}-kernel"), "kernel_instr"),
    ] {
        let (Some(macs), Some(instr)) = (macs, field(line, key)) else {
            continue;
        };
        match kernels.iter_mut().find(|e| e.0 == name) {
            Some(e) => e.2[k] = Some(instr),
            None => {
                let mut i = [None; 2];
                i[k] = Some(instr);
                kernels.push((name, macs, i));
            }
        }
    }
}

/// Builds a model + vectors, runs it on both MPS2 machines, and collects its figures.
fn measure(name: &str, payload: &Payload, macs: u64) -> Result<Cost> {
    let elf = firmware::build(Board::QemuM4, payload)?;
    let mut cost = Cost {
        name: name.to_string(),
        size: firmware::elf_size(&elf)?,
        macs,
        ..Cost::default()
    };
    for (k, board) in Board::MPS2.into_iter().enumerate() {
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
            kernel_line(line, k, &mut cost.kernel);
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
/// matmul kernel alone), and the size table for the README. `--int8` measures the int8 models
/// (and the int8 matmul probe) only.
pub fn bench(args: &[String]) -> Result<()> {
    let mut int8_only = false;
    for a in args {
        match a.as_str() {
            "--int8" => int8_only = true,
            other => {
                bail!("unknown argument `{other}`\nusage: cargo xtask firmware bench [--int8]")
            }
        }
    }
    let cases = make_vectors()?;
    let dir = vectors_dir();
    let read = |name: &str| {
        let p = dir.join(name);
        std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
    };
    let macs_text = read("macs.txt")?;
    let mut costs = Vec::new();
    for case in cases
        .iter()
        .filter(|c| c.payload.model.is_some() && (!int8_only || is_int8(c)))
    {
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
    // The matmul probes (f32 and int8): the same network with a wider head, run on the same
    // image.
    let probe_text = read("probe.txt")?;
    let mut probes = Vec::new();
    for line in probe_text.lines().filter(|l| !l.trim().is_empty()) {
        let p: Vec<&str> = line.split_whitespace().collect();
        let [name, vectors, model, base, extra] = p.as_slice() else {
            bail!("probe.txt: expected `name vectors model base extra_macs`, got `{line}`");
        };
        if int8_only && !base.ends_with("-int8") {
            continue;
        }
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
            .with_context(|| format!("probe base {base} was not measured"))?
            .clone();
        probes.push((probe, base, extra));
    }
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
    println!(
        "\nestimated time per inference on the real boards (an estimate until measured on a \
         board: the QEMU instruction count above at one instruction per cycle of the configured \
         core clock; the firmware's `latency:` line gives the DWT-measured figure):\n"
    );
    let plans = [
        (Board::NucleoH743, &firmware::clocks::H743_REV_V, 1),
        (Board::NucleoH743, &firmware::clocks::H743_REV_Y, 1),
        (Board::FeatherF405, &firmware::clocks::F405, 0),
    ];
    println!("| preset | board | core clock | instructions | estimated ms |");
    println!("|---|---|---:|---:|---:|");
    for c in &costs {
        for (board, plan, k) in plans {
            let mhz = plan.sys_hz / 1_000_000;
            if DOES_NOT_FIT.contains(&(c.name.as_str(), board)) {
                println!(
                    "| {} | {} | {mhz} MHz | - | does not fit |",
                    c.name,
                    board.name()
                );
                continue;
            }
            let Some(i) = c.instr[k] else { continue };
            println!(
                "| {} | {} | {mhz} MHz | {i} | {:.1} |",
                c.name,
                board.name(),
                plan.nanos(i) as f64 / 1e6
            );
        }
    }
    println!();
    // The firmware's kernel benchmark: the same kernels and matrix in every int8 build, so the
    // first preset that printed them speaks for all.
    if let Some(c) = costs.iter().find(|c| !c.kernel.is_empty()) {
        for (form, macs, instr) in &c.kernel {
            let what = match form.as_str() {
                "pair" => {
                    "two tokens a pass (int8::ops::mat::acc_pair_block: 2 rows x 2 tokens a \
                     pass, up to 64 rows a call), with the lane preparation of the two vectors"
                }
                "pair-kernel" => "two tokens a pass, the blocks alone on prepared lanes",
                _ => "one token (int8::ops::mat::acc: 4 rows)",
            };
            for (k, board) in ["Cortex-M4F", "Cortex-M7"].into_iter().enumerate() {
                if let Some(i) = instr[k] {
                    println!(
                        "int8 matmul kernel alone, {what}, 64 x 256 weights read from flash, \
                         on {board}: {i} instructions for {macs} MACs -> {:.3} instructions per MAC",
                        i as f64 / (*macs).max(1) as f64
                    );
                }
            }
        }
    }
    for (probe, base, extra) in &probes {
        let kernel = if base.name.ends_with("-int8") {
            "int8::ops::mat, SXTB16/SMLAD on sign-flipped weights"
        } else {
            "layers::linear"
        };
        for (k, board) in ["Cortex-M4F", "Cortex-M7"].into_iter().enumerate() {
            let (Some(a), Some(b)) = (probe.instr[k], base.instr[k]) else {
                continue;
            };
            println!(
                "{} matmul kernel ({kernel}, {} head with {extra} extra MACs, same image) on \
                 {board}: {} instructions -> {:.3} instructions per MAC",
                if kernel.starts_with("int8") {
                    "int8"
                } else {
                    "f32"
                },
                base.name,
                a.saturating_sub(b),
                a.saturating_sub(b) as f64 / (*extra).max(1) as f64
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod kernel_line_tests {
    #[test]
    fn kernel_lines_of_both_boards_fill_one_entry_per_form() {
        let mut k = Vec::new();
        let m4 =
            "kernel: int8 pair macs=32768 instr=33200 kernel_instr=31080 prepare_instr=2120 sum=-5";
        let m7 =
            "kernel: int8 pair macs=32768 instr=33160 kernel_instr=31080 prepare_instr=2080 sum=-5";
        super::kernel_line(m4, 0, &mut k);
        super::kernel_line(
            "kernel: int8 single macs=16384 instr=20360 sum=1",
            0,
            &mut k,
        );
        super::kernel_line(m7, 1, &mut k);
        super::kernel_line("kernel: self-check ok (fan-ins 4 to 64 and 256)", 1, &mut k);
        super::kernel_line("cost: zero input class=8 instr=5 stack=3", 1, &mut k);
        assert_eq!(
            k,
            vec![
                ("pair".to_string(), 32768, [Some(33200), Some(33160)]),
                ("pair-kernel".to_string(), 32768, [Some(31080), Some(31080)]),
                ("single".to_string(), 16384, [Some(20360), None]),
            ]
        );
    }
}
