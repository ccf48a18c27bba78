//! tinyvit firmware.
#![no_std]
#![no_main]

mod counter;
mod hash;
mod out;
mod stack;

use cortex_m_rt::{entry, exception, ExceptionFrame};

macro_rules! say {
    ($($arg:tt)*) => { $crate::out::line(format_args!($($arg)*)) };
}

#[entry]
fn main() -> ! {
    stack::paint();
    let cp = cortex_m::Peripherals::take().unwrap();
    counter::start(cp.SYST);
    let cpuid = cp.CPUID.base.read();
    say!("cpuid {:#010x}", cpuid);
    for n in [1000u32, 100_000, 1_000_000] {
        let ((), c) = counter::measure(|| counter::known_loop(n));
        say!("loop n={} expected~{} measured={}", n, 2 * n + 1, c);
    }
    say!("fnv {:#018x}", hash::Fnv::new().bytes(b"tinyvit").finish());
    say!("stack hwm {} of {}", stack::high_water(), stack::capacity());
    out::exit(0)
}

#[exception]
unsafe fn HardFault(ef: &ExceptionFrame) -> ! {
    say!("error: hard fault at pc={:#010x}", ef.pc());
    out::exit(3)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    say!("error: panic: {}", info);
    out::exit(2)
}
