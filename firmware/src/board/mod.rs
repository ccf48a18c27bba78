//! Board bring-up: power, clocks, flash wait states and caches, before anything is measured.
//! Exactly one board is compiled in (the build script checks the features).
//!
//! Each board module has `init(&mut cortex_m::Peripherals) -> Result<Option<&'static Plan>,
//! ()>`: it prints what it set up (nothing on the MPS2 machines, whose output is pinned) and
//! returns the clock plan it runs at, if any, for the latency line.

#[cfg(feature = "qemu")]
mod mps2;
#[cfg(feature = "qemu")]
pub use mps2::init;

#[cfg(feature = "nucleo-h743")]
mod stm32h743;
#[cfg(feature = "nucleo-h743")]
pub use stm32h743::init;

#[cfg(any(feature = "feather-f405", feature = "netduinoplus2"))]
mod stm32f405;
#[cfg(any(feature = "feather-f405", feature = "netduinoplus2"))]
pub use stm32f405::init;

/// Where the build put the statics and the stack (chosen from the payload's size).
pub fn memory_line() {
    let (name, origin, len) = crate::RAM_REGION;
    say!(
        "memory: statics and stack in {name} at {origin:#010x} ({} KB); arena {} bytes",
        len / 1024,
        crate::ARENA_LEN * 4
    );
}
