//! Stack high-water mark: paint the free stack with a pattern at boot, scan it after the work.
//!
//! cortex-m-rt puts the stack at the top of RAM, growing down towards the end of `.bss`/`.data`
//! (`__sheap`, there being no heap). [`paint`] fills everything between `__sheap` and a little
//! below the current stack pointer with [`PATTERN`]; [`high_water`] finds the lowest word that no
//! longer holds it, which is the deepest the stack has gone since.

/// The paint. Any value works; this one is easy to spot in a debugger.
const PATTERN: u32 = 0xC0FF_EE55;
/// Words below the current stack pointer left untouched while painting (the painter's own frame).
const MARGIN_WORDS: usize = 16;

extern "C" {
    static mut __sheap: u32;
    static mut _stack_start: u32;
}

fn bottom() -> *mut u32 {
    core::ptr::addr_of_mut!(__sheap)
}

fn top() -> *mut u32 {
    core::ptr::addr_of_mut!(_stack_start)
}

/// Paints the unused stack: early in `main`, and again before each piece of work whose own
/// depth [`high_water`] should then report.
pub fn paint() {
    let sp = cortex_m::register::msp::read() as usize;
    let end = (sp & !3) - MARGIN_WORDS * 4;
    let mut p = bottom();
    while (p as usize) < end {
        // SAFETY: [__sheap, sp - margin) is RAM owned by no object (no heap, stack above), and
        // the writes are word-aligned because both ends are.
        unsafe {
            core::ptr::write_volatile(p, PATTERN);
            p = p.add(1);
        }
    }
}

/// Bytes of stack used at the deepest point since [`paint`].
pub fn high_water() -> usize {
    let mut p = bottom();
    let t = top();
    while p < t {
        // SAFETY: reading words of RAM between the end of statics and the stack top.
        if unsafe { core::ptr::read_volatile(p) } != PATTERN {
            break;
        }
        // SAFETY: p < top, so p + 1 <= top stays inside the region.
        p = unsafe { p.add(1) };
    }
    t as usize - p as usize
}
