//! `cargo xtask firmware build|run|size|eval`, `cargo xtask flash`: the Cortex-M firmware.
//!
//! The firmware (`firmware/`, its own workspace) embeds at build time a model `.tvb`
//! (`TINYVIT_MODEL`) and a replay vector file (`TINYVIT_VECTORS`, see `core/src/vectors.rs`);
//! both paths are handed to its build script as environment variables. Boards ([`Board::ALL`]):
//!
//! | board           | feature         | runs on                                                  |
//! |-----------------|-----------------|----------------------------------------------------------|
//! | `qemu-m4`       | `qemu`          | `qemu-system-arm -M mps2-an386 -cpu cortex-m4`           |
//! | `qemu-m7`       | `qemu`          | `qemu-system-arm -M mps2-an500 -cpu cortex-m7`           |
//! | `netduinoplus2` | `netduinoplus2` | `qemu-system-arm -M netduinoplus2` (STM32F405 memory map) |
//! | `nucleo-h743`   | `nucleo-h743`   | an STM32H743ZI Nucleo board through `probe-rs`           |
//! | `feather-f405`  | `feather-f405`  | an Adafruit Feather STM32F405 through `probe-rs`         |
//!
//! The two MPS2 boards share one memory map and so one ELF: M4 and M7 run the very same code.
//! QEMU runs with `-icount shift=0`, which makes the firmware's SysTick count instructions.
//! This module builds, runs and measures firmware; `replay` (the host-vs-device check) uses it
//! and it uses nothing of `replay`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tinyvit_core::config::{mcu_budget, McuBudget};

use crate::util;

/// The real boards' clock plans, the firmware's own file (plain Rust): `bench` turns instruction
/// counts into time with them, and the tests below check their PLL arithmetic on the host.
#[path = "../../firmware/src/clocks.rs"]
pub mod clocks;

/// The firmware's compilation target.
pub const TARGET: &str = "thumbv7em-none-eabihf";
/// Longest a QEMU run may take before it is killed (seconds).
const QEMU_TIMEOUT_S: u64 = 900;
/// Bytes of RAM the firmware's build script keeps for the stack when it picks the RAM
/// (`firmware/build.rs`, `STACK_RESERVE`).
pub const STACK_RESERVE: u64 = 16 * 1024;

/// A board the firmware can be built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Board {
    QemuM4,
    QemuM7,
    Netduinoplus2,
    NucleoH743,
    FeatherF405,
}

/// One memory of a board: name, origin, bytes.
pub type Region = (&'static str, u32, u64);

impl Board {
    pub const ALL: [Board; 5] = [
        Board::QemuM4,
        Board::QemuM7,
        Board::Netduinoplus2,
        Board::NucleoH743,
        Board::FeatherF405,
    ];
    /// The emulated boards, which CI runs.
    pub const QEMU: [Board; 3] = [Board::QemuM4, Board::QemuM7, Board::Netduinoplus2];
    /// The two MPS2 machines, which run one ELF.
    pub const MPS2: [Board; 2] = [Board::QemuM4, Board::QemuM7];
    /// The real boards, which `flash` runs.
    pub const REAL: [Board; 2] = [Board::NucleoH743, Board::FeatherF405];

    pub fn name(self) -> &'static str {
        match self {
            Board::QemuM4 => "qemu-m4",
            Board::QemuM7 => "qemu-m7",
            Board::Netduinoplus2 => "netduinoplus2",
            Board::NucleoH743 => "nucleo-h743",
            Board::FeatherF405 => "feather-f405",
        }
    }

    /// The firmware's cargo feature (one ELF per feature).
    pub fn feature(self) -> &'static str {
        match self {
            Board::QemuM4 | Board::QemuM7 => "qemu",
            Board::Netduinoplus2 => "netduinoplus2",
            Board::NucleoH743 => "nucleo-h743",
            Board::FeatherF405 => "feather-f405",
        }
    }

    /// One line for `--board` listings.
    pub fn describe(self) -> &'static str {
        match self {
            Board::QemuM4 => "QEMU mps2-an386, Cortex-M4F, 25 MHz (emulated)",
            Board::QemuM7 => "QEMU mps2-an500, Cortex-M7, 25 MHz (emulated)",
            Board::Netduinoplus2 => {
                "QEMU netduinoplus2, STM32F405 Cortex-M4F memory map, 1 MB flash, 128 KB SRAM \
                 (emulated)"
            }
            Board::NucleoH743 => {
                "Nucleo-H743ZI(2), STM32H743 Cortex-M7 at 480 MHz (rev V) or 400 MHz, 2 MB \
                 flash, DTCM or AXI SRAM (probe-rs)"
            }
            Board::FeatherF405 => {
                "Adafruit Feather STM32F405 Express, Cortex-M4F at 168 MHz, 1 MB flash, \
                 128 KB SRAM (probe-rs)"
            }
        }
    }

    /// QEMU machine and CPU, for the emulated boards.
    fn qemu(self) -> Option<(&'static str, &'static str)> {
        match self {
            Board::QemuM4 => Some(("mps2-an386", "cortex-m4")),
            Board::QemuM7 => Some(("mps2-an500", "cortex-m7")),
            Board::Netduinoplus2 => Some(("netduinoplus2", "cortex-m4")),
            Board::NucleoH743 | Board::FeatherF405 => None,
        }
    }

    /// The chip name probe-rs knows the real boards by.
    pub fn probe_chip(self) -> Option<&'static str> {
        match self {
            Board::NucleoH743 => Some("STM32H743ZITx"),
            Board::FeatherF405 => Some("STM32F405RGTx"),
            _ => None,
        }
    }

    /// How a probe reaches the board, for the no-probe sentence.
    fn probe_hint(self) -> &'static str {
        match self {
            Board::NucleoH743 => "the Nucleo-H743ZI's on-board ST-LINK (its USB port)",
            Board::FeatherF405 => {
                "an SWD probe (ST-LINK, J-Link or a CMSIS-DAP adapter) to the Feather's SWD \
                 pads, and the probe's USB to this machine"
            }
            _ => "a debug probe",
        }
    }

    /// The flash: where the vector table must sit, and the budget.
    pub fn flash(self) -> Region {
        match self {
            Board::QemuM4 | Board::QemuM7 => ("FLASH", 0x0000_0000, 4 << 20),
            Board::NucleoH743 => ("FLASH", 0x0800_0000, 2 << 20),
            Board::Netduinoplus2 | Board::FeatherF405 => ("FLASH", 0x0800_0000, 1 << 20),
        }
    }

    /// The RAMs that may hold the statics and the stack, fastest first: the build takes the
    /// first in which they fit (the same rule as `firmware/build.rs`, checked independently by
    /// [`check_layout`]).
    pub fn rams(self) -> &'static [Region] {
        match self {
            Board::QemuM4 | Board::QemuM7 => &[("RAM", 0x2000_0000, 4 << 20)],
            Board::NucleoH743 => &[
                ("DTCM", 0x2000_0000, 128 << 10),
                ("AXISRAM", 0x2400_0000, 512 << 10),
            ],
            Board::Netduinoplus2 | Board::FeatherF405 => &[("SRAM", 0x2000_0000, 128 << 10)],
        }
    }

    /// The microcontroller preset class the board is sized for: its budget
    /// ([`tinyvit_core::config::mcu_budget`]) is what `firmware build --board` holds a model to.
    pub fn budget_class(self) -> &'static str {
        match self {
            Board::QemuM4 | Board::Netduinoplus2 | Board::FeatherF405 => "m4",
            Board::QemuM7 | Board::NucleoH743 => "h7",
        }
    }

    pub fn parse(s: &str) -> Result<Board> {
        Board::ALL
            .into_iter()
            .find(|b| b.name() == s)
            .with_context(|| format!("unknown board `{s}`\n{}", board_list()))
    }
}

/// The boards, one a line.
pub fn board_list() -> String {
    let mut s = String::from("boards:\n");
    for b in Board::ALL {
        s.push_str(&format!("  {:<14} {}\n", b.name(), b.describe()));
    }
    s
}

/// What to embed in one firmware build.
#[derive(Clone, Debug, Default)]
pub struct Payload {
    /// The model `.tvb`; none builds the firmware without a model (self-checks and augmentation
    /// replay only).
    pub model: Option<PathBuf>,
    /// The replay vector file; none embeds no vectors.
    pub vectors: Option<PathBuf>,
}

/// The output of one QEMU run.
#[derive(Debug)]
pub struct RunOutput {
    /// Everything the firmware printed.
    pub stdout: String,
    /// QEMU's exit status (the firmware's semihosting exit).
    pub code: Option<i32>,
}

pub const USAGE: &str = "\
usage: cargo xtask firmware build|run|size [--board BOARD] [--mcu m4|h7] [--model FILE.tvb] [--vectors FILE.vec]
       cargo xtask firmware eval --model FILE.tvb --data idx:IMAGES[,LABELS] [--count N]
       cargo xtask firmware bench [--int8]   (the device part of `cargo xtask bench`; --int8:
                                         the int8 models and probe only)
       cargo xtask flash --board nucleo-h743|feather-f405 [--mcu m4|h7] [--model FILE.tvb] [--vectors FILE.vec]
       --board with no name lists the boards
       a --model is held to a budget before the build: the --mcu preset's, else the board's
       class (m4: qemu-m4, netduinoplus2, feather-f405; h7: qemu-m7, nucleo-h743); over it is
       an error with --board or --mcu given, a warning for the default board";

struct Args {
    board: Board,
    /// Whether `--board` was given (the default board's budget only warns).
    board_given: bool,
    /// `--mcu PRESET`: the budget to hold the model to instead of the board's class.
    mcu: Option<String>,
    payload: Payload,
}

/// Parsed arguments, or `None` when the user asked for the board list or the usage (printed).
fn parse_args(args: &[String], default_board: Board) -> Result<Option<Args>> {
    let mut board = default_board;
    let (mut board_given, mut mcu) = (false, None);
    let mut payload = Payload::default();
    let mut it = args.iter().peekable();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}\n\n{}", board_list());
                return Ok(None);
            }
            "--board" if it.peek().is_none_or(|v| v.starts_with('-')) => {
                print!("{}", board_list());
                return Ok(None);
            }
            "--board" | "--model" | "--vectors" | "--mcu" => {
                let v = it
                    .next()
                    .with_context(|| format!("{a} needs a value\n{USAGE}"))?;
                match a.as_str() {
                    "--board" => {
                        board = Board::parse(v)?;
                        board_given = true;
                    }
                    "--mcu" => {
                        mcu_budget(v).with_context(|| {
                            format!("--mcu {v}: not a microcontroller preset (m4, h7)")
                        })?;
                        mcu = Some(v.clone());
                    }
                    "--model" => payload.model = Some(absolute(v)?),
                    _ => payload.vectors = Some(absolute(v)?),
                }
            }
            other => bail!("unknown argument `{other}`\n{USAGE}"),
        }
    }
    Ok(Some(Args {
        board,
        board_given,
        mcu,
        payload,
    }))
}

/// A model's flash bytes and engine arena against a budget (`firmware build`'s check).
#[derive(Debug)]
pub struct BudgetCheck {
    /// Whose budget: `feather-f405 (m4)` or `--mcu h7`.
    pub whose: String,
    /// `f32` or `int8`: the engine whose arena is counted.
    pub engine: &'static str,
    /// Bytes of the `.tvb` (flash).
    pub model_bytes: u64,
    /// Bytes of the engine's arena (RAM).
    pub arena_bytes: u64,
    pub budget: McuBudget,
}

impl BudgetCheck {
    /// The model and its engine's arena against `board`'s budget, or `mcu`'s when given.
    pub fn of(model: &Path, board: Board, mcu: Option<&str>) -> Result<Self> {
        let (whose, class) = match mcu {
            Some(m) => (format!("--mcu {m}"), m),
            None => (
                format!("{} ({})", board.name(), board.budget_class()),
                board.budget_class(),
            ),
        };
        let budget = mcu_budget(class)
            .with_context(|| format!("--mcu {class}: not a microcontroller preset (m4, h7)"))?;
        let bytes = std::fs::read(model).with_context(|| format!("reading {}", model.display()))?;
        let bad = |e: &dyn std::fmt::Display| anyhow::anyhow!("{}: {e}", model.display());
        let (engine, arena_words) = match tinyvit_core::tvb::kind(&bytes).map_err(|e| bad(&e))? {
            tinyvit_core::tvb::Kind::F32 => {
                let t = tinyvit_core::tvb::parse(&bytes).map_err(|e| bad(&e))?;
                (
                    "f32",
                    tinyvit_core::engine::arena_len(t.config()).map_err(|e| bad(&e))?,
                )
            }
            tinyvit_core::tvb::Kind::Int8 => {
                let m = tinyvit_core::int8::parse(&bytes).map_err(|e| bad(&e))?;
                (
                    "int8",
                    tinyvit_core::int8::arena_len(m.config()).map_err(|e| bad(&e))?,
                )
            }
        };
        Ok(Self {
            whose,
            engine,
            model_bytes: bytes.len() as u64,
            arena_bytes: 4 * arena_words as u64,
            budget,
        })
    }

    /// What exceeds the budget, one phrase each with both numbers (empty when it fits).
    pub fn over(&self) -> Vec<String> {
        let mut over = Vec::new();
        if self.model_bytes > self.budget.model_bytes {
            over.push(format!(
                "model {} B > {} B of flash",
                self.model_bytes, self.budget.model_bytes
            ));
        }
        if self.arena_bytes > self.budget.arena_bytes {
            over.push(format!(
                "{} arena {} B > {} B of RAM",
                self.engine, self.arena_bytes, self.budget.arena_bytes
            ));
        }
        over
    }

    /// The numbers, one line: `budget of feather-f405 (m4): model ... B of ... B flash, ...`.
    pub fn summary(&self) -> String {
        format!(
            "budget of {}: model {} B of {} B flash, {} arena {} B of {} B RAM",
            self.whose,
            self.model_bytes,
            self.budget.model_bytes,
            self.engine,
            self.arena_bytes,
            self.budget.arena_bytes
        )
    }
}

/// Holds the payload's model to its budget before anything is built: over budget is an error
/// when the board or the preset was named (`--board`, `--mcu`), a warning for the default
/// board; within it the numbers are printed.
fn check_budget(a: &Args) -> Result<()> {
    let Some(model) = &a.payload.model else {
        return Ok(());
    };
    let c = BudgetCheck::of(model, a.board, a.mcu.as_deref())?;
    let over = c.over();
    if over.is_empty() {
        eprintln!("{}", c.summary());
        return Ok(());
    }
    let what = format!(
        "{} exceeds the budget of {}: {}",
        model.display(),
        c.whose,
        over.join(", ")
    );
    if a.board_given || a.mcu.is_some() {
        bail!("{what}");
    }
    eprintln!("warning: {what} (--board or --mcu makes this an error)");
    Ok(())
}

fn absolute(p: &str) -> Result<PathBuf> {
    let p = PathBuf::from(p);
    let p = if p.is_absolute() {
        p
    } else {
        std::env::current_dir()?.join(p)
    };
    if !p.is_file() {
        bail!("{} is not a file", p.display());
    }
    Ok(p)
}

/// `cargo xtask firmware ...` (`firmware bench` is dispatched to `replay::bench` by `main.rs`).
pub fn run(args: &[String]) -> Result<()> {
    let Some((cmd, rest)) = args.split_first() else {
        bail!("firmware needs a command\n{USAGE}");
    };
    match cmd.as_str() {
        "-h" | "--help" | "help" => {
            println!("{USAGE}\n\n{}", board_list());
            return Ok(());
        }
        "eval" => return eval_command(rest),
        _ => {}
    }
    let Some(a) = parse_args(rest, Board::QemuM4)? else {
        return Ok(());
    };
    if matches!(cmd.as_str(), "build" | "run" | "size") {
        check_budget(&a)?;
    }
    match cmd.as_str() {
        "build" => {
            let elf = build(a.board, &a.payload)?;
            eprintln!("built {}", elf.display());
            Ok(())
        }
        "run" => {
            let elf = build(a.board, &a.payload)?;
            let out = run_qemu(a.board, &elf)?;
            print!("{}", out.stdout);
            match out.code {
                Some(0) => Ok(()),
                code => bail!("the firmware failed on {} (exit {code:?})", a.board.name()),
            }
        }
        "size" => {
            let elf = build(a.board, &a.payload)?;
            let s = elf_size(&elf)?;
            println!("{}", s.table_row_header());
            println!("{}", s.table_row(a.board.name()));
            let l = check_layout(a.board, &elf, a.payload.model.is_some())?;
            println!("{}", l.summary());
            Ok(())
        }
        other => bail!("unknown firmware command `{other}`\n{USAGE}"),
    }
}

/// `cargo xtask firmware eval`: a model on the first images of an IDX file, on both QEMU boards.
fn eval_command(args: &[String]) -> Result<()> {
    let (mut model, mut data, mut count) = (None, None, 32u32);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let v = it
            .next()
            .with_context(|| format!("{a} needs a value\n{USAGE}"))?;
        match a.as_str() {
            "--model" => model = Some(absolute(v)?),
            "--data" => data = Some(v.clone()),
            "--count" => count = v.parse().with_context(|| format!("--count {v}"))?,
            other => bail!("unknown argument `{other}`\n{USAGE}"),
        }
    }
    let model = model.with_context(|| format!("eval needs --model\n{USAGE}"))?;
    let data = data.with_context(|| format!("eval needs --data\n{USAGE}"))?;
    let dir = target_dir().join("eval");
    let _ = std::fs::remove_dir_all(&dir);
    let r = run_eval(Path::new("tinyvit"), &model, &data, count, &dir)?;
    println!(
        "{}: {} of {} images agree with the host bit for bit; {} instructions per inference \
         (M4F), {} (M7); model {} bytes, arena {} bytes; outputs in {}",
        r.board,
        r.agree,
        r.images,
        r.instructions_per_image,
        r.instructions_per_image_m7
            .map_or("-".to_string(), |v| v.to_string()),
        r.model_bytes,
        r.arena_bytes,
        dir.display()
    );
    if r.agree != r.images {
        bail!("{} images disagree", r.images - r.agree);
    }
    Ok(())
}

/// `cargo xtask flash --board B`: builds for a real board and runs it there with probe-rs,
/// installing probe-rs first when it is missing.
pub fn flash(args: &[String]) -> Result<()> {
    let Some(a) = parse_args(args, Board::NucleoH743)? else {
        return Ok(());
    };
    check_budget(&a)?;
    let Some(chip) = a.board.probe_chip() else {
        bail!(
            "{} is emulated: run it with `cargo xtask firmware run --board {}` (flash takes a \
             real board: {})",
            a.board.name(),
            a.board.name(),
            Board::REAL.map(Board::name).join(", ")
        );
    };
    let probe_rs = match probe_rs_plan(which("probe-rs"), cargo_bin_dir()) {
        ProbeRs::Found(p) => p,
        ProbeRs::Install { expected } => {
            util::step("probe-rs is missing: cargo install probe-rs-tools --locked");
            util::run(util::cargo().args(["install", "probe-rs-tools", "--locked"]))?;
            if !expected.is_file() {
                bail!(
                    "cargo install probe-rs-tools finished but {} is not there",
                    expected.display()
                );
            }
            expected
        }
    };
    let elf = build(a.board, &a.payload)?;
    let list = Command::new(&probe_rs)
        .arg("list")
        .output()
        .with_context(|| format!("running {} list", probe_rs.display()))?;
    let text =
        String::from_utf8_lossy(&list.stdout).into_owned() + &String::from_utf8_lossy(&list.stderr);
    if !probes_attached(&text) {
        bail!(
            "no debug probe is attached: connect {} and run this command again",
            a.board.probe_hint()
        );
    }
    util::run(
        Command::new(&probe_rs)
            .args(["run", "--chip", chip])
            .arg(&elf),
    )
}

/// Where probe-rs comes from.
#[derive(Debug, PartialEq, Eq)]
pub enum ProbeRs {
    /// Already installed here.
    Found(PathBuf),
    /// Missing: `cargo install probe-rs-tools --locked` puts it at `expected`.
    Install { expected: PathBuf },
}

/// Uses the `probe-rs` on the PATH, else the one in cargo's bin folder, else installs it there.
pub fn probe_rs_plan(on_path: Option<PathBuf>, cargo_bin: PathBuf) -> ProbeRs {
    let in_cargo = cargo_bin.join("probe-rs");
    match on_path {
        Some(p) => ProbeRs::Found(p),
        None if in_cargo.is_file() => ProbeRs::Found(in_cargo),
        None => ProbeRs::Install { expected: in_cargo },
    }
}

/// Cargo's bin folder: `$CARGO_HOME/bin`, else `~/.cargo/bin`.
fn cargo_bin_dir() -> PathBuf {
    match std::env::var_os("CARGO_HOME").filter(|v| !v.is_empty()) {
        Some(h) => PathBuf::from(h).join("bin"),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo/bin"),
    }
}

/// Whether `probe-rs list` found a probe: it prints `The following debug probes were found:`
/// and one `[n]: ...` line a probe, or `No debug probes were found.`
pub fn probes_attached(list_output: &str) -> bool {
    list_output.lines().any(|l| {
        let l = l.trim_start();
        l.starts_with('[') && l.contains("]:")
    })
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    })
}

/// The firmware workspace.
pub fn dir() -> PathBuf {
    util::root().join("firmware")
}

/// The firmware's build folder: `$CARGO_TARGET_DIR/firmware` when the caller set one (CI keeps
/// its build folder outside the clone, so the firmware's dependencies are cached too), else
/// `firmware/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR").filter(|v| !v.is_empty()) {
        Some(d) => util::root().join(d).join("firmware"),
        None => dir().join("target"),
    }
}

/// Builds the firmware for `board` with `payload` embedded, and returns a copy of the ELF named
/// after the board and model (so that several builds can sit side by side).
pub fn build(board: Board, payload: &Payload) -> Result<PathBuf> {
    util::step(&format!(
        "firmware for {} (model: {}, vectors: {})",
        board.name(),
        show_opt(&payload.model),
        show_opt(&payload.vectors)
    ));
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(dir())
        .args(["build", "--release", "--features", board.feature()])
        // The host's target folder must not be shared: the firmware gets a folder of its own.
        .env("CARGO_TARGET_DIR", target_dir())
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    set_or_remove(&mut cmd, "TINYVIT_MODEL", &payload.model);
    set_or_remove(&mut cmd, "TINYVIT_VECTORS", &payload.vectors);
    run_cargo(&mut cmd)?;
    let built = target_dir()
        .join(TARGET)
        .join("release")
        .join("tinyvit-firmware");
    let stem = |p: &Option<PathBuf>| {
        p.as_ref()
            .and_then(|p| p.file_stem())
            .map_or("none".to_string(), |s| s.to_string_lossy().into_owned())
    };
    let elfs = target_dir().join("elf");
    std::fs::create_dir_all(&elfs)?;
    let copy = elfs.join(format!(
        "{}-{}-{}.elf",
        board.feature(),
        stem(&payload.model),
        stem(&payload.vectors)
    ));
    std::fs::copy(&built, &copy)
        .with_context(|| format!("copying {} to {}", built.display(), copy.display()))?;
    Ok(copy)
}

/// The sentence the firmware's build script stops with when a payload does not fit a board.
pub const DOES_NOT_FIT: &str = "does not fit the";

/// Runs a firmware cargo build, passing its messages through; when the build script refused a
/// payload that does not fit the board, the error is that sentence.
fn run_cargo(cmd: &mut Command) -> Result<()> {
    eprintln!("    $ {}", show(cmd));
    let mut child = cmd
        .stderr(Stdio::piped())
        .spawn()
        .context("starting cargo for the firmware")?;
    let mut fit = None;
    for line in BufReader::new(child.stderr.take().expect("stderr is piped")).lines() {
        let line = line?;
        eprintln!("{line}");
        if fit.is_none() && line.contains(DOES_NOT_FIT) {
            fit = Some(line.trim().to_string());
        }
    }
    let status = child.wait()?;
    match (status.success(), fit) {
        (true, _) => Ok(()),
        (false, Some(sentence)) => bail!("{sentence}"),
        (false, None) => bail!("`{}` failed ({status})", show(cmd)),
    }
}

fn show_opt(p: &Option<PathBuf>) -> String {
    p.as_ref()
        .map_or("none".to_string(), |p| p.display().to_string())
}

fn set_or_remove(cmd: &mut Command, var: &str, value: &Option<PathBuf>) {
    match value {
        Some(p) => cmd.env(var, p),
        None => cmd.env_remove(var),
    };
}

/// The QEMU command line that boots `elf` on `board`, counting instructions exactly.
pub fn qemu_command(board: Board, elf: &Path) -> Result<Command> {
    let (machine, cpu) = board.qemu().with_context(|| {
        format!(
            "{} is a real board: use `cargo xtask flash --board {}`",
            board.name(),
            board.name()
        )
    })?;
    let qemu = crate::setup::qemu()?;
    let mut cmd = Command::new(qemu);
    cmd.args(["-M", machine, "-cpu", cpu, "-nographic"])
        .args(["-semihosting-config", "enable=on,target=native"])
        .args(["-icount", "shift=0"])
        .arg("-kernel")
        .arg(elf);
    Ok(cmd)
}

/// Boots `elf` under QEMU and collects what it prints and how it exits.
pub fn run_qemu(board: Board, elf: &Path) -> Result<RunOutput> {
    let mut cmd = qemu_command(board, elf)?;
    eprintln!("    $ {}", show(&cmd));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting qemu-system-arm")?;
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut s);
        s
    });
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if start.elapsed() > Duration::from_secs(QEMU_TIMEOUT_S) {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{} on {} ran longer than {QEMU_TIMEOUT_S} s and was stopped",
                elf.display(),
                board.name()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = reader.join().unwrap_or_default();
    Ok(RunOutput {
        stdout,
        code: status.code(),
    })
}

fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Flash and RAM bytes of a firmware ELF, from its section headers.
#[derive(Clone, Copy, Debug, Default)]
pub struct Size {
    /// Code: `.vector_table` and `.text`.
    pub text: u64,
    /// Read-only data: `.rodata` (the embedded model and vectors live here).
    pub rodata: u64,
    /// Initialised data: stored in flash, copied to RAM at boot.
    pub data: u64,
    /// Zeroed and uninitialised RAM: `.bss` (the activation arena lives here), `.uninit`.
    pub bss: u64,
}

impl Size {
    /// Flash bytes: text + rodata + the flash copy of `.data`.
    pub fn flash(&self) -> u64 {
        self.text + self.rodata + self.data
    }

    /// Static RAM bytes: `.data` + `.bss` (the stack comes on top).
    pub fn ram(&self) -> u64 {
        self.data + self.bss
    }

    pub fn table_row_header(&self) -> String {
        format!(
            "{:<12} {:>9} {:>9} {:>7} {:>9} {:>9} {:>9}",
            "board", "text", "rodata", "data", "bss", "flash", "ram"
        )
    }

    pub fn table_row(&self, board: &str) -> String {
        format!(
            "{:<12} {:>9} {:>9} {:>7} {:>9} {:>9} {:>9}",
            board,
            self.text,
            self.rodata,
            self.data,
            self.bss,
            self.flash(),
            self.ram()
        )
    }
}

/// One section of an ELF.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Section {
    pub name: String,
    pub kind: u32,
    pub flags: u32,
    pub addr: u32,
    pub size: u32,
}

/// One symbol of an ELF's `.symtab`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Symbol {
    pub name: String,
    pub value: u32,
    pub size: u32,
}

const SHT_SYMTAB: u32 = 2;
const SHT_NOBITS: u32 = 8;
const SHF_WRITE: u32 = 1;
const SHF_ALLOC: u32 = 2;
const SHF_EXECINSTR: u32 = 4;

/// The section and symbol tables of a 32-bit little-endian ELF.
#[derive(Clone, Debug, Default)]
pub struct Elf {
    pub sections: Vec<Section>,
    pub symbols: Vec<Symbol>,
}

impl Elf {
    pub fn read(path: &Path) -> Result<Elf> {
        let b = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        Elf::parse(&b).with_context(|| format!("{}", path.display()))
    }

    /// Parses the tables; anything out of bounds is an error, never a panic.
    pub fn parse(b: &[u8]) -> Result<Elf> {
        let bad = || anyhow::anyhow!("not a 32-bit little-endian ELF, or a damaged one");
        if b.len() < 52 || &b[..4] != b"\x7fELF" || b[4] != 1 || b[5] != 1 {
            return Err(bad());
        }
        let u16_at = |o: usize| b.get(o..o + 2).map(|s| u16::from_le_bytes([s[0], s[1]]));
        let u32_at = |o: usize| {
            b.get(o..o.checked_add(4)?)
                .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        };
        let shoff = u32_at(0x20).ok_or_else(bad)? as usize;
        let shentsize = u16_at(0x2e).ok_or_else(bad)? as usize;
        let shnum = u16_at(0x30).ok_or_else(bad)? as usize;
        let shstrndx = u16_at(0x32).ok_or_else(bad)? as usize;
        let header = |i: usize| shoff.checked_add(i.checked_mul(shentsize)?);
        let cstr = |at: usize| -> String {
            let s = b.get(at..).unwrap_or(&[]);
            String::from_utf8_lossy(&s[..s.iter().position(|&c| c == 0).unwrap_or(s.len())])
                .into_owned()
        };
        let names = u32_at(header(shstrndx).ok_or_else(bad)? + 16).ok_or_else(bad)? as usize;
        let mut elf = Elf::default();
        let mut symtab = None;
        for i in 0..shnum {
            let h = header(i).ok_or_else(bad)?;
            let f = |k: usize| u32_at(h + 4 * k).ok_or_else(bad);
            let (name, kind, flags, addr, offset, size, link) =
                (f(0)?, f(1)?, f(2)?, f(3)?, f(4)?, f(5)?, f(6)?);
            if kind == SHT_SYMTAB {
                symtab = Some((offset as usize, size as usize, link as usize));
            }
            elf.sections.push(Section {
                name: cstr(names + name as usize),
                kind,
                flags,
                addr,
                size,
            });
        }
        if let Some((offset, size, link)) = symtab {
            let strtab = u32_at(header(link).ok_or_else(bad)? + 16).ok_or_else(bad)? as usize;
            for k in 0..size / 16 {
                let e = offset + 16 * k;
                let (name, value, size) = (
                    u32_at(e).ok_or_else(bad)?,
                    u32_at(e + 4).ok_or_else(bad)?,
                    u32_at(e + 8).ok_or_else(bad)?,
                );
                elf.symbols.push(Symbol {
                    name: cstr(strtab + name as usize),
                    value,
                    size,
                });
            }
        }
        Ok(elf)
    }

    /// Sums the allocated sections by kind.
    pub fn size(&self) -> Size {
        let mut size = Size::default();
        for s in self.sections.iter().filter(|s| s.flags & SHF_ALLOC != 0) {
            let len = u64::from(s.size);
            if s.kind == SHT_NOBITS {
                size.bss += len;
            } else if s.flags & SHF_WRITE != 0 {
                size.data += len;
            } else if s.flags & SHF_EXECINSTR != 0 || s.name == ".vector_table" {
                size.text += len;
            } else {
                size.rodata += len;
            }
        }
        size
    }

    fn section(&self, name: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.name == name)
    }

    fn symbol(&self, f: impl Fn(&str) -> bool) -> Option<&Symbol> {
        self.symbols.iter().find(|s| f(&s.name))
    }
}

/// Reads the section table of a 32-bit little-endian ELF and sums the allocated sections.
pub fn elf_size(path: &Path) -> Result<Size> {
    Ok(Elf::read(path)?.size())
}

/// Where a board ELF put things, as [`check_layout`] found them.
#[derive(Clone, Debug)]
pub struct Layout {
    pub board: Board,
    pub size: Size,
    /// The RAM holding the statics and the stack.
    pub ram: Region,
    /// Address and bytes of the exact engine's arena, when the ELF has one.
    pub arena: Option<(u32, u32)>,
    /// The initial stack pointer (the top of the stack).
    pub stack_top: u32,
}

impl Layout {
    pub fn summary(&self) -> String {
        let (f, r) = (self.board.flash(), self.ram);
        let arena = self.arena.map_or("no arena".to_string(), |(a, n)| {
            format!("arena {n} B at {a:#010x}")
        });
        format!(
            "{}: vector table at {:#010x}; flash {} of {} B; statics {} B + {} B stack reserve \
             in {} ({} B at {:#010x}); {arena}; stack top {:#010x}",
            self.board.name(),
            f.1,
            self.size.flash(),
            f.2,
            self.size.ram(),
            STACK_RESERVE,
            r.0,
            r.2,
            r.1,
            self.stack_top
        )
    }
}

fn within(r: &Region, addr: u32, len: u64) -> bool {
    u64::from(addr) >= u64::from(r.1) && u64::from(addr) + len <= u64::from(r.1) + r.2
}

/// Checks a board ELF against the board: the vector table at the flash origin, everything in
/// flash within its budget, the statics and the stack in the RAM the build should have chosen
/// (the first of [`Board::rams`] that holds the statics and [`STACK_RESERVE`]), the arena inside
/// it (required when `arena_required`), and the stack at its top.
pub fn check_layout(board: Board, elf_path: &Path, arena_required: bool) -> Result<Layout> {
    let elf = Elf::read(elf_path)?;
    layout_of(board, &elf, arena_required).with_context(|| format!("{}", elf_path.display()))
}

/// [`check_layout`] on a parsed ELF.
pub fn layout_of(board: Board, elf: &Elf, arena_required: bool) -> Result<Layout> {
    let name = board.name();
    let flash = board.flash();
    let size = elf.size();
    let vt = elf
        .section(".vector_table")
        .context("no .vector_table section")?;
    if vt.addr != flash.1 {
        bail!(
            "{name}: the vector table is at {:#010x}, not at the flash origin {:#010x}",
            vt.addr,
            flash.1
        );
    }
    if size.flash() > flash.2 {
        bail!(
            "{name}: {} B of code, constants and model exceed the {} B of flash",
            size.flash(),
            flash.2
        );
    }
    for s in elf.sections.iter().filter(|s| {
        s.flags & SHF_ALLOC != 0 && s.flags & SHF_WRITE == 0 && s.kind != SHT_NOBITS && s.size > 0
    }) {
        if !within(&flash, s.addr, u64::from(s.size)) {
            bail!("{name}: section {} lies outside the flash", s.name);
        }
    }
    let statics = size.ram();
    let Some(want) = board.rams().iter().find(|r| statics + STACK_RESERVE <= r.2) else {
        bail!("{name}: {statics} B of statics and a {STACK_RESERVE} B stack fit none of its RAMs");
    };
    for s in elf
        .sections
        .iter()
        .filter(|s| s.flags & SHF_ALLOC != 0 && s.flags & SHF_WRITE != 0 && s.size > 0)
    {
        if !within(want, s.addr, u64::from(s.size)) {
            bail!(
                "{name}: section {} ({} B at {:#010x}) is not in {}, the RAM its statics fit",
                s.name,
                s.size,
                s.addr,
                want.0
            );
        }
    }
    let arena = elf
        .symbol(|n| n.contains("ARENA"))
        .filter(|s| s.size > 0)
        .map(|s| (s.value, s.size));
    match arena {
        Some((a, n)) if !within(want, a, u64::from(n)) => {
            bail!("{name}: the arena at {a:#010x} is not in {}", want.0)
        }
        None if arena_required => bail!("{name}: the ELF has no ARENA symbol"),
        _ => {}
    }
    let stack_top = elf
        .symbol(|n| n == "_stack_start")
        .context("no _stack_start symbol")?
        .value;
    let top = u64::from(want.1) + want.2;
    if u64::from(stack_top) != top {
        bail!(
            "{name}: the stack starts at {stack_top:#010x}, not at the top of {} ({top:#010x})",
            want.0
        );
    }
    Ok(Layout {
        board,
        size,
        ram: *want,
        arena,
        stack_top,
    })
}

/// What the firmware made of a model on real test images (`cargo xtask train`'s device stage).
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceRun {
    /// The emulated boards it ran on.
    pub board: String,
    /// Test images replayed.
    pub images: u64,
    /// Images whose evaluation view, logits hash and class equal the host's on every board.
    pub agree: u64,
    /// Mean instructions of one inference (engine only) on the Cortex-M4F.
    pub instructions_per_image: u64,
    /// The same on the Cortex-M7 (`None` in records written before it was kept).
    pub instructions_per_image_m7: Option<u64>,
    /// Bytes of the `.tvb` in flash.
    pub model_bytes: u64,
    /// Bytes of the exact engine's static arena.
    pub arena_bytes: u64,
}

impl DeviceRun {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "board": self.board,
            "images": self.images,
            "agree": self.agree,
            "instructions_per_image": self.instructions_per_image,
            "instructions_per_image_m7": self.instructions_per_image_m7,
            "model_bytes": self.model_bytes,
            "arena_bytes": self.arena_bytes,
        })
    }

    #[allow(
        dead_code,
        reason = "read back by the cached device stage of `cargo xtask train`"
    )]
    pub fn from_json(v: &serde_json::Value) -> Result<DeviceRun> {
        let num = |k: &str| {
            v.get(k)
                .and_then(serde_json::Value::as_u64)
                .with_context(|| format!("device record: `{k}` is missing or not a number"))
        };
        Ok(DeviceRun {
            board: v
                .get("board")
                .and_then(serde_json::Value::as_str)
                .context("device record: `board` is missing")?
                .to_string(),
            images: num("images")?,
            agree: num("agree")?,
            instructions_per_image: num("instructions_per_image")?,
            instructions_per_image_m7: v
                .get("instructions_per_image_m7")
                .and_then(serde_json::Value::as_u64),
            model_bytes: num("model_bytes")?,
            arena_bytes: num("arena_bytes")?,
        })
    }
}

/// Runs the model `tvb` on the first `n` images of the IDX data SPEC `split` on both emulated
/// boards and compares every result with the host's.
///
/// The host side is `tests/examples/make_replay.rs --eval`: each image's evaluation view
/// (resize to `size / 0.875`, centre crop, bicubic; `light` mean/std) through the core `exact`
/// engine, the engine `tinyvit infer --engine exact` runs, so `_tinyvit` (the host binary) is
/// not invoked. The device repeats the view, the normalisation and the inference from the raw
/// image. Outputs land in `dir`: `eval.vec`, `eval.txt` (index, label, host class),
/// `device-<board>.txt` (the firmware's output) and `device.json` ([`DeviceRun::to_json`]).
pub fn run_eval(_tinyvit: &Path, tvb: &Path, split: &str, n: u32, dir: &Path) -> Result<DeviceRun> {
    let tvb = std::fs::canonicalize(tvb).with_context(|| format!("{}", tvb.display()))?;
    std::fs::create_dir_all(dir)?;
    let dir = std::fs::canonicalize(dir)?;
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
        "--eval",
    ])
    .arg(&tvb)
    .args(["--data", split, "--count", &n.to_string(), "--out"])
    .arg(&dir);
    crate::setup::torch_env(&mut cmd)?;
    util::run(&mut cmd)?;
    let payload = Payload {
        model: Some(tvb.clone()),
        vectors: Some(dir.join("eval.vec")),
    };
    let elf = build(Board::QemuM4, &payload)?;
    let mut agree_all: Option<Vec<bool>> = None;
    let (mut instr, mut instr_m7, mut arena) = (Vec::new(), Vec::new(), 0u64);
    for board in Board::MPS2 {
        let out = run_qemu(board, &elf)?;
        std::fs::write(
            dir.join(format!("device-{}.txt", board.name())),
            &out.stdout,
        )?;
        if out.stdout.lines().any(|l| l.starts_with("error: ")) {
            bail!("the firmware failed on {}:\n{}", board.name(), out.stdout);
        }
        let mut agree = Vec::new();
        for line in out.stdout.lines() {
            if let Some(a) = line.split(' ').find_map(|w| w.strip_prefix("arena=")) {
                arena = a.parse().unwrap_or(0);
            }
            if line.starts_with("evalview ") {
                agree.push(line.ends_with(" ok"));
                if let Some(i) = line.split(' ').find_map(|w| w.strip_prefix("instr=")) {
                    let i = i.parse::<u64>().unwrap_or(0);
                    if board == Board::QemuM4 {
                        instr.push(i);
                    } else {
                        instr_m7.push(i);
                    }
                }
            }
        }
        agree_all = Some(match agree_all {
            None => agree,
            Some(prev) => prev.iter().zip(&agree).map(|(a, b)| *a && *b).collect(),
        });
    }
    let agree = agree_all.unwrap_or_default();
    let run = DeviceRun {
        board: "mps2-an386 (Cortex-M4F) and mps2-an500 (Cortex-M7)".to_string(),
        images: agree.len() as u64,
        agree: agree.iter().filter(|a| **a).count() as u64,
        instructions_per_image: instr.iter().sum::<u64>() / instr.len().max(1) as u64,
        instructions_per_image_m7: (!instr_m7.is_empty())
            .then(|| instr_m7.iter().sum::<u64>() / instr_m7.len() as u64),
        model_bytes: std::fs::metadata(&tvb)?.len(),
        arena_bytes: arena,
    };
    let json = serde_json::to_string_pretty(&run.to_json())?;
    std::fs::write(dir.join("device.json"), json)?;
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tinyvit_core::config::ModelConfig;

    /// A `.tvb` of `cfg` with zero weights, in a fresh folder.
    fn tvb(name: &str, cfg: &ModelConfig) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-budget-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let blob = vec![0f32; tinyvit_core::params::folded_blob_len(cfg)];
        let p = dir.join(format!("{name}.tvb"));
        std::fs::write(&p, tinyvit_core::tvb::write(cfg, &blob).unwrap()).unwrap();
        p
    }

    #[test]
    fn a_model_is_held_to_its_boards_budget() {
        let m4 = ModelConfig::tiny_vit_mcu_m4();
        let fits = tvb("m4", &m4);
        let arena = 4 * tinyvit_core::engine::arena_len(&m4).unwrap() as u64;
        let bytes = std::fs::metadata(&fits).unwrap().len();
        for board in [Board::FeatherF405, Board::Netduinoplus2, Board::QemuM4] {
            let c = BudgetCheck::of(&fits, board, None).unwrap();
            assert_eq!((c.model_bytes, c.arena_bytes), (bytes, arena));
            assert_eq!(c.budget, mcu_budget("m4").unwrap());
            assert!(c.over().is_empty(), "{:?}", c.over());
            assert_eq!(
                c.summary(),
                format!(
                    "budget of {} (m4): model {bytes} B of 800000 B flash, f32 arena {arena} B \
                     of 196608 B RAM",
                    board.name()
                )
            );
        }
        // The case: the M4 preset grown to 224 px and 1000 classes.
        let grown = ModelConfig {
            img_size: 224,
            num_classes: 1000,
            ..m4
        };
        let big = tvb("m4-224-1000", &grown);
        let big_arena = 4 * tinyvit_core::engine::arena_len(&grown).unwrap() as u64;
        let big_bytes = std::fs::metadata(&big).unwrap().len();
        let c = BudgetCheck::of(&big, Board::FeatherF405, None).unwrap();
        assert_eq!(
            c.over(),
            vec![
                format!("model {big_bytes} B > 800000 B of flash"),
                format!("f32 arena {big_arena} B > 196608 B of RAM"),
            ]
        );
        // `--mcu` names another budget: the H7's takes the grown model (1.5 MB of flash,
        // 384 KB of arena).
        let c = BudgetCheck::of(&big, Board::FeatherF405, Some("h7")).unwrap();
        assert_eq!(c.whose, "--mcu h7");
        assert!(c.over().is_empty(), "{}", c.summary());
        assert_eq!(Board::NucleoH743.budget_class(), "h7");
        std::fs::remove_dir_all(fits.parent().unwrap()).unwrap();
        std::fs::remove_dir_all(big.parent().unwrap()).unwrap();
    }

    #[test]
    fn clock_plans_hold_their_arithmetic_and_limits() {
        for plan in [clocks::H743_REV_V, clocks::H743_REV_Y, clocks::F405] {
            assert_eq!(plan.check(), Ok(()), "{}", plan.name);
            assert_eq!(plan.pll.p_hz(), plan.sys_hz);
        }
        assert_eq!(clocks::H743_REV_V.pll.vco_hz(), 960_000_000);
        assert_eq!(clocks::H743_REV_V.sys_hz, 480_000_000);
        assert_eq!(clocks::H743_REV_Y.sys_hz, 400_000_000);
        // The F405's Q output feeds USB: exactly 48 MHz.
        assert_eq!(clocks::F405.pll.q_hz(), 48_000_000);
        // Each rule can fail.
        let mut p = clocks::H743_REV_V;
        p.pll.n += 1;
        assert_eq!(p.check(), Err("the VCO is out of range"));
        let mut p = clocks::H743_REV_Y;
        p.pll.n = 60;
        assert_eq!(p.check(), Err("the VCO is out of range"));
        let mut p = clocks::F405;
        p.pll.m = 4;
        assert_eq!(p.check(), Err("the PLL input (source / M) is out of range"));
        let mut p = clocks::F405;
        p.pll.p = 3;
        assert_eq!(p.check(), Err("P must be even"));
        let mut p = clocks::F405;
        p.pclk_hz = &[84_000_000, 84_000_000];
        assert_eq!(
            p.check(),
            Err("an APB clock is above its maximum or not hclk / 2^k")
        );
        let mut p = clocks::H743_REV_V;
        p.hclk_hz = 480_000_000;
        assert_eq!(
            p.check(),
            Err("the AHB clock is above its maximum or not sys / 2^k")
        );
        assert_eq!(clocks::H743_REV_V.nanos(480), 1000);
    }

    #[test]
    fn probe_rs_is_used_where_found_and_installed_where_not() {
        let dir = std::env::temp_dir().join(format!("tinyvit-probe-rs-{}", std::process::id()));
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let on_path = PathBuf::from("/usr/local/bin/probe-rs");
        assert_eq!(
            probe_rs_plan(Some(on_path.clone()), bin.clone()),
            ProbeRs::Found(on_path)
        );
        assert_eq!(
            probe_rs_plan(None, bin.clone()),
            ProbeRs::Install {
                expected: bin.join("probe-rs")
            }
        );
        std::fs::write(bin.join("probe-rs"), b"").unwrap();
        assert_eq!(
            probe_rs_plan(None, bin.clone()),
            ProbeRs::Found(bin.join("probe-rs"))
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn probe_listing() {
        assert!(!probes_attached("No debug probes were found.\n"));
        assert!(!probes_attached(""));
        assert!(probes_attached(
            "The following debug probes were found:\n[0]: STLink V3 (VID: 0483, PID: 374e, \
             Serial: 0015, StLink)\n"
        ));
    }

    #[test]
    fn boards_parse_and_list() {
        for b in Board::ALL {
            assert_eq!(Board::parse(b.name()).unwrap(), b);
            assert!(board_list().contains(b.name()));
        }
        let e = Board::parse("uno").unwrap_err().to_string();
        assert!(e.contains("unknown board `uno`") && e.contains("feather-f405"));
        for b in Board::REAL {
            assert!(b.probe_chip().is_some() && b.qemu().is_none());
        }
        for b in Board::QEMU {
            assert!(b.probe_chip().is_none() && b.qemu().is_some());
        }
    }

    fn section(name: &str, kind: u32, flags: u32, addr: u32, size: u32) -> Section {
        Section {
            name: name.to_string(),
            kind,
            flags,
            addr,
            size,
        }
    }

    /// An ELF as the firmware's build lays it out: `statics` bytes of `.bss` (the arena
    /// included) at the start of `ram`, the stack at its top.
    fn board_elf(flash: u32, code: u32, ram: Region, statics: u32) -> Elf {
        const PROGBITS: u32 = 1;
        Elf {
            sections: vec![
                section(".vector_table", PROGBITS, SHF_ALLOC, flash, 1024),
                section(
                    ".text",
                    PROGBITS,
                    SHF_ALLOC | SHF_EXECINSTR,
                    flash + 1024,
                    code,
                ),
                section(".rodata", PROGBITS, SHF_ALLOC, flash + 1024 + code, 4096),
                section(".data", PROGBITS, SHF_ALLOC | SHF_WRITE, ram.1, 16),
                section(
                    ".bss",
                    SHT_NOBITS,
                    SHF_ALLOC | SHF_WRITE,
                    ram.1 + 16,
                    statics,
                ),
                section(".comment", PROGBITS, 0, 0, 64),
            ],
            symbols: vec![
                Symbol {
                    name: "_ZN16tinyvit_firmware18__cortex_m_rt_main5ARENA17h0E".into(),
                    value: ram.1 + 32,
                    size: statics / 2,
                },
                Symbol {
                    name: "_stack_start".into(),
                    value: ram.1 + ram.2 as u32,
                    size: 0,
                },
            ],
        }
    }

    #[test]
    fn layout_checks_the_board_memory() {
        let h7 = Board::NucleoH743;
        let [dtcm, axi] = [h7.rams()[0], h7.rams()[1]];
        // Small statics: DTCM.
        let l = layout_of(h7, &board_elf(0x0800_0000, 100_000, dtcm, 70_000), true).unwrap();
        assert_eq!(l.ram.0, "DTCM");
        assert!(l.summary().contains("in DTCM"));
        // Statics beyond DTCM with the stack reserve: AXI SRAM, and DTCM is then wrong.
        let big = 128 * 1024 - 8 * 1024;
        let l = layout_of(h7, &board_elf(0x0800_0000, 100_000, axi, big), true).unwrap();
        assert_eq!(l.ram.0, "AXISRAM");
        let e = layout_of(h7, &board_elf(0x0800_0000, 100_000, dtcm, big), true).unwrap_err();
        assert!(e.to_string().contains("is not in AXISRAM"), "{e}");
        // The vector table must sit at the flash origin.
        let e = layout_of(h7, &board_elf(0x0800_4000, 100_000, dtcm, 1000), true).unwrap_err();
        assert!(e.to_string().contains("not at the flash origin"), "{e}");
        // A model too large for the flash, and statics too large for any RAM.
        let f4 = Board::FeatherF405;
        let sram = f4.rams()[0];
        let e = layout_of(f4, &board_elf(0x0800_0000, 1 << 20, sram, 1000), true).unwrap_err();
        assert!(
            e.to_string().contains("exceed the 1048576 B of flash"),
            "{e}"
        );
        let e = layout_of(f4, &board_elf(0x0800_0000, 1000, sram, 120_000), true).unwrap_err();
        assert!(e.to_string().contains("fit none of its RAMs"), "{e}");
        // No arena where one is required; a stack that is not at the top.
        let mut elf = board_elf(0x0800_0000, 1000, sram, 1000);
        elf.symbols.remove(0);
        assert!(layout_of(f4, &elf, true).is_err());
        assert!(layout_of(f4, &elf, false).is_ok());
        elf.symbols[0].value -= 4;
        assert!(layout_of(f4, &elf, false).is_err());
    }

    #[test]
    fn damaged_elves_are_errors() {
        assert!(Elf::parse(b"").is_err());
        assert!(Elf::parse(&[0x7f, b'E', b'L', b'F', 1, 1]).is_err());
        let mut b = vec![0u8; 64];
        b[..6].copy_from_slice(&[0x7f, b'E', b'L', b'F', 1, 1]);
        b[0x20] = 0xff; // section headers beyond the file
        b[0x30] = 3;
        b[0x2e] = 40;
        assert!(Elf::parse(&b).is_err());
    }
}
