//! `cargo xtask firmware build|run|size|eval|bench`, `cargo xtask flash`: the Cortex-M firmware.
//!
//! The firmware (`firmware/`, its own workspace) embeds at build time a model `.tvb`
//! (`TINYVIT_MODEL`) and a replay vector file (`TINYVIT_VECTORS`, see `core/src/vectors.rs`);
//! both paths are handed to its build script as environment variables. Boards:
//!
//! | board        | feature       | runs on                                          |
//! |--------------|---------------|--------------------------------------------------|
//! | `qemu-m4`    | `qemu`        | `qemu-system-arm -M mps2-an386 -cpu cortex-m4`   |
//! | `qemu-m7`    | `qemu`        | `qemu-system-arm -M mps2-an500 -cpu cortex-m7`   |
//! | `nucleo-h743`| `nucleo-h743` | an STM32H743ZI Nucleo board through `probe-rs`   |
//!
//! The two QEMU boards share one memory map and so one ELF: M4 and M7 run the very same code.
//! QEMU runs with `-icount shift=0`, which makes the firmware's SysTick count instructions.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::util;

/// The firmware's compilation target.
pub const TARGET: &str = "thumbv7em-none-eabihf";
/// Longest a QEMU run may take before it is killed (seconds).
const QEMU_TIMEOUT_S: u64 = 900;

/// A board the firmware can be built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Board {
    QemuM4,
    QemuM7,
    NucleoH743,
}

impl Board {
    pub const ALL: [Board; 3] = [Board::QemuM4, Board::QemuM7, Board::NucleoH743];
    /// The boards CI runs on.
    pub const QEMU: [Board; 2] = [Board::QemuM4, Board::QemuM7];

    pub fn name(self) -> &'static str {
        match self {
            Board::QemuM4 => "qemu-m4",
            Board::QemuM7 => "qemu-m7",
            Board::NucleoH743 => "nucleo-h743",
        }
    }

    fn feature(self) -> &'static str {
        match self {
            Board::QemuM4 | Board::QemuM7 => "qemu",
            Board::NucleoH743 => "nucleo-h743",
        }
    }

    /// QEMU machine and CPU, for the emulated boards.
    fn qemu(self) -> Option<(&'static str, &'static str)> {
        match self {
            Board::QemuM4 => Some(("mps2-an386", "cortex-m4")),
            Board::QemuM7 => Some(("mps2-an500", "cortex-m7")),
            Board::NucleoH743 => None,
        }
    }

    pub fn parse(s: &str) -> Result<Board> {
        Board::ALL
            .into_iter()
            .find(|b| b.name() == s)
            .with_context(|| format!("unknown board `{s}` (boards: qemu-m4, qemu-m7, nucleo-h743)"))
    }
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

const USAGE: &str = "\
usage: cargo xtask firmware build|run|size [--board qemu-m4|qemu-m7|nucleo-h743] [--model FILE.tvb]
                                      [--vectors FILE.vec]
       cargo xtask firmware eval --model FILE.tvb --data idx:IMAGES[,LABELS] [--count N]
       cargo xtask firmware bench   (the device part of `cargo xtask bench`)
       cargo xtask flash --board nucleo-h743 [--model FILE.tvb] [--vectors FILE.vec]";

struct Args {
    board: Board,
    payload: Payload,
}

fn parse_args(args: &[String], default_board: Board) -> Result<Args> {
    let mut board = default_board;
    let mut payload = Payload::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .with_context(|| format!("{name} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "--board" => board = Board::parse(&value("--board")?)?,
            "--model" => payload.model = Some(absolute(&value("--model")?)?),
            "--vectors" => payload.vectors = Some(absolute(&value("--vectors")?)?),
            other => bail!("unknown argument `{other}`\n{USAGE}"),
        }
    }
    Ok(Args { board, payload })
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

/// `cargo xtask firmware ...`.
pub fn run(args: &[String]) -> Result<()> {
    let (cmd, rest) = args
        .split_first()
        .with_context(|| format!("firmware needs a command\n{USAGE}"))?;
    match cmd.as_str() {
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            return Ok(());
        }
        "eval" => return eval_command(rest),
        "bench" => return crate::replay::bench(),
        _ => {}
    }
    let a = parse_args(rest, Board::QemuM4)?;
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
         (M4F); model {} bytes, arena {} bytes; outputs in {}",
        r.board,
        r.agree,
        r.images,
        r.instructions_per_image,
        r.model_bytes,
        r.arena_bytes,
        dir.display()
    );
    if r.agree != r.images {
        bail!("{} images disagree", r.images - r.agree);
    }
    Ok(())
}

/// `cargo xtask flash --board nucleo-h743`: builds for the real board and runs it with probe-rs.
pub fn flash(args: &[String]) -> Result<()> {
    let a = parse_args(args, Board::NucleoH743)?;
    if a.board != Board::NucleoH743 {
        bail!(
            "flash is for the real board (--board nucleo-h743); QEMU boards run with \
             `cargo xtask firmware run --board {}`",
            a.board.name()
        );
    }
    let elf = build(a.board, &a.payload)?;
    let probe = which("probe-rs").with_context(|| {
        format!(
            "probe-rs is not installed, so {} cannot be flashed from here. Install it with \
             `cargo install probe-rs-tools --locked`, plug the Nucleo-H743ZI in over its ST-LINK \
             USB port and run this command again (it runs `probe-rs run --chip STM32H743ZITx \
             {}`, which flashes, streams the defmt log and returns the firmware's exit status)",
            elf.display(),
            elf.display()
        )
    })?;
    util::run(
        Command::new(probe)
            .args(["run", "--chip", "STM32H743ZITx"])
            .arg(&elf),
    )
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
    util::run(&mut cmd)?;
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

/// Reads the section table of a 32-bit little-endian ELF and sums the allocated sections.
pub fn elf_size(path: &Path) -> Result<Size> {
    let b = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let bad = || anyhow::anyhow!("{} is not a 32-bit little-endian ELF", path.display());
    if b.len() < 52 || &b[..4] != b"\x7fELF" || b[4] != 1 || b[5] != 1 {
        return Err(bad());
    }
    let u16_at = |o: usize| b.get(o..o + 2).map(|s| u16::from_le_bytes([s[0], s[1]]));
    let u32_at = |o: usize| {
        b.get(o..o + 4)
            .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    };
    let shoff = u32_at(0x20).ok_or_else(bad)? as usize;
    let shentsize = u16_at(0x2e).ok_or_else(bad)? as usize;
    let shnum = u16_at(0x30).ok_or_else(bad)? as usize;
    let shstrndx = u16_at(0x32).ok_or_else(bad)? as usize;
    let names = u32_at(shoff + shstrndx * shentsize + 16).ok_or_else(bad)? as usize;
    let name_at = |o: usize| -> &[u8] {
        let s = b.get(names + o..).unwrap_or(&[]);
        &s[..s.iter().position(|&c| c == 0).unwrap_or(s.len())]
    };
    let mut size = Size::default();
    const SHT_NOBITS: u32 = 8;
    const SHF_WRITE: u32 = 1;
    const SHF_ALLOC: u32 = 2;
    const SHF_EXECINSTR: u32 = 4;
    for i in 0..shnum {
        let h = shoff + i * shentsize;
        let (Some(name), Some(kind), Some(flags), Some(len)) =
            (u32_at(h), u32_at(h + 4), u32_at(h + 8), u32_at(h + 20))
        else {
            return Err(bad());
        };
        if flags & SHF_ALLOC == 0 {
            continue;
        }
        let len = u64::from(len);
        if kind == SHT_NOBITS {
            size.bss += len;
        } else if flags & SHF_WRITE != 0 {
            size.data += len;
        } else if flags & SHF_EXECINSTR != 0 || name_at(name as usize) == b".vector_table" {
            size.text += len;
        } else {
            size.rodata += len;
        }
    }
    Ok(size)
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
    let (mut instr, mut arena) = (Vec::new(), 0u64);
    for board in Board::QEMU {
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
                if board == Board::QemuM4 {
                    if let Some(i) = line.split(' ').find_map(|w| w.strip_prefix("instr=")) {
                        instr.push(i.parse::<u64>().unwrap_or(0));
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
        model_bytes: std::fs::metadata(&tvb)?.len(),
        arena_bytes: arena,
    };
    let json = serde_json::to_string_pretty(&run.to_json())?;
    std::fs::write(dir.join("device.json"), json)?;
    Ok(run)
}
