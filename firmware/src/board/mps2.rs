//! ARM's MPS2 FPGA images under QEMU (`mps2-an386` Cortex-M4F, `mps2-an500` Cortex-M7): the
//! core runs from reset at the machine's fixed 25 MHz; there is nothing to bring up.

use crate::clocks::Plan;

pub fn init(_cp: &mut cortex_m::Peripherals) -> Result<Option<&'static Plan>, ()> {
    Ok(None)
}
