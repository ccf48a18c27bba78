//! tinyvit firmware: the distilled TinyViT student on a Cortex-M, replaying host vectors bit for
//! bit. Thin glue around the core: the board's bring-up, the static buffers, the output.
//!
//! At boot it paints the stack, starts the counter (SysTick instructions under QEMU, DWT cycles
//! on a board), brings the board up (`board`: clocks, caches) and checks the counter against a
//! loop of known length; then it opens the embedded model (`TINYVIT_MODEL`, a `.tvb` read in
//! place from flash) and replays every embedded vector (`TINYVIT_VECTORS`) with the core's
//! `vectors::replay`, the same function that computed the host's expected values. Each vector
//! prints one line with the hashes the device computed, the instruction (or cycle) counts and
//! `ok` when they equal the host's, else `MISMATCH`. The run ends with the stack high-water mark
//! and a summary, and exits 0 only when every vector matched.
//!
//! The model's format version picks the engine: the exact f32 engine (version 1) or the
//! integer-only int8 engine (version 2, `tinyvit_core::int8`); both read the model in place
//! from flash over a static arena sized at build time.
//!
//! A model or vector file that cannot be read prints `error: model: ...` (or `error: vector
//! file: ...`) and exits with a failure status. A panic or a hard fault, which should never
//! happen since the core returns errors instead of panicking, prints `error: panic: ...` or
//! `error: hard fault at pc=...` and fails too. (Semihosting under QEMU reports every failure as
//! exit status 1; the line says which one it was.)
#![no_std]
#![no_main]

/// Prints one line through the board's output ([`out::line`]).
macro_rules! say {
    ($($arg:tt)*) => { $crate::out::line(format_args!($($arg)*)) };
}

mod board;
mod clocks;
mod counter;
mod out;
mod stack;

use core::fmt::Write;

use cortex_m_rt::{entry, exception, ExceptionFrame};
use tinyvit_core::aug::Fnv64;
use tinyvit_core::engine::{self, Weights};
use tinyvit_core::tvb;
use tinyvit_core::vectors::{self, Classifier, Exact, Kind, Meter, Outcome, Stage};
#[cfg(tinyvit_engine = "int8")]
use tinyvit_core::{int8, vectors::Int8};

/// Flash-resident bytes with the alignment the `.tvb` reader needs for zero-copy f32 access.
#[repr(C, align(16))]
pub struct Aligned<T: ?Sized>(pub T);

// MODEL, VECTORS, the buffer sizes (ARENA_LEN, ARENA_I32_LEN, INPUT_LEN, INPUT_I8_LEN,
// LOGITS_LEN, VIEW_LEN, SCRATCH_LEN, SOURCE_LEN) and RAM_REGION, all from the build script.
include!(concat!(env!("OUT_DIR"), "/payload.rs"));

/// Exit status of a run whose inputs cannot be read, or whose outputs differ from the host's.
const EXIT_FAILED: i32 = 1;
/// FNV-1a 64 of "tinyvit", pinned: the device's hash must be the host's.
const TINYVIT_FNV: u64 = 0x0a52_9f3e_e27c_ea9a;

/// The statics the work needs, all sized at build time: nothing is allocated.
struct Buffers {
    arena: &'static mut [f32],
    input: &'static mut [f32],
    logits: &'static mut [f32],
    /// The int8 engine's arena, quantised input and `i32` logits (empty for an f32 model).
    arena_i32: &'static mut [i32],
    input_i8: &'static mut [i8],
    logits_i32: &'static mut [i32],
    view: &'static mut [u8],
    scratch: &'static mut [u8],
    source: &'static mut [u8],
}

// cortex-m-rt passes each `static mut` below to the function as an argument.
#[allow(clippy::too_many_arguments)]
#[entry]
fn main() -> ! {
    // cortex-m-rt turns these `static mut`s into `&'static mut` owned by `main` alone. They are
    // zero-initialised, so they live in `.bss` (in the RAM the build chose) and cost no flash.
    static mut ARENA: [f32; ARENA_LEN] = [0.0; ARENA_LEN];
    static mut INPUT: [f32; INPUT_LEN] = [0.0; INPUT_LEN];
    static mut LOGITS: [f32; LOGITS_LEN] = [0.0; LOGITS_LEN];
    static mut ARENA_I32: [i32; ARENA_I32_LEN] = [0; ARENA_I32_LEN];
    static mut INPUT_I8: [i8; INPUT_I8_LEN] = [0; INPUT_I8_LEN];
    static mut LOGITS_I32: [i32; LOGITS_LEN] = [0; LOGITS_LEN];
    static mut VIEW: [u8; VIEW_LEN] = [0; VIEW_LEN];
    static mut SCRATCH: [u8; SCRATCH_LEN] = [0; SCRATCH_LEN];
    static mut SOURCE: [u8; SOURCE_LEN] = [0; SOURCE_LEN];

    stack::paint();
    let Some(mut cp) = cortex_m::Peripherals::take() else {
        say!("error: core peripherals already taken");
        out::exit(EXIT_FAILED);
    };
    let cpuid = cp.CPUID.base.read();
    counter::start(&mut cp);
    let cpu = match (cpuid >> 4) & 0xfff {
        0xc24 => "cortex-m4",
        0xc27 => "cortex-m7",
        _ => "unknown",
    };
    say!("tinyvit-firmware cpu={cpu} cpuid={cpuid:#010x}");
    let Ok(plan) = board::init(&mut cp) else {
        out::exit(EXIT_FAILED);
    };
    if !cfg!(feature = "qemu") {
        board::memory_line();
    }
    counter_check();
    let fnv = Fnv64::new().bytes(b"tiny").bytes(b"vit").finish();
    if fnv != TINYVIT_FNV {
        say!("error: FNV-1a self-check failed ({fnv:#018x})");
        out::exit(EXIT_FAILED);
    }

    let buffers = Buffers {
        arena: ARENA,
        input: INPUT,
        logits: LOGITS,
        arena_i32: ARENA_I32,
        input_i8: INPUT_I8,
        logits_i32: LOGITS_I32,
        view: VIEW,
        scratch: SCRATCH,
        source: SOURCE,
    };
    let code = match run(buffers, plan) {
        Ok(code) => code,
        Err(code) => code,
    };
    out::exit(code)
}

/// Checks the counter against a loop of known length and says how exact it is.
fn counter_check() {
    const N: u32 = 1_000_000;
    let ((), measured) = counter::measure(|| counter::known_loop(N));
    let expected = 2 * u64::from(N) + 1;
    let tolerance = 2 * counter::RESOLUTION + 16;
    if cfg!(feature = "hardware") {
        say!(
            "counter: loop of {expected} instructions took {}={measured}",
            counter::UNIT
        );
    } else {
        let verdict = if measured.abs_diff(expected) <= tolerance {
            "exact"
        } else {
            "NOT instruction-exact (run QEMU with -icount shift=0)"
        };
        say!(
            "counter: loop of {expected} instructions measured {}={measured}: {verdict} to {} instructions",
            counter::UNIT,
            counter::RESOLUTION
        );
    }
}

/// Everything after boot; `Err` carries the exit status of a run that could not go on.
fn run(b: Buffers, plan: Option<&'static clocks::Plan>) -> Result<i32, i32> {
    let Buffers {
        arena,
        input,
        logits,
        arena_i32,
        input_i8,
        logits_i32,
        view,
        scratch,
        source,
    } = b;
    let fail = |e: &dyn core::fmt::Display| {
        say!("error: model: {e}");
        EXIT_FAILED
    };
    // The one place an engine is chosen, by the blob's format version: the exact f32 engine
    // (version 1) or the int8 engine (version 4), each over its static arena. The int8 arms are
    // compiled only into a build whose blob is int8 (or unreadable), so that an f32 build
    // carries no int8 code (the f32 M4 preset with its vectors fills the F405's 1 MB).
    let mut weights = None;
    #[cfg(tinyvit_engine = "int8")]
    let mut quant: Option<int8::Model<'static>> = None;
    #[cfg(not(tinyvit_engine = "int8"))]
    let _ = (arena_i32, input_i8, logits_i32);
    match MODEL {
        // black_box: the blob is read at run time from flash, as a blob written by a flasher
        // would be; without it LTO may evaluate the header checks of a constant at build time
        // and drop a blob it proved unreadable.
        Some(blob) => {
            let blob = core::hint::black_box(&blob.0);
            // The build compiled in only the engine of the blob it embedded (`tinyvit_engine`,
            // both when it could not read the blob); a blob of the other kind cannot run.
            match tvb::kind(blob).map_err(|e| fail(&e))? {
                tvb::Kind::F32 if cfg!(tinyvit_engine = "f32") => {
                    weights = Some(open_model(blob, arena, input)?)
                }
                #[cfg(tinyvit_engine = "int8")]
                tvb::Kind::Int8 => {
                    let m = open_int8(blob, arena_i32, input)?;
                    kernel_bench(m.data(), arena_i32);
                    quant = Some(m)
                }
                kind => {
                    let what = if kind == tvb::Kind::F32 {
                        "an f32"
                    } else {
                        "an int8"
                    };
                    say!("error: model: {what} model, and this firmware was built without its engine");
                    return Err(EXIT_FAILED);
                }
            }
        }
        None => say!("model: none embedded"),
    }
    let mut exact = None;
    #[cfg(tinyvit_engine = "int8")]
    let mut int8: Option<Int8<'_, '_>> = None;
    if let Some(w) = &weights {
        exact = Some(Exact::new(w, arena, logits).map_err(|e| fail(&e))?);
    } else {
        #[cfg(tinyvit_engine = "int8")]
        if let Some(m) = &quant {
            let i = Int8::new(m, input_i8, arena_i32, logits_i32, logits).map_err(|e| fail(&e))?;
            int8 = Some(i);
        }
    }
    // The int8 classifier's vtable, and with it the int8 engine, only in an int8 build.
    #[cfg_attr(not(tinyvit_engine = "int8"), allow(unused_mut))]
    let mut model: Option<&mut dyn Classifier> = exact.as_mut().map(|m| m as &mut dyn Classifier);
    #[cfg(tinyvit_engine = "int8")]
    if let Some(m) = int8.as_mut() {
        model = Some(m);
    }
    if let Some(m) = &mut model {
        cost_only(&mut **m, input, plan)?;
    }
    let Some(bytes) = VECTORS else {
        say!("vectors: none embedded");
        finish(0, 0);
        return Ok(0);
    };
    let file = vectors::Vectors::parse(core::hint::black_box(&bytes.0)).map_err(|e| {
        say!("error: {e}");
        EXIT_FAILED
    })?;
    say!("vectors: {}", file.len());
    let mut bufs = vectors::Buffers {
        view,
        scratch,
        source,
        input,
    };
    let (mut ok, mut bad) = (0u32, 0u32);
    for (i, v) in file.iter().enumerate() {
        let v = v.map_err(|e| {
            say!("error: {e}");
            EXIT_FAILED
        })?;
        let model = model.as_mut().map(|m| &mut **m as &mut dyn Classifier);
        if replay_one(i, &v, model, &mut bufs) {
            ok += 1;
        } else {
            bad += 1;
        }
    }
    finish(ok, bad);
    Ok(if bad == 0 { 0 } else { EXIT_FAILED })
}

/// Opens the `.tvb` in flash (header, checksum, sizes) and checks that the static buffers, sized
/// at build time from this very blob's header, fit it: a blob that changed since (or whose
/// header was unreadable then) does not.
fn open_model(blob: &'static [u8], arena: &[f32], input: &[f32]) -> Result<Weights<'static>, i32> {
    let fail = |e: &dyn core::fmt::Display| {
        say!("error: model: {e}");
        EXIT_FAILED
    };
    let weights = tinyvit_core::tvb::parse(blob)
        .and_then(|t| t.weights())
        .map_err(|e| fail(&e))?;
    let cfg = *weights.config();
    let need = engine::arena_len(&cfg).map_err(|e| fail(&e))?;
    if need > arena.len()
        || engine::input_len(&cfg).ok() != Some(input.len())
        || cfg.num_classes as usize != LOGITS_LEN
    {
        say!(
            "error: model: needs an arena of {need} f32, {} inputs, {} logits; the firmware was built with {}, {}, {}",
            engine::input_len(&cfg).unwrap_or(0),
            cfg.num_classes,
            arena.len(),
            input.len(),
            LOGITS_LEN
        );
        return Err(EXIT_FAILED);
    }
    say!(
        "model: img={} in_chans={} classes={} embed={:?} depths={} weights={} bytes arena={} bytes",
        cfg.img_size,
        cfg.in_chans,
        cfg.num_classes,
        cfg.embed_dims,
        cfg.total_blocks(),
        weights.blob().len() * 4,
        need * 4
    );
    Ok(weights)
}

#[cfg(tinyvit_engine = "int8")]
/// Opens the int8 `.tvb` in flash ([`int8::parse`]: header, checksums, sizes, every multiplier)
/// and checks it against the static buffers, as [`open_model`] does for an f32 blob.
fn open_int8(
    blob: &'static [u8],
    arena: &[i32],
    input: &[f32],
) -> Result<int8::Model<'static>, i32> {
    let fail = |e: &dyn core::fmt::Display| {
        say!("error: model: {e}");
        EXIT_FAILED
    };
    let model = int8::parse(blob).map_err(|e| fail(&e))?;
    let cfg = *model.config();
    let need = int8::arena_len(&cfg).map_err(|e| fail(&e))?;
    let n_in = engine::input_len(&cfg).unwrap_or(0);
    if need > arena.len()
        || n_in != input.len()
        || n_in != INPUT_I8_LEN
        || cfg.num_classes as usize != LOGITS_LEN
    {
        say!(
            "error: model: int8 model needs an arena of {need} i32, {n_in} inputs, {} logits; the firmware was built with {}, {}, {}",
            cfg.num_classes,
            arena.len(),
            input.len(),
            LOGITS_LEN
        );
        return Err(EXIT_FAILED);
    }
    say!(
        "model: int8 img={} in_chans={} classes={} embed={:?} depths={} weights={} bytes arena={} bytes",
        cfg.img_size,
        cfg.in_chans,
        cfg.num_classes,
        cfg.embed_dims,
        cfg.total_blocks(),
        model.data().len(),
        need * 4
    );
    Ok(model)
}

/// Fan-in and rows of the matrix kernel benchmark.
#[cfg(tinyvit_engine = "int8")]
const BENCH_K: usize = 256;
#[cfg(tinyvit_engine = "int8")]
const BENCH_ROWS: usize = 64;

/// The int8 matrix kernels alone, as the engine calls them (`int8::ops::mat::probe_pair` and
/// `probe_single`): `BENCH_ROWS x BENCH_K` weights (the model's first bytes, read in place
/// from flash) times two vectors (their lanes prepared once, timed apart), then times one;
/// prints `kernel: int8 pair|single macs=N instr=N` (cycles on a board; the pair line also
/// `kernel_instr=` and `prepare_instr=`). The arena, not yet in use, holds the vectors and the
/// prepared lanes.
#[cfg(tinyvit_engine = "int8")]
fn kernel_bench(data: &[u8], arena: &mut [i32]) {
    use tinyvit_core::int8::ops::mat;
    let n = BENCH_ROWS * BENCH_K;
    let words = 2 * BENCH_K / 4 + mat::pair_words(BENCH_K);
    if data.len() < n + 4 * BENCH_ROWS || arena.len() < words {
        say!("kernel: model or arena too small for the kernel benchmark");
        return;
    }
    let (w, b) = (&data[..n], &data[n..n + 4 * BENCH_ROWS]);
    let (xy, prep) = arena[..words].split_at_mut(2 * BENCH_K / 4);
    let xy: &mut [i8] = bytemuck::cast_slice_mut(xy);
    for (i, v) in xy.iter_mut().enumerate() {
        // Any values in [-127, 127] (the engine's activation range).
        *v = ((i * 37) % 255) as i8;
        if *v == i8::MIN {
            *v = 0;
        }
    }
    let (x, y) = xy.split_at(BENCH_K);
    let prep: &mut [u32] = bytemuck::cast_slice_mut(prep);
    // The assembly against the portable sums on this core, for every group count modulo 8.
    if let Err(k) = mat::self_check(w, b, x, y, prep) {
        say!("error: kernel: the DSP matrix kernels disagree with the portable sum at fan-in {k}");
        out::exit(EXIT_FAILED);
    }
    say!("kernel: self-check ok (fan-ins 4 to 64 and {BENCH_K})");
    // The depthwise sums, on the model's bytes as pixels and weights.
    if let Err(c) = tinyvit_core::int8::dw::self_check(data) {
        say!("error: kernel: the DSP depthwise sums disagree with the portable sum at stride {c}");
        out::exit(EXIT_FAILED);
    }
    say!("kernel: depthwise self-check ok");
    let (p, prepare) = counter::measure(|| mat::prepare_pair(x, y, prep));
    let (sum, kernel) = counter::measure(|| mat::probe_pair(w, b, &p));
    say!(
        "kernel: int8 pair macs={} {unit}={} kernel_{unit}={kernel} prepare_{unit}={prepare} sum={sum}",
        2 * n,
        prepare + kernel,
        unit = counter::UNIT
    );
    let (sum, count) = counter::measure(|| mat::probe_single(w, b, x, prep));
    say!(
        "kernel: int8 single macs={n} {}={count} sum={sum}",
        counter::UNIT
    );
}

/// One inference on the all-zero (mean-grey) input, to report what the model alone costs on this
/// board: instructions (cycles on a board) and stack depth of the engine without the replay
/// harness around it. On a board with a clock plan it also gives the time per inference.
fn cost_only(
    m: &mut dyn Classifier,
    input: &mut [f32],
    plan: Option<&'static clocks::Plan>,
) -> Result<(), i32> {
    input.fill(0.0);
    stack::paint();
    let (r, count) = counter::measure(|| m.classify(input).map(|l| (vectors::argmax(l), l)));
    let stack_used = stack::high_water();
    let (class, logits) = r.map_err(|e| {
        say!("error: engine: {e}");
        EXIT_FAILED
    })?;
    say!(
        "cost: zero input class={class} logits={:#018x} {}={count} stack={stack_used}",
        vectors::logits_hash(logits),
        counter::UNIT
    );
    if let (Some(p), true) = (plan, cfg!(feature = "hardware")) {
        let us = p.nanos(count) / 1000;
        say!(
            "latency: {count} cycles per inference at {} MHz = {}.{:03} ms",
            p.sys_hz / 1_000_000,
            us / 1000,
            us % 1000
        );
    }
    Ok(())
}

fn finish(ok: u32, bad: u32) {
    say!("stack: hwm={} bytes", stack::high_water());
    say!("summary: {} vectors, {ok} ok, {bad} mismatched", ok + bad);
}

/// The counts of one replay's stages.
#[derive(Default)]
struct Counts {
    transform: Option<u64>,
    inference: Option<u64>,
}

impl Meter for Counts {
    fn measure<R>(&mut self, stage: Stage, f: impl FnOnce() -> R) -> R {
        let (r, n) = counter::measure(f);
        match stage {
            Stage::Transform => self.transform = Some(n),
            Stage::Inference => self.inference = Some(n),
        }
        r
    }
}

/// Replays vector `i`, prints its line and says whether it matched the host.
fn replay_one(
    i: usize,
    v: &vectors::Vector<'_>,
    model: Option<&mut dyn Classifier>,
    b: &mut vectors::Buffers<'_>,
) -> bool {
    let name = match v.kind {
        Kind::View => "view",
        Kind::Infer => "infer",
        Kind::Eval => "eval",
        Kind::EvalView => "evalview",
    };
    let mut o = Outcome::default();
    let mut counts = Counts::default();
    // Paint again so that the high-water mark is this vector's own.
    stack::paint();
    let result = v
        .input()
        .and_then(|input| vectors::replay(&input, model, b, &mut counts, &mut o));
    let stack_used = stack::high_water();
    let mut line = out::Buf::<256>::new();
    let _ = write!(
        line,
        "{name} {i} seed={:#010x} src={}x{}x{}",
        v.seed, v.width, v.height, v.channels
    );
    if let Some(s) = o.size {
        let _ = write!(line, " size={s}");
    }
    if let Some(h) = o.image_hash {
        let _ = write!(line, " image={h:#018x}");
    }
    if let Some(c) = o.class {
        let _ = write!(line, " class={c}");
    }
    if let Some(h) = o.logits_hash {
        let _ = write!(line, " logits={h:#018x}");
    }
    if let Some(n) = counts.transform {
        let _ = write!(line, " aug_{}={n}", counter::UNIT);
    }
    if let Some(n) = counts.inference {
        let _ = write!(line, " {}={n}", counter::UNIT);
    }
    let _ = write!(line, " stack={stack_used}");
    let matched = match result {
        Err(e) => {
            let _ = write!(line, " error: {e}");
            false
        }
        Ok(()) if v.matches(&o) => {
            let _ = write!(line, " ok");
            true
        }
        Ok(()) => {
            let _ = write!(line, " MISMATCH host: image={:#018x}", v.image_hash);
            if v.kind != Kind::View {
                let _ = write!(line, " class={} logits={:#018x}", v.class, v.logits_hash);
            }
            false
        }
    };
    say!("{}", line.as_str());
    matched
}

#[exception]
unsafe fn HardFault(ef: &ExceptionFrame) -> ! {
    say!(
        "error: hard fault at pc={:#010x} lr={:#010x}",
        ef.pc(),
        ef.lr()
    );
    out::exit(3)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    say!("error: panic: {info}");
    out::exit(2)
}
