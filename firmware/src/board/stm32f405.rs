//! STM32F405RG through stm32f4xx-hal: the main PLL from the Adafruit Feather STM32F405's 12 MHz
//! crystal to 168 MHz, the bus dividers, 5 flash wait states with the ART accelerator's
//! prefetch, instruction and data caches (the HAL's `freeze`).
//!
//! Under QEMU's `netduinoplus2` (feature `emulation`) the clock tree is not brought up: QEMU
//! models no RCC (its registers read as zero), so waiting for the crystal would never end. The
//! firmware says so and runs at the emulated machine's fixed clock; everything it computes is
//! the same.

use crate::clocks::{self, Plan};
// The device crate's interrupt vectors complete the vector table, emulated or not.
use stm32f4xx_hal as _;

#[cfg(feature = "emulation")]
pub fn init(_cp: &mut cortex_m::Peripherals) -> Result<Option<&'static Plan>, ()> {
    say!(
        "board: netduinoplus2 (STM32F405 under emulation): clock bring-up skipped (QEMU models \
         no RCC); the hardware build runs {}",
        clocks::F405.name
    );
    Ok(None)
}

#[cfg(not(feature = "emulation"))]
pub fn init(_cp: &mut cortex_m::Peripherals) -> Result<Option<&'static Plan>, ()> {
    use stm32f4xx_hal::pac;
    use stm32f4xx_hal::prelude::*;
    use stm32f4xx_hal::rcc::Config;

    let plan = &clocks::F405;
    let Some(dp) = pac::Peripherals::take() else {
        say!("error: device peripherals already taken");
        return Err(());
    };
    if let Err(e) = plan.check() {
        say!("error: clock plan: {e}");
        return Err(());
    }
    let rcc = dp.RCC.freeze(
        Config::hse(plan.pll.src_hz.Hz())
            .sysclk(plan.sys_hz.Hz())
            .require_pll48clk(),
    );
    let c = &rcc.clocks;
    let frozen = [
        c.sysclk().raw(),
        c.hclk().raw(),
        c.pclk1().raw(),
        c.pclk2().raw(),
    ];
    // SAFETY: reads of configuration registers the HAL has finished writing.
    let r = unsafe { &*pac::RCC::ptr() }.pllcfgr().read();
    let m = u32::from(r.pllm().bits());
    let n = u32::from(r.plln().bits());
    let p = (u32::from(r.pllp().bits()) + 1) * 2;
    let q = u32::from(r.pllq().bits());
    // SAFETY: as above.
    let ws = u32::from(unsafe { &*pac::FLASH::ptr() }.acr().read().latency().bits());
    say!(
        "board: feather-f405 ({}) sys={} MHz hclk={} MHz pclk1={} MHz pclk2={} MHz \
         pll m={m} n={n} p={p} q={q} flash_ws={ws}",
        plan.name,
        frozen[0] / 1_000_000,
        frozen[1] / 1_000_000,
        frozen[2] / 1_000_000,
        frozen[3] / 1_000_000
    );
    let want = [plan.sys_hz, plan.hclk_hz, plan.pclk_hz[0], plan.pclk_hz[1]];
    let pll = (plan.pll.m, plan.pll.n, plan.pll.p, plan.pll.q);
    if frozen != want || (m, n, p, q) != pll || ws != plan.flash_wait_states {
        say!("error: clocks differ from the plan in firmware/src/clocks.rs");
        return Err(());
    }
    Ok(Some(plan))
}
