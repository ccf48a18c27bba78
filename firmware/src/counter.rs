//! Counting instructions (QEMU) or cycles (a real board) around a piece of work.
//!
//! Under QEMU run with `-icount shift=0` the virtual clock advances by exactly 1 ns per executed
//! guest instruction, and the Cortex-M SysTick, clocked from the core clock, counts that virtual
//! time: one tick is [`TICK_NS`] instructions as a fraction (40 on the MPS2 machines, whose core
//! clock is 25 MHz; 1000/168 on `netduinoplus2`, whose model runs at 168 MHz). SysTick is 24 bits
//! wide: it runs at maximum reload and its wrap exception extends it to 64 bits. `selftest`-style
//! checks at every boot compare it with a loop of known length.
//!
//! On a real board (`hardware`) the DWT cycle counter counts core clock cycles: 32 bits, so one
//! measurement must stay under 2^32 cycles (8.9 s at 480 MHz, 25 s at 168 MHz); the firmware
//! labels those figures `cycles` rather than `instr`.

/// What a count means on this board.
#[cfg(not(feature = "hardware"))]
pub const UNIT: &str = "instr";
#[cfg(feature = "hardware")]
pub const UNIT: &str = "cycles";

#[cfg(not(feature = "hardware"))]
mod imp {
    use core::sync::atomic::{AtomicU32, Ordering};

    use cortex_m::peripheral::syst::SystClkSource;
    use cortex_m::peripheral::SYST;
    use cortex_m_rt::exception;

    /// Largest SysTick reload value (24 bits).
    const RELOAD: u32 = 0x00ff_ffff;

    /// Nanoseconds (= instructions under `-icount shift=0`) per SysTick tick, as `(num, den)`:
    /// QEMU's MPS2 machines clock the core at 25 MHz.
    #[cfg(feature = "qemu")]
    pub const TICK_NS: (u64, u64) = (40, 1);
    /// QEMU's STM32F405 model clocks the core at 168 MHz: 1000/168 ns a tick.
    #[cfg(feature = "netduinoplus2")]
    pub const TICK_NS: (u64, u64) = (125, 21);

    static WRAPS: AtomicU32 = AtomicU32::new(0);

    #[exception]
    fn SysTick() {
        WRAPS.fetch_add(1, Ordering::Relaxed);
    }

    /// Starts SysTick free-running at maximum reload from the core clock, with its wrap
    /// interrupt.
    pub fn start(cp: &mut cortex_m::Peripherals) {
        let syst = &mut cp.SYST;
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

    /// Instructions in `ticks` ticks.
    pub fn scale(ticks: u64) -> u64 {
        ticks * TICK_NS.0 / TICK_NS.1
    }
}

#[cfg(feature = "hardware")]
mod imp {
    use cortex_m::peripheral::DWT;

    /// One cycle a tick.
    pub const TICK_NS: (u64, u64) = (1, 1);

    /// Enables trace and the DWT cycle counter.
    pub fn start(cp: &mut cortex_m::Peripherals) {
        cp.DCB.enable_trace();
        // The Cortex-M7's DWT is locked after reset; the M4's lock is absent (writes ignored).
        DWT::unlock();
        cp.DWT.set_cycle_count(0);
        cp.DWT.enable_cycle_counter();
    }

    /// Cycles since [`start`] (32 bits; differences are taken modulo 2^32).
    pub fn ticks() -> u64 {
        u64::from(DWT::cycle_count())
    }

    pub fn scale(ticks: u64) -> u64 {
        ticks
    }
}

pub use imp::start;

/// Instructions (QEMU) or cycles (board) one tick of the counter is worth, rounded up: the
/// counter's resolution.
pub const RESOLUTION: u64 = imp::TICK_NS.0.div_ceil(imp::TICK_NS.1);

/// Instructions (QEMU) or cycles (board) spent in `f`, to a resolution of [`RESOLUTION`].
pub fn measure<R>(f: impl FnOnce() -> R) -> (R, u64) {
    let t0 = imp::ticks();
    let r = f();
    let t1 = imp::ticks();
    let d = if cfg!(feature = "hardware") {
        u64::from((t1 as u32).wrapping_sub(t0 as u32))
    } else {
        t1 - t0
    };
    (r, imp::scale(d))
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
