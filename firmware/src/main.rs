//! tinyvit firmware: the distilled TinyViT student on a Cortex-M, replaying host vectors bit for
//! bit.
//!
//! At boot it paints the stack, starts the SysTick instruction counter and checks it against a
//! loop of known length; then it opens the embedded model (`TINYVIT_MODEL`, a `.tvb` read in place
//! from flash) and replays every embedded vector (`TINYVIT_VECTORS`): augmentation from the
//! sample's seed with the core codec, normalisation, the core `exact` engine into a static arena.
//! Each vector prints one line with the hashes the device computed, the instruction count and
//! `ok` when every hash equals the host's, else `MISMATCH`. The run ends with the stack
//! high-water mark and a summary, and exits 0 only when every vector matched.
//!
//! A model or vector file that cannot be read prints `error: model: ...` (or `error: vector
//! file: ...`) and exits with a failure status. A panic or a hard fault, which should never
//! happen since the core returns errors instead of panicking, prints `error: panic: ...` or
//! `error: hard fault at pc=...` and fails too. (Semihosting under QEMU reports every failure as
//! exit status 1; the line says which one it was.)
#![no_std]
#![no_main]

mod counter;
mod hash;
mod out;
mod stack;

use cortex_m_rt::{entry, exception, ExceptionFrame};
use tinyvit_core::aug::{self, AugConfig, ImageMut, ImageRef};
use tinyvit_core::config::ModelConfig;
use tinyvit_core::engine::{self, Weights};
use tinyvit_core::vectors;

/// Prints one line through the board's output ([`out::line`]).
macro_rules! say {
    ($($arg:tt)*) => { $crate::out::line(format_args!($($arg)*)) };
}

/// Flash-resident bytes with the alignment the `.tvb` reader needs for zero-copy f32 access.
#[repr(C, align(16))]
pub struct Aligned<T: ?Sized>(pub T);

// MODEL, VECTORS and the buffer sizes (ARENA_LEN, INPUT_LEN, LOGITS_LEN, VIEW_LEN, SCRATCH_LEN).
include!(concat!(env!("OUT_DIR"), "/payload.rs"));

/// Exit status of a run whose inputs cannot be read, or whose outputs differ from the host's.
const EXIT_FAILED: i32 = 1;

/// The statics the work needs, all sized at build time: nothing is allocated.
struct Buffers {
    arena: &'static mut [f32],
    input: &'static mut [f32],
    logits: &'static mut [f32],
    view: &'static mut [u8],
    scratch: &'static mut [u8],
    source: &'static mut [u8],
}

#[entry]
fn main() -> ! {
    // cortex-m-rt turns these `static mut`s into `&'static mut` owned by `main` alone. They are
    // zero-initialised, so they live in `.bss` and cost no flash.
    static mut ARENA: [f32; ARENA_LEN] = [0.0; ARENA_LEN];
    static mut INPUT: [f32; INPUT_LEN] = [0.0; INPUT_LEN];
    static mut LOGITS: [f32; LOGITS_LEN] = [0.0; LOGITS_LEN];
    static mut VIEW: [u8; VIEW_LEN] = [0; VIEW_LEN];
    static mut SCRATCH: [u8; SCRATCH_LEN] = [0; SCRATCH_LEN];
    static mut SOURCE: [u8; SOURCE_LEN] = [0; SOURCE_LEN];

    stack::paint();
    let Some(cp) = cortex_m::Peripherals::take() else {
        say!("error: core peripherals already taken");
        out::exit(EXIT_FAILED);
    };
    let cpuid = cp.CPUID.base.read();
    counter::start(cp.SYST);
    let cpu = match (cpuid >> 4) & 0xfff {
        0xc24 => "cortex-m4",
        0xc27 => "cortex-m7",
        _ => "unknown",
    };
    say!("tinyvit-firmware cpu={cpu} cpuid={cpuid:#010x}");
    counter_check();
    // The device's hash must be the host's: pin it on a known string, against the core's too.
    let fnv = hash::Fnv::new().bytes(b"tinyvit").finish();
    if fnv != hash::TINYVIT_FNV || aug::fnv1a64(b"tinyvit") != fnv {
        say!("error: FNV-1a self-check failed ({fnv:#018x})");
        out::exit(EXIT_FAILED);
    }

    let buffers = Buffers {
        arena: ARENA,
        input: INPUT,
        logits: LOGITS,
        view: VIEW,
        scratch: SCRATCH,
        source: SOURCE,
    };
    let code = match run(buffers) {
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
    let tolerance = 2 * counter::INSTRUCTIONS_PER_TICK + 16;
    if cfg!(feature = "qemu") {
        let verdict = if measured.abs_diff(expected) <= tolerance {
            "exact"
        } else {
            "NOT instruction-exact (run QEMU with -icount shift=0)"
        };
        say!(
            "counter: loop of {expected} instructions measured {}={measured}: {verdict} to {} instructions",
            counter::UNIT,
            counter::INSTRUCTIONS_PER_TICK
        );
    } else {
        say!(
            "counter: loop of {expected} instructions took {}={measured}",
            counter::UNIT
        );
    }
}

/// Everything after boot; `Err` carries the exit status of a run that could not go on.
fn run(mut b: Buffers) -> Result<i32, i32> {
    let model = match MODEL {
        // black_box: the blob is read at run time from flash, as a blob written by a flasher
        // would be; without it LTO may evaluate the header checks of a constant at build time
        // and drop a blob it proved unreadable.
        Some(blob) => Some(open_model(core::hint::black_box(&blob.0), &b)?),
        None => {
            say!("model: none embedded");
            None
        }
    };
    if let Some(m) = &model {
        cost_only(m, &mut b)?;
    }
    let Some(bytes) = VECTORS else {
        say!("vectors: none embedded");
        finish(0, 0);
        return Ok(0);
    };
    let vectors = vectors::Vectors::parse(core::hint::black_box(&bytes.0)).map_err(|e| {
        say!("error: {e}");
        EXIT_FAILED
    })?;
    say!("vectors: {}", vectors.len());
    let (mut ok, mut bad) = (0u32, 0u32);
    for (i, v) in vectors.iter().enumerate() {
        let v = v.map_err(|e| {
            say!("error: {e}");
            EXIT_FAILED
        })?;
        if replay_one(i, &v, model.as_ref(), &mut b) {
            ok += 1;
        } else {
            bad += 1;
        }
    }
    finish(ok, bad);
    Ok(if bad == 0 { 0 } else { EXIT_FAILED })
}

/// One inference on the all-zero (mean-grey) input, to report what the model alone costs on this
/// board: instructions and stack depth of the engine without the replay harness around it.
fn cost_only(m: &Model, b: &mut Buffers) -> Result<(), i32> {
    b.input.fill(0.0);
    stack::paint();
    let (r, instr) = counter::measure(|| engine::forward(&m.weights, b.input, b.arena, b.logits));
    let stack_used = stack::high_water();
    r.map_err(|e| {
        say!("error: engine: {e}");
        EXIT_FAILED
    })?;
    say!(
        "cost: zero input class={} logits={:#018x} {}={instr} stack={stack_used}",
        argmax(b.logits),
        hash::Fnv::new().f32s(b.logits).finish(),
        counter::UNIT
    );
    Ok(())
}

fn finish(ok: u32, bad: u32) {
    say!("stack: hwm={} bytes", stack::high_water());
    say!("summary: {} vectors, {ok} ok, {bad} mismatched", ok + bad);
}

/// The embedded model, opened in place.
struct Model {
    weights: Weights<'static>,
}

impl Model {
    fn config(&self) -> &ModelConfig {
        self.weights.config()
    }
}

/// Opens the `.tvb` in flash: header, checksum, sizes; then checks the static buffers fit it.
fn open_model(blob: &'static [u8], b: &Buffers) -> Result<Model, i32> {
    let weights = tinyvit_core::tvb::parse(blob)
        .and_then(|t| t.weights())
        .map_err(|e| {
            say!("error: model: {e}");
            EXIT_FAILED
        })?;
    let cfg = *weights.config();
    let arena = engine::arena_len(&cfg).map_err(|e| {
        say!("error: model: {e}");
        EXIT_FAILED
    })?;
    // The buffers were sized from this very blob's header at build time; a blob that changed
    // since (or whose header was unreadable then) does not fit them.
    if arena > b.arena.len()
        || engine::input_len(&cfg).ok() != Some(b.input.len())
        || cfg.num_classes as usize != b.logits.len()
    {
        say!(
            "error: model: needs an arena of {arena} f32, {} inputs, {} logits; the firmware was built with {}, {}, {}",
            engine::input_len(&cfg).unwrap_or(0),
            cfg.num_classes,
            b.arena.len(),
            b.input.len(),
            b.logits.len()
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
        arena * 4
    );
    Ok(Model { weights })
}

/// Index of the largest logit, the lowest index on ties (plain comparisons, as the host does).
fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// What one vector produced on the device.
#[derive(Default)]
struct Outcome {
    size: Option<u32>,
    image: Option<u64>,
    logits: Option<u64>,
    class: Option<u32>,
    aug_instr: Option<u64>,
    instr: Option<u64>,
}

/// Replays vector `i`, prints its line and says whether it matched the host.
fn replay_one(i: usize, v: &vectors::Vector<'_>, model: Option<&Model>, b: &mut Buffers) -> bool {
    let name = match v.kind {
        vectors::Kind::View => "view",
        vectors::Kind::Infer => "infer",
        vectors::Kind::Eval => "eval",
        vectors::Kind::EvalView => "evalview",
    };
    let mut o = Outcome::default();
    // Paint again so that the high-water mark is this vector's own.
    stack::paint();
    let result = replay_into(v, model, b, &mut o);
    let stack_used = stack::high_water();
    let mut line = out::Buf::<256>::new();
    use core::fmt::Write;
    let _ = write!(
        line,
        "{name} {i} seed={:#010x} src={}x{}x{}",
        v.seed, v.width, v.height, v.channels
    );
    if let Some(s) = o.size {
        let _ = write!(line, " size={s}");
    }
    if let Some(h) = o.image {
        let _ = write!(line, " image={h:#018x}");
    }
    if let Some(c) = o.class {
        let _ = write!(line, " class={c}");
    }
    if let Some(h) = o.logits {
        let _ = write!(line, " logits={h:#018x}");
    }
    if let Some(n) = o.aug_instr {
        let _ = write!(line, " aug_{}={n}", counter::UNIT);
    }
    if let Some(n) = o.instr {
        let _ = write!(line, " {}={n}", counter::UNIT);
    }
    let _ = write!(line, " stack={stack_used}");
    let matched = match result {
        Err(e) => {
            let _ = write!(line, " error: {e}");
            false
        }
        Ok(()) => {
            let image_ok = o.image == Some(v.image_hash);
            let infer_ok = v.kind == vectors::Kind::View
                || (o.logits == Some(v.logits_hash) && o.class == Some(v.class));
            if image_ok && infer_ok {
                let _ = write!(line, " ok");
                true
            } else {
                let _ = write!(line, " MISMATCH host: image={:#018x}", v.image_hash);
                if v.kind != vectors::Kind::View {
                    let _ = write!(line, " class={} logits={:#018x}", v.class, v.logits_hash);
                }
                false
            }
        }
    };
    say!("{}", line.as_str());
    matched
}

/// A failure of one vector, printed on its line.
enum VectorFailure {
    Cfg,
    Aug(aug::AugError),
    Engine(engine::EngineError),
    NoModel,
    Shape,
    Buffer,
}

impl core::fmt::Display for VectorFailure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            VectorFailure::Cfg => write!(f, "augmentation config does not decode"),
            VectorFailure::Aug(e) => write!(f, "augmentation: {e}"),
            VectorFailure::Engine(e) => write!(f, "engine: {e}"),
            VectorFailure::NoModel => write!(f, "an inference vector needs a model"),
            VectorFailure::Shape => write!(f, "image does not match the model's input"),
            VectorFailure::Buffer => write!(f, "static buffers too small (rebuild)"),
        }
    }
}

fn replay_into(
    v: &vectors::Vector<'_>,
    model: Option<&Model>,
    b: &mut Buffers,
    o: &mut Outcome,
) -> Result<(), VectorFailure> {
    let cfg: AugConfig = postcard::from_bytes(v.cfg).map_err(|_| VectorFailure::Cfg)?;
    if v.kind != vectors::Kind::Eval {
        o.size = Some(cfg.size);
    }
    let pixels: &[u8] = if v.pattern {
        let n = aug::image_len(v.width, v.height, v.channels).map_err(VectorFailure::Aug)?;
        let buf = b.source.get_mut(..n).ok_or(VectorFailure::Buffer)?;
        aug::test_pattern(v.width, v.height, v.channels, buf).map_err(VectorFailure::Aug)?;
        &b.source[..n]
    } else {
        v.pixels
    };
    let src = ImageRef::new(v.width, v.height, v.channels, pixels).map_err(VectorFailure::Aug)?;
    // The u8 image the model sees: the replayed view, or the source itself.
    let image: ImageRef<'_> = match v.kind {
        vectors::Kind::View | vectors::Kind::Infer => {
            let n = aug::image_len(cfg.size, cfg.size, v.channels).map_err(VectorFailure::Aug)?;
            let view = b.view.get_mut(..n).ok_or(VectorFailure::Buffer)?;
            let scratch = &mut *b.scratch;
            let (r, instr) = counter::measure(|| {
                let out = ImageMut::new(cfg.size, cfg.size, v.channels, view)?;
                aug::replay(&cfg, v.seed, src, out, scratch)
            });
            r.map_err(VectorFailure::Aug)?;
            o.aug_instr = Some(instr);
            let view = &b.view[..n];
            o.image = Some(aug::fnv1a64(view));
            ImageRef::new(cfg.size, cfg.size, v.channels, view).map_err(VectorFailure::Aug)?
        }
        vectors::Kind::Eval => {
            o.image = Some(aug::fnv1a64(pixels));
            src
        }
        vectors::Kind::EvalView => {
            let n = aug::image_len(cfg.size, cfg.size, v.channels).map_err(VectorFailure::Aug)?;
            let view = b.view.get_mut(..n).ok_or(VectorFailure::Buffer)?;
            let scratch = &mut *b.scratch;
            let (r, instr) = counter::measure(|| {
                let out = ImageMut::new(cfg.size, cfg.size, v.channels, view)?;
                aug::eval_transform(src, out, vectors::EVAL_CROP_PCT, cfg.interpolation, scratch)
            });
            r.map_err(VectorFailure::Aug)?;
            o.aug_instr = Some(instr);
            let view = &b.view[..n];
            o.image = Some(aug::fnv1a64(view));
            ImageRef::new(cfg.size, cfg.size, v.channels, view).map_err(VectorFailure::Aug)?
        }
    };
    if v.kind == vectors::Kind::View {
        return Ok(());
    }
    let model = model.ok_or(VectorFailure::NoModel)?;
    let mc = model.config();
    if image.width != mc.img_size || image.height != mc.img_size || image.channels != mc.in_chans {
        return Err(VectorFailure::Shape);
    }
    aug::normalize(image, cfg.mean, cfg.std, b.input).map_err(VectorFailure::Aug)?;
    let (r, instr) =
        counter::measure(|| engine::forward(&model.weights, b.input, b.arena, b.logits));
    r.map_err(VectorFailure::Engine)?;
    o.instr = Some(instr);
    o.logits = Some(hash::Fnv::new().f32s(b.logits).finish());
    o.class = Some(argmax(b.logits));
    Ok(())
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
