//! The clock trees the real boards run, as numbers: the PLL and the bus dividers the HAL
//! programs for each target, with the chip's limits. Plain Rust with no register access, so that
//! the arithmetic is checked on the host (`cargo test -p tinyvit-xtask`, which compiles this
//! file) and, on the board, compared with what the HAL froze and what the PLL registers hold.
//!
//! The HALs pick the dividers themselves from the requested system clock; the plans below are
//! the dividers their algorithms arrive at (stm32h7xx-hal's iterative PLL1 strategy, and
//! stm32f4xx-hal's main PLL setup), written out so that a different choice is noticed at boot.

// Each board build uses its own plan; the host test (xtask) checks them all.
#![allow(dead_code)]

/// One PLL: `ref = src / m`, `vco = ref * n`, `p_out = vco / p`, `q_out = vco / q`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pll {
    /// Source clock (Hz): HSI or HSE.
    pub src_hz: u32,
    pub m: u32,
    pub n: u32,
    pub p: u32,
    pub q: u32,
}

impl Pll {
    /// The PLL's input after the M divider.
    pub const fn ref_hz(&self) -> u32 {
        self.src_hz / self.m
    }

    /// The VCO's frequency.
    pub const fn vco_hz(&self) -> u32 {
        self.ref_hz() * self.n
    }

    /// The P output, the system clock.
    pub const fn p_hz(&self) -> u32 {
        self.vco_hz() / self.p
    }

    /// The Q output (48 MHz domain on the F4).
    pub const fn q_hz(&self) -> u32 {
        self.vco_hz() / self.q
    }
}

/// The limits the chip's datasheet sets for one voltage range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// PLL input range after M (Hz, inclusive).
    pub ref_hz: (u32, u32),
    /// VCO output range (Hz, inclusive).
    pub vco_hz: (u32, u32),
    /// Largest allowed N.
    pub n_max: u32,
    pub sys_max_hz: u32,
    pub hclk_max_hz: u32,
    /// Largest clock of each APB bus, in the order of [`Plan::pclk_hz`].
    pub pclk_max_hz: &'static [u32],
}

/// A board's clock configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// What it is, for the boot log and the README.
    pub name: &'static str,
    pub pll: Pll,
    /// System clock (the core's): PLL P.
    pub sys_hz: u32,
    /// AHB (and on the H7 the AXI) clock.
    pub hclk_hz: u32,
    /// APB clocks: H7 D2 APB1, D2 APB2, D1 APB3, D3 APB4; F4 APB1, APB2.
    pub pclk_hz: &'static [u32],
    /// Flash wait states at `hclk_hz` (the HAL sets them).
    pub flash_wait_states: u32,
    pub limits: Limits,
}

/// STM32H743 revision V at VOS0: HSI 64 MHz / 4 = 16 MHz, x 60 = 960 MHz wide-range VCO, / 2 =
/// 480 MHz core; AHB/AXI 240 MHz, every APB 120 MHz. Flash wait states: 7, what
/// stm32h7xx-hal 0.16 programs at exactly 240 MHz (its VOS0 table's 4-wait-state row ends at
/// 239 MHz; RM0433 allows 4 up to 240 MHz). The weights stream from flash through the D-cache,
/// so this is the first thing to measure on a board.
pub const H743_REV_V: Plan = Plan {
    name: "STM32H743 rev V, VOS0, PLL1 from HSI",
    pll: Pll {
        src_hz: 64_000_000,
        m: 4,
        n: 60,
        p: 2,
        q: 4,
    },
    sys_hz: 480_000_000,
    hclk_hz: 240_000_000,
    pclk_hz: &[120_000_000; 4],
    flash_wait_states: 7,
    limits: Limits {
        ref_hz: (2_000_000, 16_000_000),
        vco_hz: (192_000_000, 960_000_000),
        n_max: 512,
        sys_max_hz: 480_000_000,
        hclk_max_hz: 240_000_000,
        pclk_max_hz: &[120_000_000; 4],
    },
};

/// STM32H743 revision Y (VOS0 does not exist there) at VOS1: 16 MHz x 50 = 800 MHz VCO, / 2 =
/// 400 MHz core; AHB/AXI 200 MHz, every APB 100 MHz; 2 flash wait states (AXI clock 185-210 MHz
/// at VOS1).
pub const H743_REV_Y: Plan = Plan {
    name: "STM32H743 rev Y, VOS1, PLL1 from HSI",
    pll: Pll {
        src_hz: 64_000_000,
        m: 4,
        n: 50,
        p: 2,
        q: 4,
    },
    sys_hz: 400_000_000,
    hclk_hz: 200_000_000,
    pclk_hz: &[100_000_000; 4],
    flash_wait_states: 2,
    limits: Limits {
        ref_hz: (2_000_000, 16_000_000),
        vco_hz: (192_000_000, 836_000_000),
        n_max: 512,
        sys_max_hz: 400_000_000,
        hclk_max_hz: 200_000_000,
        pclk_max_hz: &[100_000_000; 4],
    },
};

/// STM32F405 from the Feather's 12 MHz crystal: / 6 = 2 MHz, x 168 = 336 MHz VCO, / 2 =
/// 168 MHz core, / 7 = 48 MHz for USB; AHB 168 MHz, APB1 42 MHz, APB2 84 MHz; 5 flash wait
/// states (2.7-3.6 V, 30 MHz a wait state), with the ART prefetch and caches on.
pub const F405: Plan = Plan {
    name: "STM32F405, main PLL from a 12 MHz HSE",
    pll: Pll {
        src_hz: 12_000_000,
        m: 6,
        n: 168,
        p: 2,
        q: 7,
    },
    sys_hz: 168_000_000,
    hclk_hz: 168_000_000,
    pclk_hz: &[42_000_000, 84_000_000],
    flash_wait_states: 5,
    limits: Limits {
        ref_hz: (1_000_000, 2_000_000),
        vco_hz: (100_000_000, 432_000_000),
        n_max: 432,
        sys_max_hz: 168_000_000,
        hclk_max_hz: 168_000_000,
        pclk_max_hz: &[42_000_000, 84_000_000],
    },
};

impl Plan {
    /// Checks the PLL arithmetic and every limit: the dividers give exactly the stated clocks,
    /// and each clock is in range. The error names the first broken rule.
    pub fn check(&self) -> Result<(), &'static str> {
        let (p, l) = (&self.pll, &self.limits);
        if p.m == 0 || p.n == 0 || p.p == 0 || p.q == 0 {
            return Err("a PLL divider is zero");
        }
        if !p.src_hz.is_multiple_of(p.m) {
            return Err("the PLL input is not a whole number of Hz");
        }
        if p.ref_hz() < l.ref_hz.0 || p.ref_hz() > l.ref_hz.1 {
            return Err("the PLL input (source / M) is out of range");
        }
        if p.n > l.n_max || (p.vco_hz() as u64) != (p.ref_hz() as u64) * (p.n as u64) {
            return Err("N is out of range");
        }
        if p.vco_hz() < l.vco_hz.0 || p.vco_hz() > l.vco_hz.1 {
            return Err("the VCO is out of range");
        }
        if p.p != 1 && !p.p.is_multiple_of(2) {
            return Err("P must be even");
        }
        if !p.vco_hz().is_multiple_of(p.p) || p.p_hz() != self.sys_hz {
            return Err("VCO / P is not the system clock");
        }
        if self.sys_hz > l.sys_max_hz {
            return Err("the system clock is above the chip's maximum");
        }
        if self.hclk_hz > l.hclk_max_hz || !is_power_of_two_div(self.sys_hz, self.hclk_hz) {
            return Err("the AHB clock is above its maximum or not sys / 2^k");
        }
        if self.pclk_hz.len() != l.pclk_max_hz.len() {
            return Err("the APB clocks and their limits differ in number");
        }
        for (&f, &max) in self.pclk_hz.iter().zip(l.pclk_max_hz) {
            if f > max || !is_power_of_two_div(self.hclk_hz, f) {
                return Err("an APB clock is above its maximum or not hclk / 2^k");
            }
        }
        Ok(())
    }

    /// Nanoseconds per `cycles` at the system clock, for the latency line.
    pub fn nanos(&self, cycles: u64) -> u64 {
        cycles * 1_000_000_000 / u64::from(self.sys_hz)
    }
}

/// `to` is `from` divided by 1, 2, 4, ... 512.
fn is_power_of_two_div(from: u32, to: u32) -> bool {
    to != 0 && from.is_multiple_of(to) && (from / to).is_power_of_two() && from / to <= 512
}
