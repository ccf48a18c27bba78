//! Counting instructions (QEMU) or cycles (a real board) around a piece of work.
//!
//! QEMU run with `-icount shift=0` advances its virtual clock by exactly 1 ns per executed guest
//! instruction, and the Cortex-M SysTick, clocked from the core clock, counts that virtual time.
//! On the MPS2 boards the core clock is 25 MHz, so one SysTick tick is 40 ns = 40 instructions;
//! [`INSTRUCTIONS_PER_TICK`] holds that factor and `selftest` checks it against a loop of known
//! length at every boot. SysTick is 24 bits wide: it runs at maximum reload and its wrap exception
//! extends it to 64 bits.
//!
//! On a real board the same counter counts core clock cycles (SysTick at the CPU clock); the
//! firmware labels those figures `cycles` rather than `instr`.

use core::sync::atomic::{AtomicU32, Ordering};

use cortex_m::peripheral::syst::SystClkSource;
use cortex_m::peripheral::SYST;
use cortex_m_rt::exception;

/// Largest SysTick reload value (24 bits).
const RELOAD: u32 = 0x00ff_ffff;

/// Instructions per SysTick tick under QEMU `-icount shift=0` on MPS2 (25 MHz core clock).
#[cfg(feature = "qemu")]
pub const INSTRUCTIONS_PER_TICK: u64 = 40;
/// On a real board a tick is a core clock cycle.
#[cfg(not(feature = "qemu"))]
pub const INSTRUCTIONS_PER_TICK: u64 = 1;

/// What a count means on this board.
#[cfg(feature = "qemu")]
pub const UNIT: &str = "instr";
#[cfg(not(feature = "qemu"))]
pub const UNIT: &str = "cycles";

static WRAPS: AtomicU32 = AtomicU32::new(0);

#[exception]
fn SysTick() {
    WRAPS.fetch_add(1, Ordering::Relaxed);
}

/// Starts SysTick free-running at maximum reload from the core clock, with its wrap interrupt.
pub fn start(mut syst: SYST) {
    syst.set_clock_source(SystClkSource::Core);
    syst.set_reload(RELOAD);
    syst.clear_current();
    syst.enable_interrupt();
    syst.enable_counter();
}

/// Ticks since [`start`], extended to 64 bits.
pub fn ticks() -> u64 {
    loop {
        let before = WRAPS.load(Ordering::Acquire);
        let current = SYST::get_current();
        let after = WRAPS.load(Ordering::Acquire);
        // A wrap between the two reads makes `current` and `before` disagree: read again.
        if before == after {
            return u64::from(before) * (u64::from(RELOAD) + 1) + u64::from(RELOAD - current);
        }
    }
}

/// Instructions (QEMU) or cycles (board) spent in `f`, with the measurement's own cost removed,
/// to a resolution of [`INSTRUCTIONS_PER_TICK`].
pub fn measure<R>(f: impl FnOnce() -> R) -> (R, u64) {
    let t0 = ticks();
    let r = f();
    let t1 = ticks();
    (r, (t1 - t0) * INSTRUCTIONS_PER_TICK)
}

/// Runs exactly `2 * n + 1` instructions (a `subs`/`bne` loop and one `movs`), so that the
/// instruction count can be checked against something known.
#[inline(never)]
pub fn known_loop(n: u32) {
    let n = n.max(1);
    // SAFETY: pure register arithmetic on a local, no memory access, no stack change.
    unsafe {
        core::arch::asm!(
            "movs {n}, {n}",
            "2:",
            "subs {n}, #1",
            "bne 2b",
            n = inout(reg) n => _,
            options(nomem, nostack),
        );
    }
}
