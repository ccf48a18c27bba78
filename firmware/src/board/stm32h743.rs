//! STM32H743 (Nucleo-H743ZI/ZI2) through stm32h7xx-hal: the supply and voltage scale, PLL1 from
//! the 64 MHz HSI to the core's rated clock (480 MHz on revision V silicon at VOS0, 400 MHz on
//! revision Y at VOS1: the revision is read from DBGMCU_IDC), the bus dividers and the flash
//! wait states (the HAL's `freeze`), then the Cortex-M7's I-cache and D-cache.
//!
//! The model stays in flash at 0x08000000, on the AXI bus, which the default memory map makes
//! normal cacheable memory: with the D-cache on, weights are read through it. The statics and
//! the stack are in DTCM or AXI SRAM as the build chose (`memory:` line). ITCM is not used:
//! the hot loops (the matmul and convolution kernels, a few hundred bytes each) fit the 16 KB
//! I-cache many times over and run for thousands of iterations per call, so after the first
//! iteration they fetch from the cache at zero wait states, as they would from ITCM; copying
//! them there would need target-specific sections in the shared core for no measurable gain.

use stm32h7xx_hal::pac;
use stm32h7xx_hal::prelude::*;
use stm32h7xx_hal::rcc::PllConfigStrategy;

use crate::clocks::{self, Plan};

/// DBGMCU_IDC.REV_ID of revision V silicon (480 MHz at VOS0).
const REV_V: u16 = 0x2003;

pub fn init(cp: &mut cortex_m::Peripherals) -> Result<Option<&'static Plan>, ()> {
    let Some(dp) = pac::Peripherals::take() else {
        say!("error: device peripherals already taken");
        return Err(());
    };
    let rev = dp.DBGMCU.idc.read().rev_id().bits();
    let plan: &'static Plan = if rev == REV_V {
        &clocks::H743_REV_V
    } else {
        &clocks::H743_REV_Y
    };
    if let Err(e) = plan.check() {
        say!("error: clock plan: {e}");
        return Err(());
    }
    let pwr = dp.PWR.constrain();
    let pwrcfg = if rev == REV_V {
        pwr.vos0(&dp.SYSCFG).freeze()
    } else {
        pwr.freeze()
    };
    let ccdr = dp
        .RCC
        .constrain()
        .sys_ck(plan.sys_hz.Hz())
        .pll1_strategy(PllConfigStrategy::Iterative)
        .freeze(pwrcfg, &dp.SYSCFG);
    let c = &ccdr.clocks;
    let frozen = [
        c.sys_ck().raw(),
        c.hclk().raw(),
        c.pclk1().raw(),
        c.pclk2().raw(),
        c.pclk3().raw(),
        c.pclk4().raw(),
    ];
    // SAFETY: reads of configuration registers the HAL has finished writing.
    let rcc = unsafe { &*pac::RCC::ptr() };
    let m = u32::from(rcc.pllckselr.read().divm1().bits());
    let divr = rcc.pll1divr.read();
    let n = u32::from(divr.divn1().bits()) + 1;
    let p = u32::from(divr.divp1().bits()) + 1;
    let ws = u32::from(dp.FLASH.acr.read().latency().bits());
    say!(
        "board: nucleo-h743 rev_id={rev:#06x} ({}) sys={} MHz hclk={} MHz pclk1..4={}/{}/{}/{} MHz \
         pll1 m={m} n={n} p={p} flash_ws={ws}",
        plan.name,
        frozen[0] / 1_000_000,
        frozen[1] / 1_000_000,
        frozen[2] / 1_000_000,
        frozen[3] / 1_000_000,
        frozen[4] / 1_000_000,
        frozen[5] / 1_000_000
    );
    let want = [
        plan.sys_hz,
        plan.hclk_hz,
        plan.pclk_hz[0],
        plan.pclk_hz[1],
        plan.pclk_hz[2],
        plan.pclk_hz[3],
    ];
    let pll = (plan.pll.m, plan.pll.n, plan.pll.p);
    if frozen != want || (m, n, p) != pll || ws != plan.flash_wait_states {
        say!("error: clocks differ from the plan in firmware/src/clocks.rs");
        return Err(());
    }
    cp.SCB.enable_icache();
    cp.SCB.enable_dcache(&mut cp.CPUID);
    say!("caches: I-cache and D-cache on");
    Ok(Some(plan))
}
